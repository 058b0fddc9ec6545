//! The iperf3 lifecycle of one case: the server started in its endpoint
//! (`-1`: one test, then it exits), waited for until it listens, the client
//! run for the workload's duration, and the server's JSON collected.

use std::time::Duration;

use anyhow::bail;

use super::case::Side;
use crate::guest::Netns;
use crate::lab::{Case, Lab};
use crate::measure::iperf3;
use crate::qemu::agent::{AgentError, Output};

/// What the two iperf3 processes left.
pub(super) struct WorkloadOutput {
    /// The client's output (its JSON on stdout).
    pub client: Output,
    /// The server's output, unless it could not be collected.
    pub server: Result<Output, AgentError>,
}

/// How long the server may take to listen.
const LISTEN_LIMIT: Duration = Duration::from_secs(20);

/// Runs the case's workload from `client` to `server`.
pub(super) async fn run(
    lab: &Lab,
    case: &Case,
    server: &Side<'_>,
    client: &Side<'_>,
) -> anyhow::Result<WorkloadOutput> {
    let w = &lab.workload;
    let server_argv = Netns::wrap(server.netns.as_ref(), iperf3::server_argv(w));
    let argv_refs: Vec<&str> = server_argv.iter().map(String::as_str).collect();
    let agent = server.vm.guest.agent();
    let server_pid = agent.spawn(&argv_refs).await?;
    let prefix = Netns::wrap(server.netns.as_ref(), Vec::new()).join(" ");
    let listening = format!("{prefix} ss -Hltn sport = :{} | grep -q LISTEN", w.port);
    if server.vm.guest.poll(&listening, LISTEN_LIMIT).await?.is_none() {
        let said = match agent.wait(server_pid, "iperf3 -s", Duration::from_secs(1)).await {
            Ok(out) => format!(": {} {}", out.stdout_text().trim(), out.stderr_text().trim()),
            Err(_) => String::new(),
        };
        bail!("iperf3 server on `{}` did not listen on port {} within 20 s{said}", server.vm.guest.name, w.port);
    }
    let client_argv = Netns::wrap(client.netns.as_ref(), iperf3::client_argv(w, &case.params, &server.addr));
    let client_refs: Vec<&str> = client_argv.iter().map(String::as_str).collect();
    let limit = w.duration + lab.timeouts.command;
    let client_out = client.vm.guest.agent().exec(&client_refs, limit).await?;
    let server_out = agent.wait(server_pid, "iperf3 -s", Duration::from_secs(20)).await;
    Ok(WorkloadOutput { client: client_out, server: server_out })
}
