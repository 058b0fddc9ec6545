//! The lab model: parsing, validation messages that point at the field, and
//! matrix expansion.

use std::path::Path;

use rstest::rstest;
use vlab::filter::MatrixRead::{After, Before};
use vlab::lab::{Bitrate, Lab, LabError};
use vlab::qemu::HostQemu;

const BASELINE: &str = include_str!("../labs/baseline.toml");

fn parse(text: &str) -> Result<Lab, LabError> {
    vlab::parse_lab(text, Path::new("lab.toml"))
}

#[test]
fn baseline_lab_expands_into_four_cases() {
    let lab = parse(BASELINE).expect("baseline.toml is valid");
    let names: Vec<String> = lab.cases().into_iter().map(|c| c.name).collect();
    assert_eq!(
        names,
        [
            "path=underlay,family=ipv4",
            "path=underlay,family=ipv6",
            "path=container,family=ipv4",
            "path=container,family=ipv6"
        ]
    );
}

#[test]
fn every_shipped_lab_is_valid() {
    for entry in std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/labs")).unwrap() {
        let path = entry.unwrap().path();
        // Hidden files are other tests' studies, there for a moment.
        let hidden = path.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.'));
        if path.extension().is_some_and(|e| e == "toml") && !hidden {
            let text = std::fs::read_to_string(&path).unwrap();
            if vlab::study::is_study(&text) {
                vlab::study::load(&path).map(|_| ()).unwrap_or_else(|e| panic!("{e}"));
            } else {
                vlab::load_lab(&path).map(|_| ()).unwrap_or_else(|e| panic!("{e}"));
            }
        }
    }
}

#[test]
fn a_lab_without_matrix_has_one_default_case() {
    let text = BASELINE.split("[matrix]").next().unwrap();
    let lab = parse(text).unwrap();
    let cases = lab.cases();
    assert_eq!(cases.len(), 1);
    assert_eq!(cases[0].name, "default");
}

#[test]
fn matrix_exclude_leaves_combinations_out() {
    let text = edit(
        "family = [\"ipv4\", \"ipv6\"]",
        "family = [\"ipv4\", \"ipv6\"]\nexclude = [{ path = \"underlay\", family = \"ipv6\" }]",
    );
    let names: Vec<String> = parse(&text).unwrap().cases().into_iter().map(|c| c.name).collect();
    assert_eq!(names, ["path=underlay,family=ipv4", "path=container,family=ipv4", "path=container,family=ipv6"]);
}

/// Replaces `from` (which must occur) in the baseline lab.
fn edit(from: &str, to: &str) -> String {
    assert!(BASELINE.contains(from), "fixture lacks {from:?}");
    BASELINE.replacen(from, to, 1)
}

/// The baseline lab with `matrix.exclude = [ENTRIES]`.
fn exclude(entries: &str) -> String {
    edit("family = [\"ipv4\", \"ipv6\"]", &format!("family = [\"ipv4\", \"ipv6\"]\nexclude = [{entries}]"))
}

#[rstest]
#[case::unknown_key(String::new(), "unknown_key")]
#[case::unknown_overlay(edit("overlay = \"baseline\"", "overlay = \"vxlan-bogus\""), "unknown_overlay")]
#[case::unknown_nic_field(
    edit("nic = { model = \"virtio\", queues = 2 }", "nic = { model = \"virtio\", queues = 2, speed = 10 }"),
    "unknown_nic_field"
)]
#[case::bad_address(edit("ipv4 = \"10.1.2.2/24\"", "ipv4 = \"10.1.2.300/24\""), "bad_address")]
#[case::queues_zero(
    edit(
        "nic = { model = \"virtio\", queues = 2 }\n\n[[vm.container]]\nname = \"c2\"",
        "nic = { model = \"virtio\", queues = 0 }\n\n[[vm.container]]\nname = \"c2\""
    ),
    "queues_zero"
)]
#[case::duplicate_vm(edit("name = \"host2\"", "name = \"host1\""), "duplicate_vm")]
#[case::gateway_address(edit("ipv4 = \"10.1.1.2/24\"", "ipv4 = \"10.1.1.1/24\""), "gateway_address")]
#[case::missing_container(edit("client = \"host2/c2\"", "client = \"host2/c9\""), "missing_container")]
#[case::empty_axis(edit("family = [\"ipv4\", \"ipv6\"]", "family = []"), "empty_axis")]
#[case::bad_duration(edit("duration = \"5s\"", "duration = \"5 parsecs\""), "bad_duration")]
#[case::bad_bitrate(edit("min_throughput = \"100Mbit\"", "min_throughput = \"fast\""), "bad_bitrate")]
#[case::missing_family(edit("ipv6 = \"fd01:2::2/64\"", ""), "missing_family")]
#[case::probe_on_workload_port(
    edit("duration = \"5s\"", "duration = \"5s\"\nprobe_port = 5201"),
    "probe_on_workload_port"
)]
#[case::port_out_of_range(edit("duration = \"5s\"", "duration = \"5s\"\nport = 70000"), "port_out_of_range")]
#[case::intruder_on_the_server_vm(
    edit("duration = \"5s\"", "duration = \"5s\"\nintruder = \"host1/c1\""),
    "intruder_on_the_server_vm"
)]
#[case::intruder_is_the_client(
    edit("duration = \"5s\"", "duration = \"5s\"\nintruder = \"host2/c2\""),
    "intruder_is_the_client"
)]
#[case::intruder_not_a_container(
    edit("duration = \"5s\"", "duration = \"5s\"\nintruder = \"host2\""),
    "intruder_not_a_container"
)]
#[case::intruder_missing(edit("duration = \"5s\"", "duration = \"5s\"\nintruder = \"host2/c9\""), "intruder_missing")]
#[case::exclude_unknown_axis(exclude("{ streams = 4 }"), "exclude_unknown_axis")]
#[case::exclude_unknown_value(exclude("{ family = \"ipv5\" }"), "exclude_unknown_value")]
#[case::exclude_everything(exclude("{ path = \"underlay\" }, { path = \"container\" }"), "exclude_everything")]
#[case::exclude_empty_entry(exclude("{}"), "exclude_empty_entry")]
fn invalid_labs_name_file_line_and_field(#[case] text: String, #[case] name: &str) {
    let text =
        if name == "unknown_key" { BASELINE.replacen("[workload]\n", "[workload]\nthreads = 4\n", 1) } else { text };
    let err = parse(&text).expect_err("the lab must be rejected");
    insta::assert_snapshot!(name, err.to_string());
}

/// The baseline lab with its first `[[vm]]` header replaced.
fn first_vm_header(to: &str) -> String {
    edit("[[vm]]\nname = \"host1\"", &format!("{to}\nname = \"host1\""))
}

/// Common typos: each message names the line of the mistake (checked against
/// the text there), the key or value, and the nearest known name when there
/// is one; an unknown key or table comes before the field it leaves missing.
#[rstest]
#[case::vmm(first_vm_header("[vmm]"), "[vmm]", "vmm")]
#[case::vms(first_vm_header("[[vms]]"), "[[vms]]", "vms")]
#[case::every_vm_vmm(BASELINE.replace("[[vm]]", "[vmm]"), "[vmm]", "every_vm_vmm")]
#[case::workloads(edit("[workload]", "[workloads]"), "[workloads]", "workloads")]
#[case::containers(edit("[[vm.container]]", "[[vm.containers]]"), "[[vm.containers]]", "containers")]
#[case::packet(edit("packets = 200", "packet = 200"), "packet = 200", "packet")]
#[case::overlay_vxaln(edit("overlay = \"baseline\"", "overlay = \"vxaln\""), "overlay = \"vxaln\"", "overlay_vxaln")]
#[case::duration_without_unit(
    edit("duration = \"5s\"", "duration = \"5\""),
    "duration = \"5\"",
    "duration_without_unit"
)]
#[case::duration_as_number(edit("duration = \"5s\"", "duration = 5"), "duration = 5", "duration_as_number")]
#[case::queues_as_string(
    edit("nic = { model = \"virtio\", queues = 2 }", "nic = { model = \"virtio\", queues = \"2\" }"),
    "queues = \"2\"",
    "queues_as_string"
)]
#[case::client_on_unknown_vm(
    edit("client = \"host2/c2\"", "client = \"hots2/c2\""),
    "client = \"hots2/c2\"",
    "client_on_unknown_vm"
)]
#[case::client_container_elsewhere(
    edit("client = \"host2/c2\"", "client = \"host2/c1\""),
    "client = \"host2/c1\"",
    "client_container_elsewhere"
)]
#[case::container_before_any_vm(
    edit("[[vm]]\nname = \"host1\"", "[[vm.container]]\nname = \"c0\"\n\n[[vm]]\nname = \"host1\""),
    "[[vm.container]]",
    "container_before_any_vm"
)]
#[case::missing_underlay(
    edit("underlay = { ipv4 = \"10.0.0.1/24\", ipv6 = \"fd00::1/64\" }\n", ""),
    "[[vm]]",
    "missing_underlay"
)]
fn typos_are_named_at_their_line_with_a_suggestion(#[case] text: String, #[case] line: &str, #[case] name: &str) {
    let err = parse(&text).expect_err("the lab must be rejected");
    let loc = err.location().expect("located");
    let at = text.lines().nth(loc.line - 1).unwrap_or_default();
    assert!(at.contains(line), "{err}: line {} is {at:?}, not the mistake {line:?}", loc.line);
    insta::assert_snapshot!(format!("typo_{name}"), err.to_string());
}

#[test]
fn errors_point_at_the_offending_line() {
    let text = edit("name = \"host2\"", "name = \"host1\"");
    let err = parse(&text).unwrap_err();
    let loc = err.location().expect("located");
    let line = text.lines().nth(loc.line - 1).unwrap();
    assert_eq!(line, "name = \"host1\"", "line {} is {line:?}", loc.line);
    assert!(text.lines().take(loc.line - 1).any(|l| l.contains("name = \"host1\"")), "the duplicate is the second one");
}

#[test]
fn unreadable_file_is_named() {
    let err = vlab::load_lab(Path::new("/nonexistent/lab.toml")).unwrap_err();
    assert!(err.to_string().contains("/nonexistent/lab.toml"), "{err}");
}

#[rstest]
#[case("2.5Gbit", 2_500_000_000)]
#[case("800Mbit", 800_000_000)]
#[case("1000", 1000)]
#[case("10 Kbit", 10_000)]
fn bitrates_parse(#[case] text: &str, #[case] bps: u64) {
    assert_eq!(Bitrate::try_from(text.to_string()).unwrap(), Bitrate(bps));
}

const NIC_MATRIX: &str = include_str!("../labs/nic-matrix.toml");

fn nic_edit(from: &str, to: &str) -> String {
    assert!(NIC_MATRIX.contains(from), "fixture lacks {from:?}");
    NIC_MATRIX.replacen(from, to, 1)
}

#[test]
fn nic_matrix_groups_cases_by_nic() {
    let lab = parse(NIC_MATRIX).unwrap();
    let names: Vec<String> = lab.cases().into_iter().map(|c| c.name).collect();
    assert_eq!(
        names,
        [
            "nic=virtio-q1,offloads=on",
            "nic=virtio-q1,offloads=off",
            "nic=virtio-q4,offloads=on",
            "nic=virtio-q4,offloads=off",
            "nic=igb-sriov-vf2,offloads=on",
            "nic=igb-sriov-vf2,offloads=off",
        ]
    );
}

#[rstest]
#[case::vfs_on_virtio(
    nic_edit("{ model = \"virtio\", queues = 1 }", "{ model = \"virtio\", queues = 1, vfs = 2 }"),
    "vfs_on_virtio"
)]
#[case::queues_on_igb(
    nic_edit("{ model = \"igb-sriov\", vfs = 2 }", "{ model = \"igb-sriov\", vfs = 2, queues = 2 }"),
    "queues_on_igb"
)]
#[case::udp_tunnel_on_igb(
    nic_edit("{ model = \"igb-sriov\", vfs = 2 }", "{ model = \"igb-sriov\", vfs = 2, udp_tunnel = true }"),
    "udp_tunnel_on_igb"
)]
#[case::too_many_vfs(
    nic_edit("{ model = \"igb-sriov\", vfs = 2 }", "{ model = \"igb-sriov\", vfs = 8 }"),
    "too_many_vfs"
)]
#[case::igb_without_vfs(nic_edit("{ model = \"igb-sriov\", vfs = 2 }", "{ model = \"igb-sriov\" }"), "igb_without_vfs")]
#[case::virtio_queues_zero(
    nic_edit("{ model = \"virtio\", queues = 4 }", "{ model = \"virtio\", queues = 0 }"),
    "virtio_queues_zero"
)]
#[case::vfio_bad_address(
    nic_edit("{ model = \"igb-sriov\", vfs = 2 }", "{ model = \"vfio\", host = \"3b:02.0\" }"),
    "vfio_bad_address"
)]
#[case::bad_offload_preset(
    nic_edit("offloads = [\"on\", \"off\"]", "offloads = [\"on\", \"maybe\"]"),
    "bad_offload_preset"
)]
#[case::unknown_offload(
    nic_edit("offloads = [\"on\", \"off\"]", "offloads = [\"on\", { tso = false, checksum = true }]"),
    "unknown_offload"
)]
#[case::filter_on_vfs(
    nic_edit("offloads = [\"on\", \"off\"]", "offloads = [\"on\", \"off\"]\nfilter = [\"none\", \"nftables\"]"),
    "filter_on_vfs"
)]
#[case::lab_filter_on_vfs(
    nic_edit("overlay = \"baseline\"", "overlay = \"baseline\"\nfilter = \"iptables\""),
    "lab_filter_on_vfs"
)]
fn invalid_nics_name_the_field(#[case] text: String, #[case] name: &str) {
    let err = parse(&text).expect_err("the lab must be rejected");
    insta::assert_snapshot!(name, err.to_string());
}

fn qemu(version: &str, virtio_udp_tunnel: bool) -> HostQemu {
    let major = version.split('.').next().unwrap().parse().unwrap();
    HostQemu { version: version.into(), major, virtio_udp_tunnel }
}

#[test]
fn igb_needs_qemu_8() {
    let lab = parse(NIC_MATRIX).unwrap();
    lab.check_host(&qemu("10.0.2", false)).expect("QEMU 10 has igb");
    let err = lab.check_host(&qemu("7.2.0", false)).unwrap_err();
    insta::assert_snapshot!("igb_on_qemu_7", err.to_string());
}

/// A NIC's `udp_tunnel` (either way) needs a virtio-net that offers the
/// tunnel offloads; the nic axis names the cases by it.
#[test]
fn udp_tunnel_needs_a_qemu_that_offers_it() {
    let text = nic_edit(
        "{ model = \"virtio\", queues = 4 },",
        "{ model = \"virtio\", queues = 4, udp_tunnel = true },\n    { model = \"virtio\", queues = 4, udp_tunnel = false },",
    );
    let lab = parse(&text).unwrap();
    let nics: Vec<String> = lab.matrix.nic.iter().flatten().map(|n| n.label()).collect();
    assert_eq!(nics, ["virtio-q1", "virtio-q4-udp-tunnel", "virtio-q4-no-udp-tunnel", "igb-sriov-vf2"]);
    lab.check_host(&qemu("10.1.0", true)).expect("QEMU 10.1 offers them");
    let err = lab.check_host(&qemu("10.0.2", false)).unwrap_err();
    insta::assert_snapshot!("udp_tunnel_on_qemu_10_0", err.to_string());
    let off = parse(&nic_edit(
        "{ model = \"virtio\", queues = 4 },",
        "{ model = \"virtio\", queues = 4, udp_tunnel = false },",
    ))
    .unwrap();
    assert!(off.check_host(&qemu("10.0.2", false)).is_err(), "off is asked of the device too");
}

/// `vlab run` asks the host's QEMU (here a stand-in that answers as QEMU
/// 10.0 does, and as a QEMU with the tunnel offloads) before it boots
/// anything: without them, a lab that sets `udp_tunnel` is bad input.
#[test]
fn vlab_run_refuses_udp_tunnel_where_qemu_lacks_it() {
    let dir = tempfile::tempdir().unwrap();
    let lab = dir.path().join("lab.toml");
    std::fs::write(&lab, BASELINE.replacen("queues = 2 }", "queues = 2, udp_tunnel = true }", 1)).unwrap();
    let fake = |props: &str| {
        let path = dir.path().join("qemu");
        let help =
            props.split(' ').map(|p| format!("  {p}=<bool>  - on/off (default: true)")).collect::<Vec<_>>().join("\n");
        let script = format!(
            "#!/bin/sh\ncase \"$1\" in\n--version) echo 'QEMU emulator version 10.0.2';;\n-device) printf '%s\\n' 'virtio-net-pci options:' '{help}';;\n*) exit 1;;\nesac\n"
        );
        std::fs::write(&path, script).unwrap();
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        path
    };
    let without = fake("csum gso host_tso4 guest_tso4");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_vlab"))
        .args(["run", lab.to_str().unwrap()])
        .env("VLAB_QEMU", &without)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(128), "{said}");
    assert!(said.contains("lab.toml:12:") && said.contains("field `vm[0].nic.udp_tunnel`"), "{said}");
    assert!(said.contains("offers no UDP-tunnel offloads on virtio-net"), "{said}");
    let offered =
        vlab::qemu::HostQemu::probe(&fake("csum gso host_tunnel host_tunnel_csum guest_tunnel guest_tunnel_csum"));
    assert_eq!(offered, Some(qemu("10.0.2", true)));
    let partial = vlab::qemu::HostQemu::probe(&fake("csum host_tunnel guest_tunnel"));
    assert_eq!(partial, Some(qemu("10.0.2", false)), "all four or none");
}

#[test]
fn offload_features_name_their_cases() {
    let text = nic_edit("offloads = [\"on\", \"off\"]", "offloads = [\"default\", { tso = false, gro = true }]");
    let lab = parse(&text).unwrap();
    let names: Vec<String> = lab.cases().into_iter().take(2).map(|c| c.name).collect();
    assert_eq!(names, ["nic=virtio-q1,offloads=default", "nic=virtio-q1,offloads=tso-off+gro-on"]);
}

/// Keys where variants may add their own (top level, a VM, the matrix) are
/// refused when no variant owns them, and when their variant is not the lab's.
#[rstest]
#[case::unknown_top_level(edit("image = \"base\"", "image = \"base\"\ncolour = \"blue\""), "unknown_top_level")]
#[case::unknown_vm_key(edit("name = \"host2\"", "name = \"host2\"\nspeed = 10"), "unknown_vm_key")]
#[case::unknown_axis(
    edit("family = [\"ipv4\", \"ipv6\"]", "family = [\"ipv4\", \"ipv6\"]\nthreads = [1, 2]"),
    "unknown_axis"
)]
#[case::locator_elsewhere(edit("name = \"host2\"", "name = \"host2\"\nlocator = \"bbbb:0:0:0\""), "locator_elsewhere")]
#[case::ila_axis_elsewhere(
    edit("family = [\"ipv4\", \"ipv6\"]", "family = [\"ipv4\", \"ipv6\"]\ncsum_mode = [\"no-action\"]"),
    "ila_axis_elsewhere"
)]
#[case::unknown_filter(edit("overlay = \"baseline\"", "overlay = \"baseline\"\nfilter = \"pf\""), "unknown_filter")]
#[case::unknown_filter_in_axis(
    edit("family = [\"ipv4\", \"ipv6\"]", "family = [\"ipv4\", \"ipv6\"]\nfilter = [\"none\", \"pf\"]"),
    "unknown_filter_in_axis"
)]
fn keys_no_selected_variant_owns_are_refused(#[case] text: String, #[case] name: &str) {
    let err = parse(&text).expect_err("the lab must be rejected");
    insta::assert_snapshot!(name, err.to_string());
}

/// Two cases of one name would share their artifacts and their place in
/// comparisons: an axis that lists a value twice is refused.
#[test]
fn an_axis_value_twice_is_refused() {
    let text = edit(
        "family = [\"ipv4\", \"ipv6\"]",
        "family = [\"ipv4\", \"ipv6\"]\nfilter = [\"none\", \"iptables\", \"none\"]",
    );
    insta::assert_snapshot!("filter_twice_in_axis", parse(&text).expect_err("refused").to_string());
    let text = edit("family = [\"ipv4\", \"ipv6\"]", "family = [\"ipv4\", \"ipv4\"]");
    assert!(parse(&text).expect_err("refused").to_string().contains("an axis lists a value twice"));
}

#[test]
fn the_filter_axis_multiplies_the_cases() {
    let lab = parse(&edit("family = [\"ipv4\", \"ipv6\"]", "family = [\"ipv4\"]\nfilter = [\"none\"]")).unwrap();
    let cases = lab.cases();
    let names: Vec<&str> = cases.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["filter=none,path=underlay,family=ipv4", "filter=none,path=container,family=ipv4"]);
    assert_eq!(cases[0].params.filter(&lab), "none");
    assert_eq!(parse(BASELINE).unwrap().filter, "none", "the default filter");
}

/// What a variant asks of the guests and reads from them, for the first case
/// of the shipped lab `file` that runs it (`kind` `overlay` or `filter`): the
/// modules, kernel options and packages it needs, the files it reads, its
/// axes, each VM's evidence commands (before and after a case), and, for an
/// overlay, where filters go, how its traffic is captured and what says it
/// is ready; for a filter, where it acts, its probe matrix and each VM's
/// per-case setup and drop counters. (Deploy plans have tests of their own.)
fn variant_plan(kind: &str, name: &str, file: &str) -> String {
    use vlab::overlay::Variant;
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let lab = vlab::variants::load_lab(&root.join("labs").join(file)).unwrap();
    let case = lab
        .cases()
        .into_iter()
        .find(|c| if kind == "overlay" { c.params.overlay(&lab) == name } else { c.params.filter(&lab) == name })
        .unwrap_or_else(|| panic!("no case of {file} runs {kind} {name}"));
    let lab = lab.for_case(&case);
    let overlay = vlab::overlay::get(&lab.overlay);
    let filter = vlab::filter::get(&lab.filter);
    let v: &dyn Variant = if kind == "overlay" { overlay } else { filter };
    let mut out = vec![
        format!("{kind} {name}: case {} of {file}", case.name),
        format!("modules: {:?}", v.modules()),
        format!("kernel options: {:?}", v.kernel_options()),
        format!("packages: {:?}", v.packages()),
        format!("inputs: {:?}", v.inputs(&lab).iter().map(|p| p.strip_prefix(root).unwrap_or(p)).collect::<Vec<_>>()),
        format!("axes: {:?}", v.axes(&lab).unwrap()),
    ];
    let points = overlay.enforcement_points(&lab);
    if kind == "overlay" {
        out.push(format!("containers: {:?}", overlay.containers()));
        out.push(format!("enforcement points: {points:?}"));
        out.push(format!("hosts filters: {:?}", overlay.hosts_filters(&lab).map_err(|e| e.to_string())));
        out.push(format!("comparable: {:?}", overlay.comparable()));
        out.push(format!("readiness: {:?}", overlay.readiness(&lab)));
        out.push(format!("capture hints: {:?}", overlay.capture_hints(&lab)));
    } else {
        out.push(format!("enforces: {}", filter.enforces()));
        out.push(format!("acts at: {:?}", points.iter().map(|p| (p, filter.acts_at(p))).collect::<Vec<_>>()));
        out.push(format!("probe targets: {:?}", filter.probe_targets(&lab, &case.params)));
    }
    for vm in &lab.vms {
        out.push(format!("# {}", vm.name));
        let setup = if kind == "overlay" {
            overlay.case_setup(&lab, vm, &case.params)
        } else {
            filter.case_setup(&lab, vm, &case.params)
        };
        out.extend(setup.into_iter().map(|c| format!("case setup: {c}")));
        let commands = [
            ("before", v.evidence_before_commands(&lab, vm)),
            ("after", v.evidence_commands(&lab, vm)),
            ("policy state", if kind == "overlay" { overlay.policy_state_commands(&lab, vm) } else { Vec::new() }),
            (
                "matrix before",
                if kind == "filter" { filter.drop_counter_commands(&lab, vm, Before) } else { Vec::new() },
            ),
            ("matrix after", if kind == "filter" { filter.drop_counter_commands(&lab, vm, After) } else { Vec::new() }),
        ];
        if kind == "filter" {
            out.extend(filter.matrix_monitors(&lab, vm).into_iter().map(|m| format!("matrix monitor: {m}")));
        }
        for (when, cmds) in commands {
            out.extend(cmds.into_iter().map(|(artifact, cmd)| format!("{when}: {artifact}: {cmd}")));
        }
    }
    out.join("\n") + "\n"
}

#[rstest]
#[case::baseline("overlay", "baseline", "filters.toml")]
#[case::ila("overlay", "ila", "ila-matrix.toml")]
#[case::vxlan("overlay", "vxlan", "vxlan.toml")]
#[case::vxlan_evpn("overlay", "vxlan-evpn", "vxlan-evpn.toml")]
#[case::swarm("overlay", "swarm", "swarm.toml")]
#[case::cilium_style("overlay", "cilium-style", "cilium-style.toml")]
#[case::none("filter", "none", "filters.toml")]
#[case::iptables("filter", "iptables", "filters.toml")]
#[case::nftables("filter", "nftables", "filters.toml")]
#[case::l4_policy("filter", "l4-policy", "cilium-style.toml")]
#[case::iptables_policy("filter", "iptables", "policy-methods.toml")]
#[case::nftables_policy("filter", "nftables", "policy-methods.toml")]
fn each_variants_needs_and_evidence_read_as_reviewed(#[case] kind: &str, #[case] name: &str, #[case] file: &str) {
    let snapshot = format!("plan_{kind}_{name}_{}", file.trim_end_matches(".toml"));
    insta::assert_snapshot!(snapshot, variant_plan(kind, name, file));
}

/// The policy and rules axes are l4-policy's own too: the conformance lab
/// with the cilium-style overlay and l4-policy alone keeps every policy.
#[test]
fn l4_policy_owns_the_policy_axis() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("labs/policy-conformance.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let (head, tail) = text.split_once("[matrix]\n").unwrap();
    let policies = &tail[tail.find("policy = [").unwrap()..];
    let alone = format!("{head}[matrix]\n{policies}");
    let lab = vlab::variants::parse_lab(&alone, &path).unwrap_or_else(|e| panic!("{e}"));
    let names: Vec<String> = lab.cases().into_iter().map(|c| c.name).collect();
    assert_eq!(names.len(), 8, "{names:?}");
    assert!(names.iter().all(|n| n.starts_with("policy=")), "{names:?}");
    let scaled = alone.replacen("[matrix]\n", "[matrix]\nrules = [10, 100]\n", 1);
    let lab = vlab::variants::parse_lab(&scaled, &path).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(lab.cases().len(), 16);
}

/// The policy axis belongs to each policy filter on its own: a lab whose
/// only filter is iptables, or nftables, may have one.
#[rstest]
fn each_netfilter_method_owns_the_policy_axis(#[values("iptables", "nftables")] method: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/records/iptables-policy/lab.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let both = "filter = [\"iptables\", \"nftables\"]";
    assert!(text.contains(both));
    let lab = vlab::variants::parse_lab(&text.replace(both, &format!("filter = [\"{method}\"]")), &path)
        .unwrap_or_else(|e| panic!("{e}"));
    let names: Vec<String> = lab.cases().into_iter().map(|c| c.name).collect();
    assert_eq!(names, [format!("filter={method},policy=deny")]);
}

/// The `mtu` axis: one pair per value (the axis varies next to `nic`), the
/// case names say it, and each case carries its MTU.
#[test]
fn the_mtu_axis_multiplies_the_cases() {
    let lab = parse(&edit("[matrix]\n", "[matrix]\nmtu = [1500, 9000]\n")).unwrap();
    let cases = lab.cases();
    assert_eq!(cases.len(), 8);
    assert_eq!(cases[0].name, "mtu=1500,path=underlay,family=ipv4");
    assert_eq!(cases[7].name, "mtu=9000,path=container,family=ipv6");
    assert_eq!((cases[0].params.mtu, cases[7].params.mtu), (Some(1500), Some(9000)));
    assert_eq!(parse(BASELINE).unwrap().mtu, 1500, "Ethernet's without a key");
}

/// An MTU the lab's addresses or NICs cannot carry is refused, naming the
/// line and the field: IPv6 needs 1280 bytes, igb takes at most 9216.
#[rstest]
#[case::ipv6_needs_1280(
    edit("overlay = \"baseline\"\n", "overlay = \"baseline\"\nmtu = 1200\n"),
    "lab.toml:8:7: field `mtu`: MTU 1200 is too small: the lab has IPv6 addresses, and IPv6 needs 1280 bytes"
)]
#[case::igb_carries_9216(
    nic_edit("[matrix]\n", "[matrix]\nmtu = [1500, 9600]\n"),
    "field `matrix.mtu[1]`: MTU 9600 is more than the igb-sriov NIC carries (9216)"
)]
#[case::virtio_16_bits(
    edit("[matrix]\n", "[matrix]\nmtu = [70000]\n"),
    "field `matrix.mtu[0]`: MTU 70000 is more than the virtio NIC carries (65535)"
)]
#[case::empty_axis(edit("[matrix]\n", "[matrix]\nmtu = []\n"), "field `matrix.mtu`: an axis needs at least one value")]
fn an_mtu_the_lab_cannot_carry_is_refused(#[case] text: String, #[case] message: &str) {
    let err = parse(&text).expect_err("the lab must be rejected").to_string();
    assert!(err.contains(message), "{err}");
}
