'use strict';
// Engine.io session ids that name their worker's slot (`routeBy: 'sid'`): the JavaScript mirror
// of src/key/sid.rs. An id is 20 base64url characters; the first two are the slot (its "place"),
// the other 18 are random. With the `node` option it starts with `<node>.` (the host's name).
const crypto = require('node:crypto');

// base64url in value order.
const ALPHABET = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_';
// The id in a request's query, as the router reads it off the request line.
const SID_PARAM = /[?&]sid=(?:([a-z0-9]{1,16})\.)?([A-Za-z0-9_-]{20})(?:[&#]|$)/;

/**
 * A session id of `place` (and `node`, if named): 2 characters of place, 18 of CSPRNG output
 * (108 bits).
 */
function sessionId(place, node) {
  const random = crypto.randomBytes(14).toString('base64url').slice(0, 18);
  return (node ? `${node}.` : '') + ALPHABET[(place >> 6) & 63] + ALPHABET[place & 63] + random;
}

/** The session a request target names: { node (or null), place }, or null if none. */
function sessionInUrl(url) {
  const match = SID_PARAM.exec(url);
  if (!match) return null;
  return { node: match[1] || null, place: ALPHABET.indexOf(match[2][0]) * 64 + ALPHABET.indexOf(match[2][1]) };
}

module.exports = { sessionId, sessionInUrl };
