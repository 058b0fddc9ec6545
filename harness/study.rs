//! Studies: several labs in one run (`vlab run labs/study.toml`). A study
//! names lab files and, for each, the cases it takes (by `--case`-style
//! filters); every lab boots its own pairs, and all pairs of all labs take
//! turns in every round of `--repeat`, so that the variants of different labs
//! (different addressing, different overlays) are measured side by side.
//! Every case is set against the study's baseline lab, paired by round, and
//! the study's claims are judged from the run (by the findings module, which
//! reads these types; nothing here depends on it).
//!
//! ```toml
//! name = "study"
//! duration = "5s"              # optional: every lab's workload duration
//! repeat = 3                   # optional: rounds without --repeat (default 3)
//! baseline = "filters"         # optional: the lab the others are set against (the first)
//! [[lab]]
//! file = "baseline.toml"       # relative to the study file
//! cases = ["path=container,family=ipv4"]   # optional: cases whose name contains one
//! [[finding]]                  # a claim: one of delivers, keeps (+ of, at_least), order,
//!                              #   waits (+ of, at_most or at_least)
//! claim = "Plain routing delivers"
//! delivers = ["baseline/path=container,family=ipv4"]   # LAB/CASE: a case's name, or a part naming one
//! ```

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::lab::{Case, Issue, Lab, LabError, Seg};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StudyFile {
    name: String,
    #[serde(default)]
    description: String,
    #[serde(default, with = "humantime_serde::option")]
    duration: Option<Duration>,
    #[serde(default)]
    repeat: Option<u32>,
    #[serde(default)]
    baseline: Option<String>,
    lab: Vec<StudyLab>,
    #[serde(default)]
    finding: Vec<FindingFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StudyLab {
    file: PathBuf,
    #[serde(default)]
    cases: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FindingFile {
    claim: String,
    #[serde(default)]
    delivers: Option<Vec<String>>,
    #[serde(default)]
    keeps: Option<String>,
    #[serde(default)]
    of: Option<String>,
    #[serde(default)]
    at_least: Option<f64>,
    #[serde(default)]
    order: Option<Vec<Vec<String>>>,
    #[serde(default)]
    waits: Option<String>,
    #[serde(default)]
    at_most: Option<f64>,
}

/// A case of a study: its lab's name and its own.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaseRef {
    pub lab: String,
    pub case: String,
}

impl std::fmt::Display for CaseRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.lab, self.case)
    }
}

/// What a finding claims, in terms the run can judge.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Claim {
    /// Every case moves data in every repetition.
    Delivers { cases: Vec<CaseRef> },
    /// `case` keeps at least `at_least` of `of`'s throughput (their ratio,
    /// paired by round, with its 95 % interval).
    Keeps { case: CaseRef, of: CaseRef, at_least: f64 },
    /// Every case of a tier is slower than every case of the tier above it.
    Order { tiers: Vec<Vec<CaseRef>> },
    /// `case`'s new connections wait at most `at_most` (or at least
    /// `at_least`) times as long as `of`'s (the ratio of their median
    /// new-connection latencies, paired by round, with its 95 % interval).
    Waits {
        case: CaseRef,
        of: CaseRef,
        #[serde(skip_serializing_if = "Option::is_none", default)]
        at_most: Option<f64>,
        #[serde(skip_serializing_if = "Option::is_none", default)]
        at_least: Option<f64>,
    },
}

/// One of the study's findings: the claim in words, and what it means.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Finding {
    pub claim: String,
    #[serde(flatten)]
    pub kind: Claim,
}

/// A loaded study: its labs, each with the cases it runs.
pub struct Study {
    pub name: String,
    pub description: String,
    pub labs: Vec<(Lab, Vec<Case>)>,
    /// Rounds when `--repeat` is not given.
    pub repeat: u32,
    /// The lab every other lab's cases are set against.
    pub baseline: String,
    pub findings: Vec<Finding>,
    /// SHA-256 of the study file and its lab files, in the study's order:
    /// the reports of two runs can be merged only when it is the same.
    pub sha256: String,
}

/// Rounds of a study without `repeat` or `--repeat`: enough for an interval.
pub const DEFAULT_REPEAT: u32 = 3;

/// Whether `text` is a study (it lists `[[lab]]` tables) rather than a lab.
pub fn is_study(text: &str) -> bool {
    text.parse::<toml::Table>().is_ok_and(|t| t.get("lab").is_some_and(toml::Value::is_array))
}

/// Reads a study and the labs it names; errors name the study's file, line
/// and field, or the lab file's.
pub fn load(path: &Path) -> Result<Study, LabError> {
    let text = std::fs::read_to_string(path).map_err(|source| LabError::Read { path: path.to_path_buf(), source })?;
    let file: StudyFile = toml::from_str(&text).map_err(|e| LabError::from_toml(path, &text, &e))?;
    let invalid = |segs: Vec<Seg>, message: String| LabError::invalid(path, &text, Issue::new(segs, message));
    if file.lab.is_empty() {
        return Err(invalid(vec![Seg::Key("lab")], "a study names at least one lab".into()));
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut labs = Vec::new();
    let mut hash = Sha256::new();
    hash.update(text.as_bytes());
    for (i, entry) in file.lab.iter().enumerate() {
        let lab_path = dir.join(&entry.file);
        let Ok(lab_text) = std::fs::read(&lab_path) else {
            let message = format!("no lab file {}", lab_path.display());
            return Err(invalid(vec![Seg::Key("lab"), Seg::Index(i), Seg::Key("file")], message));
        };
        hash.update((lab_text.len() as u64).to_le_bytes());
        hash.update(&lab_text);
        let mut lab = crate::variants::load_lab(&lab_path)?;
        if let Some(d) = file.duration {
            lab.workload.duration = d;
        }
        let all = lab.cases();
        let mut cases: Vec<Case> = Vec::new();
        for (j, filter) in entry.cases.iter().enumerate() {
            let hits: Vec<&Case> = all.iter().filter(|c| c.name.contains(filter.as_str())).collect();
            if hits.is_empty() {
                let names: Vec<&str> = all.iter().map(|c| c.name.as_str()).collect();
                let message =
                    format!("`{filter}` matches no case of {} (its cases: {})", lab_path.display(), names.join(", "));
                return Err(invalid(vec![Seg::Key("lab"), Seg::Index(i), Seg::Key("cases"), Seg::Index(j)], message));
            }
            for c in hits {
                if !cases.contains(c) {
                    cases.push(c.clone());
                }
            }
        }
        if entry.cases.is_empty() {
            cases = all.clone();
        }
        // The lab's own order, not the filters'.
        cases.sort_by_key(|c| all.iter().position(|x| x == c));
        if labs.iter().any(|(l, _): &(Lab, Vec<Case>)| l.name == lab.name) {
            let message = format!("lab `{}` is in the study twice", lab.name);
            return Err(invalid(vec![Seg::Key("lab"), Seg::Index(i), Seg::Key("file")], message));
        }
        labs.push((lab, cases));
    }
    let repeat = file.repeat.unwrap_or(DEFAULT_REPEAT);
    if !(1..=100).contains(&repeat) {
        return Err(invalid(vec![Seg::Key("repeat")], format!("{repeat} rounds: use 1 to 100")));
    }
    let names: Vec<&str> = labs.iter().map(|(l, _)| l.name.as_str()).collect();
    let baseline = file.baseline.clone().unwrap_or_else(|| names[0].to_string());
    if !names.contains(&baseline.as_str()) {
        let message = format!("no lab `{baseline}` in the study (its labs: {})", names.join(", "));
        return Err(invalid(vec![Seg::Key("baseline")], message));
    }
    let mut findings = Vec::new();
    for (i, f) in file.finding.iter().enumerate() {
        let at = |more: &[Seg]| [vec![Seg::Key("finding"), Seg::Index(i)], more.to_vec()].concat();
        let resolve = |name: &str, segs: Vec<Seg>| case_ref(&labs, name).map_err(|m| invalid(at(&segs), m));
        let ratio_bound = |key: &'static str, x: Option<f64>| match x {
            Some(x) if x > 0.0 && x.is_finite() => Ok(Some(x)),
            Some(x) => Err(invalid(at(&[Seg::Key(key)]), format!("{x}: use a ratio above 0"))),
            None => Ok(None),
        };
        let kind = match (&f.delivers, &f.keeps, &f.order) {
            (None, None, None) if f.waits.is_some() => {
                let case = resolve(f.waits.as_deref().unwrap_or_default(), vec![Seg::Key("waits")])?;
                let Some(of) = &f.of else {
                    return Err(invalid(
                        at(&[Seg::Key("of")]),
                        "`waits` needs `of`: the case it is set against".into(),
                    ));
                };
                let of = resolve(of, vec![Seg::Key("of")])?;
                let (at_most, at_least) = (ratio_bound("at_most", f.at_most)?, ratio_bound("at_least", f.at_least)?);
                if at_most.is_some() == at_least.is_some() {
                    let message =
                        "`waits` needs one of `at_most` (new connections wait at most that many times as long) \
                                   and `at_least`";
                    return Err(invalid(at(&[Seg::Key("at_most")]), message.into()));
                }
                Claim::Waits { case, of, at_most, at_least }
            }
            (Some(cases), None, None) if !cases.is_empty() && f.waits.is_none() => Claim::Delivers {
                cases: cases
                    .iter()
                    .enumerate()
                    .map(|(j, c)| resolve(c, vec![Seg::Key("delivers"), Seg::Index(j)]))
                    .collect::<Result<_, _>>()?,
            },
            (None, Some(case), None) if f.waits.is_none() => {
                let case = resolve(case, vec![Seg::Key("keeps")])?;
                let Some(of) = &f.of else {
                    return Err(invalid(
                        at(&[Seg::Key("of")]),
                        "`keeps` needs `of`: the case it is set against".into(),
                    ));
                };
                let of = resolve(of, vec![Seg::Key("of")])?;
                let at_least = match f.at_least {
                    Some(x) if x > 0.0 && x.is_finite() => x,
                    Some(x) => return Err(invalid(at(&[Seg::Key("at_least")]), format!("{x}: use a ratio above 0"))),
                    None => {
                        let message = "`keeps` needs `at_least`: the lowest ratio the claim allows (0.9: 10 % less)";
                        return Err(invalid(at(&[Seg::Key("at_least")]), message.into()));
                    }
                };
                Claim::Keeps { case, of, at_least }
            }
            (None, None, Some(tiers))
                if tiers.len() >= 2 && tiers.iter().all(|t| !t.is_empty()) && f.waits.is_none() =>
            {
                Claim::Order {
                    tiers: tiers
                        .iter()
                        .enumerate()
                        .map(|(j, tier)| {
                            tier.iter()
                                .enumerate()
                                .map(|(k, c)| resolve(c, vec![Seg::Key("order"), Seg::Index(j), Seg::Index(k)]))
                                .collect::<Result<Vec<_>, _>>()
                        })
                        .collect::<Result<_, _>>()?,
                }
            }
            _ => {
                let message = "a finding claims one of: `delivers` (a list of cases), `keeps` (a case, with `of` \
                               and `at_least`), `order` (two or more tiers of cases, fastest first), `waits` (a \
                               case, with `of` and `at_most` or `at_least`)";
                return Err(invalid(at(&[]), message.into()));
            }
        };
        if f.keeps.is_none() && f.waits.is_none() && (f.of.is_some() || f.at_least.is_some()) {
            let key = if f.of.is_some() { "of" } else { "at_least" };
            return Err(invalid(at(&[Seg::Key(key)]), format!("`{key}` belongs to a `keeps` or `waits` claim")));
        }
        if f.waits.is_none() && f.at_most.is_some() {
            return Err(invalid(at(&[Seg::Key("at_most")]), "`at_most` belongs to a `waits` claim".into()));
        }
        findings.push(Finding { claim: f.claim.clone(), kind });
    }
    let sha256 = hex::encode(hash.finalize());
    Ok(Study { name: file.name, description: file.description, labs, repeat, baseline, findings, sha256 })
}

/// Resolves `LAB/CASE` against the cases the study runs: CASE is a case's
/// name, or a part of exactly one case's name.
fn case_ref(labs: &[(Lab, Vec<Case>)], text: &str) -> Result<CaseRef, String> {
    let Some((lab, case)) = text.split_once('/') else {
        return Err(format!("`{text}`: name a case as LAB/CASE (`filters/filter=none,streams=1`)"));
    };
    let Some((_, cases)) = labs.iter().find(|(l, _)| l.name == lab) else {
        let names: Vec<&str> = labs.iter().map(|(l, _)| l.name.as_str()).collect();
        return Err(format!("`{text}`: no lab `{lab}` in the study (its labs: {})", names.join(", ")));
    };
    let names: Vec<&str> = cases.iter().map(|c| c.name.as_str()).collect();
    let hits: Vec<&str> = match names.iter().find(|n| **n == case) {
        Some(exact) => vec![exact],
        None => names.iter().copied().filter(|n| n.contains(case)).collect(),
    };
    match hits[..] {
        [one] => Ok(CaseRef { lab: lab.to_string(), case: one.to_string() }),
        [] => Err(format!("`{text}`: no case of `{lab}` that the study runs matches (they are: {})", names.join(", "))),
        _ => Err(format!("`{text}` matches several cases of `{lab}` ({}): name one", hits.join(", "))),
    }
}

/// A block of a study spread over machines (`vlab run STUDY --block NAME`):
/// one machine's rounds, whose ratios `vlab merge` pools with the others'.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Block {
    pub name: String,
    pub machine: Machine,
}

/// What a block ran on: throughput is never compared across machines, but
/// a reader of a merged study sees what each block was.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Machine {
    /// The CPU's model name (`/proc/cpuinfo`).
    pub cpu: String,
    /// The CPUs vlab could use.
    pub cores: usize,
    /// The accelerator the VMs ran on (`tcg`, `kvm`).
    pub accel: String,
    pub qemu: String,
    /// The host's kernel release.
    pub kernel: String,
}

impl Machine {
    /// This machine, with the accelerator and QEMU a run used.
    pub fn here(accel: &str, qemu: &str) -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name").and_then(|r| r.split_once(':')).map(|(_, v)| v.trim()))
            .unwrap_or("unknown")
            .to_string();
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().to_string();
        Machine {
            cpu,
            cores: std::thread::available_parallelism().map_or(1, usize::from),
            accel: accel.to_string(),
            qemu: qemu.to_string(),
            kernel,
        }
    }
}

impl std::fmt::Display for Machine {
    /// `Intel Xeon ..., 2 cores, tcg, QEMU 10.0.2, host kernel 6.1.0`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}, {} cores, {}, QEMU {}, host kernel {}", self.cpu, self.cores, self.accel, self.qemu, self.kernel)
    }
}
