//! The probe matrix of a policy filter, judged against the policy
//! evaluator: what to probe (`[probes]`, and the ports the policy names),
//! the check that compares every measured cell with the evaluator's
//! decision, and the matrices as a table, in the manner of Cyclonus.
//!
//! ```toml
//! [probes]
//! matrix = "auto"          # "auto" (default): every port the policy names, and one it does not;
//!                          # "off": no matrix
//! ports = [8080]           # ports to add, with every protocol probed
//! protocols = ["udp"]      # protocols to add ("tcp" is always probed)
//! ```

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::lab::{Lab, LabError};
use crate::overlay::{ProbeCell, ProbeMatrix, ProbeOutcome};
use crate::policy::{Connection, Endpoint, Policy, Protocol, ProtocolMatch};
use crate::report::Check;

/// The `[probes]` table.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    #[serde(default)]
    pub matrix: MatrixMode,
    #[serde(default)]
    pub ports: Vec<u16>,
    #[serde(default)]
    pub protocols: Vec<Protocol>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MatrixMode {
    #[default]
    Auto,
    Off,
}

#[derive(Debug, Default, Deserialize)]
struct Section {
    #[serde(default)]
    probes: Option<Settings>,
}

/// The lab's `[probes]` table (defaults without one).
pub fn settings(lab: &Lab) -> Result<Settings, LabError> {
    Ok(lab.section::<Section>()?.probes.unwrap_or_default())
}

/// The first port from which the "port no rule names" is sought.
const UNNAMED_FROM: u16 = 10000;

/// What the matrix probes for `policy`: TCP, and UDP when a rule names it
/// (or ANY), or `[probes]` adds it; on each, every port a rule names (a
/// range's first and last), the ports `[probes]` adds, and the first port
/// from 10000 that no rule names.
pub fn targets(policy: &Policy, s: &Settings) -> Vec<(Protocol, u16)> {
    if s.matrix == MatrixMode::Off {
        return Vec::new();
    }
    let ranges: Vec<_> = port_ranges(policy).collect();
    let mut protocols = BTreeSet::from([Protocol::Tcp]);
    protocols.extend(s.protocols.iter().copied());
    for r in &ranges {
        match r.protocol {
            ProtocolMatch::Udp | ProtocolMatch::Any => {
                protocols.insert(Protocol::Udp);
            }
            ProtocolMatch::Tcp | ProtocolMatch::Sctp => {}
        }
    }
    let covers = |p: Protocol, port: u16| {
        ranges.iter().any(|r| {
            let proto = match r.protocol {
                ProtocolMatch::Tcp => p == Protocol::Tcp,
                ProtocolMatch::Udp => p == Protocol::Udp,
                ProtocolMatch::Any => true,
                ProtocolMatch::Sctp => false,
            };
            proto && (r.first..=r.last).contains(&port)
        })
    };
    let unnamed = (UNNAMED_FROM..=u16::MAX).find(|&port| protocols.iter().all(|&p| !covers(p, port)));
    let mut out = BTreeSet::new();
    for &p in &protocols {
        for r in &ranges {
            if covers(p, r.first) {
                out.insert((p, r.first));
                out.insert((p, r.last));
            }
        }
        out.extend(s.ports.iter().map(|&port| (p, port)));
        out.extend(unnamed.map(|port| (p, port)));
    }
    out.into_iter().collect()
}

/// Every port range a rule of `policy` names.
fn port_ranges(policy: &Policy) -> impl Iterator<Item = &crate::policy::PortRange> {
    policy.rules.iter().flat_map(|r| r.allow.iter().chain(&r.deny).flatten()).filter_map(|e| e.ports.as_ref()).flatten()
}

/// Every port a rule of `policy` names, whatever its protocol.
pub fn named_ports(policy: &Policy) -> impl Iterator<Item = u16> + '_ {
    port_ranges(policy).flat_map(|r| r.first..=r.last)
}

/// One cell as judged: what the evaluator decided and why, what was
/// measured, and the drops the datapath counted for it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JudgedCell {
    pub from: String,
    pub to: String,
    pub protocol: Protocol,
    pub port: u16,
    pub expected: Verdict,
    /// The deciding rule or default, as the evaluator says it.
    pub reason: String,
    pub measured: ProbeOutcome,
    pub drops: u64,
    pub agrees: bool,
}

/// A cell's verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Allowed,
    Dropped,
}

/// The matrix in a filter's report section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MatrixSection {
    /// The containers, in row and column order.
    pub members: Vec<String>,
    /// The probed protocols and ports, in mark order.
    pub targets: Vec<(Protocol, u16)>,
    pub cells: Vec<JudgedCell>,
}

/// The matrix check: every cell as the evaluator decides it, on both pieces
/// of evidence. An allowed cell reached its endpoint (connected, or refused
/// by it) and the datapath counted no drop for it; a dropped one timed out
/// and the datapath counted a drop (`drops(cell)`: the filter's counters
/// for that source, destination, protocol and port).
pub fn judge(
    policy: &Policy,
    endpoints: &[Endpoint],
    m: &ProbeMatrix,
    drops: impl Fn(&ProbeCell) -> u64,
    name: &str,
) -> (Check, MatrixSection) {
    let find = |n: &str| endpoints.iter().find(|e| e.name == n);
    let mut cells = Vec::new();
    for c in &m.cells {
        let decision = match (find(&c.from), find(&c.to)) {
            (Some(from), Some(to)) => Some(policy.decide(Connection { from, to, protocol: c.protocol, port: c.port })),
            _ => None,
        };
        let expected = match decision.as_ref().map(|d| d.allowed()) {
            Some(true) => Verdict::Allowed,
            _ => Verdict::Dropped,
        };
        let reason = decision.map_or("no such endpoint".to_string(), |d| d.to_string());
        let n = drops(c);
        let reached = c.outcome != ProbeOutcome::TimedOut;
        let agrees = match expected {
            Verdict::Allowed => reached && n == 0,
            Verdict::Dropped => !reached && n > 0,
        };
        let (from, to, protocol, port) = (c.from.clone(), c.to.clone(), c.protocol, c.port);
        cells.push(JudgedCell { from, to, protocol, port, expected, reason, measured: c.outcome, drops: n, agrees });
    }
    let members: Vec<String> =
        cells.iter().flat_map(|c| [c.from.clone(), c.to.clone()]).collect::<BTreeSet<_>>().into_iter().collect();
    let targets: Vec<(Protocol, u16)> =
        cells.iter().map(|c| (c.protocol, c.port)).collect::<BTreeSet<_>>().into_iter().collect();
    let differing: Vec<String> = cells
        .iter()
        .filter(|c| !c.agrees)
        .map(|c| {
            format!(
                "{} -> {} {} {}: expected {} ({}), measured {}, {} drops counted",
                c.from,
                c.to,
                c.protocol,
                c.port,
                verdict_word(c.expected),
                c.reason,
                c.measured.word(),
                c.drops
            )
        })
        .collect();
    let allowed = cells.iter().filter(|c| c.expected == Verdict::Allowed).count();
    let check = Check::new(
        &format!("{name}: the probe matrix agrees with the policy"),
        !cells.is_empty() && differing.is_empty(),
        if cells.is_empty() {
            "no probe was answered".to_string()
        } else if differing.is_empty() {
            format!(
                "{} cells ({} containers, {} targets): {allowed} allowed, {} dropped, each as the policy decides",
                cells.len(),
                members.len(),
                targets.len(),
                cells.len() - allowed
            )
        } else {
            format!("{} of {} cells differ: {}", differing.len(), cells.len(), differing.join("; "))
        },
    );
    (check, MatrixSection { members, targets, cells })
}

fn verdict_word(v: Verdict) -> &'static str {
    match v {
        Verdict::Allowed => "allowed",
        Verdict::Dropped => "dropped",
    }
}

/// The matrices of a case as text: rows are sources, columns destinations,
/// one mark per target (`.` allowed, `x` dropped), the evaluator's matrix,
/// the measured one, and the cells that differ.
pub fn table(case: &str, m: &MatrixSection) -> String {
    let marks = |pick: &dyn Fn(&JudgedCell) -> bool, from: &str, to: &str| -> String {
        if from == to {
            return "-".to_string();
        }
        m.targets
            .iter()
            .map(|(p, port)| {
                match m.cells.iter().find(|c| c.from == from && c.to == to && c.protocol == *p && c.port == *port) {
                    Some(c) if pick(c) => '.',
                    Some(_) => 'x',
                    None => '?',
                }
            })
            .collect()
    };
    let width = m.members.iter().map(String::len).max().unwrap_or(1).max(m.targets.len()).max(8) + 2;
    let targets: Vec<String> = m.targets.iter().map(|(p, port)| format!("{p} {port}")).collect();
    let mut out = format!(
        "\nprobe matrix, case {case}: rows from, columns to; one mark per target ({}); . allowed, x dropped\n",
        targets.join(", ")
    );
    let expected = |c: &JudgedCell| c.expected == Verdict::Allowed;
    let measured = |c: &JudgedCell| c.measured != ProbeOutcome::TimedOut;
    for (title, pick) in [("expected", &expected as &dyn Fn(&JudgedCell) -> bool), ("measured", &measured)] {
        let mut line = format!("{title:<width$}");
        for to in &m.members {
            line.push_str(&format!("{to:<width$}"));
        }
        out.push_str(&format!("{}\n", line.trim_end()));
        for from in &m.members {
            let mut line = format!("  {from:<w$}", w = width - 2);
            for to in &m.members {
                line.push_str(&format!("{:<width$}", marks(pick, from, to)));
            }
            out.push_str(&format!("{}\n", line.trim_end()));
        }
    }
    let differing: Vec<String> = m
        .cells
        .iter()
        .filter(|c| !c.agrees)
        .map(|c| {
            format!(
                "  {} -> {} {} {}: expected {}, {}",
                c.from,
                c.to,
                c.protocol,
                c.port,
                verdict_word(c.expected),
                c.reason
            )
        })
        .collect();
    if differing.is_empty() {
        out.push_str("every cell agrees with the policy\n");
    } else {
        out.push_str(&format!("{} cells differ:\n{}\n", differing.len(), differing.join("\n")));
    }
    out
}

/// The matrices of a run's cases as tables, one per case that has one
/// (`sections`: each case's filter section, by case name).
pub fn summary(sections: &[(&str, &serde_json::Value)]) -> Option<String> {
    let tables: Vec<String> = sections
        .iter()
        .filter_map(|(case, s)| {
            let m: MatrixSection = serde_json::from_value(s.get("matrix")?.clone()).ok()?;
            Some(table(case, &m))
        })
        .collect();
    (!tables.is_empty()).then(|| tables.concat())
}
