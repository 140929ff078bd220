'use strict';
// Errors of the primary's listen step, shaped like Node's own.
const { nodeError } = require('./binding');

// libuv's UV_EAI_NONAME / UV_EAI_AGAIN, the errno Node gives these codes.
const LOOKUP_ERRNO = { ENOTFOUND: -3008, EAI_AGAIN: -3001 };

/**
 * A failed listen: a host that does not resolve becomes Node's
 * `getaddrinfo ENOTFOUND <host>` (code, errno, syscall, hostname); the rest `listen EADDRINUSE: ...`.
 */
function listenError(err, listeners) {
  const lookup = /^(ENOTFOUND|EAI_AGAIN) getaddrinfo (.*)$/s.exec(err.message);
  if (!lookup) return nodeError(err, 'listen', listeners);
  const [, code, hostname] = lookup;
  const out = new Error(`getaddrinfo ${code} ${hostname}`);
  return Object.assign(out, { errno: LOOKUP_ERRNO[code], code, syscall: 'getaddrinfo', hostname });
}

module.exports = { listenError };
