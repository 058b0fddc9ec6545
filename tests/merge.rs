//! `vlab merge`: a study's blocks (runs on several machines) pooled. The
//! pooling recovers a known ratio from synthetic blocks and covers it as
//! often as a 95 % interval should; merged findings are judged on the pooled
//! ratios; reports that are not blocks of one study are refused (exit 128)
//! with the difference named.

use std::path::{Path, PathBuf};
use std::process::Command;

use vlab::findings::{judge, Measured, StudyOutcome, Verdict};
use vlab::merge::{merge, read, Input, MergeError};
use vlab::stats::pool_blocks;
use vlab::study::{load, Block, CaseRef, Machine};

/// A fixed-seed normal generator (xorshift64* and Box-Muller): the same
/// synthetic blocks on every run.
struct Normal(u64);

impl Normal {
    fn uniform(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        ((self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }

    fn next(&mut self) -> f64 {
        let (u, v) = (self.uniform(), self.uniform());
        (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
    }
}

/// `blocks` blocks of `rounds` paired ratios around `ratio`, each block
/// shifted by its own effect (sd `between`, log scale) and each round by
/// noise (sd `within`).
fn synthetic(g: &mut Normal, ratio: f64, blocks: usize, rounds: usize, (between, within): (f64, f64)) -> Vec<Vec<f64>> {
    (0..blocks)
        .map(|_| {
            let shift = between * g.next();
            (0..rounds).map(|_| (ratio.ln() + shift + within * g.next()).exp()).collect()
        })
        .collect()
}

#[test]
fn pooling_recovers_a_known_ratio_and_narrows_every_blocks_interval() {
    let mut g = Normal(0x5eed);
    let blocks = synthetic(&mut g, 0.8, 6, 3, (0.03, 0.15));
    let p = pool_blocks(&blocks).unwrap();
    assert_eq!((p.blocks, p.rounds), (6, 18));
    let i = p.mixed.interval.unwrap();
    assert!(i.contains(0.8), "{p:?}");
    assert!((p.mixed.mean - 0.8).abs() < 0.08, "{p:?}");
    for b in &blocks {
        let own = vlab::stats::summarize(b).unwrap().interval.unwrap();
        assert!(i.high - i.low < own.high - own.low, "pooled {i:?} against a block's {own:?}");
    }
}

#[test]
fn pooled_intervals_cover_the_true_ratio_about_95_percent_of_the_time() {
    let mut g = Normal(42);
    for (spread, blocks, rounds) in [((0.0, 0.2), 3, 3), ((0.2, 0.05), 4, 3), ((0.1, 0.1), 5, 2), ((0.3, 0.1), 3, 5)] {
        let trials = 600;
        let (mut mixed, mut means) = (0, 0);
        for _ in 0..trials {
            let p = pool_blocks(&synthetic(&mut g, 1.3, blocks, rounds, spread)).unwrap();
            mixed += usize::from(p.mixed.interval.unwrap().contains(1.3));
            means += usize::from(p.block_means.interval.unwrap().contains(1.3));
        }
        let (mixed, means) = (mixed as f64 / trials as f64, means as f64 / trials as f64);
        // The block means are exact under the model; the mixed model's
        // estimated components may cost it a few points with few blocks.
        assert!((0.92..=0.985).contains(&means), "block means cover {means} at {spread:?}");
        assert!((0.88..=0.99).contains(&mixed), "mixed model covers {mixed} at {spread:?}");
    }
}

#[test]
fn blocks_that_agree_pool_every_round_and_blocks_that_differ_count_once_each() {
    // The same ratios in every block: no block effect, every round a sample.
    let same = vec![vec![0.9, 1.0, 1.1]; 3];
    let p = pool_blocks(&same).unwrap();
    assert_eq!((p.mixed.df, p.block_means.df, p.between_sd), (8.0, 2.0, 0.0));
    // Blocks far apart with quiet rounds: the blocks are the samples.
    let apart = vec![vec![0.5, 0.51, 0.49], vec![1.0, 1.01, 0.99], vec![2.0, 2.02, 1.98]];
    let p = pool_blocks(&apart).unwrap();
    assert_eq!(p.mixed.df, 2.0);
    assert!(p.between_sd > 0.5 && p.within_sd < 0.02, "{p:?}");
    assert!((p.mixed.mean - 1.0).abs() < 0.01);
    // One round per block: the rounds cannot be told from the blocks.
    let p = pool_blocks(&[vec![0.9], vec![1.1]]).unwrap();
    assert_eq!(p.mixed, p.block_means);
    assert!(pool_blocks(&[vec![1.0], vec![]]).is_none());
    assert!(pool_blocks(&[vec![1.0, 0.0]]).is_none());
}

#[test]
fn the_blocks_needed_to_decide_grow_as_the_estimate_nears_the_bound() {
    let mut g = Normal(7);
    let p = pool_blocks(&synthetic(&mut g, 0.9, 3, 3, (0.1, 0.2))).unwrap();
    let far = p.blocks_to_decide(0.5).unwrap();
    let near = p.blocks_to_decide(0.85).unwrap();
    assert!(far > p.blocks && near > far, "{far} {near}");
    assert_eq!(p.blocks_to_decide(p.mixed.mean), None);
}

/// The shipped study's cases on a machine `speed` times as fast, with the
/// iptables case at `cost` of its sibling in each round.
fn block(name: &str, run: &str, speed: f64, cost: [f64; 3]) -> StudyOutcome {
    let study = load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("labs/study.toml")).unwrap();
    let cases: Vec<Measured> = study
        .labs
        .iter()
        .flat_map(|(lab, cases)| cases.iter().map(move |c| (lab, c)))
        .map(|(lab, c)| {
            let base = match lab.name.as_str() {
                "filters" => 2.0,
                "ila-matrix" => 1.5,
                _ => 0.4,
            };
            let drift = [1.0, 1.2, 0.85];
            let samples = (0..3)
                .map(|r| {
                    let x = base * speed * drift[r] * 1e9;
                    if c.name.contains("filter=iptables") {
                        x * cost[r]
                    } else {
                        x
                    }
                })
                .collect();
            Measured {
                case: CaseRef { lab: lab.name.clone(), case: c.name.clone() },
                streams: c.params.streams,
                mtu: c.params.mtu.unwrap_or(lab.mtu),
                samples,
                connects: Vec::new(),
                failed_checks: Vec::new(),
            }
        })
        .collect();
    let machine = Machine {
        cpu: format!("cpu of {name}"),
        cores: 2,
        accel: "tcg".into(),
        qemu: "10.0.2".into(),
        kernel: "6.1.0".into(),
    };
    StudyOutcome {
        sha256: study.sha256.clone(),
        run: run.into(),
        block: Some(Block { name: name.into(), machine }),
        ..judge(&study.name, &study.baseline, &study.findings, &cases, "6.12", 3)
    }
}

/// Writes `outcome` as `vlab run --json` does, and reads it back.
fn saved(dir: &Path, file: &str, outcome: &StudyOutcome) -> PathBuf {
    let path = dir.join(file);
    let doc = serde_json::json!({ "reports": [], "comparisons": [], "studies": [outcome] });
    std::fs::write(&path, serde_json::to_string(&doc).unwrap()).unwrap();
    path
}

fn inputs(dir: &Path, blocks: &[StudyOutcome]) -> Vec<Input> {
    blocks.iter().enumerate().map(|(i, b)| read(&saved(dir, &format!("b{i}.json"), b)).unwrap()).collect()
}

/// Costs of iptables per round: each block's three rounds too noisy to
/// decide the 80 % claim alone, the blocks alike.
const COSTS: [[f64; 3]; 4] = [[0.95, 0.75, 1.05], [0.98, 0.82, 0.92], [0.9, 1.04, 0.86], [1.0, 0.88, 0.93]];

#[test]
fn the_filtering_claim_undecided_in_each_block_is_decided_pooled() {
    let dir = tempfile::tempdir().unwrap();
    let blocks: Vec<StudyOutcome> = COSTS
        .iter()
        .enumerate()
        .map(|(i, c)| block(&format!("runner-{i}"), &format!("run{i}"), 1.0 + i as f64, *c))
        .collect();
    let claim = 1;
    for b in &blocks {
        assert_eq!(b.findings[claim].verdict, Verdict::Inconclusive, "{:?}", b.findings[claim].evidence);
    }
    let merged = merge(&inputs(dir.path(), &blocks)).unwrap();
    let f = &merged.kernels[0].findings[claim];
    assert_eq!(f.verdict, Verdict::Holds, "{:?}", f.evidence);
    assert!(f.evidence[0].contains("pooled over 4 blocks and 12 rounds"), "{:?}", f.evidence);
    assert!(f.evidence[0].contains("by block: runner-0 "), "{:?}", f.evidence);
    assert_eq!(f.ratios[0].blocks.len(), 4);
    assert_eq!(f.ratios[0].bound, 0.8);
    // Machines 1x to 4x as fast: the ratios pool, the throughputs do not.
    let swarm = merged.kernels[0].throughput.iter().find(|t| t.case.case.contains("filter=none,streams=1")).unwrap();
    let medians: Vec<f64> = swarm.blocks.iter().map(|(_, bps)| *bps).collect();
    assert!(medians.windows(2).all(|w| w[1] > w[0] * 1.2), "{medians:?}");
    // Every case over the baseline: ratio 1 in every round (the same drift).
    let ila = merged.kernels[0].vs_baseline.iter().find(|c| c.case.lab == "ila-matrix").unwrap();
    assert!((ila.pooled.unwrap().mixed.mean - 0.75).abs() < 1e-9);
    assert!(!merged.failed());
    // A claim the pooled ratios contradict fails the merge.
    let slow: Vec<StudyOutcome> =
        (0..3).map(|i| block(&format!("s{i}"), &format!("slow{i}"), 1.0, [0.5, 0.45, 0.55])).collect();
    let merged = merge(&inputs(dir.path(), &slow)).unwrap();
    assert_eq!(merged.kernels[0].findings[claim].verdict, Verdict::DoesNotHold);
    assert!(merged.failed());
}

#[test]
fn an_inconclusive_pooled_claim_says_how_many_blocks_would_decide_it() {
    let dir = tempfile::tempdir().unwrap();
    let blocks: Vec<StudyOutcome> = [[0.9, 0.7, 1.0], [0.75, 0.95, 0.8]]
        .iter()
        .enumerate()
        .map(|(i, c)| block(&format!("r{i}"), &format!("run{i}"), 1.0, *c))
        .collect();
    let merged = merge(&inputs(dir.path(), &blocks)).unwrap();
    let f = &merged.kernels[0].findings[1];
    assert_eq!(f.verdict, Verdict::Inconclusive);
    assert!(f.evidence[0].contains("blocks like these (now 2) would decide it"), "{:?}", f.evidence);
}

fn refused(dir: &Path, blocks: &[StudyOutcome]) -> String {
    match merge(&inputs(dir, blocks)) {
        Err(e @ MergeError::Mismatch(_)) => e.to_string(),
        other => panic!("merged: {other:?}"),
    }
}

#[test]
fn reports_that_are_not_blocks_of_one_study_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (block("a", "run-a", 1.0, COSTS[0]), block("b", "run-b", 1.0, COSTS[1]));
    // A/A: one report merged with itself.
    let e = refused(dir.path(), &[a.clone(), a.clone()]);
    assert!(e.contains("b1.json is the same run as") && e.contains("b0.json"), "{e}");
    // The same block name twice.
    let twice = StudyOutcome { run: "run-c".into(), ..a.clone() };
    let e = refused(dir.path(), &[a.clone(), twice]);
    assert!(e.contains("block `a` is both"), "{e}");
    // Another study file: another hash.
    let other = StudyOutcome { sha256: "f".repeat(64), ..b.clone() };
    let e = refused(dir.path(), &[a.clone(), other]);
    assert!(e.contains("from other files") && e.contains("ffffffffffff"), "{e}");
    // Other cases (`--case` narrowed one run).
    let mut fewer = b.clone();
    fewer.measured.retain(|m| m.case.lab != "vxlan");
    let e = refused(dir.path(), &[a.clone(), fewer]);
    assert!(e.contains("only in") && e.contains("vxlan/default"), "{e}");
    // Other kernels.
    let e = refused(dir.path(), &[a.clone(), StudyOutcome { kernel: "6.1".into(), ..b.clone() }]);
    assert!(e.contains("ran kernels [6.1]"), "{e}");
    // One report alone.
    assert!(refused(dir.path(), std::slice::from_ref(&a)).contains("two blocks or more"));
    // A run without --block, a lab's report, not JSON.
    let unnamed = saved(dir.path(), "unnamed.json", &StudyOutcome { block: None, ..a.clone() });
    assert!(read(&unnamed).unwrap_err().to_string().contains("ran without --block"));
    let lab = dir.path().join("lab.json");
    std::fs::write(&lab, r#"{"lab": "filters", "cases": []}"#).unwrap();
    assert!(read(&lab).unwrap_err().to_string().contains("lab.json is not a study's report"));
}

#[test]
fn vlab_merge_writes_the_merged_study_and_exits_by_its_findings() {
    let dir = tempfile::tempdir().unwrap();
    let blocks: Vec<StudyOutcome> = COSTS[..3]
        .iter()
        .enumerate()
        .map(|(i, c)| block(&format!("runner-{i}"), &format!("run{i}"), 1.0, *c))
        .collect();
    let files: Vec<PathBuf> =
        blocks.iter().enumerate().map(|(i, b)| saved(dir.path(), &format!("b{i}.json"), b)).collect();
    let out = |name: &str| dir.path().join(name);
    let run = Command::new(env!("CARGO_BIN_EXE_vlab"))
        .arg("merge")
        .args(&files)
        .arg("-o")
        .arg(out("study.json"))
        .args(["--html".as_ref(), out("study.html").as_os_str()])
        .args(["--markdown".as_ref(), out("study.md").as_os_str()])
        .args(["--junit".as_ref(), out("study.xml").as_os_str()])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert_eq!(run.status.code(), Some(0), "{stdout}{}", String::from_utf8_lossy(&run.stderr));
    assert!(stdout.contains("study study merged from 3 blocks"), "{stdout}");
    let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out("study.json")).unwrap()).unwrap();
    assert_eq!(json["blocks"].as_array().unwrap().len(), 3);
    assert_eq!(json["blocks"][1]["machine"]["cpu"], "cpu of runner-1");
    let html = std::fs::read_to_string(out("study.html")).unwrap();
    assert!(html.contains("<svg") && html.contains("(pooled)") && html.contains("runner-2"));
    let md = std::fs::read_to_string(out("study.md")).unwrap();
    assert!(md.contains("| `runner-0` | 3 |"), "{md}");
    let xml = std::fs::read_to_string(out("study.xml")).unwrap();
    assert!(xml.contains("pooled findings"), "{xml}");
    // A merged study is not compared: its throughputs are per block.
    let run = Command::new(env!("CARGO_BIN_EXE_vlab"))
        .arg("compare")
        .args([out("study.json"), files[0].clone()])
        .output()
        .unwrap();
    assert_eq!(run.status.code(), Some(128));
    assert!(String::from_utf8_lossy(&run.stderr).contains("study.json is not a vlab report: it is a merged study"));
    // The same report twice: exit 128, naming it.
    let run = Command::new(env!("CARGO_BIN_EXE_vlab")).arg("merge").args([&files[0], &files[0]]).output().unwrap();
    assert_eq!(run.status.code(), Some(128));
    assert!(String::from_utf8_lossy(&run.stderr).contains("b0.json is the same run as"));
}

#[test]
fn ci_merge_run_merges_the_downloaded_blocks_into_the_job_summary() {
    let dir = tempfile::tempdir().unwrap();
    let blocks_dir = dir.path().join("blocks");
    for (i, c) in COSTS[..2].iter().enumerate() {
        let d = blocks_dir.join(format!("study-block-{}", i + 1));
        std::fs::create_dir_all(&d).unwrap();
        saved(&d, "report.json", &block(&format!("runner-{}", i + 1), &format!("run{i}"), 1.0, *c));
    }
    // A block that could not run left no report: named and left out.
    std::fs::create_dir_all(blocks_dir.join("study-block-3")).unwrap();
    let summary = dir.path().join("summary.md");
    let out = dir.path().join("merged");
    let merge_run = || {
        Command::new(Path::new(env!("CARGO_MANIFEST_DIR")).join("ci/merge-run"))
            .args([&blocks_dir, &out])
            .env("VLAB", env!("CARGO_BIN_EXE_vlab"))
            .env("GITHUB_STEP_SUMMARY", &summary)
            .output()
            .unwrap()
    };
    let run = merge_run();
    let said = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(0), "{said}");
    assert!(said.contains("study-block-3: no report.json (the block did not run): left out"), "{said}");
    let md = std::fs::read_to_string(&summary).unwrap();
    assert!(md.contains("## vlab study `study`, merged from 2 blocks"), "{md}");
    for file in ["study.json", "study.html", "study.md", "junit.xml"] {
        assert!(out.join(file).is_file(), "{file}");
    }
    // One report is no merge: 125, said in the summary too.
    std::fs::remove_dir_all(blocks_dir.join("study-block-2")).unwrap();
    let run = merge_run();
    assert_eq!(run.status.code(), Some(125));
    assert!(std::fs::read_to_string(&summary).unwrap().contains("a merge needs two or more"));
}

/// A study's forest plot: a row per case over the baseline, then each
/// claim's ratio with its bound; the bounds drawn in red, the labels on
/// the left, a log axis.
#[test]
fn a_studys_forest_plot_draws_every_ratio_and_each_claims_bound() {
    let outcome = block("a", "run-a", 1.0, COSTS[0]);
    let rows = vlab::html::study_forest(&outcome);
    let claims: usize = outcome.findings.iter().map(|f| f.ratios.len()).sum();
    assert_eq!(rows.len(), outcome.vs_baseline.len() + claims);
    // keeps (one ratio, bound 0.8) twice, then the orders (bound 1).
    let bounds: Vec<f64> = rows.iter().filter_map(|r| r.bound).collect();
    assert_eq!(bounds.len(), claims);
    assert_eq!(&bounds[..2], &[0.8, 0.8]);
    assert!(bounds[2..].iter().all(|b| *b == 1.0));
    let svg = vlab::html::forest("the claims' ratios", &rows).unwrap();
    assert!(svg.contains("the claims&apos; ratios"), "the caption");
    let red = format!("#{:02X}{:02X}{:02X}", vlab::html::BOUND.0, vlab::html::BOUND.1, vlab::html::BOUND.2);
    assert_eq!(svg.matches(&format!("stroke=\"{red}\"")).count(), claims, "a bound per claim row");
    assert!(svg.contains("swarm/overlay=swarm,filter=iptables,streams=1 over"), "rows are named");
    assert!(vlab::html::forest("empty", &[]).is_err());
}
