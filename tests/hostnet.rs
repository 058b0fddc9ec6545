//! The lab's host plumbing: a network namespace of its own with a bridge and
//! multiqueue taps, which switches frames without bridge netfilter, leaves the
//! host's network as it was and is gone when the lab is dropped; as root, and
//! as an ordinary user (then in a user namespace of its own).

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;

use vlab::hostnet::{is_root, obstacle, LabNet, BRIDGE};

/// The uid and gid an ordinary user is played with (nobody, nogroup).
const NOBODY: u32 = 65534;

fn in_lab(net: &LabNet, cmd: &str) -> String {
    let out = net.command("sh").args(["-c", cmd]).output().unwrap();
    assert!(out.status.success(), "`{cmd}` in {}: {}", net.name(), String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

fn bridge_nf_switches() -> &'static str {
    "cat /proc/sys/net/bridge/bridge-nf-call-arptables /proc/sys/net/bridge/bridge-nf-call-iptables \
     /proc/sys/net/bridge/bridge-nf-call-ip6tables | tr '\\n' ' '"
}

/// The host's links, as `ip` lists them.
fn host_links() -> String {
    let out = Command::new("ip").args(["-o", "link", "show"]).output().unwrap();
    String::from_utf8(out.stdout).unwrap()
}

/// Builds a lab network as whoever runs this and checks all of it.
fn a_lab_network_as_this_user() {
    let host_nf = std::fs::read_to_string("/proc/sys/net/bridge/bridge-nf-call-iptables").ok();
    let host_links_before = host_links();
    let net = LabNet::create().unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(net.in_user_namespace(), !is_root(), "a user namespace exactly for an ordinary user");
    let holder = net.holder_pid();
    let ns = |pid: &str| std::fs::read_link(format!("/proc/{pid}/ns/net")).unwrap();
    assert_ne!(ns(&holder.to_string()), ns("self"), "the lab's namespace is not the host's");
    let argv0 = std::fs::read(format!("/proc/{holder}/cmdline")).unwrap();
    assert!(argv0.starts_with(format!("{}\0", net.name()).as_bytes()), "the holder is named after the lab");

    assert!(in_lab(&net, &format!("ip -d link show {BRIDGE}")).contains("bridge"));
    net.add_tap("tap-mq", 4, 9000).unwrap();
    net.add_tap("tap-sq", 1, 9000).unwrap();
    let mq = in_lab(&net, "ip -d link show tap-mq");
    assert!(mq.contains(&format!("master {BRIDGE}")) && mq.contains("multi_queue"), "{mq}");
    let sq = in_lab(&net, "ip -d link show tap-sq");
    assert!(sq.contains(&format!("master {BRIDGE}")) && !sq.contains("multi_queue"), "{sq}");
    // The underlay's MTU, on the taps and so on the bridge (its ports' smallest).
    assert!(mq.contains(" mtu 9000 ") && sq.contains(" mtu 9000 "), "{mq}\n{sq}");
    let bridge = in_lab(&net, &format!("ip link show {BRIDGE}"));
    assert!(bridge.contains(" mtu 9000 "), "{bridge}");
    if host_nf.is_some() {
        assert_eq!(in_lab(&net, bridge_nf_switches()), "0 0 0 ");
    } else {
        // Without br_netfilter there are no switches, and bridged frames skip netfilter.
        assert!(!Path::new("/proc/sys/net/bridge").exists());
    }
    // The host's own network is not the lab's to change.
    assert_eq!(std::fs::read_to_string("/proc/sys/net/bridge/bridge-nf-call-iptables").ok(), host_nf);
    assert_eq!(host_links(), host_links_before);

    drop(net);
    assert!(!Path::new(&format!("/proc/{holder}")).exists(), "the holder {holder} is left behind");
}

#[test]
fn the_lab_network_is_built_and_removed_by_this_user() {
    a_lab_network_as_this_user();
}

/// Run as root, this test plays an ordinary user: the same checks in a copy
/// of this test binary run as nobody (who is in no group, so not in kvm
/// either: the network needs none). Run as an ordinary user, it is the test
/// above.
#[test]
fn an_ordinary_user_builds_the_lab_network_in_a_user_namespace() {
    if !is_root() {
        return a_lab_network_as_this_user();
    }
    // A copy nobody can run wherever the build tree lies.
    let dir = tempfile::Builder::new().prefix("vlab-hostnet-").tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let exe = dir.path().join("hostnet");
    std::fs::copy(std::env::current_exe().unwrap(), &exe).unwrap();
    let mut cmd = Command::new(&exe);
    cmd.args(["--exact", "the_lab_network_is_built_and_removed_by_this_user", "--nocapture"]).env("HOME", dir.path());
    // SAFETY: only setgroups/setgid/setuid between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setgroups(0, std::ptr::null()) != 0 || libc::setgid(NOBODY) != 0 || libc::setuid(NOBODY) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let out = cmd.output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && text.contains("1 passed"), "as uid {NOBODY}:\n{text}");
}

/// What keeps an ordinary user from user namespaces is named with its fix.
#[test]
fn a_host_without_user_namespaces_is_named_with_the_fix() {
    let exe = "/opt/vlab/bin/vlab";
    assert_eq!(obstacle(None, Some("15000"), None, exe), None);
    assert_eq!(obstacle(Some("1"), Some("15000"), Some("0"), exe), None);
    let debian = obstacle(Some("0"), Some("15000"), None, exe).unwrap();
    assert!(debian.contains("sysctl -w kernel.unprivileged_userns_clone=1"), "{debian}");
    let none = obstacle(None, Some("0"), None, exe).unwrap();
    assert!(none.contains("sysctl -w user.max_user_namespaces="), "{none}");
    let ubuntu = obstacle(None, Some("15000"), Some("1"), exe).unwrap();
    assert!(ubuntu.contains("profile vlab /opt/vlab/bin/vlab flags=(unconfined) { userns, }"), "{ubuntu}");
    assert!(ubuntu.contains("kernel.apparmor_restrict_unprivileged_userns=0"), "{ubuntu}");
}

/// A vlab killed with SIGKILL leaves its VMs' run directories; the next run
/// of the same user removes those whose process is gone, and nothing else.
#[test]
fn run_directories_of_killed_runs_are_removed_by_the_next() {
    let base = tempfile::tempdir().unwrap();
    let make = |name: &str| {
        let dir = base.path().join(name);
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("root.qcow2"), b"overlay").unwrap();
        dir
    };
    // No process has a pid above the kernel's largest (2^22).
    let dead = make("vlab-99999999-a1b2c3");
    let live = make(&format!("vlab-{}-d4e5f6", std::process::id()));
    let other = make("vlab-hostnet-x");
    let file = base.path().join("vlab-99999999-file");
    std::fs::write(&file, b"not a run directory").unwrap();
    vlab::run::remove_stale_run_dirs(base.path());
    assert!(!dead.exists(), "the dead run's directory is removed");
    assert!(live.exists() && other.exists() && file.exists(), "nothing else is");
}
