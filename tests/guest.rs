//! The guest commands vlab renders for the underlay, the containers and the
//! overlay, per NIC model: reviewable, and snapshot-tested.

use std::path::Path;

use rstest::rstest;
use vlab::overlay::setup_script;

#[rstest]
#[case::virtio("labs/baseline.toml", None, "virtio")]
#[case::igb_sriov("labs/nic-matrix.toml", Some(2), "igb-sriov")]
fn rendered_guest_setup(#[case] lab_file: &str, #[case] matrix_nic: Option<usize>, #[case] name: &str) {
    let lab = vlab::load_lab(&Path::new(env!("CARGO_MANIFEST_DIR")).join(lab_file)).unwrap();
    let mut script = Vec::new();
    for (i, vm) in lab.vms.iter().enumerate() {
        let nic = matrix_nic.map_or(vm.nic.clone(), |j| lab.matrix.nic.as_ref().unwrap()[j].clone());
        script.push(format!("# {}", vm.name));
        script.extend(setup_script(&lab, vm, i, &nic, &format!("52:54:00:4c:{:02x}:01", i + 1)));
    }
    insta::assert_snapshot!(name, script.join("\n"));
}

/// Routed and bridged containers are plumbed by vlab; managed ones (an
/// overlay that creates its containers, as Docker does) are not.
#[test]
fn managed_containers_are_left_to_the_overlay() {
    use vlab::guest::{base_setup, Containers};
    let lab = vlab::load_lab(&Path::new(env!("CARGO_MANIFEST_DIR")).join("labs/baseline.toml")).unwrap();
    let vm = &lab.vms[0];
    let script = |c| base_setup(&lab, vm, 0, &vm.nic, "52:54:00:4c:01:01", c).join("\n");
    let (routed, bridged, managed) =
        (script(Containers::Routed), script(Containers::Bridged), script(Containers::Managed));
    assert!(routed.contains("ip netns add c1") && routed.contains("ip addr add 10.1.1.1/24 dev vc-c1"), "{routed}");
    assert!(bridged.contains("ip netns add c1") && !bridged.contains("dev vc-c1\n"), "{bridged}");
    assert!(!bridged.contains("ip addr add 10.1.1.1/24"), "a bridge port has no address: {bridged}");
    assert!(!managed.contains("netns") && managed.contains("ip link set underlay up"), "{managed}");
}

/// A command enters a container by the name `ip netns` knows, or by a
/// namespace file (Docker's `/var/run/docker/netns/...`) through nsenter.
#[test]
fn commands_enter_a_namespace_by_name_or_path() {
    use vlab::guest::Netns;
    let argv = || vec!["ss".to_string(), "-Hltn".to_string()];
    assert_eq!(Netns::wrap(None, argv()), ["ss", "-Hltn"]);
    assert_eq!(Netns::wrap(Some(&Netns::Named("c1".into())), argv()), ["ip", "netns", "exec", "c1", "ss", "-Hltn"]);
    let docker = Netns::Path("/var/run/docker/netns/1-abc".into());
    assert_eq!(Netns::wrap(Some(&docker), argv()), ["nsenter", "--net=/var/run/docker/netns/1-abc", "ss", "-Hltn"]);
}
