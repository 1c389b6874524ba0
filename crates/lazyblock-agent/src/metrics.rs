//! Per-device counters and latency histograms, rendered as Prometheus text and as a summary.
//!
//! Everything is lock-free atomics so the read path only pays a few relaxed increments. The
//! histogram is log-linear (8 buckets per power of two, 1 ns to ~18 min), close enough for
//! percentiles within 12.5%; Prometheus gets a fixed, coarser set of `le` bounds.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Where the bytes of a chunk (or the slowest part of a read) came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Tier {
    /// Overlay pages or zero chunks: no chunk needed.
    Local,
    /// The worker cache's memory tier.
    Memory,
    /// The worker cache's disk tier.
    Disk,
    /// The AZ cache tier (erasure-coded stripes on memcached).
    L2,
    /// The origin store.
    Origin,
}

impl Tier {
    /// All tiers, fastest first.
    pub const ALL: [Tier; 5] = [
        Tier::Local,
        Tier::Memory,
        Tier::Disk,
        Tier::L2,
        Tier::Origin,
    ];

    /// The label value used in metrics.
    pub fn label(self) -> &'static str {
        match self {
            Tier::Local => "local",
            Tier::Memory => "memory",
            Tier::Disk => "disk",
            Tier::L2 => "az",
            Tier::Origin => "origin",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

const SUB_BITS: u32 = 3;
const SUB: u64 = 1 << SUB_BITS;
const BUCKETS: usize = 320;

/// A concurrent log-linear histogram of nanosecond values.
#[derive(Debug)]
pub struct Histogram {
    counts: Vec<AtomicU64>,
    sum_ns: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self {
            counts: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            sum_ns: AtomicU64::new(0),
        }
    }
}

fn bucket_of(v: u64) -> usize {
    if v < SUB {
        return v as usize;
    }
    let octave = 63 - u64::from(v.leading_zeros());
    let sub = (v >> (octave - u64::from(SUB_BITS))) & (SUB - 1);
    let idx = (octave - u64::from(SUB_BITS) + 1) * SUB + sub;
    (idx as usize).min(BUCKETS - 1)
}

/// The largest value that falls in bucket `idx`.
fn bucket_upper(idx: usize) -> u64 {
    let idx = idx as u64;
    if idx < SUB {
        return idx;
    }
    let octave = idx / SUB - 1 + u64::from(SUB_BITS);
    let sub = idx % SUB;
    if octave >= 63 {
        return u64::MAX;
    }
    let base = 1u64 << octave;
    let step = base >> SUB_BITS;
    base + (sub + 1) * step - 1
}

impl Histogram {
    /// Records one value.
    pub fn record(&self, d: Duration) {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.counts[bucket_of(ns)].fetch_add(1, Ordering::Relaxed);
        self.sum_ns.fetch_add(ns, Ordering::Relaxed);
    }

    /// How many values were recorded.
    pub fn count(&self) -> u64 {
        self.counts.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }

    /// The `q`-quantile (0..=1), as the upper bound of its bucket; `None` when empty.
    pub fn quantile(&self, q: f64) -> Option<Duration> {
        let counts: Vec<u64> = self
            .counts
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect();
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, c) in counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Some(Duration::from_nanos(bucket_upper(i)));
            }
        }
        None
    }

    /// Values recorded at or below `ns` (bucket resolution).
    fn count_le(&self, ns: u64) -> u64 {
        self.counts
            .iter()
            .enumerate()
            .take_while(|(i, _)| bucket_upper(*i) <= ns)
            .map(|(_, c)| c.load(Ordering::Relaxed))
            .sum()
    }

    /// The non-empty buckets as `(largest value in ns, count)`, smallest first: enough to draw
    /// an eCDF.
    pub fn buckets(&self) -> Vec<(u64, u64)> {
        self.counts
            .iter()
            .enumerate()
            .map(|(i, c)| (bucket_upper(i), c.load(Ordering::Relaxed)))
            .filter(|(_, c)| *c > 0)
            .collect()
    }

    /// Adds every bucket of `other` into `self`.
    pub fn merge_from(&self, other: &Histogram) {
        for (a, b) in self.counts.iter().zip(&other.counts) {
            a.fetch_add(b.load(Ordering::Relaxed), Ordering::Relaxed);
        }
        self.sum_ns
            .fetch_add(other.sum_ns.load(Ordering::Relaxed), Ordering::Relaxed);
    }
}

/// The counters and histograms of one served device.
#[derive(Debug, Default)]
pub struct DeviceMetrics {
    /// Guest reads.
    pub reads: AtomicU64,
    /// Bytes returned to the guest.
    pub read_bytes: AtomicU64,
    /// Guest writes.
    pub writes: AtomicU64,
    /// Bytes written by the guest (to the overlay).
    pub write_bytes: AtomicU64,
    /// Guest flushes.
    pub flushes: AtomicU64,
    /// Guest reads or writes that failed.
    pub errors: AtomicU64,
    /// Chunk lookups answered by each tier (index: [`Tier`] order).
    pub chunk_hits: [AtomicU64; 5],
    /// Chunks fetched from the origin for this device (demand and prefetch).
    pub origin_chunks: AtomicU64,
    /// Bytes fetched from the origin for this device.
    pub origin_bytes: AtomicU64,
    /// Origin requests that failed (each retry counted by the store is inside one request).
    pub origin_errors: AtomicU64,
    /// Of `origin_chunks`, those fetched by read-ahead or profile replay.
    pub prefetched_chunks: AtomicU64,
    /// Chunks fetched from the AZ cache tier for this device (demand and prefetch).
    pub l2_chunks: AtomicU64,
    /// Read latency, by the slowest tier the read needed (index: [`Tier`] order).
    pub read_latency: [Histogram; 5],
    /// Latency of origin fetches.
    pub origin_latency: Histogram,
    /// Latency of AZ cache reads that returned a chunk (all stripe requests, rebuild and
    /// verification included).
    pub l2_latency: Histogram,
}

impl DeviceMetrics {
    /// Counts a chunk served by `tier`.
    pub fn hit(&self, tier: Tier) {
        self.chunk_hits[tier.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// Hits of one tier.
    pub fn hits(&self, tier: Tier) -> u64 {
        self.chunk_hits[tier.index()].load(Ordering::Relaxed)
    }

    /// The read-latency histogram of `tier`.
    pub fn latency(&self, tier: Tier) -> &Histogram {
        &self.read_latency[tier.index()]
    }

    /// One line for logs and for the end of `serve` / `mount`.
    pub fn summary(&self) -> String {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let mut line = format!(
            "reads {} ({}), writes {} ({}), chunk hits memory {} disk {} az {} origin {}, origin {} chunks {} ({} prefetched, {} errors)",
            get(&self.reads),
            human_bytes(get(&self.read_bytes)),
            get(&self.writes),
            human_bytes(get(&self.write_bytes)),
            self.hits(Tier::Memory),
            self.hits(Tier::Disk),
            self.hits(Tier::L2),
            self.hits(Tier::Origin),
            get(&self.origin_chunks),
            human_bytes(get(&self.origin_bytes)),
            get(&self.prefetched_chunks),
            get(&self.origin_errors),
        );
        for tier in Tier::ALL {
            let h = self.latency(tier);
            if let (Some(p50), Some(p99)) = (h.quantile(0.5), h.quantile(0.99)) {
                let _ = write!(
                    line,
                    ", {} reads p50 {} p99 {}",
                    tier.label(),
                    human_duration(p50),
                    human_duration(p99)
                );
            }
        }
        line
    }
}

/// Bytes as `12.3 MiB`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// A duration as `850 µs`, `12.5 ms` or `1.20 s`.
pub fn human_duration(d: Duration) -> String {
    let us = d.as_secs_f64() * 1e6;
    if us < 1000.0 {
        format!("{us:.0} µs")
    } else if us < 1e6 {
        format!("{:.1} ms", us / 1e3)
    } else {
        format!("{:.2} s", us / 1e6)
    }
}

const PROM_BOUNDS_S: [f64; 18] = [
    25e-6, 50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3, 50e-3, 100e-3, 250e-3,
    500e-3, 1.0, 2.5, 5.0, 10.0,
];

fn prom_histogram(out: &mut String, name: &str, labels: &str, h: &Histogram) {
    for le in PROM_BOUNDS_S {
        let ns = (le * 1e9) as u64;
        let _ = writeln!(
            out,
            "{name}_bucket{{{labels},le=\"{le}\"}} {}",
            h.count_le(ns)
        );
    }
    let count = h.count();
    let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {count}");
    let sum = h.sum_ns.load(Ordering::Relaxed) as f64 / 1e9;
    let _ = writeln!(out, "{name}_sum{{{labels}}} {sum}");
    let _ = writeln!(out, "{name}_count{{{labels}}} {count}");
}

/// Renders the metrics of every device in the Prometheus text exposition format (0.0.4).
pub fn render_prometheus(devices: &[(String, &DeviceMetrics)]) -> String {
    let mut out = String::new();
    type Counter = fn(&DeviceMetrics) -> &AtomicU64;
    let counters: [(&str, &str, Counter); 11] = [
        ("lazyblock_reads_total", "Guest reads.", |m| &m.reads),
        (
            "lazyblock_read_bytes_total",
            "Bytes read by the guest.",
            |m| &m.read_bytes,
        ),
        ("lazyblock_writes_total", "Guest writes.", |m| &m.writes),
        (
            "lazyblock_write_bytes_total",
            "Bytes written by the guest into the overlay.",
            |m| &m.write_bytes,
        ),
        ("lazyblock_flushes_total", "Guest flushes.", |m| &m.flushes),
        (
            "lazyblock_errors_total",
            "Guest requests that failed.",
            |m| &m.errors,
        ),
        (
            "lazyblock_origin_chunks_total",
            "Chunks fetched from the origin.",
            |m| &m.origin_chunks,
        ),
        (
            "lazyblock_origin_bytes_total",
            "Bytes fetched from the origin.",
            |m| &m.origin_bytes,
        ),
        (
            "lazyblock_origin_errors_total",
            "Origin fetches that failed after retries.",
            |m| &m.origin_errors,
        ),
        (
            "lazyblock_prefetched_chunks_total",
            "Origin chunks fetched by read-ahead or profile replay.",
            |m| &m.prefetched_chunks,
        ),
        (
            "lazyblock_az_chunks_total",
            "Chunks fetched from the AZ cache tier (demand and prefetch).",
            |m| &m.l2_chunks,
        ),
    ];
    for (name, help, get) in counters {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
        for (dev, m) in devices {
            let _ = writeln!(
                out,
                "{name}{{device=\"{}\"}} {}",
                escape(dev),
                get(m).load(Ordering::Relaxed)
            );
        }
    }
    let name = "lazyblock_chunk_hits_total";
    let _ = writeln!(
        out,
        "# HELP {name} Chunk lookups answered, by tier.\n# TYPE {name} counter"
    );
    for (dev, m) in devices {
        for tier in [Tier::Memory, Tier::Disk, Tier::L2, Tier::Origin] {
            let _ = writeln!(
                out,
                "{name}{{device=\"{}\",tier=\"{}\"}} {}",
                escape(dev),
                tier.label(),
                m.hits(tier)
            );
        }
    }
    let name = "lazyblock_read_seconds";
    let _ = writeln!(
        out,
        "# HELP {name} Guest read latency, by the slowest tier the read needed.\n# TYPE {name} histogram"
    );
    for (dev, m) in devices {
        for tier in Tier::ALL {
            let labels = format!("device=\"{}\",tier=\"{}\"", escape(dev), tier.label());
            prom_histogram(&mut out, name, &labels, m.latency(tier));
        }
    }
    let name = "lazyblock_origin_fetch_seconds";
    let _ = writeln!(
        out,
        "# HELP {name} Latency of chunk fetches from the origin.\n# TYPE {name} histogram"
    );
    for (dev, m) in devices {
        let labels = format!("device=\"{}\"", escape(dev));
        prom_histogram(&mut out, name, &labels, &m.origin_latency);
    }
    let name = "lazyblock_az_fetch_seconds";
    let _ = writeln!(
        out,
        "# HELP {name} Latency of chunk reads answered by the AZ cache (rebuild and verification included).\n# TYPE {name} histogram"
    );
    for (dev, m) in devices {
        let labels = format!("device=\"{}\"", escape(dev));
        prom_histogram(&mut out, name, &labels, &m.l2_latency);
    }
    out
}

/// Renders the process-wide AZ cache counters in the Prometheus text format.
pub fn render_l2_prometheus(stats: &lazyblock_cache::L2Stats) -> String {
    let mut out = String::new();
    let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let rows: [(&str, &str, &str, u64); 12] = [
        (
            "lazyblock_az_hits_total",
            "counter",
            "AZ cache reads answered with a verified chunk.",
            get(&stats.hits),
        ),
        (
            "lazyblock_az_misses_total",
            "counter",
            "AZ cache reads that found fewer than k stripes.",
            get(&stats.misses),
        ),
        (
            "lazyblock_az_corrupt_total",
            "counter",
            "AZ cache reads whose stripes did not rebuild the chunk (never served).",
            get(&stats.corrupt),
        ),
        (
            "lazyblock_az_rebuilds_total",
            "counter",
            "AZ cache hits that needed a parity stripe.",
            get(&stats.rebuilds),
        ),
        (
            "lazyblock_az_stripes_missing_total",
            "counter",
            "Stripes a node did not have.",
            get(&stats.stripes_missing),
        ),
        (
            "lazyblock_az_stripes_failed_total",
            "counter",
            "Stripe requests that failed or timed out.",
            get(&stats.stripes_failed),
        ),
        (
            "lazyblock_az_stripes_late_total",
            "counter",
            "Stripe requests cancelled because k stripes had arrived.",
            get(&stats.stripes_late),
        ),
        (
            "lazyblock_az_stripes_invalid_total",
            "counter",
            "Stripes with a malformed or mismatched frame.",
            get(&stats.stripes_invalid),
        ),
        (
            "lazyblock_az_fills_total",
            "counter",
            "Chunk fills started after origin fetches.",
            get(&stats.fills),
        ),
        (
            "lazyblock_az_fills_dropped_total",
            "counter",
            "Chunk fills dropped because the fill backlog was full.",
            get(&stats.fills_dropped),
        ),
        (
            "lazyblock_az_fill_stripe_errors_total",
            "counter",
            "Stripe writes that failed.",
            get(&stats.fill_stripe_errors),
        ),
        (
            "lazyblock_az_fill_backlog",
            "gauge",
            "Chunk fills in flight.",
            get(&stats.fill_backlog),
        ),
    ];
    for (name, kind, help, value) in rows {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
        );
    }
    out
}

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_monotonic_and_tight() {
        let mut last = 0;
        for i in 0..BUCKETS - 1 {
            let up = bucket_upper(i);
            assert!(up >= last, "bucket {i}");
            last = up;
            assert_eq!(bucket_of(up), i, "upper bound of {i} maps back");
            assert_eq!(
                bucket_of(up + 1),
                i + 1,
                "next value goes to the next bucket"
            );
        }
        for v in [9u64, 100, 1_000, 123_456, 10_000_000_000] {
            let up = bucket_upper(bucket_of(v));
            assert!(
                up >= v && (up - v) as f64 <= v as f64 * 0.125,
                "{v} -> {up}"
            );
        }
    }

    #[test]
    fn quantiles() {
        let h = Histogram::default();
        assert_eq!(h.quantile(0.5), None);
        for us in 1..=100u64 {
            h.record(Duration::from_micros(us));
        }
        let p50 = h.quantile(0.5).expect("p50").as_micros();
        assert!((50..=57).contains(&p50), "{p50}");
        let p99 = h.quantile(0.99).expect("p99").as_micros();
        assert!((99..=112).contains(&p99), "{p99}");
        assert_eq!(h.count(), 100);
    }

    #[test]
    fn az_tier_series() {
        let stats = lazyblock_cache::L2Stats::default();
        stats.hits.fetch_add(7, Ordering::Relaxed);
        stats.fill_backlog.fetch_add(2, Ordering::Relaxed);
        let text = render_l2_prometheus(&stats);
        assert!(
            text.contains("# TYPE lazyblock_az_hits_total counter\nlazyblock_az_hits_total 7\n")
        );
        assert!(
            text.contains("# TYPE lazyblock_az_fill_backlog gauge\nlazyblock_az_fill_backlog 2\n")
        );
        assert!(text.contains("lazyblock_az_stripes_late_total 0\n"));
        let m = DeviceMetrics::default();
        m.hit(Tier::L2);
        m.l2_latency.record(Duration::from_micros(600));
        let text = render_prometheus(&[("img:v1".into(), &m)]);
        assert!(text.contains("lazyblock_chunk_hits_total{device=\"img:v1\",tier=\"az\"} 1"));
        assert!(text.contains("lazyblock_az_fetch_seconds_count{device=\"img:v1\"} 1"));
        assert!(
            m.summary().contains("disk 0 az 1 origin 0"),
            "{}",
            m.summary()
        );
    }

    #[test]
    fn prometheus_text() {
        let m = DeviceMetrics::default();
        m.reads.fetch_add(3, Ordering::Relaxed);
        m.hit(Tier::Disk);
        m.latency(Tier::Disk).record(Duration::from_micros(40));
        let text = render_prometheus(&[("img:v1".into(), &m)]);
        assert!(text.contains("lazyblock_reads_total{device=\"img:v1\"} 3"));
        assert!(text.contains("lazyblock_chunk_hits_total{device=\"img:v1\",tier=\"disk\"} 1"));
        assert!(text.contains(
            "lazyblock_read_seconds_bucket{device=\"img:v1\",tier=\"disk\",le=\"0.00005\"} 1"
        ));
        assert!(text.contains(
            "lazyblock_read_seconds_bucket{device=\"img:v1\",tier=\"disk\",le=\"0.000025\"} 0"
        ));
        assert!(text.contains("lazyblock_read_seconds_count{device=\"img:v1\",tier=\"disk\"} 1"));
    }
}
