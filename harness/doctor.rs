//! `vlab doctor`: what this host can and cannot do, and what to do about it.

use std::process::Command;

use crate::qemu::accel::{self, probe_kvm, KvmProbe};
use crate::{hostnet, image, qemu, run};

fn line(ok: bool, what: &str, detail: &str) -> bool {
    println!("{} {what:<14} {detail}", if ok { "ok  " } else { "FAIL" });
    ok
}

/// A finding that limits vlab without stopping it.
fn warn(what: &str, detail: &str) {
    println!("warn {what:<14} {detail}");
}

/// Prints one line per prerequisite; returns 0 when labs can run, 125 otherwise.
pub fn doctor() -> u8 {
    let qemu = qemu::find_qemu();
    let mut ready = check_qemu(&qemu);
    let recipe = crate::images_dir().join("base.toml");
    let cached = image::cached(&recipe).ok().flatten();
    check_kvm(&qemu, cached.as_ref());
    ready &= check_image(cached.as_ref());
    ready &= check_host();
    if ready {
        crate::exit::PASSED
    } else {
        crate::exit::COULD_NOT_RUN
    }
}

/// QEMU and its igb device.
fn check_qemu(qemu: &Result<std::path::PathBuf, String>) -> bool {
    match qemu {
        Ok(q) => {
            let version = qemu::qemu_version(q).unwrap_or_else(|| "unknown".into());
            let major: u32 = version.split('.').next().and_then(|m| m.parse().ok()).unwrap_or(0);
            line(true, "qemu", &format!("{} {version}", q.display()));
            let igb = Command::new(q)
                .args(["-device", "help"])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).contains("\"igb\""))
                .unwrap_or(false);
            line(
                igb && major >= 8,
                "igb",
                if igb { "emulated igb (SR-IOV) available" } else { "no igb device: SR-IOV labs need QEMU >= 8" },
            );
            nic_offloads(q);
        }
        Err(e) => return line(false, "qemu", e),
    }
    true
}

/// The offloads QEMU's virtio-net offers its guests, and whether UDP-tunnel
/// segmentation is among them: without it a VXLAN flow is cut into
/// MTU-sized packets in the guest, and a tunnel's ratio to plain routing
/// mostly says how many more packets it takes.
fn nic_offloads(q: &std::path::Path) {
    let Some(o) = qemu::probe_nic_offloads(q, "virtio-net-pci") else {
        line(false, "virtio-net", "`-device virtio-net-pci,help` failed");
        return;
    };
    let offered = o.offered.join(" ");
    match o.udp_tunnel.is_empty() {
        false => {
            line(true, "virtio-net", &format!("offloads {offered}; UDP tunnels: {}", o.udp_tunnel.join(" ")));
        }
        true => warn(
            "virtio-net",
            &format!(
                "offloads {offered}; no UDP-tunnel segmentation: tunnels are cut to the MTU in the guest (a NIC's `udp_tunnel` needs QEMU 10.1 or later)"
            ),
        ),
    }
}

/// KVM, probed by running guest code (a warning when unusable: TCG runs
/// labs); a verdict kept by an earlier probe on this host is shown as such.
fn check_kvm(qemu: &Result<std::path::PathBuf, String>, cached: Option<&image::Image>) {
    let qemu_path = qemu.as_ref().map(|q| q.as_path()).unwrap_or("qemu".as_ref());
    let key = accel::ProbeKey::current(qemu_path);
    let (probe, kept) = match accel::cached(&accel::cache_dir(), &key) {
        Some(c) => (c.probe(), format!(" (kept from a probe {} s ago; --accel kvm probes again)", age(c.probed_at))),
        None => {
            let probe = probe_kvm(qemu_path, cached.map(|i| i.kernel.as_path()));
            if cached.is_some() {
                let _ = accel::store(&accel::cache_dir(), &key, &probe);
            }
            (probe, String::new())
        }
    };
    match probe {
        KvmProbe::Usable if cached.is_some() => {
            line(true, "kvm", &format!("usable: a guest kernel booted under -accel kvm{kept}"));
        }
        KvmProbe::Usable => {
            line(true, "kvm", "a vCPU runs; the full guest probe runs once the image is built");
        }
        KvmProbe::Unusable(why) => {
            let host = accel::nested_pvm_host().or_else(kvm_access).map(|n| format!("; {n}")).unwrap_or_default();
            warn("kvm", &format!("not usable, labs run under TCG: {why}{kept}{host}"))
        }
    }
}

/// Why this user cannot open `/dev/kvm`, with the fix.
fn kvm_access() -> Option<String> {
    let e = std::fs::OpenOptions::new().read(true).write(true).open("/dev/kvm").err()?;
    (e.kind() == std::io::ErrorKind::PermissionDenied).then(|| {
        "/dev/kvm is not open to this user: join the kvm group (`sudo usermod -aG kvm $USER`, then log in again); \
         `sudo ci/setup` gives /dev/kvm to that group where the host has not"
            .to_string()
    })
}

/// Seconds since `when` (seconds since the epoch).
fn age(when: u64) -> u64 {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    now.saturating_sub(when)
}

/// The image cache, and what fills it: mmdebstrap and, for an ordinary
/// user, subordinate ids and the uidmap helpers.
fn check_image(cached: Option<&image::Image>) -> bool {
    match cached {
        Some(i) => line(
            true,
            "image",
            &format!("{}-{} cached (kernel {}) in {}", i.name, i.key, i.kernel_release, i.dir.display()),
        ),
        None => line(
            true,
            "image",
            &format!(
                "not built yet: `vlab image build` (or the first `vlab run`) builds it into {} in about a minute",
                image::cache_root().display()
            ),
        ),
    };
    let mmdebstrap = which::which("mmdebstrap").is_ok();
    let mut ready = line(
        mmdebstrap || cached.is_some(),
        "mmdebstrap",
        if mmdebstrap { "installed" } else { "missing: run ci/setup" },
    );
    if !hostnet::is_root() {
        let missing = image::userns::prerequisites().err();
        match (missing, cached) {
            (None, _) => {
                line(true, "subuids", "images build without root (mmdebstrap --mode=unshare, subordinate ids)");
            }
            (Some(why), Some(_)) => warn("subuids", &format!("the image is built, but a new one could not be: {why}")),
            (Some(why), None) => ready &= line(false, "subuids", &why),
        }
    }
    ready
}

/// Who runs labs, the lab's namespaces, the devices QEMU opens, vhost-net.
fn check_host() -> bool {
    let mut ready = true;
    let root = hostnet::is_root();
    // SAFETY: geteuid has no preconditions.
    let uid = unsafe { libc::geteuid() };
    line(
        true,
        "user",
        &if root {
            "root".to_string()
        } else {
            format!("uid {uid}: the lab's network lives in a user namespace of its own")
        },
    );
    let ns = hostnet::LabNet::create();
    ready &= line(
        ns.is_ok(),
        "namespaces",
        &ns.as_ref()
            .map(|n| {
                let user = if n.in_user_namespace() { " (in a user namespace)" } else { "" };
                format!("created and removed {}{user}", n.name())
            })
            .unwrap_or_else(|e| e.to_string()),
    );
    drop(ns);
    let tun = std::fs::OpenOptions::new().read(true).write(true).open("/dev/net/tun");
    ready &= line(
        tun.is_ok(),
        "tun",
        &match &tun {
            Ok(_) => "/dev/net/tun opens: QEMU attaches to the lab's taps".to_string(),
            Err(e) => format!(
                "/dev/net/tun: {e}: QEMU cannot attach to the lab's taps; distributions give it mode 0666 \
                 (`sudo chmod 0666 /dev/net/tun`, or `sudo ci/setup`)"
            ),
        },
    );
    line(
        true,
        "vhost-net",
        if run::vhost_usable() { "usable" } else { "not available: virtio NICs use QEMU's userspace datapath" },
    );
    ready
}
