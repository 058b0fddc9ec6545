//! `vlab soak`'s rates, from boots recorded by hand: faults counted per
//! boot attempt, pairs booted again and lost per pair boot, each with its
//! exact interval.

use vlab::report::{BootFault, BootRetry};
use vlab::run::soak::{SoakBoot, SoakRun};
use vlab::soak::Soak;

fn boot(round: u32, pair: &str, faults: &[BootFault], lost: bool) -> SoakBoot {
    let faults: Vec<BootRetry> = faults
        .iter()
        .enumerate()
        .map(|(i, f)| BootRetry {
            attempt: i as u32 + 1,
            fault: *f,
            reason: match f {
                BootFault::EmulatorCrash => "QEMU of `host2` crashed (SIGABRT): iotlb_to_section: Assertion".into(),
                BootFault::Stall => "`host1` stalled while booting (its kernel reported an RCU stall)".into(),
            },
        })
        .collect();
    SoakBoot {
        round,
        pair: pair.into(),
        attempts: if lost { faults.len() as u32 } else { faults.len() as u32 + 1 },
        faults,
        boot_s: 10.0 + round as f64,
        deploy_s: None,
        lost: lost.then(|| "the pair failed to boot 3 times".into()),
    }
}

fn soak(boots: Vec<SoakBoot>) -> Soak {
    Soak::of(SoakRun {
        lab: "nic-matrix".into(),
        accel: "tcg".into(),
        qemu: "10.0.2".into(),
        deploy: false,
        cold_boot: false,
        tcg_thread: Some(vlab::qemu::TcgThread::Single),
        boots,
    })
}

#[test]
fn faults_count_per_attempt_and_losses_per_pair_boot() {
    use BootFault::*;
    let s = soak(vec![
        boot(1, "virtio-q1", &[], false),
        boot(1, "igb-sriov-vf2", &[EmulatorCrash], false),
        boot(2, "virtio-q1", &[Stall], false),
        boot(2, "igb-sriov-vf2", &[EmulatorCrash, EmulatorCrash, EmulatorCrash], true),
    ]);
    let all = s.rates.last().unwrap();
    assert_eq!(all.pair, "all");
    assert_eq!((all.boots, all.attempts), (4, 1 + 2 + 2 + 3));
    assert_eq!((all.emulator_crashes.k, all.emulator_crashes.n), (4, 8));
    assert_eq!((all.stalls.k, all.stalls.n), (1, 8));
    assert_eq!((all.booted_again.k, all.booted_again.n), (3, 4));
    assert_eq!((all.lost.k, all.lost.n), (1, 4));
    let igb = &s.rates[1];
    assert_eq!((igb.pair.as_str(), igb.attempts, igb.lost.k), ("igb-sriov-vf2", 5, 1));
    assert_eq!(igb.boot_s, None, "no boot of it came up at the first attempt");
    assert_eq!(s.rates[0].boot_s, Some((11.0, 11.0, 11.0)), "only the first-attempt boots");
    assert!(!s.nothing_lost());
    insta::assert_snapshot!("soak_table", s.table());
}

#[test]
fn a_clean_soak_loses_nothing_and_has_one_row() {
    let s = soak((1..=3).map(|r| boot(r, "pair", &[], false)).collect());
    assert!(s.nothing_lost());
    assert_eq!(s.rates.len(), 1, "one pair: no `all` row");
    let x = &s.rates[0];
    assert_eq!((x.attempts, x.emulator_crashes.k, x.lost.k), (3, 0, 0));
    assert!(x.lost.interval.unwrap().high > 0.5, "three boots say little: {:?}", x.lost.interval);
    assert_eq!(x.boot_s, Some((12.0, 11.0, 13.0)));
}
