'use strict';
// Debug lines (`debug: true`), in the same place and shape as the native router's own.
function log(role, message) {
  process.stderr.write(`[sticky-rs] ${role}: ${message}\n`);
}
module.exports = { log };
