'use strict';
// The worker: once the user's server is handed over, asks the primary for its channel, then
// adopts each connection that arrives on it as a 'connection' event on that server.
const cluster = require('node:cluster');
const fs = require('node:fs');
const net = require('node:net');
const { native } = require('./binding');
const { log } = require('./log');
const { READY, CHANNEL, SHUTDOWN } = require('./messages');

let current = null;

function describe(value) {
  return value === null || typeof value !== 'object' ? String(value) : value.constructor.name;
}

/** Hands `server` over: from now on it gets this worker's connections. Once per worker. */
function serve(server, options) {
  if (!(server instanceof net.Server)) {
    throw new TypeError(`sticky-rs: the worker must hand over a net.Server (http, https, ...), got ${describe(server)}`);
  }
  if (current) throw new Error('sticky-rs: a server was already handed over in this worker');
  if (server.listening) {
    throw new Error('sticky-rs: the server handed over must not listen; the primary listens for it');
  }
  const state = { server, options, receiver: null, sockets: new Set(), shuttingDown: false };
  current = state;
  const role = `worker #${cluster.worker.id} (pid ${process.pid})`;
  state.role = role;
  // http.Server sets up its request timeouts and idle-connection tracking on 'listening'.
  server.emit('listening');
  process.on('message', (message, handle) => onMessage(state, message, handle));
  process.on('disconnect', () => close(state));
  // The callback keeps a closed channel (primary gone) from becoming an uncaught error.
  process.send(options.prefix + READY, () => {});
  if (options.debug) log(role, 'server handed over, waiting for the channel');
}

function onMessage(state, message, handle) {
  const { prefix, debug } = state.options;
  if (message === prefix + CHANNEL && handle && !state.receiver) {
    const fd = handle._handle && handle._handle.fd;
    try {
      state.receiver = new native.Receiver(fd, (fds, lost) => adopt(state, fds, lost));
    } finally {
      // The receiver holds its own copy; Node's must go before anything is sent on it.
      handle.destroy();
    }
    state.receiver.hello();
    if (debug) log(state.role, 'channel open, ready for connections');
  } else if (message === prefix + SHUTDOWN) {
    shutdown(state);
  }
}

function adopt(state, fds, lost) {
  const { server } = state;
  const { debug } = state.options;
  const sockets = [];
  for (const fd of fds) {
    try {
      sockets.push(new net.Socket({ fd, readable: true, writable: true }));
    } catch (err) {
      fs.closeSync(fd);
      if (debug) log(state.role, `cannot adopt fd ${fd}: ${err.message}`);
    }
  }
  // Confirmed before any byte is read: until now the primary could still give them to a
  // replacement if this worker died. `lost` ones never arrived: the primary sends them again.
  if (state.receiver) state.receiver.ack(fds.length, lost);
  if (lost && debug) log(state.role, `out of descriptors: ${lost} connection(s) will be sent again`);
  for (const socket of sockets) {
    if (state.options.debug) log(state.role, `connection from ${socket.remoteAddress}`);
    socket.server = server;
    state.sockets.add(socket);
    socket.once('close', () => {
      state.sockets.delete(socket);
      if (state.onSocketClosed) state.onSocketClosed();
    });
    server.emit('connection', socket);
  }
}

function close(state) {
  if (state.receiver) state.receiver.close();
}

/**
 * Graceful exit: the server closes (idle keep-alive connections close; Socket.IO attached to it
 * closes its clients), busy connections finish and close as they go idle, connections already
 * on their way are still adopted and served, then the worker exits. `'sticky:shutdown'` on the
 * server lets user code delay the exit: `server.on('sticky:shutdown', ({ waitUntil }) =>
 * waitUntil(flush()))`.
 */
function shutdown(state) {
  if (state.shuttingDown) return;
  state.shuttingDown = true;
  const { server, options } = state;
  if (options.debug) log(state.role, 'shutting down');
  const hooks = [];
  server.emit('sticky:shutdown', { waitUntil: (promise) => hooks.push(Promise.resolve(promise).catch(() => {})) });
  server.close();
  const idleSweep = setInterval(() => server.closeIdleConnections(), 100);
  const drained = new Promise((resolve) => {
    const check = () => state.sockets.size === 0 && resolve();
    state.onSocketClosed = () => setImmediate(check);
    check();
  });
  Promise.all([drained, ...hooks]).then(() => {
    clearInterval(idleSweep);
    close(state);
    if (options.debug) log(state.role, 'done, exiting');
    process.exit(0);
  });
}

module.exports = { serve };
