//! `txgate-admin`: the merchant's side of per-client addresses.
//!
//!   txgate-admin address --network regtest --xpub tpub… --script p2wpkh [--branch 0] \
//!       --identity-source header:x-api-key --identity alice-key
//!   txgate-admin descriptors --network regtest --xpub tpub… --script p2tr [--branch 0] \
//!       --identity-source header:x-api-key [--timestamp now] < identities.txt
//!
//! `address` prints the path, address and wallet descriptor of one identity; `descriptors`
//! prints, for one identity per input line, a JSON array that Bitcoin Core's `importdescriptors`
//! takes, with fixed paths (no wildcards), so the wallet watches exactly the clients' addresses.
//! Every address is derived twice, by txgate's own code (what clients are shown) and by
//! rust-bitcoin/rust-miniscript; the command fails if they ever disagree.

use std::collections::HashMap;
use std::io::BufRead;
use std::process::ExitCode;
use std::str::FromStr;

use miniscript::descriptor::{Descriptor, DescriptorPublicKey};
use serde_json::{json, Value};
use txgate::address::Network;
use txgate::identity::IdentitySource;
use txgate::xpub::{address, index_of, ExtendedPublicKey, ScriptKind};

struct Setup {
    network: Network,
    key_text: String,
    key: ExtendedPublicKey,
    script: ScriptKind,
    branch: u32,
    source: IdentitySource,
}

fn usage() -> String {
    "usage: txgate-admin address|descriptors --network N --xpub KEY --script p2wpkh|p2tr [--branch B] \
     --identity-source header:<name>|mtls_principal|source_address [--identity VALUE] [--timestamp now|UNIX]"
        .to_string()
}

fn options(args: &[String]) -> Result<HashMap<String, String>, String> {
    let mut out = HashMap::new();
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let name = flag.strip_prefix("--").ok_or_else(|| format!("unexpected argument {flag:?}\n{}", usage()))?;
        let value = it.next().ok_or_else(|| format!("--{name} needs a value"))?;
        out.insert(name.to_string(), value.clone());
    }
    Ok(out)
}

fn setup(opts: &HashMap<String, String>) -> Result<Setup, String> {
    let get = |name: &str| opts.get(name).cloned().ok_or_else(|| format!("--{name} is required\n{}", usage()));
    let network_name = get("network")?;
    let network = Network::parse(&network_name).ok_or_else(|| format!("unknown network {network_name:?}"))?;
    let script_name = get("script")?;
    let script = ScriptKind::parse(&script_name).ok_or_else(|| format!("--script {script_name:?}: p2wpkh or p2tr"))?;
    let key_text = get("xpub")?;
    let key = ExtendedPublicKey::parse(&key_text, network, script).map_err(|e| format!("--xpub: {e}"))?;
    let branch: u32 = opts.get("branch").map_or(Ok(0), |b| b.parse()).map_err(|_| "--branch: a number".to_string())?;
    if branch >= 0x8000_0000 {
        return Err("--branch must be a non-hardened index".to_string());
    }
    let source_text = get("identity-source")?;
    let source = IdentitySource::parse(&source_text).ok_or_else(|| format!("--identity-source {source_text:?}"))?;
    Ok(Setup { network, key_text, key, script, branch, source })
}

/// The key as wallets spell it: SLIP-132 zpub/vpub carry the script in their version bytes,
/// descriptors carry it in the function, so they are written as xpub/tpub.
fn descriptor_key(setup: &Setup) -> Result<String, String> {
    let mut raw = bitcoin::base58::decode_check(&setup.key_text).map_err(|e| e.to_string())?;
    let version: [u8; 4] = match setup.network {
        Network::Mainnet => [0x04, 0x88, 0xb2, 0x1e],
        _ => [0x04, 0x35, 0x87, 0xcf],
    };
    raw.get_mut(..4).ok_or("short key")?.copy_from_slice(&version);
    Ok(bitcoin::base58::encode_check(&raw))
}

fn bitcoin_network(network: Network) -> bitcoin::Network {
    match network {
        Network::Mainnet => bitcoin::Network::Bitcoin,
        Network::Testnet => bitcoin::Network::Testnet,
        Network::Testnet4 => bitcoin::Network::Testnet4,
        Network::Signet => bitcoin::Network::Signet,
        Network::Regtest => bitcoin::Network::Regtest,
    }
}

/// Path, address and descriptor of one identity, derived twice and compared.
fn one(setup: &Setup, identity: &str) -> Result<Value, String> {
    let (hi, lo) = index_of(&setup.source.name(), identity.as_bytes());
    let path = [setup.branch, hi, lo];
    let child = setup.key.derive(&path).map_err(|e| e.to_string())?;
    let ours = address(&child.public_key, setup.script, setup.network).map_err(|e| e.to_string())?;
    let key = descriptor_key(setup)?;
    let text = format!("{}({key}/{}/{hi}/{lo})", setup.script.descriptor(), setup.branch);
    let descriptor = Descriptor::<DescriptorPublicKey>::from_str(&text).map_err(|e| e.to_string())?;
    let theirs = descriptor
        .at_derivation_index(0)
        .map_err(|e| e.to_string())?
        .address(bitcoin_network(setup.network))
        .map_err(|e| e.to_string())?
        .to_string();
    if ours != theirs {
        return Err(format!(
            "derivation disagrees for path {}/{hi}/{lo}: txgate {ours}, rust-bitcoin {theirs}",
            setup.branch
        ));
    }
    Ok(json!({
        "identity_source": setup.source.name(),
        "path": format!("{}/{hi}/{lo}", setup.branch),
        "address": ours,
        "descriptor": descriptor.to_string(),
    }))
}

fn run(args: &[String]) -> Result<String, String> {
    let (command, rest) = args.split_first().ok_or_else(usage)?;
    let opts = options(rest)?;
    let setup = setup(&opts)?;
    match command.as_str() {
        "address" => {
            let identity = opts.get("identity").ok_or_else(|| format!("--identity is required\n{}", usage()))?;
            Ok(one(&setup, identity)?.to_string())
        }
        "descriptors" => {
            let timestamp: Value = match opts.get("timestamp").map(String::as_str) {
                None | Some("now") => json!("now"),
                Some(t) => json!(t.parse::<u64>().map_err(|_| "--timestamp: now or unix seconds".to_string())?),
            };
            let mut out = Vec::new();
            for line in std::io::stdin().lock().lines() {
                let line = line.map_err(|e| e.to_string())?;
                let identity = line.trim_end_matches(['\r', '\n']);
                if identity.is_empty() {
                    continue;
                }
                let entry = one(&setup, identity)?;
                // The label names the path, never the identity: API keys are secrets.
                out.push(json!({
                    "desc": entry["descriptor"],
                    "timestamp": timestamp,
                    "label": format!("txgate {}", entry["path"].as_str().unwrap_or("")),
                    "internal": false,
                }));
            }
            Ok(Value::Array(out).to_string())
        }
        other => Err(format!("unknown command {other:?}\n{}", usage())),
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(out) => {
            println!("{out}");
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("txgate-admin: {err}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// BIP-32 test vector 1 (m/0H), as a mainnet xpub and as a tpub.
    const XPUB: &str = "xpub68Gmy5EdvgibQVfPdqkBBCHxA5htiqg55crXYuXoQRKfDBFA1WEjWgP6LHhwBZeNK1VTsfTFUHCdrfp1bgwQ9xv5ski8PX9rL2dZXvgGDnw";

    fn setup(network: Network, script: ScriptKind) -> Setup {
        let mut raw = bitcoin::base58::decode_check(XPUB).unwrap();
        if network != Network::Mainnet {
            raw[..4].copy_from_slice(&[0x04, 0x35, 0x87, 0xcf]);
        }
        let key_text = bitcoin::base58::encode_check(&raw);
        let key = ExtendedPublicKey::parse(&key_text, network, script).unwrap();
        Setup { network, key_text, key, script, branch: 7, source: IdentitySource::Header("x-api-key".into()) }
    }

    #[test]
    fn txgate_and_rust_bitcoin_derive_the_same_addresses() {
        for network in [Network::Mainnet, Network::Testnet, Network::Signet, Network::Regtest] {
            for script in [ScriptKind::P2wpkh, ScriptKind::P2tr] {
                let setup = setup(network, script);
                for i in 0..50 {
                    // `one` fails when the two implementations disagree.
                    let entry = one(&setup, &format!("client-{i}")).unwrap();
                    assert!(entry["path"].as_str().unwrap().starts_with("7/"));
                }
            }
        }
    }

    #[test]
    fn bad_arguments_are_refused_with_the_reason() {
        let args = |s: &str| s.split(' ').map(String::from).collect::<Vec<_>>();
        assert!(run(&args("address --network regtest")).unwrap_err().contains("--script is required"));
        let err = run(&args(&format!(
            "address --network regtest --xpub {XPUB} --script p2wpkh --identity-source header:x --identity a"
        )))
        .unwrap_err();
        assert!(err.contains("--xpub"), "{err}");
    }
}
