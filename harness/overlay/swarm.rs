//! Docker Swarm's overlay network (`overlay = "swarm"`), with Docker itself.
//!
//! Each VM runs containerd and dockerd (started by vlab: the guests have no
//! systemd; their logs are artifacts). The manager VM runs `docker swarm
//! init` on its underlay address (control and data path), the others join
//! with its token, and the manager creates one attachable overlay network
//! (`docker network create -d overlay --attachable`) with the containers'
//! subnet. Every lab container is a Docker container on it (`docker run
//! --ip`), made from an image that vlab builds in the guest from the guest's
//! own iperf3 and busybox (`docker import`: no registry is ever asked).
//!
//! Docker's overlay driver puts each network's datapath in a namespace of
//! its own (`/var/run/docker/netns/1-<id>`): a bridge (`br0`) whose ports are
//! the containers' veths and a VXLAN device whose VNI Docker chose (4096 and
//! up); the VXLAN socket stays in the VM's namespace, so the encapsulated
//! traffic leaves through the underlay NIC on UDP 4789. vlab names that
//! namespace `vlab-overlay` (a bind mount under `/run/netns`) and each
//! container's namespace after the container (`ip netns attach`), so that
//! cases enter them like any other.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use super::{
    side_by_side, vxlan, CaptureHints, CaseEvidence, Containers, EnforcementPoint, GuestFile, Overlay, Readiness, Step,
    Variant, Verdict,
};
use crate::guest::{wait_until, Attachment, Netns, CONTAINER_DEV};
use crate::lab::{Family, Issue, Lab, LabError, LabKeys, Seg, Vm};
use crate::report::{list, Check};

/// The `[swarm]` table.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SwarmSettings {
    /// The VM that initialises the swarm and creates the network (default:
    /// the first VM); the others join as workers.
    pub manager: Option<String>,
    /// The overlay network's name (default `vlab`).
    pub network: String,
}

impl Default for SwarmSettings {
    fn default() -> Self {
        SwarmSettings { manager: None, network: "vlab".into() }
    }
}

/// What the overlay reads from a lab file.
#[derive(Debug, Default, Deserialize)]
struct Section {
    #[serde(default)]
    swarm: Option<SwarmSettings>,
}

/// The lab's settings (the defaults without a `[swarm]` table).
pub fn settings(lab: &Lab) -> SwarmSettings {
    lab.section::<Section>().ok().and_then(|s| s.swarm).unwrap_or_default()
}

/// Docker's data path port (VXLAN).
pub const DATA_PORT: u16 = 4789;
/// The name vlab gives the overlay network's namespace in every VM.
pub const OVERLAY_NETNS: &str = "vlab-overlay";
/// The bridge of the overlay network's namespace.
pub const OVERLAY_BRIDGE: &str = "br0";
/// The container image vlab builds in each guest.
pub const IMAGE: &str = "vlab/iperf3";
/// Where daemons' logs and Docker's own evidence are kept in the guests.
const DIR: &str = "/run/vlab/swarm";
/// Where the overlay's evidence goes in the artifacts.
const ARTIFACTS: &str = "swarm";

/// The `swarm` overlay.
pub struct Swarm;

impl Variant for Swarm {
    fn name(&self) -> &'static str {
        "swarm"
    }

    fn lab_keys(&self) -> LabKeys {
        LabKeys { tables: &["swarm"], ..LabKeys::default() }
    }

    fn validate(&self, lab: &Lab) -> Result<(), LabError> {
        // The `[swarm]` table's own errors (an unknown key, a wrong type) name their field.
        let s = lab.section::<Section>()?.swarm.unwrap_or_default();
        validate(lab, &s).map_err(|issue| lab.invalid(issue))
    }

    fn modules(&self) -> &'static [&'static str] {
        &["overlay", "bridge", "br_netfilter", "vxlan", "veth"]
    }

    fn kernel_options(&self) -> &'static [&'static str] {
        &["CGROUPS", "MEMCG", "NETFILTER_XT_MATCH_ADDRTYPE", "IP_NF_NAT", "NETFILTER_XT_TARGET_MASQUERADE", "IP_VS"]
    }

    fn packages(&self) -> &'static [&'static str] {
        &["docker.io", "docker-cli", "containerd", "runc", "iptables"]
    }

    /// Docker's view, recorded at deploy (the nodes on the manager, the
    /// network on every VM), and the overlay namespace's devices now.
    fn evidence_commands(&self, lab: &Lab, vm: &Vm) -> Vec<(String, String)> {
        let mut cmds = vec![
            (format!("{ARTIFACTS}/network-{}.json", vm.name), format!("cat {DIR}/network.json")),
            (format!("{ARTIFACTS}/memory-{}.txt", vm.name), memory_command()),
            (format!("{ARTIFACTS}/dockerd-{}.log", vm.name), format!("cat {DIR}/dockerd.log")),
            (format!("{ARTIFACTS}/containerd-{}.log", vm.name), format!("cat {DIR}/containerd.log")),
            (format!("{ARTIFACTS}/links-{}.json", vm.name), format!("ip -n {OVERLAY_NETNS} -d -j link show")),
        ];
        if vm.name == manager(lab).name {
            cmds.push((format!("{ARTIFACTS}/nodes.json"), format!("cat {DIR}/nodes.json")));
        }
        cmds
    }
}

impl Overlay for Swarm {
    fn containers(&self) -> Containers {
        Containers::Managed
    }

    fn enforcement_points(&self, _lab: &Lab) -> Vec<EnforcementPoint> {
        vec![EnforcementPoint::BridgeIn { netns: Netns::Named(OVERLAY_NETNS.into()), name: OVERLAY_BRIDGE.into() }]
    }

    fn deploy(&self, lab: &Lab, _attachments: &[Attachment]) -> Vec<Step> {
        deploy(lab)
    }

    /// The workload's client container reaches the server container.
    fn readiness(&self, lab: &Lab) -> Option<Readiness> {
        Readiness::first_ping(lab, Family::Ipv4, Duration::from_secs(60))
    }

    fn capture_hints(&self, _lab: &Lab) -> CaptureHints {
        CaptureHints {
            underlay_filter: Some(format!("udp port {DATA_PORT}")),
            vxlan_port: Some(DATA_PORT),
            ..Default::default()
        }
    }

    fn verdict(&self, lab: &Lab, e: &CaseEvidence) -> Verdict {
        let docker = DockerView::read(lab, e);
        let mut checks = vec![nodes_check(lab, &docker)];
        if e.container_to_container() {
            checks.extend(datapath_checks(lab, e, &docker));
        }
        Verdict { checks, section: Some(serde_json::to_value(&docker).unwrap_or_default()) }
    }
}

/// The manager VM.
pub fn manager(lab: &Lab) -> &Vm {
    settings(lab).manager.as_deref().and_then(|n| lab.vm(n)).unwrap_or(&lab.vms[0])
}

/// The overlay network's subnet: the one every container's IPv4 address is in.
pub fn subnet(lab: &Lab) -> Option<Ipv4Net> {
    lab.vms.iter().flat_map(|v| &v.containers).find_map(|c| c.ipv4).map(|n| n.trunc())
}

/// The network's gateway (Docker gives it to the overlay's bridge): the
/// subnet's last host address, so that the first ones stay the lab's.
pub fn gateway(net: Ipv4Net) -> Ipv4Addr {
    net.hosts().last().unwrap_or(net.addr())
}

fn validate(lab: &Lab, s: &SwarmSettings) -> Result<(), Issue> {
    use Seg::{Index, Key};
    if let Some(m) = &s.manager {
        if lab.vm(m).is_none() {
            let names: Vec<_> = lab.vms.iter().map(|v| v.name.as_str()).collect();
            return Err(Issue::new(
                vec![Key("swarm"), Key("manager")],
                format!("no VM `{m}` (VMs: {})", names.join(", ")),
            ));
        }
    }
    if lab.vms.len() < 2 {
        return Err(Issue::new(vec![Key("vm")], "a swarm needs at least two VMs (a manager and a worker)"));
    }
    if !s.network.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') || s.network.is_empty() {
        return Err(Issue::new(
            vec![Key("swarm"), Key("network")],
            format!("`{}`: a network name is letters, digits, `-` and `_`", s.network),
        ));
    }
    let net = subnet(lab);
    for (i, vm) in lab.vms.iter().enumerate() {
        if vm.underlay.ipv4.is_none() {
            return Err(Issue::new(
                vec![Key("vm"), Index(i), Key("underlay")],
                "Docker Swarm advertises IPv4 underlay addresses: add an ipv4 underlay address",
            ));
        }
        for (j, c) in vm.containers.iter().enumerate() {
            let at = vec![Key("vm"), Index(i), Key("container"), Index(j), Key("ipv4")];
            let (Some(addr), Some(net)) = (c.ipv4, net) else {
                return Err(Issue::new(at, "a container on a Docker overlay network needs an ipv4 address"));
            };
            if addr.trunc() != net {
                return Err(Issue::new(at, format!("{addr}: every container must be in one subnet ({net})")));
            }
            if addr.addr() == gateway(net) {
                return Err(Issue::new(
                    at,
                    format!("{}: the network's gateway (the subnet's last address) is Docker's", addr.addr()),
                ));
            }
        }
    }
    Ok(())
}

/// The daemons vlab starts in each VM.
const DAEMONS: [&str; 2] = ["containerd", "dockerd"];

/// Starts a daemon in the background, its output in `DIR/NAME.log` and its
/// pid in `DIR/NAME.pid`, holding no pipe of the agent's open.
fn daemon(name: &str, argv: &str) -> String {
    format!("setsid {argv} </dev/null >{DIR}/{name}.log 2>&1 &\necho $! >{DIR}/{name}.pid")
}

/// Prints `NAME KIB` for each daemon: its resident memory (`VmRSS`), read
/// with shell builtins.
fn memory_command() -> String {
    DAEMONS
        .iter()
        .map(|d| {
            format!(
                "read -r p <{DIR}/{d}.pid && while read -r k v _; do [ \"$k\" = VmRSS: ] && echo \"{d} $v\"; done </proc/$p/status"
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The deploy plan: daemons and image on every VM, the swarm, the network,
/// then each VM's containers.
fn deploy(lab: &Lab) -> Vec<Step> {
    let s = settings(lab);
    let mgr = manager(lab);
    let mgr_addr = mgr.underlay.ipv4.expect("validated").addr();
    let net = subnet(lab).expect("validated");
    // The daemons start, and later the containers run, on every VM at once.
    let mut steps = side_by_side(lab.vms.iter().map(|vm| Step {
        files: vec![GuestFile {
            path: "/etc/docker/daemon.json".into(),
            text: daemon_config(),
            artifact: Some(format!("{ARTIFACTS}/daemon.json")),
        }],
        ..Step::on(&vm.name, start_docker())
    }));
    let addr = |vm: &Vm| vm.underlay.ipv4.expect("validated").addr();
    steps.push(Step {
        output: Some("SWARM_TOKEN".into()),
        ..Step::on(
            &mgr.name,
            vec![
                format!(
                    "docker swarm init --advertise-addr {a} --data-path-addr {a} --listen-addr {a}:2377 >&2",
                    a = mgr_addr
                ),
                "docker swarm join-token -q worker".into(),
            ],
        )
    });
    for vm in lab.vms.iter().filter(|v| v.name != mgr.name) {
        steps.push(Step::on(
            &vm.name,
            vec![format!(
                "docker swarm join --token {{{{SWARM_TOKEN}}}} --advertise-addr {a} --data-path-addr {a} \
                 --listen-addr {a}:2377 {mgr_addr}:2377 >&2",
                a = addr(vm)
            )],
        ));
    }
    let ready = format!("[ \"$(docker node ls --format '{{{{.Status}}}}' | grep -c '^Ready$')\" = {} ]", lab.vms.len());
    steps.push(Step::on(
        &mgr.name,
        vec![
            wait_until(&ready, 60),
            ready.clone(),
            format!("docker node ls --format '{{{{json .}}}}' >{DIR}/nodes.json"),
            format!(
                "docker network create --driver overlay --attachable --subnet {net} --gateway {}{} {} >&2",
                gateway(net),
                // Docker's overlay gives its containers 1450 bytes: an
                // underlay's 1500 less VXLAN over IPv4.
                match lab.mtu {
                    crate::lab::DEFAULT_MTU => String::new(),
                    mtu => format!(" --opt com.docker.network.driver.mtu={}", vxlan::inner_mtu(mtu, Family::Ipv4)),
                },
                s.network
            ),
        ],
    ));
    let containers = lab.vms.iter().map(|vm| {
        let mut cmds = Vec::new();
        for c in &vm.containers {
            let ip = c.ipv4.expect("validated").addr();
            cmds.push(format!(
                "docker run --detach --pull=never --name {n} --hostname {n} --network {net} --ip {ip} {IMAGE} >&2",
                n = c.name,
                net = s.network
            ));
            cmds.push(format!(
                "ip netns attach {n} \"$(docker inspect --format '{{{{.State.Pid}}}}' {n})\"",
                n = c.name
            ));
        }
        // Docker made the network's namespace when the first container
        // joined: `1-` and the network id's first 10 characters (the swarm's
        // `ingress` network has one of the same form).
        cmds.push(format!(
            "id=$(docker network inspect --format '{{{{.Id}}}}' {}); ns=/var/run/docker/netns/1-$(printf %.10s \"$id\")",
            s.network
        ));
        cmds.push(format!(
            "test -e \"$ns\"; mkdir -p /run/netns; touch /run/netns/{OVERLAY_NETNS}; \
             mount --bind \"$ns\" /run/netns/{OVERLAY_NETNS}"
        ));
        cmds.push(format!("docker network inspect {} >{DIR}/network.json", s.network));
        Step::on(&vm.name, cmds)
    });
    steps.extend(side_by_side(containers));
    steps
}

/// dockerd's configuration: no registry mirrors or pulls, logs to files, the
/// default bridge off (containers live on the overlay and docker_gwbridge).
fn daemon_config() -> String {
    serde_json::to_string_pretty(&serde_json::json!({
        "bridge": "none",
        "log-driver": "json-file",
        "storage-driver": "overlay2",
        "data-root": "/var/lib/docker",
        "features": { "buildkit": false }
    }))
    .expect("static JSON")
        + "\n"
}

/// Starts containerd and dockerd, waits until dockerd answers, and makes
/// the container image from the guest's own iperf3 (with its libraries) and
/// busybox (whose `sleep` keeps each container alive).
fn start_docker() -> Vec<String> {
    vec![
        format!("mkdir -p {DIR} /etc/docker"),
        daemon("containerd", "containerd"),
        wait_until("[ -S /run/containerd/containerd.sock ]", 60),
        daemon("dockerd", "dockerd --containerd=/run/containerd/containerd.sock"),
        wait_until("docker version >/dev/null 2>&1", 90),
        "docker version --format '{{.Server.Version}}' >&2".into(),
        format!(
            "files=\"usr/bin/iperf3 usr/bin/busybox $(ldd /usr/bin/iperf3 | grep -o '/[^ ]*' | sed 's|^/||')\"; \
             tar -C / -chf - $files | docker import --change 'ENTRYPOINT [\"/usr/bin/busybox\", \"sleep\", \"infinity\"]' \
             - {IMAGE} >&2"
        ),
    ]
}

/// What Docker said of itself, and what the overlay namespace holds.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DockerView {
    /// Each node's host name and status (`docker node ls`).
    pub nodes: Vec<(String, String)>,
    /// The network's VNI on each VM (`docker network inspect`: the overlay
    /// driver's `vxlanid_list`).
    pub vnis: Vec<(String, Option<u32>)>,
    /// Its subnet and gateway, as Docker reports them (manager).
    pub subnet: Option<String>,
    pub gateway: Option<String>,
    /// The VXLAN device in each VM's overlay namespace: (VM, name, VNI, MTU).
    pub vxlan_devices: Vec<(String, String, u32, u32)>,
    /// Whether each VM's overlay namespace has the bridge.
    pub bridges: Vec<(String, bool)>,
    /// Resident memory of each VM's daemons after the case: (VM, daemon, KiB).
    pub rss_kib: Vec<(String, String, u64)>,
}

impl DockerView {
    fn read(lab: &Lab, e: &CaseEvidence) -> DockerView {
        let out = |name: String| e.outputs.get(&format!("{ARTIFACTS}/{name}")).cloned().unwrap_or_default();
        let mut view = DockerView::default();
        for line in out("nodes.json".into()).lines() {
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(line) {
                let s = |k: &str| v[k].as_str().unwrap_or("").to_string();
                view.nodes.push((s("Hostname"), s("Status")));
            }
        }
        for vm in &lab.vms {
            let net: serde_json::Value =
                serde_json::from_str(&out(format!("network-{}.json", vm.name))).unwrap_or_default();
            let net = &net[0];
            let vni = net["Options"]["com.docker.network.driver.overlay.vxlanid_list"]
                .as_str()
                .and_then(|s| s.split(',').next()?.trim().parse().ok());
            view.vnis.push((vm.name.clone(), vni));
            if vm.name == manager(lab).name {
                let ipam = &net["IPAM"]["Config"][0];
                view.subnet = ipam["Subnet"].as_str().map(String::from);
                view.gateway = ipam["Gateway"].as_str().map(String::from);
            }
            let links: serde_json::Value =
                serde_json::from_str(&out(format!("links-{}.json", vm.name))).unwrap_or_default();
            let mut bridge = false;
            for l in links.as_array().into_iter().flatten() {
                let name = l["ifname"].as_str().unwrap_or("").to_string();
                let kind = l["linkinfo"]["info_kind"].as_str().unwrap_or("");
                match kind {
                    "vxlan" => view.vxlan_devices.push((
                        vm.name.clone(),
                        name,
                        l["linkinfo"]["info_data"]["id"].as_u64().unwrap_or(0) as u32,
                        l["mtu"].as_u64().unwrap_or(0) as u32,
                    )),
                    "bridge" if name == OVERLAY_BRIDGE => bridge = true,
                    _ => {}
                }
            }
            view.bridges.push((vm.name.clone(), bridge));
            for line in out(format!("memory-{}.txt", vm.name)).lines() {
                if let Some((d, kib)) = line.split_once(' ').and_then(|(d, k)| Some((d, k.trim().parse().ok()?))) {
                    view.rss_kib.push((vm.name.clone(), d.to_string(), kib));
                }
            }
        }
        view
    }

    /// The VNI every VM's Docker reports, if they agree.
    fn vni(&self) -> Option<u32> {
        let first = self.vnis.first()?.1?;
        self.vnis.iter().all(|(_, v)| *v == Some(first)).then_some(first)
    }
}

/// Every VM is a Ready node of the swarm (by its host name), and the swarm
/// has no other node.
fn nodes_check(lab: &Lab, docker: &DockerView) -> Check {
    let ready = lab.vms.iter().filter(|vm| docker.nodes.iter().any(|(h, s)| h == &vm.name && s == "Ready")).count();
    let strangers: Vec<&str> = docker.nodes.iter().map(|(h, _)| h.as_str()).filter(|h| lab.vm(h).is_none()).collect();
    let mut detail = format!(
        "{ready} of {} VMs: {}",
        lab.vms.len(),
        list(docker.nodes.iter().map(|(h, s)| format!("{h} {s}")).collect::<Vec<_>>())
    );
    if !strangers.is_empty() {
        detail.push_str(&format!("; not a VM of the lab: {}", strangers.join(", ")));
    }
    Check::new("swarm: every node Ready", ready == lab.vms.len() && strangers.is_empty(), detail)
}

/// The overlay's namespace holds the bridge and a VXLAN device with the
/// network's VNI on every VM; the wire carries that VNI between the
/// underlay addresses with the containers' flow inside, unfragmented; the
/// containers' own captures saw the workload on their overlay interface.
fn datapath_checks(lab: &Lab, e: &CaseEvidence, docker: &DockerView) -> Vec<Check> {
    let mut checks = Vec::new();
    let vni = docker.vni();
    let devices_ok = vni.is_some_and(|v| v >= 4096)
        && lab.vms.iter().all(|vm| {
            docker.bridges.iter().any(|(n, b)| n == &vm.name && *b)
                && docker.vxlan_devices.iter().any(|(n, _, id, _)| n == &vm.name && Some(*id) == vni)
        });
    checks.push(Check::new(
        "swarm: each VM's overlay namespace bridges a VXLAN device with Docker's VNI",
        devices_ok,
        format!(
            "Docker's VNI {}; devices {}; bridges {}",
            vni.map_or("disagrees between VMs or is missing".to_string(), |v| v.to_string()),
            list(
                docker
                    .vxlan_devices
                    .iter()
                    .map(|(vm, n, id, mtu)| format!("{vm} {n} id {id} mtu {mtu}"))
                    .collect::<Vec<_>>()
            ),
            list(
                docker
                    .bridges
                    .iter()
                    .map(|(vm, b)| format!("{vm} {}", if *b { OVERLAY_BRIDGE } else { "none" }))
                    .collect::<Vec<_>>()
            )
        ),
    ));
    let addr = |vm: &str| IpAddr::V4(lab.vm(vm).and_then(|v| v.underlay.ipv4).expect("validated").addr());
    let wire = vxlan::VxlanSettings { vni: vni.unwrap_or(0), port: DATA_PORT, family: Family::Ipv4 };
    checks.extend(vxlan::wire_checks(
        &wire,
        [addr(&e.ends[0].vm), addr(&e.ends[1].vm)],
        [e.ends[0].addr, e.ends[1].addr],
        &e.captures_at(true),
    ));
    let inside: Vec<String> = e
        .captures_at(false)
        .iter()
        .map(|c| {
            format!("{}/{} {}: {} workload packets", c.vm, c.container.as_deref().unwrap_or(""), c.dev, c.workload)
        })
        .collect();
    let crossed = e.captures_at(false).iter().all(|c| c.dev == CONTAINER_DEV && c.workload > 0);
    checks.push(Check::new(
        "swarm: the workload crossed the overlay interface of each container",
        !inside.is_empty() && crossed,
        if inside.is_empty() { "no container captures".into() } else { inside.join(", ") },
    ));
    checks
}
