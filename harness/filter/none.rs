//! The `none` filter: nothing filters the containers' traffic.
//!
//! It deploys nothing and proves it: after each case it reads every VM's
//! netfilter ruleset (`nft -j list ruleset`, which also shows rules that
//! `iptables-nft` installed) and checks that no base chain hooked where the
//! overlay forwards container traffic (`forward` in the ip, ip6 and inet
//! families for routed overlays, in the bridge family for L2 overlays) drops,
//! rejects or has a drop policy. It is the reference the other filters are
//! compared with.

use serde::Serialize;

use super::Filter;
use crate::lab::{Lab, Vm};
use crate::overlay::{CaseEvidence, EnforcementPoint, Step, Variant, Verdict};
use crate::report::{list, Check};

/// The `none` filter.
pub struct NoFilter;

/// The ruleset command, and the artifact its output is kept as.
const RULESET: &str = "nft -j list ruleset";

fn artifact(vm: &str) -> String {
    format!("ruleset-{vm}.json")
}

impl Variant for NoFilter {
    fn name(&self) -> &'static str {
        "none"
    }

    fn packages(&self) -> &'static [&'static str] {
        &["nftables"]
    }

    fn evidence_commands(&self, _lab: &Lab, vm: &Vm) -> Vec<(String, String)> {
        vec![(artifact(&vm.name), RULESET.to_string())]
    }
}

impl Filter for NoFilter {
    fn deploy(&self, _lab: &Lab, _points: &[EnforcementPoint]) -> Vec<Step> {
        Vec::new()
    }

    fn verdict(&self, lab: &Lab, points: &[EnforcementPoint], e: &CaseEvidence) -> Verdict {
        let families: Vec<&str> = points
            .iter()
            .flat_map(|p| match p {
                EnforcementPoint::Forward => vec!["ip", "ip6", "inet"],
                EnforcementPoint::Bridge { .. } => vec!["bridge"],
            })
            .collect();
        let mut chains = Vec::new();
        let mut unread = Vec::new();
        for vm in &lab.vms {
            match e.outputs.get(&artifact(&vm.name)).map(|t| forward_chains(&vm.name, t, &families)) {
                Some(Ok(c)) => chains.extend(c),
                _ => unread.push(vm.name.clone()),
            }
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
        Verdict { checks: vec![check], section: Some(serde_json::json!({ "forward_chains": chains })) }
    }
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
    fn filters(&self) -> bool {
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
/// ruleset (`nft -j list ruleset`).
pub fn forward_chains(vm: &str, json: &str, families: &[&str]) -> Result<Vec<ForwardChain>, serde_json::Error> {
    let doc: serde_json::Value = serde_json::from_str(json)?;
    let items = doc["nftables"].as_array().cloned().unwrap_or_default();
    let mut chains: Vec<ForwardChain> = items
        .iter()
        .filter_map(|i| i.get("chain"))
        .filter(|c| c["hook"] == "forward" && families.iter().any(|f| c["family"] == *f))
        .map(|c| ForwardChain {
            vm: vm.to_string(),
            family: c["family"].as_str().unwrap_or("?").to_string(),
            chain: format!("{}/{}", c["table"].as_str().unwrap_or("?"), c["name"].as_str().unwrap_or("?")),
            policy: c["policy"].as_str().unwrap_or("accept").to_string(),
            rules: 0,
            dropping: 0,
        })
        .collect();
    for rule in items.iter().filter_map(|i| i.get("rule")) {
        let at = format!("{}/{}", rule["table"].as_str().unwrap_or("?"), rule["chain"].as_str().unwrap_or("?"));
        let family = rule["family"].as_str().unwrap_or("?");
        if let Some(c) = chains.iter_mut().find(|c| c.chain == at && c.family == family) {
            c.rules += 1;
            let exprs = rule["expr"].as_array().cloned().unwrap_or_default();
            if exprs.iter().any(|x| x.get("drop").is_some() || x.get("reject").is_some()) {
                c.dropping += 1;
            }
        }
    }
    Ok(chains)
}
