'use strict';
// sticky-rs: sticky-cluster's and sticky-session's APIs over a native router.
const cluster = require('node:cluster');
const { clusterOptions, sessionOptions } = require('./lib/options');
const { startPrimary } = require('./lib/primary');
const { prepare, serve } = require('./lib/worker');

/** sticky-cluster: `startFn(callback)` runs in workers and calls `callback(server)`. */
function sticky(startFn, options) {
  const o = clusterOptions(startFn, options);
  if (cluster.isPrimary) return startPrimary(o, o.errorHandler);
  prepare(o);
  startFn(serve);
}

/** sticky-session: false in the primary, true in a worker, where `server` gets connections. */
function listen(server, port, options) {
  const o = sessionOptions(server, port, options);
  if (!cluster.isPrimary) {
    prepare(o);
    serve(server);
    return true;
  }
  // Like server.listen(), errors arrive as an 'error' event, after the caller could attach one.
  const primary = startPrimary(o, (err) => process.nextTick(() => server.emit('error', err)));
  if (primary.router) process.nextTick(() => server.emit('listening'));
  return false;
}

module.exports = sticky;
module.exports.listen = listen;
