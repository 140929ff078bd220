'use strict';
// Validates and normalizes the options of both APIs into one shape.
// Like the originals, a falsy value means "use the default" (`||`), except where 0 is a real
// value (`queueLimit`, and `port` in `listen`, where 0 picks a free port as net.Server does).
const os = require('node:os');

const DEFAULT_PREFIX = 'sticky-cluster:';
const HASHES = ['djb2'];

const SHARED_KEYS = [
  'host', 'backlog', 'debug', 'prefix', 'queueLimit', 'queueTimeout', 'hash',
  'readyTimeout', 'respawnDelay', 'maxRespawnDelay', 'respawnResetAfter', 'hardShutdownDelay',
];
const CLUSTER_KEYS = ['concurrency', 'port', 'env', 'errorHandler', ...SHARED_KEYS];
const SESSION_KEYS = ['workers', 'env', ...SHARED_KEYS];
const MAX_MS = 2 ** 31 - 1;

function describe(value) {
  if (typeof value === 'string') return JSON.stringify(value);
  if (typeof value === 'function') return 'a function';
  if (value === null) return 'null';
  if (typeof value === 'object') return Array.isArray(value) ? 'an array' : 'an object';
  return String(value);
}

function integer(name, value, min, max) {
  if (typeof value !== 'number') {
    throw new TypeError(`sticky-rs: option "${name}" must be a number, got ${describe(value)}`);
  }
  if (!Number.isInteger(value) || value < min || value > max) {
    throw new RangeError(
      `sticky-rs: option "${name}" must be an integer from ${min} to ${max}, got ${describe(value)}`,
    );
  }
  return value;
}

function port(name, value, min) {
  // net.Server accepts numeric strings; so do we.
  const n = typeof value === 'string' && /^\d+$/.test(value) ? Number(value) : value;
  return integer(name, n, min, 65535);
}

function ofType(name, value, type) {
  if (typeof value !== type) {
    throw new TypeError(`sticky-rs: option "${name}" must be a ${type}, got ${describe(value)}`);
  }
  return value;
}

function checkKeys(options, known) {
  if (options === undefined || options === null) return {};
  if (typeof options !== 'object' || Array.isArray(options)) {
    throw new TypeError(`sticky-rs: options must be an object, got ${describe(options)}`);
  }
  for (const key of Object.keys(options)) {
    if (!known.includes(key)) {
      throw new TypeError(`sticky-rs: unknown option "${key}" (known: ${known.join(', ')})`);
    }
  }
  return options;
}

/** A duration in ms; falsy means the default, as `hardShutdownDelay` in sticky-cluster. */
function ms(o, name, fallback) {
  return o[name] ? integer(name, o[name], 1, MAX_MS) : fallback;
}

/** The options both APIs share. */
function common(o) {
  const hash = o.hash === undefined ? 'djb2' : ofType('hash', o.hash, 'string');
  if (!HASHES.includes(hash)) {
    throw new TypeError(`sticky-rs: option "hash" must be one of ${HASHES.join(', ')}, got ${describe(hash)}`);
  }
  return {
    host: o.host === undefined || o.host === '::' ? '' : ofType('host', o.host, 'string'),
    backlog: o.backlog === undefined ? 511 : integer('backlog', o.backlog, 1, 2 ** 31 - 1),
    debug: Boolean(o.debug),
    prefix: o.prefix ? ofType('prefix', o.prefix, 'string') : DEFAULT_PREFIX,
    queueLimit: o.queueLimit === undefined ? 1024 : integer('queueLimit', o.queueLimit, 0, 1 << 20),
    queueTimeout: ms(o, 'queueTimeout', 30_000),
    readyTimeout: ms(o, 'readyTimeout', 30_000),
    respawnDelay: ms(o, 'respawnDelay', 100),
    maxRespawnDelay: ms(o, 'maxRespawnDelay', 10_000),
    respawnResetAfter: ms(o, 'respawnResetAfter', 30_000),
    hardShutdownDelay: ms(o, 'hardShutdownDelay', 60_000),
    hash,
  };
}

function defaultErrorHandler(err) {
  console.log(err);
  process.exit(1);
}

/** `require('sticky-rs')(startFn, options)`: sticky-cluster 0.3.5's options and defaults. */
function clusterOptions(startFn, options) {
  if (typeof startFn !== 'function') {
    throw new TypeError(`sticky-rs: the first argument must be a function (callback => callback(server)), got ${describe(startFn)}`);
  }
  const o = checkKeys(options, CLUSTER_KEYS);
  const userEnv = o.env ? ofType('env', o.env, 'function') : null;
  return {
    ...common(o),
    slots: o.concurrency ? integer('concurrency', o.concurrency, 1, 1024) : os.availableParallelism(),
    port: o.port ? port('port', o.port, 1) : 8080,
    env: userEnv || ((index) => ({ stickycluster_worker_index: index })),
    errorHandler: o.errorHandler ? ofType('errorHandler', o.errorHandler, 'function') : defaultErrorHandler,
  };
}

/** `require('sticky-rs').listen(server, port, options)`: sticky-session 1.x. */
function sessionOptions(server, portValue, options) {
  if (!server || typeof server.emit !== 'function' || typeof server.on !== 'function') {
    throw new TypeError(`sticky-rs: listen() needs a server (http.Server, https.Server or net.Server), got ${describe(server)}`);
  }
  const o = checkKeys(options, SESSION_KEYS);
  if (o.env !== undefined && (o.env === null || typeof o.env !== 'object')) {
    throw new TypeError(`sticky-rs: option "env" must be an object, got ${describe(o.env)}`);
  }
  const env = o.env || {};
  return {
    ...common(o),
    slots: o.workers ? integer('workers', o.workers, 1, 1024) : os.availableParallelism(),
    port: port('port', portValue, 0),
    env: () => env,
    errorHandler: null,
  };
}

module.exports = { clusterOptions, sessionOptions };
