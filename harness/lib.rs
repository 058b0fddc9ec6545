//! vlab reproduces container-network datapath experiments in real QEMU VMs.
//!
//! A lab file ([`lab::Lab`]) describes a pair (or more) of VMs joined by an
//! underlay, the containers each VM hosts, the overlay that connects them and
//! an iperf3 workload, optionally as a matrix of cases. [`run::run`] builds (or
//! reuses) the guest image, boots the VMs under KVM or TCG, plumbs the
//! containers and the overlay inside the guests, runs every case and turns the
//! evidence read back from the guests (iperf3 JSON, interface counters) into
//! typed checks and a [`report::Report`].
//!
//! Data flows one way, one module per arrow: lab file -> [`lab`] -> [`image`]
//! -> [`hostnet`] -> [`qemu`] -> [`guest`] + [`overlay`] + [`filter`] ->
//! [`measure`] -> checks -> [`report`].
//!
//! The datapath variants sit behind one interface ([`overlay::Overlay`],
//! [`filter::Filter`]), one file or folder each; [`variants`] joins their
//! registries to the lab loader, so that [`lab`] imports no variant and no
//! module outside `overlay/` and `filter/` names one.

pub mod bench;
pub mod compare;
pub mod doctor;
pub mod filter;
pub mod findings;
pub mod guest;
pub mod hostnet;
pub mod html;
pub mod image;
pub mod junit;
pub mod lab;
pub mod measure;
pub mod merge;
pub mod overlay;
pub mod policy;
pub mod presence;
pub mod qemu;
pub mod rejudge;
pub mod report;
pub mod repro;
pub mod run;
pub mod soak;
pub mod stats;
pub mod study;
pub mod ui;
pub mod variants;

pub use variants::{load_lab, parse_lab};

/// Exit codes, chosen for `git bisect run`.
pub mod exit {
    /// Every check passed ("good").
    pub const PASSED: u8 = 0;
    /// A check failed ("bad").
    pub const CHECK_FAILED: u8 = 1;
    /// The lab could not run: QEMU missing, image build, boot or agent failure,
    /// timeout ("skip" for bisect).
    pub const COULD_NOT_RUN: u8 = 125;
    /// Invalid lab file or arguments (bisect aborts: not the kernel's fault).
    pub const INVALID_INPUT: u8 = 128;
    /// Interrupted by SIGINT.
    pub const INTERRUPTED: u8 = 130;
    /// Terminated by SIGTERM.
    pub const TERMINATED: u8 = 143;
}

/// `$PATH` with the system directories an ordinary user's `PATH` often lacks
/// (Debian's has no `/usr/sbin`), where the image build's chroot, depmod and
/// mke2fs live.
pub fn path_with_sbin() -> std::ffi::OsString {
    let mut dirs: Vec<std::path::PathBuf> =
        std::env::var_os("PATH").map(|p| std::env::split_paths(&p).collect()).unwrap_or_default();
    for d in ["/usr/local/sbin", "/usr/sbin", "/sbin", "/usr/bin", "/bin"] {
        if !dirs.iter().any(|x| x == std::path::Path::new(d)) {
            dirs.push(d.into());
        }
    }
    std::env::join_paths(dirs).expect("PATH entries without ':'")
}

/// The directory of image recipes: `$VLAB_IMAGES_DIR`, else `./images` when it
/// exists, else the `images/` of the source tree vlab was built from.
pub fn images_dir() -> std::path::PathBuf {
    if let Some(d) = std::env::var_os("VLAB_IMAGES_DIR") {
        return d.into();
    }
    let local = std::path::PathBuf::from("images");
    if local.join("base.toml").is_file() {
        return local;
    }
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("images")
}
