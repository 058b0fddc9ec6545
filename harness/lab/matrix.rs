//! Expansion of the matrix into cases.

use serde::Serialize;

use super::{variant_name, Direction, Family, Lab, Protocol, TrafficPath};

/// The workload parameters of one case.
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
}

/// One combination of the matrix.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Case {
    /// `axis=value` pairs of the matrix axes, joined by `,`; `default` without a matrix.
    pub name: String,
    /// The resolved parameters.
    pub params: CaseParams,
}

fn axis<T: Clone>(values: &Option<Vec<T>>, default: T) -> (bool, Vec<T>) {
    match values {
        Some(v) => (true, v.clone()),
        None => (false, vec![default]),
    }
}

impl Lab {
    /// Every case of the matrix, in a stable order (the first axis varies slowest).
    pub fn cases(&self) -> Vec<Case> {
        let w = &self.workload;
        let m = &self.matrix;
        let (p_on, paths) = axis(&m.path, w.path);
        let (f_on, families) = axis(&m.family, w.family);
        let (s_on, streams) = axis(&m.streams, w.streams);
        let (pr_on, protocols) = axis(&m.protocol, w.protocol);
        let (d_on, directions) = axis(&m.direction, w.direction);
        let mut cases = Vec::new();
        for &path in &paths {
            for &family in &families {
                for &stream_count in &streams {
                    for &protocol in &protocols {
                        for &direction in &directions {
                            let mut parts = Vec::new();
                            if p_on {
                                parts.push(format!("path={}", variant_name(&path)));
                            }
                            if f_on {
                                parts.push(format!("family={}", variant_name(&family)));
                            }
                            if s_on {
                                parts.push(format!("streams={stream_count}"));
                            }
                            if pr_on {
                                parts.push(format!("protocol={}", variant_name(&protocol)));
                            }
                            if d_on {
                                parts.push(format!("direction={}", variant_name(&direction)));
                            }
                            let name = if parts.is_empty() { "default".to_string() } else { parts.join(",") };
                            let params = CaseParams { path, family, streams: stream_count, protocol, direction };
                            cases.push(Case { name, params });
                        }
                    }
                }
            }
        }
        cases
    }
}
