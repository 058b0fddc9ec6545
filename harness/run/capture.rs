//! Packet captures during a case: tcpdump in the guests at every capture
//! point of both endpoints, started before the workload and stopped after;
//! the pcaps come back through the agent and are decoded in Rust.
//!
//! A capture is planned first (its interface's MTU is read with the case's
//! other evidence), started in the background by a part of its VM's start
//! batch, which returns once the pcap header is there (tcpdump listens), and
//! stopped by a part of the VM's evidence batch after the workload.

use std::path::Path;

use anyhow::Context;

use super::case::Side;
use super::record::CaptureRecord;
use crate::guest::{self, Batch, BatchOutput, Guest, Netns};
use crate::lab::{CapturePoint, Lab};
use crate::measure::capture;
use crate::overlay::CaptureHints;

/// Where the guests keep their pcaps (emptied before each start, so that no
/// earlier case's file passes for a new capture's header).
const PCAP_PREFIX: &str = "/tmp/vlab-cap-";

/// A capture to take: its VM, namespace and interface, and where tcpdump writes.
pub(super) struct Planned<'a> {
    guest: &'a Guest,
    netns: Option<Netns>,
    container: Option<String>,
    dev: String,
    argv: Vec<String>,
    file: String,
}

/// A running tcpdump in a guest.
pub(super) struct RunningCapture<'a> {
    plan: Planned<'a>,
    pid: i64,
    mtu: usize,
}

/// The captures of a case: every capture point of both endpoints.
pub(super) fn plan<'a>(lab: &Lab, hints: &CaptureHints, sides: [&Side<'a>; 2]) -> Vec<Planned<'a>> {
    let Some(spec) = &lab.capture else { return Vec::new() };
    let mut planned = Vec::new();
    for side in sides {
        for point in &spec.points {
            let (netns, container, dev) = match (point, &side.netns) {
                (CapturePoint::Underlay, _) => (None, None, guest::UNDERLAY_DEV.to_string()),
                (CapturePoint::Container, Some(ns)) => {
                    (Some(ns.clone()), side.container.clone(), guest::CONTAINER_DEV.to_string())
                }
                (CapturePoint::Container, None) => continue,
            };
            let file = format!("{PCAP_PREFIX}{}", capture::file_name(&side.vm.guest.name, container.as_deref(), &dev));
            // On the underlay an encapsulating overlay carries the workload inside its tunnel.
            let filter = match (point, &hints.underlay_filter) {
                (CapturePoint::Underlay, Some(f)) => f.clone(),
                _ => format!("port {}", lab.workload.port),
            };
            let argv =
                Netns::wrap(netns.as_ref(), capture::tcpdump_argv(&dev, &file, spec.packets, spec.snaplen, &filter));
            planned.push(Planned { guest: &side.vm.guest, netns, container, dev, argv, file });
        }
    }
    planned
}

impl Planned<'_> {
    /// The namespace and interface it listens on.
    pub fn listens_on(&self) -> (&str, Option<&Netns>, &str) {
        (&self.guest.name, self.netns.as_ref(), &self.dev)
    }
}

/// The part of `vm`'s batch before a case that starts its captures in the
/// background (stdin, stdout and stderr away from the agent's pipes, so that
/// the batch ends) and prints their pids.
pub(super) fn start_part(planned: &[Planned], vm: &str, batch: &mut Batch) {
    let mut s = String::new();
    for p in planned.iter().filter(|p| p.guest.name == vm) {
        s.push_str(&format!(
            ": >{f}\n{} </dev/null >/dev/null 2>{f}.err &\necho $!\n",
            guest::shell_line(&p.argv),
            f = p.file
        ));
    }
    if !s.is_empty() {
        batch.report(START_PART, s);
    }
}

/// The part of `vm`'s batch before a case that returns once each of its
/// captures listens: its file is no longer empty (tcpdump writes the pcap
/// header in one write once it listens; the file was emptied before it
/// started), checked with a shell builtin every 10 ms, 10 s at most; then it
/// fails with what tcpdump said.
pub(super) fn listen_part(planned: &[Planned], vm: &str, batch: &mut Batch) {
    let mine: Vec<&Planned> = planned.iter().filter(|p| p.guest.name == vm).collect();
    if mine.is_empty() {
        return;
    }
    let ready: Vec<String> = mine.iter().map(|p| format!("[ -s {} ]", p.file)).collect();
    let ready = ready.join(" && ");
    let errs: Vec<String> = mine.iter().map(|p| format!("{}.err", p.file)).collect();
    batch.succeed(
        LISTEN_PART,
        format!("{}\n{ready} || {{ cat {} >&2; exit 1; }}", guest::wait_until_every(&ready, 10, 10), errs.join(" ")),
    );
}

const START_PART: &str = "start captures";
/// The part that waits for the captures to listen.
pub(super) const LISTEN_PART: &str = "captures listen";

/// The started captures, their pids from the start batches (by VM) and
/// their interfaces' MTUs.
pub(super) fn running<'a>(
    planned: Vec<Planned<'a>>,
    started: &[(&str, &BatchOutput)],
    mtu: impl Fn(&Planned) -> Option<usize>,
) -> anyhow::Result<Vec<RunningCapture<'a>>> {
    let mut pids: Vec<(&str, std::vec::IntoIter<i64>)> = started
        .iter()
        .map(|(vm, out)| {
            let pids: Vec<i64> = out.text(START_PART).lines().filter_map(|l| l.trim().parse().ok()).collect();
            (*vm, pids.into_iter())
        })
        .collect();
    let mut running = Vec::new();
    for plan in planned {
        let pid = pids
            .iter_mut()
            .find(|(vm, _)| *vm == plan.guest.name)
            .and_then(|(_, p)| p.next())
            .with_context(|| format!("no pid for the capture on `{}` {}", plan.guest.name, plan.dev))?;
        let mtu = mtu(&plan).unwrap_or(1500);
        running.push(RunningCapture { plan, pid, mtu });
    }
    Ok(running)
}

/// The batch part that stops a VM's captures.
pub(super) const STOP_PART: &str = "stop captures";

/// Adds the stop of `vm`'s captures to its batch after the workload:
/// SIGINT, then the wait until each tcpdump is gone; the part fails if one
/// is still there.
pub(super) fn stop_part(running: &[RunningCapture], vm: &str, batch: &mut Batch) {
    let pids: Vec<String> = running.iter().filter(|c| c.plan.guest.name == vm).map(|c| c.pid.to_string()).collect();
    if pids.is_empty() {
        return;
    }
    let pids = pids.join(" ");
    let gone = guest::process_gone("$p");
    batch.report(
        STOP_PART,
        format!(
            "kill -INT {pids} 2>/dev/null\nfor p in {pids}; do {}; done\nfor p in {pids}; do {gone} || exit 1; done",
            guest::wait_until_every(&gone, 10, 10)
        ),
    );
}

/// Fetches the stopped captures (into the case's artifacts when kept), each
/// with where it was taken.
pub(super) async fn collect(
    running: Vec<RunningCapture<'_>>,
    case_dir: Option<&Path>,
) -> anyhow::Result<Vec<(CaptureRecord, Vec<u8>)>> {
    let fetched = futures::future::try_join_all(running.iter().map(|c| c.plan.guest.read_file(&c.plan.file))).await?;
    let mut out = Vec::new();
    for (c, bytes) in running.into_iter().zip(fetched) {
        let record =
            CaptureRecord { vm: c.plan.guest.name.clone(), container: c.plan.container, dev: c.plan.dev, mtu: c.mtu };
        if let Some(dir) = case_dir {
            std::fs::write(dir.join(record.file()), &bytes)?;
        }
        out.push((record, bytes));
    }
    Ok(out)
}
