'use strict';
// @socket.io/sticky's API (setupMaster/setupWorker) and routeBy 'sid'. The fixture is Socket.IO's
// own cluster guide for @socket.io/sticky with only the require line changed
// (fixtures/socketio-guide.js): the user's primary forks and re-forks its workers, sticky-rs
// adopts them. Sessions are routed by their engine.io id, so clients behind one address spread.
const http = require('node:http');
const net = require('node:net');
const { io } = require('socket.io-client');
const { freePort, clientIp, startFixture, stopAll, pool, clientSet } = require('./helpers');

const TEST_TIMEOUT = 90000;
const { track, closeAll } = clientSet();

afterEach(async () => {
  closeAll();
  await stopAll();
});

async function start(env) {
  const port = await freePort();
  const workers = Number(env.WORKERS || 4);
  const fixture = startFixture('socketio-guide.js', { PORT: String(port), WORKERS: String(workers), ...env });
  await fixture.count('ready', workers);
  return { fixture, url: `http://127.0.0.1:${port}`, port };
}

/** A connected socket.io client from `ip` (its own keep-alive agent unless `agent` is false). */
function connect(url, ip, options = {}) {
  const agent = track(new http.Agent({ keepAlive: true, localAddress: ip }));
  const socket = track(io(url, { agent, forceNew: true, reconnectionDelay: 100, ...options }));
  socket.errors = [];
  socket.on('connect_error', (err) => socket.errors.push(err.message));
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`client from ${ip}: not connected in 15 s (${socket.errors.join('; ')})`)), 15000);
    socket.once('connect', () => {
      clearTimeout(timer);
      resolve(socket);
    });
  });
}

function connectionErrors(fixture) {
  return fixture.events.filter((e) => e.event === 'connection_error');
}

describe('bad input', () => {
  const sticky = require('..');
  const { Server } = require('socket.io');

  test('setupWorker with something that is not a Socket.IO server: a TypeError naming it', () => {
    expect(() => sticky.setupWorker({})).toThrow(/setupWorker\(io\) needs a Socket\.IO Server .*got an object of class Object/);
    expect(() => sticky.setupWorker(http.createServer())).toThrow(/got an object of class Server/);
    expect(() => sticky.setupWorker()).toThrow(/got undefined/);
    expect(() => sticky.setupWorker(new Server())).toThrow(/got an object of class Server/);
  });

  test('setupWorker in the primary throws, as @socket.io/sticky does', () => {
    const io = new Server(http.createServer());
    try {
      expect(() => sticky.setupWorker(io)).toThrow(/must be called in a cluster worker/);
    } finally {
      io.close();
    }
  });

  test('setupMaster: bad server or options, before anything listens', () => {
    expect(() => sticky.setupMaster(null)).toThrow(/setupMaster\(\) needs the primary's http.Server, got null/);
    expect(() => sticky.setupMaster(http.createServer(), { loadBalancingMethod: 'fastest' })).toThrow(
      /"loadBalancingMethod" must be one of 'least-connection', 'round-robin', 'random', got "fastest"/,
    );
    expect(() => sticky.setupMaster(http.createServer(), { routeBy: 'address' })).toThrow(/routes by Socket.IO session/);
    expect(() => sticky.setupMaster(http.createServer(), { workers: 4 })).toThrow(/unknown option "workers"/);
  });

  test("the primary's httpServer.listen() on a busy port: 'error' EADDRINUSE, as Node's listener", async () => {
    const busy = net.createServer();
    await new Promise((resolve) => busy.listen(0, '127.0.0.1', resolve));
    try {
      const httpServer = http.createServer();
      sticky.setupMaster(httpServer);
      const err = await new Promise((resolve) => {
        httpServer.once('error', resolve);
        httpServer.listen(busy.address().port, '127.0.0.1');
      });
      expect(err.code).toBe('EADDRINUSE');
      expect(httpServer.address()).toBe(null);
    } finally {
      busy.close();
    }
  });

  test("loadBalancingMethod without routeBy 'sid' has no effect: refused", () => {
    const server = http.createServer();
    expect(() => sticky.listen(server, 0, { loadBalancingMethod: 'random' })).toThrow(
      /only places new Socket.IO sessions with "routeBy": 'sid'/,
    );
  });
});

test(
  'the guide code, require line changed: 100 polling clients x 10 acks, a broadcast reaches each once, an upgrade run',
  async () => {
    const { fixture, url } = await start({});
    const clients = await pool([...Array(100).keys()], 25, (i) => connect(url, clientIp(i), { transports: ['polling'] }));
    await pool(clients, 25, async (socket, i) => {
      for (let k = 0; k < 10; k++) {
        const token = `${i}:${k}`;
        expect(await socket.timeout(10000).emitWithAck('echo', token)).toBe(token);
      }
    });
    // The cluster adapter: one broadcast from one worker reaches every client of every worker once.
    const received = new Map(clients.map((s) => [s, 0]));
    const all = Promise.all(
      clients.map(
        (s) =>
          new Promise((resolve) =>
            s.on('news', () => {
              received.set(s, received.get(s) + 1);
              resolve();
            }),
          ),
      ),
    );
    clients[0].emit('broadcast', 'hello');
    await all;
    await new Promise((r) => setTimeout(r, 300)); // a duplicate would arrive within this
    expect([...received.values()].every((n) => n === 1)).toBe(true);
    const pids = new Set(await Promise.all(clients.map((s) => s.emitWithAck('pid'))));
    expect(pids.size).toBe(4);
    // Polling then websocket upgrade (the default transports), without a keep-alive agent.
    const upgraded = await pool([...Array(40).keys()], 20, async (i) => {
      const socket = await connect(url, clientIp(200 + i));
      if (socket.io.engine.transport.name !== 'websocket') {
        await new Promise((resolve) => socket.io.engine.once('upgrade', resolve));
      }
      expect(await socket.timeout(10000).emitWithAck('echo', i)).toBe(i);
      return socket;
    });
    expect(upgraded.every((s) => s.io.engine.transport.name === 'websocket')).toBe(true);
    expect(clients.concat(upgraded).flatMap((s) => s.errors)).toEqual([]);
    expect(connectionErrors(fixture)).toEqual([]);
  },
  TEST_TIMEOUT,
);

test(
  "a worker killed and re-forked by the user's own 'exit' handler: its clients reconnect, nobody else's session breaks",
  async () => {
    const { fixture, url } = await start({});
    const clients = await pool([...Array(40).keys()], 20, (i) => connect(url, clientIp(i), { transports: ['polling'] }));
    const pidOf = new Map();
    for (const s of clients) pidOf.set(s, await s.emitWithAck('pid'));
    const victim = pidOf.get(clients[0]);
    const disconnected = new Set();
    for (const s of clients) s.on('disconnect', () => disconnected.add(s));
    process.kill(victim, 'SIGKILL');
    // The user's handler forks a replacement, which takes the free place.
    await fixture.count('ready', 5, 20000);
    const mine = clients.filter((s) => pidOf.get(s) === victim);
    const others = clients.filter((s) => pidOf.get(s) !== victim);
    expect(mine.length).toBeGreaterThan(0);
    // Its clients reconnect (a new session, on a live worker) and work.
    for (const s of mine) {
      if (
        !s.connected ||
        (await s
          .timeout(5000)
          .emitWithAck('pid')
          .catch(() => victim)) === victim
      ) {
        await new Promise((resolve) => s.once('connect', resolve));
      }
      expect(await s.timeout(10000).emitWithAck('echo', 'back')).toBe('back');
    }
    for (const s of others) {
      expect(await s.timeout(10000).emitWithAck('pid')).toBe(pidOf.get(s));
    }
    expect(others.filter((s) => disconnected.has(s))).toEqual([]);
  },
  TEST_TIMEOUT,
);

describe('NAT: 200 clients from one address over 4 workers', () => {
  async function sessionsPerWorker(env) {
    const { fixture, url } = await start(env);
    const clients = await pool([...Array(200).keys()], 25, () => connect(url, '127.0.0.1', { transports: ['polling'] }));
    const counts = new Map();
    for (const s of clients) {
      const pid = await s.timeout(10000).emitWithAck('pid');
      counts.set(pid, (counts.get(pid) || 0) + 1);
    }
    expect(connectionErrors(fixture)).toEqual([]);
    return [...counts.values()];
  }

  for (const lb of ['least-connection', 'round-robin']) {
    test(
      `${lb}: every worker holds 15%-35% of the sessions`,
      async () => {
        const counts = await sessionsPerWorker({ LB: lb });
        expect(counts.length).toBe(4);
        for (const n of counts) {
          expect(n).toBeGreaterThanOrEqual(30);
          expect(n).toBeLessThanOrEqual(70);
        }
      },
      TEST_TIMEOUT,
    );
  }

  test(
    "routeBy 'address' (the contrast): all 200 on one worker",
    async () => {
      const counts = await sessionsPerWorker({ LISTEN_ROUTE_BY: 'address' });
      expect(counts).toEqual([200]);
    },
    TEST_TIMEOUT,
  );

  test(
    'workers forked, and set up, before httpServer.listen(): adopted all the same',
    async () => {
      const counts = await sessionsPerWorker({ FORK_FIRST: '1', LB: 'round-robin' });
      expect(counts.length).toBe(4);
    },
    TEST_TIMEOUT,
  );

  test(
    "listen() with routeBy 'sid' (sticky-rs forks) and setupWorker(io): spread too",
    async () => {
      const counts = await sessionsPerWorker({ LISTEN_ROUTE_BY: 'sid' });
      expect(counts.length).toBe(4);
      for (const n of counts) {
        expect(n).toBeGreaterThanOrEqual(30);
        expect(n).toBeLessThanOrEqual(70);
      }
    },
    TEST_TIMEOUT,
  );
});

test(
  'forged and stale sids: no crash, no descriptor growth, each a new session',
  async () => {
    const { fixture, port } = await start({ WORKERS: '2' });
    const request = (path) =>
      new Promise((resolve, reject) => {
        const req = http.get({ host: '127.0.0.1', port, path, agent: false }, (res) => {
          res.resume();
          res.on('end', () => resolve(res.statusCode));
        });
        req.setTimeout(10000, () => req.destroy(new Error(`${path}: no answer`)));
        req.on('error', reject);
      });
    // A stale id: another worker's session, after that worker died (its place is taken again).
    const old = await connect(`http://127.0.0.1:${port}`, '127.0.0.1', { transports: ['polling'], reconnection: false });
    const staleSid = old.io.engine.id;
    process.kill(await old.emitWithAck('pid'), 'SIGKILL');
    await fixture.count('ready', 3, 20000);
    const before = fixture.fdCount();
    const alphabet = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_';
    const randomSid = () => Array.from({ length: 20 }, () => alphabet[Math.floor(Math.random() * 64)]).join('');
    const forged = [
      'unknown',
      'x'.repeat(5000),
      `${'A'.repeat(20)}`,
      `_${'_'.repeat(19)}`,
      '%ZZ',
      `${'A'.repeat(21)}`,
      staleSid,
      ...Array.from({ length: 10000 }, randomSid),
    ];
    const statuses = await pool(forged, 50, (sid) => request(`/socket.io/?EIO=4&transport=polling&sid=${sid}`));
    // engine.io refuses an unknown session with 400; nothing hangs, nothing crashes.
    expect([...new Set(statuses)]).toEqual([400]);
    // A sid from a request line cut by FIN, and a connection that sends nothing and closes.
    for (const bytes of ['GET /socket.io/?EIO=4&sid=AAAA', '']) {
      await new Promise((resolve) => {
        const c = net.connect(port, '127.0.0.1', () => c.end(bytes));
        c.on('close', resolve);
        c.on('error', resolve);
        c.resume();
      });
    }
    // A real session still works on both workers.
    const s = await connect(`http://127.0.0.1:${port}`, '127.0.0.1', { transports: ['polling'] });
    expect(await s.timeout(10000).emitWithAck('echo', 1)).toBe(1);
    s.disconnect();
    await fixture.next(() => true); // the primary is alive
    expect(fixture.child.exitCode).toBe(null);
    await new Promise((r) => setTimeout(r, 500));
    expect(fixture.fdCount()).toBeLessThanOrEqual(before + 2);
  },
  TEST_TIMEOUT,
);
