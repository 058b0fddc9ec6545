//! The iperf3 lifecycle of one case: the server started in its endpoint
//! (`-1`: one test, then it exits) by a part of its VM's start batch, which
//! returns once it listens; the client run for the workload's duration by
//! the first part of its VM's evidence batch, so that the evidence is read
//! the moment it ends; the server's JSON read by a part of the server VM's
//! evidence batch once the server has exited.

use std::time::Duration;

use crate::guest::{self, Batch, BatchOutput, Guest, Netns};
use crate::lab::{Case, Lab};
use crate::measure::iperf3;
use crate::qemu::agent::Output;

use super::case::Side;

/// What the two iperf3 processes left.
pub(super) struct WorkloadOutput {
    /// The client's output (its JSON on stdout).
    pub client: Output,
    /// The server's JSON, when it wrote one.
    pub server: Option<Vec<u8>>,
}

/// How long the server may take to listen, in seconds.
const LISTEN_LIMIT_S: u32 = 20;
/// How long the server may take to end after its client, in seconds.
const END_LIMIT_S: u32 = 20;
/// Where the server writes its JSON and its complaints.
const SERVER_OUT: &str = "/tmp/vlab-iperf3-server.json";
const START_PART: &str = "start iperf3 server";
/// The part that waits for the server to listen.
pub(super) const LISTEN_PART: &str = "iperf3 server listens";
const END_PART: &str = "iperf3 server";
/// The part that runs the client.
pub(super) const CLIENT_PART: &str = "iperf3 client";
/// The parts that start the probe's listener and try the probe.
const PROBE_LISTENER_PART: &str = "start probe listener";
const PROBE_PART: &str = "probe";
/// The intruder's connection attempt in its VM's evidence batch.
const INTRUDER_PART: &str = "intruder";
/// The timed connections after the flow, in the client's evidence batch.
const CONNECT_PART: &str = "connects";
/// Where the client's exit code goes, for a server in the same VM.
const CLIENT_RC: &str = "/tmp/vlab-iperf3-client.rc";

/// The part of the server VM's batch before a case that starts the server in
/// the background (in its namespace) and prints its pid.
pub(super) fn start_part(lab: &Lab, server: &Side<'_>, batch: &mut Batch) {
    let argv = Netns::wrap(server.netns.as_ref(), iperf3::server_argv(&lab.workload));
    batch.report(
        START_PART,
        format!("{} </dev/null >{SERVER_OUT} 2>{SERVER_OUT}.err &\necho $!\n: >{CLIENT_RC}", guest::shell_line(&argv)),
    );
}

/// The part of the server VM's batch before a case that exits 0 once the
/// server listens, or after 20 s with what the server said. The check reads
/// the namespace's `/proc/net/tcp` and `tcp6` from outside it with shell
/// builtins (a listening socket on the port: local port in hex, state `0A`)
/// every 10 ms.
pub(super) fn listen_part(lab: &Lab, server: &Side<'_>, batch: &mut Batch) {
    let port = format!("{:04X}", lab.workload.port);
    let at = Netns::paths(server.netns.as_ref());
    let check = format!(
        "{}listening() {{ for t in {net}/tcp {net}/tcp6; do while read -r _ l _ st _; do \
         case \"$l:$st\" in *:{port}:0A) return 0;; esac; done <$t; done; return 1; }}\n",
        at.prelude,
        net = at.proc_net
    );
    let wait = format!("{check}{}; listening", guest::wait_until_every("listening", LISTEN_LIMIT_S, 10));
    batch.succeed(LISTEN_PART, format!("{wait} || {{ cat {SERVER_OUT} {SERVER_OUT}.err >&2; exit 1; }}"));
}

/// The part of the server VM's batch before a case that starts a listener
/// (an iperf3 server, one test) on the probe port in the server's namespace;
/// the workload's listen wait covers it too.
pub(super) fn probe_listener_part(lab: &Lab, server: &Side<'_>, batch: &mut Batch) {
    let Some(port) = lab.workload.probe_port else { return };
    let mut w = lab.workload.clone();
    w.port = port;
    let argv = Netns::wrap(server.netns.as_ref(), iperf3::server_argv(&w));
    batch.report(PROBE_LISTENER_PART, format!("{} </dev/null >/dev/null 2>&1 &\necho $!", guest::shell_line(&argv)));
}

/// The probe listener's pid, from the server VM's batch before the case.
pub(super) fn probe_listener_pid(out: &BatchOutput) -> Option<i64> {
    out.text(PROBE_LISTENER_PART).lines().next().and_then(|l| l.trim().parse().ok())
}

/// The part of the client VM's evidence batch after the client: one TCP
/// connection attempt from the client's namespace to the server's probe
/// port (bash's `/dev/tcp`, one second at most); prints `connected`,
/// `refused` or `timed-out`.
pub(super) fn probe_part(lab: &Lab, client: &Side<'_>, server_addr: &str, batch: &mut Batch) {
    let Some(port) = lab.workload.probe_port else { return };
    connect_part(PROBE_PART, client, server_addr, port, batch);
}

/// The part of the intruder VM's evidence batch after the client's probe,
/// when the lab has an intruder: one TCP connection attempt from it to the
/// server's workload port, as [`probe_part`] makes.
pub(super) fn intruder_part(lab: &Lab, intruder: &Side<'_>, server_addr: &str, batch: &mut Batch) {
    connect_part(INTRUDER_PART, intruder, server_addr, lab.workload.port, batch);
}

fn connect_part(part: &str, from: &Side<'_>, addr: &str, port: u16, batch: &mut Batch) {
    let argv = Netns::wrap(
        from.netns.as_ref(),
        ["timeout", "1", "bash", "-c", &format!("exec 3<>/dev/tcp/{addr}/{port}")].map(String::from).to_vec(),
    );
    batch.report(
        part,
        format!(
            "{} 2>/dev/null; case $? in 0) echo connected;; 124) echo timed-out;; *) echo refused;; esac",
            guest::shell_line(&argv)
        ),
    );
}

/// The probe's outcome, from the client VM's evidence batch.
pub(super) fn probe_outcome(lab: &Lab, out: &BatchOutput) -> Option<crate::overlay::Probe> {
    connect_outcome(out, PROBE_PART, lab.workload.probe_port?)
}

/// The intruder's attempt, from its VM's evidence batch.
pub(super) fn intruder_outcome(lab: &Lab, out: &BatchOutput) -> Option<crate::overlay::Probe> {
    connect_outcome(out, INTRUDER_PART, lab.workload.port)
}

fn connect_outcome(out: &BatchOutput, part: &str, port: u16) -> Option<crate::overlay::Probe> {
    use crate::overlay::ProbeOutcome;
    let outcome = match out.text(part).trim() {
        "connected" => ProbeOutcome::Connected,
        "timed-out" => ProbeOutcome::TimedOut,
        "refused" => ProbeOutcome::Refused,
        _ => return None,
    };
    Some(crate::overlay::Probe { port, outcome })
}

/// The server's pid, from its VM's batch before the case.
pub(super) fn server_pid(out: &BatchOutput) -> Option<i64> {
    out.text(START_PART).lines().next().and_then(|l| l.trim().parse().ok())
}

/// The part of the server VM's evidence batch that waits for the server to
/// end (`first`, the workload's duration, asleep: nothing wakes the guest
/// while it measures; then 20 s at most) and prints its JSON. A server whose
/// client failed may never have had its test: [`kill_server`] ends it, or,
/// in the client's VM, this part when the client's exit code says so.
pub(super) fn end_part(pid: i64, first: Duration, batch: &mut Batch) {
    let gone = guest::process_gone(&pid.to_string());
    let sleep = if first.is_zero() { String::new() } else { format!("sleep {}\n", first.as_secs_f64()) };
    batch.report(
        END_PART,
        format!(
            "read -r rc 2>/dev/null <{CLIENT_RC}; [ -z \"$rc\" ] || [ \"$rc\" = 0 ] || kill -9 {pid} 2>/dev/null\n\
             {sleep}{}\n{gone} && cat {SERVER_OUT}",
            guest::wait_until_every(&gone, END_LIMIT_S, 10)
        ),
    );
}

/// Ends the server of a client that failed (in another VM than the client),
/// or the probe's listener once the probe is over.
pub(super) async fn kill(guest: &Guest, pid: i64) {
    let _ = guest.try_run(&format!("kill -9 {pid} 2>/dev/null; true")).await;
}

/// The server's JSON from the evidence batch.
pub(super) fn server_output(out: &BatchOutput) -> Option<Vec<u8>> {
    out.get(END_PART).filter(|o| o.success()).map(|o| o.stdout.clone())
}

/// The first part of the client VM's evidence batch: the case's client
/// against the listening server at `server_addr`; its exit code is kept for
/// a server in the same VM.
pub(super) fn client_part(lab: &Lab, case: &Case, client: &Side<'_>, server_addr: &str, batch: &mut Batch) {
    let argv = Netns::wrap(client.netns.as_ref(), iperf3::client_argv(&lab.workload, &case.params, server_addr));
    batch.report(CLIENT_PART, format!("{}\nrc=$?; echo $rc >{CLIENT_RC}; exit $rc", guest::shell_line(&argv)));
}

/// The part of the client VM's evidence batch after the client that times
/// `[workload] connects` new connections to the server's port (none
/// without); see [`crate::measure::connect`].
pub(super) fn timed_connects_part(lab: &Lab, client: &Side<'_>, server_addr: &str, batch: &mut Batch) {
    let n = lab.workload.connects;
    if n == 0 {
        return;
    }
    let script = crate::measure::connect::script(server_addr, lab.workload.port, n);
    let limit = crate::measure::connect::LIMIT_S.to_string();
    let argv =
        Netns::wrap(client.netns.as_ref(), ["timeout", &limit, "bash", "-c", &script].map(String::from).to_vec());
    batch.report(CONNECT_PART, format!("{} || true", guest::shell_line(&argv)));
}

/// What the timed connections printed, from the client VM's evidence batch.
pub(super) fn connect_output(out: &BatchOutput) -> Option<String> {
    out.get(CONNECT_PART).map(Output::stdout_text)
}

/// The client's output, from its VM's evidence batch.
pub(super) fn client_output(out: &BatchOutput) -> Option<Output> {
    out.get(CLIENT_PART).cloned()
}
