//! `ci/bisect-run` without booting anything: the steps before the VMs and
//! the exit codes git bisect reads from them. A kernel tree in name only
//! (`tests/fixtures/kernel-tree`: its Makefile copies a kernel file, or fails
//! as a broken build does) stands in for a real one; the VM tests run it to
//! the end, with real kernels and a real `git bisect run`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn repo(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(p)
}

/// A copy of the fixture tree whose build "builds" `kernel`.
fn tree(kernel: &Path) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let status =
        Command::new("cp").arg("-a").arg(repo("tests/fixtures/kernel-tree/.")).arg(dir.path()).status().unwrap();
    assert!(status.success());
    std::fs::write(dir.path().join("KERNEL"), kernel.to_str().unwrap()).unwrap();
    dir
}

fn bisect_run(tree: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(repo("ci/bisect-run"))
        .args(args)
        .current_dir(tree)
        .env("VLAB", env!("CARGO_BIN_EXE_vlab"))
        .envs(env.iter().copied())
        .output()
        .unwrap()
}

fn said(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A commit that does not build is skipped (125), before anything boots.
#[test]
fn a_kernel_that_does_not_build_is_skipped() {
    let t = tree(Path::new("/nonexistent"));
    std::fs::write(t.path().join("BROKEN"), "").unwrap();
    let out = bisect_run(t.path(), &[repo("labs/baseline.toml").to_str().unwrap()], &[]);
    assert_eq!(out.status.code(), Some(125), "{}", said(&out));
    assert!(said(&out).contains("the kernel did not build: skip (125)"), "{}", said(&out));
    // The fragment was merged before the build.
    let config = std::fs::read_to_string(t.path().join(".config")).unwrap();
    assert!(config.contains("CONFIG_IPV6_ILA=y") && config.contains("CONFIG_IKCONFIG_PROC=y"), "{config}");
}

/// Bad input aborts the bisect (128): no lab file, an invalid lab, a
/// directory that is no kernel tree, an unknown VLAB_ON_CRASH.
#[test]
fn bad_input_aborts_the_bisect() {
    let kernel = tempfile::NamedTempFile::new().unwrap();
    let t = tree(kernel.path());
    let invalid = t.path().join("invalid.toml");
    std::fs::write(&invalid, "name = \"Not A Name\"\n").unwrap();
    for (args, env, says) in [
        (vec!["/nonexistent/lab.toml"], vec![], "no lab file"),
        (vec![invalid.to_str().unwrap()], vec![], "invalid lab file"),
        (vec![repo("labs/baseline.toml").to_str().unwrap()], vec![("VLAB_ON_CRASH", "maybe")], "use bad or skip"),
    ] {
        let out = bisect_run(t.path(), &args, &env);
        assert_eq!(out.status.code(), Some(128), "{args:?}: {}", said(&out));
        assert!(said(&out).contains(says), "{args:?}: {}", said(&out));
    }
    let elsewhere = tempfile::tempdir().unwrap();
    let out = bisect_run(elsewhere.path(), &[repo("labs/baseline.toml").to_str().unwrap()], &[]);
    assert_eq!(out.status.code(), Some(128), "{}", said(&out));
    assert!(said(&out).contains("is not the top of a kernel tree"), "{}", said(&out));
}

/// Without QEMU nothing can be tested: skip (125), and say why.
#[test]
fn no_qemu_is_a_skip() {
    let kernel = tempfile::NamedTempFile::new().unwrap();
    let t = tree(kernel.path());
    let out =
        bisect_run(t.path(), &[repo("labs/baseline.toml").to_str().unwrap()], &[("VLAB_QEMU", "/nonexistent/qemu")]);
    assert_eq!(out.status.code(), Some(125), "{}", said(&out));
    assert!(said(&out).contains("/nonexistent/qemu") && said(&out).contains("untestable: skip"), "{}", said(&out));
}

/// With a reference kernel, a step boots it first and the step's kernel
/// second, in K paired rounds (5 unless `--repeat` says), so that vlab judges
/// the step's kernel against the reference round by round; its exit is the
/// step's verdict. Bad options abort the bisect.
#[test]
fn a_reference_kernel_runs_first_in_paired_rounds() {
    let kernel = tempfile::NamedTempFile::new().unwrap();
    let reference = tempfile::NamedTempFile::new().unwrap();
    let t = tree(kernel.path());
    // A vlab that says what it was asked, and finds the step slower.
    let fake = t.path().join("fake-vlab");
    std::fs::write(&fake, "#!/bin/sh\necho \"$@\" >\"$(dirname \"$0\")/ARGS\"\nexit 1\n").unwrap();
    std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let lab = repo("labs/baseline.toml");
    let r = reference.path().to_str().unwrap();
    for (args, rounds) in [(vec!["--reference", r, "--repeat", "4"], "4"), (vec!["--reference", r], "5")] {
        let args: Vec<&str> = args.into_iter().chain([lab.to_str().unwrap(), "--tolerance", "0.1"]).collect();
        let out = bisect_run(t.path(), &args, &[("VLAB", fake.to_str().unwrap())]);
        assert_eq!(out.status.code(), Some(1), "{}", said(&out));
        assert!(
            said(&out).contains(&format!("{rounds} paired rounds")) && said(&out).contains(": bad"),
            "{}",
            said(&out)
        );
        let asked = std::fs::read_to_string(t.path().join("ARGS")).unwrap();
        let want =
            format!("--kernel {r} --kernel arch/x86/boot/bzImage --repeat {rounds} --on-crash bad --tolerance 0.1");
        assert!(asked.contains(&want), "{asked}");
    }
    for (args, says) in [
        (vec!["--repeat", "0"], "use 1 to 100 rounds"),
        (vec!["--repeat", "many"], "use 1 to 100 rounds"),
        (vec!["--reference", "/nonexistent/bzImage"], "no such file"),
        (vec!["--reference"], "usage"),
    ] {
        let args: Vec<&str> =
            if args.len() > 1 { args.into_iter().chain([lab.to_str().unwrap()]).collect() } else { args };
        let out = bisect_run(t.path(), &args, &[("VLAB", fake.to_str().unwrap())]);
        assert_eq!(out.status.code(), Some(128), "{args:?}: {}", said(&out));
        assert!(said(&out).contains(says), "{args:?}: {}", said(&out));
    }
}
