//! Verdicts judged offline from recorded evidence, as `vlab rejudge` judges
//! them: each fixture under `tests/fixtures/records/` is one case of a real
//! run (`vlab run LAB --artifacts DIR`: the lab file and what it reads, the
//! case's `case.json` and its pcaps), replayed through the code that judges
//! a live case. The recording passes; each one-defect variant of it (a probe
//! that connected, a drop that was not counted, another VNI on the wire, no
//! tunnel at all) fails exactly the check that the defect concerns.

use std::path::{Path, PathBuf};

use vlab::overlay::{Probe, ProbeOutcome};
use vlab::report::CaseReport;
use vlab::run::record::{self, CaseRecord};

/// A recorded case: its lab (with the case's overlay and filter), the case,
/// its record and its pcaps.
struct Recorded {
    lab: vlab::lab::Lab,
    case: vlab::lab::Case,
    record: CaseRecord,
    pcaps: Vec<Vec<u8>>,
    /// Where a changed lab file lives while the case is judged.
    _dir: Option<tempfile::TempDir>,
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/records").join(name)
}

fn recorded(name: &str) -> Recorded {
    let dir = fixture(name);
    let lab = vlab::variants::load_lab(&dir.join("lab.toml")).unwrap();
    let (record, pcaps) = record::load(&dir.join("case")).unwrap();
    let case = lab.cases().into_iter().find(|c| c.name == record.case).expect("the recorded case is in the lab");
    let lab = lab.for_case(&case);
    Recorded { lab, case, record, pcaps, _dir: None }
}

impl Recorded {
    fn judge(&self) -> CaseReport {
        record::judge(&self.lab, &self.case, &self.record, &self.pcaps).unwrap()
    }

    /// The denied map's dumps after the case as they were before: the
    /// datapath dropped nothing.
    fn no_drop_counted(&mut self) {
        for (name, dump) in self.record.after.iter_mut() {
            if name.starts_with("vlab-denied-") {
                *dump = self.record.before[name].clone();
            }
        }
    }

    /// The case judged against its lab file as `edit` changes it (written
    /// beside a copy of the policy files the fixture has).
    fn with_lab(mut self, edit: impl Fn(String) -> String) -> Recorded {
        let dir = tempfile::tempdir().unwrap();
        let src = fixture("l4-policy");
        std::fs::create_dir(dir.path().join("cilium-style")).unwrap();
        for f in std::fs::read_dir(src.join("cilium-style")).unwrap().flatten() {
            std::fs::copy(f.path(), dir.path().join("cilium-style").join(f.file_name())).unwrap();
        }
        let text = edit(std::fs::read_to_string(src.join("lab.toml")).unwrap());
        std::fs::write(dir.path().join("lab.toml"), text).unwrap();
        let lab = vlab::variants::load_lab(&dir.path().join("lab.toml")).unwrap();
        self.lab = lab.for_case(&self.case);
        self._dir = Some(dir);
        self
    }

    /// The recording judged as the lab's case named as its own with `from`
    /// replaced by `to` (a sibling on the same pair, e.g. another filter).
    fn sibling(mut self, from: &str, to: &str) -> Recorded {
        self.record.case = self.record.case.replace(from, to);
        let name = &self.record.case;
        self.case = self.lab.cases().into_iter().find(|c| c.name == *name).unwrap_or_else(|| panic!("no case {name}"));
        self.lab = self.lab.for_case(&self.case);
        self
    }

    /// The counter of the entry whose key starts with `key` in the map dump
    /// `dump` after the case set to `packets`.
    fn set_packets(&mut self, dump: &str, key: &[u8], packets: u64) {
        let text = with_packets(&self.record.after[dump], key, packets);
        self.record.after.insert(dump.into(), text);
    }

    /// The cilium-style metric `name` of `vm` counting `more` packets during
    /// the case.
    fn set_metric(&mut self, vm: &str, name: &str, more: u64) {
        use vlab::overlay::cilium_style::maps::{parse_metrics, METRICS};
        let dump = format!("vlab-metrics-{vm}.json");
        let before = parse_metrics(&self.record.before[&dump]).unwrap()[name].packets;
        let slot = METRICS.iter().position(|m| *m == name).expect("a metric") as u32;
        self.set_packets(&dump, &slot.to_le_bytes(), before + more);
    }

    /// The pcap of the capture at `file`.
    fn pcap(&mut self, file: &str) -> &mut Vec<u8> {
        let i =
            self.record.captures.iter().position(|c| c.file() == file).unwrap_or_else(|| panic!("no capture {file}"));
        &mut self.pcaps[i]
    }
}

/// Asserts that each of `names` is among the checks of `report` that failed.
fn assert_among_failed(report: &CaseReport, names: &[&str]) {
    let failed = failed(report);
    for name in names {
        assert!(failed.contains(name), "`{name}` did not fail: {failed:?}");
    }
}

/// The names of the checks that failed.
fn failed(report: &CaseReport) -> Vec<&str> {
    report.checks.iter().filter(|c| !c.passed).map(|c| c.name.as_str()).collect()
}

fn check<'a>(report: &'a CaseReport, name: &str) -> &'a vlab::report::Check {
    let names: Vec<&str> = report.checks.iter().map(|c| c.name.as_str()).collect();
    report.checks.iter().find(|c| c.name == name).unwrap_or_else(|| panic!("no check `{name}` among {names:?}"))
}

/// Every packet of a (little- or big-endian, microsecond or nanosecond)
/// pcap file, rewritten in place by `edit`.
fn edit_packets(pcap: &mut [u8], mut edit: impl FnMut(&mut [u8])) -> usize {
    let magic = [pcap[0], pcap[1], pcap[2], pcap[3]];
    let little = match magic {
        [0xd4, 0xc3, 0xb2, 0xa1] | [0x4d, 0x3c, 0xb2, 0xa1] => true,
        [0xa1, 0xb2, 0xc3, 0xd4] | [0xa1, 0xb2, 0x3c, 0x4d] => false,
        other => panic!("not a pcap file: {other:x?}"),
    };
    let (mut at, mut n) = (24, 0);
    while at + 16 <= pcap.len() {
        let len = pcap[at + 8..at + 12].try_into().unwrap();
        let len = if little { u32::from_le_bytes(len) } else { u32::from_be_bytes(len) } as usize;
        edit(&mut pcap[at + 16..at + 16 + len]);
        at += 16 + len;
        n += 1;
    }
    n
}

/// The offset of a UDP packet's payload in an Ethernet frame, when its
/// destination port is `port`.
fn udp_payload_to(frame: &[u8], port: u16) -> Option<usize> {
    let sliced = etherparse::SlicedPacket::from_ethernet(frame).ok()?;
    match sliced.transport? {
        etherparse::TransportSlice::Udp(udp) if udp.destination_port() == port => {
            Some(udp.payload().as_ptr() as usize - frame.as_ptr() as usize)
        }
        _ => None,
    }
}

/// Only the pcap's file header: a capture that saw nothing.
fn emptied(pcap: &mut Vec<u8>) {
    pcap.truncate(24);
}

/// Every recorded case, one per overlay and filter (iptables and nftables
/// also enforcing a policy file; and a container on an igb VF), passes every
/// check, as it did when it ran.
#[rstest::rstest]
fn a_recorded_case_passes_every_check(
    #[values(
        "none",
        "iptables",
        "nftables",
        "iptables-policy",
        "nftables-policy",
        "ila",
        "vxlan",
        "vxlan-evpn",
        "swarm",
        "l4-policy",
        "igb-vf"
    )]
    name: &str,
) {
    let r = recorded(name);
    let report = r.judge();
    assert!(report.passed, "{name}: {:?}", failed(&report));
    assert!(report.throughput_bps > 0.0);
    // Every check the recording gets, with its evidence: a check that went
    // missing, or that judges other numbers, shows here.
    let checks: Vec<String> = report
        .checks
        .iter()
        .map(|c| format!("{} {}: {}", if c.passed { "pass" } else { "FAIL" }, c.name, c.detail))
        .collect();
    insta::assert_snapshot!(format!("judged_{name}"), checks.join("\n"));
}

/// The recorded ILA case (no-action, offloads on; its pcaps cut to their
/// first 26 packets) judges the checksums of the segments it holds.
#[test]
fn a_recorded_ila_case_judges_its_segments() {
    let report = recorded("ila").judge();
    let wire = check(&report, "ILA: wire checksums as documented");
    assert!(!wire.not_judged && wire.passed, "{}", wire.detail);
    assert!(wire.detail.contains("underlay segments judged"), "{}", wire.detail);
}

/// The recorded ILA case taken as its offloads-off sibling with host1's
/// pcaps of that case (`tests/fixtures/pcap`), host2's emptied.
fn ila_offloads_off_on_host1() -> Recorded {
    let mut r = recorded("ila").sibling("offloads=on", "offloads=off");
    let pcap = |name: &str| std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/pcap").join(name));
    *r.pcap("host1-underlay.pcap") = pcap("ila-no-action-off-host1-underlay.pcap").unwrap();
    *r.pcap("host1-c1-eth0.pcap") = pcap("ila-no-action-off-host1-c1-eth0.pcap").unwrap();
    emptied(r.pcap("host2-underlay.pcap"));
    emptied(r.pcap("host2-c2-eth0.pcap"));
    r
}

/// The orchestration hands the ILA verdict each sender's own container
/// capture ([`ila_offloads_off_on_host1`]). c1's
/// segments on the wire are found in c1's capture (their full checksums made
/// before the translation), the other three are not judged by origin.
#[test]
fn each_senders_segments_are_found_in_its_own_container_capture() {
    let report = ila_offloads_off_on_host1().judge();
    let wire = check(&report, "ILA: wire checksums as documented");
    assert!(wire.passed, "{}", wire.detail);
    let section = &report.variant.overlay.as_ref().expect("an ILA section").evidence;
    let judged = &section["wire_judged"];
    assert_eq!((&judged["before"]["as_documented"], &judged["unmatched"]["as_documented"]), (&3.into(), &9.into()));
    assert!(
        wire.detail.ends_with(
            "12 of 12 underlay segments judged: 3 full checksums computed before the \
         translation; 9 full checksums not in the sending container's capture"
        ),
        "{}",
        wire.detail
    );
}

/// A receiver that counted checksum errors during the workload fails the
/// check, and the detail names the counter that grew (only that one).
#[test]
fn a_checksum_error_counted_by_a_receiver_fails_the_ila_case() {
    let mut r = recorded("ila");
    let clean = check(&r.judge(), "ILA: receivers counted no checksum errors").clone();
    assert!(clean.passed && clean.detail == "2 counters unchanged", "{clean:?}");
    r.record.after.insert("csum-errors-host2.txt".into(), "TcpInCsumErrors 3\n".into());
    let report = r.judge();
    let counted = check(&report, "ILA: receivers counted no checksum errors");
    assert!(!counted.passed, "{counted:?}");
    assert_eq!(counted.detail, "host2:TcpInCsumErrors +3");
}

/// Containers are named per VM: with host2's container called `c1` too
/// (and its captures listed first), each sender is still judged against
/// its own capture (its VM's and container's), not against the first
/// capture of a container `c1`: c1's three segments are found in host1's.
#[test]
fn a_container_name_on_both_vms_keeps_each_senders_capture() {
    let mut r = ila_offloads_off_on_host1();
    for c in r.record.captures.iter_mut().filter(|c| c.vm == "host2" && c.container.is_some()) {
        c.container = Some("c1".into());
    }
    r.record.ends[1].container = Some("c1".into());
    let host2_first = r.record.captures.iter().position(|c| c.vm == "host2").unwrap();
    r.record.captures.rotate_left(host2_first);
    r.pcaps.rotate_left(host2_first);
    let report = r.judge();
    let wire = check(&report, "ILA: wire checksums as documented");
    assert!(
        wire.detail.ends_with(
            "3 full checksums computed before the translation; 9 full checksums not in the sending container's capture"
        ),
        "{}",
        wire.detail
    );
}

#[test]
fn a_recorded_vxlan_case_passes_every_check() {
    let report = recorded("vxlan").judge();
    assert!(report.passed, "{:?}", failed(&report));
    let wire = check(&report, "VXLAN: wire carries VNI 100 between the VTEPs");
    assert!(wire.detail.contains("VNIs 100;"), "{}", wire.detail);
    assert!(report.throughput_bps > 0.0);
}

/// The wire carries another VNI in some of its packets: the tunnel is not
/// the lab's.
#[test]
fn another_vni_on_the_wire_fails_the_vxlan_wire_check() {
    let mut r = recorded("vxlan");
    let port = 4789;
    let mut changed = 0;
    edit_packets(r.pcap("host1-underlay.pcap"), |frame| {
        if let Some(at) = udp_payload_to(frame, port) {
            if frame.len() >= at + 8 {
                frame[at + 6] ^= 0x01; // VNI 100 -> 101 (bytes 4..7 of the VXLAN header)
                changed += 1;
            }
        }
    });
    assert!(changed > 0, "the capture has VXLAN packets to UDP {port}");
    let report = r.judge();
    assert_eq!(failed(&report), ["VXLAN: wire carries VNI 100 between the VTEPs"]);
    assert!(check(&report, "VXLAN: wire carries VNI 100 between the VTEPs").detail.contains("VNIs 100, 101"));
}

/// No VXLAN packet at all on the underlay (the captures saw nothing): no
/// VNI was seen, and nothing passes for it.
#[test]
fn an_underlay_without_vxlan_fails_the_wire_checks() {
    let mut r = recorded("vxlan");
    emptied(r.pcap("host1-underlay.pcap"));
    emptied(r.pcap("host2-underlay.pcap"));
    let report = r.judge();
    // No VXLAN packet is no evidence of either.
    assert_among_failed(
        &report,
        &["VXLAN: wire carries VNI 100 between the VTEPs", "VXLAN: no fragmentation", "captures saw the workload"],
    );
    assert!(check(&report, "captures saw the workload").detail.contains("host1-underlay.pcap: 0 of 0 packets"));
}

/// The VXLAN packets travel between other addresses than the VTEPs (the
/// tunnel's outer source rewritten): the wire check names the tunnels.
#[test]
fn a_tunnel_between_other_addresses_fails_the_vxlan_wire_check() {
    let mut r = recorded("vxlan");
    for file in ["host1-underlay.pcap", "host2-underlay.pcap"] {
        edit_packets(r.pcap(file), |frame| {
            if udp_payload_to(frame, 4789).is_some() && frame[12..14] == [0x08, 0x00] {
                frame[14 + 15] ^= 0x10; // the outer IPv4 source's last byte
            }
        });
    }
    let report = r.judge();
    assert_among_failed(&report, &["VXLAN: wire carries VNI 100 between the VTEPs"]);
}

/// One outer packet is an IP fragment (its more-fragments flag set): the
/// inner MTU did not leave room for the encapsulation.
#[test]
fn a_fragmented_outer_packet_fails_the_fragmentation_check() {
    let mut r = recorded("vxlan");
    let mut marked = 0;
    edit_packets(r.pcap("host1-underlay.pcap"), |frame| {
        if marked == 0 && udp_payload_to(frame, 4789).is_some() && frame[12..14] == [0x08, 0x00] {
            frame[14 + 6] |= 0x20; // the outer IPv4 header's more-fragments flag
            marked += 1;
        }
    });
    assert_eq!(marked, 1, "the capture has VXLAN packets over IPv4");
    let report = r.judge();
    assert_among_failed(&report, &["VXLAN: no fragmentation"]);
    let detail = &check(&report, "VXLAN: no fragmentation").detail;
    assert!(detail.starts_with("1 fragments in "), "{detail}");
}

#[test]
fn a_recorded_l4_policy_case_passes_every_check() {
    let report = recorded("l4-policy").judge();
    assert!(report.passed, "{:?}", failed(&report));
    assert!(check(&report, "l4-policy: a probe to TCP 5202 is dropped").detail.contains("dropped 1 packets"));
}

const VNI_IS_IDENTITY: &str = "cilium-style: the VNI is the sender's identity, both ways";
const TUNNELS: &str = "cilium-style: tunnels run between the nodes' underlay addresses";
const TRACKED: &str = "cilium-style: the programs carried the flow, tracked both ways";

/// The cilium-style overlay's VXLAN frames in the recorded case's underlay
/// capture `file` (IPv4 without options, UDP 8472) edited: `edit(frame,
/// vxlan)` with the offset of the VXLAN header. Returns how many. (By the
/// headers' offsets: the capture keeps only the frames' first bytes, which
/// a strict parser refuses.)
fn cilium_frames(r: &mut Recorded, file: &str, mut edit: impl FnMut(&mut [u8], usize)) -> usize {
    let mut n = 0;
    edit_packets(r.pcap(file), |frame| {
        let udp = frame.len() > 42 && frame[12..14] == [0x08, 0x00] && frame[14] == 0x45 && frame[23] == 17;
        if udp && frame[36..38] == 8472u16.to_be_bytes() {
            edit(frame, 42);
            n += 1;
        }
    });
    n
}

/// The check `name` of `r` failed, with `detail` in its detail.
fn fails_with(r: Recorded, name: &str, detail: &str) {
    let report = r.judge();
    let c = check(&report, name);
    assert!(!c.passed && c.detail.contains(detail), "{name}: {} {}", c.passed, c.detail);
}

/// The client's encapsulated packets were sent to another port (not the
/// overlay's): the wire shows no VNI from the client, though every VNI seen
/// is its sender's.
#[test]
fn no_encapsulated_packet_from_the_client_fails_the_vni_check() {
    let mut r = recorded("l4-policy");
    // The inner IPv4 source of a frame: after the VXLAN header (8) and the
    // inner Ethernet header (14), bytes 12..16 of the IPv4 header.
    let client = [10, 1, 2, 2];
    let mut moved = 0;
    for file in ["host1-underlay.pcap", "host2-underlay.pcap"] {
        cilium_frames(&mut r, file, |frame, at| {
            if frame.get(at + 22 + 12..at + 22 + 16) == Some(&client[..]) {
                frame[at - 6] ^= 0x01; // the UDP destination port: 8472 -> 8473
                moved += 1;
            }
        });
    }
    assert!(moved > 0, "the client sent encapsulated packets");
    fails_with(r, VNI_IS_IDENTITY, "no encapsulated packet from c2");
}

/// host1's encapsulated packets went to another address than host2's
/// underlay one: a tunnel from a node to somewhere else.
#[test]
fn a_tunnel_to_another_address_fails_the_tunnels_check() {
    let mut r = recorded("l4-policy");
    // The outer IPv4 destination's last byte (Ethernet 14, IPv4 16..20).
    let n = cilium_frames(&mut r, "host1-underlay.pcap", |frame, _| frame[14 + 19] ^= 0x40);
    assert!(n > 0);
    fails_with(r, TUNNELS, "10.0.0.1 > 10.0.0.66");
}

/// No VXLAN packet on either underlay: no tunnel at all is not a tunnel
/// between the nodes.
#[test]
fn no_tunnel_at_all_fails_the_tunnels_check() {
    let mut r = recorded("l4-policy");
    emptied(r.pcap("host1-underlay.pcap"));
    emptied(r.pcap("host2-underlay.pcap"));
    fails_with(r, TUNNELS, "no VXLAN packet on UDP 8472");
}

/// Each counter of the programs that carries the flow counted nothing
/// during the case: the flow did not pass that way. (host1 is the server,
/// host2 the client.)
#[rstest::rstest]
#[case::client_into_the_tunnel("host2", "to_overlay", "host2: 0 packets into the tunnel")]
#[case::server_tracked_nothing("host1", "ct_established", "host1: 0 of them passed")]
#[case::server_sent_nothing_back("host1", "to_overlay", ", 0 sent back")]
#[case::server_tracked_no_reply("host1", "reply_to_overlay", "(0 tracked as replies)")]
#[case::client_tracked_no_reply("host2", "ct_reply", "host2: 0 replies passed")]
fn a_flow_counter_that_counted_nothing_fails_the_tracking_check(
    #[case] vm: &str,
    #[case] metric: &str,
    #[case] shown: &str,
) {
    let mut r = recorded("l4-policy");
    assert!(check(&r.judge(), TRACKED).passed);
    r.set_metric(vm, metric, 0);
    fails_with(r, TRACKED, shown);
}

fn probe_check(report: &CaseReport) -> &vlab::report::Check {
    check(report, "l4-policy: a probe to TCP 5202 is dropped")
}

/// The probe connected although the policy counted a drop: the probe port
/// is open to the client.
#[test]
fn a_probe_that_connected_fails_the_probe_check() {
    let mut r = recorded("l4-policy");
    r.record.probe = Some(Probe { port: 5202, outcome: ProbeOutcome::Connected });
    let report = r.judge();
    assert_eq!(failed(&report), ["l4-policy: a probe to TCP 5202 is dropped"]);
    assert!(probe_check(&report).detail.contains("connected"), "{}", probe_check(&report).detail);
}

/// The probe timed out but the policy dropped nothing: something else lost
/// it (a route, a down link), not the policy.
#[test]
fn a_probe_lost_without_a_drop_fails_the_probe_check() {
    let mut r = recorded("l4-policy");
    r.no_drop_counted();
    let report = r.judge();
    assert_among_failed(&report, &["l4-policy: a probe to TCP 5202 is dropped"]);
    assert!(probe_check(&report).detail.contains("dropped 0 packets"), "{}", probe_check(&report).detail);
}

/// The intruder reached the server's port: the policy let another identity in.
#[test]
fn an_intruder_that_connected_fails_the_intruder_check() {
    let mut r = recorded("l4-policy");
    r.record.intruder = Some(Probe { port: 5201, outcome: ProbeOutcome::Connected });
    let report = r.judge();
    let failed = failed(&report);
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert!(failed[0].starts_with("l4-policy: the intruder"), "{failed:?}");
}

/// The policy maps read back after the case must hold the compiled policy
/// on every VM: an allow map without one of its entries, a deny map with an
/// entry the policy does not have, or an enforced map without an identity
/// the policy selects, fails naming the VM; a deny map read back empty is the
/// compiled policy's (it has no deny rule).
#[test]
fn policy_maps_unlike_the_compiled_policy_fail_naming_the_vm() {
    const NAME: &str = "l4-policy: the policy map holds the compiled policy on every VM";
    let judge = |r: Recorded| {
        let report = r.judge();
        let c = check(&report, NAME);
        (c.passed, c.detail.clone())
    };
    let allow = recorded("l4-policy").record.after["vlab-policy-host1.json"].clone();
    let entries: Vec<serde_json::Value> = serde_json::from_str(&allow).unwrap();
    assert_eq!(entries.len(), 2, "{allow}");
    let one = serde_json::to_string(&entries[..1]).unwrap();
    let (passed, detail) = judge(output_edited("l4-policy", "vlab-policy-host1.json", |_| one.clone()));
    assert!(!passed && detail.starts_with("host1: allow") && !detail.contains("host2"), "{detail}");
    let with_deny = |dump: &str| {
        let mut r = recorded("l4-policy");
        r.record.after.insert("vlab-policy-deny-host2.json".into(), dump.to_string());
        judge(r)
    };
    let (passed, detail) = with_deny(&allow);
    assert!(!passed && detail.starts_with("host2: allow") && detail.contains("deny Some(["), "{detail}");
    assert!(with_deny("[]").0, "an empty deny map is the policy's");
    // The enforced map without one of the identities the policy selects.
    let enforced = recorded("l4-policy").record.after["vlab-enforced-host1.json"].clone();
    let ids: Vec<serde_json::Value> = serde_json::from_str(&enforced).unwrap();
    let first = serde_json::to_string(&ids[..1]).unwrap();
    let (passed, detail) = judge(output_edited("l4-policy", "vlab-enforced-host1.json", |_| first.clone()));
    assert_eq!((passed, detail.as_str()), (false, "host1: enforced {256: 1}"));
}

/// The bpftool dump `text` with the counter of the entry whose key starts
/// with `key` set to `packets` (the value's first 8 bytes, little-endian).
fn with_packets(text: &str, key: &[u8], packets: u64) -> String {
    let mut entries: Vec<serde_json::Value> = serde_json::from_str(text).unwrap();
    let hex = |b: &u8| serde_json::Value::from(format!("0x{b:02x}"));
    let entry = entries
        .iter_mut()
        .find(|e| e["key"].as_array().unwrap().iter().zip(key).all(|(a, b)| *a == hex(b)))
        .unwrap_or_else(|| panic!("no entry with key {key:?} in {text}"));
    let value = entry["value"].as_array_mut().unwrap();
    for (i, b) in packets.to_le_bytes().iter().enumerate() {
        value[i] = hex(b);
    }
    serde_json::to_string(&entries).unwrap()
}

/// The workload's l4-policy check reads what the server's own entry (its
/// identity, ingress, on its VM) admitted during the case: one or two
/// packets per connection (iperf3's control connection and its streams, and
/// the timed connections: a SYN each, maybe sent again), with connection
/// tracking passing more than that. The recorded case has 2 connections;
/// with `connects = 3` it has 5. Entries of another VM or endpoint do not
/// count.
#[rstest::rstest]
#[case::as_recorded(2, "", None, true)]
#[case::nothing_admitted(0, "", None, false)]
#[case::one_per_connection(1, "", None, true)]
#[case::two_per_connection(4, "", None, true)]
#[case::more_than_two_per_connection(5, "", None, false)]
#[case::two_per_connection_of_five(10, "connects = 3", None, true)]
#[case::more_than_two_per_connection_of_five(11, "connects = 3", None, false)]
#[case::tracking_passed_no_more_than_the_policy(2, "", Some(2), false)]
#[case::tracking_passed_one_more(2, "", Some(3), true)]
fn the_workload_passed_the_servers_entry_once_per_connection(
    #[case] admitted: u64,
    #[case] workload: &str,
    #[case] established: Option<u64>,
    #[case] passes: bool,
) {
    const NAME: &str = "l4-policy: the workload passed the policy once per connection";
    // The server's entry: identity 258 (c1) from 256 (c2), TCP 5201.
    const SERVER: [u8; 12] = [2, 1, 0, 0, 0, 1, 0, 0, 6, 0, 0x51, 0x14];
    let mut r = recorded("l4-policy");
    if !workload.is_empty() {
        r = r.with_lab(|t| t.replacen("[workload]\n", &format!("[workload]\n{workload}\n"), 1));
    }
    r.set_packets("vlab-policy-host1.json", &SERVER, admitted);
    // Other entries that admitted much: host2's copy of the server's entry,
    // and host1's entry of c2's own identity.
    r.set_packets("vlab-policy-host2.json", &SERVER, 100);
    r.set_packets("vlab-policy-host1.json", &[0, 1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0], 100);
    if let Some(more) = established {
        r.set_metric("host1", "ct_established", more);
    }
    let report = r.judge();
    let c = check(&report, NAME);
    assert_eq!(c.passed, passes, "{}", c.detail);
}

/// One entry of a policy or denied map's dump: `endpoint` from (ingress)
/// or to (egress) `remote`, TCP `port`, with `packets`.
fn dump_entry(endpoint: u32, remote: u32, egress: bool, port: u16, packets: u64) -> String {
    let hex = |b: &[u8]| b.iter().map(|x| format!("\"0x{x:02x}\"")).collect::<Vec<_>>().join(",");
    let mut key = Vec::new();
    key.extend(endpoint.to_le_bytes());
    key.extend(remote.to_le_bytes());
    key.extend([6, u8::from(egress)]);
    key.extend(port.to_le_bytes());
    let mut value = packets.to_le_bytes().to_vec();
    value.extend((packets * 60).to_le_bytes());
    format!("{{\"key\": [{}], \"value\": [{}]}}", hex(&key), hex(&value))
}

/// The server's replies reach the client (identity 256, on host2) by
/// connection tracking: the client's VM counted replies, and its policy
/// denied none of them (a drop counted at its ingress). A drop counted for
/// another identity, on the other VM or at the client's egress is not a
/// reply's.
#[rstest::rstest]
#[case::as_recorded(None, true, true)]
#[case::no_replies(None, false, false)]
#[case::a_reply_denied(Some(("host2", 256, false)), true, false)]
#[case::another_identity_denied(Some(("host2", 257, false)), true, true)]
#[case::the_clients_egress_denied(Some(("host2", 256, true)), true, true)]
#[case::denied_on_the_servers_vm(Some(("host1", 256, false)), true, true)]
fn replies_pass_by_connection_tracking(
    #[case] denied: Option<(&str, u32, bool)>,
    #[case] replies: bool,
    #[case] passes: bool,
) {
    const NAME: &str = "l4-policy: replies pass by connection tracking, not by the policy";
    let mut r = recorded("l4-policy");
    if let Some((vm, endpoint, egress)) = denied {
        let dump = format!("[{}]", dump_entry(endpoint, 258, egress, 40000, 3));
        r.record.before.insert(format!("vlab-denied-{vm}.json"), "[]".into());
        r.record.after.insert(format!("vlab-denied-{vm}.json"), dump);
    }
    if !replies {
        // No reply passed by tracking on the client's VM.
        r.set_metric("host2", "ct_reply", 0);
    }
    let report = r.judge();
    let c = check(&report, NAME);
    assert_eq!(c.passed, passes, "{}", c.detail);
}

/// With the `none` filter the intruder's attempt must arrive: answered by
/// the server (a reset, its one test being over) or connected; lost, it
/// fails. (The recorded l4-policy case judged as its `none` sibling.)
#[rstest::rstest]
#[case::refused(ProbeOutcome::Refused, true)]
#[case::connected(ProbeOutcome::Connected, true)]
#[case::lost(ProbeOutcome::TimedOut, false)]
fn without_a_filter_the_intruder_reaches_the_server(#[case] outcome: ProbeOutcome, #[case] passes: bool) {
    let mut r = recorded("l4-policy").sibling("filter=l4-policy", "filter=none");
    r.record.intruder = Some(Probe { port: 5201, outcome });
    let report = r.judge();
    let c = check(&report, "filter none: the intruder's connection to TCP 5201 reaches the server");
    assert_eq!(c.passed, passes, "{}", c.detail);
}

/// The overlay's section reads, per VM, the identities with a policy from
/// the enforced map: those of the containers the policy's endpoint
/// selectors name (`service1` for c1, `app1` for c2), on both VMs.
#[test]
fn the_enforced_identities_are_read_from_each_vms_map() {
    let report = recorded("l4-policy").judge();
    let section = &report.variant.overlay.as_ref().expect("an overlay section").evidence;
    let ids = &section["identities"];
    let mut selected = vec![ids["c1"].as_u64().unwrap(), ids["c2"].as_u64().unwrap()];
    selected.sort();
    assert_ne!(ids["c1"], ids["c3"], "c3 has another identity: {ids}");
    assert_eq!(section["enforced"], serde_json::json!({ "host1": selected, "host2": selected }));
}

/// What the `none` filter checks on the cilium-style overlay: no identity
/// has a policy on any VM, read from each VM's enforced map (here the
/// recording's dumps while `l4-policy` enforced, and an empty one).
#[test]
fn an_enforced_identity_or_an_unread_map_fails_the_none_filter() {
    let r = recorded("l4-policy");
    let points = vlab::overlay::get(&r.lab.overlay).enforcement_points(&r.lab);
    let judge = |host1: Option<&str>, host2: &str| {
        let mut outputs =
            std::collections::BTreeMap::from([("policy-state-host2.json".to_string(), host2.to_string())]);
        outputs.extend(host1.map(|d| ("policy-state-host1.json".to_string(), d.to_string())));
        let (checks, _) = vlab::filter::none::unfiltered(&r.lab, &points, &outputs);
        assert_eq!(checks.len(), 1, "{checks:?}");
        assert_eq!(checks[0].name, "cilium-style: no identity has a policy");
        (checks[0].passed, checks[0].detail.clone())
    };
    let enforced = &r.record.after["vlab-enforced-host2.json"];
    assert_eq!(judge(Some("[]"), "[]"), (true, "the enforced map is empty on 2 VMs".to_string()));
    assert_eq!(judge(Some("[]"), enforced), (false, "enforced identities: host2: [256, 258]".to_string()));
    assert_eq!(judge(None, "[]"), (false, "no readable enforced map from host1".to_string()));
    assert_eq!(judge(Some("not json"), "[]"), (false, "no readable enforced map from host1".to_string()));
}

/// Judging a recording is the same as judging it again: the same checks,
/// verdicts and details (a verdict depends on the evidence alone).
#[test]
fn a_recording_judges_the_same_twice() {
    for name in ["vxlan", "l4-policy"] {
        let r = recorded(name);
        let (a, b) = (r.judge(), r.judge());
        assert_eq!(serde_json::to_value(&a.checks).unwrap(), serde_json::to_value(&b.checks).unwrap(), "{name}");
    }
}

/// A record whose pcaps are missing is refused, naming the file.
#[test]
fn a_record_without_its_pcap_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(fixture("vxlan").join("case/case.json"), dir.path().join("case.json")).unwrap();
    let err = record::load(dir.path()).unwrap_err();
    assert!(format!("{err:#}").contains("host1-underlay.pcap"), "{err:#}");
}

impl Recorded {
    /// Rewrites every VM's output after the workload whose name starts with
    /// `prefix`.
    fn edit_after(&mut self, prefix: &str, edit: impl Fn(&str) -> String) {
        let mut n = 0;
        for (name, text) in self.record.after.iter_mut().filter(|(name, _)| name.starts_with(prefix)) {
            let edited = edit(text);
            assert_ne!(&edited, text, "{name}: the edit changed nothing");
            *text = edited;
            n += 1;
        }
        assert!(n > 0, "no output named {prefix}*");
    }
}

/// iptables read back without the port rule after the case: the policy is
/// not in place (and nothing counted the handshake).
#[test]
fn an_iptables_ruleset_without_the_port_rule_fails() {
    let mut r = recorded("iptables");
    r.edit_after("iptables-", |t| {
        t.lines().filter(|l| !l.contains("--dport 5201")).map(|l| format!("{l}\n")).collect()
    });
    let report = r.judge();
    assert_among_failed(
        &report,
        &[
            "iptables: the policy is in place at every enforcement point",
            "iptables: the port rule matches the handshake (TCP 5201)",
        ],
    );
}

/// The port rule's counters did not move: the handshake did not pass by it.
#[test]
fn an_iptables_port_rule_that_counted_nothing_fails() {
    let mut r = recorded("iptables");
    let zero = zero_counters("--dport 5201");
    r.edit_after("iptables-", |t| t.lines().map(|l| format!("{}\n", zero(l))).collect());
    let report = r.judge();
    assert_eq!(failed(&report), ["iptables: the port rule matches the handshake (TCP 5201)"]);
}

/// `-c PACKETS BYTES` set to `-c 0 0` on the lines that contain `marker`.
fn zero_counters(marker: &'static str) -> impl Fn(&str) -> String {
    move |line: &str| {
        if !line.contains(marker) {
            return line.to_string();
        }
        let words: Vec<&str> = line.split(' ').collect();
        let at = words.iter().position(|w| *w == "-c").expect("a counter");
        let mut out: Vec<&str> = words.clone();
        out[at + 1] = "0";
        out[at + 2] = "0";
        out.join(" ")
    }
}

/// Every VM's iptables listing after the case with `zero` applied to each
/// line.
fn iptables_zeroed(marker: &'static str) -> Recorded {
    let mut r = recorded("iptables");
    let zero = zero_counters(marker);
    for text in r.record.after.values_mut() {
        *text = text.lines().map(|l| format!("{}\n", zero(l))).collect();
    }
    r
}

/// The probe timed out, but the drop policy counted nothing on any VM:
/// something else lost it, not the filter.
#[test]
fn an_iptables_probe_lost_without_a_drop_fails() {
    let report = iptables_zeroed("-P FORWARD DROP").judge();
    assert_eq!(failed(&report), ["iptables: the policy drops a probe to TCP 5202"]);
    let detail = &check(&report, "iptables: the policy drops a probe to TCP 5202").detail;
    assert_eq!(detail, "TCP 5202: timed out (1 s); the policy dropped 0 packets");
}

/// No rule counted anything: the established share is 0 % of nothing (not
/// a division by zero), and the checks that need packets fail.
#[test]
fn iptables_counters_that_took_nothing_fail_with_a_share_of_zero() {
    let report = iptables_zeroed(" -c ").judge();
    let detail = &check(&report, "iptables: ESTABLISHED,RELATED takes the data").detail;
    assert_eq!(detail, "0 of 0 filtered packets (0.0 %)");
    assert_among_failed(
        &report,
        &["iptables: ESTABLISHED,RELATED takes the data", "iptables: the policy drops a probe to TCP 5202"],
    );
}

/// nftables read back without its port rule: not in place.
#[test]
fn an_nftables_ruleset_without_the_port_rule_fails() {
    let mut r = recorded("nftables");
    r.edit_after("nftables-", |t| {
        let mut doc: serde_json::Value = serde_json::from_str(t).unwrap();
        let items = doc["nftables"].as_array_mut().unwrap();
        items.retain(|i| i["rule"]["comment"] != "port");
        doc.to_string()
    });
    let report = r.judge();
    assert_among_failed(&report, &["nftables: the policy is in place at every enforcement point"]);
}

/// Connection tracking's rule counted nothing: the data did not pass by it.
#[test]
fn an_nftables_established_rule_that_counted_nothing_fails() {
    let mut r = recorded("nftables");
    r.edit_after("nftables-", |t| {
        let mut doc: serde_json::Value = serde_json::from_str(t).unwrap();
        for item in doc["nftables"].as_array_mut().unwrap() {
            if item["rule"]["comment"] == "established" {
                for e in item["rule"]["expr"].as_array_mut().unwrap() {
                    if e.get("counter").is_some() {
                        e["counter"] = serde_json::json!({"packets": 0, "bytes": 0});
                    }
                }
            }
        }
        doc.to_string()
    });
    let report = r.judge();
    assert_eq!(failed(&report), ["nftables: ESTABLISHED,RELATED takes the data"]);
}

/// The `none` filter read back a forward chain that drops: something filters.
#[test]
fn a_forward_chain_that_drops_fails_the_none_filter() {
    let mut r = recorded("none");
    let chain = r#"{"chain": {"family": "inet", "table": "t", "name": "f", "handle": 1, "type": "filter", "hook": "forward", "prio": 0, "policy": "drop"}}"#;
    r.edit_after("ruleset-host1", |t| {
        let mut doc: serde_json::Value = serde_json::from_str(t).unwrap();
        doc["nftables"].as_array_mut().unwrap().push(serde_json::from_str(chain).unwrap());
        doc.to_string()
    });
    let report = r.judge();
    assert_eq!(failed(&report), ["filter none: nothing filters the forwarding path"]);
}

/// The kernel logged a warning during the case.
#[test]
fn a_kernel_warning_fails_the_kernel_check() {
    let mut r = recorded("none");
    r.record.kernel_logs[0].1.push_str("[  12.000000] WARNING: CPU: 1 PID: 0 at net/core/dev.c:1 x+0x1/0x2\n");
    let report = r.judge();
    assert_eq!(failed(&report), ["kernels logged no warning"]);
}

/// The client failed (exit 1), although its report counts bytes: the flow
/// does not count as delivered, so the filter's checks that weigh it fail too.
#[test]
fn a_client_that_failed_fails_the_workload() {
    let mut r = recorded("iptables");
    r.record.client.code = 1;
    let report = r.judge();
    assert_among_failed(
        &report,
        &[
            "iperf3 completed",
            "iptables: ESTABLISHED,RELATED takes the data",
            "iptables: the port rule matches the handshake (TCP 5201)",
        ],
    );
}

/// The recorded l4-policy case judged against another policy file
/// (`cilium-style/FILE` beside the fixture's own policy).
fn recorded_with_policy(file: &str) -> Recorded {
    recorded("l4-policy").with_lab(|t| t.replace("cilium-style/policy.json", &format!("cilium-style/{file}")))
}

/// A policy that allows the probe's port and the intruder: the checks
/// expect what it says (from the evaluator, not from the study's rule), so
/// the recorded drops now fail them, naming the rule that allows each.
#[test]
fn drops_that_a_policy_allows_fail_naming_the_rule() {
    let report = recorded_with_policy("open.yaml").judge();
    let probe = check(&report, "l4-policy: a probe to TCP 5202 is allowed");
    assert!(!probe.passed);
    assert!(probe.detail.contains("allowed by rule 1 (open-service) at [0].ingress[0]"), "{}", probe.detail);
    let intruder = report.checks.iter().find(|c| c.name.starts_with("l4-policy: the intruder")).unwrap();
    assert!(intruder.name.ends_with("is allowed") && !intruder.passed, "{}", intruder.name);
    assert!(intruder.detail.contains("allowed by rule 1 (open-service) at [0].ingress[1]"), "{}", intruder.detail);
}

/// The same policy, and a datapath that did what it says: the probe
/// connected, the intruder reached the server's port (refused: the one-test
/// server had ended), nothing was dropped. Both checks pass.
#[test]
fn what_a_policy_allows_passes_when_it_went_through() {
    let mut r = recorded_with_policy("open.yaml");
    r.record.probe = Some(Probe { port: 5202, outcome: ProbeOutcome::Connected });
    r.record.intruder = Some(Probe { port: 5201, outcome: ProbeOutcome::Refused });
    r.no_drop_counted();
    let report = r.judge();
    let probe = check(&report, "l4-policy: a probe to TCP 5202 is allowed");
    assert!(probe.passed, "{}", probe.detail);
    let intruder = report.checks.iter().find(|c| c.name.starts_with("l4-policy: the intruder")).unwrap();
    assert!(intruder.passed, "{}: {}", intruder.name, intruder.detail);
    // The map still holds the study's entries, not this policy's.
    assert!(!check(&report, "l4-policy: the policy map holds the compiled policy on every VM").passed);
}

/// A `vlab_denied` dump holding one key (endpoint, remote, TCP, ingress,
/// port) that counted `packets`.
fn denied_dump(endpoint: u32, remote: u32, port: u16, packets: u64) -> String {
    format!("[{}]", dump_entry(endpoint, remote, false, port, packets))
}

/// The recorded l4-policy case with a probe matrix: c2 (app1) and c3 (app2)
/// try c1 (service1) on TCP 5201 and 10000; c1's VM counted `drops` for
/// each dropped (source identity, port). Identities: app1 256, app2 257,
/// service1 258.
fn with_matrix(cells: &[(&str, u16, ProbeOutcome)], drops: &[(u32, u16)]) -> Recorded {
    use vlab::overlay::{ProbeCell, ProbeMatrix};
    use vlab::policy::Protocol;
    let mut r = recorded("l4-policy");
    let cells = cells
        .iter()
        .map(|&(from, port, outcome)| ProbeCell {
            from: from.into(),
            to: "c1".into(),
            protocol: Protocol::Tcp,
            port,
            outcome,
        })
        .collect();
    let dump = drops.iter().map(|&(remote, port)| denied_dump(258, remote, port, 2)).collect::<Vec<_>>();
    let merged = format!(
        "[{}]",
        dump.iter().map(|d| d.trim_start_matches('[').trim_end_matches(']')).collect::<Vec<_>>().join(",")
    );
    let before =
        [("vlab-denied-host1.json".to_string(), "[]".to_string()), ("vlab-denied-host2.json".into(), "[]".into())];
    let after = [("vlab-denied-host1.json".to_string(), merged), ("vlab-denied-host2.json".into(), "[]".into())];
    r.record.matrix = Some(ProbeMatrix { cells, before: before.into(), after: after.into(), seconds: 1.2 });
    r
}

fn matrix_check(report: &CaseReport) -> &vlab::report::Check {
    check(report, "l4-policy: the probe matrix agrees with the policy")
}

/// As the policy says: app1 reaches 5201 and nothing else, app2 nothing;
/// every drop was counted.
#[test]
fn a_matrix_as_the_policy_says_passes() {
    let r = with_matrix(
        &[
            ("c2", 5201, ProbeOutcome::Refused),
            ("c2", 10000, ProbeOutcome::TimedOut),
            ("c3", 5201, ProbeOutcome::TimedOut),
            ("c3", 10000, ProbeOutcome::TimedOut),
        ],
        &[(256, 10000), (257, 5201), (257, 10000)],
    );
    let report = r.judge();
    assert!(matrix_check(&report).passed, "{}", matrix_check(&report).detail);
    assert!(matrix_check(&report).detail.contains("4 cells"), "{}", matrix_check(&report).detail);
    let section = &report.variant.filter.as_ref().unwrap().evidence["matrix"];
    assert_eq!(section["cells"].as_array().unwrap().len(), 4);
}

/// A cell the policy drops connected: the cell is named with the rule that
/// should have dropped it.
#[test]
fn a_matrix_cell_that_got_through_fails_naming_it() {
    let r = with_matrix(&[("c2", 5201, ProbeOutcome::Connected), ("c3", 5201, ProbeOutcome::Connected)], &[]);
    let report = r.judge();
    let c = matrix_check(&report);
    assert!(!c.passed);
    assert!(c.detail.contains("1 of 2 cells differ: c3 -> c1 TCP 5201: expected dropped (dropped: ingress default deny (selected by rule 1, none allows it)), measured connected, 0 drops counted"), "{}", c.detail);
}

/// A cell that timed out without a drop counted: something else lost it,
/// not the policy; and an allowed cell that timed out.
#[test]
fn a_matrix_cell_lost_without_a_drop_fails() {
    let r = with_matrix(&[("c3", 10000, ProbeOutcome::TimedOut), ("c2", 5201, ProbeOutcome::TimedOut)], &[]);
    let report = r.judge();
    let c = matrix_check(&report);
    assert!(!c.passed);
    assert!(c.detail.starts_with("2 of 2 cells differ"), "{}", c.detail);
}

/// A drop counted for another source, or another port, is not the drop of
/// a cell: c3's probe to 10000 timed out, but the datapath counted drops
/// only from app1 (c2) to 10000 and from app2 (c3) to 5201.
#[test]
fn a_drop_of_another_source_or_port_is_not_the_cells() {
    let r = with_matrix(&[("c3", 10000, ProbeOutcome::TimedOut)], &[(256, 10000), (257, 5201)]);
    let report = r.judge();
    let c = matrix_check(&report);
    assert!(!c.passed, "{}", c.detail);
    assert!(c.detail.contains("c3 -> c1 TCP 10000") && c.detail.contains("0 drops counted"), "{}", c.detail);
}

/// `[probes]` in the lab file: `matrix = "off"` leaves the matrix out,
/// `ports` adds to the ports the policy names.
#[test]
fn the_labs_probes_table_decides_the_matrix() {
    use vlab::policy::Protocol;
    let with = |table: &str| {
        let r = recorded("l4-policy").with_lab(|t| format!("{t}\n{table}\n"));
        vlab::filter::get("l4-policy").probe_targets(&r.lab, &r.case.params)
    };
    assert_eq!(with(""), [(Protocol::Tcp, 5201), (Protocol::Tcp, 10000)]);
    assert_eq!(with("[probes]\nports = [7]"), [(Protocol::Tcp, 7), (Protocol::Tcp, 5201), (Protocol::Tcp, 10000)]);
    assert!(with("[probes]\nmatrix = \"off\"").is_empty());
}

/// A matrix of no cell proves nothing: the check fails; a matrix's detail
/// counts what it allowed and dropped.
#[test]
fn an_empty_matrix_fails_and_a_full_one_counts_its_cells() {
    let report = with_matrix(&[], &[]).judge();
    assert!(!matrix_check(&report).passed);
    assert_eq!(matrix_check(&report).detail, "no probe was answered");
    let r = with_matrix(
        &[
            ("c2", 5201, ProbeOutcome::Refused),
            ("c2", 10000, ProbeOutcome::TimedOut),
            ("c3", 5201, ProbeOutcome::TimedOut),
        ],
        &[(256, 10000), (257, 5201)],
    );
    let report = r.judge();
    assert_eq!(
        matrix_check(&report).detail,
        "3 cells (3 containers, 2 targets): 1 allowed, 2 dropped, each as the policy decides"
    );
}

/// The matrices as the table prints them: expected and measured, one mark
/// per target, and the cells that differ.
#[test]
fn the_matrix_table_shows_both_matrices_and_what_differs() {
    let r = with_matrix(
        &[
            ("c2", 5201, ProbeOutcome::Refused),
            ("c2", 10000, ProbeOutcome::Connected),
            ("c3", 5201, ProbeOutcome::TimedOut),
            ("c3", 10000, ProbeOutcome::TimedOut),
        ],
        &[(257, 5201), (257, 10000)],
    );
    let report = r.judge();
    let section = report.variant.filter.as_ref().unwrap().evidence["matrix"].clone();
    let m: vlab::filter::probes::MatrixSection = serde_json::from_value(section).unwrap();
    insta::assert_snapshot!("matrix_table", vlab::filter::probes::table("l4", &m));
    // The run's report shows the table under the case's name; a variant
    // with no table of its own (the overlay) adds none.
    let summaries = vlab::run::summaries(&r.lab, std::slice::from_ref(&report));
    assert_eq!(summaries, [vlab::filter::probes::table(&report.name, &m)]);
    for name in ["vxlan", "iptables"] {
        let r = recorded(name);
        assert_eq!(vlab::run::summaries(&r.lab, &[r.judge()]), Vec::<String>::new(), "{name}");
    }
    // ILA's table of checksum verdicts, from the recorded case's section.
    let ila = recorded("ila");
    let tables = vlab::run::summaries(&ila.lab, &[ila.judge()]);
    assert_eq!(tables.len(), 1, "{tables:?}");
    insta::assert_snapshot!("ila_summary", tables[0]);
}

/// The new-connection latency is read from the record as the loop printed
/// it: every connection answered passes, one that never was fails, and a
/// lab that asked for them with nothing recorded fails too.
#[test]
fn timed_connections_are_judged_from_the_record() {
    let mut r = recorded("nftables");
    r.lab.workload.connects = 3;
    r.record.connects = Some("c 100\nr 200\nr 350\ndone\n".into());
    let report = r.judge();
    assert!(check(&report, "new connections answered").passed, "{:?}", failed(&report));
    let l = report.connect.as_ref().expect("the latency is in the report");
    assert_eq!((l.median_us, l.connected, l.refused), (200.0, 1, 2));
    r.record.connects = Some("c 100\nr 200\ndone\n".into());
    assert_among_failed(&r.judge(), &["new connections answered"]);
    r.record.connects = None;
    assert_among_failed(&r.judge(), &["new connections answered"]);
}

/// The time the case's rules took to be put in place comes from the record
/// (the slowest VM's), and is summarised over repetitions; a case whose
/// filter deployed once has none.
#[test]
fn the_rulesets_deploy_time_is_read_from_the_record() {
    let mut r = recorded("nftables");
    assert_eq!(r.judge().ruleset_s, None);
    assert_eq!(r.judge().ruleset_text(), None);
    r.record.filter_setup_s = [("host1".to_string(), 0.25), ("host2".to_string(), 0.5)].into();
    let one = r.judge();
    assert_eq!(one.ruleset_s, Some(0.5));
    assert_eq!(one.ruleset_text().as_deref(), Some("500 ms"));
    r.record.filter_setup_s = [("host1".to_string(), 2.0)].into();
    let two = r.judge();
    let combined = vlab::report::combine_repetitions(vec![vec![one], vec![two]]);
    let s = combined[0].ruleset_summary.as_ref().expect("a summary over the repetitions");
    assert_eq!(s.samples, [0.5, 2.0]);
    assert_eq!(combined[0].ruleset_text().as_deref(), Some("1.25 s"));
}

/// Against no filter, a case is set beside the `none` case with the same
/// parameters, or, when `none` lacks a variant axis of the case (`policy`),
/// the one whose axes it has: its throughput ratio and its new-connection
/// latency's ratio.
#[test]
fn ratios_to_no_filter_take_the_sibling_with_the_same_axes() {
    use vlab::report::{compare_with, Versus};
    let base = recorded("nftables").judge();
    let latency = |us: f64| vlab::measure::connect::Latency {
        attempts: 1,
        connected: 1,
        refused: 0,
        finished: true,
        median_us: us,
        min_us: us,
        max_us: us,
    };
    let case = |filter: &str, axes: &[(&str, &str)], bps: f64, us: f64| {
        let mut c = base.clone();
        c.params.filter = Some(filter.into());
        c.params.variant = axes.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        c.throughput_bps = bps;
        c.connect = Some(latency(us));
        c
    };
    let mut cases = vec![
        case("none", &[("rules", "10")], 100.0, 200.0),
        case("none", &[("rules", "100")], 50.0, 400.0),
        case("iptables", &[("rules", "10")], 80.0, 300.0),
        case("iptables", &[("rules", "100")], 40.0, 1200.0),
        case("iptables", &[("rules", "100"), ("policy", "deny")], 25.0, 800.0),
    ];
    compare_with(&mut cases, Versus::Filter, "none");
    let got: Vec<(Option<f64>, Option<f64>)> = cases.iter().map(|c| (c.vs_no_filter, c.connect_vs_no_filter)).collect();
    assert_eq!(
        got,
        [(None, None), (None, None), (Some(0.8), Some(1.5)), (Some(0.8), Some(3.0)), (Some(0.5), Some(2.0))]
    );
}

/// iperf3 completed, but its receiver counted no byte: nothing arrived.
#[test]
fn a_workload_that_delivered_nothing_fails_the_payload_check() {
    let r = delivering_nothing("iptables");
    let report = r.judge();
    // The interfaces' counters are weighed against the payload too, and the
    // filter's checks that weigh the delivered flow fail with it.
    assert_among_failed(&report, &["payload delivered", "iptables: ESTABLISHED,RELATED takes the data"]);
    assert!(check(&report, "iperf3 completed").passed);
}

/// The recorded case `name` with iperf3's receiver counting no byte.
fn delivering_nothing(name: &str) -> Recorded {
    let mut r = recorded(name);
    let mut json: serde_json::Value = serde_json::from_str(&r.record.client.stdout).unwrap();
    for (key, sum) in json["end"].as_object_mut().unwrap() {
        if key.starts_with("sum_received") {
            sum["bytes"] = 0.into();
        }
    }
    r.record.client.stdout = json.to_string();
    r
}

/// Under the eBPF policy, a workload that delivered nothing did not pass
/// the policy, whatever the policy map counted.
#[test]
fn an_l4_workload_that_delivered_nothing_fails_the_policy_check() {
    let report = delivering_nothing("l4-policy").judge();
    assert_among_failed(
        &report,
        &["payload delivered", "l4-policy: the workload passed the policy once per connection"],
    );
}

/// A record kept in an evidence directory reads back as it was, and is
/// judged the same.
#[test]
fn a_kept_record_reads_back_the_same() {
    let r = recorded("none");
    let dir = tempfile::tempdir().unwrap();
    record::keep(dir.path(), &r.record).unwrap();
    let (again, pcaps) = record::load(dir.path()).unwrap();
    assert!(pcaps.is_empty());
    assert_eq!(serde_json::to_value(&again).unwrap(), serde_json::to_value(&r.record).unwrap());
    let judged = record::judge(&r.lab, &r.case, &again, &pcaps).unwrap();
    assert_eq!(serde_json::to_value(&judged.checks).unwrap(), serde_json::to_value(&r.judge().checks).unwrap());
}

/// The recorded case `fixture` with its evidence output `name` (read after
/// the case) rewritten by `edit`, which must change it.
fn output_edited(fixture: &str, name: &str, edit: impl Fn(&str) -> String) -> Recorded {
    let mut r = recorded(fixture);
    let text = r.record.after.get_mut(name).unwrap_or_else(|| panic!("no output {name}"));
    let changed = edit(text);
    assert_ne!(&changed, text, "the edit of {name} changed nothing");
    *text = changed;
    r
}

/// The recorded EVPN case with the daemon output `name` (under `evpn/`)
/// rewritten by `edit`.
fn evpn_with(name: &str, edit: impl Fn(&str) -> String) -> Recorded {
    output_edited("vxlan-evpn", &format!("evpn/{name}"), edit)
}

/// The control plane as the EVPN overlay reads it from the recorded case's
/// daemon outputs.
fn control_plane(r: &Recorded) -> vlab::overlay::evpn::ControlPlane {
    let outputs =
        r.record.after.iter().filter_map(|(k, v)| Some((k.strip_prefix("evpn/")?.to_string(), v.clone()))).collect();
    vlab::overlay::evpn::control_plane(&r.lab, &outputs)
}

/// What FRR and goBGP reported in the recorded case, read back field by
/// field: each session's state at both ends, each route's type, VNI (the
/// type-2 label, the type-3 PMSI tunnel label), MAC, VTEP and next hop, and
/// each MAC zebra holds.
#[test]
fn the_recorded_evpn_control_plane_reads_back() {
    insta::assert_json_snapshot!("evpn_control_plane", control_plane(&recorded("vxlan-evpn")));
}

/// goBGP's numeric session states are named as BGP names them (older goBGP
/// prints numbers, newer names; 6, Established, is the recording's own).
#[rstest::rstest]
#[case("1", "Idle")]
#[case("2", "Connect")]
#[case("3", "Active")]
#[case("4", "OpenSent")]
#[case("5", "OpenConfirm")]
#[case("7", "Unknown")]
#[case("\"BGP_FSM_ESTABLISHED\"", "BGP_FSM_ESTABLISHED")]
#[case("null", "Unknown")]
fn the_route_servers_session_states_are_named(#[case] state: &str, #[case] name: &str) {
    let r =
        evpn_with("rs-neighbors.json", |t| t.replacen("\"session_state\":6", &format!("\"session_state\":{state}"), 1));
    let cp = control_plane(&r);
    let states: Vec<&str> =
        cp.sessions.iter().filter(|s| s.speaker == "route-server").map(|s| s.state.as_str()).collect();
    assert_eq!(states, [name, "Established"]);
}

/// A session that is not Established fails the session check naming its
/// end: host1's FRR reports Active, or the route server reports host1 as
/// Active (goBGP's state 3), or host2's only session is with another peer
/// than the route server (no session with it).
#[rstest::rstest]
#[case::down_at_a_vm(
    "host1-bgp-summary.json",
    "\"state\":\"Established\"",
    "\"state\":\"Active\"",
    "host1 -> route server 10.255.0.2"
)]
#[case::down_at_the_route_server(
    "rs-neighbors.json",
    "\"session_state\":6",
    "\"session_state\":3",
    "route server -> host1 (11.0.0.1)"
)]
#[case::with_another_peer(
    "host2-bgp-summary.json",
    "\"10.255.0.2\":{",
    "\"10.255.0.9\":{",
    "host2 -> route server 10.255.0.2"
)]
fn a_session_not_established_fails_the_session_check(
    #[case] output: &str,
    #[case] from: &str,
    #[case] to: &str,
    #[case] end: &str,
) {
    let report = evpn_with(output, |t| t.replacen(from, to, 1)).judge();
    assert_eq!(failed(&report), ["EVPN: BGP sessions Established"]);
    assert_eq!(check(&report, "EVPN: BGP sessions Established").detail, format!("not Established: {end}"));
}

const ROUTES: &str = "EVPN: route server holds every VTEP's routes for VNI 100";

/// The route server's routes from host1, each rewritten by `edit` as JSON.
fn host1_routes(edit: impl Fn(&mut serde_json::Value)) -> Recorded {
    evpn_with("rs-adj-in-host1.json", |t| {
        let mut routes: serde_json::Value = serde_json::from_str(t).unwrap();
        edit(&mut routes);
        routes.to_string()
    })
}

/// host1's routes with `field` of the NLRI of each route whose key starts
/// with `kind` set to `value`.
fn host1_nlri(kind: &str, field: &str, value: serde_json::Value) -> Recorded {
    host1_routes(|routes| {
        for (key, paths) in routes.as_object_mut().unwrap() {
            if key.starts_with(kind) {
                paths[0]["nlri"]["value"][field] = value.clone();
            }
        }
    })
}

/// The route server holds no type-3 route from host1: nobody floods to it.
#[test]
fn a_missing_type3_route_fails_the_routes_check() {
    let r = host1_routes(|routes| routes.as_object_mut().unwrap().retain(|k, _| !k.starts_with("[type:multicast]")));
    let report = r.judge();
    assert_eq!(failed(&report), [ROUTES]);
    assert_eq!(check(&report, ROUTES).detail, "missing: type-3 VNI 100 VTEP 11.0.0.1 from host1");
}

/// host1's type-2 route carries another VNI (its label): the container's MAC
/// is not advertised in the lab's VNI.
#[test]
fn a_type2_route_in_another_vni_fails_the_routes_check() {
    let r = host1_nlri("[type:macadv]", "labels", serde_json::json!([200]));
    assert_eq!(check(&r.judge(), ROUTES).detail, "missing: type-2 VNI 100 MAC 52:54:00:c0:01:01 from host1");
}

/// host1's type-2 route advertises another MAC than its container's: the
/// container's MAC is not advertised.
#[test]
fn a_type2_route_for_another_mac_fails_the_routes_check() {
    let r = host1_nlri("[type:macadv]", "mac", "52:54:00:c0:01:09".into());
    assert_eq!(check(&r.judge(), ROUTES).detail, "missing: type-2 VNI 100 MAC 52:54:00:c0:01:01 from host1");
}

/// host1's type-3 route carries another VNI in its PMSI tunnel attribute.
#[test]
fn a_type3_route_in_another_vni_fails_the_routes_check() {
    let r = host1_routes(|routes| {
        for paths in routes.as_object_mut().unwrap().values_mut() {
            for attr in paths[0]["attrs"].as_array_mut().unwrap() {
                if attr["type"] == 22 {
                    attr["label"] = 200.into();
                }
            }
        }
    });
    assert_eq!(check(&r.judge(), ROUTES).detail, "missing: type-3 VNI 100 VTEP 11.0.0.1 from host1");
}

/// host1's routes name another next hop than its VTEP: traffic would be
/// tunnelled elsewhere.
#[test]
fn routes_with_another_next_hop_fail_the_routes_check() {
    let r = host1_routes(|routes| {
        for paths in routes.as_object_mut().unwrap().values_mut() {
            for attr in paths[0]["attrs"].as_array_mut().unwrap() {
                if attr["type"] == 14 {
                    attr["nexthop"] = "11.0.0.9".into();
                }
            }
        }
    });
    assert_eq!(
        check(&r.judge(), ROUTES).detail,
        "missing: type-3 VNI 100 VTEP 11.0.0.1 from host1; type-2 VNI 100 MAC 52:54:00:c0:01:01 from host1"
    );
}

/// host1's type-3 route names another VTEP: the flood list would point at it.
#[test]
fn a_type3_route_for_another_vtep_fails_the_routes_check() {
    let r = host1_nlri("[type:multicast]", "ip", "11.0.0.9".into());
    assert_eq!(check(&r.judge(), ROUTES).detail, "missing: type-3 VNI 100 VTEP 11.0.0.1 from host1");
}

const ZEBRA: &str = "EVPN: zebra learned the remote MACs";

/// Zebra on host1 holds host2's container MAC behind another VTEP.
#[test]
fn a_remote_mac_behind_another_vtep_fails_the_zebra_check() {
    let r =
        evpn_with("host1-evpn-mac.json", |t| t.replace("\"remoteVtep\":\"12.0.0.1\"", "\"remoteVtep\":\"12.0.0.9\""));
    let report = r.judge();
    assert_eq!(failed(&report), [ZEBRA]);
    assert_eq!(check(&report, ZEBRA).detail, "missing: host1: 52:54:00:c0:02:01 behind 12.0.0.1");
}

/// Zebra on host2 holds host1's container MAC as a local one.
#[test]
fn a_remote_mac_held_as_local_fails_the_zebra_check() {
    let r = evpn_with("host2-evpn-mac.json", |t| {
        let mut macs: serde_json::Value = serde_json::from_str(t).unwrap();
        macs["macs"]["52:54:00:c0:01:01"]["type"] = "local".into();
        macs.to_string()
    });
    assert_eq!(check(&r.judge(), ZEBRA).detail, "missing: host2: 52:54:00:c0:01:01 behind 11.0.0.1");
}

/// A check that failed in any round is held against the case in a study's
/// findings, once, after those of the round whose evidence the case keeps.
#[test]
fn a_check_failed_in_any_round_counts_in_the_findings() {
    let pass = recorded("iptables").judge();
    let names: Vec<String> = pass.checks.iter().map(|c| c.name.clone()).collect();
    let failing = |which: &[usize]| {
        let mut c = pass.clone();
        for &i in which {
            c.checks[i].passed = false;
        }
        c.passed = false;
        c
    };
    let cases =
        vlab::report::combine_repetitions(vec![vec![failing(&[0])], vec![failing(&[0, 2])], vec![pass.clone()]]);
    let report = report_of("filters", "6.12.0", cases);
    let measured = vlab::findings::Measured::of(&report);
    assert_eq!(measured[0].failed_checks, [names[0].clone(), names[2].clone()]);
    assert_eq!(measured[0].samples.len(), 3);
}

/// The recorded swarm case with Docker's output `name` (under `swarm/`)
/// rewritten by `edit`.
fn swarm_with(name: &str, edit: impl Fn(&str) -> String) -> Recorded {
    output_edited("swarm", &format!("swarm/{name}"), edit)
}

const NODES: &str = "swarm: every node Ready";
const DEVICES: &str = "swarm: each VM's overlay namespace bridges a VXLAN device with Docker's VNI";
const CROSSED: &str = "swarm: the workload crossed the overlay interface of each container";

/// What Docker reported in the recorded swarm case, read back: the nodes,
/// each VM's VNI, the network's subnet and gateway, the VXLAN devices and
/// bridges in the overlay namespaces, the daemons' memory.
#[test]
fn the_recorded_swarm_view_reads_back() {
    let report = recorded("swarm").judge();
    let section = report.variant.overlay.as_ref().expect("the swarm overlay has a section");
    insta::assert_json_snapshot!("swarm_docker_view", section.evidence);
}

/// A node that is not Ready fails the node check, naming its status.
#[test]
fn a_node_down_fails_the_node_check() {
    let r = swarm_with("nodes.json", |t| {
        let (first, second) = t.split_once('\n').unwrap();
        format!("{first}\n{}", second.replace("\"Status\":\"Ready\"", "\"Status\":\"Down\""))
    });
    let report = r.judge();
    assert_eq!(failed(&report), [NODES]);
    assert_eq!(check(&report, NODES).detail, "1 of 2 VMs: host1 Ready, host2 Down");
}

/// A third Ready node, not one of the lab's VMs, is not the lab's swarm.
#[test]
fn a_node_that_is_no_vm_fails_the_node_check() {
    let r = swarm_with("nodes.json", |t| {
        let first = t.lines().next().unwrap();
        format!("{t}{}\n", first.replace("\"host1\"", "\"host3\""))
    });
    let report = r.judge();
    assert_eq!(failed(&report), [NODES]);
    assert_eq!(
        check(&report, NODES).detail,
        "2 of 2 VMs: host1 Ready, host2 Ready, host3 Ready; not a VM of the lab: host3"
    );
}

/// Docker on host2 reports another VNI for the network: the VMs disagree,
/// and no VNI is the network's on the wire either.
#[test]
fn vms_that_disagree_on_the_vni_fail_the_device_check() {
    let r = swarm_with("network-host2.json", |t| t.replace("\"4097\"", "\"4098\""));
    let report = r.judge();
    assert_among_failed(&report, &[DEVICES]);
    assert!(check(&report, DEVICES).detail.starts_with("Docker's VNI disagrees between VMs or is missing;"));
}

/// A VNI below 4096 is not one Docker's overlay driver allocates: the
/// network is not Docker's (devices and networks all say 100).
#[test]
fn a_vni_below_dockers_range_fails_the_device_check() {
    let mut r = recorded("swarm");
    for (name, text) in r.record.after.iter_mut().filter(|(n, _)| n.starts_with("swarm/network-")) {
        *text = text.replace("\"4097\"", "\"100\"");
        assert!(text.contains("\"100\""), "{name}");
    }
    for (_, text) in r.record.after.iter_mut().filter(|(n, _)| n.starts_with("swarm/links-")) {
        *text = text.replace("\"id\":4097", "\"id\":100");
    }
    let report = r.judge();
    assert_among_failed(&report, &[DEVICES]);
    assert!(check(&report, DEVICES).detail.starts_with("Docker's VNI 100; devices host1 vxlan0 id 100"));
}

/// host2's overlay namespace has no bridge.
#[test]
fn an_overlay_namespace_without_the_bridge_fails_the_device_check() {
    let r = swarm_with("links-host2.json", |t| t.replace("\"ifname\":\"br0\"", "\"ifname\":\"br9\""));
    let report = r.judge();
    assert_eq!(failed(&report), [DEVICES]);
    assert!(
        check(&report, DEVICES).detail.ends_with("bridges host1 br0, host2 none"),
        "{}",
        check(&report, DEVICES).detail
    );
}

/// host1's VXLAN device carries another VNI than Docker's network.
#[test]
fn a_vxlan_device_with_another_vni_fails_the_device_check() {
    let r = swarm_with("links-host1.json", |t| t.replace("\"id\":4097", "\"id\":4098"));
    let report = r.judge();
    assert_eq!(failed(&report), [DEVICES]);
    assert!(check(&report, DEVICES).detail.contains("devices host1 vxlan0 id 4098 mtu 1450, host2 vxlan0 id 4097"));
}

/// The recorded swarm case judged with a third VM in its lab (host3, no
/// container), whose Docker evidence is host2's as `edit` changes it.
fn swarm_with_host3(edit: impl Fn(&str, &str) -> String) -> Recorded {
    let mut r = recorded("swarm");
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(fixture("swarm").join("lab.toml")).unwrap();
    let host3 =
        "[[vm]]\nname = \"host3\"\nunderlay = { ipv4 = \"10.0.0.3/24\" }\nnic = { model = \"virtio\", queues = 2 }\n\n";
    let text = text.replacen("[workload]", &format!("{host3}[workload]"), 1);
    std::fs::write(dir.path().join("lab.toml"), text).unwrap();
    let lab = vlab::variants::load_lab(&dir.path().join("lab.toml")).unwrap();
    r.lab = lab.for_case(&r.case);
    for name in ["links", "network", "memory"] {
        let file = |vm: &str| format!("swarm/{name}-{vm}.{}", if name == "memory" { "txt" } else { "json" });
        let text = edit(name, &r.record.after[&file("host2")]);
        r.record.after.insert(file("host3"), text);
    }
    r._dir = Some(dir);
    r
}

/// With three VMs, each VM's own bridge and VXLAN device count: host3's
/// namespace without the bridge, or without the VXLAN device, fails the
/// device check although the other two VMs have theirs.
#[test]
fn a_third_vm_without_its_bridge_or_device_fails_the_device_check() {
    let devices = |r: Recorded| {
        let report = r.judge();
        let c = check(&report, DEVICES);
        (c.passed, c.detail.clone())
    };
    assert!(devices(swarm_with_host3(|_, t| t.to_string())).0, "host3 as host2 passes");
    let no_bridge =
        |n: &str, t: &str| if n == "links" { t.replace("\"ifname\":\"br0\"", "\"ifname\":\"br9\"") } else { t.into() };
    let (passed, detail) = devices(swarm_with_host3(no_bridge));
    assert!(!passed && detail.ends_with("host3 none"), "{detail}");
    let other_vni = |n: &str, t: &str| if n == "links" { t.replace("\"id\":4097", "\"id\":4098") } else { t.into() };
    let (passed, detail) = devices(swarm_with_host3(other_vni));
    assert!(!passed && detail.contains("host3 vxlan0 id 4098"), "{detail}");
}

/// The container on host1 saw nothing of the workload on its overlay
/// interface.
#[test]
fn a_container_that_saw_no_workload_fails_the_crossing_check() {
    let mut r = recorded("swarm");
    emptied(r.pcap("host1-c1-eth0.pcap"));
    let report = r.judge();
    assert_among_failed(&report, &[CROSSED]);
    assert!(check(&report, CROSSED).detail.starts_with("host1/c1 eth0: 0 workload packets"));
}

/// The containers were captured on another interface than their overlay one.
#[test]
fn a_capture_on_another_interface_fails_the_crossing_check() {
    let mut r = recorded("swarm");
    let i = r.record.captures.iter().position(|c| c.container.as_deref() == Some("c2")).unwrap();
    r.record.captures[i].dev = "eth1".into();
    let report = r.judge();
    assert_among_failed(&report, &[CROSSED]);
    assert!(check(&report, CROSSED).detail.ends_with("host2/c2 eth1: 100 workload packets"));
}

/// No container capture at all is no evidence that the workload crossed.
#[test]
fn no_container_capture_fails_the_crossing_check() {
    let mut r = recorded("swarm");
    let keep: Vec<bool> = r.record.captures.iter().map(|c| c.container.is_none()).collect();
    let mut kept = keep.iter();
    r.record.captures.retain(|_| *kept.next().unwrap());
    let mut kept = keep.iter();
    r.pcaps.retain(|_| *kept.next().unwrap());
    let report = r.judge();
    assert_among_failed(&report, &[CROSSED]);
    assert_eq!(check(&report, CROSSED).detail, "no container captures");
}

/// Two Ready nodes that are not the lab's VMs (another swarm's) are not
/// the lab's swarm, though they are as many.
#[test]
fn nodes_of_another_swarm_fail_the_node_check() {
    let r = swarm_with("nodes.json", |t| t.replace("\"Hostname\":\"host", "\"Hostname\":\"other"));
    let report = r.judge();
    assert_eq!(failed(&report), [NODES]);
    assert_eq!(
        check(&report, NODES).detail,
        "0 of 2 VMs: other1 Ready, other2 Ready; not a VM of the lab: other1, other2"
    );
}

/// The policy methods' checks, by method.
fn held(method: &str) -> String {
    format!("{method}: the guests hold the rendered policy at every enforcement point")
}

fn agrees(method: &str) -> String {
    format!("{method}: the probe matrix agrees with the policy")
}

/// What each rule of the recorded policy cases took (the workload's
/// handshake through the allow, the matrix's probes through the deny and
/// the default), the rules counted, and the matrix, read back.
#[rstest::rstest]
fn the_recorded_policy_sections_read_back(#[values("iptables", "nftables")] method: &str) {
    let report = recorded(&format!("{method}-policy")).judge();
    let section = &report.variant.filter.as_ref().expect("a policy section").evidence;
    insta::assert_json_snapshot!(format!("policy_section_{method}"), section);
}

/// The rules' counters read around the probe matrix say which rules took
/// the probes: in the recorded case, db's two probes to the web container
/// (each sent twice: nothing answered the first SYN) taken by its deny on
/// host1 and the client's probe to db on TCP 5432 by db's deny on host2.
#[test]
fn the_rules_that_took_the_probes_are_read_around_the_matrix() {
    let report = recorded("iptables-policy").judge();
    let section = &report.variant.filter.as_ref().expect("a policy section").evidence;
    let took: Vec<String> = section["probe_hits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| format!("{} {} {}", h["at"].as_str().unwrap(), h["packets"], h["rule"].as_str().unwrap()))
        .collect();
    for hit in [
        "host1 4 iptables -A VLAB-IN-258 -s 10.1.3.2/32 -j VLAB-DROP",
        "host1 2 iptables -A VLAB-IN-258 -s 10.1.2.2/32 -j ACCEPT",
        "host2 2 iptables -A VLAB-IN-257 -s 10.1.2.2/32 -p tcp -m tcp --dport 5432 -j VLAB-DROP",
    ] {
        assert!(took.iter().any(|t| t == hit), "{hit} not in {took:#?}");
    }
    // The workload's hits are the case's: its own reads, not the matrix's.
    let hits = section["hits"].as_array().unwrap();
    assert!(hits.iter().all(|h| !h["rule"].as_str().unwrap().contains("VLAB-DROP")), "{hits:?}");
}

fn traced(method: &str) -> String {
    format!("{method}: each probe is traced to the rules that took it, and their counters took the traced packets")
}

/// The probes of a cell with the traced packets of another: every line of
/// `vm`'s matrix trace about packets from `src` to `dst` on TCP `port`
/// taken out (a trace id's lines are all about one packet).
fn untraced(r: &mut Recorded, vm: &str, (src, dst, port): (&str, &str, u16)) {
    let m = r.record.matrix.as_mut().unwrap();
    let file = format!("trace-{vm}.txt");
    let text = m.after[&file].clone();
    let packet = |l: &str| {
        let w: Vec<&str> = l.split_whitespace().collect();
        let nft = w.windows(3).any(|x| x == ["saddr", src, "ip"]) && l.contains(&format!(" daddr {dst} "));
        let xt = l.contains(&format!("SRC={src} DST={dst} "));
        (nft || xt) && (l.contains(&format!("dport {port} ")) || l.contains(&format!("DPORT={port} ")))
    };
    let ids: Vec<String> = text
        .lines()
        .filter(|l| packet(l))
        .filter_map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            match w.as_slice() {
                ["trace", "id", id, ..] | ["PACKET:", _, id, ..] => Some(id.to_string()),
                _ => None,
            }
        })
        .collect();
    assert!(!ids.is_empty(), "no packet {src} -> {dst} {port} in {file}");
    let kept: Vec<&str> = text.lines().filter(|l| !ids.iter().any(|id| l.contains(&format!(" {id} ")))).collect();
    m.after.insert(file, kept.join("\n"));
}

/// The client's probe to db on TCP 5432 is not in host2's trace: no
/// evidence says which rule took it, and the deny's counter took packets
/// that no traced probe met.
#[rstest::rstest]
fn a_probe_missing_from_the_trace_fails(#[values("iptables", "nftables")] method: &str) {
    let mut r = recorded(&format!("{method}-policy"));
    untraced(&mut r, "host2", ("10.1.2.2", "10.1.3.2", 5432));
    let report = r.judge();
    assert_eq!(failed(&report), [traced(method)]);
    let detail = &check(&report, &traced(method)).detail;
    assert!(detail.contains("c2 -> c3 tcp/5432: not traced"), "{detail}");
    assert!(detail.contains("packets, traced 0"), "{detail}");
}

/// iptables on host1 counted a packet more on db's deny during the matrix
/// than the trace shows: something else than a probe took it.
#[test]
fn a_rule_that_counted_an_untraced_packet_fails() {
    let mut r = recorded("iptables-policy");
    let m = r.record.matrix.as_mut().unwrap();
    let file = "iptables-policy-host1.txt";
    let deny = "-A VLAB-IN-258 -s 10.1.3.2/32 -c 4 240 -j VLAB-DROP";
    assert!(m.after[file].contains(deny));
    let more = m.after[file].replacen(deny, "-A VLAB-IN-258 -s 10.1.3.2/32 -c 5 300 -j VLAB-DROP", 1);
    m.after.insert(file.into(), more);
    let report = r.judge();
    assert_eq!(failed(&report), [traced("iptables")]);
    assert_eq!(
        check(&report, &traced("iptables")).detail,
        "host1: `iptables -A VLAB-IN-258 -s 10.1.3.2/32 -j VLAB-DROP` counted 5 packets, traced 4"
    );
}

/// No trace was read after the matrix on host1 (a monitor that never
/// started).
#[test]
fn a_matrix_without_its_trace_fails() {
    let mut r = recorded("nftables-policy");
    r.record.matrix.as_mut().unwrap().after.remove("trace-host1.txt").expect("a trace");
    let report = r.judge();
    assert_eq!(failed(&report), [traced("nftables")]);
}

/// iptables on host1 lost the allow of the client (its line is not in the
/// listing after the case): the rules read back are not the rendered ones.
#[test]
fn an_iptables_policy_read_back_without_a_rule_fails() {
    let allow = "-A VLAB-IN-258 -s 10.1.2.2/32 -c 2 120 -j ACCEPT\n";
    let r = output_edited("iptables-policy", "iptables-policy-host1.txt", |t| t.replacen(allow, "", 1));
    let report = r.judge();
    assert_eq!(failed(&report), [held("iptables")]);
    let detail = &check(&report, &held("iptables")).detail;
    assert!(detail.starts_with("host1: read back ["), "{detail}");
    assert!(!detail.contains("host2"), "{detail}");
}

/// iptables on host1 holds the allow of db before its deny: the rules are
/// all there, but a chain is read in order, so the deny no longer wins.
#[test]
fn an_iptables_policy_read_back_in_another_order_fails() {
    let r = output_edited("iptables-policy", "iptables-policy-host1.txt", |t| {
        let deny = "-A VLAB-IN-258 -s 10.1.3.2/32 -c 0 0 -j VLAB-DROP\n";
        let allow = "-A VLAB-IN-258 -s 10.1.3.2/32 -c 0 0 -j ACCEPT\n";
        t.replacen(deny, "", 1).replacen(allow, &format!("{allow}{deny}"), 1)
    });
    assert_eq!(failed(&r.judge()), [held("iptables")]);
}

/// nftables on host2 lost a rule of its table.
#[test]
fn an_nftables_policy_read_back_without_a_rule_fails() {
    let r = output_edited("nftables-policy", "nftables-policy-host2.txt", |t| {
        let mut doc: serde_json::Value = serde_json::from_str(t).unwrap();
        let items = doc["nftables"].as_array_mut().unwrap();
        let at = items.iter().position(|i| i["rule"]["comment"] == "default").expect("a default rule");
        items.remove(at);
        doc.to_string()
    });
    let report = r.judge();
    assert_eq!(failed(&report), [held("nftables")]);
    assert!(check(&report, &held("nftables")).detail.starts_with("host2: read back ["));
}

/// The rules were not read before the case on host2: nothing says what
/// they took during it.
#[test]
fn a_policy_not_read_before_the_case_fails() {
    let mut r = recorded("nftables-policy");
    r.record.before.remove("nftables-policy-host2.txt").expect("read before");
    let report = r.judge();
    assert_eq!(failed(&report), [held("nftables")]);
    assert_eq!(check(&report, &held("nftables")).detail, "host2: not read before and after the case");
}

/// The probe from db (c3) to web on TCP 5432, which the policy denies,
/// connected.
#[rstest::rstest]
fn a_denied_probe_that_connected_fails_the_matrix(#[values("iptables", "nftables")] method: &str) {
    let mut r = recorded(&format!("{method}-policy"));
    let m = r.record.matrix.as_mut().unwrap();
    let cell = m.cells.iter_mut().find(|c| c.from == "c3" && c.to == "c1" && c.port == 5432).unwrap();
    assert_ne!(cell.outcome, ProbeOutcome::Connected);
    cell.outcome = ProbeOutcome::Connected;
    let report = r.judge();
    // Its traced packets met the deny: the trace says so too.
    assert_eq!(failed(&report), [agrees(method), traced(method)]);
    assert!(check(&report, &traced(method)).detail.contains("c3 -> c1 tcp/5432: met a dropping rule, and connected"));
    assert!(
        check(&report, &agrees(method)).detail.contains("c3 -> c1 TCP 5432"),
        "{}",
        check(&report, &agrees(method)).detail
    );
}

/// The probes the policy denies timed out, but host1 logged no drop during
/// the matrix: something else lost them.
#[rstest::rstest]
fn denied_probes_lost_without_a_logged_drop_fail_the_matrix(#[values("iptables", "nftables")] method: &str) {
    let mut r = recorded(&format!("{method}-policy"));
    let m = r.record.matrix.as_mut().unwrap();
    let before = m.before["drops-host1.txt"].clone();
    m.after.insert("drops-host1.txt".into(), before);
    let report = r.judge();
    assert_eq!(failed(&report), [agrees(method)]);
}

/// A case whose policy is not on the lab's policy axis (a lab file changed
/// since the run) is judged against no policy: none of the filter's own.
#[test]
fn a_policy_not_on_the_axis_fails_the_compile_check() {
    let mut r = recorded("iptables-policy");
    r.case.params.variant.insert("policy".into(), "gone".into());
    let report = r.judge();
    assert_eq!(failed(&report), ["iptables: the policy compiles"]);
    assert_eq!(
        check(&report, "iptables: the policy compiles").detail,
        "no policy `gone` on the lab's `matrix.policy` axis"
    );
}

/// A feature is refused when the interface reads back another state than
/// the one requested; one left to the driver is never refused.
#[test]
fn only_a_requested_feature_can_be_refused() {
    use vlab::measure::nic::OffloadState;
    let mut i = recorded("none").record.interfaces[0].clone();
    i.offloads = [
        ("tso".to_string(), OffloadState { requested: None, actual: Some(true), fixed: false }),
        ("gso".to_string(), OffloadState { requested: Some(true), actual: Some(true), fixed: false }),
        ("gro".to_string(), OffloadState { requested: Some(false), actual: Some(true), fixed: true }),
        ("lro".to_string(), OffloadState { requested: Some(true), actual: None, fixed: false }),
    ]
    .into();
    assert_eq!(i.refused(), ["gro=on [fixed]", "lro=n/a"]);
}

/// A case with an end outside the containers (the VM itself) did not cross
/// the tunnel: the overlay judges no tunnel for it.
#[test]
fn a_case_with_an_end_on_the_vm_judges_no_tunnel() {
    let mut r = recorded("vxlan");
    r.record.ends[1].container = None;
    let report = r.judge();
    let names: Vec<&str> = report.checks.iter().map(|c| c.name.as_str()).collect();
    assert!(!names.iter().any(|n| n.starts_with("VXLAN:")), "{names:?}");
}

/// A run's report of `lab` on `kernel` with these cases.
fn report_of(lab: &str, kernel: &str, cases: Vec<CaseReport>) -> vlab::report::Report {
    let mut report: vlab::report::Report = serde_json::from_value(serde_json::json!({
        "lab": lab, "lab_file": format!("{lab}.toml"), "accel": "tcg", "kernel": kernel, "qemu": "10.0.2",
        "image": "trixie", "overlay": "baseline", "filter": "iptables", "vms": [], "passed": true, "repeat": 3,
        "wall_s": 1.0, "timing": { "image_s": 0.0, "probe_s": 0.0, "boots": [] },
    }))
    .unwrap();
    report.cases = cases;
    report
}

/// The recorded iptables case over three rounds at these throughputs.
fn rounds_at(bps: [f64; 3]) -> Vec<CaseReport> {
    let one = recorded("iptables").judge();
    let rounds = bps.iter().map(|&b| vec![CaseReport { throughput_bps: b, ..one.clone() }]).collect();
    vlab::report::combine_repetitions(rounds)
}

/// Kernels compared in one run, round by round: a kernel slower in every
/// round by more than the tolerance has regressed; one as fast has not.
#[test]
fn a_kernel_slower_in_every_round_has_regressed() {
    let a = report_of("filters", "6.1", rounds_at([1e9, 1.1e9, 0.9e9]));
    let slower = report_of("filters", "6.12", rounds_at([0.5e9, 0.56e9, 0.44e9]));
    let same = report_of("filters", "6.12", rounds_at([1e9, 1.1e9, 0.9e9]));
    let c = vlab::compare::compare_paired(&a, &slower, 0.05);
    assert!(c.regressed, "{}", c.table());
    assert_eq!(c.cases[0].change, vlab::stats::Change::Slower);
    let c = vlab::compare::compare_paired(&a, &same, 0.05);
    assert!(!c.regressed, "{}", c.table());
}

/// A run's reports, lab by lab and each lab's kernels in order, regrouped
/// per kernel.
#[test]
fn reports_are_regrouped_per_kernel() {
    let reports: Vec<_> = [("filters", "6.1"), ("filters", "6.12"), ("vxlan", "6.1"), ("vxlan", "6.12")]
        .into_iter()
        .map(|(lab, kernel)| report_of(lab, kernel, Vec::new()))
        .collect();
    let per: Vec<Vec<(String, String)>> = vlab::findings::per_kernel(&reports, 2)
        .into_iter()
        .map(|rs| rs.into_iter().map(|r| (r.lab.clone(), r.kernel.clone())).collect())
        .collect();
    let pair = |lab: &str, kernel: &str| (lab.to_string(), kernel.to_string());
    assert_eq!(
        per,
        [vec![pair("filters", "6.1"), pair("vxlan", "6.1")], vec![pair("filters", "6.12"), pair("vxlan", "6.12")]]
    );
    assert_eq!(vlab::findings::per_kernel(&reports, 1).len(), 1);
}

/// Both VMs' CPU times over the workload: `busy` of `total` ticks each.
fn with_cpu(r: &mut Recorded, busy: u64, total: u64) {
    use vlab::measure::cost::{CpuTimes, CpuWindow};
    let window = |vm: &str| CpuWindow {
        vm: vm.into(),
        before: CpuTimes { busy: 1000, total: 10_000 },
        after: CpuTimes { busy: 1000 + busy, total: 10_000 + total },
    };
    r.record.cpu = vec![window("host1"), window("host2")];
}

/// The packet cost counts what the sender's NIC put on the wire (host2/c2
/// sends): host2's underlay NIC, whose capture shows the sizes; on a VF,
/// the container's interface. A record without CPU times (older vlab) has
/// none.
#[test]
fn the_packet_cost_counts_what_the_senders_nic_sent() {
    let mut r = recorded("vxlan");
    assert!(r.judge().cost.is_none(), "no CPU times, no cost");
    with_cpu(&mut r, 300, 400);
    let report = r.judge();
    let cost = report.cost.expect("a cost");
    assert_eq!((cost.packets, cost.bytes), (121_033, 183_207_823));
    assert_eq!((cost.cpu_s, cost.busy_share), (6.0, 0.75));
    let sizes = cost.sizes.expect("host2's underlay was captured");
    assert_eq!((sizes.mtu, sizes.over_mtu), (1500, 0), "VXLAN cut to the MTU before the NIC: {sizes:?}");
    assert!(sizes.packets > 0 && sizes.largest <= 1500, "{sizes:?}");
    let mut vf = recorded("igb-vf");
    with_cpu(&mut vf, 300, 400);
    let cost = vf.judge().cost.expect("a cost");
    assert_eq!((cost.packets, cost.bytes), (490_955, 743_022_333), "host2/c2's VF, not the PF");
}

/// The recorded VXLAN case beside the recorded routed one (overlay
/// baseline) as its baseline sibling: the throughput ratio is exactly the
/// product of its factors, and VXLAN took 40.7x the packets per byte (the
/// routed case's NIC moved 57 KB segments).
#[test]
fn a_ratio_to_the_baseline_splits_into_packets_per_byte_and_cpu_per_packet() {
    let (mut v, mut b) = (recorded("vxlan"), recorded("none"));
    with_cpu(&mut v, 300, 400);
    with_cpu(&mut b, 360, 400);
    let (mut v, mut b) = (v.judge(), b.judge());
    v.params.overlay = Some("vxlan".into());
    b.params = vlab::lab::CaseParams { overlay: Some("baseline".into()), ..v.params.clone() };
    let mut cases = vec![b.clone(), v.clone()];
    vlab::report::compare_with(&mut cases, vlab::report::Versus::Overlay, "baseline");
    let split = cases[1].vs_baseline_split.expect("a split");
    let ratio = cases[1].vs_baseline.unwrap();
    assert!((split.ratio - ratio).abs() < 1e-9 * ratio, "{split:?} vs {ratio}");
    let (vc, bc) = (v.cost.unwrap(), b.cost.unwrap());
    let ppb = (121_033.0 / vc.payload_bytes as f64) / (27_786.0 / bc.payload_bytes as f64);
    assert!((split.packets_per_byte - ppb).abs() < 1e-9 && (40.7..40.8).contains(&split.packets_per_byte), "{split:?}");
    assert!((split.cpu_per_s - (6.0 / vc.seconds) / (7.2 / bc.seconds)).abs() < 1e-9, "{split:?}");
    assert_eq!(split.segmented_before_nic, None, "the routed case has no capture to compare");
    assert!(cases[0].vs_baseline_split.is_none(), "the baseline has no split of its own");
    let text = cases[1].vs_baseline_split.unwrap().text();
    assert!(text.starts_with(&format!("{ratio:.2}x = {:.2}x packets per byte", split.packets_per_byte)), "{text}");
    // Without the baseline's cost, no split.
    let mut cases = vec![vlab::report::CaseReport { cost: None, ..b }, v];
    vlab::report::compare_with(&mut cases, vlab::report::Versus::Overlay, "baseline");
    assert!(cases[1].vs_baseline.is_some() && cases[1].vs_baseline_split.is_none());
}

/// The recorded ILA case with two cases' names, on one kernel: `fails`
/// names, per case, the checks made to fail there; `unjudged` the checks its
/// evidence is made to hold nothing for.
fn ila_on(kernel: &str, fails: [&[&str]; 2], unjudged: &[&str]) -> vlab::report::Report {
    let one = recorded("ila").judge();
    let cases = ["csum-mode=adj-transport", "csum-mode=no-action"]
        .iter()
        .zip(fails)
        .map(|(name, fails)| {
            let mut case = CaseReport { name: name.to_string(), ..one.clone() };
            for check in &mut case.checks {
                check.passed = !fails.contains(&check.name.as_str());
                check.not_judged = unjudged.contains(&check.name.as_str());
            }
            case.passed = case.checks.iter().all(|c| c.passed);
            case
        })
        .collect();
    report_of("ila-matrix", kernel, cases)
}

const WIRE: &str = "ILA: wire checksums as documented";
const CONTAINERS: &str = "ILA: receivers counted no checksum errors";

/// Each check that failed on some kernel, case by case, with its verdict on
/// every kernel, and the kernels that show it; a check not judged on a
/// kernel is not called absent there.
#[test]
fn findings_name_the_kernels_that_show_them() {
    let reports = [
        ila_on("6.1.0-57-amd64", [&[WIRE], &[WIRE, CONTAINERS]], &[]),
        ila_on("6.12.95+deb12-amd64", [&[WIRE], &[]], &[]),
        ila_on("6.12.117+deb13-amd64", [&[WIRE], &[]], &[CONTAINERS]),
    ];
    let all = vlab::presence::by_kernel(&reports);
    assert_eq!(all.len(), 1);
    let f = &all[0];
    let rows: Vec<(&str, &str, Vec<vlab::presence::Verdict>)> =
        f.findings.iter().map(|r| (r.check.as_str(), r.case.as_str(), r.verdicts.clone())).collect();
    use vlab::presence::Verdict::{Failed, NotJudged, Passed};
    assert_eq!(
        rows,
        [
            (WIRE, "csum-mode=adj-transport", vec![Failed, Failed, Failed]),
            (WIRE, "csum-mode=no-action", vec![Failed, Passed, Passed]),
            (CONTAINERS, "csum-mode=no-action", vec![Failed, Passed, NotJudged]),
        ]
    );
    let lines: Vec<String> = f.checks.iter().map(|p| p.line(&f.kernels)).collect();
    assert_eq!(
        lines,
        [
            "present on: 6.1.0-57-amd64 yes (2 of 2 cases), 6.12.95+deb12-amd64 yes (1 of 2 cases), \
             6.12.117+deb13-amd64 yes (1 of 2 cases)",
            "present on: 6.1.0-57-amd64 yes (1 of 2 cases), 6.12.95+deb12-amd64 no (0 of 2 cases), \
             6.12.117+deb13-amd64 not judged",
        ]
    );
    let differ: Vec<bool> = f.findings.iter().map(vlab::presence::Finding::differs).collect();
    assert_eq!(differ, [false, true, true]);
    insta::assert_snapshot!("findings-by-kernel", format!("{}\n{}", f.table(), f.markdown()));
}

/// One kernel has no such section; kernels on which nothing failed say so;
/// a kernel given twice is told apart by its place.
#[test]
fn findings_by_kernel_need_two_kernels_and_say_when_there_are_none() {
    assert!(vlab::presence::by_kernel(&[ila_on("6.1", [&[WIRE], &[]], &[])]).is_empty());
    let clean = vlab::presence::by_kernel(&[ila_on("6.1", [&[], &[]], &[]), ila_on("6.1", [&[], &[]], &[])]);
    assert_eq!(clean[0].kernels, ["6.1 (#1)", "6.1 (#2)"]);
    assert!(clean[0].findings.is_empty());
    assert_eq!(
        clean[0].table(),
        "lab ila-matrix: findings by kernel\nno check failed on any kernel (6.1 (#1), 6.1 (#2))\n"
    );
}
