//! The `cilium-style` overlay: Cilium's datapath mechanism, implemented by
//! vlab (Cilium itself cannot be installed without a registry).
//!
//! Each VM has a collect-metadata VXLAN device (`cilium_vxlan`, UDP 8472 as
//! Cilium's default) and the two tc programs of `bpf/cilium_style.c`, which
//! the image build compiled: `from-container` at the ingress of each
//! container's host-side veth looks the destination up in the ip-cache map
//! and sends the packet into the tunnel with the sender's security identity
//! as the VNI; `from-overlay` at the ingress of the VXLAN device takes the
//! sender's identity from the tunnel key, passes tracked connections, asks
//! the policy map otherwise (filled by the `l4-policy` filter) and delivers
//! to the container's veth. vlab fills the endpoint, ip-cache and config
//! maps with bpftool and reads the programs' counters back.
//!
//! Identities come from the containers' labels (`[cilium_style.labels]`,
//! see [`policy::identities`]). Containers are routed (IPv4): the host-side
//! veth is their gateway, and their MTU leaves room for the encapsulation.

pub mod maps;
pub mod policy;

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{
    side_by_side, CaptureHints, CaseEvidence, Containers, EnforcementPoint, GuestFile, Overlay, Step, Variant, Verdict,
};
use crate::guest::{host_veth, Attachment, CONTAINER_DEV};
use crate::lab::{Family, Issue, Lab, LabError, LabKeys, NicModel, Seg, TrafficPath, Vm};
use crate::report::{list, Check};
use maps::Counter;
use policy::Labels;

/// The VXLAN device.
pub const DEVICE: &str = "cilium_vxlan";

/// The compiled programs in the guest.
fn object() -> String {
    format!("{}/cilium_style.o", crate::image::BPF_DIR)
}

/// The `[cilium_style]` table.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// The VXLAN device's UDP port (default 8472, Cilium's).
    pub port: u16,
    /// Labels of containers, by container name (`c1 = { id = "service1" }`);
    /// a container not listed has the label `container=NAME`.
    pub labels: BTreeMap<String, Labels>,
    /// A version of `bpf/cilium_style.c` of one's own (relative to the lab
    /// file), compiled in each guest by the image's clang at deploy instead
    /// of the image's object: for trying a change without a new image.
    pub source: Option<PathBuf>,
    /// Labels of namespaces, by namespace name (`prod = { team = "db" }`),
    /// besides `kubernetes.io/metadata.name`, which every namespace has.
    pub namespaces: BTreeMap<String, Labels>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings { port: 8472, labels: BTreeMap::new(), source: None, namespaces: BTreeMap::new() }
    }
}

/// Where a lab's own source goes in the guests, and its object.
const CUSTOM_SOURCE: &str = "/tmp/vlab-cilium-style.c";
const CUSTOM_OBJECT: &str = "/tmp/vlab-cilium-style.o";

/// The lab's own program source, if it gives one: its text, or why it
/// cannot be read.
fn custom_source(lab: &Lab) -> Option<Result<String, String>> {
    let path = settings(lab).source?;
    let path = lab.source.parent().map_or(path.clone(), |dir| dir.join(&path));
    Some(std::fs::read_to_string(&path).map_err(|e| format!("cannot read {}: {e}", path.display())))
}

#[derive(Debug, Default, Deserialize)]
struct Section {
    #[serde(default)]
    cilium_style: Option<Settings>,
}

/// The lab's settings (defaults where it has none).
pub fn settings(lab: &Lab) -> Settings {
    lab.section::<Section>().ok().and_then(|s| s.cilium_style).unwrap_or_default()
}

/// Every container of the lab with its labels (see [`crate::overlay::endpoints`]).
pub fn containers(lab: &Lab) -> Vec<(String, Labels)> {
    crate::overlay::endpoints::containers(lab)
}

/// Each container's security identity.
pub fn identities(lab: &Lab) -> BTreeMap<String, u32> {
    policy::identities(&containers(lab))
}

/// The `cilium-style` overlay.
pub struct CiliumStyle;

impl Variant for CiliumStyle {
    fn name(&self) -> &'static str {
        "cilium-style"
    }

    fn lab_keys(&self) -> LabKeys {
        LabKeys { tables: &["cilium_style", "endpoints"], ..LabKeys::default() }
    }

    fn inputs(&self, lab: &Lab) -> Vec<PathBuf> {
        settings(lab).source.into_iter().collect()
    }

    fn validate(&self, lab: &Lab) -> Result<(), LabError> {
        use Seg::{Index, Key};
        let s = lab.section::<Section>()?.cilium_style.unwrap_or_default();
        if s.port == 0 {
            return Err(lab.invalid(Issue::new(vec![Key("cilium_style"), Key("port")], "port 0 is not a port")));
        }
        if let Some(Err(m)) = custom_source(lab) {
            return Err(lab.invalid(Issue::new(vec![Key("cilium_style"), Key("source")], m)));
        }
        let given = crate::overlay::endpoints::Settings { labels: s.labels.clone(), namespaces: s.namespaces.clone() };
        crate::overlay::endpoints::check(lab, "cilium_style", &given)?;
        crate::overlay::endpoints::validate(lab)?;
        for (i, vm) in lab.vms.iter().enumerate() {
            if vm.underlay.ipv4.is_none() {
                return Err(lab.invalid(Issue::new(
                    vec![Key("vm"), Index(i), Key("underlay")],
                    format!("the tunnel endpoint of `{}` needs an ipv4 underlay address", vm.name),
                )));
            }
            if vm.nic.model == NicModel::IgbSriov {
                return Err(lab.invalid(Issue::new(
                    vec![Key("vm"), Index(i), Key("nic"), Key("model")],
                    "containers on SR-IOV VFs bypass the veths where the programs run: use virtio or vfio",
                )));
            }
            for (j, c) in vm.containers.iter().enumerate() {
                if c.ipv4.is_none() {
                    return Err(lab.invalid(Issue::new(
                        vec![Key("vm"), Index(i), Key("container"), Index(j)],
                        "the cilium-style programs carry IPv4: give the container an ipv4 address",
                    )));
                }
            }
        }
        let container_v6 = lab.cases().into_iter().any(|c| {
            c.params.overlay(lab) == self.name()
                && c.params.path == TrafficPath::Container
                && c.params.family == Family::Ipv6
        });
        if container_v6 {
            let field = match lab.matrix.family.iter().flatten().position(|f| *f == Family::Ipv6) {
                Some(j) => vec![Key("matrix"), Key("family"), Index(j)],
                None => vec![Key("workload"), Key("family")],
            };
            let message = "the cilium-style programs carry IPv4: its container cases must be ipv4 \
                           (matrix.exclude can leave the others out)";
            return Err(lab.invalid(Issue::new(field, message)));
        }
        Ok(())
    }

    fn modules(&self) -> &'static [&'static str] {
        &["vxlan", "sch_ingress", "cls_bpf"]
    }

    fn kernel_options(&self) -> &'static [&'static str] {
        &["BPF_SYSCALL", "NET_CLS_ACT"]
    }

    fn packages(&self) -> &'static [&'static str] {
        &["clang", "libbpf-dev", "bpftool", "iproute2"]
    }

    fn evidence_before_commands(&self, _lab: &Lab, vm: &Vm) -> Vec<(String, String)> {
        evidence(vm)
    }

    fn evidence_commands(&self, _lab: &Lab, vm: &Vm) -> Vec<(String, String)> {
        evidence(vm)
    }
}

/// The maps the overlay reads on `vm`, as (artifact, command).
fn evidence(vm: &Vm) -> Vec<(String, String)> {
    ["vlab_metrics", "vlab_denied", "vlab_enforced"].iter().map(|m| (artifact(m, &vm.name), maps::dump(m))).collect()
}

/// The artifact of the enforced map's dump that the `none` filter reads.
fn policy_state_artifact(vm: &str) -> String {
    format!("policy-state-{vm}.json")
}

/// The enforced identities on each VM whose dump (`artifact(vm)`) reads.
fn enforced_on(
    lab: &Lab,
    outputs: &BTreeMap<String, String>,
    artifact: impl Fn(&str) -> String,
) -> BTreeMap<String, Vec<u32>> {
    lab.vms
        .iter()
        .filter_map(|vm| {
            let ids = maps::parse_enforced(outputs.get(&artifact(&vm.name))?).ok()?;
            Some((vm.name.clone(), ids))
        })
        .collect()
}

/// The artifact of `map`'s dump on `vm`.
pub fn artifact(map: &str, vm: &str) -> String {
    format!("{}-{vm}.json", map.replace('_', "-"))
}

impl Overlay for CiliumStyle {
    fn containers(&self) -> Containers {
        Containers::Routed
    }

    fn enforcement_points(&self, _lab: &Lab) -> Vec<EnforcementPoint> {
        vec![EnforcementPoint::TcIngress { device: DEVICE.to_string() }]
    }

    fn hosts_filters(&self, _lab: &Lab) -> Result<(), LabError> {
        Ok(())
    }

    fn deploy(&self, lab: &Lab, _attachments: &[Attachment]) -> Vec<Step> {
        let files = match custom_source(lab) {
            Some(Ok(text)) => {
                let artifact = Some("cilium-style/source.c".to_string());
                vec![GuestFile { path: CUSTOM_SOURCE.into(), text, artifact }]
            }
            _ => Vec::new(),
        };
        side_by_side(lab.vms.iter().map(|vm| Step { files: files.clone(), ..Step::on(&vm.name, commands(lab, vm)) }))
    }

    fn capture_hints(&self, lab: &Lab) -> CaptureHints {
        let port = settings(lab).port;
        CaptureHints { underlay_filter: Some(format!("udp port {port}")), vxlan_port: Some(port), ..Default::default() }
    }

    fn policy_state_commands(&self, _lab: &Lab, vm: &Vm) -> Vec<(String, String)> {
        vec![(policy_state_artifact(&vm.name), maps::dump("vlab_enforced"))]
    }

    /// No identity has a policy on any VM (what the `l4-policy` filter
    /// enforces, and takes out again when removed).
    fn unpoliced(&self, lab: &Lab, outputs: &BTreeMap<String, String>) -> Option<Check> {
        let enforced = enforced_on(lab, outputs, policy_state_artifact);
        let unread: Vec<&str> =
            lab.vms.iter().map(|vm| vm.name.as_str()).filter(|vm| !enforced.contains_key(*vm)).collect();
        let policed: Vec<String> =
            enforced.iter().filter(|(_, ids)| !ids.is_empty()).map(|(vm, ids)| format!("{vm}: {ids:?}")).collect();
        Some(Check::new(
            "cilium-style: no identity has a policy",
            unread.is_empty() && policed.is_empty(),
            match (unread.is_empty(), policed.is_empty()) {
                (false, _) => format!("no readable enforced map from {}", unread.join(", ")),
                (true, true) => format!("the enforced map is empty on {} VMs", lab.vms.len()),
                (true, false) => format!("enforced identities: {}", policed.join("; ")),
            },
        ))
    }

    fn verdict(&self, lab: &Lab, e: &CaseEvidence) -> Verdict {
        if !e.container_to_container() {
            return Verdict::default();
        }
        let ids = identities(lab);
        let (checks, section) = verdict(lab, &ids, e);
        Verdict { checks, section: Some(serde_json::to_value(section).expect("serializable")) }
    }
}

/// The guest commands that deploy the datapath on `vm`: device, programs,
/// then the maps (config, local endpoints, remote endpoints).
pub fn commands(lab: &Lab, vm: &Vm) -> Vec<String> {
    let s = settings(lab);
    let ids = identities(lab);
    let mut cmds = Vec::new();
    let obj = match custom_source(lab) {
        None => object(),
        Some(Ok(_)) => {
            cmds.push(format!(
                "clang -O2 -g -Wall --target=bpf -I/usr/include/x86_64-linux-gnu -c {CUSTOM_SOURCE} -o {CUSTOM_OBJECT}"
            ));
            CUSTOM_OBJECT.to_string()
        }
        Some(Err(m)) => return vec![format!("echo {} >&2; exit 1", crate::guest::quote(&m))],
    };
    let attach = |dev: &str, section: &str| {
        // tc prints the verifier's log when a program is refused.
        format!("tc qdisc add dev {dev} clsact\ntc filter add dev {dev} ingress bpf da obj {obj} sec {section}")
    };
    cmds.extend([
        "mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf".to_string(),
        format!("ip link add {DEVICE} type vxlan external dstport {}", s.port),
        format!("ip link set {DEVICE} up"),
        attach(DEVICE, "from-overlay"),
    ]);
    // The containers and their veths: the underlay's MTU less the VXLAN
    // encapsulation of an IPv4 underlay (50 bytes).
    let inner = crate::overlay::vxlan::inner_mtu(lab.mtu, crate::lab::Family::Ipv4);
    for c in &vm.containers {
        let veth = host_veth(&c.name);
        cmds.push(format!("ip link set {veth} mtu {inner}"));
        cmds.push(format!("ip -n {} link set {CONTAINER_DEV} mtu {inner}", c.name));
        cmds.push(attach(&veth, "from-container"));
    }
    cmds.push("le32() { printf '%02x %02x %02x %02x' $(($1 & 255)) $(($1 >> 8 & 255)) $(($1 >> 16 & 255)) $(($1 >> 24 & 255)); }".into());
    cmds.push(maps::update("vlab_config", &maps::le32(0), &format!("$(le32 $(cat /sys/class/net/{DEVICE}/ifindex))")));
    for c in &vm.containers {
        let Some(addr) = c.ipv4 else { continue };
        let veth = host_veth(&c.name);
        let value = format!(
            "{} $(le32 $(cat /sys/class/net/{veth}/ifindex)) $(ip netns exec {} cat /sys/class/net/{CONTAINER_DEV}/address | tr : ' ') $(tr : ' ' </sys/class/net/{veth}/address)",
            maps::le32(ids[&c.name]),
            c.name
        );
        cmds.push(maps::update("vlab_endpoints", &maps::ipv4_key(addr.addr()), &value));
    }
    for peer in lab.vms.iter().filter(|p| p.name != vm.name) {
        let Some(node) = peer.underlay.ipv4 else { continue };
        for c in &peer.containers {
            let Some(addr) = c.ipv4 else { continue };
            // The tunnel key takes the remote node's address in host order.
            let value = format!("{} {}", maps::le32(u32::from(node.addr())), maps::le32(ids[&c.name]));
            cmds.push(maps::update("vlab_ipcache", &maps::ipv4_key(addr.addr()), &value));
        }
    }
    cmds
}

/// A VM's metrics over the case.
#[derive(Debug, Clone, Serialize)]
pub struct VmMetrics {
    pub vm: String,
    /// Each verdict's packets and bytes during the case.
    pub metrics: BTreeMap<&'static str, Counter>,
}

/// What the overlay's report section holds.
#[derive(Debug, Clone, Serialize)]
pub struct CiliumSection {
    /// Each container's identity.
    pub identities: BTreeMap<String, u32>,
    /// The VNIs the underlay captures saw, each with its inner senders.
    pub vnis: Vec<VniSeen>,
    /// The identities with a policy on each VM.
    pub enforced: BTreeMap<String, Vec<u32>>,
    /// The programs' verdicts during the case.
    pub metrics: Vec<VmMetrics>,
}

/// A VNI and the container its packets came from (an address of no
/// container shows as the address).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct VniSeen {
    pub vni: u32,
    pub sender: String,
}

/// Counters of `vm` during the case, by metric (missing or unreadable dumps
/// give none).
fn metrics_of(e: &CaseEvidence, vm: &str) -> BTreeMap<&'static str, Counter> {
    let name = artifact("vlab_metrics", vm);
    let read = |m: &BTreeMap<String, String>| m.get(&name).and_then(|t| maps::parse_metrics(t).ok());
    let (Some(before), Some(after)) = (read(&e.before), read(&e.outputs)) else { return BTreeMap::new() };
    after.into_iter().map(|(k, v)| (k, v.since(before.get(k).copied().unwrap_or_default()))).collect()
}

/// The counter `metric` of `vm` during the case.
pub fn metric(e: &CaseEvidence, vm: &str, metric: &str) -> u64 {
    metrics_of(e, vm).get(metric).map_or(0, |c| c.packets)
}

fn verdict(lab: &Lab, ids: &BTreeMap<String, u32>, e: &CaseEvidence) -> (Vec<Check>, CiliumSection) {
    let port = settings(lab).port;
    let owner: BTreeMap<IpAddr, &str> = lab
        .vms
        .iter()
        .flat_map(|vm| vm.containers.iter())
        .filter_map(|c| Some((IpAddr::V4(c.ipv4?.addr()), c.name.as_str())))
        .collect();
    let underlay = e.captures_at(true);
    let seen: BTreeSet<VniSeen> = underlay
        .iter()
        .filter_map(|c| c.vxlan.as_ref())
        .flat_map(|v| v.senders.iter())
        .map(|s| VniSeen { vni: s.vni, sender: owner.get(&s.src).map_or(s.src.to_string(), |n| n.to_string()) })
        .collect();
    let vnis: Vec<VniSeen> = seen.into_iter().collect();
    let mut checks = Vec::new();
    // Every VNI on the wire is its sender's identity, and both ends sent.
    let ends: Vec<&str> = e.ends.iter().filter_map(|end| end.container.as_deref()).collect();
    let wrong: Vec<String> = vnis
        .iter()
        .filter(|v| ids.get(&v.sender) != Some(&v.vni))
        .map(|v| format!("VNI {} from {}", v.vni, v.sender))
        .collect();
    let missing: Vec<&str> = ends.iter().copied().filter(|c| !vnis.iter().any(|v| v.sender == *c)).collect();
    let shown = vnis.iter().map(|v| {
        format!("{} from {} (identity {})", v.vni, v.sender, ids.get(&v.sender).map_or("none".into(), u32::to_string))
    });
    checks.push(Check::new(
        "cilium-style: the VNI is the sender's identity, both ways",
        wrong.is_empty() && missing.is_empty(),
        match (wrong.is_empty(), missing.is_empty()) {
            (true, true) => format!("UDP {port}: {}", list(shown)),
            (false, _) => format!("not the sender's identity: {}", wrong.join(", ")),
            (true, false) => format!("no encapsulated packet from {}", missing.join(", ")),
        },
    ));
    let nodes: BTreeSet<IpAddr> =
        e.ends.iter().filter_map(|end| lab.vm(&end.vm)?.underlay.ipv4.map(|n| IpAddr::V4(n.addr()))).collect();
    let tunnels: Vec<String> = underlay
        .iter()
        .filter_map(|c| c.vxlan.as_ref())
        .flat_map(|v| v.tunnels.iter())
        .map(|t| format!("{} > {}", t.src, t.dst))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let between_nodes = underlay
        .iter()
        .filter_map(|c| c.vxlan.as_ref())
        .flat_map(|v| v.tunnels.iter())
        .all(|t| nodes.contains(&t.src) && nodes.contains(&t.dst));
    checks.push(Check::new(
        "cilium-style: tunnels run between the nodes' underlay addresses",
        !tunnels.is_empty() && between_nodes,
        if tunnels.is_empty() { format!("no VXLAN packet on UDP {port}") } else { tunnels.join(", ") },
    ));
    // The client opens every connection: what the server sends back is
    // tracked as replies on both VMs.
    let (server_vm, client_vm) = (&e.ends[0].vm, &e.ends[1].vm);
    let metrics: Vec<VmMetrics> =
        lab.vms.iter().map(|vm| VmMetrics { vm: vm.name.clone(), metrics: metrics_of(e, &vm.name) }).collect();
    let packets = |vm: &str, name: &str| {
        let of_vm = metrics.iter().find(|m| m.vm == vm);
        of_vm.and_then(|m| m.metrics.get(name)).map_or(0, |c| c.packets)
    };
    let sent = packets(client_vm, "to_overlay");
    let replies = packets(client_vm, "ct_reply");
    let (back, back_replies) = (packets(server_vm, "to_overlay"), packets(server_vm, "reply_to_overlay"));
    let established = packets(server_vm, "ct_established");
    checks.push(Check::new(
        "cilium-style: the programs carried the flow, tracked both ways",
        sent > 0 && established > 0 && back > 0 && back_replies > 0 && replies > 0,
        format!(
            "{client_vm}: {sent} packets into the tunnel; {server_vm}: {established} of them passed by connection \
             tracking, {back} sent back ({back_replies} tracked as replies); {client_vm}: {replies} replies passed \
             by connection tracking"
        ),
    ));
    let enforced = enforced_on(lab, &e.outputs, |vm| artifact("vlab_enforced", vm));
    (checks, CiliumSection { identities: ids.clone(), vnis, enforced, metrics })
}
