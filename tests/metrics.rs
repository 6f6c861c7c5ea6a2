//! `GET /metrics` against the real binary: the admin token guards it, the text is valid
//! Prometheus exposition, and the series move with real traffic, per project where labelled.

mod common;

use common::Hub;
use serde_json::json;
use std::collections::HashMap;
use std::time::{Duration, Instant};

const ADMIN: &str = "metrics-admin-token";

/// Every sample of an exposition text, `name{labels}` → value; panics on a malformed line.
fn parse(text: &str) -> HashMap<String, f64> {
    let mut samples = HashMap::new();
    for line in text.lines().filter(|l| !l.is_empty()) {
        if let Some(comment) = line.strip_prefix("# ") {
            assert!(comment.starts_with("HELP ") || comment.starts_with("TYPE "), "comment line {line:?}");
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("sample without a value: {line:?}"));
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            v => v.parse().unwrap_or_else(|_| panic!("bad value in {line:?}")),
        };
        let name = series.split('{').next().unwrap_or_default();
        assert!(
            !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "bad metric name in {line:?}"
        );
        assert!(samples.insert(series.to_string(), value).is_none(), "duplicate series {series}");
    }
    samples
}

fn scrape(hub: &Hub) -> HashMap<String, f64> {
    let resp = hub.call("GET", "/metrics", &[("Authorization", &format!("Bearer {ADMIN}"))], None);
    assert_eq!(resp.status, 200, "{resp:?}");
    let content_type = resp.header("content-type").unwrap_or_default().to_string();
    assert!(content_type.starts_with("text/plain"), "content type {content_type}");
    parse(&resp.body)
}

fn value(samples: &HashMap<String, f64>, series: &str) -> f64 {
    samples.get(series).copied().unwrap_or_else(|| panic!("no series {series}"))
}

/// Scrapes until `cond` holds (the hub counts a closed connection when its loop sees it).
fn scrape_until(hub: &Hub, what: &str, cond: impl Fn(&HashMap<String, f64>) -> bool) -> HashMap<String, f64> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let samples = scrape(hub);
        if cond(&samples) {
            return samples;
        }
        assert!(Instant::now() < deadline, "metrics never showed {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn metrics_need_the_admin_token_and_follow_traffic_per_project() {
    let hub = Hub::start_with(&["--admin-token", ADMIN]);
    for auth in [None, Some("Bearer wrong")] {
        let headers: Vec<(&str, &str)> = auth.map(|a| ("Authorization", a)).into_iter().collect();
        let resp = hub.call("GET", "/metrics", &headers, None);
        assert_eq!(resp.status, 401, "{auth:?}: {resp:?}");
        assert_eq!(resp.json()["error"]["code"], "unauthorized");
    }
    let before = scrape(&hub);
    assert_eq!(value(&before, "realtimehub_connections"), 0.0);
    assert_eq!(value(&before, "realtimehub_projects"), 0.0);

    let (busy_id, busy) = hub.create_project_with_admin("busy", ADMIN);
    let (quiet_id, _) = hub.create_project_with_admin("quiet", ADMIN);
    hub.create_room(&busy, "general", "public");
    hub.create_room(&busy, "other", "public");
    let mut alice = hub.ws(&busy, "alice");
    let mut bob = hub.ws(&busy, "bob");
    alice.join("general");
    bob.join("general");
    for i in 0..3 {
        alice.send(json!({ "type": "message", "room": "general", "content": format!("m{i}") }));
        alice.recv_type("message");
        bob.recv_type("message");
    }
    alice.send(json!({ "type": "join", "room": "missing" }));
    assert_eq!(alice.recv_type("error")["code"], "not_found");

    let during = scrape(&hub);
    assert_eq!(value(&during, "realtimehub_connections"), 2.0);
    assert_eq!(value(&during, "realtimehub_projects"), 2.0);
    assert_eq!(value(&during, "realtimehub_rooms"), 2.0);
    assert_eq!(value(&during, &format!("realtimehub_project_connections{{project=\"{busy_id}\"}}")), 2.0);
    assert_eq!(value(&during, &format!("realtimehub_project_connections{{project=\"{quiet_id}\"}}")), 0.0);
    // 2 joins + 3 messages + 1 refused join came in; each message went out twice.
    let busy_in = value(&during, &format!("realtimehub_project_messages_in_total{{project=\"{busy_id}\"}}"));
    let busy_out = value(&during, &format!("realtimehub_project_messages_out_total{{project=\"{busy_id}\"}}"));
    assert_eq!(busy_in, 6.0);
    assert!(busy_out >= 6.0 + 1.0, "messages out {busy_out}");
    assert_eq!(value(&during, &format!("realtimehub_project_messages_in_total{{project=\"{quiet_id}\"}}")), 0.0);
    assert_eq!(value(&during, "realtimehub_messages_in_total"), busy_in);
    assert!(value(&during, "realtimehub_messages_out_total") >= busy_out);
    assert!(value(&during, "realtimehub_bytes_in_total") > value(&before, "realtimehub_bytes_in_total"));
    assert!(value(&during, "realtimehub_bytes_out_total") > value(&before, "realtimehub_bytes_out_total"));
    assert_eq!(value(&during, "realtimehub_errors_total{code=\"not_found\"}"), 1.0);
    assert!(value(&during, "realtimehub_http_responses_total{status=\"201\"}") >= 4.0);
    // Histograms: cumulative buckets ending in +Inf == count; commits of the writes above.
    for histogram in ["realtimehub_commit_seconds", "realtimehub_loop_iteration_seconds"] {
        let count = value(&during, &format!("{histogram}_count"));
        assert!(count >= 3.0, "{histogram}_count {count}");
        assert_eq!(value(&during, &format!("{histogram}_bucket{{le=\"+Inf\"}}")), count);
        let mut buckets: Vec<(f64, f64)> = during
            .iter()
            .filter_map(|(k, v)| {
                let le = k.strip_prefix(&format!("{histogram}_bucket{{le=\""))?.strip_suffix("\"}")?;
                Some((if le == "+Inf" { f64::INFINITY } else { le.parse().ok()? }, *v))
            })
            .collect();
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        assert!(buckets.windows(2).all(|w| w[0].1 <= w[1].1), "{histogram} buckets not cumulative: {buckets:?}");
    }

    bob.close();
    let after = scrape_until(&hub, "one connection left", |s| s.get("realtimehub_connections") == Some(&1.0));
    assert_eq!(value(&after, &format!("realtimehub_project_connections{{project=\"{busy_id}\"}}")), 1.0);
    drop(alice);
}
