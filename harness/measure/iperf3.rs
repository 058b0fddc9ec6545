//! iperf3: command lines and the parsing of its `-J` output.

use serde::Serialize;
use serde_json::Value;

use crate::lab::{CaseParams, Direction, Protocol, Workload};

/// What iperf3 reported for one run, from the client's JSON.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Iperf3Result {
    /// Receiver-side throughput in bit/s (both directions summed for `bidir`).
    pub throughput_bps: f64,
    /// Payload bytes the receiver(s) got.
    pub received_bytes: u64,
    /// Payload bytes the sender(s) sent.
    pub sent_bytes: u64,
    /// TCP retransmissions of the sender(s); `None` for UDP.
    pub retransmits: Option<u64>,
    /// UDP datagrams lost, in percent; `None` for TCP.
    pub lost_percent: Option<f64>,
    /// CPU use of the client's host, in percent.
    pub cpu_client_percent: f64,
    /// CPU use of the server's host, in percent.
    pub cpu_server_percent: f64,
    /// Measured seconds.
    pub seconds: f64,
}

/// Why iperf3 output could not be used.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum Iperf3Error {
    /// Not JSON at all.
    #[error("iperf3 output is not JSON: {0}")]
    NotJson(String),
    /// iperf3 reported an error.
    #[error("iperf3 reported: {0}")]
    Reported(String),
    /// A field is missing.
    #[error("iperf3 JSON has no `{0}`")]
    Missing(&'static str),
}

fn num(v: &Value, path: &[&str]) -> Option<f64> {
    let mut cur = v;
    for p in path {
        cur = cur.get(p)?;
    }
    cur.as_f64()
}

/// Parses a client's `iperf3 -J` output.
pub fn parse(json: &str) -> Result<Iperf3Result, Iperf3Error> {
    let v: Value = serde_json::from_str(json).map_err(|e| Iperf3Error::NotJson(e.to_string()))?;
    if let Some(err) = v.get("error").and_then(Value::as_str) {
        return Err(Iperf3Error::Reported(err.to_string()));
    }
    let end = v.get("end").ok_or(Iperf3Error::Missing("end"))?;
    let udp = v.pointer("/start/test_start/protocol").and_then(Value::as_str) == Some("UDP");
    let bidir = v.pointer("/start/test_start/bidir").and_then(Value::as_i64) == Some(1);
    let cpu_client = num(end, &["cpu_utilization_percent", "host_total"])
        .ok_or(Iperf3Error::Missing("end.cpu_utilization_percent.host_total"))?;
    let cpu_server = num(end, &["cpu_utilization_percent", "remote_total"]).unwrap_or(0.0);
    let (sent_keys, recv_keys): (&[&str], &[&str]) = match (udp, bidir) {
        (false, false) => (&["sum_sent"], &["sum_received"]),
        (false, true) => (&["sum_sent", "sum_sent_bidir_reverse"], &["sum_received", "sum_received_bidir_reverse"]),
        (true, false) => (&["sum"], &["sum"]),
        (true, true) => (&["sum", "sum_bidir_reverse"], &["sum", "sum_bidir_reverse"]),
    };
    let mut out = Iperf3Result {
        throughput_bps: 0.0,
        received_bytes: 0,
        sent_bytes: 0,
        retransmits: if udp { None } else { Some(0) },
        lost_percent: None,
        cpu_client_percent: cpu_client,
        cpu_server_percent: cpu_server,
        seconds: 0.0,
    };
    for key in sent_keys {
        let s = end.get(key).ok_or(Iperf3Error::Missing("end.sum_sent"))?;
        out.sent_bytes += num(s, &["bytes"]).unwrap_or(0.0) as u64;
        if let Some(r) = out.retransmits.as_mut() {
            *r += num(s, &["retransmits"]).unwrap_or(0.0) as u64;
        }
    }
    for key in recv_keys {
        let s = end.get(key).ok_or(Iperf3Error::Missing("end.sum_received"))?;
        out.throughput_bps +=
            num(s, &["bits_per_second"]).ok_or(Iperf3Error::Missing("end.sum_received.bits_per_second"))?;
        out.seconds = out.seconds.max(num(s, &["seconds"]).unwrap_or(0.0));
        if udp {
            // Lost datagrams: the receiver-side view is in the UDP sum.
            let lost = num(s, &["lost_percent"]).unwrap_or(0.0);
            out.lost_percent = Some(out.lost_percent.unwrap_or(0.0).max(lost));
            let bytes = num(s, &["bytes"]).unwrap_or(0.0) * (1.0 - lost / 100.0);
            out.received_bytes += bytes as u64;
        } else {
            out.received_bytes += num(s, &["bytes"]).unwrap_or(0.0) as u64;
        }
    }
    Ok(out)
}

/// The server's command line (one test, then exit).
pub fn server_argv(w: &Workload) -> Vec<String> {
    ["iperf3", "-s", "-1", "-J", "-p", &w.port.to_string()].map(String::from).to_vec()
}

/// How long the client tries to connect: a lab path connects in
/// milliseconds, and one lost SYN (sent again after 1 s) still fits; a path
/// that does not deliver (a verdict some cases expect) costs no more.
const CONNECT_TIMEOUT_MS: u32 = 3000;

/// The client's command line for one case against `server_addr`.
pub fn client_argv(w: &Workload, params: &CaseParams, server_addr: &str) -> Vec<String> {
    let secs = w.duration.as_secs_f64();
    let (port, connect) = (w.port.to_string(), CONNECT_TIMEOUT_MS.to_string());
    let mut a: Vec<String> =
        ["iperf3", "-c", server_addr, "-p", &port, "-J", "--connect-timeout", &connect].map(String::from).to_vec();
    a.extend(["-t".into(), format!("{secs}"), "-P".into(), params.streams.to_string()]);
    if params.protocol == Protocol::Udp {
        a.extend(["-u".into(), "-b".into(), w.udp_bitrate.0.to_string()]);
    }
    match params.direction {
        Direction::Forward => {}
        Direction::Reverse => a.push("-R".into()),
        Direction::Bidir => a.push("--bidir".into()),
    }
    a
}
