'use strict';
// Validates and normalizes the options of both APIs into one shape.
// Like the originals, a falsy value means "use the default" (`||`), except where 0 is a real
// value (`queueLimit`, and `port` in `listen`, where 0 picks a free port as net.Server does).
const os = require('node:os');
const { native } = require('./binding');

const DEFAULT_PREFIX = 'sticky-cluster:';
const HASHES = ['djb2', 'djb2-mix'];
const DISPATCHES = ['auto', 'kernel', 'primary'];

const SHARED_KEYS = [
  'host', 'backlog', 'debug', 'prefix', 'queueLimit', 'queueTimeout', 'hash',
  'readyTimeout', 'respawnDelay', 'maxRespawnDelay', 'respawnResetAfter', 'hardShutdownDelay',
  'routeBy', 'trustedProxies', 'peekLimit', 'peekTimeout', 'dispatch',
];
const CLUSTER_KEYS = ['concurrency', 'port', 'listeners', 'env', 'errorHandler', ...SHARED_KEYS];
// An HTTP header name (RFC 9110 token).
const HEADER_NAME = /^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/;
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

function host(name, value) {
  return value === undefined || value === '::' ? '' : ofType(name, value, 'string');
}

function backlog(name, value) {
  return value === undefined ? 511 : integer(name, value, 1, 2 ** 31 - 1);
}

/** `routeBy` and what goes with it. */
function routing(o) {
  const routeBy = o.routeBy === undefined ? 'address' : ofType('routeBy', o.routeBy, 'string').toLowerCase();
  if (!HEADER_NAME.test(routeBy)) {
    throw new TypeError(`sticky-rs: option "routeBy" must be 'address', 'x-forwarded-for', 'proxy-protocol' or a header name, got ${describe(o.routeBy)}`);
  }
  let trustedProxies = [];
  if (o.trustedProxies !== undefined) {
    if (!Array.isArray(o.trustedProxies) || !o.trustedProxies.every((e) => typeof e === 'string')) {
      throw new TypeError(`sticky-rs: option "trustedProxies" must be an array of addresses and CIDR ranges, got ${describe(o.trustedProxies)}`);
    }
    const bad = native.invalidTrustedProxy(o.trustedProxies);
    if (bad !== null && bad !== undefined) {
      throw new TypeError(`sticky-rs: option "trustedProxies" has an entry that is neither an address nor a CIDR range: ${JSON.stringify(bad)}`);
    }
    trustedProxies = o.trustedProxies;
  }
  if (routeBy !== 'address' && trustedProxies.length === 0) {
    throw new TypeError(`sticky-rs: option "routeBy": ${JSON.stringify(routeBy)} needs "trustedProxies" (the proxies whose ${routeBy} data is believed)`);
  }
  return {
    routeBy,
    trustedProxies,
    peekLimit: o.peekLimit === undefined ? 8192 : integer('peekLimit', o.peekLimit, 64, 64 * 1024),
    peekTimeout: ms(o, 'peekTimeout', 3000),
  };
}

/** The addresses to listen on: `listeners: [{ port, host, backlog }]`, or one from port/host. */
function listenersOf(o, single) {
  if (o.listeners === undefined) return [single];
  if (o.port !== undefined || o.host !== undefined) {
    throw new TypeError('sticky-rs: give either "listeners" or "port"/"host", not both');
  }
  if (!Array.isArray(o.listeners) || o.listeners.length === 0 || o.listeners.length > 255) {
    throw new TypeError(`sticky-rs: option "listeners" must be an array of 1 to 255 { port, host, backlog } objects, got ${describe(o.listeners)}`);
  }
  return o.listeners.map((l, i) => {
    if (!l || typeof l !== 'object') throw new TypeError(`sticky-rs: option "listeners[${i}]" must be an object, got ${describe(l)}`);
    for (const key of Object.keys(l)) {
      if (!['port', 'host', 'backlog'].includes(key)) throw new TypeError(`sticky-rs: unknown option "listeners[${i}].${key}"`);
    }
    return { port: port(`listeners[${i}].port`, l.port, 0), host: host(`listeners[${i}].host`, l.host), backlog: backlog(`listeners[${i}].backlog`, l.backlog) };
  });
}

/** A duration in ms; falsy means the default, as `hardShutdownDelay` in sticky-cluster. */
function ms(o, name, fallback) {
  return o[name] ? integer(name, o[name], 1, MAX_MS) : fallback;
}

/**
 * Who picks each connection's worker: the kernel (a SO_REUSEPORT group whose program computes
 * the same slot; workers accept themselves) or the primary's router. `kernel` is opt-in for
 * now: `auto` is the primary's router until kernel dispatch matches it at shutdown and reload
 * (connections the kernel queued but no worker accepted yet are reset there, as with Node's own
 * cluster) and in `stats()`.
 */
function dispatchOf(o, routeBy) {
  const asked = o.dispatch === undefined ? 'auto' : ofType('dispatch', o.dispatch, 'string');
  if (!DISPATCHES.includes(asked)) {
    throw new TypeError(`sticky-rs: option "dispatch" must be one of ${DISPATCHES.join(', ')}, got ${describe(asked)}`);
  }
  let whyNot = null;
  if (process.platform !== 'linux') whyNot = `it needs Linux (SO_ATTACH_REUSEPORT_CBPF), this is ${process.platform}`;
  else if (routeBy !== 'address') whyNot = `routeBy ${JSON.stringify(routeBy)} needs the router to read each connection`;
  if (asked === 'kernel' && whyNot) {
    throw new RangeError(`sticky-rs: option "dispatch": "kernel" cannot work here: ${whyNot}; use "auto" or "primary"`);
  }
  if (asked === 'kernel') return { dispatch: 'kernel', dispatchWhy: 'asked for' };
  if (asked === 'primary') return { dispatch: 'primary', dispatchWhy: 'asked for' };
  return { dispatch: 'primary', dispatchWhy: whyNot ? `kernel dispatch cannot work here: ${whyNot}` : 'the default; dispatch: "kernel" is opt-in' };
}

/** The options both APIs share. */
function common(o) {
  const hash = o.hash === undefined ? 'djb2' : ofType('hash', o.hash, 'string');
  if (!HASHES.includes(hash)) {
    throw new TypeError(`sticky-rs: option "hash" must be one of ${HASHES.join(', ')}, got ${describe(hash)}`);
  }
  const routes = routing(o);
  return {
    host: host('host', o.host),
    backlog: backlog('backlog', o.backlog),
    ...routes,
    ...dispatchOf(o, routes.routeBy),
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
  const shared = common(o);
  return {
    ...shared,
    slots: o.concurrency ? integer('concurrency', o.concurrency, 1, 1024) : os.availableParallelism(),
    listeners: listenersOf(o, { port: o.port ? port('port', o.port, 1) : 8080, host: shared.host, backlog: shared.backlog }),
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
  const shared = common(o);
  return {
    ...shared,
    slots: o.workers ? integer('workers', o.workers, 1, 1024) : os.availableParallelism(),
    listeners: [{ port: port('port', portValue, 0), host: shared.host, backlog: shared.backlog }],
    env: () => env,
    errorHandler: null,
  };
}

module.exports = { clusterOptions, sessionOptions };
