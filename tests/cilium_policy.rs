//! The cilium-style overlay's policy input: Cilium's policy language read
//! into rules, label sets into identities, rules into policy map entries, and
//! every feature vlab does not enforce refused with its field.

use rstest::rstest;
use vlab::overlay::cilium_style::policy::{
    allows, compile, identities, parse, Compiled, Labels, Protocol, ANY_IDENTITY, FIRST_IDENTITY,
};

fn fixture(name: &str) -> String {
    std::fs::read_to_string(format!("{}/tests/fixtures/cilium/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

/// The study's three containers: the server, the allowed client, another.
fn containers() -> Vec<(String, Labels)> {
    [("c1", "service1"), ("c2", "app1"), ("c3", "app2")]
        .iter()
        .map(|(n, id)| (n.to_string(), Labels::from([("id".to_string(), id.to_string())])))
        .collect()
}

fn study() -> Compiled {
    compile(&parse(&fixture("study.json")).unwrap(), &containers()).unwrap()
}

#[test]
fn identities_are_deterministic_and_start_above_the_reserved_ones() {
    let ids = identities(&containers());
    // Sorted label sets: app1, app2, service1.
    assert_eq!(ids["c2"], FIRST_IDENTITY);
    assert_eq!(ids["c3"], FIRST_IDENTITY + 1);
    assert_eq!(ids["c1"], FIRST_IDENTITY + 2);
    let mut reversed = containers();
    reversed.reverse();
    assert_eq!(identities(&reversed), ids, "the order of the containers does not matter");
    // Two containers with the same labels share an identity.
    let mut twins = containers();
    twins.push(("c4".into(), twins[1].1.clone()));
    assert_eq!(identities(&twins)["c4"], ids["c2"]);
}

/// The study's policy: `id=service1` receives TCP 5201 from `id=app1`, and
/// nothing else; the other containers have no policy (allow all).
#[test]
fn the_study_policy_compiles_to_one_entry() {
    let c = study();
    insta::assert_json_snapshot!("cilium_study_policy", c);
    let (server, client, other) = (c.identities["c1"], c.identities["c2"], c.identities["c3"]);
    assert!(allows(&c, server, client, Protocol::Tcp, 5201));
    assert!(!allows(&c, server, client, Protocol::Tcp, 5202), "another port");
    assert!(!allows(&c, server, client, Protocol::Udp, 5201), "another protocol");
    assert!(!allows(&c, server, other, Protocol::Tcp, 5201), "another identity");
    assert!(allows(&c, client, server, Protocol::Tcp, 40000), "an endpoint without policy allows all");
    // The same policy as a CiliumNetworkPolicy with `k8s:`/`any:` label sources and a numeric port.
    let cnp = compile(&parse(&fixture("study-cnp.json")).unwrap(), &containers()).unwrap();
    assert_eq!(cnp, c);
}

#[test]
fn wildcards_follow_ciliums_lookup_order() {
    let text = r#"[{"endpointSelector": {"matchLabels": {"id": "service1"}},
                    "ingress": [{"toPorts": [{"ports": [{"port": "53", "protocol": "ANY"}]}]},
                                {"fromEndpoints": [{"matchLabels": {"id": "app2"}}]}]}]"#;
    let c = compile(&parse(text).unwrap(), &containers()).unwrap();
    let (server, client, other) = (c.identities["c1"], c.identities["c2"], c.identities["c3"]);
    let entries: Vec<(u32, Protocol, u16)> = c.entries.iter().map(|e| (e.remote, e.protocol, e.port)).collect();
    assert_eq!(
        entries,
        [(ANY_IDENTITY, Protocol::Tcp, 53), (ANY_IDENTITY, Protocol::Udp, 53), (other, Protocol::Any, 0)]
    );
    assert!(allows(&c, server, client, Protocol::Udp, 53), "L4-only: anyone to 53");
    assert!(allows(&c, server, other, Protocol::Tcp, 9), "L3-only: app2 to any port");
    assert!(!allows(&c, server, client, Protocol::Tcp, 9));
}

#[rstest]
#[case::not_json("[{", "not JSON")]
#[case::egress(
    r#"[{"endpointSelector": {"matchLabels": {"id": "service1"}}, "egress": [{}]}]"#,
    "field `[0].egress`: `egress` is not supported"
)]
#[case::cidr(
    r#"{"endpointSelector": {"matchLabels": {"id": "service1"}}, "ingress": [{"fromCIDR": ["10.0.0.0/8"]}]}"#,
    "field `ingress[0].fromCIDR`: `fromCIDR` is not supported"
)]
#[case::l7(
    r#"[{"endpointSelector": {"matchLabels": {"id": "service1"}}, "ingress": [{"toPorts": [{"ports": [{"port": "80"}], "rules": {"http": [{}]}}]}]}]"#,
    "field `[0].ingress[0].toPorts[0].rules`: `rules` is not supported"
)]
#[case::expressions(
    r#"{"kind": "CiliumNetworkPolicy", "spec": {"endpointSelector": {"matchExpressions": []}}}"#,
    "field `spec.endpointSelector.matchExpressions`: `matchExpressions` is not supported"
)]
#[case::typo(
    r#"[{"endpointSelector": {"matchLabels": {"id": "service1"}}, "ingres": []}]"#,
    "field `[0].ingres`: unknown field `ingres`"
)]
#[case::other_kind(
    r#"{"kind": "NetworkPolicy", "spec": {}}"#,
    "field `kind`: `NetworkPolicy`: expected a CiliumNetworkPolicy"
)]
fn unreadable_or_unsupported_policies_name_the_field(#[case] text: &str, #[case] expected: &str) {
    let err = parse(text).expect_err("refused").to_string();
    assert!(err.starts_with(expected), "{err}");
}

#[rstest]
#[case::no_match(
    r#"{"endpointSelector": {"matchLabels": {"id": "db"}}}"#,
    "field `endpointSelector.matchLabels`: id=db matches no container of the lab"
)]
#[case::no_peer(
    r#"{"endpointSelector": {"matchLabels": {"id": "service1"}}, "ingress": [{"fromEndpoints": [{"matchLabels": {"id": "db"}}]}]}"#,
    "field `ingress[0].fromEndpoints[0].matchLabels`: id=db matches no container of the lab"
)]
#[case::port_range(
    r#"{"endpointSelector": {"matchLabels": {"id": "service1"}}, "ingress": [{"toPorts": [{"ports": [{"port": "70000", "protocol": "TCP"}]}]}]}"#,
    "field `ingress[0].toPorts[0].ports[0].port`: port 70000: use 1 to 65535"
)]
#[case::named_port(
    r#"{"endpointSelector": {"matchLabels": {"id": "service1"}}, "ingress": [{"toPorts": [{"ports": [{"port": "http"}]}]}]}"#,
    "field `ingress[0].toPorts[0].ports[0].port`: named ports are not supported"
)]
#[case::protocol(
    r#"{"endpointSelector": {"matchLabels": {"id": "service1"}}, "ingress": [{"toPorts": [{"ports": [{"port": "80", "protocol": "SCTP"}]}]}]}"#,
    "field `ingress[0].toPorts[0].ports[0].protocol`: `SCTP`: use TCP, UDP or ANY"
)]
#[case::reserved(
    r#"{"endpointSelector": {"matchLabels": {"reserved:host": ""}}}"#,
    "field `endpointSelector.matchLabels.reserved:host`: label source `reserved:` is not supported"
)]
#[case::in_an_array(
    r#"[{"endpointSelector": {"matchLabels": {"id": "service1"}}}, {"endpointSelector": {"matchLabels": {"id": "db"}}}]"#,
    "field `[1].endpointSelector.matchLabels`: id=db matches no container of the lab"
)]
#[case::in_a_cnp(
    r#"{"kind": "CiliumNetworkPolicy", "specs": [{"endpointSelector": {"matchLabels": {"id": "db"}}}]}"#,
    "field `specs[0].endpointSelector.matchLabels`: id=db matches no container of the lab"
)]
#[case::empty_selector(
    r#"{"endpointSelector": {}}"#,
    "field `endpointSelector`: an empty selector selects every endpoint"
)]
fn policies_that_do_not_fit_the_lab_name_the_field(#[case] text: &str, #[case] expected: &str) {
    let err = compile(&parse(text).unwrap(), &containers()).expect_err("refused").to_string();
    assert!(err.starts_with(expected), "{err}");
}
