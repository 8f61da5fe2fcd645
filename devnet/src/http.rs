//! Tiny blocking HTTP/1.1 server (and client) shared by both binaries.
//!
//! Deliberately hand-rolled on `std::net` + `httparse`, one thread per
//! connection: fault injection needs raw control over the socket (reset without
//! a response, bodies that stop half-way, stalls), which frameworks hide.

use std::fs;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

const MAX_HEAD: usize = 64 * 1024;
const MAX_BODY: usize = 16 * 1024 * 1024;
const MAX_HEADERS: usize = 100;
/// Idle keep-alive connections are dropped after this, so threads don't pile up.
const IDLE_TIMEOUT: Duration = Duration::from_secs(300);

/// Header or trailer fields in order, names lowercased.
pub type Headers = Vec<(String, String)>;

#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    /// Path without the query string.
    pub path: String,
    /// Query string without the `?` (empty if none).
    pub query: String,
    /// Header names are lowercased; order and duplicates are preserved.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Trailers of a chunked body (names lowercased).
    pub trailers: Vec<(String, String)>,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    pub fn query_param(&self, name: &str) -> Option<&str> {
        self.query.split('&').find_map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (k == name).then_some(v)
        })
    }
}

#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn new(status: u16, content_type: &str, body: impl Into<Vec<u8>>) -> Self {
        Response { status, headers: vec![("Content-Type".into(), content_type.into())], body: body.into() }
    }

    pub fn text(status: u16, body: impl Into<String>) -> Self {
        Self::new(status, "text/plain", body.into())
    }

    pub fn json(status: u16, value: &serde_json::Value) -> Self {
        Self::new(status, "application/json", value.to_string())
    }

    pub fn with_header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }
}

/// What a handler wants done with the connection.
#[derive(Debug)]
pub enum Reply {
    Send(Response),
    /// Abort the connection with a TCP RST and no response at all.
    Reset,
}

impl From<Response> for Reply {
    fn from(r: Response) -> Self {
        Reply::Send(r)
    }
}

pub type Handler = Arc<dyn Fn(&Request) -> Reply + Send + Sync>;

pub fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        413 => "Payload Too Large",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Unknown",
    }
}

/// Accepts connections forever on a background thread, one thread per connection.
pub fn spawn_server(listener: TcpListener, handler: Handler) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(stream) = conn else { continue };
            let handler = handler.clone();
            thread::spawn(move || {
                // Errors here are just peers going away; nothing to report.
                let _ = serve_connection(stream, &handler);
            });
        }
    })
}

/// Prints `listening on ADDR` per listener (what test harnesses wait for) and
/// optionally writes the ports, one per line, atomically to `port_file`.
pub fn announce(addrs: &[SocketAddr], port_file: Option<&Path>) -> io::Result<()> {
    let mut out = io::stdout().lock();
    for a in addrs {
        writeln!(out, "listening on {a}")?;
    }
    out.flush()?;
    if let Some(path) = port_file {
        let ports: String = addrs.iter().map(|a| format!("{}\n", a.port())).collect();
        write_atomic(path, ports.as_bytes())?;
    }
    Ok(())
}

/// Write via temp file + rename so readers never observe a partial file.
pub fn write_atomic(path: &Path, data: &[u8]) -> io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".tmp.{}", std::process::id()));
    let tmp = std::path::PathBuf::from(tmp);
    {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
    }
    fs::rename(&tmp, path)
}

/// Buffered reader over the socket that keeps leftover bytes between
/// pipelined/keep-alive requests.
struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    /// Reads more bytes; `Ok(false)` on EOF.
    fn fill(&mut self) -> io::Result<bool> {
        let mut chunk = [0u8; 16 * 1024];
        let n = self.stream.read(&mut chunk)?;
        self.buf.extend_from_slice(chunk.get(..n).unwrap_or_default());
        Ok(n > 0)
    }

    fn take(&mut self, n: usize) -> io::Result<Vec<u8>> {
        while self.buf.len() < n {
            if !self.fill()? {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
        Ok(self.buf.drain(..n).collect())
    }

    fn take_line(&mut self) -> io::Result<String> {
        loop {
            if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line = self.take(i + 2)?;
                return Ok(String::from_utf8_lossy(&line[..i]).into_owned());
            }
            if self.buf.len() > MAX_HEAD || !self.fill()? {
                return Err(io::ErrorKind::InvalidData.into());
            }
        }
    }

    fn read_chunked(&mut self) -> io::Result<(Vec<u8>, Headers)> {
        let mut body = Vec::new();
        loop {
            let line = self.take_line()?;
            let size_hex = line.split(';').next().unwrap_or("").trim();
            let size = usize::from_str_radix(size_hex, 16).map_err(|_| io::Error::from(io::ErrorKind::InvalidData))?;
            if size == 0 {
                // Trailer section ends with an empty line.
                let mut trailers = Vec::new();
                loop {
                    let line = self.take_line()?;
                    if line.is_empty() {
                        return Ok((body, trailers));
                    }
                    if let Some((k, v)) = line.split_once(':') {
                        trailers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
                    }
                }
            }
            if body.len() + size > MAX_BODY {
                return Err(io::ErrorKind::InvalidData.into());
            }
            body.extend(self.take(size)?);
            self.take(2)?; // CRLF after chunk data
        }
    }

    fn send(&mut self, resp: &Response, keep_alive: bool) -> io::Result<()> {
        let mut head = format!("HTTP/1.1 {} {}\r\n", resp.status, reason(resp.status));
        for (k, v) in &resp.headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str(&format!("Content-Length: {}\r\n", resp.body.len()));
        if !keep_alive {
            head.push_str("Connection: close\r\n");
        }
        head.push_str("\r\n");
        let mut out = head.into_bytes();
        out.extend_from_slice(&resp.body);
        self.stream.write_all(&out)?;
        self.stream.flush()
    }
}

enum Head {
    Request { req: Request, version: u8, consumed: usize },
    Incomplete,
    Invalid(u16),
}

fn parse_head(buf: &[u8]) -> Head {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut headers);
    match parsed.parse(buf) {
        Ok(httparse::Status::Complete(consumed)) => {
            let target = parsed.path.unwrap_or("/");
            let (path, query) = target.split_once('?').unwrap_or((target, ""));
            let req = Request {
                method: parsed.method.unwrap_or("GET").to_string(),
                path: path.to_string(),
                query: query.to_string(),
                headers: parsed
                    .headers
                    .iter()
                    .map(|h| (h.name.to_ascii_lowercase(), String::from_utf8_lossy(h.value).into_owned()))
                    .collect(),
                body: Vec::new(),
                trailers: Vec::new(),
            };
            Head::Request { req, version: parsed.version.unwrap_or(1), consumed }
        }
        Ok(httparse::Status::Partial) => Head::Incomplete,
        Err(httparse::Error::TooManyHeaders) => Head::Invalid(431),
        Err(_) => Head::Invalid(400),
    }
}

fn serve_connection(stream: TcpStream, handler: &Handler) -> io::Result<()> {
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(IDLE_TIMEOUT))?;
    let mut conn = Conn { stream, buf: Vec::new() };
    loop {
        // Read until a full request head is buffered.
        let (mut req, version, consumed) = loop {
            match parse_head(&conn.buf) {
                Head::Request { req, version, consumed } => break (req, version, consumed),
                Head::Invalid(status) => {
                    return conn.send(&Response::text(status, reason(status)), false);
                }
                Head::Incomplete if conn.buf.len() > MAX_HEAD => {
                    return conn.send(&Response::text(431, reason(431)), false);
                }
                Head::Incomplete => {
                    if !conn.fill()? {
                        return Ok(()); // peer closed between requests
                    }
                }
            }
        };
        conn.buf.drain(..consumed);

        let connection = req.header("connection").unwrap_or("").to_ascii_lowercase();
        let keep_alive = if version == 0 { connection.contains("keep-alive") } else { !connection.contains("close") };
        if req.header("expect").is_some_and(|v| v.eq_ignore_ascii_case("100-continue")) {
            conn.stream.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")?;
        }

        let chunked = req.header("transfer-encoding").is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
        if chunked {
            (req.body, req.trailers) = conn.read_chunked()?;
        } else if let Some(len) = req.header("content-length") {
            let Ok(len) = len.trim().parse::<usize>() else {
                return conn.send(&Response::text(400, "bad content-length"), false);
            };
            if len > MAX_BODY {
                return conn.send(&Response::text(413, reason(413)), false);
            }
            req.body = conn.take(len)?;
        }

        match handler(&req) {
            Reply::Reset => {
                // SO_LINGER 0 makes close() send RST instead of FIN.
                let _ = socket2::SockRef::from(&conn.stream).set_linger(Some(Duration::ZERO));
                return Ok(());
            }
            Reply::Send(resp) => {
                conn.send(&resp, keep_alive)?;
                if !keep_alive {
                    return Ok(());
                }
            }
        }
    }
}

/// Minimal client for the CLI helpers and tests: one request per connection.
/// Returns (status, body). `url` is like `http://127.0.0.1:1234` (no TLS).
pub fn call(url: &str, method: &str, path: &str, body: Option<&str>) -> io::Result<(u16, Vec<u8>)> {
    let host = url.trim_start_matches("http://").trim_end_matches('/');
    let host = host.split('/').next().unwrap_or(host);
    let mut stream = TcpStream::connect(host)?;
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    let body = body.unwrap_or("");
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(req.as_bytes())?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    parse_response(&raw)
}

/// Parses a complete `Connection: close` response (Content-Length or read-to-EOF body).
pub fn parse_response(raw: &[u8]) -> io::Result<(u16, Vec<u8>)> {
    let bad = || io::Error::new(io::ErrorKind::InvalidData, "bad HTTP response");
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    let httparse::Status::Complete(n) = resp.parse(raw).map_err(|_| bad())? else {
        return Err(bad());
    };
    let status = resp.code.ok_or_else(bad)?;
    let rest = raw.get(n..).unwrap_or_default();
    let len = resp
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("content-length"))
        .and_then(|h| std::str::from_utf8(h.value).ok()?.trim().parse::<usize>().ok())
        .unwrap_or(rest.len());
    Ok((status, rest.get(..len).ok_or_else(bad)?.to_vec()))
}
