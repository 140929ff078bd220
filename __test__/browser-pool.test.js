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
const WebSocket = require('ws');
const { freePort, clientIp, startFixture, stopAll, pool, clientSet } = require('./helpers');

const TEST_TIMEOUT = 120000;
const BROWSERS = 100;
const WORKERS = 2;
const { track, closeAll } = clientSet();

afterEach(async () => {
  closeAll();
  await stopAll();
});

/** One request on `agent`: resolves { status, body, headers }; rejects on error or after 10 s. */
function request(agent, port, method, path, body) {
  return new Promise((resolve, reject) => {
    const req = http.request({ host: '127.0.0.1', port, method, path, agent, headers: body ? { 'content-type': 'text/plain;charset=UTF-8' } : {} }, (res) => {
      let text = '';
      res.setEncoding('utf8');
      res.on('data', (c) => (text += c));
      res.on('end', () => resolve({ status: res.statusCode, body: text, headers: res.headers }));
    });
    req.setTimeout(10000, () => req.destroy(new Error(`${method} ${path}: no answer in 10 s`)));
    req.on('error', reject);
    req.end(body);
  });
}

const ASSETS = ['/', '/app.js', '/style.css', '/socket.io/socket.io.js', '/logo.svg', '/favicon.ico'];

/**
 * One browser from `ip`: resolves null if its session went through, else what broke it
 * (the first non-200 answer, connection error or failed upgrade).
 */
async function browser(port, ip) {
  const agent = track(new http.Agent({ keepAlive: true, maxSockets: 6, localAddress: ip }));
  const base = '/socket.io/?EIO=4&transport=polling';
  const ok = async (method, path, body) => {
    const res = await request(agent, port, method, path, body);
    if (res.status !== 200) throw new Error(`${method} ${path}: ${res.status} ${res.body}`);
    return res.body;
  };
  try {
    await Promise.all(ASSETS.map((a) => ok('GET', a)));
    const open = await ok('GET', `${base}&t=h`);
    const { sid } = JSON.parse(open.slice(1));
    const session = `${base}&sid=${sid}`;
    await ok('POST', session, '40');
    const connected = await ok('GET', `${session}&t=c`);
    if (!connected.startsWith('40')) throw new Error(`no namespace connect: ${connected}`);
    for (let round = 0; round < 3; round++) {
      // A poll pending while the event and its acknowledgement go through, and the page's
      // lazy assets on the other connections meanwhile.
      const poll = ok('GET', `${session}&t=p${round}`);
      await ok('POST', session, `42${round}["echo",{"round":${round}}]`);
      await Promise.all([ok('GET', `/lazy-${round}.png`), ok('GET', `/lazy-${round}.js`)]);
      const answer = await poll;
      if (!answer.includes(`43${round}[`)) throw new Error(`round ${round}: no acknowledgement in ${answer}`);
    }
    await upgrade(port, ip, sid);
    return null;
  } catch (err) {
    return err.message;
  } finally {
    agent.destroy();
  }
}

/** The websocket upgrade of session `sid` (engine.io's probe), then one event over it. */
function upgrade(port, ip, sid) {
  return new Promise((resolve, reject) => {
    const ws = track(new WebSocket(`ws://127.0.0.1:${port}/socket.io/?EIO=4&transport=websocket&sid=${sid}`, { localAddress: ip }));
    const timer = setTimeout(() => fail(new Error('websocket upgrade: no answer in 10 s')), 10000);
    const fail = (err) => {
      clearTimeout(timer);
      ws.terminate();
      reject(err);
    };
    ws.on('error', (err) => fail(new Error(`websocket upgrade: ${err.message}`)));
    ws.on('unexpected-response', (_, res) => fail(new Error(`websocket upgrade: ${res.statusCode}`)));
    ws.on('open', () => ws.send('2probe'));
    ws.on('message', (data) => {
      const text = data.toString();
      if (text === '3probe') {
        ws.send('5');
        ws.send('429["echo",{"over":"websocket"}]');
      } else if (text.startsWith('439[')) {
        clearTimeout(timer);
        ws.close();
        resolve();
      }
    });
  });
}

async function browsers(port) {
  const failures = await pool([...Array(BROWSERS).keys()], 20, (i) => browser(port, clientIp(i)));
  return failures.filter((f) => f !== null);
}

test(`sticky() with routeBy 'sid': ${BROWSERS} browsers (assets, polling, upgrade) lose no session`, async () => {
  const port = await freePort();
  const fixture = startFixture('socketio-app.js', { PORT: String(port), WORKERS: String(WORKERS), ROUTE_BY: 'sid' });
  await fixture.count('ready', WORKERS);
  expect(await browsers(port)).toEqual([]);
  fixture.command('report r');
  const report = await fixture.next((e) => e.event === 'report' && e.id === 'r');
  expect(report.workers.flatMap((w) => w.errors)).toEqual([]);
}, TEST_TIMEOUT);

test(`setupMaster (the Socket.IO guide's code): ${BROWSERS} browsers (assets, polling, upgrade) lose no session`, async () => {
  const port = await freePort();
  const fixture = startFixture('socketio-guide.js', { PORT: String(port), WORKERS: String(WORKERS) });
  await fixture.count('ready', WORKERS);
  expect(await browsers(port)).toEqual([]);
  expect(fixture.events.filter((e) => e.event === 'connection_error')).toEqual([]);
}, TEST_TIMEOUT);

/** A well-formed session id naming `place` (lib/sid.js's encoding, random part fixed). */
function sidOf(place) {
  const alphabet = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_';
  return alphabet[place >> 6] + alphabet[place & 63] + 'x'.repeat(18);
}

test("a session's request that still reaches another worker on a reused connection (pipelined after Connection: close) is warned about, always on", async () => {
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
    socket.write(`GET /who?sid=${sidOf(0)} HTTP/1.1\r\nHost: x\r\n\r\nGET /socket.io/?EIO=4&transport=polling&sid=${sidOf(1)} HTTP/1.1\r\nHost: x\r\n\r\n`);
  });
  expect(JSON.parse(answer.slice(answer.indexOf('{'), answer.indexOf('}') + 1)).slot).toBe(0);
  const deadline = Date.now() + 5000;
  while (!/warning: .*session of another slot/.test(fixture.stderr) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
  expect(fixture.stderr).toMatch(/warning: worker #\d+ of slot \d \(pid \d+\): 1 request for a Socket\.IO session of another slot came on a connection it already served/);
}, TEST_TIMEOUT);

test("routeBy 'sid' without setupWorker(io): every session breaks, and an always-on warning names the fix", async () => {
  const port = await freePort();
  const fixture = startFixture('socketio-app.js', { PORT: String(port), WORKERS: String(WORKERS), ROUTE_BY: 'sid', NO_SETUP_WORKER: '1' });
  await fixture.count('ready', WORKERS);
  const res = await request(false, port, 'GET', '/socket.io/?EIO=4&transport=polling');
  expect(res.status).toBe(200);
  const deadline = Date.now() + 5000;
  while (!/setupWorker/.test(fixture.stderr) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
  expect(fixture.stderr).toMatch(/warning: worker #\d+ of slot \d \(pid \d+\): routeBy 'sid', but the Socket\.IO session ids of this worker do not name it.*call setupWorker\(io\) from sticky-rs/);
}, TEST_TIMEOUT);
