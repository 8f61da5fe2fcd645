//! Esplora's `GET /tx/:txid/merkle-proof` (Electrum's `blockchain.transaction.get_merkle` format) and
//! folding its branch up to a merkle root, with the guards against CVE-2012-2459 and CVE-2017-12842.

use super::hash::{dsha256, Hash256};
use super::tx::is_64_byte_tx;
use serde::Deserialize;
use std::fmt;

/// A block holds at most 4,000,000 WU / 240 WU = 16,666 transactions < 2^15, so no honest branch is
/// longer (spv-design.md section 3.3).
pub const MAX_BRANCH_LEN: usize = 15;

/// A parsed merkle proof; `branch` is in internal byte order, leaf level first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MerkleProof {
    pub block_height: u32,
    pub pos: u32,
    pub branch: Vec<Hash256>,
}

#[derive(Debug, Deserialize)]
struct MerkleProofJson {
    block_height: u32,
    merkle: Vec<String>,
    pos: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MerkleError {
    Json(String),
    /// A branch entry is not 64 hex digits.
    BadEntry(usize),
    TooLong(usize),
    /// CVE-2012-2459: a sibling equal to the running hash on the LEFT, i.e. a phantom position in
    /// a duplicated subtree. Honest duplicates (the odd last node) only appear on the right.
    LeftSiblingDuplicate {
        level: usize,
    },
    /// CVE-2017-12842: the 64 bytes hashed at this level parse as a transaction, so the "leaf"
    /// could be half of a real 64-byte transaction rather than a transaction of its own.
    InnerNodeIsTransaction {
        level: usize,
    },
    /// `pos` has bits above the branch length.
    PosTooLarge,
}

impl fmt::Display for MerkleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MerkleError::Json(e) => write!(f, "merkle proof is not the expected JSON: {e}"),
            MerkleError::BadEntry(i) => write!(f, "merkle branch entry {i} is not 64 hex digits"),
            MerkleError::TooLong(n) => write!(f, "merkle branch has {n} entries, more than {MAX_BRANCH_LEN}"),
            MerkleError::LeftSiblingDuplicate { level } => {
                write!(f, "merkle branch duplicates the running hash as a left sibling at level {level}")
            }
            MerkleError::InnerNodeIsTransaction { level } => {
                write!(f, "merkle node at level {level} parses as a 64-byte transaction")
            }
            MerkleError::PosTooLarge => f.write_str("merkle proof position is beyond its branch"),
        }
    }
}

impl MerkleProof {
    /// Parses the JSON body. Entries are printed byte-reversed (display order) and are turned
    /// back into internal order here.
    pub fn from_json(body: &[u8]) -> Result<MerkleProof, MerkleError> {
        let json: MerkleProofJson = serde_json::from_slice(body).map_err(|e| MerkleError::Json(e.to_string()))?;
        if json.merkle.len() > MAX_BRANCH_LEN {
            return Err(MerkleError::TooLong(json.merkle.len()));
        }
        let branch = json
            .merkle
            .iter()
            .enumerate()
            .map(|(i, text)| Hash256::from_display_hex(text).ok_or(MerkleError::BadEntry(i)))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(MerkleProof { block_height: json.block_height, pos: json.pos, branch })
    }

    /// The merkle root this proof commits `txid` (internal order) to.
    pub fn root_for(&self, txid: &Hash256) -> Result<Hash256, MerkleError> {
        fold_branch(txid, &self.branch, self.pos)
    }
}

/// Folds a branch (internal order, leaf level first) from `leaf` at `pos` to the root, as
/// Electrum's `SPV.hash_merkle_root` does, refusing both known forgeries.
pub fn fold_branch(leaf: &Hash256, branch: &[Hash256], pos: u32) -> Result<Hash256, MerkleError> {
    if branch.len() > MAX_BRANCH_LEN {
        return Err(MerkleError::TooLong(branch.len()));
    }
    let mut hash = *leaf;
    let mut index = pos;
    let mut node = [0u8; 64];
    for (level, sibling) in branch.iter().enumerate() {
        let (left, right) = if index & 1 == 1 {
            if sibling == &hash {
                return Err(MerkleError::LeftSiblingDuplicate { level });
            }
            (sibling, &hash)
        } else {
            (&hash, sibling)
        };
        let (l, r) = node.split_at_mut(32);
        l.copy_from_slice(&left.0);
        r.copy_from_slice(&right.0);
        if is_64_byte_tx(&node) {
            return Err(MerkleError::InnerNodeIsTransaction { level });
        }
        hash = dsha256(&node);
        index >>= 1;
    }
    if index != 0 {
        return Err(MerkleError::PosTooLarge);
    }
    Ok(hash)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spv::header::Header;
    use crate::spv::vectors::*;

    fn h(text: &str) -> Hash256 {
        Hash256::from_display_hex(text).unwrap()
    }

    fn branch(texts: &[&str]) -> Vec<Hash256> {
        texts.iter().map(|t| h(t)).collect()
    }

    fn root_of(header_hex: &str) -> Hash256 {
        Header::from_hex_body(header_hex.as_bytes()).unwrap().merkle_root
    }

    #[test]
    fn a_branch_of_fifteen_levels_is_read_and_folded() {
        let siblings: Vec<String> =
            (0..MAX_BRANCH_LEN as u8).map(|i| format!("\"{}\"", dsha256(&[i]).to_display_hex())).collect();
        let body = format!(r#"{{"block_height":1,"merkle":[{}],"pos":32767}}"#, siblings.join(","));
        let proof = MerkleProof::from_json(body.as_bytes()).unwrap();
        assert_eq!(proof.branch.len(), 15);
        let leaf = dsha256(b"leaf");
        let root = proof.root_for(&leaf).unwrap();
        // By hand: pos 32767 puts the running hash on the right at every level.
        let by_hand = proof.branch.iter().fold(leaf, |hash, sibling| {
            let mut node = sibling.0.to_vec();
            node.extend_from_slice(&hash.0);
            dsha256(&node)
        });
        assert_eq!(root, by_hand);
    }

    #[test]
    fn refusals_say_what_is_wrong_with_the_proof() {
        let text = |e: MerkleError| e.to_string();
        assert!(text(MerkleError::Json("eof".into())).ends_with(": eof"));
        assert_eq!(text(MerkleError::BadEntry(4)), "merkle branch entry 4 is not 64 hex digits");
        assert_eq!(text(MerkleError::TooLong(16)), "merkle branch has 16 entries, more than 15");
        assert!(text(MerkleError::LeftSiblingDuplicate { level: 2 }).ends_with("at level 2"));
        assert!(
            text(MerkleError::InnerNodeIsTransaction { level: 1 }).contains("level 1 parses as a 64-byte transaction")
        );
        assert!(text(MerkleError::PosTooLarge).contains("position"));
    }

    #[test]
    fn mempool_documented_proof_folds_to_its_header() {
        let proof = MerkleProof::from_json(MEMPOOL_DOCS_MERKLE_PROOF_363348.as_bytes()).unwrap();
        assert_eq!(proof.block_height, 363_348);
        assert_eq!(proof.pos, 1465);
        assert_eq!(proof.branch.len(), 11);
        let header = Header::from_hex_body(MEMPOOL_DOCS_HEADER_363348.as_bytes()).unwrap();
        assert_eq!(header.hash.to_display_hex(), MEMPOOL_DOCS_HASH_363348);
        assert_eq!(proof.root_for(&h(MEMPOOL_DOCS_TXID_363348)), Ok(header.merkle_root));
    }

    #[test]
    fn entries_as_printed_are_not_internal_order() {
        // Folding without reversing each entry (and the txid) misses the root.
        let proof = MerkleProof::from_json(MEMPOOL_DOCS_MERKLE_PROOF_363348.as_bytes()).unwrap();
        let unreversed: Vec<Hash256> = proof
            .branch
            .iter()
            .map(|e| {
                let mut b = e.0;
                b.reverse();
                Hash256(b)
            })
            .collect();
        let header = Header::from_hex_body(MEMPOOL_DOCS_HEADER_363348.as_bytes()).unwrap();
        assert_ne!(fold_branch(&h(MEMPOOL_DOCS_TXID_363348), &unreversed, proof.pos), Ok(header.merkle_root));
    }

    #[test]
    fn bitcoinj_blocks_fold_to_their_roots() {
        assert_eq!(fold_branch(&h(B170_TX1_TXID), &[h(B170_COINBASE_TXID)], 1), Ok(root_of(HEADERS_170_176[0])));
        assert_eq!(fold_branch(&h(B169482_TX9_TXID), &branch(&B169482_TX9_BRANCH), 9), Ok(root_of(B169482_HEADER)));
        assert_eq!(
            fold_branch(&h(B481829_COINBASE_TXID), &branch(&B481829_COINBASE_BRANCH), 0),
            Ok(root_of(B481829_HEADER))
        );
        // A one-transaction block: empty branch, the txid is the root.
        assert_eq!(fold_branch(&h(GENESIS_COINBASE_TXID), &[], 0), Ok(root_of(HEADERS_0_10[0])));
    }

    #[test]
    fn lie_wrong_branch_or_position() {
        let right = root_of(B169482_HEADER);
        let mut wrong = branch(&B169482_TX9_BRANCH);
        wrong[2].0[0] ^= 1;
        assert_ne!(fold_branch(&h(B169482_TX9_TXID), &wrong, 9), Ok(right));
        // Same branch, another position (sides swapped at level 0).
        assert_ne!(fold_branch(&h(B169482_TX9_TXID), &branch(&B169482_TX9_BRANCH), 8), Ok(right));
        // Another transaction of the block with tx 9's branch.
        assert_ne!(fold_branch(&h(B169482_TX13_TXID), &branch(&B169482_TX9_BRANCH), 9), Ok(right));
        // Branch of the wrong length.
        assert_ne!(fold_branch(&h(B169482_TX9_TXID), &branch(&B169482_TX9_BRANCH[..3]), 9), Ok(right));
        // Position bits beyond the branch.
        assert_eq!(
            fold_branch(&h(B169482_TX9_TXID), &branch(&B169482_TX9_BRANCH), 9 + 16),
            Err(MerkleError::PosTooLarge)
        );
    }

    #[test]
    fn lie_duplicated_leaf_cve_2012_2459() {
        // Mainnet block 169482 has 14 transactions: the last (pos 13) pairs with itself at level 1.
        let last = branch(&B169482_TX13_BRANCH);
        assert_eq!(last[1], {
            let mut n = [0u8; 64];
            n[..32].copy_from_slice(&branch(&B169482_TX13_BRANCH)[0].0);
            n[32..].copy_from_slice(&h(B169482_TX13_TXID).0);
            dsha256(&n)
        });
        assert_eq!(fold_branch(&h(B169482_TX13_TXID), &last, 13), Ok(root_of(B169482_HEADER)));
        // Phantom pos 15 (13 with level-1 bit set) reaches the same root without the guard.
        assert_eq!(fold_branch(&h(B169482_TX13_TXID), &last, 15), Err(MerkleError::LeftSiblingDuplicate { level: 1 }));
        // Electrum's testnet vector: pos 2 is honest, pos 3 its phantom.
        let dup = branch(&ELECTRUM_DUP_BRANCH);
        assert_eq!(fold_branch(&h(ELECTRUM_DUP_TXID), &dup, 2), Ok(h(ELECTRUM_DUP_ROOT)));
        assert_eq!(fold_branch(&h(ELECTRUM_DUP_TXID), &dup, 3), Err(MerkleError::LeftSiblingDuplicate { level: 0 }));
    }

    #[test]
    fn lie_64_byte_transaction_cve_2017_12842() {
        let t = hex::decode(ELECTRUM_64_BYTE_TX).unwrap();
        let t_txid = dsha256(&t);
        let real = branch(&ELECTRUM_64_BYTE_BRANCH);
        // Real: the 64-byte tx itself at pos 3 folds (its own hash is a leaf, not a node).
        assert_eq!(fold_branch(&t_txid, &real, 3), Ok(h(ELECTRUM_64_BYTE_ROOT)));
        // Forged: T's halves as leaf and sibling, one level below T.
        let first = Hash256(t[..32].try_into().unwrap());
        let second = Hash256(t[32..].try_into().unwrap());
        let mut odd = vec![first];
        odd.extend_from_slice(&real);
        assert_eq!(fold_branch(&second, &odd, 7), Err(MerkleError::InnerNodeIsTransaction { level: 0 }));
        let mut even = vec![second];
        even.extend_from_slice(&real);
        assert_eq!(fold_branch(&first, &even, 6), Err(MerkleError::InnerNodeIsTransaction { level: 0 }));
    }

    #[test]
    fn malformed_json() {
        let cases: [&[u8]; 7] = [
            b"",
            b"{}",
            br#"{"block_height":1,"merkle":["00"],"pos":0}"#,
            br#"{"block_height":-1,"merkle":[],"pos":0}"#,
            br#"{"block_height":1,"merkle":[],"pos":4294967296}"#,
            br#"{"block_height":1,"merkle":[1],"pos":0}"#,
            b"Transaction not found or is unconfirmed",
        ];
        for case in cases {
            assert!(MerkleProof::from_json(case).is_err(), "{}", String::from_utf8_lossy(case));
        }
        let long = format!(
            r#"{{"block_height":1,"merkle":[{}],"pos":0}}"#,
            vec![format!("\"{}\"", "0".repeat(64)); 16].join(",")
        );
        assert_eq!(MerkleProof::from_json(long.as_bytes()), Err(MerkleError::TooLong(16)));
        assert_eq!(
            MerkleError::BadEntry(0),
            MerkleProof::from_json(br#"{"block_height":1,"merkle":["zz"],"pos":0}"#).unwrap_err()
        );
    }
}
