//! The policy evaluator, from the documented semantics of Cilium's policy
//! language and of Kubernetes NetworkPolicy: each case is a policy, a
//! connection, the verdict and the rule that decides it. Nothing here looks
//! at a datapath.

use rstest::rstest;
use vlab::policy::parse::parse;
use vlab::policy::{Decision, Direction, Endpoint, Labels, Policy, Protocol, Reason};

/// A container with these labels.
fn e(name: &str, labels: &[(&str, &str)]) -> Endpoint {
    Endpoint::new(name, &labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<Labels>())
}

/// The lab's containers: `web` (app=web, tier=front), `db` (app=db,
/// tier=back), `cli` (app=client) in namespace `prod`, `job` (app=batch).
fn endpoints() -> Vec<Endpoint> {
    vec![
        e("web", &[("app", "web"), ("tier", "front")]),
        e("db", &[("app", "db"), ("tier", "back")]),
        e("cli", &[("app", "client"), ("k8s:io.kubernetes.pod.namespace", "prod")]),
        e("job", &[("app", "batch")]),
    ]
}

fn policy(text: &str) -> Policy {
    parse(text, &endpoints()).unwrap_or_else(|e| panic!("{e}"))
}

fn decide(p: &Policy, from: &str, to: &str, protocol: Protocol, port: u16) -> Decision {
    let eps = endpoints();
    let find = |n: &str| eps.iter().find(|e| e.name == n).cloned().expect("an endpoint");
    let (from, to) = (find(from), find(to));
    p.decide(vlab::policy::Connection { from: &from, to: &to, protocol, port })
}

/// The verdict and its deciding side and reason, in a few words:
/// `allow ingress rule 1`, `drop egress default`, `drop ingress deny 2`,
/// `allow - none` (nothing selects either end).
fn short(d: &Decision) -> String {
    let (dir, reason) = d.deciding();
    let verdict = if d.allowed() { "allow" } else { "drop" };
    let dir = match dir {
        Direction::Ingress => "ingress",
        Direction::Egress => "egress",
    };
    match reason {
        Reason::NotSelected => format!("{verdict} - none"),
        Reason::Allowed { rule, .. } => format!("{verdict} {dir} rule {rule}"),
        Reason::Denied { rule, .. } => format!("{verdict} {dir} deny {rule}"),
        Reason::DefaultDeny { .. } => format!("{verdict} {dir} default"),
    }
}

const L3_L4: &str = r#"[{
  "labels": [{"key": "name", "value": "web-from-client"}],
  "endpointSelector": {"matchLabels": {"app": "web"}},
  "ingress": [{"fromEndpoints": [{"matchLabels": {"app": "client"}}],
               "toPorts": [{"ports": [{"port": "80", "protocol": "TCP"}]}]}]
}]"#;

const L4_ONLY: &str = r#"{
  "endpointSelector": {"matchLabels": {"app": "web"}},
  "ingress": [{"toPorts": [{"ports": [{"port": "443"}]}]}]
}"#;

const L3_ONLY_AND_EMPTY: &str = r#"
- endpointSelector: {matchLabels: {app: db}}
  ingress:
  - fromEndpoints: [{matchLabels: {tier: front}}]
- endpointSelector: {matchLabels: {app: web}}
  ingress:
  - {}
"#;

const EXPRESSIONS: &str = r#"
endpointSelector:
  matchExpressions:
  - {key: app, operator: In, values: [web, db]}
ingress:
- fromEndpoints:
  - matchExpressions:
    - {key: tier, operator: DoesNotExist}
    - {key: app, operator: NotIn, values: [batch]}
  toPorts:
  - ports: [{port: "8000", endPort: 8100, protocol: TCP}]
"#;

const DENY: &str = r#"
- endpointSelector: {matchLabels: {app: db}}
  ingress:
  - fromEntities: [all]
  ingressDeny:
  - fromEndpoints: [{matchLabels: {app: batch}}]
    toPorts: [{ports: [{port: "5432", protocol: TCP}]}]
"#;

const EGRESS: &str = r#"
- endpointSelector: {matchLabels: {app: client}}
  egress:
  - toEndpoints: [{matchLabels: {app: web}}]
    toPorts: [{ports: [{port: "80", protocol: TCP}, {port: "53", protocol: UDP}]}]
- endpointSelector: {matchLabels: {app: batch}}
  egressDeny:
  - toEntities: [cluster]
    toPorts: [{ports: [{port: "22"}]}]
  enableDefaultDeny: {egress: false}
"#;

const CNP_NAMESPACED: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: prod-web, namespace: prod}
spec:
  endpointSelector: {}
  ingress:
  - fromEndpoints: [{}]
"#;

const NETPOL: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: db-from-front}
spec:
  podSelector: {matchLabels: {app: db}}
  ingress:
  - from:
    - podSelector: {matchLabels: {tier: front}}
    - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: prod}}
    ports:
    - {port: 5432}
    - {protocol: UDP, port: 9000, endPort: 9010}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: batch-egress-deny-all, namespace: default}
spec:
  podSelector: {matchLabels: {app: batch}}
  policyTypes: [Egress]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: batch-allow-all}
spec:
  podSelector: {matchLabels: {app: batch}}
  ingress:
  - {}
"#;

#[rstest]
// L3+L4: only the selected peer, only the port; others default deny.
#[case(L3_L4, "cli", "web", Protocol::Tcp, 80, "allow ingress rule 1")]
#[case(L3_L4, "cli", "web", Protocol::Tcp, 81, "drop ingress default")]
#[case(L3_L4, "cli", "web", Protocol::Udp, 80, "drop ingress default")]
#[case(L3_L4, "db", "web", Protocol::Tcp, 80, "drop ingress default")]
// Endpoints no rule selects allow everything.
#[case(L3_L4, "web", "db", Protocol::Tcp, 5432, "allow - none")]
// L4-only: the port from anyone; ANY is TCP and UDP.
#[case(L4_ONLY, "job", "web", Protocol::Tcp, 443, "allow ingress rule 1")]
#[case(L4_ONLY, "db", "web", Protocol::Udp, 443, "allow ingress rule 1")]
#[case(L4_ONLY, "db", "web", Protocol::Tcp, 80, "drop ingress default")]
// L3-only: every port from the peer; `{}` allows nothing but selects.
#[case(L3_ONLY_AND_EMPTY, "web", "db", Protocol::Udp, 9999, "allow ingress rule 1")]
#[case(L3_ONLY_AND_EMPTY, "job", "db", Protocol::Tcp, 5432, "drop ingress default")]
#[case(L3_ONLY_AND_EMPTY, "db", "web", Protocol::Tcp, 80, "drop ingress default")]
// Expressions: In, NotIn (absent counts as not in), DoesNotExist; ranges.
#[case(EXPRESSIONS, "cli", "db", Protocol::Tcp, 8000, "allow ingress rule 1")]
#[case(EXPRESSIONS, "cli", "web", Protocol::Tcp, 8100, "allow ingress rule 1")]
#[case(EXPRESSIONS, "cli", "web", Protocol::Tcp, 8101, "drop ingress default")]
#[case(EXPRESSIONS, "job", "web", Protocol::Tcp, 8050, "drop ingress default")]
#[case(EXPRESSIONS, "db", "web", Protocol::Tcp, 8050, "drop ingress default")]
#[case(EXPRESSIONS, "web", "cli", Protocol::Tcp, 8050, "allow - none")]
// Deny wins over an allow of everything; only what it names.
#[case(DENY, "job", "db", Protocol::Tcp, 5432, "drop ingress deny 1")]
#[case(DENY, "job", "db", Protocol::Udp, 5432, "allow ingress rule 1")]
#[case(DENY, "web", "db", Protocol::Tcp, 5432, "allow ingress rule 1")]
// Egress, enforced at the sender; egressDeny without default deny.
#[case(EGRESS, "cli", "web", Protocol::Tcp, 80, "allow egress rule 1")]
#[case(EGRESS, "cli", "web", Protocol::Udp, 53, "allow egress rule 1")]
#[case(EGRESS, "cli", "web", Protocol::Tcp, 53, "drop egress default")]
#[case(EGRESS, "cli", "db", Protocol::Tcp, 80, "drop egress default")]
#[case(EGRESS, "job", "web", Protocol::Tcp, 22, "drop egress deny 2")]
#[case(EGRESS, "job", "web", Protocol::Udp, 22, "drop egress deny 2")]
#[case(EGRESS, "job", "web", Protocol::Tcp, 80, "allow - none")]
// A CiliumNetworkPolicy selects in its namespace, peers too.
#[case(CNP_NAMESPACED, "web", "cli", Protocol::Tcp, 80, "drop ingress default")]
#[case(CNP_NAMESPACED, "cli", "web", Protocol::Tcp, 80, "allow - none")]
// NetworkPolicy: podSelector and namespaceSelector peers, default TCP,
// port ranges, an egress-only policy, `ingress: [{}]` allows all.
#[case(NETPOL, "web", "db", Protocol::Tcp, 5432, "allow ingress rule 1")]
#[case(NETPOL, "cli", "db", Protocol::Udp, 9010, "allow ingress rule 1")]
#[case(NETPOL, "cli", "db", Protocol::Udp, 5432, "drop ingress default")]
#[case(NETPOL, "job", "db", Protocol::Tcp, 5432, "drop egress default")]
#[case(NETPOL, "job", "web", Protocol::Tcp, 1, "drop egress default")]
#[case(NETPOL, "cli", "web", Protocol::Tcp, 80, "allow - none")]
#[case(NETPOL, "db", "job", Protocol::Udp, 7, "allow ingress rule 3")]
fn decides_as_documented(
    #[case] text: &str,
    #[case] from: &str,
    #[case] to: &str,
    #[case] protocol: Protocol,
    #[case] port: u16,
    #[case] expected: &str,
) {
    let d = decide(&policy(text), from, to, protocol, port);
    assert_eq!(short(&d), expected, "{from} -> {to} {protocol} {port}: {d}");
}

#[test]
fn a_decision_names_the_rule_and_field() {
    let d = decide(&policy(L3_L4), "cli", "web", Protocol::Tcp, 80);
    assert_eq!(d.to_string(), "allowed: ingress allowed by rule 1 (web-from-client) at [0].ingress[0]");
    let d = decide(&policy(NETPOL), "job", "web", Protocol::Tcp, 1);
    assert_eq!(d.to_string(), "dropped: egress default deny (selected by rule 2, none allows it)");
}

#[rstest]
#[case::unsupported_field(
    "[{\"endpointSelector\": {}, \"ingress\": [{\"fromCIDR\": [\"10.0.0.0/8\"]}]}]",
    "1:40: field `[0].ingress[0].fromCIDR`: `fromCIDR` is not supported"
)]
#[case::mistyped_field(
    "endpointSelector: {}\ningress:\n- fromEndpoint: [{}]\n",
    "3:3: field `ingress[0].fromEndpoint`: unknown field `fromEndpoint`; did you mean `fromEndpoints`?"
)]
#[case::operator(
    "endpointSelector:\n  matchExpressions:\n  - {key: app, operator: Equals, values: [web]}\n",
    "3:26: field `endpointSelector.matchExpressions[0].operator`: `Equals`: use In, NotIn, Exists or DoesNotExist"
)]
#[case::port_range(
    "endpointSelector: {}\ningress:\n- toPorts: [{ports: [{port: \"70000\"}]}]\n",
    "3:29: field `ingress[0].toPorts[0].ports[0].port`: 70000: use 1 to 65535"
)]
#[case::end_port_below(
    "endpointSelector: {}\ningress:\n- toPorts: [{ports: [{port: \"90\", endPort: 80}]}]\n",
    "field `ingress[0].toPorts[0].ports[0].endPort`: 80 is below the port (90)"
)]
#[case::named_port(
    "endpointSelector: {}\ningress:\n- toPorts: [{ports: [{port: http}]}]\n",
    "named ports are not supported"
)]
#[case::unknown_label(
    "endpointSelector: {matchLabels: {app: nginx}}\n",
    "1:19: field `endpointSelector.matchLabels.app`: `app=nginx` is on no container of the lab"
)]
#[case::entity("endpointSelector: {}\ningress:\n- fromEntities: [clutser]\n", "did you mean `cluster`?")]
#[case::other_kind(
    "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n",
    "2:7: field `kind`: `ConfigMap` is not a policy"
)]
#[case::second_document(
    "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: a}\nspec: {podSelector: {}}\n---\n\
     apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: b}\nspec:\n  podSelector: {}\n  ingress:\n  - from:\n    - ipBlock: {cidr: 10.0.0.0/8}\n",
    "13:7: field `spec.ingress[0].from[0].ipBlock`: `ipBlock` is not supported"
)]
#[case::policy_types(
    "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: a}\nspec:\n  podSelector: {}\n  policyTypes: [ingress]\n",
    "6:17: field `spec.policyTypes[0]`: `ingress`: use Ingress or Egress; did you mean `Ingress`?"
)]
#[case::syntax("endpointSelector: {matchLabels: {app: web}\n", "not YAML or JSON")]
fn refuses_with_line_and_field(#[case] text: &str, #[case] expected: &str) {
    let e = parse(text, &endpoints()).expect_err("refused").to_string();
    assert!(e.contains(expected), "{e}\n  does not contain\n{expected}");
}

/// What the probe matrix tries: TCP always, UDP when a rule names it; every
/// named port (a range's ends), the ports `[probes]` adds, and the first
/// port from 10000 that no rule names, on every probed protocol.
#[test]
fn the_matrix_probes_every_named_port_and_one_unnamed() {
    use vlab::filter::probes::{targets, MatrixMode, Settings};
    let text = r#"
- endpointSelector: {matchLabels: {app: web}}
  ingress:
  - toPorts: [{ports: [{port: "80", protocol: TCP}, {port: "10000", endPort: 10001, protocol: TCP}]}]
  - toPorts: [{ports: [{port: "53", protocol: UDP}]}]
"#;
    let p = policy(text);
    let t = targets(&p, &Settings { ports: vec![7], ..Settings::default() });
    assert_eq!(
        t,
        [
            (Protocol::Tcp, 7),
            (Protocol::Tcp, 80),
            (Protocol::Tcp, 10000),
            (Protocol::Tcp, 10001),
            (Protocol::Tcp, 10002),
            (Protocol::Udp, 7),
            (Protocol::Udp, 53),
            (Protocol::Udp, 10002),
        ]
    );
    assert!(targets(&p, &Settings { matrix: MatrixMode::Off, ..Settings::default() }).is_empty());
    // An L3-only policy names no port: TCP on the unnamed port.
    assert_eq!(targets(&policy(L3_ONLY_AND_EMPTY), &Settings::default()), [(Protocol::Tcp, 10000)]);
}

/// The corpus's containers (as `labs/policy-conformance.toml` would give
/// them): web, client (namespace default) and db (namespace prod).
fn corpus_endpoints() -> Vec<Endpoint> {
    vec![
        e("c1", &[("app", "web"), ("tier", "front")]),
        e("c2", &[("app", "client")]),
        e("c3", &[("app", "db"), ("tier", "back"), ("io.kubernetes.pod.namespace", "prod")]),
    ]
}

/// Every policy of `labs/policies/` read for the corpus's containers, and
/// the evaluator's decision on every cell of its probe matrix, with the
/// deciding rule: the expected matrices, reviewed against the documented
/// semantics (the comment at the top of each file says what it means).
#[rstest]
fn the_corpus_matrices(
    #[values("selectors", "expressions", "ports", "ranges", "deny", "egress", "entities", "netpol")] name: &str,
) {
    use vlab::filter::probes::{targets, Settings};
    let path = format!("{}/labs/policies/{name}.yaml", env!("CARGO_MANIFEST_DIR"));
    let eps = corpus_endpoints();
    let p = parse(&std::fs::read_to_string(&path).unwrap(), &eps).unwrap_or_else(|e| panic!("{name}: {e}"));
    let mut lines = Vec::new();
    for from in &eps {
        for to in eps.iter().filter(|t| t.name != from.name) {
            for (protocol, port) in targets(&p, &Settings::default()) {
                let d = p.decide(vlab::policy::Connection { from, to, protocol, port });
                lines.push(format!("{} -> {} {protocol} {port}: {d}", from.name, to.name));
            }
        }
    }
    insta::assert_snapshot!(format!("corpus_{name}"), lines.join("\n"));
}

/// A namespaceSelector matches the namespace's labels: its name label, and
/// those the lab gives it.
#[test]
fn namespace_selectors_match_namespace_labels() {
    let namespaces = [("prod".to_string(), Labels::from([("team".to_string(), "data".to_string())]))].into();
    let eps: Vec<Endpoint> = endpoints().into_iter().map(|e| e.in_namespaces(&namespaces)).collect();
    let text = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web-from-data-team}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress:
  - from: [{namespaceSelector: {matchLabels: {team: data}}}]
"#;
    let p = parse(text, &eps).unwrap();
    let find = |n: &str| eps.iter().find(|e| e.name == n).unwrap();
    let decide = |from: &str| {
        p.decide(vlab::policy::Connection { from: find(from), to: find("web"), protocol: Protocol::Tcp, port: 80 })
    };
    assert!(decide("cli").allowed(), "cli is in prod, labelled team=data");
    assert!(!decide("db").allowed(), "db is in default");
    // A label no namespace has is refused.
    let e = parse(&text.replace("team: data", "team: web"), &eps).unwrap_err().to_string();
    assert!(e.contains("`team=web` is on no namespace of the lab"), "{e}");
}

/// A CiliumNetworkPolicy's selectors look in its namespace, unless they
/// name the namespace label themselves (in a label or an expression).
#[rstest]
#[case::label("{matchLabels: {app: client, io.kubernetes.pod.namespace: prod}}", "allow ingress rule 1")]
#[case::expression(
    "{matchExpressions: [{key: io.kubernetes.pod.namespace, operator: In, values: [prod]}]}",
    "allow ingress rule 1"
)]
#[case::own_namespace("{matchLabels: {app: client}}", "drop ingress default")]
fn a_selector_that_names_the_namespace_leaves_the_policys(#[case] peer: &str, #[case] expected: &str) {
    let text = format!(
        "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {{name: web, namespace: default}}\n\
         spec:\n  endpointSelector: {{matchLabels: {{app: web}}}}\n  ingress:\n  - fromEndpoints: [{peer}]\n"
    );
    let d = decide(&policy(&text), "cli", "web", Protocol::Tcp, 80);
    assert_eq!(short(&d), expected, "{d}");
}
