//! The fd channel between the primary and one worker: an anonymous `SOCK_STREAM` socketpair
//! (stream, not seqpacket: Node can only pass stream sockets to the worker), carrying fixed-size
//! records.
//!
//! Records are typed per direction: the primary sends only batches of connections
//! ([`send_connections`], read by a [`WorkerReader`]); the worker sends only [`ToPrimary`] records
//! (read by a [`PrimaryReader`]). Connections travel as `SCM_RIGHTS` batches. The worker answers
//! on the same socket: `Hello`
//! once it owns its end (the primary delivers nothing before, since Node's own reader would
//! swallow the descriptors), then `Ack(n)` once it has adopted `n` connections, and `Lost(n)`
//! when the kernel could not give it `n` of them (the worker was out of descriptors). Being a
//! socketpair, the channel has no name another process could connect to.

use std::collections::VecDeque;
use std::io;
use std::io::IoSlice;

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use nix::sys::socket::{self, ControlMessage, MsgFlags, SockFlag, SockType};

use super::record::{
    connections_count, connections_record, Meta, ToPrimary, MAX_BATCH, META, RECORD,
};

/// Longest a sender waits for room for the rest of a record whose first bytes went out (a short
/// write: possible on any stream socket, the norm on macOS when the buffer is nearly full). The
/// record must be finished before anything else is written, or the stream would desynchronise;
/// a peer that reads nothing for this long is treated as gone ([`is_peer_gone`]).
pub(crate) const SHORT_WRITE_WAIT: Duration = Duration::from_millis(200);

/// Creates a channel: `(primary end, worker end)`, both close-on-exec, the primary's end
/// non-blocking.
pub(crate) fn pair() -> io::Result<(OwnedFd, OwnedFd)> {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    let flags = SockFlag::SOCK_CLOEXEC;
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    let flags = SockFlag::empty();
    let (primary, worker) =
        socket::socketpair(socket::AddressFamily::Unix, SockType::Stream, None, flags)?;
    for fd in [&primary, &worker] {
        set_cloexec(fd.as_fd())?;
        // No MSG_NOSIGNAL there: a write to a closed channel must fail with EPIPE, not raise SIGPIPE.
        #[cfg(target_vendor = "apple")]
        socket2::SockRef::from(fd).set_nosigpipe(true)?;
    }
    set_nonblocking(primary.as_fd())?;
    Ok((primary, worker))
}

fn set_cloexec(fd: BorrowedFd<'_>) -> io::Result<()> {
    use nix::fcntl::{fcntl, FcntlArg, FdFlag};
    fcntl(fd, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC))?;
    Ok(())
}

/// Puts a descriptor in non-blocking mode.
pub(crate) fn set_nonblocking(fd: BorrowedFd<'_>) -> io::Result<()> {
    use nix::fcntl::{fcntl, FcntlArg, OFlag};
    let flags = OFlag::from_bits_truncate(fcntl(fd, FcntlArg::F_GETFL)?);
    fcntl(fd, FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK))?;
    Ok(())
}

/// Duplicates a descriptor owned by someone else (close-on-exec), so it can outlive the original.
pub(crate) fn duplicate(fd: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    use nix::fcntl::{fcntl, FcntlArg};
    let dup = fcntl(fd, FcntlArg::F_DUPFD_CLOEXEC(0))?;
    // SAFETY: F_DUPFD_CLOEXEC returned a fresh descriptor that nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(dup) })
}

fn send_flags() -> MsgFlags {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    return MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL;
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    return MsgFlags::MSG_DONTWAIT;
}

/// Sends up to [`MAX_BATCH`] connections and their [`Meta`] in one message without blocking. The
/// caller keeps its copies: the kernel holds its own reference while the message is in flight.
/// `WouldBlock`: nothing was sent. A short write (the descriptors and the first bytes went) is
/// finished here, waiting at most [`SHORT_WRITE_WAIT`] for room.
pub(crate) fn send_connections(
    channel: BorrowedFd<'_>,
    fds: &[RawFd],
    metas: &[Meta],
) -> io::Result<()> {
    send_batch(channel, fds, metas, usize::MAX)
}

/// [`send_connections`], writing at most `limit` bytes per call (tests force short writes).
fn send_batch(
    channel: BorrowedFd<'_>,
    fds: &[RawFd],
    metas: &[Meta],
    limit: usize,
) -> io::Result<()> {
    let n = fds.len().min(metas.len()).min(MAX_BATCH);
    let mut data = [0u8; RECORD + MAX_BATCH * META];
    data[..RECORD].copy_from_slice(&connections_record(n as u8));
    for (i, meta) in metas[..n].iter().enumerate() {
        data[RECORD + i * META..RECORD + (i + 1) * META].copy_from_slice(&meta.encode());
    }
    let cmsg = [ControlMessage::ScmRights(&fds[..n])];
    send_whole(
        channel,
        &data[..RECORD + n * META],
        |bytes| {
            let iov = [IoSlice::new(&bytes[..bytes.len().min(limit)])];
            Ok(socket::sendmsg::<()>(
                channel.as_raw_fd(),
                &iov,
                &cmsg,
                send_flags(),
                None,
            )?)
        },
        |rest| send_some(channel, &rest[..rest.len().min(limit)]),
    )
}

/// Sends a worker's record without blocking; a full channel is `WouldBlock` (nothing sent). A
/// short write is finished as in [`send_connections`].
pub(crate) fn send(channel: BorrowedFd<'_>, message: ToPrimary) -> io::Result<()> {
    let record = message.encode();
    send_whole(
        channel,
        &record,
        |bytes| send_some(channel, bytes),
        |rest| send_some(channel, rest),
    )
}

fn send_some(channel: BorrowedFd<'_>, bytes: &[u8]) -> io::Result<usize> {
    Ok(socket::send(channel.as_raw_fd(), bytes, send_flags())?)
}

/// Writes `data` with `first` (which may carry descriptors; its `WouldBlock` means nothing went),
/// then whatever a short write left with `rest`, waiting for room until [`SHORT_WRITE_WAIT`] has
/// passed. Past that, or if the peer is gone meanwhile, the channel is unusable: `BrokenPipe`.
fn send_whole(
    channel: BorrowedFd<'_>,
    data: &[u8],
    first: impl FnOnce(&[u8]) -> io::Result<usize>,
    mut rest: impl FnMut(&[u8]) -> io::Result<usize>,
) -> io::Result<()> {
    let mut sent = first(data)?;
    let deadline = Instant::now() + SHORT_WRITE_WAIT;
    while sent < data.len() {
        match rest(&data[sent..]) {
            Ok(0) => return Err(desynchronised(sent, data.len())),
            Ok(n) => sent += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if !wait_writable(channel, deadline)? {
                    return Err(desynchronised(sent, data.len()));
                }
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn desynchronised(sent: usize, len: usize) -> io::Error {
    io::Error::new(
        io::ErrorKind::BrokenPipe,
        format!("the channel took {sent} of a {len}-byte record and no more within {SHORT_WRITE_WAIT:?}: closed, as the rest could never follow"),
    )
}

/// Waits until `channel` may have room (`true`: try again) or `deadline` has passed (`false`).
fn wait_writable(channel: BorrowedFd<'_>, deadline: Instant) -> io::Result<bool> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Ok(false);
    }
    let mut poll = libc::pollfd {
        fd: channel.as_raw_fd(),
        events: libc::POLLOUT,
        revents: 0,
    };
    let ms = libc::c_int::try_from(left.as_millis().max(1)).unwrap_or(libc::c_int::MAX);
    // SAFETY: one valid pollfd for the duration of the call.
    let n = unsafe { libc::poll(&mut poll, 1, ms) };
    if n < 0 {
        let e = io::Error::last_os_error();
        return if e.kind() == io::ErrorKind::Interrupted {
            Ok(true)
        } else {
            Err(e)
        };
    }
    Ok(n > 0)
}

/// Whether an error means the other end of a socket is gone.
pub(crate) fn is_peer_gone(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::BrokenPipe
        || matches!(
            e.raw_os_error(),
            Some(libc::EPIPE)
                | Some(libc::ECONNRESET)
                | Some(libc::ECONNREFUSED)
                | Some(libc::ENOTCONN)
        )
}

/// `recvmsg` without blocking, appending the descriptors it carried to `fds`.
///
/// Not nix's `recvmsg`: when this process is out of descriptors the kernel installs only some of
/// them and sets `MSG_CTRUNC`, and nix then refuses to read the control data at all, which would
/// leak the ones installed. The header the kernel writes stays well-formed, its length covering
/// exactly the descriptors installed, so it is read here as is.
fn recv_with_fds(
    channel: BorrowedFd<'_>,
    buf: &mut [u8],
    fds: &mut Vec<OwnedFd>,
) -> io::Result<usize> {
    const FD_SIZE: usize = std::mem::size_of::<RawFd>();
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    let before = fds.len();
    // u64 elements keep the control buffer aligned for cmsghdr.
    let mut control = [0u64; 2 + MAX_BATCH * FD_SIZE / 8];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: msghdr is a plain C struct for which all zeroes is a valid value.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&control) as _;
    #[cfg(any(target_os = "linux", target_os = "android"))]
    let flags = libc::MSG_DONTWAIT | libc::MSG_CMSG_CLOEXEC;
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    let flags = libc::MSG_DONTWAIT;
    // SAFETY: `msg` points at `iov` and `control`, both alive and large enough for the call.
    let received = unsafe { libc::recvmsg(channel.as_raw_fd(), &mut msg, flags) };
    if received < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel filled `control` with well-formed headers (see above); each SCM_RIGHTS
    // payload holds descriptors newly installed in this process, owned by nobody else.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(cmsg);
                let len = (*cmsg).cmsg_len as usize - (data as usize - cmsg as usize);
                for i in 0..len / FD_SIZE {
                    let fd = std::ptr::read_unaligned(data.cast::<RawFd>().add(i));
                    fds.push(OwnedFd::from_raw_fd(fd));
                }
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    // No MSG_CMSG_CLOEXEC there: mark them right away (a fork in between could still inherit them,
    // which the primary's and worker's threads make rare; nothing exec's with them on purpose).
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    for fd in &fds[before..] {
        set_cloexec(fd.as_fd())?;
    }
    Ok(received as usize)
}

/// Reads the primary's end: the worker's records, keeping a partial record between reads.
#[derive(Debug, Default)]
pub(crate) struct PrimaryReader {
    pending: Vec<u8>,
}

impl PrimaryReader {
    /// Receives what is there without blocking. `Ok(None)`: the worker closed its end;
    /// `WouldBlock`: nothing is there yet. Unknown records are skipped, and descriptors (a
    /// worker never sends any) closed.
    pub(crate) fn recv(&mut self, channel: BorrowedFd<'_>) -> io::Result<Option<Vec<ToPrimary>>> {
        let mut buf = [0u8; 4096];
        let mut stray = Vec::new();
        let received = recv_with_fds(channel, &mut buf, &mut stray)?;
        drop(stray);
        if received == 0 {
            return Ok(None);
        }
        self.pending.extend_from_slice(&buf[..received]);
        let whole = self.pending.len() / RECORD * RECORD;
        let records = self.pending[..whole]
            .chunks_exact(RECORD)
            .filter_map(|chunk| {
                let mut record = [0u8; RECORD];
                record.copy_from_slice(chunk);
                ToPrimary::decode(&record)
            })
            .collect();
        self.pending.drain(..whole);
        Ok(Some(records))
    }
}

/// Connections as the worker receives them.
#[derive(Debug, Default)]
pub struct Batch {
    /// The connections that arrived, in order.
    pub conns: Vec<OwnedFd>,
    /// What the primary said of each of them (one per connection).
    pub metas: Vec<Meta>,
    /// Connections that should have followed but that the kernel dropped (this process was out
    /// of descriptors): the primary still has them and sends them again once told.
    pub lost: u32,
}

/// Reads the worker's end: batches of connections, keeping a partial record, and the descriptors
/// that came with its first bytes, between reads (a short write splits a record).
#[derive(Debug, Default)]
pub(crate) struct WorkerReader {
    pending: Vec<u8>,
    fds: VecDeque<OwnedFd>,
}

impl WorkerReader {
    /// Receives what is there without blocking (one `recvmsg`). `Ok(None)`: the primary closed
    /// its end; `WouldBlock`: nothing is there yet. The batch holds the connections of the
    /// records completed so far (possibly none).
    pub(crate) fn recv(&mut self, channel: BorrowedFd<'_>) -> io::Result<Option<Batch>> {
        let mut buf = [0u8; 4096];
        let mut arrived = Vec::new();
        let received = recv_with_fds(channel, &mut buf, &mut arrived)?;
        self.fds.extend(arrived);
        if received == 0 {
            return Ok(None);
        }
        self.pending.extend_from_slice(&buf[..received]);
        let mut batch = Batch::default();
        let mut at = 0;
        while self.pending.len() - at >= RECORD {
            let mut record = [0u8; RECORD];
            record.copy_from_slice(&self.pending[at..at + RECORD]);
            // Unknown records are skipped; a batch header waits for its entries.
            let n = connections_count(&record).unwrap_or(0);
            if self.pending.len() - at < RECORD + n * META {
                break;
            }
            // A record's descriptors came with its first byte, so they are all here by now.
            // Metas describe what was sent, descriptors what arrived: the lost ones are the tail.
            let arrived = n.min(self.fds.len());
            for (i, entry) in self.pending[at + RECORD..at + RECORD + n * META]
                .chunks_exact(META)
                .enumerate()
            {
                if i < arrived {
                    let mut bytes = [0u8; META];
                    bytes.copy_from_slice(entry);
                    batch.metas.push(Meta::decode(&bytes));
                }
            }
            batch.conns.extend(self.fds.drain(..arrived));
            let lost = u32::try_from(n - arrived).unwrap_or(u32::MAX);
            batch.lost = batch.lost.saturating_add(lost);
            at += RECORD + n * META;
        }
        self.pending.drain(..at);
        Ok(Some(batch))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;

    #[test]
    fn descriptors_cross_in_batches() -> io::Result<()> {
        let (primary, worker) = pair()?;
        set_nonblocking(worker.as_fd())?;
        let pipes: Vec<(OwnedFd, OwnedFd)> = (0..MAX_BATCH + 3)
            .map(|_| nix::unistd::pipe().map_err(io::Error::from))
            .collect::<io::Result<_>>()?;
        let raw: Vec<RawFd> = pipes.iter().map(|(r, _)| r.as_raw_fd()).collect();
        let metas: Vec<Meta> = (0..raw.len())
            .map(|i| Meta {
                listener: (i % 3) as u8,
                client: (i % 2 == 0)
                    .then(|| SocketAddr::from(([10, 0, 0, i as u8], 1000 + i as u16))),
            })
            .collect();
        send_connections(primary.as_fd(), &raw[..MAX_BATCH], &metas[..MAX_BATCH])?;
        send_connections(primary.as_fd(), &raw[MAX_BATCH..], &metas[MAX_BATCH..])?;
        let mut reader = WorkerReader::default();
        let (mut got, mut got_metas) = (Vec::new(), Vec::new());
        for expected in [MAX_BATCH, 3] {
            let batch = reader
                .recv(worker.as_fd())?
                .ok_or_else(|| io::Error::other("closed"))?;
            assert_eq!((batch.conns.len(), batch.lost), (expected, 0));
            got.extend(batch.conns);
            got_metas.extend(batch.metas);
        }
        assert_eq!(got_metas, metas);
        // Nothing more: no descriptor was lost or duplicated.
        let err = reader.recv(worker.as_fd()).err().map(|e| e.kind());
        assert_eq!(err, Some(io::ErrorKind::WouldBlock));
        // The received descriptors are the same pipes: write through one end, read the other.
        nix::unistd::write(&pipes[5].1, b"x")?;
        let mut b = [0u8; 1];
        assert_eq!(nix::unistd::read(got[5].as_fd(), &mut b)?, 1);

        send(worker.as_fd(), ToPrimary::Hello)?;
        for n in 0..40 {
            send(worker.as_fd(), ToPrimary::Ack(n))?;
        }
        drop(worker);
        let mut reader = PrimaryReader::default();
        let mut records = Vec::new();
        while let Some(more) = reader.recv(primary.as_fd())? {
            records.extend(more);
        }
        assert_eq!(records.len(), 41);
        assert_eq!(records[0], ToPrimary::Hello);
        assert_eq!(records[40], ToPrimary::Ack(39));
        Ok(())
    }
    /// Short writes: each write takes at most 3 bytes, so every record arrives in pieces and the
    /// descriptors come with a record's first piece. Nothing is lost, duplicated or misread.
    #[test]
    fn short_writes_keep_the_stream_in_step() -> io::Result<()> {
        let (primary, worker) = pair()?;
        set_nonblocking(worker.as_fd())?;
        let pipes: Vec<(OwnedFd, OwnedFd)> = (0..10)
            .map(|_| nix::unistd::pipe().map_err(io::Error::from))
            .collect::<io::Result<_>>()?;
        let raw: Vec<RawFd> = pipes.iter().map(|(r, _)| r.as_raw_fd()).collect();
        let metas: Vec<Meta> = (0..raw.len())
            .map(|i| Meta {
                listener: i as u8,
                client: Some(SocketAddr::from(([10, 0, 0, i as u8], 2000 + i as u16))),
            })
            .collect();
        send_batch(primary.as_fd(), &raw[..4], &metas[..4], 3)?;
        send_batch(primary.as_fd(), &raw[4..], &metas[4..], 3)?;
        let mut reader = WorkerReader::default();
        let (mut got, mut got_metas, mut reads, mut partial_reads) = (Vec::new(), Vec::new(), 0, 0);
        while got.len() < raw.len() {
            reads += 1;
            assert!(reads < 1000, "the records never completed");
            let batch = reader
                .recv(worker.as_fd())?
                .ok_or_else(|| io::Error::other("closed"))?;
            assert_eq!(batch.lost, 0);
            assert_eq!(batch.conns.len(), batch.metas.len());
            if batch.conns.is_empty() {
                partial_reads += 1;
            }
            got.extend(batch.conns);
            got_metas.extend(batch.metas);
        }
        assert!(
            partial_reads > 0,
            "no read ended inside a record: the writes were not short"
        );
        assert_eq!(got_metas, metas);
        let err = reader.recv(worker.as_fd()).err().map(|e| e.kind());
        assert_eq!(err, Some(io::ErrorKind::WouldBlock));
        for (i, (_, write_end)) in pipes.iter().enumerate() {
            nix::unistd::write(write_end, &[i as u8])?;
            let mut b = [0u8; 1];
            assert_eq!(nix::unistd::read(got[i].as_fd(), &mut b)?, 1);
            assert_eq!(b[0], i as u8, "descriptor {i} is another connection's");
        }
        Ok(())
    }

    /// A record's tail that finds no room within SHORT_WRITE_WAIT: the channel counts as gone,
    /// after a bounded wait, instead of leaving half a record in the stream.
    #[test]
    fn a_tail_with_no_room_breaks_the_channel_in_bounded_time() -> io::Result<()> {
        let (primary, _worker) = pair()?;
        // Fill the channel: the worker reads nothing.
        let chunk = [0u8; 4096];
        loop {
            match send_some(primary.as_fd(), &chunk) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
        let started = Instant::now();
        let err = send_whole(
            primary.as_fd(),
            &[1, 2, 3, 4, 5],
            |_| Ok(2),
            |rest| send_some(primary.as_fd(), rest),
        )
        .err()
        .ok_or_else(|| io::Error::other("the tail was written into a full channel"))?;
        let waited = started.elapsed();
        assert!(is_peer_gone(&err), "{err}");
        // It waited for room (not an immediate failure); the exact edge is the poll's business.
        assert!(waited >= SHORT_WRITE_WAIT / 2, "{waited:?} {err}");
        assert!(waited < SHORT_WRITE_WAIT * 10, "{waited:?}");
        Ok(())
    }

    /// Received descriptors are close-on-exec (MSG_CMSG_CLOEXEC on Linux, fcntl elsewhere).
    #[test]
    fn received_descriptors_are_close_on_exec() -> io::Result<()> {
        let (primary, worker) = pair()?;
        set_nonblocking(worker.as_fd())?;
        let (r, _w) = nix::unistd::pipe().map_err(io::Error::from)?;
        nix::fcntl::fcntl(
            r.as_fd(),
            nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty()),
        )?;
        send_connections(primary.as_fd(), &[r.as_raw_fd()], &[Meta::default()])?;
        let batch = WorkerReader::default()
            .recv(worker.as_fd())?
            .ok_or_else(|| io::Error::other("closed"))?;
        assert_eq!(batch.conns.len(), 1);
        let flags = nix::fcntl::fcntl(batch.conns[0].as_fd(), nix::fcntl::FcntlArg::F_GETFD)?;
        assert!(
            nix::fcntl::FdFlag::from_bits_truncate(flags).contains(nix::fcntl::FdFlag::FD_CLOEXEC)
        );
        Ok(())
    }
}
