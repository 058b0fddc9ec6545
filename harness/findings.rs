//! A study's outcome: every case set against the study's baseline lab, and
//! the study's claims (its `[[finding]]`s) judged from the run.
//!
//! Ratios are paired by round: the labs' pairs took turns in every round, so
//! a case's sample of round r is divided by the baseline's sample of round r
//! and the quotients are summarised on the log scale (see [`crate::stats`]).
//! A claim holds only on evidence that supports it at 95 %; where the
//! evidence cannot tell (one repetition, an interval that straddles the
//! claim's bound, a case that did not run), the finding is inconclusive,
//! never passed.

use serde::{Deserialize, Serialize};

use crate::report::{fmt_bps, Report};
use crate::stats::{self, Interval, Pooled, Summary};
use crate::study::{Block, CaseRef, Claim, Finding};

/// What the run says of a claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    Holds,
    DoesNotHold,
    /// The evidence can support neither.
    Inconclusive,
}

impl Verdict {
    pub fn describe(self) -> &'static str {
        match self {
            Verdict::Holds => "holds",
            Verdict::DoesNotHold => "DOES NOT HOLD",
            Verdict::Inconclusive => "inconclusive",
        }
    }

    /// The verdict of several steps: one that does not hold decides, then
    /// one that cannot tell.
    fn all(steps: impl IntoIterator<Item = Verdict>) -> Verdict {
        steps.into_iter().fold(Verdict::Holds, |acc, v| match (acc, v) {
            (Verdict::DoesNotHold, _) | (_, Verdict::DoesNotHold) => Verdict::DoesNotHold,
            (Verdict::Inconclusive, _) | (_, Verdict::Inconclusive) => Verdict::Inconclusive,
            _ => Verdict::Holds,
        })
    }
}

/// A judged finding: its claim, the verdict and the evidence, a line per case
/// or step.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FindingOutcome {
    #[serde(flatten)]
    pub finding: Finding,
    pub verdict: Verdict,
    pub evidence: Vec<String>,
    /// The ratios the claim was judged on, with its bound (a forest plot's
    /// rows).
    #[serde(default)]
    pub ratios: Vec<ClaimRatio>,
}

/// A ratio a claim is judged on, and the claim's bound.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClaimRatio {
    /// `CASE over OF`, or `CASE's new connections over OF's`.
    pub label: String,
    pub mean: f64,
    pub interval: Option<Interval>,
    /// The bound the claim sets (1 in an order).
    pub bound: f64,
    /// Of a merged study: each block's ratio.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub blocks: Vec<BlockRatio>,
}

/// One block's ratio, in a merged study.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BlockRatio {
    pub block: String,
    pub mean: f64,
    pub interval: Option<Interval>,
}

/// A case against the study's baseline.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VsBaseline {
    pub case: CaseRef,
    /// The baseline lab's case with as many streams and the same underlay
    /// MTU (a case at an MTU the baseline lab did not run has no ratio).
    pub against: CaseRef,
    /// The ratio of each round, their geometric mean and its interval;
    /// `None` when a round delivered nothing.
    pub ratio: Option<Summary>,
}

/// The study's outcome for one kernel.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StudyOutcome {
    pub study: String,
    pub kernel: String,
    pub repeat: u32,
    /// The lab the others are set against.
    pub baseline: String,
    pub vs_baseline: Vec<VsBaseline>,
    pub findings: Vec<FindingOutcome>,
    /// The study's files' hash ([`crate::study::Study::sha256`]): `vlab
    /// merge` takes only reports of the same study.
    #[serde(default)]
    pub sha256: String,
    /// The run's own id: the same run is not merged twice.
    #[serde(default)]
    pub run: String,
    /// `vlab run --block NAME`: the block, and the machine it ran on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub block: Option<Block>,
    /// What the findings read: each case's samples, round by round.
    #[serde(default)]
    pub measured: Vec<Measured>,
}

/// A run's reports (lab by lab, `kernels` per lab in kernel order) as one
/// list of reports per kernel.
pub fn per_kernel(reports: &[Report], kernels: usize) -> Vec<Vec<&Report>> {
    let k = kernels.max(1);
    (0..k).map(|i| reports.iter().skip(i).step_by(k).collect()).collect()
}

/// What the findings read of a case: its samples in round order and its
/// checks' outcome.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Measured {
    pub case: CaseRef,
    pub streams: u32,
    /// The underlay MTU it ran with.
    pub mtu: u32,
    /// Throughput, bit/s, one per round.
    pub samples: Vec<f64>,
    /// Median new-connection latency, µs, one per round (empty without
    /// `[workload] connects`).
    pub connects: Vec<f64>,
    /// The names of the checks that failed, in any repetition.
    pub failed_checks: Vec<String>,
}

impl Measured {
    /// A report's cases.
    pub fn of(report: &Report) -> Vec<Measured> {
        report
            .cases
            .iter()
            .map(|c| {
                let mut failed: Vec<String> = c.failed_checks().into_iter().map(String::from).collect();
                for name in c.repetitions.iter().flat_map(|r| &r.failed_checks) {
                    if !failed.contains(name) {
                        failed.push(name.clone());
                    }
                }
                Measured {
                    case: CaseRef { lab: report.lab.clone(), case: c.name.clone() },
                    streams: c.params.streams,
                    mtu: c.params.mtu.unwrap_or(report.mtu),
                    samples: c.samples(),
                    connects: c
                        .connect_summary
                        .as_ref()
                        .map(|s| s.samples.clone())
                        .or_else(|| c.connect.as_ref().map(|l| vec![l.median_us]))
                        .unwrap_or_default(),
                    failed_checks: failed,
                }
            })
            .collect()
    }
}

fn find<'a>(cases: &'a [Measured], r: &CaseRef) -> Option<&'a Measured> {
    cases.iter().find(|m| m.case == *r)
}

/// Judges the study `name` on the reports of one kernel.
pub fn evaluate(name: &str, baseline: &str, findings: &[Finding], reports: &[&Report]) -> StudyOutcome {
    let cases: Vec<Measured> = reports.iter().flat_map(|r| Measured::of(r)).collect();
    let kernel = reports.first().map(|r| r.kernel.clone()).unwrap_or_default();
    let repeat = reports.first().map_or(1, |r| r.repeat);
    judge(name, baseline, findings, &cases, &kernel, repeat)
}

/// [`evaluate`] on the cases' measurements.
pub fn judge(
    name: &str,
    baseline: &str,
    findings: &[Finding],
    cases: &[Measured],
    kernel: &str,
    repeat: u32,
) -> StudyOutcome {
    let mut vs_baseline = Vec::new();
    for (c, b) in baseline_pairs(cases, baseline) {
        vs_baseline.push(VsBaseline {
            case: c.case.clone(),
            against: b.case.clone(),
            ratio: stats::paired_ratio(&c.samples, &b.samples),
        });
    }
    StudyOutcome {
        study: name.to_string(),
        kernel: kernel.to_string(),
        repeat,
        baseline: baseline.to_string(),
        vs_baseline,
        findings: judge_findings(findings, cases),
        sha256: String::new(),
        run: String::new(),
        block: None,
        measured: cases.to_vec(),
    }
}

/// Each case outside the baseline lab with the baseline's case it is set
/// against: as many streams, the same underlay MTU (a case at an MTU the
/// baseline lab did not run has none).
pub fn baseline_pairs<'a>(cases: &'a [Measured], baseline: &str) -> Vec<(&'a Measured, &'a Measured)> {
    cases
        .iter()
        .filter(|c| c.case.lab != baseline)
        .filter_map(|c| {
            let b = cases.iter().find(|b| b.case.lab == baseline && b.streams == c.streams && b.mtu == c.mtu)?;
            Some((c, b))
        })
        .collect()
}

/// What a claim reads: each case's delivery, and the ratio of two cases
/// (one run's rounds, or the pooled blocks of several runs).
pub trait Evidence {
    /// Whether `case` moved data in each round: (rounds that did, rounds,
    /// the throughput in words, its failed checks); `None` when it did not
    /// run.
    fn delivery(&self, case: &CaseRef) -> Option<(usize, usize, String, Vec<String>)>;
    /// The ratio of `case` to `of` (their median new-connection latencies
    /// when `latency`), paired by round; the verdict and why when there is
    /// none to judge.
    fn ratio(&self, case: &CaseRef, of: &CaseRef, latency: bool) -> Result<RatioEstimate, (Verdict, String)>;
}

/// A ratio as a claim judges it.
#[derive(Debug, Clone, PartialEq)]
pub struct RatioEstimate {
    pub mean: f64,
    pub interval: Option<Interval>,
    /// The estimate in words: `0.84x [0.70, 1.01] over 3 rounds`.
    pub text: String,
    /// Of pooled blocks: each block's ratio, and the pooled model.
    pub blocks: Vec<BlockRatio>,
    pub pooled: Option<Pooled>,
}

impl RatioEstimate {
    /// Of one run's rounds.
    fn of_rounds(s: &Summary) -> RatioEstimate {
        RatioEstimate { mean: s.mean, interval: s.interval, text: ratio_text(s), blocks: Vec::new(), pooled: None }
    }

    fn row(&self, label: String, bound: f64) -> ClaimRatio {
        ClaimRatio { label, mean: self.mean, interval: self.interval, bound, blocks: self.blocks.clone() }
    }

    /// What more a pooled estimate says of a verdict: the verdict the block
    /// means alone give where it differs, and, where the interval holds
    /// `bound`, how many blocks would decide it. `decide` is the claim's
    /// verdict on an interval.
    fn notes(&self, verdict: Verdict, bound: f64, decide: impl Fn(Option<Interval>) -> Verdict) -> String {
        let Some(p) = self.pooled else { return String::new() };
        let mut s = String::new();
        let other = decide(p.block_means.interval);
        if other != verdict {
            s.push_str(&format!("; the block means alone: {}", other.describe()));
        }
        if verdict == Verdict::Inconclusive {
            s.push_str(&match p.blocks_to_decide(bound) {
                Some(b) => format!("; about {b} blocks like these (now {}) would decide it at this spread", p.blocks),
                None => {
                    "; the pooled ratio sits on the bound: over 1000 blocks like these would not decide it".to_string()
                }
            });
        }
        s
    }
}

impl Evidence for [Measured] {
    fn delivery(&self, case: &CaseRef) -> Option<(usize, usize, String, Vec<String>)> {
        let c = find(self, case)?;
        let moved = c.samples.iter().filter(|x| **x > 0.0).count();
        Some((
            moved,
            c.samples.len(),
            format!("median {}", fmt_bps(stats::median(&c.samples))),
            c.failed_checks.clone(),
        ))
    }

    fn ratio(&self, case: &CaseRef, of: &CaseRef, latency: bool) -> Result<RatioEstimate, (Verdict, String)> {
        let s = round_ratios(self, case, of, latency)?;
        stats::summarize(&s)
            .map(|s| RatioEstimate::of_rounds(&s))
            .ok_or_else(|| (Verdict::Inconclusive, format!("{case} against {of}: no pairs")))
    }
}

/// The ratio of `case` to `of` of each round (of their median
/// new-connection latencies when `latency`); the verdict and why when there
/// are none to judge.
pub fn round_ratios(
    cases: &[Measured],
    case: &CaseRef,
    of: &CaseRef,
    latency: bool,
) -> Result<Vec<f64>, (Verdict, String)> {
    let (Some(c), Some(o)) = (find(cases, case), find(cases, of)) else {
        return Err((Verdict::Inconclusive, format!("{case} against {of}: not run")));
    };
    let (cs, os) = if latency {
        if c.connects.is_empty() || o.connects.is_empty() {
            return Err((
                Verdict::Inconclusive,
                format!("{case} against {of}: no new connections timed (`[workload] connects`)"),
            ));
        }
        (&c.connects, &o.connects)
    } else {
        (&c.samples, &o.samples)
    };
    if !latency && os.iter().any(|x| *x <= 0.0) {
        return Err((Verdict::Inconclusive, format!("{of} delivered nothing in a repetition")));
    }
    if !latency && cs.iter().any(|x| *x <= 0.0) {
        return Err((Verdict::DoesNotHold, format!("{case} delivered nothing in a repetition")));
    }
    if cs.len() != os.len() || cs.is_empty() {
        return Err((Verdict::Inconclusive, format!("{case} against {of}: no pairs")));
    }
    Ok(cs.iter().zip(os).map(|(x, y)| x / y).collect())
}

/// Judges `findings` on `evidence`.
pub fn judge_findings(findings: &[Finding], evidence: &(impl Evidence + ?Sized)) -> Vec<FindingOutcome> {
    findings
        .iter()
        .map(|f| {
            let (verdict, evidence, ratios) = match &f.kind {
                Claim::Delivers { cases: refs } => {
                    let (v, lines) = delivers(evidence, refs);
                    (v, lines, Vec::new())
                }
                Claim::Keeps { case, of, at_least } => {
                    let (v, line, row) = keeps(evidence, case, of, *at_least);
                    (v, vec![line], row.into_iter().collect())
                }
                Claim::Order { tiers } => order(evidence, tiers),
                Claim::Waits { case, of, at_most, at_least } => {
                    let (v, line, row) = waits(evidence, case, of, (*at_most, *at_least));
                    (v, vec![line], row.into_iter().collect())
                }
            };
            FindingOutcome { finding: f.clone(), verdict, evidence, ratios }
        })
        .collect()
}

/// Every case moved data in every repetition.
fn delivers(evidence: &(impl Evidence + ?Sized), refs: &[CaseRef]) -> (Verdict, Vec<String>) {
    let mut steps = Vec::new();
    let mut lines = Vec::new();
    for r in refs {
        let Some((moved, rounds, throughput, failed)) = evidence.delivery(r) else {
            steps.push(Verdict::Inconclusive);
            lines.push(format!("{r}: not run"));
            continue;
        };
        steps.push(if moved == rounds { Verdict::Holds } else { Verdict::DoesNotHold });
        let checks = match &failed[..] {
            [] => "its checks passed".to_string(),
            failed => format!("failed: {}", failed.join(", ")),
        };
        lines.push(format!("{r}: delivered in {moved} of {rounds} repetitions, {throughput}; {checks}"));
    }
    (Verdict::all(steps), lines)
}

/// `0.84x [0.70, 1.01] over 3 rounds`.
fn ratio_text(s: &Summary) -> String {
    match s.interval {
        Some(i) => format!("{:.2}x [{:.2}, {:.2}] over {} rounds", s.mean, i.low, i.high, s.samples.len()),
        None => format!("{:.2}x from one round, no interval (run with --repeat 3 or more)", s.mean),
    }
}

/// `case` keeps at least `at_least` of `of`: holds when the whole interval
/// is at or above the bound, does not hold when it is wholly below.
fn keeps(
    evidence: &(impl Evidence + ?Sized),
    case: &CaseRef,
    of: &CaseRef,
    at_least: f64,
) -> (Verdict, String, Option<ClaimRatio>) {
    let r = match evidence.ratio(case, of, false) {
        Ok(r) => r,
        Err((v, line)) => return (v, line, None),
    };
    let decide = |interval: Option<Interval>| match interval {
        Some(i) if i.low >= at_least => Verdict::Holds,
        Some(i) if i.high < at_least => Verdict::DoesNotHold,
        _ => Verdict::Inconclusive,
    };
    let verdict = decide(r.interval);
    let more = r.notes(verdict, at_least, decide);
    let line = format!("{case} over {of}: {} (the claim: at least {at_least:.2}x){more}", r.text);
    (verdict, line, Some(r.row(format!("{case} over {of}"), at_least)))
}

/// `case`'s new connections wait at most `at_most` (at least `at_least`)
/// times as long as `of`'s: holds when the whole interval of the ratio of
/// their median latencies is within the bound, does not hold when it is
/// wholly beyond it.
fn waits(
    evidence: &(impl Evidence + ?Sized),
    case: &CaseRef,
    of: &CaseRef,
    (at_most, at_least): (Option<f64>, Option<f64>),
) -> (Verdict, String, Option<ClaimRatio>) {
    let r = match evidence.ratio(case, of, true) {
        Ok(r) => r,
        Err((v, line)) => return (v, line, None),
    };
    let decide = |interval: Option<Interval>| match (interval, at_most, at_least) {
        (Some(i), Some(m), _) if i.high <= m => Verdict::Holds,
        (Some(i), Some(m), _) if i.low > m => Verdict::DoesNotHold,
        (_, Some(_), _) => Verdict::Inconclusive,
        (Some(i), None, Some(l)) if i.low >= l => Verdict::Holds,
        (Some(i), None, Some(l)) if i.high < l => Verdict::DoesNotHold,
        (_, None, _) => Verdict::Inconclusive,
    };
    let (bound, words) = match (at_most, at_least) {
        (Some(m), _) => (m, format!("at most {m:.2}x")),
        (None, l) => (l.unwrap_or(0.0), format!("at least {:.2}x", l.unwrap_or(0.0))),
    };
    let verdict = decide(r.interval);
    let more = r.notes(verdict, bound, decide);
    let line = format!("{case}'s new connections over {of}'s: {} (the claim: {words}){more}", r.text);
    (verdict, line, Some(r.row(format!("{case}'s new connections over {of}'s"), bound)))
}

/// Every case of a tier slower than every case of the tier above: each
/// step holds when its ratio's interval lies below 1, does not hold when it
/// lies above.
fn order(evidence: &(impl Evidence + ?Sized), tiers: &[Vec<CaseRef>]) -> (Verdict, Vec<String>, Vec<ClaimRatio>) {
    let mut steps = Vec::new();
    let mut lines = Vec::new();
    let mut rows = Vec::new();
    for pair in tiers.windows(2) {
        for upper in &pair[0] {
            for lower in &pair[1] {
                let (verdict, line) = match evidence.ratio(lower, upper, false) {
                    // A datapath that moved nothing is out of any order.
                    Err((_, line)) => (Verdict::Inconclusive, line),
                    Ok(r) => {
                        let decide = |interval: Option<Interval>| match interval {
                            Some(i) if i.high < 1.0 => Verdict::Holds,
                            Some(i) if i.low > 1.0 => Verdict::DoesNotHold,
                            _ => Verdict::Inconclusive,
                        };
                        let verdict = decide(r.interval);
                        let more = r.notes(verdict, 1.0, decide);
                        rows.push(r.row(format!("{lower} over {upper}"), 1.0));
                        (verdict, format!("{lower} over {upper}: {}{more}", r.text))
                    }
                };
                steps.push(verdict);
                lines.push(line);
            }
        }
    }
    (Verdict::all(steps), lines, rows)
}

/// `claim ... holds` lines and their evidence, indented.
fn findings_text(outcome: &StudyOutcome, bullet: &str, quote: fn(&str) -> String) -> String {
    let mut s = String::new();
    for f in &outcome.findings {
        s.push_str(&format!("{bullet}{}: {}\n", f.verdict.describe(), f.finding.claim));
        for line in &f.evidence {
            s.push_str(&format!("    {bullet}{}\n", quote(line)));
        }
    }
    s
}

fn plain(s: &str) -> String {
    s.to_string()
}

fn ratio_cell(s: &Option<Summary>) -> String {
    match s {
        Some(s) => match s.interval {
            Some(i) => format!("{:.2}x [{:.2}, {:.2}]", s.mean, i.low, i.high),
            None => format!("{:.2}x", s.mean),
        },
        None => "-".to_string(),
    }
}

impl StudyOutcome {
    /// Some finding does not hold.
    pub fn failed(&self) -> bool {
        self.findings.iter().any(|f| f.verdict == Verdict::DoesNotHold)
    }

    /// For the terminal: each case's ratio to the baseline, then the findings.
    pub fn table(&self) -> String {
        let mut s = format!(
            "study {} (kernel {}): each case over the baseline lab `{}` (its case with as many streams and the same MTU), paired by round\n\n",
            self.study, self.kernel, self.baseline
        );
        let width = self.vs_baseline.iter().map(|v| v.case.to_string().len()).max().unwrap_or(4).max(4);
        if self.vs_baseline.is_empty() {
            s.push_str("the study runs its baseline lab only: no case to compare with it\n");
        } else {
            s.push_str(&format!("{:<width$}  {:>22}  against\n", "case", "ratio [95 % interval]"));
        }
        for v in &self.vs_baseline {
            s.push_str(&format!("{:<width$}  {:>22}  {}\n", v.case.to_string(), ratio_cell(&v.ratio), v.against.case));
        }
        if !self.findings.is_empty() {
            s.push_str("\nfindings\n");
            s.push_str(&findings_text(self, "", plain));
        }
        s
    }

    /// For CI summaries.
    pub fn markdown(&self) -> String {
        let mut s =
            format!("## vlab study `{}` (kernel {}): each case over `{}`\n\n", self.study, self.kernel, self.baseline);
        if self.vs_baseline.is_empty() {
            s.push_str("The study runs its baseline lab only: no case to compare with it.\n");
        } else {
            s.push_str("| case | ratio [95 % interval] | against |\n| --- | --- | --- |\n");
        }
        for v in &self.vs_baseline {
            s.push_str(&format!("| `{}` | {} | `{}` |\n", v.case, ratio_cell(&v.ratio), v.against.case));
        }
        if !self.findings.is_empty() {
            s.push_str("\n### Findings\n\n");
            s.push_str(&findings_text(self, "- ", |l| format!("`{l}`")));
        }
        s
    }

    /// The ratio of `lab`'s `case` to the baseline, as a cell (`-` for the
    /// baseline's own cases).
    pub fn ratio_text(&self, lab: &str, case: &str) -> String {
        let v = self.vs_baseline.iter().find(|v| v.case.lab == lab && v.case.case == case);
        v.map_or_else(|| "-".to_string(), |v| ratio_cell(&v.ratio))
    }
}
