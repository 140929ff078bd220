//! The worker's end of a channel: a thread that takes connections off it in batches.

use std::io;
use std::os::fd::{AsFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::thread::JoinHandle;

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{shutdown, Shutdown};

use crate::channel::{self, Message, Reader};

/// A worker's channel end and the thread reading it.
pub struct Receiver {
    fd: Arc<OwnedFd>,
    thread: Option<JoinHandle<()>>,
}

impl Receiver {
    /// Takes its own copy of `fd` (the caller may close the original at once) and starts a thread
    /// that calls `deliver` with every batch of connections that arrives, until the channel
    /// closes. Nothing arrives before [`Receiver::hello`].
    pub fn start<F>(fd: RawFd, deliver: F) -> io::Result<Receiver>
    where
        F: FnMut(Vec<OwnedFd>) + Send + 'static,
    {
        let fd = Arc::new(channel::duplicate(fd)?);
        // Non-blocking on our own terms; whoever had the original may have set it either way.
        channel::set_nonblocking(std::os::fd::AsRawFd::as_raw_fd(&*fd))?;
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

    /// Tells the primary that `n` more connections were adopted; it closes its copies.
    pub fn ack(&self, n: u32) -> io::Result<()> {
        channel::send(self.fd.as_fd(), Message::Ack(n))
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

fn read_loop<F: FnMut(Vec<OwnedFd>)>(fd: &OwnedFd, mut deliver: F) {
    let (mut reader, mut messages, mut batch) = (Reader::default(), Vec::new(), Vec::new());
    loop {
        let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => return,
        }
        let open = loop {
            match reader.recv(fd.as_fd(), &mut messages, &mut batch) {
                Ok(true) => messages.clear(),
                Ok(false) => break false,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break true,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break false,
            }
        };
        if !batch.is_empty() {
            deliver(std::mem::take(&mut batch));
        }
        if !open {
            return;
        }
    }
}
