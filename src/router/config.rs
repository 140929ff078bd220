//! What a router is asked to do: where it listens, how it routes and bounds connections, and
//! who picks each connection's worker. Plain values; [`Policy::check`] refuses what cannot work.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use crate::key::hash::Hash;
use crate::key::resolve::{RouteBy, Rules};
use crate::key::sid::MAX_PLACES;

/// One address to listen on.
#[derive(Debug, Clone)]
pub struct Listen {
    /// The address.
    pub addr: SocketAddr,
    /// The `listen` backlog.
    pub backlog: i32,
}

/// Who picks each connection's worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Dispatch {
    /// The router accepts every connection, routes it and passes it to the worker (any
    /// `routeBy`).
    #[default]
    Primary,
    /// A `SO_REUSEPORT` group per listener whose program makes the kernel pick the slot's
    /// member from the client address; the slot's worker listens on it and accepts itself. The
    /// router accepts only on the fallback member: what the kernel cannot hash (link-local IPv6
    /// peers, whose text carries `%ifname`). Linux only; routing by address only.
    Kernel,
}

impl std::str::FromStr for Dispatch {
    type Err = String;

    /// `primary` or `kernel` (`lib/options.js` resolves `auto`).
    fn from_str(text: &str) -> Result<Dispatch, String> {
        match text {
            "primary" => Ok(Dispatch::Primary),
            "kernel" => Ok(Dispatch::Kernel),
            other => Err(format!("unknown dispatch {other:?}")),
        }
    }
}

/// What a router listens on and how it routes.
#[derive(Debug, Clone)]
pub struct Config {
    /// The addresses to listen on; a client lands on the same slot on each of them.
    pub listeners: Vec<Listen>,
    /// How connections are routed and bounded.
    pub policy: Policy,
    /// Who picks each connection's worker.
    pub dispatch: Dispatch,
}

/// How connections are routed and bounded.
#[derive(Debug, Clone)]
pub struct Policy {
    /// How connections from trusted proxies are routed.
    pub rules: Rules,
    /// The number of slots (workers).
    pub slots: usize,
    /// Connections a slot may hold while its worker is not ready, at most; beyond, they are closed.
    pub queue_limit: usize,
    /// How long a connection may wait for a ready worker; older ones are closed. None: no limit.
    pub queue_timeout: Option<Duration>,
    /// The route hash.
    pub hash: Hash,
    /// Log channel changes and queue events to stderr.
    pub debug: bool,
    /// Also log each routing decision and each refused PROXY header.
    pub debug_connections: bool,
    /// Where new sessions go with `routeBy: 'sid'`.
    pub balance: Balance,
}

/// How `routeBy: 'sid'` picks the worker of a new session (`loadBalancingMethod`, as
/// `@socket.io/sticky` names it), among the slots whose worker is ready.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Balance {
    /// The ready slot with the fewest live connections (`@socket.io/sticky`'s default).
    #[default]
    LeastConnection,
    /// The next ready slot in turn.
    RoundRobin,
    /// A ready slot at random.
    Random,
}

impl std::str::FromStr for Balance {
    type Err = String;

    /// `least-connection`, `round-robin` or `random`.
    fn from_str(text: &str) -> Result<Balance, String> {
        match text {
            "least-connection" => Ok(Balance::LeastConnection),
            "round-robin" => Ok(Balance::RoundRobin),
            "random" => Ok(Balance::Random),
            other => Err(format!("unknown loadBalancingMethod {other:?}")),
        }
    }
}

impl Policy {
    /// Refuses a policy the router cannot follow: `routeBy: 'sid'` names at most
    /// [`MAX_PLACES`] workers in its session ids.
    pub(crate) fn check(&self) -> io::Result<()> {
        let slots = self.slots.max(1);
        if self.rules.route_by == RouteBy::Sid && slots > MAX_PLACES {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("routeBy 'sid' names at most {MAX_PLACES} workers, {slots} slots asked"),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
impl Policy {
    /// The policy the router's unit tests start from: `route_by`, `slots` slots, a queue of 16
    /// without a timeout, djb2, no debug; tests set the other fields they are about.
    pub(crate) fn for_tests(route_by: RouteBy, slots: usize) -> Policy {
        Policy {
            rules: Rules {
                route_by,
                trusted: crate::key::trust::Trusted::default(),
                limit: 256,
                timeout: Duration::from_secs(1),
                node: None,
            },
            slots,
            queue_limit: 16,
            queue_timeout: None,
            hash: Hash::Djb2,
            debug: false,
            debug_connections: false,
            balance: Balance::default(),
        }
    }
}
