//! Per-client addresses in real Envoy with the devnet: each `bind_to` identity is shown and pays
//! its own address derived from the merchant's xpub, so a txid read off the chain is worth
//! nothing to anyone else (finding F6 closed), and the merchant's `txgate-admin` derives the same
//! addresses and the wallet descriptors that find the money.

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::Stack;
use serde_json::{json, Value};

/// The BIP-86 test vector's account key (m/86'/0'/0' of "abandon … about") as a tpub, for regtest.
const TPUB: &str =
    "tpubDC3pD7UZXnsgh3EBjbtBQiB1FnLask7UHBSunZ1DPK4dCFFZoFRkgxHB8gt42FvLzx1DpxfHWxAsYaY6b643RVcGjDxXxns7wKKYnnfEcbB";

fn admin() -> PathBuf {
    std::env::var_os("TXGATE_DEVNET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/debug"))
        .join("txgate-admin")
}

fn admin_address(script: &str, identity: &str) -> Value {
    let out = Command::new(admin())
        .args(["address", "--network", "regtest", "--xpub", TPUB, "--script", script, "--branch", "0"])
        .args(["--identity-source", "header:x-api-key", "--identity", identity])
        .output()
        .expect("txgate-admin (make test builds it)");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("JSON")
}

fn challenge(stack: &Stack, key: &str) -> Value {
    let reply = stack.get("/api/x", &[("x-api-key", key)]);
    assert_eq!((reply.status, reply.json()["error"].as_str()), (402, Some("payment_required")), "{}", reply.body);
    reply.json()["payment"].clone()
}

fn stack(script: &str) -> Stack {
    Stack::with_plugin(json!({
        "pay_to": {"xpub": TPUB, "script": script, "branch": 0},
        "bind_to": "header:x-api-key"
    }))
}

#[test]
fn each_client_pays_its_own_address_and_a_thief_gains_nothing_from_its_txid() {
    let stack = stack("p2wpkh");
    let alice = challenge(&stack, "alice-key");
    let bob = challenge(&stack, "bob-key");
    let alice_address = alice["pay_to"][0].as_str().unwrap().to_string();
    let bob_address = bob["pay_to"][0].as_str().unwrap().to_string();
    assert_eq!(alice["pay_to"].as_array().unwrap().len(), 1, "one address, the client's own");
    assert_ne!(alice_address, bob_address);
    assert!(alice_address.starts_with("bcrt1q"), "{alice_address}");
    // The merchant's tool derives the same address, path and a descriptor for it.
    let admin = admin_address("p2wpkh", "alice-key");
    assert_eq!(admin["address"], alice_address.as_str());
    assert_eq!(admin["path"], alice["derivation"]["path"]);
    assert!(admin["descriptor"].as_str().unwrap().starts_with(&format!("wpkh({TPUB}/0/")));

    let paid = stack.pay_to(&alice_address, 1000);
    stack.mine(1);
    // The thief presents alice's txid first, with its own identity.
    let thief = stack.get("/api/steal", &[("x-api-key", "bob-key"), ("x-bitcoin-txid", &paid)]);
    assert_eq!((thief.status, thief.json()["error"].as_str()), (402, Some("insufficient_payment")), "{}", thief.body);
    assert_eq!(thief.json()["paid_sats"], 0);
    assert_eq!(thief.json()["payment"]["pay_to"][0], bob_address.as_str(), "the thief is shown its own address");
    let own = stack.get("/api/mine", &[("x-api-key", "alice-key"), ("x-bitcoin-txid", &paid)]);
    assert_eq!(own.status, 200, "{}", own.body);
    assert_eq!(stack.get("/api/mine", &[("x-api-key", "alice-key"), ("x-bitcoin-txid", &paid)]).status, 200);
    // Bob pays his own address and gets in with it.
    let bobs = stack.pay_to(&bob_address, 1000);
    stack.mine(1);
    assert_eq!(stack.get("/api/b", &[("x-api-key", "bob-key"), ("x-bitcoin-txid", &bobs)]).status, 200);

    let seen = stack.backend_seen();
    assert_eq!(seen.len(), 3);
    assert_eq!(seen[0]["headers"]["x-txgate-address-path"], alice["derivation"]["path"]);
    assert_eq!(seen[2]["headers"]["x-txgate-address-path"], bob["derivation"]["path"]);
    assert_eq!(seen[0]["headers"]["x-txgate-paid-sats"], "1000");
}

#[test]
fn a_request_without_the_identity_is_told_what_to_present_never_a_shared_address() {
    let stack = stack("p2tr");
    for headers in [vec![], vec![("x-bitcoin-txid", "00".repeat(32))]] {
        let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let reply = stack.get("/api/x", &headers);
        assert_eq!((reply.status, reply.json()["error"].as_str()), (401, Some("identity_required")), "{}", reply.body);
        assert_eq!(reply.json()["identity"], "header x-api-key");
        assert!(reply.json().get("payment").is_none(), "no address is shown without an identity");
    }
    let carol = challenge(&stack, "carol-key");
    let address = carol["pay_to"][0].as_str().unwrap();
    assert!(address.starts_with("bcrt1p"), "{address}");
    assert_eq!(admin_address("p2tr", "carol-key")["address"], address);
    assert!(stack.backend_seen().is_empty());
}

#[test]
fn exported_descriptors_derive_the_addresses_clients_are_shown() {
    let stack = stack("p2wpkh");
    let keys = ["k1", "k2", "k3"];
    let mut child = Command::new(admin())
        .args(["descriptors", "--network", "regtest", "--xpub", TPUB, "--script", "p2wpkh"])
        .args(["--identity-source", "header:x-api-key", "--timestamp", "now"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("txgate-admin");
    use std::io::Write;
    child.stdin.take().unwrap().write_all(keys.join("\n").as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let exported: Value = serde_json::from_slice(&out.stdout).unwrap();
    let exported = exported.as_array().unwrap();
    assert_eq!(exported.len(), 3);
    for (entry, key) in exported.iter().zip(keys) {
        let shown = challenge(&stack, key);
        let desc = entry["desc"].as_str().unwrap();
        assert!(desc.contains(&format!("/{})#", shown["derivation"]["path"].as_str().unwrap())), "{desc}");
        assert_eq!(entry["timestamp"], "now");
        assert!(!entry["label"].as_str().unwrap().contains(key), "labels never carry the identity");
        // The descriptor alone (as a wallet sees it) gives the address the client was shown.
        let single = admin_address("p2wpkh", key);
        assert_eq!(single["descriptor"], entry["desc"]);
        assert_eq!(single["address"], shown["pay_to"][0]);
    }
}
