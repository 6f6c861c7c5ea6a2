//! The command line as a newcomer meets it, against the real binary: `--help` and the
//! README's configuration table list the same flags and environment variables (both are
//! parsed, so a flag added to one and not the other fails here), start-up failures exit
//! with the documented status and say why exactly once, and the admin-token warning
//! names everything the token guards.
//!
//! Every run of the binary is bounded: it is killed after 10 s, and log lines are
//! awaited for at most 5 s.

mod common;

use common::{run_binary, Hub, Run};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::mpsc::RecvTimeoutError;
use std::time::{Duration, Instant};

/// Flags with their environment variable, and variables that have no flag.
#[derive(Debug, Default)]
struct Listed {
    flags: BTreeMap<String, Option<String>>,
    env_only: BTreeSet<String>,
}

impl Listed {
    fn add_flag(&mut self, flag: &str, env: Option<&str>, source: &str) {
        let previous = self.flags.insert(flag.to_string(), env.map(str::to_string));
        assert!(previous.is_none(), "{source} lists {flag} twice");
    }

    fn add_env_only(&mut self, env: &str, source: &str) {
        assert!(self.env_only.insert(env.to_string()), "{source} lists {env} twice");
    }
}

/// `HOST`, `REALTIMEHUB_DB`, `RUST_LOG`: how an environment variable is spelled.
fn is_env_name(word: &str) -> bool {
    word.starts_with(|c: char| c.is_ascii_uppercase())
        && word.chars().all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
}

/// The rows of `--help`: an indented line starting with `--flag`, then its variable if it
/// has one; an indented line starting with a variable is one without a flag. `--help`
/// itself is left out, since the README describes it in prose.
fn parse_help(text: &str) -> Listed {
    let mut listed = Listed::default();
    for line in text.lines().filter(|line| line.starts_with("  ")) {
        let mut words = line.split_whitespace();
        let Some(first) = words.next() else { continue };
        if first == "--help" {
            continue;
        }
        if first.starts_with("--") {
            listed.add_flag(first, words.next().filter(|w| is_env_name(w)), "--help");
        } else if is_env_name(first) {
            listed.add_env_only(first, "--help");
        }
    }
    listed
}

/// The README's configuration table: the table under `## Configuration` whose header
/// starts `| flag | environment variable |`; each row `| `--flag` | `ENV` | ... |`, or
/// `| — | `ENV` | ... |` for a variable without a flag.
fn parse_readme(text: &str) -> Listed {
    let code = |cell: &str| cell.trim().strip_prefix('`').and_then(|c| c.strip_suffix('`')).map(str::to_string);
    let section = text
        .split("\n## ")
        .find(|section| section.starts_with("Configuration\n"))
        .expect("README.md has a `## Configuration` section");
    let mut listed = Listed::default();
    let mut in_table = false;
    for line in section.lines() {
        let Some(row) = line.trim().strip_prefix('|') else {
            in_table = false;
            continue;
        };
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        if cells.len() < 2 {
            continue;
        }
        if cells[0] == "flag" && cells[1] == "environment variable" {
            in_table = true;
            continue;
        }
        if !in_table || cells[0].starts_with("---") {
            continue;
        }
        let env = code(cells[1]);
        match code(cells[0]) {
            Some(flag) if flag.starts_with("--") => {
                listed.add_flag(&flag, env.as_deref().filter(|e| is_env_name(e)), "README.md");
            }
            _ if ["—", "-", ""].contains(&cells[0]) => {
                let env = env.unwrap_or_else(|| panic!("README row without a flag names no variable: {line:?}"));
                listed.add_env_only(&env, "README.md");
            }
            _ => panic!("README configuration row not understood (want `--flag` or —): {line:?}"),
        }
    }
    listed
}

#[test]
fn help_and_readme_list_the_same_flags_and_variables() {
    let run = run_binary(&["--help"], &[]);
    assert_eq!(run.code, Some(0), "--help exit status; stderr: {:?}", run.stderr);
    assert!(run.stdout.lines().any(|l| l.trim_start().starts_with("--help ")), "--help lists itself: {}", run.stdout);
    let help = parse_help(&run.stdout);
    let readme_text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).expect("README.md");
    let readme = parse_readme(&readme_text);
    assert!(help.flags.len() > 10, "too few flags parsed from --help, has its layout changed? {help:?}");
    assert!(readme.flags.len() > 10, "too few flags parsed from README.md, has the table changed? {readme:?}");

    let mut problems = Vec::new();
    for (flag, env) in &help.flags {
        match readme.flags.get(flag) {
            None => problems.push(format!("{flag} is in --help but not in the README table")),
            Some(readme_env) if readme_env != env => {
                problems.push(format!("{flag}: --help says {env:?}, the README {readme_env:?}"))
            }
            Some(_) => {}
        }
    }
    for flag in readme.flags.keys().filter(|flag| !help.flags.contains_key(*flag)) {
        problems.push(format!("{flag} is in the README table but not in --help"));
    }
    for env in help.env_only.symmetric_difference(&readme.env_only) {
        let (with, without) = if help.env_only.contains(env) { ("--help", "README") } else { ("README", "--help") };
        problems.push(format!("{env} (no flag) is in {with} but not in {without}"));
    }
    assert!(problems.is_empty(), "--help and README.md disagree:\n  {}", problems.join("\n  "));
}

#[test]
fn help_says_what_the_admin_token_guards() {
    let run = run_binary(&["--help"], &[]);
    let row = run.stdout.lines().find(|l| l.trim_start().starts_with("--admin-token ")).expect("--admin-token row");
    for guarded in ["project creation", "/stats", "/metrics"] {
        assert!(row.contains(guarded), "--admin-token help does not name {guarded}: {row:?}");
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

#[test]
fn the_open_admin_warning_names_everything_it_leaves_open() {
    let (_hub, lines) = Hub::start_with_stderr(&[], "warn");
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut seen = Vec::new();
    let warning = loop {
        match lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(line) if line.contains("--admin-token") => break line,
            Ok(line) => seen.push(line),
            Err(RecvTimeoutError::Timeout) => panic!("no admin-token warning within 5 s; got {seen:#?}"),
            Err(RecvTimeoutError::Disconnected) => panic!("stderr closed before the admin-token warning: {seen:#?}"),
        }
    };
    for guarded in ["projects", "/stats", "/metrics"] {
        assert!(warning.contains(guarded), "the warning does not name {guarded}: {warning:?}");
    }
}
