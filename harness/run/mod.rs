//! Orchestration of one lab run: image, acceleration, then for each boot
//! group of the matrix (cases that share a NIC, an overlay and a filter):
//! underlay and VMs ([`boot`]), guest setup and the variants' deploy plans
//! ([`deploy`]), and every case ([`case`]: workload, captures, evidence,
//! generic checks and the variants' verdicts) on that booted pair.
//!
//! This module names no variant: it asks the registries for the overlay and
//! filter a group runs and executes what they render.
//!
//! Every host resource is owned by a value whose `Drop` releases it, so an
//! error, a panic or a cancelled future (Ctrl-C) leaves nothing behind.

mod boot;
mod capture;
mod case;
mod checks;
mod deploy;
mod workload;

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context};

use crate::image::{self, Image};
use crate::lab::{Case, CaseParams, Lab, Nic, NicModel};
use crate::qemu::accel::{self, AccelChoice};
use crate::qemu::{self, Accel, VmError};
use crate::report::{BootTiming, CaseReport, Readiness, Report, RunTiming, Versus, VmReport};
use crate::ui::Progress;
use crate::{filter, overlay, variants};

pub use boot::vhost_usable;

/// How to run a lab.
#[derive(Clone)]
pub struct RunOptions {
    /// Acceleration choice.
    pub accel: AccelChoice,
    /// A kernel to boot instead of the image's (for bisecting).
    pub kernel: Option<PathBuf>,
    /// Only cases whose name contains this.
    pub case_filter: Option<String>,
    /// Where to keep the evidence.
    pub artifacts: Option<PathBuf>,
    /// Directory of image recipes (`images/`).
    pub images_dir: PathBuf,
    /// Progress display.
    pub progress: Progress,
    /// Always boot the kernel: neither load nor save a VM state.
    pub cold_boot: bool,
}

/// What every boot of a run shares.
struct Prepared {
    qemu: PathBuf,
    image: Image,
    kernel: PathBuf,
    accel: Accel,
    vhost: bool,
    firmware: Option<PathBuf>,
    /// Whether VMs start from saved states (and save them): not for a
    /// `--kernel` of the user's own (each bisect step is another kernel),
    /// nor with `--cold-boot`.
    saved_states: bool,
    /// Image and acceleration phases.
    timing: RunTiming,
}

/// Seconds since the start and since the last lap: the phases of `timing`.
struct Clock {
    started: Instant,
    lap: Instant,
}

impl Clock {
    /// A clock started now.
    fn start() -> Clock {
        let now = Instant::now();
        Clock { started: now, lap: now }
    }

    /// Seconds since the last lap (or the start); a new lap begins.
    fn lap(&mut self) -> f64 {
        let now = Instant::now();
        let s = (now - self.lap).as_secs_f64();
        self.lap = now;
        s
    }

    /// Seconds since the start.
    fn total(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }
}

/// How long the warm-up case runs its workload: the first case of a pair,
/// once and unreported, before it is measured. Under TCG the first bulk
/// transfer through a freshly deployed datapath translates its code and
/// touches its memory for the first time: measured here, the first case of a
/// swarm pair reached 10-35 % less than the same case run again.
const WARM_UP: std::time::Duration = std::time::Duration::from_secs(1);

/// What a booted pair is set up with: a NIC (`None`: each VM's own) and an
/// overlay (`None`: the lab's). Filters are compared on the same pair: they
/// take turns, each deployed before its case and removed before another
/// filter's.
type BootKey = (Option<Nic>, Option<String>);

/// Consecutive cases that share a boot key, and so a booted pair; in each,
/// the cases that differ only in their filter run one after the other
/// ([`filters_side_by_side`]).
fn boot_groups(cases: Vec<Case>) -> Vec<(BootKey, Vec<Case>)> {
    let mut groups: Vec<(BootKey, Vec<Case>)> = Vec::new();
    for case in cases {
        let key = (case.params.nic.clone(), case.params.overlay.clone());
        match groups.last_mut() {
            Some((k, group)) if *k == key => group.push(case),
            _ => groups.push((key, vec![case])),
        }
    }
    groups.into_iter().map(|(key, group)| (key, filters_side_by_side(group))).collect()
}

/// `cases` with those that differ only in their filter next to each other
/// (in the axis's order), the rest in their order: a filter's case runs
/// right after its `none` sibling, so that the machine's drift during a run
/// hardly enters their ratio (each filter switch costs a removal and a
/// deploy: 0.5-1.5 s under TCG).
fn filters_side_by_side(cases: Vec<Case>) -> Vec<Case> {
    let rest = |c: &Case| CaseParams { filter: None, ..c.params.clone() };
    let mut order: Vec<CaseParams> = Vec::new();
    for c in &cases {
        if !order.contains(&rest(c)) {
            order.push(rest(c));
        }
    }
    order.iter().flat_map(|p| cases.iter().filter(|c| rest(c) == *p).cloned().collect::<Vec<_>>()).collect()
}

/// The cases `--case` selects.
fn selected_cases(lab: &Lab, opts: &RunOptions) -> anyhow::Result<Vec<Case>> {
    let cases: Vec<Case> = lab
        .cases()
        .into_iter()
        .filter(|c| opts.case_filter.as_ref().is_none_or(|f| c.name.contains(f.as_str())))
        .collect();
    if cases.is_empty() {
        bail!("no case matches --case {:?}", opts.case_filter.as_deref().unwrap_or(""));
    }
    for nic in lab.vms.iter().map(|v| &v.nic).chain(cases.iter().filter_map(|c| c.params.nic.as_ref())) {
        if let (NicModel::Vfio, Some(host)) = (nic.model, &nic.host) {
            qemu::check_vfio(host).map_err(|why| anyhow::anyhow!("vfio NIC: {why}"))?;
        }
    }
    Ok(cases)
}

/// Builds (or finds) the image, checks it has what the lab's variants need,
/// and probes the acceleration; returns the notice when KVM is not usable.
async fn prepare(lab: &Lab, opts: &RunOptions, qemu_bin: PathBuf) -> anyhow::Result<(Prepared, Option<String>)> {
    let progress = &opts.progress;
    let mut clock = Clock::start();
    let recipe = lab.image_recipe(&opts.images_dir);
    progress.phase(&format!("image {}", recipe.display()));
    let image = {
        let (recipe, progress) = (recipe.clone(), progress.clone());
        tokio::task::spawn_blocking(move || image::build(&recipe, &progress)).await?
    }
    .with_context(|| format!("cannot build the image from {}", recipe.display()))?;
    variants::check_image(lab, &opts.images_dir)?;
    let kernel = opts.kernel.clone().unwrap_or_else(|| image.kernel.clone());
    if !kernel.is_file() {
        bail!("kernel {} does not exist", kernel.display());
    }
    let image_s = clock.lap();
    progress.phase("probing acceleration");
    let (accel, notice) = {
        let (q, k, choice) = (qemu_bin.clone(), kernel.clone(), opts.accel);
        tokio::task::spawn_blocking(move || accel::resolve(choice, &q, &k)).await?
    }
    .map_err(|why| anyhow::anyhow!("--accel kvm was requested but KVM cannot run guests here: {why}"))?;
    // Once per process: `vlab bench` runs the lab again and again with the
    // same (cached) probe result.
    static NOTICE: std::sync::Once = std::sync::Once::new();
    if let Some(why) = &notice {
        NOTICE.call_once(|| eprintln!("vlab: KVM is not usable ({why}); using TCG (slower)"));
    }
    let timing = RunTiming { image_s, probe_s: clock.lap(), boots: Vec::new() };
    let prepared = Prepared {
        qemu: qemu_bin,
        image,
        kernel,
        accel,
        vhost: vhost_usable(),
        firmware: qemu::find_firmware(),
        saved_states: !opts.cold_boot && opts.kernel.is_none(),
        timing,
    };
    Ok((prepared, notice))
}

/// What the boot groups of a run produced.
#[derive(Default)]
struct Results {
    vms: Vec<VmReport>,
    cases: Vec<CaseReport>,
    ready: Vec<Readiness>,
    /// The guest's `uname -r` (the first boot's).
    kernel: Option<String>,
    boots: Vec<BootTiming>,
    /// Groups run again after an emulator fault, one line each.
    emulator_faults: Vec<String>,
}

/// How often a group's pair is booted and deployed when a guest oopses on an
/// `int3` that its memory no longer holds under TCG (see
/// [`qemu::stale_int3_oops`]): an emulator fault, not the kernel's, and not
/// repeatable. Elsewhere, and the second time, the crash fails the run.
const GROUP_ATTEMPTS: u32 = 2;

/// Runs a lab; check failures are in the report, errors mean the lab could not run.
pub async fn run(lab: &Lab, opts: &RunOptions) -> anyhow::Result<Report> {
    let started = Instant::now();
    let qemu_bin = qemu::find_qemu().map_err(anyhow::Error::msg)?;
    let qemu_version = qemu::qemu_version(&qemu_bin).unwrap_or_else(|| "unknown".into());
    let cases = selected_cases(lab, opts)?;
    let (prepared, notice) = prepare(lab, opts, qemu_bin).await?;
    if let Some(dir) = &opts.artifacts {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create artifacts directory {}", dir.display()))?;
    }
    let groups = boot_groups(cases);
    let several = groups.len() > 1;
    let mut results = Results::default();
    for ((nic, overlay), group) in groups {
        let mut label = String::new();
        if several {
            for part in [nic.as_ref().map(Nic::label), overlay.clone()].into_iter().flatten() {
                label.push_str(&format!("-{part}"));
            }
        }
        let mut group_lab = lab.clone();
        if let Some(o) = &overlay {
            group_lab = group_lab.with_overlay(o);
        }
        // The pair is deployed with its first case's filter.
        group_lab = group_lab.with_filter(group[0].params.filter(&group_lab));
        let mut attempt = 1;
        loop {
            let Err(e) =
                run_group(&group_lab, &prepared, nic.as_ref(), &group, opts, label.clone(), &mut results).await
            else {
                break;
            };
            let exit = e.downcast_ref::<boot::GuestGone>().map(|g| &g.exit).or_else(|| e.downcast_ref::<VmError>());
            match exit.and_then(VmError::stale_int3) {
                Some((vm, oops)) if prepared.accel == Accel::Tcg && attempt < GROUP_ATTEMPTS => {
                    let fault = format!(
                        "`{vm}`{label} crashed on an emulator fault: {oops}, an int3 no longer in memory \
                         (QEMU TCG ran a stale translation of code the kernel was patching)"
                    );
                    eprintln!("vlab: {fault}; booting the pair again");
                    if let Some(dir) = &opts.artifacts {
                        let log = |suffix: &str| dir.join(format!("serial-{vm}{label}{suffix}.log"));
                        let _ = std::fs::rename(log(""), log("-stale-int3"));
                    }
                    results.emulator_faults.push(fault);
                    attempt += 1;
                }
                _ => return Err(e),
            }
        }
    }
    opts.progress.finish();
    crate::report::compare_with(&mut results.cases, Versus::Overlay, overlay::REFERENCE);
    crate::report::compare_with(&mut results.cases, Versus::Filter, filter::REFERENCE);
    Ok(Report {
        lab: lab.name.clone(),
        lab_file: lab.source.display().to_string(),
        accel: prepared.accel.to_string(),
        accel_notice: notice,
        kernel: results.kernel.unwrap_or_else(|| prepared.image.kernel_release.clone()),
        qemu: qemu_version,
        image: format!("{}-{}", prepared.image.name, prepared.image.key),
        overlay: lab.overlay.clone(),
        filter: lab.filter.clone(),
        vms: results.vms,
        passed: results.cases.iter().all(|c| c.passed),
        summaries: summaries(lab, &results.cases),
        cases: results.cases,
        ready: results.ready,
        emulator_faults: results.emulator_faults,
        wall_s: started.elapsed().as_secs_f64(),
        timing: RunTiming { boots: results.boots, ..prepared.timing.clone() },
    })
}

/// Boots the pair for one group, deploys, runs its cases and tears it down.
async fn run_group(
    lab: &Lab,
    prepared: &Prepared,
    nic: Option<&Nic>,
    cases: &[Case],
    opts: &RunOptions,
    label: String,
    results: &mut Results,
) -> anyhow::Result<()> {
    let mut clock = Clock::start();
    let mut rt = boot::boot(lab, prepared, nic, opts, label).await?;
    let boot_s = clock.lap();
    let mut deploy_s = 0.0;
    // Filters deployed after the first count as deploy time, not the cases'.
    let mut switch_s = 0.0;
    let mut warm_up_s = 0.0;
    let outcome = async {
        let (ready, settled) = deploy::deploy(lab, &mut rt, opts).await?;
        deploy_s = clock.lap();
        let kernel = rt.vms[0].guest.run("uname -r").await?.stdout_text().trim().to_string();
        if let Some(first) = cases.first() {
            opts.progress.phase(&format!("warming up with case {} ({WARM_UP:?})", first.name));
            let started = Instant::now();
            let warm_lab = lab.warm_up(first.params.filter(lab), WARM_UP);
            case::run_case(&warm_lab, &rt, first, None, case::Run::WarmUp)
                .await
                .with_context(|| format!("warming up with case `{}`", first.name))?;
            warm_up_s = started.elapsed().as_secs_f64();
        }
        let mut reports = Vec::new();
        let mut case_lab = lab.clone();
        for case in cases {
            let filter = case.params.filter(lab);
            if filter != case_lab.filter {
                let started = Instant::now();
                deploy::switch_filter(&case_lab, &rt, filter, opts).await?;
                case_lab = lab.with_filter(filter);
                switch_s += started.elapsed().as_secs_f64();
            }
            opts.progress.phase(&format!("case {}", case.name));
            let report = case::run_case(&case_lab, &rt, case, opts.artifacts.as_deref(), case::Run::Measured)
                .await
                .with_context(|| format!("case `{}`", case.name))?;
            reports.push(report);
        }
        for vm in &mut rt.vms {
            vm.qemu.check_running()?;
        }
        anyhow::Ok((ready, settled, kernel, reports))
    }
    .await;
    let (ready, settled, kernel, reports) = match outcome {
        Ok(r) => r,
        Err(e) => return Err(boot::explain_vm_exit(&mut rt, e).await),
    };
    results.boots.push(BootTiming {
        boot_s,
        deploy_s: deploy_s + switch_s,
        settled,
        warm_up_s,
        cases_s: clock.lap() - switch_s - warm_up_s,
    });
    results.kernel.get_or_insert(kernel);
    results.ready.extend(ready);
    results.cases.extend(reports);
    results.vms.extend(rt.vms.iter().map(|v| v.report.clone()));
    Ok(())
}

/// The tables the run's variants add for people, from their sections.
fn summaries(lab: &Lab, cases: &[CaseReport]) -> Vec<String> {
    let mut out = Vec::new();
    let overlays = lab.overlays().into_iter().map(|n| overlay::get(n) as &dyn overlay::Variant);
    for v in overlays.chain(lab.filters().into_iter().map(|n| filter::get(n) as &dyn overlay::Variant)) {
        let sections: Vec<(&str, &serde_json::Value)> = cases
            .iter()
            .flat_map(|c| {
                [&c.variant.overlay, &c.variant.filter]
                    .into_iter()
                    .flatten()
                    .filter(|s| s.name == v.name())
                    .map(move |s| (c.name.as_str(), &s.evidence))
            })
            .collect();
        out.extend(v.summary(&sections));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The swarm lab: one pair per overlay, and in each, every filter's case
    /// right after its `none` sibling.
    #[test]
    fn filters_run_next_to_their_none_sibling_on_one_pair() {
        let path = std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/labs/swarm.toml"));
        let lab = variants::load_lab(path).unwrap();
        let groups = boot_groups(lab.cases());
        let names: Vec<(Option<String>, Vec<String>)> = groups
            .iter()
            .map(|((_, overlay), cases)| {
                let short = cases.iter().map(|c| c.name.split_once(',').unwrap().1.to_string()).collect();
                (overlay.clone(), short)
            })
            .collect();
        let each = [
            "filter=none,streams=1",
            "filter=iptables,streams=1",
            "filter=nftables,streams=1",
            "filter=none,streams=4",
            "filter=iptables,streams=4",
            "filter=nftables,streams=4",
        ]
        .map(String::from)
        .to_vec();
        assert_eq!(names, [(Some("baseline".into()), each.clone()), (Some("swarm".into()), each)]);
    }
}
