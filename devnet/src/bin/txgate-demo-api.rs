//! `txgate-demo-api --listen 127.0.0.1:0 [--listen ...] [--port-file FILE]`

use devnet::demo::DemoApi;
use devnet::http::{announce, spawn_server, Handler};
use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::Arc;

const USAGE: &str = "usage: txgate-demo-api --listen ADDR [--listen ADDR ...] [--port-file FILE]";

fn main() {
    if let Err(e) = run() {
        eprintln!("txgate-demo-api: {e}");
        std::process::exit(2);
    }
}

fn run() -> Result<(), String> {
    let mut listen = Vec::new();
    let mut port_file = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--listen" => listen.push(args.next().ok_or(USAGE)?),
            "--port-file" => port_file = Some(PathBuf::from(args.next().ok_or(USAGE)?)),
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(());
            }
            other => return Err(format!("unknown argument {other:?}\n{USAGE}")),
        }
    }
    if listen.is_empty() {
        return Err(USAGE.into());
    }
    let api = Arc::new(DemoApi::default());
    let handler: Handler = Arc::new(move |req| api.handle(req));
    let mut addrs = Vec::new();
    let mut threads = Vec::new();
    for l in &listen {
        let listener = TcpListener::bind(l).map_err(|e| format!("bind {l}: {e}"))?;
        addrs.push(listener.local_addr().map_err(|e| e.to_string())?);
        threads.push(spawn_server(listener, handler.clone()));
    }
    announce(&addrs, port_file.as_deref()).map_err(|e| format!("announce: {e}"))?;
    for t in threads {
        let _ = t.join();
    }
    Ok(())
}
