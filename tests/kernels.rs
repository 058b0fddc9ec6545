//! `--kernel-deb` without booting anything: a kernel package built here with
//! dpkg-deb (a kernel in name only, modules that are not ELF: depmod lists
//! them all the same) is unpacked, cut, decompressed and cached; files that
//! are no kernel package are bad input (exit 128) and leave nothing behind.
//! The VM test `kernel_packages_...` boots real ones.

use std::path::{Path, PathBuf};
use std::process::Command;

use vlab::image::{kernel_deb_in, ImageError};
use vlab::ui::Progress;

const RELEASE: &str = "9.9.9-vlab-test";

/// Writes `files` (path, contents) under a package root and builds the
/// package with dpkg-deb; compresses the `.ko` files with xz first.
fn package(dir: &Path, name: &str, files: &[(&str, &str)]) -> PathBuf {
    let root = dir.join(format!("{name}-root"));
    std::fs::create_dir_all(root.join("DEBIAN")).unwrap();
    std::fs::write(
        root.join("DEBIAN/control"),
        format!("Package: {name}\nVersion: 1\nArchitecture: amd64\nMaintainer: vlab tests <vlab@localhost>\nDescription: test\n"),
    )
    .unwrap();
    for (path, text) in files {
        let file = root.join(path);
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(&file, text).unwrap();
        if path.ends_with(".ko") {
            assert!(Command::new("xz").arg(&file).status().unwrap().success());
        }
    }
    let deb = dir.join(format!("{name}.deb"));
    let out = Command::new("dpkg-deb").args(["--root-owner-group", "-b"]).arg(&root).arg(&deb).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    deb
}

fn kernel_package(dir: &Path) -> PathBuf {
    let m = format!("usr/lib/modules/{RELEASE}/kernel");
    package(
        dir,
        "linux-image-test",
        &[
            (&format!("boot/vmlinuz-{RELEASE}"), "a kernel"),
            (&format!("boot/config-{RELEASE}"), "CONFIG_IPV6_ILA=m\nCONFIG_VETH=m\n"),
            (&format!("{m}/net/ipv6/ila/ila.ko"), "ila"),
            (&format!("{m}/drivers/net/veth.ko"), "veth"),
            (&format!("{m}/drivers/net/ethernet/intel/igb/igb.ko"), "igb"),
            (&format!("{m}/drivers/net/ethernet/broadcom/tg3.ko"), "tg3"),
            (&format!("{m}/sound/core/snd.ko"), "snd"),
            (&format!("usr/lib/modules/{RELEASE}/modules.builtin"), ""),
            (&format!("usr/lib/modules/{RELEASE}/modules.order"), ""),
        ],
    )
}

/// Every file under `dir`, relative, sorted.
fn files(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            } else {
                out.push(e.path().strip_prefix(dir).unwrap().to_string_lossy().into_owned());
            }
        }
    }
    out.sort();
    out
}

/// The package's kernel, its configuration beside its modules, the modules
/// a lab loads (decompressed, in a fresh modules.dep) and not the others;
/// the second time from the cache, as it was.
#[test]
fn a_kernel_package_is_unpacked_cut_and_cached() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let deb = kernel_package(dir.path());
    let k = kernel_deb_in(&cache, &deb, &Progress::hidden()).unwrap();
    assert_eq!(k.release, RELEASE);
    assert_eq!(std::fs::read_to_string(&k.kernel).unwrap(), "a kernel");
    let modules = k.modules.clone().expect("the package has modules");
    let tree = modules.join("lib/modules").join(RELEASE);
    let kept: Vec<String> = files(&tree).into_iter().filter(|f| f.starts_with("kernel/")).collect();
    assert_eq!(
        kept,
        ["kernel/drivers/net/ethernet/intel/igb/igb.ko", "kernel/drivers/net/veth.ko", "kernel/net/ipv6/ila/ila.ko"]
    );
    assert_eq!(std::fs::read_to_string(tree.join("kernel/net/ipv6/ila/ila.ko")).unwrap(), "ila");
    let dep = std::fs::read_to_string(tree.join("modules.dep")).unwrap();
    assert!(dep.contains("kernel/net/ipv6/ila/ila.ko:") && !dep.contains(".xz") && !dep.contains("snd"), "{dep}");
    assert_eq!(std::fs::read_to_string(tree.join("config")).unwrap(), "CONFIG_IPV6_ILA=m\nCONFIG_VETH=m\n");
    // One entry and its lock; the unpacking's work directory is gone.
    let entries: Vec<String> =
        std::fs::read_dir(&cache).unwrap().flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
    assert_eq!(entries.len(), 2, "{entries:?}");
    let again = kernel_deb_in(&cache, &deb, &Progress::hidden()).unwrap();
    assert_eq!((again.kernel, again.modules), (k.kernel, Some(modules)));
}

/// A file that is no Debian package, and a package without a kernel, are
/// named as such (`BadPackage`: exit 128 from `vlab run`), and leave no
/// cache entry behind.
#[test]
fn files_that_are_no_kernel_package_are_named_and_leave_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let text = dir.path().join("kernel.deb");
    std::fs::write(&text, "not a package").unwrap();
    let tools = package(dir.path(), "iperf3-like", &[("usr/bin/tool", "#!/bin/sh\n")]);
    for (deb, says) in [(&text, "not a Debian package"), (&tools, "holds no boot/vmlinuz-*")] {
        match kernel_deb_in(&cache, deb, &Progress::hidden()) {
            Err(e @ ImageError::BadPackage { .. }) => {
                let message = e.to_string();
                assert!(message.starts_with(&deb.display().to_string()) && message.contains(says), "{message}");
            }
            other => panic!("{}: {other:?}", deb.display()),
        }
        let left: Vec<String> = std::fs::read_dir(&cache)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| !n.ends_with(".lock"))
            .collect();
        assert!(left.is_empty(), "{left:?}");
    }
}

/// `vlab run` with a missing package, or one that is not a package, is bad
/// input (exit 128) and says which option and file, before anything boots.
#[test]
fn vlab_run_refuses_what_is_no_kernel_package() {
    let dir = tempfile::tempdir().unwrap();
    let text = dir.path().join("kernel.deb");
    std::fs::write(&text, "not a package").unwrap();
    let lab = Path::new(env!("CARGO_MANIFEST_DIR")).join("labs/baseline.toml");
    for (deb, says) in [(dir.path().join("missing.deb"), "no such file"), (text.clone(), "not a Debian package")] {
        let out = Command::new(env!("CARGO_BIN_EXE_vlab"))
            .arg("run")
            .arg(&lab)
            .arg("--kernel-deb")
            .arg(&deb)
            .env("VLAB_CACHE_DIR", dir.path().join("cache"))
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(128), "{err}");
        assert!(err.contains(&format!("--kernel-deb {}", deb.display())) && err.contains(says), "{err}");
    }
}

/// `--kernel` and `--kernel-deb` keep the order they were given in (the
/// first is the reference the others are compared with): the first missing
/// file named is the first given.
#[test]
fn kernels_and_packages_keep_the_command_lines_order() {
    let dir = tempfile::tempdir().unwrap();
    let lab = Path::new(env!("CARGO_MANIFEST_DIR")).join("labs/baseline.toml");
    let (deb, bz) = (dir.path().join("a.deb"), dir.path().join("bzImage"));
    for (args, first) in [
        (
            ["--kernel-deb", deb.to_str().unwrap(), "--kernel", bz.to_str().unwrap()],
            format!("--kernel-deb {}", deb.display()),
        ),
        (
            ["--kernel", bz.to_str().unwrap(), "--kernel-deb", deb.to_str().unwrap()],
            format!("--kernel {}", bz.display()),
        ),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_vlab")).arg("run").arg(&lab).args(args).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(128), "{err}");
        assert!(err.contains(&format!("{first}: no such file")), "{err}");
    }
}
