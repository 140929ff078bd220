//! The primary's native router: its options, counters and events as JavaScript sees them.

use std::io;
use std::os::fd::IntoRawFd;

use napi::bindgen_prelude::*;
use napi::threadsafe_function::{ThreadsafeFunction, ThreadsafeFunctionCallMode};
use napi_derive::napi;

use crate::errors::{error, os_error, start_error, Result, CLOSED, FAILED, INVALID};
use crate::hash_named;
use sticky_rs::key::resolve::{RouteBy, Rules, MAX_PEEK_LIMIT};
use sticky_rs::key::trust::Trusted;
use sticky_rs::router::config::{Config, Dispatch, Listen, Policy};
use sticky_rs::router::event::{Event, OnEvent};
use sticky_rs::router::{self, listener, ChannelId};

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
    /// binding, in the order of its `listeningFds()`; the router then accepts once `accept()`.
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
    pub id: ChannelId,
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
    pub channel: Option<ChannelId>,
    /// With `listenerFailed`: the listener's index.
    pub listener: Option<u32>,
    /// With `listenerFailed` and `stopped`: why.
    pub message: Option<String>,
}

impl From<Event> for RouterEvent {
    fn from(event: Event) -> Self {
        let empty = RouterEvent {
            kind: String::new(),
            slot: None,
            channel: None,
            listener: None,
            message: None,
        };
        match event {
            Event::Switched { slot, channel } => RouterEvent {
                kind: "switched".into(),
                slot: Some(slot as u32),
                channel: Some(channel),
                ..empty
            },
            Event::Drained { slot } => RouterEvent {
                kind: "drained".into(),
                slot: Some(slot as u32),
                ..empty
            },
            Event::ListenerFailed { listener, error } => RouterEvent {
                kind: "listenerFailed".into(),
                listener: Some(u32::from(listener)),
                message: Some(error),
                ..empty
            },
            Event::Misbehaved {
                slot,
                channel,
                reason,
            } => RouterEvent {
                kind: "misbehaved".into(),
                slot: Some(slot as u32),
                channel: Some(channel),
                message: Some(reason),
                ..empty
            },
            Event::Stopped { reason } => RouterEvent {
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
    /// Binds and starts accepting; throws `EADDRINUSE` and the like (see
    /// [`errors::start_error`]). `onEvent` gets the router's events.
    #[napi(constructor)]
    pub fn new(env: Env, options: RouterOptions, on_event: OnRouterEvent) -> Result<Self> {
        let listeners = options
            .listeners
            .iter()
            .map(|l| {
                let port =
                    u16::try_from(l.port).map_err(|_| error(INVALID, "port out of range"))?;
                Ok(Listen {
                    addr: listener::resolve(&l.host, port).map_err(|e| start_error(&env, &e))?,
                    backlog: i32::try_from(l.backlog).unwrap_or(i32::MAX),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let trusted = Trusted::parse(&options.trusted_proxies)
            .map_err(|entry| error(INVALID, format!("not an address or range: {entry}")))?;
        let route_by: RouteBy = match options.route_by.parse() {
            Ok(route_by) => route_by,
            Err(never) => match never {},
        };
        let config = Config {
            listeners,
            policy: Policy {
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
                    .map_err(|reason: String| error(INVALID, reason))?,
            },
            dispatch: options
                .dispatch
                .parse()
                .map_err(|reason: String| error(INVALID, reason))?,
        };
        let on_event: OnEvent = std::sync::Arc::new(move |event| {
            on_event.call(event.into(), ThreadsafeFunctionCallMode::NonBlocking);
        });
        let inner = match options.inherited {
            Some(fds) => router::Router::inherit(config, on_event, &fds),
            None => router::Router::start(config, on_event),
        }
        .map_err(|e| start_error(&env, &e))?;
        Ok(Router { inner: Some(inner) })
    }

    /// The core's router, unless closed.
    pub(crate) fn inner(&self) -> Result<&router::Router> {
        self.inner.as_ref().ok_or_else(|| {
            error(
                CLOSED,
                "sticky-rs: router is closed (the primary has shut down)",
            )
        })
    }

    /// Runs a command that has nothing left to do once the router is closed (workers exiting,
    /// retiring or a second shutdown after close).
    pub(crate) fn unless_closed(
        &self,
        command: impl FnOnce(&router::Router) -> io::Result<()>,
    ) -> Result<()> {
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
    pub fn open_channel(&self, slot: u32, id: ChannelId) -> Result<ChannelEnd> {
        let fd = self
            .inner()?
            .open_channel(slot as usize, id)
            .map_err(os_error)?;
        Ok(ChannelEnd {
            id,
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
    pub fn retire(&self, id: ChannelId) -> Result<()> {
        self.unless_closed(|inner| inner.retire(id))
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
    pub fn release(&self, id: ChannelId) -> Result<()> {
        self.unless_closed(|inner| inner.release(id))
    }

    /// A snapshot of the counters.
    #[napi]
    pub fn stats(&self) -> Result<RouterStats> {
        let inner = self.inner()?;
        let stats = inner.stats();
        Ok(RouterStats {
            dispatch: match inner.dispatch() {
                Dispatch::Primary => "primary",
                Dispatch::Kernel => "kernel",
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
            Some(mut inner) => inner.close().map_err(|e| error(FAILED, e.to_string())),
            None => Ok(()),
        }
    }
}
