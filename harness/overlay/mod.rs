//! Overlay variants: how containers on different VMs reach each other.
//!
//! Every overlay implements [`Overlay`] in a file (or folder) of its own and
//! is registered by one line in [`OVERLAYS`]; nothing outside this folder
//! names one. A variant owns all of itself: the lab keys it reads and their
//! validation, the kernel modules and image packages it needs, how it
//! attaches containers, its deploy plan, readiness probe, per-case setup,
//! capture hints, the evidence it reads and its verdict with a report
//! section. The trait is synchronous: variants render commands and judge
//! evidence; the orchestration (`run`) executes and reads. `README.md` beside
//! this file walks through adding one.
//!
//! The types a variant speaks in ([`Step`], [`CaseEvidence`], [`Verdict`],
//! ...) are shared with the filters (the `filter` module), which implement the
//! same [`Variant`] base.

pub mod baseline;
pub mod cilium_style;
pub mod endpoints;
pub mod evpn;
pub mod ila;
mod plan;
pub mod swarm;
pub mod vxlan;

pub use plan::{
    side_by_side, CaptureHints, CaseEnd, CaseEvidence, Containers, EnforcementPoint, GuestFile, NamespaceForm, Probe,
    ProbeCell, ProbeMatrix, ProbeOutcome, Readiness, ShellCheck, Step, Verdict,
};

use crate::guest::Attachment;
use crate::lab::{CaseParams, Lab, LabError, LabKeys, Vm};

/// Every overlay, in the order errors list them; one line registers one.
pub static OVERLAYS: &[&dyn Overlay] =
    &[&baseline::Baseline, &ila::Ila, &vxlan::Vxlan, &evpn::VxlanEvpn, &swarm::Swarm, &cilium_style::CiliumStyle];

/// The overlay whose throughput the others are compared with in one run.
pub const REFERENCE: &str = "baseline";

/// The overlay registered under `name`.
pub fn find(name: &str) -> Option<&'static dyn Overlay> {
    OVERLAYS.iter().copied().find(|o| o.name() == name)
}

/// The overlay of a validated lab or case (the name was checked at load).
pub fn get(name: &str) -> &'static dyn Overlay {
    find(name).unwrap_or_else(|| panic!("overlay `{name}` is not registered"))
}

/// What every datapath variant, overlay or filter, has: a name, the lab keys
/// it owns and their validation, and what the image and kernel must give it.
pub trait Variant: Sync {
    /// The name lab files select it by (`overlay = "NAME"`).
    fn name(&self) -> &'static str;

    /// The keys of lab files it owns: its tables, keys of a VM, matrix axes.
    fn lab_keys(&self) -> LabKeys {
        LabKeys::default()
    }

    /// Validates its settings against `lab` (which selects it); errors name
    /// the file, line, column and field ([`Lab::section`] reads typed
    /// settings with such errors).
    fn validate(&self, lab: &Lab) -> Result<(), LabError> {
        let _ = lab;
        Ok(())
    }

    /// The matrix axes it adds: (name in case names, values as written).
    fn axes(&self, lab: &Lab) -> Result<Vec<(String, Vec<String>)>, LabError> {
        let _ = lab;
        Ok(Vec::new())
    }

    /// The files besides the lab file it reads, as the lab names them
    /// (relative to the lab file, or absolute): `--artifacts` keeps them
    /// with the lab, so that `vlab rejudge` reads what the run read.
    fn inputs(&self, lab: &Lab) -> Vec<std::path::PathBuf> {
        let _ = lab;
        Vec::new()
    }

    /// Kernel modules the guests load at boot for it.
    fn modules(&self) -> &'static [&'static str] {
        &[]
    }

    /// Kernel options it needs besides those of its [`modules`](Self::modules)
    /// (`NF_TABLES`: the `CONFIG_` is implied); a booted kernel without one
    /// cannot run it (see `run::kconfig`).
    fn kernel_options(&self) -> &'static [&'static str] {
        &[]
    }

    /// Debian packages the image must have for it.
    fn packages(&self) -> &'static [&'static str] {
        &[]
    }

    /// Commands that read its evidence from `vm` before a case's workload,
    /// as (artifact name, command): counters to compare with after. The
    /// outputs reach [`CaseEvidence::before`] and the case's artifacts under
    /// `before/`.
    fn evidence_before_commands(&self, lab: &Lab, vm: &Vm) -> Vec<(String, String)> {
        let _ = (lab, vm);
        Vec::new()
    }

    /// Commands that read its evidence from `vm` after a case, as (artifact
    /// name, command); the outputs reach [`CaseEvidence::outputs`] under the
    /// same names and are kept in the case's artifacts.
    fn evidence_commands(&self, lab: &Lab, vm: &Vm) -> Vec<(String, String)> {
        let _ = (lab, vm);
        Vec::new()
    }

    /// A table for people, from the report sections its verdicts gave each
    /// case (case name, section); `None` when it has nothing to add.
    fn summary(&self, sections: &[(&str, &serde_json::Value)]) -> Option<String> {
        let _ = sections;
        None
    }
}

/// An overlay: how containers on different VMs reach each other.
pub trait Overlay: Variant {
    /// Whether it can share a lab with other overlays on the `overlay`
    /// matrix axis; `Err` says why not.
    fn comparable(&self) -> Result<(), &'static str> {
        Ok(())
    }

    /// How the VMs attach their containers.
    fn containers(&self) -> Containers;

    /// Where container traffic is forwarded in each VM: where a filter goes.
    fn enforcement_points(&self, lab: &Lab) -> Vec<EnforcementPoint>;

    /// Whether a filter that enforces anything can sit at its enforcement
    /// points in `lab`; `Err` names the field that keeps the containers'
    /// traffic away from them, and says why.
    fn hosts_filters(&self, lab: &Lab) -> Result<(), LabError> {
        let _ = lab;
        Ok(())
    }

    /// The steps that deploy it on booted guests whose containers exist
    /// (`attachments` follows `lab.vms`), in order; a step may use the output
    /// of an earlier one.
    fn deploy(&self, lab: &Lab, attachments: &[Attachment]) -> Vec<Step>;

    /// What says the overlay carries traffic after deploy (a control plane
    /// that converges), if anything.
    fn readiness(&self, lab: &Lab) -> Option<Readiness> {
        let _ = lab;
        None
    }

    /// Commands that set it up on `vm` for one case, replacing the previous
    /// case's state (empty when it has no per-case state).
    fn case_setup(&self, lab: &Lab, vm: &Vm, case: &CaseParams) -> Vec<String> {
        let _ = (lab, vm, case);
        Vec::new()
    }

    /// How to capture and decode its traffic.
    fn capture_hints(&self, lab: &Lab) -> CaptureHints {
        let _ = lab;
        CaptureHints::default()
    }

    /// Its checks and report section for one case.
    fn verdict(&self, lab: &Lab, evidence: &CaseEvidence) -> Verdict {
        let _ = (lab, evidence);
        Verdict::default()
    }

    /// For an overlay with a policy stage of its own (BPF programs that
    /// consult a policy map): commands that read its state on `vm`, as
    /// (artifact name, command). The `none` filter reads them after each
    /// case, and a pair reads them after a filter was removed.
    fn policy_state_commands(&self, lab: &Lab, vm: &Vm) -> Vec<(String, String)> {
        let _ = (lab, vm);
        Vec::new()
    }

    /// Whether that state, read into `outputs` (by artifact name), enforces
    /// nothing; `None` for an overlay without a policy stage.
    fn unpoliced(
        &self,
        lab: &Lab,
        outputs: &std::collections::BTreeMap<String, String>,
    ) -> Option<crate::report::Check> {
        let _ = (lab, outputs);
        None
    }

    /// How `vlab repro` rebuilds a case of this overlay in network
    /// namespaces on one host (see [`NamespaceForm`]); an error says why it
    /// cannot, and the case gets the VM form only.
    fn namespace_form(&self, lab: &Lab, case: &CaseParams) -> Result<NamespaceForm, String> {
        let _ = (lab, case);
        Err(format!("the {} overlay has no namespace form", self.name()))
    }
}

/// The guest commands that set `vm` up (number `vm_index`, NIC `nic` with MAC
/// `mac`): underlay, routes to peers, containers as the overlay attaches
/// them, then the overlay's deploy steps on this VM (files shown as
/// comments). For review and snapshots; runs execute the same parts.
pub fn setup_script(lab: &Lab, vm: &Vm, vm_index: usize, nic: &crate::lab::Nic, mac: &str) -> Vec<String> {
    let overlay = get(&lab.overlay);
    let attachment = Attachment::of(nic);
    let mut script = crate::guest::base_setup(lab, vm, vm_index, nic, mac, overlay.containers());
    let attachments: Vec<Attachment> = lab.vms.iter().map(|_| attachment).collect();
    for step in overlay.deploy(lab, &attachments).into_iter().filter(|s| s.vm == vm.name) {
        script.extend(step.files.iter().map(|f| format!("# file {}", f.path)));
        script.extend(step.commands);
    }
    script
}
