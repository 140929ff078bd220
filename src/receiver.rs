//! The worker's end of a channel: a thread that takes connections off it in batches.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;
use std::thread::JoinHandle;

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{shutdown, Shutdown};

use crate::channel::{self, Message, Meta, Reader};

/// A worker's channel end and the thread reading it.
pub struct Receiver {
    fd: Arc<OwnedFd>,
    thread: Option<JoinHandle<()>>,
}

impl Receiver {
    /// Takes its own copy of `fd` (the caller may close the original at once) and starts a thread
    /// that calls `deliver(connections, metas, lost)` with every batch that arrives (one [`Meta`]
    /// per connection), until the channel
    /// closes. `lost` counts connections that should have followed this batch but that the kernel
    /// dropped (this process was out of descriptors): the owner acknowledges the batch, then
    /// reports the loss with [`Receiver::ack`], so the primary sends them again.
    /// Nothing arrives before [`Receiver::hello`].
    pub fn start<F>(fd: BorrowedFd, deliver: F) -> io::Result<Receiver>
    where
        F: FnMut(Vec<OwnedFd>, Vec<Meta>, u32) + Send + 'static,
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
        channel::send(self.fd.as_fd(), Message::Hello)
    }

    /// Tells the primary that `adopted` more connections were adopted (it closes its copies) and
    /// that the `lost` after them never arrived (it sends them again).
    pub fn ack(&self, adopted: u32, lost: u32) -> io::Result<()> {
        if adopted > 0 {
            channel::send(self.fd.as_fd(), Message::Ack(adopted))?;
        }
        if lost > 0 {
            channel::send(self.fd.as_fd(), Message::Lost(lost))?;
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

fn read_loop<F: FnMut(Vec<OwnedFd>, Vec<Meta>, u32)>(fd: &OwnedFd, mut deliver: F) {
    let (mut reader, mut messages, mut batch, mut metas) =
        (Reader::default(), Vec::new(), Vec::new(), Vec::new());
    loop {
        let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => return,
        }
        let mut lost = 0;
        let open = loop {
            let before = batch.len();
            match reader.recv(fd.as_fd(), &mut messages, &mut batch, &mut metas) {
                Ok(true) => {}
                Ok(false) => break false,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break true,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break false,
            }
            let expected: usize = messages
                .drain(..)
                .map(|m| match m {
                    Message::Connections(n) => usize::from(n),
                    _ => 0,
                })
                .sum();
            let missing = expected.saturating_sub(batch.len() - before);
            if missing > 0 {
                // The kernel dropped the tail of this message: deliver now, so the loss is
                // reported right after the connections that came before it.
                lost = u32::try_from(missing).unwrap_or(u32::MAX);
                break true;
            }
        };
        if !batch.is_empty() || lost > 0 {
            // Metas describe what was sent, descriptors what arrived: the lost ones are the tail.
            let mut sent = std::mem::take(&mut metas);
            sent.truncate(batch.len());
            deliver(std::mem::take(&mut batch), sent, lost);
        }
        if !open {
            return;
        }
    }
}
