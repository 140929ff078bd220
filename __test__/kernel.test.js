'use strict';
// Kernel dispatch (dispatch: 'kernel'): a SO_REUSEPORT group per listener whose classic BPF
// program computes sticky-cluster's slot from the SYN; workers accept themselves. Real
// processes, real sockets, distinct client addresses.
const { spawnSync } = require('node:child_process');
const net = require('node:net');
const stringHash = require('string-hash');
const sticky = require('..');
const { range, freePort, clientIp, startFixture, stopAll, get, pool, total, ipsOf, refusingSockopt } = require('./helpers');

afterEach(stopAll);

/** MurmurHash3's finalizer, as `hash: 'djb2-mix'` applies it to djb2 (independent of the addon). */
function fmix32(h) {
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  return (h ^ (h >>> 16)) >>> 0;
}
const slotOf = (text, workers, hash) => (hash === 'djb2-mix' ? fmix32(stringHash(text)) : stringHash(text)) % workers;

async function start(env) {
  const port = await freePort();
  const app = startFixture('cluster-app.js', { PORT: port, DISPATCH: 'kernel', ...env });
  await app.count('ready', Number(env.WORKERS));
  return { app, port };
}

describe('the kernel picks the slot sticky-cluster would: djb2(remoteAddress) % workers', () => {
  // 7 worker counts x 150 sources = 1,050 distinct sources; each count on one host and hash.
  const cases = [1, 2, 3, 4, 7, 10, 16].map((workers, i) => [workers, i % 2 ? '0.0.0.0' : '::', i % 3 === 1 ? 'djb2-mix' : 'djb2']);
  test.each(cases)('%i workers on %s with %s: every connection lands on its slot', async (workers, host, hash) => {
    const { app, port } = await start({ WORKERS: workers, HOST: host, HASH: hash });
    const ips = range(150).map((i) => clientIp(1000 + 150 * workers + i));
    const answers = await pool(ips, 16, (ip) => get(port, ip));
    const mismatches = [];
    const slots = new Set();
    const perSlot = range(workers).map(() => 0);
    for (const [i, { status, body }] of answers.entries()) {
      perSlot[body.slot] += 1;
      expect(status).toBe(200);
      expect(body.remoteAddress).toBe(host === '::' ? `::ffff:${ips[i]}` : ips[i]);
      if (body.slot !== slotOf(body.remoteAddress, workers, hash)) mismatches.push(body);
      slots.add(body.slot);
    }
    expect(mismatches).toEqual([]);
    expect(slots.size).toBe(workers);
    // Each worker accepted its own and reported them: per slot exactly what it answered.
    const stats = await app.statsWhen((s) => total(s, 'accepted') >= ips.length);
    expect(stats.dispatch).toBe('kernel');
    expect(stats.slots.map((s) => s.accepted)).toEqual(perSlot);
    expect(stats.slots.map((s) => s.delivered)).toEqual(perSlot);
  });

  test('::1 on a dual-stack listener', async () => {
    const { port } = await start({ WORKERS: 3, HOST: '::' });
    for (let k = 0; k < 5; k++) {
      const { status, body } = await get(port, '::1', '/', { host: '::1' });
      expect(status).toBe(200);
      expect(body.remoteAddress).toBe('::1');
      expect(body.slot).toBe(stringHash('::1') % 3);
    }
  });
});

test('a worker that dies: its connections wait in the kernel for the replacement, other slots are untouched', async () => {
  const { port } = await start({ WORKERS: 2 });
  const ips = range(40).map((i) => clientIp(3000 + i));
  const first = await pool(ips, 8, (ip) => get(port, ip));
  const pidOfSlot = new Map(first.map(({ body }) => [body.slot, body.pid]));
  const victim = pidOfSlot.get(0);
  process.kill(victim, 'SIGKILL');
  // Sent at once, while slot 0 has no worker: they wait in its member's accept queue.
  const again = await pool(ips, 40, (ip) => get(port, ip, '/', { timeout: 15000 }));
  for (const { status, body } of again) {
    expect(status).toBe(200);
    if (body.slot === 1) expect(body.pid).toBe(pidOfSlot.get(1));
    else expect(body.pid).not.toBe(victim);
  }
  expect(new Set(again.filter((a) => a.body.slot === 0).map((a) => a.body.pid)).size).toBe(1);
});

test('a worker that exits on its own (server.close(() => process.exit())) reports what it accepted first', async () => {
  const { app, port } = await start({ WORKERS: 2 });
  // All of slot 0, answered just before its worker exits: within the 100 ms report interval.
  const ips = ipsOf(0, 2, 30, 6000);
  await pool(ips, 10, (ip) => get(port, ip));
  const ready = app.events.filter((e) => e.event === 'ready').length;
  await get(port, ips[0], '/close-and-exit').catch(() => {});
  await app.count('ready', ready + 1);
  const stats = await app.statsWhen((s) => s.slots[0].accepted >= 31);
  expect(stats.slots[0].accepted).toBe(31);
});

test('shutdown does not wait for clients queued for a slot that has no worker', async () => {
  const port = await freePort();
  // Slot 1's worker never hands its server over: its clients wait in its member's queue.
  const app = startFixture('cluster-app.js', { PORT: port, WORKERS: 2, DISPATCH: 'kernel', STALL_SLOT: 1, HARD_SHUTDOWN_DELAY: 20000 });
  await app.count('ready', 1);
  const stranded = ipsOf(1, 2, 3, 9000).map((ip) => net.connect({ port, host: '127.0.0.1', localAddress: ip }).on('error', () => {}));
  try {
    await app.statsWhen((s) => s.slots[1].queued >= 3);
    const sent = Date.now();
    app.child.kill('SIGTERM');
    expect(await app.exited).toEqual({ code: 0, signal: null });
    // Not hardShutdownDelay / 2 (10 s): nothing could ever accept those.
    expect(Date.now() - sent).toBeLessThan(3000);
  } finally {
    for (const socket of stranded) socket.destroy();
  }
});

test('a second sticky-rs on the same port gets EADDRINUSE', async () => {
  const { port } = await start({ WORKERS: 2 });
  const second = startFixture('cluster-app.js', { PORT: port, DISPATCH: 'kernel', WORKERS: 2 });
  const error = await second.next((e) => e.event === 'error');
  expect(error).toMatchObject({ code: 'EADDRINUSE' });
  expect((await second.exited).code).toBe(3);
});

// Running a process as another user needs root: CI runs as root, so this runs there; elsewhere
// it is reported as skipped, by name.
const asRoot = process.getuid() === 0 ? test : test.skip;
asRoot('a process of another user cannot join the group (needs root to switch users: skipped otherwise)', async () => {
  const { port } = await start({ WORKERS: 2 });
  const join = `import socket
s = socket.socket(socket.AF_INET6)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
try:
    s.bind(('::', ${port})); s.listen(8); print('joined')
except OSError as e:
    print(e.errno)`;
  const out = spawnSync('python3', ['-c', join], { uid: 65534, gid: 65534, encoding: 'utf8', timeout: 10000 });
  expect(out.stdout.trim()).toBe(String(require('node:os').constants.errno.EADDRINUSE));
});
test('graceful shutdown: in-flight requests finish, new clients are refused, exit 0', async () => {
  const { app, port } = await start({ WORKERS: 2, SLOW_MS: 1000 });
  const inFlight = range(6).map((i) => get(port, clientIp(4000 + i), '/', { timeout: 10000 }));
  await new Promise((r) => setTimeout(r, 300));
  app.child.kill('SIGTERM');
  const answers = await Promise.all(inFlight);
  expect(answers.map((a) => a.status)).toEqual(range(6).map(() => 200));
  await expect(get(port, clientIp(4100), '/', { timeout: 3000 })).rejects.toThrow(/ECONNREFUSED|ECONNRESET/);
  expect(await app.exited).toEqual({ code: 0, signal: null });
});

test('dispatch "auto" (the default) where the kernel refuses the program: the router takes over and says why', async () => {
  // An old kernel or a sandbox without SO_ATTACH_REUSEPORT_CBPF answers ENOPROTOOPT; a shim
  // preloaded into the primary makes this kernel answer the same, for that option only.
  const shim = refusingSockopt('SOL_SOCKET', '51 /* SO_ATTACH_REUSEPORT_CBPF */');
  try {
    const port = await freePort();
    const app = startFixture('cluster-app.js', { PORT: port, WORKERS: 2, DISPATCH: '', LD_PRELOAD: shim.path });
    await app.count('ready', 2);
    const ips = range(20).map((i) => clientIp(5000 + i));
    for (const { status, body } of await pool(ips, 5, (ip) => get(port, ip))) {
      expect(status).toBe(200);
      expect(body.slot).toBe(stringHash(body.remoteAddress) % 2);
    }
    const stats = await app.statsWhen((s) => total(s, 'accepted') >= 20);
    expect(stats.dispatch).toBe('primary');
    expect(stats.dispatchReason).toMatch(
      /^dispatch "auto": the kernel refused the SO_REUSEPORT group \(.*(Protocol not available|ENOPROTOOPT)/,
    );
    expect(total(stats, 'accepted')).toBe(20);
    // Always on, debug off: once.
    expect(
      app.stderr.match(
        /warning: kernel dispatch is not available here, the primary's router routes every connection \(dispatch "primary"\): dispatch "auto": the kernel refused the SO_REUSEPORT group \(.*(Protocol not available|ENOPROTOOPT)/g,
      ),
    ).toHaveLength(1);
  } finally {
    shim.remove();
  }
});

test('dispatch: "kernel" where it cannot work, or an unknown value, throws before anything is forked', () => {
  const start = (cb) => cb(require('node:http').createServer());
  expect(() => sticky(start, { dispatch: 'kernel', routeBy: 'x-forwarded-for', trustedProxies: ['10.0.0.1'] })).toThrow(
    /"dispatch": "kernel" cannot work here: routeBy "x-forwarded-for"/,
  );
  expect(() => sticky(start, { dispatch: 'fast' })).toThrow(/"dispatch" must be one of auto, kernel, primary, got "fast"/);
  expect(Object.keys(require('node:cluster').workers)).toHaveLength(0);
});
