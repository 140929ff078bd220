//! The PROXY protocol header (v1 text, v2 binary) that HAProxy `send-proxy`, nginx
//! `proxy_protocol on` and AWS NLB put before the client's bytes.
//! See https://www.haproxy.org/download/2.9/doc/proxy-protocol.txt

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
/// The longest v1 line, CRLF included.
const V1_MAX: usize = 107;

/// What the start of a stream says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Header {
    /// More bytes are needed to decide.
    Incomplete,
    /// A complete header of `len` bytes. `source` is the client it speaks for, or `None` for
    /// `LOCAL` / `UNKNOWN` (health checks: the connection is the proxy's own).
    Complete {
        len: usize,
        source: Option<SocketAddr>,
    },
    /// Not a PROXY header, or a malformed one.
    Invalid,
}

/// Parses a PROXY header at the start of `buf`, refusing anything longer than `limit` bytes.
pub(crate) fn parse(buf: &[u8], limit: usize) -> Header {
    if buf.is_empty() {
        return Header::Incomplete;
    }
    if V2_SIGNATURE.starts_with(&buf[..buf.len().min(12)]) {
        return parse_v2(buf, limit);
    }
    if b"PROXY ".starts_with(&buf[..buf.len().min(6)]) {
        return parse_v1(buf);
    }
    Header::Invalid
}

fn parse_v1(buf: &[u8]) -> Header {
    let window = &buf[..buf.len().min(V1_MAX)];
    let Some(end) = window.windows(2).position(|w| w == b"\r\n") else {
        return if buf.len() >= V1_MAX {
            Header::Invalid
        } else {
            Header::Incomplete
        };
    };
    let Ok(line) = std::str::from_utf8(&buf[..end]) else {
        return Header::Invalid;
    };
    let len = end + 2;
    let fields: Vec<&str> = line.split(' ').collect();
    match fields.as_slice() {
        ["PROXY", "UNKNOWN", ..] => Header::Complete { len, source: None },
        ["PROXY", family @ ("TCP4" | "TCP6"), src, _dst, sport, _dport] => {
            let ip = match (*family, src.parse::<IpAddr>()) {
                ("TCP4", Ok(ip @ IpAddr::V4(_))) | ("TCP6", Ok(ip @ IpAddr::V6(_))) => ip,
                _ => return Header::Invalid,
            };
            match port(sport) {
                Some(port) => Header::Complete {
                    len,
                    source: Some(SocketAddr::new(ip, port)),
                },
                None => Header::Invalid,
            }
        }
        _ => Header::Invalid,
    }
}

/// A decimal port without leading zeros or signs, as the specification requires.
fn port(text: &str) -> Option<u16> {
    if text.is_empty() || (text.len() > 1 && text.starts_with('0')) {
        return None;
    }
    if !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

fn parse_v2(buf: &[u8], limit: usize) -> Header {
    if buf.len() < 16 {
        return Header::Incomplete;
    }
    let version_command = buf[12];
    let family = buf[13];
    let body = usize::from(u16::from_be_bytes([buf[14], buf[15]]));
    let len = 16 + body;
    if version_command >> 4 != 2 || len > limit {
        return Header::Invalid;
    }
    if buf.len() < len {
        return Header::Incomplete;
    }
    let body = &buf[16..len];
    match version_command & 0x0f {
        0x0 => Header::Complete { len, source: None },
        0x1 => match family {
            // TCP over IPv4: src(4) dst(4) sport(2) dport(2).
            0x11 if body.len() >= 12 => {
                let ip = Ipv4Addr::new(body[0], body[1], body[2], body[3]);
                let port = u16::from_be_bytes([body[8], body[9]]);
                Header::Complete {
                    len,
                    source: Some(SocketAddr::new(ip.into(), port)),
                }
            }
            // TCP over IPv6: src(16) dst(16) sport(2) dport(2).
            0x21 if body.len() >= 36 => {
                let mut octets = [0u8; 16];
                octets.copy_from_slice(&body[..16]);
                let port = u16::from_be_bytes([body[32], body[33]]);
                Header::Complete {
                    len,
                    source: Some(SocketAddr::new(Ipv6Addr::from(octets).into(), port)),
                }
            }
            // UNSPEC, UDP, unix sockets: nothing to route by, like LOCAL.
            0x00 | 0x12 | 0x22 | 0x31 | 0x32 => Header::Complete { len, source: None },
            _ => Header::Invalid,
        },
        _ => Header::Invalid,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn addr(text: &str) -> Option<SocketAddr> {
        text.parse().ok()
    }

    fn v2(command: u8, family: u8, body: &[u8]) -> Vec<u8> {
        let mut out = V2_SIGNATURE.to_vec();
        out.push(0x20 | command);
        out.push(family);
        out.extend_from_slice(&(body.len() as u16).to_be_bytes());
        out.extend_from_slice(body);
        out
    }

    #[test]
    fn v1() {
        let line = b"PROXY TCP4 192.0.2.1 198.51.100.1 56324 443\r\nGET /";
        assert_eq!(
            parse(line, 4096),
            Header::Complete {
                len: 45,
                source: addr("192.0.2.1:56324")
            }
        );
        let line = b"PROXY TCP6 2001:db8::1 2001:db8::2 1 2\r\n";
        assert_eq!(
            parse(line, 4096),
            Header::Complete {
                len: line.len(),
                source: addr("[2001:db8::1]:1")
            }
        );
        assert_eq!(
            parse(b"PROXY UNKNOWN\r\n", 4096),
            Header::Complete {
                len: 15,
                source: None
            }
        );
        assert_eq!(parse(b"PROXY TCP4 1.2.3.4", 4096), Header::Incomplete);
        assert_eq!(parse(b"PRO", 4096), Header::Incomplete);
        assert_eq!(parse(b"GET / HTTP/1.1\r\n", 4096), Header::Invalid);
        assert_eq!(
            parse(b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n", 4096),
            Header::Invalid
        );
        assert_eq!(parse(b"PROXY TCP4 ::1 ::2 1 2\r\n", 4096), Header::Invalid);
        assert_eq!(
            parse(b"PROXY TCP4 1.2.3.4 5.6.7.8 70000 2\r\n", 4096),
            Header::Invalid
        );
        assert_eq!(parse(&[b'P'; 200], 4096), Header::Invalid);
        let long = [b"PROXY ".as_slice(), &[b'x'; 120]].concat();
        assert_eq!(parse(&long, 4096), Header::Invalid);
    }

    #[test]
    fn v2_forms() {
        let v4 = v2(
            1,
            0x11,
            &[192, 0, 2, 1, 198, 51, 100, 1, 0xdc, 0x04, 1, 187],
        );
        assert_eq!(
            parse(&v4, 4096),
            Header::Complete {
                len: 28,
                source: addr("192.0.2.1:56324")
            }
        );
        let mut body6 = vec![0u8; 36];
        body6[0] = 0x20;
        body6[1] = 0x01;
        body6[15] = 1;
        body6[32] = 0;
        body6[33] = 80;
        assert_eq!(
            parse(&v2(1, 0x21, &body6), 4096),
            Header::Complete {
                len: 52,
                source: addr("[2001::1]:80")
            }
        );
        assert_eq!(
            parse(&v2(0, 0x00, &[]), 4096),
            Header::Complete {
                len: 16,
                source: None
            }
        );
        // TLVs after the addresses are skipped.
        let mut with_tlv = vec![10, 0, 0, 1, 10, 0, 0, 2, 0, 1, 0, 2];
        with_tlv.extend_from_slice(&[0x04, 0x00, 0x01, 0xff]);
        assert_eq!(
            parse(&v2(1, 0x11, &with_tlv), 4096),
            Header::Complete {
                len: 32,
                source: addr("10.0.0.1:1")
            }
        );
        assert_eq!(parse(&v4[..20], 4096), Header::Incomplete);
        assert_eq!(parse(&v4[..5], 4096), Header::Incomplete);
        assert_eq!(parse(&v2(1, 0x11, &[1, 2, 3]), 4096), Header::Invalid);
        assert_eq!(parse(&v2(7, 0x11, &[0; 12]), 4096), Header::Invalid);
        assert_eq!(parse(&v2(1, 0x11, &vec![0; 5000]), 4096), Header::Invalid);
        let mut bad_version = v4.clone();
        bad_version[12] = 0x11;
        assert_eq!(parse(&bad_version, 4096), Header::Invalid);
    }

    proptest! {
        // No input panics, and a complete header never claims more bytes than it was given or
        // than the limit allows.
        #[test]
        fn never_panics_or_overreads(buf in proptest::collection::vec(any::<u8>(), 0..600), limit in 16usize..1024) {
            if let Header::Complete { len, .. } = parse(&buf, limit) {
                prop_assert!(len <= buf.len());
                prop_assert!(len <= limit.max(V1_MAX));
            }
        }

        #[test]
        fn v2_prefixes_are_incomplete_never_invalid(cut in 0usize..28) {
            let v4 = v2(1, 0x11, &[192, 0, 2, 1, 198, 51, 100, 1, 0xdc, 0x04, 1, 187]);
            prop_assert_eq!(parse(&v4[..cut], 4096), Header::Incomplete);
        }

        #[test]
        fn v1_round_trips(a in any::<[u8; 4]>(), port in 1u16..) {
            let ip = Ipv4Addr::from(a);
            let line = format!("PROXY TCP4 {ip} 10.0.0.1 {port} 443\r\n");
            prop_assert_eq!(
                parse(line.as_bytes(), 4096),
                Header::Complete { len: line.len(), source: Some(SocketAddr::new(ip.into(), port)) }
            );
        }
    }
}
