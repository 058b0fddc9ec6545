//! The cilium-style overlay and its l4-policy filter as lab files give them:
//! the commands that deploy the datapath and the policy, and invalid labs
//! refused with the field at fault.

use std::path::Path;

use rstest::rstest;
use vlab::filter;
use vlab::lab::{Lab, LabError};
use vlab::overlay::{self, setup_script};

const LAB: &str = include_str!("../labs/cilium-style.toml");

/// Parses lab text as if it were `labs/cilium-style.toml` (its policy file
/// is relative to it).
fn parse(text: &str) -> Result<Lab, LabError> {
    vlab::parse_lab(text, &Path::new(env!("CARGO_MANIFEST_DIR")).join("labs/cilium-style.toml"))
}

fn edit(from: &str, to: &str) -> String {
    assert!(LAB.contains(from), "fixture lacks {from:?}");
    LAB.replacen(from, to, 1)
}

/// The lab with the policy file `tests/fixtures/cilium/NAME`.
fn policy(name: &str) -> String {
    edit("policy = \"cilium-style/policy.json\"", &format!("policy = \"../tests/fixtures/cilium/{name}\""))
}

#[test]
fn the_lab_runs_both_filters_on_cilium_style_and_none_on_the_baseline() {
    let names: Vec<String> = parse(LAB).unwrap().cases().into_iter().map(|c| c.name).collect();
    assert_eq!(
        names,
        [
            "overlay=baseline,filter=none,streams=1",
            "overlay=baseline,filter=none,streams=4",
            "overlay=cilium-style,filter=none,streams=1",
            "overlay=cilium-style,filter=none,streams=4",
            "overlay=cilium-style,filter=l4-policy,streams=1",
            "overlay=cilium-style,filter=l4-policy,streams=4",
        ]
    );
}

/// The datapath (device, programs, maps from the labels' identities) and
/// the policy the filter puts into the maps and takes out again.
#[test]
fn deploy_commands() {
    let lab = parse(LAB).unwrap().with_overlay("cilium-style").with_filter("l4-policy");
    let mut script = Vec::new();
    for (i, vm) in lab.vms.iter().enumerate() {
        script.push(format!("# {}", vm.name));
        script.extend(setup_script(&lab, vm, i, &vm.nic, &format!("52:54:00:4c:{:02x}:01", i + 1)));
    }
    let points = overlay::get("cilium-style").enforcement_points(&lab);
    let l4 = filter::get("l4-policy");
    for (what, steps) in [("deploy", l4.deploy(&lab, &points)), ("remove", l4.remove(&lab, &points))] {
        for step in steps.into_iter().filter(|s| s.vm == "host1") {
            script.push(format!("# l4-policy {what} on {}", step.vm));
            script.extend(step.commands);
        }
    }
    insta::assert_snapshot!("cilium_style_commands", script.join("\n"));
}

#[rstest]
#[case::labels_of_no_container(
    edit("c3 = { id = \"app2\" }", "c9 = { id = \"app2\" }"),
    "cilium_labels_of_no_container"
)]
#[case::bad_label_source(
    edit("c3 = { id = \"app2\" }", "c3 = { \"reserved:host\" = \"x\" }"),
    "cilium_bad_label_source"
)]
#[case::policy_file_missing(
    edit("policy = \"cilium-style/policy.json\"", "policy = \"cilium-style/nonexistent.json\""),
    "cilium_policy_file_missing"
)]
#[case::policy_not_json(policy("truncated.json"), "cilium_policy_not_json")]
#[case::policy_port_out_of_range(policy("port-out-of-range.json"), "cilium_policy_port_out_of_range")]
#[case::policy_unsupported_feature(policy("cidr.json"), "cilium_policy_unsupported_feature")]
#[case::source_missing(edit("port = 8472", "port = 8472\nsource = \"my-datapath.c\""), "cilium_source_missing")]
#[case::policy_selects_nobody(
    edit("c1 = { id = \"service1\" }", "c1 = { id = \"service9\" }"),
    "cilium_policy_selects_nobody"
)]
#[case::l4_policy_on_the_baseline(
    edit("exclude = [{ overlay = \"baseline\", filter = \"l4-policy\" }]", ""),
    "cilium_l4_policy_on_the_baseline"
)]
#[case::iptables_on_cilium_style(
    edit("filter = [\"none\", \"l4-policy\"]", "filter = [\"none\", \"l4-policy\", \"iptables\"]")
        .replace("exclude = [{ overlay = \"baseline\", filter = \"l4-policy\" }]", "exclude = [{ overlay = \"baseline\", filter = \"l4-policy\" }, { overlay = \"baseline\", filter = \"iptables\" }]"),
    "cilium_iptables_on_cilium_style"
)]
#[case::ipv6_containers(
    edit("streams = [1, 4]", "streams = [1, 4]\nfamily = [\"ipv4\", \"ipv6\"]")
        .replace("ipv4 = \"10.1.1.2/24\"", "ipv4 = \"10.1.1.2/24\"\nipv6 = \"fd01:1::2/64\"")
        .replace("ipv4 = \"10.1.2.2/24\"", "ipv4 = \"10.1.2.2/24\"\nipv6 = \"fd01:2::2/64\""),
    "cilium_ipv6_containers"
)]
#[case::sriov(
    edit("nic = { model = \"virtio\", queues = 2 }", "nic = { model = \"igb-sriov\", vfs = 2 }"),
    "cilium_on_vfs"
)]
fn invalid_cilium_style_labs_name_the_field(#[case] text: String, #[case] name: &str) {
    let err = parse(&text).expect_err("the lab must be rejected");
    let shown = err.to_string().replace(env!("CARGO_MANIFEST_DIR"), "[repo]");
    insta::assert_snapshot!(name, shown);
}

/// A lab that brings its own datapath source (`source`, relative to the lab
/// file) has it written into every VM before the datapath is built from it,
/// and kept in the artifacts.
#[test]
fn a_datapath_source_of_the_labs_own_is_written_into_every_vm() {
    let lab = parse(&edit("port = 8472", "port = 8472\nsource = \"../bpf/cilium_style.c\"")).unwrap();
    let lab = lab.with_overlay("cilium-style");
    let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("bpf/cilium_style.c")).unwrap();
    let steps = overlay::get("cilium-style").deploy(&lab, &[]);
    assert_eq!(steps.len(), lab.vms.len());
    for step in &steps {
        let files: Vec<(&str, bool, Option<&str>)> =
            step.files.iter().map(|f| (f.path.as_str(), f.text == text, f.artifact.as_deref())).collect();
        assert_eq!(files, [("/tmp/vlab-cilium-style.c", true, Some("cilium-style/source.c"))], "{}", step.vm);
        assert!(step.commands.iter().any(|c| c.contains("-c /tmp/vlab-cilium-style.c")), "{:?}", step.commands);
    }
    // Without one, vlab's own datapath is built and no file is written.
    let own = parse(LAB).unwrap().with_overlay("cilium-style");
    assert!(overlay::get("cilium-style").deploy(&own, &[]).iter().all(|s| s.files.is_empty()));
}
