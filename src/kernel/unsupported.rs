//! The `SO_REUSEPORT` group where the kernel cannot steer connections with a program (not
//! Linux): [`Group::bind`] fails, so the router falls back to nothing and says why.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{BorrowedFd, OwnedFd};

use crate::key::hash::Hash;

use super::HealthReport;

/// Never built (it holds an uninhabited value): see the module docs.
#[derive(Debug)]
pub(crate) struct Group {
    never: std::convert::Infallible,
}

impl Group {
    /// Fails: kernel dispatch needs Linux (`SO_ATTACH_REUSEPORT_CBPF`).
    pub(crate) fn bind(
        _addr: SocketAddr,
        _slots: usize,
        _hash: Hash,
        _backlog: i32,
    ) -> io::Result<Group> {
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "kernel dispatch needs Linux (SO_ATTACH_REUSEPORT_CBPF)",
        ))
    }

    /// See the Linux group.
    pub(crate) fn fallback(&self) -> BorrowedFd<'_> {
        match self.never {}
    }

    /// See the Linux group.
    pub(crate) fn slot(&self, _slot: usize) -> Option<BorrowedFd<'_>> {
        match self.never {}
    }

    /// See the Linux group.
    pub(crate) fn queued(&self, _member: usize) -> io::Result<u32> {
        match self.never {}
    }

    /// See the Linux group.
    pub(crate) fn refuse_new(&self) -> io::Result<()> {
        match self.never {}
    }

    /// See the Linux group.
    pub(crate) fn stop(&self) {
        match self.never {}
    }

    /// See the Linux group.
    pub(crate) fn health(&self) -> HealthReport {
        match self.never {}
    }

    /// See the Linux group.
    pub(crate) fn check(&self) -> u64 {
        match self.never {}
    }

    /// Fails, as [`Group::bind`] does.
    pub(crate) fn adopt(
        _members: Vec<OwnedFd>,
        local: SocketAddr,
        hash: Hash,
        backlog: i32,
    ) -> io::Result<Group> {
        Self::bind(local, 0, hash, backlog)
    }

    /// See the Linux group.
    pub(crate) fn members(&self) -> std::iter::Empty<BorrowedFd<'_>> {
        match self.never {}
    }

    /// See the Linux group.
    pub(crate) fn pause_checks(&self, _paused: bool) {
        match self.never {}
    }
}
