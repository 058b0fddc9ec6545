//! The ILA overlay without VMs: lab validation, the translation and checksum
//! arithmetic on bytes captured by vlab in the ILA matrix (Debian 6.12 kernel,
//! virtio-net), and the rendered guest commands.

use std::net::{IpAddr, Ipv6Addr};
use std::path::Path;
use std::sync::LazyLock;

use rstest::rstest;
use vlab::lab::{Lab, LabError};
use vlab::measure::capture::{summarize, CaptureContext};
use vlab::measure::checksum::{self, ChecksumStatus, Segment};
use vlab::overlay::ila::{self, CsumMode, Direction, IlaCase, IlaHook, Locator};
use vlab::overlay::{CaptureHints, Overlay};

const ILA: &str = include_str!("../labs/ila.toml");
const MATRIX: &str = include_str!("../labs/ila-matrix.toml");

fn parse(text: &str) -> Result<Lab, LabError> {
    vlab::parse_lab(text, Path::new("ila.toml"))
}

fn addr(s: &str) -> Ipv6Addr {
    s.parse().unwrap()
}

fn loc(s: &str) -> Locator {
    Locator::try_from(s.to_string()).unwrap()
}

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(format!("{}/tests/fixtures/pcap/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

/// The IPv6 packets (Ethernet stripped) of a pcap, in order.
fn ipv6_packets(pcap: &[u8]) -> Vec<Vec<u8>> {
    let (_, capture) = pcap_parser::parse_pcap(pcap).unwrap();
    capture.blocks.iter().map(|b| b.data[14..].to_vec()).collect()
}

fn tcp_valid(packet: &[u8]) -> bool {
    let src: [u8; 16] = packet[8..24].try_into().unwrap();
    let dst: [u8; 16] = packet[24..40].try_into().unwrap();
    checksum::tcp_checksum_valid(IpAddr::V6(src.into()), IpAddr::V6(dst.into()), &packet[40..])
}

#[test]
fn the_matrix_is_four_modes_by_offloads_by_hook() {
    let lab = parse(MATRIX).unwrap();
    let cases = lab.cases();
    assert_eq!(cases.len(), 24);
    assert_eq!(cases[0].name, "csum-mode=no-action,hook=route,offloads=on");
    // Offloads vary slowest (a case whose offloads are the previous one's
    // leaves the NIC alone); names keep the lab file's order.
    assert_eq!(cases[1].name, "csum-mode=no-action,hook=route-input,offloads=on");
    assert_eq!(cases[11].name, "csum-mode=neutral-map-auto,hook=xlat,offloads=on");
    assert_eq!(cases[12].name, "csum-mode=no-action,hook=route,offloads=off");
    assert_eq!(cases[23].name, "csum-mode=neutral-map-auto,hook=xlat,offloads=off");
    assert_eq!(
        ila::case_settings(&lab, &cases[23].params),
        IlaCase { csum_mode: CsumMode::NeutralMapAuto, hook: IlaHook::Xlat }
    );
    let single_lab = parse(ILA).unwrap();
    let single = single_lab.cases();
    assert_eq!(single.len(), 1);
    assert_eq!(
        ila::case_settings(&single_lab, &single[0].params),
        IlaCase { csum_mode: CsumMode::NoAction, hook: IlaHook::Route }
    );
}

fn edit(from: &str, to: &str) -> String {
    assert!(ILA.contains(from), "fixture lacks {from:?}");
    ILA.replacen(from, to, 1)
}

#[rstest]
#[case::missing_locator(edit("locator = \"bbbb:0:0:0\"\n", ""), "ila_missing_locator")]
#[case::bad_locator(edit("locator = \"bbbb:0:0:0\"", "locator = \"bbbb::\""), "ila_bad_locator")]
#[case::same_locator(edit("locator = \"bbbb:0:0:0\"", "locator = \"aaaa:0:0:0\""), "ila_same_locator")]
#[case::sir_prefix_length(
    edit("sir_prefix = \"dead:beef::/64\"", "sir_prefix = \"dead:beef::/48\""),
    "ila_sir_prefix_length"
)]
#[case::container_outside_sir(
    edit("ipv6 = \"dead:beef::2/128\"", "ipv6 = \"fd00:beef::2/128\""),
    "ila_container_outside_sir"
)]
#[case::container_not_128(edit("ipv6 = \"dead:beef::2/128\"", "ipv6 = \"dead:beef::2/64\""), "ila_container_not_128")]
#[case::ipv4_family(edit("family = \"ipv6\"", "family = \"ipv4\""), "ila_ipv4_family")]
#[case::c_bit_set(
    edit("csum_mode = \"no-action\"", "csum_mode = \"neutral-map\"").replace("dead:beef::2/128", "dead:beef::1000:0:0:2/128"),
    "ila_c_bit_set"
)]
#[case::use_format_type(edit("ident_type = \"luid\"", "ident_type = \"use-format\""), "ila_use_format_type")]
#[case::no_captures(edit("points = [\"underlay\", \"container\"]", "points = [\"underlay\"]"), "ila_no_captures")]
#[case::unknown_mode(edit("csum_mode = \"no-action\"", "csum_mode = \"adjust\""), "ila_unknown_mode")]
#[case::ila_table_elsewhere(
    include_str!("../labs/baseline.toml").replacen("[workload]", "[ila]\nhook = \"xlat\"\n\n[workload]", 1),
    "ila_table_elsewhere"
)]
fn invalid_ila_labs_name_the_field(#[case] text: String, #[case] name: &str) {
    let err = parse(&text).expect_err("the lab must be rejected");
    insta::assert_snapshot!(name, err.to_string());
}

#[test]
fn use_format_identifiers_are_accepted_with_their_type_bits() {
    let text = edit("ident_type = \"luid\"", "ident_type = \"use-format\"")
        .replace("dead:beef::1/128", "dead:beef::2000:0:0:1/128")
        .replace("dead:beef::2/128", "dead:beef::2000:0:0:2/128");
    let lab = parse(&text).expect("formatted luid identifiers");
    let cmds = ila::case_commands(&lab, &lab.vms[0], ila::case_settings(&lab, &lab.cases()[0].params));
    assert!(cmds.iter().any(|c| c.starts_with("route add aaaa::2000:0:0:0/67 encap ila dead:beef:0:0")), "{cmds:#?}");
}

#[test]
fn locators_read_and_print_as_four_groups() {
    assert_eq!(loc("aaaa:0:0:0").0, 0xaaaa_0000_0000_0000);
    assert_eq!(loc("2001:db8:2:0").to_string(), "2001:db8:2:0");
    assert!(Locator::try_from("aaaa::".to_string()).is_err());
    assert!(Locator::try_from("aaaa:0:0:0:0".to_string()).is_err());
}

/// The wire addresses the 6.12 kernel produced in the matrix run (read from the
/// captures) are the ones vlab's model of each mode computes.
#[rstest]
#[case(CsumMode::NoAction, "dead:beef::1", "aaaa:0:0:0", "aaaa::1")]
#[case(CsumMode::AdjTransport, "dead:beef::2", "bbbb:0:0:0", "bbbb::2")]
#[case(CsumMode::NeutralMap, "dead:beef::1", "aaaa:0:0:0", "aaaa::1000:0:0:e2f3")]
#[case(CsumMode::NeutralMap, "dead:beef::2", "bbbb:0:0:0", "bbbb::1000:0:0:d1e3")]
#[case(CsumMode::NeutralMapAuto, "dead:beef::1", "aaaa:0:0:0", "aaaa::f2f3")]
#[case(CsumMode::NeutralMapAuto, "dead:beef::2", "bbbb:0:0:0", "bbbb::e1e3")]
fn translations_match_the_kernel(#[case] mode: CsumMode, #[case] sir: &str, #[case] to: &str, #[case] wire: &str) {
    let out = ila::translate(addr(sir), loc(to), mode, Direction::SirToIla);
    assert_eq!(out, addr(wire));
    // And back: the receiver restores the SIR address.
    assert_eq!(ila::translate(out, loc("dead:beef:0:0"), mode, Direction::IlaToSir), addr(sir));
}

#[rstest]
#[case(CsumMode::NeutralMap)]
#[case(CsumMode::NeutralMapAuto)]
fn neutral_modes_keep_the_address_sum(#[case] mode: CsumMode) {
    for sir in ["dead:beef::1", "dead:beef::ffff", "dead:beef::1:0", "dead:beef::abcd:0:0:7"] {
        let wire = ila::translate(addr(sir), loc("2001:db8:2:0"), mode, Direction::SirToIla);
        let sum = |a| checksum::fold(checksum::sum_v6(a));
        assert!(checksum::same_sum(sum(wire), sum(addr(sir))), "{sir} -> {wire}");
        assert_eq!(ila::c_bit(wire), mode == CsumMode::NeutralMap, "{wire}");
    }
}

/// A segment captured inside a container (valid for its SIR addresses),
/// translated as each mode specifies.
#[rstest]
#[case(CsumMode::NoAction, false)]
#[case(CsumMode::AdjTransport, true)]
#[case(CsumMode::NeutralMap, true)]
#[case(CsumMode::NeutralMapAuto, true)]
fn a_valid_segment_after_translation(#[case] mode: CsumMode, #[case] valid_after: bool) {
    let packets = ipv6_packets(&fixture("ila-no-action-off-host1-c1-eth0.pcap"));
    let data = packets.iter().find(|p| p.len() > 1000).expect("a data segment");
    assert!(tcp_valid(data), "valid before the translation");
    let translated = ila::translate_packet(data, loc("aaaa:0:0:0"), mode, Direction::SirToIla);
    assert_eq!(&translated[24..32], &[0xaa, 0xaa, 0, 0, 0, 0, 0, 0]);
    assert_eq!(tcp_valid(&translated), valid_after, "{mode:?}");
    // no-action: correct before translation, wrong after it, right again once reversed.
    let back = ila::translate_packet(&translated, loc("dead:beef:0:0"), mode, Direction::IlaToSir);
    assert!(tcp_valid(&back), "{mode:?}: valid again once reversed");
}

/// The overlay's capture hints for the study's locators and SIR addresses,
/// from `labs/ila.toml`.
static HINTS: LazyLock<CaptureHints> = LazyLock::new(|| ila::Ila.capture_hints(&parse(ILA).unwrap()));

/// `original_dst` for the study's addressing.
fn sir_of(dst: IpAddr) -> Option<IpAddr> {
    HINTS.original_destination(dst)
}

/// Checksum verdicts of captured ILA traffic, by capture.
#[rstest]
#[case::no_action_wire("ila-no-action-off-host1-underlay.pcap", 0, 12, 0, 0, 0)]
#[case::no_action_container("ila-no-action-off-host1-c1-eth0.pcap", 12, 0, 0, 0, 0)]
#[case::no_action_offloaded("ila-no-action-on-host2-underlay.pcap", 0, 0, 12, 0, 0)]
#[case::adj_transport_reversed("ila-adj-transport-off-host2-underlay.pcap", 0, 12, 0, 0, 12)]
#[case::adj_transport_partial_reversed("ila-adj-transport-on-host2-underlay.pcap", 0, 10, 0, 2, 12)]
#[case::neutral_map("ila-neutral-map-off-host1-underlay.pcap", 12, 0, 0, 0, 0)]
#[case::neutral_map_auto("ila-neutral-map-auto-off-host2-underlay.pcap", 12, 0, 0, 0, 0)]
fn checksum_verdicts_of_ila_captures(
    #[case] file: &str,
    #[case] valid: u64,
    #[case] invalid: u64,
    #[case] offloaded: u64,
    #[case] oversized: u64,
    #[case] reversed: u64,
) {
    let ctx = CaptureContext { port: 5201, mtu: 1500, original_dst: &sir_of, vxlan_port: None };
    let s = summarize(&fixture(file), &ctx).unwrap();
    let c = s.checksums;
    assert_eq!(
        (c.valid, c.invalid, c.offloaded, c.oversized, c.reverse_adjusted),
        (valid, invalid, offloaded, oversized, reversed),
        "{file}: {c}"
    );
}

/// The first segments of a few captures, layer by layer.
#[rstest]
#[case::wire_no_action("ila-no-action-off-host1-underlay.pcap")]
#[case::wire_neutral_map("ila-neutral-map-off-host1-underlay.pcap")]
#[case::container_no_action("ila-no-action-off-host1-c1-eth0.pcap")]
#[case::container_neutral_map_on_route_hook("ila-neutral-map-route-off-host1-c1-eth0.pcap")]
fn first_segments_layer_by_layer(#[case] file: &str) {
    let ctx = CaptureContext { port: 5201, mtu: 1500, original_dst: &sir_of, vxlan_port: None };
    let s = summarize(&fixture(file), &ctx).unwrap();
    insta::assert_json_snapshot!(file.trim_end_matches(".pcap"), s.first);
}

#[test]
fn an_incomplete_or_oversized_segment_is_not_called_invalid() {
    let packets = ipv6_packets(&fixture("ila-neutral-map-off-host1-underlay.pcap"));
    let p = packets.iter().find(|p| p.len() > 1000).unwrap();
    let src: [u8; 16] = p[8..24].try_into().unwrap();
    let dst: [u8; 16] = p[24..40].try_into().unwrap();
    let (src, dst) = (IpAddr::V6(src.into()), IpAddr::V6(dst.into()));
    let cut = Segment { src, dst, bytes: &p[40..100], complete: false, ip_len: p.len() };
    assert_eq!(checksum::classify(&cut, None, 1500), ChecksumStatus::Truncated);
    let mut broken = p[40..].to_vec();
    broken[30] ^= 0xff;
    let whole = Segment { src, dst, bytes: &broken, complete: true, ip_len: p.len() };
    assert_eq!(checksum::classify(&whole, None, 1500), ChecksumStatus::Invalid);
    let merged = Segment { ip_len: 3000, ..whole };
    assert_eq!(checksum::classify(&merged, None, 1500), ChecksumStatus::Oversized);
    // Shorter than a TCP header: no checksum field to judge, in either
    // direction of a translation.
    let short = Segment { src, dst, bytes: &p[40..50], complete: true, ip_len: 50 };
    assert!(!checksum::reverse_adjusted(&short, src));
}

/// The counts of a capture's segments: those judged valid or invalid are
/// the verified ones; truncated, offloaded and oversized ones are not.
#[test]
fn verified_segments_are_the_valid_and_the_invalid() {
    let mut c = checksum::ChecksumCounts::default();
    for s in [ChecksumStatus::Valid, ChecksumStatus::Invalid, ChecksumStatus::Invalid, ChecksumStatus::Truncated] {
        c.add(s);
    }
    c.add(ChecksumStatus::Offloaded);
    c.add(ChecksumStatus::Oversized);
    assert_eq!(c.verified(), 3);
    assert_eq!((c.valid, c.invalid, c.truncated, c.offloaded, c.oversized), (1, 2, 1, 1, 1));
}

#[test]
fn guest_commands_for_each_hook() {
    let lab = parse(MATRIX).unwrap();
    let mut out = String::new();
    for hook in [IlaHook::Route, IlaHook::RouteInput, IlaHook::Xlat] {
        let case = IlaCase { csum_mode: CsumMode::NeutralMapAuto, hook };
        for vm in &lab.vms {
            out.push_str(&format!("# {} hook={hook:?}\n", vm.name));
            out.push_str(&ila::case_commands(&lab, vm, case).join("\n"));
            out.push('\n');
        }
    }
    insta::assert_snapshot!("ila_commands", out);
}

/// `pcap` with frame `frame`'s (from 0) TCP checksum field replaced by
/// what `field` computes from its source, its segment and the SIR and wire
/// destinations (`sir_of` gives the SIR for the captured one).
fn with_field(pcap: &[u8], frame: usize, field: impl Fn(IpAddr, IpAddr, IpAddr, &[u8]) -> u16) -> Vec<u8> {
    let (_, capture) = pcap_parser::parse_pcap(pcap).unwrap();
    let mut out = pcap[..24].to_vec();
    for (i, block) in capture.blocks.iter().enumerate() {
        let mut data = block.data.to_vec();
        if i == frame {
            let ip = &data[14..];
            let src: [u8; 16] = ip[8..24].try_into().unwrap();
            let dst: [u8; 16] = ip[24..40].try_into().unwrap();
            let (src, wire) = (IpAddr::V6(src.into()), IpAddr::V6(dst.into()));
            let sir = sir_of(wire).unwrap_or(wire);
            let f = field(src, sir, wire, &ip[40..]);
            data[14 + 40 + 16..14 + 40 + 18].copy_from_slice(&f.to_be_bytes());
        }
        let len = data.len() as u32;
        out.extend_from_slice(&[0u8; 8]);
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&data);
    }
    out
}

/// A full checksum computed for destination `dst`.
fn full_for(src: IpAddr, dst: IpAddr, seg: &[u8]) -> u16 {
    checksum::tcp_checksum(src, dst, seg)
}

/// The seed a sender that offloads its checksum leaves for `dst`.
fn seed_for(src: IpAddr, dst: IpAddr, seg: &[u8]) -> u16 {
    checksum::fold(checksum::pseudo_header_sum(src, dst, seg.len() as u32, 6))
}

fn summary(pcap: &[u8]) -> vlab::measure::capture::CaptureSummary {
    summarize(pcap, &CaptureContext { port: 5201, mtu: 1500, original_dst: &sir_of, vxlan_port: None }).unwrap()
}

/// The wire checksum check of a no-action case (or `mode`) over these
/// underlay captures, with the sending containers' captures as given
/// (`dead:beef::1` is c1 on host1, `dead:beef::2` c2 on host2).
fn wire_verdict(
    mode: CsumMode,
    underlay: &[Vec<u8>],
    senders: &[(&str, Vec<u8>)],
) -> (vlab::report::Check, ila::WireJudgement) {
    let (checks, verdict) = ila_verdict(mode, underlay, senders);
    let check = checks.into_iter().find(|c| c.name == "ILA: wire checksums as documented").expect("always made");
    (check, verdict.wire_judged)
}

/// Every check of a `mode` case over these captures, and its verdict.
fn ila_verdict(
    mode: CsumMode,
    underlay: &[Vec<u8>],
    senders: &[(&str, Vec<u8>)],
) -> (Vec<vlab::report::Check>, ila::IlaVerdict) {
    ila_verdict_for(mode, ["dead:beef::1", "dead:beef::2"], underlay, senders)
}

/// [`ila_verdict`] with the lab's SIR addresses as given.
fn ila_verdict_for(
    mode: CsumMode,
    sir: [&str; 2],
    underlay: &[Vec<u8>],
    senders: &[(&str, Vec<u8>)],
) -> (Vec<vlab::report::Check>, ila::IlaVerdict) {
    let underlay: Vec<_> = underlay.iter().map(|p| summary(p)).collect();
    let senders: Vec<(Ipv6Addr, _)> = senders.iter().map(|(sir, p)| (addr(sir), summary(p))).collect();
    let evidence = ila::IlaEvidence {
        case: IlaCase { csum_mode: mode, hook: IlaHook::Route },
        sir: sir.map(addr),
        wire: [addr("aaaa::1"), addr("bbbb::2")],
        underlay: underlay.iter().collect(),
        container: senders.iter().map(|(_, c)| c).collect(),
        senders: senders.iter().map(|(sir, c)| (*sir, c)).collect(),
        csum_errors: Default::default(),
        delivered: true,
    };
    ila::verdict(&evidence)
}

/// The neutral modes' identifier check, from the captured destinations: a
/// neutral-map capture's wire addresses carry the C-bit and keep the SIR
/// address's sum; a no-action capture's do neither.
#[test]
fn the_neutral_check_reads_the_c_bit_and_the_sum_on_the_wire() {
    let neutral = |file: &str| {
        let (checks, _) = ila_verdict(CsumMode::NeutralMap, &[fixture(file)], &[]);
        checks.into_iter().find(|c| c.name == "ILA: identifier is checksum-neutral").expect("a neutral mode's check")
    };
    let held = neutral("ila-neutral-map-off-host1-underlay.pcap");
    assert!(held.passed, "{held:?}");
    assert!(held.detail.contains("C-bit set and address sum unchanged"), "{}", held.detail);
    let broken = neutral("ila-no-action-off-host1-underlay.pcap");
    assert!(!broken.passed, "{broken:?}");
    assert!(broken.detail.contains("C-bit clear, sum differs from that of"), "{}", broken.detail);
    // One defect alone fails it too: the C-bit set, but the sum not that of
    // the lab's SIR address (a mapping made for another identifier).
    let (checks, _) = ila_verdict_for(
        CsumMode::NeutralMap,
        ["dead:beef::7", "dead:beef::8"],
        &[fixture("ila-neutral-map-off-host1-underlay.pcap")],
        &[],
    );
    let other = checks.into_iter().find(|c| c.name == "ILA: identifier is checksum-neutral").unwrap();
    assert!(!other.passed, "{other:?}");
    assert!(other.detail.contains("C-bit set, sum differs from that of dead:beef::"), "{}", other.detail);
}

/// The report's summary of the wire checksums: invalid when every judged
/// one is (adj-transport adjusting in reverse), valid when every one is.
#[rstest]
#[case::all_invalid(CsumMode::AdjTransport, "ila-adj-transport-off-host2-underlay.pcap", "invalid")]
#[case::all_valid(CsumMode::NeutralMap, "ila-neutral-map-off-host1-underlay.pcap", "valid")]
#[case::offloaded(CsumMode::NoAction, "ila-no-action-on-host2-underlay.pcap", "offloaded")]
fn the_wire_checksums_are_summarised_in_a_word(#[case] mode: CsumMode, #[case] file: &str, #[case] word: &str) {
    let (_, v) = ila_verdict(mode, &[fixture(file)], &[]);
    assert_eq!(v.wire_checksums, word);
}

/// A pcap file's bytes.
type Pcap = Vec<u8>;

/// The first segments of a no-action run with offloads on (labs/ila.toml):
/// every one a seed on the wire, computed for the SIR address.
fn offloaded_run() -> (Vec<Pcap>, Vec<(&'static str, Pcap)>) {
    let underlay = ["host1-underlay", "host2-underlay"].map(|f| fixture(&format!("ila-no-action-on-{f}-first.pcap")));
    let senders = [("dead:beef::1", "host1-c1-eth0"), ("dead:beef::2", "host2-c2-eth0")]
        .map(|(sir, f)| (sir, fixture(&format!("ila-no-action-on-{f}-first.pcap"))));
    (underlay.to_vec(), senders.to_vec())
}

#[test]
fn no_action_seeds_for_the_sir_address_are_as_documented() {
    let (underlay, senders) = offloaded_run();
    let (check, j) = wire_verdict(CsumMode::NoAction, &underlay, &senders);
    assert!(check.passed && !check.not_judged, "{check:?}");
    assert_eq!((j.seeds.as_documented, j.judged(), j.not_judged), (20, 20, 0), "{j:?}");
    // The same seeds are not what adj-transport or a neutral mode leaves.
    for mode in [CsumMode::AdjTransport, CsumMode::NeutralMapAuto] {
        let (check, j) = wire_verdict(mode, &underlay, &senders);
        assert!(!check.passed, "{mode:?}: {check:?}");
        assert_eq!(j.seeds.not, 20, "{mode:?}");
    }
}

/// A run in which a few segments reach the wire with full checksums among
/// the seeds: completed after the translation (a seed in the sending
/// container), from the seed or anew for the wire address, both as
/// no-action has it. The verdict is the same as without them.
#[test]
fn no_action_checksums_completed_after_the_translation_are_as_documented() {
    let (mut underlay, senders) = offloaded_run();
    underlay[0] = with_field(&underlay[0], 3, |src, sir, _, seg| full_for(src, sir, seg));
    underlay[0] = with_field(&underlay[0], 4, |src, _, wire, seg| full_for(src, wire, seg));
    let (check, j) = wire_verdict(CsumMode::NoAction, &underlay, &senders);
    assert!(check.passed, "{check:?}");
    assert_eq!((j.after.as_documented, j.recomputed, j.seeds.as_documented), (2, 1, 18), "{j:?}");
    assert!(check.detail.contains("2 full checksums completed after it, 1 of them computed anew"), "{}", check.detail);
    // Completed from the seed only: none computed anew, and none said to be.
    let (mut from_seed, _) = offloaded_run();
    from_seed[0] = with_field(&from_seed[0], 3, |src, sir, _, seg| full_for(src, sir, seg));
    let (check, j) = wire_verdict(CsumMode::NoAction, &from_seed, &senders);
    assert_eq!((j.after.as_documented, j.recomputed), (1, 0), "{j:?}");
    assert!(check.detail.ends_with("19 seeds; 1 full checksums completed after it"), "{}", check.detail);
    // Without the sending container's capture, a full checksum valid for the
    // wire address cannot be told from one the translation adjusted.
    let (check, j) = wire_verdict(CsumMode::NoAction, &underlay, &[]);
    assert!(check.passed, "{check:?}");
    assert_eq!((j.not_judged, j.unmatched.as_documented), (1, 1), "{j:?}");
    assert!(
        check.detail.contains("; 1 not judged") && check.detail.contains("19 of 20 underlay segments judged"),
        "{}",
        check.detail
    );
}

/// With offloads off, the sending containers compute full checksums for
/// the SIR address, and no-action carries them to the wire unchanged.
#[test]
fn no_action_full_checksums_computed_before_the_translation() {
    let underlay = [fixture("ila-no-action-off-host1-underlay.pcap")];
    let senders = [("dead:beef::1", fixture("ila-no-action-off-host1-c1-eth0.pcap"))];
    let (check, j) = wire_verdict(CsumMode::NoAction, &underlay, &senders);
    assert!(check.passed, "{check:?}");
    // c1's own segments are found in its capture; c2's (from host2) are not.
    assert_eq!((j.before.as_documented, j.unmatched.as_documented), (3, 9), "{j:?}");
    // The sender's full checksums are judged in the container too: valid,
    // and a segment that left the container with a wrong one fails it.
    let container = |senders: &[(&str, Pcap)]| {
        let (checks, _) = ila_verdict(CsumMode::NoAction, &underlay, senders);
        checks.into_iter().find(|c| c.name == "ILA: container checksums valid").expect("made with a container capture")
    };
    let valid = container(&senders);
    assert!(valid.passed, "{valid:?}");
    let other = addr("dead:beef::9").into();
    let bad = [("dead:beef::1", with_field(&senders[0].1, 0, |src, _, _, seg| full_for(src, other, seg)))];
    let invalid = container(&bad);
    assert!(!invalid.passed && invalid.detail.contains("1 invalid"), "{invalid:?}");
}

/// One defect at a time, each failing the check: the translation adjusted a
/// seed, or a full checksum made before it, to the wire address (what
/// no-action must not do).
#[rstest]
#[case::a_seed_adjusted(0, 2)]
#[case::a_full_checksum_adjusted(1, 1)]
fn no_action_fails_on_a_field_adjusted_to_the_wire(#[case] run: usize, #[case] frame: usize) {
    let (underlay, senders) = match run {
        0 => {
            let (mut u, s) = offloaded_run();
            u[0] = with_field(&u[0], frame, |src, _, wire, seg| seed_for(src, wire, seg));
            (u, s)
        }
        _ => {
            let u = vec![with_field(&fixture("ila-no-action-off-host1-underlay.pcap"), frame, |src, _, wire, seg| {
                full_for(src, wire, seg)
            })];
            (u, vec![("dead:beef::1", fixture("ila-no-action-off-host1-c1-eth0.pcap"))])
        }
    };
    let (check, j) = wire_verdict(CsumMode::NoAction, &underlay, &senders);
    assert!(!check.passed && !check.not_judged, "{check:?}");
    assert_eq!(j.not_as_documented(), 1, "{j:?}");
}

/// A case in which no underlay segment can be judged says so: the check is
/// "not judged", neither passed silently nor failed.
#[test]
fn nothing_to_judge_is_said() {
    let (underlay, _) = offloaded_run();
    let every = |pcap: &[u8]| {
        let n = ipv6_packets(pcap).len();
        (0..n).fold(pcap.to_vec(), |p, i| with_field(&p, i, |src, _, wire, seg| full_for(src, wire, seg)))
    };
    let underlay: Vec<Vec<u8>> = underlay.iter().map(|p| every(p)).collect();
    let (check, j) = wire_verdict(CsumMode::NoAction, &underlay, &[]);
    assert!(check.not_judged && check.passed, "{check:?}");
    assert_eq!((j.judged(), j.not_judged), (0, 20), "{j:?}");
    assert!(check.detail.starts_with("no underlay segment could be judged"), "{}", check.detail);
}

/// The report's table of ILA verdicts over captures of several modes, each
/// judged as the mode it was taken under and one judged as another (its
/// documented expectation shown in brackets where it differs). One underlay
/// capture shows one direction of the translation only: the rows say it
/// was right, as the tests above judge it.
#[test]
fn the_ila_table_shows_each_verdict_beside_the_documented_one() {
    use vlab::overlay::Variant;
    let rows = [
        ("adj-transport, offloads off", CsumMode::AdjTransport, "ila-adj-transport-off-host2-underlay.pcap"),
        ("adj-transport, offloads on", CsumMode::AdjTransport, "ila-adj-transport-on-host2-underlay.pcap"),
        ("neutral-map, offloads off", CsumMode::NeutralMap, "ila-neutral-map-off-host1-underlay.pcap"),
        ("no-action, offloads on", CsumMode::NoAction, "ila-no-action-on-host2-underlay.pcap"),
        ("no-action judged as neutral-map", CsumMode::NeutralMap, "ila-no-action-off-host1-underlay.pcap"),
    ];
    let sections: Vec<(&str, serde_json::Value)> = rows
        .iter()
        .map(|(name, mode, file)| {
            let mut v = ila_verdict(*mode, &[fixture(file)], &[]).1;
            v.translation = true;
            (*name, serde_json::to_value(v).unwrap())
        })
        .collect();
    let sections: Vec<(&str, &serde_json::Value)> = sections.iter().map(|(n, v)| (*n, v)).collect();
    insta::assert_snapshot!("ila_table", ila::Ila.summary(&sections).expect("a table"));
}

/// Every kind of field counts once in the totals of a wire judgement.
#[test]
fn a_wire_judgement_totals_every_kind_of_field() {
    let t = |as_documented, not| ila::Tally { as_documented, not };
    let j = ila::WireJudgement {
        seeds: t(1, 2),
        before: t(3, 4),
        after: t(5, 6),
        recomputed: 1,
        unmatched: t(7, 8),
        not_judged: 9,
    };
    assert_eq!((j.judged(), j.not_as_documented()), (36, 20));
}

/// A wire segment is found in its sender's container capture also where
/// the container saw it as part of a larger GSO segment, cut on its way:
/// two 1448-byte pieces of one 2896-byte full checksum segment were made
/// before the translation; a piece the container did not send is not; a
/// segment beyond the MTU is not judged.
#[test]
fn a_wire_segment_is_found_within_the_gso_segment_it_was_cut_from() {
    use vlab::measure::capture::{CaptureSummary, SegmentRecord};
    use vlab::measure::checksum::FieldFor;
    let segment = |dst: &str, seq: u32, payload: u32| SegmentRecord {
        src: IpAddr::V6(addr("dead:beef::1")),
        dst: IpAddr::V6(addr(dst)),
        sport: 40_000,
        dport: 5201,
        seq,
        ack: 7,
        payload,
        checksum: ChecksumStatus::Valid,
        field: 0,
        for_captured: Some(FieldFor::Full),
        for_original: Some(FieldFor::Full),
    };
    let container = CaptureSummary { segments: vec![segment("dead:beef::2", 1000, 2896)], ..Default::default() };
    let merged = SegmentRecord { checksum: ChecksumStatus::Oversized, ..segment("bbbb::2", 5344, 2896) };
    let wire = [segment("bbbb::2", 1000, 1448), segment("bbbb::2", 2448, 1448), segment("bbbb::2", 3896, 1448), merged];
    let underlay = CaptureSummary { segments: wire.to_vec(), ..Default::default() };
    let evidence = ila::IlaEvidence {
        case: IlaCase { csum_mode: CsumMode::AdjTransport, hook: IlaHook::Route },
        sir: [addr("dead:beef::1"), addr("dead:beef::2")],
        wire: [addr("aaaa::1"), addr("bbbb::2")],
        underlay: vec![&underlay],
        container: vec![&container],
        senders: vec![(addr("dead:beef::1"), &container)],
        csum_errors: Default::default(),
        delivered: true,
    };
    let (_, v) = ila::verdict(&evidence);
    let j = v.wire_judged;
    assert_eq!((j.before.as_documented, j.unmatched.as_documented, j.not_judged), (2, 1, 1), "{v:?}");
}

/// The translation holds only when both sides are right: the wire carries
/// locator addresses and the containers see SIR addresses. A container
/// capture that shows the wire's addresses breaks it.
#[test]
fn the_translation_needs_the_wire_and_the_containers_right() {
    let underlay = [fixture("ila-no-action-off-host1-underlay.pcap")];
    let good = [("dead:beef::1", fixture("ila-no-action-off-host1-c1-eth0.pcap"))];
    assert!(ila_verdict(CsumMode::NoAction, &underlay, &good).1.translation);
    let wrong = [("dead:beef::1", fixture("ila-no-action-off-host1-underlay.pcap"))];
    let (checks, v) = ila_verdict(CsumMode::NoAction, &underlay, &wrong);
    assert!(!v.translation, "{v:?}");
    let sir = checks.iter().find(|c| c.name == "ILA: containers see SIR addresses").unwrap();
    let wire = checks.iter().find(|c| c.name == "ILA: wire carries locator + identifier").unwrap();
    assert!(!sir.passed && wire.passed, "{sir:?} {wire:?}");
}

/// Both neutral modes get the identifier check, also neutral-map-auto,
/// which sets no C-bit.
#[rstest]
#[case::neutral_map(CsumMode::NeutralMap)]
#[case::neutral_map_auto(CsumMode::NeutralMapAuto)]
fn every_neutral_mode_is_checked_for_a_neutral_identifier(#[case] mode: CsumMode) {
    let (checks, _) = ila_verdict(mode, &[fixture("ila-neutral-map-off-host1-underlay.pcap")], &[]);
    assert!(checks.iter().any(|c| c.name == "ILA: identifier is checksum-neutral"), "{checks:?}");
}
