//! The routing table: fixed slots, each with the worker channel it delivers to and the
//! connections waiting for it.
//!
//! Slot `i` belongs to whichever worker currently serves index `i`, so a respawn or a reload
//! moves no other client. A slot without a ready worker keeps its connections until one says
//! hello (the ready gate), bounded by a per-slot limit.

use std::collections::VecDeque;

use crate::key::hash::{slot_for, Hash};
use crate::router::ChannelId;

/// One worker index and the connections waiting for it.
#[derive(Debug)]
pub(crate) struct Slot<C> {
    /// Accepted connections not yet sent to a worker, oldest first.
    pub waiting: VecDeque<C>,
    /// The channel of the ready worker that serves this slot now, if any.
    pub channel: Option<ChannelId>,
}

/// All slots of a router.
#[derive(Debug)]
pub(crate) struct Table<C> {
    slots: Vec<Slot<C>>,
    limit: usize,
    hash: Hash,
}

impl<C> Table<C> {
    /// A table of `slots` slots (at least one), each holding at most `limit` waiting connections,
    /// routing with `hash`.
    pub(crate) fn new(slots: usize, limit: usize, hash: Hash) -> Self {
        Table {
            slots: (0..slots.max(1))
                .map(|_| Slot {
                    waiting: VecDeque::new(),
                    channel: None,
                })
                .collect(),
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

    /// The slot at `index`.
    pub(crate) fn slot(&self, index: usize) -> &Slot<C> {
        &self.slots[index]
    }

    /// The slot at `index`, mutably.
    pub(crate) fn slot_mut(&mut self, index: usize) -> &mut Slot<C> {
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
        let waiting = &mut self.slots[index].waiting;
        for conn in conns.into_iter().rev() {
            waiting.push_front(conn);
        }
    }

    /// Removes the newest connections beyond the limit (called once a delivery attempt is
    /// over, so only connections that really have to wait count) and returns them.
    pub(crate) fn trim(&mut self, index: usize) -> Vec<C> {
        let waiting = &mut self.slots[index].waiting;
        let excess = waiting.len().saturating_sub(self.limit);
        let keep = waiting.len() - excess;
        waiting.drain(keep..).collect()
    }

    /// Removes waiting connections from the front (the oldest) while `expired` holds.
    pub(crate) fn expire_front(&mut self, index: usize, expired: impl Fn(&C) -> bool) -> Vec<C> {
        let waiting = &mut self.slots[index].waiting;
        let n = waiting.iter().take_while(|c| expired(c)).count();
        waiting.drain(..n).collect()
    }

    /// Makes `channel` the slot's delivery target unless a newer channel (a larger id: ids
    /// follow the order the workers were started in) already is, so a hello from an older worker
    /// never takes the slot from its replacement. Returns the channel it replaced, or `Err` with the newer one that stays.
    pub(crate) fn activate(
        &mut self,
        index: usize,
        channel: ChannelId,
    ) -> Result<Option<ChannelId>, ChannelId> {
        let slot = &mut self.slots[index];
        match slot.channel {
            Some(active) if active > channel => Err(active),
            previous => {
                slot.channel = Some(channel);
                Ok(previous.filter(|&p| p != channel))
            }
        }
    }

    /// Detaches `channel` if it is still the slot's target; a newer channel stays.
    pub(crate) fn deactivate(&mut self, index: usize, channel: ChannelId) {
        let slot = &mut self.slots[index];
        if slot.channel == Some(channel) {
            slot.channel = None;
        }
    }

    /// Takes every waiting connection of every slot (shutdown).
    pub(crate) fn drain_all(&mut self) -> Vec<C> {
        self.slots
            .iter_mut()
            .flat_map(|s| s.waiting.drain(..))
            .collect()
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
    fn waits_until_activated_and_bounds_the_wait() {
        let mut t: Table<u32> = Table::new(1, 3, Hash::Djb2);
        for c in 0..5 {
            t.slot_mut(0).waiting.push_back(c);
        }
        assert_eq!(t.trim(0), vec![3, 4]);
        assert_eq!(t.slot(0).waiting, [0, 1, 2]);
        assert_eq!(t.slot(0).channel, None);
        assert_eq!(t.activate(0, 7), Ok(None));
        assert_eq!(t.slot(0).channel, Some(7));
    }

    #[test]
    fn expiry_takes_the_oldest_first() {
        let mut t: Table<u32> = Table::new(1, 100, Hash::Djb2);
        for c in [1, 2, 3, 10, 4] {
            t.slot_mut(0).waiting.push_back(c);
        }
        assert_eq!(t.expire_front(0, |&c| c < 5), vec![1, 2, 3]);
        assert_eq!(t.slot(0).waiting, [10, 4]);
    }

    #[test]
    fn requeued_connections_keep_their_order_in_front() {
        let mut t: Table<u32> = Table::new(1, 100, Hash::Djb2);
        t.slot_mut(0).waiting.push_back(10);
        t.requeue_front(0, vec![1, 2, 3]);
        assert_eq!(t.slot(0).waiting, [1, 2, 3, 10]);
    }

    #[test]
    fn a_newer_channel_survives_the_old_ones_release() {
        let mut t: Table<u32> = Table::new(2, 1, Hash::Djb2);
        assert_eq!(t.activate(1, 1), Ok(None));
        assert_eq!(t.activate(1, 2), Ok(Some(1)));
        // A late hello of the older channel: the newer stays.
        assert_eq!(t.activate(1, 1), Err(2));
        t.deactivate(1, 1);
        assert_eq!(t.slot(1).channel, Some(2));
        t.deactivate(1, 2);
        assert_eq!(t.slot(1).channel, None);
    }
}
