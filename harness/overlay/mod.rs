//! Overlay variants: how containers on different VMs reach each other. Each
//! variant renders the guest commands that build it, so they can be reviewed
//! and snapshot-tested.

pub mod baseline;

use crate::guest::Attachment;
use crate::lab::{Lab, Overlay, Vm};

/// The commands that deploy the lab's overlay on `vm`, whose containers are
/// attached as `attachment` says.
pub fn commands(lab: &Lab, vm: &Vm, attachment: Attachment) -> Vec<String> {
    match lab.overlay {
        Overlay::Baseline => baseline::commands(lab, vm, attachment),
    }
}

/// Kernel modules the overlay needs in the guests (loaded at boot).
pub fn modules(lab: &Lab) -> Vec<String> {
    match lab.overlay {
        Overlay::Baseline => Vec::new(),
    }
}
