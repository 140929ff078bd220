'use strict';
// Running it in production, with real primaries: drop-in details of both APIs, the traps of a
// migration (a leftover listen() or cluster.fork()), warnings an operator sees without debug,
// debug levels, and a crash loop that ends.
const { sleep, freePort, clientIp, startFixture, startOpsApp, stopAll, get } = require('./helpers');

afterEach(stopAll);

describe('drop-in gaps', () => {
  test('listen(server, 0): server.address() in the primary is what the router bound; sticky.primary() is the Primary', async () => {
    const app = startFixture('ops-app.js', { API: 'listen', PORT: '0', OPTIONS: JSON.stringify({ workers: 2 }) });
    const { address } = await app.next((e) => e.event === 'server-address');
    const listening = await app.next((e) => e.event === 'listening');
    expect(address).toEqual({ address: '::', family: 'IPv6', port: expect.any(Number) });
    expect(address.port).toBeGreaterThan(0);
    expect(listening.address).toEqual(address); // sticky.primary().address()
    await app.count('ready', 2);
    const answers = await Promise.all(Array.from({ length: 20 }, (_, i) => get(address.port, clientIp(i))));
    // STICKY_RS_WORKER_INDEX: the slot of the worker, with the listen API too.
    const stats = await app.stats();
    for (const a of answers) expect(stats.slots[Number(a.body.index)].pid).toBe(a.body.pid);
    expect(new Set(answers.map((a) => a.body.index))).toEqual(new Set(['0', '1']));
    app.command('shutdown');
    const down = await app.next((e) => e.event === 'shut-down');
    expect(down).toMatchObject({ code: 0, serverAddress: null });
    // Errors after shutdown say whose they are.
    expect(down.statsError).toMatch(/^sticky-rs: router is closed/);
  });

  test('the worker index survives respawns with both APIs (STICKY_RS_WORKER_INDEX; stickycluster_worker_index with sticky())', async () => {
    const port = await freePort();
    for (const api of ['listen', 'sticky']) {
      const app = startOpsApp(api, port, { respawnDelay: 10 });
      await app.count('ready', 2);
      const before = (await app.stats()).slots.map((s) => s.pid);
      process.kill(before[1], 'SIGKILL');
      await app.next((e) => e.event === 'ready' && e.slot === 1 && e.pid !== before[1]);
      const answers = await Promise.all(Array.from({ length: 20 }, (_, i) => get(port, clientIp(i))));
      const after = (await app.stats()).slots.map((s) => s.pid);
      expect(after[1]).not.toBe(before[1]);
      for (const a of answers) {
        expect(after[Number(a.body.index)]).toBe(a.body.pid);
        expect(a.body.sc).toBe(api === 'sticky' ? a.body.index : undefined);
      }
      await app.stop();
    }
  });

  test('a host that does not resolve: a Node-shaped ENOTFOUND naming the host, nothing forked', async () => {
    const app = startFixture('ops-app.js', { OPTIONS: JSON.stringify({ concurrency: 2, port: 8080, host: 'no-such-host.invalid' }) });
    const error = await app.next((e) => e.event === 'error');
    expect(error).toEqual({
      event: 'error',
      code: 'ENOTFOUND',
      syscall: 'getaddrinfo',
      hostname: 'no-such-host.invalid',
      message: 'getaddrinfo ENOTFOUND no-such-host.invalid',
    });
    expect((await app.exited).code).toBe(3);
    expect(app.events.filter((e) => e.event === 'fork')).toHaveLength(0);
    // The listen API: an 'error' event on the server, with the same shape.
    const session = startFixture('ops-app.js', {
      API: 'listen',
      PORT: '0',
      OPTIONS: JSON.stringify({ workers: 1, host: 'no-such-host.invalid' }),
    });
    expect(await session.next((e) => e.event === 'error')).toMatchObject({
      code: 'ENOTFOUND',
      message: 'getaddrinfo ENOTFOUND no-such-host.invalid',
    });
  });
});

describe('migration traps', () => {
  test.each([
    ['sticky', 'before'],
    ['sticky', 'after'],
    ['listen', 'before'],
    ['listen', 'after'],
  ])('%s(): a handed-over server that calls listen() %s the hand-over is refused, saying why and what to delete', async (api, when) => {
    const port = await freePort();
    const app = startOpsApp(api, port, { workers: 1, maxRestarts: 2 }, { LISTEN_TRAP: when });
    if (when === 'after') {
      // The worker caught the error; it serves, and no second listener exists.
      await app.next((e) => e.event === 'ready');
      await app.said(/LISTEN-TRAP/);
      expect((await get(port, clientIp(1))).status).toBe(200);
    } else {
      // The worker throws before the hand-over: it never becomes ready, and the crash loop ends.
      expect((await app.exited).code).toBe(1);
      expect(app.events.filter((e) => e.event === 'ready')).toHaveLength(0);
    }
    expect(app.stderr).toMatch(
      /sticky-rs: .*must not listen.*opens an extra listener in the primary.*not sticky.*Delete the listen\(\) call/,
    );
    expect(app.stderr).not.toMatch(/LISTEN-TRAP: no error/);
  });

  /** Resolves once no process of the fixture's group is left (false after `timeout`). */
  async function groupGone(app, timeout = 5000) {
    const deadline = Date.now() + timeout;
    for (;;) {
      try {
        process.kill(-app.child.pid, 0);
      } catch {
        return true;
      }
      if (Date.now() > deadline) return false;
      await sleep(20);
    }
  }

  test.each(['sticky', 'listen'])(
    '%s(): workers forked by a leftover cluster.fork() are named once, never routed to, and end quietly at shutdown',
    async (api) => {
      const port = await freePort();
      const app = startOpsApp(api, port, {}, { LEFTOVER_FORK: '1' });
      await app.count('ready', 2);
      const answers = await Promise.all(Array.from({ length: 40 }, (_, i) => get(port, clientIp(i))));
      const slotPids = (await app.stats()).slots.map((s) => s.pid);
      expect(new Set(answers.map((a) => a.body.pid))).toEqual(new Set(slotPids));
      // Our worker dies: the leftover 'exit' handler forks another stray; still one warning.
      process.kill(slotPids[0], 'SIGKILL');
      await app.next((e) => e.event === 'ready' && e.slot === 0 && e.pid !== slotPids[0]);
      app.child.kill('SIGTERM');
      expect(await app.exited).toEqual({ code: 0, signal: null });
      expect(await groupGone(app)).toBe(true);
      expect(app.stderr.match(/forked outside sticky-rs/g)).toHaveLength(1);
      expect(app.stderr).toMatch(
        /warning: a worker \(pid \d+\) was forked outside sticky-rs, probably by a leftover cluster\.fork\(\) \(e\.g\. in cluster\.on\('exit'/,
      );
      expect(app.stderr).not.toMatch(/EPIPE|Error:| {4}at /);
    },
  );
});

describe('logs', () => {
  const net = require('node:net');
  const STAMP = '\\d{4}-\\d\\d-\\d\\dT\\d\\d:\\d\\d:\\d\\d\\.\\d{3}Z \\[sticky-rs\\] warning: ';
  const lines = (text, pattern) => text.split('\n').filter((l) => pattern.test(l));

  /** Opens a connection from `ip` and resolves once the primary closed it. */
  function closedByPrimary(port, ip) {
    return new Promise((resolve, reject) => {
      const socket = net.connect({ host: '127.0.0.1', port, localAddress: ip }, () => socket.write('GET / HTTP/1.1\r\nHost: x\r\n\r\n'));
      socket.on('error', () => {});
      socket.on('close', resolve);
      socket.setTimeout(10000, () => reject(new Error(`${ip}: not closed in 10 s`)));
    });
  }

  test("without debug (dispatch 'primary'): dropped connections (queueLimit, queueTimeout) and readyTimeout kills are warned, one line each, rate-limited", async () => {
    const port = await freePort();
    // The queue bounds are the router's: with kernel dispatch clients wait in the kernel (below).
    const app = startFixture('ops-app.js', {
      STALL: '1',
      OPTIONS: JSON.stringify({
        concurrency: 1,
        port,
        dispatch: 'primary',
        queueLimit: 2,
        queueTimeout: 400,
        readyTimeout: 600,
        respawnDelay: 10,
        maxRestarts: Infinity,
      }),
    });
    await app.next((e) => e.event === 'fork');
    // 2 wait (then expire after queueTimeout), the other 3 find the queue full.
    const first = [1, 2].map((i) => closedByPrimary(port, clientIp(i)));
    await sleep(100);
    await Promise.all([...[3, 4, 5].map((i) => closedByPrimary(port, clientIp(i))), ...first]);
    // Several readyTimeout kills happen in 2.5 s; the warning says the first, holds the rest back.
    await app.count('exit', 3, 10000);
    await sleep(1200); // the counters are read every second
    const stderr = app.stderr;
    const pid = app.events.find((e) => e.event === 'fork').pid;
    // The slot's worker when the counters were read.
    expect(
      lines(
        stderr,
        new RegExp(
          `^${STAMP}slot 0 \\(worker pid \\d+\\): closed 3 new connection\\(s\\) unserved: the slot's queue was full \\(queueLimit 2\\)`,
        ),
      ),
    ).toHaveLength(1);
    expect(
      lines(
        stderr,
        new RegExp(`^${STAMP}slot 0 \\(worker pid \\d+\\): closed 2 connection\\(s\\) that waited longer than queueTimeout \\(400 ms\\)`),
      ),
    ).toHaveLength(1);
    expect(
      lines(
        stderr,
        new RegExp(
          `^${STAMP}slot 0: worker pid ${pid} did not become ready within readyTimeout \\(600 ms\\); killed it\\. Is its start-up code stuck`,
        ),
      ),
    ).toHaveLength(1);
    expect(lines(stderr, /readyTimeout/)).toHaveLength(1);
    // Nothing but warnings without debug.
    expect(
      stderr
        .split('\n')
        .filter(Boolean)
        .every((l) => new RegExp(`^${STAMP}`).test(l)),
    ).toBe(true);
  });

  test('without debug (kernel dispatch): clients waiting in the kernel for a slot without a ready worker are warned', async () => {
    const port = await freePort();
    const app = startFixture('ops-app.js', {
      STALL: '1',
      OPTIONS: JSON.stringify({ concurrency: 1, port, backlog: 8, readyTimeout: 60000 }),
    });
    await app.next((e) => e.event === 'fork');
    // The handshake completes in the kernel: these connect, then wait for a worker that never
    // comes. Closed by the test once the warning was read.
    const sockets = [1, 2, 3].map((i) => net.connect({ host: '127.0.0.1', port, localAddress: clientIp(i) }).on('error', () => {}));
    try {
      await Promise.all(sockets.map((socket) => new Promise((resolve) => socket.once('connect', resolve))));
      await app.said(/accept queue/);
      expect((await app.stats()).dispatch).toBe('kernel');
      expect(
        lines(
          app.stderr,
          new RegExp(
            `^${STAMP}slot 0 \\(worker pid \\d+\\): 3 connection\\(s\\) wait in the kernel's accept queue for a ready worker; past backlog \\(8\\) new clients of this slot get no answer and retry$`,
          ),
        ),
      ).toHaveLength(1);
    } finally {
      for (const socket of sockets) socket.destroy();
    }
  });

  test('without debug: a connection from a trusted proxy without a PROXY header is warned', async () => {
    const port = await freePort();
    const app = startFixture('ops-app.js', {
      OPTIONS: JSON.stringify({ concurrency: 1, port, routeBy: 'proxy-protocol', trustedProxies: ['127.0.0.0/8'] }),
    });
    await app.count('ready', 1);
    await Promise.all([1, 2, 3].map((i) => closedByPrimary(port, clientIp(i))));
    await app.said(/PROXY header/, 3000);
    expect(
      lines(app.stderr, new RegExp(`^${STAMP}closed [1-3] connection\\(s\\) from trusted proxies without a valid PROXY header`)),
    ).toHaveLength(1);
    expect((await app.stats()).rejected).toBe(3);
  });

  test('a crash loop ends: past maxRestarts within restartWindow the primary shuts down with exit code 1 and says why', async () => {
    const port = await freePort();
    const started = Date.now();
    const app = startFixture('ops-app.js', {
      CRASH: '1',
      OPTIONS: JSON.stringify({ concurrency: 2, port, maxRestarts: 3, restartWindow: 30000, respawnDelay: 10, maxRespawnDelay: 40 }),
    });
    expect(await app.exited).toEqual({ code: 1, signal: null });
    const elapsed = Date.now() - started;
    console.log(`crash loop with maxRestarts 3: gave up after ${elapsed} ms, ${app.events.filter((e) => e.event === 'fork').length} forks`);
    expect(
      lines(
        app.stderr,
        new RegExp(
          `^${STAMP}slot \\d: worker pid \\d+ exited with code 1 after \\d+ ms, 4 exits within restartWindow \\(30000 ms\\), more than maxRestarts \\(3\\): giving up, shutting down with exit code 1$`,
        ),
      ),
    ).toHaveLength(1);
    expect(
      lines(
        app.stderr,
        new RegExp(`^${STAMP}slot \\d: worker pid \\d+ exited with code 1 after \\d+ ms; 1 exit\\(s\\) within 30000 ms; respawning`),
      ).length,
    ).toBeGreaterThanOrEqual(1);
    expect(elapsed).toBeLessThan(15000);
  });

  test.each(['kernel', 'primary'])(
    "debug levels (dispatch %s): true = lifecycle lines naming slot and pid; 'connections' and DEBUG=sticky-rs* add a line per connection",
    async (dispatch) => {
      const port = await freePort();
      const run = async (env) => {
        const app = startFixture('ops-app.js', {
          ...env,
          OPTIONS: JSON.stringify({ concurrency: 2, port, dispatch, ...JSON.parse(env.OPTIONS || '{}') }),
        });
        await app.count('ready', 2);
        await Promise.all(Array.from({ length: 10 }, (_, i) => get(port, clientIp(i))));
        await app.atRest();
        app.child.kill('SIGTERM');
        await app.exited;
        // 'exit' can come before the last bytes of stderr were read: wait for its end (bounded).
        await new Promise((resolve) => {
          if (app.child.stderr.readableEnded) return resolve();
          const timer = setTimeout(resolve, 3000);
          app.child.stderr.once('end', () => {
            clearTimeout(timer);
            resolve();
          });
        });
        const all = app.stderr.split('\n').filter(Boolean);
        return {
          lifecycle: all.filter((l) => /forked worker #\d+ \(pid \d+\)|worker #\d+ of slot \d \(pid \d+\): channel open/.test(l)).length,
          connections: all.filter((l) => /connection keyed|: connection from/.test(l)).length,
          all: all.length,
        };
      };
      const off = await run({ DEBUG: '' });
      const lifecycle = await run({ OPTIONS: JSON.stringify({ debug: true }), DEBUG: '' });
      const connections = await run({ OPTIONS: JSON.stringify({ debug: 'connections' }), DEBUG: '' });
      const env = await run({ DEBUG: 'express:*,sticky-rs*' });
      const envLifecycle = await run({ DEBUG: 'sticky-rs:*,-sticky-rs:connection' });
      console.log(
        `debug lines for 10 requests: off ${off.all}, true ${lifecycle.all}, 'connections' ${connections.all}, DEBUG=sticky-rs* ${env.all}`,
      );
      expect(off).toEqual({ lifecycle: 0, connections: 0, all: 0 });
      expect(lifecycle).toMatchObject({ lifecycle: 4, connections: 0 });
      // With the router: keyed in the primary, adopted in the worker; with the kernel: accepted in
      // the worker.
      const perRequest = dispatch === 'kernel' ? 1 : 2;
      expect(connections).toMatchObject({ lifecycle: 4, connections: 10 * perRequest });
      expect(env).toMatchObject({ lifecycle: 4, connections: 10 * perRequest });
      expect(envLifecycle).toMatchObject({ lifecycle: 4, connections: 0 });
    },
  );
});

describe('running under a cluster primary that is not sticky-rs', () => {
  test.each([
    [
      "an app's own cluster.fork()",
      {},
      /this process is a cluster worker, but its primary does not run sticky-rs: sticky\(\) and listen\(\) must be called in the cluster primary too/,
    ],
    [
      'PM2 cluster mode (its environment)',
      { exec_mode: 'cluster_mode', pm_id: '0' },
      /started by PM2 in cluster mode \(pm2 start -i N.*Run one instance in fork mode \(pm2 start app\.js/,
    ],
  ])('%s: the worker fails, saying why and what to do', async (_, workerEnv, message) => {
    const app = startFixture('foreign-primary.js', { WORKER_ENV: JSON.stringify(workerEnv) });
    expect(await app.next((e) => e.event === 'worker-exit')).toEqual({ event: 'worker-exit', code: 1 });
    expect(app.stderr).toMatch(message);
  });
});

test('ESM: default and named imports (the README example) run a primary and its workers', async () => {
  const app = startFixture('esm-app.mjs', { PORT: '0', WORKERS: '2' });
  const listening = await app.next((e) => e.event === 'listening');
  expect(listening).toMatchObject({
    same: true,
    sticky: 'function',
    prometheus: 'function',
    address: { family: 'IPv6', port: expect.any(Number) },
  });
  await app.count('ready', 2);
  const answers = await Promise.all(Array.from({ length: 20 }, (_, i) => get(listening.address.port, clientIp(i))));
  expect(new Set(answers.map((a) => a.body.index))).toEqual(new Set(['0', '1']));
});
