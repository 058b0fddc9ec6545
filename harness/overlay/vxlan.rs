//! The VXLAN overlay: the containers of all VMs share one L2 segment.
//!
//! Each VM has a bridge (`br-vx`) whose ports are its containers' veths and a
//! VXLAN device (`vx<VNI>`, learning off) bound to the VM's underlay address
//! (its VTEP). With `overlay = "vxlan"` the forwarding entries are static:
//! a flood entry per remote VTEP (`00:00:00:00:00:00 dst VTEP`) and an entry
//! per remote container MAC. The inner MTU is the underlay's minus the
//! encapsulation, so that nothing is fragmented.

use std::collections::BTreeSet;
use std::net::IpAddr;

use crate::guest::{container_mac, host_veth, CONTAINER_DEV, UNDERLAY_DEV};
use crate::lab::{Family, Lab, Vm, VxlanSettings};
use crate::measure::capture::{flows_are, CaptureSummary, Flow};
use crate::measure::fdb::FdbEntry;
use crate::report::{list, Check};

/// The bridge that joins a VM's containers and its VXLAN device.
pub const BRIDGE: &str = "br-vx";

/// MTU of the underlay NICs (vlab leaves the drivers' default).
pub const UNDERLAY_MTU: u32 = 1500;

/// The VXLAN device of a VNI.
pub fn device(vni: u32) -> String {
    format!("vx{vni}")
}

/// Bytes the encapsulation adds to each inner frame: outer IP, UDP, VXLAN
/// header and the inner Ethernet header.
pub fn overhead(family: Family) -> u32 {
    let ip = match family {
        Family::Ipv4 => 20,
        Family::Ipv6 => 40,
    };
    ip + 8 + 8 + 14
}

/// The containers' MTU: the underlay's minus the encapsulation.
pub fn inner_mtu(family: Family) -> u32 {
    UNDERLAY_MTU - overhead(family)
}

/// The lab's VXLAN settings (the defaults without a `[vxlan]` table).
pub fn settings(lab: &Lab) -> VxlanSettings {
    lab.vxlan.clone().unwrap_or_default()
}

/// Bridge, VXLAN device and container ports of `vm`, with static forwarding
/// entries towards every other VM when `static_fdb`.
pub fn commands(lab: &Lab, vm: &Vm, static_fdb: bool) -> Vec<String> {
    let s = settings(lab);
    let vx = device(s.vni);
    let mtu = inner_mtu(s.family);
    let Some(local) = vm.underlay.get(s.family) else { return Vec::new() };
    let mut cmds = vec![
        format!("ip link add {BRIDGE} type bridge"),
        format!(
            "ip link add {vx} type vxlan id {} dstport {} local {local} dev {UNDERLAY_DEV} nolearning",
            s.vni, s.port
        ),
        format!("ip link set {vx} master {BRIDGE} mtu {mtu}"),
        format!("bridge link set dev {vx} learning off"),
    ];
    for c in &vm.containers {
        let veth = host_veth(&c.name);
        cmds.push(format!("ip link set {veth} mtu {mtu} master {BRIDGE}"));
        cmds.push(format!("ip -n {} link set {CONTAINER_DEV} mtu {mtu}", c.name));
    }
    cmds.push(format!("ip link set {vx} up"));
    cmds.push(format!("ip link set {BRIDGE} up"));
    if static_fdb {
        for (i, peer) in lab.vms.iter().enumerate().filter(|(_, p)| p.name != vm.name) {
            let Some(remote) = peer.underlay.get(s.family) else { continue };
            cmds.push(format!("bridge fdb append {FLOOD_MAC} dev {vx} dst {remote} self permanent"));
            for j in 0..peer.containers.len() {
                cmds.push(format!("bridge fdb add {} dev {vx} dst {remote} self permanent", container_mac(i, j)));
            }
        }
    }
    cmds
}

/// The forwarding entries every VM must hold: for each other VM, a flood
/// entry and one entry per container MAC, all pointing at that VM's VTEP.
/// Each item is (VM, MAC, remote VTEP).
pub fn expected_entries(lab: &Lab) -> Vec<(String, String, IpAddr)> {
    let family = settings(lab).family;
    let mut out = Vec::new();
    for vm in &lab.vms {
        for (i, peer) in lab.vms.iter().enumerate().filter(|(_, p)| p.name != vm.name) {
            let Some(vtep) = peer.underlay.get(family) else { continue };
            out.push((vm.name.clone(), FLOOD_MAC.to_string(), vtep));
            for j in 0..peer.containers.len() {
                out.push((vm.name.clone(), container_mac(i, j), vtep));
            }
        }
    }
    out
}

/// The MAC of flood (broadcast, unknown unicast, multicast) entries.
pub const FLOOD_MAC: &str = "00:00:00:00:00:00";

/// What a VXLAN case is judged on.
pub struct VxlanEvidence<'a> {
    /// The lab's VXLAN settings.
    pub settings: VxlanSettings,
    /// VTEPs of the server's and the client's VM.
    pub vteps: [IpAddr; 2],
    /// The server's and the client's container addresses.
    pub containers: [IpAddr; 2],
    /// Captures on the underlay NICs.
    pub underlay: Vec<&'a CaptureSummary>,
    /// The VXLAN devices' forwarding entries on every VM.
    pub fdb: &'a [FdbEntry],
    /// The entries that must be there: (VM, MAC, remote VTEP).
    pub expected: Vec<(String, String, IpAddr)>,
    /// How the MAC entries must have been installed: `permanent` (static) or
    /// a flag such as `extern_learn` (a control plane).
    pub installed_as: &'a str,
}

/// Judges a VXLAN case from forwarding entries and captures.
pub fn verdict(e: &VxlanEvidence) -> Vec<Check> {
    let mut checks = Vec::new();
    // Flood entries are permanent whoever installs them (zebra does so too);
    // MAC entries show how they were installed.
    let installed = |x: &FdbEntry| match x.mac.as_str() {
        FLOOD_MAC => x.state == "permanent",
        _ => x.state == e.installed_as || x.flags.iter().any(|f| f == e.installed_as),
    };
    let missing: Vec<String> = e
        .expected
        .iter()
        .filter(|(vm, mac, dst)| {
            !e.fdb.iter().any(|x| {
                &x.vm == vm && &x.mac == mac && x.dst.as_deref() == Some(dst.to_string().as_str()) && installed(x)
            })
        })
        .map(|(vm, mac, dst)| format!("{vm}: {mac} dst {dst}"))
        .collect();
    checks.push(Check::new(
        "VXLAN: remote MACs and flood entries point at the remote VTEPs",
        missing.is_empty(),
        if missing.is_empty() {
            format!("{} entries on the VXLAN devices (flood: permanent, MACs: {})", e.expected.len(), e.installed_as)
        } else {
            format!("missing (flood: permanent, MACs: {}): {}", e.installed_as, missing.join("; "))
        },
    ));

    let [s_vtep, c_vtep] = e.vteps;
    let [s_c, c_c] = e.containers;
    let tunnels_expected = [Flow { src: c_vtep, dst: s_vtep }, Flow { src: s_vtep, dst: c_vtep }];
    let inner_expected = [Flow { src: c_c, dst: s_c }, Flow { src: s_c, dst: c_c }];
    let mut vnis = BTreeSet::new();
    let mut tunnels = BTreeSet::new();
    let mut inner = BTreeSet::new();
    let mut packets = 0;
    let mut fragments = 0;
    for c in &e.underlay {
        if let Some(v) = &c.vxlan {
            vnis.extend(v.vnis.iter().copied());
            tunnels.extend(v.tunnels.iter().copied());
            packets += v.packets;
            fragments += v.fragments;
        }
        inner.extend(c.flows.iter().copied());
    }
    let ok = vnis.iter().eq([e.settings.vni].iter())
        && flows_are(&tunnels, &tunnels_expected)
        && flows_are(&inner, &inner_expected);
    checks.push(Check::new(
        &format!("VXLAN: wire carries VNI {} between the VTEPs", e.settings.vni),
        ok,
        format!(
            "{packets} VXLAN packets to UDP {}; VNIs {}; tunnels {}; inner {}",
            e.settings.port,
            list(&vnis),
            list(&tunnels),
            list(&inner)
        ),
    ));
    let family = e.settings.family;
    checks.push(Check::new(
        "VXLAN: no fragmentation",
        fragments == 0 && packets > 0,
        format!(
            "{fragments} fragments in {packets} packets; inner MTU {} = {UNDERLAY_MTU} - {} bytes (outer {} header {}, UDP 8, VXLAN 8, inner Ethernet 14)",
            inner_mtu(family),
            overhead(family),
            crate::lab::variant_name(&family),
            overhead(family) - 30
        ),
    ));
    checks
}
