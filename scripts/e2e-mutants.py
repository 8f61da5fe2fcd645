#!/usr/bin/env python3
"""Mutation testing of the Proxy-Wasm glue (src/filter/) through the real Envoy tests.

cargo-mutants (`make mutants`) cannot reach src/filter/: it only builds for wasm32 and only the
Envoy tests run it. This script applies hand-written mutations, one at a time, each described as
(file, exact original snippet, replacement), and reports whether the Envoy suite caught it.

The working tree is never modified: `src/`, the manifests and `devnet/` are copied to
target/e2e-mutants/tree, each mutant is applied to that copy, its wasm is built there (own
CARGO_TARGET_DIR, so builds are incremental), and the Envoy test binaries built from the real tree
run against that wasm (they take the wasm's path from TXGATE_WASM). Ctrl-C leaves nothing to undo.

A snippet that is not found exactly once is reported as STALE MUTANT and makes the run fail: the
glue changed and the mutant needs refreshing (keep snippets short and distinctive).

Usage: scripts/e2e-mutants.py [--list] [--only NAME[,NAME]] [--tests payment_gate,...] [--fast]
Exit status: 0 if every mutant was caught, 1 if one survived or is stale, 2 if the baseline fails.
"""

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
WORK = REPO / "target" / "e2e-mutants"
TREE = WORK / "tree"
TARGET = WORK / "target"
WASM = TARGET / "wasm32-wasip1" / "release" / "txgate.wasm"
ENVOY_TESTS = ["payment_gate", "payment_cache", "failover", "mtls", "bad_config", "security", "per_client_address",
               "ledger", "spv", "guard", "payer", "paywall_browser"]
TEST_TIMEOUT = 600

# (name, file, original snippet, replacement, what it breaks). `glue` ones are the point of this
# script; `audit` ones repeat the test audit's mutants of the core (2026-11-25) to prove that the
# Envoy tests, not only the unit tests, now catch them.
MUTANTS = [
    ("always_forward", "src/filter/payment_check.rs",
     "Some(gate) => self.check(&gate),",
     "Some(_gate) => Action::Continue,",
     "glue: every request goes on unchecked"),
    ("always_402", "src/filter/payment_check.rs",
     "Some(gate) => self.check(&gate),",
     "Some(gate) => self.refuse(&gate, Rejection::PaymentRequired),",
     "glue: every request gets the default 402 challenge"),
    ("forged_kept_on_cache_hit", "src/filter/payment_check.rs",
     "        if !forged {\n",
     "        if !forged || matches!(verdict, Verdict::Allow { from_cache: true, .. }) {\n",
     "glue: a cache hit keeps the client's x-txgate-* headers"),
    ("forged_kept_on_lookup", "src/filter/payment_check.rs",
     "        // The request will go on later, from the root context: drop forged headers now.\n"
     "        if forged && !self.remove_own(MapType::HttpRequestHeaders, headers) {",
     "        if false && !self.remove_own(MapType::HttpRequestHeaders, headers) {",
     "glue: a request that waits for the explorer keeps forged x-txgate-* headers"),
    ("cached_receipt_zeroed", "src/filter/host.rs",
     "Verdict::Allow { txid, receipt, discount, address_path, ledger_fallback, .. } => {",
     "Verdict::Allow { txid, receipt, discount, address_path, ledger_fallback, from_cache } => {\n"
     "            let zero = crate::payment::Receipt { paid_sats: 0, confirmations: 0 };\n"
     "            let receipt = if *from_cache { &zero } else { receipt };",
     "glue: cache hits forward paid-sats 0 and confirmations 0"),
    ("explorer_5xx_is_payment", "src/filter/root.rs",
     "let parsed = answer.and_then(|(s, b)| esplora::parse_tx_outputs(s, &b, &txid));",
     "let parsed = answer.and_then(|(s, b)| if s >= 500 { Ok(TxAnswer::Found { "
     "block: Some(esplora::BlockPlace { height: 1, time: now_ms / 1000 }), "
     "outputs: gate.config.pay_to.iter().map(|a| (a.clone(), 1_000_000)).collect() }) } "
     "else { esplora::parse_tx_outputs(s, &b, &txid) });",
     "glue: an explorer's 5xx answer counts as a confirmed 1 000 000-sat payment"),
    ("explorer_failure_forwarded", "src/filter/host.rs",
     "        Verdict::Reject { rejection, policy } => {\n"
     "            let reply = ReplyFacts::for_paused(rejection);",
     "        Verdict::Reject { rejection: Rejection::ExplorerUnavailable, .. } => Sent::GoesOn,\n"
     "        Verdict::Reject { rejection, policy } => {\n"
     "            let reply = ReplyFacts::for_paused(rejection);",
     "glue: failure_mode ignored, a failed lookup is let through (uncounted) in closed mode"),
    ("no_failover", "src/filter/root.rs",
     "if next < gate.config.explorers.len() && Self::within_deadline(gate, v, &txid, now_ms) {",
     "if false && Self::within_deadline(gate, v, &txid, now_ms) {",
     "glue: a failing explorer is not followed by the next"),
    ("deadline_ignored", "src/filter/root.rs",
     "now_ms.saturating_add(MIN_FAILOVER_BUDGET_MS) < end)",
     "now_ms.saturating_add(MIN_FAILOVER_BUDGET_MS) < end || true)",
     "glue: failover goes on past the overall deadline"),
    ("breaker_never_opens", "src/filter/root.rs",
     "if let Some(breaker) = v.breakers.get_mut(explorer) {",
     "if let Some(breaker) = v.breakers.get_mut(explorer).filter(|_| false) {",
     "glue: explorer failures never open a circuit"),
    ("max_inflight_ignored", "src/filter/verifier.rs",
     "if !gate.lookup_fits(&ticket, self.lookups.len(), for_client) {",
     "if false && !gate.lookup_fits(&ticket, self.lookups.len(), for_client) {",
     "glue: no cap on lookups in flight, per worker or per client"),
    ("waiters_uncapped", "src/filter/verifier.rs",
     "if lookup.waiters.len() >= MAX_WAITERS_PER_LOOKUP {",
     "if lookup.waiters.len() >= MAX_WAITERS_PER_LOOKUP && false {",
     "glue: no cap on requests waiting on one lookup (F12)"),
    ("path_not_canonical", "src/filter/payment_check.rs",
     "let canonical = match path::canonicalize(raw_path) {",
     "let canonical = match Ok::<String, path::PathError>(String::from_utf8_lossy(raw_path).into_owned()) {",
     "glue: routes matched on the raw path (F3-F5)"),
    ("underscore_spelling_kept", "src/filter/payment_check.rs",
     "let a = if *a == b'_' { b'-' } else { a.to_ascii_lowercase() };",
     "let a = a.to_ascii_lowercase();",
     "glue: x_txgate_* headers reach the API (F14)"),
    ("trailers_kept", "src/filter/payment_check.rs",
     "let Ok(trailers) = hostcalls::get_map_bytes(MapType::HttpRequestTrailers) else { return Action::Continue };",
     "let Ok(trailers) = hostcalls::get_map_bytes(MapType::HttpRequestTrailers) else { return Action::Continue };\n"
     "        if !trailers.is_empty() { return Action::Continue; }",
     "glue: forged x-txgate-* trailers reach the API (F15)"),
    ("any_options_is_a_preflight", "src/filter/payment_check.rs",
     "if preflight == (true, true, true) && !has_body {",
     "if preflight.0 {",
     "glue: every OPTIONS request passes free"),
    ("forwarded_for_trusted", "src/filter/payment_check.rs",
     "let source_trusted = !needs_source || self.source_is_the_peer(forwarded_for, now_ms);",
     "let source_trusted = true;",
     "glue: X-Forwarded-For chooses the source address (F8)"),
    ("payee_ignored", "src/filter/root.rs",
     "let stored = gate.remember(&HostStore, &txid, ticket.payee.as_ref(), &result, now_ms);",
     "let stored = gate.remember(&HostStore, &txid, None, &result, now_ms);",
     "glue: a payment is judged against pay_to, not the client's own address"),
    ("no_coalescing", "src/filter/verifier.rs",
     "if let Some(lookup) = self.lookups.get_mut(&ticket.txid) {",
     "if let Some(lookup) = self.lookups.get_mut(&ticket.txid).filter(|_| false) {",
     "glue: concurrent requests for one txid each start a lookup"),
    ("metrics_never_counted", "src/filter/host.rs",
     "let _ = hostcalls::increment_metric(*id, 1);",
     "let _ = id;",
     "glue: counters never move"),
    ("free_uncounted", "src/filter/host.rs",
     "Verdict::Free => metrics.count(Counter::Free),",
     "Verdict::Free => {}",
     "glue: a free request is forwarded without being counted (the stacks' final check)"),
    ("ledger_no_background_refill", "src/filter/ledger.rs",
     "    pub fn refill(&mut self, slot: usize, record: [u8; 32], now_ms: u64) -> bool {\n",
     "    pub fn refill(&mut self, slot: usize, record: [u8; 32], now_ms: u64) -> bool {\n"
     "        if now_ms > 0 {\n            return false;\n        }\n",
     "glue: no background refill at the low-water mark (every block runs out before the next)"),
    ("ledger_failure_forwarded", "src/filter/ledger.rs",
     "            let (verdict, effects) = gate.ledger_failed(&HostStore, wait, now_ms);",
     "            let (verdict, effects) = (Verdict::Allow { txid: wait.ticket.txid.clone(), receipt: wait.receipt, "
     "discount: None, from_cache: false, address_path: None, ledger_fallback: false }, Effects::default());",
     "glue: a request that needs an unreachable etcd is let through (closed mode)"),
    ("ledger_reply_ignored", "src/filter/ledger.rs",
     "(Some(table), Some(slot)) => table.absorb(&HostStore, slot, &record, &attempt, &reply),",
     "(Some(_), Some(_)) => Ok::<_, crate::store::UpdateError>(Ok::<_, crate::ledger::held::Unexpected>("
     "Absorbed::Granted(0))),",
     "glue: etcd's reply is never folded into the held blocks"),
    ("spv_proof_invalid_no_failover", "src/filter/root.rs",
     "failover(ExplorerError::ProofInvalid(why), done, v);",
     "done.push((txid.clone(), LookupResult { tx: Err(ExplorerError::ProofInvalid(why)), tip: None, "
     "explorer: answering }));",
     "glue: a proof that does not verify ends the lookup instead of asking the next explorer"),
    ("spv_quorum_of_one", "src/filter/root.rs",
     "quorum: spv_config.quorum,",
     "quorum: 1,",
     "glue: the configured quorum is not asked (one explorer's chain is believed)"),
    ("spv_header_cache_unused", "src/filter/root.rs",
     "headers: &mut v.headers };",
     "headers: &mut crate::spv_lookup::HeaderCache::new(1) };",
     "glue: verified headers are not kept for the next payment in the same block"),
    ("guard_never_posted", "src/filter/root.rs",
     "        let Some(guard) = &gate.config.guard else { return };\n        let body",
     "        let Some(guard) = gate.config.guard.as_ref().filter(|_| false) else { return };\n        let body",
     "glue: bans never reach the node guard"),
    ("guard_no_repost", "src/filter/payment_check.rs",
     "Some(left) if v.guard_reposts.due(source, now_ms) =>",
     "Some(left) if false && v.guard_reposts.due(source, now_ms) =>",
     "glue: a banned client that still reaches L7 is not posted again"),
    ("vm_panics_on_504", "src/filter/root.rs",
     "    if body_size > MAX_BODY_BYTES {",
     "    if status == 504 {\n        panic!(\"mutant\");\n    }\n    if body_size > MAX_BODY_BYTES {",
     "glue: the VM panics on an explorer timeout answer"),
    ("config_refusal_ignored", "src/filter/root.rs",
     "log::error!(\"txgate: configuration refused: {err}\");\n                return false;",
     "log::error!(\"txgate: configuration refused: {err}\");\n                return true;",
     "glue: on_configure accepts a refused configuration"),
    # The audit's core mutants, for the Envoy side of their findings.
    ("payer_status_forwarded", "src/filter/payment_check.rs",
     "if reading && canonical == payer::STATUS_PATH {",
     "if false && canonical == payer::STATUS_PATH {",
     "glue (payers): the status endpoint is forwarded to the API like any paid path"),
    ("payer_shadow_keeps_forged", "src/filter/payment_check.rs",
     "if forged && gate.config.shadow && !self.remove_own(MapType::HttpRequestHeaders, headers) {",
     "if false && gate.config.shadow && !self.remove_own(MapType::HttpRequestHeaders, headers) {",
     "glue (payers): shadow mode lets a refused request through with the client's own x-txgate-* headers"),
    ("payer_redirect_to_raw_path", "src/filter/payment_check.rs",
     "let location = payer::redirect_target(&canonical, raw_path, payer::TXID_COOKIE);",
     "let location = String::from_utf8_lossy(&payer::without_param(raw_path, payer::TXID_COOKIE)).into_owned();",
     "glue (payers): the paywall's cookie redirect follows the raw path (//host/... is another site)"),
    ("payer_no_receipt_when_paused", "src/filter/host.rs",
     "            keep_receipt(context_id, verdict);\n",
     "",
     "glue (payers): a request paid through PAYMENT-SIGNATURE after a lookup gets no PAYMENT-RESPONSE"),
    ("payer_no_receipt_on_cache_hit", "src/filter/payment_check.rs",
     "        if self.x402 {\n            host::keep_receipt(self.id, verdict);",
     "        if false {\n            host::keep_receipt(self.id, verdict);",
     "glue (payers): a cache hit paid through PAYMENT-SIGNATURE gets no PAYMENT-RESPONSE"),
    ("payer_browsers_get_json", "src/filter/host.rs",
     "                (Some(p), true) => {",
     "                (Some(p), true) if false => {",
     "glue (payers): a browser gets the JSON 402 instead of the paywall"),
    ("ledger_facts_ignored", "src/filter/root.rs",
     "match facts.and_then(|f| gate.answer_from_facts(&f)) {",
     "match facts.and_then(|f| gate.answer_from_facts(&f)).filter(|_| false) {",
     "glue (ledger): another replica's verification is not used: the explorer is asked again"),
    ("ledger_facts_not_written", "src/filter/ledger.rs",
     "etcd::Attempt::First { .. } => gate.chain_facts(&HostStore, op.slot, &record),",
     "etcd::Attempt::First { .. } => None,",
     "glue (ledger): the first use does not tell the other replicas what the chain said"),
    ("unsettled_without_address", "src/filter/payment_check.rs",
     "                if needs_source {\n                    client.source_address = host::property(&[\"source\", \"address\"]);",
     "                if false {\n                    client.source_address = host::property(&[\"source\", \"address\"]);",
     "glue (ban horizon): a request that can strike is judged without its client's address"),
    ("settled_while_banned", "src/gate.rs",
     "            && !penalty.bans_active(store, now_ms / 1000)",
     "            && !penalty.bans_active(store, now_ms / 1000).then_some(false).unwrap_or(false)",
     "ban horizon: requests are judged without their client even while a ban holds"),
    ("audit_open_mode_lets_unpaid_through", "src/gate.rs",
     "[] => return reject(Rejection::PaymentRequired, policy),",
     "[] if config.failure_mode == FailureMode::Open => return (Verdict::AllowUnverified, Effects::default()),\n"
     "            [] => return reject(Rejection::PaymentRequired, policy),",
     "audit H5: open mode forwards requests with no txid"),
    ("audit_evict_ignores_value", "src/cache.rs",
     "    !record.counts_something() || record.past_every_max_age(longest_max_age_secs, now_ms)",
     "    true",
     "audit H3 / F7: any record, counted or not, may be evicted"),
    ("audit_window_half", "src/grant.rs",
     "now_secs >= record.first_used.saturating_add(window.as_secs())",
     "now_secs >= record.first_used.saturating_add(window.as_secs() / 2)",
     "audit: a grant window lasts half its time"),
    ("audit_ban_half", "src/penalty.rs",
     "r.banned_until = now_secs.saturating_add(self.ban_time.as_secs());",
     "r.banned_until = now_secs.saturating_add(self.ban_time.as_secs() / 2);",
     "audit: a ban lasts half its time"),
    ("audit_cached_mempool_ignores_new_blocks", "src/gate.rs",
     "if !tip_fresh || tip.is_some_and(|(height, _)| height > seen_at_tip) {",
     "if !tip_fresh {",
     "audit: a cached mempool answer waits out its TTL even after a new block"),
]


def log(msg):
    print(msg, flush=True)


def copy_tree():
    """The crate's sources and every workspace member, fresh from the working tree."""
    TREE.mkdir(parents=True, exist_ok=True)
    for name in ["Cargo.toml", "Cargo.lock"]:
        shutil.copy2(REPO / name, TREE / name)
    members = re.search(r'members\s*=\s*\[([^\]]*)\]', (REPO / "Cargo.toml").read_text())
    crates = re.findall(r'"([^"]+)"', members.group(1)) if members else []
    for name in ["src", "tests", "bench", *crates]:
        if (TREE / name).exists():
            shutil.rmtree(TREE / name)
        if (REPO / name).exists():
            shutil.copytree(REPO / name, TREE / name, ignore=shutil.ignore_patterns("target", "results"))


def build_wasm():
    env = dict(os.environ, CARGO_TARGET_DIR=str(TARGET))
    cmd = ["cargo", "build", "--release", "--target", "wasm32-wasip1", "-p", "txgate", "--lib", "-q"]
    r = subprocess.run(cmd, cwd=TREE, env=env, capture_output=True, text=True)
    return r.returncode == 0, r.stderr


def test_binaries(names):
    """Builds the Envoy test binaries from the (unmutated) working tree; returns name -> path."""
    cmd = ["cargo", "test", "-p", "txgate", "--no-run", "--message-format=json"]
    for n in names:
        cmd += ["--test", n]
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"building the test binaries failed:\n{r.stderr}")
    out = {}
    for line in r.stdout.splitlines():
        try:
            msg = json.loads(line)
        except json.JSONDecodeError:
            continue
        target = msg.get("target", {})
        if msg.get("reason") == "compiler-artifact" and msg.get("executable") and "test" in target.get("kind", []):
            out[target["name"]] = msg["executable"]
    missing = [n for n in names if n not in out]
    if missing:
        sys.exit(f"test binaries not found: {missing}")
    return out


def run_tests(binaries, names, fast):
    """Runs the Envoy tests against the scratch wasm; returns the failed test names (or binaries)."""
    env = dict(os.environ)
    env["TXGATE_WASM"] = str(WASM)
    env.setdefault("TXGATE_ENVOY", str(REPO / ".venv" / "bin" / "envoy"))
    env.setdefault("TXGATE_DEVNET_DIR", str(REPO / "target" / "debug"))
    env["RUST_BACKTRACE"] = "0"
    failed = []
    for name in names:
        cmd = [binaries[name], "--test-threads", "2"]
        try:
            r = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=TEST_TIMEOUT)
            out = r.stdout
            if r.returncode != 0:
                bad = [l.split()[1] for l in out.splitlines() if l.startswith("test ") and l.endswith("FAILED")]
                failed += [f"{name}::{t}" for t in bad] or [f"{name} (exit {r.returncode})"]
        except subprocess.TimeoutExpired:
            failed.append(f"{name} (timeout {TEST_TIMEOUT}s)")
        if failed and fast:
            break
    return failed


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--list", action="store_true", help="list the mutants and check their snippets")
    ap.add_argument("--only", help="comma-separated mutant names")
    ap.add_argument("--tests", default=",".join(ENVOY_TESTS), help="Envoy test files to run")
    ap.add_argument("--fast", action="store_true", help="stop a mutant's run at its first failing file")
    ap.add_argument("--no-baseline", action="store_true", help="skip the unmutated run")
    args = ap.parse_args()

    mutants = MUTANTS
    if args.only:
        wanted = set(args.only.split(","))
        unknown = wanted - {m[0] for m in MUTANTS}
        if unknown:
            sys.exit(f"unknown mutants: {sorted(unknown)}")
        mutants = [m for m in MUTANTS if m[0] in wanted]

    stale = []
    for name, file, old, _new, _what in mutants:
        count = (REPO / file).read_text().count(old)
        if count != 1:
            stale.append(name)
            log(f"STALE MUTANT {name}: snippet found {count} times in {file} (refresh it):\n    {old!r}")
    if args.list:
        for name, file, _old, _new, what in mutants:
            log(f"{'STALE ' if name in stale else ''}{name:42} {file:30} {what}")
        return 1 if stale else 0

    names = args.tests.split(",")
    started = time.time()
    binaries = test_binaries(names)
    copy_tree()
    if not args.no_baseline:
        ok, err = build_wasm()
        if not ok:
            log(f"baseline wasm does not build:\n{err}")
            return 2
        failed = run_tests(binaries, names, fast=False)
        if failed:
            log(f"BASELINE FAILS (fix the suite first): {failed}")
            return 2
        log(f"baseline: all of {', '.join(names)} pass ({time.time() - started:.0f}s)")

    results = []
    for name, file, old, new, what in mutants:
        if name in stale:
            results.append((name, "STALE", []))
            continue
        pristine = (REPO / file).read_text()
        t0 = time.time()
        try:
            (TREE / file).write_text(pristine.replace(old, new, 1))
            ok, err = build_wasm()
            if not ok:
                log(f"{name}: does not build (mutant needs fixing):\n{err[-2000:]}")
                results.append((name, "UNBUILDABLE", []))
                continue
            failed = run_tests(binaries, names, args.fast)
        finally:
            (TREE / file).write_text(pristine)
        verdict = "caught" if failed else "SURVIVED"
        results.append((name, verdict, failed))
        shown = ", ".join(failed[:6]) + (f" (+{len(failed) - 6})" if len(failed) > 6 else "")
        log(f"{name:42} {verdict:9} {time.time() - t0:5.0f}s  {what}\n    {shown}")

    caught = sum(1 for r in results if r[1] == "caught")
    log(f"\ne2e mutants: {caught} caught, {sum(1 for r in results if r[1] == 'SURVIVED')} survived, "
        f"{sum(1 for r in results if r[1] == 'STALE')} stale, {sum(1 for r in results if r[1] == 'UNBUILDABLE')} "
        f"unbuildable, of {len(results)} ({time.time() - started:.0f}s)")
    return 0 if caught == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())
