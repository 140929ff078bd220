// Compiled with `tsc --noEmit` by `npm test`: both APIs as users write them.
import http = require('node:http');
import https = require('node:https');
import sticky = require('../..');

const primary = sticky(
  (callback) => {
    const server = http.createServer((_req, res) => res.end('ok'));
    setTimeout(() => callback(server), 100);
  },
  {
    concurrency: 4,
    port: 8080,
    host: '::',
    backlog: 511,
    debug: false,
    prefix: 'sticky-cluster:',
    env: (index) => ({ stickycluster_worker_index: index }),
    hardShutdownDelay: 60_000,
    errorHandler: (err) => console.error(err.code),
    queueLimit: 1024,
    queueTimeout: 30_000,
    readyTimeout: 30_000,
    respawnDelay: 100,
    maxRespawnDelay: 10_000,
    respawnResetAfter: 30_000,
    hash: 'djb2',
    dispatch: 'auto',
    upgradeSignal: 'SIGUSR2',
    upgradeExecPath: '/usr/local/bin/node',
    pidFile: '/run/app.pid',
  },
);
if (primary) {
  void primary.upgrade().then(({ pid }: { pid: number }) => pid);
  primary.on('takeover', ({ previous }) => console.log(previous));
  primary.on('ready', ({ slot, worker }) => console.log(slot, worker.process.pid));
  primary.on('exit', ({ code, signal }) => console.log(code, signal));
  const stats = primary.stats();
  if (stats) console.log(stats.slots[0].delivered, stats.acceptErrors);
  const dispatch: 'kernel' | 'primary' | undefined = stats?.dispatch;
  console.log(dispatch);
  void primary
    .reload()
    .then(({ drained }) => drained)
    .then(() => primary.shutdown())
    .then((code: number) => code);
  primary.on('respawn', ({ slot, delay }) => console.log(slot, delay));
}

const tls = https.createServer({});
tls.on('sticky:shutdown', ({ waitUntil }: sticky.ShutdownEvent) => waitUntil(Promise.resolve()));
const isWorker: boolean = sticky.listen(tls, 8443, { workers: 2, env: { NAME: 'x' } });
console.log(isWorker);

sticky((cb) => cb(http.createServer(), https.createServer({})), {
  listeners: [{ port: 8080 }, { port: 8443, host: '::' }],
  routeBy: 'proxy-protocol',
  trustedProxies: ['10.0.0.0/8', '::1'],
  peekLimit: 8192,
  peekTimeout: 3000,
});
sticky((cb) => cb(http.createServer()), { routeBy: 'x-real-ip', trustedProxies: ['127.0.0.1'] });

// @ts-expect-error: unknown hash
sticky((cb) => cb(http.createServer()), { hash: 'md5' });
// @ts-expect-error: unknown dispatch
sticky((cb) => cb(http.createServer()), { dispatch: 'fast' });
// @ts-expect-error: env is a function in the sticky-cluster API
sticky((cb) => cb(http.createServer()), { env: { a: 1 } });

// Strings of digits and falsy values, as sticky-cluster took them; the newer options.
import promClient = require('prom-client');
const fromEnv = sticky((cb) => cb(http.createServer()), {
  concurrency: process.env.WEB_CONCURRENCY,
  port: process.env.PORT || 8080,
  backlog: 0,
  debug: 'connections',
  maxRestarts: Infinity,
  restartWindow: '60000',
  errorHandler: (err) => console.error(err.code, err.hostname, err.port),
});
if (fromEnv) {
  const onExit = ({ slot, code, signal, worker }: sticky.ExitEvent) => console.log(slot, code, signal, worker.id);
  fromEnv.once('exit', onExit);
  fromEnv.off('exit', onExit);
  fromEnv.once('ready', ({ worker }) => worker.process.pid);
  fromEnv.prependListener('fork', ({ slot }) => slot);
  fromEnv.removeListener('respawn', ({ delay }) => delay);
  const s = fromEnv.stats();
  if (s) console.log(s.listenerFailures, s.slots[0].restarts, s.slots[0].expired);
  const registry: promClient.Registry = sticky.prometheus(fromEnv, { register: new promClient.Registry(), prefix: 'app_' });
  void registry.metrics();
  // @ts-expect-error: respawn events have no worker
  fromEnv.on('respawn', ({ worker }) => worker);
  // @ts-expect-error: no such event
  fromEnv.once('ready-ish', () => {});
}

// The listen API: server.address() in the primary, and the same Primary.
const plain = http.createServer();
if (!sticky.listen(plain, 0, { workers: '2' })) {
  plain.once('listening', () => {
    console.log(plain.address());
    const p = sticky.primary();
    if (p) void p.shutdown();
  });
} else {
  // 'sticky:shutdown' is typed on every net.Server.
  plain.on('sticky:shutdown', ({ waitUntil }) => waitUntil(Promise.resolve()));
}

// @ts-expect-error: debug is true, false or 'connections'
sticky((cb) => cb(http.createServer()), { debug: 'yes' });

// @socket.io/sticky's API.
{
  const httpServer = http.createServer();
  sticky.setupMaster(httpServer, { loadBalancingMethod: 'round-robin', maxWorkers: 8 });
  // @ts-expect-error not a balancing method
  sticky.setupMaster(httpServer, { loadBalancingMethod: 'fastest' });
  sticky.setupWorker({ engine: {}, httpServer });
  sticky.listen(httpServer, 0, { routeBy: 'sid', loadBalancingMethod: 'random' });
}
