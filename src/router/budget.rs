//! The held-connection budget of the router, per slot: how many connections each slot may hold
//! in the primary (waiting for its worker, or sent and not yet acknowledged), so that a slot
//! whose worker is stuck, slow, out of descriptors or not ready never takes what the others need.
//!
//! The router may hold `limit` connections in all (half the descriptors that were free when it
//! started). Half of what slots may hold is reserved, an equal part per slot; the other half is a
//! pool any slot may use. A slot may take a connection while it holds less than its reserve, or
//! while taking it leaves enough unheld to cover every other slot's unused reserve. A connection
//! of a slot that can take no more is closed at once (counted in `dropped` and `overShare`), so
//! the accept loop never stops because one slot is full: it stops only when the slots holding
//! everything are all at their reserve, each of them full. A single slot takes whatever the
//! room allows (there is no one to leave room for), as before.
//!
//! No I/O and no descriptors: the dispatcher says what it takes and what it releases.

/// Connections the slots may hold, and what each holds now.
#[derive(Debug)]
pub(crate) struct Budget {
    /// Connections the router may hold in all, heads being read included.
    limit: usize,
    /// Connections the slots may hold together (`limit`, less the share of heads being read
    /// when routing reads heads).
    slots_limit: usize,
    /// What each slot may always hold, whatever the others hold.
    reserve: usize,
    /// What each slot holds now.
    held: Vec<usize>,
    /// The sum of `held`.
    total: usize,
    /// The sum over the slots of their reserve not used now (`reserve - held`, at least 0).
    unused_reserve: usize,
}

impl Budget {
    /// A budget of `limit` connections for `slots` slots, of which `reading` are kept for heads
    /// being read (0 when routing reads none).
    pub(crate) fn new(limit: usize, reading: usize, slots: usize) -> Budget {
        let slots = slots.max(1);
        let slots_limit = limit.saturating_sub(reading).max(1);
        let reserve = (slots_limit / (2 * slots)).max(1);
        Budget {
            limit,
            slots_limit,
            reserve,
            held: vec![0; slots],
            total: 0,
            unused_reserve: reserve * slots,
        }
    }

    /// What each slot may always hold.
    pub(crate) fn reserve(&self) -> usize {
        self.reserve
    }

    /// What `slot` holds now.
    pub(crate) fn held(&self, slot: usize) -> usize {
        self.held[slot]
    }

    /// How many more connections the router may accept, with `reading` heads being read.
    pub(crate) fn room(&self, reading: usize) -> usize {
        self.limit.saturating_sub(self.total + reading)
    }

    /// Whether `slot` may take one more connection: it holds less than its reserve, or what the
    /// slots hold then leaves every other slot's unused reserve free.
    pub(crate) fn admits(&self, slot: usize) -> bool {
        let own = self.held[slot];
        // A single slot has no one to leave room for: the accept loop's room bounds it.
        if own < self.reserve || self.held.len() == 1 {
            return true;
        }
        // `slot` uses its whole reserve: what is unused belongs to the others.
        let others = self.unused_reserve;
        self.total + 1 + others <= self.slots_limit
    }

    /// `slot` holds one more connection.
    pub(crate) fn take(&mut self, slot: usize) {
        if self.held[slot] < self.reserve {
            self.unused_reserve -= 1;
        }
        self.held[slot] += 1;
        self.total += 1;
    }

    /// `slot` holds `n` fewer connections (acknowledged, closed, moved away).
    pub(crate) fn release(&mut self, slot: usize, n: usize) {
        let n = n.min(self.held[slot]);
        let before = self.held[slot];
        self.held[slot] -= n;
        self.total -= n;
        let unused = |held: usize| self.reserve.saturating_sub(held);
        self.unused_reserve += unused(self.held[slot]) - unused(before);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Takes for `slot` while it admits, at most `n`; returns how many it took.
    fn fill(b: &mut Budget, slot: usize, n: usize) -> usize {
        let mut taken = 0;
        while taken < n && b.admits(slot) {
            b.take(slot);
            taken += 1;
        }
        taken
    }

    #[test]
    fn a_full_slot_leaves_every_other_slot_its_reserve() {
        // 100 for 2 slots: 25 reserved each, 50 pooled.
        let mut b = Budget::new(100, 0, 2);
        assert_eq!(b.reserve(), 25);
        assert_eq!(fill(&mut b, 0, 1000), 75);
        assert_eq!(b.room(0), 25);
        assert_eq!(fill(&mut b, 1, 1000), 25);
        assert_eq!(b.room(0), 0);
        // Slot 1's connections are acknowledged: it takes as many again, slot 0 nothing more.
        b.release(1, 25);
        assert!(!b.admits(0));
        assert_eq!(fill(&mut b, 1, 1000), 25);
    }

    #[test]
    fn a_slot_may_borrow_what_no_reserve_needs_and_gives_it_back() {
        let mut b = Budget::new(120, 0, 3);
        assert_eq!(b.reserve(), 20);
        assert_eq!(fill(&mut b, 1, 10), 10);
        // Slot 0 takes the pool and its reserve; slot 1's unused 10 and slot 2's 20 stay free.
        assert_eq!(fill(&mut b, 0, 1000), 80);
        assert_eq!(b.room(0), 30);
        assert_eq!(fill(&mut b, 2, 1000), 20);
        assert_eq!(fill(&mut b, 1, 1000), 10);
        assert_eq!(b.room(0), 0);
        // Slot 0's clients leave: it may take them again once they are gone.
        b.release(0, 80);
        assert_eq!(b.held(0), 0);
        assert_eq!(fill(&mut b, 0, 1000), 80);
    }

    #[test]
    fn heads_being_read_keep_their_share() {
        // With heads being read, the slots hold at most what the heads leave, and the router
        // can still accept a head (the oldest is given up for it).
        let mut b = Budget::new(100, 50, 2);
        assert_eq!(fill(&mut b, 0, 1000) + fill(&mut b, 1, 1000), 50);
        assert_eq!(b.room(49), 1);
    }

    #[test]
    fn a_single_slot_is_bounded_by_the_room_alone() {
        // Heads being read keep their share of the room, not of the slot: nothing is closed
        // on arrival, the accept loop stops when the room is gone.
        let mut b = Budget::new(100, 50, 1);
        assert_eq!(fill(&mut b, 0, 80), 80);
        assert_eq!(b.room(20), 0);
    }

    #[test]
    fn releasing_more_than_held_is_harmless() {
        let mut b = Budget::new(10, 0, 2);
        b.take(0);
        b.release(0, 5);
        assert_eq!((b.held(0), b.room(0)), (0, 10));
        assert_eq!(fill(&mut b, 1, 1000), 8);
    }
}
