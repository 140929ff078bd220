//! The router in the primary: a thread of its own that accepts every connection and hands it
//! to the dispatcher, which routes it to a slot and passes it down the slot's worker channel.
//! This file is the handle JavaScript holds (commands in, events out); the thread runs
//! `event_loop`, which does the I/O; `dispatcher` decides, with `admission`, `channels` (which
//! channel serves a slot), `placement`, `drain`, `table` and `budget`; `link` is one channel's
//! flow control; [`listener`] binds; [`stats`] are the counters JavaScript reads.
//!
//! Each channel keeps the primary's copy of a connection until the worker acknowledges it, so a
//! worker that dies first costs nothing: its unacknowledged connections go back to the front of
//! the slot's queue and reach the replacement.

use std::io;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use socket2::Socket;
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::sync::mpsc::{unbounded_channel, UnboundedSender};

use crate::kernel::group::Group;
use crate::kernel::HealthReport;
use crate::wire::transport;
use config::{Config, Dispatch};
use dispatcher::Dispatcher;
use event::{Event, OnEvent};
use event_loop::Command;
use stats::Stats;

mod admission;
mod budget;
mod channels;
pub mod config;
mod dispatcher;
mod drain;
pub mod error;
pub mod event;
mod event_loop;
mod inherit;
mod link;
pub mod listener;
mod placement;
mod resolution;
pub mod stats;
mod table;

/// Identifies one worker's channel for its whole life; never reused.
pub type ChannelId = u32;

/// How long `close` waits for the router thread before it gives up on it.
const CLOSE_WAIT: Duration = Duration::from_secs(5);

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
    /// are returned here, before anything runs, as a [`error::BindError`].
    pub fn start(config: Config, on_event: OnEvent) -> io::Result<Router> {
        config.policy.check()?;
        let groups = match config.dispatch {
            Dispatch::Primary => Vec::new(),
            Dispatch::Kernel => bind_groups(&config)?,
        };
        let sockets = match config.dispatch {
            Dispatch::Primary => bind_listeners(&config)?,
            Dispatch::Kernel => fallbacks(&groups)?,
        };
        Router::run(config, groups, sockets, on_event, false)
    }

    /// Starts the thread on bound sockets: `groups`, one per listener with kernel dispatch
    /// (else none), and `sockets`, what the router itself accepts on (the listeners, or each
    /// group's fallback member), in the order of `config.listeners`. With `hold`, it accepts
    /// only once asked ([`Router::accept`]).
    fn run(
        config: Config,
        groups: Vec<Group>,
        sockets: Vec<Socket>,
        on_event: OnEvent,
        hold: bool,
    ) -> io::Result<Router> {
        let slots = config.policy.slots.max(1);
        let groups = Arc::new(groups);
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
        let (listeners, held) = if hold {
            (Vec::new(), listeners)
        } else {
            (listeners, Vec::new())
        };
        let groups_for_thread = groups.clone();
        let (ended_tx, ended) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("sticky-rs-router".into())
            .spawn(move || {
                let _ended = ended_tx;
                let kernel = config.dispatch == Dispatch::Kernel;
                let state =
                    Dispatcher::new(&config.policy, kernel, stats_for_thread, on_event.clone());
                let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    runtime.block_on(event_loop::run(
                        listeners,
                        held,
                        command_rx,
                        state,
                        &groups_for_thread,
                    ))
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
        transport::duplicate(member)
    }

    /// With kernel dispatch: connections waiting in the kernel's accept queues of `slot`'s
    /// members (all listeners), e.g. while its worker is being replaced; 0 otherwise.
    pub fn queued_in_kernel(&self, slot: usize) -> u64 {
        event_loop::kernel_queued(&self.groups, slot)
    }

    /// With kernel dispatch: per listener, what the checks of its group repaired and what is
    /// damaged now; empty otherwise.
    pub fn kernel_health(&self) -> Vec<HealthReport> {
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
        let (primary, worker) = transport::pair()?;
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

    /// An upgrade's new primary is ready on the same sockets (issue 22): stops accepting on this
    /// router's copies only. The sockets stay listening for the new primary: nothing is refused,
    /// and with kernel dispatch no filter is attached and no member shut down. Accepted
    /// connections are still delivered, then slots report `drained` as in a shutdown.
    pub fn hand_over(&self) -> io::Result<()> {
        self.send(Command::StopAccepting {
            drain: Duration::ZERO,
            hand_over: true,
        })
    }

    /// A router started on inherited sockets ([`Router::inherit`]) accepts from now on: the new
    /// primary calls it once every slot has a ready worker. Does nothing otherwise.
    pub fn accept(&self) -> io::Result<()> {
        self.send(Command::Accept)
    }

    /// Copies (close-on-exec; the caller owns them) of every listening socket, to pass to an
    /// upgrade's new primary, in the order [`Router::inherit`] takes them: `(listener, member,
    /// fd)`, with `member` the index in the listener's group with kernel dispatch (0 the
    /// fallback, slot `s` at `s + 1`), `None` with the router's own listeners. Fails once the
    /// router stopped accepting on any of them.
    pub fn listening_fds(&self) -> io::Result<Vec<(usize, Option<usize>, OwnedFd)>> {
        if !self.groups.is_empty() {
            let mut all = Vec::new();
            for (listener, group) in self.groups.iter().enumerate() {
                for (member, fd) in group.members().enumerate() {
                    all.push((listener, Some(member), transport::duplicate(fd)?));
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

    /// Kernel dispatch: pauses (or resumes) the checks of every group while another process
    /// checks the same members (an upgrade under way).
    pub fn pause_checks(&self, paused: bool) {
        for group in self.groups.iter() {
            group.pause_checks(paused);
        }
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
    #[cfg(test)]
    pub(crate) fn panic_for_test(&self) -> io::Result<()> {
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

/// Kernel dispatch: one `SO_REUSEPORT` group per listener, in order.
fn bind_groups(config: &Config) -> io::Result<Vec<Group>> {
    let slots = config.policy.slots.max(1);
    config
        .listeners
        .iter()
        .enumerate()
        .map(|(i, l)| {
            Group::bind(l.addr, slots, config.policy.hash, l.backlog)
                .map_err(|e| error::bind_error(i, e))
        })
        .collect()
}

/// Primary dispatch: one listening socket per listener, in order.
fn bind_listeners(config: &Config) -> io::Result<Vec<Socket>> {
    config
        .listeners
        .iter()
        .enumerate()
        .map(|(i, l)| listener::bind(l.addr, l.backlog).map_err(|e| error::bind_error(i, e)))
        .collect()
}

/// Kernel dispatch: what the router accepts on, a copy of each group's fallback member.
fn fallbacks(groups: &[Group]) -> io::Result<Vec<Socket>> {
    groups
        .iter()
        .map(|g| transport::duplicate(g.fallback()).map(Socket::from))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;
    use std::sync::mpsc;
    use std::sync::Mutex;

    use crate::key::resolve::RouteBy;
    use crate::wire::record::ToPrimary;
    use config::{Listen, Policy};

    const WAIT: Duration = Duration::from_secs(5);

    fn start(slots: usize) -> io::Result<(Router, mpsc::Receiver<Event>)> {
        let (tx, rx) = mpsc::channel();
        let tx = Mutex::new(tx);
        let config = Config {
            listeners: vec![Listen {
                addr: "127.0.0.1:0".parse().map_err(io::Error::other)?,
                backlog: 16,
            }],
            policy: Policy::for_tests(RouteBy::Address, slots),
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
        transport::send(worker.as_fd(), ToPrimary::Hello)
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
        assert_eq!(router.stats().snapshot(0).channel, u64::from(new));
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
        assert_eq!(router.stats().snapshot(0).channel, u64::from(new));
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
        assert_eq!(router.stats().snapshot(0).channel, u64::from(new));
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
