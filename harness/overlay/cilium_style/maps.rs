//! The maps of `bpf/cilium_style.c` as the harness writes and reads them:
//! `bpftool map update` lines with the bytes of each key and value, and
//! `bpftool -j map dump` parsed back (the raw bytes, so that no BTF is
//! needed). Layouts follow the C structs on a little-endian guest.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use super::policy::Entry;
use crate::policy::Direction;

/// Where tc pins the maps of the programs it loads (`LIBBPF_PIN_BY_NAME`).
pub const PIN_DIR: &str = "/sys/fs/bpf/tc/globals";

/// The slots of the metrics map, in the order of the C enum.
pub const METRICS: [&str; 12] = [
    "to_overlay",
    "reply_to_overlay",
    "ct_reply",
    "ct_established",
    "policy_allowed",
    "policy_denied",
    "no_policy",
    "unknown_endpoint",
    "egress_allowed",
    "egress_denied",
    "egress_no_policy",
    "local",
];

/// The enforced map's value bits: the directions an identity has a policy in.
pub const ENFORCE_INGRESS: u32 = 1;
pub const ENFORCE_EGRESS: u32 = 2;

/// A map's pinned path.
pub fn pinned(map: &str) -> String {
    format!("{PIN_DIR}/{map}")
}

/// `bytes` as bpftool's `hex` arguments.
fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(" ")
}

/// A `u32` as the guest stores it.
pub fn le32(v: u32) -> String {
    hex(&v.to_le_bytes())
}

/// An IPv4 address as the programs key it (network order, as in the header).
pub fn ipv4_key(a: Ipv4Addr) -> String {
    hex(&a.octets())
}

/// The key of a policy or denied entry (`struct policy_key`).
pub fn policy_key(e: &Entry) -> String {
    let mut b = Vec::with_capacity(12);
    b.extend(e.endpoint.to_le_bytes());
    b.extend(e.remote.to_le_bytes());
    b.push(e.protocol.number());
    b.push(u8::from(e.direction == Direction::Egress));
    b.extend(e.port.to_le_bytes());
    hex(&b)
}

/// A zeroed `struct counter`.
pub fn zero_counter() -> String {
    hex(&[0; 16])
}

/// `bpftool map update` of `map` (`any`: create or replace).
pub fn update(map: &str, key: &str, value: &str) -> String {
    format!("bpftool {}", batch_update(map, key, value))
}

/// A `bpftool batch` line that updates `map` (`any`: create or replace).
pub fn batch_update(map: &str, key: &str, value: &str) -> String {
    format!("map update pinned {} key hex {key} value hex {value} any", pinned(map))
}

/// Shell that prints a `bpftool batch` delete line for every key of each
/// of `maps` (their dumps' key bytes).
pub fn flush(maps: &[&str]) -> Vec<String> {
    maps.iter()
        .map(|m| {
            format!(
                "bpftool -j map dump pinned {p} | grep -o '\"key\": *\\[[^]]*\\]' | \
                 sed -e 's/\"key\": *\\[//' -e 's/\\]//' -e 's/\"//g' -e 's/0x//g' -e 's/,/ /g' | \
                 while read -r k; do echo \"map delete pinned {p} key hex $k\"; done",
                p = pinned(m)
            )
        })
        .collect()
}

/// One `bpftool batch` run: the lines `printing` prints (shell), then
/// `lines`; nothing runs without a line.
pub fn batch(printing: Vec<String>, lines: Vec<String>) -> String {
    let mut s = vec!["{".to_string()];
    s.extend(printing);
    s.extend(lines.iter().map(|l| format!("echo '{l}'")));
    s.push("} >/run/vlab-bpftool.batch".into());
    s.push("[ ! -s /run/vlab-bpftool.batch ] || bpftool batch file /run/vlab-bpftool.batch".into());
    s.join("\n")
}

/// The dump command of `map`, as evidence.
pub fn dump(map: &str) -> String {
    format!("bpftool -j map dump pinned {}", pinned(map))
}

/// Packets and bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Counter {
    pub packets: u64,
    pub bytes: u64,
}

impl Counter {
    fn from_bytes(b: &[u8]) -> Option<Counter> {
        let u64_at = |i: usize| Some(u64::from_le_bytes(b.get(i..i + 8)?.try_into().ok()?));
        Some(Counter { packets: u64_at(0)?, bytes: u64_at(8)? })
    }

    /// What was counted between `before` and `self`.
    pub fn since(self, before: Counter) -> Counter {
        Counter { packets: self.packets.saturating_sub(before.packets), bytes: self.bytes.saturating_sub(before.bytes) }
    }
}

#[derive(Deserialize)]
struct RawEntry {
    key: Vec<String>,
    value: Vec<String>,
}

/// A dumped entry's key and value bytes.
type RawBytes = (Vec<u8>, Vec<u8>);

fn raw(text: &str) -> Result<Vec<RawBytes>, String> {
    let entries: Vec<RawEntry> = serde_json::from_str(text).map_err(|e| format!("not a bpftool dump: {e}"))?;
    let bytes = |v: &[String]| -> Result<Vec<u8>, String> {
        v.iter()
            .map(|s| u8::from_str_radix(s.trim_start_matches("0x"), 16).map_err(|_| format!("not a byte: {s}")))
            .collect()
    };
    entries.iter().map(|e| Ok((bytes(&e.key)?, bytes(&e.value)?))).collect()
}

/// The metrics map's dump, by slot name.
pub fn parse_metrics(text: &str) -> Result<BTreeMap<&'static str, Counter>, String> {
    let mut out = BTreeMap::new();
    for (k, v) in raw(text)? {
        let slot = u32::from_le_bytes(k.get(..4).and_then(|b| b.try_into().ok()).ok_or("short key")?) as usize;
        let counter = Counter::from_bytes(&v).ok_or("short value")?;
        if let Some(name) = METRICS.get(slot) {
            out.insert(*name, counter);
        }
    }
    Ok(out)
}

/// A policy or denied map's dump: each key with its counter.
pub fn parse_policy(text: &str) -> Result<BTreeMap<Entry, Counter>, String> {
    use super::policy::Protocol;
    let mut out = BTreeMap::new();
    for (k, v) in raw(text)? {
        if k.len() != 12 {
            return Err(format!("a policy key has 12 bytes, not {}", k.len()));
        }
        let u32_at = |i: usize| u32::from_le_bytes(k[i..i + 4].try_into().expect("4 bytes"));
        let protocol = match k[8] {
            0 => Protocol::Any,
            6 => Protocol::Tcp,
            17 => Protocol::Udp,
            p => return Err(format!("protocol {p} in a policy key")),
        };
        let direction = match k[9] {
            0 => Direction::Ingress,
            1 => Direction::Egress,
            d => return Err(format!("direction {d} in a policy key")),
        };
        let port = u16::from_le_bytes([k[10], k[11]]);
        let entry = Entry { endpoint: u32_at(0), remote: u32_at(4), protocol, port, direction };
        out.insert(entry, Counter::from_bytes(&v).ok_or("short value")?);
    }
    Ok(out)
}

/// The enforced map's dump: each identity and its directions
/// ([`ENFORCE_INGRESS`], [`ENFORCE_EGRESS`]).
pub fn parse_enforced_flags(text: &str) -> Result<BTreeMap<u32, u32>, String> {
    let u32_of = |b: &[u8]| b.get(..4).and_then(|b| b.try_into().ok()).map(u32::from_le_bytes);
    raw(text)?
        .into_iter()
        .map(|(k, v)| Ok((u32_of(&k).ok_or("short key")?, u32_of(&v).ok_or("short value")?)))
        .collect()
}

/// The identities in the enforced map's dump.
pub fn parse_enforced(text: &str) -> Result<Vec<u32>, String> {
    let mut out: Vec<u32> = raw(text)?
        .into_iter()
        .filter_map(|(k, _)| k.get(..4).and_then(|b| b.try_into().ok()).map(u32::from_le_bytes))
        .collect();
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::overlay::cilium_style::policy::Protocol;

    /// The metric names follow the C enum, slot by slot.
    #[test]
    fn metrics_follow_the_programs_enum() {
        let source = crate::image::BPF_PROGRAMS.iter().find(|(n, _)| *n == "cilium_style").expect("the program").1;
        let body = source.split("/* The metrics map's slots. */").nth(1).expect("the enum");
        let body = &body[..body.find("M_SLOTS").expect("its end")];
        let slots: Vec<String> = body
            .lines()
            .filter_map(|l| l.trim().strip_prefix("M_"))
            .map(|l| l.split([',', ' ']).next().unwrap().to_lowercase())
            .collect();
        assert_eq!(slots, METRICS);
    }

    #[test]
    fn policy_keys_round_trip() {
        let e =
            Entry { endpoint: 258, remote: 256, protocol: Protocol::Tcp, port: 5201, direction: Direction::Ingress };
        let key = policy_key(&e);
        assert_eq!(key, "02 01 00 00 00 01 00 00 06 00 51 14");
        let out = Entry { direction: Direction::Egress, ..e };
        assert_eq!(policy_key(&out), "02 01 00 00 00 01 00 00 06 01 51 14");
        let bytes: Vec<String> = key.split(' ').map(|b| format!("0x{b}")).collect();
        let dump = serde_json::json!([{ "key": bytes, "value": ["0x03","0","0","0","0","0","0","0","0x40","0","0","0","0","0","0","0"] }]);
        let parsed = parse_policy(&dump.to_string()).unwrap();
        assert_eq!(parsed[&e], Counter { packets: 3, bytes: 64 });
    }
}
#[cfg(test)]
mod flush_tests {
    /// The flush script reads keys out of a dump as bpftool prints it.
    #[test]
    fn flush_prints_a_delete_per_key() {
        let dir = tempfile::tempdir().unwrap();
        let fake = dir.path().join("bpftool");
        let dump = r#"[{"key":["0x02","0x01","0x00","0x00"],"value":["0x01","0x00"]},{"key": ["0x03","0x01","0x00","0x00"],"value":["0x02","0x00"]}]"#;
        std::fs::write(&fake, format!("#!/bin/sh\necho '{dump}'\n")).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
        let script = super::flush(&["vlab_enforced"]).join("\n");
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(&script)
            .env("PATH", format!("{}:/usr/bin:/bin", dir.path().display()))
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "map delete pinned /sys/fs/bpf/tc/globals/vlab_enforced key hex 02 01 00 00\n\
             map delete pinned /sys/fs/bpf/tc/globals/vlab_enforced key hex 03 01 00 00\n"
        );
    }
}
