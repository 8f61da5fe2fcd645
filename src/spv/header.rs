//! 80-byte block headers: parsing, hash, proof of work against a floor, and chains by prev-hash.

use super::hash::{decode_hex_body, dsha256, Hash256};
use super::target::{CompactError, Target};
use serde::Deserialize;
use std::fmt;

pub const HEADER_LEN: usize = 80;

/// A block header's fields. `hash` is computed from the exact 80 bytes it was parsed from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub version: u32,
    pub prev: Hash256,
    pub merkle_root: Hash256,
    pub time: u32,
    pub bits: u32,
    pub nonce: u32,
    pub hash: Hash256,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderError {
    /// Not exactly 80 bytes (160 hex digits).
    Length(usize),
    NotHex,
    BadBits(CompactError),
    /// The header's hash does not meet its own nBits target.
    HashAboveTarget,
    /// The header's target is easier than the floor.
    BelowFloor,
}

impl fmt::Display for HeaderError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HeaderError::Length(n) => write!(f, "block header is {n} bytes, not 80"),
            HeaderError::NotHex => f.write_str("block header is not hex"),
            HeaderError::BadBits(e) => write!(f, "block header {e}"),
            HeaderError::HashAboveTarget => f.write_str("block hash does not meet its own nBits target"),
            HeaderError::BelowFloor => f.write_str("block target is easier than the difficulty floor"),
        }
    }
}

fn word(bytes: &[u8; HEADER_LEN], at: usize) -> u32 {
    let mut w = [0u8; 4];
    if let Some(src) = bytes.get(at..at.saturating_add(4)) {
        w.copy_from_slice(src);
    }
    u32::from_le_bytes(w)
}

fn hash_at(bytes: &[u8; HEADER_LEN], at: usize) -> Hash256 {
    let mut h = [0u8; 32];
    if let Some(src) = bytes.get(at..at.saturating_add(32)) {
        h.copy_from_slice(src);
    }
    Hash256(h)
}

impl Header {
    pub fn from_bytes(bytes: &[u8]) -> Result<Header, HeaderError> {
        let raw: &[u8; HEADER_LEN] = bytes.try_into().map_err(|_| HeaderError::Length(bytes.len()))?;
        Ok(Header {
            version: word(raw, 0),
            prev: hash_at(raw, 4),
            merkle_root: hash_at(raw, 36),
            time: word(raw, 68),
            bits: word(raw, 72),
            nonce: word(raw, 76),
            hash: dsha256(raw),
        })
    }

    /// Parses the body of `GET /block/:hash/header`: 160 hex digits.
    pub fn from_hex_body(body: &[u8]) -> Result<Header, HeaderError> {
        let bytes = decode_hex_body(body).map_err(|_| HeaderError::NotHex)?;
        Header::from_bytes(&bytes)
    }

    /// The consensus serialization (what the hash commits to).
    pub fn to_bytes(&self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        let parts: [&[u8]; 6] = [
            &self.version.to_le_bytes(),
            &self.prev.0,
            &self.merkle_root.0,
            &self.time.to_le_bytes(),
            &self.bits.to_le_bytes(),
            &self.nonce.to_le_bytes(),
        ];
        let mut at = 0usize;
        for part in parts {
            let end = at.saturating_add(part.len());
            if let Some(dst) = out.get_mut(at..end) {
                dst.copy_from_slice(part);
            }
            at = end;
        }
        out
    }

    pub fn target(&self) -> Result<Target, HeaderError> {
        Target::from_compact(self.bits).map_err(HeaderError::BadBits)
    }

    /// The header's own work: its hash meets its nBits target, and that target is no easier than
    /// `floor` (an attacker picks nBits, so only the floor makes the work cost anything).
    pub fn check_work(&self, floor: &Target) -> Result<(), HeaderError> {
        let target = self.target()?;
        if !target.within(floor) {
            return Err(HeaderError::BelowFloor);
        }
        if !target.is_met_by(&self.hash) {
            return Err(HeaderError::HashAboveTarget);
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChainError {
    /// `headers[index].prev` is not the hash of `headers[index - 1]`.
    BrokenLink { index: usize },
    /// `headers[index]` fails its own proof of work or the floor.
    Work { index: usize, error: HeaderError },
}

impl fmt::Display for ChainError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ChainError::BrokenLink { index } => {
                write!(f, "header {index} does not link to the one below it by prev-hash")
            }
            ChainError::Work { index, error } => write!(f, "header {index}: {error}"),
        }
    }
}

/// Checks consecutive headers (lowest first): each links to the previous by prev-hash and each
/// carries its own proof of work at or above the floor.
pub fn check_chain(headers: &[Header], floor: &Target) -> Result<(), ChainError> {
    let mut below: Option<&Header> = None;
    for (index, header) in headers.iter().enumerate() {
        if let Some(prev) = below {
            if header.prev != prev.hash {
                return Err(ChainError::BrokenLink { index });
            }
        }
        header.check_work(floor).map_err(|error| ChainError::Work { index, error })?;
        below = Some(header);
    }
    Ok(())
}

/// One element of Esplora's `GET /blocks/:height` array (electrs `BlockValue`), with just the
/// fields a header is rebuilt from. `difficulty` and the rest are ignored.
#[derive(Debug, Deserialize)]
struct BlockValue {
    id: String,
    height: u32,
    version: u32,
    timestamp: u32,
    merkle_root: String,
    previousblockhash: Option<String>,
    nonce: u32,
    bits: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BlocksError {
    Json(String),
    BadHash {
        height: u32,
    },
    /// The rebuilt header does not hash to the `id` the explorer gave.
    IdMismatch {
        height: u32,
    },
    /// Heights not strictly descending by one.
    NotConsecutive {
        height: u32,
    },
    TooMany(usize),
}

impl fmt::Display for BlocksError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BlocksError::Json(e) => write!(f, "blocks list is not the expected JSON: {e}"),
            BlocksError::BadHash { height } => write!(f, "block {height} has a hash that is not 64 hex digits"),
            BlocksError::IdMismatch { height } => write!(f, "block {height}'s fields do not hash to its id"),
            BlocksError::NotConsecutive { height } => write!(f, "block {height} is not one below the previous"),
            BlocksError::TooMany(n) => write!(f, "blocks list has {n} entries"),
        }
    }
}

/// Esplora returns 10 blocks per page (mempool's electrs: configurable); more is refused.
pub const MAX_BLOCKS_PER_PAGE: usize = 100;

/// Parses `GET /blocks/:height` (descending heights) into `(height, header)` pairs, lowest first.
/// Each header is rebuilt from the JSON fields and must hash to the given `id`; heights must be
/// consecutive. Linking, work and floor are [`check_chain`]'s job.
pub fn parse_blocks_json(body: &[u8]) -> Result<Vec<(u32, Header)>, BlocksError> {
    let values: Vec<BlockValue> = serde_json::from_slice(body).map_err(|e| BlocksError::Json(e.to_string()))?;
    if values.len() > MAX_BLOCKS_PER_PAGE {
        return Err(BlocksError::TooMany(values.len()));
    }
    let mut out = Vec::with_capacity(values.len());
    for v in values.iter().rev() {
        let height = v.height;
        let bad = || BlocksError::BadHash { height };
        let prev = match &v.previousblockhash {
            Some(text) => Hash256::from_display_hex(text).ok_or_else(bad)?,
            None => Hash256([0; 32]),
        };
        let fields = Header {
            version: v.version,
            prev,
            merkle_root: Hash256::from_display_hex(&v.merkle_root).ok_or_else(bad)?,
            time: v.timestamp,
            bits: v.bits,
            nonce: v.nonce,
            hash: Hash256([0; 32]),
        };
        let header = Header::from_bytes(&fields.to_bytes()).map_err(|_| bad())?;
        if Hash256::from_display_hex(&v.id).ok_or_else(bad)? != header.hash {
            return Err(BlocksError::IdMismatch { height });
        }
        if let Some((below, _)) = out.last() {
            if height.checked_sub(1) != Some(*below) {
                return Err(BlocksError::NotConsecutive { height });
            }
        }
        out.push((height, header));
    }
    Ok(out)
}

/// Picks the headers at `height .. height + depth` out of parsed `/blocks` pages (any order, any
/// overlap), lowest first: what [`crate::spv::proof::Evidence::headers`] wants. `None` when one is
/// missing or a height appears twice with different headers.
pub fn headers_at(blocks: &[(u32, Header)], height: u32, depth: u32) -> Option<Vec<Header>> {
    let mut out = Vec::new();
    for offset in 0..depth {
        let h = height.checked_add(offset)?;
        let mut found = blocks.iter().filter(|(bh, _)| *bh == h).map(|(_, header)| header);
        let first = found.next()?;
        if found.any(|other| other != first) {
            return None;
        }
        out.push(*first);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spv::target::{default_floor, REGTEST_FLOOR_BITS, TESTNET_FLOOR_BITS};
    use crate::spv::vectors::*;

    pub(crate) fn header(hex_text: &str) -> Header {
        Header::from_hex_body(hex_text.as_bytes()).unwrap()
    }

    fn floor(bits: u32) -> Target {
        Target::from_compact(bits).unwrap()
    }

    #[test]
    fn parses_real_headers() {
        let genesis = header(HEADERS_0_10[0]);
        assert_eq!(genesis.hash.to_display_hex(), "000000000019d6689c085ae165831e934ff763ae46a2a6c172b3f1b60a8ce26f");
        assert_eq!(genesis.time, 1_231_006_505);
        assert_eq!(genesis.bits, 0x1d00_ffff);
        assert_eq!(genesis.nonce, 2_083_236_893);
        assert_eq!(genesis.merkle_root.to_display_hex(), GENESIS_COINBASE_TXID);
        assert_eq!(genesis.to_bytes().to_vec(), hex::decode(HEADERS_0_10[0]).unwrap());
        let b = header(B481829_HEADER);
        assert_eq!(b.hash.to_display_hex(), B481829_HASH);
        assert_eq!(b.merkle_root.to_display_hex(), "f06f697be2cac7af7ed8cd0b0b81eaa1a39e444c6ebd3697e35ab34461b6c58d");
        // mempool.space's documented /block/:hash/header answer for block 690557.
        assert_eq!(header(MEMPOOL_DOCS_HEADER_690557).hash.to_display_hex(), MEMPOOL_DOCS_HASH_690557);
        assert_eq!(Header::from_hex_body(b"00"), Err(HeaderError::Length(1)));
        assert_eq!(Header::from_hex_body(&[b'0'; 162]), Err(HeaderError::Length(81)));
        assert_eq!(Header::from_hex_body(&[b'x'; 160]), Err(HeaderError::NotHex));
    }

    #[test]
    fn real_chains_link_and_carry_work() {
        let chain: Vec<Header> = HEADERS_0_10.iter().map(|h| header(h)).collect();
        assert_eq!(check_chain(&chain, &floor(TESTNET_FLOOR_BITS)), Ok(()));
        let chain: Vec<Header> = HEADERS_170_176.iter().map(|h| header(h)).collect();
        assert_eq!(check_chain(&chain, &floor(TESTNET_FLOOR_BITS)), Ok(()));
        for h in [B169482_HEADER, B481829_HEADER, MEMPOOL_DOCS_HEADER_690557, MEMPOOL_DOCS_HEADER_363348] {
            assert_eq!(header(h).check_work(&floor(TESTNET_FLOOR_BITS)), Ok(()));
        }
        assert_eq!(check_chain(&[], &floor(TESTNET_FLOOR_BITS)), Ok(()));
    }

    #[test]
    fn lie_broken_prev_hash_link() {
        let mut chain: Vec<Header> = HEADERS_0_10.iter().map(|h| header(h)).collect();
        chain.swap(4, 5);
        assert_eq!(check_chain(&chain, &floor(TESTNET_FLOOR_BITS)), Err(ChainError::BrokenLink { index: 4 }));
        // A gap (block 2 missing) is a broken link too.
        let gap = [header(HEADERS_0_10[0]), header(HEADERS_0_10[1]), header(HEADERS_0_10[3])];
        assert_eq!(check_chain(&gap, &floor(TESTNET_FLOOR_BITS)), Err(ChainError::BrokenLink { index: 2 }));
    }

    #[test]
    fn lie_header_below_the_floor() {
        // Real 2009 headers have real work, but far less than today's mainnet floor.
        let chain: Vec<Header> = HEADERS_0_10.iter().map(|h| header(h)).collect();
        let mainnet = default_floor(crate::address::Network::Mainnet).unwrap();
        assert_eq!(check_chain(&chain, &mainnet), Err(ChainError::Work { index: 0, error: HeaderError::BelowFloor }));
        // Block 169482 (nBits 1a0b350c) passes a floor at its own difficulty and fails one 2x harder.
        let b = header(B169482_HEADER);
        assert_eq!(b.check_work(&floor(0x1a0b_350c)), Ok(()));
        assert_eq!(b.check_work(&floor(0x1a05_9a86)), Err(HeaderError::BelowFloor));
    }

    #[test]
    fn lie_hash_misses_its_own_target() {
        // Block 1 with another nonce: same claimed nBits, but its hash no longer meets them.
        let mut bytes = hex::decode(HEADERS_0_10[1]).unwrap();
        bytes[76] ^= 1;
        let forged = Header::from_bytes(&bytes).unwrap();
        assert_eq!(forged.check_work(&floor(TESTNET_FLOOR_BITS)), Err(HeaderError::HashAboveTarget));
        // Block 1 claiming 256x more work than it did.
        let mut bytes = hex::decode(HEADERS_0_10[1]).unwrap();
        bytes[72..76].copy_from_slice(&0x1c00_ffffu32.to_le_bytes());
        let forged = Header::from_bytes(&bytes).unwrap();
        assert_eq!(forged.check_work(&floor(TESTNET_FLOOR_BITS)), Err(HeaderError::HashAboveTarget));
        // A negative nBits.
        bytes[72..76].copy_from_slice(&0x1d80_ffffu32.to_le_bytes());
        let forged = Header::from_bytes(&bytes).unwrap();
        assert_eq!(forged.check_work(&floor(REGTEST_FLOOR_BITS)), Err(HeaderError::BadBits(CompactError::Negative)));
    }

    #[test]
    fn blocks_json_rebuilds_real_headers() {
        // mempool.space's documented GET /api/blocks/730000 answer (first two elements).
        let parsed = parse_blocks_json(MEMPOOL_DOCS_BLOCKS_730000.as_bytes()).unwrap();
        assert_eq!(parsed.len(), 2);
        assert_eq!(parsed[0].0, 729_999);
        assert_eq!(parsed[1].0, 730_000);
        assert_eq!(
            parsed[1].1.hash.to_display_hex(),
            "0000000000000000000384f28cb3b9cf4377a39cfd6c29ae9466951de38c0529"
        );
        let headers: Vec<Header> = parsed.iter().map(|(_, h)| *h).collect();
        assert_eq!(check_chain(&headers, &floor(0x1709_d897)), Ok(()));
        // Today's mainnet floor is harder than 2022's difficulty.
        let mainnet = default_floor(crate::address::Network::Mainnet).unwrap();
        assert!(check_chain(&headers, &mainnet).is_err());
    }

    #[test]
    fn headers_at_picks_consecutive_heights() {
        let parsed = parse_blocks_json(MEMPOOL_DOCS_BLOCKS_730000.as_bytes()).unwrap();
        let both = headers_at(&parsed, 729_999, 2).unwrap();
        assert_eq!(both.iter().map(|h| h.hash).collect::<Vec<_>>(), vec![parsed[0].1.hash, parsed[1].1.hash]);
        assert_eq!(headers_at(&parsed, 730_000, 1).unwrap(), vec![parsed[1].1]);
        assert_eq!(headers_at(&parsed, 730_000, 2), None);
        assert_eq!(headers_at(&parsed, 729_998, 1), None);
        assert_eq!(headers_at(&parsed, u32::MAX, 2), None);
        assert_eq!(headers_at(&parsed, 5, 0), Some(vec![]));
        // Two pages that disagree about a height.
        let mut conflicting = parsed.clone();
        conflicting.push((730_000, parsed[0].1));
        assert_eq!(headers_at(&conflicting, 730_000, 1), None);
    }

    #[test]
    fn blocks_json_lies() {
        let doc = MEMPOOL_DOCS_BLOCKS_730000;
        let nonce_lie = doc.replacen("\"nonce\": 3580664066", "\"nonce\": 3580664067", 1);
        assert_eq!(parse_blocks_json(nonce_lie.as_bytes()), Err(BlocksError::IdMismatch { height: 730_000 }));
        let height_lie = doc.replacen("\"height\": 729999", "\"height\": 729998", 1);
        assert_eq!(parse_blocks_json(height_lie.as_bytes()), Err(BlocksError::NotConsecutive { height: 730_000 }));
        let bad_hash = doc.replacen("\"merkle_root\": \"e", "\"merkle_root\": \"x", 1);
        assert_eq!(parse_blocks_json(bad_hash.as_bytes()), Err(BlocksError::BadHash { height: 730_000 }));
        assert!(matches!(parse_blocks_json(b"{}"), Err(BlocksError::Json(_))));
        assert_eq!(parse_blocks_json(b"[]"), Ok(vec![]));
    }

    /// A page of `MAX_BLOCKS_PER_PAGE` consecutive blocks is read; one more is refused unread.
    #[test]
    fn a_page_holds_at_most_the_limit() {
        let page = |n: u32| {
            let mut prev = Hash256([0; 32]);
            let mut blocks = Vec::new();
            for height in 0..n {
                let header = Header {
                    version: 1,
                    prev,
                    merkle_root: Hash256([3; 32]),
                    time: height,
                    bits: 0x207f_ffff,
                    nonce: 0,
                    hash: Hash256([0; 32]),
                };
                let id = dsha256(&header.to_bytes());
                blocks.push(serde_json::json!({
                    "id": id.to_display_hex(), "height": height, "version": 1, "timestamp": height,
                    "merkle_root": header.merkle_root.to_display_hex(), "nonce": 0, "bits": 0x207f_ffff_u32,
                    "previousblockhash": (height > 0).then(|| prev.to_display_hex()),
                }));
                prev = id;
            }
            blocks.reverse();
            serde_json::to_vec(&blocks).unwrap()
        };
        let limit = u32::try_from(MAX_BLOCKS_PER_PAGE).unwrap();
        assert_eq!(parse_blocks_json(&page(limit)).map(|v| v.len()), Ok(MAX_BLOCKS_PER_PAGE));
        assert_eq!(parse_blocks_json(&page(limit + 1)), Err(BlocksError::TooMany(MAX_BLOCKS_PER_PAGE + 1)));
    }

    #[test]
    fn refusals_say_what_is_wrong_with_headers_and_pages() {
        assert_eq!(HeaderError::Length(79).to_string(), "block header is 79 bytes, not 80");
        assert_eq!(HeaderError::NotHex.to_string(), "block header is not hex");
        assert_eq!(HeaderError::BadBits(CompactError::Zero).to_string(), "block header nBits is zero");
        assert_eq!(HeaderError::HashAboveTarget.to_string(), "block hash does not meet its own nBits target");
        assert_eq!(HeaderError::BelowFloor.to_string(), "block target is easier than the difficulty floor");
        assert_eq!(BlocksError::Json("eof".into()).to_string(), "blocks list is not the expected JSON: eof");
        assert_eq!(BlocksError::BadHash { height: 7 }.to_string(), "block 7 has a hash that is not 64 hex digits");
        assert_eq!(BlocksError::IdMismatch { height: 7 }.to_string(), "block 7's fields do not hash to its id");
        assert_eq!(BlocksError::NotConsecutive { height: 7 }.to_string(), "block 7 is not one below the previous");
        assert_eq!(BlocksError::TooMany(101).to_string(), "blocks list has 101 entries");
    }
}
