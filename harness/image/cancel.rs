//! Stopping image builds: on SIGINT or SIGTERM, vlab cancels every build in
//! flight. Each build starts its tools (mmdebstrap, depmod, xz, mke2fs) in a
//! process group of their own, which the cancel signals; the build then
//! returns [`ImageError::Cancelled`](super::ImageError::Cancelled) and its
//! work directory is removed before [`cancel_all`] returns.

use std::os::unix::process::CommandExt;
use std::process::{Child, Command};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::ImageError;

/// One build in flight: whether it was cancelled, and its tools' process groups.
#[derive(Default)]
struct Build {
    cancelled: AtomicBool,
    groups: Mutex<Vec<i32>>,
}

static BUILDS: Mutex<Vec<Arc<Build>>> = Mutex::new(Vec::new());

/// A registered build; dropping it unregisters it (after its work directory,
/// declared later, was removed).
pub(super) struct Active(Arc<Build>);

impl Active {
    pub fn register() -> Active {
        let build = Arc::new(Build::default());
        BUILDS.lock().expect("builds").push(build.clone());
        Active(build)
    }

    /// `Err(Cancelled)` once the build was cancelled.
    pub fn check(&self) -> Result<(), ImageError> {
        if self.0.cancelled.load(Ordering::SeqCst) {
            Err(ImageError::Cancelled)
        } else {
            Ok(())
        }
    }

    /// Starts a tool in a process group of its own (so that the cancel reaches
    /// its children too), killed if vlab dies.
    pub fn spawn(&self, step: &str, cmd: &mut Command) -> Result<Child, ImageError> {
        self.spawn_with_death_signal(step, cmd, libc::SIGKILL)
    }

    /// [`Active::spawn`] for a tool that cleans up after itself when vlab
    /// dies: it gets `signal` then.
    pub fn spawn_with_death_signal(&self, step: &str, cmd: &mut Command, signal: i32) -> Result<Child, ImageError> {
        self.check()?;
        // SAFETY: prctl only, between fork and exec.
        unsafe {
            cmd.pre_exec(move || match libc::prctl(libc::PR_SET_PDEATHSIG, signal) {
                0 => Ok(()),
                _ => Err(std::io::Error::last_os_error()),
            });
        }
        let child = cmd.process_group(0).spawn().map_err(|e| ImageError::Step {
            step: step.into(),
            detail: format!("cannot start {:?} ({e}): run ci/setup", cmd.get_program()),
        })?;
        let pgid = child.id() as i32;
        self.0.groups.lock().expect("groups").push(pgid);
        // A cancel that came between the check and the registration.
        if self.0.cancelled.load(Ordering::SeqCst) {
            signal_group(pgid, libc::SIGTERM);
        }
        Ok(child)
    }

    /// Forgets a tool's process group (by its leader's pid) once it was waited for.
    pub fn forget(&self, pid: u32) {
        self.0.groups.lock().expect("groups").retain(|g| *g != pid as i32);
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        BUILDS.lock().expect("builds").retain(|b| !Arc::ptr_eq(b, &self.0));
    }
}

fn signal_group(pgid: i32, sig: i32) {
    // SAFETY: signalling a process group we created.
    unsafe { libc::kill(-pgid, sig) };
}

fn builds() -> Vec<Arc<Build>> {
    BUILDS.lock().expect("builds").clone()
}

/// Cancels every build in flight: SIGTERM to their tools, SIGKILL to what is
/// left after a second, then waits until each build has cleaned up. Returns
/// false when some build was still cleaning up at `limit`.
pub fn cancel_all(limit: Duration) -> bool {
    let started = Instant::now();
    loop {
        let active = builds();
        if active.is_empty() {
            return true;
        }
        let late = started.elapsed() > Duration::from_secs(1);
        for build in &active {
            let first = !build.cancelled.swap(true, Ordering::SeqCst);
            if first || late {
                for g in build.groups.lock().expect("groups").iter() {
                    signal_group(*g, if late { libc::SIGKILL } else { libc::SIGTERM });
                }
            }
        }
        if started.elapsed() > limit {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
