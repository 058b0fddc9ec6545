//! NIC evidence read from the guests: driver, channels, VFs and the offload
//! state the driver really accepted (`ethtool -i/-l/-k`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::counters::Counters;
use crate::guest::Netns;

/// The long `ethtool -k` name of each feature vlab controls.
pub fn long_name(feature: &str) -> &'static str {
    match feature {
        "tx" => "tx-checksumming",
        "rx" => "rx-checksumming",
        "tso" => "tcp-segmentation-offload",
        "gso" => "generic-segmentation-offload",
        "gro" => "generic-receive-offload",
        "lro" => "large-receive-offload",
        _ => "",
    }
}

/// The segmentation features each interface's read-back reports (`ethtool
/// -k` names): whether the stack may hand the NIC large TCP segments, and
/// tunnelled ones (UDP tunnels such as VXLAN, and partial GSO), or must cut
/// them to the MTU first.
pub const SEGMENTATION_FEATURES: [&str; 6] = [
    "tcp-segmentation-offload",
    "generic-segmentation-offload",
    "generic-receive-offload",
    "tx-udp_tnl-segmentation",
    "tx-udp_tnl-csum-segmentation",
    "tx-gso-partial",
];

/// One feature: what the lab asked for and what the driver reports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OffloadState {
    /// Requested state (`None`: left to the driver).
    pub requested: Option<bool>,
    /// State read back with `ethtool -k` (`None`: the driver does not list it).
    pub actual: Option<bool>,
    /// The driver cannot change it (`[fixed]`).
    pub fixed: bool,
}

/// What one interface was and did during a case.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InterfaceEvidence {
    /// The VM.
    pub vm: String,
    /// The container whose namespace holds it, if any.
    pub container: Option<String>,
    /// Interface name.
    pub dev: String,
    /// Driver (`ethtool -i`).
    pub driver: Option<String>,
    /// Combined channels in use (`ethtool -l`), when the driver has channels.
    pub channels: Option<u32>,
    /// Virtual functions enabled on it (`sriov_numvfs`), for SR-IOV PFs.
    pub vfs: Option<u32>,
    /// Offload features, requested and read back.
    pub offloads: BTreeMap<String, OffloadState>,
    /// The [`SEGMENTATION_FEATURES`] the driver lists, on or off, read
    /// back before the workload.
    #[serde(default)]
    pub segmentation: BTreeMap<String, bool>,
    /// Its MTU before the workload.
    #[serde(default)]
    pub mtu: Option<usize>,
    /// Counters before the workload.
    pub before: Counters,
    /// Counters after the workload.
    pub after: Counters,
}

impl InterfaceEvidence {
    /// Counter deltas over the workload.
    pub fn delta(&self) -> Counters {
        self.after.since(&self.before)
    }

    /// Features whose read-back state differs from the request.
    pub fn refused(&self) -> Vec<String> {
        self.offloads
            .iter()
            .filter(|(_, s)| s.requested.is_some() && s.requested != s.actual)
            .map(|(f, s)| format!("{f}={}{}", on_off(s.actual), if s.fixed { " [fixed]" } else { "" }))
            .collect()
    }
}

fn on_off(v: Option<bool>) -> &'static str {
    match v {
        Some(true) => "on",
        Some(false) => "off",
        None => "n/a",
    }
}

/// `driver:` of `ethtool -i`.
pub fn parse_driver(ethtool_i: &str) -> Option<String> {
    ethtool_i.lines().find_map(|l| l.strip_prefix("driver:")).map(|d| d.trim().to_string()).filter(|d| !d.is_empty())
}

/// `Combined:` under "Current hardware settings" of `ethtool -l`.
pub fn parse_channels(ethtool_l: &str) -> Option<u32> {
    let current = ethtool_l.split("Current hardware settings").nth(1)?;
    current.lines().find_map(|l| l.trim().strip_prefix("Combined:")).and_then(|v| v.trim().parse().ok())
}

/// A feature's state in `ethtool -k` output: `(on, fixed)`.
pub fn parse_feature(ethtool_k: &str, long: &str) -> Option<(bool, bool)> {
    let line = ethtool_k.lines().find(|l| l.trim_start().starts_with(&format!("{long}:")))?;
    let value = line.split_once(':')?.1.trim();
    Some((value.starts_with("on"), value.contains("[fixed]")))
}

/// The shell script that applies `requested` to `dev`: all features in one
/// `ethtool -K`, and each on its own when the driver refuses that, so that
/// one refused feature does not block the others. Empty when nothing is
/// requested. It acts in the namespace it runs in.
pub fn offload_script(dev: &str, requested: &[(&str, Option<bool>)]) -> String {
    let wanted: Vec<String> = requested
        .iter()
        .filter_map(|(feature, want)| want.map(|on| format!("{feature} {}", if on { "on" } else { "off" })))
        .collect();
    if wanted.is_empty() {
        return String::new();
    }
    let mut s = format!("ethtool -K {dev} {} >/dev/null 2>&1 || {{\n", wanted.join(" "));
    for w in &wanted {
        s.push_str(&format!("ethtool -K {dev} {w} >/dev/null 2>&1 || true\n"));
    }
    s.push('}');
    s
}

/// What of `requested` is still to be applied to an interface whose
/// offloads the previous probe read back as `last`: a feature already as
/// requested, or one the driver cannot change, is left alone (`None`); with
/// nothing read yet, everything requested is applied. `ethtool -K` costs
/// 15-30 ms under TCG, and some drivers reset the NIC on every call.
pub fn still_to_apply<'a>(
    requested: &[(&'a str, Option<bool>)],
    last: Option<&BTreeMap<String, OffloadState>>,
) -> Vec<(&'a str, Option<bool>)> {
    requested
        .iter()
        .map(|&(feature, want)| {
            let done =
                last.and_then(|l| l.get(feature)).is_some_and(|s| s.fixed || (want.is_some() && s.actual == want));
            (feature, if done { None } else { want })
        })
        .collect()
}

/// The shell script that applies `requested` to `dev` in `netns` (see
/// [`offload_script`]), then prints `ethtool -i`, `-k`, `-l`, `sriov_numvfs`,
/// the MTU and the [`Counters`] of `dev`, separated by `=====` lines; with
/// `fixed_known`, `-i` and `-l` (the driver and channels, which do not change
/// while a VM runs) are left out. The namespace is entered once, for ethtool;
/// the rest is read from outside it with builtins.
pub fn probe_script(netns: Option<&Netns>, dev: &str, fixed_known: bool, requested: &[(&str, Option<bool>)]) -> String {
    let at = Netns::paths(netns);
    let sys = format!("{}/class/net/{dev}", at.sys);
    let (i, l) = if fixed_known {
        (String::new(), String::new())
    } else {
        (format!("ethtool -i {dev}; "), format!("ethtool -l {dev} 2>/dev/null || true; "))
    };
    let ethtool =
        format!("{}\n{i}echo =====; ethtool -k {dev}; echo =====; {l}echo =====", offload_script(dev, requested));
    format!(
        "{}{}\n\
         [ -e {sys}/device/sriov_numvfs ] && read -r n <{sys}/device/sriov_numvfs && echo \"$n\"; echo =====\n\
         read -r m <{sys}/mtu && echo \"$m\"; echo =====\n{}\n",
        at.prelude,
        Netns::script(netns, &ethtool),
        Counters::command(&at.sys, dev)
    )
}

/// What [`probe_script`] read of an interface.
#[derive(Debug, Clone, Default)]
pub struct Probe {
    /// Driver (`ethtool -i`).
    pub driver: Option<String>,
    /// Combined channels (`ethtool -l`).
    pub channels: Option<u32>,
    /// VFs enabled, for SR-IOV PFs.
    pub vfs: Option<u32>,
    /// Offload features, requested and read back.
    pub offloads: BTreeMap<String, OffloadState>,
    /// The [`SEGMENTATION_FEATURES`] the driver lists.
    pub segmentation: BTreeMap<String, bool>,
    /// The interface's MTU.
    pub mtu: Option<usize>,
    /// Its counters.
    pub counters: Option<Counters>,
}

/// Parses [`probe_script`]'s output.
pub fn parse_probe(output: &str, requested: &[(&str, Option<bool>)]) -> Probe {
    let parts: Vec<&str> = output.split("=====\n").collect();
    let get = |i: usize| parts.get(i).copied().unwrap_or("");
    let offloads = requested
        .iter()
        .map(|(f, want)| {
            let read = parse_feature(get(1), long_name(f));
            (
                f.to_string(),
                OffloadState { requested: *want, actual: read.map(|r| r.0), fixed: read.is_some_and(|r| r.1) },
            )
        })
        .collect();
    Probe {
        driver: parse_driver(get(0)),
        channels: parse_channels(get(2)),
        vfs: get(3).trim().parse().ok().filter(|n| *n > 0),
        offloads,
        segmentation: SEGMENTATION_FEATURES
            .iter()
            .filter_map(|f| parse_feature(get(1), f).map(|(on, _)| (f.to_string(), on)))
            .collect(),
        mtu: get(4).trim().parse().ok(),
        counters: Counters::parse(get(5)),
    }
}
