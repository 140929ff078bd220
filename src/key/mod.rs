//! What a connection is routed by: the peer's address as Node shows it ([`address`]), the
//! route hash ([`hash`]), whose forwarded data is believed ([`trust`]), and the keys read off
//! the stream of a trusted proxy or any peer with `routeBy: 'sid'` ([`resolve`], which peeks
//! with the pure parsers `forwarded`, `proxy` and `sid`). No descriptors are held here beyond
//! the one being resolved.

pub mod address;
pub(crate) mod forwarded;
pub mod hash;
pub(crate) mod proxy;
pub mod resolve;
pub(crate) mod sid;
pub mod trust;
