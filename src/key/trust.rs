//! Trusted proxies: the peers whose forwarded addresses (headers, PROXY protocol) are believed.

use std::net::IpAddr;

use ipnet::IpNet;

/// A set of addresses and CIDR ranges.
#[derive(Debug, Clone, Default)]
pub struct Trusted {
    nets: Vec<IpNet>,
}

impl Trusted {
    /// Parses entries such as `10.0.0.0/8`, `127.0.0.1`, `::1`, `fd00::/8`; returns the first
    /// entry that is neither an address nor a range as the error.
    pub fn parse<S: AsRef<str>>(entries: &[S]) -> Result<Trusted, String> {
        let nets = entries
            .iter()
            .map(|entry| {
                let text = entry.as_ref().trim();
                text.parse::<IpNet>()
                    .or_else(|_| text.parse::<IpAddr>().map(IpNet::from))
                    .map_err(|_| entry.as_ref().to_owned())
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Trusted { nets })
    }

    /// Whether `ip` is trusted. An IPv4 peer is the same peer in both its forms, `a.b.c.d` and
    /// `::ffff:a.b.c.d` (how a dual-stack listener and Node's `remoteAddress` show it), and
    /// matches an entry written either way: `127.0.0.1`, `::ffff:127.0.0.1`,
    /// `::ffff:127.0.0.0/104`; `::/0` covers every peer, `0.0.0.0/0` every IPv4 peer.
    pub(crate) fn contains(&self, ip: IpAddr) -> bool {
        let (v4, v6) = match ip {
            IpAddr::V4(v4) => (Some(v4), IpAddr::V6(v4.to_ipv6_mapped())),
            IpAddr::V6(v6) => (v6.to_ipv4_mapped(), ip),
        };
        self.nets
            .iter()
            .any(|net| net.contains(&v6) || v4.is_some_and(|v4| net.contains(&IpAddr::V4(v4))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("test address")
    }

    #[test]
    fn matches_addresses_ranges_and_mapped_forms() -> Result<(), String> {
        let t = Trusted::parse(&["10.0.0.0/8", "127.0.0.1", "fd00::/8"])?;
        assert!(t.contains(ip("10.1.2.3")));
        assert!(t.contains(ip("::ffff:10.1.2.3")));
        assert!(t.contains(ip("127.0.0.1")));
        assert!(t.contains(ip("::ffff:127.0.0.1")));
        assert!(!t.contains(ip("127.0.0.2")));
        assert!(t.contains(ip("fd12::1")));
        assert!(!t.contains(ip("fe80::1")));
        assert!(!t.contains(ip("11.0.0.1")));
        Ok(())
    }

    #[test]
    fn mapped_entries_and_v6_ranges_cover_ipv4_peers_in_both_forms() -> Result<(), String> {
        let t = Trusted::parse(&["::ffff:127.0.0.1"])?;
        assert!(t.contains(ip("127.0.0.1")));
        assert!(t.contains(ip("::ffff:127.0.0.1")));
        assert!(!t.contains(ip("127.0.0.2")));
        let t = Trusted::parse(&["::ffff:127.0.0.0/104"])?;
        assert!(t.contains(ip("127.9.9.9")));
        assert!(t.contains(ip("::ffff:127.9.9.9")));
        assert!(!t.contains(ip("128.0.0.1")));
        let t = Trusted::parse(&["::/0"])?;
        assert!(t.contains(ip("10.1.2.3")));
        assert!(t.contains(ip("::ffff:10.1.2.3")));
        assert!(t.contains(ip("2001:db8::1")));
        let t = Trusted::parse(&["0.0.0.0/0"])?;
        assert!(t.contains(ip("::ffff:10.1.2.3")));
        assert!(!t.contains(ip("2001:db8::1")));
        Ok(())
    }

    #[test]
    fn reports_the_bad_entry() {
        assert_eq!(
            Trusted::parse(&["10.0.0.0/8", "10.0.0.0/33"]).err(),
            Some("10.0.0.0/33".into())
        );
        assert_eq!(Trusted::parse(&["nope"]).err(), Some("nope".into()));
    }
}
