//! The QEMU command line is a pure function of the VM spec: snapshot it.

use std::path::PathBuf;

use rstest::rstest;
use vlab::qemu::{qemu_args, Accel, NicSpec, VmSpec};

fn spec(accel: Accel, queues: u32, vhost: bool) -> VmSpec {
    VmSpec {
        name: "host1".into(),
        accel,
        cpu_model: None,
        cpus: 2,
        memory_mib: 1024,
        firmware: Some(PathBuf::from("/usr/share/qemu/qboot.rom")),
        kernel: PathBuf::from("/cache/images/base-0123/vmlinuz"),
        initramfs: PathBuf::from("/cache/images/base-0123/initramfs.cpio"),
        disk: PathBuf::from("/run/vlab-x/root.qcow2"),
        run_dir: PathBuf::from("/run/vlab-x"),
        modules: vec!["virtio_net".into()],
        nics: vec![NicSpec {
            id: "net0".into(),
            tap: "t-host1".into(),
            mac: "52:54:00:4c:01:01".into(),
            queues,
            vhost,
        }],
    }
}

#[rstest]
#[case::tcg_virtio_2_queues(spec(Accel::Tcg, 2, false))]
#[case::kvm_virtio_4_queues_vhost(spec(Accel::Kvm, 4, true))]
#[case::tcg_virtio_1_queue(spec(Accel::Tcg, 1, false))]
fn qemu_argv(#[case] spec: VmSpec) {
    let name = format!("{:?}-{}q-vhost-{}", spec.accel, spec.nics[0].queues, spec.nics[0].vhost).to_lowercase();
    insta::assert_snapshot!(name, qemu_args(&spec).join("\n"));
}

#[test]
fn vectors_follow_queues() {
    for queues in 1..=8 {
        let args = qemu_args(&spec(Accel::Tcg, queues, false)).join(" ");
        assert!(args.contains(&format!("queues={queues},")), "{args}");
        assert!(args.contains(&format!("vectors={}", 2 * queues + 2)), "{args}");
    }
}
