//! The `l4-policy` filter: an identity-aware L4 policy (ingress and
//! egress, allow and deny), written in Cilium's policy language or as
//! Kubernetes NetworkPolicy, and enforced by the `cilium-style` overlay's BPF
//! programs (the only place it can act).
//!
//! The policy file (`[l4_policy] policy`, relative to the lab file; the
//! study's rule by default: `id=service1` may receive TCP 5201 from
//! `id=app1`) is read into the policy model ([`crate::policy`]) and compiled
//! for the lab's containers (see `overlay::cilium_style::policy`) into allow
//! and deny entries and the identities that have a policy, by direction;
//! deploying fills the maps on every VM, removing empties them.
//! Evidence: each entry's counter, the denied map (what the policy dropped,
//! by the key it missed) and the programs' metrics, before and after each
//! case; and the probe matrix ([`super::probes`]), judged cell by cell
//! against the evaluator, never against the compiled entries.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::policy_file::{self, LabPolicy, Source};
use super::{probes, Filter, MatrixRead};
use crate::lab::{CaseParams, Lab, LabError, LabKeys, Vm};
use crate::overlay::cilium_style::maps::{self, Counter};
use crate::overlay::cilium_style::policy::{Compiled, Entry, Protocol};
use crate::overlay::cilium_style::{self as cilium, artifact};
use crate::overlay::{
    side_by_side, CaseEvidence, EnforcementPoint, Probe, ProbeCell, ProbeMatrix, ProbeOutcome, Step, Variant, Verdict,
};
use crate::policy::{Connection, Decision, Direction, Protocol as PolicyProtocol};
use crate::report::Check;

/// The study's policy: the service's endpoints accept TCP 5201 from the
/// client's identity, and nothing else.
pub const STUDY_POLICY: &str = r#"[{
    "labels": [{"key": "name", "value": "l4-rule"}],
    "endpointSelector": {"matchLabels": {"id": "service1"}},
    "ingress": [{
        "fromEndpoints": [{"matchLabels": {"id": "app1"}}],
        "toPorts": [{"ports": [{"port": "5201", "protocol": "TCP"}]}]
    }]
}]"#;

/// The `[l4_policy]` table.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    /// A policy file (see [`crate::policy::parse`]), relative to the lab
    /// file.
    #[allow(dead_code)]
    policy: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
struct Section {
    #[serde(default)]
    #[allow(dead_code)]
    l4_policy: Option<Settings>,
}

/// Where its policy comes from: `[l4_policy] policy`, the policy axis, or
/// the study's.
pub const SOURCE: Source = Source {
    table: "l4_policy",
    default: Some((STUDY_POLICY, "the study's policy")),
    limit: crate::overlay::cilium_style::policy::MAX_ENTRIES,
};

/// The `l4-policy` filter.
pub struct L4Policy;

/// The lab's policy (the one named `name` on the policy axis) read and
/// compiled for its containers; errors name the policy file, line and field.
pub fn read(lab: &Lab, name: Option<&str>) -> Result<LabPolicy, String> {
    SOURCE.read(lab, name)
}

/// The lab's policy compiled for its containers.
pub fn compiled(lab: &Lab) -> Result<Compiled, String> {
    read(lab, None).map(|p| p.compiled)
}

impl Variant for L4Policy {
    fn name(&self) -> &'static str {
        "l4-policy"
    }

    fn lab_keys(&self) -> LabKeys {
        LabKeys { tables: &["l4_policy", "probes", "endpoints"], matrix: &["policy", "rules"], ..LabKeys::default() }
    }

    fn inputs(&self, lab: &Lab) -> Vec<PathBuf> {
        SOURCE.inputs(lab)
    }

    fn axes(&self, lab: &Lab) -> Result<Vec<(String, Vec<String>)>, LabError> {
        Ok(policy_file::axes(lab))
    }

    fn validate(&self, lab: &Lab) -> Result<(), LabError> {
        lab.section::<Section>()?;
        probes::settings(lab)?;
        SOURCE.validate(lab)
    }

    fn packages(&self) -> &'static [&'static str] {
        &["bpftool"]
    }

    fn evidence_before_commands(&self, _lab: &Lab, vm: &Vm) -> Vec<(String, String)> {
        ["vlab_policy", "vlab_policy_deny"].iter().map(|m| (artifact(m, &vm.name), maps::dump(m))).collect()
    }

    fn evidence_commands(&self, lab: &Lab, vm: &Vm) -> Vec<(String, String)> {
        self.evidence_before_commands(lab, vm)
    }

    fn summary(&self, sections: &[(&str, &serde_json::Value)]) -> Option<String> {
        probes::summary(sections)
    }
}

impl Filter for L4Policy {
    /// The lab's policy into the maps, in one bpftool process; with a
    /// policy axis, nothing: each case puts its own in
    /// ([`Filter::case_setup`]).
    fn deploy(&self, lab: &Lab, points: &[EnforcementPoint]) -> Vec<Step> {
        if policy_file::per_case(lab) {
            return Vec::new();
        }
        on_every_vm(lab, points, compiled(lab).map(|c| vec![maps::batch(Vec::new(), fill(&c))]))
    }

    /// The policy maps emptied (only this filter writes them): the next
    /// filter on the pair starts with no identity enforced.
    fn remove(&self, lab: &Lab, points: &[EnforcementPoint]) -> Vec<Step> {
        on_every_vm(lab, points, Ok(vec![maps::batch(maps::flush(&POLICY_MAPS), Vec::new())]))
    }

    /// With a policy axis: the maps emptied and filled with the case's
    /// policy, in one bpftool process.
    fn case_setup(&self, lab: &Lab, _vm: &Vm, case: &CaseParams) -> Vec<String> {
        if !policy_file::per_case(lab) {
            return Vec::new();
        }
        match SOURCE.of_case(lab, case) {
            Ok(p) => vec![maps::batch(maps::flush(&POLICY_MAPS), fill(&p.compiled))],
            Err(m) => vec![format!("echo {} >&2; exit 1", crate::guest::quote(&m))],
        }
    }

    fn probe_targets(&self, lab: &Lab, case: &CaseParams) -> Vec<(PolicyProtocol, u16)> {
        match (SOURCE.of_case(lab, case), probes::settings(lab)) {
            (Ok(p), Ok(s)) => probes::targets(&p.own, &s),
            _ => Vec::new(),
        }
    }

    fn drop_counter_commands(&self, _lab: &Lab, vm: &Vm, _when: MatrixRead) -> Vec<(String, String)> {
        vec![(artifact("vlab_denied", &vm.name), maps::dump("vlab_denied"))]
    }

    fn acts_at(&self, point: &EnforcementPoint) -> bool {
        matches!(point, EnforcementPoint::TcIngress { .. })
    }

    fn verdict(&self, lab: &Lab, _points: &[EnforcementPoint], e: &CaseEvidence) -> Verdict {
        match SOURCE.of_case(lab, &e.case.params) {
            Ok(p) => {
                let (checks, section) = verdict(lab, &p, e);
                Verdict { checks, section: Some(serde_json::to_value(section).expect("serializable")) }
            }
            Err(m) => Verdict { checks: vec![Check::new("l4-policy: the policy compiles", false, m)], section: None },
        }
    }
}

/// The maps a policy fills.
const POLICY_MAPS: [&str; 3] = ["vlab_policy", "vlab_policy_deny", "vlab_enforced"];

/// bpftool batch lines that fill the maps with `c`.
fn fill(c: &Compiled) -> Vec<String> {
    let zero = maps::zero_counter();
    let entries =
        [("vlab_policy", &c.entries), ("vlab_policy_deny", &c.deny)].into_iter().flat_map(|(map, entries)| {
            entries.iter().map(|e| maps::batch_update(map, &maps::policy_key(e), &zero)).collect::<Vec<_>>()
        });
    let flags = c.enforced_flags();
    entries
        .chain(flags.iter().map(|(id, f)| maps::batch_update("vlab_enforced", &maps::le32(*id), &maps::le32(*f))))
        .collect()
}

/// `cmds` on every VM at once, where the overlay's programs run; a policy
/// that no longer compiles (its file changed since the lab was read) fails
/// the step with the reason.
fn on_every_vm(lab: &Lab, points: &[EnforcementPoint], cmds: Result<Vec<String>, String>) -> Vec<Step> {
    if !points.iter().any(|p| L4Policy.acts_at(p)) {
        return Vec::new();
    }
    let cmds = cmds.unwrap_or_else(|m| vec![format!("echo {} >&2; exit 1", crate::guest::quote(&m))]);
    side_by_side(lab.vms.iter().map(|vm| Step::on(&vm.name, cmds.clone())))
}

/// A connection attempt's check: what the evaluator expects of it
/// (`dropped` or `allowed`) and whether the evidence agrees: a dropped one
/// timed out and the datapath counted its drop; an allowed one reached the
/// endpoint (connected, or refused by a closed port) and nothing was
/// dropped. Without a decision (an end that is no container) it fails.
fn probe_check(expected: Option<&Decision>, outcome: ProbeOutcome, dropped: u64) -> (&'static str, bool) {
    match expected.map(Decision::allowed) {
        Some(true) => ("allowed", outcome != ProbeOutcome::TimedOut && dropped == 0),
        Some(false) => ("dropped", outcome == ProbeOutcome::TimedOut && dropped > 0),
        None => ("dropped", false),
    }
}

/// An entry of the policy or denied map and what it counted on a VM.
#[derive(Debug, Clone, Serialize)]
pub struct EntryCount {
    pub vm: String,
    pub endpoint: u32,
    pub remote: u32,
    pub protocol: Protocol,
    pub port: u16,
    #[serde(skip_serializing_if = "is_ingress")]
    pub direction: Direction,
    pub packets: u64,
}

fn is_ingress(d: &Direction) -> bool {
    *d == Direction::Ingress
}

/// What the filter's report section holds.
#[derive(Debug, Clone, Serialize)]
pub struct L4Section {
    /// The compiled policy: allow entries and the identities they enforce.
    pub entries: Vec<Entry>,
    pub enforced: BTreeSet<u32>,
    /// The entries that admitted packets during the case.
    pub admitted: Vec<EntryCount>,
    /// What the policy dropped during the case, by the key it missed.
    pub denied: Vec<EntryCount>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub probe: Option<Probe>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub intruder: Option<Probe>,
    /// The probe matrix, judged cell by cell.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub matrix: Option<probes::MatrixSection>,
}

/// A map's dump before and after the case on each VM, as counts during it.
fn deltas(e: &CaseEvidence, lab: &Lab, map: &str) -> (Vec<EntryCount>, BTreeMap<String, Vec<Entry>>) {
    counts(&vm_names(lab), (&e.before, &e.outputs), map)
}

fn vm_names(lab: &Lab) -> Vec<&str> {
    lab.vms.iter().map(|v| v.name.as_str()).collect()
}

/// A map's dumps in `before` and `after` on each VM (by name), as counts
/// between them, and each VM's keys after.
fn counts(
    vms: &[&str],
    (before, after): (&BTreeMap<String, String>, &BTreeMap<String, String>),
    map: &str,
) -> (Vec<EntryCount>, BTreeMap<String, Vec<Entry>>) {
    let mut counts = Vec::new();
    let mut keys = BTreeMap::new();
    for vm in vms {
        let name = artifact(map, vm);
        let read = |m: &BTreeMap<String, String>| m.get(&name).and_then(|t| maps::parse_policy(t).ok());
        let before = read(before).unwrap_or_default();
        let Some(after) = read(after) else { continue };
        keys.insert(vm.to_string(), after.keys().copied().collect());
        for (entry, c) in after {
            let d = c.since(before.get(&entry).copied().unwrap_or(Counter::default()));
            if d.packets > 0 {
                let Entry { endpoint, remote, protocol, port, direction } = entry;
                let vm = vm.to_string();
                counts.push(EntryCount { vm, endpoint, remote, protocol, port, direction, packets: d.packets });
            }
        }
    }
    (counts, keys)
}

/// What the policy dropped of connections from container `from` (on
/// `from_vm`) to `to` (on `to_vm`) over `protocol` to `port`: at the
/// receiver's ingress, or at the sender's egress.
fn dropped_between(
    denied: &[EntryCount],
    (from, from_vm): (u32, &str),
    (to, to_vm): (u32, &str),
    protocol: Protocol,
    port: u16,
) -> u64 {
    denied
        .iter()
        .filter(|d| d.port == port && d.protocol == protocol)
        .filter(|d| match d.direction {
            Direction::Ingress => d.vm == to_vm && d.endpoint == to && d.remote == from,
            Direction::Egress => d.vm == from_vm && d.endpoint == from && d.remote == to,
        })
        .map(|d| d.packets)
        .sum()
}

/// The matrix check from the drops counted between the matrix's two reads.
fn matrix_check(lab: &Lab, p: &LabPolicy, m: &ProbeMatrix) -> (Check, probes::MatrixSection) {
    let (denied, _) = counts(&vm_names(lab), (&m.before, &m.after), "vlab_denied");
    let ids = &p.compiled.identities;
    let vm_of =
        |c: &str| lab.vms.iter().find(|vm| vm.containers.iter().any(|x| x.name == c)).map(|vm| vm.name.as_str());
    let drops = |cell: &ProbeCell| {
        let (Some(&from), Some(&to), Some(from_vm), Some(to_vm)) =
            (ids.get(&cell.from), ids.get(&cell.to), vm_of(&cell.from), vm_of(&cell.to))
        else {
            return 0;
        };
        let protocol = match cell.protocol {
            PolicyProtocol::Tcp => Protocol::Tcp,
            PolicyProtocol::Udp => Protocol::Udp,
        };
        dropped_between(&denied, (from, from_vm), (to, to_vm), protocol, cell.port)
    };
    probes::judge(&p.model, &p.endpoints, m, drops, "l4-policy")
}

fn verdict(lab: &Lab, p: &LabPolicy, e: &CaseEvidence) -> (Vec<Check>, L4Section) {
    let c = &p.compiled;
    let ids = &c.identities;
    let endpoint = |name: &str| p.endpoints.iter().find(|x| x.name == name);
    let decide = |from: &str, to: &str, port: u16| {
        let (from, to) = (endpoint(from)?, endpoint(to)?);
        Some(p.model.decide(Connection { from, to, protocol: PolicyProtocol::Tcp, port }))
    };
    let (admitted, policy_keys) = deltas(e, lab, "vlab_policy");
    let (_, deny_keys) = deltas(e, lab, "vlab_policy_deny");
    let (denied, _) = deltas(e, lab, "vlab_denied");
    let mut checks = Vec::new();
    // A recording without the deny map's dump stands for an empty one.
    let wrong: Vec<String> = lab
        .vms
        .iter()
        .filter(|vm| {
            policy_keys.get(&vm.name) != Some(&c.entries)
                || deny_keys.get(&vm.name).map_or(!c.deny.is_empty(), |d| d != &c.deny)
        })
        .map(|vm| format!("{}: allow {:?}, deny {:?}", vm.name, policy_keys.get(&vm.name), deny_keys.get(&vm.name)))
        .collect();
    let flags = c.enforced_flags();
    let enforced_wrong: Vec<String> = lab
        .vms
        .iter()
        .filter_map(|vm| {
            let dump = e.outputs.get(&artifact("vlab_enforced", &vm.name))?;
            let got = maps::parse_enforced_flags(dump).ok()?;
            (got != flags).then(|| format!("{}: enforced {got:?}", vm.name))
        })
        .collect();
    checks.push(Check::new(
        "l4-policy: the policy map holds the compiled policy on every VM",
        wrong.is_empty() && enforced_wrong.is_empty(),
        if wrong.is_empty() && enforced_wrong.is_empty() {
            format!(
                "{} entries, identities {:?} enforced{}",
                c.entries.len(),
                c.enforced,
                if c.deny.is_empty() && c.enforced_egress.is_empty() {
                    String::new()
                } else {
                    format!("; {} deny entries, egress enforced for {:?}", c.deny.len(), c.enforced_egress)
                }
            )
        } else {
            [wrong, enforced_wrong].concat().join("; ")
        },
    ));
    let container = |end: &crate::overlay::CaseEnd| end.container.as_ref().and_then(|n| ids.get(n).copied());
    let (server, client) = (&e.ends[0], &e.ends[1]);
    if let (Some(server_id), Some(client_id)) = (container(server), container(client)) {
        let on_server =
            |x: &&EntryCount| x.vm == server.vm && x.endpoint == server_id && x.direction == Direction::Ingress;
        let first: u64 = admitted.iter().filter(on_server).map(|x| x.packets).sum();
        let established = cilium::metric(e, &server.vm, "ct_established");
        // iperf3's control connection and its streams, and the timed new
        // connections after the flow.
        let connections = u64::from(e.case.params.streams) + 1 + u64::from(lab.workload.connects);
        let enforced = c.enforced.contains(&server_id);
        let (server_name, client_name) =
            (server.container.as_deref().unwrap_or(""), client.container.as_deref().unwrap_or(""));
        let workload = decide(client_name, server_name, lab.workload.port);
        let allowed = workload.as_ref().is_some_and(Decision::allowed);
        let ok = e.delivered && (!enforced || (1..=2 * connections).contains(&first) && established > first);
        checks.push(Check::new(
            "l4-policy: the workload passed the policy once per connection",
            ok && allowed,
            format!(
                "identity {client_id} to {server_id} TCP {}: {}; the policy admitted {first} packets \
                 ({connections} connections), connection tracking passed {established} more",
                lab.workload.port,
                workload.map_or("no decision".to_string(), |d| d.to_string())
            ),
        ));
        let denied_for = |from: u32, from_vm: &str, port: u16| {
            dropped_between(&denied, (from, from_vm), (server_id, &server.vm), Protocol::Tcp, port)
        };
        if let Some(probe) = e.probe {
            let dropped = denied_for(client_id, &client.vm, probe.port);
            let expected = decide(client_name, server_name, probe.port);
            let (name, ok) = probe_check(expected.as_ref(), probe.outcome, dropped);
            checks.push(Check::new(
                &format!("l4-policy: a probe to TCP {} is {name}", probe.port),
                ok,
                format!(
                    "{probe}; the policy dropped {dropped} packets from identity {client_id} to TCP {}; {}",
                    probe.port,
                    expected.map_or("no decision".to_string(), |d| d.to_string())
                ),
            ));
        }
        let intruder = lab.workload.intruder.as_ref().and_then(|i| i.container.as_ref());
        let intruder_id = intruder.and_then(|n| ids.get(n));
        if let (Some(probe), Some(&intruder_id), Some(intruder)) = (e.intruder, intruder_id, intruder) {
            let intruder_vm = lab.workload.intruder.as_ref().map_or("", |i| i.vm.as_str());
            let dropped = denied_for(intruder_id, intruder_vm, probe.port);
            let expected = decide(intruder, server_name, probe.port);
            let (name, ok) = probe_check(expected.as_ref(), probe.outcome, dropped);
            checks.push(Check::new(
                &format!("l4-policy: the intruder (identity {intruder_id}) is {name}"),
                ok,
                format!(
                    "{probe}; the policy dropped {dropped} packets from identity {intruder_id} to TCP {}; {}",
                    probe.port,
                    expected.map_or("no decision".to_string(), |d| d.to_string())
                ),
            ));
        }
        let replies = cilium::metric(e, &client.vm, "ct_reply");
        let denied_replies: u64 = denied
            .iter()
            .filter(|d| d.vm == client.vm && d.endpoint == client_id && d.direction == Direction::Ingress)
            .map(|d| d.packets)
            .sum();
        let policy_would = if c.enforced.contains(&client_id) {
            "which the client's own policy would not admit"
        } else {
            "the client has no policy"
        };
        checks.push(Check::new(
            "l4-policy: replies pass by connection tracking, not by the policy",
            replies > 0 && denied_replies == 0,
            format!(
                "{}: {replies} replies passed by connection tracking ({policy_would}), {denied_replies} denied",
                client.vm
            ),
        ));
    }
    let matrix = e.matrix.map(|m| {
        let (check, section) = matrix_check(lab, p, m);
        checks.push(check);
        section
    });
    let section = L4Section {
        matrix,
        entries: c.entries.clone(),
        enforced: c.enforced.clone(),
        admitted,
        denied,
        probe: e.probe,
        intruder: e.intruder,
    };
    (checks, section)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Reason;

    fn decision(allowed: bool) -> Decision {
        let ingress = match allowed {
            true => Reason::NotSelected,
            false => Reason::DefaultDeny { rules: vec![0] },
        };
        Decision { egress: Reason::NotSelected, ingress }
    }

    /// An allowed probe reaches the endpoint (connected or refused) and
    /// nothing is dropped; a dropped one timed out and its drop was counted;
    /// without a decision it fails.
    #[test]
    fn a_probe_is_judged_by_its_outcome_and_the_drops_counted() {
        use ProbeOutcome::{Connected, Refused, TimedOut};
        let (allowed, denied) = (decision(true), decision(false));
        let cases = [
            (Some(&allowed), Connected, 0, ("allowed", true)),
            (Some(&allowed), Refused, 0, ("allowed", true)),
            // Connected, yet the datapath counted a drop of it.
            (Some(&allowed), Connected, 2, ("allowed", false)),
            (Some(&allowed), TimedOut, 0, ("allowed", false)),
            (Some(&denied), TimedOut, 1, ("dropped", true)),
            (Some(&denied), TimedOut, 0, ("dropped", false)),
            (Some(&denied), Connected, 1, ("dropped", false)),
            (None, TimedOut, 1, ("dropped", false)),
        ];
        for (expected, outcome, dropped, verdict) in cases {
            assert_eq!(probe_check(expected, outcome, dropped), verdict, "{outcome:?}, {dropped} dropped");
        }
    }

    fn drop_at(vm: &str, endpoint: u32, remote: u32, direction: Direction) -> EntryCount {
        EntryCount { vm: vm.into(), endpoint, remote, protocol: Protocol::Tcp, port: 5201, direction, packets: 3 }
    }

    /// From container 1 on host2 to container 2 on host1: drops at host1's
    /// ingress of 2 from 1, or at host2's egress of 1 to 2, and no other.
    #[test]
    fn drops_count_between_the_two_ends_only() {
        let between = |d: &[EntryCount]| dropped_between(d, (1, "host2"), (2, "host1"), Protocol::Tcp, 5201);
        assert_eq!(between(&[drop_at("host1", 2, 1, Direction::Ingress)]), 3);
        assert_eq!(between(&[drop_at("host2", 1, 2, Direction::Egress)]), 3);
        for other in [
            drop_at("host2", 2, 1, Direction::Ingress),
            drop_at("host1", 9, 1, Direction::Ingress),
            drop_at("host1", 2, 9, Direction::Ingress),
            drop_at("host1", 1, 2, Direction::Egress),
            drop_at("host2", 9, 2, Direction::Egress),
            drop_at("host2", 1, 9, Direction::Egress),
        ] {
            assert_eq!(between(std::slice::from_ref(&other)), 0, "{other:?}");
        }
        let mut udp = drop_at("host1", 2, 1, Direction::Ingress);
        udp.protocol = Protocol::Udp;
        let mut port = drop_at("host1", 2, 1, Direction::Ingress);
        port.port = 80;
        assert_eq!(between(&[udp, port]), 0);
    }

    /// The report gives an entry's direction only where it is egress.
    #[test]
    fn an_entry_count_names_egress_only() {
        let ingress = serde_json::to_value(drop_at("host1", 2, 1, Direction::Ingress)).unwrap();
        let egress = serde_json::to_value(drop_at("host1", 2, 1, Direction::Egress)).unwrap();
        assert!(ingress.get("direction").is_none(), "{ingress}");
        assert_eq!(egress["direction"], "egress", "{egress}");
    }

    /// A bpftool dump of one policy key (endpoint 2, remote 1, TCP 5201,
    /// ingress) per counter, in packets.
    fn dump(packets: &[u64]) -> String {
        let hex = |b: &[u8]| b.iter().map(|x| format!("\"0x{x:02x}\"")).collect::<Vec<_>>().join(",");
        let entries: Vec<String> = packets
            .iter()
            .enumerate()
            .map(|(i, n)| {
                let mut key = Vec::new();
                key.extend(2u32.to_le_bytes());
                key.extend((1 + i as u32).to_le_bytes());
                key.extend([6, 0]);
                key.extend(5201u16.to_le_bytes());
                let mut value = n.to_le_bytes().to_vec();
                value.extend((n * 100).to_le_bytes());
                format!("{{\"key\":[{}],\"value\":[{}]}}", hex(&key), hex(&value))
            })
            .collect();
        format!("[{}]", entries.join(","))
    }

    /// Only the entries whose counter grew are counted, by how much.
    #[test]
    fn counts_are_the_entries_that_grew() {
        let name = artifact("vlab_denied", "host1");
        let before = BTreeMap::from([(name.clone(), dump(&[5, 0]))]);
        let after = BTreeMap::from([(name, dump(&[5, 3]))]);
        let (counted, keys) = counts(&["host1", "host2"], (&before, &after), "vlab_denied");
        assert_eq!(counted.len(), 1, "{counted:?}");
        assert_eq!((counted[0].remote, counted[0].packets), (2, 3));
        assert_eq!(keys["host1"].len(), 2);
        assert!(!keys.contains_key("host2"), "no dump, no keys");
    }
}
