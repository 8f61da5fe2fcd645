//! Persists the chain as consensus-serialised hex in one JSON file, replaced
//! atomically after every change so a kill at any moment loses nothing.

use crate::chain::Chain;
use crate::http::write_atomic;
use bitcoin::consensus::encode::{deserialize_hex, serialize_hex};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

const FILE: &str = "chain.json";

#[derive(Serialize, Deserialize)]
struct Snapshot {
    blocks: Vec<String>,
    mempool: Vec<String>,
}

pub fn path(dir: &Path) -> PathBuf {
    dir.join(FILE)
}

/// `Ok(None)` when the directory holds no chain yet.
pub fn load(dir: &Path) -> Result<Option<Chain>, String> {
    let file = path(dir);
    let text = match std::fs::read_to_string(&file) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("{}: {e}", file.display())),
    };
    let snap: Snapshot = serde_json::from_str(&text).map_err(|e| format!("{}: {e}", file.display()))?;
    let blocks = snap
        .blocks
        .iter()
        .map(|h| deserialize_hex(h))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("bad block in {}: {e}", file.display()))?;
    let mempool = snap
        .mempool
        .iter()
        .map(|h| deserialize_hex(h))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("bad mempool tx in {}: {e}", file.display()))?;
    Chain::from_parts(blocks, mempool).map(Some)
}

pub fn save(dir: &Path, chain: &Chain) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let snap = Snapshot {
        blocks: chain.blocks().iter().map(serialize_hex).collect(),
        mempool: chain.mempool().iter().map(serialize_hex).collect(),
    };
    let json = serde_json::to_vec(&snap).map_err(|e| e.to_string())?;
    write_atomic(&path(dir), &json).map_err(|e| format!("{}: {e}", path(dir).display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wallet::{build_payment, merchant_key, wallet_key};
    use bitcoin::{Amount, TxOut};

    #[test]
    fn restart_keeps_chain_and_mempool() {
        let dir = std::env::temp_dir().join(format!("txgate-devnet-store-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        assert!(load(&dir).unwrap().is_none());

        let mut chain = Chain::new();
        let key = wallet_key();
        chain.mine(102, 1_700_000_000, &key.script_pubkey());
        let out = TxOut { value: Amount::from_sat(1234), script_pubkey: merchant_key(0).script_pubkey() };
        let tx = build_payment(&key, chain.spendable(&key.script_pubkey()), vec![out], 1000).unwrap();
        let txid = chain.submit(tx).unwrap();
        save(&dir, &chain).unwrap();

        let mut loaded = load(&dir).unwrap().unwrap();
        assert_eq!(loaded.tip_height(), 102);
        assert_eq!(loaded.tip().block_hash(), chain.tip().block_hash());
        assert_eq!(loaded.mempool().len(), 1);
        assert!(loaded.tx(&txid).is_some());
        // Indexes were rebuilt: the loaded chain keeps working.
        loaded.mine(1, 1_700_001_000, &key.script_pubkey());
        assert!(matches!(loaded.tx(&txid), Some((_, crate::chain::Loc::Block { height: 103, .. }))));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
