//! The policy of the `cilium-style` overlay compiled into the entries of a
//! policy map keyed as Cilium's (`struct policy_key` in Cilium's
//! `bpf/lib/policy.h`: remote security identity, direction, protocol,
//! destination port).
//!
//! The policy is read into vlab's policy model ([`crate::policy`]: Cilium's
//! language or Kubernetes NetworkPolicy); the compiler turns its ingress
//! allow and deny entries, ingress and egress, into map entries for the
//! lab's identities (selectors and expressions resolved to the containers
//! they match, port ranges expanded) and refuses, at the rule's line, what
//! the datapath does not enforce (SCTP, more entries than its maps hold),
//! never ignoring it. The evaluator of
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
use crate::policy::{Direction, Endpoint, Entity, Peer, PeerRule, Policy, ProtocolMatch};

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

/// One entry of the policy (or deny) map: `endpoint` (the identity the rule
/// selected) may receive from (ingress) or send to (egress) `remote` (0:
/// anyone) over `protocol` on destination port `port` (0: any).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Entry {
    pub endpoint: u32,
    pub remote: u32,
    pub protocol: Protocol,
    pub port: u16,
    #[serde(skip_serializing_if = "is_ingress")]
    pub direction: Direction,
}

fn is_ingress(d: &Direction) -> bool {
    *d == Direction::Ingress
}

/// A policy compiled for the lab's containers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Compiled {
    /// Each container and its identity.
    pub identities: BTreeMap<String, u32>,
    /// The identities a rule selected for ingress: ingress to them is denied
    /// unless an entry allows it (the others allow everything, as Cilium's
    /// endpoints without a policy do).
    pub enforced: BTreeSet<u32>,
    /// Likewise for egress.
    #[serde(skip_serializing_if = "BTreeSet::is_empty")]
    pub enforced_egress: BTreeSet<u32>,
    /// The allow entries, sorted.
    pub entries: Vec<Entry>,
    /// The deny entries, sorted: a match drops whatever allows it.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub deny: Vec<Entry>,
}

impl Compiled {
    /// Each enforced identity with its directions, as the enforced map
    /// holds them (`maps::ENFORCE_*`).
    pub fn enforced_flags(&self) -> BTreeMap<u32, u32> {
        let mut out = BTreeMap::new();
        for id in &self.enforced {
            *out.entry(*id).or_insert(0) |= super::maps::ENFORCE_INGRESS;
        }
        for id in &self.enforced_egress {
            *out.entry(*id).or_insert(0) |= super::maps::ENFORCE_EGRESS;
        }
        out
    }
}

/// What the datapath cannot enforce of a policy, at its place in the file.
fn refuse(line: usize, field: &str, message: impl Into<String>) -> PolicyError {
    PolicyError { line, column: 1, field: field.to_string(), message: message.into() }
}

/// The most entries a compiled policy may have in the eBPF datapath (the
/// size of the allow and deny maps, `vlab_policy` and `vlab_policy_deny`
/// in bpf/cilium_style.c).
pub const MAX_ENTRIES: usize = 16384;

/// The identity of each container: one per distinct label set, from
/// [`FIRST_IDENTITY`] in the label sets' sorted order.
pub fn identities(containers: &[(String, Labels)]) -> BTreeMap<String, u32> {
    let sets: BTreeSet<&Labels> = containers.iter().map(|(_, l)| l).collect();
    let number = |l: &Labels| FIRST_IDENTITY + sets.iter().position(|s| *s == l).expect("a set of them") as u32;
    containers.iter().map(|(name, labels)| (name.clone(), number(labels))).collect()
}

/// The containers of the lab as the policy model sees them, with their
/// namespaces' labels (`namespaces`, by namespace name).
pub fn endpoints(containers: &[(String, Labels)], namespaces: &BTreeMap<String, Labels>) -> Vec<Endpoint> {
    containers.iter().map(|(name, labels)| Endpoint::new(name, labels).in_namespaces(namespaces)).collect()
}

/// Compiles a policy (read by [`crate::policy::parse`]) for `containers`
/// (name, labels; their namespaces labelled by `namespaces`) into map entries, both directions: allow and deny entries
/// with endpoint, `all`/`cluster` and L4-only peers, ports and port ranges
/// of TCP and UDP (ranges expanded); SCTP and a policy larger than the maps
/// are refused at the rule's line.
pub fn compile(
    policy: &Policy,
    containers: &[(String, Labels)],
    namespaces: &BTreeMap<String, Labels>,
) -> Result<Compiled, PolicyError> {
    compile_within(policy, containers, namespaces, MAX_ENTRIES)
}

/// [`compile`] for a method that holds at most `limit` entries of each
/// kind (allow, deny).
pub fn compile_within(
    policy: &Policy,
    containers: &[(String, Labels)],
    namespaces: &BTreeMap<String, Labels>,
    limit: usize,
) -> Result<Compiled, PolicyError> {
    let ids = identities(containers);
    let eps = endpoints(containers, namespaces);
    let id_of = |e: &Endpoint| ids[&e.name];
    let mut enforced = [BTreeSet::new(), BTreeSet::new()];
    let (mut allow, mut deny) = (BTreeSet::new(), BTreeSet::new());
    for rule in &policy.rules {
        let selected: BTreeSet<u32> = eps.iter().filter(|e| rule.subject.matches(e)).map(id_of).collect();
        for direction in Direction::BOTH {
            let d = direction as usize;
            if rule.default_deny[d] {
                enforced[d].extend(selected.iter().copied());
            }
            for (entries, out) in [(&rule.allow[d], &mut allow), (&rule.deny[d], &mut deny)] {
                for entry in entries {
                    for e in entries_of(entry, direction, &selected, &eps, &ids, limit)? {
                        out.insert(e);
                    }
                    if out.len() > limit {
                        return Err(refuse(
                            entry.line,
                            &entry.field,
                            format!("the policy needs more than the method's {limit} entries"),
                        ));
                    }
                }
            }
        }
    }
    let [ingress, egress] = enforced;
    Ok(Compiled {
        identities: ids,
        enforced: ingress,
        enforced_egress: egress,
        entries: allow.into_iter().collect(),
        deny: deny.into_iter().collect(),
    })
}

/// The map entries of one allow or deny entry of a rule, for the
/// identities it selected.
fn entries_of(
    entry: &PeerRule,
    direction: Direction,
    selected: &BTreeSet<u32>,
    eps: &[Endpoint],
    ids: &BTreeMap<String, u32>,
    limit: usize,
) -> Result<Vec<Entry>, PolicyError> {
    let mut remotes = BTreeSet::new();
    for peer in &entry.peers {
        match peer {
            Peer::Any | Peer::Entity(Entity::All | Entity::Cluster) => {
                remotes.insert(ANY_IDENTITY);
            }
            Peer::Entity(_) => {}
            Peer::Endpoints(s) => remotes.extend(eps.iter().filter(|e| s.matches(e)).map(|e| ids[&e.name])),
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
                            "SCTP is not enforced: l4-policy, iptables and nftables enforce TCP and UDP",
                        ))
                    }
                };
                if usize::from(r.last - r.first) >= limit {
                    return Err(refuse(
                        entry.line,
                        &entry.field,
                        format!("ports {}-{}: the method holds {limit} entries", r.first, r.last),
                    ));
                }
                for p in protocols {
                    ports.extend((r.first..=r.last).map(|port| (p, port)));
                }
            }
        }
    }
    let mut out = Vec::new();
    for &endpoint in selected {
        for &remote in &remotes {
            for &(protocol, port) in &ports {
                out.push(Entry { endpoint, remote, protocol, port, direction });
            }
        }
    }
    Ok(out)
}

/// Whether the compiled policy lets `remote` reach `endpoint` (ingress)
/// over `protocol` on `port`, looked up as the datapath does: a deny entry
/// drops (exact, L4-only, L3-only, all); an endpoint no rule selected
/// allows all; else an allow entry in the same order.
pub fn allows(c: &Compiled, endpoint: u32, remote: u32, protocol: Protocol, port: u16) -> bool {
    let keys = [
        (remote, protocol, port),
        (ANY_IDENTITY, protocol, port),
        (remote, Protocol::Any, 0),
        (ANY_IDENTITY, Protocol::Any, 0),
    ];
    let hit = |entries: &[Entry]| {
        keys.iter().any(|&(remote, protocol, port)| {
            entries.contains(&Entry { endpoint, remote, protocol, port, direction: Direction::Ingress })
        })
    };
    !hit(&c.deny) && (!c.enforced.contains(&endpoint) || hit(&c.entries))
}
