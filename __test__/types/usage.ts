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
  },
);
if (primary) {
  primary.on('ready', ({ slot, worker }) => console.log(slot, worker.process.pid));
  primary.on('exit', ({ code, signal }) => console.log(code, signal));
  const stats = primary.stats();
  if (stats) console.log(stats.slots[0].delivered, stats.acceptErrors);
  void primary.reload().then(() => primary.shutdown()).then((code: number) => code);
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
// @ts-expect-error: env is a function in the sticky-cluster API
sticky((cb) => cb(http.createServer()), { env: { a: 1 } });
