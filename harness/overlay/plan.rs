//! The words variants and the orchestration share: deploy steps, readiness
//! probes, capture hints, the evidence of a case and a verdict.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::lab::Case;
use crate::measure::capture::CaptureSummary;
use crate::report::Check;

pub use crate::guest::Containers;
use crate::guest::Netns;

/// Where a VM forwards its containers' traffic: where a filter is enforced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EnforcementPoint {
    /// The VM's IP forwarding path (netfilter's FORWARD hook).
    Forward,
    /// A bridge whose ports are the containers (netfilter's bridge family).
    Bridge {
        /// The bridge device.
        name: String,
    },
    /// A bridge in a namespace of the overlay's own (Docker's overlay
    /// networks): netfilter's bridge family there, and with `br_netfilter`
    /// the IP families' forward hooks of that namespace.
    BridgeIn {
        /// The namespace.
        netns: Netns,
        /// The bridge device.
        name: String,
    },
    /// The overlay's BPF programs at a device's tc ingress hook (packets
    /// they redirect pass no netfilter hook).
    TcIngress {
        /// The device.
        device: String,
    },
}

impl std::fmt::Display for EnforcementPoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EnforcementPoint::Forward => f.write_str("the VMs' forwarding path"),
            EnforcementPoint::Bridge { name } => write!(f, "bridge {name}"),
            EnforcementPoint::BridgeIn { netns, name } => write!(f, "bridge {name} in {}", netns.label()),
            EnforcementPoint::TcIngress { device } => write!(f, "BPF programs at the tc ingress of {device}"),
        }
    }
}

impl EnforcementPoint {
    /// The namespace it is in (`None`: the VM's own).
    pub fn netns(&self) -> Option<&Netns> {
        match self {
            EnforcementPoint::BridgeIn { netns, .. } => Some(netns),
            EnforcementPoint::Forward | EnforcementPoint::Bridge { .. } | EnforcementPoint::TcIngress { .. } => None,
        }
    }

    /// The namespaces of `points`, each once (`None`: the VM's own).
    pub fn namespaces(points: &[EnforcementPoint]) -> Vec<Option<Netns>> {
        let mut all: Vec<Option<Netns>> = Vec::new();
        for ns in points.iter().map(|p| p.netns().cloned()) {
            if !all.contains(&ns) {
                all.push(ns);
            }
        }
        all
    }

    /// The netfilter families whose `forward` hook sees the containers'
    /// traffic there.
    pub fn netfilter_families(&self) -> &'static [&'static str] {
        match self {
            EnforcementPoint::Forward => &["ip", "ip6", "inet"],
            EnforcementPoint::Bridge { .. } => &["bridge"],
            EnforcementPoint::BridgeIn { .. } => &["bridge", "ip", "ip6", "inet"],
            EnforcementPoint::TcIngress { .. } => &[],
        }
    }
}

/// A file a deploy step writes into a guest (through the agent, not a heredoc).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestFile {
    /// Absolute path in the guest.
    pub path: String,
    /// The content.
    pub text: String,
    /// Where to keep a copy under the run's artifacts, if at all.
    pub artifact: Option<String>,
}

/// One step of a deploy plan: files, then commands, on one VM.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Step {
    /// The VM it runs on.
    pub vm: String,
    /// Files written first.
    pub files: Vec<GuestFile>,
    /// Shell commands run after (`set -e`).
    pub commands: Vec<String>,
    /// Keeps the commands' trimmed stdout under this name: later steps'
    /// commands and files may say `{{NAME}}` to use it (a join token).
    pub output: Option<String>,
    /// Runs at the same time as the step before it, which is on another VM,
    /// instead of after it (see [`side_by_side`]).
    pub together: bool,
}

/// `steps` (one per VM, each on another) run at the same time: each but the
/// first runs [`Step::together`] with the one before it.
pub fn side_by_side(steps: impl IntoIterator<Item = Step>) -> Vec<Step> {
    steps.into_iter().enumerate().map(|(i, step)| Step { together: i > 0, ..step }).collect()
}

impl Step {
    /// Commands on `vm`.
    pub fn on(vm: &str, commands: Vec<String>) -> Step {
        Step { vm: vm.to_string(), commands, ..Step::default() }
    }

    /// This step with `text` substituted for each `{{NAME}}` of `outputs`.
    pub fn with_outputs(&self, outputs: &BTreeMap<String, String>) -> Step {
        let fill = |s: &str| outputs.iter().fold(s.to_string(), |acc, (k, v)| acc.replace(&format!("{{{{{k}}}}}"), v));
        Step {
            vm: self.vm.clone(),
            files: self.files.iter().map(|f| GuestFile { text: fill(&f.text), ..f.clone() }).collect(),
            commands: self.commands.iter().map(|c| fill(c)).collect(),
            output: self.output.clone(),
            together: self.together,
        }
    }
}

/// A probe that says when an overlay carries traffic after deploy: the
/// command is tried until it succeeds or `limit` passes; the time it took is
/// reported, and a probe that never succeeds is not an error by itself (the
/// case's checks say what is missing).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Readiness {
    /// What it waits for, for reports (`first container ping through`).
    pub what: String,
    /// The VM it runs on.
    pub vm: String,
    /// The command (exit 0: ready).
    pub command: String,
    /// How long to try.
    pub limit: Duration,
}

impl Readiness {
    /// The workload's client container pings the server container's address
    /// of `family` (one ping a second), for at most `limit`; `None` unless
    /// both ends are containers.
    pub fn first_ping(lab: &crate::lab::Lab, family: crate::lab::Family, limit: Duration) -> Option<Readiness> {
        let w = &lab.workload;
        let (Some(c), Some(sc)) = (&w.client.container, &w.server.container) else { return None };
        let server = lab.vm(&w.server.vm)?;
        let target = server.containers.iter().find(|x| &x.name == sc).and_then(|x| x.address(family))?;
        Some(Readiness {
            what: "first container ping through".into(),
            vm: w.client.vm.clone(),
            command: format!(
                "{} ping -c 1 -W 1 -q {target} >/dev/null 2>&1",
                crate::guest::shell_line(&Netns::container(c).exec_prefix())
            ),
            limit,
        })
    }
}

/// How to capture and decode an overlay's traffic.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CaptureHints {
    /// The tcpdump filter on the underlay when the workload travels inside
    /// a tunnel (`udp port 4789`); `None`: the workload's port.
    pub underlay_filter: Option<String>,
    /// The UDP port of VXLAN packets to decapsulate.
    pub vxlan_port: Option<u16>,
    /// Destinations the overlay rewrites: a destination inside the prefix
    /// carried the address before translation (the one its sender's
    /// checksum covers).
    pub translated: Vec<(IpNet, IpAddr)>,
}

impl CaptureHints {
    /// The destination a packet had before the overlay rewrote it, if it did.
    pub fn original_destination(&self, dst: IpAddr) -> Option<IpAddr> {
        self.translated.iter().find(|(net, _)| net.contains(&dst)).map(|(_, addr)| *addr)
    }
}

/// One end of a case's workload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaseEnd {
    /// Its VM.
    pub vm: String,
    /// Its container, for container endpoints.
    pub container: Option<String>,
    /// Its address for the case's family and path.
    pub addr: IpAddr,
}

/// What a case left behind, for the variants to judge.
pub struct CaseEvidence<'a> {
    /// The case.
    pub case: &'a Case,
    /// The server's and the client's end.
    pub ends: [CaseEnd; 2],
    /// Summaries of every capture.
    pub captures: &'a [CaptureSummary],
    /// Whether the workload got through (iperf3 completed and moved payload).
    pub delivered: bool,
    /// Outputs of the variants' commands before the workload, by artifact name.
    pub before: BTreeMap<String, String>,
    /// Outputs of the variants' evidence commands after the case, by artifact name.
    pub outputs: BTreeMap<String, String>,
    /// The client's connection attempt to the probe port after the workload,
    /// when the lab asks for one.
    pub probe: Option<Probe>,
    /// The intruder's connection attempt to the workload's port after the
    /// workload (container cases of labs that name an intruder).
    pub intruder: Option<Probe>,
    /// The probe matrix, when the filter asks for one.
    pub matrix: Option<&'a ProbeMatrix>,
}

/// The probe matrix of a case: one connection attempt from every container
/// to every other, on every port and protocol the filter names, all after
/// the workload; and the filter's drop counters read before and after.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ProbeMatrix {
    pub cells: Vec<ProbeCell>,
    /// The drop counters' outputs before and after the probes, by artifact.
    pub before: BTreeMap<String, String>,
    pub after: BTreeMap<String, String>,
    /// How long the probes took, all VMs at once.
    pub seconds: f64,
}

/// One attempt of the matrix.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeCell {
    pub from: String,
    pub to: String,
    pub protocol: crate::policy::Protocol,
    pub port: u16,
    pub outcome: ProbeOutcome,
}

/// What became of one TCP connection attempt from the client's endpoint to
/// a listener on the server's probe port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Probe {
    /// The port.
    pub port: u16,
    /// Its outcome.
    pub outcome: ProbeOutcome,
}

/// How a probe ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ProbeOutcome {
    /// The listener accepted it.
    Connected,
    /// Something answered with a reset (or an ICMP error).
    Refused,
    /// Nothing answered within the probe's second.
    TimedOut,
}

impl ProbeOutcome {
    /// What became of the attempt, in words.
    pub fn word(self) -> &'static str {
        match self {
            ProbeOutcome::Connected => "connected",
            ProbeOutcome::Refused => "refused",
            ProbeOutcome::TimedOut => "timed out",
        }
    }
}

impl std::fmt::Display for Probe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let what = match self.outcome {
            ProbeOutcome::Connected => "connected",
            ProbeOutcome::Refused => "refused",
            ProbeOutcome::TimedOut => "timed out (1 s)",
        };
        write!(f, "TCP {}: {what}", self.port)
    }
}

impl CaseEvidence<'_> {
    /// Whether both ends are containers (the overlay carried the case).
    pub fn container_to_container(&self) -> bool {
        self.ends.iter().all(|e| e.container.is_some())
    }

    /// The captures on the VMs' underlay NICs (`true`) or in containers (`false`).
    pub fn captures_at(&self, underlay: bool) -> Vec<&CaptureSummary> {
        self.captures.iter().filter(|c| c.container.is_none() == underlay).collect()
    }
}

/// What an overlay adds to a case's namespace form (`vlab repro`, which
/// renders it; the overlay names nothing of it): the host, its containers and
/// the underlay become network namespaces on one machine, the overlay's deploy and case commands run in
/// them as they ran in the guests, and its checks are shell.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NamespaceForm {
    /// A command that fails where the kernel lacks what the overlay needs,
    /// and what to say then: the script skips (kselftest's 4).
    pub kernel_probe: Option<(String, String)>,
    /// Variables for the capture reader (`awk -v NAME=VALUE`): `mode` (a
    /// checksum mode) and `map` (`LOCATOR=SUM ...`; see
    /// `harness/repro/judge.awk`).
    pub reader_vars: Vec<(String, String)>,
    /// The overlay's checks after the workload's own.
    pub checks: Vec<ShellCheck>,
}

/// One check of a namespace form, as shell. The script runs it after the
/// workload with `$facts_wire` and `$facts_container` naming files of what
/// the capture reader found on the underlay and in the containers, and
/// `$csum_errors` the receivers' TcpInCsumErrors increase; it ends by
/// calling `verdict pass|fail|skip DETAIL`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShellCheck {
    /// The check's name, as vlab's report names it.
    pub name: String,
    /// The shell that judges it.
    pub script: String,
}

/// A variant's judgement of one case.
#[derive(Debug, Clone, Default)]
pub struct Verdict {
    /// Its checks.
    pub checks: Vec<Check>,
    /// Its section of the case's report (typed by the variant, kept as JSON).
    pub section: Option<serde_json::Value>,
}
