//! Expansion of the matrix into cases.

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
}

/// One combination of the matrix.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Case {
    /// `axis=value` pairs of the matrix axes, joined by `,`; `default` without a matrix.
    pub name: String,
    /// The resolved parameters.
    pub params: CaseParams,
}

/// Values of one axis: the matrix's, or the workload's single value.
fn axis<T: Clone>(values: &Option<Vec<T>>, default: T) -> Vec<(Option<T>, T)> {
    match values {
        Some(v) => v.iter().map(|x| (Some(x.clone()), x.clone())).collect(),
        None => vec![(None, default)],
    }
}

impl Lab {
    /// Every case of the matrix, in a stable order: the first axis (`nic`) varies
    /// slowest, so cases that share a booted VM pair are consecutive.
    pub fn cases(&self) -> Vec<Case> {
        let w = &self.workload;
        let m = &self.matrix;
        let nics: Vec<Option<Nic>> = match &m.nic {
            Some(v) => v.iter().cloned().map(Some).collect(),
            None => vec![None],
        };
        let mut cases = Vec::new();
        for nic in &nics {
            for (p_axis, path) in axis(&m.path, w.path) {
                for (f_axis, family) in axis(&m.family, w.family) {
                    for (s_axis, streams) in axis(&m.streams, w.streams) {
                        for (pr_axis, protocol) in axis(&m.protocol, w.protocol) {
                            for (d_axis, direction) in axis(&m.direction, w.direction) {
                                for (o_axis, offloads) in axis(&m.offloads, w.offloads.clone()) {
                                    let parts: Vec<String> = [
                                        nic.as_ref().map(|n| format!("nic={}", n.label())),
                                        p_axis.map(|v| format!("path={}", variant_name(&v))),
                                        f_axis.map(|v| format!("family={}", variant_name(&v))),
                                        s_axis.map(|v| format!("streams={v}")),
                                        pr_axis.map(|v| format!("protocol={}", variant_name(&v))),
                                        d_axis.map(|v| format!("direction={}", variant_name(&v))),
                                        o_axis.map(|v| format!("offloads={}", v.label())),
                                    ]
                                    .into_iter()
                                    .flatten()
                                    .collect();
                                    let name = if parts.is_empty() { "default".to_string() } else { parts.join(",") };
                                    let params = CaseParams {
                                        path,
                                        family,
                                        streams,
                                        protocol,
                                        direction,
                                        offloads: offloads.clone(),
                                        nic: nic.clone(),
                                    };
                                    cases.push(Case { name, params });
                                }
                            }
                        }
                    }
                }
            }
        }
        cases
    }
}
