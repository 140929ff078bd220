//! Route keys from an HTTP request head that a trusted proxy forwarded: `X-Forwarded-For` or any
//! other header, read from bytes peeked off the socket (never consumed).

use std::net::IpAddr;

use crate::key::address::AddressText;
use crate::key::trust::Trusted;

/// What the peeked bytes give.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Key {
    /// The head is not complete yet.
    Incomplete,
    /// Route by this text.
    Text(String),
    /// No usable key (malformed head, header missing or empty): route by the peer address.
    Fallback,
}

/// Finds the route key in the request head at the start of `buf`. For `x-forwarded-for`, the
/// key is the right-most address not in `trusted` (proxies append the address they saw, so the
/// entries to its right were added by our own proxies, those to its left can be forged by the
/// client). For any other header, its trimmed value.
pub(crate) fn route_key(buf: &[u8], header: &str, trusted: &Trusted) -> Key {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut request = httparse::Request::new(&mut headers);
    match request.parse(buf) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => return Key::Incomplete,
        Err(_) => return Key::Fallback,
    }
    let values: Vec<&[u8]> = request
        .headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case(header))
        .map(|h| h.value)
        .collect();
    if values.is_empty() {
        return Key::Fallback;
    }
    if header.eq_ignore_ascii_case("x-forwarded-for") {
        // Several headers are one list, in order.
        let entries = values
            .iter()
            .filter_map(|v| std::str::from_utf8(v).ok())
            .flat_map(|v| v.split(','))
            .map(str::trim);
        let mut client = None;
        for entry in entries.rev() {
            match parse_entry(entry) {
                Some(ip) if trusted.contains(ip) => client = Some(ip),
                Some(ip) => {
                    client = Some(ip);
                    break;
                }
                None => break,
            }
        }
        return match client {
            Some(ip) => Key::Text(AddressText::from_ip(&ip).as_str().to_owned()),
            None => Key::Fallback,
        };
    }
    match std::str::from_utf8(values[0]).map(str::trim) {
        Ok(text) if !text.is_empty() => Key::Text(match text.parse::<IpAddr>() {
            // Addresses in the same text form as everywhere else.
            Ok(ip) => AddressText::from_ip(&ip).as_str().to_owned(),
            Err(_) => text.to_owned(),
        }),
        _ => Key::Fallback,
    }
}

/// An address as proxies write it: `1.2.3.4`, `2001:db8::1`, `[2001:db8::1]`, with or without a
/// port (`1.2.3.4:5678`, `[2001:db8::1]:5678`).
fn parse_entry(entry: &str) -> Option<IpAddr> {
    if let Ok(ip) = entry.parse() {
        return Some(ip);
    }
    if let Some(rest) = entry.strip_prefix('[') {
        return rest.split(']').next()?.parse().ok();
    }
    let (host, port) = entry.rsplit_once(':')?;
    port.parse::<u16>().ok()?;
    host.parse::<std::net::Ipv4Addr>().ok().map(IpAddr::V4)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn trusted() -> Trusted {
        Trusted::parse(&["10.0.0.0/8"]).unwrap_or_default()
    }

    fn head(headers: &str) -> Vec<u8> {
        format!("GET / HTTP/1.1\r\nHost: x\r\n{headers}\r\n").into_bytes()
    }

    #[test]
    fn forwarded_for_takes_the_rightmost_untrusted_entry() {
        let t = trusted();
        let key = |h: &str| route_key(&head(h), "x-forwarded-for", &t);
        assert_eq!(
            key("X-Forwarded-For: 1.2.3.4\r\n"),
            Key::Text("1.2.3.4".into())
        );
        // A forged entry on the left is ignored; our proxies' entries on the right are skipped.
        assert_eq!(
            key("X-Forwarded-For: 6.6.6.6, 1.2.3.4, 10.0.0.7\r\n"),
            Key::Text("1.2.3.4".into())
        );
        assert_eq!(
            key("x-forwarded-for: 6.6.6.6\r\nX-Forwarded-For: 1.2.3.4\r\n"),
            Key::Text("1.2.3.4".into())
        );
        assert_eq!(
            key("X-Forwarded-For: [2001:db8::1]:443\r\n"),
            Key::Text("2001:db8::1".into())
        );
        assert_eq!(
            key("X-Forwarded-For: 1.2.3.4:80\r\n"),
            Key::Text("1.2.3.4".into())
        );
        // Only trusted entries: the left-most one is the client.
        assert_eq!(
            key("X-Forwarded-For: 10.0.0.1, 10.0.0.2\r\n"),
            Key::Text("10.0.0.1".into())
        );
        assert_eq!(key("X-Forwarded-For: garbage\r\n"), Key::Fallback);
        assert_eq!(key("X-Forwarded-For: \r\n"), Key::Fallback);
        assert_eq!(key(""), Key::Fallback);
    }

    #[test]
    fn other_headers_and_partial_heads() {
        let t = trusted();
        assert_eq!(
            route_key(&head("X-Real-IP: ::ffff:1.2.3.4\r\n"), "x-real-ip", &t),
            Key::Text("::ffff:1.2.3.4".into())
        );
        assert_eq!(
            route_key(&head("X-Session: abc \r\n"), "x-session", &t),
            Key::Text("abc".into())
        );
        assert_eq!(
            route_key(b"GET / HTTP/1.1\r\nX-Real-IP: 1.2", "x-real-ip", &t),
            Key::Incomplete
        );
        assert_eq!(
            route_key(b"\x16\x03\x01\x02\x00", "x-real-ip", &t),
            Key::Fallback
        );
    }

    proptest! {
        #[test]
        fn never_panics(buf in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let _ = route_key(&buf, "x-forwarded-for", &trusted());
            let _ = route_key(&buf, "x-real-ip", &trusted());
        }
    }
}
