//! New-connection latency: after the flow, the client opens `connects` TCP
//! connections to the server's workload port, one after the other, and
//! times each from `connect()` to the server's answer (a SYN-ACK while the
//! iperf3 server still listens, a RST once it has gone: either is the
//! round trip of a connection's first packet, which a filter judges in
//! full, while the established flow's packets pass by connection
//! tracking). The loop runs in one bash process (`/dev/tcp`, times from
//! `$EPOCHREALTIME` in microseconds), so no process start sits in the
//! measurement. The median is what a report shows: a shared machine's
//! outliers stay out of it.

use serde::{Deserialize, Serialize};

/// How long the whole loop may take, in seconds: a connection whose first
/// packet is dropped waits for retransmissions, and the rest are lost.
pub const LIMIT_S: u64 = 60;

/// The loop, for bash: one line per connection, `c MICROSECONDS` (it
/// connected) or `r MICROSECONDS` (refused), then `done`.
pub fn script(addr: &str, port: u16, n: u32) -> String {
    format!(
        "for ((i = 0; i < {n}; i++)); do t0=${{EPOCHREALTIME/[.,]/}}; \
         if {{ : <>/dev/tcp/{addr}/{port}; }} 2>/dev/null; then o=c; else o=r; fi; \
         t1=${{EPOCHREALTIME/[.,]/}}; echo \"$o $((t1 - t0))\"; done; echo done"
    )
}

/// What the loop measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Latency {
    /// Connections asked for.
    pub attempts: u32,
    /// Connections answered by a SYN-ACK, and by a RST.
    pub connected: u32,
    pub refused: u32,
    /// Whether the loop ran to its end.
    pub finished: bool,
    /// Over the answered connections, microseconds.
    pub median_us: f64,
    pub min_us: f64,
    pub max_us: f64,
}

/// The loop's output read (`None` when it timed nothing).
pub fn parse(text: &str, attempts: u32) -> Option<Latency> {
    let (mut connected, mut refused, mut finished) = (0, 0, false);
    let mut times = Vec::new();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        match (words.next(), words.next().and_then(|t| t.parse::<f64>().ok())) {
            (Some("c"), Some(us)) => {
                connected += 1;
                times.push(us);
            }
            (Some("r"), Some(us)) => {
                refused += 1;
                times.push(us);
            }
            (Some("done"), None) => finished = true,
            _ => {}
        }
    }
    if times.is_empty() {
        return None;
    }
    let (min_us, max_us) = times.iter().fold((f64::MAX, f64::MIN), |(a, b), &t| (a.min(t), b.max(t)));
    Some(Latency { attempts, connected, refused, finished, median_us: crate::stats::median(&times), min_us, max_us })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_loop_is_read_and_its_median_taken() {
        let l = parse("c 300\nr 100\nr 200\ndone\n", 3).unwrap();
        assert_eq!((l.connected, l.refused, l.finished), (1, 2, true));
        assert_eq!((l.median_us, l.min_us, l.max_us), (200.0, 100.0, 300.0));
    }

    #[test]
    fn the_script_times_each_connection_in_one_shell() {
        let s = script("10.1.1.2", 80, 5);
        assert!(s.contains("i < 5") && s.contains("/dev/tcp/10.1.1.2/80"), "{s}");
        assert!(s.contains("EPOCHREALTIME") && s.ends_with("echo done"), "{s}");
    }
}
