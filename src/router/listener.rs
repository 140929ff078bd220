//! The public listening socket, bound the way Node binds `server.listen(port, host)`.

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, ToSocketAddrs};

use socket2::{Domain, Protocol, Socket, Type};

use super::error::LookupError;

/// Resolves `host` (an IP literal or a name) the way `listen` would: the first address found.
/// An empty host means Node's default, dual-stack `::`.
pub fn resolve(host: &str, port: u16) -> io::Result<SocketAddr> {
    if host.is_empty() {
        return Ok(SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), port));
    }
    let unbracketed = host.trim_start_matches('[').trim_end_matches(']');
    // std reports a failed lookup as text only ("failed to lookup address information: ...");
    // Node says `getaddrinfo ENOTFOUND <host>` (or EAI_AGAIN when the resolver is unreachable).
    let not_found = |code: &'static str| {
        io::Error::new(
            io::ErrorKind::NotFound,
            LookupError {
                code,
                host: host.to_owned(),
            },
        )
    };
    let mut found = (unbracketed, port).to_socket_addrs().map_err(|e| {
        if e.raw_os_error().is_some() {
            e
        } else if e.to_string().contains("Temporary failure") {
            not_found("EAI_AGAIN")
        } else {
            not_found("ENOTFOUND")
        }
    })?;
    found.next().ok_or_else(|| not_found("ENOTFOUND"))
}

/// Binds and listens: `SO_REUSEADDR` as Node sets it, dual-stack on an IPv6 wildcard, close-on-exec,
/// non-blocking. On a machine without IPv6, `::` falls back to `0.0.0.0` as Node does.
pub(crate) fn bind(addr: SocketAddr, backlog: i32) -> io::Result<Socket> {
    match bind_exact(addr, backlog) {
        Err(e)
            if e.raw_os_error() == Some(libc::EAFNOSUPPORT)
                && addr.ip() == Ipv6Addr::UNSPECIFIED =>
        {
            bind_exact(
                SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), addr.port()),
                backlog,
            )
        }
        other => other,
    }
}

fn bind_exact(addr: SocketAddr, backlog: i32) -> io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(false)?;
    }
    socket.bind(&addr.into())?;
    socket.listen(backlog)?;
    socket.set_nonblocking(true)?;
    Ok(socket)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_host_is_dual_stack_wildcard() -> io::Result<()> {
        assert_eq!(
            resolve("", 80)?,
            "[::]:80".parse::<SocketAddr>().map_err(io::Error::other)?
        );
        assert_eq!(resolve("127.0.0.1", 1)?.to_string(), "127.0.0.1:1");
        assert_eq!(resolve("[::1]", 2)?.to_string(), "[::1]:2");
        Ok(())
    }

    #[test]
    fn an_unknown_host_reports_enotfound() {
        let err = resolve("no-such-host.invalid", 80).err();
        let lookup = err
            .as_ref()
            .and_then(|e| e.get_ref())
            .and_then(|e| e.downcast_ref::<LookupError>());
        assert_eq!(
            lookup.map(|l| (l.code, l.host.as_str())),
            Some(("ENOTFOUND", "no-such-host.invalid"))
        );
    }

    #[test]
    fn a_taken_port_reports_addr_in_use() -> io::Result<()> {
        let first = bind(resolve("127.0.0.1", 0)?, 16)?;
        let taken = first
            .local_addr()?
            .as_socket()
            .ok_or_else(|| io::Error::other("no addr"))?;
        let err = bind(taken, 16).err().and_then(|e| e.raw_os_error());
        assert_eq!(err, Some(libc::EADDRINUSE));
        Ok(())
    }
}
