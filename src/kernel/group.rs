//! The `SO_REUSEPORT` group: one listener per slot plus the fallback, on one address and port,
//! with the slot-picking program attached.
//!
//! The kernel numbers a group's members in `listen()` order and, when a member closes, moves the
//! last one into its index: every member stays open here for the life of the group, so the
//! numbering the program relies on never changes, whatever workers do with their copies.
//!
//! Trust boundary: a process of the same user can bind the port with `SO_REUSEPORT` too, join the
//! group and attach its own program; another user gets `EADDRINUSE`. [`Group::bind`] refuses a
//! port that already has a listener, so that a second instance fails instead of merging. (The
//! check is a bind that is closed before the members bind: a process that takes the port in
//! between makes the members' binds fail, or joins if it set `SO_REUSEPORT` itself.)

use std::io;
use std::mem::{align_of, size_of};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use socket2::{Domain, Protocol, Socket, Type};

use super::asm::{op, Insn};
use super::program::{program, slot_member, Family, FALLBACK_MEMBER};
use crate::hash::Hash;

// `Insn` is passed to the kernel as `struct sock_filter`.
const _: () = assert!(
    size_of::<Insn>() == size_of::<libc::sock_filter>()
        && align_of::<Insn>() == align_of::<libc::sock_filter>()
);

/// The members of one reuseport group, all listening, with the program attached.
#[derive(Debug)]
pub struct Group {
    /// In `listen()` order: [`FALLBACK_MEMBER`] first, then slot `s` at `slot_member(s)`.
    members: Vec<OwnedFd>,
    local: SocketAddr,
    family: Family,
}

impl Group {
    /// Binds `slots + 1` listeners to `addr` with `SO_REUSEPORT` (the fallback first, then one
    /// per slot), listens on each with `backlog`, and attaches the program that sends each SYN
    /// to `slot_member(hash(remoteAddress) % slots)`.
    ///
    /// A port that already has a listener fails with `EADDRINUSE` (checked with a plain bind
    /// first). Port 0 picks a free port for the whole group. An IPv6 wildcard is dual-stack; on a
    /// machine without IPv6 it falls back to `0.0.0.0`, as Node does. Members are non-blocking
    /// and close-on-exec.
    pub fn bind(addr: SocketAddr, slots: usize, hash: Hash, backlog: i32) -> io::Result<Group> {
        match Self::bind_exact(addr, slots, hash, backlog) {
            Err(e)
                if e.raw_os_error() == Some(libc::EAFNOSUPPORT)
                    && addr.ip() == Ipv6Addr::UNSPECIFIED =>
            {
                let v4 = SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), addr.port());
                Self::bind_exact(v4, slots, hash, backlog)
            }
            other => other,
        }
    }

    fn bind_exact(addr: SocketAddr, slots: usize, hash: Hash, backlog: i32) -> io::Result<Group> {
        let family = Family::of(&addr.ip());
        let steer = program(family, hash, slots)?;
        let group = Self::form(addr, slots, backlog)?;
        // Attached once every member listens: a program attached to a member that does not
        // listen yet is dropped.
        attach(group.fallback(), &steer)?;
        Ok(group)
    }

    /// Binds and listens on every member, with a program that sends every SYN to the fallback
    /// meanwhile (the router routes those exactly; without a program the kernel would spread
    /// them at random over the members listening so far).
    fn form(addr: SocketAddr, slots: usize, backlog: i32) -> io::Result<Group> {
        let local = probe(addr)?;
        let mut members = Vec::with_capacity(slot_member(slots));
        for member in 0..slot_member(slots) {
            let socket = new_socket(local, true)?;
            socket.bind(&local.into())?;
            socket.listen(backlog)?;
            socket.set_nonblocking(true)?;
            if member == FALLBACK_MEMBER {
                attach(socket.as_fd(), &[to_fallback()])?;
            }
            members.push(OwnedFd::from(socket));
        }
        Ok(Group {
            members,
            local,
            family: Family::of(&local.ip()),
        })
    }

    /// The address every member is bound to (with the port picked for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// The family of the listeners, which decides the text the program hashes.
    pub fn family(&self) -> Family {
        self.family
    }

    /// The number of slots (members other than the fallback).
    pub fn slots(&self) -> usize {
        self.members.len() - 1
    }

    /// The member that receives link-local IPv6 peers, for the router to accept on.
    pub fn fallback(&self) -> BorrowedFd<'_> {
        self.members[FALLBACK_MEMBER].as_fd()
    }

    /// The member serving `slot`, for its worker to listen on (`None` past the last slot).
    pub fn slot(&self, slot: usize) -> Option<BorrowedFd<'_>> {
        self.members.get(slot_member(slot)).map(AsFd::as_fd)
    }

    /// Every member, in `listen()` order (the fallback, then slot `s` at index `s + 1`).
    pub fn members(&self) -> &[OwnedFd] {
        &self.members
    }

    /// Every member, in `listen()` order, to own elsewhere (e.g. one per worker). The group's
    /// numbering only holds while every one of them stays open.
    pub fn into_members(self) -> Vec<OwnedFd> {
        self.members
    }

    /// The first step of a graceful stop: every member drops new SYNs (a socket filter that
    /// returns 0), so that nothing more joins the accept queues while the workers accept what is
    /// in them. Clients whose SYN was dropped retry, and are refused once [`Group::stop`] ran.
    pub fn refuse_new(&self) -> io::Result<()> {
        let drop_all = [Insn {
            code: op::RET | op::K,
            jt: 0,
            jf: 0,
            k: 0,
        }];
        for member in &self.members {
            set_filter(member.as_fd(), libc::SO_ATTACH_FILTER, &drop_all)?;
        }
        Ok(())
    }

    /// The members stop listening, for every process that holds them: new clients are refused.
    /// Connections already accepted go on; any still queued are reset.
    pub fn stop(&self) {
        for member in &self.members {
            let _ =
                nix::sys::socket::shutdown(member.as_raw_fd(), nix::sys::socket::Shutdown::Read);
        }
    }

    /// How many connections wait in a member's accept queue (`tcpi_unacked` of `TCP_INFO` on a
    /// listener), e.g. for a slot whose worker is not listening yet.
    pub fn queued(&self, member: usize) -> io::Result<u32> {
        let fd = self
            .members
            .get(member)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no such member"))?;
        // SAFETY: tcp_info is plain data; all-zero is a valid value.
        let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
        let mut len = size_of::<libc::tcp_info>() as libc::socklen_t;
        // SAFETY: `info` is writable for `len` bytes and the kernel writes at most `len`.
        let rc = unsafe {
            libc::getsockopt(
                fd.as_raw_fd(),
                libc::IPPROTO_TCP,
                libc::TCP_INFO,
                (&mut info as *mut libc::tcp_info).cast(),
                &mut len,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(info.tcpi_unacked)
    }
}

/// Fails with `EADDRINUSE` when something already listens on `addr` (a plain bind, without
/// `SO_REUSEPORT`, cannot share the port); returns the address with the port the bind got.
fn probe(addr: SocketAddr) -> io::Result<SocketAddr> {
    let socket = new_socket(addr, false)?;
    socket.bind(&addr.into())?;
    // Never listened, so closing it leaves nothing behind for the group's binds.
    socket
        .local_addr()?
        .as_socket()
        .ok_or_else(|| io::Error::other("the bound socket has no IP address"))
}

/// A TCP socket set up as Node sets up a listener (`SO_REUSEADDR`, dual-stack on IPv6).
fn new_socket(addr: SocketAddr, reuse_port: bool) -> io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    if reuse_port {
        socket.set_reuse_port(true)?;
    }
    if addr.is_ipv6() {
        socket.set_only_v6(false)?;
    }
    Ok(socket)
}

/// `ret #FALLBACK_MEMBER`.
fn to_fallback() -> Insn {
    Insn {
        code: op::RET | op::K,
        jt: 0,
        jf: 0,
        k: FALLBACK_MEMBER as u32,
    }
}

/// Installs `prog` as the reuseport program of the group `member` belongs to.
fn attach(member: BorrowedFd<'_>, prog: &[Insn]) -> io::Result<()> {
    set_filter(member, libc::SO_ATTACH_REUSEPORT_CBPF, prog)
}

/// Installs `prog` with the socket option `option` (`SO_ATTACH_REUSEPORT_CBPF`, `SO_ATTACH_FILTER`).
fn set_filter(member: BorrowedFd<'_>, option: libc::c_int, prog: &[Insn]) -> io::Result<()> {
    let fprog = libc::sock_fprog {
        len: u16::try_from(prog.len())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "BPF program too long"))?,
        // The kernel only reads the program (it copies it).
        filter: prog.as_ptr().cast_mut().cast::<libc::sock_filter>(),
    };
    // SAFETY: `fprog` points at `prog.len()` instructions laid out as `sock_filter` (asserted
    // above) that outlive the call; the option length is the size of `sock_fprog`.
    let rc = unsafe {
        libc::setsockopt(
            member.as_raw_fd(),
            libc::SOL_SOCKET,
            option,
            (&fprog as *const libc::sock_fprog).cast(),
            size_of::<libc::sock_fprog>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::address::AddressText;
    use crate::kernel::program::MAX_SLOTS;
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    use socket2::SockRef;
    use std::collections::{HashMap, HashSet};
    use std::net::IpAddr;

    const SLOT_COUNTS: [usize; 7] = [1, 2, 3, 4, 7, 10, 16];
    const SOURCES: usize = 300;
    const BATCH: usize = 100;
    /// A full accept queue drops SYNs and the client retries for minutes: fail instead.
    const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

    fn addr(text: &str) -> SocketAddr {
        text.parse().expect("test address")
    }

    /// Distinct loopback sources, fixed per run: octets of one, two and three digits.
    fn sources(count: usize, seed: u64) -> Vec<Ipv4Addr> {
        let mut state = seed | 1;
        let mut seen = HashSet::new();
        let mut out = vec![Ipv4Addr::new(127, 0, 0, 1), Ipv4Addr::new(127, 1, 2, 3)];
        seen.extend(out.iter().copied());
        while out.len() < count {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let [_, x, y, z, ..] = state.to_le_bytes();
            let ip = Ipv4Addr::new(127, x, y, z.clamp(1, 254));
            if seen.insert(ip) {
                out.push(ip);
            }
        }
        out
    }

    /// Waits for `count` connections across the members; returns the member that accepted each
    /// peer address.
    fn accept_all(group: &Group, count: usize) -> io::Result<HashMap<IpAddr, usize>> {
        let mut accepted = HashMap::new();
        while accepted.len() < count {
            let mut fds: Vec<PollFd<'_>> = group
                .members()
                .iter()
                .map(|m| PollFd::new(m.as_fd(), PollFlags::POLLIN))
                .collect();
            let ready = poll(&mut fds, PollTimeout::from(5000u16))?;
            if ready == 0 {
                return Err(io::Error::other(format!(
                    "{} of {count} connections never reached a member",
                    count - accepted.len()
                )));
            }
            for (member, fd) in group.members().iter().enumerate() {
                loop {
                    match SockRef::from(fd).accept() {
                        Ok((_conn, peer)) => {
                            let peer = peer
                                .as_socket()
                                .ok_or_else(|| io::Error::other("peer without an IP"))?;
                            let previous = accepted.insert(peer.ip(), member);
                            assert_eq!(previous, None, "{peer} accepted twice");
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) => return Err(e),
                    }
                }
            }
        }
        Ok(accepted)
    }

    /// Connects from every source to `target`, and checks that each connection is accepted by
    /// the member serving `hash(text) % slots`, where `text` is what Node shows for the source.
    fn check_routing(
        group: &Group,
        target: SocketAddr,
        clients: &[IpAddr],
        hash: Hash,
        text_of: impl Fn(IpAddr) -> String,
    ) -> io::Result<()> {
        let slots = group.slots();
        for batch in clients.chunks(BATCH) {
            let mut open = Vec::with_capacity(batch.len());
            for &source in batch {
                let client = Socket::new(Domain::for_address(target), Type::STREAM, None)?;
                client.bind(&SocketAddr::new(source, 0).into())?;
                client.connect_timeout(&target.into(), CONNECT_TIMEOUT)?;
                open.push(client);
            }
            let accepted = accept_all(group, batch.len())?;
            for &source in batch {
                let peer = match (source, group.family()) {
                    (IpAddr::V4(v4), Family::V6) => IpAddr::V6(v4.to_ipv6_mapped()),
                    _ => source,
                };
                let text = text_of(source);
                let want = slot_member(hash.of(text.as_bytes()) as usize % slots);
                assert_eq!(
                    accepted.get(&peer),
                    Some(&want),
                    "{text} with {slots} slots ({hash:?})"
                );
                // The reference formatter agrees on the text.
                assert_eq!(AddressText::from_ip(&peer).as_str(), text);
            }
        }
        Ok(())
    }

    fn v4_clients(seed: u64) -> Vec<IpAddr> {
        sources(SOURCES, seed).into_iter().map(IpAddr::V4).collect()
    }

    #[test]
    fn ipv4_listener_routes_by_djb2() -> io::Result<()> {
        for (n, &slots) in SLOT_COUNTS.iter().enumerate() {
            for hash in [Hash::Djb2, Hash::Djb2Mix] {
                let group = Group::bind(addr("127.0.0.1:0"), slots, hash, 1024)?;
                assert_eq!(group.family(), Family::V4);
                assert_eq!(group.members().len(), slots + 1);
                let clients = v4_clients(n as u64 * 2 + 1 + hash as u64);
                check_routing(&group, group.local_addr(), &clients, hash, |ip| {
                    ip.to_string()
                })?;
            }
        }
        Ok(())
    }

    #[test]
    fn dual_stack_listener_routes_by_djb2() -> io::Result<()> {
        for (n, &slots) in SLOT_COUNTS.iter().enumerate() {
            for hash in [Hash::Djb2, Hash::Djb2Mix] {
                let group = Group::bind(addr("[::]:0"), slots, hash, 1024)?;
                assert_eq!(group.family(), Family::V6);
                let target = SocketAddr::new(Ipv4Addr::LOCALHOST.into(), group.local_addr().port());
                let clients = v4_clients(n as u64 * 2 + 100 + hash as u64);
                check_routing(&group, target, &clients, hash, |ip| format!("::ffff:{ip}"))?;
                let v6_target = SocketAddr::new(Ipv6Addr::LOCALHOST.into(), target.port());
                check_routing(
                    &group,
                    v6_target,
                    &[Ipv6Addr::LOCALHOST.into()],
                    hash,
                    |_| "::1".to_owned(),
                )?;
            }
        }
        Ok(())
    }

    #[test]
    fn a_busy_port_is_refused() -> io::Result<()> {
        let first = Group::bind(addr("127.0.0.1:0"), 2, Hash::Djb2, 64)?;
        let err = Group::bind(first.local_addr(), 2, Hash::Djb2, 16).err();
        assert_eq!(err.and_then(|e| e.raw_os_error()), Some(libc::EADDRINUSE));
        // A dual-stack group on the same port conflicts too.
        let wildcard = SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), first.local_addr().port());
        let err = Group::bind(wildcard, 2, Hash::Djb2, 16).err();
        assert_eq!(err.and_then(|e| e.raw_os_error()), Some(libc::EADDRINUSE));
        // So does an ordinary listener, as the router binds it.
        let plain = crate::listener::bind(addr("127.0.0.1:0"), 16)?;
        let taken = plain
            .local_addr()?
            .as_socket()
            .ok_or_else(|| io::Error::other("no address"))?;
        let err = Group::bind(taken, 1, Hash::Djb2, 16).err();
        assert_eq!(err.and_then(|e| e.raw_os_error()), Some(libc::EADDRINUSE));
        // The first group still works after the refusals.
        let clients = v4_clients(7)[..20].to_vec();
        check_routing(&first, first.local_addr(), &clients, Hash::Djb2, |ip| {
            ip.to_string()
        })
    }

    #[test]
    fn a_forming_group_sends_everything_to_the_fallback() -> io::Result<()> {
        let group = Group::form(addr("127.0.0.1:0"), 4, 64)?;
        let clients = v4_clients(11)[..40].to_vec();
        check_all_to_fallback(&group, &clients)?;
        let steer = program(Family::V4, Hash::Djb2, 4)?;
        attach(group.fallback(), &steer)?;
        let clients = v4_clients(12)[..40].to_vec();
        check_routing(&group, group.local_addr(), &clients, Hash::Djb2, |ip| {
            ip.to_string()
        })
    }

    fn check_all_to_fallback(group: &Group, clients: &[IpAddr]) -> io::Result<()> {
        let mut open = Vec::new();
        for &source in clients {
            let client = Socket::new(Domain::IPV4, Type::STREAM, None)?;
            client.bind(&SocketAddr::new(source, 0).into())?;
            client.connect_timeout(&group.local_addr().into(), CONNECT_TIMEOUT)?;
            open.push(client);
        }
        let accepted = accept_all(group, clients.len())?;
        assert!(
            accepted.values().all(|&m| m == FALLBACK_MEMBER),
            "{accepted:?}"
        );
        Ok(())
    }

    #[test]
    fn slot_counts_out_of_range_are_refused() {
        for slots in [0, MAX_SLOTS + 1] {
            let err = Group::bind(addr("127.0.0.1:0"), slots, Hash::Djb2, 16).err();
            assert_eq!(err.map(|e| e.kind()), Some(io::ErrorKind::InvalidInput));
        }
    }

    #[test]
    fn queued_counts_connections_waiting_for_a_worker() -> io::Result<()> {
        let group = Group::bind(addr("127.0.0.1:0"), 1, Hash::Djb2, 64)?;
        let mut open = Vec::new();
        for source in sources(5, 3) {
            let client = Socket::new(Domain::IPV4, Type::STREAM, None)?;
            client.bind(&SocketAddr::new(source.into(), 0).into())?;
            client.connect_timeout(&group.local_addr().into(), CONNECT_TIMEOUT)?;
            open.push(client);
        }
        let member = slot_member(0);
        let mut fds = [PollFd::new(
            group.members()[member].as_fd(),
            PollFlags::POLLIN,
        )];
        poll(&mut fds, PollTimeout::from(5000u16))?;
        assert_eq!(group.queued(member)?, 5);
        assert_eq!(group.queued(FALLBACK_MEMBER)?, 0);
        assert_eq!(
            group.slot(0).map(|fd| fd.as_raw_fd()),
            Some(group.members()[member].as_raw_fd())
        );
        assert!(group.slot(1).is_none());
        assert_eq!(group.fallback().as_raw_fd(), group.members()[0].as_raw_fd());
        Ok(())
    }
}
