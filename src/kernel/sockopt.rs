//! The socket calls of a `SO_REUSEPORT` group, each with its safety argument: creating and
//! binding members, `getsockopt`/`setsockopt` of plain ints, `TCP_INFO`, `SO_MEMINFO`, the
//! TCP MD5 key of a probe, and (classic BPF) programs and filters.

use std::io;
use std::mem::{align_of, size_of};
use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::{AsRawFd, BorrowedFd};

use socket2::{Domain, Protocol, Socket, Type};

use super::asm::Insn;

// Socket options of asm-generic (x86, arm, aarch64, riscv, s390, powerpc), not all in `libc`.
pub(super) const SO_DETACH_FILTER: libc::c_int = 27;
pub(super) const SO_LOCK_FILTER: libc::c_int = 44;
const SO_MEMINFO: libc::c_int = 55;
/// `SK_MEMINFO_VARS`: the words `SO_MEMINFO` returns.
const MEMINFO_WORDS: usize = 9;

// `Insn` is passed to the kernel as `struct sock_filter`.
const _: () = assert!(
    size_of::<Insn>() == size_of::<libc::sock_filter>()
        && align_of::<Insn>() == align_of::<libc::sock_filter>()
);

pub(super) fn backlog(n: i32) -> nix::sys::socket::Backlog {
    nix::sys::socket::Backlog::new(n).unwrap_or(nix::sys::socket::Backlog::MAXCONN)
}

/// A listener's `TCP_INFO` (for a listener, `tcpi_unacked` is the accept queue and
/// `tcpi_sacked` its limit).
pub(super) fn tcp_info(fd: BorrowedFd<'_>) -> io::Result<libc::tcp_info> {
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
    Ok(info)
}

pub(super) fn get_int(
    fd: BorrowedFd<'_>,
    level: libc::c_int,
    option: libc::c_int,
) -> io::Result<i32> {
    let mut value: libc::c_int = 0;
    let mut len = size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `value` is writable for `len` bytes.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            level,
            option,
            (&mut value as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(value)
}

pub(super) fn set_int(
    fd: BorrowedFd<'_>,
    level: libc::c_int,
    option: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // SAFETY: the option reads one int.
    unsafe { set_option(fd, level, option, &value) }
}

/// `setsockopt(fd, level, option, value, size_of::<T>())`.
///
/// # Safety
/// `T` must be what the kernel expects for `option`, and any pointer inside `value` must be
/// valid for what the kernel reads through it during the call.
pub(super) unsafe fn set_option<T>(
    fd: BorrowedFd<'_>,
    level: libc::c_int,
    option: libc::c_int,
    value: &T,
) -> io::Result<()> {
    // SAFETY: `value` is readable for `size_of::<T>()` bytes; the rest is the caller's promise.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            option,
            (value as *const T).cast(),
            size_of::<T>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The number of instructions of the socket filter on `fd` (0: none), from `SO_GET_FILTER`
/// asked with no buffer.
pub(super) fn filter_len(fd: BorrowedFd<'_>) -> io::Result<u32> {
    let mut len: libc::socklen_t = 0;
    // SAFETY: with a zero length the kernel writes no value, only the length.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ATTACH_FILTER,
            std::ptr::null_mut(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(len)
}

/// Packets the socket dropped (`SO_MEMINFO`, `SK_MEMINFO_DROPS`); 0 if unknown.
pub(super) fn drops(fd: BorrowedFd<'_>) -> u32 {
    let mut words = [0u32; MEMINFO_WORDS];
    let mut len = size_of::<[u32; MEMINFO_WORDS]>() as libc::socklen_t;
    // SAFETY: `words` is writable for `len` bytes.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_MEMINFO,
            words.as_mut_ptr().cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return 0;
    }
    words[libc::SK_MEMINFO_DROPS as usize]
}

/// Gives a probe socket an MD5 key (`TCP_MD5SIG`) for `peer`: its SYN carries the option.
pub(super) fn set_md5_key(fd: BorrowedFd<'_>, peer: Ipv4Addr) -> io::Result<()> {
    // struct tcp_md5sig: sockaddr_storage (128), flags, prefixlen, keylen (u16), ifindex (i32),
    // key[80].
    let mut raw = [0u8; 128 + 1 + 1 + 2 + 4 + 80];
    raw[..2].copy_from_slice(&(libc::AF_INET as u16).to_ne_bytes());
    raw[4..8].copy_from_slice(&peer.octets());
    raw[130..132].copy_from_slice(&4u16.to_ne_bytes());
    raw[136..140].copy_from_slice(b"poke");
    // SAFETY: `raw` is the kernel's `struct tcp_md5sig`, laid out above; it holds no pointer.
    unsafe { set_option(fd, libc::IPPROTO_TCP, libc::TCP_MD5SIG, &raw) }
}

/// Fails with `EADDRINUSE` when something already listens on `addr` (a plain bind, without
/// `SO_REUSEPORT`, cannot share the port); returns the address with the port the bind got.
pub(super) fn probe(addr: SocketAddr) -> io::Result<SocketAddr> {
    let socket = new_socket(addr, false)?;
    socket.bind(&addr.into())?;
    // Never listened, so closing it leaves nothing behind for the group's binds.
    socket
        .local_addr()?
        .as_socket()
        .ok_or_else(|| io::Error::other("the bound socket has no IP address"))
}

/// A TCP socket set up as Node sets up a listener (`SO_REUSEADDR`, dual-stack on IPv6).
pub(super) fn new_socket(addr: SocketAddr, reuse_port: bool) -> io::Result<Socket> {
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

/// Installs `prog` as the reuseport program of the group `member` belongs to.
pub(super) fn attach(member: BorrowedFd<'_>, prog: &[Insn]) -> io::Result<()> {
    set_filter(member, libc::SO_ATTACH_REUSEPORT_CBPF, prog)
}

/// Installs `prog` with the socket option `option` (`SO_ATTACH_REUSEPORT_CBPF`, `SO_ATTACH_FILTER`).
pub(super) fn set_filter(
    member: BorrowedFd<'_>,
    option: libc::c_int,
    prog: &[Insn],
) -> io::Result<()> {
    let fprog = libc::sock_fprog {
        len: u16::try_from(prog.len())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "BPF program too long"))?,
        // The kernel only reads the program (it copies it).
        filter: prog.as_ptr().cast_mut().cast::<libc::sock_filter>(),
    };
    // SAFETY: `fprog` points at `prog.len()` instructions laid out as `sock_filter` (asserted
    // above) that outlive the call; both options read a `sock_fprog`.
    unsafe { set_option(member, libc::SOL_SOCKET, option, &fprog) }
}
