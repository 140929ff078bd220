'use strict';
// sticky-rs: sticky-cluster's and sticky-session's APIs over a native router.
const cluster = require('node:cluster');
const { clusterOptions, sessionOptions } = require('./lib/options');
const { startPrimary, startForServer } = require('./lib/primary');
const socketio = require('./lib/socketio');
const { prepare, serve } = require('./lib/worker');
const { prometheus } = require('./lib/metrics');
const { PRIMARY_PID } = require('./lib/messages');
const { withoutOwnFrames } = require('./lib/errors');

/** Validated options; an invalid one throws from the caller's frame, not ours. */
function checked(validate, ...args) {
  try {
    return validate(...args);
  } catch (err) {
    throw withoutOwnFrames(err); // sticky-rs: an invalid option; the error below says which and why
  }
}

// Every worker this primary forks, by sticky-rs or by leftover code of the app (even before
// sticky() runs), can tell that its primary runs sticky-rs. Only cluster workers: the primary's
// own environment, which every child process inherits, is left alone.
if (cluster.isPrimary) {
  const fork = cluster.fork;
  cluster.fork = function (env) {
    return fork.call(this, { [PRIMARY_PID]: String(process.pid), ...env });
  };
}

// The Primary this process started (either API), for primary().
let started = null;

/** sticky-cluster: `startFn(callback)` runs in workers and calls `callback(server)`. */
function sticky(startFn, options) {
  const o = checked(clusterOptions, startFn, options);
  if (cluster.isPrimary) {
    started = startPrimary(o, o.errorHandler);
    return started;
  }
  // A worker forked by someone else gets no connections: the app does not start there.
  if (prepare(o)) startFn(serve);
}

/** sticky-session: false in the primary, true in a worker, where `server` gets connections. */
function listen(server, port, options) {
  const o = checked(sessionOptions, server, port, options);
  if (!cluster.isPrimary) {
    if (prepare(o)) serve(server);
    return true;
  }
  started = startForServer(server, o);
  return false;
}

/** The Primary this process started with either API (stats, reload, shutdown, events), or null. */
function primary() {
  return started;
}

module.exports = sticky;
module.exports.listen = listen;
module.exports.primary = primary;
module.exports.prometheus = prometheus;
// @socket.io/sticky's API (setupMaster in the primary, setupWorker in each worker).
module.exports.setupMaster = (httpServer, opts) => {
  socketio.setupMaster(httpServer, opts, (primary) => {
    started = primary;
  });
};
module.exports.setupWorker = socketio.setupWorker;
