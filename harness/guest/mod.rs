//! Guests as container hosts: command execution, files, polling, and the
//! rendering of the underlay NIC and container plumbing as reviewable shell
//! commands. The topology names (devices, MACs, [`Attachment`], [`Netns`])
//! live here, where every variant can import them; this module imports no
//! variant.

mod batch;

use std::time::{Duration, Instant};

use anyhow::Context;

use crate::lab::{Family, Lab, Nic, NicModel, Vm};
use crate::qemu::agent::{Agent, AgentError, Output};

pub use batch::{Batch, BatchOutput};

/// Name of the underlay NIC inside every guest.
pub const UNDERLAY_DEV: &str = "underlay";
/// Name of a container's interface inside its namespace.
pub const CONTAINER_DEV: &str = "eth0";

/// The guest-side veth of a container.
pub fn host_veth(container: &str) -> String {
    format!("vc-{container}")
}

/// A command that vlab ran in a guest and that failed: the guest refused a
/// step of the lab (an overlay's device, a route, a filter's rules).
#[derive(Debug, thiserror::Error)]
#[error("on `{vm}`: guest command{} failed with exit code {code}:\n{stderr}{kept}", .step.as_ref().map(|s| format!(" ({s})")).unwrap_or_default())]
pub struct CommandFailed {
    pub vm: String,
    /// The step of a batch, when it was one.
    pub step: Option<String>,
    pub code: i64,
    /// The last lines of its stderr.
    pub stderr: String,
    /// Where its whole output was kept, as a sentence (or nothing).
    kept: String,
}

impl CommandFailed {
    fn new(vm: &str, step: Option<String>, code: i64, stderr: String) -> CommandFailed {
        CommandFailed { vm: vm.to_string(), step, code, stderr, kept: String::new() }
    }
}

/// A booted guest with a synchronised agent.
pub struct Guest {
    /// The VM's name.
    pub name: String,
    agent: Agent,
    command_timeout: Duration,
}

impl Guest {
    /// Wraps a connected agent.
    pub fn new(name: &str, agent: Agent, command_timeout: Duration) -> Guest {
        Guest { name: name.to_string(), agent, command_timeout }
    }

    /// The agent, for workloads that spawn and wait themselves.
    pub fn agent(&self) -> &Agent {
        &self.agent
    }

    /// How long any guest command may take (a workload gets its duration on top).
    pub fn command_timeout(&self) -> Duration {
        self.command_timeout
    }

    /// Runs a script and returns its output whatever its exit code.
    pub async fn try_run(&self, script: &str) -> Result<Output, AgentError> {
        self.agent.sh(script, self.command_timeout).await
    }

    /// Runs a script (`set -e`, traced) and fails with its stderr unless it exits 0.
    pub async fn run(&self, script: &str) -> anyhow::Result<Output> {
        self.run_or_keep(script, |_| None).await
    }

    /// [`run`](Self::run); when the script fails, `keep` gets its whole
    /// output first (the error shows the last 40 lines of stderr) and may
    /// say where it kept it, which the error then adds.
    pub async fn run_or_keep(
        &self,
        script: &str,
        keep: impl FnOnce(&Output) -> Option<String>,
    ) -> anyhow::Result<Output> {
        let traced = format!("set -ex\n{script}");
        let out = self.agent.sh(&traced, self.command_timeout).await.with_context(|| format!("on `{}`", self.name))?;
        if !out.success() {
            let kept = keep(&out).map(|k| format!("\n(the whole output: {k})")).unwrap_or_default();
            let stderr = last_lines(&out.stderr_text(), 40);
            return Err(CommandFailed { vm: self.name.clone(), step: None, code: out.code, stderr, kept }.into());
        }
        Ok(out)
    }

    /// Reads a file from the guest.
    pub async fn read_file(&self, path: &str) -> anyhow::Result<Vec<u8>> {
        self.agent.read_file(path).await.with_context(|| format!("reading {path} on `{}`", self.name))
    }

    /// Writes a whole file in the guest (created or truncated), through the
    /// agent: no shell quoting, any bytes.
    pub async fn write_file(&self, path: &str, bytes: &[u8]) -> anyhow::Result<()> {
        self.agent.write_file(path, bytes).await.with_context(|| format!("writing {path} on `{}`", self.name))
    }

    /// Runs `script` until it exits 0 or `limit` passes, 100 ms apart at
    /// first and up to 250 ms apart later (what it measures, a readiness time,
    /// stays that precise); returns how long it took, or `None` when it never
    /// succeeded. The one host-side polling loop of guests.
    pub async fn poll(&self, script: &str, limit: Duration) -> Result<Option<Duration>, AgentError> {
        let started = Instant::now();
        let mut pause = Duration::from_millis(100);
        loop {
            if self.agent.sh(script, self.command_timeout).await?.success() {
                return Ok(Some(started.elapsed()));
            }
            if started.elapsed() + pause > limit {
                return Ok(None);
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 3 / 2).min(Duration::from_millis(250));
        }
    }
}

/// Where a guest script reads a namespace's /sys and /proc/net from outside
/// it (see [`Netns`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetnsPaths {
    /// To run before the paths are used (sets `$v`).
    pub prelude: String,
    /// Its `/sys`.
    pub sys: String,
    /// Its `/proc/net`.
    pub proc_net: String,
}

/// A network namespace in a guest, by the name `ip netns` knows it under or
/// by a path (Docker keeps its namespaces under `/var/run/docker/netns/`).
///
/// Commands enter it with `nsenter --net` (15-20 ms under TCG; `ip netns
/// exec` also builds a mount namespace with the namespace's /sys: 35-45 ms).
/// What a case reads of it (/sys, /proc/net) comes through its holder: a
/// process that sleeps in it with its own /sys mounted (as `ip netns exec`
/// does), started once per pair ([`Netns::hold`]); `/proc/PID/net` and
/// `/proc/PID/root/sys` of that process are the namespace's, read with shell
/// builtins, without entering it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Netns {
    /// `/run/netns/NAME`, as `ip netns` names it.
    Named(String),
    /// A namespace file elsewhere.
    Path(String),
}

/// Where the holders of namespaces record their pids.
const HOLDERS: &str = "/run/vlab/netns";

impl Netns {
    /// The namespace of container `name`: vlab's containers and those an
    /// overlay manages (`ip netns attach`) are named after the container.
    pub fn container(name: &str) -> Netns {
        Netns::Named(name.to_string())
    }

    /// A short name for it, for reports and file names: the name, or the
    /// file's last component.
    pub fn label(&self) -> String {
        match self {
            Netns::Named(n) => n.clone(),
            Netns::Path(p) => p.rsplit('/').next().unwrap_or(p).to_string(),
        }
    }

    /// Its namespace file.
    pub fn file(&self) -> String {
        match self {
            Netns::Named(n) => format!("/run/netns/{n}"),
            Netns::Path(p) => p.clone(),
        }
    }

    /// The argv prefix that runs a command inside it.
    pub fn exec_prefix(&self) -> Vec<String> {
        vec!["nsenter".into(), format!("--net={}", self.file())]
    }

    fn holder_pid_file(&self) -> String {
        format!("{HOLDERS}/{}.pid", self.file().trim_start_matches('/').replace('/', "_"))
    }

    /// The guest script that starts its holder (once the namespace exists) and
    /// returns when the holder's /sys is the namespace's.
    pub fn hold(&self) -> String {
        let ready = "{ read -r c </proc/$p/comm && [ \"$c\" = sleep ]; }";
        format!(
            "mkdir -p {HOLDERS}\n\
             nsenter --net={f} unshare --mount --propagation slave \
             sh -c 'umount -l /sys && mount -t sysfs sysfs /sys && exec sleep infinity' </dev/null >/dev/null 2>&1 &\n\
             p=$!; echo $p >{pid}\n{}\n{ready}",
            wait_until_every(ready, 10, 10),
            f = self.file(),
            pid = self.holder_pid_file()
        )
    }

    /// A guest shell fragment that sets `$v` to its holder's `/proc/PID`
    /// (checked to be in this namespace; the part fails otherwise).
    pub fn view(&self) -> String {
        format!(
            "read -r v <{} && [ /proc/$v/ns/net -ef {f} ] || {{ echo 'no holder in {f}' >&2; exit 1; }}; v=/proc/$v",
            self.holder_pid_file(),
            f = self.file()
        )
    }

    /// Where a script reads `netns` (the VM's own namespace without one).
    pub fn paths(netns: Option<&Netns>) -> NetnsPaths {
        match netns {
            Some(ns) => {
                NetnsPaths { prelude: format!("{}\n", ns.view()), sys: "$v/root/sys".into(), proc_net: "$v/net".into() }
            }
            None => NetnsPaths { prelude: String::new(), sys: "/sys".into(), proc_net: "/proc/net".into() },
        }
    }

    /// A shell script run inside `netns` (as is without one): the namespace
    /// is entered once for the whole script.
    pub fn script(netns: Option<&Netns>, script: &str) -> String {
        match netns {
            Some(ns) => shell_line(
                &ns.exec_prefix().into_iter().chain(["sh".into(), "-c".into(), script.into()]).collect::<Vec<_>>(),
            ),
            None => script.to_string(),
        }
    }

    /// `argv` run inside `netns` (as is without one).
    pub fn wrap(netns: Option<&Netns>, argv: Vec<String>) -> Vec<String> {
        match netns {
            Some(ns) => ns.exec_prefix().into_iter().chain(argv).collect(),
            None => argv,
        }
    }
}

/// `s` as one shell word.
pub fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// A guest shell loop that waits until `condition` holds, checking every
/// 100 ms for at most `seconds`; it does not fail by itself: the command after
/// it (or the condition's own effects) says what was missing.
pub fn wait_until(condition: &str, seconds: u32) -> String {
    wait_until_every(condition, seconds, 100)
}

/// [`wait_until`], checking every `every_ms` milliseconds: what the host
/// waits for is then known inside the same agent call, at most that late.
pub fn wait_until_every(condition: &str, seconds: u32, every_ms: u32) -> String {
    let tries = seconds * 1000 / every_ms.max(1);
    let pause = f64::from(every_ms) / 1000.0;
    format!("i=0; until {condition} || [ $i -ge {tries} ]; do sleep {pause}; i=$((i+1)); done")
}

/// `script` timed by the guest's clock (GNU `date`, nanoseconds): it runs
/// in a subshell and the line `took_ns N` follows its output; its exit code
/// stays the script's. Read back with [`took`].
pub fn timed(script: &str) -> String {
    format!("t0=$(date +%s%N)\n(\n{script}\n)\nrc=$?\nt1=$(date +%s%N)\necho \"took_ns $((t1 - t0))\"\n(exit $rc)")
}

/// The seconds a [`timed`] script ran, from its output (`None` without its
/// line: it failed, or never ran).
pub fn took(stdout: &str) -> Option<f64> {
    let ns: u64 = stdout.lines().rev().find_map(|l| l.strip_prefix("took_ns "))?.trim().parse().ok()?;
    Some(ns as f64 / 1e9)
}

/// A guest condition that holds once process `pid` (a number or a shell
/// expression such as `$p`) is gone: no longer there, or a zombie waiting
/// to be reaped. Shell builtins only: the state follows the last `) ` of
/// `/proc/PID/stat` (the command name before it may hold anything).
pub fn process_gone(pid: &str) -> String {
    format!("{{ ! read -r s 2>/dev/null </proc/{pid}/stat || case ${{s##*) }} in Z*) true;; *) false;; esac; }}")
}

/// 64 random bits as 16 hex digits (std's per-instance hasher keys come
/// from the OS's random source).
pub fn random_hex() -> String {
    use std::hash::{BuildHasher, Hasher};
    format!("{:016x}", std::collections::hash_map::RandomState::new().build_hasher().finish())
}

/// `ip` commands (without the leading `ip`) as one `ip -force -batch`
/// process (a process costs 10-25 ms under TCG) with the global `options`
/// (such as `-6`: a batch's lines cannot carry them): first `tidy`, whose
/// commands may find nothing to remove, then `apply`, which must all work.
/// `ip` goes on past a failing line and names it (`Command failed -:N`); the
/// script fails, with `ip`'s complaints, when a line of `apply` did. Empty
/// lists cost nothing.
pub fn ip_batch(options: &str, tidy: &[String], apply: &[String]) -> Vec<String> {
    if tidy.is_empty() && apply.is_empty() {
        return Vec::new();
    }
    let ip = if options.is_empty() { "ip".to_string() } else { format!("ip {options}") };
    let mut script = vec![format!("out=$({ip} -force -batch - 2>&1 <<'EOF'")];
    script.extend(tidy.iter().chain(apply).cloned());
    script.push("EOF".to_string());
    script.push(")".to_string());
    script.push(format!(
        // Line by line (IFS is a newline), no globbing of what `ip` said.
        "bad=; o=$IFS; IFS='\n'; set -f\n\
         for l in $out; do case $l in 'Command failed -:'*) [ \"${{l#Command failed -:}}\" -le {} ] || bad=1;; esac; done\n\
         set +f; IFS=$o",
        tidy.len()
    ));
    script.push("[ -z \"$bad\" ] || { printf '%s\\n' \"$out\" >&2; exit 1; }".to_string());
    script
}

/// An argv as one shell command line.
pub fn shell_line(argv: &[String]) -> String {
    argv.iter().map(|a| quote(a)).collect::<Vec<_>>().join(" ")
}

/// How containers attach to their VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attachment {
    /// A veth pair whose guest side is the container's gateway.
    Veth,
    /// An SR-IOV virtual function moved into the container's namespace (as the
    /// SR-IOV CNI does): the container sits directly on the underlay's L2.
    Vf,
}

impl Attachment {
    /// How containers attach behind this NIC.
    pub fn of(nic: &Nic) -> Attachment {
        match nic.model {
            NicModel::IgbSriov => Attachment::Vf,
            NicModel::Virtio | NicModel::Vfio => Attachment::Veth,
        }
    }
}

/// MAC of VF `index` of VM number `vm_index` (set from the PF, as SR-IOV CNI does).
pub fn vf_mac(vm_index: usize, index: u32) -> String {
    format!("52:54:00:4c:{:02x}:{:02x}", vm_index + 1, 0x10 + index)
}

/// Brings up the underlay NIC: wait for its driver, find it by MAC, rename
/// it, enable all queue pairs, address it (`nodad`: duplicate detection only
/// delays a closed lab). An SR-IOV PF then gets its VFs, MACs set from the PF
/// before `igbvf` binds them.
pub fn underlay_commands(vm: &Vm, vm_index: usize, nic: &Nic, mac: &str, mtu: u32) -> Vec<String> {
    let mut cmds = vec![
        // vlab-init loads the NIC drivers while the agent starts: wait for them.
        wait_until("[ -e /run/vlab-modules ]", 30),
        "cat /run/vlab-modules >&2".to_string(),
    ];
    match nic.model {
        NicModel::Vfio => {
            // A passed-through function keeps its own MAC: take the first NIC with a PCI device.
            cmds.push(
                "dev=$(for d in /sys/class/net/*; do [ -e $d/device ] && basename $d; done | head -n 1)".to_string(),
            )
        }
        _ => cmds.push(format!("dev=$(grep -l '^{mac}$' /sys/class/net/*/address | cut -d/ -f5)")),
    }
    cmds.push("test -n \"$dev\"".to_string());
    cmds.push(format!("ip link set \"$dev\" name {UNDERLAY_DEV}"));
    cmds.extend(mtu_command("", UNDERLAY_DEV, mtu));
    if nic.queues() > 1 {
        cmds.push(format!("ethtool -L {UNDERLAY_DEV} combined {}", nic.queues()));
    }
    let pf = format!("/sys/class/net/{UNDERLAY_DEV}/device");
    let vfs = if nic.model == NicModel::IgbSriov { nic.vfs.unwrap_or(0) } else { 0 };
    if vfs > 0 {
        // VFs are created while the PF is down (enabling them on a running PF
        // resets it), with MACs set from the PF and no driver bound yet.
        cmds.push(format!("echo 0 > {pf}/sriov_drivers_autoprobe"));
        cmds.push(format!("echo {vfs} > {pf}/sriov_numvfs"));
        for i in 0..vfs {
            cmds.push(format!("ip link set {UNDERLAY_DEV} vf {i} mac {}", vf_mac(vm_index, i)));
        }
    }
    cmds.extend(underlay_addresses(vm));
    if vfs > 0 {
        // igbvf gives up ("PF still in reset state") unless the PF has its link.
        cmds.push(wait_until(&format!("[ \"$(cat /sys/class/net/{UNDERLAY_DEV}/carrier)\" = 1 ]"), 20));
        cmds.push(format!("echo 1 > {pf}/sriov_drivers_autoprobe"));
        for i in 0..vfs {
            cmds.push(format!("basename $(readlink {pf}/virtfn{i}) > /sys/bus/pci/drivers_probe"));
        }
        for i in 0..vfs {
            cmds.push(wait_until(&format!("[ -n \"$(ls {pf}/virtfn{i}/net 2>/dev/null)\" ]"), 10));
            cmds.push(format!("ls {pf}/virtfn{i}/net"));
        }
    }
    cmds
}

/// Addresses the underlay NIC (`nodad`: duplicate detection only delays a
/// closed lab) and brings it up.
pub fn underlay_addresses(vm: &Vm) -> Vec<String> {
    let mut cmds = Vec::new();
    if let Some(n) = vm.underlay.ipv4 {
        cmds.push(format!("ip addr add {n} dev {UNDERLAY_DEV}"));
    }
    if let Some(n) = vm.underlay.ipv6 {
        cmds.push(format!("ip -6 addr add {n} dev {UNDERLAY_DEV} nodad"));
    }
    cmds.push(format!("ip link set {UNDERLAY_DEV} up"));
    cmds
}

/// On-link routes to the other VMs' underlay addresses that lie outside this
/// VM's own underlay subnets (the study's hosts sit in different /64s of one
/// routable network; here they share the lab's bridge).
pub fn peer_routes(lab: &Lab, vm: &Vm) -> Vec<String> {
    let mut cmds = Vec::new();
    for peer in lab.vms.iter().filter(|p| p.name != vm.name) {
        if let (Some(own), Some(p)) = (vm.underlay.ipv4, peer.underlay.ipv4) {
            if !own.contains(&p.addr()) {
                cmds.push(format!("ip route add {}/32 dev {UNDERLAY_DEV}", p.addr()));
            }
        }
        if let (Some(own), Some(p)) = (vm.underlay.ipv6, peer.underlay.ipv6) {
            if !own.contains(&p.addr()) {
                cmds.push(format!("ip -6 route add {}/128 dev {UNDERLAY_DEV}", p.addr()));
            }
        }
    }
    cmds
}

/// Who plumbs a VM's containers, and how: what an overlay says of itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Containers {
    /// vlab creates them; the guest side of each container's veth is the
    /// container's gateway: the VM routes their traffic.
    Routed,
    /// vlab creates them; the guest side of each veth has no address: the
    /// overlay makes it a bridge port.
    Bridged,
    /// The overlay creates them itself in its deploy plan (as Docker does),
    /// each in a network namespace named after the container (`ip netns
    /// attach NAME PID` for a process's namespace), with `eth0` and the lab's
    /// addresses; vlab creates none.
    Managed,
}

/// The setup of VM number `vm_index` with `nic` (MAC `mac`) after boot that
/// every overlay shares: underlay NIC, routes to peers, and the containers
/// unless the overlay manages them.
pub fn base_setup(lab: &Lab, vm: &Vm, vm_index: usize, nic: &Nic, mac: &str, containers: Containers) -> Vec<String> {
    let mut script = underlay_commands(vm, vm_index, nic, mac, lab.mtu);
    script.extend(peer_routes(lab, vm));
    let attachment = Attachment::of(nic);
    match containers {
        Containers::Routed => script.extend(container_commands(vm, vm_index, attachment, true, lab.mtu)),
        Containers::Bridged => script.extend(container_commands(vm, vm_index, attachment, false, lab.mtu)),
        Containers::Managed => {}
    }
    script
}

/// MAC of container `j` of VM number `vm_index` on an L2 overlay (fixed, so
/// that forwarding entries and captures can name it).
pub fn container_mac(vm_index: usize, j: usize) -> String {
    format!("52:54:00:c0:{:02x}:{:02x}", vm_index + 1, j + 1)
}

/// `ip [-n NETNS] link set DEV mtu MTU`, unless `mtu` is Ethernet's (the
/// interfaces' own).
pub fn mtu_command(netns: &str, dev: &str, mtu: u32) -> Option<String> {
    let at = if netns.is_empty() { String::new() } else { format!("-n {netns} ") };
    (mtu != crate::lab::DEFAULT_MTU).then(|| format!("ip {at}link set {dev} mtu {mtu}"))
}

/// Creates each container: a namespace with either a veth pair or VF number
/// `j` renamed `eth0`; addresses and routes. With `routed`, the guest side of
/// the veth is the container's gateway; without (L2 overlays), it has no
/// address, the container no default route, and `eth0` a fixed MAC: the
/// overlay makes the veth a bridge port. Routed containers and those on a VF
/// get the underlay's `mtu` (a bridged container's is the overlay's to set:
/// its headers take their part).
pub fn container_commands(vm: &Vm, vm_index: usize, attachment: Attachment, routed: bool, mtu: u32) -> Vec<String> {
    let mut cmds = Vec::new();
    for (j, c) in vm.containers.iter().enumerate() {
        cmds.push(format!("ip netns add {}", c.name));
        cmds.push(format!("ip -n {} link set lo up", c.name));
        match attachment {
            Attachment::Veth if !routed => {
                let veth = host_veth(&c.name);
                cmds.push(format!("ip link add {veth} type veth peer name {CONTAINER_DEV} netns {}", c.name));
                cmds.push(format!("ip -n {} link set {CONTAINER_DEV} address {}", c.name, container_mac(vm_index, j)));
                cmds.push(format!("ip link set {veth} up"));
            }
            Attachment::Veth => {
                let veth = host_veth(&c.name);
                cmds.push(format!("ip link add {veth} type veth peer name {CONTAINER_DEV} netns {}", c.name));
                cmds.extend(mtu_command("", &veth, mtu));
                cmds.extend(mtu_command(&c.name, CONTAINER_DEV, mtu));
                if let (Some(net), Some(gw)) = (c.ipv4, c.gateway(Family::Ipv4)) {
                    cmds.push(format!("ip addr add {gw}/{} dev {veth}", net.prefix_len()));
                }
                match (c.ipv6, c.gateway(Family::Ipv6)) {
                    // A /128 container: link-local gateway, host route to the container.
                    (Some(net), Some(gw)) if net.prefix_len() == 128 => {
                        cmds.push(format!("ip -6 addr add {gw}/64 dev {veth} nodad"));
                        cmds.push(format!("ip link set {veth} up"));
                        cmds.push(format!("ip -6 route add {}/128 dev {veth}", net.addr()));
                    }
                    (Some(net), Some(gw)) => {
                        cmds.push(format!("ip -6 addr add {gw}/{} dev {veth} nodad", net.prefix_len()));
                        cmds.push(format!("ip link set {veth} up"));
                    }
                    _ => cmds.push(format!("ip link set {veth} up")),
                }
            }
            Attachment::Vf => {
                cmds.push(format!("vf=$(ls /sys/class/net/{UNDERLAY_DEV}/device/virtfn{j}/net)"));
                cmds.push(format!("ip link set \"$vf\" netns {}", c.name));
                cmds.push(format!("ip -n {} link set \"$vf\" name {CONTAINER_DEV}", c.name));
                cmds.extend(mtu_command(&c.name, CONTAINER_DEV, mtu));
            }
        }
        if let Some(net) = c.ipv4 {
            cmds.push(format!("ip -n {} addr add {net} dev {CONTAINER_DEV}", c.name));
        }
        if let Some(net) = c.ipv6 {
            cmds.push(format!("ip -n {} -6 addr add {net} dev {CONTAINER_DEV} nodad", c.name));
        }
        cmds.push(format!("ip -n {} link set {CONTAINER_DEV} up", c.name));
        if attachment == Attachment::Veth && routed {
            if let Some(gw) = c.gateway(Family::Ipv4).filter(|_| c.ipv4.is_some()) {
                cmds.push(format!("ip -n {} route add default via {gw}", c.name));
            }
            if let Some(gw) = c.gateway(Family::Ipv6).filter(|_| c.ipv6.is_some()) {
                cmds.push(format!("ip -n {} -6 route add default via {gw} dev {CONTAINER_DEV}", c.name));
            }
        }
    }
    cmds
}
