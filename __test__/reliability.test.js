'use strict';
// What a hostile or broken peer must never do to the router: stop it accepting others, spin it,
// or keep the primary from shutting down. Real processes, real sockets, distinct client IPs.
const net = require('node:net');
const { clientIp, freePort, startFixture, stopAll, get, pool } = require('./helpers');

afterEach(stopAll);

const PROXY_IP = '127.0.0.9';
const range = (n) => Array.from({ length: n }, (_, i) => i);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** `promise`'s value, or 'timeout' after `ms` (the timer does not outlive the race). */
function within(promise, ms) {
  let timer;
  const late = new Promise((resolve) => {
    timer = setTimeout(() => resolve('timeout'), ms);
  });
  return Promise.race([promise, late]).finally(() => clearTimeout(timer));
}

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
      const answers = await pool(range(n), 10, (i) => get(port, clientIp(offset + i), '/', { timeout: 3000 }).catch((e) => ({ error: e.message })));
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
      await pool(range(1000), 50, () => new Promise((resolve) => {
        const s = net.connect({ port, host: '127.0.0.1', localAddress: PROXY_IP }, () => {
          s.write(head[0]);
          resolve();
        });
        drips.add(s);
        s.on('error', () => resolve());
        s.on('close', () => drips.delete(s));
      }));
      expect(await served(50, 100)).toBe(50);
      // At most half the held connections are heads being read; the oldest were given up.
      const stats = await app.stats();
      expect(stats.givenUp).toBeGreaterThan(0);
      expect(stats.resolving).toBeLessThan(1000);
    } finally {
      clearInterval(timer);
      for (const s of drips) s.destroy();
    }
  });
});
