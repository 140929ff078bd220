'use strict';
// One slot's life: which worker serves it, and what happens when that worker is ready, exits or
// is replaced. A policy object with no I/O (the Primary forks, kills and sets the timers), so
// every decision can be tested without a process.
//
// States, each entered by an event:
//   starting   a worker was forked for the slot and is not ready yet        (forked)
//   ready      the slot's worker said hello: the router delivers to it       (ready, replaced)
//   replacing  a replacement was forked; the current worker still serves     (replaceStarted)
//   backoff    the slot has no worker; a respawn waits `delay` ms           (exited)
//   closed     the primary shuts down: nothing is forked for it any more     (close)

class Slot {
  /**
   * @param {number} index
   * @param {{ respawnDelay: number, maxRespawnDelay: number, respawnResetAfter: number,
   *           maxRestarts: number, restartWindow: number }} policy
   */
  constructor(index, policy) {
    this.index = index;
    this.policy = policy;
    this.state = 'starting';
    /** The WorkerProcess (lib/worker-process.js) serving the slot, or null. */
    this.current = null;
    /** The next respawn's back-off. */
    this.delay = policy.respawnDelay;
    /** When its workers exited without being asked, within restartWindow. */
    this.exits = [];
    /** Exits nobody asked for, in all. */
    this.restarts = 0;
  }

  /** A worker was forked to serve the slot (at start or after a back-off). */
  forked(proc) {
    this.current = proc;
    if (this.state !== 'closed') this.state = 'starting';
  }

  /** `proc` said hello. True if it serves the slot (a replacement is not the slot's yet). */
  ready(proc) {
    if (proc !== this.current) return false;
    if (this.state === 'starting') this.state = 'ready';
    return true;
  }

  /** A replacement is about to be forked; false if one is under way already or closed. */
  replaceStarted() {
    if (this.state === 'replacing' || this.state === 'closed') return false;
    this.replacingFrom = this.state;
    this.state = 'replacing';
    return true;
  }

  /**
   * The replacement `next` is ready and serves the slot now; the back-off starts over. Returns
   * the worker it replaced (to retire), if any.
   */
  replaced(next) {
    const previous = this.current;
    this.current = next;
    this.delay = this.policy.respawnDelay;
    if (this.state !== 'closed') this.state = 'ready';
    return previous === next ? null : previous;
  }

  /**
   * The replacement did not become ready (or the shutdown came first). Returns true if the slot
   * is left with no worker and needs a respawn.
   */
  replaceEnded() {
    if (this.state !== 'replacing') return false;
    if (this.current) {
      this.state = this.current.isReady ? 'ready' : 'starting';
      return false;
    }
    this.state = 'backoff';
    return true;
  }

  /**
   * `proc` exited at `now`; `asked` if it was asked to (see WorkerProcess#exitAsked). Returns
   * what follows (`action`, not `then`: an object with a `then` would be a thenable):
   * - `{ action: 'nothing' }`: it was not the slot's worker (retired by a reload), or closed;
   * - `{ action: 'replacement' }`: a replacement under way takes the slot;
   * - `{ action: 'respawn', delay }`: fork again after `delay` ms (growing while workers crash);
   * - `{ action: 'give-up' }`: more than maxRestarts exits within restartWindow.
   * With `exits` (within the window) and `lived` (ms) for the caller's warnings. An asked-for
   * exit is never counted: `respawn` at once (delay 0) or `replacement`, with `asked`.
   */
  exited(proc, now, asked = false) {
    if (this.state === 'closed' || proc !== this.current) return { action: 'nothing' };
    this.current = null;
    const lived = now - proc.bornAt;
    // Asked to go (a signal of its own, server.close(), sticky-session's retire): no failure, so
    // not counted toward maxRestarts, and its slot gets a worker again at once.
    if (asked) {
      if (this.state === 'replacing') return { action: 'replacement', asked, lived };
      this.state = 'backoff';
      return { action: 'respawn', delay: 0, asked, lived };
    }
    // The slot's own worker went without being asked (retired workers are no longer current).
    this.exits = this.exits.filter((at) => now - at < this.policy.restartWindow);
    this.exits.push(now);
    this.restarts += 1;
    if (this.exits.length > this.policy.maxRestarts) return { action: 'give-up', exits: this.exits.length, lived };
    if (this.state === 'replacing') return { action: 'replacement', exits: this.exits.length, lived };
    this.state = 'backoff';
    return { action: 'respawn', delay: this.backoff(lived), exits: this.exits.length, lived };
  }

  /** The wait before the next respawn: doubles while workers crash, resets after a long life. */
  backoff(lived) {
    if (lived >= this.policy.respawnResetAfter) this.delay = this.policy.respawnDelay;
    const delay = this.delay;
    this.delay = Math.min(this.delay * 2, this.policy.maxRespawnDelay);
    return delay;
  }

  /**
   * Kernel dispatch: a service none of whose workers ever became ready (every one fails at
   * start-up: a bad deploy) gives up once it has tried for the longest a client may wait for a
   * worker (min(queueTimeout, readyTimeout) since the start), not only past maxRestarts: the
   * kernel keeps accepting for the slots meanwhile, and nothing times those clients out (the
   * router's queueTimeout does with dispatch 'primary'). `maxRestarts: Infinity` never gives up.
   */
  static givesUpNeverReady(policy, { startedAt, now, anyReady }) {
    if (anyReady || policy.maxRestarts === Infinity || policy.dispatch !== 'kernel') return false;
    return now - startedAt >= Math.min(policy.queueTimeout, policy.readyTimeout);
  }

  /** The primary shuts down. */
  close() {
    this.state = 'closed';
  }
}

module.exports = { Slot };
