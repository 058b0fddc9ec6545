//! Reading guest serial consoles: a boot that stalls is told apart from a
//! slow one by what the kernel printed.

use rstest::rstest;
use vlab::qemu::{reports_rcu_stall, stale_int3_oops};

#[rstest]
#[case::stall_seen_by_another_cpu("stall.log", true)]
#[case::self_detected_stall("self-stall.log", true)]
#[case::ordinary_rcu_boot_lines("clean.log", false)]
fn rcu_stalls_are_recognised(#[case] fixture: &str, #[case] stalled: bool) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/console").join(fixture);
    assert_eq!(reports_rcu_stall(&std::fs::read_to_string(path).unwrap()), stalled);
}

/// A vCPU that trapped on an `int3` no longer in memory (QEMU TCG running a
/// stale translation of code the kernel was patching) is told apart from an
/// `int3` that really is in the kernel's code.
#[rstest]
#[case::stale_translation("stale-int3.log", Some("Oops: int3 at kfree+0xa0/0x350"))]
#[case::int3_in_memory("int3-in-memory.log", None)]
#[case::no_oops("clean.log", None)]
#[case::rcu_stall("stall.log", None)]
fn stale_int3_oopses_are_recognised(#[case] fixture: &str, #[case] expected: Option<&str>) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/console").join(fixture);
    assert_eq!(stale_int3_oops(&std::fs::read_to_string(path).unwrap()).as_deref(), expected);
}

/// Older kernels print `int3: 0000 [#1]` without `Oops:`, with the CPU and
/// hardware lines before RIP and the code bytes.
#[test]
fn stale_int3_in_the_older_format() {
    let console = "\
[    3.093098] int3: 0000 [#1] PREEMPT SMP NOPTI
[    3.093098] CPU: 3 PID: 1 Comm: swapper/0 Not tainted 6.4.0 #8
[    3.093098] Hardware name: QEMU Standard PC (Q35 + ICH9, 2009)
[    3.093098] RIP: 0010:__mod_timer+0x1c3/0x370
[    3.093098] Code: 00 00 41 bd ff ff ff ff 31 d2 4c 89 f6 4c 89 ff e8 f2 ef ff ff 41 89 c4 85 c0 75 09 83 e3 01 0f 85 54 ff ff ff 41 8b 4f 20 66 <90> f7 c1 00 00 10 00
";
    assert_eq!(stale_int3_oops(console).as_deref(), Some("Oops: int3 at __mod_timer+0x1c3/0x370"));
}

fn exited(signal: Option<i32>, stderr: &str) -> vlab::qemu::VmError {
    exited_with_console(signal, stderr, "")
}

fn exited_with_console(signal: Option<i32>, stderr: &str, console: &str) -> vlab::qemu::VmError {
    use std::os::unix::process::ExitStatusExt;
    vlab::qemu::VmError::Exited {
        vm: "host2".into(),
        status: std::process::ExitStatus::from_raw(signal.unwrap_or(0)),
        stderr: stderr.into(),
        serial_tail: console.into(),
        stale_int3: None,
    }
}

const ASSERTION: &str = "qemu-system-x86_64: ../system/physmem.c:2678: iotlb_to_section: \
                         Assertion `section_index < d->map.sections_nb' failed.\n";

/// QEMU's own crash (a crash signal, or a failed assertion it printed) is
/// told apart from a guest that panicked (QEMU exits 0) and from a QEMU that
/// was stopped (SIGKILL, SIGTERM).
#[rstest]
#[case::abort_with_assertion(Some(6), ASSERTION, Some("QEMU of `host2` crashed (SIGABRT): qemu-system-x86_64: ../system/physmem.c:2678: iotlb_to_section: Assertion `section_index < d->map.sections_nb' failed"))]
#[case::segfault_silent(Some(11), "", Some("QEMU of `host2` crashed (SIGSEGV)"))]
#[case::assertion_then_exit(None, ASSERTION, Some("QEMU of `host2` failed an assertion: qemu-system-x86_64: ../system/physmem.c:2678: iotlb_to_section: Assertion `section_index < d->map.sections_nb' failed"))]
#[case::guest_panicked(None, "", None)]
#[case::killed(Some(9), "", None)]
#[case::terminated(Some(15), "qemu-system-x86_64: terminating on signal 15 from pid 1\n", None)]
fn emulator_crashes_are_recognised(#[case] signal: Option<i32>, #[case] stderr: &str, #[case] expected: Option<&str>) {
    let e = exited(signal, stderr);
    assert_eq!(e.emulator_crash().map(|(_, line)| line).as_deref(), expected);
}

/// A run that ended with QEMU's crash is never the guest kernel's failure
/// (`--on-crash bad` does not make it a bad kernel), and says so.
#[test]
fn an_emulator_crash_is_not_the_guest_kernels() {
    let e = anyhow::Error::new(exited(Some(6), ASSERTION)).context("`host2` did not boot");
    assert_eq!(vlab::run::guest_failure(&e), None);
    assert!(vlab::run::emulator_crash(&e).unwrap().contains("iotlb_to_section"));
    let panicked = exited_with_console(None, "", "[    3.1] Kernel panic - not syncing: sysrq triggered crash");
    let e = anyhow::Error::new(panicked);
    assert!(vlab::run::guest_failure(&e).unwrap().contains("Kernel panic"));
    assert_eq!(vlab::run::emulator_crash(&e), None);
}
