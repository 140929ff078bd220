'use strict';
// @socket.io/sticky's API over the native router: setupMaster(httpServer, { loadBalancingMethod })
// in the primary, setupWorker(io) in each worker the user forks. Routing is by engine.io session
// id (routeBy 'sid'): each worker's ids encode its slot (src/key/sid.rs), so the primary keeps no
// session map and never reads a request body.
const cluster = require('node:cluster');
const net = require('node:net');
const internals = require('./node-internals');
const { describe } = require('./errors');
const { socketioOptions, sessionOptions } = require('./options');
const { startForServer } = require('./primary');
const { prepare, serve, prepared, sessionIdsNameSlot, current } = require('./worker');
const { log } = require('./log');
const { WORKER_INDEX, NODE_NAME, READY, noticeType } = require('./messages');
const { sessionId, sessionInUrl } = require('./sid');

/**
 * Why engine.io answered 400 "Session ID unknown" to `req` in the worker of `slot` (of node
 * `node`, if named), for its debug line: the request line was longer than the primary reads
 * before the sid (so it placed the connection as a new session), the sid names another slot or
 * node, or none at all, or this worker does not know it (an earlier worker of the slot, or forged).
 */
function unknownSessionWhy(req, slot, node, peekLimit) {
  const url = req.url || '';
  const match = /[?&]sid=([^&]*)/.exec(url);
  if (!match) return 'the request has no sid';
  // The request line as the primary peeked it: "GET " + the URL up to the end of the sid.
  const end = Buffer.byteLength(`${req.method} ${url.slice(0, match.index + match[0].length)}`);
  if (end > peekLimit) {
    return (
      `its sid ends at byte ${end} of the request line, after the ${peekLimit} bytes the primary reads (peekLimit): ` +
      'the primary could not see it and placed the connection as a new session; put sid first in the query, or raise peekLimit'
    );
  }
  const session = sessionInUrl(url);
  if (!session) return `its sid ${JSON.stringify(decodeURIComponent(match[1]))} names no worker (forged or not from sticky-rs)`;
  if (session.node !== node) return `its sid names node ${JSON.stringify(session.node)}, this is ${JSON.stringify(node)}`;
  if (session.place !== slot) {
    return `its sid names slot ${session.place}, this is slot ${slot}: the connection was placed by an earlier request on it (a keep-alive connection reused for another session), or slot ${session.place} had no ready worker`;
  }
  return "its sid names this slot, but this worker does not know it (a session of this slot's earlier worker, or a forged id)";
}

/** `listen()`'s argument forms: (port, host, backlog, cb), ({ port, host, backlog }, cb), (cb). */
function listenArgs(args) {
  const callback = typeof args[args.length - 1] === 'function' ? args.pop() : null;
  const [first, ...rest] = args;
  if (first !== null && typeof first === 'object') return { port: first.port, host: first.host, backlog: first.backlog, callback };
  const host = typeof rest[0] === 'string' ? rest.shift() : undefined;
  return { port: first, host, backlog: rest[0], callback };
}

/**
 * In the primary: `httpServer.listen(...)` starts the native router instead of Node's listener
 * ('listening', 'error', `address()` as for a normal server). Workers are the user's: every
 * `cluster.fork()` that calls setupWorker() takes a free slot. `onStart(primary)` gets the Primary
 * once listen() started it.
 */
function setupMaster(httpServer, opts, onStart = () => {}) {
  if (!cluster.isPrimary) throw new Error('sticky-rs: setupMaster() must be called in the cluster primary ("not primary")');
  const o = socketioOptions(httpServer, opts);
  let primary = null;
  // Workers forked before listen() may run setupWorker() before it: their 'ready' is kept here.
  const readyEarly = new Set();
  const watchEarly = (worker) =>
    worker.process.on('internalMessage', (message) => {
      if (!primary && noticeType(o.prefix, message) === READY) readyEarly.add(worker);
    });
  cluster.on('fork', watchEarly);
  internals.replaceListen(httpServer, function listen(...args) {
    if (primary) throw new Error('sticky-rs: this server is already listening');
    const { port, host, backlog, callback } = listenArgs(args);
    // Validated as listen() options: a bad port is a RangeError/TypeError naming it.
    const l = sessionOptions(httpServer, port === undefined ? 0 : port, { host, backlog }).listeners[0];
    if (callback) httpServer.once('listening', callback);
    cluster.removeListener('fork', watchEarly);
    primary = startForServer(httpServer, { ...o, listeners: [l], readyEarly });
    onStart(primary);
    return httpServer;
  });
}

/**
 * In a worker: session ids name this worker's slot, and `io.httpServer` is handed over (it gets
 * the connections the router sends here; it must not listen). Throws a TypeError for anything
 * but a Socket.IO server attached to a net.Server.
 */
function setupWorker(io) {
  if (!io?.engine || typeof io.engine.generateId !== 'function' || !(io.httpServer instanceof net.Server)) {
    throw new TypeError(
      `sticky-rs: setupWorker(io) needs a Socket.IO Server attached to an http.Server (new Server(httpServer)), got ${describe(io)}`,
    );
  }
  if (cluster.isPrimary) throw new Error('sticky-rs: setupWorker() must be called in a cluster worker ("not worker")');
  io.engine.generateId = () => sessionId(Number(process.env[WORKER_INDEX]), process.env[NODE_NAME]);
  // engine.io's 400 "Session ID unknown" (code 1) says nothing of why: the debug line does.
  io.engine.on('connection_error', (err) => {
    const worker = current();
    if (!worker?.options.debug || !err || err.code !== 1 || !err.req) return;
    const why = unknownSessionWhy(err.req, Number(process.env[WORKER_INDEX]), process.env[NODE_NAME] || null, worker.options.peekLimit);
    log(
      worker.role,
      `400 Session ID unknown for ${err.req.method} ${err.req.url.length > 120 ? `${err.req.url.slice(0, 120)}...` : err.req.url}: ${why}`,
    );
  });
  // A worker of sticky() or listen() (routeBy 'sid'): the server is handed over there (callback
  // or listen()), before or after this; the ids are all it needs from here.
  if (!prepared()) {
    const o = sessionOptions(io.httpServer, 0, { routeBy: 'sid' });
    if (!prepare(o, true)) return;
    serve(io.httpServer);
  }
  sessionIdsNameSlot();
}

module.exports = { setupMaster, setupWorker, sessionId };
