//! One payment verified by proof of work (`verify: spv`), as a small state machine the glue
//! drives: it names the explorer calls to make and reads their answers. No host calls here.
//!
//! Round 1, the answering explorer A: `/tx/X/hex` and `/tx/X/merkle-proof` in parallel. Round 2:
//! A's `/blocks/{H+N-1}` (skipped when the worker's header cache holds the headers) and
//! `/block-height/{H+N-1}` from `quorum - 1` other explorers, in parallel. When A has no block at
//! H+N-1 yet, its newest page (`/blocks`) sets a lower top and the quorum is asked there.

use std::collections::VecDeque;

use crate::esplora::{BlockPlace, ExplorerError, ProvenBlock, TxAnswer};
use crate::spv::{
    check_chain, decode_hex_body, headers_at, parse_blocks_json, parse_tx, verify, BlocksError, Evidence, Hash256,
    Header, MerkleProof, Target, Verified,
};

/// Pages of `/blocks` one verification may read (10 headers each at electrs's default).
const MAX_PAGES: u32 = 16;

/// One explorer call of a verification.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fetch {
    /// `/tx/:txid/hex`
    Hex,
    /// `/tx/:txid/merkle-proof`
    Proof,
    /// `/blocks/:height`, or `/blocks` (the newest page) for `None`.
    Blocks(Option<u32>),
    /// `/block-height/:height`, asked of a quorum explorer.
    BlockHeight(u32),
}

impl Fetch {
    /// The Esplora path (without the explorer's `path_prefix`).
    pub fn path(&self, txid: &str) -> String {
        match self {
            Fetch::Hex => format!("/tx/{txid}/hex"),
            Fetch::Proof => format!("/tx/{txid}/merkle-proof"),
            Fetch::Blocks(Some(height)) => format!("/blocks/{height}"),
            Fetch::Blocks(None) => "/blocks".to_string(),
            Fetch::BlockHeight(height) => format!("/block-height/{height}"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    pub explorer: usize,
    pub fetch: Fetch,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The lookup's answer: proven in a block, in the mempool (raw bytes only), or unknown.
    Answer(TxAnswer),
    /// The answering explorer failed (no answer, bad status, unreadable body): ask the next one.
    ExplorerFailed(ExplorerError),
    /// The answering explorer's proof does not verify: count it against it, ask the next one.
    ProofInvalid(String),
    /// Not enough quorum explorers could be asked, or they did not answer.
    QuorumUnavailable,
    /// A quorum explorer reports another block at `height`.
    Disagreement { explorer: usize, height: u32, ours: Hash256, theirs: Hash256 },
    /// A quorum explorer has no block at `height` yet.
    QuorumBehind { explorer: usize, height: u32 },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    Wait,
    Dispatch(Vec<Request>),
    Done(Outcome),
}

/// What the worker knows that a verification needs.
pub struct Env<'a> {
    pub floor: &'a Target,
    /// Explorers, the answering one included, that must report the same block hash.
    pub quorum: usize,
    /// Explorers that may vote, in order of preference (never the answering one).
    pub others: &'a [usize],
    pub headers: &'a mut HeaderCache,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Vote {
    Asked,
    Hash(Hash256),
    Behind,
    Failed,
}

#[derive(Debug)]
pub struct SpvLookup {
    txid: Hash256,
    /// The answering explorer.
    pub explorer: usize,
    /// Headers wanted from the payment's block up (the waiting routes' confirmations).
    depth: u32,
    raw: Option<Vec<u8>>,
    /// `Some(None)`: the explorer has no merkle proof (the transaction is in its mempool).
    proof: Option<Option<MerkleProof>>,
    /// The height headers are wanted up to and the quorum is asked at.
    top: Option<u32>,
    pages: Vec<(u32, Header)>,
    pages_asked: u32,
    page_pending: bool,
    segment: Option<Vec<Header>>,
    verified: Option<Verified>,
    votes: Vec<(usize, Vote)>,
    outbox: Vec<Request>,
    /// Explorer calls made so far.
    pub calls: u32,
    /// The headers came from the worker's cache.
    pub headers_cached: bool,
}

impl SpvLookup {
    /// `txid` in display hex (as validated from the request); `depth` at least 1.
    pub fn new(txid: &str, explorer: usize, depth: u32) -> Option<SpvLookup> {
        Some(SpvLookup {
            txid: Hash256::from_display_hex(txid)?,
            explorer,
            depth: depth.max(1),
            raw: None,
            proof: None,
            top: None,
            pages: Vec::new(),
            pages_asked: 0,
            page_pending: false,
            segment: None,
            verified: None,
            votes: Vec::new(),
            outbox: Vec::new(),
            calls: 0,
            headers_cached: false,
        })
    }

    /// Round 1: the raw transaction and its merkle proof from the answering explorer.
    pub fn start(&mut self) -> Next {
        self.send(self.explorer, Fetch::Hex);
        self.send(self.explorer, Fetch::Proof);
        self.flush(None)
    }

    fn send(&mut self, explorer: usize, fetch: Fetch) {
        self.calls = self.calls.saturating_add(1);
        self.outbox.push(Request { explorer, fetch });
    }

    fn flush(&mut self, outcome: Option<Outcome>) -> Next {
        if let Some(outcome) = outcome {
            self.outbox.clear();
            return Next::Done(outcome);
        }
        if self.outbox.is_empty() {
            Next::Wait
        } else {
            Next::Dispatch(std::mem::take(&mut self.outbox))
        }
    }

    /// Reads one answer (`(status, body)`, or the reason there is none).
    pub fn on_answer(
        &mut self,
        explorer: usize,
        fetch: Fetch,
        answer: Result<(u16, Vec<u8>), ExplorerError>,
        env: &mut Env<'_>,
    ) -> Next {
        let outcome = self.read(explorer, fetch, answer, env).or_else(|| self.progress(env));
        self.flush(outcome)
    }

    fn read(
        &mut self,
        explorer: usize,
        fetch: Fetch,
        answer: Result<(u16, Vec<u8>), ExplorerError>,
        env: &mut Env<'_>,
    ) -> Option<Outcome> {
        if let Fetch::BlockHeight(height) = fetch {
            if self.top != Some(height) {
                return None; // asked at a top since abandoned
            }
            let vote = match answer {
                Ok((200, body)) => std::str::from_utf8(&body)
                    .ok()
                    .and_then(|text| Hash256::from_display_hex(text.trim()))
                    .map_or(Vote::Failed, Vote::Hash),
                Ok((404, _)) => Vote::Behind,
                _ => Vote::Failed,
            };
            if let Some((_, v)) = self.votes.iter_mut().find(|(e, v)| *e == explorer && *v == Vote::Asked) {
                *v = vote;
            }
            return None;
        }
        if explorer != self.explorer {
            return None;
        }
        let (status, body) = match answer {
            Ok(answer) => answer,
            Err(error) => return Some(Outcome::ExplorerFailed(error)),
        };
        match (fetch, status) {
            (Fetch::Hex, 404) => Some(Outcome::Answer(TxAnswer::NotFound)),
            (Fetch::Hex, 200) => {
                let Ok(raw) = decode_hex_body(&body) else {
                    return Some(Outcome::ExplorerFailed(ExplorerError::Malformed("transaction hex".to_string())));
                };
                match parse_tx(&raw) {
                    Err(e) => return Some(Outcome::ProofInvalid(format!("raw transaction: {e}"))),
                    Ok(tx) if tx.txid != self.txid => {
                        return Some(Outcome::ProofInvalid(format!(
                            "raw transaction hashes to {}, not the asked txid",
                            tx.txid
                        )))
                    }
                    Ok(_) => {}
                }
                self.raw = Some(raw);
                None
            }
            (Fetch::Proof, 404) => {
                self.proof = Some(None);
                None
            }
            (Fetch::Proof, 200) => match MerkleProof::from_json(&body) {
                Ok(proof) => {
                    self.proof = Some(Some(proof));
                    None
                }
                Err(e) => Some(Outcome::ProofInvalid(format!("merkle proof: {e}"))),
            },
            (Fetch::Blocks(Some(_)), 404) => {
                // No block that high on this explorer: take its newest page instead.
                self.page_pending = true;
                self.send(self.explorer, Fetch::Blocks(None));
                None
            }
            (Fetch::Blocks(start), 200) => {
                self.page_pending = false;
                match parse_blocks_json(&body) {
                    Ok(page) => self.absorb_page(start, page, env),
                    Err(BlocksError::Json(e)) => Some(Outcome::ExplorerFailed(ExplorerError::Malformed(e))),
                    Err(e) => Some(Outcome::ProofInvalid(format!("blocks: {e}"))),
                }
            }
            (_, status) => Some(Outcome::ExplorerFailed(ExplorerError::Status(status))),
        }
    }

    /// What to do with what has arrived so far.
    fn progress(&mut self, env: &mut Env<'_>) -> Option<Outcome> {
        let (Some(raw), Some(proof)) = (&self.raw, &self.proof) else { return None };
        let Some(proof) = proof.clone() else {
            // No block: a mempool transaction, read from bytes that hash to the txid.
            return Some(match outputs_of(raw) {
                Ok(outputs) => Outcome::Answer(TxAnswer::Proven { block: None, outputs }),
                Err(why) => Outcome::ProofInvalid(why),
            });
        };
        let Some(top) = self.top else {
            if let Err(e) = proof.root_for(&self.txid) {
                return Some(Outcome::ProofInvalid(format!("merkle proof: {e}")));
            }
            let Some(top) = proof.block_height.checked_add(self.depth.saturating_sub(1)) else {
                return Some(Outcome::ProofInvalid("block height overflows".to_string()));
            };
            if let Some(outcome) = self.aim(top, &proof, env) {
                return Some(outcome);
            }
            // The headers may already be here (the cache, or pages that came before the proof)
            // and the quorum may need no vote: then no answer is coming, so go on now.
            return self.progress(env);
        };
        if self.verified.is_none() {
            let Some(segment) = &self.segment else { return None };
            let evidence = Evidence {
                txid: &self.txid,
                raw_tx: raw,
                merkle: &proof,
                headers: segment,
                pay_to: &[],
                floor: env.floor,
                min_depth: 1,
            };
            match verify(&evidence) {
                Ok(v) => self.verified = Some(v),
                Err(e) => return Some(Outcome::ProofInvalid(e.to_string())),
            }
        }
        let verified = self.verified?;
        for (explorer, vote) in &self.votes {
            if let Vote::Hash(theirs) = vote {
                if *theirs != verified.top_hash {
                    let (explorer, ours, theirs) = (*explorer, verified.top_hash, *theirs);
                    return Some(Outcome::Disagreement { explorer, height: top, ours, theirs });
                }
            }
        }
        let agreeing = self.votes.iter().filter(|(_, v)| matches!(v, Vote::Hash(_))).count();
        if agreeing.saturating_add(1) >= env.quorum {
            self.remember_headers(env);
            let outputs = match outputs_of(raw) {
                Ok(outputs) => outputs,
                Err(why) => return Some(Outcome::ProofInvalid(why)),
            };
            let place = BlockPlace { height: u64::from(verified.block_height), time: u64::from(verified.block_time) };
            let block = Some(ProvenBlock { place, depth: verified.depth });
            return Some(Outcome::Answer(TxAnswer::Proven { block, outputs }));
        }
        if let Some((explorer, _)) = self.votes.iter().find(|(_, v)| *v == Vote::Behind) {
            return Some(Outcome::QuorumBehind { explorer: *explorer, height: top });
        }
        self.ask_votes(top, env)
    }

    /// Wants headers up to `top` and the quorum's hashes there.
    fn aim(&mut self, top: u32, proof: &MerkleProof, env: &mut Env<'_>) -> Option<Outcome> {
        self.top = Some(top);
        self.votes.clear();
        self.segment = None;
        self.verified = None;
        let height = proof.block_height;
        let len = top.saturating_sub(height).saturating_add(1);
        if let Some(segment) = proof.root_for(&self.txid).ok().and_then(|root| env.headers.segment(height, &root, len))
        {
            self.segment = Some(segment);
            self.headers_cached = true;
        } else if let Some(segment) = headers_at(&self.pages, height, len) {
            self.segment = Some(segment);
        } else if !self.page_pending {
            if let Some(outcome) = self.ask_page(top) {
                return Some(outcome);
            }
        }
        self.ask_votes(top, env)
    }

    fn ask_page(&mut self, start: u32) -> Option<Outcome> {
        if self.pages_asked >= MAX_PAGES {
            return Some(Outcome::ProofInvalid("blocks pages do not cover the headers needed".to_string()));
        }
        self.pages_asked = self.pages_asked.saturating_add(1);
        self.page_pending = true;
        self.send(self.explorer, Fetch::Blocks(Some(start)));
        None
    }

    /// Asks more quorum explorers until enough are asked; `QuorumUnavailable` when none is left
    /// and none is still answering.
    fn ask_votes(&mut self, top: u32, env: &Env<'_>) -> Option<Outcome> {
        let needed = env.quorum.saturating_sub(1);
        let mut live = self.votes.iter().filter(|(_, v)| *v != Vote::Failed).count();
        while live < needed {
            let Some(next) = env.others.iter().copied().find(|e| !self.votes.iter().any(|(v, _)| v == e)) else {
                break;
            };
            self.votes.push((next, Vote::Asked));
            self.send(next, Fetch::BlockHeight(top));
            live = live.saturating_add(1);
        }
        let pending = self.votes.iter().any(|(_, v)| *v == Vote::Asked);
        (live < needed && !pending).then_some(Outcome::QuorumUnavailable)
    }

    fn absorb_page(&mut self, start: Option<u32>, page: Vec<(u32, Header)>, env: &mut Env<'_>) -> Option<Outcome> {
        let Some(Some(proof)) = self.proof.clone() else {
            self.pages.extend(page);
            return None;
        };
        let height = proof.block_height;
        if start.is_none() {
            // The explorer's newest page: its chain ends at the highest height in it.
            let Some(highest) = page.iter().map(|(h, _)| *h).max() else {
                return Some(Outcome::ExplorerFailed(ExplorerError::Malformed("empty blocks page".to_string())));
            };
            if highest < height {
                return Some(Outcome::ProofInvalid(format!(
                    "merkle proof names block {height} but the explorer's newest block is {highest}"
                )));
            }
            self.pages.extend(page);
            if self.top.is_some_and(|top| highest < top) {
                return self.aim(highest, &proof, env);
            }
        } else {
            self.pages.extend(page);
        }
        let top = self.top?;
        let len = top.saturating_sub(height).saturating_add(1);
        if let Some(segment) = headers_at(&self.pages, height, len) {
            self.segment = Some(segment);
            return None;
        }
        match (height..=top).rev().find(|h| !self.pages.iter().any(|(p, _)| p == h)) {
            Some(missing) => self.ask_page(missing),
            None => Some(Outcome::ProofInvalid("blocks pages disagree about a header".to_string())),
        }
    }

    /// Keeps the verified headers, and the page's headers below them when they chain to them.
    fn remember_headers(&self, env: &mut Env<'_>) {
        let (Some(Some(proof)), Some(top), Some(segment)) = (&self.proof, self.top, &self.segment) else { return };
        let lowest = self.pages.iter().map(|(h, _)| *h).filter(|h| *h <= proof.block_height).min();
        if let Some(lowest) = lowest {
            let len = top.saturating_sub(lowest).saturating_add(1);
            if let Some(run) = headers_at(&self.pages, lowest, len) {
                if run.last() == segment.last() && check_chain(&run, env.floor).is_ok() {
                    for (offset, header) in (0u32..).zip(&run) {
                        env.headers.insert(lowest.saturating_add(offset), *header);
                    }
                    return;
                }
            }
        }
        for (offset, header) in (0u32..).zip(segment) {
            env.headers.insert(proof.block_height.saturating_add(offset), *header);
        }
    }
}

/// Every output of a raw transaction by scriptPubKey (the total checked against overflow).
fn outputs_of(raw: &[u8]) -> Result<Vec<(Vec<u8>, u64)>, String> {
    let tx = parse_tx(raw).map_err(|e| format!("raw transaction: {e}"))?;
    tx.outputs
        .iter()
        .try_fold(0u64, |sum, out| sum.checked_add(out.value))
        .ok_or_else(|| "raw transaction's outputs overflow".to_string())?;
    Ok(tx.outputs.iter().map(|out| (out.script_pubkey.to_vec(), out.value)).collect())
}

/// Headers this worker verified (linked, with work at or above the floor, agreed by the quorum
/// at the top), by height. A hash commits to its header, so an entry never becomes false; only
/// the best chain may move on, which the quorum question of every verification checks again.
#[derive(Debug)]
pub struct HeaderCache {
    entries: VecDeque<(u32, Header)>,
    capacity: usize,
}

impl HeaderCache {
    pub fn new(capacity: usize) -> HeaderCache {
        HeaderCache { entries: VecDeque::new(), capacity: capacity.max(1) }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn insert(&mut self, height: u32, header: Header) {
        if self.entries.iter().any(|(_, h)| h.hash == header.hash) {
            return;
        }
        if self.entries.len() >= self.capacity {
            self.entries.pop_front();
        }
        self.entries.push_back((height, header));
    }

    /// `len` linked headers from the one at `height` whose merkle root is `root`, lowest first.
    pub fn segment(&self, height: u32, root: &Hash256, len: u32) -> Option<Vec<Header>> {
        let first = self.entries.iter().find(|(h, header)| *h == height && header.merkle_root == *root)?.1;
        let mut out = vec![first];
        for offset in 1..len {
            let below = out.last()?.hash;
            let at = height.checked_add(offset)?;
            let next = self.entries.iter().find(|(h, header)| *h == at && header.prev == below)?.1;
            out.push(next);
        }
        Some(out)
    }
}

impl Default for HeaderCache {
    fn default() -> Self {
        HeaderCache::new(1024)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spv::vectors::mine;
    use crate::spv::vectors::{B170_TX1, B170_TX1_TXID};
    use crate::spv::{default_floor, dsha256};
    use serde_json::json;

    const H: u32 = 100;

    /// Blocks H-2 ..= H+2 at regtest bits; block H holds only B170's tx 1 (root = txid).
    fn chain(bits: u32) -> Vec<(u32, Header)> {
        chain_on(Hash256([7; 32]), bits)
    }

    fn chain_on(below: Hash256, bits: u32) -> Vec<(u32, Header)> {
        chain_to(below, bits, H + 2)
    }

    /// Blocks H-2 ..= `top`, as `chain_on`.
    fn chain_to(below: Hash256, bits: u32, top: u32) -> Vec<(u32, Header)> {
        let txid = Hash256::from_display_hex(B170_TX1_TXID).unwrap();
        let mut prev = below;
        let mut out = Vec::new();
        for height in H - 2..=top {
            let root = if height == H { txid } else { dsha256(&height.to_le_bytes()) };
            let header = mine(prev, root, 1_700_000_000 + height, bits);
            prev = header.hash;
            out.push((height, header));
        }
        out
    }

    /// `/blocks/{start}` as electrs renders it, from `chain` (descending, up to 10).
    fn page(chain: &[(u32, Header)], start: u32) -> Vec<u8> {
        let blocks: Vec<_> = chain
            .iter()
            .rev()
            .filter(|(h, _)| *h <= start)
            .take(10)
            .map(|(h, b)| {
                json!({"id": b.hash.to_display_hex(), "height": h, "version": b.version, "timestamp": b.time,
                       "merkle_root": b.merkle_root.to_display_hex(), "previousblockhash": b.prev.to_display_hex(),
                       "nonce": b.nonce, "bits": b.bits, "difficulty": 1, "tx_count": 1})
            })
            .collect();
        serde_json::to_vec(&blocks).unwrap()
    }

    fn hash_at(chain: &[(u32, Header)], height: u32) -> Vec<u8> {
        chain.iter().find(|(h, _)| *h == height).unwrap().1.hash.to_display_hex().into_bytes()
    }

    fn ok(body: impl Into<Vec<u8>>) -> Result<(u16, Vec<u8>), ExplorerError> {
        Ok((200, body.into()))
    }

    fn proof() -> Vec<u8> {
        json!({"block_height": H, "merkle": [], "pos": 0}).to_string().into_bytes()
    }

    struct World {
        floor: Target,
        headers: HeaderCache,
        others: Vec<usize>,
        quorum: usize,
    }

    impl World {
        fn new() -> World {
            World {
                floor: default_floor(crate::address::Network::Regtest).unwrap(),
                headers: HeaderCache::default(),
                others: vec![1],
                quorum: 2,
            }
        }

        fn answer(
            &mut self,
            l: &mut SpvLookup,
            explorer: usize,
            fetch: Fetch,
            a: Result<(u16, Vec<u8>), ExplorerError>,
        ) -> Next {
            let mut env =
                Env { floor: &self.floor, quorum: self.quorum, others: &self.others, headers: &mut self.headers };
            l.on_answer(explorer, fetch, a, &mut env)
        }
    }

    fn req(explorer: usize, fetch: Fetch) -> Request {
        Request { explorer, fetch }
    }

    /// Round 1 answered honestly; returns what round 2 asks.
    fn round_one(w: &mut World, l: &mut SpvLookup) -> Next {
        assert_eq!(l.start(), Next::Dispatch(vec![req(0, Fetch::Hex), req(0, Fetch::Proof)]));
        assert_eq!(w.answer(l, 0, Fetch::Hex, ok(B170_TX1)), Next::Wait);
        w.answer(l, 0, Fetch::Proof, ok(proof()))
    }

    fn proven(outcome: Next) -> ProvenBlock {
        match outcome {
            Next::Done(Outcome::Answer(TxAnswer::Proven { block: Some(block), outputs })) => {
                assert_eq!(outputs.iter().map(|(_, v)| v).sum::<u64>(), 5_000_000_000);
                block
            }
            other => panic!("not proven: {other:?}"),
        }
    }

    #[test]
    fn honest_payment_takes_four_calls_then_three_with_cached_headers() {
        let c = chain(0x207f_ffff);
        let mut w = World::new();
        let mut l = SpvLookup::new(B170_TX1_TXID, 0, 2).unwrap();
        let top = H + 1;
        assert_eq!(
            round_one(&mut w, &mut l),
            Next::Dispatch(vec![req(0, Fetch::Blocks(Some(top))), req(1, Fetch::BlockHeight(top))])
        );
        assert_eq!(w.answer(&mut l, 1, Fetch::BlockHeight(top), ok(hash_at(&c, top))), Next::Wait);
        let block = proven(w.answer(&mut l, 0, Fetch::Blocks(Some(top)), ok(page(&c, top))));
        assert_eq!((block.place.height, block.depth, block.place.time), (100, 2, 1_700_000_100));
        assert_eq!((l.calls, l.headers_cached), (4, false));
        assert_eq!(w.headers.len(), 4, "the page's linked headers up to the top are kept");
        // Again (another worker request, same block): the headers come from the cache.
        let mut again = SpvLookup::new(B170_TX1_TXID, 0, 2).unwrap();
        assert_eq!(round_one(&mut w, &mut again), Next::Dispatch(vec![req(1, Fetch::BlockHeight(top))]));
        proven(w.answer(&mut again, 1, Fetch::BlockHeight(top), ok(hash_at(&c, top))));
        assert_eq!((again.calls, again.headers_cached), (3, true));
    }

    #[test]
    fn quorum_one_needs_no_second_explorer() {
        let c = chain(0x207f_ffff);
        let mut w = World { quorum: 1, others: vec![], ..World::new() };
        let mut l = SpvLookup::new(B170_TX1_TXID, 0, 1).unwrap();
        assert_eq!(round_one(&mut w, &mut l), Next::Dispatch(vec![req(0, Fetch::Blocks(Some(H)))]));
        assert_eq!(proven(w.answer(&mut l, 0, Fetch::Blocks(Some(H)), ok(page(&c, H)))).depth, 1);
    }

    #[test]
    fn an_explorer_behind_the_depth_wanted_gives_its_newest_page() {
        // Two confirmations wanted, the explorer's chain ends at H: /blocks/{H+1} is 404.
        let c: Vec<_> = chain(0x207f_ffff).into_iter().filter(|(h, _)| *h <= H).collect();
        let mut w = World::new();
        let mut l = SpvLookup::new(B170_TX1_TXID, 0, 2).unwrap();
        round_one(&mut w, &mut l);
        assert_eq!(
            w.answer(&mut l, 0, Fetch::Blocks(Some(H + 1)), Ok((404, vec![]))),
            Next::Dispatch(vec![req(0, Fetch::Blocks(None))])
        );
        // The vote asked at H+1 comes back 404 meanwhile: ignored once the top moves to H.
        assert_eq!(
            w.answer(&mut l, 0, Fetch::Blocks(None), ok(page(&c, H))),
            Next::Dispatch(vec![req(1, Fetch::BlockHeight(H))])
        );
        assert_eq!(w.answer(&mut l, 1, Fetch::BlockHeight(H + 1), Ok((404, vec![]))), Next::Wait);
        assert_eq!(proven(w.answer(&mut l, 1, Fetch::BlockHeight(H), ok(hash_at(&c, H)))).depth, 1);
    }

    #[test]
    fn lies_are_refused() {
        let c = chain(0x207f_ffff);
        let invalid = |n: Next| matches!(n, Next::Done(Outcome::ProofInvalid(_)));
        // Raw bytes that do not hash to the txid.
        let mut w = World::new();
        let mut l = SpvLookup::new(B170_TX1_TXID, 0, 1).unwrap();
        l.start();
        let mut raw = hex::decode(B170_TX1).unwrap();
        raw[60] ^= 1;
        assert!(invalid(w.answer(&mut l, 0, Fetch::Hex, ok(hex::encode(raw)))));
        // A branch that misses the root.
        let mut l = SpvLookup::new(B170_TX1_TXID, 0, 1).unwrap();
        l.start();
        w.answer(&mut l, 0, Fetch::Hex, ok(B170_TX1));
        let bad = json!({"block_height": H, "merkle": ["00".repeat(32)], "pos": 0}).to_string();
        w.answer(&mut l, 0, Fetch::Proof, ok(bad));
        w.answer(&mut l, 1, Fetch::BlockHeight(H), ok(hash_at(&c, H)));
        assert!(invalid(w.answer(&mut l, 0, Fetch::Blocks(Some(H)), ok(page(&c, H)))));
        // Headers below a floor above regtest's limit.
        let mut w = World { floor: Target::from_compact(0x2000_ffff).unwrap(), ..World::new() };
        let mut l = SpvLookup::new(B170_TX1_TXID, 0, 1).unwrap();
        round_one(&mut w, &mut l);
        w.answer(&mut l, 1, Fetch::BlockHeight(H), ok(hash_at(&c, H)));
        assert!(invalid(w.answer(&mut l, 0, Fetch::Blocks(Some(H)), ok(page(&c, H)))));
        // A page whose fields do not hash to its ids.
        let mut w = World::new();
        let mut l = SpvLookup::new(B170_TX1_TXID, 0, 1).unwrap();
        round_one(&mut w, &mut l);
        let forged = String::from_utf8(page(&c, H)).unwrap().replacen("\"nonce\":", "\"nonce\":1", 1);
        assert!(invalid(w.answer(&mut l, 0, Fetch::Blocks(Some(H)), ok(forged))));
    }

    #[test]
    fn the_quorum_decides_between_explorers() {
        let c = chain(0x207f_ffff);
        let other = chain_on(Hash256([8; 32]), 0x207f_ffff); // other hashes at every height
        let mut w = World::new();
        let mut l = SpvLookup::new(B170_TX1_TXID, 0, 1).unwrap();
        round_one(&mut w, &mut l);
        w.answer(&mut l, 1, Fetch::BlockHeight(H), ok(hash_at(&other, H)));
        let done = w.answer(&mut l, 0, Fetch::Blocks(Some(H)), ok(page(&c, H)));
        assert!(matches!(done, Next::Done(Outcome::Disagreement { explorer: 1, height: H, .. })), "{done:?}");
        assert!(w.headers.is_empty(), "nothing kept without agreement");
        // Behind: 404 at the top height.
        let mut l = SpvLookup::new(B170_TX1_TXID, 0, 1).unwrap();
        round_one(&mut w, &mut l);
        w.answer(&mut l, 1, Fetch::BlockHeight(H), Ok((404, vec![])));
        let done = w.answer(&mut l, 0, Fetch::Blocks(Some(H)), ok(page(&c, H)));
        assert_eq!(done, Next::Done(Outcome::QuorumBehind { explorer: 1, height: H }));
        // A voter that fails is replaced by the next one; none left: unavailable.
        let mut w = World { others: vec![1, 2], ..World::new() };
        let mut l = SpvLookup::new(B170_TX1_TXID, 0, 1).unwrap();
        round_one(&mut w, &mut l);
        assert_eq!(w.answer(&mut l, 1, Fetch::BlockHeight(H), Err(ExplorerError::NoResponse)), Next::Wait);
        let next = w.answer(&mut l, 0, Fetch::Blocks(Some(H)), ok(page(&c, H)));
        assert_eq!(next, Next::Dispatch(vec![req(2, Fetch::BlockHeight(H))]));
        assert_eq!(
            w.answer(&mut l, 2, Fetch::BlockHeight(H), Ok((503, vec![]))),
            Next::Done(Outcome::QuorumUnavailable)
        );
    }

    #[test]
    fn only_page_headers_that_link_to_the_proven_ones_are_kept() {
        let c = chain(0x207f_ffff);
        let fork = chain_on(Hash256([8; 32]), 0x207f_ffff);
        let mut mixed = c.clone();
        mixed[1] = fork[1]; // H-1 from another chain: H does not link to it
        let mut w = World::new();
        let mut l = SpvLookup::new(B170_TX1_TXID, 0, 2).unwrap();
        round_one(&mut w, &mut l);
        w.answer(&mut l, 1, Fetch::BlockHeight(H + 1), ok(hash_at(&c, H + 1)));
        proven(w.answer(&mut l, 0, Fetch::Blocks(Some(H + 1)), ok(page(&mixed, H + 1))));
        assert_eq!(w.headers.len(), 2, "the two proven headers, not the page's unlinked ones below");
    }

    #[test]
    fn votes_count_for_the_explorer_that_gave_them() {
        let c = chain(0x207f_ffff);
        let mut w = World { quorum: 3, others: vec![1, 2], ..World::new() };
        let mut l = SpvLookup::new(B170_TX1_TXID, 0, 1).unwrap();
        assert_eq!(
            round_one(&mut w, &mut l),
            Next::Dispatch(vec![
                req(0, Fetch::Blocks(Some(H))),
                req(1, Fetch::BlockHeight(H)),
                req(2, Fetch::BlockHeight(H))
            ])
        );
        // Explorer 2 answers first, then 1: each answer is its own explorer's vote.
        assert_eq!(w.answer(&mut l, 2, Fetch::BlockHeight(H), Ok((404, vec![]))), Next::Wait);
        assert_eq!(w.answer(&mut l, 1, Fetch::BlockHeight(H), ok(hash_at(&c, H))), Next::Wait);
        let done = w.answer(&mut l, 0, Fetch::Blocks(Some(H)), ok(page(&c, H)));
        assert_eq!(done, Next::Done(Outcome::QuorumBehind { explorer: 2, height: H }));
    }

    #[test]
    fn an_explorer_whose_chain_ends_below_the_proofs_block_is_refused() {
        let c: Vec<_> = chain(0x207f_ffff).into_iter().filter(|(h, _)| *h < H).collect();
        let mut w = World::new();
        let mut l = SpvLookup::new(B170_TX1_TXID, 0, 2).unwrap();
        round_one(&mut w, &mut l);
        w.answer(&mut l, 0, Fetch::Blocks(Some(H + 1)), Ok((404, vec![])));
        match w.answer(&mut l, 0, Fetch::Blocks(None), ok(page(&c, H - 1))) {
            Next::Done(Outcome::ProofInvalid(why)) => {
                assert_eq!(why, format!("merkle proof names block {H} but the explorer's newest block is {}", H - 1))
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_block_found_meanwhile_costs_no_extra_call() {
        // /blocks/{H+1} was 404, but by the time the newest page is read, H+1 is there.
        let c = chain(0x207f_ffff);
        let mut w = World::new();
        let mut l = SpvLookup::new(B170_TX1_TXID, 0, 2).unwrap();
        round_one(&mut w, &mut l);
        w.answer(&mut l, 0, Fetch::Blocks(Some(H + 1)), Ok((404, vec![])));
        assert_eq!(w.answer(&mut l, 0, Fetch::Blocks(None), ok(page(&c, H + 1))), Next::Wait, "the vote at H+1 stands");
        assert_eq!(proven(w.answer(&mut l, 1, Fetch::BlockHeight(H + 1), ok(hash_at(&c, H + 1)))).depth, 2);
        assert_eq!(l.calls, 5);
    }

    #[test]
    fn a_depth_beyond_one_page_asks_the_page_below() {
        let top = H + 11;
        let c = chain_to(Hash256([7; 32]), 0x207f_ffff, top);
        let mut w = World::new();
        let mut l = SpvLookup::new(B170_TX1_TXID, 0, 12).unwrap();
        round_one(&mut w, &mut l);
        w.answer(&mut l, 1, Fetch::BlockHeight(top), ok(hash_at(&c, top)));
        // Ten headers, H+2 ..= H+11: H+1 and H are missing.
        assert_eq!(
            w.answer(&mut l, 0, Fetch::Blocks(Some(top)), ok(page(&c, top))),
            Next::Dispatch(vec![req(0, Fetch::Blocks(Some(H + 1)))])
        );
        let block = proven(w.answer(&mut l, 0, Fetch::Blocks(Some(H + 1)), ok(page(&c, H + 1))));
        assert_eq!((block.depth, l.calls), (12, 5));
    }

    #[test]
    fn calls_use_esploras_paths() {
        let txid = B170_TX1_TXID;
        assert_eq!(Fetch::Hex.path(txid), format!("/tx/{txid}/hex"));
        assert_eq!(Fetch::Proof.path(txid), format!("/tx/{txid}/merkle-proof"));
        assert_eq!(Fetch::Blocks(Some(812_345)).path(txid), "/blocks/812345");
        assert_eq!(Fetch::Blocks(None).path(txid), "/blocks");
        assert_eq!(Fetch::BlockHeight(7).path(txid), "/block-height/7");
    }

    #[test]
    fn the_header_cache_keeps_each_header_once_and_the_newest_up_to_its_capacity() {
        let c = chain(0x207f_ffff);
        let mut cache = HeaderCache::new(3);
        assert!(cache.is_empty());
        for (height, header) in &c {
            cache.insert(*height, *header);
            cache.insert(*height, *header);
        }
        assert_eq!((cache.len(), cache.is_empty()), (3, false), "each header once, three at most");
        let root_at = |h: u32| c.iter().find(|(height, _)| *height == h).unwrap().1.merkle_root;
        let from = |h: u32, len: u32| cache.segment(h, &root_at(h), len);
        assert_eq!(from(H, 3).unwrap(), c[2..].iter().map(|(_, h)| *h).collect::<Vec<_>>(), "the newest kept");
        assert_eq!(from(H - 1, 1), None, "the oldest gave way");
        assert_eq!(from(H + 1, 3), None, "nothing above the newest");
        assert_eq!(cache.segment(H, &root_at(H + 1), 1), None, "the merkle root must match");
        // A fork's header at the same height, seen first, is not part of the segment.
        let fork = chain_on(Hash256([8; 32]), 0x207f_ffff);
        let mut cache = HeaderCache::default();
        cache.insert(H + 1, fork[3].1);
        for (height, header) in &c {
            cache.insert(*height, *header);
        }
        let linked: Vec<Header> = c[2..].iter().map(|(_, h)| *h).collect();
        assert_eq!(cache.segment(H, &root_at(H), 3), Some(linked), "the segment follows the links");
    }

    #[test]
    fn mempool_and_unknown_transactions() {
        let mut w = World::new();
        let mut l = SpvLookup::new(B170_TX1_TXID, 0, 1).unwrap();
        l.start();
        assert_eq!(w.answer(&mut l, 0, Fetch::Proof, Ok((404, vec![]))), Next::Wait);
        match w.answer(&mut l, 0, Fetch::Hex, ok(B170_TX1)) {
            Next::Done(Outcome::Answer(TxAnswer::Proven { block: None, outputs })) => assert_eq!(outputs.len(), 2),
            other => panic!("{other:?}"),
        }
        let mut l = SpvLookup::new(B170_TX1_TXID, 0, 1).unwrap();
        l.start();
        assert_eq!(w.answer(&mut l, 0, Fetch::Hex, Ok((404, vec![]))), Next::Done(Outcome::Answer(TxAnswer::NotFound)));
        let mut l = SpvLookup::new(B170_TX1_TXID, 0, 1).unwrap();
        l.start();
        assert_eq!(
            w.answer(&mut l, 0, Fetch::Hex, Ok((500, vec![]))),
            Next::Done(Outcome::ExplorerFailed(ExplorerError::Status(500)))
        );
        // Answers from another explorer than the answering one are not its answers.
        let mut l = SpvLookup::new(B170_TX1_TXID, 1, 1).unwrap();
        l.start();
        assert_eq!(w.answer(&mut l, 0, Fetch::Hex, Ok((404, vec![]))), Next::Wait);
    }
}
