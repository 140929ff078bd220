//! loadgen: an HTTP/1.1 load generator for loopback benchmarks whose
//! connections come from many distinct 127.x.y.z source addresses.

mod args;
mod http;
mod stats;

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::TcpSocket;
use tokio::task::{JoinError, JoinSet};
use tokio::time::{sleep_until, timeout_at, Instant};

use args::{Config, Mode, Parsed};
use http::{build_request, Conn, ExchangeError};
use stats::{ErrKind, Outcome, Stats, Summary};

fn main() -> ExitCode {
    let cfg = match args::parse(std::env::args().skip(1)) {
        Ok(Parsed::Run(cfg)) => cfg,
        Ok(Parsed::Help) => {
            print!("{}", args::USAGE);
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("loadgen: {e}");
            return ExitCode::from(2);
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cfg.threads)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("loadgen: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let (stats, elapsed) = rt.block_on(run(&cfg));
    for (i, k) in ErrKind::ALL.iter().enumerate() {
        if let Some(msg) = &stats.samples[i] {
            eprintln!("loadgen: {} x{}, first: {msg}", k.name(), stats.errors[i]);
        }
    }
    let summary = Summary::new(cfg.mode.name(), stats, elapsed, cfg.sources.len(), cfg.rate);
    if cfg.json {
        println!("{}", summary.json());
    } else {
        println!("{}", summary.human());
    }
    // Drop the runtime without waiting for abandoned tasks (there should be none).
    rt.shutdown_timeout(Duration::from_millis(100));
    ExitCode::SUCCESS
}

/// State shared by all request loops of a run.
struct Ctx {
    dst: SocketAddr,
    sources: Vec<IpAddr>,
    next_source: AtomicUsize,
    req_close: Vec<u8>,
    req_keepalive: Vec<u8>,
    start: Instant,
    deadline: Instant,
    timeout: Duration,
    limit: Option<u64>,
    issued: AtomicU64,
}

impl Ctx {
    /// Next source address, round-robin over all connections of the run.
    fn source(&self) -> IpAddr {
        let i = self.next_source.fetch_add(1, Ordering::Relaxed);
        self.sources[i % self.sources.len()]
    }

    /// Takes a permit to start one request under `--requests`.
    fn take_ticket(&self) -> bool {
        match self.limit {
            None => true,
            Some(n) => self.issued.fetch_add(1, Ordering::Relaxed) < n,
        }
    }

    fn running(&self) -> bool {
        Instant::now() < self.deadline
    }

    /// A timer fired: the run ended (abandon) or the request timed out.
    fn timed_out(&self, kind: ErrKind) -> Outcome {
        if self.running() {
            Outcome::Err(kind, "no result within the request timeout".into())
        } else {
            Outcome::Abandoned
        }
    }

    /// Per-request deadline for a request started at `t0`.
    fn request_deadline(&self, t0: Instant) -> Instant {
        t0.checked_add(self.timeout)
            .map_or(self.deadline, |d| d.min(self.deadline))
    }

    /// Opens a connection from the next source address.
    async fn connect(&self, dl: Instant) -> Result<Conn, Outcome> {
        let src = self.source();
        let sock = new_socket(src, self.dst)
            .map_err(|e| Outcome::Err(ErrKind::Other, format!("socket/bind from {src}: {e}")))?;
        match timeout_at(dl, sock.connect(self.dst)).await {
            Err(_) => Err(self.timed_out(ErrKind::ConnectTimeout)),
            Ok(Err(e)) => Err(classify_connect(e, src)),
            Ok(Ok(stream)) => Ok(Conn::new(stream)),
        }
    }

    /// One request/response on `conn`; TTFB counts from `t0`. Also returns
    /// whether the connection may carry another request.
    async fn exchange(
        &self,
        conn: &mut Conn,
        req: &[u8],
        t0: Instant,
        dl: Instant,
    ) -> (Outcome, bool) {
        match timeout_at(dl, conn.exchange(req)).await {
            Err(_) => (self.timed_out(ErrKind::ReadTimeout), false),
            Ok(Err(e)) => (classify_exchange(e), false),
            Ok(Ok(r)) => {
                let ttfb = r.first_byte.saturating_duration_since(t0);
                let outcome = if (200..300).contains(&r.status) {
                    Outcome::Ok(ttfb)
                } else {
                    Outcome::Err(ErrKind::BadResponse, format!("HTTP status {}", r.status))
                };
                (outcome, !r.close)
            }
        }
    }

    /// A new connection carrying one `Connection: close` request.
    async fn one_shot(&self) -> Outcome {
        let t0 = Instant::now();
        let dl = self.request_deadline(t0);
        let mut conn = match self.connect(dl).await {
            Ok(c) => c,
            Err(o) => return o,
        };
        self.exchange(&mut conn, &self.req_close, t0, dl).await.0
    }
}

/// A TCP socket bound to `src` (port chosen at connect time), TCP_NODELAY set.
fn new_socket(src: IpAddr, dst: SocketAddr) -> io::Result<TcpSocket> {
    let sock = Socket::new(Domain::for_address(dst), Type::STREAM, Some(Protocol::TCP))?;
    sock.set_nonblocking(true)?;
    sock.set_tcp_nodelay(true)?;
    if src.is_ipv4() {
        bind_address_no_port(&sock);
    }
    sock.bind(&SocketAddr::new(src, 0).into())?;
    Ok(TcpSocket::from_std_stream(sock.into()))
}

/// IP_BIND_ADDRESS_NO_PORT: defer the local port choice to connect(), so
/// ports are only unique per 4-tuple and TIME_WAIT entries can be reused.
/// Best effort: without it, binding still works with fewer usable ports.
#[cfg(target_os = "linux")]
fn bind_address_no_port(sock: &Socket) {
    use std::os::fd::AsRawFd;
    let one: libc::c_int = 1;
    // SAFETY: valid fd owned by `sock`, pointer and length describe `one`.
    unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

#[cfg(not(target_os = "linux"))]
fn bind_address_no_port(_sock: &Socket) {}

fn classify_connect(e: io::Error, src: IpAddr) -> Outcome {
    let kind = match e.kind() {
        io::ErrorKind::ConnectionRefused => ErrKind::Refused,
        io::ErrorKind::TimedOut => ErrKind::ConnectTimeout,
        io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted => ErrKind::Reset,
        _ => ErrKind::Other,
    };
    Outcome::Err(kind, format!("connect from {src}: {e}"))
}

fn classify_exchange(e: ExchangeError) -> Outcome {
    match e {
        ExchangeError::Io(e) => {
            let kind = match e.kind() {
                io::ErrorKind::ConnectionReset
                | io::ErrorKind::ConnectionAborted
                | io::ErrorKind::BrokenPipe => ErrKind::Reset,
                io::ErrorKind::TimedOut => ErrKind::ReadTimeout,
                _ => ErrKind::Other,
            };
            Outcome::Err(kind, e.to_string())
        }
        ExchangeError::Eof { got_bytes } => Outcome::Err(
            ErrKind::Reset,
            if got_bytes {
                "connection closed in the middle of the response".into()
            } else {
                "connection closed before any response byte".into()
            },
        ),
        ExchangeError::Bad(msg) => Outcome::Err(ErrKind::BadResponse, msg),
    }
}

fn join_outcome(r: Result<Outcome, JoinError>) -> Outcome {
    r.unwrap_or_else(|e| Outcome::Err(ErrKind::Other, format!("task failed: {e}")))
}

/// Runs the configured mode; returns the merged stats and the measured time.
async fn run(cfg: &Config) -> (Stats, Duration) {
    let start = Instant::now();
    let deadline = start
        .checked_add(cfg.duration)
        .unwrap_or_else(|| start + Duration::from_secs(86_400 * 365));
    let ctx = Arc::new(Ctx {
        dst: cfg.target.addr,
        sources: cfg.sources.clone(),
        next_source: AtomicUsize::new(0),
        req_close: build_request(&cfg.target.path, &cfg.target.host_header, true),
        req_keepalive: build_request(&cfg.target.path, &cfg.target.host_header, false),
        start,
        deadline,
        timeout: cfg.timeout,
        limit: cfg.requests,
        issued: AtomicU64::new(0),
    });

    let mut set = JoinSet::new();
    match cfg.mode {
        Mode::Close => {
            for _ in 0..cfg.connections {
                set.spawn(close_loop(ctx.clone()));
            }
        }
        Mode::KeepAlive => {
            for _ in 0..cfg.connections {
                set.spawn(keepalive_loop(ctx.clone()));
            }
        }
        Mode::Rate => {
            let rate = cfg.rate.unwrap_or(1.0);
            set.spawn(rate_loop(ctx.clone(), rate, cfg.max_inflight));
        }
    }
    let mut total = Stats::default();
    while let Some(r) = set.join_next().await {
        match r {
            Ok(st) => total.merge(st),
            Err(e) => total.record(Outcome::Err(ErrKind::Other, format!("task failed: {e}"))),
        }
    }
    let elapsed = Instant::now()
        .min(deadline)
        .saturating_duration_since(start);
    (total, elapsed)
}

/// Closed loop: one new connection per request, back to back.
async fn close_loop(ctx: Arc<Ctx>) -> Stats {
    let mut st = Stats::default();
    while ctx.running() && ctx.take_ticket() {
        st.record(ctx.one_shot().await);
    }
    st
}

/// Closed loop on a persistent connection; reconnects (next source address)
/// when the server closes it or a request fails. The TTFB of the first
/// request on a connection includes the connect.
async fn keepalive_loop(ctx: Arc<Ctx>) -> Stats {
    let mut st = Stats::default();
    let mut conn: Option<Conn> = None;
    while ctx.running() && ctx.take_ticket() {
        let t0 = Instant::now();
        let dl = ctx.request_deadline(t0);
        let mut c = match conn.take() {
            Some(c) => c,
            None => match ctx.connect(dl).await {
                Ok(c) => c,
                Err(o) => {
                    st.record(o);
                    continue;
                }
            },
        };
        let (outcome, reusable) = ctx.exchange(&mut c, &ctx.req_keepalive, t0, dl).await;
        st.record(outcome);
        if reusable {
            conn = Some(c);
        }
    }
    st
}

/// Open loop: starts a new connection every 1/rate s on schedule, whatever
/// the completions do, up to `cap` in flight (excess starts are skipped).
async fn rate_loop(ctx: Arc<Ctx>, rate: f64, cap: usize) -> Stats {
    let mut st = Stats::default();
    let mut set: JoinSet<(Outcome, Duration)> = JoinSet::new();
    let due = |i: u64| -> Instant {
        Duration::try_from_secs_f64(i as f64 / rate)
            .ok()
            .and_then(|d| ctx.start.checked_add(d))
            .map_or(ctx.deadline, |t| t.min(ctx.deadline))
    };
    let mut i: u64 = 0;
    'run: loop {
        while let Some(r) = set.try_join_next() {
            record_timed(&mut st, r);
        }
        let now = Instant::now();
        if now >= ctx.deadline {
            break;
        }
        // Start everything that is due (timer granularity is ~1 ms, so
        // high rates start in small batches).
        loop {
            let t = due(i);
            if t > now {
                break;
            }
            if t >= ctx.deadline || !ctx.take_ticket() {
                break 'run;
            }
            i += 1;
            if set.len() >= cap {
                st.skipped += 1;
                continue;
            }
            let c = ctx.clone();
            set.spawn(async move {
                let lag = Instant::now().saturating_duration_since(t);
                (c.one_shot().await, lag)
            });
        }
        sleep_until(due(i)).await;
    }
    // In-flight requests end by the run deadline at the latest (abandoned).
    while let Some(r) = set.join_next().await {
        record_timed(&mut st, r);
    }
    st
}

/// Records a rate-mode result: the outcome and how late the start was.
fn record_timed(st: &mut Stats, r: Result<(Outcome, Duration), JoinError>) {
    match r {
        Ok((o, lag)) => {
            st.max_lag = st.max_lag.max(lag);
            st.record(o);
        }
        Err(e) => st.record(join_outcome(Err(e))),
    }
}
