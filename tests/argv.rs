//! The QEMU command line is a pure function of the VM spec: snapshot it for
//! every accelerator and NIC model.

use std::path::PathBuf;

use rstest::rstest;
use vlab::qemu::{qemu_args, Accel, NicBackend, NicSpec, TcgThread, VmSpec};

fn spec(accel: Accel, backend: NicBackend) -> VmSpec {
    VmSpec {
        name: "host1".into(),
        accel,
        tcg_thread: TcgThread::Multi,
        cpu_model: None,
        cpus: 2,
        memory_mib: 1024,
        firmware: Some(PathBuf::from("/usr/share/qemu/qboot.rom")),
        kernel: PathBuf::from("/cache/images/base-0123/vmlinux"),
        initramfs: PathBuf::from("/cache/images/base-0123/initramfs.cpio"),
        disk: PathBuf::from("/run/vlab-x/root.qcow2"),
        run_dir: PathBuf::from("/run/vlab-x"),
        modules: vec!["virtio_net".into()],
        cmdline: Vec::new(),
        nics: vec![NicSpec { id: "net0".into(), mac: "52:54:00:4c:01:01".into(), backend }],
        incoming: false,
        vmgenid: false,
    }
}

fn virtio(queues: u32, vhost: bool) -> NicBackend {
    NicBackend::Virtio { tap: "t-host1".into(), queues, vhost, host_mtu: None, udp_tunnel: None }
}

#[rstest]
#[case::tcg_virtio_2_queues("tcg-virtio-2q", spec(Accel::Tcg, virtio(2, false)))]
#[case::kvm_virtio_4_queues_vhost("kvm-virtio-4q-vhost", spec(Accel::Kvm, virtio(4, true)))]
#[case::tcg_virtio_1_queue("tcg-virtio-1q", spec(Accel::Tcg, virtio(1, false)))]
#[case::tcg_one_thread("tcg-virtio-2q-one-thread", VmSpec { tcg_thread: TcgThread::Single, ..spec(Accel::Tcg, virtio(2, false)) })]
#[case::kvm_ignores_the_tcg_thread("kvm-virtio-4q-vhost", VmSpec { tcg_thread: TcgThread::Single, ..spec(Accel::Kvm, virtio(4, true)) })]
#[case::tcg_virtio_jumbo("tcg-virtio-2q-mtu9000", spec(Accel::Tcg, NicBackend::Virtio { tap: "t-host1".into(), queues: 2, vhost: false, host_mtu: Some(9000), udp_tunnel: None }))]
#[case::tcg_virtio_udp_tunnel("tcg-virtio-2q-udp-tunnel", spec(Accel::Tcg, NicBackend::Virtio { tap: "t-host1".into(), queues: 2, vhost: false, host_mtu: None, udp_tunnel: Some(true) }))]
#[case::tcg_virtio_no_udp_tunnel("tcg-virtio-2q-no-udp-tunnel", spec(Accel::Tcg, NicBackend::Virtio { tap: "t-host1".into(), queues: 2, vhost: false, host_mtu: None, udp_tunnel: Some(false) }))]
#[case::tcg_igb_sriov("tcg-igb", spec(Accel::Tcg, NicBackend::Igb { tap: "t-host1".into() }))]
#[case::kvm_vfio("kvm-vfio", spec(Accel::Kvm, NicBackend::Vfio { host: "0000:3b:02.0".into() }))]
fn qemu_argv(#[case] name: &str, #[case] spec: VmSpec) {
    insta::assert_snapshot!(name, qemu_args(&spec).join("\n"));
}

/// `--kernel-cmdline` goes last on the guest's command line, so that it
/// overrides vlab's own parameters where the kernel takes the last one.
#[test]
fn extra_kernel_parameters_come_last() {
    let mut s = spec(Accel::Tcg, virtio(2, false));
    s.cmdline = vec!["module_blacklist=ila".into(), "panic=10".into()];
    let args = qemu_args(&s);
    let append = &args[args.iter().position(|a| a == "-append").unwrap() + 1];
    assert!(append.starts_with("console=ttyS0 panic=-1 "), "{append}");
    assert!(append.ends_with(" vlab.modules=virtio_net module_blacklist=ila panic=10"), "{append}");
}

#[test]
fn vectors_follow_queues() {
    for queues in 1..=8 {
        let args = qemu_args(&spec(Accel::Tcg, virtio(queues, false))).join(" ");
        assert!(args.contains(&format!("queues={queues},")), "{args}");
        assert!(args.contains(&format!("vectors={}", 2 * queues + 2)), "{args}");
    }
}
