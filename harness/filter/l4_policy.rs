//! The `l4-policy` filter: an identity-aware L4 ingress policy, written in
//! Cilium's policy language and enforced by the `cilium-style` overlay's BPF
//! program at the VXLAN device's ingress (the only place it can act).
//!
//! The policy file (`[l4_policy] policy`, relative to the lab file; the
//! study's rule by default: `id=service1` may receive TCP 5201 from
//! `id=app1`) is compiled for the lab's containers (see
//! `overlay::cilium_style::policy`) into policy map entries and the set of
//! identities that have a policy; deploying fills both maps on every VM,
//! removing deletes what it added. Evidence: each entry's counter, the
//! denied map (what the policy dropped, by the key it missed) and the
//! programs' metrics, before and after each case.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::Filter;
use crate::lab::{Issue, Lab, LabError, LabKeys, Seg, Vm};
use crate::overlay::cilium_style::maps::{self, Counter};
use crate::overlay::cilium_style::policy::{self, Compiled, Entry, Protocol};
use crate::overlay::cilium_style::{self as cilium, artifact};
use crate::overlay::{side_by_side, CaseEvidence, EnforcementPoint, Probe, ProbeOutcome, Step, Variant, Verdict};
use crate::policy::{Connection, Decision, Endpoint, Policy, Protocol as PolicyProtocol};
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
    /// A policy file (JSON: a rule, an array of rules, or a
    /// CiliumNetworkPolicy), relative to the lab file.
    policy: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
struct Section {
    #[serde(default)]
    l4_policy: Option<Settings>,
}

/// The `l4-policy` filter.
pub struct L4Policy;

/// The policy file's text and its name for errors.
fn policy_text(lab: &Lab) -> Result<(String, String), String> {
    let settings = lab.section::<Section>().ok().and_then(|s| s.l4_policy).unwrap_or_default();
    let Some(path) = settings.policy else { return Ok((STUDY_POLICY.to_string(), "the study's policy".into())) };
    let path = lab.source.parent().map_or(path.clone(), |dir| dir.join(&path));
    let text = std::fs::read_to_string(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    Ok((text, path.display().to_string()))
}

/// The lab's policy: as the model reads it (what the evaluator judges by)
/// and compiled for the datapath.
pub struct LabPolicy {
    pub model: Policy,
    pub endpoints: Vec<Endpoint>,
    pub compiled: Compiled,
}

/// The lab's policy read and compiled for its containers; errors name the
/// policy file, line and field.
pub fn read(lab: &Lab) -> Result<LabPolicy, String> {
    let (text, name) = policy_text(lab)?;
    let containers = cilium::containers(lab);
    let endpoints = policy::endpoints(&containers);
    let model = crate::policy::parse::parse(&text, &endpoints).map_err(|e| e.in_file(&name))?;
    let compiled = policy::compile(&model, &containers).map_err(|e| e.in_file(&name))?;
    Ok(LabPolicy { model, endpoints, compiled })
}

/// The lab's policy compiled for its containers.
pub fn compiled(lab: &Lab) -> Result<Compiled, String> {
    read(lab).map(|p| p.compiled)
}

impl Variant for L4Policy {
    fn name(&self) -> &'static str {
        "l4-policy"
    }

    fn lab_keys(&self) -> LabKeys {
        LabKeys { tables: &["l4_policy"], ..LabKeys::default() }
    }

    fn inputs(&self, lab: &Lab) -> Vec<PathBuf> {
        let settings = lab.section::<Section>().ok().and_then(|s| s.l4_policy).unwrap_or_default();
        settings.policy.into_iter().collect()
    }

    fn validate(&self, lab: &Lab) -> Result<(), LabError> {
        lab.section::<Section>()?;
        compiled(lab)
            .map(|_| ())
            .map_err(|m| lab.invalid(Issue::new(vec![Seg::Key("l4_policy"), Seg::Key("policy")], m)))
    }

    fn packages(&self) -> &'static [&'static str] {
        &["bpftool"]
    }

    fn evidence_before_commands(&self, _lab: &Lab, vm: &Vm) -> Vec<(String, String)> {
        vec![(artifact("vlab_policy", &vm.name), maps::dump("vlab_policy"))]
    }

    fn evidence_commands(&self, lab: &Lab, vm: &Vm) -> Vec<(String, String)> {
        self.evidence_before_commands(lab, vm)
    }
}

impl Filter for L4Policy {
    fn deploy(&self, lab: &Lab, points: &[EnforcementPoint]) -> Vec<Step> {
        let cmds = compiled(lab).map(|c| {
            let zero = maps::zero_counter();
            let entries = c.entries.iter().map(|e| maps::update("vlab_policy", &maps::policy_key(e), &zero));
            let enforced = c.enforced.iter().map(|id| maps::update("vlab_enforced", &maps::le32(*id), &maps::le32(1)));
            entries.chain(enforced).collect()
        });
        on_every_vm(lab, points, cmds)
    }

    fn remove(&self, lab: &Lab, points: &[EnforcementPoint]) -> Vec<Step> {
        let cmds = compiled(lab).map(|c| {
            let entries = c.entries.iter().map(|e| maps::delete("vlab_policy", &maps::policy_key(e)));
            entries.chain(c.enforced.iter().map(|id| maps::delete("vlab_enforced", &maps::le32(*id)))).collect()
        });
        on_every_vm(lab, points, cmds)
    }

    fn acts_at(&self, point: &EnforcementPoint) -> bool {
        matches!(point, EnforcementPoint::TcIngress { .. })
    }

    fn verdict(&self, lab: &Lab, _points: &[EnforcementPoint], e: &CaseEvidence) -> Verdict {
        match read(lab) {
            Ok(p) => {
                let (checks, section) = verdict(lab, &p, e);
                Verdict { checks, section: Some(serde_json::to_value(section).expect("serializable")) }
            }
            Err(m) => Verdict { checks: vec![Check::new("l4-policy: the policy compiles", false, m)], section: None },
        }
    }
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
    pub packets: u64,
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
}

/// A map's dump before and after the case on each VM, as counts during it.
fn deltas(e: &CaseEvidence, lab: &Lab, map: &str) -> (Vec<EntryCount>, BTreeMap<String, Vec<Entry>>) {
    let mut counts = Vec::new();
    let mut keys = BTreeMap::new();
    for vm in &lab.vms {
        let name = artifact(map, &vm.name);
        let read = |m: &BTreeMap<String, String>| m.get(&name).and_then(|t| maps::parse_policy(t).ok());
        let before = read(&e.before).unwrap_or_default();
        let Some(after) = read(&e.outputs) else { continue };
        keys.insert(vm.name.clone(), after.keys().copied().collect());
        for (entry, c) in after {
            let d = c.since(before.get(&entry).copied().unwrap_or(Counter::default()));
            if d.packets > 0 {
                let Entry { endpoint, remote, protocol, port } = entry;
                counts.push(EntryCount { vm: vm.name.clone(), endpoint, remote, protocol, port, packets: d.packets });
            }
        }
    }
    (counts, keys)
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
    let (denied, _) = deltas(e, lab, "vlab_denied");
    let mut checks = Vec::new();
    let wrong: Vec<String> = lab
        .vms
        .iter()
        .filter(|vm| policy_keys.get(&vm.name) != Some(&c.entries))
        .map(|vm| format!("{}: {:?}", vm.name, policy_keys.get(&vm.name)))
        .collect();
    let enforced_wrong: Vec<String> = lab
        .vms
        .iter()
        .filter_map(|vm| {
            let dump = e.outputs.get(&artifact("vlab_enforced", &vm.name))?;
            let got: BTreeSet<u32> = maps::parse_enforced(dump).ok()?.into_iter().collect();
            (got != c.enforced).then(|| format!("{}: enforced {got:?}", vm.name))
        })
        .collect();
    checks.push(Check::new(
        "l4-policy: the policy map holds the compiled policy on every VM",
        wrong.is_empty() && enforced_wrong.is_empty(),
        if wrong.is_empty() && enforced_wrong.is_empty() {
            format!("{} entries, identities {:?} enforced", c.entries.len(), c.enforced)
        } else {
            [wrong, enforced_wrong].concat().join("; ")
        },
    ));
    let container = |end: &crate::overlay::CaseEnd| end.container.as_ref().and_then(|n| ids.get(n).copied());
    let (server, client) = (&e.ends[0], &e.ends[1]);
    if let (Some(server_id), Some(client_id)) = (container(server), container(client)) {
        let on_server = |x: &&EntryCount| x.vm == server.vm && x.endpoint == server_id;
        let first: u64 = admitted.iter().filter(on_server).map(|x| x.packets).sum();
        let established = cilium::metric(e, &server.vm, "ct_established");
        let connections = u64::from(e.case.params.streams) + 1;
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
        let denied_for = |remote: u32, port: u16| {
            denied
                .iter()
                .filter(|d| d.vm == server.vm && d.endpoint == server_id && d.remote == remote && d.port == port)
                .map(|d| d.packets)
                .sum::<u64>()
        };
        if let Some(probe) = e.probe {
            let dropped = denied_for(client_id, probe.port);
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
            let dropped = denied_for(intruder_id, probe.port);
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
        let denied_replies: u64 =
            denied.iter().filter(|d| d.vm == client.vm && d.endpoint == client_id).map(|d| d.packets).sum();
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
    let section = L4Section {
        entries: c.entries.clone(),
        enforced: c.enforced.clone(),
        admitted,
        denied,
        probe: e.probe,
        intruder: e.intruder,
    };
    (checks, section)
}
