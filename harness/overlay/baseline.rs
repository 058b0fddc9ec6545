//! The baseline overlay: no encapsulation, only routes. Each VM forwards, and
//! routes every other VM's container addresses via that VM's underlay address:
//! `ip route add 10.1.2.2/32 via 10.0.0.2` (and the same with `-6`).

use crate::lab::{Lab, Vm};

/// The commands for `vm`.
pub fn commands(lab: &Lab, vm: &Vm) -> Vec<String> {
    let mut cmds =
        vec!["sysctl -qw net.ipv4.ip_forward=1".to_string(), "sysctl -qw net.ipv6.conf.all.forwarding=1".to_string()];
    for peer in lab.vms.iter().filter(|p| p.name != vm.name) {
        for c in &peer.containers {
            if let (Some(addr), Some(via)) = (c.ipv4, peer.underlay.ipv4) {
                cmds.push(format!("ip route add {}/32 via {}", addr.addr(), via.addr()));
            }
            if let (Some(addr), Some(via)) = (c.ipv6, peer.underlay.ipv6) {
                cmds.push(format!("ip -6 route add {}/128 via {}", addr.addr(), via.addr()));
            }
        }
    }
    cmds
}
