'use strict';
// Errors of the primary's listen step, shaped like Node's own, and user errors without
// sticky-rs's own stack frames.
const path = require('node:path');
const { nodeError } = require('./binding');

const OWN = [path.join(__dirname, path.sep), path.join(__dirname, '..', 'index.js'), path.join(__dirname, '..', 'index.mjs')];

/**
 * An expected user error (an invalid option, a port in use) reads like Node's own: the message,
 * then the caller's frames, none of sticky-rs's internals (nor Node's). Returns `err`.
 */
function withoutOwnFrames(err) {
  if (!err || typeof err.stack !== 'string') return err;
  const ours = (line) => /^\s+at /.test(line) && (OWN.some((p) => line.includes(p)) || /node:internal\//.test(line));
  err.stack = err.stack
    .split('\n')
    .filter((line) => !ours(line))
    .join('\n');
  return err;
}

// libuv's UV_EAI_NONAME / UV_EAI_AGAIN, the errno Node gives these codes.
const LOOKUP_ERRNO = { ENOTFOUND: -3008, EAI_AGAIN: -3001 };

/**
 * A failed listen: a host that does not resolve (the addon's error has `syscall: 'getaddrinfo'`)
 * becomes Node's `getaddrinfo ENOTFOUND <host>` (code, errno, syscall, hostname); the rest
 * `listen EADDRINUSE: ...`.
 */
function listenError(err, listeners) {
  if (err.syscall !== 'getaddrinfo') return withoutOwnFrames(nodeError(err, 'listen', listeners));
  const { code, hostname } = err;
  const out = new Error(`getaddrinfo ${code} ${hostname}`);
  return withoutOwnFrames(Object.assign(out, { errno: LOOKUP_ERRNO[code], code, syscall: 'getaddrinfo', hostname }));
}

/**
 * What a wrong value is, for "got ..." in an error message: a string quoted, a number as
 * itself, an object by its class (`an object of class Server`), so the reader sees what was
 * passed.
 */
function describe(value) {
  if (typeof value === 'string') return JSON.stringify(value);
  if (typeof value === 'function') return 'a function';
  if (value === null || typeof value !== 'object') return String(value);
  if (Array.isArray(value)) return 'an array';
  const proto = Object.getPrototypeOf(value);
  return proto === null || proto === Object.prototype
    ? 'an object of class Object'
    : `an object of class ${value.constructor ? value.constructor.name : 'null'}`;
}

module.exports = { describe, listenError, withoutOwnFrames };
