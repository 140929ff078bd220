'use strict';
// One worker process's life as the primary sees it. A policy object with no I/O: the Primary
// forks, sends, kills and owns the timers; this says which state the worker is in and what an
// event means, so every decision can be tested without a process (__test__/worker-process.test.js).
//
// States, each entered by an event:
//   forked      forked by sticky-rs for a slot; its app is starting              (new, sticky())
//   unplaced    forked by the user (setupMaster); no slot until setupWorker()    (new, adopted)
//   handedOver  its servers are handed over and its channel sent                 (handedOver)
//   ready       it said hello on its channel: the router delivers to it          (ready)
//   retiring    asked to finish its connections and exit                         (retire)
//   exited      gone                                                             (exited)

// Which state may follow which.
const NEXT = {
  forked: ['handedOver', 'retiring', 'exited'],
  unplaced: ['forked', 'retiring', 'exited'],
  handedOver: ['ready', 'retiring', 'exited'],
  ready: ['retiring', 'exited'],
  retiring: ['exited'],
  exited: [],
};

// Signals that ask a process to stop (a person, a supervisor), not a fault.
const STOP_SIGNALS = ['SIGINT', 'SIGTERM', 'SIGHUP'];

class WorkerProcess {
  /**
   * @param {object} worker the cluster Worker
   * @param {{ slot: number|null, seq: number, now: number, adopted?: boolean }} at
   */
  constructor(worker, { slot, seq, now, adopted = false }) {
    this.worker = worker;
    /** The slot it serves; null while an adopted worker waits for its setupWorker(). */
    this.slot = slot;
    /** Its number in the order workers started: its channel id. */
    this.seq = seq;
    this.bornAt = now;
    this.adopted = adopted;
    this.state = adopted ? 'unplaced' : 'forked';
    /** Its channel once opened: `{ id, fd }`. */
    this.channel = null;
    /** It said it was stopping (closed its server, or a signal of its own), and when. */
    this.notice = false;
    this.stoppingAt = null;
    /** Connections it still had open, shutting down (its `open:<n>` notice). */
    this.open = 0;
    /** Its uncaught error before it was ready, if it sent one. */
    this.failure = null;
    /** Killed for not becoming ready within readyTimeout (warned about already). */
    this.killedNotReady = false;
    /** The state it was in when it exited. */
    this.exitedFrom = null;
    /** What was sent to it with a handle (closed if it dies before taking them). */
    this.sent = [];
    // The Primary's timers for it: readyTimeout (or, adopted, the setupWorker warning), and
    // hardShutdownDelay once retired.
    this.readyTimer = null;
    this.killTimer = null;
    // Settles true once it is ready, false if it exits first.
    this.whenReady = new Promise((resolve) => {
      this.settleReady = resolve;
    });
  }

  /** Moves to `next`; false (nothing changes) if the header does not allow it. */
  to(next) {
    if (!NEXT[this.state].includes(next)) return false;
    this.state = next;
    if (next === 'ready') this.settleReady(true);
    if (next === 'exited') this.settleReady(false);
    return true;
  }

  /** An adopted worker ran setupWorker() and takes `slot`. */
  placed(slot) {
    if (!this.to('forked')) return false;
    this.slot = slot;
    return true;
  }

  /**
   * Its servers are handed over (its `ready` notice): true if it is to get its channel now. A
   * retired worker (a reload's old one whose notice came late) gets none: its hello would take
   * the slot back from its replacement.
   */
  handedOver() {
    return this.to('handedOver');
  }

  /** The router delivers to it: true the first time. */
  ready() {
    return this.to('ready');
  }

  /** Whether the router delivers to it. */
  get isReady() {
    return this.state === 'ready';
  }

  /** It is asked to finish and exit: true the first time. */
  retire() {
    return this.to('retiring');
  }

  /** Whether the primary asked it to go (it is retiring, or exited while retiring). */
  get retired() {
    return this.state === 'retiring' || this.exitedFrom === 'retiring';
  }

  /** It said it is stopping (`closing` or `stopping` notice) at `now`. */
  stopping(now, own) {
    this.notice = true;
    if (own) this.stoppingAt = now;
  }

  /** It exited; false if it had exited already. */
  exited() {
    const from = this.state;
    if (!this.to('exited')) return false;
    this.exitedFrom = from;
    return true;
  }

  /**
   * Whether its exit with `code`/`signal` was asked for: it told the primary it was stopping (it
   * closed its server, or got SIGINT/SIGTERM of its own), the primary retired it, or a stop
   * signal's default action ended it before it set up its handlers. Not: a crash (exit code other
   * than 0 without a notice), SIGKILL (readyTimeout, the OOM killer), SIGSEGV...
   */
  exitAsked(code, signal) {
    if (this.retired) return true;
    if (signal) return STOP_SIGNALS.includes(signal);
    return this.notice === true && code === 0;
  }

  /**
   * Stopped by a signal (maybe Ctrl-C, whose SIGINT to the primary may still be on its way): how
   * long the primary waits, from `now`, before it acts on an asked-for exit.
   */
  holdAfterExit(asked, signal, now, hold) {
    if (!asked || (this.stoppingAt === null && !signal)) return 0;
    return (this.stoppingAt === null ? now : this.stoppingAt) + hold - now;
  }
}

module.exports = { WorkerProcess };
