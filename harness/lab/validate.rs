//! One validation pass over a parsed lab. Each finding names the field.

use std::collections::HashSet;
use std::net::IpAddr;

use super::error::{Issue, Seg};
use super::{CapturePoint, CsumMode, Family, IdentType, Lab, Nic, NicModel, Overlay, TrafficPath};

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
    let owned: [(&'static str, bool, &str); 3] = [
        ("queues", nic.queues.is_some(), "virtio"),
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

/// Checks what depends on this host's QEMU: the igb NIC needs QEMU 8.0 or later.
pub(crate) fn validate_host(lab: &Lab, qemu_major: u32) -> Result<(), Issue> {
    use Seg::{Index, Key};
    let vm_nics =
        lab.vms.iter().enumerate().map(|(i, vm)| (vec![Key("vm"), Index(i), Key("nic"), Key("model")], &vm.nic));
    let matrix_nics = lab
        .matrix
        .nic
        .iter()
        .flatten()
        .enumerate()
        .map(|(j, n)| (vec![Key("matrix"), Key("nic"), Index(j), Key("model")], n));
    for (path, nic) in vm_nics.chain(matrix_nics) {
        if nic.model == NicModel::IgbSriov && qemu_major < 8 {
            return Err(Issue::new(path, format!("igb-sriov needs QEMU 8.0 or later, this host has QEMU {qemu_major}: run ci/setup (Debian 12 takes QEMU from bookworm-backports)")));
        }
    }
    Ok(())
}

/// Checks everything serde cannot: names, ranges, references and addressing.
pub(crate) fn validate(lab: &Lab) -> Result<(), Issue> {
    use Seg::{Index, Key};
    if !valid_name(&lab.name, 32) {
        return Err(Issue::new(
            vec![Key("name")],
            format!("`{}` must be 1-32 of [a-z0-9-], starting with a letter", lab.name),
        ));
    }
    if lab.vms.is_empty() || lab.vms.len() > 8 {
        return Err(Issue::new(vec![Key("vm")], format!("a lab has 1 to 8 VMs, this one has {}", lab.vms.len())));
    }
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
        let at = |k: &'static str| vec![Key("vm"), Index(i), Key(k)];
        if !valid_name(&vm.name, 12) {
            return Err(Issue::new(
                at("name"),
                format!("`{}` must be 1-12 of [a-z0-9-], starting with a letter", vm.name),
            ));
        }
        if !vm_names.insert(vm.name.as_str()) {
            return Err(Issue::new(at("name"), format!("VM name `{}` is used twice", vm.name)));
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
        if let Some(n) = vm.underlay.ipv4 {
            dup_addr(IpAddr::V4(n.addr()), vec![Key("vm"), Index(i), Key("underlay"), Key("ipv4")])?;
        }
        if let Some(n) = vm.underlay.ipv6 {
            dup_addr(IpAddr::V6(n.addr()), vec![Key("vm"), Index(i), Key("underlay"), Key("ipv6")])?;
        }
        let mut container_names = HashSet::new();
        for (j, c) in vm.containers.iter().enumerate() {
            let cat = |k: &'static str| vec![Key("vm"), Index(i), Key("container"), Index(j), Key(k)];
            if !valid_name(&c.name, 10) {
                return Err(Issue::new(
                    cat("name"),
                    format!("`{}` must be 1-10 of [a-z0-9-], starting with a letter", c.name),
                ));
            }
            if !container_names.insert(c.name.as_str()) {
                return Err(Issue::new(
                    cat("name"),
                    format!("container name `{}` is used twice on VM `{}`", c.name, vm.name),
                ));
            }
            if c.ipv4.is_none() && c.ipv6.is_none() {
                return Err(Issue::new(
                    cat("name"),
                    format!("container `{}` needs an address (ipv4, ipv6 or both)", c.name),
                ));
            }
            for (family, key) in [(Family::Ipv4, "ipv4"), (Family::Ipv6, "ipv6")] {
                let (Some(addr), Some(gw)) = (c.address(family), c.gateway(family)) else {
                    continue;
                };
                if !crate::overlay::routes_containers(lab) {
                    // On an L2 overlay the guest-side veth has no address.
                    dup_addr(addr, cat(key))?;
                    continue;
                }
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
                    return Err(Issue::new(cat(key), format!("{addr} is the subnet's gateway (the guest-side veth takes the first address): pick another")));
                }
                dup_addr(addr, cat(key))?;
            }
        }
    }
    let w = &lab.workload;
    for (key, ep) in [("server", &w.server), ("client", &w.client)] {
        let path = vec![Key("workload"), Key(key)];
        let Some(vm) = lab.vm(&ep.vm) else {
            let names: Vec<_> = lab.vms.iter().map(|v| v.name.as_str()).collect();
            return Err(Issue::new(path, format!("no VM `{}` in this lab (VMs: {})", ep.vm, names.join(", "))));
        };
        if let Some(c) = &ep.container {
            if !vm.containers.iter().any(|x| &x.name == c) {
                let names: Vec<_> = vm.containers.iter().map(|x| x.name.as_str()).collect();
                return Err(Issue::new(
                    path,
                    format!("VM `{}` has no container `{c}` (containers: {})", vm.name, names.join(", ")),
                ));
            }
        }
    }
    if w.server == w.client {
        return Err(Issue::new(vec![Key("workload"), Key("client")], "client and server are the same endpoint"));
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
    if let Some(c) = &lab.capture {
        if c.points.is_empty() {
            return Err(Issue::new(
                vec![Key("capture"), Key("points")],
                "name at least one point: underlay, container",
            ));
        }
        if !(1..=100_000).contains(&c.packets) {
            return Err(Issue::new(
                vec![Key("capture"), Key("packets")],
                format!("{} packets: use 1 to 100000", c.packets),
            ));
        }
        if !(64..=65_535).contains(&c.snaplen) {
            return Err(Issue::new(
                vec![Key("capture"), Key("snaplen")],
                format!("{} bytes: use 64 to 65535", c.snaplen),
            ));
        }
    }
    let m = &lab.matrix;
    let axes: [(&'static str, Option<usize>); 7] = [
        ("nic", m.nic.as_ref().map(Vec::len)),
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
    validate_ila(lab)?;
    validate_vxlan(lab)?;
    validate_overlay_axis(lab)?;
    // Every case must have addresses of its family at both ends.
    for case in lab.cases() {
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

/// The `ila` overlay's addressing: a /64 SIR prefix, one locator per VM, one
/// /128 SIR address per container, IPv6 only; and no ILA settings elsewhere.
fn validate_ila(lab: &Lab) -> Result<(), Issue> {
    use Seg::{Index, Key};
    if lab.overlay != Overlay::Ila {
        if lab.ila.is_some() {
            return Err(Issue::new(vec![Key("ila")], "`[ila]` is for `overlay = \"ila\"`"));
        }
        if let Some(i) = lab.vms.iter().position(|v| v.locator.is_some()) {
            return Err(Issue::new(vec![Key("vm"), Index(i), Key("locator")], "`locator` is for `overlay = \"ila\"`"));
        }
        for (key, set) in [("csum_mode", lab.matrix.csum_mode.is_some()), ("hook", lab.matrix.hook.is_some())] {
            if set {
                return Err(Issue::new(
                    vec![Key("matrix"), Key(key)],
                    format!("`{key}` is an axis of the ila overlay"),
                ));
            }
        }
        return Ok(());
    }
    let s = lab.ila.clone().unwrap_or_default();
    if s.sir_prefix.prefix_len() != 64 {
        return Err(Issue::new(
            vec![Key("ila"), Key("sir_prefix")],
            format!("{}: the SIR prefix is a /64 (the identifier is the low 64 bits)", s.sir_prefix),
        ));
    }
    let points = lab.capture.as_ref().map(|c| c.points.clone()).unwrap_or_default();
    if !(points.contains(&CapturePoint::Underlay) && points.contains(&CapturePoint::Container)) {
        return Err(Issue::new(
            vec![Key("capture"), Key("points")],
            "the ila overlay is judged from captures: `[capture] points = [\"underlay\", \"container\"]` (snaplen 65535 to verify checksums)",
        ));
    }
    let sir_loc = crate::overlay::ila::sir_locator(&s);
    let modes: Vec<CsumMode> = lab.matrix.csum_mode.clone().unwrap_or_else(|| vec![s.csum_mode]);
    for (key, len) in
        [("csum_mode", lab.matrix.csum_mode.as_ref().map(Vec::len)), ("hook", lab.matrix.hook.as_ref().map(Vec::len))]
    {
        if len == Some(0) {
            return Err(Issue::new(vec![Key("matrix"), Key(key)], "an axis needs at least one value"));
        }
    }
    let mut locators = HashSet::new();
    for (i, vm) in lab.vms.iter().enumerate() {
        let at = |k: &'static str| vec![Key("vm"), Index(i), Key(k)];
        let Some(loc) = vm.locator else {
            return Err(Issue::new(
                at("name"),
                format!("VM `{}` needs a `locator` (such as \"aaaa:0:0:0\") for the ila overlay", vm.name),
            ));
        };
        if loc == sir_loc {
            return Err(Issue::new(at("locator"), format!("locator {loc} is the SIR prefix's: pick another")));
        }
        if !locators.insert(loc) {
            return Err(Issue::new(at("locator"), format!("locator {loc} is used by two VMs")));
        }
        if vm.underlay.ipv6.is_none() {
            return Err(Issue::new(at("underlay"), "the ila overlay runs over an IPv6 underlay: add `ipv6`"));
        }
        if vm.nic.model == NicModel::IgbSriov {
            return Err(Issue::new(
                vec![Key("vm"), Index(i), Key("nic"), Key("model")],
                "ila translates in the VM's stack; containers on SR-IOV VFs bypass it: use virtio or vfio",
            ));
        }
        if vm.containers.len() > 1 {
            return Err(Issue::new(
                vec![Key("vm"), Index(i), Key("container"), Index(1)],
                "the ila overlay routes a VM's locator to one container: one container per VM",
            ));
        }
        for (j, c) in vm.containers.iter().enumerate() {
            let path = vec![Key("vm"), Index(i), Key("container"), Index(j), Key("ipv6")];
            let Some(net) = c.ipv6 else {
                return Err(Issue::new(
                    vec![Key("vm"), Index(i), Key("container"), Index(j), Key("name")],
                    format!("container `{}` needs an ipv6 SIR address for the ila overlay", c.name),
                ));
            };
            if net.prefix_len() != 128 || !s.sir_prefix.contains(&net.addr()) {
                return Err(Issue::new(
                    path,
                    format!("{net}: an ILA container has one SIR address, a /128 inside {}", s.sir_prefix),
                ));
            }
            let ident = crate::overlay::ila::identifier_of(net.addr());
            if s.ident_type == IdentType::UseFormat && ident >> 61 != 1 {
                return Err(Issue::new(path, format!("identifier {:#018x}: with ident_type = \"use-format\" its top 3 bits must be 001 (luid), e.g. dead:beef::2000:0:0:1", ident)));
            }
            if modes.contains(&CsumMode::NeutralMap) && crate::overlay::ila::c_bit(net.addr()) {
                return Err(Issue::new(path, "neutral-map sets the identifier's C-bit (0x1000 in its first group): a SIR identifier must have it clear"));
            }
        }
    }
    if let Some(j) = lab.matrix.nic.iter().flatten().position(|n| n.model == NicModel::IgbSriov) {
        return Err(Issue::new(
            vec![Key("matrix"), Key("nic"), Index(j)],
            "ila translates in the VM's stack; containers on SR-IOV VFs bypass it",
        ));
    }
    let families = lab.matrix.family.clone().unwrap_or_else(|| vec![lab.workload.family]);
    if families.contains(&Family::Ipv4) {
        let path = if lab.matrix.family.is_some() {
            vec![Key("matrix"), Key("family")]
        } else {
            vec![Key("workload"), Key("family")]
        };
        return Err(Issue::new(path, "ILA is IPv6 only: use family = \"ipv6\""));
    }
    Ok(())
}

/// The `vxlan` overlay: a VNI and port that exist, a VTEP address of the
/// chosen family on every VM, containers in one subnet, no SR-IOV VFs.
fn validate_vxlan(lab: &Lab) -> Result<(), Issue> {
    use Seg::{Index, Key};
    let compared = lab.matrix.overlay.clone().unwrap_or_default();
    if !matches!(lab.overlay, Overlay::Vxlan | Overlay::VxlanEvpn) {
        if compared.iter().any(|o| matches!(o, Overlay::Vxlan | Overlay::VxlanEvpn)) {
            // Checked with each compared overlay (validate_overlay_axis).
            return Ok(());
        }
        if lab.vxlan.is_some() {
            return Err(Issue::new(vec![Key("vxlan")], "`[vxlan]` is for `overlay = \"vxlan\"` or `\"vxlan-evpn\"`"));
        }
        if lab.evpn.is_some() {
            return Err(Issue::new(vec![Key("evpn")], "`[evpn]` is for `overlay = \"vxlan-evpn\"`"));
        }
        return Ok(());
    }
    if lab.overlay == Overlay::Vxlan && lab.evpn.is_some() && !compared.contains(&Overlay::VxlanEvpn) {
        return Err(Issue::new(vec![Key("evpn")], "`[evpn]` is for `overlay = \"vxlan-evpn\"`"));
    }
    if lab.overlay == Overlay::VxlanEvpn {
        let e = lab.evpn.clone().unwrap_or_default();
        if let Some(rs) = &e.route_server {
            if lab.vm(rs).is_none() {
                let names: Vec<_> = lab.vms.iter().map(|v| v.name.as_str()).collect();
                return Err(Issue::new(
                    vec![Key("evpn"), Key("route_server")],
                    format!("no VM `{rs}` (VMs: {})", names.join(", ")),
                ));
            }
        }
        if e.route_server_address.prefix_len() > 30 {
            return Err(Issue::new(
                vec![Key("evpn"), Key("route_server_address")],
                format!("{}: the link to the route server needs a /30 or larger", e.route_server_address),
            ));
        }
        if e.asn == 0 {
            return Err(Issue::new(vec![Key("evpn"), Key("asn")], "AS 0 is reserved"));
        }
        if let Some(i) = lab.vms.iter().position(|v| v.underlay.ipv4.is_none()) {
            return Err(Issue::new(
                vec![Key("vm"), Index(i), Key("underlay")],
                "BGP sessions to the route server run over IPv4: add an ipv4 underlay address",
            ));
        }
    }
    let s = lab.vxlan.clone().unwrap_or_default();
    if !(1..=16_777_215).contains(&s.vni) {
        return Err(Issue::new(vec![Key("vxlan"), Key("vni")], format!("VNI {}: use 1 to 16777215", s.vni)));
    }
    if s.port == 0 {
        return Err(Issue::new(vec![Key("vxlan"), Key("port")], "port 0 is not a port"));
    }
    let family = super::variant_name(&s.family);
    let mut subnets: Vec<(Family, String)> = Vec::new();
    for (i, vm) in lab.vms.iter().enumerate() {
        if vm.underlay.get(s.family).is_none() {
            return Err(Issue::new(
                vec![Key("vm"), Index(i), Key("underlay")],
                format!("the VTEP of `{}` needs an {family} underlay address (vxlan.family = \"{family}\")", vm.name),
            ));
        }
        if vm.nic.model == NicModel::IgbSriov {
            return Err(Issue::new(
                vec![Key("vm"), Index(i), Key("nic"), Key("model")],
                "containers on SR-IOV VFs bypass the VM's bridge and VXLAN device: use virtio or vfio",
            ));
        }
        for (j, c) in vm.containers.iter().enumerate() {
            let nets = [
                (Family::Ipv4, c.ipv4.map(|n| n.trunc().to_string()), "ipv4"),
                (Family::Ipv6, c.ipv6.map(|n| n.trunc().to_string()), "ipv6"),
            ];
            for (f, net, key) in nets {
                let Some(net) = net else { continue };
                let path = vec![Key("vm"), Index(i), Key("container"), Index(j), Key(key)];
                match subnets.iter().find(|(g, _)| *g == f) {
                    Some((_, first)) if *first != net => {
                        return Err(Issue::new(
                            path,
                            format!("{net}: the containers of a VXLAN segment share one subnet ({first})"),
                        ));
                    }
                    Some(_) => {}
                    None => subnets.push((f, net)),
                }
            }
        }
    }
    if let Some(j) = lab.matrix.nic.iter().flatten().position(|n| n.model == NicModel::IgbSriov) {
        return Err(Issue::new(
            vec![Key("matrix"), Key("nic"), Index(j)],
            "containers on SR-IOV VFs bypass the VM's bridge and VXLAN device",
        ));
    }
    Ok(())
}

/// The `overlay` axis compares overlays that share the lab's addressing
/// (baseline, vxlan, vxlan-evpn); each must be valid with it.
fn validate_overlay_axis(lab: &Lab) -> Result<(), Issue> {
    use Seg::{Index, Key};
    let Some(overlays) = &lab.matrix.overlay else { return Ok(()) };
    if overlays.is_empty() {
        return Err(Issue::new(vec![Key("matrix"), Key("overlay")], "an axis needs at least one value"));
    }
    for (j, o) in overlays.iter().enumerate() {
        if *o == Overlay::Ila || lab.overlay == Overlay::Ila {
            return Err(Issue::new(
                vec![Key("matrix"), Key("overlay"), Index(j)],
                "ila needs its own addressing (SIR addresses, locators): compare it in its own lab",
            ));
        }
        let mut variant = lab.with_overlay(*o);
        variant.matrix.overlay = None;
        // The tables of the other compared overlays do not apply to this one.
        if !matches!(o, Overlay::Vxlan | Overlay::VxlanEvpn) {
            variant.vxlan = None;
        }
        if *o != Overlay::VxlanEvpn {
            variant.evpn = None;
        }
        validate(&variant).map_err(|issue| {
            let name = super::variant_name(o);
            Issue::new(issue.path, format!("with overlay {name} (matrix.overlay[{j}]): {}", issue.message))
        })?;
    }
    Ok(())
}
