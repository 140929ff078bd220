//! Result collection, percentiles and output formatting.

use std::fmt::Write as _;
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrKind {
    Refused,
    ConnectTimeout,
    Reset,
    ReadTimeout,
    BadResponse,
    Other,
}

impl ErrKind {
    pub const ALL: [ErrKind; 6] = [
        ErrKind::Refused,
        ErrKind::ConnectTimeout,
        ErrKind::Reset,
        ErrKind::ReadTimeout,
        ErrKind::BadResponse,
        ErrKind::Other,
    ];

    pub fn name(self) -> &'static str {
        match self {
            ErrKind::Refused => "refused",
            ErrKind::ConnectTimeout => "connect_timeout",
            ErrKind::Reset => "reset",
            ErrKind::ReadTimeout => "read_timeout",
            ErrKind::BadResponse => "bad_response",
            ErrKind::Other => "other",
        }
    }
}

/// What happened to one request.
#[derive(Debug)]
pub enum Outcome {
    /// 2xx response; time to first byte.
    Ok(Duration),
    Err(ErrKind, String),
    /// Still in flight when the run ended: not counted.
    Abandoned,
}

#[derive(Debug, Default)]
pub struct Stats {
    /// Time to first byte of each completed request, in microseconds.
    pub ttfb_us: Vec<u32>,
    pub errors: [u64; 6],
    /// First message seen for each error kind (printed to stderr).
    pub samples: [Option<String>; 6],
    /// Rate mode: scheduled starts skipped because of the in-flight cap.
    pub skipped: u64,
    /// Rate mode: largest delay between a scheduled start and the actual one.
    pub max_lag: Duration,
}

impl Stats {
    pub fn record(&mut self, o: Outcome) {
        match o {
            Outcome::Ok(d) => self
                .ttfb_us
                .push(u32::try_from(d.as_micros()).unwrap_or(u32::MAX)),
            Outcome::Err(k, msg) => {
                let i = k as usize;
                self.errors[i] += 1;
                if self.samples[i].is_none() {
                    self.samples[i] = Some(msg);
                }
            }
            Outcome::Abandoned => {}
        }
    }

    pub fn merge(&mut self, mut other: Stats) {
        self.ttfb_us.append(&mut other.ttfb_us);
        for i in 0..self.errors.len() {
            self.errors[i] += other.errors[i];
            if self.samples[i].is_none() {
                self.samples[i] = other.samples[i].take();
            }
        }
        self.skipped += other.skipped;
        self.max_lag = self.max_lag.max(other.max_lag);
    }
}

/// Nearest-rank percentile of sorted data: the smallest value such that at
/// least `p` percent of the samples are <= it. `None` for no samples.
pub fn percentile(sorted: &[u32], p: f64) -> Option<u32> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (p / 100.0 * sorted.len() as f64).ceil() as usize;
    let idx = rank.clamp(1, sorted.len()) - 1;
    Some(sorted[idx])
}

pub struct Summary {
    pub mode: &'static str,
    pub requests: u64,
    pub rps: f64,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub max_ms: Option<f64>,
    pub mean_ms: Option<f64>,
    pub errors: [u64; 6],
    pub skipped: u64,
    /// Rate mode: max lag of a connection start behind its schedule, in ms.
    pub lag_max_ms: Option<f64>,
    pub duration_s: f64,
    pub sources: usize,
    pub rate: Option<f64>,
}

impl Summary {
    pub fn new(
        mode: &'static str,
        mut stats: Stats,
        elapsed: Duration,
        sources: usize,
        rate: Option<f64>,
    ) -> Summary {
        stats.ttfb_us.sort_unstable();
        let v = &stats.ttfb_us;
        let ms = |us: u32| us as f64 / 1000.0;
        let duration_s = elapsed.as_secs_f64();
        let requests = v.len() as u64;
        let mean_ms = if v.is_empty() {
            None
        } else {
            Some(v.iter().map(|&x| x as f64).sum::<f64>() / v.len() as f64 / 1000.0)
        };
        Summary {
            mode,
            requests,
            rps: if duration_s > 0.0 {
                requests as f64 / duration_s
            } else {
                0.0
            },
            p50_ms: percentile(v, 50.0).map(ms),
            p99_ms: percentile(v, 99.0).map(ms),
            max_ms: v.last().copied().map(ms),
            mean_ms,
            errors: stats.errors,
            skipped: stats.skipped,
            lag_max_ms: rate.map(|_| stats.max_lag.as_secs_f64() * 1000.0),
            duration_s,
            sources,
            rate,
        }
    }

    pub fn json(&self) -> String {
        let num = |x: Option<f64>| match x {
            Some(x) if x.is_finite() => format!("{x:.3}"),
            _ => "null".to_string(),
        };
        let mut s = format!(
            "{{\"mode\":\"{}\",\"requests\":{},\"rps\":{:.1},\"ttfb_ms\":{{\"p50\":{},\"p99\":{},\"max\":{},\"mean\":{}}},\"errors\":{{",
            self.mode,
            self.requests,
            self.rps,
            num(self.p50_ms),
            num(self.p99_ms),
            num(self.max_ms),
            num(self.mean_ms),
        );
        for (i, k) in ErrKind::ALL.iter().enumerate() {
            let sep = if i == 0 { "" } else { "," };
            let _ = write!(s, "{sep}\"{}\":{}", k.name(), self.errors[i]);
        }
        let _ = write!(
            s,
            "}},\"skipped\":{},\"sched_lag_max_ms\":{},\"sources\":{},\"rate\":{},\"duration_s\":{:.3}}}",
            self.skipped,
            num(self.lag_max_ms),
            self.sources,
            num(self.rate),
            self.duration_s
        );
        s
    }

    pub fn human(&self) -> String {
        let num = |x: Option<f64>| match x {
            Some(x) => format!("{x:.3}"),
            None => "-".to_string(),
        };
        let mut s = String::new();
        let _ = writeln!(
            s,
            "mode {}  duration {:.3}s  source IPs {}{}",
            self.mode,
            self.duration_s,
            self.sources,
            match self.rate {
                Some(r) => format!("  offered rate {r}/s"),
                None => String::new(),
            }
        );
        let _ = writeln!(s, "requests {}  ({:.1} req/s)", self.requests, self.rps);
        let _ = writeln!(
            s,
            "ttfb ms  p50 {}  p99 {}  max {}  mean {}",
            num(self.p50_ms),
            num(self.p99_ms),
            num(self.max_ms),
            num(self.mean_ms)
        );
        let total: u64 = self.errors.iter().sum();
        let _ = write!(s, "errors {total}");
        for (i, k) in ErrKind::ALL.iter().enumerate() {
            let _ = write!(s, "  {} {}", k.name(), self.errors[i]);
        }
        if self.rate.is_some() {
            let _ = write!(
                s,
                "\nskipped (in-flight cap) {}  max start lag behind schedule {} ms",
                self.skipped,
                num(self.lag_max_ms)
            );
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_nearest_rank() {
        let v: Vec<u32> = (1..=100).collect();
        assert_eq!(percentile(&v, 50.0), Some(50));
        assert_eq!(percentile(&v, 99.0), Some(99));
        assert_eq!(percentile(&v, 100.0), Some(100));
        assert_eq!(percentile(&v, 0.0), Some(1));
        assert_eq!(percentile(&[7], 99.0), Some(7));
        assert_eq!(percentile(&[1, 2, 3], 50.0), Some(2));
        assert_eq!(percentile(&[], 50.0), None);
        // p99 of 1000 samples is the 990th.
        let v: Vec<u32> = (1..=1000).collect();
        assert_eq!(percentile(&v, 99.0), Some(990));
    }

    #[test]
    fn summary_json_shape() {
        let mut st = Stats::default();
        for us in [1000, 2000, 3000, 4000] {
            st.record(Outcome::Ok(Duration::from_micros(us)));
        }
        st.record(Outcome::Err(ErrKind::Refused, "x".into()));
        st.record(Outcome::Abandoned);
        let s = Summary::new("close", st, Duration::from_secs(2), 3, None);
        assert_eq!(
            s.json(),
            "{\"mode\":\"close\",\"requests\":4,\"rps\":2.0,\"ttfb_ms\":{\"p50\":2.000,\"p99\":4.000,\"max\":4.000,\"mean\":2.500},\
             \"errors\":{\"refused\":1,\"connect_timeout\":0,\"reset\":0,\"read_timeout\":0,\"bad_response\":0,\"other\":0},\
             \"skipped\":0,\"sched_lag_max_ms\":null,\"sources\":3,\"rate\":null,\"duration_s\":2.000}"
        );
        let empty = Summary::new(
            "rate",
            Stats::default(),
            Duration::from_secs(1),
            1,
            Some(5.0),
        );
        assert!(empty.json().contains("\"p50\":null"));
    }
}
