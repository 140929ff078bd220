'use strict';
// The cluster primary: starts the native router, forks one worker per slot, gives each worker
// its channel once its server is handed over, replaces workers that exit or hang, reloads them
// one slot at a time, and shuts down gracefully.
const cluster = require('node:cluster');
const { EventEmitter } = require('node:events');
const fs = require('node:fs');
const net = require('node:net');
const { native } = require('./binding');
const { listenError } = require('./errors');
const { log, warn, notice, Warnings } = require('./log');
const { startedOnTerminal, terminalAlive, ignoreDeadTerminal, exitHungUp } = require('./terminal');
const {
  READY,
  CHANNEL,
  LISTEN,
  PLACE,
  SHUTDOWN,
  CLOSING,
  STOPPING,
  OPEN,
  WORKER_INDEX,
  NODE_NAME,
  INTERNAL,
  FAILED,
  noticeType,
} = require('./messages');
const internals = require('./node-internals');
const { Slot } = require('./slot');
const strays = require('./strays');
const { watchCounters } = require('./watch');
const { WorkerProcess } = require('./worker-process');
const handover = require('./upgrade'); // upgrade (issue 22)

// A worker stopping on a signal of its own: how long the primary waits before it replaces it.
// Ctrl-C signals the whole group, and the worker's notice can arrive before the primary's own
// SIGINT (Node does not say who sent a signal): if the primary is signalled meanwhile, nothing
// is forked.
const SIGNAL_HOLD = 100;
// setupMaster: a worker of the user's still without setupWorker() this long after it started is
// warned about (at most readyTimeout): its clients are waiting meanwhile.
const ADOPT_WARN_AFTER = 5000;
// A shutdown still waiting for connections this long after it began says so (within 1 s).
const WAITING_AFTER = 700;

// The primary's own life (`phase`), each entered by an event:
//   idle          constructed                                                   (new)
//   running       the router listens; workers are forked and replaced           (start)
//   shuttingDown  no new worker; each slot's workers retire once it drained     (shutdown)
//   finished      every worker exited (or was killed), the router is closed      (finish)
class Primary extends EventEmitter {
  constructor(options) {
    super();
    this.options = options;
    this.phase = 'idle';
    /** The native router (accepts, routes, holds the kernel groups); null until started. */
    this.router = null;
    /** One Slot (lib/slot.js) per worker index: who serves it, what happens next. */
    this.slots = [];
    /** Per slot: the pending respawn's timer, and the replacement under way (a promise). */
    this.respawnTimers = [];
    this.replacements = [];
    /** One WorkerProcess (lib/worker-process.js) per live worker, by its cluster Worker. */
    this.processes = new Map();
    // Numbers the workers in the order they start: their channel ids, so that the router prefers
    // a worker's replacement over it whichever of the two hands its server over first.
    this.started = 0;
    this.startedAt = null;
    /** Some worker was ready once (see Slot.givesUpNeverReady). */
    this.everReady = false;
    /** The "listening on" line was printed. */
    this.announced = false;
    /** The reload under way, and the one asked for meanwhile (promises). */
    this.reloading = null;
    this.reloadAgain = null;
    this.warnings = new Warnings();
    // Upgrade (issue 22, lib/upgrade.js): another primary holds the same listening sockets (the
    // new one after a hand-over, the old one until it exits); the upgrade under way; the pipe to
    // the old primary.
    this.sharedSockets = false;
    this.upgrading = null;
    this.control = null;
    /** Start-up failures already printed (their first lines), with how often each came. */
    this.failures = new Map();
    /** Process signal handlers installed by start() (sticky()/listen(); not setupMaster). */
    this.signals = {};
    /** Whether the terminal this primary started on is its controlling one (see onSighup). */
    this.terminal = false;
    /** Stops watchCounters (lib/watch.js). */
    this.stopWatching = () => {};
    this.onForeignFork = null;
    this.warnedForeign = false;
    this.stopEndingStrays = null;
    // Shutdown: settles with the exit code once finished; the slots that drained; its timers.
    this.stopped = null;
    this.resolveStopped = null;
    this.drainedSlots = new Set();
    this.hardTimer = null;
    this.drainTimer = null;
    this.waitingTimer = null;
  }

  /** Shutting down or finished: nothing is forked or replaced any more. */
  get stopping() {
    return this.phase === 'shuttingDown' || this.phase === 'finished';
  }

  /**
   * Binds the listeners in the native router. Kernel dispatch chosen by `auto` that the kernel
   * refuses (an old kernel, a sandbox without SO_ATTACH_REUSEPORT_CBPF) falls back to the
   * router's own dispatch, and `stats().dispatch` and `debug` say so; a bind error (EADDRINUSE...)
   * is the same either way and is thrown.
   */
  openRouter() {
    const o = this.options;
    const open = (dispatch) =>
      new native.Router(
        {
          listeners: o.listeners,
          routeBy: o.routeBy,
          trustedProxies: o.trustedProxies,
          peekLimit: o.peekLimit,
          peekTimeout: o.peekTimeout,
          slots: o.slots,
          queueLimit: o.queueLimit,
          queueTimeout: o.queueTimeout,
          hash: o.hash,
          debug: o.debug,
          dispatch,
          debugConnections: o.debugConnections,
          loadBalancingMethod: o.loadBalancingMethod,
          node: o.node || undefined,
          inherited: o.inherited, // upgrade (issue 22): the old primary's sockets
        },
        (event) => this.onRouterEvent(event),
      );
    try {
      return open(o.dispatch);
    } catch (err) {
      if (!o.dispatchFallback) throw err;
      const router = open('primary');
      this.options = {
        ...o,
        dispatch: 'primary',
        dispatchWhy: `dispatch "auto": the kernel refused the SO_REUSEPORT group (${err.message})`,
      };
      // Not what the platform promises (an old kernel, a sandbox, qemu-user): said, always.
      warn(
        `kernel dispatch is not available here, the primary's router routes every connection (dispatch "primary"): ${this.options.dispatchWhy}`,
      );
      return router;
    }
  }

  /** Binds; on a bind error calls `onError` and forks nothing. */
  start(onError) {
    internals.selfCheck();
    this.options = handover.routerOptions(this.options); // upgrade (issue 22)
    try {
      this.router = this.openRouter();
    } catch (err) {
      onError(listenError(err, this.options.listeners));
      return this;
    }
    const o = this.options;
    this.phase = 'running';
    this.startedAt = Date.now();
    this.stopWatching = watchCounters(this);
    this.watchForeignForks();
    if (o.debug)
      log('primary', `listening on ${JSON.stringify(this.addresses())}, ${o.slots} slot(s), ${o.dispatch} dispatch (${o.dispatchWhy})`);
    for (let index = 0; index < o.slots; index++) {
      this.slots.push(new Slot(index, o));
      if (!o.adopt) this.slots[index].forked(this.fork(index));
    }
    if (o.adopt) {
      // setupMaster: the user forks (and re-forks) the workers; each one that ran setupWorker
      // takes a free slot. No signal handlers: the user's primary owns its lifecycle.
      for (const worker of Object.values(cluster.workers)) this.adopt(worker);
      return this;
    }
    // SIGHUP: a hang-up if started from a terminal that is gone now, else a reload.
    this.terminal = startedOnTerminal();
    this.signals = {
      SIGINT: () => this.exitAfter(this.shutdown()),
      SIGTERM: () => this.exitAfter(this.shutdown()),
      SIGHUP: () => this.onSighup(),
    };
    for (const [signal, handler] of Object.entries(this.signals)) process.on(signal, handler);
    handover.started(this); // upgrade (issue 22): upgradeSignal, pidFile, the old primary's pipe
    return this;
  }

  /** Upgrade (issue 22): a new primary takes over this one's sockets; see lib/upgrade.js. */
  upgrade() {
    return handover.upgrade(this);
  }

  /**
   * SIGHUP. Its terminal closed (the primary ran in it, and /dev/tty can no longer be opened):
   * the app ends, as a plain Node server does, once its workers finished what they have;
   * writes to the dead terminal fail (EIO) and are ignored. Otherwise (`kill -HUP`, systemd,
   * PM2 fork mode, Docker, nohup) it asks for a reload; reload() warns about each slot it could
   * not replace. Either way one line says which.
   */
  onSighup() {
    if (this.terminal && !terminalAlive()) {
      ignoreDeadTerminal();
      notice('SIGHUP: the terminal this app was started from is gone (hang-up): shutting down');
      this.shutdown().then(exitHungUp);
      return;
    }
    notice(
      `SIGHUP: reloading every worker (${this.terminal ? 'its terminal is still open: a deliberate kill -HUP' : 'not started from a terminal'})`,
    );
    this.reload().catch(() => {});
  }

  /** The (first) address the router listens on, like `server.address()`. */
  address() {
    return this.router ? this.router.addresses()[0] : null;
  }

  /** Every address the router listens on, in the order of `listeners`. */
  addresses() {
    return this.router ? this.router.addresses() : null;
  }

  /** Per-slot pids and counters. */
  stats() {
    if (!this.router) return null;
    const counters = this.router.stats();
    return {
      dispatch: counters.dispatch,
      dispatchReason: this.options.dispatchWhy,
      acceptErrors: counters.acceptErrors,
      rejected: counters.rejected,
      fallbacks: counters.fallbacks,
      otherNode: counters.otherNode,
      resolving: counters.resolving,
      givenUp: counters.givenUp,
      listenerFailures: counters.listenerFailures,
      sendErrors: counters.sendErrors,
      // Kernel dispatch: per listener, what the checks of its SO_REUSEPORT group repaired and
      // what is damaged now (see lib/watch.js).
      kernel: counters.kernel,
      slots: counters.slots.map(({ channel, ...c }, i) => {
        const current = this.slots[i].current;
        return { pid: current ? current.worker.process.pid : null, ready: channel > 0, ...c, restarts: this.slots[i].restarts };
      }),
    };
  }

  /** The WorkerProcess whose channel has id `channel`, if it is still alive. */
  byChannel(channel) {
    for (const proc of this.processes.values()) if (proc.channel && proc.channel.id === channel) return proc;
    return null;
  }

  /** Forks a worker for slot `index`; returns its WorkerProcess. */
  fork(index) {
    const o = this.options;
    // WORKER_INDEX marks our own workers (a worker without it was forked by someone else);
    // STICKY_RS_DISPATCH tells the worker how connections reach it, before any message.
    const worker = cluster.fork({
      ...o.env(index),
      [WORKER_INDEX]: index,
      STICKY_RS_DISPATCH: o.dispatch,
      ...(o.node ? { [NODE_NAME]: o.node } : {}),
    });
    strays.ours.add(worker);
    const proc = new WorkerProcess(worker, { slot: index, seq: ++this.started, now: Date.now() });
    this.processes.set(worker, proc);
    if (o.debug) log('primary', `slot ${index}: forked worker #${worker.id} (pid ${worker.process.pid})`);
    // A worker that does not become ready (hand its server over, then say hello on its channel)
    // is replaced; its slot's clients wait meanwhile.
    proc.readyTimer = setTimeout(() => {
      this.warnings.note(
        `ready:${index}`,
        1,
        (n) =>
          `slot ${index}: worker pid ${worker.process.pid} did not become ready within readyTimeout (${o.readyTimeout} ms); killed it` +
          (n > 1 ? ` (${n} workers of this slot killed so)` : '') +
          '. Is its start-up code stuck, or does it never hand its server over (callback(server))?',
      );
      proc.killedNotReady = true; // warned: its exit needs no line of its own
      worker.process.kill('SIGKILL');
    }, o.readyTimeout);
    // An IPC failure (ERR_IPC_CHANNEL_CLOSED...) concerns this worker only; 'exit' follows. A
    // process that could not be spawned at all (EMFILE, EAGAIN) never exits: count it as exited.
    worker.on('error', (err) => {
      if (o.debug) log('primary', `slot ${index}: worker #${worker.id}: ${err.message}`);
      if (worker.process.pid === undefined) this.onExit(proc, null, null);
    });
    worker.process.on('internalMessage', (message) => this.onNotice(proc, message));
    worker.on('exit', (code, signal) => this.onExit(proc, code, signal));
    // On the next tick: the first workers are forked inside sticky(), before its caller can listen.
    process.nextTick(() => this.emit('fork', { slot: index, worker }));
    return proc;
  }

  /** A worker's notice (lib/messages.js): what it did or is about to do. */
  onNotice(proc, message) {
    const o = this.options;
    if (message && message.cmd === INTERNAL && message.type === FAILED) proc.failure = String(message.error);
    const type = noticeType(o.prefix, message);
    if (type === READY && !this.stopping && proc.state === 'forked') this.sendChannel(proc);
    if (type === CLOSING) {
      proc.stopping(Date.now(), false);
      this.onClosing(proc);
    }
    if (type?.startsWith(OPEN)) proc.open = Number(type.slice(OPEN.length)) || 0;
    if (type === STOPPING) {
      proc.stopping(Date.now(), true);
      setTimeout(() => {
        if (!this.stopping) this.onClosing(proc);
      }, SIGNAL_HOLD).unref();
    }
  }

  /**
   * setupMaster: a worker the user forked. Once its setupWorker() handed its server over, it
   * takes the lowest free slot (a re-forked worker takes the place of the one that died), learns
   * it (`place:<slot>`, which its session ids encode), and gets its channel. A worker that never
   * runs setupWorker() gets no connections; `debug` says so after readyTimeout.
   */
  adopt(worker) {
    const o = this.options;
    if (this.processes.has(worker) || this.stopping) return;
    const proc = new WorkerProcess(worker, { slot: null, seq: ++this.started, now: Date.now(), adopted: true });
    this.processes.set(worker, proc);
    // Said always: clients of the sessions it would take wait, and nothing else tells why (a
    // half-done migration from @socket.io/sticky hangs every client otherwise).
    const after = Math.min(ADOPT_WARN_AFTER, o.readyTimeout);
    proc.readyTimer = setTimeout(() => {
      if (proc.state !== 'unplaced' || this.stopping) return;
      this.warnings.note(
        'not-adopted',
        1,
        (n) =>
          `worker pid ${worker.process.pid}${n > 1 ? ` (and ${n - 1} more)` : ''} has run for ${after} ms without calling sticky-rs's setupWorker(io): it gets no connections, and clients wait for a worker. ` +
          "Likely cause: setupWorker still comes from @socket.io/sticky (require('@socket.io/sticky')); take setupMaster and setupWorker both from sticky-rs",
      );
    }, after);
    proc.readyTimer.unref();
    worker.on('error', (err) => {
      if (o.debug) log('primary', `worker #${worker.id}: ${err.message}`);
    });
    const place = () => {
      if (proc.state !== 'unplaced' || this.stopping) return;
      const slot = this.slots.findIndex((s) => s.current === null);
      if (slot < 0) {
        warn(
          `worker pid ${worker.process.pid} ran setupWorker(), but all ${this.slots.length} places are taken (setupMaster option maxWorkers): it gets no connections`,
        );
        return;
      }
      proc.placed(slot);
      this.slots[slot].forked(proc);
      worker.send(o.prefix + PLACE + slot + (o.node ? `.${o.node}` : ''), () => {});
      this.sendChannel(proc);
    };
    worker.process.on('internalMessage', (message) => {
      if (noticeType(o.prefix, message) === READY) place();
    });
    worker.on('exit', (code, signal) => this.onExit(proc, code, signal));
    // Its setupWorker() ran before httpServer.listen() started this primary.
    if (o.readyEarly?.has(worker)) place();
    if (o.debug) log('primary', `adopted worker #${worker.id} (pid ${worker.process.pid}), waiting for its setupWorker()`);
  }

  /**
   * The worker handed its server over: with kernel dispatch, send it its slot's member of each
   * listener's group to listen on; then its channel (connections the router passes: all of them,
   * or with kernel dispatch those the kernel cannot hash). Ready once it says hello on it.
   */
  sendChannel(proc) {
    const o = this.options;
    const { slot, worker } = proc;
    try {
      if (o.dispatch === 'kernel') this.sendMembers(proc);
    } catch (err) {
      log('primary', `slot ${slot}: cannot pass its listeners to worker #${worker.id}: ${err.message}`);
      worker.process.kill('SIGKILL');
      return;
    }
    let channel = null;
    let end;
    try {
      channel = this.router.openChannel(slot, proc.seq);
      end = new net.Socket({ fd: channel.fd, readable: false, writable: false });
    } catch (err) {
      if (channel) fs.closeSync(channel.fd);
      if (o.debug) log('primary', `slot ${slot}: cannot open a channel: ${err.message}`);
      worker.process.kill('SIGKILL');
      return;
    }
    proc.channel = channel;
    // Node closes our copy of the worker's end once the worker has it.
    this.sendHandle(proc, o.prefix + CHANNEL, end);
    proc.handedOver();
    if (o.debug) log('primary', `slot ${slot}: worker #${worker.id} handed its server over, channel ${channel.id} sent`);
  }

  /** Kernel dispatch: a copy of the slot's member of each listener, closed here once sent. */
  sendMembers(proc) {
    const o = this.options;
    for (let listener = 0; listener < o.listeners.length; listener++) {
      // Never read here (readable: false): the primary must not accept on it.
      const wrap = new net.Socket({ fd: this.router.member(listener, proc.slot), readable: false, writable: false });
      this.sendHandle(proc, o.prefix + LISTEN + listener, wrap, { handleOnly: true });
    }
  }

  /**
   * Sends `socket`'s handle with `message` (`handleOnly`: the bare handle, so that the worker
   * gets a handle to listen on). The handle is closed once the worker acknowledged it (by Node;
   * by us for a bare one), or when the worker exits (onExit): Node keeps a handle the worker
   * did not acknowledge before dying, and those queued behind it, open for ever.
   */
  sendHandle(proc, message, socket, { handleOnly = false } = {}) {
    const handle = internals.handleOf(socket);
    proc.sent.push({
      close: () => {
        socket.destroy();
        if (handle) handle.close();
      },
    });
    proc.worker.send(message, handleOnly ? handle : socket, (err) => {
      if (err || handleOnly) socket.destroy();
    });
  }

  /** What the router thread reports. */
  onRouterEvent(event) {
    if (event.kind === 'switched') {
      const proc = this.byChannel(event.channel);
      if (proc) this.onReady(proc);
    } else if (event.kind === 'drained') {
      this.onDrained(event.slot);
    } else if (event.kind === 'listenerFailed') {
      const address = this.router?.addresses()[event.listener] || {};
      const err = new Error(
        `sticky-rs: listener ${event.listener} (${address.address}:${address.port}) failed and accepts no more: ${event.message}`,
      );
      warn(err.message);
      if (this.listenerCount('error') > 0) this.emit('error', err);
    } else if (event.kind === 'misbehaved') {
      this.onMisbehaved(event);
    } else if (event.kind === 'stopped') {
      // Never keep running without accepting: a supervisor restarts a process that exits.
      warn(`the router stopped (${event.message}); nothing is accepted any more, exiting with code 1`);
      this.finish(1);
      process.exit(1);
    }
  }

  /** During shutdown, `slot` has nothing more to deliver: its workers may finish and exit. */
  onDrained(slot) {
    if (this.phase !== 'shuttingDown' || this.drainedSlots.has(slot)) return;
    this.drainedSlots.add(slot);
    for (const proc of this.processes.values()) if (proc.slot === slot) this.retire(proc);
  }

  /** The router delivers to `proc` now: it said hello on its channel. */
  onReady(proc) {
    if (!proc.ready()) return;
    this.everReady = true;
    clearTimeout(proc.readyTimer);
    this.slots[proc.slot].ready(proc);
    if (!this.stopping) this.emit('ready', { slot: proc.slot, worker: proc.worker });
    this.announce();
  }

  /**
   * Once, when every slot first has a ready worker: one line on stdout with the address and the
   * number of workers, as most servers print (not with setupMaster, whose workers are the app's).
   */
  announce() {
    const o = this.options;
    if (this.announced || this.stopping || o.adopt || !this.slots.every((s) => s.current?.isReady)) return;
    this.announced = true;
    const where = this.addresses().map(({ address, port }) =>
      address === '::' || address === '0.0.0.0'
        ? `port ${port} (all addresses)`
        : `${address.includes(':') ? `[${address}]` : address}:${port}`,
    );
    // console.log: a closed stdout is no error here.
    console.log(`sticky-rs: listening on ${where.join(', ')} with ${o.slots} worker(s) (primary pid ${process.pid})`);
    handover.ready(this); // upgrade (issue 22)
  }

  onExit(proc, code, signal) {
    const o = this.options;
    const { slot: index, worker } = proc;
    if (!proc.exited()) return;
    clearTimeout(proc.readyTimer);
    clearTimeout(proc.killTimer);
    this.processes.delete(worker);
    // Node closes a handle it sent once the worker acknowledges it, but never one whose worker
    // died first, nor one still queued behind it: close whatever we sent here (closing a closed
    // handle does nothing).
    for (const sent of proc.sent) sent.close();
    // Connections it had not confirmed go back to the slot, for the next worker.
    if (proc.channel) this.router.release(proc.channel.id);
    if (o.debug) log('primary', `slot ${index}: worker #${worker.id} (pid ${worker.process.pid}) exited (${signal || code})`);
    this.emit('exit', { slot: index, worker, code, signal });
    if (this.stopping) {
      if (this.processes.size === 0) this.finish(0);
      return;
    }
    // An adopted worker's place is free again; the user's own 'exit' handler re-forks.
    if (proc.adopted) {
      const slot = index === null ? null : this.slots[index];
      if (slot && slot.current === proc) slot.current = null;
      return;
    }
    const asked = proc.exitAsked(code, signal);
    const held = proc.holdAfterExit(asked, signal, Date.now(), SIGNAL_HOLD);
    if (held > 0) {
      setTimeout(() => {
        if (!this.stopping) this.afterExit(proc, code, signal, asked);
      }, held).unref();
      return;
    }
    this.afterExit(proc, code, signal, asked);
  }

  /** What the exit of our own `proc` means for its slot: nothing, a respawn, or giving up. */
  afterExit(proc, code, signal, asked) {
    const o = this.options;
    const { slot: index, worker } = proc;
    const next = this.slots[index].exited(proc, Date.now(), asked);
    if (next.action === 'nothing') return; // a worker retired by reload, or a failed replacement
    // Asked to go: replaced at once, not counted, nothing to warn about.
    if (next.asked) {
      if (o.debug)
        log('primary', `slot ${index}: worker #${worker.id} stopped as asked (${signal || `code ${code}`}); replacing it at once`);
      if (next.action === 'respawn') this.respawn(index, next.delay);
      return;
    }
    const how = signal ? `was killed by ${signal}` : `exited with code ${code}`;
    const seen = proc.failure ? this.sayFailure(proc, index) : '';
    // As of the respawn this exit would wait for: a client must not wait for it past the bound.
    if (
      next.action !== 'give-up' &&
      Slot.givesUpNeverReady(o, { startedAt: this.startedAt, now: Date.now() + (next.delay || 0), anyReady: this.everReady })
    ) {
      warn(
        `no worker became ready within ${Math.min(o.queueTimeout, o.readyTimeout)} ms of the start (the shorter of queueTimeout and readyTimeout: clients waiting for a worker would wait longer); the last, slot ${index} pid ${worker.process.pid}, ${how}${seen}: giving up, shutting down with exit code 1`,
      );
      this.exitAfter(this.shutdown().then(() => 1));
      return;
    }
    if (next.action === 'give-up') {
      // A supervisor (systemd, Kubernetes, PM2) must see the failure: exit 1.
      warn(
        `slot ${index}: worker pid ${worker.process.pid} ${how} after ${next.lived} ms${seen}, ${next.exits} exits within restartWindow (${o.restartWindow} ms), more than maxRestarts (${o.maxRestarts}): giving up, shutting down with exit code 1`,
      );
      this.exitAfter(this.shutdown().then(() => 1));
      return;
    }
    if (next.lived < o.respawnResetAfter && !proc.killedNotReady) {
      this.warnings.note(
        `crash:${index}`,
        1,
        (n) =>
          `slot ${index}: worker pid ${worker.process.pid} ${how} after ${next.lived} ms${seen}; ${next.exits} exit(s) within ${o.restartWindow} ms` +
          (n > 1 ? ` (${n} since the last warning)` : '') +
          `; respawning with back-off (gives up after ${o.maxRestarts})`,
      );
    }
    // 'replacement': the replacement under way takes the slot.
    if (next.action === 'respawn') this.respawn(index, next.delay);
  }

  /**
   * A worker's uncaught error before it was ready: printed in full the first time (with a
   * warning's stamp; its lines indented), then only named. Returns what the exit line adds.
   */
  sayFailure(proc, index) {
    const { failure, worker } = proc;
    const key = failure.split('\n').slice(0, 2).join('\n');
    const times = (this.failures.get(key) || 0) + 1;
    this.failures.set(key, times);
    const first = failure.split('\n')[0];
    if (times === 1) {
      warn(
        `slot ${index}: worker pid ${worker.process.pid} failed before it was ready (the same error from later workers is not printed again):\n    ${failure.split('\n').join('\n    ')}`,
      );
      return ` (${first})`;
    }
    return ` (${first}: the same error as printed before, ${times} times so far)`;
  }

  /**
   * Workers forked behind our back: with setupMaster they are the user's and adopted; otherwise a
   * leftover `cluster.on('exit', () => cluster.fork())` from a hand-written cluster forked them,
   * and they never get a connection. Said once; they are ended at shutdown.
   */
  watchForeignForks() {
    const o = this.options;
    this.onForeignFork = (worker) => {
      if (this.processes.has(worker)) return;
      if (o.adopt) {
        this.adopt(worker);
        return;
      }
      // Ended by us at shutdown, maybe while Node still talks to it: its EPIPE is no one's error.
      worker.on('error', () => {});
      if (this.stopping) {
        worker.process.kill('SIGTERM');
        return;
      }
      if (this.warnedForeign) return;
      this.warnedForeign = true;
      warn(
        `a worker (pid ${worker.process.pid}) was forked outside sticky-rs, probably by a leftover cluster.fork() (e.g. in cluster.on('exit', ...)): sticky-rs forks and respawns its own workers, so it never routes a connection to such workers; remove that code`,
      );
    };
    cluster.on('fork', this.onForeignFork);
    // The leftover handler's worker forked on each exit of ours: ended at once, unseen by it.
    if (!o.adopt) {
      this.stopEndingStrays = strays.endStrays((stray, dead) =>
        this.warnings.note(
          'stray',
          1,
          (n) =>
            `ended worker pid ${stray.process.pid}${n > 1 ? ` and ${n - 1} more` : ''}: a cluster 'exit' listener forked it when worker pid ${dead.process.pid} exited (a leftover cluster.on('exit', () => cluster.fork())?). ` +
            'sticky-rs respawns its own workers; such a worker would start nothing and idle until shutdown. Remove that listener',
        ),
      );
    }
  }

  /** Forks a new worker for an empty slot after `delay` ms (the slot's back-off). */
  respawn(index, delay) {
    const o = this.options;
    this.emit('respawn', { slot: index, delay });
    clearTimeout(this.respawnTimers[index]);
    this.respawnTimers[index] = setTimeout(() => {
      this.respawnTimers[index] = null;
      const slot = this.slots[index];
      if (slot.state !== 'backoff') return; // closed, or a replacement took the slot
      try {
        slot.forked(this.fork(index));
      } catch (err) {
        if (o.debug) log('primary', `slot ${index}: fork failed: ${err.message}`);
        this.respawn(index, slot.backoff(0));
      }
    }, delay);
  }
  /**
   * Replaces every worker, one slot after the other: fork, wait until the new one is ready and
   * the slot delivers to it, retire the old one, and go on with the next slot at once: the old
   * workers finish their connections in parallel (a websocket may hold one for up to
   * hardShutdownDelay). Resolves once every slot runs a new worker, with `{ drained }`: a
   * promise that resolves once every old worker is gone.
   */
  reload() {
    if (this.stopping) return Promise.reject(new Error('sticky-rs: shutting down'));
    if (this.reloading) {
      // Asked again mid-reload (a second deploy): the slots already replaced run code older than
      // this ask, so one more pass replaces every slot once this one ends. Later asks join it.
      if (!this.reloadAgain) {
        this.reloadAgain = this.reloading
          .catch(() => {})
          .then(() => {
            this.reloadAgain = null;
            return this.reload();
          });
      }
      return this.reloadAgain;
    }
    const o = this.options;
    this.reloading = (async () => {
      if (o.debug) log('primary', 'reloading');
      const started = Date.now();
      const exits = [];
      const failed = [];
      for (let index = 0; index < this.slots.length && !this.stopping; index++) {
        try {
          exits.push((await this.replace(index)).exited);
        } catch (err) {
          // Said always: an operator who sent SIGHUP must learn which slots still run old code.
          warn(err.message);
          failed.push(index);
        }
      }
      // The old workers drain on their own, in parallel: the reload does not wait for them.
      const drained = Promise.all(exits).then(() => {
        if (o.debug && !this.stopping)
          log(
            'primary',
            `reload: the ${exits.length} old worker(s) finished their connections and exited, ${Date.now() - started} ms after the reload began`,
          );
      });
      if (failed.length > 0) throw new Error(`sticky-rs: reload incomplete: slot(s) ${failed.join(', ')} still run their previous worker`);
      if (o.debug)
        log(
          'primary',
          this.stopping
            ? 'reload cut short by shutdown'
            : `reload: every slot switched to a new worker in ${Date.now() - started} ms; the old ones finish their connections meanwhile`,
        );
      return { drained };
    })().finally(() => {
      this.reloading = null;
    });
    return this.reloading;
  }

  /**
   * Replaces the worker of one slot without losing a connection: fork, wait until the new one
   * is ready and the slot delivers to it, then retire the old one. Resolves, once switched, with
   * `{ exited }`, a promise of the old worker's exit (wrapped: the switch must not wait for it).
   */
  replace(index) {
    if (this.replacements[index]) return this.replacements[index];
    const o = this.options;
    const slot = this.slots[index];
    if (!slot.replaceStarted()) return Promise.reject(new Error('sticky-rs: shutting down'));
    // The replacement owns the slot now: no respawn of its own.
    clearTimeout(this.respawnTimers[index]);
    this.respawnTimers[index] = null;
    this.replacements[index] = (async () => {
      const next = this.fork(index);
      // Settles once the router delivers to it, or it exits (its ready timer kills it after
      // readyTimeout).
      const ok = await next.whenReady;
      // A shutdown meanwhile retires every worker gracefully, this one included.
      if (this.stopping) return { exited: Promise.resolve() };
      if (!ok) {
        if (this.processes.has(next.worker)) next.worker.process.kill('SIGKILL');
        throw new Error(
          `sticky-rs: replacing slot ${index} failed: the new worker did not become ready within readyTimeout (${o.readyTimeout} ms)`,
        );
      }
      const previous = slot.replaced(next);
      if (!previous || !this.processes.has(previous.worker)) return { exited: Promise.resolve() };
      const exited = new Promise((resolve) => previous.worker.once('exit', resolve));
      this.retire(previous);
      return { exited };
    })().finally(() => {
      this.replacements[index] = null;
      // Whatever happened, the slot must end up with a worker.
      if (slot.replaceEnded() && !this.stopping) this.respawn(index, slot.backoff(Infinity));
    });
    return this.replacements[index];
  }

  /**
   * A worker sent its channel a count it cannot have (forged or garbage records): the router
   * believes none of its counts any more and sends it nothing new. Said always; the worker is
   * replaced like one that closes its server (setupMaster: retired, the user's fork replaces it).
   */
  onMisbehaved({ slot: index, channel, message }) {
    const proc = this.byChannel(channel);
    const pid = proc ? proc.worker.process.pid : 'gone';
    warn(
      `slot ${index}: worker pid ${pid} sent a record it cannot have sent honestly (${message}); its counts are ignored and it is ${this.options.adopt ? 'asked to exit' : 'replaced'}`,
    );
    if (!proc || proc.retired || this.stopping) return;
    if (this.options.adopt || this.slots[index].current !== proc) {
      this.retire(proc);
      return;
    }
    this.replace(index).catch((err) => {
      warn(err.message);
      if (this.processes.has(proc.worker)) this.retire(proc);
    });
  }

  /**
   * sticky-session semantics: a worker that closes its server gets no new connections (they
   * wait for its replacement), finishes the ones it has and exits.
   */
  onClosing(proc) {
    const slot = this.slots[proc.slot];
    if (this.stopping || !slot || slot.current !== proc || !proc.channel || proc.state === 'exited') return;
    if (this.options.debug)
      log(
        'primary',
        `slot ${proc.slot}: worker #${proc.worker.id} is stopping (it closed its server, or got a signal of its own): replacing it`,
      );
    this.router.retire(proc.channel.id);
    this.replace(proc.slot).catch((err) => {
      warn(err.message);
      // Its slot gets nothing now: let it finish, and the respawn after its exit takes over.
      if (this.processes.has(proc.worker)) this.retire(proc);
    });
  }

  /**
   * Asks a worker to finish its connections and exit; kills it after hardShutdownDelay. A worker
   * that is not ready has no connections: SIGTERM ends it (Node's default action before its
   * server is handed over, a graceful shutdown after), even if it missed the message.
   */
  retire(proc) {
    const { worker } = proc;
    // Its servers were handed over: its code finishes what it has on SHUTDOWN.
    const handedOver = proc.channel !== null;
    if (!proc.retire()) return; // asked already (a reload's old worker, then the shutdown)
    clearTimeout(proc.readyTimer);
    // Its hello may still be on its way (a reload's old worker that had not said it yet): the
    // router must not make a retired channel its slot's target, over the newer worker's.
    if (proc.channel) {
      try {
        this.router.retire(proc.channel.id);
      } catch {
        // The router is closed: nothing is routed any more.
      }
    }
    if (handedOver && worker.isConnected()) worker.send(this.options.prefix + SHUTDOWN, () => {});
    else worker.process.kill('SIGTERM');
    proc.killTimer = setTimeout(() => worker.process.kill('SIGKILL'), this.options.hardShutdownDelay);
    proc.killTimer.unref();
  }

  /**
   * Graceful shutdown: stop accepting, deliver what is already accepted, ask every worker to
   * finish; resolves with 0 once all exited, or 1 after hardShutdownDelay (remaining workers
   * are killed).
   */
  shutdown() {
    if (this.stopped) return this.stopped;
    const o = this.options;
    this.phase = 'shuttingDown';
    this.stopped = new Promise((resolve) => {
      this.resolveStopped = resolve;
    });
    if (o.debug) log('primary', 'shutting down');
    // A second SIGINT/SIGTERM forces the exit; SIGHUP (a closed terminal, a reload asked again)
    // must never kill the drain, however often it comes.
    for (const [signal, handler] of Object.entries(this.signals)) {
      process.removeListener(signal, handler);
      if (signal === 'SIGHUP') process.on(signal, () => {});
      else process.once(signal, () => process.exit(1));
    }
    for (const slot of this.slots) slot.close();
    for (const timer of this.respawnTimers) clearTimeout(timer);
    this.hardTimer = setTimeout(() => {
      // Said always: the exit code alone does not tell an operator which workers hung.
      const left = [...this.processes.values()].map((m) => `slot ${m.slot} (pid ${m.worker.process.pid})`);
      warn(
        `shutdown: hardShutdownDelay (${o.hardShutdownDelay} ms) ran out with ${left.length} worker(s) still finishing their connections: ${left.join(', ')}; killing them, exit code 1`,
      );
      this.finish(1);
    }, o.hardShutdownDelay);
    // Each worker is retired once the router says its slot delivered what was accepted for it
    // (or has no ready worker to deliver to; 'drained', after every head still being read from
    // a trusted proxy was resolved): one stuck slot does not hold the others back. At most half
    // of hardShutdownDelay.
    const drainMs = Math.floor(o.hardShutdownDelay / 2);
    this.drainTimer = setTimeout(() => {
      for (let slot = 0; slot < this.slots.length; slot++) this.onDrained(slot);
    }, drainMs);
    // Kernel dispatch: a busy worker accepts what its member queued when it is free again; the
    // members stop listening once the queues of ready slots are empty, at the latest by then.
    if (this.router) handover.stopAccepting(this, drainMs); // upgrade (issue 22): not the sockets while shared
    // Workers forked behind our back have nothing of ours to finish.
    for (const worker of Object.values(cluster.workers)) {
      if (!this.processes.has(worker)) worker.process.kill('SIGTERM');
    }
    // Connections that never end on their own (websockets, Server-Sent Events) keep it waiting:
    // an operator who pressed Ctrl-C must learn why nothing happens, and how to force it.
    this.waitingTimer = setTimeout(() => this.sayWaiting(), WAITING_AFTER);
    this.waitingTimer.unref();
    if (this.processes.size === 0) this.finish(0);
    return this.stopped;
  }

  /** During shutdown: one line on what it waits for, from the workers' `open:<n>` notices. */
  sayWaiting() {
    if (this.phase === 'finished') return;
    const busy = [...this.processes.values()].filter((m) => m.open > 0);
    const connections = busy.reduce((n, m) => n + m.open, 0);
    if (connections === 0) return;
    const seconds = Math.round(this.options.hardShutdownDelay / 1000);
    warn(
      `shutdown: waiting for ${connections} connection(s) on ${busy.length} worker(s), up to ${seconds} s (hardShutdownDelay); Ctrl-C again to force`,
    );
  }

  finish(code) {
    if (this.phase === 'finished') return;
    this.phase = 'finished';
    clearTimeout(this.hardTimer);
    clearTimeout(this.waitingTimer);
    this.stopWatching();
    // Not at once: the leftover exit handler forks right after our last worker's exit, and a
    // process that starts after the primary exited dies of EPIPE with a stack trace.
    if (this.onForeignFork) setImmediate(() => cluster.removeListener('fork', this.onForeignFork));
    if (this.stopEndingStrays) setImmediate(this.stopEndingStrays);
    clearTimeout(this.drainTimer);
    for (const { worker, readyTimer, killTimer } of this.processes.values()) {
      clearTimeout(readyTimer);
      clearTimeout(killTimer);
      worker.process.kill('SIGKILL');
    }
    if (this.router) {
      try {
        this.router.close();
      } catch (err) {
        warn(`closing the router: ${err.message}`);
      }
    }
    if (this.options.debug) log('primary', `shut down (${code})`);
    if (this.resolveStopped) this.resolveStopped(code);
  }

  exitAfter(closed) {
    closed.then((code) => process.exit(code));
  }
}

function startPrimary(options, onError) {
  return new Primary(options).start(onError);
}

/**
 * Starts a primary in place of `server.listen()` (sticky-session's listen(), setupMaster's
 * listen): errors arrive as an 'error' event on `server` after the caller could attach one,
 * 'listening' follows a successful bind, and `server.address()` reports what the router bound
 * (the port 0 picked), null once shut down.
 */
function startForServer(server, options) {
  const primary = startPrimary(options, (err) => process.nextTick(() => server.emit('error', err)));
  server.address = () => (primary.router && primary.phase !== 'finished' ? primary.address() : null);
  if (primary.router) process.nextTick(() => server.emit('listening'));
  return primary;
}

module.exports = { startPrimary, startForServer };
