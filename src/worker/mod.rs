//! The worker's side: the end of its channel ([`receiver`]).

pub mod receiver;
