'use strict';
// Every use of Node's private fields and every replaced method of a user's server, in one place.
// Node documents none of these; each is read by Node 20 to 26 as used here. `selfCheck()` runs
// when sticky-rs starts a primary or a worker and fails with the Node version and the field if one
// is missing, rather than a TypeError deep inside on the first connection.
const http = require('node:http');
const net = require('node:net');

/**
 * Checks, on objects of this Node's own making, that the fields below exist with the types used
 * here. Throws an Error naming the Node version and what is missing.
 */
function selfCheck() {
  const missing = [];
  const server = http.createServer();
  if (typeof server._listeningId !== 'number') missing.push('net.Server#_listeningId (a number)');
  if (typeof server._connections !== 'number') missing.push('net.Server#_connections (a number)');
  if (!('_handle' in server)) missing.push('net.Server#_handle');
  if (typeof server.closeIdleConnections !== 'function') missing.push('http.Server#closeIdleConnections()');
  const socket = new net.Socket();
  if (!('_handle' in socket)) missing.push('net.Socket#_handle');
  // A destroyed socket tells its _server (see OpenConnections).
  if (!('_server' in socket)) missing.push('net.Socket#_server');
  if (typeof process._getActiveHandles !== 'function') missing.push('process._getActiveHandles()');
  // remoteAddress/remotePort read _peername, which _getpeername() fills once.
  if (typeof socket._getpeername !== 'function') missing.push('net.Socket#_getpeername() (and its _peername)');
  if (missing.length > 0) {
    throw new Error(
      `sticky-rs: Node.js ${process.version} lacks what sticky-rs relies on: ${missing.join(', ')}. Supported: Node 20 to 26; please report this Node version`,
    );
  }
}

/** The descriptor of a handle received over IPC (a net.Socket wrapping it), or -1. */
function receivedFd(socket) {
  const fd = socket._handle?.fd;
  return typeof fd === 'number' ? fd : -1;
}

/** The native handle of `socket` (to send it bare over IPC), or null. */
function handleOf(socket) {
  return socket._handle || null;
}

/** Whether `server.listen()` was called, even while a worker's listen is still on its way. */
function listenCalled(server) {
  // Node counts listen() calls in _listeningId (1 before the first); a worker's listen is
  // asynchronous (it asks the primary), so `listening` is still false right after it.
  return server.listening || (typeof server._listeningId === 'number' && server._listeningId > 1);
}

/** `server` listens on the listening `handle` (public API: `listen(handle)`, never replaced). */
function listenOnHandle(server, handle, backlog) {
  net.Server.prototype.listen.call(server, handle, backlog);
}

/**
 * Takes `server`'s listening handle away from it, so it no longer listens, without closing it:
 * its connections go on, its 'close' comes later. Null if it has none.
 */
function takeListeningHandle(server) {
  const handle = server._handle;
  if (!handle) return null;
  server._handle = null;
  return handle;
}

/**
 * A listening handle taken from its server goes on accepting into it, but an accept error (the
 * primary stopped the member) ends it quietly instead of reaching the closed server.
 */
function ignoreAcceptErrors(handle) {
  const onconnection = handle.onconnection;
  handle.onconnection = function acceptQuietly(err, client) {
    if (!err) onconnection.call(this, err, client);
  };
}

/** The client a PROXY protocol header named becomes what remoteAddress/remotePort report. */
function setPeer(socket, peer) {
  socket._peername = peer;
}

/**
 * A worker's count of its open connections, kept the way a net.Server keeps its own: a socket's
 * destroy decrements `_connections` of the socket's `_server` and calls its
 * `_emitCloseIfDrained()`. A socket counted here (see countIn) tells this count instead of its
 * server. It costs one field per connection: an earlier Set of every open socket plus a 'close'
 * listener on each kept the sockets' objects alive past young-generation collections, doubled the
 * bytes V8 promoted and cost ~6% of the connection rate (bench/pair.js).
 */
class OpenConnections {
  /** `onClose()` runs each time a counted socket is destroyed. */
  constructor(onClose) {
    // Node's field name: a destroyed socket decrements it.
    this._connections = 0;
    this.onClose = onClose;
  }

  /** How many counted sockets are open. */
  get size() {
    return this._connections;
  }

  // Node's method name: a destroyed socket calls it after decrementing _connections.
  _emitCloseIfDrained() {
    this.onClose();
  }
}

/**
 * Counts `socket` in `open` instead of in its server's own count, which Node's accept entered it
 * in (an adopted one was in none): otherwise `server.close()` emits 'close' only after the last
 * connection ended (engine.io closes its clients on 'close', so it would never end them). False if
 * `open` counts it already.
 */
function countIn(socket, open) {
  const server = socket._server;
  if (server === open) return false;
  if (server && typeof server._connections === 'number') server._connections--;
  socket._server = open;
  open._connections++;
  return true;
}

/** Whether Node's `server` accepted `socket` on its own listening handle (and counts it). */
function acceptedBy(socket, server) {
  return socket._server === server;
}

/**
 * The open sockets `open` counts, found among the process's referenced handles (a socket that was
 * `unref()`ed is not listed). Only for a close or a shutdown: it walks every handle.
 */
function socketsIn(open) {
  return process._getActiveHandles().filter((handle) => handle._server === open);
}

// What sparingFresh() puts where Node looks for a response in progress.
const NOT_YET_READ = Object.freeze({ finished: false });

/**
 * Runs `fn` (Node's closeIdleConnections(), or http's close(), which calls it) without closing
 * the connections `open` counts that have not sent a byte yet. Node 26 counts them idle (20 to 24
 * did not): each was given to this worker to serve, its request on its way, and closing it
 * resets the client (a reload under load lost 3-11 requests on Node 26). Node skips a connection
 * whose `_httpMessage` is unfinished; that mark stands for this synchronous call only, so no
 * request can be read while it does.
 */
function sparingFresh(open, fn) {
  const fresh = [];
  for (const socket of socketsIn(open)) {
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

/** Replaces `server.listen` (a handed-over server, or setupMaster's in the primary). */
function replaceListen(server, listen) {
  server.listen = listen;
}

/**
 * Replaces `server.close` with `close(original, args)`, called with the server as `this`
 * (sticky-session semantics: closing the server retires the worker).
 */
function replaceClose(server, close) {
  const original = server.close;
  server.close = function closeReplaced(...args) {
    return close.call(this, original, args);
  };
}

module.exports = {
  selfCheck,
  receivedFd,
  handleOf,
  listenCalled,
  listenOnHandle,
  takeListeningHandle,
  ignoreAcceptErrors,
  setPeer,
  OpenConnections,
  countIn,
  acceptedBy,
  sparingFresh,
  replaceListen,
  replaceClose,
};
