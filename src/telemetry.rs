//! Latency telemetry: one HDR histogram per pipeline stage, in nanoseconds.
//!
//! Stages are named `<route>.<stage>` (`hands.detect`, `hands.end_to_end`).
//! Recording takes a short lock; readers take a snapshot and do their
//! percentile math outside it. Exported three ways: the `GetTelemetry` RPC,
//! Prometheus text on `/metrics`, and a periodic log line.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hdrhistogram::serialization::{Serializer, V2Serializer};
use hdrhistogram::Histogram;

/// Longest duration a histogram tracks exactly; longer ones saturate.
const MAX_TRACKED_NS: u64 = 60_000_000_000;
/// Three significant digits: 0.1 % relative error at any scale.
const SIGNIFICANT_DIGITS: u8 = 3;

#[derive(Default)]
struct Stage {
    histogram: Option<Histogram<u64>>,
    dropped: u64,
}

impl Stage {
    fn histogram(&mut self) -> &mut Histogram<u64> {
        self.histogram.get_or_insert_with(|| {
            Histogram::new_with_max(MAX_TRACKED_NS, SIGNIFICANT_DIGITS)
                .expect("valid histogram bounds")
        })
    }
}

pub struct Telemetry {
    started: Instant,
    stages: Mutex<BTreeMap<String, Stage>>,
}

/// A stage's numbers at one moment.
#[derive(Debug, Clone)]
pub struct StageSnapshot {
    pub name: String,
    pub count: u64,
    pub dropped: u64,
    pub p50_ns: u64,
    pub p90_ns: u64,
    pub p99_ns: u64,
    pub p999_ns: u64,
    pub max_ns: u64,
    pub mean_ns: f64,
    pub histogram: Option<Histogram<u64>>,
}

impl Default for Telemetry {
    fn default() -> Self {
        Self::new()
    }
}

impl Telemetry {
    pub fn new() -> Self {
        Telemetry {
            started: Instant::now(),
            stages: Mutex::new(BTreeMap::new()),
        }
    }

    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    pub fn record(&self, stage: &str, duration: Duration) {
        let ns = u64::try_from(duration.as_nanos())
            .unwrap_or(u64::MAX)
            .max(1);
        let mut stages = self.stages.lock().expect("telemetry lock");
        stages
            .entry(stage.to_owned())
            .or_default()
            .histogram()
            .saturating_record(ns);
    }

    /// Counts frames or events that were dropped at `stage`.
    pub fn record_dropped(&self, stage: &str, count: u64) {
        let mut stages = self.stages.lock().expect("telemetry lock");
        stages.entry(stage.to_owned()).or_default().dropped += count;
    }

    /// Every stage's percentiles, and its histogram if asked for.
    pub fn snapshot(&self, with_histograms: bool) -> Vec<StageSnapshot> {
        let stages = self.stages.lock().expect("telemetry lock");
        stages
            .iter()
            .map(|(name, stage)| {
                let h = stage.histogram.as_ref();
                let q = |q: f64| h.map_or(0, |h| h.value_at_quantile(q));
                StageSnapshot {
                    name: name.clone(),
                    count: h.map_or(0, |h| h.len()),
                    dropped: stage.dropped,
                    p50_ns: q(0.5),
                    p90_ns: q(0.9),
                    p99_ns: q(0.99),
                    p999_ns: q(0.999),
                    max_ns: h.map_or(0, |h| h.max()),
                    mean_ns: h.map_or(0.0, |h| h.mean()),
                    histogram: if with_histograms { h.cloned() } else { None },
                }
            })
            .collect()
    }
}

/// A histogram in the HdrHistogram V2 encoding every HdrHistogram library
/// reads (Java, Go, Python, JS, ...).
pub fn encode_v2(histogram: &Histogram<u64>) -> Vec<u8> {
    let mut out = Vec::new();
    V2Serializer::new()
        .serialize(histogram, &mut out)
        .expect("serializing into a Vec cannot fail");
    out
}

/// Prometheus text exposition: a summary per stage (seconds) and a counter
/// of drops.
pub fn prometheus_text(snapshots: &[StageSnapshot], uptime: Duration) -> String {
    let mut out = String::new();
    out.push_str("# HELP posed_uptime_seconds Time since the daemon started.\n");
    out.push_str("# TYPE posed_uptime_seconds gauge\n");
    let _ = writeln!(out, "posed_uptime_seconds {:.3}", uptime.as_secs_f64());
    out.push_str("# HELP posed_stage_latency_seconds Latency of each pipeline stage.\n");
    out.push_str("# TYPE posed_stage_latency_seconds summary\n");
    for s in snapshots.iter().filter(|s| s.count > 0) {
        let label = escape_label(&s.name);
        for (q, v) in [
            ("0.5", s.p50_ns),
            ("0.9", s.p90_ns),
            ("0.99", s.p99_ns),
            ("0.999", s.p999_ns),
        ] {
            let _ = writeln!(
                out,
                "posed_stage_latency_seconds{{stage=\"{label}\",quantile=\"{q}\"}} {:.9}",
                v as f64 / 1e9
            );
        }
        let _ = writeln!(
            out,
            "posed_stage_latency_seconds_sum{{stage=\"{label}\"}} {:.9}",
            s.mean_ns * s.count as f64 / 1e9
        );
        let _ = writeln!(
            out,
            "posed_stage_latency_seconds_count{{stage=\"{label}\"}} {}",
            s.count
        );
    }
    out.push_str("# HELP posed_stage_dropped_total Frames or events dropped at each stage.\n");
    out.push_str("# TYPE posed_stage_dropped_total counter\n");
    for s in snapshots {
        let _ = writeln!(
            out,
            "posed_stage_dropped_total{{stage=\"{}\"}} {}",
            escape_label(&s.name),
            s.dropped
        );
    }
    out
}

fn escape_label(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// One line for the periodic log: `stage p50/p99 ms` for every stage seen.
pub fn summary_line(snapshots: &[StageSnapshot]) -> String {
    snapshots
        .iter()
        .filter(|s| s.count > 0)
        .map(|s| {
            format!(
                "{} {:.2}/{:.2}ms",
                s.name,
                s.p50_ns as f64 / 1e6,
                s.p99_ns as f64 / 1e6
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use hdrhistogram::serialization::Deserializer;

    use super::*;

    #[test]
    fn percentiles_follow_the_recorded_values() {
        let t = Telemetry::new();
        for ms in 1..=100u64 {
            t.record("hands.pose", Duration::from_millis(ms));
        }
        t.record_dropped("hands.gate", 3);
        let snap = t.snapshot(true);
        let pose = snap.iter().find(|s| s.name == "hands.pose").unwrap();
        assert_eq!(pose.count, 100);
        let close = |got: u64, want_ms: u64| {
            (got as f64 / 1e6 - want_ms as f64).abs() < want_ms as f64 * 2e-3
        };
        assert!(close(pose.p50_ns, 50), "{}", pose.p50_ns);
        assert!(close(pose.p99_ns, 99), "{}", pose.p99_ns);
        assert!(close(pose.max_ns, 100));
        let gate = snap.iter().find(|s| s.name == "hands.gate").unwrap();
        assert_eq!((gate.count, gate.dropped), (0, 3));

        // The V2 bytes decode to the same histogram.
        let bytes = encode_v2(pose.histogram.as_ref().unwrap());
        let back: Histogram<u64> = Deserializer::new().deserialize(&mut &bytes[..]).unwrap();
        assert_eq!(back.len(), 100);
        assert_eq!(back.value_at_quantile(0.5), pose.p50_ns);
    }

    #[test]
    fn prometheus_text_has_quantiles_counts_and_drops() {
        let t = Telemetry::new();
        t.record("hands.detect", Duration::from_micros(1500));
        t.record_dropped("hands.gate", 2);
        let text = prometheus_text(&t.snapshot(false), Duration::from_secs(5));
        assert!(
            text.contains(
                "posed_stage_latency_seconds{stage=\"hands.detect\",quantile=\"0.5\"} 0.0015"
            ),
            "{text}"
        );
        assert!(text.contains("posed_stage_latency_seconds_count{stage=\"hands.detect\"} 1"));
        assert!(text.contains("posed_stage_dropped_total{stage=\"hands.gate\"} 2"));
        assert!(text.contains("posed_uptime_seconds 5.000"));
        assert_eq!(summary_line(&t.snapshot(false)), "hands.detect 1.50/1.50ms");
    }
}
