//! Session placement for `routeBy: 'sid'`: the slot a new session goes to, among the slots
//! whose worker is ready, by the balancing method. No I/O: the dispatcher gives the ready
//! slots and each slot's live connections.

use super::config::Balance;

/// Picks the slot of each new session.
#[derive(Debug)]
pub(crate) struct Placement {
    balance: Balance,
    /// Where round-robin (and the tie-break of least-connection) looks first.
    next_turn: usize,
    /// xorshift64 state for `random` (placement needs spread, not secrecy); never 0.
    random: u64,
}

/// A seed for `random` placement: the clock and the address of a stack value.
pub(crate) fn seed() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let local = 0u8;
    (nanos ^ (&local as *const u8 as u64).rotate_left(32)) | 1
}

impl Placement {
    /// Placement by `balance`; `seed` (not 0) starts `random`.
    pub(crate) fn new(balance: Balance, seed: u64) -> Placement {
        Placement {
            balance,
            next_turn: 0,
            random: seed | 1,
        }
    }

    /// Whether picking compares live connections (the dispatcher reads fresh counts first).
    pub(crate) fn counts_connections(&self) -> bool {
        self.balance == Balance::LeastConnection
    }

    /// The slot of a new session among `ready` (not empty), with `live(slot)` the slot's
    /// live connections.
    pub(crate) fn pick(&mut self, ready: &[usize], live: impl Fn(usize) -> u64) -> usize {
        let Some(&first) = ready.first() else {
            return 0;
        };
        let turn = self.next_turn % ready.len();
        self.next_turn = self.next_turn.wrapping_add(1);
        match self.balance {
            Balance::RoundRobin => ready[turn],
            Balance::Random => {
                self.random ^= self.random << 13;
                self.random ^= self.random >> 7;
                self.random ^= self.random << 17;
                ready[(self.random % ready.len() as u64) as usize]
            }
            // Ties go round in turn, so a burst before any count moved still spreads.
            Balance::LeastConnection => (0..ready.len())
                .map(|i| ready[(turn + i) % ready.len()])
                .min_by_key(|&s| live(s))
                .unwrap_or(first),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_robin_takes_the_ready_slots_in_turn() {
        let mut p = Placement::new(Balance::RoundRobin, 1);
        let picks: Vec<usize> = (0..5).map(|_| p.pick(&[0, 2, 3], |_| 0)).collect();
        assert_eq!(picks, [0, 2, 3, 0, 2]);
        assert!(!p.counts_connections());
    }

    #[test]
    fn least_connection_takes_the_emptiest_and_breaks_ties_in_turn() {
        let mut p = Placement::new(Balance::LeastConnection, 1);
        assert!(p.counts_connections());
        let live = |s: usize| [5, 2, 2, 9][s];
        let picks: Vec<usize> = (0..4).map(|_| p.pick(&[0, 1, 2, 3], live)).collect();
        assert_eq!(picks, [1, 1, 2, 1]);
    }

    #[test]
    fn random_stays_among_the_ready_and_reaches_each() {
        let mut p = Placement::new(Balance::Random, seed());
        let mut seen = [0; 4];
        for _ in 0..400 {
            seen[p.pick(&[1, 3], |_| 0)] += 1;
        }
        assert_eq!((seen[0], seen[2]), (0, 0));
        assert!(seen[1] > 100 && seen[3] > 100, "{seen:?}");
        assert_eq!(p.pick(&[], |_| 0), 0);
    }
}
