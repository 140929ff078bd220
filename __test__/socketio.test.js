'use strict';
// Socket.IO on sticky-rs: polling sessions (one HTTP request per packet batch, each possibly on
// a new TCP connection) and websocket upgrades must reach the worker that holds the session, or
// engine.io answers 400 "Session ID unknown" (connection_error code 1). Broadcasts go through
// @socket.io/cluster-adapter. The fixture is socketio-app.js (4 workers).
const http = require('node:http');
const stringHash = require('string-hash');
const { io } = require('socket.io-client');
const { freePort, clientIp, startFixture, stopAll, pool, clientSet } = require('./helpers');

const WORKERS = 4;
const TEST_TIMEOUT = 60000;
const STEP_TIMEOUT = 10000;

// Every client socket and agent a test opens; closed after each test, even a failed one.
const { track, closeAll } = clientSet();

// Set at a client's first failure: the clients not started yet are skipped and running ones
// stop at their next step, so a broken router fails the test in seconds, not by the timeout.
let failed = false;
beforeEach(() => {
  failed = false;
});

afterEach(async () => {
  closeAll();
  await stopAll();
});

async function start() {
  const port = await freePort();
  const fixture = startFixture('socketio-app.js', { PORT: String(port), WORKERS: String(WORKERS) });
  await fixture.next((e) => e.event === 'listening');
  await fixture.count('ready', WORKERS);
  // slot -> pid of the worker that holds it.
  const pidOfSlot = {};
  for (const e of fixture.events) if (e.event === 'ready') pidOfSlot[e.slot] = e.pid;
  return { fixture, url: `http://127.0.0.1:${port}`, pidOfSlot };
}

let reportId = 0;
/**
 * Every worker's connection_error list and handshake count, collected through the primary once
 * every worker's sessions have all closed.
 */
async function idleReport(fixture) {
  return report(fixture, true);
}

/** The same now (`idle` false) or once every session closed (`idle` true). */
async function report(fixture, idle) {
  const id = String(++reportId);
  fixture.child.stdin.write(`${idle ? 'report-idle' : 'report'} ${id}\n`);
  return whileAlive(
    fixture,
    fixture.next((e) => e.event === 'report' && e.id === id, 30000),
  );
}

/** `promise`, or an error that says so if the fixture's primary exits first. */
async function whileAlive(fixture, promise) {
  const result = await Promise.race([promise, fixture.exited.then((exit) => ({ primaryExited: exit }))]);
  if (result?.primaryExited) {
    const { code, signal } = result.primaryExited;
    throw new Error(`the fixture's primary exited (code ${code}, signal ${signal}); stderr: ${fixture.stderr}`);
  }
  return result;
}

function serverErrors(r) {
  return r.workers.flatMap((w) => w.errors.map((e) => ({ pid: w.pid, ...e })));
}

/**
 * No client saw an error. When one did, the failure also shows what the servers (their
 * connection_errors) and the router (its counters) saw at that point.
 */
async function expectNoProblems(fixture, clients) {
  const clientProblems = clients.flatMap(problems);
  if (clientProblems.length === 0) return;
  const r = await report(fixture, false);
  const stats = await whileAlive(fixture, fixture.stats());
  expect({ clientProblems, serverErrors: serverErrors(r), router: stats }).toEqual({
    clientProblems: [],
    serverErrors: [],
    router: stats,
  });
}

/** Resolves with the first of `events` that `emitter` emits, or rejects after `timeout`. */
function first(emitter, events, timeout, what) {
  return new Promise((resolve, reject) => {
    const handlers = {};
    const done = (fn, value) => {
      clearTimeout(timer);
      for (const [event, handler] of Object.entries(handlers)) emitter.off(event, handler);
      fn(value);
    };
    const timer = setTimeout(() => done(reject, new Error(`${what}: none of ${events.join(', ')} in ${timeout} ms`)), timeout);
    for (const event of events) {
      handlers[event] = (value) => done(resolve, { event, value });
      emitter.on(event, handlers[event]);
    }
  });
}

/**
 * Opens a socket.io-client from `ip` with its own agent (no multiplexing, no reconnection, so
 * a misrouted request shows up as an error instead of being retried). Resolves with the client
 * once connected; a failure is recorded in `client.failures`, never thrown.
 */
async function connect(url, ip, { agentOptions = {}, transports } = {}) {
  const agent = track(new http.Agent({ ...agentOptions, localAddress: ip }));
  const socket = track(
    io(url, {
      forceNew: true,
      reconnection: false,
      timeout: STEP_TIMEOUT,
      agent,
      ...(transports ? { transports } : {}),
    }),
  );
  const client = {
    ip,
    socket,
    agent,
    closing: false,
    connectErrors: [],
    disconnects: [],
    upgradeErrors: [],
    failures: [],
    acks: [],
    news: [],
    newsWaiters: [],
  };
  socket.on('connect_error', (err) => {
    client.connectErrors.push(err.message + describeDetails(err));
    failed = true;
  });
  socket.on('disconnect', (reason, details) => {
    if (client.closing) return;
    client.disconnects.push(reason + describeDetails(details));
    failed = true;
  });
  socket.on('news', (payload) => {
    client.news.push(payload);
    for (const w of [...client.newsWaiters]) w();
  });
  const engine = socket.io.engine;
  engine.on('upgradeError', (err) => {
    client.upgradeErrors.push(err.message);
    failed = true;
  });
  // The upgrade may complete before 'connect'; listen from the start.
  client.upgraded = new Promise((resolve) => {
    engine.once('upgrade', (t) => resolve(t.name));
    engine.once('upgradeError', (err) => resolve(`upgradeError: ${err.message}`));
  });
  try {
    // A connect_error is already in client.connectErrors.
    const { event } = await first(socket, ['connect', 'connect_error'], STEP_TIMEOUT, `connect from ${ip}`);
    if (event !== 'connect') failed = true;
  } catch (err) {
    fail(client, err.message);
  }
  return client;
}

/** What engine.io-client says about a transport error (`details` of 'disconnect'). */
function describeDetails(details) {
  if (!details) return '';
  const { description, context } = details;
  const parts = [];
  if (description !== undefined) parts.push(description instanceof Error ? description.message : String(description));
  if (context && context.status !== undefined) parts.push(`status ${context.status}`);
  if (context && typeof context.responseText === 'string' && context.responseText) parts.push(context.responseText.slice(0, 200));
  return parts.length ? ` (${parts.join(', ')})` : '';
}

function fail(client, message) {
  client.failures.push(message);
  failed = true;
}

/** Runs `fn(client)` for each ip unless an earlier client failed (then the client is skipped). */
function clientPool(ips, limit, fn) {
  return pool(ips, limit, async (ip, i) => {
    if (failed) return { ip, skipped: true, acks: [], news: [], connectErrors: [], disconnects: [], upgradeErrors: [], failures: [] };
    return fn(ip, i);
  });
}

/** `count` sequential echo acks; each answer records which worker gave it. */
async function echo(client, count) {
  for (let k = 0; k < count; k++) {
    if (failed || problems(client).length) return;
    try {
      const answer = await client.socket.timeout(STEP_TIMEOUT).emitWithAck('echo', { ip: client.ip, k });
      if (!answer?.payload || answer.payload.k !== k || answer.payload.ip !== client.ip) {
        fail(client, `ack ${k}: wrong answer ${JSON.stringify(answer)}`);
      }
      client.acks.push(answer);
    } catch (err) {
      fail(client, `ack ${k}: ${err.message}`);
    }
  }
}

/**
 * A clean disconnect: the client sends its close packets (on new connections, with this agent);
 * the agent is destroyed after the test, once the servers saw every session end. (Destroying
 * it now would abort the pending long-poll, the server would drop the session, and the close
 * packets still queued would then be answered "Session ID unknown".)
 */
function close(client) {
  if (client.skipped) return;
  client.closing = true;
  client.socket.disconnect();
}

/** Resolves once `client` has at least `n` 'news' events. */
function waitNews(client, n, timeout = STEP_TIMEOUT) {
  if (client.news.length >= n) return Promise.resolve();
  return new Promise((resolve, reject) => {
    const check = () => {
      if (client.news.length < n) return;
      client.newsWaiters.splice(client.newsWaiters.indexOf(check), 1);
      clearTimeout(timer);
      resolve();
    };
    const timer = setTimeout(() => {
      client.newsWaiters.splice(client.newsWaiters.indexOf(check), 1);
      reject(new Error(`${client.ip}: ${client.news.length} of ${n} broadcasts in ${timeout} ms: ${JSON.stringify(client.news)}`));
    }, timeout);
    client.newsWaiters.push(check);
  });
}

/** The problems of one client, for a `toEqual([])` that prints them all. */
function problems(client) {
  const out = [];
  if (client.connectErrors.length) out.push(`${client.ip} connect_error: ${client.connectErrors.join('; ')}`);
  if (client.disconnects.length) out.push(`${client.ip} disconnected: ${client.disconnects.join('; ')}`);
  if (client.upgradeErrors.length) out.push(`${client.ip} upgradeError: ${client.upgradeErrors.join('; ')}`);
  for (const f of client.failures) out.push(`${client.ip} ${f}`);
  return out;
}

/**
 * The server side, after every client disconnected: every worker answered, no connection_error
 * anywhere, every session closed.
 */
async function expectCleanServers(fixture, pidOfSlot, clientCount) {
  const r = await idleReport(fixture);
  expect(r.workers.map((w) => w.slot)).toEqual([...Array(WORKERS).keys()]);
  expect(r.workers.map((w) => w.pid)).toEqual([...Array(WORKERS).keys()].map((s) => pidOfSlot[s]));
  expect(serverErrors(r)).toEqual([]);
  // reconnection is off: exactly one engine.io handshake per client, none repeated.
  expect(r.workers.reduce((n, w) => n + w.handshakes, 0)).toBe(clientCount);
  for (const w of r.workers) expect(w.handshakes).toBeGreaterThan(0);
  expect(r.workers.map((w) => w.clients)).toEqual(Array(WORKERS).fill(0));
  return r;
}

/** Router counters: nothing dropped, redelivered or failed; returns connections accepted. */
async function expectCleanRouter(fixture) {
  const stats = await whileAlive(fixture, fixture.stats());
  expect(stats.acceptErrors).toBe(0);
  for (const s of stats.slots) {
    expect(s.dropped).toBe(0);
    expect(s.redelivered).toBe(0);
    expect(s.accepted).toBeGreaterThan(0);
  }
  return stats.slots.reduce((n, s) => n + s.accepted, 0);
}

/**
 * Each client stayed on one worker for all its acks, that worker is the one djb2(address) %
 * workers names, the server saw the client's own address, and every worker had clients.
 * Returns pid -> client count.
 */
function expectSticky(clients, pidOfSlot) {
  const perPid = {};
  for (const c of clients) {
    const pids = [...new Set(c.acks.map((a) => a.pid))];
    expect({ ip: c.ip, pids }).toEqual({ ip: c.ip, pids: [expect.any(Number)] });
    const { pid, slot, address } = c.acks[0];
    expect({ ip: c.ip, address: address.replace(/^::ffff:/, '') }).toEqual({ ip: c.ip, address: c.ip });
    expect({ ip: c.ip, slot, pid }).toEqual({ ip: c.ip, slot: stringHash(address) % WORKERS, pid: pidOfSlot[slot] });
    perPid[pid] = (perPid[pid] || 0) + 1;
  }
  expect(Object.keys(perPid).map(Number).sort()).toEqual(Object.values(pidOfSlot).sort());
  return perPid;
}

/** Tests 1 and 2: many polling-only clients, each a handshake and ACKS acks. */
async function pollingRun(agentOptions) {
  const CLIENTS = 100;
  const ACKS = 10;
  const { fixture, url, pidOfSlot } = await start();
  const ips = Array.from({ length: CLIENTS }, (_, i) => clientIp(i));
  const clients = await clientPool(ips, 16, async (ip) => {
    const client = await connect(url, ip, { agentOptions, transports: ['polling'] });
    if (client.socket.connected) await echo(client, ACKS);
    // Asserted later so that one failure does not hide the others.
    client.transports = client.acks.map((a) => a.transport);
    close(client);
    return client;
  });

  await expectNoProblems(fixture, clients);
  expect(clients.map((c) => c.acks.length)).toEqual(Array(CLIENTS).fill(ACKS));
  expect([...new Set(clients.flatMap((c) => c.transports))]).toEqual(['polling']);
  const perPid = expectSticky(clients, pidOfSlot);
  const r = await expectCleanServers(fixture, pidOfSlot, CLIENTS);
  // The server's handshakes per worker match the clients the acks say each worker served.
  expect(Object.fromEntries(r.workers.map((w) => [w.pid, w.handshakes]))).toEqual(perPid);
  const accepted = await expectCleanRouter(fixture);
  return { accepted, requests: CLIENTS * ACKS };
}

describe('Socket.IO on 4 workers with @socket.io/cluster-adapter', () => {
  test(
    '100 polling clients without keep-alive: every request on a new connection, all on the right worker',
    async () => {
      const { accepted, requests } = await pollingRun({ keepAlive: false });
      // Without keep-alive each ack needs at least one new TCP connection (its POST), each of
      // which went through the router on its own.
      expect(accepted).toBeGreaterThanOrEqual(requests);
    },
    TEST_TIMEOUT,
  );

  test(
    '100 polling clients with a keep-alive agent',
    async () => {
      const { accepted, requests } = await pollingRun({ keepAlive: true });
      // The agent did reuse connections (otherwise this would repeat the first test).
      expect(accepted).toBeLessThan(requests);
    },
    TEST_TIMEOUT,
  );

  test(
    '24 clients upgrade from polling to websocket and keep working',
    async () => {
      const CLIENTS = 24;
      const ACKS = 10;
      const { fixture, url, pidOfSlot } = await start();
      const ips = Array.from({ length: CLIENTS }, (_, i) => clientIp(500 + i));
      const clients = await clientPool(ips, 8, async (ip) => {
        // Default transports: polling first, then the websocket probe on a new connection.
        const client = await connect(url, ip, { agentOptions: { keepAlive: false } });
        if (client.socket.connected) {
          // One ack before the upgrade may be done, to see the worker that holds the session.
          await echo(client, 1);
          const engine = client.socket.io.engine;
          if (engine.transport.name !== 'websocket') {
            const name = await Promise.race([
              client.upgraded,
              new Promise((resolve) => setTimeout(() => resolve('timeout'), STEP_TIMEOUT).unref()),
            ]);
            if (name !== 'websocket') fail(client, `no upgrade to websocket: ${name}`);
          }
          client.transport = engine.transport.name;
          await echo(client, ACKS);
        }
        close(client);
        return client;
      });

      await expectNoProblems(fixture, clients);
      expect(clients.map((c) => c.transport)).toEqual(Array(CLIENTS).fill('websocket'));
      expect(clients.map((c) => c.acks.length)).toEqual(Array(CLIENTS).fill(1 + ACKS));
      // The server saw the acks after the upgrade over the websocket, too (the first one may
      // have gone over polling).
      expect([...new Set(clients.flatMap((c) => c.acks.slice(1).map((a) => a.transport)))]).toEqual(['websocket']);
      // One worker per client, before and after the upgrade.
      expectSticky(clients, pidOfSlot);
      await expectCleanServers(fixture, pidOfSlot, CLIENTS);
      await expectCleanRouter(fixture);
    },
    TEST_TIMEOUT,
  );

  test(
    'a broadcast through the cluster adapter reaches every client on every worker exactly once',
    async () => {
      const CLIENTS = 40;
      const { fixture, url, pidOfSlot } = await start();
      const ips = Array.from({ length: CLIENTS }, (_, i) => clientIp(1000 + i));
      // Half polling-only (keep-alive agent), half upgrading to websocket.
      const clients = await clientPool(ips, 8, async (ip, i) => {
        const client =
          i % 2 === 0
            ? await connect(url, ip, { agentOptions: { keepAlive: true }, transports: ['polling'] })
            : await connect(url, ip, { agentOptions: { keepAlive: false } });
        if (client.socket.connected) await echo(client, 1);
        return client;
      });
      await expectNoProblems(fixture, clients);
      expect(clients.map((c) => c.acks.length)).toEqual(Array(CLIENTS).fill(1));
      const perPid = expectSticky(clients, pidOfSlot);
      expect(Object.keys(perPid)).toHaveLength(WORKERS);

      // The first broadcast comes from one worker, the second (the sentinel) from another: a
      // duplicate of the first would arrive before the second on the same IPC path.
      const a = clients[0];
      const b = clients.find((c) => c.acks[0].pid !== a.acks[0].pid);
      const pidA = a.acks[0].pid;
      const pidB = b.acks[0].pid;

      const shoutA = await a.socket.timeout(STEP_TIMEOUT).emitWithAck('shout', { seq: 1 });
      expect(shoutA.pid).toBe(pidA);
      await Promise.all(clients.map((c) => waitNews(c, 1)));
      const shoutB = await b.socket.timeout(STEP_TIMEOUT).emitWithAck('shout', { seq: 2 });
      expect(shoutB.pid).toBe(pidB);
      await Promise.all(clients.map((c) => waitNews(c, 2)));

      const expected = [
        { seq: 1, from: pidA },
        { seq: 2, from: pidB },
      ];
      expect(clients.map((c) => ({ ip: c.ip, news: c.news }))).toEqual(clients.map((c) => ({ ip: c.ip, news: expected })));
      await expectNoProblems(fixture, clients);
      // Still connected, and still on the same worker.
      await pool(clients, 8, (c) => echo(c, 1));
      await expectNoProblems(fixture, clients);
      expectSticky(clients, pidOfSlot);
      for (const c of clients) close(c);
      await expectCleanServers(fixture, pidOfSlot, CLIENTS);
      await expectCleanRouter(fixture);
    },
    TEST_TIMEOUT,
  );
});
