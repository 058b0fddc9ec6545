//! The `nftables` filter: the study's stateful policy as a native nftables
//! table, where the `iptables` filter puts its rules.
//!
//! At every enforcement point of the overlay, one table for both IP families:
//!
//! ```text
//! table inet vlab {
//!     chain forward {
//!         type filter hook forward priority filter; policy drop;
//!         ct state established,related counter accept comment "established"
//!         tcp dport PORT counter accept comment "port"
//!         counter comment "policy"
//!     }
//! }
//! ```
//!
//! The last rule has no verdict: it counts what falls through to the drop
//! policy (a chain policy has no counter of its own).
//!
//! **Why `inet` on the forward hook, not the `bridge` family:** it is the
//! hook the `iptables` filter's rules sit on (Debian's `iptables` is
//! `iptables-nft`), so the two filters differ only in how the policy is
//! written (native `ct state` and `tcp dport` expressions against the `xt`
//! matches of iptables-nft), not in where packets meet it; and one table
//! covers IPv4 and IPv6. At a bridge (the VXLAN overlays' `br-vx`, Docker's
//! overlay namespace's `br0`) bridged IP traffic reaches that hook through
//! `br_netfilter` (`bridge-nf-call-iptables` on in the bridge's namespace),
//! exactly as for `iptables`.
//!
//! **Coexisting with Docker:** dockerd manages its own rules through
//! iptables-nft, in tables of the `ip` and `ip6` families (`filter`, `nat`)
//! of the VM's namespace; this table is `inet vlab` in the point's
//! namespace, which dockerd never lists nor flushes. A packet must be
//! accepted by every base chain on the hook, so both policies apply. After
//! every case the table is read back and must hold exactly its three rules
//! and its drop policy: anything that rewrote it fails the case.
//!
//! Evidence: `nft -j list table inet vlab` before and after each case; the
//! rules are told apart by their comments.

use super::netfilter_policy::Method;
use super::policy::{self, Counter, Part, RuleDelta};
use super::{Filter, MatrixRead};
use crate::guest::Netns;
use crate::lab::{CaseParams, Lab, LabError, LabKeys, Vm};
use crate::overlay::{CaseEvidence, EnforcementPoint, Step, Variant, Verdict};

/// The `nftables` filter.
pub struct Nftables;

/// Given a policy file, the filter enforces it (see [`super::netfilter_policy`]).
const METHOD: Method = Method::Nftables;

/// The `[nftables]` table.
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
    nftables: Option<Settings>,
}

/// The table's family and name.
const TABLE: &str = "inet vlab";

/// The table's chain on the forward hook.
const CHAIN: &str = "forward";

/// The table for the workload's `port`, as `nft -f` reads it; replaces a
/// table of the same name in one transaction.
pub fn ruleset(port: u16) -> String {
    format!(
        "add table {TABLE}\n\
         delete table {TABLE}\n\
         table {TABLE} {{\n\
         \tchain {CHAIN} {{\n\
         \t\ttype filter hook forward priority filter; policy drop;\n\
         \t\tct state established,related counter accept comment \"{}\"\n\
         \t\ttcp dport {port} counter accept comment \"{}\"\n\
         \t\tcounter comment \"{}\"\n\
         \t}}\n\
         }}\n",
        comment(Part::Established),
        comment(Part::Port),
        comment(Part::Policy),
    )
}

/// The comment that marks a part's rule.
fn comment(part: Part) -> &'static str {
    match part {
        Part::Policy => "policy",
        Part::Established => "established",
        Part::Port => "port",
    }
}

fn artifact(vm: &str, netns: Option<&Netns>) -> String {
    super::artifact("nftables", vm, netns, "json")
}

/// The table as the point's namespaces of `vm` list it.
fn table_commands(lab: &Lab, vm: &Vm) -> Vec<(String, String)> {
    let points = crate::overlay::get(&lab.overlay).enforcement_points(lab);
    EnforcementPoint::namespaces(&points)
        .into_iter()
        .map(|ns| (artifact(&vm.name, ns.as_ref()), Netns::script(ns.as_ref(), &format!("nft -j list table {TABLE}"))))
        .collect()
}

/// What the listing of the table shows: its chain's policy and hook, and
/// each rule's part (by comment), verdict and counter.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Table {
    /// The chain's hook and policy, when the chain is there.
    pub chain: Option<(String, String)>,
    /// Rules in order: (comment, verdict, counter).
    pub rules: Vec<(Option<String>, Option<String>, Option<Counter>)>,
}

/// Reads `nft -j list table inet vlab`.
pub fn parse_table(json: &str) -> Result<Table, serde_json::Error> {
    let doc: serde_json::Value = serde_json::from_str(json)?;
    let mut table = Table::default();
    for item in doc["nftables"].as_array().into_iter().flatten() {
        if let Some(c) = item.get("chain").filter(|c| c["name"] == CHAIN) {
            let text = |v: &serde_json::Value| v.as_str().unwrap_or("").to_string();
            table.chain = Some((text(&c["hook"]), text(&c["policy"])));
        }
        let Some(r) = item.get("rule").filter(|r| r["chain"] == CHAIN) else { continue };
        let exprs = r["expr"].as_array().cloned().unwrap_or_default();
        let verdict = exprs.iter().find_map(|x| {
            ["accept", "drop", "reject", "jump", "goto", "return"].into_iter().find(|v| x.get(*v).is_some())
        });
        let counter = exprs.iter().find_map(|x| {
            let c = x.get("counter")?;
            Some(Counter { packets: c["packets"].as_u64()?, bytes: c["bytes"].as_u64()? })
        });
        table.rules.push((r["comment"].as_str().map(String::from), verdict.map(String::from), counter));
    }
    Ok(table)
}

impl Table {
    /// What keeps it from being the policy as deployed.
    pub fn differences(&self) -> Vec<String> {
        let mut out = Vec::new();
        match &self.chain {
            None => out.push(format!("no chain {CHAIN}")),
            Some((hook, policy)) if hook != "forward" || policy != "drop" => {
                out.push(format!("chain {CHAIN} on hook {hook} with policy {policy}"));
            }
            Some(_) => {}
        }
        // Each rule as `comment:verdict`, `-` for none.
        let show = |c: Option<&str>, v: Option<&str>| format!("{}:{}", c.unwrap_or("-"), v.unwrap_or("-"));
        let found: Vec<String> = self.rules.iter().map(|(c, v, _)| show(c.as_deref(), v.as_deref())).collect();
        let wanted: Vec<String> =
            [(Part::Established, Some("accept")), (Part::Port, Some("accept")), (Part::Policy, None)]
                .iter()
                .map(|(p, v)| show(Some(comment(*p)), *v))
                .collect();
        if found != wanted {
            out.push(format!("rules [{}] instead of [{}]", found.join(", "), wanted.join(", ")));
        }
        out
    }

    /// The counter of a part's rule.
    pub fn counter(&self, part: Part) -> Option<Counter> {
        self.rules.iter().find(|(c, _, _)| c.as_deref() == Some(comment(part))).and_then(|(_, _, n)| *n)
    }
}

impl Variant for Nftables {
    fn name(&self) -> &'static str {
        "nftables"
    }

    fn packages(&self) -> &'static [&'static str] {
        &["nftables"]
    }

    fn modules(&self) -> &'static [&'static str] {
        &["br_netfilter"]
    }

    fn kernel_options(&self) -> &'static [&'static str] {
        &["NF_TABLES", "NF_TABLES_INET", "NF_CONNTRACK", "NFT_CT"]
    }

    fn lab_keys(&self) -> LabKeys {
        LabKeys { tables: &["nftables", "probes", "endpoints"], matrix: &["policy", "rules"], ..LabKeys::default() }
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
        table_commands(lab, vm)
    }

    fn evidence_commands(&self, lab: &Lab, vm: &Vm) -> Vec<(String, String)> {
        if METHOD.given(lab) {
            return METHOD.evidence_commands(lab, vm);
        }
        table_commands(lab, vm)
    }
}

impl Filter for Nftables {
    fn deploy(&self, lab: &Lab, points: &[EnforcementPoint]) -> Vec<Step> {
        if METHOD.given(lab) {
            return METHOD.deploy(lab, points);
        }
        let install = format!("nft -f - <<'EOF'\n{}EOF\n", ruleset(lab.workload.port));
        policy::install("nftables", lab, points, &[], &install)
    }

    fn remove(&self, lab: &Lab, points: &[EnforcementPoint]) -> Vec<Step> {
        if METHOD.given(lab) {
            return METHOD.remove(lab, points);
        }
        policy::remove("nftables", lab, points, &format!("nft delete table {TABLE}"))
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
        let mut deltas = Vec::new();
        let mut missing = Vec::new();
        for (vm, ns, at) in policy::places(lab, points) {
            let name = artifact(vm, ns.as_ref());
            let read = |m: &std::collections::BTreeMap<String, String>| {
                m.get(&name).and_then(|t| parse_table(t).ok()).filter(|t| t.chain.is_some())
            };
            let (Some(before), Some(after)) = (read(&e.before), read(&e.outputs)) else {
                missing.push(format!("{at}: table {TABLE} not listed before and after the case"));
                continue;
            };
            missing.extend(after.differences().into_iter().map(|d| format!("{at}: {d}")));
            for part in Part::ALL {
                if let (Some(b), Some(a)) = (before.counter(part), after.counter(part)) {
                    deltas.push(RuleDelta::between(&at, "nft", part, b, a));
                }
            }
        }
        policy::judge("nftables", e, lab.workload.port, deltas, missing)
    }
}
