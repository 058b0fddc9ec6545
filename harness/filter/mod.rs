//! Filter variants: what filters the containers' traffic where the overlay
//! forwards it (`filter = "NAME"`, and the `filter` matrix axis).
//!
//! A filter has the shape of an overlay ([`Variant`]: settings, validation,
//! modules, packages, evidence) plus [`Filter`]: it is deployed at the
//! enforcement points its case's overlay exposes (the VM's FORWARD path for
//! routed overlays, the bridge for L2 overlays) and judges the case from the
//! evidence it reads back (rule counters, rulesets). One file each, one line
//! in [`FILTERS`] registers it.

pub mod iptables;
pub mod l4_policy;
pub mod netfilter_policy;
pub mod nftables;
pub mod none;
pub mod policy;
pub mod policy_file;
pub mod policy_rules;
pub mod probes;
pub mod trace;

use crate::guest::Netns;
use crate::lab::Lab;
use crate::overlay::{CaseEvidence, EnforcementPoint, Step, Variant, Verdict};

/// Every filter, in the order errors list them; one line registers one.
pub static FILTERS: &[&dyn Filter] = &[&none::NoFilter, &iptables::Iptables, &nftables::Nftables, &l4_policy::L4Policy];

/// The filter whose throughput the others are compared with in one run.
pub const REFERENCE: &str = "none";

/// The filter registered under `name`.
pub fn find(name: &str) -> Option<&'static dyn Filter> {
    FILTERS.iter().copied().find(|f| f.name() == name)
}

/// The filter of a validated lab or case (the name was checked at load).
pub fn get(name: &str) -> &'static dyn Filter {
    find(name).unwrap_or_else(|| panic!("filter `{name}` is not registered"))
}

/// Where on `vm` a filter reads: `VM`, or `VM/NAMESPACE` for a point in a
/// namespace of its own (reports name chains and counters by it).
pub fn place(vm: &str, netns: Option<&Netns>) -> String {
    netns.map_or(vm.to_string(), |n| format!("{vm}/{}", n.label()))
}

/// The artifact of what a filter read at [`place`]: `STEM-VM.EXT`, or
/// `STEM-VM-NAMESPACE.EXT`.
pub fn artifact(stem: &str, vm: &str, netns: Option<&Netns>, ext: &str) -> String {
    format!("{stem}-{}.{ext}", place(vm, netns).replace('/', "-"))
}

/// Which of the probe matrix's two reads a command is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MatrixRead {
    Before,
    After,
}

/// A filter on the containers' forwarding path.
pub trait Filter: Variant {
    /// The steps that deploy it at `points` on every VM, after the overlay.
    fn deploy(&self, lab: &Lab, points: &[EnforcementPoint]) -> Vec<Step>;

    /// The steps that take it out of `points` again and put back what
    /// [`Filter::deploy`] changed there, so that the next filter compared on
    /// the same booted pair starts from the overlay alone.
    fn remove(&self, lab: &Lab, points: &[EnforcementPoint]) -> Vec<Step>;

    /// Whether it enforces anything: a filter that does needs the
    /// containers' traffic to cross the VMs' own stack.
    fn enforces(&self) -> bool {
        true
    }

    /// Whether it can act at `point`: netfilter's filters where netfilter
    /// sees the traffic (the default), a BPF policy where the overlay's
    /// programs run.
    fn acts_at(&self, point: &EnforcementPoint) -> bool {
        !point.netfilter_families().is_empty()
    }

    /// Its checks and report section for one case.
    fn verdict(&self, lab: &Lab, points: &[EnforcementPoint], evidence: &CaseEvidence) -> Verdict;

    /// The ports and protocols of its probe matrix: every container tries
    /// every other on each of them after the workload (none: no matrix).
    fn probe_targets(&self, lab: &Lab, case: &crate::lab::CaseParams) -> Vec<(crate::policy::Protocol, u16)> {
        let _ = (lab, case);
        Vec::new()
    }

    /// Commands run on `vm` before each of its cases, with the case's
    /// parameters (a policy axis's value).
    fn case_setup(&self, lab: &Lab, vm: &crate::lab::Vm, case: &crate::lab::CaseParams) -> Vec<String> {
        let _ = (lab, vm, case);
        Vec::new()
    }

    /// Commands that read its drop counters on `vm`, as (artifact name,
    /// command), before and after the probe matrix (`when`).
    fn drop_counter_commands(&self, lab: &Lab, vm: &crate::lab::Vm, when: MatrixRead) -> Vec<(String, String)> {
        let _ = (lab, vm, when);
        Vec::new()
    }

    /// Commands started in the background on `vm` with the probe matrix's
    /// listeners (at the case's start) and stopped with them after the
    /// matrix: monitors whose output [`Filter::drop_counter_commands`] reads.
    fn matrix_monitors(&self, lab: &Lab, vm: &crate::lab::Vm) -> Vec<String> {
        let _ = (lab, vm);
        Vec::new()
    }
}
