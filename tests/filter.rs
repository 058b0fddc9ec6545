//! The filters without VMs: the `none` filter's reading of real rulesets
//! (`nft -j list ruleset` in vlab guests, Debian 13's nftables 1.1.3).

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
    use vlab::filter::iptables::{parse_counters, part_of, Part};
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
