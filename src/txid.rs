//! Transaction ids as clients send them in a header.

use std::fmt;

/// A txid in the explorers' display form: 64 lowercase hex digits.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Txid(String);

impl Txid {
    /// Accepts exactly 64 ASCII hex digits (either case) and nothing else: no whitespace, no `0x`,
    /// no look-alike unicode digits. Works on bytes because header values need not be UTF-8.
    pub fn parse(value: &[u8]) -> Option<Txid> {
        if value.len() != 64 || !value.iter().all(u8::is_ascii_hexdigit) {
            return None;
        }
        let text: String = value.iter().map(|b| char::from(b.to_ascii_lowercase())).collect();
        Some(Txid(text))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Txid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TXID: &str = "4a5e1e4baab89f3a32518a88c31bc87f618f76673e2cc77ab2127b7afdeda33b";

    #[test]
    fn accepts_lowercase_and_normalises_uppercase() {
        assert_eq!(Txid::parse(TXID.as_bytes()).unwrap().as_str(), TXID);
        let upper = TXID.to_ascii_uppercase();
        assert_eq!(Txid::parse(upper.as_bytes()).unwrap().as_str(), TXID);
    }

    #[test]
    fn refuses_everything_else() {
        let cases: Vec<Vec<u8>> = vec![
            b"".to_vec(),
            TXID.as_bytes()[..63].to_vec(),
            format!("{TXID}0").into_bytes(),
            format!(" {}", &TXID[1..]).into_bytes(),
            format!("{} ", &TXID[..63]).into_bytes(),
            format!("0x{}", &TXID[2..]).into_bytes(),
            format!("g{}", &TXID[1..]).into_bytes(),
            // Fullwidth digit one (U+FF11) looks like '1' but is three bytes.
            format!("\u{ff11}{}", &TXID[3..]).into_bytes(),
            {
                let mut raw = TXID.as_bytes().to_vec();
                raw[10] = 0xff;
                raw
            },
            vec![b'a'; 65_536],
        ];
        for case in cases {
            assert_eq!(Txid::parse(&case), None, "accepted {:?}", String::from_utf8_lossy(&case));
        }
    }
}
