//! Errors of the router the binding turns into JavaScript errors with a code.

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
