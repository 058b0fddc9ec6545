//! `vlab repro`: the namespace form of a case, judged by its TAP output
//! against vlab's checks; the lab cut to one case; the script checked by
//! shellcheck and run on this host (the baseline case: plain routing, no
//! kernel feature beyond namespaces and veth), also interrupted.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use vlab::report::Check;
use vlab::repro;

fn check(name: &str, passed: bool, not_judged: bool) -> Check {
    match not_judged {
        true => Check::not_judged(name, ""),
        false => Check::new(name, passed, ""),
    }
}

const TAP: &str = "TAP version 13\n1..3\nok 1 iperf3 completed\n# iperf3 exited 0\n\
                   not ok 2 ILA: wire checksums as documented\n# 86 NOT\n\
                   ok 3 ILA: container checksums valid # SKIP\n# none verifiable\n";

#[test]
fn tap_lines_are_read_as_verdicts() {
    let v = repro::tap_verdicts(TAP);
    assert_eq!(
        v,
        vec![
            ("iperf3 completed".to_string(), Some(true)),
            ("ILA: wire checksums as documented".to_string(), Some(false)),
            ("ILA: container checksums valid".to_string(), None),
        ]
    );
}

#[test]
fn the_scripts_verdicts_agree_with_vlabs_or_are_named() {
    let vlab = [check("iperf3 completed", true, false), check("ILA: wire checksums as documented", false, false)];
    // A skip agrees with a check vlab left out.
    assert!(repro::differences(TAP, &vlab).is_empty());
    // A check the script passes and vlab failed.
    let other = [check("iperf3 completed", false, false), check("ILA: wire checksums as documented", false, false)];
    assert_eq!(repro::differences(TAP, &other), vec!["iperf3 completed: vlab failed, the script passed"]);
    // vlab did not judge what the script failed.
    let unjudged = [check("iperf3 completed", true, false), check("ILA: wire checksums as documented", true, true)];
    assert_eq!(
        repro::differences(TAP, &unjudged),
        vec!["ILA: wire checksums as documented: vlab not judged, the script failed"]
    );
    // The container check, which the script could not judge, as vlab saw it.
    let with_container = |passed: bool| {
        let mut checks = vlab.to_vec();
        checks.push(check("ILA: container checksums valid", passed, false));
        repro::differences(TAP, &checks)
    };
    // What vlab failed, the script could not judge: the finding did not show.
    assert_eq!(with_container(false), vec!["ILA: container checksums valid: vlab failed, the script not judged"]);
    // What vlab passed, the script could not judge (its captures held no
    // verifiable checksum): no contradiction.
    assert!(with_container(true).is_empty());
    // A failure vlab has no check for.
    assert_eq!(
        repro::differences(TAP, &[check("iperf3 completed", true, false)]),
        vec!["ILA: wire checksums as documented: vlab left out, the script failed"]
    );
    // A script that said nothing agrees with nothing.
    assert_eq!(repro::differences("TAP version 13\n# SKIP: no ILA\n", &vlab), vec!["the script printed no verdict"]);
}

fn case(lab: &vlab::lab::Lab, name: &str) -> vlab::lab::Case {
    lab.cases().into_iter().find(|c| c.name == name).unwrap_or_else(|| panic!("no case {name}"))
}

fn repo(path: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn lab(path: &str) -> vlab::lab::Lab {
    vlab::load_lab(&repo(path)).unwrap()
}

#[test]
fn the_lab_is_cut_to_the_one_case() {
    let l = lab("labs/ila-matrix.toml");
    let c = case(&l, "csum-mode=neutral-map,hook=route-input,offloads=off");
    let text = std::fs::read_to_string(&l.source).unwrap();
    let cut = repro::one_case_lab(&text, &l.source, &c).unwrap();
    let again = vlab::parse_lab(&cut, &l.source).unwrap();
    let cases = again.cases();
    assert_eq!(cases.len(), 1);
    assert_eq!(cases[0].params, c.params);
}

#[test]
fn cases_namespaces_cannot_hold_say_why() {
    let l = lab("labs/swarm.toml");
    let c = l.cases().into_iter().find(|c| c.params.overlay(&l) == "swarm").unwrap();
    let why = repro::namespace_script(&l, &c).unwrap_err();
    assert!(why.contains("swarm"), "{why}");
}

fn script(path: &str, name: &str) -> tempfile::NamedTempFile {
    let l = lab(path);
    let s = repro::namespace_script(&l, &case(&l, name)).unwrap();
    let f = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(f.path(), s).unwrap();
    f
}

#[test]
fn every_namespace_form_is_shellcheck_clean() {
    let l = lab("labs/ila-matrix.toml");
    let mut files = vec![script("labs/baseline.toml", "path=container,family=ipv4")];
    files.extend(l.cases().iter().map(|c| script("labs/ila-matrix.toml", &c.name)));
    let out = Command::new("shellcheck")
        .arg("-s")
        .arg("sh")
        .args(files.iter().map(|f| f.path()))
        .output()
        .expect("shellcheck (ci/setup installs it)");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
}

fn namespaces() -> Vec<String> {
    let out = Command::new("ip").args(["netns", "list"]).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.split_whitespace().next().unwrap_or("").to_string())
        .collect()
}

/// The namespaces of labs/baseline.toml's cases.
const OURS: [&str; 4] = ["host1", "host2", "c1", "c2"];

/// Runs the baseline case's script here; with `interrupt_after`, sends
/// SIGINT once that namespace exists.
fn run_baseline(family: &str, interrupt_after: Option<&str>) -> (Option<i32>, String) {
    assert!(namespaces().iter().all(|n| !OURS.contains(&n.as_str())), "a namespace of the lab exists already");
    let f = script("labs/baseline.toml", &format!("path=container,family={family}"));
    let mut child = Command::new("sh").arg(f.path()).stdout(Stdio::piped()).spawn().unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut stdout, &mut s).unwrap();
        s
    });
    if let Some(mark) = interrupt_after {
        let started = Instant::now();
        while !namespaces().iter().any(|n| n == mark) {
            assert!(started.elapsed() < Duration::from_secs(30), "namespace {mark} never came");
            std::thread::sleep(Duration::from_millis(50));
        }
        std::thread::sleep(Duration::from_millis(300));
        unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    }
    let status = child.wait().unwrap();
    let out = reader.join().unwrap();
    let left: Vec<String> = namespaces().into_iter().filter(|n| OURS.contains(&n.as_str())).collect();
    assert!(left.is_empty(), "left behind: {left:?}\n{out}");
    (status.code(), out)
}

/// As root: the case passes, and an interrupted run leaves no namespace
/// (one test: the two runs use the same names). An ordinary user's run
/// skips before creating anything: a user namespace is no substitute (its
/// root may not set groups, which tcpdump does to write its capture).
#[test]
fn the_baseline_case_passes_in_namespaces_and_leaves_none_also_interrupted() {
    if !vlab::hostnet::is_root() {
        let (code, out) = run_baseline("ipv4", None);
        assert_eq!(code, Some(4), "{out}");
        assert!(out.contains("# SKIP: run as root"), "{out}");
        return;
    }
    let (code, out) = run_baseline("ipv6", None);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("ok 1 iperf3 completed") && out.contains("ok 2 payload delivered"), "{out}");
    let (code, out) = run_baseline("ipv4", Some("c2"));
    assert_eq!(code, Some(130), "{out}");
}

/// What the script's capture reader (`od | awk`) says of a captured pcap
/// (`tests/fixtures/pcap/`), with the reader variables of `case` of the ILA
/// matrix.
fn read(pcap: &str, kind: &str, case_name: &str) -> Vec<String> {
    let l = lab("labs/ila-matrix.toml");
    let c = case(&l, case_name);
    let form = vlab::overlay::get("ila").namespace_form(&l, &c.params).unwrap();
    let path = format!("{}/tests/fixtures/pcap/{pcap}", env!("CARGO_MANIFEST_DIR"));
    let vars: String = form.reader_vars.iter().map(|(k, v)| format!(" -v {k}='{v}'")).collect();
    let script = format!("od -An -v -tu1 {path} | awk -v kind={kind} -v mtu=1500{vars} \"$0\"");
    let out = Command::new("sh").args(["-c", &script, repro::READER]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().lines().map(String::from).collect()
}

fn count(lines: &[String], line: &str) -> usize {
    lines.iter().filter(|l| *l == line).count()
}

fn summary(pcap: &str) -> vlab::measure::capture::CaptureSummary {
    let bytes = std::fs::read(format!("{}/tests/fixtures/pcap/{pcap}", env!("CARGO_MANIFEST_DIR"))).unwrap();
    vlab::measure::capture::summarize(&bytes, &vlab::measure::capture::CaptureContext::plain(5201, 1500)).unwrap()
}

/// The same wire segments (captured under no-action with offloads off: each
/// field made for the SIR address) are as documented for no-action and not
/// for adj-transport, which documents a field adjusted to the wire address.
#[test]
fn the_reader_judges_wire_fields_by_the_checksum_mode() {
    let pcap = "ila-no-action-off-host1-underlay.pcap";
    let no_action = read(pcap, "wire", "csum-mode=no-action,hook=route,offloads=off");
    let adj = read(pcap, "wire", "csum-mode=adj-transport,hook=route,offloads=off");
    let judged = count(&no_action, "wire doc");
    assert!(judged > 10, "{no_action:?}");
    assert_eq!(count(&no_action, "wire notdoc"), 0, "{no_action:?}");
    assert_eq!(count(&adj, "wire doc"), 0, "{adj:?}");
    assert_eq!(count(&adj, "wire notdoc"), judged, "{adj:?}");
}

/// The adj-transport finding in a capture of a real run: every judged wire
/// field NOT as documented.
#[test]
fn the_reader_finds_the_adj_transport_fields_not_as_documented() {
    let lines =
        read("ila-adj-transport-off-host2-underlay.pcap", "wire", "csum-mode=adj-transport,hook=route,offloads=off");
    assert!(count(&lines, "wire notdoc") > 10, "{lines:?}");
    assert_eq!(count(&lines, "wire doc"), 0, "{lines:?}");
}

/// Source and destination pairs, and verdicts of container checksums, as
/// vlab's own reader (etherparse) finds them in the same pcap.
#[test]
fn the_reader_agrees_with_vlabs_capture_summary() {
    for pcap in ["ila-no-action-off-host1-c1-eth0.pcap", "ila-neutral-map-route-off-host1-c1-eth0.pcap"] {
        let lines = read(pcap, "container", "csum-mode=no-action,hook=route,offloads=off");
        let s = summary(pcap);
        let mut flows: Vec<String> =
            lines.iter().filter_map(|l| l.strip_prefix("flow ")).map(|f| f.replace(' ', " > ")).collect();
        flows.sort();
        flows.dedup();
        let mut theirs: Vec<String> = s.flows.iter().map(|f| f.to_string()).collect();
        theirs.sort();
        assert_eq!(flows, theirs, "{pcap}");
        assert_eq!(count(&lines, "container valid") as u64, s.checksums.valid, "{pcap}");
        assert_eq!(count(&lines, "container invalid") as u64, s.checksums.invalid, "{pcap}");
        assert_eq!(count(&lines, "container offloaded") as u64, s.checksums.offloaded, "{pcap}");
    }
}

/// The C-bit and the address sum of each wire destination: the neutral-map
/// capture's destinations have both; under plain no-action addresses the
/// sum differs from the SIR address's.
#[test]
fn the_reader_tells_checksum_neutral_destinations() {
    let neutral =
        read("ila-neutral-map-off-host1-underlay.pcap", "wire", "csum-mode=neutral-map,hook=xlat,offloads=off");
    let dsts: Vec<&String> = neutral.iter().filter(|l| l.starts_with("dst ")).collect();
    assert!(!dsts.is_empty() && dsts.iter().all(|l| l.ends_with(" 1 1")), "{dsts:?}");
    let plain = read("ila-no-action-off-host1-underlay.pcap", "wire", "csum-mode=no-action,hook=route,offloads=off");
    let dsts: Vec<&String> = plain.iter().filter(|l| l.starts_with("dst ")).collect();
    assert!(!dsts.is_empty() && dsts.iter().all(|l| l.ends_with(" 0 0")), "{dsts:?}");
}

/// A report of one case (as `vlab run --json` writes it) in a temporary
/// directory, with one failed check.
fn report_of(lab: &str, case: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let report = serde_json::json!({
        "lab": "x",
        "lab_file": format!("{}/{lab}", env!("CARGO_MANIFEST_DIR")),
        "kernel": "6.12.118+deb13-amd64",
        "qemu": "10.0.2",
        "cases": [{ "name": case, "checks": [
            { "name": "iperf3 completed", "passed": true, "detail": "client exit 0" },
            { "name": "ILA: wire checksums as documented", "passed": false, "detail": "120 NOT as documented" },
        ]}],
    });
    std::fs::write(dir.path().join("report.json"), report.to_string()).unwrap();
    dir
}

#[test]
fn a_reproducer_holds_the_script_the_one_case_lab_and_the_account() {
    let case = "csum-mode=adj-transport,hook=route,offloads=off";
    let dir = report_of("labs/ila-matrix.toml", case);
    let out = dir.path().join("out");
    let e = vlab::run::repro::export(&dir.path().join("report.json"), case, &out, None, None, None).unwrap();
    assert!(e.script.unwrap().ends_with("repro.sh"));
    let account = std::fs::read_to_string(&e.report).unwrap();
    assert!(account.contains("Kernel `6.12.118+deb13-amd64` (QEMU 10.0.2)"), "{account}");
    assert!(account.contains("1 check failed: ILA: wire checksums as documented."), "{account}");
    assert!(
        account.contains("| ILA: wire checksums as documented | **FAILED** | 120 NOT as documented |"),
        "{account}"
    );
    assert!(account.contains("csum-mode adj-transport"), "the case's commands: {account}");
    let lab = vlab::parse_lab(&std::fs::read_to_string(&e.lab).unwrap(), &e.lab).unwrap();
    assert_eq!(lab.cases().len(), 1);
    // A case the report does not have is named with the ones it has.
    let err =
        vlab::run::repro::export(&dir.path().join("report.json"), "csum-mode=x", &out, None, None, None).unwrap_err();
    assert!(err.contains("no case \"csum-mode=x\"") && err.contains(case), "{err}");
}

#[test]
fn a_case_without_a_namespace_form_gets_the_vm_form_and_the_reason() {
    let l = lab("labs/swarm.toml");
    let c = l.cases().into_iter().find(|c| c.params.overlay(&l) == "swarm").unwrap();
    let dir = report_of("labs/swarm.toml", &c.name);
    let out = dir.path().join("out");
    let e = vlab::run::repro::export(&dir.path().join("report.json"), &c.name, &out, None, None, None).unwrap();
    let why = e.script.unwrap_err();
    assert!(!out.join("repro.sh").exists());
    let account = std::fs::read_to_string(&e.report).unwrap();
    assert!(account.contains(&format!("This case has no namespace form: {why}.")), "{account}");
    assert!(e.lab.exists());
}

/// The packets that show a finding, fields side by side: on the ILA wire
/// under no-action (offloads off), the first four segments are invalid for
/// the wire addresses and their field is the checksum for the original (SIR)
/// destination, not the wire's; the cut pcap holds those four packets and
/// no others. A capture where nothing is invalid shows its first four.
#[test]
fn the_evidence_shows_the_invalid_segments_and_cuts_them_out() {
    use vlab::measure::capture::{self, CaptureContext};
    use vlab::measure::checksum::ChecksumStatus;
    let sir = |dst: std::net::IpAddr| match dst.to_string().as_str() {
        "aaaa::1" => Some("dead:beef::1".parse().unwrap()),
        "bbbb::2" => Some("dead:beef::2".parse().unwrap()),
        _ => None,
    };
    let ctx = CaptureContext { port: 5201, mtu: 1500, original_dst: &sir, vxlan_port: None };
    let wire = std::fs::read(repo("tests/fixtures/pcap/ila-no-action-off-host1-underlay.pcap")).unwrap();
    let (rows, cut) = capture::evidence(&wire, &ctx, 4).unwrap();
    assert_eq!(rows.len(), 4);
    for r in &rows {
        assert_eq!(r.status, ChecksumStatus::Invalid, "{r:?}");
        let (original, for_original) = r.for_original.unwrap();
        assert_eq!((original, r.field), (sir(r.dst).unwrap(), for_original), "{r:?}");
        assert_ne!(Some(r.field), r.for_captured, "{r:?}");
    }
    let again = capture::checksum_verdicts(&cut, &ctx).unwrap();
    assert_eq!(again.len(), 4);
    assert!(again.iter().all(|(_, s, _)| *s == ChecksumStatus::Invalid), "{again:?}");
    // Nothing invalid in the container's capture: its first four, valid.
    let inside = std::fs::read(repo("tests/fixtures/pcap/ila-no-action-off-host1-c1-eth0.pcap")).unwrap();
    let (rows, _) = capture::evidence(&inside, &CaptureContext::plain(5201, 1500), 4).unwrap();
    let frames: Vec<u64> = rows.iter().map(|r| r.frame).collect();
    assert_eq!(frames, [1, 2, 3, 4]);
    assert!(rows.iter().all(|r| r.status == ChecksumStatus::Valid && Some(r.field) == r.for_captured), "{rows:?}");
    // Three valid packets, then invalid ones: the invalid are shown.
    let mixed = {
        use pcap_parser::ToVec;
        let (_, a) = pcap_parser::parse_pcap(&inside).unwrap();
        let (_, b) = pcap_parser::parse_pcap(&wire).unwrap();
        let mut v = a.header.to_vec_raw().unwrap();
        for block in a.blocks.iter().take(3).chain(b.blocks.iter().take(6)) {
            v.extend(block.to_vec_raw().unwrap());
        }
        v
    };
    let (rows, _) = capture::evidence(&mixed, &ctx, 4).unwrap();
    let frames: Vec<u64> = rows.iter().map(|r| r.frame).collect();
    assert_eq!(frames, [4, 5, 6, 7]);
}

/// `vlab repro --evidence CASE_DIR`: REPORT.md shows each capture's
/// packets and evidence/ holds them; without it, REPORT.md says how to get
/// them.
#[test]
fn a_reproducer_with_the_cases_artifacts_carries_its_packets() {
    let fixture = repo("tests/fixtures/records/ila");
    let case = "csum-mode=no-action,hook=route,offloads=on";
    let dir = report_of("tests/fixtures/records/ila/lab.toml", case);
    let report = dir.path().join("report.json");
    let out = dir.path().join("with");
    let e = vlab::run::repro::export(&report, case, &out, None, Some(&fixture.join("case")), None).unwrap();
    let account = std::fs::read_to_string(&e.report).unwrap();
    for file in ["host1-underlay.pcap", "host1-c1-eth0.pcap", "host2-underlay.pcap", "host2-c2-eth0.pcap"] {
        assert!(account.contains(&format!("`{file}`:")), "{account}");
        assert!(out.join("evidence").join(file).is_file(), "{file}");
    }
    assert!(account.contains("| frame | src > dst |"), "{account}");
    let e = vlab::run::repro::export(&report, case, &dir.path().join("without"), None, None, None).unwrap();
    let account = std::fs::read_to_string(&e.report).unwrap();
    assert!(account.contains("kept no artifacts of this case"), "{account}");
}

/// REPORT.md lists the kernel options the case needs: by name where the
/// report is all vlab has, with the kernel's own lines where the run read
/// its configuration (an option it lacks said so).
#[test]
fn the_account_names_the_kernel_options_the_case_needs() {
    let l = lab("labs/ila-matrix.toml");
    let c = case(&l, "csum-mode=adj-transport,hook=route,offloads=off");
    let account = |config: Option<&str>| vlab::run::repro::config_md(&l, &c, config);
    let names = account(None);
    assert!(names.contains("is not in the report") && names.contains("\nCONFIG_IPV6_ILA "), "{names}");
    let lines = account(Some("CONFIG_IPV6_ILA=m\n# CONFIG_VETH is not set\nCONFIG_NET_NS=y\n"));
    for line in
        ["\nCONFIG_IPV6_ILA=m ", "\n# CONFIG_VETH is not set ", "\nCONFIG_NET_NS=y ", "\n# CONFIG_PACKET is absent "]
    {
        assert!(lines.contains(line), "{line:?}: {lines}");
    }
}
