//! Finding out whether KVM really works, by running guest code under it.
//!
//! `/dev/kvm` existing proves little: on some hosts (nested setups, special
//! hypervisors) it opens, yet every ordinary guest dies at vCPU setup
//! (`failed to set MSR`) or stops with `KVM internal error` while QEMU keeps
//! running. So the probe runs a vCPU through the KVM ioctls and then boots the
//! lab's own kernel under `-accel kvm -cpu host` until it panics for want of a
//! root disk, reading QEMU's stderr as it comes: a stopped guest is known at
//! once, not at the deadline. The probe's QEMU dies with vlab.
//!
//! The verdict is kept on disk ([`ProbeKey`]: host kernel and boot, QEMU
//! binary and version, `/dev/kvm`'s identity), so later runs and tests choose
//! in no time; `--accel kvm` probes again.

use std::io::{BufRead, BufReader};
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::args::Accel;

/// The outcome of a KVM probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KvmProbe {
    /// A guest kernel ran to completion under KVM.
    Usable,
    /// KVM cannot run our guests, and why.
    Unusable(String),
}

/// Runs `hlt` in a real-mode vCPU through the KVM ioctls.
fn probe_ioctls() -> Result<(), String> {
    use kvm_ioctls::{Kvm, VcpuExit};
    let kvm = Kvm::new().map_err(|e| format!("cannot open /dev/kvm: {e}"))?;
    let vm = kvm.create_vm().map_err(|e| format!("KVM_CREATE_VM failed: {e}"))?;
    const SIZE: usize = 0x1000;
    // SAFETY: an anonymous private mapping that we unmap below.
    let mem = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            SIZE,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if mem == libc::MAP_FAILED {
        return Err("mmap for the probe guest failed".into());
    }
    let result = (|| {
        // SAFETY: `mem` is a writable mapping of SIZE bytes; `hlt` is one byte.
        unsafe { *(mem as *mut u8) = 0xf4 };
        let region = kvm_bindings::kvm_userspace_memory_region {
            slot: 0,
            guest_phys_addr: 0x1000,
            memory_size: SIZE as u64,
            userspace_addr: mem as u64,
            flags: 0,
        };
        // SAFETY: the region stays mapped until after the VM is dropped.
        unsafe { vm.set_user_memory_region(region) }.map_err(|e| format!("KVM_SET_USER_MEMORY_REGION failed: {e}"))?;
        let mut vcpu = vm.create_vcpu(0).map_err(|e| format!("KVM_CREATE_VCPU failed: {e}"))?;
        let mut sregs = vcpu.get_sregs().map_err(|e| format!("KVM_GET_SREGS failed: {e}"))?;
        sregs.cs.base = 0;
        sregs.cs.selector = 0;
        vcpu.set_sregs(&sregs).map_err(|e| format!("KVM_SET_SREGS failed: {e}"))?;
        let mut regs = vcpu.get_regs().map_err(|e| format!("KVM_GET_REGS failed: {e}"))?;
        regs.rip = 0x1000;
        regs.rflags = 2;
        vcpu.set_regs(&regs).map_err(|e| format!("KVM_SET_REGS failed: {e}"))?;
        match vcpu.run() {
            Ok(VcpuExit::Hlt) => Ok(()),
            Ok(other) => Err(format!("the probe vCPU exited with {other:?} instead of HLT")),
            Err(e) => Err(format!("KVM_RUN failed: {e}")),
        }
    })();
    drop(vm);
    // SAFETY: unmapping the mapping made above.
    unsafe { libc::munmap(mem, SIZE) };
    result
}

/// How long a probe guest may take to reach its panic.
const PROBE_LIMIT: Duration = Duration::from_secs(30);

/// QEMU's words for a guest KVM has stopped while QEMU goes on running, the
/// most telling first.
const STOPPED: [&str; 2] = ["KVM internal error", "kvm run failed"];

/// Boots `kernel` under `-accel kvm -cpu host` with no root disk: a working KVM
/// runs it to the "unable to mount root" panic, which ends QEMU (panic=-1,
/// -no-reboot) with status 0 in a second or two. QEMU dies with vlab
/// (`PR_SET_PDEATHSIG`), and is killed as soon as it says KVM stopped the guest.
fn probe_qemu(qemu: &Path, kernel: &Path) -> Result<(), String> {
    let mut cmd = Command::new(qemu);
    cmd.args(["-machine", "q35", "-accel", "kvm", "-cpu", "host", "-m", "256M", "-smp", "1"])
        .args(["-nodefaults", "-no-user-config", "-display", "none", "-no-reboot", "-serial", "none"])
        .arg("-kernel")
        .arg(kernel)
        .args(["-append", "panic=-1 console=ttyS0"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    // SAFETY: only an async-signal-safe call between fork and exec.
    unsafe {
        cmd.pre_exec(|| match libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) {
            0 => Ok(()),
            _ => Err(std::io::Error::last_os_error()),
        });
    }
    let mut child = cmd.spawn().map_err(|e| format!("cannot start {}: {e}", qemu.display()))?;
    let (lines, said) = mpsc::channel();
    let stderr = child.stderr.take().expect("piped");
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if lines.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + PROBE_LIMIT;
    let mut err = Vec::new();
    let outcome = loop {
        while let Ok(line) = said.try_recv() {
            err.push(line);
        }
        if err.iter().any(|l| STOPPED.iter().any(|s| l.contains(s))) {
            // QEMU says it in a few lines: take them all, then the most telling.
            std::thread::sleep(Duration::from_millis(50));
            err.extend(said.try_iter());
            let stop = STOPPED.iter().find_map(|s| err.iter().find(|l| l.contains(s))).expect("seen above");
            break Err(format!("KVM stopped the guest: {}", stop.trim()));
        }
        match child.try_wait() {
            Ok(Some(status)) if status.success() => break Ok(()),
            Ok(Some(status)) => {
                // What QEMU said last is still on its way.
                std::thread::sleep(Duration::from_millis(50));
                err.extend(said.try_iter());
                break Err(format!("a guest kernel under -accel kvm died ({status}): {}", first_error(&err)));
            }
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            _ => {
                let said = first_error(&err);
                let said = if said.is_empty() { String::new() } else { format!(": {said}") };
                break Err(format!("a guest kernel under -accel kvm did not finish within 30 s{said}"));
            }
        }
    };
    let _ = child.kill();
    let _ = child.wait();
    outcome
}

/// The first line of QEMU's stderr that reads like an error (else its first line).
fn first_error(lines: &[String]) -> String {
    let error = |l: &&String| ["error", "Error", "failed", "Assertion"].iter().any(|w| l.contains(w));
    lines.iter().find(error).or(lines.first()).map(|l| l.trim().to_string()).unwrap_or_default()
}

/// Probes KVM: ioctls first, then (given a kernel) a real guest boot.
pub fn probe_kvm(qemu: &Path, kernel: Option<&Path>) -> KvmProbe {
    if let Err(e) = probe_ioctls() {
        return KvmProbe::Unusable(e);
    }
    match kernel.map(|k| probe_qemu(qemu, k)) {
        Some(Err(e)) => KvmProbe::Unusable(e),
        _ => KvmProbe::Usable,
    }
}

/// Whether the host's kernel runs as a nested guest of the kind whose KVM
/// opens yet cannot run ordinary guests (`nested_pvm=1` on its command line),
/// said as the reason; `None` for other hosts.
pub fn nested_pvm_host() -> Option<String> {
    nested_pvm(&std::fs::read_to_string("/proc/cmdline").ok()?)
}

/// [`nested_pvm_host`] from a kernel command line.
pub fn nested_pvm(cmdline: &str) -> Option<String> {
    let word = cmdline
        .split_whitespace()
        .take_while(|w| *w != "--")
        .find(|w| w.strip_prefix("nested_pvm=").is_some_and(|v| !matches!(v, "0" | "n" | "N" | "off")))?;
    Some(format!(
        "this host is itself a nested guest of a special kind (`{word}` on its kernel command line), \
         whose KVM cannot run ordinary guests"
    ))
}

/// What the user asked for on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AccelChoice {
    /// KVM when the probe passes, else TCG with a notice.
    #[default]
    Auto,
    /// KVM or fail.
    Kvm,
    /// Software emulation.
    Tcg,
}

/// What can change KVM's fitness: a probe verdict holds while all of it holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeKey {
    /// The host kernel (`uname -r`).
    pub host_kernel: String,
    /// The host's boot (`/proc/sys/kernel/random/boot_id`): module options
    /// and nested settings change across reboots.
    pub boot_id: String,
    /// The QEMU binary, its size and modification time.
    pub qemu: String,
    /// `/dev/kvm`: device number, inode and mode (`absent` without it).
    pub kvm_device: String,
}

impl ProbeKey {
    /// The key of this host with `qemu`.
    pub fn current(qemu: &Path) -> ProbeKey {
        let read = |p: &str| std::fs::read_to_string(p).map(|s| s.trim().to_string()).unwrap_or_default();
        let qemu_path = std::fs::canonicalize(qemu).unwrap_or_else(|_| qemu.to_path_buf());
        let qemu = match std::fs::metadata(&qemu_path) {
            Ok(m) => format!("{} {} bytes mtime {}", qemu_path.display(), m.len(), m.mtime()),
            Err(_) => qemu_path.display().to_string(),
        };
        let kvm_device = match std::fs::metadata("/dev/kvm") {
            Ok(m) => format!("rdev {:#x} ino {} mode {:o}", m.rdev(), m.ino(), m.mode()),
            Err(_) => "absent".to_string(),
        };
        ProbeKey {
            host_kernel: read("/proc/sys/kernel/osrelease"),
            boot_id: read("/proc/sys/kernel/random/boot_id"),
            qemu,
            kvm_device,
        }
    }

    /// The file name of this key's verdict.
    fn file_name(&self) -> String {
        let text = serde_json::to_string(self).unwrap_or_default();
        format!("kvm-{}.json", hex::encode(&Sha256::digest(text.as_bytes())[..8]))
    }
}

/// A probe verdict as kept on disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CachedProbe {
    /// What it holds for.
    pub key: ProbeKey,
    /// `None`: usable; else why not.
    pub unusable: Option<String>,
    /// When it was probed (seconds since the epoch).
    pub probed_at: u64,
}

impl CachedProbe {
    /// The verdict.
    pub fn probe(&self) -> KvmProbe {
        match &self.unusable {
            None => KvmProbe::Usable,
            Some(why) => KvmProbe::Unusable(why.clone()),
        }
    }
}

/// Where probe verdicts are kept: `accel/` under the cache root.
pub fn cache_dir() -> PathBuf {
    crate::image::cache_root().join("accel")
}

/// The verdict kept in `dir` for `key`, if any.
pub fn cached(dir: &Path, key: &ProbeKey) -> Option<CachedProbe> {
    let text = std::fs::read_to_string(dir.join(key.file_name())).ok()?;
    serde_json::from_str::<CachedProbe>(&text).ok().filter(|c| c.key == *key)
}

/// Keeps a verdict in `dir` (written whole, then renamed into place).
pub fn store(dir: &Path, key: &ProbeKey, probe: &KvmProbe) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let unusable = match probe {
        KvmProbe::Usable => None,
        KvmProbe::Unusable(why) => Some(why.clone()),
    };
    let probed_at = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let entry = CachedProbe { key: key.clone(), unusable, probed_at };
    let tmp = dir.join(format!(".{}.{}", key.file_name(), std::process::id()));
    std::fs::write(&tmp, serde_json::to_vec_pretty(&entry)?)?;
    std::fs::rename(&tmp, dir.join(key.file_name()))
}

/// The verdict for `qemu` on this host: kept on disk when `fresh` is false
/// and one was, else probed (with `kernel`) and kept. Within a process each
/// key is probed once (`vlab bench` runs a lab many times).
fn verdict(qemu: &Path, kernel: &Path, fresh: bool) -> KvmProbe {
    static PROBED: Mutex<Vec<(ProbeKey, KvmProbe)>> = Mutex::new(Vec::new());
    let key = ProbeKey::current(qemu);
    let mut probed = PROBED.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, known)) = probed.iter().find(|(k, _)| *k == key) {
        return known.clone();
    }
    let dir = cache_dir();
    let result = match cached(&dir, &key).filter(|_| !fresh) {
        Some(c) => c.probe(),
        None => {
            let result = probe_kvm(qemu, Some(kernel));
            if let Err(e) = store(&dir, &key, &result) {
                tracing::warn!("cannot keep the KVM probe's verdict in {}: {e}", dir.display());
            }
            result
        }
    };
    probed.push((key, result.clone()));
    result
}

/// Resolves the user's choice into an accelerator; `Err` when `kvm` was
/// demanded and does not work. `auto` takes the verdict kept on disk when
/// there is one; `kvm` probes again.
pub fn resolve(choice: AccelChoice, qemu: &Path, kernel: &Path) -> Result<(Accel, Option<String>), String> {
    match choice {
        AccelChoice::Tcg => Ok((Accel::Tcg, None)),
        AccelChoice::Kvm => match verdict(qemu, kernel, true) {
            KvmProbe::Usable => Ok((Accel::Kvm, None)),
            KvmProbe::Unusable(why) => Err(why),
        },
        AccelChoice::Auto => match verdict(qemu, kernel, false) {
            KvmProbe::Usable => Ok((Accel::Kvm, None)),
            KvmProbe::Unusable(why) => Ok((Accel::Tcg, Some(why))),
        },
    }
}
