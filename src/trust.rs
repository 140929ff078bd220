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

    /// Whether nothing is trusted.
    pub fn is_empty(&self) -> bool {
        self.nets.is_empty()
    }

    /// Whether `ip` is trusted. An IPv4 entry also matches its `::ffff:` form, which is how a
    /// dual-stack listener sees IPv4 peers.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        self.nets.iter().any(|net| net.contains(&ip))
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
    fn reports_the_bad_entry() {
        assert_eq!(
            Trusted::parse(&["10.0.0.0/8", "10.0.0.0/33"]).err(),
            Some("10.0.0.0/33".into())
        );
        assert_eq!(Trusted::parse(&["nope"]).err(), Some("nope".into()));
    }
}
