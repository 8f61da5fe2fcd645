#!/usr/bin/env bash
# `make run`: the local regtest explorer, the demo API and Envoy with txgate, all on 127.0.0.1.
# Ctrl-C stops everything. The chain is kept in .run/chain between runs.
set -euo pipefail
cd "$(dirname "$0")/.."

ENVOY=${TXGATE_ENVOY:-.venv/bin/envoy}
BIN=${TXGATE_DEVNET_DIR:-target/debug}
mkdir -p .run
pids=()
stop() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap stop EXIT INT TERM

"$BIN/txgate-devnet" serve --data-dir .run/chain --listen 127.0.0.1:3002 >.run/explorer.log 2>&1 &
pids+=($!)
"$BIN/txgate-demo-api" --listen 127.0.0.1:8081 >.run/api.log 2>&1 &
pids+=($!)
"$ENVOY" -c envoy/local.yaml --concurrency 2 -l warning --component-log-level wasm:info \
  --log-path .run/envoy.log &
pids+=($!)

for _ in $(seq 1 100); do
  curl -fs http://127.0.0.1:9901/ready >/dev/null 2>&1 && curl -fs http://127.0.0.1:3002/api/blocks/tip/height >/dev/null 2>&1 && break
  sleep 0.1
done
curl -fs http://127.0.0.1:9901/ready >/dev/null || { echo "Envoy did not start; see .run/envoy.log"; tail -20 .run/envoy.log; exit 1; }

cat <<'TXT'
txgate is running: API on http://127.0.0.1:10000, explorer on :3002, Envoy admin on :9901.
Logs are in .run/. Try, in another terminal:

  # 1. No payment: 402 with the payment challenge (price, address, header)
  curl -s http://127.0.0.1:10000/api/hello; echo

  # 2. Pay 1000 sats to the merchant address on the local regtest chain (prints the txid)
  TXID=$(curl -s -X POST http://127.0.0.1:3002/control/pay \
    -d '{"address":"bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080","sats":1000}' | sed 's/.*"txid":"\([0-9a-f]*\)".*/\1/'); echo $TXID

  # 3. Not confirmed yet: 402 insufficient_confirmations
  curl -s -H "x-bitcoin-txid: $TXID" http://127.0.0.1:10000/api/hello; echo

  # 4. Mine a block, then the same request gets through (200, with x-txgate-* headers at the API)
  curl -s -X POST http://127.0.0.1:3002/control/mine -d '{"blocks":1}'; echo
  curl -s -H "x-bitcoin-txid: $TXID" http://127.0.0.1:10000/api/hello; echo

  # Free route, a malformed txid (400) and the counters
  curl -s http://127.0.0.1:10000/free/status; echo
  curl -s -H "x-bitcoin-txid: nope" http://127.0.0.1:10000/api/hello; echo
  curl -s http://127.0.0.1:9901/stats | grep txgate_

Press Ctrl-C to stop.
TXT
wait -n "${pids[@]}" || true
echo "a process stopped; shutting down (see .run/*.log)"
