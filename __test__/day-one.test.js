'use strict';
// What operators do every day (issue 19), with real primaries: retiring a worker on purpose
// (a signal, server.close()) is no crash, Ctrl-C forks nothing, a reload switches every slot
// without waiting for the old workers' long requests, a shutdown that has to wait says so.
// Runs in the default dispatch mode and with DISPATCH=primary (the router).
const net = require('node:net');
const { until, freePort, startFixture, stopAll, get, ipsOf, total, alive } = require('./helpers');

afterEach(stopAll);

const DISPATCH = process.env.DISPATCH ? { DISPATCH: process.env.DISPATCH } : {};

async function startApp(env = {}) {
  const port = await freePort();
  const app = startFixture('cluster-app.js', { PORT: String(port), ...DISPATCH, ...env });
  await app.next((e) => e.event === 'listening');
  return { app, port };
}

test('30 workers retired on purpose within a minute (SIGINT, SIGTERM, server.close()): each replaced at once, no restart counted, no warning, the service stays up', async () => {
  const { app, port } = await startApp({ WORKERS: '2' });
  await app.count('ready', 2);
  const ips = [ipsOf(0, 2, 1)[0], ipsOf(1, 2, 1)[0]];
  const ways = ['SIGINT', 'SIGTERM', 'close'];
  const switchMs = [];
  for (let i = 0; i < 30; i++) {
    const slot = i % 2;
    const way = ways[Math.floor(i / 2) % 3];
    const old = (await app.stats()).slots[slot].pid;
    const started = Date.now();
    if (way === 'close') get(port, ips[slot], '/close-and-exit').catch(() => {});
    else process.kill(old, way);
    const seen = app.events.length;
    const ready = await app.next((e) => e.event === 'ready' && e.slot === slot && app.events.indexOf(e) >= seen, 10000);
    // Serving: a request of the slot reaches the replacement.
    const answer = await until(
      `slot ${slot} served by the replacement of pid ${old}`,
      async () => {
        const r = await get(port, ips[slot]).catch(() => null);
        return r && r.status === 200 && r.body.pid === ready.pid && r;
      },
      10000,
    );
    expect(answer.body.slot).toBe(slot);
    switchMs.push(Date.now() - started);
    await until(`pid ${old} gone`, () => !alive(old), 10000);
  }
  const stats = await app.stats();
  console.log(
    `30 retirements: serving again after ${Math.min(...switchMs)}-${Math.max(...switchMs)} ms; restarts counted ${JSON.stringify(stats.slots.map((s) => s.restarts))}`,
  );
  expect(app.child.exitCode).toBe(null);
  expect(total(stats, 'restarts')).toBe(0);
  expect(Math.max(...switchMs)).toBeLessThan(2000);
  expect(app.stderr).not.toMatch(/respawning|giving up/);
  // One fork per retirement, none more.
  expect(app.events.filter((e) => e.event === 'fork')).toHaveLength(2 + 30);
}, 120000);

test('a worker that exits with an error is still counted and backs off', async () => {
  const { app, port } = await startApp({ WORKERS: '2', RESPAWN_DELAY: '200' });
  await app.count('ready', 2);
  const ip = ipsOf(1, 2, 1)[0];
  const old = (await app.stats()).slots[1].pid;
  await get(port, ip, '/crash').catch(() => null);
  const respawn = await app.next((e) => e.event === 'respawn' && e.slot === 1);
  expect(respawn.delay).toBe(200);
  await app.next((e) => e.event === 'ready' && e.slot === 1 && e.pid !== old);
  const stats = await app.stats();
  expect(stats.slots.map((s) => s.restarts)).toEqual([0, 1]);
  await until('the crash warning', () => /slot 1: worker pid \d+ exited with code 1 .*respawning with back-off/.test(app.stderr), 3000);
});

test('Ctrl-C (SIGINT to the process group) forks no replacement, 3 rounds of 4 workers', async () => {
  const extra = [];
  for (let round = 0; round < 3; round++) {
    const { app } = await startApp({ WORKERS: '4' });
    await app.count('ready', 4);
    process.kill(-app.child.pid, 'SIGINT');
    expect(await app.exited).toEqual({ code: 0, signal: null });
    extra.push(app.events.filter((e) => e.event === 'fork').length - 4);
    await app.stop();
  }
  console.log(`Ctrl-C: forks after the signal per round ${JSON.stringify(extra)}`);
  expect(extra).toEqual([0, 0, 0]);
}, 60000);

test('a reload switches every slot while the old workers drain in parallel: 4 slots each with a 6 s request, all switched in < 3 s, every request answered', async () => {
  const { app, port } = await startApp({ WORKERS: '4' });
  await app.count('ready', 4);
  const before = (await app.stats()).slots.map((s) => s.pid);
  const requests = [0, 1, 2, 3].map((slot) => get(port, ipsOf(slot, 4, 1)[0], '/slow?ms=6000', { timeout: 30000 }));
  // Every request is in its worker's hands before the reload starts.
  await app.statsWhen((s) => total(s, 'accepted') >= 4);
  const started = Date.now();
  app.command('reload');
  const outcome = await app.next((e) => e.event === 'reloaded' || e.event === 'reload-failed', 30000);
  const reloadMs = Date.now() - started;
  const switched = (await app.stats()).slots.map((s) => s.pid);
  const answers = await Promise.all(requests);
  console.log(
    `reload with a 6 s request per slot: every slot switched in ${reloadMs} ms; requests answered ${Date.now() - started} ms after the reload`,
  );
  expect(outcome.event).toBe('reloaded');
  expect(reloadMs).toBeLessThan(3000);
  for (let slot = 0; slot < 4; slot++) expect(switched[slot]).not.toBe(before[slot]);
  expect(answers.map((a) => [a.status, a.body.pid])).toEqual(before.map((pid) => [200, pid]));
  for (const pid of before) await until(`old worker ${pid} gone`, () => !alive(pid), 10000);
}, 60000);

test('a shutdown that has to wait (SSE and an upgraded connection open) says so within 1 s; the connections ending lets it finish, exit 0', async () => {
  const { app, port } = await startApp({ WORKERS: '2' });
  await app.count('ready', 2);
  const open = (ip, head) =>
    new Promise((resolve, reject) => {
      const socket = net.connect({ host: '127.0.0.1', port, localAddress: ip }, () => socket.write(head));
      socket.once('data', () => resolve(socket));
      socket.on('error', reject);
    });
  const sse = await open(ipsOf(0, 2, 1)[0], 'GET /sse HTTP/1.1\r\nHost: x\r\n\r\n');
  const upgraded = await open(ipsOf(1, 2, 1)[0], 'GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: test\r\n\r\n');
  try {
    const started = Date.now();
    process.kill(-app.child.pid, 'SIGINT');
    const line = await until('a line saying the shutdown waits', () => app.stderr.split('\n').find((l) => /waiting/.test(l)), 1000);
    console.log(`shutdown with SSE + upgrade open: after ${Date.now() - started} ms: ${line}`);
    expect(line).toMatch(/waiting for 2 connection\(s\) on 2 worker\(s\), up to 60 s \(hardShutdownDelay\); Ctrl-C again to force/);
    expect(app.child.exitCode).toBe(null);
  } finally {
    sse.destroy();
    upgraded.destroy();
  }
  expect(await app.exited).toEqual({ code: 0, signal: null });
}, 30000);

test('a half-migrated @socket.io/sticky app (setupMaster from sticky-rs, setupWorker still from @socket.io/sticky) is warned about, naming the cause, without debug', async () => {
  const port = await freePort();
  const app = startFixture('socketio-guide.js', { PORT: String(port), WORKERS: '2', HALF_MIGRATED: '1' });
  await app.next((e) => e.event === 'listening');
  const started = Date.now();
  const line = await until(
    'the warning',
    () => app.stderr.split('\n').find((l) => /without calling sticky-rs's setupWorker/.test(l)),
    8000,
  );
  console.log(`half-migrated app: warned after ${Date.now() - started} ms: ${line}`);
  expect(line).toMatch(
    /^\d{4}-\d\d-\d\dT[\d:.]+Z \[sticky-rs\] warning: worker pid \d+ (\(and 1 more\) )?has run for 5000 ms without calling sticky-rs's setupWorker\(io\): it gets no connections.*@socket\.io\/sticky/,
  );
}, 30000);

test('a start that works prints one line with the port and the number of workers', async () => {
  const { spawn } = require('node:child_process');
  const path = require('node:path');
  const port = await freePort();
  const child = spawn(process.execPath, [path.join(__dirname, 'fixtures', 'cluster-app.js')], {
    env: { ...process.env, ...DISPATCH, PORT: String(port), WORKERS: '3' },
    stdio: ['pipe', 'pipe', 'pipe'],
    detached: true,
  });
  try {
    let out = '';
    child.stdout.on('data', (d) => (out += d));
    const lines = await until(
      'the start-up line',
      () => {
        const found = out.split('\n').filter((l) => l.startsWith('sticky-rs: '));
        return found.length > 0 && out.split('\n').filter((l) => l.includes('"event":"ready"')).length === 3 && found;
      },
      20000,
    );
    expect(lines).toEqual([`sticky-rs: listening on port ${port} (all addresses) with 3 worker(s) (primary pid ${child.pid})`]);
    // After every worker is ready, so that it means "serving".
    const all = out.split('\n');
    expect(all.findIndex((l) => l.startsWith('sticky-rs: '))).toBeGreaterThan(
      Math.max(...all.map((l, i) => (l.includes('"event":"ready"') ? i : -1))),
    );
  } finally {
    process.kill(-child.pid, 'SIGKILL');
  }
});

test('every worker throws at start-up: the error is printed once, clients wait no longer than queueTimeout; with kernel dispatch the primary gives up (exit 1)', async () => {
  const { app, port } = await startApp({ WORKERS: '2', THROW_AT_START: '1', QUEUE_TIMEOUT: '3000' });
  const started = Date.now();
  const outcomes = await Promise.all(
    ipsOf(0, 2, 2)
      .concat(ipsOf(1, 2, 2))
      .map((ip) =>
        get(port, ip, '/', { timeout: 20000 }).then(
          (r) => ({ status: r.status, ms: Date.now() - started }),
          (err) => ({ error: err.code || err.message, ms: Date.now() - started }),
        ),
      ),
  );
  // Kernel dispatch: clients wait in the kernel, so the primary gives up (and its listeners
  // close) once queueTimeout is over; the router times them out itself and retries on.
  const kernel = process.env.DISPATCH !== 'primary'; // 'auto' is kernel dispatch on Linux
  const exit = kernel ? await app.exited : null;
  const exitedMs = Date.now() - started;
  const traces = app.stderr.split('\n').filter((l) => /ReferenceError: notDefinedAtStart is not defined/.test(l));
  console.log(
    `throw at start-up: clients ended after ${outcomes.map((o) => o.ms).join(', ')} ms (${[...new Set(outcomes.map((o) => o.error || o.status))].join(', ')}); primary exit ${JSON.stringify(exit)} after ${exitedMs} ms; ${app.events.filter((e) => e.event === 'fork').length} forks; the error printed ${traces.length} time(s)`,
  );
  if (kernel) {
    expect(exit).toEqual({ code: 1, signal: null });
    expect(app.stderr).toMatch(/no worker became ready within 3000 ms of the start .*giving up, shutting down with exit code 1/);
  } else {
    expect(app.child.exitCode).toBe(null);
  }
  for (const o of outcomes) {
    expect(o.status).toBeUndefined();
    expect(o.ms).toBeLessThan(3000 + 2000); // queueTimeout, plus a worker's start and the shutdown
  }
  // Once in full (the warning, its stack indented), and named in the exit lines.
  expect(app.stderr.match(/^ {4}ReferenceError: notDefinedAtStart is not defined\n {8}at /gm) || []).toHaveLength(1);
  // And no other stack anywhere: every frame line is one of that stack's (Node 26's is deeper).
  const frames = app.stderr
    .split(/^ {4}ReferenceError: notDefinedAtStart is not defined\n/m)[1]
    .match(/^( {8}at .*\n)*/)[0]
    .split('\n')
    .filter(Boolean);
  expect(frames.length).toBeGreaterThan(0);
  expect(app.stderr.match(/^\s+at /gm)).toHaveLength(frames.length);
}, 40000);
