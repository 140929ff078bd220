'use strict';
// routeBy 'sid', in a worker: every response closes its connection, and the two mistakes that
// break every session are said.
const { sessionInUrl } = require('./sid');
const { WORKER_INDEX, NODE_NAME } = require('./messages');

/**
 * Every response of `server` closes its connection (`Connection: close`), as `@socket.io/sticky`
 * does. A connection serves only the worker the router gave it to, by its first request; a
 * browser's keep-alive pool (6 connections per origin) sends any later request on any of them, so
 * a session's poll would reach a worker that holds an asset's connection and be answered 400
 * "Session ID unknown". Each request on a new connection goes through the router, which reads its
 * sid. Websockets are not affected (an upgrade is not a response). A request for another slot's
 * session that still arrives on a connection that served one (a client or proxy that ignores
 * `Connection: close`, a pipelined request) is warned about: its session breaks.
 *
 * `worker` gives `role`, `warnings` (a Warnings), `sessionIdsNameSlot` (setupWorker(io) ran) and
 * `flushWarningsLater()`.
 */
function closeAfterEachResponse(server, worker) {
  const seen = new WeakSet();
  const requestsOn = new WeakMap();
  const onRequest = (req, res) => {
    if (seen.has(req)) return;
    seen.add(req);
    res.shouldKeepAlive = false;
    const n = (requestsOn.get(req.socket) || 0) + 1;
    requestsOn.set(req.socket, n);
    if (!worker.sessionIdsNameSlot && req.url.includes('EIO=')) {
      worker.warnings.note(
        'ids',
        1,
        () =>
          `${worker.role}: routeBy 'sid', but the Socket.IO session ids of this worker do not name it, so every session after ` +
          'the handshake breaks ("Session ID unknown"): call setupWorker(io) from sticky-rs in the worker, after new Server(httpServer)',
      );
    }
    const session = sessionInUrl(req.url);
    const ours = session && String(session.place) === process.env[WORKER_INDEX] && session.node === (process.env[NODE_NAME] || null);
    if (n > 1 && session && !ours) {
      worker.warnings.note(
        'reused',
        1,
        (k) =>
          `${worker.role}: ${k} request${k === 1 ? '' : 's'} for a Socket.IO session of another slot came on a connection it already served ` +
          '(a client or proxy reused a keep-alive connection despite "Connection: close", or pipelined requests); ' +
          'the session is answered 400 "Session ID unknown" here. Let the proxy close server connections (HAProxy: http-reuse never; nginx: no upstream keepalive)',
      );
      worker.flushWarningsLater();
    }
  };
  server.prependListener('request', onRequest);
  // engine.io's attach() (a Socket.IO server attached after the hand-over) takes the 'request'
  // listeners it finds and calls them for its other paths only: this one comes first again.
  server.on('removeListener', (event, listener) => {
    if (event === 'request' && listener === onRequest) process.nextTick(() => server.prependListener('request', onRequest));
  });
}

module.exports = { closeAfterEachResponse };
