'use strict';
// A small chat on a sticky cluster: Express 5 + Socket.IO, one server per worker.
//
// Run with `npm start` (or `node example/server.js`). Environment:
//   PORT     port to listen on (default 8080)
//   HOST     address to bind (default: all addresses, IPv4 and IPv6)
//   WORKERS  number of workers (default: one per CPU)
//   REDIS_URL Redis to share rooms and broadcasts with other machines (e.g. redis://127.0.0.1:6379).
//            Without it, the workers of this machine share them through the primary.
//   REDIS_ADAPTER with REDIS_URL: 'streams' (default, @socket.io/redis-streams-adapter: a Redis
//            restart delays broadcasts) or 'sharded' (@socket.io/redis-adapter's sharded Pub/Sub,
//            Redis >= 7: broadcasts published while Redis is down are lost). See docs/EXAMPLE.md.
//   ROUTE_BY  'sid': by Socket.IO session (clients behind one address spread over the workers);
//            behind a proxy: 'x-forwarded-for', 'proxy-protocol' or a header name to pick the
//            worker by (sticky-rs `routeBy`; default: the TCP peer's address)
//   STICKY_NODE with ROUTE_BY=sid, this host's name among several behind one balancer (sticky-rs
//            `node`: every session id starts with `<name>.`). See README "Many machines".
//   TRUSTED_PROXIES comma-separated addresses/CIDR ranges of those proxies (sticky-rs
//            `trustedProxies`; required with a proxy's ROUTE_BY). See docs/LOAD-BALANCER.md.
//   METRICS_PORT  serve Prometheus metrics (sticky-rs's, through prom-client) on
//            http://HOST:METRICS_PORT/metrics from the primary; off by default.
//
// Every connection from one client IP reaches the same worker, so Socket.IO's long-polling
// (several HTTP requests per session) works without any shared session store. Open
// /?transport=polling to force long-polling and watch every request land on one worker.
const cluster = require('node:cluster');
const { randomUUID } = require('node:crypto');
const http = require('node:http');
const os = require('node:os');
const path = require('node:path');
const express = require('express');
const { Server } = require('socket.io');
const clusterAdapter = require('@socket.io/cluster-adapter');
const sticky = require('..');

const MAX_NAME = 32;
const MAX_ROOM = 32;
const MAX_TEXT = 500;
const DEFAULT_ROOM = 'lobby';

function positiveInt(name, fallback) {
  const raw = process.env[name];
  if (raw === undefined || raw === '') return fallback;
  const value = Number(raw);
  if (!Number.isInteger(value) || value < 1) {
    console.error(`${name} must be a positive integer, got ${JSON.stringify(raw)}`);
    process.exit(1);
  }
  return value;
}

const PORT = positiveInt('PORT', 8080);
const METRICS_PORT = positiveInt('METRICS_PORT', 0);
const HOST = process.env.HOST || undefined;
const WORKERS = positiveInt('WORKERS', os.availableParallelism());
const REDIS_URL = process.env.REDIS_URL || '';
const REDIS_ADAPTER = process.env.REDIS_ADAPTER || 'streams';
if (!['streams', 'sharded'].includes(REDIS_ADAPTER)) {
  console.error(`REDIS_ADAPTER must be 'streams' or 'sharded', got ${JSON.stringify(REDIS_ADAPTER)}`);
  process.exit(1);
}
const ADAPTER_NAME = REDIS_ADAPTER === 'sharded' ? '@socket.io/redis-adapter (sharded Pub/Sub)' : '@socket.io/redis-streams-adapter';
const ROUTE_BY = process.env.ROUTE_BY || undefined;
const STICKY_NODE = process.env.STICKY_NODE || undefined;
const TRUSTED_PROXIES = (process.env.TRUSTED_PROXIES || '')
  .split(',')
  .map((s) => s.trim())
  .filter(Boolean);
const BY_PROXY = ROUTE_BY !== undefined && !['address', 'sid'].includes(ROUTE_BY.toLowerCase());
if (BY_PROXY && TRUSTED_PROXIES.length === 0) {
  console.error(`ROUTE_BY=${JSON.stringify(ROUTE_BY)} needs TRUSTED_PROXIES (comma-separated addresses or CIDR ranges of the proxies)`);
  process.exit(1);
}

/** The URL without its password, for logs. */
function redactUrl(url) {
  try {
    const parsed = new URL(url);
    if (parsed.password) parsed.password = '***';
    return parsed.toString();
  } catch {
    return '(unparsable REDIS_URL)';
  }
}

// ---------------------------------------------------------------------------------------------
// Socket.IO adapter: how a broadcast to a room reaches the members connected to other workers.

/**
 * One machine: @socket.io/cluster-adapter relays broadcasts through the cluster primary (Node's
 * IPC channel). Several machines: @socket.io/redis-streams-adapter appends them to a Redis
 * stream that every worker of every machine reads from its last offset, so a Redis restart
 * delays broadcasts instead of dropping them; or (REDIS_ADAPTER=sharded) @socket.io/redis-adapter
 * publishes them with sharded Pub/Sub (Redis >= 7), which keeps nothing: what is published
 * while a subscriber is disconnected never reaches it (see docs/EXAMPLE.md).
 */
async function createSocketAdapter(self) {
  if (!REDIS_URL) return clusterAdapter.createAdapter();

  const { createClient } = require('redis');
  const client = watchRedis(createClient({ url: REDIS_URL }), self, 'Redis');
  if (REDIS_ADAPTER === 'sharded') {
    const { createShardedAdapter } = require('@socket.io/redis-adapter');
    // A connection in subscriber mode cannot publish: a second one for SSUBSCRIBE.
    const subscriber = watchRedis(client.duplicate(), self, 'Redis subscriber');
    // Waits (retrying) until Redis answers; connections wait in the primary meanwhile.
    await Promise.all([client.connect(), subscriber.connect()]);
    return createShardedAdapter(client, subscriber);
  }
  const { createAdapter } = require('@socket.io/redis-streams-adapter');
  await client.connect();
  return createAdapter(client);
}

/**
 * Without an 'error' listener a Redis outage would crash the worker. The client reconnects by
 * itself (back-off up to 2 s) and queues commands meanwhile; log once per outage, as `what`.
 */
function watchRedis(client, self, what) {
  let down = false;
  client.on('error', (err) => {
    if (down) return;
    down = true;
    console.error(`worker slot ${self.slot} (pid ${self.pid}): ${what} unavailable (${err.message || err.code || err}); retrying`);
  });
  client.on('ready', () => {
    if (!down) return;
    down = false;
    console.error(`worker slot ${self.slot} (pid ${self.pid}): ${what} connection restored`);
  });
  return client;
}

// ---------------------------------------------------------------------------------------------
// Worker: builds the app and hands its (not listening) server over to the cluster.

async function startWorker(callback) {
  const self = { pid: process.pid, slot: Number(process.env.stickycluster_worker_index) };

  const app = express();
  // `address`: the client as this worker sees it (with PROXY protocol, the client the proxy named).
  app.get('/health', (req, res) => res.json({ ...self, address: req.socket.remoteAddress }));
  app.use(express.static(path.join(__dirname, 'public')));

  const server = http.createServer(app);
  // Chat messages are tiny; a low cap stops one client from making a worker buffer megabytes.
  const io = new Server(server, { maxHttpBufferSize: 16 * 1024 });
  // Async start-up work (here: connecting to Redis, if used). Connections that arrive meanwhile
  // wait in the primary and are served once the server is handed over.
  // routeBy 'sid': the session ids name this worker, so the router finds it from the id alone.
  if (ROUTE_BY === 'sid') sticky.setupWorker(io);
  io.adapter(await createSocketAdapter(self));
  io.on('connection', (socket) => chat(io, socket, self));
  callback(server);
}

/** A trimmed single-line string of 1..max characters, or null for anything else. */
function cleanString(value, max) {
  if (typeof value !== 'string') return null;
  // Control characters would let a name or message fake line breaks in other people's view.
  // biome-ignore lint/suspicious/noControlCharactersInRegex: control characters are what it removes
  const text = value.replace(/[\u0000-\u001f\u007f]+/g, ' ').trim();
  return text.length > 0 && text.length <= max ? text : null;
}

function reply(ack, value) {
  // A client may emit without an ack; answering nobody must not throw.
  if (typeof ack === 'function') ack(value);
}

function chat(io, socket, self) {
  let member = null; // { name, room } once joined
  // Prefixed so a chosen room name can never be another socket's private room (its id).
  const roomKey = (room) => `room:${room}`;
  const notice = (room, text) => io.to(roomKey(room)).emit('system', { room, text, worker: self, at: Date.now() });

  // `address`: the client as this worker sees it (with PROXY protocol, the client the proxy named).
  socket.on('whoami', (ack) => reply(ack, { ...self, transport: socket.conn.transport.name, address: socket.handshake.address }));

  socket.on('join', (payload, ack) => {
    const name = cleanString(payload?.name, MAX_NAME);
    const room = cleanString(payload?.room || DEFAULT_ROOM, MAX_ROOM);
    if (!name) return reply(ack, { error: `name must be 1 to ${MAX_NAME} characters` });
    if (!room) return reply(ack, { error: `room must be 1 to ${MAX_ROOM} characters` });
    if (member) {
      socket.leave(roomKey(member.room));
      notice(member.room, `${member.name} left`);
    }
    member = { name, room };
    socket.join(roomKey(room));
    notice(room, `${name} joined`);
    reply(ack, { ok: true, name, room, worker: self });
  });

  socket.on('chat', (payload, ack) => {
    if (!member) return reply(ack, { error: 'join a room first' });
    const text = cleanString(payload?.text, MAX_TEXT);
    if (!text) return reply(ack, { error: `message must be 1 to ${MAX_TEXT} characters` });
    const message = { id: randomUUID(), from: member.name, text, room: member.room, worker: self, at: Date.now() };
    io.to(roomKey(member.room)).emit('chat', message);
    reply(ack, { ok: true, id: message.id });
  });

  socket.on('disconnect', () => {
    if (member) notice(member.room, `${member.name} left`);
  });
}

// ---------------------------------------------------------------------------------------------
// Primary (sticky() returns undefined in workers, where startWorker runs instead).

let primary;
try {
  primary = sticky(startWorker, {
    concurrency: WORKERS,
    port: PORT,
    host: HOST,
    routeBy: ROUTE_BY,
    node: STICKY_NODE,
    trustedProxies: TRUSTED_PROXIES.length > 0 ? TRUSTED_PROXIES : undefined,
    // Bounds how long Ctrl-C can wait for connections that do not close.
    hardShutdownDelay: 10_000,
    errorHandler(err) {
      console.error(`Cannot listen on ${HOST || '*'}:${PORT}: ${err.message}`);
      process.exit(1);
    },
  });
} catch (err) {
  // An invalid ROUTE_BY or TRUSTED_PROXIES entry: sticky-rs names it.
  console.error(err.message);
  process.exit(1);
}

if (cluster.isPrimary) {
  // The cluster adapter's relay in the primary; with Redis, the workers talk to Redis instead.
  if (!REDIS_URL) clusterAdapter.setupPrimary();

  const { port } = primary.address();
  const any = !HOST || HOST === '::' || HOST === '0.0.0.0';
  const host = any ? 'localhost' : HOST.includes(':') ? `[${HOST}]` : HOST;
  console.log(`Chat on http://${host}:${port} (polling only: http://${host}:${port}/?transport=polling)`);
  console.log(
    REDIS_URL
      ? `${WORKERS} worker(s), Socket.IO adapter: ${ADAPTER_NAME} (Redis ${redactUrl(REDIS_URL)}, shared by every machine using it)`
      : `${WORKERS} worker(s), Socket.IO adapter: @socket.io/cluster-adapter (through this primary, one machine)`,
  );
  if (BY_PROXY) console.log(`Routing by ${ROUTE_BY} from trusted proxies ${TRUSTED_PROXIES.join(', ')}`);
  else if (ROUTE_BY === 'sid')
    console.log(`Routing by Socket.IO session id (each response closes its connection)${STICKY_NODE ? `; node ${STICKY_NODE}` : ''}`);

  // Set on Ctrl-C: workers exiting after that are the shutdown working, not news.
  let stopping = false;
  const stop = () => {
    if (stopping) return;
    stopping = true;
    console.log('Shutting down: waiting for open connections to close...');
  };
  process.on('SIGINT', stop);
  process.on('SIGTERM', stop);

  primary.on('ready', ({ slot, worker }) => console.log(`worker ready: slot ${slot}, pid ${worker.process.pid}`));
  primary.on('exit', ({ slot, worker, code, signal }) => {
    if (!stopping) console.log(`worker exited: slot ${slot}, pid ${worker.process.pid} (${signal || `code ${code}`})`);
  });
  primary.on('respawn', ({ slot, delay }) => console.log(`restarting slot ${slot} in ${delay} ms`));

  if (METRICS_PORT) serveMetrics(primary);
}

/**
 * Prometheus metrics of the router (per slot: accepted, delivered, queued, dropped, restarts...)
 * on a port of their own, from the primary: scrapes never go through the sticky router.
 */
function serveMetrics(primary) {
  const client = require('prom-client');
  const register = sticky.prometheus(primary, { register: new client.Registry() });
  const server = http.createServer(async (req, res) => {
    if (req.url !== '/metrics') {
      res.writeHead(404).end();
      return;
    }
    res.setHeader('content-type', register.contentType);
    res.end(await register.metrics());
  });
  server.listen(METRICS_PORT, HOST, () =>
    console.log(`Metrics on http://${HOST?.includes(':') ? `[${HOST}]` : HOST || 'localhost'}:${METRICS_PORT}/metrics`),
  );
  // The metrics server must not keep the primary alive once sticky-rs shut down.
  server.unref();
}
