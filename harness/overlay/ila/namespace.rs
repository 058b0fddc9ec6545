//! The ILA checks of a case's namespace form (`vlab repro`): the verdicts of
//! [`super::verdict`], from what the capture reader (`harness/repro/judge.awk`)
//! finds, in shell. The expectations (addresses, C-bit, address sums) are
//! rendered here from the lab, by the same functions the verdict uses.
//!
//! One difference: the wire judgement has no origin for a segment (the
//! reader does not match it with the sender's container capture), so under
//! `no-action` a full checksum valid for the wire address is not judged,
//! and every other full checksum is judged as vlab judges one it cannot
//! match (see [`super::WireJudgement`]).

use std::net::Ipv6Addr;

use super::{expectation, sir_addresses, wire_address, KERNEL_PROBE, NO_ILA};
use crate::guest::quote;
use crate::lab::{variant_name, CaseParams, Family, Lab, TrafficPath};
use crate::measure::checksum::sum_v6;
use crate::overlay::{NamespaceForm, ShellCheck};

/// The namespace form of an ILA case: IPv6 between the workload's containers.
pub(super) fn namespace_form(lab: &Lab, case: &CaseParams) -> Result<NamespaceForm, String> {
    if case.family != Family::Ipv6 || case.path != TrafficPath::Container {
        return Err("the ILA checks judge IPv6 traffic between containers".into());
    }
    let settings = super::case_settings(lab, case);
    let mode = settings.csum_mode;
    let mut sir = Vec::new();
    let mut wire = Vec::new();
    for ep in [&lab.workload.server, &lab.workload.client] {
        let vm = lab.vm(&ep.vm).ok_or_else(|| format!("no VM `{}`", ep.vm))?;
        let c = vm.containers.iter().find(|c| Some(&c.name) == ep.container.as_ref());
        let addr = c.and_then(|c| c.ipv6).ok_or("the workload's ends are containers with IPv6 addresses")?.addr();
        sir.push(addr);
        wire.push(wire_address(lab, addr, vm, mode).unwrap_or(addr));
    }
    let flows = |a: [(Ipv6Addr, Ipv6Addr); 2]| a.map(|(s, d)| format!("{s} > {d}"));
    let on_wire = flows([(sir[1], wire[0]), (sir[0], wire[1])]);
    let inside = flows([(sir[1], sir[0]), (sir[0], sir[1])]);
    let expected = expectation(mode);
    let map: Vec<String> =
        sir_addresses(lab).into_iter().map(|(loc, sir)| format!("{:016x}={}", loc.0, sum_v6(sir) % 0xffff)).collect();
    let mut checks = vec![
        flow_check("ILA: wire carries locator + identifier", "$facts_wire", &on_wire),
        flow_check("ILA: containers see SIR addresses", "$facts_container", &inside),
    ];
    if expected.neutral || expected.c_bit {
        checks.push(neutral_check(u8::from(expected.c_bit)));
    }
    checks.push(ShellCheck {
        name: "ILA: wire checksums as documented".into(),
        script: wire_check(&variant_name(&mode)),
    });
    checks.push(ShellCheck { name: "ILA: container checksums valid".into(), script: CONTAINER_CHECK.into() });
    checks.push(ShellCheck {
        name: "ILA: receivers counted no checksum errors".into(),
        script: CSUM_ERRORS_CHECK.into(),
    });
    Ok(NamespaceForm {
        kernel_probe: Some((KERNEL_PROBE.into(), NO_ILA.into())),
        reader_vars: vec![("mode".into(), variant_name(&mode)), ("map".into(), map.join(" "))],
        checks,
    })
}

/// Exactly the expected source and destination pairs, each at least once.
fn flow_check(name: &str, facts: &str, expected: &[String; 2]) -> ShellCheck {
    let lines: Vec<String> = expected.iter().map(|f| quote(f)).collect();
    ShellCheck {
        name: name.into(),
        script: format!(
            "expected=$(printf '%s\\n' {} | sort -u | lines)\n\
             seen=$(sed -n 's/^flow \\([^ ]*\\) \\(.*\\)/\\1 > \\2/p' \"{facts}\" | sort -u | lines)\n\
             if [ -n \"$seen\" ] && [ \"$seen\" = \"$expected\" ]; then r=pass; else r=fail; fi\n\
             verdict $r \"expected $expected; seen ${{seen:-none}}\"",
            lines.join(" ")
        ),
    }
}

/// Every wire destination has the C-bit the mode sets, and (where its
/// locator is a lab VM's) the address sum of its SIR address.
fn neutral_check(c_bit: u8) -> ShellCheck {
    ShellCheck {
        name: "ILA: identifier is checksum-neutral".into(),
        script: format!(
            "bad=$(awk '$1 == \"dst\" && $4 != \"-\" && ($3 != {c_bit} || $4 == 0) {{ printf \"%s%s: C-bit %s, sum %s\", s, $2, \
             ($3 ? \"set\" : \"clear\"), ($4 ? \"equals that of its SIR address\" : \"differs from that of its SIR address\"); \
             s = \"; \" }}' \"$facts_wire\")\n\
             dsts=$(awk '$1 == \"dst\" {{ n++ }} END {{ print n + 0 }}' \"$facts_wire\")\n\
             if [ \"$dsts\" -gt 0 ] && [ -z \"$bad\" ]; then r=pass; else r=fail; fi\n\
             verdict $r \"${{bad:-$dsts wire destinations with C-bit {c_bit} and their SIR address sum}}\""
        ),
    }
}

/// Every judged underlay segment's field as the mode documents it.
fn wire_check(mode: &str) -> String {
    format!(
        "set -- $(awk '$1 == \"wire\" {{ n[$2]++ }} END {{ print n[\"doc\"] + 0, n[\"notdoc\"] + 0, n[\"unjudged\"] + 0 }}' \"$facts_wire\")\n\
         detail=\"{mode}: $(($1 + $2)) of $(($1 + $2 + $3)) underlay segments judged, $2 NOT as documented\"\n\
         if [ $(($1 + $2)) -eq 0 ]; then verdict skip \"no underlay segment could be judged: $detail\"\n\
         elif [ \"$2\" -eq 0 ]; then verdict pass \"$detail\"; else verdict fail \"$detail\"; fi"
    )
}

/// Every verifiable checksum in the containers valid; skipped (vlab leaves
/// the check out) when none was verifiable.
const CONTAINER_CHECK: &str = "set -- $(awk '$1 == \"container\" { n[$2]++ } END { print n[\"valid\"] + 0, n[\"invalid\"] + 0, n[\"offloaded\"] + 0 }' \"$facts_container\")
detail=\"container captures: $1 valid, $2 invalid, $3 offloaded\"
if [ $(($1 + $2)) -eq 0 ]; then verdict skip \"no verifiable checksum: $detail\"
elif [ \"$2\" -eq 0 ]; then verdict pass \"$detail\"; else verdict fail \"$detail\"; fi";

/// The receivers' TCP stacks counted no checksum error during the workload.
const CSUM_ERRORS_CHECK: &str = "if [ \"$csum_errors\" -eq 0 ]; then r=pass; else r=fail; fi
verdict $r \"TcpInCsumErrors +$csum_errors in the containers\"";
