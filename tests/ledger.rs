//! The mesh-wide ledger end to end: a real etcd (Debian's `etcd-server`, started here on free
//! loopback ports with a data dir in a tempdir and stopped by PID), two real Envoy processes
//! running the release wasm with an `etcd` cluster, the devnet explorer and the demo API.
//!
//! Each test runs a `Stack` for the explorer and the demo API (its own Envoy has no ledger and
//! only answers the harness's final probe) and starts the two ledger Envoys beside it.

mod common;

use std::io::Read;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use base64::Engine;
use common::{envoy_refuses, envoy_yaml, plugin_config, start_envoy, unused_port, wasm_path, Proc, Reply, Stack};
use serde_json::{json, Value};

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn etcd_bin() -> PathBuf {
    let bin = std::env::var_os("TXGATE_ETCD").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/usr/bin/etcd"));
    assert!(bin.exists(), "{} not found: run `make test`, which installs Debian's etcd-server", bin.display());
    bin
}

fn agent(timeout: Duration) -> ureq::Agent {
    ureq::Agent::config_builder().http_status_as_error(false).timeout_global(Some(timeout)).build().into()
}

/// One etcd member on loopback, stopped (by its PID) when dropped.
struct Member {
    name: String,
    dir: PathBuf,
    client_port: u16,
    peer_port: u16,
    cluster: String,
    child: Option<Child>,
}

impl Member {
    fn spawn(&mut self) {
        let url = |port: u16| format!("http://127.0.0.1:{port}");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("{}.log", self.name)))
            .expect("etcd log");
        let child = Command::new(etcd_bin())
            .args(["--name", &self.name, "--data-dir"])
            .arg(self.dir.join(&self.name))
            .args(["--listen-client-urls", &url(self.client_port), "--advertise-client-urls", &url(self.client_port)])
            .args(["--listen-peer-urls", &url(self.peer_port), "--initial-advertise-peer-urls", &url(self.peer_port)])
            .args(["--initial-cluster", &self.cluster, "--initial-cluster-token", "txgate-ledger-test"])
            .args(["--listen-metrics-urls", &url(unused_port())])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start etcd: {e}"));
        self.child = Some(child);
    }

    fn pid(&self) -> String {
        self.child.as_ref().expect("etcd running").id().to_string()
    }

    fn signal(&self, signal: &str) {
        let ok = Command::new("kill").args([signal, &self.pid()]).status().expect("kill").success();
        assert!(ok, "kill {signal} etcd {}", self.name);
    }

    /// Stops it (SIGTERM, by PID) and waits for it to exit.
    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while child.try_wait().ok().flatten().is_none() {
                if Instant::now() > deadline {
                    let _ = child.kill();
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn healthy(&self) -> bool {
        let url = format!("http://127.0.0.1:{}/health", self.client_port);
        let Ok(mut r) = agent(Duration::from_secs(2)).get(&url).call() else { return false };
        r.body_mut().read_to_string().is_ok_and(|b| b.contains("\"true\""))
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        // A frozen member must be thawed before it can stop.
        if self.child.is_some() {
            let _ = Command::new("kill").args(["-CONT", &self.pid()]).status();
        }
        self.kill();
    }
}

/// An etcd cluster of `n` members on loopback, in its own tempdir.
struct Etcd {
    _dir: tempfile::TempDir,
    members: Vec<Member>,
}

impl Etcd {
    fn start(n: usize) -> Etcd {
        let dir = tempfile::tempdir().expect("tempdir");
        let ports: Vec<(u16, u16)> = (0..n).map(|_| (unused_port(), unused_port())).collect();
        let cluster = ports
            .iter()
            .enumerate()
            .map(|(i, (_, peer))| format!("m{i}=http://127.0.0.1:{peer}"))
            .collect::<Vec<_>>()
            .join(",");
        let mut members: Vec<Member> = ports
            .iter()
            .enumerate()
            .map(|(i, (client_port, peer_port))| Member {
                name: format!("m{i}"),
                dir: dir.path().to_path_buf(),
                client_port: *client_port,
                peer_port: *peer_port,
                cluster: cluster.clone(),
                child: None,
            })
            .collect();
        for m in &mut members {
            m.spawn();
        }
        let etcd = Etcd { _dir: dir, members };
        etcd.wait_healthy();
        etcd
    }

    fn wait_healthy(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.members.iter().filter(|m| m.child.is_some()).all(Member::healthy) {
            assert!(Instant::now() < deadline, "etcd not healthy within 30s: {}", self.logs());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn logs(&self) -> String {
        self.members
            .iter()
            .map(|m| std::fs::read_to_string(m.dir.join(format!("{}.log", m.name))).unwrap_or_default())
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The count in `use/<txid>` (0 when absent), read from a member that answers.
    fn used(&self, prefix: &str, txid: &str) -> u64 {
        let key = format!("{prefix}v1/regtest/use/{txid}");
        for m in self.members.iter().filter(|m| m.child.is_some()) {
            let url = format!("http://127.0.0.1:{}/v3/kv/range", m.client_port);
            let Ok(mut r) =
                agent(Duration::from_secs(5)).post(&url).send(json!({"key": b64(key.as_bytes())}).to_string())
            else {
                continue;
            };
            let Ok(body) = r.body_mut().read_to_string() else { continue };
            let v: Value = serde_json::from_str(&body).expect("range reply");
            let Some(value) = v["kvs"][0]["value"].as_str() else { return 0 };
            let text = String::from_utf8(base64::engine::general_purpose::STANDARD.decode(value).unwrap()).unwrap();
            return text.split('|').next().unwrap().parse().unwrap();
        }
        panic!("no etcd member answered")
    }

    /// The member that is the raft leader.
    fn leader(&self) -> usize {
        for (i, m) in self.members.iter().enumerate() {
            let url = format!("http://127.0.0.1:{}/v3/maintenance/status", m.client_port);
            if let Ok(mut r) = agent(Duration::from_secs(2)).post(&url).send("{}") {
                let v: Value =
                    serde_json::from_str(&r.body_mut().read_to_string().unwrap_or_default()).unwrap_or_default();
                if v["leader"].is_string() && v["leader"] == v["header"]["member_id"] {
                    return i;
                }
            }
        }
        panic!("no etcd leader")
    }

    /// The Envoy cluster for the ledger: every member, HTTP/1.1 (etcd's gateway does not take h2c).
    fn cluster_yaml(&self) -> String {
        let endpoints: String = self
            .members
            .iter()
            .map(|m| {
                format!(
                    "        - endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {}}}}}}}\n",
                    m.client_port
                )
            })
            .collect();
        format!(
            r#"  - name: etcd
    type: STATIC
    connect_timeout: 0.25s
    outlier_detection: {{consecutive_local_origin_failure: 1, split_external_local_origin_errors: true, base_ejection_time: 2s, max_ejection_percent: 67}}
    load_assignment:
      cluster_name: etcd
      endpoints:
      - lb_endpoints:
{endpoints}"#
        )
    }
}

/// One Envoy with the ledger, its listener feeding the stack's demo API.
struct Replica {
    dir: PathBuf,
    envoy: Option<Proc>,
    admin_port: u16,
    listener_port: u16,
    agent: ureq::Agent,
}

impl Replica {
    fn start(stack: &Stack, etcd: &Etcd, plugin: &Value, name: &str) -> Replica {
        stack.shared_backend.store(true, Ordering::Relaxed);
        let yaml = envoy_yaml(plugin, stack.api_port, &stack.explorer_ports, &wasm_path()).replacen(
            "admin:\n",
            &format!("{}admin:\n", etcd.cluster_yaml()),
            1,
        );
        let dir = stack.dir.path().join(format!("{name}-{}", unused_port()));
        std::fs::create_dir_all(&dir).expect("dir");
        let (envoy, admin_port, listener_port) =
            start_envoy(&dir, &yaml, 2).unwrap_or_else(|e| panic!("Envoy {name} did not start: {e:?}"));
        Replica { dir, envoy: Some(envoy), admin_port, listener_port, agent: agent(Duration::from_secs(20)) }
    }

    fn get(&self, txid: &str, client: Option<&str>) -> Reply {
        get(&self.agent, self.listener_port, txid, client)
    }

    fn stat(&self, name: &str) -> u64 {
        let url = format!("http://127.0.0.1:{}/stats?filter={name}$", self.admin_port);
        let body = self.agent.get(&url).call().expect("stats").body_mut().read_to_string().expect("stats");
        let line = body
            .lines()
            .find(|l| l.starts_with(&format!("wasmcustom.{name}: ")) || l.starts_with(&format!("{name}: ")))
            .unwrap_or_else(|| panic!("no counter {name} in {body}"));
        line.rsplit(": ").next().unwrap().trim().parse().unwrap()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("envoy.log")).unwrap_or_default()
    }

    /// No panic, trap or critical line in the log, and the filter configured itself.
    fn check_log(&self) {
        common::assert_clean_envoy_log(&self.log());
    }

    fn kill(&mut self) {
        self.check_log();
        self.envoy.take();
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        if !std::thread::panicking() && self.envoy.is_some() {
            self.check_log();
        }
    }
}

fn get(agent: &ureq::Agent, port: u16, txid: &str, client: Option<&str>) -> Reply {
    let mut builder = ureq::http::Request::builder().method("GET").uri(format!("http://127.0.0.1:{port}/api/data"));
    builder = builder.header("x-bitcoin-txid", txid);
    if let Some(c) = client {
        builder = builder.header("x-api-key", c);
    }
    let mut response = agent.run(builder.body(()).unwrap()).unwrap_or_else(|e| panic!("GET through {port}: {e}"));
    Reply::from_response(&mut response)
}

fn code(r: &Reply) -> String {
    if r.status == 200 {
        return "ok".into();
    }
    serde_json::from_str::<Value>(&r.body)
        .ok()
        .and_then(|v| v["error"].as_str().map(String::from))
        .unwrap_or(r.body.clone())
}

/// A key prefix of its own, so that tests sharing nothing but the machine never meet in etcd.
fn prefix() -> String {
    let mut bytes = [0u8; 6];
    std::fs::File::open("/dev/urandom").unwrap().read_exact(&mut bytes).unwrap();
    format!("t{}/", bytes.iter().map(|b| format!("{b:02x}")).collect::<String>())
}

fn ledger_plugin(prefix: &str, extra: Value, ledger_extra: Value) -> Value {
    let mut ledger = json!({
        "etcd": {"cluster": "etcd", "authority": "etcd", "key_prefix": prefix},
        "timeout": "300ms", "deadline": "1500ms",
        "circuit_breaker": {"failures": 2, "cool_down": "1s"}
    });
    for (k, v) in ledger_extra.as_object().unwrap() {
        ledger[k] = v.clone();
    }
    let mut overrides = json!({"ledger": ledger});
    for (k, v) in extra.as_object().unwrap() {
        overrides[k] = v.clone();
    }
    plugin_config(1, &overrides)
}

fn tally(codes: &[String]) -> std::collections::BTreeMap<String, usize> {
    let mut t = std::collections::BTreeMap::new();
    for c in codes {
        *t.entry(c.clone()).or_insert(0) += 1;
    }
    t
}

/// A ledger configuration Envoy must not run with is refused at startup, naming the field.
#[test]
fn bad_ledger_configs_stop_envoy_naming_the_field() {
    let etcd = json!({"cluster": "etcd", "authority": "etcd"});
    let cases = [
        (json!({"grant": {"requests": 5}, "max_age": "0s", "ledger": {"etcd": etcd}}), "refused: max_age"),
        (json!({"ledger": {"etcd": etcd}}), "ledger: has nothing to keep"),
        (
            json!({"max_age": "0s", "ledger": {"etcd": etcd, "consume": "once"}}),
            "refused: max_age: must be more than 0s",
        ),
        (json!({"grant": {"requests": 5}, "ledger": {"etcd": etcd, "block": 0}}), "ledger.block"),
        (json!({"grant": {"requests": 5}, "ledger": {"etcd": {"cluster": "etcd"}}}), "ledger.etcd.authority"),
        (json!({"grant": {"requests": 5}, "ledger": {"etcd": etcd, "retries": 3}}), "unknown field `retries`"),
        (json!({"grant": {"requests": 5}, "ledger": {"etcd": etcd, "consume": "once"}}), "ledger.consume"),
    ];
    for (overrides, expected) in cases {
        let (refused, log) = envoy_refuses(&plugin_config(1, &overrides));
        assert!(refused, "Envoy started with {overrides}");
        assert!(log.contains("txgate: configuration refused"), "{overrides}: {log}");
        assert!(log.contains(expected), "{overrides}: expected {expected:?} in\n{log}");
    }
}

/// (a) N = 50, K = 8: 200 requests from 4 threads, alternating between the two Envoys, at once.
#[test]
fn a_grant_is_exact_across_two_envoys_under_concurrent_load() {
    let stack = Stack::start();
    let etcd = Etcd::start(1);
    let prefix = prefix();
    let plugin = ledger_plugin(&prefix, json!({"grant": {"requests": 50}}), json!({"block": 8}));
    let a = Replica::start(&stack, &etcd, &plugin, "a");
    let b = Replica::start(&stack, &etcd, &plugin, "b");
    let txid = stack.paid_and_mined(1000);
    let ports = [a.listener_port, b.listener_port];
    let codes: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4)
            .map(|t| {
                let txid = txid.clone();
                s.spawn(move || {
                    let agent = agent(Duration::from_secs(20));
                    (0..50).map(|i| code(&get(&agent, ports[(t + i) % 2], &txid, None))).collect::<Vec<_>>()
                })
            })
            .collect();
        handles.into_iter().flat_map(|h| h.join().unwrap()).collect()
    });
    let t = tally(&codes);
    assert_eq!(t.get("ok"), Some(&50), "exactly the grant across both Envoys: {t:?}");
    assert_eq!(t.get("payment_exhausted"), Some(&150), "{t:?}");
    assert_eq!(etcd.used(&prefix, &txid), 50, "the ledger handed out exactly N");
    let served = a.stat("txgate_requests_allowed") + b.stat("txgate_requests_allowed");
    assert_eq!(served, 50);
    let calls = a.stat("txgate_ledger_calls") + b.stat("txgate_ledger_calls");
    assert!(calls < 50, "blocks of 8 need far fewer than one etcd call per request: {calls}");
    eprintln!(
        "concurrent: {t:?}, etcd calls {calls} for 50 granted (A {} + B {})",
        a.stat("txgate_requests_allowed"),
        b.stat("txgate_requests_allowed")
    );
}

/// (b) The first client owns the payment on every Envoy.
#[test]
fn a_binding_holds_across_envoys() {
    let stack = Stack::start();
    let etcd = Etcd::start(1);
    let prefix = prefix();
    let plugin = ledger_plugin(&prefix, json!({"grant": {"requests": 10}, "bind_to": "header:x-api-key"}), json!({}));
    let a = Replica::start(&stack, &etcd, &plugin, "a");
    let b = Replica::start(&stack, &etcd, &plugin, "b");
    let txid = stack.paid_and_mined(1000);
    assert_eq!(code(&a.get(&txid, Some("alice"))), "ok");
    assert_eq!(code(&b.get(&txid, Some("bob"))), "payment_bound_to_other_client");
    assert_eq!(code(&b.get(&txid, Some("alice"))), "ok");
    assert_eq!(code(&a.get(&txid, Some("bob"))), "payment_bound_to_other_client");
    // Another payment first used on B belongs to bob, on A too.
    let other = stack.paid_and_mined(1000);
    assert_eq!(code(&b.get(&other, Some("bob"))), "ok");
    assert_eq!(code(&a.get(&other, Some("alice"))), "payment_bound_to_other_client");
}

/// (c) consume "once": one payment, one request, whichever Envoy serves it.
#[test]
fn consume_once_buys_one_request_across_envoys() {
    let stack = Stack::start();
    let etcd = Etcd::start(1);
    let prefix = prefix();
    let plugin = ledger_plugin(&prefix, json!({}), json!({"consume": "once"}));
    let a = Replica::start(&stack, &etcd, &plugin, "a");
    let b = Replica::start(&stack, &etcd, &plugin, "b");
    let txid = stack.paid_and_mined(1000);
    // Both Envoys at once: exactly one of the 10 gets through.
    let codes: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..10)
            .map(|i| {
                let (txid, port) = (txid.clone(), if i % 2 == 0 { a.listener_port } else { b.listener_port });
                s.spawn(move || code(&get(&agent(Duration::from_secs(20)), port, &txid, None)))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let t = tally(&codes);
    assert_eq!(t.get("ok"), Some(&1), "{t:?}");
    assert_eq!(t.get("payment_exhausted"), Some(&9), "{t:?}");
    assert_eq!(code(&a.get(&txid, None)), "payment_exhausted");
    assert_eq!(code(&b.get(&txid, None)), "payment_exhausted");
    assert_eq!(etcd.used(&prefix, &txid), 1);
}

/// (d) A replica dies in the middle and comes back: the count and the binding survive it.
#[test]
fn the_ledger_outlives_a_replica_restart() {
    let stack = Stack::start();
    let etcd = Etcd::start(1);
    let prefix = prefix();
    let plugin =
        ledger_plugin(&prefix, json!({"grant": {"requests": 20}, "bind_to": "header:x-api-key"}), json!({"block": 4}));
    let mut a = Replica::start(&stack, &etcd, &plugin, "a");
    let b = Replica::start(&stack, &etcd, &plugin, "b");
    let txid = stack.paid_and_mined(1000);
    let mut ok = 0;
    for i in 0..10 {
        let r = if i % 2 == 0 { a.get(&txid, Some("alice")) } else { b.get(&txid, Some("alice")) };
        ok += usize::from(r.status == 200);
    }
    assert_eq!(ok, 10);
    let before = etcd.used(&prefix, &txid);
    a.kill();
    let a2 = Replica::start(&stack, &etcd, &plugin, "a2");
    assert_eq!(code(&a2.get(&txid, Some("bob"))), "payment_bound_to_other_client", "the binding outlived A");
    for i in 0..40 {
        let r = if i % 2 == 0 { a2.get(&txid, Some("alice")) } else { b.get(&txid, Some("alice")) };
        ok += usize::from(r.status == 200);
    }
    let used = etcd.used(&prefix, &txid);
    assert_eq!(used, 20, "the count went on from where it was ({before} before the restart)");
    // What the dead replica held is lost (under-served), never handed out twice: at most its
    // blocks (K = 4, one refill ahead) go unserved.
    assert!((20 - 8..=20).contains(&ok), "served {ok} of 20 across a restart");
    eprintln!("restart: served {ok} of 20; {} stranded with the dead replica", 20 - ok);
}

/// (e) etcd stopped and started: held blocks keep serving, what needs etcd gets 503 with
/// Retry-After, nothing is over-granted, and service comes back once etcd does.
#[test]
fn etcd_down_then_up() {
    let stack = Stack::start();
    let mut etcd = Etcd::start(1);
    let prefix = prefix();
    let plugin = ledger_plugin(&prefix, json!({"grant": {"requests": 30}}), json!({"block": 10}));
    let a = Replica::start(&stack, &etcd, &plugin, "a");
    let b = Replica::start(&stack, &etcd, &plugin, "b");
    let held = stack.paid_and_mined(1000);
    let fresh = stack.paid_and_mined(1000);
    assert_eq!(code(&a.get(&held, None)), "ok", "first contact: A holds a block of 10");
    let mut served = 1;
    // Four more leave 5, half a block: A reserves the next block in the background.
    for _ in 0..4 {
        served += usize::from(a.get(&held, None).status == 200);
    }
    wait_for(|| a.stat("txgate_ledger_blocks") >= 2, "A's background refill");
    etcd.members[0].stop();
    // A's held blocks (5 + 10): served with etcd down; the refills they start fail quietly.
    for _ in 0..15 {
        served += usize::from(a.get(&held, None).status == 200);
    }
    assert_eq!(served, 20, "held blocks keep serving while etcd is down");
    let r = a.get(&held, None);
    assert_eq!((r.status, code(&r).as_str()), (503, "ledger_unavailable"), "the blocks are empty and etcd is down");
    assert_eq!(r.header("retry-after"), Some("2"));
    let started = Instant::now();
    let r = b.get(&fresh, None);
    assert_eq!((r.status, code(&r).as_str()), (503, "ledger_unavailable"), "first use needs etcd");
    assert!(started.elapsed() < Duration::from_secs(3), "answered within the ledger deadline: {:?}", started.elapsed());
    assert_eq!(code(&b.get(&held, None)), "ledger_unavailable");
    assert!(a.stat("txgate_rejected_ledger_unavailable") >= 1 && b.stat("txgate_rejected_ledger_unavailable") >= 2);
    // Back: service resumes within the breaker's cool-down.
    etcd.members[0].spawn();
    etcd.wait_healthy();
    let back = Instant::now();
    loop {
        if b.get(&held, None).status == 200 {
            served += 1;
            break;
        }
        assert!(back.elapsed() < Duration::from_secs(15), "service did not come back after etcd did");
        std::thread::sleep(Duration::from_millis(100));
    }
    let recovered = back.elapsed();
    for i in 0..40 {
        served += usize::from(if i % 2 == 0 { a.get(&held, None) } else { b.get(&held, None) }.status == 200);
    }
    // The refills A started while etcd was down were resent once it was back: nothing lost.
    assert_eq!(served, 30, "exactly the grant, across the outage");
    assert_eq!(etcd.used(&prefix, &held), 30);
    assert_eq!(code(&a.get(&fresh, None)), "ok", "a new payment works again");
    eprintln!("etcd down/up: {served} of 30 served, back {recovered:?} after etcd was healthy");
}

/// Polls `cond` for up to 5 s.
fn wait_for(cond: impl Fn() -> bool, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !cond() {
        assert!(Instant::now() < deadline, "{what}: not within 5 s");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// failure_mode local: a payment that needs etcd while it is down is counted by the Envoy alone,
/// and the API sees it marked.
#[test]
fn local_mode_counts_per_envoy_while_etcd_is_down_and_marks_it() {
    let stack = Stack::start();
    let mut etcd = Etcd::start(1);
    let prefix = prefix();
    let plugin = ledger_plugin(&prefix, json!({"grant": {"requests": 3}}), json!({"failure_mode": "local"}));
    let a = Replica::start(&stack, &etcd, &plugin, "a");
    let txid = stack.paid_and_mined(1000);
    etcd.members[0].stop();
    let codes: Vec<String> = (0..5).map(|_| code(&a.get(&txid, None))).collect();
    assert_eq!(
        codes,
        ["ok", "ok", "ok", "payment_exhausted", "payment_exhausted"],
        "the local count still ends at the grant"
    );
    assert_eq!(a.stat("txgate_ledger_fallbacks"), 3);
    let marked = stack
        .backend_seen()
        .iter()
        .filter(|r| r["headers"]["x-txgate-unverified"].as_str() == Some("ledger_unavailable"))
        .count();
    assert_eq!(marked, 3, "every fallback request reached the API marked");
}

/// The warm path makes no etcd call: 1000 requests on one Envoy with K = 64 cost about 1000/64.
#[test]
fn warm_requests_make_no_etcd_call() {
    let stack = Stack::start();
    let etcd = Etcd::start(1);
    let prefix = prefix();
    let plugin = ledger_plugin(&prefix, json!({"grant": {"requests": 100000}}), json!({"block": 64}));
    let a = Replica::start(&stack, &etcd, &plugin, "a");
    let txid = stack.paid_and_mined(1000);
    let started = Instant::now();
    assert_eq!(code(&a.get(&txid, None)), "ok");
    let first_use = started.elapsed();
    let calls_before = a.stat("txgate_ledger_calls");
    let started = Instant::now();
    for _ in 0..1000 {
        assert_eq!(a.get(&txid, None).status, 200);
    }
    let warm = started.elapsed();
    let calls = a.stat("txgate_ledger_calls") - calls_before;
    assert!(calls <= 1000 / 64 + 2, "{calls} etcd calls for 1000 warm requests");
    assert!(calls >= 1000 / 64 - 1, "refills happened in the background: {calls}");
    assert_eq!(a.stat("txgate_rejected_ledger_unavailable"), 0);
    eprintln!(
        "warm: {calls} etcd calls per 1000 requests; first use {first_use:?} (explorer + etcd); 1000 warm in {warm:?}"
    );
}

/// A payment one replica verified is not verified again by the others: its first use writes what
/// the chain said to the ledger, and another replica's first contact reads it instead of asking
/// an explorer about the transaction (only the tip, to count confirmations).
#[test]
fn a_payment_verified_by_one_replica_is_not_verified_again_by_another() {
    let stack = Stack::start();
    let etcd = Etcd::start(1);
    let prefix = prefix();
    let plugin = ledger_plugin(&prefix, json!({"grant": {"requests": 10}}), json!({}));
    let a = Replica::start(&stack, &etcd, &plugin, "a");
    let b = Replica::start(&stack, &etcd, &plugin, "b");
    let txid = stack.paid_and_mined(1000);
    stack.reset_explorer_stats(0);
    assert_eq!(code(&a.get(&txid, None)), "ok");
    assert_eq!(stack.explorer_stats(0)["tx"], 1, "A verified it with the explorer");
    let reply = b.get(&txid, None);
    assert_eq!(code(&reply), "ok");
    let stats = stack.explorer_stats(0);
    assert_eq!(stats["tx"], 1, "B took A's verification from the ledger: {stats}");
    assert_eq!(b.stat("txgate_ledger_facts_hits"), 1);
    assert_eq!(serde_json::from_str::<Value>(&reply.body).unwrap()["txgate"]["paid_sats"], 1000);
    // B still counts confirmations itself, and the grant stays one across both.
    assert!(serde_json::from_str::<Value>(&reply.body).unwrap()["txgate"]["confirmations"].as_u64() >= Some(1));
    for i in 0..8 {
        assert_eq!(code(&[&a, &b][i % 2].get(&txid, None)), "ok");
    }
    assert_eq!(code(&a.get(&txid, None)), "payment_exhausted");
    // A txid nobody verified costs one ledger read and then the explorer, as before.
    let unknown = "ab".repeat(32);
    assert_eq!(code(&b.get(&unknown, None)), "tx_not_found");
    assert_eq!(stack.explorer_stats(0)["tx"], 2);
    assert_eq!(b.stat("txgate_ledger_facts_hits"), 1);
    // An underpayment never reaches the ledger, so nothing can be taken from it for free.
    let short = stack.paid_and_mined(10);
    assert_eq!(code(&a.get(&short, None)), "insufficient_payment");
    assert_eq!(code(&b.get(&short, None)), "insufficient_payment");
    assert_eq!(stack.explorer_stats(0)["tx"], 4);
}

/// 3 members: the leader SIGKILLed half-way, later two members frozen (SIGSTOP) for 3 s: never
/// more than N granted, and the test reports how many paid requests were refused.
#[test]
fn three_members_leader_killed_and_quorum_frozen_never_over_grant() {
    let stack = Stack::start();
    let mut etcd = Etcd::start(3);
    let prefix = prefix();
    let plugin = ledger_plugin(
        &prefix,
        json!({"grant": {"requests": 300}}),
        json!({"block": 4, "timeout": "500ms", "deadline": "2500ms", "circuit_breaker": {"failures": 5, "cool_down": "1s"}}),
    );
    let a = Replica::start(&stack, &etcd, &plugin, "a");
    let b = Replica::start(&stack, &etcd, &plugin, "b");
    let txid = stack.paid_and_mined(1000);
    let ports = [a.listener_port, b.listener_port];
    let leader = etcd.leader();
    let fault = |etcd: &mut Etcd, phase: usize| match phase {
        0 => etcd.members[leader].kill(),
        _ => {
            let frozen: Vec<usize> = (0..3).filter(|i| *i != leader).collect();
            for i in &frozen {
                etcd.members[*i].signal("-STOP");
            }
            std::thread::sleep(Duration::from_secs(3));
            for i in &frozen {
                etcd.members[*i].signal("-CONT");
            }
        }
    };
    let codes: Vec<String> = std::thread::scope(|s| {
        let load = s.spawn(|| {
            let agent = agent(Duration::from_secs(20));
            (0..400).map(|i| code(&get(&agent, ports[i % 2], &txid, None))).collect::<Vec<_>>()
        });
        std::thread::sleep(Duration::from_millis(700));
        fault(&mut etcd, 0);
        load.join().unwrap()
    });
    let t1 = tally(&codes);
    let granted1 = *t1.get("ok").unwrap_or(&0);
    assert!(granted1 <= 300, "over-granted through a leader kill: {t1:?}");
    eprintln!("leader killed: {t1:?}");
    // Second fault, on a fresh payment: the killed member is back, then the two others freeze,
    // so the one left has no quorum for 3 s.
    etcd.members[leader].spawn();
    etcd.wait_healthy();
    let txid2 = stack.paid_and_mined(1000);
    let codes: Vec<String> = std::thread::scope(|s| {
        let load = s.spawn(|| {
            let agent = agent(Duration::from_secs(20));
            (0..400).map(|i| code(&get(&agent, ports[i % 2], &txid2, None))).collect::<Vec<_>>()
        });
        std::thread::sleep(Duration::from_millis(500));
        fault(&mut etcd, 1);
        load.join().unwrap()
    });
    let t2 = tally(&codes);
    let granted2 = *t2.get("ok").unwrap_or(&0);
    assert!(granted2 <= 300, "over-granted through a lost quorum: {t2:?}");
    etcd.wait_healthy();
    // Service comes back once the quorum does (a fresh payment: the last one may be used up).
    let txid3 = stack.paid_and_mined(1000);
    let back = Instant::now();
    while code(&get(&agent(Duration::from_secs(20)), ports[0], &txid3, None)) != "ok" {
        assert!(back.elapsed() < Duration::from_secs(15), "no service 15 s after the quorum came back");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(etcd.used(&prefix, &txid) <= 300 && etcd.used(&prefix, &txid2) <= 300);
    eprintln!(
        "quorum frozen 3s: {t2:?}; refused while paid: {} + {} (ledger_unavailable)",
        t1.get("ledger_unavailable").unwrap_or(&0),
        t2.get("ledger_unavailable").unwrap_or(&0)
    );
}
