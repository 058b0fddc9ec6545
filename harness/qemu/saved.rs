//! Saved VM states: a guest booted once (kernel, initramfs, modules loaded,
//! agent up) is saved with QEMU's migration to a file (the plain stream: only
//! the pages in use, written and read from start to end),
//! beside a copy of its copy-on-write disk; later runs start QEMU with
//! `-incoming defer` on a copy of that disk and load the state instead of
//! booting. The cache key is everything that shapes the guest: QEMU's command
//! line (with the run's private paths left out) and the identity of QEMU,
//! the kernel, the initramfs, the root disk and the firmware.
//!
//! What a restore must make right is done by its caller through the agent:
//! the clock (the guest resumes at the time it was saved) and the random
//! pool (the `vmgenid` device gives the guest a new generation ID on every
//! start, and Linux reseeds on it; the caller mixes host randomness in too).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use qapi::qmp;
use sha2::{Digest, Sha256};

use super::args::{qemu_args, VmSpec};

/// Bumped whenever what a saved state holds changes.
const FORMAT: u32 = 2;

/// A saved state in the cache.
#[derive(Debug, Clone)]
pub struct Saved {
    dir: PathBuf,
}

impl Saved {
    fn state(&self) -> PathBuf {
        self.dir.join("state")
    }
    fn disk(&self) -> PathBuf {
        self.dir.join("disk.qcow2")
    }

    /// Copies the saved disk to `disk` (the new VM's own copy).
    pub fn copy_disk(&self, disk: &Path) -> anyhow::Result<()> {
        std::fs::copy(self.disk(), disk)
            .with_context(|| format!("cannot copy the saved disk {}", self.disk().display()))?;
        Ok(())
    }

    /// Asks the host kernel to read the state ahead (it is read from start to
    /// end): a state written long ago may no longer be in the page cache.
    pub fn read_ahead(&self) {
        use std::os::fd::AsRawFd;
        if let Ok(f) = std::fs::File::open(self.state()) {
            // SAFETY: advice on a descriptor we own.
            unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_WILLNEED) };
        }
    }

    /// Forgets a state that could not be loaded.
    pub fn discard(&self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn states_dir() -> PathBuf {
    crate::image::cache_root().join("states")
}

/// Size, modification time and inode of a file, as text ("-" when missing).
fn identity(path: &Path) -> String {
    use std::os::unix::fs::MetadataExt;
    match std::fs::metadata(path) {
        Ok(m) => format!("{}:{}:{}:{}", path.display(), m.len(), m.mtime_nsec() + m.mtime() * 1_000_000_000, m.ino()),
        Err(_) => format!("{}:-", path.display()),
    }
}

/// The cache key of a VM: its command line without the run's own paths, and
/// the identity of every file the guest is made of.
pub fn key(qemu: &Path, spec: &VmSpec, backing: &Path) -> String {
    let mut neutral = spec.clone();
    neutral.run_dir = PathBuf::from("/run-dir");
    neutral.disk = PathBuf::from("/disk");
    neutral.incoming = false;
    let mut h = Sha256::new();
    h.update(format!("format {FORMAT}\n"));
    for a in qemu_args(&neutral) {
        h.update(a);
        h.update("\0");
    }
    for f in [
        Some(qemu),
        Some(spec.kernel.as_path()),
        Some(spec.initramfs.as_path()),
        Some(backing),
        spec.firmware.as_deref(),
    ]
    .into_iter()
    .flatten()
    {
        h.update(identity(f));
        h.update("\n");
    }
    hex::encode(&h.finalize()[..8])
}

/// The saved state of `key`, when there is a complete one (marked as used).
pub fn find(key: &str) -> Option<Saved> {
    let saved = Saved { dir: states_dir().join(key) };
    if !(saved.state().is_file() && saved.disk().is_file()) {
        return None;
    }
    if let Ok(f) =
        std::fs::File::open(saved.dir.join("used")).or_else(|_| std::fs::File::create(saved.dir.join("used")))
    {
        let _ = f.set_modified(std::time::SystemTime::now());
    }
    Some(saved)
}

/// How many saved states the cache keeps (about 90 MiB each): the most
/// recently used ones. A new image, kernel, QEMU or lab shape makes new ones.
const KEEP: usize = 8;

/// Removes the least recently used states beyond [`KEEP`], and what a
/// killed vlab left half-saved more than an hour ago.
fn prune(root: &Path) {
    let used = |dir: &Path| {
        std::fs::metadata(dir.join("used")).or_else(|_| std::fs::metadata(dir)).and_then(|m| m.modified()).ok()
    };
    let mut states = Vec::new();
    for entry in std::fs::read_dir(root).into_iter().flatten().flatten() {
        let (path, name) = (entry.path(), entry.file_name().to_string_lossy().into_owned());
        if name.starts_with(".saving-") {
            let old = used(&path).and_then(|t| t.elapsed().ok()).is_some_and(|age| age > Duration::from_secs(3600));
            if old {
                let _ = std::fs::remove_dir_all(&path);
            }
        } else if !name.starts_with('.') {
            states.push((used(&path), path));
        }
    }
    states.sort_by_key(|s| std::cmp::Reverse(s.0));
    for (_, path) in states.into_iter().skip(KEEP) {
        let _ = std::fs::remove_dir_all(path);
    }
}

/// A QMP connection.
pub struct Qmp {
    service: qapi::futures::QapiService<qapi::futures::QmpStreamTokio<tokio::io::WriteHalf<tokio::net::UnixStream>>>,
    reader: tokio::task::JoinHandle<()>,
}

impl Drop for Qmp {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

impl Qmp {
    /// Connects to QEMU's QMP socket (retrying for a few seconds while QEMU
    /// creates it) and negotiates.
    pub async fn connect(socket: &Path) -> anyhow::Result<Qmp> {
        let mut tries = 0;
        let stream = loop {
            match qapi::futures::QmpStreamTokio::open_uds(socket).await {
                Ok(s) => break s,
                Err(e) if tries < 250 => {
                    tries += 1;
                    tracing::trace!("QMP not there yet: {e}");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => return Err(e).with_context(|| format!("cannot connect to QMP at {}", socket.display())),
            }
        };
        let stream = stream.negotiate().await.context("QMP negotiation failed")?;
        let (service, reader) = stream.spawn_tokio();
        Ok(Qmp { service, reader })
    }

    async fn run<C: qapi::Command + qmp::QmpCommand>(&self, what: &str, c: C) -> anyhow::Result<C::Ok> {
        match tokio::time::timeout(Duration::from_secs(60), self.service.execute(c)).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => bail!("QMP {what}: {e}"),
            Err(_) => bail!("QMP {what}: no answer within 60 s"),
        }
    }

    /// Stops the VM's vCPUs.
    pub async fn stop(&self) -> anyhow::Result<()> {
        self.run("stop", qmp::stop {}).await.map(|_| ())
    }

    /// Lets the VM's vCPUs run again.
    pub async fn cont(&self) -> anyhow::Result<()> {
        self.run("cont", qmp::cont {}).await.map(|_| ())
    }

    /// Waits until the migration in either direction has completed.
    async fn migration_done(&self) -> anyhow::Result<()> {
        loop {
            let info = self.run("query-migrate", qmp::query_migrate {}).await?;
            match info.status {
                Some(qmp::MigrationStatus::completed) => return Ok(()),
                Some(qmp::MigrationStatus::failed) | Some(qmp::MigrationStatus::cancelled) => {
                    bail!("migration failed: {}", info.error_desc.unwrap_or_default())
                }
                _ => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
    }

    /// Saves the running VM's state under `key` with its disk (`disk`, copied
    /// while the VM is stopped), then lets the VM run on. The state appears
    /// in the cache, by a rename, only once complete.
    pub async fn save(&self, key: &str, disk: &Path) -> anyhow::Result<Saved> {
        let root = states_dir();
        std::fs::create_dir_all(&root).with_context(|| format!("cannot create {}", root.display()))?;
        let tmp = tempfile::Builder::new().prefix(".saving-").tempdir_in(&root)?;
        self.run("stop", qmp::stop {}).await?;
        let saved = async {
            let uri = format!("file:{}", tmp.path().join("state").display());
            self.run("migrate", qmp::migrate { uri: Some(uri), channels: None, detach: None, resume: None }).await?;
            self.migration_done().await?;
            // The migration has flushed the disk and stopped using it.
            std::fs::copy(disk, tmp.path().join("disk.qcow2")).context("cannot copy the disk")?;
            anyhow::Ok(())
        }
        .await;
        let resumed = self.run("cont", qmp::cont {}).await;
        saved?;
        resumed?;
        let dir = root.join(key);
        match std::fs::rename(tmp.path(), &dir) {
            // Renamed away: nothing is left for the guard to remove.
            Ok(()) => drop(tmp.keep()),
            // Another vlab saved the same state meanwhile: keep that one (ours goes).
            Err(_) if find(key).is_some() => {}
            Err(e) => return Err(e).with_context(|| format!("cannot keep the saved state in {}", dir.display())),
        }
        let saved = Saved { dir };
        let _ = std::fs::File::create(saved.dir.join("used"));
        prune(&root);
        Ok(saved)
    }

    /// Loads a saved state into a QEMU started with `-incoming defer`, and
    /// lets the guest run.
    pub async fn restore(&self, saved: &Saved) -> anyhow::Result<()> {
        let uri = format!("file:{}", saved.state().display());
        self.run("migrate-incoming", qmp::migrate_incoming { uri: Some(uri), channels: None, exit_on_error: None })
            .await?;
        self.migration_done().await?;
        self.run("cont", qmp::cont {}).await?;
        Ok(())
    }
}
