//! Route keys being read: each connection whose key is read off its stream (see
//! [`crate::key::resolve`]) is handed to a task of its own, and comes back here with the outcome,
//! so the accept loop never waits on a client.

use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::sync::Arc;

use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};
use tokio::time::Instant;

use super::admission::Reading;
use crate::key::resolve::{self, Outcome, Rules};

/// A connection whose route key was read, back from resolution.
#[derive(Debug)]
pub(crate) struct Resolved {
    /// Its number in [`super::admission::Admission`]'s share of heads.
    pub(crate) id: u64,
    /// The connection.
    pub(crate) conn: OwnedFd,
    /// Its peer (the proxy, or the client itself).
    pub(crate) peer: SocketAddr,
    /// The listener that accepted it.
    pub(crate) listener: u8,
    /// When it was accepted.
    pub(crate) since: Instant,
    /// What its head said.
    pub(crate) outcome: Outcome,
}

#[cfg(test)]
impl Resolved {
    /// A connection from `peer` on listener 0, accepted now, whose head said `outcome`.
    pub(crate) fn for_test(id: u64, conn: OwnedFd, peer: SocketAddr, outcome: Outcome) -> Self {
        Resolved {
            id,
            conn,
            peer,
            listener: 0,
            since: Instant::now(),
            outcome,
        }
    }
}

/// The tasks reading route keys, and the way back from them.
#[derive(Debug)]
pub(crate) struct Resolutions {
    done: UnboundedSender<Resolved>,
    back: UnboundedReceiver<Resolved>,
}

impl Resolutions {
    /// None running yet.
    pub(crate) fn new() -> Resolutions {
        let (done, back) = unbounded_channel();
        Resolutions { done, back }
    }

    /// Reads the route key of `conn` under `rules` in a task of its own (on the current
    /// runtime), giving up when `reading` says so.
    pub(crate) fn start(
        &self,
        conn: OwnedFd,
        peer: SocketAddr,
        listener: u8,
        since: Instant,
        rules: Arc<Rules>,
        reading: Reading,
    ) {
        let (done, id) = (self.done.clone(), reading.id);
        tokio::spawn(async move {
            let (conn, outcome) = resolve::resolve(conn, rules, reading.give_up).await;
            let _ = done.send(Resolved {
                id,
                conn,
                peer,
                listener,
                since,
                outcome,
            });
        });
    }

    /// The next connection back (this holds a sender, so it waits until one comes).
    pub(crate) async fn next(&mut self) -> Resolved {
        match self.back.recv().await {
            Some(done) => done,
            None => std::future::pending().await,
        }
    }
}
