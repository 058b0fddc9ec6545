//! NIC evidence parsing against `ethtool` output captured in a vlab guest
//! (virtio-net, 2 queue pairs, after `ethtool -K underlay gro off`).

use vlab::lab::{OffloadFeatures, OffloadPreset, Offloads};
use vlab::measure::counters::Counters;
use vlab::measure::nic::{parse_channels, parse_driver, parse_feature, parse_probe, probe_script};

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
    let output =
        [fixture("virtio-i.txt"), fixture("virtio-k.txt"), fixture("virtio-l.txt"), String::new()].join("=====\n");
    let requested =
        Offloads::Features(OffloadFeatures { gro: Some(true), lro: Some(true), ..Default::default() }).requested();
    let (driver, channels, vfs, offloads) = parse_probe(&output, &requested);
    assert_eq!(driver.as_deref(), Some("virtio_net"));
    assert_eq!((channels, vfs), (Some(2), None));
    let gro = &offloads["gro"];
    assert_eq!((gro.requested, gro.actual, gro.fixed), (Some(true), Some(false), false));
    let lro = &offloads["lro"];
    assert_eq!((lro.requested, lro.actual, lro.fixed), (Some(true), Some(false), true));
    let tx = &offloads["tx"];
    assert_eq!((tx.requested, tx.actual), (None, Some(true)));
}

#[test]
fn probe_script_applies_each_feature_on_its_own() {
    let requested = Offloads::Preset(OffloadPreset::Off).requested();
    let script = probe_script("eth0", Some("c1"), &requested);
    for f in ["tx", "rx", "tso", "gso", "gro", "lro"] {
        assert!(
            script.contains(&format!("ip netns exec c1 ethtool -K eth0 {f} off >/dev/null 2>&1 || true")),
            "{script}"
        );
    }
    let untouched = probe_script("underlay", None, &Offloads::default().requested());
    assert!(!untouched.contains("ethtool -K"), "{untouched}");
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
    assert!(Counters::command("eth0", Some("c1")).starts_with("ip netns exec c1 "));
}
