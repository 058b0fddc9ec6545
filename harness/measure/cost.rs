//! What a case's packets cost: how many packets its bytes took on the
//! underlay, how large they were, and how much guest CPU each took; and the
//! split of one case's throughput ratio to another's into those factors.
//!
//! Throughput is bytes over time, and a case that keeps its CPUs busy moves
//! `busy / (packets per byte x CPU per packet)` bytes a second. So the ratio
//! of two cases' throughputs is exactly
//! `busy ratio / (packets-per-byte ratio x CPU-per-packet ratio)`: a tunnel
//! that cuts a flow into MTU-sized packets before the NIC (no UDP-tunnel
//! segmentation offload) pays its per-packet cost many more times per byte
//! than plain routing, which hands the NIC 64 KB segments. Under emulation a
//! packet costs far more than on hardware, so that factor dominates there.

use serde::{Deserialize, Serialize};

use super::counters::Counters;

/// `/proc/stat` counts in `USER_HZ` ticks, 100 a second on every Linux
/// architecture vlab boots.
pub const USER_HZ: f64 = 100.0;

/// A guest's CPU time, all CPUs summed: the first line of `/proc/stat`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CpuTimes {
    /// Ticks spent other than idle or waiting for I/O.
    pub busy: u64,
    /// All ticks.
    pub total: u64,
}

impl CpuTimes {
    /// The shell command printing what [`CpuTimes::parse`] reads, with
    /// builtins only (no process to start under TCG).
    pub fn command() -> String {
        "read -r l </proc/stat; echo \"$l\"".to_string()
    }

    /// Parses the `cpu` line of `/proc/stat`: user nice system idle iowait
    /// irq softirq steal (guest and guest_nice are within user and nice).
    pub fn parse(text: &str) -> Option<CpuTimes> {
        let mut fields = text.split_whitespace();
        if fields.next()? != "cpu" {
            return None;
        }
        let v: Vec<u64> = fields.take(8).map(|f| f.parse().ok()).collect::<Option<_>>()?;
        if v.len() < 4 {
            return None;
        }
        let idle = v[3] + v.get(4).copied().unwrap_or(0);
        let total: u64 = v.iter().sum();
        Some(CpuTimes { busy: total - idle, total })
    }

    /// What changed from `before` to `self`; `None` when a counter went back.
    pub fn since(&self, before: &CpuTimes) -> Option<CpuTimes> {
        Some(CpuTimes { busy: self.busy.checked_sub(before.busy)?, total: self.total.checked_sub(before.total)? })
    }
}

/// One VM's CPU times around a case's workload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CpuWindow {
    pub vm: String,
    pub before: CpuTimes,
    pub after: CpuTimes,
}

/// The shape of a case's workload packets on one captured interface: IP
/// lengths, the outer one for tunnelled packets. A packet longer than the
/// interface's MTU is a GSO/TSO segment not yet cut (sending) or a GRO
/// merge (receiving): the stack and the NIC moved it as one.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PacketSizes {
    /// Workload packets seen.
    pub packets: u64,
    /// The largest IP length among them, bytes.
    pub largest: u32,
    /// Those longer than the interface's MTU.
    pub over_mtu: u64,
    /// The interface's MTU.
    pub mtu: u32,
}

impl PacketSizes {
    /// Counts one packet of IP length `len`.
    pub fn add(&mut self, len: usize) {
        self.packets += 1;
        self.largest = self.largest.max(len.try_into().unwrap_or(u32::MAX));
        self.over_mtu += u64::from(len > self.mtu as usize);
    }
}

/// What a case's data packets cost, from the sender's underlay NIC counters
/// (a GSO segment handed to the NIC counts once), the bytes iperf3 moved,
/// and the guests' CPU time over the workload.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PacketCost {
    /// Packets the sending VM's underlay NIC transmitted.
    pub packets: u64,
    /// Bytes it transmitted, headers included.
    pub bytes: u64,
    /// Payload bytes the receiver got.
    pub payload_bytes: u64,
    /// The workload's seconds (iperf3's).
    pub seconds: f64,
    /// Busy CPU seconds of the workload's VMs (its ends') over it.
    pub cpu_s: f64,
    /// Those over all CPU seconds of the window (1.0: every vCPU busy).
    pub busy_share: f64,
    /// The workload's packets as the sender's underlay capture shows them,
    /// where the case captured there.
    pub sizes: Option<PacketSizes>,
}

impl PacketCost {
    /// The cost of a workload that moved `payload_bytes` in `seconds`, the
    /// sender's underlay NIC counting `underlay` over it, and each VM's CPU
    /// `windows`; `None` without packets, payload or readable CPU times.
    pub fn of(underlay: &Counters, payload_bytes: u64, seconds: f64, windows: &[CpuWindow]) -> Option<PacketCost> {
        if underlay.tx_packets == 0 || payload_bytes == 0 || seconds <= 0.0 || windows.is_empty() {
            return None;
        }
        let deltas: Vec<CpuTimes> = windows.iter().map(|w| w.after.since(&w.before)).collect::<Option<_>>()?;
        let (busy, total) = deltas.iter().fold((0, 0), |(b, t), d| (b + d.busy, t + d.total));
        if busy == 0 || total == 0 {
            return None;
        }
        Some(PacketCost {
            packets: underlay.tx_packets,
            bytes: underlay.tx_bytes,
            payload_bytes,
            seconds,
            cpu_s: busy as f64 / USER_HZ,
            busy_share: busy as f64 / total as f64,
            sizes: None,
        })
    }

    /// Mean underlay packet, bytes.
    pub fn mean_packet_bytes(&self) -> f64 {
        self.bytes as f64 / self.packets as f64
    }

    /// Underlay packets a second.
    pub fn packets_per_s(&self) -> f64 {
        self.packets as f64 / self.seconds
    }

    /// Underlay packets per payload byte.
    pub fn packets_per_byte(&self) -> f64 {
        self.packets as f64 / self.payload_bytes as f64
    }

    /// Busy CPU seconds per underlay packet.
    pub fn cpu_per_packet(&self) -> f64 {
        self.cpu_s / self.packets as f64
    }

    /// Busy CPU seconds a second of workload.
    pub fn cpu_per_s(&self) -> f64 {
        self.cpu_s / self.seconds
    }

    /// Busy CPU seconds per payload byte.
    pub fn cpu_per_byte(&self) -> f64 {
        self.cpu_s / self.payload_bytes as f64
    }

    /// `1448 B/pkt, 41.2k pkt/s, 24.1 µs CPU/pkt`.
    pub fn text(&self) -> String {
        let pps = self.packets_per_s();
        let rate = if pps >= 1000.0 { format!("{:.1}k", pps / 1000.0) } else { format!("{pps:.0}") };
        format!("{:.0} B/pkt, {rate} pkt/s, {:.1} µs CPU/pkt", self.mean_packet_bytes(), self.cpu_per_packet() * 1e6)
    }
}

/// A throughput ratio (a case over its reference) split into its factors:
/// `ratio = cpu_per_s / (packets_per_byte x cpu_per_packet)`, each factor
/// the case's figure over the reference's. The identity holds exactly: each
/// case's throughput is its payload bytes over its seconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RatioSplit {
    /// The throughput ratio the factors make.
    pub ratio: f64,
    /// Underlay packets per payload byte, case over reference.
    pub packets_per_byte: f64,
    /// Busy CPU per underlay packet, case over reference.
    pub cpu_per_packet: f64,
    /// Busy CPU seconds a second, case over reference (1.0 when both keep
    /// the CPUs as busy).
    pub cpu_per_s: f64,
    /// The largest workload packet on the case's underlay, where every one
    /// was MTU-sized while the reference's were not: the NIC did not
    /// segment the case's packets (no tunnel segmentation offload), the
    /// stack did before it.
    pub segmented_before_nic: Option<u32>,
}

impl RatioSplit {
    /// `case` against `reference`.
    pub fn of(case: &PacketCost, reference: &PacketCost) -> RatioSplit {
        let packets_per_byte = case.packets_per_byte() / reference.packets_per_byte();
        let cpu_per_packet = case.cpu_per_packet() / reference.cpu_per_packet();
        let cpu_per_s = case.cpu_per_s() / reference.cpu_per_s();
        let segmented_before_nic = match (case.sizes, reference.sizes) {
            (Some(c), Some(r)) if c.packets > 0 && c.over_mtu == 0 && r.over_mtu > 0 => Some(c.largest),
            _ => None,
        };
        RatioSplit {
            ratio: cpu_per_s / (packets_per_byte * cpu_per_packet),
            packets_per_byte,
            cpu_per_packet,
            cpu_per_s,
            segmented_before_nic,
        }
    }

    /// The split over several rounds: each factor's geometric mean (the
    /// identity holds for the means too); `None` without rounds.
    pub fn mean(splits: &[RatioSplit]) -> Option<RatioSplit> {
        let gm = |f: fn(&RatioSplit) -> f64| {
            crate::stats::summarize(&splits.iter().map(f).collect::<Vec<_>>()).map(|s| s.mean)
        };
        let (packets_per_byte, cpu_per_packet, cpu_per_s) =
            (gm(|s| s.packets_per_byte)?, gm(|s| s.cpu_per_packet)?, gm(|s| s.cpu_per_s)?);
        Some(RatioSplit {
            ratio: cpu_per_s / (packets_per_byte * cpu_per_packet),
            packets_per_byte,
            cpu_per_packet,
            cpu_per_s,
            segmented_before_nic: splits
                .iter()
                .all(|s| s.segmented_before_nic.is_some())
                .then(|| splits[0].segmented_before_nic)
                .flatten(),
        })
    }

    /// `0.19x = 5.10x packets per byte, 1.03x CPU per packet, 1.00x CPU busy`,
    /// with a note where the case's packets were cut before the NIC.
    pub fn text(&self) -> String {
        let mut s = format!(
            "{:.2}x = {:.2}x packets per byte, {:.2}x CPU per packet, {:.2}x CPU busy",
            self.ratio, self.packets_per_byte, self.cpu_per_packet, self.cpu_per_s
        );
        if let Some(largest) = self.segmented_before_nic {
            s.push_str(&format!(
                " (no tunnel segmentation offload: every underlay packet MTU-sized, at most {largest} B, the baseline's were not)"
            ));
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window(busy: u64, total: u64) -> CpuWindow {
        CpuWindow {
            vm: "host1".into(),
            before: CpuTimes { busy: 100, total: 1000 },
            after: CpuTimes { busy: 100 + busy, total: 1000 + total },
        }
    }

    fn sent(packets: u64, bytes: u64) -> Counters {
        Counters { tx_packets: packets, tx_bytes: bytes, ..Counters::default() }
    }

    #[test]
    fn proc_stat_reads_busy_and_total_ticks() {
        let line = "cpu  4705 150 1120 16250 520 3 38 7 0 0";
        // idle 16250 and iowait 520 are not busy.
        assert_eq!(CpuTimes::parse(line), Some(CpuTimes { busy: 4705 + 150 + 1120 + 3 + 38 + 7, total: 22793 }));
        assert_eq!(CpuTimes::parse("cpu0 1 2 3 4"), None, "a per-CPU line is not the sum");
        assert_eq!(CpuTimes::parse("cpu 1 2"), None);
        assert_eq!(CpuTimes::parse("cpu 1 2 x 4"), None);
    }

    #[test]
    fn cpu_times_that_went_back_give_no_window() {
        let a = CpuTimes { busy: 10, total: 100 };
        assert_eq!(a.since(&CpuTimes { busy: 11, total: 50 }), None);
        assert_eq!(a.since(&CpuTimes { busy: 5, total: 101 }), None);
        assert_eq!(a.since(&CpuTimes { busy: 4, total: 40 }), Some(CpuTimes { busy: 6, total: 60 }));
    }

    #[test]
    fn a_cost_is_per_sent_packet_and_per_payload_byte() {
        // 2 s, 100 000 packets of 1500 B carrying 140 MB, 3 busy CPU seconds
        // of 4 (two VMs).
        let cost = PacketCost::of(&sent(100_000, 150_000_000), 140_000_000, 2.0, &[window(200, 200), window(100, 200)])
            .unwrap();
        assert_eq!(cost.mean_packet_bytes(), 1500.0);
        assert_eq!(cost.packets_per_s(), 50_000.0);
        assert_eq!(cost.cpu_s, 3.0);
        assert_eq!(cost.busy_share, 0.75);
        assert!((cost.cpu_per_packet() - 30e-6).abs() < 1e-12);
        assert_eq!(cost.text(), "1500 B/pkt, 50.0k pkt/s, 30.0 µs CPU/pkt");
    }

    #[test]
    fn no_cost_without_packets_payload_or_cpu_times() {
        let w = [window(200, 200)];
        assert!(PacketCost::of(&sent(0, 0), 1, 1.0, &w).is_none());
        assert!(PacketCost::of(&sent(1, 1), 0, 1.0, &w).is_none());
        assert!(PacketCost::of(&sent(1, 1), 1, 0.0, &w).is_none());
        assert!(PacketCost::of(&sent(1, 1), 1, 1.0, &[]).is_none());
        assert!(PacketCost::of(&sent(1, 1), 1, 1.0, &[window(0, 100)]).is_none());
        let back = CpuWindow { after: CpuTimes { busy: 0, total: 0 }, ..window(1, 1) };
        assert!(PacketCost::of(&sent(1, 1), 1, 1.0, &[back]).is_none());
    }

    /// Fixed counters: plain routing moves 1 GB in 10 s as 20 000 segments
    /// of 50 KB; the tunnel 190 MB in 10 s as 135 714 packets of 1400 B
    /// (5.1x the packets per byte), each costing 3 % more CPU.
    #[test]
    fn a_ratio_splits_into_packets_per_byte_and_cost_per_packet() {
        let base = PacketCost::of(&sent(20_000, 1_000_800_000), 1_000_000_000, 10.0, &[window(2000, 2000)]).unwrap();
        let tunnel_packets = (20_000.0 * 190.0 / 1000.0 * 5.1_f64).round() as u64;
        let tunnel =
            PacketCost::of(&sent(tunnel_packets, tunnel_packets * 1400), 190_000_000, 10.0, &[window(2000, 2000)]);
        let tunnel = PacketCost { cpu_s: base.cpu_per_packet() * 1.03 * tunnel_packets as f64, ..tunnel.unwrap() };
        let split = RatioSplit::of(&tunnel, &base);
        assert!((split.packets_per_byte - 5.1).abs() < 1e-3, "{split:?}");
        assert!((split.cpu_per_packet - 1.03).abs() < 1e-9, "{split:?}");
        // The factors make the measured ratio, 0.19x.
        assert!((split.ratio - 0.19).abs() < 1e-3, "{split:?}");
        assert!((split.ratio - split.cpu_per_s / (split.packets_per_byte * split.cpu_per_packet)).abs() < 1e-12);
        assert_eq!(split.text(), "0.19x = 5.10x packets per byte, 1.03x CPU per packet, 1.00x CPU busy");
    }

    #[test]
    fn the_split_tells_where_the_case_cut_its_packets_before_the_nic() {
        let cost = PacketCost::of(&sent(10, 10_000), 9_000, 1.0, &[window(10, 20)]).unwrap();
        let sizes = |largest, over_mtu| Some(PacketSizes { packets: 10, largest, over_mtu, mtu: 1500 });
        let split = |c, r| RatioSplit::of(&PacketCost { sizes: c, ..cost }, &PacketCost { sizes: r, ..cost });
        let cut = |c, r| split(c, r).segmented_before_nic;
        assert_eq!(cut(sizes(1500, 0), sizes(65_226, 9)), Some(1500));
        assert_eq!(cut(sizes(1500, 0), sizes(1500, 0)), None, "neither was segmented by the NIC");
        assert_eq!(cut(sizes(9000, 3), sizes(65_226, 9)), None, "the case's NIC segmented too");
        assert_eq!(cut(None, sizes(65_226, 9)), None, "no capture of the case's underlay");
        assert_eq!(cut(sizes(1500, 0), None), None, "no capture of the baseline's underlay");
        let none_seen = Some(PacketSizes { packets: 0, largest: 0, over_mtu: 0, mtu: 1500 });
        assert_eq!(cut(none_seen, sizes(65_226, 9)), None, "no packet seen is no evidence");
        let text = split(sizes(1500, 0), sizes(65_226, 9)).text();
        assert!(text.ends_with("(no tunnel segmentation offload: every underlay packet MTU-sized, at most 1500 B, the baseline's were not)"), "{text}");
    }

    #[test]
    fn packet_sizes_count_what_exceeds_the_mtu() {
        let mut s = PacketSizes { mtu: 1500, ..PacketSizes::default() };
        for len in [52, 1500, 1500, 2948, 64_000] {
            s.add(len);
        }
        assert_eq!(s, PacketSizes { packets: 5, largest: 64_000, over_mtu: 2, mtu: 1500 });
    }

    #[test]
    fn the_split_over_rounds_is_each_factors_geometric_mean() {
        let split = |packets_per_byte: f64, cpu_per_packet: f64, cpu_per_s: f64, cut| RatioSplit {
            ratio: cpu_per_s / (packets_per_byte * cpu_per_packet),
            packets_per_byte,
            cpu_per_packet,
            cpu_per_s,
            segmented_before_nic: cut,
        };
        let m = RatioSplit::mean(&[split(4.0, 1.0, 1.0, Some(1500)), split(9.0, 4.0, 0.25, Some(1500))]).unwrap();
        assert!((m.packets_per_byte - 6.0).abs() < 1e-9 && (m.cpu_per_packet - 2.0).abs() < 1e-9);
        assert!((m.cpu_per_s - 0.5).abs() < 1e-9 && (m.ratio - 0.5 / 12.0).abs() < 1e-9, "{m:?}");
        assert_eq!(m.segmented_before_nic, Some(1500));
        let m = RatioSplit::mean(&[split(4.0, 1.0, 1.0, Some(1500)), split(4.0, 1.0, 1.0, None)]).unwrap();
        assert_eq!(m.segmented_before_nic, None, "only where every round saw it");
        assert!(RatioSplit::mean(&[]).is_none());
    }
}
