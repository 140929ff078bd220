//! The binding of the upgrade (issue 22): what an old primary passes on, the hand-over, and
//! `sd_notify`. The new primary's inherited descriptors arrive in `RouterOptions.inherited`.
//! Errors carry the errno name as their `code` (see `errors.rs`).

use std::os::fd::{BorrowedFd, IntoRawFd};

use napi_derive::napi;

use crate::errors::{os_error, Result};
use crate::router::Router;

/// A listening socket to pass to a new primary.
#[napi(object)]
pub struct ListeningFd {
    /// A copy the caller owns (close-on-exec).
    pub fd: i32,
    /// The listener's index in `listeners`.
    pub listener: u32,
    /// Kernel dispatch: the member's index in the group (0 the fallback, slot `s` at `s + 1`);
    /// absent with the router.
    pub member: Option<u32>,
}

#[napi]
impl Router {
    /// Copies of every listening socket, in the order a new primary takes them
    /// (`RouterOptions.inherited`): per listener, its socket or its group's members.
    #[napi]
    pub fn listening_fds(&self) -> Result<Vec<ListeningFd>> {
        Ok(self
            .inner()?
            .listening_fds()
            .map_err(os_error)?
            .into_iter()
            .map(|(listener, member, fd)| ListeningFd {
                fd: fd.into_raw_fd(),
                listener: listener as u32,
                member: member.map(|m| m as u32),
            })
            .collect())
    }

    /// The new primary is ready on the same sockets: stop accepting here without closing or
    /// stopping them; slots report `drained` as in a shutdown.
    #[napi]
    pub fn hand_over(&self) -> Result<()> {
        self.unless_closed(|inner| inner.hand_over())
    }

    /// A router on inherited sockets starts accepting (every slot of the new primary has a
    /// ready worker).
    #[napi]
    pub fn accept(&self) -> Result<()> {
        self.unless_closed(|inner| inner.accept())
    }

    /// Kernel dispatch: pauses or resumes the group checks while another primary holds the
    /// same members.
    #[napi]
    pub fn pause_checks(&self, paused: bool) -> Result<()> {
        self.unless_closed(|inner| {
            inner.pause_checks(paused);
            Ok(())
        })
    }
}

/// Sends `message` as one datagram to the Unix socket `path` (`NOTIFY_SOCKET`; `@name` is
/// abstract).
#[napi]
pub fn sd_notify(path: String, message: String) -> Result<()> {
    sticky_rs::notify::notify(&path, &message).map_err(os_error)
}

/// Marks an inherited descriptor close-on-exec, so that processes this one starts (its
/// workers) do not inherit it. A number that is not open throws `EBADF`.
#[napi]
pub fn close_on_exec(fd: i32) -> Result<()> {
    use nix::fcntl::{fcntl, FcntlArg, FdFlag};
    if fd < 0 {
        return Err(os_error(nix::errno::Errno::EBADF.into()));
    }
    // SAFETY: not -1 (checked above), and only for this call, which changes the descriptor's
    // flag; a number that is not open fails with EBADF.
    let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
    fcntl(borrowed, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC))
        .map(|_| ())
        .map_err(|e| os_error(e.into()))
}
