//! QEMU: the command line, the process and its control channels.

pub mod accel;
pub mod agent;
mod args;
pub mod saved;

use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::hostnet::LabNet;

pub use args::{nic_args, qemu_args, Accel, NicBackend, NicSpec, TcgThread, VmSpec, TCG_CPU};

/// Errors of the QEMU process.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// QEMU could not be started.
    #[error("cannot start QEMU for `{vm}`: {source}")]
    Spawn {
        /// The VM.
        vm: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// QEMU exited while it should be running.
    #[error("QEMU of `{vm}` exited ({status}){}{}", fmt_stderr(stderr), fmt_tail(serial_tail))]
    Exited {
        /// The VM.
        vm: String,
        /// Its exit status.
        status: ExitStatus,
        /// What QEMU printed.
        stderr: String,
        /// The end of the guest's serial console.
        serial_tail: String,
        /// The guest oopsed on an `int3` that its memory no longer held: an
        /// emulator fault (see [`stale_int3_oops`]).
        stale_int3: Option<String>,
    },
    /// The guest stopped making progress before its agent answered: its
    /// kernel reported an RCU stall (a vCPU stopped running or stopped getting
    /// its timer interrupts), or it never reached vlab's init.
    #[error("`{vm}` stalled while booting ({why}){}", fmt_tail(serial_tail))]
    Stalled {
        /// The VM.
        vm: String,
        /// What showed the stall.
        why: String,
        /// The end of the guest's serial console.
        serial_tail: String,
    },
}

impl VmError {
    /// The VM and its oops, when the guest oopsed on an `int3` that its memory
    /// no longer held (see [`stale_int3_oops`]).
    pub fn stale_int3(&self) -> Option<(&str, &str)> {
        match self {
            VmError::Exited { vm, stale_int3: Some(oops), .. } => Some((vm, oops)),
            _ => None,
        }
    }

    /// The VM and QEMU's own crash as one line, when QEMU died of a signal
    /// with which programs crash (an assertion aborts, a bug faults) or said
    /// that an assertion failed: an emulator fault, whatever its guest was
    /// doing, and never its kernel's (a guest that panics makes QEMU exit 0).
    pub fn emulator_crash(&self) -> Option<(&str, String)> {
        use std::os::unix::process::ExitStatusExt;
        let VmError::Exited { vm, status, stderr, .. } = self else { return None };
        let signal = status.signal();
        let mut said = stderr.lines().map(str::trim).filter(|l| !l.is_empty() && !l.contains("terminating on signal"));
        let assertion = said.clone().find(|l| l.contains("Assertion") || l.contains("assertion"));
        let crashed = signal.is_some_and(|s| CRASH_SIGNALS.contains(&s));
        if !crashed && assertion.is_none() {
            return None;
        }
        let how = match signal {
            Some(s) => format!("QEMU of `{vm}` crashed ({})", signal_name(s)),
            None => format!("QEMU of `{vm}` failed an assertion"),
        };
        let what = assertion
            .or_else(|| said.next_back())
            .map(|l| format!(": {}", l.trim_end_matches('.')))
            .unwrap_or_default();
        Some((vm, format!("{how}{what}")))
    }
}

/// The signals with which a program crashes rather than is stopped.
const CRASH_SIGNALS: [i32; 5] = [libc::SIGABRT, libc::SIGSEGV, libc::SIGBUS, libc::SIGILL, libc::SIGFPE];

/// `SIGABRT` for 6, and so on; the number for others.
fn signal_name(signal: i32) -> String {
    let names = [
        (libc::SIGABRT, "SIGABRT"),
        (libc::SIGSEGV, "SIGSEGV"),
        (libc::SIGBUS, "SIGBUS"),
        (libc::SIGILL, "SIGILL"),
        (libc::SIGFPE, "SIGFPE"),
        (libc::SIGKILL, "SIGKILL"),
        (libc::SIGTERM, "SIGTERM"),
    ];
    names.iter().find(|(n, _)| *n == signal).map_or_else(|| format!("signal {signal}"), |(_, name)| name.to_string())
}

fn fmt_stderr(s: &str) -> String {
    if s.trim().is_empty() {
        String::new()
    } else {
        format!("; QEMU said: {}", s.trim())
    }
}

fn fmt_tail(s: &str) -> String {
    if s.trim().is_empty() {
        String::new()
    } else {
        format!("\n--- serial console (last lines) ---\n{}\n---", s.trim_end())
    }
}

/// The first line of a serial console that shows the guest kernel crashed:
/// a panic, an oops, a BUG or a general protection fault.
pub fn kernel_crash_line(console: &str) -> Option<String> {
    const SIGNS: [&str; 5] =
        ["Kernel panic - not syncing", "Oops: ", "BUG: ", "kernel BUG at", "general protection fault"];
    console.lines().find(|l| SIGNS.iter().any(|s| l.contains(s))).map(|l| l.trim().to_string())
}

/// Whether a serial console shows an RCU stall report (`rcu: INFO: rcu_preempt
/// detected stalls on CPUs/tasks`, `rcu: INFO: rcu_sched self-detected stall`).
pub fn reports_rcu_stall(console: &str) -> bool {
    console.lines().any(|l| l.contains("rcu: INFO: ") && l.contains("detected stall"))
}

/// The oops of a vCPU that trapped on an `int3` which guest memory no longer
/// holds, as a one-line summary (`Oops: int3 at kfree+0xa0/0x350`).
///
/// The kernel patches its own code at run time (jump labels, static calls)
/// by writing an `int3` over the site, then the new bytes, then removing the
/// `int3`; a vCPU that meets the `int3` meanwhile is sent on by the patcher's
/// trap handler. Under TCG another vCPU may still run a translation made while
/// the `int3` was there after the patcher has finished: it traps with no patch
/// in progress, and the kernel oopses. The code bytes the oops prints then show
/// that the byte before the trapping address is not `cc` (in the study's runs,
/// `66 <90>`: a 2-byte jump-label nop intact). An `int3` that is really in
/// memory (`cc <..>`) is a kernel bug and not matched.
pub fn stale_int3_oops(console: &str) -> Option<String> {
    let lines: Vec<&str> = console.lines().collect();
    for (i, line) in lines.iter().enumerate() {
        if !(line.contains("Oops: int3") || line.contains("] int3: 0000")) {
            continue;
        }
        let following = &lines[i + 1..lines.len().min(i + 6)];
        let code = following.iter().find_map(|l| l.split_once("Code: ").map(|(_, c)| c));
        let Some(code) = code else { continue };
        let bytes: Vec<&str> = code.split_whitespace().collect();
        let Some(at) = bytes.iter().position(|b| b.starts_with('<')) else { continue };
        if at == 0 || bytes[at - 1].eq_ignore_ascii_case("cc") {
            continue;
        }
        let rip = following.iter().find_map(|l| l.split_once("RIP: ").map(|(_, r)| r.trim()));
        let place = rip.and_then(|r| r.split_once(':').map(|(_, f)| f)).unwrap_or("an unknown place");
        return Some(format!("Oops: int3 at {place}"));
    }
    None
}

/// What `images/guest/vlab-init` prints as it starts the guest agent: the
/// console's sign that the guest got through its kernel and initramfs.
pub const INIT_STARTED: &str = "vlab-init: starting the guest agent";

/// The QEMU binary: `$VLAB_QEMU`, else `qemu-system-x86_64` on PATH.
pub fn find_qemu() -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("VLAB_QEMU") {
        let p = PathBuf::from(p);
        return match p.is_file() {
            true => Ok(p),
            false => Err(format!("VLAB_QEMU={}: no such file", p.display())),
        };
    }
    which::which("qemu-system-x86_64")
        .map_err(|_| "qemu-system-x86_64 is not installed (run ci/setup, or set VLAB_QEMU)".to_string())
}

/// `qemu-system-x86_64 --version`, e.g. `10.0.2`.
pub fn qemu_version(qemu: &Path) -> Option<String> {
    let out = Command::new(qemu).arg("--version").output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace().skip_while(|w| *w != "version").nth(1).map(str::to_string)
}

/// The offload properties an emulated NIC's `-device MODEL,help` lists:
/// checksum and segmentation features the guest and the host side may use
/// (`csum`, `gso`, `host_tso4`, `guest_uso6`, ...), and among them those of
/// UDP tunnels (segmentation of VXLAN/GENEVE packets by the emulator; QEMU
/// 10.0's virtio-net has none).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NicOffloads {
    /// Every offload property, in the order listed.
    pub offered: Vec<String>,
    /// Those of UDP tunnels.
    pub udp_tunnel: Vec<String>,
}

/// What a lab may ask of this host's QEMU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostQemu {
    /// Its version (`10.0.2`).
    pub version: String,
    /// The major version.
    pub major: u32,
    /// Its virtio-net offers UDP-tunnel offloads (`host_tunnel`, ...).
    pub virtio_udp_tunnel: bool,
}

impl HostQemu {
    /// Asks `qemu` for its version and its virtio-net's offloads.
    pub fn probe(qemu: &Path) -> Option<HostQemu> {
        let version = qemu_version(qemu)?;
        let major = version.split('.').next().and_then(|m| m.parse().ok())?;
        let virtio_udp_tunnel = probe_nic_offloads(qemu, "virtio-net-pci")
            .is_some_and(|o| TUNNEL_PROPS.iter().all(|p| o.offered.iter().any(|n| n == p)));
        Some(HostQemu { version, major, virtio_udp_tunnel })
    }
}

/// virtio-net's UDP-tunnel offload properties (QEMU 10.1 and later), set
/// together by a NIC's `udp_tunnel`.
pub const TUNNEL_PROPS: [&str; 4] = ["host_tunnel", "host_tunnel_csum", "guest_tunnel", "guest_tunnel_csum"];

/// Parses `-device MODEL,help` (lines `  name=<type> - ...`).
pub fn nic_offloads(help: &str) -> NicOffloads {
    let offered: Vec<String> = help
        .lines()
        .filter_map(|l| l.trim_start().split_once('=').map(|(name, _)| name))
        .filter(|name| ["csum", "gso"].contains(name) || name.starts_with("host_") || name.starts_with("guest_"))
        .filter(|name| !name.ends_with("mtu") && *name != "guest_announce")
        .map(String::from)
        .collect();
    let udp_tunnel = offered.iter().filter(|n| n.contains("tunnel") || n.contains("tnl")).cloned().collect();
    NicOffloads { offered, udp_tunnel }
}

/// What `qemu -device MODEL,help` says of `model`'s offloads.
pub fn probe_nic_offloads(qemu: &Path, model: &str) -> Option<NicOffloads> {
    let out = Command::new(qemu).args(["-device", &format!("{model},help")]).output().ok()?;
    out.status.success().then(|| nic_offloads(&String::from_utf8_lossy(&out.stdout)))
}

/// Checks that a host PCI function can be passed through: it exists and is
/// bound to vfio-pci. The error says what to do.
pub fn check_vfio(host: &str) -> Result<(), String> {
    let dev = PathBuf::from("/sys/bus/pci/devices").join(host);
    if !dev.exists() {
        return Err(format!("PCI function {host} does not exist on this host (see `lspci -D`)"));
    }
    let driver = std::fs::read_link(dev.join("driver"))
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()));
    match driver.as_deref() {
        Some("vfio-pci") => {}
        other => {
            return Err(format!(
                "PCI function {host} is bound to {}, not vfio-pci: `modprobe vfio-pci; echo {host} > /sys/bus/pci/devices/{host}/driver/unbind; \
                 echo vfio-pci > /sys/bus/pci/devices/{host}/driver_override; echo {host} > /sys/bus/pci/drivers_probe`",
                other.unwrap_or("no driver")
            ))
        }
    }
    let group = std::fs::read_link(dev.join("iommu_group")).map_err(|_| {
        format!("PCI function {host} has no IOMMU group: enable the IOMMU (intel_iommu=on / amd_iommu=on)")
    })?;
    let group = group.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    if !PathBuf::from("/dev/vfio").join(&group).exists() {
        return Err(format!("/dev/vfio/{group} is missing for PCI function {host}: load vfio-pci"));
    }
    Ok(())
}

/// qboot, the fastest firmware for direct kernel boot, when installed.
pub fn find_firmware() -> Option<PathBuf> {
    ["/usr/share/qemu/qboot.rom", "/usr/share/seabios/qboot.rom"].iter().map(PathBuf::from).find(|p| p.is_file())
}

/// A running QEMU. Dropping it kills QEMU and reaps it.
pub struct QemuProcess {
    name: String,
    child: Child,
    stderr_path: PathBuf,
    serial_path: PathBuf,
    started: Instant,
}

impl QemuProcess {
    /// Starts QEMU for `spec` inside the lab's network namespace, in process
    /// group `pgid` (0: a new group led by it). QEMU is killed if vlab dies
    /// (PR_SET_PDEATHSIG), and what it creates (QMP and agent sockets, the
    /// console log) is the caller's alone (umask 177: sockets and files 0600).
    pub fn spawn(qemu: &Path, spec: &VmSpec, net: &LabNet, pgid: i32) -> Result<QemuProcess, VmError> {
        let err = |source| VmError::Spawn { vm: spec.name.clone(), source };
        let stderr_path = spec.run_dir.join("qemu.stderr");
        let stderr = File::create(&stderr_path).map_err(err)?;
        let mut cmd = net.command(qemu);
        cmd.args(qemu_args(spec)).stdin(Stdio::null()).stdout(Stdio::null()).stderr(stderr);
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                libc::umask(0o177);
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if libc::setpgid(0, pgid) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().map_err(err)?;
        Ok(QemuProcess {
            name: spec.name.clone(),
            child,
            stderr_path,
            serial_path: spec.serial_log(),
            started: Instant::now(),
        })
    }

    /// Time since QEMU was started.
    pub fn running_for(&self) -> Duration {
        self.started.elapsed()
    }

    /// QEMU's pid (the lab's process group leader when spawned with pgid 0).
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// `Err` with the exit status, QEMU's stderr and the serial tail once QEMU has exited.
    pub fn check_running(&mut self) -> Result<(), VmError> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => Err(self.exited(status)),
            Err(e) => Err(VmError::Spawn { vm: self.name.clone(), source: e }),
        }
    }

    /// Like [`check_running`](Self::check_running), and `Err` once the guest's
    /// kernel has reported an RCU stall, or once `init_limit` has passed since
    /// QEMU started without vlab's init on the console (a guest whose vCPUs all
    /// wait for a timer interrupt that never comes says nothing at all). Such a
    /// boot rarely recovers before the boot timeout, and reads as a hang.
    pub fn check_booting(&mut self, init_limit: Duration) -> Result<(), VmError> {
        self.check_running()?;
        let log = std::fs::read(&self.serial_path).unwrap_or_default();
        let console = String::from_utf8_lossy(&log);
        let why = if reports_rcu_stall(&console) {
            "its kernel reported an RCU stall".to_string()
        } else if self.running_for() > init_limit && !console.contains(INIT_STARTED) {
            format!("its init had not started after {} s", init_limit.as_secs())
        } else {
            return Ok(());
        };
        Err(VmError::Stalled { vm: self.name.clone(), why, serial_tail: self.serial_tail(25) })
    }

    fn exited(&self, status: ExitStatus) -> VmError {
        VmError::Exited {
            vm: self.name.clone(),
            status,
            stderr: std::fs::read_to_string(&self.stderr_path).unwrap_or_default(),
            serial_tail: self.serial_tail(25),
            stale_int3: stale_int3_oops(&String::from_utf8_lossy(
                &std::fs::read(&self.serial_path).unwrap_or_default(),
            )),
        }
    }

    /// The last `lines` lines of the guest's serial console.
    pub fn serial_tail(&self, lines: usize) -> String {
        serial_tail(&self.serial_path, lines)
    }

    /// Path of the serial log.
    pub fn serial_path(&self) -> &Path {
        &self.serial_path
    }

    /// Stops QEMU: SIGTERM, a short wait, then SIGKILL; always reaps.
    pub fn stop(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        for _ in 0..100 {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for QemuProcess {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The end of a console log, without control characters. When the guest
/// panicked or oopsed, the excerpt starts at the report's first line (the
/// reason), not somewhere inside its stack trace.
pub fn serial_tail(path: &Path, lines: usize) -> String {
    let bytes = std::fs::read(path).unwrap_or_default();
    let text: String = String::from_utf8_lossy(&bytes).chars().filter(|c| *c == '\n' || !c.is_control()).collect();
    let all: Vec<&str> = text.lines().collect();
    let tail_start = all.len().saturating_sub(lines);
    let report = all.iter().rposition(|l| l.contains("Kernel panic") || l.contains("BUG:") || l.contains("Oops:"));
    // What the guest's own scripts said just before is often the reason.
    let report = report.map(|at| {
        let from = at.saturating_sub(8);
        (from..at).find(|&i| all[i].starts_with("vlab-")).unwrap_or(at)
    });
    match report {
        Some(at) if at < tail_start => {
            let head_end = (at + lines.saturating_sub(5)).min(all.len());
            let mut out = all[at..head_end].join("\n");
            if head_end < all.len() {
                let rest = all.len().saturating_sub(4).max(head_end);
                out.push_str("\n[...]\n");
                out.push_str(&all[rest..].join("\n"));
            }
            out
        }
        _ => all[tail_start..].join("\n"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Trimmed from QEMU 10.0.2's `-device virtio-net-pci,help`.
    const VIRTIO_NET_10_0: &str = "virtio-net-pci options:
  csum=<bool>            - on/off (default: on)
  guest_announce=<bool>  - on/off (default: on)
  guest_csum=<bool>      - on/off (default: on)
  guest_tso4=<bool>      - on/off (default: on)
  guest_uso6=<bool>      - on/off (default: on)
  gso=<bool>             - on/off (default: on)
  host_mtu=<uint16>      -  (default: 0)
  host_tso4=<bool>       - on/off (default: on)
  mq=<bool>              - on/off (default: off)
  x-mtu-bypass-backend=<bool> - on/off (default: on)
";

    #[test]
    fn the_nics_offloads_are_read_from_its_help() {
        let o = nic_offloads(VIRTIO_NET_10_0);
        assert_eq!(o.offered, ["csum", "guest_csum", "guest_tso4", "guest_uso6", "gso", "host_tso4"]);
        assert!(o.udp_tunnel.is_empty(), "{o:?}");
        let newer = format!("{VIRTIO_NET_10_0}  host_tunnel=<bool>     - on/off (default: off)\n");
        assert_eq!(nic_offloads(&newer).udp_tunnel, ["host_tunnel"]);
    }
}
