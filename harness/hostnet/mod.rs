//! The lab's underlay on the host: a network namespace with a bridge and one
//! multiqueue tap per VM NIC. Nothing here touches the host's own interfaces,
//! routes or firewall.
//!
//! The namespace is the lab's own and needs no root: a holder process (`sleep`,
//! named after the lab, e.g. `vlab-4242-0` in `ps`) creates it with
//! unshare(2) and keeps it; vlab's `ip` commands and every QEMU of the lab
//! enter it with setns(2) ([`LabNet::command`]). Run by an ordinary user, the
//! holder first creates a user namespace that maps the caller (and only the
//! caller) to root inside it, so the network namespace is the caller's to
//! configure; QEMU keeps the caller's identity on the host (`/dev/kvm` through
//! the `kvm` group). Run as root, no user namespace is made.
//!
//! Nothing outlives the lab: a namespace lives only while a process is in it,
//! the holder and every QEMU die with vlab (PR_SET_PDEATHSIG, also on
//! SIGKILL), and dropping the [`LabNet`] ends the holder.

use std::ffi::{CString, OsStr};
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

/// Errors building the underlay.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// The namespaces could not be created.
    #[error("cannot create the lab's network namespace: {source}{}", hint.as_deref().map(|h| format!(" ({h})")).unwrap_or_default())]
    Namespace {
        /// What failed.
        source: io::Error,
        /// What on this host prevents it, and the fix, when known.
        hint: Option<String>,
    },
    /// An `ip` command failed.
    #[error("`ip {args}` failed: {stderr}")]
    Ip {
        /// The arguments.
        args: String,
        /// What ip said.
        stderr: String,
    },
    /// Bridge netfilter could not be turned off inside the lab namespace.
    #[error("cannot turn off bridge netfilter in the lab namespace {netns}: {detail}")]
    BridgeNetfilter {
        /// The lab namespace.
        netns: String,
        /// What failed.
        detail: String,
    },
}

/// Prefix of every lab namespace's name (its holder's `argv[0]`): `vlab-<pid>-<n>`.
pub const PREFIX: &str = "vlab-";
/// The bridge inside the lab namespace.
pub const BRIDGE: &str = "br0";

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// Whether this process runs as root (labs then need no user namespace).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// A lab's namespace with its bridge and taps.
#[derive(Debug)]
pub struct LabNet {
    name: String,
    holder: Child,
    /// The holder's user namespace (ordinary users only).
    userns: Option<File>,
    netns: File,
}

impl LabNet {
    /// Creates a fresh namespace (unique per process and lab) with an up bridge.
    pub fn create() -> Result<LabNet, NetError> {
        let name = format!("{PREFIX}{}-{}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed));
        let own_user = !is_root();
        let ns_err = |source: io::Error| {
            let hint = if own_user { userns_obstacle() } else { None };
            NetError::Namespace { source, hint }
        };
        let mut holder = spawn_holder(&name, own_user).map_err(ns_err)?;
        let open = |kind: &str| File::open(format!("/proc/{}/ns/{kind}", holder.id()));
        let opened = (|| Ok::<_, io::Error>((if own_user { Some(open("user")?) } else { None }, open("net")?)))();
        let (userns, netns) = match opened {
            Ok(fds) => fds,
            Err(e) => {
                let _ = holder.kill();
                let _ = holder.wait();
                return Err(ns_err(e));
            }
        };
        let net = LabNet { name, holder, userns, netns };
        net.ip(&["link", "set", "lo", "up"])?;
        net.ip(&["link", "add", BRIDGE, "type", "bridge"])?;
        net.ip(&["link", "set", BRIDGE, "up"])?;
        net.bridge_without_netfilter()?;
        Ok(net)
    }

    /// A command that runs `program` inside the lab's namespaces (the user
    /// namespace first, where there is one, as root of it; then the network
    /// namespace). Further `pre_exec` hooks run after these.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new(program);
        let user = self.userns.as_ref().map(|f| f.as_raw_fd());
        let net = self.netns.as_raw_fd();
        // SAFETY: only setns(2) between fork and exec; the descriptors stay
        // open as long as `self`, which outlives the spawn that uses them.
        unsafe {
            cmd.pre_exec(move || {
                if let Some(fd) = user {
                    if libc::setns(fd, libc::CLONE_NEWUSER) != 0 {
                        return Err(io::Error::last_os_error());
                    }
                }
                if libc::setns(net, libc::CLONE_NEWNET) != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        cmd
    }

    /// Where the host has `br_netfilter`, every namespace starts with
    /// `net.bridge.bridge-nf-call-{arp,ip,ip6}tables = 1`: each frame the lab
    /// bridge switches would go through the namespace's (empty) netfilter hooks,
    /// which costs the QEMU I/O thread that writes it about a tenth of its time.
    /// The underlay is a plain switch, so these are turned off in the lab's
    /// namespace (and only there; the host's own settings stay as they are:
    /// /proc/sys/net shows the namespace of the process that reads it).
    fn bridge_without_netfilter(&self) -> Result<(), NetError> {
        let script = "cd /proc/sys/net/bridge 2>/dev/null || exit 0; \
                      for t in arptables iptables ip6tables; do echo 0 > bridge-nf-call-$t || exit 1; done";
        let out = self.command("sh").args(["-c", script]).output();
        match out {
            Ok(o) if o.status.success() => Ok(()),
            Ok(o) => Err(NetError::BridgeNetfilter {
                netns: self.name.clone(),
                detail: String::from_utf8_lossy(&o.stderr).trim().to_string(),
            }),
            Err(e) => Err(NetError::BridgeNetfilter { netns: self.name.clone(), detail: e.to_string() }),
        }
    }

    fn ip(&self, args: &[&str]) -> Result<String, NetError> {
        let failed = |stderr: String| NetError::Ip { args: args.join(" "), stderr };
        let out = self.command("ip").args(args).output().map_err(|e| failed(e.to_string()))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(failed(String::from_utf8_lossy(&out.stderr).trim().to_string()))
        }
    }

    /// The namespace's name (its holder's `argv[0]`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The holder's pid: `nsenter -t PID -n` (as root; `-U -n
    /// --preserve-credentials` as the user) enters the lab's underlay.
    pub fn holder_pid(&self) -> u32 {
        self.holder.id()
    }

    /// Whether the lab's network lives in a user namespace of its own.
    pub fn in_user_namespace(&self) -> bool {
        self.userns.is_some()
    }

    /// Adds a tap on the bridge: `ip tuntap add NAME mode tap [multi_queue]`,
    /// with the underlay's `mtu` (the bridge takes its ports' smallest).
    /// QEMU opens a single-queue tap without IFF_MULTI_QUEUE, and the kernel
    /// refuses the open when the flags differ, so the tap must match `queues`.
    pub fn add_tap(&self, tap: &str, queues: u32, mtu: u32) -> Result<(), NetError> {
        let mut args = vec!["tuntap", "add", "dev", tap, "mode", "tap"];
        if queues > 1 {
            args.push("multi_queue");
        }
        self.ip(&args)?;
        self.ip(&["link", "set", tap, "mtu", &mtu.to_string()])?;
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
        let _ = self.holder.kill();
        let _ = self.holder.wait();
    }
}

/// The identity maps an ordinary user's holder writes for its new user
/// namespace: the caller is root inside, nobody else is mapped. Formatted
/// before fork, written between fork and exec.
struct IdMaps {
    uid_map: CString,
    gid_map: CString,
}

impl IdMaps {
    fn of_caller() -> IdMaps {
        // SAFETY: geteuid/getegid have no preconditions.
        let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
        IdMaps {
            uid_map: CString::new(format!("0 {uid} 1")).expect("no NUL"),
            gid_map: CString::new(format!("0 {gid} 1")).expect("no NUL"),
        }
    }

    /// Async-signal-safe: open, write, close.
    fn write(&self) -> io::Result<()> {
        // An unprivileged process may map its group only once setgroups(2) is
        // denied in the namespace; its supplementary groups (kvm) stay.
        write_proc(c"/proc/self/setgroups", c"deny")?;
        write_proc(c"/proc/self/uid_map", &self.uid_map)?;
        write_proc(c"/proc/self/gid_map", &self.gid_map)
    }
}

fn write_proc(path: &std::ffi::CStr, text: &std::ffi::CStr) -> io::Result<()> {
    // SAFETY: valid NUL-terminated path; the buffer outlives the call.
    unsafe {
        let fd = libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let bytes = text.to_bytes();
        let written = libc::write(fd, bytes.as_ptr().cast(), bytes.len());
        let err = io::Error::last_os_error();
        libc::close(fd);
        if written != bytes.len() as isize {
            return Err(err);
        }
    }
    Ok(())
}

/// Starts the holder: `sleep infinity` under the lab's name, in a new network
/// namespace (and, for an ordinary user, a new user namespace that owns it),
/// killed when the thread that started it ends.
fn spawn_holder(name: &str, own_user: bool) -> io::Result<Child> {
    let maps = own_user.then(IdMaps::of_caller);
    let mut cmd = Command::new("sleep");
    cmd.arg0(name).arg("infinity").stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
    // SAFETY: only async-signal-safe calls between fork and exec (unshare,
    // open/write/close of preformatted buffers, prctl).
    unsafe {
        cmd.pre_exec(move || {
            let flags = if maps.is_some() { libc::CLONE_NEWUSER | libc::CLONE_NEWNET } else { libc::CLONE_NEWNET };
            if libc::unshare(flags) != 0 {
                return Err(io::Error::last_os_error());
            }
            if let Some(m) = &maps {
                m.write()?;
            }
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.spawn()
}

/// What keeps an ordinary user from creating a user namespace here, with the
/// fix, as far as the host's settings tell.
pub fn userns_obstacle() -> Option<String> {
    let read = |p: &str| std::fs::read_to_string(p).ok().map(|s| s.trim().to_string());
    let exe = std::env::current_exe().map(|p| p.display().to_string()).unwrap_or_else(|_| "/path/to/vlab".into());
    obstacle(
        read("/proc/sys/kernel/unprivileged_userns_clone").as_deref(),
        read("/proc/sys/user/max_user_namespaces").as_deref(),
        read("/proc/sys/kernel/apparmor_restrict_unprivileged_userns").as_deref(),
        &exe,
    )
}

/// [`userns_obstacle`] from the three settings' values (absent: the kernel
/// has no such setting) and the path of the vlab binary.
pub fn obstacle(
    unprivileged_clone: Option<&str>,
    max_namespaces: Option<&str>,
    apparmor: Option<&str>,
    exe: &str,
) -> Option<String> {
    if unprivileged_clone == Some("0") {
        return Some(
            "unprivileged user namespaces are disabled: kernel.unprivileged_userns_clone = 0; \
             allow them with `sudo sysctl -w kernel.unprivileged_userns_clone=1` \
             (and a line in /etc/sysctl.d/ to keep it)"
                .into(),
        );
    }
    if max_namespaces == Some("0") {
        return Some(
            "user namespaces are disabled: user.max_user_namespaces = 0; \
             allow them with `sudo sysctl -w user.max_user_namespaces=15000`"
                .into(),
        );
    }
    if apparmor == Some("1") {
        return Some(format!(
            "AppArmor restricts unprivileged user namespaces (kernel.apparmor_restrict_unprivileged_userns = 1, \
             as on Ubuntu 24.04): allow them for vlab with a profile, /etc/apparmor.d/vlab holding \
             `abi <abi/4.0>, include <tunables/global> profile vlab {exe} flags=(unconfined) {{ userns, }}`, \
             then `sudo apparmor_parser -r /etc/apparmor.d/vlab` (image builds need a profile \
             `mmdebstrap /usr/bin/mmdebstrap` of the same form); or for the whole host \
             `sudo sysctl -w kernel.apparmor_restrict_unprivileged_userns=0`"
        ));
    }
    None
}
