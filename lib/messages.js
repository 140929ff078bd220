'use strict';
// The IPC messages between the primary and a worker. Their names start with the prefix.
// Primary -> worker: plain string messages, as sticky-cluster's were.
// Worker -> primary: Node-internal messages ({ cmd: 'NODE_STICKY_RS', type }), the way Node's own
// cluster talks, so they never reach the user's worker.on('message') listeners (sticky-session's
// tests check that a worker's first message is the application's).
// Anything else on the channel (e.g. @socket.io/cluster-adapter's) is someone else's.
const READY = 'ready'; // worker -> primary: its server is handed over; send the channel
const CHANNEL = 'channel'; // primary -> worker, with the channel's worker end as the handle
// primary -> worker (kernel dispatch): `listen:<i>`, with the slot's member of listener i's
// SO_REUSEPORT group as the handle; the worker's server i listens on it.
const LISTEN = 'listen:';
// primary -> worker (setupMaster): `place:<slot>` (with the `node` option `place:<slot>.<node>`),
// the slot an adopted worker serves, before its channel; its session ids name it (and the node).
const PLACE = 'place:';
const SHUTDOWN = 'shutdown'; // primary -> worker: finish what is open and exit
const CLOSING = 'closing'; // worker -> primary: the user closed the server (sticky-session): replace me
// worker -> primary: it got SIGINT/SIGTERM of its own and is stopping: replace me, unless the
// primary is being stopped too (Ctrl-C reaches the whole group; the primary holds it briefly).
const STOPPING = 'stopping';
// worker -> primary: `open:<n>`, a shutting-down worker still has n connections open 300 ms in
// (websockets, Server-Sent Events, long requests): the primary says what the shutdown waits for.
const OPEN = 'open:';

const INTERNAL = 'NODE_STICKY_RS';
// worker -> primary, without the prefix (sent before the options are known): `{ cmd: INTERNAL,
// type: FAILED, error }`, the uncaught error that ends a worker before it was ready; the primary
// reports each distinct one once.
const FAILED = 'sticky-rs:failed';

/** The environment variable that tells each of our workers its slot (both APIs). */
const WORKER_INDEX = 'STICKY_RS_WORKER_INDEX';
/** The environment variable that tells a worker its node name (`node` option), if any. */
const NODE_NAME = 'STICKY_RS_NODE';
/** Set in a sticky-rs primary (its pid), so every process it forks knows who forked it. */
const PRIMARY_PID = 'STICKY_RS_PRIMARY_PID';

/** Sends a worker -> primary notice; a closed channel (primary gone) is not an error here. */
function notifyPrimary(prefix, type) {
  process.send({ cmd: INTERNAL, type: prefix + type }, () => {});
}

/** The type of a worker -> primary notice, or null for anything else. */
function noticeType(prefix, message) {
  if (!message || message.cmd !== INTERNAL || typeof message.type !== 'string') return null;
  return message.type.startsWith(prefix) ? message.type.slice(prefix.length) : null;
}

module.exports = {
  INTERNAL,
  FAILED,
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
  notifyPrimary,
  noticeType,
};
