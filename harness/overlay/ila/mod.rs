//! The ILA overlay (`Documentation/networking/ila.rst`, `net/ipv6/ila/`).
//!
//! Containers keep SIR addresses: the lab's SIR prefix (a /64) plus a 64-bit
//! identifier. Each VM owns a locator. On the way out, a lightweight-tunnel
//! route per remote container rewrites the destination's upper 64 bits from
//! the SIR prefix to the peer's locator (`SIR -> ILA`); on the way in, the
//! receiver rewrites them back (`ILA -> SIR`), either with a route for its own
//! locator or through the `ila_xlat` table (`ip ila add`). The checksum mode
//! decides how the transport checksum survives the rewrite.
//!
//! The address arithmetic (`addr`) follows the kernel's documented
//! semantics, so vlab can say which destination must appear on the wire and
//! compare it with the captures (`verdict`). Its settings (`settings`) are
//! the `[ila]` table, each VM's `locator`, and the `csum_mode` and `hook`
//! matrix axes.

mod addr;
mod namespace;
mod settings;
mod verdict;

use std::net::{IpAddr, Ipv6Addr};

use ipnet::{IpNet, Ipv6Net};

pub use addr::{c_bit, identifier_of, locator_of, translate, translate_packet, Direction, Locator};
use settings::Section;
pub use settings::{CsumMode, IdentType, IlaCase, IlaHook, IlaSettings};
pub use verdict::{expectation, verdict, Expectation, IlaEvidence, IlaVerdict, Tally, WireJudgement};

use super::{
    side_by_side, CaptureHints, CaseEvidence, Containers, EnforcementPoint, NamespaceForm, Overlay, Step, Variant,
    Verdict,
};
use crate::guest::{self, host_veth, Attachment, Netns, UNDERLAY_DEV};
use crate::lab::{variant_name, CapturePoint, CaseParams, Issue, Lab, LabError, LabKeys, NicModel, Seg, Vm};
use crate::measure::counters;

/// Route protocol number that marks vlab's ILA routes, so that a case can
/// replace them all (`ip -6 route flush proto 99`).
pub const ROUTE_PROTO: u32 = 99;

/// The `ila` overlay.
pub struct Ila;

impl Variant for Ila {
    fn name(&self) -> &'static str {
        "ila"
    }

    fn lab_keys(&self) -> LabKeys {
        LabKeys { tables: &["ila"], vm: &["locator"], matrix: &["csum_mode", "hook"] }
    }

    fn validate(&self, lab: &Lab) -> Result<(), LabError> {
        let section = lab.section::<Section>()?;
        validate(lab, &section).map_err(|issue| lab.invalid(issue))
    }

    fn axes(&self, lab: &Lab) -> Result<Vec<(String, Vec<String>)>, LabError> {
        let m = lab.section::<Section>()?.matrix;
        let mut axes = Vec::new();
        if let Some(modes) = m.csum_mode {
            axes.push(("csum-mode".to_string(), modes.iter().map(variant_name).collect()));
        }
        if let Some(hooks) = m.hook {
            axes.push(("hook".to_string(), hooks.iter().map(variant_name).collect()));
        }
        Ok(axes)
    }

    fn modules(&self) -> &'static [&'static str] {
        &["ila"]
    }

    fn evidence_before_commands(&self, lab: &Lab, vm: &Vm) -> Vec<(String, String)> {
        self.evidence_commands(lab, vm)
    }

    /// The receivers' checksum error counters: the TCP stack in the VM's
    /// container, where the workload ends, and the underlay NIC's statistics.
    fn evidence_commands(&self, _lab: &Lab, vm: &Vm) -> Vec<(String, String)> {
        let container = vm.containers.first().map(|c| Netns::container(&c.name));
        vec![(verdict::csum_artifact(&vm.name), counters::csum_errors_command(container.as_ref(), UNDERLAY_DEV))]
    }

    fn summary(&self, sections: &[(&str, &serde_json::Value)]) -> Option<String> {
        verdict::table(sections)
    }
}

impl Overlay for Ila {
    fn comparable(&self) -> Result<(), &'static str> {
        Err("ila needs its own addressing (SIR addresses, locators): compare it in its own lab")
    }

    fn containers(&self) -> Containers {
        Containers::Routed
    }

    fn enforcement_points(&self, _lab: &Lab) -> Vec<EnforcementPoint> {
        vec![EnforcementPoint::Forward]
    }

    fn deploy(&self, lab: &Lab, _attachments: &[Attachment]) -> Vec<Step> {
        side_by_side(lab.vms.iter().map(|vm| Step::on(&vm.name, commands())))
    }

    fn case_setup(&self, lab: &Lab, vm: &Vm, case: &CaseParams) -> Vec<String> {
        case_commands(lab, vm, case_settings(lab, case))
    }

    /// Destinations inside a VM's locator were its container's SIR address
    /// before translation.
    fn capture_hints(&self, lab: &Lab) -> CaptureHints {
        let translated = sir_addresses(lab)
            .into_iter()
            .map(|(loc, sir)| {
                let prefix = Ipv6Net::new(addr::join(loc, 0), 64).expect("a /64");
                (IpNet::V6(prefix), IpAddr::V6(sir))
            })
            .collect();
        CaptureHints { translated, ..CaptureHints::default() }
    }

    fn verdict(&self, lab: &Lab, e: &CaseEvidence) -> Verdict {
        verdict::of_case(lab, case_settings(lab, &e.case.params), e)
    }

    fn namespace_form(&self, lab: &Lab, case: &CaseParams) -> Result<NamespaceForm, String> {
        namespace::namespace_form(lab, case)
    }
}

/// The SIR locator: the SIR prefix's upper 64 bits.
pub fn sir_locator(settings: &IlaSettings) -> Locator {
    locator_of(settings.sir_prefix.network())
}

/// The ILA settings of a lab (the defaults when it has no `[ila]` table).
pub fn settings(lab: &Lab) -> IlaSettings {
    lab.section::<Section>().ok().and_then(|s| s.ila).unwrap_or_default()
}

/// What a case translates with: the values of its axes, else the lab's settings.
pub fn case_settings(lab: &Lab, case: &CaseParams) -> IlaCase {
    let s = settings(lab);
    let value = |key: &str| case.variant.get(key).map(|v| serde_json::Value::String(v.clone()));
    IlaCase {
        csum_mode: value("csum-mode").and_then(|v| serde_json::from_value(v).ok()).unwrap_or(s.csum_mode),
        hook: value("hook").and_then(|v| serde_json::from_value(v).ok()).unwrap_or(s.hook),
    }
}

/// Each VM's locator (`None` where it has none), in lab order.
pub fn locators(lab: &Lab) -> Vec<Option<Locator>> {
    let section = lab.section::<Section>().unwrap_or_default();
    (0..lab.vms.len()).map(|i| section.locator(i)).collect()
}

/// The locator of `vm`.
pub fn locator(lab: &Lab, vm: &Vm) -> Option<Locator> {
    let i = lab.vms.iter().position(|v| v.name == vm.name)?;
    locators(lab).get(i).copied().flatten()
}

/// The destination a packet for container address `sir` carries on the wire
/// when `vm` (the container's host) owns the locator.
pub fn wire_address(lab: &Lab, sir: Ipv6Addr, vm: &Vm, mode: CsumMode) -> Option<Ipv6Addr> {
    locator(lab, vm).map(|loc| translate(sir, loc, mode, Direction::SirToIla))
}

/// Each VM's locator with the SIR address of its container.
pub fn sir_addresses(lab: &Lab) -> Vec<(Locator, Ipv6Addr)> {
    lab.vms
        .iter()
        .zip(locators(lab))
        .filter_map(|(vm, loc)| Some((loc?, vm.containers.first()?.ipv6?.addr())))
        .collect()
}

/// Commands run once per boot: forwarding, and a clear error when the kernel
/// has no ILA.
pub fn commands() -> Vec<String> {
    vec![
        "sysctl -qw net.ipv6.conf.all.forwarding=1".to_string(),
        format!("{KERNEL_PROBE} || {{ echo '{NO_ILA}' >&2; exit 1; }}"),
    ]
}

/// Fails where the kernel has no ILA: the ILA generic netlink family is
/// there when ILA is built in or its module loaded (a built-in ILA has no
/// /sys/module/ila).
const KERNEL_PROBE: &str = "ip ila list >/dev/null 2>&1";
/// What to say then.
const NO_ILA: &str = "this kernel has no ILA (CONFIG_IPV6_ILA)";

/// The script that (re)configures the translations of `vm` for one case:
/// the previous case's routes and mappings go first (that may find nothing),
/// then the case's are added (that must work); each as one `ip -batch`.
pub fn case_commands(lab: &Lab, vm: &Vm, case: IlaCase) -> Vec<String> {
    let (tidy, apply) = case_ip_commands(lab, vm, case);
    guest::ip_batch("-6", &tidy, &apply)
}

/// The `ip -6` commands (without `ip -6`) of [`case_commands`]: those that remove
/// the previous case's translations, and those that add this case's.
fn case_ip_commands(lab: &Lab, vm: &Vm, case: IlaCase) -> (Vec<String>, Vec<String>) {
    let s = settings(lab);
    let sir_loc = sir_locator(&s);
    let mode = variant_name(&case.csum_mode);
    let ident = variant_name(&s.ident_type);
    let mut tidy = vec![format!("route flush proto {ROUTE_PROTO}")];
    let mut cmds = Vec::new();
    let Some(own_loc) = locator(lab, vm) else { return (tidy, cmds) };
    tidy.push(format!("ila del loc_match {own_loc} dev {UNDERLAY_DEV}"));
    // Egress: SIR -> ILA for every container on the other VMs.
    let egress_hook = if case.hook == IlaHook::RouteInput { "input" } else { "output" };
    for (peer, loc) in lab.vms.iter().zip(locators(lab)).filter(|(p, _)| p.name != vm.name) {
        let (Some(loc), Some(via)) = (loc, peer.underlay.ipv6) else { continue };
        for c in peer.containers.iter().filter_map(|c| c.ipv6) {
            cmds.push(format!(
                "route add {}/128 encap ila {loc} csum-mode {mode} ident-type {ident} hook-type {egress_hook} via {} dev {UNDERLAY_DEV} proto {ROUTE_PROTO}",
                c.addr(),
                via.addr()
            ));
        }
    }
    // Ingress: ILA -> SIR for this VM's locator, towards its container.
    let Some((container, sir)) = vm.containers.iter().find_map(|c| c.ipv6.map(|n| (c, n.addr()))) else {
        return (tidy, cmds);
    };
    match case.hook {
        IlaHook::Route | IlaHook::RouteInput => {
            // `use-format` routes must cover the identifier's type bits (/67, type 001 = luid).
            let dst = match s.ident_type {
                IdentType::Luid => format!("{}/64", addr::join(own_loc, 0)),
                IdentType::UseFormat => format!("{}/67", addr::join(own_loc, 1 << 61)),
            };
            let hook = if case.hook == IlaHook::RouteInput { "input" } else { "output" };
            cmds.push(format!(
                "route add {dst} encap ila {sir_loc} csum-mode {mode} ident-type {ident} hook-type {hook} via {sir} dev {} proto {ROUTE_PROTO}",
                host_veth(&container.name)
            ));
        }
        IlaHook::Xlat => cmds.push(format!(
            "ila add loc_match {own_loc} loc {sir_loc} csum-mode {mode} ident-type {ident} dev {UNDERLAY_DEV}"
        )),
    }
    (tidy, cmds)
}

/// The ila overlay's addressing: a /64 SIR prefix, captures on both sides,
/// one locator per VM, one /128 SIR address per container, IPv6 only.
fn validate(lab: &Lab, section: &Section) -> Result<(), Issue> {
    use Seg::Key;
    let s = section.ila.clone().unwrap_or_default();
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
    for (key, len) in [
        ("csum_mode", section.matrix.csum_mode.as_ref().map(Vec::len)),
        ("hook", section.matrix.hook.as_ref().map(Vec::len)),
    ] {
        if len == Some(0) {
            return Err(Issue::new(vec![Key("matrix"), Key(key)], "an axis needs at least one value"));
        }
    }
    validate_vms(lab, section, &s)?;
    validate_family(lab)
}

/// Locators that differ from each other and from the SIR prefix's, an IPv6
/// underlay, no SR-IOV VFs, and one container per VM with a /128 SIR address.
fn validate_vms(lab: &Lab, section: &Section, s: &IlaSettings) -> Result<(), Issue> {
    use Seg::{Index, Key};
    let sir_loc = sir_locator(s);
    let mut locators = std::collections::HashSet::new();
    for (i, vm) in lab.vms.iter().enumerate() {
        let at = |k: &'static str| vec![Key("vm"), Index(i), Key(k)];
        let Some(loc) = section.locator(i) else {
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
        validate_sir_addresses(vm, i, section, s)?;
    }
    if let Some(j) = lab.matrix.nic.iter().flatten().position(|n| n.model == NicModel::IgbSriov) {
        return Err(Issue::new(
            vec![Key("matrix"), Key("nic"), Index(j)],
            "ila translates in the VM's stack; containers on SR-IOV VFs bypass it",
        ));
    }
    Ok(())
}

/// Each container of VM number `i` has one SIR address whose identifier fits
/// the identifier type and the checksum modes the lab runs.
fn validate_sir_addresses(vm: &Vm, i: usize, section: &Section, s: &IlaSettings) -> Result<(), Issue> {
    use Seg::{Index, Key};
    let modes: Vec<CsumMode> = section.matrix.csum_mode.clone().unwrap_or_else(|| vec![s.csum_mode]);
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
        let ident = identifier_of(net.addr());
        if s.ident_type == IdentType::UseFormat && ident >> 61 != 1 {
            return Err(Issue::new(path, format!("identifier {:#018x}: with ident_type = \"use-format\" its top 3 bits must be 001 (luid), e.g. dead:beef::2000:0:0:1", ident)));
        }
        if modes.contains(&CsumMode::NeutralMap) && c_bit(net.addr()) {
            return Err(Issue::new(path, "neutral-map sets the identifier's C-bit (0x1000 in its first group): a SIR identifier must have it clear"));
        }
    }
    Ok(())
}

/// ILA is IPv6 only.
fn validate_family(lab: &Lab) -> Result<(), Issue> {
    use Seg::Key;
    let families = lab.matrix.family.clone().unwrap_or_else(|| vec![lab.workload.family]);
    if families.contains(&crate::lab::Family::Ipv4) {
        let path = if lab.matrix.family.is_some() {
            vec![Key("matrix"), Key("family")]
        } else {
            vec![Key("workload"), Key("family")]
        };
        return Err(Issue::new(path, "ILA is IPv6 only: use family = \"ipv6\""));
    }
    Ok(())
}
