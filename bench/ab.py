#!/usr/bin/env python3
"""A/B of two txgate builds on the same requests: alternating runs, medians of req/s and of the Envoy's
CPU per request (the steadier figure on a shared machine).

    python3 bench/ab.py A.wasm B.wasm [--scenarios unpaid,paywall,paid_warm,free] [--reps 7] [--duration 2]
    python3 bench/ab.py X.wasm X.wasm --config-b other.json     (one build, two configs)

Reuses bench.py's processes, chain and wrk driver; both Envoys get bench/txgate-config.json.
"""
import argparse
import json
import os
import shutil
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench as b  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("a")
    ap.add_argument("b")
    ap.add_argument("--scenarios", default="unpaid,paywall,paid_warm,free")
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--duration", type=int, default=2)
    ap.add_argument("--connections", type=int, default=16)
    ap.add_argument("--config", default=str(b.BENCH / "txgate-config.json"))
    ap.add_argument("--config-b", help="B's plugin config (default: --config)")
    args = ap.parse_args()
    work = b.ROOT / "target/bench/ab"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    allowed = sorted(os.sched_getaffinity(0))
    cpu_envoy, cpu_load = (str(allowed[0]), str(allowed[1])) if len(allowed) >= 2 else (None, None)
    plugin = json.loads(Path(args.config).read_text())
    scenarios = [s for s in b.SCENARIOS if s["name"] in args.scenarios.split(",")]
    procs = b.Procs()
    try:
        _, explorer_port, warm_txid, _ = b.ensure_txids(procs, work, 0, cpu_load)
        upstream = b.Envoy(procs, work, "upstream", b.envoy_yaml("upstream", 0, 0, None), cpu_load)
        envoys = {}
        plugin_b = json.loads(Path(args.config_b).read_text()) if args.config_b else plugin
        for label, wasm, cfg in (("A", args.a, plugin), ("B", args.b, plugin_b)):
            b.TXGATE_WASM = Path(wasm).resolve()
            envoys[label] = b.Envoy(procs, work, label, b.envoy_yaml("txgate", upstream.port, explorer_port, cfg),
                                    cpu_envoy)
        for s in scenarios:
            value = warm_txid if s.get("value") == "warm" else s.get("value")
            runs = {"A": [], "B": []}
            for rep in range(args.reps + 1):
                for label in (["A", "B"] if rep % 2 else ["B", "A"]):
                    e = envoys[label]
                    r = b.wrk(f"http://127.0.0.1:{e.port}{s['path']}", args.connections, 1 if rep == 0 else args.duration,
                              cpu_load, work, value=value, headers=s.get("headers"), pid=e.proc.pid)
                    if rep:
                        runs[label].append(r)
            med = {k: (statistics.median(r["rps"] for r in v), statistics.median(r["cpu_us"] for r in v))
                   for k, v in runs.items()}
            pair = statistics.median(rb["rps"] / ra["rps"] for ra, rb in zip(runs["A"], runs["B"]))
            b.log(f"{s['name']:12} A {med['A'][0]:8.0f} rps {med['A'][1]:6.1f} µs CPU | B {med['B'][0]:8.0f} rps "
                  f"{med['B'][1]:6.1f} µs CPU | B/A req/s {pair:.3f} (paired), CPU {med['B'][1] - med['A'][1]:+.1f} µs")
    finally:
        procs.stop_all()


if __name__ == "__main__":
    sys.exit(main())
