//! `--log-format json` against the real binary: with `RUST_LOG=debug`, every line the hub
//! writes to stderr is one JSON object with `ts`, `level`, `target` and `msg`, and lines
//! about a connection carry its id as a `conn` field. Those fields are structured, never read
//! back out of the message, so a user id cannot forge them; in the text format user input is
//! quoted.
//!
//! Every wait is bounded: log lines are awaited for at most 5 s, the exit for 10 s.

mod common;

use common::Hub;
use serde_json::Value;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

/// Parses one stderr line, asserting the documented shape; returns the object.
#[track_caller]
fn parse_line(line: &str) -> Value {
    let v: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("log line is not JSON ({e}): {line:?}"));
    let obj = v.as_object().unwrap_or_else(|| panic!("log line is not a JSON object: {line:?}"));
    for field in ["ts", "level", "target", "msg"] {
        let s = obj.get(field).and_then(Value::as_str);
        assert!(s.is_some_and(|s| !s.is_empty()), "`{field}` is not a non-empty string: {line:?}");
    }
    let ts = v["ts"].as_str().unwrap_or_default();
    let shape = "dddd-dd-ddTdd:dd:dd.dddZ";
    let ts_ok = ts.len() == shape.len()
        && ts.bytes().zip(shape.bytes()).all(|(c, p)| if p == b'd' { c.is_ascii_digit() } else { c == p });
    assert!(ts_ok, "`ts` is not RFC 3339 UTC with milliseconds: {line:?}");
    let level = v["level"].as_str().unwrap_or_default();
    assert!(["ERROR", "WARN", "INFO", "DEBUG", "TRACE"].contains(&level), "`level` {level:?}: {line:?}");
    for field in ["conn", "project"] {
        if let Some(id) = obj.get(field) {
            assert!(id.as_str().is_some_and(|s| !s.is_empty()), "`{field}` is not a non-empty string: {line:?}");
        }
    }
    v
}

/// Reads lines until one satisfies `pred` (5 s); returns every line read, that one last.
fn lines_until(lines: &Receiver<String>, what: &str, pred: impl Fn(&Value) -> bool) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut seen = Vec::new();
    loop {
        match lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(line) => {
                let found = pred(&parse_line(&line));
                seen.push(line);
                if found {
                    return seen;
                }
            }
            Err(RecvTimeoutError::Timeout) => panic!("no log line {what} within 5 s; got {seen:#?}"),
            Err(RecvTimeoutError::Disconnected) => panic!("stderr closed before a log line {what}; got {seen:#?}"),
        }
    }
}

#[test]
fn json_log_lines_are_objects_and_name_the_connection() {
    let (mut hub, lines) = Hub::start_with_stderr(&["--log-format", "json"], "debug");
    let (_, key) = hub.create_project("logs");
    let ws = hub.ws(&key, "alice");
    let conn = ws.connection_id.clone();
    ws.close();

    // The shell logs the connection's removal once the close is done.
    let is_removal = |v: &Value| v["conn"] == conn.as_str() && v["msg"].as_str().is_some_and(|m| m.contains("removed"));
    let mut all = lines_until(&lines, &format!("removing conn={conn}"), is_removal);

    let status = hub.terminate();
    assert!(status.success(), "exit status after SIGTERM: {status}");
    // The pipe closes when the hub exits; everything it wrote is in the channel by then.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(line) => all.push(line),
            Err(RecvTimeoutError::Disconnected) => break,
            Err(RecvTimeoutError::Timeout) => panic!("stderr still open 10 s after the hub exited"),
        }
    }

    let parsed: Vec<Value> = all.iter().map(|l| parse_line(l)).collect();
    let about_conn: Vec<&Value> = parsed.iter().filter(|v| v["conn"] == conn.as_str()).collect();
    assert!(about_conn.len() >= 2, "expected accept and removal lines with conn={conn}; got {all:#?}");
    for v in &about_conn {
        // The id is a field of its own, not text to parse back out of the message.
        assert!(v["msg"].as_str().is_some_and(|m| !m.contains("conn=")), "`conn` left in the msg: {v}");
    }
    assert!(parsed.iter().any(|v| v["level"] == "DEBUG"), "RUST_LOG=debug lets debug lines through: {all:#?}");
    assert!(parsed.iter().any(|v| v["level"] == "WARN"), "the no-admin-token warning is a line too: {all:#?}");
}

/// A user id shaped like log fields (issue 17, item 6).
const FORGER: &str = "mallory project=p_0000000000000000 conn=0.0";

#[test]
fn a_user_id_cannot_forge_log_fields() {
    let (mut hub, lines) = Hub::start_with_stderr(&["--log-format", "json"], "debug");
    let (project, key) = hub.create_project("forge");
    let ws = hub.ws(&key, FORGER);
    let conn = ws.connection_id.clone();
    ws.close();
    // The hub's own line about the closed session names the user and its real project.
    let is_close = |v: &Value| v["user"] == FORGER && v["msg"] == "closed";
    let seen = lines_until(&lines, "about the forger's closed session", is_close);
    for line in &seen {
        let v = parse_line(line);
        if v["user"] == FORGER {
            assert_eq!(v["project"], project.as_str(), "a user id attributed a line to another project: {line}");
            assert_eq!(v["conn"], conn.as_str(), "a user id named another connection: {line}");
        }
        assert_ne!(v["project"], "p_0000000000000000", "forged project field: {line}");
        assert_ne!(v["conn"], "0.0", "forged conn field: {line}");
    }
    assert!(hub.terminate().success());
}

#[test]
fn text_logs_quote_user_ids() {
    let (mut hub, lines) = Hub::start_with_stderr(&[], "debug");
    let (project, key) = hub.create_project("quoted");
    let ws = hub.ws(&key, FORGER);
    let quoted = format!("user={FORGER:?}");
    let deadline = Instant::now() + Duration::from_secs(5);
    let line = loop {
        match lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(line) if line.contains("] open ") => break line,
            Ok(_) => continue,
            Err(e) => panic!("no text line about the open within 5 s: {e}"),
        }
    };
    assert!(line.contains(&quoted), "user id not quoted: {line:?}");
    assert!(line.contains(&format!("project={project}")), "{line:?}");
    assert!(!line.contains(&format!("user={FORGER}")), "user id unquoted: {line:?}");
    ws.close();
    assert!(hub.terminate().success());
}
