//! The kernel options a lab needs, checked against the booted kernel's own
//! configuration before anything is deployed: a kernel built without one
//! cannot test the lab (exit 125, untestable), which is not the same as
//! failing it. The configuration is read in the guest from /proc/config.gz
//! (`CONFIG_IKCONFIG_PROC`, which `images/kernel.config` turns on), from
//! /boot/config-RELEASE (Debian's kernels), or from
//! /lib/modules/RELEASE/config (where `--kernel-deb` puts its package's).

use std::collections::BTreeMap;

use crate::lab::{Case, Lab, Nic, NicModel};
use crate::{filter, overlay};

/// The option behind each kernel module vlab loads.
const MODULE_OPTIONS: &[(&str, &str)] = &[
    ("virtio_net", "VIRTIO_NET"),
    ("virtio_rng", "HW_RANDOM_VIRTIO"),
    ("igb", "IGB"),
    ("igbvf", "IGBVF"),
    ("ila", "IPV6_ILA"),
    ("vxlan", "VXLAN"),
    ("bridge", "BRIDGE"),
    ("br_netfilter", "BRIDGE_NETFILTER"),
    ("overlay", "OVERLAY_FS"),
    ("veth", "VETH"),
    ("sch_ingress", "NET_SCH_INGRESS"),
    ("cls_bpf", "NET_CLS_BPF"),
];

/// What every lab needs: the guest agent's port, containers on veth in
/// namespaces, captures.
const ALWAYS: &[&str] = &["VIRTIO_CONSOLE", "NET_NS", "VETH", "PACKET", "IPV6"];

/// The options the cases need, each with what needs it.
pub fn needed(lab: &Lab, cases: &[Case], nic: Option<&Nic>) -> BTreeMap<String, String> {
    let mut need = BTreeMap::new();
    let mut add = |option: &str, why: &str| {
        need.entry(option.to_string()).or_insert_with(|| why.to_string());
    };
    for o in ALWAYS {
        add(o, "every lab");
    }
    for o in &lab.kernel_options {
        add(o.strip_prefix("CONFIG_").unwrap_or(o), "the lab file");
    }
    let mut modules: Vec<(&str, String)> = vec![("virtio_net", "the NIC".into()), ("virtio_rng", "the guests".into())];
    let igb = nic
        .map_or_else(|| lab.vms.iter().any(|v| v.nic.model == NicModel::IgbSriov), |n| n.model == NicModel::IgbSriov);
    if igb {
        modules.extend([("igb", "the igb NIC".into()), ("igbvf", "the igb NIC's VFs".into())]);
        add("PCI_IOV", "the igb NIC's VFs");
    }
    for case in cases {
        let (o, f) = (overlay::get(case.params.overlay(lab)), filter::get(case.params.filter(lab)));
        let variants: [(&dyn overlay::Variant, String); 2] =
            [(o, format!("overlay {}", o.name())), (f, format!("filter {}", f.name()))];
        for (v, why) in variants {
            modules.extend(v.modules().iter().map(|m| (*m, why.clone())));
            for option in v.kernel_options() {
                add(option, &why);
            }
        }
    }
    for (module, why) in modules {
        if let Some((_, option)) = MODULE_OPTIONS.iter().find(|(m, _)| *m == module) {
            add(option, &why);
        }
    }
    need
}

/// The needed options that `config` (a `.config`) does not set to `y` or `m`.
pub fn missing(config: &str, needed: &BTreeMap<String, String>) -> Vec<(String, String)> {
    let set: Vec<&str> = config
        .lines()
        .filter_map(|l| l.strip_prefix("CONFIG_"))
        .filter_map(|l| l.split_once('='))
        .filter(|(_, v)| *v == "y" || *v == "m")
        .map(|(k, _)| k)
        .collect();
    needed.iter().filter(|(o, _)| !set.contains(&o.as_str())).map(|(o, w)| (o.clone(), w.clone())).collect()
}

/// The guest's shell script that prints its kernel's configuration, or
/// nothing when the kernel keeps none.
pub const READ_CONFIG: &str = "if [ -r /proc/config.gz ]; then gzip -dc /proc/config.gz; \
     elif [ -r /boot/config-$(uname -r) ]; then cat /boot/config-$(uname -r); \
     elif [ -r /lib/modules/$(uname -r)/config ]; then cat /lib/modules/$(uname -r)/config; fi";

/// A kernel that lacks options the lab needs.
#[derive(Debug, thiserror::Error)]
#[error(
    "the guest kernel {release} lacks {}: it cannot run this lab (untestable, exit 125); \
     build it with those options (images/kernel.config has all that vlab's variants need)",
    .missing.iter().map(|(o, why)| format!("CONFIG_{o} (for {why})")).collect::<Vec<_>>().join(", ")
)]
pub struct MissingOptions {
    pub release: String,
    pub missing: Vec<(String, String)>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_set_to_y_or_m_are_there_and_others_missing() {
        let need: BTreeMap<String, String> = [
            ("VXLAN", "overlay vxlan"),
            ("IPV6_ILA", "overlay ila"),
            ("BRIDGE", "overlay vxlan"),
            ("VETH", "every lab"),
        ]
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .into();
        let config = "CONFIG_VXLAN=m\nCONFIG_BRIDGE=y\n# CONFIG_IPV6_ILA is not set\nCONFIG_VETH_EXTRA=y\n";
        assert_eq!(
            missing(config, &need),
            [("IPV6_ILA".to_string(), "overlay ila".to_string()), ("VETH".to_string(), "every lab".to_string())]
        );
    }
}
