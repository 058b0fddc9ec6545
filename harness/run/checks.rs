//! The checks every case gets, whatever its variants: the workload ran and
//! moved payload (within the lab's bound), the interfaces on the way carried
//! it, the captures saw it, and the guests' kernels logged no warning.

use crate::guest;
use crate::lab::{Direction, Lab};
use crate::measure::capture::{self, CaptureSummary};
use crate::measure::connect::Latency;
use crate::measure::counters::Counters;
use crate::measure::iperf3::Iperf3Result;
use crate::measure::nic::InterfaceEvidence;
use crate::overlay::CaseEnd;
use crate::qemu::agent::Output;
use crate::report::{fmt_bps, Check};

/// iperf3 completed and its JSON parsed, payload arrived, and the throughput
/// meets the lab's bound; returns the parsed result beside the checks.
pub(super) fn workload_checks(lab: &Lab, client_out: &Output) -> (Vec<Check>, Option<Iperf3Result>) {
    let parsed = crate::measure::iperf3::parse(&client_out.stdout_text());
    let mut checks = vec![Check::new(
        "iperf3 completed",
        client_out.success() && parsed.is_ok(),
        match &parsed {
            Ok(_) => format!("client exit {}", client_out.code),
            Err(e) => format!("client exit {}: {e} {}", client_out.code, client_out.stderr_text().trim()),
        },
    )];
    let result = parsed.ok();
    let received = result.as_ref().map_or(0, |r| r.received_bytes);
    checks.push(Check::new(
        "payload delivered",
        received > 0,
        format!("{received} bytes received in {:.1} s", result.as_ref().map_or(0.0, |r| r.seconds)),
    ));
    let throughput = result.as_ref().map_or(0.0, |r| r.throughput_bps);
    if let Some(min) = lab.expect.min_throughput {
        checks.push(Check::new(
            "throughput bound",
            throughput >= min.0 as f64,
            format!("{} against a minimum of {}", fmt_bps(throughput), fmt_bps(min.0 as f64)),
        ));
    }
    (checks, result)
}

/// The kernels logged nothing alarming during the case.
pub(super) fn kernel_check(kernel_says: &[String]) -> Check {
    Check::new(
        "kernels logged no warning",
        kernel_says.is_empty(),
        if kernel_says.is_empty() {
            "no WARNING/BUG/Oops in dmesg during the case".to_string()
        } else {
            kernel_says.join(" | ")
        },
    )
}

/// Every capture saw packets of the workload (no check without captures).
pub(super) fn captures_check(summaries: &[CaptureSummary]) -> Option<Check> {
    if summaries.is_empty() {
        return None;
    }
    let seen: Vec<String> = summaries
        .iter()
        .map(|c| {
            format!(
                "{}: {} of {} packets",
                capture::file_name(&c.vm, c.container.as_deref(), &c.dev),
                c.workload,
                c.packets
            )
        })
        .collect();
    Some(Check::new("captures saw the workload", summaries.iter().all(|c| c.workload > 0), seen.join(", ")))
}

/// Every connection was answered and the loop ended: a first packet the
/// filter should have let through was not lost.
pub(super) fn connects_check(latency: Option<&Latency>, attempts: u32) -> Check {
    let name = "new connections answered";
    match latency {
        None => Check::new(name, false, format!("none of {attempts} connections was timed")),
        Some(l) => Check::new(
            name,
            l.finished && l.connected + l.refused == attempts,
            format!(
                "{} of {attempts} answered ({} connected, {} refused{}); median {:.0} µs, {:.0}-{:.0} µs",
                l.connected + l.refused,
                l.connected,
                l.refused,
                if l.finished { "" } else { "; the loop did not end" },
                l.median_us,
                l.min_us,
                l.max_us
            ),
        ),
    }
}

/// Where each guest's kernel log reader appends what the kernel logs.
const KERNEL_LOG: &str = "/run/vlab/kernel.log";

/// The guest script that starts the kernel log reader: `dmesg
/// --follow-new` from deploy on, in the background. A case then reads only
/// what was logged since (usually nothing, at no cost) instead of running
/// `dmesg` over the whole log (45-55 ms under TCG).
pub(super) fn kernel_log_reader() -> String {
    format!(
        "mkdir -p /run/vlab; : >{KERNEL_LOG}
         dmesg --follow-new >>{KERNEL_LOG} </dev/null 2>/dev/null &
echo $! >{KERNEL_LOG}.pid"
    )
}

/// The guest script that prints what the kernel log reader wrote (shell
/// builtins when that is nothing); it fails when the reader is gone.
pub(super) fn kernel_log_command() -> String {
    format!(
        "read -r p <{KERNEL_LOG}.pid && read -r c </proc/$p/comm && [ \"$c\" = dmesg ] \
         || {{ echo 'the kernel log reader is gone' >&2; exit 1; }}\n[ ! -s {KERNEL_LOG} ] || cat {KERNEL_LOG}"
    )
}

/// The lines of a `dmesg` that the kernel logged at or after `since` seconds
/// of uptime (a line without a time stamp goes with the line before it).
pub(super) fn kernel_log_since(dmesg: &str, since: f64) -> String {
    let mut keep = false;
    let mut out = String::new();
    for line in dmesg.lines() {
        let stamp =
            line.strip_prefix('[').and_then(|r| r.split_once(']')).and_then(|(t, _)| t.trim().parse::<f64>().ok());
        if let Some(t) = stamp {
            keep = t >= since;
        }
        if keep {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// What the kernel of `vm` logged during a case (`log`) that means a warning
/// or a bug.
pub(super) fn kernel_alarms(vm: &str, log: &str) -> Vec<String> {
    log.lines()
        .filter(|l| KERNEL_ALARMS.iter().any(|a| l.contains(a)))
        .take(3)
        .map(|l| format!("{vm}: {}", l.trim()))
        .collect()
}

/// Kernel log lines that mean the kernel hit a bug or a warning.
const KERNEL_ALARMS: [&str; 5] = ["WARNING:", "BUG:", "Oops", "general protection fault", "Call Trace:"];

/// Which interfaces carried the payload, from their counters. Data flows into
/// the server for `forward`, into the client for `reverse`, both ways for
/// `bidir`; each interface on the way must have moved at least that much.
pub(super) fn path_checks(
    [server, client]: &[CaseEnd; 2],
    on_vf: bool,
    evidence: &[InterfaceEvidence],
    direction: Direction,
    received: u64,
) -> Vec<Check> {
    let (into_server, into_client) = match direction {
        Direction::Forward => (received, 0),
        Direction::Reverse => (0, received),
        Direction::Bidir => (received / 2, received / 2),
    };
    let find = |vm: &str, ns: Option<&str>, dev: &str| {
        evidence.iter().find(|e| e.vm == vm && e.container.as_deref() == ns && e.dev == dev).map(|e| e.delta())
    };
    let (s_name, c_name) = (server.vm.as_str(), client.vm.as_str());
    let mut checks = Vec::new();
    // An interface faces the network: what flows into its host arrives as rx.
    let moved = |d: Counters, inbound: u64, outbound: u64| d.rx_bytes >= inbound && d.tx_bytes >= outbound;
    let describe = |d: Counters| format!("rx {} B / tx {} B", d.rx_bytes, d.tx_bytes);

    let vf_attached = server.container.is_some() && on_vf;
    if !vf_attached {
        // On veth and on the underlay path, traffic crosses the VMs' underlay NICs.
        if let (Some(s), Some(c)) = (find(s_name, None, guest::UNDERLAY_DEV), find(c_name, None, guest::UNDERLAY_DEV)) {
            checks.push(Check::new(
                "underlay carried the payload",
                received > 0 && moved(s, into_server, into_client) && moved(c, into_client, into_server),
                format!("server {}, client {}, payload {received} B", describe(s), describe(c)),
            ));
        }
    }
    if let (Some(sc), Some(cc)) = (&server.container, &client.container) {
        let (s, c) = (
            find(s_name, Some(sc), guest::CONTAINER_DEV).unwrap_or_default(),
            find(c_name, Some(cc), guest::CONTAINER_DEV).unwrap_or_default(),
        );
        let name =
            if vf_attached { "container VFs carried the payload" } else { "container interfaces carried the payload" };
        checks.push(Check::new(
            name,
            received > 0 && moved(s, into_server, into_client) && moved(c, into_client, into_server),
            format!("server {sc}/eth0 {}, client {cc}/eth0 {}, payload {received} B", describe(s), describe(c)),
        ));
        if vf_attached {
            let drivers: Vec<String> = evidence
                .iter()
                .filter(|e| e.container.is_some())
                .map(|e| {
                    format!("{}/{}: {}", e.vm, e.container.as_deref().unwrap_or(""), e.driver.as_deref().unwrap_or("?"))
                })
                .collect();
            let all_vf =
                evidence.iter().filter(|e| e.container.is_some()).all(|e| e.driver.as_deref() == Some("igbvf"));
            checks.push(Check::new("containers own a VF (igbvf)", all_vf, drivers.join(", ")));
            // The PF's own counters stay quiet: the payload went VF to wire.
            let pf: Vec<Counters> =
                [s_name, c_name].iter().filter_map(|vm| find(vm, None, guest::UNDERLAY_DEV)).collect();
            let pf_bytes: u64 = pf.iter().map(|d| d.rx_bytes + d.tx_bytes).sum();
            checks.push(Check::new(
                "PF stack bypassed",
                pf.len() == 2 && pf_bytes < received / 10,
                format!("PFs moved {pf_bytes} B in all while the VFs carried {received} B"),
            ));
        }
    }
    checks
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The underlay NIC of `vm` moved `rx` and `tx` bytes over the workload.
    fn underlay(vm: &str, rx: u64, tx: u64) -> InterfaceEvidence {
        InterfaceEvidence {
            vm: vm.into(),
            container: None,
            dev: guest::UNDERLAY_DEV.into(),
            driver: Some("virtio_net".into()),
            channels: None,
            vfs: None,
            offloads: Default::default(),
            segmentation: Default::default(),
            mtu: Some(1500),
            before: Counters::default(),
            after: Counters { rx_bytes: rx, tx_bytes: tx, ..Default::default() },
        }
    }

    /// `dev` of `vm` (in `container`) moved `rx` and `tx` bytes.
    fn moved(vm: &str, container: Option<&str>, dev: &str, driver: &str, rx: u64, tx: u64) -> InterfaceEvidence {
        InterfaceEvidence {
            container: container.map(String::from),
            dev: dev.into(),
            driver: Some(driver.into()),
            ..underlay(vm, rx, tx)
        }
    }

    fn ends() -> [CaseEnd; 2] {
        let end = |vm: &str, a: &str| CaseEnd { vm: vm.into(), container: None, addr: a.parse().unwrap() };
        [end("host2", "10.0.0.2"), end("host1", "10.0.0.1")]
    }

    /// Server c1 on host2, client c2 on host1.
    fn container_ends() -> [CaseEnd; 2] {
        let [mut s, mut c] = ends();
        s.container = Some("c1".into());
        c.container = Some("c2".into());
        [s, c]
    }

    const PAYLOAD: u64 = 1_000_000;

    /// The verdicts of the path checks, by name, for a forward flow of
    /// [`PAYLOAD`] bytes (`received`) to the server.
    fn path_verdicts(ends: &[CaseEnd; 2], on_vf: bool, e: &[InterfaceEvidence], received: u64) -> Vec<(String, bool)> {
        path_checks(ends, on_vf, e, Direction::Forward, received).into_iter().map(|c| (c.name, c.passed)).collect()
    }

    /// Each interface on the way must have moved the payload in its direction
    /// (into the server, out of the client); one that did not fails its
    /// check, and nothing passes for a payload of nothing.
    #[test]
    fn every_interface_on_the_way_must_have_moved_the_payload() {
        let (p, ack) = (PAYLOAD + 5_000, 4_000);
        let veth = |vm, c, rx, tx| moved(vm, Some(c), guest::CONTAINER_DEV, "veth", rx, tx);
        let good = || {
            vec![
                underlay("host2", p, ack),
                underlay("host1", ack, p),
                veth("host2", "c1", p, ack),
                veth("host1", "c2", ack, p),
            ]
        };
        let both = |u: bool, c: bool| {
            vec![
                ("underlay carried the payload".to_string(), u),
                ("container interfaces carried the payload".to_string(), c),
            ]
        };
        assert_eq!(path_verdicts(&container_ends(), false, &good(), PAYLOAD), both(true, true));
        for (i, underlay_fails) in [(0, true), (1, true), (2, false), (3, false)] {
            // Into the server nothing arrived, or out of the client nothing left.
            let mut e = good();
            if i % 2 == 0 {
                e[i].after.rx_bytes = 0;
            } else {
                e[i].after.tx_bytes = 0;
            }
            assert_eq!(
                path_verdicts(&container_ends(), false, &e, PAYLOAD),
                both(!underlay_fails, underlay_fails),
                "{i}"
            );
        }
        let idle: Vec<_> = good()
            .into_iter()
            .map(|mut i| {
                i.after = Counters::default();
                i
            })
            .collect();
        assert_eq!(path_verdicts(&container_ends(), false, &idle, 0), both(false, false));
    }

    /// Containers on VFs: the payload goes VF to wire, and the PFs' own
    /// counters stay under a tenth of it; a PF that carried it fails.
    #[test]
    fn a_pf_that_carried_the_payload_fails_the_bypass_check() {
        let vf = |vm, c, rx, tx| moved(vm, Some(c), guest::CONTAINER_DEV, "igbvf", rx, tx);
        let evidence = |pf_rx: u64| {
            vec![
                vf("host2", "c1", PAYLOAD, 4_000),
                vf("host1", "c2", 4_000, PAYLOAD),
                moved("host2", None, guest::UNDERLAY_DEV, "igb", pf_rx, 0),
                moved("host1", None, guest::UNDERLAY_DEV, "igb", 70, 70),
            ]
        };
        let bypass = |pf_rx| {
            let v = path_verdicts(&container_ends(), true, &evidence(pf_rx), PAYLOAD);
            assert_eq!(
                v.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(),
                ["container VFs carried the payload", "containers own a VF (igbvf)", "PF stack bypassed"]
            );
            v[2].1
        };
        assert!(bypass(70));
        assert!(!bypass(PAYLOAD));
        // Exactly a tenth (with host1's PF's 140 bytes) is not under a tenth.
        assert!(bypass(PAYLOAD / 10 - 141));
        assert!(!bypass(PAYLOAD / 10 - 140));
    }

    #[test]
    fn a_lost_connection_or_an_unfinished_loop_fails() {
        use crate::measure::connect::parse;
        assert!(connects_check(parse("c 300\nr 100\nr 200\ndone\n", 3).as_ref(), 3).passed);
        let short = parse("c 300\nr 100\ndone\n", 3).unwrap();
        assert!(!connects_check(Some(&short), 3).passed, "one of three was never answered");
        let cut = parse("c 300\nr 100\nr 120\n", 3).unwrap();
        assert!(!cut.finished);
        assert!(!connects_check(Some(&cut), 3).passed);
        assert!(parse("bash: garbage\n", 3).is_none());
        assert!(!connects_check(None, 3).passed);
    }

    /// Both ways at once, each underlay NIC must have moved half the payload
    /// in each direction; a tenth of it either way is not the workload.
    #[test]
    fn a_bidirectional_payload_is_weighed_half_each_way() {
        let judge = |[s_rx, s_tx, c_rx, c_tx]: [u64; 4]| {
            let evidence = [underlay("host2", s_rx, s_tx), underlay("host1", c_rx, c_tx)];
            let checks = path_checks(&ends(), false, &evidence, Direction::Bidir, 1_000_000);
            assert_eq!(checks.len(), 1, "{checks:?}");
            checks[0].passed
        };
        let (half, tenth) = (500_000, 100_000);
        assert!(judge([half; 4]));
        for short in 0..4 {
            let mut moved = [half; 4];
            moved[short] = tenth;
            assert!(!judge(moved), "{moved:?}");
        }
    }

    /// The reader follows the kernel log into the file the command prints,
    /// and the command fails once the reader is gone (run here with a `dmesg`
    /// that logs one line and waits, in a directory of the test's own).
    #[test]
    fn the_kernel_log_reader_feeds_the_command_until_it_is_gone() {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("bin");
        std::fs::create_dir(&bin).unwrap();
        let dmesg = bin.join("dmesg");
        std::fs::write(&dmesg, "#!/bin/sh\necho '[   12.5] WARNING: at the test'\nwhile :; do sleep 0.1; done\n")
            .unwrap();
        std::fs::set_permissions(&dmesg, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        let here = |script: String| script.replace("/run/vlab", &dir.path().join("run").display().to_string());
        let sh = |script: &str| {
            let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default());
            std::process::Command::new("sh").args(["-c", script]).env("PATH", path).output().unwrap()
        };
        assert!(sh(&here(kernel_log_reader())).status.success());
        let read = || sh(&here(kernel_log_command()));
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let out = loop {
            let out = read();
            if !out.stdout.is_empty() || std::time::Instant::now() > deadline {
                break out;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        };
        assert!(out.status.success(), "{out:?}");
        assert_eq!(String::from_utf8_lossy(&out.stdout), "[   12.5] WARNING: at the test\n");
        let pid = std::fs::read_to_string(dir.path().join("run/kernel.log.pid")).unwrap();
        assert!(std::process::Command::new("kill").arg(pid.trim()).status().unwrap().success());
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while read().status.success() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let gone = read();
        assert!(!gone.status.success(), "{gone:?}");
        assert!(String::from_utf8_lossy(&gone.stderr).contains("the kernel log reader is gone"), "{gone:?}");
    }

    #[test]
    fn the_kernel_log_of_a_case_starts_at_its_uptime() {
        let dmesg = "[   10.000000] before\n[   12.500000] WARNING: during\n  continued\n[   13.000000] after\n";
        assert_eq!(
            kernel_log_since(dmesg, 12.49),
            "[   12.500000] WARNING: during\n  continued\n[   13.000000] after\n"
        );
        assert_eq!(kernel_log_since(dmesg, 14.0), "");
    }
}
