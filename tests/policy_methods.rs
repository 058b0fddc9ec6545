//! One policy, three methods, scaled by the rules axis: what each method
//! renders (snapshots), what the scale adds to each, and that the scale
//! never changes a verdict the evaluator gives for what the matrix probes.

use std::path::Path;

use vlab::filter::netfilter_policy::Method;
use vlab::filter::policy_file::{self, Source};
use vlab::filter::{l4_policy, policy_rules, probes};
use vlab::lab::{Case, Family, Lab};

fn lab(name: &str) -> Lab {
    vlab::load_lab(&Path::new(env!("CARGO_MANIFEST_DIR")).join("labs").join(name)).unwrap()
}

fn case<'a>(cases: &'a [Case], name: &str) -> &'a Case {
    cases.iter().find(|c| c.name == name).unwrap_or_else(|| panic!("no case {name}"))
}

/// The cost lab runs every method at every rule count and `none` beside
/// them, each method only on the overlay it fits.
#[test]
fn the_cost_lab_runs_each_method_and_none_at_every_rule_count() {
    let lab = lab("policy-methods.toml");
    let names: Vec<String> = lab.cases().into_iter().map(|c| c.name).collect();
    insta::assert_debug_snapshot!("policy_methods_cases", names);
}

fn rendered(lab: &Lab, case: &Case, source: Source) -> (Vec<String>, String) {
    let p = source.of_case(lab, &case.params).unwrap();
    let host1 = lab.vm("host1").unwrap();
    (policy_rules::iptables(lab, host1, &p.compiled, Family::Ipv4), policy_rules::nftables(lab, host1, &p.compiled))
}

/// The rulesets each method puts on the server's VM for the lab's policy
/// at ten padding rules: iptables one rule per port, nftables one rule
/// with a set of ports.
#[test]
fn each_method_renders_the_scaled_policy() {
    let lab = lab("policy-methods.toml");
    let cases = lab.cases();
    let c = case(&cases, "overlay=baseline,filter=iptables,rules=10");
    let (iptables, _) = rendered(&lab, c, Method::Iptables.source());
    insta::assert_snapshot!("policy_methods_iptables_rules_10", iptables.join("\n"));
    let c = case(&cases, "overlay=baseline,filter=nftables,rules=10");
    let (_, nftables) = rendered(&lab, c, Method::Nftables.source());
    insta::assert_snapshot!("policy_methods_nftables_rules_10", nftables);
}

/// Ten times the rules: ten times the iptables rules in the server's
/// ingress chain, the same number of nftables rules (a larger set), ten
/// times the eBPF deny entries.
#[test]
fn a_larger_scale_grows_iptables_chains_and_nftables_sets() {
    let lab = lab("policy-methods.toml");
    let cases = lab.cases();
    let count = |rules: u32| {
        let name = |f: &str| {
            format!("overlay={},filter={f},rules={rules}", if f == "l4-policy" { "cilium-style" } else { "baseline" })
        };
        let (iptables, _) = rendered(&lab, case(&cases, &name("iptables")), Method::Iptables.source());
        let (_, nftables) = rendered(&lab, case(&cases, &name("nftables")), Method::Nftables.source());
        let ebpf = l4_policy::SOURCE.of_case(&lab, &case(&cases, &name("l4-policy")).params).unwrap();
        let in_chain = iptables
            .iter()
            .filter(|r| r.starts_with("-A VLAB-IN-") && r.contains("--dport") && r.contains("VLAB-DROP"))
            .count();
        let nft_rules = nftables.lines().filter(|l| l.contains(" comment \"deny")).count();
        let nft_ports =
            nftables.lines().find(|l| l.contains("comment \"deny")).map_or(0, |l| l.matches(", ").count() + 1);
        (in_chain, nft_rules, nft_ports, ebpf.compiled.deny.len())
    };
    assert_eq!(count(100), (100, 1, 100, 100));
    assert_eq!(count(1000), (1000, 1, 1000, 1000));
    assert_eq!(count(10000), (10000, 1, 10000, 10000));
}

/// What the matrix probes, and the evaluator's every verdict on it, are
/// the same at every scale: the padding denies only ports nothing uses.
#[test]
fn the_scale_changes_no_verdict_the_matrix_probes() {
    let lab = lab("policy-methods.toml");
    let cases = lab.cases();
    let source = Method::Nftables.source();
    let settings = probes::settings(&lab).unwrap();
    let plain = source.read(&lab, None).unwrap();
    let targets = probes::targets(&plain.model, &settings);
    assert!(targets.iter().all(|(_, port)| *port < policy_file::PADDING_FROM), "{targets:?}");
    for rules in [10, 10000] {
        let scaled = source
            .of_case(&lab, &case(&cases, &format!("overlay=baseline,filter=nftables,rules={rules}")).params)
            .unwrap();
        assert_eq!(probes::targets(&scaled.own, &settings), targets);
        assert_ne!(scaled.model, plain.model, "the scaled policy has the padding rule");
        for from in &plain.endpoints {
            for to in &plain.endpoints {
                for &(protocol, port) in &targets {
                    let conn = || vlab::policy::Connection { from, to, protocol, port };
                    assert_eq!(
                        scaled.model.decide(conn()),
                        plain.model.decide(conn()),
                        "{} -> {} {port}",
                        from.name,
                        to.name
                    );
                }
            }
        }
    }
}

/// The padding is a rule of the policy language: it denies the client's
/// labels the server's ports from 40000, every other one, and keeps
/// default deny as it was.
#[test]
fn the_padding_is_a_policy_rule() {
    let lab = lab("policy-methods.toml");
    let text = policy_file::padding(&lab, 3, &[40002].into()).unwrap();
    insta::assert_snapshot!("policy_methods_padding_3", text);
}

/// A lab file of `text` (its policies under labs/policies/) loaded.
fn load(text: &str) -> Result<Lab, String> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lab.toml");
    let policies = Path::new(env!("CARGO_MANIFEST_DIR")).join("labs/policies");
    std::fs::write(&path, text.replace("\"policies/", &format!("\"{}/", policies.display()))).unwrap();
    vlab::load_lab(&path).map_err(|e| e.to_string())
}

fn invalid(text: &str) -> String {
    load(text).map(|_| ()).unwrap_err()
}

fn methods_text() -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("labs/policy-methods.toml")).unwrap()
}

/// A rule count out of range, one given twice, a method without a policy
/// to scale, and a scale beyond the eBPF maps are refused at their field.
#[test]
fn a_rules_axis_that_cannot_run_is_refused() {
    let err = invalid(&methods_text().replace("rules = [10, 100, 1000, 10000]", "rules = [10, 0]"));
    assert!(err.contains("matrix.rules[1]") && err.contains("0 rules: use 1 to 12000"), "{err}");
    let err = invalid(&methods_text().replace("rules = [10, 100, 1000, 10000]", "rules = [10, 10]"));
    assert!(err.contains("matrix.rules[1]") && err.contains("10 rules twice"), "{err}");
    let err = invalid(&methods_text().replace("[iptables]\npolicy = \"policies/selectors.yaml\"\n", ""));
    assert!(err.contains("matrix.rules") && err.contains("give `iptables.policy`"), "{err}");
    let wide = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/policy-wide-deny.yaml");
    let text = methods_text()
        .replace(
            "[l4_policy]\npolicy = \"policies/selectors.yaml\"",
            &format!("[l4_policy]\npolicy = \"{}\"", wide.display()),
        )
        .replace("rules = [10, 100, 1000, 10000]", "rules = [10, 12000]");
    let err = invalid(&text);
    assert!(err.contains("matrix.rules[1]") && err.contains("more than the method's 16384 entries"), "{err}");
    // iptables and nftables hold it.
    let netfilter = text.replace(&wide.display().to_string(), "policies/selectors.yaml").replace(
        "[iptables]\npolicy = \"policies/selectors.yaml\"",
        &format!("[iptables]\npolicy = \"{}\"", wide.display()),
    );
    load(&netfilter).unwrap();
}
