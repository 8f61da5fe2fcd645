//! Open-loop HTTP/1.1 load at a fixed rate, with latency counted from when each request was due.
//!
//! `wrk` is a closed loop: a slow answer delays the requests behind it, so its p99 hides stalls
//! (coordinated omission), and with every connection busy it measures a queue. `oha -q` is open
//! but schedules on tokio's 1 ms timer, so its latencies carry up to a millisecond of its own. This
//! sends request `i` at `start + i / rate` (woken by `ppoll` with a 1 ns timer slack), on the first
//! idle keep-alive connection; a request due while every connection is busy waits, and its wait
//! counts. One thread, so it can share a pinned CPU.
//!
//! Usage: `txgate-openloop URL RATE CONNECTIONS SECONDS [HEADER: VALUE]...`; prints one JSON line.

use std::collections::{BTreeMap, VecDeque};
use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

struct Conn {
    stream: TcpStream,
    /// When the request under way was due; `None` when idle.
    due: Option<Instant>,
    buf: Vec<u8>,
}

struct Target {
    addr: String,
    request: Vec<u8>,
}

fn target(url: &str, headers: &[String]) -> Result<Target, String> {
    let rest = url.strip_prefix("http://").ok_or("only http:// URLs")?;
    let (addr, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let path = if path.is_empty() { "/" } else { path };
    let mut request = format!("GET {path} HTTP/1.1\r\nhost: {addr}\r\n");
    for h in headers {
        request.push_str(h);
        request.push_str("\r\n");
    }
    request.push_str("\r\n");
    Ok(Target { addr: addr.to_string(), request: request.into_bytes() })
}

fn connect(t: &Target) -> std::io::Result<Conn> {
    let stream = TcpStream::connect(&t.addr)?;
    stream.set_nodelay(true)?;
    stream.set_nonblocking(true)?;
    Ok(Conn { stream, due: None, buf: Vec::with_capacity(4096) })
}

/// A whole response at the front of `buf`: its status, its length, and whether the server closes
/// the connection after it. Envoy's answers, local or proxied, carry `content-length`.
fn response(buf: &[u8]) -> Result<Option<(u16, usize, bool)>, String> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut r = httparse::Response::new(&mut headers);
    let head = match r.parse(buf).map_err(|e| e.to_string())? {
        httparse::Status::Complete(n) => n,
        httparse::Status::Partial => return Ok(None),
    };
    let length = r
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("content-length"))
        .and_then(|h| std::str::from_utf8(h.value).ok()?.trim().parse::<usize>().ok())
        .ok_or("a response without content-length")?;
    let closes =
        r.headers.iter().any(|h| h.name.eq_ignore_ascii_case("connection") && h.value.eq_ignore_ascii_case(b"close"));
    let status = r.code.unwrap_or(0);
    Ok((buf.len() >= head + length).then_some((status, head + length, closes)))
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

fn run(url: &str, rate: f64, connections: usize, seconds: f64, headers: &[String]) -> Result<String, String> {
    let t = target(url, headers)?;
    // SAFETY: prctl with PR_SET_TIMERSLACK takes one integer argument and touches no memory.
    unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong) };
    let mut conns = (0..connections).map(|_| connect(&t)).collect::<Result<Vec<_>, _>>().map_err(|e| e.to_string())?;
    let interval = Duration::from_secs_f64(1.0 / rate);
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(seconds);
    let give_up = end + Duration::from_secs(5);
    let (mut next_due, mut queue) = (start, VecDeque::<Instant>::new());
    let mut latencies: Vec<u64> = Vec::with_capacity((rate * seconds) as usize + 16);
    let (mut statuses, mut errors, mut max_queue) = (BTreeMap::<u16, u64>::new(), 0u64, 0usize);
    let mut chunk = [0u8; 16384];
    loop {
        let now = Instant::now();
        while next_due <= now && next_due < end {
            queue.push_back(next_due);
            next_due += interval;
        }
        max_queue = max_queue.max(queue.len());
        for c in conns.iter_mut().filter(|c| c.due.is_none()) {
            let Some(due) = queue.pop_front() else { break };
            // A request is a few hundred bytes: an idle socket's send buffer takes it whole.
            match c.stream.write(&t.request) {
                Ok(n) if n == t.request.len() => c.due = Some(due),
                _ => {
                    errors += 1;
                    *c = connect(&t).map_err(|e| e.to_string())?;
                }
            }
        }
        let busy = conns.iter().any(|c| c.due.is_some());
        if !busy && queue.is_empty() && next_due >= end {
            break;
        }
        if now >= give_up {
            errors += conns.iter().filter(|c| c.due.is_some()).count() as u64;
            break;
        }
        let mut fds: Vec<libc::pollfd> = conns
            .iter()
            .map(|c| libc::pollfd {
                fd: if c.due.is_some() { c.stream.as_raw_fd() } else { -1 },
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        let wait =
            if next_due < end { next_due.saturating_duration_since(Instant::now()) } else { Duration::from_millis(50) };
        let ts =
            libc::timespec { tv_sec: wait.as_secs() as libc::time_t, tv_nsec: wait.subsec_nanos() as libc::c_long };
        // SAFETY: `fds` is a live array of `fds.len()` pollfd structs; `ts` outlives the call.
        let ready = unsafe { libc::ppoll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, &ts, std::ptr::null()) };
        if ready <= 0 {
            continue;
        }
        for (c, fd) in conns.iter_mut().zip(&fds) {
            if fd.revents == 0 {
                continue;
            }
            let Some(due) = c.due else { continue };
            let mut eof = false;
            loop {
                match c.stream.read(&mut chunk) {
                    Ok(0) => {
                        eof = true;
                        break;
                    }
                    Ok(n) => c.buf.extend_from_slice(chunk.get(..n).unwrap_or_default()),
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                    Err(_) => {
                        eof = true;
                        break;
                    }
                }
            }
            let mut close = eof;
            match response(&c.buf)? {
                Some((status, len, closes)) => {
                    latencies.push(Instant::now().saturating_duration_since(due).as_micros() as u64);
                    *statuses.entry(status).or_default() += 1;
                    c.buf.drain(..len);
                    c.due = None;
                    close |= closes;
                }
                None if eof => errors += 1,
                None => {}
            }
            // Envoy closes the connection after some local replies (a 400): a client opens another.
            if close {
                *c = connect(&t).map_err(|e| e.to_string())?;
            }
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    latencies.sort_unstable();
    let statuses: serde_json::Map<String, serde_json::Value> =
        statuses.into_iter().map(|(k, n)| (k.to_string(), n.into())).collect();
    Ok(serde_json::json!({
        "rate": rate, "connections": connections, "seconds": seconds,
        "requests": latencies.len(), "rps": latencies.len() as f64 / elapsed,
        "p50_us": percentile(&latencies, 0.50), "p90_us": percentile(&latencies, 0.90),
        "p99_us": percentile(&latencies, 0.99), "p999_us": percentile(&latencies, 0.999),
        "max_us": latencies.last().copied().unwrap_or(0),
        "statuses": statuses, "errors": errors, "max_queue": max_queue,
    })
    .to_string())
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let parsed = match args.as_slice() {
        [url, rate, conns, secs, headers @ ..] => {
            match (rate.parse::<f64>(), conns.parse::<usize>(), secs.parse::<f64>()) {
                (Ok(r), Ok(c), Ok(s)) if r > 0.0 && c > 0 && s > 0.0 => Some((url, r, c, s, headers)),
                _ => None,
            }
        }
        _ => None,
    };
    let Some((url, rate, conns, secs, headers)) = parsed else {
        eprintln!("usage: txgate-openloop URL RATE CONNECTIONS SECONDS [HEADER: VALUE]...");
        std::process::exit(2);
    };
    match run(url, rate, conns, secs, headers) {
        Ok(json) => println!("{json}"),
        Err(e) => {
            eprintln!("txgate-openloop: {e}");
            std::process::exit(1);
        }
    }
}
