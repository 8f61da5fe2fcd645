//! txgate-devnet: a regtest chain behind Esplora-compatible explorer instances.
//!
//!   txgate-devnet serve --data-dir DIR --listen ADDR [--listen ADDR ...] [--port-file FILE]
//!   txgate-devnet pay   --url http://HOST:PORT --address ADDR --sats N [--fee N]
//!   txgate-devnet mine  --url http://HOST:PORT [--blocks N] [--time UNIX]
//!   txgate-devnet address --url http://HOST:PORT [--index N]

use devnet::explorer::{Instance, Node};
use devnet::http::{self, announce, spawn_server};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::Arc;

const USAGE: &str = "usage:
  txgate-devnet serve --data-dir DIR --listen ADDR [--listen ADDR ...] [--port-file FILE]
  txgate-devnet pay --url URL --address ADDR --sats N [--fee N]     (prints txid)
  txgate-devnet mine --url URL [--blocks N] [--time UNIX]            (prints block hashes)
  txgate-devnet address --url URL [--index N]                        (prints a merchant address)";

fn main() {
    if let Err(e) = run() {
        eprintln!("txgate-devnet: {e}");
        std::process::exit(2);
    }
}

/// Collects `--flag value` pairs; repeated flags keep every value.
fn parse_flags(args: &[String]) -> Result<HashMap<String, Vec<String>>, String> {
    let mut flags: HashMap<String, Vec<String>> = HashMap::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let name = a.strip_prefix("--").ok_or_else(|| format!("unexpected argument {a:?}\n{USAGE}"))?;
        let value = it.next().ok_or_else(|| format!("--{name} needs a value"))?;
        flags.entry(name.to_string()).or_default().push(value.clone());
    }
    Ok(flags)
}

fn one<'a>(flags: &'a HashMap<String, Vec<String>>, name: &str) -> Option<&'a str> {
    flags.get(name).and_then(|v| v.last()).map(String::as_str)
}

fn required<'a>(flags: &'a HashMap<String, Vec<String>>, name: &str) -> Result<&'a str, String> {
    one(flags, name).ok_or_else(|| format!("--{name} is required\n{USAGE}"))
}

fn number<T: std::str::FromStr>(flags: &HashMap<String, Vec<String>>, name: &str) -> Result<Option<T>, String> {
    one(flags, name).map(|v| v.parse::<T>().map_err(|_| format!("--{name}: not a number: {v}"))).transpose()
}

fn run() -> Result<(), String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((cmd, rest)) = args.split_first() else {
        return Err(USAGE.into());
    };
    if cmd == "-h" || cmd == "--help" {
        println!("{USAGE}");
        return Ok(());
    }
    let flags = parse_flags(rest)?;
    match cmd.as_str() {
        "serve" => serve(&flags),
        "pay" => {
            let body = json!({
                "address": required(&flags, "address")?,
                "sats": number::<u64>(&flags, "sats")?.ok_or("--sats is required")?,
                "fee": number::<u64>(&flags, "fee")?,
            });
            let r = control(&flags, "POST", "/control/pay", Some(body))?;
            println!("{}", r["txid"].as_str().unwrap_or_default());
            Ok(())
        }
        "mine" => {
            let body = json!({
                "blocks": number::<u32>(&flags, "blocks")?.unwrap_or(1),
                "time": number::<u32>(&flags, "time")?,
            });
            let r = control(&flags, "POST", "/control/mine", Some(body))?;
            for h in r["hashes"].as_array().into_iter().flatten() {
                println!("{}", h.as_str().unwrap_or_default());
            }
            Ok(())
        }
        "address" => {
            let path = match number::<u32>(&flags, "index")? {
                Some(i) => format!("/control/address?index={i}"),
                None => "/control/address".into(),
            };
            let r = control(&flags, "GET", &path, None)?;
            println!("{}", r["address"].as_str().unwrap_or_default());
            Ok(())
        }
        other => Err(format!("unknown command {other:?}\n{USAGE}")),
    }
}

fn control(
    flags: &HashMap<String, Vec<String>>,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> Result<Value, String> {
    let url = required(flags, "url")?;
    let body = body.map(|b| b.to_string());
    let (status, resp) = http::call(url, method, path, body.as_deref()).map_err(|e| format!("{url}: {e}"))?;
    let v: Value = serde_json::from_slice(&resp).map_err(|e| format!("bad response ({status}): {e}"))?;
    if status != 200 {
        return Err(format!("{status}: {}", v["error"].as_str().unwrap_or("error")));
    }
    Ok(v)
}

fn serve(flags: &HashMap<String, Vec<String>>) -> Result<(), String> {
    let data_dir = PathBuf::from(required(flags, "data-dir")?);
    let listen =
        flags.get("listen").filter(|l| !l.is_empty()).ok_or_else(|| format!("--listen is required\n{USAGE}"))?;
    let port_file = one(flags, "port-file").map(PathBuf::from);
    for k in flags.keys() {
        if !["data-dir", "listen", "port-file"].contains(&k.as_str()) {
            return Err(format!("unknown flag --{k}\n{USAGE}"));
        }
    }

    let node = Node::open(Some(data_dir))?;
    let mut addrs = Vec::new();
    let mut threads = Vec::new();
    for l in listen {
        let listener = TcpListener::bind(l).map_err(|e| format!("bind {l}: {e}"))?;
        addrs.push(listener.local_addr().map_err(|e| e.to_string())?);
        let instance = Instance::new(node.clone());
        threads.push(spawn_server(listener, Arc::new(move |req| instance.handle(req))));
    }
    announce(&addrs, port_file.as_deref()).map_err(|e| format!("announce: {e}"))?;
    for t in threads {
        let _ = t.join();
    }
    Ok(())
}
