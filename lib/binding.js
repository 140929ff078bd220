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
 * Turns an addon error (`EADDRINUSE: Address already in use`) into an error of this realm shaped
 * like Node's own: `listen EADDRINUSE: address already in use :::8080`, with code/errno/syscall.
 */
function nodeError(err, syscall, listeners) {
  const which = /^(.*) \[listener (\d+)\]$/s.exec(err.message);
  const message = which ? which[1] : err.message;
  const { host, port } = listeners[which ? Number(which[2]) : 0];
  const address = host || '::';
  const match = /^(E[A-Z0-9]+): (.*)$/s.exec(message);
  const code = match ? match[1] : 'ERR_STICKY_RS';
  const text = match ? match[2].charAt(0).toLowerCase() + match[2].slice(1) : err.message;
  const out = new Error(match ? `${syscall} ${code}: ${text} ${address}:${port}` : message);
  out.code = code;
  if (match && os.constants.errno[code] !== undefined) out.errno = -os.constants.errno[code];
  out.syscall = syscall;
  return Object.assign(out, { address, port });
}

module.exports = { native, nodeError };
