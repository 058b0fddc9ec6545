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

use serde::{Deserialize, Serialize};

use super::{side_by_side, CaptureHints, CaseEvidence, Containers, EnforcementPoint, Overlay, Step, Variant, Verdict};
use crate::guest::{container_mac, host_veth, Attachment, CONTAINER_DEV, UNDERLAY_DEV};
use crate::lab::{Family, Issue, Lab, LabError, LabKeys, NicModel, Seg, Vm};
use crate::measure::capture::{flows_are, CaptureSummary, Flow};
use crate::measure::fdb::{self, FdbEntry};
use crate::report::{list, Check};

/// The `[vxlan]` table.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct VxlanSettings {
    /// VXLAN network identifier (1..=16777215, default 100).
    pub vni: u32,
    /// UDP destination port (default 4789).
    pub port: u16,
    /// Address family of the VTEPs: the VMs' underlay addresses of this family (default ipv4).
    pub family: Family,
}

impl Default for VxlanSettings {
    fn default() -> Self {
        VxlanSettings { vni: 100, port: 4789, family: Family::Ipv4 }
    }
}

/// What the VXLAN overlays read from a lab file.
#[derive(Debug, Default, Deserialize)]
struct Section {
    #[serde(default)]
    vxlan: Option<VxlanSettings>,
}

/// The `vxlan` overlay: static forwarding entries.
pub struct Vxlan;

impl Variant for Vxlan {
    fn name(&self) -> &'static str {
        "vxlan"
    }

    fn lab_keys(&self) -> LabKeys {
        LabKeys { tables: &["vxlan"], ..LabKeys::default() }
    }

    fn validate(&self, lab: &Lab) -> Result<(), LabError> {
        validate_segment(lab)
    }

    fn modules(&self) -> &'static [&'static str] {
        &["bridge", "vxlan"]
    }

    fn evidence_commands(&self, lab: &Lab, vm: &Vm) -> Vec<(String, String)> {
        fdb_commands(lab, vm)
    }
}

impl Overlay for Vxlan {
    fn containers(&self) -> Containers {
        Containers::Bridged
    }

    fn enforcement_points(&self, _lab: &Lab) -> Vec<EnforcementPoint> {
        vec![EnforcementPoint::Bridge { name: BRIDGE.to_string() }]
    }

    fn deploy(&self, lab: &Lab, _attachments: &[Attachment]) -> Vec<Step> {
        side_by_side(lab.vms.iter().map(|vm| Step::on(&vm.name, commands(lab, vm, true))))
    }

    fn capture_hints(&self, lab: &Lab) -> CaptureHints {
        capture_hints(lab)
    }

    fn verdict(&self, lab: &Lab, e: &CaseEvidence) -> Verdict {
        let (checks, fdb) = segment_checks(lab, e, "permanent");
        Verdict { checks, section: Some(serde_json::json!({ "fdb": fdb })) }
    }
}

/// Tunnel traffic is captured and decapsulated on the lab's UDP port.
pub fn capture_hints(lab: &Lab) -> CaptureHints {
    let port = settings(lab).port;
    CaptureHints { underlay_filter: Some(format!("udp port {port}")), vxlan_port: Some(port), ..Default::default() }
}

/// The forwarding entries of `vm`'s VXLAN device, as evidence.
pub fn fdb_commands(lab: &Lab, vm: &Vm) -> Vec<(String, String)> {
    vec![(format!("fdb-{}.json", vm.name), fdb::command(&device(settings(lab).vni)))]
}

/// The forwarding entries of every VM, from the evidence outputs (a VM whose
/// output does not parse contributes none, and the checks say what is missing).
pub fn fdb_entries(lab: &Lab, e: &CaseEvidence) -> Vec<FdbEntry> {
    let mut entries = Vec::new();
    for vm in &lab.vms {
        if let Some(text) = e.outputs.get(&format!("fdb-{}.json", vm.name)) {
            entries.extend(fdb::parse(&vm.name, text).unwrap_or_default());
        }
    }
    entries
}

/// The checks of a VXLAN segment whose MAC entries were installed as
/// `installed_as` (none for the underlay path), and the forwarding entries
/// they were judged on.
pub fn segment_checks(lab: &Lab, e: &CaseEvidence, installed_as: &str) -> (Vec<Check>, Vec<FdbEntry>) {
    let fdb = fdb_entries(lab, e);
    let mut checks = Vec::new();
    if e.container_to_container() {
        let settings = settings(lab);
        let vtep = |vm: &str| lab.vm(vm).and_then(|v| v.underlay.get(settings.family)).expect("validated");
        let evidence = VxlanEvidence {
            vteps: [vtep(&e.ends[0].vm), vtep(&e.ends[1].vm)],
            containers: [e.ends[0].addr, e.ends[1].addr],
            underlay: e.captures_at(true),
            fdb: &fdb,
            expected: expected_entries(lab),
            installed_as,
            settings,
        };
        checks = verdict(&evidence);
    }
    (checks, fdb)
}

/// The segment of the VXLAN overlays: a VNI and port that exist, a VTEP
/// address of the chosen family on every VM, containers in one subnet, no
/// SR-IOV VFs.
pub fn validate_segment(lab: &Lab) -> Result<(), LabError> {
    use Seg::{Index, Key};
    let s = lab.section::<Section>()?.vxlan.unwrap_or_default();
    if !(1..=16_777_215).contains(&s.vni) {
        return Err(
            lab.invalid(Issue::new(vec![Key("vxlan"), Key("vni")], format!("VNI {}: use 1 to 16777215", s.vni)))
        );
    }
    if s.port == 0 {
        return Err(lab.invalid(Issue::new(vec![Key("vxlan"), Key("port")], "port 0 is not a port")));
    }
    let family = crate::lab::variant_name(&s.family);
    for (i, vm) in lab.vms.iter().enumerate() {
        if vm.underlay.get(s.family).is_none() {
            return Err(lab.invalid(Issue::new(
                vec![Key("vm"), Index(i), Key("underlay")],
                format!("the VTEP of `{}` needs an {family} underlay address (vxlan.family = \"{family}\")", vm.name),
            )));
        }
        if vm.nic.model == NicModel::IgbSriov {
            return Err(lab.invalid(Issue::new(
                vec![Key("vm"), Index(i), Key("nic"), Key("model")],
                "containers on SR-IOV VFs bypass the VM's bridge and VXLAN device: use virtio or vfio",
            )));
        }
    }
    one_subnet(lab).map_err(|issue| lab.invalid(issue))?;
    if let Some(j) = lab.matrix.nic.iter().flatten().position(|n| n.model == NicModel::IgbSriov) {
        return Err(lab.invalid(Issue::new(
            vec![Key("matrix"), Key("nic"), Index(j)],
            "containers on SR-IOV VFs bypass the VM's bridge and VXLAN device",
        )));
    }
    Ok(())
}

/// The containers of a segment share one subnet per family.
fn one_subnet(lab: &Lab) -> Result<(), Issue> {
    use Seg::{Index, Key};
    let mut subnets: Vec<(Family, String)> = Vec::new();
    for (i, vm) in lab.vms.iter().enumerate() {
        for (j, c) in vm.containers.iter().enumerate() {
            let nets = [
                (Family::Ipv4, c.ipv4.map(|n| n.trunc().to_string()), "ipv4"),
                (Family::Ipv6, c.ipv6.map(|n| n.trunc().to_string()), "ipv6"),
            ];
            for (f, net, key) in nets {
                let Some(net) = net else { continue };
                let path = vec![Key("vm"), Index(i), Key("container"), Index(j), Key(key)];
                match subnets.iter().find(|(g, _)| *g == f) {
                    Some((_, first)) if *first != net => {
                        return Err(Issue::new(
                            path,
                            format!("{net}: the containers of a VXLAN segment share one subnet ({first})"),
                        ));
                    }
                    Some(_) => {}
                    None => subnets.push((f, net)),
                }
            }
        }
    }
    Ok(())
}

/// The bridge that joins a VM's containers and its VXLAN device.
pub const BRIDGE: &str = "br-vx";

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

/// The containers' MTU: the underlay's (`underlay_mtu`) minus the
/// encapsulation.
pub fn inner_mtu(underlay_mtu: u32, family: Family) -> u32 {
    underlay_mtu - overhead(family)
}

/// The lab's VXLAN settings (the defaults without a `[vxlan]` table).
pub fn settings(lab: &Lab) -> VxlanSettings {
    lab.section::<Section>().ok().and_then(|s| s.vxlan).unwrap_or_default()
}

/// Bridge, VXLAN device and container ports of `vm`, with static forwarding
/// entries towards every other VM when `static_fdb`.
pub fn commands(lab: &Lab, vm: &Vm, static_fdb: bool) -> Vec<String> {
    let s = settings(lab);
    let vx = device(s.vni);
    let mtu = inner_mtu(lab.mtu, s.family);
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

    checks.extend(wire_checks(&e.settings, e.vteps, e.containers, &e.underlay));
    checks
}

/// What the underlay captures of a VXLAN case must show: the VNI of
/// `settings` (and nothing else) on its UDP port between the two VTEPs
/// (server's, client's), the two containers' flow inside, and no fragments.
pub fn wire_checks(
    settings: &VxlanSettings,
    [s_vtep, c_vtep]: [IpAddr; 2],
    [s_c, c_c]: [IpAddr; 2],
    underlay: &[&CaptureSummary],
) -> Vec<Check> {
    let mut checks = Vec::new();
    let tunnels_expected = [Flow { src: c_vtep, dst: s_vtep }, Flow { src: s_vtep, dst: c_vtep }];
    let inner_expected = [Flow { src: c_c, dst: s_c }, Flow { src: s_c, dst: c_c }];
    let mut vnis = BTreeSet::new();
    let mut tunnels = BTreeSet::new();
    let mut inner = BTreeSet::new();
    let mut packets = 0;
    let mut fragments = 0;
    for c in underlay {
        if let Some(v) = &c.vxlan {
            vnis.extend(v.vnis.iter().copied());
            tunnels.extend(v.tunnels.iter().copied());
            packets += v.packets;
            fragments += v.fragments;
        }
        inner.extend(c.flows.iter().copied());
    }
    let ok = vnis.iter().eq([settings.vni].iter())
        && flows_are(&tunnels, &tunnels_expected)
        && flows_are(&inner, &inner_expected);
    checks.push(Check::new(
        &format!("VXLAN: wire carries VNI {} between the VTEPs", settings.vni),
        ok,
        format!(
            "{packets} VXLAN packets to UDP {}; VNIs {}; tunnels {}; inner {}",
            settings.port,
            list(&vnis),
            list(&tunnels),
            list(&inner)
        ),
    ));
    let family = settings.family;
    // The underlay's MTU as the captured interfaces had it.
    let mtu = underlay.iter().map(|c| c.sizes.mtu).max().unwrap_or(crate::lab::DEFAULT_MTU);
    checks.push(Check::new(
        "VXLAN: no fragmentation",
        fragments == 0 && packets > 0,
        format!(
            "{fragments} fragments in {packets} packets; inner MTU {} = {mtu} - {} bytes (outer {} header {}, UDP 8, VXLAN 8, inner Ethernet 14)",
            inner_mtu(mtu, family),
            overhead(family),
            crate::lab::variant_name(&family),
            overhead(family) - 30
        ),
    ));
    checks
}
