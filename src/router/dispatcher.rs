//! The dispatcher: what happens to each connection the router accepts. Admission (how many
//! may be held, the share of heads being read), the route to a slot's queue, expiry, and which
//! worker channel each slot delivers to. The event loop (`router.rs`) does the I/O around it;
//! each channel's flow control is a [`Link`].

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::key::address::AddressText;
use crate::key::hash::Hash;
use crate::key::resolve::{self, Outcome, RouteBy, Rules};
use crate::router::budget::Budget;
use crate::router::link::{self, Gone, Held, Link};
use crate::router::stats::Stats;
use crate::router::table::Table;
use crate::router::ChannelId;
use crate::wire::record::Meta;

/// Pause after the process ran out of descriptors, leaving clients in the kernel's backlog.
pub(crate) const EMFILE_BACKOFF: Duration = Duration::from_millis(100);
/// How often channels are read and queues checked while something is pending: the most an
/// acknowledgement, a hello or a full channel can wait for attention.
pub(crate) const TICK: Duration = Duration::from_millis(5);
/// How often every channel is read for what workers report unasked (connections they accepted
/// themselves with kernel dispatch, closes for `least-connection`), even when nothing is
/// pending: the most those counters trail, and the most such records wait in a channel.
pub(crate) const REPORTS: Duration = Duration::from_millis(100);

/// How connections are routed and bounded.
#[derive(Debug, Clone)]
pub struct Policy {
    /// How connections from trusted proxies are routed.
    pub rules: Rules,
    /// The number of slots (workers).
    pub slots: usize,
    /// Connections a slot may hold while its worker is not ready, at most; beyond, they are closed.
    pub queue_limit: usize,
    /// How long a connection may wait for a ready worker; older ones are closed. None: no limit.
    pub queue_timeout: Option<Duration>,
    /// The route hash.
    pub hash: Hash,
    /// Log channel changes and queue events to stderr.
    pub debug: bool,
    /// Also log each routing decision and each refused PROXY header.
    pub debug_connections: bool,
    /// Where new sessions go with `routeBy: 'sid'`.
    pub balance: Balance,
}

/// How `routeBy: 'sid'` picks the worker of a new session (`loadBalancingMethod`, as
/// `@socket.io/sticky` names it), among the slots whose worker is ready.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Balance {
    /// The ready slot with the fewest live connections (`@socket.io/sticky`'s default).
    #[default]
    LeastConnection,
    /// The next ready slot in turn.
    RoundRobin,
    /// A ready slot at random.
    Random,
}

impl std::str::FromStr for Balance {
    type Err = String;

    /// `least-connection`, `round-robin` or `random`.
    fn from_str(text: &str) -> Result<Balance, String> {
        match text {
            "least-connection" => Ok(Balance::LeastConnection),
            "round-robin" => Ok(Balance::RoundRobin),
            "random" => Ok(Balance::Random),
            other => Err(format!("unknown loadBalancingMethod {other:?}")),
        }
    }
}

/// Connections the router may hold (waiting or unacknowledged) before it stops accepting and
/// lets clients wait in the kernel's backlog: half the descriptors still free when it starts,
/// so the primary always keeps descriptors to fork workers and open their channels.
fn held_limit() -> usize {
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

/// A seed for `random` placement: the clock and the address of a stack value.
fn seed() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let local = 0u8;
    (nanos ^ (&local as *const u8 as u64).rotate_left(32)) | 1
}

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
        /// Its index in [`Config::listeners`].
        listener: u8,
        /// The OS error.
        error: String,
    },
    /// After [`Dispatcher::stop_accepting`]: the slot has delivered everything accepted for it
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

/// A connection from a trusted proxy, back from resolution.
pub(crate) struct Resolved {
    /// Its place in [`Dispatcher::reading`].
    id: u64,
    conn: OwnedFd,
    peer: SocketAddr,
    listener: u8,
    since: Instant,
    outcome: Outcome,
}

/// Decides what happens to each connection: admission, the route to a slot's queue, expiry,
/// and which channel each slot delivers to. No I/O of its own beyond the links' sends.
pub(crate) struct Dispatcher {
    table: Table<Held>,
    channels: HashMap<ChannelId, Link>,
    rules: Arc<Rules>,
    /// Connections being resolved now (their descriptors are held until the result is back).
    resolving: usize,
    /// How to make each resolution still reading give up, oldest (smallest id) first.
    reading: BTreeMap<u64, oneshot::Sender<()>>,
    next_reading: u64,
    /// At most this many connections are resolved at once: slow heads get a bounded share of
    /// the held connections, and the oldest is given up for a new one, so others are always
    /// accepted.
    resolve_limit: usize,
    resolved: UnboundedSender<Resolved>,
    /// Taken once by the event loop.
    pub resolved_rx: Option<UnboundedReceiver<Resolved>>,
    stats: Arc<Stats>,
    touched: Vec<bool>,
    /// What each slot may hold, and holds (waiting and unacknowledged).
    budget: Budget,
    queue_timeout: Option<Duration>,
    debug: bool,
    debug_connections: bool,
    on_event: OnEvent,
    /// After stop_accepting: which slots were said to be drained.
    draining: Option<Vec<bool>>,
    balance: Balance,
    /// Where round-robin (and the tie-break of least-connection) looks first.
    next_turn: usize,
    /// xorshift64 state for `random` (placement needs spread, not secrecy).
    random: u64,
    /// Kernel dispatch, stopping: the members still queue connections for the workers.
    kernel_queueing: bool,
    /// Kernel dispatch: workers accept connections themselves (and report them, `K`).
    kernel: bool,
}

impl Dispatcher {
    /// A dispatcher with nothing held yet, counting into `stats` and telling `on_event`.
    pub(crate) fn new(policy: &Policy, stats: Arc<Stats>, on_event: OnEvent) -> Dispatcher {
        let slots = policy.slots.max(1);
        let (resolved, resolved_rx) = unbounded_channel();
        let held_limit = held_limit();
        let resolve_limit = (held_limit / 2).max(1);
        // Heads being read keep their share (plus one: a new head is accepted before the oldest
        // is given up for it); routing by address reads none.
        let reading = match policy.rules.route_by {
            RouteBy::Address => 0,
            _ => resolve_limit + 1,
        };
        let budget = Budget::new(held_limit, reading, slots);
        if policy.debug {
            debug_line!(
                "[sticky-rs] primary: holds at most {held_limit} connection(s); each slot at least {} of them, more while the others keep theirs",
                budget.reserve()
            );
        }
        Dispatcher {
            table: Table::new(slots, policy.queue_limit, policy.hash),
            channels: HashMap::new(),
            rules: Arc::new(policy.rules.clone()),
            resolving: 0,
            reading: BTreeMap::new(),
            next_reading: 0,
            resolve_limit,
            resolved,
            resolved_rx: Some(resolved_rx),
            stats,
            touched: vec![false; slots],
            budget,
            queue_timeout: policy.queue_timeout,
            debug: policy.debug,
            debug_connections: policy.debug_connections,
            on_event,
            draining: None,
            balance: policy.balance,
            next_turn: 0,
            random: seed(),
            kernel_queueing: false,
            kernel: false,
        }
    }

    /// With kernel dispatch: workers accept connections themselves, and their counts of them
    /// are believed (within bounds). Without, every such count is impossible.
    pub(crate) fn kernel_dispatch(&mut self) {
        self.kernel = true;
    }

    /// Whether the tick has work: a channel owes an answer, waits to send, or connections wait.
    pub(crate) fn pending(&self) -> bool {
        self.channels
            .values()
            .any(|c| c.owes_answer() || c.paused())
            || (0..self.table.len()).any(|i| !self.table.slot(i).waiting.is_empty())
            || self
                .draining
                .as_ref()
                .is_some_and(|said| said.contains(&false))
    }

    /// No more connections come in (graceful shutdown): from now on each slot is reported
    /// [`Event::Drained`] once it delivered what it holds. `kernel_queueing`: with kernel
    /// dispatch the members still hold connections for the workers, until
    /// [`Dispatcher::kernel_stopped`].
    pub(crate) fn stop_accepting(&mut self, kernel_queueing: bool) {
        self.draining = Some(vec![false; self.table.len()]);
        self.kernel_queueing = kernel_queueing;
        self.report_drained();
    }

    /// The slots that have a ready worker now (which can still take connections).
    pub(crate) fn served_slots(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.table.len()).filter(|&slot| self.table.slot(slot).channel.is_some())
    }

    /// Kernel dispatch: the members stopped listening; nothing more waits there.
    pub(crate) fn kernel_stopped(&mut self) {
        self.kernel_queueing = false;
        self.report_drained();
    }

    /// Says [`Event::Drained`] for every slot that just became drained.
    fn report_drained(&mut self) {
        // A head still being read may be for any slot; the kernel's queues, for every slot.
        if self.draining.is_none() || self.resolving > 0 || self.kernel_queueing {
            return;
        }
        for slot in 0..self.table.len() {
            let said = self.draining.as_ref().is_some_and(|said| said[slot]);
            if said || (self.table.slot(slot).channel.is_some() && self.held(slot) > 0) {
                continue;
            }
            if let Some(said) = self.draining.as_mut() {
                said[slot] = true;
            }
            (self.on_event)(Event::Drained { slot });
        }
    }

    /// Reads every channel, owing or not (see [`REPORTS`]).
    pub(crate) fn read_reports(&mut self) {
        let ids: Vec<ChannelId> = self.channels.keys().copied().collect();
        for id in ids {
            self.read_channel(id);
        }
    }

    /// Reads every channel that owes an answer, then delivers to every slot that can take more.
    pub(crate) fn service(&mut self) {
        let owing: Vec<ChannelId> = self
            .channels
            .iter()
            .filter(|(_, c)| c.owes_answer())
            .map(|(&id, _)| id)
            .collect();
        for id in owing {
            self.read_channel(id);
        }
        let now = Instant::now();
        for ch in self.channels.values_mut() {
            if ch.resume_if_due(now) {
                self.touched[ch.slot()] = true;
            }
        }
        for slot in 0..self.touched.len() {
            if std::mem::take(&mut self.touched[slot]) || !self.table.slot(slot).waiting.is_empty()
            {
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
                self.budget.release(slot, expired.len());
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
        self.budget.room(self.resolving)
    }

    /// Takes `held` into `slot`'s queue if the slot's budget admits it; else closes it at once
    /// (counted in `dropped` and `overShare`). True if it was taken.
    fn admit(&mut self, slot: usize, held: Held) -> bool {
        let counters = &self.stats.slots[slot];
        Stats::add(&counters.accepted, 1);
        if !self.budget.admits(slot) {
            drop(held);
            Stats::add(&counters.dropped, 1);
            Stats::add(&counters.over_share, 1);
            if self.debug_connections {
                debug_line!(
                    "[sticky-rs] primary: slot {slot} holds {} connection(s), its share: closed a new one",
                    self.budget.held(slot)
                );
            }
            return false;
        }
        self.budget.take(slot);
        self.table.slot_mut(slot).waiting.push_back(held);
        self.touched[slot] = true;
        true
    }

    /// Closes the waiting connections whose client hung up (reset, or closed before sending a
    /// byte): nobody would read their answer, and a stuck slot would hold them until its worker
    /// came back. Connections already sent to a worker are its own.
    pub(crate) fn release_hung_up(&mut self) {
        for slot in 0..self.table.len() {
            let waiting = &mut self.table.slot_mut(slot).waiting;
            if waiting.is_empty() {
                continue;
            }
            let gone = link::remove_hung_up(waiting);
            if gone > 0 {
                self.budget.release(slot, gone);
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
            if self.reading.len() >= self.resolve_limit {
                if let Some((_, oldest)) = self.reading.pop_first() {
                    let _ = oldest.send(());
                    Stats::add(&self.stats.given_up, 1);
                }
            }
            self.resolving += 1;
            Stats::set(&self.stats.resolving, self.resolving as u64);
            let id = self.next_reading;
            self.next_reading += 1;
            let (give_up, give_up_now) = oneshot::channel();
            self.reading.insert(id, give_up);
            let (rules, done) = (self.rules.clone(), self.resolved.clone());
            tokio::spawn(async move {
                let (conn, outcome) = resolve::resolve(conn, rules, give_up_now).await;
                let _ = done.send(Resolved {
                    id,
                    conn,
                    peer,
                    listener,
                    since,
                    outcome,
                });
            });
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

    /// Routes a connection whose resolution ended.
    pub(crate) fn resolved(&mut self, done: Resolved) {
        self.reading.remove(&done.id);
        self.resolving = self.resolving.saturating_sub(1);
        Stats::set(&self.stats.resolving, self.resolving as u64);
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

    /// `routeBy: 'sid'`: to the slot the id names if its worker is ready, else (a new session, a
    /// stale or forged id) to the slot the balancing method picks; TLS by the peer's address.
    fn route_session(&mut self, done: Resolved) {
        let live =
            |d: &Self, slot: usize| slot < d.table.len() && d.table.slot(slot).channel.is_some();
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
            Outcome::Fallback => {
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

    /// The slot of a new session: among slots whose worker is ready (else among all, to wait
    /// there), by the balancing method.
    fn pick_for_new_session(&mut self) -> usize {
        let ready = self.ready_slots();
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
            Balance::LeastConnection => {
                // Closes are reported by workers on their channel; read them now so idle
                // workers' counts are current (one non-blocking read per ready channel).
                let ids: Vec<ChannelId> = ready
                    .iter()
                    .filter_map(|&s| self.table.slot(s).channel)
                    .collect();
                for id in ids {
                    self.read_channel(id);
                }
                // Ties go round in turn, so a burst before any count moved still spreads.
                (0..ready.len())
                    .map(|i| ready[(turn + i) % ready.len()])
                    .min_by_key(|&s| self.live(s))
                    .unwrap_or(0)
            }
        }
    }

    /// `routeBy: 'sid'`: a slot left without a worker holds no session any more, and an adopted
    /// worker's replacement may take another place; what waits there is placed again as new
    /// sessions on the ready slots (a request of a dead session is refused there, as anywhere).
    fn move_sessions_away(&mut self, slot: usize) {
        if self.rules.route_by != RouteBy::Sid || self.table.slot(slot).channel.is_some() {
            return;
        }
        if !(0..self.table.len()).any(|s| self.table.slot(s).channel.is_some()) {
            return;
        }
        let waiting: Vec<Held> = self.table.slot_mut(slot).waiting.drain(..).collect();
        self.budget.release(slot, waiting.len());
        for held in waiting {
            let to = self.pick_for_new_session();
            // Already held: it moves whatever the new slot holds.
            self.budget.take(to);
            self.table.slot_mut(to).waiting.push_back(held);
            self.touched[to] = true;
        }
        self.update_gauges(slot);
    }

    /// The slots whose worker is ready, or slot 0 if none is (connections wait where the first
    /// worker will be: adopted workers take the lowest free place). Never empty.
    fn ready_slots(&self) -> Vec<usize> {
        let ready: Vec<usize> = (0..self.table.len())
            .filter(|&s| self.table.slot(s).channel.is_some())
            .collect();
        if ready.is_empty() {
            vec![0]
        } else {
            ready
        }
    }

    /// A slot's live connections as far as the router knows: waiting, on their way, and
    /// adopted but not reported closed, over all its channels.
    fn live(&self, slot: usize) -> u64 {
        let links: u64 = self
            .channels
            .values()
            .filter(|c| c.slot() == slot)
            .map(Link::live)
            .sum();
        links + self.table.slot(slot).waiting.len() as u64
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

    /// What to do after a failed accept: `Some(pause)` when the process or system is out of
    /// descriptors or memory (retrying at once would spin), `None` to go on.
    pub(crate) fn accept_failed(&mut self, e: &io::Error) -> Option<Duration> {
        match e.raw_os_error() {
            Some(libc::ECONNABORTED) | Some(libc::EINTR) | Some(libc::EPROTO) => None,
            Some(code) => {
                Stats::add(&self.stats.accept_errors, 1);
                if self.debug {
                    debug_line!("[sticky-rs] primary: accept failed: {e}");
                }
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

    /// Sends what the slot has waiting to its channel while the window allows; then closes
    /// whatever still waits beyond the slot's limit.
    fn deliver(&mut self, slot: usize) {
        if let Some(id) = self.table.slot(slot).channel {
            if let Some(link) = self.channels.get_mut(&id) {
                let waiting = &mut self.table.slot_mut(slot).waiting;
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
            self.budget.release(slot, dropped.len());
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
        self.channels
            .values()
            .filter(|c| c.slot() == slot)
            .map(Link::in_flight)
            .sum()
    }

    /// What `slot` holds: waiting and in flight.
    fn held(&self, slot: usize) -> usize {
        self.table.slot(slot).waiting.len() + self.in_flight(slot)
    }

    fn update_gauges(&self, slot: usize) {
        let counters = &self.stats.slots[slot];
        Stats::set(&counters.in_flight, self.in_flight(slot) as u64);
        Stats::set(&counters.queued, self.table.slot(slot).waiting.len() as u64);
        Stats::set(
            &counters.channel,
            self.table.slot(slot).channel.unwrap_or(0),
        );
    }

    /// Starts serving channel `id`. An id in use already is refused (the new end closes): the
    /// primary names each worker's channel once.
    pub(crate) fn open(&mut self, id: ChannelId, slot: usize, fd: OwnedFd) {
        match self.channels.entry(id) {
            std::collections::hash_map::Entry::Vacant(entry) => {
                entry.insert(Link::new(fd, slot, self.kernel));
            }
            std::collections::hash_map::Entry::Occupied(_) => {
                if self.debug {
                    debug_line!("[sticky-rs] primary: channel {id} is open already; refused");
                }
            }
        }
    }

    /// Reads what a worker sent back, without blocking, and acts on it.
    pub(crate) fn read_channel(&mut self, id: ChannelId) {
        let Some(link) = self.channels.get_mut(&id) else {
            return;
        };
        let mut lost = Vec::new();
        let answers = link.read(Instant::now(), &mut lost);
        let slot = link.slot();
        if answers.acknowledged > 0 {
            self.budget.release(slot, answers.acknowledged);
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
            self.hello(id);
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

    /// A worker is ready on channel `id`: its slot delivers to it unless a newer worker's
    /// channel already serves the slot. The channel it replaces is retired (its worker is being
    /// replaced and finishes what it was sent). A second hello on a channel changes nothing.
    fn hello(&mut self, id: ChannelId) {
        let Some(ch) = self.channels.get_mut(&id) else {
            return;
        };
        if ch.ready {
            return;
        }
        ch.ready = true;
        let (slot, retired) = (ch.slot(), ch.retired);
        if !retired {
            self.activate(slot, id);
        }
    }

    /// Makes a ready channel its slot's target (see [`Table::activate`]) and says so.
    fn activate(&mut self, slot: usize, id: ChannelId) {
        match self.table.activate(slot, id) {
            Err(newer) => {
                if self.debug {
                    debug_line!("[sticky-rs] primary: slot {slot}: late hello on channel {id} ignored, channel {newer} is newer");
                }
            }
            Ok(previous) => {
                if let Some(previous) = previous {
                    self.retire(previous);
                }
                self.touched[slot] = true;
                self.update_gauges(slot);
                if self.debug {
                    debug_line!("[sticky-rs] primary: slot {slot} ready (channel {id})");
                }
                (self.on_event)(Event::Switched { slot, channel: id });
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

    pub(crate) fn retire(&mut self, id: ChannelId) {
        if let Some(ch) = self.channels.get_mut(&id) {
            ch.retired = true;
            let slot = ch.slot();
            self.table.deactivate(slot, id);
            self.update_gauges(slot);
            if self.debug {
                debug_line!("[sticky-rs] primary: slot {slot}: channel {id} retired");
            }
        }
    }

    /// Drops a channel; what it had not acknowledged goes back to its slot for the next worker.
    pub(crate) fn close_channel(&mut self, id: ChannelId) {
        let Some(link) = self.channels.remove(&id) else {
            return;
        };
        let slot = link.slot();
        self.table.deactivate(slot, id);
        // The slot goes on with its newest other ready worker, if one is there (a replacement
        // whose hello came first, then this one's).
        if self.table.slot(slot).channel.is_none() {
            let fallback = self
                .channels
                .iter()
                .filter(|(_, c)| c.slot() == slot && c.ready && !c.retired)
                .map(|(&id, _)| id)
                .max();
            if let Some(fallback) = fallback {
                self.activate(slot, fallback);
            }
        }
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

    pub(crate) fn shutdown(&mut self) {
        self.channels.clear();
        drop(self.table.drain_all());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    use crate::key::resolve::RouteBy;
    use crate::key::trust::Trusted;
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
            rules: Rules {
                route_by: RouteBy::Address,
                trusted: Trusted::default(),
                limit: 256,
                timeout: Duration::from_secs(1),
                node: None,
            },
            slots,
            queue_limit,
            queue_timeout,
            hash: Hash::Djb2,
            debug: false,
            debug_connections: false,
            balance: Balance::default(),
        };
        let stats = Arc::new(Stats::new(slots));
        let on_event: OnEvent = Arc::new(|_| {});
        (Dispatcher::new(&policy, stats.clone(), on_event), stats)
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
        d.budget = Budget::new(40, 0, 2);
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
        assert_eq!((d.budget.held(0), d.budget.held(1)), (30, 10));
        assert!(d.full());
        // Slot 1's worker adopts them: room for slot 1 again, none for slot 0 beyond its 30.
        transport::send(worker_one.as_fd(), ToPrimary::Ack(10))?;
        d.service();
        assert_eq!((d.budget.held(1), d.room()), (0, 10));
        d.route(std::fs::File::open("/dev/null")?.into(), Some(zero), 0);
        assert_eq!(stats.snapshot(0).over_share, 21);
        // Slot 0's worker comes: it gets the 30 and, once they are adopted, its full share again.
        let worker_zero = worker_in(&mut d, 2, 0, false)?;
        assert_eq!(received(&worker_zero)?, 30);
        transport::send(worker_zero.as_fd(), ToPrimary::Ack(30))?;
        d.service();
        assert_eq!((d.held(0), d.budget.held(0), d.room()), (0, 0, 40));
        Ok(())
    }

    /// A `routeBy: 'sid'` dispatcher of `slots` slots placing new sessions by `balance`.
    fn sessions(slots: usize, balance: Balance) -> Dispatcher {
        let policy = Policy {
            rules: Rules {
                route_by: RouteBy::Sid,
                trusted: Trusted::default(),
                limit: 256,
                timeout: Duration::from_secs(1),
                node: None,
            },
            slots,
            queue_limit: 100,
            queue_timeout: None,
            hash: Hash::Djb2,
            debug: false,
            debug_connections: false,
            balance,
        };
        Dispatcher::new(&policy, Arc::new(Stats::new(slots)), Arc::new(|_| {}))
    }

    /// A connection whose request line said `outcome`.
    fn session(d: &mut Dispatcher, outcome: Outcome) -> io::Result<()> {
        d.resolving += 1;
        d.resolved(Resolved {
            id: 0,
            conn: std::fs::File::open("/dev/null")?.into(),
            peer: "127.0.0.1:4000".parse().map_err(io::Error::other)?,
            listener: 0,
            since: Instant::now(),
            outcome,
        });
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
