//! The whole check: an explorer's raw transaction, merkle proof and headers, verified together.

use super::hash::Hash256;
use super::header::{check_chain, ChainError, Header};
use super::merkle::{MerkleError, MerkleProof};
use super::target::Target;
use super::tx::{paid_to, parse_tx, TxError};
use std::fmt;

/// What an explorer served for one txid, and what we require of it.
#[derive(Debug, Clone, Copy)]
pub struct Evidence<'a> {
    /// The txid the client sent, internal byte order (`Hash256::from_display_hex` of the header value).
    pub txid: &'a Hash256,
    /// `/tx/:txid/hex`, hex-decoded.
    pub raw_tx: &'a [u8],
    /// `/tx/:txid/merkle-proof`, parsed.
    pub merkle: &'a MerkleProof,
    /// The header at `merkle.block_height` followed by the headers above it, lowest first.
    pub headers: &'a [Header],
    /// Our `pay_to` scriptPubKeys (`address::script_pubkey`).
    pub pay_to: &'a [Vec<u8>],
    /// Every header's target must be at least this hard.
    pub floor: &'a Target,
    /// Headers required (the route's confirmations, at least 1).
    pub min_depth: u32,
}

/// Facts established by proof of work, none taken from an explorer's word.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verified {
    /// Sum of the outputs paying one of our scripts, from the hashed bytes.
    pub paid_sats: u64,
    pub block_height: u32,
    pub block_hash: Hash256,
    /// The including header's own timestamp (for `max_age`).
    pub block_time: u32,
    /// Number of linked headers checked, the including one counted: confirmations proven, as far as
    /// this explorer's headers go (the quorum decides whether they are the best chain).
    pub depth: u32,
    /// Height and hash of the highest header checked: what a second explorer's
    /// `/block-height/{top_height}` must answer for the quorum.
    pub top_height: u32,
    pub top_hash: Hash256,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProofError {
    Tx(TxError),
    /// The raw transaction does not hash to the asked txid.
    TxidMismatch {
        computed: Hash256,
    },
    /// The transaction's stripped size is 64 bytes (CVE-2017-12842 shape; cannot pay an address).
    SixtyFourByteTx,
    /// Paid sum overflows (only a forged transaction could).
    AmountOverflow,
    Merkle(MerkleError),
    NoHeaders,
    /// The branch does not fold to the including header's merkle root.
    MerkleRootMismatch,
    Chain(ChainError),
    /// Fewer headers than the required depth.
    TooShallow {
        depth: u32,
        required: u32,
    },
    /// `block_height + depth - 1` does not fit a u32.
    HeightOverflow,
}

impl fmt::Display for ProofError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProofError::Tx(e) => write!(f, "raw transaction: {e}"),
            ProofError::TxidMismatch { computed } => {
                write!(f, "raw transaction hashes to {computed}, not the asked txid")
            }
            ProofError::SixtyFourByteTx => f.write_str("raw transaction is 64 bytes stripped (CVE-2017-12842 shape)"),
            ProofError::AmountOverflow => f.write_str("raw transaction's outputs to us overflow"),
            ProofError::Merkle(e) => write!(f, "merkle proof: {e}"),
            ProofError::NoHeaders => f.write_str("no block header to check the merkle proof against"),
            ProofError::MerkleRootMismatch => f.write_str("merkle branch does not fold to the block's merkle root"),
            ProofError::Chain(e) => write!(f, "header chain: {e}"),
            ProofError::TooShallow { depth, required } => {
                write!(f, "{depth} linked headers where {required} are required")
            }
            ProofError::HeightOverflow => f.write_str("block height overflows"),
        }
    }
}

/// Verifies a payment: the raw bytes hash to the txid, the outputs to us are summed from them, the
/// branch folds (with both guards) to the merkle root of `headers[0]`, and `headers` link by
/// prev-hash with each meeting its nBits target no easier than the floor. Only the first
/// `max(min_depth, 1)` headers are required; all given are checked.
pub fn verify(evidence: &Evidence<'_>) -> Result<Verified, ProofError> {
    let tx = parse_tx(evidence.raw_tx).map_err(ProofError::Tx)?;
    if &tx.txid != evidence.txid {
        return Err(ProofError::TxidMismatch { computed: tx.txid });
    }
    if tx.stripped_len == 64 {
        return Err(ProofError::SixtyFourByteTx);
    }
    let paid_sats = paid_to(&tx, evidence.pay_to).ok_or(ProofError::AmountOverflow)?;
    let root = evidence.merkle.root_for(&tx.txid).map_err(ProofError::Merkle)?;
    let including = evidence.headers.first().ok_or(ProofError::NoHeaders)?;
    if including.merkle_root != root {
        return Err(ProofError::MerkleRootMismatch);
    }
    check_chain(evidence.headers, evidence.floor).map_err(ProofError::Chain)?;
    let depth = u32::try_from(evidence.headers.len()).map_err(|_| ProofError::HeightOverflow)?;
    let required = evidence.min_depth.max(1);
    if depth < required {
        return Err(ProofError::TooShallow { depth, required });
    }
    let top = evidence.headers.last().ok_or(ProofError::NoHeaders)?;
    let top_height =
        evidence.merkle.block_height.checked_add(depth.saturating_sub(1)).ok_or(ProofError::HeightOverflow)?;
    Ok(Verified {
        paid_sats,
        block_height: evidence.merkle.block_height,
        block_hash: including.hash,
        block_time: including.time,
        depth,
        top_height,
        top_hash: top.hash,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::address::{script_pubkey, Network};
    use crate::spv::hash::dsha256;
    use crate::spv::header::HeaderError;
    use crate::spv::target::{default_floor, TESTNET_FLOOR_BITS};
    use crate::spv::vectors::mine;
    use crate::spv::vectors::*;

    fn h(text: &str) -> Hash256 {
        Hash256::from_display_hex(text).unwrap()
    }

    fn header(text: &str) -> Header {
        Header::from_hex_body(text.as_bytes()).unwrap()
    }

    /// Block 169482's tx 9: pays 6.474 BTC to 1B1... (output 0) and change to output 1.
    struct Case {
        txid: Hash256,
        raw: Vec<u8>,
        merkle: MerkleProof,
        headers: Vec<Header>,
        pay_to: Vec<Vec<u8>>,
        floor: Target,
    }

    fn case_169482() -> Case {
        let merkle =
            MerkleProof { block_height: 169_482, pos: 9, branch: B169482_TX9_BRANCH.iter().map(|t| h(t)).collect() };
        // The address of output 0's hash160 6cf42c3a...; built from the address string, as config does.
        let address =
            bs58::encode([&[0u8][..], &hex::decode("6cf42c3a2d8c1555a7209949b3233fd70afbf06f").unwrap()].concat())
                .with_check()
                .into_string();
        Case {
            txid: h(B169482_TX9_TXID),
            raw: hex::decode(B169482_TX9).unwrap(),
            merkle,
            headers: vec![header(B169482_HEADER)],
            pay_to: vec![script_pubkey(&address, Network::Mainnet).unwrap()],
            floor: Target::from_compact(0x1a0b_350c).unwrap(),
        }
    }

    fn run(c: &Case, min_depth: u32) -> Result<Verified, ProofError> {
        verify(&Evidence {
            txid: &c.txid,
            raw_tx: &c.raw,
            merkle: &c.merkle,
            headers: &c.headers,
            pay_to: &c.pay_to,
            floor: &c.floor,
            min_depth,
        })
    }

    #[test]
    fn refusals_say_what_did_not_verify() {
        let text = |e: ProofError| e.to_string();
        assert!(text(ProofError::Tx(crate::spv::TxError::Truncated)).starts_with("raw transaction: "));
        let computed = Hash256([0xab; 32]);
        assert_eq!(
            text(ProofError::TxidMismatch { computed }),
            format!("raw transaction hashes to {computed}, not the asked txid")
        );
        assert!(text(ProofError::SixtyFourByteTx).contains("64 bytes"));
        assert!(text(ProofError::AmountOverflow).contains("overflow"));
        assert_eq!(
            text(ProofError::Merkle(MerkleError::PosTooLarge)),
            "merkle proof: merkle proof position is beyond its branch"
        );
        assert!(text(ProofError::NoHeaders).contains("no block header"));
        assert!(text(ProofError::MerkleRootMismatch).contains("merkle root"));
        assert_eq!(
            text(ProofError::Chain(ChainError::BrokenLink { index: 3 })),
            "header chain: header 3 does not link to the one below it by prev-hash"
        );
        assert_eq!(text(ProofError::TooShallow { depth: 2, required: 6 }), "2 linked headers where 6 are required");
        assert!(text(ProofError::HeightOverflow).contains("overflows"));
    }

    #[test]
    fn honest_mainnet_payment_verifies() {
        let c = case_169482();
        let v = run(&c, 1).unwrap();
        assert_eq!(v.paid_sats, 647_499_350);
        assert_eq!(v.block_height, 169_482);
        assert_eq!(v.block_hash.to_display_hex(), B169482_HASH);
        assert_eq!(v.block_time, 1_330_781_454); // 2012-03-03, from the header bytes
        assert_eq!((v.depth, v.top_height, v.top_hash), (1, 169_482, v.block_hash));
    }

    #[test]
    fn block_170_with_six_confirmations() {
        let headers: Vec<Header> = HEADERS_170_176.iter().map(|t| header(t)).collect();
        let merkle = MerkleProof { block_height: 170, pos: 1, branch: vec![h(B170_COINBASE_TXID)] };
        let raw = hex::decode(B170_TX1).unwrap();
        let txid = h(B170_TX1_TXID);
        // Hal's P2PK output script (pay_to accepts any script bytes).
        let tx = crate::spv::tx::parse_tx(&raw).unwrap();
        let hal = tx.outputs[0].script_pubkey.to_vec();
        let floor = Target::from_compact(TESTNET_FLOOR_BITS).unwrap();
        let evidence = Evidence {
            txid: &txid,
            raw_tx: &raw,
            merkle: &merkle,
            headers: &headers,
            pay_to: std::slice::from_ref(&hal),
            floor: &floor,
            min_depth: 6,
        };
        let v = verify(&evidence).unwrap();
        assert_eq!(v.paid_sats, 1_000_000_000);
        assert_eq!((v.depth, v.top_height), (7, 176));
        assert_eq!(v.block_hash.to_display_hex(), B170_HASH);
        assert_eq!(v.top_hash, headers[6].hash);
        // Asking for 8 with 7 headers is too shallow.
        let deeper = Evidence { min_depth: 8, ..evidence };
        assert_eq!(verify(&deeper), Err(ProofError::TooShallow { depth: 7, required: 8 }));
        // Headers out of order: broken link.
        let mut swapped = headers.clone();
        swapped.swap(2, 3);
        let broken = Evidence { headers: &swapped, ..evidence };
        assert_eq!(verify(&broken), Err(ProofError::Chain(ChainError::BrokenLink { index: 2 })));
        // Below today's mainnet floor: refused.
        let mainnet = default_floor(Network::Mainnet).unwrap();
        let strict = Evidence { floor: &mainnet, ..evidence };
        assert!(matches!(verify(&strict), Err(ProofError::Chain(ChainError::Work { index: 0, .. }))));
    }

    #[test]
    fn segwit_coinbase_verifies_against_its_block() {
        let raw = hex::decode(B481829_COINBASE).unwrap();
        let txid = h(B481829_COINBASE_TXID);
        let merkle = MerkleProof {
            block_height: 481_829,
            pos: 0,
            branch: B481829_COINBASE_BRANCH.iter().map(|t| h(t)).collect(),
        };
        let headers = [header(B481829_HEADER)];
        let floor = Target::from_compact(0x1801_3ce9).unwrap();
        let pay_to = [hex::decode("76a914cef3550ff9e637ddd120717d43fc21f8a563caf888ac").unwrap()];
        let evidence = Evidence {
            txid: &txid,
            raw_tx: &raw,
            merkle: &merkle,
            headers: &headers,
            pay_to: &pay_to,
            floor: &floor,
            min_depth: 1,
        };
        assert_eq!(verify(&evidence).unwrap().paid_sats, 1_749_653_928);
        // The wtxid is not the txid.
        let wtxid = h(B481829_COINBASE_WTXID);
        let by_wtxid = Evidence { txid: &wtxid, ..evidence };
        assert!(matches!(verify(&by_wtxid), Err(ProofError::TxidMismatch { .. })));
    }

    #[test]
    fn lie_raw_tx_does_not_hash_to_txid() {
        let mut c = case_169482();
        // Inflate output 0 by one satoshi: the bytes no longer hash to the txid.
        let at = c.raw.len() - 4 - (8 + 1 + 25) * 2;
        c.raw[at] = c.raw[at].wrapping_add(1);
        assert!(matches!(run(&c, 1), Err(ProofError::TxidMismatch { .. })));
        // Another real transaction served for this txid.
        let mut c = case_169482();
        c.raw = hex::decode(B170_TX1).unwrap();
        assert_eq!(run(&c, 1), Err(ProofError::TxidMismatch { computed: h(B170_TX1_TXID) }));
        // Garbage.
        let mut c = case_169482();
        c.raw = vec![1, 2, 3];
        assert_eq!(run(&c, 1), Err(ProofError::Tx(TxError::Truncated)));
    }

    #[test]
    fn lie_wrong_merkle_branch_or_position() {
        let mut c = case_169482();
        c.merkle.branch[3].0[31] ^= 0x80;
        assert_eq!(run(&c, 1), Err(ProofError::MerkleRootMismatch));
        let mut c = case_169482();
        c.merkle.pos = 8;
        assert_eq!(run(&c, 1), Err(ProofError::MerkleRootMismatch));
        // A real proof of this tx checked against another block's header.
        let mut c = case_169482();
        c.headers = vec![header(B481829_HEADER)];
        c.floor = Target::from_compact(TESTNET_FLOOR_BITS).unwrap();
        assert_eq!(run(&c, 1), Err(ProofError::MerkleRootMismatch));
        let mut c = case_169482();
        c.headers.clear();
        assert_eq!(run(&c, 1), Err(ProofError::NoHeaders));
    }

    #[test]
    fn lie_duplicated_leaf() {
        // Block 169482's last tx (pos 13) claimed at phantom pos 15.
        let mut c = case_169482();
        c.txid = h(B169482_TX13_TXID);
        c.raw = Vec::new();
        c.merkle.branch = B169482_TX13_BRANCH.iter().map(|t| h(t)).collect();
        c.merkle.pos = 15;
        // Without the raw tx the check stops at the tx; test the fold through root_for.
        assert_eq!(c.merkle.root_for(&c.txid), Err(MerkleError::LeftSiblingDuplicate { level: 1 }));
    }

    #[test]
    fn lie_64_byte_tx() {
        // Electrum's mined 64-byte tx, proven at pos 3 of its (testnet) block: refused as a payment.
        let raw = hex::decode(ELECTRUM_64_BYTE_TX).unwrap();
        let txid = dsha256(&raw);
        let merkle =
            MerkleProof { block_height: 1, pos: 3, branch: ELECTRUM_64_BYTE_BRANCH.iter().map(|t| h(t)).collect() };
        let floor = Target::from_compact(TESTNET_FLOOR_BITS).unwrap();
        let headers = [header(HEADERS_0_10[0])];
        let e = Evidence {
            txid: &txid,
            raw_tx: &raw,
            merkle: &merkle,
            headers: &headers,
            pay_to: &[],
            floor: &floor,
            min_depth: 1,
        };
        assert_eq!(verify(&e), Err(ProofError::SixtyFourByteTx));
    }

    #[test]
    fn lie_low_work_fake_chain() {
        // A forger serves block 169482's tx 9 "confirmed" in a block of his own, mined at regtest
        // difficulty on top of real block 169482, with two more fake blocks above it.
        let c = case_169482();
        let root = c.txid; // a one-transaction block: the txid is the merkle root
        let b1 = mine(h(B169482_HASH), root, 1_330_716_000, 0x207f_ffff);
        let b2 = mine(b1.hash, root, 1_330_716_600, 0x207f_ffff);
        let b3 = mine(b2.hash, root, 1_330_717_200, 0x207f_ffff);
        let fake = Case {
            merkle: MerkleProof { block_height: 169_483, pos: 0, branch: vec![] },
            headers: vec![b1, b2, b3],
            ..c
        };
        // Everything but the floor checks out: with a regtest floor the lie would pass.
        let mut regtest = Case { floor: default_floor(Network::Regtest).unwrap(), ..fake };
        assert_eq!(run(&regtest, 3).unwrap().paid_sats, 647_499_350);
        regtest.floor = default_floor(Network::Mainnet).unwrap();
        assert_eq!(
            run(&regtest, 3),
            Err(ProofError::Chain(ChainError::Work { index: 0, error: HeaderError::BelowFloor }))
        );
        regtest.floor = Target::from_compact(TESTNET_FLOOR_BITS).unwrap();
        assert!(matches!(run(&regtest, 3), Err(ProofError::Chain(ChainError::Work { index: 0, .. }))));
    }

    #[test]
    fn lie_header_claims_work_it_did_not_do() {
        // The fake block claims mainnet-floor nBits but was mined at regtest difficulty.
        let c = case_169482();
        let easy = mine(h(B169482_HASH), c.txid, 1_330_716_000, 0x207f_ffff);
        let mut claimed = easy;
        claimed.bits = crate::spv::target::MAINNET_FLOOR_BITS;
        let claimed = Header::from_bytes(&claimed.to_bytes()).unwrap();
        let fake = Case {
            merkle: MerkleProof { block_height: 169_483, pos: 0, branch: vec![] },
            headers: vec![claimed],
            floor: default_floor(Network::Mainnet).unwrap(),
            ..c
        };
        assert_eq!(
            run(&fake, 1),
            Err(ProofError::Chain(ChainError::Work { index: 0, error: HeaderError::HashAboveTarget }))
        );
    }
}
