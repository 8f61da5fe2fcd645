//! Standard base64 (RFC 4648 §4, with padding), as etcd's JSON gateway wants keys and values.
//! A few lines here instead of a crate keep the wasm small.

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

pub fn encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(3).saturating_mul(4));
    encode_into(bytes, &mut out);
    out
}

/// Appends the base64 of `bytes` to `out` (on the request path: one buffer, no per-char pushes).
pub fn encode_into(bytes: &[u8], out: &mut String) {
    let mut coded: Vec<u8> = Vec::with_capacity(bytes.len().div_ceil(3).saturating_mul(4));
    let sextet = |n: u32, shift: u32| ALPHABET.get(usize::try_from((n >> shift) & 0x3f).unwrap_or(0)).copied();
    for chunk in bytes.chunks(3) {
        let (a, b, c) = match *chunk {
            [a, b, c] => (a, Some(b), Some(c)),
            [a, b] => (a, Some(b), None),
            [a] => (a, None, None),
            _ => continue,
        };
        let n = (u32::from(a) << 16) | (u32::from(b.unwrap_or(0)) << 8) | u32::from(c.unwrap_or(0));
        let quad = [
            sextet(n, 18).unwrap_or(b'A'),
            sextet(n, 12).unwrap_or(b'A'),
            if b.is_some() { sextet(n, 6).unwrap_or(b'A') } else { b'=' },
            if c.is_some() { sextet(n, 0).unwrap_or(b'A') } else { b'=' },
        ];
        coded.extend_from_slice(&quad);
    }
    // Only ALPHABET bytes and '=' were pushed: always ASCII.
    out.push_str(std::str::from_utf8(&coded).unwrap_or_default());
}

fn value_of(c: u8) -> Option<u32> {
    ALPHABET.iter().position(|a| *a == c).and_then(|p| u32::try_from(p).ok())
}

/// `None` for anything that is not canonical padded base64.
pub fn decode(text: &str) -> Option<Vec<u8>> {
    let bytes = text.as_bytes();
    if !bytes.len().is_multiple_of(4) {
        return None;
    }
    let mut out = Vec::with_capacity(bytes.len().saturating_mul(3) / 4);
    let quads = bytes.chunks(4).count();
    for (q, quad) in bytes.chunks(4).enumerate() {
        let pad = quad.iter().rev().take_while(|c| **c == b'=').count();
        if pad > 2 || (pad > 0 && q.saturating_add(1) != quads) {
            return None;
        }
        let mut n: u32 = 0;
        for c in quad.iter().take(4usize.saturating_sub(pad)) {
            n = (n << 6) | value_of(*c)?;
        }
        n <<= 6u32.saturating_mul(u32::try_from(pad).unwrap_or(0));
        let [_, a, b, c] = n.to_be_bytes();
        out.push(a);
        if pad < 2 {
            out.push(b);
        }
        if pad < 1 {
            out.push(c);
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;

    #[test]
    fn rfc4648_vectors() {
        for (plain, coded) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(encode(plain.as_bytes()), coded);
            assert_eq!(decode(coded).as_deref(), Some(plain.as_bytes()));
        }
        for bad in ["Zg", "Zg=", "Z===", "Zg==Zg==", "Zm9*", "Zm 9"] {
            assert_eq!(decode(bad), None, "{bad}");
        }
    }

    proptest::proptest! {
        #[test]
        fn agrees_with_the_base64_crate(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..64)) {
            let reference = base64::engine::general_purpose::STANDARD.encode(&bytes);
            proptest::prop_assert_eq!(&encode(&bytes), &reference);
            proptest::prop_assert_eq!(decode(&reference), Some(bytes));
        }
    }
}
