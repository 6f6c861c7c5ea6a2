//! The command line as a newcomer meets it, against the real binary: start-up failures
//! exit with the status the README documents and say why exactly once, before any
//! warning.
//!
//! Every run of the binary is bounded: it is killed after 10 s.

use serde_json::Value;
use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// What one run of the binary printed, and how it ended.
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// Runs the binary with `args` in an environment holding only `envs` (so no `PORT`,
/// `REALTIMEHUB_ADMIN_TOKEN` or `RUST_LOG` of the test run leaks in); killed after 10 s.
fn run_binary(args: &[&str], envs: &[(&str, &str)]) -> Run {
    let mut child = Command::new(env!("CARGO_BIN_EXE_realtimehub"))
        .args(args)
        .env_clear()
        .envs(envs.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning the realtimehub binary");
    let mut out = child.stdout.take().expect("piped stdout");
    let mut err = child.stderr.take().expect("piped stderr");
    let out_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().expect("polling the child") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("`realtimehub {}` did not exit within 10 s", args.join(" "));
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Run {
        code: status.code(),
        stdout: out_reader.join().expect("stdout reader"),
        stderr: err_reader.join().expect("stderr reader"),
    }
}

/// Safe values for the flags a misbehaving binary would use if it started anyway.
const SAFE: [&str; 4] = ["--host", "127.0.0.1", "--port", "0"];

/// Asserts the run ended with `code` and printed no ready line, and that stderr holds
/// exactly one line mentioning `needle`, its last, after nothing but `INFO` lines (the
/// database's migrations) and no admin-token warning; returns that line.
#[track_caller]
fn assert_one_error(run: &Run, code: i32, needle: &str) -> String {
    assert_eq!(run.code, Some(code), "exit status; stderr: {:?}", run.stderr);
    assert!(!run.stdout.contains("listening on"), "the hub started anyway: {:?}", run.stdout);
    assert!(!run.stderr.contains("admin-token"), "an admin-token warning before the error: {:?}", run.stderr);
    let lines: Vec<&str> = run.stderr.lines().collect();
    let mentions = lines.iter().filter(|line| line.contains(needle)).count();
    assert_eq!(mentions, 1, "stderr should hold the error about {needle:?} once: {:?}", run.stderr);
    let (last, before) = lines.split_last().expect("stderr has a line");
    assert!(last.contains(needle), "the error about {needle:?} is not the last line: {:?}", run.stderr);
    for line in before {
        assert!(line.contains(" INFO "), "only INFO lines may come before the error: {line:?}");
    }
    last.to_string()
}

#[test]
fn an_unusable_database_exits_2_with_the_error_once() {
    let db = "/nonexistent/dir/x.db";
    let args = [&SAFE[..], &["--db", db]].concat();
    // As a newcomer runs it: RUST_LOG unset, so the default `info` shows warnings too.
    // The database is the first thing checked, so its error is all there is.
    let run = run_binary(&args, &[]);
    let line = assert_one_error(&run, 2, db);
    assert_eq!(run.stderr.lines().count(), 1, "nothing but the error: {:?}", run.stderr);
    assert!(line.starts_with("realtimehub: "), "{line:?}");
    // RUST_LOG cannot hide why the hub did not start.
    assert_one_error(&run_binary(&args, &[("RUST_LOG", "off")]), 2, db);
    // With a JSON log, the error is one JSON object like every other line.
    let line = assert_one_error(&run_binary(&args, &[("REALTIMEHUB_LOG_FORMAT", "json")]), 2, db);
    let v: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line:?}"));
    assert_eq!(v["level"], "ERROR", "{line}");
    assert!(v["msg"].as_str().is_some_and(|m| m.contains(db)), "{line}");
}

#[test]
fn a_taken_port_exits_2_with_the_error_once() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("binding a port to occupy");
    let port = taken.local_addr().expect("local addr").port().to_string();
    let run = run_binary(&["--host", "127.0.0.1", "--port", &port, "--db", ":memory:"], &[]);
    assert_one_error(&run, 2, &format!("127.0.0.1:{port}"));
}

#[test]
fn a_bad_value_exits_2_with_the_error_once() {
    let run = run_binary(&[&SAFE[..], &["--db", ":memory:", "--max-connections", "0"]].concat(), &[]);
    assert_one_error(&run, 2, "--max-connections");
}
