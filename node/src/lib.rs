//! The binding: JavaScript classes over the core, nothing more.
//!
//! OS errors are thrown as `Error`s whose message starts with the errno name (`EADDRINUSE: ...`),
//! ending with `[listener N]` when binding listener N failed;
//! `lib/binding.js` turns them into Node-style errors with `code`, `errno` and `syscall`.

use std::io;
use std::os::fd::{BorrowedFd, IntoRawFd};

use napi::bindgen_prelude::*;
use napi::threadsafe_function::{ThreadsafeFunction, ThreadsafeFunctionCallMode};
use napi_derive::napi;

use sticky_rs::address::AddressText;
use sticky_rs::channel::Meta;
use sticky_rs::hash::{djb2_str, Hash};
use sticky_rs::resolve::{RouteBy, Rules, MAX_PEEK_LIMIT};
use sticky_rs::slot_for;
use sticky_rs::trust::Trusted;
use sticky_rs::{listener, receiver, router};

pub mod upgrade;

fn os_error(e: io::Error) -> Error {
    let bind = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<router::BindError>());
    let (code, listener) = match bind {
        Some(b) => (Some(b.code), Some(b.listener)),
        None => (e.raw_os_error(), None),
    };
    let mut reason = match code {
        Some(code) => {
            let errno = nix::errno::Errno::from_raw(code);
            format!("{errno:?}: {}", errno.desc())
        }
        None => e.to_string(),
    };
    if let Some(listener) = listener {
        reason.push_str(&format!(" [listener {listener}]"));
    }
    Error::new(Status::GenericFailure, reason)
}

/// One address to listen on.
#[napi(object)]
pub struct ListenerOptions {
    /// Host to listen on; empty for dual-stack `::`.
    pub host: String,
    /// Port (0: any free port).
    pub port: u32,
    /// `listen()` backlog.
    pub backlog: u32,
}

/// Options of a [`Router`]; `lib/options.js` has validated them.
#[napi(object)]
pub struct RouterOptions {
    /// Where to listen, in order.
    pub listeners: Vec<ListenerOptions>,
    /// `address`, `proxy-protocol`, `sid`, or a header name in lower case.
    pub route_by: String,
    /// Addresses and CIDR ranges whose forwarded data is believed.
    pub trusted_proxies: Vec<String>,
    /// Bytes allowed to find a forwarded key.
    pub peek_limit: u32,
    /// Milliseconds allowed to find a forwarded key.
    pub peek_timeout: u32,
    /// Number of slots (workers).
    pub slots: u32,
    /// Connections a slot holds while it has no ready worker, at most.
    pub queue_limit: u32,
    /// `djb2` or `djb2-mix`.
    pub hash: String,
    /// Milliseconds a connection may wait for a ready worker; 0: no limit.
    pub queue_timeout: u32,
    /// Log channel changes and queue events to stderr.
    pub debug: bool,
    /// Also log a line per connection (its route key and slot, a refused PROXY header).
    pub debug_connections: bool,
    /// `primary` or `kernel` (`lib/options.js` resolved `auto`).
    pub dispatch: String,
    /// `routeBy: 'sid'`: `least-connection` (default), `round-robin` or `random`.
    pub load_balancing_method: Option<String>,
    /// `routeBy: 'sid'`: this server's node name, which its session ids start with.
    pub node: Option<String>,
    /// An upgrade (issue 22): listening descriptors the old primary passed on, used instead of
    /// binding, in the order of its `listeningFds()`.
    pub inherited: Option<Vec<i32>>,
}

/// The address a router listens on, shaped like `server.address()`.
#[napi(object)]
pub struct AddressInfo {
    /// The IP address, as text.
    pub address: String,
    /// `IPv4` or `IPv6`.
    pub family: String,
    /// The bound port.
    pub port: u32,
}

/// A new worker channel: its id and the worker's end, to send to that worker alone.
#[napi(object)]
pub struct ChannelEnd {
    /// Names the channel in `release`, `retire` and the router's `switched` events.
    pub id: i64,
    /// The worker's end; the caller owns it.
    pub fd: i32,
}

/// Counters of one slot, see `stats.rs`.
#[napi(object)]
pub struct SlotStats {
    /// Connections accepted for the slot.
    pub accepted: f64,
    /// Connections its workers confirmed.
    pub delivered: f64,
    /// Waiting now: in the primary, and with kernel dispatch in the kernel's accept queues.
    pub queued: f64,
    /// Sent, not yet confirmed, now.
    pub in_flight: f64,
    /// Put back in the queue after their worker died or missed them.
    pub redelivered: f64,
    /// Closed unserved (queue full, over the slot's share, or waited too long).
    pub dropped: f64,
    /// The part of `dropped` that waited too long.
    pub expired: f64,
    /// The part of `dropped` closed on arrival: the slot held its share of the router's connections.
    pub over_share: f64,
    /// Waiting connections closed because their client hung up.
    pub abandoned: f64,
    /// The channel the slot delivers to now (0: none).
    pub channel: f64,
}

/// Kernel dispatch: what the primary's checks of one listener's `SO_REUSEPORT` group found.
#[napi(object)]
pub struct KernelHealth {
    /// Repairs made since the group was bound (code holding a member changed it).
    pub repairs: f64,
    /// What was found and done, newest last (the last 16).
    pub recent: Vec<String>,
    /// Slots whose socket cannot be repaired: the primary routes their clients.
    pub detoured: Vec<u32>,
    /// Damage that lasts, now; empty when the group is whole.
    pub damage: Vec<String>,
}

/// Counters of a router.
#[napi(object)]
pub struct RouterStats {
    /// Kernel dispatch: per listener, its group's health; empty otherwise.
    pub kernel: Vec<KernelHealth>,
    /// `primary` or `kernel`: who picks each connection's worker.
    pub dispatch: String,
    /// One entry per slot.
    pub slots: Vec<SlotStats>,
    /// Failed `accept` calls.
    pub accept_errors: f64,
    /// Closed for a missing or malformed PROXY header from a trusted proxy.
    pub rejected: f64,
    /// From trusted proxies without a usable header: routed by their address.
    pub fallbacks: f64,
    /// `routeBy: 'sid'` with `node`: requests for another node's sessions, answered 400 here.
    pub other_node: f64,
    /// From trusted proxies, route key being read now.
    pub resolving: f64,
    /// From trusted proxies, given up unread for newer ones (the share of slow heads was full).
    pub given_up: f64,
    /// Listeners that failed and accept no more.
    pub listener_failures: f64,
    /// Sends to workers that failed and were retried (not a full socket, not a gone worker).
    pub send_errors: f64,
}

/// What the router reports, from its own thread (see `router::Event`).
#[napi(object)]
pub struct RouterEvent {
    /// `switched`, `drained`, `listenerFailed` or `stopped`.
    pub kind: String,
    /// With `switched` and `drained`: the slot.
    pub slot: Option<u32>,
    /// With `switched`: the channel the slot delivers to now.
    pub channel: Option<i64>,
    /// With `listenerFailed`: the listener's index.
    pub listener: Option<u32>,
    /// With `listenerFailed` and `stopped`: why.
    pub message: Option<String>,
}

impl From<router::Event> for RouterEvent {
    fn from(event: router::Event) -> Self {
        let empty = RouterEvent {
            kind: String::new(),
            slot: None,
            channel: None,
            listener: None,
            message: None,
        };
        match event {
            router::Event::Switched { slot, channel } => RouterEvent {
                kind: "switched".into(),
                slot: Some(slot as u32),
                channel: Some(channel as i64),
                ..empty
            },
            router::Event::Drained { slot } => RouterEvent {
                kind: "drained".into(),
                slot: Some(slot as u32),
                ..empty
            },
            router::Event::ListenerFailed { listener, error } => RouterEvent {
                kind: "listenerFailed".into(),
                listener: Some(u32::from(listener)),
                message: Some(error),
                ..empty
            },
            router::Event::Misbehaved {
                slot,
                channel,
                reason,
            } => RouterEvent {
                kind: "misbehaved".into(),
                slot: Some(slot as u32),
                channel: Some(channel as i64),
                message: Some(reason),
                ..empty
            },
            router::Event::Stopped { reason } => RouterEvent {
                kind: "stopped".into(),
                message: Some(reason),
                ..empty
            },
        }
    }
}

/// Called with each [`RouterEvent`]; weak: it does not keep the event loop alive.
type OnRouterEvent = ThreadsafeFunction<RouterEvent, (), RouterEvent, Status, false, true>;

/// The primary's native router.
#[napi]
pub struct Router {
    inner: Option<router::Router>,
}

#[napi]
impl Router {
    /// Binds and starts accepting; throws `EADDRINUSE: ...` and the like. `onEvent` gets the
    /// router's events.
    #[napi(constructor)]
    pub fn new(options: RouterOptions, on_event: OnRouterEvent) -> Result<Self> {
        let listeners = options
            .listeners
            .iter()
            .map(|l| {
                let port = u16::try_from(l.port)
                    .map_err(|_| Error::new(Status::InvalidArg, "port out of range"))?;
                Ok(router::Listen {
                    addr: listener::resolve(&l.host, port).map_err(os_error)?,
                    backlog: i32::try_from(l.backlog).unwrap_or(i32::MAX),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let trusted = Trusted::parse(&options.trusted_proxies).map_err(|entry| {
            Error::new(
                Status::InvalidArg,
                format!("not an address or range: {entry}"),
            )
        })?;
        let route_by: RouteBy = match options.route_by.parse() {
            Ok(route_by) => route_by,
            Err(never) => match never {},
        };
        let config = router::Config {
            listeners,
            policy: router::Policy {
                rules: Rules {
                    route_by,
                    trusted,
                    limit: (options.peek_limit as usize).clamp(16, MAX_PEEK_LIMIT),
                    timeout: std::time::Duration::from_millis(u64::from(options.peek_timeout)),
                    node: options
                        .node
                        .map(|name| name.into_bytes().into_boxed_slice()),
                },
                slots: options.slots as usize,
                hash: hash_named(&options.hash)?,
                queue_limit: options.queue_limit as usize,
                queue_timeout: (options.queue_timeout > 0)
                    .then(|| std::time::Duration::from_millis(u64::from(options.queue_timeout))),
                debug: options.debug,
                debug_connections: options.debug_connections,
                balance: options
                    .load_balancing_method
                    .as_deref()
                    .unwrap_or("least-connection")
                    .parse()
                    .map_err(|reason: String| Error::new(Status::InvalidArg, reason))?,
            },
            dispatch: options
                .dispatch
                .parse()
                .map_err(|reason: String| Error::new(Status::InvalidArg, reason))?,
        };
        let on_event: router::OnEvent = std::sync::Arc::new(move |event| {
            on_event.call(event.into(), ThreadsafeFunctionCallMode::NonBlocking);
        });
        let inner = router::Router::start_inherited(config, on_event, options.inherited)
            .map_err(os_error)?;
        Ok(Router { inner: Some(inner) })
    }

    fn inner(&self) -> Result<&router::Router> {
        self.inner.as_ref().ok_or_else(|| {
            Error::new(
                Status::GenericFailure,
                "sticky-rs: router is closed (the primary has shut down)",
            )
        })
    }

    /// Runs a command that has nothing left to do once the router is closed (workers exiting,
    /// retiring or a second shutdown after close).
    fn unless_closed(&self, command: impl FnOnce(&router::Router) -> io::Result<()>) -> Result<()> {
        self.inner
            .as_ref()
            .map_or(Ok(()), |inner| command(inner).map_err(os_error))
    }

    /// The bound addresses, one per listener.
    #[napi]
    pub fn addresses(&self) -> Result<Vec<AddressInfo>> {
        Ok(self
            .inner()?
            .local_addrs()
            .iter()
            .map(|addr| AddressInfo {
                address: addr.ip().to_string(),
                family: if addr.is_ipv4() { "IPv4" } else { "IPv6" }.into(),
                port: u32::from(addr.port()),
            })
            .collect())
    }

    /// Opens channel `id` for a new worker of `slot`: ids follow the order the workers were
    /// started in (see the core's `Router::open_channel`).
    #[napi]
    pub fn open_channel(&self, slot: u32, id: u32) -> Result<ChannelEnd> {
        let fd = self
            .inner()?
            .open_channel(slot as usize, u64::from(id))
            .map_err(os_error)?;
        Ok(ChannelEnd {
            id: i64::from(id),
            fd: fd.into_raw_fd(),
        })
    }

    /// With kernel dispatch: a descriptor (the caller owns it) of the member of `listener` that
    /// serves `slot`, for that slot's worker to listen on.
    #[napi]
    pub fn member(&self, listener: u32, slot: u32) -> Result<i32> {
        let fd = self
            .inner()?
            .member(listener as usize, slot as usize)
            .map_err(os_error)?;
        Ok(fd.into_raw_fd())
    }

    /// Sends nothing more to a channel whose worker is finishing; the slot waits for a new one.
    #[napi]
    pub fn retire(&self, id: i64) -> Result<()> {
        self.unless_closed(|inner| inner.retire(id as u64))
    }

    /// Closes the listener; accepted connections are still delivered. Kernel dispatch: the
    /// workers get at most `drainMs` to accept what the kernel had queued.
    #[napi]
    pub fn stop_accepting(&self, drain_ms: u32) -> Result<()> {
        let drain = std::time::Duration::from_millis(u64::from(drain_ms));
        self.unless_closed(|inner| inner.stop_accepting(drain))
    }

    /// Releases a channel whose worker is gone; nothing to do once the router is closed.
    #[napi]
    pub fn release(&self, id: i64) -> Result<()> {
        self.unless_closed(|inner| inner.release(id as u64))
    }

    /// A snapshot of the counters.
    #[napi]
    pub fn stats(&self) -> Result<RouterStats> {
        let inner = self.inner()?;
        let stats = inner.stats();
        Ok(RouterStats {
            dispatch: match inner.dispatch() {
                router::Dispatch::Primary => "primary",
                router::Dispatch::Kernel => "kernel",
            }
            .into(),
            slots: (0..inner.slots())
                .map(|i| {
                    let s = stats.snapshot(i);
                    SlotStats {
                        accepted: s.accepted as f64,
                        delivered: s.delivered as f64,
                        queued: (s.queued + inner.queued_in_kernel(i)) as f64,
                        in_flight: s.in_flight as f64,
                        redelivered: s.redelivered as f64,
                        dropped: s.dropped as f64,
                        expired: s.expired as f64,
                        over_share: s.over_share as f64,
                        abandoned: s.abandoned as f64,
                        channel: s.channel as f64,
                    }
                })
                .collect(),
            kernel: inner
                .kernel_health()
                .into_iter()
                .map(|h| KernelHealth {
                    repairs: h.repairs as f64,
                    recent: h.recent,
                    detoured: h.detoured.into_iter().map(|s| s as u32).collect(),
                    damage: h.damage,
                })
                .collect(),
            accept_errors: stats.accept_errors() as f64,
            rejected: stats.rejected() as f64,
            fallbacks: stats.fallbacks() as f64,
            other_node: stats.other_node() as f64,
            resolving: stats.resolving() as f64,
            given_up: stats.given_up() as f64,
            listener_failures: stats.listener_failures() as f64,
            send_errors: stats.send_errors() as f64,
        })
    }

    /// Closes the listener, every channel and every waiting connection. Idempotent. Throws if
    /// the router thread did not stop in time (it is then left behind).
    #[napi]
    pub fn close(&mut self) -> Result<()> {
        match self.inner.take() {
            Some(mut inner) => inner
                .close()
                .map_err(|e| Error::new(Status::GenericFailure, e.to_string())),
            None => Ok(()),
        }
    }
}

/// A connection as the worker receives it.
#[napi(object)]
pub struct Incoming {
    /// The connection's descriptor; the callback owns it.
    pub fd: i32,
    /// The index of the listener (and of the worker's server) it belongs to.
    pub listener: u32,
    /// The client a PROXY protocol header named, as Node would show it; absent otherwise.
    pub address: Option<String>,
    /// `IPv4` or `IPv6`, with `address`.
    pub family: Option<String>,
    /// The client's port, with `address`.
    pub port: Option<u32>,
}

/// Called as `(connections, lost, null)` with each batch, see `receiver.rs`; once as
/// `([], 0, message)` if reading the channel failed (nothing arrives after that).
type OnConnections = ThreadsafeFunction<
    FnArgs<(Vec<Incoming>, u32, Option<String>)>,
    (),
    FnArgs<(Vec<Incoming>, u32, Option<String>)>,
    Status,
    false,
>;

/// A worker's native receiver.
#[napi]
pub struct Receiver {
    inner: Option<receiver::Receiver>,
}

#[napi]
impl Receiver {
    /// Copies `fd` (the caller closes its own) and calls `onConnections(fds, lost, error)` per
    /// batch. The callback owns the descriptors it gets and answers with `ack(fds.length, lost)`;
    /// `error` (a string) means the channel failed and nothing more will arrive.
    #[napi(constructor)]
    pub fn new(fd: i32, on_connections: OnConnections) -> Result<Self> {
        if fd < 0 {
            return Err(Error::new(
                Status::InvalidArg,
                format!("not a descriptor: {fd}"),
            ));
        }
        // SAFETY: the caller (lib/worker.js) passes the fd of a handle it keeps open during this
        // call; the receiver only duplicates it.
        let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
        let inner = receiver::Receiver::start(borrowed, move |received| {
            let batch = match received {
                Ok(batch) => batch,
                Err(e) => {
                    let args = FnArgs::from((Vec::new(), 0, Some(e.to_string())));
                    on_connections.call(args, ThreadsafeFunctionCallMode::NonBlocking);
                    return;
                }
            };
            let fds: Vec<i32> = batch
                .conns
                .into_iter()
                .map(IntoRawFd::into_raw_fd)
                .collect();
            let incoming = fds
                .iter()
                .zip(
                    batch
                        .metas
                        .iter()
                        .chain(std::iter::repeat(&Meta::default())),
                )
                .map(|(&fd, meta)| Incoming {
                    fd,
                    listener: u32::from(meta.listener),
                    address: meta
                        .client
                        .map(|c| AddressText::new(&c).as_str().to_owned()),
                    family: meta
                        .client
                        .map(|c| if c.is_ipv4() { "IPv4" } else { "IPv6" }.to_owned()),
                    port: meta.client.map(|c| u32::from(c.port())),
                })
                .collect();
            let args = FnArgs::from((incoming, batch.lost, None));
            let status = on_connections.call(args, ThreadsafeFunctionCallMode::NonBlocking);
            if status != Status::Ok {
                for fd in fds {
                    let _ = nix::unistd::close(fd);
                }
            }
        })
        .map_err(os_error)?;
        Ok(Receiver { inner: Some(inner) })
    }

    fn inner(&self) -> Result<&receiver::Receiver> {
        self.inner
            .as_ref()
            .ok_or_else(|| Error::new(Status::GenericFailure, "sticky-rs: receiver is closed"))
    }

    // Each report returns true once everything is sent, false if it waits in the outbox for a
    // full channel (call `flush()` later).

    /// Tells the primary this worker is ready for connections.
    #[napi]
    pub fn hello(&self) -> Result<bool> {
        self.inner()?.hello().map_err(os_error)
    }

    /// Confirms `adopted` more connections, then reports `lost` ones for the primary to resend.
    #[napi]
    pub fn ack(&self, adopted: u32, lost: u32) -> Result<bool> {
        self.inner()?.ack(adopted, lost).map_err(os_error)
    }

    /// Reports `closed` adopted connections that closed since the last report.
    #[napi]
    pub fn closed(&self, closed: u32) -> Result<bool> {
        self.inner()?.closed(closed).map_err(os_error)
    }

    /// Reports `accepted` connections this worker accepted itself (kernel dispatch).
    #[napi]
    pub fn accepted(&self, accepted: u32) -> Result<bool> {
        self.inner()?.accepted(accepted).map_err(os_error)
    }

    /// Sends what waits in the outbox.
    #[napi]
    pub fn flush(&self) -> Result<bool> {
        self.inner()?.flush().map_err(os_error)
    }

    /// Stops receiving. Idempotent.
    #[napi]
    pub fn close(&mut self) {
        if let Some(mut inner) = self.inner.take() {
            inner.close();
        }
    }
}

/// djb2 of a string's UTF-16 units, as npm's `string-hash`.
#[napi]
pub fn djb2(text: String) -> u32 {
    djb2_str(&text)
}

fn parse_ip(ip: &str) -> Result<AddressText> {
    let parsed: std::net::IpAddr = ip
        .parse()
        .map_err(|_| Error::new(Status::InvalidArg, format!("not an IP address: {ip}")))?;
    Ok(AddressText::from_ip(&parsed))
}

/// An IP address (text) reformatted the way the router formats peers, for parity tests.
#[napi]
pub fn address_text(ip: String) -> Result<String> {
    Ok(parse_ip(&ip)?.as_str().to_owned())
}

fn hash_named(name: &str) -> Result<Hash> {
    name.parse()
        .map_err(|reason: String| Error::new(Status::InvalidArg, reason))
}

/// The slot of each address (formatted by the router's rules, then `hash % slots`; `hash` is
/// `djb2` unless given), in one call.
#[napi]
pub fn slots_of(ips: Vec<String>, slots: u32, hash: Option<String>) -> Result<Vec<u32>> {
    let hash = hash_named(hash.as_deref().unwrap_or("djb2"))?;
    ips.iter()
        .map(|ip| Ok(slot_for(parse_ip(ip)?.as_bytes(), slots as usize, hash) as u32))
        .collect()
}

/// The first entry of `entries` that is neither an IP address nor a CIDR range, if any.
#[napi]
pub fn invalid_trusted_proxy(entries: Vec<String>) -> Option<String> {
    Trusted::parse(&entries).err()
}
