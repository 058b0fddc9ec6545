//! The `iptables` filter: the study's stateful policy on the containers'
//! forwarding path.
//!
//! At every enforcement point of the overlay, for IPv4 and IPv6
//! (`iptables`, `ip6tables`; Debian's are the nftables-backed ones):
//!
//! ```text
//! -P FORWARD DROP
//! -A FORWARD -m state --state ESTABLISHED,RELATED -j ACCEPT
//! -A FORWARD -p tcp --dport PORT -j ACCEPT        (PORT: the workload's)
//! ```
//!
//! A routed overlay's point is the VM's own FORWARD chain. A bridge (the
//! VXLAN overlays' `br-vx`, Docker's overlay namespace's `br0`) reaches
//! FORWARD through `br_netfilter` with `bridge-nf-call-iptables` on in that
//! namespace; for Docker's overlay that is the only place where
//! container-to-container traffic is forwarded (the VXLAN socket is in the
//! VM's namespace, so the VM's FORWARD chain and `DOCKER-USER` never see it).
//! Evidence: the chain's rules with their packet and byte counters
//! (`-v -S FORWARD`) before and after each case.

use serde::Serialize;

use super::Filter;
use crate::guest::Netns;
use crate::lab::{Lab, Vm};
use crate::overlay::{CaseEvidence, EnforcementPoint, ProbeOutcome, Step, Variant, Verdict};
use crate::report::{list, Check};

/// The `iptables` filter.
pub struct Iptables;

/// The tools, one per family.
const TOOLS: [&str; 2] = ["iptables", "ip6tables"];

/// The rules at each point for the workload's `port`, after the policy.
pub fn rules(port: u16) -> [String; 2] {
    [
        "-A FORWARD -m state --state ESTABLISHED,RELATED -j ACCEPT".into(),
        format!("-A FORWARD -p tcp --dport {port} -j ACCEPT"),
    ]
}

/// Which of the policy's parts a line of `-S FORWARD` (counters left out)
/// is, as `iptables` prints them back (`--state RELATED,ESTABLISHED`,
/// `-p tcp -m tcp --dport PORT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Part {
    /// `-P FORWARD DROP`.
    Policy,
    /// The ESTABLISHED,RELATED rule.
    Established,
    /// The workload port's rule.
    Port,
}

pub fn part_of(rule: &str, port: u16) -> Option<Part> {
    let w: Vec<&str> = rule.split_whitespace().collect();
    let has = |s: &str| w.contains(&s);
    let pair = |a: &str, b: &str| w.windows(2).any(|x| x[0] == a && x[1] == b);
    if rule == "-P FORWARD DROP" {
        return Some(Part::Policy);
    }
    if !(has("-A") && has("FORWARD") && pair("-j", "ACCEPT")) {
        return None;
    }
    let states = w.windows(2).find(|x| x[0] == "--state").map(|x| x[1]);
    if let Some(s) = states {
        let mut s: Vec<&str> = s.split(',').collect();
        s.sort_unstable();
        return (s == ["ESTABLISHED", "RELATED"]).then_some(Part::Established);
    }
    (pair("-p", "tcp") && pair("--dport", &port.to_string())).then_some(Part::Port)
}

/// The script that installs the policy where `point` is.
fn install(point: &EnforcementPoint, port: u16) -> String {
    let mut s = Vec::new();
    if matches!(point, EnforcementPoint::Bridge { .. } | EnforcementPoint::BridgeIn { .. }) {
        s.push("sysctl -qw net.bridge.bridge-nf-call-iptables=1 net.bridge.bridge-nf-call-ip6tables=1".to_string());
    }
    for tool in TOOLS {
        s.push(format!("{tool} -w -P FORWARD DROP"));
        for rule in rules(port) {
            s.push(format!("{tool} -w {rule}"));
        }
    }
    Netns::script(point.netns(), &s.join("\n"))
}

fn artifact(vm: &str, netns: Option<&Netns>) -> String {
    super::artifact("iptables", vm, netns, "txt")
}

/// What `-v -S FORWARD` of both tools prints at each of `vm`'s points.
fn counters_commands(lab: &Lab, vm: &Vm) -> Vec<(String, String)> {
    let points = crate::overlay::get(&lab.overlay).enforcement_points(lab);
    EnforcementPoint::namespaces(&points)
        .into_iter()
        .map(|ns| {
            let script = TOOLS.map(|t| format!("echo '# {t}'; {t} -w -v -S FORWARD")).join("\n");
            (artifact(&vm.name, ns.as_ref()), Netns::script(ns.as_ref(), &script))
        })
        .collect()
}

/// One line of `-v -S FORWARD`: the rule without its counters, and them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RuleCounter {
    /// `iptables` or `ip6tables`.
    pub tool: String,
    /// The rule as `-S` prints it, counters left out (`-P FORWARD DROP` for the policy).
    pub rule: String,
    pub packets: u64,
    pub bytes: u64,
}

/// Parses the output of [`counters_commands`]: `# TOOL` lines, then that
/// tool's `-v -S FORWARD` lines (`-A FORWARD ... -c PACKETS BYTES ...`).
pub fn parse_counters(text: &str) -> Vec<RuleCounter> {
    let mut tool = String::new();
    let mut out = Vec::new();
    for line in text.lines() {
        if let Some(t) = line.strip_prefix("# ") {
            tool = t.trim().to_string();
            continue;
        }
        let words: Vec<&str> = line.split_whitespace().collect();
        let Some(at) = words.iter().position(|w| *w == "-c") else { continue };
        let (Some(p), Some(b)) =
            (words.get(at + 1).and_then(|w| w.parse().ok()), words.get(at + 2).and_then(|w| w.parse().ok()))
        else {
            continue;
        };
        let rule: Vec<&str> = words[..at].iter().chain(words.get(at + 3..).unwrap_or(&[])).copied().collect();
        out.push(RuleCounter { tool: tool.clone(), rule: rule.join(" "), packets: p, bytes: b });
    }
    out
}

/// A part of the policy's packets and bytes during a case, at one point.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RuleDelta {
    /// `VM` or `VM/NAMESPACE`.
    pub at: String,
    pub tool: String,
    pub part: Part,
    pub packets: u64,
    pub bytes: u64,
}

impl Variant for Iptables {
    fn name(&self) -> &'static str {
        "iptables"
    }

    fn packages(&self) -> &'static [&'static str] {
        &["iptables"]
    }

    fn modules(&self) -> &'static [&'static str] {
        &["br_netfilter"]
    }

    fn evidence_before_commands(&self, lab: &Lab, vm: &Vm) -> Vec<(String, String)> {
        counters_commands(lab, vm)
    }

    fn evidence_commands(&self, lab: &Lab, vm: &Vm) -> Vec<(String, String)> {
        counters_commands(lab, vm)
    }
}

impl Filter for Iptables {
    fn deploy(&self, lab: &Lab, points: &[EnforcementPoint]) -> Vec<Step> {
        lab.vms
            .iter()
            .map(|vm| Step::on(&vm.name, points.iter().map(|p| install(p, lab.workload.port)).collect()))
            .collect()
    }

    fn verdict(&self, lab: &Lab, points: &[EnforcementPoint], e: &CaseEvidence) -> Verdict {
        let port = lab.workload.port;
        let mut deltas = Vec::new();
        let mut missing = Vec::new();
        for ns in EnforcementPoint::namespaces(points) {
            for vm in &lab.vms {
                let name = artifact(&vm.name, ns.as_ref());
                let at = super::place(&vm.name, ns.as_ref());
                let before = parse_counters(e.before.get(&name).map_or("", String::as_str));
                let after = parse_counters(e.outputs.get(&name).map_or("", String::as_str));
                for tool in TOOLS {
                    for part in [Part::Policy, Part::Established, Part::Port] {
                        let find = |v: &[RuleCounter]| {
                            v.iter().find(|r| r.tool == tool && part_of(&r.rule, port) == Some(part)).cloned()
                        };
                        match (find(&before), find(&after)) {
                            (Some(b), Some(a)) => deltas.push(RuleDelta {
                                at: at.clone(),
                                tool: tool.into(),
                                part,
                                packets: a.packets.saturating_sub(b.packets),
                                bytes: a.bytes.saturating_sub(b.bytes),
                            }),
                            _ => missing.push(format!("{at} {tool} {part:?}")),
                        }
                    }
                }
            }
        }
        let sum = |part: Part| deltas.iter().filter(|d| d.part == part).map(|d| d.packets).sum::<u64>();
        let (est_p, port_p, drop_p) = (sum(Part::Established), sum(Part::Port), sum(Part::Policy));
        let total = est_p + port_p + drop_p;
        let share = if total > 0 { est_p as f64 / total as f64 } else { 0.0 };
        let connections = u64::from(e.case.params.streams) + 1;
        let mut checks = vec![
            Check::new(
                "iptables: the policy is in place at every enforcement point",
                missing.is_empty(),
                if missing.is_empty() {
                    format!("policy DROP and both rules for IPv4 and IPv6 at {} points", deltas.len() / 6)
                } else {
                    format!("missing: {}", list(&missing))
                },
            ),
            Check::new(
                "iptables: ESTABLISHED,RELATED takes the data",
                e.delivered && est_p > 0 && share >= 0.9,
                format!("{est_p} of {total} filtered packets ({:.1} %)", share * 100.0),
            ),
            Check::new(
                &format!("iptables: the port rule matches the handshake (TCP {port})"),
                e.delivered && port_p >= connections && port_p <= 20 * connections,
                format!("{port_p} packets for {connections} connections (control and streams) on every VM's path"),
            ),
        ];
        if let Some(p) = e.probe {
            checks.push(Check::new(
                &format!("iptables: the policy drops a probe to TCP {}", p.port),
                p.outcome == ProbeOutcome::TimedOut && drop_p > 0,
                format!("{p}; the policy dropped {drop_p} packets"),
            ));
        }
        Verdict {
            checks,
            section: Some(serde_json::json!({
                "rules": deltas, "established_share": (share * 1000.0).round() / 1000.0, "probe": e.probe,
                "established_packets": est_p, "port_packets": port_p, "dropped_packets": drop_p,
            })),
        }
    }
}
