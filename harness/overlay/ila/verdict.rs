//! Judging an ILA case: addresses and checksums seen in the captures against
//! what the kernel documents for the checksum mode, and the table of
//! verdicts for people.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv6Addr};

use serde::{Deserialize, Serialize};

use super::{c_bit, locator_of, CsumMode, IlaCase};
use crate::lab::{variant_name, Lab};
use crate::measure::capture::{flows_are, CaptureSummary, Flow};
use crate::measure::checksum::{self, ChecksumCounts, ChecksumStatus};
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
    /// What the documentation says.
    pub expected: Expectation,
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
    checks.extend(checksum_checks(e, &expected, &wire, &container));
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

/// Wire checksums as the mode documents them, valid ones in the containers,
/// no checksum errors counted by the receivers.
fn checksum_checks(
    e: &IlaEvidence,
    expected: &Expectation,
    wire: &ChecksumCounts,
    container: &ChecksumCounts,
) -> Vec<Check> {
    let mode = variant_name(&e.case.csum_mode);
    let mut checks = Vec::new();
    if wire.verified() > 0 {
        let ok = match expected.wire_checksum {
            ChecksumStatus::Invalid => wire.valid == 0,
            _ => wire.invalid == 0,
        };
        checks.push(Check::new(
            "ILA: wire checksums as documented",
            ok,
            format!(
                "{mode} documents {} checksums on the wire; underlay captures: {wire}",
                variant_name(&expected.wire_checksum)
            ),
        ));
    }
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
    let evidence = IlaEvidence {
        case,
        sir: [s_sir, c_sir],
        wire: [wire(s_sir, &e.ends[0]), wire(c_sir, &e.ends[1])],
        underlay: e.captures_at(true),
        container: e.captures_at(false),
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
        "\nILA verdicts (documented expectation in [brackets] where it differs)\n{:<width$}  {:<9}  {:<11}  {:<26}  {:<10}  {}\n",
        "case", "delivered", "translation", "wire checksums", "container", "csum errors"
    );
    for (name, v) in &rows {
        s.push_str(&format!(
            "{:<width$}  {:<9}  {:<11}  {:<26}  {:<10}  {}\n",
            name,
            delivered_cell(v),
            if v.translation { "ok" } else { "WRONG" },
            wire_cell(v),
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

fn container_cell(c: &ChecksumCounts) -> &'static str {
    match (c.verified(), c.invalid) {
        (0, _) if c.offloaded > 0 => "offloaded",
        (0, _) => "unverified",
        (_, 0) => "valid",
        _ => "INVALID",
    }
}
