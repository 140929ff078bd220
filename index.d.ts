/// <reference types="node" />
import type { EventEmitter } from 'node:events';
import type { Server } from 'node:net';
import type { Worker } from 'node:cluster';

declare namespace sticky {
  /**
   * A count, port or duration: a number, or a string of digits (`process.env.WEB_CONCURRENCY`),
   * as the originals took them. Falsy values (`0`, `''`, `null`, `undefined`, `NaN`) mean the
   * default, except for `queueLimit` and `listen()`'s port, where 0 is a real value.
   */
  type Count = number | string | null | false;

  /** Options shared by both APIs (sticky-rs additions to the originals). */
  interface CommonOptions {
    /** Host to listen on. Default: dual-stack `::`, like the originals. */
    host?: string;
    /** `listen()` backlog. Default 511, like Node. */
    backlog?: Count;
    /**
     * `true`: log lifecycle lines (forks, exits, channels, with slot and pid) to stderr;
     * `'connections'`: also one line per connection. `DEBUG=sticky-rs*` does the same. Default false.
     * Warnings (dropped connections, crash loops, ...) are logged whatever this says.
     */
    debug?: boolean | 'connections';
    /** Prefix of the IPC messages between primary and workers. Default `'sticky-cluster:'`. */
    prefix?: string;
    /** (Router only) connections a slot may hold in the primary while its worker is not ready; beyond, they are closed. Default 1024. */
    queueLimit?: Count;
    /**
     * Who picks each connection's worker: `'kernel'` (Linux, `routeBy: 'address'`: a SO_REUSEPORT
     * group whose BPF program computes the slot; the workers accept themselves), `'primary'` (the
     * router in the primary accepts and passes every connection), or `'auto'` (the default:
     * `'kernel'` where it can work, else `'primary'`). `'kernel'` where it cannot work throws a RangeError.
     */
    dispatch?: 'auto' | 'kernel' | 'primary';
    /** Route hash: `'djb2'` (sticky-cluster's, the default) or `'djb2-mix'` (djb2 + murmur3's fmix32: even for 16 or 32 workers). */
    hash?: 'djb2' | 'djb2-mix';
    /** (Router only) ms a connection may wait in the primary for a ready worker. Default 30000. */
    queueTimeout?: Count;
    /** ms a new worker may take to hand its server over before it is replaced. Default 30000. */
    readyTimeout?: Count;
    /** ms before a dead worker is replaced; doubles per crash in a row. Default 100. */
    respawnDelay?: Count;
    /** Upper bound of the respawn delay, ms. Default 10000. */
    maxRespawnDelay?: Count;
    /** A worker that lived this long (ms) resets the respawn delay. Default 30000. */
    respawnResetAfter?: Count;
    /** Grace period of a shutdown before remaining workers are killed, in ms. Default 60000. */
    hardShutdownDelay?: Count;
    /**
     * More unasked exits than this of one slot's workers within `restartWindow` end a crash loop:
     * the primary shuts down and exits with code 1. `Infinity`: never. Default 10.
     */
    maxRestarts?: Count;
    /** The window of `maxRestarts`, in ms. Default 60000. */
    restartWindow?: Count;
    /**
     * Where the route key comes from, for connections from `trustedProxies`: the peer address
     * (default), `'x-forwarded-for'` (the right-most untrusted entry), any other request header,
     * or `'proxy-protocol'` (v1/v2; the worker's socket then reports the client as remoteAddress).
     */
    routeBy?: 'address' | 'sid' | 'x-forwarded-for' | 'proxy-protocol' | (string & {});
    /**
     * With `routeBy: 'sid'`: where new Socket.IO sessions go. Default `'least-connection'`
     * (the ready worker with the fewest open connections, as reported by the workers).
     */
    loadBalancingMethod?: 'least-connection' | 'round-robin' | 'random';
    /**
     * With `routeBy: 'sid'`, several hosts behind one balancer: this host's name, 1 to 16
     * characters `[a-z0-9]`. Every session id then starts with `<node>.`, so the balancer can
     * route each request by the id alone; a request for another node's session is answered 400.
     */
    node?: string;
    /** Addresses and CIDR ranges whose headers / PROXY data are believed. Required with routeBy. */
    trustedProxies?: string[];
    /** Bytes read at most to find a forwarded key. Default 8192. */
    peekLimit?: Count;
    /** ms waited at most for them. Default 3000. */
    peekTimeout?: Count;
  }

  /** One address to listen on. */
  interface Listener {
    port: number | string;
    host?: string;
    backlog?: Count;
  }

  /** Upgrading the whole server without downtime (README "Upgrading without downtime"). */
  interface UpgradeOptions {
    /**
     * A signal that makes the primary upgrade itself (`primary.upgrade()`), e.g. `'SIGUSR2'` as
     * nginx. Default: none, and no handler is installed (nodemon sends SIGUSR2 and expects an exit).
     */
    upgradeSignal?: string;
    /** The Node binary the new primary runs, resolved at upgrade time. Default `process.execPath`. */
    upgradeExecPath?: string;
    /** A file that holds the pid of the primary owning the listening sockets (written atomically). */
    pidFile?: string;
  }

  /** sticky-cluster 0.3.5's options; a falsy value means the default, as there. */
  interface ClusterOptions extends CommonOptions, UpgradeOptions {
    /** Number of workers. Default: number of CPUs. */
    concurrency?: Count;
    /** Port to listen on. Default 8080. */
    port?: Count;
    /** Several addresses instead of port/host; workers hand over one server per listener, in order. */
    listeners?: Listener[];
    /** Environment of the worker of slot `index`. Default `{ stickycluster_worker_index: index }`. */
    env?: (index: number) => Record<string, string | number | boolean | undefined>;
    /** Receives listen errors such as EADDRINUSE or ENOTFOUND. Default: log and `process.exit(1)`. */
    errorHandler?: (err: ListenError) => void;
  }

  /** sticky-session 1.x's options. */
  interface SessionOptions extends CommonOptions, UpgradeOptions {
    /** Number of workers. Default: number of CPUs. */
    workers?: Count;
    /** Extra environment of every worker. */
    env?: Record<string, string | number | boolean | undefined>;
  }

  /** Counters of one slot. */
  interface SlotStats {
    /** The pid of the slot's current worker, or null between a death and its replacement. */
    pid: number | null;
    /** Connections for this slot: accepted by the router, or by its workers (kernel dispatch; reported every 100 ms at most). */
    accepted: number;
    /** Connections the worker confirmed it adopted, or accepted itself (kernel dispatch). */
    delivered: number;
    /** Waiting for the slot's worker now: in the primary, and in the kernel's accept queue (kernel dispatch). */
    queued: number;
    /** Sent and not yet confirmed now. */
    inFlight: number;
    /** Put back in the queue because their worker died before confirming them or never got them; each once. */
    redelivered: number;
    /** Closed unserved: the slot's queue was full, it held its share of the primary's connections, or they waited longer than queueTimeout. */
    dropped: number;
    /** The part of `dropped` that waited longer than queueTimeout. */
    expired: number;
    /** The part of `dropped` closed on arrival because the slot held its share of the connections the primary may hold (router only). */
    overShare: number;
    /** Waiting connections closed because their client hung up (router only; not in `dropped`). */
    abandoned: number;
    /** Times the slot's worker exited unasked and was replaced. */
    restarts: number;
    /** Whether the slot delivers to a ready worker now. */
    ready: boolean;
  }

  interface Stats {
    /** Which dispatch runs (`'auto'` resolved, after any fallback). */
    dispatch: 'kernel' | 'primary';
    /** Why that one: asked for, what `'auto'` found, or why the kernel refused it (then also warned at start). */
    dispatchReason: string;
    acceptErrors: number;
    /** Connections from trusted proxies closed for a missing or malformed PROXY header. */
    rejected: number;
    /** Connections from trusted proxies routed by their own address for lack of a usable key. */
    fallbacks: number;
    /** (`routeBy: 'sid'` with `node`) Requests for another node's sessions, answered 400 here. */
    otherNode: number;
    /** Connections from trusted proxies whose route key is being read now. */
    resolving: number;
    /** Slow heads from trusted proxies given up for newer connections (their share was full). */
    givenUp: number;
    /** Listeners that failed and accept no more. */
    listenerFailures: number;
    /** Sends to workers that failed for another reason than a full socket (retried). */
    sendErrors: number;
    /** Kernel dispatch: per listener, what the primary's checks of its SO_REUSEPORT group found (empty with the router). */
    kernel: KernelHealth[];
    slots: SlotStats[];
  }

  /** What code holding a member of a kernel-dispatch group (a worker, a process of the same user) changed, and what lasts. */
  interface KernelHealth {
    /** Repairs made since the group was bound. */
    repairs: number;
    /** What was found and done, newest last (the last 16). */
    recent: string[];
    /** Slots whose socket cannot be repaired (a locked socket filter): the primary routes their clients. */
    detoured: number[];
    /** Damage that lasts, now; empty when the group is whole. */
    damage: string[];
  }

  interface WorkerEvent {
    slot: number;
    worker: Worker;
  }

  interface ExitEvent extends WorkerEvent {
    code: number | null;
    signal: string | null;
  }

  interface RespawnEvent {
    slot: number;
    /** ms until the new worker is forked. */
    delay: number;
  }

  /** The events of a Primary and their argument. */
  interface PrimaryEvents {
    /** A worker was forked for `slot`. */
    fork: WorkerEvent;
    /** The worker handed its server over and its slot delivers to it now. */
    ready: WorkerEvent;
    exit: ExitEvent;
    /** A dead worker's slot gets a new worker after `delay` ms. */
    respawn: RespawnEvent;
    /** A listener failed and accepts no more (the others go on). */
    error: Error;
    /** In a primary started by an upgrade: the old primary has exited; the sockets are this one's alone. */
    takeover: { previous: number };
  }

  type PrimaryListener<E extends keyof PrimaryEvents> = (event: PrimaryEvents[E]) => void;

  /** A listen error, shaped like Node's: `listen EADDRINUSE: ...` or `getaddrinfo ENOTFOUND host`. */
  interface ListenError extends NodeJS.ErrnoException {
    /** The host that did not resolve (ENOTFOUND, EAI_AGAIN). */
    hostname?: string;
    /** The address and port that could not be bound. */
    address?: string;
    port?: number;
  }

  /** The cluster primary, returned by `sticky(startFn, options)` in the primary process. */
  interface Primary extends EventEmitter {
    /** The address the router listens on, or null if listening failed. */
    address(): { address: string; family: string; port: number } | null;
    /** Every listener's address, in order. */
    addresses(): Array<{ address: string; family: string; port: number }> | null;
    /** Per-slot pids and counters, or null if listening failed; throws after shutdown. */
    stats(): Stats | null;
    /** Stops accepting, delivers what was accepted, asks every worker to finish; resolves with 0, or 1 if hardShutdownDelay ran out. */
    shutdown(): Promise<number>;
    /**
     * Replaces every worker, slot after slot, without dropping a connection; resolves once every
     * slot runs a new worker. The old workers finish their connections in parallel: `drained`
     * resolves once they are all gone.
     */
    reload(): Promise<{ drained: Promise<void> }>;
    /**
     * Starts a new primary (same argv, cwd and start-up environment: it re-reads the app's code)
     * on this one's listening sockets; resolves with its pid once it is ready on every slot, after
     * which this primary retires its workers and exits 0. Rejects, this primary still serving, if
     * the new one exits or is not ready within readyTimeout, or if an upgrade is under way.
     */
    upgrade(): Promise<{ pid: number }>;
    on<E extends keyof PrimaryEvents>(event: E, listener: PrimaryListener<E>): this;
    once<E extends keyof PrimaryEvents>(event: E, listener: PrimaryListener<E>): this;
    off<E extends keyof PrimaryEvents>(event: E, listener: PrimaryListener<E>): this;
    addListener<E extends keyof PrimaryEvents>(event: E, listener: PrimaryListener<E>): this;
    removeListener<E extends keyof PrimaryEvents>(event: E, listener: PrimaryListener<E>): this;
    prependListener<E extends keyof PrimaryEvents>(event: E, listener: PrimaryListener<E>): this;
    prependOnceListener<E extends keyof PrimaryEvents>(event: E, listener: PrimaryListener<E>): this;
  }

  /** The argument of the `'sticky:shutdown'` event a handed-over server emits when its worker is asked to stop. */
  interface ShutdownEvent {
    /** The worker exits only once `promise` settled (and its connections closed). */
    waitUntil(promise: Promise<unknown>): void;
  }

  /**
   * sticky-session: returns false in the primary and true in a worker, where `server` gets the
   * connections. In the primary, `server.address()` is what the router bound (port 0 picks a
   * free one) and `sticky.primary()` is the Primary.
   */
  function listen(server: Server, port: number | string, options?: SessionOptions): boolean;

  interface SocketIoMasterOptions extends Omit<CommonOptions, 'routeBy' | 'trustedProxies' | 'loadBalancingMethod'> {
    /** Where new sessions go. Default `'least-connection'`. */
    loadBalancingMethod?: 'least-connection' | 'round-robin' | 'random';
    /** Most workers that can be adopted at once (a session id encodes at most 4096). Default 64. */
    maxWorkers?: Count;
  }

  /**
   * @socket.io/sticky's setupMaster, in the cluster primary: `httpServer.listen(...)` then starts
   * the router (routeBy 'sid'); every worker you `cluster.fork()` that calls setupWorker(io)
   * gets connections. Throws outside the primary.
   */
  function setupMaster(httpServer: Server, options?: SocketIoMasterOptions): void;

  /**
   * @socket.io/sticky's setupWorker, in a worker: the Socket.IO server's session ids name this
   * worker, and `io.httpServer` (never listening) gets its connections. TypeError for anything
   * else than a Socket.IO server attached to an http(s).Server.
   */
  function setupWorker(io: { engine: unknown; httpServer: Server }): void;

  /** The Primary this process started with either API, or null (in workers, or before). */
  function primary(): Primary | null;

  interface PrometheusOptions<R> {
    /** A prom-client Registry. Default: prom-client's global registry. */
    register?: R;
    /** Prefix of the metric names. Default `'sticky_rs_'`. */
    prefix?: string;
  }

  /**
   * Registers the primary's stats() as Prometheus metrics (prom-client, an optional peer
   * dependency) in `register`, with `slot` labels; returns the registry.
   */
  function prometheus<R = unknown>(primary: Primary, options?: PrometheusOptions<R>): R;
}

declare module 'net' {
  interface Server {
    /** sticky-rs: the worker was asked to stop; `waitUntil(promise)` delays its exit until the promise settles. */
    on(event: 'sticky:shutdown', listener: (event: sticky.ShutdownEvent) => void): this;
    once(event: 'sticky:shutdown', listener: (event: sticky.ShutdownEvent) => void): this;
    off(event: 'sticky:shutdown', listener: (event: sticky.ShutdownEvent) => void): this;
  }
}

/**
 * sticky-cluster: `startFn` runs in each worker and calls `callback(server)` with a server that
 * has not listened (possibly after async work). Returns the Primary in the primary, undefined in workers.
 */
declare function sticky(
  startFn: (callback: (...servers: Server[]) => void) => void,
  options?: sticky.ClusterOptions,
): sticky.Primary | undefined;

export = sticky;
