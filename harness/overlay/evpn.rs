//! The VXLAN overlay with a BGP EVPN control plane (`overlay = "vxlan-evpn"`).
//!
//! The datapath is the `vxlan` overlay's without static entries (and with
//! ARP/ND suppression on the VXLAN port). Each VM runs FRR's `zebra` and
//! `bgpd`, peering over MP-BGP `l2vpn evpn` (`advertise-all-vni`) with a goBGP
//! route server. The route server runs on one VM in a namespace of its own
//! (`rs`, joined to the VM by a veth), so that it does not share an address or
//! TCP port 179 with that VM's FRR; it reflects the type-2 (MAC/IP) and type-3
//! (inclusive multicast) routes to every client, and zebra turns the routes it
//! learns into the VXLAN device's forwarding entries. vlab renders the
//! configurations from the lab file and keeps them as artifacts, starts the
//! daemons after the datapath is up, and they end with their VM.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::time::Duration;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use super::{vxlan, Verdict};
use super::{CaptureHints, CaseEvidence, Containers, EnforcementPoint, GuestFile, Overlay, Readiness, Step, Variant};
use crate::guest::{container_mac, Attachment};
use crate::lab::{Issue, Lab, LabError, LabKeys, Seg, Vm};
use crate::report::Check;

/// The `[evpn]` table.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct EvpnSettings {
    /// The AS of every BGP speaker (iBGP, default 65000).
    pub asn: u32,
    /// The VM that runs the route server (`gobgpd`, in a namespace of its
    /// own); default: the first VM.
    pub route_server: Option<String>,
    /// The route server's address; its VM takes the other address of the
    /// subnet (default `10.255.0.2/30`).
    pub route_server_address: Ipv4Net,
}

impl Default for EvpnSettings {
    fn default() -> Self {
        EvpnSettings { asn: 65000, route_server: None, route_server_address: "10.255.0.2/30".parse().expect("valid") }
    }
}

/// What the EVPN overlay reads from a lab file besides `[vxlan]`.
#[derive(Debug, Default, Deserialize)]
struct Section {
    #[serde(default)]
    evpn: Option<EvpnSettings>,
}

/// Where its evidence and configurations go in the artifacts.
const ARTIFACTS: &str = "evpn";

/// The `vxlan-evpn` overlay.
pub struct VxlanEvpn;

impl Variant for VxlanEvpn {
    fn name(&self) -> &'static str {
        "vxlan-evpn"
    }

    fn lab_keys(&self) -> LabKeys {
        LabKeys { tables: &["vxlan", "evpn"], ..LabKeys::default() }
    }

    fn validate(&self, lab: &Lab) -> Result<(), LabError> {
        validate_control_plane(lab)?;
        vxlan::validate_segment(lab)
    }

    fn modules(&self) -> &'static [&'static str] {
        &["bridge", "vxlan"]
    }

    fn packages(&self) -> &'static [&'static str] {
        &["frr", "gobgpd"]
    }

    fn evidence_commands(&self, lab: &Lab, vm: &Vm) -> Vec<(String, String)> {
        let mut cmds = vxlan::fdb_commands(lab, vm);
        cmds.extend(evidence_commands(lab, vm).into_iter().map(|(name, cmd)| (format!("{ARTIFACTS}/{name}"), cmd)));
        cmds
    }
}

impl Overlay for VxlanEvpn {
    fn containers(&self) -> Containers {
        Containers::Bridged
    }

    fn enforcement_points(&self, _lab: &Lab) -> Vec<EnforcementPoint> {
        vec![EnforcementPoint::Bridge { name: vxlan::BRIDGE.to_string() }]
    }

    fn deploy(&self, lab: &Lab, _attachments: &[Attachment]) -> Vec<Step> {
        lab.vms.iter().flat_map(|vm| steps(lab, vm)).collect()
    }

    /// The workload's client container reaches the server container (one
    /// ping a time, for at most 90 s).
    fn readiness(&self, lab: &Lab) -> Option<Readiness> {
        Readiness::first_ping(lab, lab.workload.family, Duration::from_secs(90))
    }

    fn capture_hints(&self, lab: &Lab) -> CaptureHints {
        vxlan::capture_hints(lab)
    }

    fn verdict(&self, lab: &Lab, e: &CaseEvidence) -> Verdict {
        let outputs: BTreeMap<String, String> = e
            .outputs
            .iter()
            .filter_map(|(k, v)| Some((k.strip_prefix(&format!("{ARTIFACTS}/"))?.to_string(), v.clone())))
            .collect();
        let cp = control_plane(lab, &outputs);
        let mut checks = verdict(lab, &cp);
        let (segment, fdb) = vxlan::segment_checks(lab, e, "extern_learn");
        checks.extend(segment);
        Verdict { checks, section: Some(serde_json::json!({ "fdb": fdb, "control_plane": cp })) }
    }
}

/// The route server's VM, link and AS; BGP runs over IPv4 underlay addresses.
fn validate_control_plane(lab: &Lab) -> Result<(), LabError> {
    use Seg::{Index, Key};
    let e = lab.section::<Section>()?.evpn.unwrap_or_default();
    let fail = |path, message: String| Err(lab.invalid(Issue::new(path, message)));
    if let Some(rs) = &e.route_server {
        if lab.vm(rs).is_none() {
            let names: Vec<_> = lab.vms.iter().map(|v| v.name.as_str()).collect();
            return fail(vec![Key("evpn"), Key("route_server")], format!("no VM `{rs}` (VMs: {})", names.join(", ")));
        }
    }
    if e.route_server_address.prefix_len() > 30 {
        return fail(
            vec![Key("evpn"), Key("route_server_address")],
            format!("{}: the link to the route server needs a /30 or larger", e.route_server_address),
        );
    }
    if e.asn == 0 {
        return fail(vec![Key("evpn"), Key("asn")], "AS 0 is reserved".into());
    }
    if let Some(i) = lab.vms.iter().position(|v| v.underlay.ipv4.is_none()) {
        return fail(
            vec![Key("vm"), Index(i), Key("underlay")],
            "BGP sessions to the route server run over IPv4: add an ipv4 underlay address".into(),
        );
    }
    Ok(())
}

/// The route server's namespace on its VM.
pub const RS_NETNS: &str = "rs";
/// The VM side of the veth to the route server's namespace.
pub const RS_VETH: &str = "vrs";
/// Where the configurations go in the guests.
pub const CONFIG_DIR: &str = "/etc/vlab";
/// FRR's daemons' directory in Debian.
const FRR_BIN: &str = "/usr/lib/frr";

/// The lab's EVPN settings (the defaults without an `[evpn]` table).
pub fn settings(lab: &Lab) -> EvpnSettings {
    lab.section::<Section>().ok().and_then(|s| s.evpn).unwrap_or_default()
}

/// The VM that runs the route server.
pub fn route_server_vm(lab: &Lab) -> &Vm {
    let s = settings(lab);
    s.route_server.as_deref().and_then(|n| lab.vm(n)).unwrap_or(&lab.vms[0])
}

/// The route server's address and its VM's address on the link between them.
pub fn route_server_link(s: &EvpnSettings) -> (Ipv4Addr, Ipv4Addr) {
    let rs = s.route_server_address.addr();
    let vm_side = s.route_server_address.hosts().find(|a| *a != rs).unwrap_or(rs);
    (rs, vm_side)
}

/// The address a VM's BGP session comes from: its VTEP, IPv4 (the route
/// server is reached over IPv4).
fn router_id(vm: &Vm) -> Option<Ipv4Addr> {
    vm.underlay.ipv4.map(|n| n.addr())
}

/// FRR's `bgpd` configuration of `vm`.
pub fn frr_config(lab: &Lab, vm: &Vm) -> String {
    let s = settings(lab);
    let (rs, _) = route_server_link(&s);
    let id = router_id(vm).map(|a| a.to_string()).unwrap_or_default();
    format!(
        "hostname {name}\n\
         log file /var/log/frr/bgpd.log\n\
         !\n\
         router bgp {asn}\n \
         bgp router-id {id}\n \
         no bgp default ipv4-unicast\n \
         timers bgp 3 9\n \
         neighbor {rs} remote-as {asn}\n \
         neighbor {rs} update-source {id}\n \
         neighbor {rs} timers connect 1\n \
         !\n \
         address-family l2vpn evpn\n  \
         neighbor {rs} activate\n  \
         advertise-all-vni\n \
         exit-address-family\n\
         !\n",
        name = vm.name,
        asn = s.asn,
    )
}

/// goBGP's configuration of the route server: every VM is a client for
/// `l2vpn-evpn`; the server waits for them to connect. The clients share one
/// AS (FRR derives the route targets from AS and VNI, so they match), which
/// makes the sessions iBGP: goBGP then keeps the routes of a
/// `route-server-client` from the other clients (iBGP split horizon; seen with
/// gobgpd 3.36, and it refuses both flags on one neighbor), so the clients are
/// `route-reflector-client`s, which reflects every route to every other client
/// unchanged (next hop = the originating VTEP).
pub fn gobgp_config(lab: &Lab) -> String {
    let s = settings(lab);
    let (rs, _) = route_server_link(&s);
    let mut out = format!("[global.config]\n  as = {}\n  router-id = \"{rs}\"\n", s.asn);
    for vm in &lab.vms {
        let Some(addr) = router_id(vm) else { continue };
        out.push_str(&format!(
            "\n[[neighbors]]\n  [neighbors.config]\n    neighbor-address = \"{addr}\"\n    peer-as = {asn}\n  \
             [neighbors.timers.config]\n    hold-time = 9\n    keepalive-interval = 3\n  \
             [neighbors.transport.config]\n    passive-mode = true\n  \
             [neighbors.route-reflector.config]\n    route-reflector-client = true\n    \
             route-reflector-cluster-id = \"{rs}\"\n  \
             [[neighbors.afi-safis]]\n    [neighbors.afi-safis.config]\n      afi-safi-name = \"l2vpn-evpn\"\n",
            asn = s.asn
        ));
    }
    out
}

/// Deploys `vm` in two steps: the datapath, the directories and (on its VM)
/// the route server's namespace; then the configurations as files and the
/// daemons (goBGP on the route server's VM, then zebra and bgpd).
fn steps(lab: &Lab, vm: &Vm) -> Vec<Step> {
    let s = settings(lab);
    let vx = vxlan::device(vxlan::settings(lab).vni);
    let (rs, vm_side) = route_server_link(&s);
    let rs_vm = route_server_vm(lab);
    let mut cmds = vxlan::commands(lab, vm, false);
    // ARP/ND answered from the EVPN routes instead of flooded.
    cmds.push(format!("bridge link set dev {vx} neigh_suppress on"));
    // FRR's daemons drop to the frr user (and its vty group) after start.
    cmds.push(format!("mkdir -p {CONFIG_DIR} /run/frr /var/log/frr"));
    cmds.push("chown frr:frr /run/frr /var/log/frr".to_string());
    let file = |name: &str, text: String, artifact: Option<String>| GuestFile {
        path: format!("{CONFIG_DIR}/{name}"),
        text,
        artifact: artifact.map(|a| format!("{ARTIFACTS}/{a}")),
    };
    let mut files = Vec::new();
    let mut daemons = Vec::new();
    if vm.name == rs_vm.name {
        cmds.extend([
            "sysctl -qw net.ipv4.ip_forward=1".to_string(),
            format!("ip netns add {RS_NETNS}"),
            format!("ip -n {RS_NETNS} link set lo up"),
            format!("ip link add {RS_VETH} type veth peer name eth0 netns {RS_NETNS}"),
            format!("ip addr add {vm_side}/{} dev {RS_VETH}", s.route_server_address.prefix_len()),
            format!("ip link set {RS_VETH} up"),
            format!("ip -n {RS_NETNS} addr add {} dev eth0", s.route_server_address),
            format!("ip -n {RS_NETNS} link set eth0 up"),
            format!("ip -n {RS_NETNS} route add default via {vm_side}"),
        ]);
        files.push(file("gobgpd.toml", gobgp_config(lab), Some("gobgpd.toml".into())));
        daemons.push(format!(
            "setsid ip netns exec {RS_NETNS} gobgpd -t toml -f {CONFIG_DIR}/gobgpd.toml \
             </dev/null >/var/log/gobgpd.log 2>&1 &"
        ));
    } else if let Some(via) = rs_vm.underlay.ipv4 {
        cmds.push(format!("ip route add {rs}/32 via {}", via.addr()));
    }
    files.push(file("zebra.conf", format!("hostname {}\nlog file /var/log/frr/zebra.log\n", vm.name), None));
    files.push(file("bgpd.conf", frr_config(lab, vm), Some(format!("bgpd-{}.conf", vm.name))));
    // Daemons keep no pipe of the guest agent's open (it waits for EOF).
    daemons.extend([
        format!("{FRR_BIN}/zebra -d -f {CONFIG_DIR}/zebra.conf </dev/null >/var/log/frr/zebra.out 2>&1"),
        format!("{FRR_BIN}/bgpd -d -f {CONFIG_DIR}/bgpd.conf </dev/null >/var/log/frr/bgpd.out 2>&1"),
    ]);
    vec![Step::on(&vm.name, cmds), Step { files, ..Step::on(&vm.name, daemons) }]
}

/// The control-plane evidence to read from `vm`, as (artifact name, command):
/// FRR's view (BGP sessions, and zebra's MACs and VTEPs of the VNI) and, on
/// the route server's VM, goBGP's (its neighbors and the EVPN routes each
/// client sent it).
pub fn evidence_commands(lab: &Lab, vm: &Vm) -> Vec<(String, String)> {
    let vni = vxlan::settings(lab).vni;
    let mut cmds = vec![
        (format!("{}-bgp-summary.json", vm.name), "vtysh -c 'show bgp l2vpn evpn summary json'".to_string()),
        (format!("{}-evpn-mac.json", vm.name), format!("vtysh -c 'show evpn mac vni {vni} json'")),
        (format!("{}-evpn-vni.json", vm.name), format!("vtysh -c 'show evpn vni {vni} json'")),
    ];
    cmds.push((format!("{}-bgpd.log", vm.name), "cat /var/log/frr/bgpd.log".to_string()));
    if vm.name == route_server_vm(lab).name {
        cmds.push(("gobgpd.log".to_string(), "cat /var/log/gobgpd.log".to_string()));
        cmds.push(("rs-neighbors.json".to_string(), format!("ip netns exec {RS_NETNS} gobgp -j neighbor")));
        for client in &lab.vms {
            if let Some(addr) = router_id(client) {
                cmds.push((
                    format!("rs-adj-in-{}.json", client.name),
                    format!("ip netns exec {RS_NETNS} gobgp -j neighbor {addr} adj-in -a evpn"),
                ));
            }
        }
    }
    cmds
}

/// A BGP session as one of its ends reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Session {
    /// Who reports it: a VM's FRR, or `route-server`.
    pub speaker: String,
    /// The peer's address.
    pub peer: String,
    /// `Established`, `Active`, ... (goBGP's numeric states are named).
    pub state: String,
}

/// An EVPN route the route server received from a client.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct RsRoute {
    /// The client VM it came from.
    pub from: String,
    /// 2 (MAC/IP advertisement) or 3 (inclusive multicast).
    pub route_type: u8,
    /// The VNI: the MPLS label field of a type-2 route, the PMSI tunnel label of a type-3.
    pub vni: Option<u32>,
    /// Type 2: the MAC.
    pub mac: Option<String>,
    /// Type 3: the originating VTEP.
    pub vtep: Option<String>,
    /// The next hop (the originating VTEP).
    pub next_hop: Option<String>,
}

/// A MAC zebra knows in the VNI.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct ZebraMac {
    /// The VM.
    pub vm: String,
    /// The MAC.
    pub mac: String,
    /// `local` or `remote`.
    pub kind: String,
    /// For remote MACs: the VTEP behind it.
    pub remote_vtep: Option<String>,
}

/// The EVPN control plane of a case, read from the daemons.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ControlPlane {
    /// Sessions as FRR on each VM and the route server report them.
    pub sessions: Vec<Session>,
    /// The routes the route server holds, per client.
    pub route_server: Vec<RsRoute>,
    /// The MACs zebra holds on each VM.
    pub zebra: Vec<ZebraMac>,
}

fn gobgp_state(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::Number(n) => match n.as_u64() {
            Some(1) => "Idle",
            Some(2) => "Connect",
            Some(3) => "Active",
            Some(4) => "OpenSent",
            Some(5) => "OpenConfirm",
            Some(6) => "Established",
            _ => "Unknown",
        }
        .to_string(),
        serde_json::Value::String(s) => s.clone(),
        _ => "Unknown".to_string(),
    }
}

/// Reads the control plane from the outputs of [`evidence_commands`]
/// (artifact name to text); what is missing or unreadable is left out, and
/// the checks then say what they did not find.
pub fn control_plane(lab: &Lab, outputs: &BTreeMap<String, String>) -> ControlPlane {
    use serde_json::Value;
    let json = |name: &str| outputs.get(name).and_then(|t| serde_json::from_str::<Value>(t).ok());
    let mut cp = ControlPlane::default();
    for vm in &lab.vms {
        if let Some(Value::Object(peers)) = json(&format!("{}-bgp-summary.json", vm.name)).map(|v| v["peers"].clone()) {
            for (peer, p) in peers {
                let state = p["state"].as_str().unwrap_or("Unknown").to_string();
                cp.sessions.push(Session { speaker: vm.name.clone(), peer, state });
            }
        }
        if let Some(Value::Object(macs)) = json(&format!("{}-evpn-mac.json", vm.name)).map(|v| v["macs"].clone()) {
            for (mac, m) in macs {
                cp.zebra.push(ZebraMac {
                    vm: vm.name.clone(),
                    mac,
                    kind: m["type"].as_str().unwrap_or("?").to_string(),
                    remote_vtep: m["remoteVtep"].as_str().map(str::to_string),
                });
            }
        }
        if let Some(Value::Object(routes)) = json(&format!("rs-adj-in-{}.json", vm.name)) {
            for paths in routes.values() {
                for path in paths.as_array().into_iter().flatten() {
                    let nlri = &path["nlri"];
                    let value = &nlri["value"];
                    let attrs = path["attrs"].as_array().cloned().unwrap_or_default();
                    let next_hop = attrs.iter().find_map(|a| a["nexthop"].as_str()).map(str::to_string);
                    let route_type = nlri["type"].as_u64().unwrap_or(0) as u8;
                    let vni = match route_type {
                        2 => value["labels"].get(0).and_then(Value::as_u64),
                        _ => attrs.iter().find(|a| a["type"] == 22).and_then(|a| a["label"].as_u64()),
                    }
                    .map(|v| v as u32);
                    cp.route_server.push(RsRoute {
                        from: vm.name.clone(),
                        route_type,
                        vni,
                        mac: value["mac"].as_str().map(str::to_string),
                        vtep: (route_type == 3).then(|| value["ip"].as_str().map(str::to_string)).flatten(),
                        next_hop,
                    });
                }
            }
        }
    }
    if let Some(Value::Array(neighbors)) = json("rs-neighbors.json") {
        for n in neighbors {
            let peer = n["conf"]["neighbor_address"].as_str().unwrap_or("?").to_string();
            cp.sessions.push(Session {
                speaker: "route-server".into(),
                peer,
                state: gobgp_state(&n["state"]["session_state"]),
            });
        }
    }
    cp.sessions.sort_by(|a, b| (&a.speaker, &a.peer).cmp(&(&b.speaker, &b.peer)));
    cp.route_server.sort();
    cp.zebra.sort();
    cp
}

/// Judges the control plane: every session up at both ends; the route server
/// holds, from each VM, a type-3 route for its VTEP and a type-2 route for
/// each of its containers' MACs in the lab's VNI; zebra on each VM knows every
/// remote container MAC behind the right VTEP.
pub fn verdict(lab: &Lab, cp: &ControlPlane) -> Vec<Check> {
    vec![sessions_check(lab, cp), routes_check(lab, cp), zebra_check(lab, cp)]
}

/// Every VM's session with the route server is up at both ends.
fn sessions_check(lab: &Lab, cp: &ControlPlane) -> Check {
    let (rs, _) = route_server_link(&settings(lab));
    let mut down = Vec::new();
    for vm in &lab.vms {
        let ok = |speaker: &str, peer: &str| {
            cp.sessions.iter().any(|s| s.speaker == speaker && s.peer == peer && s.state == "Established")
        };
        if !ok(&vm.name, &rs.to_string()) {
            down.push(format!("{} -> route server {rs}", vm.name));
        }
        if let Some(id) = router_id(vm) {
            if !ok("route-server", &id.to_string()) {
                down.push(format!("route server -> {} ({id})", vm.name));
            }
        }
    }
    let sessions: Vec<String> =
        cp.sessions.iter().map(|s| format!("{} - {}: {}", s.speaker, s.peer, s.state)).collect();
    Check::new(
        "EVPN: BGP sessions Established",
        down.is_empty(),
        if down.is_empty() { sessions.join(", ") } else { format!("not Established: {}", down.join(", ")) },
    )
}

/// The route server holds each VM's type-3 route and a type-2 route per
/// container MAC, in the lab's VNI, with the VM's VTEP as next hop.
fn routes_check(lab: &Lab, cp: &ControlPlane) -> Check {
    let vni = vxlan::settings(lab).vni;
    let mut missing = Vec::new();
    for (i, vm) in lab.vms.iter().enumerate() {
        let Some(vtep) = vm.underlay.ipv4.map(|n| n.addr().to_string()) else { continue };
        let from =
            |r: &&RsRoute| r.from == vm.name && r.vni == Some(vni) && r.next_hop.as_deref() == Some(vtep.as_str());
        if !cp.route_server.iter().filter(from).any(|r| r.route_type == 3 && r.vtep.as_deref() == Some(vtep.as_str())) {
            missing.push(format!("type-3 VNI {vni} VTEP {vtep} from {}", vm.name));
        }
        for j in 0..vm.containers.len() {
            let mac = container_mac(i, j);
            if !cp.route_server.iter().filter(from).any(|r| r.route_type == 2 && r.mac.as_deref() == Some(mac.as_str()))
            {
                missing.push(format!("type-2 VNI {vni} MAC {mac} from {}", vm.name));
            }
        }
    }
    Check::new(
        &format!("EVPN: route server holds every VTEP's routes for VNI {vni}"),
        missing.is_empty(),
        if missing.is_empty() {
            format!(
                "{} routes: {} type-2, {} type-3",
                cp.route_server.len(),
                cp.route_server.iter().filter(|r| r.route_type == 2).count(),
                cp.route_server.iter().filter(|r| r.route_type == 3).count()
            )
        } else {
            format!("missing: {}", missing.join("; "))
        },
    )
}

/// Zebra on each VM knows every remote container MAC behind the right VTEP.
fn zebra_check(lab: &Lab, cp: &ControlPlane) -> Check {
    let mut unknown = Vec::new();
    for (want_vm, mac, vtep) in vxlan::expected_entries(lab).into_iter().filter(|(_, m, _)| m != vxlan::FLOOD_MAC) {
        let vtep = vtep.to_string();
        if !cp.zebra.iter().any(|z| {
            z.vm == want_vm && z.mac == mac && z.kind == "remote" && z.remote_vtep.as_deref() == Some(vtep.as_str())
        }) {
            unknown.push(format!("{want_vm}: {mac} behind {vtep}"));
        }
    }
    Check::new(
        "EVPN: zebra learned the remote MACs",
        unknown.is_empty(),
        if unknown.is_empty() {
            let remote: Vec<String> = cp
                .zebra
                .iter()
                .filter(|z| z.kind == "remote")
                .map(|z| format!("{}: {} behind {}", z.vm, z.mac, z.remote_vtep.as_deref().unwrap_or("?")))
                .collect();
            remote.join(", ")
        } else {
            format!("missing: {}", unknown.join("; "))
        },
    )
}
