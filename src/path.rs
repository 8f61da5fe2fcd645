//! The one canonical form of a request path, so that the route the filter prices is the route a
//! lenient backend serves, whatever Envoy's path normalization is set to.
//!
//! Canonical form: query and fragment cut off; percent-encoded unreserved characters decoded
//! (RFC 3986 section 2.3) and other escapes upper-cased; repeated slashes merged; dot segments
//! removed (section 5.2.4). A path that a backend could read in more than one way is refused
//! instead: an encoded `/` or `\`, a raw `\`, NUL or other control bytes, bad percent-encoding,
//! `..` above the root, a dot segment hidden behind `;` parameters (`..;`), or a path that does not
//! start with `/`. For matching routes the `;` parameters of each segment are dropped as well,
//! since servlet-style backends ignore them (`/premium;x/a` is served as `/premium/a`).

use std::borrow::Cow;
use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathError {
    NotAbsolute,
    BadEscape,
    EncodedSeparator,
    Backslash,
    ControlByte,
    AboveRoot,
    HiddenDotSegment,
}

impl fmt::Display for PathError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PathError::NotAbsolute => "does not start with '/'",
            PathError::BadEscape => "has a malformed percent-escape",
            PathError::EncodedSeparator => "has an encoded '/' or '\\'",
            PathError::Backslash => "has a '\\'",
            PathError::ControlByte => "has a NUL or control byte",
            PathError::AboveRoot => "goes above the root with '..'",
            PathError::HiddenDotSegment => "has a dot segment with ';' parameters",
        })
    }
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b.wrapping_sub(b'0')),
        b'a'..=b'f' => Some(b.wrapping_sub(b'a').wrapping_add(10)),
        b'A'..=b'F' => Some(b.wrapping_sub(b'A').wrapping_add(10)),
        _ => None,
    }
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// Decodes unreserved escapes and refuses what cannot be read one way only.
fn decode(raw: &[u8]) -> Result<String, PathError> {
    let mut out = String::with_capacity(raw.len());
    let mut i = 0usize;
    while let Some(&b) = raw.get(i) {
        i = i.saturating_add(1);
        match b {
            b'%' => {
                let hi = raw.get(i).copied().and_then(hex_value);
                let lo = raw.get(i.saturating_add(1)).copied().and_then(hex_value);
                let (Some(hi), Some(lo)) = (hi, lo) else { return Err(PathError::BadEscape) };
                i = i.saturating_add(2);
                let byte = hi.wrapping_mul(16).wrapping_add(lo);
                match byte {
                    b'/' | b'\\' => return Err(PathError::EncodedSeparator),
                    0..=0x1f | 0x7f => return Err(PathError::ControlByte),
                    b'%' => out.push_str("%25"),
                    _ if is_unreserved(byte) => out.push(char::from(byte)),
                    _ => {
                        out.push('%');
                        out.push(char::from(b"0123456789ABCDEF".get(usize::from(hi)).copied().unwrap_or(b'0')));
                        out.push(char::from(b"0123456789ABCDEF".get(usize::from(lo)).copied().unwrap_or(b'0')));
                    }
                }
            }
            b'\\' => return Err(PathError::Backslash),
            0..=0x1f | 0x7f => return Err(PathError::ControlByte),
            0x80..=0xff => {
                // Raw non-ASCII bytes: keep them escaped so the canonical form stays ASCII.
                out.push('%');
                out.push(char::from(b"0123456789ABCDEF".get(usize::from(b >> 4)).copied().unwrap_or(b'0')));
                out.push(char::from(b"0123456789ABCDEF".get(usize::from(b & 0xf)).copied().unwrap_or(b'0')));
            }
            _ => out.push(char::from(b)),
        }
    }
    Ok(out)
}

/// Whether a path is already canonical: only characters that stay as they are, no repeated
/// slash and no `.` or `..` segment. Most requests are, and they need no copy.
fn already_canonical(raw: &[u8]) -> bool {
    let plain = |b: &u8| b.is_ascii_alphanumeric() || b"-._~/!$&'()*+,=:@".contains(b);
    raw.first() == Some(&b'/')
        && raw.iter().all(plain)
        && !raw.windows(2).any(|w| w == b"//")
        && raw.split(|b| *b == b'/').all(|segment| segment != b"." && segment != b"..")
}

/// The canonical path of a request target (`:path`), or why it has none.
pub fn canonicalize(target: &[u8]) -> Result<Cow<'_, str>, PathError> {
    let end = target.iter().position(|b| *b == b'?' || *b == b'#').unwrap_or(target.len());
    let raw = target.get(..end).unwrap_or(target);
    if already_canonical(raw) {
        if let Ok(text) = std::str::from_utf8(raw) {
            return Ok(Cow::Borrowed(text));
        }
    }
    rewrite(raw).map(Cow::Owned)
}

/// The canonical form of a path that is not already canonical.
fn rewrite(raw: &[u8]) -> Result<String, PathError> {
    if raw.first() != Some(&b'/') {
        return Err(PathError::NotAbsolute);
    }
    let decoded = decode(raw)?;
    let mut segments: Vec<&str> = Vec::new();
    let parts: Vec<&str> = decoded.split('/').skip(1).collect();
    let last = parts.len().saturating_sub(1);
    let mut trailing_slash = false;
    for (n, segment) in parts.iter().enumerate() {
        let base = without_parameters(segment);
        if base.len() != segment.len() && (base == "." || base == "..") {
            return Err(PathError::HiddenDotSegment);
        }
        match *segment {
            // Repeated slashes merge; a final empty segment is a trailing slash.
            "" => trailing_slash = n == last,
            "." => trailing_slash = n == last,
            ".." => {
                if segments.pop().is_none() {
                    return Err(PathError::AboveRoot);
                }
                trailing_slash = n == last;
            }
            s => {
                segments.push(s);
                trailing_slash = false;
            }
        }
    }
    let mut out = String::with_capacity(decoded.len());
    for s in &segments {
        out.push('/');
        out.push_str(s);
    }
    if out.is_empty() || trailing_slash {
        out.push('/');
    }
    Ok(out)
}

/// A segment without its `;` parameters. An encoded `;` (`%3B`, or `%3b` before
/// canonicalization) starts parameters too, for the backends that decode the path before they cut
/// parameters off.
fn without_parameters(segment: &str) -> &str {
    let cut = segment
        .char_indices()
        .find(|(i, c)| {
            *c == ';'
                || (*c == '%'
                    && segment
                        .get(i.saturating_add(1)..i.saturating_add(3))
                        .is_some_and(|h| h.eq_ignore_ascii_case("3B")))
        })
        .map_or(segment.len(), |(i, _)| i);
    segment.get(..cut).unwrap_or(segment)
}

/// The form routes are matched against: each segment without its parameters, and a segment
/// that was nothing but parameters merged away, as a backend that drops parameters serves it.
pub fn matching_form(canonical: &str) -> Cow<'_, str> {
    if !canonical.contains(';') && !canonical.contains("%3B") {
        return Cow::Borrowed(canonical);
    }
    let mut out = String::with_capacity(canonical.len());
    let segments: Vec<&str> = canonical.split('/').skip(1).collect();
    let last = segments.len().saturating_sub(1);
    for (n, segment) in segments.iter().enumerate() {
        let base = without_parameters(segment);
        if !base.is_empty() {
            out.push('/');
            out.push_str(base);
        } else if n == last && segment.is_empty() {
            out.push('/');
        }
    }
    if out.is_empty() {
        out.push('/');
    }
    Cow::Owned(out)
}

/// Whether `prefix` covers `path` on segment boundaries: `/free` covers `/free` and `/free/…`,
/// not `/freeloader`; a prefix ending in `/` covers everything below it.
pub fn prefix_covers(prefix: &str, path: &str) -> bool {
    match path.strip_prefix(prefix) {
        Some(rest) => prefix.ends_with('/') || rest.is_empty() || rest.starts_with('/'),
        None => prefix.len() > 1 && prefix.ends_with('/') && path == prefix.trim_end_matches('/'),
    }
}

/// `prefix_covers` ignoring ASCII case, for backends that serve paths case-insensitively.
pub fn prefix_covers_ignoring_case(prefix: &str, path: &str) -> bool {
    let (p, q) = (prefix.as_bytes(), path.as_bytes());
    let head = q.get(..p.len());
    if head.is_some_and(|h| h.eq_ignore_ascii_case(p)) {
        let rest = q.get(p.len()..).unwrap_or_default();
        return prefix.ends_with('/') || rest.is_empty() || rest.first() == Some(&b'/');
    }
    prefix.len() > 1 && prefix.ends_with('/') && prefix.trim_end_matches('/').eq_ignore_ascii_case(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn canon(p: &str) -> Result<String, PathError> {
        canonicalize(p.as_bytes()).map(Cow::into_owned)
    }

    #[test]
    fn rfc3986_remove_dot_segments_examples() {
        // RFC 3986 section 5.2.4 and the normal examples of 5.4.1, as absolute paths.
        assert_eq!(canon("/a/b/c/./../../g").unwrap(), "/a/g");
        assert_eq!(canon("/b/c/./g").unwrap(), "/b/c/g");
        assert_eq!(canon("/b/c/.").unwrap(), "/b/c/");
        assert_eq!(canon("/b/c/./").unwrap(), "/b/c/");
        assert_eq!(canon("/b/c/..").unwrap(), "/b/");
        assert_eq!(canon("/b/c/../").unwrap(), "/b/");
        assert_eq!(canon("/b/c/../g").unwrap(), "/b/g");
        assert_eq!(canon("/b/c/../..").unwrap(), "/");
        assert_eq!(canon("/b/c/../../g").unwrap(), "/g");
        assert_eq!(canon("/b/c/g.").unwrap(), "/b/c/g.");
        assert_eq!(canon("/b/c/.g").unwrap(), "/b/c/.g");
        assert_eq!(canon("/b/c/g..").unwrap(), "/b/c/g..");
        assert_eq!(canon("/b/c/..g").unwrap(), "/b/c/..g");
        assert_eq!(canon("/b/c/./../g").unwrap(), "/b/g");
        assert_eq!(canon("/b/c/./g/.").unwrap(), "/b/c/g/");
        assert_eq!(canon("/b/c/g/./h").unwrap(), "/b/c/g/h");
        assert_eq!(canon("/b/c/g/../h").unwrap(), "/b/c/h");
        // 5.4.2: too many ".." are an error here, not silently clamped at the root.
        assert_eq!(canon("/b/c/../../../g"), Err(PathError::AboveRoot));
        assert_eq!(canon("/../g"), Err(PathError::AboveRoot));
    }

    #[test]
    fn the_findings_paths_resolve_to_what_a_lenient_backend_serves() {
        assert_eq!(canon("/free/../api/hello").unwrap(), "/api/hello");
        assert_eq!(canon("/free/%2e%2e/api/hello").unwrap(), "/api/hello");
        assert_eq!(canon("/free//../api/hello").unwrap(), "/api/hello");
        assert_eq!(canon("/free/x/../../api/hello").unwrap(), "/api/hello");
        assert_eq!(canon("//premium/x").unwrap(), "/premium/x");
        assert_eq!(canon("/api/../premium/x").unwrap(), "/premium/x");
        assert_eq!(canon("/%70remium/x").unwrap(), "/premium/x");
        assert_eq!(canon("/./premium/x").unwrap(), "/premium/x");
        assert_eq!(canon("/api/%2e%2e/premium/x").unwrap(), "/premium/x");
        assert_eq!(canon("/free;x/../api").unwrap(), "/api");
        assert_eq!(canon("/a?x=/../free").unwrap(), "/a");
        for bad in ["/free/..%2fapi/hello", "/free%2f..%2fapi/hello", "/free/..%5capi", "/a%2Fb"] {
            assert_eq!(canon(bad), Err(PathError::EncodedSeparator), "{bad}");
        }
        assert_eq!(canon("/free\\..\\api\\hello"), Err(PathError::Backslash));
        assert_eq!(canon("/free%00/../api"), Err(PathError::ControlByte));
        assert_eq!(canon("/free\u{1}/a"), Err(PathError::ControlByte), "raw, not only escaped");
        assert_eq!(canon("/free\u{7f}"), Err(PathError::ControlByte));
        assert_eq!(canon("/free/..;/api/hello"), Err(PathError::HiddenDotSegment));
        assert_eq!(canon("/free/.;x/api"), Err(PathError::HiddenDotSegment));
        assert_eq!(canon("/free/%2e%2e%3bx/api"), Err(PathError::HiddenDotSegment));
        for bad in ["/a%", "/a%2", "/a%zz", "/a%%41"] {
            assert_eq!(canon(bad), Err(PathError::BadEscape), "{bad}");
        }
        assert_eq!(canon("*"), Err(PathError::NotAbsolute));
        assert_eq!(canon(""), Err(PathError::NotAbsolute));
    }

    #[test]
    fn refusals_say_why_in_the_log() {
        assert_eq!(canon("/a%2Fb").unwrap_err().to_string(), "has an encoded '/' or '\\'");
        assert_eq!(canon("/../a").unwrap_err().to_string(), "goes above the root with '..'");
        assert_eq!(canon("a").unwrap_err().to_string(), "does not start with '/'");
    }

    #[test]
    fn escapes_that_stay_are_upper_cased_and_raw_bytes_escaped() {
        assert_eq!(canon("/a%3a%3Ab").unwrap(), "/a%3A%3Ab");
        assert_eq!(canon("/%7euser").unwrap(), "/~user");
        assert_eq!(canon("/caf\u{e9}").unwrap(), "/caf%C3%A9");
        assert_eq!(canon("/100%25").unwrap(), "/100%25");
        assert_eq!(canon("/").unwrap(), "/");
        assert_eq!(canon("///").unwrap(), "/");
    }

    #[test]
    fn the_fast_path_agrees_with_the_full_rewrite() {
        for p in [
            "/",
            "/a",
            "/a/",
            "/a/b.c/~d",
            "/a:b@c",
            "/.well-known/x",
            "/a..b",
            "/...",
            "/a/./b",
            "/a//b",
            "/a/..",
            "/%41",
        ] {
            let fast = already_canonical(p.as_bytes());
            assert!(!fast || rewrite(p.as_bytes()).as_deref() == Ok(p), "{p}: fast path would differ");
            assert_eq!(canon(p), rewrite(p.as_bytes()), "{p}");
        }
        assert!(
            already_canonical(b"/api/data") && matches!(canonicalize(b"/api/data?q=1"), Ok(Cow::Borrowed("/api/data")))
        );
        assert!(!already_canonical(b"/a/./b") && !already_canonical(b"//a") && !already_canonical(b"/a;b"));
    }

    #[test]
    fn canonical_paths_are_fixed_points() {
        for p in ["/", "/a/b/", "/a%3A", "/premium/x", "/a;b/c", "/~u"] {
            let c = canon(p).unwrap();
            assert_eq!(canon(&c).unwrap(), c, "{p}");
        }
    }

    #[test]
    fn matching_form_drops_segment_parameters() {
        assert_eq!(matching_form("/premium;x=1/a"), "/premium/a");
        assert_eq!(matching_form("/a/b"), "/a/b");
        assert_eq!(matching_form(&canon("/premium%3bx/a").unwrap()), "/premium/a");
        assert_eq!(matching_form("/;x/premium"), "/premium");
        assert_eq!(matching_form("/a;x/"), "/a/");
        assert_eq!(matching_form("/;x"), "/");
    }

    #[test]
    fn prefixes_cover_whole_segments_only() {
        assert!(prefix_covers("/free", "/free"));
        assert!(prefix_covers("/free", "/free/x"));
        assert!(!prefix_covers("/free", "/freeloader"));
        assert!(!prefix_covers("/healthz", "/healthz-and-everything-else"));
        assert!(prefix_covers("/free/", "/free/x"));
        assert!(prefix_covers("/free/", "/free"));
        assert!(!prefix_covers("/free/", "/freex"));
        assert!(prefix_covers("/", "/anything"));
        assert!(!prefix_covers("/free", "/FREE"));
        assert!(prefix_covers_ignoring_case("/premium", "/PREMIUM/x"));
        assert!(prefix_covers_ignoring_case("/premium/", "/Premium"));
        assert!(!prefix_covers_ignoring_case("/premium", "/PREMIUMS"));
    }
}
