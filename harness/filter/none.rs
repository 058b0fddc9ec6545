//! The `none` filter: nothing filters the containers' traffic.
//!
//! It deploys nothing and proves it: after each case it reads every VM's
//! netfilter ruleset (`nft -j list ruleset`, which also shows rules that
//! `iptables-nft` installed) in each namespace where the overlay forwards
//! container traffic, and checks that no base chain hooked there (`forward`
//! in the ip, ip6 and inet families for routed overlays, in the bridge family
//! for L2 overlays, both in an overlay's own namespace with `br_netfilter`)
//! drops, rejects or has a drop policy. It is the reference the other
//! filters are compared with.

use std::collections::BTreeMap;

use serde::Serialize;

use super::Filter;
use crate::guest::Netns;
use crate::lab::{Lab, Vm};
use crate::overlay::{CaseEvidence, EnforcementPoint, ProbeOutcome, Step, Variant, Verdict};
use crate::report::{list, Check};

/// The `none` filter.
pub struct NoFilter;

/// The ruleset command, and the artifact its output is kept as.
const RULESET: &str = "nft -j list ruleset";

/// The ruleset's artifact of `vm`'s namespace `netns` (its own without one).
fn artifact(vm: &str, netns: Option<&Netns>) -> String {
    super::artifact("ruleset", vm, netns, "json")
}

impl Variant for NoFilter {
    fn name(&self) -> &'static str {
        "none"
    }

    fn packages(&self) -> &'static [&'static str] {
        &["nftables"]
    }

    /// The rules axis, which scales nothing here: its cases are the
    /// reference measured at each rule count, next to the filters' (and a
    /// control: their figures should not follow the count).
    fn axes(&self, lab: &Lab) -> Result<Vec<(String, Vec<String>)>, crate::lab::LabError> {
        Ok(super::policy_file::rules_axes(lab).into_iter().collect())
    }

    fn evidence_commands(&self, lab: &Lab, vm: &Vm) -> Vec<(String, String)> {
        let overlay = crate::overlay::get(&lab.overlay);
        let points = overlay.enforcement_points(lab);
        let mut cmds: Vec<(String, String)> = EnforcementPoint::namespaces(&netfilter_points(&points))
            .into_iter()
            .map(|ns| (artifact(&vm.name, ns.as_ref()), Netns::script(ns.as_ref(), RULESET)))
            .collect();
        cmds.extend(overlay.policy_state_commands(lab, vm));
        cmds
    }
}

impl Filter for NoFilter {
    fn deploy(&self, _lab: &Lab, _points: &[EnforcementPoint]) -> Vec<Step> {
        Vec::new()
    }

    fn remove(&self, _lab: &Lab, _points: &[EnforcementPoint]) -> Vec<Step> {
        Vec::new()
    }

    fn enforces(&self) -> bool {
        false
    }

    fn verdict(&self, lab: &Lab, points: &[EnforcementPoint], e: &CaseEvidence) -> Verdict {
        let (mut checks, chains) = unfiltered(lab, points, &e.outputs);
        if let Some(p) = e.probe {
            checks.push(Check::new(
                &format!("filter none: a probe to TCP {} reaches its listener", p.port),
                p.outcome == ProbeOutcome::Connected,
                p.to_string(),
            ));
        }
        // The server's one test is over: a reset says the attempt arrived.
        if let Some(p) = e.intruder {
            checks.push(Check::new(
                &format!("filter none: the intruder's connection to TCP {} reaches the server", p.port),
                p.outcome != ProbeOutcome::TimedOut,
                p.to_string(),
            ));
        }
        let mut section = serde_json::json!({ "forward_chains": chains });
        if let Some(p) = e.probe {
            section["probe"] = serde_json::json!(p);
        }
        if let Some(p) = e.intruder {
            section["intruder"] = serde_json::json!(p);
        }
        Verdict { checks, section: Some(section) }
    }
}

/// The points where netfilter sees the containers' traffic.
fn netfilter_points(points: &[EnforcementPoint]) -> Vec<EnforcementPoint> {
    points.iter().filter(|p| !p.netfilter_families().is_empty()).cloned().collect()
}

/// Whether nothing filters at `points`, judged from what [`NoFilter`]'s
/// evidence commands read (`outputs`, by artifact name): the rulesets where
/// netfilter sees the traffic, and the policy state of an overlay with a
/// policy stage of its own; also what proves that a filter removed from a
/// pair left nothing behind.
pub fn unfiltered(
    lab: &Lab,
    points: &[EnforcementPoint],
    outputs: &BTreeMap<String, String>,
) -> (Vec<Check>, Vec<ForwardChain>) {
    let mut checks = Vec::new();
    let netfilter = netfilter_points(points);
    let mut chains = Vec::new();
    if !netfilter.is_empty() {
        let (check, found) = netfilter_unfiltered(lab, &netfilter, outputs);
        checks.push(check);
        chains = found;
    }
    checks.extend(crate::overlay::get(&lab.overlay).unpoliced(lab, outputs));
    (checks, chains)
}

fn netfilter_unfiltered(
    lab: &Lab,
    points: &[EnforcementPoint],
    outputs: &BTreeMap<String, String>,
) -> (Check, Vec<ForwardChain>) {
    let mut chains = Vec::new();
    let mut unread = Vec::new();
    let mut families = Vec::new();
    for ns in EnforcementPoint::namespaces(points) {
        let fams: Vec<&str> = points
            .iter()
            .filter(|p| p.netns() == ns.as_ref())
            .flat_map(|p| p.netfilter_families().iter().copied())
            .collect();
        for vm in &lab.vms {
            let at = super::place(&vm.name, ns.as_ref());
            match outputs.get(&artifact(&vm.name, ns.as_ref())).map(|t| forward_chains(&at, t, &fams)) {
                Some(Ok(c)) => chains.extend(c),
                _ => unread.push(at),
            }
        }
        families.extend(fams.into_iter().filter(|f| !families.contains(f)).collect::<Vec<_>>());
    }
    let filtering: Vec<String> = chains.iter().filter(|c| c.filters()).map(ToString::to_string).collect();
    let check = Check::new(
        "filter none: nothing filters the forwarding path",
        unread.is_empty() && filtering.is_empty(),
        match (unread.is_empty(), filtering.is_empty()) {
            (false, _) => format!("no readable `{RULESET}` from {}", list(&unread)),
            (true, true) => format!(
                "{} forward chains in families {} on {} VMs, none drops",
                chains.len(),
                list(&families),
                lab.vms.len()
            ),
            (true, false) => format!("filtering: {}", filtering.join("; ")),
        },
    );
    (check, chains)
}

/// A base chain on a forward hook, as the ruleset shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ForwardChain {
    /// The VM.
    pub vm: String,
    /// `ip`, `ip6`, `inet` or `bridge`.
    pub family: String,
    /// `table/chain`.
    pub chain: String,
    /// The chain policy (`accept`, `drop`).
    pub policy: String,
    /// Its rules.
    pub rules: usize,
    /// Of those, rules whose verdict drops or rejects.
    pub dropping: usize,
}

impl ForwardChain {
    /// Whether it filters: a drop policy or a rule that drops or rejects.
    pub fn filters(&self) -> bool {
        self.policy != "accept" || self.dropping > 0
    }
}

impl std::fmt::Display for ForwardChain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: {} {} policy {}, {} of {} rules drop",
            self.vm, self.family, self.chain, self.policy, self.dropping, self.rules
        )
    }
}

/// The base chains on the `forward` hook of the given families in a JSON
/// ruleset (`nft -j list ruleset`), with how many of their rules drop.
pub fn forward_chains(vm: &str, json: &str, families: &[&str]) -> Result<Vec<ForwardChain>, serde_json::Error> {
    let doc: serde_json::Value = serde_json::from_str(json)?;
    let items = doc["nftables"].as_array().cloned().unwrap_or_default();
    let rules: Vec<&serde_json::Value> = items.iter().filter_map(|i| i.get("rule")).collect();
    let chains = items
        .iter()
        .filter_map(|i| i.get("chain"))
        .filter(|c| c["hook"] == "forward" && families.iter().any(|f| c["family"] == *f))
        .map(|c| {
            let (family, table, name) = (text(&c["family"]), text(&c["table"]), text(&c["name"]));
            let own: Vec<&&serde_json::Value> = rules.iter().filter(|r| in_chain(r, family, table, name)).collect();
            ForwardChain {
                vm: vm.to_string(),
                family: family.to_string(),
                chain: format!("{table}/{name}"),
                policy: c["policy"].as_str().unwrap_or("accept").to_string(),
                rules: own.len(),
                dropping: own.iter().filter(|r| drops(&rules, r, &mut Vec::new())).count(),
            }
        })
        .collect();
    Ok(chains)
}

fn text(v: &serde_json::Value) -> &str {
    v.as_str().unwrap_or("?")
}

fn in_chain(rule: &serde_json::Value, family: &str, table: &str, chain: &str) -> bool {
    text(&rule["family"]) == family && text(&rule["table"]) == table && text(&rule["chain"]) == chain
}

/// Whether a rule drops or rejects: a `drop` or `reject` verdict, an
/// iptables-nft `DROP` or `REJECT` target (`xt`), or a jump or goto to a chain
/// of its table with such a rule (`seen` stops loops).
fn drops<'a>(rules: &[&'a serde_json::Value], rule: &'a serde_json::Value, seen: &mut Vec<String>) -> bool {
    let (family, table) = (text(&rule["family"]), text(&rule["table"]));
    rule["expr"].as_array().into_iter().flatten().any(|x| {
        if x.get("drop").is_some() || x.get("reject").is_some() {
            return true;
        }
        if x["xt"]["type"] == "target" && matches!(text(&x["xt"]["name"]), "DROP" | "REJECT") {
            return true;
        }
        let target = x["jump"]["target"].as_str().or(x["goto"]["target"].as_str());
        let Some(target) = target else { return false };
        if seen.iter().any(|s| s == target) {
            return false;
        }
        seen.push(target.to_string());
        rules.iter().filter(|r| in_chain(r, family, table, target)).any(|r| drops(rules, r, seen))
    })
}
