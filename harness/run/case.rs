//! One case on a booted pair: a clean slate and the overlay's per-case
//! setup, interface probes (offloads applied), counters and kernel log
//! positions before; captures around the workload; then the evidence after
//! (counters, pcaps, the variants' own commands), the generic checks and the
//! overlay's and filter's verdicts, assembled into the case's report.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Context;

use super::boot::{BootedVm, LabRuntime, Probed};
use super::record::{self, CaseRecord};
use super::workload::WorkloadOutput;
use super::{capture, checks, matrix, workload, Clock};
use crate::filter::{self, Filter};
use crate::guest::{self, Attachment, Batch, BatchOutput, Guest, Netns};
use crate::lab::{Case, Endpoint, Lab, TrafficPath};
use crate::measure::cost::{CpuTimes, CpuWindow};
use crate::measure::counters::Counters;
use crate::measure::nic::{self, InterfaceEvidence};
use crate::overlay::{self, CaseEnd, Overlay};
use crate::qemu::agent::Output;
use crate::report::{CaseReport, CaseTiming};

/// Where an endpoint's traffic enters and leaves its VM.
pub(super) struct Side<'a> {
    pub vm: &'a BootedVm,
    /// The container, for container endpoints.
    pub container: Option<String>,
    /// Its network namespace.
    pub netns: Option<Netns>,
    /// Address of the endpoint for the case's family and path.
    pub addr: String,
    /// Whether the container's veth has its other end in the VM's namespace
    /// (vlab's veths, not an overlay's own).
    pub host_veth: bool,
}

fn side<'a>(lab: &Lab, rt: &'a LabRuntime, ep: &Endpoint, case: &Case) -> Side<'a> {
    let vm = lab.vm(&ep.vm).expect("validated");
    let family = case.params.family;
    let (container, addr) = match (case.params.path, &ep.container) {
        (TrafficPath::Container, Some(c)) => {
            let container = vm.containers.iter().find(|x| &x.name == c).expect("validated");
            (Some(c.clone()), container.address(family).expect("validated").to_string())
        }
        _ => (None, vm.underlay.get(family).expect("validated").to_string()),
    };
    let netns = container.as_deref().map(Netns::container);
    let booted = rt.vm(&vm.name);
    let host_veth = Attachment::of(&booted.nic) == Attachment::Veth
        && overlay::get(case.params.overlay(lab)).containers() != guest::Containers::Managed;
    Side { vm: booted, container, netns, addr, host_veth }
}

/// The intruder of a container case, when the lab has one with an address
/// of the case's family.
fn intruder_side<'a>(lab: &Lab, rt: &'a LabRuntime, case: &Case) -> Option<Side<'a>> {
    let ep = lab.workload.intruder.as_ref()?;
    let vm = lab.vm(&ep.vm)?;
    let container = vm.containers.iter().find(|c| Some(&c.name) == ep.container.as_ref())?;
    container.address(case.params.family)?;
    (case.params.path == TrafficPath::Container).then(|| side(lab, rt, ep, case))
}

impl Side<'_> {
    /// The interfaces whose evidence a case records: the underlay NIC, then
    /// (container endpoints) the container's interface and, on veth, the
    /// guest-side veth.
    fn interfaces(&self) -> Vec<(Option<String>, String)> {
        let mut v = vec![(None, guest::UNDERLAY_DEV.to_string())];
        if let Some(c) = &self.container {
            v.push((Some(c.clone()), guest::CONTAINER_DEV.to_string()));
            if self.host_veth {
                v.push((None, guest::host_veth(c)));
            }
        }
        v
    }

    fn end(&self) -> CaseEnd {
        CaseEnd {
            vm: self.vm.guest.name.clone(),
            container: self.container.clone(),
            addr: self.addr.parse::<IpAddr>().expect("an address from the lab"),
        }
    }
}

/// An interface whose evidence a case records, and the names of its parts in
/// its VM's batches.
struct Iface<'a> {
    guest: &'a Guest,
    /// The container whose namespace holds it, and that namespace.
    container: Option<(String, Netns)>,
    dev: String,
    index: usize,
}

impl Iface<'_> {
    fn netns(&self) -> Option<Netns> {
        self.container.as_ref().map(|(_, ns)| ns.clone())
    }
    fn probe_part(&self) -> String {
        format!("probe {}", self.index)
    }
    /// Its key among the runtime's probes.
    fn key(&self) -> (String, Option<String>, String) {
        (self.guest.name.clone(), self.container.as_ref().map(|(c, _)| c.clone()), self.dev.clone())
    }
    fn counters_part(&self) -> String {
        format!("counters {}", self.index)
    }
}

/// Evidence layout: server interfaces, then client interfaces.
fn ifaces<'a>(sides: [&Side<'a>; 2]) -> Vec<Iface<'a>> {
    let all = sides.into_iter().flat_map(|s| {
        let netns = s.netns.clone();
        s.interfaces().into_iter().map(move |(c, dev)| (&s.vm.guest, c.zip(netns.clone()), dev))
    });
    all.enumerate().map(|(index, (guest, container, dev))| Iface { guest, container, dev, index }).collect()
}

fn evidence_part(name: &str) -> String {
    format!("evidence {name}")
}

/// The variants' commands for `vm`, as parts of its batch.
fn evidence_parts(batch: &mut Batch, commands: Vec<(String, String)>) -> Vec<String> {
    let mut names = Vec::new();
    for (name, cmd) in commands {
        batch.report(evidence_part(&name), cmd);
        names.push(name);
    }
    names
}

/// Each VM's batch output, by VM name.
type ByVm<'a> = Vec<(&'a str, &'a BatchOutput)>;

fn of<'a>(outputs: &ByVm<'a>, vm: &str) -> &'a BatchOutput {
    outputs.iter().find(|(v, _)| *v == vm).map(|(_, o)| *o).expect("a batch per VM")
}

/// The variants' outputs from the VMs' batches, kept under `dir` by name.
fn variant_outputs(
    outputs: &ByVm,
    names: &[(String, Vec<String>)],
    dir: Option<&Path>,
) -> anyhow::Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for (vm, names) in names {
        for name in names {
            let text = of(outputs, vm).text(&evidence_part(name));
            if let Some(dir) = dir {
                let path = dir.join(name);
                if let Some(parent) = path.parent() {
                    std::fs::create_dir_all(parent)?;
                }
                std::fs::write(path, &text)?;
            }
            out.insert(name.clone(), text);
        }
    }
    Ok(out)
}

/// Runs one batch on every VM at once (`batch` makes each VM's).
pub(super) async fn on_every_vm(
    rt: &LabRuntime,
    batch: impl FnMut(&str) -> Batch,
) -> anyhow::Result<Vec<(String, BatchOutput)>> {
    every_vm(rt, batch, false).await
}

/// [`on_every_vm`] for batches that change nothing in the guests: one whose
/// output comes back unreadable runs once more (see [`Guest::reread_batch`]).
///
/// [`Guest::reread_batch`]: crate::guest::Guest::reread_batch
pub(super) async fn reread_on_every_vm(
    rt: &LabRuntime,
    batch: impl FnMut(&str) -> Batch,
) -> anyhow::Result<Vec<(String, BatchOutput)>> {
    every_vm(rt, batch, true).await
}

async fn every_vm(
    rt: &LabRuntime,
    mut batch: impl FnMut(&str) -> Batch,
    reread: bool,
) -> anyhow::Result<Vec<(String, BatchOutput)>> {
    let batches: Vec<Batch> = rt.vms.iter().map(|vm| batch(&vm.guest.name)).collect();
    let outputs = futures::future::try_join_all(rt.vms.iter().zip(&batches).map(|(vm, b)| async move {
        if reread {
            vm.guest.reread_batch(b).await
        } else {
            vm.guest.batch(b).await
        }
    }))
    .await?;
    Ok(rt.vms.iter().map(|v| v.guest.name.clone()).zip(outputs).collect())
}

fn by_vm(outputs: &[(String, BatchOutput)]) -> ByVm<'_> {
    outputs.iter().map(|(v, o)| (v.as_str(), o)).collect()
}

/// What a case read before its workload, to compare with after.
struct Before<'a> {
    interfaces: Vec<InterfaceEvidence>,
    /// Each VM's uptime when the case began: its kernel log after it is new.
    uptimes: BTreeMap<String, f64>,
    /// Outputs of the variants' commands, by artifact name.
    variants: BTreeMap<String, String>,
    captures: Vec<capture::RunningCapture<'a>>,
    server_pid: i64,
    /// The probe's listener, when the lab has a probe port.
    probe_pid: Option<i64>,
    /// The probe matrix's listeners, by VM.
    matrix_pids: BTreeMap<String, Vec<i64>>,
    /// How long the slowest VM waited for its captures and server to listen
    /// once the rest was done.
    listen_s: f64,
    /// How long the filter's per-case setup took on each VM that has one.
    filter_setup_s: BTreeMap<String, f64>,
}

/// The filter's per-case setup in the batch before the case (its rules
/// put in place), timed in the guest.
const FILTER_SETUP: &str = "filter case setup";
const CPU_BEFORE: &str = "cpu before";
const CPU_AFTER: &str = "cpu after";

/// Kills what an earlier case may have left running (the workload's
/// servers, captures and the probe matrix's listeners and monitors; shell
/// builtins only; 20-50 ms under TCG, so only after a case that did not end
/// tidily).
const CLEAN: &str = "for d in /proc/[0-9]*; do read -r c 2>/dev/null <$d/comm || continue; \
    case $c in iperf3|tcpdump|perl|nft|xtables-monitor) kill -9 ${d#/proc/} 2>/dev/null;; esac; done; true";

/// One batch per VM, all at once, before the workload: a clean slate; the
/// captures and the iperf3 server started in the background; while they
/// start, the overlay as this case wants it, the case's offloads, every
/// interface probed (its namespace entered once), the uptime and the
/// variants' evidence before; then the wait until all of them listen.
async fn before_case<'a>(
    lab: &Lab,
    rt: &LabRuntime,
    (o, f): (&dyn Overlay, &dyn Filter),
    (case, server, matrix): (&Case, &Side<'_>, &matrix::Plan),
    (ifaces, planned): (&[Iface<'_>], Vec<capture::Planned<'a>>),
    case_dir: Option<&Path>,
) -> anyhow::Result<Before<'a>> {
    let requested = case.params.offloads.requested();
    let tidy = rt.tidy.swap(false, Ordering::Relaxed);
    let mut names = Vec::new();
    // Taken, and put back only once read: after a case that failed half-way
    // its successor applies and reads everything again.
    let mut probes = std::mem::take(&mut *rt.probes.lock().expect("probes"));
    let outputs = on_every_vm(rt, |name| {
        let vm = lab.vm(name).expect("a lab VM");
        let mine = || ifaces.iter().filter(move |i| i.guest.name == name);
        let is_server = name == server.vm.guest.name;
        let mut b = Batch::new();
        if !tidy {
            b.report("clean", CLEAN);
        }
        // First what takes long to start, so that it starts while the rest
        // runs: nothing here moves the workload's packets before the client.
        capture::start_part(&planned, name, &mut b);
        if is_server {
            workload::start_part(lab, server, &mut b);
            workload::probe_listener_part(lab, server, &mut b);
        }
        // The workload's servers hold their ports in the server's container.
        let taken = |c: &str| -> Vec<(crate::policy::Protocol, u16)> {
            if Some(c) != server.container.as_deref() {
                return Vec::new();
            }
            let ports = std::iter::once(lab.workload.port).chain(lab.workload.probe_port);
            ports.map(|p| (crate::policy::Protocol::Tcp, p)).collect()
        };
        matrix.listener_part(name, taken, &mut b);
        let setup = o.case_setup(lab, vm, &case.params);
        if !setup.is_empty() {
            b.succeed("overlay case setup", setup.join("\n"));
        }
        let setup = f.case_setup(lab, vm, &case.params);
        if !setup.is_empty() {
            b.succeed(FILTER_SETUP, guest::timed(&setup.join("\n")));
        }
        matrix.monitor_part(name, &mut b);
        for i in mine() {
            let last = probes.get(&i.key());
            let apply = nic::still_to_apply(&requested, last.map(|p| &p.offloads));
            b.succeed(i.probe_part(), nic::probe_script(i.netns().as_ref(), &i.dev, last.is_some(), &apply));
        }
        b.report("uptime", "read -r up _ </proc/uptime; echo $up");
        let cmds = [o.evidence_before_commands(lab, vm), f.evidence_before_commands(lab, vm)].concat();
        names.push((name.to_string(), evidence_parts(&mut b, cmds)));
        capture::listen_part(&planned, name, &mut b);
        if is_server {
            workload::listen_part(lab, server, &mut b);
        }
        matrix.ready_part(name, &mut b);
        b
    })
    .await
    .context("before the case")?;
    let outputs = by_vm(&outputs);
    let mut interfaces = Vec::new();
    let mut mtus = Vec::new();
    for i in ifaces {
        let probe = nic::parse_probe(&of(&outputs, &i.guest.name).text(&i.probe_part()), &requested);
        let known = probes.entry(i.key()).or_insert(Probed {
            driver: probe.driver,
            channels: probe.channels,
            offloads: BTreeMap::new(),
        });
        known.offloads = probe.offloads.clone();
        let (driver, channels) = (known.driver.clone(), known.channels);
        let before =
            probe.counters.with_context(|| format!("unreadable counters of {} on `{}`", i.dev, i.guest.name))?;
        mtus.push(((i.guest.name.clone(), i.netns(), i.dev.clone()), probe.mtu));
        interfaces.push(InterfaceEvidence {
            vm: i.guest.name.clone(),
            container: i.container.as_ref().map(|(c, _)| c.clone()),
            dev: i.dev.clone(),
            driver,
            channels,
            vfs: probe.vfs,
            offloads: probe.offloads,
            segmentation: probe.segmentation,
            mtu: probe.mtu,
            before,
            after: before,
        });
    }
    let mtu = |p: &capture::Planned| {
        let (vm, netns, dev) = p.listens_on();
        mtus.iter().find(|((v, n, d), _)| v == vm && n.as_ref() == netns && d == dev).and_then(|(_, m)| *m)
    };
    let captures = capture::running(planned, &outputs, mtu)?;
    let server_pid =
        workload::server_pid(of(&outputs, &server.vm.guest.name)).context("no pid for the iperf3 server")?;
    let probe_pid = workload::probe_listener_pid(of(&outputs, &server.vm.guest.name));
    if lab.workload.probe_port.is_some() && probe_pid.is_none() {
        anyhow::bail!("no pid for the probe's listener");
    }
    let listen_s = outputs
        .iter()
        .map(|(_, o)| o.seconds(capture::LISTEN_PART) + o.seconds(workload::LISTEN_PART))
        .fold(0.0, f64::max);
    *rt.probes.lock().expect("probes") = probes;
    let uptimes =
        outputs.iter().map(|(vm, o)| (vm.to_string(), o.text("uptime").trim().parse().unwrap_or(0.0))).collect();
    let variants = variant_outputs(&outputs, &names, case_dir.map(|d| d.join("before")).as_deref())?;
    let matrix_pids = outputs.iter().map(|(vm, o)| (vm.to_string(), matrix::Plan::listener_pids(o))).collect();
    let filter_setup_s = outputs
        .iter()
        .filter(|(_, o)| o.get(FILTER_SETUP).is_some())
        .map(|(vm, o)| {
            let took = guest::took(&o.text(FILTER_SETUP));
            Ok((vm.to_string(), took.with_context(|| format!("`{vm}`: the filter's setup was not timed"))?))
        })
        .collect::<anyhow::Result<_>>()?;
    Ok(Before { interfaces, uptimes, variants, captures, server_pid, probe_pid, matrix_pids, listen_s, filter_setup_s })
}

/// What a case read after its workload.
struct After {
    /// The server's JSON.
    server: Option<Vec<u8>>,
    /// What each VM's kernel logged during the case.
    kernel_logs: Vec<(String, String)>,
    /// Outputs of the variants' commands, by artifact name.
    variants: BTreeMap<String, String>,
    /// The probe's outcome.
    probe: Option<overlay::Probe>,
    /// The intruder's attempt.
    intruder: Option<overlay::Probe>,
    /// What the timed connections printed.
    connects: Option<String>,
    /// The workload's VMs' CPU times around it.
    cpu: Vec<CpuWindow>,
}

/// The client's run and each VM's evidence after it, in the same agent call
/// where the VM is an endpoint: the client's VM runs the client first, then
/// the probes; the server's VM sleeps through the workload, then waits for
/// the server to end (killed when the client failed). Then each stops its
/// captures and reads the counters after and what the kernel logged during
/// the case; any other VM (an intruder's first) does so once the client is
/// done. The variants' evidence is read in the same batches, except on the
/// server's VM (when it is not the client's), which reads its own last: a
/// policy that drops at the receiving VM has then counted every probe.
/// Returns the client's output, how long it ran, and the evidence.
async fn workload_and_after(
    lab: &Lab,
    rt: &LabRuntime,
    (o, f): (&dyn Overlay, &dyn Filter),
    (before, ifaces): (&mut Before<'_>, &[Iface<'_>]),
    (case, server, client, intruder): (&Case, &Side<'_>, &Side<'_>, Option<&Side<'_>>),
    case_dir: Option<&Path>,
) -> anyhow::Result<(Output, f64, After)> {
    let (server_vm, client_vm) = (&server.vm.guest, &client.vm.guest);
    let duration = lab.workload.duration;
    let late = server_vm.name != client_vm.name;
    let mut late_batch = Batch::new();
    let mut names = Vec::new();
    let batches: Vec<(&str, Batch)> = rt
        .vms
        .iter()
        .map(|booted| {
            let name = booted.guest.name.as_str();
            let vm = lab.vm(name).expect("a lab VM");
            let mut b = Batch::new();
            // The CPU times bracket the workload on its VMs (see PacketCost).
            let endpoint = name == client_vm.name || name == server_vm.name;
            if endpoint {
                b.report(CPU_BEFORE, CpuTimes::command());
            }
            if name == client_vm.name {
                workload::client_part(lab, case, client, &server.addr, &mut b);
                b.report(CPU_AFTER, CpuTimes::command());
                workload::probe_part(lab, client, &server.addr, &mut b);
                workload::timed_connects_part(lab, client, &server.addr, &mut b);
            }
            if let Some(i) = intruder.filter(|i| i.vm.guest.name == name) {
                workload::intruder_part(lab, i, &server.addr, &mut b);
            }
            if name == server_vm.name {
                let asleep = if name == client_vm.name { Duration::ZERO } else { duration };
                workload::end_part(before.server_pid, asleep, &mut b);
                if name != client_vm.name {
                    b.report(CPU_AFTER, CpuTimes::command());
                }
            }
            capture::stop_part(&before.captures, name, &mut b);
            for i in ifaces.iter().filter(|i| i.guest.name == name) {
                let at = Netns::paths(i.netns().as_ref());
                b.succeed(i.counters_part(), format!("{}{}", at.prelude, Counters::command(&at.sys, &i.dev)));
            }
            b.succeed("kernel log", checks::kernel_log_command());
            let cmds = [o.evidence_commands(lab, vm), f.evidence_commands(lab, vm)].concat();
            let evidence_batch = if late && name == server_vm.name { &mut late_batch } else { &mut b };
            names.push((name.to_string(), evidence_parts(evidence_batch, cmds)));
            (name, b)
        })
        .collect();
    let batch = |name: &str| &batches.iter().find(|(n, _)| *n == name).expect("a batch per VM").1;
    let on_client = async {
        let connects = match lab.workload.connects {
            0 => Duration::ZERO,
            _ => Duration::from_secs(crate::measure::connect::LIMIT_S),
        };
        let out = client_vm.batch_for_at_most(batch(&client_vm.name), duration, connects).await;
        let ok = out.as_ref().ok().and_then(workload::client_output).is_some_and(|c| c.success());
        if !ok && server_vm.name != client_vm.name {
            workload::kill(server_vm, before.server_pid).await;
        }
        out
    };
    let on_server = async {
        match server_vm.name != client_vm.name {
            true => Some(server_vm.batch_for(batch(&server_vm.name), duration).await),
            false => None,
        }
    };
    let (on_client, on_server) = tokio::join!(on_client, on_server);
    if let Some(pid) = before.probe_pid {
        workload::kill(server_vm, pid).await;
    }
    let mut outputs = vec![(client_vm.name.clone(), on_client.context("the workload")?)];
    if let Some(out) = on_server {
        outputs.push((server_vm.name.clone(), out.context("the workload's end")?));
    }
    let others = rt.vms.iter().filter(|v| v.guest.name != server_vm.name && v.guest.name != client_vm.name);
    for (vm, out) in others.clone().zip(
        futures::future::try_join_all(others.map(|v| v.guest.batch(batch(&v.guest.name))))
            .await
            .context("after the case")?,
    ) {
        outputs.push((vm.guest.name.clone(), out));
    }
    let late_out = match late {
        true => Some(server_vm.batch(&late_batch).await.context("the variants' evidence")?),
        false => None,
    };
    let client_out = workload::client_output(&outputs[0].1).context("the client's batch has no client output")?;
    let probe = workload::probe_outcome(lab, &outputs[0].1);
    let connects = workload::connect_output(&outputs[0].1);
    let intruder = intruder.and_then(|i| {
        let out = outputs.iter().find(|(vm, _)| *vm == i.vm.guest.name)?;
        workload::intruder_outcome(lab, &out.1)
    });
    let workload_s = outputs[0].1.seconds(workload::CLIENT_PART);
    let outputs = by_vm(&outputs);
    for (e, i) in before.interfaces.iter_mut().zip(ifaces) {
        e.after = Counters::parse(&of(&outputs, &i.guest.name).text(&i.counters_part()))
            .with_context(|| format!("unreadable counters of {} on `{}`", i.dev, i.guest.name))?;
    }
    let cpu = outputs
        .iter()
        .filter_map(|(vm, o)| {
            let (before, after) = (CpuTimes::parse(&o.text(CPU_BEFORE))?, CpuTimes::parse(&o.text(CPU_AFTER))?);
            Some(CpuWindow { vm: vm.to_string(), before, after })
        })
        .collect();
    let mut kernel_logs = Vec::new();
    for (vm, out) in &outputs {
        let since = before.uptimes.get(*vm).copied().unwrap_or(0.0);
        let log = checks::kernel_log_since(&out.text("kernel log"), since);
        if let (Some(dir), false) = (case_dir, log.trim().is_empty()) {
            std::fs::write(dir.join(format!("dmesg-{vm}.txt")), &log)?;
        }
        kernel_logs.push((vm.to_string(), log));
    }
    let server = workload::server_output(of(&outputs, &server.vm.guest.name));
    // The client has exited (its part ended); the server and the captures
    // are gone if their parts say so.
    let stopped = outputs.iter().all(|(_, o)| o.get(capture::STOP_PART).is_none_or(|p| p.success()));
    rt.tidy.store(stopped && server.is_some(), Ordering::Relaxed);
    let mut evidence = outputs.clone();
    if let Some(out) = &late_out {
        evidence.retain(|(vm, _)| *vm != server_vm.name);
        evidence.push((server_vm.name.as_str(), out));
    }
    let variants = variant_outputs(&evidence, &names, case_dir)?;
    Ok((client_out, workload_s, After { server, kernel_logs, variants, probe, intruder, connects, cpu }))
}

/// Keeps the workload's raw JSON and the interface evidence.
fn keep_artifacts(dir: &Path, run: &WorkloadOutput, interfaces: &[InterfaceEvidence]) -> anyhow::Result<()> {
    std::fs::write(dir.join("iperf3-client.json"), &run.client.stdout)?;
    if let Some(s) = &run.server {
        std::fs::write(dir.join("iperf3-server.json"), s)?;
    }
    std::fs::write(dir.join("interfaces.json"), serde_json::to_vec_pretty(interfaces)?)?;
    Ok(())
}

/// Whether a case is measured or warms a freshly deployed pair up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Run {
    Measured,
    /// Its report is discarded; the next case's kernel log window starts
    /// where its own did.
    WarmUp,
}

pub(super) async fn run_case(
    lab: &Lab,
    rt: &LabRuntime,
    case: &Case,
    artifacts: Option<&Path>,
    run: Run,
) -> anyhow::Result<CaseReport> {
    let mut clock = Clock::start();
    let (o, f) = (overlay::get(&lab.overlay), filter::get(&lab.filter));
    let hints = o.capture_hints(lab);
    let server = side(lab, rt, &lab.workload.server, case);
    let client = side(lab, rt, &lab.workload.client, case);
    let sides = [&server, &client];
    let case_dir: Option<PathBuf> = artifacts.map(|dir| dir.join(&case.name));
    if let Some(dir) = &case_dir {
        std::fs::create_dir_all(dir)?;
    }
    let planned = capture::plan(lab, &hints, sides);
    let ifaces = ifaces(sides);
    let plan = matrix::Plan::of(lab, f, case);
    let mut before =
        before_case(lab, rt, (o, f), (case, &server, &plan), (&ifaces, planned), case_dir.as_deref()).await?;
    {
        let mut from = rt.kernel_log_from.lock().expect("kernel log window");
        match run {
            Run::WarmUp => *from = Some(before.uptimes.clone()),
            Run::Measured => before.uptimes = from.take().unwrap_or(before.uptimes),
        }
    }
    // The batch's wait for the captures and the server is their start; the
    // rest (setup, probes, evidence) ran while they started.
    let captures_start_s = before.listen_s;
    let setup_s = (clock.lap() - captures_start_s).max(0.0);
    let intruder = intruder_side(lab, rt, case);
    let ends = (case, &server, &client, intruder.as_ref());
    let (client_out, workload_s, after) =
        workload_and_after(lab, rt, (o, f), (&mut before, &ifaces), ends, case_dir.as_deref()).await?;
    // The client ran first in its VM's evidence batch.
    let evidence_s = (clock.lap() - workload_s).max(0.0);
    let matrix = match plan.is_empty() {
        true => None,
        false => Some(plan.run(lab, rt, f, &before.matrix_pids).await?),
    };
    let matrix_s = clock.lap();
    let pcaps = capture::collect(before.captures, case_dir.as_deref()).await?;
    let run = WorkloadOutput { client: client_out, server: after.server };
    if let Some(dir) = &case_dir {
        keep_artifacts(dir, &run, &before.interfaces)?;
    }
    let captures_stop_s = clock.lap();
    let (captures, pcaps): (Vec<_>, Vec<_>) = pcaps.into_iter().unzip();
    let record = CaseRecord {
        vlab: env!("CARGO_PKG_VERSION").to_string(),
        case: case.name.clone(),
        ends: [server.end(), client.end()],
        on_vf: Attachment::of(&server.vm.nic) == Attachment::Vf,
        client: (&run.client).into(),
        interfaces: before.interfaces,
        kernel_logs: after.kernel_logs,
        before: before.variants,
        after: after.variants,
        probe: after.probe,
        intruder: after.intruder,
        connects: after.connects,
        cpu: after.cpu,
        filter_setup_s: before.filter_setup_s,
        matrix,
        captures,
    };
    if let Some(dir) = &case_dir {
        record::keep(dir, &record)?;
    }
    let mut report = record::judge(lab, case, &record, &pcaps)?;
    let verdict_s = clock.lap();
    report.timing = CaseTiming {
        setup_s,
        captures_start_s,
        workload_s,
        captures_stop_s,
        evidence_s,
        matrix_s,
        verdict_s,
        total_s: clock.total(),
    };
    Ok(report)
}
