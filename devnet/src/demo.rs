//! The demo API behind the filter: answers everything with what the filter
//! told it (the `x-txgate-*` headers) and records requests for assertions.

use crate::http::{Reply, Request, Response};
use bitcoin::hashes::Hash;
use serde_json::{json, Map, Value};
use std::sync::{Mutex, PoisonError};

#[derive(Default)]
pub struct DemoApi {
    seen: Mutex<Vec<Value>>,
}

/// Numeric headers become JSON numbers so tests can compare directly;
/// anything else stays a string, absent is null.
fn header_value(req: &Request, name: &str) -> Value {
    match req.header(name) {
        None => Value::Null,
        Some(v) => {
            let v = v.trim();
            if let Ok(n) = v.parse::<u64>() {
                json!(n)
            } else if let Ok(f) = v.parse::<f64>() {
                if f.is_finite() {
                    json!(f)
                } else {
                    json!(v)
                }
            } else {
                json!(v)
            }
        }
    }
}

impl DemoApi {
    pub fn handle(&self, req: &Request) -> Reply {
        let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        match (req.method.as_str(), req.path.as_str()) {
            ("GET", "/__seen") => {
                return Response::json(200, &json!({ "count": seen.len(), "requests": *seen })).into()
            }
            ("POST", "/__seen/reset") => {
                seen.clear();
                return Response::json(200, &json!({ "ok": true })).into();
            }
            _ => {}
        }
        // Repeated headers are joined the way HTTP allows (comma-separated).
        let mut headers = Map::new();
        for (k, v) in &req.headers {
            let joined = match headers.get(k).and_then(Value::as_str) {
                Some(prev) => format!("{prev}, {v}"),
                None => v.clone(),
            };
            headers.insert(k.clone(), json!(joined));
        }
        let path = if req.query.is_empty() { req.path.clone() } else { format!("{}?{}", req.path, req.query) };
        // Body size and digest let tests check that a body held back while paused arrives whole.
        let digest = bitcoin::hashes::sha256::Hash::hash(&req.body);
        let trailers: Map<String, Value> = req.trailers.iter().map(|(k, v)| (k.clone(), json!(v))).collect();
        seen.push(json!({
            "method": req.method, "path": path, "headers": headers, "trailers": trailers,
            "body_bytes": req.body.len(), "body_sha256": digest.to_string(),
        }));
        let body = json!({
            "ok": true,
            "method": req.method,
            "path": path,
            "txgate": {
                "txid": req.header("x-txgate-txid"),
                "paid_sats": header_value(req, "x-txgate-paid-sats"),
                "confirmations": header_value(req, "x-txgate-confirmations"),
                "discount": header_value(req, "x-txgate-discount"),
            },
        });
        Response::json(200, &body).into()
    }
}
