//! The routing table: fixed slots, each with the connections waiting for it (which channel
//! serves a slot is [`super::channels::Channels`]'s to say).
//!
//! Slot `i` belongs to whichever worker currently serves index `i`, so a respawn or a reload
//! moves no other client. A slot without a ready worker keeps its connections until one says
//! hello (the ready gate), bounded by a per-slot limit.

use std::collections::VecDeque;

use crate::key::hash::{slot_for, Hash};

/// All slots of a router.
#[derive(Debug)]
pub(crate) struct Table<C> {
    /// Per slot, accepted connections not yet sent to a worker, oldest first.
    slots: Vec<VecDeque<C>>,
    limit: usize,
    hash: Hash,
}

impl<C> Table<C> {
    /// A table of `slots` slots (at least one), each holding at most `limit` waiting connections,
    /// routing with `hash`.
    pub(crate) fn new(slots: usize, limit: usize, hash: Hash) -> Self {
        Table {
            slots: (0..slots.max(1)).map(|_| VecDeque::new()).collect(),
            limit,
            hash,
        }
    }

    /// The route hash.
    pub(crate) fn hash(&self) -> Hash {
        self.hash
    }

    /// The number of slots.
    pub(crate) fn len(&self) -> usize {
        self.slots.len()
    }

    /// What waits for slot `index`, oldest first.
    pub(crate) fn waiting(&self, index: usize) -> &VecDeque<C> {
        &self.slots[index]
    }

    /// What waits for slot `index`, mutably.
    pub(crate) fn waiting_mut(&mut self, index: usize) -> &mut VecDeque<C> {
        &mut self.slots[index]
    }

    /// The slot a connection with route key `key` belongs to.
    pub(crate) fn slot_of(&self, key: &[u8]) -> usize {
        slot_for(key, self.slots.len(), self.hash)
    }

    /// Puts connections a dead worker never adopted back at the front, in their original order.
    /// They were accepted before anything now waiting, so they keep their place.
    pub(crate) fn requeue_front<I>(&mut self, index: usize, conns: I)
    where
        I: IntoIterator<Item = C>,
        I::IntoIter: DoubleEndedIterator,
    {
        let waiting = &mut self.slots[index];
        for conn in conns.into_iter().rev() {
            waiting.push_front(conn);
        }
    }

    /// Removes the newest connections beyond the limit (called once a delivery attempt is
    /// over, so only connections that really have to wait count) and returns them.
    pub(crate) fn trim(&mut self, index: usize) -> Vec<C> {
        let waiting = &mut self.slots[index];
        let excess = waiting.len().saturating_sub(self.limit);
        let keep = waiting.len() - excess;
        waiting.drain(keep..).collect()
    }

    /// Removes waiting connections from the front (the oldest) while `expired` holds.
    pub(crate) fn expire_front(&mut self, index: usize, expired: impl Fn(&C) -> bool) -> Vec<C> {
        let waiting = &mut self.slots[index];
        let n = waiting.iter().take_while(|c| expired(c)).count();
        waiting.drain(..n).collect()
    }

    /// Takes every waiting connection of every slot (shutdown).
    pub(crate) fn drain_all(&mut self) -> Vec<C> {
        self.slots.iter_mut().flat_map(|s| s.drain(..)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_route_key_maps_to_its_slot() {
        let t: Table<u32> = Table::new(3, 10, Hash::Djb2);
        assert_eq!(t.slot_of(b"::ffff:127.0.0.1"), 2);
    }

    #[test]
    fn the_wait_is_bounded_newest_out_first() {
        let mut t: Table<u32> = Table::new(1, 3, Hash::Djb2);
        for c in 0..5 {
            t.waiting_mut(0).push_back(c);
        }
        assert_eq!(t.trim(0), vec![3, 4]);
        assert_eq!(*t.waiting(0), [0, 1, 2]);
    }

    #[test]
    fn expiry_takes_the_oldest_first() {
        let mut t: Table<u32> = Table::new(1, 100, Hash::Djb2);
        for c in [1, 2, 3, 10, 4] {
            t.waiting_mut(0).push_back(c);
        }
        assert_eq!(t.expire_front(0, |&c| c < 5), vec![1, 2, 3]);
        assert_eq!(*t.waiting(0), [10, 4]);
    }

    #[test]
    fn requeued_connections_keep_their_order_in_front() {
        let mut t: Table<u32> = Table::new(1, 100, Hash::Djb2);
        t.waiting_mut(0).push_back(10);
        t.requeue_front(0, vec![1, 2, 3]);
        assert_eq!(*t.waiting(0), [1, 2, 3, 10]);
    }
}
