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
CONFIG=envoy/local.yaml
if [ "${LEDGER:-}" = etcd ]; then
  # One etcd member for the ledger, data kept in .run/etcd; auto-compaction as the README advises.
  ETCD=${TXGATE_ETCD:-etcd}
  "$ETCD" --name txgate-local --data-dir .run/etcd \
    --listen-client-urls http://127.0.0.1:2379 --advertise-client-urls http://127.0.0.1:2379 \
    --listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
    --initial-cluster txgate-local=http://127.0.0.1:2380 \
    --auto-compaction-mode periodic --auto-compaction-retention 1h >.run/etcd.log 2>&1 &
  pids+=($!)
  for _ in $(seq 1 100); do curl -fs http://127.0.0.1:2379/health >/dev/null 2>&1 && break; sleep 0.1; done
  CONFIG=envoy/ledger.yaml
elif [ -n "${LEDGER:-}" ]; then
  echo "LEDGER=$LEDGER: only LEDGER=etcd is known"; exit 1
fi
"$ENVOY" -c "$CONFIG" --concurrency 2 -l warning --component-log-level wasm:info \
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

  # 5. The payment's status (answered by txgate, no grant used) and the manifest
  curl -s "http://127.0.0.1:10000/.well-known/txgate/status?txid=$TXID&path=/api/hello"; echo
  curl -s http://127.0.0.1:10000/.well-known/txgate; echo

  # 6. x402 clients read the PAYMENT-REQUIRED header; a browser gets the paywall page:
  #    open http://127.0.0.1:10000/api/hello in a browser
  curl -s -o /dev/null -D - http://127.0.0.1:10000/api/hello | grep -i '^payment-required' | cut -d' ' -f2 | base64 -d; echo

  # Free route, a malformed txid (400) and the counters
  curl -s http://127.0.0.1:10000/free/status; echo
  curl -s -H "x-bitcoin-txid: nope" http://127.0.0.1:10000/api/hello; echo
  curl -s http://127.0.0.1:9901/stats | grep txgate_

Press Ctrl-C to stop.
TXT
if [ "${LEDGER:-}" = etcd ]; then
cat <<'TXT'

The ledger is on (envoy/ledger.yaml): each payment buys 100 requests within 1 h, bound to the first
x-api-key that uses it, counted on etcd (127.0.0.1:2379) in blocks of 8. Add -H "x-api-key: alice"
to the requests above, then:

  # Another client with the same txid: 402 payment_bound_to_other_client
  curl -s -H "x-bitcoin-txid: $TXID" -H "x-api-key: bob" http://127.0.0.1:10000/api/hello; echo

  # What etcd holds (keys are base64 in etcd's JSON gateway): pay/, use/ and claim/ per payment
  curl -s http://127.0.0.1:2379/v3/kv/range -d '{"key":"dHhnYXRlLw==","range_end":"dHhnYXRlMA=="}' |
    python3 -c 'import sys,json,base64; [print(base64.b64decode(k["key"]).decode(), "=", base64.b64decode(k["value"]).decode()) for k in json.load(sys.stdin).get("kvs",[])]'

  # Ledger counters: calls, blocks, errors, 503s
  curl -s http://127.0.0.1:9901/stats | grep txgate_ledger
TXT
fi
wait -n "${pids[@]}" || true
echo "a process stopped; shutting down (see .run/*.log)"
