//! What a lying explorer serves instead of the truth (issue 10): each function returns the
//! forged data, built deterministically from the honest chain so repeated requests agree.

use crate::chain::{build_block, mine_header, BlockSpec, Chain};
use crate::faults::{Fault, Mode};
use crate::wallet::wallet_key;
use bitcoin::consensus::encode::serialize;
use bitcoin::hashes::Hash;
use bitcoin::hex::DisplayHex;
use bitcoin::transaction::Version;
use bitcoin::{
    absolute, Amount, CompactTarget, OutPoint, ScriptBuf, Sequence, Transaction, TxIn, TxOut, Txid, Witness,
};
use serde_json::{json, Value};

/// The chain a forging fault shows, or `None` when the fault does not forge one.
pub fn forged_chain(chain: &Chain, fault: &Fault) -> Option<Result<Chain, String>> {
    let bits = match fault.bits() {
        Ok(b) => b,
        Err(e) => return Some(Err(e)),
    };
    match fault.mode {
        Mode::HeaderBelowFloor => Some(remined_from(chain, fault.from_height.unwrap_or(1), bits)),
        Mode::FakeLowWorkChain => {
            let script = match fault.address.as_deref().map(crate::wallet::parse_regtest_address) {
                Some(Ok(a)) => a.script_pubkey(),
                Some(Err(e)) => return Some(Err(e)),
                None => return Some(Err("fake_low_work_chain needs an address".into())),
            };
            let fork = fault.fork_height.unwrap_or(chain.tip_height() + 1);
            let payment = fake_payment(&script, fault.sats.unwrap_or(1));
            Some(fake_chain(chain, fork, fault.depth.unwrap_or(6), bits, payment))
        }
        Mode::TipDisagrees => Some(tip_sibling(chain)),
        _ => None,
    }
}

/// Every block from `from` up re-mined at `bits`: the same transactions and merkle roots, linked
/// to each other, with a target the floor may refuse.
pub fn remined_from(chain: &Chain, from: u32, bits: u32) -> Result<Chain, String> {
    let from = from.max(1) as usize;
    let mut blocks: Vec<_> = chain.blocks().to_vec();
    for i in from..blocks.len() {
        let prev = blocks[i - 1].block_hash();
        let header = &mut blocks[i].header;
        header.prev_blockhash = prev;
        header.bits = CompactTarget::from_consensus(bits);
        mine_header(header);
    }
    Chain::from_parts(blocks, Vec::new())
}

/// A payment that was never signed nor broadcast: it spends an outpoint nobody owns.
pub fn fake_payment(script: &ScriptBuf, sats: u64) -> Transaction {
    let prev = Txid::from_byte_array(bitcoin::hashes::sha256d::Hash::hash(script.as_bytes()).to_byte_array());
    Transaction {
        version: Version::TWO,
        lock_time: absolute::LockTime::ZERO,
        input: vec![TxIn {
            previous_output: OutPoint::new(prev, 0),
            script_sig: ScriptBuf::new(),
            sequence: Sequence::MAX,
            witness: Witness::from_slice(&[[0x30u8; 71].as_slice(), [0x02u8; 33].as_slice()]),
        }],
        output: vec![TxOut { value: Amount::from_sat(sats), script_pubkey: script.clone() }],
    }
}

/// The honest chain below `fork`, then `depth` fake blocks mined at `bits`, the first holding
/// `payment`.
pub fn fake_chain(chain: &Chain, fork: u32, depth: u32, bits: u32, payment: Transaction) -> Result<Chain, String> {
    let fork = fork.clamp(1, chain.tip_height() + 1);
    let mut blocks: Vec<_> = chain.blocks().get(..fork as usize).unwrap_or_default().to_vec();
    let payout = wallet_key().script_pubkey();
    let mut txs = vec![payment];
    for i in 0..depth {
        let prev = blocks.last().map(|b| b.block_hash()).ok_or("empty chain")?;
        let time = blocks.last().map_or(0, |b| b.header.time).saturating_add(600);
        let height = fork + i;
        let spec = BlockSpec { time, bits, tag: b"txgate-devnet/forged" };
        blocks.push(build_block(prev, height, std::mem::take(&mut txs), Amount::ZERO, &payout, &spec));
    }
    Chain::from_parts(blocks, Vec::new())
}

/// The tip replaced by a sibling: same height and transactions, another coinbase, another hash.
pub fn tip_sibling(chain: &Chain) -> Result<Chain, String> {
    let tip = chain.tip_height();
    if tip == 0 {
        return Err("no block above genesis to fork".into());
    }
    let mut blocks: Vec<_> = chain.blocks().to_vec();
    let old = blocks.pop().ok_or("empty chain")?;
    let prev = old.header.prev_blockhash;
    let payout = wallet_key().script_pubkey();
    let txs: Vec<Transaction> = old.txdata.into_iter().skip(1).collect();
    let spec = BlockSpec { time: old.header.time, bits: old.header.bits.to_consensus(), tag: b"txgate-devnet/sibling" };
    let fees = Amount::ZERO;
    blocks.push(build_block(prev, tip, txs, fees, &payout, &spec));
    Chain::from_parts(blocks, Vec::new())
}

/// `raw_tx_mismatch`: the transaction with its first output raised by 100,000 sats, so the
/// bytes no longer hash to the txid they are served for.
pub fn mismatched_tx(tx: &Transaction) -> Transaction {
    let mut lie = tx.clone();
    if let Some(out) = lie.output.first_mut() {
        out.value = out.value.checked_add(Amount::from_sat(100_000)).unwrap_or(out.value);
    }
    lie
}

pub fn tx_bytes(tx: &Transaction) -> Vec<u8> {
    serialize(tx)
}

/// `bad_merkle_branch`: the first branch entry with one bit flipped (a zero entry when the
/// branch is empty), so the fold misses the header's merkle root.
pub fn bad_branch(proof: &mut Value) {
    let Some(merkle) = proof["merkle"].as_array_mut() else { return };
    match merkle.first_mut().and_then(|e| e.as_str().map(str::to_owned)) {
        Some(first) => {
            let mut bytes: Vec<u8> = bitcoin::hex::FromHex::from_hex(&first).unwrap_or_default();
            if let Some(b) = bytes.first_mut() {
                *b ^= 1;
            }
            merkle[0] = json!(bytes.to_lower_hex_string());
        }
        None => merkle.push(json!("00".repeat(32))),
    }
}
