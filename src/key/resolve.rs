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
use tokio::sync::oneshot;

use crate::key::address::AddressText;
use crate::key::forwarded::{self, Key};
use crate::key::proxy::{self, Header};
use crate::key::sid::{self, Sid};
use crate::key::trust::Trusted;

/// Where the route key of a connection comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteBy {
    /// The peer's own address (the default).
    Address,
    /// A request header of a trusted proxy (lower case); `x-forwarded-for` has its own rule.
    Header(String),
    /// A PROXY protocol header sent by a trusted proxy.
    ProxyProtocol,
    /// The engine.io session id in the request line of any peer (see [`crate::key::sid`]): the
    /// worker whose place it names, or a new session chosen by the balancing method.
    Sid,
}

impl std::str::FromStr for RouteBy {
    type Err = std::convert::Infallible;

    /// The `routeBy` option: `address`, `proxy-protocol`, or any other text as a header name
    /// (compared in lower case). `lib/options.js` has checked it is a valid header name.
    fn from_str(text: &str) -> Result<RouteBy, Self::Err> {
        Ok(match text {
            "address" => RouteBy::Address,
            "proxy-protocol" => RouteBy::ProxyProtocol,
            "sid" => RouteBy::Sid,
            header => RouteBy::Header(header.to_ascii_lowercase()),
        })
    }
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
    /// `routeBy: 'sid'` with the `node` option: this server's node name (ids of other nodes
    /// are answered here, see [`Outcome::OtherNode`]).
    pub node: Option<Box<[u8]>>,
}

impl Rules {
    /// Whether a connection from `peer` is resolved here rather than routed by its address.
    /// Session ids are read from every peer: an id only names a worker, it is no claim to
    /// believe (a forged one reaches a worker that does not know it, as a new session would).
    pub(crate) fn applies_to(&self, peer: &SocketAddr) -> bool {
        match self.route_by {
            RouteBy::Address => false,
            RouteBy::Sid => true,
            _ => self.trusted.contains(peer.ip()),
        }
    }
}

/// What resolution found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Outcome {
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
    /// `routeBy: 'sid'`: the request names a session of this place (live or not).
    Place(usize),
    /// `routeBy: 'sid'`: a TLS handshake, whose request line cannot be read: routed by the
    /// peer's address among the ready workers.
    Tls,
    /// `routeBy: 'sid'`: no session id (or none readable in time): a new session.
    NewSession,
    /// `routeBy: 'sid'`: the id names a session of another node (its name). No worker here
    /// knows it, so the router answered engine.io's 400 "Session ID unknown" itself and the
    /// connection is only to be closed.
    OtherNode(String),
}

/// The most bytes a route key may be looked for in: a head must fit in the socket's receive
/// buffer to be peeked whole (the kernel's default leaves room for 64 KiB), and Node's own
/// limit on a request head is 16 KiB.
pub const MAX_PEEK_LIMIT: usize = 64 * 1024;

/// The pause after a look at a head that was not complete yet. Segments that arrive meanwhile
/// are seen in one look (a head sent a byte at a time costs a few looks, not one per byte), and
/// the loop cannot spin whatever the socket reports.
const FIRST_PAUSE: Duration = Duration::from_millis(1);
/// The longest such pause: the most a head's last segment waits to be seen.
const MAX_PAUSE: Duration = Duration::from_millis(32);

/// Reads the route key of `conn` under `rules`; gives the connection back with the outcome.
/// `give_up` ends the reading early (the router needs the room) with the same outcome as a
/// timeout.
pub(crate) async fn resolve(
    conn: OwnedFd,
    rules: Arc<Rules>,
    mut give_up_now: oneshot::Receiver<()>,
) -> (OwnedFd, Outcome) {
    // SAFETY: `conn` is owned and moved in; it stays open until into_inner gives it back.
    let watched = match unsafe { AsyncFd::register_with_interest(conn, Interest::READABLE) } {
        Ok(watched) => watched,
        Err(e) => return (e.into_parts().0, give_up(&rules)),
    };
    let outcome = tokio::select! {
        outcome = tokio::time::timeout(rules.timeout, read(&watched, &rules)) => {
            outcome.unwrap_or_else(|_elapsed| give_up(&rules))
        }
        _ = &mut give_up_now => give_up(&rules),
    };
    if let Outcome::OtherNode(_) = outcome {
        // Giving up also ends the wait for the client to close: the answer is written by then.
        tokio::select! {
            () = answer_unknown_session(&watched) => {}
            _ = &mut give_up_now => {}
        }
    }
    (watched.into_inner(), outcome)
}

/// engine.io's answer to a request for a session it does not know, closing the connection.
pub(crate) const UNKNOWN_SESSION: &[u8] = b"HTTP/1.1 400 Bad Request\r\n\
Content-Type: application/json\r\nContent-Length: 41\r\nConnection: close\r\n\r\n\
{\"code\":1,\"message\":\"Session ID unknown\"}";

/// How long the client is given to read [`UNKNOWN_SESSION`] and close its side.
const LINGER: Duration = Duration::from_secs(1);

/// Writes [`UNKNOWN_SESSION`] and ends the sending side, then reads (and drops) what the client
/// sends until it closes, for at most [`LINGER`]: a socket closed with unread bytes (the request
/// itself, a body) is reset, and a reset can destroy the answer before the client reads it.
async fn answer_unknown_session(watched: &AsyncFd<OwnedFd>) {
    let fd = watched.get_ref().as_raw_fd();
    // SAFETY: a valid buffer and an open descriptor. A new connection's send buffer takes the
    // answer whole; a failure (a reset client) leaves nothing to answer. Node ignores SIGPIPE.
    unsafe {
        libc::send(
            fd,
            UNKNOWN_SESSION.as_ptr().cast(),
            UNKNOWN_SESSION.len(),
            0,
        );
        libc::shutdown(fd, libc::SHUT_WR);
    }
    let mut sink = [0u8; 4096];
    let drain = async {
        loop {
            let Ok(mut guard) = watched.readable().await else {
                return;
            };
            match guard.try_io(|fd| recv(fd.get_ref(), &mut sink, 0)) {
                Ok(Ok(0)) | Ok(Err(_)) => return,
                Ok(Ok(_)) | Err(_) => {}
            }
        }
    };
    let _ = tokio::time::timeout(LINGER, drain).await;
}

/// Without a key: header routing falls back to the address; a trusted proxy that speaks PROXY
/// protocol must send its header.
fn give_up(rules: &Rules) -> Outcome {
    match rules.route_by {
        RouteBy::ProxyProtocol => Outcome::Reject,
        RouteBy::Sid => Outcome::NewSession,
        _ => Outcome::Fallback,
    }
}

async fn read(watched: &AsyncFd<OwnedFd>, rules: &Rules) -> Outcome {
    let mut buf = vec![0u8; rules.limit];
    let mut pause = FIRST_PAUSE;
    loop {
        let Ok(mut guard) = watched.readable().await else {
            return give_up(rules);
        };
        // Read-closed: the peer sent FIN (or the connection broke). Whatever is there now is
        // all there will ever be.
        let closed = guard.ready().is_read_closed();
        #[cfg(test)]
        tests::LOOKS.with(|looks| looks.set(looks.get() + 1));
        let seen = match guard.try_io(|fd| recv(fd.get_ref(), &mut buf, libc::MSG_PEEK)) {
            Ok(Ok(0)) | Ok(Err(_)) => return give_up(rules),
            Ok(Ok(n)) => n,
            Err(_would_block) => continue,
        };
        match decide(watched.get_ref(), rules, &mut buf, seen) {
            Some(outcome) => return outcome,
            // Incomplete, and no byte will come: final, as a malformed head.
            None if closed || peer_closed(watched.get_ref()) => return give_up(rules),
            None => {
                // Wait for more bytes: what is there now was seen.
                guard.clear_ready();
                drop(guard);
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(MAX_PAUSE);
            }
        }
    }
}

/// What the first `seen` bytes of the stream decide, or None while the head is incomplete.
fn decide(conn: &OwnedFd, rules: &Rules, buf: &mut [u8], seen: usize) -> Option<Outcome> {
    let full = seen == buf.len();
    match &rules.route_by {
        RouteBy::Address => Some(Outcome::Fallback),
        RouteBy::Sid => match sid::from_head(&buf[..seen], rules.node.as_deref()) {
            Sid::Place(place) => Some(Outcome::Place(place)),
            Sid::OtherNode(name) => Some(Outcome::OtherNode(name)),
            Sid::New => Some(Outcome::NewSession),
            Sid::Tls => Some(Outcome::Tls),
            Sid::Incomplete if full => Some(Outcome::NewSession),
            Sid::Incomplete => None,
        },
        RouteBy::Header(name) => match forwarded::route_key(&buf[..seen], name, &rules.trusted) {
            Key::Text(text) => Some(Outcome::Key(text)),
            Key::Fallback => Some(Outcome::Fallback),
            Key::Incomplete if full => Some(Outcome::Fallback),
            Key::Incomplete => None,
        },
        RouteBy::ProxyProtocol => match proxy::parse(&buf[..seen], rules.limit) {
            Header::Complete { len, source } => {
                // Exactly the header: the application's bytes stay for the worker.
                match recv(conn, &mut buf[..len], 0) {
                    Ok(n) if n == len => Some(source.map_or(Outcome::Local, Outcome::Client)),
                    _ => Some(Outcome::Reject),
                }
            }
            Header::Invalid => Some(Outcome::Reject),
            Header::Incomplete if full => Some(Outcome::Reject),
            Header::Incomplete => None,
        },
    }
}

/// Whether the peer has shut down its sending side, asked of the kernel directly: on a stream
/// whose unread bytes stay (we only peek), readiness alone may not say it.
#[cfg(any(target_os = "linux", target_os = "android"))]
fn peer_closed(fd: &OwnedFd) -> bool {
    let mut poll = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLRDHUP,
        revents: 0,
    };
    // SAFETY: one valid pollfd, no wait.
    let n = unsafe { libc::poll(&mut poll, 1, 0) };
    n > 0 && poll.revents & (libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR) != 0
}

/// Elsewhere (kqueue) the end of the stream reaches the readiness itself (`is_read_closed`).
#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn peer_closed(_fd: &OwnedFd) -> bool {
    false
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
pub(crate) fn key_of(outcome: &Outcome, peer: Option<&SocketAddr>) -> String {
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
    use std::cell::Cell;
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};

    thread_local! {
        /// Peeks made by `read` on this thread (each test runs its runtime on its own thread).
        pub(super) static LOOKS: Cell<u32> = const { Cell::new(0) };
    }

    fn rules(route_by: RouteBy, timeout_ms: u64) -> Arc<Rules> {
        Arc::new(Rules {
            route_by,
            trusted: Trusted::parse(&["127.0.0.0/8"]).unwrap_or_default(),
            limit: 256,
            timeout: Duration::from_millis(timeout_ms),
            node: None,
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
        let (_keep, give_up_now) = oneshot::channel();
        Ok(rt.block_on(resolve(conn, rules, give_up_now)))
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

    /// A trusted peer that sends part of a head and then FIN: final at once, not at the
    /// timeout, and the loop does not spin meanwhile (it once did, forever).
    #[test]
    fn incomplete_head_then_fin_is_final() -> io::Result<()> {
        for (route_by, head) in [
            (RouteBy::ProxyProtocol, &b"PROXY TCP4 1.2.3.4"[..]),
            (
                RouteBy::Header("x-forwarded-for".into()),
                &b"GET / HTTP/1.1\r\nX-Forwarded-For: 1.2.3.4\r\n"[..],
            ),
        ] {
            let (mut client, server) = pair()?;
            client.write_all(head)?;
            client.shutdown(std::net::Shutdown::Write)?;
            let expected = give_up(&rules(route_by.clone(), 0));
            let started = std::time::Instant::now();
            let (_, outcome) = run(server, rules(route_by, 10_000))?;
            assert_eq!(outcome, expected);
            assert!(
                started.elapsed() < Duration::from_secs(2),
                "{:?}",
                started.elapsed()
            );
        }
        Ok(())
    }

    /// A head sent a byte at a time: a few looks, not one per byte.
    #[test]
    fn a_head_in_single_bytes_costs_few_looks() -> io::Result<()> {
        let (mut client, server) = pair()?;
        client.set_nodelay(true)?;
        let head = b"GET / HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 9.9.9.9\r\n\r\n".to_vec();
        let writer = std::thread::spawn(move || -> io::Result<TcpStream> {
            for byte in head {
                client.write_all(&[byte])?;
            }
            Ok(client)
        });
        LOOKS.with(|looks| looks.set(0));
        let (_, outcome) = run(
            server,
            rules(RouteBy::Header("x-forwarded-for".into()), 5000),
        )?;
        let _client = writer
            .join()
            .map_err(|_| io::Error::other("writer panicked"))??;
        assert_eq!(outcome, Outcome::Key("9.9.9.9".into()));
        // 54 segments; the growing pause coalesces them (at most log2(32) + a few looks while
        // the writer thread is scheduled).
        let looks = LOOKS.with(Cell::get);
        assert!(looks <= 16, "{looks} looks for 54 one-byte segments");
        Ok(())
    }

    /// The largest head allowed is peeked whole, not left to time out.
    #[test]
    fn the_largest_head_is_seen_whole() -> io::Result<()> {
        let (mut client, server) = pair()?;
        let mut head = b"GET / HTTP/1.1\r\nX-Pad: ".to_vec();
        let tail = b"\r\nX-Forwarded-For: 9.9.9.9\r\n\r\n";
        head.resize(MAX_PEEK_LIMIT - tail.len(), b'a');
        head.extend_from_slice(tail);
        let writer = std::thread::spawn(move || client.write_all(&head).map(|_| client));
        let mut r = (*rules(RouteBy::Header("x-forwarded-for".into()), 5000)).clone();
        r.limit = MAX_PEEK_LIMIT;
        let started = std::time::Instant::now();
        let (_, outcome) = run(server, Arc::new(r))?;
        let _client = writer
            .join()
            .map_err(|_| io::Error::other("writer panicked"))??;
        assert_eq!(outcome, Outcome::Key("9.9.9.9".into()));
        assert!(started.elapsed() < Duration::from_secs(2));
        Ok(())
    }

    #[test]
    fn giving_up_ends_the_reading_at_once() -> io::Result<()> {
        let (_client, server) = pair()?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let (now, give_up_now) = oneshot::channel();
        let _ = now.send(());
        let started = std::time::Instant::now();
        let (_, outcome) = rt.block_on(resolve(
            server,
            rules(RouteBy::ProxyProtocol, 10_000),
            give_up_now,
        ));
        assert_eq!(outcome, Outcome::Reject);
        assert!(started.elapsed() < Duration::from_secs(1));
        Ok(())
    }

    /// `routeBy: 'sid'`: a request line whose sid arrives in two segments is read whole, from
    /// any peer (trusted or not), and nothing is consumed.
    #[test]
    fn a_sid_split_across_segments_is_read_whole() -> io::Result<()> {
        let untrusted: SocketAddr = "10.1.2.3:5".parse().map_err(io::Error::other)?;
        assert!(rules(RouteBy::Sid, 0).applies_to(&untrusted));
        let (mut client, server) = pair()?;
        client.set_nodelay(true)?;
        client.write_all(b"GET /socket.io/?EIO=4&transport=polling&sid=AF")?;
        let writer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            client
                .write_all(b"abcdefghij-_KLMNOP HTTP/1.1\r\nHost: x\r\n\r\n")
                .map(|_| client)
        });
        let (server, outcome) = run(server, rules(RouteBy::Sid, 2000))?;
        let _client = writer
            .join()
            .map_err(|_| io::Error::other("writer panicked"))??;
        assert_eq!(outcome, Outcome::Place(5));
        let mut buf = [0u8; 8];
        let n = recv(&server, &mut buf, 0)?;
        assert_eq!(&buf[..n], b"GET /soc");
        Ok(())
    }

    /// A request line cut by FIN is final at once: a new session.
    #[test]
    fn a_cut_request_line_is_a_new_session() -> io::Result<()> {
        let (mut client, server) = pair()?;
        client.write_all(b"GET /socket.io/?EIO=4&sid=AFabc")?;
        client.shutdown(std::net::Shutdown::Write)?;
        let started = std::time::Instant::now();
        let (_, outcome) = run(server, rules(RouteBy::Sid, 10_000))?;
        assert_eq!(outcome, Outcome::NewSession);
        assert!(started.elapsed() < Duration::from_secs(2));
        Ok(())
    }

    /// `routeBy: 'sid'` with a node name: an id of another node is answered 400 by the router
    /// (engine.io's body, `Connection: close`), and the client reads all of it although it
    /// sent a body the router never read.
    #[test]
    fn another_nodes_session_is_answered_here() -> io::Result<()> {
        let (mut client, server) = pair()?;
        let body = "x".repeat(3000);
        client.write_all(
            format!(
                "POST /socket.io/?EIO=4&transport=polling&sid=web2.AFabcdefghij-_KLMNOP HTTP/1.1\r\n\
                 Content-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        )?;
        let rules = Arc::new(Rules {
            node: Some(b"web1".to_vec().into_boxed_slice()),
            ..(*rules(RouteBy::Sid, 2000)).clone()
        });
        let reader = std::thread::spawn(move || {
            let mut answer = Vec::new();
            client.set_read_timeout(Some(Duration::from_secs(5)))?;
            client.read_to_end(&mut answer)?;
            Ok::<_, io::Error>(answer)
        });
        let (server, outcome) = run(server, rules)?;
        assert_eq!(outcome, Outcome::OtherNode("web2".into()));
        drop(server);
        let answer = reader
            .join()
            .map_err(|_| io::Error::other("reader panicked"))??;
        assert_eq!(answer, UNKNOWN_SESSION);
        let text = String::from_utf8_lossy(UNKNOWN_SESSION);
        let (_, body) = text.split_once("\r\n\r\n").unwrap_or_default();
        assert!(text.contains(&format!("Content-Length: {}\r\n", body.len())));
        Ok(())
    }

    /// A client that never closes after the answer holds the task at most until it is given
    /// up (the router needs the room), not for the whole linger.
    #[test]
    fn giving_up_ends_the_linger_after_the_answer() -> io::Result<()> {
        let (mut client, server) = pair()?;
        client.write_all(b"GET /?sid=web2.AFabcdefghij-_KLMNOP HTTP/1.1\r\n\r\n")?;
        let rules = Arc::new(Rules {
            node: Some(b"web1".to_vec().into_boxed_slice()),
            ..(*rules(RouteBy::Sid, 2000)).clone()
        });
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let (now, give_up_now) = oneshot::channel();
        let started = std::time::Instant::now();
        let (_, outcome) = rt.block_on(async {
            let task = tokio::spawn(resolve(server, rules, give_up_now));
            tokio::time::sleep(Duration::from_millis(100)).await;
            let _ = now.send(());
            task.await
        })?;
        assert_eq!(outcome, Outcome::OtherNode("web2".into()));
        assert!(started.elapsed() < LINGER, "{:?}", started.elapsed());
        let mut answer = vec![0; UNKNOWN_SESSION.len()];
        client.read_exact(&mut answer)?;
        assert_eq!(answer, UNKNOWN_SESSION);
        Ok(())
    }
}
