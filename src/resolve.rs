//! Route keys of connections from trusted proxies, read off the stream in a task of their own so
//! the accept loop never waits on a client, within a size and a time bound.
//!
//! Header routing only peeks (`MSG_PEEK`): the worker gets the stream untouched. PROXY protocol
//! consumes exactly the header, and the client it names travels to the worker with the fd.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

use crate::address::AddressText;
use crate::forwarded::{self, Key};
use crate::proxy::{self, Header};
use crate::trust::Trusted;

/// Where the route key of a connection comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteBy {
    /// The peer's own address (the default).
    Address,
    /// A request header of a trusted proxy (lower case); `x-forwarded-for` has its own rule.
    Header(String),
    /// A PROXY protocol header sent by a trusted proxy.
    ProxyProtocol,
}

/// How connections from trusted proxies are resolved.
#[derive(Debug, Clone)]
pub struct Rules {
    /// Where the key comes from.
    pub route_by: RouteBy,
    /// Whose data is believed; everyone else is routed by address.
    pub trusted: Trusted,
    /// The most bytes read to find the key.
    pub limit: usize,
    /// The longest wait for them.
    pub timeout: Duration,
}

impl Rules {
    /// Whether a connection from `peer` is resolved here rather than routed by its address.
    pub fn applies_to(&self, peer: &SocketAddr) -> bool {
        self.route_by != RouteBy::Address && self.trusted.contains(peer.ip())
    }
}

/// What resolution found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Route by this key.
    Key(String),
    /// A PROXY header spoke for this client: route by its address, and tell the worker.
    Client(SocketAddr),
    /// Route by the peer's own address: a PROXY `LOCAL` command (a health check).
    Local,
    /// No usable key (header missing, malformed, too long or too slow): route by the peer.
    Fallback,
    /// Close the connection: a trusted proxy sent no valid PROXY header.
    Reject,
}

/// Reads the route key of `conn` under `rules`; gives the connection back with the outcome.
pub async fn resolve(conn: OwnedFd, rules: Arc<Rules>) -> (OwnedFd, Outcome) {
    // SAFETY: `conn` is owned and moved in; it stays open until into_inner gives it back.
    let watched = match unsafe { AsyncFd::register_with_interest(conn, Interest::READABLE) } {
        Ok(watched) => watched,
        Err(e) => return (e.into_parts().0, give_up(&rules)),
    };
    let outcome = tokio::time::timeout(rules.timeout, read(&watched, &rules))
        .await
        .unwrap_or_else(|_elapsed| give_up(&rules));
    (watched.into_inner(), outcome)
}

/// Without a key: header routing falls back to the address; a trusted proxy that speaks PROXY
/// protocol must send its header.
fn give_up(rules: &Rules) -> Outcome {
    match rules.route_by {
        RouteBy::ProxyProtocol => Outcome::Reject,
        _ => Outcome::Fallback,
    }
}

async fn read(watched: &AsyncFd<OwnedFd>, rules: &Rules) -> Outcome {
    let mut buf = vec![0u8; rules.limit];
    loop {
        let Ok(mut guard) = watched.readable().await else {
            return give_up(rules);
        };
        let seen = match guard.try_io(|fd| recv(fd.get_ref(), &mut buf, libc::MSG_PEEK)) {
            Ok(Ok(0)) | Ok(Err(_)) => return give_up(rules),
            Ok(Ok(n)) => n,
            Err(_would_block) => continue,
        };
        let full = seen == buf.len();
        let outcome = match &rules.route_by {
            RouteBy::Address => return Outcome::Fallback,
            RouteBy::Header(name) => match forwarded::route_key(&buf[..seen], name, &rules.trusted)
            {
                Key::Text(text) => Some(Outcome::Key(text)),
                Key::Fallback => Some(Outcome::Fallback),
                Key::Incomplete if full => Some(Outcome::Fallback),
                Key::Incomplete => None,
            },
            RouteBy::ProxyProtocol => match proxy::parse(&buf[..seen], rules.limit) {
                Header::Complete { len, source } => {
                    // Exactly the header: the application's bytes stay for the worker.
                    match recv(watched.get_ref(), &mut buf[..len], 0) {
                        Ok(n) if n == len => Some(source.map_or(Outcome::Local, Outcome::Client)),
                        _ => Some(Outcome::Reject),
                    }
                }
                Header::Invalid => Some(Outcome::Reject),
                Header::Incomplete if full => Some(Outcome::Reject),
                Header::Incomplete => None,
            },
        };
        match outcome {
            Some(outcome) => return outcome,
            // Wait for more bytes: what is there now was seen.
            None => guard.clear_ready(),
        }
    }
}

fn recv(fd: &OwnedFd, buf: &mut [u8], flags: libc::c_int) -> io::Result<usize> {
    // SAFETY: `buf` is valid for writes of its length; `fd` is open.
    let n = unsafe {
        libc::recv(
            fd.as_raw_fd(),
            buf.as_mut_ptr().cast(),
            buf.len(),
            flags | libc::MSG_DONTWAIT,
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// The route key text of an outcome that names one, else of the peer.
pub fn key_of(outcome: &Outcome, peer: Option<&SocketAddr>) -> String {
    match (outcome, peer) {
        (Outcome::Key(text), _) => text.clone(),
        (Outcome::Client(client), _) => AddressText::new(client).as_str().to_owned(),
        (_, Some(peer)) => AddressText::new(peer).as_str().to_owned(),
        (_, None) => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::net::{TcpListener, TcpStream};

    fn rules(route_by: RouteBy, timeout_ms: u64) -> Arc<Rules> {
        Arc::new(Rules {
            route_by,
            trusted: Trusted::parse(&["127.0.0.0/8"]).unwrap_or_default(),
            limit: 256,
            timeout: Duration::from_millis(timeout_ms),
        })
    }

    /// A connected pair: (client, the server's accepted end).
    fn pair() -> io::Result<(TcpStream, OwnedFd)> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let client = TcpStream::connect(listener.local_addr()?)?;
        let (server, _) = listener.accept()?;
        Ok((client, server.into()))
    }

    fn run(conn: OwnedFd, rules: Arc<Rules>) -> io::Result<(OwnedFd, Outcome)> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        Ok(rt.block_on(resolve(conn, rules)))
    }

    #[test]
    fn header_is_peeked_and_left_in_place() -> io::Result<()> {
        let (mut client, server) = pair()?;
        let head = b"GET / HTTP/1.1\r\nX-Forwarded-For: 9.9.9.9\r\n\r\n";
        client.write_all(head)?;
        let (server, outcome) = run(
            server,
            rules(RouteBy::Header("x-forwarded-for".into()), 2000),
        )?;
        assert_eq!(outcome, Outcome::Key("9.9.9.9".into()));
        let mut buf = [0u8; 128];
        let n = recv(&server, &mut buf, 0)?;
        assert_eq!(&buf[..n], head);
        Ok(())
    }

    #[test]
    fn proxy_header_is_consumed_exactly() -> io::Result<()> {
        let (mut client, server) = pair()?;
        // Sent in two pieces: the task waits for the rest.
        client.write_all(b"PROXY TCP4 9.8.7.6 1.1.1.1 4")?;
        let writer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            client.write_all(b"321 80\r\nGET /").map(|_| client)
        });
        let (server, outcome) = run(server, rules(RouteBy::ProxyProtocol, 2000))?;
        let _client = writer
            .join()
            .map_err(|_| io::Error::other("writer panicked"))??;
        assert_eq!(
            outcome,
            Outcome::Client("9.8.7.6:4321".parse().map_err(io::Error::other)?)
        );
        let mut buf = [0u8; 16];
        let n = recv(&server, &mut buf, 0)?;
        assert_eq!(&buf[..n], b"GET /");
        Ok(())
    }

    #[test]
    fn silence_times_out() -> io::Result<()> {
        let (_client, server) = pair()?;
        let (_, outcome) = run(server, rules(RouteBy::ProxyProtocol, 100))?;
        assert_eq!(outcome, Outcome::Reject);
        let (_client, server) = pair()?;
        let (_, outcome) = run(server, rules(RouteBy::Header("x-real-ip".into()), 100))?;
        assert_eq!(outcome, Outcome::Fallback);
        Ok(())
    }

    #[test]
    fn garbage_from_a_trusted_proxy_is_rejected() -> io::Result<()> {
        let (mut client, server) = pair()?;
        client.write_all(b"GET / HTTP/1.1\r\n\r\n")?;
        let (_, outcome) = run(server, rules(RouteBy::ProxyProtocol, 2000))?;
        assert_eq!(outcome, Outcome::Reject);
        Ok(())
    }
}
