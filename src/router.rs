//! The router: a thread of its own that accepts every connection and hands it to the
//! [`Dispatcher`], which routes it to a slot and passes it down the slot's worker channel. This
//! file is the handle JavaScript holds (commands in, events out) and the event loop, I/O only.
//!
//! Each channel keeps the primary's copy of a connection until the worker acknowledges it, so a
//! worker that dies first costs nothing: its unacknowledged connections go back to the front of
//! the slot's queue and reach the replacement.
//!
//! Only the listener wakes the thread. Wake-ups are the dominant cost per connection (a context
//! switch each), so channels are not watched: what workers send back (hello, acks, losses, end of
//! file) is read without blocking after each burst of accepts, while the thread is awake anyway,
//! and on a short tick that runs only while something is pending.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::task::Poll;
use std::thread::JoinHandle;
use std::time::Duration;

use socket2::Socket;
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};
use tokio::time::Instant;

use crate::channel;
pub use crate::dispatcher::{Balance, Event, OnEvent, Policy};
use crate::dispatcher::{Dispatcher, REPORTS, TICK};
use crate::kernel::group::Group;
use crate::kernel::program::slot_member;
use crate::listener;
use crate::stats::Stats;
use crate::table::ChannelId;

/// Connections accepted per wake-up before delivering, so batches form under load.
const ACCEPT_BURST: usize = 256;
/// Kernel dispatch: how often every group is checked for what code holding a member changed
/// (see [`Group::check`]), and repaired.
pub const HEAL_INTERVAL: Duration = Duration::from_millis(250);
/// One address to listen on.
#[derive(Debug, Clone)]
pub struct Listen {
    /// The address.
    pub addr: SocketAddr,
    /// The `listen` backlog.
    pub backlog: i32,
}

/// Who picks each connection's worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Dispatch {
    /// The router accepts every connection, routes it and passes it to the worker (any
    /// `routeBy`).
    #[default]
    Primary,
    /// A `SO_REUSEPORT` group per listener whose program makes the kernel pick the slot's
    /// member from the client address; the slot's worker listens on it and accepts itself. The
    /// router accepts only on the fallback member: what the kernel cannot hash (link-local IPv6
    /// peers, whose text carries `%ifname`). Linux only; routing by address only.
    Kernel,
}

impl std::str::FromStr for Dispatch {
    type Err = String;

    /// `primary` or `kernel` (`lib/options.js` resolves `auto`).
    fn from_str(text: &str) -> Result<Dispatch, String> {
        match text {
            "primary" => Ok(Dispatch::Primary),
            "kernel" => Ok(Dispatch::Kernel),
            other => Err(format!("unknown dispatch {other:?}")),
        }
    }
}

/// What a router listens on and how it routes.
#[derive(Debug, Clone)]
pub struct Config {
    /// The addresses to listen on; a client lands on the same slot on each of them.
    pub listeners: Vec<Listen>,
    /// How connections are routed and bounded.
    pub policy: Policy,
    /// Who picks each connection's worker.
    pub dispatch: Dispatch,
}

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
    StopAccepting {
        /// Kernel dispatch: the longest the workers get to accept what the members had queued
        /// (a worker may be busy) before the members stop listening.
        drain: Duration,
        /// An upgrade's new primary holds the same sockets (issue 22): this router only stops
        /// accepting on its copies; the sockets keep listening, untouched.
        hand_over: bool,
    },
    /// Starts accepting on inherited listeners (see [`Router::accept`]).
    Accept,
    /// Copies (close-on-exec) of the listeners the thread accepts on, by listener index.
    Duplicate {
        reply: std::sync::mpsc::Sender<io::Result<Vec<(u8, OwnedFd)>>>,
    },
    Close,
    /// Makes the thread panic (tests of what a dead router does).
    #[cfg(any(test, feature = "test-hooks"))]
    Panic,
}

/// A listening router and its accept thread.
#[derive(Debug)]
pub struct Router {
    commands: UnboundedSender<Command>,
    thread: Option<JoinHandle<()>>,
    /// Disconnected when the thread ends, however it ends.
    ended: std::sync::mpsc::Receiver<()>,
    stats: Arc<Stats>,
    local_addrs: Vec<SocketAddr>,
    slots: usize,
    /// With kernel dispatch, one group per listener: every member stays open here for the
    /// router's life, so the kernel's numbering of the members never changes.
    groups: Arc<Vec<Group>>,
}

impl Router {
    /// Binds, listens, and starts accepting on a new thread. Bind errors (EADDRINUSE, EACCES...)
    /// are returned here, before anything runs.
    pub fn start(config: Config, on_event: OnEvent) -> io::Result<Router> {
        Self::start_inherited(config, on_event, None)
    }

    /// As [`Router::start`], or, with `inherited` (an upgrade, issue 22), on the listening
    /// sockets an old primary passed on instead of binding: see `crate::inherit` for their
    /// order and checks. This process owns those descriptors from here on.
    pub fn start_inherited(
        config: Config,
        on_event: OnEvent,
        inherited: Option<Vec<i32>>,
    ) -> io::Result<Router> {
        let slots = config.policy.slots.max(1);
        if config.policy.rules.route_by == crate::resolve::RouteBy::Sid
            && slots > crate::sid::MAX_PLACES
        {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "routeBy 'sid' names at most {} workers, {slots} slots asked",
                    crate::sid::MAX_PLACES
                ),
            ));
        }
        let groups: Arc<Vec<Group>> = Arc::new(match (config.dispatch, &inherited) {
            (Dispatch::Primary, _) => Vec::new(),
            (Dispatch::Kernel, Some(fds)) => {
                crate::inherit::groups(fds, &config.listeners, slots, config.policy.hash)?
            }
            (Dispatch::Kernel, None) => config
                .listeners
                .iter()
                .enumerate()
                .map(|(i, l)| {
                    Group::bind(l.addr, slots, config.policy.hash, l.backlog)
                        .map_err(|e| bind_error(i, e))
                })
                .collect::<io::Result<Vec<Group>>>()?,
        });
        // What the router itself accepts on: the listeners, or each group's fallback member.
        let sockets = match (config.dispatch, &inherited) {
            (Dispatch::Primary, Some(fds)) => crate::inherit::listeners(fds, &config.listeners)?,
            (Dispatch::Primary, None) => config
                .listeners
                .iter()
                .enumerate()
                .map(|(i, l)| listener::bind(l.addr, l.backlog).map_err(|e| bind_error(i, e)))
                .collect::<io::Result<Vec<Socket>>>()?,
            (Dispatch::Kernel, _) => groups
                .iter()
                .map(|g| channel::duplicate(g.fallback()).map(Socket::from))
                .collect::<io::Result<Vec<Socket>>>()?,
        };
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
        // Upgrade: the new primary accepts only once every slot has a ready worker (accept());
        // until then the old one serves everything, and a new version that never gets ready
        // has taken no connection that would be lost with it.
        let (listeners, held) = match inherited {
            Some(_) => (Vec::new(), listeners),
            None => (listeners, Vec::new()),
        };
        let groups_for_thread = groups.clone();
        let (ended_tx, ended) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("sticky-rs-router".into())
            .spawn(move || {
                let _ended = ended_tx;
                let mut state = Dispatcher::new(&config.policy, stats_for_thread, on_event.clone());
                if config.dispatch == Dispatch::Kernel {
                    state.kernel_dispatch();
                }
                let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    runtime.block_on(run(listeners, held, command_rx, state, &groups_for_thread))
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
            groups,
        })
    }

    /// Who picks each connection's worker.
    pub fn dispatch(&self) -> Dispatch {
        if self.groups.is_empty() {
            Dispatch::Primary
        } else {
            Dispatch::Kernel
        }
    }

    /// With kernel dispatch: a copy (close-on-exec) of the member of `listener`'s group that
    /// serves `slot`, for that slot's worker to listen on. The router keeps its own. The group
    /// is checked and repaired first, so that a new worker (e.g. the replacement of one that
    /// damaged it) never starts on a damaged group.
    pub fn member(&self, listener: usize, slot: usize) -> io::Result<OwnedFd> {
        if let Some(group) = self.groups.get(listener) {
            group.check();
        }
        let member = self
            .groups
            .get(listener)
            .and_then(|g| g.slot(slot))
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("no kernel-dispatch member for listener {listener}, slot {slot}"),
                )
            })?;
        channel::duplicate(member)
    }

    /// With kernel dispatch: connections waiting in the kernel's accept queues of `slot`'s
    /// members (all listeners), e.g. while its worker is being replaced; 0 otherwise.
    pub fn queued_in_kernel(&self, slot: usize) -> u64 {
        self.groups
            .iter()
            .filter_map(|g| g.queued(slot_member(slot)).ok())
            .map(u64::from)
            .sum()
    }

    /// With kernel dispatch: per listener, what the checks of its group repaired and what is
    /// damaged now; empty otherwise.
    pub fn kernel_health(&self) -> Vec<crate::kernel::group::HealthReport> {
        self.groups.iter().map(Group::health).collect()
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

    /// Creates channel `id` for a worker of `slot` and returns the worker's end, to be handed to
    /// that worker alone. The slot switches to it when the worker says hello, unless a channel
    /// with a larger id serves the slot: ids name the workers in the order they were started
    /// (never 0, each used once), so a worker's replacement wins over it whichever of the two
    /// handed its server over first.
    pub fn open_channel(&self, slot: usize, id: ChannelId) -> io::Result<OwnedFd> {
        if slot >= self.slots || id == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "slot {slot} (of 0..{}) or channel id {id} (not 0)",
                    self.slots
                ),
            ));
        }
        let (primary, worker) = channel::pair()?;
        self.send(Command::Open {
            id,
            slot,
            fd: primary,
        })?;
        Ok(worker)
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
    /// new clients are refused by the kernel, accepted ones still reach their workers). With
    /// kernel dispatch the workers get at most `drain` to accept what the members had queued.
    pub fn stop_accepting(&self, drain: Duration) -> io::Result<()> {
        self.send(Command::StopAccepting {
            drain,
            hand_over: false,
        })
    }

    // --- upgrade (issue 22) ---
    /// An upgrade's new primary is ready on the same sockets: stop accepting on this router's
    /// copies only (the sockets stay listening for the new primary; nothing is refused, and with
    /// kernel dispatch no filter is attached and no member shut down). Accepted connections
    /// are still delivered, then slots report `drained` as in a shutdown.
    pub fn hand_over(&self) -> io::Result<()> {
        self.send(Command::StopAccepting {
            drain: Duration::ZERO,
            hand_over: true,
        })
    }

    /// Copies (close-on-exec; the caller owns them) of every listening socket, to pass to a
    /// new primary: `(listener, member, fd)`, with `member` the index in the kernel's group
    /// with kernel dispatch (0 the fallback, slot `s` at `s + 1`), `None` with the router.
    pub fn listening_fds(&self) -> io::Result<Vec<(usize, Option<usize>, OwnedFd)>> {
        if !self.groups.is_empty() {
            let mut all = Vec::new();
            for (listener, group) in self.groups.iter().enumerate() {
                for (member, fd) in group.members().iter().enumerate() {
                    all.push((listener, Some(member), channel::duplicate(fd.as_fd())?));
                }
            }
            return Ok(all);
        }
        let (reply, answer) = std::sync::mpsc::channel();
        self.send(Command::Duplicate { reply })?;
        let copies = answer.recv_timeout(CLOSE_WAIT).map_err(|_| {
            io::Error::new(io::ErrorKind::TimedOut, "the router thread did not answer")
        })??;
        if copies.len() != self.local_addrs.len() {
            return Err(io::Error::other(format!(
                "{} of {} listeners still accept (stopping, or one failed)",
                copies.len(),
                self.local_addrs.len()
            )));
        }
        Ok(copies
            .into_iter()
            .map(|(listener, fd)| (usize::from(listener), None, fd))
            .collect())
    }

    /// A router started on inherited sockets accepts only from now on: the new primary calls it
    /// once every slot has a ready worker. Does nothing otherwise.
    pub fn accept(&self) -> io::Result<()> {
        self.send(Command::Accept)
    }

    /// Kernel dispatch: pauses (or resumes) the checks of every group while another process
    /// checks the same members (see [`Group::pause_checks`]).
    pub fn pause_checks(&self, paused: bool) {
        for group in self.groups.iter() {
            group.pause_checks(paused);
        }
    }
    // --- end upgrade ---

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
            debug_line!("sticky-rs: {e}");
        }
    }
}

async fn run(
    mut listeners: Vec<(u8, AsyncFd<Socket>)>,
    mut held: Vec<(u8, AsyncFd<Socket>)>,
    mut commands: UnboundedReceiver<Command>,
    mut state: Dispatcher,
    groups: &[Group],
) {
    let Some(mut resolved) = state.resolved_rx.take() else {
        return;
    };
    let mut paused_until: Option<Instant> = None;
    // Kernel dispatch, stopping: until when the workers may take what the members queued.
    let mut kernel_drain: Option<Instant> = None;
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut reports = tokio::time::interval(REPORTS);
    reports.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut heal = tokio::time::interval(HEAL_INTERVAL);
    heal.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
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
                Some(Command::StopAccepting { drain, hand_over }) => {
                    listeners.clear();
                    held.clear();
                    // Kernel dispatch: no new SYN joins the members' queues from now on; the
                    // workers accept what is queued, then the members stop listening (below).
                    // Not in a hand-over: the new primary's workers accept from them.
                    if !groups.is_empty() && !hand_over {
                        for group in groups {
                            if group.refuse_new().is_err() {
                                group.stop();
                            }
                        }
                        kernel_drain = Some(Instant::now() + drain);
                    }
                    state.stop_accepting(kernel_drain.is_some());
                }
                Some(Command::Accept) => listeners.append(&mut held),
                Some(Command::Duplicate { reply }) => {
                    let copies = listeners
                        .iter()
                        .chain(held.iter())
                        .map(|(i, l)| channel::duplicate(l.get_ref().as_fd()).map(|fd| (*i, fd)))
                        .collect();
                    let _ = reply.send(copies);
                }
                Some(Command::Close) | None => break,
                #[cfg(any(test, feature = "test-hooks"))]
                Some(Command::Panic) => panic!("panic requested by a test"),
            },
            Some(done) = resolved.recv() => {
                state.resolved(done);
                state.service();
            }
            _ = heal.tick(), if !groups.is_empty() && !listeners.is_empty() => {
                for group in groups {
                    group.check();
                }
            }
            _ = reports.tick() => {
                state.read_reports();
                state.service();
            }
            _ = tick.tick(), if state.pending() => {
                if let Some(deadline) = kernel_drain {
                    // Only slots with a ready worker can still take what their members hold: a
                    // slot without one (dead, given up) and the fallback, which the router no
                    // longer accepts on, must not hold the others' shutdown back.
                    let waiting = state.served_slots().any(|slot| {
                        groups
                            .iter()
                            .any(|g| g.queued(slot_member(slot)).is_ok_and(|n| n > 0))
                    });
                    if !waiting || Instant::now() >= deadline {
                        for group in groups {
                            group.stop();
                        }
                        kernel_drain = None;
                        state.kernel_stopped();
                    }
                }
                state.release_hung_up();
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;
    use std::sync::mpsc;
    use std::sync::Mutex;

    use crate::channel::ToPrimary;
    use crate::hash::Hash;
    use crate::resolve::{RouteBy, Rules};

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
            policy: Policy {
                rules: Rules {
                    route_by: RouteBy::Address,
                    trusted: Trusted::default(),
                    limit: 256,
                    timeout: Duration::from_secs(1),
                    node: None,
                },
                slots,
                queue_limit: 16,
                queue_timeout: None,
                hash: Hash::Djb2,
                debug: false,
                debug_connections: false,
                balance: Balance::default(),
            },
            dispatch: Dispatch::Primary,
        };
        let on_event: OnEvent = Arc::new(move |event| {
            if let Ok(tx) = tx.lock() {
                let _ = tx.send(event);
            }
        });
        Ok((Router::start(config, on_event)?, rx))
    }

    fn hello(worker: &OwnedFd) -> io::Result<()> {
        channel::send(worker.as_fd(), ToPrimary::Hello)
    }

    fn next(events: &mpsc::Receiver<Event>) -> io::Result<Event> {
        events.recv_timeout(WAIT).map_err(io::Error::other)
    }

    /// The next event says `slot` delivers to `channel` now.
    fn switched(events: &mpsc::Receiver<Event>, slot: usize, channel: ChannelId) -> io::Result<()> {
        assert_eq!(next(events)?, Event::Switched { slot, channel });
        Ok(())
    }

    /// Returns once the router has read everything written to any channel before this call:
    /// a hello on a fresh channel of `slot` is answered in a later pass than anything before it.
    fn settle(router: &Router, events: &mpsc::Receiver<Event>, slot: usize) -> io::Result<()> {
        for id in [1000, 1001] {
            let worker = router.open_channel(slot, id)?;
            hello(&worker)?;
            switched(events, slot, id)?;
            router.release(id)?;
        }
        Ok(())
    }

    #[test]
    fn a_late_hello_from_an_older_worker_does_not_take_the_slot_back() -> io::Result<()> {
        let (router, events) = start(2)?;
        let (old, new) = (1, 2);
        let old_end = router.open_channel(0, old)?;
        let new_end = router.open_channel(0, new)?;
        hello(&new_end)?;
        switched(&events, 0, new)?;
        hello(&old_end)?;
        settle(&router, &events, 1)?;
        assert_eq!(router.stats().snapshot(0).channel, new);
        // The newer worker goes: the older one, ready and not retired, serves the slot.
        router.release(new)?;
        switched(&events, 0, old)?;
        Ok(())
    }

    #[test]
    fn a_replaced_worker_saying_hello_again_changes_nothing() -> io::Result<()> {
        let (router, events) = start(2)?;
        let (old, new) = (1, 2);
        let old_end = router.open_channel(0, old)?;
        hello(&old_end)?;
        switched(&events, 0, old)?;
        let new_end = router.open_channel(0, new)?;
        hello(&new_end)?;
        switched(&events, 0, new)?;
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
    fn a_replacement_that_handed_over_first_still_wins_over_the_worker_it_replaces(
    ) -> io::Result<()> {
        // A reload at start-up: the replacement (started second, id 2) hands its server over
        // before the worker it replaces (id 1), and both hellos are read in one pass.
        let (router, events) = start(2)?;
        let (old, new) = (1, 2);
        let new_end = router.open_channel(0, new)?;
        let old_end = router.open_channel(0, old)?;
        hello(&old_end)?;
        hello(&new_end)?;
        // The old one may serve the slot for a moment (its hello read first); then the new one.
        let mut event = next(&events)?;
        if event
            == (Event::Switched {
                slot: 0,
                channel: old,
            })
        {
            event = next(&events)?;
        }
        assert_eq!(
            event,
            Event::Switched {
                slot: 0,
                channel: new
            }
        );
        settle(&router, &events, 1)?;
        assert_eq!(router.stats().snapshot(0).channel, new);
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
