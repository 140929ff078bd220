//! Counters the accept thread writes and JavaScript reads without a round trip.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Counters of one slot.
#[derive(Debug, Default)]
pub(crate) struct SlotCounters {
    /// Connections accepted for this slot: by the router, or (kernel dispatch) by the slot's
    /// workers themselves, as they report them.
    pub(crate) accepted: AtomicU64,
    /// Connections a worker confirmed it adopted, or accepted itself (kernel dispatch).
    pub(crate) delivered: AtomicU64,
    /// Connections waiting in the primary now.
    pub(crate) queued: AtomicU64,
    /// Connections sent and not yet confirmed now.
    pub(crate) in_flight: AtomicU64,
    /// Connections put back in the queue because their worker died before confirming them, or
    /// never got them (out of descriptors); each counted once, however often it is sent again.
    pub(crate) redelivered: AtomicU64,
    /// Connections closed unserved: the slot's queue was full, it held its share of the
    /// router's connections, or they waited too long.
    pub(crate) dropped: AtomicU64,
    /// The part of `dropped` that waited longer than `queue_timeout` (the rest found the queue full).
    pub(crate) expired: AtomicU64,
    /// The part of `dropped` closed on arrival because the slot held its share of the
    /// connections the router may hold (its worker stuck, slow, out of descriptors or not ready).
    pub(crate) over_share: AtomicU64,
    /// Waiting connections closed because their client hung up (not in `dropped`).
    pub(crate) abandoned: AtomicU64,
    /// The channel the slot delivers to now (0: none, the slot has no ready worker).
    pub(crate) channel: AtomicU64,
}

/// A plain copy of [`SlotCounters`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SlotSnapshot {
    /// See [`SlotCounters::accepted`].
    pub accepted: u64,
    /// See [`SlotCounters::delivered`].
    pub delivered: u64,
    /// See [`SlotCounters::queued`].
    pub queued: u64,
    /// See [`SlotCounters::in_flight`].
    pub in_flight: u64,
    /// See [`SlotCounters::redelivered`].
    pub redelivered: u64,
    /// See [`SlotCounters::dropped`].
    pub dropped: u64,
    /// See [`SlotCounters::expired`].
    pub expired: u64,
    /// See [`SlotCounters::over_share`].
    pub over_share: u64,
    /// See [`SlotCounters::abandoned`].
    pub abandoned: u64,
    /// See [`SlotCounters::channel`].
    pub channel: u64,
}

/// All counters of a router.
#[derive(Debug)]
pub struct Stats {
    /// One entry per slot.
    pub(crate) slots: Vec<SlotCounters>,
    /// Failed `accept` calls (EMFILE, ENFILE, ...).
    pub(crate) accept_errors: AtomicU64,
    /// Connections from trusted proxies closed for a missing or malformed PROXY header.
    pub(crate) rejected: AtomicU64,
    /// Connections from trusted proxies routed by their address for lack of a usable header.
    pub(crate) fallbacks: AtomicU64,
    /// (`routeBy: 'sid'` with `node`) Requests for a session of another node, answered 400
    /// "Session ID unknown" by the router and closed: a balancer sent them to the wrong host.
    pub(crate) other_node: AtomicU64,
    /// Connections from trusted proxies whose route key is being read now.
    pub(crate) resolving: AtomicU64,
    /// Connections from trusted proxies whose head was given up unread for a newer one (the
    /// share of slow heads was full); also counted in `rejected` or `fallbacks`.
    pub(crate) given_up: AtomicU64,
    /// Listeners that failed and accept no more.
    pub(crate) listener_failures: AtomicU64,
    /// Sends to a worker that failed for another reason than a full socket or a gone worker
    /// (ETOOMANYREFS, ENOBUFS...); each is retried.
    pub(crate) send_errors: AtomicU64,
}

impl Stats {
    /// Zeroed counters for `slots` slots.
    pub(crate) fn new(slots: usize) -> Self {
        Stats {
            slots: (0..slots).map(|_| SlotCounters::default()).collect(),
            accept_errors: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            other_node: AtomicU64::new(0),
            fallbacks: AtomicU64::new(0),
            resolving: AtomicU64::new(0),
            given_up: AtomicU64::new(0),
            listener_failures: AtomicU64::new(0),
            send_errors: AtomicU64::new(0),
        }
    }

    /// Adds `n` to a counter.
    #[inline]
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Relaxed);
    }

    /// Sets a gauge.
    #[inline]
    pub(crate) fn set(counter: &AtomicU64, n: u64) {
        counter.store(n, Relaxed);
    }

    /// A copy of one slot's counters.
    pub fn snapshot(&self, index: usize) -> SlotSnapshot {
        let c = &self.slots[index];
        SlotSnapshot {
            accepted: c.accepted.load(Relaxed),
            delivered: c.delivered.load(Relaxed),
            queued: c.queued.load(Relaxed),
            in_flight: c.in_flight.load(Relaxed),
            redelivered: c.redelivered.load(Relaxed),
            dropped: c.dropped.load(Relaxed),
            expired: c.expired.load(Relaxed),
            over_share: c.over_share.load(Relaxed),
            abandoned: c.abandoned.load(Relaxed),
            channel: c.channel.load(Relaxed),
        }
    }

    /// The number of failed accepts so far.
    pub fn accept_errors(&self) -> u64 {
        self.accept_errors.load(Relaxed)
    }

    /// See [`Stats::rejected`].
    pub fn rejected(&self) -> u64 {
        self.rejected.load(Relaxed)
    }

    /// See [`Stats::other_node`].
    pub fn other_node(&self) -> u64 {
        self.other_node.load(Relaxed)
    }

    /// See [`Stats::fallbacks`].
    pub fn fallbacks(&self) -> u64 {
        self.fallbacks.load(Relaxed)
    }

    /// See [`Stats::given_up`].
    pub fn given_up(&self) -> u64 {
        self.given_up.load(Relaxed)
    }

    /// See [`Stats::listener_failures`].
    pub fn listener_failures(&self) -> u64 {
        self.listener_failures.load(Relaxed)
    }

    /// See [`Stats::send_errors`].
    pub fn send_errors(&self) -> u64 {
        self.send_errors.load(Relaxed)
    }

    /// See [`Stats::resolving`].
    pub fn resolving(&self) -> u64 {
        self.resolving.load(Relaxed)
    }
}
