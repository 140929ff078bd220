'use strict';
// Lifecycle paths no other suite drives from outside: redelivery of connections a dead worker
// never acknowledged, connections the kernel dropped on their way into a worker that is out of
// descriptors, the 'sticky:shutdown' hook's waitUntil, hardShutdownDelay running out, SIGHUP
// reload, and a second signal during a graceful shutdown. Real processes, sockets and signals.
const fs = require('node:fs');
const net = require('node:net');
const os = require('node:os');
const path = require('node:path');
const { within, until, range, freePort, clientIp, startFixture, stopAll, get, alive, ipsOf } = require('./helpers');

afterEach(stopAll);

/**
 * One `GET path` with `Connection: close` on a raw socket from `ip`, reading everything until the
 * server closes, so that a second answer on the same connection would be seen. Never rejects:
 * { answers, status, body, firstByteAt } or { answers: 0, error }.
 */
function rawGet(port, ip, urlPath, timeout = 15000) {
  return new Promise((resolve) => {
    const socket = net.connect({ port, host: '127.0.0.1', localAddress: ip });
    let data = '';
    let firstByteAt = null;
    let error = null;
    socket.setEncoding('latin1');
    socket.setTimeout(timeout, () => socket.destroy(new Error(`no close within ${timeout} ms`)));
    socket.on('connect', () => socket.write(`GET ${urlPath} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n`));
    socket.on('data', (chunk) => {
      if (firstByteAt === null) firstByteAt = Date.now();
      data += chunk;
    });
    socket.on('error', (err) => {
      error = err.code || err.message;
    });
    socket.on('close', () => {
      const answers = (data.match(/^HTTP\/1\.1 \d{3}/gm) || []).length;
      if (answers === 0) {
        resolve({ answers, error: error || 'closed without an answer' });
        return;
      }
      const status = Number(/^HTTP\/1\.1 (\d{3})/.exec(data)[1]);
      let body = data.slice(data.indexOf('\r\n\r\n') + 4);
      try {
        body = JSON.parse(body);
      } catch {}
      resolve({ answers, status, body, firstByteAt, error });
    });
  });
}

/** A `/hang` request: resolves once its worker is inside the handler (the first chunk arrived). */
function hangingRequest(port, ip) {
  return new Promise((resolve, reject) => {
    const socket = net.connect({ port, host: '127.0.0.1', localAddress: ip });
    const closed = new Promise((r) => socket.once('close', r));
    socket.on('connect', () => socket.write('GET /hang HTTP/1.1\r\nHost: x\r\n\r\n'));
    socket.once('data', () => resolve({ socket, closed }));
    socket.on('error', () => {});
    socket.once('close', () => reject(new Error('/hang closed before its first chunk')));
  });
}

/** Resolves once a connection to `port` is refused (the primary stopped accepting). */
function refused(port) {
  return until(
    'the listener closes',
    () =>
      new Promise((resolve) => {
        const s = net.connect({ port, host: '127.0.0.1', localAddress: clientIp(999) });
        s.on('connect', () => {
          s.destroy();
          resolve(false);
        });
        s.on('error', (err) => resolve(err.code === 'ECONNREFUSED'));
      }),
    3000,
  );
}

test('a worker SIGKILLed before acknowledging its connections: the replacement answers each exactly once', async () => {
  const port = await freePort();
  const marker = path.join(os.tmpdir(), `sticky-rs-hold-${process.pid}-${Date.now()}`);
  try {
    // The test hook in lib/worker.js: the first worker to receive connections holds them, unacknowledged.
    const app = startFixture('cluster-app.js', { PORT: port, WORKERS: 2, STICKY_RS_TEST_HOLD_BEFORE_ACK: marker, DISPATCH: 'primary' }); // the router's redelivery
    await app.count('ready', 2);
    const ips = ipsOf(0, 2, 20);
    const before = (await app.stats()).slots[0];
    const answers = ips.map((ip, i) => rawGet(port, ip, `/held-${i}`));
    // In flight as soon as they are sent; held once the worker received them (the marker says so).
    await until(
      '20 connections sent to slot 0, received and not acknowledged',
      async () => fs.existsSync(marker) && (await app.stats()).slots[0].inFlight === 20,
    );
    const holder = Number(fs.readFileSync(marker, 'utf8'));
    expect(holder).toBe(before.pid);
    const killedAt = Date.now();
    process.kill(holder, 'SIGKILL');
    const results = await Promise.all(answers);
    const after = await app.stats();
    console.log(
      `forced redelivery: slot 0 redelivered ${after.slots[0].redelivered - before.redelivered}, acknowledged ${after.slots[0].delivered - before.delivered}; answered in ${Math.max(...results.map((r) => r.firstByteAt)) - killedAt} ms after the SIGKILL`,
    );
    expect(await app.next((e) => e.event === 'exit' && e.pid === holder)).toMatchObject({ slot: 0, signal: 'SIGKILL' });
    const replacement = after.slots[0].pid;
    expect(replacement).not.toBe(holder);
    // Every connection answered once, by the replacement, to its own request, and none before the kill.
    for (const [i, r] of results.entries()) {
      expect(r).toMatchObject({ answers: 1, status: 200, body: { pid: replacement, url: `/held-${i}` } });
      expect(r.firstByteAt).toBeGreaterThanOrEqual(killedAt);
    }
    // The router gave back exactly what the dead worker held; the replacement acknowledged each once.
    expect(after.slots[0].redelivered - before.redelivered).toBe(20);
    expect(after.slots[0].delivered - before.delivered).toBe(20);
    expect(after.slots[0].inFlight + after.slots[0].queued).toBe(0);
  } finally {
    fs.rmSync(marker, { force: true });
  }
});

test('a worker out of descriptors (MSG_CTRUNC): the connections the kernel dropped are sent again, each answered once', async () => {
  const port = await freePort();
  // At a small limit, running out takes 1,000 descriptors, not the machine's default count.
  const app = startFixture('cluster-app.js', { PORT: port, WORKERS: 2, DISPATCH: 'primary' }, { fdLimit: 1024 }); // the channel's Lost records
  await app.count('ready', 2);
  const ips = ipsOf(0, 2, 21);
  // The worker of slot 0 takes every free descriptor for 1.5 s once this answer is sent.
  const hog = await rawGet(port, ips[0], '/hog?ms=1500');
  expect(hog).toMatchObject({ answers: 1, status: 200 });
  const hogged = await app.next((e) => e.event === 'worker-hogged' && e.pid === hog.body.pid);
  expect(hogged.code).toBe('EMFILE');
  const before = (await app.stats()).slots[0];
  const started = Date.now();
  const results = await Promise.all(ips.slice(1).map((ip, i) => rawGet(port, ip, `/lost-${i}`)));
  const after = await app.stats();
  const redelivered = after.slots[0].redelivered - before.redelivered;
  console.log(
    `out of descriptors: ${hogged.count} hogged, slot 0 redelivered ${redelivered} connection(s), all 20 answered in ${Date.now() - started} ms`,
  );
  for (const [i, r] of results.entries()) {
    expect(r).toMatchObject({ answers: 1, status: 200, body: { pid: hog.body.pid, url: `/lost-${i}` } });
  }
  // Each lost connection counts once, however often it was sent again meanwhile (every 50 ms
  // while the worker had no descriptor).
  expect(redelivered).toBeGreaterThan(0);
  expect(redelivered).toBeLessThanOrEqual(20);
  expect(after.slots[0].delivered - before.delivered).toBe(20);
  // Nobody died for it.
  expect(app.events.filter((e) => e.event === 'exit')).toEqual([]);
});

test("'sticky:shutdown' with waitUntil: each worker exits only after its hook settled; the primary exits 0", async () => {
  const port = await freePort();
  const app = startFixture('cluster-app.js', { PORT: port, WORKERS: 2, SHUTDOWN_HOOK_MS: 800, HARD_SHUTDOWN_DELAY: 20000 });
  await app.count('ready', 2);
  const pids = (await app.stats()).slots.map((s) => s.pid);
  const started = Date.now();
  app.child.kill('SIGTERM');
  const exits = await Promise.all(pids.map((pid) => app.next((e) => e.event === 'exit' && e.pid === pid, 10000)));
  expect(await within(app.exited, 5000)).toEqual({ code: 0, signal: null });
  const elapsed = Date.now() - started;
  console.log(`waitUntil(800 ms): the primary exited 0 after ${elapsed} ms`);
  expect(elapsed).toBeGreaterThanOrEqual(800);
  for (const [k, pid] of pids.entries()) {
    // A worker's stdout write lands before its exit, which the primary reports after.
    const hookDone = app.events.findIndex((e) => e.event === 'worker-hook-done' && e.pid === pid);
    expect(hookDone).toBeGreaterThanOrEqual(0);
    expect(app.events.indexOf(exits[k])).toBeGreaterThan(hookDone);
    expect(exits[k]).toMatchObject({ code: 0, signal: null });
  }
});

test('hardShutdownDelay runs out: the primary exits 1 after about that long, the workers are killed', async () => {
  const port = await freePort();
  const app = startFixture('cluster-app.js', { PORT: port, WORKERS: 2, HARD_SHUTDOWN_DELAY: 1500 });
  await app.count('ready', 2);
  const pids = (await app.stats()).slots.map((s) => s.pid);
  const hanging = await hangingRequest(port, ipsOf(0, 2, 1)[0]);
  const started = Date.now();
  app.child.kill('SIGTERM');
  const exit = await within(app.exited, 8000);
  const elapsed = Date.now() - started;
  console.log(`hardShutdownDelay 1500 ms with a request that never finishes: exit ${JSON.stringify(exit)} after ${elapsed} ms`);
  expect(exit).toEqual({ code: 1, signal: null });
  // The primary's timer starts after this clock's; the margin covers a timer firing a tick early.
  expect(elapsed).toBeGreaterThanOrEqual(1450);
  expect(elapsed).toBeLessThan(1500 + 2500);
  expect(await within(hanging.closed, 2000)).not.toBe('timeout');
  await until('every worker gone', () => pids.every((pid) => !alive(pid)), 3000);
  // The operator learns why it exited 1 and which worker held the shutdown up.
  // (The hanging request is slot 0's.)
  expect(app.stderr).toMatch(
    new RegExp(
      `warning: shutdown: hardShutdownDelay \\(1500 ms\\) ran out with 1 worker\\(s\\) still finishing their connections: slot 0 \\(pid ${pids[0]}\\); killing them, exit code 1`,
    ),
  );
});

test.each([
  ['the primary', (pid) => pid],
  // What a closed terminal does: workers ignore it, only the primary reloads.
  ['the whole process group', (pid) => -pid],
])('SIGHUP to %s reloads every slot: requests before, during and after all answered, old workers exit 0', async (_, target) => {
  const port = await freePort();
  const app = startFixture('cluster-app.js', { PORT: port, WORKERS: 3 });
  await app.count('ready', 3);
  const old = (await app.stats()).slots.map((s) => s.pid);
  const ips = range(100).map(clientIp);
  let phase = 'before';
  const served = { before: 0, during: 0, after: 0 };
  const servedBy = { before: new Set(), during: new Set(), after: new Set() };
  const failures = [];
  let running = true;
  const loaders = range(8).map(async (k) => {
    for (let i = k; running; i += 8) {
      const at = phase;
      const r = await get(port, ips[i % ips.length]).catch((err) => ({ status: 0, error: err.code || err.message }));
      if (r.status === 200) {
        served[at]++;
        servedBy[at].add(r.body.pid);
      } else failures.push({ phase: at, error: r.error || r.status });
    }
  });
  try {
    await until('load before the reload', () => served.before >= 50);
    phase = 'during';
    const started = Date.now();
    process.kill(target(app.child.pid), 'SIGHUP');
    const exits = await Promise.all(old.map((pid) => app.next((e) => e.event === 'exit' && e.pid === pid, 20000)));
    const reloadMs = Date.now() - started;
    phase = 'after';
    await until('load after the reload', () => served.after >= 50);
    running = false;
    await Promise.all(loaders);
    console.log(
      `SIGHUP reload: ${reloadMs} ms; served before/during/after ${served.before}/${served.during}/${served.after}, ${failures.length} failed`,
    );
    expect(failures).toEqual([]);
    expect(served.during).toBeGreaterThan(0);
    for (const e of exits) expect(e).toMatchObject({ code: 0, signal: null });
    const { slots } = await app.stats();
    for (const [i, s] of slots.entries()) {
      expect(s.ready).toBe(true);
      expect(s.pid).not.toBe(old[i]);
    }
    // Whatever started after the old workers were gone was served by the new ones.
    for (const pid of servedBy.after) expect(slots.map((s) => s.pid)).toContain(pid);
    expect(app.stderr).not.toMatch(/reload incomplete/);
  } finally {
    running = false;
  }
});

test('SIGHUP during a reload: every slot ends up on a worker forked after the last SIGHUP', async () => {
  const port = await freePort();
  // Slow starts: the second SIGHUP lands while the first reload is half done.
  const app = startFixture('cluster-app.js', { PORT: port, WORKERS: 3, INIT_DELAY: 600 });
  await app.count('ready', 3);
  process.kill(app.child.pid, 'SIGHUP');
  await app.count('ready', 4, 10000); // slot 0 replaced, slots 1 and 2 not yet
  process.kill(app.child.pid, 'SIGHUP');
  process.kill(app.child.pid, 'SIGHUP'); // a third joins the second
  const asked = app.events.length;
  // 3 + 3 + 3 workers became ready; no more.
  await app.count('ready', 9, 20000);
  const forkedAfter = app.events
    .slice(asked)
    .filter((e) => e.event === 'fork')
    .map((e) => e.pid);
  const { slots } = await app.stats();
  for (const s of slots) {
    expect(s.ready).toBe(true);
    expect(forkedAfter).toContain(s.pid);
  }
  await new Promise((r) => setTimeout(r, 1500));
  expect(app.events.filter((e) => e.event === 'fork')).toHaveLength(9);
  expect(app.stderr).not.toMatch(/reload incomplete/);
});

describe('a second signal during a graceful shutdown', () => {
  test.each([
    ['SIGTERM', 'SIGTERM'],
    ['SIGINT', 'SIGINT'],
    ['SIGTERM', 'SIGINT'],
  ])('%s then %s: the primary exits at once with code 1, its workers go too', async (first, second) => {
    const port = await freePort();
    // Without the second signal this shutdown would wait 20 s for the request that never finishes.
    const app = startFixture('cluster-app.js', { PORT: port, WORKERS: 2, HARD_SHUTDOWN_DELAY: 20000 });
    await app.count('ready', 2);
    const pids = (await app.stats()).slots.map((s) => s.pid);
    const hanging = await hangingRequest(port, ipsOf(0, 2, 1)[0]);
    app.child.kill(first);
    await refused(port); // the graceful shutdown is under way
    expect(app.child.exitCode).toBe(null);
    const started = Date.now();
    app.child.kill(second);
    const exit = await within(app.exited, 5000);
    const elapsed = Date.now() - started;
    expect(exit).toEqual({ code: 1, signal: null });
    expect(elapsed).toBeLessThan(1500);
    // Workers leave when their primary is gone (Node's cluster worker exits on disconnect).
    await until('every worker gone', () => pids.every((pid) => !alive(pid)), 3000);
    expect(await within(hanging.closed, 2000)).not.toBe('timeout');
  });
});

// Not here: a listener failing. The router reports one only when polling the listening socket
// itself fails (tokio's readiness error), which nothing outside the process can cause; accept()
// errors (EMFILE...) are counted as acceptErrors and retried instead (faults.test.js).
