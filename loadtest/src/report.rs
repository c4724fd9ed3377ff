//! Figures of a run: per operation type, successes' latency in an
//! HdrHistogram and failures by code; printed for people, written as JSON,
//! drawn as an SVG latency-percentile plot.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde_json::{Value, json};

use crate::target::OpError;

/// Operation types in report order.
pub const OP_NAMES: [&str; 5] = ["read", "update", "insert", "rmw", "noop"];

fn histogram() -> Histogram<u64> {
    // 1 µs to 1 h at 3 significant figures; beyond saturates (an open loop
    // against a stalled server can queue for long).
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds")
}

fn micros(duration: Duration) -> u64 {
    u64::try_from(duration.as_micros()).unwrap_or(u64::MAX).max(1)
}

/// Figures of one operation type.
#[derive(Clone)]
pub struct OpStats {
    /// Latency of the successful operations, in µs.
    pub latency: Histogram<u64>,
    /// Failures by code.
    pub errors: BTreeMap<String, u64>,
    /// The first message seen for each failure code.
    pub first_error: BTreeMap<String, String>,
}

impl Default for OpStats {
    fn default() -> Self {
        OpStats { latency: histogram(), errors: BTreeMap::new(), first_error: BTreeMap::new() }
    }
}

impl OpStats {
    /// Failed operations.
    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }
}

/// Figures of a run (or of one worker, merged at the end).
#[derive(Clone)]
pub struct Stats {
    /// By operation type (see [`OP_NAMES`]).
    pub ops: BTreeMap<&'static str, OpStats>,
    /// Open loop only: how long after its intended start each operation was
    /// actually sent (waiting for a free slot of --concurrency, or for the
    /// harness), in µs. Included in the latencies.
    pub start_delay: Histogram<u64>,
}

impl Default for Stats {
    fn default() -> Self {
        Stats { ops: BTreeMap::new(), start_delay: histogram() }
    }
}

impl Stats {
    /// Records one measured operation.
    pub fn record(&mut self, name: &'static str, result: Result<(), OpError>, latency: Duration) {
        let op = self.ops.entry(name).or_default();
        match result {
            Ok(()) => op.latency.saturating_record(micros(latency)),
            Err(error) => {
                *op.errors.entry(error.code.clone()).or_default() += 1;
                op.first_error.entry(error.code).or_insert(error.message);
            }
        }
    }

    /// Records how late an open-loop operation started.
    pub fn record_start_delay(&mut self, delay: Duration) {
        self.start_delay.saturating_record(micros(delay));
    }

    /// Adds `other`'s figures.
    pub fn merge(&mut self, other: &Stats) {
        for (name, theirs) in &other.ops {
            let ours = self.ops.entry(name).or_default();
            ours.latency.add(&theirs.latency).expect("same histogram bounds");
            for (code, count) in &theirs.errors {
                *ours.errors.entry(code.clone()).or_default() += count;
            }
            for (code, message) in &theirs.first_error {
                ours.first_error.entry(code.clone()).or_insert_with(|| message.clone());
            }
        }
        self.start_delay.add(&other.start_delay).expect("same histogram bounds");
    }

    /// Measured operations, successful or not.
    pub fn total(&self) -> u64 {
        self.ops.values().map(|op| op.latency.len() + op.error_count()).sum()
    }

    /// Failed operations.
    pub fn errors(&self) -> u64 {
        self.ops.values().map(OpStats::error_count).sum()
    }

    /// Successful operations.
    pub fn successes(&self) -> u64 {
        self.ops.values().map(|op| op.latency.len()).sum()
    }

    /// Operation types present, in report order.
    pub fn in_order(&self) -> impl Iterator<Item = (&'static str, &OpStats)> {
        OP_NAMES.iter().filter_map(|name| self.ops.get(name).map(|op| (*name, op)))
    }

    /// Latency of every successful operation, whatever its type.
    pub fn all_latency(&self) -> Histogram<u64> {
        let mut all = histogram();
        for op in self.ops.values() {
            all.add(&op.latency).expect("same histogram bounds");
        }
        all
    }
}

/// The run's description, for the report's header and JSON.
pub struct RunInfo {
    /// `--target`, normalised.
    pub target: String,
    /// `a`, `b`, … or `custom`.
    pub workload: String,
    /// `zipfian`, `uniform` or `latest`.
    pub distribution: String,
    /// Operation weights of the workload.
    pub proportions: Value,
    /// `--records`.
    pub records: u64,
    /// `--value-size`.
    pub value_size: usize,
    /// `--concurrency`.
    pub concurrency: usize,
    /// `--rate`, for an open loop.
    pub rate: Option<f64>,
    /// `--warmup`.
    pub warmup: Duration,
    /// `--consistency`, as given.
    pub consistency: Option<String>,
    /// `--tenant` (Cohort only).
    pub tenant: String,
    /// `--label`: the name of the system under test in comparisons.
    pub label: String,
}

fn percentiles(h: &Histogram<u64>) -> [(&'static str, u64); 5] {
    let at = |q| if h.is_empty() { 0 } else { h.value_at_quantile(q) };
    [("p50_us", at(0.50)), ("p95_us", at(0.95)), ("p99_us", at(0.99)), ("p999_us", at(0.999)), ("max_us", h.max())]
}

/// The report as JSON.
pub fn to_json(info: &RunInfo, stats: &Stats, elapsed: Duration) -> Value {
    let seconds = elapsed.as_secs_f64().max(f64::MIN_POSITIVE);
    let mut operations = serde_json::Map::new();
    for (name, op) in stats.in_order() {
        let mut entry = json!({
            "count": op.latency.len(),
            "errors": op.error_count(),
            "errors_by_code": op.errors,
            "ops_per_sec": op.latency.len() as f64 / seconds,
            "mean_us": if op.latency.is_empty() { 0.0 } else { op.latency.mean() },
        });
        for (field, value) in percentiles(&op.latency) {
            entry[field] = json!(value);
        }
        operations.insert(name.to_string(), entry);
    }
    let all = stats.all_latency();
    let curve: Vec<Value> = (0..=CURVE_STEPS)
        .map(|step| {
            let x = MAX_NINES * f64::from(step) / f64::from(CURVE_STEPS);
            json!([x, if all.is_empty() { 0 } else { all.value_at_quantile(nines(x)) }])
        })
        .collect();
    let mut report = json!({
        "label": info.label,
        "target": info.target,
        "workload": info.workload,
        "distribution": info.distribution,
        "proportions": info.proportions,
        "records": info.records,
        "value_size": info.value_size,
        "concurrency": info.concurrency,
        "rate": info.rate,
        "warmup_s": info.warmup.as_secs_f64(),
        "consistency": info.consistency,
        "tenant": info.tenant,
        "duration_s": elapsed.as_secs_f64(),
        "ops_per_sec": stats.successes() as f64 / seconds,
        "count": stats.successes(),
        "errors": stats.errors(),
        "operations": operations,
        "all": Value::Object(percentiles(&all).into_iter().map(|(k, v)| (k.to_string(), json!(v))).collect()),
        "curve_us": curve,
    });
    if info.rate.is_some() {
        let mut delay = serde_json::Map::new();
        for (field, value) in percentiles(&stats.start_delay) {
            delay.insert(field.to_string(), json!(value));
        }
        report["start_delay"] = Value::Object(delay);
    }
    report
}

/// The report for people.
pub fn to_text(info: &RunInfo, stats: &Stats, elapsed: Duration) -> String {
    use std::fmt::Write;
    let seconds = elapsed.as_secs_f64().max(f64::MIN_POSITIVE);
    let mut out = String::new();
    let mode = match info.rate {
        Some(rate) => format!("open loop at {rate} ops/s, at most {} in flight", info.concurrency),
        None => format!("closed loop, {} in flight", info.concurrency),
    };
    let _ = writeln!(
        out,
        "{}: workload {} ({}), {} records of {} B, {mode}",
        info.target, info.workload, info.distribution, info.records, info.value_size
    );
    let achieved = stats.successes() as f64 / seconds;
    let _ = writeln!(
        out,
        "{} operations in {:.2}s: {achieved:.0} ops/s, {} errors",
        stats.total(),
        elapsed.as_secs_f64(),
        stats.errors()
    );
    let _ = writeln!(
        out,
        "{:<7}{:>10}{:>8}{:>11}{:>10}{:>10}{:>10}{:>10}{:>10}",
        "op", "count", "errors", "ops/s", "p50", "p95", "p99", "p99.9", "max"
    );
    for (name, op) in stats.in_order() {
        let [p50, p95, p99, p999, max] = percentiles(&op.latency).map(|(_, v)| format_micros(v));
        let _ = writeln!(
            out,
            "{name:<7}{:>10}{:>8}{:>11.0}{p50:>10}{p95:>10}{p99:>10}{p999:>10}{max:>10}",
            op.latency.len(),
            op.error_count(),
            op.latency.len() as f64 / seconds
        );
        for (code, count) in &op.errors {
            let message = op.first_error.get(code).map(String::as_str).unwrap_or_default();
            let _ = writeln!(out, "         {count} × {code}, e.g. {message}");
        }
    }
    if let Some(rate) = info.rate {
        let [p50, _, p99, _, max] = percentiles(&stats.start_delay).map(|(_, v)| format_micros(v));
        let _ = writeln!(out, "start delay behind schedule (included above): p50 {p50}, p99 {p99}, max {max}");
        if achieved < rate * 0.95 {
            let _ = writeln!(
                out,
                "warning: achieved {achieved:.0} ops/s of the {rate} scheduled: the target (or --concurrency {}) \
                 cannot keep up, and the latencies above include the queueing",
                info.concurrency
            );
        }
    }
    out
}

/// `850µs`, `12.3ms`, `1.25s`.
fn format_micros(us: u64) -> String {
    match us {
        0..1_000 => format!("{us}µs"),
        1_000..1_000_000 => format!("{:.2}ms", us as f64 / 1e3),
        _ => format!("{:.2}s", us as f64 / 1e6),
    }
}

/// Points of `curve_us` in the JSON: the latency of all operations at
/// `x = 0, 0.05, … 4` on the [`nines`] axis.
const CURVE_STEPS: u32 = 80;

/// The plots' x axis ends at p99.99.
pub const MAX_NINES: f64 = 4.0;

/// Percentile on the plot's x axis: x = -log10(1 - p), so 0 → p0, 1 → p90,
/// 2 → p99, 3 → p99.9, 4 → p99.99.
pub fn nines(x: f64) -> f64 {
    1.0 - 10f64.powf(-x)
}

pub fn nines_label(x: f64) -> String {
    let percent = nines(x) * 100.0;
    let text = format!("{percent:.4}");
    let text = text.trim_end_matches('0').trim_end_matches('.');
    text.to_string()
}

/// Writes a latency-percentile plot of every operation type to `path` (SVG).
pub fn plot(path: &Path, info: &RunInfo, stats: &Stats) -> anyhow::Result<()> {
    use plotters::prelude::*;

    let series: Vec<(&str, &Histogram<u64>)> =
        stats.in_order().filter(|(_, op)| !op.latency.is_empty()).map(|(name, op)| (name, &op.latency)).collect();
    let top_ms =
        series.iter().map(|(_, h)| h.value_at_quantile(nines(MAX_NINES)) as f64 / 1e3).fold(0.001f64, f64::max) * 1.05;
    let root = SVGBackend::new(path, (960, 600)).into_drawing_area();
    let error = |e: &dyn std::fmt::Display| anyhow::anyhow!("cannot draw {}: {e}", path.display());
    root.fill(&WHITE).map_err(|e| error(&e))?;
    let title = format!("{} — workload {}, concurrency {}", info.target, info.workload, info.concurrency);
    let title = match info.rate {
        Some(rate) => format!("{title}, {rate} ops/s"),
        None => title,
    };
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(20)
        .x_label_area_size(44)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..MAX_NINES, 0f64..top_ms)
        .map_err(|e| error(&e))?;
    chart
        .configure_mesh()
        .x_labels(MAX_NINES as usize + 1)
        .label_style(("sans-serif", 14))
        .axis_desc_style(("sans-serif", 15))
        .x_desc("percentile")
        .y_desc("latency (ms)")
        .x_label_formatter(&|x| nines_label(*x))
        .draw()
        .map_err(|e| error(&e))?;
    for (i, (name, h)) in series.iter().enumerate() {
        let color = Palette99::pick(i);
        let points = (0..=(MAX_NINES * 100.0) as u32).map(|step| {
            let x = f64::from(step) / 100.0;
            (x, h.value_at_quantile(nines(x)) as f64 / 1e3)
        });
        let legend = color.stroke_width(2);
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(2)))
            .map_err(|e| error(&e))?
            .label(*name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], legend));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .label_font(("sans-serif", 14))
        .draw()
        .map_err(|e| error(&e))?;
    root.present().map_err(|e| error(&e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nines_axis() {
        let labels: Vec<String> = [0.0, 1.0, 2.0, 3.0, 4.0].into_iter().map(nines_label).collect();
        assert_eq!(labels, ["0", "90", "99", "99.9", "99.99"]);
    }

    #[test]
    fn stats_merge_and_count() {
        let mut a = Stats::default();
        a.record("read", Ok(()), Duration::from_micros(100));
        a.record("read", Err(OpError { code: "Unavailable".into(), message: "down".into() }), Duration::ZERO);
        let mut b = Stats::default();
        b.record("update", Ok(()), Duration::from_millis(2));
        b.record("read", Err(OpError { code: "Unavailable".into(), message: "again".into() }), Duration::ZERO);
        a.merge(&b);
        assert_eq!((a.total(), a.successes(), a.errors()), (4, 2, 2));
        assert_eq!(a.ops["read"].errors["Unavailable"], 2);
        assert_eq!(a.ops["read"].first_error["Unavailable"], "down");
        let names: Vec<&str> = a.in_order().map(|(name, _)| name).collect();
        assert_eq!(names, ["read", "update"]);
    }

    #[test]
    fn plot_writes_an_svg() {
        let mut stats = Stats::default();
        for us in 1..2000 {
            stats.record("read", Ok(()), Duration::from_micros(us));
            stats.record("update", Ok(()), Duration::from_micros(us * 2));
        }
        let info = RunInfo {
            target: "noop://127.0.0.1:1".into(),
            workload: "a".into(),
            distribution: "zipfian".into(),
            proportions: json!({}),
            records: 10,
            value_size: 1,
            concurrency: 1,
            rate: None,
            warmup: Duration::ZERO,
            consistency: None,
            tenant: "default".into(),
            label: "noop".into(),
        };
        let dir = tempfile::tempdir().expect("temporary directory");
        let path = dir.path().join("latency.svg");
        plot(&path, &info, &stats).expect("plot");
        let svg = std::fs::read_to_string(&path).expect("svg");
        assert!(svg.starts_with("<svg") && svg.contains("99.99") && svg.contains("update"), "{svg}");
        let text = to_text(&info, &stats, Duration::from_secs(1));
        assert!(text.contains("3998 operations"), "{text}");
        let report = to_json(&info, &stats, Duration::from_secs(1));
        assert_eq!(report["operations"]["read"]["count"], 1999);
        assert_eq!(report["rate"], Value::Null);
    }
}
