//! One worker channel as the primary sees it: flow control and nothing else.
//!
//! A link sends connections in batches while its window allows, keeps the primary's copy of each
//! until the worker acknowledges it, gives back the ones the worker reports lost, and, when the
//! channel goes, gives back every unacknowledged one, oldest first, for the next worker.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::time::Duration;

use tokio::time::Instant;

use crate::wire::record::{Meta, ToPrimary, MAX_BATCH};
use crate::wire::transport::{self, PrimaryReader};

/// Connections sent to one worker and not yet acknowledged, at most.
pub(crate) const WINDOW: usize = 1024;
/// Pause before sending again to a worker that was out of descriptors.
const LOST_BACKOFF: Duration = Duration::from_millis(50);
/// Connections a worker may say it accepted itself (kernel dispatch), per second of its
/// channel's life: far above what one process can accept (tens of thousands a second here), far
/// below what a forged count claims.
const MAX_ACCEPT_RATE: u64 = 1_000_000;
/// What a worker may say it accepted itself beyond that rate: its members' accept queues full
/// at the largest backlog, once per listener.
const ACCEPT_ALLOWANCE: u64 = 1 << 20;

/// A connection the primary holds, with the time it was accepted (for `queue_timeout`) and what
/// its worker needs to know.
#[derive(Debug)]
pub(crate) struct Held {
    /// The primary's copy.
    pub conn: OwnedFd,
    /// When it was accepted.
    pub since: Instant,
    /// The listener and, for PROXY protocol, the client.
    pub meta: Meta,
    /// Already counted in `redelivered`: a connection sent again and again (its worker keeps
    /// losing it) is one redelivered connection.
    pub resent: bool,
}

impl Held {
    /// A connection the primary holds for the first time.
    pub(crate) fn new(conn: OwnedFd, since: Instant, meta: Meta) -> Held {
        Held {
            conn,
            since,
            meta,
            resent: false,
        }
    }
}

/// Removes from `waiting` the connections whose client hung up: reset (an error or hang-up is
/// pending), or closed its side before sending a byte (nothing to read but the end of the
/// stream). A client that sent a request and then half-closed still waits for its answer and
/// stays. One `poll` over all of them; the few it flags are looked at once more. Returns how many
/// were removed (their descriptors are closed).
pub(crate) fn remove_hung_up(waiting: &mut VecDeque<Held>) -> usize {
    // Linux says a peer's FIN apart from readable data; elsewhere every readable one is looked at.
    #[cfg(any(target_os = "linux", target_os = "android"))]
    const EVENTS: libc::c_short = libc::POLLRDHUP;
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    const EVENTS: libc::c_short = libc::POLLIN;
    let mut fds: Vec<libc::pollfd> = waiting
        .iter()
        .map(|held| libc::pollfd {
            fd: held.conn.as_raw_fd(),
            events: EVENTS,
            revents: 0,
        })
        .collect();
    // SAFETY: `fds` is a valid array of `fds.len()` pollfd entries for the duration of the call,
    // and every descriptor in it is open (owned by `waiting`).
    let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 0) };
    if n <= 0 {
        return 0;
    }
    let mut position = 0;
    let before = waiting.len();
    waiting.retain(|held| {
        let revents = fds[position].revents;
        position += 1;
        revents == 0 || !hung_up(held.conn.as_fd(), revents)
    });
    before - waiting.len()
}

/// Whether a connection whose `poll` said `revents` was given up by its client.
fn hung_up(conn: BorrowedFd<'_>, revents: libc::c_short) -> bool {
    if revents & (libc::POLLERR | libc::POLLHUP | libc::POLLNVAL) != 0 {
        return true;
    }
    // The end of the stream with nothing before it: the peer closed without a request.
    let mut byte = [0u8; 1];
    // SAFETY: `byte` is a valid buffer of 1 byte; MSG_PEEK leaves the stream as it is.
    let n = unsafe {
        libc::recv(
            conn.as_raw_fd(),
            byte.as_mut_ptr().cast(),
            1,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    match n {
        0 => true,
        n if n > 0 => false,
        _ => {
            let e = io::Error::last_os_error();
            !matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
            )
        }
    }
}

/// The channel's worker is gone: its socket says so.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Gone;

/// What a worker said, read off its channel.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Answers {
    /// It said hello (at least once in this read).
    pub hello: bool,
    /// Connections it adopted, in total in this read.
    pub acknowledged: usize,
    /// Connections its worker accepted itself (kernel dispatch), in total in this read.
    pub accepted_itself: u64,
    /// Whether the channel is still open.
    pub open: bool,
    /// The first record the worker cannot have sent honestly, if it came in this read (see
    /// [`Link::read`]); the link believes none of its counts from then on. Said once per link.
    pub impossible: Option<String>,
}

/// One worker channel, primary side.
#[derive(Debug)]
pub(crate) struct Link {
    fd: OwnedFd,
    reader: PrimaryReader,
    /// Sent, not yet acknowledged, oldest first.
    in_flight: VecDeque<Held>,
    /// Not before this instant may more be sent (the socket was full, or the worker lost some).
    paused_until: Option<Instant>,
    /// Adopted connections its worker has not reported closed (`Ack`s minus `Closed`s).
    open: u64,
    /// When the link was made: what its worker can have accepted itself grows with it.
    since: Instant,
    /// What its worker said it accepted itself (kernel dispatch), in all.
    accepted_itself: u64,
    /// It sent an impossible record: its counts (`K`, `D`) are not believed any more.
    distrusted: bool,
    /// Its worker accepts connections itself (kernel dispatch); else every `K` is impossible.
    accepts_itself: bool,
}

impl Link {
    /// A link over the primary's end of a channel to a worker, which accepts connections
    /// itself (`accepts_itself`, kernel dispatch) or gets every one from the router.
    pub(crate) fn new(fd: OwnedFd, accepts_itself: bool) -> Link {
        Link {
            fd,
            reader: PrimaryReader::default(),
            in_flight: VecDeque::new(),
            paused_until: None,
            open: 0,
            since: Instant::now(),
            accepted_itself: 0,
            distrusted: false,
            accepts_itself,
        }
    }

    /// Connections sent and not acknowledged yet.
    pub(crate) fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// Connections its worker holds as far as the primary knows: adopted and not reported
    /// closed, plus those on their way. As fresh as the last read of the channel.
    pub(crate) fn live(&self) -> u64 {
        self.open + self.in_flight.len() as u64
    }

    /// Whether the worker owes acknowledgements (whether it owes a hello is for
    /// [`super::channels::Channels`] to say).
    pub(crate) fn awaits_acks(&self) -> bool {
        !self.in_flight.is_empty()
    }

    /// Whether sending waits for a pause to end.
    pub(crate) fn paused(&self) -> bool {
        self.paused_until.is_some()
    }

    /// Ends a pause that is due; true if one ended (the slot has something to send again).
    pub(crate) fn resume_if_due(&mut self, now: Instant) -> bool {
        if self.paused_until.is_some_and(|t| t <= now) {
            self.paused_until = None;
            return true;
        }
        false
    }

    /// Sends from the front of `waiting`, in batches, while the window and the socket allow;
    /// what was sent moves into the window. A full socket or another error pauses sending for
    /// `retry`; the other error is returned (`Ok(Some)`) for the caller to count.
    pub(crate) fn send_from(
        &mut self,
        waiting: &mut VecDeque<Held>,
        now: Instant,
        retry: Duration,
    ) -> Result<Option<io::Error>, Gone> {
        let mut failure = None;
        while self.paused_until.is_none() && !waiting.is_empty() && self.in_flight.len() < WINDOW {
            let n = waiting
                .len()
                .min(MAX_BATCH)
                .min(WINDOW - self.in_flight.len());
            let mut batch = [0 as RawFd; MAX_BATCH];
            let mut metas = [Meta::default(); MAX_BATCH];
            for ((fd, meta), held) in batch.iter_mut().zip(metas.iter_mut()).zip(waiting.iter()) {
                *fd = held.conn.as_raw_fd();
                *meta = held.meta;
            }
            match transport::send_connections(self.fd.as_fd(), &batch[..n], &metas[..n]) {
                Ok(()) => self.in_flight.extend(waiting.drain(..n)),
                Err(e) if transport::is_peer_gone(&e) => return Err(Gone),
                // The worker has not read what it was sent: try again after the pause.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.paused_until = Some(now + retry);
                }
                // ETOOMANYREFS, ENOBUFS and the like: the same, once acknowledgements came.
                Err(e) => {
                    self.paused_until = Some(now + retry);
                    failure = Some(e);
                }
            }
        }
        Ok(failure)
    }

    /// Reads what the worker sent, without blocking, and applies acknowledgements (the
    /// primary's copies close). Lost connections come back through `lost`, oldest first, for
    /// the front of the slot's queue; sending then pauses briefly.
    ///
    /// Counts are checked against what the worker can have: acknowledged or lost at most what
    /// is in flight, closed at most what it adopted and did not close, accepted itself nothing
    /// with the router, and with kernel dispatch at most [`MAX_ACCEPT_RATE`] a second since the
    /// link was made (plus [`ACCEPT_ALLOWANCE`]). The
    /// first record that is not is reported in [`Answers::impossible`] and not applied; the
    /// worker's counts (`Closed`, `Accepted`) are ignored from then on, while its
    /// acknowledgements, bounded by what is in flight, still close the primary's copies.
    pub(crate) fn read(&mut self, now: Instant, lost: &mut Vec<Held>) -> Answers {
        let mut messages = Vec::new();
        let open = loop {
            match self.reader.recv(self.fd.as_fd()) {
                Ok(Some(records)) => messages.extend(records),
                Ok(None) => break false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if transport::is_peer_gone(&e) => break false,
                // WouldBlock, or a transient failure (ENOMEM, ENOBUFS): read again later.
                Err(_) => break true,
            }
        };
        let mut answers = Answers {
            open,
            ..Answers::default()
        };
        for message in messages {
            if !self.distrusted {
                if let Some(why) = self.impossible(message, now) {
                    self.distrusted = true;
                    answers.impossible = Some(why);
                }
            }
            match message {
                ToPrimary::Hello => answers.hello = true,
                ToPrimary::Ack(n) => {
                    let n = (n as usize).min(self.in_flight.len());
                    self.in_flight.drain(..n);
                    answers.acknowledged += n;
                    self.open += n as u64;
                }
                ToPrimary::Lost(n) => {
                    let n = (n as usize).min(self.in_flight.len());
                    lost.extend(self.in_flight.drain(..n));
                    self.paused_until = Some(now + LOST_BACKOFF);
                }
                _ if self.distrusted => {}
                ToPrimary::Closed(n) => self.open -= u64::from(n),
                ToPrimary::Accepted(n) => {
                    self.accepted_itself += u64::from(n);
                    answers.accepted_itself += u64::from(n);
                }
            }
        }
        answers
    }

    /// Why `record` cannot come from an honest worker now, if it cannot.
    fn impossible(&self, record: ToPrimary, now: Instant) -> Option<String> {
        let in_flight = self.in_flight.len() as u64;
        match record {
            ToPrimary::Hello => None,
            ToPrimary::Ack(n) if u64::from(n) > in_flight => Some(format!(
                "acknowledged {n} connection(s), {in_flight} were sent to it"
            )),
            ToPrimary::Lost(n) if u64::from(n) > in_flight => Some(format!(
                "reported {n} connection(s) lost, {in_flight} were sent to it"
            )),
            ToPrimary::Closed(n) if u64::from(n) > self.open => Some(format!(
                "reported {n} connection(s) closed, it had {} open",
                self.open
            )),
            ToPrimary::Accepted(n) if !self.accepts_itself => Some(format!(
                "reported {n} connection(s) accepted itself, but the router gives it every connection"
            )),
            ToPrimary::Accepted(n) => {
                let seconds = now.saturating_duration_since(self.since).as_secs_f64();
                let bound = (seconds * MAX_ACCEPT_RATE as f64) as u64 + ACCEPT_ALLOWANCE;
                let claimed = self.accepted_itself.saturating_add(u64::from(n));
                (claimed > bound).then(|| {
                    format!("reported {claimed} connection(s) accepted in {seconds:.1} s, more than {bound} are possible")
                })
            }
            _ => None,
        }
    }

    /// Closes the channel; returns what the worker never acknowledged, oldest first.
    pub(crate) fn into_unacknowledged(self) -> VecDeque<Held> {
        self.in_flight
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RETRY: Duration = Duration::from_millis(5);

    /// `n` distinct real descriptors standing in for connections, numbered by their listener
    /// byte so the worker side can tell them apart.
    fn held(n: usize) -> io::Result<VecDeque<Held>> {
        (0..n)
            .map(|i| {
                Ok(Held::new(
                    std::fs::File::open("/dev/null")?.into(),
                    Instant::now(),
                    Meta {
                        listener: (i % 256) as u8,
                        client: None,
                    },
                ))
            })
            .collect()
    }

    /// Reads every batch waiting on the worker end: the listener bytes received, in order.
    fn worker_receives(worker: &OwnedFd) -> io::Result<Vec<u8>> {
        let mut reader = transport::WorkerReader::default();
        let mut listeners = Vec::new();
        loop {
            match reader.recv(worker.as_fd()) {
                Ok(Some(batch)) => {
                    assert_eq!((batch.conns.len(), batch.lost), (batch.metas.len(), 0));
                    listeners.extend(batch.metas.iter().map(|m| m.listener));
                }
                Ok(None) => break,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
        Ok(listeners)
    }

    fn answer(worker: &OwnedFd, message: ToPrimary) -> io::Result<()> {
        transport::send(worker.as_fd(), message)
    }

    fn pair() -> io::Result<(Link, OwnedFd)> {
        let (primary, worker) = transport::pair()?;
        transport::set_nonblocking(worker.as_fd())?;
        Ok((Link::new(primary, true), worker))
    }

    /// A link that sent `n` connections to its worker, and the worker's end.
    fn sent(n: usize) -> io::Result<(Link, OwnedFd)> {
        let (mut link, worker) = pair()?;
        let mut waiting = held(n)?;
        link.send_from(&mut waiting, Instant::now(), RETRY)
            .map_err(|_| io::Error::other("gone"))?;
        Ok((link, worker))
    }

    #[test]
    fn sends_in_order_and_acknowledgements_close_the_copies() -> io::Result<()> {
        let (mut link, worker) = pair()?;
        let mut waiting = held(100)?;
        assert!(matches!(
            link.send_from(&mut waiting, Instant::now(), RETRY),
            Ok(None)
        ));
        assert!(waiting.is_empty());
        assert_eq!(link.in_flight(), 100);
        assert_eq!(
            worker_receives(&worker)?,
            (0..100).map(|i| i as u8).collect::<Vec<_>>()
        );
        answer(&worker, ToPrimary::Hello)?;
        answer(&worker, ToPrimary::Ack(60))?;
        answer(&worker, ToPrimary::Accepted(7))?;
        let mut lost = Vec::new();
        let answers = link.read(Instant::now(), &mut lost);
        assert_eq!(
            answers,
            Answers {
                hello: true,
                acknowledged: 60,
                accepted_itself: 7,
                open: true,
                impossible: None,
            }
        );
        assert_eq!(link.in_flight(), 40);
        Ok(())
    }

    #[test]
    fn impossible_counts_are_reported_once_and_not_believed() -> io::Result<()> {
        let (mut link, worker) = sent(5)?;
        answer(&worker, ToPrimary::Ack(3))?;
        answer(&worker, ToPrimary::Closed(2))?;
        // Honest so far: 3 adopted, 2 closed. Then a forged close of 1,000.
        answer(&worker, ToPrimary::Closed(1000))?;
        answer(&worker, ToPrimary::Accepted(4_000_000_000))?;
        let answers = link.read(Instant::now(), &mut Vec::new());
        let why = answers.impossible.unwrap_or_default();
        assert!(
            why.contains("1000 connection(s) closed, it had 1 open"),
            "{why}"
        );
        // Neither count is believed; acknowledgements still close the copies, within bounds.
        assert_eq!((answers.accepted_itself, link.live()), (0, 1 + 2));
        answer(&worker, ToPrimary::Ack(1000))?;
        answer(&worker, ToPrimary::Accepted(1))?;
        let answers = link.read(Instant::now(), &mut Vec::new());
        assert_eq!(
            (
                answers.impossible,
                answers.acknowledged,
                answers.accepted_itself
            ),
            (None, 2, 0)
        );
        Ok(())
    }

    #[test]
    fn counts_beyond_what_was_sent_or_can_be_accepted_are_impossible() -> io::Result<()> {
        for (record, expected) in [
            (
                ToPrimary::Ack(1),
                "acknowledged 1 connection(s), 0 were sent",
            ),
            (
                ToPrimary::Lost(2),
                "reported 2 connection(s) lost, 0 were sent",
            ),
            (
                ToPrimary::Closed(1),
                "reported 1 connection(s) closed, it had 0 open",
            ),
            (
                ToPrimary::Accepted(u32::MAX),
                "accepted in 0.0 s, more than",
            ),
        ] {
            let (mut link, worker) = pair()?;
            // What an honest worker with kernel dispatch reports is believed.
            answer(&worker, ToPrimary::Accepted(1000))?;
            answer(&worker, record)?;
            let answers = link.read(Instant::now(), &mut Vec::new());
            let why = answers.impossible.unwrap_or_default();
            assert!(why.contains(expected), "{why}");
            assert_eq!(answers.accepted_itself, 1000);
        }
        // With the router, a worker accepts nothing itself.
        let (primary, worker) = transport::pair()?;
        let mut link = Link::new(primary, false);
        answer(&worker, ToPrimary::Accepted(1))?;
        let why = link.read(Instant::now(), &mut Vec::new()).impossible;
        assert!(why
            .unwrap_or_default()
            .contains("the router gives it every connection"));
        Ok(())
    }

    #[test]
    fn the_window_bounds_what_is_in_flight() -> io::Result<()> {
        let (mut link, worker) = pair()?;
        let mut waiting = held(WINDOW + 76)?;
        // The worker reads as it goes, so the socket never fills: only the window stops it.
        let mut received = 0;
        loop {
            assert!(matches!(
                link.send_from(&mut waiting, Instant::now(), RETRY),
                Ok(None)
            ));
            received += worker_receives(&worker)?.len();
            if !link.paused() {
                break;
            }
            link.paused_until = None;
        }
        assert_eq!(link.in_flight(), WINDOW);
        assert_eq!(received, WINDOW);
        assert_eq!(waiting.len(), 76);
        answer(&worker, ToPrimary::Ack(100))?;
        link.read(Instant::now(), &mut Vec::new());
        assert!(matches!(
            link.send_from(&mut waiting, Instant::now(), RETRY),
            Ok(None)
        ));
        assert_eq!(waiting.len(), 0);
        assert_eq!(link.in_flight(), WINDOW - 100 + 76);
        Ok(())
    }

    #[test]
    fn lost_connections_come_back_in_order_and_sending_pauses() -> io::Result<()> {
        let (mut link, worker) = sent(10)?;
        // Adopted 4, the kernel dropped the next 3 (MSG_CTRUNC on the worker's side).
        answer(&worker, ToPrimary::Ack(4))?;
        answer(&worker, ToPrimary::Lost(3))?;
        let mut lost = Vec::new();
        let now = Instant::now();
        link.read(now, &mut lost);
        assert_eq!(
            lost.iter().map(|h| h.meta.listener).collect::<Vec<_>>(),
            [4, 5, 6]
        );
        assert_eq!(link.in_flight(), 3);
        assert!(link.paused());
        assert!(!link.resume_if_due(now));
        assert!(link.resume_if_due(now + LOST_BACKOFF));
        Ok(())
    }

    #[test]
    fn a_closed_channel_gives_back_exactly_what_was_not_acknowledged() -> io::Result<()> {
        let (mut link, worker) = sent(20)?;
        answer(&worker, ToPrimary::Ack(5))?;
        drop(worker);
        let answers = link.read(Instant::now(), &mut Vec::new());
        assert_eq!(answers.acknowledged, 5);
        assert!(!answers.open);
        let back = link.into_unacknowledged();
        assert_eq!(
            back.iter().map(|h| h.meta.listener).collect::<Vec<_>>(),
            (5..20).map(|i| i as u8).collect::<Vec<_>>()
        );
        Ok(())
    }

    #[test]
    fn released_before_any_ack_everything_comes_back() -> io::Result<()> {
        let (link, worker) = sent(7)?;
        drop(worker);
        assert_eq!(link.into_unacknowledged().len(), 7);
        Ok(())
    }

    #[test]
    fn sending_to_a_gone_worker_says_so_and_keeps_the_connections() -> io::Result<()> {
        let (mut link, worker) = pair()?;
        drop(worker);
        let mut waiting = held(3)?;
        assert!(matches!(
            link.send_from(&mut waiting, Instant::now(), RETRY),
            Err(Gone)
        ));
        assert_eq!(waiting.len(), 3);
        Ok(())
    }
}
