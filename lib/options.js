'use strict';
// Validates and normalizes the options of both APIs into one shape.
// Like the originals, a falsy value (undefined, null, false, 0, '', NaN) means "use the default"
// (`||`), except where 0 is a real value (`queueLimit`, and `port` in `listen`, where 0 picks a
// free port as net.Server does). Counts, ports and durations also take decimal integer strings
// ('4', as in `concurrency: process.env.WEB_CONCURRENCY`), which the originals used as numbers.
const os = require('node:os');
const { native } = require('./binding');
const { describe } = require('./errors');
const { debugEnabled } = require('./log');

const DEFAULT_PREFIX = 'sticky-cluster:';
const HASHES = ['djb2', 'djb2-mix'];
const DISPATCHES = ['auto', 'kernel', 'primary'];

const SHARED_KEYS = [
  'host',
  'backlog',
  'debug',
  'prefix',
  'queueLimit',
  'queueTimeout',
  'hash',
  'readyTimeout',
  'respawnDelay',
  'maxRespawnDelay',
  'respawnResetAfter',
  'hardShutdownDelay',
  'routeBy',
  'trustedProxies',
  'peekLimit',
  'peekTimeout',
  'maxRestarts',
  'restartWindow',
  'dispatch',
  'loadBalancingMethod',
  'node',
];
const BALANCING = ['least-connection', 'round-robin', 'random'];
// Upgrade (issue 22): only where sticky-rs forks the workers (not setupMaster).
const UPGRADE_KEYS = ['upgradeSignal', 'upgradeExecPath', 'pidFile'];
const CLUSTER_KEYS = ['concurrency', 'port', 'listeners', 'env', 'errorHandler', ...SHARED_KEYS, ...UPGRADE_KEYS];
// An HTTP header name (RFC 9110 token).
const HEADER_NAME = /^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/;
const SESSION_KEYS = ['workers', 'env', ...SHARED_KEYS, ...UPGRADE_KEYS];
const MAX_MS = 2 ** 31 - 1;

/** Whether sticky-cluster's `value || fallback` would take the fallback. */
const unset = (value) => !value;

function integer(name, value, min, max) {
  // '4' counts as 4; '4.5', '-1', ' 4' and 'four' do not.
  if (typeof value === 'string' && /^\d+$/.test(value)) value = Number(value);
  if (typeof value !== 'number') {
    const hint = typeof value === 'string' ? ' (a string must be a whole number in digits, like "4")' : '';
    throw new TypeError(`sticky-rs: option "${name}" must be a number, got ${describe(value)}${hint}`);
  }
  if (!Number.isInteger(value) || value < min || value > max) {
    throw new RangeError(`sticky-rs: option "${name}" must be an integer from ${min} to ${max}, got ${describe(value)}`);
  }
  return value;
}

function port(name, value, min) {
  return integer(name, value, min, 65535);
}

/** An integer option where a falsy value means `fallback`. */
function count(o, name, fallback, min, max) {
  return unset(o[name]) ? fallback : integer(name, o[name], min, max);
}

function ofType(name, value, type) {
  if (typeof value !== type) {
    throw new TypeError(`sticky-rs: option "${name}" must be a ${type}, got ${describe(value)}`);
  }
  return value;
}

// The same option under another API's name: sticky() says concurrency, listen() workers,
// setupMaster() maxWorkers.
const SYNONYMS = { concurrency: ['workers', 'maxWorkers'], workers: ['concurrency', 'maxWorkers'], maxWorkers: ['workers', 'concurrency'] };

/** Edit distance (insert, delete, substitute, swap two neighbours), case-insensitive. */
function distance(a, b) {
  a = a.toLowerCase();
  b = b.toLowerCase();
  const d = Array.from({ length: a.length + 1 }, (_, i) => [i, ...Array(b.length).fill(0)]);
  for (let j = 1; j <= b.length; j++) d[0][j] = j;
  for (let i = 1; i <= a.length; i++) {
    for (let j = 1; j <= b.length; j++) {
      d[i][j] = Math.min(d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + (a[i - 1] === b[j - 1] ? 0 : 1));
      if (i > 1 && j > 1 && a[i - 1] === b[j - 2] && a[i - 2] === b[j - 1]) d[i][j] = Math.min(d[i][j], d[i - 2][j - 2] + 1);
    }
  }
  return d[a.length][b.length];
}

/** The known option `key` was probably meant to be (a typo, another API's name), or null. */
function suggestion(key, known) {
  let best = null;
  let bestDistance = Math.min(3, Math.max(1, Math.floor(key.length / 4)));
  for (const name of new Set([...known, ...Object.keys(SYNONYMS)])) {
    const d = distance(key, name);
    if (d <= bestDistance && (best === null || d < bestDistance)) {
      best = name;
      bestDistance = d;
    }
  }
  if (best === null || known.includes(best)) return best;
  return SYNONYMS[best].find((name) => known.includes(name)) || null;
}

function checkKeys(options, known) {
  if (options === undefined || options === null) return {};
  if (typeof options !== 'object' || Array.isArray(options)) {
    throw new TypeError(`sticky-rs: options must be an object, got ${describe(options)}`);
  }
  for (const key of Object.keys(options)) {
    if (!known.includes(key)) {
      const meant = suggestion(key, known);
      throw new TypeError(
        meant
          ? `sticky-rs: unknown option "${key}": did you mean "${meant}"?`
          : `sticky-rs: unknown option "${key}" (known: ${known.join(', ')})`,
      );
    }
  }
  return options;
}

function host(name, value) {
  return unset(value) || value === '::' ? '' : ofType(name, value, 'string');
}

function backlog(name, value) {
  return unset(value) ? 511 : integer(name, value, 1, 2 ** 31 - 1);
}

/** `routeBy` and what goes with it. */
function routing(o) {
  const routeBy = unset(o.routeBy) ? 'address' : ofType('routeBy', o.routeBy, 'string').toLowerCase();
  if (!HEADER_NAME.test(routeBy)) {
    throw new TypeError(
      `sticky-rs: option "routeBy" must be 'address', 'sid', 'x-forwarded-for', 'proxy-protocol' or a header name, got ${describe(o.routeBy)}`,
    );
  }
  let trustedProxies = [];
  if (!unset(o.trustedProxies)) {
    if (!Array.isArray(o.trustedProxies) || !o.trustedProxies.every((e) => typeof e === 'string')) {
      throw new TypeError(
        `sticky-rs: option "trustedProxies" must be an array of addresses and CIDR ranges, got ${describe(o.trustedProxies)}`,
      );
    }
    const bad = native.invalidTrustedProxy(o.trustedProxies);
    if (bad !== null && bad !== undefined) {
      throw new TypeError(
        `sticky-rs: option "trustedProxies" has an entry that is neither an address nor a CIDR range: ${JSON.stringify(bad)}`,
      );
    }
    trustedProxies = o.trustedProxies;
  }
  // Session ids are read from every client (an id names a worker, it is no claim to believe).
  if (routeBy !== 'address' && routeBy !== 'sid' && trustedProxies.length === 0) {
    throw new TypeError(
      `sticky-rs: option "routeBy": ${JSON.stringify(routeBy)} needs "trustedProxies" (the proxies whose ${routeBy} data is believed)`,
    );
  }
  const peek = { peekLimit: count(o, 'peekLimit', 8192, 64, 64 * 1024), peekTimeout: ms(o, 'peekTimeout', 3000) };
  // Options that only matter behind a proxy, given without routeBy, are a mistake (a routeBy
  // lost in a config merge would silently route every client of the proxy to one worker).
  if (routeBy === 'address') {
    for (const name of ['trustedProxies', 'peekLimit', 'peekTimeout']) {
      if (!unset(o[name]) && !(name === 'trustedProxies' && trustedProxies.length === 0)) {
        throw new TypeError(
          `sticky-rs: option "${name}" has no effect with "routeBy": 'address' (the default); set "routeBy" to 'x-forwarded-for', 'proxy-protocol' or a header name, or remove "${name}"`,
        );
      }
    }
  }
  let loadBalancingMethod = 'least-connection';
  if (!unset(o.loadBalancingMethod)) {
    if (!BALANCING.includes(o.loadBalancingMethod)) {
      throw new TypeError(
        `sticky-rs: option "loadBalancingMethod" must be one of ${BALANCING.map((b) => `'${b}'`).join(', ')}, got ${describe(o.loadBalancingMethod)}`,
      );
    }
    if (routeBy !== 'sid') {
      throw new TypeError(
        `sticky-rs: option "loadBalancingMethod" only places new Socket.IO sessions with "routeBy": 'sid'; set it or remove "loadBalancingMethod"`,
      );
    }
    loadBalancingMethod = o.loadBalancingMethod;
  }
  return { routeBy, trustedProxies, loadBalancingMethod, node: nodeName(o, routeBy), ...peek };
}

/** `node`: this server's name in its Socket.IO session ids (several hosts behind a balancer). */
function nodeName(o, routeBy) {
  if (unset(o.node)) return null;
  if (typeof o.node !== 'string') {
    throw new TypeError(`sticky-rs: option "node" must be a string of 1 to 16 characters [a-z0-9], got ${describe(o.node)}`);
  }
  if (!/^[a-z0-9]{1,16}$/.test(o.node)) {
    throw new RangeError(`sticky-rs: option "node" must be 1 to 16 characters [a-z0-9], got ${describe(o.node)}`);
  }
  if (routeBy !== 'sid') {
    throw new TypeError(
      `sticky-rs: option "node" names this server in Socket.IO session ids, which only "routeBy": 'sid' routes by; set "routeBy": 'sid' or remove "node"`,
    );
  }
  return o.node;
}

/** The addresses to listen on: `listeners: [{ port, host, backlog }]`, or one from port/host. */
function listenersOf(o, single) {
  if (unset(o.listeners)) return [single];
  if (!unset(o.port) || !unset(o.host)) {
    throw new TypeError('sticky-rs: give either "listeners" or "port"/"host", not both');
  }
  if (!Array.isArray(o.listeners) || o.listeners.length === 0 || o.listeners.length > 255) {
    throw new TypeError(
      `sticky-rs: option "listeners" must be an array of 1 to 255 { port, host, backlog } objects, got ${describe(o.listeners)}`,
    );
  }
  return o.listeners.map((l, i) => {
    if (!l || typeof l !== 'object') throw new TypeError(`sticky-rs: option "listeners[${i}]" must be an object, got ${describe(l)}`);
    for (const key of Object.keys(l)) {
      if (!['port', 'host', 'backlog'].includes(key)) throw new TypeError(`sticky-rs: unknown option "listeners[${i}].${key}"`);
    }
    return {
      port: port(`listeners[${i}].port`, l.port, 0),
      host: host(`listeners[${i}].host`, l.host),
      backlog: backlog(`listeners[${i}].backlog`, l.backlog),
    };
  });
}

/** A duration in ms; falsy means the default, as `hardShutdownDelay` in sticky-cluster. */
function ms(o, name, fallback) {
  return count(o, name, fallback, 1, MAX_MS);
}

/**
 * `debug`: false, true (lifecycle lines) or 'connections' (also one line per connection); the
 * DEBUG environment variable turns either on as well (see log.js).
 */
function debugLevel(value) {
  if (!unset(value) && value !== true && value !== 'connections') {
    throw new TypeError(`sticky-rs: option "debug" must be true, false or 'connections', got ${describe(value)}`);
  }
  const connections = value === 'connections' || debugEnabled('sticky-rs:connection');
  return { debug: !unset(value) || debugEnabled('sticky-rs:lifecycle'), debugConnections: connections };
}

/** `respawnDelay` doubles up to `maxRespawnDelay`: a first delay above the cap is a mistake. */
function respawnDelays(o) {
  const respawnDelay = ms(o, 'respawnDelay', 100);
  const maxRespawnDelay = ms(o, 'maxRespawnDelay', 10_000);
  if (respawnDelay > maxRespawnDelay) {
    throw new RangeError(
      `sticky-rs: option "respawnDelay" (${respawnDelay}) must not be greater than "maxRespawnDelay" (${maxRespawnDelay}${unset(o.maxRespawnDelay) ? ', the default' : ''}): raise "maxRespawnDelay" or lower "respawnDelay"`,
    );
  }
  return { respawnDelay, maxRespawnDelay };
}

/**
 * Who picks each connection's worker: the kernel (a SO_REUSEPORT group whose program computes
 * the same slot; workers accept themselves) or the primary's router. `auto` is the kernel where
 * it can work (Linux, routing by the connection's own address), the router elsewhere; if the
 * kernel refuses the group at start (`dispatchFallback`), the router takes over.
 */
function dispatchOf(o, routeBy) {
  const asked = o.dispatch ? ofType('dispatch', o.dispatch, 'string') : 'auto';
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
  if (whyNot) return { dispatch: 'primary', dispatchWhy: `dispatch "auto": kernel dispatch cannot work here: ${whyNot}` };
  return { dispatch: 'kernel', dispatchWhy: 'dispatch "auto": Linux, routing by address', dispatchFallback: true };
}

/** The options both APIs share. */
function common(o) {
  const hash = unset(o.hash) ? 'djb2' : ofType('hash', o.hash, 'string');
  if (!HASHES.includes(hash)) {
    throw new TypeError(`sticky-rs: option "hash" must be one of ${HASHES.join(', ')}, got ${describe(hash)}`);
  }
  const routes = routing(o);
  return {
    host: host('host', o.host),
    backlog: backlog('backlog', o.backlog),
    ...routes,
    ...dispatchOf(o, routes.routeBy),
    ...debugLevel(o.debug),
    prefix: o.prefix ? ofType('prefix', o.prefix, 'string') : DEFAULT_PREFIX,
    // 0 is a real limit here (nothing waits for a worker); the other falsy values are unset.
    queueLimit: unset(o.queueLimit) && o.queueLimit !== 0 ? 1024 : integer('queueLimit', o.queueLimit, 0, 1 << 20),
    queueTimeout: ms(o, 'queueTimeout', 30_000),
    readyTimeout: ms(o, 'readyTimeout', 30_000),
    ...respawnDelays(o),
    respawnResetAfter: ms(o, 'respawnResetAfter', 30_000),
    hardShutdownDelay: ms(o, 'hardShutdownDelay', 60_000),
    // A crash loop ends: more exits of one slot's workers than this within restartWindow shut
    // the primary down with exit code 1 (Infinity: never).
    maxRestarts: o.maxRestarts === Infinity ? Infinity : count(o, 'maxRestarts', 10, 1, 1_000_000),
    restartWindow: ms(o, 'restartWindow', 60_000),
    hash,
  };
}

// Signals the primary handles otherwise, or that cannot be caught.
const TAKEN_SIGNALS = ['SIGINT', 'SIGTERM', 'SIGHUP', 'SIGKILL', 'SIGSTOP'];

/** Upgrade (issue 22): `upgradeSignal` (opt-in: nodemon sends SIGUSR2 and expects an exit), `upgradeExecPath`, `pidFile`. */
function upgradeOptions(o) {
  const signal = unset(o.upgradeSignal) ? null : ofType('upgradeSignal', o.upgradeSignal, 'string');
  if (signal && (!Object.hasOwn(os.constants.signals, signal) || TAKEN_SIGNALS.includes(signal))) {
    throw new RangeError(
      `sticky-rs: option "upgradeSignal" must be a signal name other than ${TAKEN_SIGNALS.join(', ')} (e.g. "SIGUSR2"), got ${describe(signal)}`,
    );
  }
  return {
    upgradeSignal: signal,
    upgradeExecPath: unset(o.upgradeExecPath) ? null : ofType('upgradeExecPath', o.upgradeExecPath, 'string'),
    pidFile: unset(o.pidFile) ? null : ofType('pidFile', o.pidFile, 'string'),
  };
}

function defaultErrorHandler(err) {
  // sticky-cluster's handler; the error's stack holds no frame of sticky-rs (see errors.js).
  console.log(err);
  process.exit(1);
}

/** `require('sticky-rs')(startFn, options)`: sticky-cluster 0.3.5's options and defaults. */
function clusterOptions(startFn, options) {
  if (typeof startFn !== 'function') {
    throw new TypeError(`sticky-rs: the first argument must be a function (callback => callback(server)), got ${describe(startFn)}`);
  }
  const o = checkKeys(options, CLUSTER_KEYS);
  const userEnv = unset(o.env) ? null : ofType('env', o.env, 'function');
  const shared = common(o);
  return {
    ...shared,
    ...upgradeOptions(o),
    slots: count(o, 'concurrency', os.availableParallelism(), 1, 1024),
    listeners: listenersOf(o, { port: unset(o.port) ? 8080 : port('port', o.port, 1), host: shared.host, backlog: shared.backlog }),
    env: userEnv || ((index) => ({ stickycluster_worker_index: index })),
    errorHandler: unset(o.errorHandler) ? defaultErrorHandler : ofType('errorHandler', o.errorHandler, 'function'),
  };
}

/** `require('sticky-rs').listen(server, port, options)`: sticky-session 1.x. */
function sessionOptions(server, portValue, options) {
  if (!server || typeof server.emit !== 'function' || typeof server.on !== 'function') {
    throw new TypeError(`sticky-rs: listen() needs a server (http.Server, https.Server or net.Server), got ${describe(server)}`);
  }
  const o = checkKeys(options, SESSION_KEYS);
  if (!unset(o.env) && (typeof o.env !== 'object' || Array.isArray(o.env))) {
    throw new TypeError(`sticky-rs: option "env" must be an object, got ${describe(o.env)}`);
  }
  const env = o.env || {};
  const shared = common(o);
  return {
    ...shared,
    ...upgradeOptions(o),
    slots: count(o, 'workers', os.availableParallelism(), 1, 1024),
    listeners: [{ port: port('port', portValue, 0), host: shared.host, backlog: shared.backlog }],
    env: () => env,
    errorHandler: null,
  };
}

/**
 * `setupMaster(httpServer, { loadBalancingMethod })` (@socket.io/sticky): routeBy 'sid'; the
 * user forks the workers, so the slots are places for up to `maxWorkers` of them (default 64;
 * a session id encodes at most 4096). The listen arguments come later, with listen().
 */
function socketioOptions(httpServer, options) {
  if (!httpServer || typeof httpServer.listen !== 'function' || typeof httpServer.emit !== 'function') {
    throw new TypeError(`sticky-rs: setupMaster() needs the primary's http.Server, got ${describe(httpServer)}`);
  }
  const o = checkKeys(options, ['maxWorkers', ...SHARED_KEYS]);
  if (!unset(o.routeBy) && o.routeBy !== 'sid') {
    throw new TypeError(`sticky-rs: setupMaster() routes by Socket.IO session ("routeBy": 'sid'), got "routeBy": ${describe(o.routeBy)}`);
  }
  const shared = common({ ...o, routeBy: 'sid' });
  return {
    ...shared,
    slots: count(o, 'maxWorkers', 64, 1, 4096),
    adopt: true,
    env: () => ({}),
    errorHandler: null,
  };
}

module.exports = { clusterOptions, sessionOptions, socketioOptions };
