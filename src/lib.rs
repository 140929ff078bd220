//! sticky-rs: a sticky-session router for Node.js clusters.
//!
//! The pure core (no napi types), by layer, following a connection: [`key`] says what a
//! connection is routed by (the peer's address as Node shows it, the hash, keys forwarded by
//! trusted proxies, session ids); [`router`] is the primary's router (the event loop, the
//! dispatcher and its parts, each channel's flow control, the listeners, the counters);
//! [`wire`] is the channel to a worker (records and the descriptor-passing transport);
//! [`worker`] is the worker's end of it; [`kernel`] builds the classic BPF program and the
//! `SO_REUSEPORT` group of kernel dispatch, which the router sets up when it is asked for;
//! [`notify`] is `sd_notify` (an upgrade tells systemd which process is the main one).
//!
//! This crate knows nothing of JavaScript: the napi binding is its own crate (`node/`), which
//! only converts values and errors. What the binding needs is public; the rest is
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

pub mod kernel;
pub mod key;
pub mod notify;
pub mod router;
pub mod wire;
pub mod worker;
