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
    assert_eq!(
        Netns::wrap(Some(&Netns::Named("c1".into())), argv()),
        ["nsenter", "--net=/run/netns/c1", "ss", "-Hltn"]
    );
    let docker = Netns::Path("/var/run/docker/netns/1-abc".into());
    assert_eq!(Netns::wrap(Some(&docker), argv()), ["nsenter", "--net=/var/run/docker/netns/1-abc", "ss", "-Hltn"]);
}

/// A process is gone once it is a zombie or reaped, not while it runs;
/// read with shell builtins (the guest's `sh` is dash, as here).
#[test]
fn a_process_is_gone_once_a_zombie_or_reaped() {
    let gone = vlab::guest::process_gone("$1");
    let script = format!(
        "gone() {{ {gone}; }}\nsleep 5 & r=$!\nsh -c 'exit 0' & z=$!\nsleep 0.3\n\
         gone $r && echo running-gone; gone $z && echo zombie-gone; wait $z; gone $z && echo reaped-gone\n\
         gone 999999999 && echo absent-gone; kill $r"
    );
    let out = std::process::Command::new("/bin/sh").arg("-c").arg(&script).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "zombie-gone\nreaped-gone\nabsent-gone\n");
    assert_eq!(String::from_utf8_lossy(&out.stderr), "");
}

/// A timed script keeps its output and exit code and is followed by its
/// duration by the clock (run in a real shell, dash as in the guest); a
/// script that fails under `set -e` prints no duration.
#[test]
fn a_timed_script_reports_its_duration() {
    let run = |script: &str| std::process::Command::new("/bin/sh").arg("-c").arg(script).output().unwrap();
    let out = run(&vlab::guest::timed("echo hello; sleep 0.2"));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.starts_with("hello\n"), "{text}");
    let s = vlab::guest::took(&text).unwrap();
    assert!((0.2..2.0).contains(&s), "{s} s");
    let failed = run(&vlab::guest::timed("exit 3"));
    assert_eq!(failed.status.code(), Some(3));
    let strict = run(&format!("set -e\n{}", vlab::guest::timed("false")));
    assert_eq!(strict.status.code(), Some(1));
    assert_eq!(vlab::guest::took(&String::from_utf8_lossy(&strict.stdout)), None);
    assert_eq!(vlab::guest::took("took_ns 1500000000\n"), Some(1.5));
    assert_eq!(vlab::guest::took("took_ns x\n"), None);
}

/// `ip` commands become one `ip -force -batch`: a line of what may find
/// nothing to remove may fail, a line of what must work may not (checked in a
/// real shell with a stand-in `ip`).
#[test]
fn ip_commands_are_batched() {
    // A stand-in `ip` that fails every line saying FAIL, as `ip -force -batch` does.
    let dir = tempfile::tempdir().unwrap();
    let ip = dir.path().join("ip");
    std::fs::write(
        &ip,
        "#!/bin/sh\nn=0; rc=0; while read -r l; do n=$((n+1)); case $l in *FAIL*) \
         echo \"Error: $l\" >&2; echo \"Command failed -:$n\" >&2; rc=1;; esac; done; exit $rc\n",
    )
    .unwrap();
    std::fs::set_permissions(&ip, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let run = |tidy: &[&str], apply: &[&str]| {
        let strings = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let script = vlab::guest::ip_batch("-6", &strings(tidy), &strings(apply)).join("\n");
        let path = format!("{}:{}", dir.path().display(), std::env::var("PATH").unwrap());
        std::process::Command::new("/bin/sh").arg("-c").arg(&script).env("PATH", path).output().unwrap()
    };
    let out = run(&["ila del FAIL", "route flush"], &["route add a", "route add b"]);
    assert!(out.status.success(), "a tidy line may fail: {out:?}");
    let out = run(&["ila del FAIL"], &["route add a", "route add FAIL *"]);
    assert!(!out.status.success(), "an applied line may not");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("Error: route add FAIL *") && stderr.contains("Command failed -:3"), "{stderr}");
    assert!(run(&[], &["route add a"]).status.success());
    assert!(vlab::guest::ip_batch("", &[], &[]).is_empty());
}
