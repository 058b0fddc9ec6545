//! Judging an ILA case: addresses and checksums seen in the captures against
//! what the kernel documents for the checksum mode, and the table of
//! verdicts for people.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv6Addr};

use serde::{Deserialize, Serialize};

use super::{c_bit, locator_of, CsumMode, IlaCase};
use crate::lab::{variant_name, Lab};
use crate::measure::capture::{flows_are, CaptureSummary, Flow, SegmentRecord};
use crate::measure::checksum::{self, ChecksumCounts, ChecksumStatus, FieldFor};
use crate::measure::counters;
use crate::overlay::{CaseEnd, CaseEvidence, Verdict};
use crate::report::{list, Check};

/// What the documentation says a case must show.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Expectation {
    /// The workload gets through (every mode restores the SIR address at the receiver).
    pub delivers: bool,
    /// Verdict of every verifiable TCP checksum on the underlay.
    pub wire_checksum: ChecksumStatus,
    /// Whether the wire identifier has its C-bit set.
    pub c_bit: bool,
    /// Whether the wire address has the same ones'-complement sum as the SIR address.
    pub neutral: bool,
}

/// The documented behaviour of a checksum mode: `no-action` leaves a checksum
/// that is wrong for the ILA address on the wire; `adj-transport` rewrites it;
/// the neutral modes keep it valid by changing the identifier instead
/// (`neutral-map` with the C-bit set).
pub fn expectation(mode: CsumMode) -> Expectation {
    match mode {
        CsumMode::NoAction => {
            Expectation { delivers: true, wire_checksum: ChecksumStatus::Invalid, c_bit: false, neutral: false }
        }
        CsumMode::AdjTransport => {
            Expectation { delivers: true, wire_checksum: ChecksumStatus::Valid, c_bit: false, neutral: false }
        }
        CsumMode::NeutralMap => {
            Expectation { delivers: true, wire_checksum: ChecksumStatus::Valid, c_bit: true, neutral: true }
        }
        CsumMode::NeutralMapAuto => {
            Expectation { delivers: true, wire_checksum: ChecksumStatus::Valid, c_bit: false, neutral: true }
        }
    }
}

/// The verdicts of one ILA case, computed from captures and counters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IlaVerdict {
    /// Checksum mode and hook.
    #[serde(flatten)]
    pub case: IlaCase,
    /// The workload got through (iperf3 completed and moved payload).
    pub delivered: bool,
    /// Wire and container addresses were translated as specified, both ways.
    pub translation: bool,
    /// Destinations seen on the underlay.
    pub wire_destinations: Vec<Ipv6Addr>,
    /// Checksum verdicts of the workload's segments on the underlay captures.
    pub wire: ChecksumCounts,
    /// Checksum verdicts inside the containers.
    pub container: ChecksumCounts,
    /// `valid`, `invalid`, `mixed`, `offloaded` (nothing verifiable: partial
    /// checksums only) or `unverified`.
    pub wire_checksums: String,
    /// Checksum errors the receivers counted during the workload.
    pub csum_errors: u64,
    /// Every underlay segment's checksum field against the mode, by where
    /// the field was made.
    #[serde(default)]
    pub wire_judged: WireJudgement,
    /// What the documentation says.
    pub expected: Expectation,
}

/// How many segments a kind of checksum field held, and how many of them
/// were as the checksum mode documents.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tally {
    /// As documented.
    pub as_documented: u64,
    /// Not as documented.
    pub not: u64,
}

impl Tally {
    fn add(&mut self, ok: bool) {
        match ok {
            true => self.as_documented += 1,
            false => self.not += 1,
        }
    }

    fn total(&self) -> u64 {
        self.as_documented + self.not
    }
}

/// The underlay segments' checksum fields judged against the checksum
/// mode, each by what it is and where it was made. The sender's stack
/// computed it for the SIR address, as a full checksum or as the seed it
/// leaves to the NIC; the translation then adjusts it (`adj-transport`),
/// leaves it (`no-action`) or keeps the address sum (the neutral modes).
/// A full checksum on the wire was computed before the translation when the
/// same segment is full in the sender's container capture, and completed
/// after it (software segmentation, a checksum fallback, the emulated NIC)
/// when it is a seed there. Which of the segments were captured full or as
/// seeds varies from run to run; the verdict on each does not.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireJudgement {
    /// Seeds on the wire.
    pub seeds: Tally,
    /// Full checksums computed before the translation.
    pub before: Tally,
    /// Full checksums completed after the translation.
    pub after: Tally,
    /// Of `after` (as documented), those valid for the wire address: computed
    /// anew from the translated header, not from the seed.
    pub recomputed: u64,
    /// Full checksums whose segment the sender's container capture does
    /// not show, valid for the address the mode makes them valid for.
    pub unmatched: Tally,
    /// Segments that could not be judged: cut short, merged beyond the MTU,
    /// or (`no-action`) full and valid for the wire address with no
    /// container capture to tell whether it was completed after the
    /// translation.
    pub not_judged: u64,
}

impl WireJudgement {
    /// Segments judged.
    pub fn judged(&self) -> u64 {
        self.seeds.total() + self.before.total() + self.after.total() + self.unmatched.total()
    }

    /// Segments judged not as documented.
    pub fn not_as_documented(&self) -> u64 {
        self.seeds.not + self.before.not + self.after.not + self.unmatched.not
    }
}

/// Where a full checksum on the wire was made, from the same segment in the
/// sender's container capture.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Origin {
    /// Full there too: computed before the translation.
    Before,
    /// A seed there: completed after the translation.
    After,
    /// Not captured there.
    Unknown,
}

/// Where the field of wire segment `seg` was made (see [`Origin`]), from
/// the capture inside the container that sent it.
fn origin(seg: &SegmentRecord, senders: &[(Ipv6Addr, &CaptureSummary)]) -> Origin {
    let sent = senders.iter().filter(|(sir, _)| IpAddr::V6(*sir) == seg.src).flat_map(|(_, c)| &c.segments);
    let mine = sent.filter(|c| c.src == seg.src).find(|c| c.holds(seg) || seg.holds(c));
    match mine.and_then(|c| c.for_captured) {
        Some(FieldFor::Full) => Origin::Before,
        Some(FieldFor::Seed) => Origin::After,
        None => Origin::Unknown,
    }
}

/// Judges every workload segment of the underlay captures (see
/// [`WireJudgement`]). For each, what its field is for the wire destination
/// and for the SIR destination it was translated from.
fn judge_wire(mode: CsumMode, underlay: &[&CaptureSummary], senders: &[(Ipv6Addr, &CaptureSummary)]) -> WireJudgement {
    let mut j = WireJudgement::default();
    for seg in underlay.iter().flat_map(|c| &c.segments) {
        if matches!(seg.checksum, ChecksumStatus::Truncated | ChecksumStatus::Oversized) {
            j.not_judged += 1;
            continue;
        }
        let (wire, sir) = (seg.for_captured, seg.for_original);
        // The neutral modes keep the address sum: what fits one fits the other.
        let documented = |kind: FieldFor| match mode {
            CsumMode::NoAction => sir == Some(kind),
            CsumMode::AdjTransport | CsumMode::NeutralMap | CsumMode::NeutralMapAuto => wire == Some(kind),
        };
        if wire == Some(FieldFor::Seed) || sir == Some(FieldFor::Seed) {
            j.seeds.add(documented(FieldFor::Seed));
            continue;
        }
        let full = documented(FieldFor::Full);
        match origin(seg, senders) {
            Origin::Before => j.before.add(full),
            Origin::After => {
                // Completed from the seed the translation left, or anew from
                // the translated header: either way not the translation's work.
                let recomputed = mode == CsumMode::NoAction && wire == Some(FieldFor::Full);
                j.recomputed += u64::from(recomputed);
                j.after.add(full || recomputed);
            }
            Origin::Unknown if mode == CsumMode::NoAction && wire == Some(FieldFor::Full) => j.not_judged += 1,
            Origin::Unknown => j.unmatched.add(full),
        }
    }
    j
}

/// What the mode does to the checksum field, for people.
fn documented_field(mode: CsumMode) -> &'static str {
    match mode {
        CsumMode::NoAction => "leaves the checksum field as the sender wrote it for the SIR address",
        CsumMode::AdjTransport => "adjusts the checksum field to the wire address",
        CsumMode::NeutralMap | CsumMode::NeutralMapAuto => {
            "keeps the address sum, so the sender's checksum field fits the wire address"
        }
    }
}

/// The evidence an ILA case is judged on.
pub struct IlaEvidence<'a> {
    /// The case's settings.
    pub case: IlaCase,
    /// SIR addresses of the server and client containers.
    pub sir: [Ipv6Addr; 2],
    /// Destinations they must have on the wire (the specified translation).
    pub wire: [Ipv6Addr; 2],
    /// Captures on the underlay NICs.
    pub underlay: Vec<&'a CaptureSummary>,
    /// Captures on the containers' interfaces.
    pub container: Vec<&'a CaptureSummary>,
    /// The capture inside each sending container, by its SIR address: where
    /// a segment on the wire comes from.
    pub senders: Vec<(Ipv6Addr, &'a CaptureSummary)>,
    /// Increase of each receiver checksum error counter during the workload.
    pub csum_errors: BTreeMap<String, u64>,
    /// Whether the workload got through.
    pub delivered: bool,
}

fn v6(a: IpAddr) -> Option<Ipv6Addr> {
    match a {
        IpAddr::V6(a) => Some(a),
        IpAddr::V4(_) => None,
    }
}

fn wire_checksums(c: &ChecksumCounts) -> &'static str {
    match (c.valid, c.invalid) {
        (0, 0) if c.offloaded > 0 => "offloaded",
        (0, 0) => "unverified",
        (_, 0) => "valid",
        (0, _) => "invalid",
        _ => "mixed",
    }
}

/// Judges an ILA case against the documented behaviour of its checksum mode.
pub fn verdict(e: &IlaEvidence) -> (Vec<Check>, IlaVerdict) {
    let expected = expectation(e.case.csum_mode);
    let (mut checks, wire_destinations, translation) = translation_checks(e);
    if expected.neutral || expected.c_bit {
        checks.push(neutral_check(e, &expected, &wire_destinations));
    }
    let mut wire = ChecksumCounts::default();
    e.underlay.iter().for_each(|c| wire.merge(&c.checksums));
    let mut container = ChecksumCounts::default();
    e.container.iter().for_each(|c| container.merge(&c.checksums));
    let wire_judged = judge_wire(e.case.csum_mode, &e.underlay, &e.senders);
    checks.extend(checksum_checks(e, &wire_judged, &container));
    let csum_errors: u64 = e.csum_errors.values().sum();
    let v = IlaVerdict {
        case: e.case,
        delivered: e.delivered,
        translation,
        wire_destinations,
        wire,
        container,
        wire_checksums: wire_checksums(&wire).to_string(),
        csum_errors,
        wire_judged,
        expected,
    };
    (checks, v)
}

fn flows(caps: &[&CaptureSummary]) -> Vec<Flow> {
    let set: BTreeSet<Flow> = caps.iter().flat_map(|c| c.flows.iter().copied()).collect();
    set.into_iter().collect()
}

/// The addresses on the wire and in the containers; returns the checks, the
/// destinations seen on the wire and whether both were as specified.
fn translation_checks(e: &IlaEvidence) -> (Vec<Check>, Vec<Ipv6Addr>, bool) {
    let [s_sir, c_sir] = e.sir.map(IpAddr::V6);
    let [s_wire, c_wire] = e.wire.map(IpAddr::V6);
    let on_wire = flows(&e.underlay);
    let wire_expected = [Flow { src: c_sir, dst: s_wire }, Flow { src: s_sir, dst: c_wire }];
    let wire_ok = flows_are(&on_wire, &wire_expected);
    let inside = flows(&e.container);
    let sir_expected = [Flow { src: c_sir, dst: s_sir }, Flow { src: s_sir, dst: c_sir }];
    let sir_ok = flows_are(&inside, &sir_expected);
    let checks = vec![
        Check::new(
            "ILA: wire carries locator + identifier",
            wire_ok,
            format!("expected {}; seen {}", list(wire_expected), list(&on_wire)),
        ),
        Check::new(
            "ILA: containers see SIR addresses",
            sir_ok,
            format!("expected {}; seen {}", list(sir_expected), list(&inside)),
        ),
    ];
    let destinations = on_wire.iter().filter_map(|f| v6(f.dst)).collect::<BTreeSet<_>>().into_iter().collect();
    (checks, destinations, wire_ok && sir_ok)
}

/// From the captured bytes alone: the C-bit, and the address sum the
/// transport checksum sees, against the SIR address of the same identifier.
fn neutral_check(e: &IlaEvidence, expected: &Expectation, wire_destinations: &[Ipv6Addr]) -> Check {
    let mode = variant_name(&e.case.csum_mode);
    let bad: Vec<String> = wire_destinations
        .iter()
        .filter_map(|d| {
            let sir = e.sir.iter().zip(e.wire).find(|(_, w)| locator_of(*w) == locator_of(*d)).map(|(s, _)| *s)?;
            let neutral =
                checksum::same_sum(checksum::fold(checksum::sum_v6(*d)), checksum::fold(checksum::sum_v6(sir)));
            (c_bit(*d) != expected.c_bit || !neutral).then(|| {
                format!(
                    "{d}: C-bit {}, sum {} that of {sir}",
                    if c_bit(*d) { "set" } else { "clear" },
                    if neutral { "equals" } else { "differs from" }
                )
            })
        })
        .collect();
    Check::new(
        "ILA: identifier is checksum-neutral",
        !wire_destinations.is_empty() && bad.is_empty(),
        if bad.is_empty() {
            format!(
                "{mode}: C-bit {} and address sum unchanged on {}",
                if expected.c_bit { "set" } else { "clear" },
                list(wire_destinations)
            )
        } else {
            bad.join("; ")
        },
    )
}

/// Wire checksums as the mode documents them (judged segment by segment,
/// see [`WireJudgement`]), valid ones in the containers, no checksum errors
/// counted by the receivers.
fn checksum_checks(e: &IlaEvidence, j: &WireJudgement, container: &ChecksumCounts) -> Vec<Check> {
    let mode = variant_name(&e.case.csum_mode);
    let mut checks = Vec::new();
    const NAME: &str = "ILA: wire checksums as documented";
    let recomputed = if j.recomputed > 0 {
        format!(", {} of them computed anew for the wire address", j.recomputed)
    } else {
        String::new()
    };
    let kinds = [
        ("seeds", j.seeds, String::new()),
        ("full checksums computed before the translation", j.before, String::new()),
        ("full checksums completed after it", j.after, recomputed),
        ("full checksums not in the sending container's capture", j.unmatched, String::new()),
    ];
    let parts: Vec<String> = kinds
        .iter()
        .filter(|(_, t, _)| t.total() > 0)
        .map(|(what, t, note)| match t.not {
            0 => format!("{} {what}{note}", t.total()),
            n => format!("{} {what}{note}, {n} NOT as documented", t.total()),
        })
        .collect();
    let unjudged = if j.not_judged > 0 { format!("; {} not judged", j.not_judged) } else { String::new() };
    let detail = format!(
        "{mode} {}; {} of {} underlay segments judged: {}{unjudged}",
        documented_field(e.case.csum_mode),
        j.judged(),
        j.judged() + j.not_judged,
        if parts.is_empty() { "none".to_string() } else { parts.join("; ") }
    );
    checks.push(match j.judged() {
        0 => Check::not_judged(NAME, format!("no underlay segment could be judged: {detail}")),
        _ => Check::new(NAME, j.not_as_documented() == 0, detail),
    });
    if container.verified() > 0 {
        checks.push(Check::new(
            "ILA: container checksums valid",
            container.invalid == 0,
            format!("container captures: {container}"),
        ));
    }
    let csum_errors: u64 = e.csum_errors.values().sum();
    let counted: Vec<String> =
        e.csum_errors.iter().filter(|(_, v)| **v > 0).map(|(k, v)| format!("{k} +{v}")).collect();
    checks.push(Check::new(
        "ILA: receivers counted no checksum errors",
        csum_errors == 0,
        if counted.is_empty() { format!("{} counters unchanged", e.csum_errors.len()) } else { counted.join(", ") },
    ));
    checks
}

/// The artifact of a VM's checksum error counters.
pub(super) fn csum_artifact(vm: &str) -> String {
    format!("csum-errors-{vm}.txt")
}

/// How much each checksum error counter (`vm:counter`) of the two ends' VMs
/// grew between the outputs before and after the workload.
fn csum_errors(e: &CaseEvidence) -> BTreeMap<String, u64> {
    let mut grew = BTreeMap::new();
    for vm in e.ends.iter().map(|end| end.vm.as_str()) {
        let read = |m: &BTreeMap<String, String>| counters::parse_named(m.get(&csum_artifact(vm)).map_or("", |t| t));
        let before = read(&e.before);
        for (name, after) in read(&e.outputs) {
            grew.insert(format!("{vm}:{name}"), after.saturating_sub(before.get(&name).copied().unwrap_or(0)));
        }
    }
    grew
}

/// Judges an ILA case from the orchestration's evidence: nothing for the
/// underlay path (nothing is translated), else [`verdict`] with its section.
pub(super) fn of_case(lab: &Lab, case: IlaCase, e: &CaseEvidence) -> Verdict {
    let sir = |end: &CaseEnd| match (end.container.is_some(), end.addr) {
        (true, IpAddr::V6(a)) => Some(a),
        _ => None,
    };
    let (Some(s_sir), Some(c_sir)) = (sir(&e.ends[0]), sir(&e.ends[1])) else {
        return Verdict::default();
    };
    let wire = |addr, end: &CaseEnd| {
        let vm = lab.vm(&end.vm).expect("validated");
        super::wire_address(lab, addr, vm, case.csum_mode).unwrap_or(addr)
    };
    let container = e.captures_at(false);
    let senders = [(s_sir, &e.ends[0]), (c_sir, &e.ends[1])]
        .into_iter()
        .filter_map(|(sir, end)| {
            let mine = container.iter().find(|c| c.vm == end.vm && c.container == end.container)?;
            Some((sir, *mine))
        })
        .collect();
    let evidence = IlaEvidence {
        case,
        sir: [s_sir, c_sir],
        wire: [wire(s_sir, &e.ends[0]), wire(c_sir, &e.ends[1])],
        underlay: e.captures_at(true),
        container,
        senders,
        csum_errors: csum_errors(e),
        delivered: e.delivered,
    };
    let (checks, verdict) = verdict(&evidence);
    Verdict { checks, section: serde_json::to_value(verdict).ok() }
}

/// The ILA verdicts, one line per case, with the documented expectation in
/// brackets where the case deviates from it.
pub(super) fn table(sections: &[(&str, &serde_json::Value)]) -> Option<String> {
    let rows: Vec<(&str, IlaVerdict)> =
        sections.iter().filter_map(|(n, v)| Some((*n, serde_json::from_value((*v).clone()).ok()?))).collect();
    if rows.is_empty() {
        return None;
    }
    let width = rows.iter().map(|(n, _)| n.len()).max().unwrap_or(4).max(4);
    let mut s = format!(
        "\nILA verdicts (documented expectation in [brackets] where it differs)\n{:<width$}  {:<9}  {:<11}  {:<26}  {:<18}  {:<10}  {}\n",
        "case", "delivered", "translation", "wire checksums", "as documented", "container", "csum errors"
    );
    for (name, v) in &rows {
        s.push_str(&format!(
            "{:<width$}  {:<9}  {:<11}  {:<26}  {:<18}  {:<10}  {}\n",
            name,
            delivered_cell(v),
            if v.translation { "ok" } else { "WRONG" },
            wire_cell(v),
            judged_cell(&v.wire_judged),
            container_cell(&v.container),
            v.csum_errors
        ));
    }
    Some(s)
}

fn yes(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

fn delivered_cell(v: &IlaVerdict) -> String {
    match v.delivered == v.expected.delivers {
        true => yes(v.delivered).to_string(),
        false => format!("{} [{}]", yes(v.delivered), yes(v.expected.delivers)),
    }
}

fn wire_cell(v: &IlaVerdict) -> String {
    let expected_wire = variant_name(&v.expected.wire_checksum);
    let wire = match v.wire_checksums.as_str() {
        w if w == expected_wire || w == "offloaded" || w == "unverified" => w.to_string(),
        w => format!("{w} [{expected_wire}]"),
    };
    if v.wire.reverse_adjusted > 0 {
        format!("{wire} (reversed)")
    } else {
        wire
    }
}

/// How many judged wire segments were as documented: `120/120`,
/// `117/120 NOT`, `not judged`.
fn judged_cell(j: &WireJudgement) -> String {
    match (j.judged(), j.not_as_documented()) {
        (0, _) => "not judged".to_string(),
        (n, 0) => format!("{n}/{n}"),
        (n, bad) => format!("{}/{n} NOT", n - bad),
    }
}

fn container_cell(c: &ChecksumCounts) -> &'static str {
    match (c.verified(), c.invalid) {
        (0, _) if c.offloaded > 0 => "offloaded",
        (0, _) => "unverified",
        (_, 0) => "valid",
        _ => "INVALID",
    }
}
