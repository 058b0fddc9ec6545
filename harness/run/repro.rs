//! `vlab run --repro DIR`: each failed case's reproducer (`crate::repro`;
//! with `--repro-all` every case's) written under DIR, and its namespace
//! form run at once in the pair's first guest, the kernel the case ran on:
//! whether the script reaches vlab's verdicts there is part of what it hands
//! over.

use std::path::Path;
use std::time::Duration;

use crate::guest::Guest;
use crate::lab::{Case, Lab};
use crate::report::CaseReport;
use crate::repro::{self, GuestRun, SavedCase, SavedReport};

/// Where the script goes in the guest.
const GUEST_SCRIPT: &str = "/tmp/vlab-repro.sh";
/// How long it may run there (its reader is slow under TCG).
const LIMIT: Duration = Duration::from_secs(600);

/// Writes the reproducer of `case` into `dir`/CASE and runs its namespace
/// form in `guest`; `kernel` and `qemu` are the run's.
pub(super) async fn of_case(
    dir: &Path,
    lab: &Lab,
    case: &Case,
    report: &CaseReport,
    guest: &Guest,
    (kernel, qemu): (&str, &str),
    evidence: Option<&Path>,
) -> anyhow::Result<()> {
    let recorded = SavedCase { name: case.name.clone(), checks: report.checks.clone() };
    let saved = SavedReport {
        lab_file: lab.source.display().to_string(),
        kernel: kernel.to_string(),
        qemu: qemu.to_string(),
        cases: Vec::new(),
        config: Some(guest.run(super::kconfig::READ_CONFIG).await?.stdout_text()).filter(|c| !c.trim().is_empty()),
    };
    let out = dir.join(&case.name);
    let exported = repro::write_dir(&out, lab, case, &recorded, &saved, evidence).map_err(anyhow::Error::msg)?;
    let Ok(script) = &exported.script else { return Ok(()) };
    guest.write_file(GUEST_SCRIPT, &std::fs::read(script)?).await?;
    let ran = guest.agent().sh(&repro::guest_command(GUEST_SCRIPT), LIMIT).await?;
    let tap = ran.stdout_text();
    std::fs::write(out.join("guest.tap"), format!("{tap}{}", ran.stderr_text()))?;
    let differences = repro::differences(&tap, &recorded.checks);
    let run = GuestRun { code: ran.code, differences };
    std::fs::write(out.join("guest.json"), serde_json::to_string_pretty(&run)?)?;
    Ok(())
}
