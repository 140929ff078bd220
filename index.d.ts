import type { EventEmitter } from 'node:events';
import type { Server } from 'node:net';
import type { Worker } from 'node:cluster';

declare namespace sticky {
  /** Options shared by both APIs (sticky-rs additions to the originals). */
  interface CommonOptions {
    /** Host to listen on. Default: dual-stack `::`, like the originals. */
    host?: string;
    /** `listen()` backlog. Default 511, like Node. */
    backlog?: number;
    /** Log lifecycle and routing decisions to stderr. Default false. */
    debug?: boolean;
    /** Prefix of the IPC messages between primary and workers. Default `'sticky-cluster:'`. */
    prefix?: string;
    /** Connections a slot may hold in the primary while its worker is not ready; beyond, they are closed. Default 1024. */
    queueLimit?: number;
    /** Route hash: `'djb2'` (sticky-cluster's, the default) or `'djb2-mix'` (djb2 + murmur3's fmix32: even for 16 or 32 workers). */
    hash?: 'djb2' | 'djb2-mix';
    /** ms a connection may wait in the primary for a ready worker. Default 30000. */
    queueTimeout?: number;
    /** ms a new worker may take to hand its server over before it is replaced. Default 30000. */
    readyTimeout?: number;
    /** ms before a dead worker is replaced; doubles per crash in a row. Default 100. */
    respawnDelay?: number;
    /** Upper bound of the respawn delay, ms. Default 10000. */
    maxRespawnDelay?: number;
    /** A worker that lived this long (ms) resets the respawn delay. Default 30000. */
    respawnResetAfter?: number;
    /** Grace period of a shutdown before remaining workers are killed, in ms. Default 60000. */
    hardShutdownDelay?: number;
    /**
     * Where the route key comes from, for connections from `trustedProxies`: the peer address
     * (default), `'x-forwarded-for'` (the right-most untrusted entry), any other request header,
     * or `'proxy-protocol'` (v1/v2; the worker's socket then reports the client as remoteAddress).
     */
    routeBy?: 'address' | 'x-forwarded-for' | 'proxy-protocol' | (string & {});
    /** Addresses and CIDR ranges whose headers / PROXY data are believed. Required with routeBy. */
    trustedProxies?: string[];
    /** Bytes read at most to find a forwarded key. Default 8192. */
    peekLimit?: number;
    /** ms waited at most for them. Default 3000. */
    peekTimeout?: number;
  }

  /** One address to listen on. */
  interface Listener {
    port: number | string;
    host?: string;
    backlog?: number;
  }

  /** sticky-cluster 0.3.5's options; a falsy value means the default, as there. */
  interface ClusterOptions extends CommonOptions {
    /** Number of workers. Default: number of CPUs. */
    concurrency?: number;
    /** Port to listen on. Default 8080. */
    port?: number | string;
    /** Several addresses instead of port/host; workers hand over one server per listener, in order. */
    listeners?: Listener[];
    /** Environment of the worker of slot `index`. Default `{ stickycluster_worker_index: index }`. */
    env?: (index: number) => Record<string, string | number | boolean | undefined>;
    /** Receives listen errors such as EADDRINUSE. Default: log and `process.exit(1)`. */
    errorHandler?: (err: NodeJS.ErrnoException) => void;
  }

  /** sticky-session 1.x's options. */
  interface SessionOptions extends CommonOptions {
    /** Number of workers. Default: number of CPUs. */
    workers?: number;
    /** Extra environment of every worker. */
    env?: Record<string, string | number | boolean | undefined>;
  }

  /** Counters of one slot. */
  interface SlotStats {
    /** The pid of the slot's current worker, or null between a death and its replacement. */
    pid: number | null;
    accepted: number;
    /** Connections the worker confirmed it adopted. */
    delivered: number;
    /** Waiting in the primary now. */
    queued: number;
    /** Sent and not yet confirmed now. */
    inFlight: number;
    /** Put back in the queue because their worker died before confirming them. */
    redelivered: number;
    /** Closed unserved: the slot's queue was full or they waited longer than queueTimeout. */
    dropped: number;
    /** Whether the slot delivers to a ready worker now. */
    ready: boolean;
  }

  interface Stats {
    acceptErrors: number;
    /** Connections from trusted proxies closed for a missing or malformed PROXY header. */
    rejected: number;
    /** Connections from trusted proxies routed by their own address for lack of a usable key. */
    fallbacks: number;
    /** Connections from trusted proxies whose route key is being read now. */
    resolving: number;
    /** Slow heads from trusted proxies given up for newer connections (their share was full). */
    givenUp: number;
    /** Listeners that failed and accept no more. */
    listenerFailures: number;
    /** Sends to workers that failed for another reason than a full socket (retried). */
    sendErrors: number;
    slots: SlotStats[];
  }

  interface WorkerEvent {
    slot: number;
    worker: Worker;
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
    /** Replaces every worker, one slot at a time, without dropping a connection. */
    reload(): Promise<void>;
    on(event: 'fork' | 'ready', listener: (e: WorkerEvent) => void): this;
    on(event: 'exit', listener: (e: WorkerEvent & { code: number | null; signal: string | null }) => void): this;
    on(event: 'respawn', listener: (e: { slot: number; delay: number }) => void): this;
    /** A listener failed and accepts no more (the others go on). */
    on(event: 'error', listener: (err: Error) => void): this;
  }

  /** The argument of the `'sticky:shutdown'` event a handed-over server emits when its worker is asked to stop. */
  interface ShutdownEvent {
    /** The worker exits only once `promise` settled (and its connections closed). */
    waitUntil(promise: Promise<unknown>): void;
  }

  /** sticky-session: returns false in the primary and true in a worker, where `server` gets the connections. */
  function listen(server: Server, port: number | string, options?: SessionOptions): boolean;
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
