//! sticky-rs: a sticky-session router for Node.js clusters.
//!
//! The pure core (no napi types) is split by concept: [`address`] formats peers as Node shows
//! them, [`hash`] is djb2, [`table`] holds the slots, [`channel`] carries descriptors to a
//! worker, [`link`] is one channel's flow control (window, acknowledgements, losses,
//! redelivery), [`dispatcher`] decides what happens to each connection (admission, slot queue,
//! expiry, which channel serves a slot), [`listener`] binds, [`router`] is the event loop in the
//! primary, [`receiver`] is
//! the worker's end; [`trust`], [`forwarded`] and [`proxy`] read route keys that trusted proxies
//! forward; [`kernel`] builds the classic BPF program and the `SO_REUSEPORT` group of kernel
//! dispatch (not wired into the router yet). The `napi` module is the binding and only the
//! binding.

pub mod address;
pub mod channel;
pub mod dispatcher;
pub mod forwarded;
pub mod hash;
pub mod kernel;
pub mod link;
pub mod listener;
pub mod proxy;
pub mod receiver;
pub mod resolve;
pub mod router;
pub mod stats;
pub mod table;
pub mod trust;

// The binding is exercised by the jest suites; `cargo test` covers the core.
#[cfg(not(test))]
mod napi;
