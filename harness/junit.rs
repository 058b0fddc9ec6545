//! JUnit XML of a run (`vlab run --junit FILE`), for CI systems that show
//! results per test: a test suite per lab (and kernel), a test case per case
//! whose failure names every failed check (its detail a line each in the
//! failure's text), the case's evidence files as properties;
//! a suite for each comparison of kernels and for each study's findings. A
//! run that could not start is one test case with an error, never an empty
//! report.

use std::path::{Path, PathBuf};
use std::time::Duration;

use quick_junit::{NonSuccessKind, Property, TestCase, TestCaseStatus, TestSuite};

use crate::compare::Comparison;
use crate::findings::{FindingOutcome, StudyOutcome, Verdict};
use crate::report::{report_evidence, round_evidence, CaseReport, Report};
use crate::stats::Change;

/// The JUnit report of a run that produced reports. `artifacts` is the run's
/// `--artifacts` directory (each case's evidence is under it).
pub fn of_run(
    title: &str,
    reports: &[Report],
    comparisons: &[Comparison],
    studies: &[StudyOutcome],
    artifacts: Option<&Path>,
) -> quick_junit::Report {
    let mut junit = quick_junit::Report::new(format!("vlab {title}"));
    let several_kernels = reports.iter().any(|r| reports.iter().filter(|o| o.lab == r.lab).count() > 1);
    for (n, r) in reports.iter().enumerate() {
        let name = if several_kernels { format!("{} (kernel {})", r.lab, r.kernel) } else { r.lab.clone() };
        let mut suite = TestSuite::new(name);
        suite.set_time(Duration::from_secs_f64(r.wall_s.max(0.0)));
        let mut props = vec![
            ("lab_file", r.lab_file.clone()),
            ("kernel", r.kernel.clone()),
            ("accel", r.accel_text()),
            ("qemu", r.qemu.clone()),
            ("image", r.image.clone()),
            ("overlay", r.overlay.clone()),
            ("filter", r.filter.clone()),
            ("repeat", r.repeat.to_string()),
        ];
        if let Some(commit) = &r.kernel_commit {
            props.push(("kernel_commit", commit.clone()));
        }
        suite.add_properties(props.into_iter().map(|(k, v)| Property::new(k, v)));
        let dir = artifacts.map(|d| report_evidence(d, reports, n));
        for case in &r.cases {
            suite.add_test_case(case_of(&r.lab, case, r.repeat, dir.as_deref()));
        }
        junit.add_test_suite(suite);
    }
    for c in comparisons {
        let mut suite = TestSuite::new(format!("{}: {} against {}", c.lab, c.b, c.a));
        suite.add_property(Property::new("tolerance", c.tolerance.to_string()));
        for case in &c.cases {
            let interval =
                case.interval.as_ref().map_or("no interval".to_string(), |i| format!("[{:.3}, {:.3}]", i.low, i.high));
            let said = format!("{:.3}x {interval}: {}", case.ratio, case.change.describe());
            let status = match case.change {
                Change::Slower => failure("slower", &said, &said),
                Change::Inconclusive => skipped(&said),
                Change::Faster | Change::NoSignificantChange => TestCaseStatus::success(),
            };
            let mut t = TestCase::new(case.name.clone(), status);
            t.set_classname(format!("{}.comparison", c.lab));
            t.set_system_out(said);
            suite.add_test_case(t);
        }
        junit.add_test_suite(suite);
    }
    for s in studies {
        let props = [("baseline", s.baseline.clone()), ("repeat", s.repeat.to_string())];
        let name = format!("study {}: findings (kernel {})", s.study, s.kernel);
        junit.add_test_suite(findings_suite(name, &s.study, &props, &s.findings));
    }
    junit
}

/// A suite of a study's findings: a test case per claim, failed when it
/// does not hold, skipped when inconclusive.
fn findings_suite(name: String, study: &str, props: &[(&str, String)], findings: &[FindingOutcome]) -> TestSuite {
    let mut suite = TestSuite::new(name);
    suite.add_properties(props.iter().map(|(k, v)| Property::new(*k, v.clone())));
    for f in findings {
        let evidence = f.evidence.join("\n");
        let status = match f.verdict {
            Verdict::Holds => TestCaseStatus::success(),
            Verdict::DoesNotHold => failure("does not hold", &f.finding.claim, &evidence),
            Verdict::Inconclusive => skipped(&format!("inconclusive: {}", f.evidence.join("; "))),
        };
        let mut t = TestCase::new(f.finding.claim.clone(), status);
        t.set_classname(format!("{study}.findings"));
        t.set_system_out(evidence);
        suite.add_test_case(t);
    }
    suite
}

/// The JUnit report of a merged study: per kernel, its findings judged on
/// the pooled ratios, the blocks as properties.
pub fn of_merged(m: &crate::merge::Merged) -> quick_junit::Report {
    let mut junit = quick_junit::Report::new(format!("vlab study {} (merged)", m.study));
    let blocks: Vec<String> =
        m.blocks.iter().map(|b| format!("{}: {} rounds on {}", b.name, b.repeat, b.machine)).collect();
    let props = [("baseline", m.baseline.clone()), ("blocks", blocks.join("; ")), ("model", m.model.to_string())];
    for k in &m.kernels {
        let name = format!("study {}: pooled findings (kernel {})", m.study, k.kernel);
        junit.add_test_suite(findings_suite(name, &m.study, &props, &k.findings));
    }
    junit
}

/// A case: its checks as output; when it failed, a failure whose message
/// names every failed check (a later round's with its round) and whose text
/// gives each one's detail; its evidence files as properties.
fn case_of(lab: &str, case: &CaseReport, repeat: u32, artifacts: Option<&Path>) -> TestCase {
    let checks: Vec<String> = case
        .checks
        .iter()
        .map(|c| {
            let verdict = match (c.passed, c.not_judged) {
                (_, true) => "NOT JUDGED",
                (true, false) => "pass",
                (false, false) => "FAIL",
            };
            format!("{verdict} {}: {}", c.name, c.detail)
        })
        .collect();
    let mut failed: Vec<String> = case.checks.iter().filter(|c| !c.passed).map(|c| c.name.clone()).collect();
    let mut details: Vec<String> =
        case.checks.iter().filter(|c| !c.passed).map(|c| format!("{}: {}", c.name, c.detail)).collect();
    for (i, rep) in case.repetitions.iter().enumerate().skip(1) {
        for name in &rep.failed_checks {
            failed.push(format!("{name} (round {})", i + 1));
            details.push(format!("round {}: {name}", i + 1));
        }
    }
    let status = if case.passed && failed.is_empty() {
        TestCaseStatus::success()
    } else if failed.is_empty() {
        failure("check failed", "the case failed in a round", &details.join("\n"))
    } else {
        failure("check failed", &failed.join(", "), &details.join("\n"))
    };
    let mut t = TestCase::new(case.name.clone(), status);
    t.set_classname(lab.to_string());
    t.set_time(Duration::from_secs_f64(case.timing.total_s.max(0.0)));
    let mut props = vec![Property::new("throughput", case.throughput_text())];
    for path in evidence(artifacts, &case.name, repeat) {
        props.push(Property::new("evidence", path.display().to_string()));
    }
    t.add_properties(props);
    t.set_system_out(checks.join("\n"));
    t
}

/// The files a case left in the artifacts directory, every round's, sorted.
fn evidence(artifacts: Option<&Path>, case: &str, repeat: u32) -> Vec<PathBuf> {
    let Some(dir) = artifacts else { return Vec::new() };
    let mut files = Vec::new();
    for round in 1..=repeat.max(1) {
        let Ok(entries) = std::fs::read_dir(round_evidence(dir, round).join(case)) else { continue };
        let mut these: Vec<PathBuf> = entries.flatten().map(|e| e.path()).filter(|p| p.is_file()).collect();
        these.sort();
        files.extend(these);
    }
    files
}

/// The JUnit report of a run that could not start or did not finish (exit
/// 125, 128, or a guest failure): one test case named `run` with an error
/// that says why, in a suite named after the lab file.
pub fn of_error(lab_file: &Path, code: u8, message: &str) -> quick_junit::Report {
    let name = lab_file.display().to_string();
    let mut junit = quick_junit::Report::new(format!("vlab {name}"));
    let mut suite = TestSuite::new(name.clone());
    let mut status = TestCaseStatus::non_success(NonSuccessKind::Error);
    status.set_type(format!("exit {code}"));
    status.set_message(message.lines().next().unwrap_or("vlab could not run the lab").to_string());
    status.set_description(message.to_string());
    let mut t = TestCase::new("run", status);
    t.set_classname(name);
    suite.add_test_case(t);
    junit.add_test_suite(suite);
    junit
}

/// Writes `junit` to `path`.
pub fn write(path: &Path, junit: &quick_junit::Report) -> anyhow::Result<()> {
    let xml = junit.to_string().map_err(|e| anyhow::anyhow!("cannot serialize the JUnit report: {e}"))?;
    std::fs::write(path, xml).map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))
}

fn failure(kind: &str, message: &str, description: &str) -> TestCaseStatus {
    let mut status = TestCaseStatus::non_success(NonSuccessKind::Failure);
    status.set_type(kind.to_string());
    status.set_message(message.to_string());
    status.set_description(description.to_string());
    status
}

fn skipped(message: &str) -> TestCaseStatus {
    let mut status = TestCaseStatus::skipped();
    status.set_message(message.to_string());
    status
}
