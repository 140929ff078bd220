'use strict';
// Bad input, listen errors, channel security, and connections that misbehave.
const cluster = require('node:cluster');
const fs = require('node:fs');
const http = require('node:http');
const net = require('node:net');
const sticky = require('..');
const { range, freePort, clientIp, startFixture, stopAll, get, pool, total } = require('./helpers');

afterEach(stopAll);

const start = (cb) => cb(http.createServer());

describe('invalid options throw in the primary before anything is forked', () => {
  test.each([
    [{ concurrency: -1 }, RangeError, /"concurrency".*-1/],
    [{ concurrency: 2.5 }, RangeError, /"concurrency".*2\.5/],
    [{ concurrency: 'four' }, TypeError, /"concurrency".*"four"/],
    [{ port: 70000 }, RangeError, /"port".*70000/],
    [{ port: -5 }, RangeError, /"port".*-5/],
    [{ port: 'http' }, TypeError, /"port".*"http"/],
    [{ host: 42 }, TypeError, /"host".*42/],
    [{ backlog: -1 }, RangeError, /"backlog".*-1/],
    [{ prefix: 7 }, TypeError, /"prefix".*7/],
    [{ env: { a: 1 } }, TypeError, /"env".*an object/],
    [{ errorHandler: 'log' }, TypeError, /"errorHandler".*"log"/],
    [{ hardShutdownDelay: -1 }, RangeError, /"hardShutdownDelay".*-1/],
    [{ queueLimit: -1 }, RangeError, /"queueLimit".*-1/],
    [{ hash: 'md5' }, TypeError, /"hash".*djb2.*"md5"/],
    [{ concurency: 2 }, TypeError, /unknown option "concurency"/],
    [{ routeBy: 'x forwarded', trustedProxies: ['::1'] }, TypeError, /"routeBy".*"x forwarded"/],
    [{ routeBy: 'x-forwarded-for' }, TypeError, /"routeBy".*needs "trustedProxies"/],
    [{ routeBy: 'proxy-protocol', trustedProxies: ['10.0.0.0/33'] }, TypeError, /"trustedProxies".*"10\.0\.0\.0\/33"/],
    [{ trustedProxies: '10.0.0.1' }, TypeError, /"trustedProxies" must be an array/],
    [{ peekLimit: 10 }, RangeError, /"peekLimit".*10/],
    [{ listeners: [{ port: 80 }], port: 81 }, TypeError, /either "listeners" or "port"/],
    [{ listeners: [{ port: 80 }, { port: 'x' }] }, TypeError, /"listeners\[1\]\.port".*"x"/],
    [{ listeners: [{ port: 80, tls: true }] }, TypeError, /unknown option "listeners\[0\]\.tls"/],
    [{ listeners: [] }, TypeError, /"listeners" must be an array of 1 to 255/],
  ])('%p', (options, type, message) => {
    expect(() => sticky(start, options)).toThrow(type);
    expect(() => sticky(start, options)).toThrow(message);
    expect(Object.keys(cluster.workers)).toHaveLength(0);
  });

  test('startFn and the options object themselves', () => {
    expect(() => sticky('app.js')).toThrow(TypeError);
    expect(() => sticky('app.js')).toThrow(/first argument must be a function.*"app\.js"/);
    expect(() => sticky(start, 8080)).toThrow(/options must be an object, got 8080/);
  });

  test('listen(server, port, options)', () => {
    const server = http.createServer();
    expect(() => sticky.listen({}, 8080)).toThrow(/needs a server/);
    expect(() => sticky.listen(server, 65536)).toThrow(RangeError);
    expect(() => sticky.listen(server, undefined)).toThrow(/"port" must be a number, got undefined/);
    expect(() => sticky.listen(server, 80, { workers: 0.5 })).toThrow(/"workers".*0\.5/);
    expect(() => sticky.listen(server, 80, { env: 'X=1' })).toThrow(/"env" must be an object/);
    expect(() => sticky.listen(server, 80, { concurrency: 2 })).toThrow(/unknown option "concurrency"/);
    expect(Object.keys(cluster.workers)).toHaveLength(0);
  });
});

async function occupied() {
  const port = await freePort();
  const blocker = net.createServer();
  await new Promise((resolve) => blocker.listen(port, '::', resolve));
  return { port, blocker };
}

test('a port in use reaches errorHandler with EADDRINUSE, and no worker is forked', async () => {
  const { port, blocker } = await occupied();
  try {
    const app = startFixture('cluster-app.js', { PORT: port, WORKERS: 2 });
    const error = await app.next((e) => e.event === 'error');
    expect(error).toMatchObject({ code: 'EADDRINUSE', syscall: 'listen' });
    expect(error.message).toMatch(/^listen EADDRINUSE: /);
    expect((await app.exited).code).toBe(3);
    expect(app.events.filter((e) => e.event === 'fork')).toHaveLength(0);
  } finally {
    blocker.close();
  }
});

test("listen(): a port in use is an 'error' event on the user's server", async () => {
  const { port, blocker } = await occupied();
  try {
    const app = startFixture('session-app.js', { PORT: port, WORKERS: 2 });
    expect(await app.next((e) => e.event === 'error')).toMatchObject({ code: 'EADDRINUSE' });
  } finally {
    blocker.close();
  }
});

// Every Unix socket the given processes hold, with its bound name ('' for anonymous ones).
function unixSockets(pids) {
  const names = new Map();
  for (const line of fs.readFileSync('/proc/net/unix', 'utf8').split('\n').slice(1)) {
    const cols = line.trim().split(/\s+/);
    if (cols.length >= 7) names.set(cols[6], cols[7] || '');
  }
  const held = [];
  for (const pid of pids) {
    for (const fd of fs.readdirSync(`/proc/${pid}/fd`)) {
      let link;
      try {
        link = fs.readlinkSync(`/proc/${pid}/fd/${fd}`);
      } catch {
        continue;
      }
      const m = /^socket:\[(\d+)\]$/.exec(link);
      if (m && names.has(m[1])) held.push({ pid, fd, name: names.get(m[1]) });
    }
  }
  return held;
}

test('no process outside the cluster can obtain connections: every channel is anonymous', async () => {
  const port = await freePort();
  const app = startFixture('cluster-app.js', { PORT: port, WORKERS: 2 });
  const ready = await Promise.all([0, 1].map((slot) => app.next((e) => e.event === 'ready' && e.slot === slot)));
  // Connections flow, so every channel exists now.
  await pool([1, 2, 3, 4].map(clientIp), 4, (ip) => get(port, ip));
  const sockets = unixSockets([app.child.pid, ...ready.map((r) => r.pid)]);
  // Node's IPC channel and our fd channel in each process.
  expect(sockets.length).toBeGreaterThanOrEqual(6);
  // A rogue local process could only reach a socket with a name (a path or an abstract name).
  const reachable = sockets.filter((s) => s.name !== '');
  expect(reachable).toEqual([]);
  // Nothing leaks by inheritance: each worker holds Node's IPC channel and its own fd channel
  // (no other worker's), and a program a worker starts inherits no socket at all.
  // (fds 0-2 are the stdio socketpairs the test harness gave the fixture.)
  for (const { pid } of ready) expect(sockets.filter((s) => s.pid === pid && Number(s.fd) > 2)).toHaveLength(2);
  const child = await get(port, clientIp(1), '/child-sockets');
  expect(child.body.inherited).toEqual([]);
});

test('1,000 connect-then-reset connections: the primary stays up and its fds return to baseline', async () => {
  const port = await freePort();
  const app = startFixture('cluster-app.js', { PORT: port, WORKERS: 2 });
  await app.count('ready', 2);
  await pool(range(10), 5, (i) => get(port, clientIp(i)));
  await app.atRest();
  const baseline = app.fdCount();
  await pool(
    range(1000),
    50,
    (i) =>
      new Promise((resolve) => {
        const s = net.connect({ port, host: '127.0.0.1', localAddress: clientIp(i) });
        s.on('connect', () => {
          s.resetAndDestroy();
          resolve();
        });
        s.on('error', resolve);
      }),
  );
  for (let i = 0; i < 100 && app.fdCount() !== baseline; i++) await new Promise((r) => setTimeout(r, 50));
  expect(app.fdCount()).toBe(baseline);
  const answers = await pool(range(20), 10, (i) => get(port, clientIp(i)));
  expect(answers.every((a) => a.status === 200)).toBe(true);
  await app.atRest(); // acknowledgements are read within a tick
  const stats = await app.statsWhen((s) => total(s, 'delivered') >= 1030);
  expect(total(stats, 'accepted')).toBe(1030);
  expect(total(stats, 'delivered')).toBe(1030);
  expect(total(stats, 'queued') + total(stats, 'inFlight')).toBe(0);
});

test('the wait for a worker that is not ready is bounded: past queueLimit connections are closed and counted', async () => {
  const port = await freePort();
  const app = startFixture('cluster-app.js', { PORT: port, WORKERS: 1, INIT_DELAY: 1500, QUEUE_LIMIT: 5, DISPATCH: 'primary' }); // the router's queue
  await app.next((e) => e.event === 'listening');
  const outcomes = await pool(range(20), 20, (i) =>
    get(port, clientIp(i)).then(
      (a) => a.status,
      (e) => e.code,
    ),
  );
  expect(outcomes.filter((o) => o === 200)).toHaveLength(5);
  expect(outcomes.filter((o) => o !== 200)).toHaveLength(15);
  await app.atRest();
  const stats = await app.stats();
  expect(stats.slots[0]).toMatchObject({ accepted: 20, delivered: 5, dropped: 15, queued: 0 });
});

test('few descriptors: the primary stops accepting instead of failing, and serves everyone', async () => {
  const port = await freePort();
  // 1,000 queue places but few descriptors: waiting connections would exhaust them.
  const app = startFixture(
    'cluster-app.js',
    { PORT: port, WORKERS: 1, INIT_DELAY: 2500, QUEUE_LIMIT: 1000, DISPATCH: 'primary' },
    { fdLimit: 90 },
  ); // the router's holding
  await app.next((e) => e.event === 'listening');
  const answers = pool(range(150), 150, (i) => get(port, clientIp(i), '/', { timeout: 20000 }));
  await new Promise((r) => setTimeout(r, 700));
  const cpuBefore = app.cpuMs();
  await new Promise((r) => setTimeout(r, 1000));
  // Connections pending and no worker ready: a busy loop would burn ~1000 ms of CPU here.
  expect(app.cpuMs() - cpuBefore).toBeLessThan(150);
  expect(app.events.filter((e) => e.event === 'ready')).toHaveLength(0);
  const results = await answers;
  expect(results.filter((a) => a.status === 200)).toHaveLength(150);
  await app.atRest();
  const stats = await app.stats();
  expect(stats.slots[0]).toMatchObject({ accepted: 150, delivered: 150, dropped: 0 });
});

test('EMFILE on accept: the primary backs off instead of spinning, then serves everyone', async () => {
  const port = await freePort();
  const app = startFixture('cluster-app.js', { PORT: port, WORKERS: 1, DISPATCH: 'primary' }, { fdLimit: 200 }); // the router's accept
  await app.count('ready', 1);
  app.command('hog');
  expect(await app.next((e) => e.event === 'hogged')).toMatchObject({ code: 'EMFILE' });
  const answers = pool(range(100), 100, (i) => get(port, clientIp(i), '/', { timeout: 20000 }));
  await new Promise((r) => setTimeout(r, 300));
  const cpuBefore = app.cpuMs();
  await new Promise((r) => setTimeout(r, 1000));
  expect(app.cpuMs() - cpuBefore).toBeLessThan(150);
  const during = await app.stats();
  expect(during.acceptErrors).toBeGreaterThan(0);
  // Retries are paced (100 ms apart), not a spin.
  expect(during.acceptErrors).toBeLessThan(40);
  app.command('release');
  const results = await answers;
  expect(results.filter((a) => a.status === 200)).toHaveLength(100);
  await app.atRest();
  const after = await app.stats();
  expect(after.slots[0]).toMatchObject({ accepted: 100, delivered: 100, dropped: 0 });
});
