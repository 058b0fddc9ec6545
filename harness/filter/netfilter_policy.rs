//! The `iptables` and `nftables` filters given a policy file (`[iptables]
//! policy`, `[nftables] policy`, or the policy axis): the policy compiled
//! as for `l4-policy` and rendered by [`super::policy_rules`] at every
//! enforcement point; the rules read back after each case must be the
//! rendered ones, each rule's counter says what it took, and the probe
//! matrix is judged cell by cell against the evaluator, a dropped cell by
//! its logged drops.

use std::collections::BTreeMap;

use serde::Serialize;

use super::policy::{self as study, Counter};
use super::policy_file::{self, LabPolicy, Source};
use super::policy_rules::{self as render, Drop};
use super::{probes, trace, MatrixRead};
use crate::guest::{quote, Netns};
use crate::lab::{CaseParams, Family, Issue, Lab, LabError, Seg, Vm};
use crate::overlay::{CaseEvidence, EnforcementPoint, ProbeMatrix, Step, Verdict};
use crate::report::Check;

/// One of the two rule-based methods.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Iptables,
    Nftables,
}

/// The most entries of each kind a policy may compile to for iptables and
/// nftables (ranges are expanded before they merge again: a bound on
/// memory, not on what the kernel holds).
pub const NETFILTER_LIMIT: usize = 1 << 20;

impl Method {
    /// The filter's name.
    pub fn name(self) -> &'static str {
        match self {
            Method::Iptables => "iptables",
            Method::Nftables => "nftables",
        }
    }

    /// Where its policy comes from (no default: without a file it is the
    /// study's fixed rule set).
    pub fn source(self) -> Source {
        Source { table: self.name(), default: None, limit: NETFILTER_LIMIT }
    }

    /// Whether the lab gives it a policy file.
    pub fn given(self, lab: &Lab) -> bool {
        self.source().given(lab)
    }

    /// Given a policy file: the policy files, `[probes]` and `[endpoints]`
    /// checked; the overlay's points must be in the VMs' own namespaces
    /// (logged drops from other namespaces are off by default in the kernel).
    pub fn validate(self, lab: &Lab) -> Result<(), LabError> {
        if !self.given(lab) {
            if lab.filters().contains(&self.name()) && !policy_file::rules_axis(lab).is_empty() {
                let message =
                    format!("the rules axis scales a policy file: give `{}.policy` or `matrix.policy`", self.name());
                return Err(
                    lab.invalid(Issue::new(vec![Seg::Key("matrix"), Seg::Key(policy_file::RULES_AXIS)], message))
                );
            }
            return Ok(());
        }
        probes::settings(lab)?;
        self.source().validate(lab)?;
        for overlay in lab.overlays() {
            let points = crate::overlay::get(overlay).enforcement_points(lab);
            if points.iter().any(|p| p.netns().is_some()) {
                return Err(lab.invalid(Issue::new(
                    vec![Seg::Key(self.name()), Seg::Key("policy")],
                    format!(
                        "a policy file is enforced on the VMs' forwarding hook; overlay `{overlay}` filters in a \
                         namespace of its own"
                    ),
                )));
            }
        }
        Ok(())
    }

    /// The script that puts `p`'s rules for `vm` in place, replacing any
    /// earlier policy of this method.
    fn install(self, lab: &Lab, vm: &Vm, p: &LabPolicy) -> String {
        match self {
            Method::Iptables => {
                let mut s = vec![self.clear()];
                for (tool, family) in TOOLS {
                    let rules = render::iptables(lab, vm, &p.compiled, family);
                    s.push(format!("{tool}-restore -w --noflush <<'VLAB_EOF'\n{}VLAB_EOF", render::restore(&rules)));
                    s.push(format!("{tool} -w -I FORWARD 1 -j {}", render::MAIN));
                }
                s.join("\n")
            }
            Method::Nftables => format!("nft -f - <<'VLAB_EOF'\n{}VLAB_EOF", render::nftables(lab, vm, &p.compiled)),
        }
    }

    /// The script that takes the policy out, and the matrix's tracing with
    /// it (left on by a case that failed half-way).
    fn clear(self) -> String {
        let policy = match self {
            Method::Iptables => TOOLS
                .map(|(t, _)| {
                    format!(
                        "while {t} -w -D FORWARD -j {main} 2>/dev/null; do :; done\n\
                         for c in $({t} -w -S | sed -n 's/^-N \\(VLAB-[A-Z0-9-]*\\)$/\\1/p'); do {t} -w -F $c; done\n\
                         for c in $({t} -w -S | sed -n 's/^-N \\(VLAB-[A-Z0-9-]*\\)$/\\1/p'); do {t} -w -X $c; done",
                        main = render::MAIN
                    )
                })
                .join("\n"),
            Method::Nftables => format!("nft delete table {} 2>/dev/null || true", render::TABLE),
        };
        format!("{policy}\n{}", trace::off())
    }

    /// Deploy: the bridge switches set at every point, and the lab's own
    /// policy (without a policy axis; with one, each case puts its own).
    pub fn deploy(self, lab: &Lab, points: &[EnforcementPoint]) -> Vec<Step> {
        let body = |vm: &Vm| {
            if policy_file::per_case(lab) {
                return "true".to_string();
            }
            match self.source().read(lab, None) {
                Ok(p) => self.install(lab, vm, &p),
                Err(m) => format!("echo {} >&2; exit 1", quote(&m)),
            }
        };
        study::install_with(self.name(), lab, points, &[], body)
    }

    pub fn remove(self, lab: &Lab, points: &[EnforcementPoint]) -> Vec<Step> {
        study::remove(self.name(), lab, points, &self.clear())
    }

    /// With a policy axis: the case's policy in place of the last one, at
    /// each of the case's overlay's points (nothing without an axis).
    pub fn case_setup(self, lab: &Lab, vm: &Vm, case: &CaseParams) -> Vec<String> {
        if !policy_file::per_case(lab) {
            return Vec::new();
        }
        let body = match self.source().of_case(lab, case) {
            Ok(p) => self.install(lab, vm, &p),
            Err(m) => return vec![format!("echo {} >&2; exit 1", quote(&m))],
        };
        let points = crate::overlay::get(case.overlay(lab)).enforcement_points(lab);
        EnforcementPoint::namespaces(&points).iter().map(|ns| Netns::script(ns.as_ref(), &body)).collect()
    }

    /// The probe matrix's targets for the case's policy (none without one).
    pub fn probe_targets(self, lab: &Lab, case: &CaseParams) -> Vec<(crate::policy::Protocol, u16)> {
        match (self.source().of_case(lab, case), probes::settings(lab)) {
            (Ok(p), Ok(s)) => probes::targets(&p.own, &s),
            _ => Vec::new(),
        }
    }

    /// The policy's rules in one of its listings, with their counters.
    fn read(self, listing: &str) -> Vec<(String, Counter)> {
        match self {
            Method::Iptables => iptables_read(listing),
            Method::Nftables => nft_read(listing),
        }
    }

    /// The rules at `at` that took packets between two listings.
    fn took(self, at: &str, before: &str, after: &str) -> Vec<RuleHit> {
        let before = self.read(before);
        self.read(after)
            .into_iter()
            .filter_map(|(rule, after)| {
                let from = before.iter().find(|(r, _)| *r == rule).map_or(0, |(_, c)| c.packets);
                let packets = after.packets.saturating_sub(from);
                (packets > 0).then(|| RuleHit { at: at.to_string(), rule, packets })
            })
            .collect()
    }

    fn artifact(self, vm: &str, netns: Option<&Netns>) -> String {
        super::artifact(&format!("{}-policy", self.name()), vm, netns, "txt")
    }

    /// The rules with their counters at each of `vm`'s points.
    pub fn evidence_commands(self, lab: &Lab, vm: &Vm) -> Vec<(String, String)> {
        let points = crate::overlay::get(&lab.overlay).enforcement_points(lab);
        let list = match self {
            Method::Iptables => TOOLS.map(|(t, _)| format!("echo '# {t}'; {t} -w -v -S")).join("\n"),
            Method::Nftables => format!("nft -j list table {} || true", render::TABLE),
        };
        EnforcementPoint::namespaces(&points)
            .into_iter()
            .map(|ns| (self.artifact(&vm.name, ns.as_ref()), Netns::script(ns.as_ref(), &list)))
            .collect()
    }

    /// What the probe matrix is read by on `vm`, given a policy file: the
    /// drops logged, the rules with their counters at each point, and the
    /// trace of new connections, turned on before the first read and off
    /// after the second, so that it spans what the counters count.
    pub fn drop_counter_commands(self, lab: &Lab, vm: &Vm, when: MatrixRead) -> Vec<(String, String)> {
        if !self.given(lab) {
            return Vec::new();
        }
        let traces = self.trace_places(lab, vm).into_iter().map(|(ns, place)| {
            let script = match when {
                MatrixRead::Before => trace::on(),
                MatrixRead::After => trace::read(&place),
            };
            (trace_artifact(&place), Netns::script(ns.as_ref(), &script))
        });
        let mut cmds = vec![(drop_artifact(&vm.name), render::drop_log_command())];
        match when {
            MatrixRead::Before => {
                cmds.extend(traces);
                cmds.extend(self.evidence_commands(lab, vm));
            }
            MatrixRead::After => {
                cmds.extend(self.evidence_commands(lab, vm));
                cmds.extend(traces);
            }
        }
        cmds
    }

    /// The trace monitors on `vm`, given a policy file: one per point.
    pub fn matrix_monitors(self, lab: &Lab, vm: &Vm) -> Vec<String> {
        if !self.given(lab) {
            return Vec::new();
        }
        let xtables = self == Method::Iptables;
        self.trace_places(lab, vm).iter().map(|(ns, place)| trace::monitor(xtables, ns.as_ref(), place)).collect()
    }

    /// `vm`'s enforcement points: each namespace and its place.
    fn trace_places(self, lab: &Lab, vm: &Vm) -> Vec<(Option<Netns>, String)> {
        let points = crate::overlay::get(&lab.overlay).enforcement_points(lab);
        EnforcementPoint::namespaces(&points)
            .into_iter()
            .map(|ns| {
                let place = super::place(&vm.name, ns.as_ref());
                (ns, place)
            })
            .collect()
    }

    /// The case's checks: the rules read back are the rendered ones at every
    /// point, and the matrix agrees with the evaluator.
    pub fn verdict(self, lab: &Lab, points: &[EnforcementPoint], e: &CaseEvidence) -> Verdict {
        let name = self.name();
        let p = match self.source().of_case(lab, &e.case.params) {
            Ok(p) => p,
            Err(m) => {
                return Verdict {
                    checks: vec![Check::new(&format!("{name}: the policy compiles"), false, m)],
                    section: None,
                }
            }
        };
        let mut wrong = Vec::new();
        let mut hits = Vec::new();
        let mut probe_hits = Vec::new();
        let mut traces = Vec::new();
        let mut places = 0;
        for (vm_name, ns, at) in study::places(lab, points) {
            let vm = lab.vm(vm_name).expect("a lab VM");
            let file = self.artifact(vm_name, ns.as_ref());
            if let Some(m) = e.matrix {
                let took = match (m.before.get(&file), m.after.get(&file)) {
                    (Some(before), Some(after)) => self.took(&at, before, after),
                    _ => Vec::new(),
                };
                let counted = took.iter().map(|h| (h.rule.clone(), h.packets)).collect();
                let traced = m.after.get(&trace_artifact(&at)).map_or(Vec::new(), |t| trace::parse(t));
                traces.push(trace::Place { at: at.clone(), traced, counted });
                probe_hits.extend(took);
            }
            let (Some(before), Some(after)) = (e.before.get(&file), e.outputs.get(&file)) else {
                wrong.push(format!("{at}: not read before and after the case"));
                continue;
            };
            places += 1;
            hits.extend(self.took(&at, before, after));
            let want = match self {
                Method::Iptables => iptables_wanted(lab, vm, &p),
                Method::Nftables => nft_wanted(lab, vm, &p),
            };
            let mut got: Vec<String> = self.read(after).into_iter().map(|(r, _)| r).collect();
            // Listings order chains by name; a chain's rules keep their order.
            let mut want = want;
            for rules in [&mut got, &mut want] {
                rules.sort_by(|a, b| chain_of(a).cmp(&chain_of(b)));
            }
            if got != want {
                wrong.push(format!("{at}: read back [{}], rendered [{}]", got.join("; "), want.join("; ")));
            }
        }
        let rules = rule_count(lab, &p, self);
        let mut checks = vec![Check::new(
            &format!("{name}: the guests hold the rendered policy at every enforcement point"),
            wrong.is_empty() && places > 0,
            if wrong.is_empty() {
                format!(
                    "{} rules of the policy at {places} places, read back after the case",
                    rule_count(lab, &p, self)
                )
            } else {
                wrong.join("; ")
            },
        )];
        let mut probes = Vec::new();
        let matrix = e.matrix.map(|m| {
            let (check, section) = matrix_check(lab, &p, m, name);
            checks.push(check);
            let (check, traced) = trace_check(lab, m, &traces, name);
            checks.push(check);
            probes = traced;
            section
        });
        let section = PolicySection { rules, hits, probe_hits, probes, matrix };
        Verdict { checks, section: Some(serde_json::to_value(section).expect("serializable")) }
    }
}

/// The tool and chain of a read-back rule (`TOOL -A CHAIN ...`, or
/// `CHAIN: COMMENT`).
fn chain_of(rule: &str) -> (&str, &str) {
    let w: Vec<&str> = rule.split_whitespace().collect();
    match w.as_slice() {
        [tool, "-A", chain, ..] => (tool, chain),
        _ => ("", rule.split(':').next().unwrap_or("")),
    }
}

/// The tools and the family each filters.
const TOOLS: [(&str, Family); 2] = [("iptables", Family::Ipv4), ("ip6tables", Family::Ipv6)];

fn drop_artifact(vm: &str) -> String {
    format!("drops-{vm}.txt")
}

/// The trace read at a place.
fn trace_artifact(place: &str) -> String {
    format!("trace-{}.txt", place.replace('/', "-"))
}

/// The rendered rules of every VM, counted (what a report states as the
/// policy's size in this method).
fn rule_count(lab: &Lab, p: &LabPolicy, m: Method) -> usize {
    lab.vms
        .iter()
        .map(|vm| match m {
            Method::Iptables => iptables_wanted(lab, vm, p).len(),
            Method::Nftables => nft_wanted(lab, vm, p).len(),
        })
        .sum()
}

/// The policy's `-A` lines of both tools as `-S` prints them, and the jump
/// from FORWARD, each as `TOOL RULE`.
fn iptables_wanted(lab: &Lab, vm: &Vm, p: &LabPolicy) -> Vec<String> {
    let mut out = Vec::new();
    for (tool, family) in TOOLS {
        out.push(format!("{tool} -A FORWARD -j {}", render::MAIN));
        for r in render::iptables(lab, vm, &p.compiled, family).iter().filter(|r| r.starts_with("-A ")) {
            out.push(format!("{tool} {r}"));
        }
    }
    out
}

/// The policy's rules in a `-v -S` listing of both tools, with counters:
/// the jump from FORWARD and every rule of a `VLAB-` chain.
fn iptables_read(text: &str) -> Vec<(String, Counter)> {
    super::iptables::parse_counters(text)
        .into_iter()
        .filter(|r| r.rule.starts_with("-A VLAB-") || r.rule == format!("-A FORWARD -j {}", render::MAIN))
        .map(|r| (format!("{} {}", r.tool, r.rule), Counter { packets: r.packets, bytes: r.bytes }))
        .collect()
}

/// The table's rules as `CHAIN: COMMENT`, in order.
fn nft_wanted(lab: &Lab, vm: &Vm, p: &LabPolicy) -> Vec<String> {
    render::nft_rules(lab, vm, &p.compiled)
        .into_iter()
        .flat_map(|(chain, comments)| comments.into_iter().map(move |c| format!("{chain}: {c}")))
        .collect()
}

/// A listing of the table (`nft -j`), as `CHAIN: COMMENT` with counters,
/// chains in name order.
fn nft_read(json: &str) -> Vec<(String, Counter)> {
    let Ok(doc) = serde_json::from_str::<serde_json::Value>(json) else { return Vec::new() };
    let mut by_chain: BTreeMap<String, Vec<(String, Counter)>> = BTreeMap::new();
    for item in doc["nftables"].as_array().into_iter().flatten() {
        let Some(r) = item.get("rule") else { continue };
        let chain = r["chain"].as_str().unwrap_or("").to_string();
        let comment = r["comment"].as_str().unwrap_or("-").to_string();
        let counter = r["expr"]
            .as_array()
            .into_iter()
            .flatten()
            .find_map(|x| {
                let c = x.get("counter")?;
                Some(Counter { packets: c["packets"].as_u64()?, bytes: c["bytes"].as_u64()? })
            })
            .unwrap_or(Counter { packets: 0, bytes: 0 });
        by_chain.entry(chain.clone()).or_default().push((format!("{chain}: {comment}"), counter));
    }
    by_chain.into_values().flatten().collect()
}

/// A rule that took packets during the case.
#[derive(Debug, Clone, Serialize)]
pub struct RuleHit {
    pub at: String,
    pub rule: String,
    pub packets: u64,
}

/// The filter's report section in policy mode.
#[derive(Debug, Clone, Serialize)]
pub struct PolicySection {
    /// Rules rendered, all VMs.
    pub rules: usize,
    /// What each rule took during the case's workload (read before and
    /// after it).
    pub hits: Vec<RuleHit>,
    /// What each rule took during the probe matrix (read before and after
    /// it): a probe's first packet is taken by the rule that decides its
    /// cell (the rest of a connection passes as established), so these are
    /// the rules that took the probes; a dropped cell's drop is also in the
    /// drop log, by its addresses, protocol and port.
    pub probe_hits: Vec<RuleHit>,
    /// Each probe of the matrix and the policy's rules its first packet
    /// met at each place, from the trace.
    pub probes: Vec<trace::TracedProbe>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub matrix: Option<probes::MatrixSection>,
}

/// The logged drops of the matrix, every VM.
pub fn matrix_drops(lab: &Lab, m: &ProbeMatrix) -> Vec<Drop> {
    lab.vms
        .iter()
        .flat_map(|vm| {
            let name = drop_artifact(&vm.name);
            let get = |x: &BTreeMap<String, String>| x.get(&name).cloned().unwrap_or_default();
            render::new_drops(&get(&m.before), &get(&m.after))
        })
        .collect()
}

/// The matrix check, a cell's drops being the drops logged for its
/// addresses, protocol and port.
fn matrix_check(lab: &Lab, p: &LabPolicy, m: &ProbeMatrix, name: &str) -> (Check, probes::MatrixSection) {
    let drops = matrix_drops(lab, m);
    let addr = |c: &str| address(lab, c);
    probes::judge(&p.model, &p.endpoints, m, |cell| render::drops_of(&drops, cell, addr), name)
}

/// The address of a container of the lab, by name.
fn address(lab: &Lab, container: &str) -> Option<String> {
    let c = lab.vms.iter().flat_map(|vm| &vm.containers).find(|x| x.name == container)?;
    c.address(Family::Ipv4).map(|a| a.to_string())
}

/// The trace check: every probe traced to the rules that took it, each
/// policy rule's counter taking exactly its traced packets over the matrix,
/// and a probe dropped by a rule exactly when it timed out. The rules that
/// packets of established connections reach (the jump from FORWARD, the
/// accept of established ones) are left out of the comparison.
fn trace_check(lab: &Lab, m: &ProbeMatrix, places: &[trace::Place], name: &str) -> (Check, Vec<trace::TracedProbe>) {
    let policy_rule = |r: &str| {
        let (_, chain) = chain_of(r);
        !chain.eq_ignore_ascii_case("forward") && !r.contains("ESTABLISHED")
    };
    let drops = |r: &str| r == format!("iptables -A {} -j DROP", render::DROP) || r == "log_drop: drop";
    let (wrong, probes) = trace::judge(&m.cells, places, |c| address(lab, c), policy_rule, drops);
    let traced: usize = places.iter().map(|p| p.traced.len()).sum();
    let check = Check::new(
        &format!("{name}: each probe is traced to the rules that took it, and their counters took the traced packets"),
        wrong.is_empty() && !m.cells.is_empty(),
        if wrong.is_empty() {
            format!("{} probes, {traced} new packets traced at {} places", m.cells.len(), places.len())
        } else {
            wrong.join("; ")
        },
    );
    (check, probes)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LISTING: &str = "# iptables\n-P FORWARD ACCEPT -c 5 500\n-N VLAB-DROP\n-N VLAB-IN-257\n-N VLAB-POLICY\n\
        -A FORWARD -c 3 180 -j VLAB-POLICY\n\
        -A VLAB-DROP -c 1 60 -j LOG --log-prefix \"vlab-drop \" --log-level 7\n-A VLAB-DROP -c 1 60 -j DROP\n\
        -A VLAB-IN-257 -s 10.1.2.2/32 -p tcp -m tcp --dport 5432 -c 1 60 -j VLAB-DROP\n\
        -A VLAB-IN-257 -c 2 120 -j ACCEPT\n-A VLAB-POLICY -d 10.1.3.2/32 -c 3 180 -j VLAB-IN-257\n\
        -A OTHER -c 9 9 -j ACCEPT\n";

    #[test]
    fn a_listing_keeps_the_policys_rules_with_their_counters() {
        let read = iptables_read(LISTING);
        let rules: Vec<&str> = read.iter().map(|(r, _)| r.as_str()).collect();
        assert_eq!(rules[0], "iptables -A FORWARD -j VLAB-POLICY");
        assert!(rules.contains(&"iptables -A VLAB-IN-257 -s 10.1.2.2/32 -p tcp -m tcp --dport 5432 -j VLAB-DROP"));
        assert!(!rules.iter().any(|r| r.contains("OTHER")), "{rules:?}");
        assert_eq!(read.iter().find(|(r, _)| r.ends_with("-j ACCEPT")).unwrap().1.packets, 2);
    }

    #[test]
    fn chains_sort_by_name_and_keep_their_rules_order() {
        let mut rules =
            vec!["iptables -A VLAB-POLICY -j B", "iptables -A VLAB-IN-1 -j X", "iptables -A VLAB-POLICY -j A"];
        rules.sort_by(|a, b| chain_of(a).cmp(&chain_of(b)));
        assert_eq!(
            rules,
            ["iptables -A VLAB-IN-1 -j X", "iptables -A VLAB-POLICY -j B", "iptables -A VLAB-POLICY -j A"]
        );
        assert_eq!(chain_of("in_256: deny 0 v4"), ("", "in_256"));
    }

    #[test]
    fn an_nft_listing_reads_as_chain_and_comment() {
        let json = r#"{"nftables": [{"rule": {"chain": "in_257", "comment": "deny 0 v4",
            "expr": [{"counter": {"packets": 4, "bytes": 240}}, {"goto": {"target": "log_drop"}}]}},
            {"rule": {"chain": "forward", "comment": "established", "expr": [{"accept": null}]}}]}"#;
        let read = nft_read(json);
        assert_eq!(read[0].0, "forward: established");
        assert_eq!(read[1].0, "in_257: deny 0 v4");
        assert_eq!(read[1].1.packets, 4);
        assert!(nft_read("not json").is_empty());
    }
}
