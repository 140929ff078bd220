//! The router's event loop, I/O only: it accepts, reads the commands of the handle, waits on
//! resolutions and timers, and tells the [`Dispatcher`] what happened; every decision about a
//! connection is the dispatcher's.
//!
//! What wakes the thread: a listener, a command, a resolution, and three timers. Wake-ups are
//! the dominant cost per connection (a context switch each), so channels are not watched: what
//! workers send back (hello, acks, losses, end of file) is read without blocking after each
//! burst of accepts, while the thread is awake anyway; on a short tick ([`TICK`]) that runs only
//! while something is pending; and every [`REPORTS`] for what workers report unasked. With
//! kernel dispatch the groups are checked every [`HEAL_INTERVAL`].

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::task::Poll;
use std::time::Duration;

use socket2::Socket;
use tokio::io::unix::AsyncFd;
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::time::Instant;

use super::dispatcher::{Dispatcher, REPORTS, TICK};
use super::ChannelId;
use crate::kernel::group::Group;
use crate::kernel::program::slot_member;
use crate::wire::transport;

/// Connections accepted per wake-up before delivering, so batches form under load.
const ACCEPT_BURST: usize = 256;
/// Kernel dispatch: how often every group is checked for what code holding a member changed
/// (see [`Group::check`]), and repaired.
const HEAL_INTERVAL: Duration = Duration::from_millis(250);

/// What the handle asks of the thread.
pub(super) enum Command {
    /// A new channel (its primary end) for a worker of `slot`.
    Open {
        id: ChannelId,
        slot: usize,
        fd: OwnedFd,
    },
    /// The channel's worker is gone.
    Release { id: ChannelId },
    /// The channel's worker is finishing.
    Retire { id: ChannelId },
    /// Graceful shutdown: no new connection.
    StopAccepting {
        /// Kernel dispatch: the longest the workers get to accept what the members had queued
        /// (a worker may be busy) before the members stop listening.
        drain: Duration,
        /// An upgrade's new primary holds the same sockets (issue 22): only this router's
        /// copies close; the sockets keep listening, untouched.
        hand_over: bool,
    },
    /// Starts accepting on the listeners held since the start (inherited sockets).
    Accept,
    /// Copies (close-on-exec) of the listeners the thread accepts on or holds, by index.
    Duplicate {
        reply: std::sync::mpsc::Sender<io::Result<Vec<(u8, OwnedFd)>>>,
    },
    /// Stop the thread.
    Close,
    /// Makes the thread panic (tests of what a dead router does).
    #[cfg(test)]
    Panic,
}

/// With kernel dispatch: connections waiting in the kernel's accept queues of `slot`'s
/// members (all listeners); 0 otherwise.
pub(super) fn kernel_queued(groups: &[Group], slot: usize) -> u64 {
    groups
        .iter()
        .filter_map(|g| g.queued(slot_member(slot)).ok())
        .map(u64::from)
        .sum()
}

/// A listener the thread accepts on: its index in the configuration, and the socket.
pub(super) type Listener = (u8, AsyncFd<Socket>);

/// Runs until [`Command::Close`] (or the handle is gone), then closes everything held.
/// `listeners` are accepted on from the start, `held` only after [`Command::Accept`] (an
/// upgrade's new primary, whose old one serves meanwhile).
pub(super) async fn run(
    mut listeners: Vec<Listener>,
    mut held: Vec<Listener>,
    mut commands: UnboundedReceiver<Command>,
    mut state: Dispatcher,
    groups: &[Group],
) {
    let mut paused_until: Option<Instant> = None;
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
                Some(Command::Close) | None => break,
                Some(command) => obey(command, &mut state, &mut listeners, &mut held, groups),
            },
            done = state.next_resolved() => {
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
                let queued = |slot| kernel_queued(groups, slot) > 0;
                if state.kernel_drain_done(Instant::now(), queued) {
                    for group in groups {
                        group.stop();
                    }
                }
                state.release_hung_up();
                state.service();
                state.expire();
            }
            (position, ready) = first_ready(&listeners, first), if accepting => match ready {
                Ok(guard) => {
                    // The next wake-up looks at the following listener first: none starves.
                    first = position + 1;
                    if let Some(pause) = accept_burst(guard, listeners[position].0, &mut state) {
                        paused_until = Some(Instant::now() + pause);
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

/// Does what the handle asked (all but `Close`, which ends the loop).
fn obey(
    command: Command,
    state: &mut Dispatcher,
    listeners: &mut Vec<Listener>,
    held: &mut Vec<Listener>,
    groups: &[Group],
) {
    match command {
        Command::Open { id, slot, fd } => state.open(id, slot, fd),
        Command::Release { id } => {
            // Acknowledgements still in the channel say what the worker had adopted.
            state.read_channel(id);
            state.close_channel(id);
        }
        Command::Retire { id } => state.retire(id),
        Command::StopAccepting { drain, hand_over } => {
            listeners.clear();
            held.clear();
            // Kernel dispatch: no new SYN joins the members' queues from now on; the workers
            // accept what is queued, then the members stop listening (on the tick). Not in a
            // hand-over: the new primary's workers accept from the same members.
            let mut kernel_until = None;
            if !groups.is_empty() && !hand_over {
                for group in groups {
                    if group.refuse_new().is_err() {
                        group.stop();
                    }
                }
                kernel_until = Some(Instant::now() + drain);
            }
            state.stop_accepting(kernel_until);
        }
        Command::Accept => listeners.append(held),
        Command::Duplicate { reply } => {
            let copies = listeners
                .iter()
                .chain(held.iter())
                .map(|(i, l)| transport::duplicate(l.get_ref().as_fd()).map(|fd| (*i, fd)))
                .collect();
            // The handle stopped waiting: the copies close here.
            let _ = reply.send(copies);
        }
        Command::Close => {}
        #[cfg(test)]
        Command::Panic => panic!("panic requested by a test"),
    }
}

/// Accepts on a ready listener until it would block, at most [`ACCEPT_BURST`] and the room
/// the dispatcher has; each connection goes to the dispatcher. Returns the pause the
/// dispatcher asked for after a failed accept, if any.
fn accept_burst(
    mut guard: tokio::io::unix::AsyncFdReadyGuard<'_, Socket>,
    listener: u8,
    state: &mut Dispatcher,
) -> Option<Duration> {
    // Each accept holds at most one more connection: the room, counted once, bounds the burst.
    for _ in 0..ACCEPT_BURST.min(state.room()) {
        match guard.try_io(|l| l.get_ref().accept()) {
            Ok(Ok((conn, peer))) => state.route(conn.into(), peer.as_socket(), listener),
            Ok(Err(e)) => {
                if let Some(pause) = state.accept_failed(&e) {
                    return Some(pause);
                }
            }
            Err(_would_block) => break,
        }
    }
    None
}

/// The first listener ready to accept, looking from position `first` on; with its position.
async fn first_ready(
    listeners: &[Listener],
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
