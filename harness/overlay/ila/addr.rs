//! ILA address arithmetic, as the kernel does it (`net/ipv6/ila/ila_common.c`):
//! locators and identifiers, and the checksum-neutral mapping.

use std::net::{IpAddr, Ipv6Addr};

use serde::{Deserialize, Serialize};

use super::CsumMode;
use crate::measure::checksum;

/// A 64-bit ILA locator, written as four hexadecimal groups (`aaaa:0:0:0`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(try_from = "String", into = "String")]
pub struct Locator(pub u64);

impl TryFrom<String> for Locator {
    type Error = String;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        let groups: Vec<&str> = s.split(':').collect();
        let valid = groups.len() == 4
            && groups.iter().all(|g| (1..=4).contains(&g.len()) && g.chars().all(|c| c.is_ascii_hexdigit()));
        if !valid {
            return Err(format!("locator `{s}` must be four hexadecimal groups such as `aaaa:0:0:0`"));
        }
        Ok(Locator(groups.iter().fold(0u64, |acc, g| (acc << 16) | u64::from_str_radix(g, 16).unwrap_or(0))))
    }
}

impl From<Locator> for String {
    fn from(l: Locator) -> String {
        l.to_string()
    }
}

impl std::fmt::Display for Locator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let g = |i: u32| (self.0 >> (48 - 16 * i)) & 0xffff;
        write!(f, "{:x}:{:x}:{:x}:{:x}", g(0), g(1), g(2), g(3))
    }
}

/// The identifier's checksum-neutral bit (C-bit): bit 4 of its first byte.
const C_BIT: u64 = 1 << 60;
/// The C-bit as the 16-bit word the kernel sums (`htonl(0x10000000)`).
const C_BIT_WORD: u64 = 0x1000;

/// Which way a translation goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// SIR address to ILA address (the sender).
    SirToIla,
    /// ILA address to SIR address (the receiver).
    IlaToSir,
}

/// The upper 64 bits of an address.
pub fn locator_of(addr: Ipv6Addr) -> Locator {
    Locator((u128::from(addr) >> 64) as u64)
}

/// The lower 64 bits of an address.
pub fn identifier_of(addr: Ipv6Addr) -> u64 {
    u128::from(addr) as u64
}

pub(super) fn join(loc: Locator, ident: u64) -> Ipv6Addr {
    Ipv6Addr::from((u128::from(loc.0) << 64) | u128::from(ident))
}

/// Whether the identifier's C-bit is set.
pub fn c_bit(addr: Ipv6Addr) -> bool {
    identifier_of(addr) & C_BIT != 0
}

fn words(v: u64) -> [u64; 4] {
    [v >> 48, (v >> 32) & 0xffff, (v >> 16) & 0xffff, v & 0xffff]
}

/// Rewrites `addr`'s locator to `to` under `mode`, as the kernel's
/// `ila_update_ipv6_locator` does: the neutral modes fold the checksum
/// difference of the locators into the identifier's low 16 bits
/// (`neutral-map` also accounts for and flips the C-bit, and only where the
/// C-bit says the mapping applies); the other modes change the locator only.
pub fn translate(addr: Ipv6Addr, to: Locator, mode: CsumMode, dir: Direction) -> Ipv6Addr {
    let from = locator_of(addr);
    let mut ident = identifier_of(addr);
    // old - new in ones'-complement: the old words plus the complemented new ones.
    let diff: u64 = words(from.0).iter().sum::<u64>() + words(to.0).iter().map(|w| 0xffff - w).sum::<u64>();
    let adjust = |ident: u64, extra: u64| {
        let low = checksum::fold((ident & 0xffff) + diff + extra);
        (ident & !0xffff) | u64::from(low)
    };
    match mode {
        CsumMode::NoAction | CsumMode::AdjTransport => {}
        CsumMode::NeutralMapAuto => ident = adjust(ident, 0),
        CsumMode::NeutralMap => {
            let set = ident & C_BIT != 0;
            let applies = match dir {
                Direction::SirToIla => !set,
                Direction::IlaToSir => set,
            };
            if applies {
                // Setting the bit adds its word to the address sum; clearing subtracts it.
                let flag = if set { C_BIT_WORD } else { 0xffff - C_BIT_WORD };
                ident = adjust(ident, flag) ^ C_BIT;
            }
        }
    }
    join(to, ident)
}

/// Applies a translation to an IPv6 packet (no extension headers) the way the
/// documentation describes the modes: the destination is rewritten and, with
/// `adj-transport`, the TCP checksum is corrected for the new pseudo-header.
/// Used to test the checksum code on captured bytes.
pub fn translate_packet(packet: &[u8], to: Locator, mode: CsumMode, dir: Direction) -> Vec<u8> {
    let mut p = packet.to_vec();
    let mut dst = [0u8; 16];
    dst.copy_from_slice(&p[24..40]);
    let old = Ipv6Addr::from(dst);
    let new = translate(old, to, mode, dir);
    p[24..40].copy_from_slice(&new.octets());
    if mode == CsumMode::AdjTransport && p[6] == 6 {
        let src: [u8; 16] = p[8..24].try_into().expect("16 bytes");
        let sum = checksum::tcp_checksum(IpAddr::V6(src.into()), IpAddr::V6(new), &p[40..]);
        p[56..58].copy_from_slice(&sum.to_be_bytes());
    }
    p
}
