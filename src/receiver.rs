//! The worker's end of a channel: a thread that takes connections off it in batches.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;
use std::thread::JoinHandle;

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{shutdown, Shutdown};

use crate::channel::{self, Batch, ToPrimary, WorkerReader};

/// A worker's channel end and the thread reading it.
#[derive(Debug)]
pub struct Receiver {
    fd: Arc<OwnedFd>,
    thread: Option<JoinHandle<()>>,
}

impl Receiver {
    /// Takes its own copy of `fd` (the caller may close the original at once) and starts a thread
    /// that calls `deliver(Ok(batch))` with every [`Batch`] that arrives, until the channel
    /// closes. A batch's `lost` counts connections that should have followed it but that the
    /// kernel dropped (this process was out of descriptors): the owner acknowledges the batch,
    /// then reports the loss with [`Receiver::ack`], so the primary sends them again. If reading
    /// fails (anything but the primary closing the channel), `deliver(Err(e))` is the last call:
    /// this worker receives nothing more. Nothing arrives before [`Receiver::hello`].
    pub fn start<F>(fd: BorrowedFd<'_>, deliver: F) -> io::Result<Receiver>
    where
        F: FnMut(io::Result<Batch>) + Send + 'static,
    {
        let fd = Arc::new(channel::duplicate(fd)?);
        // Non-blocking on our own terms; whoever had the original may have set it either way.
        channel::set_nonblocking(fd.as_fd())?;
        let reader = fd.clone();
        let thread = std::thread::Builder::new()
            .name("sticky-rs-receiver".into())
            .spawn(move || read_loop(&reader, deliver))?;
        Ok(Receiver {
            fd,
            thread: Some(thread),
        })
    }

    /// Tells the primary this worker owns its end and is ready for connections.
    pub fn hello(&self) -> io::Result<()> {
        channel::send(self.fd.as_fd(), ToPrimary::Hello)
    }

    /// Tells the primary that `adopted` more connections were adopted (it closes its copies) and
    /// that the `lost` after them never arrived (it sends them again).
    pub fn ack(&self, adopted: u32, lost: u32) -> io::Result<()> {
        if adopted > 0 {
            channel::send(self.fd.as_fd(), ToPrimary::Ack(adopted))?;
        }
        if lost > 0 {
            channel::send(self.fd.as_fd(), ToPrimary::Lost(lost))?;
        }
        Ok(())
    }

    /// Tells the primary that `closed` adopted connections closed (for `least-connection`).
    pub fn closed(&self, closed: u32) -> io::Result<()> {
        if closed > 0 {
            channel::send(self.fd.as_fd(), ToPrimary::Closed(closed))?;
        }
        Ok(())
    }

    /// Stops the thread and waits for it. Connections already delivered stay with their owner;
    /// unacknowledged ones go back to the primary when the last copy of the end closes.
    pub fn close(&mut self) {
        if let Some(thread) = self.thread.take() {
            // Wakes the thread's poll with end-of-file.
            let _ = shutdown(std::os::fd::AsRawFd::as_raw_fd(&*self.fd), Shutdown::Both);
            let _ = thread.join();
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.close();
    }
}

fn read_loop<F: FnMut(io::Result<Batch>)>(fd: &OwnedFd, mut deliver: F) {
    let mut reader = WorkerReader::default();
    loop {
        let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return deliver(Err(e.into())),
        }
        let mut batch = Batch::default();
        let ended = loop {
            match reader.recv(fd.as_fd()) {
                Ok(Some(more)) => {
                    batch.conns.extend(more.conns);
                    batch.metas.extend(more.metas);
                    // The kernel dropped the tail of a message: deliver now, so the loss is
                    // reported right after the connections that came before it.
                    if more.lost > 0 {
                        batch.lost = more.lost;
                        break None;
                    }
                }
                Ok(None) => break Some(Ok(())),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break None,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => break Some(Err(e)),
            }
        };
        if !batch.conns.is_empty() || batch.lost > 0 {
            deliver(Ok(batch));
        }
        match ended {
            None => {}
            // The primary closed the channel (shutdown, or it is gone): nothing to report.
            Some(Ok(())) => return,
            Some(Err(e)) => return deliver(Err(e)),
        }
    }
}
