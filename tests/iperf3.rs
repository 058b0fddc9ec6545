//! iperf3 `-J` parsing against output of real iperf3 runs in vlab guests.

use vlab::lab::{CaseParams, Direction, Family, Offloads, Protocol, TrafficPath};
use vlab::measure::iperf3::{client_argv, parse, Iperf3Error};

fn fixture(name: &str) -> String {
    std::fs::read_to_string(format!("{}/tests/fixtures/iperf3/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

#[test]
fn tcp_forward_client() {
    let r = parse(&fixture("tcp-forward-client.json")).unwrap();
    assert_eq!(r.received_bytes, 298_057_728);
    assert!((r.throughput_bps - 473_004_363.5).abs() < 1.0, "{}", r.throughput_bps);
    assert_eq!(r.retransmits, Some(12));
    assert!(r.lost_percent.is_none());
    assert!(r.cpu_client_percent > 0.0 && r.cpu_server_percent > 0.0);
    assert!(r.sent_bytes >= r.received_bytes);
}

#[test]
fn reported_errors_are_errors() {
    let json =
        r#"{"start": {}, "intervals": [], "end": {}, "error": "unable to connect to server: Connection refused"}"#;
    assert_eq!(parse(json), Err(Iperf3Error::Reported("unable to connect to server: Connection refused".into())));
    assert!(matches!(parse("iperf3: error - unable to connect"), Err(Iperf3Error::NotJson(_))));
    assert_eq!(parse(r#"{"start": {}}"#), Err(Iperf3Error::Missing("end")));
}

#[test]
fn client_command_line_follows_the_case() {
    let lab = vlab::parse_lab(include_str!("../labs/baseline.toml"), "baseline.toml".as_ref()).unwrap();
    let params = CaseParams {
        path: TrafficPath::Container,
        family: Family::Ipv6,
        streams: 4,
        protocol: Protocol::Udp,
        direction: Direction::Reverse,
        offloads: Offloads::default(),
        nic: None,
        mtu: None,
        overlay: None,
        filter: None,
        variant: Default::default(),
    };
    let argv = client_argv(&lab.workload, &params, "fd01:1::2").join(" ");
    assert_eq!(argv, "iperf3 -c fd01:1::2 -p 5201 -J --connect-timeout 3000 -t 5 -P 4 -u -b 1000000000 -R");
}

/// A UDP test's received bytes are what the receiver got: the bytes sent
/// less the lost share, which the sum reports in percent.
#[test]
fn udp_received_bytes_leave_out_the_lost_datagrams() {
    let json = r#"{"start": {"test_start": {"protocol": "UDP", "bidir": 0}},
        "end": {"sum": {"bytes": 1000000, "bits_per_second": 8000000.0, "seconds": 1.0, "lost_percent": 10.0},
                "cpu_utilization_percent": {"host_total": 5.0, "remote_total": 3.0}}}"#;
    let r = parse(json).unwrap();
    assert_eq!(r.received_bytes, 900_000);
    assert_eq!(r.sent_bytes, 1_000_000);
    assert_eq!(r.lost_percent, Some(10.0));
    assert_eq!(r.retransmits, None);
}
