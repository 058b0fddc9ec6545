//! The QEMU command line as a pure function of a [`VmSpec`].

use std::path::PathBuf;

use serde::Serialize;

/// CPU acceleration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    /// Hardware virtualization through /dev/kvm.
    Kvm,
    /// QEMU's software emulation.
    Tcg,
}

impl std::fmt::Display for Accel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        })
    }
}

/// How TCG runs a VM's vCPUs (`-accel tcg,thread=...`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TcgThread {
    /// A host thread per vCPU (MTTCG, QEMU's default).
    #[default]
    Multi,
    /// One host thread runs every vCPU of the VM in turn. A vCPU then never
    /// runs while another changes the memory map or patches code, so the
    /// races of MTTCG that crash QEMU or the guest at boot cannot happen.
    Single,
}

impl std::fmt::Display for TcgThread {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TcgThread::Multi => "multi",
            TcgThread::Single => "single",
        })
    }
}

/// The default CPU model under TCG. Models with ERMS/FSRM (`max`, Haswell and
/// later) make the guest kernel copy socket data with `rep movsb`, which TCG
/// emulates byte by byte; without them it uses `rep movsq`. Measured on the
/// development machines, iperf3 between two TCG guests moves 2-3 times more
/// with `qemu64` than with `max`.
pub const TCG_CPU: &str = "qemu64";

/// How a NIC reaches the underlay.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "kebab-case", tag = "model")]
pub enum NicBackend {
    /// virtio-net on a tap in the lab namespace.
    Virtio {
        /// The tap's name.
        tap: String,
        /// Queue pairs.
        queues: u32,
        /// Use vhost-net for the data path.
        vhost: bool,
        /// The MTU the device advertises to the guest (`host_mtu`; the
        /// guest's interface starts with it and cannot exceed it); `None`
        /// leaves the device's default.
        #[serde(skip_serializing_if = "Option::is_none")]
        host_mtu: Option<u32>,
        /// UDP-tunnel segmentation ([`super::TUNNEL_PROPS`]) on or off;
        /// `None` leaves QEMU's default.
        #[serde(skip_serializing_if = "Option::is_none")]
        udp_tunnel: Option<bool>,
    },
    /// QEMU's emulated igb (82576, SR-IOV capable) on a PCIe root port, on a tap.
    Igb {
        /// The tap's name.
        tap: String,
    },
    /// A host PCI function passed through with VFIO.
    Vfio {
        /// Its PCI address.
        host: String,
    },
}

/// One NIC of a VM.
#[derive(Debug, Clone, Serialize)]
pub struct NicSpec {
    /// QEMU id of the netdev and the device's suffix.
    pub id: String,
    /// Guest MAC address (ignored by passthrough: the function has its own).
    pub mac: String,
    /// The device and its backend.
    pub backend: NicBackend,
}

/// Everything QEMU needs to boot one lab VM.
#[derive(Debug, Clone, Serialize)]
pub struct VmSpec {
    /// Guest name (QEMU `-name`, guest host name).
    pub name: String,
    /// Acceleration.
    pub accel: Accel,
    /// How TCG runs the vCPUs (ignored under KVM).
    pub tcg_thread: TcgThread,
    /// CPU model; `None` picks `host` under KVM and [`TCG_CPU`] under TCG.
    pub cpu_model: Option<String>,
    /// vCPUs.
    pub cpus: u32,
    /// Memory in MiB.
    pub memory_mib: u32,
    /// Firmware for direct kernel boot (qboot when available: it starts fastest).
    pub firmware: Option<PathBuf>,
    /// Guest kernel.
    pub kernel: PathBuf,
    /// Initramfs.
    pub initramfs: PathBuf,
    /// The VM's copy-on-write root disk (qcow2 over the cached image).
    pub disk: PathBuf,
    /// Private directory (0700) for the control sockets and the serial log.
    pub run_dir: PathBuf,
    /// Modules the guest loads at boot (`vlab.modules=`).
    pub modules: Vec<String>,
    /// Appended to the kernel command line.
    pub cmdline: Vec<String>,
    /// NICs, in PCI order.
    pub nics: Vec<NicSpec>,
    /// Wait for a saved state (`-incoming defer`) instead of booting.
    pub incoming: bool,
    /// A VM generation ID device, so that a guest restored from a saved state
    /// reseeds its random pool (it needs SeaBIOS: qboot does not load the
    /// ACPI table that describes it, and the guest then never starts).
    pub vmgenid: bool,
}

impl VmSpec {
    /// The QMP socket.
    pub fn qmp_socket(&self) -> PathBuf {
        self.run_dir.join("qmp.sock")
    }
    /// The guest agent socket.
    pub fn agent_socket(&self) -> PathBuf {
        self.run_dir.join("qga.sock")
    }
    /// The serial console log.
    pub fn serial_log(&self) -> PathBuf {
        self.run_dir.join("serial.log")
    }
}

fn machine_args(spec: &VmSpec) -> Vec<String> {
    let mut a = vec!["-name".into(), format!("{},process=vlab-{}", spec.name, spec.name)];
    let accel = match (spec.accel, spec.tcg_thread) {
        (Accel::Tcg, TcgThread::Single) => "tcg,thread=single".to_string(),
        (accel, _) => accel.to_string(),
    };
    a.extend(["-machine".into(), "q35".into(), "-accel".into(), accel]);
    let cpu = spec.cpu_model.clone().unwrap_or_else(|| match spec.accel {
        Accel::Kvm => "host".into(),
        Accel::Tcg => TCG_CPU.into(),
    });
    a.extend(["-cpu".into(), cpu, "-smp".into(), spec.cpus.to_string(), "-m".into(), format!("{}M", spec.memory_mib)]);
    a.extend(["-nodefaults", "-no-user-config", "-display", "none", "-no-reboot"].map(String::from));
    a
}

fn boot_args(spec: &VmSpec) -> Vec<String> {
    let mut a = Vec::new();
    if let Some(fw) = &spec.firmware {
        a.extend(["-bios".into(), fw.display().to_string()]);
    }
    let mut cmdline = vec![
        "console=ttyS0".to_string(),
        // A panicking guest reboots at once, and -no-reboot turns that into an exit.
        "panic=-1".into(),
        "quiet".into(),
        "mitigations=off".into(),
        // Debian's kernels zero every page they allocate (a hardening default);
        // under TCG that is a tenth of a guest's time when it moves packets
        // (fresh receive buffers and socket pages), and no datapath depends on it.
        "init_on_alloc=0".into(),
        format!("vlab.hostname={}", spec.name),
    ];
    if !spec.modules.is_empty() {
        cmdline.push(format!("vlab.modules={}", spec.modules.join(",")));
    }
    cmdline.extend(spec.cmdline.iter().cloned());
    a.extend([
        "-kernel".into(),
        spec.kernel.display().to_string(),
        "-initrd".into(),
        spec.initramfs.display().to_string(),
        "-append".into(),
        cmdline.join(" "),
    ]);
    a
}

fn console_args(spec: &VmSpec) -> Vec<String> {
    vec!["-serial".into(), format!("file:{}", spec.serial_log().display())]
}

fn control_args(spec: &VmSpec) -> Vec<String> {
    vec![
        "-qmp".into(),
        format!("unix:{},server=on,wait=off", spec.qmp_socket().display()),
        "-chardev".into(),
        format!("socket,id=qga0,path={},server=on,wait=off", spec.agent_socket().display()),
        "-device".into(),
        // One port is used; the default 31 would give QEMU's I/O thread 64 more
        // queue notifiers to poll on every wakeup.
        "virtio-serial-pci,id=vser0,max_ports=2".into(),
        "-device".into(),
        "virtserialport,bus=vser0.0,chardev=qga0,name=org.qemu.guest_agent.0".into(),
    ]
}

fn disk_args(spec: &VmSpec) -> Vec<String> {
    vec![
        "-blockdev".into(),
        format!("driver=qcow2,node-name=root,file.driver=file,file.filename={}", spec.disk.display()),
        "-device".into(),
        "virtio-blk-pci,drive=root".into(),
    ]
}

fn rng_args(spec: &VmSpec) -> Vec<String> {
    // Guests under TCG gather entropy slowly; tools that need random numbers
    // would stall. The VM generation ID changes on every start, a restore from
    // a saved state included, and Linux reseeds its random pool on it.
    let mut a = vec![
        "-object".into(),
        "rng-random,id=rng0,filename=/dev/urandom".into(),
        "-device".into(),
        "virtio-rng-pci,rng=rng0".into(),
    ];
    if spec.vmgenid {
        a.extend(["-device".into(), "vmgenid,guid=auto".into()]);
    }
    a
}

/// The arguments of one NIC:
/// - virtio: `-netdev tap,...,queues=N` + `-device virtio-net-pci,mq=on,vectors=2N+2`;
/// - igb: `-device pcie-root-port` + `-netdev tap` + `-device igb` behind the port
///   (SR-IOV needs PCIe: the VFs appear as functions of the device);
/// - vfio: `-device pcie-root-port` + `-device vfio-pci,host=ADDR` behind it.
pub fn nic_args(nic: &NicSpec) -> Vec<String> {
    let port = format!("rp-{}", nic.id);
    let root_port =
        |chassis: usize| vec!["-device".to_string(), format!("pcie-root-port,id={port},chassis={chassis},slot=0")];
    let chassis = nic.id.trim_start_matches(|c: char| !c.is_ascii_digit()).parse::<usize>().unwrap_or(0) + 1;
    match &nic.backend {
        NicBackend::Virtio { tap, queues, vhost, host_mtu, udp_tunnel } => {
            let vhost = if *vhost { "on" } else { "off" };
            let mut extra = host_mtu.map(|m| format!(",host_mtu={m}")).unwrap_or_default();
            if let Some(on) = udp_tunnel {
                let on = if *on { "on" } else { "off" };
                extra.extend(super::TUNNEL_PROPS.iter().map(|p| format!(",{p}={on}")));
            }
            vec![
                "-netdev".into(),
                format!("tap,id={},ifname={tap},script=no,downscript=no,queues={queues},vhost={vhost}", nic.id),
                "-device".into(),
                format!(
                    "virtio-net-pci,netdev={},mac={},mq=on,vectors={},rx_queue_size=1024{extra}",
                    nic.id,
                    nic.mac,
                    2 * queues + 2
                ),
            ]
        }
        NicBackend::Igb { tap } => {
            let mut a = root_port(chassis);
            a.extend([
                "-netdev".into(),
                format!("tap,id={},ifname={tap},script=no,downscript=no", nic.id),
                "-device".into(),
                format!("igb,netdev={},mac={},bus={port}", nic.id, nic.mac),
            ]);
            a
        }
        NicBackend::Vfio { host } => {
            let mut a = root_port(chassis);
            a.extend(["-device".into(), format!("vfio-pci,host={host},bus={port}")]);
            a
        }
    }
}

/// The full argv after the program name.
pub fn qemu_args(spec: &VmSpec) -> Vec<String> {
    let mut a = machine_args(spec);
    a.extend(boot_args(spec));
    a.extend(console_args(spec));
    a.extend(control_args(spec));
    a.extend(disk_args(spec));
    a.extend(rng_args(spec));
    for nic in &spec.nics {
        a.extend(nic_args(nic));
    }
    if spec.incoming {
        a.extend(["-incoming".into(), "defer".into()]);
    }
    a
}
