//! Capture summaries against pcaps taken by vlab in the baseline lab
//! (tcpdump -s 128 in the guests), cross-checked with tshark.

use std::process::Command;

use vlab::measure::capture::{checksum_verdicts, file_name, summarize, tcpdump_argv, CaptureContext};
use vlab::measure::checksum::ChecksumStatus;

fn plain(port: u16) -> CaptureContext<'static> {
    CaptureContext::plain(port, 1500)
}

/// tshark, the independent decoder these tests compare with: missing, the
/// tests fail and say what to do, like every other missing prerequisite.
fn tshark() -> std::path::PathBuf {
    which::which("tshark").unwrap_or_else(|_| panic!("tshark is missing: run ci/setup (it installs tshark)"))
}

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(format!("{}/tests/fixtures/pcap/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

#[test]
fn truncated_tcp_captures_are_counted_per_layer() {
    let v4 = summarize(&fixture("baseline-ipv4-host1-underlay.pcap"), &plain(5201)).unwrap();
    assert_eq!((v4.packets, v4.ipv4, v4.ipv6, v4.tcp, v4.udp, v4.workload), (200, 200, 0, 200, 0, 200));
    let v6 = summarize(&fixture("baseline-ipv6-host2-c2-eth0.pcap"), &plain(5201)).unwrap();
    assert_eq!((v6.packets, v6.ipv4, v6.ipv6, v6.tcp, v6.workload), (200, 0, 200, 200, 200));
    // Another port: none of it is the workload.
    assert_eq!(summarize(&fixture("baseline-ipv4-host1-underlay.pcap"), &plain(80)).unwrap().workload, 0);
}

#[test]
fn a_capture_cut_mid_packet_keeps_its_complete_packets() {
    let full = fixture("baseline-ipv4-host1-underlay.pcap");
    let cut = &full[..full.len() - 10];
    assert_eq!(summarize(cut, &plain(5201)).unwrap().packets, 199);
    assert!(summarize(b"not a pcap", &plain(5201)).is_err());
}

/// Every pcap kept as a fixture, in name order.
fn every_fixture() -> Vec<std::path::PathBuf> {
    let dir = format!("{}/tests/fixtures/pcap", env!("CARGO_MANIFEST_DIR"));
    let mut files: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    files
}

/// The `fields` of each packet of `pcap` that `filter` keeps, as tshark
/// decodes them (with `options`).
fn tshark_fields(pcap: &std::path::Path, options: &[&str], filter: &str, fields: &[&str]) -> Vec<Vec<String>> {
    let mut cmd = Command::new(tshark());
    cmd.arg("-r").arg(pcap).args(options).args(["-Y", filter, "-T", "fields"]);
    for f in fields {
        cmd.args(["-e", f]);
    }
    let out = cmd.output().expect("tshark runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).lines().map(|l| l.split('\t').map(str::to_string).collect()).collect()
}

/// tshark is an independent decoder (ci/setup installs it): its counts must match.
#[test]
fn tshark_agrees() {
    for (file, filter) in [
        ("baseline-ipv4-host1-underlay.pcap", "ip && tcp.port == 5201"),
        ("baseline-ipv6-host2-c2-eth0.pcap", "ipv6 && tcp.port == 5201"),
    ] {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/pcap").join(file);
        let theirs = tshark_fields(&path, &[], filter, &["frame.number"]).len() as u64;
        assert_eq!(summarize(&fixture(file), &plain(5201)).unwrap().workload, theirs, "{file}");
    }
}

/// tshark's TCP checksum verdicts (`-o tcp.check_checksum:TRUE`, field
/// `tcp.checksum.status`: 0 bad, 1 good, 2 unverified), frame by frame, on
/// every pcap kept as a fixture. tshark cannot know that a checksum was left
/// to the NIC or that a segment is a TSO/GRO aggregate: it calls those bad,
/// so its bad count is vlab's invalid + offloaded + oversized. It also calls a
/// valid checksum bad when the field holds 0xffff for 0x0000 (ones'
/// complement negative zero, RFC 1624): vlab counts those as valid and as
/// `negative_zero` (fixture `ila-adj-transport-negative-zero.pcap`: a guest's
/// ILA SYN-ACK).
#[test]
fn tshark_agrees_on_checksums() {
    for path in every_fixture() {
        let theirs: Vec<(u64, u8)> =
            tshark_fields(&path, &["-o", "tcp.check_checksum:TRUE"], "tcp", &["frame.number", "tcp.checksum.status"])
                .iter()
                .map(|f| (f[0].parse().unwrap(), f[1].parse().unwrap()))
                .collect();
        let ours = checksum_verdicts(&std::fs::read(&path).unwrap(), &plain(5201)).unwrap();
        assert_eq!(ours.len(), theirs.len(), "{path:?}: TCP segments");
        for ((frame, verdict, negative_zero), (their_frame, status)) in ours.iter().zip(&theirs) {
            assert_eq!(frame, their_frame);
            let expected = match verdict {
                ChecksumStatus::Valid if *negative_zero => 0,
                ChecksumStatus::Valid => 1,
                ChecksumStatus::Invalid | ChecksumStatus::Offloaded | ChecksumStatus::Oversized => 0,
                ChecksumStatus::Truncated => 2,
            };
            assert_eq!(*status, expected, "{path:?} frame {frame}: vlab says {verdict:?}");
        }
        let bad = theirs.iter().filter(|(_, s)| *s == 0).count();
        let invalid = ours.iter().filter(|(_, v, _)| *v == ChecksumStatus::Invalid).count();
        let unjudged =
            ours.iter().filter(|(_, v, _)| matches!(v, ChecksumStatus::Offloaded | ChecksumStatus::Oversized)).count();
        let negative_zero = ours.iter().filter(|(_, _, z)| *z).count();
        assert_eq!(bad, invalid + unjudged + negative_zero, "{path:?}");
        if path.ends_with("ila-adj-transport-negative-zero.pcap") {
            assert_eq!(negative_zero, 1, "the fixture's SYN-ACK carries 0xffff");
        }
    }
}

/// Every workload segment's source port, raw sequence number and payload
/// length (from the IP and TCP headers, also where the capture cut the
/// packet: vlab captures with a small snap length) as tshark reads them
/// (`tcp.len`), on every pcap kept as a fixture, IPv4 and IPv6.
#[test]
fn tshark_agrees_on_segment_lengths() {
    let mut with_data = 0;
    for path in every_fixture() {
        let theirs: Vec<(u16, u32, u32)> =
            tshark_fields(&path, &[], "tcp.port == 5201", &["tcp.srcport", "tcp.seq_raw", "tcp.len"])
                .iter()
                .map(|f| (f[0].parse().unwrap(), f[1].parse().unwrap(), f[2].parse().unwrap()))
                .collect();
        let summary = summarize(&std::fs::read(&path).unwrap(), &plain(5201)).unwrap();
        let ours: Vec<_> = summary.segments.iter().map(|s| (s.sport, s.seq, s.payload)).collect();
        assert_eq!(ours, theirs, "{path:?}");
        with_data += ours.iter().filter(|s| s.2 > 0).count();
    }
    assert!(with_data > 100, "the fixtures carry data: {with_data} segments");
}

#[test]
fn capture_files_and_command_lines() {
    assert_eq!(file_name("host1", None, "underlay"), "host1-underlay.pcap");
    assert_eq!(file_name("host1", Some("c1"), "eth0"), "host1-c1-eth0.pcap");
    assert_eq!(
        tcpdump_argv("underlay", "/tmp/x.pcap", 200, 128, "port 5201").join(" "),
        "tcpdump -i underlay -n -U -Z root -w /tmp/x.pcap -c 200 -s 128 port 5201"
    );
}

/// A pcap file (Ethernet) holding `frames`.
fn pcap_of(frames: &[Vec<u8>]) -> Vec<u8> {
    let mut p = vec![0xd4, 0xc3, 0xb2, 0xa1, 2, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0, 0, 1, 0, 0, 0];
    for f in frames {
        let len = (f.len() as u32).to_le_bytes();
        p.extend([0u8; 8]);
        p.extend(len);
        p.extend(len);
        p.extend(f);
    }
    p
}

/// An IPv6 segment with a destination options header: its payload length
/// leaves out the extension as well as the fixed and the TCP header.
#[test]
fn an_ipv6_extension_header_is_not_payload() {
    let data = b"0123456789";
    let mut f = vec![0x52, 0x54, 0, 0x4c, 1, 1, 0x52, 0x54, 0, 0x4c, 2, 1, 0x86, 0xdd];
    f.extend([0x60, 0, 0, 0]);
    f.extend(((8 + 20 + data.len()) as u16).to_be_bytes());
    f.extend([60, 64]); // destination options, hop limit
    f.extend("fd00::2".parse::<std::net::Ipv6Addr>().unwrap().octets());
    f.extend("fd00::1".parse::<std::net::Ipv6Addr>().unwrap().octets());
    f.extend([6, 0, 1, 4, 0, 0, 0, 0]); // next header TCP, 8 bytes, PadN
    f.extend(40_000u16.to_be_bytes());
    f.extend(5201u16.to_be_bytes());
    f.extend([0, 0, 0, 1, 0, 0, 0, 1, 0x50, 0x18, 0xff, 0xff, 0, 0, 0, 0]);
    f.extend(data);
    let summary = summarize(&pcap_of(&[f]), &plain(5201)).unwrap();
    let got: Vec<(u16, u32)> = summary.segments.iter().map(|s| (s.sport, s.payload)).collect();
    assert_eq!(got, [(40_000, 10)]);
}

/// A segment holds another when the other's bytes of the stream lie within
/// its own, from the same source, ports and acknowledgment.
#[test]
fn a_segment_holds_only_the_parts_of_its_own_bytes() {
    use vlab::measure::capture::SegmentRecord;
    let seg = |seq: u32, payload: u32, ack: u32| SegmentRecord {
        src: "fd00::1".parse().unwrap(),
        dst: "fd00::2".parse().unwrap(),
        sport: 40_000,
        dport: 5201,
        seq,
        ack,
        payload,
        checksum: ChecksumStatus::Valid,
        field: 0,
        for_captured: None,
        for_original: None,
    };
    let big = seg(1000, 3000, 7);
    for (part, holds) in [
        (seg(1000, 3000, 7), true),  // itself
        (seg(1000, 1448, 7), true),  // its first GSO part
        (seg(2448, 1552, 7), true),  // its last part, ending where it ends
        (seg(2448, 1553, 7), false), // one byte past its end
        (seg(3999, 100, 7), false),  // starts within, ends beyond
        (seg(4000, 100, 7), false),  // the next segment
        (seg(900, 100, 7), false),   // before it
        (seg(1000, 1448, 8), false), // another acknowledgment
        (seg(1000, 0, 7), false),    // a bare acknowledgment is only itself
    ] {
        assert_eq!(big.holds(&part), holds, "{} bytes at {}", part.payload, part.seq);
    }
    assert!(seg(1000, 0, 7).holds(&seg(1000, 0, 7)));
    assert!(!seg(1000, 0, 7).holds(&seg(1001, 0, 7)));
}

/// The flows seen are exactly the flows expected: none missing, none more,
/// and something seen.
#[test]
fn flows_are_exactly_the_expected_ones() {
    use vlab::measure::capture::{flows_are, Flow};
    let f = |s: &str, d: &str| Flow { src: s.parse().unwrap(), dst: d.parse().unwrap() };
    let (a, b, x) = (f("10.0.0.1", "10.0.0.2"), f("10.0.0.2", "10.0.0.1"), f("10.0.0.9", "10.0.0.2"));
    assert!(flows_are(&[a, b, a], &[a, b]));
    assert!(!flows_are(&[a], &[a, b]), "one missing");
    assert!(!flows_are(&[a, b, x], &[a, b]), "one more");
    assert!(!flows_are(&[x], &[a, b]));
    assert!(!flows_are(&[], &[]), "nothing seen");
}

/// A UDP datagram to the VXLAN port is VXLAN only with a whole header whose
/// I flag is set: a short one or one without the flag is not counted (and
/// a short one does not read past its end).
#[test]
fn only_whole_vxlan_headers_with_the_i_flag_count() {
    // An inner Ethernet frame: IPv4 UDP 10.1.0.1 -> 10.1.0.2, no payload.
    let mut inner = vec![0x52, 0x54, 0, 0, 0, 2, 0x52, 0x54, 0, 0, 0, 1, 0x08, 0x00];
    inner.extend([0x45, 0, 0, 28, 0, 0, 0x40, 0, 64, 17, 0, 0, 10, 1, 0, 1, 10, 1, 0, 2]);
    inner.extend([0x30, 0x39, 0x30, 0x39, 0, 8, 0, 0]);
    let outer = |vxlan: &[u8]| {
        let mut f = vec![0x52, 0x54, 0, 0x4c, 1, 1, 0x52, 0x54, 0, 0x4c, 2, 1, 0x08, 0x00];
        let udp_len = (8 + vxlan.len()) as u16;
        f.extend([0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 17, 0, 0, 192, 168, 0, 1, 192, 168, 0, 2]);
        f[16..18].copy_from_slice(&(20 + udp_len).to_be_bytes());
        f.extend(50_000u16.to_be_bytes());
        f.extend(4789u16.to_be_bytes());
        f.extend(udp_len.to_be_bytes());
        f.extend([0, 0]);
        f.extend(vxlan);
        f
    };
    let with_header = |flags: u8| {
        let mut v = vec![flags, 0, 0, 0, 0x00, 0x00, 0x2a, 0];
        v.extend(&inner);
        v
    };
    let ctx = CaptureContext { vxlan_port: Some(4789), ..plain(5201) };
    let frames = [outer(&with_header(0x08)), outer(&with_header(0x00)), outer(&[0x08, 0, 0, 0]), outer(&[0x08])];
    for (frame, counted) in frames.iter().zip([1, 0, 0, 0]) {
        let summary = summarize(&pcap_of(std::slice::from_ref(frame)), &ctx).unwrap();
        let vxlan = summary.vxlan.unwrap_or_default();
        assert_eq!(vxlan.packets, counted, "{frame:02x?}");
        if counted == 1 {
            assert_eq!(vxlan.vnis, [42]);
        }
    }
}
