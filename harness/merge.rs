//! `vlab merge A.json B.json ...`: the reports of one study run on several
//! machines (`vlab run STUDY --block NAME` on each), as one study.
//!
//! Throughput is not comparable across machines, but a ratio taken within a
//! round on one machine is: each machine is a block, and each case's paired
//! ratios (to its baseline case, one case to another in a claim, a later
//! kernel over the first) pool over the rounds of every block with the
//! block as a random effect ([`crate::stats::pool_blocks`], which also gives
//! the plainer per-block geometric means). Findings are judged on the pooled
//! ratios. Absolute throughputs stay per block and are never pooled.
//!
//! Reports that ran another study file (its hash, lab files included),
//! other cases or kernels, a block twice, or one run twice are refused.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::findings::{self, BlockRatio, Evidence, FindingOutcome, Measured, RatioEstimate, StudyOutcome, Verdict};
use crate::stats::{self, Interval, Pooled};
use crate::study::{CaseRef, Machine};

/// Whether `name` can name a block: 1 to 64 letters, digits, `.`, `_`, `-`.
pub fn check_block_name(name: &str) -> Result<(), String> {
    let ok = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    if name.is_empty() || name.len() > 64 || !name.chars().all(ok) {
        return Err("name a block with 1 to 64 letters, digits, `.`, `_` or `-` (runner-1)".into());
    }
    Ok(())
}

/// A run's own id: the clock, the process and the host, hashed.
pub fn run_id() -> String {
    use sha2::{Digest, Sha256};
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let host = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap_or_default();
    let seed = format!("{}.{} {} {host}", now.as_secs(), now.subsec_nanos(), std::process::id());
    hex::encode(&Sha256::digest(seed.as_bytes())[..8])
}

/// Why reports cannot be merged (exit 128).
#[derive(Debug, thiserror::Error)]
pub enum MergeError {
    #[error("cannot read {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("{path} is not a study's report (`vlab run STUDY --block NAME --json FILE`): {message}")]
    NotAStudy { path: String, message: String },
    #[error("cannot merge: {0}")]
    Mismatch(String),
}

/// What merge reads of a report.
#[derive(Debug, Deserialize)]
struct StudyFile {
    studies: Vec<StudyOutcome>,
}

/// One report to merge: a block's outcome per kernel.
#[derive(Debug, Clone)]
pub struct Input {
    pub path: PathBuf,
    pub outcomes: Vec<StudyOutcome>,
}

/// Reads a study's report (`vlab run STUDY --block NAME --json FILE`).
pub fn read(path: &Path) -> Result<Input, MergeError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| MergeError::Read { path: shown.clone(), source })?;
    let not = |message: String| MergeError::NotAStudy { path: shown.clone(), message };
    let file: StudyFile = serde_json::from_str(&text).map_err(|e| not(e.to_string()))?;
    let Some(first) = file.studies.first() else {
        return Err(not("it holds no study: a lab's report has no blocks to pool".into()));
    };
    if first.block.is_none() {
        return Err(not("it ran without --block: name each machine's run (--block runner-1)".into()));
    }
    if first.sha256.is_empty() || first.measured.is_empty() {
        return Err(not("it holds no measurements to pool (a report of an older vlab?)".into()));
    }
    Ok(Input { path: path.to_path_buf(), outcomes: file.studies })
}

/// A block of the merged study.
#[derive(Debug, Clone, Serialize)]
pub struct BlockInfo {
    pub name: String,
    pub machine: Machine,
    /// The report it came from.
    pub file: String,
    pub run: String,
    pub repeat: u32,
}

/// A case's ratio to another, per block and pooled.
#[derive(Debug, Clone, Serialize)]
pub struct PooledCase {
    pub case: CaseRef,
    pub against: CaseRef,
    pub blocks: Vec<BlockRatio>,
    /// `None` when a round of some block delivered nothing.
    pub pooled: Option<Pooled>,
}

/// A case's throughput on each block (never pooled).
#[derive(Debug, Clone, Serialize)]
pub struct BlockThroughput {
    pub case: CaseRef,
    /// Per block: its name, and the median of its rounds, bit/s.
    pub blocks: Vec<(String, f64)>,
}

/// The merged study on one kernel.
#[derive(Debug, Clone, Serialize)]
pub struct MergedKernel {
    pub kernel: String,
    pub vs_baseline: Vec<PooledCase>,
    pub findings: Vec<FindingOutcome>,
    pub throughput: Vec<BlockThroughput>,
}

/// A later kernel over the first, case by case, pooled.
#[derive(Debug, Clone, Serialize)]
pub struct KernelRatio {
    pub kernel: String,
    pub against: String,
    pub cases: Vec<PooledCase>,
}

/// The model the pooled intervals come from, in words.
pub const MODEL: &str = "log ratio = mu + block + round (one-way random effects, ANOVA estimates; a block's \
    rounds weighted as one block's worth when the blocks differ, every round a sample when they do not); \
    also each block's geometric mean as one sample (t, blocks - 1 df)";

/// Several blocks' reports of one study, as one.
#[derive(Debug, Clone, Serialize)]
pub struct Merged {
    pub study: String,
    pub sha256: String,
    pub baseline: String,
    pub model: &'static str,
    pub blocks: Vec<BlockInfo>,
    pub kernels: Vec<MergedKernel>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub kernel_ratios: Vec<KernelRatio>,
}

/// The cases of an outcome, as a set of names.
fn case_set(o: &StudyOutcome) -> BTreeSet<String> {
    o.measured.iter().map(|m| m.case.to_string()).collect()
}

/// Checks that `inputs` are blocks of one study: the same study files,
/// kernels and cases, each block and each run once.
fn check(inputs: &[Input]) -> Result<(), MergeError> {
    let mismatch = |s: String| Err(MergeError::Mismatch(s));
    if inputs.len() < 2 {
        return mismatch("merge needs the reports of two blocks or more".into());
    }
    let first = &inputs[0];
    let (a, f0) = (first.path.display(), &first.outcomes[0]);
    for (i, input) in inputs.iter().enumerate().skip(1) {
        let (b, o) = (input.path.display(), &input.outcomes[0]);
        if let Some(earlier) = inputs[..i].iter().find(|e| e.outcomes[0].run == o.run) {
            return mismatch(format!(
                "{b} is the same run as {} (run {}): a run merged with itself pools nothing new",
                earlier.path.display(),
                o.run
            ));
        }
        let name = |x: &StudyOutcome| x.block.as_ref().map(|b| b.name.clone()).unwrap_or_default();
        if let Some(earlier) = inputs[..i].iter().find(|e| name(&e.outcomes[0]) == name(o)) {
            return mismatch(format!(
                "block `{}` is both {} and {b}: each block once (vlab run --block NAME, a name per machine)",
                name(o),
                earlier.path.display()
            ));
        }
        if o.study != f0.study || o.sha256 != f0.sha256 {
            return mismatch(format!(
                "{b} ran study `{}` from other files than {a} ran study `{}` (sha256 {} against {}): the study \
                 file and its lab files must be the same",
                o.study,
                f0.study,
                &o.sha256[..o.sha256.len().min(12)],
                &f0.sha256[..f0.sha256.len().min(12)]
            ));
        }
        let kernels = |x: &Input| x.outcomes.iter().map(|o| o.kernel.clone()).collect::<Vec<_>>();
        if kernels(input) != kernels(first) {
            return mismatch(format!(
                "{b} ran kernels [{}], {a} ran [{}]",
                kernels(input).join(", "),
                kernels(first).join(", ")
            ));
        }
        for (ok, fk) in input.outcomes.iter().zip(&first.outcomes) {
            let (ca, cb) = (case_set(fk), case_set(ok));
            if ca != cb {
                let only = |x: &BTreeSet<String>, y: &BTreeSet<String>| {
                    x.difference(y).cloned().collect::<Vec<_>>().join(", ")
                };
                return mismatch(format!(
                    "{b} ran other cases than {a} (kernel {}): only in {a}: [{}]; only in {b}: [{}]",
                    ok.kernel,
                    only(&ca, &cb),
                    only(&cb, &ca)
                ));
            }
        }
    }
    Ok(())
}

/// The blocks of one kernel, as the findings read them.
struct Blocks<'a> {
    blocks: Vec<(&'a str, &'a [Measured])>,
}

/// `0.84x [0.70, 1.01]`, `0.84x` without an interval, `-` without a ratio.
pub fn ratio_cell(mean: f64, interval: Option<Interval>) -> String {
    match interval {
        Some(i) => format!("{mean:.2}x [{:.2}, {:.2}]", i.low, i.high),
        None if mean.is_finite() => format!("{mean:.2}x"),
        None => "-".to_string(),
    }
}

/// Per block: the ratio of its rounds.
fn block_ratio(block: &str, ratios: &[f64]) -> BlockRatio {
    let s = stats::summarize(ratios);
    BlockRatio {
        block: block.to_string(),
        mean: s.as_ref().map_or(f64::NAN, |s| s.mean),
        interval: s.and_then(|s| s.interval),
    }
}

/// `0.96x [0.84, 1.10] pooled over 3 blocks and 9 rounds (mixed model, 8
/// df; block means 0.95x [0.70, 1.29])`.
pub fn pooled_text(p: &Pooled) -> String {
    format!(
        "{} pooled over {} blocks and {} rounds (mixed model, {:.0} df; block means {})",
        ratio_cell(p.mixed.mean, p.mixed.interval),
        p.blocks,
        p.rounds,
        p.mixed.df,
        ratio_cell(p.block_means.mean, p.block_means.interval)
    )
}

impl Evidence for Blocks<'_> {
    fn delivery(&self, case: &CaseRef) -> Option<(usize, usize, String, Vec<String>)> {
        let (mut moved, mut rounds, mut medians, mut failed) = (0, 0, Vec::new(), Vec::<String>::new());
        for (name, cases) in &self.blocks {
            let (m, n, median, f) = cases.delivery(case)?;
            moved += m;
            rounds += n;
            medians.push(format!("{name} {median}"));
            for x in f {
                if !failed.contains(&x) {
                    failed.push(x);
                }
            }
        }
        Some((moved, rounds, format!("by block: {}", medians.join(", ")), failed))
    }

    fn ratio(&self, case: &CaseRef, of: &CaseRef, latency: bool) -> Result<RatioEstimate, (Verdict, String)> {
        let mut per_block = Vec::new();
        for (name, cases) in &self.blocks {
            let ratios = findings::round_ratios(cases, case, of, latency)
                .map_err(|(v, why)| (v, format!("block {name}: {why}")))?;
            per_block.push(ratios);
        }
        let Some(pooled) = stats::pool_blocks(&per_block) else {
            return Err((Verdict::Inconclusive, format!("{case} against {of}: no ratios to pool")));
        };
        let blocks: Vec<BlockRatio> =
            self.blocks.iter().zip(&per_block).map(|((name, _), r)| block_ratio(name, r)).collect();
        let by_block: Vec<String> =
            blocks.iter().map(|b| format!("{} {}", b.block, ratio_cell(b.mean, b.interval))).collect();
        Ok(RatioEstimate {
            mean: pooled.mixed.mean,
            interval: pooled.mixed.interval,
            text: format!("{}; by block: {}", pooled_text(&pooled), by_block.join(", ")),
            blocks,
            pooled: Some(pooled),
        })
    }
}

/// Pools the paired ratios `ratios` gives of each block.
fn pool_case(
    case: &CaseRef,
    against: &CaseRef,
    names: &[&str],
    ratios: impl Fn(usize) -> Option<Vec<f64>>,
) -> PooledCase {
    let per_block: Vec<Option<Vec<f64>>> = (0..names.len()).map(ratios).collect();
    let blocks = names
        .iter()
        .zip(&per_block)
        .map(|(n, r)| r.as_deref().map_or_else(|| block_ratio(n, &[]), |r| block_ratio(n, r)))
        .collect();
    let pooled = per_block.into_iter().collect::<Option<Vec<_>>>().and_then(|b| stats::pool_blocks(&b));
    PooledCase { case: case.clone(), against: against.clone(), blocks, pooled }
}

/// Merges the blocks' reports.
pub fn merge(inputs: &[Input]) -> Result<Merged, MergeError> {
    check(inputs)?;
    let first = &inputs[0].outcomes[0];
    let names: Vec<&str> =
        inputs.iter().map(|i| i.outcomes[0].block.as_ref().map_or("", |b| b.name.as_str())).collect();
    let blocks = inputs
        .iter()
        .map(|i| {
            let o = &i.outcomes[0];
            let block = o.block.clone().expect("read checks the block");
            BlockInfo {
                name: block.name,
                machine: block.machine,
                file: i.path.display().to_string(),
                run: o.run.clone(),
                repeat: o.repeat,
            }
        })
        .collect();
    let mut kernels = Vec::new();
    for (k, outcome) in inputs[0].outcomes.iter().enumerate() {
        let own: Vec<&[Measured]> = inputs.iter().map(|i| i.outcomes[k].measured.as_slice()).collect();
        let paired = |case: &CaseRef, against: &CaseRef| {
            pool_case(case, against, &names, |b| findings::round_ratios(own[b], case, against, false).ok())
        };
        let vs_baseline = findings::baseline_pairs(&outcome.measured, &outcome.baseline)
            .into_iter()
            .map(|(c, b)| paired(&c.case, &b.case))
            .collect();
        let evidence = Blocks { blocks: names.iter().copied().zip(own.iter().copied()).collect() };
        let claims: Vec<_> = outcome.findings.iter().map(|f| f.finding.clone()).collect();
        let throughput = outcome
            .measured
            .iter()
            .map(|m| BlockThroughput {
                case: m.case.clone(),
                blocks: names
                    .iter()
                    .zip(&own)
                    .map(|(n, cases)| {
                        let c = cases.iter().find(|c| c.case == m.case).map_or(f64::NAN, |c| stats::median(&c.samples));
                        (n.to_string(), c)
                    })
                    .collect(),
            })
            .collect();
        kernels.push(MergedKernel {
            kernel: outcome.kernel.clone(),
            vs_baseline,
            findings: findings::judge_findings(&claims, &evidence),
            throughput,
        });
    }
    // Each later kernel over the first, case by case, paired by round.
    let mut kernel_ratios = Vec::new();
    for k in 1..inputs[0].outcomes.len() {
        let cases = inputs[0].outcomes[k]
            .measured
            .iter()
            .map(|m| {
                pool_case(&m.case, &m.case, &names, |b| {
                    let (a, later) = (&inputs[b].outcomes[0].measured, &inputs[b].outcomes[k].measured);
                    let (x, y) = (a.iter().find(|c| c.case == m.case)?, later.iter().find(|c| c.case == m.case)?);
                    let ok = x.samples.len() == y.samples.len() && x.samples.iter().chain(&y.samples).all(|v| *v > 0.0);
                    ok.then(|| y.samples.iter().zip(&x.samples).map(|(b, a)| b / a).collect())
                })
            })
            .collect();
        kernel_ratios.push(KernelRatio {
            kernel: inputs[0].outcomes[k].kernel.clone(),
            against: first.kernel.clone(),
            cases,
        });
    }
    Ok(Merged {
        study: first.study.clone(),
        sha256: first.sha256.clone(),
        baseline: first.baseline.clone(),
        model: MODEL,
        blocks,
        kernels,
        kernel_ratios,
    })
}

/// A pooled ratio as a cell, with the block means' beside it.
fn pooled_cells(p: &Option<Pooled>) -> (String, String) {
    match p {
        Some(p) => (ratio_cell(p.mixed.mean, p.mixed.interval), ratio_cell(p.block_means.mean, p.block_means.interval)),
        None => ("-".into(), "-".into()),
    }
}

impl Merged {
    /// Some pooled finding does not hold.
    pub fn failed(&self) -> bool {
        self.kernels.iter().any(|k| k.findings.iter().any(|f| f.verdict == Verdict::DoesNotHold))
    }

    /// For the terminal: the blocks, each case's pooled ratio to the
    /// baseline beside each block's, the findings.
    pub fn table(&self) -> String {
        let mut s = format!("study {} merged from {} blocks\n", self.study, self.blocks.len());
        for b in &self.blocks {
            s.push_str(&format!("  {}: {} rounds on {} ({})\n", b.name, b.repeat, b.machine, b.file));
        }
        s.push_str(&format!("model: {}\n", self.model));
        for k in &self.kernels {
            s.push_str(&format!(
                "\nkernel {}: each case over the baseline lab `{}`, pooled (mixed model; block means), then by block\n\n",
                k.kernel, self.baseline
            ));
            s.push_str(&cases_table(&k.vs_baseline, |c| format!("{}  (against {})", c.case, c.against.case)));
            if !k.findings.is_empty() {
                s.push_str("\nfindings, judged on the pooled ratios\n");
                for f in &k.findings {
                    s.push_str(&format!("{}: {}\n", f.verdict.describe(), f.finding.claim));
                    for line in &f.evidence {
                        s.push_str(&format!("    {line}\n"));
                    }
                }
            }
        }
        for kr in &self.kernel_ratios {
            s.push_str(&format!("\nkernel {} over kernel {}, case by case, pooled\n\n", kr.kernel, kr.against));
            s.push_str(&cases_table(&kr.cases, |c| c.case.to_string()));
        }
        s
    }

    /// For CI summaries.
    pub fn markdown(&self) -> String {
        let mut s = format!("## vlab study `{}`, merged from {} blocks\n\n", self.study, self.blocks.len());
        s.push_str("| block | rounds | machine |\n| --- | --- | --- |\n");
        for b in &self.blocks {
            s.push_str(&format!("| `{}` | {} | {} |\n", b.name, b.repeat, b.machine));
        }
        s.push_str(&format!("\nModel: {}.\n", self.model));
        for k in &self.kernels {
            s.push_str(&format!("\n### Kernel {}: each case over `{}`\n\n", k.kernel, self.baseline));
            let heads: String = self.blocks.iter().map(|b| format!(" {} |", b.name)).collect();
            let rule: String = self.blocks.iter().map(|_| " --- |").collect();
            s.push_str(&format!("| case | pooled | block means |{heads}\n| --- | --- | --- |{rule}\n"));
            for c in &k.vs_baseline {
                let (mixed, means) = pooled_cells(&c.pooled);
                let per: String = c.blocks.iter().map(|b| format!(" {} |", ratio_cell(b.mean, b.interval))).collect();
                s.push_str(&format!("| `{}` | {mixed} | {means} |{per}\n", c.case));
            }
            if !k.findings.is_empty() {
                s.push_str("\n#### Findings, judged on the pooled ratios\n\n");
                for f in &k.findings {
                    s.push_str(&format!("- {}: {}\n", f.verdict.describe(), f.finding.claim));
                    for line in &f.evidence {
                        s.push_str(&format!("    - `{line}`\n"));
                    }
                }
            }
        }
        s
    }
}

/// Rows of pooled cases: the pooled ratio, the block means', each block's.
fn cases_table(cases: &[PooledCase], label: impl Fn(&PooledCase) -> String) -> String {
    let labels: Vec<String> = cases.iter().map(&label).collect();
    let width = labels.iter().map(String::len).max().unwrap_or(4).max(4);
    let mut s = format!("{:<width$}  {:>22}  {:>22}  by block\n", "case", "pooled [95 %]", "block means [95 %]");
    for (c, l) in cases.iter().zip(&labels) {
        let (mixed, means) = pooled_cells(&c.pooled);
        let per: Vec<String> =
            c.blocks.iter().map(|b| format!("{} {}", b.block, ratio_cell(b.mean, b.interval))).collect();
        s.push_str(&format!("{l:<width$}  {mixed:>22}  {means:>22}  {}\n", per.join(", ")));
    }
    s
}
