//! Overlay variants: how containers on different VMs reach each other. Each
//! variant renders the guest commands that build it, so they can be reviewed
//! and snapshot-tested.

pub mod baseline;
pub mod evpn;
pub mod ila;
pub mod vxlan;

use crate::guest::Attachment;
use crate::lab::{CaseParams, Lab, Overlay, Vm};

/// The commands that deploy the lab's overlay on `vm`, whose containers are
/// attached as `attachment` says (once per boot).
pub fn commands(lab: &Lab, vm: &Vm, attachment: Attachment) -> Vec<String> {
    match lab.overlay {
        Overlay::Baseline => baseline::commands(lab, vm, attachment),
        Overlay::Ila => ila::commands(),
        Overlay::Vxlan => vxlan::commands(lab, vm, true),
        Overlay::VxlanEvpn => evpn::commands(lab, vm),
    }
}

/// Whether the VMs route their containers' traffic (L3 overlays: the guest
/// side of each veth is the gateway) or bridge it (L2 overlays).
pub fn routes_containers(lab: &Lab) -> bool {
    match lab.overlay {
        Overlay::Baseline | Overlay::Ila => true,
        Overlay::Vxlan | Overlay::VxlanEvpn => false,
    }
}

/// The commands that set the overlay up for one case's parameters on `vm`,
/// replacing the previous case's (empty when the overlay has no per-case state).
pub fn case_commands(lab: &Lab, vm: &Vm, params: &CaseParams) -> Vec<String> {
    match (lab.overlay, params.ila) {
        (Overlay::Ila, Some(case)) => ila::case_commands(lab, vm, case),
        _ => Vec::new(),
    }
}

/// The UDP port of the overlay's VXLAN tunnel, if it has one.
pub fn vxlan_port(lab: &Lab) -> Option<u16> {
    match lab.overlay {
        Overlay::Vxlan | Overlay::VxlanEvpn => Some(vxlan::settings(lab).port),
        Overlay::Baseline | Overlay::Ila => None,
    }
}

/// Kernel modules the overlay needs in the guests (loaded at boot).
pub fn modules(lab: &Lab) -> Vec<String> {
    match lab.overlay {
        Overlay::Baseline => Vec::new(),
        Overlay::Ila => vec!["ila".to_string()],
        Overlay::Vxlan | Overlay::VxlanEvpn => vec!["bridge".to_string(), "vxlan".to_string()],
    }
}
