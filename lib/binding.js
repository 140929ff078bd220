'use strict';
// Loads the native addon: a build from source in the package first (development, and the install
// fallback), then the prebuilt platform package; otherwise one error that says what to do.
const fs = require('node:fs');
const os = require('node:os');
const { LOCAL_ADDON, currentKey, loadPlatformPackage, notInstalledMessage } = require('./platform');

if (process.platform === 'win32') {
  throw new Error('sticky-rs: unsupported platform win32: it needs Unix descriptor passing (Linux or macOS)');
}

function load() {
  const tried = [];
  if (fs.existsSync(LOCAL_ADDON)) {
    try {
      return require(LOCAL_ADDON);
    } catch (err) {
      tried.push(`${LOCAL_ADDON} did not load: ${err.message.split('\n')[0]}`);
    }
  } else {
    tried.push(`${LOCAL_ADDON}: not built from source`);
  }
  const key = currentKey();
  const prebuilt = loadPlatformPackage(key);
  if (prebuilt.addon) return prebuilt.addon;
  tried.push(prebuilt.reason);
  const err = new Error(notInstalledMessage(key, tried));
  err.code = 'STICKY_RS_NO_ADDON';
  throw err;
}

const native = load();

/**
 * Turns an error of the router's start (`code` EADDRINUSE, with `errno`, `description` and the
 * index of the `listener` that could not be bound) into an error of this realm shaped like
 * Node's own: `listen EADDRINUSE: address already in use :::8080`, with code/errno/syscall.
 * An error without `errno` keeps its message, with the code `ERR_STICKY_RS`.
 */
function nodeError(err, syscall, listeners) {
  const { host, port } = listeners[err.listener ?? 0];
  const address = host || '::';
  const fromOs = Number.isInteger(err.errno) && typeof err.code === 'string';
  const code = fromOs ? err.code : 'ERR_STICKY_RS';
  const out = new Error(fromOs ? `${syscall} ${code}: ${err.description} ${address}:${port}` : err.message);
  out.code = code;
  if (fromOs && os.constants.errno[code] !== undefined) out.errno = -os.constants.errno[code];
  out.syscall = syscall;
  return Object.assign(out, { address, port });
}

module.exports = { native, nodeError };
