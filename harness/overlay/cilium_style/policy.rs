//! The policy input of the `cilium-style` overlay: Cilium's own policy
//! language, read with serde, and compiled into the entries of a policy map
//! keyed as Cilium's (`struct policy_key` in Cilium's `bpf/lib/policy.h`:
//! remote security identity, direction, protocol, destination port).
//!
//! A policy file is what `cilium policy import` reads (a JSON array of rules,
//! or one rule) or a `CiliumNetworkPolicy` object in JSON (`spec` or
//! `specs`). Of a rule, vlab enforces `endpointSelector.matchLabels` and
//! `ingress[]` with `fromEndpoints[].matchLabels` and
//! `toPorts[].ports[] {port, protocol}`; everything else the language has
//! (egress, deny rules, CIDRs, entities, match expressions, L7 rules, port
//! ranges, named ports) is refused with the field that asks for it, never
//! ignored.
//!
//! Identities: each distinct label set of the lab's containers is one
//! security identity, numbered from 256 (below it Cilium reserves its own:
//! host, world, ...) in the sorted order of the label sets, so that a lab
//! gives the same numbers on every run; all stay below 2^24 (the VNI's width,
//! which carries them).

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

/// A container's labels: `id=service1`, as the lab file gives them.
pub type Labels = BTreeMap<String, String>;

/// The first identity vlab gives out (Cilium reserves those below).
pub const FIRST_IDENTITY: u32 = 256;

/// The wildcard identity of an L4-only entry (any sender).
pub const ANY_IDENTITY: u32 = 0;

/// One rule of Cilium's policy language, the parts vlab enforces.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Rule {
    /// The endpoints the rule applies to.
    pub endpoint_selector: Selector,
    /// Who may send them what.
    #[serde(default)]
    pub ingress: Vec<IngressRule>,
    /// Labels of the rule itself (metadata; they select nothing).
    #[serde(default)]
    pub labels: Vec<serde_json::Value>,
    #[serde(default)]
    pub description: Option<String>,
}

/// An endpoint selector: every label it names must be on the endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Selector {
    #[serde(default)]
    pub match_labels: Labels,
}

/// One ingress rule: from these endpoints (any, without `fromEndpoints`), to
/// these ports (all, without `toPorts`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IngressRule {
    #[serde(default)]
    pub from_endpoints: Vec<Selector>,
    #[serde(default)]
    pub to_ports: Vec<PortRule>,
}

/// A `toPorts` entry: its ports (L7 `rules` are not supported).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PortRule {
    pub ports: Vec<PortProtocol>,
}

/// A port and protocol, as Cilium writes them: `{"port": "5201",
/// "protocol": "TCP"}` (a number is accepted for the port too).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PortProtocol {
    pub port: PortText,
    #[serde(default = "any_protocol")]
    pub protocol: String,
}

/// A port as a string or a number.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum PortText {
    Text(String),
    Number(i64),
}

fn any_protocol() -> String {
    "ANY".into()
}

/// An IP protocol of the policy map (`0`: any).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Any,
    Tcp,
    Udp,
}

impl Protocol {
    /// Its IP protocol number in the map (`0` for any).
    pub fn number(self) -> u8 {
        match self {
            Protocol::Any => 0,
            Protocol::Tcp => 6,
            Protocol::Udp => 17,
        }
    }
}

/// One entry of the policy map: `endpoint` (the identity the rule selected)
/// may receive from `remote` (0: anyone) over `protocol` on `port` (0: any).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Entry {
    pub endpoint: u32,
    pub remote: u32,
    pub protocol: Protocol,
    pub port: u16,
}

/// A policy compiled for the lab's containers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Compiled {
    /// Each container and its identity.
    pub identities: BTreeMap<String, u32>,
    /// The identities a rule selected: ingress to them is denied unless an
    /// entry allows it (the others allow everything, as Cilium's endpoints
    /// without a policy do).
    pub enforced: BTreeSet<u32>,
    /// The allow entries, sorted.
    pub entries: Vec<Entry>,
}

/// What is wrong with a policy file: where (`[0].ingress[0].toPorts`, empty
/// for the whole document) and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}{message}", if field.is_empty() { String::new() } else { format!("field `{field}`: ") })]
pub struct PolicyError {
    pub field: String,
    pub message: String,
}

fn error(field: impl Into<String>, message: impl Into<String>) -> PolicyError {
    PolicyError { field: field.into(), message: message.into() }
}

/// Fields of Cilium's language that vlab does not enforce, and where: a
/// document asking for one is refused with this name rather than serde's
/// "unknown field".
const UNSUPPORTED: &[&str] = &[
    "egress",
    "egressDeny",
    "ingressDeny",
    "fromCIDR",
    "fromCIDRSet",
    "fromEntities",
    "fromRequires",
    "fromGroups",
    "fromNodes",
    "fromServices",
    "icmps",
    "matchExpressions",
    "nodeSelector",
    "rules",
    "endPort",
    "serverNames",
    "listener",
    "originatingTLS",
    "terminatingTLS",
    "authentication",
];

/// A policy file's rules, and where in the file each one is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub rules: Vec<Rule>,
    /// The field that holds the rules: empty for an array or a bare rule,
    /// `spec` or `specs` in a CiliumNetworkPolicy.
    holder: String,
    /// Whether that is one rule, not an array.
    single: bool,
}

impl Policy {
    /// The field of rule `i`, as errors name it (`[1]`, `spec`, `specs[1]`;
    /// empty for a bare rule).
    fn field(&self, i: usize) -> String {
        match (self.holder.as_str(), self.single) {
            (h, true) => h.to_string(),
            (h, false) => format!("{h}[{i}]"),
        }
    }

    /// `field` inside rule `i`.
    fn inside(&self, i: usize, field: &str) -> String {
        match self.field(i) {
            f if f.is_empty() => field.to_string(),
            f => format!("{f}.{field}"),
        }
    }
}

/// Reads a policy file's text: a rule, an array of rules, or a
/// `CiliumNetworkPolicy` object (its `spec` or `specs`).
pub fn parse(text: &str) -> Result<Policy, PolicyError> {
    let doc: serde_json::Value = serde_json::from_str(text).map_err(|e| error("", format!("not JSON: {e}")))?;
    let (rules, prefix) = match &doc {
        serde_json::Value::Array(_) => (doc.clone(), String::new()),
        serde_json::Value::Object(o) if o.contains_key("kind") || o.contains_key("apiVersion") => {
            let kind = o.get("kind").and_then(|k| k.as_str()).unwrap_or("");
            if kind != "CiliumNetworkPolicy" {
                return Err(error("kind", format!("`{kind}`: expected a CiliumNetworkPolicy")));
            }
            match (o.get("spec"), o.get("specs")) {
                (Some(spec), None) => (serde_json::Value::Array(vec![spec.clone()]), "spec".to_string()),
                (None, Some(specs)) => (specs.clone(), "specs".to_string()),
                _ => return Err(error("spec", "a CiliumNetworkPolicy needs one of `spec` and `specs`")),
            }
        }
        serde_json::Value::Object(_) => (serde_json::Value::Array(vec![doc.clone()]), String::new()),
        _ => return Err(error("", "expected a rule, an array of rules or a CiliumNetworkPolicy")),
    };
    let single = prefix == "spec" || (prefix.is_empty() && !doc.is_array());
    let rules: Vec<Rule> = serde_path_to_error::deserialize(rules).map_err(|e| {
        let mut path = e.path().to_string();
        // A single rule (`spec`, or a bare object) is no array to its author.
        if single {
            path = path.strip_prefix("[0]").unwrap_or(&path).trim_start_matches('.').to_string();
        }
        let field = match (prefix.as_str(), path.as_str()) {
            (p, "") | (p, ".") => p.to_string(),
            ("", path) => path.to_string(),
            (p, path) if path.starts_with('[') => format!("{p}{path}"),
            (p, path) => format!("{p}.{path}"),
        };
        let inner = e.into_inner().to_string();
        match UNSUPPORTED.iter().find(|u| inner.starts_with(&format!("unknown field `{u}`"))) {
            Some(u) => error(
                field,
                format!("`{u}` is not supported by the cilium-style overlay (it enforces matchLabels selectors and L4 ports of ingress rules)"),
            ),
            None => error(field, inner),
        }
    })?;
    Ok(Policy { rules, holder: prefix, single })
}

/// A label key as the lab writes it: Cilium's `any:` and `k8s:` sources
/// select the same labels; other sources (`reserved:`, `cidr:`) are not
/// supported.
pub fn label_key(key: &str) -> Result<&str, String> {
    match key.split_once(':') {
        None => Ok(key),
        Some(("any" | "k8s", k)) => Ok(k),
        Some((source, _)) => {
            Err(format!("label source `{source}:` is not supported (use plain, `any:` or `k8s:` labels)"))
        }
    }
}

/// The containers (by name) whose labels hold every label of `selector`.
fn selected<'a>(
    selector: &Selector,
    containers: &'a [(String, Labels)],
    field: &str,
) -> Result<Vec<&'a str>, PolicyError> {
    let mut wanted = Vec::new();
    for (k, v) in &selector.match_labels {
        let key = label_key(k).map_err(|m| error(format!("{field}.matchLabels.{k}"), m))?;
        wanted.push((key, v));
    }
    if wanted.is_empty() {
        return Err(error(field, "an empty selector selects every endpoint: name at least one label"));
    }
    let hits: Vec<&str> = containers
        .iter()
        .filter(|(_, labels)| wanted.iter().all(|(k, v)| labels.get(*k) == Some(*v)))
        .map(|(name, _)| name.as_str())
        .collect();
    if hits.is_empty() {
        let shown: Vec<String> = wanted.iter().map(|(k, v)| format!("{k}={v}")).collect();
        return Err(error(
            format!("{field}.matchLabels"),
            format!("{} matches no container of the lab", shown.join(",")),
        ));
    }
    Ok(hits)
}

/// The identity of each container: one per distinct label set, from
/// [`FIRST_IDENTITY`] in the label sets' sorted order.
pub fn identities(containers: &[(String, Labels)]) -> BTreeMap<String, u32> {
    let sets: BTreeSet<&Labels> = containers.iter().map(|(_, l)| l).collect();
    let number = |l: &Labels| FIRST_IDENTITY + sets.iter().position(|s| *s == l).expect("a set of them") as u32;
    containers.iter().map(|(name, labels)| (name.clone(), number(labels))).collect()
}

/// Compiles a policy for `containers` (name, labels): each selector must
/// select at least one container, each port be 1-65535 with protocol TCP,
/// UDP or ANY (TCP and UDP).
pub fn compile(policy: &Policy, containers: &[(String, Labels)]) -> Result<Compiled, PolicyError> {
    let ids = identities(containers);
    let id = |name: &str| ids[name];
    let mut enforced = BTreeSet::new();
    let mut entries = BTreeSet::new();
    for (i, rule) in policy.rules.iter().enumerate() {
        let endpoints = selected(&rule.endpoint_selector, containers, &policy.inside(i, "endpointSelector"))?;
        let endpoints: BTreeSet<u32> = endpoints.iter().map(|n| id(n)).collect();
        enforced.extend(endpoints.iter().copied());
        for (j, ingress) in rule.ingress.iter().enumerate() {
            let at = policy.inside(i, &format!("ingress[{j}]"));
            let mut remotes = BTreeSet::new();
            for (k, from) in ingress.from_endpoints.iter().enumerate() {
                for n in selected(from, containers, &format!("{at}.fromEndpoints[{k}]"))? {
                    remotes.insert(id(n));
                }
            }
            if ingress.from_endpoints.is_empty() {
                remotes.insert(ANY_IDENTITY);
            }
            let mut ports = BTreeSet::new();
            for (k, to) in ingress.to_ports.iter().enumerate() {
                for (l, p) in to.ports.iter().enumerate() {
                    let field = format!("{at}.toPorts[{k}].ports[{l}]");
                    ports.extend(port_protocols(p, &field)?);
                }
            }
            if ingress.to_ports.is_empty() {
                ports.insert((Protocol::Any, 0));
            }
            for &endpoint in &endpoints {
                for &remote in &remotes {
                    for &(protocol, port) in &ports {
                        entries.insert(Entry { endpoint, remote, protocol, port });
                    }
                }
            }
        }
    }
    Ok(Compiled { identities: ids, enforced, entries: entries.into_iter().collect() })
}

/// One `ports[]` entry as (protocol, port) pairs of the map.
fn port_protocols(p: &PortProtocol, field: &str) -> Result<Vec<(Protocol, u16)>, PolicyError> {
    let port = match &p.port {
        PortText::Number(n) => Some(*n),
        PortText::Text(t) => t.parse::<i64>().ok(),
    };
    let port = match port {
        Some(n) if (1..=65535).contains(&n) => n as u16,
        Some(n) => return Err(error(format!("{field}.port"), format!("port {n}: use 1 to 65535"))),
        None => {
            return Err(error(
                format!("{field}.port"),
                "named ports are not supported by the cilium-style overlay: give a number",
            ))
        }
    };
    let protocols = match p.protocol.to_ascii_uppercase().as_str() {
        "TCP" => vec![Protocol::Tcp],
        "UDP" => vec![Protocol::Udp],
        "ANY" => vec![Protocol::Tcp, Protocol::Udp],
        other => {
            return Err(error(format!("{field}.protocol"), format!("`{other}`: use TCP, UDP or ANY")));
        }
    };
    Ok(protocols.into_iter().map(|proto| (proto, port)).collect())
}

/// Whether the compiled policy lets `remote` reach `endpoint` over
/// `protocol` on `port`, looked up as Cilium's datapath does: the exact
/// entry, then the L4-only wildcard (any sender), then the L3-only entry
/// (any port), then allow-all; an endpoint no rule selected allows all.
pub fn allows(c: &Compiled, endpoint: u32, remote: u32, protocol: Protocol, port: u16) -> bool {
    if !c.enforced.contains(&endpoint) {
        return true;
    }
    [
        (remote, protocol, port),
        (ANY_IDENTITY, protocol, port),
        (remote, Protocol::Any, 0),
        (ANY_IDENTITY, Protocol::Any, 0),
    ]
    .iter()
    .any(|&(remote, protocol, port)| c.entries.contains(&Entry { endpoint, remote, protocol, port }))
}
