//! The ILA overlay (`Documentation/networking/ila.rst`, `net/ipv6/ila/`).
//!
//! Containers keep SIR addresses: the lab's SIR prefix (a /64) plus a 64-bit
//! identifier. Each VM owns a locator. On the way out, a lightweight-tunnel
//! route per remote container rewrites the destination's upper 64 bits from
//! the SIR prefix to the peer's locator (`SIR -> ILA`); on the way in, the
//! receiver rewrites them back (`ILA -> SIR`), either with a route for its own
//! locator or through the `ila_xlat` table (`ip ila add`). The checksum mode
//! decides how the transport checksum survives the rewrite.
//!
//! The address arithmetic here follows the kernel's documented semantics, so
//! vlab can say which destination must appear on the wire and compare it with
//! the captures.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv6Addr};

use serde::Serialize;

use crate::guest::{host_veth, UNDERLAY_DEV};
use crate::lab::{variant_name, CsumMode, IdentType, IlaCase, IlaHook, IlaSettings, Lab, Locator, Vm};
use crate::measure::capture::{flows_are, CaptureSummary, Flow};
use crate::measure::checksum::{self, ChecksumCounts, ChecksumStatus};
use crate::report::{list, Check};

/// Route protocol number that marks vlab's ILA routes, so that a case can
/// replace them all (`ip -6 route flush proto 99`).
pub const ROUTE_PROTO: u32 = 99;

/// The identifier's checksum-neutral bit (C-bit): bit 4 of its first byte.
const C_BIT: u64 = 1 << 60;
/// The C-bit as the 16-bit word the kernel sums (`htonl(0x10000000)`).
const C_BIT_WORD: u64 = 0x1000;

/// Which way a translation goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// SIR address to ILA address (the sender).
    SirToIla,
    /// ILA address to SIR address (the receiver).
    IlaToSir,
}

/// The upper 64 bits of an address.
pub fn locator_of(addr: Ipv6Addr) -> Locator {
    Locator((u128::from(addr) >> 64) as u64)
}

/// The lower 64 bits of an address.
pub fn identifier_of(addr: Ipv6Addr) -> u64 {
    u128::from(addr) as u64
}

fn join(loc: Locator, ident: u64) -> Ipv6Addr {
    Ipv6Addr::from((u128::from(loc.0) << 64) | u128::from(ident))
}

/// Whether the identifier's C-bit is set.
pub fn c_bit(addr: Ipv6Addr) -> bool {
    identifier_of(addr) & C_BIT != 0
}

fn words(v: u64) -> [u64; 4] {
    [v >> 48, (v >> 32) & 0xffff, (v >> 16) & 0xffff, v & 0xffff]
}

/// Rewrites `addr`'s locator to `to` under `mode`, as the kernel's
/// `ila_update_ipv6_locator` does: the neutral modes fold the checksum
/// difference of the locators into the identifier's low 16 bits
/// (`neutral-map` also accounts for and flips the C-bit, and only where the
/// C-bit says the mapping applies); the other modes change the locator only.
pub fn translate(addr: Ipv6Addr, to: Locator, mode: CsumMode, dir: Direction) -> Ipv6Addr {
    let from = locator_of(addr);
    let mut ident = identifier_of(addr);
    // old - new in ones'-complement: the old words plus the complemented new ones.
    let diff: u64 = words(from.0).iter().sum::<u64>() + words(to.0).iter().map(|w| 0xffff - w).sum::<u64>();
    let adjust = |ident: u64, extra: u64| {
        let low = checksum::fold((ident & 0xffff) + diff + extra);
        (ident & !0xffff) | u64::from(low)
    };
    match mode {
        CsumMode::NoAction | CsumMode::AdjTransport => {}
        CsumMode::NeutralMapAuto => ident = adjust(ident, 0),
        CsumMode::NeutralMap => {
            let set = ident & C_BIT != 0;
            let applies = match dir {
                Direction::SirToIla => !set,
                Direction::IlaToSir => set,
            };
            if applies {
                // Setting the bit adds its word to the address sum; clearing subtracts it.
                let flag = if set { C_BIT_WORD } else { 0xffff - C_BIT_WORD };
                ident = adjust(ident, flag) ^ C_BIT;
            }
        }
    }
    join(to, ident)
}

/// Applies a translation to an IPv6 packet (no extension headers) the way the
/// documentation describes the modes: the destination is rewritten and, with
/// `adj-transport`, the TCP checksum is corrected for the new pseudo-header.
/// Used to test the checksum code on captured bytes.
pub fn translate_packet(packet: &[u8], to: Locator, mode: CsumMode, dir: Direction) -> Vec<u8> {
    let mut p = packet.to_vec();
    let mut dst = [0u8; 16];
    dst.copy_from_slice(&p[24..40]);
    let old = Ipv6Addr::from(dst);
    let new = translate(old, to, mode, dir);
    p[24..40].copy_from_slice(&new.octets());
    if mode == CsumMode::AdjTransport && p[6] == 6 {
        let src: [u8; 16] = p[8..24].try_into().expect("16 bytes");
        let sum = checksum::tcp_checksum(IpAddr::V6(src.into()), IpAddr::V6(new), &p[40..]);
        p[56..58].copy_from_slice(&sum.to_be_bytes());
    }
    p
}

/// The SIR locator: the SIR prefix's upper 64 bits.
pub fn sir_locator(settings: &IlaSettings) -> Locator {
    locator_of(settings.sir_prefix.network())
}

/// The ILA settings of a lab (the defaults when it has no `[ila]` table).
pub fn settings(lab: &Lab) -> IlaSettings {
    lab.ila.clone().unwrap_or_default()
}

/// The destination a packet for container address `sir` carries on the wire
/// when `vm` (the container's host) owns the locator.
pub fn wire_address(sir: Ipv6Addr, vm: &Vm, mode: CsumMode) -> Option<Ipv6Addr> {
    vm.locator.map(|loc| translate(sir, loc, mode, Direction::SirToIla))
}

/// Each VM's locator with the SIR address of its container.
pub fn sir_addresses(lab: &Lab) -> Vec<(Locator, Ipv6Addr)> {
    lab.vms.iter().filter_map(|vm| Some((vm.locator?, vm.containers.first()?.ipv6?.addr()))).collect()
}

/// The SIR destination behind an ILA destination seen on the wire (the one
/// the sender's stack computed the checksum for), given [`sir_addresses`].
pub fn original_destination(sirs: &[(Locator, Ipv6Addr)], dst: IpAddr) -> Option<IpAddr> {
    let IpAddr::V6(d) = dst else { return None };
    sirs.iter().find(|(loc, _)| locator_of(d) == *loc).map(|(_, sir)| IpAddr::V6(*sir))
}

fn ident_type_name(t: IdentType) -> String {
    variant_name(&t)
}

/// Commands run once per boot: forwarding, and a clear error when the kernel
/// has no ILA.
pub fn commands() -> Vec<String> {
    vec![
        "sysctl -qw net.ipv6.conf.all.forwarding=1".to_string(),
        "[ -d /sys/module/ila ] || { echo 'this kernel has no ILA module (CONFIG_IPV6_ILA)' >&2; exit 1; }".to_string(),
    ]
}

/// Commands that (re)configure the translations of `vm` for one case: the
/// previous case's routes and mappings go first.
pub fn case_commands(lab: &Lab, vm: &Vm, case: IlaCase) -> Vec<String> {
    let s = settings(lab);
    let sir_loc = sir_locator(&s);
    let mode = variant_name(&case.csum_mode);
    let ident = ident_type_name(s.ident_type);
    let mut cmds = vec![format!("ip -6 route flush proto {ROUTE_PROTO}")];
    let Some(own_loc) = vm.locator else { return cmds };
    cmds.push(format!("ip ila del loc_match {own_loc} dev {UNDERLAY_DEV} 2>/dev/null || true"));
    // Egress: SIR -> ILA for every container on the other VMs.
    let egress_hook = if case.hook == IlaHook::RouteInput { "input" } else { "output" };
    for peer in lab.vms.iter().filter(|p| p.name != vm.name) {
        let (Some(loc), Some(via)) = (peer.locator, peer.underlay.ipv6) else { continue };
        for c in peer.containers.iter().filter_map(|c| c.ipv6) {
            cmds.push(format!(
                "ip -6 route add {}/128 encap ila {loc} csum-mode {mode} ident-type {ident} hook-type {egress_hook} via {} dev {UNDERLAY_DEV} proto {ROUTE_PROTO}",
                c.addr(),
                via.addr()
            ));
        }
    }
    // Ingress: ILA -> SIR for this VM's locator, towards its container.
    let Some((container, sir)) = vm.containers.iter().find_map(|c| c.ipv6.map(|n| (c, n.addr()))) else {
        return cmds;
    };
    match case.hook {
        IlaHook::Route | IlaHook::RouteInput => {
            // `use-format` routes must cover the identifier's type bits (/67, type 001 = luid).
            let dst = match s.ident_type {
                IdentType::Luid => format!("{}/64", join(own_loc, 0)),
                IdentType::UseFormat => format!("{}/67", join(own_loc, 1 << 61)),
            };
            let hook = if case.hook == IlaHook::RouteInput { "input" } else { "output" };
            cmds.push(format!(
                "ip -6 route add {dst} encap ila {sir_loc} csum-mode {mode} ident-type {ident} hook-type {hook} via {sir} dev {} proto {ROUTE_PROTO}",
                host_veth(&container.name)
            ));
        }
        IlaHook::Xlat => cmds.push(format!(
            "ip ila add loc_match {own_loc} loc {sir_loc} csum-mode {mode} ident-type {ident} dev {UNDERLAY_DEV}"
        )),
    }
    cmds
}

/// What the documentation says a case must show.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
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
    let mode = variant_name(&e.case.csum_mode);
    let [s_sir, c_sir] = e.sir.map(IpAddr::V6);
    let [s_wire, c_wire] = e.wire.map(IpAddr::V6);
    let mut checks = Vec::new();

    let flows = |caps: &[&CaptureSummary]| -> Vec<Flow> {
        let set: BTreeSet<Flow> = caps.iter().flat_map(|c| c.flows.iter().copied()).collect();
        set.into_iter().collect()
    };
    let on_wire = flows(&e.underlay);
    let wire_expected = [Flow { src: c_sir, dst: s_wire }, Flow { src: s_sir, dst: c_wire }];
    let wire_ok = flows_are(&on_wire, &wire_expected);
    checks.push(Check::new(
        "ILA: wire carries locator + identifier",
        wire_ok,
        format!("expected {}; seen {}", list(wire_expected), list(&on_wire)),
    ));
    let inside = flows(&e.container);
    let sir_expected = [Flow { src: c_sir, dst: s_sir }, Flow { src: s_sir, dst: c_sir }];
    let sir_ok = flows_are(&inside, &sir_expected);
    checks.push(Check::new(
        "ILA: containers see SIR addresses",
        sir_ok,
        format!("expected {}; seen {}", list(sir_expected), list(&inside)),
    ));

    let wire_destinations: Vec<Ipv6Addr> =
        on_wire.iter().filter_map(|f| v6(f.dst)).collect::<BTreeSet<_>>().into_iter().collect();
    if expected.neutral || expected.c_bit {
        // From the captured bytes alone: the C-bit, and the address sum the
        // transport checksum sees, against the SIR address of the same identifier.
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
        checks.push(Check::new(
            "ILA: identifier is checksum-neutral",
            !wire_destinations.is_empty() && bad.is_empty(),
            if bad.is_empty() {
                format!(
                    "{mode}: C-bit {} and address sum unchanged on {}",
                    if expected.c_bit { "set" } else { "clear" },
                    list(&wire_destinations)
                )
            } else {
                bad.join("; ")
            },
        ));
    }

    let mut wire = ChecksumCounts::default();
    e.underlay.iter().for_each(|c| wire.merge(&c.checksums));
    let mut container = ChecksumCounts::default();
    e.container.iter().for_each(|c| container.merge(&c.checksums));
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

    let v = IlaVerdict {
        case: e.case,
        delivered: e.delivered,
        translation: wire_ok && sir_ok,
        wire_destinations,
        wire,
        container,
        wire_checksums: wire_checksums(&wire).to_string(),
        csum_errors,
        expected,
    };
    (checks, v)
}
