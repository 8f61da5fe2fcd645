//! Proof-of-work targets: nBits (compact) decoding and the per-network floor.

use super::hash::Hash256;
use crate::address::Network;
use std::fmt;

/// A 256-bit target, big-endian. A header proves work when its hash, read as a little-endian
/// number, is at most its target; a smaller target means more work.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Target([u8; 32]);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompactError {
    /// The sign bit is set on a non-zero mantissa.
    Negative,
    /// The value does not fit in 256 bits.
    Overflow,
    Zero,
}

impl fmt::Display for CompactError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CompactError::Negative => f.write_str("nBits is negative"),
            CompactError::Overflow => f.write_str("nBits overflows 256 bits"),
            CompactError::Zero => f.write_str("nBits is zero"),
        }
    }
}

impl Target {
    /// Decodes nBits as Core's `arith_uint256::SetCompact` does (cited through rust-bitcoin
    /// `units/src/pow.rs` and Electrum `blockchain.py` `bits_to_target`), refusing what Core's
    /// `DeriveTarget` refuses: negative, overflowing and zero targets.
    pub fn from_compact(bits: u32) -> Result<Target, CompactError> {
        let exponent = bits >> 24;
        let mantissa = bits & 0x007f_ffff;
        if mantissa != 0 && bits & 0x0080_0000 != 0 {
            return Err(CompactError::Negative);
        }
        if mantissa == 0 {
            return Err(CompactError::Zero);
        }
        if exponent > 34 || (mantissa > 0xff && exponent > 33) || (mantissa > 0xffff && exponent > 32) {
            return Err(CompactError::Overflow);
        }
        let mut be = [0u8; 32];
        if exponent <= 3 {
            // Shift right: the value fits the last four bytes.
            let shift = 8u32.saturating_mul(3u32.saturating_sub(exponent));
            let value = mantissa.checked_shr(shift).unwrap_or(0);
            if value == 0 {
                return Err(CompactError::Zero);
            }
            if let Some(tail) = be.get_mut(28..) {
                tail.copy_from_slice(&value.to_be_bytes());
            }
        } else {
            // Mantissa byte k (0 = least significant) lands at little-endian position exponent-3+k.
            for (k, byte) in mantissa.to_le_bytes().iter().take(3).enumerate() {
                if *byte == 0 {
                    continue;
                }
                let le_pos = usize::try_from(exponent).ok().and_then(|e| e.checked_sub(3)?.checked_add(k));
                let slot = le_pos.and_then(|p| 31usize.checked_sub(p)).and_then(|i| be.get_mut(i));
                match slot {
                    Some(slot) => *slot = *byte,
                    None => return Err(CompactError::Overflow),
                }
            }
        }
        Ok(Target(be))
    }

    /// Does `hash` (internal byte order, i.e. little-endian) meet this target?
    pub fn is_met_by(&self, hash: &Hash256) -> bool {
        let mut be = hash.0;
        be.reverse();
        be <= self.0
    }

    /// Is this target at least as hard as `floor` (numerically no larger)?
    pub fn within(&self, floor: &Target) -> bool {
        self <= floor
    }

    pub fn to_be_bytes(&self) -> [u8; 32] {
        self.0
    }
}

impl fmt::Debug for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Target({})", hex::encode(self.0))
    }
}

/// Mainnet floor: 4x the target of Electrum's newest checkpoint at design time (block 953,567,
/// nBits `170240c3`, difficulty 124.9 T): `0x0240c3 * 4 = 0x09030c`, same exponent. 4x is the
/// most the retarget can ease in one period; the worst easing ever seen between any two periods
/// is 1.83x (spv-design.md section 4). Refresh it each release.
pub const MAINNET_FLOOR_BITS: u32 = 0x1709_030c;
/// Proof-of-work limit of mainnet, testnet3 and testnet4 (rust-bitcoin `units/src/pow.rs`). The
/// 20-minute rule lets any test-network block use it (BIP-94), so it is also their floor.
pub const TESTNET_FLOOR_BITS: u32 = 0x1d00_ffff;
/// Signet's pow limit; signet headers prove little without the challenge signature (BIP-325).
pub const SIGNET_FLOOR_BITS: u32 = 0x1e03_77ae;
/// Regtest's pow limit (about two hashes per block): no security, code paths only.
pub const REGTEST_FLOOR_BITS: u32 = 0x207f_ffff;

/// The default floor's nBits for a network.
pub fn default_floor_bits(network: Network) -> u32 {
    match network {
        Network::Mainnet => MAINNET_FLOOR_BITS,
        Network::Testnet | Network::Testnet4 => TESTNET_FLOOR_BITS,
        Network::Signet => SIGNET_FLOOR_BITS,
        Network::Regtest => REGTEST_FLOOR_BITS,
    }
}

/// The default floor for a network. The constants all decode, so this cannot fail in practice;
/// the `Result` keeps the no-panic rule without an `expect`.
pub fn default_floor(network: Network) -> Result<Target, CompactError> {
    Target::from_compact(default_floor_bits(network))
}

/// Parses an operator's floor override: 8 hex digits of nBits, e.g. `"1709030c"`.
pub fn parse_floor_bits(text: &str) -> Option<Target> {
    if text.len() != 8 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let bits = u32::from_str_radix(text, 16).ok()?;
    Target::from_compact(bits).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn be(hex_text: &str) -> [u8; 32] {
        hex::decode(format!("{hex_text:0>64}")).unwrap().try_into().unwrap()
    }

    /// The largest targets at each exponent that still fit 256 bits are accepted; one byte more
    /// overflows. The early range check and the byte loop agree, so swapping an `||` of the range
    /// check for `&&` changes nothing (the loop refuses the same values): those mutants are equivalent.
    #[test]
    fn the_widest_targets_fit_and_one_byte_more_overflows() {
        let fits = [
            (0x2200_00ff, be(&format!("ff{}", "00".repeat(31)))),
            (0x2100_ffff, be(&format!("ffff{}", "00".repeat(30)))),
            (0x207f_ffff, be(&format!("7fffff{}", "00".repeat(29)))),
        ];
        for (bits, target) in fits {
            assert_eq!(Target::from_compact(bits), Ok(Target(target)), "{bits:#x}");
        }
        for bits in [0x2300_0001, 0x2200_0100, 0x2101_0000] {
            assert_eq!(Target::from_compact(bits), Err(CompactError::Overflow), "{bits:#x}");
        }
        assert_eq!(CompactError::Negative.to_string(), "nBits is negative");
        assert_eq!(CompactError::Overflow.to_string(), "nBits overflows 256 bits");
        assert_eq!(CompactError::Zero.to_string(), "nBits is zero");
        let genesis = Target::from_compact(0x1d00_ffff).unwrap();
        let bytes = be(&format!("ffff{}", "00".repeat(26)));
        assert_eq!(genesis.to_be_bytes(), bytes);
        assert_eq!(format!("{genesis:?}"), format!("Target({})", hex::encode(bytes)));
    }

    #[test]
    fn known_targets() {
        // Genesis nBits 1d00ffff: 0x00ffff * 2^(8*(0x1d-3)).
        assert_eq!(Target::from_compact(0x1d00_ffff).unwrap().0, be(&format!("ffff{}", "0".repeat(52))));
        // Regtest 207fffff.
        assert_eq!(Target::from_compact(0x207f_ffff).unwrap().0, be(&format!("7fffff{}", "0".repeat(58))));
        // Block 169482's nBits 1a0b350c (bitcoinj block169482.dat).
        assert_eq!(Target::from_compact(0x1a0b_350c).unwrap().0, be(&format!("0b350c{}", "0".repeat(46))));
        // Small exponents shift right (Core's arith_uint256 tests: 0x01123456 -> 0x12, 0x02123456 -> 0x1234).
        assert_eq!(Target::from_compact(0x0112_3456).unwrap().0, be("12"));
        assert_eq!(Target::from_compact(0x0212_3456).unwrap().0, be("1234"));
        assert_eq!(Target::from_compact(0x0312_3456).unwrap().0, be("123456"));
        assert_eq!(Target::from_compact(0x0412_3456).unwrap().0, be("12345600"));
    }

    #[test]
    fn refuses_negative_overflow_and_zero() {
        // Core's arith_uint256_tests: 0x04923456 is negative, 0xff123456 overflows.
        assert_eq!(Target::from_compact(0x0492_3456), Err(CompactError::Negative));
        assert_eq!(Target::from_compact(0x01fe_dcba), Err(CompactError::Negative));
        assert_eq!(Target::from_compact(0xff12_3456), Err(CompactError::Overflow));
        assert_eq!(Target::from_compact(0x2301_0000), Err(CompactError::Overflow));
        assert_eq!(Target::from_compact(0x2201_0000), Err(CompactError::Overflow));
        assert_eq!(Target::from_compact(0x2200_0001).unwrap().0[0], 0x01);
        assert_eq!(Target::from_compact(0x0000_0000), Err(CompactError::Zero));
        assert_eq!(Target::from_compact(0x1d00_0000), Err(CompactError::Zero));
        assert_eq!(Target::from_compact(0x0100_3456), Err(CompactError::Zero));
        assert_eq!(Target::from_compact(0x0080_0000), Err(CompactError::Zero));
        for bits in [0u32, 1, 0x7fff_ffff, 0x8000_0000, u32::MAX, 0x2100_ffff, 0x2200_ffff] {
            let _ = Target::from_compact(bits);
        }
    }

    #[test]
    fn floors_derive_as_the_design_says() {
        // 4 x the target of Electrum checkpoint 472 (nBits 170240c3).
        let checkpoint = Target::from_compact(0x1702_40c3).unwrap().0;
        let floor = Target::from_compact(MAINNET_FLOOR_BITS).unwrap().0;
        let mut carry = 0u16;
        let mut times_four = [0u8; 32];
        for i in (0..32).rev() {
            let v = u16::from(checkpoint[i]) * 4 + carry;
            times_four[i] = (v & 0xff) as u8;
            carry = v >> 8;
        }
        assert_eq!(carry, 0);
        assert_eq!(times_four, floor);
        // Floors order from hardest to easiest.
        let f = |n| default_floor(n).unwrap();
        assert!(f(Network::Mainnet) < f(Network::Testnet));
        assert_eq!(f(Network::Testnet), f(Network::Testnet4));
        assert!(f(Network::Testnet) < f(Network::Signet));
        assert!(f(Network::Signet) < f(Network::Regtest));
        assert_eq!(parse_floor_bits("1709030c"), Some(f(Network::Mainnet)));
        assert_eq!(parse_floor_bits("1709030"), None);
        assert_eq!(parse_floor_bits("+709030c"), None);
        assert_eq!(parse_floor_bits("04923456"), None);
    }

    #[test]
    fn hash_against_target_is_little_endian() {
        let genesis = crate::spv::hash::Hash256::from_display_hex(
            "000000000019d6689c085ae165831e934ff763ae46a2a6c172b3f1b60a8ce26f",
        )
        .unwrap();
        assert!(Target::from_compact(0x1d00_ffff).unwrap().is_met_by(&genesis));
        // 0x1a0b350c is far harder than genesis's hash.
        assert!(!Target::from_compact(0x1a0b_350c).unwrap().is_met_by(&genesis));
        // Exactly equal meets.
        let t = Target::from_compact(0x2000_0001).unwrap();
        let mut le = t.0;
        le.reverse();
        assert!(t.is_met_by(&crate::spv::hash::Hash256(le)));
    }
}
