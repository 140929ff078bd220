//! The fd channel between the primary and one worker: an anonymous `SOCK_STREAM` socketpair
//! (stream, not seqpacket: Node can only pass stream sockets to the worker), carrying fixed-size
//! records.
//!
//! Connections travel as `SCM_RIGHTS` batches. The worker answers on the same socket: `Hello`
//! once it owns its end (the primary delivers nothing before, since Node's own reader would
//! swallow the descriptors), then `Ack(n)` once it has adopted `n` connections, and `Lost(n)`
//! when the kernel could not give it `n` of them (the worker was out of descriptors). Being a
//! socketpair, the channel has no name another process could connect to.

use std::io;
use std::io::IoSlice;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use nix::sys::socket::{self, ControlMessage, MsgFlags, SockFlag, SockType};

/// Most descriptors sent in one message (the kernel allows 253).
pub const MAX_BATCH: usize = 64;

/// One record on a channel: a tag byte and four bytes of argument (a little-endian count). A
/// `Connections(n)` record is followed by `n` [`Meta`] entries of [`META`] bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Message {
    /// Primary to worker: `n` connections, carried as the message's descriptors.
    Connections(u8),
    /// Worker to primary: the worker holds its end and is ready for connections.
    Hello,
    /// Worker to primary: the worker adopted this many more connections.
    Ack(u32),
    /// Worker to primary: the next this many connections never arrived (the worker was out of
    /// descriptors and the kernel dropped them); the primary still has them and sends them again.
    Lost(u32),
}

/// The size of every record.
pub const RECORD: usize = 5;
/// The size of one connection's [`Meta`].
pub const META: usize = 20;

/// What a worker needs to know about a connection besides its descriptor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Meta {
    /// Which of the primary's listeners accepted it (the worker's server of the same index).
    pub listener: u8,
    /// The client a PROXY protocol header spoke for; `None`: the socket's own peer.
    pub client: Option<SocketAddr>,
}

impl Meta {
    /// `[listener, family (0, 4, 6), port (big-endian), address (16 bytes)]`.
    pub fn encode(&self) -> [u8; META] {
        let mut out = [0u8; META];
        out[0] = self.listener;
        if let Some(client) = self.client {
            out[2..4].copy_from_slice(&client.port().to_be_bytes());
            match client.ip() {
                IpAddr::V4(ip) => {
                    out[1] = 4;
                    out[4..8].copy_from_slice(&ip.octets());
                }
                IpAddr::V6(ip) => {
                    out[1] = 6;
                    out[4..20].copy_from_slice(&ip.octets());
                }
            }
        }
        out
    }

    /// Reads one entry; an unknown family means no client.
    pub fn decode(bytes: &[u8; META]) -> Meta {
        let port = u16::from_be_bytes([bytes[2], bytes[3]]);
        let ip: Option<IpAddr> = match bytes[1] {
            4 => Some(Ipv4Addr::new(bytes[4], bytes[5], bytes[6], bytes[7]).into()),
            6 => {
                let mut octets = [0u8; 16];
                octets.copy_from_slice(&bytes[4..20]);
                Some(Ipv6Addr::from(octets).into())
            }
            _ => None,
        };
        Meta {
            listener: bytes[0],
            client: ip.map(|ip| SocketAddr::new(ip, port)),
        }
    }
}

impl Message {
    /// The record of this message.
    pub fn encode(self) -> [u8; RECORD] {
        let (tag, arg) = match self {
            Message::Connections(n) => (b'C', u32::from(n)),
            Message::Hello => (b'H', 0),
            Message::Ack(n) => (b'A', n),
            Message::Lost(n) => (b'L', n),
        };
        let a = arg.to_le_bytes();
        [tag, a[0], a[1], a[2], a[3]]
    }

    /// Reads one record; `None` for an unknown tag or an out-of-range count.
    pub fn decode(record: &[u8; RECORD]) -> Option<Message> {
        let arg = u32::from_le_bytes([record[1], record[2], record[3], record[4]]);
        match record[0] {
            b'C' => u8::try_from(arg).ok().map(Message::Connections),
            b'H' => Some(Message::Hello),
            b'A' => Some(Message::Ack(arg)),
            b'L' => Some(Message::Lost(arg)),
            _ => None,
        }
    }
}

/// Creates a channel: `(primary end, worker end)`, both close-on-exec, the primary's end
/// non-blocking.
pub fn pair() -> io::Result<(OwnedFd, OwnedFd)> {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    let flags = SockFlag::SOCK_CLOEXEC;
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    let flags = SockFlag::empty();
    let (primary, worker) =
        socket::socketpair(socket::AddressFamily::Unix, SockType::Stream, None, flags)?;
    for fd in [&primary, &worker] {
        set_cloexec(fd.as_fd())?;
    }
    set_nonblocking(primary.as_fd())?;
    Ok((primary, worker))
}

fn set_cloexec(fd: BorrowedFd) -> io::Result<()> {
    use nix::fcntl::{fcntl, FcntlArg, FdFlag};
    fcntl(fd, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC))?;
    Ok(())
}

/// Puts a descriptor in non-blocking mode.
pub fn set_nonblocking(fd: BorrowedFd) -> io::Result<()> {
    use nix::fcntl::{fcntl, FcntlArg, OFlag};
    let flags = OFlag::from_bits_truncate(fcntl(fd, FcntlArg::F_GETFL)?);
    fcntl(fd, FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK))?;
    Ok(())
}

/// Duplicates a descriptor owned by someone else (close-on-exec), so it can outlive the original.
pub fn duplicate(fd: BorrowedFd) -> io::Result<OwnedFd> {
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
/// The message is small enough (at most 1,285 bytes) to be sent whole or not at all.
pub fn send_connections(channel: BorrowedFd, fds: &[RawFd], metas: &[Meta]) -> io::Result<()> {
    let n = fds.len().min(metas.len()).min(MAX_BATCH);
    let mut data = [0u8; RECORD + MAX_BATCH * META];
    data[..RECORD].copy_from_slice(&Message::Connections(n as u8).encode());
    for (i, meta) in metas[..n].iter().enumerate() {
        data[RECORD + i * META..RECORD + (i + 1) * META].copy_from_slice(&meta.encode());
    }
    let iov = [IoSlice::new(&data[..RECORD + n * META])];
    let cmsg = [ControlMessage::ScmRights(&fds[..n])];
    socket::sendmsg::<()>(channel.as_raw_fd(), &iov, &cmsg, send_flags(), None)?;
    Ok(())
}

/// Sends a descriptor-less message (`Hello`, `Ack` or `Lost`) without blocking.
pub fn send(channel: BorrowedFd, message: Message) -> io::Result<()> {
    // A record this small is sent whole or not at all (EAGAIN).
    socket::send(channel.as_raw_fd(), &message.encode(), send_flags())?;
    Ok(())
}

/// `recvmsg` without blocking, appending the descriptors it carried to `fds`.
///
/// Not nix's `recvmsg`: when this process is out of descriptors the kernel installs only some of
/// them and sets `MSG_CTRUNC`, and nix then refuses to read the control data at all, which would
/// leak the ones installed. The header the kernel writes stays well-formed, its length covering
/// exactly the descriptors installed, so it is read here as is.
fn recv_with_fds(channel: BorrowedFd, buf: &mut [u8], fds: &mut Vec<OwnedFd>) -> io::Result<usize> {
    const FD_SIZE: usize = std::mem::size_of::<RawFd>();
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
    Ok(received as usize)
}

/// Reads records off a channel, keeping a partial record between reads.
#[derive(Debug, Default)]
pub struct Reader {
    pending: Vec<u8>,
}

impl Reader {
    /// Receives what is there without blocking: appends records to `messages`, descriptors
    /// (close-on-exec) to `fds` and the [`Meta`] of connections to `metas`. `Ok(false)` means the
    /// peer closed the channel; `WouldBlock` means nothing is there yet. Unknown records are
    /// skipped.
    pub fn recv(
        &mut self,
        channel: BorrowedFd,
        messages: &mut Vec<Message>,
        fds: &mut Vec<OwnedFd>,
        metas: &mut Vec<Meta>,
    ) -> io::Result<bool> {
        let mut buf = [0u8; 4096];
        let received = recv_with_fds(channel, &mut buf, fds)?;
        if received == 0 {
            return Ok(false);
        }
        self.pending.extend_from_slice(&buf[..received]);
        let mut at = 0;
        while self.pending.len() - at >= RECORD {
            let mut record = [0u8; RECORD];
            record.copy_from_slice(&self.pending[at..at + RECORD]);
            let message = Message::decode(&record);
            let extra = match message {
                Some(Message::Connections(n)) => usize::from(n) * META,
                _ => 0,
            };
            if self.pending.len() - at < RECORD + extra {
                break;
            }
            for entry in self.pending[at + RECORD..at + RECORD + extra].chunks_exact(META) {
                let mut bytes = [0u8; META];
                bytes.copy_from_slice(entry);
                metas.push(Meta::decode(&bytes));
            }
            messages.extend(message);
            at += RECORD + extra;
        }
        self.pending.drain(..at);
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip() {
        for m in [
            Message::Connections(0),
            Message::Connections(64),
            Message::Hello,
            Message::Ack(0),
            Message::Ack(u32::MAX),
            Message::Lost(3),
        ] {
            assert_eq!(Message::decode(&m.encode()), Some(m));
        }
        assert_eq!(Message::decode(b"C\x00\x01\x00\x00"), None);
        assert_eq!(Message::decode(b"Xabcd"), None);
    }

    #[test]
    fn meta_round_trips() {
        for meta in [
            Meta::default(),
            Meta {
                listener: 7,
                client: "1.2.3.4:5".parse().ok(),
            },
            Meta {
                listener: 0,
                client: "[2001:db8::1]:65535".parse().ok(),
            },
        ] {
            assert_eq!(Meta::decode(&meta.encode()), meta);
        }
    }

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
        let (mut reader, mut got, mut msgs, mut got_metas) =
            (Reader::default(), Vec::new(), Vec::new(), Vec::new());
        assert!(reader.recv(worker.as_fd(), &mut msgs, &mut got, &mut got_metas)?);
        assert_eq!(msgs, [Message::Connections(64)]);
        assert_eq!(got.len(), MAX_BATCH);
        assert!(reader.recv(worker.as_fd(), &mut msgs, &mut got, &mut got_metas)?);
        assert_eq!(msgs, [Message::Connections(64), Message::Connections(3)]);
        assert_eq!(got.len(), MAX_BATCH + 3);
        assert_eq!(got_metas, metas);
        // Nothing more: no descriptor was lost or duplicated.
        let err = reader
            .recv(worker.as_fd(), &mut msgs, &mut got, &mut got_metas)
            .err()
            .map(|e| e.kind());
        assert_eq!(err, Some(io::ErrorKind::WouldBlock));
        // The received descriptors are the same pipes: write through one end, read the other.
        nix::unistd::write(&pipes[5].1, b"x")?;
        let mut b = [0u8; 1];
        assert_eq!(nix::unistd::read(got[5].as_fd(), &mut b)?, 1);

        msgs.clear();
        send(worker.as_fd(), Message::Hello)?;
        for n in 0..40 {
            send(worker.as_fd(), Message::Ack(n))?;
        }
        drop(worker);
        let mut reader = Reader::default();
        while reader.recv(primary.as_fd(), &mut msgs, &mut got, &mut got_metas)? {}
        assert_eq!(msgs.len(), 41);
        assert_eq!(msgs[0], Message::Hello);
        assert_eq!(msgs[40], Message::Ack(39));
        Ok(())
    }
}
