//! Finding out whether KVM really works, by running guest code under it.
//!
//! `/dev/kvm` existing proves little: on some hosts (nested setups, special
//! hypervisors) it opens, yet every ordinary guest dies at vCPU setup
//! (`failed to set MSR`) or stops with `KVM internal error`. So the probe runs
//! a vCPU through the KVM ioctls and then boots the lab's own kernel under
//! `-accel kvm -cpu host` until it panics for want of a root disk.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

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

/// Boots `kernel` under `-accel kvm -cpu host` with no root disk: a working KVM
/// runs it to the "unable to mount root" panic, which ends QEMU (panic=-1,
/// -no-reboot) with status 0 in a second or two.
fn probe_qemu(qemu: &Path, kernel: &Path) -> Result<(), String> {
    let mut child = Command::new(qemu)
        .args(["-machine", "q35", "-accel", "kvm", "-cpu", "host", "-m", "256M", "-smp", "1"])
        .args(["-nodefaults", "-no-user-config", "-display", "none", "-no-reboot", "-serial", "none"])
        .arg("-kernel")
        .arg(kernel)
        .args(["-append", "panic=-1 console=ttyS0"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", qemu.display()))?;
    let mut stderr = child.stderr.take().expect("piped");
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
        }
    };
    let err = reader.join().unwrap_or_default();
    let first_error = err
        .lines()
        .find(|l| l.contains("error") || l.contains("Error") || l.contains("failed") || l.contains("Assertion"))
        .unwrap_or_else(|| err.lines().next().unwrap_or(""))
        .trim()
        .to_string();
    match status {
        Some(s) if s.success() => Ok(()),
        Some(s) => Err(format!("a guest kernel under -accel kvm died ({s}): {first_error}")),
        None => Err(format!(
            "a guest kernel under -accel kvm did not finish within 30 s{}",
            if first_error.is_empty() { String::new() } else { format!(": {first_error}") }
        )),
    }
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

/// The probe of a QEMU and kernel, run once per process: `vlab bench` runs a
/// lab many times, and KVM's fitness does not change between its runs.
fn probe_once(qemu: &Path, kernel: &Path) -> KvmProbe {
    static PROBES: Mutex<Vec<((PathBuf, PathBuf), KvmProbe)>> = Mutex::new(Vec::new());
    let key = (qemu.to_path_buf(), kernel.to_path_buf());
    let mut probes = PROBES.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, known)) = probes.iter().find(|(k, _)| *k == key) {
        return known.clone();
    }
    let result = probe_kvm(qemu, Some(kernel));
    probes.push((key, result.clone()));
    result
}

/// Resolves the user's choice into an accelerator; `Err` when `kvm` was
/// demanded and does not work.
pub fn resolve(choice: AccelChoice, qemu: &Path, kernel: &Path) -> Result<(Accel, Option<String>), String> {
    match choice {
        AccelChoice::Tcg => Ok((Accel::Tcg, None)),
        AccelChoice::Kvm => match probe_once(qemu, kernel) {
            KvmProbe::Usable => Ok((Accel::Kvm, None)),
            KvmProbe::Unusable(why) => Err(why),
        },
        AccelChoice::Auto => match probe_once(qemu, kernel) {
            KvmProbe::Usable => Ok((Accel::Kvm, None)),
            KvmProbe::Unusable(why) => Ok((Accel::Tcg, Some(why))),
        },
    }
}
