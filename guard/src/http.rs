//! Just enough HTTP/1.1 for the ban API: one request per connection, bodies by Content-Length.

/// Largest request head and body the agent reads (a ban is about 100 bytes).
pub const MAX_HEAD: usize = 8 * 1024;
pub const MAX_BODY: usize = 4 * 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub body: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parse {
    /// More bytes are needed.
    Incomplete,
    Done(Request),
    Bad(&'static str),
}

/// Parses what has been read so far.
pub fn parse(buf: &[u8]) -> Parse {
    let Some(head_end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return if buf.len() > MAX_HEAD { Parse::Bad("request head too large") } else { Parse::Incomplete };
    };
    let Some(head) = buf.get(..head_end).and_then(|h| std::str::from_utf8(h).ok()) else {
        return Parse::Bad("request head is not UTF-8");
    };
    let mut lines = head.split("\r\n");
    let mut first = lines.next().unwrap_or_default().split(' ');
    let (Some(method), Some(path), Some(version)) = (first.next(), first.next(), first.next()) else {
        return Parse::Bad("bad request line");
    };
    if !version.starts_with("HTTP/1.") || first.next().is_some() {
        return Parse::Bad("bad request line");
    }
    let mut length = 0usize;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else { return Parse::Bad("bad header line") };
        if name.eq_ignore_ascii_case("content-length") {
            match value.trim().parse::<usize>() {
                Ok(n) if n <= MAX_BODY => length = n,
                Ok(_) => return Parse::Bad("body too large"),
                Err(_) => return Parse::Bad("bad content-length"),
            }
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            return Parse::Bad("transfer-encoding is not supported");
        }
    }
    let body_start = head_end.saturating_add(4);
    let Some(body) = buf.get(body_start..) else { return Parse::Incomplete };
    if body.len() < length {
        return Parse::Incomplete;
    }
    Parse::Done(Request {
        method: method.to_string(),
        path: path.to_string(),
        body: body.get(..length).unwrap_or_default().to_vec(),
    })
}

pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub body: String,
}

impl Response {
    pub fn json(status: u16, body: serde_json::Value) -> Response {
        Response { status, content_type: "application/json", body: body.to_string() }
    }

    pub fn error(status: u16, error: &str, detail: impl Into<String>) -> Response {
        Response::json(status, serde_json::json!({"error": error, "detail": detail.into()}))
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let reason = match self.status {
            200 => "OK",
            400 => "Bad Request",
            403 => "Forbidden",
            404 => "Not Found",
            405 => "Method Not Allowed",
            422 => "Unprocessable Entity",
            _ => "Internal Server Error",
        };
        format!(
            "HTTP/1.1 {} {reason}\r\ncontent-type: {}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{}",
            self.status,
            self.content_type,
            self.body.len(),
            self.body
        )
        .into_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse_when_complete() {
        let req = b"POST /v1/bans HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}";
        assert_eq!(
            parse(req),
            Parse::Done(Request { method: "POST".into(), path: "/v1/bans".into(), body: b"{}".to_vec() })
        );
        assert_eq!(parse(&req[..req.len() - 1]), Parse::Incomplete);
        assert_eq!(parse(b"GET /v1/bans HTTP/1.1\r\n"), Parse::Incomplete);
        let get = parse(b"GET /metrics HTTP/1.0\r\n\r\n");
        assert!(matches!(get, Parse::Done(r) if r.method == "GET" && r.path == "/metrics" && r.body.is_empty()));
    }

    #[test]
    fn bad_requests_are_refused() {
        assert_eq!(parse(b"POST /x HTTP/1.1\r\ncontent-length: 99999\r\n\r\n"), Parse::Bad("body too large"));
        assert_eq!(parse(b"POST /x HTTP/1.1\r\ncontent-length: x\r\n\r\n"), Parse::Bad("bad content-length"));
        assert_eq!(parse(b"POST /x HTTP/2\r\n\r\n"), Parse::Bad("bad request line"));
        assert_eq!(parse(b"POST\r\n\r\n"), Parse::Bad("bad request line"));
        assert_eq!(parse(b"GET / HTTP/1.1\r\nnocolon\r\n\r\n"), Parse::Bad("bad header line"));
        assert!(matches!(parse(b"GET / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"), Parse::Bad(_)));
        assert_eq!(parse(&vec![b'a'; MAX_HEAD + 1]), Parse::Bad("request head too large"));
    }

    #[test]
    fn responses_carry_their_length() {
        let bytes = Response::json(200, serde_json::json!({"ok": true})).to_bytes();
        let text = String::from_utf8(bytes).unwrap();
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"));
        assert!(text.contains("content-length: 11\r\n"));
        assert!(text.ends_with("\r\n\r\n{\"ok\":true}"));
    }
}
