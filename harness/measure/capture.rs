//! Packet captures: tcpdump in the guests during the workload, the pcap
//! brought back to the host and summarised in Rust (pcap-file + etherparse).

use etherparse::{LaxNetSlice, LaxSlicedPacket, TransportSlice};
use serde::Serialize;

/// What one capture holds, from its bytes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct CaptureSummary {
    /// The VM it was taken on.
    pub vm: String,
    /// The container whose namespace holds the interface, if any.
    pub container: Option<String>,
    /// The interface.
    pub dev: String,
    /// Packets in the file.
    pub packets: u64,
    /// IPv4 packets.
    pub ipv4: u64,
    /// IPv6 packets.
    pub ipv6: u64,
    /// TCP segments.
    pub tcp: u64,
    /// UDP datagrams.
    pub udp: u64,
    /// Packets from or to the workload's port.
    pub workload: u64,
}

/// The file name a capture gets under the artifacts: `<vm>-<interface>.pcap`
/// (`host1-underlay.pcap`, `host1-c1-eth0.pcap`).
pub fn file_name(vm: &str, container: Option<&str>, dev: &str) -> String {
    match container {
        Some(c) => format!("{vm}-{c}-{dev}.pcap"),
        None => format!("{vm}-{dev}.pcap"),
    }
}

/// The tcpdump command line: at most `packets` packets of at most `snaplen`
/// bytes to or from `port`, written unbuffered (`-U`) so the file is usable
/// whenever tcpdump is stopped.
pub fn tcpdump_argv(dev: &str, file: &str, packets: u32, snaplen: u32, port: u16) -> Vec<String> {
    let args = ["tcpdump", "-i", dev, "-n", "-U", "-w", file, "-c", &packets.to_string(), "-s", &snaplen.to_string()];
    let mut v: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    v.extend(["port".to_string(), port.to_string()]);
    v
}

/// Summarises a pcap file (Ethernet link type) against the workload's port.
/// A packet cut short by stopping tcpdump mid-write is not counted.
pub fn summarize(pcap: &[u8], port: u16) -> Result<CaptureSummary, String> {
    let (_, capture) = pcap_parser::parse_pcap(pcap).map_err(|e| format!("not a pcap file: {e:?}"))?;
    let mut s = CaptureSummary::default();
    for block in &capture.blocks {
        s.packets += 1;
        // Lax: packets are cut at the snap length, so payloads are short.
        let Ok(sliced) = LaxSlicedPacket::from_ethernet(block.data) else { continue };
        match &sliced.net {
            Some(LaxNetSlice::Ipv4(_)) => s.ipv4 += 1,
            Some(LaxNetSlice::Ipv6(_)) => s.ipv6 += 1,
            _ => {}
        }
        let ports = match &sliced.transport {
            Some(TransportSlice::Tcp(t)) => {
                s.tcp += 1;
                Some((t.source_port(), t.destination_port()))
            }
            Some(TransportSlice::Udp(u)) => {
                s.udp += 1;
                Some((u.source_port(), u.destination_port()))
            }
            _ => None,
        };
        if ports.is_some_and(|(a, b)| a == port || b == port) {
            s.workload += 1;
        }
    }
    Ok(s)
}
