'use strict';
// Loads the native addon, with errors that say what to do.
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');

if (process.platform === 'win32') {
  throw new Error('sticky-rs: unsupported platform win32: it needs Unix descriptor passing (Linux or macOS)');
}

const root = path.resolve(__dirname, '..');

function load() {
  try {
    return require(path.join(root, 'sticky_rs.node'));
  } catch (cause) {
    let reason = '';
    try {
      reason = fs.readFileSync(path.join(root, 'build-error.txt'), 'utf8').trim();
    } catch {}
    const err = new Error(
      'sticky-rs: the native addon is not built' + (reason ? `: ${reason}` : '') +
        '. It is compiled from source when the package is installed and needs Rust (https://rustup.rs);' +
        ' run `npm rebuild sticky-rs` (or `npm run build` in its folder).',
      { cause },
    );
    err.code = 'STICKY_RS_NOT_BUILT';
    throw err;
  }
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
