#!/usr/bin/env python3
"""Writes the seed corpora under fuzz/corpus/<target>/ (run from fuzz/). Hand-written inputs in
the shapes txgate reads: the README configuration, Esplora answers as devnet/src/esplora.rs
serves them, tip heights, txids and encoded payment records. Targets with a status take it as
the first two bytes, little endian."""
import json, os, struct

TXID = "4a5e1e4baab89f3a32518a88c31bc87f618f76673e2cc77ab2127b7afdeda33b"
OURS = "bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080"
OURS_B58 = "mipcBbFg9gMiCh81Kj8tqqdgoZub1ZJRfn"
OTHER = "bcrt1qrp33g0q5c5txsp9arysrx4k6zdkfs4nce4xj0gdcccefvpysxf3qzf4jry"


def write(target, name, data):
    os.makedirs(f"corpus/{target}", exist_ok=True)
    with open(f"corpus/{target}/{name}", "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode())


def status(code, body):
    return struct.pack("<H", code) + (body if isinstance(body, bytes) else body.encode())


# --- config ---
readme = {
    "header": "x-bitcoin-txid", "network": "regtest", "pay_to": [OURS], "price_sats": 1000,
    "min_confirmations": 1, "max_age": "24h",
    "explorers": [{"cluster": "explorer", "authority": "explorer.local", "path_prefix": "/api"}],
    "timeout": "2s", "failure_mode": "closed",
    "routes": [{"prefix": "/free", "free": True}, {"prefix": "/premium", "price_sats": 5000, "min_confirmations": 2}],
}
write("config", "readme.json", json.dumps(readme, indent=2))
full = dict(readme)
full.update({
    "network": "mainnet", "pay_to": ["bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kv8f3t4", "1A1zP1eP5QGefi2DMPTfTL5SLmv7DivfNa"],
    "explorers": [{"cluster": "outbound|443||blockstream.info", "authority": "blockstream.info", "path_prefix": "/api/"},
                  {"cluster": "mempool", "authority": "mempool.space:443"}],
    "cache": {"max_entries": 4096, "not_found_ttl": "10s", "unconfirmed_ttl": "30s", "tip_ttl": "5s"},
    "grant": {"requests": 10, "window": "1h"}, "bind_to": "header:x-api-key",
    "penalty": {"identity": "source_address", "max_strikes": 5, "find_time": "1m", "ban_time": "10m", "max_clients": 1024},
    "max_inflight": 64, "deadline": "5s", "circuit_breaker": {"failures": 3, "cool_down": "30s"},
    "discounts": [{"name": "mtls", "percent": 20, "mtls_principal_in": ["spiffe://cluster.local/ns/a/sa/b"]},
                  {"name": "policy", "percent": 10, "header": {"name": "X-Policy", "value": "v2"}},
                  {"name": "clean", "percent": 5, "no_strikes_for": "24h"}],
})
write("config", "full.json", json.dumps(full))
write("config", "minimal.json", json.dumps({"network": "regtest", "pay_to": [OURS], "price_sats": 1,
      "explorers": [{"cluster": "e", "authority": "e"}]}))
write("config", "bad_field.json", json.dumps({"network": "signet", "pay_to": [OURS], "price_sats": 0,
      "explorers": [], "timeout": "0s", "routes": [{"prefix": "x"}]}))


# --- txid ---
write("txid", "lower", TXID)
write("txid", "upper", TXID.upper())
write("txid", "short", TXID[:63])
write("txid", "fullwidth", "\uff11" + TXID[3:])
write("txid", "prefixed", "0x" + TXID[2:])


# --- explorer_tx ---
def output(addr, value, kind="v0_p2wpkh"):
    o = {"scriptpubkey": "0014751e76e8199196d454941c45d1b3a323f1433bd6",
         "scriptpubkey_asm": "OP_0 OP_PUSHBYTES_20 751e76e8199196d454941c45d1b3a323f1433bd6",
         "scriptpubkey_type": kind, "value": value}
    if addr is not None:
        o["scriptpubkey_address"] = addr
    return o


def tx(outputs, st, txid=TXID):
    return json.dumps({
        "txid": txid, "version": 2, "locktime": 0,
        "vin": [{"txid": "6f" * 32, "vout": 1,
                 "prevout": output(OTHER, 5_000_000_000), "scriptsig": "", "scriptsig_asm": "",
                 "witness": ["3044022000", "02" + "11" * 32], "is_coinbase": False, "sequence": 4294967293}],
        "vout": outputs, "size": 222, "weight": 561, "fee": 1000, "status": st,
    })


confirmed = {"confirmed": True, "block_height": 101, "block_hash": "3a" * 32, "block_time": 1700000000}
write("explorer_tx", "confirmed", status(200, tx([output(OURS, 25000), output(OTHER, 4_999_974_000)], confirmed)))
write("explorer_tx", "mempool", status(200, tx([output(OURS_B58, 1000, "p2pkh"), output(OURS, 1)], {"confirmed": False})))
write("explorer_tx", "op_return", status(200, tx([output(None, 0, "op_return"), output(OURS, 18446744073709551615)], confirmed)))
write("explorer_tx", "wrong_txid", status(200, tx([output(OURS, 5)], confirmed, txid="ab" * 32)))
write("explorer_tx", "not_found", status(404, "Transaction not found"))
write("explorer_tx", "server_error", status(503, "upstream connect error"))

# --- explorer_tip ---
write("explorer_tip", "height", status(200, "871234"))
write("explorer_tip", "newline", status(200, "101\n"))
write("explorer_tip", "overflow", status(200, "99999999999999999999999"))
write("explorer_tip", "html", status(200, "<html>Bad gateway</html>"))
write("explorer_tip", "status", status(502, "1"))


# --- records ---
def record(kind, paid=0, height=0, time=0, used=0, first=0, bound=0, expires=0, stored=0):
    return bytes([1, kind]) + bytes.fromhex(TXID) + struct.pack("<8Q", paid, height, time, used, first, bound, expires, stored)


write("records", "confirmed", record(1, 25000, 101, 1700000000, 3, 1700000100, 0xdeadbeef, 0, 1700000000123))
write("records", "unconfirmed", record(2, 1000, expires=1700000030000, stored=1700000000000))
write("records", "not_found", record(3, expires=1700000010000, stored=1700000000000))
write("records", "empty", b"")
