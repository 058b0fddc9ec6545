//! Internet checksums (RFC 1071) and the verdict on a captured TCP segment's
//! checksum.
//!
//! A segment is judged against the pseudo-header of the addresses it carries
//! in the capture. A capture taken where the checksum is not computed yet (a
//! sender with checksum offload, or a virtio-net receiver handed a partial
//! checksum) holds the pseudo-header sum in the checksum field instead: that is
//! reported as `offloaded`, not as invalid.

use std::net::{IpAddr, Ipv6Addr};

use serde::Serialize;

/// The ones'-complement sum of `bytes` as big-endian 16-bit words (an odd last
/// byte is padded with zero), not folded.
pub fn sum_words(bytes: &[u8]) -> u64 {
    bytes.chunks(2).map(|c| u64::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]))).sum()
}

/// Folds a sum of 16-bit words into 16 bits with end-around carry. As in the
/// kernel, a non-zero sum never folds to 0 (it folds to 0xffff instead).
pub fn fold(sum: u64) -> u16 {
    if sum == 0 {
        return 0;
    }
    match (sum % 0xffff) as u16 {
        0 => 0xffff,
        r => r,
    }
}

/// Two 16-bit ones'-complement values are the same number (0 and 0xffff are
/// both zero).
pub fn same_sum(a: u16, b: u16) -> bool {
    a % 0xffff == b % 0xffff
}

/// The sum of an IPv6 address's eight words.
pub fn sum_v6(addr: Ipv6Addr) -> u64 {
    sum_words(&addr.octets())
}

/// The pseudo-header sum of a transport segment (RFC 8200 section 8.1 and
/// RFC 793): addresses, upper-layer length and protocol.
pub fn pseudo_header_sum(src: IpAddr, dst: IpAddr, len: u32, protocol: u8) -> u64 {
    let addrs = match (src, dst) {
        (IpAddr::V6(s), IpAddr::V6(d)) => sum_v6(s) + sum_v6(d),
        (s, d) => sum_words(&ip_octets(s)) + sum_words(&ip_octets(d)),
    };
    addrs + u64::from(len >> 16) + u64::from(len & 0xffff) + u64::from(protocol)
}

fn ip_octets(a: IpAddr) -> Vec<u8> {
    match a {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

/// Whether a TCP segment (header and payload, checksum field included) carries
/// a valid checksum for these addresses.
pub fn tcp_checksum_valid(src: IpAddr, dst: IpAddr, segment: &[u8]) -> bool {
    let sum = pseudo_header_sum(src, dst, segment.len() as u32, 6) + sum_words(segment);
    fold(sum) == 0xffff
}

/// The TCP checksum that makes `segment` valid for these addresses (the
/// segment's own checksum field is ignored).
pub fn tcp_checksum(src: IpAddr, dst: IpAddr, segment: &[u8]) -> u16 {
    let mut copy = segment.to_vec();
    copy[16] = 0;
    copy[17] = 0;
    !fold(pseudo_header_sum(src, dst, copy.len() as u32, 6) + sum_words(&copy))
}

/// The verdict on one captured TCP segment's checksum.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ChecksumStatus {
    /// Correct for the addresses in the captured header.
    Valid,
    /// Wrong for the addresses in the captured header.
    Invalid,
    /// The field holds a pseudo-header sum: the checksum is left to the NIC
    /// (or was never computed: virtio-net passes partial checksums on).
    Offloaded,
    /// Longer than the interface MTU and neither valid nor partial: a TSO/GSO
    /// segment before segmentation or a GRO/LRO merge, whose checksum field
    /// does not describe the bytes captured.
    Oversized,
    /// Cut by the snap length: cannot be verified.
    Truncated,
}

/// A captured TCP segment and the context to judge its checksum.
pub struct Segment<'a> {
    /// Source address in the captured header.
    pub src: IpAddr,
    /// Destination address in the captured header.
    pub dst: IpAddr,
    /// The TCP header and payload as captured.
    pub bytes: &'a [u8],
    /// Whether the capture holds the whole segment.
    pub complete: bool,
    /// Size of the IP packet (header included) as it was on the interface.
    pub ip_len: usize,
}

/// Judges a segment's checksum. `alternate_dst` is the destination the sender's
/// stack may have summed the pseudo-header for, if an address translation
/// changed it since (ILA without a checksum adjustment); `mtu` is the
/// interface's.
pub fn classify(seg: &Segment, alternate_dst: Option<IpAddr>, mtu: usize) -> ChecksumStatus {
    if !seg.complete || seg.bytes.len() < 20 {
        return ChecksumStatus::Truncated;
    }
    if tcp_checksum_valid(seg.src, seg.dst, seg.bytes) {
        return ChecksumStatus::Valid;
    }
    let field = u16::from_be_bytes([seg.bytes[16], seg.bytes[17]]);
    let len = seg.bytes.len() as u32;
    let partial = |dst: IpAddr| same_sum(field, fold(pseudo_header_sum(seg.src, dst, len, 6)));
    if partial(seg.dst) || alternate_dst.is_some_and(partial) {
        return ChecksumStatus::Offloaded;
    }
    if seg.ip_len > mtu {
        return ChecksumStatus::Oversized;
    }
    ChecksumStatus::Invalid
}

/// What a segment's checksum field holds for one destination address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum FieldFor {
    /// A full checksum, valid for it.
    Full,
    /// Its pseudo-header sum: the seed that a sender which leaves the
    /// checksum to its NIC writes, computed for that destination.
    Seed,
}

/// Whether the field of a whole segment is a full checksum or the seed for
/// destination `dst` (`None`: neither, or the segment was cut short).
pub fn field_for(seg: &Segment, dst: IpAddr) -> Option<FieldFor> {
    if !seg.complete || seg.bytes.len() < 20 {
        return None;
    }
    if tcp_checksum_valid(seg.src, dst, seg.bytes) {
        return Some(FieldFor::Full);
    }
    let field = u16::from_be_bytes([seg.bytes[16], seg.bytes[17]]);
    let seed = fold(pseudo_header_sum(seg.src, dst, seg.bytes.len() as u32, 6));
    same_sum(field, seed).then_some(FieldFor::Seed)
}

/// Whether the segment's checksum field is what a translation from
/// `original_dst` to the captured destination would leave if it adjusted the
/// checksum by the opposite of the address change: as if the destination were
/// the mirror image of the captured one around the original (full checksum or
/// partial pseudo-header sum).
pub fn reverse_adjusted(seg: &Segment, original_dst: IpAddr) -> bool {
    if !seg.complete || seg.bytes.len() < 20 {
        return false;
    }
    let addr_sum = |a: IpAddr| u64::from(fold(sum_words(&ip_octets(a))));
    // orig - (wire - orig), in ones' complement.
    let mirror = 2 * addr_sum(original_dst) + (0xffff - addr_sum(seg.dst));
    let len = seg.bytes.len() as u32;
    let pseudo = addr_sum(seg.src) + mirror + u64::from(len >> 16) + u64::from(len & 0xffff) + 6;
    let field = u16::from_be_bytes([seg.bytes[16], seg.bytes[17]]);
    fold(pseudo + sum_words(seg.bytes)) == 0xffff || same_sum(field, fold(pseudo))
}

/// Whether a segment judged valid carries 0xffff where a full computation
/// gives 0x0000: ones' complement negative zero, which an incremental update
/// (RFC 1624 eqn. 2, as the kernel's ILA adjustment can leave) writes.
/// Receivers accept it (the sum over the segment is still all ones); RFC 1624
/// and strict decoders (Wireshark: "Illegal checksum value") do not.
pub fn negative_zero(seg: &Segment) -> bool {
    seg.complete && seg.bytes.len() >= 20 && seg.bytes[16] == 0xff && seg.bytes[17] == 0xff
}

/// Segments per checksum verdict at one capture point.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct ChecksumCounts {
    /// Valid for the captured addresses.
    pub valid: u64,
    /// Invalid for the captured addresses.
    pub invalid: u64,
    /// Left to the NIC (partial checksum).
    pub offloaded: u64,
    /// Longer than the MTU (TSO/GSO or GRO/LRO), not verifiable.
    pub oversized: u64,
    /// Cut by the snap length, not verifiable.
    pub truncated: u64,
    /// Of the invalid, offloaded-looking or oversized segments: those whose
    /// checksum (full or partial) is the one for the original destination
    /// adjusted by the opposite of the address change, the signature of a
    /// translation that corrects the checksum in the wrong direction.
    pub reverse_adjusted: u64,
    /// Of the valid segments: those whose checksum field is 0xffff for
    /// 0x0000 (see [`negative_zero`]); absent from the JSON when none.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub negative_zero: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl ChecksumCounts {
    /// Counts one verdict.
    pub fn add(&mut self, s: ChecksumStatus) {
        match s {
            ChecksumStatus::Valid => self.valid += 1,
            ChecksumStatus::Invalid => self.invalid += 1,
            ChecksumStatus::Offloaded => self.offloaded += 1,
            ChecksumStatus::Oversized => self.oversized += 1,
            ChecksumStatus::Truncated => self.truncated += 1,
        }
    }

    /// Segments whose checksum could be judged valid or invalid.
    pub fn verified(&self) -> u64 {
        self.valid + self.invalid
    }

    /// Sums two counts.
    pub fn merge(&mut self, o: &ChecksumCounts) {
        self.valid += o.valid;
        self.invalid += o.invalid;
        self.offloaded += o.offloaded;
        self.oversized += o.oversized;
        self.reverse_adjusted += o.reverse_adjusted;
        self.negative_zero += o.negative_zero;
        self.truncated += o.truncated;
    }
}

impl std::fmt::Display for ChecksumCounts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} valid, {} invalid, {} offloaded, {} oversized, {} truncated",
            self.valid, self.invalid, self.offloaded, self.oversized, self.truncated
        )?;
        if self.reverse_adjusted > 0 {
            write!(f, " ({} adjusted in reverse)", self.reverse_adjusted)?;
        }
        if self.negative_zero > 0 {
            write!(f, " ({} valid with 0xffff for 0x0000)", self.negative_zero)?;
        }
        Ok(())
    }
}
