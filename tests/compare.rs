//! `vlab compare`: two reports of one lab, case by case; exit 1 on a
//! significant regression beyond the tolerance, 0 on a gain or noise, 128
//! when the reports are not of the same lab.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::json;

/// A report file of lab `lab` whose cases have these repeated samples (Mbit/s).
fn report(dir: &Path, name: &str, lab: &str, cases: &[(&str, &[f64])]) -> PathBuf {
    let cases: Vec<_> = cases
        .iter()
        .map(|(case, samples)| {
            let bps: Vec<f64> = samples.iter().map(|m| m * 1e6).collect();
            json!({ "name": case, "throughput_bps": bps[0], "throughput": { "samples": bps } })
        })
        .collect();
    let path = dir.join(name);
    std::fs::write(&path, json!({ "lab": lab, "kernel": "6.12", "cases": cases }).to_string()).unwrap();
    path
}

fn compare(a: &Path, b: &Path, more: &[&str]) -> (i32, String, serde_json::Value) {
    let out_json = a.with_file_name("comparison.json");
    let out = Command::new(env!("CARGO_BIN_EXE_vlab"))
        .arg("compare")
        .args([a, b])
        .args(["--json", out_json.to_str().unwrap()])
        .args(more)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    let value = std::fs::read(&out_json).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default();
    (out.status.code().unwrap_or(-1), text, value)
}

const A: &[f64] = &[1000.0, 1100.0, 900.0, 1050.0];

/// Compares A (every case at `A`) with B's cases; the exit code, the output
/// and each case's verdict.
fn verdicts(b_cases: &[(&str, &[f64])]) -> (i32, String, Vec<serde_json::Value>) {
    let dir = tempfile::tempdir().unwrap();
    let a_cases: Vec<(&str, &[f64])> = b_cases.iter().map(|(name, _)| (*name, A)).collect();
    let a = report(dir.path(), "a.json", "baseline", &a_cases);
    let b = report(dir.path(), "b.json", "baseline", b_cases);
    let (code, text, value) = compare(&a, &b, &[]);
    let changes = value["cases"].as_array().unwrap().iter().map(|c| c["change"].clone()).collect();
    (code, text, changes)
}

#[test]
fn a_clear_regression_fails() {
    let (code, text, changes) =
        verdicts(&[("c", &[500.0, 560.0, 450.0, 520.0]), ("d", &[990.0, 1120.0, 880.0, 1040.0])]);
    assert_eq!(code, 1, "{text}");
    assert_eq!(changes, [json!("slower"), json!("no-significant-change")], "{text}");
    assert!(text.contains("SLOWER"), "{text}");
}

#[test]
fn a_clear_gain_and_noise_pass() {
    let (code, text, changes) =
        verdicts(&[("gain", &[1500.0, 1600.0, 1400.0, 1620.0]), ("noise", &[950.0, 1200.0, 850.0, 1040.0])]);
    assert_eq!(code, 0, "{text}");
    assert_eq!(changes, [json!("faster"), json!("no-significant-change")], "{text}");
}

#[test]
fn single_runs_are_inconclusive_not_regressions() {
    let dir = tempfile::tempdir().unwrap();
    let a = report(dir.path(), "a.json", "baseline", &[("c", &[1000.0])]);
    let b = report(dir.path(), "b.json", "baseline", &[("c", &[400.0])]);
    let (code, text, value) = compare(&a, &b, &[]);
    assert_eq!(code, 0, "{text}");
    assert_eq!(value["cases"][0]["change"], "inconclusive", "{text}");
}

#[test]
fn reports_of_other_labs_or_cases_are_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let a = report(dir.path(), "a.json", "baseline", &[("c", A)]);
    let other_lab = report(dir.path(), "b.json", "vxlan", &[("c", A)]);
    let (code, text, _) = compare(&a, &other_lab, &[]);
    assert_eq!(code, 128, "{text}");
    assert!(text.contains("not describe the same lab: lab `baseline` against lab `vxlan`"), "{text}");
    let other_cases = report(dir.path(), "c.json", "baseline", &[("c", A), ("e", A)]);
    assert_eq!(compare(&a, &other_cases, &[]).0, 128);
    std::fs::write(dir.path().join("junk.json"), "[]").unwrap();
    let (code, text, _) = compare(&a, &dir.path().join("junk.json"), &[]);
    assert_eq!(code, 128, "{text}");
    assert!(text.contains("is not a vlab report"), "{text}");
    assert_eq!(compare(&a, &a, &["--tolerance", "2"]).0, 128);
}

/// A study's report (`vlab run STUDY --json`): one lab `filters` whose case
/// has these samples, and one finding with this verdict.
fn study_report(dir: &Path, name: &str, samples: &[f64], verdict: &str) -> PathBuf {
    let bps: Vec<f64> = samples.iter().map(|m| m * 1e6).collect();
    let case = json!({ "name": "filter=none", "throughput_bps": bps[0], "throughput": { "samples": bps } });
    let finding = json!({
        "claim": "Plain routing delivers", "kind": "delivers",
        "cases": [{ "lab": "filters", "case": "filter=none" }],
        "verdict": verdict, "evidence": ["filters/filter=none: delivered"]
    });
    let outcome = json!({
        "study": "study", "kernel": "6.12", "repeat": samples.len(), "baseline": "filters",
        "vs_baseline": [], "findings": [finding]
    });
    let doc = json!({
        "reports": [{ "lab": "filters", "kernel": "6.12", "cases": [case] }],
        "comparisons": [], "studies": [outcome]
    });
    let path = dir.join(name);
    std::fs::write(&path, doc.to_string()).unwrap();
    path
}

#[test]
fn two_studies_compare_lab_by_lab_and_finding_by_finding() {
    let dir = tempfile::tempdir().unwrap();
    let a = study_report(dir.path(), "a.json", A, "holds");
    // The same throughput, the same verdict: no change.
    let (code, text, json) = compare(&a, &study_report(dir.path(), "b.json", A, "holds"), &[]);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("lab filters") && text.contains("holds -> holds: Plain routing delivers"), "{text}");
    assert_eq!(json["findings"][0]["b"], "holds");
    // A finding that held and does not hold any more is a regression.
    let (code, text, _) = compare(&a, &study_report(dir.path(), "c.json", A, "does-not-hold"), &[]);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("holds -> DOES NOT HOLD  REGRESSED"), "{text}");
    // A case significantly slower is one too.
    let slow: Vec<f64> = A.iter().map(|x| x * 0.5).collect();
    let (code, text, _) = compare(&a, &study_report(dir.path(), "d.json", &slow, "holds"), &[]);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("SLOWER"), "{text}");
    // A study against a lab's report cannot be compared.
    let lab = report(dir.path(), "lab.json", "filters", &[("filter=none", A)]);
    let (code, text, _) = compare(&a, &lab, &[]);
    assert_eq!(code, 128, "{text}");
    assert!(text.contains("a.json is a study's report") && text.contains("lab.json a lab's"), "{text}");
}
