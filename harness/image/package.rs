//! Distribution kernel packages (`vlab run --kernel-deb FILE`): a Debian
//! kernel package (the archive's `linux-image-*`, or `make bindeb-pkg`)
//! unpacked into the cache once, keyed by a hash of the file: its kernel
//! (and the vmlinux inside it, for a PVH boot), and its module tree cut to
//! what a lab can load, decompressed, with a fresh `modules.dep` and the
//! package's configuration as `config` (which the guests read, see
//! `run::kconfig::READ_CONFIG`). A run carries the tree to the VMs in their
//! initramfs, as for `--modules`.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

use super::{cache_root, cancel, run, CacheLock, ImageError};
use crate::ui::Progress;

/// A kernel unpacked from a package.
#[derive(Debug, Clone)]
pub struct PackagedKernel {
    /// Its release (`uname -r`).
    pub release: String,
    /// What QEMU boots: the vmlinux (PVH) when the kernel has one, else the vmlinuz.
    pub kernel: PathBuf,
    /// Its module tree as an `INSTALL_MOD_PATH` (`lib/modules/RELEASE`
    /// under it); `None` when the package has no modules.
    pub modules: Option<PathBuf>,
}

/// Where in a package's module tree (`kernel/...`) the modules a lab can
/// load are: networking, the file systems of the root disk and the
/// containers, virtio, the NICs vlab emulates or passes through (igb and
/// igbvf are Intel's), VFIO, vhost, and the libraries and crypto they use.
/// Everything these depend on (`modules.dep`: dca, ptp, i2c-algo-bit for
/// igb) is kept too. A distribution's whole tree is 4000 modules; the VMs
/// get it in their initramfs, held in memory until it is copied.
const KEEP: &[&str] = &[
    "kernel/arch/",
    "kernel/crypto/",
    "kernel/lib/",
    "kernel/net/",
    "kernel/fs/ext4/",
    "kernel/fs/overlayfs/",
    "kernel/drivers/virtio/",
    "kernel/drivers/block/virtio_blk",
    "kernel/drivers/char/virtio_console",
    "kernel/drivers/char/hw_random/",
    "kernel/drivers/vfio/",
    "kernel/drivers/vhost/",
    "kernel/drivers/net/",
];

/// Within [`KEEP`], what no lab loads: radios, buses, and every Ethernet
/// vendor but Intel.
const DROP: &[&str] = &[
    "kernel/net/wireless/",
    "kernel/net/mac80211/",
    "kernel/net/bluetooth/",
    "kernel/net/nfc/",
    "kernel/drivers/net/wireless/",
    "kernel/drivers/net/usb/",
    "kernel/drivers/net/can/",
    "kernel/drivers/net/wwan/",
    "kernel/drivers/net/ieee802154/",
    "kernel/drivers/net/hamradio/",
];

/// Whether a module (its path in `modules.dep`) is one a lab can load.
fn wanted(path: &str) -> bool {
    let vendor_not_intel = path
        .strip_prefix("kernel/drivers/net/ethernet/")
        .is_some_and(|rest| rest.contains('/') && !rest.starts_with("intel/"));
    KEEP.iter().any(|k| path.starts_with(k)) && !DROP.iter().any(|d| path.starts_with(d)) && !vendor_not_intel
}

/// The modules to keep of a tree whose `modules.dep` is `dep`: the wanted
/// ones and everything they depend on (depmod lists every dependency,
/// however indirect, on the module's own line).
pub(crate) fn keep(dep: &str) -> std::collections::BTreeSet<String> {
    let mut keep = std::collections::BTreeSet::new();
    for (module, deps) in dep.lines().filter_map(|l| l.split_once(':')) {
        if wanted(module) {
            keep.insert(module.to_string());
            keep.extend(deps.split_whitespace().map(String::from));
        }
    }
    keep
}

/// A program vlab runs on the host, found in PATH or the sbin directories
/// (see [`crate::path_with_sbin`]), else an error that names the package to
/// install.
fn tool(name: &str, package: &str) -> Result<PathBuf, ImageError> {
    which::which_in(name, Some(crate::path_with_sbin()), ".").map_err(|_| ImageError::Step {
        step: name.into(),
        detail: format!("{name} is not installed: install {package} (ci/setup does)"),
    })
}

/// The cache entry of a package: its file name's stem and a hash of its bytes.
fn entry_name(deb: &Path) -> Result<String, ImageError> {
    let bytes = fs::read(deb).map_err(|source| ImageError::Cache { path: deb.into(), source })?;
    let stem = deb.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    Ok(format!("{stem}-{}", hex::encode(&Sha256::digest(&bytes)[..8])))
}

fn read_entry(dir: &Path) -> Option<PackagedKernel> {
    let release = fs::read_to_string(dir.join("release")).ok()?.trim().to_string();
    let vmlinux = dir.join("vmlinux");
    let modules = dir.join("modules");
    Some(PackagedKernel {
        kernel: if vmlinux.is_file() { vmlinux } else { dir.join("vmlinuz") },
        modules: modules.join("lib/modules").join(&release).join("modules.dep").is_file().then_some(modules),
        release,
    })
}

/// The kernel of a Debian kernel package, unpacked into the cache (or found
/// there).
pub fn kernel_deb(deb: &Path, progress: &Progress) -> Result<PackagedKernel, ImageError> {
    kernel_deb_in(&cache_root().join("kernels"), deb, progress)
}

/// [`kernel_deb`] with its cache entries in `root`.
pub fn kernel_deb_in(root: &Path, deb: &Path, progress: &Progress) -> Result<PackagedKernel, ImageError> {
    let root = root.to_path_buf();
    fs::create_dir_all(&root).map_err(|source| ImageError::Cache { path: root.clone(), source })?;
    let name = entry_name(deb)?;
    let final_dir = root.join(&name);
    if let Some(k) = read_entry(&final_dir) {
        return Ok(k);
    }
    let _lock = CacheLock::acquire(&root.join(format!("{name}.lock")), progress)?;
    if let Some(k) = read_entry(&final_dir) {
        return Ok(k);
    }
    let active = cancel::Active::register();
    // Under the lock, another unpacking of this entry is one that a killed vlab left.
    let prefix = format!(".unpack-{name}-");
    for entry in fs::read_dir(&root).into_iter().flatten().flatten() {
        if entry.file_name().to_string_lossy().starts_with(&prefix) {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
    // Removed on drop (an error, a cancel) unless it was moved into place.
    let work = tempfile::Builder::new()
        .prefix(&prefix)
        .tempdir_in(&root)
        .map_err(|source| ImageError::Cache { path: root.clone(), source })?;
    progress.phase(&format!("unpacking {}", deb.display()));
    let unpacked = work.path().join("package");
    let dpkg_deb = tool("dpkg-deb", "dpkg")?;
    run(&active, "dpkg-deb", Command::new(dpkg_deb).arg("-x").arg(deb).arg(&unpacked)).map_err(|e| match e {
        ImageError::Step { detail, .. } => {
            ImageError::BadPackage { path: deb.into(), why: format!("not a Debian package ({detail})") }
        }
        e => e,
    })?;
    let boot = unpacked.join("boot");
    let images: Vec<String> = fs::read_dir(&boot)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("vmlinuz-"))
        .collect();
    let release = match &images[..] {
        [one] => one["vmlinuz-".len()..].to_string(),
        [] => {
            let why = "holds no boot/vmlinuz-*: not a kernel image package (linux-image-*)".into();
            return Err(ImageError::BadPackage { path: deb.into(), why });
        }
        _ => {
            let why = format!("holds several kernels ({})", images.join(", "));
            return Err(ImageError::BadPackage { path: deb.into(), why });
        }
    };
    let into =
        |from: &Path, to: &Path| fs::rename(from, to).map_err(|source| ImageError::Cache { path: to.into(), source });
    into(&boot.join(format!("vmlinuz-{release}")), &work.path().join("vmlinuz"))?;
    let config = fs::read_to_string(boot.join(format!("config-{release}"))).unwrap_or_default();
    // Merged-/usr packages have usr/lib/modules.
    let tree = ["usr/lib/modules", "lib/modules"].iter().map(|d| unpacked.join(d).join(&release)).find(|d| d.is_dir());
    if let Some(tree) = tree {
        progress.phase(&format!("modules of {release}: cutting, decompressing, depmod"));
        let modules = work.path().join("modules");
        let dest = modules.join("lib/modules").join(&release);
        fs::create_dir_all(modules.join("lib/modules"))
            .map_err(|source| ImageError::Cache { path: modules.clone(), source })?;
        into(&tree, &dest)?;
        if !config.is_empty() {
            fs::write(dest.join("config"), &config)
                .map_err(|source| ImageError::Cache { path: dest.clone(), source })?;
        }
        let depmod = tool("depmod", "kmod")?;
        let depmod_cmd = || {
            let mut cmd = Command::new(&depmod);
            cmd.arg("-b").arg(&modules).arg(&release);
            cmd
        };
        // A package leaves modules.dep to its postinst.
        run(&active, "depmod", &mut depmod_cmd())?;
        let dep = fs::read_to_string(dest.join("modules.dep"))
            .map_err(|source| ImageError::Cache { path: dest.clone(), source })?;
        let keep = keep(&dep);
        for module in dep.lines().filter_map(|l| l.split_once(':')).map(|(m, _)| m).filter(|m| !keep.contains(*m)) {
            fs::remove_file(dest.join(module))
                .map_err(|source| ImageError::Cache { path: dest.join(module), source })?;
        }
        super::decompress_modules(&active, &|t: &str| Command::new(t), &dest)?;
        run(&active, "depmod", &mut depmod_cmd())?;
    }
    let pvh = config.lines().any(|l| l == "CONFIG_PVH=y");
    if pvh {
        progress.phase(&format!("extracting vmlinux of {release} for PVH boot"));
        let bzimage =
            fs::read(work.path().join("vmlinuz")).map_err(|source| ImageError::Cache { path: deb.into(), source })?;
        if let Some(vmlinux) = super::extract_vmlinux(&active, &bzimage) {
            super::write(&work.path().join("vmlinux"), &vmlinux)?;
        }
    }
    fs::remove_dir_all(&unpacked).map_err(|source| ImageError::Cache { path: unpacked.clone(), source })?;
    super::write(&work.path().join("release"), release.as_bytes())?;
    let work = work.keep();
    fs::rename(&work, &final_dir).map_err(|source| ImageError::Cache { path: final_dir.clone(), source })?;
    active.check()?;
    read_entry(&final_dir).ok_or_else(|| ImageError::Step {
        step: "kernel package".into(),
        detail: format!("{} was unpacked but cannot be read back", final_dir.display()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The wanted modules and, whatever their folder, what they depend on;
    /// nothing else.
    #[test]
    fn the_cut_keeps_what_labs_load_and_their_dependencies() {
        let dep = "\
kernel/drivers/net/ethernet/intel/igb/igb.ko.xz: kernel/drivers/dca/dca.ko.xz kernel/drivers/ptp/ptp.ko.xz kernel/drivers/pps/pps_core.ko.xz
kernel/drivers/net/ethernet/broadcom/tg3.ko.xz: kernel/drivers/ptp/ptp.ko.xz
kernel/drivers/net/wireless/ath/ath.ko.xz:
kernel/drivers/net/veth.ko.xz:
kernel/net/ipv6/ila/ila.ko.xz: kernel/net/netfilter/nf_conntrack.ko.xz
kernel/net/mac80211/mac80211.ko.xz: kernel/net/wireless/cfg80211.ko.xz
kernel/sound/core/snd.ko.xz:
kernel/fs/btrfs/btrfs.ko.xz:
kernel/fs/overlayfs/overlay.ko.xz:
kernel/drivers/dca/dca.ko.xz:
kernel/drivers/ptp/ptp.ko.xz: kernel/drivers/pps/pps_core.ko.xz
kernel/drivers/pps/pps_core.ko.xz:
";
        let kept: Vec<String> = keep(dep).into_iter().collect();
        assert_eq!(
            kept,
            [
                "kernel/drivers/dca/dca.ko.xz",
                "kernel/drivers/net/ethernet/intel/igb/igb.ko.xz",
                "kernel/drivers/net/veth.ko.xz",
                "kernel/drivers/pps/pps_core.ko.xz",
                "kernel/drivers/ptp/ptp.ko.xz",
                "kernel/fs/overlayfs/overlay.ko.xz",
                "kernel/net/ipv6/ila/ila.ko.xz",
                "kernel/net/netfilter/nf_conntrack.ko.xz",
            ]
        );
    }
}
