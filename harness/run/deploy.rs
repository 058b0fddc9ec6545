//! Setting booted guests up: what every overlay shares (underlay NIC, routes
//! to peers, containers), then the overlay's and the filter's deploy plans,
//! the overlay's readiness probe, and the lab's own setup commands.

use std::collections::BTreeMap;

use anyhow::Context;

use super::boot::LabRuntime;
use super::{checks, RunOptions};
use crate::filter::{
    self,
    none::{self, NoFilter},
};
use crate::guest::{self, Attachment, Batch, Netns, UNDERLAY_DEV};
use crate::lab::{Lab, Vm};
use crate::measure::nic;
use crate::overlay::{self, Step, Variant};
use crate::report::{Readiness, Settled};

/// Deploys the lab on the booted guests; returns the overlay's readiness and
/// how long each guest took to settle after it.
pub(super) async fn deploy(
    lab: &Lab,
    rt: &mut LabRuntime,
    opts: &RunOptions,
) -> anyhow::Result<(Vec<Readiness>, Vec<Settled>)> {
    let o = overlay::get(&lab.overlay);
    let f = filter::get(&lab.filter);
    opts.progress.phase("setting up containers and overlay");
    let setups = lab.vms.iter().enumerate().map(|(i, vm)| {
        let booted = rt.vm(&vm.name);
        let mut b = Batch::new();
        b.succeed("setup", guest::base_setup(lab, vm, i, &booted.nic, &booted.mac, o.containers()).join("\n"));
        b.report("channels", format!("ethtool -l {UNDERLAY_DEV} 2>/dev/null"));
        async move { booted.guest.batch(&b).await.context("guest setup failed") }
    });
    let outputs = futures::future::try_join_all(setups).await?;
    for (vm, out) in lab.vms.iter().zip(outputs) {
        let booted = rt.vms.iter_mut().find(|b| b.report.name == vm.name).expect("booted");
        booted.report.channels = nic::parse_channels(&out.text("channels"));
    }
    let attachments: Vec<Attachment> = lab.vms.iter().map(|vm| Attachment::of(&rt.vm(&vm.name).nic)).collect();
    run_plan(rt, &o.deploy(lab, &attachments), opts)
        .await
        .with_context(|| format!("deploying overlay {}", o.name()))?;
    // The overlay's readiness is its own (a filter may drop the probe's ping).
    let mut ready = Vec::new();
    if let Some(probe) = o.readiness(lab) {
        opts.progress.phase(&format!("waiting for overlay {}: {}", o.name(), probe.what));
        let took = rt.vm(&probe.vm).guest.poll(&probe.command, probe.limit).await?;
        ready.push(Readiness { overlay: o.name().into(), what: probe.what, seconds: took.map(|d| d.as_secs_f64()) });
    }
    run_plan(rt, &f.deploy(lab, &o.enforcement_points(lab)), opts)
        .await
        .with_context(|| format!("deploying filter {} on overlay {}", f.name(), o.name()))?;
    for vm in &lab.vms {
        let guest = &rt.vm(&vm.name).guest;
        for cmd in &vm.setup {
            guest.run(cmd).await.with_context(|| format!("setup command of `{}` failed", vm.name))?;
        }
    }
    warm_up(lab, rt).await?;
    let settled = settle(lab, rt).await?;
    Ok((ready, settled))
}

/// Keeps the whole output of a deploy step that failed on `vm` (a BPF
/// verifier's log runs to hundreds of lines) as `deploy-<vm>-failed.log`
/// under the artifacts; returns its path.
fn keep_failed_step(vm: &str, out: &crate::qemu::agent::Output, opts: &RunOptions) -> Option<String> {
    let path = opts.artifacts.as_ref()?.join(format!("deploy-{vm}-failed.log"));
    let text = format!("--- stdout\n{}\n--- stderr\n{}", out.stdout_text(), out.stderr_text());
    std::fs::write(&path, text).ok()?;
    Some(path.display().to_string())
}

/// Takes the filter `lab` runs out of the pair, proves that no forward chain
/// filters any more (what the `none` filter checks), deploys `to` and warms
/// its evidence commands up; the overlay and its containers stay.
pub(super) async fn switch_filter(lab: &Lab, rt: &LabRuntime, to: &str, opts: &RunOptions) -> anyhow::Result<()> {
    let o = overlay::get(&lab.overlay);
    let points = o.enforcement_points(lab);
    let (from, to) = (filter::get(&lab.filter), filter::get(to));
    opts.progress.phase(&format!("switching filter {} to {}", from.name(), to.name()));
    run_plan(rt, &from.remove(lab, &points), opts).await.with_context(|| format!("removing filter {}", from.name()))?;
    let rulesets = read_on_every_vm(lab, rt, |vm| NoFilter.evidence_commands(lab, vm)).await?;
    let (checks, _) = none::unfiltered(lab, &points, &rulesets);
    if let Some(check) = checks.iter().find(|c| !c.passed) {
        anyhow::bail!("filter {} left the forwarding path filtering after its removal: {}", from.name(), check.detail);
    }
    let next = lab.with_filter(to.name());
    run_plan(rt, &to.deploy(&next, &points), opts)
        .await
        .with_context(|| format!("deploying filter {} on overlay {}", to.name(), o.name()))?;
    read_on_every_vm(lab, rt, |vm| [to.evidence_before_commands(&next, vm), to.evidence_commands(&next, vm)].concat())
        .await
        .context("warming the filter's evidence commands up")?;
    Ok(())
}

/// Runs each VM's `commands` (artifact name, command) in one batch, every VM
/// at once, and returns their outputs by artifact name.
async fn read_on_every_vm(
    lab: &Lab,
    rt: &LabRuntime,
    commands: impl Fn(&Vm) -> Vec<(String, String)>,
) -> anyhow::Result<BTreeMap<String, String>> {
    let commands: Vec<Vec<(String, String)>> = lab.vms.iter().map(&commands).collect();
    let reads = lab.vms.iter().zip(&commands).map(|(vm, cmds)| {
        let mut b = Batch::new();
        for (name, cmd) in cmds {
            b.report(name.clone(), cmd.clone());
        }
        async move { rt.vm(&vm.name).guest.batch(&b).await }
    });
    let outputs = futures::future::try_join_all(reads).await?;
    Ok(commands
        .iter()
        .zip(&outputs)
        .flat_map(|(cmds, out)| cmds.iter().map(move |(name, _)| (name.clone(), out.text(name))))
        .collect())
}

/// Starts the holder of every container's namespace (what cases read of a
/// namespace comes through it, see [`Netns`]) and the kernel log reader, then
/// runs once on every VM,
/// both at once and output discarded, the tools each case starts and the
/// variants' evidence commands: under TCG the first run of a program reads it
/// from the virtual disk and translates its code, which would otherwise cost
/// the first case up to a second more than the others.
async fn warm_up(lab: &Lab, rt: &LabRuntime) -> anyhow::Result<()> {
    let (o, f) = (overlay::get(&lab.overlay), filter::get(&lab.filter));
    let warm = lab.vms.iter().map(|vm| {
        let mut b = Batch::new();
        for c in &vm.containers {
            b.succeed(format!("hold {}", c.name), Netns::container(&c.name).hold());
        }
        b.succeed("kernel log reader", checks::kernel_log_reader());
        b.report("tools", format!("iperf3 --version; tcpdump --version; ethtool -k {UNDERLAY_DEV}"));
        for (name, cmd) in [o.evidence_commands(lab, vm), f.evidence_commands(lab, vm)].concat() {
            b.report(name, cmd);
        }
        async move { rt.vm(&vm.name).guest.batch(&b).await }
    });
    futures::future::try_join_all(warm).await.context("warming the guests' tools up")?;
    Ok(())
}

/// How idle a guest must be before the first case (percent of its vCPU
/// time over half a second), and how long vlab waits for that.
const SETTLED_IDLE: u32 = 90;
const SETTLE_LIMIT_S: u32 = 30;

/// The script that waits until the guest's vCPUs are idle (at least
/// [`SETTLED_IDLE`] % over half a second, from `/proc/stat`, with shell
/// builtins) or [`SETTLE_LIMIT_S`] passed, and prints the last idle share and
/// the seconds it waited.
fn settle_script() -> String {
    format!(
        "cpu() {{ read -r _ u n s i w q sq st _ </proc/stat; total=$((u+n+s+i+w+q+sq+st)); idle=$((i+w)); }}\n\
         centis() {{ read -r up _ </proc/uptime; c=${{up%.*}}${{up#*.}}; }}\n\
         centis; start=$c; cpu; t0=$total; i0=$idle; pct=0\n\
         while [ $((c-start)) -lt {limit}00 ]; do\n\
         \tsleep 0.5; cpu; centis\n\
         \tif [ $((total-t0)) -gt 0 ]; then pct=$(((idle-i0)*100/(total-t0))); else pct=100; fi\n\
         \tt0=$total; i0=$idle\n\
         \t[ $pct -lt {SETTLED_IDLE} ] || break\n\
         done\n\
         echo $pct $((c-start))",
        limit = SETTLE_LIMIT_S
    )
}

/// Waits until every guest is idle (daemons that a deploy started keep a
/// guest busy for a while: the first case would pay for it); returns each
/// VM's wait and idle share. A guest that stays busy is reported, not an
/// error.
pub(super) async fn settle(lab: &Lab, rt: &LabRuntime) -> anyhow::Result<Vec<Settled>> {
    let waits = lab.vms.iter().map(|vm| async move {
        let out = rt.vm(&vm.name).guest.run(&settle_script()).await?;
        let text = out.stdout_text();
        let mut words = text.split_whitespace().map(|w| w.parse::<u32>().unwrap_or(0));
        let (idle, centis) = (words.next().unwrap_or(0), words.next().unwrap_or(0));
        anyhow::Ok(Settled { vm: vm.name.clone(), seconds: f64::from(centis) / 100.0, idle_percent: idle })
    });
    futures::future::try_join_all(waits).await.context("waiting for the guests to settle")
}

/// Runs the steps in order: each writes its files, runs its commands, and
/// keeps its output for the steps after it; files with an artifact name are
/// kept under the run's artifacts too. Steps marked [`Step::together`] run at
/// the same time as the ones before them (each on its own VM).
async fn run_plan(rt: &LabRuntime, plan: &[Step], opts: &RunOptions) -> anyhow::Result<()> {
    let mut outputs = BTreeMap::new();
    let mut rest = plan;
    while let Some((first, _)) = rest.split_first() {
        let mut vms = vec![first.vm.as_str()];
        let mut n = 1;
        while let Some(next) = rest.get(n).filter(|s| s.together && !vms.contains(&s.vm.as_str())) {
            vms.push(&next.vm);
            n += 1;
        }
        let (wave, after) = rest.split_at(n);
        rest = after;
        let filled: Vec<Step> = wave.iter().map(|s| s.with_outputs(&outputs)).collect();
        let ran = futures::future::try_join_all(filled.iter().map(|step| run_step(rt, step, opts))).await?;
        for (step, out) in filled.iter().zip(ran) {
            if let (Some(name), Some(out)) = (&step.output, out) {
                outputs.insert(name.clone(), out);
            }
        }
    }
    Ok(())
}

/// One step of [`run_plan`]: its trimmed stdout, when it ran commands.
async fn run_step(rt: &LabRuntime, step: &Step, opts: &RunOptions) -> anyhow::Result<Option<String>> {
    let guest = &rt.vm(&step.vm).guest;
    for file in &step.files {
        guest.write_file(&file.path, file.text.as_bytes()).await?;
        if let (Some(dir), Some(name)) = (&opts.artifacts, &file.artifact) {
            let path = dir.join(name);
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)?;
            }
            std::fs::write(&path, &file.text)?;
        }
    }
    if step.commands.is_empty() {
        return Ok(None);
    }
    let started = std::time::Instant::now();
    let out = guest.run_or_keep(&step.commands.join("\n"), |out| keep_failed_step(&step.vm, out, opts)).await?;
    let first = step.commands[0].lines().next().unwrap_or("");
    tracing::debug!("deploy step on {}: {:.2} s ({first} ...)", step.vm, started.elapsed().as_secs_f64());
    Ok(Some(out.stdout_text().trim().to_string()))
}
