//! Request routing for explorer instances: Esplora endpoints (with faults and
//! counters) plus the `/control/*` API used by tests.

use crate::chain::Chain;
use crate::esplora;
use crate::faults::{self, Fault, Kind, Mode, Stats};
use crate::http::{Reply, Request, Response};
use crate::lies;
use crate::store;
use crate::wallet::{self, merchant_key, wallet_key};
use bitcoin::{Amount, BlockHash, ScriptBuf, TxOut, Txid};
use serde::Deserialize;
use serde_json::{json, Value};
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// State shared by all explorer instances of one process.
pub struct Node {
    chain: RwLock<Chain>,
    /// `None` keeps the chain in memory only (tests).
    data_dir: Option<PathBuf>,
    next_merchant: AtomicU32,
}

/// One `--listen` address: its own faults and counters over the shared node.
pub struct Instance {
    node: Arc<Node>,
    fault: Mutex<Option<Fault>>,
    stats: Mutex<Stats>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panicked handler thread must not wedge every later request.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

pub fn now() -> u32 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as u32).unwrap_or(0)
}

impl Node {
    /// Loads the chain from `data_dir`, or creates one with 101 blocks (so the
    /// wallet has a mature coinbase) when the directory is empty.
    pub fn open(data_dir: Option<PathBuf>) -> Result<Arc<Node>, String> {
        let loaded = match &data_dir {
            Some(d) => store::load(d)?,
            None => None,
        };
        let chain = match loaded {
            Some(c) => c,
            None => {
                let mut c = Chain::new();
                // One block per second ending just before now.
                c.mine(101, now().saturating_sub(101), &wallet_key().script_pubkey());
                if let Some(d) = &data_dir {
                    store::save(d, &c)?;
                }
                c
            }
        };
        Ok(Arc::new(Node { chain: RwLock::new(chain), data_dir, next_merchant: AtomicU32::new(0) }))
    }

    pub fn chain(&self) -> std::sync::RwLockReadGuard<'_, Chain> {
        self.chain.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write<R>(&self, f: impl FnOnce(&mut Chain) -> Result<R, String>) -> Result<R, String> {
        let mut chain = self.chain.write().unwrap_or_else(PoisonError::into_inner);
        let r = f(&mut chain)?;
        // Saved under the write lock so snapshots land in order.
        if let Some(d) = &self.data_dir {
            store::save(d, &chain)?;
        }
        Ok(r)
    }

    pub fn pay(&self, req: &PayRequest) -> Result<bitcoin::Transaction, String> {
        let mut outputs = vec![TxOut {
            value: Amount::from_sat(req.sats),
            script_pubkey: wallet::parse_regtest_address(&req.address)?.script_pubkey(),
        }];
        if req.sats == 0 {
            return Err("sats must be positive".into());
        }
        if let Some(data) = &req.op_return {
            let bytes: Vec<u8> = bitcoin::hex::FromHex::from_hex(data).map_err(|e| format!("op_return: {e}"))?;
            let push = bitcoin::script::PushBytesBuf::try_from(bytes).map_err(|e| format!("op_return: {e}"))?;
            outputs.push(TxOut { value: Amount::ZERO, script_pubkey: ScriptBuf::new_op_return(push) });
        }
        let fee = req.fee.unwrap_or(wallet::DEFAULT_FEE_SATS);
        self.write(|chain| {
            let key = wallet_key();
            let tx = wallet::build_payment(&key, chain.spendable(&key.script_pubkey()), outputs, fee)?;
            chain.submit(tx.clone())?;
            Ok(tx)
        })
    }

    pub fn mine(&self, blocks: u32, time: Option<u32>) -> Result<(u32, Vec<BlockHash>), String> {
        self.mine_with_bits(blocks, time, crate::chain::REGTEST_BITS)
    }

    pub fn mine_with_bits(&self, blocks: u32, time: Option<u32>, bits: u32) -> Result<(u32, Vec<BlockHash>), String> {
        if blocks == 0 || blocks > 10_000 {
            return Err("blocks must be 1..=10000".into());
        }
        self.write(|chain| {
            let hashes = chain.mine_with_bits(blocks, time.unwrap_or_else(now), &wallet_key().script_pubkey(), bits);
            Ok((chain.tip_height(), hashes))
        })
    }

    /// Replaces the last `depth` blocks with `depth + 1` new ones without their transactions.
    pub fn reorg(&self, depth: u32, time: Option<u32>) -> Result<(u32, Vec<BlockHash>, Vec<Txid>), String> {
        self.write(|chain| {
            let (hashes, dropped) = chain.reorg(depth, time.unwrap_or_else(now), &wallet_key().script_pubkey())?;
            Ok((chain.tip_height(), hashes, dropped))
        })
    }
}

#[derive(Deserialize)]
pub struct PayRequest {
    pub address: String,
    pub sats: u64,
    #[serde(default)]
    pub fee: Option<u64>,
    /// Optional hex payload for an extra OP_RETURN output (after the payment).
    #[serde(default)]
    pub op_return: Option<String>,
}

#[derive(Deserialize)]
struct MineRequest {
    #[serde(default = "one")]
    blocks: u32,
    #[serde(default)]
    time: Option<u32>,
    /// nBits as 8 hex digits (default regtest's 207fffff).
    #[serde(default)]
    bits: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReorgRequest {
    depth: u32,
    #[serde(default)]
    time: Option<u32>,
}

fn one() -> u32 {
    1
}

fn classify(path: &str) -> Kind<'_> {
    if let Some(rest) = path.strip_prefix("/tx/") {
        Kind::Tx(rest.split('/').next().unwrap_or(""))
    } else if path == "/blocks/tip/height" || path == "/blocks/tip/hash" {
        Kind::Tip
    } else {
        Kind::Other
    }
}

fn bad_request(msg: impl Into<String>) -> Response {
    Response::text(400, msg)
}

impl Instance {
    pub fn new(node: Arc<Node>) -> Arc<Instance> {
        Arc::new(Instance { node, fault: Mutex::new(None), stats: Mutex::new(Stats::default()) })
    }

    pub fn handle(&self, req: &Request) -> Reply {
        if let Some(ctl) = req.path.strip_prefix("/control/") {
            return self.control(req, ctl).into();
        }
        let path = match req.path.strip_prefix("/api") {
            Some(rest) if rest.is_empty() || rest.starts_with('/') => rest,
            _ => req.path.as_str(),
        };
        let kind = classify(path);
        lock(&self.stats).record(&req.path, kind);
        let fault = faults::take(&mut lock(&self.fault), kind);

        if let Some(ms) = fault.as_ref().and_then(Fault::delay) {
            std::thread::sleep(Duration::from_millis(ms));
        }
        let mode = fault.as_ref().map_or(Mode::None, |f| f.mode);
        match mode {
            Mode::Status500 => return Response::text(500, "Internal Server Error").into(),
            Mode::Status502 => return Response::new(502, "text/html", faults::html_page(502)).into(),
            Mode::Status429 => return Response::text(429, "Too Many Requests").with_header("Retry-After", "1").into(),
            Mode::Reset => return Reply::Reset,
            Mode::HtmlError => {
                let status = fault.as_ref().and_then(|f| f.status).unwrap_or(503);
                return Response::new(status, "text/html", faults::html_page(status)).into();
            }
            Mode::HugeBody => {
                let id = if let Kind::Tx(id) = kind { id } else { "0" };
                return Response::new(200, "application/json", faults::huge_body(id)).into();
            }
            _ => {}
        }
        if req.method != "GET" && req.method != "HEAD" {
            return Response::text(405, "Method Not Allowed").into();
        }
        let mut resp = self.esplora(path, fault.as_ref());
        if mode == Mode::TruncatedJson {
            let half = resp.body.len() / 2;
            resp.body.truncate(half);
        }
        resp.into()
    }

    fn esplora(&self, path: &str, fault: Option<&Fault>) -> Response {
        let mode = fault.map_or(Mode::None, |f| f.mode);
        let honest = self.node.chain();
        // A forging fault answers every endpoint from its own chain, consistently.
        let forged = match fault.and_then(|f| lies::forged_chain(&honest, f)) {
            Some(Ok(c)) => Some(c),
            Some(Err(e)) => return Response::text(500, format!("forging failed: {e}")),
            None => None,
        };
        let chain: &Chain = forged.as_ref().unwrap_or(&honest);
        let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        match segs.as_slice() {
            ["blocks", "tip", "height"] if mode == Mode::BadTip => Response::text(200, "abc"),
            ["blocks", "tip", "hash"] if mode == Mode::BadTip => Response::text(200, "abc"),
            ["blocks", "tip", "height"] => Response::text(200, chain.tip_height().to_string()),
            ["blocks", "tip", "hash"] => Response::text(200, chain.tip().block_hash().to_string()),
            ["blocks"] => blocks_page(chain, chain.tip_height()),
            ["blocks", h] => match h.parse::<u32>() {
                Ok(h) if h <= chain.tip_height() => blocks_page(chain, h),
                _ => Response::text(404, "Block not found"),
            },
            ["block-height", h] => match h.parse::<u32>().ok().and_then(|h| chain.block_at(h)) {
                Some(b) => Response::text(200, b.block_hash().to_string()),
                None => Response::text(404, "Block not found"),
            },
            ["block", hash, rest @ ..] => {
                let Ok(hash) = BlockHash::from_str(hash) else {
                    return bad_request("Invalid hex string");
                };
                let Some((height, block)) = chain.height_of(&hash).and_then(|h| Some((h, chain.block_at(h)?))) else {
                    return Response::text(404, "Block not found");
                };
                match rest {
                    [] => Response::json(200, &esplora::block_json(chain, height, block)),
                    ["header"] => Response::text(200, esplora::header_hex(block)),
                    ["status"] => Response::json(200, &esplora::block_status_json(chain, height)),
                    ["txids"] => Response::json(
                        200,
                        &json!(block.txdata.iter().map(|t| t.compute_txid().to_string()).collect::<Vec<_>>()),
                    ),
                    _ => Response::text(404, "Not Found"),
                }
            }
            ["tx", id, rest @ ..] => {
                let Ok(mut txid) = Txid::from_str(id) else {
                    return bad_request("Invalid hex string");
                };
                if mode == Mode::WrongTxid {
                    txid = other_txid(chain, &txid);
                }
                let Some((tx, loc)) = chain.tx(&txid) else {
                    return Response::text(404, "Transaction not found");
                };
                match rest {
                    [] => {
                        let mut j = esplora::tx_json(chain, tx, loc);
                        faults::mutate_tx(mode, &mut j);
                        Response::json(200, &j)
                    }
                    ["status"] => {
                        let mut j = esplora::status_json(chain, loc);
                        faults::mutate_status(mode, &mut j);
                        Response::json(200, &j)
                    }
                    ["hex"] if mode == Mode::RawTxMismatch => {
                        Response::text(200, esplora::tx_hex(&lies::mismatched_tx(tx)))
                    }
                    ["raw"] if mode == Mode::RawTxMismatch => {
                        Response::new(200, "application/octet-stream", lies::tx_bytes(&lies::mismatched_tx(tx)))
                    }
                    ["hex"] => Response::text(200, esplora::tx_hex(tx)),
                    ["raw"] => Response::new(200, "application/octet-stream", lies::tx_bytes(tx)),
                    ["merkle-proof"] => match esplora::merkle_proof_json(chain, loc) {
                        Some(mut j) => {
                            if mode == Mode::BadMerkleBranch {
                                lies::bad_branch(&mut j);
                            }
                            Response::json(200, &j)
                        }
                        None => Response::text(404, "Transaction not found"),
                    },
                    _ => Response::text(404, "Not Found"),
                }
            }
            _ => Response::text(404, "Not Found"),
        }
    }

    fn control(&self, req: &Request, path: &str) -> Response {
        let result = match (req.method.as_str(), path) {
            ("POST", "pay") => serde_json::from_slice::<PayRequest>(&req.body)
                .map_err(|e| format!("bad request: {e}"))
                .and_then(|p| self.node.pay(&p))
                .map(|tx| json!({ "txid": tx.compute_txid().to_string(), "hex": esplora::tx_hex(&tx) })),
            ("POST", "mine") => {
                let body: &[u8] = if req.body.is_empty() { b"{}" } else { &req.body };
                serde_json::from_slice::<MineRequest>(body)
                    .map_err(|e| format!("bad request: {e}"))
                    .and_then(|m| {
                        let bits = m.bits.as_deref().map(faults::parse_bits).transpose()?;
                        self.node.mine_with_bits(m.blocks, m.time, bits.unwrap_or(crate::chain::REGTEST_BITS))
                    })
                    .map(|(height, hashes)| {
                        json!({ "height": height, "hashes": hashes.iter().map(|h| h.to_string()).collect::<Vec<_>>() })
                    })
            }
            ("GET", "address") => {
                let index = match req.query_param("index") {
                    Some(i) => i.parse::<u32>().map_err(|_| "bad index".to_string()),
                    None => Ok(self.node.next_merchant.fetch_add(1, Ordering::Relaxed)),
                };
                index.map(|i| json!({ "address": merchant_key(i).address().to_string(), "index": i }))
            }
            ("GET", "fault") => Ok(json!({ "fault": *lock(&self.fault) })),
            ("POST", "fault") => Fault::parse(&req.body).and_then(|f| self.set_fault(f)),
            ("POST", "reorg") => serde_json::from_slice::<ReorgRequest>(&req.body)
                .map_err(|e| format!("bad request: {e}"))
                .and_then(|r| self.node.reorg(r.depth, r.time))
                .map(|(height, hashes, dropped)| {
                    json!({
                        "height": height,
                        "hashes": hashes.iter().map(|h| h.to_string()).collect::<Vec<_>>(),
                        "dropped": dropped.iter().map(|t| t.to_string()).collect::<Vec<_>>(),
                    })
                }),
            ("GET", "stats") => Ok(lock(&self.stats).to_json()),
            ("POST", "stats/reset") => {
                *lock(&self.stats) = Stats::default();
                Ok(json!({ "ok": true }))
            }
            ("GET", "info") => Ok(self.info()),
            _ => return Response::text(404, "Not Found"),
        };
        match result {
            Ok(v) => Response::json(200, &v),
            Err(e) => Response::json(400, &json!({ "error": e })),
        }
    }

    /// Installs a fault. A fake chain is pinned to the tip of now, and the answer tells the
    /// test the fake payment's txid and the fake blocks' hashes.
    fn set_fault(&self, mut f: Fault) -> Result<Value, String> {
        let mut extra = json!({});
        if f.mode == Mode::FakeLowWorkChain {
            let chain = self.node.chain();
            f.fork_height.get_or_insert(chain.tip_height() + 1);
            let forged = lies::forged_chain(&chain, &f).ok_or("not a forging fault")??;
            let fork = f.fork_height.unwrap_or(0);
            let fake = forged.block_at(fork).ok_or("fork height above the tip")?;
            let txid = fake.txdata.get(1).map(|t| t.compute_txid().to_string());
            let hashes: Vec<String> =
                forged.blocks().iter().skip(fork as usize).map(|b| b.block_hash().to_string()).collect();
            extra = json!({ "fake_txid": txid, "fake_hashes": hashes });
        }
        let mut slot = lock(&self.fault);
        *slot = (f.mode != Mode::None).then_some(f);
        let mut answer = json!({ "ok": true, "fault": *slot });
        if let (Some(a), Some(e)) = (answer.as_object_mut(), extra.as_object()) {
            a.extend(e.clone());
        }
        Ok(answer)
    }

    fn info(&self) -> Value {
        let chain = self.node.chain();
        let key = wallet_key();
        let balance: u64 = chain.spendable(&key.script_pubkey()).iter().map(|u| u.txout.value.to_sat()).sum();
        json!({
            "height": chain.tip_height(),
            "tip": chain.tip().block_hash().to_string(),
            "mempool": chain.mempool().iter().map(|t| t.compute_txid().to_string()).collect::<Vec<_>>(),
            "wallet_address": key.address().to_string(),
            "spendable_sats": balance,
        })
    }
}

/// `GET /blocks[/:height]`: up to 10 blocks descending from `start`, as electrs's `fn blocks`
/// (`BLOCK_LIMIT` = 10, stopping after genesis).
fn blocks_page(chain: &Chain, start: u32) -> Response {
    let page: Vec<Value> = (0..=start)
        .rev()
        .take(10)
        .filter_map(|h| chain.block_at(h).map(|b| esplora::block_json(chain, h, b)))
        .collect();
    Response::json(200, &json!(page))
}

/// Some real transaction other than `txid` (for the `wrong_txid` fault).
fn other_txid(chain: &Chain, txid: &Txid) -> Txid {
    let tip_cb = chain.tip().txdata.first().map(|t| t.compute_txid());
    let genesis_cb = chain.block_at(0).and_then(|b| b.txdata.first()).map(|t| t.compute_txid());
    [tip_cb, genesis_cb].into_iter().flatten().find(|t| t != txid).unwrap_or(*txid)
}
