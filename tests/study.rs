//! Studies: several labs in one run. The shipped study loads with the cases
//! it names; a study that names a missing lab, a case filter that matches
//! nothing or an unknown key is refused with the study's file, line and field.

use std::path::Path;

use rstest::rstest;
use vlab::study::{is_study, load};

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
        ]
    );
    for (lab, _) in &study.labs {
        assert_eq!(lab.workload.duration.as_secs(), 5, "the study's duration applies to {}", lab.name);
    }
}

#[rstest]
#[case::missing_lab(STUDY.replacen("file = \"vxlan.toml\"", "file = \"nonexistent.toml\"", 1), "lab[2].file", "no lab file")]
#[case::case_matches_nothing(STUDY.replacen("cases = [\"filter=none\"]", "cases = [\"filter=pf\"]", 1), "lab[0].cases[0]", "`filter=pf` matches no case")]
#[case::unknown_key(STUDY.replacen("duration = \"5s\"", "duration = \"5s\"\nrepeat = 3", 1), "repeat", "unknown field")]
#[case::lab_twice(STUDY.replacen("file = \"vxlan-evpn.toml\"", "file = \"vxlan.toml\"", 1), "lab[3].file", "in the study twice")]
fn bad_studies_name_the_field(#[case] text: String, #[case] field: &str, #[case] message: &str) {
    let err = load_text(&text).err().expect("the study must be refused").to_string();
    assert!(err.contains(&format!("field `{field}`")) && err.contains(message), "{err}");
    assert!(err.contains(".toml:") && err.split(".toml:").nth(1).unwrap().starts_with(char::is_numeric), "line: {err}");
}
