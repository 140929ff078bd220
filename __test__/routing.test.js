'use strict';
// Stickiness, the ready gate, respawns and the worker server's own timeouts, end to end.
const net = require('node:net');
const http = require('node:http');
const stringHash = require('string-hash');
const { range, freePort, clientIp, startFixture, stopAll, get, pool, total } = require('./helpers');

afterEach(stopAll);

test('200 client IPs x 3 requests over 4 workers: one pid per IP, slot = djb2(addr) % 4, all used', async () => {
  const port = await freePort();
  const app = startFixture('cluster-app.js', { PORT: port, WORKERS: 4 });
  await app.count('ready', 4);
  const requests = range(600).map((i) => clientIp(i % 200));
  const answers = await pool(requests, 20, (ip) => get(port, ip));
  const pidOf = new Map();
  const pidsBySlot = new Map();
  for (const [i, { status, body }] of answers.entries()) {
    expect(status).toBe(200);
    const ip = requests[i];
    expect(body.remoteAddress).toBe(`::ffff:${ip}`);
    expect(body.slot).toBe(stringHash(body.remoteAddress) % 4);
    if (!pidOf.has(ip)) pidOf.set(ip, body.pid);
    expect(body.pid).toBe(pidOf.get(ip));
    pidsBySlot.set(body.slot, (pidsBySlot.get(body.slot) || new Set()).add(body.pid));
  }
  expect([...pidsBySlot.keys()].sort()).toEqual([0, 1, 2, 3]);
  for (const pids of pidsBySlot.values()) expect(pids.size).toBe(1);
  await app.atRest(); // acknowledgements are read within a tick
  const stats = await app.statsWhen((s) => total(s, 'delivered') >= 600);
  expect(total(stats, 'accepted')).toBe(600);
  expect(total(stats, 'delivered')).toBe(600);
  expect(total(stats, 'dropped')).toBe(0);
  expect(stats.acceptErrors).toBe(0);
});

test('the sticky-session API: false in the primary, true in workers, listening emitted, env passed', async () => {
  const port = await freePort();
  const app = startFixture('session-app.js', { PORT: port, WORKERS: 2 });
  const listening = await app.next((e) => e.event === 'listening');
  expect(listening.returned).toBe(false);
  const answers = await pool(range(40), 10, (i) => get(port, clientIp(i)));
  const pids = new Set();
  for (const { status, body } of answers) {
    expect(status).toBe(200);
    expect(body.tag).toBe('from-env');
    expect(body.pid).not.toBe(listening.pid);
    pids.add(body.pid);
  }
  expect(pids.size).toBe(2);
});

test('async init: requests sent before the workers hand their servers over are all answered', async () => {
  const port = await freePort();
  const app = startFixture('cluster-app.js', { PORT: port, WORKERS: 2, INIT_DELAY: 1000 });
  await app.next((e) => e.event === 'listening');
  const sentAt = Date.now();
  const pending = pool(range(50), 50, (i) => get(port, clientIp(i)));
  // Every request is in flight before any worker is ready.
  expect(app.events.filter((e) => e.event === 'ready')).toHaveLength(0);
  const answers = await pending;
  expect(answers.every((a) => a.status === 200)).toBe(true);
  expect(new Set(answers.map((a) => a.body.pid)).size).toBe(2);
  expect(Date.now() - sentAt).toBeGreaterThanOrEqual(900);
  const stats = await app.stats();
  expect(stats.slots.reduce((n, s) => n + s.dropped, 0)).toBe(0);
});

test('respawn: the replacement keeps the slot index; no other client moves', async () => {
  const port = await freePort();
  const app = startFixture('cluster-app.js', { PORT: port, WORKERS: 4 });
  await app.count('ready', 4);
  const ips = range(80).map(clientIp);
  const before = await pool(ips, 20, (ip) => get(port, ip));
  const victim = before[0].body;
  process.kill(victim.pid, 'SIGKILL');
  await app.next((e) => e.event === 'exit' && e.pid === victim.pid);
  const replacement = await app.next((e) => e.event === 'ready' && e.slot === victim.slot && e.pid !== victim.pid);
  const after = await pool(ips, 20, (ip) => get(port, ip));
  for (const [i, { status, body }] of after.entries()) {
    expect(status).toBe(200);
    expect(body.slot).toBe(before[i].body.slot);
    if (body.slot === victim.slot) expect(body.pid).toBe(replacement.pid);
    else expect(body.pid).toBe(before[i].body.pid);
  }
  expect(after.filter((a) => a.body.slot === victim.slot).length).toBeGreaterThan(0);
});

test("the worker's server enforces headersTimeout (408) though it never listened", async () => {
  const port = await freePort();
  const app = startFixture('cluster-app.js', { PORT: port, WORKERS: 1, HEADERS_TIMEOUT: 500 });
  await app.count('ready', 1);
  const started = Date.now();
  const reply = await new Promise((resolve, reject) => {
    const socket = net.connect({ port, host: '127.0.0.1', localAddress: clientIp(1) });
    let data = '';
    socket.on('connect', () => socket.write('GET / HTTP/1.1\r\nHost: x\r\n')); // never finished
    socket.on('data', (d) => (data += d));
    socket.on('close', () => resolve(data));
    socket.on('error', reject);
    socket.setTimeout(10000, () => socket.destroy(new Error('no 408 in 10 s')));
  });
  expect(reply).toMatch(/^HTTP\/1\.1 408 /);
  expect(Date.now() - started).toBeGreaterThanOrEqual(450);
});

test("closeIdleConnections() closes the worker's idle keep-alive connections", async () => {
  const port = await freePort();
  // Idle connections would otherwise only close after a minute.
  const app = startFixture('cluster-app.js', { PORT: port, WORKERS: 1, KEEPALIVE_TIMEOUT: 60000 });
  await app.count('ready', 1);
  const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
  try {
    await get(port, clientIp(1), '/', { agent });
    const [idle] = Object.values(agent.freeSockets).flat();
    expect(idle).toBeDefined();
    const closed = new Promise((resolve, reject) => {
      idle.once('close', resolve);
      setTimeout(() => reject(new Error('the idle connection was not closed within 3 s')), 3000).unref();
    });
    await get(port, clientIp(2), '/close-idle');
    await closed;
  } finally {
    agent.destroy();
  }
});

test('SIGTERM: the primary stops, idle keep-alive connections close, everything exits 0', async () => {
  const port = await freePort();
  const app = startFixture('cluster-app.js', { PORT: port, WORKERS: 2, KEEPALIVE_TIMEOUT: 60000 });
  const ready = await Promise.all([0, 1].map((slot) => app.next((e) => e.event === 'ready' && e.slot === slot)));
  const agent = new http.Agent({ keepAlive: true });
  try {
    await pool(range(10), 10, (i) => get(port, clientIp(i), '/', { agent }));
    expect(Object.values(agent.freeSockets).flat().length).toBeGreaterThan(0);
    const started = Date.now();
    app.child.kill('SIGTERM');
    const { code } = await app.exited;
    expect(code).toBe(0);
    expect(Date.now() - started).toBeLessThan(5000);
    for (const { pid } of ready) expect(() => process.kill(pid, 0)).toThrow(/ESRCH/);
    await expect(get(port, clientIp(1))).rejects.toThrow(/ECONNREFUSED/);
  } finally {
    agent.destroy();
  }
});
