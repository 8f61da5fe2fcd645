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

// --- SPV endpoints and lying explorers (issue 10) ---

use txgate::spv::{self, ChainError, Evidence, Hash256, Header, HeaderError, MerkleProof, ProofError, Target};

/// Everything an SPV client fetches for `txid` from one explorer: raw tx, merkle proof and the
/// headers from the including block up `depth` blocks (through `/blocks/:height`).
struct Fetched {
    txid: Hash256,
    raw: Vec<u8>,
    merkle: MerkleProof,
    headers: Vec<Header>,
}

fn fetch(c: &mut Client, txid: &str, depth: u32) -> Fetched {
    let hex = c.get(&format!("/tx/{txid}/hex"));
    assert_eq!(hex.status, 200, "{}", hex.text());
    assert_eq!(hex.header("content-type"), Some("text/plain"));
    let proof = c.get(&format!("/tx/{txid}/merkle-proof"));
    assert_eq!(proof.status, 200, "{}", proof.text());
    let merkle = MerkleProof::from_json(&proof.body).unwrap();
    let top = merkle.block_height + depth - 1;
    let page = c.get(&format!("/blocks/{top}"));
    assert_eq!(page.status, 200, "{}", page.text());
    let headers = spv::parse_blocks_json(&page.body)
        .unwrap()
        .into_iter()
        .filter(|(h, _)| *h >= merkle.block_height)
        .map(|(_, h)| h)
        .collect();
    Fetched {
        txid: Hash256::from_display_hex(txid).unwrap(),
        raw: spv::decode_hex_body(&hex.body).unwrap(),
        merkle,
        headers,
    }
}

fn verify(f: &Fetched, pay_to: &[u8], floor_bits: u32, depth: u32) -> Result<spv::Verified, ProofError> {
    let floor = Target::from_compact(floor_bits).unwrap();
    let pay_to = [pay_to.to_vec()];
    spv::verify(&Evidence {
        txid: &f.txid,
        raw_tx: &f.raw,
        merkle: &f.merkle,
        headers: &f.headers,
        pay_to: &pay_to,
        floor: &floor,
        min_depth: depth,
    })
}

fn merchant_script(c: &mut Client) -> (String, Vec<u8>) {
    let addr = c.get("/control/address?index=5").json()["address"].as_str().unwrap().to_string();
    let script = txgate::address::script_pubkey(&addr, txgate::address::Network::Regtest).unwrap();
    (addr, script)
}

fn set_fault(c: &mut Client, f: Value) -> Value {
    let r = c.req("POST", "/control/fault", Some(f));
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
}

const REGTEST: u32 = 0x207f_ffff;
/// 128x harder than regtest's limit (about 256 hashes a block): a floor the devnet can meet.
const HARDER: u32 = 0x2000_ffff;

#[test]
fn spv_endpoints_serve_what_the_filter_verifies() {
    let node = Node::open(None).unwrap();
    let mut c = Client::new(start_explorer(&node));
    let (_, script) = merchant_script(&mut c);
    let txid = pay(&mut c, 30_000);
    c.req("POST", "/control/mine", Some(json!({"blocks": 3})));
    let f = fetch(&mut c, &txid, 3);
    let v = verify(&f, &script, REGTEST, 3).unwrap();
    assert_eq!((v.paid_sats, v.block_height, v.depth, v.top_height), (30_000, 102, 3, 104));
    // The quorum question: /block-height of the top height names the top header.
    assert_eq!(c.get("/block-height/104").text(), v.top_hash.to_display_hex());
    assert_eq!(c.get("/block-height/102").text(), v.block_hash.to_display_hex());
    // /block/:hash/header is the same 80 bytes, as text/plain hex.
    let header = c.get(&format!("/block/{}/header", v.block_hash));
    assert_eq!(header.header("content-type"), Some("text/plain"));
    assert_eq!(Header::from_hex_body(&header.body).unwrap(), f.headers[0]);
    assert_eq!(v.block_time, f.headers[0].time);
    // /tx/:txid/raw is the same bytes as /hex, unencoded.
    let raw = c.get(&format!("/tx/{txid}/raw"));
    assert_eq!(raw.header("content-type"), Some("application/octet-stream"));
    assert_eq!(raw.body, f.raw);
    // /blocks pages: 10 blocks descending from the start (or the tip), stopping after genesis.
    let page = c.get("/blocks").json();
    let heights: Vec<u64> = page.as_array().unwrap().iter().map(|b| b["height"].as_u64().unwrap()).collect();
    assert_eq!(heights, (95..=104).rev().collect::<Vec<u64>>());
    assert_eq!(page[0]["id"], c.get("/blocks/tip/hash").text());
    assert_eq!(c.get("/blocks/3").json().as_array().unwrap().len(), 4);
    assert_eq!(spv::parse_blocks_json(&c.get("/blocks/3").body).unwrap()[0].0, 0);
    let missing = c.get("/blocks/105");
    assert_eq!((missing.status, missing.text().as_str()), (404, "Block not found"));
    assert_eq!(c.get("/blocks/abc").status, 404);
    assert_eq!(c.get("/block-height/105").status, 404);
    // Mined at a harder nBits, blocks meet a floor above regtest's limit.
    let mined = c.req("POST", "/control/mine", Some(json!({"blocks": 2, "bits": "2000ffff"}))).json();
    assert_eq!(mined["height"], 106);
    let f = fetch(&mut c, &txid, 5);
    assert!(verify(&f, &script, HARDER, 3).is_err(), "blocks 102-104 are regtest-easy");
    let top: Vec<Header> = f.headers[3..].to_vec();
    assert_eq!(spv::check_chain(&top, &Target::from_compact(HARDER).unwrap()), Ok(()));
    assert_eq!(c.req("POST", "/control/mine", Some(json!({"bits": "zz"}))).status, 400);
    assert_eq!(c.req("POST", "/control/mine", Some(json!({"bits": "04923456"}))).status, 400);
}

#[test]
fn lying_explorers_are_caught_by_spv() {
    let node = Node::open(None).unwrap();
    let mut honest = Client::new(start_explorer(&node));
    let mut liar = Client::new(start_explorer(&node));
    let (addr, script) = merchant_script(&mut honest);
    let txid = pay(&mut honest, 40_000);
    // Confirm at a harder nBits so that a floor above regtest's limit can be met honestly.
    honest.req("POST", "/control/mine", Some(json!({"blocks": 2, "bits": "2000ffff"})));
    let truth = verify(&fetch(&mut honest, &txid, 2), &script, HARDER, 2).unwrap();
    assert_eq!(truth.paid_sats, 40_000);

    // raw_tx_mismatch: the bytes do not hash to the txid (hex and raw alike).
    set_fault(&mut liar, json!({"mode": "raw_tx_mismatch"}));
    assert!(matches!(verify(&fetch(&mut liar, &txid, 2), &script, HARDER, 2), Err(ProofError::TxidMismatch { .. })));
    let raw = liar.get(&format!("/tx/{txid}/raw")).body;
    assert_ne!(spv::parse_tx(&raw).unwrap().txid, truth_txid(&txid));

    // json_amount_lie: the JSON claims 1 BTC more per output; the raw bytes still say 40,000.
    set_fault(&mut liar, json!({"mode": "json_amount_lie"}));
    let j = liar.get(&format!("/tx/{txid}")).json();
    assert_eq!(j["vout"][0]["value"], 100_040_000u64);
    assert_eq!(honest.get(&format!("/tx/{txid}")).json()["vout"][0]["value"], 40_000);
    assert_eq!(verify(&fetch(&mut liar, &txid, 2), &script, HARDER, 2).unwrap().paid_sats, 40_000);

    // bad_merkle_branch: the branch misses the header's root.
    set_fault(&mut liar, json!({"mode": "bad_merkle_branch"}));
    assert_eq!(verify(&fetch(&mut liar, &txid, 2), &script, HARDER, 2), Err(ProofError::MerkleRootMismatch));

    // header_below_floor: the same blocks re-mined at regtest difficulty (new hashes, still linked).
    set_fault(&mut liar, json!({"mode": "header_below_floor", "from_height": 100}));
    let f = fetch(&mut liar, &txid, 2);
    assert_eq!(f.headers[0].bits, REGTEST);
    assert_ne!(f.headers[0].hash, truth.block_hash);
    assert_eq!(
        verify(&f, &script, HARDER, 2),
        Err(ProofError::Chain(ChainError::Work { index: 0, error: HeaderError::BelowFloor }))
    );
    // Blocks 100 and 101 were mined at regtest difficulty already: re-mined, they come out the same.
    assert_eq!(liar.get("/block-height/101").text(), honest.get("/block-height/101").text());
    assert_ne!(liar.get("/block-height/102").text(), honest.get("/block-height/102").text());

    // fake_low_work_chain: a payment that never happened, "confirmed" 3 deep on top of the tip.
    let answer =
        set_fault(&mut liar, json!({"mode": "fake_low_work_chain", "address": addr, "sats": 5_000_000, "depth": 3}));
    let fake = answer["fake_txid"].as_str().unwrap().to_string();
    assert_eq!(answer["fault"]["fork_height"], 104);
    assert_eq!(answer["fake_hashes"].as_array().unwrap().len(), 3);
    assert_eq!(honest.get(&format!("/tx/{fake}")).status, 404);
    assert_eq!(liar.get("/blocks/tip/height").text(), "106");
    let f = fetch(&mut liar, &fake, 3);
    // Everything but the work checks out: only the floor (or the quorum) stops it.
    assert_eq!(verify(&f, &script, REGTEST, 3).unwrap().paid_sats, 5_000_000);
    assert_eq!(
        verify(&f, &script, HARDER, 3),
        Err(ProofError::Chain(ChainError::Work { index: 0, error: HeaderError::BelowFloor }))
    );
    assert_eq!(honest.get("/block-height/106").status, 404);
    // Honest transactions below the fork are still served honestly by the liar.
    assert_eq!(verify(&fetch(&mut liar, &txid, 2), &script, HARDER, 2).unwrap(), truth);

    // tip_disagrees: a one-block fork at the tip.
    set_fault(&mut liar, json!({"mode": "tip_disagrees"}));
    let tip = honest.get("/blocks/tip/height").text();
    assert_eq!(liar.get("/blocks/tip/height").text(), tip);
    assert_ne!(liar.get("/blocks/tip/hash").text(), honest.get("/blocks/tip/hash").text());
    assert_ne!(liar.get(&format!("/block-height/{tip}")).text(), honest.get(&format!("/block-height/{tip}")).text());
    let below = format!("/block-height/{}", tip.parse::<u32>().unwrap() - 1);
    assert_eq!(liar.get(&below).text(), honest.get(&below).text());
    // Its own story is consistent: its proof for the tip block's payment verifies against its headers.
    let liar_view = verify(&fetch(&mut liar, &txid, 2), &script, HARDER, 2).unwrap();
    assert_eq!(liar_view.block_hash, truth.block_hash);
    assert_ne!(liar_view.top_hash, truth.top_hash, "the quorum on the top hash catches it");

    // Faults are per instance; clearing restores the truth.
    set_fault(&mut liar, json!({"mode": "none"}));
    assert_eq!(verify(&fetch(&mut liar, &txid, 2), &script, HARDER, 2).unwrap(), truth);
    // Bad parameters are refused.
    for bad in [
        json!({"mode": "fake_low_work_chain"}),
        json!({"mode": "fake_low_work_chain", "address": "bcrt1qbogus", "sats": 1}),
        json!({"mode": "header_below_floor", "bits": "xyz"}),
        json!({"mode": "fake_low_work_chain", "address": addr, "sats": 1, "depth": 0}),
    ] {
        assert_eq!(liar.req("POST", "/control/fault", Some(bad.clone())).status, 400, "{bad}");
    }
}

fn truth_txid(txid: &str) -> Hash256 {
    Hash256::from_display_hex(txid).unwrap()
}

#[test]
fn reorg_drops_the_old_branch_and_its_payments() {
    let node = Node::open(None).unwrap();
    let mut c = Client::new(start_explorer(&node));
    let (_, script) = merchant_script(&mut c);
    let paid = pay(&mut c, 25_000);
    c.req("POST", "/control/mine", Some(json!({"blocks": 2})));
    let before = verify(&fetch(&mut c, &paid, 2), &script, REGTEST, 2).unwrap();
    assert_eq!(before.block_height, 102);
    let old_102 = c.get("/block-height/102").text();

    let r = c.req("POST", "/control/reorg", Some(json!({"depth": 2})));
    assert_eq!(r.status, 200, "{}", r.text());
    let r = r.json();
    assert_eq!(r["height"], 104);
    assert_eq!(r["hashes"].as_array().unwrap().len(), 3);
    let dropped: Vec<&str> = r["dropped"].as_array().unwrap().iter().map(|t| t.as_str().unwrap()).collect();
    assert_eq!(dropped, [paid.as_str()]);
    assert_eq!(c.get("/blocks/tip/height").text(), "104");
    assert_ne!(c.get("/block-height/102").text(), old_102);
    assert_eq!(c.get(&format!("/tx/{paid}")).status, 404);
    assert_eq!(c.get(&format!("/tx/{paid}/merkle-proof")).status, 404);
    assert_eq!(c.get(&format!("/block/{old_102}/header")).status, 404);
    assert!(c.get("/control/info").json()["mempool"].as_array().unwrap().is_empty());
    // The new branch links to the kept block 101 and every block holds only its coinbase.
    let page = spv::parse_blocks_json(&c.get("/blocks/104").body).unwrap();
    let headers: Vec<Header> = page.iter().filter(|(h, _)| *h >= 101).map(|(_, h)| *h).collect();
    assert_eq!(spv::check_chain(&headers, &Target::from_compact(REGTEST).unwrap()), Ok(()));
    for h in 102..=104 {
        let hash = c.get(&format!("/block-height/{h}")).text();
        assert_eq!(c.get(&format!("/block/{hash}/txids")).json().as_array().unwrap().len(), 1);
    }
    // The wallet's coins are spendable again and the chain goes on.
    let again = pay(&mut c, 27_000);
    c.req("POST", "/control/mine", Some(json!({"blocks": 1})));
    assert_eq!(verify(&fetch(&mut c, &again, 1), &script, REGTEST, 1).unwrap().block_height, 105);
    assert_eq!(c.req("POST", "/control/reorg", Some(json!({"depth": 0}))).status, 400);
    assert_eq!(c.req("POST", "/control/reorg", Some(json!({"depth": 500}))).status, 400);
}
