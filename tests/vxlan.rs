//! The VXLAN overlay without VMs: lab validation, rendered guest commands,
//! forwarding entries and the verdict logic.

use std::net::IpAddr;
use std::path::Path;

use rstest::rstest;
use vlab::lab::{Family, Lab, LabError};
use vlab::measure::fdb;
use vlab::overlay::setup_script;
use vlab::overlay::vxlan;

const VXLAN: &str = include_str!("../labs/vxlan.toml");

fn parse(text: &str) -> Result<Lab, LabError> {
    vlab::parse_lab(text, Path::new("vxlan.toml"))
}

fn edit(from: &str, to: &str) -> String {
    edited(VXLAN, from, to)
}

/// `base` with the first `from` replaced by `to`.
fn edited(base: &str, from: &str, to: &str) -> String {
    assert!(base.contains(from), "fixture lacks {from:?}");
    base.replacen(from, to, 1)
}

#[rstest]
#[case::vni_zero(edit("vni = 100", "vni = 0"), "vxlan_vni_zero")]
#[case::vni_too_big(edit("vni = 100", "vni = 16777216"), "vxlan_vni_too_big")]
#[case::no_vtep_address(edit("family = \"ipv4\"", "family = \"ipv6\""), "vxlan_no_vtep_address")]
#[case::two_subnets(edit("ipv4 = \"192.168.1.2/24\"", "ipv4 = \"192.168.2.2/24\""), "vxlan_two_subnets")]
#[case::on_vfs(
    edit("nic = { model = \"virtio\", queues = 2 }", "nic = { model = \"igb-sriov\", vfs = 1 }"),
    "vxlan_on_vfs"
)]
#[case::port_zero(edit("port = 4789", "port = 0"), "vxlan_port_zero")]
#[case::vfs_in_matrix(
    edit(
        "[workload]",
        "[matrix]\nnic = [{ model = \"virtio\", queues = 1 }, { model = \"igb-sriov\", vfs = 1 }]\n\n[workload]"
    ),
    "vxlan_vfs_in_matrix"
)]
#[case::table_elsewhere(
    include_str!("../labs/baseline.toml").replacen("[workload]", "[vxlan]\nvni = 7\n\n[workload]", 1),
    "vxlan_table_elsewhere"
)]
fn invalid_vxlan_labs_name_the_field(#[case] text: String, #[case] name: &str) {
    let err = parse(&text).expect_err("the lab must be rejected");
    insta::assert_snapshot!(name, err.to_string());
}

#[test]
fn the_study_addresses_are_one_segment_without_gateways() {
    // 192.168.1.1 would be a gateway on a routed overlay; on VXLAN it is a container.
    let lab = parse(VXLAN).unwrap();
    assert_eq!(lab.cases().len(), 1);
}

#[test]
fn guest_setup_bridges_the_containers() {
    let lab = parse(VXLAN).unwrap();
    let mut script = Vec::new();
    for (i, vm) in lab.vms.iter().enumerate() {
        script.push(format!("# {}", vm.name));
        script.extend(setup_script(&lab, vm, i, &vm.nic, &format!("52:54:00:4c:{:02x}:01", i + 1)));
    }
    insta::assert_snapshot!("vxlan_setup", script.join("\n"));
}

#[test]
fn a_non_default_vni_and_addresses_change_the_commands() {
    let text = edit("vni = 100", "vni = 4242")
        .replace("11.0.0.1/24", "10.20.0.1/24")
        .replace("12.0.0.1/24", "10.20.0.2/24")
        .replace("192.168.1.", "172.16.5.");
    let lab = parse(&text).unwrap();
    let cmds = vxlan::commands(&lab, &lab.vms[0], true).join("\n");
    assert!(cmds.contains("ip link add vx4242 type vxlan id 4242 dstport 4789 local 10.20.0.1"), "{cmds}");
    assert!(cmds.contains("bridge fdb append 00:00:00:00:00:00 dev vx4242 dst 10.20.0.2 self permanent"), "{cmds}");
    assert!(cmds.contains("bridge fdb add 52:54:00:c0:02:01 dev vx4242 dst 10.20.0.2 self permanent"), "{cmds}");
}

#[test]
fn overhead_and_inner_mtu() {
    assert_eq!(vxlan::overhead(Family::Ipv4), 50);
    assert_eq!(vxlan::inner_mtu(1500, Family::Ipv4), 1450);
    assert_eq!(vxlan::overhead(Family::Ipv6), 70);
    assert_eq!(vxlan::inner_mtu(1500, Family::Ipv6), 1430);
    assert_eq!(vxlan::inner_mtu(9000, Family::Ipv4), 8950);
}

/// What the overlay needs of a guest: the bridge and VXLAN modules, loaded at
/// boot and required of a kernel given with --kernel (the options behind them),
/// and each VM's forwarding entries read back under the name the verdict reads.
#[test]
fn the_overlay_loads_its_modules_and_reads_back_each_vms_forwarding_entries() {
    use vlab::overlay::Variant;
    let lab = parse(VXLAN).unwrap();
    assert_eq!(vxlan::Vxlan.modules(), ["bridge", "vxlan"]);
    let need = vlab::run::kconfig::needed(&lab, &lab.cases(), None);
    for option in ["BRIDGE", "VXLAN"] {
        assert_eq!(need.get(option).map(String::as_str), Some("overlay vxlan"), "{need:?}");
    }
    for vm in &lab.vms {
        assert_eq!(
            vxlan::Vxlan.evidence_commands(&lab, vm),
            [(format!("fdb-{}.json", vm.name), "bridge -j fdb show dev vx100".to_string())]
        );
    }
}

/// The underlay captures keep the tunnel's packets, on the lab's UDP port,
/// and decapsulate them.
#[test]
fn tunnel_traffic_is_captured_on_the_labs_port() {
    for port in [4789, 8472] {
        let lab = parse(&edit("port = 4789", &format!("port = {port}"))).unwrap();
        let hints = vxlan::capture_hints(&lab);
        assert_eq!(hints.underlay_filter.as_deref(), Some(format!("udp port {port}").as_str()));
        assert_eq!(hints.vxlan_port, Some(port));
    }
}

/// `bridge -j fdb show dev vx100` on Debian 13's iproute2, with static entries.
const FDB_JSON: &str = r#"[{"mac":"00:00:00:00:00:00","ifname":"vx100","dst":"12.0.0.1","flags":["self"],"state":"permanent"},{"mac":"52:54:00:c0:02:01","ifname":"vx100","dst":"12.0.0.1","flags":["self"],"state":"permanent"},{"mac":"6e:2a:91:0b:44:10","ifname":"vx100","vlan":1,"master":"br-vx","state":"permanent"}]"#;

#[test]
fn forwarding_entries_parse_and_are_checked() {
    let entries = fdb::parse("host1", FDB_JSON).unwrap();
    assert_eq!(entries.len(), 3);
    assert_eq!(entries[1].dst.as_deref(), Some("12.0.0.1"));
    assert!(entries[2].flags.contains(&"master".to_string()));

    let lab = parse(VXLAN).unwrap();
    let host1: Vec<_> = vxlan::expected_entries(&lab).into_iter().filter(|(vm, _, _)| vm == "host1").collect();
    let vtep: IpAddr = "12.0.0.1".parse().unwrap();
    assert_eq!(
        host1,
        [
            ("host1".to_string(), "00:00:00:00:00:00".to_string(), vtep),
            ("host1".to_string(), "52:54:00:c0:02:01".to_string(), vtep)
        ]
    );
    let check = |entries: &[fdb::FdbEntry], installed_as: &str| {
        let e = vxlan::VxlanEvidence {
            settings: vxlan::settings(&lab),
            vteps: ["11.0.0.1".parse().unwrap(), vtep],
            containers: ["192.168.1.1".parse().unwrap(), "192.168.1.2".parse().unwrap()],
            underlay: Vec::new(),
            fdb: entries,
            expected: host1.clone(),
            installed_as,
        };
        vxlan::verdict(&e).into_iter().next().unwrap()
    };
    assert!(check(&entries, "permanent").passed);
    // Installed, but not by a control plane.
    let c = check(&entries, "extern_learn");
    assert!(!c.passed);
    assert!(c.detail.contains("host1: 52:54:00:c0:02:01 dst 12.0.0.1"), "{}", c.detail);
    assert!(!c.detail.contains("00:00:00:00:00:00"), "flood entries are permanent either way: {}", c.detail);
    // A missing remote MAC is named.
    let c = check(&entries[..1], "permanent");
    assert!(!c.passed && c.detail.contains("52:54:00:c0:02:01"), "{}", c.detail);
}

const OVERLAYS: &str = include_str!("../labs/overlays.toml");

#[test]
fn overlays_compare_in_one_run_one_boot_each() {
    let lab = parse(OVERLAYS).unwrap();
    let names: Vec<String> = lab.cases().into_iter().map(|c| c.name).collect();
    let overlays = ["overlay=baseline", "overlay=vxlan", "overlay=vxlan-evpn"];
    let expected: Vec<String> =
        ["1500", "9000"].iter().flat_map(|m| overlays.map(|o| format!("mtu={m},{o}"))).collect();
    assert_eq!(names, expected);
    // The baseline reaches a peer inside the container's own subnet through the gateway.
    let baseline = lab.with_overlay("baseline");
    let script = setup_script(&baseline, &baseline.vms[1], 1, &baseline.vms[1].nic, "52:54:00:4c:02:01").join("\n");
    assert!(script.contains("ip -n c2 route add 192.168.1.2/32 via 192.168.1.1"), "{script}");
    assert!(script.contains("ip route add 192.168.1.2/32 via 11.0.0.1"), "{script}");
}

#[rstest]
#[case::ila_in_axis(OVERLAYS.replace("overlay = [\"baseline\", \"vxlan\", \"vxlan-evpn\"]", "overlay = [\"baseline\", \"vxlan\", \"ila\"]"), "overlays_ila_in_axis")]
#[case::variant_invalid(OVERLAYS.replace("ipv4 = \"192.168.1.3/24\"", "ipv4 = \"192.168.7.3/24\""), "overlays_variant_invalid")]
fn invalid_overlay_axes(#[case] text: String, #[case] name: &str) {
    let err = parse(&text).expect_err("the lab must be rejected");
    insta::assert_snapshot!(name, err.to_string());
}

/// A lab whose image lacks what its overlay needs (FRR and goBGP for
/// vxlan-evpn; the bookworm recipe has neither) is bad input, found before
/// anything boots, naming the `image` field.
#[test]
fn an_image_without_the_overlays_packages_is_refused() {
    let text = include_str!("../labs/vxlan-evpn.toml").replacen(
        "name = \"vxlan-evpn\"",
        "name = \"vxlan-evpn\"\nimage = \"bookworm\"",
        1,
    );
    let lab = parse(&text).unwrap();
    let images = Path::new(env!("CARGO_MANIFEST_DIR")).join("images");
    let err = vlab::variants::check_image(&lab, &images).unwrap_err().to_string();
    assert!(err.starts_with("vxlan.toml:8:9: field `image`: "), "{err}");
    assert!(err.contains("lacks packages the lab's overlay and filter need: frr, gobgpd"), "{err}");
    vlab::variants::check_image(&parse(include_str!("../labs/vxlan-evpn.toml")).unwrap(), &images).unwrap();
}

const EVPN: &str = include_str!("../labs/vxlan-evpn.toml");

fn parse_evpn(text: &str) -> Result<Lab, LabError> {
    vlab::parse_lab(text, Path::new("vxlan-evpn.toml"))
}

fn evpn_edit(from: &str, to: &str) -> String {
    edited(EVPN, from, to)
}

#[rstest]
#[case::route_server_unknown(
    evpn_edit("route_server = \"host1\"", "route_server = \"host9\""),
    "evpn_route_server_unknown"
)]
#[case::link_too_small(evpn_edit("10.255.0.2/30", "10.255.0.2/31"), "evpn_link_too_small")]
#[case::asn_zero(evpn_edit("asn = 65000", "asn = 0"), "evpn_asn_zero")]
#[case::no_ipv4_underlay(
    evpn_edit("family = \"ipv4\"", "family = \"ipv6\"")
        .replacen("underlay = { ipv4 = \"12.0.0.1/24\" }", "underlay = { ipv6 = \"fd00::12/64\" }", 1)
        .replacen("underlay = { ipv4 = \"11.0.0.1/24\" }", "underlay = { ipv4 = \"11.0.0.1/24\", ipv6 = \"fd00::11/64\" }", 1),
    "evpn_no_ipv4_underlay"
)]
fn invalid_evpn_labs_name_the_field(#[case] text: String, #[case] name: &str) {
    let err = parse_evpn(&text).expect_err("the lab must be rejected");
    insta::assert_snapshot!(name, err.to_string());
}

/// The EVPN plan, and the evidence each VM gives: the VXLAN datapath without
/// static entries on every VM, FRR's configuration and daemons on each; on
/// the route server's VM its namespace, the link to it and goBGP with every VM
/// as a client. Moved to host2, with another AS and link, everything follows.
#[rstest]
#[case::shipped(EVPN.to_string(), "evpn_plan")]
#[case::route_server_on_host2(
    evpn_edit("route_server = \"host1\"", "route_server = \"host2\"")
        .replacen("asn = 65000", "asn = 64512", 1)
        .replacen("10.255.0.2/30", "10.254.0.9/29", 1),
    "evpn_plan_route_server_on_host2"
)]
fn the_evpn_plan_runs_frr_on_every_vm_and_gobgp_beside_the_route_server(#[case] text: String, #[case] name: &str) {
    use vlab::overlay::Variant;
    let lab = parse_evpn(&text).unwrap();
    let evpn = vlab::overlay::get("vxlan-evpn");
    let mut out = String::new();
    for step in evpn.deploy(&lab, &[]) {
        out.push_str(&format!("# step on {}\n", step.vm));
        for f in &step.files {
            let kept = f.artifact.as_deref().map(|a| format!(" (kept as {a})")).unwrap_or_default();
            out.push_str(&format!("## file {}{kept}\n{}", f.path, f.text));
        }
        for c in &step.commands {
            out.push_str(&format!("{c}\n"));
        }
    }
    for vm in &lab.vms {
        out.push_str(&format!("# evidence from {}\n", vm.name));
        for (artifact, cmd) in vlab::overlay::evpn::VxlanEvpn.evidence_commands(&lab, vm) {
            out.push_str(&format!("{artifact}: {cmd}\n"));
        }
    }
    insta::assert_snapshot!(name, out);
}

/// What the EVPN overlay asks of the guests and the run: VXLAN's modules and
/// kernel options, FRR and goBGP in the image, containers on the VXLAN bridge
/// (where filters act), the lab's tunnel port captured, and a first ping
/// through before the workload.
#[test]
fn the_evpn_overlay_needs_vxlans_datapath_and_waits_for_a_ping() {
    use vlab::overlay::Variant;
    let lab = parse_evpn(EVPN).unwrap();
    let evpn = vlab::overlay::get("vxlan-evpn");
    assert_eq!(vlab::overlay::evpn::VxlanEvpn.modules(), ["bridge", "vxlan"]);
    assert_eq!(vlab::overlay::evpn::VxlanEvpn.packages(), ["frr", "gobgpd"]);
    let need = vlab::run::kconfig::needed(&lab, &lab.cases(), None);
    for option in ["BRIDGE", "VXLAN"] {
        assert_eq!(need.get(option).map(String::as_str), Some("overlay vxlan-evpn"), "{need:?}");
    }
    assert_eq!(evpn.containers(), vlab::overlay::Containers::Bridged);
    assert_eq!(
        evpn.enforcement_points(&lab),
        [vlab::overlay::EnforcementPoint::Bridge { name: vxlan::BRIDGE.to_string() }]
    );
    assert_eq!(evpn.capture_hints(&lab), vxlan::capture_hints(&lab));
    assert_eq!(evpn.capture_hints(&lab).vxlan_port, Some(4789));
    let ready = evpn.readiness(&lab).expect("the overlay waits for its control plane");
    assert_eq!((ready.vm.as_str(), ready.limit), ("host2", std::time::Duration::from_secs(90)));
    assert!(ready.command.contains("ping") && ready.command.contains("192.168.1.1"), "{}", ready.command);
}
