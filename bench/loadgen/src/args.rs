//! Command-line parsing (plain std, no external parser).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

pub const USAGE: &str = "\
loadgen: HTTP/1.1 load generator for loopback targets, spreading connections over many source IPs

Usage:
  loadgen --url http://127.0.0.1:8080/ --mode close|keepalive|rate --duration 5s
          --connections 32 --ips 200 [--rate 1000] [--ip-base 127.0.1.1] [--json]

Options:
  --url URL            target, http:// only, host must be 127.x.y.z, [::1] or localhost
  --mode MODE          close (new connection per request, closed loop), keepalive
                       (persistent connections, back-to-back requests), rate (open loop:
                       --rate new connections per second, one request each)   [close]
  --duration D         run time, e.g. 5s, 500ms, 1.5s, 2m                     [5s]
  --requests N         also stop after N request attempts (optional)
  --connections N      concurrent loops / persistent connections (close, keepalive) [32]
  --rate R             new connections per second (rate mode, required there)
  --max-inflight N     cap on in-flight requests in rate mode; starts over the cap
                       are skipped and counted                                [10000]
  --ips N              number of distinct source addresses                    [1]
  --ip-base A          first source address, IPv4 in 127.0.0.0/8              [127.0.1.1]
  --threads N          tokio worker threads                                   [1]
  --timeout D          per-request timeout (connect + response)               [10s]
  --json               print one JSON line instead of the human summary
  -h, --help           this text
";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Close,
    KeepAlive,
    Rate,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Close => "close",
            Mode::KeepAlive => "keepalive",
            Mode::Rate => "rate",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Target {
    pub addr: SocketAddr,
    /// Value of the Host header (authority as written in the URL).
    pub host_header: String,
    /// Path plus query, always starting with '/'.
    pub path: String,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub target: Target,
    pub mode: Mode,
    pub duration: Duration,
    pub requests: Option<u64>,
    pub connections: usize,
    pub rate: Option<f64>,
    pub max_inflight: usize,
    pub sources: Vec<IpAddr>,
    pub threads: usize,
    pub timeout: Duration,
    pub json: bool,
}

/// Result of parsing: either a config to run or a request for the help text.
pub enum Parsed {
    Run(Box<Config>),
    Help,
}

pub fn parse<I: IntoIterator<Item = String>>(args: I) -> Result<Parsed, String> {
    let mut url: Option<String> = None;
    let mut mode = Mode::Close;
    let mut duration = Duration::from_secs(5);
    let mut requests: Option<u64> = None;
    let mut connections: usize = 32;
    let mut rate: Option<f64> = None;
    let mut max_inflight: usize = 10_000;
    let mut ips: Option<usize> = None;
    let mut ip_base = Ipv4Addr::new(127, 0, 1, 1);
    let mut threads: usize = 1;
    let mut timeout = Duration::from_secs(10);
    let mut json = false;

    let mut it = args.into_iter();
    while let Some(arg) = it.next() {
        let (name, inline) = match arg.split_once('=') {
            Some((n, v)) if n.starts_with("--") => (n.to_string(), Some(v.to_string())),
            _ => (arg.clone(), None),
        };
        let mut value = |n: &str| -> Result<String, String> {
            match &inline {
                Some(v) => Ok(v.clone()),
                None => it.next().ok_or_else(|| format!("{n} needs a value")),
            }
        };
        match name.as_str() {
            "-h" | "--help" => return Ok(Parsed::Help),
            "--json" => json = true,
            "--url" => url = Some(value("--url")?),
            "--mode" => {
                mode = match value("--mode")?.as_str() {
                    "close" => Mode::Close,
                    "keepalive" | "keep-alive" => Mode::KeepAlive,
                    "rate" => Mode::Rate,
                    other => return Err(format!("unknown mode {other:?} (close|keepalive|rate)")),
                }
            }
            "--duration" => duration = parse_duration(&value("--duration")?)?,
            "--timeout" => timeout = parse_duration(&value("--timeout")?)?,
            "--requests" => requests = Some(parse_pos("--requests", &value("--requests")?)?),
            "--connections" => {
                connections = parse_pos("--connections", &value("--connections")?)? as usize
            }
            "--max-inflight" => {
                max_inflight = parse_pos("--max-inflight", &value("--max-inflight")?)? as usize
            }
            "--ips" => ips = Some(parse_pos("--ips", &value("--ips")?)? as usize),
            "--threads" => threads = parse_pos("--threads", &value("--threads")?)? as usize,
            "--rate" => {
                let v = value("--rate")?;
                let r: f64 = v
                    .parse()
                    .map_err(|_| format!("--rate: not a number: {v:?}"))?;
                if !(r.is_finite() && r > 0.0) {
                    return Err(format!("--rate must be > 0, got {v:?}"));
                }
                rate = Some(r);
            }
            "--ip-base" => {
                let v = value("--ip-base")?;
                ip_base = v
                    .parse()
                    .map_err(|_| format!("--ip-base: not an IPv4 address: {v:?}"))?;
                if !ip_base.is_loopback() {
                    return Err(format!("--ip-base must be in 127.0.0.0/8, got {ip_base}"));
                }
            }
            other => return Err(format!("unknown argument {other:?} (see --help)")),
        }
    }

    let url = url.ok_or("--url is required (see --help)")?;
    let target = parse_url(&url)?;
    if duration.is_zero() {
        return Err("--duration must be > 0".into());
    }
    if timeout.is_zero() {
        return Err("--timeout must be > 0".into());
    }
    if mode == Mode::Rate && rate.is_none() {
        return Err("--mode rate needs --rate".into());
    }
    let sources: Vec<IpAddr> = match target.addr {
        SocketAddr::V4(_) => source_ips(ip_base, ips.unwrap_or(1))?
            .into_iter()
            .map(IpAddr::V4)
            .collect(),
        SocketAddr::V6(_) => {
            if ips.unwrap_or(1) > 1 {
                return Err("--ips > 1 needs an IPv4 target (an IPv6 target only has ::1)".into());
            }
            vec![IpAddr::V6(Ipv6Addr::LOCALHOST)]
        }
    };

    Ok(Parsed::Run(Box::new(Config {
        target,
        mode,
        duration,
        requests,
        connections,
        rate,
        max_inflight,
        sources,
        threads,
        timeout,
        json,
    })))
}

fn parse_pos(name: &str, v: &str) -> Result<u64, String> {
    match v.parse::<u64>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(format!("{name}: expected a positive integer, got {v:?}")),
    }
}

/// Parses "5s", "500ms", "1.5s", "2m", "100us" or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("bad duration {s:?} (e.g. 5s, 500ms)"))?;
    let secs = match unit {
        "" | "s" => n,
        "ms" => n / 1e3,
        "us" => n / 1e6,
        "m" => n * 60.0,
        _ => return Err(format!("bad duration unit in {s:?} (us, ms, s, m)")),
    };
    Duration::try_from_secs_f64(secs).map_err(|_| format!("bad duration {s:?}"))
}

/// Parses `http://host[:port][/path]`. Only loopback targets are accepted, and
/// host names other than `localhost` are refused (no DNS lookups).
pub fn parse_url(url: &str) -> Result<Target, String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("only http:// URLs are supported, got {url:?}"))?;
    let (authority, path) = match rest.find(['/', '?']) {
        Some(i) if rest.as_bytes()[i] == b'/' => (&rest[..i], rest[i..].to_string()),
        Some(i) => (&rest[..i], format!("/{}", &rest[i..])),
        None => (rest, "/".to_string()),
    };
    let path = match path.find('#') {
        Some(i) => path[..i].to_string(),
        None => path,
    };
    if authority.is_empty() || authority.contains('@') {
        return Err(format!("bad host in URL {url:?}"));
    }
    let (host, port) = if let Some(r) = authority.strip_prefix('[') {
        let end = r
            .find(']')
            .ok_or_else(|| format!("bad IPv6 host in URL {url:?}"))?;
        let port = match &r[end + 1..] {
            "" => None,
            p => Some(
                p.strip_prefix(':')
                    .ok_or_else(|| format!("bad port in URL {url:?}"))?,
            ),
        };
        (&r[..end], port)
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    let port: u16 = match port {
        None => 80,
        Some(p) => p
            .parse()
            .ok()
            .filter(|&p| p != 0)
            .ok_or_else(|| format!("bad port in URL {url:?}"))?,
    };
    let ip: IpAddr = if host.eq_ignore_ascii_case("localhost") {
        IpAddr::V4(Ipv4Addr::LOCALHOST)
    } else {
        host.parse().map_err(|_| {
            format!("host must be an IP literal in 127.0.0.0/8, [::1] or localhost, got {host:?}")
        })?
    };
    if !ip.is_loopback() {
        return Err(format!(
            "refusing non-loopback target {ip}: only 127.0.0.0/8 and ::1 are allowed"
        ));
    }
    Ok(Target {
        addr: SocketAddr::new(ip, port),
        host_header: authority.to_string(),
        path,
    })
}

/// Enumerates `n` source addresses starting at `base`, skipping addresses whose
/// last octet is 0 or 255, and never leaving 127.0.0.0/8.
pub fn source_ips(base: Ipv4Addr, n: usize) -> Result<Vec<Ipv4Addr>, String> {
    let mut out = Vec::with_capacity(n);
    let mut cur = u32::from(base);
    while out.len() < n {
        let ip = Ipv4Addr::from(cur);
        if !ip.is_loopback() {
            return Err(format!(
                "--ips {n} from --ip-base {base} runs past 127.255.255.254"
            ));
        }
        let last = ip.octets()[3];
        if last != 0 && last != 255 {
            out.push(ip);
        }
        cur = cur
            .checked_add(1)
            .ok_or_else(|| "source address overflow".to_string())?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ip_enumeration_skips_0_and_255() {
        let ips = source_ips(Ipv4Addr::new(127, 0, 1, 1), 256).expect("enumerate");
        assert_eq!(ips.len(), 256);
        assert_eq!(ips[0], Ipv4Addr::new(127, 0, 1, 1));
        assert_eq!(ips[253], Ipv4Addr::new(127, 0, 1, 254));
        assert_eq!(ips[254], Ipv4Addr::new(127, 0, 2, 1));
        assert_eq!(ips[255], Ipv4Addr::new(127, 0, 2, 2));
        assert!(ips
            .iter()
            .all(|ip| ip.octets()[3] != 0 && ip.octets()[3] != 255));
        let mut sorted = ips.clone();
        sorted.dedup();
        assert_eq!(sorted.len(), ips.len());

        // A base ending in .0 starts at .1; running out of 127/8 is an error.
        let ips = source_ips(Ipv4Addr::new(127, 0, 3, 0), 1).expect("enumerate");
        assert_eq!(ips, vec![Ipv4Addr::new(127, 0, 3, 1)]);
        assert!(source_ips(Ipv4Addr::new(127, 255, 255, 250), 10).is_err());
    }

    #[test]
    fn url_parsing_and_loopback_only() {
        let t = parse_url("http://127.0.0.1:8080/a/b?x=1").expect("url");
        assert_eq!(t.addr, "127.0.0.1:8080".parse().expect("addr"));
        assert_eq!(t.host_header, "127.0.0.1:8080");
        assert_eq!(t.path, "/a/b?x=1");
        let t = parse_url("http://[::1]:9000").expect("url");
        assert_eq!(t.addr, "[::1]:9000".parse().expect("addr"));
        assert_eq!(t.path, "/");
        let t = parse_url("http://localhost").expect("url");
        assert_eq!(t.addr, "127.0.0.1:80".parse().expect("addr"));
        assert!(parse_url("http://10.0.0.1:80/").is_err());
        assert!(parse_url("http://192.168.1.1/").is_err());
        assert!(parse_url("http://example.com/").is_err());
        assert!(parse_url("https://127.0.0.1/").is_err());
        assert!(parse_url("http://127.0.0.1:0/").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert!(parse_duration("5x").is_err());
        assert!(parse_duration("s").is_err());
    }
}
