//! The `cilium-style` overlay, built piece by piece: Cilium's datapath
//! mechanism (security identities carried in the VXLAN VNI, tc programs, an
//! identity-aware L4 policy map) implemented by vlab, since Cilium itself
//! cannot be installed without a registry. It is not registered in
//! [`super::OVERLAYS`] yet: so far it has its policy input ([`policy`]).

pub mod policy;
