//! `vlab bench`: a lab run repeatedly, with median/min/max of boot time, wall
//! time and per-case throughput, and ratios between cases measured in the same
//! run: container path over underlay path (same family and workload), each
//! overlay over `baseline` and each filter over `none` (the case that differs
//! only there).

use serde::Serialize;

use crate::lab::{Lab, TrafficPath};
use crate::report::{CaseReport, CaseTiming, Report};
use crate::run::{run, RunOptions};
use crate::{filter, overlay};

/// Median, minimum and maximum of a series.
#[derive(Debug, Clone, Serialize)]
pub struct Stats {
    /// What was measured.
    pub metric: String,
    /// Unit of the numbers.
    pub unit: String,
    /// Median.
    pub median: f64,
    /// Minimum.
    pub min: f64,
    /// Maximum.
    pub max: f64,
    /// Every sample, in run order.
    pub samples: Vec<f64>,
}

impl Stats {
    fn of(metric: String, unit: &str, samples: Vec<f64>) -> Stats {
        let mut sorted = samples.clone();
        sorted.sort_by(|a, b| a.total_cmp(b));
        let n = sorted.len();
        let median = if n == 0 {
            f64::NAN
        } else if n % 2 == 1 {
            sorted[n / 2]
        } else {
            (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
        };
        Stats {
            metric,
            unit: unit.into(),
            median,
            min: sorted.first().copied().unwrap_or(f64::NAN),
            max: sorted.last().copied().unwrap_or(f64::NAN),
            samples,
        }
    }
}

/// The result of a benchmark.
#[derive(Debug, Clone, Serialize)]
pub struct Bench {
    /// Lab name.
    pub lab: String,
    /// Runs done.
    pub runs: usize,
    /// Accelerator of the runs.
    pub accel: String,
    /// The series.
    pub stats: Vec<Stats>,
    /// Every run's checks passed.
    pub passed: bool,
}

/// Summarises reports of repeated runs of one lab.
pub fn summarize(lab: &Lab, reports: &[Report]) -> Bench {
    let mut stats = vec![
        Stats::of(
            "pair boot (slowest VM until its agent answered)".into(),
            "s",
            reports.iter().map(|r| r.vms.iter().map(|v| v.boot_s).fold(0.0, f64::max)).collect(),
        ),
        Stats::of("whole run".into(), "s", reports.iter().map(|r| r.wall_s).collect()),
    ];
    stats.extend(phases(lab, reports));
    let cases = lab.cases();
    for case in &cases {
        let samples: Vec<f64> = reports
            .iter()
            .filter_map(|r| r.cases.iter().find(|c| c.name == case.name))
            .map(|c| c.throughput_bps / 1e9)
            .collect();
        if !samples.is_empty() {
            stats.push(Stats::of(format!("throughput {}", case.name), "Gbit/s", samples));
        }
    }
    for case in cases.iter().filter(|c| c.params.path == TrafficPath::Container) {
        let Some(base) = cases.iter().find(|b| {
            b.params.path == TrafficPath::Underlay && {
                let mut p = b.params.clone();
                p.path = TrafficPath::Container;
                p == case.params
            }
        }) else {
            continue;
        };
        let ratios: Vec<f64> = reports
            .iter()
            .filter_map(|r| {
                let c = r.cases.iter().find(|x| x.name == case.name)?;
                let b = r.cases.iter().find(|x| x.name == base.name)?;
                (b.throughput_bps > 0.0).then(|| c.throughput_bps / b.throughput_bps)
            })
            .collect();
        if !ratios.is_empty() {
            stats.push(Stats::of(format!("ratio {} / {}", case.name, base.name), "x", ratios));
        }
    }
    // Overlays against the reference overlay and filters against none,
    // each ratio taken within one run (the references' own cases have none).
    type Ratio = fn(&CaseReport) -> Option<f64>;
    let versus: [(Ratio, String); 2] = [
        (|c| c.vs_baseline, format!("overlay={}", overlay::REFERENCE)),
        (|c| c.vs_no_filter, format!("filter={}", filter::REFERENCE)),
    ];
    for (ratio, against) in &versus {
        for case in &cases {
            let ratios: Vec<f64> =
                reports.iter().filter_map(|r| ratio(r.cases.iter().find(|x| x.name == case.name)?)).collect();
            if !ratios.is_empty() {
                stats.push(Stats::of(format!("ratio {} / {against}", case.name), "x", ratios));
            }
        }
    }
    Bench {
        lab: lab.name.clone(),
        runs: reports.len(),
        accel: reports.first().map(|r| r.accel.clone()).unwrap_or_default(),
        stats,
        passed: reports.iter().all(|r| r.passed),
    }
}

/// A case phase's name and its seconds in a case's timing.
type CasePhase = (&'static str, fn(&CaseTiming) -> f64);

/// Where each run's time went: the fixed costs, each case phase summed over
/// the run's cases, and what the cases cost beyond their workloads' duration
/// (per case, and as the ratio of case time to workload time within a run).
fn phases(lab: &Lab, reports: &[Report]) -> Vec<Stats> {
    let series = |f: &dyn Fn(&Report) -> f64| reports.iter().map(f).collect::<Vec<f64>>();
    let mut stats = vec![
        Stats::of("phase: acceleration choice".into(), "s", series(&|r| r.timing.probe_s)),
        Stats::of("phase: boots (all pairs)".into(), "s", series(&|r| r.timing.boots.iter().map(|b| b.boot_s).sum())),
        Stats::of(
            "phase: deploys (all pairs)".into(),
            "s",
            series(&|r| r.timing.boots.iter().map(|b| b.deploy_s).sum()),
        ),
        Stats::of(
            "phase: warm-ups (all pairs)".into(),
            "s",
            series(&|r| r.timing.boots.iter().map(|b| b.warm_up_s).sum()),
        ),
    ];
    let case_phases: [CasePhase; 7] = [
        ("setup", |t| t.setup_s),
        ("captures start", |t| t.captures_start_s),
        ("workload", |t| t.workload_s),
        ("evidence", |t| t.evidence_s),
        ("probe matrix", |t| t.matrix_s),
        ("captures stop", |t| t.captures_stop_s),
        ("verdict", |t| t.verdict_s),
    ];
    for (name, get) in case_phases {
        let sum = |r: &Report| r.cases.iter().map(|c| get(&c.timing)).sum();
        stats.push(Stats::of(format!("phase: cases' {name} (all cases)"), "s", series(&sum)));
    }
    let duration = lab.workload.duration.as_secs_f64();
    let total = |r: &Report| r.cases.iter().map(|c| c.timing.total_s).sum::<f64>();
    let n = |r: &Report| r.cases.len().max(1) as f64;
    stats.push(Stats::of(
        "case overhead beyond the workload's duration (per case)".into(),
        "s",
        series(&|r| (total(r) - n(r) * duration) / n(r)),
    ));
    stats.push(Stats::of(
        "case time / workload duration (within each run)".into(),
        "x",
        series(&|r| total(r) / (n(r) * duration)),
    ));
    stats
}

/// Runs the lab `runs` times; any run that cannot run ends the benchmark.
pub async fn bench(lab: &Lab, opts: &RunOptions, runs: usize) -> anyhow::Result<(Bench, Vec<Report>)> {
    let mut reports = Vec::new();
    for i in 0..runs {
        opts.progress.phase(&format!("run {}/{runs}", i + 1));
        let report = run(lab, opts).await?;
        eprintln!(
            "run {}/{runs}: {}",
            i + 1,
            report
                .cases
                .iter()
                .map(|c| format!("{} {:.2} Gbit/s", c.name, c.throughput_bps / 1e9))
                .collect::<Vec<_>>()
                .join(", ")
        );
        reports.push(report);
    }
    Ok((summarize(lab, &reports), reports))
}

impl Bench {
    /// The table printed on stdout.
    pub fn table(&self) -> String {
        let width = self.stats.iter().map(|s| s.metric.len()).max().unwrap_or(6);
        let mut out = format!("bench {} ({} runs, accel {})\n", self.lab, self.runs, self.accel);
        out.push_str(&format!("{:<width$}  {:>8}  {:>8}  {:>8}  unit\n", "metric", "median", "min", "max"));
        for s in &self.stats {
            out.push_str(&format!(
                "{:<width$}  {:>8.2}  {:>8.2}  {:>8.2}  {}\n",
                s.metric, s.median, s.min, s.max, s.unit
            ));
        }
        out
    }
}
