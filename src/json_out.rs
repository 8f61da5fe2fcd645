//! A small writer for the JSON the filter renders (manifest, status, x402 offers). Every
//! `serde_json::json!` object costs the wasm kilobytes of generic map code; these answers are
//! flat and known, so they are written as text, with serde_json escaping the strings.

/// One JSON object being written; members keep the order they are added in.
pub struct Obj {
    text: String,
}

impl Default for Obj {
    fn default() -> Self {
        Obj::new()
    }
}

/// A JSON string literal for `text`.
pub fn string(text: &str) -> String {
    serde_json::to_string(text).unwrap_or_else(|_| "\"\"".to_string())
}

impl Obj {
    pub fn new() -> Obj {
        Obj { text: String::from("{") }
    }

    fn key(&mut self, key: &str) {
        if self.text.len() > 1 {
            self.text.push(',');
        }
        self.text.push_str(&string(key));
        self.text.push(':');
    }

    /// A member whose value is already JSON text.
    pub fn raw(mut self, key: &str, json: &str) -> Obj {
        self.key(key);
        self.text.push_str(json);
        self
    }

    pub fn str(self, key: &str, value: &str) -> Obj {
        let value = string(value);
        self.raw(key, &value)
    }

    pub fn num(self, key: &str, value: u64) -> Obj {
        self.raw(key, &value.to_string())
    }

    pub fn bool(self, key: &str, value: bool) -> Obj {
        self.raw(key, if value { "true" } else { "false" })
    }

    /// `null` when absent.
    pub fn opt_num(self, key: &str, value: Option<u64>) -> Obj {
        match value {
            Some(v) => self.num(key, v),
            None => self.raw(key, "null"),
        }
    }

    /// `null` when absent.
    pub fn opt_str(self, key: &str, value: Option<&str>) -> Obj {
        match value {
            Some(v) => self.str(key, v),
            None => self.raw(key, "null"),
        }
    }

    pub fn end(mut self) -> String {
        self.text.push('}');
        self.text
    }
}

/// A JSON array of already-rendered values.
pub fn array<I: IntoIterator<Item = String>>(items: I) -> String {
    let mut out = String::from("[");
    for (i, item) in items.into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&item);
    }
    out.push(']');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    #[test]
    fn what_is_written_parses_back_as_written() {
        let inner = Obj::new().str("q", "say \"hi\"\n\\").end();
        let text = Obj::new()
            .str("a", "x")
            .num("n", u64::MAX)
            .bool("t", true)
            .bool("f", false)
            .opt_num("none", None)
            .opt_num("some", Some(3))
            .opt_str("s", Some("é"))
            .opt_str("z", None)
            .raw("o", &inner)
            .raw("l", &array([string("a"), "1".to_string()]))
            .raw("e", &array(Vec::<String>::new()))
            .end();
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            v,
            json!({"a": "x", "n": u64::MAX, "t": true, "f": false, "none": null, "some": 3, "s": "é", "z": null,
                   "o": {"q": "say \"hi\"\n\\"}, "l": ["a", 1], "e": []})
        );
        assert_eq!(Obj::new().end(), "{}");
        assert!(text.starts_with("{\"a\":\"x\",\"n\":"), "members keep their order: {text}");
    }
}
