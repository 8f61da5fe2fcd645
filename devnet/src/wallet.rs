//! Deterministic keys and P2WPKH signing.
//!
//! Keys derive from fixed seeds so every run (and every test) sees the same
//! wallet and merchant addresses: nothing secret lives here, it's regtest.

use bitcoin::hashes::{sha256, Hash};
use bitcoin::key::CompressedPublicKey;
use bitcoin::secp256k1::{Message, Secp256k1, SecretKey};
use bitcoin::sighash::{EcdsaSighashType, SighashCache};
use bitcoin::transaction::Version;
use bitcoin::{
    absolute, Address, Amount, KnownHrp, Network, OutPoint, ScriptBuf, Sequence, Transaction, TxIn, TxOut, Witness,
};
use std::str::FromStr;

/// Fee paid by every wallet payment unless the caller asks otherwise.
pub const DEFAULT_FEE_SATS: u64 = 1000;
/// Change below this is dropped into the fee (P2WPKH dust limit in Core).
const DUST_SATS: u64 = 294;

pub struct Key {
    secret: SecretKey,
    pub public: CompressedPublicKey,
}

impl Key {
    fn from_seed(seed: &[u8]) -> Key {
        // Re-hash in the (negligible) case the digest is not a valid scalar.
        let mut digest = sha256::Hash::hash(seed).to_byte_array();
        let secret = loop {
            match SecretKey::from_slice(&digest) {
                Ok(sk) => break sk,
                Err(_) => digest = sha256::Hash::hash(&digest).to_byte_array(),
            }
        };
        let public = CompressedPublicKey(secret.public_key(&Secp256k1::signing_only()));
        Key { secret, public }
    }

    pub fn address(&self) -> Address {
        Address::p2wpkh(&self.public, KnownHrp::Regtest)
    }

    pub fn script_pubkey(&self) -> ScriptBuf {
        ScriptBuf::new_p2wpkh(&self.public.wpubkey_hash())
    }
}

/// The key that receives all coinbase outputs and change.
pub fn wallet_key() -> Key {
    Key::from_seed(b"txgate-devnet/wallet")
}

/// Deterministic "merchant" keys for tests that need payee addresses.
pub fn merchant_key(index: u32) -> Key {
    let mut seed = b"txgate-devnet/merchant/".to_vec();
    seed.extend_from_slice(&index.to_be_bytes());
    Key::from_seed(&seed)
}

/// Accepts bcrt1 (segwit v0/v1) and base58 testnet/regtest (m/n/2) addresses.
pub fn parse_regtest_address(s: &str) -> Result<Address, String> {
    Address::from_str(s.trim())
        .map_err(|e| format!("invalid address: {e}"))?
        .require_network(Network::Regtest)
        .map_err(|e| format!("not a regtest address: {e}"))
}

pub struct Utxo {
    pub outpoint: OutPoint,
    pub txout: TxOut,
}

/// Builds and signs a payment: output 0 pays `outputs[0]`, extra outputs
/// follow in order, change (if any) goes last back to `key`.
pub fn build_payment(
    key: &Key,
    mut utxos: Vec<Utxo>,
    outputs: Vec<TxOut>,
    fee_sats: u64,
) -> Result<Transaction, String> {
    let want =
        outputs.iter().try_fold(fee_sats, |acc, o| acc.checked_add(o.value.to_sat())).ok_or("amount overflow")?;

    // Largest first keeps transactions small and deterministic.
    utxos.sort_by(|a, b| b.txout.value.cmp(&a.txout.value).then(a.outpoint.cmp(&b.outpoint)));
    let mut selected = Vec::new();
    let mut have = 0u64;
    for u in utxos {
        if have >= want {
            break;
        }
        have += u.txout.value.to_sat();
        selected.push(u);
    }
    if have < want {
        return Err(format!("insufficient funds: have {have} sats spendable, need {want}"));
    }

    let mut output = outputs;
    let change = have - want;
    if change >= DUST_SATS {
        output.push(TxOut { value: Amount::from_sat(change), script_pubkey: key.script_pubkey() });
    }
    let mut tx = Transaction {
        version: Version::TWO,
        lock_time: absolute::LockTime::ZERO,
        input: selected
            .iter()
            .map(|u| TxIn {
                previous_output: u.outpoint,
                script_sig: ScriptBuf::new(),
                sequence: Sequence::ENABLE_RBF_NO_LOCKTIME,
                witness: Witness::new(),
            })
            .collect(),
        output,
    };

    let secp = Secp256k1::signing_only();
    let mut cache = SighashCache::new(&mut tx);
    for (i, u) in selected.iter().enumerate() {
        let sighash = cache
            .p2wpkh_signature_hash(i, &u.txout.script_pubkey, u.txout.value, EcdsaSighashType::All)
            .map_err(|e| format!("sighash: {e}"))?;
        let msg = Message::from_digest(sighash.to_byte_array());
        let sig = bitcoin::ecdsa::Signature {
            signature: secp.sign_ecdsa(&msg, &key.secret),
            sighash_type: EcdsaSighashType::All,
        };
        let input = cache.witness_mut(i).ok_or("input index out of range")?;
        *input = Witness::p2wpkh(&sig, &key.public.0);
    }
    Ok(tx)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bitcoin::secp256k1::ecdsa;

    #[test]
    fn keys_are_deterministic_and_addresses_regtest() {
        assert_eq!(wallet_key().address(), wallet_key().address());
        assert_ne!(merchant_key(0).address(), merchant_key(1).address());
        let a = merchant_key(7).address().to_string();
        assert!(a.starts_with("bcrt1q"), "{a}");
        assert!(parse_regtest_address(&a).is_ok());
    }

    #[test]
    fn address_parsing_accepts_regtest_forms_only() {
        // P2TR, legacy testnet P2PKH and P2SH all valid on regtest.
        for ok in [
            "bcrt1p0xlxvlhemja6c4dqv22uapctqupfhlxm9h8z3k2e72q4k9hcz7vqc8gma6",
            "mipcBbFg9gMiCh81Kj8tqqdgoZub1ZJRfn",
            "bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080",
            "2MzQwSSnBHWHqSAqtTVQ6v47XtaisrJa1Vc",
        ] {
            assert!(parse_regtest_address(ok).is_ok(), "{ok}");
        }
        for bad in ["bc1qar0srrr7xfkvy5l643lydnw9re59gtzzwf5mdq", "tb1qw508d6qejxtdg4y5r3zarvary0c5xw7kxpjzsx", "hello"]
        {
            assert!(parse_regtest_address(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn payment_signature_verifies() {
        let key = wallet_key();
        let prev = TxOut { value: Amount::from_sat(50_000), script_pubkey: key.script_pubkey() };
        let utxo = Utxo { outpoint: OutPoint::new(bitcoin::Txid::all_zeros(), 3), txout: prev.clone() };
        let pay = TxOut { value: Amount::from_sat(10_000), script_pubkey: merchant_key(0).script_pubkey() };
        let tx = build_payment(&key, vec![utxo], vec![pay], 1000).unwrap();
        assert_eq!(tx.output.len(), 2);
        assert_eq!(tx.output[1].value.to_sat(), 39_000);

        // Recompute the BIP143 sighash and check the witness signature against it.
        let mut cache = SighashCache::new(&tx);
        let sighash = cache.p2wpkh_signature_hash(0, &prev.script_pubkey, prev.value, EcdsaSighashType::All).unwrap();
        let w: Vec<&[u8]> = tx.input[0].witness.iter().collect();
        let der = &w[0][..w[0].len() - 1];
        let sig = ecdsa::Signature::from_der(der).unwrap();
        Secp256k1::verification_only()
            .verify_ecdsa(&Message::from_digest(sighash.to_byte_array()), &sig, &key.public.0)
            .unwrap();
        assert_eq!(w[1], key.public.to_bytes());
    }
}
