//! JSON shapes of the Blockstream Esplora / mempool.space REST API.

use crate::chain::{Chain, Loc};
use bitcoin::consensus::encode::serialize;
use bitcoin::hex::DisplayHex;
use bitcoin::{Address, Block, Network, Script, Transaction, TxOut};
use serde_json::{json, Value};

/// Esplora's `scriptpubkey_type` names.
pub fn script_type(s: &Script) -> &'static str {
    if s.is_empty() {
        "empty"
    } else if s.is_op_return() {
        "op_return"
    } else if s.is_p2pk() {
        "p2pk"
    } else if s.is_p2pkh() {
        "p2pkh"
    } else if s.is_p2sh() {
        "p2sh"
    } else if s.is_p2wpkh() {
        "v0_p2wpkh"
    } else if s.is_p2wsh() {
        "v0_p2wsh"
    } else if s.is_p2tr() {
        "v1_p2tr"
    } else if s.is_multisig() {
        "multisig"
    } else {
        "unknown"
    }
}

pub fn txout_json(o: &TxOut) -> Value {
    let mut v = json!({
        "scriptpubkey": o.script_pubkey.to_hex_string(),
        "scriptpubkey_asm": o.script_pubkey.to_asm_string(),
        "scriptpubkey_type": script_type(&o.script_pubkey),
        "value": o.value.to_sat(),
    });
    // Esplora omits the field when the script has no address form.
    if let Ok(addr) = Address::from_script(&o.script_pubkey, Network::Regtest) {
        v["scriptpubkey_address"] = json!(addr.to_string());
    }
    v
}

pub fn status_json(chain: &Chain, loc: Loc) -> Value {
    match loc {
        Loc::Mempool(_) => json!({ "confirmed": false }),
        Loc::Block { height, .. } => {
            let block = chain.block_at(height);
            json!({
                "confirmed": true,
                "block_height": height,
                "block_hash": block.map(|b| b.block_hash().to_string()),
                "block_time": block.map(|b| b.header.time),
            })
        }
    }
}

pub fn tx_json(chain: &Chain, tx: &Transaction, loc: Loc) -> Value {
    let vin: Vec<Value> = tx
        .input
        .iter()
        .map(|i| {
            let coinbase = tx.is_coinbase();
            let mut v = json!({
                "txid": i.previous_output.txid.to_string(),
                "vout": i.previous_output.vout,
                "prevout": if coinbase { Value::Null } else {
                    chain.prevout(&i.previous_output).map(txout_json).unwrap_or(Value::Null)
                },
                "scriptsig": i.script_sig.to_hex_string(),
                "scriptsig_asm": i.script_sig.to_asm_string(),
                "is_coinbase": coinbase,
                "sequence": i.sequence.0,
            });
            if !i.witness.is_empty() {
                v["witness"] = i.witness.iter().map(|w| json!(w.to_lower_hex_string())).collect();
            }
            v
        })
        .collect();
    json!({
        "txid": tx.compute_txid().to_string(),
        "version": tx.version.0,
        "locktime": tx.lock_time.to_consensus_u32(),
        "vin": vin,
        "vout": tx.output.iter().map(txout_json).collect::<Vec<_>>(),
        "size": tx.total_size(),
        "weight": tx.weight().to_wu(),
        "fee": chain.fee(tx).map(|f| f.to_sat()),
        "status": status_json(chain, loc),
    })
}

pub fn tx_hex(tx: &Transaction) -> String {
    serialize(tx).to_lower_hex_string()
}

pub fn header_hex(block: &Block) -> String {
    serialize(&block.header).to_lower_hex_string()
}

pub fn merkle_proof_json(chain: &Chain, loc: Loc) -> Option<Value> {
    let Loc::Block { height, pos } = loc else { return None };
    let branch = chain.merkle_branch(height, pos)?;
    Some(json!({
        "block_height": height,
        "merkle": branch.iter().map(|h| h.to_string()).collect::<Vec<_>>(),
        "pos": pos,
    }))
}

pub fn block_json(chain: &Chain, height: u32, block: &Block) -> Value {
    let h = &block.header;
    json!({
        "id": block.block_hash().to_string(),
        "height": height,
        "version": h.version.to_consensus(),
        "timestamp": h.time,
        "tx_count": block.txdata.len(),
        "size": block.total_size(),
        "weight": block.weight().to_wu(),
        "merkle_root": h.merkle_root.to_string(),
        "previousblockhash": if height == 0 { Value::Null } else { json!(h.prev_blockhash.to_string()) },
        "mediantime": chain.median_time(height),
        "nonce": h.nonce,
        "bits": h.bits.to_consensus(),
        "difficulty": h.difficulty_float(),
    })
}

pub fn block_status_json(chain: &Chain, height: u32) -> Value {
    let next = chain.block_at(height + 1).map(|b| b.block_hash().to_string());
    json!({
        "in_best_chain": true,
        "height": height,
        "next_best": next,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wallet::{build_payment, merchant_key, wallet_key};
    use bitcoin::{Amount, TxOut};

    #[test]
    fn payment_json_shape_and_confirmations() {
        let mut chain = Chain::new();
        let key = wallet_key();
        chain.mine(101, 1_700_000_000, &key.script_pubkey());
        let merchant = merchant_key(3);
        let out = TxOut { value: Amount::from_sat(25_000), script_pubkey: merchant.script_pubkey() };
        let tx = build_payment(&key, chain.spendable(&key.script_pubkey()), vec![out], 1000).unwrap();
        let txid = chain.submit(tx).unwrap();

        let (tx, loc) = chain.tx(&txid).unwrap();
        let j = tx_json(&chain, tx, loc);
        assert_eq!(j["txid"], txid.to_string());
        assert_eq!(j["status"], json!({"confirmed": false}));
        assert_eq!(j["fee"], 1000);
        assert_eq!(j["vout"][0]["value"], 25_000);
        assert_eq!(j["vout"][0]["scriptpubkey_address"], merchant.address().to_string());
        assert_eq!(j["vout"][0]["scriptpubkey_type"], "v0_p2wpkh");
        assert!(j["vout"][0]["scriptpubkey_asm"].as_str().unwrap().starts_with("OP_0 OP_PUSHBYTES_20 "));
        assert_eq!(j["vout"][1]["scriptpubkey_address"], key.address().to_string());
        assert_eq!(j["vin"][0]["is_coinbase"], false);
        assert_eq!(j["vin"][0]["prevout"]["value"], 5_000_000_000u64);
        assert_eq!(j["vin"][0]["witness"].as_array().unwrap().len(), 2);
        assert_eq!(j["weight"].as_u64().unwrap(), tx.weight().to_wu());

        chain.mine(3, 1_700_100_000, &key.script_pubkey());
        let (tx, loc) = chain.tx(&txid).unwrap();
        let j = tx_json(&chain, tx, loc);
        let st = &j["status"];
        assert_eq!(st["confirmed"], true);
        assert_eq!(st["block_height"], 102);
        assert_eq!(st["block_time"], 1_700_100_000);
        assert_eq!(st["block_hash"], chain.block_at(102).unwrap().block_hash().to_string());
        // confirmations = tip - block_height + 1
        let confs = chain.tip_height() - st["block_height"].as_u64().unwrap() as u32 + 1;
        assert_eq!(confs, 3);

        // Coinbase shape.
        let cb = &chain.tip().txdata[0];
        let j = tx_json(&chain, cb, chain.tx(&cb.compute_txid()).unwrap().1);
        assert_eq!(j["vin"][0]["is_coinbase"], true);
        assert_eq!(j["vin"][0]["prevout"], Value::Null);
        assert_eq!(j["vin"][0]["vout"], 4_294_967_295u32);
        assert_eq!(j["fee"], 0);
        // The witness commitment output has no address.
        assert_eq!(j["vout"][1]["scriptpubkey_type"], "op_return");
        assert!(j["vout"][1].get("scriptpubkey_address").is_none());
    }

    #[test]
    fn block_json_shape() {
        let mut chain = Chain::new();
        chain.mine(2, 1_700_000_000, &wallet_key().script_pubkey());
        let b = chain.block_at(2).unwrap();
        let j = block_json(&chain, 2, b);
        assert_eq!(j["id"], b.block_hash().to_string());
        assert_eq!(j["previousblockhash"], chain.block_at(1).unwrap().block_hash().to_string());
        assert_eq!(j["bits"], 0x207f_ffff);
        assert_eq!(j["tx_count"], 1);
        let g = block_json(&chain, 0, chain.block_at(0).unwrap());
        assert_eq!(g["previousblockhash"], Value::Null);
        assert_eq!(g["id"], "0f9188f13cb7b2c71f2a335e3a4fc328bf5beb436012afca590b1a11466e2206");
    }
}
