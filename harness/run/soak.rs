//! Booting a lab's pairs cold again and again, to measure how often a boot
//! fails for reasons outside the lab and the kernel (an emulator crash, a
//! stalled guest) and whether booting again gets past it (`vlab soak`).

use std::time::Instant;

use serde::Serialize;

use super::{boot, groups, prepare, selected_cases, start_pair, RunOptions};
use crate::lab::Lab;
use crate::report::BootRetry;

/// One cold boot of one pair, with the boots it took.
#[derive(Debug, Clone, Serialize)]
pub struct SoakBoot {
    /// The round (from 1).
    pub round: u32,
    /// The pair (its NIC and overlay when the lab has several, else `pair`).
    pub pair: String,
    /// Boots it took: 1, or more after faults.
    pub attempts: u32,
    /// The faults of the boots that failed, in order.
    pub faults: Vec<BootRetry>,
    /// Seconds until every agent answered, the failed boots included.
    pub boot_s: f64,
    /// Seconds of the deploy and warm-up, with `--deploy`.
    pub deploy_s: Option<f64>,
    /// Why the pair did not come up, when it did not: every boot failed, or
    /// something failed after the boot (with `--deploy`).
    pub lost: Option<String>,
}

/// What a soak measured, boot by boot, and on what.
#[derive(Debug, Clone, Serialize)]
pub struct SoakRun {
    /// The lab.
    pub lab: String,
    /// Acceleration of the boots.
    pub accel: String,
    /// `qemu-system-x86_64 --version`'s version.
    pub qemu: String,
    /// Whether each pair was also deployed and warmed up.
    pub deploy: bool,
    /// Booted as `vlab run --cold-boot` boots (qboot where it can), not as
    /// a run that saves its VMs' states (SeaBIOS and a VM generation ID).
    pub cold_boot: bool,
    /// How TCG ran each VM's vCPUs (null under KVM).
    pub tcg_thread: Option<crate::qemu::TcgThread>,
    /// Every boot, in the order they ran.
    pub boots: Vec<SoakBoot>,
}

/// Boots each of the lab's pairs cold `rounds` times (every pair once per
/// round, pair after pair), as `vlab run` boots them on a machine without
/// saved states (with the firmware and devices of VMs it saves; with
/// `opts.cold_boot`, as `vlab run --cold-boot` does), booted again after a
/// boot fault, and with `deploy` deploys and warms each up; then stops it,
/// saving nothing. A pair that does not come up is recorded and the soak
/// goes on; trouble that is not a boot's (the host, the image) ends it.
pub async fn soak(lab: &Lab, opts: &RunOptions, rounds: u32, deploy: bool) -> anyhow::Result<SoakRun> {
    let qemu_bin = crate::qemu::find_qemu().map_err(anyhow::Error::msg)?;
    let qemu = crate::qemu::qemu_version(&qemu_bin).unwrap_or_else(|| "unknown".into());
    let (mut prepared, _notice) = prepare(lab, opts, qemu_bin).await?;
    prepared.use_states = false;
    let pairs = groups(lab, selected_cases(lab, opts)?);
    let mut boots = Vec::new();
    for round in 1..=rounds {
        for group in &pairs {
            let pair = group.label.trim_start_matches('-');
            let pair = if pair.is_empty() { "pair".to_string() } else { pair.to_string() };
            opts.progress.phase(&format!("soak: round {round}/{rounds}, {pair}"));
            let started = Instant::now();
            let outcome = match deploy {
                true => start_pair(group, &prepared, opts).await.map(|p| (p.rt, Some(p.timing))),
                false => boot::boot(&group.lab, &prepared, group.nic.as_ref(), opts, group.label.clone())
                    .await
                    .map(|rt| (rt, None)),
            };
            let sample = match outcome {
                Ok((rt, timing)) => {
                    let vm = &rt.vms[0].report;
                    SoakBoot {
                        round,
                        pair,
                        attempts: vm.boot_attempts,
                        faults: vm.boot_retries.clone(),
                        boot_s: timing.as_ref().map_or(started.elapsed().as_secs_f64(), |t| t.boot_s),
                        deploy_s: timing.map(|t| t.deploy_s + t.warm_up_s),
                        lost: None,
                    }
                }
                Err(e) => lost(e, round, pair, started)?,
            };
            boots.push(sample);
        }
    }
    opts.progress.finish();
    let tcg_thread = (prepared.accel == crate::qemu::Accel::Tcg).then_some(prepared.tcg_thread);
    let accel = prepared.accel.to_string();
    Ok(SoakRun { lab: lab.name.clone(), accel, qemu, deploy, cold_boot: opts.cold_boot, tcg_thread, boots })
}

/// The record of a pair that did not come up, or the error when the
/// failure was not the boot's (nor, after it, the guest's or QEMU's).
fn lost(e: anyhow::Error, round: u32, pair: String, started: Instant) -> anyhow::Result<SoakBoot> {
    let exhausted = e.downcast_ref::<boot::BootsFailed>();
    let after_boot = super::guest_failure(&e).or_else(|| super::emulator_crash(&e));
    if exhausted.is_none() && after_boot.is_none() {
        return Err(e);
    }
    let faults = exhausted.map(|b| b.failed.clone()).unwrap_or_default();
    Ok(SoakBoot {
        round,
        pair,
        attempts: faults.len().max(1) as u32,
        faults,
        boot_s: started.elapsed().as_secs_f64(),
        deploy_s: None,
        lost: Some(format!("{e:#}")),
    })
}
