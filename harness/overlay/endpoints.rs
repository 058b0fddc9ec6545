//! The lab's containers as a policy sees them: their labels and their
//! namespaces' labels, from `[endpoints]` (any overlay) or, for the
//! `cilium-style` overlay, from `[cilium_style]` as well.
//!
//! ```toml
//! [endpoints.labels]
//! c1 = { app = "web" }                       # a container not listed: container=NAME
//! c3 = { app = "db", "io.kubernetes.pod.namespace" = "prod" }
//!
//! [endpoints.namespaces]
//! prod = { team = "db" }                     # besides kubernetes.io/metadata.name
//! ```

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::lab::{Issue, Lab, LabError, Seg};
use crate::policy::{Endpoint, Labels};

/// The `[endpoints]` table (and the same keys of `[cilium_style]`).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Settings {
    /// Labels of containers, by container name.
    #[serde(default)]
    pub labels: BTreeMap<String, Labels>,
    /// Labels of namespaces, by namespace name.
    #[serde(default)]
    pub namespaces: BTreeMap<String, Labels>,
}

#[derive(Debug, Default, Deserialize)]
struct Section {
    #[serde(default)]
    endpoints: Option<Strict>,
}

/// `[endpoints]` itself takes no other key.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Strict {
    #[serde(default)]
    labels: BTreeMap<String, Labels>,
    #[serde(default)]
    namespaces: BTreeMap<String, Labels>,
}

/// The lab's `[endpoints]` table.
fn own(lab: &Lab) -> Result<Settings, LabError> {
    let s = lab.section::<Section>()?.endpoints.unwrap_or_default();
    Ok(Settings { labels: s.labels, namespaces: s.namespaces })
}

/// Every label the lab gives: `[endpoints]`, then what `[cilium_style]`
/// adds for containers and namespaces `[endpoints]` does not name.
pub fn settings(lab: &Lab) -> Settings {
    let mut s = own(lab).unwrap_or_default();
    let cilium = crate::overlay::cilium_style::settings(lab);
    for (name, labels) in cilium.labels {
        s.labels.entry(name).or_insert(labels);
    }
    for (name, labels) in cilium.namespaces {
        s.namespaces.entry(name).or_insert(labels);
    }
    s
}

/// Every container of the lab with its labels (`container=NAME` for one
/// with none).
pub fn containers(lab: &Lab) -> Vec<(String, Labels)> {
    let s = settings(lab);
    let all = lab.vms.iter().flat_map(|vm| vm.containers.iter());
    all.map(|c| {
        let labels =
            s.labels.get(&c.name).cloned().unwrap_or_else(|| Labels::from([("container".into(), c.name.clone())]));
        (c.name.clone(), labels)
    })
    .collect()
}

/// The containers as the policy model sees them.
pub fn of(lab: &Lab) -> Vec<Endpoint> {
    let namespaces = settings(lab).namespaces;
    containers(lab).iter().map(|(name, labels)| Endpoint::new(name, labels).in_namespaces(&namespaces)).collect()
}

/// Checks the `[endpoints]` table.
pub fn validate(lab: &Lab) -> Result<(), LabError> {
    check(lab, "endpoints", &own(lab)?)
}

/// Checks labels given under `table`: every container named is the lab's,
/// every label has a valid key and a value, every namespace given labels is
/// some container's.
pub fn check(lab: &Lab, table: &'static str, s: &Settings) -> Result<(), LabError> {
    use Seg::{Key, Name};
    let names: Vec<&str> = lab.vms.iter().flat_map(|v| v.containers.iter().map(|c| c.name.as_str())).collect();
    for (name, labels) in &s.labels {
        let at = |rest: Vec<Seg>| [vec![Key(table), Key("labels"), Name(name.clone())], rest].concat();
        if !names.contains(&name.as_str()) {
            let message = format!("no container `{name}` in this lab (containers: {})", names.join(", "));
            return Err(lab.invalid(Issue::new(at(vec![]), message)));
        }
        if labels.is_empty() {
            return Err(lab.invalid(Issue::new(at(vec![]), "give the container at least one label")));
        }
        for (k, v) in labels {
            if let Err(m) = crate::policy::parse::label_key(k) {
                return Err(lab.invalid(Issue::new(at(vec![Name(k.clone())]), m)));
            }
            if v.is_empty() || k.is_empty() {
                return Err(lab.invalid(Issue::new(at(vec![Name(k.clone())]), "labels need a key and a value")));
            }
        }
    }
    let in_use: Vec<String> = containers(lab).iter().map(|(n, l)| Endpoint::new(n, l).namespace).collect();
    for (ns, labels) in &s.namespaces {
        let at = vec![Key(table), Key("namespaces"), Name(ns.clone())];
        if !in_use.contains(ns) {
            let message = format!(
                "no container is in namespace `{ns}` (a container's label `{}` names it)",
                crate::policy::NAMESPACE_LABEL
            );
            return Err(lab.invalid(Issue::new(at, message)));
        }
        if labels.iter().any(|(k, v)| k.is_empty() || v.is_empty()) {
            return Err(lab.invalid(Issue::new(at, "labels need a key and a value")));
        }
    }
    Ok(())
}
