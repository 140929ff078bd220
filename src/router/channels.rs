//! Which channel serves each slot: the one owner of channel precedence.
//!
//! A channel is opened for a worker of one slot, says hello once its worker is ready, may be
//! retired (its worker is being replaced, or sent what it cannot have sent honestly), and is
//! closed when its worker is gone. A slot is served by at most one channel, and only by a
//! ready channel that is not retired. Ids follow the order the workers were started in, so
//! the newest wins: a hello from an older worker never takes the slot from its replacement,
//! and the channel a newer one replaces is retired for good. When the serving channel closes,
//! the newest other ready channel of the slot serves it.
//!
//! Generic over what a channel carries (the dispatcher's `Link`), so the rules are tested here
//! without sockets.

use std::collections::hash_map::Entry as MapEntry;
use std::collections::HashMap;

use super::ChannelId;

/// One channel and where it stands.
#[derive(Debug)]
struct Entry<L> {
    link: L,
    slot: usize,
    /// Its worker said hello.
    ready: bool,
    /// Its worker is finishing: it never serves its slot again.
    retired: bool,
}

/// What a hello or a close changed for the slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Switch {
    /// The channel serves the slot now; `retired` is the one it replaced, if any.
    Serves {
        /// The slot.
        slot: usize,
        /// The channel that serves it now.
        channel: ChannelId,
        /// The channel it replaced (retired now).
        retired: Option<ChannelId>,
    },
    /// A late hello: `newer` serves the slot and stays.
    Ignored {
        /// The slot.
        slot: usize,
        /// The channel that said hello.
        channel: ChannelId,
        /// The newer channel that serves the slot.
        newer: ChannelId,
    },
}

/// Every open channel and, per slot, the one that serves it.
#[derive(Debug)]
pub(crate) struct Channels<L> {
    entries: HashMap<ChannelId, Entry<L>>,
    serving: Vec<Option<ChannelId>>,
}

impl<L> Channels<L> {
    /// No channel yet, for `slots` slots.
    pub(crate) fn new(slots: usize) -> Channels<L> {
        Channels {
            entries: HashMap::new(),
            serving: vec![None; slots.max(1)],
        }
    }

    /// Opens channel `id` for a worker of `slot`. False if the id is in use already: the
    /// primary names each worker's channel once, so the new end is refused (and closes).
    pub(crate) fn open(&mut self, id: ChannelId, slot: usize, link: L) -> bool {
        match self.entries.entry(id) {
            MapEntry::Vacant(entry) => {
                entry.insert(Entry {
                    link,
                    slot,
                    ready: false,
                    retired: false,
                });
                true
            }
            MapEntry::Occupied(_) => false,
        }
    }

    /// Channel `id`'s worker is ready: its slot delivers to it unless a newer channel serves
    /// the slot. A retired channel, or a second hello, changes nothing (`None`).
    pub(crate) fn hello(&mut self, id: ChannelId) -> Option<Switch> {
        let entry = self.entries.get_mut(&id)?;
        if entry.ready {
            return None;
        }
        entry.ready = true;
        if entry.retired {
            return None;
        }
        let slot = entry.slot;
        Some(self.serve(slot, id))
    }

    /// Makes ready channel `id` serve `slot` unless a newer one does; the one it replaces is
    /// retired.
    fn serve(&mut self, slot: usize, id: ChannelId) -> Switch {
        match self.serving[slot] {
            Some(newer) if newer > id => Switch::Ignored {
                slot,
                channel: id,
                newer,
            },
            previous => {
                self.serving[slot] = Some(id);
                let retired = previous.filter(|&p| p != id);
                if let Some(entry) = retired.and_then(|p| self.entries.get_mut(&p)) {
                    entry.retired = true;
                }
                Switch::Serves {
                    slot,
                    channel: id,
                    retired,
                }
            }
        }
    }

    /// Sends nothing new to channel `id` any more (it still delivers acknowledgements); its
    /// slot waits for another hello. Returns the slot, if the channel is open.
    pub(crate) fn retire(&mut self, id: ChannelId) -> Option<usize> {
        let entry = self.entries.get_mut(&id)?;
        entry.retired = true;
        let slot = entry.slot;
        if self.serving[slot] == Some(id) {
            self.serving[slot] = None;
        }
        Some(slot)
    }

    /// Removes channel `id`: returns its slot, what it carried, and, if it served the slot,
    /// the newest other ready channel that serves it now.
    pub(crate) fn close(&mut self, id: ChannelId) -> Option<(usize, L, Option<Switch>)> {
        let entry = self.entries.remove(&id)?;
        let slot = entry.slot;
        if self.serving[slot] == Some(id) {
            self.serving[slot] = None;
        }
        let mut switch = None;
        if self.serving[slot].is_none() {
            let next = self
                .entries
                .iter()
                .filter(|(_, e)| e.slot == slot && e.ready && !e.retired)
                .map(|(&id, _)| id)
                .max();
            switch = next.map(|next| self.serve(slot, next));
        }
        Some((slot, entry.link, switch))
    }

    /// The channel that serves `slot` now.
    pub(crate) fn serving(&self, slot: usize) -> Option<ChannelId> {
        self.serving[slot]
    }

    /// The slots a ready channel serves now, in order.
    pub(crate) fn served_slots(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.serving.len()).filter(|&slot| self.serving[slot].is_some())
    }

    /// Whether channel `id`'s worker owes its hello.
    pub(crate) fn awaits_hello(&self, id: ChannelId) -> bool {
        self.entries.get(&id).is_some_and(|e| !e.ready)
    }

    /// The slot of channel `id`.
    pub(crate) fn slot_of(&self, id: ChannelId) -> Option<usize> {
        self.entries.get(&id).map(|e| e.slot)
    }

    /// What channel `id` carries.
    pub(crate) fn get_mut(&mut self, id: ChannelId) -> Option<&mut L> {
        self.entries.get_mut(&id).map(|e| &mut e.link)
    }

    /// The ids of every open channel.
    pub(crate) fn ids(&self) -> Vec<ChannelId> {
        self.entries.keys().copied().collect()
    }

    /// Every open channel: its id, slot and what it carries.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (ChannelId, usize, &L)> + '_ {
        self.entries.iter().map(|(&id, e)| (id, e.slot, &e.link))
    }

    /// Every open channel, mutably: its slot and what it carries.
    pub(crate) fn iter_mut(&mut self) -> impl Iterator<Item = (usize, &mut L)> + '_ {
        self.entries.values_mut().map(|e| (e.slot, &mut e.link))
    }

    /// What the channels of `slot` carry (the serving one, retired ones finishing, new ones).
    pub(crate) fn of_slot(&self, slot: usize) -> impl Iterator<Item = &L> + '_ {
        self.entries
            .values()
            .filter(move |e| e.slot == slot)
            .map(|e| &e.link)
    }

    /// Closes every channel (shutdown).
    pub(crate) fn clear(&mut self) {
        self.entries.clear();
        self.serving.iter_mut().for_each(|s| *s = None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn serves(slot: usize, channel: ChannelId, retired: Option<ChannelId>) -> Option<Switch> {
        Some(Switch::Serves {
            slot,
            channel,
            retired,
        })
    }

    #[test]
    fn a_channel_serves_its_slot_from_its_hello_on() {
        let mut c: Channels<()> = Channels::new(2);
        assert!(c.open(1, 1, ()));
        assert!(!c.open(1, 0, ()), "an id is used once");
        assert!(c.awaits_hello(1));
        assert_eq!(c.serving(1), None);
        assert_eq!(c.hello(1), serves(1, 1, None));
        assert!(!c.awaits_hello(1));
        assert_eq!(c.serving(1), Some(1));
        assert_eq!(c.served_slots().collect::<Vec<_>>(), vec![1]);
        // A second hello changes nothing.
        assert_eq!(c.hello(1), None);
    }

    #[test]
    fn the_newer_channel_wins_whichever_said_hello_first() {
        let mut c: Channels<()> = Channels::new(1);
        c.open(1, 0, ());
        c.open(2, 0, ());
        // The replacement first: the older one's late hello is ignored.
        assert_eq!(c.hello(2), serves(0, 2, None));
        assert_eq!(
            c.hello(1),
            Some(Switch::Ignored {
                slot: 0,
                channel: 1,
                newer: 2
            })
        );
        assert_eq!(c.serving(0), Some(2));
        // The other order: the replacement takes the slot and retires the old one.
        let mut c: Channels<()> = Channels::new(1);
        c.open(1, 0, ());
        c.open(2, 0, ());
        assert_eq!(c.hello(1), serves(0, 1, None));
        assert_eq!(c.hello(2), serves(0, 2, Some(1)));
        // Retired by the switch: it never serves again, not even once the new one is gone.
        assert_eq!(c.hello(1), None);
        let (slot, (), next) = c.close(2).expect("open");
        assert_eq!((slot, next, c.serving(0)), (0, None, None));
    }

    #[test]
    fn a_closed_channels_slot_goes_to_the_newest_ready_one() {
        let mut c: Channels<u32> = Channels::new(1);
        for id in 1..=4 {
            c.open(id, 0, id * 10);
        }
        // 1 and 2 ready (2 ignored 1's late hello), 3 retired before its hello, 4 never ready.
        c.hello(2);
        c.hello(1);
        c.retire(3);
        assert_eq!(c.hello(3), None);
        let (slot, link, next) = c.close(2).expect("open");
        assert_eq!((slot, link), (0, 20));
        assert_eq!(next, serves(0, 1, None));
        // Closing a channel that does not serve changes nothing.
        let (_, _, next) = c.close(4).expect("open");
        assert_eq!((next, c.serving(0)), (None, Some(1)));
        assert!(c.close(4).is_none());
    }

    #[test]
    fn a_retired_channel_leaves_its_slot_waiting() {
        let mut c: Channels<u8> = Channels::new(2);
        c.open(7, 1, 0);
        c.hello(7);
        assert_eq!(c.retire(7), Some(1));
        assert_eq!(c.serving(1), None);
        assert_eq!(c.retire(8), None);
        // Still open: its acknowledgements are read.
        assert_eq!(c.slot_of(7), Some(1));
        assert_eq!(c.of_slot(1).count(), 1);
        c.clear();
        assert_eq!(c.ids(), Vec::<ChannelId>::new());
    }
}
