'use strict';
// Routing behind proxies: X-Forwarded-For and PROXY protocol from trusted peers only, without
// slow clients delaying anyone, and one worker per client across several listeners.
const net = require('node:net');
const http = require('node:http');
const stringHash = require('string-hash');
const { io: ioClient } = require('socket.io-client');
const { range, until, freePort, clientIp, startFixture, stopAll, get, pool, slotOf } = require('./helpers');

afterEach(stopAll);

const PROXY_IP = '127.0.0.9';
// Documentation ranges (RFC 5737, RFC 3849): the addresses a proxy claims for its clients.
const claimedV4 = (i) => `${['192.0.2', '198.51.100', '203.0.113'][i % 3]}.${1 + (i % 250)}`;
const claimedV6 = (i) => `2001:db8::${(i + 1).toString(16)}`;

async function start(env) {
  const ports = await Promise.all((env.PORTS_COUNT ? range(env.PORTS_COUNT) : [0]).map(() => freePort()));
  const app = startFixture('proxy-app.js', { WORKERS: 4, ...env, PORTS: ports.join(',') });
  await app.count('ready', Number(env.WORKERS || 4));
  return { app, ports, port: ports[0] };
}

/** Sends raw bytes from `localAddress`, then reads to the end: { status, body } or { closed }. */
function raw(port, localAddress, bytes, { timeout = 10000 } = {}) {
  return new Promise((resolve, reject) => {
    const started = process.hrtime.bigint();
    let firstByte = null;
    const socket = net.connect({ port, host: '127.0.0.1', localAddress });
    const chunks = [];
    socket.on('connect', () => socket.write(bytes));
    socket.on('data', (d) => {
      if (firstByte === null) firstByte = Number(process.hrtime.bigint() - started) / 1e6;
      chunks.push(d);
    });
    socket.on('error', (err) => (err.code === 'ECONNRESET' ? null : reject(err)));
    socket.on('close', () => {
      const text = Buffer.concat(chunks).toString('utf8');
      const m = /^HTTP\/1\.1 (\d{3})[\s\S]*?\r\n\r\n([\s\S]*)$/.exec(text);
      if (!m) return resolve({ closed: true, text });
      let body = m[2];
      try {
        body = JSON.parse(body);
      } catch {}
      resolve({ status: Number(m[1]), body, ttfb: firstByte });
    });
    socket.setTimeout(timeout, () => socket.destroy(new Error(`no answer in ${timeout} ms`)));
  });
}

const request = (headers = '') => `GET / HTTP/1.1\r\nHost: x\r\n${headers}Connection: close\r\n\r\n`;

function proxyV1(address, port) {
  const family = net.isIPv6(address) ? 'TCP6' : 'TCP4';
  const dst = family === 'TCP6' ? '::1' : '127.0.0.1';
  return `PROXY ${family} ${address} ${dst} ${port} 80\r\n`;
}

function proxyV2(address, port) {
  const v6 = net.isIPv6(address);
  const ip = (a) => (v6 ? new net.SocketAddress({ address: a, family: 'ipv6' }) && ipv6Bytes(a) : Buffer.from(a.split('.').map(Number)));
  const body = Buffer.concat([ip(address), ip(v6 ? '::1' : '127.0.0.1'), u16(port), u16(80)]);
  return Buffer.concat([Buffer.from('\r\n\r\n\0\r\nQUIT\n', 'latin1'), Buffer.from([0x21, v6 ? 0x21 : 0x11]), u16(body.length), body]);
}

function u16(n) {
  const b = Buffer.alloc(2);
  b.writeUInt16BE(n);
  return b;
}

function ipv6Bytes(address) {
  const [head, tail = ''] = address.split('::');
  const words = (s) => (s ? s.split(':').map((w) => parseInt(w, 16)) : []);
  const h = words(head);
  const t = words(tail);
  const all = [...h, ...Array(8 - h.length - t.length).fill(0), ...t];
  const b = Buffer.alloc(16);
  for (const [i, w] of all.entries()) b.writeUInt16BE(w, i * 2);
  return b;
}

describe('X-Forwarded-For from a trusted proxy', () => {
  test('200 forwarded clients behind one proxy address: spread over every worker, each on one', async () => {
    const { app, port } = await start({ ROUTE_BY: 'x-forwarded-for', TRUSTED: `${PROXY_IP},10.0.0.0/8` });
    const clients = range(200).map(claimedV4);
    const sends = [...clients, ...clients];
    // The left-most entry is the client's own claim (forgeable); trusted hops on the right are skipped.
    const answers = await pool(sends, 20, (fwd, i) =>
      raw(port, PROXY_IP, request(`X-Forwarded-For: ${i % 2 ? '6.6.6.6, ' : ''}${fwd}, 10.1.2.3\r\n`)),
    );
    const pidOf = new Map();
    const slots = new Set();
    for (const [i, a] of answers.entries()) {
      expect(a.status).toBe(200);
      const fwd = sends[i];
      expect(a.body.slot).toBe(stringHash(fwd) % 4);
      if (pidOf.has(fwd)) expect(a.body.pid).toBe(pidOf.get(fwd));
      pidOf.set(fwd, a.body.pid);
      slots.add(a.body.slot);
      // The stream reached the worker untouched: the header is still there.
      expect(a.body.xff).toMatch(new RegExp(`${fwd.replace(/\./g, '\\.')}, 10\\.1\\.2\\.3$`));
    }
    expect([...slots].sort()).toEqual([0, 1, 2, 3]);
    const stats = await app.stats();
    expect(stats.fallbacks).toBe(0);
  });

  test('the same headers from an untrusted address change nothing: routed by that address', async () => {
    const { port } = await start({ ROUTE_BY: 'x-forwarded-for', TRUSTED: PROXY_IP });
    const untrusted = '127.0.0.10';
    const answers = await pool(range(50).map(claimedV4), 10, (fwd) => raw(port, untrusted, request(`X-Forwarded-For: ${fwd}\r\n`)));
    for (const a of answers) {
      expect(a.status).toBe(200);
      expect(a.body.slot).toBe(stringHash(`::ffff:${untrusted}`) % 4);
    }
  });

  test('a trusted connection without the header, or with garbage, is routed by its own address', async () => {
    const { app, port } = await start({ ROUTE_BY: 'x-forwarded-for', TRUSTED: PROXY_IP });
    const own = stringHash(`::ffff:${PROXY_IP}`) % 4;
    for (const headers of ['', 'X-Forwarded-For: not-an-address\r\n']) {
      const a = await raw(port, PROXY_IP, request(headers));
      expect(a.status).toBe(200);
      expect(a.body.slot).toBe(own);
    }
    expect((await app.stats()).fallbacks).toBe(2);
  });

  test('slowloris: 1,000 silent connections from the proxy do not delay 1,000 others (p99 within 2x)', async () => {
    const { port } = await start({ ROUTE_BY: 'x-forwarded-for', TRUSTED: PROXY_IP, PEEK_TIMEOUT: 30000, WORKERS: 2 });
    const p99 = async () => {
      const answers = await pool(range(1000), 20, (i) => raw(port, PROXY_IP, request(`X-Forwarded-For: ${claimedV4(i)}\r\n`)));
      expect(answers.every((a) => a.status === 200)).toBe(true);
      const ttfb = answers.map((a) => a.ttfb).sort((a, b) => a - b);
      return ttfb[Math.floor(ttfb.length * 0.99)];
    };
    await p99(); // warm-up
    // Alternating rounds, medians: the machine's own noise hits both sides alike.
    const quiet = [];
    const loaded = [];
    for (let round = 0; round < 3; round++) {
      quiet.push(await p99());
      const idle = [];
      try {
        await pool(
          range(1000),
          100,
          () =>
            new Promise((resolve, reject) => {
              const s = net.connect({ port, host: '127.0.0.1', localAddress: PROXY_IP }, () => resolve());
              s.on('error', reject);
              idle.push(s);
            }),
        );
        loaded.push(await p99());
      } finally {
        for (const s of idle) s.destroy();
      }
    }
    const median = (xs) => [...xs].sort((a, b) => a - b)[1];
    console.log(
      `slowloris: p99 time to first byte, median of 3: ${median(quiet).toFixed(2)} ms without, ${median(loaded).toFixed(2)} ms with 1,000 idle connections (rounds: ${quiet.map((q) => q.toFixed(1))} / ${loaded.map((l) => l.toFixed(1))})`,
    );
    expect(median(loaded)).toBeLessThanOrEqual(2 * median(quiet));
  });
});

describe('PROXY protocol from a trusted proxy', () => {
  test.each([
    ['v1', proxyV1],
    ['v2', proxyV2],
  ])('%s: 200 claimed clients, sticky, remoteAddress and remotePort are the client', async (_, header) => {
    const { port } = await start({ ROUTE_BY: 'proxy-protocol', TRUSTED: PROXY_IP });
    const clients = range(200).map((i) => (i % 4 === 3 ? claimedV6(i) : claimedV4(i)));
    const sends = [...clients, ...clients];
    const answers = await pool(sends, 20, (addr, i) =>
      raw(port, PROXY_IP, Buffer.concat([Buffer.from(header(addr, 40000 + (i % 200))), Buffer.from(request())])),
    );
    const pidOf = new Map();
    const slots = new Set();
    for (const [i, a] of answers.entries()) {
      const addr = sends[i];
      expect(a.status).toBe(200);
      expect(a.body.remoteAddress).toBe(addr);
      expect(a.body.ip).toBe(addr); // Express's req.ip
      expect(a.body.remotePort).toBe(40000 + (i % 200));
      expect(a.body.slot).toBe(stringHash(addr) % 4);
      if (pidOf.has(addr)) expect(a.body.pid).toBe(pidOf.get(addr));
      pidOf.set(addr, a.body.pid);
      slots.add(a.body.slot);
    }
    expect([...slots].sort()).toEqual([0, 1, 2, 3]);
  });

  test('malformed and truncated headers are refused and counted; others are unaffected', async () => {
    const { app, port } = await start({ ROUTE_BY: 'proxy-protocol', TRUSTED: PROXY_IP, PEEK_TIMEOUT: 500 });
    const bad = [
      `PROXY TCP4 not-an-address 127.0.0.1 1 80\r\n${request()}`,
      `PROXY TCP4 1.2.3.4 127.0.0.1 99999 80\r\n${request()}`,
      request(), // no header at all
      'PROXY TCP4 1.2.3.4', // truncated, then silence
      Buffer.concat([proxyV2('1.2.3.4', 1).subarray(0, 20)]), // truncated v2
    ];
    const results = await Promise.all([
      ...bad.map((b) => raw(port, PROXY_IP, b)),
      ...range(40).map((i) => raw(port, PROXY_IP, proxyV1(claimedV4(i), 1000 + i) + request())),
    ]);
    for (const r of results.slice(0, bad.length)) expect(r.closed).toBe(true);
    for (const [i, r] of results.slice(bad.length).entries()) {
      expect(r.status).toBe(200);
      expect(r.body.remoteAddress).toBe(claimedV4(i));
    }
    expect((await app.stats()).rejected).toBe(bad.length);
  });

  test('LOCAL (health checks) routes by the proxy; PROXY bytes from an untrusted peer reach the app as they are', async () => {
    const { port } = await start({ ROUTE_BY: 'proxy-protocol', TRUSTED: PROXY_IP });
    const local = await raw(
      port,
      PROXY_IP,
      Buffer.concat([Buffer.from('\r\n\r\n\0\r\nQUIT\n', 'latin1'), Buffer.from([0x20, 0x00, 0, 0]), Buffer.from(request())]),
    );
    expect(local.status).toBe(200);
    expect(local.body.remoteAddress).toBe(`::ffff:${PROXY_IP}`);
    // A spoof attempt from elsewhere: the header is not believed; Node answers 400 to it.
    const spoof = await raw(port, '127.0.0.11', proxyV1('1.2.3.4', 5) + request());
    expect(spoof.status).toBe(400);
  });

  test("Socket.IO behind a real PROXY-speaking proxy: handshake.address is the client's own", async () => {
    const { port } = await start({ ROUTE_BY: 'proxy-protocol', TRUSTED: PROXY_IP, WORKERS: 2 });
    // A minimal TCP proxy in front of sticky-rs that speaks PROXY v1, like HAProxy send-proxy.
    const shim = net.createServer((client) => {
      const upstream = net.connect({ port, host: '127.0.0.1', localAddress: PROXY_IP }, () => {
        upstream.write(proxyV1(client.remoteAddress.replace(/^::ffff:/, ''), client.remotePort));
        client.pipe(upstream).pipe(client);
      });
      const end = () => {
        client.destroy();
        upstream.destroy();
      };
      client.on('error', end).on('close', end);
      upstream.on('error', end).on('close', end);
    });
    await new Promise((resolve) => shim.listen(0, '127.0.0.1', resolve));
    const agents = [];
    try {
      const results = await pool(range(30), 10, async (i) => {
        const agent = new http.Agent({ keepAlive: true, localAddress: clientIp(i) });
        agents.push(agent);
        const socket = ioClient(`http://127.0.0.1:${shim.address().port}`, {
          transports: ['polling'],
          agent,
          forceNew: true,
          reconnection: false,
        });
        try {
          await new Promise((resolve, reject) => {
            socket.once('connect', resolve);
            socket.once('connect_error', reject);
          });
          const who = [];
          for (let k = 0; k < 3; k++) who.push(await socket.timeout(5000).emitWithAck('who'));
          return who;
        } finally {
          socket.disconnect();
        }
      });
      for (const [i, who] of results.entries()) {
        for (const w of who) {
          expect(w.address).toBe(clientIp(i));
          expect(w.pid).toBe(who[0].pid);
          expect(w.slot).toBe(stringHash(clientIp(i)) % 2);
        }
      }
    } finally {
      for (const a of agents) a.destroy();
      await new Promise((resolve) => shim.close(resolve));
    }
  });
});

test('several listeners: a client lands on the same worker on every one of them', async () => {
  const { ports } = await start({ PORTS_COUNT: 2 });
  const ips = range(100).map(clientIp);
  const answers = await pool(ips, 10, async (ip) => Promise.all(ports.map((p) => get(p, ip))));
  const slots = new Set();
  for (const [i, [a, b]] of answers.entries()) {
    expect(a.status).toBe(200);
    expect(b.status).toBe(200);
    expect(a.body.listener).toBe(0);
    expect(b.body.listener).toBe(1);
    expect(b.body.pid).toBe(a.body.pid);
    expect(a.body.slot).toBe(stringHash(`::ffff:${ips[i]}`) % 4);
    slots.add(a.body.slot);
  }
  expect(slots.size).toBe(4);
});

test('several listeners: a worker that closes one of its servers gets no new client on any (sticky-session semantics)', async () => {
  const { app, ports } = await start({ PORTS_COUNT: 2, WORKERS: 2 });
  const ips = range(60).map((i) => clientIp(200 + i));
  const slot0 = ips.filter((ip) => slotOf(ip, 2) === 0);
  const old = (await get(ports[0], slot0[0])).body.pid;
  const ready = app.events.filter((e) => e.event === 'ready').length;
  expect((await get(ports[0], slot0[0], '/close')).body.pid).toBe(old);
  await app.count('ready', ready + 1);
  // From now on every client of slot 0 meets the replacement on both listeners.
  const answers = await pool(slot0, 10, async (ip) => Promise.all(ports.map((p) => get(p, ip))));
  for (const [a, b] of answers) {
    expect([a.status, b.status]).toEqual([200, 200]);
    expect(a.body.pid).not.toBe(old);
    expect(b.body.pid).toBe(a.body.pid);
  }
});

test('shutdown waits for a connection whose PROXY header is still on its way', async () => {
  const { app, port } = await start({ ROUTE_BY: 'proxy-protocol', TRUSTED: PROXY_IP, PEEK_TIMEOUT: 3000, WORKERS: 2 });
  const socket = net.connect({ port, host: '127.0.0.1', localAddress: PROXY_IP });
  await new Promise((resolve, reject) => socket.once('connect', resolve).once('error', reject));
  const answer = new Promise((resolve) => {
    let text = '';
    socket.on('data', (d) => (text += d));
    socket.on('close', () => resolve(text));
  });
  // Accepted and being resolved when the shutdown starts.
  await until('the connection is being resolved', async () => (await app.stats()).resolving > 0, 2000);
  app.child.kill('SIGTERM');
  await new Promise((r) => setTimeout(r, 300));
  socket.write(proxyV1('203.0.113.77', 5555) + request());
  const text = await answer;
  expect(text).toMatch(/^HTTP\/1\.1 200 /);
  expect(text).toContain('"remoteAddress":"203.0.113.77"');
  expect((await app.exited).code).toBe(0);
});
