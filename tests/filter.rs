//! The filters without VMs: how they read real rulesets and counters from
//! vlab guests (Debian 13's nftables 1.1.3 and iptables-nft), and the scripts
//! they deploy and remove.

use vlab::filter::none::forward_chains;

fn fixture(name: &str) -> String {
    std::fs::read_to_string(format!("{}/tests/fixtures/nft/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

const ROUTED: [&str; 3] = ["ip", "ip6", "inet"];

#[test]
fn an_empty_ruleset_filters_nothing() {
    assert_eq!(forward_chains("host1", &fixture("empty.json"), &ROUTED).unwrap(), []);
}

/// `iptables -P FORWARD DROP`, `iptables -A FORWARD -p tcp --dport 5201 -j
/// ACCEPT` and `ip6tables -A FORWARD -p tcp --dport 9 -j REJECT`, as
/// iptables-nft installed them.
#[test]
fn a_drop_policy_and_an_xt_reject_are_filtering() {
    let chains = forward_chains("host1", &fixture("forward-drop-reject.json"), &ROUTED).unwrap();
    let seen: Vec<String> = chains.iter().map(ToString::to_string).collect();
    assert_eq!(
        seen,
        [
            "host1: ip filter/FORWARD policy drop, 0 of 1 rules drop",
            "host1: ip6 filter/FORWARD policy accept, 1 of 1 rules drop"
        ]
    );
    assert!(chains.iter().all(|c| c.filters()));
    // Where an L2 overlay forwards (the bridge family) nothing filters.
    assert_eq!(forward_chains("host1", &fixture("forward-drop-reject.json"), &["bridge"]).unwrap(), []);
}

#[test]
fn a_jump_to_a_chain_that_drops_is_filtering() {
    let json = r#"{"nftables": [
        {"chain": {"family": "inet", "table": "t", "name": "fwd", "hook": "forward", "policy": "accept"}},
        {"chain": {"family": "inet", "table": "t", "name": "policy"}},
        {"rule": {"family": "inet", "table": "t", "chain": "fwd", "expr": [{"jump": {"target": "policy"}}]}},
        {"rule": {"family": "inet", "table": "t", "chain": "policy", "expr": [{"goto": {"target": "fwd"}}]}},
        {"rule": {"family": "inet", "table": "t", "chain": "policy", "expr": [{"drop": null}]}}
    ]}"#;
    let chains = forward_chains("host2", json, &ROUTED).unwrap();
    assert_eq!(chains.len(), 1);
    assert_eq!((chains[0].rules, chains[0].dropping), (1, 1));
    assert!(chains[0].filters());
    assert!(forward_chains("host2", "not json", &ROUTED).is_err());
}

/// `iptables -v -S FORWARD` and `ip6tables -v -S FORWARD` as the `iptables`
/// filter reads them in a vlab guest (Docker's overlay namespace, after a
/// one-stream case): each line's counters, and which part of the policy it is.
#[test]
fn iptables_counters_and_policy_parts() {
    use vlab::filter::iptables::{parse_counters, part_of};
    use vlab::filter::policy::Part;
    let text =
        std::fs::read_to_string(format!("{}/tests/fixtures/iptables/overlay-after.txt", env!("CARGO_MANIFEST_DIR")))
            .unwrap();
    let rules = parse_counters(&text);
    assert_eq!(rules.len(), 6, "{rules:?}");
    let seen: Vec<(&str, Option<Part>, u64, u64)> =
        rules.iter().map(|r| (r.tool.as_str(), part_of(&r.rule, 5201), r.packets, r.bytes)).collect();
    assert_eq!(
        seen[..3],
        [
            ("iptables", Some(Part::Policy), 0, 0),
            ("iptables", Some(Part::Established), 6519, 141833399),
            ("iptables", Some(Part::Port), 3, 180)
        ]
    );
    assert_eq!(rules[1].rule, "-A FORWARD -m state --state RELATED,ESTABLISHED -j ACCEPT");
    assert!(seen[3..].iter().all(|(tool, part, p, _)| *tool == "ip6tables" && part.is_some() && *p == 0));
    // Another port's rule, another verdict or chain: not the policy's.
    for other in [
        "-A FORWARD -p tcp -m tcp --dport 5202 -j ACCEPT",
        "-A FORWARD -p tcp -m tcp --dport 5201 -j DROP",
        "-A INPUT -m state --state RELATED,ESTABLISHED -j ACCEPT",
        "-A FORWARD -m state --state NEW -j ACCEPT",
        "-P FORWARD ACCEPT",
    ] {
        assert_eq!(part_of(other, 5201), None, "{other}");
    }
}

/// What the policy filters deploy and remove at each kind of point: the
/// VM's forward hook (baseline) and a bridge in Docker's overlay namespace
/// (swarm), where the bridge switches are saved, turned on and put back.
#[test]
fn policy_filters_deploy_and_remove_at_each_point() {
    let mut plans = Vec::new();
    for (file, overlay) in [("filters.toml", "baseline"), ("swarm.toml", "swarm")] {
        let path = std::path::PathBuf::from(format!("{}/labs/{file}", env!("CARGO_MANIFEST_DIR")));
        let lab = vlab::load_lab(&path).unwrap().with_overlay(overlay);
        let points = vlab::overlay::get(overlay).enforcement_points(&lab);
        for name in ["iptables", "nftables"] {
            let f = vlab::filter::get(name);
            let lab = lab.with_filter(name);
            for (what, steps) in [("deploy", f.deploy(&lab, &points)), ("remove", f.remove(&lab, &points))] {
                // Every VM gets the same scripts.
                assert!(steps.iter().all(|s| s.commands == steps[0].commands), "{name} {what}");
                assert_eq!(steps.len(), lab.vms.len());
                plans.push(format!("## {overlay} {name} {what}\n{}", steps[0].commands.join("\n")));
            }
        }
    }
    insta::assert_snapshot!("policy_filter_plans", plans.join("\n\n"));
}

/// `nft -j list table inet vlab` as the `nftables` filter reads it in a vlab
/// guest (the baseline overlay's host2, before and after a one-stream case):
/// the chain's hook and policy, each part's counter found by its comment.
#[test]
fn nftables_table_counters_by_comment() {
    use vlab::filter::nftables::parse_table;
    use vlab::filter::policy::Part;
    let before = parse_table(&fixture("vlab-table-before.json")).unwrap();
    let after = parse_table(&fixture("vlab-table-after.json")).unwrap();
    assert_eq!(after.chain, Some(("forward".to_string(), "drop".to_string())));
    assert_eq!(before.differences(), Vec::<String>::new());
    assert_eq!(after.differences(), Vec::<String>::new());
    let counted = |t: &vlab::filter::nftables::Table, part| t.counter(part).map(|c| (c.packets, c.bytes));
    assert_eq!(counted(&before, Part::Established), Some((0, 0)));
    assert_eq!(counted(&after, Part::Established), Some((23927, 1136331436)));
    assert_eq!(counted(&after, Part::Port), Some((2, 120)));
    assert_eq!(counted(&after, Part::Policy), Some((1, 60)));
}

/// What another hand did to the table is a difference: a rule added in
/// front, the policy turned to accept, the table gone.
#[test]
fn a_rewritten_nftables_table_differs() {
    use vlab::filter::nftables::parse_table;
    let after = fixture("vlab-table-after.json");
    let accept = after.replace("\"policy\": \"drop\"", "\"policy\": \"accept\"");
    assert_eq!(parse_table(&accept).unwrap().differences(), ["chain forward on hook forward with policy accept"]);
    let extra = after.replace(
        "{\"rule\": {\"family\": \"inet\", \"table\": \"vlab\", \"chain\": \"forward\", \"handle\": 2,",
        "{\"rule\": {\"family\": \"inet\", \"table\": \"vlab\", \"chain\": \"forward\", \"handle\": 9, \
         \"expr\": [{\"accept\": null}]}}, {\"rule\": {\"family\": \"inet\", \"table\": \"vlab\", \
         \"chain\": \"forward\", \"handle\": 2,",
    );
    assert_ne!(extra, after, "the fixture changed");
    let d = parse_table(&extra).unwrap().differences();
    assert_eq!(d.len(), 1, "{d:?}");
    assert_eq!(
        d[0],
        "rules [-:accept, established:accept, port:accept, policy:-] \
         instead of [established:accept, port:accept, policy:-]"
    );
    let gone = parse_table(r#"{"nftables": [{"metainfo": {"version": "1.1.3"}}]}"#).unwrap();
    assert_eq!(gone.differences()[0], "no chain forward");
}

/// The checks of both policy filters come from the counters alone: rules
/// that matched the workload pass, the same rules with counters that never
/// moved (a policy that container traffic never crossed) fail.
#[test]
fn a_policy_that_never_sees_the_traffic_fails_its_checks() {
    use std::collections::BTreeMap;
    use vlab::overlay::{CaseEnd, CaseEvidence};
    let path = std::path::PathBuf::from(format!("{}/labs/filters.toml", env!("CARGO_MANIFEST_DIR")));
    let lab = vlab::load_lab(&path).unwrap();
    let points = vlab::overlay::get("baseline").enforcement_points(&lab);
    let iptables_after =
        std::fs::read_to_string(format!("{}/tests/fixtures/iptables/overlay-after.txt", env!("CARGO_MANIFEST_DIR")))
            .unwrap();
    let iptables_before = iptables_after.replace("-c 6519 141833399", "-c 0 0").replace("-c 3 180", "-c 0 0");
    let by_vm = |stem: &str, ext: &str, text: &str| -> BTreeMap<String, String> {
        ["host1", "host2"].iter().map(|vm| (format!("{stem}-{vm}.{ext}"), text.to_string())).collect()
    };
    let end = |vm: &str| CaseEnd { vm: vm.into(), container: None, addr: "10.1.1.2".parse().unwrap() };
    let cases = lab.cases();
    let case = cases.iter().find(|c| c.name == "filter=iptables,streams=1").unwrap();
    for (filter, ext, before, after) in [
        ("iptables", "txt", iptables_before.as_str(), iptables_after.as_str()),
        ("nftables", "json", &fixture("vlab-table-before.json"), &fixture("vlab-table-after.json")),
    ] {
        let verdict = |before: &str| {
            let e = CaseEvidence {
                case,
                ends: [end("host1"), end("host2")],
                captures: &[],
                delivered: true,
                before: by_vm(filter, ext, before),
                outputs: by_vm(filter, ext, after),
                probe: None,
                intruder: None,
                matrix: None,
            };
            let v = vlab::filter::get(filter).verdict(&lab.with_filter(filter), &points, &e);
            v.checks.iter().map(|c| (c.name.split(": ").nth(1).unwrap().to_string(), c.passed)).collect::<Vec<_>>()
        };
        let names = [
            "the policy is in place at every enforcement point",
            "ESTABLISHED,RELATED takes the data",
            "the port rule matches the handshake (TCP 5201)",
        ];
        let matched: Vec<(String, bool)> = names.iter().map(|n| (n.to_string(), true)).collect();
        assert_eq!(verdict(before), matched, "{filter}");
        let never: Vec<(String, bool)> = names.iter().enumerate().map(|(i, n)| (n.to_string(), i == 0)).collect();
        assert_eq!(verdict(after), never, "{filter}: counters that never moved");
    }
}
