//! Expansion of the matrix into cases.

use serde::Serialize;

use super::{variant_name, CsumMode, Direction, Family, IlaHook, Lab, Nic, Offloads, Overlay, Protocol, TrafficPath};

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
    /// The overlay of this case; `None` keeps the lab's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub overlay: Option<Overlay>,
    /// The `ila` overlay's translation settings; `None` for other overlays.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ila: Option<IlaCase>,
}

/// What an `ila` case translates with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct IlaCase {
    /// Checksum mode.
    pub csum_mode: CsumMode,
    /// Where the translations hook in.
    pub hook: IlaHook,
}

/// One combination of the matrix.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Case {
    /// `axis=value` pairs of the matrix axes, joined by `,`; `default` without a matrix.
    pub name: String,
    /// The resolved parameters.
    pub params: CaseParams,
}

/// A case under construction: its name parts and parameters.
type Partial = (Vec<String>, CaseParams);

/// Multiplies the cases by one axis: with `values`, each case is repeated once
/// per value (named `key=label`, `set` applies it); without, nothing changes.
fn expand<T>(
    cases: Vec<Partial>,
    key: &str,
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
            n.push(format!("{key}={}", label(v)));
            out.push((n, p));
        }
    }
    out
}

impl Lab {
    /// Every case of the matrix, in a stable order: the first axes (`nic`,
    /// then `overlay`) vary slowest, so cases that share a booted VM pair are
    /// consecutive.
    pub fn cases(&self) -> Vec<Case> {
        let w = &self.workload;
        let m = &self.matrix;
        let ila = (self.overlay == Overlay::Ila).then(|| {
            let s = self.ila.clone().unwrap_or_default();
            IlaCase { csum_mode: s.csum_mode, hook: s.hook }
        });
        let base = CaseParams {
            path: w.path,
            family: w.family,
            streams: w.streams,
            protocol: w.protocol,
            direction: w.direction,
            offloads: w.offloads.clone(),
            nic: None,
            overlay: None,
            ila,
        };
        let mut cases = vec![(Vec::new(), base)];
        cases = expand(cases, "nic", &m.nic, Nic::label, |p, v| p.nic = Some(v.clone()));
        cases = expand(cases, "overlay", &m.overlay, variant_name, |p, v| p.overlay = Some(*v));
        cases = expand(cases, "csum-mode", &m.csum_mode, variant_name, |p, v| {
            if let Some(i) = &mut p.ila {
                i.csum_mode = *v;
            }
        });
        cases = expand(cases, "hook", &m.hook, variant_name, |p, v| {
            if let Some(i) = &mut p.ila {
                i.hook = *v;
            }
        });
        cases = expand(cases, "path", &m.path, variant_name, |p, v| p.path = *v);
        cases = expand(cases, "family", &m.family, variant_name, |p, v| p.family = *v);
        cases = expand(cases, "streams", &m.streams, u32::to_string, |p, v| p.streams = *v);
        cases = expand(cases, "protocol", &m.protocol, variant_name, |p, v| p.protocol = *v);
        cases = expand(cases, "direction", &m.direction, variant_name, |p, v| p.direction = *v);
        cases = expand(cases, "offloads", &m.offloads, Offloads::label, |p, v| p.offloads = v.clone());
        cases
            .into_iter()
            .map(|(parts, params)| Case {
                name: if parts.is_empty() { "default".to_string() } else { parts.join(",") },
                params,
            })
            .collect()
    }
}
