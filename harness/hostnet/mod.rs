//! The lab's underlay on the host: a network namespace with a bridge and one
//! multiqueue tap per VM NIC. Nothing here touches the host's own interfaces,
//! routes or firewall; dropping the [`LabNet`] deletes the namespace and with it
//! every tap and the bridge.

use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

/// Errors building the underlay.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// An `ip` command failed.
    #[error("`ip {args}` failed: {stderr}")]
    Ip {
        /// The arguments.
        args: String,
        /// What ip said.
        stderr: String,
    },
    /// Bridge netfilter could not be turned off inside the lab namespace.
    #[error("cannot turn off bridge netfilter in namespace {netns}: {source}")]
    BridgeNetfilter {
        /// The lab namespace.
        netns: String,
        /// What failed.
        source: std::io::Error,
    },
}

/// Prefix of every namespace vlab creates: `vlab-<pid>-<n>`.
const PREFIX: &str = "vlab-";
/// The bridge inside the lab namespace.
pub const BRIDGE: &str = "br0";

fn ip(args: &[&str]) -> Result<String, NetError> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| NetError::Ip { args: args.join(" "), stderr: e.to_string() })?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(NetError::Ip { args: args.join(" "), stderr: String::from_utf8_lossy(&out.stderr).trim().to_string() })
    }
}

/// A lab's namespace with its bridge and taps.
#[derive(Debug)]
pub struct LabNet {
    name: String,
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

impl LabNet {
    /// Creates a fresh namespace (unique per process and lab) with an up bridge.
    pub fn create() -> Result<LabNet, NetError> {
        remove_stale();
        let name = format!("{PREFIX}{}-{}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed));
        ip(&["netns", "add", &name])?;
        let net = LabNet { name };
        net.ip(&["link", "set", "lo", "up"])?;
        net.ip(&["link", "add", BRIDGE, "type", "bridge"])?;
        net.ip(&["link", "set", BRIDGE, "up"])?;
        net.bridge_without_netfilter()?;
        Ok(net)
    }

    /// Where the host has `br_netfilter`, every namespace starts with
    /// `net.bridge.bridge-nf-call-{arp,ip,ip6}tables = 1`: each frame the lab
    /// bridge switches would go through the namespace's (empty) netfilter hooks,
    /// which costs the QEMU I/O thread that writes it about a tenth of its time.
    /// The underlay is a plain switch, so these are turned off in the lab's
    /// namespace (and only there; the host's own settings stay as they are).
    fn bridge_without_netfilter(&self) -> Result<(), NetError> {
        let netns = self.netns_path();
        let err = |source| NetError::BridgeNetfilter { netns: self.name.clone(), source };
        // /proc/sys/net follows the calling thread's namespace, so a thread of
        // its own joins the lab namespace and ends with the writes.
        std::thread::scope(|s| {
            s.spawn(|| -> std::io::Result<()> {
                let ns = std::fs::File::open(&netns)?;
                // SAFETY: setns on a valid fd; only this short-lived thread changes namespace.
                if unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&ns), libc::CLONE_NEWNET) } != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                let dir = std::path::Path::new("/proc/sys/net/bridge");
                if !dir.exists() {
                    return Ok(()); // no br_netfilter: bridged frames skip netfilter already
                }
                for table in ["arptables", "iptables", "ip6tables"] {
                    std::fs::write(dir.join(format!("bridge-nf-call-{table}")), "0")?;
                }
                Ok(())
            })
            .join()
            .unwrap_or_else(|_| Err(std::io::Error::other("thread panicked")))
        })
        .map_err(err)
    }

    fn ip(&self, args: &[&str]) -> Result<String, NetError> {
        let mut full = vec!["-n", &self.name];
        full.extend_from_slice(args);
        ip(&full)
    }

    /// The namespace's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The namespace file QEMU joins.
    pub fn netns_path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    /// Adds a tap on the bridge: `ip tuntap add NAME mode tap [multi_queue]`.
    /// QEMU opens a single-queue tap without IFF_MULTI_QUEUE, and the kernel
    /// refuses the open when the flags differ, so the tap must match `queues`.
    pub fn add_tap(&self, tap: &str, queues: u32) -> Result<(), NetError> {
        let mut args = vec!["tuntap", "add", "dev", tap, "mode", "tap"];
        if queues > 1 {
            args.push("multi_queue");
        }
        self.ip(&args)?;
        // QEMU drains a tap in bursts; a deep queue keeps bursts from becoming drops
        // (and TCP retransmissions) when the receiving VM's I/O thread is busy.
        self.ip(&["link", "set", tap, "txqueuelen", "10000"])?;
        self.ip(&["link", "set", tap, "master", BRIDGE])?;
        self.ip(&["link", "set", tap, "up"])?;
        Ok(())
    }
}

impl Drop for LabNet {
    fn drop(&mut self) {
        if let Err(e) = ip(&["netns", "del", &self.name]) {
            tracing::warn!("cannot delete lab namespace {}: {e}", self.name);
        }
    }
}

/// Deletes namespaces left by vlab processes that no longer exist (e.g. after SIGKILL).
pub fn remove_stale() {
    let Ok(entries) = std::fs::read_dir("/run/netns") else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = owner_pid(&name) else {
            continue;
        };
        if !PathBuf::from(format!("/proc/{pid}")).exists() {
            tracing::info!("removing stale lab namespace {name}");
            let _ = ip(&["netns", "del", &name]);
        }
    }
}

/// The pid of the vlab process that created a lab namespace.
fn owner_pid(name: &str) -> Option<u32> {
    name.strip_prefix(PREFIX)?.split('-').next()?.parse().ok()
}

/// Namespaces created by vlab processes that are gone (for `vlab doctor`).
pub fn stale_namespaces() -> Vec<String> {
    let Ok(entries) = std::fs::read_dir("/run/netns") else {
        return Vec::new();
    };
    entries
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| owner_pid(n).is_some_and(|pid| !PathBuf::from(format!("/proc/{pid}")).exists()))
        .collect()
}
