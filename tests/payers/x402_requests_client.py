"""A stock x402 client (Python `x402`, requests transport) with a small bitcoin plug-in: on
txgate's 402 it pays the offered address on the devnet, mines the confirmations the offer asks
for, waits until the gate's status endpoint says "paid", and returns the txid; the transport
retries by itself.

Usage: python x402_requests_client.py <url> <devnet explorer url>
Prints one JSON line: {status, body, payment_response, paid_txid}.
"""

import base64
import json
import sys
import time
import urllib.parse

import requests
from x402 import x402ClientSync
from x402.http.clients import x402_requests

url, devnet = sys.argv[1], sys.argv[2]
paid = {}


class BitcoinTxidScheme:
    scheme = "exact"

    def create_payment_payload(self, requirements):
        extra = requirements.extra
        if extra.get("paymentFlow") != "upfront" or extra.get("unit") != "sat":
            raise ValueError("not a txgate bitcoin offer")
        r = requests.post(devnet + "/control/pay", json={"address": requirements.pay_to, "sats": int(requirements.amount)}, timeout=10)
        r.raise_for_status()
        txid = r.json()["txid"]
        requests.post(devnet + "/control/mine", json={"blocks": extra["minConfirmations"]}, timeout=10).raise_for_status()
        parts = urllib.parse.urlsplit(url)
        status = urllib.parse.urlunsplit((parts.scheme, parts.netloc, "/.well-known/txgate/status",
                                          urllib.parse.urlencode({"txid": txid, "path": parts.path}), ""))
        for _ in range(50):
            if requests.get(status, timeout=10).json().get("state") == "paid":
                break
            time.sleep(0.1)
        paid["txid"] = txid
        return {"txid": txid}


client = x402ClientSync()
client.register("bip122:*", BitcoinTxidScheme())
network = "bip122:0f9188f13cb7b2c71f2a335e3a4fc328"
client.set_spend_controls({"allowed_assets": [
    {"network": network, "asset": network + "/slip44:0", "max_amount_per_payment": "10000"}]})
session = x402_requests(client)
response = session.get(url, timeout=30)
header = response.headers.get("payment-response")
print(json.dumps({
    "status": response.status_code,
    "body": response.json(),
    "payment_response": json.loads(base64.b64decode(header)) if header else None,
    "paid_txid": paid.get("txid"),
}))
