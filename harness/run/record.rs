//! A case's evidence as read from the guests, and its judgement.
//!
//! What a case reads (the client's output, the interfaces' counters, the
//! kernel log, the variants' outputs, the probes, the pcaps) becomes a
//! [`CaseRecord`]; [`judge`] computes every check of the case from it alone.
//! A run judges what it just read; under `--artifacts` it keeps the record as
//! `case.json` beside the pcaps, and `vlab rejudge` judges it again without
//! VMs, through the same function.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Context;
use serde::{Deserialize, Serialize};

use super::checks;
use crate::lab::{Case, Direction, Lab};
use crate::measure::capture::{self, CaptureContext, CaptureSummary};
use crate::measure::cost::{CpuWindow, PacketCost};
use crate::measure::counters::Counters;
use crate::measure::nic::InterfaceEvidence;
use crate::overlay::{self, CaseEnd, CaseEvidence, Probe, ProbeMatrix};
use crate::qemu::agent::Output;
use crate::report::{CaseReport, CaseTiming, Check, Section, Sections};
use crate::{filter, measure};

/// The file a case's record is kept in, in its evidence directory.
pub const RECORD_FILE: &str = "case.json";

/// Everything a case's checks are computed from.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CaseRecord {
    /// The vlab version that read it.
    pub vlab: String,
    /// The case's name.
    pub case: String,
    /// The server's end and the client's.
    pub ends: [CaseEnd; 2],
    /// Whether the server's container sits on a VF of its VM's NIC.
    pub on_vf: bool,
    /// The iperf3 client: exit code, its JSON, its stderr.
    pub client: CommandRecord,
    /// Each interface on the way, counters before and after.
    pub interfaces: Vec<InterfaceEvidence>,
    /// What each VM's kernel logged during the case (client's VM first).
    pub kernel_logs: Vec<(String, String)>,
    /// The variants' outputs before the workload, by artifact name.
    pub before: BTreeMap<String, String>,
    /// The variants' outputs after it, by artifact name.
    pub after: BTreeMap<String, String>,
    /// The client's probe of the probe port, when the lab has one.
    pub probe: Option<Probe>,
    /// The intruder's attempt, when the case has one.
    pub intruder: Option<Probe>,
    /// What the timed new connections printed (`[workload] connects`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connects: Option<String>,
    /// How long the filter's per-case setup (the case's rules put in
    /// place) took on each VM, seconds by the guest's clock; empty where
    /// the filter deploys once for every case.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub filter_setup_s: BTreeMap<String, f64>,
    /// The probe matrix, when the filter asks for one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub matrix: Option<ProbeMatrix>,
    /// Each VM's CPU times around the workload.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cpu: Vec<CpuWindow>,
    /// The captures, in the order they were taken; each one's pcap is kept
    /// as `capture::file_name` beside the record.
    pub captures: Vec<CaptureRecord>,
}

/// A guest command's outcome, as text.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CommandRecord {
    pub code: i64,
    pub stdout: String,
    pub stderr: String,
}

impl From<&Output> for CommandRecord {
    fn from(o: &Output) -> CommandRecord {
        CommandRecord { code: o.code, stdout: o.stdout_text(), stderr: o.stderr_text() }
    }
}

impl CommandRecord {
    fn output(&self) -> Output {
        Output { code: self.code, stdout: self.stdout.clone().into_bytes(), stderr: self.stderr.clone().into_bytes() }
    }
}

/// Where a capture was taken.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaptureRecord {
    pub vm: String,
    pub container: Option<String>,
    pub dev: String,
    /// The interface's MTU when the case began.
    pub mtu: usize,
}

impl CaptureRecord {
    /// Its pcap's file name.
    pub fn file(&self) -> String {
        capture::file_name(&self.vm, self.container.as_deref(), &self.dev)
    }
}

/// A case judged: its report (timing left to the caller).
pub fn judge(lab: &Lab, case: &Case, record: &CaseRecord, pcaps: &[Vec<u8>]) -> anyhow::Result<CaseReport> {
    anyhow::ensure!(
        pcaps.len() == record.captures.len(),
        "{} captures recorded, {} pcaps given",
        record.captures.len(),
        pcaps.len()
    );
    let (o, f) = (overlay::get(&lab.overlay), filter::get(&lab.filter));
    let hints = o.capture_hints(lab);
    let original_dst = |dst| hints.original_destination(dst);
    let mut summaries = Vec::new();
    for (c, bytes) in record.captures.iter().zip(pcaps) {
        let ctx = CaptureContext {
            port: lab.workload.port,
            mtu: c.mtu,
            original_dst: &original_dst,
            vxlan_port: hints.vxlan_port,
        };
        let parsed = capture::summarize(bytes, &ctx).map_err(|e| anyhow::anyhow!("{}: {e}", c.file()))?;
        summaries.push(CaptureSummary {
            vm: c.vm.clone(),
            container: c.container.clone(),
            dev: c.dev.clone(),
            ..parsed
        });
    }
    let client = record.client.output();
    let (mut all, result) = checks::workload_checks(lab, &client);
    let received = result.as_ref().map_or(0, |r| r.received_bytes);
    all.extend(checks::path_checks(&record.ends, record.on_vf, &record.interfaces, case.params.direction, received));
    let kernel_says: Vec<String> =
        record.kernel_logs.iter().flat_map(|(vm, log)| checks::kernel_alarms(vm, log)).collect();
    all.push(checks::kernel_check(&kernel_says));
    all.extend(checks::captures_check(&summaries));
    let connect = match lab.workload.connects {
        0 => None,
        n => {
            let l = record.connects.as_deref().and_then(|t| measure::connect::parse(t, n));
            all.push(checks::connects_check(l.as_ref(), n));
            l
        }
    };
    let evidence = CaseEvidence {
        case,
        ends: record.ends.clone(),
        captures: &summaries,
        delivered: received > 0 && client.success(),
        before: record.before.clone(),
        outputs: record.after.clone(),
        probe: record.probe,
        intruder: record.intruder,
        matrix: record.matrix.as_ref(),
    };
    let (ov, fv) = (o.verdict(lab, &evidence), f.verdict(lab, &o.enforcement_points(lab), &evidence));
    all.extend(ov.checks);
    all.extend(fv.checks);
    let section = |name: &str, evidence: Option<serde_json::Value>| {
        evidence.map(|evidence| Section { name: name.to_string(), evidence })
    };
    let variant = Sections { overlay: section(o.name(), ov.section), filter: section(f.name(), fv.section) };
    let cost = result.as_ref().and_then(|r| packet_cost(case, record, &summaries, r));
    let mut report = report(case, all, result, (record.interfaces.clone(), summaries), variant);
    report.cost = cost;
    report.connect = connect;
    report.ruleset_s = record.filter_setup_s.values().copied().reduce(f64::max);
    Ok(report)
}

/// What the case's data packets cost (see [`PacketCost`]): those the
/// sending ends' NICs transmitted to the wire (the underlay NIC, or the
/// container's VF; both ends' with `bidir`), with the sizes the first
/// sender's capture there shows; `None` when both ends are on one VM
/// (nothing crosses the wire).
fn packet_cost(
    case: &Case,
    record: &CaseRecord,
    captures: &[CaptureSummary],
    result: &measure::iperf3::Iperf3Result,
) -> Option<PacketCost> {
    let [server, client] = &record.ends;
    if server.vm == client.vm {
        return None;
    }
    let senders: Vec<&CaseEnd> = match case.params.direction {
        Direction::Forward => vec![client],
        Direction::Reverse => vec![server],
        Direction::Bidir => vec![client, server],
    };
    // A container on a VF sends through its own interface, the NIC's.
    let wire = |end: &CaseEnd| match (record.on_vf, &end.container) {
        (true, Some(c)) => (Some(c.clone()), crate::guest::CONTAINER_DEV),
        _ => (None, crate::guest::UNDERLAY_DEV),
    };
    let nic = |end: &&CaseEnd| {
        let (container, dev) = wire(end);
        record.interfaces.iter().find(|i| i.vm == end.vm && i.container == container && i.dev == dev)
    };
    let sent = senders.iter().map(|end| nic(end).map(|i| i.delta())).collect::<Option<Vec<_>>>()?;
    let sent = sent.iter().fold(Counters::default(), |a, d| Counters {
        tx_packets: a.tx_packets + d.tx_packets,
        tx_bytes: a.tx_bytes + d.tx_bytes,
        ..a
    });
    let cost = PacketCost::of(&sent, result.received_bytes, result.seconds, &record.cpu)?;
    let (container, dev) = wire(senders[0]);
    let sizes =
        captures.iter().find(|c| c.vm == senders[0].vm && c.container == container && c.dev == dev).map(|c| c.sizes);
    Some(PacketCost { sizes, ..cost })
}

fn report(
    case: &Case,
    checks: Vec<Check>,
    result: Option<measure::iperf3::Iperf3Result>,
    (interfaces, captures): (Vec<InterfaceEvidence>, Vec<CaptureSummary>),
    variant: Sections,
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
        timing: CaseTiming::default(),
        vs_baseline: None,
        cost: None,
        vs_baseline_split: None,
        vs_no_filter: None,
        connect: None,
        connect_vs_no_filter: None,
        connect_summary: None,
        connect_vs_no_filter_summary: None,
        ruleset_s: None,
        ruleset_summary: None,
        throughput: None,
        vs_baseline_summary: None,
        vs_no_filter_summary: None,
        repetitions: Vec::new(),
    }
}

/// Keeps a case's record in its evidence directory (its pcaps are there already).
pub fn keep(dir: &Path, record: &CaseRecord) -> anyhow::Result<()> {
    let path = dir.join(RECORD_FILE);
    let mut text = serde_json::to_vec_pretty(record)?;
    text.push(b'\n');
    std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))
}

/// Reads a case's record and its pcaps from its evidence directory.
pub fn load(dir: &Path) -> anyhow::Result<(CaseRecord, Vec<Vec<u8>>)> {
    let path = dir.join(RECORD_FILE);
    let text = std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
    let record: CaseRecord =
        serde_json::from_slice(&text).with_context(|| format!("{}: not a case record", path.display()))?;
    let pcaps = record
        .captures
        .iter()
        .map(|c| {
            let p = dir.join(c.file());
            std::fs::read(&p).with_context(|| format!("cannot read {}", p.display()))
        })
        .collect::<anyhow::Result<_>>()?;
    Ok((record, pcaps))
}
