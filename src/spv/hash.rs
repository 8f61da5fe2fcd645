//! Double SHA-256 and the two byte orders of a bitcoin hash.

use sha2::{Digest, Sha256};
use std::fmt;

/// A 32-byte hash in internal order: as SHA-256 produces it and as it sits inside transactions and
/// headers. Explorers print txids, block hashes and merkle branch entries byte-reversed ("display
/// order"); convert only at the edge, with [`Hash256::from_display_hex`] and [`Hash256::to_display_hex`].
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Hash256(pub [u8; 32]);

impl Hash256 {
    /// Parses 64 hex digits (either case) in display order.
    pub fn from_display_hex(text: &str) -> Option<Hash256> {
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(text, &mut bytes).ok()?;
        bytes.reverse();
        Some(Hash256(bytes))
    }

    /// Lowercase hex in display order, as explorers print it.
    pub fn to_display_hex(&self) -> String {
        let mut bytes = self.0;
        bytes.reverse();
        hex::encode(bytes)
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Debug for Hash256 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_display_hex())
    }
}

impl fmt::Display for Hash256 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_display_hex())
    }
}

/// SHA-256 of SHA-256: txids, merkle nodes and block hashes.
pub fn dsha256(data: &[u8]) -> Hash256 {
    let first = Sha256::digest(data);
    Hash256(Sha256::digest(first).into())
}

/// Decodes an explorer's hex body (`/tx/:txid/hex`, `/block/:hash/header`). Surrounding ASCII
/// whitespace is tolerated; anything else that is not an even number of hex digits is refused.
pub fn decode_hex_body(body: &[u8]) -> Result<Vec<u8>, HexError> {
    let text = body.trim_ascii();
    if !text.len().is_multiple_of(2) {
        return Err(HexError::OddLength);
    }
    hex::decode(text).map_err(|_| HexError::NotHex)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HexError {
    OddLength,
    NotHex,
}

impl fmt::Display for HexError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HexError::OddLength => f.write_str("hex body has an odd number of digits"),
            HexError::NotHex => f.write_str("hex body has a character that is not a hex digit"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The bytes are kept in internal order; logs (Debug, Display) print the explorers' order.
    #[test]
    fn a_hash_shows_itself_in_display_order_and_keeps_internal_order() {
        let genesis = "000000000019d6689c085ae165831e934ff763ae46a2a6c172b3f1b60a8ce26f";
        let h = Hash256::from_display_hex(genesis).unwrap();
        assert_eq!((h.as_bytes()[0], h.as_bytes()[31]), (0x6f, 0x00));
        assert_eq!(h.as_bytes(), &h.0);
        assert_eq!((format!("{h}"), format!("{h:?}")), (genesis.to_string(), genesis.to_string()));
    }

    #[test]
    fn hex_refusals_say_what_is_wrong() {
        assert_eq!(HexError::OddLength.to_string(), "hex body has an odd number of digits");
        assert_eq!(HexError::NotHex.to_string(), "hex body has a character that is not a hex digit");
    }

    #[test]
    fn genesis_header_hashes_to_its_display_hash() {
        // Block 0's 80-byte header and hash (Bitcoin Core chainparams.cpp; bitcoinj first-100k-blocks.dat).
        let header = hex::decode(crate::spv::vectors::HEADERS_0_10[0]).unwrap();
        assert_eq!(
            dsha256(&header).to_display_hex(),
            "000000000019d6689c085ae165831e934ff763ae46a2a6c172b3f1b60a8ce26f"
        );
    }

    #[test]
    fn display_order_round_trips_and_is_reversed() {
        let text = "000000000019d6689c085ae165831e934ff763ae46a2a6c172b3f1b60a8ce26f";
        let h = Hash256::from_display_hex(text).unwrap();
        assert_eq!(h.0[31], 0x00);
        assert_eq!(h.0[0], 0x6f);
        assert_eq!(h.to_display_hex(), text);
        assert_eq!(Hash256::from_display_hex(&text.to_uppercase()).unwrap(), h);
        for bad in ["", "00", &text[1..], &format!("{text}00"), &text.replace('f', "g")] {
            assert_eq!(Hash256::from_display_hex(bad), None, "{bad}");
        }
    }

    #[test]
    fn hex_bodies() {
        assert_eq!(decode_hex_body(b"00ff\n").unwrap(), vec![0, 255]);
        assert_eq!(decode_hex_body(b"0ff"), Err(HexError::OddLength));
        assert_eq!(decode_hex_body(b"zz"), Err(HexError::NotHex));
        assert_eq!(decode_hex_body(b"00 ff"), Err(HexError::OddLength));
        assert_eq!(decode_hex_body("é".as_bytes()), Err(HexError::NotHex));
    }
}
