//! The lab file: a typed model of one experiment, its validation and its matrix.
//!
//! A lab names the guest image, the VMs with their NICs, underlay addresses and
//! containers, the overlay that connects the containers, the workload, and an
//! optional matrix of workload parameters; every combination of the matrix is a
//! [`Case`]. Parsing rejects unknown keys; [`Lab::load`] then runs one
//! validation pass whose errors name the file, line, column and field.
//!
//! The datapath variants are only names here: what they own in a lab file
//! (tables, keys of a VM, matrix axes) is claimed and validated through
//! [`Variants`], which the loader is given by the registry.

mod error;
mod matrix;
pub(crate) mod suggest;
mod validate;
mod variants;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::{Ipv4Net, Ipv6Net};
use serde::{Deserialize, Serialize};

pub(crate) use error::{Issue, Seg};
pub use error::{LabError, Location};
pub use matrix::{Case, CaseParams};
pub use variants::{Kind, LabKeys, Place, Variants};

/// One experiment, as written in a lab file.
///
/// The datapath variants (overlay and filter) are named here, not modelled:
/// each variant reads its own settings from the lab's document (its tables,
/// its keys on a VM, its matrix axes) and validates them, through the
/// [`Variants`] the loader is given. Unknown keys are refused either way.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct Lab {
    /// Short name, used in reports and in host resource names.
    pub name: String,
    /// Free text shown in reports.
    #[serde(default)]
    pub description: String,
    /// Image recipe: a name under `images/` (`base` means `images/base.toml`) or a path.
    #[serde(default = "default_image")]
    pub image: String,
    /// How containers on different VMs reach each other: the name of an
    /// overlay variant (default `baseline`, plain routing).
    #[serde(default = "default_overlay")]
    pub overlay: String,
    /// What filters the containers' traffic where the overlay forwards it: the
    /// name of a filter variant (default `none`).
    #[serde(default = "default_filter")]
    pub filter: String,
    /// Kernel options the lab needs besides its variants' (`KASAN`, or
    /// `CONFIG_KASAN`): a booted kernel without one cannot test the lab (exit
    /// 125, untestable).
    #[serde(default)]
    pub kernel_options: Vec<String>,
    /// The underlay's MTU, bytes (default 1500): every VM's NIC, the host
    /// taps that carry it, and the guest's underlay interface; each overlay
    /// gives its containers this minus its own headers (VXLAN's 50 or 70).
    #[serde(default = "default_mtu")]
    pub mtu: u32,
    /// Deadlines for the phases of a run.
    #[serde(default)]
    pub timeouts: Timeouts,
    /// The VMs, booted together on one underlay.
    #[serde(rename = "vm")]
    pub vms: Vec<Vm>,
    /// The traffic pushed through the lab in every case.
    pub workload: Workload,
    /// Workload parameters to vary; each combination is one case.
    #[serde(default)]
    pub matrix: Matrix,
    /// Bounds that every case must meet.
    #[serde(default)]
    pub expect: Expect,
    /// Packet captures taken during every case's workload.
    #[serde(default)]
    pub capture: Option<Capture>,
    /// The matrix axes the variants add (set by the loader).
    #[serde(skip)]
    pub variant_axes: Vec<VariantAxis>,
    /// Where the lab was read from (set by [`Lab::load`]).
    #[serde(skip)]
    pub source: PathBuf,
    /// The file's text, to locate errors found after parsing and to read
    /// the variants' settings from.
    #[serde(skip)]
    source_text: String,
}

fn default_image() -> String {
    "base".into()
}

/// The default overlay; the registry checks that it is registered.
pub const DEFAULT_OVERLAY: &str = "baseline";
/// The default filter; the registry checks that it is registered.
pub const DEFAULT_FILTER: &str = "none";

/// The underlay MTU of a lab that sets none: Ethernet's.
pub const DEFAULT_MTU: u32 = 1500;

fn default_mtu() -> u32 {
    DEFAULT_MTU
}

fn default_overlay() -> String {
    DEFAULT_OVERLAY.into()
}
fn default_filter() -> String {
    DEFAULT_FILTER.into()
}

/// Deadlines for the phases of a run.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Timeouts {
    /// From QEMU start until the guest agent answers (default 120 s: TCG is slow).
    #[serde(with = "humantime_serde")]
    pub boot: Duration,
    /// Any single command in a guest, beyond the workload's own duration (default 60 s).
    #[serde(with = "humantime_serde")]
    pub command: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts { boot: Duration::from_secs(120), command: Duration::from_secs(60) }
    }
}

/// One VM of the lab. Variants may own more keys of a VM (`locator`).
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct Vm {
    /// Host name of the guest; also names its containers' endpoints (`host1/c1`).
    pub name: String,
    /// Virtual CPUs (default 2).
    #[serde(default = "default_cpus")]
    pub cpus: u32,
    /// QEMU CPU model (`-cpu`); default `host` under KVM and `qemu64` under TCG.
    #[serde(default)]
    pub cpu_model: Option<String>,
    /// Guest memory in MiB (default 1024).
    #[serde(default = "default_memory_mib")]
    pub memory_mib: u32,
    /// The underlay NIC.
    #[serde(default)]
    pub nic: Nic,
    /// Addresses of the underlay NIC (at least one family).
    pub underlay: Addresses,
    /// Containers hosted by this VM.
    #[serde(default, rename = "container")]
    pub containers: Vec<Container>,
    /// Shell commands run in the guest after the overlay is up, before any case.
    #[serde(default)]
    pub setup: Vec<String>,
}

fn default_cpus() -> u32 {
    2
}
fn default_memory_mib() -> u32 {
    1024
}

/// The underlay NIC of a VM.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Nic {
    /// NIC model (default `virtio`).
    #[serde(default)]
    pub model: NicModel,
    /// `virtio` only: queue pairs (1..=8, default 2); the guest enables them all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queues: Option<u32>,
    /// `igb-sriov` only: virtual functions to create (1..=7, default 1 per
    /// container); each container gets one in its namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vfs: Option<u32>,
    /// `vfio` only: the host PCI function to pass through (`0000:3b:02.0`),
    /// bound to vfio-pci.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// `virtio` only: UDP-tunnel segmentation by the emulated NIC (QEMU's
    /// `host_tunnel`, `host_tunnel_csum`, `guest_tunnel`, `guest_tunnel_csum`;
    /// QEMU 10.1 or later), on or off; absent: QEMU's default. With it a
    /// VXLAN flow can cross the NIC as large segments, as routing's does.
    /// A property of the device, fixed at boot (the `offloads` setting is
    /// the guest's, applied per case).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub udp_tunnel: Option<bool>,
}

impl Nic {
    /// Queue pairs QEMU gives the NIC (virtio: as configured; others: 1).
    pub fn queues(&self) -> u32 {
        match self.model {
            NicModel::Virtio => self.queues.unwrap_or(2),
            _ => 1,
        }
    }

    /// Short name used in case names: `virtio-q4`, `virtio-q2-udp-tunnel`,
    /// `virtio-q2-no-udp-tunnel`, `igb-sriov-vf2`, `vfio-0000:3b:02.0`.
    pub fn label(&self) -> String {
        match self.model {
            NicModel::Virtio => {
                let tunnel = match self.udp_tunnel {
                    None => "",
                    Some(true) => "-udp-tunnel",
                    Some(false) => "-no-udp-tunnel",
                };
                format!("virtio-q{}{tunnel}", self.queues())
            }
            NicModel::IgbSriov => format!("igb-sriov-vf{}", self.vfs.unwrap_or(0)),
            NicModel::Vfio => format!("vfio-{}", self.host.as_deref().unwrap_or("?")),
        }
    }
}

/// NIC models.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum NicModel {
    /// virtio-net over a (multiqueue) tap (`mq=on`, `vectors=2N+2`).
    #[default]
    Virtio,
    /// QEMU's emulated Intel 82576 (`igb`, QEMU >= 8) on a PCIe root port; the
    /// guest creates virtual functions and moves one into each container.
    IgbSriov,
    /// Passthrough of a host PCI function (a real SR-IOV VF on hardware labs).
    Vfio,
}

/// NIC offload settings applied with `ethtool -K` to the underlay NIC and the
/// containers' interfaces: `"default"` (leave the driver's), `"on"`, `"off"`, or
/// a table of features, e.g. `{ tso = false, gro = true }`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum Offloads {
    /// All features at once.
    Preset(OffloadPreset),
    /// Feature by feature; absent ones keep the driver's setting.
    Features(OffloadFeatures),
}

impl<'de> Deserialize<'de> for Offloads {
    // By hand rather than `untagged`: a wrong preset or feature name gets
    // serde's precise message (with the valid names), not "no variant matched".
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Offloads;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("\"default\", \"on\", \"off\" or a table such as { tso = false }")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Offloads, E> {
                OffloadPreset::deserialize(serde::de::value::StrDeserializer::<E>::new(v)).map(Offloads::Preset)
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<Offloads, A::Error> {
                OffloadFeatures::deserialize(serde::de::value::MapAccessDeserializer::new(map)).map(Offloads::Features)
            }
        }
        d.deserialize_any(V)
    }
}

impl Default for Offloads {
    fn default() -> Self {
        Offloads::Preset(OffloadPreset::Default)
    }
}

/// Offload presets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum OffloadPreset {
    /// Leave the driver's defaults.
    Default,
    /// Every feature on (the driver may refuse some).
    On,
    /// Every feature off.
    Off,
}

/// Per-feature offload settings (`ethtool -K DEV FEATURE on|off`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct OffloadFeatures {
    /// Transmit checksumming (`tx`).
    pub tx: Option<bool>,
    /// Receive checksumming (`rx`).
    pub rx: Option<bool>,
    /// TCP segmentation offload (`tso`).
    pub tso: Option<bool>,
    /// Generic segmentation offload (`gso`).
    pub gso: Option<bool>,
    /// Generic receive offload (`gro`).
    pub gro: Option<bool>,
    /// Large receive offload (`lro`).
    pub lro: Option<bool>,
}

/// The `ethtool -K` feature names vlab controls, in display order.
pub const OFFLOAD_FEATURES: [&str; 6] = ["tx", "rx", "tso", "gso", "gro", "lro"];

impl Offloads {
    /// The requested state of each feature (`None`: leave as is).
    pub fn requested(&self) -> Vec<(&'static str, Option<bool>)> {
        match self {
            Offloads::Preset(OffloadPreset::Default) => OFFLOAD_FEATURES.iter().map(|f| (*f, None)).collect(),
            Offloads::Preset(OffloadPreset::On) => OFFLOAD_FEATURES.iter().map(|f| (*f, Some(true))).collect(),
            Offloads::Preset(OffloadPreset::Off) => OFFLOAD_FEATURES.iter().map(|f| (*f, Some(false))).collect(),
            Offloads::Features(x) => {
                let v = [x.tx, x.rx, x.tso, x.gso, x.gro, x.lro];
                OFFLOAD_FEATURES.iter().zip(v).map(|(f, s)| (*f, s)).collect()
            }
        }
    }

    /// Short name used in case names: `on`, `off`, `default`, `tso-off+gro-on`.
    pub fn label(&self) -> String {
        match self {
            Offloads::Preset(p) => variant_name(p),
            Offloads::Features(_) => self
                .requested()
                .into_iter()
                .filter_map(|(f, s)| s.map(|on| format!("{f}-{}", if on { "on" } else { "off" })))
                .collect::<Vec<_>>()
                .join("+"),
        }
    }
}

/// Addresses of one interface, with their prefix length.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Addresses {
    /// IPv4 address and prefix, e.g. `10.0.0.1/24`.
    pub ipv4: Option<Ipv4Net>,
    /// IPv6 address and prefix, e.g. `fd00::1/64`.
    pub ipv6: Option<Ipv6Net>,
}

impl Addresses {
    /// The address of the given family, if configured.
    pub fn get(&self, family: Family) -> Option<IpAddr> {
        match family {
            Family::Ipv4 => self.ipv4.map(|n| IpAddr::V4(n.addr())),
            Family::Ipv6 => self.ipv6.map(|n| IpAddr::V6(n.addr())),
        }
    }
}

/// A container: a network namespace in the guest joined to it by a veth pair.
/// The guest side of the veth takes the first address of each container subnet
/// and is the container's default gateway; a container with a single IPv6
/// address (`/128`) has the link-local gateway `fe80::1` instead, as routed
/// CNIs do.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Container {
    /// Name of the namespace (`[a-z0-9-]`, at most 10 characters).
    pub name: String,
    /// IPv4 address and prefix; the subnet's first address is the gateway.
    pub ipv4: Option<Ipv4Net>,
    /// IPv6 address and prefix; the subnet's first address is the gateway.
    pub ipv6: Option<Ipv6Net>,
}

/// The gateway of containers with a `/128` IPv6 address.
pub const LINK_LOCAL_GATEWAY: std::net::Ipv6Addr = std::net::Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1);

impl Container {
    /// The container's address of the given family, if configured.
    pub fn address(&self, family: Family) -> Option<IpAddr> {
        match family {
            Family::Ipv4 => self.ipv4.map(|n| IpAddr::V4(n.addr())),
            Family::Ipv6 => self.ipv6.map(|n| IpAddr::V6(n.addr())),
        }
    }

    /// The gateway (guest-side veth) address of the given family.
    pub fn gateway(&self, family: Family) -> Option<IpAddr> {
        match family {
            Family::Ipv4 => self.ipv4.and_then(|n| n.hosts().next()).map(IpAddr::V4),
            Family::Ipv6 => self.ipv6.map(|n| {
                if n.prefix_len() == 128 {
                    return IpAddr::V6(LINK_LOCAL_GATEWAY);
                }
                let base = u128::from(n.network());
                IpAddr::V6((base + 1).into())
            }),
        }
    }
}

/// An iperf3 endpoint: `VM` (the guest itself) or `VM/CONTAINER`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(try_from = "String", into = "String")]
pub struct Endpoint {
    /// The VM.
    pub vm: String,
    /// The container on it, if any.
    pub container: Option<String>,
}

impl TryFrom<String> for Endpoint {
    type Error = String;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        let mut parts = s.splitn(2, '/');
        let vm = parts.next().unwrap_or_default().to_string();
        let container = parts.next().map(str::to_string);
        if vm.is_empty() || container.as_deref() == Some("") {
            return Err(format!("endpoint `{s}` must be `VM` or `VM/CONTAINER`"));
        }
        Ok(Endpoint { vm, container })
    }
}

impl From<Endpoint> for String {
    fn from(e: Endpoint) -> String {
        match e.container {
            Some(c) => format!("{}/{}", e.vm, c),
            None => e.vm,
        }
    }
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&String::from(self.clone()))
    }
}

/// The most connections a case may time (`[workload] connects`).
pub const MAX_CONNECTS: u32 = 10_000;

/// The traffic of every case: iperf3 from `client` to `server`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Workload {
    /// Where `iperf3 -s` runs: a container (`host1/c1`).
    pub server: Endpoint,
    /// Where `iperf3 -c` runs: a container on another VM (`host2/c2`).
    pub client: Endpoint,
    /// Length of each measurement (default 5 s).
    #[serde(default = "default_duration", with = "humantime_serde")]
    pub duration: Duration,
    /// Parallel streams (`-P`, default 1).
    #[serde(default = "default_streams")]
    pub streams: u32,
    /// Transport protocol (default tcp).
    #[serde(default)]
    pub protocol: Protocol,
    /// Who sends (default forward: client to server).
    #[serde(default)]
    pub direction: Direction,
    /// Which addresses carry the traffic (default container).
    #[serde(default)]
    pub path: TrafficPath,
    /// Address family (default ipv4).
    #[serde(default)]
    pub family: Family,
    /// Target bitrate for UDP (`-b`, default 1G); TCP is unpaced.
    #[serde(default = "default_udp_bitrate")]
    pub udp_bitrate: Bitrate,
    /// Server port (default 5201).
    #[serde(default = "default_port")]
    pub port: u16,
    /// A second port that a listener in the server's endpoint opens during
    /// each case; after the workload the client tries one TCP connection to
    /// it, which a filter's policy should drop (none: no probe).
    #[serde(default)]
    pub probe_port: Option<u16>,
    /// A container (on another VM than the server's) that, after the
    /// workload, tries one TCP connection to the server's workload port: a
    /// policy that admits only the client's identity drops it (none: no such
    /// attempt).
    #[serde(default)]
    pub intruder: Option<Endpoint>,
    /// NIC offloads for every case (default: the drivers' defaults).
    #[serde(default)]
    pub offloads: Offloads,
    /// After the flow, new TCP connections from the client to the server's
    /// port, one after the other, each timed to its first answer: the
    /// new-connection latency (`measure::connect`; 0, the default: none).
    #[serde(default)]
    pub connects: u32,
}

fn default_duration() -> Duration {
    Duration::from_secs(5)
}
fn default_streams() -> u32 {
    1
}
fn default_port() -> u16 {
    5201
}
fn default_udp_bitrate() -> Bitrate {
    Bitrate(1_000_000_000)
}

/// Transport protocol of the workload.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Protocol {
    /// TCP (default).
    #[default]
    Tcp,
    /// UDP at `udp_bitrate`.
    Udp,
}

/// Direction of the workload's data.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Direction {
    /// Client sends to server (default).
    #[default]
    Forward,
    /// Server sends to client (`-R`).
    Reverse,
    /// Both at once (`--bidir`).
    Bidir,
}

/// Which pair of addresses carries the traffic.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum TrafficPath {
    /// Container to container, through the overlay (default).
    #[default]
    Container,
    /// Guest to guest over the underlay addresses, bypassing containers and overlay.
    Underlay,
}

/// Address family.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Family {
    /// IPv4 (default).
    #[default]
    Ipv4,
    /// IPv6.
    Ipv6,
}

/// The axes of the matrix; an absent axis keeps the workload's value.
/// Variants may add axes of their own (`csum_mode`, `hook`).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct Matrix {
    /// Values of `workload.path`.
    pub path: Option<Vec<TrafficPath>>,
    /// Values of `workload.family`.
    pub family: Option<Vec<Family>>,
    /// Values of `workload.streams`.
    pub streams: Option<Vec<u32>>,
    /// Values of `workload.protocol`.
    pub protocol: Option<Vec<Protocol>>,
    /// Values of `workload.direction`.
    pub direction: Option<Vec<Direction>>,
    /// Values of `workload.offloads`.
    pub offloads: Option<Vec<Offloads>>,
    /// NICs to compare: each value replaces every VM's `nic` (one boot per value).
    pub nic: Option<Vec<Nic>>,
    /// Underlay MTUs to compare: each value replaces `mtu` (one boot per value).
    pub mtu: Option<Vec<u32>>,
    /// Overlays to compare in one run: each value replaces `overlay` (one
    /// boot per value); each must be valid with the lab's addressing.
    pub overlay: Option<Vec<String>>,
    /// Filters to compare: each value replaces `filter` (one boot per value).
    pub filter: Option<Vec<String>>,
    /// Combinations not to run: a case is left out when it has every
    /// `axis = value` of an entry (values as case names write them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exclude: Vec<BTreeMap<String, AxisValue>>,
}

/// A value of an axis in `matrix.exclude`: a string or a number, as the
/// axis lists it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(untagged)]
pub enum AxisValue {
    Text(String),
    Number(i64),
}

impl std::fmt::Display for AxisValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AxisValue::Text(t) => f.write_str(t),
            AxisValue::Number(n) => write!(f, "{n}"),
        }
    }
}

/// A matrix axis that a variant adds (`csum-mode` of the ila overlay): its
/// values apply to the cases of that variant only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VariantAxis {
    /// The variant that owns the axis.
    pub owner: String,
    /// The axis name in case names (`csum-mode`).
    pub key: String,
    /// The values, as written in lab files.
    pub values: Vec<String>,
}

/// Packet captures (tcpdump in the guests) during each case's workload, kept
/// as `<case>/<vm>-<interface>.pcap` under `--artifacts` and summarised.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Capture {
    /// Where: `underlay` (each endpoint VM's underlay NIC), `container` (each
    /// endpoint container's `eth0`), or both.
    pub points: Vec<CapturePoint>,
    /// Packets kept per capture point (default 200).
    #[serde(default = "default_capture_packets")]
    pub packets: u32,
    /// Bytes kept per packet (default 128: the headers).
    #[serde(default = "default_snaplen")]
    pub snaplen: u32,
}

fn default_capture_packets() -> u32 {
    200
}
fn default_snaplen() -> u32 {
    128
}

/// A capture point.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum CapturePoint {
    /// The endpoint VM's underlay NIC.
    Underlay,
    /// The endpoint container's interface.
    Container,
}

/// Bounds every case must meet.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    /// Least receiver throughput, e.g. `"500Mbit"`; no bound when absent.
    pub min_throughput: Option<Bitrate>,
}

/// A bit rate in bits per second, written as `"2.5Gbit"`, `"800Mbit"`, `"1000"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize, Serialize)]
#[serde(try_from = "String", into = "String")]
pub struct Bitrate(pub u64);

impl TryFrom<String> for Bitrate {
    type Error = String;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        let t = s.trim();
        let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let mult = match unit.trim() {
            "" | "bit" | "bps" => 1.0,
            "K" | "Kbit" | "kbit" => 1e3,
            "M" | "Mbit" => 1e6,
            "G" | "Gbit" => 1e9,
            other => return Err(format!("bit rate `{s}`: unknown unit `{other}` (use bit, Kbit, Mbit or Gbit)")),
        };
        let value: f64 =
            num.parse().map_err(|_| format!("bit rate `{s}` is not a number with a unit such as `500Mbit`"))?;
        Ok(Bitrate((value * mult).round() as u64))
    }
}

impl From<Bitrate> for String {
    fn from(b: Bitrate) -> String {
        b.to_string()
    }
}

impl std::fmt::Display for Bitrate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let v = self.0 as f64;
        match self.0 {
            n if n >= 1_000_000_000 => write!(f, "{}Gbit", trim_float(v / 1e9)),
            n if n >= 1_000_000 => write!(f, "{}Mbit", trim_float(v / 1e6)),
            n if n >= 1_000 => write!(f, "{}Kbit", trim_float(v / 1e3)),
            n => write!(f, "{n}bit"),
        }
    }
}

fn trim_float(v: f64) -> String {
    let s = format!("{v:.3}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// The name a variant has in lab files (`ipv4`, `container`, ...).
pub fn variant_name<T: Serialize>(value: &T) -> String {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(s)) => s,
        Ok(other) => other.to_string(),
        Err(_) => String::from("?"),
    }
}

impl Lab {
    /// Reads, parses and validates a lab file.
    pub fn load(path: &Path, variants: &dyn Variants) -> Result<Lab, LabError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| LabError::Read { path: path.to_path_buf(), source })?;
        Lab::parse(&text, path, variants)
    }

    /// Parses and validates lab text; `path` is used in error messages only.
    pub fn parse(text: &str, path: &Path, variants: &dyn Variants) -> Result<Lab, LabError> {
        let mut ignored = Vec::new();
        let de = toml::Deserializer::parse(text).map_err(|e| match validate::header_mistake(text, variants) {
            Some((at, issue)) => LabError::header_mistake(path, text, at, issue, &e),
            None => LabError::from_toml(path, text, &e),
        })?;
        let parsed: Result<Lab, _> = serde_ignored::deserialize(de, |p| ignored.push(validate::ignored_key(&p)));
        let mut lab = match parsed {
            Ok(lab) => lab,
            // An unknown key at the top, in a VM or in the matrix is the
            // mistake, rather than what serde stopped at (`[vmm]` leaves `vm`
            // missing).
            Err(e) => match validate::unknown_key(text, &validate::document_keys(text), variants) {
                Some(issue) => return Err(LabError::invalid(path, text, issue)),
                None => return Err(LabError::from_toml(path, text, &e)),
            },
        };
        lab.source = path.to_path_buf();
        lab.source_text = text.to_string();
        let located = |issue| LabError::invalid(path, text, issue);
        validate::validate_names(&lab, variants).map_err(located)?;
        validate::claimed(&lab, &ignored, variants).map_err(located)?;
        validate::validate(&lab, variants).map_err(located)?;
        variants.validate(&lab)?;
        lab.variant_axes = variants.axes(&lab)?;
        validate::validate_cases(&lab).map_err(located)?;
        variants.validate_pairs(&lab)?;
        Ok(lab)
    }

    /// Checks what depends on this host's QEMU, e.g. that igb-sriov NICs
    /// have QEMU 8.0 or later.
    pub fn check_host(&self, qemu: &crate::qemu::HostQemu) -> Result<(), LabError> {
        validate::validate_host(self, qemu).map_err(|issue| self.invalid(issue))
    }

    /// A validation finding located in this lab's file.
    pub(crate) fn invalid(&self, issue: Issue) -> LabError {
        LabError::invalid(&self.source, &self.source_text, issue)
    }

    /// The part of the lab file a variant owns, read as `T` (a struct of the
    /// tables, VM keys and matrix axes it owns; other keys are passed over).
    /// Errors name the file, line, column and field like any other.
    pub fn section<T: serde::de::DeserializeOwned>(&self) -> Result<T, LabError> {
        toml::from_str(&self.source_text).map_err(|e| LabError::from_toml(&self.source, &self.source_text, &e))
    }

    /// This lab with another overlay (a value of the `overlay` matrix axis).
    pub fn with_overlay(&self, overlay: &str) -> Lab {
        Lab { overlay: overlay.to_string(), ..self.clone() }
    }

    /// This lab as a pair's warm-up runs it: with `filter`, a workload of
    /// `duration`, no captures and no probe.
    pub fn warm_up(&self, filter: &str, duration: std::time::Duration) -> Lab {
        let mut lab = self.with_filter(filter);
        lab.workload.duration = duration;
        lab.workload.probe_port = None;
        lab.workload.intruder = None;
        lab.capture = None;
        lab
    }

    /// This lab with another underlay MTU (a value of the `mtu` matrix axis).
    pub fn with_mtu(&self, mtu: u32) -> Lab {
        Lab { mtu, ..self.clone() }
    }

    /// This lab with another filter (a value of the `filter` matrix axis).
    pub fn with_filter(&self, filter: &str) -> Lab {
        Lab { filter: filter.to_string(), ..self.clone() }
    }

    /// The lab of one case as its pair runs it: the case's MTU, overlay and
    /// filter.
    pub fn for_case(&self, case: &Case) -> Lab {
        let l = case.params.overlay.as_deref().map_or_else(|| self.clone(), |o| self.with_overlay(o));
        let l = case.params.mtu.map_or_else(|| l.clone(), |m| l.with_mtu(m));
        let filter = case.params.filter(&l).to_string();
        l.with_filter(&filter)
    }

    /// The overlays this lab runs: the `overlay` axis, or its overlay.
    pub fn overlays(&self) -> Vec<&str> {
        match &self.matrix.overlay {
            Some(v) => v.iter().map(String::as_str).collect(),
            None => vec![self.overlay.as_str()],
        }
    }

    /// The filters this lab runs: the `filter` axis, or its filter.
    pub fn filters(&self) -> Vec<&str> {
        match &self.matrix.filter {
            Some(v) => v.iter().map(String::as_str).collect(),
            None => vec![self.filter.as_str()],
        }
    }

    /// The VM with this name.
    pub fn vm(&self, name: &str) -> Option<&Vm> {
        self.vms.iter().find(|v| v.name == name)
    }

    /// The image recipe file this lab uses, resolved against `images_dir`.
    pub fn image_recipe(&self, images_dir: &Path) -> PathBuf {
        if self.image.contains('/') || self.image.ends_with(".toml") {
            let p = PathBuf::from(&self.image);
            match (p.is_relative(), self.source.parent()) {
                (true, Some(dir)) if !dir.as_os_str().is_empty() => dir.join(p),
                _ => p,
            }
        } else {
            images_dir.join(format!("{}.toml", self.image))
        }
    }
}
