//! The router: a thread of its own that accepts every connection, routes it to a slot and
//! passes it down the slot's worker channel. JavaScript only opens and releases channels.
//!
//! Each channel keeps the primary's copy of a connection until the worker acknowledges it, so a
//! worker that dies first costs nothing: its unacknowledged connections go back to the front of
//! the slot's queue and reach the replacement.
//!
//! Only the listener wakes the thread. Wake-ups are the dominant cost per connection (a context
//! switch each), so channels are not watched: what workers send back (hello, acks, losses, end of
//! file) is read without blocking after each burst of accepts, while the thread is awake anyway,
//! and on a short tick that runs only while something is pending.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::Poll;
use std::thread::JoinHandle;
use std::time::Duration;

use socket2::Socket;
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::address::AddressText;
use crate::channel::{self, Meta};
use crate::hash::Hash;
use crate::link::{Held, Link};
use crate::listener;
use crate::resolve::{self, Outcome, Rules};
use crate::stats::Stats;
use crate::table::{ChannelId, Table};

/// Connections accepted per wake-up before delivering, so batches form under load.
const ACCEPT_BURST: usize = 256;
/// Pause after the process ran out of descriptors, leaving clients in the kernel's backlog.
const EMFILE_BACKOFF: Duration = Duration::from_millis(100);
/// How often channels are read and queues checked while something is pending: the most an
/// acknowledgement, a hello or a full channel can wait for attention.
const TICK: Duration = Duration::from_millis(5);

/// One address to listen on.
#[derive(Debug, Clone)]
pub struct Listen {
    /// The address.
    pub addr: SocketAddr,
    /// The `listen` backlog.
    pub backlog: i32,
}

/// What a router listens on and how it routes.
#[derive(Debug, Clone)]
pub struct Config {
    /// The addresses to listen on; a client lands on the same slot on each of them.
    pub listeners: Vec<Listen>,
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
    /// The router thread ended on its own (a bug): nothing is accepted or delivered any more.
    Stopped {
        /// Why.
        reason: String,
    },
}

/// Receives the router's events on the router thread; must not block.
pub type OnEvent = Arc<dyn Fn(Event) + Send + Sync + 'static>;

/// How long `close` waits for the router thread before it gives up on it.
const CLOSE_WAIT: Duration = Duration::from_secs(5);

enum Command {
    Open {
        id: ChannelId,
        slot: usize,
        fd: OwnedFd,
    },
    Release {
        id: ChannelId,
    },
    Retire {
        id: ChannelId,
    },
    StopAccepting,
    Close,
    /// Makes the thread panic (tests of what a dead router does).
    #[cfg(any(test, feature = "test-hooks"))]
    Panic,
}

/// A listening router and its accept thread.
pub struct Router {
    commands: UnboundedSender<Command>,
    thread: Option<JoinHandle<()>>,
    /// Disconnected when the thread ends, however it ends.
    ended: std::sync::mpsc::Receiver<()>,
    stats: Arc<Stats>,
    local_addrs: Vec<SocketAddr>,
    slots: usize,
    next_id: AtomicU64,
}

impl Router {
    /// Binds, listens, and starts accepting on a new thread. Bind errors (EADDRINUSE, EACCES...)
    /// are returned here, before anything runs.
    pub fn start(config: Config, on_event: OnEvent) -> io::Result<Router> {
        let sockets = config
            .listeners
            .iter()
            .enumerate()
            .map(|(i, l)| listener::bind(l.addr, l.backlog).map_err(|e| bind_error(i, e)))
            .collect::<io::Result<Vec<Socket>>>()?;
        let local_addrs = sockets
            .iter()
            .map(|s| {
                s.local_addr()?
                    .as_socket()
                    .ok_or_else(|| io::Error::other("listener has no IP address"))
            })
            .collect::<io::Result<Vec<SocketAddr>>>()?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .build()?;
        let slots = config.slots.max(1);
        let stats = Arc::new(Stats::new(slots));
        let (commands, command_rx) = unbounded_channel();
        let stats_for_thread = stats.clone();
        // Registered here, so that a failure is an error of start() rather than a silent thread.
        let listeners = {
            let _context = runtime.enter();
            sockets
                .into_iter()
                .enumerate()
                .map(|(index, socket)| {
                    // SAFETY: the socket is owned and moved in; it stays open as long as the AsyncFd.
                    let watched =
                        unsafe { AsyncFd::register_with_interest(socket, Interest::READABLE) }
                            .map_err(io::Error::from)?;
                    Ok((u8::try_from(index).unwrap_or(u8::MAX), watched))
                })
                .collect::<io::Result<Vec<_>>>()?
        };
        let (ended_tx, ended) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("sticky-rs-router".into())
            .spawn(move || {
                let _ended = ended_tx;
                let state = State::new(&config, stats_for_thread, on_event.clone());
                let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    runtime.block_on(run(listeners, command_rx, state))
                }));
                if let Err(panic) = result {
                    let reason = panic
                        .downcast_ref::<&str>()
                        .map(|s| (*s).to_owned())
                        .or_else(|| panic.downcast_ref::<String>().cloned())
                        .unwrap_or_else(|| "panic".into());
                    on_event(Event::Stopped { reason });
                }
            })?;
        Ok(Router {
            commands,
            thread: Some(thread),
            ended,
            stats,
            local_addrs,
            slots,
            next_id: AtomicU64::new(1),
        })
    }

    /// The bound addresses, in the order of the configuration (the real port when 0 was asked for).
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.local_addrs
    }

    /// The number of slots.
    pub fn slots(&self) -> usize {
        self.slots
    }

    /// The counters.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Creates a channel for a worker of `slot` and returns its id and the worker's end, to be
    /// handed to that worker alone. The slot switches to it when the worker says hello.
    pub fn open_channel(&self, slot: usize) -> io::Result<(ChannelId, OwnedFd)> {
        if slot >= self.slots {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("slot {slot} out of range 0..{}", self.slots),
            ));
        }
        let (primary, worker) = channel::pair()?;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.send(Command::Open {
            id,
            slot,
            fd: primary,
        })?;
        Ok((id, worker))
    }

    /// Forgets a channel (its worker exited); connections it did not acknowledge are re-queued.
    pub fn release(&self, id: ChannelId) -> io::Result<()> {
        self.send(Command::Release { id })
    }

    fn send(&self, command: Command) -> io::Result<()> {
        self.commands
            .send(command)
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "router is closed"))
    }

    /// Sends nothing more to a channel, keeping it open for the acknowledgements of what it was
    /// already sent (its worker is finishing); the slot waits for a replacement's hello.
    pub fn retire(&self, id: ChannelId) -> io::Result<()> {
        self.send(Command::Retire { id })
    }

    /// Closes the listener but keeps delivering what is already accepted (graceful shutdown:
    /// new clients are refused by the kernel, accepted ones still reach their workers).
    pub fn stop_accepting(&self) -> io::Result<()> {
        self.send(Command::StopAccepting)
    }

    /// Stops accepting, closes the listener, every channel and every queued connection, and
    /// waits for the thread, at most [`CLOSE_WAIT`]: a thread that does not end by then is left
    /// behind (with everything it holds) and the error says so. Idempotent.
    pub fn close(&mut self) -> io::Result<()> {
        let _ = self.commands.send(Command::Close);
        let Some(thread) = self.thread.take() else {
            return Ok(());
        };
        match self.ended.recv_timeout(CLOSE_WAIT) {
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("the router thread did not stop within {CLOSE_WAIT:?}; left running"),
            )),
            // Ended: the join returns at once.
            _ => {
                let _ = thread.join();
                Ok(())
            }
        }
    }

    /// Makes the router thread panic, to test what its owner does then.
    #[cfg(any(test, feature = "test-hooks"))]
    pub fn panic_for_test(&self) -> io::Result<()> {
        self.send(Command::Panic)
    }
}

impl Drop for Router {
    fn drop(&mut self) {
        if let Err(e) = self.close() {
            eprintln!("sticky-rs: {e}");
        }
    }
}

/// A connection from a trusted proxy, back from resolution.
struct Resolved {
    /// Its place in [`State::reading`].
    id: u64,
    conn: OwnedFd,
    peer: SocketAddr,
    listener: u8,
    since: Instant,
    outcome: Outcome,
}

struct State {
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
    resolved_rx: Option<UnboundedReceiver<Resolved>>,
    stats: Arc<Stats>,
    touched: Vec<bool>,
    held_limit: usize,
    queue_timeout: Option<Duration>,
    debug: bool,
    debug_connections: bool,
    on_event: OnEvent,
}

async fn run(
    mut listeners: Vec<(u8, AsyncFd<Socket>)>,
    mut commands: UnboundedReceiver<Command>,
    mut state: State,
) {
    let Some(mut resolved) = state.resolved_rx.take() else {
        return;
    };
    let mut paused_until: Option<Instant> = None;
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut first = 0;
    loop {
        let resume_at = paused_until.unwrap_or_else(Instant::now);
        let accepting = !listeners.is_empty() && paused_until.is_none() && !state.full();
        tokio::select! {
            command = commands.recv() => match command {
                Some(Command::Open { id, slot, fd }) => state.open(id, slot, fd),
                Some(Command::Release { id }) => {
                    // Acknowledgements still in the channel say what the worker had adopted.
                    state.read_channel(id);
                    state.close_channel(id);
                }
                Some(Command::Retire { id }) => state.retire(id),
                Some(Command::StopAccepting) => listeners.clear(),
                Some(Command::Close) | None => break,
                #[cfg(any(test, feature = "test-hooks"))]
                Some(Command::Panic) => panic!("panic requested by a test"),
            },
            Some(done) = resolved.recv() => {
                state.resolved(done);
                state.service();
            }
            _ = tick.tick(), if state.pending() => {
                state.service();
                state.expire();
            }
            (position, ready) = first_ready(&listeners, first), if accepting => match ready {
                Ok(mut guard) => {
                    let listener = listeners[position].0;
                    // The next wake-up looks at the following listener first: none starves.
                    first = position + 1;
                    // Each accept holds at most one more connection: the room, counted once,
                    // bounds the whole burst.
                    for _ in 0..ACCEPT_BURST.min(state.room()) {
                        match guard.try_io(|l| l.get_ref().accept()) {
                            Ok(Ok((conn, peer))) => state.route(conn.into(), peer.as_socket(), listener),
                            Ok(Err(e)) => {
                                if let Some(pause) = state.accept_failed(&e) {
                                    paused_until = Some(Instant::now() + pause);
                                    break;
                                }
                            }
                            Err(_would_block) => break,
                        }
                    }
                    // Awake anyway: collect acknowledgements, then send the new connections. The
                    // tick is for lulls only, so it adds no wake-ups under load.
                    state.service();
                    tick.reset();
                }
                Err(e) => {
                    let (listener, _) = listeners.remove(position);
                    state.listener_failed(listener, &e);
                }
            },
            _ = tokio::time::sleep_until(resume_at), if paused_until.is_some() => paused_until = None,
        }
    }
    state.shutdown();
}

/// Says which listener failed, keeping the OS error code.
fn bind_error(listener: usize, e: io::Error) -> io::Error {
    match e.raw_os_error() {
        Some(code) => io::Error::other(BindError { listener, code }),
        None => e,
    }
}

/// A listener that could not be bound.
#[derive(Debug)]
pub struct BindError {
    /// Its index in [`Config::listeners`].
    pub listener: usize,
    /// The OS error code (errno).
    pub code: i32,
}

impl std::fmt::Display for BindError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let e = io::Error::from_raw_os_error(self.code);
        write!(f, "listener {}: {e}", self.listener)
    }
}

impl std::error::Error for BindError {}

/// The first listener ready to accept, looking from position `first` on; with its position.
async fn first_ready(
    listeners: &[(u8, AsyncFd<Socket>)],
    first: usize,
) -> (
    usize,
    io::Result<tokio::io::unix::AsyncFdReadyGuard<'_, Socket>>,
) {
    std::future::poll_fn(|cx| {
        let n = listeners.len();
        for k in 0..n {
            let position = (first + k) % n;
            if let Poll::Ready(ready) = listeners[position].1.poll_read_ready(cx) {
                return Poll::Ready((position, ready));
            }
        }
        Poll::Pending
    })
    .await
}

impl State {
    fn new(config: &Config, stats: Arc<Stats>, on_event: OnEvent) -> State {
        let slots = config.slots.max(1);
        let (resolved, resolved_rx) = unbounded_channel();
        let held_limit = held_limit();
        State {
            table: Table::new(slots, config.queue_limit, config.hash),
            channels: HashMap::new(),
            rules: Arc::new(config.rules.clone()),
            resolving: 0,
            reading: BTreeMap::new(),
            next_reading: 0,
            resolve_limit: (held_limit / 2).max(1),
            resolved,
            resolved_rx: Some(resolved_rx),
            stats,
            touched: vec![false; slots],
            held_limit,
            queue_timeout: config.queue_timeout,
            debug: config.debug,
            debug_connections: config.debug_connections,
            on_event,
        }
    }

    /// Whether the tick has work: a channel owes an answer, waits to send, or connections wait.
    fn pending(&self) -> bool {
        self.channels
            .values()
            .any(|c| c.owes_answer() || c.paused())
            || (0..self.table.len()).any(|i| !self.table.slot(i).waiting.is_empty())
    }

    /// Reads every channel that owes an answer, then delivers to every slot that can take more.
    fn service(&mut self) {
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
    }

    /// Closes connections that waited longer than `queue_timeout`, oldest first.
    fn expire(&mut self) {
        let Some(timeout) = self.queue_timeout else {
            return;
        };
        let now = Instant::now();
        for slot in 0..self.table.len() {
            let expired = self
                .table
                .expire_front(slot, |held| now.duration_since(held.since) >= timeout);
            if !expired.is_empty() {
                Stats::add(&self.stats.slots[slot].dropped, expired.len() as u64);
                Stats::add(&self.stats.slots[slot].expired, expired.len() as u64);
                self.update_gauges(slot);
                if self.debug {
                    eprintln!(
                        "[sticky-rs] primary: slot {slot}: closed {} connection(s) that waited {timeout:?}",
                        expired.len()
                    );
                }
            }
        }
    }

    /// Whether the router holds as many connections as it may; accepting resumes below.
    fn full(&self) -> bool {
        self.room() == 0
    }

    /// How many more connections the router may hold.
    fn room(&self) -> usize {
        let waiting: usize = (0..self.table.len())
            .map(|i| self.table.slot(i).waiting.len())
            .sum();
        let in_flight: usize = self.channels.values().map(Link::in_flight).sum();
        self.held_limit
            .saturating_sub(waiting + in_flight + self.resolving)
    }

    /// Routes a new connection by its peer address, or hands it to resolution if it comes from
    /// a trusted proxy whose header or PROXY data decides.
    fn route(&mut self, conn: OwnedFd, peer: Option<SocketAddr>, listener: u8) {
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
        self.enqueue(key, Held { conn, since, meta });
    }

    /// Routes a connection whose resolution ended.
    fn resolved(&mut self, done: Resolved) {
        self.reading.remove(&done.id);
        self.resolving = self.resolving.saturating_sub(1);
        Stats::set(&self.stats.resolving, self.resolving as u64);
        match done.outcome {
            Outcome::Reject => {
                Stats::add(&self.stats.rejected, 1);
                if self.debug_connections {
                    eprintln!("[sticky-rs] primary: closed a connection from {} without a valid PROXY header", done.peer);
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
        self.enqueue(
            key.as_bytes(),
            Held {
                conn: done.conn,
                since: done.since,
                meta,
            },
        );
    }

    fn enqueue(&mut self, key: &[u8], held: Held) {
        let slot = self.table.push(key, held);
        Stats::add(&self.stats.slots[slot].accepted, 1);
        self.touched[slot] = true;
        if self.debug_connections {
            let key = String::from_utf8_lossy(key);
            eprintln!("[sticky-rs] primary: connection keyed {key:?} -> slot {slot}");
        }
    }

    /// What to do after a failed accept: `Some(pause)` when the process or system is out of
    /// descriptors or memory (retrying at once would spin), `None` to go on.
    fn accept_failed(&mut self, e: &io::Error) -> Option<Duration> {
        match e.raw_os_error() {
            Some(libc::ECONNABORTED) | Some(libc::EINTR) | Some(libc::EPROTO) => None,
            Some(code) => {
                Stats::add(&self.stats.accept_errors, 1);
                if self.debug {
                    eprintln!("[sticky-rs] primary: accept failed: {e}");
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
                if link.send_from(waiting, Instant::now(), TICK).is_err() {
                    self.close_channel(id);
                    return;
                }
            }
        }
        let dropped = self.table.trim(slot);
        if !dropped.is_empty() {
            Stats::add(&self.stats.slots[slot].dropped, dropped.len() as u64);
            if self.debug {
                eprintln!(
                    "[sticky-rs] primary: slot {slot} queue full, closed {} connection(s)",
                    dropped.len()
                );
            }
        }
        self.update_gauges(slot);
    }

    fn update_gauges(&self, slot: usize) {
        let counters = &self.stats.slots[slot];
        let in_flight: usize = self
            .channels
            .values()
            .filter(|c| c.slot() == slot)
            .map(Link::in_flight)
            .sum();
        Stats::set(&counters.in_flight, in_flight as u64);
        Stats::set(&counters.queued, self.table.slot(slot).waiting.len() as u64);
        Stats::set(
            &counters.channel,
            self.table.slot(slot).channel.unwrap_or(0),
        );
    }

    fn open(&mut self, id: ChannelId, slot: usize, fd: OwnedFd) {
        self.channels.insert(id, Link::new(fd, slot));
    }

    /// Reads what a worker sent back, without blocking, and acts on it.
    fn read_channel(&mut self, id: ChannelId) {
        let Some(link) = self.channels.get_mut(&id) else {
            return;
        };
        let mut lost = Vec::new();
        let answers = link.read(Instant::now(), &mut lost);
        let slot = link.slot();
        if answers.acknowledged > 0 {
            Stats::add(
                &self.stats.slots[slot].delivered,
                answers.acknowledged as u64,
            );
            self.touched[slot] = true;
        }
        if !lost.is_empty() {
            let n = lost.len();
            Stats::add(&self.stats.slots[slot].redelivered, n as u64);
            self.table.requeue_front(slot, lost);
            if self.debug {
                eprintln!("[sticky-rs] primary: slot {slot}: worker lost {n} connection(s) (out of descriptors), sending again");
            }
        }
        if answers.hello {
            self.hello(id);
        }
        if !answers.open {
            self.close_channel(id);
        }
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
                    eprintln!("[sticky-rs] primary: slot {slot}: late hello on channel {id} ignored, channel {newer} is newer");
                }
            }
            Ok(previous) => {
                if let Some(previous) = previous {
                    self.retire(previous);
                }
                self.touched[slot] = true;
                self.update_gauges(slot);
                if self.debug {
                    eprintln!("[sticky-rs] primary: slot {slot} ready (channel {id})");
                }
                (self.on_event)(Event::Switched { slot, channel: id });
            }
        }
    }

    /// Records a failed listener and says so; the others go on accepting.
    fn listener_failed(&mut self, listener: u8, e: &io::Error) {
        Stats::add(&self.stats.listener_failures, 1);
        (self.on_event)(Event::ListenerFailed {
            listener,
            error: e.to_string(),
        });
    }

    fn retire(&mut self, id: ChannelId) {
        if let Some(ch) = self.channels.get_mut(&id) {
            ch.retired = true;
            let slot = ch.slot();
            self.table.deactivate(slot, id);
            self.update_gauges(slot);
            if self.debug {
                eprintln!("[sticky-rs] primary: slot {slot}: channel {id} retired");
            }
        }
    }

    /// Drops a channel; what it had not acknowledged goes back to its slot for the next worker.
    fn close_channel(&mut self, id: ChannelId) {
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
        let unacknowledged = link.into_unacknowledged();
        let returned = unacknowledged.len() as u64;
        Stats::add(&self.stats.slots[slot].redelivered, returned);
        self.table.requeue_front(slot, unacknowledged);
        if self.debug {
            eprintln!(
                "[sticky-rs] primary: slot {slot} channel {id} closed, {returned} connection(s) re-queued"
            );
        }
        self.deliver(slot);
    }

    fn shutdown(&mut self) {
        self.channels.clear();
        drop(self.table.drain_all());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;
    use std::sync::mpsc;
    use std::sync::Mutex;

    use crate::channel::Message;

    use crate::trust::Trusted;

    const WAIT: Duration = Duration::from_secs(5);

    fn start(slots: usize) -> io::Result<(Router, mpsc::Receiver<Event>)> {
        let (tx, rx) = mpsc::channel();
        let tx = Mutex::new(tx);
        let config = Config {
            listeners: vec![Listen {
                addr: "127.0.0.1:0".parse().map_err(io::Error::other)?,
                backlog: 16,
            }],
            rules: Rules {
                route_by: resolve::RouteBy::Address,
                trusted: Trusted::default(),
                limit: 256,
                timeout: Duration::from_secs(1),
            },
            slots,
            queue_limit: 16,
            queue_timeout: None,
            hash: Hash::Djb2,
            debug: false,
            debug_connections: false,
        };
        let on_event: OnEvent = Arc::new(move |event| {
            if let Ok(tx) = tx.lock() {
                let _ = tx.send(event);
            }
        });
        Ok((Router::start(config, on_event)?, rx))
    }

    fn hello(worker: &OwnedFd) -> io::Result<()> {
        channel::send(worker.as_fd(), Message::Hello)
    }

    fn next(events: &mpsc::Receiver<Event>) -> io::Result<Event> {
        events.recv_timeout(WAIT).map_err(io::Error::other)
    }

    /// Returns once the router has read everything written to any channel before this call:
    /// a hello on a fresh channel of `slot` is answered in a later pass than anything before it.
    fn settle(router: &Router, events: &mpsc::Receiver<Event>, slot: usize) -> io::Result<()> {
        for _ in 0..2 {
            let (id, worker) = router.open_channel(slot)?;
            hello(&worker)?;
            assert_eq!(next(events)?, Event::Switched { slot, channel: id });
            router.release(id)?;
        }
        Ok(())
    }

    #[test]
    fn a_late_hello_from_an_older_worker_does_not_take_the_slot_back() -> io::Result<()> {
        let (router, events) = start(2)?;
        let (old, old_end) = router.open_channel(0)?;
        let (new, new_end) = router.open_channel(0)?;
        hello(&new_end)?;
        assert_eq!(
            next(&events)?,
            Event::Switched {
                slot: 0,
                channel: new
            }
        );
        hello(&old_end)?;
        settle(&router, &events, 1)?;
        assert_eq!(router.stats().snapshot(0).channel, new);
        // The newer worker goes: the older one, ready and not retired, serves the slot.
        router.release(new)?;
        assert_eq!(
            next(&events)?,
            Event::Switched {
                slot: 0,
                channel: old
            }
        );
        Ok(())
    }

    #[test]
    fn a_replaced_worker_saying_hello_again_changes_nothing() -> io::Result<()> {
        let (router, events) = start(2)?;
        let (old, old_end) = router.open_channel(0)?;
        hello(&old_end)?;
        assert_eq!(
            next(&events)?,
            Event::Switched {
                slot: 0,
                channel: old
            }
        );
        let (new, new_end) = router.open_channel(0)?;
        hello(&new_end)?;
        assert_eq!(
            next(&events)?,
            Event::Switched {
                slot: 0,
                channel: new
            }
        );
        // Retired by the switch: hostile or buggy, its extra hellos change nothing.
        hello(&old_end)?;
        hello(&old_end)?;
        settle(&router, &events, 1)?;
        assert_eq!(router.stats().snapshot(0).channel, new);
        // Not even once the new worker is gone: the retired one never serves the slot again.
        router.release(new)?;
        settle(&router, &events, 1)?;
        assert_eq!(router.stats().snapshot(0).channel, 0);
        Ok(())
    }

    #[test]
    fn a_router_thread_that_dies_says_so_and_closes_in_time() -> io::Result<()> {
        let (mut router, events) = start(1)?;
        router.panic_for_test()?;
        match next(&events)? {
            Event::Stopped { reason } => assert!(reason.contains("panic requested"), "{reason}"),
            other => panic!("unexpected event {other:?}"),
        }
        let started = std::time::Instant::now();
        router.close()?;
        assert!(started.elapsed() < CLOSE_WAIT);
        Ok(())
    }
}
