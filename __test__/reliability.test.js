'use strict';
// What a hostile or broken peer must never do to the router: stop it accepting others, spin it,
// or keep the primary from shutting down. Real processes, real sockets, distinct client IPs.
const net = require('node:net');
const stringHash = require('string-hash');
const { within, sleep, range, clientIp, freePort, startFixture, stopAll, get, pool, slotOf } = require('./helpers');

afterEach(stopAll);

const PROXY_IP = '127.0.0.9';

async function start(env, opts) {
  const port = await freePort();
  const app = startFixture('proxy-app.js', { WORKERS: 2, ...env, PORTS: String(port) }, opts);
  await app.count('ready', Number(env.WORKERS || 2));
  return { app, port };
}

/** Connects from `localAddress`, writes `bytes` and closes the sending side (FIN). */
function halfClose(port, localAddress, bytes) {
  return new Promise((resolve, reject) => {
    const socket = net.connect({ port, host: '127.0.0.1', localAddress }, () => {
      socket.end(bytes);
      resolve(socket);
    });
    socket.once('error', reject);
  });
}

/** Polls stats until `resolving` is 0; returns how long it took, or throws after `timeout`. */
async function resolvingDrains(app, timeout) {
  const started = Date.now();
  for (;;) {
    const stats = await app.stats();
    if (stats.resolving === 0) return Date.now() - started;
    if (Date.now() - started > timeout) throw new Error(`resolving still ${stats.resolving} after ${timeout} ms`);
    await sleep(50);
  }
}

describe('an incomplete head followed by a half-close (FIN) from a trusted proxy', () => {
  test.each([
    ['proxy-protocol', 'PROXY TCP4 1.2.3.4'],
    ['x-forwarded-for', 'GET / HTTP/1.1\r\nX-Forwarded-For: 1.2.3.4\r\n'],
  ])('%s: others are still served, the connection is given up at once, shutdown ends in time', async (routeBy, head) => {
    const { app, port } = await start({ ROUTE_BY: routeBy, TRUSTED: PROXY_IP, PEEK_TIMEOUT: 10000, HARD_SHUTDOWN_DELAY: 3000 });
    const before = await app.stats();
    const cpuBefore = app.cpuMs();
    const sockets = await Promise.all(range(3).map(() => halfClose(port, PROXY_IP, head)));
    // Untrusted clients are routed by address: they must be served while the heads are pending.
    const answers = await pool(range(20), 10, (i) => get(port, clientIp(i), '/', { timeout: 3000 }));
    expect(answers.map((a) => a.status)).toEqual(range(20).map(() => 200));
    // "Incomplete and closed" is final: no need to wait for the 10 s peekTimeout.
    expect(await resolvingDrains(app, 2000)).toBeLessThan(2000);
    const after = await app.stats();
    const counter = routeBy === 'proxy-protocol' ? 'rejected' : 'fallbacks';
    expect(after[counter] - before[counter]).toBe(3);
    // The router thread is idle again (it spun at 100% before the fix): < 300 ms CPU in 1 s.
    const cpu = app.cpuMs();
    await sleep(1000);
    expect(app.cpuMs() - cpu).toBeLessThan(300);
    expect(cpu - cpuBefore).toBeLessThan(3000);
    for (const s of sockets) s.destroy();
    app.child.kill('SIGTERM');
    const exit = await within(app.exited, 6000);
    expect(exit).toEqual({ code: 0, signal: null });
  });
});

describe('slow heads from a trusted proxy at a low fd limit (ulimit -n 1024)', () => {
  test.each([
    ['proxy-protocol', 'PROXY TCP4 203.0.113.7 127.0.0.1 5555 80\r\n'],
    ['x-forwarded-for', 'GET / HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 203.0.113.7\r\n\r\n'],
  ])('%s: 1,000 connections dripping a byte every 400 ms do not stop others being served', async (routeBy, head) => {
    const { app, port } = await start({ ROUTE_BY: routeBy, TRUSTED: PROXY_IP, PEEK_TIMEOUT: 30000 }, { fdLimit: 1024 });
    const served = async (n, offset) => {
      const answers = await pool(range(n), 10, (i) =>
        get(port, clientIp(offset + i), '/', { timeout: 3000 }).catch((e) => ({ error: e.message })),
      );
      return answers.filter((a) => a.status === 200).length;
    };
    expect(await served(20, 0)).toBe(20);
    const drips = new Set();
    let sent = 0;
    const timer = setInterval(() => {
      sent++;
      for (const s of drips) if (sent < head.length) s.write(head[sent]);
    }, 400);
    try {
      await pool(
        range(1000),
        50,
        () =>
          new Promise((resolve) => {
            const s = net.connect({ port, host: '127.0.0.1', localAddress: PROXY_IP }, () => {
              s.write(head[0]);
              resolve();
            });
            drips.add(s);
            s.on('error', () => resolve());
            s.on('close', () => drips.delete(s));
          }),
      );
      const answers = await pool(range(50), 10, (i) =>
        get(port, clientIp(100 + i), '/', { timeout: 3000 }).then(
          (a) => ({ ...a, i }),
          (e) => ({ error: e.message, i }),
        ),
      );
      const failed = answers.filter((a) => a.status !== 200);
      // At most half the held connections are heads being read; the oldest were given up.
      const stats = await app.stats();
      if (routeBy === 'proxy-protocol') {
        // Given-up PROXY heads are closed: nothing reaches a slot's share.
        expect(failed).toEqual([]);
      } else {
        // Given-up X-Forwarded-For heads are routed by the proxy's own address: all to its slot,
        // which holds them up to its share (issue 18.3's policy) and closes what comes beyond,
        // counted. Every client of the other slot is served; on the proxy's slot a client may
        // be one of those closed, never lost uncounted.
        // KNOWN (see the session note): given-up heads should not take that slot's reserve.
        const proxySlot = slotOf(PROXY_IP, 2);
        expect(failed.filter((a) => slotOf(clientIp(100 + a.i), 2) !== proxySlot)).toEqual([]);
        expect(stats.slots[proxySlot].overShare).toBeGreaterThanOrEqual(failed.length);
      }
      expect(stats.givenUp).toBeGreaterThan(0);
      expect(stats.resolving).toBeLessThan(1000);
    } finally {
      clearInterval(timer);
      for (const s of drips) s.destroy();
    }
  });
});

describe('signals and hello races', () => {
  const startApp = async (env) => {
    const port = await freePort();
    const app = startFixture('cluster-app.js', { PORT: port, WORKERS: 2, ...env });
    return { app, port };
  };
  const everySlotServes = async (port, n = 40) => {
    const answers = await pool(range(n), 10, (i) => get(port, clientIp(i), '/', { timeout: 5000 }).catch((e) => ({ error: e.message })));
    return answers.filter((a) => a.status === 200).length;
  };

  test('SIGHUP any number of times during a graceful shutdown changes nothing', async () => {
    const { app, port } = await startApp({ SLOW_MS: 1500 });
    await app.count('ready', 2);
    const inFlight = range(8).map((i) => get(port, clientIp(i), '/', { timeout: 10000 }).catch((e) => ({ error: e.message })));
    await sleep(300);
    app.child.kill('SIGTERM');
    for (let i = 0; i < 3; i++) {
      await sleep(100);
      app.child.kill('SIGHUP');
    }
    const answers = await Promise.all(inFlight);
    expect(answers.map((a) => a.status)).toEqual(range(8).map(() => 200));
    expect(await within(app.exited, 10000)).toEqual({ code: 0, signal: null });
  });

  test('a reload asked for at start-up, before the first workers are ready, finishes (5 rounds)', async () => {
    for (let round = 0; round < 5; round++) {
      const { app, port } = await startApp({ INIT_DELAY: 50 * round });
      await app.next((e) => e.event === 'listening');
      app.command('reload');
      const outcome = await app.next((e) => e.event === 'reloaded' || e.event === 'reload-failed', 30000);
      expect(outcome.event).toBe('reloaded');
      expect(await everySlotServes(port)).toBe(40);
      const { slots } = await app.stats();
      expect(slots.every((s) => s.ready)).toBe(true);
      await app.stop();
    }
  });

  test('a retiring worker that writes extra hello records cannot take its slot back', async () => {
    const { app, port } = await startApp({ HOSTILE_HELLO: 1 });
    await app.count('ready', 2);
    app.command('reload');
    expect((await app.next((e) => e.event === 'reloaded' || e.event === 'reload-failed', 30000)).event).toBe('reloaded');
    expect(await everySlotServes(port)).toBe(40);
    const { slots } = await app.stats();
    expect(slots.map((s) => s.ready)).toEqual([true, true]);
  });

  test('a worker that says "ready" before handing its server over still gets its channel', async () => {
    const { app, port } = await startApp({ FORGE_READY: 1, INIT_DELAY: 500, READY_TIMEOUT: 5000 });
    await app.count('ready', 2);
    expect(await everySlotServes(port)).toBe(40);
    // Nobody was killed for not being ready.
    expect(app.events.filter((e) => e.event === 'exit')).toHaveLength(0);
  });

  test('a shutdown the moment a reload replacement is ready retires it gracefully, never SIGKILL', async () => {
    for (let round = 0; round < 3; round++) {
      const { app } = await startApp({});
      await app.count('ready', 2);
      app.command('reload-then-shutdown');
      expect(await app.next((e) => e.event === 'closed', 20000)).toMatchObject({ code: 0 });
      await app.exited;
      const exits = app.events.filter((e) => e.event === 'exit');
      expect(exits.length).toBeGreaterThanOrEqual(3);
      for (const e of exits) expect(e).toMatchObject({ code: 0, signal: null });
    }
  });
});

/** A small seeded PRNG (mulberry32): the fuzz is the same on every run. */
function prng(seed) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** A valid head for `routeBy`, then damaged at random: cut, bytes replaced, bytes inserted. */
function fuzzedHead(routeBy, random) {
  const int = (n) => Math.floor(random() * n);
  const client = `${1 + int(223)}.${int(256)}.${int(256)}.${int(256)}`;
  let head = Buffer.from(
    routeBy === 'proxy-protocol'
      ? `PROXY TCP4 ${client} 127.0.0.1 ${1 + int(65535)} 80\r\nGET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n`
      : `GET / HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: ${client}\r\nConnection: close\r\n\r\n`,
  );
  const damage = int(4);
  if (damage === 1) head = head.subarray(0, int(head.length));
  if (damage === 2) for (let k = 0; k < 1 + int(4); k++) head[int(head.length)] = int(256);
  if (damage === 3) {
    const at = int(head.length);
    head = Buffer.concat([head.subarray(0, at), Buffer.from(Array.from({ length: 1 + int(8) }, () => int(256))), head.subarray(at)]);
  }
  return head;
}

describe('fuzz: 600 damaged heads per mode with random half-closes and resets', () => {
  test.each(['proxy-protocol', 'x-forwarded-for'])(
    '%s: resolving drains to 0, fds back at baseline, others served',
    async (routeBy) => {
      const { app, port } = await start({ ROUTE_BY: routeBy, TRUSTED: PROXY_IP, PEEK_TIMEOUT: 500 });
      await pool(range(10), 5, (i) => get(port, clientIp(i)));
      await app.atRest();
      const baseline = app.fdCount();
      const random = prng(routeBy.length);
      const ends = { fin: 0, reset: 0, open: 0 };
      await pool(
        range(600),
        50,
        (i) =>
          new Promise((resolve) => {
            const head = fuzzedHead(routeBy, random);
            const end = ['fin', 'reset', 'open'][Math.floor(random() * 3)];
            ends[end]++;
            const split = Math.floor(random() * head.length);
            const s = net.connect({ port, host: '127.0.0.1', localAddress: PROXY_IP }, async () => {
              // In two pieces, so the router often sees a part first.
              s.write(head.subarray(0, split));
              await sleep(Math.floor(random() * 20));
              if (end === 'fin') s.end(head.subarray(split));
              else if (end === 'reset') s.resetAndDestroy();
              else s.write(head.subarray(split));
            });
            s.on('error', () => {});
            s.on('close', resolve);
            s.resume();
            // 'open' ones wait for the server's answer or its close; bounded either way.
            s.setTimeout(3000, () => s.destroy());
            if (i % 97 === 0) get(port, clientIp(100 + i)).catch(() => {});
          }),
      );
      expect(ends.fin).toBeGreaterThan(100);
      expect(await resolvingDrains(app, 3000)).toBeLessThan(3000);
      await app.atRest();
      for (let i = 0; i < 100 && app.fdCount() !== baseline; i++) await sleep(50);
      expect(app.fdCount()).toBe(baseline);
      const answers = await pool(range(20), 10, (i) => get(port, clientIp(200 + i), '/', { timeout: 3000 }));
      expect(answers.every((a) => a.status === 200)).toBe(true);
    },
    120000,
  );
});

test('trustedProxies written as IPv4-mapped addresses and ranges trust the IPv4 peer', async () => {
  for (const trusted of ['::ffff:127.0.0.9', '::ffff:127.0.0.0/104']) {
    const { app, port } = await start({ ROUTE_BY: 'x-forwarded-for', TRUSTED: trusted });
    const socket = net.connect({ port, host: '127.0.0.1', localAddress: PROXY_IP });
    const text = await new Promise((resolve, reject) => {
      let data = '';
      socket.on('connect', () => socket.write('GET / HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 203.0.113.6\r\nConnection: close\r\n\r\n'));
      socket.on('data', (d) => (data += d));
      socket.on('close', () => resolve(data));
      socket.on('error', reject);
    });
    const body = JSON.parse(text.slice(text.indexOf('\r\n\r\n') + 4));
    // The proxy's own address is slot 0: only a believed header leads to slot 1.
    expect(stringHash(`::ffff:${PROXY_IP}`) % 2).toBe(0);
    expect(body.slot).toBe(stringHash('203.0.113.6') % 2);
    expect((await app.stats()).fallbacks).toBe(0);
    await app.stop();
  }
});
