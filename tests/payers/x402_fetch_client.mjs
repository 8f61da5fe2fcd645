// A stock x402 client (@x402/fetch) with a small bitcoin plug-in: on txgate's 402 it pays the
// offered address on the devnet, mines the confirmations the offer asks for, waits until the
// gate's status endpoint says "paid", and hands the txid back; @x402/fetch retries by itself.
// Usage: node x402_fetch_client.mjs <url> <devnet explorer url>
// Prints one JSON line: {status, body, payment_response, paid_txid}.
import { wrapFetchWithPayment, x402Client, decodePaymentResponseHeader } from "@x402/fetch";

const [url, devnet] = process.argv.slice(2);
let paidTxid = null;

async function control(path, body) {
  const r = await fetch(devnet + path, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body) });
  if (!r.ok) throw new Error(`devnet ${path}: ${r.status} ${await r.text()}`);
  return r.json();
}

class BitcoinTxidScheme {
  scheme = "exact";
  async createPaymentPayload(x402Version, requirements) {
    if (requirements.extra?.paymentFlow !== "upfront" || requirements.extra?.unit !== "sat") {
      throw new Error("not a txgate bitcoin offer");
    }
    const { txid } = await control("/control/pay", { address: requirements.payTo, sats: Number(requirements.amount) });
    await control("/control/mine", { blocks: requirements.extra.minConfirmations });
    const status = new URL("/.well-known/txgate/status", url);
    status.searchParams.set("txid", txid);
    status.searchParams.set("path", new URL(url).pathname);
    for (let i = 0; i < 50; i++) {
      const s = await (await fetch(status)).json();
      if (s.state === "paid") break;
      await new Promise((done) => setTimeout(done, 100));
    }
    paidTxid = txid;
    return { x402Version, payload: { txid } };
  }
}

const client = new x402Client().register("bip122:*", new BitcoinTxidScheme());
// Spend controls: bitcoin is no default asset; allow it with a cap in sats.
client.setSpendControls?.({
  allowedAssets: [{ network: "bip122:0f9188f13cb7b2c71f2a335e3a4fc328", asset: "bip122:0f9188f13cb7b2c71f2a335e3a4fc328/slip44:0", maxAmountPerPayment: "10000" }],
});
const pay = wrapFetchWithPayment(fetch, client);
const response = await pay(url);
const header = response.headers.get("payment-response");
console.log(JSON.stringify({
  status: response.status,
  body: await response.json(),
  payment_response: header ? decodePaymentResponseHeader(header) : null,
  paid_txid: paidTxid,
}));
