//! The records of a worker channel, typed per direction: the primary sends only batches of
//! connections (a `C n` header, the descriptors, and one [`Meta`] per connection); the worker
//! sends only [`ToPrimary`] records. Bytes only: [`super::transport`] moves them.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// Most descriptors sent in one message (the kernel allows 253).
pub(crate) const MAX_BATCH: usize = 64;

/// A record from a worker to the primary: a tag byte and a little-endian `u32`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ToPrimary {
    /// The worker holds its end and is ready for connections.
    Hello,
    /// The worker adopted this many more connections.
    Ack(u32),
    /// The next this many connections never arrived (the worker was out of descriptors and the
    /// kernel dropped them); the primary still has them and sends them again.
    Lost(u32),
    /// This many adopted connections closed since the last such record (sent once per event
    /// loop turn at most): the primary's live count per worker for `least-connection`.
    Closed(u32),
    /// Kernel dispatch: this many connections the worker accepted itself, on its slot's member,
    /// since the last such record (coalesced, a few per second at most): the slot's `accepted`
    /// and `delivered` counters.
    Accepted(u32),
}

/// The tag of the one record the primary sends: `C n`, `n` connections as the message's
/// descriptors, followed by `n` [`Meta`] entries of [`META`] bytes.
const CONNECTIONS: u8 = b'C';

/// The size of every record.
pub(crate) const RECORD: usize = 5;
/// The size of one connection's [`Meta`].
pub(crate) const META: usize = 20;

/// What a worker needs to know about a connection besides its descriptor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Meta {
    /// Which of the primary's listeners accepted it (the worker's server of the same index).
    pub listener: u8,
    /// The client a PROXY protocol header spoke for; `None`: the socket's own peer.
    pub client: Option<SocketAddr>,
}

impl Meta {
    /// `[listener, family (0, 4, 6), port (big-endian), address (16 bytes)]`.
    pub(crate) fn encode(&self) -> [u8; META] {
        let mut out = [0u8; META];
        out[0] = self.listener;
        if let Some(client) = self.client {
            out[2..4].copy_from_slice(&client.port().to_be_bytes());
            match client.ip() {
                IpAddr::V4(ip) => {
                    out[1] = 4;
                    out[4..8].copy_from_slice(&ip.octets());
                }
                IpAddr::V6(ip) => {
                    out[1] = 6;
                    out[4..20].copy_from_slice(&ip.octets());
                }
            }
        }
        out
    }

    /// Reads one entry; an unknown family means no client.
    pub(crate) fn decode(bytes: &[u8; META]) -> Meta {
        let port = u16::from_be_bytes([bytes[2], bytes[3]]);
        let ip: Option<IpAddr> = match bytes[1] {
            4 => Some(Ipv4Addr::new(bytes[4], bytes[5], bytes[6], bytes[7]).into()),
            6 => {
                let mut octets = [0u8; 16];
                octets.copy_from_slice(&bytes[4..20]);
                Some(Ipv6Addr::from(octets).into())
            }
            _ => None,
        };
        Meta {
            listener: bytes[0],
            client: ip.map(|ip| SocketAddr::new(ip, port)),
        }
    }
}

impl ToPrimary {
    /// The record of this message.
    pub(crate) fn encode(self) -> [u8; RECORD] {
        let (tag, arg) = match self {
            ToPrimary::Hello => (b'H', 0),
            ToPrimary::Ack(n) => (b'A', n),
            ToPrimary::Lost(n) => (b'L', n),
            ToPrimary::Closed(n) => (b'D', n),
            ToPrimary::Accepted(n) => (b'K', n),
        };
        let a = arg.to_le_bytes();
        [tag, a[0], a[1], a[2], a[3]]
    }

    /// Reads one record; `None` for a tag that is not one of these.
    pub(crate) fn decode(record: &[u8; RECORD]) -> Option<ToPrimary> {
        let arg = u32::from_le_bytes([record[1], record[2], record[3], record[4]]);
        match record[0] {
            b'H' => Some(ToPrimary::Hello),
            b'A' => Some(ToPrimary::Ack(arg)),
            b'L' => Some(ToPrimary::Lost(arg)),
            b'D' => Some(ToPrimary::Closed(arg)),
            b'K' => Some(ToPrimary::Accepted(arg)),
            _ => None,
        }
    }
}

/// The header of a batch of `n` connections.
pub(super) fn connections_record(n: u8) -> [u8; RECORD] {
    [CONNECTIONS, n, 0, 0, 0]
}

/// The count of a batch header, or `None` for anything else.
pub(super) fn connections_count(record: &[u8; RECORD]) -> Option<usize> {
    let arg = u32::from_le_bytes([record[1], record[2], record[3], record[4]]);
    (record[0] == CONNECTIONS && arg <= MAX_BATCH as u32).then_some(arg as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip() {
        for m in [
            ToPrimary::Hello,
            ToPrimary::Ack(0),
            ToPrimary::Ack(u32::MAX),
            ToPrimary::Lost(3),
        ] {
            assert_eq!(ToPrimary::decode(&m.encode()), Some(m));
        }
        // A batch header is not a worker's record, and the other way round.
        assert_eq!(ToPrimary::decode(&connections_record(3)), None);
        assert_eq!(connections_count(&connections_record(64)), Some(64));
        assert_eq!(connections_count(b"C\x00\x01\x00\x00"), None);
        assert_eq!(connections_count(&ToPrimary::Ack(2).encode()), None);
        assert_eq!(ToPrimary::decode(b"Xabcd"), None);
    }

    #[test]
    fn meta_round_trips() {
        for meta in [
            Meta::default(),
            Meta {
                listener: 7,
                client: "1.2.3.4:5".parse().ok(),
            },
            Meta {
                listener: 0,
                client: "[2001:db8::1]:65535".parse().ok(),
            },
        ] {
            assert_eq!(Meta::decode(&meta.encode()), meta);
        }
    }
}
