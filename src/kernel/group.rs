//! The `SO_REUSEPORT` group: one listener per slot plus the fallback, on one address and port,
//! with the slot-picking program attached.
//!
//! The kernel numbers a group's members in `listen()` order and, when a member closes, moves the
//! last one into its index: every member stays open here for the life of the group, so the
//! numbering the program relies on never changes. Workers listen on duplicates of their member.
//!
//! Trust boundary: a process of the same user can bind the port with `SO_REUSEPORT` too, join the
//! group and attach its own program; another user gets `EADDRINUSE`. [`Group::bind`] refuses a
//! port that already has a listener, so that a second instance fails instead of merging.

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
        let local = probe(addr)?;
        let mut members = Vec::with_capacity(slot_member(slots));
        for member in 0..slot_member(slots) {
            let socket = new_socket(local, true)?;
            socket.bind(&local.into())?;
            socket.listen(backlog)?;
            socket.set_nonblocking(true)?;
            if member == FALLBACK_MEMBER {
                // While the other members join, send every SYN to the fallback, which the router
                // routes exactly; without a program the kernel would spread them at random.
                attach(socket.as_fd(), &[to_fallback()])?;
            }
            members.push(OwnedFd::from(socket));
        }
        // Attached once every member listens: a program attached to a member that does not
        // listen yet is dropped.
        attach(members[FALLBACK_MEMBER].as_fd(), &steer)?;
        Ok(Group {
            members,
            local,
            family,
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
            libc::SO_ATTACH_REUSEPORT_CBPF,
            (&fprog as *const libc::sock_fprog).cast(),
            size_of::<libc::sock_fprog>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
