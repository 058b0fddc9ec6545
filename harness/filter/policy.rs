//! What the study's stateful policy is, whatever renders it (`iptables`,
//! `nftables`): its parts, the counters a case moved in each, the checks
//! made from them, and the state a filter saves at a point to put it back
//! when it is removed.
//!
//! ```text
//! forward policy: drop
//! connection tracking ESTABLISHED,RELATED: accept
//! TCP to the workload's port: accept
//! ```

use serde::Serialize;

use crate::guest::Netns;
use crate::lab::Lab;
use crate::overlay::{side_by_side, CaseEvidence, EnforcementPoint, ProbeOutcome, Step, Verdict};
use crate::report::{list, Check};

/// A part of the policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Part {
    /// The drop policy (what no rule accepted).
    Policy,
    /// The ESTABLISHED,RELATED rule.
    Established,
    /// The workload port's rule.
    Port,
}

impl Part {
    /// Every part, in the order rules are listed.
    pub const ALL: [Part; 3] = [Part::Policy, Part::Established, Part::Port];
}

/// A part of the policy's packets and bytes during a case, at one point.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RuleDelta {
    /// `VM` or `VM/NAMESPACE`.
    pub at: String,
    /// What holds the rule: `iptables`, `ip6tables`, `nft`.
    pub tool: String,
    pub part: Part,
    pub packets: u64,
    pub bytes: u64,
}

/// A rule's counters, read before and after a case.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counter {
    pub packets: u64,
    pub bytes: u64,
}

impl RuleDelta {
    /// What `part` counted at `at` between `before` and `after`.
    pub fn between(at: &str, tool: &str, part: Part, before: Counter, after: Counter) -> RuleDelta {
        RuleDelta {
            at: at.to_string(),
            tool: tool.to_string(),
            part,
            packets: after.packets.saturating_sub(before.packets),
            bytes: after.bytes.saturating_sub(before.bytes),
        }
    }
}

/// The checks and report section of a case from what each part counted
/// (`missing`: parts not found before or after the case, and anything else
/// that shows the policy is not as deployed).
pub fn judge(filter: &str, e: &CaseEvidence, port: u16, deltas: Vec<RuleDelta>, missing: Vec<String>) -> Verdict {
    let sum = |part: Part| deltas.iter().filter(|d| d.part == part).map(|d| d.packets).sum::<u64>();
    let (est_p, port_p, drop_p) = (sum(Part::Established), sum(Part::Port), sum(Part::Policy));
    let total = est_p + port_p + drop_p;
    let share = if total > 0 { est_p as f64 / total as f64 } else { 0.0 };
    let connections = u64::from(e.case.params.streams) + 1;
    let places = {
        let mut p: Vec<&str> = deltas.iter().map(|d| d.at.as_str()).collect();
        p.dedup();
        p.len()
    };
    let mut checks = vec![
        Check::new(
            &format!("{filter}: the policy is in place at every enforcement point"),
            missing.is_empty() && !deltas.is_empty(),
            if missing.is_empty() {
                format!("drop policy and both rules, read before and after the case at {places} places")
            } else {
                format!("missing: {}", list(&missing))
            },
        ),
        Check::new(
            &format!("{filter}: ESTABLISHED,RELATED takes the data"),
            e.delivered && est_p > 0 && share >= 0.9,
            format!("{est_p} of {total} filtered packets ({:.1} %)", share * 100.0),
        ),
        Check::new(
            &format!("{filter}: the port rule matches the handshake (TCP {port})"),
            e.delivered && port_p >= connections && port_p <= 20 * connections,
            format!("{port_p} packets for {connections} connections (control and streams) on every VM's path"),
        ),
    ];
    if let Some(p) = e.probe {
        checks.push(Check::new(
            &format!("{filter}: the policy drops a probe to TCP {}", p.port),
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

/// Where filters keep, per point, what they changed there.
const STATE_DIR: &str = "/run/vlab/filter";

/// The bridge-netfilter switches that send a bridge's IP traffic through
/// the IP families' hooks in its namespace.
const BRIDGE_CALLS: [(&str, &str); 2] =
    [("NF4", "net.bridge.bridge-nf-call-iptables"), ("NF6", "net.bridge.bridge-nf-call-ip6tables")];

fn state_file(filter: &str, index: usize) -> String {
    format!("{STATE_DIR}/{filter}-{index}.env")
}

/// The steps that install `filter` at every point, on every VM at once:
/// [`install_at`] each point.
pub fn install(filter: &str, lab: &Lab, points: &[EnforcementPoint], save: &[String], body: &str) -> Vec<Step> {
    install_with(filter, lab, points, save, |_| body.to_string())
}

/// [`install`] with a body of each VM's own (`body(vm)`).
pub fn install_with(
    filter: &str,
    lab: &Lab,
    points: &[EnforcementPoint],
    save: &[String],
    body: impl Fn(&crate::lab::Vm) -> String,
) -> Vec<Step> {
    side_by_side(lab.vms.iter().map(|vm| {
        let body = body(vm);
        Step::on(&vm.name, (0..points.len()).map(|i| install_at(filter, points, i, save, &body)).collect::<Vec<_>>())
    }))
}

/// The steps that remove `filter` from every point, on every VM at once:
/// [`remove_at`] each point.
pub fn remove(filter: &str, lab: &Lab, points: &[EnforcementPoint], body: &str) -> Vec<Step> {
    let scripts: Vec<String> = (0..points.len()).map(|i| remove_at(filter, points, i, body)).collect();
    side_by_side(lab.vms.iter().map(|vm| Step::on(&vm.name, scripts.clone())))
}

/// The script that installs `filter` at point number `index` of `points`
/// in the point's namespace: it saves in a state file what it changes (the
/// bridge switches at a bridge point, and whatever `save` prints as
/// `NAME=value` lines), turns the switches on, then runs `install`.
fn install_at(filter: &str, points: &[EnforcementPoint], index: usize, save: &[String], install: &str) -> String {
    let point = &points[index];
    let file = state_file(filter, index);
    let mut s = vec!["set -e".to_string(), format!("mkdir -p {STATE_DIR}"), format!(": > {file}")];
    if bridged(point) {
        for (var, key) in BRIDGE_CALLS {
            s.push(format!("echo {var}=$(sysctl -n {key}) >> {file}"));
        }
        let on: Vec<String> = BRIDGE_CALLS.iter().map(|(_, k)| format!("{k}=1")).collect();
        s.push(format!("sysctl -qw {}", on.join(" ")));
    }
    for line in save {
        s.push(format!("{line} >> {file}"));
    }
    s.push(install.to_string());
    Netns::script(point.netns(), &s.join("\n"))
}

/// The script that removes `filter` from point number `index` of `points`:
/// runs `remove` with the state file's variables set, puts the bridge
/// switches back, and deletes the state file.
fn remove_at(filter: &str, points: &[EnforcementPoint], index: usize, remove: &str) -> String {
    let point = &points[index];
    let file = state_file(filter, index);
    let mut s = vec!["set -e".to_string(), format!(". {file}"), remove.to_string()];
    if bridged(point) {
        let back: Vec<String> = BRIDGE_CALLS.iter().map(|(var, k)| format!("{k}=${var}")).collect();
        s.push(format!("sysctl -qw {}", back.join(" ")));
    }
    s.push(format!("rm -f {file}"));
    Netns::script(point.netns(), &s.join("\n"))
}

/// A bridge's traffic reaches the IP families' hooks through `br_netfilter`.
fn bridged(point: &EnforcementPoint) -> bool {
    matches!(point, EnforcementPoint::Bridge { .. } | EnforcementPoint::BridgeIn { .. })
}

/// Each VM's places where a filter reads: (VM, namespace, place label).
pub fn places<'a>(lab: &'a Lab, points: &[EnforcementPoint]) -> Vec<(&'a str, Option<Netns>, String)> {
    let mut out = Vec::new();
    for ns in EnforcementPoint::namespaces(points) {
        for vm in &lab.vms {
            let at = super::place(&vm.name, ns.as_ref());
            out.push((vm.name.as_str(), ns.clone(), at));
        }
    }
    out
}
