//! The KVM probe's kept verdicts, without VMs.

use std::path::Path;

use vlab::qemu::accel::{cached, store, KvmProbe, ProbeKey};

#[test]
fn a_verdict_is_kept_for_its_key_only() {
    let dir = tempfile::tempdir().unwrap();
    let key = ProbeKey::current(Path::new("/usr/bin/true"));
    assert!(!key.host_kernel.is_empty() && !key.boot_id.is_empty(), "{key:?}");
    assert!(cached(dir.path(), &key).is_none(), "nothing kept yet");
    let unusable = KvmProbe::Unusable("KVM stopped the guest: KVM internal error. Suberror: 1".into());
    store(dir.path(), &key, &unusable).unwrap();
    assert_eq!(cached(dir.path(), &key).map(|c| c.probe()), Some(unusable));
    // Another boot, QEMU or /dev/kvm: not the same verdict.
    for other in [
        ProbeKey { boot_id: "another boot".into(), ..key.clone() },
        ProbeKey { qemu: "/opt/qemu-9/bin/qemu-system-x86_64 1 bytes mtime 1".into(), ..key.clone() },
        ProbeKey { kvm_device: "absent".into(), ..key.clone() },
        ProbeKey { host_kernel: "6.1.0".into(), ..key.clone() },
    ] {
        assert!(cached(dir.path(), &other).is_none(), "{other:?}");
    }
    store(dir.path(), &key, &KvmProbe::Usable).unwrap();
    assert_eq!(cached(dir.path(), &key).map(|c| c.probe()), Some(KvmProbe::Usable), "a new probe replaces it");
    let files: Vec<_> = std::fs::read_dir(dir.path()).unwrap().flatten().map(|e| e.file_name()).collect();
    assert_eq!(files.len(), 1, "no temporary file left: {files:?}");
    std::fs::write(dir.path().join(&files[0]), "{ not json").unwrap();
    assert!(cached(dir.path(), &key).is_none(), "a damaged file is probed again");
}

/// A host that is itself a nested guest of the special kind is named from its
/// kernel command line; other hosts, and the word after `--` (init's
/// arguments), are not.
#[test]
fn a_nested_pvm_host_is_named_from_its_command_line() {
    use vlab::qemu::accel::nested_pvm;
    let named = nested_pvm("console=ttyS0 quiet nested_pvm=1 psi=1 -- --init").unwrap();
    assert!(named.contains("`nested_pvm=1`") && named.contains("cannot run ordinary guests"), "{named}");
    assert_eq!(nested_pvm("console=ttyS0 nested_pvm=0 quiet"), None);
    assert_eq!(nested_pvm("console=ttyS0 quiet"), None);
    assert_eq!(nested_pvm("console=ttyS0 -- nested_pvm=1"), None);
}
