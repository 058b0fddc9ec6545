//! Packet captures during a case: tcpdump in the guests at every capture
//! point of both endpoints, started before the workload and stopped after;
//! the pcaps come back through the agent and are decoded in Rust.

use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::Context;

use super::case::Side;
use crate::guest::{self, Guest, Netns};
use crate::lab::{CapturePoint, Lab};
use crate::measure::capture::{self, CaptureContext, CaptureSummary};
use crate::overlay::CaptureHints;

/// A running tcpdump in a guest.
pub(super) struct RunningCapture<'a> {
    guest: &'a Guest,
    pid: i64,
    file: String,
    mtu: usize,
    summary: CaptureSummary,
}

/// Starts tcpdump on every capture point of both endpoints and waits until
/// each has opened its interface (its file has the pcap header).
pub(super) async fn start<'a>(
    lab: &Lab,
    hints: &CaptureHints,
    sides: [&Side<'a>; 2],
) -> anyhow::Result<Vec<RunningCapture<'a>>> {
    let Some(spec) = &lab.capture else { return Ok(Vec::new()) };
    let mut running = Vec::new();
    for side in sides {
        for point in &spec.points {
            let (netns, container, dev) = match (point, &side.netns) {
                (CapturePoint::Underlay, _) => (None, None, guest::UNDERLAY_DEV.to_string()),
                (CapturePoint::Container, Some(ns)) => {
                    (Some(ns), side.container.clone(), guest::CONTAINER_DEV.to_string())
                }
                (CapturePoint::Container, None) => continue,
            };
            let name = capture::file_name(&side.vm.guest.name, container.as_deref(), &dev);
            let file = format!("/tmp/vlab-{name}");
            // On the underlay an encapsulating overlay carries the workload inside its tunnel.
            let filter = match (point, &hints.underlay_filter) {
                (CapturePoint::Underlay, Some(f)) => f.clone(),
                _ => format!("port {}", lab.workload.port),
            };
            let argv = Netns::wrap(netns, capture::tcpdump_argv(&dev, &file, spec.packets, spec.snaplen, &filter));
            let refs: Vec<&str> = argv.iter().map(String::as_str).collect();
            let mtu_cmd = Netns::wrap(netns, vec!["cat".into(), format!("/sys/class/net/{dev}/mtu")]).join(" ");
            let mtu = side.vm.guest.run(&mtu_cmd).await?.stdout_text().trim().parse().unwrap_or(1500);
            let pid = side.vm.guest.agent().spawn(&refs).await?;
            let summary = CaptureSummary { vm: side.vm.guest.name.clone(), container, dev, ..Default::default() };
            running.push(RunningCapture { guest: &side.vm.guest, pid, file, mtu, summary });
        }
    }
    for c in &running {
        // 24 bytes of pcap header once tcpdump listens.
        let header = format!("[ \"$(stat -c %s {} 2>/dev/null || echo 0)\" -ge 24 ]", c.file);
        let ready = format!("{}; {header}", guest::wait_until(&header, 10));
        c.guest
            .run(&ready)
            .await
            .with_context(|| format!("tcpdump on `{}` {} did not start", c.guest.name, c.summary.dev))?;
    }
    Ok(running)
}

/// Stops the captures, brings the files back (into the case's artifacts when
/// kept) and summarises them.
pub(super) async fn finish(
    running: Vec<RunningCapture<'_>>,
    port: u16,
    hints: &CaptureHints,
    case_dir: Option<&Path>,
) -> anyhow::Result<Vec<CaptureSummary>> {
    let original_dst = |dst: IpAddr| hints.original_destination(dst);
    let vxlan_port = hints.vxlan_port;
    let mut out = Vec::new();
    for mut c in running {
        c.guest.try_run(&format!("kill -INT {} 2>/dev/null; true", c.pid)).await?;
        c.guest.agent().wait(c.pid, "tcpdump", Duration::from_secs(20)).await?;
        let bytes = c.guest.read_file(&c.file).await?;
        c.guest.try_run(&format!("rm -f {}", c.file)).await?;
        let name = capture::file_name(&c.summary.vm, c.summary.container.as_deref(), &c.summary.dev);
        if let Some(dir) = case_dir {
            std::fs::write(dir.join(&name), &bytes)?;
        }
        let ctx = CaptureContext { port, mtu: c.mtu, original_dst: &original_dst, vxlan_port };
        let parsed = capture::summarize(&bytes, &ctx).map_err(|e| anyhow::anyhow!("{name}: {e}"))?;
        c.summary = CaptureSummary { vm: c.summary.vm, container: c.summary.container, dev: c.summary.dev, ..parsed };
        out.push(c.summary);
    }
    Ok(out)
}
