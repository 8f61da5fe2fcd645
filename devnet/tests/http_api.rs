//! Real HTTP against explorer instances and the demo API on 127.0.0.1:0.

use devnet::chain::merkle_root_from_branch;
use devnet::demo::DemoApi;
use devnet::explorer::{Instance, Node};
use devnet::http::spawn_server;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Keep-alive client: many requests over one connection, like Envoy.
struct Client {
    reader: BufReader<TcpStream>,
}

struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Resp {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.text()))
    }
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

impl Client {
    fn new(addr: SocketAddr) -> Client {
        let s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        Client { reader: BufReader::new(s) }
    }

    fn send_raw(&mut self, raw: &[u8]) -> std::io::Result<Resp> {
        self.reader.get_mut().write_all(raw)?;
        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        let status = line.split(' ').nth(1).unwrap().parse().unwrap();
        let mut headers = Vec::new();
        loop {
            let mut h = String::new();
            self.reader.read_line(&mut h)?;
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            let (k, v) = h.split_once(':').unwrap();
            headers.push((k.to_string(), v.trim().to_string()));
        }
        let len: usize = headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
            .map(|(_, v)| v.parse().unwrap())
            .expect("responses always carry Content-Length");
        let mut body = vec![0; len];
        self.reader.read_exact(&mut body)?;
        Ok(Resp { status, headers, body })
    }

    fn req(&mut self, method: &str, path: &str, body: Option<Value>) -> Resp {
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let raw = format!("{method} {path} HTTP/1.1\r\nHost: test\r\nContent-Length: {}\r\n\r\n{body}", body.len());
        self.send_raw(raw.as_bytes()).unwrap()
    }

    fn get(&mut self, path: &str) -> Resp {
        self.req("GET", path, None)
    }
}

fn start_explorer(node: &Arc<Node>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let instance = Instance::new(node.clone());
    spawn_server(listener, Arc::new(move |r| instance.handle(r)));
    addr
}

fn pay(c: &mut Client, sats: u64) -> String {
    let addr = c.get("/control/address?index=5").json()["address"].as_str().unwrap().to_string();
    let r = c.req("POST", "/control/pay", Some(json!({"address": addr, "sats": sats})));
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["txid"].as_str().unwrap().to_string()
}

#[test]
fn esplora_endpoints_over_http() {
    let node = Node::open(None).unwrap();
    let addr = start_explorer(&node);
    let mut c = Client::new(addr);

    assert_eq!(c.get("/api/blocks/tip/height").text(), "101");
    assert_eq!(c.get("/blocks/tip/height").text(), "101");
    let merchant = c.get("/control/address?index=5").json()["address"].as_str().unwrap().to_string();
    assert!(merchant.starts_with("bcrt1q"));
    let fresh1 = c.get("/control/address").json();
    let fresh2 = c.get("/control/address").json();
    assert_ne!(fresh1["address"], fresh2["address"]);

    let pay_resp = c.req("POST", "/control/pay", Some(json!({"address": merchant, "sats": 21_000})));
    assert_eq!(pay_resp.status, 200);
    let txid = pay_resp.json()["txid"].as_str().unwrap().to_string();
    let hex = pay_resp.json()["hex"].as_str().unwrap().to_string();

    // Unconfirmed.
    let tx = c.get(&format!("/api/tx/{txid}")).json();
    assert_eq!(tx["txid"], txid);
    assert_eq!(tx["status"], json!({"confirmed": false}));
    assert_eq!(tx["vout"][0]["scriptpubkey_address"], merchant);
    assert_eq!(tx["vout"][0]["value"], 21_000);
    assert_eq!(tx["fee"], 1000);
    assert_eq!(c.get(&format!("/api/tx/{txid}/status")).json(), json!({"confirmed": false}));
    assert_eq!(c.get(&format!("/api/tx/{txid}/hex")).text(), hex);
    assert_eq!(c.get(&format!("/api/tx/{txid}/merkle-proof")).status, 404);

    // Confirm at a chosen time plus two more blocks.
    let mined = c.req("POST", "/control/mine", Some(json!({"blocks": 3, "time": 1_700_000_000}))).json();
    assert_eq!(mined["height"], 104);
    assert_eq!(mined["hashes"].as_array().unwrap().len(), 3);
    let st = c.get(&format!("/tx/{txid}/status")).json();
    assert_eq!(st["confirmed"], true);
    assert_eq!(st["block_height"], 102);
    assert_eq!(st["block_time"], 1_700_000_000);
    assert_eq!(st["block_hash"], mined["hashes"][0]);
    let tip: u64 = c.get("/api/blocks/tip/height").text().parse().unwrap();
    assert_eq!(tip - 102 + 1, 3, "confirmations");
    assert_eq!(c.get("/api/blocks/tip/hash").text(), mined["hashes"][2].as_str().unwrap());

    // Merkle proof checks out against the served header.
    let proof = c.get(&format!("/api/tx/{txid}/merkle-proof")).json();
    assert_eq!(proof["block_height"], 102);
    let bh = st["block_hash"].as_str().unwrap();
    let header_hex = c.get(&format!("/api/block/{bh}/header")).text();
    assert_eq!(header_hex.len(), 160);
    let header: bitcoin::block::Header = bitcoin::consensus::encode::deserialize_hex(&header_hex).unwrap();
    assert_eq!(header.block_hash().to_string(), bh);
    let branch: Vec<bitcoin::TxMerkleNode> =
        proof["merkle"].as_array().unwrap().iter().map(|h| h.as_str().unwrap().parse().unwrap()).collect();
    let root = merkle_root_from_branch(
        &bitcoin::Txid::from_str(&txid).unwrap(),
        &branch,
        proof["pos"].as_u64().unwrap() as usize,
    );
    assert_eq!(root, header.merkle_root);
    assert!(header.validate_pow(header.target()).is_ok());

    let block = c.get(&format!("/api/block/{bh}")).json();
    assert_eq!(block["height"], 102);
    assert_eq!(block["tx_count"], 2);
    assert_eq!(block["timestamp"], 1_700_000_000);
    assert_eq!(c.get("/api/block-height/102").text(), bh);
    assert_eq!(c.get(&format!("/api/block/{bh}/txids")).json()[1], txid);

    // Errors, esplora style.
    let r = c.get("/api/tx/nothex");
    assert_eq!((r.status, r.text().as_str()), (400, "Invalid hex string"));
    let r = c.get(&format!("/api/tx/{}", "ab".repeat(32)));
    assert_eq!((r.status, r.text().as_str()), (404, "Transaction not found"));
    assert_eq!(r.header("content-type"), Some("text/plain"));
    assert_eq!(c.get("/api/nope").status, 404);
    let r = c.req(
        "POST",
        "/control/pay",
        Some(json!({"address": "bc1qar0srrr7xfkvy5l643lydnw9re59gtzzwf5mdq", "sats": 1})),
    );
    assert_eq!(r.status, 400);
    assert!(r.json()["error"].as_str().unwrap().contains("regtest"));

    // Stats count explorer calls only.
    let stats = c.get("/control/stats").json();
    assert_eq!(stats["tip"], 4); // 3x height + 1x hash
    assert_eq!(stats["by_path"][format!("/api/tx/{txid}")], 1);
    assert_eq!(stats["by_path"][format!("/tx/{txid}/status")], 1);
    assert_eq!(
        stats["total"],
        stats["by_path"].as_object().unwrap().values().map(|v| v.as_u64().unwrap()).sum::<u64>()
    );
    assert!(stats["by_path"].as_object().unwrap().keys().all(|k| !k.contains("control")));
    c.req("POST", "/control/stats/reset", None);
    assert_eq!(c.get("/control/stats").json(), json!({"total": 0, "tx": 0, "tip": 0, "by_path": {}}));
}

#[test]
fn faults_are_per_instance_and_scoped() {
    let node = Node::open(None).unwrap();
    let a = start_explorer(&node);
    let b = start_explorer(&node);
    let mut ca = Client::new(a);
    let mut cb = Client::new(b);
    let t1 = pay(&mut ca, 1000);
    let t2 = pay(&mut ca, 2000);
    ca.req("POST", "/control/mine", Some(json!({})));

    let fault = |c: &mut Client, f: Value| assert_eq!(c.req("POST", "/control/fault", Some(f)).status, 200);

    // Scoped 500 on instance A only.
    fault(&mut ca, json!({"mode": "status_500", "txid": t1}));
    assert_eq!(ca.get(&format!("/api/tx/{t1}")).status, 500);
    assert_eq!(ca.get(&format!("/api/tx/{t1}/status")).status, 500);
    assert_eq!(ca.get(&format!("/api/tx/{t2}")).status, 200);
    assert_eq!(ca.get("/api/blocks/tip/height").status, 200);
    assert_eq!(cb.get(&format!("/api/tx/{t1}")).status, 200, "instance B unaffected");
    assert_eq!(ca.get("/control/fault").json()["fault"]["mode"], "status_500");

    fault(&mut ca, json!({"mode": "status_429"}));
    let r = ca.get("/api/blocks/tip/height");
    assert_eq!((r.status, r.header("retry-after")), (429, Some("1")));
    fault(&mut ca, json!({"mode": "status_502"}));
    assert_eq!(ca.get("/api/blocks/tip/height").status, 502);

    // Counted fault: fails twice, then recovers by itself.
    fault(&mut ca, json!({"mode": "status_500", "count": 2}));
    assert_eq!(ca.get("/api/blocks/tip/height").status, 500);
    assert_eq!(ca.get("/api/blocks/tip/height").status, 500);
    assert_eq!(ca.get("/api/blocks/tip/height").status, 200);
    assert_eq!(ca.get("/control/fault").json()["fault"], Value::Null);

    fault(&mut ca, json!({"mode": "delay", "delay_ms": 300}));
    let start = Instant::now();
    assert_eq!(ca.get(&format!("/api/tx/{t1}")).json()["txid"], t1);
    assert!(start.elapsed() >= Duration::from_millis(300));

    fault(&mut ca, json!({"mode": "truncated_json"}));
    let full = cb.get(&format!("/api/tx/{t1}"));
    let cut = ca.get(&format!("/api/tx/{t1}"));
    assert_eq!(cut.status, 200);
    assert_eq!(cut.body.len(), full.body.len() / 2);
    assert!(serde_json::from_slice::<Value>(&cut.body).is_err());

    fault(&mut ca, json!({"mode": "html_error"}));
    let r = ca.get(&format!("/api/tx/{t1}"));
    assert_eq!((r.status, r.header("content-type")), (503, Some("text/html")));
    fault(&mut ca, json!({"mode": "html_error", "status": 200}));
    let r = ca.get(&format!("/api/tx/{t1}"));
    assert!(r.status == 200 && r.text().starts_with("<!DOCTYPE html>"));

    fault(&mut ca, json!({"mode": "huge_body"}));
    assert!(ca.get(&format!("/api/tx/{t1}")).body.len() > 2 * 1024 * 1024);

    fault(&mut ca, json!({"mode": "wrong_txid"}));
    let r = ca.get(&format!("/api/tx/{t1}")).json();
    assert_ne!(r["txid"], t1);
    assert!(cb.get(&format!("/api/tx/{}", r["txid"].as_str().unwrap())).status == 200, "a real tx");
    assert_eq!(ca.get("/api/blocks/tip/height").text(), "102", "tip untouched");

    fault(&mut ca, json!({"mode": "bad_tip"}));
    assert_eq!(ca.get("/api/blocks/tip/height").text(), "abc");
    assert_eq!(ca.get(&format!("/api/tx/{t1}")).json()["txid"], t1);

    fault(&mut ca, json!({"mode": "negative_values"}));
    assert_eq!(ca.get(&format!("/api/tx/{t1}")).json()["vout"][0]["value"], -1000);

    fault(&mut ca, json!({"mode": "huge_values"}));
    let r = ca.get(&format!("/api/tx/{t1}")).json();
    assert_eq!(r["vout"][0]["value"].as_f64(), Some(1e30));
    assert_eq!(r["status"]["block_height"], u64::MAX);
    assert_eq!(ca.get(&format!("/api/tx/{t1}/status")).json()["block_height"], u64::MAX);

    assert_eq!(ca.req("POST", "/control/fault", Some(json!({"mode": "bogus"}))).status, 400);

    // Reset: no response bytes at all, and the connection is gone.
    fault(&mut ca, json!({"mode": "reset"}));
    let mut cr = Client::new(a);
    assert!(cr.send_raw(b"GET /api/blocks/tip/height HTTP/1.1\r\nHost: x\r\n\r\n").is_err());
    fault(&mut ca, json!({"mode": "none"}));
    assert_eq!(ca.get("/api/blocks/tip/height").text(), "102");
    // Faulted requests are still counted as received.
    assert!(ca.get("/control/stats").json()["tip"].as_u64().unwrap() >= 10);
}

#[test]
fn demo_api_echoes_and_records() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let api = Arc::new(DemoApi::default());
    spawn_server(listener, Arc::new(move |r| api.handle(r)));
    let mut c = Client::new(addr);

    let r = c
        .send_raw(
            b"POST /paid/thing?x=1 HTTP/1.1\r\nHost: t\r\nX-Txgate-Txid: abc\r\nX-Txgate-Paid-Sats: 5000\r\n\
              X-Txgate-Confirmations: 2\r\nX-Txgate-Discount: 0.5\r\nTransfer-Encoding: chunked\r\n\r\n\
              5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
        )
        .unwrap();
    let j = r.json();
    assert_eq!(j["ok"], true);
    assert_eq!(j["method"], "POST");
    assert_eq!(j["path"], "/paid/thing?x=1");
    assert_eq!(j["txgate"], json!({"txid": "abc", "paid_sats": 5000, "confirmations": 2, "discount": 0.5}));

    // Same connection still usable after the chunked body.
    let j = c.get("/free").json();
    assert_eq!(j["txgate"], json!({"txid": null, "paid_sats": null, "confirmations": null, "discount": null}));
    let r = c.req("PUT", "/with-body", Some(json!({"a": 1})));
    assert_eq!(r.status, 200);

    let seen = c.get("/__seen").json();
    assert_eq!(seen["count"], 3);
    assert_eq!(seen["requests"][0]["headers"]["x-txgate-paid-sats"], "5000");
    assert_eq!(seen["requests"][1]["path"], "/free");
    c.req("POST", "/__seen/reset", None);
    assert_eq!(c.get("/__seen").json()["count"], 0);
}

struct Proc(Child);
impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts the real binary and waits for its port file.
fn spawn_devnet(dir: &std::path::Path, n: usize) -> (Proc, Vec<SocketAddr>) {
    let port_file = dir.join("ports");
    let _ = std::fs::remove_file(&port_file);
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_txgate-devnet"));
    cmd.args(["serve", "--data-dir"]).arg(dir.join("data")).arg("--port-file").arg(&port_file);
    for _ in 0..n {
        cmd.args(["--listen", "127.0.0.1:0"]);
    }
    let mut child = Proc(cmd.stdout(Stdio::piped()).spawn().unwrap());
    let mut line = String::new();
    BufReader::new(child.0.stdout.as_mut().unwrap()).read_line(&mut line).unwrap();
    assert!(line.starts_with("listening on 127.0.0.1:"), "{line}");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(s) = std::fs::read_to_string(&port_file) {
            let addrs: Vec<SocketAddr> = s.lines().map(|p| format!("127.0.0.1:{p}").parse().unwrap()).collect();
            assert_eq!(addrs.len(), n);
            return (child, addrs);
        }
        assert!(Instant::now() < deadline, "no port file");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn binary_serves_persists_and_cli_works() {
    let dir = std::env::temp_dir().join(format!("txgate-devnet-bin-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let (proc1, addrs) = spawn_devnet(&dir, 2);
    let url = format!("http://{}", addrs[1]);
    let cli = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_txgate-devnet")).args(args).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    };
    let merchant = cli(&["address", "--url", &url, "--index", "1"]);
    let confirmed = cli(&["pay", "--url", &url, "--address", &merchant, "--sats", "7777"]);
    let hashes = cli(&["mine", "--url", &url, "--blocks", "2", "--time", "1700000000"]);
    assert_eq!(hashes.lines().count(), 2);
    let pending = cli(&["pay", "--url", &url, "--address", &merchant, "--sats", "8888"]);
    drop(proc1);

    // Restart on the same data dir: chain and mempool survive.
    let (_proc2, addrs) = spawn_devnet(&dir, 1);
    let mut c = Client::new(addrs[0]);
    assert_eq!(c.get("/api/blocks/tip/height").text(), "103");
    assert_eq!(c.get(&format!("/api/tx/{confirmed}/status")).json()["block_height"], 102);
    assert_eq!(c.get(&format!("/api/tx/{pending}/status")).json(), json!({"confirmed": false}));
    c.req("POST", "/control/mine", Some(json!({"blocks": 1})));
    assert_eq!(c.get(&format!("/api/tx/{pending}/status")).json()["block_height"], 104);
    std::fs::remove_dir_all(&dir).unwrap();
}
