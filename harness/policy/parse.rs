//! Policy files: Cilium's policy language (a rule, an array of rules, a
//! `CiliumNetworkPolicy` or `CiliumClusterwideNetworkPolicy`) and
//! Kubernetes `NetworkPolicy` objects, in YAML or JSON, several documents
//! to a file (`---`). Every mistake is reported at its line and column with
//! the field's path; what the model does not cover (CIDRs, L7 rules, named
//! ports, ...) is refused by name, never ignored.

use std::collections::{BTreeMap, BTreeSet};

use marked_yaml::{LoadError, LoaderOptions, Marker, Node, Span, Spanned};
use serde::de::IgnoredAny;
use serde::Deserialize;

use super::{
    Direction, Endpoint, EndpointSelector, Entity, Expression, Labels, Namespaces, Operator, Peer, PeerRule, Policy,
    PortRange, ProtocolMatch, Rule, Selector, DEFAULT_NAMESPACE, NAMESPACE_LABEL,
};
use crate::lab::suggest::did_you_mean;

/// What is wrong with a policy file: where (line and column from 1; 0 when
/// it is the whole file), which field (`spec.ingress[0].ports[0].port`) and
/// why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{}{}{message}",
    if *line > 0 { format!("{line}:{column}: ") } else { String::new() },
    if field.is_empty() { String::new() } else { format!("field `{field}`: ") }
)]
pub struct PolicyError {
    pub line: usize,
    pub column: usize,
    pub field: String,
    pub message: String,
}

impl PolicyError {
    /// The error as `FILE:LINE:COLUMN: field ...: message` (`FILE: ...`
    /// without a place).
    pub fn in_file(&self, file: &str) -> String {
        if self.line > 0 {
            format!("{file}:{self}")
        } else {
            format!("{file}: {self}")
        }
    }
}

/// Fields of Cilium's language and of NetworkPolicy that the model does not
/// cover: refused by name.
const UNSUPPORTED: &[&str] = &[
    "fromCIDR",
    "fromCIDRSet",
    "fromRequires",
    "fromGroups",
    "fromNodes",
    "fromServices",
    "toCIDR",
    "toCIDRSet",
    "toFQDNs",
    "toServices",
    "toGroups",
    "toRequires",
    "toNodes",
    "icmps",
    "nodeSelector",
    "rules",
    "serverNames",
    "listener",
    "originatingTLS",
    "terminatingTLS",
    "authentication",
    "ipBlock",
];

/// The supported set, as refusals name it.
const SUPPORTED: &str = "vlab's policy model covers endpoint selectors (matchLabels, matchExpressions), \
     namespaces, entities and L4 ports; see docs/policies.md";

// ---- Cilium's language ----

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct CiliumRule {
    endpoint_selector: Option<Spanned<LabelSelector>>,
    #[serde(default)]
    ingress: Vec<CiliumIngress>,
    #[serde(default)]
    ingress_deny: Vec<CiliumIngress>,
    #[serde(default)]
    egress: Vec<CiliumEgress>,
    #[serde(default)]
    egress_deny: Vec<CiliumEgress>,
    #[serde(default)]
    labels: Vec<RuleLabel>,
    #[serde(default)]
    #[allow(dead_code)] // accepted, not used
    description: Option<IgnoredAny>,
    #[serde(default)]
    enable_default_deny: Option<DefaultDeny>,
}

#[derive(Debug, Deserialize)]
struct RuleLabel {
    key: String,
    #[serde(default)]
    value: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DefaultDeny {
    ingress: Option<bool>,
    egress: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct LabelSelector {
    #[serde(default)]
    match_labels: BTreeMap<String, String>,
    #[serde(default)]
    match_expressions: Vec<LabelExpression>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LabelExpression {
    key: String,
    operator: Spanned<String>,
    #[serde(default)]
    values: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct CiliumIngress {
    #[serde(default)]
    from_endpoints: Vec<Spanned<LabelSelector>>,
    #[serde(default)]
    from_entities: Vec<Spanned<String>>,
    #[serde(default)]
    to_ports: Vec<CiliumPortRule>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct CiliumEgress {
    #[serde(default)]
    to_endpoints: Vec<Spanned<LabelSelector>>,
    #[serde(default)]
    to_entities: Vec<Spanned<String>>,
    #[serde(default)]
    to_ports: Vec<CiliumPortRule>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CiliumPortRule {
    #[serde(default)]
    ports: Vec<PortSpec>,
}

/// A port entry of either language: Cilium's `port` is required, and its
/// protocol defaults to ANY; NetworkPolicy's port may be left out (every
/// port), and its protocol defaults to TCP.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct PortSpec {
    port: Option<Spanned<String>>,
    end_port: Option<Spanned<String>>,
    protocol: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[allow(dead_code)] // `apiVersion`, `kind` and `status` are accepted, not used
struct CiliumObject {
    #[serde(default)]
    api_version: Option<IgnoredAny>,
    #[serde(default)]
    kind: Option<IgnoredAny>,
    #[serde(default)]
    metadata: Metadata,
    spec: Option<CiliumRule>,
    specs: Option<Vec<CiliumRule>>,
    #[serde(default)]
    status: Option<IgnoredAny>,
}

#[derive(Debug, Default, Deserialize)]
struct Metadata {
    name: Option<String>,
    namespace: Option<String>,
}

// ---- Kubernetes NetworkPolicy ----

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[allow(dead_code)] // `kind` and `status` are accepted, not used
struct NetworkPolicy {
    api_version: Spanned<String>,
    #[serde(default)]
    kind: Option<IgnoredAny>,
    #[serde(default)]
    metadata: Metadata,
    spec: NetworkPolicySpec,
    #[serde(default)]
    status: Option<IgnoredAny>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct NetworkPolicySpec {
    pod_selector: Spanned<LabelSelector>,
    policy_types: Option<Vec<Spanned<String>>>,
    ingress: Option<Vec<NetworkPolicyIngress>>,
    egress: Option<Vec<NetworkPolicyEgress>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NetworkPolicyIngress {
    #[serde(default)]
    from: Vec<Spanned<NetworkPolicyPeer>>,
    #[serde(default)]
    ports: Vec<PortSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NetworkPolicyEgress {
    #[serde(default)]
    to: Vec<Spanned<NetworkPolicyPeer>>,
    #[serde(default)]
    ports: Vec<PortSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct NetworkPolicyPeer {
    pod_selector: Option<Spanned<LabelSelector>>,
    namespace_selector: Option<Spanned<LabelSelector>>,
}

// ---- reading ----

/// A label key as Cilium writes it: its `any:` and `k8s:` sources select
/// the same labels as a plain key; other sources (`reserved:`, `cidr:`) are
/// not supported.
pub fn label_key(key: &str) -> Result<&str, String> {
    match key.split_once(':') {
        None => Ok(key),
        Some(("any" | "k8s", k)) => Ok(k),
        Some((source, _)) => {
            Err(format!("label source `{source}:` is not supported (use plain, `any:` or `k8s:` labels)"))
        }
    }
}

/// One document of the file and the line it starts on.
struct Document<'a> {
    /// Lines before it in the file.
    offset: usize,
    text: &'a str,
}

/// The file's documents, split at `---` lines; documents with nothing but
/// comments are left out.
fn documents(text: &str) -> Vec<Document<'_>> {
    let mut out = Vec::new();
    let (mut start, mut offset, mut line) = (0, 0, 0);
    let mut pos = 0;
    for l in text.split_inclusive('\n') {
        let t = l.trim_end();
        if t == "---" || t.starts_with("--- ") || t.starts_with("---\t") {
            out.push(Document { offset, text: &text[start..pos] });
            start = pos + l.len();
            offset = line + 1;
        }
        pos += l.len();
        line += 1;
    }
    out.push(Document { offset, text: &text[start..] });
    out.retain(|d| d.text.lines().any(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#')));
    out
}

/// Reads a policy file for the lab's `endpoints`: every selector must be
/// well formed and name labels some endpoint has.
pub fn parse(text: &str, endpoints: &[Endpoint]) -> Result<Policy, PolicyError> {
    let mut reader = Reader { endpoints, rules: Vec::new(), offset: 0 };
    let docs = documents(text);
    if docs.is_empty() {
        return Err(PolicyError { line: 0, column: 0, field: String::new(), message: "no policy in the file".into() });
    }
    for doc in docs {
        reader.offset = doc.offset;
        reader.document(doc.text)?;
    }
    Ok(Policy { rules: reader.rules })
}

struct Reader<'a> {
    endpoints: &'a [Endpoint],
    rules: Vec<Rule>,
    /// The current document's first line, less one.
    offset: usize,
}

impl Reader<'_> {
    fn error_at(&self, marker: Option<&Marker>, field: &str, message: impl Into<String>) -> PolicyError {
        let (line, column) = marker.map_or((0, 0), |m| (m.line() + self.offset, m.column()));
        PolicyError { line, column, field: field.to_string(), message: message.into() }
    }

    fn error(&self, span: &Span, field: &str, message: impl Into<String>) -> PolicyError {
        self.error_at(span.start(), field, message)
    }

    fn line(&self, span: &Span) -> usize {
        span.start().map_or(0, |m| m.line() + self.offset)
    }

    fn document(&mut self, text: &str) -> Result<(), PolicyError> {
        let node = match marked_yaml::parse_yaml(0, text) {
            Err(LoadError::TopLevelMustBeMapping(_)) => {
                marked_yaml::parse_yaml_with_options(0, text, LoaderOptions::default().toplevel_sequence())
            }
            other => other,
        }
        .map_err(|e| self.load_error(e))?;
        if let Node::Sequence(_) = node {
            let rules: Vec<Spanned<CiliumRule>> = self.read(&node, "")?;
            for (i, r) in rules.iter().enumerate() {
                self.cilium(r, r.span(), &format!("[{i}]"), None, None)?;
            }
            return Ok(());
        }
        let map = node.as_mapping().expect("a mapping at the top");
        let kind = map.get_scalar("kind").map(|k| (k.as_str().to_string(), *k.span()));
        match kind {
            None if map.get_node("apiVersion").is_none() => {
                let rule: Spanned<CiliumRule> = self.read(&node, "")?;
                self.cilium(&rule, rule.span(), "", None, None)
            }
            None => Err(self.error(map.span(), "kind", "an object needs a `kind`")),
            Some((kind, span)) => match kind.as_str() {
                "NetworkPolicy" => {
                    let np: NetworkPolicy = self.read(&node, "")?;
                    self.network_policy(&np, map.span())
                }
                "CiliumNetworkPolicy" | "CiliumClusterwideNetworkPolicy" => {
                    let o: CiliumObject = self.read(&node, "")?;
                    let namespace = (kind == "CiliumNetworkPolicy")
                        .then(|| o.metadata.namespace.clone().unwrap_or_else(|| DEFAULT_NAMESPACE.into()));
                    let name = o.metadata.name.clone();
                    match (&o.spec, &o.specs) {
                        (Some(spec), None) => self.cilium(spec, map.span(), "spec", namespace.as_deref(), name),
                        (None, Some(specs)) => {
                            for (i, spec) in specs.iter().enumerate() {
                                let name = name.as_ref().map(|n| format!("{n}[{i}]"));
                                self.cilium(spec, map.span(), &format!("specs[{i}]"), namespace.as_deref(), name)?;
                            }
                            Ok(())
                        }
                        _ => Err(self.error(map.span(), "spec", format!("a {kind} needs one of `spec` and `specs`"))),
                    }
                }
                other => Err(self.error(
                    &span,
                    "kind",
                    format!(
                        "`{other}` is not a policy: use NetworkPolicy, CiliumNetworkPolicy, \
                         CiliumClusterwideNetworkPolicy, or Cilium rules{}",
                        did_you_mean(other, ["NetworkPolicy", "CiliumNetworkPolicy", "CiliumClusterwideNetworkPolicy"])
                    ),
                )),
            },
        }
    }

    fn load_error(&self, e: LoadError) -> PolicyError {
        let message = e.to_string();
        // The loader's message starts with its own position.
        let message = message.split_once(": ").map_or(message.clone(), |(_, m)| m.to_string());
        let marker = match &e {
            LoadError::TopLevelMustBeMapping(m)
            | LoadError::TopLevelMustBeSequence(m)
            | LoadError::UnexpectedAnchor(m)
            | LoadError::MappingKeyMustBeScalar(m)
            | LoadError::UnexpectedTag(m)
            | LoadError::ScanError(m, _) => Some(*m),
            LoadError::DuplicateKey(d) => d.key.span().start().copied(),
        };
        self.error_at(marker.as_ref(), "", format!("not YAML or JSON: {message}"))
    }

    /// `node` as a `T`, with serde's complaint at its place.
    fn read<'n, T: Deserialize<'n>>(&self, node: &'n Node, prefix: &str) -> Result<T, PolicyError> {
        marked_yaml::from_node(node).map_err(|e| {
            let path = e.path().unwrap_or("").trim_start_matches('.').to_string();
            let field = join(prefix, &path);
            let marker = locate(node, &path).or(e.start_mark());
            let message = match &*e {
                marked_yaml::Error::UnknownFieldError(name, expected, _) => {
                    if UNSUPPORTED.contains(&name.as_str()) {
                        format!("`{name}` is not supported ({SUPPORTED})")
                    } else {
                        format!("unknown field `{name}`{}", did_you_mean(name, expected.iter().copied()))
                    }
                }
                other => other.to_string(),
            };
            self.error_at(marker.as_ref(), &field, message)
        })
    }

    /// A Cilium rule at `field` (`[0]`, `spec`, `specs[1]`, empty for a
    /// bare rule), scoped to `namespace` for a CiliumNetworkPolicy.
    fn cilium(
        &mut self,
        r: &CiliumRule,
        span: &Span,
        field: &str,
        namespace: Option<&str>,
        name: Option<String>,
    ) -> Result<(), PolicyError> {
        let Some(subject) = &r.endpoint_selector else {
            return Err(self.error(span, field, "a rule needs an `endpointSelector`"));
        };
        let subject = self.endpoints_of(subject, &join(field, "endpointSelector"), namespace, true)?;
        let name = name.or_else(|| r.labels.iter().find(|l| l.key == "name").and_then(|l| l.value.clone()));
        let mut allow: [Vec<PeerRule>; 2] = Default::default();
        let mut deny: [Vec<PeerRule>; 2] = Default::default();
        fn ingress(v: &[CiliumIngress]) -> Vec<Entry<'_>> {
            v.iter().map(|e| (&e.from_endpoints, &e.from_entities, &e.to_ports)).collect()
        }
        fn egress(v: &[CiliumEgress]) -> Vec<Entry<'_>> {
            v.iter().map(|e| (&e.to_endpoints, &e.to_entities, &e.to_ports)).collect()
        }
        let sections = [
            (Direction::Ingress, false, "ingress", ingress(&r.ingress)),
            (Direction::Ingress, true, "ingressDeny", ingress(&r.ingress_deny)),
            (Direction::Egress, false, "egress", egress(&r.egress)),
            (Direction::Egress, true, "egressDeny", egress(&r.egress_deny)),
        ];
        for (d, is_deny, key, entries) in sections {
            let keys = match d {
                Direction::Ingress => ("fromEndpoints", "fromEntities"),
                Direction::Egress => ("toEndpoints", "toEntities"),
            };
            for (i, (selectors, entities, to_ports)) in entries.into_iter().enumerate() {
                let at = join(field, &format!("{key}[{i}]"));
                let rule = self.cilium_entry((selectors, entities, keys.0, keys.1), to_ports, &at, namespace, span)?;
                let list = if is_deny { &mut deny } else { &mut allow };
                list[d as usize].push(rule);
            }
        }
        let switch = |d: Direction| {
            let on = match (&r.enable_default_deny, d) {
                (Some(x), Direction::Ingress) => x.ingress,
                (Some(x), Direction::Egress) => x.egress,
                (None, _) => None,
            };
            on.unwrap_or(true) && !(allow[d as usize].is_empty() && deny[d as usize].is_empty())
        };
        let default_deny = [switch(Direction::Ingress), switch(Direction::Egress)];
        let number = self.rules.len() + 1;
        self.rules.push(Rule { number, name, line: self.line(span), subject, default_deny, allow, deny });
        Ok(())
    }

    /// One entry of a Cilium rule's section: endpoints and entities are
    /// its peers; without either, a rule with ports is L4-only (anyone),
    /// one without matches nobody (`{}`: it only turns default deny on).
    fn cilium_entry(
        &self,
        (selectors, entities, sel_key, ent_key): (&Vec<Spanned<LabelSelector>>, &Vec<Spanned<String>>, &str, &str),
        to_ports: &[CiliumPortRule],
        at: &str,
        namespace: Option<&str>,
        span: &Span,
    ) -> Result<PeerRule, PolicyError> {
        let mut peers = Vec::new();
        for (i, s) in selectors.iter().enumerate() {
            peers.push(Peer::Endpoints(self.endpoints_of(s, &format!("{at}.{sel_key}[{i}]"), namespace, true)?));
        }
        for (i, e) in entities.iter().enumerate() {
            let Some((_, entity)) = Entity::NAMES.iter().find(|(n, _)| *n == e.as_str()) else {
                let names: Vec<&str> = Entity::NAMES.iter().map(|(n, _)| *n).collect();
                return Err(self.error(
                    e.span(),
                    &format!("{at}.{ent_key}[{i}]"),
                    format!("entity `{}`: use {}{}", e.as_str(), names.join(", "), did_you_mean(e, names.clone())),
                ));
            };
            peers.push(Peer::Entity(*entity));
        }
        let mut ports = Vec::new();
        let mut every_port = to_ports.is_empty();
        for (i, t) in to_ports.iter().enumerate() {
            every_port |= t.ports.is_empty();
            for (j, p) in t.ports.iter().enumerate() {
                ports.push(self.port(p, &format!("{at}.toPorts[{i}].ports[{j}]"), true, span)?);
            }
        }
        if selectors.is_empty() && entities.is_empty() && !to_ports.is_empty() {
            peers.push(Peer::Any);
        }
        let line = selectors.first().map(|s| self.line(s.span())).unwrap_or_else(|| self.line(span));
        Ok(PeerRule { peers, ports: (!every_port).then_some(ports), field: at.to_string(), line })
    }

    fn network_policy(&mut self, np: &NetworkPolicy, span: &Span) -> Result<(), PolicyError> {
        if np.api_version.as_str() != "networking.k8s.io/v1" {
            return Err(self.error(
                np.api_version.span(),
                "apiVersion",
                format!("`{}`: a NetworkPolicy is networking.k8s.io/v1", np.api_version.as_str()),
            ));
        }
        let ns = np.metadata.namespace.clone().unwrap_or_else(|| DEFAULT_NAMESPACE.into());
        let spec = &np.spec;
        let subject = self.endpoints_of(&spec.pod_selector, "spec.podSelector", Some(&ns), false)?;
        let mut types = [false, spec.egress.is_some()];
        types[0] = true;
        if let Some(list) = &spec.policy_types {
            types = [false, false];
            for (i, t) in list.iter().enumerate() {
                match t.as_str() {
                    "Ingress" => types[0] = true,
                    "Egress" => types[1] = true,
                    other => {
                        return Err(self.error(
                            t.span(),
                            &format!("spec.policyTypes[{i}]"),
                            format!("`{other}`: use Ingress or Egress{}", did_you_mean(other, ["Ingress", "Egress"])),
                        ))
                    }
                }
            }
        }
        let mut allow: [Vec<PeerRule>; 2] = Default::default();
        let ingress = spec.ingress.iter().flatten().map(|r| (&r.from, &r.ports));
        let egress = spec.egress.iter().flatten().map(|r| (&r.to, &r.ports));
        let sections: [(Direction, &str, &str, Vec<_>); 2] = [
            (Direction::Ingress, "ingress", "from", ingress.collect()),
            (Direction::Egress, "egress", "to", egress.collect()),
        ];
        for (d, key, peer_key, entries) in sections {
            for (i, (peers, ports)) in entries.into_iter().enumerate() {
                let at = format!("spec.{key}[{i}]");
                let mut list = Vec::new();
                for (j, p) in peers.iter().enumerate() {
                    list.push(self.network_policy_peer(p, &format!("{at}.{peer_key}[{j}]"), &ns)?);
                }
                if peers.is_empty() {
                    list.push(Peer::Any);
                }
                let mut ranges = Vec::new();
                for (j, p) in ports.iter().enumerate() {
                    ranges.push(self.port(p, &format!("{at}.ports[{j}]"), false, span)?);
                }
                let line = peers.first().map_or(self.line(span), |p| self.line(p.span()));
                let ports = (!ports.is_empty()).then_some(ranges);
                if types[d as usize] {
                    allow[d as usize].push(PeerRule { peers: list, ports, field: at, line });
                }
            }
        }
        let number = self.rules.len() + 1;
        self.rules.push(Rule {
            number,
            name: np.metadata.name.clone(),
            line: self.line(span),
            subject,
            default_deny: types,
            allow,
            deny: Default::default(),
        });
        Ok(())
    }

    fn network_policy_peer(&self, p: &Spanned<NetworkPolicyPeer>, at: &str, ns: &str) -> Result<Peer, PolicyError> {
        let namespaces = match &p.namespace_selector {
            Some(s) => {
                Namespaces::Matching(self.selector(s, &format!("{at}.namespaceSelector"), Universe::Namespaces)?)
            }
            None => Namespaces::Same(ns.to_string()),
        };
        let labels = match &p.pod_selector {
            Some(s) => self.selector(s, &format!("{at}.podSelector"), Universe::Endpoints)?,
            None if p.namespace_selector.is_some() => Selector::default(),
            None => return Err(self.error(p.span(), at, "a peer needs a podSelector or a namespaceSelector")),
        };
        Ok(Peer::Endpoints(EndpointSelector { namespaces, labels }))
    }

    /// An endpoint selector at `field`: Cilium's selects in `namespace`
    /// (a CiliumNetworkPolicy's) unless it names the namespace label itself.
    fn endpoints_of(
        &self,
        s: &Spanned<LabelSelector>,
        field: &str,
        namespace: Option<&str>,
        cilium: bool,
    ) -> Result<EndpointSelector, PolicyError> {
        let labels = self.selector(s, field, if cilium { Universe::Cilium } else { Universe::Endpoints })?;
        let namespaces = match namespace {
            Some(ns) if !labels.names(NAMESPACE_LABEL) => Namespaces::Same(ns.to_string()),
            _ => Namespaces::Any,
        };
        Ok(EndpointSelector { namespaces, labels })
    }

    /// A label selector, checked against the labels it can match.
    fn selector(&self, s: &Spanned<LabelSelector>, field: &str, universe: Universe) -> Result<Selector, PolicyError> {
        let known: Vec<Labels> = match universe {
            Universe::Namespaces => {
                let sets: BTreeSet<&Labels> = self.endpoints.iter().map(|e| &e.namespace_labels).collect();
                sets.into_iter().cloned().collect()
            }
            _ => self.endpoints.iter().map(|e| e.labels.clone()).collect(),
        };
        let what = if universe == Universe::Namespaces { "namespace" } else { "container" };
        let key = |k: &str, f: &str| -> Result<String, PolicyError> {
            match universe {
                Universe::Cilium => label_key(k).map(str::to_string).map_err(|m| self.error(s.span(), f, m)),
                _ => Ok(k.to_string()),
            }
        };
        let mut out = Selector::default();
        for (k, v) in &s.match_labels {
            let f = format!("{field}.matchLabels.{k}");
            let k = key(k, &f)?;
            if !known.iter().any(|l| l.get(&k) == Some(v)) {
                return Err(self.error(s.span(), &f, format!("`{k}={v}` is on no {what} of the lab")));
            }
            out.match_labels.insert(k, v.clone());
        }
        for (i, e) in s.match_expressions.iter().enumerate() {
            let f = format!("{field}.matchExpressions[{i}]");
            let k = key(&e.key, &format!("{f}.key"))?;
            let ops = [
                ("In", Operator::In),
                ("NotIn", Operator::NotIn),
                ("Exists", Operator::Exists),
                ("DoesNotExist", Operator::DoesNotExist),
            ];
            let Some((_, operator)) = ops.iter().find(|(n, _)| *n == e.operator.as_str()) else {
                let names = ops.map(|(n, _)| n);
                return Err(self.error(
                    e.operator.span(),
                    &format!("{f}.operator"),
                    format!(
                        "`{}`: use In, NotIn, Exists or DoesNotExist{}",
                        e.operator.as_str(),
                        did_you_mean(&e.operator, names)
                    ),
                ));
            };
            let has_values = matches!(operator, Operator::In | Operator::NotIn);
            if has_values == e.values.is_empty() {
                let m = if has_values { "needs values" } else { "takes no values" };
                return Err(self.error(
                    e.operator.span(),
                    &format!("{f}.values"),
                    format!("{} {m}", e.operator.as_str()),
                ));
            }
            if *operator == Operator::In && !known.iter().any(|l| l.get(&k).is_some_and(|v| e.values.contains(v))) {
                let shown: Vec<String> = e.values.iter().map(|v| format!("{k}={v}")).collect();
                return Err(self.error(
                    e.operator.span(),
                    &format!("{f}.values"),
                    format!("none of {} is on a {what} of the lab", shown.join(", ")),
                ));
            }
            out.match_expressions.push(Expression { key: k, operator: *operator, values: e.values.clone() });
        }
        Ok(out)
    }

    /// A port entry at `field`.
    fn port(&self, p: &PortSpec, field: &str, cilium: bool, span: &Span) -> Result<PortRange, PolicyError> {
        let protocol = match &p.protocol {
            None if cilium => ProtocolMatch::Any,
            None => ProtocolMatch::Tcp,
            Some(t) => {
                let names: &[(&str, ProtocolMatch)] = &[
                    ("TCP", ProtocolMatch::Tcp),
                    ("UDP", ProtocolMatch::Udp),
                    ("SCTP", ProtocolMatch::Sctp),
                    ("ANY", ProtocolMatch::Any),
                ];
                let names = if cilium { names } else { &names[..3] };
                let typed = if cilium { t.to_ascii_uppercase() } else { t.to_string() };
                match names.iter().find(|(n, _)| *n == typed) {
                    Some((_, m)) => *m,
                    None => {
                        let list: Vec<&str> = names.iter().map(|(n, _)| *n).collect();
                        return Err(self.error(
                            t.span(),
                            &format!("{field}.protocol"),
                            format!("`{}`: use {}", t.as_str(), list.join(", ")),
                        ));
                    }
                }
            }
        };
        let number = |s: &Spanned<String>, key: &str| -> Result<u16, PolicyError> {
            match s.parse::<i64>() {
                Ok(n) if (1..=65535).contains(&n) => Ok(n as u16),
                Ok(n) => Err(self.error(s.span(), &format!("{field}.{key}"), format!("{n}: use 1 to 65535"))),
                Err(_) => Err(self.error(
                    s.span(),
                    &format!("{field}.{key}"),
                    format!("`{}`: named ports are not supported, give a number", s.as_str()),
                )),
            }
        };
        let Some(port) = &p.port else {
            if cilium {
                return Err(self.error(span, field, "a port entry needs a `port`"));
            }
            if let Some(end) = &p.end_port {
                return Err(self.error(end.span(), &format!("{field}.endPort"), "endPort needs a port"));
            }
            return Ok(PortRange::all(protocol));
        };
        let first = number(port, "port")?;
        let last = match &p.end_port {
            None => first,
            Some(e) => {
                let last = number(e, "endPort")?;
                if last < first {
                    return Err(self.error(
                        e.span(),
                        &format!("{field}.endPort"),
                        format!("{last} is below the port ({first})"),
                    ));
                }
                last
            }
        };
        Ok(PortRange { protocol, first, last })
    }
}

/// Where the field at `path` (`[0].ingress[0].fromCIDR`) is in `node`: its
/// key's place for a mapping's field; `None` when the path leaves the tree
/// (serde names fields that are missing too).
fn locate(node: &Node, path: &str) -> Option<Marker> {
    let mut node = node;
    let mut at = node.span().start().copied();
    let mut rest = path;
    while !rest.is_empty() {
        rest = rest.trim_start_matches('.');
        if let Some(r) = rest.strip_prefix('[') {
            let (index, r) = r.split_once(']')?;
            node = node.as_sequence()?.get(index.parse::<usize>().ok()?)?;
            at = node.span().start().copied();
            rest = r;
        } else {
            let end = rest.find(['.', '[']).unwrap_or(rest.len());
            let (key, r) = rest.split_at(end);
            let map = node.as_mapping()?;
            let (k, v) = map.iter().find(|(k, _)| k.as_str() == key)?;
            at = k.span().start().copied();
            node = v;
            rest = r;
        }
    }
    at
}

/// What a selector's labels are checked against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Universe {
    /// Containers, with Cilium's label sources.
    Cilium,
    /// Containers (Kubernetes' podSelector).
    Endpoints,
    /// Namespaces (their name label).
    Namespaces,
}

/// A section entry of a Cilium rule: its endpoint selectors, entities and
/// port rules.
type Entry<'r> = (&'r Vec<Spanned<LabelSelector>>, &'r Vec<Spanned<String>>, &'r Vec<CiliumPortRule>);

/// `a.b`, or either alone.
fn join(a: &str, b: &str) -> String {
    match (a.is_empty(), b.is_empty()) {
        (true, _) => b.to_string(),
        (_, true) => a.to_string(),
        _ if b.starts_with('[') => format!("{a}{b}"),
        _ => format!("{a}.{b}"),
    }
}
