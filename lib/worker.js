'use strict';
// The worker: once the user's server is handed over, asks the primary for its channel, then
// adopts each connection that arrives on it as a 'connection' event on that server.
const cluster = require('node:cluster');
const fs = require('node:fs');
const net = require('node:net');
const { native } = require('./binding');
const { log, Warnings } = require('./log');
const { sessionInUrl } = require('./sid');
const { startedOnTerminal, terminalAlive, ignoreDeadTerminal, exitHungUp } = require('./terminal');
const { READY, CHANNEL, LISTEN, PLACE, SHUTDOWN, CLOSING, STOPPING, OPEN, WORKER_INDEX, NODE_NAME, PRIMARY_PID, INTERNAL, FAILED, notifyPrimary } = require('./messages');

let state = null;

// Kernel dispatch: how often at most this worker reports the connections it accepted itself (the
// primary counts them per slot); rarely enough that the primary stays off the connection path.
const ACCEPTED_REPORT_EVERY = 100;
// A shutting-down worker tells the primary how many connections it still has this late.
const OPEN_REPORT_AFTER = 300;
// A full channel (the primary is busy): when to try the waiting reports again.
const FLUSH_RETRY = 10;
// Connections that came through the channel (the primary counted them already).
const viaChannel = new WeakSet();

/**
 * Until this worker is ready, an uncaught error (a ReferenceError at load, a leftover listen(),
 * a rejected async start-up) goes to the primary, which prints each distinct one once rather than
 * once per respawn, and the worker exits 1 as Node would. Unless the app handles uncaught errors
 * itself. Set when sticky-rs is loaded in a worker it forked.
 */
function failedAtStart(err) {
  if (process.listenerCount('uncaughtException') > 1) return;
  const error = err instanceof Error && err.stack ? err.stack : `Uncaught ${String(err)}`;
  const exit = () => process.exit(1);
  // Said here if the primary cannot say it (its channel is gone).
  const fallback = () => {
    process.stderr.write(`${error}\n`);
    exit();
  };
  setTimeout(fallback, 1000);
  try {
    process.send({ cmd: INTERNAL, type: FAILED, error: error.slice(0, 8000) }, (err) => (err ? fallback() : exit()));
  } catch {
    fallback();
  }
}
if (cluster.isWorker && process.env[WORKER_INDEX] !== undefined) process.on('uncaughtException', failedAtStart);

function describe(value) {
  return value === null || typeof value !== 'object' ? String(value) : value.constructor.name;
}

/**
 * Sets the worker up before the user's start-up code runs, so a shutdown that arrives during
 * async start-up is not missed. Returns false in a worker sticky-rs did not fork (a leftover
 * `cluster.fork()` in the user's primary): it gets no connections, so the app should not start
 * there; the primary has said so, and ends it at shutdown.
 */
function prepare(options, adopted = false) {
  // setupWorker() in a worker the user forked: a sticky-rs primary (setupMaster) adopts it.
  const ours = process.env[WORKER_INDEX] !== undefined || (adopted && process.env[PRIMARY_PID] !== undefined);
  if (!ours) {
    if (process.env[PRIMARY_PID] === undefined) refuse(notOurCluster());
    return false;
  }
  if (state) return true;
  state = {
    options,
    role: roleOf(),
    servers: null,
    receiver: null,
    // The channel, if it came before the servers were handed over (a worker may tell the
    // primary it is ready early; the channel then waits here for serve()).
    early: null,
    // Kernel dispatch: this worker listens on its slot's member of each listener's group (the
    // kernel picks the slot); members that came before the hand-over wait here.
    kernel: process.env.STICKY_RS_DISPATCH === 'kernel',
    earlyMembers: [],
    kept: [], // member handles still accepting during a shutdown, see keepAccepting()
    sockets: new Set(),
    closing: false, // the user closed a server (sticky-session): the primary replaces us
    shuttingDown: false,
    onSocketClosed: null,
    holding: null, // test-only, see holdsBeforeAck()
    // Counts for the primary: connections accepted here (kernel dispatch), and adopted ones
    // that closed (routeBy 'sid', for least-connection).
    accepted: new Tally('accepted', ACCEPTED_REPORT_EVERY),
    closed: new Tally('closed', 0),
    flushTimer: null,
    warnings: new Warnings(),
    sessionIdsNameSlot: false, // setupWorker(io) ran: engine.io ids name this slot
    warningsTimer: null,
  };
  process.on('message', onMessage);
  process.on('disconnect', closeReceiver);
  // However it exits (a user's `server.close(() => process.exit())`, our own shutdown), the
  // counts not yet reported go first: sending is synchronous.
  process.on('exit', reportNow);
  // SIGHUP means "reload" to the primary, which replaces this worker gracefully; a terminal
  // sends it to the whole process group. A terminal that hung up: the primary shuts down, and
  // this worker must neither die writing to it (EIO) nor abort at exit (see exitHungUp).
  const onTerminal = startedOnTerminal();
  process.on('SIGHUP', () => {
    if (!onTerminal || state.hungUp || terminalAlive()) return;
    state.hungUp = true;
    ignoreDeadTerminal();
  });
  return true;
}

function roleOf() {
  const slot = process.env[WORKER_INDEX];
  return `worker #${cluster.worker.id}${slot === undefined ? '' : ` of slot ${slot}`} (pid ${process.pid})`;
}

/** setupWorker(io) ran: this worker's Socket.IO session ids name its slot. */
function sessionIdsNameSlot() {
  state.sessionIdsNameSlot = true;
}

/** Whether sticky()/listen() (or an earlier setupWorker) set this worker up already. */
function prepared() {
  return state !== null;
}

/** This worker's options and the name its debug lines carry, once prepared; else null. */
function current() {
  return state && { options: state.options, role: state.role };
}

/**
 * Ends a worker that cannot work: says why, starts nothing, exits with 1. Not a throw: PM2 loses
 * what a process writes just before it dies of an exception at start-up; its log gets this line.
 */
function refuse(message) {
  console.error(message);
  setTimeout(() => process.exit(1), 500);
}

/** Why a cluster worker whose primary does not run sticky-rs cannot work, and what to do. */
function notOurCluster() {
  if (process.env.exec_mode === 'cluster_mode' && process.env.pm_id !== undefined) {
    return 'sticky-rs: started by PM2 in cluster mode (pm2 start -i N, or exec_mode: "cluster"): PM2 is then the ' +
      'cluster primary and balances connections itself, so they cannot be sticky. Run one instance in fork mode ' +
      '(pm2 start app.js, or exec_mode: "fork", instances: 1): sticky-rs then forks the workers ' +
      '(the concurrency/workers option) and routes every client to its own.';
  }
  return 'sticky-rs: this process is a cluster worker, but its primary does not run sticky-rs: sticky() and ' +
    'listen() must be called in the cluster primary too (they fork the workers themselves); remove your own cluster.fork() code.';
}

// What a leftover listen() call does in a worker, and the fix.
const LISTEN_TRAP =
  'in a cluster worker, listen() opens an extra listener in the primary that round-robins connections, ' +
  'which is not sticky. Delete the listen() call (an Express app: replace app.listen(...) with http.createServer(app)); ' +
  'sticky-rs listens in the primary for you';

/** Whether `server.listen()` was called, even while a worker's listen is still on its way. */
function listenCalled(server) {
  // Node counts listen() calls in _listeningId (1 before the first); a worker's listen is
  // asynchronous (it asks the primary), so `listening` is still false right after it.
  return server.listening || (typeof server._listeningId === 'number' && server._listeningId > 1);
}

/**
 * Hands the servers over, one per listener of the primary, in the same order: from now on they
 * get this worker's connections. Once per worker.
 */
function serve(...servers) {
  if (servers.length === 0) throw new TypeError('sticky-rs: the worker must hand over a server');
  for (const server of servers) {
    if (!(server instanceof net.Server)) {
      throw new TypeError(`sticky-rs: the worker must hand over a net.Server (http, https, ...), got ${describe(server)}`);
    }
    if (listenCalled(server)) {
      throw new Error(`sticky-rs: the server handed over must not listen, but listen() was called on it: ${LISTEN_TRAP}`);
    }
  }
  if (state.servers) throw new Error('sticky-rs: servers were already handed over in this worker');
  if (state.shuttingDown) return;
  state.servers = servers;
  for (const server of servers) {
    // Every connection is tracked for the graceful shutdown, however it came: adopted from the
    // channel, or accepted by the server itself on its member (kernel dispatch). First, so that
    // a throwing user listener cannot skip it.
    server.prependListener('connection', track);
    if (state.options.routeBy === 'sid') closeAfterEachResponse(server);
    server.listen = () => {
      throw new Error(`sticky-rs: this server was handed over to sticky-rs and must not listen: ${LISTEN_TRAP}`);
    };
    // http.Server sets up its request timeouts and idle-connection tracking on 'listening';
    // with kernel dispatch the server really listens (on its member) and emits it itself.
    if (!state.kernel) server.emit('listening');
    // sticky-session semantics: closing the server retires this worker; the primary sends new
    // connections to a replacement and lets this one finish.
    const close = server.close;
    let closed = false;
    server.close = function closeAndRetire(...args) {
      if (!state.shuttingDown && !state.closing) {
        state.closing = true;
        notifyPrimary(state.options.prefix, CLOSING);
        // Kernel dispatch: this worker takes no new connection on any listener from now on (its
        // other servers keep the connections they have), as the router stops sending it any.
        for (const other of state.servers) if (other !== this) stopListening(other);
      }
      // Once: a second close would emit 'close' (and engine.io's close) again.
      if (closed) return this;
      closed = true;
      return sparingFresh(() => close.apply(this, args));
    };
  }
  // Ctrl-C reaches every process of the group: finish what is open rather than die mid-request.
  process.once('SIGINT', () => shutdown(true));
  process.once('SIGTERM', () => shutdown(true));
  for (const [listener, handle] of state.earlyMembers.splice(0)) listenOn(listener, handle);
  if (state.early) {
    const early = state.early;
    state.early = null;
    openChannel(early);
    return;
  }
  notifyPrimary(state.options.prefix, READY);
  if (state.options.debug) log(state.role, 'server handed over, waiting for the channel');
}

function onMessage(message, handle) {
  const { prefix } = state.options;
  if (message === prefix + CHANNEL && handle && !state.receiver) {
    if (state.servers) openChannel(handle);
    else if (!state.early && !state.shuttingDown) state.early = handle;
    else handle.destroy();
  } else if (typeof message === 'string' && message.startsWith(prefix + LISTEN) && handle) {
    const listener = Number(message.slice(prefix.length + LISTEN.length));
    if (state.servers) listenOn(listener, handle);
    else if (!state.shuttingDown) state.earlyMembers.push([listener, handle]);
    else handle.close();
  } else if (typeof message === 'string' && message.startsWith(prefix + PLACE)) {
    // Adopted (setupMaster): the slot this worker serves (and the node), which its session ids encode.
    const [slot, node] = message.slice(prefix.length + PLACE.length).split('.');
    process.env[WORKER_INDEX] = slot;
    if (node) process.env[NODE_NAME] = node;
    state.role = roleOf();
  } else if (message === prefix + SHUTDOWN) {
    shutdown();
    // The primary's word ends what a signal kept going: its slot has nothing more queued.
    closeKept();
  }
}

/**
 * Kernel dispatch: takes `server`'s listening handle (its copy of the slot's member) away from it,
 * so the server no longer listens; null if it has none. The primary keeps the member itself
 * listening for the slot's next worker.
 */
function takeListener(server) {
  const handle = server._handle;
  if (!state.kernel || !handle) return null;
  server._handle = null;
  return handle;
}

/**
 * `server` stops accepting but is not closed: its connections go on, and its 'close' comes with
 * the graceful shutdown.
 */
function stopListening(server) {
  const handle = takeListener(server);
  if (handle) handle.close();
}

/**
 * Kernel dispatch, a shutdown this worker's own signal started (Ctrl-C reaches every process of
 * the group): `server` closes (its 'close' comes at once: Socket.IO ends its clients), but its
 * member's handle goes on accepting, into the closed server, what the kernel queued for the slot
 * (the primary stops new SYNs meanwhile), as adopted connections go on arriving with the router.
 * Closed when the worker exits, or when the primary sends `shutdown`: the slot drained, or (a
 * signal to this worker alone) its replacement is ready.
 */
function keepAccepting(server) {
  const handle = takeListener(server);
  if (!handle) return;
  // Once the primary stops the member, an accept error is the end of it, not the server's.
  const onconnection = handle.onconnection;
  handle.onconnection = function acceptKept(err, client) {
    if (!err) onconnection.call(this, err, client);
  };
  state.kept.push(handle);
}

function closeKept() {
  for (const handle of state.kept.splice(0)) handle.close();
}

/**
 * Kernel dispatch: server `listener` listens on `handle`, its slot's member of that listener's
 * group, and accepts what the kernel steers there (Node's exclusive path for a TCP handle, so
 * the cluster primary never sees these connections).
 */
function listenOn(listener, handle) {
  const server = state.servers[listener];
  if (!server || state.shuttingDown || server.listening) {
    handle.close();
    if (!server) log(state.role, `the primary passed listener ${listener}, but only ${state.servers.length} server(s) were handed over`);
    return;
  }
  net.Server.prototype.listen.call(server, handle, state.options.listeners[listener].backlog);
}

/** Starts receiving connections on the channel `handle` and says hello: the slot switches here. */
function openChannel(handle) {
  // A worker on its way out says no hello: the slot must not switch to it.
  if (state.shuttingDown) {
    handle.destroy();
    return;
  }
  // Node keeps the descriptor of a received handle on its internal `_handle`.
  const fd = handle._handle && handle._handle.fd;
  if (typeof fd !== 'number' || fd < 0) {
    handle.destroy();
    log(state.role, 'this Node.js version does not expose the descriptor of a received handle; cannot receive connections');
    process.exit(1);
  }
  try {
    state.receiver = new native.Receiver(fd, adopt);
  } finally {
    // The receiver holds its own copy; Node's must go before anything is sent on it.
    handle.destroy();
  }
  send('hello');
  // Ready: from now on an uncaught error is Node's (or the app's) to report.
  process.removeListener('uncaughtException', failedAtStart);
  // What this server accepted on its members before the channel came.
  state.accepted.report();
  if (state.options.debug) log(state.role, 'channel open, ready for connections');
}

/**
 * Test-only hook (never set it in production): with STICKY_RS_TEST_HOLD_BEFORE_ACK=<path>, the
 * first worker to receive connections creates <path> with its pid in it and from then on neither
 * acknowledges nor serves anything it gets, as a worker dying mid-adoption would; a test then
 * kills it and checks that the primary gives those connections to its replacement. A worker that
 * finds <path> already there behaves normally. The held descriptors stay open until it dies.
 */
function holdsBeforeAck() {
  const marker = process.env.STICKY_RS_TEST_HOLD_BEFORE_ACK;
  if (!marker) return false;
  if (state.holding === null) {
    try {
      fs.writeFileSync(marker, String(process.pid), { flag: 'wx' });
      state.holding = true;
    } catch {
      state.holding = false;
    }
  }
  return state.holding;
}

function adopt(incoming, lost, error) {
  const { servers, options } = state;
  if (error) {
    // Never stall silently: without its channel this worker gets no connection again. It
    // finishes what it has and exits; the primary forks a replacement for the slot.
    log(state.role, `the connection channel failed (${error}); finishing open connections and exiting so the primary replaces this worker`);
    shutdown();
    return;
  }
  if (!state.receiver) {
    // The receiver is closed: the primary still has these and gives them to another worker.
    for (const { fd } of incoming) fs.closeSync(fd);
    return;
  }
  if (holdsBeforeAck()) return;
  const adopted = [];
  for (const { fd, listener, address, family, port } of incoming) {
    let socket;
    try {
      socket = new net.Socket({ fd, readable: true, writable: true });
    } catch (err) {
      fs.closeSync(fd);
      if (options.debug) log(state.role, `cannot adopt fd ${fd}: ${err.message}`);
      continue;
    }
    // The client a PROXY protocol header named: what remoteAddress/remotePort report.
    if (address !== undefined) socket._peername = { address, family, port };
    viaChannel.add(socket);
    adopted.push([socket, listener]);
  }
  // Confirmed before any byte is read: until now the primary could still give them to a
  // replacement if this worker died. `lost` ones never arrived: the primary sends them again.
  send('ack', incoming.length, lost);
  if (lost && options.debug) log(state.role, `out of descriptors: ${lost} connection(s) will be sent again`);
  for (const [socket, listener] of adopted) {
    const server = servers[listener];
    if (!server) {
      log(state.role, `a connection for listener ${listener} arrived, but only ${servers.length} server(s) were handed over; closing it`);
      socket.destroy();
      continue;
    }
    if (options.debugConnections) log(state.role, `connection from ${socket.remoteAddress} on listener ${listener}`);
    socket.server = server;
    // A throwing 'connection' listener must not strand the rest of the batch: rethrown after.
    try {
      server.emit('connection', socket);
    } catch (err) {
      queueMicrotask(() => {
        throw err;
      });
    }
  }
}

/**
 * Calls a report method of the receiver (hello, ack, closed, accepted, flush). A report the
 * channel cannot take now (full: the primary is busy) waits in the receiver's outbox, in order,
 * and is sent again shortly; nothing is lost. A closed channel (the primary is gone) drops it.
 */
function send(method, ...args) {
  const { receiver } = state;
  if (!receiver) return;
  let sent;
  try {
    sent = receiver[method](...args);
  } catch (err) {
    if (state.options.debug) log(state.role, `cannot report to the primary (${method}): ${err.message}`);
    return;
  }
  if (sent || state.flushTimer) return;
  state.flushTimer = setTimeout(() => {
    state.flushTimer = null;
    send('flush');
  }, FLUSH_RETRY);
}

/**
 * A count the primary keeps (receiver method `method`), reported at most once per `every` ms
 * and at the latest `every` ms after it grew: the first growth after a quiet spell goes out on
 * the next turn of the event loop.
 */
class Tally {
  constructor(method, every) {
    this.method = method;
    this.every = every;
    this.unreported = 0;
    this.reportedAt = 0;
    this.timer = null;
  }

  add(n) {
    this.unreported += n;
    if (this.timer) return;
    this.timer = setTimeout(() => this.report(), Math.max(0, this.reportedAt + this.every - Date.now()));
    this.timer.unref();
  }

  /** Reports now; kept for later while there is no channel yet. */
  report() {
    clearTimeout(this.timer);
    this.timer = null;
    if (!state.receiver || this.unreported === 0) return;
    this.reportedAt = Date.now();
    const n = this.unreported;
    this.unreported = 0;
    send(this.method, n);
  }
}

/**
 * Kernel dispatch: `socket` was accepted by the server itself, on its member. It is counted for
 * the primary, logged like an adopted one, and kept out of Node's own count of the server's
 * connections, as an adopted one is: otherwise `server.close()` would emit 'close' only after the
 * last connection ended, and engine.io, which closes its clients on 'close', would never end
 * them (a graceful shutdown with Socket.IO clients would last until hardShutdownDelay). Both
 * dispatch modes so behave alike.
 */
function accepted(socket) {
  state.accepted.add(1);
  if (state.options.debugConnections) log(state.role, `connection from ${socket.remoteAddress} (accepted on its member: the kernel picked this slot)`);
  const server = socket._server;
  if (server && typeof server._connections === 'number') {
    server._connections--;
    socket._server = null;
  }
}

/**
 * routeBy 'sid': every response closes its connection (`Connection: close`), as
 * `@socket.io/sticky` does. A connection serves only the worker the router gave it to, by its
 * first request; a browser's keep-alive pool (6 connections per origin) sends any later request
 * on any of them, so a session's poll would reach a worker that holds an asset's connection and
 * be answered 400 "Session ID unknown". Each request on a new connection goes through the router,
 * which reads its sid. Websockets are not affected (an upgrade is not a response). A request for
 * another slot's session that still arrives on a connection that served one (a client or proxy
 * that ignores `Connection: close`, a pipelined request) is warned about: its session breaks.
 */
function closeAfterEachResponse(server) {
  const seen = new WeakSet();
  const requestsOn = new WeakMap();
  const onRequest = (req, res) => {
    if (seen.has(req)) return;
    seen.add(req);
    res.shouldKeepAlive = false;
    const n = (requestsOn.get(req.socket) || 0) + 1;
    requestsOn.set(req.socket, n);
    if (!state.sessionIdsNameSlot && req.url.includes('EIO=')) {
      state.warnings.note('ids', 1, () =>
        `${state.role}: routeBy 'sid', but the Socket.IO session ids of this worker do not name it, so every session after ` +
        'the handshake breaks ("Session ID unknown"): call setupWorker(io) from sticky-rs in the worker, after new Server(httpServer)');
    }
    const session = sessionInUrl(req.url);
    const ours = session && String(session.place) === process.env[WORKER_INDEX] && session.node === (process.env[NODE_NAME] || null);
    if (n > 1 && session && !ours) {
      state.warnings.note('reused', 1, (k) =>
        `${state.role}: ${k} request${k === 1 ? '' : 's'} for a Socket.IO session of another slot came on a connection it already served ` +
        '(a client or proxy reused a keep-alive connection despite "Connection: close", or pipelined requests); ' +
        'the session is answered 400 "Session ID unknown" here. Let the proxy close server connections (HAProxy: http-reuse never; nginx: no upstream keepalive)');
      flushWarningsLater();
    }
  };
  server.prependListener('request', onRequest);
  // engine.io's attach() (a Socket.IO server attached after the hand-over) takes the 'request'
  // listeners it finds and calls them for its other paths only: this one comes first again.
  server.on('removeListener', (event, listener) => {
    if (event === 'request' && listener === onRequest) process.nextTick(() => server.prependListener('request', onRequest));
  });
}

/** Says the warnings held back (at most one line per kind per interval) once they are due. */
function flushWarningsLater() {
  if (state.warningsTimer) return;
  state.warningsTimer = setTimeout(() => {
    state.warningsTimer = null;
    state.warnings.flush();
  }, state.warnings.interval);
  state.warningsTimer.unref();
}

// What sparingFresh() puts where Node looks for a response in progress.
const NOT_YET_READ = Object.freeze({ finished: false });

/**
 * Runs `fn` (Node's closeIdleConnections(), or http's close(), which calls it) without closing
 * the connections that have not sent a byte yet. Node 26 counts them idle (20 to 24 did not):
 * each was given to this worker to serve, its request on its way, and closing it resets the
 * client (a reload under load lost 3-11 requests on Node 26). Node skips a connection whose
 * `_httpMessage` is unfinished; that mark stands for this synchronous call only, so no request
 * can be read while it does.
 */
function sparingFresh(fn) {
  const fresh = [];
  for (const socket of state.sockets) {
    if (socket._httpMessage || socket.destroyed || socket.bytesRead > 0) continue;
    socket._httpMessage = NOT_YET_READ;
    fresh.push(socket);
  }
  try {
    return fn();
  } finally {
    for (const socket of fresh) if (socket._httpMessage === NOT_YET_READ) socket._httpMessage = null;
  }
}

/** Counts `socket` among the open connections until it closes. */
function track(socket) {
  if (state.sockets.has(socket)) return;
  state.sockets.add(socket);
  if (state.kernel && !viaChannel.has(socket)) accepted(socket);
  // One shared listener: no closure and once() wrapper to allocate (and unlink) per connection.
  socket.on('close', untrack);
}

/** A tracked socket (`this`) closed; a second 'close' (emitted by hand) counts nothing. */
function untrack() {
  if (!state.sockets.delete(this)) return;
  if (state.options.routeBy === 'sid') state.closed.add(1);
  if (state.onSocketClosed) state.onSocketClosed();
}

/** Reports the counts the primary has not heard of yet, now. */
function reportNow() {
  state.accepted.report();
  state.closed.report();
}

function closeReceiver() {
  // The last counts, before the channel closes.
  reportNow();
  const { receiver } = state;
  clearTimeout(state.flushTimer);
  state.flushTimer = null;
  // Reports still in the outbox (a full channel) go now, as far as the channel takes them: an
  // acknowledgement lost here would make the primary hand served connections to another worker.
  send('flush');
  state.receiver = null;
  if (receiver) receiver.close();
}

/**
 * Graceful exit: the server closes (idle keep-alive connections close; Socket.IO attached to it
 * closes its clients), busy connections finish and close as they go idle, connections already
 * on their way are still adopted and served, then the worker exits. `'sticky:shutdown'` on the
 * server lets user code delay the exit: `server.on('sticky:shutdown', ({ waitUntil }) =>
 * waitUntil(flush()))`. Before a server is handed over there is nothing to finish.
 */
function shutdown(ownSignal = false) {
  if (state.shuttingDown) return;
  state.shuttingDown = true;
  if (state.early) {
    state.early.destroy();
    state.early = null;
  }
  for (const [, handle] of state.earlyMembers.splice(0)) handle.close();
  const { servers, options } = state;
  if (options.debug) log(state.role, 'shutting down');
  if (!servers) exit();
  const hooks = [];
  const waitUntil = (promise) => hooks.push(Promise.resolve(promise).catch(() => {}));
  for (const server of servers) {
    server.emit('sticky:shutdown', { waitUntil });
    if (ownSignal) keepAccepting(server);
    server.close();
  }
  // A signal to this worker alone (or to the whole group, when the primary stops too and
  // ignores this): the primary replaces it at once, as if it had closed its server, so that new
  // clients of its slot go to the replacement and this worker's drain ends.
  if (ownSignal) notifyPrimary(options.prefix, STOPPING);
  // What keeps this worker from exiting, for the primary's "waiting" line; idle keep-alive
  // connections are closed by then.
  setTimeout(() => {
    if (state.sockets.size > 0) notifyPrimary(options.prefix, OPEN + state.sockets.size);
  }, OPEN_REPORT_AFTER).unref();
  // Engine.io answers pending long-polls on 'close', after closeIdleConnections() ran once.
  const idleSweep = setInterval(() => {
    for (const server of servers) if (typeof server.closeIdleConnections === 'function') sparingFresh(() => server.closeIdleConnections());
  }, 100);
  const drained = () =>
    new Promise((resolve) => {
      const check = () => state.sockets.size === 0 && resolve();
      state.onSocketClosed = () => setImmediate(check);
      check();
    });
  (async () => {
    await Promise.all([drained(), ...hooks]);
    for (;;) {
      // Connections already on their way may have been adopted while the hooks ran.
      while (state.sockets.size > 0) await drained();
      // One more turn of the event loop: what a kept member has ready is accepted first.
      await new Promise((resolve) => setImmediate(resolve));
      if (state.sockets.size === 0) break;
    }
    closeKept();
    clearInterval(idleSweep);
    closeReceiver();
    if (options.debug) log(state.role, 'done, exiting');
    exit();
  })();
}

/** Exits with 0 when done; on a terminal that hung up, as the hang-up would have ended it. */
function exit() {
  if (state.hungUp) exitHungUp();
  else process.exit(0);
}

module.exports = { prepare, serve, prepared, sessionIdsNameSlot, current };
