//! The dispatcher: what happens to each connection the router accepts, from its route to a
//! slot's queue to its delivery down the slot's channel, with expiry, losses and redelivery.
//! It composes the parts that decide: [`Admission`] (what may be held, the share of heads being
//! read), [`Channels`] (which channel serves each slot), [`Placement`] (the slot of a new
//! session), [`Drain`] (graceful shutdown), and each channel's flow control, a [`Link`]. The
//! event loop (`event_loop.rs`) does the I/O around it; gauges and debug lines are kept here.

use std::io;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::admission::{self, Admission};
use super::channels::{Channels, Switch};
use super::config::Policy;
use super::drain::Drain;
use super::event::{Event, OnEvent};
use super::link::{self, Gone, Held, Link};
use super::placement::{self, Placement};
use super::resolution::{Resolutions, Resolved};
use super::stats::Stats;
use super::table::Table;
use super::ChannelId;
use crate::key::address::AddressText;
use crate::key::resolve::{self, Outcome, RouteBy, Rules};
use crate::wire::record::Meta;

mod sessions;

/// How often channels are read and queues checked while something is pending: the most an
/// acknowledgement, a hello or a full channel can wait for attention.
pub(crate) const TICK: Duration = Duration::from_millis(5);
/// How often every channel is read for what workers report unasked (connections they accepted
/// themselves with kernel dispatch, closes for `least-connection`), even when nothing is
/// pending: the most those counters trail, and the most such records wait in a channel.
pub(crate) const REPORTS: Duration = Duration::from_millis(100);

/// Routes, queues and delivers connections; no I/O of its own beyond the links' sends.
pub(crate) struct Dispatcher {
    /// What waits for each slot.
    table: Table<Held>,
    /// Which channel serves each slot, and every channel's flow control.
    channels: Channels<Link>,
    admission: Admission,
    placement: Placement,
    drain: Drain,
    rules: Arc<Rules>,
    /// Route keys being read; the event loop waits on [`Dispatcher::next_resolved`].
    resolutions: Resolutions,
    stats: Arc<Stats>,
    /// Slots to deliver to in the next [`Dispatcher::service`].
    touched: Vec<bool>,
    queue_timeout: Option<Duration>,
    debug: bool,
    debug_connections: bool,
    on_event: OnEvent,
    /// Kernel dispatch: workers accept connections themselves (and report them, `K`).
    kernel: bool,
}

impl Dispatcher {
    /// A dispatcher with nothing held yet, counting into `stats` and telling `on_event`;
    /// `kernel`: workers accept connections themselves and their counts of them are believed
    /// (within bounds), else every such count is impossible.
    pub(crate) fn new(
        policy: &Policy,
        kernel: bool,
        stats: Arc<Stats>,
        on_event: OnEvent,
    ) -> Dispatcher {
        let slots = policy.slots.max(1);
        let held_limit = admission::held_limit();
        let reads_heads = policy.rules.route_by != RouteBy::Address;
        let admission = Admission::new(held_limit, reads_heads, slots);
        if policy.debug {
            debug_line!(
                "[sticky-rs] primary: holds at most {held_limit} connection(s); each slot at least {} of them, more while the others keep theirs",
                admission.reserve()
            );
        }
        Dispatcher {
            table: Table::new(slots, policy.queue_limit, policy.hash),
            channels: Channels::new(slots),
            admission,
            placement: Placement::new(policy.balance, placement::seed()),
            drain: Drain::new(),
            rules: Arc::new(policy.rules.clone()),
            resolutions: Resolutions::new(),
            stats,
            touched: vec![false; slots],
            queue_timeout: policy.queue_timeout,
            debug: policy.debug,
            debug_connections: policy.debug_connections,
            on_event,
            kernel,
        }
    }

    /// Whether the tick has work: a channel owes an answer, waits to send, or connections wait.
    pub(crate) fn pending(&self) -> bool {
        self.channels.iter().any(|(id, _, link)| {
            self.channels.awaits_hello(id) || link.awaits_acks() || link.paused()
        }) || (0..self.table.len()).any(|i| !self.table.waiting(i).is_empty())
            || self.drain.pending()
    }

    /// No more connections come in (graceful shutdown): from now on each slot is reported
    /// [`Event::Drained`] once it delivered what it holds. `kernel_until`: with kernel
    /// dispatch the members still hold connections for the workers, until
    /// [`Dispatcher::kernel_drain_done`] says they are to stop.
    pub(crate) fn stop_accepting(&mut self, kernel_until: Option<Instant>) {
        self.drain.start(self.table.len(), kernel_until);
        self.report_drained();
    }

    /// Kernel dispatch, stopping: whether the members are to stop listening now. Only slots
    /// with a ready worker can still take what their members hold (`queued(slot)`): a slot
    /// without one (dead, given up) and the fallback, which the router no longer accepts on,
    /// must not hold the others' shutdown back. True once.
    pub(crate) fn kernel_drain_done(
        &mut self,
        now: Instant,
        queued: impl Fn(usize) -> bool,
    ) -> bool {
        if !self.drain.kernel_waiting() {
            return false;
        }
        let waiting = self.channels.served_slots().any(queued);
        let done = self.drain.kernel_done(now, waiting);
        if done {
            self.report_drained();
        }
        done
    }

    /// Says [`Event::Drained`] for every slot that just became drained: it has no ready
    /// worker to deliver to, or it holds nothing any more.
    fn report_drained(&mut self) {
        if !self.drain.pending() {
            return;
        }
        let drained: Vec<bool> = (0..self.table.len())
            .map(|slot| self.channels.serving(slot).is_none() || self.held(slot) == 0)
            .collect();
        let now = self
            .drain
            .newly_drained(self.admission.resolving(), |slot| drained[slot]);
        for slot in now {
            (self.on_event)(Event::Drained { slot });
        }
    }

    /// Reads every channel, owing or not (see [`REPORTS`]).
    pub(crate) fn read_reports(&mut self) {
        for id in self.channels.ids() {
            self.read_channel(id);
        }
    }

    /// Reads every channel that owes an answer, then delivers to every slot that can take more.
    pub(crate) fn service(&mut self) {
        let owing: Vec<ChannelId> = self
            .channels
            .iter()
            .filter(|&(id, _, link)| self.channels.awaits_hello(id) || link.awaits_acks())
            .map(|(id, _, _)| id)
            .collect();
        for id in owing {
            self.read_channel(id);
        }
        let now = Instant::now();
        for (slot, link) in self.channels.iter_mut() {
            if link.resume_if_due(now) {
                self.touched[slot] = true;
            }
        }
        for slot in 0..self.touched.len() {
            if std::mem::take(&mut self.touched[slot]) || !self.table.waiting(slot).is_empty() {
                self.deliver(slot);
            }
        }
        self.report_drained();
    }

    /// Closes connections that waited longer than `queue_timeout`, oldest first.
    pub(crate) fn expire(&mut self) {
        let Some(timeout) = self.queue_timeout else {
            return;
        };
        let now = Instant::now();
        for slot in 0..self.table.len() {
            let expired = self
                .table
                .expire_front(slot, |held| now.duration_since(held.since) >= timeout);
            if !expired.is_empty() {
                self.admission.release(slot, expired.len());
                Stats::add(&self.stats.slots[slot].dropped, expired.len() as u64);
                Stats::add(&self.stats.slots[slot].expired, expired.len() as u64);
                self.update_gauges(slot);
                if self.debug {
                    debug_line!(
                        "[sticky-rs] primary: slot {slot}: closed {} connection(s) that waited {timeout:?}",
                        expired.len()
                    );
                }
            }
        }
    }

    /// Whether the router holds as many connections as it may; accepting resumes below.
    pub(crate) fn full(&self) -> bool {
        self.room() == 0
    }

    /// How many more connections the router may hold.
    pub(crate) fn room(&self) -> usize {
        self.admission.room()
    }

    /// Takes `held` into `slot`'s queue if the slot's budget admits it; else closes it at once
    /// (counted in `dropped` and `overShare`). True if it was taken.
    fn admit(&mut self, slot: usize, held: Held) -> bool {
        let counters = &self.stats.slots[slot];
        Stats::add(&counters.accepted, 1);
        if !self.admission.admits(slot) {
            drop(held);
            Stats::add(&counters.dropped, 1);
            Stats::add(&counters.over_share, 1);
            if self.debug_connections {
                debug_line!(
                    "[sticky-rs] primary: slot {slot} holds {} connection(s), its share: closed a new one",
                    self.admission.held(slot)
                );
            }
            return false;
        }
        self.admission.take(slot);
        self.table.waiting_mut(slot).push_back(held);
        self.touched[slot] = true;
        true
    }

    /// Closes the waiting connections whose client hung up (reset, or closed before sending a
    /// byte): nobody would read their answer, and a stuck slot would hold them until its worker
    /// came back. Connections already sent to a worker are its own.
    pub(crate) fn release_hung_up(&mut self) {
        for slot in 0..self.table.len() {
            let waiting = self.table.waiting_mut(slot);
            if waiting.is_empty() {
                continue;
            }
            let gone = link::remove_hung_up(waiting);
            if gone > 0 {
                self.admission.release(slot, gone);
                Stats::add(&self.stats.slots[slot].abandoned, gone as u64);
                self.update_gauges(slot);
                if self.debug {
                    debug_line!("[sticky-rs] primary: slot {slot}: closed {gone} waiting connection(s) whose client hung up");
                }
            }
        }
    }

    /// Routes a new connection by its peer address, or hands it to resolution if it comes from
    /// a trusted proxy whose header or PROXY data decides.
    pub(crate) fn route(&mut self, conn: OwnedFd, peer: Option<SocketAddr>, listener: u8) {
        let since = Instant::now();
        if let Some(peer) = peer.filter(|p| self.rules.applies_to(p)) {
            // The share is full: the oldest head still being read is given up (its outcome
            // comes back at once: closed for PROXY, routed by its peer for headers).
            let reading = self.admission.start_reading();
            if reading.gave_up_oldest {
                Stats::add(&self.stats.given_up, 1);
            }
            Stats::set(&self.stats.resolving, self.admission.resolving() as u64);
            let rules = self.rules.clone();
            self.resolutions
                .start(conn, peer, listener, since, rules, reading);
            return;
        }
        let text = peer.map(|p| AddressText::new(&p));
        let key = text.as_ref().map_or(&b""[..], |t| t.as_bytes());
        let meta = Meta {
            listener,
            client: None,
        };
        self.enqueue(key, Held::new(conn, since, meta));
    }

    /// The next connection whose route key was read (waits until one comes).
    pub(crate) async fn next_resolved(&mut self) -> Resolved {
        self.resolutions.next().await
    }

    /// Routes a connection whose resolution ended.
    pub(crate) fn resolved(&mut self, done: Resolved) {
        self.admission.done_reading(done.id);
        Stats::set(&self.stats.resolving, self.admission.resolving() as u64);
        if self.rules.route_by == RouteBy::Sid {
            self.route_session(done);
            return;
        }
        match done.outcome {
            Outcome::Reject => {
                Stats::add(&self.stats.rejected, 1);
                if self.debug_connections {
                    debug_line!("[sticky-rs] primary: closed a connection from {} without a valid PROXY header", done.peer);
                }
                return;
            }
            Outcome::Fallback => Stats::add(&self.stats.fallbacks, 1),
            _ => {}
        }
        let key = resolve::key_of(&done.outcome, Some(&done.peer));
        let client = match done.outcome {
            Outcome::Client(client) => Some(client),
            _ => None,
        };
        let meta = Meta {
            listener: done.listener,
            client,
        };
        self.enqueue(key.as_bytes(), Held::new(done.conn, done.since, meta));
    }

    fn enqueue(&mut self, key: &[u8], held: Held) {
        let slot = self.table.slot_of(key);
        if !self.admit(slot, held) {
            return;
        }
        if self.debug_connections {
            let key = String::from_utf8_lossy(key);
            debug_line!("[sticky-rs] primary: connection keyed {key:?} -> slot {slot}");
        }
    }

    /// What to do after a failed accept (see [`admission::accept_pause`]), counted.
    pub(crate) fn accept_failed(&mut self, e: &io::Error) -> Option<Duration> {
        let pause = admission::accept_pause(e);
        if pause.is_some() && e.raw_os_error().is_some() {
            Stats::add(&self.stats.accept_errors, 1);
            if self.debug {
                debug_line!("[sticky-rs] primary: accept failed: {e}");
            }
        }
        pause
    }

    /// Sends what the slot has waiting to its channel while the window allows; then closes
    /// whatever still waits beyond the slot's limit.
    fn deliver(&mut self, slot: usize) {
        if let Some(id) = self.channels.serving(slot) {
            if let Some(link) = self.channels.get_mut(id) {
                let waiting = self.table.waiting_mut(slot);
                match link.send_from(waiting, Instant::now(), TICK) {
                    Ok(None) => {}
                    Ok(Some(e)) => {
                        Stats::add(&self.stats.send_errors, 1);
                        if self.debug {
                            debug_line!("[sticky-rs] primary: slot {slot}: sending to channel {id} failed ({e}), retrying");
                        }
                    }
                    Err(Gone) => {
                        self.close_channel(id);
                        return;
                    }
                }
            }
        }
        let dropped = self.table.trim(slot);
        if !dropped.is_empty() {
            self.admission.release(slot, dropped.len());
            Stats::add(&self.stats.slots[slot].dropped, dropped.len() as u64);
            if self.debug {
                debug_line!(
                    "[sticky-rs] primary: slot {slot} queue full, closed {} connection(s)",
                    dropped.len()
                );
            }
        }
        self.update_gauges(slot);
    }

    /// What `slot` has sent over all its channels and not had acknowledged.
    fn in_flight(&self, slot: usize) -> usize {
        self.channels.of_slot(slot).map(Link::in_flight).sum()
    }

    /// What `slot` holds: waiting and in flight.
    fn held(&self, slot: usize) -> usize {
        self.table.waiting(slot).len() + self.in_flight(slot)
    }

    fn update_gauges(&self, slot: usize) {
        let counters = &self.stats.slots[slot];
        Stats::set(&counters.in_flight, self.in_flight(slot) as u64);
        Stats::set(&counters.queued, self.table.waiting(slot).len() as u64);
        Stats::set(
            &counters.channel,
            self.channels.serving(slot).map_or(0, u64::from),
        );
    }

    /// Starts serving channel `id`. An id in use already is refused (the new end closes): the
    /// primary names each worker's channel once.
    pub(crate) fn open(&mut self, id: ChannelId, slot: usize, fd: OwnedFd) {
        if !self.channels.open(id, slot, Link::new(fd, self.kernel)) && self.debug {
            debug_line!("[sticky-rs] primary: channel {id} is open already; refused");
        }
    }

    /// Reads what a worker sent back, without blocking, and acts on it.
    pub(crate) fn read_channel(&mut self, id: ChannelId) {
        let Some(slot) = self.channels.slot_of(id) else {
            return;
        };
        let Some(link) = self.channels.get_mut(id) else {
            return;
        };
        let mut lost = Vec::new();
        let answers = link.read(Instant::now(), &mut lost);
        if answers.acknowledged > 0 {
            self.admission.release(slot, answers.acknowledged);
            Stats::add(
                &self.stats.slots[slot].delivered,
                answers.acknowledged as u64,
            );
            self.touched[slot] = true;
        }
        if answers.accepted_itself > 0 {
            // The kernel picked the slot and its worker accepted: accepted and delivered at once.
            let counters = &self.stats.slots[slot];
            Stats::add(&counters.accepted, answers.accepted_itself);
            Stats::add(&counters.delivered, answers.accepted_itself);
        }
        if !lost.is_empty() {
            let n = lost.len();
            self.count_redelivered(slot, lost.iter_mut());
            self.table.requeue_front(slot, lost);
            if self.debug {
                debug_line!("[sticky-rs] primary: slot {slot}: worker lost {n} connection(s) (out of descriptors), sending again");
            }
        }
        if let Some(reason) = answers.impossible {
            // Its counts are not believed any more; it gets nothing new, and its owner replaces it.
            self.retire(id);
            (self.on_event)(Event::Misbehaved {
                slot,
                channel: id,
                reason,
            });
        }
        if answers.hello {
            let switch = self.channels.hello(id);
            self.switched(switch);
        }
        if !answers.open {
            self.close_channel(id);
        }
    }

    /// Counts in the slot's `redelivered` the connections of `returned` not counted before.
    fn count_redelivered<'a>(&self, slot: usize, returned: impl Iterator<Item = &'a mut Held>) {
        let mut first_time = 0;
        for held in returned {
            first_time += u64::from(!held.resent);
            held.resent = true;
        }
        Stats::add(&self.stats.slots[slot].redelivered, first_time);
    }

    /// Acts on what [`Channels`] decided: a slot served by another channel delivers to it now.
    fn switched(&mut self, switch: Option<Switch>) {
        match switch {
            Some(Switch::Ignored {
                slot,
                channel,
                newer,
            }) if self.debug => {
                debug_line!("[sticky-rs] primary: slot {slot}: late hello on channel {channel} ignored, channel {newer} is newer");
            }
            None | Some(Switch::Ignored { .. }) => {}
            Some(Switch::Serves {
                slot,
                channel,
                retired,
            }) => {
                if let (Some(retired), true) = (retired, self.debug) {
                    debug_line!("[sticky-rs] primary: slot {slot}: channel {retired} retired");
                }
                self.touched[slot] = true;
                self.update_gauges(slot);
                if self.debug {
                    debug_line!("[sticky-rs] primary: slot {slot} ready (channel {channel})");
                }
                (self.on_event)(Event::Switched { slot, channel });
            }
        }
    }

    /// Records a failed listener and says so; the others go on accepting.
    pub(crate) fn listener_failed(&mut self, listener: u8, e: &io::Error) {
        Stats::add(&self.stats.listener_failures, 1);
        (self.on_event)(Event::ListenerFailed {
            listener,
            error: e.to_string(),
        });
    }

    /// Sends nothing new to channel `id` (its worker is finishing); its slot waits for
    /// another hello.
    pub(crate) fn retire(&mut self, id: ChannelId) {
        if let Some(slot) = self.channels.retire(id) {
            self.update_gauges(slot);
            if self.debug {
                debug_line!("[sticky-rs] primary: slot {slot}: channel {id} retired");
            }
        }
    }

    /// Drops a channel; what it had not acknowledged goes back to its slot for the next worker.
    pub(crate) fn close_channel(&mut self, id: ChannelId) {
        let Some((slot, link, switch)) = self.channels.close(id) else {
            return;
        };
        // The slot goes on with its newest other ready worker, if one is there (a replacement
        // whose hello came first, then this one's).
        self.switched(switch);
        let mut unacknowledged = link.into_unacknowledged();
        let returned = unacknowledged.len();
        self.count_redelivered(slot, unacknowledged.iter_mut());
        self.table.requeue_front(slot, unacknowledged);
        if self.debug {
            debug_line!(
                "[sticky-rs] primary: slot {slot} channel {id} closed, {returned} connection(s) re-queued"
            );
        }
        self.move_sessions_away(slot);
        self.deliver(slot);
    }

    /// Closes every channel and every waiting connection.
    pub(crate) fn shutdown(&mut self) {
        self.channels.clear();
        drop(self.table.drain_all());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    use crate::key::hash::Hash;
    use crate::router::budget::Budget;
    use crate::router::config::Balance;
    use crate::wire::record::ToPrimary;
    use crate::wire::transport::{self, WorkerReader};

    fn dispatcher(queue_limit: usize, queue_timeout: Option<Duration>) -> (Dispatcher, Arc<Stats>) {
        dispatcher_of(1, queue_limit, queue_timeout)
    }

    /// A dispatcher of `slots` slots routing by address.
    fn dispatcher_of(
        slots: usize,
        queue_limit: usize,
        queue_timeout: Option<Duration>,
    ) -> (Dispatcher, Arc<Stats>) {
        let policy = Policy {
            queue_limit,
            queue_timeout,
            ..Policy::for_tests(RouteBy::Address, slots)
        };
        let stats = Arc::new(Stats::new(slots));
        let on_event: OnEvent = Arc::new(|_| {});
        (
            Dispatcher::new(&policy, false, stats.clone(), on_event),
            stats,
        )
    }

    /// Routes `n` stand-in connections (real descriptors) from one peer.
    fn accept(d: &mut Dispatcher, n: usize) -> io::Result<()> {
        let peer: SocketAddr = "127.0.0.1:4000".parse().map_err(io::Error::other)?;
        for _ in 0..n {
            d.route(std::fs::File::open("/dev/null")?.into(), Some(peer), 0);
        }
        d.service();
        Ok(())
    }

    /// Opens channel `id`; the worker end says hello unless `silent`.
    fn worker(d: &mut Dispatcher, id: ChannelId, silent: bool) -> io::Result<OwnedFd> {
        worker_in(d, id, 0, silent)
    }

    /// Opens channel `id` for a worker of `slot`; its end says hello unless `silent`.
    fn worker_in(
        d: &mut Dispatcher,
        id: ChannelId,
        slot: usize,
        silent: bool,
    ) -> io::Result<OwnedFd> {
        let (primary, worker) = transport::pair()?;
        transport::set_nonblocking(worker.as_fd())?;
        d.open(id, slot, primary);
        if !silent {
            transport::send(worker.as_fd(), ToPrimary::Hello)?;
        }
        d.service();
        Ok(worker)
    }

    /// The number of connections waiting on a worker's end.
    fn received(worker: &OwnedFd) -> io::Result<usize> {
        let mut reader = WorkerReader::default();
        let mut n = 0;
        loop {
            match reader.recv(worker.as_fd()) {
                Ok(Some(batch)) => n += batch.conns.len(),
                Ok(None) => break,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
        Ok(n)
    }

    #[test]
    fn connections_wait_for_a_hello_within_the_queue_limit() -> io::Result<()> {
        let (mut d, stats) = dispatcher(3, None);
        accept(&mut d, 5)?;
        let s = stats.snapshot(0);
        assert_eq!((s.queued, s.dropped), (3, 2));
        let silent = worker(&mut d, 1, true)?;
        assert_eq!(received(&silent)?, 0);
        let ready = worker(&mut d, 2, false)?;
        assert_eq!(received(&ready)?, 3);
        assert_eq!(stats.snapshot(0).in_flight, 3);
        Ok(())
    }

    #[test]
    fn connections_that_waited_too_long_are_closed() -> io::Result<()> {
        let (mut d, stats) = dispatcher(100, Some(Duration::from_millis(1)));
        accept(&mut d, 4)?;
        std::thread::sleep(Duration::from_millis(5));
        d.expire();
        let s = stats.snapshot(0);
        assert_eq!((s.queued, s.dropped), (0, 4));
        Ok(())
    }

    #[test]
    fn a_dead_workers_connections_reach_the_next_one_exactly_once() -> io::Result<()> {
        let (mut d, stats) = dispatcher(100, None);
        let first = worker(&mut d, 1, false)?;
        accept(&mut d, 10)?;
        assert_eq!(received(&first)?, 10);
        transport::send(first.as_fd(), ToPrimary::Ack(4))?;
        drop(first);
        d.service();
        let s = stats.snapshot(0);
        assert_eq!((s.delivered, s.redelivered, s.queued), (4, 6, 6));
        let next = worker(&mut d, 2, false)?;
        assert_eq!(received(&next)?, 6);
        transport::send(next.as_fd(), ToPrimary::Ack(6))?;
        d.service();
        assert_eq!(received(&next)?, 0);
        let s = stats.snapshot(0);
        assert_eq!((s.delivered, s.in_flight, s.queued), (10, 0, 0));
        Ok(())
    }

    #[test]
    fn a_connection_lost_again_and_again_is_redelivered_once() -> io::Result<()> {
        let (mut d, stats) = dispatcher(100, None);
        let out_of_fds = worker(&mut d, 1, false)?;
        accept(&mut d, 3)?;
        for _ in 0..3 {
            // The worker never gets them: each time it reports all three lost.
            assert_eq!(received(&out_of_fds)?, 3);
            transport::send(out_of_fds.as_fd(), ToPrimary::Lost(3))?;
            d.service();
            // Sent again after the pause (50 ms).
            std::thread::sleep(Duration::from_millis(60));
            d.service();
        }
        transport::send(out_of_fds.as_fd(), ToPrimary::Ack(3))?;
        d.service();
        let s = stats.snapshot(0);
        assert_eq!((s.delivered, s.redelivered, s.in_flight), (3, 3, 0));
        Ok(())
    }

    #[test]
    fn a_retired_channel_gets_nothing_new_but_its_acks_still_count() -> io::Result<()> {
        let (mut d, stats) = dispatcher(100, None);
        let old = worker(&mut d, 1, false)?;
        accept(&mut d, 2)?;
        assert_eq!(received(&old)?, 2);
        d.retire(1);
        accept(&mut d, 3)?;
        assert_eq!(received(&old)?, 0);
        transport::send(old.as_fd(), ToPrimary::Ack(2))?;
        d.service();
        let s = stats.snapshot(0);
        assert_eq!((s.delivered, s.queued, s.channel), (2, 3, 0));
        let new = worker(&mut d, 2, false)?;
        assert_eq!(received(&new)?, 3);
        Ok(())
    }

    /// A peer address whose connections go to `slot` of `slots`.
    fn peer_of(slot: usize, slots: usize) -> io::Result<SocketAddr> {
        (1..=250u8)
            .map(|i| SocketAddr::from(([127, 0, 1, i], 4000)))
            .find(|p| {
                crate::key::hash::slot_for(AddressText::new(p).as_bytes(), slots, Hash::Djb2)
                    == slot
            })
            .ok_or_else(|| io::Error::other("no such peer"))
    }

    #[test]
    fn a_stuck_slot_keeps_its_share_and_the_other_slot_is_still_served() -> io::Result<()> {
        let (mut d, stats) = dispatcher_of(2, 100, None);
        // 40 in all: each slot is sure of 10, one may take 30 while the other holds nothing.
        d.admission = Admission::with_budget(Budget::new(40, 0, 2));
        let (zero, one) = (peer_of(0, 2)?, peer_of(1, 2)?);
        for _ in 0..50 {
            d.route(std::fs::File::open("/dev/null")?.into(), Some(zero), 0);
        }
        d.service();
        let s = stats.snapshot(0);
        assert_eq!(
            (s.accepted, s.queued, s.dropped, s.over_share),
            (50, 30, 20, 20)
        );
        assert_eq!(d.room(), 10);
        let worker_one = worker_in(&mut d, 1, 1, false)?;
        for _ in 0..10 {
            d.route(std::fs::File::open("/dev/null")?.into(), Some(one), 0);
        }
        d.service();
        assert_eq!(received(&worker_one)?, 10);
        assert_eq!(stats.snapshot(1).dropped, 0);
        // The budget agrees with what the queues and the links hold.
        assert_eq!((d.held(0), d.held(1)), (30, 10));
        assert_eq!((d.admission.held(0), d.admission.held(1)), (30, 10));
        assert!(d.full());
        // Slot 1's worker adopts them: room for slot 1 again, none for slot 0 beyond its 30.
        transport::send(worker_one.as_fd(), ToPrimary::Ack(10))?;
        d.service();
        assert_eq!((d.admission.held(1), d.room()), (0, 10));
        d.route(std::fs::File::open("/dev/null")?.into(), Some(zero), 0);
        assert_eq!(stats.snapshot(0).over_share, 21);
        // Slot 0's worker comes: it gets the 30 and, once they are adopted, its full share again.
        let worker_zero = worker_in(&mut d, 2, 0, false)?;
        assert_eq!(received(&worker_zero)?, 30);
        transport::send(worker_zero.as_fd(), ToPrimary::Ack(30))?;
        d.service();
        assert_eq!((d.held(0), d.admission.held(0), d.room()), (0, 0, 40));
        Ok(())
    }

    /// A `routeBy: 'sid'` dispatcher of `slots` slots placing new sessions by `balance`.
    fn sessions(slots: usize, balance: Balance) -> Dispatcher {
        let policy = Policy {
            queue_limit: 100,
            balance,
            ..Policy::for_tests(RouteBy::Sid, slots)
        };
        Dispatcher::new(
            &policy,
            false,
            Arc::new(Stats::new(slots)),
            Arc::new(|_| {}),
        )
    }

    /// A connection whose request line said `outcome`.
    fn session(d: &mut Dispatcher, outcome: Outcome) -> io::Result<()> {
        let reading = d.admission.start_reading();
        d.resolved(Resolved::for_test(
            reading.id,
            std::fs::File::open("/dev/null")?.into(),
            "127.0.0.1:4000".parse().map_err(io::Error::other)?,
            outcome,
        ));
        d.service();
        Ok(())
    }

    #[test]
    fn a_live_place_gets_its_sessions_and_the_rest_go_round() -> io::Result<()> {
        let mut d = sessions(3, Balance::RoundRobin);
        let zero = worker_in(&mut d, 1, 0, false)?;
        let two = worker_in(&mut d, 2, 2, false)?;
        for _ in 0..3 {
            session(&mut d, Outcome::Place(2))?;
        }
        assert_eq!((received(&zero)?, received(&two)?), (0, 3));
        // Slot 1 has no worker, 64 is no slot: new sessions, in turn over the ready slots.
        for outcome in [
            Outcome::Place(1),
            Outcome::Place(64),
            Outcome::NewSession,
            Outcome::NewSession,
        ] {
            session(&mut d, outcome)?;
        }
        assert_eq!((received(&zero)?, received(&two)?), (2, 2));
        Ok(())
    }

    #[test]
    fn least_connection_counts_what_workers_report_closed() -> io::Result<()> {
        let mut d = sessions(2, Balance::LeastConnection);
        let zero = worker_in(&mut d, 1, 0, false)?;
        let one = worker_in(&mut d, 2, 1, false)?;
        // Three sessions on slot 0 (their ids name it), adopted.
        for _ in 0..3 {
            session(&mut d, Outcome::Place(0))?;
        }
        assert_eq!(received(&zero)?, 3);
        transport::send(zero.as_fd(), ToPrimary::Ack(3))?;
        // New sessions fill slot 1 up to the same count.
        for _ in 0..3 {
            session(&mut d, Outcome::NewSession)?;
        }
        assert_eq!((received(&zero)?, received(&one)?), (0, 3));
        transport::send(one.as_fd(), ToPrimary::Ack(3))?;
        // Slot 0's three closed: the next two new sessions go there.
        transport::send(zero.as_fd(), ToPrimary::Closed(3))?;
        session(&mut d, Outcome::NewSession)?;
        session(&mut d, Outcome::NewSession)?;
        assert_eq!((received(&zero)?, received(&one)?), (2, 0));
        Ok(())
    }

    #[test]
    fn with_nobody_ready_new_sessions_wait_for_the_first_place() -> io::Result<()> {
        let mut d = sessions(4, Balance::Random);
        session(&mut d, Outcome::NewSession)?;
        session(&mut d, Outcome::Place(3))?;
        let first = worker_in(&mut d, 1, 0, false)?;
        assert_eq!(received(&first)?, 2);
        Ok(())
    }

    #[test]
    fn a_dead_workers_connections_go_to_the_live_ones() -> io::Result<()> {
        let mut d = sessions(2, Balance::RoundRobin);
        let zero = worker_in(&mut d, 1, 0, false)?;
        let one = worker_in(&mut d, 2, 1, false)?;
        for _ in 0..4 {
            session(&mut d, Outcome::Place(0))?;
        }
        assert_eq!(received(&zero)?, 4);
        drop(zero);
        d.read_channel(1);
        d.service();
        assert_eq!(received(&one)?, 4);
        Ok(())
    }
}
