//! Reading guest serial consoles: a boot that stalls is told apart from a
//! slow one by what the kernel printed.

use rstest::rstest;
use vlab::qemu::reports_rcu_stall;

#[rstest]
#[case::stall_seen_by_another_cpu("stall.log", true)]
#[case::self_detected_stall("self-stall.log", true)]
#[case::ordinary_rcu_boot_lines("clean.log", false)]
fn rcu_stalls_are_recognised(#[case] fixture: &str, #[case] stalled: bool) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/console").join(fixture);
    assert_eq!(reports_rcu_stall(&std::fs::read_to_string(path).unwrap()), stalled);
}
