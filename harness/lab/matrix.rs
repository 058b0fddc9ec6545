//! Expansion of the matrix into cases.

use std::collections::BTreeMap;

use serde::Serialize;

use super::{variant_name, Direction, Family, Lab, Nic, Offloads, Protocol, TrafficPath};

/// The parameters of one case.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CaseParams {
    /// Which addresses carry the traffic.
    pub path: TrafficPath,
    /// Address family.
    pub family: Family,
    /// Parallel streams.
    pub streams: u32,
    /// Transport protocol.
    pub protocol: Protocol,
    /// Who sends.
    pub direction: Direction,
    /// NIC offloads.
    pub offloads: Offloads,
    /// The NIC every VM gets in this case; `None` keeps each VM's own.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nic: Option<Nic>,
    /// The underlay MTU of this case; `None` keeps the lab's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// The overlay of this case; `None` keeps the lab's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub overlay: Option<String>,
    /// The filter of this case; `None` keeps the lab's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub filter: Option<String>,
    /// Values of the axes the case's variants add (`csum-mode` = `no-action`).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub variant: BTreeMap<String, String>,
}

impl CaseParams {
    /// The overlay this case runs.
    pub fn overlay<'a>(&'a self, lab: &'a Lab) -> &'a str {
        self.overlay.as_deref().unwrap_or(&lab.overlay)
    }

    /// The filter this case runs.
    pub fn filter<'a>(&'a self, lab: &'a Lab) -> &'a str {
        self.filter.as_deref().unwrap_or(&lab.filter)
    }
}

/// One combination of the matrix.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Case {
    /// `axis=value` pairs of the matrix axes, joined by `,`; `default` without a matrix.
    pub name: String,
    /// The resolved parameters.
    pub params: CaseParams,
}

/// A case under construction: its name parts (each with the place it takes
/// in the name) and parameters.
type Partial = (Vec<(Place, String)>, CaseParams);

/// Where an axis's `key=value` stands in a case's name: names keep the order
/// in which lab files list the axes, whatever order the cases run in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Place {
    Nic,
    Mtu,
    Overlay,
    Filter,
    Variant,
    Path,
    Family,
    Streams,
    Protocol,
    Direction,
    Offloads,
}

/// Multiplies the cases by one axis: with `values`, each case is repeated once
/// per value (named `key=label`, `set` applies it); without, nothing changes.
fn expand<T>(
    cases: Vec<Partial>,
    (place, key): (Place, &str),
    values: &Option<Vec<T>>,
    label: impl Fn(&T) -> String,
    set: impl Fn(&mut CaseParams, &T),
) -> Vec<Partial> {
    let Some(values) = values else { return cases };
    let mut out = Vec::new();
    for (parts, params) in cases {
        for v in values {
            let mut p = params.clone();
            set(&mut p, v);
            let mut n = parts.clone();
            n.push((place, format!("{key}={}", label(v))));
            out.push((n, p));
        }
    }
    out
}

/// Multiplies the cases by the axes the variants add; an axis applies to the
/// cases that run its owner (as overlay or filter).
fn expand_variant_axes(lab: &Lab, mut cases: Vec<Partial>) -> Vec<Partial> {
    for axis in &lab.variant_axes {
        let mut out = Vec::new();
        for (parts, params) in cases {
            if params.overlay(lab) != axis.owner && params.filter(lab) != axis.owner {
                out.push((parts, params));
                continue;
            }
            for v in &axis.values {
                let mut p = params.clone();
                p.variant.insert(axis.key.clone(), v.clone());
                let mut n = parts.clone();
                n.push((Place::Variant, format!("{}={v}", axis.key)));
                out.push((n, p));
            }
        }
        cases = out;
    }
    cases
}

impl Lab {
    /// Every case of the matrix, in a stable order: the first axes (`nic`,
    /// `mtu`, `overlay`, then `filter`) vary slowest, so cases that share a booted
    /// VM pair are consecutive; `offloads` comes next (toggling offloads can
    /// reset a NIC, as igb does, and a case whose offloads are the previous
    /// case's only reads them back), then the variants' own axes and the
    /// workload's. Names list the axes in the order lab files do, offloads
    /// last.
    pub fn cases(&self) -> Vec<Case> {
        let mut cases = self.all_combinations();
        cases.retain(|c| self.matrix.exclude.iter().all(|entry| !excludes(entry, &c.name)));
        cases
    }

    /// Every combination of the matrix's axes, `exclude` not applied.
    pub(crate) fn all_combinations(&self) -> Vec<Case> {
        let w = &self.workload;
        let m = &self.matrix;
        let base = CaseParams {
            path: w.path,
            family: w.family,
            streams: w.streams,
            protocol: w.protocol,
            direction: w.direction,
            offloads: w.offloads.clone(),
            nic: None,
            mtu: None,
            overlay: None,
            filter: None,
            variant: BTreeMap::new(),
        };
        let mut cases = vec![(Vec::new(), base)];
        cases = expand(cases, (Place::Nic, "nic"), &m.nic, Nic::label, |p, v| p.nic = Some(v.clone()));
        cases = expand(cases, (Place::Mtu, "mtu"), &m.mtu, u32::to_string, |p, v| p.mtu = Some(*v));
        cases =
            expand(cases, (Place::Overlay, "overlay"), &m.overlay, String::clone, |p, v| p.overlay = Some(v.clone()));
        cases = expand(cases, (Place::Filter, "filter"), &m.filter, String::clone, |p, v| p.filter = Some(v.clone()));
        cases =
            expand(cases, (Place::Offloads, "offloads"), &m.offloads, Offloads::label, |p, v| p.offloads = v.clone());
        cases = expand_variant_axes(self, cases);
        cases = expand(cases, (Place::Path, "path"), &m.path, variant_name, |p, v| p.path = *v);
        cases = expand(cases, (Place::Family, "family"), &m.family, variant_name, |p, v| p.family = *v);
        cases = expand(cases, (Place::Streams, "streams"), &m.streams, u32::to_string, |p, v| p.streams = *v);
        cases = expand(cases, (Place::Protocol, "protocol"), &m.protocol, variant_name, |p, v| p.protocol = *v);
        cases = expand(cases, (Place::Direction, "direction"), &m.direction, variant_name, |p, v| p.direction = *v);
        cases
            .into_iter()
            .map(|(mut parts, params)| {
                // Stable: the variants' axes keep their order among themselves.
                parts.sort_by_key(|(place, _)| *place);
                let parts: Vec<String> = parts.into_iter().map(|(_, part)| part).collect();
                Case { name: if parts.is_empty() { "default".to_string() } else { parts.join(",") }, params }
            })
            .collect()
    }
}

/// Whether a case named `name` has every `axis=value` of `entry`.
pub(crate) fn excludes(entry: &BTreeMap<String, super::AxisValue>, name: &str) -> bool {
    let parts: Vec<&str> = name.split(',').collect();
    entry.iter().all(|(axis, value)| parts.contains(&format!("{axis}={value}").as_str()))
}
