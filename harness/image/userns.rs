//! Building images without root: the build's own user namespace.
//!
//! A root file system holds files of many owners (root, `_apt`, `man`, ...).
//! Run by an ordinary user, mmdebstrap (`--mode=unshare`) creates them in a
//! user namespace that maps ids 0-65535 to the user's subordinate id range
//! (`/etc/subuid`, `/etc/subgid`); everything vlab does to the tree afterwards
//! (decompressing modules, depmod and clang in a chroot, `mke2fs -d`, the
//! removal) runs as root of a namespace of its own with the same mapping, so
//! that the files keep their owners inside the image. Its holder process
//! (`sleep`, argv[0] `vlab-image-<pid>`) maps, through the setuid helpers
//! newuidmap and newgidmap, 0-65535 to the subordinate range and 65536 to the
//! user, so that the namespace's root also reaches the user's own files
//! (the cache). Run as root, commands run as they are.

use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::ImageError;

/// Ids a root file system needs: 0-65535 (nobody is 65534).
pub const IDS: u64 = 65536;

/// Where the commands of one image build run.
pub(super) struct BuildNs {
    /// The holder and its user namespace (ordinary users only).
    ns: Option<(Child, File)>,
}

impl BuildNs {
    /// As root: no namespace. As an ordinary user: a new user namespace mapped
    /// to the user's subordinate ids.
    pub fn create() -> Result<BuildNs, ImageError> {
        if crate::hostnet::is_root() {
            return Ok(BuildNs { ns: None });
        }
        let need = |detail: String| ImageError::Step { step: "user namespace".into(), detail };
        let Ids { uid, gid, sub_uid, sub_gid } = prerequisites().map_err(need)?;
        let mut holder = spawn_holder().map_err(|e| need(format!("unshare: {e}{}", obstacle_hint())))?;
        let mapped = (|| {
            wait_for_own_namespace(holder.id())?;
            let pid = holder.id().to_string();
            for (helper, sub, own) in [("newuidmap", sub_uid, uid), ("newgidmap", sub_gid, gid)] {
                let out = Command::new(helper)
                    .args([&pid, "0", &sub.to_string(), &IDS.to_string(), &IDS.to_string(), &own.to_string(), "1"])
                    .output()
                    .map_err(|e| format!("{helper}: {e}"))?;
                if !out.status.success() {
                    return Err(format!("{helper}: {}", String::from_utf8_lossy(&out.stderr).trim()));
                }
            }
            File::open(format!("/proc/{pid}/ns/user")).map_err(|e| e.to_string())
        })();
        match mapped {
            Ok(userns) => Ok(BuildNs { ns: Some((holder, userns)) }),
            Err(e) => {
                let _ = holder.kill();
                let _ = holder.wait();
                Err(need(e))
            }
        }
    }

    /// The environment mmdebstrap needs: as an ordinary user, a `TMPDIR` that
    /// its namespace's root (a subordinate id, no owner of the user's files)
    /// can reach: `$TMPDIR` when it can, else `/tmp`.
    pub fn mmdebstrap_env(&self, cmd: &mut Command) -> Result<(), ImageError> {
        if self.ns.is_none() {
            return Ok(());
        }
        let own = std::env::var_os("TMPDIR").map(PathBuf::from);
        let dir = own.iter().map(PathBuf::as_path).chain([Path::new("/tmp")]).find(|d| open_to_others(d));
        match dir {
            Some(d) => {
                cmd.env("TMPDIR", d);
                Ok(())
            }
            None => Err(ImageError::Step {
                step: "mmdebstrap".into(),
                detail: "neither $TMPDIR nor /tmp is a directory every user can write to (mode 1777 under \
                         directories every user can enter): mmdebstrap's unprivileged root needs one"
                    .into(),
            }),
        }
    }

    /// A command that runs `program` as root of the build's namespace (as
    /// itself when vlab runs as root), found in `PATH` or the sbin directories.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new(program);
        // The program is looked up in this PATH, and chroot's in the root.
        cmd.env("PATH", crate::path_with_sbin());
        if let Some((_, userns)) = &self.ns {
            let fd = userns.as_raw_fd();
            // SAFETY: only setns(2), setgroups(2) and setres[ug]id(2) between fork
            // and exec; the descriptor stays open as long as `self`.
            unsafe {
                cmd.pre_exec(move || {
                    let ok = libc::setns(fd, libc::CLONE_NEWUSER) == 0
                        && libc::setgroups(0, std::ptr::null()) == 0
                        && libc::setresgid(0, 0, 0) == 0
                        && libc::setresuid(0, 0, 0) == 0;
                    if ok {
                        Ok(())
                    } else {
                        Err(io::Error::last_os_error())
                    }
                });
            }
        }
        cmd
    }

    /// Removes a directory the build wrote (files of subordinate owners
    /// included). Quietly: this runs on every exit path of a build.
    pub fn remove_dir(&self, dir: &Path) {
        if !dir.exists() {
            return;
        }
        match &self.ns {
            None => {
                let _ = std::fs::remove_dir_all(dir);
            }
            Some(_) => {
                let status = self
                    .command("rm")
                    .arg("-rf")
                    .arg(dir)
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status();
                if !status.is_ok_and(|s| s.success()) || dir.exists() {
                    tracing::warn!("could not remove {}", dir.display());
                }
            }
        }
    }
}

impl Drop for BuildNs {
    fn drop(&mut self) {
        if let Some((holder, _)) = &mut self.ns {
            let _ = holder.kill();
            let _ = holder.wait();
        }
    }
}

/// Whether a user with none of the owner's or group's rights can create
/// files in `dir`: it is writable by others, every directory above it
/// searchable by others.
pub fn open_to_others(dir: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &Path| std::fs::metadata(p).map(|m| m.permissions().mode()).ok();
    let Ok(dir) = dir.canonicalize() else { return false };
    mode(&dir).is_some_and(|m| m & 0o003 == 0o003)
        && dir.ancestors().skip(1).all(|a| mode(a).is_some_and(|m| m & 0o001 != 0))
}

/// The caller's ids and the starts of its subordinate ranges.
pub struct Ids {
    uid: u32,
    gid: u32,
    sub_uid: u64,
    sub_gid: u64,
}

/// What an ordinary user's build needs: subordinate uids and gids (by user
/// name or uid in both files), and the setuid helpers that map them; else
/// what is missing, with the fix.
pub fn prerequisites() -> Result<Ids, String> {
    // SAFETY: geteuid/getegid have no preconditions.
    let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
    let user = user_name(uid).ok_or_else(|| format!("uid {uid} has no name in the password database"))?;
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let ranges = (subordinate(&read("/etc/subuid"), &user, uid), subordinate(&read("/etc/subgid"), &user, uid));
    let (Some(sub_uid), Some(sub_gid)) = ranges else {
        return Err(no_subordinate_ids(&user));
    };
    match ["newuidmap", "newgidmap"].into_iter().find(|h| which::which(h).is_err()) {
        Some(h) => Err(format!("{h} is missing: install the uidmap package (`sudo ci/setup`)")),
        None => Ok(Ids { uid, gid, sub_uid, sub_gid }),
    }
}

/// The first subordinate range of at least [`IDS`] ids of the user (by name or
/// uid, in both files) in `/etc/subuid` or `/etc/subgid` text: its first id.
pub fn subordinate(text: &str, user: &str, id: u32) -> Option<u64> {
    text.lines().find_map(|l| {
        let mut f = l.trim().split(':');
        let (who, start, count) = (f.next()?, f.next()?.parse::<u64>().ok()?, f.next()?.parse::<u64>().ok()?);
        ((who == user || who == id.to_string()) && count >= IDS).then_some(start)
    })
}

/// What to do when the user has no subordinate ids.
fn no_subordinate_ids(user: &str) -> String {
    format!(
        "{user} has no range of {IDS} subordinate ids in /etc/subuid and /etc/subgid, which building an image \
         without root needs: `sudo ci/setup` gives it one, or `sudo usermod --add-subuids 100000-165535 \
         --add-subgids 100000-165535 {user}` (a range no other user has)"
    )
}

/// The name of a uid.
fn user_name(uid: u32) -> Option<String> {
    let mut buf = vec![0u8; 4096];
    // SAFETY: getpwuid_r writes into our buffers, which outlive its use.
    unsafe {
        let mut pw: libc::passwd = std::mem::zeroed();
        let mut found: *mut libc::passwd = std::ptr::null_mut();
        if libc::getpwuid_r(uid, &mut pw, buf.as_mut_ptr().cast(), buf.len(), &mut found) != 0 || found.is_null() {
            return None;
        }
        Some(std::ffi::CStr::from_ptr(pw.pw_name).to_string_lossy().into_owned())
    }
}

fn obstacle_hint() -> String {
    crate::hostnet::userns_obstacle().map(|h| format!(" ({h})")).unwrap_or_default()
}

/// The holder: `sleep infinity` in a new user namespace, killed with vlab.
fn spawn_holder() -> io::Result<Child> {
    let mut cmd = Command::new("sleep");
    cmd.arg0(format!("vlab-image-{}", std::process::id()))
        .arg("infinity")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: only unshare(2) and prctl(2) between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            if libc::unshare(libc::CLONE_NEWUSER) != 0 || libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.spawn()
}

/// Waits until the holder is in a user namespace other than ours (unshare
/// runs before exec, so this is at once in practice).
fn wait_for_own_namespace(pid: u32) -> Result<(), String> {
    let ours = std::fs::read_link("/proc/self/ns/user").map_err(|e| e.to_string())?;
    let started = Instant::now();
    loop {
        match std::fs::read_link(format!("/proc/{pid}/ns/user")) {
            Ok(theirs) if theirs != ours => return Ok(()),
            _ if started.elapsed() > Duration::from_secs(5) => {
                return Err("the namespace holder did not start".into());
            }
            _ => std::thread::sleep(Duration::from_millis(2)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_range_is_found_by_name_or_uid_and_must_be_large_enough() {
        let text = "alice:100000:65536\n1001:165536:65536\nsmall:231072:1000\n";
        assert_eq!(subordinate(text, "alice", 1000), Some(100000));
        assert_eq!(subordinate(text, "bob", 1001), Some(165536));
        assert_eq!(subordinate(text, "small", 1002), None);
        assert_eq!(subordinate(text, "carol", 1003), None);
        assert_eq!(subordinate("garbage\nalice:x:65536\n", "alice", 1000), None);
    }

    #[test]
    fn a_private_directory_is_not_open_to_others() {
        use std::os::unix::fs::PermissionsExt;
        let set = |p: &Path, mode| std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
        let top = tempfile::tempdir().unwrap();
        let shared = top.path().join("shared");
        std::fs::create_dir(&shared).unwrap();
        set(&shared, 0o1777);
        set(top.path(), 0o755);
        assert!(open_to_others(&shared));
        set(top.path(), 0o700);
        assert!(!open_to_others(&shared), "the directory above is private");
        set(top.path(), 0o755);
        set(&shared, 0o1775);
        assert!(!open_to_others(&shared), "others cannot write");
        set(&shared, 0o1776);
        assert!(!open_to_others(&shared), "others cannot enter");
        assert!(!open_to_others(&top.path().join("missing")));
    }
}
