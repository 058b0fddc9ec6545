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
