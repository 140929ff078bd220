//! Admission: how many connections the router may hold, what each slot may hold of them (the
//! [`Budget`]), and the share of heads being read (connections from trusted proxies, or every
//! connection with `routeBy: 'sid'`, whose route key is read before they are routed).
//!
//! Slow heads get a bounded share: at most `read_limit` are read at once, and a new one makes
//! the oldest give up (its reading ends with the outcome of a timeout), so the accept loop
//! always has room for others. No descriptors and no I/O: the dispatcher says what it takes,
//! reads and releases.

use std::collections::BTreeMap;
use std::io;
use std::time::Duration;

use tokio::sync::oneshot;

use super::budget::Budget;

/// Connections the router may hold (waiting or unacknowledged) before it stops accepting and
/// lets clients wait in the kernel's backlog: half the descriptors still free when it starts,
/// so the primary always keeps descriptors to fork workers and open their channels.
pub(crate) fn held_limit() -> usize {
    use nix::sys::resource::{getrlimit, Resource};
    let open = ["/proc/self/fd", "/dev/fd"]
        .iter()
        .find_map(|dir| std::fs::read_dir(dir).ok())
        .map_or(64, |entries| entries.count() as u64);
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, _)) => usize::try_from(soft.saturating_sub(open) / 2)
            .unwrap_or(usize::MAX)
            .max(8),
        Err(_) => 4096,
    }
}

/// Pause after the process ran out of descriptors, leaving clients in the kernel's backlog.
pub(crate) const EMFILE_BACKOFF: Duration = Duration::from_millis(100);

/// What to do after a failed accept: `Some(pause)` when the process or system is out of
/// descriptors or memory (retrying at once would spin) or another error came, `None` to go on
/// (the client gave up, a signal).
pub(crate) fn accept_pause(e: &io::Error) -> Option<Duration> {
    match e.raw_os_error() {
        Some(libc::ECONNABORTED) | Some(libc::EINTR) | Some(libc::EPROTO) => None,
        Some(code) => {
            let exhausted = [libc::EMFILE, libc::ENFILE, libc::ENOBUFS, libc::ENOMEM];
            Some(if exhausted.contains(&code) {
                EMFILE_BACKOFF
            } else {
                Duration::from_millis(1)
            })
        }
        None => Some(EMFILE_BACKOFF),
    }
}

/// A head now being read: its number (to say when it is done) and how to know it must give up.
#[derive(Debug)]
pub(crate) struct Reading {
    /// Names it in [`Admission::done_reading`].
    pub(crate) id: u64,
    /// Fires when a newer head took its place.
    pub(crate) give_up: oneshot::Receiver<()>,
    /// An older head was given up for this one.
    pub(crate) gave_up_oldest: bool,
}

/// What the router may hold, and the heads it reads.
#[derive(Debug)]
pub(crate) struct Admission {
    budget: Budget,
    /// Heads being read that can still be given up, oldest (smallest id) first.
    reading: BTreeMap<u64, oneshot::Sender<()>>,
    next_reading: u64,
    /// Heads being read now, given up or not (their descriptors are held until they are back).
    resolving: usize,
    /// At most this many heads are read at once.
    read_limit: usize,
}

impl Admission {
    /// Room for `held_limit` connections over `slots` slots; if routing reads heads
    /// (`reads_heads`), half of them may be heads being read.
    pub(crate) fn new(held_limit: usize, reads_heads: bool, slots: usize) -> Admission {
        let read_limit = (held_limit / 2).max(1);
        // Heads being read keep their share (plus one: a new head is accepted before the
        // oldest is given up for it); routing by address reads none.
        let reading = if reads_heads { read_limit + 1 } else { 0 };
        Admission {
            budget: Budget::new(held_limit, reading, slots),
            reading: BTreeMap::new(),
            next_reading: 0,
            resolving: 0,
            read_limit,
        }
    }

    /// What each slot may always hold.
    pub(crate) fn reserve(&self) -> usize {
        self.budget.reserve()
    }

    /// Whether `slot` may take one more connection (see [`Budget::admits`]).
    pub(crate) fn admits(&self, slot: usize) -> bool {
        self.budget.admits(slot)
    }

    /// `slot` holds one more connection (admitted, or moved there).
    pub(crate) fn take(&mut self, slot: usize) {
        self.budget.take(slot);
    }

    /// `slot` holds `n` fewer connections.
    pub(crate) fn release(&mut self, slot: usize, n: usize) {
        self.budget.release(slot, n);
    }

    /// What `slot` holds now.
    pub(crate) fn held(&self, slot: usize) -> usize {
        self.budget.held(slot)
    }

    /// How many more connections the router may accept now.
    pub(crate) fn room(&self) -> usize {
        self.budget.room(self.resolving)
    }

    /// Heads being read now.
    pub(crate) fn resolving(&self) -> usize {
        self.resolving
    }

    /// A new head is to be read; if the share is full, the oldest one still being read is
    /// told to give up.
    pub(crate) fn start_reading(&mut self) -> Reading {
        let mut gave_up_oldest = false;
        if self.reading.len() >= self.read_limit {
            if let Some((_, oldest)) = self.reading.pop_first() {
                let _ = oldest.send(());
                gave_up_oldest = true;
            }
        }
        self.resolving += 1;
        let id = self.next_reading;
        self.next_reading += 1;
        let (tell, give_up) = oneshot::channel();
        self.reading.insert(id, tell);
        Reading {
            id,
            give_up,
            gave_up_oldest,
        }
    }

    /// Head `id` is back (read, timed out or given up).
    pub(crate) fn done_reading(&mut self, id: u64) {
        self.reading.remove(&id);
        self.resolving = self.resolving.saturating_sub(1);
    }

    #[cfg(test)]
    pub(crate) fn with_budget(budget: Budget) -> Admission {
        Admission {
            budget,
            reading: BTreeMap::new(),
            next_reading: 0,
            resolving: 0,
            read_limit: 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_share_of_heads_gives_up_the_oldest() {
        // 8 held at most: 4 heads read at once.
        let mut a = Admission::new(8, true, 2);
        let mut first: Vec<Reading> = (0..4).map(|_| a.start_reading()).collect();
        assert!(first.iter().all(|r| !r.gave_up_oldest));
        assert_eq!((a.resolving(), a.room()), (4, 4));
        let fifth = a.start_reading();
        assert!(fifth.gave_up_oldest);
        // The oldest is told, the others are not.
        assert_eq!(first[0].give_up.try_recv(), Ok(()));
        assert!(first[1].give_up.try_recv().is_err());
        // Given up, it is still held until it comes back.
        assert_eq!(a.resolving(), 5);
        a.done_reading(first[0].id);
        a.done_reading(fifth.id);
        assert_eq!((a.resolving(), a.room()), (3, 5));
        // Room for one more; then a seventh gives up the oldest left, the second.
        assert!(!a.start_reading().gave_up_oldest);
        assert!(a.start_reading().gave_up_oldest);
        assert_eq!(first[1].give_up.try_recv(), Ok(()));
        assert!(first[2].give_up.try_recv().is_err());
    }

    #[test]
    fn accepting_pauses_when_descriptors_run_out_and_goes_on_after_a_gone_client() {
        let os = io::Error::from_raw_os_error;
        assert_eq!(accept_pause(&os(libc::EMFILE)), Some(EMFILE_BACKOFF));
        assert_eq!(accept_pause(&os(libc::ENOMEM)), Some(EMFILE_BACKOFF));
        assert_eq!(accept_pause(&os(libc::ECONNABORTED)), None);
        assert_eq!(
            accept_pause(&os(libc::EINVAL)),
            Some(Duration::from_millis(1))
        );
        assert_eq!(accept_pause(&io::Error::other("?")), Some(EMFILE_BACKOFF));
    }

    #[test]
    fn routing_by_address_keeps_no_share_for_heads() {
        // 100 held at most, 2 slots, no heads: 25 reserved each.
        let a = Admission::new(100, false, 2);
        assert_eq!((a.reserve(), a.room()), (25, 100));
        // Heads read: their share (51) comes off what the slots may hold.
        let a = Admission::new(100, true, 2);
        assert_eq!(a.reserve(), 12);
    }

    #[test]
    fn what_slots_hold_comes_off_the_room() {
        let mut a = Admission::new(10, false, 1);
        for _ in 0..10 {
            assert!(a.admits(0));
            a.take(0);
        }
        assert_eq!((a.held(0), a.room()), (10, 0));
        a.release(0, 4);
        assert_eq!((a.held(0), a.room()), (6, 4));
    }
}
