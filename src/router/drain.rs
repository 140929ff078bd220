//! Draining (graceful shutdown): after the router stops accepting, which slots have delivered
//! everything, each said once; and, with kernel dispatch, how long the workers may still take
//! what the kernel's accept queues hold.
//!
//! No I/O: the dispatcher says what each slot holds and the event loop what the kernel holds.

use tokio::time::Instant;

/// Where draining stands.
#[derive(Debug, Default)]
pub(crate) struct Drain {
    /// After the router stopped accepting: per slot, whether it was said to be drained.
    said: Option<Vec<bool>>,
    /// Kernel dispatch: until when the workers may accept what the members queued; `None`
    /// once the members stopped listening (or without kernel dispatch).
    kernel_until: Option<Instant>,
}

impl Drain {
    /// Not draining.
    pub(crate) fn new() -> Drain {
        Drain::default()
    }

    /// Draining starts for `slots` slots; with kernel dispatch (`kernel_until`) the members
    /// still queue connections for the workers until then at most.
    pub(crate) fn start(&mut self, slots: usize, kernel_until: Option<Instant>) {
        self.said = Some(vec![false; slots]);
        self.kernel_until = kernel_until;
    }

    /// Whether a slot is still to be said drained (the tick keeps running for it).
    pub(crate) fn pending(&self) -> bool {
        self.said.as_ref().is_some_and(|said| said.contains(&false))
    }

    /// Kernel dispatch: whether the members are to stop listening now, because no slot that
    /// can still take connections has any in the kernel's queues (`waiting`) or the time is up.
    /// True once.
    pub(crate) fn kernel_done(&mut self, now: Instant, waiting: bool) -> bool {
        match self.kernel_until {
            Some(until) if !waiting || now >= until => {
                self.kernel_until = None;
                true
            }
            _ => false,
        }
    }

    /// Kernel dispatch: whether the members still hold connections for the workers.
    pub(crate) fn kernel_waiting(&self) -> bool {
        self.kernel_until.is_some()
    }

    /// The slots drained just now: none while a head is being read (`resolving`, it may be
    /// for any slot) or the kernel's queues wait (for every slot); else each slot not said
    /// before for which `drained(slot)` holds.
    pub(crate) fn newly_drained(
        &mut self,
        resolving: usize,
        drained: impl Fn(usize) -> bool,
    ) -> Vec<usize> {
        if resolving > 0 || self.kernel_until.is_some() {
            return Vec::new();
        }
        let Some(said) = self.said.as_mut() else {
            return Vec::new();
        };
        let mut now = Vec::new();
        for (slot, said) in said.iter_mut().enumerate() {
            if !*said && drained(slot) {
                *said = true;
                now.push(slot);
            }
        }
        now
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn each_slot_is_said_drained_once_when_it_is() {
        let mut d = Drain::new();
        assert!(!d.pending());
        assert!(d.newly_drained(0, |_| true).is_empty(), "not draining");
        d.start(3, None);
        assert!(d.pending());
        // A head being read may be for any slot.
        assert!(d.newly_drained(1, |_| true).is_empty());
        assert_eq!(d.newly_drained(0, |s| s != 1), vec![0, 2]);
        assert_eq!(d.newly_drained(0, |_| true), vec![1]);
        assert!(d.newly_drained(0, |_| true).is_empty());
        assert!(!d.pending());
    }

    #[test]
    fn the_kernel_queues_hold_every_slot_until_empty_or_the_deadline() {
        let start = Instant::now();
        let mut d = Drain::new();
        d.start(2, Some(start + Duration::from_secs(1)));
        assert!(d.kernel_waiting());
        assert!(d.newly_drained(0, |_| true).is_empty());
        assert!(!d.kernel_done(start, true));
        // Time is up, even with connections queued: once.
        assert!(d.kernel_done(start + Duration::from_secs(1), true));
        assert!(!d.kernel_done(start + Duration::from_secs(2), false));
        assert_eq!(d.newly_drained(0, |_| true), vec![0, 1]);
        // Or nothing queued any more.
        let mut d = Drain::new();
        d.start(1, Some(start + Duration::from_secs(1)));
        assert!(d.kernel_done(start, false));
        assert!(!d.kernel_waiting());
    }
}
