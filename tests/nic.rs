//! NIC evidence parsing against `ethtool` output captured in a vlab guest
//! (virtio-net, 2 queue pairs, after `ethtool -K underlay gro off`).

use std::collections::BTreeMap;
use vlab::lab::{OffloadFeatures, OffloadPreset, Offloads};
use vlab::measure::counters::Counters;

use vlab::measure::nic::{
    offload_script, parse_channels, parse_driver, parse_feature, parse_probe, still_to_apply, OffloadState,
};

fn fixture(name: &str) -> String {
    std::fs::read_to_string(format!("{}/tests/fixtures/ethtool/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

#[test]
fn driver_channels_and_features() {
    assert_eq!(parse_driver(&fixture("virtio-i.txt")).as_deref(), Some("virtio_net"));
    assert_eq!(parse_channels(&fixture("virtio-l.txt")), Some(2));
    let k = fixture("virtio-k.txt");
    assert_eq!(parse_feature(&k, "rx-checksumming"), Some((true, true)));
    assert_eq!(parse_feature(&k, "generic-receive-offload"), Some((false, false)));
    assert_eq!(parse_feature(&k, "large-receive-offload"), Some((false, true)));
    // A sub-feature's name is not mistaken for its parent's.
    assert_eq!(parse_feature(&k, "tx-checksumming"), Some((true, false)));
    assert_eq!(parse_feature(&k, "no-such-feature"), None);
}

#[test]
fn probe_output_becomes_requested_versus_actual() {
    let output = [
        fixture("virtio-i.txt"),
        fixture("virtio-k.txt"),
        fixture("virtio-l.txt"),
        String::new(),
        "1500\n".into(),
        "100 200 3 4 0 0 0 0 \n".into(),
    ]
    .join("=====\n");
    let requested =
        Offloads::Features(OffloadFeatures { gro: Some(true), lro: Some(true), ..Default::default() }).requested();
    let probe = parse_probe(&output, &requested);
    assert_eq!(probe.driver.as_deref(), Some("virtio_net"));
    assert_eq!((probe.channels, probe.vfs, probe.mtu), (Some(2), None, Some(1500)));
    assert_eq!(probe.counters.map(|c| (c.rx_bytes, c.tx_packets)), Some((100, 4)));
    let offloads = probe.offloads;
    let gro = &offloads["gro"];
    assert_eq!((gro.requested, gro.actual, gro.fixed), (Some(true), Some(false), false));
    let lro = &offloads["lro"];
    assert_eq!((lro.requested, lro.actual, lro.fixed), (Some(true), Some(false), true));
    let tx = &offloads["tx"];
    assert_eq!((tx.requested, tx.actual), (None, Some(true)));
}

#[test]
fn probe_script_applies_the_features_together_or_each_on_its_own() {
    let requested = Offloads::Preset(OffloadPreset::Off).requested();
    let script = offload_script("eth0", &requested);
    assert!(
        script.contains("ethtool -K eth0 tx off rx off tso off gso off gro off lro off >/dev/null 2>&1 || {"),
        "{script}"
    );
    for f in ["tx", "rx", "tso", "gso", "gro", "lro"] {
        assert!(script.contains(&format!("ethtool -K eth0 {f} off >/dev/null 2>&1 || true")), "{script}");
    }
    assert_eq!(offload_script("underlay", &Offloads::default().requested()), "");
}

/// The counters are read with shell builtins: checked in a real shell over a
/// copy of sysfs' statistics layout.
#[test]
fn counters_command_reads_with_builtins_only() {
    let dir = tempfile::tempdir().unwrap();
    let stats = dir.path().join("class/net/X/statistics");
    std::fs::create_dir_all(&stats).unwrap();
    for (i, f) in
        ["rx_bytes", "tx_bytes", "rx_packets", "tx_packets", "rx_dropped", "tx_dropped", "rx_errors", "tx_errors"]
            .iter()
            .enumerate()
    {
        std::fs::write(stats.join(f), format!("{}\n", i * 10)).unwrap();
    }
    let cmd = Counters::command(&dir.path().display().to_string(), "X");
    let out = std::process::Command::new("/bin/sh").arg("-c").arg(&cmd).output().unwrap();
    let c = Counters::parse(&String::from_utf8_lossy(&out.stdout)).unwrap();
    assert_eq!((c.rx_bytes, c.tx_bytes, c.tx_errors), (0, 10, 70));
}

#[test]
fn counters_parse_and_subtract() {
    let before = Counters::parse("100 200 3 4 0 0 0 0\n").unwrap();
    let after = Counters::parse("1100 260 13 5 1 0 2 0").unwrap();
    let d = after.since(&before);
    assert_eq!(
        (d.rx_bytes, d.tx_bytes, d.rx_packets, d.tx_packets, d.rx_dropped, d.rx_errors),
        (1000, 60, 10, 1, 1, 2)
    );
    assert!(Counters::parse("1 2 3").is_none());
}

/// The TCP checksum error counter is read from a `/proc/net/snmp` with
/// shell builtins: names on one `Tcp:` line, values on the next.
#[test]
fn tcp_snmp_counters_are_read_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let snmp = dir.path().join("snmp");
    std::fs::write(
        &snmp,
        "Ip: Forwarding DefaultTTL\nIp: 1 64\n\
         Tcp: RtoAlgorithm RtoMin InSegs InErrs InCsumErrors\nTcp: 1 200 5021 3 17\n\
         Udp: InDatagrams InCsumErrors\nUdp: 9 4\n",
    )
    .unwrap();
    let cmd = vlab::measure::counters::tcp_snmp_script(&snmp.display().to_string(), "InCsumErrors");
    let out = std::process::Command::new("/bin/sh").arg("-c").arg(&cmd).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "TcpInCsumErrors 17\n");
}

/// The receiver's checksum error counters, read on this host's own kernel
/// (no namespace): the TCP stack's InCsumErrors is among them, by name.
#[test]
fn checksum_error_counters_are_read_from_the_kernel() {
    let cmd = vlab::measure::counters::csum_errors_command(None, "lo");
    let out = std::process::Command::new("/bin/sh").arg("-c").arg(&cmd).output().unwrap();
    let counters = vlab::measure::counters::parse_named(&String::from_utf8_lossy(&out.stdout));
    assert!(counters.contains_key("TcpInCsumErrors"), "{cmd}: {counters:?}");
}

/// A case applies only the offloads that the previous probe did not read
/// back as requested; a feature the driver cannot change is left alone.
#[test]
fn only_offloads_that_differ_are_applied_again() {
    let on = Offloads::Preset(OffloadPreset::On).requested();
    assert_eq!(still_to_apply(&on, None), on, "nothing read yet: everything");
    let state = |actual: bool, fixed: bool| OffloadState { requested: Some(true), actual: Some(actual), fixed };
    let mut last: BTreeMap<String, OffloadState> =
        ["tx", "rx", "tso", "gso", "gro"].iter().map(|f| (f.to_string(), state(true, false))).collect();
    last.insert("lro".into(), state(false, true));
    assert!(still_to_apply(&on, Some(&last)).iter().all(|(_, want)| want.is_none()));
    last.insert("gro".into(), state(false, false));
    let apply = still_to_apply(&on, Some(&last));
    assert_eq!(apply.iter().filter(|(_, want)| want.is_some()).collect::<Vec<_>>(), [&("gro", Some(true))]);
    assert_eq!(offload_script("eth0", &apply).lines().next(), Some("ethtool -K eth0 gro on >/dev/null 2>&1 || {"));
    let off = Offloads::Preset(OffloadPreset::Off).requested();
    assert_eq!(
        still_to_apply(&off, Some(&last)).iter().filter(|(_, want)| want.is_some()).count(),
        4,
        "gro is off already"
    );
}
