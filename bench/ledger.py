#!/usr/bin/env python3
"""The etcd ledger's cost: warm paid requests with the ledger against the same grant without it,
first use (explorer lookup plus one etcd round trip), and etcd calls per 1000 warm requests.

    python3 bench/ledger.py            ~2 minutes; writes bench/results/ledger.json and ledger.md
    python3 bench/ledger.py --smoke    a few hundred requests, checks statuses

Reuses bench.py's processes, chain and wrk driver. Everything on 127.0.0.1; a single etcd member
(Debian's etcd-server) with its data in target/bench/run, stopped with everything else.
"""
import argparse
import json
import os
import shutil
import statistics
import sys
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench as b  # noqa: E402

ETCD = os.environ.get("TXGATE_ETCD", shutil.which("etcd") or "/usr/bin/etcd")
VARIANTS = ["envoy", "txgate_grant", "txgate_ledger"]


def free_port():
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_etcd(procs, work, cpus):
    client, peer = free_port(), free_port()
    return client, start_etcd_on(procs, work, cpus, client, peer)


def start_etcd_on(procs, work, cpus, client, peer):
    url = lambda p: f"http://127.0.0.1:{p}"  # noqa: E731
    return procs.start("etcd", [ETCD, "--name", "bench", "--data-dir", str(work / "etcd"),
                         "--listen-client-urls", url(client), "--advertise-client-urls", url(client),
                         "--listen-peer-urls", url(peer), "--initial-advertise-peer-urls", url(peer),
                         "--initial-cluster", f"bench={url(peer)}", "--listen-metrics-urls", url(free_port()),
                         "--auto-compaction-mode", "periodic", "--auto-compaction-retention", "1h"],
                cpus, work / "etcd.log")


def wait_etcd(client):
    url = lambda p: f"http://127.0.0.1:{p}"  # noqa: E731
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            if '"true"' in b.http("GET", f"{url(client)}/health", timeout=2)[1]:
                return client
        except OSError:
            pass
        time.sleep(0.05)
    raise SystemExit("etcd did not become healthy; see target/bench/run/etcd.log")


def cpu_seconds(pid):
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def timed_get(port, txid):
    req = urllib.request.Request(f"http://127.0.0.1:{port}/api/data", headers={b.HEADER: txid})
    t0 = time.perf_counter()
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            status = r.status
            r.read()
    except urllib.error.HTTPError as e:
        status = e.code
    return status, (time.perf_counter() - t0) * 1e6


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--reps", type=int, default=9)
    ap.add_argument("--duration", type=int, default=2)
    ap.add_argument("--connections", type=int, default=16)
    ap.add_argument("--block", default="auto", help='ledger.block: a number or "auto" (256 for this grant)')
    ap.add_argument("--first-use", type=int, default=60, help="cold txids per variant for first-use latency")
    args = ap.parse_args()
    if args.smoke:
        args.reps, args.duration, args.first_use = 1, 1, 5
    if not Path(ETCD).exists():
        raise SystemExit(f"{ETCD} not found (`make tools` installs Debian's etcd-server)")
    work = b.ROOT / "target/bench/run"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    allowed = sorted(os.sched_getaffinity(0))
    pin = len(allowed) >= 2 and shutil.which("taskset")
    cpu_envoy, cpu_load = (str(allowed[0]), str(allowed[1])) if pin else (None, None)

    base = json.loads((b.BENCH / "txgate-config.json").read_text())
    base["grant"] = {"requests": 1_000_000_000}
    ledger = dict(base, ledger={"etcd": {"cluster": "etcd", "authority": "etcd", "key_prefix": f"bench{int(time.time())}/"},
                                "block": args.block if args.block == "auto" else int(args.block)})
    procs = b.Procs()
    results = {"facts": b.machine_facts(), "settings": vars(args), "block": args.block}
    failures = []
    try:
        explorer, explorer_port, warm_txid, cold = b.ensure_txids(procs, work, 2 * args.first_use, cpu_load)
        etcd_port, etcd_proc = start_etcd(procs, work, cpu_load)
        wait_etcd(etcd_port)
        upstream = b.Envoy(procs, work, "upstream", b.envoy_yaml("upstream", 0, 0, None), cpu_load)
        etcd_cluster = b.cluster_yaml("etcd", etcd_port)
        yamls = {
            "envoy": b.envoy_yaml("envoy", upstream.port, explorer_port, None),
            "txgate_grant": b.envoy_yaml("txgate", upstream.port, explorer_port, base),
            "txgate_ledger": b.envoy_yaml("txgate", upstream.port, explorer_port, ledger).replace(
                "admin:\n", etcd_cluster + "admin:\n", 1),
        }
        envoys = {v: b.Envoy(procs, work, v, y, cpu_envoy) for v, y in yamls.items()}
        b.log("started " + ", ".join(f"{v} :{e.port}" for v, e in envoys.items()) + f", etcd :{etcd_port}")

        # First use: a new paid txid per request, one at a time (explorer lookup + tip, + etcd txn).
        first = {}
        for i, v in enumerate(["txgate_grant", "txgate_ledger"]):
            txids = cold[i * args.first_use:(i + 1) * args.first_use]
            lat = []
            for t in txids:
                status, us = timed_get(envoys[v].port, t)
                if status != 200:
                    failures.append(f"first use on {v}: {status}")
                lat.append(us)
            first[v] = {"p50_us": round(statistics.median(lat)), "max_us": round(max(lat)), "n": len(lat)}
        results["first_use"] = first
        b.log(f"first use: {first}")

        # Warm: the same verified txid, the variants interleaved.
        for v in VARIANTS[1:]:
            timed_get(envoys[v].port, warm_txid)
        calls0 = envoys["txgate_ledger"].stat("txgate_ledger_calls")
        etcd_cpu = 0.0
        runs = {v: [] for v in VARIANTS}
        for rep in range(args.reps):
            order = VARIANTS[rep % 3:] + VARIANTS[:rep % 3]
            for v in order:
                value = None if v == "envoy" else warm_txid
                e0 = cpu_seconds(etcd_proc.pid)
                r = b.wrk(f"http://127.0.0.1:{envoys[v].port}/api/data", args.connections, args.duration, cpu_load,
                          work, value=value, limit=300 if args.smoke else 0)
                if v == "txgate_ledger":
                    etcd_cpu += cpu_seconds(etcd_proc.pid) - e0
                bad = {c: n for c, n in r["statuses"].items() if c != 200}
                if bad or r["errors"]:
                    failures.append(f"warm/{v}: statuses {r['statuses']}, errors {r['errors']}")
                runs[v].append(r)
        calls = envoys["txgate_ledger"].stat("txgate_ledger_calls") - calls0
        ledger_requests = sum(r["requests"] for r in runs["txgate_ledger"])
        warm = {v: {"rps": round(statistics.median(r["rps"] for r in rs)),
                    "p50_us": statistics.median(r["p50_us"] for r in rs),
                    "p99_us": statistics.median(r["p99_us"] for r in rs),
                    "cpu_busy": {c: statistics.median(r["cpu_busy"].get(c, 0) for r in rs) for c in rs[0]["cpu_busy"]}}
                for v, rs in runs.items()}
        results["warm"] = warm
        results["ledger_calls_per_1000"] = round(1000 * calls / ledger_requests, 2) if ledger_requests else None
        # Each repetition runs the two back to back: their ratio cancels what the machine did meanwhile.
        paired = [lr["rps"] / gr["rps"] for lr, gr in zip(runs["txgate_ledger"], runs["txgate_grant"]) if gr["rps"]]
        results["paired_ratios"] = [round(x, 3) for x in paired]
        results["ratio_ledger_to_grant"] = round(statistics.median(paired), 3) if paired else None
        results["ratio_of_medians"] = round(warm["txgate_ledger"]["rps"] / warm["txgate_grant"]["rps"], 3)
        results["etcd_cpu_ms_per_1000"] = round(1000 * 1000 * etcd_cpu / ledger_requests, 1) if ledger_requests else None
        results["errors_503"] = envoys["txgate_ledger"].stat("txgate_rejected_ledger_unavailable")
    finally:
        procs.stop_all()
    out = b.ROOT / ("target/bench/smoke" if args.smoke else "bench/results")
    out.mkdir(parents=True, exist_ok=True)
    (out / "ledger.json").write_text(json.dumps(results, indent=1) + "\n")
    w, f = results.get("warm", {}), results.get("first_use", {})
    md = [
        "# The etcd ledger's cost (`make bench-ledger`)", "",
        f"{results['facts']['date']}, {results['facts']['cpu']}, Envoy {results['facts']['envoy']}, "
        f"git {results['facts']['git']}; one etcd 3.4 member on loopback, block {args.block}, "
        f"{args.connections} connections, {args.reps} × {args.duration} s per variant, the order rotating each repetition (medians).", "",
        "| warm paid (same txid) | req/s | p50 µs | p99 µs | CPUs busy |", "|---|---|---|---|---|",
        *[f"| {v} | {w[v]['rps']} | {w[v]['p50_us']} | {w[v]['p99_us']} | "
          f"{' / '.join(f'{c}: {x:.0%}' for c, x in sorted(w[v]['cpu_busy'].items()))} |" for v in VARIANTS if v in w], "",
        f"txgate_ledger / txgate_grant requests/s: **{results.get('ratio_ledger_to_grant')}** (median of the "
        f"{len(results.get('paired_ratios', []))} paired ratios, each repetition running both back to back: "
        f"{', '.join(str(x) for x in results.get('paired_ratios', []))}; ratio of the medians "
        f"{results.get('ratio_of_medians')}); "
        f"etcd calls per 1000 warm requests: **{results.get('ledger_calls_per_1000')}** "
        f"(background refills; none on the request path); etcd used "
        f"**{results.get('etcd_cpu_ms_per_1000')} ms of CPU per 1000 warm requests**, on the load "
        f"generator's CPU ({cpu_load}).", "",
        "| first use (new paid txid, sequential) | p50 µs | max µs |", "|---|---|---|",
        *[f"| {v} | {f[v]['p50_us']} | {f[v]['max_us']} |" for v in f], "",
        "`envoy`: no filter. `txgate_grant`: txgate with a grant counted in the Envoy's shared data. "
        "`txgate_ledger`: the same grant on the etcd ledger. First use is an explorer lookup (+ tip) in "
        "both, plus one etcd round trip (first contact) with the ledger.", "",
    ]
    (out / "ledger.md").write_text("\n".join(md))
    print("\n".join(md))
    if failures:
        print("FAILURES:\n" + "\n".join(failures))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
