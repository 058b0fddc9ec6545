//! The typed result of a run, its table and its JSON.

use serde::Serialize;

use crate::lab::{CaseParams, Overlay};
use crate::measure::capture::CaptureSummary;
use crate::measure::fdb::FdbEntry;
use crate::measure::nic::InterfaceEvidence;
use crate::overlay::evpn::ControlPlane;
use crate::overlay::ila::IlaVerdict;

/// One verdict computed from evidence read back from the guests.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Check {
    /// What is checked.
    pub name: String,
    /// The verdict.
    pub passed: bool,
    /// The evidence behind it.
    pub detail: String,
}

impl Check {
    /// A check with its verdict and evidence.
    pub fn new(name: &str, passed: bool, detail: impl Into<String>) -> Check {
        Check { name: name.to_string(), passed, detail: detail.into() }
    }
}

/// What a VM was and how long it took to boot.
#[derive(Debug, Clone, Serialize)]
pub struct VmReport {
    /// Name.
    pub name: String,
    /// Seconds from QEMU start until the guest agent answered.
    pub boot_s: f64,
    /// vCPUs.
    pub cpus: u32,
    /// Memory.
    pub memory_mib: u32,
    /// NIC (`virtio-q2`, `igb-sriov-vf2`, ...).
    pub nic: String,
    /// Combined channels the guest's underlay NIC reports (`ethtool -l`).
    pub channels: Option<u32>,
    /// Whether vhost-net carries the NIC's data path.
    pub vhost: bool,
    /// Boots of the pair this VM took: 2 when a guest stalled the first time.
    pub boot_attempts: u32,
}

/// The result of one case.
#[derive(Debug, Clone, Serialize)]
pub struct CaseReport {
    /// Case name (`path=container,family=ipv4`).
    pub name: String,
    /// Resolved parameters.
    pub params: CaseParams,
    /// Receiver throughput in bit/s (0 when the workload failed).
    pub throughput_bps: f64,
    /// TCP retransmissions.
    pub retransmits: Option<u64>,
    /// Client host CPU use, percent.
    pub cpu_client_percent: f64,
    /// Server host CPU use, percent.
    pub cpu_server_percent: f64,
    /// Verdicts.
    pub checks: Vec<Check>,
    /// All checks passed.
    pub passed: bool,
    /// Evidence per interface: driver, channels, VFs, offloads, counters.
    pub interfaces: Vec<InterfaceEvidence>,
    /// Summaries of the packet captures (empty without `[capture]`).
    pub captures: Vec<CaptureSummary>,
    /// ILA verdicts (the `ila` overlay only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ila: Option<IlaVerdict>,
    /// Forwarding entries of the VXLAN devices after the workload (VXLAN overlays only).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub fdb: Vec<FdbEntry>,
    /// The EVPN control plane after the workload (`vxlan-evpn` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub evpn: Option<ControlPlane>,
    /// Throughput over that of the same case with the baseline overlay in this
    /// run (labs whose matrix compares overlays).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vs_baseline: Option<f64>,
}

/// Sets each case's throughput ratio to its baseline-overlay sibling (the
/// case that differs only in `overlay = baseline`), when the run has one.
pub fn compare_with_baseline(cases: &mut [CaseReport]) {
    let baselines: Vec<(CaseParams, f64)> = cases
        .iter()
        .filter(|c| c.params.overlay == Some(Overlay::Baseline))
        .map(|c| (c.params.clone(), c.throughput_bps))
        .collect();
    for c in cases.iter_mut().filter(|c| c.params.overlay.is_some()) {
        let sibling = CaseParams { overlay: Some(Overlay::Baseline), ..c.params.clone() };
        if let Some((_, base)) = baselines.iter().find(|(p, b)| *p == sibling && *b > 0.0) {
            c.vs_baseline = Some(c.throughput_bps / base);
        }
    }
}

/// The result of a run.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Lab name.
    pub lab: String,
    /// The lab file.
    pub lab_file: String,
    /// Accelerator used.
    pub accel: String,
    /// Why KVM was not used, when it was not.
    pub accel_notice: Option<String>,
    /// Guest kernel release.
    pub kernel: String,
    /// QEMU version.
    pub qemu: String,
    /// Image name and cache key.
    pub image: String,
    /// Overlay variant.
    pub overlay: String,
    /// The VMs.
    pub vms: Vec<VmReport>,
    /// The cases run.
    pub cases: Vec<CaseReport>,
    /// Every case passed.
    pub passed: bool,
    /// EVPN: seconds from the daemons' start to the first container ping that
    /// got through (absent for other overlays and when it never did).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub convergence_s: Option<f64>,
    /// Wall time of the run in seconds.
    pub wall_s: f64,
}

/// Items joined by `, `, or `none`: for check details.
pub fn list<T: std::fmt::Display>(items: impl IntoIterator<Item = T>) -> String {
    let v: Vec<String> = items.into_iter().map(|x| x.to_string()).collect();
    if v.is_empty() {
        "none".to_string()
    } else {
        v.join(", ")
    }
}

/// `2.81 Gbit/s`-style rendering.
pub fn fmt_bps(bps: f64) -> String {
    match bps {
        b if b >= 1e9 => format!("{:.2} Gbit/s", b / 1e9),
        b if b >= 1e6 => format!("{:.1} Mbit/s", b / 1e6),
        b => format!("{:.0} kbit/s", b / 1e3),
    }
}

impl Report {
    /// The human-readable table printed on stdout.
    pub fn table(&self) -> String {
        let mut s = format!(
            "lab {} ({}), overlay {}, kernel {}, QEMU {}, accel {}\n",
            self.lab, self.lab_file, self.overlay, self.kernel, self.qemu, self.accel
        );
        for vm in &self.vms {
            s.push_str(&format!(
                "  vm {:<8} boot {:>5.1} s{}  {} vCPU  {} MiB  nic {} channels {} vhost {}\n",
                vm.name,
                vm.boot_s,
                if vm.boot_attempts > 1 { format!(" (attempt {})", vm.boot_attempts) } else { String::new() },
                vm.cpus,
                vm.memory_mib,
                vm.nic,
                vm.channels.map_or("?".into(), |c| c.to_string()),
                if vm.vhost { "on" } else { "off" }
            ));
        }
        let width = self.cases.iter().map(|c| c.name.len()).max().unwrap_or(4).max(4);
        s.push_str(&format!(
            "\n{:<width$}  {:>13}  {:>7}  {:>9}  result\n",
            "case", "throughput", "retrans", "cpu c/s %"
        ));
        for c in &self.cases {
            let failed: Vec<&str> = c.checks.iter().filter(|k| !k.passed).map(|k| k.name.as_str()).collect();
            let throughput = match c.vs_baseline {
                Some(r) => format!("{} ({r:.2}x baseline)", fmt_bps(c.throughput_bps)),
                None => fmt_bps(c.throughput_bps),
            };
            s.push_str(&format!(
                "{:<width$}  {:>13}  {:>7}  {:>4.0}/{:<4.0}  {}\n",
                c.name,
                throughput,
                c.retransmits.map_or("-".into(), |r| r.to_string()),
                c.cpu_client_percent,
                c.cpu_server_percent,
                if c.passed { "pass".to_string() } else { format!("FAIL ({})", failed.join(", ")) }
            ));
            for k in c.checks.iter().filter(|k| !k.passed) {
                s.push_str(&format!("    {}: {}\n", k.name, k.detail));
            }
            for i in &c.interfaces {
                let refused = i.refused();
                if !refused.is_empty() {
                    let at = i.container.as_ref().map_or(i.vm.clone(), |c| format!("{}/{c}", i.vm));
                    s.push_str(&format!("    {at} {}: driver kept {}\n", i.dev, refused.join(" ")));
                }
            }
        }
        if let Some(t) = self.convergence_s {
            s.push_str(&format!(
                "\nEVPN converged {t:.1} s after the daemons started (first container ping through)\n"
            ));
        }
        s.push_str(&self.ila_table());
        let passed = self.cases.iter().filter(|c| c.passed).count();
        s.push_str(&format!("\n{} passed, {} failed ({:.1} s)\n", passed, self.cases.len() - passed, self.wall_s));
        s
    }

    /// The ILA verdicts, one line per case, with the documented expectation in
    /// brackets where the case deviates from it (empty for other overlays).
    fn ila_table(&self) -> String {
        let rows: Vec<(&str, &IlaVerdict)> =
            self.cases.iter().filter_map(|c| c.ila.as_ref().map(|v| (c.name.as_str(), v))).collect();
        if rows.is_empty() {
            return String::new();
        }
        let width = rows.iter().map(|(n, _)| n.len()).max().unwrap_or(4).max(4);
        let mut s = format!(
            "\nILA verdicts (documented expectation in [brackets] where it differs)\n{:<width$}  {:<9}  {:<11}  {:<26}  {:<10}  {}\n",
            "case", "delivered", "translation", "wire checksums", "container", "csum errors"
        );
        let yes = |b: bool| if b { "yes" } else { "no" };
        for (name, v) in rows {
            let e = &v.expected;
            let delivered = match v.delivered == e.delivers {
                true => yes(v.delivered).to_string(),
                false => format!("{} [{}]", yes(v.delivered), yes(e.delivers)),
            };
            let expected_wire = crate::lab::variant_name(&e.wire_checksum);
            let wire = match v.wire_checksums.as_str() {
                w if w == expected_wire || w == "offloaded" || w == "unverified" => w.to_string(),
                w => format!("{w} [{expected_wire}]"),
            };
            let wire = if v.wire.reverse_adjusted > 0 { format!("{wire} (reversed)") } else { wire };
            let container = match (v.container.verified(), v.container.invalid) {
                (0, _) if v.container.offloaded > 0 => "offloaded",
                (0, _) => "unverified",
                (_, 0) => "valid",
                _ => "INVALID",
            };
            s.push_str(&format!(
                "{:<width$}  {:<9}  {:<11}  {:<26}  {:<10}  {}\n",
                name,
                delivered,
                if v.translation { "ok" } else { "WRONG" },
                wire,
                container,
                v.csum_errors
            ));
        }
        s
    }
}
