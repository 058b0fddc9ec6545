//! What the lab model needs to know of the datapath variants, without
//! knowing any of them: the loader passes an implementation of [`Variants`]
//! (the registry of overlays and filters), so that `lab` imports no variant
//! code and every variant can import `lab`.

use super::{Lab, LabError, VariantAxis};

/// The two kinds of datapath variant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// How containers on different VMs reach each other (`overlay = "..."`).
    Overlay,
    /// What filters their traffic where the overlay forwards it (`filter = "..."`).
    Filter,
}

impl Kind {
    /// The lab file key that selects a variant of this kind.
    pub fn key(self) -> &'static str {
        match self {
            Kind::Overlay => "overlay",
            Kind::Filter => "filter",
        }
    }
}

/// Where in a lab file a variant may own keys of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    /// A top-level table (`[ila]`).
    Top,
    /// A key of every `[[vm]]` (`locator`).
    Vm,
    /// A matrix axis (`[matrix] csum_mode`).
    Matrix,
}

/// The keys a variant owns in lab files.
#[derive(Debug, Clone, Copy, Default)]
pub struct LabKeys {
    /// Top-level tables.
    pub tables: &'static [&'static str],
    /// Keys of a `[[vm]]`.
    pub vm: &'static [&'static str],
    /// Matrix axes (the key as written under `[matrix]`).
    pub matrix: &'static [&'static str],
}

impl LabKeys {
    /// The keys at `place`.
    pub fn at(&self, place: Place) -> &'static [&'static str] {
        match place {
            Place::Top => self.tables,
            Place::Vm => self.vm,
            Place::Matrix => self.matrix,
        }
    }
}

/// The registered variants, as the lab loader sees them.
pub trait Variants {
    /// The names of the variants of a kind, in registration order.
    fn names(&self, kind: Kind) -> Vec<&'static str>;
    /// The keys a variant owns (`None`: no such variant).
    fn keys(&self, kind: Kind, name: &str) -> Option<LabKeys>;
    /// Whether a variant can share a lab with others on its matrix axis;
    /// `Err` says why not.
    fn comparable(&self, kind: Kind, name: &str) -> Result<(), &'static str>;
    /// Whether an overlay routes its containers: the guest side of each
    /// container's veth is then the container's gateway and takes an address.
    fn routes_containers(&self, overlay: &str) -> bool;
    /// Validates the settings of every variant the lab selects (its overlay
    /// and filter, and the values of their matrix axes) against the lab.
    fn validate(&self, lab: &Lab) -> Result<(), LabError>;
    /// The matrix axes the selected variants add, with their values.
    fn axes(&self, lab: &Lab) -> Result<Vec<VariantAxis>, LabError>;
    /// Validates each overlay and filter that some case runs together.
    fn validate_pairs(&self, lab: &Lab) -> Result<(), LabError>;
}
