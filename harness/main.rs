//! The `vlab` command line.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use tokio::signal::unix::{signal, SignalKind};

use vlab::exit;
use vlab::lab::Lab;
use vlab::qemu::accel::AccelChoice;
use vlab::run::RunOptions;
use vlab::ui::Progress;

/// What vlab said last before giving up: `--junit` gives it as the error of
/// a run that could not start or finish.
static LAST_ERROR: std::sync::Mutex<String> = std::sync::Mutex::new(String::new());

/// Prints `vlab: MESSAGE` to stderr and keeps MESSAGE as the last error.
macro_rules! error {
    ($($arg:tt)*) => {{
        let message = format!($($arg)*);
        eprintln!("vlab: {message}");
        *LAST_ERROR.lock().unwrap_or_else(|e| e.into_inner()) = message;
    }};
}

/// Container-network datapath experiments in real QEMU VMs.
#[derive(Parser)]
#[command(name = "vlab", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

// Parsed once per process: the size of its largest variant costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Cmd {
    /// Run a lab: boot its VMs, run every case, report. Exit 0 all checks
    /// passed, 1 a check failed, 125 the lab could not run, 128 invalid input.
    Run {
        /// The lab file.
        lab: PathBuf,
        /// Write the report as JSON to this file.
        #[arg(long)]
        json: Option<PathBuf>,
        /// Keep the evidence (serial logs, iperf3 JSON, counters) in this directory.
        #[arg(long)]
        artifacts: Option<PathBuf>,
        /// CPU acceleration: auto probes KVM by running a guest and falls back to TCG.
        #[arg(long, value_enum, default_value_t = AccelChoice::Auto)]
        accel: AccelChoice,
        /// Boot this kernel (bzImage) instead of the image's; see docs/kernels.md for its
        /// config. Given twice or more, each kernel gets its own pairs, the
        /// kernels take turns in every round, and each later kernel is
        /// compared with the first (exit 1 when one is significantly slower).
        #[arg(long = "kernel")]
        kernels: Vec<PathBuf>,
        /// Boot the kernel of this Debian kernel package (the archive's
        /// linux-image-*, or `make bindeb-pkg`'s) instead of the image's: it
        /// is unpacked into the cache once, its modules cut to what labs
        /// load, decompressed and carried into the VMs. Repeatable, and
        /// mixed with --kernel in the order given: each is one more kernel.
        #[arg(long = "kernel-deb", value_name = "FILE")]
        kernel_debs: Vec<PathBuf>,
        /// The commit a --kernel was built from (given once per --kernel, in
        /// order), shown in its report beside the guest's `uname -r`.
        #[arg(long = "kernel-commit", value_name = "REV")]
        kernel_commits: Vec<String>,
        /// Append these to every guest's kernel command line (a boot
        /// parameter under bisection, `module_blacklist=...`).
        #[arg(long, value_name = "ARGS", allow_hyphen_values = true)]
        kernel_cmdline: Option<String>,
        /// Install this kernel tree's modules into every VM's copy-on-write
        /// root disk (DIR is the INSTALL_MOD_PATH of `make modules_install`),
        /// for a --kernel that is not fully built in (every --kernel's; a
        /// --kernel-deb brings its own).
        #[arg(long, value_name = "DIR")]
        modules: Option<PathBuf>,
        /// What a guest kernel that panics, oopses, hangs, never reaches
        /// init or refuses a step of the lab makes of the run: `skip` (exit
        /// 125, as other trouble that keeps the lab from running) or `bad`
        /// (exit 1: testing a kernel, that is a regression).
        #[arg(long, value_enum, default_value_t = OnCrash::Skip)]
        on_crash: OnCrash,
        /// With several kernels: changes within this fraction do not count.
        #[arg(long, default_value_t = 0.05)]
        tolerance: f64,
        /// Run only the cases whose name contains this text.
        #[arg(long = "case")]
        case_filter: Option<String>,
        /// Print where the time went: image, acceleration, each pair's boot
        /// and deploy, and each case phase by phase (always in the JSON).
        #[arg(long)]
        timings: bool,
        /// Boot every VM's kernel: neither load a saved VM state nor save one.
        /// (A --kernel of your own always boots cold.)
        #[arg(long)]
        cold_boot: bool,
        /// Run every case this many times: the pairs take turns, each running
        /// all its cases once per round, every other round in reverse (A B C,
        /// C B A, ...); the report gives each case's samples, median and 95 %
        /// interval, and each ratio taken round by round. Default: 1 for a
        /// lab; for a study its `repeat`, else 3.
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..=100))]
        repeat: Option<u32>,
        /// Write the report as Markdown (a CI job summary) to this file.
        #[arg(long)]
        markdown: Option<PathBuf>,
        /// Write the report as one self-contained HTML page (a chart of the
        /// cases' throughput with their intervals, the table, links to the
        /// artifacts) to this file.
        #[arg(long)]
        html: Option<PathBuf>,
        /// Write a JUnit XML report to this file: a test suite per lab, a
        /// test case per case (a failure per failed check, the evidence
        /// files as properties); a run that could not start or finish is a
        /// test case `run` with an error saying why.
        #[arg(long, value_name = "FILE")]
        junit: Option<PathBuf>,
        /// Write each failed case's reproducer (as `vlab repro` does) into
        /// DIR/CASE, and run its namespace form in the case's guest at once:
        /// DIR/CASE/guest.tap holds what it printed there, guest.json
        /// whether its verdicts are vlab's.
        #[arg(long, value_name = "DIR")]
        repro: Option<PathBuf>,
        /// With --repro, every case's reproducer, the passed ones' too (to
        /// carry a case that passes here to another kernel).
        #[arg(long, requires = "repro")]
        repro_all: bool,
        /// Of a study spread over machines: this run is the block NAME (a
        /// machine's rounds). The report carries it and the machine's
        /// description; `vlab merge` pools the blocks' ratios.
        #[arg(long, value_name = "NAME")]
        block: Option<String>,
    },
    /// Run a lab repeatedly and report median/min/max of boot time, wall time,
    /// throughput per case, and ratios within each run (container/underlay,
    /// overlay/baseline, filter/none).
    Bench {
        /// The lab file.
        lab: PathBuf,
        /// How many runs.
        #[arg(long, default_value_t = 5)]
        runs: usize,
        /// Write the summary and every run's report as JSON to this file.
        #[arg(long)]
        json: Option<PathBuf>,
        /// CPU acceleration.
        #[arg(long, value_enum, default_value_t = AccelChoice::Auto)]
        accel: AccelChoice,
        /// Run only the cases whose name contains this text.
        #[arg(long = "case")]
        case_filter: Option<String>,
        /// Boot every VM's kernel: neither load a saved VM state nor save one.
        #[arg(long)]
        cold_boot: bool,
    },
    /// Boot the lab's pairs cold again and again, as `vlab run` boots them
    /// (booted again after an emulator crash or a stall), and report how
    /// often a boot failed and why, how often a pair was booted again, and
    /// how often one was lost, each rate with its 95 % interval. Exit 0
    /// when no pair was lost, 1 otherwise.
    Soak {
        /// The lab file.
        lab: PathBuf,
        /// How often each pair boots.
        #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=10000))]
        boots: u32,
        /// Also deploy each pair and warm it up (a 1 s workload), as a run
        /// does before its first case.
        #[arg(long)]
        deploy: bool,
        /// Boot as `vlab run --cold-boot` does (qboot where it can); by
        /// default as a run that saves its VMs' states (SeaBIOS and a VM
        /// generation ID), as on a machine that has none saved yet.
        #[arg(long)]
        cold_boot: bool,
        /// Write every boot and the rates as JSON to this file.
        #[arg(long)]
        json: Option<PathBuf>,
        /// Keep the consoles of failed boots (and a crashed QEMU's message) here.
        #[arg(long)]
        artifacts: Option<PathBuf>,
        /// CPU acceleration.
        #[arg(long, value_enum, default_value_t = AccelChoice::Auto)]
        accel: AccelChoice,
    },
    /// Compare two reports of the same lab (A the reference, B the candidate:
    /// two kernels, two builds) case by case: B's throughput over A's with
    /// its 95 % interval; of the same study, each lab so and each finding's
    /// verdict in A and in B. Exit 1 when some case is significantly slower
    /// in B beyond the tolerance (or a finding that did not fail in A does
    /// not hold in B), 0 otherwise, 128 when the reports cannot be compared
    /// (not the same lab, study or cases).
    Compare {
        /// The reference report (`vlab run --json`).
        a: PathBuf,
        /// The report to judge against it.
        b: PathBuf,
        /// Changes within this fraction (0.05: 5 %) do not count.
        #[arg(long, default_value_t = 0.05)]
        tolerance: f64,
        /// Write the comparison as JSON to this file.
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// Merge the reports of one study run on several machines (`vlab run
    /// STUDY --block NAME --json FILE` on each): each case's paired ratios
    /// pooled over every round of every block with the block as a random
    /// effect, the findings judged on the pooled ratios, throughput kept
    /// per block. Exit 0 no finding fails, 1 one does not hold, 128 when the
    /// reports are not blocks of one study (other study files, cases or
    /// kernels; a block or a run twice).
    Merge {
        /// The blocks' reports.
        #[arg(required = true, num_args = 2..)]
        reports: Vec<PathBuf>,
        /// Write the merged study as JSON to this file.
        #[arg(short = 'o', long = "out", value_name = "FILE")]
        out: Option<PathBuf>,
        /// Write it as Markdown (a CI job summary) to this file.
        #[arg(long)]
        markdown: Option<PathBuf>,
        /// Write it as one HTML page (a forest plot of every ratio, by block
        /// and pooled) to this file.
        #[arg(long)]
        html: Option<PathBuf>,
        /// Write its findings as JUnit XML to this file.
        #[arg(long, value_name = "FILE")]
        junit: Option<PathBuf>,
    },
    /// Judge a run again from what `vlab run --artifacts DIR` kept, without
    /// VMs: every case's checks recomputed from its recorded evidence by
    /// this vlab, the report printed (and written) as the run's, and every
    /// verdict that differs from the recorded one listed. Exit as `run`: 0
    /// every check passed, 1 a check failed; 128 when DIR holds no run.
    Rejudge {
        /// The run's artifacts directory.
        dir: PathBuf,
        /// Write the report as JSON to this file.
        #[arg(long)]
        json: Option<PathBuf>,
        /// Write the report as Markdown to this file.
        #[arg(long)]
        markdown: Option<PathBuf>,
        /// Write the report as one HTML page to this file.
        #[arg(long)]
        html: Option<PathBuf>,
        /// Write the report as JUnit XML to this file.
        #[arg(long)]
        junit: Option<PathBuf>,
    },
    /// Hand one case of a report over as a reproducer, in DIR: `repro.sh`
    /// (the case rebuilt in network namespaces on one host, its checks as
    /// shell, kselftest's output and exit codes: 0 pass, 1 fail, 4 skip),
    /// `lab.toml` (the lab cut to this case, for `vlab run`) and
    /// `REPORT.md`. A case that namespaces cannot hold (Docker, a NIC model)
    /// gets the VM form only, and the reason. Exit 128 when the report, its
    /// lab file or the case cannot be read.
    Repro {
        /// The report (`vlab run --json`).
        report: PathBuf,
        /// The case's name, as the report gives it.
        case: String,
        /// Where to write the reproducer.
        #[arg(short = 'o', long = "out")]
        out: PathBuf,
        /// The lab file, where it is no longer where the report says.
        #[arg(long)]
        lab: Option<PathBuf>,
        /// The case's artifacts (`vlab run --artifacts DIR`: DIR/CASE, or
        /// DIR/kernelK/CASE with several kernels): REPORT.md then shows the
        /// packets that show the finding, and evidence/ holds them as pcaps.
        #[arg(long, value_name = "DIR")]
        evidence: Option<PathBuf>,
        /// Of a run over several kernels, the report of this one (its
        /// `uname -r`).
        #[arg(long, value_name = "RELEASE")]
        kernel: Option<String>,
    },
    /// Guest images.
    Image {
        #[command(subcommand)]
        command: ImageCmd,
    },
    /// Check this host: QEMU, KVM, image cache, namespaces.
    Doctor,
}

#[derive(Subcommand)]
enum ImageCmd {
    /// Build (or find in the cache) the image of a recipe (default images/base.toml).
    Build {
        /// The recipe file.
        recipe: Option<PathBuf>,
    },
    /// Print each recipe's cache entry, NAME-KEY (KEY hashes the recipe, the
    /// guest scripts and the BPF programs): a CI cache key for the image.
    Key {
        /// The recipe files (default images/base.toml).
        recipes: Vec<PathBuf>,
    },
}

fn main() -> ExitCode {
    let parsed = Cli::command().try_get_matches().and_then(|m| Ok((Cli::from_arg_matches(&m)?, m)));
    let (cli, matches) = match parsed {
        Ok(parsed) => parsed,
        Err(e) => {
            let code = if e.use_stderr() { exit::INVALID_INPUT } else { exit::PASSED };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    let debs_at = kernel_debs_at(&matches);
    // The agent client warns when QEMU goes away under it; vlab says why
    // QEMU went (its exit, its message, the console), so those warnings
    // show only with VLAB_DEBUG.
    use tracing_subscriber::prelude::*;
    let debug = std::env::var_os("VLAB_DEBUG").is_some();
    let level = if debug { tracing::Level::DEBUG } else { tracing::Level::WARN };
    let filter = tracing_subscriber::filter::Targets::new()
        .with_default(level)
        .with_target("qapi", if debug { tracing::Level::DEBUG } else { tracing::Level::ERROR });
    tracing_subscriber::registry()
        .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_target(false))
        .with(filter)
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    let code = runtime.block_on(async move {
        match cli.command {
            Cmd::Run {
                lab,
                json,
                artifacts,
                accel,
                kernels,
                kernel_debs,
                kernel_commits,
                kernel_cmdline,
                modules,
                on_crash,
                tolerance,
                case_filter,
                timings,
                cold_boot,
                repeat,
                markdown,
                html,
                junit,
                repro,
                repro_all,
                block,
            } => run(
                lab,
                Outputs { json, markdown, html, junit, timings, tolerance, on_crash, block, recorded: None },
                KernelArgs { kernels: in_order(kernels, kernel_debs, &debs_at), modules },
                RunOptions {
                    accel,
                    kernels: Vec::new(),
                    kernel_commits,
                    kernel_cmdline: kernel_cmdline
                        .map_or_else(Vec::new, |a| a.split_whitespace().map(String::from).collect()),
                    case_filter,
                    artifacts,
                    images_dir: vlab::images_dir(),
                    progress: Progress::new("vlab"),
                    cold_boot,
                    repeat: repeat.unwrap_or(0),
                    repro,
                    repro_all,
                },
            )
            .await
            .unwrap_or_else(|code| code),
            Cmd::Bench { lab, runs, json, accel, case_filter, cold_boot } => {
                let opts = RunOptions {
                    accel,
                    kernels: Vec::new(),
                    kernel_commits: Vec::new(),
                    kernel_cmdline: Vec::new(),
                    case_filter,
                    artifacts: None,
                    images_dir: vlab::images_dir(),
                    progress: Progress::new("bench"),
                    cold_boot,
                    repeat: 1,
                    repro: None,
                    repro_all: false,
                };
                bench(lab, runs, json, opts).await.unwrap_or_else(|code| code)
            }
            Cmd::Soak { lab, boots, deploy, cold_boot, json, artifacts, accel } => {
                let opts = RunOptions {
                    accel,
                    kernels: Vec::new(),
                    kernel_commits: Vec::new(),
                    kernel_cmdline: Vec::new(),
                    case_filter: None,
                    artifacts,
                    images_dir: vlab::images_dir(),
                    progress: Progress::new("soak"),
                    cold_boot,
                    repeat: 1,
                    repro: None,
                    repro_all: false,
                };
                soak(lab, boots, deploy, json, opts).await.unwrap_or_else(|code| code)
            }
            Cmd::Merge { reports, out, markdown, html, junit } => {
                merge(&reports, Outputs { json: out, markdown, html, junit, ..Outputs::default() })
            }
            Cmd::Compare { a, b, tolerance, json } => compare(&a, &b, tolerance, json.as_deref()),
            Cmd::Rejudge { dir, json, markdown, html, junit } => {
                rejudge(&dir, Outputs { json, markdown, html, junit, ..Outputs::default() }).unwrap_or_else(|code| code)
            }
            Cmd::Repro { report, case, out, lab, evidence, kernel } => {
                repro(&report, &case, &out, (lab.as_deref(), evidence.as_deref(), kernel.as_deref()))
            }
            Cmd::Image { command: ImageCmd::Build { recipe } } => image_build(recipe).await,
            Cmd::Image { command: ImageCmd::Key { recipes } } => image_key(recipes),
            Cmd::Doctor => vlab::doctor::doctor(),
        }
    });
    // Leave at once: teardown has run, and a blocking image build thread must
    // not hold the exit (its children die with us through PDEATHSIG).
    std::process::exit(code.into());
}

/// What a guest kernel crash makes of a run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
enum OnCrash {
    /// Exit 125: the lab could not run.
    #[default]
    Skip,
    /// Exit 1: the kernel under test is bad.
    Bad,
}

const HINT_125: &str = "The lab could not run (exit 125). Run `vlab doctor` to check QEMU, KVM and the image cache; \
run `ci/setup` (it asks for sudo) to install what is missing; keep the evidence with --artifacts DIR and read the serial logs.";

fn load_lab(path: &Path) -> Result<Lab, u8> {
    vlab::load_lab(path).map_err(|e| {
        error!("invalid lab file: {e}");
        exit::INVALID_INPUT
    })
}

/// A `--case` filter that matches nothing is a wrong argument, not a bad kernel.
fn check_case_filter(lab: &Lab, filter: Option<&str>) -> Result<(), u8> {
    let Some(f) = filter else { return Ok(()) };
    let names: Vec<String> = lab.cases().into_iter().map(|c| c.name).collect();
    if names.iter().any(|n| n.contains(f)) {
        return Ok(());
    }
    eprintln!(
        "vlab: --case {f:?} matches no case of {}; its cases are:\n  {}",
        lab.source.display(),
        names.join("\n  ")
    );
    Err(exit::INVALID_INPUT)
}

/// Resolves with the first SIGINT or SIGTERM, its name and vlab's exit code
/// for it; `None` when the handlers cannot be installed.
fn first_signal() -> Option<impl std::future::Future<Output = (&'static str, u8)>> {
    let (Ok(mut sigint), Ok(mut sigterm)) = (signal(SignalKind::interrupt()), signal(SignalKind::terminate())) else {
        return None;
    };
    Some(async move {
        tokio::select! {
            _ = sigint.recv() => ("SIGINT", exit::INTERRUPTED),
            _ = sigterm.recv() => ("SIGTERM", exit::TERMINATED),
        }
    })
}

/// Cancels the image builds in flight and waits (10 s at most) until their
/// tools are gone and their work directories removed.
async fn cancel_image_builds() {
    let done = tokio::task::spawn_blocking(|| vlab::image::cancel_all(std::time::Duration::from_secs(10))).await;
    if !matches!(done, Ok(true)) {
        error!("an image build did not stop within 10 s");
    }
}

/// Runs `work` as a task and waits for it, SIGINT or SIGTERM. On a signal the
/// task is aborted: dropping it tears the lab down (every resource has an
/// owner), then vlab exits 130 or 143. Errors and panics print what to do and
/// give 125, or 1 when the guest failed (see `run::guest_failure`) and
/// `on_crash` says that makes the kernel bad.
async fn supervised<T: Send + 'static>(
    progress: &Progress,
    on_crash: OnCrash,
    work: impl std::future::Future<Output = anyhow::Result<T>> + Send + 'static,
) -> Result<T, u8> {
    let Some(signalled) = first_signal() else {
        error!("cannot install signal handlers");
        return Err(exit::COULD_NOT_RUN);
    };
    let mut task = tokio::spawn(work);
    let (outcome, interrupted) = tokio::select! {
        r = &mut task => (Some(r), None),
        s = signalled => (None, Some(s)),
    };
    if let Some((sig, code)) = interrupted {
        task.abort();
        let _ = task.await;
        // An image build runs on a thread of its own: stop it and its tools.
        cancel_image_builds().await;
        progress.finish();
        error!("{sig}: stopped; the VMs, namespace and temporary files were removed");
        return Err(code);
    }
    progress.finish();
    match outcome.expect("set when not interrupted") {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => match (vlab::run::guest_failure(&e), on_crash) {
            (Some(why), OnCrash::Bad) => {
                error!("{e:#}\n\nThe guest failed ({why}): the kernel under test is bad (exit 1, --on-crash bad).");
                Err(exit::CHECK_FAILED)
            }
            (Some(why), OnCrash::Skip) => {
                eprintln!(
                    "vlab: {e:#}\n\nThe guest failed ({why}); exit 125. \
                     Testing a kernel (git bisect run), --on-crash bad counts this as a bad kernel (exit 1)."
                );
                Err(exit::COULD_NOT_RUN)
            }
            (None, _) => match vlab::run::emulator_crash(&e) {
                Some(crash) => {
                    error!(
                        "{e:#}\n\n{crash}: QEMU itself failed, not the lab nor the kernel under test (exit 125). \
                         See docs/troubleshooting.md on QEMU crashes under TCG."
                    );
                    Err(exit::COULD_NOT_RUN)
                }
                None => {
                    error!("{e:#}\n\n{HINT_125}");
                    Err(exit::COULD_NOT_RUN)
                }
            },
        },
        Err(join) => {
            error!("internal error ({join}); the lab was torn down.\n{HINT_125}");
            Err(exit::COULD_NOT_RUN)
        }
    }
}

fn write_json(path: Option<&Path>, value: &impl serde::Serialize) -> Result<(), u8> {
    let Some(path) = path else { return Ok(()) };
    let text = serde_json::to_string_pretty(value).expect("reports serialize") + "\n";
    std::fs::write(path, text).map_err(|e| {
        error!("cannot write {}: {e}", path.display());
        exit::COULD_NOT_RUN
    })
}

/// Host-dependent validation (QEMU version for igb, virtio-net's tunnel
/// offloads): still an input error.
fn check_host(lab: &Lab) -> Result<(), u8> {
    let Some(qemu) = vlab::qemu::find_qemu().ok().and_then(|q| vlab::qemu::HostQemu::probe(&q)) else {
        return Ok(()); // no QEMU: the run itself says so (exit 125)
    };
    lab.check_host(&qemu).map_err(|e| {
        error!("invalid lab file for this host: {e}");
        exit::INVALID_INPUT
    })?;
    vlab::variants::check_image(lab, &vlab::images_dir()).map_err(|e| {
        error!("invalid lab file: {e}");
        exit::INVALID_INPUT
    })
}

/// Where a run's report goes besides the table on stdout.
#[derive(Default)]
struct Outputs {
    json: Option<PathBuf>,
    markdown: Option<PathBuf>,
    html: Option<PathBuf>,
    junit: Option<PathBuf>,
    timings: bool,
    /// Of the comparison of kernels.
    tolerance: f64,
    on_crash: OnCrash,
    /// `--block`: the study's block this run is.
    block: Option<String>,
    /// Of a run judged again: its recorded id and block, kept.
    recorded: Option<(String, Option<vlab::study::Block>)>,
}

/// What `vlab run` was given: a lab, or a study of several.
enum Runs {
    Lab(Box<Lab>),
    Study(vlab::study::Study),
}

/// Reads a lab file or a study file (one that lists `[[lab]]` tables).
fn load_runs(path: &Path) -> Result<Runs, u8> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    if !vlab::study::is_study(&text) {
        return load_lab(path).map(|l| Runs::Lab(Box::new(l)));
    }
    vlab::study::load(path).map(Runs::Study).map_err(|e| {
        error!("invalid study: {e}");
        exit::INVALID_INPUT
    })
}

/// `vlab run`'s kernels: `--kernel` and `--kernel-deb` in the order given,
/// and `--modules`.
struct KernelArgs {
    kernels: Vec<KernelArg>,
    modules: Option<PathBuf>,
}

/// A `--kernel` or a `--kernel-deb`.
enum KernelArg {
    Image(PathBuf),
    Deb(PathBuf),
}

impl KernelArg {
    fn option(&self) -> &'static str {
        match self {
            KernelArg::Image(_) => "kernel",
            KernelArg::Deb(_) => "kernel-deb",
        }
    }
}

/// Where on the command line each `--kernel-deb` and `--kernel` of `vlab
/// run` stand: whether the n-th kernel given is a package.
fn kernel_debs_at(matches: &clap::ArgMatches) -> Vec<bool> {
    let Some(run) = matches.subcommand_matches("run") else { return Vec::new() };
    let at = |id: &str| run.indices_of(id).map(Iterator::collect::<Vec<usize>>).unwrap_or_default();
    let mut all: Vec<(usize, bool)> = at("kernels").into_iter().map(|i| (i, false)).collect();
    all.extend(at("kernel_debs").into_iter().map(|i| (i, true)));
    all.sort();
    all.into_iter().map(|(_, deb)| deb).collect()
}

/// The kernels and packages in the order `debs_at` gives.
fn in_order(kernels: Vec<PathBuf>, debs: Vec<PathBuf>, debs_at: &[bool]) -> Vec<KernelArg> {
    let (mut kernels, mut debs) = (kernels.into_iter(), debs.into_iter());
    debs_at
        .iter()
        .filter_map(|deb| match deb {
            true => debs.next().map(KernelArg::Deb),
            false => kernels.next().map(KernelArg::Image),
        })
        .collect()
}

/// The kernels a run boots: each --kernel with --modules, each package
/// unpacked (into the cache, once); only --modules: the image's kernel with
/// them. A file that is no kernel package is exit 128.
async fn guest_kernels(
    args: KernelArgs,
    progress: &Progress,
    on_crash: OnCrash,
) -> Result<Vec<vlab::run::GuestKernel>, u8> {
    use vlab::run::GuestKernel;
    if args.kernels.is_empty() {
        return Ok(args.modules.map(|m| GuestKernel { image: None, modules: Some(m) }).into_iter().collect());
    }
    let modules = args.modules.clone();
    let unpacked = {
        let progress = progress.clone();
        supervised(&progress.clone(), on_crash, async move {
            let mut out = Vec::new();
            for k in args.kernels {
                out.push(match k {
                    KernelArg::Image(image) => Ok(GuestKernel { image: Some(image), modules: modules.clone() }),
                    KernelArg::Deb(deb) => {
                        let progress = progress.clone();
                        let unpacked =
                            tokio::task::spawn_blocking(move || vlab::image::kernel_deb(&deb, &progress)).await?;
                        match unpacked {
                            Ok(k) => Ok(GuestKernel { image: Some(k.kernel), modules: k.modules }),
                            Err(e @ vlab::image::ImageError::BadPackage { .. }) => Err(e.to_string()),
                            Err(e) => return Err(anyhow::Error::new(e).context("--kernel-deb")),
                        }
                    }
                });
            }
            Ok(out)
        })
        .await?
    };
    unpacked.into_iter().collect::<Result<_, String>>().map_err(|why| {
        error!("--kernel-deb {why}");
        exit::INVALID_INPUT
    })
}

/// Runs a lab or a study; `opts.repeat` 0 means its default. With `--junit`,
/// a run that could not start or finish still leaves a report: one error.
async fn run(lab_path: PathBuf, out: Outputs, kernels: KernelArgs, opts: RunOptions) -> Result<u8, u8> {
    let junit = out.junit.clone();
    let result = run_reports(&lab_path, out, kernels, opts).await;
    if let (Err(code), Some(path)) = (&result, &junit) {
        let message = LAST_ERROR.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if let Err(e) = vlab::junit::write(path, &vlab::junit::of_error(&lab_path, *code, &message)) {
            error!("{e:#}");
        }
    }
    result
}

async fn run_reports(lab_path: &Path, out: Outputs, kernels: KernelArgs, mut opts: RunOptions) -> Result<u8, u8> {
    let runs = load_runs(lab_path)?;
    if let Some(name) = &out.block {
        if matches!(runs, Runs::Lab(_)) {
            error!(
                "--block {name}: a block is a machine's share of a study's rounds; {} is a lab, not a study (a file of [[lab]] tables)",
                lab_path.display()
            );
            return Err(exit::INVALID_INPUT);
        }
        if let Err(why) = vlab::merge::check_block_name(name) {
            error!("--block {name:?}: {why}");
            return Err(exit::INVALID_INPUT);
        }
    }
    // A study's labs run; the rest of it (its claims) is judged afterwards.
    let (title, mut labs, study) = match runs {
        Runs::Lab(lab) => {
            check_case_filter(&lab, opts.case_filter.as_deref())?;
            let cases = lab.cases();
            opts.repeat = opts.repeat.max(1);
            (lab.name.clone(), vec![(*lab, cases)], None)
        }
        Runs::Study(mut study) => {
            if opts.repeat == 0 {
                opts.repeat = study.repeat;
            }
            let labs = std::mem::take(&mut study.labs);
            (format!("study {}", study.name), labs, Some(study))
        }
    };
    for (lab, cases) in &mut labs {
        check_host(lab)?;
        if let Some(f) = opts.case_filter.as_deref() {
            cases.retain(|c| c.name.contains(f));
        }
    }
    labs.retain(|(_, cases)| !cases.is_empty());
    if labs.is_empty() {
        error!("--case {:?} matches no case of the study", opts.case_filter.as_deref().unwrap_or(""));
        return Err(exit::INVALID_INPUT);
    }
    if opts.kernel_commits.len() > kernels.kernels.len() {
        error!("--kernel-commit is given once per --kernel (or --kernel-deb), and there are more of them");
        return Err(exit::INVALID_INPUT);
    }
    for kernel in &kernels.kernels {
        let (KernelArg::Image(file) | KernelArg::Deb(file)) = kernel;
        if !file.is_file() {
            error!("--{} {}: no such file", kernel.option(), file.display());
            return Err(exit::INVALID_INPUT);
        }
    }
    opts.kernels = guest_kernels(kernels, &opts.progress, out.on_crash).await?;
    if !(0.0..1.0).contains(&out.tolerance) {
        error!("--tolerance {}: use a fraction from 0 to below 1 (0.05 is 5 %)", out.tolerance);
        return Err(exit::INVALID_INPUT);
    }
    let progress = opts.progress.clone();
    let artifacts = opts.artifacts.clone();
    let kernels = opts.kernels.len().max(1);
    if let Some(dir) = &artifacts {
        keep_inputs(dir, lab_path, &labs, kernels, out.tolerance)?;
    }
    let reports = supervised(&progress, out.on_crash, async move { vlab::run::run_labs(&labs, &opts).await }).await?;
    let (code, document) = publish(&title, &reports, study.as_ref(), &out, artifacts.as_deref(), kernels)?;
    if let Some(dir) = &artifacts {
        write_json(Some(&dir.join(vlab::rejudge::REPORT_FILE)), &document)?;
    }
    Ok(code)
}

/// Keeps what a run reads with its artifacts, for `vlab rejudge`.
fn keep_inputs(
    dir: &Path,
    file: &Path,
    labs: &[(Lab, Vec<vlab::lab::Case>)],
    kernels: usize,
    tolerance: f64,
) -> Result<(), u8> {
    std::fs::create_dir_all(dir).map_err(|e| {
        error!("cannot create artifacts directory {}: {e}", dir.display());
        exit::COULD_NOT_RUN
    })?;
    let labs: Vec<&Lab> = labs.iter().map(|(l, _)| l).collect();
    let outside = vlab::rejudge::keep_inputs(dir, file, &labs, kernels, tolerance).map_err(|e| {
        error!("{e:#}");
        exit::COULD_NOT_RUN
    })?;
    for path in outside {
        eprintln!(
            "vlab: {} is outside the directory of {}: not kept with the artifacts (`vlab rejudge` reads it where it is)",
            path.display(),
            file.display()
        );
    }
    Ok(())
}

/// Prints a run's reports, writes them where asked, and says how it went:
/// the exit code, and the JSON document of the reports.
fn publish(
    title: &str,
    reports: &[vlab::report::Report],
    study: Option<&vlab::study::Study>,
    out: &Outputs,
    artifacts: Option<&Path>,
    kernels: usize,
) -> Result<(u8, serde_json::Value), u8> {
    let mut markdown = String::new();
    for report in reports {
        print!("{}", report.table());
        if out.timings {
            print!("{}", report.timings_table());
        }
        markdown.push_str(&report.markdown());
    }
    // Each lab's later kernels against its first.
    let comparisons: Vec<_> = reports
        .iter()
        .enumerate()
        .filter_map(|(i, b)| {
            let a = reports.iter().find(|a| a.lab == b.lab)?;
            (!std::ptr::eq(a, &reports[i])).then(|| vlab::compare::compare_paired(a, b, out.tolerance))
        })
        .collect();
    for c in &comparisons {
        print!("\n{}", c.table());
        markdown.push_str(&format!("\n```\n{}```\n", c.table()));
    }
    // Each lab's failed checks on each kernel.
    let by_kernel = vlab::presence::by_kernel(reports);
    for f in &by_kernel {
        print!("\n{}", f.table());
        markdown.push_str(&format!("\n{}", f.markdown()));
    }
    // A study's cases against its baseline, and its findings, per kernel.
    let (run_id, block) = out.recorded.clone().unwrap_or_else(|| {
        let block = out.block.as_ref().map(|name| vlab::study::Block {
            name: name.clone(),
            machine: vlab::study::Machine::here(
                reports.first().map_or("", |r| r.accel.as_str()),
                reports.first().map_or("", |r| r.qemu.as_str()),
            ),
        });
        (vlab::merge::run_id(), block)
    });
    let studies: Vec<vlab::findings::StudyOutcome> = study.map_or_else(Vec::new, |c| {
        vlab::findings::per_kernel(reports, kernels)
            .iter()
            .map(|rs| vlab::findings::StudyOutcome {
                sha256: c.sha256.clone(),
                run: run_id.clone(),
                block: block.clone(),
                ..vlab::findings::evaluate(&c.name, &c.baseline, &c.findings, rs)
            })
            .collect()
    });
    for s in &studies {
        print!("\n{}", s.table());
        markdown.push_str(&format!("\n{}", s.markdown()));
    }
    let document = match (reports.len(), study.is_some()) {
        (1, false) => serde_json::to_value(&reports[0]),
        _ => serde_json::to_value(
            serde_json::json!({ "reports": reports, "comparisons": comparisons, "findings_by_kernel": by_kernel, "studies": studies }),
        ),
    }
    .expect("reports serialize");
    write_json(out.json.as_deref(), &document)?;
    let page = out.html.as_ref().map(|path| {
        let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        (path, vlab::html::page(title, reports, &comparisons, &studies, artifacts, &dir))
    });
    for (path, text) in [out.markdown.as_ref().map(|p| (p, markdown)), page].into_iter().flatten() {
        std::fs::write(path, text).map_err(|e| {
            error!("cannot write {}: {e}", path.display());
            exit::COULD_NOT_RUN
        })?;
    }
    if let Some(path) = &out.junit {
        let junit = vlab::junit::of_run(title, reports, &comparisons, &studies, artifacts);
        vlab::junit::write(path, &junit).map_err(|e| {
            error!("{e:#}");
            exit::COULD_NOT_RUN
        })?;
    }
    let good = reports.iter().all(|r| r.passed)
        && !comparisons.iter().any(|c| c.regressed)
        && !studies.iter().any(|s| s.failed());
    Ok((if good { exit::PASSED } else { exit::CHECK_FAILED }, document))
}

/// `vlab rejudge DIR`.
fn rejudge(dir: &Path, mut out: Outputs) -> Result<u8, u8> {
    let judged = vlab::rejudge::rejudge(dir).map_err(|e| {
        error!("cannot judge {} again: {e:#}", dir.display());
        exit::INVALID_INPUT
    })?;
    println!(
        "{} as run by vlab {} ({}), judged again by vlab {} from {}",
        judged.run.source.display(),
        judged.run.vlab,
        judged.reports.first().map_or("", |r| r.kernel.as_str()),
        env!("CARGO_PKG_VERSION"),
        dir.display()
    );
    out.tolerance = judged.run.tolerance;
    out.recorded = judged.identity.clone();
    let title = match &judged.study {
        Some(s) => format!("study {}", s.name),
        None => judged.reports.first().map_or_else(String::new, |r| r.lab.clone()),
    };
    let (code, _) = publish(&title, &judged.reports, judged.study.as_ref(), &out, Some(dir), judged.run.kernels)?;
    match judged.differences.is_empty() {
        true => println!("\nevery verdict as recorded"),
        false => {
            println!("\n{} verdicts differ from the recorded ones:", judged.differences.len());
            for d in &judged.differences {
                println!("  {d}");
            }
        }
    }
    Ok(code)
}

async fn bench(lab_path: PathBuf, runs: usize, json: Option<PathBuf>, opts: RunOptions) -> Result<u8, u8> {
    let lab = load_lab(&lab_path)?;
    check_host(&lab)?;
    check_case_filter(&lab, opts.case_filter.as_deref())?;
    if runs == 0 {
        error!("--runs must be at least 1");
        return Err(exit::INVALID_INPUT);
    }
    let progress = opts.progress.clone();
    let (summary, reports) =
        supervised(&progress, OnCrash::Skip, async move { vlab::bench::bench(&lab, &opts, runs).await }).await?;
    print!("{}", summary.table());
    write_json(json.as_deref(), &serde_json::json!({ "summary": summary, "runs": reports }))?;
    Ok(if summary.passed { exit::PASSED } else { exit::CHECK_FAILED })
}

async fn soak(lab_path: PathBuf, boots: u32, deploy: bool, json: Option<PathBuf>, opts: RunOptions) -> Result<u8, u8> {
    let lab = load_lab(&lab_path)?;
    check_host(&lab)?;
    let progress = opts.progress.clone();
    let run =
        supervised(&progress, OnCrash::Skip, async move { vlab::run::soak::soak(&lab, &opts, boots, deploy).await })
            .await?;
    let soak = vlab::soak::Soak::of(run);
    print!("{}", soak.table());
    write_json(json.as_deref(), &soak)?;
    Ok(if soak.nothing_lost() { exit::PASSED } else { exit::CHECK_FAILED })
}

/// `vlab repro`; `lab`, `evidence` and `kernel` as its options say.
fn repro(
    report: &Path,
    case: &str,
    out: &Path,
    (lab, evidence, kernel): (Option<&Path>, Option<&Path>, Option<&str>),
) -> u8 {
    match vlab::run::repro::export(report, case, out, lab, evidence, kernel) {
        Ok(e) => {
            match &e.script {
                Ok(p) => println!("{}: the case in network namespaces (run it as root)", p.display()),
                Err(why) => println!("no namespace form: {why}"),
            }
            println!("{}: the case in VMs (vlab run)", e.lab.display());
            println!("{}: what vlab expected and saw", e.report.display());
            exit::PASSED
        }
        Err(e) => {
            error!("{e}");
            exit::INVALID_INPUT
        }
    }
}

/// `vlab merge`.
fn merge(paths: &[PathBuf], out: Outputs) -> u8 {
    let merged = paths
        .iter()
        .map(|p| vlab::merge::read(p))
        .collect::<Result<Vec<_>, _>>()
        .and_then(|inputs| vlab::merge::merge(&inputs));
    let merged = match merged {
        Ok(m) => m,
        Err(e) => {
            error!("{e}");
            return exit::INVALID_INPUT;
        }
    };
    print!("{}", merged.table());
    if let Err(code) = write_json(out.json.as_deref(), &merged) {
        return code;
    }
    let html = out.html.as_ref().map(|p| (p, vlab::html::merged_page(&merged)));
    for (path, text) in [out.markdown.as_ref().map(|p| (p, merged.markdown())), html].into_iter().flatten() {
        if let Err(e) = std::fs::write(path, text) {
            error!("cannot write {}: {e}", path.display());
            return exit::COULD_NOT_RUN;
        }
    }
    if let Some(path) = &out.junit {
        if let Err(e) = vlab::junit::write(path, &vlab::junit::of_merged(&merged)) {
            error!("{e:#}");
            return exit::COULD_NOT_RUN;
        }
    }
    if merged.failed() {
        exit::CHECK_FAILED
    } else {
        exit::PASSED
    }
}

fn compare(a: &Path, b: &Path, tolerance: f64, json: Option<&Path>) -> u8 {
    if !(0.0..1.0).contains(&tolerance) {
        error!("--tolerance {tolerance}: use a fraction from 0 to below 1 (0.05 is 5 %)");
        return exit::INVALID_INPUT;
    }
    let comparison = match vlab::compare::compare_any(a, b, tolerance) {
        Ok(c) => c,
        Err(e) => {
            error!("{e}");
            return exit::INVALID_INPUT;
        }
    };
    print!("{}", comparison.table());
    if let Err(code) = write_json(json, &comparison) {
        return code;
    }
    if comparison.regressed() {
        exit::CHECK_FAILED
    } else {
        exit::PASSED
    }
}

/// `vlab image key`: each recipe's cache entry, a line each.
fn image_key(recipes: Vec<PathBuf>) -> u8 {
    let recipes = if recipes.is_empty() { vec![vlab::images_dir().join("base.toml")] } else { recipes };
    for recipe in recipes {
        match vlab::image::cache_entry(&recipe) {
            Ok(entry) => println!("{entry}"),
            Err(e) => {
                error!("{e}");
                return exit::INVALID_INPUT;
            }
        }
    }
    exit::PASSED
}

async fn image_build(recipe: Option<PathBuf>) -> u8 {
    let recipe = recipe.unwrap_or_else(|| vlab::images_dir().join("base.toml"));
    let started = std::time::Instant::now();
    let progress = Progress::new("image");
    let Some(signalled) = first_signal() else {
        error!("cannot install signal handlers");
        return exit::COULD_NOT_RUN;
    };
    let mut build = tokio::task::spawn_blocking({
        let (recipe, progress) = (recipe.clone(), progress.clone());
        move || vlab::image::build(&recipe, &progress)
    });
    let result = tokio::select! {
        r = &mut build => r.expect("image build thread"),
        (sig, code) = signalled => {
            cancel_image_builds().await;
            progress.finish();
            error!("{sig}: image build stopped; its tools were killed and its work directory removed");
            return code;
        }
    };
    progress.finish();
    match result {
        Ok(image) => {
            println!(
                "image {}-{} (kernel {}) in {} [{:.1} s]",
                image.name,
                image.key,
                image.kernel_release,
                image.dir.display(),
                started.elapsed().as_secs_f64()
            );
            exit::PASSED
        }
        Err(vlab::image::ImageError::ReadRecipe { path, source }) => {
            error!("cannot read image recipe {}: {source}", path.display());
            exit::INVALID_INPUT
        }
        Err(e @ vlab::image::ImageError::BadRecipe { .. }) => {
            error!("{e}");
            exit::INVALID_INPUT
        }
        Err(e) => {
            error!("{e}\nThe image could not be built (exit 125): run ci/setup to install mmdebstrap, xz and e2fsprogs, and check that the Debian archive is reachable.");
            exit::COULD_NOT_RUN
        }
    }
}
