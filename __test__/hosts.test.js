'use strict';
// Many machines (issue 23): three sticky-rs hosts, each in a network namespace of its own joined
// to the root namespace by a veth pair on a bridge, a real redis-server (the example's Redis
// Streams adapter) and a real HAProxy or nginx in front, run with the configs of example/ as
// shipped. Clients come from distinct loopback addresses in the root namespace.
// - sid mode (STICKY_NODE=h1..h3): the balancer routes every request by the id's node prefix.
// - a host killed while each of its clients has a request in flight there (a websocket, or a
//   pending long-poll): its clients reconnect to the others within 10 s, no one else notices,
//   HAProxy's health check takes it out.
// - address mode: HAProxy balances by source and sends PROXY v2; every worker sees its client.
//   The same with example/haproxy/haproxy.cfg (HTTP, X-Forwarded-For) on two of the hosts.
// Network namespaces need root (CI runs as root); elsewhere the suite is skipped and says why.
const { spawnSync } = require('node:child_process');
const fs = require('node:fs');
const http = require('node:http');
const os = require('node:os');
const path = require('node:path');
const stringHash = require('string-hash');
const { io } = require('socket.io-client');
const { clientIp, pool, freePort, clientSet } = require('./helpers');
const { startReadyExample, stopAllExamples, within, waitUntil } = require('./fixtures/example-harness');
const { nginx, redisPath, spawnGroup, listening, startRedis, startNginx } = require('./fixtures/balancers');
const { browser } = require('./fixtures/browser-like');

const IN_CI = process.env.CI === 'true';
const HOSTS = ['h1', 'h2', 'h3'];
const WORKERS = 2;
const PREFIX = 'sr23'; // every namespace and link of this suite
const BRIDGE = `${PREFIX}br`;
const NET = '10.77.23'; // the bridge is .1, host i is .11+i
const APP_PORT = 8080; // each host has its own port space
const CLIENTS = 300;
const HAPROXY_DIR = path.join(__dirname, '..', 'example', 'haproxy');
const TEST_TIMEOUT = 180000;

const haproxyBin = spawnSync('haproxy', ['-v']).status === 0 ? 'haproxy' : null;

/** Why this suite cannot run here, or null. */
function unavailable() {
  if (process.platform !== 'linux') return 'network namespaces are Linux only';
  if (process.getuid() !== 0) return 'network namespaces need root (CI runs as root)';
  if (spawnSync('ip', ['-V']).status !== 0) return 'iproute2 (ip) was not found';
  if (!haproxyBin) return 'haproxy was not found (Debian/Ubuntu: apt-get install haproxy)';
  if (!nginx) return 'nginx was not found (Debian/Ubuntu: apt-get install nginx)';
  if (!redisPath) return 'redis-server was not found (Debian/Ubuntu: apt-get install redis-server)';
  return null;
}

function ip(...args) {
  const r = spawnSync('ip', args, { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`ip ${args.join(' ')}: ${r.stderr.trim()}`);
}

const nsOf = (i) => `${PREFIX}${HOSTS[i]}`;
const addressOf = (i) => `${NET}.${11 + i}`;

/** Removes every namespace and link of this suite (and kills what runs in the namespaces). */
function tearDown() {
  for (let i = 0; i < HOSTS.length; i++) {
    const pids = spawnSync('ip', ['netns', 'pids', nsOf(i)], { encoding: 'utf8' }).stdout || '';
    for (const pid of pids.split(/\s+/).filter(Boolean)) {
      try {
        process.kill(Number(pid), 'SIGKILL');
      } catch {}
    }
    spawnSync('ip', ['netns', 'del', nsOf(i)]);
    spawnSync('ip', ['link', 'del', `${PREFIX}v${i}`]);
  }
  spawnSync('ip', ['link', 'del', BRIDGE]);
}

/** The bridge in the root namespace, and one namespace per host with a veth pair on it. */
function setUp() {
  tearDown(); // what a killed run left
  ip('link', 'add', BRIDGE, 'type', 'bridge');
  ip('addr', 'add', `${NET}.1/24`, 'dev', BRIDGE);
  ip('link', 'set', BRIDGE, 'up');
  for (let i = 0; i < HOSTS.length; i++) {
    ip('netns', 'add', nsOf(i));
    ip('link', 'add', `${PREFIX}v${i}`, 'type', 'veth', 'peer', 'name', `${PREFIX}p${i}`);
    ip('link', 'set', `${PREFIX}p${i}`, 'netns', nsOf(i));
    ip('link', 'set', `${PREFIX}v${i}`, 'master', BRIDGE, 'up');
    ip('-n', nsOf(i), 'addr', 'add', `${addressOf(i)}/24`, 'dev', `${PREFIX}p${i}`);
    ip('-n', nsOf(i), 'link', 'set', `${PREFIX}p${i}`, 'up');
    ip('-n', nsOf(i), 'link', 'set', 'lo', 'up');
  }
}

const dirs = [];
const tempDir = (what) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), `sticky-rs-hosts-${what}-`));
  dirs.push(dir);
  return dir;
};
const machines = () => Object.fromEntries(HOSTS.map((_, i) => [`MACHINE_${i + 1}`, `${addressOf(i)}:${APP_PORT}`]));

/**
 * HAProxy in the foreground with `config` from example/haproxy/ as shipped, plus a stats page
 * of the test's own (a second config file): `server(backend, name, field)` reads a server's
 * column of the stats CSV (its status by default; `scur`: its current sessions).
 */
async function startHaproxy(config, port) {
  const statsPort = await freePort();
  const dir = tempDir('haproxy');
  const stats = path.join(dir, 'stats.cfg');
  fs.writeFileSync(stats, `listen test_stats\n    mode http\n    bind 127.0.0.1:${statsPort}\n    stats enable\n    stats uri /stats\n`);
  const proc = spawnGroup('haproxy', haproxyBin, ['-db', '-f', path.join(HAPROXY_DIR, config), '-f', stats], {
    env: { ...process.env, LISTEN: `127.0.0.1:${port}`, ...machines() },
  });
  proc.describe = () => `haproxy output:\n${proc.output}`;
  await listening(proc, port, 10000, proc.describe);
  proc.server = async (backend, name, field = 'status') => {
    const csv = await new Promise((resolve, reject) => {
      http
        .get({ host: '127.0.0.1', port: statsPort, path: '/stats;csv' }, (res) => {
          let text = '';
          res.on('data', (d) => (text += d));
          res.on('end', () => resolve(text));
        })
        .on('error', reject);
    });
    const [header, ...rows] = csv
      .replace(/^# /, '')
      .trim()
      .split('\n')
      .map((l) => l.split(','));
    const row = rows.find((r) => r[0] === backend && r[1] === name);
    return row ? row[header.indexOf(field)] : null;
  };
  return proc;
}

/** One example app per host, all ready. */
async function startHosts(env) {
  const apps = [];
  for (let i = 0; i < HOSTS.length; i++) {
    const { app } = await startReadyExample({ PORT: String(APP_PORT), WORKERS: String(WORKERS), ...env(i) }, 60000, { netns: nsOf(i) });
    app.host = HOSTS[i];
    apps.push(app);
  }
  return apps;
}

/** Which host a worker pid belongs to. */
function hostOfPid(apps, pid) {
  const app = apps.find((a) => a.lines.some((l) => /^worker ready: slot \d+, pid \d+$/.test(l) && l.endsWith(`, pid ${pid}`)));
  return app ? app.host : null;
}

const { track, closeAll: closeClients } = clientSet();

/**
 * A Socket.IO client from clientIp(i) through the balancer, with socket.io-client's default
 * reconnection; half of them long-poll only, the others upgrade. Records what happens to it.
 */
function client(url, i) {
  const agent = track(new http.Agent({ keepAlive: true, localAddress: clientIp(i) }));
  const polling = i % 2 === 0;
  const socket = track(io(url, { forceNew: true, agent, ...(polling ? { transports: ['polling'] } : {}) }));
  const c = { i, polling, socket, ids: [], disconnects: [], errors: [], chats: [], events: [] };
  // What happened to it, with times: a failure message shows where a client got stuck.
  const event = (...what) => c.events.push({ at: Date.now(), what: what.join(' ') });
  socket.on('connect', () => {
    c.ids.push(socket.io.engine.id);
    event('connect', socket.io.engine.id);
  });
  socket.on('disconnect', (reason) => {
    c.disconnects.push(reason);
    event('disconnect', reason);
  });
  socket.on('connect_error', (err) => {
    c.errors.push(err.message);
    event('connect_error', err.message);
  });
  socket.io.on('reconnect_attempt', (n) => event('reconnect_attempt', n));
  socket.on('chat', (m) => c.chats.push(m));
  c.connected = within(
    new Promise((resolve) => socket.once('connect', resolve)),
    20000,
    () => `client ${i}: not connected (${c.errors.join('; ')})`,
  );
  c.upgraded = () =>
    polling || socket.io.engine.transport.name === 'websocket'
      ? Promise.resolve()
      : within(new Promise((resolve) => socket.io.engine.once('upgrade', resolve)), 10000, `client ${i}: no websocket upgrade`);
  c.host = () => socket.io.engine.id.split('.')[0];
  return c;
}

/** `CLIENTS` sessions through `url`: connected, joined to one room, the upgraders upgraded. */
async function sessions(url, n = CLIENTS) {
  return pool([...Array(n).keys()], 25, async (i) => {
    const c = client(url, i);
    await c.connected;
    await c.upgraded();
    const joined = await c.socket.timeout(10000).emitWithAck('join', { name: `c${i}`, room: 'many' });
    expect(joined).toMatchObject({ ok: true });
    return c;
  });
}

/** Every session works, each host holds 20-47%, and one message reaches every client exactly once. */
async function checkSessions(clients) {
  expect(clients.flatMap((c) => c.errors)).toEqual([]);
  expect(clients.flatMap((c) => c.disconnects)).toEqual([]);
  for (const c of clients) expect(c.socket.io.engine.id).toMatch(/^h[123]\.[A-Za-z0-9_-]{20}$/);
  for (const c of clients) expect(c.socket.io.engine.transport.name).toBe(c.polling ? 'polling' : 'websocket');
  const perHost = Object.fromEntries(HOSTS.map((h) => [h, clients.filter((c) => c.host() === h).length]));
  for (const h of HOSTS) {
    expect(perHost[h]).toBeGreaterThanOrEqual(0.2 * clients.length);
    expect(perHost[h]).toBeLessThanOrEqual(0.47 * clients.length);
  }
  const sent = await clients[0].socket.timeout(10000).emitWithAck('chat', { text: 'to every host' });
  expect(sent).toMatchObject({ ok: true });
  await waitUntil(() => clients.every((c) => c.chats.some((m) => m.id === sent.id)), 15000, 'the broadcast reached every client');
  // Then one more message from another host: it comes after the first everywhere, so by the
  // time each client has it, a duplicate of the first would have arrived too.
  const last = clients.find((c) => c.host() !== clients[0].host());
  const after = await last.socket.timeout(10000).emitWithAck('chat', { text: 'last' });
  await waitUntil(() => clients.every((c) => c.chats.some((m) => m.id === after.id)), 15000, 'the second broadcast reached every client');
  expect(clients.filter((c) => c.chats.filter((m) => m.id === sent.id).length !== 1).map((c) => c.i)).toEqual([]);
  return perHost;
}

const EXAMPLE_ASSETS = ['/', '/app.js', '/style.css', '/socket.io/socket.io.js', '/health', '/health?a'];

/** 100 browser-like clients (pool of 6, assets, polling, upgrade) through the balancer: none lost. */
async function checkBrowsers(port) {
  const failures = await pool([...Array(100).keys()], 20, (i) =>
    browser(port, clientIp(1000 + i), { assets: EXAMPLE_ASSETS, lazy: () => ['/health', '/style.css'], emit: () => ['whoami'], track }),
  );
  expect(failures.filter((f) => f !== null)).toEqual([]);
}

const reason = unavailable();
if (reason && IN_CI) {
  test('network namespaces, HAProxy, nginx and Redis are available (required in CI)', () => {
    throw new Error(`hosts.test.js cannot run: ${reason}`);
  });
} else if (reason) {
  console.warn(`hosts.test.js SKIPPED: ${reason}`);
  test.skip(`several hosts (skipped: ${reason})`, () => {});
} else {
  let redis = null;
  const report = {};

  beforeAll(async () => {
    setUp();
    const redisPort = await freePort();
    redis = startRedis(redisPort, tempDir('redis'), `${NET}.1`);
    await within(redis.ready, 10000, 'redis-server ready');
    report.redis = `redis://${NET}.1:${redisPort}`;
  }, 30000);

  afterAll(async () => {
    closeClients();
    await stopAllExamples();
    if (redis) await redis.stop();
    tearDown();
    for (const dir of dirs) fs.rmSync(dir, { recursive: true, force: true });
    console.log(`hosts.test.js: ${JSON.stringify(report)}`);
  }, 60000);

  describe('routeBy sid, one node name per host, a balancer routing by the id alone', () => {
    let apps = [];
    beforeAll(async () => {
      apps = await startHosts((i) => ({ ROUTE_BY: 'sid', STICKY_NODE: HOSTS[i], REDIS_URL: report.redis }));
    }, 120000);
    afterEach(closeClients);
    afterAll(stopAllExamples, 30000);

    for (const balancer of ['haproxy', 'nginx']) {
      test(
        `${balancer}: ${CLIENTS} Socket.IO clients (half upgrading) and 100 browser-like pools, no session lost; a broadcast reaches everyone once`,
        async () => {
          const port = await freePort();
          const lb =
            balancer === 'haproxy'
              ? await startHaproxy('haproxy-sid.cfg', port)
              : await startNginx({ context: 'http', template: 'nginx-sid.conf' }, tempDir('nginx'), {
                  LISTEN: `127.0.0.1:${port}`,
                  ...machines(),
                });
          try {
            if (balancer === 'haproxy') {
              for (const h of HOSTS) await waitUntil(async () => (await lb.server('hosts', h)) === 'UP', 10000, `haproxy sees ${h} up`);
            }
            const began = Date.now();
            const clients = await sessions(`http://127.0.0.1:${port}`);
            report[`${balancer}: sessions per host`] = await checkSessions(clients);
            report[`${balancer}: ${CLIENTS} sessions connected in ms`] = Date.now() - began;
            closeClients();
            await checkBrowsers(port);
          } finally {
            closeClients();
            await lb.stop();
          }
        },
        TEST_TIMEOUT,
      );
    }

    test(
      "haproxy: a host killed while each of its clients has a request there; they reconnect elsewhere within 10 s, no one else's session breaks, the health check takes it out",
      async () => {
        const port = await freePort();
        const lb = await startHaproxy('haproxy-sid.cfg', port);
        try {
          for (const h of HOSTS) await waitUntil(async () => (await lb.server('hosts', h)) === 'UP', 10000, `haproxy sees ${h} up`);
          const clients = await sessions(`http://127.0.0.1:${port}`, 120);
          const victims = clients.filter((c) => c.host() === 'h3');
          const others = clients.filter((c) => c.host() !== 'h3');
          expect(victims.length).toBeGreaterThan(0);
          // The moment a host dies in real life: traffic settled (one broadcast delivered
          // everywhere), every client of h3 has a request in flight there through HAProxy, its
          // websocket or its pending long-poll (which, on a kept-alive client connection, is
          // what HAProxy closes silently when the server dies without answering; see the README).
          const sent = await clients[0].socket.timeout(10000).emitWithAck('chat', { text: 'before the kill' });
          await waitUntil(() => clients.every((c) => c.chats.some((m) => m.id === sent.id)), 15000, 'the broadcast reached every client');
          await waitUntil(
            async () => Number(await lb.server('node_h3', 'h3', 'scur')) >= victims.length,
            10000,
            `haproxy holds a request of each of the ${victims.length} clients of h3`,
          );
          const killedAt = Date.now();
          await apps[2].stop(); // SIGKILL to the whole process group
          const back = (c) => c.socket.connected && !c.socket.io.engine.id.startsWith('h3.');
          await waitUntil(() => victims.every(back), 10000, 'every client of h3 reconnected to another host').catch((err) => {
            const stuck = victims
              .filter((c) => !back(c))
              .map(
                (c) =>
                  `client ${c.i} (${c.polling ? 'polling' : 'websocket'}): ${
                    c.events
                      .filter((e) => e.at >= killedAt)
                      .map((e) => `+${e.at - killedAt} ms ${e.what}`)
                      .join(', ') || 'no event since the kill'
                  }`,
              );
            throw new Error(`${err.message}; ${stuck.length} of ${victims.length} not back:\n${stuck.join('\n')}`);
          });
          const times = victims
            .map((c) => c.events.find((e) => e.at >= killedAt && /^connect h[12]\./.test(e.what)).at - killedAt)
            .sort((a, b) => a - b);
          report['kill: clients of h3'] = {
            websocket: victims.filter((c) => !c.polling).length,
            polling: victims.filter((c) => c.polling).length,
          };
          report['kill: reconnected in ms (median, max)'] = [times[Math.floor(times.length / 2)], times[times.length - 1]];
          await waitUntil(async () => (await lb.server('hosts', 'h3')) === 'DOWN', 5000, 'haproxy marks h3 down');
          report['kill: haproxy marked h3 down in ms'] = Date.now() - killedAt;
          // The others, asked after everything settled: connected all along, on their host.
          for (const c of others) expect((await c.socket.timeout(10000).emitWithAck('whoami')).pid).toBeGreaterThan(0);
          expect(others.filter((c) => c.disconnects.length > 0 || c.ids.length !== 1).map((c) => c.i)).toEqual([]);
          for (const c of victims) expect(c.socket.io.engine.id).toMatch(/^h[12]\./);
        } finally {
          closeClients();
          await lb.stop();
        }
      },
      TEST_TIMEOUT,
    );
  });

  // By client address, each with its shipped config: `servers` are the config's, on the first hosts.
  const ADDRESS_MODES = [
    {
      describe: 'routeBy proxy-protocol behind HAProxy (balance source, send-proxy-v2)',
      test: '200 client addresses: each on one host and one worker (its djb2 slot there), seen as itself; each host 15-55%',
      config: 'haproxy-proxy-v2.cfg',
      backend: 'hosts',
      servers: HOSTS,
      routeBy: 'proxy-protocol',
      seenAsItself: true,
      share: [0.15, 0.55],
      report: 'proxy v2',
    },
    {
      // X-Forwarded-For: the worker's socket is HAProxy's; sticky-rs routes by the header.
      describe: 'routeBy x-forwarded-for behind HAProxy (example/haproxy/haproxy.cfg: balance source, option forwardfor)',
      test: '200 client addresses: each on one host and one worker (the djb2 slot of its own address there); each of the 2 hosts 15-85%',
      config: 'haproxy.cfg',
      backend: 'sticky_rs_http',
      servers: ['m1', 'm2'],
      routeBy: 'x-forwarded-for',
      seenAsItself: false,
      share: [0.15, 0.85],
      report: 'x-forwarded-for',
    },
  ];
  for (const mode of ADDRESS_MODES) {
    describe(mode.describe, () => {
      let apps = [];
      beforeAll(async () => {
        apps = await startHosts(() => ({ ROUTE_BY: mode.routeBy, TRUSTED_PROXIES: `${NET}.1`, REDIS_URL: report.redis }));
      }, 120000);
      afterAll(stopAllExamples, 30000);

      test(
        mode.test,
        async () => {
          const port = await freePort();
          const lb = await startHaproxy(mode.config, port);
          const hosts = HOSTS.slice(0, mode.servers.length);
          try {
            for (const name of mode.servers)
              await waitUntil(async () => (await lb.server(mode.backend, name)) === 'UP', 10000, `haproxy sees ${name} up`);
            const get = (ipAddr) =>
              new Promise((resolve, reject) => {
                http
                  .get({ host: '127.0.0.1', port, path: '/health', localAddress: ipAddr, agent: false }, (res) => {
                    let body = '';
                    res.on('data', (d) => (body += d));
                    res.on('end', () => resolve(JSON.parse(body)));
                  })
                  .on('error', reject);
              });
            const seen = await pool([...Array(200).keys()], 20, async (i) => {
              const ipAddr = clientIp(2000 + i);
              const answers = [await get(ipAddr), await get(ipAddr), await get(ipAddr)];
              return { ip: ipAddr, answers };
            });
            const perHost = Object.fromEntries(hosts.map((h) => [h, 0]));
            const wrong = [];
            for (const { ip: ipAddr, answers } of seen) {
              const [first] = answers;
              // The route key: the address PROXY v2 named (as the worker's socket shows it), or
              // the X-Forwarded-For entry HAProxy appended (the client's address as text).
              const key = mode.seenAsItself ? first.address : ipAddr;
              if (!answers.every((a) => a.pid === first.pid)) wrong.push(`${ipAddr}: several workers ${answers.map((a) => a.pid)}`);
              if (mode.seenAsItself && first.address.replace(/^::ffff:/, '') !== ipAddr) wrong.push(`${ipAddr}: seen as ${first.address}`);
              if (first.slot !== stringHash(key) % WORKERS)
                wrong.push(`${ipAddr}: slot ${first.slot}, djb2 says ${stringHash(key) % WORKERS}`);
              const host = hostOfPid(apps, first.pid);
              if (!hosts.includes(host))
                wrong.push(`${ipAddr}: pid ${first.pid} of ${host ? `host ${host}, not behind ${mode.config}` : 'no host'}`);
              else perHost[host]++;
            }
            expect(wrong).toEqual([]);
            report[`${mode.report}: addresses per host`] = perHost;
            for (const h of hosts) {
              expect(perHost[h]).toBeGreaterThanOrEqual(mode.share[0] * 200);
              expect(perHost[h]).toBeLessThanOrEqual(mode.share[1] * 200);
            }
          } finally {
            await lb.stop();
          }
        },
        TEST_TIMEOUT,
      );
    });
  }
}
