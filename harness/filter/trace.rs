//! Which rule took each probe of the matrix, for the `iptables` and
//! `nftables` filters given a policy: netfilter's rule tracing is turned on
//! for new connections while the matrix runs (`meta nftrace set 1`, in a
//! table of its own), a monitor in each enforcement namespace writes every
//! traced packet with the rules it met (`nft monitor trace`; for iptables
//! `xtables-monitor --trace`, which prints a rule as `iptables -S` lists it),
//! and the trace is read back after the matrix. A probe's cell is told by
//! its addresses, protocol and port. The rules that met traced packets must
//! be exactly what the rules' own counters took over the matrix: a rule
//! that only new connections reach counts traced packets and nothing else.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::guest::{self, Netns};
use crate::overlay::{ProbeCell, ProbeOutcome};

/// The table that marks packets for tracing.
pub const TABLE: &str = "inet vlab_trace";

/// The script that turns tracing on for every new connection (replacing an
/// older table), and lists the table as the kernel holds it.
pub fn on() -> String {
    format!(
        "nft -f - <<'VLAB_EOF'\nadd table {TABLE}\ndelete table {TABLE}\ntable {TABLE} {{\n\tchain pre {{\n\t\t\
         type filter hook prerouting priority mangle; policy accept;\n\t\tct state new meta nftrace set 1\n\t}}\n}}\n\
         VLAB_EOF\nnft list table {TABLE}"
    )
}

/// The script that turns tracing off (nothing when it is off).
pub fn off() -> String {
    format!("nft delete table {TABLE} 2>/dev/null || true")
}

/// Where the monitor at `place` writes.
pub fn file(place: &str) -> String {
    format!("/run/vlab/trace-{}.txt", place.replace('/', "-"))
}

/// The monitor's command line in `netns` (its own namespace: `None`),
/// writing to [`file`]; `xtables` for iptables' rules.
pub fn monitor(xtables: bool, netns: Option<&Netns>, place: &str) -> String {
    let argv: Vec<String> = if xtables {
        vec!["xtables-monitor".into(), "--trace".into()]
    } else {
        vec!["nft".into(), "monitor".into(), "trace".into()]
    };
    format!("{} >{} 2>&1", guest::shell_line(&Netns::wrap(netns, argv)), file(place))
}

/// The script that turns tracing off and prints what the monitor wrote.
pub fn read(place: &str) -> String {
    format!("{}\ncat {} 2>/dev/null || true", off(), file(place))
}

/// One traced packet: addresses, protocol, destination port, and the rules
/// it met in order, each as the method's listing names it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Traced {
    pub src: String,
    pub dst: String,
    pub protocol: String,
    pub port: Option<u16>,
    pub rules: Vec<String>,
}

impl Traced {
    fn of_cell(&self, cell: &ProbeCell, src: &str, dst: &str) -> bool {
        self.src == src && self.dst == dst && self.protocol == cell.protocol.name() && self.port == Some(cell.port)
    }
}

/// The packets of a trace, in the order they were first seen, whatever the
/// monitor (its format is told by its lines).
pub fn parse(text: &str) -> Vec<Traced> {
    if text.lines().any(|l| l.starts_with("PACKET: ")) {
        parse_xtables(text)
    } else {
        parse_nft(text)
    }
}

/// Packets by trace id, in the order of their first line.
fn by_id(packets: &mut Vec<(String, Traced)>, id: &str) -> usize {
    if let Some(i) = packets.iter().position(|(x, _)| x == id) {
        return i;
    }
    packets.push((id.to_string(), Traced::default()));
    packets.len() - 1
}

/// `nft monitor trace`: `trace id ID FAMILY TABLE CHAIN packet: FIELDS` and
/// `trace id ID FAMILY TABLE CHAIN rule RULE (verdict ...)`; the policy
/// table's rules, which all have a comment, as `CHAIN: COMMENT`.
fn parse_nft(text: &str) -> Vec<Traced> {
    let (family, table) = super::policy_rules::TABLE.split_once(' ').expect("family and name");
    let mut packets = Vec::new();
    for line in text.lines() {
        let w: Vec<&str> = line.split_whitespace().collect();
        let ["trace", "id", id, fam, tab, chain, kind, rest @ ..] = w.as_slice() else { continue };
        let i = by_id(&mut packets, id);
        let t = &mut packets[i].1;
        match *kind {
            "packet:" if t.src.is_empty() => {
                let after = |k: &[&str]| rest.windows(k.len() + 1).find(|x| x[..k.len()] == *k).map(|x| x[k.len()]);
                t.src = after(&["ip", "saddr"]).or(after(&["ip6", "saddr"])).unwrap_or_default().to_string();
                t.dst = after(&["ip", "daddr"]).or(after(&["ip6", "daddr"])).unwrap_or_default().to_string();
                for p in ["tcp", "udp"] {
                    if let Some(port) = after(&[p, "dport"]) {
                        t.protocol = p.to_string();
                        t.port = port.parse().ok();
                    }
                }
                if t.protocol.is_empty() {
                    let l4 = after(&["ip", "protocol"]).or(after(&["meta", "l4proto"])).unwrap_or_default();
                    t.protocol = l4.to_string();
                }
            }
            "rule" if (*fam, *tab) == (family, table) => {
                if let Some((_, c)) = line.rsplit_once(" comment \"") {
                    let comment = c.split('"').next().unwrap_or_default();
                    t.rules.push(format!("{chain}: {comment}"));
                }
            }
            _ => {}
        }
    }
    packets.into_iter().map(|(_, t)| t).filter(|t| !t.src.is_empty()).collect()
}

/// `xtables-monitor --trace`: `PACKET: NFPROTO ID ... SRC= DST= ... DPORT=`
/// and ` TRACE: NFPROTO ID TABLE:CHAIN:rule:HANDLE:VERDICT  TOOL -t TABLE -A
/// ...` (TOOL `iptables`, `ip6tables`; `-4`, `-6` in older versions); a
/// rule as `iptables -A ...` (or `ip6tables`). The packet line names no
/// protocol: a TCP packet's flags follow its ports (`SYN`), a UDP packet
/// has none.
fn parse_xtables(text: &str) -> Vec<Traced> {
    let mut packets = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if let Some(rest) = line.strip_prefix("PACKET: ") {
            let w: Vec<&str> = rest.split_whitespace().collect();
            let Some(id) = w.get(1) else { continue };
            let i = by_id(&mut packets, id);
            let t = &mut packets[i].1;
            if !t.src.is_empty() {
                continue;
            }
            let field = |k: &str| w.iter().find_map(|x| x.strip_prefix(k));
            t.src = field("SRC=").unwrap_or_default().to_string();
            t.dst = field("DST=").unwrap_or_default().to_string();
            t.port = field("DPORT=").and_then(|p| p.parse().ok());
            let flags = ["SYN", "ACK", "FIN", "RST", "PSH", "URG"];
            t.protocol = match (t.port, w.iter().any(|x| flags.contains(x))) {
                (Some(_), true) => "tcp",
                (Some(_), false) => "udp",
                (None, _) => "",
            }
            .to_string();
        } else if line.starts_with("TRACE: ") {
            // A trace line without a rule may run on into the next.
            for rest in line.split("TRACE: ").map(str::trim).filter(|r| !r.is_empty()) {
                let mut w = rest.splitn(3, ' ');
                let (Some(_), Some(id), Some(rule)) = (w.next(), w.next(), w.next()) else { continue };
                let Some((_, spec)) = rule.split_once("  ") else { continue };
                let spec = spec.trim();
                let tool =
                    if spec.starts_with("-6 ") || spec.starts_with("ip6tables ") { "ip6tables" } else { "iptables" };
                let Some(pos) = spec.find("-A ") else { continue };
                let i = by_id(&mut packets, id);
                packets[i].1.rules.push(format!("{tool} {}", &spec[pos..]));
            }
        }
    }
    packets.into_iter().map(|(_, t)| t).filter(|t| !t.src.is_empty()).collect()
}

/// The rules that took one probe at one place.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Taken {
    pub at: String,
    pub rules: Vec<String>,
}

/// A probe of the matrix and the policy's rules its first packet met, at
/// each place where it met any (none: no policy rule selected it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TracedProbe {
    pub from: String,
    pub to: String,
    pub protocol: crate::policy::Protocol,
    pub port: u16,
    pub outcome: ProbeOutcome,
    pub taken: Vec<Taken>,
}

/// What one place's trace and counters say.
pub struct Place {
    pub at: String,
    pub traced: Vec<Traced>,
    /// Each rule's packets over the matrix, from its counters (rules that
    /// took none may be left out).
    pub counted: Vec<(String, u64)>,
}

/// The trace judged against the matrix: every probe traced at some place;
/// at every place each policy rule (`policy_rule`: one that packets of
/// established connections never reach) met as many traced packets as its
/// counter took; and a probe met a dropping rule (`drops`) exactly when it
/// timed out. Returns what failed, and each probe's rules.
pub fn judge(
    cells: &[ProbeCell],
    places: &[Place],
    addr: impl Fn(&str) -> Option<String>,
    policy_rule: impl Fn(&str) -> bool,
    drops: impl Fn(&str) -> bool,
) -> (Vec<String>, Vec<TracedProbe>) {
    let mut wrong = Vec::new();
    for p in places {
        let mut traced: BTreeMap<&str, u64> = BTreeMap::new();
        for t in &p.traced {
            for r in t.rules.iter().filter(|r| policy_rule(r)) {
                *traced.entry(r).or_default() += 1;
            }
        }
        // A rule counted 0 compares as one not counted: both are 0.
        let counted: BTreeMap<&str, u64> =
            p.counted.iter().filter(|(r, _)| policy_rule(r)).map(|(r, n)| (r.as_str(), *n)).collect();
        let mut rules: Vec<&str> = traced.keys().chain(counted.keys()).copied().collect();
        rules.sort();
        rules.dedup();
        for r in rules {
            let (t, c) = (traced.get(r).copied().unwrap_or(0), counted.get(r).copied().unwrap_or(0));
            if t != c {
                wrong.push(format!("{}: `{r}` counted {c} packets, traced {t}", p.at));
            }
        }
    }
    let mut probes = Vec::new();
    for cell in cells {
        let name = format!("{} -> {} {}/{}", cell.from, cell.to, cell.protocol.name(), cell.port);
        let (Some(src), Some(dst)) = (addr(&cell.from), addr(&cell.to)) else {
            wrong.push(format!("{name}: no address"));
            continue;
        };
        let mut taken = Vec::new();
        let (mut seen, mut dropped) = (false, false);
        for p in places {
            let mine: Vec<&Traced> = p.traced.iter().filter(|t| t.of_cell(cell, &src, &dst)).collect();
            seen |= !mine.is_empty();
            dropped |= mine.iter().any(|t| t.rules.iter().any(|r| drops(r)));
            let rules: Vec<String> =
                mine.first().into_iter().flat_map(|t| &t.rules).filter(|r| policy_rule(r)).cloned().collect();
            if !rules.is_empty() {
                taken.push(Taken { at: p.at.clone(), rules });
            }
        }
        if !seen {
            wrong.push(format!("{name}: not traced"));
        } else if dropped != (cell.outcome == ProbeOutcome::TimedOut) {
            let met = if dropped { "met a dropping rule" } else { "met no dropping rule" };
            wrong.push(format!("{name}: {met}, and {}", cell.outcome.word()));
        }
        probes.push(TracedProbe {
            from: cell.from.clone(),
            to: cell.to.clone(),
            protocol: cell.protocol,
            port: cell.port,
            outcome: cell.outcome,
            taken,
        });
    }
    (wrong, probes)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `xtables-monitor --trace` of iptables 1.8.11 (Debian trixie), as a
    /// guest wrote it: its complaint about the `inet` table, and a trace line
    /// without a rule running on into the next.
    const XTABLES: &str = "libxtables: unhandled NFPROTO in xtables_set_nfproto
PACKET: 1 2df3d072 IN=underlay NFPROTO=2 MACSRC=52:54:0:4c:2:1 MACDST=52:54:0:4c:1:1 MACPROTO=0800 SRC=10.1.3.2 DST=10.1.1.2 LEN=60 TOS=0x0 TTL=63 ID=63012 DF SPORT=47394 DPORT=5432 SYN 
 TRACE: 1 2df3d072 vlab_trace:pre:rule:0x2:CONTINUE   TRACE: 1 2df3d072 vlab_trace:pre:policy:ACCEPT 
PACKET: 2 2df3d072 IN=underlay OUT=vc-c1 MACSRC=52:54:0:4c:2:1 MACDST=52:54:0:4c:1:1 MACPROTO=0800 SRC=10.1.3.2 DST=10.1.1.2 LEN=60 TOS=0x0 TTL=62 ID=63012 DF SPORT=47394 DPORT=5432 SYN 
 TRACE: 2 2df3d072 filter:FORWARD:rule:0x19:JUMP:VLAB-POLICY  iptables -t filter -A FORWARD -j VLAB-POLICY
 TRACE: 2 2df3d072 filter:VLAB-POLICY:rule:0x13:JUMP:VLAB-IN-258  iptables -t filter -A VLAB-POLICY -d 10.1.1.2/32 -j VLAB-IN-258
 TRACE: 2 2df3d072 filter:VLAB-IN-258:rule:0x15:JUMP:VLAB-DROP  iptables -t filter -A VLAB-IN-258 -s 10.1.3.2/32 -j VLAB-DROP
 TRACE: 2 2df3d072 filter:VLAB-DROP:rule:0x16:CONTINUE  iptables -t filter -A VLAB-DROP -j LOG --log-prefix \"vlab-drop \" --log-level 7
 TRACE: 2 2df3d072 filter:VLAB-DROP:rule:0x17:DROP  iptables -t filter -A VLAB-DROP -j DROP
PACKET: 2 5c1e0a11 IN=vc-c2 OUT=underlay MACSRC=52:54:0:4c:2:1 MACDST=52:54:0:4c:1:1 MACPROTO=0800 SRC=10.1.2.2 DST=10.1.1.2 LEN=39 TOS=0x0 TTL=63 ID=4 DF SPORT=40466 DPORT=53 
 TRACE: 2 5c1e0a11 filter:FORWARD:rule:0x6:JUMP:VLAB-POLICY  -6 -t filter -A FORWARD -j VLAB-POLICY
";

    #[test]
    fn an_xtables_trace_reads_as_packets_and_the_rules_they_met() {
        let t = parse(XTABLES);
        assert_eq!(t.len(), 2, "{t:?}");
        assert_eq!((t[0].src.as_str(), t[0].dst.as_str(), t[0].protocol.as_str()), ("10.1.3.2", "10.1.1.2", "tcp"));
        assert_eq!(t[0].port, Some(5432));
        assert_eq!(
            t[0].rules,
            [
                "iptables -A FORWARD -j VLAB-POLICY",
                "iptables -A VLAB-POLICY -d 10.1.1.2/32 -j VLAB-IN-258",
                "iptables -A VLAB-IN-258 -s 10.1.3.2/32 -j VLAB-DROP",
                "iptables -A VLAB-DROP -j LOG --log-prefix \"vlab-drop \" --log-level 7",
                "iptables -A VLAB-DROP -j DROP",
            ]
        );
        // No flags after the ports: UDP; an IPv6 rule is ip6tables'.
        assert_eq!((t[1].protocol.as_str(), t[1].port), ("udp", Some(53)));
        assert_eq!(t[1].rules, ["ip6tables -A FORWARD -j VLAB-POLICY"]);
    }

    /// `nft monitor trace` of nftables 1.1.3: the tracing table's own rule is
    /// one it did not know when it started; rules of other tables (the
    /// iptables-nft one) are not the policy's.
    const NFT: &str = r#"trace id e5201cb7 inet vlab_trace pre packet: iif "underlay" ether saddr 52:54:00:4c:01:01 ether daddr 52:54:00:4c:02:01 ip saddr 10.1.2.2 ip daddr 10.1.3.2 ip dscp cs0 ip ecn not-ect ip ttl 63 ip id 18630 ip protocol udp ip length 39 udp sport 54138 udp dport 5432 udp length 19
trace id e5201cb7 inet vlab_trace pre unknown rule handle 2 (verdict continue)
trace id e5201cb7 inet vlab_trace pre policy accept
trace id e5201cb7 inet vlab_policy forward packet: iif "underlay" oif "vc-c3" ip saddr 10.1.2.2 ip daddr 10.1.3.2 ip protocol udp udp sport 54138 udp dport 5432
trace id e5201cb7 inet vlab_policy forward rule ip daddr vmap @ingress_v4 comment "ingress v4" (verdict jump in_257)
trace id e5201cb7 inet vlab_policy in_257 rule ip saddr @id_256_v4 udp dport 5432 counter packets 0 bytes 0 goto log_drop comment "deny 0 v4" (verdict goto log_drop)
trace id e5201cb7 inet vlab_policy log_drop rule counter packets 0 bytes 0 log prefix "vlab-drop " level debug drop comment "drop" (verdict drop)
trace id 1e4821ad inet vlab_trace pre packet: iif "vc-c3" ip saddr 10.1.3.2 ip daddr 10.1.2.2 ip protocol tcp tcp sport 57584 tcp dport 10000 tcp flags == syn
trace id 1e4821ad ip filter FORWARD rule counter packets 0 bytes 0 accept comment "other" (verdict accept)
"#;

    #[test]
    fn an_nft_trace_reads_as_packets_and_the_policy_rules_they_met() {
        let t = parse(NFT);
        assert_eq!(t.len(), 2, "{t:?}");
        assert_eq!((t[0].src.as_str(), t[0].dst.as_str(), t[0].protocol.as_str()), ("10.1.2.2", "10.1.3.2", "udp"));
        assert_eq!(t[0].port, Some(5432));
        assert_eq!(t[0].rules, ["forward: ingress v4", "in_257: deny 0 v4", "log_drop: drop"]);
        assert_eq!((t[1].protocol.as_str(), t[1].port), ("tcp", Some(10000)));
        assert!(t[1].rules.is_empty(), "{:?}", t[1].rules);
        assert!(parse("").is_empty());
    }

    /// A packet is what its first line shows: a later hook's line (here
    /// after a destination NAT, without `ip protocol`, as the iptables-nft
    /// table's lines come) does not rewrite it.
    #[test]
    fn an_nft_packet_is_read_from_its_first_line() {
        let nat = r#"trace id 5b229ded inet vlab_trace pre packet: iif "vc-c3" ip saddr 10.1.3.2 ip daddr 10.1.2.2 ip protocol tcp tcp sport 57724 tcp dport 10000 tcp flags == syn
trace id 5b229ded inet vlab_policy forward packet: iif "vc-c3" oif "vc-c2" ip saddr 10.1.3.2 ip daddr 10.1.2.9 ip protocol udp udp sport 57724 udp dport 53
trace id 5b229ded ip filter FORWARD packet: iif "vc-c3" oif "vc-c2" ip saddr 10.1.3.2 ip daddr 10.1.2.9 tcp sport 57724 tcp dport 8080
"#;
        let t = parse(nat);
        assert_eq!(t.len(), 1, "{t:?}");
        assert_eq!((t[0].dst.as_str(), t[0].protocol.as_str(), t[0].port), ("10.1.2.2", "tcp", Some(10000)));
    }

    fn cell(from: &str, to: &str, outcome: ProbeOutcome) -> ProbeCell {
        ProbeCell { from: from.into(), to: to.into(), protocol: crate::policy::Protocol::Udp, port: 5432, outcome }
    }

    fn judged(cells: &[ProbeCell], counted: Vec<(String, u64)>) -> (Vec<String>, Vec<TracedProbe>) {
        let places = [Place { at: "host2".into(), traced: parse(NFT), counted }];
        let addr = |c: &str| Some(format!("10.1.{}.2", &c[1..]));
        judge(cells, &places, addr, |r| !r.starts_with("forward:"), |r| r == "log_drop: drop")
    }

    #[test]
    fn a_trace_agrees_with_counters_that_took_its_packets() {
        let counted = vec![("in_257: deny 0 v4".to_string(), 1), ("log_drop: drop".to_string(), 1)];
        let (wrong, probes) = judged(&[cell("c2", "c3", ProbeOutcome::TimedOut)], counted.clone());
        assert!(wrong.is_empty(), "{wrong:?}");
        assert_eq!(
            probes[0].taken,
            [Taken { at: "host2".into(), rules: vec![counted[0].0.clone(), counted[1].0.clone()] }]
        );
        // The established packets' rule is not compared; a policy rule that
        // took a packet more is.
        let more = vec![("in_257: deny 0 v4".to_string(), 2), ("log_drop: drop".to_string(), 1)];
        let (wrong, _) = judged(&[cell("c2", "c3", ProbeOutcome::TimedOut)], more);
        assert_eq!(wrong, ["host2: `in_257: deny 0 v4` counted 2 packets, traced 1"]);
    }

    #[test]
    fn a_probe_is_judged_by_its_own_traced_packets() {
        let counted = vec![("in_257: deny 0 v4".to_string(), 1), ("log_drop: drop".to_string(), 1)];
        let (wrong, _) = judged(&[cell("c2", "c3", ProbeOutcome::Connected)], counted.clone());
        assert_eq!(wrong, ["c2 -> c3 udp/5432: met a dropping rule, and connected"]);
        let (wrong, _) = judged(&[cell("c3", "c2", ProbeOutcome::TimedOut)], counted.clone());
        assert_eq!(wrong, ["c3 -> c2 udp/5432: not traced"]);
        let tcp = ProbeCell {
            protocol: crate::policy::Protocol::Tcp,
            port: 10000,
            ..cell("c3", "c2", ProbeOutcome::TimedOut)
        };
        let (wrong, probes) = judged(&[tcp], counted);
        assert_eq!(wrong, ["c3 -> c2 tcp/10000: met no dropping rule, and timed out"]);
        assert!(probes[0].taken.is_empty());
    }
}
