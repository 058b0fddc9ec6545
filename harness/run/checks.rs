//! The checks every case gets, whatever its variants: the workload ran and
//! moved payload (within the lab's bound), the interfaces on the way carried
//! it, the captures saw it, and the guests' kernels logged no warning.

use crate::guest;
use crate::lab::{Direction, Lab};
use crate::measure::capture::{self, CaptureSummary};
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
                received > 0 && pf.len() == 2 && pf_bytes < received / 10,
                format!("PFs moved {pf_bytes} B in all while the VFs carried {received} B"),
            ));
        }
    }
    checks
}

#[cfg(test)]
mod tests {
    use super::*;

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
