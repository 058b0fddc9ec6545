//! Interface counters read from a guest's sysfs.

use serde::{Deserialize, Serialize};

use crate::guest::Netns;

/// Byte, packet, drop and error counters of one interface.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    /// Received bytes.
    pub rx_bytes: u64,
    /// Transmitted bytes.
    pub tx_bytes: u64,
    /// Received packets.
    pub rx_packets: u64,
    /// Transmitted packets.
    pub tx_packets: u64,
    /// Received packets dropped.
    pub rx_dropped: u64,
    /// Transmitted packets dropped.
    pub tx_dropped: u64,
    /// Receive errors.
    pub rx_errors: u64,
    /// Transmit errors.
    pub tx_errors: u64,
}

const FIELDS: &str = "rx_bytes tx_bytes rx_packets tx_packets rx_dropped tx_dropped rx_errors tx_errors";

impl Counters {
    /// The shell command printing what [`Counters::parse`] reads, for `dev`
    /// under `sys` (a namespace's /sys, see [`crate::guest::Netns::paths`]).
    /// Shell builtins only: no process to start under TCG.
    pub fn command(sys: &str, dev: &str) -> String {
        format!(
            "cd {sys}/class/net/{dev}/statistics && for f in {FIELDS}; do read -r v <$f; printf '%s ' \"$v\"; done; echo"
        )
    }

    /// Parses the numbers printed by [`Counters::command`].
    pub fn parse(text: &str) -> Option<Counters> {
        let v: Vec<u64> = text.split_whitespace().map(|s| s.parse().ok()).collect::<Option<_>>()?;
        match v[..] {
            [rx_bytes, tx_bytes, rx_packets, tx_packets, rx_dropped, tx_dropped, rx_errors, tx_errors] => {
                Some(Counters {
                    rx_bytes,
                    tx_bytes,
                    rx_packets,
                    tx_packets,
                    rx_dropped,
                    tx_dropped,
                    rx_errors,
                    tx_errors,
                })
            }
            _ => None,
        }
    }

    /// What changed from `before` to `self`.
    pub fn since(&self, before: &Counters) -> Counters {
        Counters {
            rx_bytes: self.rx_bytes.saturating_sub(before.rx_bytes),
            tx_bytes: self.tx_bytes.saturating_sub(before.tx_bytes),
            rx_packets: self.rx_packets.saturating_sub(before.rx_packets),
            tx_packets: self.tx_packets.saturating_sub(before.tx_packets),
            rx_dropped: self.rx_dropped.saturating_sub(before.rx_dropped),
            tx_dropped: self.tx_dropped.saturating_sub(before.tx_dropped),
            rx_errors: self.rx_errors.saturating_sub(before.rx_errors),
            tx_errors: self.tx_errors.saturating_sub(before.tx_errors),
        }
    }
}

/// The shell command printing a receiver's checksum error counters as
/// `NAME VALUE` lines: the TCP stack's `InCsumErrors` (from `/proc/net/snmp`
/// of `netns`, where the workload's TCP ends) and the checksum statistics the
/// NIC driver of `dev` reports (`ethtool -S`; names vary by driver). Both are
/// read with shell builtins, the namespace's without entering it.
pub fn csum_errors_command(netns: Option<&Netns>, dev: &str) -> String {
    let at = Netns::paths(netns);
    let snmp = tcp_snmp_script(&format!("{}/snmp", at.proc_net), "InCsumErrors");
    let nic = format!(
        "ethtool -S {dev} 2>/dev/null | while IFS=': ' read -r k v; do case $k in \
         *[Cc][Ss][Uu][Mm]*|*[Cc][Hh][Ee][Cc][Kk][Ss][Uu][Mm]*) echo \"{dev}.$k $v\";; esac; done"
    );
    format!("{}{snmp}; {nic}", at.prelude)
}

/// Prints `Tcp<FIELD> VALUE` from a `/proc/net/snmp`-style `file` (a `Tcp:`
/// line of names, then one of values), with shell builtins only.
pub fn tcp_snmp_script(file: &str, field: &str) -> String {
    format!(
        "h=; while read -r k rest; do [ \"$k\" = Tcp: ] || continue; \
         if [ -z \"$h\" ]; then h=$rest; else set -- $rest; \
         for n in $h; do [ \"$n\" = {field} ] && echo \"Tcp{field} $1\"; shift; done; fi; done <{file}"
    )
}

/// Parses `NAME VALUE` lines; lines that do not fit are skipped.
pub fn parse_named(text: &str) -> std::collections::BTreeMap<String, u64> {
    text.lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            Some((it.next()?.to_string(), it.next()?.parse().ok()?))
        })
        .collect()
}
