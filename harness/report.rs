//! The typed result of a run, its table and its JSON.
//!
//! What a datapath variant found in a case is its section of the case's
//! report ([`Sections`]): typed by the variant, kept here as JSON, so that
//! this module names no variant and every variant can import [`Check`].

use serde::{Deserialize, Serialize};

use crate::lab::CaseParams;
use crate::measure::capture::CaptureSummary;
use crate::measure::cost::{PacketCost, RatioSplit};
use crate::measure::nic::InterfaceEvidence;
use crate::stats::Summary;

/// One verdict computed from evidence read back from the guests (read back
/// from a report by `vlab repro`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Check {
    /// What is checked.
    pub name: String,
    /// The verdict (true when not judged: nothing spoke against it).
    pub passed: bool,
    /// The evidence behind it.
    pub detail: String,
    /// The evidence held nothing to judge (the detail says why): neither
    /// passed nor failed, and said so in every report rather than passed
    /// silently. Absent from the JSON when judged.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub not_judged: bool,
}

impl Check {
    /// A check with its verdict and evidence.
    pub fn new(name: &str, passed: bool, detail: impl Into<String>) -> Check {
        Check { name: name.to_string(), passed, detail: detail.into(), not_judged: false }
    }

    /// A check the evidence held nothing for; `detail` says why.
    pub fn not_judged(name: &str, detail: impl Into<String>) -> Check {
        Check { name: name.to_string(), passed: true, detail: detail.into(), not_judged: true }
    }
}

/// What a VM was and how long it took to boot.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VmReport {
    /// Name.
    pub name: String,
    /// Seconds from QEMU start until the guest agent answered.
    pub boot_s: f64,
    /// vCPUs.
    pub cpus: u32,
    /// Memory.
    pub memory_mib: u32,
    /// NIC (`virtio-q2`, `igb-sriov-vf2`, ...).
    pub nic: String,
    /// Combined channels the guest's underlay NIC reports (`ethtool -l`).
    pub channels: Option<u32>,
    /// Whether vhost-net carries the NIC's data path.
    pub vhost: bool,
    /// Boots of the pair this VM took: 2 when the first failed for a reason
    /// outside the lab and the kernel (a stall, an emulator crash).
    pub boot_attempts: u32,
    /// Why the pair's earlier boots failed, one entry each.
    pub boot_retries: Vec<BootRetry>,
    /// How the VM started: booted, or restored from a saved state.
    pub start: Start,
    /// Seconds spent saving its state after a cold boot (then kept for later runs).
    pub saved_s: Option<f64>,
}

/// A boot of a pair that failed for a reason outside the lab and the kernel
/// under test, after which the pair was booted again.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BootRetry {
    /// Which boot of the pair failed (from 1).
    pub attempt: u32,
    /// What failed it.
    pub fault: BootFault,
    /// The VM and how it showed: QEMU's crash and message, the stall's sign.
    pub reason: String,
}

/// What can fail a boot without being the lab's or the kernel's fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BootFault {
    /// QEMU itself crashed (a failed assertion, a fatal signal).
    EmulatorCrash,
    /// The guest stopped making progress (an RCU stall, no init in time):
    /// under TCG a vCPU now and then stops getting its timer interrupt.
    Stall,
}

impl std::fmt::Display for BootFault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            BootFault::EmulatorCrash => "emulator crash",
            BootFault::Stall => "stall",
        })
    }
}

/// How a VM started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Start {
    /// Booted its kernel.
    Cold,
    /// Loaded a state saved after an earlier boot.
    Restored,
}

/// The result of one case.
#[derive(Debug, Clone, Serialize)]
pub struct CaseReport {
    /// Case name (`path=container,family=ipv4`).
    pub name: String,
    /// Resolved parameters.
    pub params: CaseParams,
    /// Receiver throughput in bit/s (0 when the workload failed).
    pub throughput_bps: f64,
    /// TCP retransmissions.
    pub retransmits: Option<u64>,
    /// Client host CPU use, percent.
    pub cpu_client_percent: f64,
    /// Server host CPU use, percent.
    pub cpu_server_percent: f64,
    /// Verdicts.
    pub checks: Vec<Check>,
    /// All checks passed.
    pub passed: bool,
    /// Evidence per interface: driver, channels, VFs, offloads, counters.
    pub interfaces: Vec<InterfaceEvidence>,
    /// Summaries of the packet captures (empty without `[capture]`).
    pub captures: Vec<CaptureSummary>,
    /// What the case's overlay and filter found, each in its own terms.
    pub variant: Sections,
    /// Where the case's time went.
    pub timing: CaseTiming,
    /// Throughput over that of the same case with the baseline overlay in this
    /// run (labs whose matrix compares overlays).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vs_baseline: Option<f64>,
    /// What the case's data packets cost on the underlay (see
    /// [`PacketCost`]); `None` where nothing crossed it or a figure is missing.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cost: Option<PacketCost>,
    /// [`CaseReport::vs_baseline`] split into packets per byte, CPU per
    /// packet and CPU busy (see [`RatioSplit`]); over rounds, each factor's
    /// geometric mean.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vs_baseline_split: Option<RatioSplit>,
    /// Throughput over that of the same case without a filter (filter
    /// `none`) on the same booted pair in this run (labs whose matrix
    /// compares filters).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vs_no_filter: Option<f64>,
    /// New-connection latency (`[workload] connects`), microseconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connect: Option<crate::measure::connect::Latency>,
    /// Its median over that of the case without a filter (as
    /// `vs_no_filter`): above 1, new connections wait longer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connect_vs_no_filter: Option<f64>,
    /// With `--repeat`: the median latency of every repetition, their
    /// median and interval.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connect_summary: Option<Summary>,
    /// With `--repeat`: `connect_vs_no_filter` of every repetition and
    /// their interval; `connect_vs_no_filter` is their geometric mean.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connect_vs_no_filter_summary: Option<Summary>,
    /// How long the case's rules took to be put in place (the filter's
    /// per-case setup: `iptables-restore`, `nft -f` or the eBPF maps'
    /// batch), seconds, the slowest VM by its own clock; only where each
    /// case puts its own (a `policy` or `rules` axis).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ruleset_s: Option<f64>,
    /// With `--repeat`: `ruleset_s` of every repetition, their median and
    /// interval.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ruleset_summary: Option<Summary>,
    /// With `--repeat`: the receiver throughput of every repetition, its
    /// median (also `throughput_bps`) and the geometric mean's interval.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub throughput: Option<Summary>,
    /// With `--repeat`: `vs_baseline` of every repetition (each against its
    /// sibling in the same round) and their interval; `vs_baseline` is their
    /// geometric mean.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vs_baseline_summary: Option<Summary>,
    /// The same for `vs_no_filter`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vs_no_filter_summary: Option<Summary>,
    /// With `--repeat`: each repetition's outcome (the evidence above is
    /// the first's; later ones keep theirs under `repeat-N/` in the artifacts).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub repetitions: Vec<Repetition>,
}

/// One repetition of a case.
#[derive(Debug, Clone, Serialize)]
pub struct Repetition {
    pub throughput_bps: f64,
    pub passed: bool,
    /// The names of its checks that failed.
    pub failed_checks: Vec<String>,
}

/// The reports of a run's rounds (each with every case, in the same order)
/// as one report per case: with one round, that round's; with several, the
/// first round's evidence with every repetition's throughput summarised,
/// the ratios taken round by round, and passed only when every repetition
/// passed.
pub fn combine_repetitions(mut rounds: Vec<Vec<CaseReport>>) -> Vec<CaseReport> {
    if rounds.len() <= 1 {
        return rounds.pop().unwrap_or_default();
    }
    let first = rounds[0].clone();
    first
        .into_iter()
        .enumerate()
        .map(|(i, mut c)| {
            let all: Vec<&CaseReport> = rounds.iter().map(|r| &r[i]).collect();
            let samples: Vec<f64> = all.iter().map(|r| r.throughput_bps).collect();
            c.throughput = crate::stats::summarize(&samples);
            c.throughput_bps = crate::stats::median(&samples);
            let ratios = |get: fn(&CaseReport) -> Option<f64>| -> Option<Summary> {
                let rs: Option<Vec<f64>> = all.iter().map(|r| get(r)).collect();
                crate::stats::summarize(&rs?)
            };
            c.vs_baseline_summary = ratios(|r| r.vs_baseline);
            let splits: Option<Vec<RatioSplit>> = all.iter().map(|r| r.vs_baseline_split).collect();
            c.vs_baseline_split = splits.and_then(|s| RatioSplit::mean(&s));
            c.vs_no_filter_summary = ratios(|r| r.vs_no_filter);
            c.connect_vs_no_filter_summary = ratios(|r| r.connect_vs_no_filter);
            c.connect_summary = ratios(|r| r.connect.as_ref().map(|l| l.median_us));
            c.ruleset_summary = ratios(|r| r.ruleset_s);
            c.connect_vs_no_filter = c.connect_vs_no_filter_summary.as_ref().map(|s| s.mean).or(c.connect_vs_no_filter);
            c.vs_baseline = c.vs_baseline_summary.as_ref().map(|s| s.mean).or(c.vs_baseline);
            c.vs_no_filter = c.vs_no_filter_summary.as_ref().map(|s| s.mean).or(c.vs_no_filter);
            c.repetitions = all
                .iter()
                .map(|r| Repetition {
                    throughput_bps: r.throughput_bps,
                    passed: r.passed,
                    failed_checks: r.failed_checks().into_iter().map(String::from).collect(),
                })
                .collect();
            c.passed = all.iter().all(|r| r.passed);
            c
        })
        .collect()
}

impl CaseReport {
    /// Its throughput samples, one per repetition in round order (its one
    /// figure without `--repeat`), bit/s.
    pub fn samples(&self) -> Vec<f64> {
        self.throughput.as_ref().map_or_else(|| vec![self.throughput_bps], |t| t.samples.clone())
    }

    /// The names of its checks that failed.
    pub fn failed_checks(&self) -> Vec<&str> {
        self.checks.iter().filter(|k| !k.passed).map(|k| k.name.as_str()).collect()
    }

    /// The names of its checks that could not be judged.
    pub fn unjudged_checks(&self) -> Vec<&str> {
        self.checks.iter().filter(|k| k.not_judged).map(|k| k.name.as_str()).collect()
    }

    /// `pass`, `pass, not judged: NAME`, or `FAIL (NAMES)`.
    pub fn result_text(&self) -> String {
        let unjudged = self.unjudged_checks();
        match (self.passed, unjudged.is_empty()) {
            (true, true) => "pass".to_string(),
            (true, false) => format!("pass, not judged: {}", unjudged.join(", ")),
            (false, _) => format!("FAIL ({})", self.failed_checks().join(", ")),
        }
    }

    /// Its throughput, with its ratios to the baseline overlay and to no
    /// filter when the run has them: `2.04 Gbit/s (0.84x no filter)`.
    /// With repetitions, the median and the ratios' geometric means each
    /// with its 95 % interval: `2.04 [1.90-2.20] Gbit/s (0.84x [0.80-0.90] no filter)`.
    pub fn throughput_text(&self) -> String {
        let interval = |s: &Option<Summary>| {
            s.as_ref().and_then(|s| s.interval).map_or(String::new(), |i| format!(" [{:.2}-{:.2}]", i.low, i.high))
        };
        let ratios: Vec<String> = [
            (self.vs_baseline, &self.vs_baseline_summary, "baseline"),
            (self.vs_no_filter, &self.vs_no_filter_summary, "no filter"),
        ]
        .into_iter()
        .filter_map(|(r, s, of)| r.map(|r| format!("{r:.2}x{} {of}", interval(s))))
        .collect();
        let bps = match self.throughput.as_ref().and_then(|t| t.interval) {
            Some(i) => fmt_bps_within(self.throughput_bps, i.low, i.high),
            None => fmt_bps(self.throughput_bps),
        };
        match ratios.is_empty() {
            true => bps,
            false => format!("{bps} ({})", ratios.join(", ")),
        }
    }
}

impl CaseReport {
    /// Its new-connection latency (median), with its ratio to no filter:
    /// `412 µs (1.52x [1.31-1.76] no filter)`; `None` without one.
    pub fn connect_text(&self) -> Option<String> {
        let median = self.connect_summary.as_ref().map(|s| s.median).or(self.connect.as_ref().map(|l| l.median_us))?;
        let interval = |s: &Option<Summary>| {
            s.as_ref().and_then(|s| s.interval).map_or(String::new(), |i| format!(" [{:.2}-{:.2}]", i.low, i.high))
        };
        let ratio = self
            .connect_vs_no_filter
            .map(|r| format!(" ({r:.2}x{} no filter)", interval(&self.connect_vs_no_filter_summary)))
            .unwrap_or_default();
        Some(format!("{median:.0} µs{ratio}"))
    }

    /// How long its rules took to be put in place (median over repetitions):
    /// `0.41 s`; `None` where the case put none of its own.
    pub fn ruleset_text(&self) -> Option<String> {
        let s = self.ruleset_summary.as_ref().map(|s| s.median).or(self.ruleset_s)?;
        Some(if s < 1.0 { format!("{:.0} ms", s * 1000.0) } else { format!("{s:.2} s") })
    }
}

/// A cell of a case's row, `None` where it has no such figure.
pub type CaseCell = fn(&CaseReport) -> Option<String>;

/// Columns only some labs fill, by heading: the table and the HTML page
/// show one when a case has a value.
pub const OPTIONAL_COLUMNS: [(&str, CaseCell); 4] = [
    ("new conn.", CaseReport::connect_text),
    ("rules in", CaseReport::ruleset_text),
    ("underlay packets", |c| c.cost.as_ref().map(PacketCost::text)),
    (SPLIT_HEADING, |c| c.vs_baseline_split.as_ref().map(RatioSplit::text)),
];

/// The heading of the column of [`CaseReport::vs_baseline_split`], which
/// the table prints under its case's row rather than in a column.
pub const SPLIT_HEADING: &str = "vs baseline, split";

/// Where a case's time went, phase by phase, in seconds.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct CaseTiming {
    /// A clean slate, the overlay's per-case setup, offloads, interface
    /// probes and everything read before the workload.
    pub setup_s: f64,
    /// Starting the captures and the iperf3 server until each listens.
    pub captures_start_s: f64,
    /// The client's run and the server's end.
    pub workload_s: f64,
    /// Fetching the pcaps (stopped with the evidence) and keeping the
    /// case's artifacts.
    pub captures_stop_s: f64,
    /// One batch per VM after the workload: captures stopped, counters, the
    /// kernel log, the variants' evidence.
    pub evidence_s: f64,
    /// The probe matrix, when the filter asks for one (its listeners
    /// started with the captures): the drop counters read, every probe of
    /// every VM at once, the counters read again.
    #[serde(default)]
    pub matrix_s: f64,
    /// Decoding the pcaps, every check and verdict (keeping the record).
    pub verdict_s: f64,
    /// The whole case.
    pub total_s: f64,
}

/// Where a booted pair's time went, in seconds.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct BootTiming {
    /// Underlay, QEMU starts, until every agent answered (retries included).
    pub boot_s: f64,
    /// Guest setup, the variants' deploy plans and readiness, the guests'
    /// settling, and the filters deployed after the first.
    pub deploy_s: f64,
    /// How long each guest took to settle after the deploy (see [`Settled`]).
    pub settled: Vec<Settled>,
    /// The warm-up: the pair's first case, once with a 1 s workload and
    /// unreported, before the cases.
    pub warm_up_s: f64,
    /// Its cases.
    pub cases_s: f64,
}

/// A guest's wait after the deploy until its vCPUs were idle (at least 90 %
/// over half a second; 30 s at most), so that the first case does not pay for
/// what the deploy left running (daemons that are still starting).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Settled {
    pub vm: String,
    /// From the end of the deploy until it was idle (or the limit passed).
    pub seconds: f64,
    /// Its idle share over the last half second.
    pub idle_percent: u32,
}

/// Where a run's time went, in seconds.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RunTiming {
    /// Finding (or building) the image.
    pub image_s: f64,
    /// Choosing the accelerator (the KVM probe, or its kept verdict).
    pub probe_s: f64,
    /// Each booted pair.
    pub boots: Vec<BootTiming>,
}

/// A variant's section of a case's report.
#[derive(Debug, Clone, Serialize)]
pub struct Section {
    /// The variant (`ila`, `none`, ...).
    pub name: String,
    /// Its evidence and verdicts, as the variant types them.
    #[serde(flatten)]
    pub evidence: serde_json::Value,
}

/// The sections of the case's overlay and filter (absent: nothing to report).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Sections {
    /// The overlay's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub overlay: Option<Section>,
    /// The filter's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub filter: Option<Section>,
}

/// How long an overlay took to carry traffic after its deploy, by its own
/// readiness probe.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Readiness {
    /// The overlay.
    pub overlay: String,
    /// What was waited for.
    pub what: String,
    /// Seconds from the end of the deploy until the probe succeeded; `None`
    /// when it never did within its limit.
    pub seconds: Option<f64>,
}

/// The matrix axis a comparison holds the rest of a case's parameters
/// against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Versus {
    /// Against the reference overlay: [`CaseReport::vs_baseline`].
    Overlay,
    /// Against no filter: [`CaseReport::vs_no_filter`].
    Filter,
}

/// Sets each case's throughput ratio to its sibling with the `reference`
/// value of the `axis` (the case that differs only there, or whose variant
/// axes are a part of the case's: `filter=none` has no `policy` or `rules`
/// axis of its own), when the run has one; the reference's own cases get
/// none. Against no filter, the new-connection latency's ratio too.
pub fn compare_with(cases: &mut [CaseReport], axis: Versus, reference: &str) {
    let value = |p: &CaseParams| match axis {
        Versus::Overlay => p.overlay.clone(),
        Versus::Filter => p.filter.clone(),
    };
    let sibling_of = |p: &CaseParams| {
        let r = Some(reference.to_string());
        match axis {
            Versus::Overlay => CaseParams { overlay: r, ..p.clone() },
            Versus::Filter => CaseParams { filter: r, ..p.clone() },
        }
    };
    // The same but for variant axes the reference may lack.
    let matches = |reference: &CaseParams, wanted: &CaseParams| {
        let within = reference.variant.iter().all(|(k, v)| wanted.variant.get(k) == Some(v));
        within && CaseParams { variant: wanted.variant.clone(), ..reference.clone() } == *wanted
    };
    let references: Vec<(CaseParams, f64, Option<f64>, Option<PacketCost>)> = cases
        .iter()
        .filter(|c| value(&c.params).as_deref() == Some(reference))
        .map(|c| (c.params.clone(), c.throughput_bps, c.connect.as_ref().map(|l| l.median_us), c.cost))
        .collect();
    for c in cases.iter_mut().filter(|c| value(&c.params).is_some_and(|v| v != reference)) {
        let sibling = sibling_of(&c.params);
        let exact = references.iter().find(|(p, ..)| *p == sibling);
        let Some((_, base, base_connect, base_cost)) =
            exact.or_else(|| references.iter().find(|(p, ..)| matches(p, &sibling)))
        else {
            continue;
        };
        let ratio = (*base > 0.0).then(|| c.throughput_bps / base);
        match axis {
            Versus::Overlay => {
                c.vs_baseline = ratio;
                c.vs_baseline_split = match (&c.cost, base_cost) {
                    (Some(cost), Some(base)) if ratio.is_some() => Some(RatioSplit::of(cost, base)),
                    _ => None,
                };
            }
            Versus::Filter => {
                c.vs_no_filter = ratio;
                c.connect_vs_no_filter = match (&c.connect, base_connect) {
                    (Some(l), Some(b)) if *b > 0.0 && l.median_us > 0.0 => Some(l.median_us / b),
                    _ => None,
                };
            }
        }
    }
}

/// Where `--artifacts DIR` keeps a lab's evidence: DIR itself, or a
/// directory of the lab's name when the run had several labs (a study); then
/// `kernel<K>/` (from 1) when the lab ran with several kernels.
pub fn lab_evidence(
    artifacts: &std::path::Path,
    lab: &str,
    several_labs: bool,
    kernel: Option<usize>,
) -> std::path::PathBuf {
    let dir = if several_labs { artifacts.join(lab) } else { artifacts.to_path_buf() };
    match kernel {
        Some(k) => dir.join(format!("kernel{k}")),
        None => dir,
    }
}

/// Where the evidence of `reports[i]` is under `artifacts` (see [`lab_evidence`]).
pub fn report_evidence(artifacts: &std::path::Path, reports: &[Report], i: usize) -> std::path::PathBuf {
    let lab = &reports[i].lab;
    let kernels = reports.iter().filter(|r| &r.lab == lab).count();
    let kernel = reports[..i].iter().filter(|r| &r.lab == lab).count() + 1;
    lab_evidence(artifacts, lab, several_labs(reports), (kernels > 1).then_some(kernel))
}

/// Where a lab's evidence of round `round` (from 1) goes: its directory for
/// the first round, `repeat-R/` under it for later ones; each case's is the
/// directory of its name under that.
pub fn round_evidence(lab_dir: &std::path::Path, round: u32) -> std::path::PathBuf {
    match round {
        1 => lab_dir.to_path_buf(),
        r => lab_dir.join(format!("repeat-{r}")),
    }
}

/// Whether the reports are of several labs (a study's).
pub fn several_labs(reports: &[Report]) -> bool {
    reports.iter().any(|r| r.lab != reports[0].lab)
}

/// The result of a run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    /// Lab name.
    pub lab: String,
    /// The lab file.
    pub lab_file: String,
    /// Accelerator used.
    pub accel: String,
    /// Why KVM was not used, when it was not.
    pub accel_notice: Option<String>,
    /// How TCG ran each VM's vCPUs (null under KVM).
    pub tcg_thread: Option<crate::qemu::TcgThread>,
    /// Guest kernel release.
    pub kernel: String,
    /// The commit the kernel was built from, as given (`--kernel-commit`;
    /// `ci/bisect-run` gives the tree's).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kernel_commit: Option<String>,
    /// QEMU version.
    pub qemu: String,
    /// Image name and cache key.
    pub image: String,
    /// Overlay variant.
    pub overlay: String,
    /// Filter variant.
    pub filter: String,
    /// The VMs.
    pub vms: Vec<VmReport>,
    /// The cases run (not read back: `vlab rejudge` judges them again).
    #[serde(skip_deserializing)]
    pub cases: Vec<CaseReport>,
    /// Every case passed.
    pub passed: bool,
    /// Readiness of the overlays that have a probe, one per boot.
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub ready: Vec<Readiness>,
    /// How often each case ran (`--repeat`, rounds over every pair).
    #[serde(skip_serializing_if = "is_one", default = "one")]
    pub repeat: u32,
    /// The lab's underlay MTU (a case's `mtu` axis value overrides it);
    /// left out of the JSON at the default, 1500.
    #[serde(skip_serializing_if = "is_default_mtu", default = "default_mtu")]
    pub mtu: u32,
    /// Guest crashes that were the emulator's, not the kernel's, after which
    /// the pair was booted again (see `qemu::stale_int3_oops`).
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub emulator_faults: Vec<String>,
    /// Wall time of the run in seconds.
    pub wall_s: f64,
    /// Where the run's time went (the cases' own breakdown is in each case).
    pub timing: RunTiming,
    /// The variants' own tables for people (see `overlay::Variant::summary`).
    #[serde(skip)]
    pub summaries: Vec<String>,
}

impl Report {
    /// The boots its pairs gave up, each once (every VM of a pair lists them).
    pub fn boot_retries(&self) -> Vec<&BootRetry> {
        let mut seen: Vec<&BootRetry> = Vec::new();
        for r in self.vms.iter().flat_map(|v| &v.boot_retries) {
            if !seen.contains(&r) {
                seen.push(r);
            }
        }
        seen
    }

    /// The phases of the run and of each case, for people (`--timings`).
    pub fn timings_table(&self) -> String {
        let t = &self.timing;
        let mut s = format!("\ntimings (s): image {:.2}, acceleration {:.2}", t.image_s, t.probe_s);
        for (i, b) in t.boots.iter().enumerate() {
            let settle = b.settled.iter().map(|w| w.seconds).fold(0.0, f64::max);
            s.push_str(&format!(
                "; pair {}: boot {:.2}, deploy {:.2} (settling {settle:.2}), warm-up {:.2}, cases {:.2}",
                i + 1,
                b.boot_s,
                b.deploy_s,
                b.warm_up_s,
                b.cases_s
            ));
        }
        s.push_str(&format!("; whole run {:.2}\n", self.wall_s));
        let width = self.cases.iter().map(|c| c.name.len()).max().unwrap_or(4).max(4);
        s.push_str(&format!(
            "{:<width$}  {:>7}  {:>8}  {:>8}  {:>8}  {:>8}  {:>6}  {:>7}  {:>7}  {:>8}\n",
            "case", "setup", "cap.on", "workload", "cap.off", "evidence", "matrix", "verdict", "total", "overhead"
        ));
        for c in &self.cases {
            let k = &c.timing;
            s.push_str(&format!(
                "{:<width$}  {:>7.2}  {:>8.2}  {:>8.2}  {:>8.2}  {:>8.2}  {:>6.2}  {:>7.2}  {:>7.2}  {:>8.2}\n",
                c.name,
                k.setup_s,
                k.captures_start_s,
                k.workload_s,
                k.captures_stop_s,
                k.evidence_s,
                k.matrix_s,
                k.verdict_s,
                k.total_s,
                k.total_s - k.workload_s
            ));
        }
        s
    }
}

/// Items joined by `, `, or `none`: for check details.
pub fn list<T: std::fmt::Display>(items: impl IntoIterator<Item = T>) -> String {
    let v: Vec<String> = items.into_iter().map(|x| x.to_string()).collect();
    if v.is_empty() {
        "none".to_string()
    } else {
        v.join(", ")
    }
}

/// `2.81 Gbit/s`-style rendering.
pub fn fmt_bps(bps: f64) -> String {
    let (scale, decimals, unit) = bps_unit(bps);
    format!("{:.decimals$} {unit}", bps / scale)
}

/// The scale, decimals and unit `bps` is shown in.
fn bps_unit(bps: f64) -> (f64, usize, &'static str) {
    match bps {
        b if b >= 1e9 => (1e9, 2, "Gbit/s"),
        b if b >= 1e6 => (1e6, 1, "Mbit/s"),
        _ => (1e3, 0, "kbit/s"),
    }
}

/// `bps` with an interval in its unit: `2.68 [2.28-3.45] Gbit/s`.
fn fmt_bps_within(bps: f64, low: f64, high: f64) -> String {
    let (scale, d, unit) = bps_unit(bps);
    format!("{:.d$} [{:.d$}-{:.d$}] {unit}", bps / scale, low / scale, high / scale)
}

impl Report {
    /// The accelerator for people: `kvm`, `tcg`, `tcg (one thread per VM)`.
    pub fn accel_text(&self) -> String {
        match self.tcg_thread {
            Some(crate::qemu::TcgThread::Single) => format!("{} (one thread per VM)", self.accel),
            _ => self.accel.clone(),
        }
    }

    /// The human-readable table printed on stdout.
    pub fn table(&self) -> String {
        let commit = self.kernel_commit.as_ref().map(|c| format!(" (commit {c})")).unwrap_or_default();
        let mut s = format!(
            "lab {} ({}), overlay {}, filter {}, kernel {}{commit}, QEMU {}, accel {}\n",
            self.lab,
            self.lab_file,
            self.overlay,
            self.filter,
            self.kernel,
            self.qemu,
            self.accel_text()
        );
        for vm in &self.vms {
            s.push_str(&format!(
                "  vm {:<8} {} {:>5.1} s{}{}  {} vCPU  {} MiB  nic {} channels {} vhost {}\n",
                vm.name,
                match vm.start {
                    Start::Cold => "boot   ",
                    Start::Restored => "restore",
                },
                vm.boot_s,
                if vm.boot_attempts > 1 { format!(" (attempt {})", vm.boot_attempts) } else { String::new() },
                vm.saved_s.map(|s| format!(" (+{s:.1} s saving its state)")).unwrap_or_default(),
                vm.cpus,
                vm.memory_mib,
                vm.nic,
                vm.channels.map_or("?".into(), |c| c.to_string()),
                if vm.vhost { "on" } else { "off" }
            ));
        }
        for retry in self.boot_retries() {
            s.push_str(&format!("  booted again after boot {} ({}): {}\n", retry.attempt, retry.fault, retry.reason));
        }
        for fault in &self.emulator_faults {
            s.push_str(&format!("  booted again: {fault}\n"));
        }
        let width = self.cases.iter().map(|c| c.name.len()).max().unwrap_or(4).max(4);
        let throughputs: Vec<String> = self.cases.iter().map(CaseReport::throughput_text).collect();
        let tp = throughputs.iter().map(String::len).max().unwrap_or(0).max(13);
        let columns: Vec<(&str, Vec<Option<String>>, usize)> = OPTIONAL_COLUMNS
            .into_iter()
            .filter(|(h, _)| *h != SPLIT_HEADING)
            .map(|(h, f)| (h, self.cases.iter().map(f).collect::<Vec<_>>()))
            .filter(|(_, v)| v.iter().any(Option::is_some))
            .map(|(h, v)| {
                let w = v.iter().flatten().map(|t| t.chars().count()).chain([h.len()]).max().unwrap_or(0);
                (h, v, w)
            })
            .collect();
        let extra = |row: Option<usize>| -> String {
            columns
                .iter()
                .map(|(h, v, w)| {
                    let cell = row.map_or(h.to_string(), |i| v[i].clone().unwrap_or_else(|| "-".into()));
                    format!("{cell:>w$}  ")
                })
                .collect()
        };
        s.push_str(&format!(
            "\n{:<width$}  {:>tp$}  {}{:>7}  {:>9}  result\n",
            "case",
            "throughput",
            extra(None),
            "retrans",
            "cpu c/s %"
        ));
        for (i, (c, throughput)) in self.cases.iter().zip(throughputs).enumerate() {
            let cells = extra(Some(i));
            s.push_str(&format!(
                "{:<width$}  {:>tp$}  {cells}{:>7}  {:>4.0}/{:<4.0}  {}\n",
                c.name,
                throughput,
                c.retransmits.map_or("-".into(), |r| r.to_string()),
                c.cpu_client_percent,
                c.cpu_server_percent,
                c.result_text()
            ));
            if let Some(split) = &c.vs_baseline_split {
                s.push_str(&format!("    vs baseline: {}\n", split.text()));
            }
            for k in c.checks.iter().filter(|k| !k.passed || k.not_judged) {
                s.push_str(&format!("    {}: {}\n", k.name, k.detail));
            }
            for (n, r) in c.repetitions.iter().enumerate().skip(1).filter(|(_, r)| !r.passed) {
                s.push_str(&format!("    repetition {} failed: {}\n", n + 1, r.failed_checks.join(", ")));
            }
            for i in &c.interfaces {
                let refused = i.refused();
                if !refused.is_empty() {
                    let at = i.container.as_ref().map_or(i.vm.clone(), |c| format!("{}/{c}", i.vm));
                    s.push_str(&format!("    {at} {}: driver kept {}\n", i.dev, refused.join(" ")));
                }
            }
        }
        for r in &self.ready {
            match r.seconds {
                Some(t) => s.push_str(&format!("\n{} ready {t:.1} s after its deploy ({})\n", r.overlay, r.what)),
                None => s.push_str(&format!("\n{} never ready ({})\n", r.overlay, r.what)),
            }
        }
        for summary in &self.summaries {
            s.push_str(summary);
        }
        let passed = self.cases.iter().filter(|c| c.passed).count();
        s.push_str(&format!("\n{} passed, {} failed ({:.1} s)\n", passed, self.cases.len() - passed, self.wall_s));
        s
    }
}

impl Report {
    /// The run as Markdown, for CI job summaries: a line on what ran where,
    /// one table row per case (throughput, ratios, result) and the checks
    /// that failed.
    pub fn markdown(&self) -> String {
        let passed = self.cases.iter().filter(|c| c.passed).count();
        let mut s = format!(
            "## vlab lab `{}`: {passed} of {} cases passed\n\nkernel {}, QEMU {}, accel {}{}, {:.0} s\n\n",
            self.lab,
            self.cases.len(),
            self.kernel,
            self.qemu,
            self.accel_text(),
            if self.repeat > 1 {
                format!(", {} repetitions (median [95 % interval])", self.repeat)
            } else {
                String::new()
            },
            self.wall_s
        );
        s.push_str("| case | throughput | result |\n| --- | --- | --- |\n");
        for c in &self.cases {
            let unjudged = c.unjudged_checks();
            let result = match (c.passed, unjudged.is_empty()) {
                (false, _) => "**FAIL**".to_string(),
                (true, true) => "pass".to_string(),
                (true, false) => format!("pass, not judged: {}", unjudged.join(", ")),
            };
            s.push_str(&format!("| `{}` | {} | {result} |\n", c.name, c.throughput_text()));
        }
        let failed: Vec<&CaseReport> = self.cases.iter().filter(|c| !c.passed).collect();
        if !failed.is_empty() {
            s.push_str("\nFailed checks:\n\n");
            for c in failed {
                let mut names: Vec<String> = c.failed_checks().into_iter().map(String::from).collect();
                for (n, r) in c.repetitions.iter().enumerate().skip(1).filter(|(_, r)| !r.passed) {
                    names.push(format!("repetition {}: {}", n + 1, r.failed_checks.join(", ")));
                }
                s.push_str(&format!("- `{}`: {}\n", c.name, names.join("; ")));
            }
        }
        for retry in self.boot_retries() {
            s.push_str(&format!("\nBooted again after boot {} ({}): {}\n", retry.attempt, retry.fault, retry.reason));
        }
        for fault in &self.emulator_faults {
            s.push_str(&format!("\nBooted again: {fault}\n"));
        }
        s
    }
}

fn default_mtu() -> u32 {
    crate::lab::DEFAULT_MTU
}

fn is_default_mtu(mtu: &u32) -> bool {
    *mtu == crate::lab::DEFAULT_MTU
}

fn one() -> u32 {
    1
}

fn is_one(n: &u32) -> bool {
    *n == 1
}
