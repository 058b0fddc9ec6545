//! The probe matrix of a case whose filter asks for one
//! ([`Filter::probe_targets`]): listeners on every target port in every
//! container (started with the case, `images/guest/vlab-probe`), then, after
//! the workload, one attempt from every container to every other (on the
//! same VM and across) on each target, each VM's attempts at once, between
//! two reads of the filter's drop counters on every VM.

use std::collections::BTreeMap;
use std::time::Instant;

use anyhow::Context;

use super::boot::LabRuntime;
use super::case::reread_on_every_vm;
use crate::filter::{Filter, MatrixRead};
use crate::guest::{self, Batch, BatchOutput, Netns};
use crate::lab::{Case, Family, Lab, TrafficPath};
use crate::overlay::{ProbeCell, ProbeMatrix, ProbeOutcome};
use crate::policy::Protocol;

/// The helper, written into each VM with the case's first batch.
const SCRIPT: &str = include_str!("../../images/guest/vlab-probe");
const SCRIPT_PATH: &str = "/run/vlab/vlab-probe";
/// How long an attempt may wait for an answer.
pub const TIMEOUT_MS: u32 = 1000;
const LISTEN_PART: &str = "matrix listeners";
const READY_PART: &str = "matrix listeners ready";
const MONITOR_PART: &str = "matrix monitors";
const PROBE_PART: &str = "matrix probes";

/// A container of the matrix: its name, VM and address.
#[derive(Debug, Clone)]
pub(super) struct Member {
    pub name: String,
    pub vm: String,
    pub addr: String,
}

/// What the matrix of a case tries.
#[derive(Debug, Clone, Default)]
pub(super) struct Plan {
    pub members: Vec<Member>,
    pub targets: Vec<(Protocol, u16)>,
    /// The filter's monitors, by VM ([`Filter::matrix_monitors`]).
    pub monitors: BTreeMap<String, Vec<String>>,
}

impl Plan {
    /// The matrix of `case`: the filter's targets, between the containers
    /// with an address of the case's family; empty for other paths.
    pub fn of(lab: &Lab, f: &dyn Filter, case: &Case) -> Plan {
        if case.params.path != TrafficPath::Container {
            return Plan::default();
        }
        let targets = f.probe_targets(lab, &case.params);
        let members: Vec<Member> = lab
            .vms
            .iter()
            .flat_map(|vm| {
                vm.containers.iter().filter_map(|c| {
                    let addr = c.address(case.params.family)?.to_string();
                    Some(Member { name: c.name.clone(), vm: vm.name.clone(), addr })
                })
            })
            .collect();
        if targets.is_empty() || members.len() < 2 || case.params.family != Family::Ipv4 {
            return Plan::default();
        }
        let monitors = lab.vms.iter().map(|vm| (vm.name.clone(), f.matrix_monitors(lab, vm))).collect();
        Plan { members, targets, monitors }
    }

    pub fn is_empty(&self) -> bool {
        self.targets.is_empty()
    }

    /// The listener specs of `member`: every target, less the ports the
    /// case's own listeners hold there (`taken`).
    fn specs(&self, taken: &[(Protocol, u16)]) -> Vec<String> {
        self.targets.iter().filter(|t| !taken.contains(t)).map(|(p, port)| format!("{}/{port}", p.name())).collect()
    }

    /// The start batch's part on `vm`: the helper written, a listener in each
    /// of its containers started in the background (`taken(container)`: the
    /// ports that the workload's own servers listen on there). Prints the
    /// listeners' pids.
    pub fn listener_part(&self, vm: &str, taken: impl Fn(&str) -> Vec<(Protocol, u16)>, b: &mut Batch) {
        if self.is_empty() {
            return;
        }
        let mut s = vec![format!("mkdir -p /run/vlab\ncat >{SCRIPT_PATH} <<'VLAB_PROBE_EOF'\n{SCRIPT}VLAB_PROBE_EOF")];
        for m in self.members.iter().filter(|m| m.vm == vm) {
            let ready = ready_file(&m.name);
            let mut argv = vec!["perl".to_string(), SCRIPT_PATH.into(), "listen".into(), ready.clone()];
            argv.extend(self.specs(&taken(&m.name)));
            let argv = Netns::wrap(Some(&Netns::container(&m.name)), argv);
            s.push(format!("rm -f {ready}\n{} </dev/null >/dev/null 2>&1 &\necho $!", guest::shell_line(&argv)));
        }
        b.report(LISTEN_PART, s.join("\n"));
    }

    /// The start batch's part on `vm` after the filter's case setup: its
    /// monitors started in the background (after the setup: a monitor
    /// names only the rules it found when it started). Prints their pids.
    pub fn monitor_part(&self, vm: &str, b: &mut Batch) {
        let monitors = self.monitors.get(vm).map_or(&[][..], Vec::as_slice);
        if self.is_empty() || monitors.is_empty() {
            return;
        }
        b.report(
            MONITOR_PART,
            monitors.iter().map(|m| format!("{m} </dev/null &\necho $!")).collect::<Vec<_>>().join("\n"),
        );
    }

    /// The start batch's last part on `vm`: waits until its listeners are
    /// bound (10 s at most).
    pub fn ready_part(&self, vm: &str, b: &mut Batch) {
        let files: Vec<String> = self.members.iter().filter(|m| m.vm == vm).map(|m| ready_file(&m.name)).collect();
        if self.is_empty() || files.is_empty() {
            return;
        }
        let all = files.iter().map(|f| format!("[ -e {f} ]")).collect::<Vec<_>>().join(" && ");
        b.succeed(READY_PART, format!("{}; {all}", guest::wait_until_every(&all, 10, 20)));
    }

    /// The listeners' and monitors' pids from the start batch's output.
    pub fn listener_pids(out: &BatchOutput) -> Vec<i64> {
        let text = format!("{}\n{}", out.text(LISTEN_PART), out.text(MONITOR_PART));
        text.lines().filter_map(|l| l.trim().parse().ok()).collect()
    }

    /// Runs the matrix: on every VM at once, the drop counters read; once
    /// every VM has read them, every local container's attempts (all at
    /// once); then, once every VM is done, the counters read again and the
    /// listeners (`pids` by VM) stopped.
    pub async fn run(
        &self,
        lab: &Lab,
        rt: &LabRuntime,
        f: &dyn Filter,
        pids: &BTreeMap<String, Vec<i64>>,
    ) -> anyhow::Result<ProbeMatrix> {
        let counters = |vm: &str, when: MatrixRead, b: &mut Batch| -> Vec<String> {
            let vm = lab.vm(vm).expect("a lab VM");
            f.drop_counter_commands(lab, vm, when)
                .into_iter()
                .map(|(name, cmd)| {
                    b.report(&name, cmd);
                    name
                })
                .collect()
        };
        let read = |outputs: &[(String, BatchOutput)], names: &BTreeMap<String, Vec<String>>| {
            let mut out = BTreeMap::new();
            for (vm, o) in outputs {
                for name in names.get(vm).into_iter().flatten() {
                    out.insert(name.clone(), o.text(name));
                }
            }
            out
        };
        // The first reads end on every VM before any VM probes: a VM still
        // reading would count another's first probes as before the matrix.
        let mut names = BTreeMap::new();
        let first = reread_on_every_vm(rt, |vm| {
            let mut b = Batch::new();
            names.insert(vm.to_string(), counters(vm, MatrixRead::Before, &mut b));
            b
        })
        .await
        .context("the drop counters before the probe matrix")?;
        let before = read(&first, &names);
        let started = Instant::now();
        let probed = reread_on_every_vm(rt, |vm| {
            let mut b = Batch::new();
            b.report(PROBE_PART, self.probes_script(vm));
            b
        })
        .await
        .context("the probe matrix")?;
        let seconds = started.elapsed().as_secs_f64();
        let mut names = BTreeMap::new();
        let second = reread_on_every_vm(rt, |vm| {
            let mut b = Batch::new();
            names.insert(vm.to_string(), counters(vm, MatrixRead::After, &mut b));
            let pids: Vec<String> = pids.get(vm).into_iter().flatten().map(i64::to_string).collect();
            if !pids.is_empty() {
                b.report("matrix listeners stop", format!("kill -9 {} 2>/dev/null; true", pids.join(" ")));
            }
            b
        })
        .await
        .context("the drop counters after the probe matrix")?;
        let after = read(&second, &names);
        let mut cells = Vec::new();
        for (_, out) in &probed {
            cells.extend(self.parse(&out.text(PROBE_PART)));
        }
        cells.sort_by(|a, b| (&a.from, &a.to, a.protocol, a.port).cmp(&(&b.from, &b.to, b.protocol, b.port)));
        let expected = self.members.len() * (self.members.len() - 1) * self.targets.len();
        anyhow::ensure!(
            cells.len() == expected,
            "the probe matrix answered {} of its {expected} attempts: {}",
            cells.len(),
            probed.iter().map(|(vm, o)| format!("{vm}: {}", o.text(PROBE_PART).trim())).collect::<Vec<_>>().join("; ")
        );
        Ok(ProbeMatrix { cells, before, after, seconds })
    }

    /// The probes of `vm`'s containers, each container's in one helper
    /// process, all at once.
    fn probes_script(&self, vm: &str) -> String {
        let mut s = Vec::new();
        for from in self.members.iter().filter(|m| m.vm == vm) {
            let mut argv =
                vec!["perl".to_string(), SCRIPT_PATH.into(), "try".into(), from.name.clone(), TIMEOUT_MS.to_string()];
            for to in self.members.iter().filter(|m| m.name != from.name) {
                for (p, port) in &self.targets {
                    argv.push(format!("{}/{}/{port}", to.addr, p.name()));
                }
            }
            s.push(format!("{} &", guest::shell_line(&Netns::wrap(Some(&Netns::container(&from.name)), argv))));
        }
        s.push("wait".into());
        s.join("\n")
    }

    /// The cells of the helper's lines (`FROM ADDR PROTO PORT OUTCOME`).
    fn parse(&self, text: &str) -> Vec<ProbeCell> {
        text.lines()
            .filter_map(|line| {
                let [from, addr, p, port, outcome] = line.split_whitespace().collect::<Vec<_>>()[..] else {
                    return None;
                };
                let to = self.members.iter().find(|m| m.addr == addr)?.name.clone();
                let protocol = match p {
                    "tcp" => Protocol::Tcp,
                    "udp" => Protocol::Udp,
                    _ => return None,
                };
                let outcome = match outcome {
                    "connected" => ProbeOutcome::Connected,
                    "refused" => ProbeOutcome::Refused,
                    "timed-out" => ProbeOutcome::TimedOut,
                    _ => return None,
                };
                Some(ProbeCell { from: from.to_string(), to, protocol, port: port.parse().ok()?, outcome })
            })
            .collect()
    }
}

fn ready_file(container: &str) -> String {
    format!("/run/vlab/matrix-{container}.ready")
}
