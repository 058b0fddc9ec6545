//! One case on a booted pair: a clean slate and the overlay's per-case
//! setup, interface probes (offloads applied), counters and kernel log
//! positions before; captures around the workload; then the evidence after
//! (counters, pcaps, the variants' own commands), the generic checks and the
//! overlay's and filter's verdicts, assembled into the case's report.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;

use super::boot::{BootedVm, LabRuntime};
use super::workload::WorkloadOutput;
use super::{capture, checks, workload, Clock};
use crate::filter::{self, Filter};
use crate::guest::{self, Attachment, Guest, Netns};
use crate::lab::{Case, Endpoint, Lab, TrafficPath};
use crate::measure::capture::CaptureSummary;
use crate::measure::counters::Counters;
use crate::measure::nic::{self, InterfaceEvidence};
use crate::overlay::{self, CaseEnd, CaseEvidence, Overlay};
use crate::report::{CaseReport, CaseTiming, Check, Section, Sections};

/// Where an endpoint's traffic enters and leaves its VM.
pub(super) struct Side<'a> {
    pub vm: &'a BootedVm,
    /// The container, for container endpoints.
    pub container: Option<String>,
    /// Its network namespace.
    pub netns: Option<Netns>,
    /// Address of the endpoint for the case's family and path.
    pub addr: String,
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
    let netns = container.clone().map(Netns::Named);
    Side { vm: rt.vm(&vm.name), container, netns, addr }
}

impl Side<'_> {
    /// The interfaces whose evidence a case records: the underlay NIC, then
    /// (container endpoints) the container's interface and, on veth, the
    /// guest-side veth.
    fn interfaces(&self) -> Vec<(Option<String>, String)> {
        let mut v = vec![(None, guest::UNDERLAY_DEV.to_string())];
        if let Some(c) = &self.container {
            v.push((Some(c.clone()), guest::CONTAINER_DEV.to_string()));
            if Attachment::of(&self.vm.nic) == Attachment::Veth {
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

/// What a case read before its workload, to compare with after.
struct Before {
    interfaces: Vec<InterfaceEvidence>,
    dmesg_lines: Vec<u64>,
    /// Outputs of the variants' commands, by artifact name.
    variants: BTreeMap<String, String>,
}

/// A clean slate (no iperf3 left from an earlier case) and the overlay as
/// this case wants it; then the evidence before the workload.
async fn before_case(
    lab: &Lab,
    rt: &LabRuntime,
    (o, f): (&dyn Overlay, &dyn Filter),
    case: &Case,
    sides: [&Side<'_>; 2],
    case_dir: Option<&Path>,
) -> anyhow::Result<Before> {
    for vm in &rt.vms {
        vm.guest.try_run("pkill -x iperf3; true").await?;
    }
    for vm in &lab.vms {
        let cmds = o.case_setup(lab, vm, &case.params);
        if !cmds.is_empty() {
            rt.vm(&vm.name).guest.run(&cmds.join("\n")).await.context("configuring the overlay for the case")?;
        }
    }
    let requested = case.params.offloads.requested();
    // Evidence layout: server interfaces, then client interfaces.
    let mut interfaces = Vec::new();
    for s in sides {
        for (ns, dev) in s.interfaces() {
            interfaces.push(probe_interface(&s.vm.guest, ns.as_deref(), &dev, &requested).await?);
        }
    }
    // Where each kernel log stands, to find what the case made the kernels say.
    let mut dmesg_lines = Vec::new();
    for vm in &rt.vms {
        let out = vm.guest.run("dmesg | wc -l").await?;
        dmesg_lines.push(out.stdout_text().trim().parse::<u64>().unwrap_or(0));
    }
    let commands = lab
        .vms
        .iter()
        .map(|vm| {
            (vm.name.clone(), [o.evidence_before_commands(lab, vm), f.evidence_before_commands(lab, vm)].concat())
        })
        .collect();
    let variants = read_outputs(rt, commands, case_dir.map(|d| d.join("before")).as_deref()).await?;
    Ok(Before { interfaces, dmesg_lines, variants })
}

/// The interface counters after the workload.
async fn after_case(before: &mut Before, sides: [&Side<'_>; 2]) -> anyhow::Result<()> {
    for e in &mut before.interfaces {
        let s = sides.iter().find(|s| s.vm.guest.name == e.vm).expect("an endpoint's VM");
        e.after = read_counters(&s.vm.guest, &e.dev, e.container.as_deref()).await?;
    }
    Ok(())
}

/// Runs the variants' commands on each VM (VM, then (artifact name,
/// command)); the outputs are kept under `dir` by name.
async fn read_outputs(
    rt: &LabRuntime,
    commands: Vec<(String, Vec<(String, String)>)>,
    dir: Option<&Path>,
) -> anyhow::Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for (vm, cmds) in commands {
        let guest = &rt.vm(&vm).guest;
        for (name, cmd) in cmds {
            let text = guest.try_run(&cmd).await?.stdout_text();
            if let Some(dir) = dir {
                let path = dir.join(&name);
                if let Some(parent) = path.parent() {
                    std::fs::create_dir_all(parent)?;
                }
                std::fs::write(path, &text)?;
            }
            out.insert(name, text);
        }
    }
    Ok(out)
}

/// Keeps the workload's raw JSON and the interface evidence.
fn keep_artifacts(dir: &Path, run: &WorkloadOutput, interfaces: &[InterfaceEvidence]) -> anyhow::Result<()> {
    std::fs::write(dir.join("iperf3-client.json"), &run.client.stdout)?;
    if let Ok(s) = &run.server {
        std::fs::write(dir.join("iperf3-server.json"), &s.stdout)?;
    }
    std::fs::write(dir.join("interfaces.json"), serde_json::to_vec_pretty(interfaces)?)?;
    Ok(())
}

/// A variant's section, named.
fn section(name: &str, evidence: Option<serde_json::Value>) -> Option<Section> {
    evidence.map(|evidence| Section { name: name.to_string(), evidence })
}

pub(super) async fn run_case(
    lab: &Lab,
    rt: &LabRuntime,
    case: &Case,
    artifacts: Option<&Path>,
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
    let mut before = before_case(lab, rt, (o, f), case, sides, case_dir.as_deref()).await?;
    let setup_s = clock.lap();
    let captures = capture::start(lab, &hints, sides).await?;
    let captures_start_s = clock.lap();
    let run = workload::run(lab, case, &server, &client).await?;
    let workload_s = clock.lap();
    after_case(&mut before, sides).await?;
    let summaries = capture::finish(captures, lab.workload.port, &hints, case_dir.as_deref()).await?;
    if let Some(dir) = &case_dir {
        keep_artifacts(dir, &run, &before.interfaces)?;
    }
    let captures_stop_s = clock.lap();
    let kernel_says = checks::kernel_alarms(rt, &before.dmesg_lines, case_dir.as_deref()).await?;
    let commands = lab
        .vms
        .iter()
        .map(|vm| (vm.name.clone(), [o.evidence_commands(lab, vm), f.evidence_commands(lab, vm)].concat()));
    let outputs = read_outputs(rt, commands.collect(), case_dir.as_deref()).await?;
    let evidence_s = clock.lap();

    let (mut all, result) = checks::workload_checks(lab, &run.client);
    let received = result.as_ref().map_or(0, |r| r.received_bytes);
    all.extend(checks::path_checks(&server, &client, &before.interfaces, case.params.direction, received));
    all.push(checks::kernel_check(&kernel_says));
    all.extend(checks::captures_check(&summaries));
    let evidence = CaseEvidence {
        case,
        ends: [server.end(), client.end()],
        captures: &summaries,
        delivered: received > 0 && run.client.success(),
        before: before.variants,
        outputs,
    };
    let (ov, fv) = (o.verdict(lab, &evidence), f.verdict(lab, &o.enforcement_points(lab), &evidence));
    all.extend(ov.checks);
    all.extend(fv.checks);
    let verdict_s = clock.lap();
    let timing = CaseTiming {
        setup_s,
        captures_start_s,
        workload_s,
        captures_stop_s,
        evidence_s,
        verdict_s,
        total_s: clock.total(),
    };
    Ok(report(
        case,
        all,
        result,
        (before.interfaces, summaries),
        Sections { overlay: section(o.name(), ov.section), filter: section(f.name(), fv.section) },
        timing,
    ))
}

fn report(
    case: &Case,
    checks: Vec<Check>,
    result: Option<crate::measure::iperf3::Iperf3Result>,
    (interfaces, captures): (Vec<InterfaceEvidence>, Vec<CaptureSummary>),
    variant: Sections,
    timing: CaseTiming,
) -> CaseReport {
    CaseReport {
        name: case.name.clone(),
        params: case.params.clone(),
        throughput_bps: result.as_ref().map_or(0.0, |r| r.throughput_bps),
        retransmits: result.as_ref().and_then(|r| r.retransmits),
        cpu_client_percent: result.as_ref().map_or(0.0, |r| r.cpu_client_percent),
        cpu_server_percent: result.as_ref().map_or(0.0, |r| r.cpu_server_percent),
        passed: checks.iter().all(|c| c.passed),
        checks,
        interfaces,
        captures,
        variant,
        timing,
        vs_baseline: None,
    }
}
