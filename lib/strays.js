'use strict';
// A leftover `cluster.on('exit', () => cluster.fork())` from a hand-written cluster, next to
// sticky()/listen() (which fork and respawn their own workers): each time one of our workers
// exits, that handler forks a worker that starts nothing and would idle until shutdown, one
// more per crash. Those are ended at once, without their events reaching `cluster` listeners,
// so the handler is not fed and forks nothing more. (With setupMaster, re-forking on 'exit' is
// the supported pattern: this is not used there.)
const cluster = require('node:cluster');

/** Workers sticky-rs forked itself (never ended here). */
const ours = new WeakSet();

/**
 * Ends every worker that a cluster 'exit' listener forks while one of `ours` exits, and keeps
 * its events ('fork', 'online', 'disconnect', 'exit', ...) from `cluster` listeners; tells
 * `onEnded(stray, dead)` of each. Returns the function that undoes it.
 */
function endStrays(onEnded) {
  const silenced = new WeakSet();
  const emit = cluster.emit;
  const filtered = function emitUnlessSilenced(event, worker, ...rest) {
    if (worker && typeof worker === 'object' && silenced.has(worker)) return false;
    return emit.call(this, event, worker, ...rest);
  };
  cluster.emit = filtered;
  // First of the 'exit' listeners, so it sees the workers there were before the others ran;
  // what the others fork is in cluster.workers by the next tick.
  const onExit = (dead) => {
    if (!ours.has(dead)) return;
    const before = new Set(Object.keys(cluster.workers));
    process.nextTick(() => {
      for (const [id, worker] of Object.entries(cluster.workers)) {
        if (before.has(id) || ours.has(worker)) continue;
        silenced.add(worker);
        // Ended before it could talk: an IPC error is no one's.
        worker.on('error', () => {});
        worker.process.kill('SIGTERM');
        onEnded(worker, dead);
      }
    });
  };
  cluster.prependListener('exit', onExit);
  return () => {
    cluster.removeListener('exit', onExit);
    if (cluster.emit === filtered) cluster.emit = emit;
  };
}

module.exports = { endStrays, ours };
