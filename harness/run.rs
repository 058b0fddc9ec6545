//! Orchestration of one lab run: image, acceleration, underlay, VMs, guest
//! setup, then every case's workload, evidence and checks.
//!
//! Every host resource is owned by a value whose `Drop` releases it, so an
//! error, a panic or a cancelled future (Ctrl-C) leaves nothing behind.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::guest::{self, Guest};
use crate::hostnet::LabNet;
use crate::image;
use crate::lab::{variant_name, Case, Direction, Lab, TrafficPath};
use crate::measure::counters::Counters;
use crate::measure::iperf3;
use crate::overlay;
use crate::qemu::accel::{self, AccelChoice};
use crate::qemu::agent::Agent;
use crate::qemu::{self, NicSpec, QemuProcess, VmSpec};
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

/// One booted VM and everything it owns, released in field order.
struct BootedVm {
    guest: Guest,
    qemu: QemuProcess,
    report: VmReport,
    mac: String,
    _run_dir: tempfile::TempDir,
}

/// The running lab: VMs first, then the underlay they are attached to.
struct LabRuntime {
    vms: Vec<BootedVm>,
    _net: LabNet,
    artifacts: Option<PathBuf>,
}

impl Drop for LabRuntime {
    fn drop(&mut self) {
        for vm in &mut self.vms {
            vm.qemu.stop();
            if let Some(dir) = &self.artifacts {
                let _ = std::fs::copy(vm.qemu.serial_path(), dir.join(format!("serial-{}.log", vm.report.name)));
            }
        }
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

/// `Combined:` under "Current hardware settings" of `ethtool -l`.
pub fn parse_channels(ethtool_l: &str) -> Option<u32> {
    let current = ethtool_l.split("Current hardware settings").nth(1)?;
    current.lines().find_map(|l| l.trim().strip_prefix("Combined:")).and_then(|v| v.trim().parse().ok())
}

/// Runs a lab; check failures are in the report, errors mean the lab could not run.
pub async fn run(lab: &Lab, opts: &RunOptions) -> anyhow::Result<Report> {
    let started = Instant::now();
    let progress = &opts.progress;
    let qemu_bin = qemu::find_qemu().map_err(anyhow::Error::msg)?;
    let qemu_version = qemu::qemu_version(&qemu_bin).unwrap_or_else(|| "unknown".into());

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
    if let Some(why) = &notice {
        eprintln!("vlab: KVM is not usable ({why}); using TCG (slower)");
    }

    if let Some(dir) = &opts.artifacts {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create artifacts directory {}", dir.display()))?;
    }
    progress.phase("creating the underlay");
    let mut net = LabNet::create().context("cannot create the lab's network namespace (are you root?)")?;
    let vhost = vhost_usable();
    let firmware = qemu::find_firmware();
    let modules: Vec<String> = ["virtio_net".to_string()].into_iter().chain(overlay::modules(lab)).collect();

    // Spawn every QEMU first so the guests boot in parallel.
    let mut pending = Vec::new();
    let mut pgid = 0;
    for (i, vm) in lab.vms.iter().enumerate() {
        let tap = format!("t-{}", vm.name);
        net.add_tap(&tap, vm.nic.queues)?;
        let run_dir = tempfile::Builder::new().prefix("vlab-").tempdir_in(runtime_base())?;
        let disk = run_dir.path().join("root.qcow2");
        create_overlay_disk(&image.rootfs, &disk)?;
        let mac = format!("52:54:00:4c:{:02x}:01", i + 1);
        let spec = VmSpec {
            name: vm.name.clone(),
            accel,
            cpu_model: vm.cpu_model.clone(),
            cpus: vm.cpus,
            memory_mib: vm.memory_mib,
            firmware: firmware.clone(),
            kernel: kernel.clone(),
            initramfs: image.initramfs.clone(),
            disk,
            run_dir: run_dir.path().to_path_buf(),
            modules: modules.clone(),
            nics: vec![NicSpec { id: "net0".into(), tap, mac: mac.clone(), queues: vm.nic.queues, vhost }],
        };
        let proc = QemuProcess::spawn(&qemu_bin, &spec, &net.netns_path(), pgid)?;
        if pgid == 0 {
            pgid = proc.pid();
        }
        pending.push((vm, spec, proc, run_dir, mac, Instant::now()));
    }

    progress.phase(&format!("booting {} VMs ({accel})", lab.vms.len()));
    let deadline = tokio::time::Instant::now() + lab.timeouts.boot;
    let command_timeout = lab.timeouts.command;
    let connects = pending.iter_mut().map(|(_, spec, proc, _, _, t0)| {
        let socket = spec.agent_socket();
        async move {
            let agent = Agent::connect(&socket, deadline, command_timeout, || proc.check_running()).await;
            (agent, t0.elapsed().as_secs_f64())
        }
    });
    let agents = futures::future::join_all(connects).await;
    let mut vms = Vec::new();
    let mut failure = None;
    for ((vm, _spec, proc, run_dir, mac, _), (agent, boot_s)) in pending.into_iter().zip(agents) {
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
            nic: variant_name(&vm.nic.model),
            channels: None,
            vhost,
        };
        vms.push(BootedVm {
            guest: Guest::new(&vm.name, agent, lab.timeouts.command),
            qemu: proc,
            report,
            mac,
            _run_dir: run_dir,
        });
    }
    let mut rt = LabRuntime { vms, _net: net, artifacts: opts.artifacts.clone() };
    if let Some(e) = failure {
        return Err(e);
    }

    let cases = match deploy_and_measure(lab, &mut rt, opts).await {
        Ok(cases) => cases,
        Err(e) => return Err(explain_vm_exit(&mut rt, e).await),
    };
    let vm_reports = rt.vms.iter().map(|v| v.report.clone()).collect();
    drop(rt);
    progress.finish();
    Ok(Report {
        lab: lab.name.clone(),
        lab_file: lab.source.display().to_string(),
        accel: accel.to_string(),
        accel_notice: notice,
        kernel: kernel_release,
        qemu: qemu_version,
        image: format!("{}-{}", image.name, image.key),
        overlay: variant_name(&lab.overlay),
        vms: vm_reports,
        passed: cases.iter().all(|c| c.passed),
        cases,
        wall_s: started.elapsed().as_secs_f64(),
    })
}

/// Guest setup (underlay, containers, overlay, setup commands), then every case.
async fn deploy_and_measure(lab: &Lab, rt: &mut LabRuntime, opts: &RunOptions) -> anyhow::Result<Vec<CaseReport>> {
    let progress = &opts.progress;
    progress.phase("setting up containers and overlay");
    for vm in &lab.vms {
        let booted = rt.vms.iter_mut().find(|b| b.report.name == vm.name).expect("booted");
        let mut script = guest::underlay_commands(vm, &booted.mac);
        script.extend(guest::container_commands(vm));
        script.extend(overlay::commands(lab, vm));
        booted.guest.run(&script.join("\n")).await.context("guest setup failed")?;
        let channels = booted.guest.run(&format!("ethtool -l {}", guest::UNDERLAY_DEV)).await?;
        booted.report.channels = parse_channels(&channels.stdout_text());
        for cmd in &vm.setup {
            booted.guest.run(cmd).await.with_context(|| format!("setup command of `{}` failed", vm.name))?;
        }
    }

    let mut cases = Vec::new();
    for case in lab.cases() {
        if let Some(f) = &opts.case_filter {
            if !case.name.contains(f.as_str()) {
                continue;
            }
        }
        progress.phase(&format!("case {}", case.name));
        let report = run_case(lab, rt, &case, opts.artifacts.as_deref())
            .await
            .with_context(|| format!("case `{}`", case.name))?;
        cases.push(report);
    }
    if cases.is_empty() {
        bail!("no case matches --case {:?}", opts.case_filter.as_deref().unwrap_or(""));
    }
    for vm in &mut rt.vms {
        vm.qemu.check_running()?;
    }
    Ok(cases)
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
    /// `ip netns exec NS` prefix for container endpoints.
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

fn in_netns(netns: &Option<String>, argv: Vec<String>) -> Vec<String> {
    match netns {
        Some(ns) => ["ip", "netns", "exec", ns].into_iter().map(String::from).chain(argv).collect(),
        None => argv,
    }
}

async fn read_counters(g: &Guest, dev: &str) -> anyhow::Result<Counters> {
    let out = g.run(&Counters::command(dev, None)).await?;
    Counters::parse(&out.stdout_text()).with_context(|| format!("unreadable counters of {dev} on `{}`", g.name))
}

async fn run_case(lab: &Lab, rt: &LabRuntime, case: &Case, artifacts: Option<&Path>) -> anyhow::Result<CaseReport> {
    let w = &lab.workload;
    let server = side(lab, rt, &w.server, case);
    let client = side(lab, rt, &w.client, case);
    // A clean slate: no iperf3 left from an earlier case.
    for vm in &rt.vms {
        vm.guest.try_run("pkill -x iperf3; true").await?;
    }
    let veth = |s: &Side| s.netns.as_ref().map(|c| guest::host_veth(c));
    let mut before = Vec::new();
    for s in [&server, &client] {
        before.push(read_counters(&s.vm.guest, guest::UNDERLAY_DEV).await?);
        if let Some(v) = veth(s) {
            before.push(read_counters(&s.vm.guest, &v).await?);
        }
    }

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
            bail!("iperf3 server on `{}` did not listen on port {} within 20 s", server.vm.guest.name, w.port);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let client_argv = in_netns(&client.netns, iperf3::client_argv(w, &case.params, &server.addr));
    let client_refs: Vec<&str> = client_argv.iter().map(String::as_str).collect();
    let limit = w.duration + lab.timeouts.command;
    let client_out = client.vm.guest.agent().exec(&client_refs, limit).await?;
    let server_out = server.vm.guest.agent().wait(server_pid, "iperf3 -s", Duration::from_secs(20)).await;

    let mut after = Vec::new();
    for s in [&server, &client] {
        after.push(read_counters(&s.vm.guest, guest::UNDERLAY_DEV).await?);
        if let Some(v) = veth(s) {
            after.push(read_counters(&s.vm.guest, &v).await?);
        }
    }
    let delta: Vec<Counters> = after.iter().zip(&before).map(|(a, b)| a.since(b)).collect();

    if let Some(dir) = artifacts {
        let case_dir = dir.join(&case.name);
        std::fs::create_dir_all(&case_dir)?;
        std::fs::write(case_dir.join("iperf3-client.json"), &client_out.stdout)?;
        if let Ok(s) = &server_out {
            std::fs::write(case_dir.join("iperf3-server.json"), &s.stdout)?;
        }
        std::fs::write(case_dir.join("counters.json"), serde_json::to_vec_pretty(&delta)?)?;
    }

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

    // The counters prove which interfaces carried the payload. Index layout:
    // server underlay, [server veth], client underlay, [client veth].
    let has_veth = server.netns.is_some();
    let (s_ul, c_ul) = (delta[0], delta[if has_veth { 2 } else { 1 }]);
    let (into_server, into_client) = match case.params.direction {
        Direction::Forward => (received, 0),
        Direction::Reverse => (0, received),
        Direction::Bidir => (received / 2, received / 2),
    };
    let ul_ok = s_ul.rx_bytes >= into_server
        && c_ul.tx_bytes >= into_server
        && c_ul.rx_bytes >= into_client
        && s_ul.tx_bytes >= into_client;
    checks.push(Check::new(
        "underlay carried the payload",
        received > 0 && ul_ok,
        format!(
            "server {} rx {} B / tx {} B, client rx {} B / tx {} B, payload {received} B",
            guest::UNDERLAY_DEV,
            s_ul.rx_bytes,
            s_ul.tx_bytes,
            c_ul.rx_bytes,
            c_ul.tx_bytes
        ),
    ));
    if has_veth {
        let (s_v, c_v) = (delta[1], delta[3]);
        // A container's sends arrive on the guest side of its veth (rx there).
        let ok = s_v.tx_bytes >= into_server
            && c_v.rx_bytes >= into_server
            && c_v.tx_bytes >= into_client
            && s_v.rx_bytes >= into_client;
        checks.push(Check::new(
            "container veths carried the payload",
            received > 0 && ok,
            format!("server veth tx {} B, client veth rx {} B, payload {received} B", s_v.tx_bytes, c_v.rx_bytes),
        ));
    }
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
    })
}
