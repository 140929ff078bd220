'use strict';
// What sticky-rs writes to stderr.
// - Warnings, always on: what an operator needs to see why clients fail (a worker killed for not
//   becoming ready, a crash loop, connections dropped or refused, a failed listener, workers
//   forked behind sticky-rs's back). One line each with a timestamp; each kind (per slot) at most
//   once per WARN_INTERVAL, later occurrences are counted into the next line.
// - Debug lines, off by default: lifecycle (`debug: true`, or DEBUG=sticky-rs:lifecycle) and one
//   line per connection (`debug: 'connections'`, or DEBUG=sticky-rs:connection). DEBUG uses the
//   `debug` package's syntax (what Express and Socket.IO users already set: `DEBUG=sticky-rs*`,
//   `DEBUG=socket.io*,sticky-rs:*`, `-name` excludes) without depending on it.

const WARN_INTERVAL = 10_000;

/** Whether DEBUG (the `debug` package's syntax) enables `namespace`. */
function debugEnabled(namespace, spec = process.env.DEBUG || '') {
  let enabled = false;
  for (const name of spec.split(/[\s,]+/)) {
    if (!name) continue;
    const negated = name.startsWith('-');
    const pattern = new RegExp(`^${(negated ? name.slice(1) : name).replace(/[.+?^${}()|[\]\\]/g, '\\$&').replace(/\*/g, '.*')}$`);
    if (!pattern.test(namespace)) continue;
    if (negated) return false;
    enabled = true;
  }
  return enabled;
}

/** A debug line, in the same shape as the native router's own. */
function log(role, message) {
  process.stderr.write(`[sticky-rs] ${role}: ${message}\n`);
}

/** A warning line, always written. `message` may start with "sticky-rs: " (an Error's text). */
function warn(message) {
  process.stderr.write(`${new Date().toISOString()} [sticky-rs] warning: ${message.replace(/^sticky-rs: /, '')}\n`);
}

/** A line about what the primary does on an operator's signal (SIGHUP's meaning), always written. */
function notice(message) {
  process.stderr.write(`${new Date().toISOString()} [sticky-rs] ${message.replace(/^sticky-rs: /, '')}\n`);
}

/**
 * Rate-limited warnings: `note(key, n, say)` counts `n` occurrences of `key`; `say(total)` makes
 * the line. The first occurrence is said at once, later ones at most once per WARN_INTERVAL
 * (`flush()`, called periodically, says what was held back).
 */
class Warnings {
  constructor(interval = WARN_INTERVAL) {
    this.interval = interval;
    this.kinds = new Map();
  }

  note(key, n, say) {
    if (n <= 0) return;
    let kind = this.kinds.get(key);
    if (!kind) {
      kind = { pending: 0, saidAt: -Infinity, say };
      this.kinds.set(key, kind);
    }
    kind.pending += n;
    kind.say = say;
    this.sayIfDue(kind, Date.now());
  }

  flush() {
    const now = Date.now();
    for (const kind of this.kinds.values()) this.sayIfDue(kind, now);
  }

  sayIfDue(kind, now) {
    if (kind.pending === 0 || now - kind.saidAt < this.interval) return;
    warn(kind.say(kind.pending));
    kind.pending = 0;
    kind.saidAt = now;
  }
}

module.exports = { log, warn, notice, Warnings, debugEnabled, WARN_INTERVAL };
