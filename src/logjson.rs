//! Log line formats: one JSON object per line (`--log-format json`), and the
//! key-values appended to the text format's lines.
//!
//! What a line is about (`conn`, `project`, `peer`, `user`, …) is passed by
//! the call site as structured key-values (`log::warn!(conn:% = id; "…")`),
//! never written into the message text: a field read back out of text can be
//! forged by whatever else the text holds (a user id `mallory project=p_0`
//! attributed its line to project `p_0`). The JSON format writes each
//! key-value as a field of its own; the text format appends them as
//! `key=value` and quotes a value that could be mistaken for more than one.

use std::fmt::Write as _;

use log::kv::{self, Key, Source, VisitSource};
use serde_json::{Map, Value};

/// The fields every JSON line has; a key-value of the same name is dropped
/// rather than allowed to replace them.
const RESERVED: [&str; 4] = ["ts", "level", "target", "msg"];

/// Builds one log line: `{"ts","level","target","msg",…}` with one more field
/// per key-value of the record (`conn`, `project`, …).
pub fn line(ts: &str, level: &str, target: &str, msg: &str, kvs: &dyn Source) -> String {
    let mut fields = Map::new();
    fields.insert("ts".into(), Value::from(ts));
    fields.insert("level".into(), Value::from(level));
    fields.insert("target".into(), Value::from(target));
    fields.insert("msg".into(), Value::from(msg));
    let _ = kvs.visit(&mut JsonFields(&mut fields));
    Value::Object(fields).to_string()
}

struct JsonFields<'a>(&'a mut Map<String, Value>);

impl<'kvs> VisitSource<'kvs> for JsonFields<'_> {
    fn visit_pair(&mut self, key: Key<'kvs>, value: kv::Value<'kvs>) -> Result<(), kv::Error> {
        let key = key.as_str();
        if RESERVED.contains(&key) {
            return Ok(());
        }
        let value = if let Some(n) = value.to_u64() {
            Value::from(n)
        } else if let Some(n) = value.to_i64() {
            Value::from(n)
        } else if let Some(b) = value.to_bool() {
            Value::from(b)
        } else {
            Value::from(value.to_string())
        };
        self.0.entry(key.to_string()).or_insert(value);
        Ok(())
    }
}

/// The key-values of a text line: ` key=value` each, in the order given. A
/// value that is empty or holds anything but printable ASCII other than `"`,
/// `=` and `\` is written quoted and escaped (Rust's `{:?}`), so a user id
/// with spaces, `=`, newlines or bidi controls stays one visible value.
pub fn text_pairs(kvs: &dyn Source) -> String {
    let mut out = String::new();
    let _ = kvs.visit(&mut TextPairs(&mut out));
    out
}

struct TextPairs<'a>(&'a mut String);

impl<'kvs> VisitSource<'kvs> for TextPairs<'_> {
    fn visit_pair(&mut self, key: Key<'kvs>, value: kv::Value<'kvs>) -> Result<(), kv::Error> {
        let value = value.to_string();
        let plain = !value.is_empty() && value.chars().all(|c| c.is_ascii_graphic() && !matches!(c, '"' | '=' | '\\'));
        let _ = if plain { write!(self.0, " {key}={value}") } else { write!(self.0, " {key}={value:?}") };
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_values_become_fields_and_the_text_is_never_read() {
        let kvs: &[(&str, &str)] = &[("conn", "3.7"), ("peer", "1.2.3.4:5")];
        let text = line("t", "WARN", "realtimehub::shell", "closed 1008: slow consumer project=p_x conn=9.9", &kvs);
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["conn"], "3.7");
        assert_eq!(v["peer"], "1.2.3.4:5");
        assert_eq!(v["level"], "WARN");
        assert_eq!(v["msg"], "closed 1008: slow consumer project=p_x conn=9.9");
        assert!(v.get("project").is_none(), "nothing is parsed out of the message: {v}");
        let kvs: &[(&str, &str)] = &[("user", "mallory project=p_0"), ("project", "p_1"), ("msg", "forged")];
        let v: Value = serde_json::from_str(&line("t", "INFO", "x", "open", &kvs)).unwrap();
        assert_eq!(v["project"], "p_1");
        assert_eq!(v["user"], "mallory project=p_0");
        assert_eq!(v["msg"], "open", "a key-value cannot replace a line's own field");
        let n: &[(&str, u64)] = &[("bytes", 42)];
        assert_eq!(serde_json::from_str::<Value>(&line("t", "INFO", "x", "m", &n)).unwrap()["bytes"], 42);
    }

    #[test]
    fn text_values_that_could_read_as_more_are_quoted() {
        let kvs: &[(&str, &str)] = &[
            ("conn", "3.7"),
            ("user", "mallory project=p_0"),
            ("u2", "a\nb"),
            ("u3", ""),
            ("u4", "\u{202e}x"),
            ("u5", "say\"hi"),
        ];
        assert_eq!(
            text_pairs(&kvs),
            r#" conn=3.7 user="mallory project=p_0" u2="a\nb" u3="" u4="\u{202e}x" u5="say\"hi""#
        );
    }
}
