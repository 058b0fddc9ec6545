//! The initramfs: busybox, the modules that mount the root disk, and a script.

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::path::Path;

/// Normalised module name of a path in `modules.dep` (`kernel/fs/ext4/ext4.ko` -> `ext4`).
fn module_name(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    let stem = file.split(".ko").next().unwrap_or(file);
    stem.replace('-', "_")
}

/// Resolves `wanted` against `modules.dep` text into load order: dependencies
/// first, each module once. Built-in modules (listed in `builtin`) are skipped.
pub(crate) fn load_order(modules_dep: &str, builtin: &str, wanted: &[String]) -> Result<Vec<String>, String> {
    let mut deps: HashMap<String, (String, Vec<String>)> = HashMap::new();
    for line in modules_dep.lines() {
        let Some((path, rest)) = line.split_once(':') else {
            continue;
        };
        let ds = rest.split_whitespace().map(str::to_string).collect();
        deps.insert(module_name(path), (path.to_string(), ds));
    }
    let builtin: Vec<String> = builtin.lines().map(module_name).collect();
    let mut order = Vec::new();
    fn visit(
        name: &str,
        deps: &HashMap<String, (String, Vec<String>)>,
        order: &mut Vec<String>,
        seen: &mut Vec<String>,
    ) -> Result<(), String> {
        if seen.iter().any(|s| s == name) {
            return Ok(());
        }
        seen.push(name.to_string());
        let (path, ds) = deps.get(name).ok_or_else(|| format!("module `{name}` is not in modules.dep"))?;
        for d in ds {
            visit(&module_name(d), deps, order, seen)?;
        }
        order.push(path.clone());
        Ok(())
    }
    let mut seen = Vec::new();
    for w in wanted {
        let name = w.replace('-', "_");
        if builtin.contains(&name) {
            continue;
        }
        visit(&name, &deps, &mut order, &mut seen)?;
    }
    Ok(order)
}

/// Builds the initramfs (newc cpio, uncompressed: the kernel unpacks it fastest).
pub(crate) fn build(modules_dir: &Path, wanted: &[String], busybox: &[u8], init: &str) -> Result<Vec<u8>, String> {
    let dep = fs::read_to_string(modules_dir.join("modules.dep")).map_err(|e| format!("modules.dep: {e}"))?;
    let builtin = fs::read_to_string(modules_dir.join("modules.builtin")).unwrap_or_default();
    let order = load_order(&dep, &builtin, wanted)?;
    let mut files: Vec<(String, u32, Vec<u8>)> = Vec::new();
    for dir in ["bin", "dev", "proc", "sys", "newroot", "modules"] {
        files.push((dir.to_string(), 0o040755, Vec::new()));
    }
    files.push(("init".into(), 0o100755, init.as_bytes().to_vec()));
    files.push(("bin/busybox".into(), 0o100755, busybox.to_vec()));
    let mut names = Vec::new();
    for path in &order {
        // Modules were decompressed at build time; modules.dep may still name .ko.xz.
        let plain = path.trim_end_matches(".xz").trim_end_matches(".zst").to_string();
        let data = fs::read(modules_dir.join(&plain)).map_err(|e| format!("{plain}: {e}"))?;
        let file = plain.rsplit('/').next().unwrap_or(&plain).to_string();
        files.push((format!("modules/{file}"), 0o100644, data));
        names.push(file);
    }
    files.push(("modules.order".into(), 0o100644, (names.join("\n") + "\n").into_bytes()));
    archive(&files)
}

/// A kernel tree's modules (`make modules_install INSTALL_MOD_PATH=DIR`) as
/// a cpio archive to append to the image's initramfs (the kernel unpacks
/// concatenated archives in order, later files replacing earlier ones): the
/// modules that mount the root disk, replacing the image's own in
/// `/modules` and `/modules.order`, and the whole tree under
/// `/vlab-modules/RELEASE/`, which the initramfs copies into the root disk's
/// `/lib/modules` (the VM's copy-on-write overlay). Returns the release too.
pub(crate) fn modules_archive(dir: &Path, wanted: &[String]) -> Result<(String, Vec<u8>), String> {
    let root = dir.join("lib/modules");
    let releases: Vec<String> = fs::read_dir(&root)
        .map_err(|e| format!("{}: {e} (give the INSTALL_MOD_PATH of `make modules_install`)", root.display()))?
        .flatten()
        .filter(|e| e.path().join("modules.dep").is_file())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    let release = match &releases[..] {
        [one] => one.clone(),
        [] => return Err(format!("{} holds no release with a modules.dep", root.display())),
        _ => return Err(format!("{} holds several releases ({}): keep one", root.display(), releases.join(", "))),
    };
    let tree = root.join(&release);
    let dep = fs::read_to_string(tree.join("modules.dep")).map_err(|e| format!("modules.dep: {e}"))?;
    let builtin = fs::read_to_string(tree.join("modules.builtin")).unwrap_or_default();
    if let Some(compressed) = dep.lines().find(|l| l.split(':').next().is_some_and(|p| !p.ends_with(".ko"))) {
        return Err(format!(
            "{}: `{}` is compressed; build with CONFIG_MODULE_COMPRESS_NONE (busybox insmod loads plain .ko files)",
            tree.display(),
            compressed.split(':').next().unwrap_or_default()
        ));
    }
    // The root disk's modules: those of `wanted` that the tree has as
    // modules (a kernel may build them in, or not have them at all).
    let known: Vec<String> = dep.lines().filter_map(|l| l.split_once(':')).map(|(p, _)| module_name(p)).collect();
    let wanted: Vec<String> = wanted.iter().filter(|w| known.contains(&w.replace('-', "_"))).cloned().collect();
    let order = load_order(&dep, &builtin, &wanted)?;
    let mut files: Vec<(String, u32, Vec<u8>)> = Vec::new();
    let mut names = Vec::new();
    for path in &order {
        let data = fs::read(tree.join(path)).map_err(|e| format!("{path}: {e}"))?;
        let file = path.rsplit('/').next().unwrap_or(path).to_string();
        files.push((format!("modules/{file}"), 0o100644, data));
        names.push(file);
    }
    files.push(("modules.order".into(), 0o100644, (names.join("\n") + "\n").into_bytes()));
    files.push(("vlab-modules".into(), 0o040755, Vec::new()));
    let mut stack = vec![(tree.clone(), format!("vlab-modules/{release}"))];
    while let Some((from, to)) = stack.pop() {
        files.push((to.clone(), 0o040755, Vec::new()));
        for entry in fs::read_dir(&from).map_err(|e| format!("{}: {e}", from.display()))?.flatten() {
            let kind = entry.file_type().map_err(|e| e.to_string())?;
            let name = format!("{to}/{}", entry.file_name().to_string_lossy());
            if kind.is_dir() {
                stack.push((entry.path(), name));
            } else if kind.is_file() {
                let data = fs::read(entry.path()).map_err(|e| format!("{}: {e}", entry.path().display()))?;
                files.push((name, 0o100644, data));
            }
            // Symbolic links (`build`, `source`) point into the kernel tree: left out.
        }
    }
    Ok((release, archive(&files)?))
}

/// `files` (name, mode, contents) as a newc cpio archive.
fn archive(files: &[(String, u32, Vec<u8>)]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    for (ino, (name, mode, data)) in files.iter().enumerate() {
        let nlink = if mode & 0o040000 != 0 { 2 } else { 1 };
        let mut w = cpio::newc::Builder::new(name)
            .mode(*mode)
            .ino(ino as u32 + 1)
            .nlink(nlink)
            .write(&mut out, data.len() as u32);
        w.write_all(data).map_err(|e| e.to_string())?;
        w.finish().map_err(|e| e.to_string())?;
    }
    cpio::newc::trailer(&mut out).map_err(|e| e.to_string())?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEP: &str =
        "kernel/fs/ext4/ext4.ko.xz: kernel/lib/crc16.ko.xz kernel/fs/mbcache.ko.xz kernel/fs/jbd2/jbd2.ko.xz\n\
kernel/drivers/block/virtio_blk.ko.xz:\n\
kernel/fs/mbcache.ko.xz:\n\
kernel/fs/jbd2/jbd2.ko.xz:\n\
kernel/lib/crc16.ko.xz:\n\
kernel/crypto/crc32c_generic.ko.xz:\n";

    #[test]
    fn dependencies_load_first_and_once() {
        let wanted: Vec<String> = ["crc32c_generic", "ext4", "virtio_blk", "jbd2"].map(String::from).to_vec();
        let order = load_order(DEP, "", &wanted).unwrap();
        let names: Vec<_> = order.iter().map(|p| module_name(p)).collect();
        assert_eq!(names, ["crc32c_generic", "crc16", "mbcache", "jbd2", "ext4", "virtio_blk"]);
    }

    #[test]
    fn builtin_modules_are_skipped_and_unknown_ones_named() {
        let order = load_order(DEP, "kernel/drivers/block/virtio_blk.ko\n", &["virtio-blk".to_string()]).unwrap();
        assert!(order.is_empty());
        let err = load_order(DEP, "", &["nosuch".to_string()]).unwrap_err();
        assert!(err.contains("nosuch"), "{err}");
    }
}
