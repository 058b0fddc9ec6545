//! The baseline overlay: no encapsulation, only routes.
//!
//! Containers on veth pairs: each VM forwards and routes every other VM's
//! container addresses via that VM's underlay address
//! (`ip route add 10.1.2.2/32 via 10.0.0.2`, and the same with `-6`).
//! A peer container inside a container's own subnet gets a host route via
//! the gateway in that container.
//! Containers on SR-IOV VFs sit on the underlay's L2 themselves: each gets an
//! on-link route to every other VM's containers
//! (`ip -n c1 route add 10.1.2.2/32 dev eth0`).

use super::{side_by_side, Containers, EnforcementPoint, NamespaceForm, Overlay, Step, Variant};
use crate::guest::{Attachment, CONTAINER_DEV};
use crate::lab::{CaseParams, Family, Issue, Lab, LabError, NicModel, Seg, Vm};

/// The `baseline` overlay.
pub struct Baseline;

impl Variant for Baseline {
    fn name(&self) -> &'static str {
        "baseline"
    }
}

impl Overlay for Baseline {
    fn containers(&self) -> Containers {
        Containers::Routed
    }

    fn enforcement_points(&self, _lab: &Lab) -> Vec<EnforcementPoint> {
        vec![EnforcementPoint::Forward]
    }

    /// Containers on SR-IOV VFs reach the wire through the NIC's own switch:
    /// no packet of theirs crosses a VM's FORWARD hook.
    fn hosts_filters(&self, lab: &Lab) -> Result<(), LabError> {
        use Seg::{Index, Key};
        const WHY: &str = "its containers sit on SR-IOV VFs and reach the wire through the NIC's switch, \
                           never through the VM's forwarding path";
        if let Some(i) = lab.vms.iter().position(|vm| vm.nic.model == NicModel::IgbSriov) {
            return Err(lab.invalid(Issue::new(vec![Key("vm"), Index(i), Key("nic"), Key("model")], WHY)));
        }
        match lab.matrix.nic.iter().flatten().position(|n| n.model == NicModel::IgbSriov) {
            Some(j) => Err(lab.invalid(Issue::new(vec![Key("matrix"), Key("nic"), Index(j)], WHY))),
            None => Ok(()),
        }
    }

    fn deploy(&self, lab: &Lab, attachments: &[Attachment]) -> Vec<Step> {
        side_by_side(lab.vms.iter().zip(attachments).map(|(vm, a)| Step::on(&vm.name, commands(lab, vm, *a))))
    }

    /// Plain routing has no checks beyond the workload's.
    fn namespace_form(&self, _lab: &Lab, _case: &CaseParams) -> Result<NamespaceForm, String> {
        Ok(NamespaceForm::default())
    }
}

/// The commands for `vm`.
pub fn commands(lab: &Lab, vm: &Vm, attachment: Attachment) -> Vec<String> {
    let mut cmds = Vec::new();
    if attachment == Attachment::Veth {
        cmds.push("sysctl -qw net.ipv4.ip_forward=1".to_string());
        cmds.push("sysctl -qw net.ipv6.conf.all.forwarding=1".to_string());
    }
    for peer in lab.vms.iter().filter(|p| p.name != vm.name) {
        for c in &peer.containers {
            match attachment {
                Attachment::Veth => {
                    if let (Some(addr), Some(via)) = (c.ipv4, peer.underlay.ipv4) {
                        cmds.push(format!("ip route add {}/32 via {}", addr.addr(), via.addr()));
                    }
                    if let (Some(addr), Some(via)) = (c.ipv6, peer.underlay.ipv6) {
                        cmds.push(format!("ip -6 route add {}/128 via {}", addr.addr(), via.addr()));
                    }
                    // A peer inside a container's own subnet (labs that compare
                    // with L2 overlays) is reached through the gateway, not on-link.
                    for own in &vm.containers {
                        if let (Some(net), Some(addr), Some(gw)) = (own.ipv4, c.ipv4, own.gateway(Family::Ipv4)) {
                            if net.contains(&addr.addr()) {
                                cmds.push(format!("ip -n {} route add {}/32 via {gw}", own.name, addr.addr()));
                            }
                        }
                        if let (Some(net), Some(addr), Some(gw)) = (own.ipv6, c.ipv6, own.gateway(Family::Ipv6)) {
                            if net.prefix_len() < 128 && net.contains(&addr.addr()) {
                                cmds.push(format!("ip -n {} -6 route add {}/128 via {gw}", own.name, addr.addr()));
                            }
                        }
                    }
                }
                Attachment::Vf => {
                    for own in &vm.containers {
                        if let (Some(addr), Some(_)) = (c.ipv4, own.ipv4) {
                            cmds.push(format!("ip -n {} route add {}/32 dev {CONTAINER_DEV}", own.name, addr.addr()));
                        }
                        if let (Some(addr), Some(_)) = (c.ipv6, own.ipv6) {
                            cmds.push(format!(
                                "ip -n {} -6 route add {}/128 dev {CONTAINER_DEV}",
                                own.name,
                                addr.addr()
                            ));
                        }
                    }
                }
            }
        }
    }
    cmds
}
