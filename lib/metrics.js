'use strict';
// primary.stats() as Prometheus metrics, through prom-client (an optional peer dependency: the
// library Node users already run). Values are read from the router when scraped; nothing runs
// between scrapes.

const SLOT = ['slot'];
const NONE = [];

/** A metric with one value per slot. */
function perSlot(field) {
  return (stats) => stats.slots.map((s, slot) => [{ slot: String(slot) }, Number(field(s))]);
}

/** [name, label names, help, type, read(stats) -> [[labels, value], ...]] for every metric. */
const METRICS = [
  ['connections_accepted_total', SLOT, 'Connections accepted for the slot.', 'counter', perSlot((s) => s.accepted)],
  ['connections_delivered_total', SLOT, "Connections the slot's workers confirmed they adopted.", 'counter', perSlot((s) => s.delivered)],
  [
    'connections_redelivered_total',
    SLOT,
    'Connections sent again because their worker died before confirming them.',
    'counter',
    perSlot((s) => s.redelivered),
  ],
  [
    'connections_dropped_total',
    ['slot', 'reason'],
    "Connections closed unserved: the queue was full (queueLimit), the slot held its share of the primary's connections, or they waited longer than queueTimeout.",
    'counter',
    (stats) =>
      stats.slots.flatMap((s, slot) => [
        [{ slot: String(slot), reason: 'queue_full' }, s.dropped - s.expired - s.overShare],
        [{ slot: String(slot), reason: 'over_share' }, s.overShare],
        [{ slot: String(slot), reason: 'queue_timeout' }, s.expired],
      ]),
  ],
  ['connections_abandoned_total', SLOT, 'Waiting connections closed because their client hung up.', 'counter', perSlot((s) => s.abandoned)],
  ['connections_queued', SLOT, 'Connections waiting in the primary for a ready worker now.', 'gauge', perSlot((s) => s.queued)],
  ['connections_in_flight', SLOT, 'Connections sent to the worker and not yet confirmed now.', 'gauge', perSlot((s) => s.inFlight)],
  ['worker_restarts_total', SLOT, "Times the slot's worker exited unasked and was replaced.", 'counter', perSlot((s) => s.restarts)],
  [
    'slot_ready',
    SLOT,
    'Whether the slot delivers to a ready worker now (1) or holds its connections (0).',
    'gauge',
    perSlot((s) => s.ready),
  ],
  ['accept_errors_total', NONE, 'Failed accept() calls (EMFILE, ENFILE, ...).', 'counter', (stats) => [[{}, stats.acceptErrors]]],
  ['listeners_failed_total', NONE, 'Listeners that failed for good.', 'counter', (stats) => [[{}, stats.listenerFailures]]],
  [
    'proxy_rejected_total',
    NONE,
    'Connections from trusted proxies closed for a missing or malformed PROXY header.',
    'counter',
    (stats) => [[{}, stats.rejected]],
  ],
  [
    'proxy_fallbacks_total',
    NONE,
    'Connections from trusted proxies routed by their own address for lack of a usable header.',
    'counter',
    (stats) => [[{}, stats.fallbacks]],
  ],
  [
    'proxy_given_up_total',
    NONE,
    'Slow heads from trusted proxies given up for newer connections (their share was full).',
    'counter',
    (stats) => [[{}, stats.givenUp]],
  ],
  [
    'proxy_resolving',
    NONE,
    'Connections from trusted proxies whose route key is being read now.',
    'gauge',
    (stats) => [[{}, stats.resolving]],
  ],
];

function loadPromClient() {
  try {
    return require('prom-client');
  } catch (cause) {
    throw new Error('sticky-rs: prometheus() needs the prom-client package: npm install prom-client', { cause });
  }
}

/**
 * Registers sticky-rs's metrics for `primary` in `register` (a prom-client Registry; default
 * prom-client's global one), named `prefix` + name (default `sticky_rs_`). Returns the registry.
 */
function prometheus(primary, { register, prefix = 'sticky_rs_', client = loadPromClient() } = {}) {
  if (!primary || typeof primary.stats !== 'function') {
    throw new TypeError('sticky-rs: prometheus(primary) needs the Primary (what sticky() returns, or sticky.primary())');
  }
  const registry = register || client.register;
  // One stats() per scrape, shared by every metric of it.
  let snapshot = null;
  const stats = () => {
    if (!snapshot) {
      try {
        snapshot = primary.stats();
      } catch {
        snapshot = null; // shut down: nothing to report
      }
      setImmediate(() => {
        snapshot = null;
      });
    }
    return snapshot;
  };
  for (const [name, labelNames, help, type, read] of METRICS) {
    const Metric = type === 'counter' ? client.Counter : client.Gauge;
    new Metric({
      name: prefix + name,
      help,
      labelNames,
      registers: [registry],
      collect() {
        this.reset();
        const current = stats();
        if (!current) return;
        for (const [labels, value] of read(current)) {
          if (type === 'counter') this.inc(labels, value);
          else this.set(labels, value);
        }
      },
    });
  }
  return registry;
}

module.exports = { prometheus };
