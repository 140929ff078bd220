//! Client addresses as route keys: the exact text Node shows as `socket.remoteAddress`.
//!
//! Node formats addresses with libuv's `inet_ntop` (BIND's algorithm), which differs from Rust's
//! `Display` for IPv4-compatible `::a.b.c.d` addresses, and appends `%ifname` to link-local peers.
//! Formatting goes by hand into a stack buffer: std's formatter costs several times the hash.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// Longest text: 45 characters of IPv6 + '%' + an interface name (at most 15 bytes) or a u32;
/// plus slack so that an octet's three table bytes can always be copied at once.
const CAPACITY: usize = 64;

/// The decimal text of every octet, padded to 3 bytes, and its length.
const DECIMAL: [([u8; 3], u8); 256] = {
    let mut table = [([0u8; 3], 0u8); 256];
    let mut i = 0;
    while i < 256 {
        let (h, t, o) = ((i / 100) as u8, ((i / 10) % 10) as u8, (i % 10) as u8);
        table[i] = if i >= 100 {
            ([b'0' + h, b'0' + t, b'0' + o], 3)
        } else if i >= 10 {
            ([b'0' + t, b'0' + o, 0], 2)
        } else {
            ([b'0' + o, 0, 0], 1)
        };
        i += 1;
    }
    table
};

/// An address formatted as Node formats it, held inline.
#[derive(Clone, Copy)]
pub struct AddressText {
    buf: [u8; CAPACITY],
    len: usize,
}

impl std::fmt::Debug for AddressText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("AddressText").field(&self.as_str()).finish()
    }
}

impl AddressText {
    /// Formats the address part of `addr` (the port is not part of the route key).
    pub fn new(addr: &SocketAddr) -> Self {
        let mut text = AddressText::empty();
        match addr {
            SocketAddr::V4(a) => text.push_v4(a.ip()),
            SocketAddr::V6(a) => {
                text.push_v6(a.ip());
                if is_link_local(a.ip()) && a.scope_id() > 0 {
                    text.push(b'%');
                    text.push_scope(a.scope_id());
                }
            }
        }
        text
    }

    /// The text of an address without a scope.
    pub fn from_ip(ip: &IpAddr) -> Self {
        match ip {
            IpAddr::V4(v4) => Self::from_v4(v4),
            IpAddr::V6(v6) => Self::from_v6(v6),
        }
    }

    /// The text of an IPv4 address, dotted.
    pub(crate) fn from_v4(ip: &Ipv4Addr) -> Self {
        let mut text = AddressText::empty();
        text.push_v4(ip);
        text
    }

    /// The text of an IPv6 address without a scope.
    pub(crate) fn from_v6(ip: &Ipv6Addr) -> Self {
        let mut text = AddressText::empty();
        text.push_v6(ip);
        text
    }

    fn empty() -> Self {
        AddressText {
            buf: [0; CAPACITY],
            len: 0,
        }
    }

    /// The formatted bytes (always ASCII).
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }

    /// The formatted text.
    pub fn as_str(&self) -> &str {
        // Only ASCII is ever pushed, and interface names are checked before they are copied.
        std::str::from_utf8(self.as_bytes()).unwrap_or("")
    }

    #[inline]
    fn push(&mut self, b: u8) {
        if self.len < CAPACITY {
            self.buf[self.len] = b;
            self.len += 1;
        }
    }

    #[inline]
    fn push_decimal(&mut self, mut n: u32) {
        let mut digits = [0u8; 10];
        let mut i = digits.len();
        loop {
            i -= 1;
            digits[i] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        for &d in &digits[i..] {
            self.push(d);
        }
    }

    #[inline]
    fn push_v4(&mut self, ip: &Ipv4Addr) {
        // At most 15 bytes; the buffer always has room (IPv6 text is at most 45 before it).
        let [a, b, c, d] = ip.octets();
        let mut at = self.len;
        for (i, octet) in [a, b, c, d].into_iter().enumerate() {
            if i > 0 {
                self.buf[at] = b'.';
                at += 1;
            }
            let (digits, n) = DECIMAL[usize::from(octet)];
            self.buf[at..at + 3].copy_from_slice(&digits);
            at += usize::from(n);
        }
        self.len = at;
    }

    fn push_hex(&mut self, word: u16) {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut started = false;
        for shift in [12u16, 8, 4, 0] {
            let nibble = (word >> shift) & 0xf;
            if nibble != 0 || started || shift == 0 {
                self.push(HEX[usize::from(nibble)]);
                started = true;
            }
        }
    }

    /// libuv's `inet_ntop6`: compress the first longest run (>= 2) of zero words; print an
    /// embedded IPv4 address for `::a.b.c.d` (run of exactly 6) and `::ffff:a.b.c.d`.
    fn push_v6(&mut self, ip: &Ipv6Addr) {
        // What a dual-stack listener sees for every IPv4 client; libuv prints it this way for
        // every mapped address, so the general algorithm below would give the same text.
        if let Some(v4) = ip.to_ipv4_mapped() {
            self.buf[self.len..self.len + 7].copy_from_slice(b"::ffff:");
            self.len += 7;
            self.push_v4(&v4);
            return;
        }
        let words = ip.segments();
        let (mut best_base, mut best_len) = (usize::MAX, 0usize);
        let (mut cur_base, mut cur_len) = (usize::MAX, 0usize);
        for (i, &w) in words.iter().enumerate() {
            if w == 0 {
                if cur_base == usize::MAX {
                    cur_base = i;
                    cur_len = 1;
                } else {
                    cur_len += 1;
                }
            } else if cur_base != usize::MAX {
                if best_base == usize::MAX || cur_len > best_len {
                    (best_base, best_len) = (cur_base, cur_len);
                }
                cur_base = usize::MAX;
            }
        }
        if cur_base != usize::MAX && (best_base == usize::MAX || cur_len > best_len) {
            (best_base, best_len) = (cur_base, cur_len);
        }
        if best_base != usize::MAX && best_len < 2 {
            best_base = usize::MAX;
        }
        let mut i = 0;
        while i < 8 {
            if best_base != usize::MAX && i >= best_base && i < best_base + best_len {
                if i == best_base {
                    self.push(b':');
                }
                i += 1;
                continue;
            }
            if i != 0 {
                self.push(b':');
            }
            if i == 6 && best_base == 0 && (best_len == 6 || (best_len == 5 && words[5] == 0xffff))
            {
                let o = ip.octets();
                self.push_v4(&Ipv4Addr::new(o[12], o[13], o[14], o[15]));
                return;
            }
            self.push_hex(words[i]);
            i += 1;
        }
        if best_base != usize::MAX && best_base + best_len == 8 {
            self.push(b':');
        }
    }

    /// Node appends the interface name (`if_indextoname`); when the index has no name we fall
    /// back to the number, where Node would throw.
    fn push_scope(&mut self, scope_id: u32) {
        let mut name = [0 as libc::c_char; libc::IF_NAMESIZE];
        // SAFETY: `name` has IF_NAMESIZE bytes, as if_indextoname requires.
        let found = unsafe { !libc::if_indextoname(scope_id, name.as_mut_ptr()).is_null() };
        let bytes = name.iter().take_while(|&&c| c != 0).map(|&c| c as u8);
        if found && bytes.clone().all(|b| b.is_ascii_graphic()) {
            for b in bytes {
                self.push(b);
            }
        } else {
            self.push_decimal(scope_id);
        }
    }
}

fn is_link_local(ip: &Ipv6Addr) -> bool {
    ip.segments()[0] & 0xffc0 == 0xfe80
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{SocketAddrV4, SocketAddrV6};

    fn v6(text: &str) -> String {
        let ip: Ipv6Addr = text.parse().expect("test address");
        AddressText::from_v6(&ip).as_str().to_owned()
    }

    #[test]
    fn ipv4_is_dotted() {
        for text in [
            "0.0.0.0",
            "127.0.0.1",
            "1.2.3.4",
            "255.255.255.255",
            "10.0.100.9",
        ] {
            let ip: Ipv4Addr = text.parse().expect("test address");
            assert_eq!(AddressText::from_v4(&ip).as_str(), text);
        }
    }

    #[test]
    fn ipv6_matches_libuv() {
        assert_eq!(v6("::"), "::");
        assert_eq!(v6("::1"), "::1");
        assert_eq!(v6("::ffff:127.0.0.1"), "::ffff:127.0.0.1");
        assert_eq!(v6("::1.2.3.4"), "::1.2.3.4");
        assert_eq!(v6("::0.0.0.2"), "::2");
        assert_eq!(v6("::ffff:0.0.0.1"), "::ffff:0.0.0.1");
        assert_eq!(v6("2001:db8::1"), "2001:db8::1");
        assert_eq!(v6("2001:db8:0:1:0:0:0:1"), "2001:db8:0:1::1");
        assert_eq!(v6("2001:0:0:1:0:0:0:1"), "2001:0:0:1::1");
        assert_eq!(v6("1:0:2:3:4:5:6:7"), "1:0:2:3:4:5:6:7");
        assert_eq!(v6("1:2:3:4:5:6:7:0"), "1:2:3:4:5:6:7:0");
        assert_eq!(v6("1:2:3:4:5:6::"), "1:2:3:4:5:6::");
        assert_eq!(v6("fe80::abcd:ef01"), "fe80::abcd:ef01");
        assert_eq!(
            v6("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"),
            "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"
        );
    }

    #[test]
    fn socket_addresses_drop_the_port() {
        let a = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(10, 1, 2, 3), 4000));
        assert_eq!(AddressText::new(&a).as_str(), "10.1.2.3");
        let mapped = SocketAddr::V6(SocketAddrV6::new(
            Ipv4Addr::new(127, 0, 3, 7).to_ipv6_mapped(),
            9,
            0,
            0,
        ));
        assert_eq!(AddressText::new(&mapped).as_str(), "::ffff:127.0.3.7");
    }

    #[test]
    fn link_local_gets_the_interface() {
        let ip: Ipv6Addr = "fe80::1".parse().expect("test address");
        let lo = SocketAddr::V6(SocketAddrV6::new(ip, 1, 0, 1));
        // Index 1 is the loopback interface on Linux.
        assert_eq!(AddressText::new(&lo).as_str(), "fe80::1%lo");
        let unnamed = SocketAddr::V6(SocketAddrV6::new(ip, 1, 0, 999_999));
        assert_eq!(AddressText::new(&unnamed).as_str(), "fe80::1%999999");
        let global = SocketAddr::V6(SocketAddrV6::new(
            "2001:db8::1".parse().expect("ip"),
            1,
            0,
            1,
        ));
        assert_eq!(AddressText::new(&global).as_str(), "2001:db8::1");
    }
}
