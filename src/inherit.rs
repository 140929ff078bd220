//! A binary upgrade (issue 22): the listening sockets a new primary inherits from the old one,
//! checked before the router uses them.
//!
//! The old primary passes every listening socket it has across `exec` (nginx's way: never
//! closed, so no connection is refused or reset). The new one takes them here instead of binding:
//! with the router, one per listener; with kernel dispatch, every member of each listener's
//! group in the kernel's order (the fallback first), so member `i` stays at index `i` and each
//! client on its slot. A descriptor that is not what it is said to be (not a listening TCP
//! socket, another address, not in a `SO_REUSEPORT` group, a different number of slots) fails the
//! start: the old primary keeps serving.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsFd, FromRawFd, OwnedFd, RawFd};

use socket2::{Socket, Type};

use crate::hash::Hash;
use crate::kernel::group::Group;
use crate::router::Listen;

/// Takes ownership of inherited descriptors; each must be open and above stdio.
pub(crate) fn own(fds: &[RawFd]) -> io::Result<Vec<OwnedFd>> {
    let mut owned = Vec::with_capacity(fds.len());
    for &fd in fds {
        // SAFETY: F_GETFD only reads the descriptor's flags; a number that is not open fails.
        if fd <= 2 || unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("inherited descriptor {fd} is not open (or is stdio)"),
            ));
        }
        if owned.iter().any(|o: &OwnedFd| {
            use std::os::fd::AsRawFd;
            o.as_raw_fd() == fd
        }) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("inherited descriptor {fd} is named twice"),
            ));
        }
        // SAFETY: open (checked just above), named once, and passed to this process to own:
        // nothing else in it uses the number.
        owned.push(unsafe { OwnedFd::from_raw_fd(fd) });
    }
    Ok(owned)
}

/// Checks that `fd` listens on `want` (any port when `want` asks for port 0; `0.0.0.0` where
/// `::` was asked, as [`crate::listener::bind`] falls back on a machine without IPv6), as a
/// member of a `SO_REUSEPORT` group or not as `grouped` says; makes it close-on-exec (so the
/// workers do not inherit it) and non-blocking. Returns the socket and its address.
pub(crate) fn listening(
    fd: OwnedFd,
    want: SocketAddr,
    grouped: bool,
) -> io::Result<(Socket, SocketAddr)> {
    let bad = |what: String| io::Error::new(io::ErrorKind::InvalidInput, what);
    let socket = Socket::from(fd);
    if socket.r#type()? != Type::STREAM {
        return Err(bad("an inherited descriptor is not a stream socket".into()));
    }
    if !nix::sys::socket::getsockopt(&socket.as_fd(), nix::sys::socket::sockopt::AcceptConn)? {
        return Err(bad("an inherited socket does not listen".into()));
    }
    let local = socket
        .local_addr()?
        .as_socket()
        .ok_or_else(|| bad("an inherited socket has no IP address".into()))?;
    let ip_ok = local.ip() == want.ip()
        || (want.ip().is_unspecified()
            && want.is_ipv6()
            && local.ip() == IpAddr::from([0u8, 0, 0, 0]));
    if !ip_ok || (want.port() != 0 && want.port() != local.port()) {
        return Err(bad(format!(
            "an inherited socket listens on {local}, this version is configured for {want}"
        )));
    }
    if socket.reuse_port()? != grouped {
        return Err(bad(format!(
            "the inherited socket on {local} {} a SO_REUSEPORT group member: the old primary ran another dispatch mode",
            if grouped { "is not" } else { "is" }
        )));
    }
    socket.set_cloexec(true)?;
    socket.set_nonblocking(true)?;
    Ok((socket, local))
}

/// The router's listeners (`dispatch: 'primary'`): one inherited descriptor per listener.
pub(crate) fn listeners(fds: &[RawFd], config: &[Listen]) -> io::Result<Vec<Socket>> {
    if fds.len() != config.len() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "{} inherited socket(s) for {} listener(s): the old primary ran another configuration or dispatch mode",
                fds.len(),
                config.len()
            ),
        ));
    }
    own(fds)?
        .into_iter()
        .zip(config)
        .map(|(fd, l)| listening(fd, l.addr, false).map(|(s, _)| s))
        .collect()
}

/// Kernel dispatch: each listener's group from `slots + 1` inherited members per listener, in
/// the kernel's order. A different slot count is refused: member `i` must keep serving slot
/// `i - 1`, and a group cannot shrink without renumbering.
pub(crate) fn groups(
    fds: &[RawFd],
    config: &[Listen],
    slots: usize,
    hash: Hash,
) -> io::Result<Vec<Group>> {
    let per = slots + 1;
    if fds.len() != per * config.len() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "{} inherited socket(s), {} expected ({} listener(s) of {slots} slot(s) and a fallback each): the old primary ran another worker count, configuration or dispatch mode; upgrade with the same count",
                fds.len(),
                per * config.len(),
                config.len()
            ),
        ));
    }
    let mut owned = own(fds)?.into_iter();
    config
        .iter()
        .map(|l| {
            let mut members = Vec::with_capacity(per);
            let mut local = None;
            for fd in owned.by_ref().take(per) {
                let (socket, at) = listening(fd, l.addr, true)?;
                if local.is_some_and(|first| first != at) {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidInput,
                        format!("the inherited members of one group listen on {at} and {local:?}"),
                    ));
                }
                local = Some(at);
                members.push(OwnedFd::from(socket));
            }
            let local = local.ok_or_else(|| io::Error::other("a group without members"))?;
            Group::adopt(members, local, hash, l.backlog)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::IntoRawFd;

    fn listen(addr: &str) -> io::Result<Socket> {
        crate::listener::bind(addr.parse().map_err(io::Error::other)?, 8)
    }

    #[test]
    fn a_listener_on_the_configured_address_is_taken_and_made_close_on_exec() -> io::Result<()> {
        let socket = listen("127.0.0.1:0")?;
        let at = socket
            .local_addr()?
            .as_socket()
            .ok_or_else(|| io::Error::other("ip"))?;
        socket.set_cloexec(false)?;
        let fd = socket.into_raw_fd();
        let want = Listen {
            addr: "127.0.0.1:0".parse().map_err(io::Error::other)?,
            backlog: 8,
        };
        let taken = listeners(&[fd], &[want])?;
        assert_eq!(taken[0].local_addr()?.as_socket(), Some(at));
        let flags = nix::fcntl::fcntl(taken[0].as_fd(), nix::fcntl::FcntlArg::F_GETFD)?;
        assert_ne!(flags & libc::FD_CLOEXEC, 0);
        Ok(())
    }

    #[test]
    fn another_address_a_closed_fd_or_a_wrong_count_is_refused() -> io::Result<()> {
        let socket = listen("127.0.0.1:0")?;
        let fd = socket.into_raw_fd();
        let other = Listen {
            addr: "127.0.0.2:0".parse().map_err(io::Error::other)?,
            backlog: 8,
        };
        let err = listeners(&[fd], std::slice::from_ref(&other))
            .err()
            .map(|e| e.to_string());
        assert!(err.is_some_and(|e| e.contains("configured for 127.0.0.2")));
        // The refused descriptor was closed on the way (owned, then dropped).
        assert!(own(&[fd]).is_err());
        assert!(listeners(&[], &[other]).is_err());
        Ok(())
    }

    #[cfg(any(target_os = "linux", target_os = "android"))]
    #[test]
    fn a_group_keeps_its_numbering_and_a_different_slot_count_is_refused() -> io::Result<()> {
        let addr: SocketAddr = "127.0.0.1:0".parse().map_err(io::Error::other)?;
        let group = Group::bind(addr, 2, Hash::Djb2, 8)?;
        let local = group.local_addr();
        let fds: Vec<RawFd> = group
            .into_members()
            .into_iter()
            .map(IntoRawFd::into_raw_fd)
            .collect();
        let want = Listen {
            addr: local,
            backlog: 8,
        };
        let err = groups(&fds, std::slice::from_ref(&want), 3, Hash::Djb2)
            .err()
            .map(|e| e.to_string());
        assert!(err.is_some_and(|e| e.contains("another worker count")));
        let adopted = groups(&fds, &[want], 2, Hash::Djb2)?;
        assert_eq!(adopted[0].slots(), 2);
        assert_eq!(adopted[0].local_addr(), local);
        assert_eq!(
            adopted[0].check(),
            0,
            "nothing to repair in an inherited group"
        );
        Ok(())
    }

    fn config(dispatch: crate::router::Dispatch, addr: SocketAddr) -> crate::router::Config {
        use crate::resolve::{RouteBy, Rules};
        crate::router::Config {
            listeners: vec![Listen { addr, backlog: 16 }],
            policy: crate::router::Policy {
                rules: Rules {
                    route_by: RouteBy::Address,
                    trusted: crate::trust::Trusted::default(),
                    limit: 256,
                    timeout: std::time::Duration::from_secs(1),
                    node: None,
                },
                slots: 2,
                queue_limit: 16,
                queue_timeout: None,
                hash: Hash::Djb2,
                debug: false,
                debug_connections: false,
                balance: crate::router::Balance::default(),
            },
            dispatch,
        }
    }

    /// A router on inherited sockets takes no connection before `accept()`: the old primary's
    /// router, which holds the same listener, takes them all meanwhile; after `hand_over()` it
    /// takes none, and the listener still listens for the new one.
    #[test]
    fn an_inherited_router_accepts_only_once_asked_and_a_hand_over_leaves_the_socket_listening(
    ) -> io::Result<()> {
        use crate::router::{Dispatch, OnEvent, Router};
        use std::sync::Arc;
        let on_event: OnEvent = Arc::new(|_| {});
        let old = Router::start(
            config(
                Dispatch::Primary,
                "127.0.0.1:0".parse().map_err(io::Error::other)?,
            ),
            on_event.clone(),
        )?;
        let at = old.local_addrs()[0];
        let fds: Vec<RawFd> = old
            .listening_fds()?
            .into_iter()
            .map(|(_, _, fd)| fd.into_raw_fd())
            .collect();
        let new = Router::start_inherited(config(Dispatch::Primary, at), on_event, Some(fds))?;
        assert_eq!(new.local_addrs(), &[at]);
        let accepted = |router: &Router| {
            router.stats().snapshot(0).accepted + router.stats().snapshot(1).accepted
        };
        let connect_some = || -> io::Result<Vec<std::net::TcpStream>> {
            (0..8).map(|_| std::net::TcpStream::connect(at)).collect()
        };
        let wait_for = |what: &dyn Fn() -> bool| {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
            while !what() && std::time::Instant::now() < deadline {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            what()
        };
        let _first = connect_some()?;
        assert!(wait_for(&|| accepted(&old) == 8));
        assert_eq!(accepted(&new), 0, "accepted before accept()");
        old.hand_over()?;
        new.accept()?;
        // Commands run in order: once a later one is answered, the old router has dropped its
        // copy (and has none left to copy).
        assert!(old.listening_fds().is_err());
        let _second = connect_some()?;
        assert!(wait_for(&|| accepted(&new) == 8));
        assert_eq!(accepted(&old), 8);
        Ok(())
    }
}
