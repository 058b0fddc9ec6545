//! The policy of the `cilium-style` overlay compiled into the entries of a
//! policy map keyed as Cilium's (`struct policy_key` in Cilium's
//! `bpf/lib/policy.h`: remote security identity, direction, protocol,
//! destination port).
//!
//! The policy is read into vlab's policy model ([`crate::policy`]: Cilium's
//! language or Kubernetes NetworkPolicy); the compiler turns its ingress
//! allow entries into map entries for the lab's identities (selectors and
//! expressions resolved to the containers they match, port ranges expanded)
//! and refuses, at the rule's line, what the datapath does not enforce
//! (egress, deny rules, SCTP), never ignoring it. The evaluator of
//! [`crate::policy`] judges the datapath independently of this compiler.
//!
//! Identities: each distinct label set of the lab's containers is one
//! security identity, numbered from 256 (below it Cilium reserves its own:
//! host, world, ...) in the sorted order of the label sets, so that a lab
//! gives the same numbers on every run; all stay below 2^24 (the VNI's width,
//! which carries them).

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use crate::policy::parse::PolicyError;
pub use crate::policy::Labels;
use crate::policy::{Direction, Endpoint, Entity, Peer, Policy, ProtocolMatch};

/// The first identity vlab gives out (Cilium reserves those below).
pub const FIRST_IDENTITY: u32 = 256;

/// The wildcard identity of an L4-only entry (any sender).
pub const ANY_IDENTITY: u32 = 0;

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

/// What the datapath cannot enforce of a policy, at its place in the file.
fn refuse(line: usize, field: &str, message: impl Into<String>) -> PolicyError {
    PolicyError { line, column: 1, field: field.to_string(), message: message.into() }
}

/// The most entries a compiled policy may have (the policy map's size).
pub const MAX_ENTRIES: usize = 1024;

/// The identity of each container: one per distinct label set, from
/// [`FIRST_IDENTITY`] in the label sets' sorted order.
pub fn identities(containers: &[(String, Labels)]) -> BTreeMap<String, u32> {
    let sets: BTreeSet<&Labels> = containers.iter().map(|(_, l)| l).collect();
    let number = |l: &Labels| FIRST_IDENTITY + sets.iter().position(|s| *s == l).expect("a set of them") as u32;
    containers.iter().map(|(name, labels)| (name.clone(), number(labels))).collect()
}

/// The containers of the lab as the policy model sees them.
pub fn endpoints(containers: &[(String, Labels)]) -> Vec<Endpoint> {
    containers.iter().map(|(name, labels)| Endpoint::new(name, labels)).collect()
}

/// Compiles a policy (read by [`crate::policy::parse`]) for `containers`
/// (name, labels) into map entries: the datapath enforces ingress allow
/// rules with endpoint, `all`/`cluster` and L4-only peers, ports and port
/// ranges of TCP and UDP; egress, deny rules and SCTP are refused at their
/// rule's line.
pub fn compile(policy: &Policy, containers: &[(String, Labels)]) -> Result<Compiled, PolicyError> {
    let ids = identities(containers);
    let eps = endpoints(containers);
    let id_of = |e: &Endpoint| ids[&e.name];
    let mut enforced = BTreeSet::new();
    let mut entries = BTreeSet::new();
    for rule in &policy.rules {
        let egress = Direction::Egress as usize;
        if let Some(e) = rule.allow[egress].iter().chain(&rule.deny[egress]).next() {
            return Err(refuse(e.line, &e.field, "egress is not enforced by the cilium-style datapath (ingress only)"));
        }
        if let Some(e) = rule.deny[Direction::Ingress as usize].first() {
            return Err(refuse(e.line, &e.field, "deny rules are not enforced by the cilium-style datapath"));
        }
        let selected: BTreeSet<u32> = eps.iter().filter(|e| rule.subject.matches(e)).map(id_of).collect();
        if rule.default_deny[Direction::Ingress as usize] {
            enforced.extend(selected.iter().copied());
        }
        for entry in &rule.allow[Direction::Ingress as usize] {
            let mut remotes = BTreeSet::new();
            for peer in &entry.peers {
                match peer {
                    Peer::Any | Peer::Entity(Entity::All | Entity::Cluster) => {
                        remotes.insert(ANY_IDENTITY);
                    }
                    Peer::Entity(_) => {}
                    Peer::Endpoints(s) => remotes.extend(eps.iter().filter(|e| s.matches(e)).map(id_of)),
                }
            }
            let mut ports = BTreeSet::new();
            match &entry.ports {
                None => {
                    ports.insert((Protocol::Any, 0));
                }
                Some(ranges) => {
                    for r in ranges {
                        let protocols = match r.protocol {
                            ProtocolMatch::Tcp => vec![Protocol::Tcp],
                            ProtocolMatch::Udp => vec![Protocol::Udp],
                            ProtocolMatch::Any => vec![Protocol::Tcp, Protocol::Udp],
                            ProtocolMatch::Sctp => {
                                return Err(refuse(
                                    entry.line,
                                    &entry.field,
                                    "SCTP is not enforced by the cilium-style datapath",
                                ))
                            }
                        };
                        if usize::from(r.last - r.first) >= MAX_ENTRIES {
                            return Err(refuse(
                                entry.line,
                                &entry.field,
                                format!("ports {}-{}: the policy map holds {MAX_ENTRIES} entries", r.first, r.last),
                            ));
                        }
                        for p in protocols {
                            ports.extend((r.first..=r.last).map(|port| (p, port)));
                        }
                    }
                }
            }
            for &endpoint in &selected {
                for &remote in &remotes {
                    for &(protocol, port) in &ports {
                        entries.insert(Entry { endpoint, remote, protocol, port });
                    }
                }
            }
            if entries.len() > MAX_ENTRIES {
                return Err(refuse(
                    entry.line,
                    &entry.field,
                    format!("the policy needs more than the policy map's {MAX_ENTRIES} entries"),
                ));
            }
        }
    }
    Ok(Compiled { identities: ids, enforced, entries: entries.into_iter().collect() })
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
