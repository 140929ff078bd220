//! A worker's native receiver: the connections of its channel as JavaScript gets them.

use std::os::fd::{BorrowedFd, IntoRawFd};

use napi::bindgen_prelude::*;
use napi::threadsafe_function::{ThreadsafeFunction, ThreadsafeFunctionCallMode};
use napi_derive::napi;

use crate::errors::{error, os_error, Result, CLOSED, INVALID};
use sticky_rs::key::address::AddressText;
use sticky_rs::wire::record::Meta;
use sticky_rs::worker::receiver;

/// A connection as the worker receives it.
#[napi(object)]
pub struct Incoming {
    /// The connection's descriptor; the callback owns it.
    pub fd: i32,
    /// The index of the listener (and of the worker's server) it belongs to.
    pub listener: u32,
    /// The client a PROXY protocol header named, as Node would show it; absent otherwise.
    pub address: Option<String>,
    /// `IPv4` or `IPv6`, with `address`.
    pub family: Option<String>,
    /// The client's port, with `address`.
    pub port: Option<u32>,
}

/// Called as `(connections, lost, null)` with each batch, see `receiver.rs`; once as
/// `([], 0, message)` if reading the channel failed (nothing arrives after that).
type OnConnections = ThreadsafeFunction<
    FnArgs<(Vec<Incoming>, u32, Option<String>)>,
    (),
    FnArgs<(Vec<Incoming>, u32, Option<String>)>,
    Status,
    false,
>;

/// A worker's native receiver.
#[napi]
pub struct Receiver {
    inner: Option<receiver::Receiver>,
}

#[napi]
impl Receiver {
    /// Copies `fd` (the caller closes its own) and calls `onConnections(fds, lost, error)` per
    /// batch. The callback owns the descriptors it gets and answers with `ack(fds.length, lost)`;
    /// `error` (a string) means the channel failed and nothing more will arrive.
    #[napi(constructor)]
    pub fn new(fd: i32, on_connections: OnConnections) -> Result<Self> {
        if fd < 0 {
            return Err(error(INVALID, format!("not a descriptor: {fd}")));
        }
        // SAFETY: the caller (lib/worker.js) passes the fd of a handle it keeps open during this
        // call; the receiver only duplicates it.
        let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
        let inner = receiver::Receiver::start(borrowed, move |received| {
            let batch = match received {
                Ok(batch) => batch,
                Err(e) => {
                    let args = FnArgs::from((Vec::new(), 0, Some(e.to_string())));
                    on_connections.call(args, ThreadsafeFunctionCallMode::NonBlocking);
                    return;
                }
            };
            let fds: Vec<i32> = batch
                .conns
                .into_iter()
                .map(IntoRawFd::into_raw_fd)
                .collect();
            let incoming = fds
                .iter()
                .zip(
                    batch
                        .metas
                        .iter()
                        .chain(std::iter::repeat(&Meta::default())),
                )
                .map(|(&fd, meta)| Incoming {
                    fd,
                    listener: u32::from(meta.listener),
                    address: meta
                        .client
                        .map(|c| AddressText::new(&c).as_str().to_owned()),
                    family: meta
                        .client
                        .map(|c| if c.is_ipv4() { "IPv4" } else { "IPv6" }.to_owned()),
                    port: meta.client.map(|c| u32::from(c.port())),
                })
                .collect();
            let args = FnArgs::from((incoming, batch.lost, None));
            let status = on_connections.call(args, ThreadsafeFunctionCallMode::NonBlocking);
            if status != Status::Ok {
                for fd in fds {
                    let _ = nix::unistd::close(fd);
                }
            }
        })
        .map_err(os_error)?;
        Ok(Receiver { inner: Some(inner) })
    }

    fn inner(&self) -> Result<&receiver::Receiver> {
        self.inner
            .as_ref()
            .ok_or_else(|| error(CLOSED, "sticky-rs: receiver is closed"))
    }

    // Each report returns true once everything is sent, false if it waits in the outbox for a
    // full channel (call `flush()` later).

    /// Tells the primary this worker is ready for connections.
    #[napi]
    pub fn hello(&self) -> Result<bool> {
        self.inner()?.hello().map_err(os_error)
    }

    /// Confirms `adopted` more connections, then reports `lost` ones for the primary to resend.
    #[napi]
    pub fn ack(&self, adopted: u32, lost: u32) -> Result<bool> {
        self.inner()?.ack(adopted, lost).map_err(os_error)
    }

    /// Reports `closed` adopted connections that closed since the last report.
    #[napi]
    pub fn closed(&self, closed: u32) -> Result<bool> {
        self.inner()?.closed(closed).map_err(os_error)
    }

    /// Reports `accepted` connections this worker accepted itself (kernel dispatch).
    #[napi]
    pub fn accepted(&self, accepted: u32) -> Result<bool> {
        self.inner()?.accepted(accepted).map_err(os_error)
    }

    /// Sends what waits in the outbox.
    #[napi]
    pub fn flush(&self) -> Result<bool> {
        self.inner()?.flush().map_err(os_error)
    }

    /// Stops receiving. Idempotent.
    #[napi]
    pub fn close(&mut self) {
        if let Some(mut inner) = self.inner.take() {
            inner.close();
        }
    }
}
