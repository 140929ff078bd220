//! Errors of the router the binding turns into JavaScript errors with a code: which listener
//! could not be bound, and a host name that did not resolve.

use std::io;

/// Says which listener failed, keeping the OS error code.
pub(crate) fn bind_error(listener: usize, e: io::Error) -> io::Error {
    match e.raw_os_error() {
        Some(code) => io::Error::other(BindError { listener, code }),
        None => e,
    }
}

/// A listener that could not be bound.
#[derive(Debug)]
pub struct BindError {
    /// Its index in [`super::config::Config::listeners`].
    pub listener: usize,
    /// The OS error code (errno).
    pub code: i32,
}

impl std::fmt::Display for BindError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let e = io::Error::from_raw_os_error(self.code);
        write!(f, "listener {}: {e}", self.listener)
    }
}

impl std::error::Error for BindError {}

/// A listener's host name that did not resolve (`getaddrinfo` failed).
#[derive(Debug)]
pub struct LookupError {
    /// Node's code for it: `ENOTFOUND`, or `EAI_AGAIN` when the resolver could not be reached.
    pub code: &'static str,
    /// The host name.
    pub host: String,
}

impl std::fmt::Display for LookupError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "getaddrinfo {} {}", self.code, self.host)
    }
}

impl std::error::Error for LookupError {}
