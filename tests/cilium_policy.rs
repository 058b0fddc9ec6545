//! The cilium-style overlay's policy compiler: label sets into identities,
//! the policy model's rules into policy map entries, and every feature its
//! datapath does not enforce refused with its line and field. (Reading
//! policy files is tested in `tests/policy.rs`.)

use rstest::rstest;
use vlab::overlay::cilium_style::policy::{
    allows, compile, endpoints, identities, Compiled, Labels, Protocol, ANY_IDENTITY, FIRST_IDENTITY,
};
use vlab::policy::parse::PolicyError;
use vlab::policy::Policy;

fn parse(text: &str) -> Result<Policy, PolicyError> {
    vlab::policy::parse::parse(text, &endpoints(&containers(), &Default::default()))
}

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
    compile(&parse(&fixture("study.json")).unwrap(), &containers(), &Default::default()).unwrap()
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
    let cnp = compile(&parse(&fixture("study-cnp.json")).unwrap(), &containers(), &Default::default()).unwrap();
    assert_eq!(cnp, c);
}

#[test]
fn wildcards_follow_ciliums_lookup_order() {
    let text = r#"[{"endpointSelector": {"matchLabels": {"id": "service1"}},
                    "ingress": [{"toPorts": [{"ports": [{"port": "53", "protocol": "ANY"}]}]},
                                {"fromEndpoints": [{"matchLabels": {"id": "app2"}}]}]}]"#;
    let c = compile(&parse(text).unwrap(), &containers(), &Default::default()).unwrap();
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

#[test]
fn expressions_and_port_ranges_become_entries() {
    let text = r#"[{"endpointSelector": {"matchExpressions": [{"key": "id", "operator": "In", "values": ["service1"]}]},
                    "ingress": [{"fromEndpoints": [{"matchExpressions": [{"key": "id", "operator": "NotIn", "values": ["app1"]}]}],
                                 "toPorts": [{"ports": [{"port": "8000", "endPort": 8002, "protocol": "UDP"}]}]}]}]"#;
    let c = compile(&parse(text).unwrap(), &containers(), &Default::default()).unwrap();
    let (server, client, other) = (c.identities["c1"], c.identities["c2"], c.identities["c3"]);
    // NotIn app1: app2 and service1 itself.
    let entries: Vec<(u32, Protocol, u16)> = c.entries.iter().map(|e| (e.remote, e.protocol, e.port)).collect();
    assert_eq!(
        entries,
        [
            (other, Protocol::Udp, 8000),
            (other, Protocol::Udp, 8001),
            (other, Protocol::Udp, 8002),
            (server, Protocol::Udp, 8000),
            (server, Protocol::Udp, 8001),
            (server, Protocol::Udp, 8002),
        ]
    );
    assert!(!allows(&c, server, client, Protocol::Udp, 8001));
}

/// Egress entries are keyed by the sender's identity and the destination's;
/// deny entries go to the deny map, whatever allows the same key; a deny
/// section selects for default deny (unless `enableDefaultDeny` says no).
#[test]
fn egress_and_deny_become_entries_of_their_own() {
    use vlab::policy::Direction;
    let text = r#"
- endpointSelector: {matchLabels: {id: app1}}
  egress:
  - toEndpoints: [{matchLabels: {id: service1}}]
    toPorts: [{ports: [{port: "5201", protocol: TCP}]}]
- endpointSelector: {matchLabels: {id: service1}}
  ingress:
  - fromEntities: [all]
  ingressDeny:
  - fromEndpoints: [{matchLabels: {id: app2}}]
- endpointSelector: {matchLabels: {id: app2}}
  egressDeny:
  - toPorts: [{ports: [{port: "53", protocol: UDP}]}]
  enableDefaultDeny: {egress: false}
"#;
    let c = compile(&parse(text).unwrap(), &containers(), &Default::default()).unwrap();
    let (server, client, other) = (c.identities["c1"], c.identities["c2"], c.identities["c3"]);
    let keys = |entries: &[vlab::overlay::cilium_style::policy::Entry]| -> Vec<(u32, u32, Protocol, u16, Direction)> {
        entries.iter().map(|e| (e.endpoint, e.remote, e.protocol, e.port, e.direction)).collect()
    };
    assert_eq!(
        keys(&c.entries),
        [
            (client, server, Protocol::Tcp, 5201, Direction::Egress),
            (server, ANY_IDENTITY, Protocol::Any, 0, Direction::Ingress)
        ]
    );
    assert_eq!(
        keys(&c.deny),
        [
            (other, ANY_IDENTITY, Protocol::Udp, 53, Direction::Egress),
            (server, other, Protocol::Any, 0, Direction::Ingress),
        ]
    );
    assert_eq!(c.enforced.iter().copied().collect::<Vec<_>>(), [server]);
    assert_eq!(c.enforced_egress.iter().copied().collect::<Vec<_>>(), [client]);
    assert_eq!(c.enforced_flags(), [(client, 2), (server, 1)].into_iter().collect());
    assert!(allows(&c, server, client, Protocol::Tcp, 1), "all");
    assert!(!allows(&c, server, other, Protocol::Tcp, 1), "the deny wins over all");
}

#[rstest]
#[case::sctp(
    r#"{"endpointSelector": {"matchLabels": {"id": "service1"}}, "ingress": [{"toPorts": [{"ports": [{"port": "80", "protocol": "SCTP"}]}]}]}"#,
    "field `ingress[0]`: SCTP is not enforced: l4-policy, iptables and nftables enforce TCP and UDP"
)]
#[case::range(
    r#"{"endpointSelector": {"matchLabels": {"id": "service1"}}, "ingress": [{"toPorts": [{"ports": [{"port": "1", "endPort": 20000}]}]}]}"#,
    "field `ingress[0]`: ports 1-20000: the method holds 16384 entries"
)]
#[case::entries(
    r#"{"endpointSelector": {"matchLabels": {"id": "service1"}}, "ingress": [{"toPorts": [{"ports": [{"port": "1", "endPort": 10000}]}]}]}"#,
    "field `ingress[0]`: the policy needs more than the method's 16384 entries"
)]
fn what_the_datapath_cannot_enforce_is_refused_at_its_rule(#[case] text: &str, #[case] expected: &str) {
    let err = compile(&parse(text).unwrap(), &containers(), &Default::default()).expect_err("refused").to_string();
    assert!(err.contains(expected), "{err}");
}

#[rstest]
#[case::no_match(
    r#"{"endpointSelector": {"matchLabels": {"id": "db"}}}"#,
    "field `endpointSelector.matchLabels.id`: `id=db` is on no container of the lab"
)]
#[case::reserved(
    r#"{"endpointSelector": {"matchLabels": {"reserved:host": ""}}}"#,
    "field `endpointSelector.matchLabels.reserved:host`: label source `reserved:` is not supported"
)]
#[case::in_a_cnp(
    r#"{"kind": "CiliumNetworkPolicy", "specs": [{"endpointSelector": {"matchLabels": {"id": "db"}}}]}"#,
    "field `specs[0].endpointSelector.matchLabels.id`: `id=db` is on no container of the lab"
)]
#[case::l7(
    r#"[{"endpointSelector": {"matchLabels": {"id": "service1"}}, "ingress": [{"toPorts": [{"ports": [{"port": "80"}], "rules": {"http": [{}]}}]}]}]"#,
    "field `[0].ingress[0].toPorts[0].rules`: `rules` is not supported"
)]
fn policies_that_do_not_fit_the_lab_name_the_field(#[case] text: &str, #[case] expected: &str) {
    let err = parse(text).expect_err("refused").to_string();
    assert!(err.contains(expected), "{err}");
}
