//! Forwarding database entries of a bridge port or VXLAN device, as
//! `bridge -j fdb show` prints them.

use serde::{Deserialize, Serialize};

/// One forwarding entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FdbEntry {
    /// The VM it was read on.
    pub vm: String,
    /// MAC address (`00:00:00:00:00:00` for a flood entry).
    pub mac: String,
    /// Remote VTEP, for entries of a VXLAN device.
    pub dst: Option<String>,
    /// `permanent`, `static`, or empty for a learned entry.
    pub state: String,
    /// `self`, `master`, `extern_learn`, ... as iproute2 prints them.
    pub flags: Vec<String>,
}

#[derive(Deserialize)]
struct Raw {
    mac: String,
    #[serde(default)]
    dst: Option<String>,
    #[serde(default)]
    state: Option<String>,
    #[serde(default)]
    flags: Vec<String>,
    #[serde(default)]
    master: Option<String>,
}

/// The command that prints the entries of `dev`.
pub fn command(dev: &str) -> String {
    format!("bridge -j fdb show dev {dev}")
}

/// Parses `bridge -j fdb show`; entries the bridge holds for the device
/// (`master`) get a `master` flag.
pub fn parse(vm: &str, json: &str) -> Result<Vec<FdbEntry>, serde_json::Error> {
    let raw: Vec<Raw> = serde_json::from_str(json.trim())?;
    Ok(raw
        .into_iter()
        .map(|r| {
            let mut flags = r.flags;
            if r.master.is_some() {
                flags.push("master".into());
            }
            FdbEntry { vm: vm.to_string(), mac: r.mac, dst: r.dst, state: r.state.unwrap_or_default(), flags }
        })
        .collect())
}
