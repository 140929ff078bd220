//! Engine.io session ids that name their worker (`routeBy: 'sid'`): no session map anywhere.
//!
//! An id is 20 characters of base64url (`[A-Za-z0-9_-]`, what engine.io and `@socket.io/sticky`
//! accept: `/sid=([\w\-]{20})/`). The first two characters are the worker's place (its slot),
//! 12 bits, so up to [`MAX_PLACES`] places; the other 18 are 108 random bits from the worker's
//! CSPRNG (`lib/socketio.js` makes them). No check character: the place is not a secret (a
//! client can reach every worker anyway, by opening a new session), and a forged or stale id
//! only reaches a worker that answers "Session ID unknown", as any worker would; the randomness
//! (108 bits, more than the 96 asked for) is what keeps sessions unguessable.
//!
//! With the `node` option (several hosts behind one balancer) an id is `<node>.` followed by the
//! id above: the node's name, 1 to [`MAX_NODE_LEN`] characters `[a-z0-9]`, lets the balancer pick
//! the host by the id alone. An id that names another node is never routed to a worker here.
//!
//! The router reads the id from the request line only (`GET /socket.io/?EIO=4&transport=polling&sid=…
//! HTTP/1.1`): engine.io sends it in the query of every request after the handshake, polling and
//! websocket alike, so headers are never parsed.

/// The base64url alphabet, in value order.
const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// The length of a session id.
pub(crate) const ID_LEN: usize = 20;
/// Places (slots) an id can name: two base64url characters.
pub(crate) const MAX_PLACES: usize = 64 * 64;

/// The longest node name (`[a-z0-9]`).
pub(crate) const MAX_NODE_LEN: usize = 16;

/// What the request line of a connection says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Sid {
    /// A well-formed id naming this place (which may or may not be live).
    Place(usize),
    /// A well-formed id of another node (its name): no worker here knows the session.
    OtherNode(String),
    /// No id, or a malformed one, or not an HTTP request line: a new session.
    New,
    /// The request line is not complete yet.
    Incomplete,
    /// A TLS handshake: the request line is encrypted. Routed by the client's address instead
    /// (among the ready workers), so HTTPS sessions still stick unless clients share an address.
    Tls,
}

/// The first byte of a TLS record carrying a handshake (a ClientHello).
const TLS_HANDSHAKE: u8 = 0x16;

/// The value of one base64url character.
fn value(c: u8) -> Option<usize> {
    ALPHABET.iter().position(|&a| a == c)
}

/// The place an id encodes, if it is an id (20 base64url characters).
pub(crate) fn place_of(id: &[u8]) -> Option<usize> {
    if id.len() != ID_LEN || !id.iter().all(|&c| value(c).is_some()) {
        return None;
    }
    Some(value(id[0])? * 64 + value(id[1])?)
}

/// The two characters that encode `place` (below [`MAX_PLACES`]); for tests and the JS mirror.
#[cfg(test)]
fn place_chars(place: usize) -> [u8; 2] {
    [ALPHABET[(place >> 6) & 63], ALPHABET[place & 63]]
}

/// Whether `name` is a node name: 1 to [`MAX_NODE_LEN`] characters `[a-z0-9]`.
pub(crate) fn valid_node(name: &[u8]) -> bool {
    (1..=MAX_NODE_LEN).contains(&name.len())
        && name
            .iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
}

/// What an id says to the server of node `node` (`None`: ids carry no node name).
fn of_id(id: &[u8], node: Option<&[u8]>) -> Sid {
    let Some(dot) = id.iter().position(|&b| b == b'.') else {
        return place_of(id).map_or(Sid::New, Sid::Place);
    };
    let (name, rest) = (&id[..dot], &id[dot + 1..]);
    match (node, place_of(rest)) {
        (Some(own), Some(place)) if own == name => Sid::Place(place),
        (Some(_), Some(_)) if valid_node(name) => {
            Sid::OtherNode(String::from_utf8_lossy(name).into_owned())
        }
        _ => Sid::New,
    }
}

/// Reads the `sid` query parameter of the request line at the start of `head`, for the server
/// of node `node` (`None`: no `node` option).
pub(crate) fn from_head(head: &[u8], node: Option<&[u8]>) -> Sid {
    if head.first() == Some(&TLS_HANDSHAKE) {
        return Sid::Tls;
    }
    let Some(end) = head.iter().position(|&b| b == b'\n') else {
        return Sid::Incomplete;
    };
    let line = head[..end].strip_suffix(b"\r").unwrap_or(&head[..end]);
    // METHOD SP target SP version
    let mut parts = line.split(|&b| b == b' ');
    let (Some(_method), Some(target)) = (parts.next(), parts.next()) else {
        return Sid::New;
    };
    let target = target.split(|&b| b == b'#').next().unwrap_or(target);
    let Some(query_at) = target.iter().position(|&b| b == b'?') else {
        return Sid::New;
    };
    let query = &target[query_at + 1..];
    for pair in query.split(|&b| b == b'&') {
        let (key, val) = match pair.iter().position(|&b| b == b'=') {
            Some(eq) => (&pair[..eq], &pair[eq + 1..]),
            None => (pair, &b""[..]),
        };
        if decoded(key).as_deref() != Some(&b"sid"[..]) {
            continue;
        }
        // The first sid decides (a repeated one is an array to engine.io, which refuses it).
        return decoded(val).map_or(Sid::New, |id| of_id(&id, node));
    }
    Sid::New
}

/// The longest id: a node name, its dot and the id proper.
pub(crate) const MAX_ID_LEN: usize = MAX_NODE_LEN + 1 + ID_LEN;

/// Percent-decodes a query component (`+` is left as is: it is not in an id anyway); `None` for
/// a malformed escape or one longer than an id could be.
fn decoded(text: &[u8]) -> Option<Vec<u8>> {
    if text.len() > MAX_ID_LEN * 3 {
        return None;
    }
    let mut out = Vec::with_capacity(text.len());
    let mut i = 0;
    while i < text.len() {
        if text[i] == b'%' {
            let hex = text.get(i + 1..i + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(text[i]);
            i += 1;
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An id of `place` with a fixed random part.
    fn id(place: usize) -> String {
        let mut id = place_chars(place).to_vec();
        id.extend_from_slice(b"abcdefghij-_KLMNOP");
        String::from_utf8(id).unwrap_or_default()
    }

    /// What a head says to a server without the `node` option.
    fn head(h: &[u8]) -> Sid {
        from_head(h, None)
    }

    fn line(target: &str) -> Vec<u8> {
        format!("GET {target} HTTP/1.1\r\nHost: x\r\n\r\n").into_bytes()
    }

    #[test]
    fn places_round_trip() {
        for place in [0, 1, 63, 64, 65, 1000, MAX_PLACES - 1] {
            assert_eq!(place_of(id(place).as_bytes()), Some(place));
        }
        // What lib/socketio.js makes for place 5: "AF" + 18 characters.
        assert_eq!(&place_chars(5), b"AF");
        assert_eq!(&place_chars(64 + 2), b"BC");
    }

    #[test]
    fn eio4_and_eio3_polling_and_websocket() {
        let sid = id(3);
        for target in [
            format!("/socket.io/?EIO=4&transport=polling&t=OaB1&sid={sid}"),
            format!("/socket.io/?EIO=3&transport=polling&sid={sid}&t=1234-5"),
            format!("/socket.io/?sid={sid}&EIO=4&transport=websocket"),
            format!("/custom/path/?b64=1&EIO=3&sid={sid}"),
        ] {
            assert_eq!(head(&line(&target)), Sid::Place(3), "{target}");
        }
        // POST with a body after the head: only the line counts.
        let post = format!("POST /socket.io/?EIO=4&transport=polling&sid={sid} HTTP/1.1\r\nContent-Length: 2\r\n\r\n40");
        assert_eq!(head(post.as_bytes()), Sid::Place(3));
        // A bare LF line end.
        let lf = format!("GET /socket.io/?EIO=4&sid={sid} HTTP/1.1\nHost: x\n\n");
        assert_eq!(head(lf.as_bytes()), Sid::Place(3));
    }

    #[test]
    fn percent_encoding() {
        let sid = id(70);
        let encoded: String = sid.bytes().map(|b| format!("%{b:02X}")).collect();
        assert_eq!(
            head(&line(&format!("/socket.io/?EIO=4&sid={encoded}"))),
            Sid::Place(70)
        );
        assert_eq!(
            head(&line(&format!("/socket.io/?EIO=4&%73id={sid}"))),
            Sid::Place(70)
        );
        // Broken escapes: no id.
        assert_eq!(
            head(&line("/socket.io/?EIO=4&sid=%G1bcdefghijklmnopqrs")),
            Sid::New
        );
        assert_eq!(head(&line("/socket.io/?EIO=4&sid=%")), Sid::New);
    }

    #[test]
    fn no_sid_is_a_new_session() {
        for target in [
            "/socket.io/?EIO=4&transport=polling&t=N8hyd6w",
            "/socket.io/",
            "/",
            "/?",
            "/?&&=&sid",
            "/?xsid=AAAAAAAAAAAAAAAAAAAA",
            "/?sidx=AAAAAAAAAAAAAAAAAAAA",
            "/index.html#?sid=AAAAAAAAAAAAAAAAAAAA",
        ] {
            assert_eq!(head(&line(target)), Sid::New, "{target}");
        }
        // Too short, too long, foreign characters.
        for bad in [
            "AAAAAAAAAAAAAAAAAAA",
            "AAAAAAAAAAAAAAAAAAAAA",
            "AAAAAAAAAAAAAAAAAAA+",
            "AAAAAAAAAAAAAAAAAA%00",
        ] {
            assert_eq!(
                head(&line(&format!("/socket.io/?sid={bad}"))),
                Sid::New,
                "{bad}"
            );
        }
        assert_eq!(head(b"\r\n"), Sid::New);
        assert_eq!(head(b"garbage\r\n"), Sid::New);
        assert_eq!(head(b"\x00\x03\x01\n"), Sid::New);
    }

    #[test]
    fn tls_is_seen_from_its_first_byte() {
        assert_eq!(head(b"\x16"), Sid::Tls);
        assert_eq!(
            head(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"),
            Sid::Tls
        );
    }

    #[test]
    fn a_line_split_across_segments_is_incomplete_until_its_end() {
        let full = line(&format!(
            "/socket.io/?EIO=4&transport=polling&sid={}",
            id(9)
        ));
        let end = full.iter().position(|&b| b == b'\n').unwrap_or(full.len());
        for cut in 0..end {
            assert_eq!(head(&full[..cut]), Sid::Incomplete, "cut at {cut}");
        }
        assert_eq!(head(&full[..=end]), Sid::Place(9));
    }

    #[test]
    fn ids_with_a_node_name() {
        let own = Some(&b"web1"[..]);
        let at = |target: String| from_head(&line(&target), own);
        assert_eq!(
            at(format!("/socket.io/?EIO=4&sid=web1.{}", id(7))),
            Sid::Place(7)
        );
        assert_eq!(
            at(format!("/socket.io/?EIO=4&sid=web2.{}", id(7))),
            Sid::OtherNode("web2".into())
        );
        // The longest name, percent-encoded: still read whole.
        let long = format!("{}.{}", "a".repeat(MAX_NODE_LEN), id(1));
        let encoded: String = long.bytes().map(|b| format!("%{b:02X}")).collect();
        assert_eq!(
            at(format!("/socket.io/?EIO=4&sid={encoded}")),
            Sid::OtherNode("a".repeat(MAX_NODE_LEN))
        );
        // Ids without a name are as before; a name that is not one, or a malformed id after
        // it, is a new session, never another node's.
        assert_eq!(at(format!("/?sid={}", id(3))), Sid::Place(3));
        for bad in [
            format!("{}.{}", "a".repeat(MAX_NODE_LEN + 1), id(1)),
            format!("Web2.{}", id(1)),
            format!(".{}", id(1)),
            "web2.short".to_owned(),
            format!("web2.{}.x", id(1)),
        ] {
            assert_eq!(at(format!("/?sid={bad}")), Sid::New, "{bad}");
        }
        // A server without a node name reads a named id as no id (ids are as they were).
        assert_eq!(head(&line(&format!("/?sid=web1.{}", id(7)))), Sid::New);
    }

    #[test]
    fn node_names() {
        assert!(valid_node(b"a"));
        assert!(valid_node(b"web1"));
        assert!(valid_node(b"0123456789abcdef"));
        for bad in [
            &b""[..],
            b"0123456789abcdefg",
            b"Web",
            b"w-1",
            b"w.1",
            b"w_1",
        ] {
            assert!(!valid_node(bad), "{bad:?}");
        }
    }
}
