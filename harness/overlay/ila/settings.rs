//! What the ila overlay reads from a lab file: the `[ila]` table, each VM's
//! `locator`, and the `csum_mode` and `hook` matrix axes.

use ipnet::Ipv6Net;
use serde::{Deserialize, Serialize};

use super::addr::Locator;

/// The `[ila]` table: how the `ila` overlay translates.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct IlaSettings {
    /// The SIR prefix the containers' addresses live in (a /64; default `dead:beef::/64`).
    pub sir_prefix: Ipv6Net,
    /// Checksum handling of the translation (default `no-action`, as in the study).
    pub csum_mode: CsumMode,
    /// How the identifier is interpreted (default `luid`).
    pub ident_type: IdentType,
    /// Where the translations hook in (default `route`).
    pub hook: IlaHook,
}

impl Default for IlaSettings {
    fn default() -> Self {
        IlaSettings {
            sir_prefix: "dead:beef::/64".parse().expect("valid prefix"),
            csum_mode: CsumMode::NoAction,
            ident_type: IdentType::Luid,
            hook: IlaHook::Route,
        }
    }
}

/// ILA checksum modes (`csum-mode`), as the kernel names them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum CsumMode {
    /// Leave the transport checksum alone: it is wrong on the wire and right
    /// again once the receiver restores the SIR address.
    #[default]
    NoAction,
    /// Rewrite the TCP/UDP/ICMPv6 checksum for the translated address.
    AdjTransport,
    /// Checksum-neutral mapping: compensate in the identifier's low 16 bits
    /// and set its C-bit, so the receiver can undo it.
    NeutralMap,
    /// Checksum-neutral mapping without the C-bit.
    NeutralMapAuto,
}

/// ILA identifier types (`ident-type`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum IdentType {
    /// Locally unique identifier: the whole 64 bits are the identifier.
    #[default]
    Luid,
    /// Read the type from the identifier's top 3 bits (`001` = luid).
    UseFormat,
}

/// Where ILA translations happen.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum IlaHook {
    /// Lightweight-tunnel routes both ways, translating on route output
    /// (`hook-type output`).
    #[default]
    Route,
    /// Lightweight-tunnel routes both ways, translating on route input
    /// (`hook-type input`).
    RouteInput,
    /// A route (output hook) on the way out; the receive side translates
    /// through the `ila_xlat` table (`ip ila add`, a netfilter PREROUTING hook).
    Xlat,
}

/// What an `ila` case translates with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct IlaCase {
    /// Checksum mode.
    pub csum_mode: CsumMode,
    /// Where the translations hook in.
    pub hook: IlaHook,
}

/// The ILA keys of one `[[vm]]`.
#[derive(Debug, Default, Deserialize)]
pub(super) struct VmKeys {
    #[serde(default)]
    pub locator: Option<Locator>,
}

/// The ILA axes of `[matrix]`.
#[derive(Debug, Default, Deserialize)]
pub(super) struct Axes {
    #[serde(default)]
    pub csum_mode: Option<Vec<CsumMode>>,
    #[serde(default)]
    pub hook: Option<Vec<IlaHook>>,
}

/// Everything the ila overlay reads from a lab file.
#[derive(Debug, Default, Deserialize)]
pub(super) struct Section {
    #[serde(default)]
    pub ila: Option<IlaSettings>,
    #[serde(default)]
    pub vm: Vec<VmKeys>,
    #[serde(default)]
    pub matrix: Axes,
}

impl Section {
    /// The locator of VM number `i`.
    pub fn locator(&self, i: usize) -> Option<Locator> {
        self.vm.get(i).and_then(|v| v.locator)
    }
}
