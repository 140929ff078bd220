//! The worker's end of a channel: a thread that takes connections off it in batches.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{shutdown, Shutdown};

use crate::wire::record::ToPrimary;
use crate::wire::transport::{self, Batch, WorkerReader};

/// A worker's channel end and the thread reading it.
///
/// What the worker tells the primary goes through an outbox: a record the channel cannot take
/// now (it is full: the primary is busy) waits there, in order, for the next report or
/// [`Receiver::flush`], instead of being lost or failing the worker. Adjacent records of the
/// same kind are merged (`Ack(2), Ack(3)` is `Ack(5)`), so the outbox stays small.
#[derive(Debug)]
pub struct Receiver {
    fd: Arc<OwnedFd>,
    thread: Option<JoinHandle<()>>,
    outbox: Mutex<VecDeque<ToPrimary>>,
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
        let fd = Arc::new(transport::duplicate(fd)?);
        // Non-blocking on our own terms; whoever had the original may have set it either way.
        transport::set_nonblocking(fd.as_fd())?;
        let reader = fd.clone();
        let thread = std::thread::Builder::new()
            .name("sticky-rs-receiver".into())
            .spawn(move || read_loop(&reader, deliver))?;
        Ok(Receiver {
            fd,
            thread: Some(thread),
            outbox: Mutex::new(VecDeque::new()),
        })
    }

    /// Tells the primary this worker owns its end and is ready for connections. `Ok(false)`: it
    /// waits in the outbox (see [`Receiver::flush`]).
    pub fn hello(&self) -> io::Result<bool> {
        self.report(&[ToPrimary::Hello])
    }

    /// Tells the primary that `adopted` more connections were adopted (it closes its copies) and
    /// that the `lost` after them never arrived (it sends them again).
    pub fn ack(&self, adopted: u32, lost: u32) -> io::Result<bool> {
        self.report(&[ToPrimary::Ack(adopted), ToPrimary::Lost(lost)])
    }

    /// Tells the primary that `closed` adopted connections closed (for `least-connection`).
    pub fn closed(&self, closed: u32) -> io::Result<bool> {
        self.report(&[ToPrimary::Closed(closed)])
    }

    /// Tells the primary that this worker accepted `accepted` connections itself (kernel
    /// dispatch), for its counters.
    pub fn accepted(&self, accepted: u32) -> io::Result<bool> {
        self.report(&[ToPrimary::Accepted(accepted)])
    }

    /// Sends what waits in the outbox, in order, as far as the channel takes it. `Ok(true)`:
    /// nothing waits any more; `Ok(false)`: the channel is full, try again later. Any other
    /// failure (the primary is gone) is returned and the records stay.
    pub fn flush(&self) -> io::Result<bool> {
        let mut outbox = self.outbox.lock().unwrap_or_else(PoisonError::into_inner);
        while let Some(&record) = outbox.front() {
            match transport::send(self.fd.as_fd(), record) {
                Ok(()) => {
                    outbox.pop_front();
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }

    /// Queues `records` (counts of 0 are no news) after what waits, then flushes.
    fn report(&self, records: &[ToPrimary]) -> io::Result<bool> {
        {
            let mut outbox = self.outbox.lock().unwrap_or_else(PoisonError::into_inner);
            for &record in records {
                enqueue(&mut outbox, record);
            }
        }
        self.flush()
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

/// Appends `record` to `outbox`, merged with the last record if both are counts of one kind.
fn enqueue(outbox: &mut VecDeque<ToPrimary>, record: ToPrimary) {
    use ToPrimary::{Accepted, Ack, Closed, Hello, Lost};
    let merged = match (outbox.back_mut(), record) {
        (_, Ack(0) | Lost(0) | Closed(0) | Accepted(0)) => return,
        (Some(Ack(a)), Ack(b))
        | (Some(Lost(a)), Lost(b))
        | (Some(Closed(a)), Closed(b))
        | (Some(Accepted(a)), Accepted(b)) => match a.checked_add(b) {
            Some(sum) => {
                *a = sum;
                true
            }
            None => false,
        },
        (_, Hello | Ack(_) | Lost(_) | Closed(_) | Accepted(_)) => false,
    };
    if !merged {
        outbox.push_back(record);
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
                // The primary's end closed with reports of ours unread (it exited): the same end.
                Err(e) if transport::is_peer_gone(&e) => break Some(Ok(())),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::transport::PrimaryReader;
    use ToPrimary::{Accepted, Ack, Closed, Hello, Lost};

    /// Everything the primary end can read now.
    fn primary_reads(primary: &OwnedFd, reader: &mut PrimaryReader) -> Vec<ToPrimary> {
        let mut records = Vec::new();
        while let Ok(Some(more)) = reader.recv(primary.as_fd()) {
            records.extend(more);
        }
        records
    }

    #[test]
    fn adjacent_counts_merge_and_order_is_kept() {
        let mut outbox = VecDeque::new();
        for record in [
            Ack(2),
            Ack(3),
            Lost(1),
            Ack(0),
            Ack(4),
            Hello,
            Hello,
            Closed(1),
        ] {
            enqueue(&mut outbox, record);
        }
        enqueue(&mut outbox, Closed(2));
        enqueue(&mut outbox, Accepted(0));
        assert_eq!(
            Vec::from(outbox),
            [Ack(5), Lost(1), Ack(4), Hello, Hello, Closed(3)]
        );
    }

    #[test]
    fn a_full_channel_keeps_reports_in_order_until_flushed() -> io::Result<()> {
        let (primary, worker) = transport::pair()?;
        let receiver = Receiver::start(worker.as_fd(), |_| {})?;
        // Fill the worker-to-primary direction with hellos until the kernel refuses more.
        transport::set_nonblocking(worker.as_fd())?;
        let mut filled = 0usize;
        loop {
            match transport::send(worker.as_fd(), Hello) {
                Ok(()) => filled += 1,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
        assert!(filled > 0);
        assert!(
            !receiver.ack(4, 3)?,
            "the channel is full: the ack must wait"
        );
        assert!(!receiver.accepted(2)?);
        assert!(!receiver.accepted(5)?);
        let mut reader = PrimaryReader::default();
        let mut seen = primary_reads(&primary, &mut reader);
        // Read enough to make room: now everything goes out, in order, merged.
        assert!(receiver.flush()?);
        seen.extend(primary_reads(&primary, &mut reader));
        assert_eq!(seen.iter().filter(|&&r| r == Hello).count(), filled);
        let tail: Vec<_> = seen.into_iter().filter(|&r| r != Hello).collect();
        assert_eq!(tail, [Ack(4), Lost(3), Accepted(7)]);
        Ok(())
    }
}
