//! Guests as container hosts: command execution and the rendering of the
//! underlay NIC and container plumbing as reviewable shell commands.

use std::time::Duration;

use anyhow::{bail, Context};

use crate::lab::{Family, Vm};
use crate::qemu::agent::{Agent, AgentError, Output};

/// Name of the underlay NIC inside every guest.
pub const UNDERLAY_DEV: &str = "underlay";
/// Name of a container's interface inside its namespace.
pub const CONTAINER_DEV: &str = "eth0";

/// The guest-side veth of a container.
pub fn host_veth(container: &str) -> String {
    format!("vc-{container}")
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

    /// Runs a script and returns its output whatever its exit code.
    pub async fn try_run(&self, script: &str) -> Result<Output, AgentError> {
        self.agent.sh(script, self.command_timeout).await
    }

    /// Runs a script (`set -e`, traced) and fails with its stderr unless it exits 0.
    pub async fn run(&self, script: &str) -> anyhow::Result<Output> {
        let traced = format!("set -ex\n{script}");
        let out = self.agent.sh(&traced, self.command_timeout).await.with_context(|| format!("on `{}`", self.name))?;
        if !out.success() {
            bail!(
                "on `{}`: guest command failed with exit code {}:\n{}",
                self.name,
                out.code,
                last_lines(&out.stderr_text(), 40)
            );
        }
        Ok(out)
    }

    /// Reads a file from the guest.
    pub async fn read_file(&self, path: &str) -> anyhow::Result<Vec<u8>> {
        self.agent.read_file(path).await.with_context(|| format!("reading {path} on `{}`", self.name))
    }
}

fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Brings up the underlay NIC: find it by MAC, rename it, enable all queue
/// pairs, address it (`nodad`: duplicate detection only delays a closed lab).
pub fn underlay_commands(vm: &Vm, mac: &str) -> Vec<String> {
    let mut cmds = vec![
        // vlab-init loads the NIC driver while the agent starts: wait for it.
        "i=0; while [ ! -e /run/vlab-modules ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done".to_string(),
        "cat /run/vlab-modules >&2".to_string(),
        format!("dev=$(grep -l '^{mac}$' /sys/class/net/*/address | cut -d/ -f5)"),
        "test -n \"$dev\"".to_string(),
        format!("ip link set \"$dev\" name {UNDERLAY_DEV}"),
    ];
    if vm.nic.queues > 1 {
        cmds.push(format!("ethtool -L {UNDERLAY_DEV} combined {}", vm.nic.queues));
    }
    if let Some(n) = vm.underlay.ipv4 {
        cmds.push(format!("ip addr add {n} dev {UNDERLAY_DEV}"));
    }
    if let Some(n) = vm.underlay.ipv6 {
        cmds.push(format!("ip -6 addr add {n} dev {UNDERLAY_DEV} nodad"));
    }
    cmds.push(format!("ip link set {UNDERLAY_DEV} up"));
    cmds
}

/// Creates each container: a namespace, a veth pair whose guest side is the
/// container's gateway, addresses and default routes.
pub fn container_commands(vm: &Vm) -> Vec<String> {
    let mut cmds = Vec::new();
    for c in &vm.containers {
        let veth = host_veth(&c.name);
        cmds.push(format!("ip netns add {}", c.name));
        cmds.push(format!("ip link add {veth} type veth peer name {CONTAINER_DEV} netns {}", c.name));
        cmds.push(format!("ip -n {} link set lo up", c.name));
        if let (Some(net), Some(gw)) = (c.ipv4, c.gateway(Family::Ipv4)) {
            cmds.push(format!("ip addr add {gw}/{} dev {veth}", net.prefix_len()));
            cmds.push(format!("ip -n {} addr add {net} dev {CONTAINER_DEV}", c.name));
        }
        if let (Some(net), Some(gw)) = (c.ipv6, c.gateway(Family::Ipv6)) {
            cmds.push(format!("ip -6 addr add {gw}/{} dev {veth} nodad", net.prefix_len()));
            cmds.push(format!("ip -n {} -6 addr add {net} dev {CONTAINER_DEV} nodad", c.name));
        }
        cmds.push(format!("ip link set {veth} up"));
        cmds.push(format!("ip -n {} link set {CONTAINER_DEV} up", c.name));
        if let Some(gw) = c.gateway(Family::Ipv4).filter(|_| c.ipv4.is_some()) {
            cmds.push(format!("ip -n {} route add default via {gw}", c.name));
        }
        if let Some(gw) = c.gateway(Family::Ipv6).filter(|_| c.ipv6.is_some()) {
            cmds.push(format!("ip -n {} -6 route add default via {gw}", c.name));
        }
    }
    cmds
}
