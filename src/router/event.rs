//! What the router tells its owner, from its own thread.

use std::sync::Arc;

use super::ChannelId;

/// What the router tells its owner, from its own thread.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A channel's worker said hello and its slot delivers to it now.
    Switched {
        /// The slot.
        slot: usize,
        /// The channel it delivers to.
        channel: ChannelId,
    },
    /// A listener failed and accepts no more; the others go on.
    ListenerFailed {
        /// Its index in `Config::listeners`.
        listener: u8,
        /// The OS error.
        error: String,
    },
    /// After `Router::stop_accepting`: the slot has delivered everything accepted for it
    /// (or has no ready worker to deliver to), and no head is being read any more. Once per slot.
    Drained {
        /// The slot.
        slot: usize,
    },
    /// A channel's worker sent a record it cannot have sent honestly (a count beyond what it
    /// was given or can have accepted): its counts are ignored from now on and it gets no new
    /// connections; it should be replaced.
    Misbehaved {
        /// The slot.
        slot: usize,
        /// The worker's channel.
        channel: ChannelId,
        /// What it claimed.
        reason: String,
    },
    /// The router thread ended on its own (a bug): nothing is accepted or delivered any more.
    Stopped {
        /// Why.
        reason: String,
    },
}

/// Receives the router's events on the router thread; must not block.
pub type OnEvent = Arc<dyn Fn(Event) + Send + Sync + 'static>;
