//! Studies: several labs in one run. The shipped study loads with the cases
//! it names; a study that names a missing lab, a case filter that matches
//! nothing or an unknown key is refused with the study's file, line and field.

use std::path::Path;

use rstest::rstest;
use vlab::study::{is_study, load, CaseRef, Claim};

const STUDY: &str = include_str!("../labs/study.toml");

/// Loads study text from a file beside the shipped labs (whose lab files it
/// names relative to itself), under a name of its own.
fn load_text(text: &str) -> Result<vlab::study::Study, vlab::lab::LabError> {
    let file = tempfile::Builder::new()
        .prefix(".test-study-")
        .suffix(".toml")
        .tempfile_in(Path::new(env!("CARGO_MANIFEST_DIR")).join("labs"))
        .unwrap();
    std::fs::write(file.path(), text).unwrap();
    load(file.path())
}

#[test]
fn the_shipped_study_names_every_variant() {
    assert!(is_study(STUDY));
    assert!(!is_study(include_str!("../labs/baseline.toml")));
    let study = load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("labs/study.toml")).unwrap();
    let labs: Vec<(String, usize)> = study.labs.iter().map(|(l, c)| (l.name.clone(), c.len())).collect();
    assert_eq!(
        labs,
        [
            ("filters".to_string(), 2),
            ("ila-matrix".to_string(), 4),
            ("vxlan".to_string(), 1),
            ("vxlan-evpn".to_string(), 1),
            ("swarm".to_string(), 4),
            ("cilium-style".to_string(), 4),
            ("nic-matrix".to_string(), 1),
            ("overlays".to_string(), 3),
        ]
    );
    for (lab, _) in &study.labs {
        assert_eq!(lab.workload.duration.as_secs(), 5, "the study's duration applies to {}", lab.name);
    }
    assert_eq!((study.repeat, study.baseline.as_str()), (3, "filters"));
    let kinds: Vec<String> =
        study.findings.iter().map(|f| serde_json::to_value(f).unwrap()["kind"].as_str().unwrap().to_string()).collect();
    assert_eq!(kinds, ["delivers", "keeps", "keeps", "order", "order"]);
    let Claim::Order { tiers } = &study.findings[3].kind else { panic!("an order") };
    let sizes: Vec<usize> = tiers.iter().map(Vec::len).collect();
    assert_eq!(sizes, [1, 1, 4]);
    assert_eq!(tiers[2][0], CaseRef { lab: "vxlan".into(), case: "default".into() });
    // The overlays again over a 9000-byte underlay, ordered among themselves.
    let Claim::Order { tiers } = &study.findings[4].kind else { panic!("an order") };
    let names: Vec<Vec<String>> = tiers.iter().map(|t| t.iter().map(ToString::to_string).collect()).collect();
    assert_eq!(
        names,
        [
            vec!["overlays/mtu=9000,overlay=baseline"],
            vec!["overlays/mtu=9000,overlay=vxlan", "overlays/mtu=9000,overlay=vxlan-evpn"]
        ]
    );
    let overlays = &study.labs[7];
    assert!(overlays.1.iter().all(|c| c.params.mtu == Some(9000)), "{:?}", overlays.1);
}

/// Without `repeat`, a study runs three rounds (enough for an interval);
/// without `baseline`, its first lab is the baseline.
#[test]
fn a_study_defaults_to_three_rounds_and_its_first_lab() {
    let text = STUDY.replacen("repeat = 3\n", "", 1).replacen("baseline = \"filters\"\n", "", 1);
    let study = load_text(&text).unwrap();
    assert_eq!((study.repeat, study.baseline.as_str()), (vlab::study::DEFAULT_REPEAT, "filters"));
    assert_eq!(vlab::study::DEFAULT_REPEAT, 3);
}

#[rstest]
#[case::missing_lab(STUDY.replacen("file = \"vxlan.toml\"", "file = \"nonexistent.toml\"", 1), "lab[2].file", "no lab file")]
#[case::case_matches_nothing(STUDY.replacen("cases = [\"filter=none\"]", "cases = [\"filter=pf\"]", 1), "lab[0].cases[0]", "`filter=pf` matches no case")]
#[case::unknown_key(STUDY.replacen("duration = \"5s\"", "duration = \"5s\"\nrepeats = 3", 1), "repeats", "unknown field")]
#[case::no_rounds(STUDY.replacen("repeat = 3", "repeat = 0", 1), "repeat", "0 rounds")]
#[case::unknown_baseline(STUDY.replacen("baseline = \"filters\"", "baseline = \"routing\"", 1), "baseline", "no lab `routing`")]
#[case::unknown_lab_in_a_finding(STUDY.replacen("\"ila-matrix/csum-mode=no-action,hook=route,offloads=off\"", "\"ila/csum-mode=no-action\"", 1), "finding[0].delivers[1]", "no lab `ila` in the study")]
#[case::a_case_the_study_does_not_run(STUDY.replacen("keeps = \"swarm/overlay=swarm,filter=iptables,streams=1\"", "keeps = \"swarm/filter=nftables\"", 1), "finding[1].keeps", "no case of `swarm` that the study runs")]
#[case::a_case_named_twice_over(STUDY.replacen("keeps = \"swarm/overlay=swarm,filter=iptables,streams=1\"", "keeps = \"swarm/filter=iptables\"", 1), "finding[1].keeps", "matches several cases")]
#[case::not_lab_slash_case(STUDY.replacen("of = \"swarm/overlay=swarm,filter=none,streams=1\"", "of = \"overlay=swarm\"", 1), "finding[1].of", "LAB/CASE")]
#[case::keeps_without_of(STUDY.replacen("of = \"swarm/overlay=swarm,filter=none,streams=1\"\n", "", 1), "finding[1].of", "needs `of`")]
#[case::a_bound_below_zero(STUDY.replacen("at_least = 0.8", "at_least = -1.0", 1), "finding[1].at_least", "use a ratio above 0")]
#[case::two_claims_in_one(STUDY.replacen("at_least = 0.8", "at_least = 0.8\ndelivers = [\"vxlan/default\"]", 1), "finding[1]", "claims one of")]
#[case::an_order_of_one_tier(STUDY.replacen("order = [\n    [\"filters/filter=none,streams=1\"],\n    [\"ila-matrix/csum-mode=no-action,hook=route,offloads=on\"],\n    [", "order = [\n    [", 1), "finding[3]", "claims one of")]
#[case::waits_with_two_bounds(STUDY.replacen("keeps = ", "waits = ", 1).replacen("at_least = 0.8", "at_least = 0.8\nat_most = 2.0", 1), "finding[1].at_most", "one of `at_most`")]
#[case::waits_without_of(STUDY.replacen("keeps = ", "waits = ", 1).replacen("of = \"swarm/overlay=swarm,filter=none,streams=1\"\n", "", 1), "finding[1].of", "`waits` needs `of`")]
#[case::at_most_without_waits(STUDY.replacen("claim = \"Every ILA", "at_most = 1.0\nclaim = \"Every ILA", 1), "finding[0].at_most", "belongs to a `waits` claim")]
#[case::lab_twice(STUDY.replacen("file = \"vxlan-evpn.toml\"", "file = \"vxlan.toml\"", 1), "lab[3].file", "in the study twice")]
fn bad_studies_name_the_field(#[case] text: String, #[case] field: &str, #[case] message: &str) {
    let err = load_text(&text).err().expect("the study must be refused").to_string();
    assert!(err.contains(&format!("field `{field}`")) && err.contains(message), "{err}");
    assert!(err.contains(".toml:") && err.split(".toml:").nth(1).unwrap().starts_with(char::is_numeric), "line: {err}");
}
