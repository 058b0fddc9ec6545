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
use crate::qemu::agent::Agent;
use crate::qemu::{NicBackend, NicSpec, QemuProcess, VmError, VmSpec};
use crate::report::VmReport;
use crate::{filter, overlay};

/// One booted VM and everything it owns, released in field order.
pub(super) struct BootedVm {
    pub guest: Guest,
    pub qemu: QemuProcess,
    pub report: VmReport,
    pub nic: Nic,
    pub mac: String,
    _run_dir: tempfile::TempDir,
}

/// An interface's driver and channels, by VM, container and device.
pub(super) type FixedFacts = BTreeMap<(String, Option<String>, String), (Option<String>, Option<u32>)>;

/// The running lab: VMs first, then the underlay they are attached to.
pub(super) struct LabRuntime {
    pub vms: Vec<BootedVm>,
    /// The driver and channels of each probed interface (VM, container,
    /// device): they do not change while the VMs run, so only the first case
    /// asks `ethtool -i` and `-l`.
    pub fixed_facts: std::sync::Mutex<FixedFacts>,
    _net: LabNet,
    artifacts: Option<PathBuf>,
    /// Distinguishes the serial logs of successive boots.
    boot_label: String,
}

impl Drop for LabRuntime {
    fn drop(&mut self) {
        for vm in &mut self.vms {
            vm.qemu.stop();
            keep_serial_log(self.artifacts.as_deref(), &vm.report.name, &self.boot_label, &vm.qemu);
        }
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
}

fn runtime_base() -> PathBuf {
    std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from).filter(|p| p.is_dir()).unwrap_or_else(std::env::temp_dir)
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

/// How often a pair is booted when a guest stalls while booting.
const BOOT_ATTEMPTS: u32 = 2;

/// [`boot_once`], again (after a notice) when a guest stalled while booting
/// (an RCU stall on its console, or no init after half the boot timeout):
/// under TCG a vCPU now and then stops getting its timer interrupt early in
/// boot, and the next boot of the same kernel is fine. A kernel that
/// stalls every time still fails the run (exit 125). The stalled console is
/// kept as `serial-<vm>-stalled.log`; the report counts the attempts.
pub(super) async fn boot(
    lab: &Lab,
    p: &Prepared,
    nic_override: Option<&Nic>,
    opts: &RunOptions,
    boot_label: String,
) -> anyhow::Result<LabRuntime> {
    let mut attempt = 1;
    loop {
        let e = match boot_once(lab, p, nic_override, opts, boot_label.clone(), attempt).await {
            Ok(rt) => return Ok(rt),
            Err(e) => e,
        };
        match e.downcast_ref::<VmError>() {
            Some(VmError::Stalled { vm, why, .. }) if attempt < BOOT_ATTEMPTS => {
                eprintln!("vlab: `{vm}` stalled while booting ({why}); booting the VMs again");
                if let Some(dir) = &opts.artifacts {
                    let log = |suffix: &str| dir.join(format!("serial-{vm}{boot_label}{suffix}.log"));
                    let _ = std::fs::rename(log(""), log("-stalled"));
                }
            }
            _ => return Err(e),
        }
        attempt += 1;
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
    let net = LabNet::create().context("cannot create the lab's network namespace (are you root?)")?;
    let nics: Vec<Nic> = lab.vms.iter().map(|vm| nic_override.unwrap_or(&vm.nic).clone()).collect();
    let pending = spawn_vms(lab, p, &net, &nics)?;
    opts.progress.phase(&format!("booting {} VMs ({})", lab.vms.len(), p.accel));
    let (vms, failure) = connect_agents(lab, p, pending, opts, &boot_label, attempt).await;
    let rt =
        LabRuntime { vms, fixed_facts: Default::default(), _net: net, artifacts: opts.artifacts.clone(), boot_label };
    match failure {
        Some(e) => Err(e),
        None => Ok(rt),
    }
}

/// A VM whose QEMU runs and whose agent has not answered yet.
struct Pending<'a> {
    vm: &'a Vm,
    nic: Nic,
    spec: VmSpec,
    proc: QemuProcess,
    run_dir: tempfile::TempDir,
    mac: String,
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
    let mut pending = Vec::new();
    let mut pgid = 0;
    for (i, (vm, nic)) in lab.vms.iter().zip(nics).enumerate() {
        let tap = format!("t-{}", vm.name);
        let backend = match nic.model {
            NicModel::Virtio => {
                net.add_tap(&tap, nic.queues())?;
                NicBackend::Virtio { tap, queues: nic.queues(), vhost: p.vhost }
            }
            NicModel::IgbSriov => {
                net.add_tap(&tap, 1)?;
                NicBackend::Igb { tap }
            }
            NicModel::Vfio => NicBackend::Vfio { host: nic.host.clone().unwrap_or_default() },
        };
        let run_dir = tempfile::Builder::new().prefix("vlab-").tempdir_in(runtime_base())?;
        let disk = run_dir.path().join("root.qcow2");
        create_overlay_disk(&p.image.rootfs, &disk)?;
        let mac = format!("52:54:00:4c:{:02x}:01", i + 1);
        let spec = VmSpec {
            name: vm.name.clone(),
            accel: p.accel,
            cpu_model: vm.cpu_model.clone(),
            cpus: vm.cpus,
            memory_mib: vm.memory_mib,
            // qboot leaves the SR-IOV VF BARs behind a root port unassigned, so
            // the VFs' registers read as nothing; SeaBIOS assigns them.
            firmware: if nic.model == NicModel::Virtio { p.firmware.clone() } else { None },
            kernel: p.kernel.clone(),
            initramfs: p.image.initramfs.clone(),
            disk,
            run_dir: run_dir.path().to_path_buf(),
            modules: modules.clone(),
            nics: vec![NicSpec { id: "net0".into(), mac: mac.clone(), backend }],
        };
        let proc = QemuProcess::spawn(&p.qemu, &spec, &net.netns_path(), pgid)?;
        if pgid == 0 {
            pgid = proc.pid();
        }
        pending.push(Pending { vm, nic: nic.clone(), spec, proc, run_dir, mac });
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
        let proc = &mut x.proc;
        async move {
            let agent = Agent::connect(&socket, deadline, command_timeout, || proc.check_booting(init_limit)).await;
            (agent, proc.running_for().as_secs_f64())
        }
    });
    let agents = futures::future::join_all(connects).await;
    let mut vms = Vec::new();
    let mut failure = None;
    for (mut x, (agent, boot_s)) in pending.into_iter().zip(agents) {
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
        };
        vms.push(BootedVm {
            guest: Guest::new(&x.vm.name, agent, lab.timeouts.command),
            qemu: x.proc,
            report,
            nic: x.nic,
            mac: x.mac,
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
                return anyhow::anyhow!("{exit}\n(while: {err:#})");
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    err
}
