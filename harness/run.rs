//! Orchestration of one lab run: image, acceleration, then for each NIC
//! configuration of the matrix: underlay, VMs, guest setup, and every case's
//! workload, evidence and checks on that booted pair.
//!
//! Every host resource is owned by a value whose `Drop` releases it, so an
//! error, a panic or a cancelled future (Ctrl-C) leaves nothing behind.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::guest::{self, Attachment, Guest};
use crate::hostnet::LabNet;
use crate::image::{self, Image};
use crate::lab::CapturePoint;
use crate::lab::{variant_name, Case, Direction, IlaCase, Lab, Nic, NicModel, Overlay, TrafficPath};
use crate::measure::capture::{self, CaptureContext, CaptureSummary};
use crate::measure::counters::{self, Counters};
use crate::measure::fdb::{self, FdbEntry};
use crate::measure::iperf3;
use crate::measure::nic::{self, InterfaceEvidence};
use crate::overlay::ila::{self, IlaVerdict};
use crate::overlay::{self, evpn, vxlan};
use crate::qemu::accel::{self, AccelChoice};
use crate::qemu::agent::Agent;
use crate::qemu::{self, Accel, NicBackend, NicSpec, QemuProcess, VmError, VmSpec};
use crate::report::{fmt_bps, CaseReport, Check, Report, VmReport};
use crate::ui::Progress;

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
}

/// What every boot of a run shares.
struct Prepared {
    qemu: PathBuf,
    image: Image,
    kernel: PathBuf,
    accel: Accel,
    vhost: bool,
    firmware: Option<PathBuf>,
}

/// One booted VM and everything it owns, released in field order.
struct BootedVm {
    guest: Guest,
    qemu: QemuProcess,
    report: VmReport,
    nic: Nic,
    mac: String,
    _run_dir: tempfile::TempDir,
}

/// The running lab: VMs first, then the underlay they are attached to.
struct LabRuntime {
    vms: Vec<BootedVm>,
    _net: LabNet,
    artifacts: Option<PathBuf>,
    /// Distinguishes the serial logs of successive boots.
    boot_label: String,
    /// EVPN: seconds from the daemons' start to the first container ping that got through.
    converged_s: Option<f64>,
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
    fn vm(&self, name: &str) -> &BootedVm {
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

/// What a booted pair is set up with: a NIC and an overlay (`None`: the lab's).
type BootKey = (Option<Nic>, Option<Overlay>);

/// Consecutive cases that share a NIC configuration and an overlay, and so a booted pair.
fn boot_groups(cases: Vec<Case>) -> Vec<(BootKey, Vec<Case>)> {
    let mut groups: Vec<(BootKey, Vec<Case>)> = Vec::new();
    for case in cases {
        let key = (case.params.nic.clone(), case.params.overlay);
        match groups.last_mut() {
            Some((k, group)) if *k == key => group.push(case),
            _ => groups.push((key, vec![case])),
        }
    }
    groups
}

/// Runs a lab; check failures are in the report, errors mean the lab could not run.
pub async fn run(lab: &Lab, opts: &RunOptions) -> anyhow::Result<Report> {
    let started = Instant::now();
    let progress = &opts.progress;
    let qemu_bin = qemu::find_qemu().map_err(anyhow::Error::msg)?;
    let qemu_version = qemu::qemu_version(&qemu_bin).unwrap_or_else(|| "unknown".into());
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

    let recipe = lab.image_recipe(&opts.images_dir);
    progress.phase(&format!("image {}", recipe.display()));
    let image = {
        let (recipe, progress) = (recipe.clone(), progress.clone());
        tokio::task::spawn_blocking(move || image::build(&recipe, &progress)).await?
    }
    .with_context(|| format!("cannot build the image from {}", recipe.display()))?;
    let kernel = opts.kernel.clone().unwrap_or_else(|| image.kernel.clone());
    if !kernel.is_file() {
        bail!("kernel {} does not exist", kernel.display());
    }
    let kernel_release = match &opts.kernel {
        Some(k) => k.display().to_string(),
        None => image.kernel_release.clone(),
    };

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
    if let Some(dir) = &opts.artifacts {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create artifacts directory {}", dir.display()))?;
    }
    let prepared =
        Prepared { qemu: qemu_bin, image, kernel, accel, vhost: vhost_usable(), firmware: qemu::find_firmware() };

    let groups = boot_groups(cases);
    let several = groups.len() > 1;
    let mut vm_reports = Vec::new();
    let mut case_reports = Vec::new();
    let mut convergence_s = None;
    for ((nic, overlay), group) in groups {
        let mut label = String::new();
        if several {
            if let Some(n) = &nic {
                label.push_str(&format!("-{}", n.label()));
            }
            if let Some(o) = overlay {
                label.push_str(&format!("-{}", variant_name(&o)));
            }
        }
        let group_lab = overlay.map(|o| lab.with_overlay(o));
        let lab = group_lab.as_ref().unwrap_or(lab);
        let mut rt = boot(lab, &prepared, nic.as_ref(), opts, label).await?;
        match deploy_and_measure(lab, &mut rt, &group, opts).await {
            Ok(reports) => case_reports.extend(reports),
            Err(e) => return Err(explain_vm_exit(&mut rt, e).await),
        }
        vm_reports.extend(rt.vms.iter().map(|v| v.report.clone()));
        convergence_s = convergence_s.or(rt.converged_s);
    }
    progress.finish();
    crate::report::compare_with_baseline(&mut case_reports);
    Ok(Report {
        lab: lab.name.clone(),
        lab_file: lab.source.display().to_string(),
        accel: accel.to_string(),
        accel_notice: notice,
        kernel: kernel_release,
        qemu: qemu_version,
        image: format!("{}-{}", prepared.image.name, prepared.image.key),
        overlay: variant_name(&lab.overlay),
        vms: vm_reports,
        passed: case_reports.iter().all(|c| c.passed),
        cases: case_reports,
        convergence_s,
        wall_s: started.elapsed().as_secs_f64(),
    })
}

/// How often a pair is booted when a guest stalls while booting.
const BOOT_ATTEMPTS: u32 = 2;

/// [`boot_once`], again (after a notice) when a guest stalled while booting
/// (an RCU stall on its console, or no init after half the boot timeout):
/// under TCG a vCPU now and then stops getting its timer interrupt early in
/// boot, and the next boot of the same kernel is fine. A kernel that
/// stalls every time still fails the run (exit 125). The stalled console is
/// kept as `serial-<vm>-stalled.log`; the report counts the attempts.
async fn boot(
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
    let progress = &opts.progress;
    progress.phase("creating the underlay");
    let net = LabNet::create().context("cannot create the lab's network namespace (are you root?)")?;
    let nics: Vec<Nic> = lab.vms.iter().map(|vm| nic_override.unwrap_or(&vm.nic).clone()).collect();
    let mut modules: Vec<String> = vec!["virtio_net".into()];
    if nics.iter().any(|n| n.model == NicModel::IgbSriov) {
        modules.extend(["igb".into(), "igbvf".into()]);
    }
    modules.extend(overlay::modules(lab));

    // Spawn every QEMU first so the guests boot in parallel.
    let mut pending = Vec::new();
    let mut pgid = 0;
    for (i, (vm, nic)) in lab.vms.iter().zip(&nics).enumerate() {
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
        pending.push((vm, nic.clone(), spec, proc, run_dir, mac));
    }

    progress.phase(&format!("booting {} VMs ({})", lab.vms.len(), p.accel));
    let deadline = tokio::time::Instant::now() + lab.timeouts.boot;
    // A guest boots to its init in ~10 s under TCG; one silent for half the
    // boot timeout is stuck (see QemuProcess::check_booting).
    let init_limit = lab.timeouts.boot / 2;
    let command_timeout = lab.timeouts.command;
    let connects = pending.iter_mut().map(|(_, _, spec, proc, _, _)| {
        let socket = spec.agent_socket();
        async move {
            let agent = Agent::connect(&socket, deadline, command_timeout, || proc.check_booting(init_limit)).await;
            (agent, proc.running_for().as_secs_f64())
        }
    });
    let agents = futures::future::join_all(connects).await;
    let mut vms = Vec::new();
    let mut failure = None;
    for ((vm, nic, _spec, mut proc, run_dir, mac), (agent, boot_s)) in pending.into_iter().zip(agents) {
        if agent.as_ref().map_or(true, |a| a.is_err()) {
            proc.stop();
            keep_serial_log(opts.artifacts.as_deref(), &vm.name, &boot_label, &proc);
        }
        let agent = match agent {
            Ok(Ok(a)) => a,
            Ok(Err(e)) => {
                failure.get_or_insert_with(|| {
                    anyhow::anyhow!(
                        "`{}` did not boot: {e}\n--- serial console (last lines) ---\n{}",
                        vm.name,
                        proc.serial_tail(25)
                    )
                });
                continue;
            }
            Err(e) => {
                failure.get_or_insert_with(|| anyhow::Error::new(e).context(format!("`{}` did not boot", vm.name)));
                continue;
            }
        };
        let report = VmReport {
            name: vm.name.clone(),
            boot_s,
            cpus: vm.cpus,
            memory_mib: vm.memory_mib,
            nic: nic.label(),
            channels: None,
            vhost: nic.model == NicModel::Virtio && p.vhost,
            boot_attempts: attempt,
        };
        vms.push(BootedVm {
            guest: Guest::new(&vm.name, agent, lab.timeouts.command),
            qemu: proc,
            report,
            nic,
            mac,
            _run_dir: run_dir,
        });
    }
    let rt = LabRuntime { vms, _net: net, artifacts: opts.artifacts.clone(), boot_label, converged_s: None };
    match failure {
        Some(e) => Err(e),
        None => Ok(rt),
    }
}

/// Guest setup (underlay, containers, overlay, setup commands), then `cases`.
async fn deploy_and_measure(
    lab: &Lab,
    rt: &mut LabRuntime,
    cases: &[Case],
    opts: &RunOptions,
) -> anyhow::Result<Vec<CaseReport>> {
    let progress = &opts.progress;
    progress.phase("setting up containers and overlay");
    for (i, vm) in lab.vms.iter().enumerate() {
        let booted = rt.vms.iter_mut().find(|b| b.report.name == vm.name).expect("booted");
        let script = guest::setup_script(lab, vm, i, &booted.nic, &booted.mac);
        booted.guest.run(&script.join("\n")).await.context("guest setup failed")?;
        let channels = booted.guest.run(&format!("ethtool -l {} 2>/dev/null; true", guest::UNDERLAY_DEV)).await?;
        booted.report.channels = nic::parse_channels(&channels.stdout_text());
    }
    if lab.overlay == Overlay::VxlanEvpn {
        if let Some(dir) = &opts.artifacts {
            let dir = dir.join("evpn");
            std::fs::create_dir_all(&dir)?;
            std::fs::write(dir.join("gobgpd.toml"), evpn::gobgp_config(lab))?;
            for vm in &lab.vms {
                std::fs::write(dir.join(format!("bgpd-{}.conf", vm.name)), evpn::frr_config(lab, vm))?;
            }
        }
        progress.phase("waiting for the EVPN control plane");
        rt.converged_s = converge(lab, rt).await?;
    }
    for vm in &lab.vms {
        let guest = &rt.vm(&vm.name).guest;
        for cmd in &vm.setup {
            guest.run(cmd).await.with_context(|| format!("setup command of `{}` failed", vm.name))?;
        }
    }
    let mut reports = Vec::new();
    for case in cases {
        progress.phase(&format!("case {}", case.name));
        let report = run_case(lab, rt, case, opts.artifacts.as_deref())
            .await
            .with_context(|| format!("case `{}`", case.name))?;
        reports.push(report);
    }
    for vm in &mut rt.vms {
        vm.qemu.check_running()?;
    }
    Ok(reports)
}

/// How long after the daemons started the workload's client container first
/// reaches the server container (one ping a time, for at most 90 s); `None`
/// when it never does.
async fn converge(lab: &Lab, rt: &LabRuntime) -> anyhow::Result<Option<f64>> {
    let w = &lab.workload;
    let (Some(c), Some(sc)) = (&w.client.container, &w.server.container) else { return Ok(None) };
    let server = lab.vm(&w.server.vm).expect("validated");
    let Some(target) = server.containers.iter().find(|x| &x.name == sc).and_then(|x| x.address(w.family)) else {
        return Ok(None);
    };
    let guest = &rt.vm(&w.client.vm).guest;
    let ping = format!("ip netns exec {c} ping -c 1 -W 1 -q {target} >/dev/null 2>&1");
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(90) {
        if guest.try_run(&ping).await?.success() {
            return Ok(Some(started.elapsed().as_secs_f64()));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(None)
}

/// When a guest died (kernel panic, QEMU crash), that is the real story: put
/// QEMU's status and the serial console first, with what was going on after.
async fn explain_vm_exit(rt: &mut LabRuntime, err: anyhow::Error) -> anyhow::Error {
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

/// Where an endpoint's traffic enters and leaves its VM.
struct Side<'a> {
    vm: &'a BootedVm,
    /// The container, for container endpoints.
    netns: Option<String>,
    /// Address of the endpoint for the case's family and path.
    addr: String,
}

fn side<'a>(lab: &Lab, rt: &'a LabRuntime, ep: &crate::lab::Endpoint, case: &Case) -> Side<'a> {
    let vm = lab.vm(&ep.vm).expect("validated");
    let family = case.params.family;
    let (netns, addr) = match (case.params.path, &ep.container) {
        (TrafficPath::Container, Some(c)) => {
            let container = vm.containers.iter().find(|x| &x.name == c).expect("validated");
            (Some(c.clone()), container.address(family).expect("validated").to_string())
        }
        _ => (None, vm.underlay.get(family).expect("validated").to_string()),
    };
    Side { vm: rt.vm(&vm.name), netns, addr }
}

impl Side<'_> {
    /// The interfaces whose evidence a case records: the underlay NIC, then
    /// (container endpoints) the container's interface and, on veth, the
    /// guest-side veth.
    fn interfaces(&self) -> Vec<(Option<String>, String)> {
        let mut v = vec![(None, guest::UNDERLAY_DEV.to_string())];
        if let Some(c) = &self.netns {
            v.push((Some(c.clone()), guest::CONTAINER_DEV.to_string()));
            if Attachment::of(&self.vm.nic) == Attachment::Veth {
                v.push((None, guest::host_veth(c)));
            }
        }
        v
    }
}

fn in_netns(netns: &Option<String>, argv: Vec<String>) -> Vec<String> {
    match netns {
        Some(ns) => ["ip", "netns", "exec", ns].into_iter().map(String::from).chain(argv).collect(),
        None => argv,
    }
}

async fn read_counters(g: &Guest, dev: &str, netns: Option<&str>) -> anyhow::Result<Counters> {
    let out = g.run(&Counters::command(dev, netns)).await?;
    Counters::parse(&out.stdout_text()).with_context(|| format!("unreadable counters of {dev} on `{}`", g.name))
}

/// Applies the case's offloads to an interface and reads back its evidence
/// (driver, channels, VFs, offload state, counters before the workload).
async fn probe_interface(
    g: &Guest,
    netns: Option<&str>,
    dev: &str,
    requested: &[(&str, Option<bool>)],
) -> anyhow::Result<InterfaceEvidence> {
    let out = g.run(&nic::probe_script(dev, netns, requested)).await?;
    let (driver, channels, vfs, offloads) = nic::parse_probe(&out.stdout_text(), requested);
    let before = read_counters(g, dev, netns).await?;
    Ok(InterfaceEvidence {
        vm: g.name.clone(),
        container: netns.map(str::to_string),
        dev: dev.to_string(),
        driver,
        channels,
        vfs,
        offloads,
        before,
        after: before,
    })
}

async fn run_case(lab: &Lab, rt: &LabRuntime, case: &Case, artifacts: Option<&Path>) -> anyhow::Result<CaseReport> {
    let w = &lab.workload;
    let server = side(lab, rt, &w.server, case);
    let client = side(lab, rt, &w.client, case);
    // A clean slate: no iperf3 left from an earlier case, and the overlay as this case wants it.
    for vm in &rt.vms {
        vm.guest.try_run("pkill -x iperf3; true").await?;
    }
    for vm in &lab.vms {
        let cmds = overlay::case_commands(lab, vm, &case.params);
        if !cmds.is_empty() {
            rt.vm(&vm.name).guest.run(&cmds.join("\n")).await.context("configuring the overlay for the case")?;
        }
    }
    let requested = case.params.offloads.requested();
    // Evidence layout: server interfaces, then client interfaces.
    let mut evidence = Vec::new();
    for s in [&server, &client] {
        for (ns, dev) in s.interfaces() {
            evidence.push(probe_interface(&s.vm.guest, ns.as_deref(), &dev, &requested).await?);
        }
    }

    // Where each kernel log stands, to find what the case made the kernels say.
    let mut dmesg_lines = Vec::new();
    for vm in &rt.vms {
        let out = vm.guest.run("dmesg | wc -l").await?;
        dmesg_lines.push(out.stdout_text().trim().parse::<u64>().unwrap_or(0));
    }
    let receivers = match case.params.ila {
        Some(_) => vec![&server, &client],
        None => Vec::new(),
    };
    let mut csum_before = Vec::new();
    for s in &receivers {
        csum_before.push(read_csum_errors(s).await?);
    }
    let captures = start_captures(lab, [&server, &client]).await?;

    let server_argv = in_netns(&server.netns, iperf3::server_argv(w));
    let argv_refs: Vec<&str> = server_argv.iter().map(String::as_str).collect();
    let server_pid = server.vm.guest.agent().spawn(&argv_refs).await?;
    let listen_check = format!("ss -Hltn 'sport = :{}' | grep -q LISTEN", w.port);
    let listen = in_netns(&server.netns, vec!["sh".into(), "-c".into(), listen_check]);
    let listen_refs: Vec<&str> = listen.iter().map(String::as_str).collect();
    let ready_deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = server.vm.guest.agent().exec(&listen_refs, Duration::from_secs(20)).await?;
        if out.success() {
            break;
        }
        if Instant::now() >= ready_deadline {
            let said = match server.vm.guest.agent().wait(server_pid, "iperf3 -s", Duration::from_secs(1)).await {
                Ok(out) => format!(": {} {}", out.stdout_text().trim(), out.stderr_text().trim()),
                Err(_) => String::new(),
            };
            bail!("iperf3 server on `{}` did not listen on port {} within 20 s{said}", server.vm.guest.name, w.port);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let client_argv = in_netns(&client.netns, iperf3::client_argv(w, &case.params, &server.addr));
    let client_refs: Vec<&str> = client_argv.iter().map(String::as_str).collect();
    let limit = w.duration + lab.timeouts.command;
    let client_out = client.vm.guest.agent().exec(&client_refs, limit).await?;
    let server_out = server.vm.guest.agent().wait(server_pid, "iperf3 -s", Duration::from_secs(20)).await;

    for e in &mut evidence {
        let g = if e.vm == server.vm.guest.name { &server.vm.guest } else { &client.vm.guest };
        e.after = read_counters(g, &e.dev, e.container.as_deref()).await?;
    }

    let case_dir = artifacts.map(|dir| dir.join(&case.name));
    if let Some(dir) = &case_dir {
        std::fs::create_dir_all(dir)?;
    }
    let mut csum_errors = BTreeMap::new();
    for (s, before) in receivers.iter().zip(&csum_before) {
        for (name, after) in read_csum_errors(s).await? {
            let delta = after.saturating_sub(before.get(&name).copied().unwrap_or(0));
            csum_errors.insert(format!("{}:{name}", s.vm.guest.name), delta);
        }
    }
    // ILA rewrites destinations: a checksum left for the NIC was summed for the SIR address.
    let sirs = ila::sir_addresses(lab);
    let original_dst = |dst: IpAddr| ila::original_destination(&sirs, dst);
    let capture_summaries =
        finish_captures(captures, w.port, &original_dst, overlay::vxlan_port(lab), case_dir.as_deref()).await?;

    if let Some(case_dir) = &case_dir {
        std::fs::write(case_dir.join("iperf3-client.json"), &client_out.stdout)?;
        if let Ok(s) = &server_out {
            std::fs::write(case_dir.join("iperf3-server.json"), &s.stdout)?;
        }
        std::fs::write(case_dir.join("interfaces.json"), serde_json::to_vec_pretty(&evidence)?)?;
    }

    let kernel_says = kernel_alarms(rt, &dmesg_lines, case_dir.as_deref()).await?;
    let parsed = iperf3::parse(&client_out.stdout_text());
    let mut checks = vec![Check::new(
        "iperf3 completed",
        client_out.success() && parsed.is_ok(),
        match &parsed {
            Ok(_) => format!("client exit {}", client_out.code),
            Err(e) => format!("client exit {}: {e} {}", client_out.code, client_out.stderr_text().trim()),
        },
    )];
    let result = parsed.ok();
    let received = result.as_ref().map_or(0, |r| r.received_bytes);
    checks.push(Check::new(
        "payload delivered",
        received > 0,
        format!("{received} bytes received in {:.1} s", result.as_ref().map_or(0.0, |r| r.seconds)),
    ));
    let throughput = result.as_ref().map_or(0.0, |r| r.throughput_bps);
    if let Some(min) = lab.expect.min_throughput {
        checks.push(Check::new(
            "throughput bound",
            throughput >= min.0 as f64,
            format!("{} against a minimum of {}", fmt_bps(throughput), fmt_bps(min.0 as f64)),
        ));
    }
    checks.extend(path_checks(&server, &client, &evidence, case.params.direction, received));
    checks.push(Check::new(
        "kernels logged no warning",
        kernel_says.is_empty(),
        if kernel_says.is_empty() {
            "no WARNING/BUG/Oops in dmesg during the case".to_string()
        } else {
            kernel_says.join(" | ")
        },
    ));
    if !capture_summaries.is_empty() {
        let seen: Vec<String> = capture_summaries
            .iter()
            .map(|c| {
                format!(
                    "{}: {} of {} packets",
                    capture::file_name(&c.vm, c.container.as_deref(), &c.dev),
                    c.workload,
                    c.packets
                )
            })
            .collect();
        checks.push(Check::new(
            "captures saw the workload",
            capture_summaries.iter().all(|c| c.workload > 0),
            seen.join(", "),
        ));
    }
    let fdb = read_fdb(lab, rt).await?;
    let control_plane = match lab.overlay {
        Overlay::VxlanEvpn => {
            let outputs = read_control_plane(lab, rt, case_dir.as_deref()).await?;
            let cp = evpn::control_plane(lab, &outputs);
            checks.extend(evpn::verdict(lab, &cp));
            Some(cp)
        }
        _ => None,
    };
    if let (Some(dir), false) = (&case_dir, fdb.is_empty()) {
        std::fs::write(dir.join("fdb.json"), serde_json::to_vec_pretty(&fdb)?)?;
    }
    if let (Overlay::Vxlan | Overlay::VxlanEvpn, Some(_), Some(_)) = (lab.overlay, &server.netns, &client.netns) {
        let settings = vxlan::settings(lab);
        let vtep =
            |s: &Side| lab.vm(&s.vm.guest.name).and_then(|vm| vm.underlay.get(settings.family)).expect("validated");
        let addr = |s: &Side| s.addr.parse::<IpAddr>().expect("a container address");
        let evidence = vxlan::VxlanEvidence {
            vteps: [vtep(&server), vtep(&client)],
            containers: [addr(&server), addr(&client)],
            underlay: capture_summaries.iter().filter(|c| c.container.is_none()).collect(),
            fdb: &fdb,
            expected: vxlan::expected_entries(lab),
            installed_as: if lab.overlay == Overlay::Vxlan { "permanent" } else { "extern_learn" },
            settings,
        };
        checks.extend(vxlan::verdict(&evidence));
    }
    let ila_verdict = match case.params.ila {
        Some(ila_case) => {
            let delivered = received > 0 && client_out.success();
            let (ila_checks, verdict) =
                ila_verdict(lab, ila_case, [&server, &client], &capture_summaries, csum_errors, delivered);
            checks.extend(ila_checks);
            verdict
        }
        None => None,
    };
    let passed = checks.iter().all(|c| c.passed);
    Ok(CaseReport {
        name: case.name.clone(),
        params: case.params.clone(),
        throughput_bps: throughput,
        retransmits: result.as_ref().and_then(|r| r.retransmits),
        cpu_client_percent: result.as_ref().map_or(0.0, |r| r.cpu_client_percent),
        cpu_server_percent: result.as_ref().map_or(0.0, |r| r.cpu_server_percent),
        checks,
        passed,
        interfaces: evidence,
        captures: capture_summaries,
        ila: ila_verdict,
        fdb,
        evpn: control_plane,
        vs_baseline: None,
    })
}

/// The EVPN control plane's own reports (raw JSON by artifact name), kept
/// under `case_dir/evpn/` (nothing for other overlays).
async fn read_control_plane(
    lab: &Lab,
    rt: &LabRuntime,
    case_dir: Option<&Path>,
) -> anyhow::Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    if lab.overlay != Overlay::VxlanEvpn {
        return Ok(out);
    }
    for vm in &lab.vms {
        let guest = &rt.vm(&vm.name).guest;
        for (name, cmd) in evpn::evidence_commands(lab, vm) {
            let text = guest.try_run(&cmd).await?.stdout_text();
            out.insert(name, text);
        }
    }
    if let Some(dir) = case_dir {
        let dir = dir.join("evpn");
        std::fs::create_dir_all(&dir)?;
        for (name, text) in &out {
            std::fs::write(dir.join(name), text)?;
        }
    }
    Ok(out)
}

/// The forwarding entries of every VM's VXLAN device (none for other overlays).
async fn read_fdb(lab: &Lab, rt: &LabRuntime) -> anyhow::Result<Vec<FdbEntry>> {
    if overlay::vxlan_port(lab).is_none() {
        return Ok(Vec::new());
    }
    let dev = vxlan::device(vxlan::settings(lab).vni);
    let mut entries = Vec::new();
    for vm in &rt.vms {
        let out = vm.guest.run(&fdb::command(&dev)).await?;
        let parsed = fdb::parse(&vm.report.name, &out.stdout_text())
            .with_context(|| format!("unreadable `bridge -j fdb show` on `{}`", vm.report.name))?;
        entries.extend(parsed);
    }
    Ok(entries)
}

/// Judges an ILA case from its captures and counters (`sides`: server, client).
fn ila_verdict(
    lab: &Lab,
    case: IlaCase,
    sides: [&Side; 2],
    captures: &[CaptureSummary],
    csum_errors: BTreeMap<String, u64>,
    delivered: bool,
) -> (Vec<Check>, Option<IlaVerdict>) {
    let sir = |s: &Side| s.netns.as_ref().and_then(|_| s.addr.parse::<Ipv6Addr>().ok());
    let (Some(s_sir), Some(c_sir)) = (sir(sides[0]), sir(sides[1])) else {
        // The underlay path: nothing is translated.
        return (Vec::new(), None);
    };
    let wire = |addr, s: &Side| {
        let vm = lab.vm(&s.vm.guest.name).expect("validated");
        ila::wire_address(addr, vm, case.csum_mode).unwrap_or(addr)
    };
    let at = |container: bool| captures.iter().filter(|c| c.container.is_some() == container).collect::<Vec<_>>();
    let evidence = ila::IlaEvidence {
        case,
        sir: [s_sir, c_sir],
        wire: [wire(s_sir, sides[0]), wire(c_sir, sides[1])],
        underlay: at(false),
        container: at(true),
        csum_errors,
        delivered,
    };
    let (checks, verdict) = ila::verdict(&evidence);
    (checks, Some(verdict))
}

/// What the guests' kernels logged since `from` (lines of `dmesg`, per VM)
/// that means a warning or a bug; the new log is kept in `case_dir`.
async fn kernel_alarms(rt: &LabRuntime, from: &[u64], case_dir: Option<&Path>) -> anyhow::Result<Vec<String>> {
    let mut alarms = Vec::new();
    for (vm, from) in rt.vms.iter().zip(from) {
        let log = vm.guest.run(&format!("dmesg | tail -n +{}", from + 1)).await?.stdout_text();
        if let (Some(dir), false) = (case_dir, log.trim().is_empty()) {
            std::fs::write(dir.join(format!("dmesg-{}.txt", vm.report.name)), &log)?;
        }
        alarms.extend(
            log.lines()
                .filter(|l| KERNEL_ALARMS.iter().any(|a| l.contains(a)))
                .take(3)
                .map(|l| format!("{}: {}", vm.report.name, l.trim())),
        );
    }
    Ok(alarms)
}

/// Kernel log lines that mean the kernel hit a bug or a warning.
const KERNEL_ALARMS: [&str; 5] = ["WARNING:", "BUG:", "Oops", "general protection fault", "Call Trace:"];

/// A running tcpdump in a guest.
struct RunningCapture<'a> {
    guest: &'a Guest,
    pid: i64,
    file: String,
    mtu: usize,
    summary: CaptureSummary,
}

/// The checksum error counters of an endpoint: the TCP stack where the
/// workload ends and the underlay NIC's statistics.
async fn read_csum_errors(side: &Side<'_>) -> anyhow::Result<BTreeMap<String, u64>> {
    let out = side.vm.guest.run(&counters::csum_errors_command(side.netns.as_deref(), guest::UNDERLAY_DEV)).await?;
    Ok(counters::parse_named(&out.stdout_text()))
}

/// Starts tcpdump on every capture point of both endpoints and waits until
/// each has opened its interface (its file has the pcap header).
async fn start_captures<'a>(lab: &Lab, sides: [&Side<'a>; 2]) -> anyhow::Result<Vec<RunningCapture<'a>>> {
    let Some(spec) = &lab.capture else { return Ok(Vec::new()) };
    let mut running = Vec::new();
    for side in sides {
        for point in &spec.points {
            let (netns, dev) = match (point, &side.netns) {
                (CapturePoint::Underlay, _) => (None, guest::UNDERLAY_DEV.to_string()),
                (CapturePoint::Container, Some(c)) => (Some(c.clone()), guest::CONTAINER_DEV.to_string()),
                (CapturePoint::Container, None) => continue,
            };
            let name = capture::file_name(&side.vm.guest.name, netns.as_deref(), &dev);
            let file = format!("/tmp/vlab-{name}");
            // On the underlay an encapsulating overlay carries the workload inside its tunnel.
            let filter = match (point, overlay::vxlan_port(lab)) {
                (CapturePoint::Underlay, Some(port)) => format!("udp port {port}"),
                _ => format!("port {}", lab.workload.port),
            };
            let argv = in_netns(&netns, capture::tcpdump_argv(&dev, &file, spec.packets, spec.snaplen, &filter));
            let refs: Vec<&str> = argv.iter().map(String::as_str).collect();
            let mtu_cmd = in_netns(&netns, vec!["cat".into(), format!("/sys/class/net/{dev}/mtu")]).join(" ");
            let mtu = side.vm.guest.run(&mtu_cmd).await?.stdout_text().trim().parse().unwrap_or(1500);
            let pid = side.vm.guest.agent().spawn(&refs).await?;
            let summary =
                CaptureSummary { vm: side.vm.guest.name.clone(), container: netns, dev, ..Default::default() };
            running.push(RunningCapture { guest: &side.vm.guest, pid, file, mtu, summary });
        }
    }
    for c in &running {
        // 24 bytes of pcap header once tcpdump listens.
        let header = format!("[ \"$(stat -c %s {} 2>/dev/null || echo 0)\" -ge 24 ]", c.file);
        let ready = format!("{}; {header}", guest::wait_until(&header, 10));
        c.guest
            .run(&ready)
            .await
            .with_context(|| format!("tcpdump on `{}` {} did not start", c.guest.name, c.summary.dev))?;
    }
    Ok(running)
}

/// Stops the captures, brings the files back (into the case's artifacts when
/// kept) and summarises them.
async fn finish_captures(
    running: Vec<RunningCapture<'_>>,
    port: u16,
    original_dst: &(dyn Fn(IpAddr) -> Option<IpAddr> + Sync),
    vxlan_port: Option<u16>,
    case_dir: Option<&Path>,
) -> anyhow::Result<Vec<CaptureSummary>> {
    let mut out = Vec::new();
    for mut c in running {
        c.guest.try_run(&format!("kill -INT {} 2>/dev/null; true", c.pid)).await?;
        c.guest.agent().wait(c.pid, "tcpdump", Duration::from_secs(20)).await?;
        let bytes = c.guest.read_file(&c.file).await?;
        c.guest.try_run(&format!("rm -f {}", c.file)).await?;
        let name = capture::file_name(&c.summary.vm, c.summary.container.as_deref(), &c.summary.dev);
        if let Some(dir) = case_dir {
            std::fs::write(dir.join(&name), &bytes)?;
        }
        let ctx = CaptureContext { port, mtu: c.mtu, original_dst, vxlan_port };
        let parsed = capture::summarize(&bytes, &ctx).map_err(|e| anyhow::anyhow!("{name}: {e}"))?;
        c.summary = CaptureSummary { vm: c.summary.vm, container: c.summary.container, dev: c.summary.dev, ..parsed };
        out.push(c.summary);
    }
    Ok(out)
}

/// Which interfaces carried the payload, from their counters. Data flows into
/// the server for `forward`, into the client for `reverse`, both ways for
/// `bidir`; each interface on the way must have moved at least that much.
fn path_checks(
    server: &Side,
    client: &Side,
    evidence: &[InterfaceEvidence],
    direction: Direction,
    received: u64,
) -> Vec<Check> {
    let (into_server, into_client) = match direction {
        Direction::Forward => (received, 0),
        Direction::Reverse => (0, received),
        Direction::Bidir => (received / 2, received / 2),
    };
    let find = |vm: &str, ns: Option<&str>, dev: &str| {
        evidence.iter().find(|e| e.vm == vm && e.container.as_deref() == ns && e.dev == dev).map(|e| e.delta())
    };
    let (s_name, c_name) = (server.vm.guest.name.as_str(), client.vm.guest.name.as_str());
    let mut checks = Vec::new();
    // An interface faces the network: what flows into its host arrives as rx.
    let moved = |d: Counters, inbound: u64, outbound: u64| d.rx_bytes >= inbound && d.tx_bytes >= outbound;
    let describe = |d: Counters| format!("rx {} B / tx {} B", d.rx_bytes, d.tx_bytes);

    let vf_attached = server.netns.is_some() && Attachment::of(&server.vm.nic) == Attachment::Vf;
    if !vf_attached {
        // On veth and on the underlay path, traffic crosses the VMs' underlay NICs.
        if let (Some(s), Some(c)) = (find(s_name, None, guest::UNDERLAY_DEV), find(c_name, None, guest::UNDERLAY_DEV)) {
            checks.push(Check::new(
                "underlay carried the payload",
                received > 0 && moved(s, into_server, into_client) && moved(c, into_client, into_server),
                format!("server {}, client {}, payload {received} B", describe(s), describe(c)),
            ));
        }
    }
    if let (Some(sc), Some(cc)) = (&server.netns, &client.netns) {
        let (s, c) = (
            find(s_name, Some(sc), guest::CONTAINER_DEV).unwrap_or_default(),
            find(c_name, Some(cc), guest::CONTAINER_DEV).unwrap_or_default(),
        );
        let name =
            if vf_attached { "container VFs carried the payload" } else { "container interfaces carried the payload" };
        checks.push(Check::new(
            name,
            received > 0 && moved(s, into_server, into_client) && moved(c, into_client, into_server),
            format!("server {sc}/eth0 {}, client {cc}/eth0 {}, payload {received} B", describe(s), describe(c)),
        ));
        if vf_attached {
            let drivers: Vec<String> = evidence
                .iter()
                .filter(|e| e.container.is_some())
                .map(|e| {
                    format!("{}/{}: {}", e.vm, e.container.as_deref().unwrap_or(""), e.driver.as_deref().unwrap_or("?"))
                })
                .collect();
            let all_vf =
                evidence.iter().filter(|e| e.container.is_some()).all(|e| e.driver.as_deref() == Some("igbvf"));
            checks.push(Check::new("containers own a VF (igbvf)", all_vf, drivers.join(", ")));
            // The PF's own counters stay quiet: the payload went VF to wire.
            let pf: Vec<Counters> =
                [s_name, c_name].iter().filter_map(|vm| find(vm, None, guest::UNDERLAY_DEV)).collect();
            let pf_bytes: u64 = pf.iter().map(|d| d.rx_bytes + d.tx_bytes).sum();
            checks.push(Check::new(
                "PF stack bypassed",
                received > 0 && pf.len() == 2 && pf_bytes < received / 10,
                format!("PFs moved {pf_bytes} B in all while the VFs carried {received} B"),
            ));
        }
    }
    checks
}
