//! `vlab repro`: one case of a report handed over as something a kernel
//! developer runs without vlab.
//!
//! - `repro.sh`, the namespace form: the lab's VMs become network namespaces
//!   on one host, joined by a veth pair, each container a namespace on a
//!   veth as in the guests; the commands vlab ran in the guests (rendered
//!   from the same plan), the case's workload and captures, and the checks
//!   as shell (the overlay's, [`overlay::NamespaceForm`]), printed as kselftest
//!   prints them (TAP; exit 0 pass, 1 fail, 4 skip). It cleans up after
//!   itself, also on Ctrl-C.
//! - `lab.toml`, the VM form: the lab with its matrix cut to this case.
//! - `REPORT.md`: what vlab expected and saw, the kernel, the commands.
//!
//! A case whose overlay, filter or NIC cannot be rebuilt in namespaces gets
//! the VM form only, and the reason.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::guest::{self, host_veth, quote, Attachment, Containers, Netns, CONTAINER_DEV, UNDERLAY_DEV};
use crate::lab::{variant_name, Case, Lab, NicModel, Protocol, TrafficPath};
use crate::measure::{capture, iperf3, nic};
use crate::overlay;
use crate::report::Check;

/// The capture reader (see its header).
pub const READER: &str = include_str!("judge.awk");
/// Ends the heredocs of the script; no rendered command may hold it.
const EOF: &str = "VLAB_EOF";

/// A case as a report recorded it.
#[derive(Debug, Clone, Deserialize)]
pub struct SavedCase {
    /// Its name.
    pub name: String,
    /// Its checks.
    pub checks: Vec<Check>,
}

/// What `vlab repro` reads of a report (`vlab run --json`).
#[derive(Debug, Clone, Deserialize)]
pub struct SavedReport {
    /// The lab file, as the run was given it.
    pub lab_file: String,
    /// The guests' kernel release.
    pub kernel: String,
    /// QEMU version.
    #[serde(default)]
    pub qemu: String,
    /// The cases.
    pub cases: Vec<SavedCase>,
}

impl SavedReport {
    /// Reads a report file: one lab's report, or a run's document of
    /// several (`{reports: [..]}`: several kernels or a study), of which the
    /// one that has case `case` on kernel `kernel` (needed only where
    /// several have the case).
    pub fn read(path: &Path, case: &str, kernel: Option<&str>) -> Result<SavedReport, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let doc: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| format!("{}: not JSON: {e}", path.display()))?;
        let parse = |v: &serde_json::Value| {
            SavedReport::deserialize(v).map_err(|e| format!("{}: not a vlab lab report: {e}", path.display()))
        };
        let Some(reports) = doc.get("reports").and_then(serde_json::Value::as_array) else { return parse(&doc) };
        let all = reports.iter().map(parse).collect::<Result<Vec<SavedReport>, String>>()?;
        let kernels: Vec<&str> =
            all.iter().filter(|r| r.cases.iter().any(|c| c.name == case)).map(|r| r.kernel.as_str()).collect();
        let chosen: Vec<&SavedReport> = all
            .iter()
            .filter(|r| r.cases.iter().any(|c| c.name == case) && kernel.is_none_or(|k| r.kernel == k))
            .collect();
        match (&chosen[..], kernel) {
            ([one], _) => Ok((*one).clone()),
            ([], Some(k)) => Err(format!(
                "{}: no report of kernel {k} has case {case:?} (kernels: {})",
                path.display(),
                kernels.join(", ")
            )),
            ([], None) => Ok(all.into_iter().next().ok_or_else(|| format!("{}: no report", path.display()))?),
            (_, _) => Err(format!(
                "{}: reports of several kernels have case {case:?} ({}): choose one with --kernel RELEASE",
                path.display(),
                kernels.join(", ")
            )),
        }
    }

    /// The lab file: as recorded when it exists, else beside the report.
    pub fn lab_path(&self, report: &Path) -> PathBuf {
        let recorded = PathBuf::from(&self.lab_file);
        match recorded.exists() {
            true => recorded,
            false => report.with_file_name(recorded.file_name().unwrap_or_default()),
        }
    }
}

/// What a case's namespace form is made of, resolved from the lab.
struct Plan<'a> {
    lab: &'a Lab,
    case: &'a Case,
    overlay: &'static dyn overlay::Overlay,
    form: overlay::NamespaceForm,
    /// The server's and the client's containers.
    ends: (&'a str, &'a str),
    /// The server's address.
    addr: std::net::IpAddr,
    deploy: Vec<overlay::Step>,
    mtu: u32,
    requested: Vec<(&'static str, Option<bool>)>,
    hosts: Vec<&'a str>,
    containers: Vec<&'a str>,
}

impl Plan<'_> {
    fn offloads(&self) -> bool {
        self.requested.iter().any(|(_, w)| w.is_some())
    }
}

/// The namespace form of `case` of `lab` (`repro.sh`), or why it has none.
pub fn namespace_script(lab: &Lab, case: &Case) -> Result<String, String> {
    let plan = plan(lab, case)?;
    let mut s = String::new();
    header(&plan, &mut s);
    preflight(&plan, &mut s);
    setup(&plan, &mut s)?;
    workload(&plan, &mut s);
    checks(&plan, &mut s);
    Ok(s)
}

/// The case resolved, or why namespaces cannot hold it.
fn plan<'a>(lab: &'a Lab, case: &'a Case) -> Result<Plan<'a>, String> {
    let p = &case.params;
    let o: &'static dyn overlay::Overlay = overlay::get(p.overlay(lab));
    if p.filter(lab) != "none" {
        return Err(format!("the {} filter has no namespace form", p.filter(lab)));
    }
    if !matches!(o.containers(), Containers::Routed | Containers::Bridged) {
        return Err(format!("the {} overlay plumbs its own containers", o.name()));
    }
    if !o.packages().is_empty() || !o.inputs(lab).is_empty() {
        return Err(format!("the {} overlay needs packages or files of the image", o.name()));
    }
    if lab.vms.len() != 2 {
        return Err("the namespace form joins two hosts with one veth pair".into());
    }
    for vm in &lab.vms {
        let model = p.nic.as_ref().unwrap_or(&vm.nic).model;
        if model != NicModel::Virtio {
            return Err(format!("{}'s NIC is {}: a NIC model needs the VM form", vm.name, variant_name(&model)));
        }
    }
    let (server, client) = (&lab.workload.server, &lab.workload.client);
    let (Some(s_ct), Some(c_ct)) = (&server.container, &client.container) else {
        return Err("the workload's ends are not containers".into());
    };
    if p.path != TrafficPath::Container {
        return Err("the case's traffic is not between containers".into());
    }
    if p.protocol != Protocol::Tcp {
        return Err("the capture reader judges TCP".into());
    }
    let form = o.namespace_form(lab, p)?;
    let s_vm = lab.vm(&server.vm).ok_or("no server VM")?;
    let addr = s_vm
        .containers
        .iter()
        .find(|c| &c.name == s_ct)
        .and_then(|c| c.address(p.family))
        .ok_or("the server container has no address of the case's family")?;
    let deploy = o.deploy(lab, &vec![Attachment::Veth; lab.vms.len()]);
    if deploy.iter().any(|s| !s.files.is_empty() || s.output.is_some()) {
        return Err(format!("the {} overlay's deploy writes files or joins outputs", o.name()));
    }
    let requested = p.offloads.requested();
    Ok(Plan {
        lab,
        case,
        overlay: o,
        form,
        ends: (s_ct, c_ct),
        addr,
        deploy,
        mtu: p.mtu.unwrap_or(lab.mtu),
        requested,
        hosts: lab.vms.iter().map(|v| v.name.as_str()).collect(),
        containers: lab.vms.iter().flat_map(|v| &v.containers).map(|c| c.name.as_str()).collect(),
    })
}

/// The comment that says what the script is, and its functions.
fn header(plan: &Plan, w: &mut String) {
    let (lab, case) = (plan.lab, plan.case);
    let (hosts, containers, offloads) = (&plan.hosts, &plan.containers, plan.offloads());
    // The traps call what shellcheck thinks unreachable; awk programs are in
    // single quotes.
    let _ = writeln!(w, "#!/bin/sh\n# SPDX-License-Identifier: GPL-2.0\n# shellcheck disable=SC2016,SC2317\n#");
    let _ = writeln!(w, "# {}, case {}", lab.name, case.name);
    if !lab.description.is_empty() {
        let _ = writeln!(w, "# {}", lab.description);
    }
    let _ = writeln!(
        w,
        "#\n# The lab's VMs ({}) are network namespaces here, joined by a veth pair\n\
         # named {UNDERLAY_DEV}; each container ({}) is a namespace on a veth, as in the\n\
         # VMs. The commands in the heredocs are those vlab ran in the guests. The\n\
         # VMs' virtio-net NICs are veths here{}.\n#\n\
         # Run as root. Exit 0: every check as vlab expects it; 1: a check failed;\n\
         # 4: skipped (this host lacks something). Rendered by vlab {} repro.\n",
        hosts.join(", "),
        containers.join(", "),
        if offloads { ", with the case's offloads set by ethtool" } else { "" },
        env!("CARGO_PKG_VERSION")
    );
    let _ = writeln!(w, "NAMESPACES={}", quote(&[hosts.clone(), containers.clone()].concat().join(" ")));
    w.push_str(PRELUDE);
}

/// The plan of checks, and what must hold before anything is created.
fn preflight(plan: &Plan, w: &mut String) {
    let (form, o, offloads) = (&plan.form, plan.overlay, plan.offloads());
    let checks = 2 + form.checks.len();
    let _ = writeln!(w, "\necho 'TAP version 13'\necho '1..{checks}'");
    let mut tools = vec!["ip", "tcpdump", "iperf3", "nsenter", "timeout", "od", "awk", "mktemp"];
    if offloads {
        tools.push("ethtool");
    }
    let _ = writeln!(
        w,
        "[ \"$(id -u)\" -eq 0 ] || skip 'run as root'\n\
         for tool in {}; do\n\tcommand -v \"$tool\" >/dev/null 2>&1 || skip \"$tool is missing\"\ndone\n\
         for ns in $NAMESPACES; do\n\t[ ! -e \"/run/netns/$ns\" ] || skip \"a network namespace named $ns exists already\"\ndone",
        tools.join(" ")
    );
    for m in o.modules() {
        let _ = writeln!(w, "modprobe -q {m} 2>/dev/null || true");
    }
    if let Some((probe, why)) = &form.kernel_probe {
        let _ = writeln!(w, "{probe} || skip {}", quote(why));
    }
}

/// The namespaces, the underlay, and each host's commands as the guests ran them.
fn setup(plan: &Plan, w: &mut String) -> Result<(), String> {
    let (lab, p) = (plan.lab, &plan.case.params);
    let (hosts, o, mtu, requested, offloads) = (&plan.hosts, plan.overlay, plan.mtu, &plan.requested, plan.offloads());
    let _ = writeln!(w, "\ntmp=$(mktemp -d)\nours=1\nfor ns in {}; do", hosts.join(" "));
    let _ = writeln!(w, "\tip netns add \"$ns\" || bail \"cannot create $ns\"\n\tip -n \"$ns\" link set lo up\ndone");
    let _ = writeln!(
        w,
        "ip -n {} link add {UNDERLAY_DEV} type veth peer name {UNDERLAY_DEV} netns {} || bail 'no veth pair'",
        hosts[0], hosts[1]
    );
    for (i, vm) in lab.vms.iter().enumerate() {
        let nic = p.nic.clone().unwrap_or_else(|| vm.nic.clone());
        let mut cmds: Vec<String> = guest::mtu_command("", UNDERLAY_DEV, mtu).into_iter().collect();
        cmds.extend(guest::underlay_addresses(vm));
        cmds.extend(guest::peer_routes(lab, vm));
        cmds.extend(guest::container_commands(vm, i, Attachment::of(&nic), o.containers() == Containers::Routed, mtu));
        cmds.extend(vm.setup.iter().cloned());
        cmds.extend(plan.deploy.iter().filter(|st| st.vm == vm.name).flat_map(|st| st.commands.iter().cloned()));
        cmds.extend(o.case_setup(lab, vm, p));
        if offloads {
            let mut devs = vec![(None, UNDERLAY_DEV.to_string())];
            for c in &vm.containers {
                devs.push((None, host_veth(&c.name)));
                devs.push((Some(Netns::container(&c.name)), CONTAINER_DEV.to_string()));
            }
            for (ns, dev) in devs {
                cmds.push(Netns::script(ns.as_ref(), &nic::offload_script(&dev, requested)));
            }
        }
        let body = cmds.join("\n");
        if body.contains(EOF) {
            return Err(format!("a command of {} holds {EOF}", vm.name));
        }
        let n = &vm.name;
        let _ = writeln!(
            w,
            "\n# {n}\ncat >\"$tmp/{n}.sh\" <<'{EOF}'\n{body}\n{EOF}\nin_ns {n} \"$tmp/{n}.sh\" || bail 'the setup of {n} failed'"
        );
    }

    Ok(())
}

/// The captures, the workload and the receivers' counters, then the
/// captures read into the facts the checks judge.
fn workload(plan: &Plan, w: &mut String) {
    let (lab, p) = (plan.lab, &plan.case.params);
    let (s_ct, c_ct) = plan.ends;
    let (hosts, containers, addr, mtu) = (&plan.hosts, &plan.containers, plan.addr, plan.mtu);
    let client = &lab.workload.client;
    // As in the VMs, whose links came up long before a case, duplicate
    // address detection is over before the workload: a neighbour solicited
    // meanwhile may go unanswered.
    for ns in hosts.iter().chain(containers) {
        wait(
            w,
            &format!("[ -z \"$(ip -n {ns} -6 addr show tentative)\" ]"),
            &format!("addresses in {ns} stay tentative"),
        );
    }
    // The workload, its captures, the receivers' counters.
    let _ = writeln!(w, "\necho '# workload: {}/{c_ct} to {addr}'", client.vm);
    let (packets, snaplen) = lab.capture.as_ref().map_or((60, 65535), |c| (c.packets.max(1), c.snaplen.max(96)));
    let mut files = Vec::new();
    for vm in &lab.vms {
        let filter = format!("port {}", lab.workload.port);
        let mut points = vec![(
            Netns::Named(vm.name.clone()),
            UNDERLAY_DEV.to_string(),
            "wire",
            format!("{}-{UNDERLAY_DEV}", vm.name),
        )];
        for c in vm.containers.iter().filter(|c| [s_ct, c_ct].contains(&c.name.as_str())) {
            points.push((
                Netns::container(&c.name),
                CONTAINER_DEV.to_string(),
                "container",
                format!("{}-{CONTAINER_DEV}", c.name),
            ));
        }
        for (ns, dev, kind, name) in points {
            let file = format!("$tmp/{name}.pcap");
            let argv = Netns::wrap(Some(&ns), capture::tcpdump_argv(&dev, "FILE", packets, snaplen, &filter));
            let line = guest::shell_line(&argv).replace("'FILE'", &format!("\"{file}\""));
            let _ = writeln!(w, "{line} 2>\"$tmp/{name}.log\" &\ncaptures=\"$captures $!\"");
            files.push((file, kind, name));
        }
    }
    for (_, _, name) in &files {
        wait(w, &format!("grep -q 'listening on' \"$tmp/{name}.log\""), &format!("tcpdump on {name} did not start"));
    }
    let server_argv = Netns::wrap(Some(&Netns::container(s_ct)), iperf3::server_argv(&lab.workload));
    let client_argv =
        Netns::wrap(Some(&Netns::container(c_ct)), iperf3::client_argv(&lab.workload, p, &addr.to_string()));
    let _ = writeln!(
        w,
        "{} >\"$tmp/server.json\" 2>&1 &\n\
         {}\n\
         before=$(csum_errors {s_ct} {c_ct})\n\
         timeout 120 {} >\"$tmp/client.json\" 2>\"$tmp/client.err\"\n\
         client_rc=$?\n\
         after=$(csum_errors {s_ct} {c_ct})\n\
         csum_errors=$((after - before))\n\
         echo \"# the receivers' TcpInCsumErrors: +$csum_errors\"\n\
         sleep 1\n\
         for pid in $captures; do kill -INT \"$pid\" 2>/dev/null; done\n\
         for pid in $captures; do wait \"$pid\"; done",
        guest::shell_line(&server_argv),
        waited(&format!("listening {s_ct} {}", lab.workload.port), "iperf3 did not listen"),
        guest::shell_line(&client_argv),
    );
    let vars: String = plan.form.reader_vars.iter().map(|(k, v)| format!(" -v {k}={}", quote(v))).collect();
    let _ = writeln!(w, "reader=$(cat <<'{EOF}'\n{READER}{EOF}\n)\nfacts_wire=$tmp/wire.facts\nfacts_container=$tmp/container.facts\n: >\"$facts_wire\"\n: >\"$facts_container\"");
    for (file, kind, _) in &files {
        let _ = writeln!(
            w,
            "od -An -v -tu1 \"{file}\" | awk -v kind={kind} -v mtu={mtu}{vars} \"$reader\" >>\"$facts_{kind}\""
        );
    }
}

/// The workload's checks and the overlay's, and the exit code.
fn checks(plan: &Plan, w: &mut String) {
    let form = &plan.form;
    // The checks.
    let _ = writeln!(
        w,
        "\ncheck='iperf3 completed'\n\
         error=$(sed -n 's/^[[:space:]]*\"error\":[[:space:]]*//p' \"$tmp/client.json\")\n\
         if [ \"$client_rc\" -eq 0 ] && [ -z \"$error\" ]; then r=pass; else r=fail; fi\n\
         verdict $r \"iperf3 exited $client_rc $error$(tail -n 1 \"$tmp/client.err\")\"\n\
         check='payload delivered'\n\
         received=$(awk '/\"sum_received\"/ {{ s = 1 }} s && /\"bytes\"/ {{ gsub(/[^0-9]/, \"\"); print; exit }}' \"$tmp/client.json\")\n\
         if [ \"${{received:-0}}\" -gt 0 ]; then r=pass; else r=fail; fi\n\
         verdict $r \"${{received:-0}} bytes received\""
    );
    for c in &form.checks {
        let _ = writeln!(w, "check={}\n# shellcheck disable=SC2046\n{}", quote(&c.name), c.script);
    }
    w.push_str("\n[ \"$failed\" -eq 0 ] && exit \"$ksft_pass\"\nexit \"$ksft_fail\"\n");
}

/// Waits up to 10 s for `condition` (as the guests wait), then bails out
/// with `why` unless it holds.
fn waited(condition: &str, why: &str) -> String {
    format!("{}\n{condition} || bail {}", guest::wait_until(condition, 10), quote(why))
}

fn wait(w: &mut String, condition: &str, why: &str) {
    let _ = writeln!(w, "{}", waited(condition, why));
}

/// The script's functions: the same in every case's script.
const PRELUDE: &str = include_str!("prelude.sh");

/// The lab's text with its matrix cut to `case`: each axis keeps the one
/// value the case took (found by trying each value: a value's spelling in a
/// lab file and in a case name differ). The result is checked to expand to
/// that case alone.
pub fn one_case_lab(text: &str, path: &Path, case: &Case) -> Result<String, String> {
    let mut doc: toml::Table = text.parse().map_err(|e| format!("{}: {e}", path.display()))?;
    let keeps = |doc: &toml::Table| -> bool {
        let Ok(t) = toml::to_string(doc) else { return false };
        crate::variants::parse_lab(&t, path).is_ok_and(|l| l.cases().iter().any(|c| c.params == case.params))
    };
    let axes: Vec<String> = match doc.get("matrix").and_then(|m| m.as_table()) {
        Some(m) => m.iter().filter(|(k, v)| *k != "exclude" && v.is_array()).map(|(k, _)| k.clone()).collect(),
        None => Vec::new(),
    };
    for axis in axes {
        let values = doc["matrix"][&axis].as_array().cloned().unwrap_or_default();
        let kept = values.into_iter().find(|v| {
            let mut trial = doc.clone();
            trial["matrix"].as_table_mut().expect("a table").insert(axis.clone(), toml::Value::Array(vec![v.clone()]));
            keeps(&trial)
        });
        let Some(v) = kept else { return Err(format!("no value of matrix.{axis} gives case {}", case.name)) };
        doc["matrix"].as_table_mut().expect("a table").insert(axis, toml::Value::Array(vec![v]));
    }
    if let Some(m) = doc.get_mut("matrix").and_then(|m| m.as_table_mut()) {
        m.remove("exclude");
    }
    let out = toml::to_string(&doc).map_err(|e| e.to_string())?;
    let lab = crate::variants::parse_lab(&out, path).map_err(|e| e.to_string())?;
    match lab.cases().as_slice() {
        [one] if one.params == case.params => Ok(out),
        cases => Err(format!("the lab cut to case {} has {} cases", case.name, cases.len())),
    }
}

/// What `vlab repro` wrote.
#[derive(Debug)]
pub struct Exported {
    /// The namespace form's file, or why there is none.
    pub script: Result<PathBuf, String>,
    /// The VM form.
    pub lab: PathBuf,
    /// The account for people.
    pub report: PathBuf,
}

/// Writes the reproducer of `case` as `recorded` in a run (`saved`) into
/// `dir`; `config` and `evidence` are REPORT.md's sections on the kernel's
/// configuration and the packets (see `run::repro`, which has the run's
/// records to render them from).
pub fn write_dir(
    dir: &Path,
    lab: &Lab,
    case: &Case,
    recorded: &SavedCase,
    saved: &SavedReport,
    (config, evidence): (&str, &str),
) -> Result<Exported, String> {
    let text =
        std::fs::read_to_string(&lab.source).map_err(|e| format!("the lab file {}: {e}", lab.source.display()))?;
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let write = |file: &str, content: &str| -> Result<PathBuf, String> {
        let p = dir.join(file);
        std::fs::write(&p, content).map_err(|e| format!("{}: {e}", p.display()))?;
        Ok(p)
    };
    let script = match namespace_script(lab, case) {
        Ok(s) => {
            let p = write("repro.sh", &s)?;
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).map_err(|e| e.to_string())?;
            Ok(p)
        }
        Err(why) => Err(why),
    };
    let lab_file = write("lab.toml", &one_case_lab(&text, &lab.source, case)?)?;
    let account = report_md(lab, case, recorded, saved, script.as_ref().err().map(String::as_str), (config, evidence));
    let report_file = write("REPORT.md", &account)?;
    Ok(Exported { script, lab: lab_file, report: report_file })
}

/// The verdicts a script printed (TAP): each check's name, and whether it
/// passed (`None`: skipped).
pub fn tap_verdicts(tap: &str) -> Vec<(String, Option<bool>)> {
    let number = |rest: &str| rest.split_once(' ').map(|(_, name)| name.to_string());
    tap.lines()
        .filter_map(|l| {
            if let Some(rest) = l.strip_prefix("not ok ") {
                return Some((number(rest)?, Some(false)));
            }
            let name = number(l.strip_prefix("ok ")?)?;
            match name.strip_suffix(" # SKIP") {
                Some(n) => Some((n.to_string(), None)),
                None => Some((name, Some(true))),
            }
        })
        .collect()
}

/// Where the script's verdicts differ from vlab's checks of the same name:
/// one failed a check and the other did not. A check that one could not
/// judge (nothing verifiable in its own captures: which segments a capture
/// holds as full checksums varies from run to run) or left out and the
/// other passed agree. A script that printed no verdict at all differs.
pub fn differences(tap: &str, checks: &[Check]) -> Vec<String> {
    let verdicts = tap_verdicts(tap);
    if verdicts.is_empty() {
        return vec!["the script printed no verdict".into()];
    }
    let word = |v: Option<bool>| match v {
        Some(true) => "passed",
        Some(false) => "failed",
        None => "not judged",
    };
    verdicts
        .iter()
        .filter_map(|(name, v)| {
            let vlab = checks.iter().find(|c| &c.name == name).map(|c| (!c.not_judged).then_some(c.passed));
            let vlab_failed = vlab == Some(Some(false));
            (vlab_failed != (*v == Some(false))).then(|| {
                let seen = vlab.map_or("left out", word);
                format!("{name}: vlab {seen}, the script {}", word(*v))
            })
        })
        .collect()
}

/// How the namespace form ran in a guest of the run's kernel.
#[derive(Debug, Clone, serde::Serialize, Deserialize)]
pub struct GuestRun {
    /// The script's exit code.
    pub code: i64,
    /// Where its verdicts differ from vlab's (none: they agree).
    pub differences: Vec<String>,
}

/// The guest command that runs `script` where the guest's own namespaces
/// do not collide with the script's: a private mount namespace with an
/// empty /run/netns.
pub fn guest_command(script: &str) -> String {
    format!("mkdir -p /run/netns && unshare --mount --propagation private sh -c 'mount -t tmpfs tmpfs /run/netns && exec sh {script}'")
}

/// `REPORT.md`: the case, the kernel, what vlab expected and saw, the
/// commands each host ran for the case, and how to run both forms.
pub fn report_md(
    lab: &Lab,
    case: &Case,
    recorded: &SavedCase,
    saved: &SavedReport,
    no_script: Option<&str>,
    (config, evidence): (&str, &str),
) -> String {
    let failed: Vec<&Check> = recorded.checks.iter().filter(|c| !c.passed).collect();
    let mut s = format!("# {}: {}\n\n", lab.name, case.name);
    let _ = writeln!(
        s,
        "Kernel `{}`{}, as vlab's guests ran it.\n",
        saved.kernel,
        match saved.qemu.as_str() {
            "" => String::new(),
            q => format!(" (QEMU {q})"),
        }
    );
    match failed.len() {
        0 => s.push_str("Every check of this case passed.\n\n"),
        n => {
            let names: Vec<&str> = failed.iter().map(|c| c.name.as_str()).collect();
            let checks = if n == 1 { "check" } else { "checks" };
            let _ = writeln!(s, "{n} {checks} failed: {}.\n", names.join("; "));
        }
    }
    s.push_str(config);
    s.push_str("## What vlab expected and saw\n\n| check | verdict | evidence |\n|---|---|---|\n");
    for c in &recorded.checks {
        let verdict = match (c.not_judged, c.passed) {
            (true, _) => "not judged",
            (false, true) => "passed",
            (false, false) => "**FAILED**",
        };
        let _ = writeln!(s, "| {} | {verdict} | {} |", c.name, c.detail.replace('|', "\\|"));
    }
    s.push('\n');
    s.push_str(evidence);
    let o = overlay::get(case.params.overlay(lab));
    s.push_str("## The case's commands\n\nWhat each host ran for this case after the lab's setup:\n");
    for vm in &lab.vms {
        let _ = writeln!(s, "\n{}:\n\n```sh\n{}\n```", vm.name, o.case_setup(lab, vm, &case.params).join("\n"));
    }
    s.push_str("\n## Reproduce\n\n");
    match no_script {
        None => s.push_str(
            "Without VMs, as root on any Linux host with `ip`, `tcpdump` and `iperf3`:\n\n\
             ```sh\nsudo ./repro.sh    # TAP; exit 0 as expected, 1 a check failed, 4 skipped\n```\n\n",
        ),
        Some(why) => {
            let _ = writeln!(s, "This case has no namespace form: {why}.\n");
        }
    }
    s.push_str("In VMs, with vlab:\n\n```sh\nvlab run lab.toml\n```\n");
    s
}
