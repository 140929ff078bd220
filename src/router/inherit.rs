//! A binary upgrade (issue 22): a router on the listening sockets an old primary passed on,
//! checked before they are used.
//!
//! The old primary passes every listening socket it has across `exec` (nginx's way: never
//! closed, so no connection is refused or reset; see [`Router::listening_fds`]). The new one
//! takes them here instead of binding: with the router, one per listener; with kernel dispatch,
//! every member of each listener's group in the kernel's order (the fallback first), so member
//! `i` stays at index `i` and each client on its slot. A descriptor that is not what it is said
//! to be (not a listening TCP socket, another address, in a `SO_REUSEPORT` group or not as the
//! dispatch mode says, a different number of slots) fails the start: the old primary keeps
//! serving. The router accepts only once asked ([`Router::accept`]): until every slot of the new
//! primary has a ready worker the old one serves everything, and a new version that never gets
//! ready has taken no connection that would be lost with it.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};

use socket2::{Socket, Type};

use super::config::{Config, Dispatch, Listen};
use super::event::OnEvent;
use super::{fallbacks, Router};
use crate::kernel::group::Group;
use crate::key::hash::Hash;

impl Router {
    /// As [`Router::start`], on the listening sockets `fds` an old primary passed on instead of
    /// binding, in the order of its [`Router::listening_fds`]; accepts only once
    /// [`Router::accept`] is called. This process owns those descriptors from here on (a
    /// refused one is closed).
    pub fn inherit(config: Config, on_event: OnEvent, fds: &[RawFd]) -> io::Result<Router> {
        config.policy.check()?;
        let slots = config.policy.slots.max(1);
        let (groups, sockets) = match config.dispatch {
            Dispatch::Primary => (Vec::new(), listeners(fds, &config.listeners)?),
            Dispatch::Kernel => {
                let groups = groups(fds, &config.listeners, slots, config.policy.hash)?;
                let sockets = fallbacks(&groups)?;
                (groups, sockets)
            }
        };
        Router::run(config, groups, sockets, on_event, true)
    }
}

/// An inherited descriptor that is not what the old primary said it is.
fn refused(what: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, what)
}

/// Takes ownership of inherited descriptors; each must be open, above stdio, and named once.
fn own(fds: &[RawFd]) -> io::Result<Vec<OwnedFd>> {
    let mut owned: Vec<OwnedFd> = Vec::with_capacity(fds.len());
    for &fd in fds {
        // SAFETY: F_GETFD only reads the descriptor's flags; a number that is not open fails.
        if fd <= 2 || unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
            return Err(refused(format!(
                "inherited descriptor {fd} is not open (or is stdio)"
            )));
        }
        if owned.iter().any(|o| o.as_raw_fd() == fd) {
            return Err(refused(format!("inherited descriptor {fd} is named twice")));
        }
        // SAFETY: open (checked just above), named once, and passed to this process to own:
        // nothing else in it uses the number.
        owned.push(unsafe { OwnedFd::from_raw_fd(fd) });
    }
    Ok(owned)
}

/// Checks that `fd` listens on `want` (any port when `want` asks for port 0; `0.0.0.0` where
/// `::` was asked, as [`super::listener::bind`] falls back on a machine without IPv6), as a
/// member of a `SO_REUSEPORT` group or not as `grouped` says; makes it close-on-exec (so the
/// workers do not inherit it) and non-blocking. Returns the socket and its address.
fn listening(fd: OwnedFd, want: SocketAddr, grouped: bool) -> io::Result<(Socket, SocketAddr)> {
    let socket = Socket::from(fd);
    if socket.r#type()? != Type::STREAM {
        return Err(refused(
            "an inherited descriptor is not a stream socket".into(),
        ));
    }
    if !nix::sys::socket::getsockopt(&socket.as_fd(), nix::sys::socket::sockopt::AcceptConn)? {
        return Err(refused("an inherited socket does not listen".into()));
    }
    let local = socket
        .local_addr()?
        .as_socket()
        .ok_or_else(|| refused("an inherited socket has no IP address".into()))?;
    let ip_ok = local.ip() == want.ip()
        || (want.ip().is_unspecified()
            && want.is_ipv6()
            && local.ip() == IpAddr::from([0u8, 0, 0, 0]));
    if !ip_ok || (want.port() != 0 && want.port() != local.port()) {
        return Err(refused(format!(
            "an inherited socket listens on {local}, this version is configured for {want}"
        )));
    }
    if socket.reuse_port()? != grouped {
        return Err(refused(format!(
            "the inherited socket on {local} {} a SO_REUSEPORT group member: the old primary ran another dispatch mode",
            if grouped { "is not" } else { "is" }
        )));
    }
    socket.set_cloexec(true)?;
    socket.set_nonblocking(true)?;
    Ok((socket, local))
}

/// The router's listeners (`dispatch: 'primary'`): one inherited descriptor per listener.
fn listeners(fds: &[RawFd], config: &[Listen]) -> io::Result<Vec<Socket>> {
    if fds.len() != config.len() {
        return Err(refused(format!(
            "{} inherited socket(s) for {} listener(s): the old primary ran another configuration or dispatch mode",
            fds.len(),
            config.len()
        )));
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
fn groups(fds: &[RawFd], config: &[Listen], slots: usize, hash: Hash) -> io::Result<Vec<Group>> {
    let per = slots + 1;
    if fds.len() != per * config.len() {
        return Err(refused(format!(
            "{} inherited socket(s), {} expected ({} listener(s) of {slots} slot(s) and a fallback each): the old primary ran another worker count, configuration or dispatch mode; upgrade with the same count",
            fds.len(),
            per * config.len(),
            config.len()
        )));
    }
    let mut owned = own(fds)?.into_iter();
    config
        .iter()
        .map(|l| {
            let mut members = Vec::with_capacity(per);
            let mut local = None;
            for fd in owned.by_ref().take(per) {
                let (socket, at) = listening(fd, l.addr, true)?;
                if let Some(first) = local.filter(|first| *first != at) {
                    return Err(refused(format!(
                        "the inherited members of one group listen on {first} and {at}"
                    )));
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
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use super::super::config::Policy;
    use crate::key::resolve::RouteBy;

    fn addr(text: &str) -> io::Result<SocketAddr> {
        text.parse().map_err(io::Error::other)
    }

    fn listen(text: &str) -> io::Result<Socket> {
        super::super::listener::bind(addr(text)?, 8)
    }

    #[test]
    fn a_listener_on_the_configured_address_is_taken_and_made_close_on_exec() -> io::Result<()> {
        let socket = listen("127.0.0.1:0")?;
        let at = socket.local_addr()?.as_socket();
        socket.set_cloexec(false)?;
        let fd = socket.into_raw_fd();
        let want = Listen {
            addr: addr("127.0.0.1:0")?,
            backlog: 8,
        };
        let taken = listeners(&[fd], &[want])?;
        assert_eq!(taken[0].local_addr()?.as_socket(), at);
        let flags = nix::fcntl::fcntl(taken[0].as_fd(), nix::fcntl::FcntlArg::F_GETFD)?;
        assert_ne!(flags & libc::FD_CLOEXEC, 0);
        Ok(())
    }

    #[test]
    fn another_address_a_closed_fd_or_a_wrong_count_is_refused() -> io::Result<()> {
        let fd = listen("127.0.0.1:0")?.into_raw_fd();
        let other = Listen {
            addr: addr("127.0.0.2:0")?,
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
        use crate::wire::transport;
        let group = Group::bind(addr("127.0.0.1:0")?, 2, Hash::Djb2, 8)?;
        let local = socket2::SockRef::from(&group.fallback())
            .local_addr()?
            .as_socket()
            .ok_or_else(|| io::Error::other("no IP address"))?;
        // Copies: the old primary's own stay open until it exits.
        let fds: Vec<RawFd> = group
            .members()
            .map(|m| transport::duplicate(m).map(IntoRawFd::into_raw_fd))
            .collect::<io::Result<_>>()?;
        drop(group);
        let want = Listen {
            addr: local,
            backlog: 8,
        };
        // Refused before any descriptor is taken.
        let err = groups(&fds, std::slice::from_ref(&want), 3, Hash::Djb2)
            .err()
            .map(|e| e.to_string());
        assert!(err.is_some_and(|e| e.contains("another worker count")));
        let adopted = groups(&fds, &[want], 2, Hash::Djb2)?;
        assert!(adopted[0].slot(1).is_some() && adopted[0].slot(2).is_none());
        let at = socket2::SockRef::from(&adopted[0].fallback()).local_addr()?;
        assert_eq!(at.as_socket(), Some(local));
        assert_eq!(
            adopted[0].check(),
            0,
            "nothing to repair in an inherited group"
        );
        Ok(())
    }

    fn config(dispatch: Dispatch, addr: SocketAddr) -> Config {
        Config {
            listeners: vec![Listen { addr, backlog: 16 }],
            policy: Policy::for_tests(RouteBy::Address, 2),
            dispatch,
        }
    }

    /// A router on inherited sockets takes no connection before `accept()`: the old primary's
    /// router, which holds the same listener, takes them all meanwhile; after `hand_over()` it
    /// takes none, and the listener still listens for the new one.
    #[test]
    fn an_inherited_router_accepts_only_once_asked_and_a_hand_over_leaves_the_socket_listening(
    ) -> io::Result<()> {
        let on_event: OnEvent = Arc::new(|_| {});
        let old = Router::start(
            config(Dispatch::Primary, addr("127.0.0.1:0")?),
            on_event.clone(),
        )?;
        let at = old.local_addrs()[0];
        let fds: Vec<RawFd> = old
            .listening_fds()?
            .into_iter()
            .map(|(_, _, fd)| fd.into_raw_fd())
            .collect();
        let new = Router::inherit(config(Dispatch::Primary, at), on_event, &fds)?;
        assert_eq!(new.local_addrs(), &[at]);
        let accepted = |router: &Router| {
            router.stats().snapshot(0).accepted + router.stats().snapshot(1).accepted
        };
        let connect_some = || -> io::Result<Vec<std::net::TcpStream>> {
            (0..8).map(|_| std::net::TcpStream::connect(at)).collect()
        };
        // Bounded: the counters are the router thread's, read from here.
        let wait_for = |what: &dyn Fn() -> bool| {
            let deadline = Instant::now() + Duration::from_secs(5);
            while !what() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
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
