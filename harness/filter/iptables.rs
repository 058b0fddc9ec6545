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

use super::netfilter_policy::Method;
use super::policy::{self, Counter, Part, RuleDelta};
use super::{Filter, MatrixRead};
use crate::guest::Netns;
use crate::lab::{CaseParams, Lab, LabError, LabKeys, Vm};
use crate::overlay::{CaseEvidence, EnforcementPoint, Step, Variant, Verdict};

/// The `iptables` filter.
pub struct Iptables;

/// Given a policy file, the filter enforces it (see [`super::netfilter_policy`]).
const METHOD: Method = Method::Iptables;

/// The `[iptables]` table.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    /// A policy file (see [`crate::policy::parse`]), relative to the lab file.
    #[allow(dead_code)]
    policy: Option<std::path::PathBuf>,
}

#[derive(Debug, Default, serde::Deserialize)]
struct Section {
    #[serde(default)]
    #[allow(dead_code)]
    iptables: Option<Settings>,
}

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

/// What saves each chain's policy before the policy replaces it.
fn save() -> Vec<String> {
    TOOLS.iter().map(|t| format!("echo {}=$({t} -w -S FORWARD | sed -n 's/^-P FORWARD //p')", policy_var(t))).collect()
}

/// The policy for the workload's `port`, for both tools.
fn install(port: u16) -> String {
    let mut s = Vec::new();
    for tool in TOOLS {
        s.push(format!("{tool} -w -P FORWARD DROP"));
        for rule in rules(port) {
            s.push(format!("{tool} -w {rule}"));
        }
    }
    s.join("\n")
}

/// What takes the policy out again and puts the chains' policies back.
fn remove(port: u16) -> String {
    let mut s = Vec::new();
    for tool in TOOLS {
        for rule in rules(port) {
            s.push(format!("{tool} -w {}", rule.replacen("-A ", "-D ", 1)));
        }
        s.push(format!("{tool} -w -P FORWARD ${}", policy_var(tool)));
    }
    s.join("\n")
}

/// The state file's variable that keeps `tool`'s FORWARD policy.
fn policy_var(tool: &str) -> &'static str {
    if tool == "iptables" {
        "P4"
    } else {
        "P6"
    }
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

    fn kernel_options(&self) -> &'static [&'static str] {
        &[
            "NETFILTER_XTABLES",
            "IP_NF_IPTABLES",
            "IP_NF_FILTER",
            "IP6_NF_IPTABLES",
            "IP6_NF_FILTER",
            "NF_CONNTRACK",
            "NETFILTER_XT_MATCH_STATE",
        ]
    }

    fn lab_keys(&self) -> LabKeys {
        LabKeys { tables: &["iptables", "probes", "endpoints"], matrix: &["policy", "rules"], ..LabKeys::default() }
    }

    fn validate(&self, lab: &Lab) -> Result<(), LabError> {
        lab.section::<Section>()?;
        METHOD.validate(lab)
    }

    fn inputs(&self, lab: &Lab) -> Vec<std::path::PathBuf> {
        METHOD.source().inputs(lab)
    }

    fn axes(&self, lab: &Lab) -> Result<Vec<(String, Vec<String>)>, LabError> {
        Ok(super::policy_file::axes(lab))
    }

    fn summary(&self, sections: &[(&str, &serde_json::Value)]) -> Option<String> {
        super::probes::summary(sections)
    }

    fn evidence_before_commands(&self, lab: &Lab, vm: &Vm) -> Vec<(String, String)> {
        if METHOD.given(lab) {
            return METHOD.evidence_commands(lab, vm);
        }
        counters_commands(lab, vm)
    }

    fn evidence_commands(&self, lab: &Lab, vm: &Vm) -> Vec<(String, String)> {
        if METHOD.given(lab) {
            return METHOD.evidence_commands(lab, vm);
        }
        counters_commands(lab, vm)
    }
}

impl Filter for Iptables {
    fn deploy(&self, lab: &Lab, points: &[EnforcementPoint]) -> Vec<Step> {
        if METHOD.given(lab) {
            return METHOD.deploy(lab, points);
        }
        policy::install("iptables", lab, points, &save(), &install(lab.workload.port))
    }

    fn remove(&self, lab: &Lab, points: &[EnforcementPoint]) -> Vec<Step> {
        if METHOD.given(lab) {
            return METHOD.remove(lab, points);
        }
        policy::remove("iptables", lab, points, &remove(lab.workload.port))
    }

    fn case_setup(&self, lab: &Lab, vm: &Vm, case: &CaseParams) -> Vec<String> {
        METHOD.case_setup(lab, vm, case)
    }

    fn probe_targets(&self, lab: &Lab, case: &CaseParams) -> Vec<(crate::policy::Protocol, u16)> {
        METHOD.probe_targets(lab, case)
    }

    fn drop_counter_commands(&self, lab: &Lab, vm: &Vm, when: MatrixRead) -> Vec<(String, String)> {
        METHOD.drop_counter_commands(lab, vm, when)
    }

    fn matrix_monitors(&self, lab: &Lab, vm: &Vm) -> Vec<String> {
        METHOD.matrix_monitors(lab, vm)
    }

    fn verdict(&self, lab: &Lab, points: &[EnforcementPoint], e: &CaseEvidence) -> Verdict {
        if METHOD.given(lab) {
            return METHOD.verdict(lab, points, e);
        }
        let port = lab.workload.port;
        let mut deltas = Vec::new();
        let mut missing = Vec::new();
        for (vm, ns, at) in policy::places(lab, points) {
            let name = artifact(vm, ns.as_ref());
            let before = parse_counters(e.before.get(&name).map_or("", String::as_str));
            let after = parse_counters(e.outputs.get(&name).map_or("", String::as_str));
            for tool in TOOLS {
                for part in Part::ALL {
                    let find = |v: &[RuleCounter]| {
                        v.iter()
                            .find(|r| r.tool == tool && part_of(&r.rule, port) == Some(part))
                            .map(|r| Counter { packets: r.packets, bytes: r.bytes })
                    };
                    match (find(&before), find(&after)) {
                        (Some(b), Some(a)) => deltas.push(RuleDelta::between(&at, tool, part, b, a)),
                        _ => missing.push(format!("{at} {tool} {part:?}")),
                    }
                }
            }
        }
        policy::judge("iptables", e, port, deltas, missing)
    }
}
