//! Booting a lab's VMs: the underlay, one QEMU per VM with its NIC and a
//! copy-on-write disk, all in one process group, waiting for their agents;
//! a pair whose guest stalls while booting is booted once more.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context};

use super::{Prepared, RunOptions};
use crate::guest::Guest;
use crate::hostnet::LabNet;
use crate::lab::{Lab, Nic, NicModel, Vm};
use crate::measure::nic::OffloadState;
use crate::qemu::agent::Agent;
use crate::qemu::saved::{self, Qmp, Saved};
use crate::qemu::{NicBackend, NicSpec, QemuProcess, VmError, VmSpec};
use crate::report::{BootFault, BootRetry, Start, VmReport};
use crate::{filter, overlay};

/// One booted VM and everything it owns, released in field order.
pub(super) struct BootedVm {
    pub guest: Guest,
    pub qemu: QemuProcess,
    pub report: VmReport,
    pub nic: Nic,
    pub mac: String,
    /// The key to save its state under, after a cold boot.
    save_as: Option<String>,
    qmp: PathBuf,
    disk: PathBuf,
    _run_dir: tempfile::TempDir,
}

/// What the last probe of an interface found.
#[derive(Debug, Clone)]
pub(super) struct Probed {
    /// Its driver and channels: they do not change while the VMs run, so
    /// only the first case asks `ethtool -i` and `-l`.
    pub driver: Option<String>,
    pub channels: Option<u32>,
    /// Its offloads as read back: a case applies only what differs.
    pub offloads: BTreeMap<String, OffloadState>,
}

/// The last probe of each interface, by VM, container and device.
pub(super) type Probes = BTreeMap<(String, Option<String>, String), Probed>;

/// The running lab: VMs first, then the underlay they are attached to.
pub(super) struct LabRuntime {
    pub vms: Vec<BootedVm>,
    /// What the last probe of each interface found.
    pub probes: std::sync::Mutex<Probes>,
    /// The last case ended with its iperf3 and tcpdump processes gone: the
    /// next one need not look for leftovers.
    pub tidy: std::sync::atomic::AtomicBool,
    /// Where (each VM's uptime) the next case's kernel log window starts
    /// instead of its own start: the warm-up's start, so that what the
    /// kernel logged during the warm-up is judged with the first case.
    pub kernel_log_from: std::sync::Mutex<Option<std::collections::BTreeMap<String, f64>>>,
    _net: LabNet,
    artifacts: Option<PathBuf>,
    /// Distinguishes the serial logs of successive boots.
    boot_label: String,
}

impl Drop for LabRuntime {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Copies a guest's console log into the artifacts (QEMU should have stopped).
fn keep_serial_log(artifacts: Option<&Path>, vm: &str, boot_label: &str, qemu: &QemuProcess) {
    if let Some(dir) = artifacts {
        let _ = std::fs::copy(qemu.serial_path(), dir.join(format!("serial-{vm}{boot_label}.log")));
    }
}

impl LabRuntime {
    pub fn vm(&self, name: &str) -> &BootedVm {
        self.vms.iter().find(|v| v.report.name == name).expect("validated VM name")
    }

    /// Stops every QEMU and keeps the guests' consoles among the artifacts
    /// (what dropping it does; a pair replaced after a crash does it first,
    /// so that the crashed console can be kept aside).
    pub fn stop(&mut self) {
        for vm in &mut self.vms {
            vm.qemu.stop();
            keep_serial_log(self.artifacts.as_deref(), &vm.report.name, &self.boot_label, &vm.qemu);
        }
    }

    /// Stops every VM's vCPUs (QMP `stop`): a paused pair takes no CPU from
    /// the pair being measured, and its guests' clocks stand still.
    pub async fn pause(&self) -> anyhow::Result<()> {
        for vm in &self.vms {
            Qmp::connect(&vm.qmp).await?.stop().await.with_context(|| format!("pausing `{}`", vm.report.name))?;
        }
        Ok(())
    }

    /// Lets every VM run again (QMP `cont`).
    pub async fn resume(&self) -> anyhow::Result<()> {
        for vm in &self.vms {
            Qmp::connect(&vm.qmp).await?.cont().await.with_context(|| format!("resuming `{}`", vm.report.name))?;
        }
        Ok(())
    }
}

fn runtime_base() -> PathBuf {
    std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from).filter(|p| p.is_dir()).unwrap_or_else(std::env::temp_dir)
}

/// A VM's run directory (disk overlay, QMP and agent sockets, console log):
/// `vlab-<pid>-XXXXXX` under `base`, mode 0700 so that what QEMU creates in
/// it is the caller's alone. The pid lets a later run remove the directories
/// of a vlab that was killed ([`remove_stale_run_dirs`]).
fn run_dir(base: &Path) -> std::io::Result<tempfile::TempDir> {
    tempfile::Builder::new()
        .prefix(&format!("vlab-{}-", std::process::id()))
        .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o700))
        .tempdir_in(base)
}

/// Removes the run directories under `base` that this user's vlab processes
/// left when they were killed (SIGKILL leaves no chance to clean up): those
/// named `vlab-<pid>-*`, owned by this user, whose process is gone.
pub fn remove_stale_run_dirs(base: &Path) {
    use std::os::unix::fs::MetadataExt;
    // SAFETY: geteuid has no preconditions.
    let uid = unsafe { libc::geteuid() };
    let Ok(entries) = std::fs::read_dir(base) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) =
            name.strip_prefix("vlab-").and_then(|r| r.split('-').next()).and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        let ours = entry.metadata().is_ok_and(|m| m.is_dir() && m.uid() == uid);
        if ours && !Path::new(&format!("/proc/{pid}")).exists() {
            tracing::info!("removing {}, left by vlab process {pid}", entry.path().display());
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// Whether vhost-net can be used by this process.
pub fn vhost_usable() -> bool {
    std::fs::OpenOptions::new().read(true).write(true).open("/dev/vhost-net").is_ok()
}

fn create_overlay_disk(backing: &Path, disk: &Path) -> anyhow::Result<()> {
    let out = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
        .arg(backing)
        .arg(disk)
        .output()
        .context("cannot run qemu-img (run ci/setup)")?;
    if !out.status.success() {
        bail!("qemu-img create failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

/// How often a pair is booted at most: once, and twice more after a boot
/// that failed for a reason outside the lab and the kernel (see
/// [`boot_fault`]).
pub const BOOT_ATTEMPTS: u32 = 3;

/// Why a failed boot is worth another: QEMU itself crashed before the
/// agents answered (under TCG, QEMU 10.0 now and then fails an assertion in
/// `iotlb_to_section` while a guest boots), or a guest stalled (under TCG a
/// vCPU now and then stops getting its timer interrupt early in boot: an RCU
/// stall on its console, or no init after half the boot timeout). Neither
/// is the kernel's: the next boot of the same kernel is fine. A guest kernel
/// that panics, a QEMU that cannot start or a boot that times out is not
/// retried.
pub fn boot_fault(e: &anyhow::Error) -> Option<(BootFault, String)> {
    let vm_error = vm_error(e)?;
    if let Some((_, crash)) = vm_error.emulator_crash() {
        return Some((BootFault::EmulatorCrash, crash));
    }
    match vm_error {
        VmError::Stalled { vm, why, .. } => Some((BootFault::Stall, format!("`{vm}` stalled while booting ({why})"))),
        _ => None,
    }
}

/// [`boot_once`], again after a boot fault (see [`boot_fault`]), at most
/// [`BOOT_ATTEMPTS`] times in all. Each failed boot's consoles are kept as
/// `serial-<vm>-boot<N>.log`, and a crashed QEMU's message as
/// `qemu-<vm>-boot<N>.stderr`; every VM's report lists the failed boots.
/// A fault on every boot fails the run (exit 125) with the last one's error.
pub(super) async fn boot(
    lab: &Lab,
    p: &Prepared,
    nic_override: Option<&Nic>,
    opts: &RunOptions,
    boot_label: String,
) -> anyhow::Result<LabRuntime> {
    let mut attempt = 1;
    let mut restore_failed = false;
    let mut retries: Vec<BootRetry> = Vec::new();
    loop {
        let e = match boot_once(lab, p, nic_override, opts, boot_label.clone(), attempt).await {
            Ok(mut rt) => {
                for vm in &mut rt.vms {
                    vm.report.boot_retries = retries.clone();
                }
                return Ok(rt);
            }
            Err(e) => e,
        };
        if let (Some(RestoreFailed { vm, why }), false) = (e.downcast_ref::<RestoreFailed>(), restore_failed) {
            // The state was discarded: the next attempt boots cold (and saves anew).
            eprintln!("vlab: `{vm}` could not be restored from its saved state ({why}); booting it");
            restore_failed = true;
            continue;
        }
        let Some((fault, reason)) = boot_fault(&e) else { return Err(e) };
        keep_failed_boot(lab, opts, &boot_label, attempt, &e);
        retries.push(BootRetry { attempt, fault, reason });
        if attempt >= BOOT_ATTEMPTS {
            return Err(e.context(BootsFailed { failed: retries }));
        }
        let last = retries.last().expect("pushed");
        eprintln!("vlab: {}; booting the VMs again ({fault}, boot {attempt} of at most {BOOT_ATTEMPTS})", last.reason);
        attempt += 1;
    }
}

/// Every boot a pair was allowed failed on a boot fault (see [`boot_fault`]).
#[derive(Debug)]
pub struct BootsFailed {
    /// Each boot's fault, the last one's included.
    pub failed: Vec<BootRetry>,
}

impl std::fmt::Display for BootsFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let earlier: Vec<String> =
            self.failed.iter().rev().skip(1).rev().map(|r| format!("boot {}: {}", r.attempt, r.reason)).collect();
        write!(f, "the pair failed to boot {} times", self.failed.len())?;
        if !earlier.is_empty() {
            write!(f, " (before: {})", earlier.join("; "))?;
        }
        Ok(())
    }
}

/// Keeps a failed boot's evidence aside: each VM's console (copied as the
/// runtime was dropped) as `serial-<vm><label>-boot<N>.log`, and what a
/// crashed QEMU said as `qemu-<vm><label>-boot<N>.stderr`.
fn keep_failed_boot(lab: &Lab, opts: &RunOptions, label: &str, attempt: u32, e: &anyhow::Error) {
    let Some(dir) = &opts.artifacts else { return };
    for vm in &lab.vms {
        let log = |suffix: &str| dir.join(format!("serial-{}{label}{suffix}.log", vm.name));
        let _ = std::fs::rename(log(""), log(&format!("-boot{attempt}")));
    }
    if let Some(VmError::Exited { vm, stderr, status, .. }) = vm_error(e) {
        let file = dir.join(format!("qemu-{vm}{label}-boot{attempt}.stderr"));
        let _ = std::fs::write(file, format!("QEMU exited ({status})\n{stderr}"));
    }
}

/// Creates the underlay and boots every VM with its NIC (or `nic_override`)
/// in parallel, until each guest agent answers; `attempt` counts the boots.
async fn boot_once(
    lab: &Lab,
    p: &Prepared,
    nic_override: Option<&Nic>,
    opts: &RunOptions,
    boot_label: String,
    attempt: u32,
) -> anyhow::Result<LabRuntime> {
    opts.progress.phase("creating the underlay");
    let net = LabNet::create()?;
    let nics: Vec<Nic> = lab.vms.iter().map(|vm| nic_override.unwrap_or(&vm.nic).clone()).collect();
    let pending = spawn_vms(lab, p, &net, &nics)?;
    opts.progress.phase(&format!("booting {} VMs ({})", lab.vms.len(), p.accel));
    let (vms, failure) = connect_agents(lab, p, pending, opts, &boot_label, attempt).await;
    let mut rt = LabRuntime {
        vms,
        probes: Default::default(),
        tidy: Default::default(),
        kernel_log_from: Default::default(),
        _net: net,
        artifacts: opts.artifacts.clone(),
        boot_label,
    };
    if let Some(e) = failure {
        return Err(e);
    }
    opts.progress.phase("resuming restored VMs, saving booted ones");
    let after = rt.vms.iter_mut().map(|vm| async move {
        match vm.report.start {
            Start::Restored => resume(&vm.guest).await,
            Start::Cold => save(vm).await,
        }
    });
    if let Err(e) = futures::future::try_join_all(after).await {
        return Err(explain_vm_exit(&mut rt, e).await);
    }
    Ok(rt)
}

/// Loads a saved state into a QEMU waiting for it.
async fn restore_state(qmp: &Path, state: &Saved) -> anyhow::Result<()> {
    Qmp::connect(qmp).await?.restore(state).await
}

/// What a restored guest needs: the host's time (it resumes at the time it
/// was saved), fresh randomness mixed into its pool (besides the reseed on
/// its new VM generation ID), and a line on its console saying so.
async fn resume(guest: &Guest) -> anyhow::Result<()> {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?;
    let seed: String = (0..4).map(|_| crate::guest::random_hex()).collect();
    let script = format!(
        "date -s @{}.{:09} >/dev/null\necho {seed} >/dev/urandom\n\
         echo \"vlab: restored from a saved state at $(date -u +%FT%TZ)\" >/dev/console",
        now.as_secs(),
        now.subsec_nanos()
    );
    guest.run(&script).await.context("resuming the restored guest")?;
    Ok(())
}

/// Saves a cold-booted VM's state for later runs, once its modules are
/// loaded (vlab-init says so with /run/vlab-modules). A state that cannot be
/// saved (a full disk, say) costs the next run a boot, not this run: vlab
/// says so and goes on with the running VM.
async fn save(vm: &mut BootedVm) -> anyhow::Result<()> {
    let Some(key) = vm.save_as.take() else { return Ok(()) };
    let started = std::time::Instant::now();
    vm.guest.run(&crate::guest::wait_until_every("[ -e /run/vlab-modules ]", 30, 20)).await?;
    let saved = async { Qmp::connect(&vm.qmp).await?.save(&key, &vm.disk).await }.await;
    match saved {
        Ok(_) => vm.report.saved_s = Some(started.elapsed().as_secs_f64()),
        Err(e) => eprintln!("vlab: could not save the state of `{}` ({e:#}); it boots again next time", vm.report.name),
    }
    Ok(())
}

/// A saved state that could not be loaded (it was discarded).
#[derive(Debug, thiserror::Error)]
#[error("`{vm}`: {why}")]
struct RestoreFailed {
    vm: String,
    why: String,
}

/// A VM whose QEMU runs and whose agent has not answered yet.
struct Pending<'a> {
    vm: &'a Vm,
    nic: Nic,
    spec: VmSpec,
    proc: QemuProcess,
    run_dir: tempfile::TempDir,
    mac: String,
    /// Its saved-state key, when it starts from or saves one.
    key: Option<String>,
    /// The state it loads instead of booting.
    restore: Option<Saved>,
}

/// The kernel modules the guests load at boot: the NICs' drivers, the
/// virtio RNG, and what the lab's overlay and filter need. Without the RNG
/// the guest's random pool is not ready for seconds after boot, and the first
/// read of /dev/urandom (iperf3 fills its buffers from it) waits for jitter
/// entropy: under TCG that cost the first case of every run 2-3 s.
fn boot_modules(lab: &Lab, nics: &[Nic]) -> Vec<String> {
    let mut modules: Vec<String> = vec!["virtio_net".into(), "virtio_rng".into()];
    if nics.iter().any(|n| n.model == NicModel::IgbSriov) {
        modules.extend(["igb".into(), "igbvf".into()]);
    }
    let o = overlay::get(&lab.overlay);
    let f = filter::get(&lab.filter);
    for m in o.modules().iter().chain(f.modules()) {
        if !modules.iter().any(|x| x == m) {
            modules.push(m.to_string());
        }
    }
    modules
}

/// Starts every QEMU first, so that the guests boot in parallel; they share
/// one process group.
fn spawn_vms<'a>(lab: &'a Lab, p: &Prepared, net: &LabNet, nics: &[Nic]) -> anyhow::Result<Vec<Pending<'a>>> {
    let modules = boot_modules(lab, nics);
    remove_stale_run_dirs(&runtime_base());
    let mut pending = Vec::new();
    let mut pgid = 0;
    for (i, (vm, nic)) in lab.vms.iter().zip(nics).enumerate() {
        let tap = format!("t-{}", vm.name);
        let backend = match nic.model {
            NicModel::Virtio => {
                net.add_tap(&tap, nic.queues(), lab.mtu)?;
                let host_mtu = (lab.mtu != crate::lab::DEFAULT_MTU).then_some(lab.mtu);
                NicBackend::Virtio { tap, queues: nic.queues(), vhost: p.vhost, host_mtu, udp_tunnel: nic.udp_tunnel }
            }
            NicModel::IgbSriov => {
                net.add_tap(&tap, 1, lab.mtu)?;
                NicBackend::Igb { tap }
            }
            NicModel::Vfio => NicBackend::Vfio { host: nic.host.clone().unwrap_or_default() },
        };
        let run_dir = run_dir(&runtime_base())?;
        let disk = run_dir.path().join("root.qcow2");
        let mac = format!("52:54:00:4c:{:02x}:01", i + 1);
        // Only virtio NICs are saved: a passed-through function cannot be, and
        // the igb's SR-IOV state is not known to survive a restore.
        let savable = p.saved_states && nic.model == NicModel::Virtio;
        let mut spec = VmSpec {
            name: vm.name.clone(),
            accel: p.accel,
            tcg_thread: p.tcg_thread,
            cpu_model: vm.cpu_model.clone(),
            cpus: vm.cpus,
            memory_mib: vm.memory_mib,
            // qboot leaves the SR-IOV VF BARs behind a root port unassigned, so
            // the VFs' registers read as nothing; SeaBIOS assigns them. A VM
            // that is saved or restored needs SeaBIOS too (see `vmgenid`).
            firmware: if nic.model == NicModel::Virtio && !savable { p.firmware.clone() } else { None },
            kernel: p.kernel.clone(),
            initramfs: p.image.initramfs.clone(),
            disk,
            run_dir: run_dir.path().to_path_buf(),
            modules: modules.clone(),
            cmdline: p.cmdline.clone(),
            nics: vec![NicSpec { id: "net0".into(), mac: mac.clone(), backend }],
            incoming: false,
            vmgenid: savable,
        };
        let key = (savable && p.use_states).then(|| saved::key(&p.qemu, &spec, &p.image.rootfs));
        let restore = key.as_deref().and_then(saved::find);
        match &restore {
            Some(state) => {
                state.read_ahead();
                state.copy_disk(&spec.disk)?;
                spec.incoming = true;
            }
            None => create_overlay_disk(&p.image.rootfs, &spec.disk)?,
        }
        let proc = QemuProcess::spawn(&p.qemu, &spec, net, pgid)?;
        if pgid == 0 {
            pgid = proc.pid();
        }
        pending.push(Pending { vm, nic: nic.clone(), spec, proc, run_dir, mac, key, restore });
    }
    Ok(pending)
}

/// Waits for every guest agent; a VM whose agent never answered is stopped
/// (its console kept) and the first such failure returned beside the VMs
/// that did boot.
async fn connect_agents(
    lab: &Lab,
    p: &Prepared,
    mut pending: Vec<Pending<'_>>,
    opts: &RunOptions,
    boot_label: &str,
    attempt: u32,
) -> (Vec<BootedVm>, Option<anyhow::Error>) {
    let deadline = tokio::time::Instant::now() + lab.timeouts.boot;
    // A guest boots to its init in ~10 s under TCG; one silent for half the
    // boot timeout is stuck (see QemuProcess::check_booting).
    let init_limit = lab.timeouts.boot / 2;
    let command_timeout = lab.timeouts.command;
    let connects = pending.iter_mut().map(|x| {
        let socket = x.spec.agent_socket();
        let (qmp, name) = (x.spec.qmp_socket(), x.vm.name.clone());
        let (proc, restore) = (&mut x.proc, x.restore.clone());
        async move {
            if let Some(state) = &restore {
                if let Err(e) = restore_state(&qmp, state).await {
                    state.discard();
                    let failed = RestoreFailed { vm: name, why: format!("{e:#}") };
                    return (Err(anyhow::Error::new(failed)), proc.running_for().as_secs_f64());
                }
            }
            let restored = restore.is_some();
            let alive = || if restored { proc.check_running() } else { proc.check_booting(init_limit) };
            let agent = Agent::connect(&socket, deadline, command_timeout, alive).await;
            (Ok(agent), proc.running_for().as_secs_f64())
        }
    });
    let agents = futures::future::join_all(connects).await;
    let mut vms = Vec::new();
    let mut failure = None;
    for (mut x, (agent, boot_s)) in pending.into_iter().zip(agents) {
        let agent = match agent {
            Ok(a) => a,
            Err(e) => {
                x.proc.stop();
                failure.get_or_insert(e);
                continue;
            }
        };
        let why = match agent {
            Ok(Ok(a)) => Ok(a),
            Ok(Err(e)) => Err(anyhow::anyhow!(
                "`{}` did not boot: {e}\n--- serial console (last lines) ---\n{}",
                x.vm.name,
                x.proc.serial_tail(25)
            )),
            Err(e) => Err(anyhow::Error::new(e).context(format!("`{}` did not boot", x.vm.name))),
        };
        let agent = match why {
            Ok(a) => a,
            Err(e) => {
                x.proc.stop();
                keep_serial_log(opts.artifacts.as_deref(), &x.vm.name, boot_label, &x.proc);
                failure.get_or_insert(e);
                continue;
            }
        };
        let report = VmReport {
            name: x.vm.name.clone(),
            boot_s,
            cpus: x.vm.cpus,
            memory_mib: x.vm.memory_mib,
            nic: x.nic.label(),
            channels: None,
            vhost: x.nic.model == NicModel::Virtio && p.vhost,
            boot_attempts: attempt,
            boot_retries: Vec::new(),
            start: if x.restore.is_some() { Start::Restored } else { Start::Cold },
            saved_s: None,
        };
        vms.push(BootedVm {
            guest: Guest::new(&x.vm.name, agent, lab.timeouts.command),
            qemu: x.proc,
            report,
            nic: x.nic,
            mac: x.mac,
            save_as: if x.restore.is_none() { x.key } else { None },
            qmp: x.spec.qmp_socket(),
            disk: x.spec.disk.clone(),
            _run_dir: x.run_dir,
        });
    }
    (vms, failure)
}

/// When a guest died (kernel panic, QEMU crash), that is the real story: put
/// QEMU's status and the serial console first, with what was going on after.
pub(super) async fn explain_vm_exit(rt: &mut LabRuntime, err: anyhow::Error) -> anyhow::Error {
    // QEMU closes the agent socket as it exits; give it a moment to finish.
    for _ in 0..40 {
        for vm in &mut rt.vms {
            if let Err(exit) = vm.qemu.check_running() {
                return GuestGone { exit, during: format!("{err:#}") }.into();
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    err
}

/// What QEMU's exit or a stalled guest made of `e`, if either did.
pub(super) fn vm_error(e: &anyhow::Error) -> Option<&VmError> {
    e.chain().find_map(|c| c.downcast_ref::<GuestGone>().map(|g| &g.exit).or_else(|| c.downcast_ref::<VmError>()))
}

/// A guest's QEMU exited while the lab was using it.
#[derive(Debug, thiserror::Error)]
#[error("{exit}\n(while: {during})")]
pub(super) struct GuestGone {
    pub exit: VmError,
    /// What vlab was doing.
    during: String,
}
