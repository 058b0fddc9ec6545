//! `vlab soak`: how often a cold boot of a lab's pairs fails for reasons
//! outside the lab and the kernel (QEMU crashing, a guest stalling), how
//! often booting again got past it, and how often a pair was lost anyway,
//! each as a rate with its exact 95 % interval.

use serde::Serialize;

use crate::report::BootFault;
use crate::run::soak::{SoakBoot, SoakRun};
use crate::stats::{median, proportion, Proportion};

/// The rates of one pair, or of all together.
#[derive(Debug, Clone, Serialize)]
pub struct SoakRates {
    /// The pair (`all`: every pair together).
    pub pair: String,
    /// Cold boots of the pair (rounds).
    pub boots: u64,
    /// Boot attempts, the repeated ones included.
    pub attempts: u64,
    /// QEMU crashes per boot attempt.
    pub emulator_crashes: Proportion,
    /// Stalled guests per boot attempt.
    pub stalls: Proportion,
    /// Pair boots that took more than one attempt.
    pub booted_again: Proportion,
    /// Pair boots that never came up (every attempt failed, or a fault
    /// after the boot with `--deploy`).
    pub lost: Proportion,
    /// Median, minimum and maximum seconds until both agents answered, of
    /// the boots that came up at the first attempt.
    pub boot_s: Option<(f64, f64, f64)>,
}

/// A soak's samples and their rates.
#[derive(Debug, Clone, Serialize)]
pub struct Soak {
    /// What ran, boot by boot.
    #[serde(flatten)]
    pub run: SoakRun,
    /// Each pair's rates, then all pairs' together.
    pub rates: Vec<SoakRates>,
}

/// The rates of `boots` (of one pair, or all).
fn rates(pair: &str, boots: &[&SoakBoot]) -> SoakRates {
    let attempts: u64 = boots.iter().map(|b| b.attempts as u64).sum();
    let faults = |kind: BootFault| boots.iter().flat_map(|b| &b.faults).filter(|f| f.fault == kind).count() as u64;
    let n = boots.len() as u64;
    let first: Vec<f64> = boots.iter().filter(|b| b.attempts == 1 && b.lost.is_none()).map(|b| b.boot_s).collect();
    let boot_s = (!first.is_empty()).then(|| {
        let min = first.iter().copied().fold(f64::INFINITY, f64::min);
        let max = first.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        (median(&first), min, max)
    });
    SoakRates {
        pair: pair.to_string(),
        boots: n,
        attempts,
        emulator_crashes: proportion(faults(BootFault::EmulatorCrash), attempts),
        stalls: proportion(faults(BootFault::Stall), attempts),
        booted_again: proportion(boots.iter().filter(|b| b.attempts > 1).count() as u64, n),
        lost: proportion(boots.iter().filter(|b| b.lost.is_some()).count() as u64, n),
        boot_s,
    }
}

impl Soak {
    /// The rates of a soak's boots, pair by pair and all together.
    pub fn of(run: SoakRun) -> Soak {
        let mut pairs: Vec<&str> = Vec::new();
        for b in &run.boots {
            if !pairs.contains(&b.pair.as_str()) {
                pairs.push(&b.pair);
            }
        }
        let mut all: Vec<SoakRates> =
            pairs.iter().map(|p| rates(p, &run.boots.iter().filter(|b| b.pair == *p).collect::<Vec<_>>())).collect();
        if pairs.len() > 1 {
            all.push(rates("all", &run.boots.iter().collect::<Vec<_>>()));
        }
        Soak { rates: all, run }
    }

    /// Whether every pair came up (booted again where needed).
    pub fn nothing_lost(&self) -> bool {
        self.run.boots.iter().all(|b| b.lost.is_none())
    }

    /// The soak for people: a row per pair, the rates with their
    /// intervals, every fault seen.
    pub fn table(&self) -> String {
        let r = &self.run;
        let how = match r.cold_boot {
            true => "as `vlab run --cold-boot` boots",
            false => "as a run that saves VM states boots (SeaBIOS, a VM generation ID)",
        };
        let what = if r.deploy {
            format!("cold boots {how}, each deployed and warmed up")
        } else {
            format!("cold boots {how}")
        };
        let threads = match r.tcg_thread {
            Some(crate::qemu::TcgThread::Single) => " (one thread per VM)",
            Some(crate::qemu::TcgThread::Multi) => " (a thread per vCPU)",
            None => "",
        };
        let mut s = format!("soak of lab {}: {what}; accel {}{threads}, QEMU {}\n\n", r.lab, r.accel, r.qemu);
        let width = self.rates.iter().map(|x| x.pair.len()).max().unwrap_or(4).max(4);
        s.push_str(&format!(
            "{:<width$}  {:>5}  {:>8}  {:>7}  {:>6}  {:>4}  boot s (median min max)\n",
            "pair", "boots", "attempts", "crashes", "stalls", "lost"
        ));
        for x in &self.rates {
            let boot = x.boot_s.map_or("-".into(), |(m, lo, hi)| format!("{m:.1} {lo:.1} {hi:.1}"));
            s.push_str(&format!(
                "{:<width$}  {:>5}  {:>8}  {:>7}  {:>6}  {:>4}  {boot}\n",
                x.pair, x.boots, x.attempts, x.emulator_crashes.k, x.stalls.k, x.lost.k
            ));
        }
        let total = self.rates.last().expect("one pair at least");
        s.push_str(&format!(
            "\nper boot attempt: emulator crashes {}, stalls {}\nper pair boot: booted again {}, lost {}\n",
            total.emulator_crashes, total.stalls, total.booted_again, total.lost
        ));
        for b in &r.boots {
            for f in &b.faults {
                s.push_str(&format!("  round {} {} boot {}: {} ({})\n", b.round, b.pair, f.attempt, f.reason, f.fault));
            }
            if let Some(why) = &b.lost {
                let first = why.lines().next().unwrap_or_default();
                s.push_str(&format!("  round {} {}: LOST: {first}\n", b.round, b.pair));
            }
        }
        s
    }
}
