'use strict';
// routeBy 'sid': a sid the primary cannot see (after more than peekLimit bytes of request line)
// makes the connection a new session, which may land on another worker than the session's:
// engine.io answers 400 "Session ID unknown" there, and the worker's debug line says why.
const http = require('node:http');
const { freePort, startFixture, stopAll } = require('./helpers');

jest.setTimeout(60000);
afterEach(stopAll);

/** GET `path` on a connection of its own: { status, body }. */
function request(port, path) {
  return new Promise((resolve, reject) => {
    const req = http.get({ host: '127.0.0.1', port, path, agent: false }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (d) => (body += d));
      res.on('end', () => resolve({ status: res.statusCode, body }));
    });
    req.setTimeout(10000, () => req.destroy(new Error(`${path.slice(0, 60)}: no answer`)));
    req.on('error', reject);
  });
}

test.each([
  ['listen', { LISTEN_ROUTE_BY: 'sid' }],
  ['setupMaster', {}],
])('%s: the 400 of a sid after peekLimit bytes says why in the debug line', async (api, env) => {
  const port = await freePort();
  const app = startFixture('socketio-guide.js', { PORT: String(port), WORKERS: '2', DEBUG: 'sticky-rs:lifecycle', ...env });
  await app.count('ready', 2);
  const handshake = await request(port, '/socket.io/?EIO=4&transport=polling');
  const sid = JSON.parse(handshake.body.slice(1)).sid;
  // 10,000 bytes of query before the sid (more than peekLimit's 8192, less than Node's 16 KB head).
  const path = `/socket.io/?EIO=4&transport=polling&pad=${'x'.repeat(10000)}&sid=${sid}`;
  // New sessions alternate between the two workers (least-connection): some land elsewhere.
  const statuses = [];
  for (let i = 0; i < 6 && !statuses.includes(400); i++) statuses.push((await request(port, path)).status);
  expect(statuses).toContain(400);
  const line = await new Promise((resolve, reject) => {
    const deadline = Date.now() + 5000;
    const look = () => {
      const found = app.stderr.split('\n').find((l) => l.includes('400 Session ID unknown'));
      if (found) resolve(found);
      else if (Date.now() > deadline) reject(new Error(`no debug line; stderr: ${app.stderr.slice(-2000)}`));
      else setTimeout(look, 20);
    };
    look();
  });
  console.log(`${api}: ${line.slice(0, 100)}...${line.slice(-260)}`);
  expect(line).toMatch(/^\[sticky-rs\] worker #\d+ of slot \d \(pid \d+\): 400 Session ID unknown for GET \/socket\.io\/\?EIO=4/);
  expect(line).toMatch(
    /its sid ends at byte 100\d\d of the request line, after the 8192 bytes the primary reads \(peekLimit\): the primary could not see it and placed the connection as a new session/,
  );
});
