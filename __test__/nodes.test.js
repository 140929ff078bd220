'use strict';
// Several hosts behind one balancer (issue 23): with `node`, every session id starts with
// `<node>.`, so a balancer routes each request by the id alone; a request for another node's
// session never reaches a worker here: the router answers engine.io's 400 itself.
const http = require('node:http');
const net = require('node:net');
const { io } = require('socket.io-client');
const { freePort, clientIp, startFixture, stopAll, clientSet } = require('./helpers');

const TEST_TIMEOUT = 60000;
const { track, closeAll } = clientSet();

afterEach(async () => {
  closeAll();
  await stopAll();
});

async function start(env = {}) {
  const port = await freePort();
  const fixture = startFixture('socketio-app.js', { PORT: String(port), WORKERS: '2', ROUTE_BY: 'sid', STICKY_NODE: 'web1', ...env });
  await fixture.count('ready', 2);
  return { fixture, port, url: `http://127.0.0.1:${port}` };
}

/** A raw request: resolves { status, headers, body, ms } once the server closes the connection. */
function raw(port, path, { method = 'GET', headers = {}, body = '' } = {}) {
  return new Promise((resolve, reject) => {
    const began = process.hrtime.bigint();
    let answeredAt = null;
    const socket = track(net.connect({ host: '127.0.0.1', port, localAddress: clientIp(7) }));
    let text = '';
    socket.setEncoding('utf8');
    socket.on('data', (d) => {
      if (answeredAt === null) answeredAt = process.hrtime.bigint();
      text += d;
    });
    socket.on('error', reject);
    socket.setTimeout(5000, () => socket.destroy(new Error(`${path}: the connection stayed open 5 s`)));
    socket.on('close', () => {
      const [head, ...rest] = text.split('\r\n\r\n');
      const [statusLine, ...lines] = head.split('\r\n');
      resolve({
        status: Number(statusLine.split(' ')[1]),
        headers: Object.fromEntries(lines.map((l) => [l.slice(0, l.indexOf(':')).toLowerCase(), l.slice(l.indexOf(':') + 1).trim()])),
        body: rest.join('\r\n\r\n'),
        ms: answeredAt === null ? null : Number(answeredAt - began) / 1e6,
      });
    });
    const extra = Object.entries({ Host: 'x', ...(body ? { 'Content-Length': Buffer.byteLength(body) } : {}), ...headers })
      .map(([k, v]) => `${k}: ${v}\r\n`)
      .join('');
    socket.write(`${method} ${path} HTTP/1.1\r\n${extra}\r\n${body}`);
  });
}

test(
  "with node 'web1': every session id starts with 'web1.', and polling sessions work",
  async () => {
    const { url } = await start();
    const clients = [];
    for (let i = 0; i < 10; i++) {
      const socket = track(
        io(url, { transports: ['polling'], forceNew: true, reconnection: false, agent: new http.Agent({ localAddress: clientIp(i) }) }),
      );
      await new Promise((resolve, reject) => {
        socket.once('connect', resolve);
        socket.once('connect_error', reject);
      });
      clients.push(socket);
    }
    for (const socket of clients) {
      expect(socket.io.engine.id).toMatch(/^web1\.[A-Za-z0-9_-]{20}$/);
      for (let k = 0; k < 3; k++) expect((await socket.timeout(5000).emitWithAck('echo', k)).payload).toBe(k);
    }
  },
  TEST_TIMEOUT,
);

test(
  "a request for another node's session: 400 'Session ID unknown' with Connection: close from the router within 100 ms, a debug line naming the node, counted and warned",
  async () => {
    const { fixture, port } = await start({ DEBUG: 'sticky-rs:connection' });
    const other = 'web2.AFabcdefghij-_KLMNOP';
    const answers = [
      await raw(port, `/socket.io/?EIO=4&transport=polling&sid=${other}`),
      await raw(port, `/socket.io/?EIO=4&transport=polling&sid=${other}`, { method: 'POST', body: `42["echo",${'1'.repeat(5000)}]` }),
      await raw(port, `/socket.io/?EIO=4&transport=websocket&sid=${other}`, {
        headers: {
          Upgrade: 'websocket',
          Connection: 'Upgrade',
          'Sec-WebSocket-Key': 'dGhlIHNhbXBsZSBub25jZQ==',
          'Sec-WebSocket-Version': '13',
        },
      }),
    ];
    for (const a of answers) {
      expect(a.status).toBe(400);
      expect(JSON.parse(a.body)).toEqual({ code: 1, message: 'Session ID unknown' });
      expect(a.headers.connection).toBe('close');
      expect(a.ms).toBeLessThan(100);
    }
    const stats = await fixture.statsWhen((s) => s.otherNode === 3);
    expect(stats.otherNode).toBe(3);
    // No worker saw them.
    expect(stats.slots.reduce((n, s) => n + s.accepted, 0)).toBe(0);
    expect(fixture.stderr).toMatch(/primary: a request from \S+ for a session of node "web2", not this one: answered 400/);
    await fixture.said(/warning: answered \d+ request\(s\) for Socket\.IO sessions of other nodes/);
    expect(fixture.stderr).toMatch(
      /warning: answered \d+ request\(s\) for Socket\.IO sessions of other nodes 400 "Session ID unknown" \(this is node "web1"\)/,
    );
  },
  TEST_TIMEOUT,
);

test(
  'ids of this node, and ids without a node name, still reach their worker',
  async () => {
    const { fixture, port } = await start();
    const open = await raw(port, '/socket.io/?EIO=4&transport=polling');
    const { sid } = JSON.parse(open.body.slice(1));
    expect(sid).toMatch(/^web1\./);
    const connect = await raw(port, `/socket.io/?EIO=4&transport=polling&sid=${sid}`, { method: 'POST', body: '40' });
    expect(connect.status).toBe(200);
    // The id without its node name names the same place: routed to that worker, whose engine.io
    // does not know it (the router answered none of these itself).
    const bare = await raw(port, `/socket.io/?EIO=4&transport=polling&sid=${sid.slice(5)}`);
    expect(bare.status).toBe(400);
    expect(bare.body).toContain('"Session ID unknown"');
    const stats = await fixture.statsWhen((s) => s.slots.reduce((n, c) => n + c.accepted, 0) === 3);
    expect(stats.slots.reduce((n, c) => n + c.accepted, 0)).toBe(3);
    expect(stats.otherNode).toBe(0);
  },
  TEST_TIMEOUT,
);

for (const [api, env] of [
  ['setupMaster (workers the user forks, adopted)', {}],
  ["listen() with routeBy 'sid'", { LISTEN_ROUTE_BY: 'sid' }],
]) {
  test(
    `${api}: workers learn the node name from their primary`,
    async () => {
      const port = await freePort();
      const fixture = startFixture('socketio-guide.js', { PORT: String(port), WORKERS: '2', STICKY_NODE: 'n7', ...env });
      await fixture.count('ready', 2);
      const ids = [];
      for (let i = 0; i < 4; i++) {
        const open = await raw(port, '/socket.io/?EIO=4&transport=polling');
        ids.push(JSON.parse(open.body.slice(open.body.indexOf('{'), open.body.lastIndexOf('}') + 1)).sid);
      }
      for (const id of ids) expect(id).toMatch(/^n7\.[A-Za-z0-9_-]{20}$/);
    },
    TEST_TIMEOUT,
  );
}
