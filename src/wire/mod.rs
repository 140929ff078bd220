//! The channel between the primary and one worker: the records it carries ([`record`]) and
//! the socketpair that moves them with their descriptors ([`transport`]).

pub mod record;
pub mod transport;
