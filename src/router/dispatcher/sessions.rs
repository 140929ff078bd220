//! `routeBy: 'sid'`: where the dispatcher sends a connection whose request line named a session
//! (or none), and what happens to the sessions of a slot left without a worker. The choice of a
//! new session's slot is [`crate::router::placement::Placement`]'s.

use super::Dispatcher;
use crate::key::address::AddressText;
use crate::key::resolve::{Outcome, RouteBy};
use crate::router::channels::Channels;
use crate::router::link::{Held, Link};
use crate::router::resolution::Resolved;
use crate::router::stats::Stats;
use crate::router::table::Table;
use crate::router::ChannelId;
use crate::wire::record::Meta;

impl Dispatcher {
    /// `routeBy: 'sid'`: to the slot the id names if its worker is ready, else (a new session, a
    /// stale or forged id) to the slot [`crate::router::placement::Placement`] picks; TLS by the peer's address.
    pub(super) fn route_session(&mut self, done: Resolved) {
        let live =
            |d: &Self, slot: usize| slot < d.table.len() && d.channels.serving(slot).is_some();
        let (slot, how) = match done.outcome {
            Outcome::OtherNode(node) => {
                Stats::add(&self.stats.other_node, 1);
                if self.debug_connections {
                    debug_line!("[sticky-rs] primary: a request from {} for a session of node {node:?}, not this one: answered 400 \"Session ID unknown\" (is the balancer routing by the sid's node prefix?)", done.peer);
                }
                return;
            }
            Outcome::Place(slot) if live(self, slot) => (slot, "session"),
            Outcome::Place(_) => (self.pick_for_new_session(), "stale session, new"),
            Outcome::Tls => {
                let ready = self.ready_slots();
                let text = AddressText::new(&done.peer);
                let hash = self.table.hash().of(text.as_bytes()) as usize;
                (ready[hash % ready.len()], "TLS, by address")
            }
            _ => (self.pick_for_new_session(), "new session"),
        };
        let meta = Meta {
            listener: done.listener,
            client: None,
        };
        let held = Held::new(done.conn, done.since, meta);
        if !self.admit(slot, held) {
            return;
        }
        if self.debug_connections {
            debug_line!(
                "[sticky-rs] primary: connection from {} ({how}) -> slot {slot}",
                done.peer
            );
        }
    }

    /// The slot of a new session (see [`crate::router::placement::Placement`]).
    fn pick_for_new_session(&mut self) -> usize {
        let ready = self.ready_slots();
        if self.placement.counts_connections() {
            // Closes are reported by workers on their channel; read them now so idle
            // workers' counts are current (one non-blocking read per ready channel).
            let ids: Vec<ChannelId> = ready
                .iter()
                .filter_map(|&s| self.channels.serving(s))
                .collect();
            for id in ids {
                self.read_channel(id);
            }
        }
        let (placement, live) = (&mut self.placement, |s| {
            live_connections(&self.channels, &self.table, s)
        });
        placement.pick(&ready, live)
    }

    /// `routeBy: 'sid'`: a slot left without a worker holds no session any more, and an adopted
    /// worker's replacement may take another place; what waits there is placed again as new
    /// sessions on the ready slots (a request of a dead session is refused there, as anywhere).
    pub(super) fn move_sessions_away(&mut self, slot: usize) {
        if self.rules.route_by != RouteBy::Sid || self.channels.serving(slot).is_some() {
            return;
        }
        if self.channels.served_slots().next().is_none() {
            return;
        }
        let waiting: Vec<Held> = self.table.waiting_mut(slot).drain(..).collect();
        self.admission.release(slot, waiting.len());
        for held in waiting {
            let to = self.pick_for_new_session();
            // Already held: it moves whatever the new slot holds.
            self.admission.take(to);
            self.table.waiting_mut(to).push_back(held);
            self.touched[to] = true;
        }
        self.update_gauges(slot);
    }

    /// The slots whose worker is ready, or slot 0 if none is (connections wait where the first
    /// worker will be: adopted workers take the lowest free place). Never empty.
    fn ready_slots(&self) -> Vec<usize> {
        let ready: Vec<usize> = self.channels.served_slots().collect();
        if ready.is_empty() {
            vec![0]
        } else {
            ready
        }
    }
}

/// A slot's live connections as far as the router knows: waiting, on their way, and adopted
/// but not reported closed, over all its channels.
fn live_connections(channels: &Channels<Link>, table: &Table<Held>, slot: usize) -> u64 {
    let links: u64 = channels.of_slot(slot).map(Link::live).sum();
    links + table.waiting(slot).len() as u64
}
