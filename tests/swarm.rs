//! The `swarm` overlay's lab validation and deploy plan (Docker itself runs
//! in the VM tests).

use std::path::Path;

use rstest::rstest;
use vlab::lab::{Lab, LabError};
use vlab::overlay::{self, swarm};

const SWARM: &str = include_str!("../labs/swarm.toml");

fn parse(text: &str) -> Result<Lab, LabError> {
    vlab::parse_lab(text, Path::new("swarm.toml"))
}

fn edit(from: &str, to: &str) -> String {
    assert!(SWARM.contains(from), "fixture lacks {from:?}");
    SWARM.replacen(from, to, 1)
}

#[test]
fn the_shipped_lab_is_a_two_node_swarm_on_one_subnet() {
    let lab = parse(SWARM).unwrap();
    assert_eq!(swarm::manager(&lab).name, "host1");
    let net = swarm::subnet(&lab).unwrap();
    assert_eq!(net.to_string(), "10.0.9.0/24");
    assert_eq!(swarm::gateway(net).to_string(), "10.0.9.254");
}

/// One VM, a container outside the subnet or on Docker's gateway, an
/// unknown manager, a container without IPv4: exit 128 naming the field.
#[rstest]
#[case::one_vm(
    SWARM.split("[[vm]]\nname = \"host2\"").next().unwrap().to_string()
        + "[workload]\nserver = \"host1/c1\"\nclient = \"host1\"\n",
    "swarm_one_vm"
)]
#[case::outside_subnet(edit("ipv4 = \"10.0.9.3/24\"", "ipv4 = \"10.0.8.3/24\""), "swarm_outside_subnet")]
#[case::on_gateway(edit("ipv4 = \"10.0.9.3/24\"", "ipv4 = \"10.0.9.254/24\""), "swarm_on_gateway")]
#[case::unknown_manager(edit("manager = \"host1\"", "manager = \"host9\""), "swarm_unknown_manager")]
#[case::no_ipv4(edit("ipv4 = \"10.0.9.3/24\"", "ipv6 = \"fd09::3/64\""), "swarm_no_ipv4")]
#[case::unknown_key(edit("network = \"vlab\"", "network = \"vlab\"\nencrypted = true"), "swarm_unknown_key")]
fn invalid_swarm_labs_name_the_field(#[case] text: String, #[case] name: &str) {
    let err = parse(&text).expect_err("the lab must be rejected");
    insta::assert_snapshot!(name, err.to_string());
}

/// The plan: daemons on every VM, init on the manager (its token kept for
/// the join), the network once every node is Ready, then the containers.
#[test]
fn deploy_plan_initialises_joins_and_runs_the_containers() {
    let lab = parse(SWARM).unwrap();
    let o = overlay::get("swarm");
    let steps = o.deploy(&lab, &[vlab::guest::Attachment::Veth; 2]);
    let mut out = String::new();
    for s in &steps {
        out.push_str(&format!("# {}{}\n", s.vm, s.output.as_deref().map(|o| format!(" -> {o}")).unwrap_or_default()));
        for f in &s.files {
            out.push_str(&format!("# file {}\n{}", f.path, f.text));
        }
        for c in &s.commands {
            out.push_str(c);
            out.push('\n');
        }
    }
    insta::assert_snapshot!("swarm_deploy", out);
}

/// Steps side by side run together, each but the first with the one before
/// it; a step's commands and files take the outputs of earlier steps in
/// place of their `{{NAME}}` (a join token).
#[test]
fn steps_side_by_side_and_outputs_filled_in() {
    use vlab::overlay::{side_by_side, GuestFile, Step};
    let steps = side_by_side(["host1", "host2", "host3"].map(|vm| Step::on(vm, vec![format!("echo {vm}")])));
    let together: Vec<(&str, bool)> = steps.iter().map(|s| (s.vm.as_str(), s.together)).collect();
    assert_eq!(together, [("host1", false), ("host2", true), ("host3", true)]);
    assert_eq!(steps[1].commands, ["echo host2"]);
    let file = GuestFile { path: "/etc/join".into(), text: "token={{TOKEN}}\n".into(), artifact: None };
    let step = Step { files: vec![file], ..Step::on("host2", vec!["docker swarm join --token {{TOKEN}}".into()]) };
    let filled = step.with_outputs(&[("TOKEN".to_string(), "SWMTKN-1-abc".to_string())].into());
    assert_eq!(filled.commands, ["docker swarm join --token SWMTKN-1-abc"]);
    assert_eq!(filled.files[0].text, "token=SWMTKN-1-abc\n");
    assert_eq!((filled.vm.as_str(), filled.files[0].path.as_str()), ("host2", "/etc/join"));
}
