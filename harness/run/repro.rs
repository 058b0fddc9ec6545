//! Reproducers from runs: `vlab run --repro DIR` writes each failed case's
//! (`crate::repro`; with `--repro-all` every case's) under DIR and runs its
//! namespace form at once in the pair's first guest, the kernel the case ran
//! on: whether the script reaches vlab's verdicts there is part of what it
//! hands over. `vlab repro` ([`export`]) writes one from a saved report. The
//! REPORT.md sections that need the run's records (the case's packets, the
//! kernel's options) are rendered here, so that `crate::repro` needs nothing
//! of `run`.

use std::path::Path;
use std::time::Duration;

use std::fmt::Write;

use crate::guest::Guest;
use crate::lab::{Case, Lab};
use crate::overlay;
use crate::report::CaseReport;
use crate::repro::{self, GuestRun, SavedCase, SavedReport};

/// Writes the reproducer of case `name` of the report at `report` into
/// `dir`: `repro.sh` (where the case has a namespace form), `lab.toml` and
/// `REPORT.md`. `lab_path` overrides where the lab file is read from.
pub fn export(
    report: &Path,
    name: &str,
    dir: &Path,
    lab_path: Option<&Path>,
    evidence: Option<&Path>,
    kernel: Option<&str>,
) -> Result<repro::Exported, String> {
    let saved = SavedReport::read(report, name, kernel)?;
    let lab_path = lab_path.map_or_else(|| saved.lab_path(report), Path::to_path_buf);
    let lab = crate::variants::load_lab(&lab_path).map_err(|e| e.to_string())?;
    let Some(recorded) = saved.cases.iter().find(|c| c.name == name) else {
        let names: Vec<&str> = saved.cases.iter().map(|c| c.name.as_str()).collect();
        return Err(format!("{} has no case {name:?}; its cases: {}", report.display(), names.join(", ")));
    };
    let Some(case) = lab.cases().into_iter().find(|c| c.name == name) else {
        return Err(format!("{} has no case {name:?} any more", lab_path.display()));
    };
    let evidence = match evidence {
        Some(case_dir) => evidence_md(&lab, &case, case_dir, dir)?,
        None => NO_EVIDENCE.to_string(),
    };
    repro::write_dir(dir, &lab, &case, recorded, &saved, (&config_md(&lab, &case, None), &evidence))
}

/// REPORT.md's evidence section where the run kept no artifacts of the case.
const NO_EVIDENCE: &str = "## Evidence\n\nThe run kept no artifacts of this case (`vlab run --artifacts DIR`, then \
     `vlab repro --evidence DIR/CASE`): no packets here.\n\n";

/// The kernel options the case needs (see [`super::kconfig::needed`]),
/// each with its line of `config` where the run read it.
pub fn config_md(lab: &Lab, case: &Case, config: Option<&str>) -> String {
    let lab = lab.for_case(case);
    let needed = super::kconfig::needed(&lab, std::slice::from_ref(case), case.params.nic.as_ref());
    let mut s = String::from("## Kernel configuration\n\n");
    match config {
        Some(_) => s.push_str("The options the case needs, as the guests' kernel has them:\n\n```\n"),
        None => {
            s.push_str("The options the case needs (the run's kernel configuration is not in the report):\n\n```\n")
        }
    }
    for (option, why) in &needed {
        let line = config.map(|text| {
            let set = format!("CONFIG_{option}=");
            text.lines()
                .find(|l| l.starts_with(&set) || *l == format!("# CONFIG_{option} is not set"))
                .map_or_else(|| format!("# CONFIG_{option} is absent"), str::to_string)
        });
        let _ = writeln!(s, "{:<40} # {why}", line.unwrap_or_else(|| format!("CONFIG_{option}")));
    }
    s.push_str("```\n\n");
    s
}

/// How many packets of each capture the evidence shows.
const EVIDENCE_PACKETS: usize = 4;

/// The `## Evidence` section of `REPORT.md` from a case's artifacts
/// (`case.json` and its pcaps): per capture, the packets that show a
/// checksum finding (see [`capture::evidence`]) with their fields side by
/// side, also written as `evidence/<capture>.pcap` under `out`.
pub fn evidence_md(lab: &Lab, case: &Case, case_dir: &Path, out: &Path) -> Result<String, String> {
    use crate::measure::capture::{self, CaptureContext};
    let (record, pcaps) = super::record::load(case_dir).map_err(|e| format!("--evidence: {e:#}"))?;
    let lab = lab.for_case(case);
    let hints = overlay::get(&lab.overlay).capture_hints(&lab);
    let original_dst = |dst| hints.original_destination(dst);
    let dir = out.join("evidence");
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut s = format!(
        "## Evidence\n\nThe packets of each capture that show it: the first {EVIDENCE_PACKETS} TCP segments whose \
         checksum is invalid for the captured addresses (else the first {EVIDENCE_PACKETS}: what was normal), \
         also in `evidence/` as pcaps of their own. *valid for wire* is the full checksum the captured \
         addresses need; *valid for original* the one the destination before the translation needs.\n\n"
    );
    let hex = |v: Option<u16>| v.map_or("-".to_string(), |v| format!("0x{v:04x}"));
    for (c, bytes) in record.captures.iter().zip(&pcaps) {
        let ctx = CaptureContext {
            port: lab.workload.port,
            mtu: c.mtu,
            original_dst: &original_dst,
            vxlan_port: hints.vxlan_port,
        };
        let (rows, cut) = capture::evidence(bytes, &ctx, EVIDENCE_PACKETS).map_err(|e| format!("{}: {e}", c.file()))?;
        if rows.is_empty() {
            continue;
        }
        let file = dir.join(c.file());
        std::fs::write(&file, cut).map_err(|e| format!("{}: {e}", file.display()))?;
        let _ = writeln!(
            s,
            "`{}`:\n\n| frame | src > dst | flags | seq | payload | checksum field | valid for wire | valid for original | verdict |\n|---|---|---|---|---|---|---|---|---|",
            c.file()
        );
        for r in rows {
            let original = r.for_original.map_or("-".to_string(), |(a, v)| format!("0x{v:04x} ({a})"));
            let _ = writeln!(
                s,
                "| {} | {} > {} | {} | {} | {} | 0x{:04x} | {} | {original} | {} |",
                r.frame,
                r.src,
                r.dst,
                r.flags,
                r.seq,
                r.payload,
                r.field,
                hex(r.for_captured),
                serde_json::to_value(r.status).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default()
            );
        }
        s.push('\n');
    }
    Ok(s)
}

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
    };
    let config = guest.run(super::kconfig::READ_CONFIG).await?.stdout_text();
    let config = config_md(lab, case, Some(config.as_str()).filter(|c| !c.trim().is_empty()));
    let out = dir.join(&case.name);
    let evidence = match evidence {
        Some(case_dir) => evidence_md(lab, case, case_dir, &out).map_err(anyhow::Error::msg)?,
        None => NO_EVIDENCE.to_string(),
    };
    let exported =
        repro::write_dir(&out, lab, case, &recorded, &saved, (&config, &evidence)).map_err(anyhow::Error::msg)?;
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
