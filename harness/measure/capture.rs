//! Packet captures: tcpdump in the guests during the workload, the pcap
//! brought back to the host and summarised in Rust (pcap-parser + etherparse):
//! protocol counts, the address pairs of the workload's TCP segments, every
//! segment's checksum verdict, and the first segments layer by layer.

use std::collections::BTreeSet;
use std::net::IpAddr;

use etherparse::{LaxNetSlice, LaxSlicedPacket, TransportSlice};
use serde::Serialize;

use super::checksum::{self, ChecksumCounts, ChecksumStatus, FieldFor, Segment};
use super::cost::PacketSizes;

/// Workload segments described layer by layer in a summary.
pub const FIRST_SEGMENTS: usize = 4;

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
    /// Checksum verdicts of the workload's TCP segments.
    pub checksums: ChecksumCounts,
    /// Distinct address pairs of the workload's TCP segments.
    pub flows: Vec<Flow>,
    /// The first workload segments, layer by layer.
    pub first: Vec<SegmentSummary>,
    /// VXLAN packets (captures of an overlay's underlay only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vxlan: Option<VxlanSummary>,
    /// The workload's packets' sizes as the interface carried them.
    pub sizes: PacketSizes,
    /// Every workload TCP segment, in capture order, to be found again in
    /// another capture (not in the report: the pcap holds them).
    #[serde(skip)]
    pub segments: Vec<SegmentRecord>,
}

/// A workload TCP segment as another capture of the same traffic knows it:
/// its ports and place in the byte stream (addresses may differ: a
/// translation changes them), and what its checksum field holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentRecord {
    /// Source address.
    pub src: IpAddr,
    /// Destination address, as captured.
    pub dst: IpAddr,
    /// Source port.
    pub sport: u16,
    /// Destination port.
    pub dport: u16,
    /// Sequence number.
    pub seq: u32,
    /// Acknowledgment number.
    pub ack: u32,
    /// Payload bytes as sent (from the IP and TCP headers, also when the
    /// capture cut the segment short).
    pub payload: u32,
    /// Its checksum verdict for the captured addresses.
    pub checksum: ChecksumStatus,
    /// Its checksum field.
    pub field: u16,
    /// What the field is for the captured destination.
    pub for_captured: Option<FieldFor>,
    /// What the field is for the destination before a translation (ILA),
    /// when the capture's context knows one.
    pub for_original: Option<FieldFor>,
}

impl SegmentRecord {
    /// Whether `other` (from another capture) is this segment or a part of
    /// it (a GSO segment split on its way): same source, ports and
    /// acknowledgment, its bytes of the stream within this one's (a segment
    /// without payload is only itself).
    pub fn holds(&self, other: &SegmentRecord) -> bool {
        let offset = other.seq.wrapping_sub(self.seq);
        let within = match (self.payload, other.payload) {
            (0, 0) => offset == 0,
            (0, _) | (_, 0) => false,
            // Its bytes end within mine (an `other` that starts before
            // mine wraps to a huge offset and saturates).
            (mine, theirs) => offset.saturating_add(theirs) <= mine,
        };
        (self.src, self.sport, self.dport, self.ack) == (other.src, other.sport, other.dport, other.ack) && within
    }
}

/// A VNI and an inner source address it carried.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct VniSender {
    pub vni: u32,
    pub src: IpAddr,
}

/// The VXLAN encapsulation seen in a capture.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct VxlanSummary {
    /// VXLAN packets.
    pub packets: u64,
    /// VNIs seen, in order of appearance.
    pub vnis: Vec<u32>,
    /// Outer (VTEP to VTEP) address pairs.
    pub tunnels: Vec<Flow>,
    /// Each VNI with each inner source address it carried, sorted: which
    /// sender's traffic went under which VNI.
    pub senders: Vec<VniSender>,
    /// Outer packets that were IP fragments.
    pub fragments: u64,
}

/// The outer layer of an encapsulated segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Tunnel {
    /// VXLAN network identifier.
    pub vni: u32,
    /// Source VTEP.
    pub src: IpAddr,
    /// Destination VTEP.
    pub dst: IpAddr,
}

/// A source and destination address pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Flow {
    /// Source.
    pub src: IpAddr,
    /// Destination.
    pub dst: IpAddr,
}

/// Whether `seen` holds exactly the `expected` pairs, each at least once.
pub fn flows_are<'a>(seen: impl IntoIterator<Item = &'a Flow>, expected: &[Flow]) -> bool {
    let seen: BTreeSet<&Flow> = seen.into_iter().collect();
    !seen.is_empty() && seen.iter().all(|f| expected.contains(f)) && expected.iter().all(|f| seen.contains(f))
}

impl std::fmt::Display for Flow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} > {}", self.src, self.dst)
    }
}

/// One TCP segment of a capture, layer by layer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SegmentSummary {
    /// Frame number in the file (from 1, as tshark counts).
    pub frame: u64,
    /// The VXLAN encapsulation around it, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vxlan: Option<Tunnel>,
    /// Source address.
    pub src: IpAddr,
    /// Destination address.
    pub dst: IpAddr,
    /// The IP header's next header / protocol.
    pub next_header: String,
    /// TCP flags (`S`, `SA`, `A`, `PA`, ...).
    pub flags: String,
    /// Checksum verdict.
    pub checksum: ChecksumStatus,
}

/// What judging a capture's checksums needs to know about where it was taken.
pub struct CaptureContext<'a> {
    /// The workload's port.
    pub port: u16,
    /// The interface's MTU.
    pub mtu: usize,
    /// For a destination seen on the wire, the destination the sender's stack
    /// computed the checksum for, if a translation changed it (ILA).
    pub original_dst: &'a (dyn Fn(IpAddr) -> Option<IpAddr> + Sync),
    /// The UDP port of VXLAN packets to look into, if any.
    pub vxlan_port: Option<u16>,
}

impl CaptureContext<'_> {
    /// A context without address translation.
    pub fn plain(port: u16, mtu: usize) -> CaptureContext<'static> {
        CaptureContext { port, mtu, original_dst: &|_| None, vxlan_port: None }
    }
}

fn tcp_flags(t: &etherparse::TcpSlice) -> String {
    [(t.syn(), 'S'), (t.fin(), 'F'), (t.rst(), 'R'), (t.psh(), 'P'), (t.ack(), 'A')]
        .iter()
        .filter(|(on, _)| *on)
        .map(|(_, c)| *c)
        .collect()
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
/// bytes that match `filter` (a pcap filter such as `port 5201`), written
/// unbuffered (`-U`) so the file is usable whenever tcpdump is stopped (its
/// 24-byte header is there as soon as it listens). It stays root (`-Z root`):
/// dropping to the `tcpdump` user costs ~80 ms of start under TCG, on a VM
/// that exists for the lab.
pub fn tcpdump_argv(dev: &str, file: &str, packets: u32, snaplen: u32, filter: &str) -> Vec<String> {
    let (packets, snaplen) = (packets.to_string(), snaplen.to_string());
    let args = ["tcpdump", "-i", dev, "-n", "-U", "-Z", "root", "-w", file, "-c", &packets, "-s", &snaplen];
    let mut v: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    v.extend(filter.split_whitespace().map(str::to_string));
    v
}

/// The IP layer of a captured packet.
struct IpView<'a> {
    src: IpAddr,
    dst: IpAddr,
    /// Length of the IP packet as sent (header included).
    ip_len: usize,
    /// Length of its IP header (IPv6 extension headers included).
    header_len: usize,
    next: etherparse::IpNumber,
    payload: &'a etherparse::LaxIpPayloadSlice<'a>,
}

fn ip_view<'a>(sliced: &'a LaxSlicedPacket<'a>) -> Option<IpView<'a>> {
    match &sliced.net {
        Some(LaxNetSlice::Ipv4(v4)) => {
            let h = v4.header();
            let (src, dst) = (IpAddr::V4(h.source_addr()), IpAddr::V4(h.destination_addr()));
            let (ip_len, header_len) = (h.total_len() as usize, h.ihl() as usize * 4);
            Some(IpView { src, dst, ip_len, header_len, next: h.protocol(), payload: v4.payload() })
        }
        Some(LaxNetSlice::Ipv6(v6)) => {
            let h = v6.header();
            let (src, dst) = (IpAddr::V6(h.source_addr()), IpAddr::V6(h.destination_addr()));
            let ip_len = 40 + h.payload_length() as usize;
            let header_len = 40 + v6.extensions().slice().len();
            Some(IpView { src, dst, ip_len, header_len, next: h.next_header(), payload: v6.payload() })
        }
        _ => None,
    }
}

/// The VNI and inner frame of a VXLAN packet to `port` (RFC 7348: 8-byte
/// header, I flag set, 24-bit VNI).
fn vxlan_inner<'a>(outer: &LaxSlicedPacket<'a>, port: u16) -> Option<(u32, LaxSlicedPacket<'a>)> {
    let Some(TransportSlice::Udp(u)) = &outer.transport else { return None };
    let p = u.payload();
    if u.destination_port() != port || p.len() < 8 || p[0] & 0x08 == 0 {
        return None;
    }
    let vni = u32::from_be_bytes([0, p[4], p[5], p[6]]);
    LaxSlicedPacket::from_ethernet(&p[8..]).ok().map(|inner| (vni, inner))
}

/// A segment's checksum verdict, whether it was adjusted in reverse, and
/// whether a valid one carries negative zero.
fn verdict(ip: &IpView, ctx: &CaptureContext) -> (ChecksumStatus, bool, bool) {
    let segment = Segment {
        src: ip.src,
        dst: ip.dst,
        bytes: ip.payload.payload,
        complete: !ip.payload.incomplete,
        ip_len: ip.ip_len,
    };
    let original = (ctx.original_dst)(ip.dst);
    let status = checksum::classify(&segment, original, ctx.mtu);
    let judged = matches!(status, ChecksumStatus::Invalid | ChecksumStatus::Oversized);
    let reversed = judged && original.is_some_and(|o| checksum::reverse_adjusted(&segment, o));
    (status, reversed, status == ChecksumStatus::Valid && checksum::negative_zero(&segment))
}

/// The record of a workload segment (see [`SegmentRecord`]).
fn record(ip: &IpView, tcp: &etherparse::TcpSlice, status: ChecksumStatus, ctx: &CaptureContext) -> SegmentRecord {
    let segment = Segment {
        src: ip.src,
        dst: ip.dst,
        bytes: ip.payload.payload,
        complete: !ip.payload.incomplete,
        ip_len: ip.ip_len,
    };
    SegmentRecord {
        src: ip.src,
        dst: ip.dst,
        sport: tcp.source_port(),
        dport: tcp.destination_port(),
        seq: tcp.sequence_number(),
        ack: tcp.acknowledgment_number(),
        payload: ip.ip_len.saturating_sub(ip.header_len + tcp.header_len()) as u32,
        checksum: status,
        field: tcp.checksum(),
        for_captured: checksum::field_for(&segment, ip.dst),
        for_original: (ctx.original_dst)(ip.dst).and_then(|o| checksum::field_for(&segment, o)),
    }
}

/// Summarises a pcap file (Ethernet link type).
/// A packet cut short by stopping tcpdump mid-write is not counted.
pub fn summarize(pcap: &[u8], ctx: &CaptureContext) -> Result<CaptureSummary, String> {
    let (_, capture) = pcap_parser::parse_pcap(pcap).map_err(|e| format!("not a pcap file: {e:?}"))?;
    let mut s = CaptureSummary {
        sizes: PacketSizes { mtu: ctx.mtu as u32, ..PacketSizes::default() },
        ..CaptureSummary::default()
    };
    let mut flows = BTreeSet::new();
    for (i, block) in capture.blocks.iter().enumerate() {
        s.packets += 1;
        // Lax: packets may be cut at the snap length.
        let Ok(outer) = LaxSlicedPacket::from_ethernet(block.data) else { continue };
        let Some(outer_ip) = ip_view(&outer) else { continue };
        match outer_ip.dst {
            IpAddr::V4(_) => s.ipv4 += 1,
            IpAddr::V6(_) => s.ipv6 += 1,
        }
        // A VXLAN packet is judged by the frame it carries.
        let encap = ctx.vxlan_port.and_then(|port| vxlan_inner(&outer, port));
        if ctx.vxlan_port.is_some() && outer_ip.payload.fragmented {
            s.vxlan.get_or_insert_with(VxlanSummary::default).fragments += 1;
        }
        if let Some((vni, _)) = &encap {
            let v = s.vxlan.get_or_insert_with(VxlanSummary::default);
            v.packets += 1;
            if !v.vnis.contains(vni) {
                v.vnis.push(*vni);
            }
            let tunnel = Flow { src: outer_ip.src, dst: outer_ip.dst };
            if !v.tunnels.contains(&tunnel) {
                v.tunnels.push(tunnel);
                v.tunnels.sort();
            }
        }
        let sliced = match &encap {
            Some((_, inner)) => inner,
            None => &outer,
        };
        let Some(ip) = ip_view(sliced) else { continue };
        if let (Some((vni, _)), Some(v)) = (&encap, s.vxlan.as_mut()) {
            let sender = VniSender { vni: *vni, src: ip.src };
            if let Err(at) = v.senders.binary_search(&sender) {
                v.senders.insert(at, sender);
            }
        }
        let (ports, tcp) = match &sliced.transport {
            Some(TransportSlice::Tcp(t)) => {
                s.tcp += 1;
                (Some((t.source_port(), t.destination_port())), Some(t))
            }
            Some(TransportSlice::Udp(u)) => {
                s.udp += 1;
                (Some((u.source_port(), u.destination_port())), None)
            }
            _ => (None, None),
        };
        if !ports.is_some_and(|(a, b)| a == ctx.port || b == ctx.port) {
            continue;
        }
        s.workload += 1;
        s.sizes.add(outer_ip.ip_len);
        let Some(tcp) = tcp else { continue };
        let (status, reversed, negative_zero) = verdict(&ip, ctx);
        s.segments.push(record(&ip, tcp, status, ctx));
        s.checksums.add(status);
        s.checksums.reverse_adjusted += u64::from(reversed);
        s.checksums.negative_zero += u64::from(negative_zero);
        flows.insert(Flow { src: ip.src, dst: ip.dst });
        if s.first.len() < FIRST_SEGMENTS {
            s.first.push(SegmentSummary {
                frame: i as u64 + 1,
                vxlan: encap.as_ref().map(|(vni, _)| Tunnel { vni: *vni, src: outer_ip.src, dst: outer_ip.dst }),
                src: ip.src,
                dst: ip.dst,
                next_header: ip.next.keyword_str().unwrap_or("?").to_lowercase(),
                flags: tcp_flags(tcp),
                checksum: status,
            });
        }
    }
    s.flows = flows.into_iter().collect();
    Ok(s)
}

/// Every TCP segment's checksum verdict, by frame number (from 1), and
/// whether a valid one carries negative zero, for comparison with another
/// decoder.
pub fn checksum_verdicts(pcap: &[u8], ctx: &CaptureContext) -> Result<Vec<(u64, ChecksumStatus, bool)>, String> {
    let (_, capture) = pcap_parser::parse_pcap(pcap).map_err(|e| format!("not a pcap file: {e:?}"))?;
    let mut out = Vec::new();
    each_tcp_segment(&capture, ctx, |i, ip, _| {
        let (status, _, negative_zero) = verdict(ip, ctx);
        out.push((i as u64 + 1, status, negative_zero));
    });
    Ok(out)
}

/// Calls `f` with each TCP segment of a capture (inside VXLAN where `ctx`
/// says so): its block's index, its IP layer and its TCP header.
fn each_tcp_segment(
    capture: &pcap_parser::PcapCapture,
    ctx: &CaptureContext,
    mut f: impl FnMut(usize, &IpView, &etherparse::TcpSlice),
) {
    for (i, block) in capture.blocks.iter().enumerate() {
        let Ok(outer) = LaxSlicedPacket::from_ethernet(block.data) else { continue };
        let inner = ctx.vxlan_port.and_then(|port| vxlan_inner(&outer, port)).map(|(_, inner)| inner);
        let sliced = inner.as_ref().unwrap_or(&outer);
        let Some(TransportSlice::Tcp(tcp)) = &sliced.transport else { continue };
        let Some(ip) = ip_view(sliced) else { continue };
        f(i, &ip, tcp);
    }
}

/// A TCP segment shown as evidence: its header fields, its checksum field
/// and the checksums that would be valid for the captured addresses and,
/// when a translation changed the destination, for the original one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EvidenceRow {
    /// Frame number in the capture (from 1).
    pub frame: u64,
    pub src: IpAddr,
    pub dst: IpAddr,
    pub flags: String,
    pub seq: u32,
    /// Payload bytes as sent.
    pub payload: u32,
    /// The checksum field as captured.
    pub field: u16,
    /// The full checksum valid for the captured addresses (`None`: the
    /// capture cut the segment).
    pub for_captured: Option<u16>,
    /// The original destination and the full checksum valid for it.
    pub for_original: Option<(IpAddr, u16)>,
    pub status: ChecksumStatus,
}

/// The packets of a capture that show a checksum finding: its first `limit`
/// TCP segments whose checksum is invalid for the captured addresses (else,
/// when none is, its first `limit` segments: what was normal), each as a
/// row, and those packets as a pcap of their own (the capture's header and
/// records, unchanged).
pub fn evidence(pcap: &[u8], ctx: &CaptureContext, limit: usize) -> Result<(Vec<EvidenceRow>, Vec<u8>), String> {
    use pcap_parser::ToVec;
    let (_, capture) = pcap_parser::parse_pcap(pcap).map_err(|e| format!("not a pcap file: {e:?}"))?;
    let mut rows = Vec::new();
    each_tcp_segment(&capture, ctx, |i, ip, tcp| {
        let (status, _, _) = verdict(ip, ctx);
        let bytes = ip.payload.payload;
        let whole = !ip.payload.incomplete && bytes.len() >= 20;
        rows.push((
            i,
            EvidenceRow {
                frame: i as u64 + 1,
                src: ip.src,
                dst: ip.dst,
                flags: tcp_flags(tcp),
                seq: tcp.sequence_number(),
                payload: ip.ip_len.saturating_sub(ip.header_len + tcp.header_len()) as u32,
                field: tcp.checksum(),
                for_captured: whole.then(|| checksum::tcp_checksum(ip.src, ip.dst, bytes)),
                for_original: (ctx.original_dst)(ip.dst)
                    .filter(|_| whole)
                    .map(|o| (o, checksum::tcp_checksum(ip.src, o, bytes))),
                status,
            },
        ));
    });
    let invalid: Vec<(usize, EvidenceRow)> =
        rows.iter().filter(|(_, r)| r.status == ChecksumStatus::Invalid).take(limit).cloned().collect();
    let shown = if invalid.is_empty() { rows.into_iter().take(limit).collect() } else { invalid };
    let mut cut = capture.header.to_vec_raw().map_err(|e| format!("pcap header: {e:?}"))?;
    for (i, _) in &shown {
        cut.extend(capture.blocks[*i].to_vec_raw().map_err(|e| format!("pcap record: {e:?}"))?);
    }
    Ok((shown.into_iter().map(|(_, r)| r).collect(), cut))
}
