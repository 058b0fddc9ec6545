//! One validation pass over a parsed lab. Each finding names the field.
//! What the variants own is claimed here (a key no variant owns is unknown,
//! one owned by a variant the lab does not select is misplaced) and validated
//! by the variants themselves.

use std::collections::{BTreeMap, HashSet};
use std::net::IpAddr;

use super::error::{Issue, Seg};
use super::{Container, Family, Kind, Lab, Nic, NicModel, Place, TrafficPath, Variants, Vm};

fn valid_name(s: &str, max: usize) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s.starts_with(|c: char| c.is_ascii_lowercase())
        && s.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

fn is_pci_address(s: &str) -> bool {
    // DDDD:BB:DD.F, hexadecimal.
    let hex = |t: &str, n: usize| t.len() == n && t.chars().all(|c| c.is_ascii_hexdigit());
    let parts: Vec<&str> = s.split(':').collect();
    match parts[..] {
        [dom, bus, devfn] => match devfn.split_once('.') {
            Some((dev, func)) => {
                hex(dom, 4)
                    && hex(bus, 2)
                    && hex(dev, 2)
                    && func.len() == 1
                    && func.chars().all(|c| ('0'..='7').contains(&c))
            }
            None => false,
        },
        _ => false,
    }
}

/// A NIC's fields must fit its model.
fn validate_nic(nic: &Nic, at: Vec<Seg>, containers: usize) -> Result<(), Issue> {
    let field = |k: &'static str| {
        let mut p = at.clone();
        p.push(Seg::Key(k));
        p
    };
    let model = super::variant_name(&nic.model);
    // Each optional field belongs to one model.
    let owned: [(&'static str, bool, &str); 4] = [
        ("queues", nic.queues.is_some(), "virtio"),
        ("udp_tunnel", nic.udp_tunnel.is_some(), "virtio"),
        ("vfs", nic.vfs.is_some(), "igb-sriov"),
        ("host", nic.host.is_some(), "vfio"),
    ];
    for (key, present, owner) in owned {
        if present && owner != model {
            return Err(Issue::new(field(key), format!("`{key}` is for {owner} NICs, not `{model}`")));
        }
    }
    match nic.model {
        NicModel::Virtio => {
            let q = nic.queues();
            if !(1..=8).contains(&q) {
                return Err(Issue::new(field("queues"), format!("{q} queues: a virtio NIC has 1 to 8")));
            }
        }
        NicModel::IgbSriov => {
            let Some(vfs) = nic.vfs else {
                return Err(Issue::new(at, "an igb-sriov NIC needs `vfs` (1 to 7): one per container"));
            };
            if !(1..=7).contains(&vfs) {
                return Err(Issue::new(field("vfs"), format!("{vfs} VFs: Linux igb offers 1 to 7")));
            }
            if (vfs as usize) < containers {
                return Err(Issue::new(
                    field("vfs"),
                    format!("{vfs} VFs for {containers} containers: each container needs its own VF"),
                ));
            }
        }
        NicModel::Vfio => match &nic.host {
            None => {
                return Err(Issue::new(at, "a vfio NIC needs `host`, the PCI address of the function to pass through"))
            }
            Some(h) if !is_pci_address(h) => {
                return Err(Issue::new(field("host"), format!("`{h}` is not a PCI address like 0000:3b:02.0")))
            }
            Some(_) => {}
        },
    }
    Ok(())
}

/// Checks what depends on this host's QEMU: the igb NIC needs QEMU 8.0 or
/// later, a NIC's `udp_tunnel` a virtio-net that offers UDP-tunnel offloads.
pub(crate) fn validate_host(lab: &Lab, qemu: &crate::qemu::HostQemu) -> Result<(), Issue> {
    use Seg::{Index, Key};
    let vm_nics = lab.vms.iter().enumerate().map(|(i, vm)| (vec![Key("vm"), Index(i), Key("nic")], &vm.nic));
    let matrix_nics =
        lab.matrix.nic.iter().flatten().enumerate().map(|(j, n)| (vec![Key("matrix"), Key("nic"), Index(j)], n));
    for (path, nic) in vm_nics.chain(matrix_nics) {
        let field = |k: &'static str| {
            let mut p = path.clone();
            p.push(Key(k));
            p
        };
        let major = qemu.major;
        if nic.model == NicModel::IgbSriov && major < 8 {
            return Err(Issue::new(field("model"), format!("igb-sriov needs QEMU 8.0 or later, this host has QEMU {major}: run ci/setup (Debian 12 takes QEMU from bookworm-backports)")));
        }
        if nic.udp_tunnel.is_some() && !qemu.virtio_udp_tunnel {
            return Err(Issue::new(
                field("udp_tunnel"),
                format!(
                    "this host's QEMU ({}) offers no UDP-tunnel offloads on virtio-net (host_tunnel, guest_tunnel: QEMU 10.1 or later); `vlab doctor` lists what it offers",
                    qemu.version
                ),
            ));
        }
    }
    Ok(())
}

/// A key the generic model passed over: where it stands and its name.
#[derive(Debug, Clone)]
pub(crate) struct IgnoredKey {
    /// Where (`None`: deeper than a variant may own keys).
    place: Option<(Place, Option<usize>)>,
    key: String,
    path: Vec<Seg>,
}

/// Where a key that serde passed over stands in the document.
pub(crate) fn ignored_key(path: &serde_ignored::Path) -> IgnoredKey {
    use serde_ignored::Path as P;
    fn segs(p: &serde_ignored::Path, out: &mut Vec<Seg>) {
        match p {
            P::Root => {}
            P::Seq { parent, index } => {
                segs(parent, out);
                out.push(Seg::Index(*index));
            }
            P::Map { parent, key } => {
                segs(parent, out);
                out.push(Seg::Name(key.clone()));
            }
            P::Some { parent } | P::NewtypeStruct { parent } | P::NewtypeVariant { parent } => segs(parent, out),
        }
    }
    let mut segments = Vec::new();
    segs(path, &mut segments);
    let path = segments;
    let key = match path.last() {
        Some(Seg::Name(k)) => k.clone(),
        _ => String::new(),
    };
    let place = match &path[..] {
        [Seg::Name(_)] => Some((Place::Top, None)),
        [Seg::Name(vm), Seg::Index(i), Seg::Name(_)] if vm == "vm" => Some((Place::Vm, Some(*i))),
        [Seg::Name(m), Seg::Name(_)] if m == "matrix" => Some((Place::Matrix, None)),
        _ => None,
    };
    IgnoredKey { place, key, path }
}

/// The keys of a lab document where variants may add keys (the top level,
/// each `[[vm]]`, `[matrix]`), in the order they stand in the file. When
/// the lab does not fit the model, these are checked before serde's error:
/// serde visits a table's keys in no order a reader would know, and stops at
/// its first error.
pub(crate) fn document_keys(text: &str) -> Vec<IgnoredKey> {
    let Ok(doc) = toml_edit::Document::parse(text) else { return Vec::new() };
    let mut keys: Vec<(usize, IgnoredKey)> = Vec::new();
    let mut add = |table: &dyn toml_edit::TableLike, place: Place, at: Vec<Seg>, vm: Option<usize>| {
        for (k, item) in table.iter() {
            let start = table.key(k).and_then(|key| key.span()).or_else(|| item.span()).map_or(usize::MAX, |s| s.start);
            let mut path = at.clone();
            path.push(Seg::Name(k.to_string()));
            keys.push((start, IgnoredKey { place: Some((place, vm)), key: k.to_string(), path }));
        }
    };
    add(doc.as_table(), Place::Top, Vec::new(), None);
    match doc.get("vm") {
        Some(toml_edit::Item::ArrayOfTables(vms)) => {
            for (i, vm) in vms.iter().enumerate() {
                add(vm, Place::Vm, vec![Seg::Name("vm".into()), Seg::Index(i)], Some(i));
            }
        }
        Some(toml_edit::Item::Value(toml_edit::Value::Array(vms))) => {
            for (i, vm) in vms.iter().enumerate() {
                if let Some(vm) = vm.as_inline_table() {
                    add(vm, Place::Vm, vec![Seg::Name("vm".into()), Seg::Index(i)], Some(i));
                }
            }
        }
        _ => {}
    }
    if let Some(matrix) = doc.get("matrix").and_then(toml_edit::Item::as_table_like) {
        add(matrix, Place::Matrix, vec![Seg::Name("matrix".into())], None);
    }
    keys.sort_by_key(|(start, _)| *start);
    keys.into_iter().map(|(_, k)| k).collect()
}

/// In a file that is not valid TOML, the first table header that explains
/// the TOML error, with its byte offset: a header whose top-level name
/// neither the generic model nor any variant knows (`[vmm]` then
/// `[[vm.container]]` then `[[vm]]` is a duplicate key), or a container's
/// table before any VM's.
pub(crate) fn header_mistake(text: &str, variants: &dyn Variants) -> Option<(usize, Issue)> {
    let known = known_keys(Place::Top, variants);
    let mut offset = 0;
    let mut seen_vm = false;
    for line in text.split_inclusive('\n') {
        let start = offset;
        offset += line.len();
        let trimmed = line.trim_start();
        let Some(header) = trimmed.strip_prefix('[') else { continue };
        let header = header.strip_prefix('[').unwrap_or(header).trim_start();
        let at = start + (line.len() - trimmed.len()) + (trimmed.len() - header.len());
        let dotted: String =
            header.chars().take_while(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ' ')).collect();
        let parts: Vec<&str> = dotted.split('.').map(str::trim).collect();
        match parts[..] {
            ["vm"] => seen_vm = true,
            ["vm", "container"] if !seen_vm => {
                let path = vec![Seg::Name("vm".into()), Seg::Name("container".into())];
                let message = "a `[[vm.container]]` table before any `[[vm]]`: a container belongs to the VM \
                               whose `[[vm]]` table comes before it";
                return Some((at, Issue::new(path, message)));
            }
            [name, ..] if !name.is_empty() && !known.contains(&name) => {
                let what = format!("unknown table `{name}`");
                return Some((at, unknown_key_issue(what, name, vec![Seg::Name(name.to_string())], &known)));
            }
            _ => {}
        }
    }
    None
}

/// The keys of the generic model at each place where variants add keys.
fn generic_keys(place: Place) -> &'static [&'static str] {
    match place {
        Place::Top => &[
            "name",
            "description",
            "image",
            "overlay",
            "filter",
            "kernel_options",
            "timeouts",
            "vm",
            "workload",
            "matrix",
            "expect",
            "capture",
        ],
        Place::Vm => &["name", "cpus", "cpu_model", "memory_mib", "nic", "underlay", "container", "setup"],
        Place::Matrix => {
            &["path", "family", "streams", "protocol", "direction", "offloads", "nic", "overlay", "filter", "exclude"]
        }
    }
}

/// Every key at `place` that the generic model or some variant knows.
fn known_keys(place: Place, variants: &dyn Variants) -> Vec<&'static str> {
    let mut known: Vec<&str> = generic_keys(place).to_vec();
    for kind in [Kind::Overlay, Kind::Filter] {
        for name in variants.names(kind) {
            for key in variants.keys(kind, name).map(|keys| keys.at(place)).unwrap_or_default() {
                if !known.contains(key) {
                    known.push(key);
                }
            }
        }
    }
    known
}

/// The first key the generic model passed over that neither it nor any
/// variant knows, as an issue located at the key (`text` is the lab file).
/// Asked first when the lab does not parse: a mistyped table (`[vmm]`) is
/// the mistake, not the table it leaves missing (`vm`).
pub(crate) fn unknown_key(text: &str, ignored: &[IgnoredKey], variants: &dyn Variants) -> Option<Issue> {
    ignored.iter().find_map(|k| {
        let known = k.place.map(|(place, _)| known_keys(place, variants)).unwrap_or_default();
        let what = super::error::unknown(text, &k.path, &k.key);
        (!known.contains(&k.key.as_str())).then(|| unknown_key_issue(what, &k.key, k.path.clone(), &known))
    })
}

/// An unknown key (`what` says so): the nearest known name, else every known one.
fn unknown_key_issue(what: String, key: &str, path: Vec<Seg>, known: &[&str]) -> Issue {
    let message = match super::suggest::nearest(key, known.iter().copied()) {
        Some(n) => format!("{what}; did you mean `{n}`?"),
        None if known.is_empty() => what,
        None => {
            let known: Vec<String> = known.iter().map(|k| format!("`{k}`")).collect();
            format!("{what}, expected one of {}", known.join(", "))
        }
    };
    Issue::key(path, message)
}

/// Every key the generic model passed over must belong to a variant the lab
/// selects; a key nobody owns is unknown, as serde would say.
pub(crate) fn claimed(lab: &Lab, ignored: &[IgnoredKey], variants: &dyn Variants) -> Result<(), Issue> {
    if let Some(issue) = unknown_key(&lab.source_text, ignored, variants) {
        return Err(issue);
    }
    for k in ignored {
        let Some((place, _)) = k.place else { continue };
        let mut owners = Vec::new();
        let mut selected = false;
        for kind in [Kind::Overlay, Kind::Filter] {
            let chosen = match kind {
                Kind::Overlay => lab.overlays(),
                Kind::Filter => lab.filters(),
            };
            for name in variants.names(kind) {
                if variants.keys(kind, name).is_some_and(|keys| keys.at(place).contains(&k.key.as_str())) {
                    owners.push((kind, name));
                    selected |= chosen.contains(&name);
                }
            }
        }
        let Some((kind, _)) = owners.first().filter(|_| !selected) else { continue };
        let message = match place {
            Place::Matrix => {
                let names: Vec<&str> = owners.iter().map(|(_, n)| *n).collect();
                format!("`{}` is an axis of the {} {}", k.key, names.join(" or "), kind.key())
            }
            _ => {
                let names: Vec<String> = owners.iter().map(|(_, n)| format!("\"{n}\"")).collect();
                let shown = if place == Place::Top { format!("[{}]", k.key) } else { k.key.clone() };
                format!("`{shown}` is for `{} = {}`", kind.key(), names.join("` or `"))
            }
        };
        return Err(Issue::new(k.path.clone(), message));
    }
    Ok(())
}

/// The variant names the lab selects are registered ones, and those on an
/// axis can be compared with each other.
pub(crate) fn validate_names(lab: &Lab, variants: &dyn Variants) -> Result<(), Issue> {
    use Seg::{Index, Key};
    for kind in [Kind::Overlay, Kind::Filter] {
        let known = variants.names(kind);
        let unknown = |name: &str| {
            let names: Vec<String> = known.iter().map(|n| format!("`{n}`")).collect();
            let guess = super::suggest::did_you_mean(name, known.iter().copied());
            format!("unknown variant `{name}`, expected one of {}{guess}", names.join(", "))
        };
        let (chosen, axis) = match kind {
            Kind::Overlay => (&lab.overlay, &lab.matrix.overlay),
            Kind::Filter => (&lab.filter, &lab.matrix.filter),
        };
        if !known.contains(&chosen.as_str()) {
            return Err(Issue::new(vec![Key(kind.key())], unknown(chosen)));
        }
        if axis.as_ref().is_some_and(Vec::is_empty) {
            return Err(Issue::new(vec![Key("matrix"), Key(kind.key())], "an axis needs at least one value"));
        }
        for (j, name) in axis.iter().flatten().enumerate() {
            if !known.contains(&name.as_str()) {
                return Err(Issue::new(vec![Key("matrix"), Key(kind.key()), Index(j)], unknown(name)));
            }
        }
        let Some(axis) = axis else { continue };
        // A variant that cannot be compared may be neither on the axis nor the lab's own.
        let chosen = std::iter::once(chosen).chain(axis);
        if let Some(why) = chosen.filter_map(|n| variants.comparable(kind, n).err()).next() {
            let j = axis.iter().position(|n| variants.comparable(kind, n).is_err()).unwrap_or(0);
            return Err(Issue::new(vec![Key("matrix"), Key(kind.key()), Index(j)], why));
        }
    }
    Ok(())
}

/// Checks everything serde cannot: names, ranges, references and addressing.
pub(crate) fn validate(lab: &Lab, variants: &dyn Variants) -> Result<(), Issue> {
    use Seg::Key;
    if !valid_name(&lab.name, 32) {
        return Err(Issue::new(
            vec![Key("name")],
            format!("`{}` must be 1-32 of [a-z0-9-], starting with a letter", lab.name),
        ));
    }
    if lab.vms.is_empty() || lab.vms.len() > 8 {
        return Err(Issue::new(vec![Key("vm")], format!("a lab has 1 to 8 VMs, this one has {}", lab.vms.len())));
    }
    for (i, o) in lab.kernel_options.iter().enumerate() {
        let name = o.strip_prefix("CONFIG_").unwrap_or(o);
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_') {
            let message = format!("`{o}` is not a kernel option (`KASAN` or `CONFIG_KASAN`)");
            return Err(Issue::new(vec![Key("kernel_options"), Seg::Index(i)], message));
        }
    }
    validate_vms(lab, variants)?;
    validate_workload(lab)?;
    validate_capture(lab)?;
    validate_matrix(lab)
}

/// Names, sizes, NICs and addresses of every VM and its containers; no
/// address is used twice.
fn validate_vms(lab: &Lab, variants: &dyn Variants) -> Result<(), Issue> {
    use Seg::{Index, Key};
    let mut vm_names = HashSet::new();
    let mut addresses: HashSet<IpAddr> = HashSet::new();
    let mut dup_addr = |a: IpAddr, path: Vec<Seg>| -> Result<(), Issue> {
        if addresses.insert(a) {
            Ok(())
        } else {
            Err(Issue::new(path, format!("address {a} is used twice in the lab")))
        }
    };
    for (i, vm) in lab.vms.iter().enumerate() {
        if !vm_names.insert(vm.name.as_str()) {
            return Err(Issue::new(
                vec![Key("vm"), Index(i), Key("name")],
                format!("VM name `{}` is used twice", vm.name),
            ));
        }
        validate_vm(vm, i)?;
        if let Some(n) = vm.underlay.ipv4 {
            dup_addr(IpAddr::V4(n.addr()), vec![Key("vm"), Index(i), Key("underlay"), Key("ipv4")])?;
        }
        if let Some(n) = vm.underlay.ipv6 {
            dup_addr(IpAddr::V6(n.addr()), vec![Key("vm"), Index(i), Key("underlay"), Key("ipv6")])?;
        }
        let mut container_names = HashSet::new();
        for (j, c) in vm.containers.iter().enumerate() {
            let cat = |k: &'static str| vec![Key("vm"), Index(i), Key("container"), Index(j), Key(k)];
            if !container_names.insert(c.name.as_str()) {
                return Err(Issue::new(
                    cat("name"),
                    format!("container name `{}` is used twice on VM `{}`", c.name, vm.name),
                ));
            }
            validate_container(lab, c, &cat, variants)?;
            for (family, key) in [(Family::Ipv4, "ipv4"), (Family::Ipv6, "ipv6")] {
                if let Some(addr) = c.address(family) {
                    dup_addr(addr, cat(key))?;
                }
            }
        }
    }
    Ok(())
}

/// One VM's own fields.
fn validate_vm(vm: &Vm, i: usize) -> Result<(), Issue> {
    use Seg::{Index, Key};
    let at = |k: &'static str| vec![Key("vm"), Index(i), Key(k)];
    if !valid_name(&vm.name, 12) {
        return Err(Issue::new(at("name"), format!("`{}` must be 1-12 of [a-z0-9-], starting with a letter", vm.name)));
    }
    if !(1..=16).contains(&vm.cpus) {
        return Err(Issue::new(at("cpus"), format!("{} vCPUs: use 1 to 16", vm.cpus)));
    }
    if let Some(model) = &vm.cpu_model {
        if model.is_empty() || !model.chars().all(|c| c.is_ascii_alphanumeric() || "-_.,=+".contains(c)) {
            return Err(Issue::new(
                at("cpu_model"),
                format!("`{model}` is not a QEMU CPU model (see `qemu-system-x86_64 -cpu help`)"),
            ));
        }
    }
    if !(256..=65536).contains(&vm.memory_mib) {
        return Err(Issue::new(at("memory_mib"), format!("{} MiB: use 256 to 65536", vm.memory_mib)));
    }
    validate_nic(&vm.nic, vec![Key("vm"), Index(i), Key("nic")], vm.containers.len())?;
    if vm.underlay.ipv4.is_none() && vm.underlay.ipv6.is_none() {
        return Err(Issue::new(
            at("underlay"),
            format!("VM `{}` needs an underlay address (ipv4, ipv6 or both)", vm.name),
        ));
    }
    Ok(())
}

/// A container's name and addresses; on an overlay that routes its
/// containers, each subnet leaves room for the gateway (the guest-side veth),
/// with every overlay the lab runs.
fn validate_container(
    lab: &Lab,
    c: &Container,
    cat: &dyn Fn(&'static str) -> Vec<Seg>,
    variants: &dyn Variants,
) -> Result<(), Issue> {
    if !valid_name(&c.name, 10) {
        return Err(Issue::new(cat("name"), format!("`{}` must be 1-10 of [a-z0-9-], starting with a letter", c.name)));
    }
    if c.ipv4.is_none() && c.ipv6.is_none() {
        return Err(Issue::new(cat("name"), format!("container `{}` needs an address (ipv4, ipv6 or both)", c.name)));
    }
    for (j, overlay) in lab.overlays().into_iter().enumerate() {
        if !variants.routes_containers(overlay) {
            // On an L2 overlay the guest-side veth has no address.
            continue;
        }
        gateway_room(c, cat).map_err(|issue| match &lab.matrix.overlay {
            Some(_) => {
                Issue::new(issue.path, format!("with overlay {overlay} (matrix.overlay[{j}]): {}", issue.message))
            }
            None => issue,
        })?;
    }
    Ok(())
}

/// A routed container's subnet has room for its gateway, which is not its address.
fn gateway_room(c: &Container, cat: &dyn Fn(&'static str) -> Vec<Seg>) -> Result<(), Issue> {
    for (family, key) in [(Family::Ipv4, "ipv4"), (Family::Ipv6, "ipv6")] {
        let (Some(addr), Some(gw)) = (c.address(family), c.gateway(family)) else {
            continue;
        };
        let prefix = match family {
            Family::Ipv4 => c.ipv4.map(|n| n.prefix_len()).unwrap_or(0) as u32,
            Family::Ipv6 => c.ipv6.map(|n| n.prefix_len()).unwrap_or(0) as u32,
        };
        let max = if family == Family::Ipv4 { 30 } else { 126 };
        // A /128 container has the link-local gateway fe80::1.
        if prefix > max && !(family == Family::Ipv6 && prefix == 128) {
            return Err(Issue::new(
                cat(key),
                format!(
                    "/{prefix} leaves no room for the gateway: use a prefix of at most /{max}{}",
                    if family == Family::Ipv6 { " (or /128 for a link-local gateway)" } else { "" }
                ),
            ));
        }
        if addr == gw {
            return Err(Issue::new(
                cat(key),
                format!("{addr} is the subnet's gateway (the guest-side veth takes the first address): pick another"),
            ));
        }
    }
    Ok(())
}

/// Endpoints that exist and differ; streams, duration and port in range.
fn validate_workload(lab: &Lab) -> Result<(), Issue> {
    use Seg::Key;
    let w = &lab.workload;
    let intruder = w.intruder.iter().map(|ep| ("intruder", ep));
    for (key, ep) in [("server", &w.server), ("client", &w.client)].into_iter().chain(intruder) {
        let path = vec![Key("workload"), Key(key)];
        let Some(vm) = lab.vm(&ep.vm) else {
            let names: Vec<_> = lab.vms.iter().map(|v| v.name.as_str()).collect();
            let guess = super::suggest::did_you_mean(&ep.vm, names.iter().copied());
            return Err(Issue::new(path, format!("no VM `{}` in this lab (VMs: {}){guess}", ep.vm, names.join(", "))));
        };
        if let Some(c) = &ep.container {
            if !vm.containers.iter().any(|x| &x.name == c) {
                let names: Vec<_> = vm.containers.iter().map(|x| x.name.as_str()).collect();
                let elsewhere = lab.vms.iter().find(|v| v.containers.iter().any(|x| &x.name == c));
                let guess = match elsewhere {
                    Some(v) => format!("; `{c}` is on VM `{}`: `{}/{c}`", v.name, v.name),
                    None => super::suggest::did_you_mean(c, names.iter().copied()),
                };
                return Err(Issue::new(
                    path,
                    format!("VM `{}` has no container `{c}` (containers: {}){guess}", vm.name, names.join(", ")),
                ));
            }
        }
    }
    if w.server == w.client {
        return Err(Issue::new(vec![Key("workload"), Key("client")], "client and server are the same endpoint"));
    }
    if let Some(ep) = &w.intruder {
        let why = if ep.container.is_none() {
            Some("the intruder must be a container (`VM/CONTAINER`)")
        } else if ep.vm == w.server.vm {
            Some("the intruder must be on another VM than the server, so that its attempt crosses the overlay")
        } else if *ep == w.client {
            Some("the intruder must be another container than the client")
        } else {
            None
        };
        if let Some(why) = why {
            return Err(Issue::new(vec![Key("workload"), Key("intruder")], why));
        }
    }
    if w.streams == 0 || w.streams > 128 {
        return Err(Issue::new(vec![Key("workload"), Key("streams")], format!("{} streams: use 1 to 128", w.streams)));
    }
    if w.duration.as_secs_f64() < 1.0 || w.duration.as_secs() > 3600 {
        return Err(Issue::new(vec![Key("workload"), Key("duration")], "use 1 s to 1 h"));
    }
    if w.port == 0 {
        return Err(Issue::new(vec![Key("workload"), Key("port")], "port 0 is not a port"));
    }
    if w.connects > super::MAX_CONNECTS {
        let max = super::MAX_CONNECTS;
        return Err(Issue::new(
            vec![Key("workload"), Key("connects")],
            format!("{} connections: use 0 to {max}", w.connects),
        ));
    }
    if let Some(p) = w.probe_port {
        if p == 0 || p == w.port {
            return Err(Issue::new(
                vec![Key("workload"), Key("probe_port")],
                format!("{p}: the probe needs a port of its own, not 0 or the workload's {}", w.port),
            ));
        }
    }
    Ok(())
}

/// Capture points, packet count and snap length.
fn validate_capture(lab: &Lab) -> Result<(), Issue> {
    use Seg::Key;
    let Some(c) = &lab.capture else { return Ok(()) };
    if c.points.is_empty() {
        return Err(Issue::new(vec![Key("capture"), Key("points")], "name at least one point: underlay, container"));
    }
    if !(1..=100_000).contains(&c.packets) {
        return Err(Issue::new(
            vec![Key("capture"), Key("packets")],
            format!("{} packets: use 1 to 100000", c.packets),
        ));
    }
    if !(64..=65_535).contains(&c.snaplen) {
        return Err(Issue::new(vec![Key("capture"), Key("snaplen")], format!("{} bytes: use 64 to 65535", c.snaplen)));
    }
    Ok(())
}

/// No empty axis; the NICs and stream counts of the matrix are valid.
fn validate_matrix(lab: &Lab) -> Result<(), Issue> {
    use Seg::{Index, Key};
    let m = &lab.matrix;
    let axes: [(&'static str, Option<usize>); 8] = [
        ("nic", m.nic.as_ref().map(Vec::len)),
        ("mtu", m.mtu.as_ref().map(Vec::len)),
        ("offloads", m.offloads.as_ref().map(Vec::len)),
        ("path", m.path.as_ref().map(Vec::len)),
        ("family", m.family.as_ref().map(Vec::len)),
        ("streams", m.streams.as_ref().map(Vec::len)),
        ("protocol", m.protocol.as_ref().map(Vec::len)),
        ("direction", m.direction.as_ref().map(Vec::len)),
    ];
    for (key, len) in axes {
        if len == Some(0) {
            return Err(Issue::new(vec![Key("matrix"), Key(key)], "an axis needs at least one value"));
        }
    }
    let max_containers = lab.vms.iter().map(|v| v.containers.len()).max().unwrap_or(0);
    for (j, nic) in m.nic.iter().flatten().enumerate() {
        validate_nic(nic, vec![Key("matrix"), Key("nic"), Index(j)], max_containers)?;
    }
    if let Some((j, s)) = m.streams.iter().flatten().enumerate().find(|(_, s)| **s == 0 || **s > 128) {
        return Err(Issue::new(vec![Key("matrix"), Key("streams"), Index(j)], format!("{s} streams: use 1 to 128")));
    }
    validate_mtu(lab, lab.mtu, vec![Key("mtu")])?;
    for (j, mtu) in m.mtu.iter().flatten().enumerate() {
        validate_mtu(lab, *mtu, vec![Key("matrix"), Key("mtu"), Index(j)])?;
    }
    Ok(())
}

/// The largest MTU a NIC model carries: virtio-net's advertised MTU is 16
/// bits wide; igb (and a passed-through function, taken to be of its kind)
/// takes jumbo frames of up to 9216 bytes.
pub fn max_mtu(model: NicModel) -> u32 {
    match model {
        NicModel::Virtio => 65_535,
        NicModel::IgbSriov | NicModel::Vfio => 9216,
    }
}

/// An underlay MTU the lab's addresses and every NIC it boots can carry:
/// IPv6 needs 1280 bytes (RFC 8200), IPv4 68 (RFC 791).
fn validate_mtu(lab: &Lab, mtu: u32, path: Vec<Seg>) -> Result<(), Issue> {
    let ipv6 = lab.vms.iter().any(|v| v.underlay.ipv6.is_some() || v.containers.iter().any(|c| c.ipv6.is_some()));
    let least = if ipv6 { 1280 } else { 68 };
    if mtu < least {
        let why = if ipv6 { "the lab has IPv6 addresses, and IPv6 needs 1280 bytes" } else { "IPv4 needs 68 bytes" };
        return Err(Issue::new(path, format!("MTU {mtu} is too small: {why}")));
    }
    let nics = lab.vms.iter().map(|v| &v.nic).chain(lab.matrix.nic.iter().flatten());
    if let Some(nic) = nics.into_iter().find(|n| mtu > max_mtu(n.model)) {
        let message = format!(
            "MTU {mtu} is more than the {} NIC carries ({})",
            crate::lab::variant_name(&nic.model),
            max_mtu(nic.model)
        );
        return Err(Issue::new(path, message));
    }
    Ok(())
}

/// Each `matrix.exclude` entry names axes of the matrix with values they
/// have, and leaves out at least one case; some case remains.
fn validate_exclude(lab: &Lab) -> Result<(), Issue> {
    use Seg::{Index, Key, Name};
    if lab.matrix.exclude.is_empty() {
        return Ok(());
    }
    let all = lab.all_combinations();
    let mut axes: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for case in &all {
        for (axis, value) in case.name.split(',').filter_map(|p| p.split_once('=')) {
            let values = axes.entry(axis).or_default();
            if !values.contains(&value) {
                values.push(value);
            }
        }
    }
    for (i, entry) in lab.matrix.exclude.iter().enumerate() {
        let at = |rest: Vec<Seg>| [vec![Key("matrix"), Key("exclude"), Index(i)], rest].concat();
        if entry.is_empty() {
            return Err(Issue::new(at(vec![]), "an empty entry would leave out every case: name axes and values"));
        }
        for (axis, value) in entry {
            let Some(values) = axes.get(axis.as_str()) else {
                let known: Vec<&str> = axes.keys().copied().collect();
                return Err(Issue::new(
                    at(vec![Name(axis.clone())]),
                    format!("`{axis}` is not an axis of this matrix (axes: {})", known.join(", ")),
                ));
            };
            if !values.contains(&value.to_string().as_str()) {
                return Err(Issue::new(
                    at(vec![Name(axis.clone())]),
                    format!("`{value}` is not a value of axis `{axis}` (values: {})", values.join(", ")),
                ));
            }
        }
        if !all.iter().any(|c| super::matrix::excludes(entry, &c.name)) {
            return Err(Issue::new(at(vec![]), "no case has all of these values: the entry leaves out nothing"));
        }
    }
    if lab.cases().is_empty() {
        return Err(Issue::new(vec![Key("matrix"), Key("exclude")], "every case is excluded"));
    }
    Ok(())
}

/// Every case must have addresses of its family at both ends, and a
/// container case containers on two VMs.
pub(crate) fn validate_cases(lab: &Lab) -> Result<(), Issue> {
    use Seg::Key;
    validate_exclude(lab)?;
    let w = &lab.workload;
    let mut names = HashSet::new();
    for case in lab.cases() {
        if !names.insert(case.name.clone()) {
            return Err(Issue::new(
                vec![Key("matrix")],
                format!("two cases would be named `{}`: an axis lists a value twice", case.name),
            ));
        }
        for (key, ep) in [("server", &w.server), ("client", &w.client)] {
            let vm = lab.vm(&ep.vm).expect("checked above");
            let has = match (case.params.path, &ep.container) {
                (TrafficPath::Underlay, _) => vm.underlay.get(case.params.family).is_some(),
                (TrafficPath::Container, Some(c)) => {
                    vm.containers.iter().find(|x| &x.name == c).is_some_and(|x| x.address(case.params.family).is_some())
                }
                (TrafficPath::Container, None) => vm.underlay.get(case.params.family).is_some(),
            };
            if !has {
                return Err(Issue::new(
                    vec![Key("workload"), Key(key)],
                    format!(
                        "case `{}` needs an {} address on `{ep}`",
                        case.name,
                        super::variant_name(&case.params.family)
                    ),
                ));
            }
            if case.params.path == TrafficPath::Container && ep.container.is_none() {
                return Err(Issue::new(
                    vec![Key("workload"), Key(key)],
                    format!("case `{}` runs container to container but `{ep}` names no container", case.name),
                ));
            }
        }
        if case.params.path == TrafficPath::Container && w.server.vm == w.client.vm {
            return Err(Issue::new(
                vec![Key("workload"), Key("client")],
                "client and server containers must be on different VMs to cross the overlay",
            ));
        }
    }
    Ok(())
}
