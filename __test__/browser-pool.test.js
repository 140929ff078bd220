'use strict';
// Routing by Socket.IO session id (routeBy 'sid', setupMaster) behind a browser's connection
// pool. A browser keeps up to 6 keep-alive connections per origin and sends any request on any
// of them: it fetches the page's assets first (each new connection is "a new session" for the
// router, placed on any worker), then runs the polling session over the same connections. A
// connection serves only the worker that got it, so a session's poll sent on a connection held
// by another worker is answered 400 "Session ID unknown" and the session is lost.
//
// Each simulated browser here does what Chromium does on the example's page: 6 assets in
// parallel, the handshake, the namespace connect, polls pending while POSTs go out (with more
// assets between), then the websocket upgrade, all over one http.Agent with keepAlive and
// maxSockets 6. A session is lost on any answer but 200, any connection error, or an upgrade
// that does not complete.
const http = require('node:http');
const net = require('node:net');
const { browser, request } = require('./fixtures/browser-like');
const { freePort, clientIp, startFixture, stopAll, pool, clientSet } = require('./helpers');

const TEST_TIMEOUT = 120000;
const BROWSERS = 100;
const WORKERS = 2;
const { track, closeAll } = clientSet();

afterEach(async () => {
  closeAll();
  await stopAll();
});

const ASSETS = ['/', '/app.js', '/style.css', '/socket.io/socket.io.js', '/logo.svg', '/favicon.ico'];
const LAZY = (round) => [`/lazy-${round}.png`, `/lazy-${round}.js`];

async function browsers(port) {
  const failures = await pool([...Array(BROWSERS).keys()], 20, (i) =>
    browser(port, clientIp(i), { assets: ASSETS, lazy: LAZY, emit: (round) => ['echo', { round }], track }),
  );
  return failures.filter((f) => f !== null);
}

test(
  `sticky() with routeBy 'sid': ${BROWSERS} browsers (assets, polling, upgrade) lose no session`,
  async () => {
    const port = await freePort();
    const fixture = startFixture('socketio-app.js', { PORT: String(port), WORKERS: String(WORKERS), ROUTE_BY: 'sid' });
    await fixture.count('ready', WORKERS);
    expect(await browsers(port)).toEqual([]);
    fixture.command('report r');
    const report = await fixture.next((e) => e.event === 'report' && e.id === 'r');
    expect(report.workers.flatMap((w) => w.errors)).toEqual([]);
  },
  TEST_TIMEOUT,
);

test(
  `setupMaster (the Socket.IO guide's code): ${BROWSERS} browsers (assets, polling, upgrade) lose no session`,
  async () => {
    const port = await freePort();
    const fixture = startFixture('socketio-guide.js', { PORT: String(port), WORKERS: String(WORKERS) });
    await fixture.count('ready', WORKERS);
    expect(await browsers(port)).toEqual([]);
    expect(fixture.events.filter((e) => e.event === 'connection_error')).toEqual([]);
  },
  TEST_TIMEOUT,
);

/** A well-formed session id naming `place` (lib/sid.js's encoding, random part fixed). */
function sidOf(place) {
  const alphabet = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_';
  return alphabet[place >> 6] + alphabet[place & 63] + 'x'.repeat(18);
}

test(
  "a session's request that still reaches another worker on a reused connection (pipelined after Connection: close) is warned about, always on",
  async () => {
    const port = await freePort();
    const fixture = startFixture('socketio-app.js', { PORT: String(port), WORKERS: String(WORKERS), ROUTE_BY: 'sid' });
    await fixture.count('ready', WORKERS);
    // The first request names slot 0 (the router sends it there); the second, in the same write,
    // names a session of slot 1: it reaches slot 0's worker on a connection that served a request.
    const answer = await new Promise((resolve, reject) => {
      const socket = track(net.connect({ host: '127.0.0.1', port, localAddress: clientIp(0) }));
      let text = '';
      socket.setEncoding('utf8');
      socket.on('data', (d) => (text += d));
      socket.on('close', () => resolve(text));
      socket.on('error', reject);
      socket.setTimeout(5000, () => socket.destroy());
      socket.write(
        `GET /who?sid=${sidOf(0)} HTTP/1.1\r\nHost: x\r\n\r\nGET /socket.io/?EIO=4&transport=polling&sid=${sidOf(1)} HTTP/1.1\r\nHost: x\r\n\r\n`,
      );
    });
    expect(JSON.parse(answer.slice(answer.indexOf('{'), answer.indexOf('}') + 1)).slot).toBe(0);
    await fixture.said(/warning: .*session of another slot/);
    expect(fixture.stderr).toMatch(
      /warning: worker #\d+ of slot \d \(pid \d+\): 1 request for a Socket\.IO session of another slot came on a connection it already served/,
    );
  },
  TEST_TIMEOUT,
);

test(
  "routeBy 'sid' without setupWorker(io): every session breaks, and an always-on warning names the fix",
  async () => {
    const port = await freePort();
    const fixture = startFixture('socketio-app.js', {
      PORT: String(port),
      WORKERS: String(WORKERS),
      ROUTE_BY: 'sid',
      NO_SETUP_WORKER: '1',
    });
    await fixture.count('ready', WORKERS);
    const res = await request(false, port, 'GET', '/socket.io/?EIO=4&transport=polling');
    expect(res.status).toBe(200);
    await fixture.said(/setupWorker/);
    expect(fixture.stderr).toMatch(
      /warning: worker #\d+ of slot \d \(pid \d+\): routeBy 'sid', but the Socket\.IO session ids of this worker do not name it.*call setupWorker\(io\) from sticky-rs/,
    );
  },
  TEST_TIMEOUT,
);

test(
  'Socket.IO attached after listen() handed the server over: its responses close their connections too',
  async () => {
    const port = await freePort();
    const fixture = startFixture('sid-late-io.js', { PORT: String(port) });
    await fixture.count('ready', WORKERS);
    const agent = track(new http.Agent({ keepAlive: true }));
    for (const path of ['/socket.io/?EIO=4&transport=polling', '/asset']) {
      const res = await request(agent, port, 'GET', path);
      expect(res.status).toBe(200);
      expect(res.headers.connection).toBe('close');
    }
  },
  TEST_TIMEOUT,
);
