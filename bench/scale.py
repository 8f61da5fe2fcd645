#!/usr/bin/env python3
"""Scale, not just speed (issue 15): memory per Envoy against cache.max_entries, floods of distinct
bogus txids and of distinct source addresses (memory must stay flat at its bound, explorer calls
at most one per distinct txid), and requests/s with two Envoy workers against one.

    python3 bench/scale.py              full run, writes bench/results/scale.json and scale.md
    python3 bench/scale.py --smoke      small counts (about a minute), target/bench/smoke/scale.*
    python3 bench/scale.py --flood 200000 --sources 20000    smaller floods

Parts, in order (each starts its own Envoys and stops them when done):
  1. memory: Envoys (one worker) without a filter, with the do-nothing reference filter, and with
     txgate at cache.max_entries 1 000 / 4 096 / 10 000 / 100 000 (and penalty.max_clients 100 000):
     RSS and admin /memory once configured (txgate creates its shared-data slot tables up front),
     and again after a few hundred requests.
  2. flood of distinct bogus txids (well-formed, not on the chain), penalty box off (on, the client
     is banned after max_strikes and no txid is looked at any more), --flood requests in ten chunks:
     RSS, statuses and txgate's counters after each chunk; the explorer's own per-path request
     counts at the end. Then 16 bogus txids cycled for a few seconds: at most one lookup each per
     not_found_ttl.
  3. flood of distinct source addresses, penalty box on (identity source_address): one request per
     address (127.a.b.c, all loopback on Linux) with a malformed txid (a strike, no explorer call),
     --sources addresses in ten chunks: RSS and the penalty counters after each chunk.
  4. two workers against one: "paid, warm" and "unpaid (402)" through Envoy alone, the reference
     filter and txgate, each at --concurrency 1 and 2, short alternating runs, nothing pinned.

Reuses bench.py's processes, chain and wrk driver. Everything listens on 127.0.0.1; the source flood
binds its client sockets to 127.0.0.0/8 addresses only. Every process started here is stopped at the end.
"""
import argparse
import asyncio
import json
import os
import re
import shutil
import socket
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench as b  # noqa: E402

MEMORY_ENTRIES = [1000, 4096, 10_000, 100_000]
TXID_RE = re.compile(r"[0-9a-f]{64}")


def rss(pid):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def txgate_stats(envoy):
    """Every txgate counter of an Envoy, by name without Envoy's `wasmcustom.` prefix."""
    out = {}
    for line in b.http("GET", envoy.admin_url("/stats?filter=txgate"))[1].splitlines():
        key, _, value = line.partition(": ")
        try:
            out[key.removeprefix("wasmcustom.")] = int(value)
        except ValueError:
            pass
    return out


def delta(after, before):
    return {k: v - before.get(k, 0) for k, v in after.items() if v - before.get(k, 0)}


def merge(counts):
    out = {}
    for c in counts:
        for k, n in c.items():
            out[k] = out.get(k, 0) + n
    return dict(sorted(out.items(), key=lambda kv: str(kv[0])))


def mib(x):
    return f"{x / 2**20:.1f}"


def plugin_with(base, **changes):
    """The bench config with some top-level keys replaced (None: removed) and cache/penalty fields set."""
    p = json.loads(json.dumps(base))
    for k, v in changes.items():
        if k in ("max_entries",):
            p["cache"][k] = v
        elif k == "max_clients":
            p["penalty"][k] = v
        elif v is None:
            p.pop(k, None)
        else:
            p[k] = v
    return p


# ---------------------------------------------------------------- 1. memory against max_entries

def part_memory(procs, work, upstream, explorer_port, base, warm_txid, cpu_envoy, cpu_load, smoke):
    b.log("memory: Envoy, reference, txgate at several cache.max_entries (one worker each)")
    variants = [("envoy", "envoy", None), ("reference", "reference", None)]
    variants += [(f"txgate max_entries {n}", "txgate", plugin_with(base, max_entries=n)) for n in MEMORY_ENTRIES]
    variants.append(("txgate max_entries 4096, penalty.max_clients 100000", "txgate",
                     plugin_with(base, max_clients=100_000)))
    rows = []
    for i, (label, kind, plugin) in enumerate(variants):
        e = b.Envoy(procs, work, f"mem{i}", b.envoy_yaml(kind, upstream.port, explorer_port, plugin), cpu_envoy)
        time.sleep(1.0)  # settle: configuration done, nothing served yet
        idle = e.memory()
        for value in (warm_txid, None):  # a few hundred paid and unpaid requests
            b.wrk(f"http://127.0.0.1:{e.port}/api/data", 8, 10, cpu_load, work, value=value,
                  limit=100 if smoke else 300)
        time.sleep(0.5)
        used = e.memory()
        rows.append({"variant": label, "idle": idle, "after_requests": used,
                     "max_entries": (plugin or {}).get("cache", {}).get("max_entries")})
        b.log(f"  {label}: RSS idle {mib(idle['rss'])} MiB, allocated {mib(idle['allocated'])} MiB; "
              f"after requests RSS {mib(used['rss'])} MiB")
        e.proc.terminate()
        e.proc.wait()
    return rows


# ---------------------------------------------------------------- 2. flood of distinct bogus txids

def part_txid_flood(procs, work, upstream, explorer_url, explorer_port, base, args, cpu_envoy, cpu_load):
    plugin = plugin_with(base, penalty=None, max_entries=4096)
    e = b.Envoy(procs, work, "flood-txids", b.envoy_yaml("txgate", upstream.port, explorer_port, plugin), cpu_envoy)
    time.sleep(0.5)
    salt = os.urandom(6).hex()  # never seen before by this explorer or any Envoy
    b.log(f"txid flood: {args.flood:,} distinct bogus txids, {args.flood_connections} connections, "
          f"penalty box off, cache.max_entries 4096")
    b.http("POST", f"{explorer_url}/control/stats/reset", {})
    s0 = txgate_stats(e)
    rq0 = e.stat("http.api.downstream_rq_total") or 0
    samples = [{"requests": 0, "received": 0, "rss": rss(e.proc.pid), "seconds": 0.0, "stats": {}}]
    chunks = 10
    sent, statuses, errors, t0 = 0, [], 0, time.time()
    for c in range(chunks):
        n = args.flood // chunks + (args.flood % chunks if c == chunks - 1 else 0)
        prefix = f"b0c0{salt}{c:08x}"  # 24 hex digits; the counter makes the other 40
        r = b.wrk(f"http://127.0.0.1:{e.port}/api/data", args.flood_connections, 900, cpu_load, work, limit=n,
                  extra_env={"BENCH_COUNTER": prefix, "BENCH_HEADER": b.HEADER}, pid=e.proc.pid)
        sent += r["requests"]
        statuses.append(r["statuses"])
        errors += r["errors"]
        st = txgate_stats(e)
        # wrk stops at its count with up to a connection's worth of requests still in flight: Envoy
        # answers them too. Each request carries a new txid: Envoy's request count is the txids sent.
        received = (e.stat("http.api.downstream_rq_total") or 0) - rq0
        samples.append({"requests": sent, "received": received, "rss": rss(e.proc.pid),
                        "seconds": round(time.time() - t0, 1),
                        "rps": round(r["rps"]), "statuses": r["statuses"], "stats": delta(st, s0),
                        "envoy_cpu_us_per_request": r["cpu_us"], "cpu_busy": r["cpu_busy"]})
        b.log(f"  {sent:,} requests in {time.time() - t0:.1f}s ({r['rps']:.0f} req/s): RSS {mib(samples[-1]['rss'])} "
              f"MiB, statuses {r['statuses']}, explorer calls {samples[-1]['stats'].get('txgate_explorer_calls', 0)}, "
              f"Envoy CPU {r['cpu_us']} µs/request, CPUs busy {r['cpu_busy']}")
        if c == 0 and r["rps"]:
            b.log(f"  at this rate the {args.flood:,} requests take about {args.flood / r['rps']:.0f} s")
        if e.proc.poll() is not None:
            raise SystemExit(f"txgate Envoy died during the txid flood:\n{e.log_text()[-3000:]}")
    seconds = time.time() - t0
    ex = json.loads(b.http("GET", f"{explorer_url}/control/stats", timeout=120)[1])
    per_txid = {}
    for path, n in ex.get("by_path", {}).items():
        m = TXID_RE.search(path)
        if m:
            per_txid[m.group(0)] = per_txid.get(m.group(0), 0) + n
    flood_txids = {t: n for t, n in per_txid.items() if t.startswith("b0c0" + salt)}
    result = {
        "requests": sent, "received": samples[-1]["received"], "seconds": round(seconds, 1),
        "rps": round(samples[-1]["received"] / seconds) if seconds else None,
        "connections": args.flood_connections, "socket_errors": errors, "statuses": merge(statuses),
        "samples": samples, "txgate_stats": delta(txgate_stats(e), s0),
        "explorer": {"total": ex.get("total"), "tx": ex.get("tx"), "tip": ex.get("tip"),
                     "distinct_txids_looked_up": len(flood_txids),
                     "max_calls_per_txid": max(flood_txids.values(), default=0),
                     "txids_looked_up_more_than_once": sum(1 for n in flood_txids.values() if n > 1)},
    }
    # The same few bogus txids over and over: the negative cache answers, one lookup each per TTL.
    repeat_s = 1 if args.smoke else 3
    bogus = [f"b0d0{salt}{i:048d}" for i in range(16)]
    b.http("POST", f"{explorer_url}/control/stats/reset", {})
    r = b.wrk(f"http://127.0.0.1:{e.port}/api/data", 16, repeat_s, cpu_load, work, values=bogus)
    ex = json.loads(b.http("GET", f"{explorer_url}/control/stats")[1])
    calls = {}
    for path, n in ex.get("by_path", {}).items():
        m = TXID_RE.search(path)
        if m and m.group(0) in bogus:
            calls[m.group(0)] = calls.get(m.group(0), 0) + n
    result["repeat"] = {"distinct": len(bogus), "seconds": repeat_s, "requests": r["requests"],
                        "statuses": r["statuses"], "explorer_tx_calls": sum(calls.values()),
                        "max_calls_per_txid": max(calls.values(), default=0)}
    b.log(f"  repeat: {r['requests']} requests over {len(bogus)} bogus txids in {repeat_s}s: "
          f"{sum(calls.values())} explorer lookups, at most {result['repeat']['max_calls_per_txid']} per txid")
    result["alive"] = e.proc.poll() is None
    e.proc.terminate()
    e.proc.wait()
    return result


# ---------------------------------------------------------------- 3. flood of distinct source addresses

def sources(n):
    """n distinct loopback addresses 127.a.b.c, skipping 127.0.0.1 and the .0 and .255 ones."""
    out = []
    for a in range(256):
        for bb in range(256):
            for c in range(1, 255):
                if (a, bb, c) == (0, 0, 1):
                    continue
                out.append(f"127.{a}.{bb}.{c}")
                if len(out) == n:
                    return out
    return out


async def source_requests(port, addrs, concurrency, timeout=10):
    """One HTTP/1.1 request per source address (Connection: close), `concurrency` at a time."""
    loop = asyncio.get_running_loop()
    req = (f"GET /api/data HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{b.HEADER}: not-a-txid\r\n"
           "Connection: close\r\n\r\n").encode()
    statuses = {}
    it = iter(addrs)

    async def one(src):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setblocking(False)
        try:
            s.setsockopt(socket.IPPROTO_IP, getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24), 1)
            s.bind((src, 0))
            await loop.sock_connect(s, ("127.0.0.1", port))
            await loop.sock_sendall(s, req)
            # Read the whole answer, then close first: waiting for Envoy's close would wait out its
            # delayed_close_timeout (1 s) on every connection.
            buf, need = b"", None
            while need is None or len(buf) < need:
                d = await loop.sock_recv(s, 65536)
                if not d:
                    break
                buf += d
                if need is None and b"\r\n\r\n" in buf:
                    head = buf.split(b"\r\n\r\n", 1)[0]
                    m = re.search(rb"(?im)^content-length:\s*(\d+)", head)
                    if m:
                        need = len(head) + 4 + int(m.group(1))
                    else:  # chunked: until Envoy closes; no body at all otherwise
                        need = float("inf") if b"transfer-encoding" in head.lower() else len(head) + 4
            m = re.match(rb"HTTP/1\.1 (\d{3})", buf)
            return int(m.group(1)) if m else "bad_response"
        finally:
            s.close()

    async def worker():
        for src in it:
            try:
                key = await asyncio.wait_for(one(src), timeout)
            except (OSError, asyncio.TimeoutError) as e:
                key = f"error {type(e).__name__}"
            statuses[key] = statuses.get(key, 0) + 1

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return statuses


def part_source_flood(procs, work, upstream, explorer_port, base, args, cpu_envoy, cpu_load):
    e = b.Envoy(procs, work, "flood-sources", b.envoy_yaml("txgate", upstream.port, explorer_port, base), cpu_envoy)
    time.sleep(0.5)
    pen = base.get("penalty", {})
    b.log(f"source flood: {args.sources:,} source addresses, one malformed txid each, {args.source_concurrency} "
          f"at a time, penalty box on ({pen})")
    addrs = sources(args.sources)
    if len(addrs) < args.sources:
        raise SystemExit(f"only {len(addrs)} loopback source addresses available")
    # The client on the load generator's CPU, like wrk.
    affinity = os.sched_getaffinity(0)
    if cpu_load is not None:
        os.sched_setaffinity(0, {int(cpu_load)})
    s0 = txgate_stats(e)
    samples = [{"sources": 0, "rss": rss(e.proc.pid), "seconds": 0.0, "stats": {}}]
    statuses, t0, done = [], time.time(), 0
    try:
        chunks = 10
        step = -(-len(addrs) // chunks)
        for c in range(chunks):
            part = addrs[c * step:(c + 1) * step]
            if not part:
                break
            t1 = time.time()
            st = asyncio.run(source_requests(e.port, part, args.source_concurrency))
            done += len(part)
            statuses.append(st)
            samples.append({"sources": done, "rss": rss(e.proc.pid), "seconds": round(time.time() - t0, 1),
                            "rps": round(len(part) / (time.time() - t1)), "statuses": st,
                            "stats": delta(txgate_stats(e), s0)})
            b.log(f"  {done:,} sources in {time.time() - t0:.1f}s ({samples[-1]['rps']} conn/s): RSS "
                  f"{mib(samples[-1]['rss'])} MiB, statuses {st}, strikes "
                  f"{samples[-1]['stats'].get('txgate_penalty_strikes', 0)}")
            if e.proc.poll() is not None:
                raise SystemExit(f"txgate Envoy died during the source flood:\n{e.log_text()[-3000:]}")
    finally:
        os.sched_setaffinity(0, affinity)
    seconds = time.time() - t0
    # The last source again, 25 more times one after the other: struck each time, banned once its
    # strikes (the one of the flood included) reach max_strikes.
    runs = []
    for _ in range(25):
        status = next(iter(asyncio.run(source_requests(e.port, [addrs[-1]], 1))))
        if runs and runs[-1][0] == status:
            runs[-1][1] += 1
        else:
            runs.append([status, 1])
    again = ", then ".join(f"{n} × {st}" for st, n in runs)
    result = {"sources": done, "seconds": round(seconds, 1), "rps": round(done / seconds) if seconds else None,
              "concurrency": args.source_concurrency, "statuses": merge(statuses), "samples": samples,
              "txgate_stats": delta(txgate_stats(e), s0), "penalty": pen,
              "last_source_25_more": again, "alive": e.proc.poll() is None}
    b.log(f"  the last source 25 more times: {again}")
    e.proc.terminate()
    e.proc.wait()
    return result


# ---------------------------------------------------------------- 4. two workers against one

def part_workers(procs, work, upstream, explorer_port, base, warm_txid, args):
    b.log("workers: paid warm and unpaid through envoy / reference / txgate at --concurrency 1 and 2, unpinned")
    envoys = {}
    for w in (1, 2):
        envoys[("txgate", w)] = b.Envoy(procs, work, f"w{w}-txgate",
                                        b.envoy_yaml("txgate", upstream.port, explorer_port, base), None, w)
        envoys[("envoy", w)] = b.Envoy(procs, work, f"w{w}-envoy",
                                       b.envoy_yaml("envoy", upstream.port, explorer_port, base), None, w)
        envoys[("reference", w)] = b.Envoy(procs, work, f"w{w}-reference",
                                           b.envoy_yaml("reference", upstream.port, explorer_port, base, ""), None, w)
    # The unpaid twin: the reference filter answering txgate's own 402, byte for byte.
    answer = b.capture_answer(envoys[("txgate", 1)].port, "/api/data", {})
    for w in (1, 2):
        envoys[("reference-402", w)] = b.Envoy(
            procs, work, f"w{w}-reference-402",
            b.envoy_yaml("reference", upstream.port, explorer_port, base, b.reply_spec("", answer)), None, w)
    scenarios = {"paid_warm": {"title": "paid, warm (same verified txid)", "value": warm_txid,
                               "reference": "reference", "expect": {200}},
                 "unpaid": {"title": "unpaid (no header, 402)", "value": None, "reference": "reference-402",
                            "expect": {402}}}
    variants = ["envoy", "reference", "txgate"]
    combos = [(v, w) for v in variants for w in (1, 2)]
    failures = []
    out = {}
    for name, s in scenarios.items():
        def target(v, w):
            return envoys[(s["reference"] if v == "reference" else v, w)]

        for v, w in combos:  # warm-up (V8 tier-up, the txid verified on every worker)
            b.wrk(f"http://127.0.0.1:{target(v, w).port}/api/data", args.worker_connections, 1, None, work,
                  value=s["value"], limit=300 if args.smoke else 0)
        runs = {c: [] for c in combos}
        for rep in range(args.reps):
            k = rep % len(combos)
            for v, w in combos[k:] + combos[:k]:
                e = target(v, w)
                r = b.wrk(f"http://127.0.0.1:{e.port}/api/data", args.worker_connections, args.duration, None,
                          work, value=s["value"], pid=e.proc.pid)
                expect = s["expect"] if v == "txgate" else ({200} if v == "envoy" or name == "paid_warm" else {402})
                bad = {c: n for c, n in r["statuses"].items() if c not in expect}
                if bad or r["errors"]:
                    failures.append(f"workers/{name}/{v}/{w}w: statuses {r['statuses']}, errors {r['errors']}")
                runs[(v, w)].append(r)
        res = {"title": s["title"], "variants": {}}
        for v in variants:
            one, two = runs[(v, 1)], runs[(v, 2)]
            paired = [t["rps"] / o["rps"] for o, t in zip(one, two) if o["rps"]]
            res["variants"][v] = {
                "rps_1w": round(statistics.median(r["rps"] for r in one)),
                "rps_2w": round(statistics.median(r["rps"] for r in two)),
                "ratio_2w_1w": round(statistics.median(paired), 3) if paired else None,
                "paired_ratios": [round(x, 3) for x in paired],
                "cpu_us_1w": statistics.median(r["cpu_us"] for r in one),
                "cpu_us_2w": statistics.median(r["cpu_us"] for r in two),
                "p99_us_1w": statistics.median(r["p99_us"] for r in one),
                "p99_us_2w": statistics.median(r["p99_us"] for r in two),
                "cpu_busy_2w": {str(c): round(statistics.median(r["cpu_busy"].get(c, 0) for r in two), 2)
                                for c in two[0]["cpu_busy"]},
            }
        out[name] = res
        b.log(f"  {name}: " + ", ".join(f"{v} {x['rps_1w']} -> {x['rps_2w']} req/s ({x['ratio_2w_1w']}x)"
                                        for v, x in res["variants"].items()))
    for e in envoys.values():
        e.proc.terminate()
        e.proc.wait()
    return out, failures


# ---------------------------------------------------------------- report

def rss_line(samples):
    first, last = samples[1]["rss"], samples[-1]["rss"]
    return (f"RSS before the flood {mib(samples[0]['rss'])} MiB, after its first tenth {mib(first)} MiB, at the end "
            f"{mib(last)} MiB (**{(last - first) / 2**20:+.1f} MiB** over the last nine tenths; "
            f"highest sample {mib(max(s['rss'] for s in samples))} MiB).")


def markdown(res, args):
    f = res["facts"]
    L = ["# Scale, not just speed (`make bench-scale`)", "",
         "Generated by `bench/scale.py`; raw numbers in `scale.json` beside this file.", ""]
    mem = res.get("memory")
    if mem:
        L += ["## Memory per Envoy against `cache.max_entries`", "",
              "One worker (`--concurrency 1`) each. *Configured*: 1 s after the Envoy is ready, nothing served; "
              "*after requests*: then a few hundred paid (warm) and unpaid requests.", "",
              "| Envoy | RSS configured MiB | heap allocated MiB | RSS after requests MiB | heap allocated after MiB |",
              "|---|---:|---:|---:|---:|"]
        for r in mem:
            L.append(f"| {r['variant']} | {mib(r['idle']['rss'])} | {mib(r['idle']['allocated'])} "
                     f"| {mib(r['after_requests']['rss'])} | {mib(r['after_requests']['allocated'])} |")
        L.append("")
    fl = res.get("txid_flood")
    if fl:
        ex, rp = fl["explorer"], fl["repeat"]
        L += ["## Flood of distinct bogus txids", "",
              f"{fl['received']:,} requests from one client (127.0.0.1), each with a well-formed txid never sent "
              f"before and not on the chain, {fl['connections']} connections, in {fl['seconds']} s "
              f"({fl['rps']:,} req/s; wrk counted {fl['requests']:,} answers, ending each of the ten chunks with "
              f"requests still in flight, which Envoy answered too); txgate with `cache.max_entries` 4096, "
              f"`not_found_ttl` "
              f"{res['config']['cache'].get('not_found_ttl')}, `max_inflight_per_client` "
              f"{res['config'].get('max_inflight_per_client')}, **penalty box off** (with it on, the client is "
              f"banned after {res['config'].get('penalty', {}).get('max_strikes')} strikes and no further txid is "
              f"looked at). Statuses: {', '.join(f'{k}×{n:,}' for k, n in fl['statuses'].items())}; socket "
              f"errors {fl['socket_errors']}.", "",
              "| requests (Envoy) | seconds | RSS MiB | explorer calls (txgate) | tx_not_found | verification_busy "
              "| other txgate counters | Envoy CPU µs/request |", "|---:|---:|---:|---:|---:|---:|---|---:|"]
        shown = ("txgate_explorer_calls", "txgate_rejected_tx_not_found", "txgate_rejected_verification_busy")
        for s in fl["samples"]:
            st = s["stats"]
            other = ", ".join(f"{k.removeprefix('txgate_')} {n:,}" for k, n in sorted(st.items()) if k not in shown)
            L.append(f"| {s['received']:,} | {s['seconds']} | {mib(s['rss'])} | {st.get(shown[0], 0):,} "
                     f"| {st.get(shown[1], 0):,} | {st.get(shown[2], 0):,} | {other} "
                     f"| {s.get('envoy_cpu_us_per_request', '')} |")
        L += ["", rss_line(fl["samples"]), "",
              f"The explorer's own count over the flood: {ex['tx']:,} transaction lookups and {ex['tip']:,} tip "
              f"lookups ({ex['total']:,} requests) for {fl['received']:,} distinct txids sent; "
              f"{ex['distinct_txids_looked_up']:,} distinct txids looked up, **at most "
              f"{ex['max_calls_per_txid']} lookup per txid** ({ex['txids_looked_up_more_than_once']} looked up more "
              f"than once). Requests beyond the in-flight limits are answered locally without a lookup.", "",
              f"Then {rp['distinct']} bogus txids cycled for {rp['seconds']} s ({rp['requests']:,} requests, "
              f"statuses {rp['statuses']}): **{rp['explorer_tx_calls']} explorer lookups, at most "
              f"{rp['max_calls_per_txid']} per txid** (the negative cache answers the rest within `not_found_ttl`).",
              ""]
    sf = res.get("source_flood")
    if sf:
        pen = sf["penalty"]
        L += ["## Flood of distinct source addresses", "",
              f"{sf['sources']:,} clients, each a distinct loopback source address (127.a.b.c), one request each "
              f"(HTTP/1.1, `Connection: close`) with the malformed `{b.HEADER}: not-a-txid` (a strike, no explorer "
              f"call), {sf['concurrency']} at a time, in {sf['seconds']} s ({sf['rps']:,} connections/s); "
              f"penalty box on: identity `{pen.get('identity')}`, max_strikes {pen.get('max_strikes')}, "
              f"`max_clients` {pen.get('max_clients', 4096)} slots (the default). Statuses: "
              f"{', '.join(f'{k}×{n:,}' for k, n in sf['statuses'].items())}.", "",
              "| sources | seconds | RSS MiB | strikes | bans | invalid_txid | client_banned |",
              "|---:|---:|---:|---:|---:|---:|---:|"]
        for s in sf["samples"]:
            st = s["stats"]
            L.append(f"| {s['sources']:,} | {s['seconds']} | {mib(s['rss'])} | {st.get('txgate_penalty_strikes', 0):,} "
                     f"| {st.get('txgate_penalty_bans', 0):,} | {st.get('txgate_rejected_invalid_txid', 0):,} "
                     f"| {st.get('txgate_rejected_client_banned', 0):,} |")
        L += ["", rss_line(sf["samples"]), "",
              f"Then the last source address again, 25 requests one after the other: {sf['last_source_25_more']} "
              f"(its strikes, the one of the flood included, reach max_strikes {pen.get('max_strikes')}: banned).", ""]
    wk = res.get("workers")
    if wk:
        L += ["## Two workers against one", "",
              f"Each Envoy at `--concurrency 1` and `--concurrency 2`, nothing pinned: wrk (one thread, "
              f"{args.worker_connections} connections), the upstream Envoy and the Envoy under test share the "
              f"{f['cpus_allowed']} CPUs. {args.reps} × {args.duration} s per variant, the order rotating each "
              "repetition; 2w/1w is the median of the per-repetition ratios. Shared-data contention between "
              "txgate's workers would show as a 2w/1w ratio below Envoy's and the reference's.", "",
              "| scenario | Envoy | 1 worker req/s | 2 workers req/s | 2w / 1w | CPU µs/req 1w / 2w "
              "| p99 µs 1w / 2w |",
              "|---|---|---:|---:|---:|---:|---:|"]
        for name, s in wk.items():
            for v, x in s["variants"].items():
                L.append(f"| {s['title']} | {v} | {x['rps_1w']:,} | {x['rps_2w']:,} | **{x['ratio_2w_1w']}** "
                         f"| {x['cpu_us_1w']} / {x['cpu_us_2w']} | {x['p99_us_1w']} / {x['p99_us_2w']} |")
        L += ["", "*reference*: the do-nothing filter passing the request on (paid) or answering txgate's own 402 "
              "byte for byte (unpaid).", ""]
    L += ["## Method", "",
          f"- Machine: {f['cpu']}, {f['cpus_online']} CPUs ({f['cpus_allowed']} usable), {f['mem_gb']} GiB, Linux "
          f"{f['kernel']}; Envoy {f['envoy']}, {f['wrk']}; git `{f['git']}`; {f['date']}; load average "
          f"{f['loadavg_start']:.2f} at start, {f.get('loadavg_end', 0):.2f} at end.",
          f"- Pinning (parts 1-3): {f['pinning']}. Part 4 pins nothing.",
          "- RSS is the Envoy process's `VmRSS` (`/proc/<pid>/status`); heap allocated is admin `/memory`. "
          "The txgate config is [`bench/txgate-config.json`](../txgate-config.json) with the changes named above; "
          "the explorer is the debug devnet build, one process.",
          f"- Wall time of the whole run: {res.get('seconds')} s.", ""]
    if res.get("failures"):
        L += ["Failures in this run:", ""] + [f"- {x}" for x in res["failures"]] + [""]
    return "\n".join(L)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="small counts, results in target/bench/smoke")
    ap.add_argument("--flood", type=int, default=1_000_000, help="requests of the bogus-txid flood")
    ap.add_argument("--flood-connections", type=int, default=128,
                    help="wrk connections of the txid flood (more than max_inflight_per_client)")
    ap.add_argument("--sources", type=int, default=100_000, help="distinct source addresses of the source flood")
    ap.add_argument("--source-concurrency", type=int, default=64, help="connections at a time in the source flood")
    ap.add_argument("--reps", type=int, default=3, help="repetitions of the worker comparison")
    ap.add_argument("--duration", type=int, default=2, help="seconds per run of the worker comparison")
    ap.add_argument("--worker-connections", type=int, default=32, help="wrk connections of the worker comparison")
    ap.add_argument("--only", help="comma-separated parts: memory,txids,sources,workers")
    ap.add_argument("--out", help="results directory (default bench/results; smoke: target/bench/smoke)")
    args = ap.parse_args()
    if args.smoke:
        args.flood = min(args.flood, 2000)
        args.sources = min(args.sources, 500)
        args.reps, args.duration = 1, 1
    parts = set((args.only or "memory,txids,sources,workers").split(","))
    for path, how in ((b.ENVOY, "make tools"), (b.TXGATE_WASM, "make wasm"),
                      (b.REFERENCE_WASM, "make bench-reference"), (b.DEVNET, "make devnet")):
        if not path.exists():
            raise SystemExit(f"missing {path} (run `{how}`, or point TXGATE_WASM / BENCH_REFERENCE_WASM / "
                             "TXGATE_DEVNET_DIR / TXGATE_ENVOY at built ones)")
    if shutil.which("wrk") is None:
        raise SystemExit("wrk not found (`make bench-scale` installs it)")
    work = b.ROOT / "target/bench/scale-run"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    allowed = sorted(os.sched_getaffinity(0))
    pin = len(allowed) >= 2 and shutil.which("taskset")
    cpu_envoy, cpu_load = (str(allowed[0]), str(allowed[1])) if pin else (None, None)
    base = json.loads((b.BENCH / "txgate-config.json").read_text())
    facts = b.machine_facts()
    facts["pinning"] = (f"Envoys under test on CPU {cpu_envoy}; wrk, the source-flood client, the upstream Envoy "
                        f"and the explorer on CPU {cpu_load}" if pin else "none")
    res = {"facts": facts, "settings": vars(args), "config": base}
    failures = []
    procs = b.Procs()
    t0 = time.time()
    try:
        explorer, explorer_port, warm_txid, _ = b.ensure_txids(procs, work, 0, cpu_load)
        explorer_url = f"http://127.0.0.1:{explorer_port}"
        upstream = b.Envoy(procs, work, "upstream", b.envoy_yaml("upstream", 0, 0, None), cpu_load)
        if "memory" in parts:
            res["memory"] = part_memory(procs, work, upstream, explorer_port, base, warm_txid, cpu_envoy, cpu_load,
                                        args.smoke)
        if "txids" in parts:
            fl = part_txid_flood(procs, work, upstream, explorer_url, explorer_port, base, args, cpu_envoy, cpu_load)
            res["txid_flood"] = fl
            bad = {k: n for k, n in fl["statuses"].items() if k not in (402, 429, 503)}
            if bad or not fl["alive"]:
                failures.append(f"txid flood: statuses {fl['statuses']}, Envoy alive {fl['alive']}")
            if {k for k in fl["repeat"]["statuses"] if k not in (402, 429, 503)}:
                failures.append(f"txid flood, repeat: statuses {fl['repeat']['statuses']}")
            if fl["explorer"]["max_calls_per_txid"] > 1 or fl["repeat"]["max_calls_per_txid"] > 1:
                failures.append(f"txid flood: a bogus txid was looked up more than once: {fl['explorer']}, "
                                f"repeat {fl['repeat']}")
            if fl["rps"]:
                b.log(f"  at {fl['rps']:,} req/s, the default 1,000,000-request flood would take about "
                      f"{1_000_000 / fl['rps'] / 60:.1f} minutes")
        if "sources" in parts:
            sf = part_source_flood(procs, work, upstream, explorer_port, base, args, cpu_envoy, cpu_load)
            res["source_flood"] = sf
            bad = {k: n for k, n in sf["statuses"].items() if k != 400}
            if bad or not sf["alive"]:
                failures.append(f"source flood: statuses {sf['statuses']}, Envoy alive {sf['alive']}")
            if sf["rps"] and args.smoke:
                b.log(f"  at {sf['rps']:,} connections/s, 100,000 sources would take about "
                      f"{100_000 / sf['rps']:.0f} s")
        if "workers" in parts:
            res["workers"], wf = part_workers(procs, work, upstream, explorer_port, base, warm_txid, args)
            failures += wf
        res["facts"]["loadavg_end"] = os.getloadavg()[0]
    finally:
        procs.stop_all()
    res["seconds"] = round(time.time() - t0)
    res["failures"] = failures
    out = Path(args.out) if args.out else (b.ROOT / "target/bench/smoke" if args.smoke else b.BENCH / "results")
    out.mkdir(parents=True, exist_ok=True)
    (out / "scale.json").write_text(json.dumps(res, indent=1, default=str) + "\n")
    md = markdown(res, args)
    (out / "scale.md").write_text(md)
    print(md)
    b.log(f"wrote {out / 'scale.json'} and {out / 'scale.md'} in {res['seconds']} s")
    if failures:
        print("FAILURES:\n" + "\n".join(failures))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
