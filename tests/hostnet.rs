//! The lab's host plumbing: a namespace of its own with a bridge, which switches
//! frames without bridge netfilter and is gone when the lab is dropped.
//! Needs root and iproute2 (as every VM test does).

use std::process::Command;

use vlab::hostnet::{LabNet, BRIDGE};

fn in_netns(netns: &str, cmd: &str) -> String {
    let out = Command::new("ip").args(["netns", "exec", netns, "sh", "-c", cmd]).output().unwrap();
    assert!(out.status.success(), "`{cmd}` in {netns}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

fn bridge_nf_switches() -> &'static str {
    "cat /proc/sys/net/bridge/bridge-nf-call-arptables /proc/sys/net/bridge/bridge-nf-call-iptables \
     /proc/sys/net/bridge/bridge-nf-call-ip6tables | tr '\\n' ' '"
}

#[test]
fn the_lab_bridge_bypasses_netfilter_and_leaves_with_the_lab() {
    let host_before = std::fs::read_to_string("/proc/sys/net/bridge/bridge-nf-call-iptables").ok();
    let net = LabNet::create().unwrap();
    let name = net.name().to_string();
    assert!(in_netns(&name, &format!("ip -d link show {BRIDGE}")).contains("bridge"));
    if host_before.is_some() {
        assert_eq!(in_netns(&name, bridge_nf_switches()), "0 0 0 ");
    } else {
        // Without br_netfilter there are no switches, and bridged frames skip netfilter.
        assert!(!std::path::Path::new("/proc/sys/net/bridge").exists());
    }
    // The host's own switches are not the lab's to change.
    assert_eq!(std::fs::read_to_string("/proc/sys/net/bridge/bridge-nf-call-iptables").ok(), host_before);
    drop(net);
    let list = Command::new("ip").args(["netns", "list"]).output().unwrap();
    assert!(!String::from_utf8_lossy(&list.stdout).contains(&name), "{name} is left behind");
}
