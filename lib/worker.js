'use strict';
// The worker: once the user's server is handed over, asks the primary for its channel, then
// adopts each connection that arrives on it as a 'connection' event on that server (and, with
// kernel dispatch, accepts on its slot's member of each listener's SO_REUSEPORT group).
//
// One Worker per process (`worker` below), whose life is a state machine; each state is entered
// by an event:
//   starting      set up; the app's start-up code runs                        (prepare)
//   handedOver    the app handed its servers over; waiting for the channel    (serve)
//   serving       the channel is open and hello said: the slot delivers here  (channel)
//   closing       the app closed a server (sticky-session): the primary
//                 replaces this worker, which serves until then               (server.close)
//   shuttingDown  finishing what is open, then exiting                        (shutdown)
const cluster = require('node:cluster');
const fs = require('node:fs');
const net = require('node:net');
const { native } = require('./binding');
const { describe } = require('./errors');
const { log, Warnings } = require('./log');
const internals = require('./node-internals');
const { closeAfterEachResponse } = require('./sid-responses');
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
  PRIMARY_PID,
  INTERNAL,
  FAILED,
  notifyPrimary,
} = require('./messages');

// Kernel dispatch: how often at most this worker reports the connections it accepted itself (the
// primary counts them per slot); rarely enough that the primary stays off the connection path.
const ACCEPTED_REPORT_EVERY = 100;
// A shutting-down worker tells the primary how many connections it still has this late.
const OPEN_REPORT_AFTER = 300;
// A full channel (the primary is busy): when to try the waiting reports again.
const FLUSH_RETRY = 10;
// Shutting down: how often idle connections are closed (engine.io answers pending long-polls on
// 'close', after closeIdleConnections() ran once).
const IDLE_SWEEP_EVERY = 100;

// Which state may follow which (see the header).
const NEXT = {
  starting: ['handedOver', 'shuttingDown'],
  handedOver: ['serving', 'closing', 'shuttingDown'],
  serving: ['closing', 'shuttingDown'],
  closing: ['shuttingDown'],
  shuttingDown: [],
};

/**
 * Until this worker is ready, an uncaught error (a ReferenceError at load, a leftover listen(),
 * a rejected async start-up) goes to the primary, which prints each distinct one once rather than
 * once per respawn, and the worker exits 1 as Node would. Unless the app handles uncaught errors
 * itself. Set when sticky-rs is loaded in a worker it forked.
 */
function failedAtStart(err) {
  if (process.listenerCount('uncaughtException') > 1) return;
  const error = err instanceof Error && err.stack ? err.stack : `Uncaught ${String(err)}`;
  const exit = () => process.exit(1);
  // Said here if the primary cannot say it (its channel is gone).
  const fallback = () => {
    process.stderr.write(`${error}\n`);
    exit();
  };
  setTimeout(fallback, 1000);
  try {
    process.send({ cmd: INTERNAL, type: FAILED, error: error.slice(0, 8000) }, (err) => (err ? fallback() : exit()));
  } catch {
    fallback();
  }
}
if (cluster.isWorker && process.env[WORKER_INDEX] !== undefined) process.on('uncaughtException', failedAtStart);

/**
 * Ends a worker that cannot work: says why, starts nothing, exits with 1. Not a throw: PM2 loses
 * what a process writes just before it dies of an exception at start-up; its log gets this line.
 */
function refuse(message) {
  console.error(message);
  setTimeout(() => process.exit(1), 500);
}

/** Why a cluster worker whose primary does not run sticky-rs cannot work, and what to do. */
function notOurCluster() {
  if (process.env.exec_mode === 'cluster_mode' && process.env.pm_id !== undefined) {
    return (
      'sticky-rs: started by PM2 in cluster mode (pm2 start -i N, or exec_mode: "cluster"): PM2 is then the ' +
      'cluster primary and balances connections itself, so they cannot be sticky. Run one instance in fork mode ' +
      '(pm2 start app.js, or exec_mode: "fork", instances: 1): sticky-rs then forks the workers ' +
      '(the concurrency/workers option) and routes every client to its own.'
    );
  }
  return (
    'sticky-rs: this process is a cluster worker, but its primary does not run sticky-rs: sticky() and ' +
    'listen() must be called in the cluster primary too (they fork the workers themselves); remove your own cluster.fork() code.'
  );
}

// What a leftover listen() call does in a worker, and the fix.
const LISTEN_TRAP =
  'in a cluster worker, listen() opens an extra listener in the primary that round-robins connections, ' +
  'which is not sticky. Delete the listen() call (an Express app: replace app.listen(...) with http.createServer(app)); ' +
  'sticky-rs listens in the primary for you';

function roleOf() {
  const slot = process.env[WORKER_INDEX];
  return `worker #${cluster.worker.id}${slot === undefined ? '' : ` of slot ${slot}`} (pid ${process.pid})`;
}

/**
 * A count the primary keeps (receiver method `method`), reported through `send` at most once per
 * `every` ms and at the latest `every` ms after it grew: the first growth after a quiet spell goes
 * out on the next turn of the event loop. Kept while there is no channel (`send` returns false).
 */
class Tally {
  constructor(method, every, canSend, send) {
    this.method = method;
    this.every = every;
    this.canSend = canSend;
    this.send = send;
    this.unreported = 0;
    this.reportedAt = 0;
    this.timer = null;
  }

  add(n) {
    this.unreported += n;
    if (this.timer) return;
    this.timer = setTimeout(() => this.report(), Math.max(0, this.reportedAt + this.every - Date.now()));
    this.timer.unref();
  }

  /** Reports now; kept for later while there is no channel yet. */
  report() {
    clearTimeout(this.timer);
    this.timer = null;
    if (!this.canSend() || this.unreported === 0) return;
    this.reportedAt = Date.now();
    const n = this.unreported;
    this.unreported = 0;
    this.send(this.method, n);
  }
}

class Worker {
  constructor(options) {
    this.options = options;
    this.state = 'starting';
    this.role = roleOf();
    /** The servers handed over, one per listener of the primary. */
    this.servers = null;
    /** The channel's reader (native), once open; null again once closed. */
    this.receiver = null;
    // The channel, if it came before the servers were handed over (a worker may tell the primary
    // it is ready early; the channel then waits here for serve()).
    this.earlyChannel = null;
    // Kernel dispatch: this worker listens on its slot's member of each listener's group (the
    // kernel picks the slot); members that came before the hand-over wait here.
    this.kernel = process.env.STICKY_RS_DISPATCH === 'kernel';
    this.earlyMembers = [];
    /** Member handles still accepting during a shutdown, see keepAccepting(). */
    this.kept = [];
    /** Open connections, however they came (adopted, or accepted on a member). */
    this.open = new internals.OpenConnections(() => this.closed());
    /** Shutting down: called when a connection closes. */
    this.onSocketClosed = null;
    this.holding = null; // test-only, see holdsBeforeAck()
    // Counts for the primary: connections accepted here (kernel dispatch), and adopted ones that
    // closed (routeBy 'sid', for least-connection).
    const canSend = () => this.receiver !== null;
    const send = (method, n) => this.send(method, n);
    this.acceptedTally = new Tally('accepted', ACCEPTED_REPORT_EVERY, canSend, send);
    this.closedTally = new Tally('closed', 0, canSend, send);
    this.flushTimer = null;
    this.warnings = new Warnings();
    this.warningsTimer = null;
    /** setupWorker(io) ran: engine.io ids name this slot. */
    this.sessionIdsNameSlot = false;
    /** The terminal this worker runs on hung up (see prepare). */
    this.hungUp = false;
  }

  /** Moves to `next`; a transition the header does not list is a bug, said and refused. */
  to(next) {
    if (!NEXT[this.state].includes(next)) {
      log(this.role, `internal: no transition from ${this.state} to ${next}`);
      return false;
    }
    this.state = next;
    return true;
  }

  /** Listens to the primary, the channel's end and the terminal. */
  install() {
    process.on('message', (message, handle) => this.onMessage(message, handle));
    process.on('disconnect', () => this.closeReceiver());
    // However it exits (a user's `server.close(() => process.exit())`, our own shutdown), the
    // counts not yet reported go first: sending is synchronous.
    process.on('exit', () => this.reportNow());
    // SIGHUP means "reload" to the primary, which replaces this worker gracefully; a terminal
    // sends it to the whole process group. A terminal that hung up: the primary shuts down, and
    // this worker must neither die writing to it (EIO) nor abort at exit (see exitHungUp).
    const onTerminal = startedOnTerminal();
    process.on('SIGHUP', () => {
      if (!onTerminal || this.hungUp || terminalAlive()) return;
      this.hungUp = true;
      ignoreDeadTerminal();
    });
  }

  /**
   * Hands the servers over, one per listener of the primary, in the same order: from now on they
   * get this worker's connections. Once per worker.
   */
  serve(servers) {
    if (servers.length === 0) throw new TypeError('sticky-rs: the worker must hand over a server');
    for (const server of servers) {
      if (!(server instanceof net.Server)) {
        throw new TypeError(`sticky-rs: the worker must hand over a net.Server (http, https, ...), got ${describe(server)}`);
      }
      if (internals.listenCalled(server)) {
        throw new Error(`sticky-rs: the server handed over must not listen, but listen() was called on it: ${LISTEN_TRAP}`);
      }
    }
    if (this.servers) throw new Error('sticky-rs: servers were already handed over in this worker');
    if (this.state === 'shuttingDown') return;
    this.servers = servers;
    this.to('handedOver');
    for (const server of servers) this.takeOver(server);
    // Ctrl-C reaches every process of the group: finish what is open rather than die mid-request.
    process.once('SIGINT', () => this.shutdown(true));
    process.once('SIGTERM', () => this.shutdown(true));
    for (const [listener, handle] of this.earlyMembers.splice(0)) this.listenOn(listener, handle);
    if (this.earlyChannel) {
      const early = this.earlyChannel;
      this.earlyChannel = null;
      this.openChannel(early);
      return;
    }
    notifyPrimary(this.options.prefix, READY);
    if (this.options.debug) log(this.role, 'server handed over, waiting for the channel');
  }

  /** A handed-over server: its connections counted, never listening itself, closing it retires this worker. */
  takeOver(server) {
    // Every connection is counted for the graceful shutdown, however it came: adopted from the
    // channel, or accepted by the server itself on its member (kernel dispatch). First, so that
    // a throwing user listener cannot skip it.
    server.prependListener('connection', (socket) => this.count(socket, server));
    if (this.options.routeBy === 'sid') closeAfterEachResponse(server, this);
    internals.replaceListen(server, () => {
      throw new Error(`sticky-rs: this server was handed over to sticky-rs and must not listen: ${LISTEN_TRAP}`);
    });
    // http.Server sets up its request timeouts and idle-connection tracking on 'listening';
    // with kernel dispatch the server really listens (on its member) and emits it itself.
    if (!this.kernel) server.emit('listening');
    // sticky-session semantics: closing the server retires this worker; the primary sends new
    // connections to a replacement and lets this one finish.
    let closed = false;
    const worker = this;
    internals.replaceClose(server, function closeAndRetire(close, args) {
      if (worker.state === 'handedOver' || worker.state === 'serving') {
        worker.to('closing');
        notifyPrimary(worker.options.prefix, CLOSING);
        // Kernel dispatch: this worker takes no new connection on any listener from now on (its
        // other servers keep the connections they have), as the router stops sending it any.
        for (const other of worker.servers) if (other !== this) worker.stopListening(other);
      }
      // Once: a second close would emit 'close' (and engine.io's close) again.
      if (closed) return this;
      closed = true;
      return internals.sparingFresh(worker.open, () => close.apply(this, args));
    });
  }

  onMessage(message, handle) {
    const { prefix } = this.options;
    if (message === prefix + CHANNEL && handle && !this.receiver) {
      if (this.servers) this.openChannel(handle);
      else if (!this.earlyChannel && this.state !== 'shuttingDown') this.earlyChannel = handle;
      else handle.destroy();
    } else if (typeof message === 'string' && message.startsWith(prefix + LISTEN) && handle) {
      const listener = Number(message.slice(prefix.length + LISTEN.length));
      if (this.servers) this.listenOn(listener, handle);
      else if (this.state !== 'shuttingDown') this.earlyMembers.push([listener, handle]);
      else handle.close();
    } else if (typeof message === 'string' && message.startsWith(prefix + PLACE)) {
      // Adopted (setupMaster): the slot this worker serves (and the node), which its session ids encode.
      const [slot, node] = message.slice(prefix.length + PLACE.length).split('.');
      process.env[WORKER_INDEX] = slot;
      if (node) process.env[NODE_NAME] = node;
      this.role = roleOf();
    } else if (message === prefix + SHUTDOWN) {
      this.shutdown();
      // The primary's word ends what a signal kept going: its slot has nothing more queued.
      this.closeKept();
    }
  }

  /** Kernel dispatch: `server`'s listening handle (its member), taken from it; else null. */
  takeListener(server) {
    return this.kernel ? internals.takeListeningHandle(server) : null;
  }

  /**
   * `server` stops accepting but is not closed: its connections go on, and its 'close' comes with
   * the graceful shutdown. The primary keeps the member itself listening for the slot's next worker.
   */
  stopListening(server) {
    const handle = this.takeListener(server);
    if (handle) handle.close();
  }

  /**
   * Kernel dispatch, a shutdown this worker's own signal started (Ctrl-C reaches every process of
   * the group): `server` closes (its 'close' comes at once: Socket.IO ends its clients), but its
   * member's handle goes on accepting, into the closed server, what the kernel queued for the slot
   * (the primary stops new SYNs meanwhile), as adopted connections go on arriving with the router.
   * Closed when the worker exits, or when the primary sends `shutdown`: the slot drained, or (a
   * signal to this worker alone) its replacement is ready.
   */
  keepAccepting(server) {
    const handle = this.takeListener(server);
    if (!handle) return;
    // Once the primary stops the member, an accept error is the end of it, not the server's.
    internals.ignoreAcceptErrors(handle);
    this.kept.push(handle);
  }

  closeKept() {
    for (const handle of this.kept.splice(0)) handle.close();
  }

  /**
   * Kernel dispatch: server `listener` listens on `handle`, its slot's member of that listener's
   * group, and accepts what the kernel steers there (Node's exclusive path for a TCP handle, so
   * the cluster primary never sees these connections).
   */
  listenOn(listener, handle) {
    const server = this.servers[listener];
    if (!server || this.state === 'shuttingDown' || server.listening) {
      handle.close();
      if (!server) log(this.role, `the primary passed listener ${listener}, but only ${this.servers.length} server(s) were handed over`);
      return;
    }
    internals.listenOnHandle(server, handle, this.options.listeners[listener].backlog);
  }

  /** Starts receiving connections on the channel `handle` and says hello: the slot switches here. */
  openChannel(handle) {
    // A worker on its way out says no hello: the slot must not switch to it.
    if (this.state === 'shuttingDown') {
      handle.destroy();
      return;
    }
    const fd = internals.receivedFd(handle);
    if (fd < 0) {
      handle.destroy();
      log(this.role, `Node.js ${process.version} does not expose the descriptor of a received handle; cannot receive connections`);
      process.exit(1);
    }
    try {
      this.receiver = new native.Receiver(fd, (incoming, lost, error) => this.adopt(incoming, lost, error));
    } finally {
      // The receiver holds its own copy; Node's must go before anything is sent on it.
      handle.destroy();
    }
    // A server closed before the channel came stays 'closing': the primary replaces it.
    if (this.state === 'handedOver') this.to('serving');
    this.send('hello');
    // Ready: from now on an uncaught error is Node's (or the app's) to report.
    process.removeListener('uncaughtException', failedAtStart);
    // What this server accepted on its members before the channel came.
    this.acceptedTally.report();
    if (this.options.debug) log(this.role, 'channel open, ready for connections');
  }

  /**
   * Test-only hook (never set it in production): with STICKY_RS_TEST_HOLD_BEFORE_ACK=<path>, the
   * first worker to receive connections creates <path> with its pid in it and from then on neither
   * acknowledges nor serves anything it gets, as a worker dying mid-adoption would; a test then
   * kills it and checks that the primary gives those connections to its replacement. A worker that
   * finds <path> already there behaves normally. The held descriptors stay open until it dies.
   */
  holdsBeforeAck() {
    const marker = process.env.STICKY_RS_TEST_HOLD_BEFORE_ACK;
    if (!marker) return false;
    if (this.holding === null) {
      try {
        fs.writeFileSync(marker, String(process.pid), { flag: 'wx' });
        this.holding = true;
      } catch {
        this.holding = false;
      }
    }
    return this.holding;
  }

  /** A batch of connections from the channel: each becomes a 'connection' on its server. */
  adopt(incoming, lost, error) {
    const { servers, options } = this;
    if (error) {
      // Never stall silently: without its channel this worker gets no connection again. It
      // finishes what it has and exits; the primary forks a replacement for the slot.
      log(
        this.role,
        `the connection channel failed (${error}); finishing open connections and exiting so the primary replaces this worker`,
      );
      this.shutdown();
      return;
    }
    if (!this.receiver) {
      // The receiver is closed: the primary still has these and gives them to another worker.
      for (const { fd } of incoming) fs.closeSync(fd);
      return;
    }
    if (this.holdsBeforeAck()) return;
    const adopted = [];
    for (const { fd, listener, address, family, port } of incoming) {
      let socket;
      try {
        socket = new net.Socket({ fd, readable: true, writable: true });
      } catch (err) {
        fs.closeSync(fd);
        if (options.debug) log(this.role, `cannot adopt fd ${fd}: ${err.message}`);
        continue;
      }
      // The client a PROXY protocol header named: what remoteAddress/remotePort report.
      if (address !== undefined) internals.setPeer(socket, { address, family, port });
      adopted.push([socket, listener]);
    }
    // Confirmed before any byte is read: until now the primary could still give them to a
    // replacement if this worker died. `lost` ones never arrived: the primary sends them again.
    this.send('ack', incoming.length, lost);
    if (lost && options.debug) log(this.role, `out of descriptors: ${lost} connection(s) will be sent again`);
    for (const [socket, listener] of adopted) {
      const server = servers[listener];
      if (!server) {
        log(this.role, `a connection for listener ${listener} arrived, but only ${servers.length} server(s) were handed over; closing it`);
        socket.destroy();
        continue;
      }
      if (options.debugConnections) log(this.role, `connection from ${socket.remoteAddress} on listener ${listener}`);
      socket.server = server;
      // A throwing 'connection' listener must not strand the rest of the batch: rethrown after.
      try {
        server.emit('connection', socket);
      } catch (err) {
        queueMicrotask(() => {
          throw err;
        });
      }
    }
  }

  /**
   * Calls a report method of the receiver (hello, ack, closed, accepted, flush). A report the
   * channel cannot take now (full: the primary is busy) waits in the receiver's outbox, in order,
   * and is sent again shortly; nothing is lost. A closed channel (the primary is gone) drops it.
   */
  send(method, ...args) {
    const { receiver } = this;
    if (!receiver) return;
    let sent;
    try {
      sent = receiver[method](...args);
    } catch (err) {
      if (this.options.debug) log(this.role, `cannot report to the primary (${method}): ${err.message}`);
      return;
    }
    if (sent || this.flushTimer) return;
    this.flushTimer = setTimeout(() => {
      this.flushTimer = null;
      this.send('flush');
    }, FLUSH_RETRY);
  }

  /**
   * Kernel dispatch: `socket` was accepted by the server itself, on its member. It is counted for
   * the primary and logged like an adopted one.
   */
  accepted(socket) {
    this.acceptedTally.add(1);
    if (this.options.debugConnections)
      log(this.role, `connection from ${socket.remoteAddress} (accepted on its member: the kernel picked this slot)`);
  }

  /** Says the warnings held back (at most one line per kind per interval) once they are due. */
  flushWarningsLater() {
    if (this.warningsTimer) return;
    this.warningsTimer = setTimeout(() => {
      this.warningsTimer = null;
      this.warnings.flush();
    }, this.warnings.interval);
    this.warningsTimer.unref();
  }

  /**
   * Counts `socket` (of `server`) among the open connections until it is destroyed, once, and out
   * of Node's own count of the server's connections: both dispatch modes behave alike.
   */
  count(socket, server) {
    const acceptedHere = this.kernel && internals.acceptedBy(socket, server);
    if (!internals.countIn(socket, this.open)) return;
    if (acceptedHere) this.accepted(socket);
  }

  /** A counted socket was destroyed. */
  closed() {
    if (this.options.routeBy === 'sid') this.closedTally.add(1);
    if (this.onSocketClosed) this.onSocketClosed();
  }

  /** Reports the counts the primary has not heard of yet, now. */
  reportNow() {
    this.acceptedTally.report();
    this.closedTally.report();
  }

  closeReceiver() {
    // The last counts, before the channel closes.
    this.reportNow();
    const { receiver } = this;
    clearTimeout(this.flushTimer);
    this.flushTimer = null;
    // Reports still in the outbox (a full channel) go now, as far as the channel takes them: an
    // acknowledgement lost here would make the primary hand served connections to another worker.
    this.send('flush');
    this.receiver = null;
    if (receiver) receiver.close();
  }

  /**
   * Graceful exit: the server closes (idle keep-alive connections close; Socket.IO attached to it
   * closes its clients), busy connections finish and close as they go idle, connections already
   * on their way are still adopted and served, then the worker exits. `'sticky:shutdown'` on the
   * server lets user code delay the exit: `server.on('sticky:shutdown', ({ waitUntil }) =>
   * waitUntil(flush()))`. Before a server is handed over there is nothing to finish.
   */
  shutdown(ownSignal = false) {
    // Asked again (the primary's word after a signal of its own, a failed channel): once.
    if (this.state === 'shuttingDown' || !this.to('shuttingDown')) return;
    if (this.earlyChannel) {
      this.earlyChannel.destroy();
      this.earlyChannel = null;
    }
    for (const [, handle] of this.earlyMembers.splice(0)) handle.close();
    const { servers, options } = this;
    if (options.debug) log(this.role, 'shutting down');
    if (!servers) {
      this.exit();
      return;
    }
    const hooks = [];
    const waitUntil = (promise) => hooks.push(Promise.resolve(promise).catch(() => {}));
    for (const server of servers) {
      server.emit('sticky:shutdown', { waitUntil });
      if (ownSignal) this.keepAccepting(server);
      server.close();
    }
    // A signal to this worker alone (or to the whole group, when the primary stops too and
    // ignores this): the primary replaces it at once, as if it had closed its server, so that new
    // clients of its slot go to the replacement and this worker's drain ends.
    if (ownSignal) notifyPrimary(options.prefix, STOPPING);
    // What keeps this worker from exiting, for the primary's "waiting" line; idle keep-alive
    // connections are closed by then.
    setTimeout(() => {
      if (this.open.size > 0) notifyPrimary(options.prefix, OPEN + this.open.size);
    }, OPEN_REPORT_AFTER).unref();
    const idleSweep = setInterval(() => {
      for (const server of servers) {
        if (typeof server.closeIdleConnections === 'function') internals.sparingFresh(this.open, () => server.closeIdleConnections());
      }
    }, IDLE_SWEEP_EVERY);
    this.finishOpen(hooks)
      .catch((err) => log(this.role, `shutdown: ${err?.stack ? err.stack : err}`))
      .finally(() => {
        this.closeKept();
        clearInterval(idleSweep);
        this.closeReceiver();
        if (options.debug) log(this.role, 'done, exiting');
        this.exit();
      });
  }

  /** Resolves once the shutdown hooks settled and no connection is open or on its way. */
  async finishOpen(hooks) {
    const drained = () =>
      new Promise((resolve) => {
        const check = () => this.open.size === 0 && resolve();
        this.onSocketClosed = () => setImmediate(check);
        check();
      });
    await Promise.all([drained(), ...hooks]);
    for (;;) {
      // Connections already on their way may have been adopted while the hooks ran.
      while (this.open.size > 0) await drained();
      // One more turn of the event loop: what a kept member has ready is accepted first.
      await new Promise((resolve) => setImmediate(resolve));
      if (this.open.size === 0) return;
    }
  }

  /** Exits with 0 when done; on a terminal that hung up, as the hang-up would have ended it. */
  exit() {
    if (this.hungUp) exitHungUp();
    else process.exit(0);
  }
}

/** This process's Worker, once prepared. */
let worker = null;

/**
 * Sets the worker up before the user's start-up code runs, so a shutdown that arrives during
 * async start-up is not missed. Returns false in a worker sticky-rs did not fork (a leftover
 * `cluster.fork()` in the user's primary): it gets no connections, so the app should not start
 * there; the primary has said so, and ends it at shutdown.
 */
function prepare(options, adopted = false) {
  // setupWorker() in a worker the user forked: a sticky-rs primary (setupMaster) adopts it.
  const ours = process.env[WORKER_INDEX] !== undefined || (adopted && process.env[PRIMARY_PID] !== undefined);
  if (!ours) {
    if (process.env[PRIMARY_PID] === undefined) refuse(notOurCluster());
    return false;
  }
  if (worker) return true;
  internals.selfCheck();
  worker = new Worker(options);
  worker.install();
  return true;
}

/** Hands the servers over (see Worker#serve). */
function serve(...servers) {
  worker.serve(servers);
}

/** setupWorker(io) ran: this worker's Socket.IO session ids name its slot. */
function sessionIdsNameSlot() {
  worker.sessionIdsNameSlot = true;
}

/** Whether sticky()/listen() (or an earlier setupWorker) set this worker up already. */
function prepared() {
  return worker !== null;
}

/** This worker's options and the name its debug lines carry, once prepared; else null. */
function current() {
  return worker && { options: worker.options, role: worker.role };
}

module.exports = { prepare, serve, prepared, sessionIdsNameSlot, current };
