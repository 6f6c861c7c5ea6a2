//! One JSON object per log line (`--log-format json`), for log pipelines.
//!
//! Log messages in this crate name their connection and project as `conn=ID`
//! and `project=ID`; those become fields of their own so lines can be
//! filtered by connection or tenant without parsing the text.

use serde_json::{Map, Value};

/// Builds one log line: `{"ts","level","target","msg","conn"?,"project"?}`.
pub fn line(ts: &str, level: &str, target: &str, msg: &str) -> String {
    let mut fields = Map::new();
    fields.insert("ts".into(), Value::from(ts));
    fields.insert("level".into(), Value::from(level));
    fields.insert("target".into(), Value::from(target));
    fields.insert("msg".into(), Value::from(msg));
    for word in msg.split_whitespace() {
        for key in ["conn", "project"] {
            if let Some(value) = word.strip_prefix(key).and_then(|rest| rest.strip_prefix('=')) {
                fields.entry(key).or_insert_with(|| Value::from(value.trim_end_matches([',', ':', ';'])));
            }
        }
    }
    Value::Object(fields).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_become_fields() {
        let text = line("t", "WARN", "realtimehub::shell", "conn=3.7 peer=1.2.3.4:5 closed 1008: slow consumer");
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["conn"], "3.7");
        assert_eq!(v["level"], "WARN");
        assert_eq!(v["msg"], "conn=3.7 peer=1.2.3.4:5 closed 1008: slow consumer");
        assert!(v.get("project").is_none());
        let v: Value = serde_json::from_str(&line("t", "INFO", "x", "project created id=p_1 project=p_1")).unwrap();
        assert_eq!(v["project"], "p_1");
    }
}
