'use strict';
// The router (`dispatch: 'primary'`) at low descriptor limits: a slot whose worker is stuck, full
// or not ready holds at most its share of the connections the primary may hold, so the accept
// loop never stops for the other slots; its own clients beyond that share are closed (counted in
// `dropped` and `overShare`), and a waiting connection whose client hung up is closed at once.
const net = require('node:net');
const { freePort, startFixture, stopAll, get, pool, clientSet, ipsOf, slotOf } = require('./helpers');

jest.setTimeout(90000);
const clients = clientSet();
afterEach(async () => {
  clients.closeAll();
  await stopAll();
});

/**
 * A raw client from `ip`: sends `GET path` unless `path` is null (an idle client). `outcome`
 * resolves with 'answered' (a status line came), 'closed' (closed or reset with no answer) or
 * 'error:<code>' (never connected).
 */
function client(port, ip, path) {
  const socket = clients.track(net.connect({ port, host: '127.0.0.1', localAddress: ip }));
  let data = '';
  let connected = false;
  socket.setEncoding('latin1');
  socket.on('data', (d) => (data += d));
  const outcome = new Promise((resolve) => {
    socket.on('error', (e) => resolve(connected ? 'closed' : `error:${e.code}`));
    socket.on('close', () => resolve(/^HTTP\/1\.1 \d{3}/.test(data) ? 'answered' : 'closed'));
  });
  const connect = new Promise((resolve) => {
    socket.once('connect', () => {
      connected = true;
      if (path !== null) socket.write(`GET ${path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n`);
      resolve(true);
    });
    socket.once('error', () => resolve(false));
  });
  return { socket, outcome, connect };
}

/** 30 clients of `slot` at once, each with `ms` to be answered: the number answered, and the slowest. */
async function answeredWithin(port, ips, ms) {
  const started = Date.now();
  const results = await pool(ips, ips.length, (ip) =>
    get(port, ip, '/', { timeout: ms }).then(
      (a) => ({ ok: a.status === 200, at: Date.now() - started }),
      () => ({ ok: false, at: Date.now() - started }),
    ),
  );
  return { answered: results.filter((r) => r.ok).length, slowest: Math.max(...results.map((r) => r.at)) };
}

/** Waits until `condition(stats)` holds (polling), at most `timeout` ms; returns the last stats. */
async function until(app, condition, timeout) {
  return app.statsWhen(condition, timeout);
}

const held = (s) => s.queued + s.inFlight;

test("ulimit 1024: slot 0's worker blocks 8 s while 700 of its clients arrive; slot 1's 30 clients are each answered within 1 s", async () => {
  const port = await freePort();
  const app = startFixture('cluster-app.js', { PORT: port, WORKERS: 2, DISPATCH: 'primary' }, { fdLimit: 1024 });
  await app.count('ready', 2);
  const zero = ipsOf(0, 2, 701);
  const one = ipsOf(1, 2, 31);
  const blocker = client(port, zero[0], '/block?ms=8000');
  await app.next((e) => e.event === 'worker-blocking');
  const stuck = zero.slice(1).map((ip) => client(port, ip, '/'));
  // Every one of them reached the primary (accepted, or waiting in the kernel's backlog).
  await Promise.all(stuck.map((c) => c.connect));
  const during = await until(app, (s) => s.slots[0].accepted >= 701, 3000);
  const { answered, slowest } = await answeredWithin(port, one.slice(0, 30), 1000);
  const after = await app.stats();
  console.log(
    `blocked slot 0 at ulimit 1024: slot 0 accepted ${during.slots[0].accepted}, held ${held(after.slots[0])}, dropped ${after.slots[0].dropped}; slot 1 answered ${answered} of 30, slowest ${slowest} ms`,
  );
  expect(answered).toBe(30);
  // The stuck slot's policy: everything accepted, kept up to its share, the rest closed and counted.
  expect(after.slots[0].accepted).toBe(701);
  expect(after.slots[0].dropped).toBeGreaterThan(0);
  expect(after.slots[0].overShare).toBe(after.slots[0].dropped);
  expect(held(after.slots[0]) + after.slots[0].dropped + after.slots[0].delivered).toBe(701);
  // Once the worker is back, what it kept is answered; nothing is answered twice or lost.
  const outcomes = await Promise.all(stuck.map((c) => c.outcome));
  expect(await blocker.outcome).toBe('answered');
  const kept = outcomes.filter((o) => o === 'answered').length;
  expect(kept).toBe(700 - after.slots[0].dropped);
  // And it serves new clients again at once.
  const again = await answeredWithin(port, ipsOf(0, 2, 10, 2000), 1000);
  expect(again.answered).toBe(10);
});

test('ulimit 256: 400 idle clients on slot 0 cost slot 1 nothing; once they leave, slot 0 serves new clients within 1 s', async () => {
  const port = await freePort();
  const app = startFixture('cluster-app.js', { PORT: port, WORKERS: 2, DISPATCH: 'primary' }, { fdLimit: 256 });
  await app.count('ready', 2);
  const idle = ipsOf(0, 2, 400).map((ip) => client(port, ip, null));
  await Promise.all(idle.map((c) => c.connect));
  // The worker of slot 0 holds what its descriptors allow; the primary what its share allows.
  const during = await until(app, (s) => s.slots[0].accepted >= 400, 5000);
  const { answered, slowest } = await answeredWithin(port, ipsOf(1, 2, 30), 1000);
  console.log(
    `400 idle clients on slot 0 at ulimit 256: slot 0 accepted ${during.slots[0].accepted}, held ${held(during.slots[0])}, dropped ${during.slots[0].dropped}; slot 1 answered ${answered} of 30, slowest ${slowest} ms`,
  );
  expect(answered).toBe(30);
  expect(during.slots[0].accepted).toBe(400);
  for (const c of idle) c.socket.destroy();
  // Their connections held in the primary are closed at once, and new clients are served.
  const rest = await until(app, (s) => s.slots[0].queued === 0, 1000);
  expect(rest.slots[0].queued).toBe(0);
  const again = await answeredWithin(port, ipsOf(0, 2, 10, 2000), 1000);
  console.log(`after the idle clients left: slot 0 answered ${again.answered} of 10, slowest ${again.slowest} ms`);
  expect(again.answered).toBe(10);
});

// More clients than the router may hold at that limit, fewer than queueLimit (1024).
test.each([
  [256, 300],
  [2048, 1020],
])('ulimit %d: a slot without a ready worker keeps its share only; the other slot answers each client within 1 s', async (fdLimit, n) => {
  const port = await freePort();
  const app = startFixture(
    'cluster-app.js',
    { PORT: port, WORKERS: 2, DISPATCH: 'primary', STALL_SLOT: 0, READY_TIMEOUT: 60000 },
    { fdLimit },
  );
  await app.next((e) => e.event === 'ready' && e.slot === 1);
  const waiting = ipsOf(0, 2, n).map((ip) => client(port, ip, '/'));
  await Promise.all(waiting.map((c) => c.connect));
  const during = await until(app, (s) => s.slots[0].accepted >= n, 5000);
  const { answered, slowest } = await answeredWithin(port, ipsOf(1, 2, 30), 1000);
  console.log(
    `slot 0 not ready at ulimit ${fdLimit}: held ${held(during.slots[0])}, dropped ${during.slots[0].dropped}; slot 1 answered ${answered} of 30, slowest ${slowest} ms`,
  );
  expect(answered).toBe(30);
  expect(during.slots[0]).toMatchObject({ accepted: n, delivered: 0 });
  expect(during.slots[0].queued + during.slots[0].dropped).toBe(n);
  expect(during.slots[0].overShare).toBe(during.slots[0].dropped);
});

test('a waiting connection whose client hung up (closed or reset) is closed at once', async () => {
  const port = await freePort();
  const app = startFixture('cluster-app.js', { PORT: port, WORKERS: 2, DISPATCH: 'primary', STALL_SLOT: 0, READY_TIMEOUT: 60000 });
  await app.next((e) => e.event === 'ready' && e.slot === 1);
  const ips = ipsOf(0, 2, 60);
  // Idle clients that close, clients that sent a request and reset, and 20 that stay.
  const gone = ips.slice(0, 40).map((ip, i) => client(port, ip, i < 20 ? null : '/'));
  const stay = ips.slice(40).map((ip) => client(port, ip, '/'));
  await Promise.all([...gone, ...stay].map((c) => c.connect));
  await until(app, (s) => s.slots[0].queued === 60, 5000);
  const closedAt = Date.now();
  for (const [i, c] of gone.entries()) {
    if (i < 20) c.socket.destroy();
    else c.socket.resetAndDestroy();
  }
  const after = await until(app, (s) => s.slots[0].queued === 20, 1000);
  console.log(
    `hung-up clients: queued ${after.slots[0].queued} ${Date.now() - closedAt} ms after 40 of 60 left; abandoned ${after.slots[0].abandoned}`,
  );
  expect(after.slots[0]).toMatchObject({ queued: 20, abandoned: 40, dropped: 0 });
  expect(slotOf(ips[0], 2)).toBe(0);
});
