'use strict';
// Engine.io session ids that name their worker's slot (`routeBy: 'sid'`): the JavaScript mirror
// of src/sid.rs. An id is 20 base64url characters; the first two are the slot (its "place"),
// the other 18 are random.
const crypto = require('node:crypto');

// base64url in value order.
const ALPHABET = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_';
// The id in a request's query, as the router reads it off the request line.
const SID_PARAM = /[?&]sid=([A-Za-z0-9_-]{20})(?:[&#]|$)/;

/** A session id of `place`: 2 characters of place, 18 of CSPRNG output (108 bits). */
function sessionId(place) {
  const random = crypto.randomBytes(14).toString('base64url').slice(0, 18);
  return ALPHABET[(place >> 6) & 63] + ALPHABET[place & 63] + random;
}

/** The place named by the session id in request target `url`, or -1 if it carries none. */
function placeInUrl(url) {
  const match = SID_PARAM.exec(url);
  if (!match) return -1;
  return ALPHABET.indexOf(match[1][0]) * 64 + ALPHABET.indexOf(match[1][1]);
}

module.exports = { sessionId, placeInUrl };
