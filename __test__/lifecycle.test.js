'use strict';
// Faults and lifecycle under load: worker crashes, graceful shutdown, reload, crash loops,
// hung workers, and the primary's resources over many connections.
const fs = require('node:fs');
const net = require('node:net');
const { sleep, range, freePort, clientIp, startFixture, stopAll, get, pool, slotOf, ipsOf } = require('./helpers');

afterEach(stopAll);

// One request; never rejects: { status, body, ms } or { status: 0, error, ms }.
const attempt = (port, ip, options) => {
  const started = Date.now();
  return get(port, ip, '/', options).then(
    (a) => ({ ...a, ms: Date.now() - started }),
    (err) => ({ status: 0, error: err.code || err.message, ms: Date.now() - started }),
  );
};
const slowest = (results) => Math.max(...results.filter((r) => r.status === 200).map((r) => r.ms));

test('SIGKILL one of 4 workers under load (2,000 connections, 200 IPs): only its adopted connections may fail', async () => {
  const port = await freePort();
  const app = startFixture('cluster-app.js', { PORT: port, WORKERS: 4, SLOW_MS: 20 });
  await app.count('ready', 4);
  const victimSlot = 0;
  const victim = (await app.stats()).slots[victimSlot].pid;
  let done = 0;
  const killed = (async () => {
    while (done < 500) await sleep(5);
    process.kill(victim, 'SIGKILL');
  })();
  const ips = range(2000).map((i) => clientIp(i % 200));
  const results = await pool(ips, 64, async (ip) => {
    const r = await attempt(port, ip);
    done++;
    return { ...r, slot: slotOf(ip, 4) };
  });
  await killed;
  const failed = results.filter((r) => r.status !== 200);
  const failedElsewhere = failed.filter((r) => r.slot !== victimSlot);
  const stats = await app.stats();
  const victimWait = slowest(results.filter((r) => r.slot === victimSlot));
  console.log(
    `SIGKILL under load: ${failed.length} of ${results.length} failed, all on the killed slot: ${JSON.stringify(failed.map((f) => f.error))}; redelivered ${stats.slots[victimSlot].redelivered}; slowest success on that slot ${victimWait} ms (20 ms of it the handler)`,
  );
  expect(failedElsewhere).toEqual([]);
  // At most the requests the dead worker was serving (in flight at once: <= 64).
  expect(failed.length).toBeLessThanOrEqual(64);
  expect(stats.slots[victimSlot].pid).not.toBe(victim);
  const after = await pool(range(40).map(clientIp), 20, (ip) => get(port, ip));
  expect(after.every((a) => a.status === 200)).toBe(true);
});

test('SIGTERM under load: accepted requests complete, new ones are refused, exit 0', async () => {
  const port = await freePort();
  const app = startFixture('cluster-app.js', { PORT: port, WORKERS: 2, SLOW_MS: 400 });
  await app.count('ready', 2);
  const inFlight = range(100).map((i) => attempt(port, clientIp(i)));
  await sleep(150); // all connected, responses pending
  app.child.kill('SIGTERM');
  await sleep(50);
  const late = await attempt(port, clientIp(7));
  const results = await Promise.all(inFlight);
  expect(results.filter((r) => r.status !== 200)).toEqual([]);
  expect(late.error).toBe('ECONNREFUSED');
  expect((await app.exited).code).toBe(0);
});

test('reload under continuous load: zero failed requests, new pids everywhere, still sticky', async () => {
  const port = await freePort();
  const app = startFixture('cluster-app.js', { PORT: port, WORKERS: 3 });
  await app.count('ready', 3);
  const before = (await app.stats()).slots.map((s) => s.pid);
  let reloading = true;
  const failures = [];
  let served = 0;
  let longest = 0;
  const ips = range(100).map(clientIp);
  const loaders = range(16).map(async (k) => {
    for (let i = k; reloading; i += 16) {
      const r = await attempt(port, ips[i % ips.length]);
      if (r.status === 200) served++;
      else failures.push(r.error);
      longest = Math.max(longest, r.ms);
    }
  });
  await sleep(300);
  const started = Date.now();
  app.command('reload');
  await app.next((e) => e.event === 'reloaded' || e.event === 'reload-failed', 30000);
  const reloadMs = Date.now() - started;
  await sleep(300);
  reloading = false;
  await Promise.all(loaders);
  console.log(
    `reload under load: ${served} requests served, ${failures.length} failed, reload took ${reloadMs} ms, slowest request ${longest} ms`,
  );
  expect(app.events.find((e) => e.event === 'reload-failed')).toBeUndefined();
  expect(failures).toEqual([]);
  const after = (await app.stats()).slots.map((s) => s.pid);
  for (let i = 0; i < 3; i++) expect(after[i]).not.toBe(before[i]);
  const answers = await pool([...ips, ...ips], 20, (ip) => get(port, ip));
  const pidOf = new Map();
  for (const [i, a] of answers.entries()) {
    const ip = ips[i % ips.length];
    expect(a.body.pid).toBe(after[slotOf(ip, 3)]);
    if (pidOf.has(ip)) expect(a.body.pid).toBe(pidOf.get(ip));
    pidOf.set(ip, a.body.pid);
  }
});

test('crash loop: growing respawn delays, low primary CPU, bounded fds, other slots unaffected', async () => {
  const port = await freePort();
  const app = startFixture('cluster-app.js', {
    PORT: port,
    WORKERS: 2,
    CRASH_SLOT: 0,
    RESPAWN_DELAY: 50,
    MAX_RESPAWN_DELAY: 400,
    MAX_RESTARTS: 'Infinity',
  });
  await app.next((e) => e.event === 'ready' && e.slot === 1);
  await app.count('respawn', 3);
  const fdsEarly = app.fdCount();
  const cpuBefore = app.cpuMs();
  await sleep(2000);
  const cpuMs = app.cpuMs() - cpuBefore;
  const delays = app.events.filter((e) => e.event === 'respawn' && e.slot === 0).map((e) => e.delay);
  console.log(`crash loop: delays ${delays.join(', ')} ms; primary CPU ${cpuMs.toFixed(0)} ms in 2 s; fds ${fdsEarly} -> ${app.fdCount()}`);
  expect(delays.slice(0, 5)).toEqual([50, 100, 200, 400, 400]);
  expect(cpuMs).toBeLessThan(600); // forks included; a tight respawn loop would use all of the 2 s
  expect(app.fdCount()).toBeLessThanOrEqual(fdsEarly + 4);
  const slot1 = range(200)
    .map(clientIp)
    .filter((ip) => slotOf(ip, 2) === 1)
    .slice(0, 10);
  const answers = await pool(slot1, 10, (ip) => get(port, ip));
  expect(answers.every((a) => a.status === 200 && a.body.slot === 1)).toBe(true);
});

test('a worker that never hands its server over is replaced; its clients wait at most queueTimeout', async () => {
  const port = await freePort();
  const app = startFixture('cluster-app.js', {
    PORT: port,
    WORKERS: 2,
    STALL_SLOT: 0,
    READY_TIMEOUT: 400,
    QUEUE_TIMEOUT: 800,
    DISPATCH: 'primary',
  }); // the router's queueTimeout
  await app.next((e) => e.event === 'ready' && e.slot === 1);
  const stuck = range(200)
    .map(clientIp)
    .find((ip) => slotOf(ip, 2) === 0);
  const started = Date.now();
  const r = await attempt(port, stuck, { timeout: 5000 });
  const waited = Date.now() - started;
  expect(r.status).toBe(0);
  expect(r.error).toMatch(/ECONNRESET|socket hang up/);
  expect(waited).toBeGreaterThanOrEqual(700);
  expect(waited).toBeLessThan(2000);
  await app.next((e) => e.event === 'exit' && e.slot === 0 && e.signal === 'SIGKILL');
  const stats = await app.stats();
  expect(stats.slots[0].dropped).toBeGreaterThanOrEqual(1);
  expect(stats.slots[0].queued).toBe(0);
  const other = range(200)
    .map(clientIp)
    .find((ip) => slotOf(ip, 2) === 1);
  expect((await get(port, other)).status).toBe(200);
});

test('kill -STOP on a worker: its slot queues up to the bound, other slots are unaffected, CONT resumes', async () => {
  const port = await freePort();
  const app = startFixture('cluster-app.js', { PORT: port, WORKERS: 2, QUEUE_TIMEOUT: 20000 });
  await app.count('ready', 2);
  const stopped = (await app.stats()).slots[0].pid;
  const ips = range(200).map(clientIp);
  const slot0 = ips.filter((ip) => slotOf(ip, 2) === 0).slice(0, 20);
  const slot1 = ips.filter((ip) => slotOf(ip, 2) === 1).slice(0, 40);
  process.kill(stopped, 'SIGSTOP');
  try {
    const waiting = slot0.map((ip) => attempt(port, ip, { timeout: 15000 }));
    const others = await pool(slot1, 10, (ip) => get(port, ip));
    expect(others.every((a) => a.status === 200)).toBe(true);
    const stats = await app.stats();
    expect(stats.slots[0].queued + stats.slots[0].inFlight).toBe(20);
    process.kill(stopped, 'SIGCONT');
    const resumed = await Promise.all(waiting);
    expect(resumed.every((a) => a.status === 200 && a.body.pid === stopped)).toBe(true);
  } finally {
    try {
      process.kill(stopped, 'SIGCONT');
    } catch {}
  }
});

test('10,000 connect-then-reset and 10,000 normal connections: primary fds and RSS return to baseline', async () => {
  const port = await freePort();
  const app = startFixture('cluster-app.js', { PORT: port, WORKERS: 2 });
  await app.count('ready', 2);
  const rss = () => Number(/VmRSS:\s+(\d+)/.exec(fs.readFileSync(`/proc/${app.child.pid}/status`, 'utf8'))[1]);
  await pool(range(2000), 32, (i) => get(port, clientIp(i % 200)));
  await app.atRest();
  const fdBase = app.fdCount();
  const rssBase = rss();
  await pool(
    range(10000),
    64,
    (i) =>
      new Promise((resolve) => {
        const s = net.connect({ port, host: '127.0.0.1', localAddress: clientIp(i % 250) });
        s.on('connect', () => {
          s.resetAndDestroy();
          resolve();
        });
        s.on('error', resolve);
      }),
  );
  const normal = await pool(range(10000), 32, (i) => attempt(port, clientIp(i % 250)));
  expect(normal.filter((a) => a.status !== 200)).toEqual([]);
  for (let i = 0; i < 100 && app.fdCount() !== fdBase; i++) await sleep(50);
  const grown = rss() - rssBase;
  console.log(`20,000 connections: primary fds ${fdBase} -> ${app.fdCount()}, RSS ${rssBase} kB -> ${rss()} kB`);
  expect(app.fdCount()).toBe(fdBase);
  // A leak of 256 bytes per connection would show as 5 MB.
  expect(grown).toBeLessThan(5 * 1024);
});

test.each([
  ['SIGTERM to the primary', (pid) => process.kill(pid, 'SIGTERM')],
  ['SIGINT to the process group (Ctrl-C)', (pid) => process.kill(-pid, 'SIGINT')],
])('%s while a worker is busy for 3 s: the clients waiting for it are served, exit 0', async (_, signal) => {
  const port = await freePort();
  const app = startFixture('cluster-app.js', { PORT: port, WORKERS: 2, HARD_SHUTDOWN_DELAY: 20000 });
  await app.count('ready', 2);
  const ips = ipsOf(0, 2, 21, 7000);
  const blocker = get(port, ips[0], '/block?ms=3000', { timeout: 15000 });
  await new Promise((r) => setTimeout(r, 300));
  // Connected and sent while slot 0's worker cannot accept or read.
  const waiting = ips.slice(1).map((ip) =>
    get(port, ip, '/', { timeout: 15000 }).then(
      (r) => r.status,
      (e) => e.code,
    ),
  );
  await new Promise((r) => setTimeout(r, 300));
  const sent = Date.now();
  signal(app.child.pid);
  expect(await Promise.all(waiting)).toEqual(range(20).map(() => 200));
  expect((await blocker).status).toBe(200);
  expect(await app.exited).toEqual({ code: 0, signal: null });
  console.log(`${_} with slot 0 busy: 20/20 waiting clients served, exit 0 after ${Date.now() - sent} ms`);
});

test('SIGTERM to one worker under steady load on its slot: it is replaced at once, exits 0, no request fails', async () => {
  const port = await freePort();
  // Each answer takes 200 ms and 8 clients overlap: the worker is never without connections.
  const app = startFixture('cluster-app.js', { PORT: port, WORKERS: 2, SLOW_MS: 200 });
  await app.count('ready', 2);
  const ips = ipsOf(0, 2, 20, 8000);
  const old = (await get(port, ips[0])).body.pid;
  let running = true;
  const failures = [];
  const servedBy = new Set();
  const loaders = range(8).map(async (k) => {
    for (let i = k; running; i += 8) {
      const r = await get(port, ips[i % ips.length]).catch((err) => ({ status: 0, error: err.code || err.message }));
      if (r.status === 200) servedBy.add(r.body.pid);
      else failures.push(r.error || r.status);
    }
  });
  try {
    await new Promise((r) => setTimeout(r, 300));
    const sent = Date.now();
    process.kill(old, 'SIGTERM');
    // Without the replacement taking the slot's new clients, its drain never ends under load.
    const exit = await app.next((e) => e.event === 'exit' && e.pid === old, 10000);
    const exitedAfter = Date.now() - sent;
    await new Promise((r) => setTimeout(r, 300));
    running = false;
    await Promise.all(loaders);
    console.log(
      `SIGTERM to one worker under load: exited ${JSON.stringify({ code: exit.code, signal: exit.signal })} after ${exitedAfter} ms, ${failures.length} failed`,
    );
    expect(exit).toMatchObject({ code: 0, signal: null });
    expect(failures).toEqual([]);
    const { slots } = await app.stats();
    expect(slots[0].pid).not.toBe(old);
    expect(servedBy).toContain(slots[0].pid);
  } finally {
    running = false;
  }
});

test('SIGTERM while workers are still starting: everything exits 0 at once, not after hardShutdownDelay', async () => {
  const port = await freePort();
  const app = startFixture('cluster-app.js', { PORT: port, WORKERS: 2, INIT_DELAY: 5000, HARD_SHUTDOWN_DELAY: 20000 });
  const forks = await Promise.all([0, 1].map((slot) => app.next((e) => e.event === 'fork' && e.slot === slot)));
  await sleep(300); // the workers are inside their async start-up now
  const started = Date.now();
  app.child.kill('SIGTERM');
  expect((await app.exited).code).toBe(0);
  expect(Date.now() - started).toBeLessThan(3000);
  for (const { pid } of forks) expect(() => process.kill(pid, 0)).toThrow(/ESRCH/);
});

test('server.close(() => process.exit(0)) in a worker: exactly one replacement serves its slot', async () => {
  const port = await freePort();
  const app = startFixture('cluster-app.js', { PORT: port, WORKERS: 2 });
  await app.count('ready', 2);
  const ips = range(100).map(clientIp);
  const slot0 = ips.filter((ip) => slotOf(ip, 2) === 0);
  const before = (await app.stats()).slots[0].pid;
  await attempt(port, slot0[0]).then(() => get(port, slot0[1], '/close-and-exit').catch(() => null));
  await app.next((e) => e.event === 'exit' && e.pid === before);
  const answers = await pool(slot0.slice(0, 20), 10, (ip) => attempt(port, ip));
  expect(answers.every((a) => a.status === 200)).toBe(true);
  const pids = new Set(answers.map((a) => a.body.pid));
  expect(pids.size).toBe(1);
  expect(pids.has(before)).toBe(false);
  // No second worker was forked for the slot behind the first one's back.
  await sleep(500);
  const forks = app.events.filter((e) => e.event === 'fork' && e.slot === 0).length;
  const exits = app.events.filter((e) => e.event === 'exit' && e.slot === 0).length;
  expect(forks - exits).toBe(1);
  expect((await app.stats()).slots[0].pid).toBe([...pids][0]);
});

// Acknowledged before the read, so never handed to the replacement mid-stream. (The narrower
// race where the primary releases the channel before reading that acknowledgement, fixed in the
// router, lasts under one 5 ms tick and cannot be forced from outside.)
test('a worker that crashes after reading a request: that connection fails, it is not redelivered', async () => {
  const port = await freePort();
  const app = startFixture('cluster-app.js', { PORT: port, WORKERS: 2 });
  await app.count('ready', 2);
  const ip = range(100)
    .map(clientIp)
    .find((a) => slotOf(a, 2) === 0);
  const started = Date.now();
  const crashed = await get(port, ip, '/crash', { timeout: 10000 }).then(
    (a) => a,
    (err) => ({ error: err.code || err.message }),
  );
  expect(crashed.error).toMatch(/ECONNRESET|socket hang up/);
  expect(Date.now() - started).toBeLessThan(3000);
  const dead = await app.next((e) => e.event === 'exit' && e.slot === 0);
  await app.next((e) => e.event === 'ready' && e.slot === 0 && e.pid !== dead.pid);
  expect((await app.stats()).slots[0].redelivered).toBe(0);
  expect((await get(port, ip)).status).toBe(200);
});
