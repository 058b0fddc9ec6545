//! Network policy as a plain model, and an evaluator that answers from it
//! alone whether a connection is allowed and by which rule.
//!
//! The model is read from a policy file ([`parse`]: Cilium's policy
//! language, or Kubernetes NetworkPolicy objects) and the containers'
//! labels; it never looks at what a datapath was given (BPF maps, rulesets),
//! so that a datapath's verdicts can be checked against it. The semantics
//! are the documented ones:
//!
//! - A rule selects endpoints (its subject). An endpoint that no rule with a
//!   section for a direction selects allows everything in that direction;
//!   one that is selected allows only what some rule allows (rules are a
//!   union), for Cilium also when the rule has only deny sections, unless
//!   the rule says `enableDefaultDeny: {ingress: false}` (or egress).
//! - A deny that matches wins over every allow.
//! - A connection is allowed when the sender's egress and the receiver's
//!   ingress both allow it.

pub mod parse;

use std::collections::BTreeMap;
use std::fmt;

use serde::Serialize;

/// Labels: key and value.
pub type Labels = BTreeMap<String, String>;

/// The label of a Cilium endpoint that names its Kubernetes namespace; a
/// container without it is in [`DEFAULT_NAMESPACE`].
pub const NAMESPACE_LABEL: &str = "io.kubernetes.pod.namespace";

/// The label Kubernetes gives every namespace: its name.
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// The namespace of a container whose labels name none.
pub const DEFAULT_NAMESPACE: &str = "default";

/// A traffic direction, as seen from the endpoint a rule selects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    Ingress,
    Egress,
}

impl Direction {
    pub const BOTH: [Direction; 2] = [Direction::Ingress, Direction::Egress];

    fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Direction::Ingress => "ingress",
            Direction::Egress => "egress",
        })
    }
}

/// The transport protocol of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    /// Its name as tools write it (`tcp`, `udp`).
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
        })
    }
}

/// The protocols a port rule names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ProtocolMatch {
    Tcp,
    Udp,
    Sctp,
    /// Cilium's `ANY`: TCP, UDP and SCTP.
    Any,
}

impl ProtocolMatch {
    fn matches(self, p: Protocol) -> bool {
        matches!(
            (self, p),
            (ProtocolMatch::Any, _) | (ProtocolMatch::Tcp, Protocol::Tcp) | (ProtocolMatch::Udp, Protocol::Udp)
        )
    }
}

/// A port rule: a protocol and a range of destination ports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct PortRange {
    pub protocol: ProtocolMatch,
    pub first: u16,
    pub last: u16,
}

impl PortRange {
    /// Every port of `protocol`.
    pub fn all(protocol: ProtocolMatch) -> PortRange {
        PortRange { protocol, first: 1, last: u16::MAX }
    }

    fn matches(&self, protocol: Protocol, port: u16) -> bool {
        self.protocol.matches(protocol) && (self.first..=self.last).contains(&port)
    }
}

/// A label selector's expression operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Operator {
    In,
    NotIn,
    Exists,
    DoesNotExist,
}

/// A `matchExpressions` entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Expression {
    pub key: String,
    pub operator: Operator,
    pub values: Vec<String>,
}

impl Expression {
    fn matches(&self, labels: &Labels) -> bool {
        let value = labels.get(&self.key);
        match self.operator {
            Operator::In => value.is_some_and(|v| self.values.contains(v)),
            Operator::NotIn => value.is_none_or(|v| !self.values.contains(v)),
            Operator::Exists => value.is_some(),
            Operator::DoesNotExist => value.is_none(),
        }
    }
}

/// A label selector: every label and every expression must match; the
/// empty selector matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Selector {
    pub match_labels: Labels,
    pub match_expressions: Vec<Expression>,
}

impl Selector {
    pub fn matches(&self, labels: &Labels) -> bool {
        self.match_labels.iter().all(|(k, v)| labels.get(k) == Some(v))
            && self.match_expressions.iter().all(|e| e.matches(labels))
    }

    /// Whether it names `key`, in a label or an expression.
    pub fn names(&self, key: &str) -> bool {
        self.match_labels.contains_key(key) || self.match_expressions.iter().any(|e| e.key == key)
    }
}

/// Which namespaces an endpoint selector looks in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Namespaces {
    /// Every namespace (Cilium rules outside a namespaced object, and
    /// selectors that name the namespace label themselves).
    Any,
    /// The policy's own namespace.
    Same(String),
    /// The namespaces whose labels match (Kubernetes' `namespaceSelector`).
    Matching(Selector),
}

/// Endpoints chosen by their labels, in some namespaces.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EndpointSelector {
    pub namespaces: Namespaces,
    pub labels: Selector,
}

impl EndpointSelector {
    pub fn matches(&self, e: &Endpoint) -> bool {
        let in_namespace = match &self.namespaces {
            Namespaces::Any => true,
            Namespaces::Same(ns) => &e.namespace == ns,
            Namespaces::Matching(s) => s.matches(&e.namespace_labels),
        };
        in_namespace && self.labels.matches(&e.labels)
    }
}

/// Cilium's entities that a lab's containers can be: `all` and `cluster`
/// are every container; `world`, `host` and `remote-node` none of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Entity {
    All,
    Cluster,
    World,
    Host,
    RemoteNode,
}

impl Entity {
    pub const NAMES: [(&'static str, Entity); 5] = [
        ("all", Entity::All),
        ("cluster", Entity::Cluster),
        ("world", Entity::World),
        ("host", Entity::Host),
        ("remote-node", Entity::RemoteNode),
    ];

    fn is_container(self) -> bool {
        matches!(self, Entity::All | Entity::Cluster)
    }
}

/// A peer of a rule: who the selected endpoint may talk with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Peer {
    /// Anyone (Kubernetes' rule without `from`/`to`, Cilium's L4-only rule).
    Any,
    Endpoints(EndpointSelector),
    Entity(Entity),
}

impl Peer {
    fn matches(&self, e: &Endpoint) -> bool {
        match self {
            Peer::Any => true,
            Peer::Endpoints(s) => s.matches(e),
            Peer::Entity(x) => x.is_container(),
        }
    }
}

/// One allow or deny entry of a rule: these peers, these ports (`None`:
/// every port of every protocol). No peers: it matches nobody (Cilium's
/// empty rule `{}`, which only switches default deny on).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PeerRule {
    pub peers: Vec<Peer>,
    pub ports: Option<Vec<PortRange>>,
    /// Where it is in the file (`spec.ingress[0]`), and its line.
    pub field: String,
    pub line: usize,
}

impl PeerRule {
    fn matches(&self, peer: &Endpoint, protocol: Protocol, port: u16) -> bool {
        self.peers.iter().any(|p| p.matches(peer))
            && self.ports.as_ref().is_none_or(|ports| ports.iter().any(|r| r.matches(protocol, port)))
    }
}

/// A rule and where it came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Rule {
    /// Its number in the file, from 1, as reports name it (`rule 2`).
    pub number: usize,
    /// Its name: the object's `metadata.name`, or a rule label `name=...`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Its line in the file.
    pub line: usize,
    pub subject: EndpointSelector,
    /// Whether selecting an endpoint puts it in default deny, per
    /// direction (ingress, egress).
    pub default_deny: [bool; 2],
    /// Allow and deny entries, per direction.
    pub allow: [Vec<PeerRule>; 2],
    pub deny: [Vec<PeerRule>; 2],
}

impl Rule {
    /// `rule 2 (name)`.
    pub fn label(&self) -> String {
        match &self.name {
            Some(n) => format!("rule {} ({n})", self.number),
            None => format!("rule {}", self.number),
        }
    }
}

/// A policy file's rules.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Policy {
    pub rules: Vec<Rule>,
}

/// An endpoint (a container) as policies see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Endpoint {
    pub name: String,
    pub namespace: String,
    /// Its labels, the namespace label included.
    pub labels: Labels,
    /// Its namespace's labels, [`NAMESPACE_NAME_LABEL`] included.
    pub namespace_labels: Labels,
}

impl Endpoint {
    /// A container with the labels the lab gives it (keys may carry
    /// Cilium's `k8s:` or `any:` source); its namespace is its
    /// [`NAMESPACE_LABEL`], else [`DEFAULT_NAMESPACE`].
    pub fn new(name: &str, labels: &Labels) -> Endpoint {
        let mut labels: Labels =
            labels.iter().map(|(k, v)| (parse::label_key(k).unwrap_or(k).to_string(), v.clone())).collect();
        let namespace = labels.entry(NAMESPACE_LABEL.into()).or_insert_with(|| DEFAULT_NAMESPACE.into()).clone();
        let namespace_labels = Labels::from([(NAMESPACE_NAME_LABEL.to_string(), namespace.clone())]);
        Endpoint { name: name.to_string(), namespace, labels, namespace_labels }
    }

    /// The endpoint with its namespace's labels from `namespaces` (by
    /// namespace name), besides the name label every namespace has.
    pub fn in_namespaces(mut self, namespaces: &std::collections::BTreeMap<String, Labels>) -> Endpoint {
        if let Some(more) = namespaces.get(&self.namespace) {
            self.namespace_labels.extend(more.iter().map(|(k, v)| (k.clone(), v.clone())));
        }
        self
    }
}

/// Why one direction allows or drops a connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "by", rename_all = "kebab-case")]
pub enum Reason {
    /// No rule with a section for this direction selects the endpoint.
    NotSelected,
    /// Allowed by this rule's entry.
    Allowed { rule: usize, label: String, field: String },
    /// Dropped by this rule's deny entry.
    Denied { rule: usize, label: String, field: String },
    /// Selected by these rules, and none allows it.
    DefaultDeny { rules: Vec<usize> },
}

impl Reason {
    pub fn allows(&self) -> bool {
        matches!(self, Reason::NotSelected | Reason::Allowed { .. })
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::NotSelected => f.write_str("no policy selects it"),
            Reason::Allowed { label, field, .. } => write!(f, "allowed by {label} at {field}"),
            Reason::Denied { label, field, .. } => write!(f, "denied by {label} at {field}"),
            Reason::DefaultDeny { rules } => {
                let r: Vec<String> = rules.iter().map(|n| n.to_string()).collect();
                write!(f, "default deny (selected by rule {}, none allows it)", r.join(", "))
            }
        }
    }
}

/// A connection attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Connection<'a> {
    pub from: &'a Endpoint,
    pub to: &'a Endpoint,
    pub protocol: Protocol,
    pub port: u16,
}

/// What the policy says of a connection: each side's reason.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Decision {
    /// The sender's egress.
    pub egress: Reason,
    /// The receiver's ingress.
    pub ingress: Reason,
}

impl Decision {
    pub fn allowed(&self) -> bool {
        self.egress.allows() && self.ingress.allows()
    }

    /// The reason that decides: the side that drops it (the sender's
    /// first), else the side a rule allows it at (the receiver's first),
    /// else the receiver's.
    pub fn deciding(&self) -> (Direction, &Reason) {
        let by_rule = |r: &Reason| matches!(r, Reason::Allowed { .. });
        if !self.egress.allows() || (self.ingress.allows() && !by_rule(&self.ingress) && by_rule(&self.egress)) {
            (Direction::Egress, &self.egress)
        } else {
            (Direction::Ingress, &self.ingress)
        }
    }
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (direction, reason) = self.deciding();
        let verdict = if self.allowed() { "allowed" } else { "dropped" };
        write!(f, "{verdict}: {direction} {reason}")
    }
}

impl Policy {
    /// What the policy says of `c`.
    pub fn decide(&self, c: Connection<'_>) -> Decision {
        Decision {
            egress: self.side(Direction::Egress, c.from, c.to, c.protocol, c.port),
            ingress: self.side(Direction::Ingress, c.to, c.from, c.protocol, c.port),
        }
    }

    /// One direction at `endpoint`, with `peer` at the other end.
    fn side(&self, d: Direction, endpoint: &Endpoint, peer: &Endpoint, protocol: Protocol, port: u16) -> Reason {
        let selecting: Vec<&Rule> = self.rules.iter().filter(|r| r.subject.matches(endpoint)).collect();
        let hit = |r: &Rule, entries: &[PeerRule]| {
            entries.iter().find(|e| e.matches(peer, protocol, port)).map(|e| (r.number, r.label(), e.field.clone()))
        };
        if let Some((rule, label, field)) = selecting.iter().find_map(|r| hit(r, &r.deny[d.index()])) {
            return Reason::Denied { rule, label, field };
        }
        let enforcing: Vec<usize> = selecting.iter().filter(|r| r.default_deny[d.index()]).map(|r| r.number).collect();
        if let Some((rule, label, field)) = selecting.iter().find_map(|r| hit(r, &r.allow[d.index()])) {
            return Reason::Allowed { rule, label, field };
        }
        if enforcing.is_empty() {
            Reason::NotSelected
        } else {
            Reason::DefaultDeny { rules: enforcing }
        }
    }
}
