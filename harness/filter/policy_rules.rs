//! A compiled policy rendered as netfilter rules: per-endpoint chains of
//! `iptables` (address matches, as Calico and kube-router lay them out) and
//! one `inet` table of `nftables` (address sets per identity, verdict maps
//! from a local endpoint's address to its chain, one rule per remote,
//! protocol and verdict with its ports in a set), for the containers of one
//! VM. Both are placed on the forwarding hook of the overlay's enforcement
//! points and share one layout:
//!
//! ```text
//! forward:   established, related                  -> accept
//!            source is a local endpoint with egress rules      -> its egress chain
//!            destination is a local endpoint with ingress rules -> its ingress chain
//!            (anything else: on, as without the policy)
//! egress:    deny entries   -> drop (logged "vlab-drop ")
//!            allow entries  -> return (on to the receiver's ingress)
//!            enforced       -> drop (logged)
//! ingress:   deny entries   -> drop (logged)
//!            allow entries  -> accept
//!            enforced       -> drop (logged)
//! ```
//!
//! A connection between two VMs meets the sender's egress on its VM and the
//! receiver's ingress on the other; on one VM, both. Replies pass by
//! connection tracking. Every drop is logged with the packet's addresses
//! and ports (`LOG` / `log`, kernel log level debug, so not on the console),
//! so that each dropped probe of the matrix is attributed to its cell.
//! Entries come from the same compiled policy as the `l4-policy` filter's
//! maps (identities, selectors resolved, ports expanded: here consecutive
//! ports merge into ranges again).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use crate::lab::{Family, Lab, Vm};
use crate::overlay::cilium_style::policy::{Compiled, Entry, Protocol, ANY_IDENTITY};
use crate::overlay::ProbeCell;
use crate::policy::Direction;

/// The prefix of every logged drop.
pub const LOG_PREFIX: &str = "vlab-drop ";

/// One rule: entries of one endpoint, remote, protocol and direction over a
/// range of ports (`None`: every port of every protocol).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Rule {
    pub direction: Direction,
    pub endpoint: u32,
    pub deny: bool,
    pub remote: u32,
    pub protocol: Protocol,
    pub ports: Option<(u16, u16)>,
}

impl Rule {
    /// The protocol's name and the port range it matches (`None`: every
    /// packet, whatever its protocol).
    fn l4(&self) -> Option<(&'static str, u16, u16)> {
        let name = match self.protocol {
            Protocol::Any => return None,
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        };
        self.ports.map(|(a, b)| (name, a, b))
    }
}

/// The rules of a compiled policy: deny before allow within an endpoint's
/// direction, consecutive ports merged.
pub fn rules(c: &Compiled) -> Vec<Rule> {
    let mut groups: BTreeMap<(Direction, u32, bool, u32, Protocol), BTreeSet<u16>> = BTreeMap::new();
    for (entries, deny) in [(&c.deny, true), (&c.entries, false)] {
        for e in entries {
            let Entry { endpoint, remote, protocol, port, direction } = *e;
            // The deny flag sorts `true` last: invert so that deny comes first.
            groups.entry((direction, endpoint, !deny, remote, protocol)).or_default().insert(port);
        }
    }
    let mut out = Vec::new();
    for ((direction, endpoint, allow, remote, protocol), ports) in groups {
        let rule = |ports| Rule { direction, endpoint, deny: !allow, remote, protocol, ports };
        // An L3-only entry (any protocol) carries port 0: every port.
        if protocol == Protocol::Any {
            out.push(rule(None));
            continue;
        }
        let mut run: Option<(u16, u16)> = None;
        for p in ports {
            run = match run {
                Some((a, b)) if b.checked_add(1) == Some(p) => Some((a, p)),
                Some(r) => {
                    out.push(rule(Some(r)));
                    Some((p, p))
                }
                None => Some((p, p)),
            };
        }
        out.extend(run.map(|r| rule(Some(r))));
    }
    out
}

/// What one VM enforces: its local endpoints' chains, and every identity's
/// addresses of one family.
pub struct Local {
    /// Local containers: (address, identity), by family.
    pub members: Vec<(IpAddr, u32)>,
    /// The addresses of each identity in the lab, by family.
    pub addresses: BTreeMap<u32, Vec<IpAddr>>,
    /// Identities with rules for (direction) on this VM.
    pub chains: BTreeSet<(Direction, u32)>,
    pub rules: Vec<Rule>,
}

impl Local {
    /// `vm`'s share of `c` in `family`.
    pub fn new(lab: &Lab, vm: &Vm, c: &Compiled, family: Family) -> Local {
        let mut addresses: BTreeMap<u32, Vec<IpAddr>> = BTreeMap::new();
        for v in &lab.vms {
            for ct in &v.containers {
                if let (Some(id), Some(a)) = (c.identities.get(&ct.name), ct.address(family)) {
                    addresses.entry(*id).or_default().push(a);
                }
            }
        }
        let members: Vec<(IpAddr, u32)> =
            vm.containers.iter().filter_map(|ct| Some((ct.address(family)?, *c.identities.get(&ct.name)?))).collect();
        let ids: BTreeSet<u32> = members.iter().map(|(_, id)| *id).collect();
        let rules: Vec<Rule> = rules(c).into_iter().filter(|r| ids.contains(&r.endpoint)).collect();
        let mut chains: BTreeSet<(Direction, u32)> = rules.iter().map(|r| (r.direction, r.endpoint)).collect();
        chains.extend(c.enforced.iter().filter(|id| ids.contains(id)).map(|id| (Direction::Ingress, *id)));
        chains.extend(c.enforced_egress.iter().filter(|id| ids.contains(id)).map(|id| (Direction::Egress, *id)));
        Local { members, addresses, chains, rules }
    }

    /// Whether `(direction, id)` drops what no entry allows.
    fn enforced(c: &Compiled, direction: Direction, id: u32) -> bool {
        match direction {
            Direction::Ingress => c.enforced.contains(&id),
            Direction::Egress => c.enforced_egress.contains(&id),
        }
    }
}

/// An iptables chain's name for an endpoint's direction.
pub fn chain(direction: Direction, id: u32) -> String {
    match direction {
        Direction::Ingress => format!("VLAB-IN-{id}"),
        Direction::Egress => format!("VLAB-EG-{id}"),
    }
}

/// The main chain, jumped to from FORWARD.
pub const MAIN: &str = "VLAB-POLICY";

/// The chain that logs and drops.
pub const DROP: &str = "VLAB-DROP";

fn host(a: IpAddr) -> String {
    match a {
        IpAddr::V4(a) => format!("{a}/32"),
        IpAddr::V6(a) => format!("{a}/128"),
    }
}

/// The iptables rules of `vm` in `family`, as `iptables -S` prints them
/// back: `-N CHAIN` lines, then `-A` lines, chain by chain.
pub fn iptables(lab: &Lab, vm: &Vm, c: &Compiled, family: Family) -> Vec<String> {
    let l = Local::new(lab, vm, c, family);
    let mut chains = vec![MAIN.to_string(), DROP.to_string()];
    chains.extend(l.chains.iter().map(|(d, id)| chain(*d, *id)));
    let mut out: Vec<String> = chains.iter().map(|c| format!("-N {c}")).collect();
    out.push(format!("-A {MAIN} -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT"));
    for direction in [Direction::Egress, Direction::Ingress] {
        let flag = if direction == Direction::Egress { "-s" } else { "-d" };
        for (a, id) in &l.members {
            if l.chains.contains(&(direction, *id)) {
                out.push(format!("-A {MAIN} {flag} {} -j {}", host(*a), chain(direction, *id)));
            }
        }
    }
    out.push(format!("-A {DROP} -j LOG --log-prefix \"{LOG_PREFIX}\" --log-level 7"));
    out.push(format!("-A {DROP} -j DROP"));
    for (direction, id) in &l.chains {
        let name = chain(*direction, *id);
        let peer = if *direction == Direction::Egress { "-d" } else { "-s" };
        for r in l.rules.iter().filter(|r| r.direction == *direction && r.endpoint == *id) {
            let target = match (r.deny, direction) {
                (true, _) => DROP,
                (false, Direction::Egress) => "RETURN",
                (false, Direction::Ingress) => "ACCEPT",
            };
            let l4 = r.l4().map_or(String::new(), |(name, a, b)| {
                let ports = if a == b { a.to_string() } else { format!("{a}:{b}") };
                format!(" -p {name} -m {name} --dport {ports}")
            });
            if r.remote == ANY_IDENTITY {
                out.push(format!("-A {name}{l4} -j {target}"));
            } else {
                for a in l.addresses.get(&r.remote).into_iter().flatten() {
                    out.push(format!("-A {name} {peer} {}{l4} -j {target}", host(*a)));
                }
            }
        }
        if Local::enforced(c, *direction, *id) {
            out.push(format!("-A {name} -j {DROP}"));
        }
    }
    out
}

/// The input of `iptables-restore --noflush` for `rules` (from
/// [`iptables`]): the chains declared (so emptied), then filled.
pub fn restore(rules: &[String]) -> String {
    let mut s = vec!["*filter".to_string()];
    s.extend(rules.iter().filter_map(|r| r.strip_prefix("-N ")).map(|c| format!(":{c} - [0:0]")));
    s.extend(rules.iter().filter(|r| r.starts_with("-A ")).cloned());
    s.push("COMMIT".into());
    s.join("\n") + "\n"
}

/// The nftables table of policy mode.
pub const TABLE: &str = "inet vlab_policy";

/// An nftables chain's name for an endpoint's direction.
fn nft_chain(direction: Direction, id: u32) -> String {
    match direction {
        Direction::Ingress => format!("in_{id}"),
        Direction::Egress => format!("eg_{id}"),
    }
}

/// The nftables table of `vm`, as `nft -f` reads it (replacing an older
/// one in the same transaction). Every rule has a counter and a comment
/// that names it; see [`nft_rules`].
pub fn nftables(lab: &Lab, vm: &Vm, c: &Compiled) -> String {
    let fams = [(Family::Ipv4, "ip", "ipv4_addr", "v4"), (Family::Ipv6, "ip6", "ipv6_addr", "v6")];
    let locals: Vec<Local> = fams.iter().map(|(f, ..)| Local::new(lab, vm, c, *f)).collect();
    let mut s = format!("add table {TABLE}\ndelete table {TABLE}\ntable {TABLE} {{\n");
    let mut sets = BTreeSet::new();
    for ((_, _, ty, suffix), l) in fams.iter().zip(&locals) {
        for r in &l.rules {
            if r.remote != ANY_IDENTITY && l.addresses.contains_key(&r.remote) && sets.insert((r.remote, *suffix)) {
                let elements: Vec<String> = l.addresses[&r.remote].iter().map(ToString::to_string).collect();
                s.push_str(&format!(
                    "\tset id_{}_{suffix} {{\n\t\ttype {ty}\n\t\telements = {{ {} }}\n\t}}\n",
                    r.remote,
                    elements.join(", ")
                ));
            }
        }
        for direction in [Direction::Egress, Direction::Ingress] {
            let members: Vec<String> = l
                .members
                .iter()
                .filter(|(_, id)| l.chains.contains(&(direction, *id)))
                .map(|(a, id)| format!("{a} : jump {}", nft_chain(direction, *id)))
                .collect();
            if !members.is_empty() {
                s.push_str(&format!(
                    "\tmap {direction}_{suffix} {{\n\t\ttype {ty} : verdict\n\t\telements = {{ {} }}\n\t}}\n",
                    members.join(", ")
                ));
            }
        }
    }
    s.push_str(&format!(
        "\tchain log_drop {{\n\t\tcounter log prefix \"{LOG_PREFIX}\" level debug drop comment \"drop\"\n\t}}\n"
    ));
    let chains: BTreeSet<(Direction, u32)> = locals.iter().flat_map(|l| l.chains.iter().copied()).collect();
    for (direction, id) in &chains {
        s.push_str(&format!("\tchain {} {{\n", nft_chain(*direction, *id)));
        for (line, comment) in chain_rules(c, &fams, &locals, *direction, *id) {
            s.push_str(&format!("\t\t{line} comment \"{comment}\"\n"));
        }
        s.push_str("\t}\n");
    }
    s.push_str("\tchain forward {\n\t\ttype filter hook forward priority filter; policy accept;\n");
    s.push_str("\t\tct state established,related counter accept comment \"established\"\n");
    for ((_, ip, _, suffix), l) in fams.iter().zip(&locals) {
        for (direction, field) in [(Direction::Egress, "saddr"), (Direction::Ingress, "daddr")] {
            if l.members.iter().any(|(_, id)| l.chains.contains(&(direction, *id))) {
                s.push_str(&format!("\t\t{ip} {field} vmap @{direction}_{suffix} comment \"{direction} {suffix}\"\n"));
            }
        }
    }
    s.push_str("\t}\n}\n");
    s
}

/// The rules of one endpoint chain: (rule, comment).
fn chain_rules(
    c: &Compiled,
    fams: &[(Family, &str, &str, &str)],
    locals: &[Local],
    direction: Direction,
    id: u32,
) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let peer = if direction == Direction::Egress { "daddr" } else { "saddr" };
    // In the order of [`rules`] (deny first), each once whatever family has
    // it; the port ranges of one remote, protocol and verdict in one set.
    let all_rules: Vec<Rule> = rules(c).into_iter().filter(|r| locals.iter().any(|l| l.rules.contains(r))).collect();
    let mut groups: Vec<(&Rule, Vec<(u16, u16)>)> = Vec::new();
    for r in all_rules.iter().filter(|r| r.direction == direction && r.endpoint == id) {
        match (groups.last_mut(), r.ports) {
            (Some((g, ports)), Some(p))
                if g.ports.is_some() && (g.deny, g.remote, g.protocol) == (r.deny, r.remote, r.protocol) =>
            {
                ports.push(p)
            }
            _ => groups.push((r, r.ports.into_iter().collect())),
        }
    }
    for (n, (r, ports)) in groups.iter().enumerate() {
        let verdict = match (r.deny, direction) {
            (true, _) => "goto log_drop",
            (false, Direction::Egress) => "return",
            (false, Direction::Ingress) => "accept",
        };
        let range = |&(a, b): &(u16, u16)| if a == b { a.to_string() } else { format!("{a}-{b}") };
        let l4 = r.l4().map_or(String::new(), |(name, ..)| match ports.as_slice() {
            [one] => format!("{name} dport {} ", range(one)),
            many => format!("{name} dport {{ {} }} ", many.iter().map(range).collect::<Vec<_>>().join(", ")),
        });
        let what = if r.deny { "deny" } else { "allow" };
        if r.remote == ANY_IDENTITY {
            out.push((format!("{l4}counter {verdict}"), format!("{what} {n}")));
            continue;
        }
        for ((_, ip, _, suffix), l) in fams.iter().zip(locals) {
            if l.addresses.contains_key(&r.remote) {
                let set = format!("@id_{}_{suffix}", r.remote);
                out.push((format!("{ip} {peer} {set} {l4}counter {verdict}"), format!("{what} {n} {suffix}")));
            }
        }
    }
    if Local::enforced(c, direction, id) {
        out.push(("counter goto log_drop".into(), "default".into()));
    }
    out
}

/// Each chain's rule comments in order, as the table should list them
/// (what [`nftables`] renders, for comparing with a listing).
pub fn nft_rules(lab: &Lab, vm: &Vm, c: &Compiled) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut chain = String::new();
    for line in nftables(lab, vm, c).lines() {
        let t = line.trim();
        if let Some(name) = t.strip_prefix("chain ").and_then(|r| r.strip_suffix(" {")) {
            chain = name.to_string();
            out.entry(chain.clone()).or_default();
        } else if let Some((_, comment)) = t.rsplit_once(" comment \"") {
            out.entry(chain.clone()).or_default().push(comment.trim_end_matches('"').to_string());
        }
    }
    out
}

/// A logged drop: source, destination, protocol, destination port.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Drop {
    pub src: String,
    pub dst: String,
    pub protocol: String,
    pub port: u16,
}

/// The drops logged in `after` and not in `before` (each a kernel log
/// listing: `dmesg` lines with [`LOG_PREFIX`]); lines are told apart by
/// their time stamps.
pub fn new_drops(before: &str, after: &str) -> Vec<Drop> {
    let seen: BTreeSet<&str> = before.lines().collect();
    after.lines().filter(|l| !seen.contains(l)).filter_map(parse_drop).collect()
}

/// One kernel log line of a logged drop.
pub fn parse_drop(line: &str) -> Option<Drop> {
    if !line.contains(LOG_PREFIX) {
        return None;
    }
    let field = |k: &str| line.split_whitespace().find_map(|w| w.strip_prefix(k)).map(String::from);
    Some(Drop {
        src: field("SRC=")?,
        dst: field("DST=")?,
        protocol: field("PROTO=")?.to_lowercase(),
        port: field("DPT=")?.parse().ok()?,
    })
}

/// How many logged drops are of a matrix cell, given the containers'
/// addresses by name.
pub fn drops_of(drops: &[Drop], cell: &ProbeCell, addr: impl Fn(&str) -> Option<String>) -> u64 {
    let (Some(src), Some(dst)) = (addr(&cell.from), addr(&cell.to)) else { return 0 };
    let protocol = cell.protocol.name();
    drops.iter().filter(|d| d.src == src && d.dst == dst && d.protocol == protocol && d.port == cell.port).count()
        as u64
}

/// The command that lists the logged drops on a VM.
pub fn drop_log_command() -> String {
    format!("dmesg | grep -F '{LOG_PREFIX}' || true")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::overlay::ProbeOutcome;

    fn entry(endpoint: u32, remote: u32, protocol: Protocol, port: u16) -> Entry {
        Entry { endpoint, remote, protocol, port, direction: Direction::Ingress }
    }

    fn compiled(entries: Vec<Entry>, deny: Vec<Entry>) -> Compiled {
        Compiled {
            identities: BTreeMap::new(),
            enforced: BTreeSet::from([256]),
            enforced_egress: BTreeSet::new(),
            entries,
            deny,
        }
    }

    #[test]
    fn deny_comes_before_allow_and_ports_merge_into_ranges() {
        let c = compiled(
            vec![
                entry(256, 257, Protocol::Tcp, 80),
                entry(256, 257, Protocol::Tcp, 81),
                entry(256, 257, Protocol::Tcp, 82),
                entry(256, 257, Protocol::Tcp, 90),
                entry(256, 0, Protocol::Any, 0),
            ],
            vec![entry(256, 258, Protocol::Udp, 53)],
        );
        let r = rules(&c);
        assert!(r[0].deny && r[0].remote == 258, "{r:?}");
        let ports: Vec<_> = r.iter().filter(|r| r.remote == 257).map(|r| r.ports).collect();
        assert_eq!(ports, [Some((80, 82)), Some((90, 90))]);
        assert!(r.iter().any(|r| r.remote == 0 && r.ports.is_none() && !r.deny));
    }

    const LINE: &str = "[  212.345678] vlab-drop IN=underlay OUT=vc-c1 MAC=52:54:00:4c:01:01:52:54:00:4c:02:01:08:00 \
                        SRC=10.1.3.2 DST=10.1.1.2 LEN=60 TOS=0x00 PREC=0x00 TTL=62 ID=39610 DF PROTO=TCP SPT=38614 \
                        DPT=80 WINDOW=64240 RES=0x00 SYN URGP=0";

    fn cell(from: &str, to: &str, port: u16) -> ProbeCell {
        ProbeCell {
            from: from.into(),
            to: to.into(),
            protocol: crate::policy::Protocol::Tcp,
            port,
            outcome: ProbeOutcome::TimedOut,
        }
    }

    #[test]
    fn a_logged_drop_counts_for_its_cell_only() {
        let d = parse_drop(LINE).unwrap();
        assert_eq!(d, Drop { src: "10.1.3.2".into(), dst: "10.1.1.2".into(), protocol: "tcp".into(), port: 80 });
        let addr = |c: &str| Some(if c == "c3" { "10.1.3.2" } else { "10.1.1.2" }.to_string());
        assert_eq!(drops_of(std::slice::from_ref(&d), &cell("c3", "c1", 80), addr), 1);
        assert_eq!(drops_of(std::slice::from_ref(&d), &cell("c3", "c1", 81), addr), 0);
        assert_eq!(drops_of(std::slice::from_ref(&d), &cell("c1", "c3", 80), addr), 0);
        let udp = ProbeCell { protocol: crate::policy::Protocol::Udp, ..cell("c3", "c1", 80) };
        assert_eq!(drops_of(&[d], &udp, addr), 0);
        assert!(parse_drop(&LINE.replace("vlab-drop ", "other ")).is_none());
    }

    #[test]
    fn only_drops_logged_after_the_first_read_count() {
        let older = LINE.to_string();
        let newer = LINE.replace("212.345678", "213.000001");
        assert_eq!(new_drops(&older, &format!("{older}\n{newer}")).len(), 1);
        assert!(new_drops(&older, &older).is_empty());
    }
}
