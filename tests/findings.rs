//! The study's findings judged from synthetic measurements of the shipped
//! study's cases: claims that the figures support hold, those they
//! contradict do not, and those they cannot decide (one round, an interval
//! across the bound, a case not run) are inconclusive; each case is set
//! against the baseline's case with as many streams, paired by round.

use std::path::Path;

use vlab::findings::{judge, Measured, StudyOutcome, Verdict};
use vlab::study::{load, CaseRef};

/// Every case of the shipped study, with three rounds of samples from
/// `samples(lab, case)`.
fn judged(samples: impl Fn(&str, &str) -> Option<Vec<f64>>) -> StudyOutcome {
    let study = load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("labs/study.toml")).unwrap();
    let cases: Vec<Measured> = study
        .labs
        .iter()
        .flat_map(|(lab, cases)| cases.iter().map(move |c| (lab, c)))
        .filter_map(|(lab, c)| {
            Some(Measured {
                case: CaseRef { lab: lab.name.clone(), case: c.name.clone() },
                streams: c.params.streams,
                mtu: c.params.mtu.unwrap_or(lab.mtu),
                samples: samples(&lab.name, &c.name)?,
                connects: Vec::new(),
                failed_checks: Vec::new(),
            })
        })
        .collect();
    judge(&study.name, &study.baseline, &study.findings, &cases, "6.12", 3)
}

/// Samples as the study expects them: routing 2 Gbit/s, ILA 1.5, the
/// overlays near 0.4, the filters within 5 % of none, each round drifting
/// alike (so that the paired ratios are tight).
fn as_expected(lab: &str, case: &str) -> Option<Vec<f64>> {
    let base = match (lab, case) {
        ("filters", c) if c.contains("streams=4") => 2.4,
        ("filters", _) => 2.0,
        ("ila-matrix", c) if c.contains("offloads=off") => 0.25,
        ("ila-matrix", _) => 1.5,
        ("vxlan", _) => 0.46,
        ("vxlan-evpn", _) => 0.38,
        (_, c) if c.contains("filter=iptables") || c.contains("filter=l4-policy") => 0.38,
        ("nic-matrix", _) => 0.6,
        ("overlays", c) if c.contains("overlay=baseline") => 3.0,
        ("overlays", c) if c.contains("overlay=vxlan-evpn") => 0.7,
        ("overlays", _) => 1.4,
        _ => 0.4,
    };
    Some([1.0, 1.1, 0.9].iter().map(|drift| base * drift * 1e9).collect())
}

fn verdicts(o: &StudyOutcome) -> Vec<Verdict> {
    o.findings.iter().map(|f| f.verdict).collect()
}

#[test]
fn the_studys_claims_hold_on_figures_that_support_them() {
    let o = judged(as_expected);
    assert_eq!(verdicts(&o), [Verdict::Holds; 5], "{}", o.table());
    assert!(!o.failed());
    // vxlan over routing: 0.46/2.0 in every round.
    let vxlan = o.vs_baseline.iter().find(|v| v.case.lab == "vxlan").unwrap();
    assert_eq!(vxlan.against.case, "filter=none,streams=1");
    let r = vxlan.ratio.as_ref().unwrap();
    assert!((r.mean - 0.23).abs() < 1e-9 && r.samples.len() == 3, "{r:?}");
    let i = r.interval.unwrap();
    assert!((i.low - 0.23).abs() < 1e-9 && (i.high - 0.23).abs() < 1e-9, "{i:?}");
    // Four streams against four streams.
    let four = o.vs_baseline.iter().find(|v| v.case.case == "overlay=swarm,filter=none,streams=4").unwrap();
    assert_eq!(four.against.case, "filter=none,streams=4");
    assert!(o.vs_baseline.iter().all(|v| v.case.lab != "filters"), "the baseline is not set against itself");
    // The 9000-byte cases have no baseline case at their MTU: no ratio
    // across MTUs; the ordering claim at 9000 gives theirs.
    assert!(o.vs_baseline.iter().all(|v| v.case.lab != "overlays"), "{}", o.table());
    assert_eq!(o.vs_baseline.len(), 15);
    let at_9000 = &o.findings[4].evidence;
    assert_eq!(at_9000.len(), 2);
    assert!(
        at_9000[0].starts_with("overlays/mtu=9000,overlay=vxlan over overlays/mtu=9000,overlay=baseline: 0.47x"),
        "{at_9000:?}"
    );
    let table = o.table();
    assert!(
        table.contains("holds: Every ILA checksum mode delivers") && table.contains("0.23x [0.23, 0.23]"),
        "{table}"
    );
    assert!(o.markdown().contains("### Findings"));
}

#[test]
fn a_mode_that_delivers_nothing_in_a_round_breaks_the_delivery_claim() {
    let o = judged(|lab, case| {
        let mut s = as_expected(lab, case)?;
        if case == "csum-mode=no-action,hook=route,offloads=on" {
            s[1] = 0.0;
        }
        Some(s)
    });
    assert_eq!(o.findings[0].verdict, Verdict::DoesNotHold);
    assert!(o.failed());
    let line = &o.findings[0].evidence[0];
    assert!(line.contains("offloads=on: delivered in 2 of 3 repetitions"), "{line}");
    // A datapath that moved nothing has no place in the order.
    assert_eq!(o.findings[3].verdict, Verdict::Inconclusive);
    assert!(o.findings[3].evidence[0].contains("delivered nothing"), "{:?}", o.findings[3].evidence);
}

#[test]
fn a_case_that_did_not_run_leaves_its_claims_inconclusive() {
    let o = judged(|lab, case| if lab == "swarm" { None } else { as_expected(lab, case) });
    assert_eq!(
        verdicts(&o),
        [Verdict::Holds, Verdict::Inconclusive, Verdict::Holds, Verdict::Inconclusive, Verdict::Holds]
    );
    assert!(o.findings[1].evidence[0].ends_with("not run"), "{:?}", o.findings[1].evidence);
    assert!(!o.failed(), "inconclusive is not a failure");
}

/// A case is set against the baseline lab's case with as many streams and
/// the same MTU: a 9000-byte VXLAN case against 9000-byte routing, not
/// against the faster-or-slower 1500-byte one, and not at all when the
/// baseline lab did not run its MTU.
#[test]
fn a_case_is_set_against_the_baseline_at_its_own_mtu() {
    let case = |lab: &str, name: &str, mtu: u32, gbps: f64| Measured {
        case: CaseRef { lab: lab.into(), case: name.into() },
        streams: 1,
        mtu,
        samples: vec![gbps * 1e9, gbps * 1.1e9],
        connects: Vec::new(),
        failed_checks: Vec::new(),
    };
    let cases = [
        case("routing", "mtu=1500", 1500, 1.0),
        case("routing", "mtu=9000", 9000, 1.5),
        case("vxlan", "mtu=9000", 9000, 0.75),
        case("vxlan", "mtu=4000", 4000, 0.5),
    ];
    let o = judge("mtus", "routing", &[], &cases, "6.12", 2);
    assert_eq!(o.vs_baseline.len(), 1, "{}", o.table());
    let v = &o.vs_baseline[0];
    assert_eq!((v.case.case.as_str(), v.against.case.as_str()), ("mtu=9000", "mtu=9000"));
    assert!((v.ratio.as_ref().unwrap().mean - 0.5).abs() < 1e-9, "{v:?}");
}

/// iptables at `cost` of none's throughput, round by round.
fn iptables_at(cost: [f64; 3]) -> StudyOutcome {
    judged(move |lab, case| {
        let mut s = as_expected(lab, case)?;
        if case == "overlay=swarm,filter=iptables,streams=1" {
            let none = as_expected(lab, "overlay=swarm,filter=none,streams=1")?;
            s = none.iter().zip(cost).map(|(n, c)| n * c).collect();
        }
        Some(s)
    })
}

#[test]
fn a_filter_costs_little_only_when_its_whole_interval_is_above_the_bound() {
    // Tight around 0.95: holds.
    assert_eq!(iptables_at([0.95, 0.96, 0.94]).findings[1].verdict, Verdict::Holds);
    // Tight around 0.6: wholly below 0.8, does not hold.
    let slow = iptables_at([0.6, 0.61, 0.59]);
    assert_eq!(slow.findings[1].verdict, Verdict::DoesNotHold);
    assert!(slow.findings[1].evidence[0].contains("0.60x ["), "{:?}", slow.findings[1].evidence);
    // Around 1 but wide (0.6 to 1.3): the interval holds 1 and 0.8, so it cannot tell.
    assert_eq!(iptables_at([0.6, 1.3, 1.0]).findings[1].verdict, Verdict::Inconclusive);
}

#[test]
fn one_round_supports_no_ratio_claim() {
    let o = judged(|lab, case| Some(vec![as_expected(lab, case)?[0]]));
    assert_eq!(
        verdicts(&o),
        [Verdict::Holds, Verdict::Inconclusive, Verdict::Inconclusive, Verdict::Inconclusive, Verdict::Inconclusive]
    );
    assert!(o.findings[1].evidence[0].contains("no interval"), "{:?}", o.findings[1].evidence);
}

#[test]
fn an_overlay_faster_than_routing_breaks_the_order() {
    let o = judged(|lab, case| {
        let s = as_expected(lab, case)?;
        Some(if lab == "vxlan" { s.iter().map(|x| x * 4.0).collect() } else { s })
    });
    assert_eq!(o.findings[3].verdict, Verdict::DoesNotHold);
    let line = o.findings[3].evidence.iter().find(|l| l.starts_with("vxlan/default over ila-matrix")).unwrap();
    assert!(line.contains("1.23x [1.23, 1.23]"), "{line}");
}

/// The policy methods' study judged from synthetic new-connection
/// latencies (µs, three rounds, `cost(case)` times `none`'s) and
/// throughputs (the methods at `keep` of `none`'s).
fn methods_judged(cost: impl Fn(&str) -> f64, keep: f64) -> StudyOutcome {
    let study = load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("labs/policy-methods-study.toml")).unwrap();
    let cases: Vec<Measured> = study
        .labs
        .iter()
        .flat_map(|(lab, cases)| cases.iter().map(move |c| (lab, c)))
        .map(|(lab, c)| {
            let drift = [1.0, 1.2, 0.9];
            let none = c.name.contains("filter=none");
            let (us, bps) = if none { (1500.0, 2e9) } else { (1500.0 * cost(&c.name), 2e9 * keep) };
            Measured {
                case: CaseRef { lab: lab.name.clone(), case: c.name.clone() },
                streams: c.params.streams,
                mtu: lab.mtu,
                samples: drift.iter().map(|d| bps * d).collect(),
                connects: drift.iter().map(|d| us * d).collect(),
                failed_checks: Vec::new(),
            }
        })
        .collect();
    judge(&study.name, &study.baseline, &study.findings, &cases, "6.12", 3)
}

/// Linear iptables, flat sets and maps, flows kept: every claim holds; an
/// iptables that stays flat, an nftables that grows, or a flow that the
/// filters halve breaks exactly the claims about them.
#[test]
fn the_policy_methods_claims_follow_the_latencies() {
    let field = |c: &str| if c.contains("iptables,rules=10000") { 2.0 } else { 1.1 };
    let o = methods_judged(field, 0.9);
    assert_eq!(verdicts(&o), [Verdict::Holds; 7], "{}", o.table());
    let flat = methods_judged(|_| 1.1, 0.9);
    assert_eq!(verdicts(&flat)[0], Verdict::DoesNotHold, "{}", flat.table());
    assert_eq!(verdicts(&flat)[1..], [Verdict::Holds; 6]);
    let nft = methods_judged(|c| if c.contains("rules=10000") { 2.0 } else { 1.1 }, 0.9);
    assert_eq!(verdicts(&nft)[..4], [Verdict::Holds, Verdict::DoesNotHold, Verdict::DoesNotHold, Verdict::Holds]);
    let halved = methods_judged(field, 0.5);
    assert_eq!(verdicts(&halved)[4..], [Verdict::DoesNotHold; 3], "{}", halved.table());
    assert!(halved.findings[0].evidence[0].contains("new connections over"), "{:?}", halved.findings[0].evidence);
    // One lab, its own baseline: no empty table of ratios across labs.
    assert!(o.vs_baseline.is_empty());
    assert!(o.table().contains("no case to compare") && !o.table().contains("ratio [95 % interval]"), "{}", o.table());
    assert!(!o.markdown().contains("| case |"), "{}", o.markdown());
}

/// Without timed connections the latency claims cannot be judged.
#[test]
fn latency_claims_without_timed_connections_are_inconclusive() {
    let study = load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("labs/policy-methods-study.toml")).unwrap();
    let cases: Vec<Measured> = study.labs[0]
        .1
        .iter()
        .map(|c| Measured {
            case: CaseRef { lab: "policy-methods".into(), case: c.name.clone() },
            streams: 1,
            mtu: 1500,
            samples: vec![2e9, 2.1e9, 1.9e9],
            connects: Vec::new(),
            failed_checks: Vec::new(),
        })
        .collect();
    let o = judge(&study.name, &study.baseline, &study.findings, &cases, "6.12", 3);
    assert_eq!(verdicts(&o)[..4], [Verdict::Inconclusive; 4], "{}", o.table());
}

/// Tiers that measure the same in every round: each ratio is exactly 1
/// with an interval of [1, 1], which lies neither below 1 nor above it, so
/// the order is not shown.
#[test]
fn tiers_that_tie_leave_the_order_inconclusive() {
    let o = judged(|_, _| Some(vec![1e9, 1.1e9, 0.9e9]));
    assert_eq!(o.findings[3].verdict, Verdict::Inconclusive, "{:?}", o.findings[3].evidence);
    assert!(o.findings[3].evidence.iter().all(|l| l.contains("1.00x [1.00, 1.00]")), "{:?}", o.findings[3].evidence);
}
