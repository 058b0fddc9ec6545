//! Interface counters read from a guest's sysfs.

use serde::Serialize;

/// Byte and packet counters of one interface.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Counters {
    /// Received bytes.
    pub rx_bytes: u64,
    /// Transmitted bytes.
    pub tx_bytes: u64,
    /// Received packets.
    pub rx_packets: u64,
    /// Transmitted packets.
    pub tx_packets: u64,
}

impl Counters {
    /// The shell command printing what [`Counters::parse`] reads, for `dev`
    /// (run in a container's namespace when `netns` is given).
    pub fn command(dev: &str, netns: Option<&str>) -> String {
        let cat = format!("cd /sys/class/net/{dev}/statistics && cat rx_bytes tx_bytes rx_packets tx_packets");
        match netns {
            // sysfs shows the namespace of the process that mounted it: remount inside.
            Some(ns) => format!("ip netns exec {ns} sh -c '{cat}'"),
            None => cat,
        }
    }

    /// Parses the four numbers printed by [`Counters::command`].
    pub fn parse(text: &str) -> Option<Counters> {
        let v: Vec<u64> = text.split_whitespace().map(|s| s.parse().ok()).collect::<Option<_>>()?;
        match v[..] {
            [rx_bytes, tx_bytes, rx_packets, tx_packets] => {
                Some(Counters { rx_bytes, tx_bytes, rx_packets, tx_packets })
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
        }
    }
}
