'use strict';
// Warnings no one has to ask for: every second, the router's counters that grew (connections
// dropped or refused, a kernel group repaired) are said, rate-limited. (A failed listener is said
// when the router reports it; workers forked behind sticky-rs's back, by lib/primary.js.)
const WATCH_INTERVAL = 1000;

/**
 * Starts watching `primary`'s router (its `router`, `options`, `slots`, `warnings`); returns the
 * function that stops it.
 */
function watchCounters(primary) {
  const o = primary.options;
  let last = primary.router.stats();
  const timer = setInterval(() => {
    let now;
    try {
      now = primary.router.stats();
    } catch {
      return; // closed under us: nothing left to watch
    }
    sayCounters(primary, last, now);
    last = now;
    primary.warnings.flush();
  }, WATCH_INTERVAL);
  timer.unref();
  return () => clearInterval(timer);

  function sayCounters({ slots, warnings }, was, now) {
    for (const [index, s] of now.slots.entries()) {
      const before = was.slots[index];
      const expired = s.expired - before.expired;
      const overShare = s.overShare - before.overShare;
      const full = s.dropped - before.dropped - expired - overShare;
      const current = slots[index]?.current;
      const which = `slot ${index} (${current ? `worker pid ${current.worker.process.pid}` : 'no worker'})`;
      warnings.note(
        `full:${index}`,
        full,
        (n) =>
          `${which}: closed ${n} new connection(s) unserved: the slot's queue was full (queueLimit ${o.queueLimit}); its worker is not ready or cannot keep up`,
      );
      warnings.note(
        `share:${index}`,
        overShare,
        (n) =>
          `${which}: closed ${n} new connection(s) unserved: the slot holds its share of the connections the primary may hold (half its free file descriptors); its worker is not ready, stuck, or out of descriptors. Other slots are not affected; raise ulimit -n for more room`,
      );
      warnings.note(
        `expired:${index}`,
        expired,
        (n) => `${which}: closed ${n} connection(s) that waited longer than queueTimeout (${o.queueTimeout} ms) for a ready worker`,
      );
      // Kernel dispatch: clients of a slot without a ready worker wait in its members' accept
      // queues, where nothing counts what overflows; said once they waited a whole interval.
      const waits = (counters) => now.dispatch === 'kernel' && counters.channel === 0 && counters.queued > 0;
      if (waits(s) && waits(before)) {
        warnings.note(
          `waiting:${index}`,
          1,
          () =>
            `${which}: ${s.queued} connection(s) wait in the kernel's accept queue for a ready worker; past backlog (${o.listeners.map((l) => l.backlog).join(', ')}) new clients of this slot get no answer and retry`,
        );
      }
    }
    sayKernel(warnings, was, now);
    warnings.note(
      'rejected',
      now.rejected - was.rejected,
      (n) =>
        `closed ${n} connection(s) from trusted proxies without a valid PROXY header (routeBy 'proxy-protocol'): is the proxy configured to send it (HAProxy send-proxy, nginx proxy_protocol on)?`,
    );
    warnings.note(
      'otherNode',
      now.otherNode - was.otherNode,
      (n) =>
        `answered ${n} request(s) for Socket.IO sessions of other nodes 400 "Session ID unknown" (this is node "${o.node}"): the balancer must send every request with a sid to the node its prefix names (docs: "Many machines")`,
    );
  }
}

/**
 * Kernel dispatch: code holding a member of a listener's SO_REUSEPORT group (a worker, or a
 * process of the same user) changed it and the router's checks repaired it, or cannot: said
 * always, with what was found.
 */
function sayKernel(warnings, was, now) {
  for (const [listener, health] of now.kernel.entries()) {
    const before = was.kernel[listener];
    const found = health.repairs - (before ? before.repairs : 0);
    const latest = health.recent.slice(-Math.min(found, 3)).join('; ');
    warnings.note(
      `kernel:${listener}`,
      found,
      (n) =>
        `kernel dispatch, listener ${listener}: its SO_REUSEPORT group was tampered with, by code in a worker or a process of the same user (${n} repair(s)): ${latest}`,
    );
    for (const damage of health.damage) {
      warnings.note(`kernel-damage:${listener}:${damage}`, 1, () => `kernel dispatch, listener ${listener}: damaged: ${damage}`);
    }
  }
}

module.exports = { watchCounters };
