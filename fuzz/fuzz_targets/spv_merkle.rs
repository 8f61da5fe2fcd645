//! Arbitrary `/tx/:txid/merkle-proof` bodies, and arbitrary branches folded directly: first 4 bytes
//! the position (LE), next 32 the leaf, then 32-byte siblings. Must never panic; a fold succeeds
//! only when the position fits the branch.
#![no_main]

use libfuzzer_sys::fuzz_target;
use txgate::spv::{fold_branch, Hash256, MerkleProof};

fuzz_target!(|data: &[u8]| {
    if let Ok(proof) = MerkleProof::from_json(data) {
        assert!(proof.branch.len() <= txgate::spv::merkle::MAX_BRANCH_LEN);
        if let Ok(_root) = proof.root_for(&Hash256([7; 32])) {
            assert!(u64::from(proof.pos) < 1u64 << proof.branch.len());
        }
    }
    let Some((pos, rest)) = data.split_first_chunk::<4>() else { return };
    let Some((leaf, rest)) = rest.split_first_chunk::<32>() else { return };
    let branch: Vec<Hash256> =
        rest.chunks_exact(32).filter_map(|c| <[u8; 32]>::try_from(c).ok()).map(Hash256).collect();
    let pos = u32::from_le_bytes(*pos);
    if fold_branch(&Hash256(*leaf), &branch, pos).is_ok() {
        assert!(branch.len() <= 15 && u64::from(pos) < 1u64 << branch.len());
    }
});
