//! `cohort-loadtest report`: turns a directory of `run --json` files (from
//! `compare.sh`, several runs of each cell) into a Markdown report with the
//! median of each figure, Cohort's ratios to etcd and to the no-op ceiling,
//! the performance targets, and an SVG plot of latency percentiles.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde_json::Value;

use crate::floor::{self, Floor};
use crate::report::{MAX_NINES, nines_label};

/// Flags of `report`.
#[derive(clap::Args)]
pub struct ReportArgs {
    /// Directory of `run --json` files (every `*.json` in it is read); runs with the same --label, workload,
    /// concurrency and rate are repeats of one cell and are summarised by their medians.
    #[arg(long, value_name = "DIR")]
    results: PathBuf,
    /// Where to write the Markdown report.
    #[arg(long, value_name = "FILE.md", default_value = "REPORT.md")]
    output: PathBuf,
    /// Where to draw the latency-percentile plot (workload A at the highest concurrency, and the open-loop
    /// runs); the report links it by file name.
    #[arg(long, value_name = "FILE.svg")]
    plot: Option<PathBuf>,
    /// A Markdown file whose text is included as the report's description of the machine and the command.
    #[arg(long, value_name = "FILE.md")]
    preamble: Option<PathBuf>,
    /// Directory of `floor --json` files (the machine's floor under a quorum put, measured once per
    /// repeat); the put target compares the single-client put p50 with their median.
    #[arg(long, value_name = "DIR")]
    floor: Option<PathBuf>,
    /// Print half the median ops/s of LABEL's workload A at the highest concurrency (the open-loop rate
    /// `compare.sh` uses) and exit, writing nothing.
    #[arg(long, value_name = "LABEL")]
    print_half_peak: Option<String>,
}

/// Latency figures in µs.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Latency {
    p50: f64,
    p99: f64,
    p999: f64,
}

/// The figures of one `run --json` file.
#[derive(Debug, Clone)]
struct Run {
    label: String,
    workload: String,
    concurrency: u64,
    /// Open loop: the scheduled rate (rounded to whole operations per second).
    rate: Option<u64>,
    ops_per_sec: f64,
    errors: u64,
    all: Latency,
    ops: BTreeMap<String, Latency>,
    /// (x on the nines axis, µs) of all operations.
    curve: Vec<(f64, f64)>,
}

fn latency(value: &Value) -> Latency {
    let field = |name: &str| value[name].as_f64().unwrap_or(0.0);
    Latency { p50: field("p50_us"), p99: field("p99_us"), p999: field("p999_us") }
}

impl Run {
    fn parse(json: &Value) -> Option<Run> {
        let ops = json["operations"]
            .as_object()?
            .iter()
            .map(|(name, op)| (name.clone(), latency(op)))
            .collect::<BTreeMap<_, _>>();
        let curve = json["curve_us"]
            .as_array()?
            .iter()
            .filter_map(|point| Some((point[0].as_f64()?, point[1].as_f64()?)))
            .collect();
        Some(Run {
            label: json["label"].as_str()?.to_string(),
            workload: json["workload"].as_str()?.to_string(),
            concurrency: json["concurrency"].as_u64()?,
            rate: json["rate"].as_f64().map(|r| r.round() as u64),
            ops_per_sec: json["ops_per_sec"].as_f64()?,
            errors: json["errors"].as_u64()?,
            all: latency(&json["all"]),
            ops,
            curve,
        })
    }
}

/// Repeats of one cell: same system, workload, concurrency and rate.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct CellKey {
    /// Open-loop cells sort after closed-loop ones.
    rate: Option<u64>,
    workload: String,
    concurrency: u64,
    label_rank: (u8, String),
}

/// The medians of a cell's runs.
#[derive(Debug, Clone)]
struct Cell {
    label: String,
    workload: String,
    concurrency: u64,
    rate: Option<u64>,
    runs: usize,
    ops_per_sec: f64,
    errors: u64,
    all: Latency,
    ops: BTreeMap<String, Latency>,
    /// The curve of the run whose throughput is the median.
    curve: Vec<(f64, f64)>,
}

/// The median (the lower middle one of an even count: a figure one run
/// really measured).
fn median(mut values: Vec<f64>) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_by(f64::total_cmp);
    values[(values.len() - 1) / 2]
}

/// etcd first, then Cohort's systems, the no-op ceiling last.
fn label_rank(label: &str) -> (u8, String) {
    // The separate-process shape first: it is the one a deployment runs.
    let rank = match label {
        "cohort-procs" => 0,
        "cohort-colocated" => 1,
        l if l.starts_with("cohort") => 2,
        "etcd" => 3,
        "noop" => 5,
        _ => 4,
    };
    (rank, label.to_string())
}

fn summarise(runs: &[Run]) -> Vec<Cell> {
    let mut groups: BTreeMap<CellKey, Vec<&Run>> = BTreeMap::new();
    for run in runs {
        let key = CellKey {
            rate: run.rate,
            workload: run.workload.clone(),
            concurrency: run.concurrency,
            label_rank: label_rank(&run.label),
        };
        groups.entry(key).or_default().push(run);
    }
    groups
        .into_values()
        .map(|group| {
            let first = group[0];
            let pick = |f: &dyn Fn(&Run) -> f64| median(group.iter().map(|r| f(r)).collect());
            let ops_per_sec = pick(&|r| r.ops_per_sec);
            let all = Latency { p50: pick(&|r| r.all.p50), p99: pick(&|r| r.all.p99), p999: pick(&|r| r.all.p999) };
            let ops = first
                .ops
                .keys()
                .map(|name| {
                    let of =
                        |f: fn(&Latency) -> f64| median(group.iter().filter_map(|r| r.ops.get(name).map(f)).collect());
                    (name.clone(), Latency { p50: of(|l| l.p50), p99: of(|l| l.p99), p999: of(|l| l.p999) })
                })
                .collect();
            let curve = group
                .iter()
                .min_by(|a, b| (a.ops_per_sec - ops_per_sec).abs().total_cmp(&(b.ops_per_sec - ops_per_sec).abs()))
                .map(|r| r.curve.clone())
                .unwrap_or_default();
            Cell {
                label: first.label.clone(),
                workload: first.workload.clone(),
                concurrency: first.concurrency,
                rate: first.rate,
                runs: group.len(),
                ops_per_sec,
                errors: group.iter().map(|r| r.errors).sum(),
                all,
                ops,
                curve,
            }
        })
        .collect()
}

fn read_runs(dir: &Path) -> anyhow::Result<Vec<Run>> {
    let mut runs = Vec::new();
    let entries = std::fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))?;
    let mut paths: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    paths.sort();
    for path in paths.iter().filter(|p| p.extension().is_some_and(|e| e == "json")) {
        let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
        let json: Value = serde_json::from_str(&text).with_context(|| format!("{} is not JSON", path.display()))?;
        let run = Run::parse(&json)
            .with_context(|| format!("{} is not a `cohort-loadtest run --json` report", path.display()))?;
        runs.push(run);
    }
    anyhow::ensure!(!runs.is_empty(), "no run reports (*.json) in {}", dir.display());
    Ok(runs)
}

/// `850 µs`, `12.3 ms`.
fn micros(us: f64) -> String {
    if us < 1000.0 { format!("{us:.0} µs") } else { format!("{:.2} ms", us / 1000.0) }
}

/// The `p50 | p99 | p99.9` cells of a table row.
fn percentile_cells(latency: &Latency) -> String {
    format!("{} | {} | {}", micros(latency.p50), micros(latency.p99), micros(latency.p999))
}

fn ratio(numerator: f64, denominator: f64) -> Option<f64> {
    (denominator > 0.0).then(|| numerator / denominator)
}

fn times(value: Option<f64>) -> String {
    value.map_or_else(|| "–".into(), |v| format!("{v:.2}×"))
}

/// Looks cells up by what they measured.
struct Cells<'a>(&'a [Cell]);

impl<'a> Cells<'a> {
    fn closed(&self, label: &str, workload: &str, concurrency: u64) -> Option<&'a Cell> {
        self.0
            .iter()
            .find(|c| c.rate.is_none() && c.label == label && c.workload == workload && c.concurrency == concurrency)
    }

    /// The no-op ceiling at `concurrency` (its workload does not matter).
    fn noop(&self, concurrency: u64) -> Option<&'a Cell> {
        self.0.iter().find(|c| c.rate.is_none() && c.label == "noop" && c.concurrency == concurrency)
    }

    /// `label`'s open loop at half its own peak: its highest scheduled rate
    /// (a common rate, when there is one, is at most that).
    fn open(&self, label: &str) -> Option<&'a Cell> {
        self.0.iter().filter(|c| c.label == label).filter(|c| c.rate.is_some()).max_by_key(|c| c.rate)
    }

    fn cohort_labels(&self) -> Vec<&'a str> {
        let mut labels: Vec<&str> =
            self.0.iter().filter(|c| c.label.starts_with("cohort")).map(|c| c.label.as_str()).collect();
        labels.sort_by_key(|label| label_rank(label));
        labels.dedup();
        labels
    }

    fn max_concurrency(&self, workload: &str) -> Option<u64> {
        self.0.iter().filter(|c| c.rate.is_none() && c.workload == workload).map(|c| c.concurrency).max()
    }
}

/// One performance target and how a system fared.
struct Verdict {
    target: String,
    measured: String,
    met: Option<bool>,
}

/// How far above the machine's floor a single client's quorum put may be.
const PUT_FLOOR_LIMIT: f64 = 1.5;

fn targets(cells: &Cells, label: &str, floor: Option<Floor>) -> Vec<Verdict> {
    let mut verdicts = Vec::new();
    // One process holding the whole cluster has no network between its
    // parts, and is held to more.
    let wanted = if label == "cohort-dev" { 3.0 } else { 2.0 };
    for workload in ["a", "c"] {
        let Some(top) = cells.max_concurrency(workload) else { continue };
        let ours = cells.closed(label, workload, top);
        let etcd = cells.closed("etcd", workload, top);
        let r = ours.zip(etcd).and_then(|(o, e)| ratio(o.ops_per_sec, e.ops_per_sec));
        verdicts.push(Verdict {
            target: format!("YCSB {} at concurrency {top}: ≥ {wanted}× etcd's ops/s", workload.to_uppercase()),
            measured: match (ours, etcd) {
                (Some(o), Some(e)) => {
                    format!("{:.0} vs {:.0} ops/s = {}", o.ops_per_sec, e.ops_per_sec, times(r))
                }
                _ => "not measured".into(),
            },
            met: r.map(|r| r >= wanted),
        });
    }
    let put = cells.closed(label, "a", 1).and_then(|c| c.ops.get("update"));
    let r = put.zip(floor).and_then(|(p, f)| ratio(p.p50, f.put_floor_us()));
    verdicts.push(Verdict {
        target: format!(
            "single-client quorum put p50 ≤ {PUT_FLOOR_LIMIT}× the floor (2 loopback round trips + 1 fdatasync)"
        ),
        measured: match (put, floor) {
            (Some(p), Some(f)) => format!(
                "{} vs {} (round trip {}, fdatasync {}{}) = {}",
                micros(p.p50),
                micros(f.put_floor_us()),
                micros(f.round_trip_us),
                micros(f.fdatasync_us),
                f.second_of_three_us
                    .map(|us| format!("; three at once on this disk, the second done after {}", micros(us)))
                    .unwrap_or_default(),
                times(r)
            ),
            _ => "not measured".into(),
        },
        met: r.map(|r| r <= PUT_FLOOR_LIMIT),
    });
    let ceiling = cells.noop(1);
    let get = cells.closed(label, "c", 1).and_then(|c| c.ops.get("read"));
    let r = get.zip(ceiling).and_then(|(g, n)| ratio(g.p50, n.all.p50));
    verdicts.push(Verdict {
        target: "single-client get p50 ≤ 3× the no-op call's p50".into(),
        measured: match (get, ceiling) {
            (Some(g), Some(n)) => format!("{} vs {} = {}", micros(g.p50), micros(n.all.p50), times(r)),
            _ => "not measured".into(),
        },
        met: r.map(|r| r <= 3.0),
    });
    let open = cells.open(label);
    verdicts.push(Verdict {
        target: "open loop at half the peak of workload A: p99 ≤ 10 ms".into(),
        measured: open.map_or_else(
            || "not measured".into(),
            |o| format!("{} ops/s scheduled: p99 {}", o.rate.unwrap_or(0), micros(o.all.p99)),
        ),
        met: open.map(|o| o.all.p99 <= 10_000.0),
    });
    verdicts
}

fn markdown(cells: &[Cell], floor: Option<Floor>, preamble: &str, plot: Option<&str>) -> String {
    let lookup = Cells(cells);
    let mut out = String::new();
    let _ = writeln!(out, "# Cohort beside etcd and the gRPC ceiling\n");
    if !preamble.trim().is_empty() {
        let _ = writeln!(out, "{}\n", preamble.trim());
    }
    let runs = cells.iter().filter(|c| c.rate.is_none()).map(|c| c.runs).max().unwrap_or(0);
    let _ = writeln!(
        out,
        "Every figure is the median of {runs} runs of its cell (each percentile's median taken separately). \
         `× etcd` divides Cohort's throughput by etcd's on the same workload and concurrency; `× noop` divides \
         the no-op call's throughput into it, and `p50 × noop` divides the no-op call's p50 into Cohort's.\n"
    );
    for label in lookup.cohort_labels() {
        let _ = writeln!(out, "## Targets: `{label}`\n");
        let _ = writeln!(out, "| target | measured | met |\n|---|---|---|");
        for verdict in targets(&lookup, label, floor) {
            let met = match verdict.met {
                Some(true) => "yes",
                Some(false) => "**no**",
                None => "–",
            };
            let _ = writeln!(out, "| {} | {} | {met} |", verdict.target, verdict.measured);
        }
        let _ = writeln!(out);
    }
    let _ = writeln!(out, "## Closed loop\n");
    let _ = writeln!(
        out,
        "| system | workload | concurrency | ops/s | p50 | p99 | p99.9 | errors | × etcd | × noop | p50 × noop |\n\
         |---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|"
    );
    for cell in cells.iter().filter(|c| c.rate.is_none() && c.label != "noop") {
        let etcd = lookup.closed("etcd", &cell.workload, cell.concurrency);
        let noop = lookup.noop(cell.concurrency);
        let cohort = cell.label.starts_with("cohort");
        let vs_etcd = if cohort { etcd.and_then(|e| ratio(cell.ops_per_sec, e.ops_per_sec)) } else { None };
        let vs_noop = noop.and_then(|n| ratio(cell.ops_per_sec, n.ops_per_sec));
        let p50_vs_noop = noop.and_then(|n| ratio(cell.all.p50, n.all.p50));
        let _ = writeln!(
            out,
            "| {} | {} | {} | {:.0} | {} | {} | {} | {} | {} |",
            cell.label,
            cell.workload.to_uppercase(),
            cell.concurrency,
            cell.ops_per_sec,
            percentile_cells(&cell.all),
            cell.errors,
            times(vs_etcd),
            times(vs_noop),
            times(p50_vs_noop)
        );
    }
    let _ = writeln!(out, "\nThe no-op call (one unary tonic call that does nothing: the transport's ceiling):\n");
    let _ = writeln!(out, "| concurrency | calls/s | p50 | p99 | p99.9 |\n|--:|--:|--:|--:|--:|");
    for cell in cells.iter().filter(|c| c.rate.is_none() && c.label == "noop") {
        let _ = writeln!(out, "| {} | {:.0} | {} |", cell.concurrency, cell.ops_per_sec, percentile_cells(&cell.all));
    }
    let _ = writeln!(out, "\nPer operation type (p50 / p99):\n");
    let _ = writeln!(out, "| system | workload | concurrency | read | update | rmw |\n|---|---|--:|--:|--:|--:|");
    for cell in cells.iter().filter(|c| c.rate.is_none() && c.label != "noop") {
        let op = |name: &str| {
            cell.ops.get(name).map_or_else(|| "–".into(), |l| format!("{} / {}", micros(l.p50), micros(l.p99)))
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} |",
            cell.label,
            cell.workload.to_uppercase(),
            cell.concurrency,
            op("read"),
            op("update"),
            op("rmw")
        );
    }
    let open: Vec<&Cell> = cells.iter().filter(|c| c.rate.is_some()).collect();
    if !open.is_empty() {
        let _ = writeln!(out, "\n## Open loop\n");
        let _ = writeln!(
            out,
            "Operations start on a fixed schedule and latency counts from the scheduled start, so queueing \
             behind a slow server shows instead of being hidden by a client that waits.\n"
        );
        let _ = writeln!(
            out,
            "| system | workload | scheduled ops/s | achieved ops/s | p50 | p99 | p99.9 | errors |\n\
             |---|---|--:|--:|--:|--:|--:|--:|"
        );
        for cell in open {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {:.0} | {} | {} |",
                cell.label,
                cell.workload.to_uppercase(),
                cell.rate.unwrap_or(0),
                cell.ops_per_sec,
                percentile_cells(&cell.all),
                cell.errors
            );
        }
    }
    if let Some(plot) = plot {
        let _ = writeln!(
            out,
            "\n## Latency percentiles\n\n![latency percentiles]({plot})\n\nEach line is one run: the repeat whose \
             throughput is closest to its cell's median. The tables give the median of each percentile over the \
             repeats, so a line's tail can differ from them when one repeat stalled."
        );
    }
    out
}

/// Two panels: workload A at its highest concurrency, and the open loop.
fn draw(path: &Path, cells: &[Cell]) -> anyhow::Result<()> {
    use plotters::prelude::*;

    let error = |e: &dyn std::fmt::Display| anyhow::anyhow!("cannot draw {}: {e}", path.display());
    let lookup = Cells(cells);
    let top = lookup.max_concurrency("a").unwrap_or(0);
    let closed: Vec<&Cell> =
        cells.iter().filter(|c| c.rate.is_none() && c.workload == "a" && c.concurrency == top).collect();
    // The open loop every system ran at the same (lowest) rate.
    let rate = cells.iter().filter_map(|c| c.rate).min().unwrap_or(0);
    let open: Vec<&Cell> = cells.iter().filter(|c| c.rate == Some(rate)).collect();
    let root = SVGBackend::new(path, (1200, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| error(&e))?;
    let panels = root.split_evenly((1, 2));
    let titles =
        [format!("workload A, closed loop, {top} in flight"), format!("workload A, open loop at {rate} ops/s")];
    for ((panel, series), title) in panels.iter().zip([closed, open]).zip(titles) {
        let top_ms = series.iter().flat_map(|c| c.curve.iter().map(|(_, us)| us / 1e3)).fold(0.001f64, f64::max) * 1.6;
        let mut chart = ChartBuilder::on(panel)
            .caption(title, ("sans-serif", 18))
            .margin(16)
            .x_label_area_size(44)
            .y_label_area_size(64)
            .build_cartesian_2d(0f64..MAX_NINES, (0.01f64..top_ms).log_scale())
            .map_err(|e| error(&e))?;
        chart
            .configure_mesh()
            .x_labels(MAX_NINES as usize + 1)
            .label_style(("sans-serif", 13))
            .axis_desc_style(("sans-serif", 14))
            .x_desc("percentile")
            .y_desc("latency (ms, log scale)")
            .x_label_formatter(&|x| nines_label(*x))
            .draw()
            .map_err(|e| error(&e))?;
        for (i, cell) in series.iter().enumerate() {
            let color = Palette99::pick(i);
            let legend = color.stroke_width(2);
            let points = cell.curve.iter().map(|(x, us)| (*x, (us / 1e3).max(0.01)));
            chart
                .draw_series(LineSeries::new(points, color.stroke_width(2)))
                .map_err(|e| error(&e))?
                .label(format!("{} ({:.0} ops/s)", cell.label, cell.ops_per_sec))
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], legend));
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .label_font(("sans-serif", 13))
            .draw()
            .map_err(|e| error(&e))?;
    }
    root.present().map_err(|e| error(&e))?;
    Ok(())
}

/// Runs `report`.
/// The median of every `floor --json` file in `dir`.
fn read_floor(dir: &Path) -> anyhow::Result<Floor> {
    let entries = std::fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))?;
    let mut floors = Vec::new();
    for path in entries.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.extension().is_some_and(|e| e == "json"))
    {
        let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
        let json: Value = serde_json::from_str(&text).with_context(|| format!("{} is not JSON", path.display()))?;
        floors.push(
            floor::parse(&json)
                .with_context(|| format!("{} is not a `cohort-loadtest floor --json` file", path.display()))?,
        );
    }
    anyhow::ensure!(!floors.is_empty(), "no floor measurements (*.json) in {}", dir.display());
    let concurrent: Vec<f64> = floors.iter().filter_map(|f| f.second_of_three_us).collect();
    Ok(Floor {
        fdatasync_us: median(floors.iter().map(|f| f.fdatasync_us).collect()),
        round_trip_us: median(floors.iter().map(|f| f.round_trip_us).collect()),
        second_of_three_us: (!concurrent.is_empty()).then(|| median(concurrent)),
    })
}

pub fn run(args: ReportArgs) -> anyhow::Result<()> {
    let runs = read_runs(&args.results)?;
    let cells = summarise(&runs);
    if let Some(label) = &args.print_half_peak {
        let top = Cells(&cells).max_concurrency("a").context("no closed-loop run of workload a")?;
        let cell = Cells(&cells)
            .closed(label, "a", top)
            .with_context(|| format!("no closed-loop run of workload a at concurrency {top} labelled {label:?}"))?;
        println!("{:.0}", (cell.ops_per_sec / 2.0).floor().max(1.0));
        return Ok(());
    }
    let preamble = match &args.preamble {
        Some(path) => std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?,
        None => String::new(),
    };
    if let Some(plot) = &args.plot {
        draw(plot, &cells)?;
    }
    let plot_name = args.plot.as_ref().and_then(|p| p.file_name()).map(|n| n.to_string_lossy().into_owned());
    let floor = match &args.floor {
        Some(dir) => Some(read_floor(dir)?),
        None => None,
    };
    let text = markdown(&cells, floor, &preamble, plot_name.as_deref());
    std::fs::write(&args.output, text).with_context(|| format!("cannot write {}", args.output.display()))?;
    eprintln!("wrote {}", args.output.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn run_json(label: &str, workload: &str, concurrency: u64, rate: Option<f64>, ops: f64, p50: u64) -> Value {
        let figures = json!({"p50_us": p50, "p99_us": p50 * 4, "p999_us": p50 * 8});
        json!({
            "label": label, "workload": workload, "concurrency": concurrency, "rate": rate,
            "ops_per_sec": ops, "errors": 0, "all": figures,
            "operations": {"read": figures, "update": figures},
            "curve_us": [[0.0, p50], [2.0, p50 * 4], [4.0, p50 * 10]],
        })
    }

    fn cells(jsons: &[Value]) -> Vec<Cell> {
        let runs: Vec<Run> = jsons.iter().map(|j| Run::parse(j).expect("parses")).collect();
        summarise(&runs)
    }

    #[test]
    fn medians_of_repeats_and_ratios_to_etcd_and_noop() {
        let cells = cells(&[
            run_json("etcd", "a", 64, None, 5000.0, 900),
            run_json("etcd", "a", 64, None, 7000.0, 800),
            run_json("etcd", "a", 64, None, 6000.0, 1000),
            run_json("cohort-dev", "a", 64, None, 12000.0, 400),
            run_json("noop", "a", 64, None, 40000.0, 100),
            run_json("noop", "a", 1, None, 8000.0, 120),
            run_json("cohort-dev", "a", 1, None, 2000.0, 480),
            run_json("cohort-dev", "c", 1, None, 3000.0, 300),
            run_json("cohort-dev", "a", 64, Some(6000.0), 6000.0, 2000),
        ]);
        let etcd = Cells(&cells).closed("etcd", "a", 64).expect("etcd cell");
        assert_eq!((etcd.runs, etcd.ops_per_sec, etcd.all.p50), (3, 6000.0, 900.0));
        let floor = Floor { fdatasync_us: 200.0, round_trip_us: 50.0, second_of_three_us: None };
        let verdicts = targets(&Cells(&cells), "cohort-dev", Some(floor));
        let met: Vec<Option<bool>> = verdicts.iter().map(|v| v.met).collect();
        // A: 12000 / 6000 = 2.0, short of the dev cluster's 3×; C@64 not measured; put 480 µs against a
        // floor of 300 µs = 1.6×, over 1.5×; get 300/120 = 2.5; open p99 8 ms.
        assert_eq!(met, [Some(false), None, Some(false), Some(true), Some(true)]);
        assert!(verdicts[0].target.contains("≥ 3× etcd"), "{}", verdicts[0].target);
        assert!(verdicts[2].measured.contains("480 µs vs 300 µs"), "{}", verdicts[2].measured);
        let unmeasured = targets(&Cells(&cells), "cohort-dev", None);
        assert_eq!(unmeasured[2].met, None, "no floor, no verdict on the put");
        let text = markdown(&cells, Some(floor), "machine: test", Some("plot.svg"));
        assert!(
            text.contains("| cohort-dev | A | 64 | 12000 | 400 µs | 1.60 ms | 3.20 ms | 0 | 2.00× | 0.30× | 4.00× |"),
            "{text}"
        );
        assert!(text.contains("machine: test") && text.contains("![latency percentiles](plot.svg)"), "{text}");
        assert!(text.contains("| cohort-dev | A | 6000 | 6000 |"), "{text}");
    }

    #[test]
    fn the_median_of_an_even_count_is_a_measured_value() {
        assert_eq!(median(vec![4.0, 1.0, 3.0, 2.0]), 2.0);
        assert_eq!(median(vec![]), 0.0);
    }

    #[test]
    fn plot_draws_both_panels() {
        let cells = cells(&[
            run_json("etcd", "a", 64, None, 6000.0, 900),
            run_json("cohort-dev", "a", 64, None, 12000.0, 400),
            run_json("cohort-dev", "a", 64, Some(6000.0), 6000.0, 2000),
        ]);
        let dir = tempfile::tempdir().expect("temporary directory");
        let path = dir.path().join("plot.svg");
        draw(&path, &cells).expect("draws");
        let svg = std::fs::read_to_string(&path).expect("svg");
        assert!(svg.contains("open loop at 6000 ops/s") && svg.contains("etcd (6000 ops/s)"), "{svg}");
    }
}
