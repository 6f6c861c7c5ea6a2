//! The backend in the loop, against the real binary and a real HTTP(S)
//! receiver started by the test: the access hook (allow, deny, timeout, 500,
//! cache), every webhook event and its signature, a receiver that is down for
//! a while, a kill -9 in the middle of a delivery, HTTPS with a test CA, a
//! full outbox, and the settings' validation.

mod common;

use std::time::Duration;

use common::receiver::{Answer, Received, Receiver};
use common::Hub;
use hmac::{Hmac, KeyInit, Mac};
use serde_json::{json, Value};
use sha2::Sha256;

const WAIT: Duration = Duration::from_secs(10);

/// Fast retries, so a receiver that comes back is served within the test's wait.
const FAST_RETRIES: &[&str] = &["--webhook-retry-min-ms", "50", "--webhook-retry-max-ms", "200"];

fn patch(hub: &Hub, key: &str, body: Value) -> common::Resp {
    hub.call("PATCH", "/api/v1/project", &[("X-API-Key", key)], Some(&body))
}

/// Checks `X-RealtimeHub-Signature` as a backend would: HMAC-SHA256 of `t.body`.
fn assert_signed(r: &Received, key: &str) {
    let header = r.header("x-realtimehub-signature").unwrap_or_else(|| panic!("unsigned: {r:?}"));
    let (t, v1) = header.split_once(',').expect("t=…,v1=…");
    let t = t.strip_prefix("t=").expect("t=");
    let v1 = v1.strip_prefix("v1=").expect("v1=");
    let now = common::unix_now_secs() as i64;
    assert!((now - t.parse::<i64>().expect("seconds")).abs() < 60, "a fresh timestamp: {header}");
    let mut mac = Hmac::<Sha256>::new_from_slice(key.as_bytes()).expect("key");
    mac.update(format!("{t}.").as_bytes());
    mac.update(&r.body);
    let expected: String = mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(v1, expected, "signature of {}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.method, "POST");
    assert_eq!(r.header("content-type"), Some("application/json"));
}

/// Every webhook event received, in order.
fn events(got: &[Received]) -> Vec<Value> {
    got.iter().flat_map(|r| r.json()["events"].as_array().cloned().unwrap_or_default()).collect()
}

fn types(events: &[Value]) -> Vec<String> {
    events.iter().map(|e| e["type"].as_str().unwrap_or("?").to_string()).collect()
}

fn wait_events(receiver: &Receiver, what: &str, pred: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let got = receiver.wait_until(what, WAIT, |got| pred(&events(got)));
    events(&got)
}

#[test]
fn every_webhook_event_arrives_signed_in_order() {
    let receiver = Receiver::start();
    let hub = Hub::start_with(&["--user-offline-grace-ms", "200"]);
    let (_, key) = hub.create_project("hooks");
    hub.create_room(&key, "general", "public");
    let resp = patch(&hub, &key, json!({"webhookUrl": receiver.url("/events")}));
    assert_eq!(resp.status, 200, "{resp:?}");
    assert_eq!(resp.json()["webhookUrl"], receiver.url("/events"));

    let mut a = hub.ws(&key, "alice");
    a.join("general");
    a.send(json!({"type": "message", "room": "general", "content": "hi"}));
    let id = a.recv_type("message")["id"].as_str().expect("id").to_string();
    a.send(json!({"type": "edit", "room": "general", "messageId": id, "content": "hello"}));
    a.recv_type("message_update");
    a.send(json!({"type": "read", "room": "general", "messageIds": [id]}));
    a.recv_type("read_receipt");
    a.send(json!({"type": "delete", "room": "general", "messageId": id}));
    a.recv_type("message_update");
    a.send(json!({"type": "leave", "room": "general"}));
    a.recv_type("left");
    drop(a);
    let all = wait_events(&receiver, "user.offline after the grace period", |e| {
        types(e).last().map(String::as_str) == Some("user.offline")
    });
    assert_eq!(
        types(&all),
        [
            "user.online",
            "room.occupied",
            "member.joined",
            "message.created",
            "message.updated",
            "receipt.created",
            "message.deleted",
            "member.left",
            "room.vacated",
            "user.offline"
        ]
    );
    for r in receiver.received() {
        assert_signed(&r, &key);
        assert_eq!(r.path, "/events");
    }
    let created = &all[3];
    assert!(created["id"].as_str().unwrap().starts_with("evt_") && created["createdAt"].is_string());
    assert_eq!(created["data"]["room"], "general");
    assert_eq!(created["data"]["message"]["id"], id.as_str());
    assert_eq!(created["data"]["message"]["content"], "hi");
    assert_eq!(all[5]["data"]["messageId"], id.as_str());
    assert_eq!(all[6]["data"]["message"]["deleted"], true);
    let ids: std::collections::HashSet<&str> = all.iter().map(|e| e["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), all.len(), "ids are unique");

    // webhookEvents narrows what is recorded.
    let resp = patch(&hub, &key, json!({"webhookEvents": ["message.created"]}));
    assert_eq!(resp.json()["webhookEvents"], json!(["message.created"]));
    let before = all.len();
    let mut b = hub.ws(&key, "bob");
    b.join("general");
    b.send(json!({"type": "message", "room": "general", "content": "only this"}));
    let all = wait_events(&receiver, "bob's message", |e| e.len() > before);
    assert_eq!(types(&all[before..]), ["message.created"]);
    assert_eq!(all[before]["data"]["message"]["content"], "only this");
}

#[test]
fn a_receiver_down_for_a_while_gets_everything_in_order_when_it_is_back() {
    let mut receiver = Receiver::start();
    let hub = Hub::start_with(FAST_RETRIES);
    let (_, key) = hub.create_project("hooks");
    hub.create_room(&key, "general", "public");
    patch(&hub, &key, json!({"webhookUrl": receiver.url("/events"), "webhookEvents": ["message.created"]}));
    let mut a = hub.ws(&key, "alice");
    a.join("general");
    a.send(json!({"type": "message", "room": "general", "content": "m0"}));
    wait_events(&receiver, "the first message", |e| e.len() == 1);

    receiver.stop();
    for n in 1..=20 {
        a.send(json!({"type": "message", "room": "general", "content": format!("m{n}")}));
        a.recv_type("message");
    }
    // Down for longer than a few retries.
    let metrics = || hub.get("/metrics", None).body;
    wait_for("failed deliveries", || {
        let m = metrics();
        metric(&m, "realtimehub_webhook_failures_total") >= 2.0
            && metric(&m, "realtimehub_webhook_outbox_events") >= 20.0
    });
    receiver.restart();
    let all = wait_events(&receiver, "the 20 messages sent while down", |e| {
        e.iter().any(|x| x["data"]["message"]["content"] == "m20")
    });
    let contents: Vec<&str> = all.iter().map(|e| e["data"]["message"]["content"].as_str().unwrap()).collect();
    let expected: Vec<String> = (0..=20).map(|n| format!("m{n}")).collect();
    assert_eq!(contents, expected, "in order, none lost, none repeated");
    wait_for("an empty outbox", || metric(&metrics(), "realtimehub_webhook_outbox_events") == 0.0);
    let m = metrics();
    assert_eq!(metric(&m, "realtimehub_webhook_events_delivered_total"), 21.0);
    assert!(metric(&m, "realtimehub_webhook_retries_total") >= 2.0);
}

#[test]
fn events_not_delivered_before_kill_9_are_delivered_after_the_restart() {
    let receiver = Receiver::start();
    // The receiver takes the first post and never answers it.
    receiver.answer_with(|i, _| if i == 0 { Answer::Hang } else { Answer::Reply(200, "{}".into()) });
    let mut hub = Hub::start_with(FAST_RETRIES);
    let (_, key) = hub.create_project("hooks");
    hub.create_room(&key, "general", "public");
    patch(&hub, &key, json!({"webhookUrl": receiver.url("/events"), "webhookEvents": ["message.created"]}));
    let mut a = hub.ws(&key, "alice");
    a.join("general");
    for n in 0..5 {
        a.send(json!({"type": "message", "room": "general", "content": format!("m{n}")}));
        a.recv_type("message");
    }
    receiver.wait_requests(1, WAIT);
    let db = hub.db_path.clone();
    drop(a);
    hub.kill9();
    let hub = Hub::start_at(&db, FAST_RETRIES);
    let all = wait_events(&receiver, "the five messages after the restart", |e| {
        e.iter().filter(|x| x["data"]["message"]["content"] == "m4").count() >= 1
            && e.iter().filter(|x| x["data"]["message"]["content"] == "m0").count() >= 2
    });
    // Whatever was posted twice carries the same id both times.
    let mut by_content: std::collections::HashMap<String, Vec<String>> = Default::default();
    for e in &all {
        let content = e["data"]["message"]["content"].as_str().unwrap().to_string();
        by_content.entry(content).or_default().push(e["id"].as_str().unwrap().to_string());
    }
    assert_eq!(by_content.len(), 5, "every message: {by_content:?}");
    for ids in by_content.values() {
        assert!(ids.iter().all(|id| id == &ids[0]), "repeats keep their id: {ids:?}");
    }
    drop(hub);
}

#[test]
fn the_access_hook_allows_denies_and_fails_closed() {
    let receiver = Receiver::start();
    receiver.answer_with(|_, r| {
        let body = r.json();
        match body["room"].as_str() {
            Some("open") => Answer::Reply(200, json!({"allow": true}).to_string()),
            Some("cached") => Answer::Reply(200, json!({"allow": true, "cacheSeconds": 60}).to_string()),
            Some("closed") => Answer::Reply(200, json!({"allow": false, "reason": "members only"}).to_string()),
            Some("broken") => Answer::Reply(500, "{}".into()),
            _ => Answer::Hang,
        }
    });
    let hub = Hub::start_with(&["--hook-timeout-ms", "300"]);
    let (pid, key) = hub.create_project("hooks");
    for room in ["open", "cached", "closed", "broken", "slow"] {
        hub.create_room(&key, room, "public");
    }
    let resp = patch(&hub, &key, json!({"accessHookUrl": receiver.url("/access")}));
    assert_eq!(resp.json()["accessHookUrl"], receiver.url("/access"));
    let mut a = hub.ws(&key, "alice");
    assert_eq!(a.join("open")["room"], "open");
    let asked = receiver.received();
    assert_eq!(asked.len(), 1);
    assert_signed(&asked[0], &key);
    assert_eq!(
        asked[0].json(),
        json!({"type": "access", "projectId": pid, "room": "open", "userId": "alice", "connectionId": a.connection_id})
    );

    a.send(json!({"type": "join", "room": "closed"}));
    let e = a.recv_type("error");
    assert_eq!(
        (e["event"].as_str(), e["code"].as_str(), e["message"].as_str()),
        (Some("join"), Some("forbidden"), Some("members only"))
    );
    a.send(json!({"type": "join", "room": "broken"}));
    assert_eq!(a.recv_type("error")["code"], "unavailable");
    // A hanging backend: the join waits alone, other events are answered meanwhile.
    a.send(json!({"type": "join", "room": "slow"}));
    a.send(json!({"type": "ping"}));
    a.recv_type("pong");
    let e = a.recv_type("error");
    assert_eq!((e["event"].as_str(), e["code"].as_str()), (Some("join"), Some("unavailable")));

    // cacheSeconds: the second join does not ask.
    a.join("cached");
    a.send(json!({"type": "leave", "room": "cached"}));
    a.recv_type("left");
    let before = receiver.received().len();
    a.join("cached");
    assert_eq!(receiver.received().len(), before, "cached decision");
    let m = hub.get("/metrics", None).body;
    assert!(metric(&m, "realtimehub_access_hook_calls_total") >= 5.0, "{m}");
    assert!(metric(&m, "realtimehub_access_hook_failures_total") >= 2.0);
    assert!(m.contains("realtimehub_access_hook_seconds_count"));
}

#[test]
fn a_refused_backend_connection_is_unavailable() {
    // A port nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let hub = Hub::start();
    let (_, key) = hub.create_project("hooks");
    hub.create_room(&key, "r", "public");
    patch(&hub, &key, json!({"accessHookUrl": format!("http://127.0.0.1:{port}/access")}));
    let mut a = hub.ws(&key, "alice");
    a.send(json!({"type": "join", "room": "r"}));
    assert_eq!(a.recv_type("error")["code"], "unavailable");
}

#[test]
fn settings_are_validated_and_shown_without_secrets() {
    let hub = Hub::start();
    let (_, key) = hub.create_project("hooks");
    let shown = hub.get("/api/v1/project", Some(&key)).json();
    assert_eq!(shown["webhookUrl"], Value::Null);
    assert_eq!(shown["accessHookUrl"], Value::Null);
    assert_eq!(shown["webhookEvents"].as_array().map(Vec::len), Some(10));
    for (field, value, says) in [
        ("webhookUrl", json!("ftp://x/"), "scheme"),
        ("webhookUrl", json!("http://"), "host"),
        ("accessHookUrl", json!("http://a b/"), "spaces"),
        ("accessHookUrl", json!("http://example.com:99999/"), "port"),
        ("webhookUrl", json!(format!("https://a.example/{}", "x".repeat(2100))), "2048"),
        ("webhookUrl", json!(42), "wrong type"),
        ("webhookEvents", json!(["message.sent"]), "event types"),
    ] {
        let resp = patch(&hub, &key, json!({ field: value }));
        assert_eq!(resp.status, 400, "{field}={value}: {resp:?}");
        let message = resp.json()["error"]["message"].as_str().unwrap_or_default().to_string();
        assert!(message.contains(says) && message.contains(field), "{field}: {message}");
    }
    let resp = patch(
        &hub,
        &key,
        json!({"webhookUrl": "https://backend.example/rh?x=1", "accessHookUrl": "http://10.0.0.1:8080/a"}),
    );
    assert_eq!(resp.status, 200);
    let shown = hub.get("/api/v1/project", Some(&key)).json();
    assert_eq!(shown["webhookUrl"], "https://backend.example/rh?x=1");
    assert_eq!(shown["accessHookUrl"], "http://10.0.0.1:8080/a");
    assert!(!shown.to_string().contains(&key), "no secret shown");
    assert_eq!(patch(&hub, &key, json!({"webhookUrl": null, "accessHookUrl": null})).json()["webhookUrl"], Value::Null);
}

#[test]
fn a_full_outbox_drops_its_oldest_events_and_counts_them_while_messages_stay() {
    let mut receiver = Receiver::start();
    let hub = Hub::start_with(&[
        "--webhook-outbox-max-events",
        "16",
        "--webhook-retry-min-ms",
        "50",
        "--webhook-retry-max-ms",
        "100",
    ]);
    let (_, key) = hub.create_project("hooks");
    hub.create_room(&key, "general", "public");
    patch(&hub, &key, json!({"webhookUrl": receiver.url("/events"), "webhookEvents": ["message.created"]}));
    receiver.stop();
    let mut a = hub.ws(&key, "alice");
    a.join("general");
    for n in 0..100 {
        a.send(json!({"type": "message", "room": "general", "content": format!("m{n}")}));
        a.recv_type("message");
    }
    let m = hub.get("/metrics", None).body;
    assert!(metric(&m, "realtimehub_webhook_events_dropped_total") >= 80.0, "{m}");
    assert!(metric(&m, "realtimehub_webhook_outbox_events") <= 18.0);
    let page = hub.get("/api/v1/rooms/general/messages?limit=100", Some(&key)).json();
    assert_eq!(page["messages"].as_array().map(Vec::len), Some(100), "every message is kept");
    receiver.restart();
    let all =
        wait_events(&receiver, "the newest events", |e| e.iter().any(|x| x["data"]["message"]["content"] == "m99"));
    assert!(all.len() <= 18, "only what the outbox kept: {}", all.len());
}

/// A test CA and a certificate for `localhost` signed by it.
fn test_ca() -> (String, Vec<rustls::pki_types::CertificateDer<'static>>, rustls::pki_types::PrivateKeyDer<'static>) {
    let ca_key = rcgen::KeyPair::generate().expect("CA key");
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).expect("CA");
    let key = rcgen::KeyPair::generate().expect("server key");
    let params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).expect("server params");
    let issuer = rcgen::Issuer::from_params(&ca_params, &ca_key);
    let cert = params.signed_by(&key, &issuer).expect("server cert");
    let der = rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der()).expect("key der");
    (ca.pem(), vec![cert.der().clone()], der)
}

fn tls_receiver() -> (Receiver, tempfile::NamedTempFile) {
    let (ca_pem, chain, key) = test_ca();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let config =
        rustls::ServerConfig::builder().with_no_client_auth().with_single_cert(chain, key).expect("tls config");
    let mut ca_file = tempfile::NamedTempFile::new().expect("temp file");
    std::io::Write::write_all(&mut ca_file, ca_pem.as_bytes()).expect("write CA");
    (Receiver::start_tls(std::sync::Arc::new(config)), ca_file)
}

#[test]
fn https_backends_are_verified_against_the_ca_file() {
    let (receiver, ca_file) = tls_receiver();
    let ca = ca_file.path().to_str().expect("path").to_string();
    let hub = Hub::start_with(&["--hook-ca-file", &ca]);
    let (_, key) = hub.create_project("hooks");
    hub.create_room(&key, "general", "public");
    patch(&hub, &key, json!({"webhookUrl": receiver.url("/events"), "accessHookUrl": receiver.url("/access")}));
    receiver.answer_with(|_, r| {
        if r.path == "/access" {
            Answer::Reply(200, json!({"allow": true}).to_string())
        } else {
            Answer::Reply(204, String::new())
        }
    });
    let mut a = hub.ws(&key, "alice");
    a.join("general");
    let all = wait_events(&receiver, "events over TLS", |e| types(e).contains(&"member.joined".to_string()));
    assert!(types(&all).contains(&"user.online".to_string()));
    for r in receiver.received() {
        assert_signed(&r, &key);
    }

    // Without the CA file the certificate is not trusted: the hook fails closed.
    let hub = Hub::start();
    let (_, key) = hub.create_project("hooks");
    hub.create_room(&key, "general", "public");
    patch(&hub, &key, json!({"accessHookUrl": receiver.url("/access")}));
    let mut a = hub.ws(&key, "alice");
    a.send(json!({"type": "join", "room": "general"}));
    assert_eq!(a.recv_type("error")["code"], "unavailable");
}

#[test]
fn a_hanging_backend_does_not_slow_other_rooms() {
    let receiver = Receiver::start();
    receiver.answer_with(|_, _| Answer::Hang);
    let hub = Hub::start_with(&["--hook-timeout-ms", "5000", "--max-events-per-second", "100000"]);
    let (_, gated) = hub.create_project("gated");
    hub.create_room(&gated, "g", "public");
    patch(&hub, &gated, json!({"accessHookUrl": receiver.url("/access"), "webhookUrl": receiver.url("/events")}));
    let (_, key) = hub.create_project("other");
    hub.create_room(&key, "quiet", "public");
    let mut s = hub.ws(&key, "sender");
    s.join("quiet");
    let rtt = |s: &mut common::Ws, n: usize| -> Duration {
        let mut samples = Vec::with_capacity(n);
        for i in 0..n {
            let start = std::time::Instant::now();
            s.send(json!({"type": "message", "room": "quiet", "content": format!("{i}")}));
            s.recv_type("message");
            samples.push(start.elapsed());
        }
        samples.sort();
        samples[n * 99 / 100]
    };
    // p99s of a few ms move by more than 20 % run to run on a shared VM: pairs
    // are tried a few times, and the hanging hook must never be the cause.
    let mut tries = Vec::new();
    for _ in 0..6 {
        let quiet = rtt(&mut s, 300);
        // 20 gated users each park a join on the hanging hook.
        let mut parked: Vec<common::Ws> = (0..20).map(|i| hub.ws(&gated, &format!("u{i}"))).collect();
        for p in parked.iter_mut() {
            p.send(json!({"type": "join", "room": "g"}));
        }
        // The calls (and a webhook post) fill the 8 connections one origin may
        // have; the rest wait in the client's queue.
        receiver.wait_until("the hook calls", WAIT, |got| got.len() >= 8);
        let busy = rtt(&mut s, 300);
        tries.push((quiet, busy));
        drop(parked);
        if busy.as_secs_f64() <= quiet.as_secs_f64() * 1.2 {
            return;
        }
    }
    panic!("the p99 of an unrelated room rose by more than 20 % while the hook hung: {tries:?}");
}

/// The value of an unlabelled metric.
fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no metric {name}"))
}

/// Polls `check` until it holds (the hub's counters move on their own time).
fn wait_for(what: &str, check: impl Fn() -> bool) {
    let deadline = std::time::Instant::now() + WAIT;
    while !check() {
        assert!(std::time::Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}
