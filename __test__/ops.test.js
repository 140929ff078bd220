'use strict';
// Running it in production, with real primaries: drop-in details of both APIs, the traps of a
// migration (a leftover listen() or cluster.fork()), warnings an operator sees without debug,
// debug levels, and a crash loop that ends.
const { freePort, clientIp, startFixture, stopAll, get } = require('./helpers');

afterEach(stopAll);

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

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
      const app = startFixture('ops-app.js', api === 'listen'
        ? { API: api, PORT: String(port), OPTIONS: JSON.stringify({ workers: 2, respawnDelay: 10 }) }
        : { API: api, OPTIONS: JSON.stringify({ concurrency: 2, port, respawnDelay: 10 }) });
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
    expect(error).toEqual({ event: 'error', code: 'ENOTFOUND', syscall: 'getaddrinfo', hostname: 'no-such-host.invalid', message: 'getaddrinfo ENOTFOUND no-such-host.invalid' });
    expect((await app.exited).code).toBe(3);
    expect(app.events.filter((e) => e.event === 'fork')).toHaveLength(0);
    // The listen API: an 'error' event on the server, with the same shape.
    const session = startFixture('ops-app.js', { API: 'listen', PORT: '0', OPTIONS: JSON.stringify({ workers: 1, host: 'no-such-host.invalid' }) });
    expect(await session.next((e) => e.event === 'error')).toMatchObject({ code: 'ENOTFOUND', message: 'getaddrinfo ENOTFOUND no-such-host.invalid' });
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
    const app = startFixture('ops-app.js', api === 'listen'
      ? { API: api, PORT: String(port), LISTEN_TRAP: when, OPTIONS: JSON.stringify({ workers: 1, maxRestarts: 2 }) }
      : { API: api, LISTEN_TRAP: when, OPTIONS: JSON.stringify({ concurrency: 1, port, maxRestarts: 2 }) });
    if (when === 'after') {
      // The worker caught the error; it serves, and no second listener exists.
      await app.next((e) => e.event === 'ready');
      const deadline = Date.now() + 5000;
      while (!app.stderr.includes('LISTEN-TRAP') && Date.now() < deadline) await sleep(20);
      expect((await get(port, clientIp(1))).status).toBe(200);
    } else {
      // The worker throws before the hand-over: it never becomes ready, and the crash loop ends.
      expect((await app.exited).code).toBe(1);
      expect(app.events.filter((e) => e.event === 'ready')).toHaveLength(0);
    }
    expect(app.stderr).toMatch(/sticky-rs: .*must not listen.*opens an extra listener in the primary.*not sticky.*Delete the listen\(\) call/);
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

  test.each(['sticky', 'listen'])('%s(): workers forked by a leftover cluster.fork() are named once, never routed to, and end quietly at shutdown', async (api) => {
    const port = await freePort();
    const app = startFixture('ops-app.js', api === 'listen'
      ? { API: api, PORT: String(port), LEFTOVER_FORK: '1', OPTIONS: JSON.stringify({ workers: 2 }) }
      : { API: api, LEFTOVER_FORK: '1', OPTIONS: JSON.stringify({ concurrency: 2, port }) });
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
    expect(app.stderr).toMatch(/warning: a worker \(pid \d+\) was forked outside sticky-rs, probably by a leftover cluster\.fork\(\) \(e\.g\. in cluster\.on\('exit'/);
    expect(app.stderr).not.toMatch(/EPIPE|Error:|    at /);
  });
});
