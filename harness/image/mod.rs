//! Guest images: a Debian root file system built with mmdebstrap from a recipe,
//! turned into a kernel, a small initramfs and an ext4 root disk, cached by a
//! hash of everything that goes into them.
//!
//! VMs never write to the cached disk: each boots a qcow2 overlay on top of it.

mod cancel;
mod initramfs;
mod package;
pub mod userns;

pub use cancel::cancel_all;
pub use package::{kernel_deb, kernel_deb_in, PackagedKernel};

use std::fs::{self, File};
use std::io::{BufRead, BufReader};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::ui::Progress;

/// The busybox script that mounts the root disk.
const INITRAMFS_INIT: &str = include_str!("../../images/guest/initramfs-init");
/// PID 1 of the guest: mounts, host name, modules, guest agent.
const GUEST_INIT: &str = include_str!("../../images/guest/vlab-init");
/// vlab's BPF programs (`bpf/NAME.c`), built into every image whose recipe
/// installs `clang` and `libbpf-dev`: compiled by the image's own clang while
/// the image is built, into [`BPF_DIR`]`/NAME.o` beside their source. A
/// change to a program makes a new image, as a change to the recipe does.
pub const BPF_PROGRAMS: &[(&str, &str)] = &[("cilium_style", include_str!("../../bpf/cilium_style.c"))];
/// Where the guests have vlab's BPF programs and objects.
pub const BPF_DIR: &str = "/usr/lib/vlab/bpf";
/// Bumped whenever the layout of a built image changes (4: the root keeps
/// /boot/config-RELEASE).
const FORMAT: u32 = 4;

/// What goes into an image, as written in `images/NAME.toml`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Recipe {
    /// Name of the image (cache entries are `NAME-HASH`).
    pub name: String,
    /// Debian suite given to mmdebstrap (`trixie`, `bookworm`, ...).
    pub suite: String,
    /// The kernel package; its vmlinuz and modules boot the guest.
    #[serde(default = "default_kernel_package")]
    pub kernel_package: String,
    /// Packages installed on top of the essential set.
    #[serde(default)]
    pub packages: Vec<String>,
    /// Modules the initramfs loads to mount the root disk.
    #[serde(default = "default_initramfs_modules")]
    pub initramfs_modules: Vec<String>,
    /// Size of the root disk in MiB; by default the content plus 512 MiB.
    #[serde(default)]
    pub disk_mib: Option<u64>,
}

fn default_kernel_package() -> String {
    "linux-image-amd64".into()
}
fn default_initramfs_modules() -> Vec<String> {
    ["crc32c_generic", "virtio_pci", "virtio_blk", "virtio_console", "ext4"].map(String::from).to_vec()
}

/// The image's initramfs with a kernel tree's modules appended (see
/// [`initramfs::modules_archive`]), in a temporary file, and their release:
/// for `--modules DIR`, booting a kernel that is not fully built in.
pub fn initramfs_with_modules(
    image: &Image,
    recipe_path: &Path,
    dir: &Path,
) -> Result<(String, tempfile::TempPath), String> {
    let text = fs::read_to_string(recipe_path).map_err(|e| format!("{}: {e}", recipe_path.display()))?;
    let recipe: Recipe = toml::from_str(&text).map_err(|e| format!("{}: {e}", recipe_path.display()))?;
    let (release, extra) = initramfs::modules_archive(dir, &recipe.initramfs_modules)
        .map_err(|e| format!("--modules {}: {e}", dir.display()))?;
    let mut bytes = fs::read(&image.initramfs).map_err(|e| format!("{}: {e}", image.initramfs.display()))?;
    bytes.extend(extra);
    let file =
        tempfile::Builder::new().prefix("vlab-initramfs-").suffix(".cpio").tempfile().map_err(|e| e.to_string())?;
    fs::write(file.path(), bytes).map_err(|e| format!("{}: {e}", file.path().display()))?;
    Ok((release, file.into_temp_path()))
}

/// Errors of building or finding an image.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// The recipe file could not be read.
    #[error("cannot read image recipe {}", path.display())]
    ReadRecipe {
        /// The recipe.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The recipe is not valid.
    #[error("image recipe {}: {message}", path.display())]
    BadRecipe {
        /// The recipe.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A build step failed.
    #[error("image build step `{step}` failed: {detail}")]
    Step {
        /// The step.
        step: String,
        /// Its output or error.
        detail: String,
    },
    /// A `--kernel-deb` file that is not a kernel package vlab can boot.
    #[error("{}: {why}", path.display())]
    BadPackage {
        /// The file.
        path: PathBuf,
        /// What it is not, or holds.
        why: String,
    },
    /// The build was cancelled (SIGINT or SIGTERM); nothing of it is left.
    #[error("image build cancelled")]
    Cancelled,
    /// File system trouble in the cache.
    #[error("image cache {}: {source}", path.display())]
    Cache {
        /// The path.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// A built image in the cache.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Image {
    /// Recipe name.
    pub name: String,
    /// Cache key (hash of the recipe and guest scripts).
    pub key: String,
    /// Directory holding the files below.
    pub dir: PathBuf,
    /// The guest kernel: the uncompressed `vmlinux` when the kernel supports
    /// PVH entry (QEMU then skips the decompressor, which is slow under TCG),
    /// else the `bzImage`.
    pub kernel: PathBuf,
    /// The initramfs.
    pub initramfs: PathBuf,
    /// The ext4 root disk (raw), used read-only as a backing file.
    pub rootfs: PathBuf,
    /// `uname -r` of the kernel.
    pub kernel_release: String,
}

#[derive(Debug, Serialize, Deserialize)]
struct Manifest {
    format: u32,
    name: String,
    key: String,
    suite: String,
    kernel_release: String,
    build_seconds: f64,
    recipe: Recipe,
}

impl Recipe {
    /// Reads a recipe file.
    pub fn load(path: &Path) -> Result<(Recipe, String), ImageError> {
        let text = fs::read_to_string(path).map_err(|source| ImageError::ReadRecipe { path: path.into(), source })?;
        let recipe: Recipe =
            toml::from_str(&text).map_err(|e| ImageError::BadRecipe { path: path.into(), message: e.to_string() })?;
        if recipe.name.is_empty() || !recipe.name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
            return Err(ImageError::BadRecipe {
                path: path.into(),
                message: format!("name `{}` must be [A-Za-z0-9_-]+", recipe.name),
            });
        }
        Ok((recipe, text))
    }

    /// The cache key: a hash of the recipe text and the guest scripts.
    pub fn key(text: &str) -> String {
        let mut h = Sha256::new();
        h.update(format!("vlab-image-format-{FORMAT}\n"));
        h.update(text.as_bytes());
        h.update(INITRAMFS_INIT.as_bytes());
        h.update(GUEST_INIT.as_bytes());
        for (name, source) in BPF_PROGRAMS {
            h.update(format!("\nbpf {name}\n"));
            h.update(source.as_bytes());
        }
        hex::encode(&h.finalize()[..8])
    }
}

/// The cache root: `$VLAB_CACHE_DIR`, else `$XDG_CACHE_HOME/vlab`, else `~/.cache/vlab`.
pub fn cache_root() -> PathBuf {
    if let Some(d) = std::env::var_os("VLAB_CACHE_DIR") {
        return PathBuf::from(d);
    }
    if let Some(d) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(d).join("vlab");
    }
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/root"));
    home.join(".cache").join("vlab")
}

fn images_dir() -> PathBuf {
    cache_root().join("images")
}

/// The recipe's entry in the cache, `NAME-KEY` (see [`Recipe::key`]).
pub fn cache_entry(recipe_path: &Path) -> Result<String, ImageError> {
    let (recipe, text) = Recipe::load(recipe_path)?;
    Ok(format!("{}-{}", recipe.name, Recipe::key(&text)))
}

/// Looks the recipe up in the cache without building.
pub fn cached(recipe_path: &Path) -> Result<Option<Image>, ImageError> {
    let (recipe, text) = Recipe::load(recipe_path)?;
    let key = Recipe::key(&text);
    Ok(read_image(&images_dir().join(format!("{}-{key}", recipe.name))))
}

fn read_image(dir: &Path) -> Option<Image> {
    let manifest: Manifest = serde_json::from_slice(&fs::read(dir.join("manifest.json")).ok()?).ok()?;
    if manifest.format != FORMAT {
        return None;
    }
    let vmlinux = dir.join("vmlinux");
    let image = Image {
        name: manifest.name,
        key: manifest.key,
        dir: dir.to_path_buf(),
        kernel: if vmlinux.is_file() { vmlinux } else { dir.join("vmlinuz") },
        initramfs: dir.join("initramfs.cpio"),
        rootfs: dir.join("rootfs.ext4"),
        kernel_release: manifest.kernel_release,
    };
    [&image.kernel, &image.initramfs, &image.rootfs].iter().all(|p| p.is_file()).then_some(image)
}

/// An exclusive lock on a cache entry, released on drop.
struct CacheLock(File);

impl CacheLock {
    fn acquire(path: &Path, progress: &Progress) -> Result<CacheLock, ImageError> {
        let file = File::create(path).map_err(|source| ImageError::Cache { path: path.into(), source })?;
        // SAFETY: flock on a file descriptor we own.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            progress.phase("waiting for another vlab that is building this image");
            if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
                return Err(ImageError::Cache { path: path.into(), source: std::io::Error::last_os_error() });
            }
        }
        Ok(CacheLock(file))
    }
}

impl Drop for CacheLock {
    fn drop(&mut self) {
        // SAFETY: unlocking our own descriptor.
        unsafe { libc::flock(self.0.as_raw_fd(), libc::LOCK_UN) };
    }
}

/// Removes a half-built directory unless the build completes.
struct BuildDir<'a> {
    dir: PathBuf,
    ns: &'a userns::BuildNs,
}

impl Drop for BuildDir<'_> {
    fn drop(&mut self) {
        self.ns.remove_dir(&self.dir);
    }
}

/// Returns the cached image for a recipe, building it first when needed.
/// Concurrent callers wait on a lock; the loser finds the winner's image.
pub fn build(recipe_path: &Path, progress: &Progress) -> Result<Image, ImageError> {
    let (recipe, text) = Recipe::load(recipe_path)?;
    let key = Recipe::key(&text);
    let root = images_dir();
    fs::create_dir_all(&root).map_err(|source| ImageError::Cache { path: root.clone(), source })?;
    let final_dir = root.join(format!("{}-{key}", recipe.name));
    if let Some(image) = read_image(&final_dir) {
        return Ok(image);
    }
    let _lock = CacheLock::acquire(&root.join(format!("{}-{key}.lock", recipe.name)), progress)?;
    if let Some(image) = read_image(&final_dir) {
        return Ok(image);
    }
    let started = Instant::now();
    let ns = userns::BuildNs::create()?;
    // Declared before the work directory, so that a cancel waits for its removal.
    let active = cancel::Active::register();
    // Under the lock, another build directory of this entry is one that a
    // killed vlab left.
    let prefix = format!(".build-{}-{key}-", recipe.name);
    for entry in fs::read_dir(&root).into_iter().flatten().flatten() {
        if entry.file_name().to_string_lossy().starts_with(&prefix) {
            ns.remove_dir(&entry.path());
        }
    }
    let work = BuildDir { dir: root.join(format!("{prefix}{}", std::process::id())), ns: &ns };
    fs::create_dir_all(&work.dir).map_err(|source| ImageError::Cache { path: work.dir.clone(), source })?;
    let rootdir = work.dir.join("root");
    fs::create_dir(&rootdir).map_err(|source| ImageError::Cache { path: rootdir.clone(), source })?;

    progress.phase(&format!("mmdebstrap {} ({} packages)", recipe.suite, recipe.packages.len() + 1));
    mmdebstrap(&active, &ns, &recipe, &rootdir, progress)?;

    progress.phase("preparing kernel modules");
    let kernel_release = kernel_release(&rootdir)?;
    let modules_dir = rootdir.join("usr/lib/modules").join(&kernel_release);
    decompress_modules(&active, &|tool: &str| ns.command(tool), &modules_dir)?;
    run(&active, "depmod", ns.command("chroot").arg(&rootdir).args(["depmod", "-a", &kernel_release]))?;
    install_guest_files(&active, &ns, &work.dir)?;
    if recipe.packages.iter().any(|p| p == "clang") {
        progress.phase("compiling vlab's BPF programs");
        build_bpf(&active, &ns, &work.dir)?;
    }

    progress.phase("writing initramfs");
    active.check()?;
    let busybox = fs::read(rootdir.join("bin/busybox")).map_err(|e| ImageError::Step {
        step: "initramfs".into(),
        detail: format!("no /bin/busybox in the root ({e}): add busybox-static to the recipe's packages"),
    })?;
    let cpio = initramfs::build(&modules_dir, &recipe.initramfs_modules, &busybox, INITRAMFS_INIT)
        .map_err(|e| ImageError::Step { step: "initramfs".into(), detail: e })?;
    write(&work.dir.join("initramfs.cpio"), &cpio)?;
    let bzimage_path = rootdir.join("boot").join(format!("vmlinuz-{kernel_release}"));
    let bzimage = fs::read(&bzimage_path).map_err(|source| ImageError::Cache { path: bzimage_path.clone(), source })?;
    write(&work.dir.join("vmlinuz"), &bzimage)?;
    let config = fs::read_to_string(rootdir.join("boot").join(format!("config-{kernel_release}"))).unwrap_or_default();
    if config.lines().any(|l| l == "CONFIG_PVH=y") {
        progress.phase("extracting vmlinux for PVH boot");
        if let Some(vmlinux) = extract_vmlinux(&active, &bzimage) {
            write(&work.dir.join("vmlinux"), &vmlinux)?;
        }
    }
    // The distribution's initramfs and kernel copies are not booted; the
    // kernel's configuration stays (vlab checks it for the options a lab needs).
    let unbooted: Vec<PathBuf> = fs::read_dir(rootdir.join("boot"))
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| !e.file_name().to_string_lossy().starts_with("config-"))
        .map(|e| e.path())
        .collect();
    if !unbooted.is_empty() {
        run(&active, "rm /boot", ns.command("rm").arg("-rf").arg("--").args(&unbooted))?;
    }

    progress.phase("writing ext4 root disk");
    let size_mib = recipe.disk_mib.unwrap_or_else(|| dir_size(&rootdir) / (1 << 20) + 512);
    active.check()?;
    // The user's own file, which mke2fs (as the namespace's root) fills.
    let disk = work.dir.join("rootfs.ext4");
    write(&disk, &[])?;
    run(
        &active,
        "mke2fs",
        ns.command("mke2fs")
            // No journal: every VM writes to a throwaway overlay, and the
            // journal only slows the mount and every write under TCG.
            .args(["-q", "-F", "-t", "ext4", "-O", "^has_journal", "-E", "lazy_itable_init=0", "-L", "vlab-root", "-d"])
            .arg(&rootdir)
            .arg(&disk)
            .arg(format!("{size_mib}M")),
    )?;
    ns.remove_dir(&rootdir);

    let manifest = Manifest {
        format: FORMAT,
        name: recipe.name.clone(),
        key: key.clone(),
        suite: recipe.suite.clone(),
        kernel_release,
        build_seconds: started.elapsed().as_secs_f64(),
        recipe,
    };
    write(&work.dir.join("manifest.json"), &serde_json::to_vec_pretty(&manifest).expect("manifest serializes"))?;
    active.check()?;
    let _ = fs::remove_dir_all(&final_dir);
    fs::rename(&work.dir, &final_dir).map_err(|source| ImageError::Cache { path: final_dir.clone(), source })?;
    read_image(&final_dir)
        .ok_or_else(|| ImageError::Step { step: "finish".into(), detail: "the built image is incomplete".into() })
}

fn write(path: &Path, bytes: &[u8]) -> Result<(), ImageError> {
    fs::write(path, bytes).map_err(|source| ImageError::Cache { path: path.into(), source })
}

/// The root file system: mmdebstrap writes it as a tarball to a pipe (in its
/// own namespaces, as root or in unshare mode as the user), and tar, as root
/// of the build's namespace, unpacks it with its owners. Device nodes are
/// left out (an unprivileged namespace cannot make them; the guest mounts
/// devtmpfs on /dev).
fn mmdebstrap(
    active: &cancel::Active,
    ns: &userns::BuildNs,
    recipe: &Recipe,
    rootdir: &Path,
    progress: &Progress,
) -> Result<(), ImageError> {
    let mut include = vec![recipe.kernel_package.clone()];
    include.extend(recipe.packages.iter().cloned());
    let mut cmd = Command::new("mmdebstrap");
    cmd.args(["--variant=essential", "--mode=unshare", "--format=tar", "--skip=output/mknod"])
        .arg(format!("--include={}", include.join(",")))
        .args([
            "--dpkgopt=path-exclude=/usr/share/man/*",
            "--dpkgopt=path-exclude=/usr/share/doc/*",
            "--dpkgopt=path-exclude=/usr/share/locale/*",
            "--dpkgopt=path-exclude=/usr/share/info/*",
        ])
        .arg(&recipe.suite)
        .arg("-")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    ns.mmdebstrap_env(&mut cmd)?;
    // SIGTERM when vlab dies: mmdebstrap then removes its temporary root.
    let mut child = active.spawn_with_death_signal("mmdebstrap", &mut cmd, libc::SIGTERM)?;
    let tarball = child.stdout.take().expect("piped");
    let mut untar = ns.command("tar");
    untar
        .args(["--numeric-owner", "--xattrs", "--xattrs-include=*", "-xpf", "-", "-C"])
        .arg(rootdir)
        .stdin(Stdio::from(tarball))
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let untar = active.spawn("tar", &mut untar)?;
    let untar_pid = untar.id();
    let untar_thread = std::thread::spawn(move || untar.wait_with_output());
    let mut tail: Vec<String> = Vec::new();
    for line in BufReader::new(child.stderr.take().expect("piped")).lines().map_while(Result::ok) {
        if let Some(msg) = line.strip_prefix("I: ") {
            progress.detail(msg);
        }
        tail.push(line);
        if tail.len() > 30 {
            tail.remove(0);
        }
    }
    let status = child.wait().map_err(|e| ImageError::Step { step: "mmdebstrap".into(), detail: e.to_string() })?;
    active.forget(child.id());
    let untarred = untar_thread.join().expect("tar thread");
    active.forget(untar_pid);
    active.check()?;
    if !status.success() {
        return Err(ImageError::Step {
            step: "mmdebstrap".into(),
            detail: format!("{status}; last lines:\n{}", tail.join("\n")),
        });
    }
    match untarred {
        Ok(out) if out.status.success() => Ok(()),
        Ok(out) => Err(ImageError::Step {
            step: "tar".into(),
            detail: format!("{}: {}", out.status, String::from_utf8_lossy(&out.stderr).trim()),
        }),
        Err(e) => Err(ImageError::Step { step: "tar".into(), detail: e.to_string() }),
    }
}

fn kernel_release(rootdir: &Path) -> Result<String, ImageError> {
    let dir = rootdir.join("usr/lib/modules");
    let mut releases: Vec<String> = fs::read_dir(&dir)
        .map_err(|source| ImageError::Cache { path: dir.clone(), source })?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|r| rootdir.join("boot").join(format!("vmlinuz-{r}")).is_file())
        .collect();
    releases.sort();
    releases.pop().ok_or_else(|| ImageError::Step {
        step: "kernel".into(),
        detail: "the root has no /boot/vmlinuz-* with modules".into(),
    })
}

/// Debian ships modules xz- or zstd-compressed; busybox insmod and a fast boot
/// want them plain, so they are decompressed once at build time.
/// `command` makes the tool's command (in the build's user namespace, or a
/// plain one).
fn decompress_modules(
    active: &cancel::Active,
    command: &(dyn Fn(&str) -> Command + Sync),
    dir: &Path,
) -> Result<(), ImageError> {
    let mut xz = Vec::new();
    let mut zst = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in fs::read_dir(&d).map_err(|source| ImageError::Cache { path: d.clone(), source })?.flatten() {
            let p = entry.path();
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(p);
            } else if p.extension().is_some_and(|e| e == "xz") {
                xz.push(p);
            } else if p.extension().is_some_and(|e| e == "zst") {
                zst.push(p);
            }
        }
    }
    for (tool, files) in [("xz", xz), ("zstd", zst)] {
        let chunks: Vec<Vec<PathBuf>> = files.chunks(400).map(<[PathBuf]>::to_vec).collect();
        std::thread::scope(|s| -> Result<(), ImageError> {
            let handles: Vec<_> = chunks
                .into_iter()
                .map(|chunk| {
                    s.spawn(move || {
                        let mut cmd = command(tool);
                        // Both delete the compressed file once decompressed.
                        cmd.args(if tool == "xz" { ["-d", "-q", "-T1"] } else { ["-d", "-q", "--rm"] }).args(&chunk);
                        run(active, tool, &mut cmd)
                    })
                })
                .collect();
            for h in handles {
                h.join().expect("decompression thread")?;
            }
            Ok(())
        })?;
    }
    Ok(())
}

/// The uncompressed kernel inside a bzImage: the first compressed stream
/// (zstd, xz or gzip) that decompresses to an ELF file.
fn extract_vmlinux(active: &cancel::Active, bzimage: &[u8]) -> Option<Vec<u8>> {
    use std::io::Write;
    const FORMATS: [(&[u8], &str, &[&str]); 3] = [
        (&[0x28, 0xb5, 0x2f, 0xfd], "zstd", &["-d", "-q", "-c"]),
        (&[0xfd, b'7', b'z', b'X', b'Z', 0x00], "xz", &["-d", "-q", "-c"]),
        (&[0x1f, 0x8b, 0x08], "gzip", &["-d", "-q", "-c"]),
    ];
    for (magic, tool, args) in FORMATS {
        let mut from = 0;
        while let Some(pos) = bzimage[from..].windows(magic.len()).position(|w| w == magic) {
            let start = from + pos;
            from = start + 1;
            let mut cmd = Command::new(tool);
            cmd.args(args).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::null());
            let Ok(mut child) = active.spawn(tool, &mut cmd) else {
                break;
            };
            let mut stdin = child.stdin.take().expect("piped");
            let data = bzimage[start..].to_vec();
            // The stream is followed by other data; the tool's complaint about it is expected.
            let writer = std::thread::spawn(move || {
                let _ = stdin.write_all(&data);
            });
            let pgid = child.id();
            let out = child.wait_with_output().ok()?;
            active.forget(pgid);
            let _ = writer.join();
            if out.stdout.starts_with(b"\x7fELF") {
                return Some(out.stdout);
            }
        }
    }
    None
}

/// vlab's init and the host name, installed into the root as its root.
fn install_guest_files(active: &cancel::Active, ns: &userns::BuildNs, work: &Path) -> Result<(), ImageError> {
    install(active, ns, work, GUEST_INIT, "0755", "sbin/vlab-init")?;
    install(active, ns, work, "vlab\n", "0644", "etc/hostname")
}

/// Writes `content` to `root/path` with `mode`, owned by root (`install`,
/// run as root of the build's namespace, from a copy in the work directory).
fn install(
    active: &cancel::Active,
    ns: &userns::BuildNs,
    work: &Path,
    content: &str,
    mode: &str,
    path: &str,
) -> Result<(), ImageError> {
    let staged = work.join("staged");
    write(&staged, content.as_bytes())?;
    let mut cmd = ns.command("install");
    cmd.args(["-D", "-m", mode]).arg(&staged).arg(work.join("root").join(path));
    run(active, &format!("install /{path}"), &mut cmd)?;
    fs::remove_file(&staged).map_err(|source| ImageError::Cache { path: staged, source })
}

/// Compiles [`BPF_PROGRAMS`] with the root's clang and libbpf headers.
fn build_bpf(active: &cancel::Active, ns: &userns::BuildNs, work: &Path) -> Result<(), ImageError> {
    let rootdir = work.join("root");
    for (name, source) in BPF_PROGRAMS {
        let (c, o) = (format!("{BPF_DIR}/{name}.c"), format!("{BPF_DIR}/{name}.o"));
        install(active, ns, work, source, "0644", c.trim_start_matches('/'))?;
        let mut clang = ns.command("chroot");
        clang.arg(&rootdir).args(["clang", "-O2", "-g", "-Wall", "-Werror", "--target=bpf"]);
        // The BPF target has no multiarch directory of its own: asm/types.h.
        clang.args(["-I/usr/include/x86_64-linux-gnu", "-c", &c, "-o", &o]);
        run(active, &format!("clang bpf/{name}.c"), &mut clang)?;
    }
    Ok(())
}

fn dir_size(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in fs::read_dir(&d).into_iter().flatten().flatten() {
            if let Ok(m) = entry.path().symlink_metadata() {
                if m.is_dir() {
                    stack.push(entry.path());
                }
                total += m.blocks() * 512;
            }
        }
    }
    total
}

fn run(active: &cancel::Active, step: &str, cmd: &mut Command) -> Result<(), ImageError> {
    let child = active.spawn(step, cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()))?;
    let pgid = child.id();
    let out = child.wait_with_output();
    active.forget(pgid);
    active.check()?;
    let out = out.map_err(|e| ImageError::Step { step: step.into(), detail: e.to_string() })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(ImageError::Step {
            step: step.into(),
            detail: format!("{}: {}", out.status, String::from_utf8_lossy(&out.stderr).trim()),
        })
    }
}
