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

use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::Poll;
use std::thread::JoinHandle;
use std::time::Duration;

use socket2::Socket;
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};
use tokio::time::Instant;

use crate::address::AddressText;
use crate::channel::{self, Message, Meta, Reader, MAX_BATCH};
use crate::hash::Hash;
use crate::listener;
use crate::resolve::{self, Outcome, Rules};
use crate::stats::Stats;
use crate::table::{ChannelId, Table};

/// Connections sent to one worker and not yet acknowledged, at most.
const WINDOW: usize = 1024;
/// Connections accepted per wake-up before delivering, so batches form under load.
const ACCEPT_BURST: usize = 256;
/// Pause after the process ran out of descriptors, leaving clients in the kernel's backlog.
const EMFILE_BACKOFF: Duration = Duration::from_millis(100);
/// Pause before sending again to a worker that was out of descriptors.
const LOST_BACKOFF: Duration = Duration::from_millis(50);
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
}

/// A listening router and its accept thread.
pub struct Router {
    commands: UnboundedSender<Command>,
    thread: Option<JoinHandle<()>>,
    stats: Arc<Stats>,
    local_addrs: Vec<SocketAddr>,
    slots: usize,
    next_id: AtomicU64,
}

impl Router {
    /// Binds, listens, and starts accepting on a new thread. Bind errors (EADDRINUSE, EACCES...)
    /// are returned here, before anything runs.
    pub fn start(config: Config) -> io::Result<Router> {
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
        let state = State::new(&config, stats.clone());
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
        let thread = std::thread::Builder::new()
            .name("sticky-rs-router".into())
            .spawn(move || runtime.block_on(run(listeners, command_rx, state)))?;
        Ok(Router {
            commands,
            thread: Some(thread),
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
    /// waits for the thread. Idempotent.
    pub fn close(&mut self) {
        let _ = self.commands.send(Command::Close);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Router {
    fn drop(&mut self) {
        self.close();
    }
}

/// A connection the router holds, with the time it was accepted (for `queue_timeout`) and what
/// its worker needs to know.
struct Held {
    conn: OwnedFd,
    since: Instant,
    meta: Meta,
}

/// A connection from a trusted proxy, back from resolution.
struct Resolved {
    conn: OwnedFd,
    peer: SocketAddr,
    listener: u8,
    since: Instant,
    outcome: Outcome,
}

struct Channel {
    fd: OwnedFd,
    slot: usize,
    reader: Reader,
    /// Sent, not yet acknowledged, oldest first.
    in_flight: VecDeque<Held>,
    /// Not before this instant may more be sent (the socket was full, or the worker lost some).
    paused_until: Option<Instant>,
    /// The worker said hello.
    ready: bool,
    /// Its worker is finishing: a hello must not make it the slot's target again.
    retired: bool,
}

struct State {
    table: Table<Held>,
    channels: HashMap<ChannelId, Channel>,
    rules: Arc<Rules>,
    /// Connections being resolved now, and where their results come back.
    resolving: usize,
    resolved: UnboundedSender<Resolved>,
    resolved_rx: Option<UnboundedReceiver<Resolved>>,
    stats: Arc<Stats>,
    touched: Vec<bool>,
    held_limit: usize,
    queue_timeout: Option<Duration>,
    debug: bool,
    debug_connections: bool,
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
                    // Always said (the JavaScript side warns from the counter, with a timestamp).
                    Stats::add(&state.stats.failed_listeners, 1);
                    eprintln!("[sticky-rs] warning: listener {listener} failed, no longer accepting on it: {e}");
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
    fn new(config: &Config, stats: Arc<Stats>) -> State {
        let slots = config.slots.max(1);
        let (resolved, resolved_rx) = unbounded_channel();
        State {
            table: Table::new(slots, config.queue_limit, config.hash),
            channels: HashMap::new(),
            rules: Arc::new(config.rules.clone()),
            resolving: 0,
            resolved,
            resolved_rx: Some(resolved_rx),
            stats,
            touched: vec![false; slots],
            held_limit: held_limit(),
            queue_timeout: config.queue_timeout,
            debug: config.debug,
            debug_connections: config.debug_connections,
        }
    }

    /// Whether the tick has work: a channel owes an answer, waits to send, or connections wait.
    fn pending(&self) -> bool {
        self.channels
            .values()
            .any(|c| !c.ready || !c.in_flight.is_empty() || c.paused_until.is_some())
            || (0..self.table.len()).any(|i| !self.table.slot(i).waiting.is_empty())
    }

    /// Reads every channel that owes an answer, then delivers to every slot that can take more.
    fn service(&mut self) {
        let owing: Vec<ChannelId> = self
            .channels
            .iter()
            .filter(|(_, c)| !c.ready || !c.in_flight.is_empty())
            .map(|(&id, _)| id)
            .collect();
        for id in owing {
            self.read_channel(id);
        }
        let now = Instant::now();
        for ch in self.channels.values_mut() {
            if ch.paused_until.is_some_and(|t| t <= now) {
                ch.paused_until = None;
                self.touched[ch.slot] = true;
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
        let in_flight: usize = self.channels.values().map(|c| c.in_flight.len()).sum();
        self.held_limit
            .saturating_sub(waiting + in_flight + self.resolving)
    }

    /// Routes a new connection by its peer address, or hands it to resolution if it comes from
    /// a trusted proxy whose header or PROXY data decides.
    fn route(&mut self, conn: OwnedFd, peer: Option<SocketAddr>, listener: u8) {
        let since = Instant::now();
        if let Some(peer) = peer.filter(|p| self.rules.applies_to(p)) {
            self.resolving += 1;
            Stats::set(&self.stats.resolving, self.resolving as u64);
            let (rules, done) = (self.rules.clone(), self.resolved.clone());
            tokio::spawn(async move {
                let (conn, outcome) = resolve::resolve(conn, rules).await;
                let _ = done.send(Resolved {
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

    /// Sends what the slot has waiting to its channel, in batches, while the window allows;
    /// then closes whatever still waits beyond the slot's limit.
    fn deliver(&mut self, slot: usize) {
        let mut broken = None;
        if let Some(id) = self.table.slot(slot).channel {
            if let Some(ch) = self.channels.get_mut(&id) {
                let waiting = &mut self.table.slot_mut(slot).waiting;
                while ch.paused_until.is_none()
                    && !waiting.is_empty()
                    && ch.in_flight.len() < WINDOW
                {
                    let n = waiting
                        .len()
                        .min(MAX_BATCH)
                        .min(WINDOW - ch.in_flight.len());
                    let mut batch = [0 as RawFd; MAX_BATCH];
                    let mut metas = [Meta::default(); MAX_BATCH];
                    for ((fd, meta), held) in
                        batch.iter_mut().zip(metas.iter_mut()).zip(waiting.iter())
                    {
                        *fd = held.conn.as_raw_fd();
                        *meta = held.meta;
                    }
                    match channel::send_connections(ch.fd.as_fd(), &batch[..n], &metas[..n]) {
                        Ok(()) => ch.in_flight.extend(waiting.drain(..n)),
                        // The worker has not read what it was sent: try again on a later tick.
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                            ch.paused_until = Some(Instant::now() + TICK);
                        }
                        Err(e) if is_peer_gone(&e) => {
                            broken = Some(id);
                            break;
                        }
                        // ETOOMANYREFS and the like: wait for acknowledgements.
                        Err(_) => {
                            ch.paused_until = Some(Instant::now() + TICK);
                        }
                    }
                }
            }
        }
        if let Some(id) = broken {
            self.close_channel(id);
            return;
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
            .filter(|c| c.slot == slot)
            .map(|c| c.in_flight.len())
            .sum();
        Stats::set(&counters.in_flight, in_flight as u64);
        Stats::set(&counters.queued, self.table.slot(slot).waiting.len() as u64);
        Stats::set(
            &counters.channel,
            self.table.slot(slot).channel.unwrap_or(0),
        );
    }

    fn open(&mut self, id: ChannelId, slot: usize, fd: OwnedFd) {
        self.channels.insert(
            id,
            Channel {
                fd,
                slot,
                reader: Reader::default(),
                in_flight: VecDeque::new(),
                paused_until: None,
                ready: false,
                retired: false,
            },
        );
    }

    /// Reads what a worker sent back, without blocking, and acts on it.
    fn read_channel(&mut self, id: ChannelId) {
        let (mut messages, mut stray, mut stray_metas) = (Vec::new(), Vec::new(), Vec::new());
        let open = loop {
            let Some(ch) = self.channels.get_mut(&id) else {
                return;
            };
            match ch
                .reader
                .recv(ch.fd.as_fd(), &mut messages, &mut stray, &mut stray_metas)
            {
                Ok(true) => {}
                Ok(false) => break false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if is_peer_gone(&e) => break false,
                // WouldBlock, or a transient failure (ENOMEM, ENOBUFS): read again on the next tick.
                Err(_) => break true,
            }
        };
        // A worker never sends connections; close any it did.
        drop(stray);
        for message in messages {
            match message {
                Message::Hello => self.hello(id),
                Message::Ack(n) => self.acknowledged(id, n),
                Message::Lost(n) => self.lost(id, n),
                Message::Connections(_) => {}
            }
        }
        if !open {
            self.close_channel(id);
        }
    }

    fn hello(&mut self, id: ChannelId) {
        if let Some(ch) = self.channels.get_mut(&id) {
            ch.ready = true;
            if ch.retired {
                return;
            }
            let slot = ch.slot;
            self.table.activate(slot, id);
            self.touched[slot] = true;
            self.update_gauges(slot);
            if self.debug {
                eprintln!("[sticky-rs] primary: slot {slot} ready (channel {id})");
            }
        }
    }

    fn acknowledged(&mut self, id: ChannelId, n: u32) {
        if let Some(ch) = self.channels.get_mut(&id) {
            let n = (n as usize).min(ch.in_flight.len());
            ch.in_flight.drain(..n);
            Stats::add(&self.stats.slots[ch.slot].delivered, n as u64);
            self.touched[ch.slot] = true;
        }
    }

    fn lost(&mut self, id: ChannelId, n: u32) {
        if let Some(ch) = self.channels.get_mut(&id) {
            let n = (n as usize).min(ch.in_flight.len());
            let slot = ch.slot;
            let lost: Vec<Held> = ch.in_flight.drain(..n).collect();
            ch.paused_until = Some(Instant::now() + LOST_BACKOFF);
            Stats::add(&self.stats.slots[slot].redelivered, n as u64);
            self.table.requeue_front(slot, lost);
            if self.debug {
                eprintln!("[sticky-rs] primary: slot {slot}: worker lost {n} connection(s) (out of descriptors), sending again");
            }
        }
    }

    fn retire(&mut self, id: ChannelId) {
        if let Some(ch) = self.channels.get_mut(&id) {
            ch.retired = true;
            let slot = ch.slot;
            self.table.deactivate(slot, id);
            self.update_gauges(slot);
            if self.debug {
                eprintln!("[sticky-rs] primary: slot {slot}: channel {id} retired");
            }
        }
    }

    /// Drops a channel; what it had not acknowledged goes back to its slot for the next worker.
    fn close_channel(&mut self, id: ChannelId) {
        let Some(ch) = self.channels.remove(&id) else {
            return;
        };
        self.table.deactivate(ch.slot, id);
        let returned = ch.in_flight.len() as u64;
        Stats::add(&self.stats.slots[ch.slot].redelivered, returned);
        self.table.requeue_front(ch.slot, ch.in_flight);
        if self.debug {
            eprintln!(
                "[sticky-rs] primary: slot {} channel {id} closed, {returned} connection(s) re-queued",
                ch.slot
            );
        }
        self.deliver(ch.slot);
    }

    fn shutdown(&mut self) {
        self.channels.clear();
        drop(self.table.drain_all());
    }
}

fn is_peer_gone(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EPIPE)
            | Some(libc::ECONNRESET)
            | Some(libc::ECONNREFUSED)
            | Some(libc::ENOTCONN)
    )
}
