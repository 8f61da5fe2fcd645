//! An in-memory etcd that executes the gateway JSON the filter sends (compare CREATE/MOD, put,
//! range) and answers as etcd 3.4 does (defaults left out), and a property test: R simulated
//! replicas, each with its held state, reserve against it with random interleavings, lost
//! replies and late commits, and never grant more than the limit.

use std::collections::HashMap;

use proptest::prelude::*;
use serde_json::{json, Value};

use super::b64;
use super::etcd::{parse_txn, parse_used, Attempt, Keys, Pay};
use super::held::{absorb, attempt_for, take, Absorbed, Held, Take, Want};

#[derive(Default)]
pub(crate) struct Etcd {
    kv: HashMap<Vec<u8>, (Vec<u8>, u64, u64)>,
    revision: u64,
    seq: u64,
}

impl Etcd {
    /// A fresh attempt number for tests that play several replicas (unique across all of them).
    pub(crate) fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    fn key(v: &Value) -> Vec<u8> {
        b64::decode(v["key"].as_str().unwrap()).unwrap()
    }

    /// Runs one `/v3/kv/txn` body; returns the reply body as etcd writes it.
    pub(crate) fn txn(&mut self, body: &str) -> Vec<u8> {
        let body: Value = serde_json::from_str(body).unwrap();
        let holds = body["compare"].as_array().unwrap().iter().all(|c| {
            let found = self.kv.get(&Self::key(c));
            match c["target"].as_str().unwrap() {
                "CREATE" => found.map_or(0, |e| e.1) == c["create_revision"].as_str().unwrap().parse::<u64>().unwrap(),
                "MOD" => found.map_or(0, |e| e.2) == c["mod_revision"].as_str().unwrap().parse::<u64>().unwrap(),
                other => panic!("compare {other} not modelled"),
            }
        });
        let ops = if holds { &body["success"] } else { &body["failure"] };
        let writes = ops.as_array().unwrap().iter().any(|op| op.get("request_put").is_some());
        if writes {
            self.revision += 1;
        }
        let header = json!({"revision": self.revision.to_string()});
        let mut responses = Vec::new();
        for op in ops.as_array().unwrap() {
            if let Some(put) = op.get("request_put") {
                let key = Self::key(put);
                let value = b64::decode(put["value"].as_str().unwrap()).unwrap();
                let create = self.kv.get(&key).map_or(self.revision, |e| e.1);
                self.kv.insert(key, (value, create, self.revision));
                responses.push(json!({"response_put": {"header": header}}));
            } else {
                let range = &op["request_range"];
                let mut r = json!({"header": header});
                if let Some((value, create, modr)) = self.kv.get(&Self::key(range)) {
                    r["kvs"] = json!([{"key": range["key"], "create_revision": create.to_string(),
                        "mod_revision": modr.to_string(), "version": "1", "value": b64::encode(value)}]);
                    r["count"] = json!("1");
                }
                responses.push(json!({"response_range": r}));
            }
        }
        let mut reply = json!({"header": header, "responses": responses});
        if holds {
            reply["succeeded"] = json!(true);
        }
        reply.to_string().into_bytes()
    }

    fn get(&self, key: &str) -> Option<&Vec<u8>> {
        self.kv.get(key.as_bytes()).map(|e| &e.0)
    }
}

const RECORD: [u8; 32] = [0xaa; 32];
const PREFIX: &str = "t/v1/regtest/";

struct Replica {
    id: String,
    held: Held,
    in_flight: Option<Attempt>,
    uncertain: Option<Attempt>,
    seq: u64,
    granted: u64,
    /// Owners of the requests this replica granted.
    served: Vec<[u8; 16]>,
}

impl Replica {
    fn keys(&self) -> Keys {
        Keys::new(PREFIX, &RECORD, &self.id)
    }
}

#[derive(Debug, Clone)]
enum Step {
    /// A request on replica r from owner o.
    Request(usize, usize),
    /// etcd runs the message at this index of the network pool; the reply is lost if `lost`.
    Deliver(usize, bool),
    /// Replica r gives up waiting: its in-flight attempt becomes uncertain (it may still commit).
    Timeout(usize),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => (0..3usize, 0..2usize).prop_map(|(r, o)| Step::Request(r, o)),
        3 => (0..8usize, proptest::bool::weighted(0.3)).prop_map(|(i, lost)| Step::Deliver(i, lost)),
        1 => (0..3usize).prop_map(Step::Timeout),
    ]
}

struct World {
    etcd: Etcd,
    replicas: Vec<Replica>,
    /// Messages sent and not yet run: (replica, attempt).
    pool: Vec<(usize, Attempt)>,
    limit: u64,
    block: u64,
    bind: bool,
}

const OWNERS: [[u8; 16]; 2] = [[1; 16], [2; 16]];

impl World {
    fn new(replicas: usize, limit: u64, block: u64, bind: bool) -> World {
        let replicas = (0..replicas)
            .map(|i| Replica {
                id: format!("r{i}"),
                held: Held::for_record(None, &RECORD),
                in_flight: None,
                uncertain: None,
                seq: 100,
                granted: 0,
                served: Vec::new(),
            })
            .collect();
        World { etcd: Etcd::default(), replicas, pool: Vec::new(), limit, block, bind }
    }

    fn request(&mut self, r: usize, o: usize) {
        let owner = self.bind.then_some(OWNERS[o]);
        let rep = &mut self.replicas[r];
        let want = Want { owner, window_secs: None, now_ms: 1_000, refill_for_ms: 0 };
        let (next, answer) = take(&rep.held, &want);
        if let Some(next) = next {
            rep.held = next;
        }
        match answer {
            Take::Granted { .. } => {
                rep.granted += 1;
                rep.served.push(owner.unwrap_or_default());
            }
            Take::Exhausted | Take::BoundToOther => {}
            Take::Contact | Take::Reserve if rep.in_flight.is_none() => {
                // A replica resends its uncertain attempt before anything new.
                let attempt = rep.uncertain.clone().unwrap_or_else(|| {
                    rep.seq += 1;
                    let first = Pay {
                        owner: owner.unwrap_or_default(),
                        first_used: 1,
                        block: self.block,
                        limit: self.limit,
                        lease: 1,
                    };
                    attempt_for(&rep.held, first, rep.seq)
                });
                rep.in_flight = Some(attempt.clone());
                self.pool.push((r, attempt));
            }
            Take::Contact | Take::Reserve => {}
        }
    }

    fn deliver(&mut self, i: usize, lost: bool) {
        if self.pool.is_empty() {
            return;
        }
        let (r, attempt) = self.pool.remove(i % self.pool.len());
        let rep = &mut self.replicas[r];
        let body = attempt.body(&rep.keys(), &rep.id);
        let reply = self.etcd.txn(&body);
        if lost || rep.in_flight.as_ref() != Some(&attempt) {
            // Lost, or the replica stopped waiting for it: it only learns through the claim.
            if rep.in_flight.as_ref() == Some(&attempt) {
                rep.in_flight = None;
                rep.uncertain = Some(attempt);
            }
            return;
        }
        rep.in_flight = None;
        let parsed = parse_txn(200, &reply).unwrap();
        let (next, absorbed) = absorb(&rep.held, &attempt, &parsed).unwrap();
        assert_ne!(absorbed, Absorbed::Gone);
        rep.held = next;
        if rep.uncertain.as_ref() == Some(&attempt) {
            rep.uncertain = None;
        }
    }

    fn timeout(&mut self, r: usize) {
        let rep = &mut self.replicas[r];
        if let Some(attempt) = rep.in_flight.take() {
            rep.uncertain = Some(attempt);
        }
    }

    fn counted(&self) -> u64 {
        self.etcd.get(&format!("{PREFIX}use/{}", hex::encode(RECORD))).and_then(|v| parse_used(v)).unwrap_or(0)
    }

    fn check(&self) {
        let granted: u64 = self.replicas.iter().map(|r| r.granted).sum();
        let held: u64 = self.replicas.iter().map(|r| r.held.left).sum();
        assert!(granted <= self.limit, "granted {granted} > limit {}", self.limit);
        assert!(granted + held <= self.counted(), "granted {granted} + held {held} > counted {}", self.counted());
        assert!(self.counted() <= self.limit, "counted {} > limit", self.counted());
        if self.bind {
            let owner = self.etcd.get(&format!("{PREFIX}pay/{}", hex::encode(RECORD))).and_then(|v| Pay::decode(v));
            for r in &self.replicas {
                for served in &r.served {
                    assert_eq!(Some(*served), owner.map(|p| p.owner), "served a client the payment is not bound to");
                }
            }
        }
    }

    /// Runs every message left, then keeps sending requests from the owner until no replica
    /// can get more: every block is accounted for (claims resolve lost replies exactly once).
    fn drain(&mut self) {
        while !self.pool.is_empty() {
            self.deliver(0, false);
            self.check();
        }
        let owner = self
            .etcd
            .get(&format!("{PREFIX}pay/{}", hex::encode(RECORD)))
            .and_then(|v| Pay::decode(v))
            .map_or(0, |p| OWNERS.iter().position(|o| *o == p.owner).unwrap_or(0));
        for _ in 0..(self.limit * 4 + 50) {
            for r in 0..self.replicas.len() {
                self.request(r, owner);
                while !self.pool.is_empty() {
                    self.deliver(0, false);
                }
                self.check();
            }
        }
        let granted: u64 = self.replicas.iter().map(|r| r.granted).sum();
        assert_eq!(granted, self.limit, "every request paid for was served once traffic continued");
        assert_eq!(self.counted(), self.limit);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn never_more_than_the_limit(
        replicas in 1..4usize,
        limit in 1..40u64,
        block in 1..9u64,
        bind in proptest::bool::ANY,
        steps in proptest::collection::vec(step(), 0..200),
    ) {
        let mut world = World::new(replicas, limit, block.min(limit), bind);
        for s in steps {
            match s {
                Step::Request(r, o) => world.request(r % replicas, o),
                Step::Deliver(i, lost) => world.deliver(i, lost),
                Step::Timeout(r) => world.timeout(r % replicas),
            }
            world.check();
        }
        world.drain();
    }
}

#[test]
fn the_model_answers_like_the_golden_replies() {
    // Same shapes as golden/first_contact_won.json and first_contact_existing.json.
    let mut etcd = Etcd::default();
    let keys = Keys::new(PREFIX, &RECORD, "r1");
    let pay = Pay { owner: [0; 16], first_used: 100, block: 8, limit: 50, lease: 7 };
    let first = Attempt::First { pay, seq: 5, k: 8 };
    let won: Value = serde_json::from_slice(&etcd.txn(&first.body(&keys, "r1"))).unwrap();
    assert_eq!(won["succeeded"], true);
    let again: Value = serde_json::from_slice(&etcd.txn(&first.body(&keys, "r2"))).unwrap();
    assert!(again.get("succeeded").is_none());
    assert!(
        again["responses"][2]["response_range"].get("kvs").is_none()
            || again["responses"][2]["response_range"]["kvs"].is_array()
    );
}
