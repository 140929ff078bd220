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
