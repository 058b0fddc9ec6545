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
pub mod kconfig;
mod matrix;
pub mod record;
pub mod repro;
pub mod soak;
mod workload;

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context};

use crate::image::{self, Image};
use crate::lab::{Case, CaseParams, Lab, Nic, NicModel};
use crate::qemu::accel::{self, AccelChoice};
use crate::qemu::{self, Accel, TcgThread, VmError};
use crate::report::{BootTiming, CaseReport, Readiness, Report, RunTiming, Versus};
use crate::ui::Progress;
use crate::{filter, overlay, variants};

pub use boot::{remove_stale_run_dirs, vhost_usable};

/// How to run a lab.
#[derive(Clone)]
pub struct RunOptions {
    /// Acceleration choice.
    pub accel: AccelChoice,
    /// Kernels to boot instead of the image's (bisecting: one; comparing
    /// kernels: each gets its own pairs, which take turns with the others'
    /// in every round); empty: the image's.
    pub kernels: Vec<GuestKernel>,
    /// The commits `kernels` were built from, in their order (for the
    /// reports; as many as given).
    pub kernel_commits: Vec<String>,
    /// Appended to every guest's kernel command line.
    pub kernel_cmdline: Vec<String>,
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
    /// How often each case runs (rounds over all pairs, interleaved).
    pub repeat: u32,
    /// Write each failed case's reproducer here (`vlab repro`), and run its
    /// namespace form in the case's guest.
    pub repro: Option<PathBuf>,
    /// Also every passed case's.
    pub repro_all: bool,
}

/// A kernel to boot instead of the image's.
#[derive(Clone, Debug, PartialEq)]
pub struct GuestKernel {
    /// The kernel (bzImage, vmlinuz, or vmlinux for a PVH boot); `None`:
    /// the image's, with other modules.
    pub image: Option<PathBuf>,
    /// Its module tree (`INSTALL_MOD_PATH` of `make modules_install`),
    /// installed into every VM's copy-on-write root disk (through the
    /// initramfs) for a kernel that is not fully built in.
    pub modules: Option<PathBuf>,
}

/// What every boot of a run shares (one per kernel).
#[derive(Clone)]
struct Prepared {
    qemu: PathBuf,
    image: Image,
    kernel: PathBuf,
    /// Appended to the guests' kernel command line (`--kernel-cmdline`).
    cmdline: Vec<String>,
    /// The initramfs with `--modules` appended (`image.initramfs` names it).
    _modules: Option<std::sync::Arc<tempfile::TempPath>>,
    accel: Accel,
    /// How TCG runs each VM's vCPUs (see [`tcg_thread`]).
    tcg_thread: TcgThread,
    vhost: bool,
    firmware: Option<PathBuf>,
    /// Whether VMs are set up to be saved (SeaBIOS and a VM generation ID,
    /// see `spawn_vms`): not for a `--kernel` of the user's own (each bisect
    /// step is another kernel), nor with `--cold-boot`.
    saved_states: bool,
    /// Whether such VMs start from a saved state when there is one, and
    /// save theirs after a cold boot (`vlab soak` boots them cold, as on a
    /// machine without saved states, and saves nothing).
    use_states: bool,
    /// Image and acceleration phases.
    timing: RunTiming,
    /// The kernel's configuration, read from the first pair that booted it
    /// (empty when it keeps none); every later pair of any lab booting the
    /// same kernel file reuses it.
    kernel_config: std::sync::Arc<std::sync::OnceLock<String>>,
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

/// What a booted pair is set up with: a NIC (`None`: each VM's own), an
/// underlay MTU and an overlay (`None`: the lab's). Filters are compared on
/// the same pair: they take turns, each deployed before its case and removed
/// before another filter's.
type BootKey = (Option<Nic>, Option<u32>, Option<String>);

/// Consecutive cases that share a boot key, and so a booted pair; in each,
/// the cases that differ only in their filter run one after the other
/// ([`filters_side_by_side`]).
fn boot_groups(cases: Vec<Case>) -> Vec<(BootKey, Vec<Case>)> {
    let mut groups: Vec<(BootKey, Vec<Case>)> = Vec::new();
    for case in cases {
        let key = (case.params.nic.clone(), case.params.mtu, case.params.overlay.clone());
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
    Ok(cases)
}

/// The host functions that vfio NICs of `lab` and its `cases` pass through
/// must be there and bound to vfio-pci.
fn check_vfio_nics(lab: &Lab, cases: &[Case]) -> anyhow::Result<()> {
    for nic in lab.vms.iter().map(|v| &v.nic).chain(cases.iter().filter_map(|c| c.params.nic.as_ref())) {
        if let (NicModel::Vfio, Some(host)) = (nic.model, &nic.host) {
            qemu::check_vfio(host).map_err(|why| anyhow::anyhow!("vfio NIC: {why}"))?;
        }
    }
    Ok(())
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
    let kernel = opts.kernels.first().and_then(|k| k.image.clone()).unwrap_or_else(|| image.kernel.clone());
    for k in opts.kernels.iter().filter_map(|k| k.image.as_ref()).chain([&kernel]) {
        if !k.is_file() {
            bail!("kernel {} does not exist", k.display());
        }
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
        kernel: image.kernel.clone(),
        image,
        cmdline: opts.kernel_cmdline.clone(),
        _modules: None,
        accel,
        tcg_thread: tcg_thread(lab)?,
        vhost: vhost_usable(),
        firmware: qemu::find_firmware(),
        saved_states: !opts.cold_boot && opts.kernels.is_empty(),
        use_states: true,
        timing,
        kernel_config: Default::default(),
    };
    Ok((prepared, notice))
}

/// Initramfs files with a module tree appended, by (the image's initramfs,
/// the tree): labs of one image share them.
type ModuleInitramfs = std::collections::HashMap<(PathBuf, PathBuf), std::sync::Arc<tempfile::TempPath>>;

/// `prepared` (the image's) booting `kernel` instead, with an initramfs
/// that carries its modules.
fn with_kernel(
    prepared: &Prepared,
    lab: &Lab,
    kernel: &GuestKernel,
    opts: &RunOptions,
    made: &mut ModuleInitramfs,
) -> anyhow::Result<Prepared> {
    let mut p =
        Prepared { kernel: kernel.image.clone().unwrap_or_else(|| prepared.kernel.clone()), ..prepared.clone() };
    if let Some(dir) = &kernel.modules {
        let key = (prepared.image.initramfs.clone(), dir.clone());
        let file = match made.get(&key) {
            Some(file) => file.clone(),
            None => {
                let recipe = lab.image_recipe(&opts.images_dir);
                let (release, file) =
                    image::initramfs_with_modules(&prepared.image, &recipe, dir).map_err(anyhow::Error::msg)?;
                opts.progress.phase(&format!("modules of {release} from {}", dir.display()));
                made.entry(key).or_insert_with(|| std::sync::Arc::new(file)).clone()
            }
        };
        p.image.initramfs = file.to_path_buf();
        p._modules = Some(file);
    }
    Ok(p)
}

/// How TCG runs each VM's vCPUs: as `$VLAB_TCG_THREAD` says (`single` or
/// `multi`), else on one host thread per VM when the vCPUs of a pair
/// outnumber the host's cores, a thread per vCPU otherwise. MTTCG on an
/// oversubscribed host only adds contention: measured here (2 cores, two
/// 2-vCPU VMs), one thread per VM boots a pair in 4-5 s instead of 6 and
/// moves as much; and with one thread per VM no vCPU runs while another
/// changes the memory map or patches kernel code, the two races that crash
/// QEMU (`iotlb_to_section`) or the guest (a stale `int3`) under MTTCG.
fn tcg_thread(lab: &Lab) -> anyhow::Result<TcgThread> {
    match std::env::var("VLAB_TCG_THREAD").as_deref() {
        Ok("single") => return Ok(TcgThread::Single),
        Ok("multi") => return Ok(TcgThread::Multi),
        Ok(other) => bail!("VLAB_TCG_THREAD={other}: use `single` or `multi`"),
        Err(_) => {}
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let vcpus: usize = lab.vms.iter().map(|vm| vm.cpus as usize).sum();
    Ok(if vcpus > cores { TcgThread::Single } else { TcgThread::Multi })
}

/// How often a pair is booted and deployed, or its round of cases run, when
/// a guest oopses on an `int3` that its memory no longer holds under TCG
/// (see [`qemu::stale_int3_oops`]): an emulator fault, not the kernel's, and
/// not repeatable. Elsewhere, and the second time, the crash fails the run.
const PAIR_ATTEMPTS: u32 = 2;

/// Why a run failed because of the guest, as one line: a guest kernel
/// panicked or oopsed (or reset the VM), stalled while booting every time,
/// never reached vlab's init or hung, or a guest refused a step of the lab (a
/// command vlab ran in it failed: a device, route or rule its kernel would
/// not take). `None` when the failure is vlab's or the host's (QEMU missing,
/// killed or failing to start, an image build, the host network, a kernel
/// that lacks an option the lab needs) or the emulator's (see
/// [`qemu::stale_int3_oops`] and [`VmError::emulator_crash`]). Testing a kernel (`git bisect run`), the
/// former makes it a bad kernel (`vlab run --on-crash bad`).
pub fn guest_failure(e: &anyhow::Error) -> Option<String> {
    use crate::qemu::agent::AgentError;
    use crate::qemu::VmError;
    for cause in e.chain() {
        let vm_error =
            cause.downcast_ref::<boot::GuestGone>().map(|g| &g.exit).or_else(|| cause.downcast_ref::<VmError>());
        if let Some(v) = vm_error {
            return match v {
                VmError::Exited { stale_int3: Some(_), .. } | VmError::Spawn { .. } => None,
                // QEMU's own crash (a failed assertion) is never the kernel's.
                v @ VmError::Exited { .. } if v.emulator_crash().is_some() => None,
                VmError::Exited { vm, status, serial_tail, .. } => match qemu::kernel_crash_line(serial_tail) {
                    Some(line) => Some(format!("`{vm}`: {line}")),
                    // panic=-1 reboots at once, and -no-reboot makes that QEMU's exit 0.
                    None if status.code() == Some(0) => Some(format!("`{vm}`: its kernel reset the VM")),
                    None => None,
                },
                VmError::Stalled { vm, why, .. } => Some(format!("`{vm}` stalled while booting ({why})")),
            };
        }
        if let Some(c) = cause.downcast_ref::<crate::guest::CommandFailed>() {
            let step = c.step.as_ref().map(|s| format!(" ({s})")).unwrap_or_default();
            return Some(format!("`{}` refused a step of the lab{step}: exit code {}", c.vm, c.code));
        }
        if cause.is::<kconfig::MissingOptions>() {
            return None;
        }
        match cause.downcast_ref::<AgentError>() {
            Some(e @ AgentError::NoAnswer(_)) => return Some(format!("a guest never reached vlab's init: {e}")),
            Some(e @ (AgentError::Hung(..) | AgentError::Poisoned)) => return Some(format!("a guest hung: {e}")),
            _ => {}
        }
    }
    None
}

/// QEMU's own crash that ended a run, as one line (see
/// [`VmError::emulator_crash`]): after the boots it allows at boot, or
/// once the pair was up.
pub fn emulator_crash(e: &anyhow::Error) -> Option<String> {
    boot::vm_error(e).and_then(|v| v.emulator_crash().map(|(_, line)| line))
}

/// A boot group: the cases that share a booted pair, and how it is set up.
#[derive(Clone)]
struct Group {
    /// The lab with the group's overlay, and its first case's filter (the
    /// one the pair is deployed with).
    lab: Lab,
    nic: Option<Nic>,
    cases: Vec<Case>,
    /// Distinguishes its serial logs from other pairs' (empty with one).
    label: String,
    /// Where its cases keep their evidence (a directory per lab in a study).
    artifacts: Option<PathBuf>,
}

/// A group's pair, booted and deployed, and what it has measured.
struct Pair {
    rt: boot::LabRuntime,
    /// The lab as its last case left it (the filter deployed now).
    case_lab: Lab,
    timing: BootTiming,
    ready: Vec<Readiness>,
    /// The guest's `uname -r`.
    kernel: String,
}

/// The boot groups of `cases`, each with its lab and label.
fn groups(lab: &Lab, cases: Vec<Case>) -> Vec<Group> {
    let groups = boot_groups(cases);
    let several = groups.len() > 1;
    groups
        .into_iter()
        .map(|((nic, mtu, overlay), cases)| {
            let mut label = String::new();
            if several {
                let mtu_label = mtu.map(|m| format!("mtu{m}"));
                for part in [nic.as_ref().map(Nic::label), mtu_label, overlay.clone()].into_iter().flatten() {
                    label.push_str(&format!("-{part}"));
                }
            }
            let group_lab = overlay.as_deref().map_or_else(|| lab.clone(), |o| lab.with_overlay(o));
            let group_lab = mtu.map_or_else(|| group_lab.clone(), |m| group_lab.with_mtu(m));
            let group_lab = group_lab.with_filter(cases[0].params.filter(&group_lab));
            Group { lab: group_lab, nic, cases, label, artifacts: None }
        })
        .collect()
}

/// The emulator fault that `e` reports, as a line for people, when it is one
/// that a new pair gets past (see [`PAIR_ATTEMPTS`]).
fn emulator_fault(e: &anyhow::Error, prepared: &Prepared, label: &str) -> Option<(String, String)> {
    let exit = e.downcast_ref::<boot::GuestGone>().map(|g| &g.exit).or_else(|| e.downcast_ref::<VmError>());
    let (vm, oops) = exit.and_then(VmError::stale_int3)?;
    (prepared.accel == Accel::Tcg).then(|| {
        let line = format!(
            "`{vm}`{label} crashed on an emulator fault: {oops}, an int3 no longer in memory \
             (QEMU TCG ran a stale translation of code the kernel was patching)"
        );
        (vm.to_string(), line)
    })
}

/// Notes an emulator fault: a notice, the crashed console kept aside.
fn note_fault(vm: &str, line: String, group: &Group, opts: &RunOptions, faults: &mut Vec<String>) {
    eprintln!("vlab: {line}; booting the pair again");
    if let Some(dir) = &opts.artifacts {
        let log = |suffix: &str| dir.join(format!("serial-{vm}{}{suffix}.log", group.label));
        let _ = std::fs::rename(log(""), log("-stale-int3"));
    }
    faults.push(line);
}

/// [`start_pair`], once more after an emulator fault.
async fn start_pair_again(
    group: &Group,
    prepared: &Prepared,
    opts: &RunOptions,
    faults: &mut Vec<String>,
) -> anyhow::Result<Pair> {
    let mut attempt = 1;
    loop {
        match start_pair(group, prepared, opts).await {
            Ok(pair) => return Ok(pair),
            Err(e) => match emulator_fault(&e, prepared, &group.label) {
                Some((vm, line)) if attempt < PAIR_ATTEMPTS => note_fault(&vm, line, group, opts, faults),
                _ => return Err(e),
            },
        }
        attempt += 1;
    }
}

/// Fails with [`kconfig::MissingOptions`] when the booted kernel lacks an
/// option the group's cases need; a kernel that keeps no configuration is
/// not checked (a notice says so).
async fn check_kernel_options(
    group: &Group,
    prepared: &Prepared,
    rt: &boot::LabRuntime,
    release: &str,
) -> anyhow::Result<()> {
    let config = match prepared.kernel_config.get() {
        Some(config) => config,
        None => {
            let read = rt.vms[0].guest.run(kconfig::READ_CONFIG).await?.stdout_text();
            if read.trim().is_empty() {
                eprintln!(
                    "vlab: kernel {release} keeps no configuration (no /proc/config.gz, CONFIG_IKCONFIG_PROC): \
                     the options the lab needs are not checked"
                );
            }
            prepared.kernel_config.get_or_init(|| read)
        }
    };
    if config.trim().is_empty() {
        return Ok(());
    }
    let missing = kconfig::missing(config, &kconfig::needed(&group.lab, &group.cases, group.nic.as_ref()));
    if missing.is_empty() {
        Ok(())
    } else {
        Err(kconfig::MissingOptions { release: release.to_string(), missing }.into())
    }
}

/// Boots a group's pair, deploys it and warms it up with its first case.
async fn start_pair(group: &Group, prepared: &Prepared, opts: &RunOptions) -> anyhow::Result<Pair> {
    let lab = &group.lab;
    let mut clock = Clock::start();
    let mut rt = boot::boot(lab, prepared, group.nic.as_ref(), opts, group.label.clone()).await?;
    let boot_s = clock.lap();
    let (mut deploy_s, mut warm_up_s) = (0.0, 0.0);
    let started = async {
        let kernel = rt.vms[0].guest.run("uname -r").await?.stdout_text().trim().to_string();
        check_kernel_options(group, prepared, &rt, &kernel).await?;
        let (ready, settled) = deploy::deploy(lab, &mut rt, opts).await?;
        deploy_s = clock.lap();
        let first = &group.cases[0];
        opts.progress.phase(&format!("warming up with case {} ({WARM_UP:?})", first.name));
        let warm_lab = lab.warm_up(first.params.filter(lab), WARM_UP);
        case::run_case(&warm_lab, &rt, first, None, case::Run::WarmUp)
            .await
            .with_context(|| format!("warming up with case `{}`", first.name))?;
        warm_up_s = clock.lap();
        anyhow::Ok((ready, settled, kernel))
    }
    .await;
    let (ready, settled, kernel) = match started {
        Ok(r) => r,
        Err(e) => return Err(boot::explain_vm_exit(&mut rt, e).await),
    };
    let timing = BootTiming { boot_s, deploy_s, settled, warm_up_s, cases_s: 0.0 };
    Ok(Pair { rt, case_lab: lab.clone(), timing, ready, kernel })
}

/// Runs a group's cases once on its pair (round `round`, from 1, in the
/// round's [`turns`]), switching filters between cases as they need; returns
/// their reports in the group's order.
async fn run_round(group: &Group, pair: &mut Pair, opts: &RunOptions, round: u32) -> anyhow::Result<Vec<CaseReport>> {
    let artifacts = group.artifacts.as_ref().map(|d| crate::report::round_evidence(d, round));
    let outcome = async {
        let mut reports = vec![None; group.cases.len()];
        for c in turns(group.cases.len(), round) {
            let case = &group.cases[c];
            let filter = case.params.filter(&group.lab);
            if filter != pair.case_lab.filter {
                let started = Instant::now();
                deploy::switch_filter(&pair.case_lab, &pair.rt, filter, opts).await?;
                pair.case_lab = group.lab.with_filter(filter);
                pair.timing.deploy_s += started.elapsed().as_secs_f64();
            }
            let shown = if opts.repeat > 1 { format!(" (repetition {round}/{})", opts.repeat) } else { String::new() };
            opts.progress.phase(&format!("case {}{shown}", case.name));
            let started = Instant::now();
            let report = case::run_case(&pair.case_lab, &pair.rt, case, artifacts.as_deref(), case::Run::Measured)
                .await
                .with_context(|| format!("case `{}`", case.name))?;
            pair.timing.cases_s += started.elapsed().as_secs_f64();
            if let Some(dir) = opts.repro.as_ref().filter(|_| !report.passed || opts.repro_all) {
                opts.progress.phase(&format!("reproducer of {}", case.name));
                let guest = &pair.rt.vms[0].guest;
                // With several kernels, each kernel's under its release.
                let dir = if opts.kernels.len() > 1 { dir.join(&pair.kernel) } else { dir.clone() };
                let evidence = artifacts.as_ref().map(|a| a.join(&case.name));
                repro::of_case(&dir, &pair.case_lab, case, &report, guest, (&pair.kernel, ""), evidence.as_deref())
                    .await
                    .with_context(|| format!("the reproducer of case `{}`", case.name))?;
            }
            reports[c] = Some(report);
        }
        for vm in &mut pair.rt.vms {
            vm.qemu.check_running()?;
        }
        anyhow::Ok(reports.into_iter().flatten().collect())
    }
    .await;
    match outcome {
        Ok(reports) => Ok(reports),
        Err(e) => Err(boot::explain_vm_exit(&mut pair.rt, e).await),
    }
}

/// The order in which `n` slots take their turns in round `round` (from 1):
/// forwards in odd rounds, backwards in even ones (A B C, C B A, A B C ...),
/// so that neither a slot's place in a round nor a drift of the machine
/// during a round favours one slot over another in paired comparisons.
fn turns(n: usize, round: u32) -> Vec<usize> {
    if round % 2 == 1 {
        (0..n).collect()
    } else {
        (0..n).rev().collect()
    }
}

/// Runs a lab; check failures are in the report, errors mean the lab could not run.
///
/// Every group's pair is booted, deployed and warmed up first; then the
/// groups take turns, each running all its cases once per round, for
/// `--repeat` rounds (A B C, C B A, A B C ..., the cases in a pair
/// likewise), so that the drift of a shared machine hits every variant
/// alike. With several pairs, those not running are paused (their vCPUs
/// stopped), so that they take no CPU from the measured one.
pub async fn run(lab: &Lab, opts: &RunOptions) -> anyhow::Result<Report> {
    Ok(run_kernels(lab, opts).await?.remove(0))
}

/// [`run`] with each of `opts.kernels` (or the image's kernel): every group
/// gets a pair per kernel, the kernels' pairs of a group run one after the
/// other in each round, and each kernel gets its report (in the order given).
pub async fn run_kernels(lab: &Lab, opts: &RunOptions) -> anyhow::Result<Vec<Report>> {
    let cases = selected_cases(lab, opts)?;
    run_labs(&[(lab.clone(), cases)], opts).await
}

/// Several labs in one run (a study), each with the cases to run: all their
/// pairs take turns in every round. Returns a report per lab and kernel,
/// lab by lab.
pub async fn run_labs(labs: &[(Lab, Vec<Case>)], opts: &RunOptions) -> anyhow::Result<Vec<Report>> {
    let started = Instant::now();
    let qemu_bin = qemu::find_qemu().map_err(anyhow::Error::msg)?;
    let qemu_version = qemu::qemu_version(&qemu_bin).unwrap_or_else(|| "unknown".into());
    if let Some(dir) = &opts.artifacts {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create artifacts directory {}", dir.display()))?;
    }
    // (lab, kernel) preparations: the image and the probe are cached after
    // the first; each kernel but the first is booted as given.
    let mut kernels: Vec<Vec<Prepared>> = Vec::new();
    let mut notice = None;
    // One configuration read per kernel file, whichever lab boots it first.
    let mut configs: std::collections::HashMap<PathBuf, std::sync::Arc<std::sync::OnceLock<String>>> =
        Default::default();
    let mut initramfs = ModuleInitramfs::new();
    for (lab, cases) in labs {
        check_vfio_nics(lab, cases)?;
        let (prepared, n) = prepare(lab, opts, qemu_bin.clone()).await?;
        notice = notice.or(n);
        let mut mine = opts
            .kernels
            .iter()
            .map(|k| with_kernel(&prepared, lab, k, opts, &mut initramfs))
            .collect::<anyhow::Result<Vec<Prepared>>>()?;
        if mine.is_empty() {
            mine.push(prepared);
        }
        for p in &mut mine {
            p.kernel_config = configs.entry(p.kernel.clone()).or_default().clone();
        }
        kernels.push(mine);
    }
    // (lab, kernel, group) in the order they take turns.
    let mut slots: Vec<(usize, usize, Group)> = Vec::new();
    for (l, (lab, cases)) in labs.iter().enumerate() {
        for group in groups(lab, cases.clone()) {
            for k in 0..kernels[l].len() {
                let mut g = group.clone();
                let kernel = (kernels[l].len() > 1).then_some(k + 1);
                g.artifacts =
                    opts.artifacts.as_ref().map(|d| crate::report::lab_evidence(d, &lab.name, labs.len() > 1, kernel));
                if labs.len() > 1 {
                    g.label = format!("-{}{}", lab.name, g.label);
                }
                if kernels[l].len() > 1 {
                    g.label.push_str(&format!("-kernel{}", k + 1));
                }
                slots.push((l, k, g));
            }
        }
    }
    let pausing = slots.len() > 1;
    let mut faults = Vec::new();
    let mut pairs = Vec::new();
    for (l, k, group) in &slots {
        let pair = start_pair_again(group, &kernels[*l][*k], opts, &mut faults).await?;
        if pausing {
            pair.rt.pause().await?;
        }
        pairs.push(pair);
    }
    // rounds[r][s]: slot s's reports in round r.
    let mut rounds: Vec<Vec<Vec<CaseReport>>> = Vec::new();
    for round in 1..=opts.repeat.max(1) {
        let mut this_round = vec![Vec::new(); slots.len()];
        for s in turns(slots.len(), round) {
            let ((l, k, group), pair) = (&slots[s], &mut pairs[s]);
            let prepared = &kernels[*l][*k];
            let mut attempt = 1;
            let reports = loop {
                if pausing {
                    pair.rt.resume().await?;
                }
                match run_round(group, pair, opts, round).await {
                    Ok(reports) => break reports,
                    Err(e) => match emulator_fault(&e, prepared, &group.label) {
                        Some((vm, line)) if attempt < PAIR_ATTEMPTS => {
                            pair.rt.stop();
                            note_fault(&vm, line, group, opts, &mut faults);
                            let timing = pair.timing.clone();
                            *pair = start_pair_again(group, prepared, opts, &mut faults).await?;
                            pair.timing = timing;
                            attempt += 1;
                        }
                        _ => return Err(e),
                    },
                }
            };
            if pausing {
                pair.rt.pause().await?;
            }
            this_round[s] = reports;
        }
        rounds.push(this_round);
    }
    opts.progress.finish();
    let mut reports = Vec::new();
    for ((l, k), prepared) in
        kernels.iter().enumerate().flat_map(|(l, ks)| ks.iter().enumerate().map(move |(k, p)| ((l, k), p)))
    {
        let lab = &labs[l].0;
        let mine: Vec<usize> = (0..slots.len()).filter(|s| (slots[*s].0, slots[*s].1) == (l, k)).collect();
        let mut per_round: Vec<Vec<CaseReport>> =
            rounds.iter().map(|r| mine.iter().flat_map(|s| r[*s].clone()).collect()).collect();
        for cases in &mut per_round {
            crate::report::compare_with(cases, Versus::Overlay, overlay::REFERENCE);
            crate::report::compare_with(cases, Versus::Filter, filter::REFERENCE);
        }
        let cases = crate::report::combine_repetitions(per_round);
        let own: Vec<&Pair> = mine.iter().map(|s| &pairs[*s]).collect();
        let kernel = own.first().map_or_else(|| prepared.image.kernel_release.clone(), |p| p.kernel.clone());
        reports.push(Report {
            lab: lab.name.clone(),
            lab_file: lab.source.display().to_string(),
            accel: prepared.accel.to_string(),
            tcg_thread: (prepared.accel == Accel::Tcg).then_some(prepared.tcg_thread),
            accel_notice: notice.clone(),
            kernel,
            kernel_commit: opts.kernel_commits.get(k).cloned(),
            qemu: qemu_version.clone(),
            image: format!("{}-{}", prepared.image.name, prepared.image.key),
            overlay: lab.overlay.clone(),
            filter: lab.filter.clone(),
            repeat: opts.repeat.max(1),
            mtu: lab.mtu,
            vms: own.iter().flat_map(|p| p.rt.vms.iter().map(|v| v.report.clone())).collect(),
            passed: cases.iter().all(|c| c.passed),
            summaries: summaries(lab, &cases),
            cases,
            ready: own.iter().flat_map(|p| p.ready.clone()).collect(),
            emulator_faults: faults.clone(),
            wall_s: started.elapsed().as_secs_f64(),
            timing: RunTiming { boots: own.iter().map(|p| p.timing.clone()).collect(), ..prepared.timing.clone() },
        });
    }
    Ok(reports)
}

/// The tables the run's variants add for people, from their sections.
pub fn summaries(lab: &Lab, cases: &[CaseReport]) -> Vec<String> {
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

    /// Odd rounds run forwards, even ones backwards: over two rounds every
    /// slot has been first and last once.
    #[test]
    fn rounds_alternate_their_order() {
        assert_eq!(turns(3, 1), [0, 1, 2]);
        assert_eq!(turns(3, 2), [2, 1, 0]);
        assert_eq!(turns(3, 3), [0, 1, 2]);
        assert_eq!(turns(1, 2), [0]);
        assert!(turns(0, 1).is_empty());
    }

    /// The swarm lab: one pair per overlay, and in each, every filter's case
    /// right after its `none` sibling.
    #[test]
    fn filters_run_next_to_their_none_sibling_on_one_pair() {
        let path = std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/labs/swarm.toml"));
        let lab = variants::load_lab(path).unwrap();
        let groups = boot_groups(lab.cases());
        let names: Vec<(Option<String>, Vec<String>)> = groups
            .iter()
            .map(|((_, _, overlay), cases)| {
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
