//! End-to-end harness: a real Envoy running the release `txgate.wasm`, the local regtest explorer
//! (`txgate-devnet`) and the demo API, each a real process on 127.0.0.1, stopped when dropped.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// A valid regtest P2WPKH address (BIP-173 vector re-encoded for regtest): the merchant.
pub const MERCHANT: &str = "bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn from_env_or(var: &str, default: PathBuf) -> PathBuf {
    std::env::var_os(var).map(PathBuf::from).unwrap_or(default)
}

pub fn envoy_bin() -> PathBuf {
    from_env_or("TXGATE_ENVOY", repo().join(".venv/bin/envoy"))
}

pub fn wasm_path() -> PathBuf {
    from_env_or("TXGATE_WASM", repo().join("target/txgate.wasm"))
}

fn devnet_bin(name: &str) -> PathBuf {
    from_env_or("TXGATE_DEVNET_DIR", repo().join("target/debug")).join(name)
}

/// A child process that is killed when the test ends, however it ends.
pub struct Proc {
    child: Child,
    pub name: String,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Proc {
    /// Asks the process to stop (SIGTERM, so Envoy flushes its log) and waits up to 10 s for it.
    fn terminate(&mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill").args(["-TERM", &pid]).status().expect("run kill");
        assert!(sent.success(), "kill -TERM {pid} ({}) failed", self.name);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            assert!(Instant::now() < deadline, "{} did not stop within 10s of SIGTERM", self.name);
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn wait_for_file(path: &Path, child: &mut Child, what: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(text) = std::fs::read_to_string(path) {
            if !text.trim().is_empty() {
                return text;
            }
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("{what} exited early with {status}");
        }
        assert!(Instant::now() < deadline, "{what} did not start within 30s");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn spawn_with_ports(bin: &Path, args: &[&str], dir: &Path, name: &str) -> (Proc, Vec<u16>) {
    let port_file = dir.join(format!("{name}.ports"));
    let log = std::fs::File::create(dir.join(format!("{name}.log"))).expect("log file");
    let mut child = Command::new(bin)
        .args(args)
        .arg("--port-file")
        .arg(&port_file)
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e} (run `make test`, which builds it)", bin.display()));
    let text = wait_for_file(&port_file, &mut child, name);
    let ports = text.lines().map(|l| l.trim().parse().expect("port")).collect();
    (Proc { child, name: name.to_string() }, ports)
}

/// Options for one stack; the plugin config is the default merchant config merged with `plugin`.
pub struct StackOptions {
    pub plugin: Value,
    pub explorers: usize,
    pub concurrency: usize,
    /// Point the explorer cluster at a port where nothing listens.
    pub dead_explorer: bool,
    /// Serve the API over TLS requiring client certificates: a folder with ca.pem, server.pem, server.key.
    pub mtls_dir: Option<PathBuf>,
}

impl Default for StackOptions {
    fn default() -> Self {
        StackOptions { plugin: json!({}), explorers: 1, concurrency: 1, dead_explorer: false, mtls_dir: None }
    }
}

pub struct Stack {
    pub dir: tempfile::TempDir,
    /// Another Envoy started by the test sends requests to this stack's demo API too, so the
    /// final check cannot compare what reached it with this Envoy's counters.
    pub shared_backend: std::sync::atomic::AtomicBool,
    /// The filter runs in `mode: shadow`: the final probe is let through, marked.
    shadow: bool,
    /// The mTLS folder, when the listener requires client certificates.
    mtls_dir: Option<PathBuf>,
    pub explorer_ports: Vec<u16>,
    pub api_port: u16,
    pub listener_port: u16,
    pub admin_port: u16,
    agent: ureq::Agent,
    /// The agent (and open connection) of the last `get_fresh`.
    fresh_agent: std::sync::Mutex<Option<ureq::Agent>>,
    // Dropped in reverse order of start: Envoy first.
    envoy: Option<Proc>,
    api: Proc,
    explorer: Proc,
}

pub fn plugin_config(explorer_clusters: usize, overrides: &Value) -> Value {
    let explorers: Vec<Value> = (0..explorer_clusters)
        .map(|i| json!({"cluster": format!("explorer{i}"), "authority": "explorer.local", "path_prefix": "/api"}))
        .collect();
    let mut config = json!({
        "network": "regtest",
        "pay_to": [MERCHANT],
        "price_sats": 1000,
        "min_confirmations": 1,
        "max_age": "24h",
        "explorers": explorers,
        "timeout": "1s",
        "routes": [{"prefix": "/free", "free": true}, {"prefix": "/premium", "price_sats": 5000, "min_confirmations": 2}],
        // Most tests change the chain between requests and want every request to see it; the
        // caching tests turn these back on.
        "cache": {"not_found_ttl": "0s", "unconfirmed_ttl": "0s", "tip_ttl": "0s"}
    });
    if let (Some(base), Some(extra)) = (config.as_object_mut(), overrides.as_object()) {
        for (k, v) in extra {
            if v.is_null() {
                base.remove(k);
            } else {
                base.insert(k.clone(), v.clone());
            }
        }
    }
    config
}

pub fn envoy_yaml(plugin: &Value, api_port: u16, explorer_ports: &[u16], wasm: &Path) -> String {
    let clusters: String =
        explorer_ports.iter().enumerate().map(|(i, port)| cluster_yaml(&format!("explorer{i}"), *port)).collect();
    let plugin = serde_json::to_string(&plugin.to_string()).expect("json string");
    format!(
        r#"static_resources:
  listeners:
  - name: api
    address: {{socket_address: {{address: 127.0.0.1, port_value: 0}}}}
    # Connections are spread evenly over the workers, so cross-worker tests do not depend on luck.
    connection_balance_config: {{exact_balance: {{}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: api
          route_config:
            virtual_hosts:
            - name: api
              domains: ["*"]
              routes:
              - match: {{prefix: "/"}}
                route: {{cluster: demo_api}}
          http_filters:
          - name: txgate
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
              config:
                name: txgate
                root_id: txgate
                vm_config:
                  vm_id: txgate
                  runtime: envoy.wasm.runtime.v8
                  code: {{local: {{filename: "{wasm}"}}}}
                configuration:
                  "@type": type.googleapis.com/google.protobuf.StringValue
                  value: {plugin}
                failure_policy: FAIL_CLOSED
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
{api_cluster}{clusters}admin:
  address: {{socket_address: {{address: 127.0.0.1, port_value: 0}}}}
"#,
        wasm = wasm.display(),
        api_cluster = cluster_yaml("demo_api", api_port),
    )
}

fn cluster_yaml(name: &str, port: u16) -> String {
    format!(
        r#"  - name: {name}
    type: STATIC
    connect_timeout: 0.5s
    load_assignment:
      cluster_name: {name}
      endpoints:
      - lb_endpoints:
        - endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}}}
"#
    )
}

/// The listener's TLS: server certificate, and client certificates required and checked.
fn mtls_transport_socket(dir: &Path) -> String {
    let file = |name: &str| dir.join(name).display().to_string();
    format!(
        r#"      transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          require_client_certificate: true
          common_tls_context:
            tls_certificates:
            - certificate_chain: {{filename: "{}"}}
              private_key: {{filename: "{}"}}
            validation_context:
              trusted_ca: {{filename: "{}"}}
"#,
        file("server.pem"),
        file("server.key"),
        file("ca.pem")
    )
}

/// Every way the devnet explorer can misbehave on a transaction lookup (see devnet/src/faults.rs),
/// each of which must make the explorer's answer unusable.
pub fn explorer_faults() -> Vec<Value> {
    vec![
        json!({"mode": "status_500"}),
        json!({"mode": "status_502"}),
        json!({"mode": "status_429"}),
        json!({"mode": "delay", "delay_ms": 1500}),
        json!({"mode": "reset"}),
        json!({"mode": "truncated_json"}),
        json!({"mode": "html_error"}),
        json!({"mode": "huge_body"}),
        json!({"mode": "wrong_txid"}),
        json!({"mode": "negative_values"}),
        json!({"mode": "huge_values"}),
    ]
}

/// A port on 127.0.0.1 where nothing listens (bound, then released).
pub fn unused_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("port")
}

pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Reply {
    pub fn from_response(response: &mut ureq::http::Response<ureq::Body>) -> Reply {
        let status = response.status().as_u16();
        let headers = response
            .headers()
            .iter()
            .map(|(k, v)| (k.as_str().to_string(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
            .collect();
        let body = response.body_mut().read_to_string().unwrap_or_default();
        Reply { status, headers, body }
    }

    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

impl Stack {
    pub fn start() -> Stack {
        Stack::start_with(StackOptions::default())
    }

    pub fn with_plugin(plugin: Value) -> Stack {
        Stack::start_with(StackOptions { plugin, ..StackOptions::default() })
    }

    pub fn start_with(options: StackOptions) -> Stack {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().join("chain");
        let mut explorer_args = vec!["serve".to_string(), "--data-dir".to_string(), data.display().to_string()];
        for _ in 0..options.explorers {
            explorer_args.extend(["--listen".to_string(), "127.0.0.1:0".to_string()]);
        }
        let explorer_args: Vec<&str> = explorer_args.iter().map(String::as_str).collect();
        let (explorer, explorer_ports) =
            spawn_with_ports(&devnet_bin("txgate-devnet"), &explorer_args, dir.path(), "explorer");
        let (api, api_ports) =
            spawn_with_ports(&devnet_bin("txgate-demo-api"), &["--listen", "127.0.0.1:0"], dir.path(), "api");
        let cluster_ports: Vec<u16> =
            if options.dead_explorer { vec![unused_port(); options.explorers] } else { explorer_ports.clone() };
        let plugin = plugin_config(options.explorers, &options.plugin);
        let mut yaml = envoy_yaml(&plugin, api_ports[0], &cluster_ports, &wasm_path());
        if let Some(dir) = &options.mtls_dir {
            yaml = yaml.replacen("  clusters:\n", &format!("{}  clusters:\n", mtls_transport_socket(dir)), 1);
        }
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(20)))
            .build()
            .into();
        let mut stack = Stack {
            dir,
            shared_backend: std::sync::atomic::AtomicBool::new(false),
            shadow: plugin["mode"] == "shadow",
            mtls_dir: options.mtls_dir.clone(),
            explorer_ports,
            api_port: api_ports[0],
            listener_port: 0,
            admin_port: 0,
            agent,
            fresh_agent: std::sync::Mutex::new(None),
            envoy: None,
            api,
            explorer,
        };
        let (envoy, admin_port, listener_port) = start_envoy(stack.dir.path(), &yaml, options.concurrency)
            .unwrap_or_else(|e| panic!("Envoy did not start: {e:?}"));
        stack.envoy = Some(envoy);
        stack.admin_port = admin_port;
        stack.listener_port = listener_port;
        stack
    }

    /// Envoy's log so far (it is flushed every 100 ms: use `envoy_logged` to wait for a line).
    pub fn envoy_log(&self) -> String {
        let path = self.dir.path().join("envoy.log");
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
    }

    /// Waits (up to 5 s: Envoy flushes its log file periodically) for a line containing `text`.
    pub fn envoy_logged(&self, text: &str) -> bool {
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if self.envoy_log().contains(text) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        false
    }

    fn call(&self, method: &str, url: &str, headers: &[(&str, &str)], body: Option<&Value>) -> Reply {
        let mut builder = ureq::http::Request::builder().method(method).uri(url);
        for (k, v) in headers {
            builder = builder.header(*k, *v);
        }
        let result = match body {
            Some(b) => {
                self.agent.run(builder.header("content-type", "application/json").body(b.to_string()).expect("request"))
            }
            None => self.agent.run(builder.body(()).expect("request")),
        };
        let mut response =
            result.unwrap_or_else(|e| panic!("{method} {url} failed: {e}\nenvoy log:\n{}", self.envoy_log()));
        Reply::from_response(&mut response)
    }

    /// A request over mTLS with the client certificate `<client>.pem` from the stack's mTLS folder
    /// (curl: the HTTP client used elsewhere here is built without TLS).
    pub fn get_mtls(&self, dir: &Path, client: &str, path: &str, headers: &[(&str, &str)]) -> Reply {
        let mut cmd = Command::new("curl");
        cmd.args(["-s", "-w", "\n%{http_code}", "--cacert"]).arg(dir.join("ca.pem"));
        cmd.arg("--cert").arg(dir.join(format!("{client}.pem"))).arg("--key").arg(dir.join(format!("{client}.key")));
        for (k, v) in headers {
            cmd.arg("-H").arg(format!("{k}: {v}"));
        }
        cmd.arg(format!("https://127.0.0.1:{}{path}", self.listener_port));
        let out = cmd.output().expect("curl");
        assert!(
            out.status.success(),
            "curl {path} as {client} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, status) = text.rsplit_once('\n').unwrap_or_else(|| panic!("no status from curl: {text:?}"));
        let status = status.trim().parse().unwrap_or_else(|e| panic!("curl status {status:?}: {e}"));
        assert_ne!(status, 0, "curl {path} as {client} got no HTTP answer");
        Reply { status, headers: Vec::new(), body: body.to_string() }
    }

    /// A request through Envoy (and so through txgate).
    pub fn get(&self, path: &str, headers: &[(&str, &str)]) -> Reply {
        self.call("GET", &format!("http://127.0.0.1:{}{path}", self.listener_port), headers, None)
    }

    /// A POST with a raw body (e.g. megabytes, to see what happens while the request is paused).
    pub fn post_bytes(&self, path: &str, headers: &[(&str, &str)], body: Vec<u8>) -> Reply {
        let url = format!("http://127.0.0.1:{}{path}", self.listener_port);
        let mut builder = ureq::http::Request::builder().method("POST").uri(&url);
        for (k, v) in headers {
            builder = builder.header(*k, *v);
        }
        let mut response = self.agent.run(builder.body(body).expect("request")).expect("POST through Envoy");
        let status = response.status().as_u16();
        let body = response.body_mut().read_to_string().unwrap_or_default();
        Reply { status, headers: Vec::new(), body }
    }

    pub fn post(&self, path: &str, headers: &[(&str, &str)], body: &Value) -> Reply {
        self.call("POST", &format!("http://127.0.0.1:{}{path}", self.listener_port), headers, Some(body))
    }

    pub fn paid_get(&self, path: &str, txid: &str) -> Reply {
        self.get(path, &[("x-bitcoin-txid", txid)])
    }

    fn control(&self, explorer: usize, method: &str, path: &str, body: Option<&Value>) -> Value {
        let url = format!("http://127.0.0.1:{}{path}", self.explorer_ports[explorer]);
        let reply = self.call(method, &url, &[], body);
        assert_eq!(reply.status, 200, "{method} {path}: {}", reply.body);
        if reply.body.trim().is_empty() {
            Value::Null
        } else {
            reply.json()
        }
    }

    /// Pays `sats` to `address` (mempool); returns the txid.
    pub fn pay_to(&self, address: &str, sats: u64) -> String {
        let v = self.control(0, "POST", "/control/pay", Some(&json!({"address": address, "sats": sats})));
        v["txid"].as_str().expect("txid").to_string()
    }

    pub fn pay(&self, sats: u64) -> String {
        self.pay_to(MERCHANT, sats)
    }

    pub fn mine(&self, blocks: u64) -> Value {
        self.control(0, "POST", "/control/mine", Some(&json!({"blocks": blocks})))
    }

    pub fn mine_at(&self, blocks: u64, time: u64) -> Value {
        self.control(0, "POST", "/control/mine", Some(&json!({"blocks": blocks, "time": time})))
    }

    /// Pays and confirms in one block; returns the txid.
    pub fn paid_and_mined(&self, sats: u64) -> String {
        let txid = self.pay(sats);
        self.mine(1);
        txid
    }

    pub fn other_address(&self) -> String {
        let v = self.control(0, "GET", "/control/address", None);
        v["address"].as_str().expect("address").to_string()
    }

    pub fn set_fault(&self, explorer: usize, fault: Value) {
        self.control(explorer, "POST", "/control/fault", Some(&fault));
    }

    /// The explorer instance's counters: `total`, `tx`, `tip`, `by_path`.
    /// The explorer's Esplora JSON for a transaction.
    pub fn get_explorer_tx(&self, txid: &str) -> Value {
        self.control(0, "GET", &format!("/api/tx/{txid}"), None)
    }

    pub fn explorer_stats(&self, explorer: usize) -> Value {
        self.control(explorer, "GET", "/control/stats", None)
    }

    /// A request on a new connection each time, so that Envoy spreads them over its workers.
    ///
    /// The listener balances connections exactly (to the worker with the fewest open ones), so
    /// the previous fresh connection is kept open until this one has been answered: consecutive
    /// fresh requests then alternate between two workers instead of all going to the first.
    pub fn get_fresh(&self, path: &str, headers: &[(&str, &str)]) -> Reply {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(20)))
            .build()
            .into();
        let mut builder =
            ureq::http::Request::builder().method("GET").uri(format!("http://127.0.0.1:{}{path}", self.listener_port));
        for (k, v) in headers {
            builder = builder.header(*k, *v);
        }
        let mut response = agent
            .run(builder.body(()).expect("request"))
            .unwrap_or_else(|e| panic!("GET {path} failed: {e}\nenvoy log:\n{}", self.envoy_log()));
        let reply = Reply::from_response(&mut response);
        // Dropping the previous agent closes its connection.
        let previous = self.fresh_agent.lock().expect("lock").replace(agent);
        drop(previous);
        reply
    }

    pub fn reset_explorer_stats(&self, explorer: usize) {
        self.control(explorer, "POST", "/control/stats/reset", None);
    }

    /// Esplora calls the explorer instance has received so far.
    pub fn explorer_calls(&self, explorer: usize) -> u64 {
        self.control(explorer, "GET", "/control/stats", None)["total"].as_u64().expect("total")
    }

    /// Requests that reached the backend, as the demo API recorded them.
    pub fn backend_seen(&self) -> Vec<Value> {
        let reply = self.call("GET", &format!("http://127.0.0.1:{}/__seen", self.api_port), &[], None);
        assert_eq!(reply.status, 200, "demo API /__seen: {}", reply.body);
        let body = reply.json();
        let requests = body["requests"].as_array().unwrap_or_else(|| panic!("no requests list in {body}")).clone();
        assert_eq!(body["count"].as_u64(), Some(requests.len() as u64), "{body}");
        requests
    }

    /// Envoy's counters by name (`/stats`), e.g. `txgate_requests_allowed`. Panics if Envoy has
    /// no such counter, so a typo or a renamed counter cannot pass as 0.
    pub fn stat(&self, name: &str) -> u64 {
        // Envoy lists plugin counters as `wasmcustom.<name>` in /stats.
        let reply = self.call("GET", &format!("http://127.0.0.1:{}/stats?filter={name}$", self.admin_port), &[], None);
        assert_eq!(reply.status, 200, "/stats: {}", reply.body);
        let found = reply.body.lines().find_map(|l| {
            let (key, value) = l.split_once(": ")?;
            (key == name || key == format!("wasmcustom.{name}")).then(|| value.trim().to_string())
        });
        let value = found.unwrap_or_else(|| panic!("Envoy has no counter {name:?}:\n{}", reply.body));
        value.parse().unwrap_or_else(|e| panic!("counter {name} = {value:?}: {e}"))
    }

    /// Downstream connections each Envoy worker accepted on the API listener.
    pub fn worker_connections(&self) -> Vec<u64> {
        let text =
            self.call("GET", &format!("http://127.0.0.1:{}/stats?filter=worker_", self.admin_port), &[], None).body;
        text.lines()
            .filter(|l| l.starts_with("listener.127.0.0.1_") && l.contains(".downstream_cx_total: "))
            .filter_map(|l| l.rsplit(": ").next()?.trim().parse().ok())
            .collect()
    }

    pub fn stats_text(&self) -> String {
        self.call("GET", &format!("http://127.0.0.1:{}/stats", self.admin_port), &[], None).body
    }

    /// Sends raw bytes (for header values no HTTP client will send) and returns the status code.
    /// Panics when no HTTP status line comes back (a reset or a timeout is not a status).
    pub fn raw_status(&self, request: &[u8]) -> u16 {
        let mut stream = TcpStream::connect(("127.0.0.1", self.listener_port)).expect("connect");
        stream.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
        stream.write_all(request).expect("write");
        let mut response = Vec::new();
        let mut buf = [0u8; 4096];
        while !response.windows(4).any(|w| w == b"\r\n\r\n") {
            match stream.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => response.extend_from_slice(&buf[..n]),
                Err(e) => panic!("reading the answer failed: {e} (got {:?})", String::from_utf8_lossy(&response)),
            }
        }
        let text = String::from_utf8_lossy(&response);
        let status = text.strip_prefix("HTTP/1.1 ").and_then(|rest| rest.get(..3)).and_then(|s| s.parse().ok());
        status.unwrap_or_else(|| panic!("no HTTP status line in {text:?}"))
    }

    /// The filter's own counters: requests it let through.
    pub fn forwarded_count(&self) -> u64 {
        self.stat("txgate_requests_allowed")
            + self.stat("txgate_requests_free")
            + self.stat("txgate_requests_failed_open")
            + self.stat("txgate_requests_shadowed")
    }

    /// Checks run at the end of every test (from `Drop`): every request that reached the backend
    /// was let through by the filter and counted; the VM still answers with the filter's own JSON;
    /// Envoy stops cleanly and its whole log has no panic or critical line.
    fn final_check(&mut self) {
        if !self.shared_backend.load(std::sync::atomic::Ordering::Relaxed) {
            let seen = self.backend_seen().len() as u64;
            let forwarded = self.forwarded_count();
            assert_eq!(seen, forwarded, "backend requests vs allowed + free + failed_open counters");
        }
        let probe = self.probe();
        if self.shadow {
            // Shadow mode lets the probe through, marked with the code it would have got.
            let seen = self.backend_seen();
            let last = seen.last().map(|r| r["headers"]["x-txgate-shadow"].clone());
            assert_eq!(
                (probe.status, last),
                (200, Some(json!("payment_required"))),
                "final probe in shadow mode: {}",
                probe.body
            );
        } else {
            self.check_probe(&probe);
        }
        let envoy = self.envoy.as_mut().expect("envoy");
        let status = envoy.terminate();
        let log = self.envoy_log();
        assert!(status.success(), "Envoy exited with {status} on SIGTERM:\n{log}");
        assert_clean_envoy_log(&log);
    }

    /// The final probe got the filter's own JSON refusal.
    fn check_probe(&self, probe: &Reply) {
        assert!(
            [401, 402, 429].contains(&probe.status),
            "final probe: the filter did not answer (VM dead?): {} {}",
            probe.status,
            probe.body
        );
        let code = probe.json()["error"].as_str().unwrap_or_default().to_string();
        assert!(
            ["payment_required", "client_banned", "identity_required"].contains(&code.as_str()),
            "final probe: {}",
            probe.body
        );
    }

    /// A request without a txid on a paid path: only a live filter answers it with its JSON.
    fn probe(&self) -> Reply {
        match &self.mtls_dir {
            None => self.get("/__txgate_probe", &[]),
            Some(dir) => {
                let client = std::fs::read_dir(dir)
                    .expect("mtls dir")
                    .filter_map(|e| e.ok()?.file_name().into_string().ok()?.strip_suffix(".pem").map(String::from))
                    .find(|name| name != "ca" && name != "server")
                    .expect("a client certificate for the probe");
                self.get_mtls(dir, &client, "/__txgate_probe", &[])
            }
        }
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        // A test that already failed keeps its own message (a second panic would abort).
        if !std::thread::panicking() && self.envoy.is_some() {
            self.final_check();
        }
    }
}

/// Why Envoy did not come up.
#[derive(Debug)]
pub enum EnvoyStartError {
    /// The binary could not be run at all.
    Spawn(String),
    /// Envoy ran and exited (e.g. it refused the configuration): its log.
    Exited(String),
    /// Still running but not ready in time: its log.
    NotReady(String),
}

/// Starts Envoy and waits until it is live.
pub fn start_envoy(dir: &Path, yaml: &str, concurrency: usize) -> Result<(Proc, u16, u16), EnvoyStartError> {
    let config = dir.join("envoy.yaml");
    std::fs::write(&config, yaml).expect("write envoy.yaml");
    let admin_file = dir.join("admin.address");
    let log_path = dir.join("envoy.log");
    let mut child = Command::new(envoy_bin())
        .arg("-c")
        .arg(&config)
        .args(["--concurrency", &concurrency.to_string(), "--use-dynamic-base-id", "--disable-hot-restart"])
        .args(["-l", "warning", "--component-log-level", "wasm:info", "--file-flush-interval-msec", "100"])
        .arg("--admin-address-path")
        .arg(&admin_file)
        .arg("--log-path")
        .arg(&log_path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| {
            EnvoyStartError::Spawn(format!(
                "cannot start {}: {e} (run `make test`, which installs it)",
                envoy_bin().display()
            ))
        })?;
    let deadline = Instant::now() + Duration::from_secs(60);
    let read_log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(EnvoyStartError::Exited(format!("Envoy exited with {status}\n{}", read_log())));
        }
        if let Ok(addr) = std::fs::read_to_string(&admin_file) {
            if let Some(port) = addr.trim().rsplit(':').next().and_then(|p| p.parse::<u16>().ok()) {
                let ready = http_get_plain(port, "/ready").is_some_and(|b| b.trim() == "LIVE");
                if ready {
                    let listeners = http_get_plain(port, "/listeners").unwrap_or_default();
                    let listener = listeners
                        .lines()
                        .find_map(|l| l.strip_prefix("api::").and_then(|a| a.rsplit(':').next()?.parse::<u16>().ok()));
                    if let Some(listener) = listener {
                        return Ok((Proc { child, name: "envoy".to_string() }, port, listener));
                    }
                }
            }
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(EnvoyStartError::NotReady(format!("Envoy not ready within 60s\n{}", read_log())));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn http_get_plain(port: u16, path: &str) -> Option<String> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(5)))
        .build()
        .into();
    agent.get(&format!("http://127.0.0.1:{port}{path}")).call().ok()?.body_mut().read_to_string().ok()
}

/// Envoy for a config that should be refused: runs it and returns (exited?, log). Panics when
/// Envoy could not be run at all or hung, which is neither "refused" nor "started".
pub fn envoy_refuses(plugin: &Value) -> (bool, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let yaml = envoy_yaml(plugin, unused_port(), &[unused_port()], &wasm_path());
    match start_envoy(dir.path(), &yaml, 1) {
        Ok((mut envoy, _, _)) => {
            // Stopped cleanly, so the whole log is on disk.
            let status = envoy.terminate();
            let log = std::fs::read_to_string(dir.path().join("envoy.log")).expect("envoy.log");
            assert!(status.success(), "Envoy exited with {status} on SIGTERM:\n{log}");
            (false, log)
        }
        Err(EnvoyStartError::Exited(log)) => (true, log),
        Err(other) => panic!("Envoy neither started nor refused the configuration: {other:?}"),
    }
}

/// An Envoy log with no panic, trap or critical line, in which the filter configured itself.
pub fn assert_clean_envoy_log(log: &str) {
    let bad: Vec<&str> =
        log.lines().filter(|l| l.contains("panicked") || l.contains("[critical]") || l.contains("wasm trap")).collect();
    assert!(bad.is_empty(), "Envoy log has panic/critical lines:\n{}", bad.join("\n"));
    assert!(log.contains("txgate configured:"), "the filter never logged its configuration:\n{log}");
}
