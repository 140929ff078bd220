//! sticky-rs: a sticky-session router for Node.js clusters.
//!
//! The pure core (no napi types) is split by concept: [`address`] formats peers as Node shows
//! them, [`hash`] is djb2, [`table`] holds the slots, [`channel`] carries descriptors to a
//! worker, [`link`] is one channel's flow control (window, acknowledgements, losses,
//! redelivery), [`dispatcher`] decides what happens to each connection (admission, slot queue,
//! expiry, which channel serves a slot) within each slot's [`budget`], [`listener`] binds, [`router`] is the event loop in the
//! primary, [`receiver`] is
//! the worker's end; [`trust`], [`forwarded`] and [`proxy`] read route keys that trusted proxies
//! forward; [`kernel`] builds the classic BPF program and the `SO_REUSEPORT` group of kernel
//! dispatch, which the router sets up when it is asked for (the default on Linux).
//!
//! This crate knows nothing of JavaScript: the napi binding is its own crate (`node/`), which
//! only converts values and errors. Modules the binding needs are public; the rest is
//! `pub(crate)`, so the compiler sees what is unused.
#![warn(
    missing_docs,
    missing_debug_implementations,
    unreachable_pub,
    rust_2018_idioms
)]

/// Writes one line to stderr with a single `write`: the workers write to the same stream, and a
/// line written in pieces (as `eprintln!` does, one piece per argument) can have theirs land
/// inside it.
macro_rules! debug_line {
    ($($arg:tt)*) => {{
        let mut line = format!($($arg)*);
        line.push('\n');
        let _ = std::io::Write::write_all(&mut std::io::stderr(), line.as_bytes());
    }};
}

pub mod address;
mod budget;
pub mod channel;
mod dispatcher;
mod forwarded;
pub mod hash;
// Upgrade (issue 22): inherited listening sockets, sd_notify.
mod inherit;
pub mod kernel;
mod link;
pub mod listener;
pub mod notify;
mod proxy;
pub mod receiver;
pub mod resolve;
pub mod router;
mod sid;
pub mod stats;
mod table;
pub mod trust;

pub use table::{slot_for, ChannelId};
