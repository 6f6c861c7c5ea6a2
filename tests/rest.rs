//! REST/HTTP integration tests against the real binary: every endpoint of the contract
//! (`/work/shared/PROTOCOL.md` and the project's documented decisions), every error status,
//! keep-alive and pipelining, malformed and hostile requests, restart with data intact,
//! and tenant isolation.
//!
//! Every wait is bounded: HTTP reads time out (10 s in the harness, shorter where a test
//! waits for a close), WebSocket frames are awaited for at most 5 s, and child processes
//! spawned directly are killed after 10 s.

mod common;

use common::{Http, Hub, Resp};
use serde_json::{json, Value};
use std::io::{ErrorKind, Read, Write};
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

/// Asserts `resp` is an error with `status` and body exactly `{"error":{"code","message"}}`
/// where `code` is `code` and the message a non-empty string.
#[track_caller]
fn assert_error(resp: &Resp, status: u16, code: &str) {
    assert_eq!(resp.status, status, "expected {status} {code}: {resp:?}");
    assert_error_shape(resp);
    assert_eq!(resp.json()["error"]["code"], code, "error code: {resp:?}");
}

/// Asserts the error body shape only (for statuses whose code the contract leaves open).
#[track_caller]
fn assert_error_shape(resp: &Resp) {
    let v = resp.json();
    assert_keys(&v, &["error"]);
    assert_keys(&v["error"], &["code", "message"]);
    let code = v["error"]["code"].as_str().unwrap_or_else(|| panic!("error.code is not a string: {v}"));
    assert!(!code.is_empty(), "empty error.code: {v}");
    let message = v["error"]["message"].as_str().unwrap_or_else(|| panic!("error.message is not a string: {v}"));
    assert!(!message.is_empty(), "empty error.message: {v}");
    let ct = resp.header("content-type").unwrap_or_default();
    assert!(ct.starts_with("application/json"), "error Content-Type {ct:?}: {resp:?}");
}

/// Asserts that `v` is an object with exactly the keys `keys`.
#[track_caller]
fn assert_keys(v: &Value, keys: &[&str]) {
    let obj = v.as_object().unwrap_or_else(|| panic!("expected a JSON object, got {v}"));
    let mut got: Vec<&str> = obj.keys().map(String::as_str).collect();
    got.sort_unstable();
    let mut want = keys.to_vec();
    want.sort_unstable();
    assert_eq!(got, want, "keys of {v}");
}

/// `^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$`
fn is_rfc3339_ms(s: &str) -> bool {
    let pattern = b"dddd-dd-ddTdd:dd:dd.dddZ";
    s.len() == pattern.len()
        && s.bytes().zip(pattern.iter()).all(|(c, &p)| if p == b'd' { c.is_ascii_digit() } else { c == p })
}

#[track_caller]
fn assert_timestamp(v: &Value) {
    let s = v.as_str().unwrap_or_else(|| panic!("timestamp is not a string: {v}"));
    assert!(is_rfc3339_ms(s), "timestamp {s:?} is not RFC 3339 UTC with milliseconds");
}

#[track_caller]
fn assert_ok(resp: &Resp, status: u16) -> Value {
    assert_eq!(resp.status, status, "{resp:?}");
    let ct = resp.header("content-type").unwrap_or_default();
    assert!(ct.starts_with("application/json"), "Content-Type {ct:?}: {resp:?}");
    resp.json()
}

/// Asserts a message object with exactly the contract's fields and the given values.
#[track_caller]
fn assert_message(m: &Value, room: &str, user: &str, content: &str, seq: u64) {
    assert_keys(m, &["id", "seq", "room", "userId", "content", "contentType", "attachments", "createdAt"]);
    let id = m["id"].as_str().unwrap_or_else(|| panic!("message id is not a string: {m}"));
    assert!(!id.is_empty(), "empty message id: {m}");
    assert_eq!(m["seq"], seq, "seq: {m}");
    assert_eq!(m["room"], room, "room: {m}");
    assert_eq!(m["userId"], user, "userId: {m}");
    assert_eq!(m["content"], content, "content: {m}");
    assert_timestamp(&m["createdAt"]);
}

/// POSTs a text message to `room` as `user`, asserting 201; returns the message JSON.
#[track_caller]
fn post_message(hub: &Hub, key: &str, room: &str, user: &str, content: &str) -> Value {
    let resp =
        hub.post(&format!("/api/v1/rooms/{room}/messages"), Some(key), &json!({"userId": user, "content": content}));
    assert_ok(&resp, 201)
}

/// The `seq`s of a `{"messages":[...]}` answer, asserting 200.
#[track_caller]
fn seqs(resp: &Resp) -> Vec<u64> {
    let v = assert_ok(resp, 200);
    assert_keys(&v, &["messages"]);
    let list = v["messages"].as_array().unwrap_or_else(|| panic!("messages is not an array: {v}"));
    list.iter().map(|m| m["seq"].as_u64().unwrap_or_else(|| panic!("seq not an integer: {m}"))).collect()
}

/// Builds a raw HTTP/1.1 request with Host and (for a body) Content-Length.
fn raw_request(method: &str, path: &str, headers: &[(&str, &str)], body: Option<&str>) -> Vec<u8> {
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n");
    for (k, v) in headers {
        req += &format!("{k}: {v}\r\n");
    }
    if let Some(b) = body {
        req += &format!("Content-Type: application/json\r\nContent-Length: {}\r\n", b.len());
    }
    req += "\r\n";
    req += body.unwrap_or("");
    req.into_bytes()
}

/// Waits (at most `within`) for the server to close the connection: EOF or reset. Panics on
/// a timeout and when bytes other than `allowed_prefix`-led ones arrive. Returns the bytes
/// received before the close and how long it took.
#[track_caller]
fn expect_close(http: &mut Http, within: Duration) -> (Vec<u8>, Duration) {
    let start = Instant::now();
    http.stream.set_read_timeout(Some(within)).expect("set_read_timeout");
    let mut got = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match http.stream.read(&mut chunk) {
            Ok(0) => return (got, start.elapsed()),
            Ok(n) => got.extend_from_slice(&chunk[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted) => {
                return (got, start.elapsed())
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                panic!(
                    "the server did not close the connection within {within:?}; got {:?}",
                    String::from_utf8_lossy(&got)
                )
            }
            Err(e) => panic!("reading while waiting for close: {e}"),
        }
    }
}

/// Asserts the server closes the connection with nothing more sent (after a framing error).
#[track_caller]
fn expect_eof_after_response(http: &mut Http) {
    let (rest, _) = expect_close(http, Duration::from_secs(5));
    assert!(rest.is_empty(), "bytes after the error response: {:?}", String::from_utf8_lossy(&rest));
}

/// Writes `bytes` ignoring errors: the server may answer and close before reading them all.
fn write_ignoring_errors(http: &mut Http, bytes: &[u8]) {
    let _ = http.stream.write_all(bytes);
    let _ = http.stream.flush();
}

/// Runs the binary (see [`common::run_binary`]); (exit code, stdout, stderr).
fn run_binary(args: &[&str], envs: &[(&str, &str)]) -> (Option<i32>, String, String) {
    let run = common::run_binary(args, envs);
    (run.code, run.stdout, run.stderr)
}

// ---------------------------------------------------------------------------------------
// Health and stats
// ---------------------------------------------------------------------------------------

#[test]
fn health_and_server_stats_shapes() {
    let hub = Hub::start();

    let health = assert_ok(&hub.get("/health", None), 200);
    assert_keys(&health, &["status", "uptimeSeconds", "version"]);
    assert_eq!(health["status"], "ok");
    assert!(health["uptimeSeconds"].as_f64().is_some_and(|n| n >= 0.0), "uptimeSeconds: {health}");
    let version = health["version"].as_str().unwrap_or_else(|| panic!("version is not a string: {health}"));
    let parts: Vec<&str> = version.split('.').collect();
    assert_eq!(parts.len(), 3, "version {version:?} is not x.y.z");
    assert!(parts.iter().all(|p| p.parse::<u64>().is_ok()), "version {version:?} is not x.y.z");

    let (_, key) = hub.create_project("Stats");
    hub.create_room(&key, "general", "public");
    post_message(&hub, &key, "general", "alice", "hello");

    let stats = assert_ok(&hub.get("/stats", None), 200);
    assert_keys(
        &stats,
        &["connections", "projects", "rooms", "uptimeSeconds", "messagesIn", "messagesOut", "bytesIn", "bytesOut"],
    );
    for field in ["connections", "messagesIn", "messagesOut", "bytesIn", "bytesOut"] {
        assert!(stats[field].as_u64().is_some(), "{field} is not a non-negative integer: {stats}");
    }
    assert!(stats["uptimeSeconds"].as_f64().is_some_and(|n| n >= 0.0), "uptimeSeconds: {stats}");
    assert_eq!(stats["projects"], 1, "{stats}");
    assert_eq!(stats["rooms"], 1, "{stats}");
}

// ---------------------------------------------------------------------------------------
// Projects and the quick start
// ---------------------------------------------------------------------------------------

#[test]
fn quick_start_creates_project_and_room() {
    let hub = Hub::start();

    // Literally the seed's quick start.
    let resp = hub.http().request(
        "POST",
        "/api/v1/projects",
        &[("Content-Type", "application/json")],
        Some(r#"{"name": "Chat App"}"#),
    );
    let project = assert_ok(&resp, 201);
    assert_keys(&project, &["id", "name", "apiKey", "createdAt"]);
    assert_eq!(project["name"], "Chat App");
    assert!(project["id"].as_str().is_some_and(|s| !s.is_empty()), "id: {project}");
    assert_timestamp(&project["createdAt"]);
    let key = project["apiKey"].as_str().expect("apiKey string").to_string();
    let hex_digits = key.chars().filter(char::is_ascii_hexdigit).count();
    assert!(hex_digits >= 32, "apiKey {key:?} has fewer than 32 hex digits of randomness");

    // A second project gets a different id and key.
    let other = assert_ok(&hub.post("/api/v1/projects", None, &json!({"name": "Chat App"})), 201);
    assert_ne!(other["apiKey"], project["apiKey"], "two projects share an apiKey");
    assert_ne!(other["id"], project["id"], "two projects share an id");

    let resp = hub.http().request(
        "POST",
        "/api/v1/rooms",
        &[("Content-Type", "application/json"), ("X-API-Key", &key)],
        Some(r#"{"name":"general","type":"public"}"#),
    );
    let room = assert_ok(&resp, 201);
    assert_keys(&room, &["id", "name", "type", "createdAt"]);
    assert!(room["id"].as_str().is_some_and(|s| !s.is_empty()), "room id: {room}");
    assert_eq!(room["name"], "general");
    assert_eq!(room["type"], "public");
    assert_timestamp(&room["createdAt"]);

    // Bad project bodies.
    assert_error(&hub.post("/api/v1/projects", None, &json!({})), 400, "bad_request");
    assert_error(&hub.post("/api/v1/projects", None, &json!({"name": 5})), 400, "bad_request");
    let resp = hub.http().request("POST", "/api/v1/projects", &[("Content-Type", "application/json")], Some("{"));
    assert_error(&resp, 400, "bad_request");
}

#[test]
fn admin_token_guards_project_creation_and_stats() {
    let hub = Hub::start_with(&["--admin-token", "T0ken-s3cret"]);
    let body = json!({"name": "Guarded"});

    assert_error(&hub.post("/api/v1/projects", None, &body), 401, "unauthorized");
    let wrong = [("Authorization", "Bearer wrong-token")];
    assert_error(&hub.call("POST", "/api/v1/projects", &wrong, Some(&body)), 401, "unauthorized");
    let basic = [("Authorization", "Basic VDBrZW4tczNjcmV0")];
    assert_error(&hub.call("POST", "/api/v1/projects", &basic, Some(&body)), 401, "unauthorized");

    let right = [("Authorization", "Bearer T0ken-s3cret")];
    let project = assert_ok(&hub.call("POST", "/api/v1/projects", &right, Some(&body)), 201);
    assert_keys(&project, &["id", "name", "apiKey", "createdAt"]);
    let key = project["apiKey"].as_str().expect("apiKey");

    assert_error(&hub.get("/stats", None), 401, "unauthorized");
    assert_error(&hub.call("GET", "/stats", &wrong, None), 401, "unauthorized");
    let stats = assert_ok(&hub.call("GET", "/stats", &right, None), 200);
    assert_eq!(stats["projects"], 1, "{stats}");

    // The project key is not an admin token, and the admin token is not a project key.
    let as_admin = [("Authorization", format!("Bearer {key}"))];
    let as_admin: Vec<(&str, &str)> = as_admin.iter().map(|(k, v)| (*k, v.as_str())).collect();
    assert_error(&hub.call("GET", "/stats", &as_admin, None), 401, "unauthorized");
    assert_error(&hub.get("/api/v1/rooms", Some("T0ken-s3cret")), 401, "unauthorized");

    // Health stays open; project endpoints work with the key alone.
    assert_ok(&hub.get("/health", None), 200);
    hub.create_room(key, "general", "public");
    let rooms = assert_ok(&hub.get("/api/v1/rooms", Some(key)), 200);
    assert_eq!(rooms["rooms"].as_array().map(Vec::len), Some(1), "{rooms}");
}

// ---------------------------------------------------------------------------------------
// Rooms
// ---------------------------------------------------------------------------------------

#[test]
fn rooms_create_list_get_delete_and_validation() {
    let hub = Hub::start();
    let (_, key) = hub.create_project("Rooms");
    let key = key.as_str();

    // Auth.
    assert_error(&hub.get("/api/v1/rooms", None), 401, "unauthorized");
    assert_error(&hub.get("/api/v1/rooms", Some("rh_00000000000000000000000000000000")), 401, "unauthorized");
    let wrong = format!("{}x", &key[..key.len() - 1]);
    assert_error(&hub.get("/api/v1/rooms", Some(&wrong)), 401, "unauthorized");
    assert_error(&hub.post("/api/v1/rooms", None, &json!({"name": "x", "type": "public"})), 401, "unauthorized");
    assert_error(&hub.get("/api/v1/rooms/anything", None), 401, "unauthorized");

    // Empty list.
    let list = assert_ok(&hub.get("/api/v1/rooms", Some(key)), 200);
    assert_eq!(list, json!({"rooms": []}));

    // Create, in non-sorted order; the full name alphabet and a 64-character name are fine.
    let zeta = hub.create_room(key, "zeta", "public");
    let alpha = hub.create_room(key, "Alpha_1-x.y:z", "public");
    let long = "a".repeat(164);
    let long_room = hub.create_room(key, &long, "private");
    assert_eq!(long_room["type"], "private");
    let mid = hub.create_room(key, "mid", "public");

    // Duplicate → 409, whatever the type.
    let dup = hub.post("/api/v1/rooms", Some(key), &json!({"name": "zeta", "type": "public"}));
    assert_error(&dup, 409, "conflict");
    let dup = hub.post("/api/v1/rooms", Some(key), &json!({"name": "zeta", "type": "private"}));
    assert_error(&dup, 409, "conflict");

    // Bad names, types, members, bodies → 400.
    for name in [json!("has space"), json!("a".repeat(165)), json!(""), json!("slash/x"), json!("é"), json!(7)] {
        let resp = hub.post("/api/v1/rooms", Some(key), &json!({"name": name, "type": "public"}));
        assert_error(&resp, 400, "bad_request");
    }
    let resp = hub.post("/api/v1/rooms", Some(key), &json!({"type": "public"}));
    assert_error(&resp, 400, "bad_request");
    let resp = hub.post("/api/v1/rooms", Some(key), &json!({"name": "typed", "type": "secret"}));
    assert_error(&resp, 400, "bad_request");
    let resp = hub.post("/api/v1/rooms", Some(key), &json!({"name": "typed", "type": 1}));
    assert_error(&resp, 400, "bad_request");
    let resp = hub.post("/api/v1/rooms", Some(key), &json!({"name": "pub", "type": "public", "members": ["bob"]}));
    assert_error(&resp, 400, "bad_request");
    let resp = hub.post("/api/v1/rooms", Some(key), &json!({"name": "priv", "type": "private", "members": "bob"}));
    assert_error(&resp, 400, "bad_request");
    let resp = hub.http().request(
        "POST",
        "/api/v1/rooms",
        &[("X-API-Key", key), ("Content-Type", "application/json")],
        Some("not json"),
    );
    assert_error(&resp, 400, "bad_request");
    let resp = hub.http().request("POST", "/api/v1/rooms", &[("X-API-Key", key)], None);
    assert_error(&resp, 400, "bad_request");

    // List: sorted by name (byte order), online 0, only the rooms created above.
    let list = assert_ok(&hub.get("/api/v1/rooms", Some(key)), 200);
    assert_keys(&list, &["rooms"]);
    let rooms = list["rooms"].as_array().expect("rooms array");
    let names: Vec<&str> = rooms.iter().map(|r| r["name"].as_str().expect("name")).collect();
    assert_eq!(names, vec!["Alpha_1-x.y:z", long.as_str(), "mid", "zeta"]);
    for (r, created) in rooms.iter().zip([&alpha, &long_room, &mid, &zeta]) {
        assert_keys(r, &["id", "name", "type", "createdAt", "online"]);
        assert_eq!(r["id"], created["id"], "{r}");
        assert_eq!(r["type"], created["type"], "{r}");
        assert_eq!(r["createdAt"], created["createdAt"], "{r}");
        assert_eq!(r["online"], 0, "{r}");
    }

    // GET one (public: no members).
    let one = assert_ok(&hub.get("/api/v1/rooms/zeta", Some(key)), 200);
    assert_eq!(
        one,
        json!({"id": zeta["id"], "name": "zeta", "type": "public", "createdAt": zeta["createdAt"], "online": 0})
    );
    // A percent-encoded name is the same room.
    let enc = assert_ok(&hub.get("/api/v1/rooms/Alpha_1-x.y%3Az", Some(key)), 200);
    assert_eq!(enc["id"], alpha["id"]);
    assert_error(&hub.get("/api/v1/rooms/nope", Some(key)), 404, "not_found");

    // DELETE → 204, then 404 everywhere.
    let del = hub.delete("/api/v1/rooms/mid", Some(key));
    assert_eq!(del.status, 204, "{del:?}");
    assert_eq!(del.body, "", "204 has no body");
    assert_error(&hub.get("/api/v1/rooms/mid", Some(key)), 404, "not_found");
    assert_error(&hub.delete("/api/v1/rooms/mid", Some(key)), 404, "not_found");
    assert_error(&hub.get("/api/v1/rooms/mid/messages", Some(key)), 404, "not_found");
    let resp = hub.post("/api/v1/rooms/mid/messages", Some(key), &json!({"userId": "u", "content": "c"}));
    assert_error(&resp, 404, "not_found");
    let list = assert_ok(&hub.get("/api/v1/rooms", Some(key)), 200);
    let names: Vec<&str> = list["rooms"].as_array().expect("rooms").iter().filter_map(|r| r["name"].as_str()).collect();
    assert_eq!(names, vec!["Alpha_1-x.y:z", long.as_str(), "zeta"]);

    // The name is free again after the delete.
    let again = hub.create_room(key, "mid", "public");
    assert_ne!(again["id"], mid["id"], "a re-created room reuses the deleted room's id");
}

#[test]
fn private_room_members() {
    let hub = Hub::start();
    let (_, key) = hub.create_project("Members");
    let key = key.as_str();

    let resp = hub.post(
        "/api/v1/rooms",
        Some(key),
        &json!({"name": "secret", "type": "private", "members": ["carol", "alice", "bob"]}),
    );
    let created = assert_ok(&resp, 201);
    assert_keys(&created, &["id", "name", "type", "createdAt"]);
    assert_eq!(created["type"], "private");

    let view = assert_ok(&hub.get("/api/v1/rooms/secret", Some(key)), 200);
    assert_keys(&view, &["id", "name", "type", "createdAt", "online", "members"]);
    assert_eq!(view["members"], json!(["alice", "bob", "carol"]));
    assert_eq!(view["online"], 0);
    assert_eq!(view["id"], created["id"]);

    // The list has no members field.
    let list = assert_ok(&hub.get("/api/v1/rooms", Some(key)), 200);
    assert_keys(&list["rooms"][0], &["id", "name", "type", "createdAt", "online"]);

    // PUT adds (idempotently), DELETE removes (idempotently); both 204 with no body.
    for _ in 0..2 {
        let resp = hub.put("/api/v1/rooms/secret/members/dave", Some(key), None);
        assert_eq!(resp.status, 204, "{resp:?}");
        assert_eq!(resp.body, "");
    }
    let view = assert_ok(&hub.get("/api/v1/rooms/secret", Some(key)), 200);
    assert_eq!(view["members"], json!(["alice", "bob", "carol", "dave"]));
    for _ in 0..2 {
        let resp = hub.delete("/api/v1/rooms/secret/members/alice", Some(key));
        assert_eq!(resp.status, 204, "{resp:?}");
    }
    let view = assert_ok(&hub.get("/api/v1/rooms/secret", Some(key)), 200);
    assert_eq!(view["members"], json!(["bob", "carol", "dave"]));

    // A private room created without members has an empty list.
    hub.create_room(key, "empty-priv", "private");
    let view = assert_ok(&hub.get("/api/v1/rooms/empty-priv", Some(key)), 200);
    assert_eq!(view["members"], json!([]));

    // Membership on a public room → 400; on an unknown room → 404; without a key → 401.
    hub.create_room(key, "open", "public");
    assert_error(&hub.put("/api/v1/rooms/open/members/bob", Some(key), None), 400, "bad_request");
    assert_error(&hub.delete("/api/v1/rooms/open/members/bob", Some(key)), 400, "bad_request");
    assert_error(&hub.put("/api/v1/rooms/ghost/members/bob", Some(key), None), 404, "not_found");
    assert_error(&hub.put("/api/v1/rooms/secret/members/bob", None, None), 401, "unauthorized");
}

// ---------------------------------------------------------------------------------------
// Messages
// ---------------------------------------------------------------------------------------

#[test]
fn messages_post_shape_seq_and_validation() {
    let hub = Hub::start();
    let (_, key) = hub.create_project("Messages");
    let key = key.as_str();
    hub.create_room(key, "general", "public");

    let first = post_message(&hub, key, "general", "alice", "hello");
    assert_message(&first, "general", "alice", "hello", 1);
    assert_eq!(first["contentType"], "text/plain");
    assert_eq!(first["attachments"], json!([]));

    let body = json!({
        "userId": "bob",
        "content": "**hi**",
        "contentType": "text/markdown",
        "attachments": [{"url": "https://x.example/a.png", "size": 3}],
    });
    let second = assert_ok(&hub.post("/api/v1/rooms/general/messages", Some(key), &body), 201);
    assert_message(&second, "general", "bob", "**hi**", 2);
    assert_eq!(second["contentType"], "text/markdown");
    assert_eq!(second["attachments"], json!([{"url": "https://x.example/a.png", "size": 3}]));

    let third = post_message(&hub, key, "general", "alice", "third");
    assert_message(&third, "general", "alice", "third", 3);
    let ids = [&first["id"], &second["id"], &third["id"]];
    assert!(ids[0] != ids[1] && ids[1] != ids[2] && ids[0] != ids[2], "message ids repeat: {ids:?}");

    // Validation errors do not consume a seq.
    let path = "/api/v1/rooms/general/messages";
    assert_error(&hub.post(path, Some(key), &json!({"content": "x"})), 400, "bad_request");
    assert_error(&hub.post(path, Some(key), &json!({"userId": "", "content": "x"})), 400, "bad_request");
    assert_error(&hub.post(path, Some(key), &json!({"userId": 5, "content": "x"})), 400, "bad_request");
    assert_error(&hub.post(path, Some(key), &json!({"userId": "a"})), 400, "bad_request");
    assert_error(&hub.post(path, Some(key), &json!({"userId": "a", "content": 5})), 400, "bad_request");
    assert_error(&hub.post(path, Some(key), &json!({"userId": "a", "content": {"t": 1}})), 400, "bad_request");
    let not_array = json!({"userId": "a", "content": "x", "attachments": "file.png"});
    assert_error(&hub.post(path, Some(key), &not_array), 400, "bad_request");
    let not_array = json!({"userId": "a", "content": "x", "attachments": {"url": "u"}});
    assert_error(&hub.post(path, Some(key), &not_array), 400, "bad_request");
    let headers = [("X-API-Key", key), ("Content-Type", "application/json")];
    let resp = hub.http().request("POST", path, &headers, Some(r#"{"userId":"a","content":"#));
    assert_error(&resp, 400, "bad_request");
    let resp = hub.http().request("POST", path, &headers, Some(""));
    assert_error(&resp, 400, "bad_request");
    let resp = hub.http().request("POST", path, &headers, Some("[1,2]"));
    assert_error(&resp, 400, "bad_request");
    assert_error(&hub.post(path, None, &json!({"userId": "a", "content": "x"})), 401, "unauthorized");
    let resp = hub.post("/api/v1/rooms/nowhere/messages", Some(key), &json!({"userId": "a", "content": "x"}));
    assert_error(&resp, 404, "not_found");

    let fourth = post_message(&hub, key, "general", "carol", "fourth");
    assert_message(&fourth, "general", "carol", "fourth", 4);

    // The stored history returns exactly what the POSTs returned.
    let history = assert_ok(&hub.get(path, Some(key)), 200);
    assert_eq!(history, json!({"messages": [first, second, third, fourth]}));

    // Seqs are per room.
    hub.create_room(key, "other", "public");
    let other = post_message(&hub, key, "other", "alice", "x");
    assert_eq!(other["seq"], 1, "{other}");
}

#[test]
fn message_over_max_content_bytes_is_413() {
    let hub = Hub::start_with(&["--max-content-bytes", "100"]);
    let (_, key) = hub.create_project("Small");
    let key = key.as_str();
    hub.create_room(key, "r", "public");
    let path = "/api/v1/rooms/r/messages";

    let fits = post_message(&hub, key, "r", "u", &"a".repeat(50));
    assert_eq!(fits["seq"], 1);
    let resp = hub.post(path, Some(key), &json!({"userId": "u", "content": "a".repeat(101)}));
    assert_error(&resp, 413, "payload_too_large");
    let resp = hub.post(path, Some(key), &json!({"userId": "u", "content": "a".repeat(5000)}));
    assert_error(&resp, 413, "payload_too_large");
    // Nothing was stored; the next message is seq 2.
    let next = post_message(&hub, key, "r", "u", "ok");
    assert_eq!(next["seq"], 2);
    assert_eq!(seqs(&hub.get(path, Some(key))), vec![1, 2]);

    // The same limit guards REST direct messages.
    let resp = hub.post("/api/v1/users/u/messages", Some(key), &json!({"content": "b".repeat(101)}));
    assert_error(&resp, 413, "payload_too_large");
}

#[test]
fn message_history_paging() {
    let hub = Hub::start();
    let (_, key) = hub.create_project("Paging");
    let key = key.as_str();
    hub.create_room(key, "log", "public");
    let posted: Vec<Value> = (1..=10).map(|i| post_message(&hub, key, "log", "u", &format!("m{i}"))).collect();
    for (i, m) in posted.iter().enumerate() {
        assert_eq!(m["seq"], i as u64 + 1, "{m}");
    }

    let get = |query: &str| hub.get(&format!("/api/v1/rooms/log/messages{query}"), Some(key));
    let all = assert_ok(&get(""), 200);
    assert_eq!(all, json!({"messages": posted}));
    assert_eq!(seqs(&get("?limit=3")), vec![8, 9, 10]);
    assert_eq!(seqs(&get("?before=5&limit=2")), vec![3, 4]);
    assert_eq!(seqs(&get("?before=5")), vec![1, 2, 3, 4]);
    assert_eq!(seqs(&get("?after=7")), vec![8, 9, 10]);
    assert_eq!(seqs(&get("?after=2&limit=3")), vec![3, 4, 5]);
    assert_eq!(seqs(&get("?after=2&before=6")), vec![3, 4, 5]);
    assert_eq!(seqs(&get("?after=10")), Vec::<u64>::new());
    assert_eq!(seqs(&get("?before=1")), Vec::<u64>::new());
    assert_eq!(seqs(&get("?limit=5000")), (1..=10).collect::<Vec<u64>>());
    assert_eq!(seqs(&get("?limit=1000")), (1..=10).collect::<Vec<u64>>());
    assert_eq!(seqs(&get("?limit=1")), vec![10]);

    assert_error(&get("?limit=0"), 400, "bad_request");
    assert_error(&get("?limit=abc"), 400, "bad_request");
    assert_error(&get("?limit=-1"), 400, "bad_request");
    assert_error(&get("?before=x"), 400, "bad_request");
    assert_error(&get("?after=1.5"), 400, "bad_request");
}

#[test]
fn read_receipts_listing() {
    let hub = Hub::start();
    let (_, key) = hub.create_project("Receipts");
    let key = key.as_str();
    hub.create_room(key, "r", "public");
    let m = post_message(&hub, key, "r", "u", "read me");
    let id = m["id"].as_str().expect("id");

    let resp = hub.get(&format!("/api/v1/rooms/r/messages/{id}/receipts"), Some(key));
    assert_eq!(assert_ok(&resp, 200), json!({"receipts": []}));
    let resp = hub.get("/api/v1/rooms/r/messages/m_does_not_exist/receipts", Some(key));
    assert_error(&resp, 404, "not_found");
    // The id of a message in another room is not found in this one.
    hub.create_room(key, "r2", "public");
    let resp = hub.get(&format!("/api/v1/rooms/r2/messages/{id}/receipts"), Some(key));
    assert_error(&resp, 404, "not_found");

    // After a WebSocket `read`, the receipt is listed.
    let mut ws = hub.ws(key, "reader");
    ws.join("r");
    ws.send(json!({"type": "read", "room": "r", "messageIds": [id]}));
    let receipt = ws.recv_type("read_receipt");
    assert_eq!(receipt["messageId"], id, "{receipt}");
    let resp = hub.get(&format!("/api/v1/rooms/r/messages/{id}/receipts"), Some(key));
    let v = assert_ok(&resp, 200);
    assert_keys(&v, &["receipts"]);
    assert_eq!(v["receipts"].as_array().map(Vec::len), Some(1), "{v}");
    assert_keys(&v["receipts"][0], &["userId", "readAt"]);
    assert_eq!(v["receipts"][0]["userId"], "reader");
    assert_timestamp(&v["receipts"][0]["readAt"]);
    assert_eq!(v["receipts"][0]["readAt"], receipt["readAt"]);
}

// ---------------------------------------------------------------------------------------
// Direct messages, presence, project stats
// ---------------------------------------------------------------------------------------

#[test]
fn direct_messages_over_rest() {
    let hub = Hub::start();
    let (_, key) = hub.create_project("Direct");
    let key = key.as_str();

    let resp = hub.post("/api/v1/users/bob/messages", Some(key), &json!({"content": "anyone?"}));
    assert_eq!(assert_ok(&resp, 200), json!({"delivered": 0}));

    let mut bob = hub.ws(key, "bob");
    let resp = hub.post("/api/v1/users/bob/messages", Some(key), &json!({"content": "hi bob"}));
    assert_eq!(assert_ok(&resp, 200), json!({"delivered": 1}));
    let frame = bob.recv_type("direct");
    assert_keys(&frame, &["type", "id", "from", "to", "content", "createdAt"]);
    assert!(frame["id"].as_str().is_some_and(|s| !s.is_empty()), "{frame}");
    assert_eq!(frame["from"], Value::Null);
    assert_eq!(frame["to"], "bob");
    assert_eq!(frame["content"], "hi bob");
    assert_timestamp(&frame["createdAt"]);

    // With `from`, and to two connections of the same user.
    let mut bob2 = hub.ws(key, "bob");
    let resp = hub.post("/api/v1/users/bob/messages", Some(key), &json!({"content": "both", "from": "system"}));
    assert_eq!(assert_ok(&resp, 200), json!({"delivered": 2}));
    for ws in [&mut bob, &mut bob2] {
        let frame = ws.recv_type("direct");
        assert_eq!(frame["from"], "system", "{frame}");
        assert_eq!(frame["content"], "both", "{frame}");
    }

    // Another project's user with the same id receives nothing.
    let (_, other_key) = hub.create_project("Other");
    let resp = hub.post("/api/v1/users/bob/messages", Some(&other_key), &json!({"content": "x"}));
    assert_eq!(assert_ok(&resp, 200), json!({"delivered": 0}));
    bob.expect_silence(100);

    let path = "/api/v1/users/bob/messages";
    assert_error(&hub.post(path, Some(key), &json!({})), 400, "bad_request");
    assert_error(&hub.post(path, Some(key), &json!({"content": 1})), 400, "bad_request");
    assert_error(&hub.post(path, None, &json!({"content": "x"})), 401, "unauthorized");
}

#[test]
fn room_presence_and_project_stats() {
    let hub = Hub::start();
    let (_, key) = hub.create_project("Presence");
    let key = key.as_str();
    hub.create_room(key, "lobby", "public");
    hub.create_room(key, "quiet", "public");

    let presence = assert_ok(&hub.get("/api/v1/rooms/lobby/presence", Some(key)), 200);
    assert_eq!(presence, json!({"room": "lobby", "users": []}));
    let stats = assert_ok(&hub.get("/api/v1/stats", Some(key)), 200);
    assert_keys(&stats, &["connections", "users", "rooms", "messagesIn", "messagesOut"]);
    assert_eq!(stats["connections"], 0, "{stats}");
    assert_eq!(stats["rooms"], 2, "{stats}");
    assert!(stats["messagesIn"].as_u64().is_some() && stats["messagesOut"].as_u64().is_some(), "{stats}");

    let mut carol = hub.ws(key, "carol");
    carol.join("lobby");
    let presence = assert_ok(&hub.get("/api/v1/rooms/lobby/presence", Some(key)), 200);
    assert_eq!(
        presence,
        json!({"room": "lobby", "users": [{"userId": "carol", "status": "online", "connections": 1}]})
    );
    let quiet = assert_ok(&hub.get("/api/v1/rooms/quiet/presence", Some(key)), 200);
    assert_eq!(quiet, json!({"room": "quiet", "users": []}));
    let room = assert_ok(&hub.get("/api/v1/rooms/lobby", Some(key)), 200);
    assert_eq!(room["online"], 1, "{room}");

    let stats = assert_ok(&hub.get("/api/v1/stats", Some(key)), 200);
    assert_keys(&stats, &["connections", "users", "rooms", "messagesIn", "messagesOut"]);
    assert_eq!(stats["connections"], 1, "{stats}");
    assert_eq!(stats["users"], 1, "{stats}");
    assert_eq!(stats["rooms"], 2, "{stats}");

    // Another project's stats don't see carol.
    let (_, other) = hub.create_project("Other");
    let stats = assert_ok(&hub.get("/api/v1/stats", Some(&other)), 200);
    assert_eq!(stats["connections"], 0, "{stats}");
    assert_eq!(stats["users"], 0, "{stats}");
    assert_eq!(stats["rooms"], 0, "{stats}");

    assert_error(&hub.get("/api/v1/rooms/nope/presence", Some(key)), 404, "not_found");
    assert_error(&hub.get("/api/v1/stats", None), 401, "unauthorized");
    carol.close();
}

// ---------------------------------------------------------------------------------------
// Routing, methods, CORS
// ---------------------------------------------------------------------------------------

#[test]
fn method_not_allowed_and_unknown_paths() {
    let hub = Hub::start();
    let (_, key) = hub.create_project("Routing");
    let key = key.as_str();
    hub.create_room(key, "r", "public");

    let resp = hub.http().request("PATCH", "/api/v1/rooms", &[("X-API-Key", key)], None);
    assert_error(&resp, 405, "method_not_allowed");
    let allow = resp.header("allow").unwrap_or_else(|| panic!("405 without Allow: {resp:?}"));
    let methods: Vec<&str> = allow.split(',').map(str::trim).collect();
    assert!(methods.contains(&"GET") && methods.contains(&"POST"), "Allow: {allow:?}");
    assert!(!methods.contains(&"PATCH"), "Allow: {allow:?}");

    let resp = hub.delete("/health", None);
    assert_error(&resp, 405, "method_not_allowed");
    assert!(resp.header("allow").is_some_and(|a| a.contains("GET")), "{resp:?}");
    let resp = hub.get("/api/v1/projects", None);
    assert_error(&resp, 405, "method_not_allowed");
    assert!(resp.header("allow").is_some_and(|a| a.contains("POST")), "{resp:?}");
    let resp = hub.post("/api/v1/rooms/r", Some(key), &json!({}));
    assert_error(&resp, 405, "method_not_allowed");
    assert!(resp.header("allow").is_some_and(|a| a.contains("DELETE")), "{resp:?}");

    for path in ["/nope", "/api/v1/nope", "/api/v2/rooms", "/api/v1/rooms/r/nope", "/health/x"] {
        assert_error(&hub.get(path, Some(key)), 404, "not_found");
    }
    assert_error(&hub.get("/definitely/not/here", None), 404, "not_found");
}

#[test]
fn cors_default_and_preflight() {
    let hub = Hub::start();
    let origin = [("Origin", "https://app.example")];

    let resp = hub.call("GET", "/health", &origin, None);
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("access-control-allow-origin"), Some("*"), "{resp:?}");
    // Error responses carry it too, so browsers can read them.
    let resp = hub.call("GET", "/api/v1/rooms", &origin, None);
    assert_error(&resp, 401, "unauthorized");
    assert_eq!(resp.header("access-control-allow-origin"), Some("*"), "{resp:?}");
    let resp = hub.call("GET", "/nope", &origin, None);
    assert_error(&resp, 404, "not_found");
    assert_eq!(resp.header("access-control-allow-origin"), Some("*"), "{resp:?}");

    let preflight = [
        ("Origin", "https://app.example"),
        ("Access-Control-Request-Method", "POST"),
        ("Access-Control-Request-Headers", "x-api-key, content-type"),
    ];
    let resp = hub.call("OPTIONS", "/api/v1/rooms", &preflight, None);
    assert_eq!(resp.status, 204, "{resp:?}");
    assert_eq!(resp.body, "");
    assert_eq!(resp.header("access-control-allow-origin"), Some("*"), "{resp:?}");
    let methods = resp.header("access-control-allow-methods").unwrap_or_else(|| panic!("no Allow-Methods: {resp:?}"));
    for m in ["GET", "POST", "DELETE"] {
        assert!(methods.contains(m), "Allow-Methods {methods:?} lacks {m}");
    }
    let headers = resp.header("access-control-allow-headers").unwrap_or_else(|| panic!("no Allow-Headers: {resp:?}"));
    let headers = headers.to_ascii_lowercase();
    assert!(headers.contains("x-api-key"), "Allow-Headers {headers:?} lacks X-API-Key");
    assert!(headers.contains("content-type"), "Allow-Headers {headers:?} lacks Content-Type");

    // A preflight of a path with a variable segment works too, without any key.
    let resp = hub.call("OPTIONS", "/api/v1/rooms/general/messages", &preflight, None);
    assert_eq!(resp.status, 204, "{resp:?}");
}

#[test]
fn cors_origin_list_echoes_only_listed_origins() {
    let hub = Hub::start_with(&["--cors-origin", "https://a.example"]);

    let resp = hub.call("GET", "/health", &[("Origin", "https://a.example")], None);
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("access-control-allow-origin"), Some("https://a.example"), "{resp:?}");
    let vary = resp.header("vary").unwrap_or_default().to_ascii_lowercase();
    assert!(vary.contains("origin"), "echoed origin without Vary: Origin: {resp:?}");

    let resp = hub.call("GET", "/health", &[("Origin", "https://evil.example")], None);
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("access-control-allow-origin"), None, "{resp:?}");

    let preflight = [
        ("Origin", "https://a.example"),
        ("Access-Control-Request-Method", "POST"),
        ("Access-Control-Request-Headers", "x-api-key"),
    ];
    let resp = hub.call("OPTIONS", "/api/v1/rooms", &preflight, None);
    assert_eq!(resp.status, 204, "{resp:?}");
    assert_eq!(resp.header("access-control-allow-origin"), Some("https://a.example"), "{resp:?}");

    let evil = [("Origin", "https://evil.example"), ("Access-Control-Request-Method", "POST")];
    let resp = hub.call("OPTIONS", "/api/v1/rooms", &evil, None);
    assert_eq!(resp.header("access-control-allow-origin"), None, "{resp:?}");
}

// ---------------------------------------------------------------------------------------
// Connection handling
// ---------------------------------------------------------------------------------------

#[test]
fn keep_alive_and_pipelining() {
    let hub = Hub::start();
    let (_, key) = hub.create_project("Pipes");
    let key = key.as_str();
    hub.create_room(key, "p", "public");

    // Keep-alive: three requests on one connection.
    let mut http = hub.http();
    let local = http.stream.local_addr().expect("local addr");
    let r1 = http.request("GET", "/health", &[], None);
    assert_eq!(r1.status, 200, "{r1:?}");
    assert_eq!(r1.json()["status"], "ok");
    let body = json!({"userId": "k", "content": "kept alive"}).to_string();
    let headers = [("X-API-Key", key), ("Content-Type", "application/json")];
    let r2 = http.request("POST", "/api/v1/rooms/p/messages", &headers, Some(&body));
    assert_message(&assert_ok(&r2, 201), "p", "k", "kept alive", 1);
    let r3 = http.request("GET", "/api/v1/rooms/p/messages", &[("X-API-Key", key)], None);
    assert_eq!(seqs(&r3), vec![1]);
    for r in [&r1, &r2, &r3] {
        assert_ne!(r.header("connection").map(str::to_ascii_lowercase).as_deref(), Some("close"), "{r:?}");
    }
    assert_eq!(http.stream.local_addr().expect("local addr"), local);

    // Pipelining: three requests in one write, three responses in order.
    let mut http = hub.http();
    let body = json!({"userId": "pipe", "content": "pipelined"}).to_string();
    let mut batch = raw_request("GET", "/health", &[], None);
    batch.extend(raw_request("POST", "/api/v1/rooms/p/messages", &[("X-API-Key", key)], Some(&body)));
    batch.extend(raw_request("GET", "/api/v1/rooms/p/messages?after=1", &[("X-API-Key", key)], None));
    http.send_raw(&batch);
    let health = http.read_response();
    assert_eq!(health.status, 200, "{health:?}");
    assert_keys(&health.json(), &["status", "uptimeSeconds", "version"]);
    let posted = assert_ok(&http.read_response(), 201);
    assert_message(&posted, "p", "pipe", "pipelined", 2);
    let listed = assert_ok(&http.read_response(), 200);
    assert_eq!(listed, json!({"messages": [posted]}), "the GET after the POST must see the message");

    // Still usable afterwards, and a pipelined error does not break the stream.
    let mut batch = raw_request("GET", "/nope", &[], None);
    batch.extend(raw_request("GET", "/health", &[], None));
    http.send_raw(&batch);
    assert_error(&http.read_response(), 404, "not_found");
    assert_eq!(http.read_response().status, 200);

    // Connection: close is honoured.
    let mut http = hub.http();
    let resp = http.request("GET", "/health", &[("Connection", "close")], None);
    assert_eq!(resp.status, 200);
    let (rest, _) = expect_close(&mut http, Duration::from_secs(5));
    assert!(rest.is_empty(), "bytes after a Connection: close response: {rest:?}");
}

#[test]
fn malformed_requests_are_refused_and_the_hub_survives() {
    let hub = Hub::start();

    // Garbage bytes (a TLS ClientHello prefix) → 400, then close.
    let mut http = hub.http();
    http.send_raw(b"\x16\x03\x01\x02\x00 hello");
    let resp = http.read_response();
    assert_error(&resp, 400, "bad_request");
    expect_eof_after_response(&mut http);

    // A garbage request line that looks like text.
    let mut http = hub.http();
    http.send_raw(b"HELLO THERE\r\n\r\n");
    let resp = http.read_response();
    assert_error(&resp, 400, "bad_request");
    expect_eof_after_response(&mut http);

    // 5,000 headers → 431, then close.
    let mut http = hub.http();
    let mut req = String::from("GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n");
    for i in 0..5000 {
        req += &format!("X-Header-{i}: v\r\n");
    }
    req += "\r\n";
    write_ignoring_errors(&mut http, req.as_bytes());
    let resp = http.read_response();
    assert_eq!(resp.status, 431, "{resp:?}");
    assert_error_shape(&resp);
    expect_eof_after_response(&mut http);

    // A huge Content-Length → 413, then close (before any body is sent).
    let mut http = hub.http();
    http.send_raw(
        b"POST /api/v1/projects HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
          Content-Length: 99999999999\r\n\r\n",
    );
    let resp = http.read_response();
    assert_error(&resp, 413, "payload_too_large");
    expect_eof_after_response(&mut http);

    // Transfer-Encoding: chunked → 411, then close.
    let mut http = hub.http();
    write_ignoring_errors(
        &mut http,
        b"POST /api/v1/projects HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
          Transfer-Encoding: chunked\r\n\r\n5\r\n{\"a\":\r\n0\r\n\r\n",
    );
    let resp = http.read_response();
    assert_eq!(resp.status, 411, "{resp:?}");
    assert_error_shape(&resp);
    expect_eof_after_response(&mut http);

    // A request head over 16 KiB (a long path) → 431, then close.
    let mut http = hub.http();
    let req = format!("GET /{} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", "a".repeat(17 * 1024));
    write_ignoring_errors(&mut http, req.as_bytes());
    let resp = http.read_response();
    assert_eq!(resp.status, 431, "{resp:?}");
    assert_error_shape(&resp);
    expect_eof_after_response(&mut http);

    // A valid request trickled one byte at a time → 200.
    let mut http = hub.http();
    for b in b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: */*\r\n\r\n" {
        http.stream.write_all(&[*b]).expect("writing one byte");
        http.stream.flush().expect("flush");
    }
    let resp = http.read_response();
    assert_eq!(resp.status, 200, "{resp:?}");
    assert_eq!(resp.json()["status"], "ok");
    // ... and the connection is still usable.
    let resp = http.request("GET", "/health", &[], None);
    assert_eq!(resp.status, 200, "{resp:?}");

    // A body trickled one byte at a time too.
    let (_, key) = hub.create_project("Trickle");
    hub.create_room(&key, "t", "public");
    let body = json!({"userId": "slow", "content": "byte by byte"}).to_string();
    let req = raw_request("POST", "/api/v1/rooms/t/messages", &[("X-API-Key", &key)], Some(&body));
    let mut http = hub.http();
    for b in &req {
        http.stream.write_all(&[*b]).expect("writing one byte");
    }
    assert_message(&assert_ok(&http.read_response(), 201), "t", "slow", "byte by byte", 1);

    // After all of that, the hub still answers on a new connection.
    let health = assert_ok(&hub.get("/health", None), 200);
    assert_eq!(health["status"], "ok");
}

#[test]
fn slow_request_head_is_closed_after_header_timeout() {
    let hub = Hub::start_with(&["--header-timeout-ms", "300"]);
    let mut http = hub.http();
    http.send_raw(b"GET /health HTTP/1.1\r\n");
    let (got, elapsed) = expect_close(&mut http, Duration::from_secs(3));
    assert!(elapsed >= Duration::from_millis(200), "closed after {elapsed:?}, before the 300 ms header timeout");
    if !got.is_empty() {
        let text = String::from_utf8_lossy(&got);
        assert!(text.starts_with("HTTP/1.1 408"), "unexpected bytes before the close: {text:?}");
    }
    // The hub is fine.
    assert_eq!(hub.get("/health", None).status, 200);
}

// ---------------------------------------------------------------------------------------
// Durability and isolation
// ---------------------------------------------------------------------------------------

#[test]
fn restart_keeps_projects_rooms_and_messages() {
    let mut hub = Hub::start();
    let (project_id, key) = hub.create_project("Durable");
    let key = key.as_str();
    let room = hub.create_room(key, "kept", "public");
    let resp = hub.post("/api/v1/rooms", Some(key), &json!({"name": "club", "type": "private", "members": ["b", "a"]}));
    assert_ok(&resp, 201);
    let posted: Vec<Value> = (1..=3).map(|i| post_message(&hub, key, "kept", "alice", &format!("m{i}"))).collect();

    let status = hub.terminate();
    assert!(status.success(), "SIGTERM exit status: {status}");

    let db = hub.db_path.clone();
    let hub2 = Hub::start_at(&db, &[]);
    // The same key works and sees the same rooms.
    let list = assert_ok(&hub2.get("/api/v1/rooms", Some(key)), 200);
    let rooms = list["rooms"].as_array().expect("rooms");
    let names: Vec<&str> = rooms.iter().filter_map(|r| r["name"].as_str()).collect();
    assert_eq!(names, vec!["club", "kept"]);
    let kept = assert_ok(&hub2.get("/api/v1/rooms/kept", Some(key)), 200);
    assert_eq!(kept["id"], room["id"]);
    assert_eq!(kept["createdAt"], room["createdAt"]);
    let club = assert_ok(&hub2.get("/api/v1/rooms/club", Some(key)), 200);
    assert_eq!(club["members"], json!(["a", "b"]));

    // Messages are there with the same ids and seqs.
    let history = assert_ok(&hub2.get("/api/v1/rooms/kept/messages", Some(key)), 200);
    assert_eq!(history, json!({"messages": posted}));

    // The next message continues the sequence.
    let next = post_message(&hub2, key, "kept", "bob", "after restart");
    assert_message(&next, "kept", "bob", "after restart", 4);
    assert!(!posted.iter().any(|m| m["id"] == next["id"]), "id reused after restart");

    // The project survives as a project (server stats count it) and new ones get new ids.
    let stats = assert_ok(&hub2.get("/stats", None), 200);
    assert_eq!(stats["projects"], 1, "{stats}");
    let (new_id, _) = hub2.create_project("New");
    assert_ne!(new_id, project_id);
}

#[test]
fn tenant_isolation() {
    let hub = Hub::start();
    let (_, key_a) = hub.create_project("A");
    let (_, key_b) = hub.create_project("B");
    let (a, b) = (key_a.as_str(), key_b.as_str());

    let room_a = hub.create_room(a, "general", "public");
    let resp = hub.post("/api/v1/rooms", Some(a), &json!({"name": "a-only", "type": "private", "members": ["x"]}));
    assert_ok(&resp, 201);
    let msg_a = post_message(&hub, a, "general", "alice", "for A only");
    let msg_id = msg_a["id"].as_str().expect("id");

    // B sees nothing of A.
    assert_eq!(assert_ok(&hub.get("/api/v1/rooms", Some(b)), 200), json!({"rooms": []}));
    assert_error(&hub.get("/api/v1/rooms/a-only", Some(b)), 404, "not_found");
    assert_error(&hub.get("/api/v1/rooms/general", Some(b)), 404, "not_found");
    assert_error(&hub.get("/api/v1/rooms/general/messages", Some(b)), 404, "not_found");
    let resp = hub.post("/api/v1/rooms/general/messages", Some(b), &json!({"userId": "mallory", "content": "x"}));
    assert_error(&resp, 404, "not_found");
    assert_error(&hub.get(&format!("/api/v1/rooms/general/messages/{msg_id}/receipts"), Some(b)), 404, "not_found");
    assert_error(&hub.get("/api/v1/rooms/general/presence", Some(b)), 404, "not_found");
    assert_error(&hub.put("/api/v1/rooms/a-only/members/mallory", Some(b), None), 404, "not_found");
    assert_error(&hub.delete("/api/v1/rooms/general", Some(b)), 404, "not_found");
    let stats_b = assert_ok(&hub.get("/api/v1/stats", Some(b)), 200);
    assert_eq!(stats_b["rooms"], 0, "{stats_b}");

    // A's room and message are intact.
    assert_eq!(assert_ok(&hub.get("/api/v1/rooms/general", Some(a)), 200)["id"], room_a["id"]);
    assert_eq!(seqs(&hub.get("/api/v1/rooms/general/messages", Some(a))), vec![1]);
    let view = assert_ok(&hub.get("/api/v1/rooms/a-only", Some(a)), 200);
    assert_eq!(view["members"], json!(["x"]));

    // Both can have a room of the same name, independently.
    let room_b = hub.create_room(b, "general", "private");
    assert_ne!(room_b["id"], room_a["id"]);
    let msg_b = post_message(&hub, b, "general", "bob", "for B only");
    assert_eq!(msg_b["seq"], 1, "seqs are per room, not per name: {msg_b}");
    assert_eq!(assert_ok(&hub.get("/api/v1/rooms/general/messages", Some(a)), 200), json!({"messages": [msg_a]}));
    assert_eq!(assert_ok(&hub.get("/api/v1/rooms/general/messages", Some(b)), 200), json!({"messages": [msg_b]}));
    assert_eq!(assert_ok(&hub.get("/api/v1/rooms/general", Some(a)), 200)["type"], "public");
    assert_eq!(assert_ok(&hub.get("/api/v1/rooms/general", Some(b)), 200)["type"], "private");

    // Deleting B's room leaves A's.
    assert_eq!(hub.delete("/api/v1/rooms/general", Some(b)).status, 204);
    assert_eq!(seqs(&hub.get("/api/v1/rooms/general/messages", Some(a))), vec![1]);
}

// ---------------------------------------------------------------------------------------
// Command line
// ---------------------------------------------------------------------------------------

#[test]
fn bad_flags_exit_2_and_help_exits_0() {
    // Flags that would make a misbehaving binary harmless if it started anyway.
    let safe_env = [("HOST", "127.0.0.1"), ("PORT", "0"), ("REALTIMEHUB_DB", ":memory:")];

    let (code, _, stderr) = run_binary(&["--no-such-flag"], &safe_env);
    assert_eq!(code, Some(2), "exit code for --no-such-flag; stderr: {stderr:?}");
    assert!(stderr.contains("--no-such-flag"), "stderr does not name the bad flag: {stderr:?}");

    let (code, _, stderr) = run_binary(&["--port"], &safe_env);
    assert_eq!(code, Some(2), "exit code for --port without a value; stderr: {stderr:?}");
    assert!(!stderr.trim().is_empty(), "no message on stderr for --port without a value");

    let (code, _, stderr) = run_binary(&["--port", "not-a-number"], &safe_env);
    assert_eq!(code, Some(2), "exit code for --port not-a-number; stderr: {stderr:?}");
    assert!(!stderr.trim().is_empty(), "no message on stderr for a bad --port");

    let (code, stdout, stderr) = run_binary(&["--help"], &safe_env);
    assert_eq!(code, Some(0), "exit code for --help; stderr: {stderr:?}");
    assert!(stdout.contains("--port"), "--help does not mention --port: {stdout:?}");
    assert!(stdout.contains("--db"), "--help does not mention --db: {stdout:?}");
}

/// A client that pipelines far more requests than it reads is held back
/// (parsing pauses while its unread answers exceed --max-outbound-bytes) and
/// still gets every answer, in order, once it reads.
#[test]
fn pipelined_requests_are_back_pressured_and_all_answered() {
    // A page may use half of --max-outbound-bytes: 20 messages of 1,000
    // bytes fit in one page of 32 KiB.
    // The key's request and read budgets are raised: this test is about
    // back-pressure, not budgets (1,500 requests outrun the default 1,000/s
    // burst on a machine that answers them fast).
    let hub = Hub::start_with(&[
        "--max-outbound-bytes",
        "65536",
        "--max-events-per-read",
        "8",
        "--max-rest-read-bytes-per-second",
        "1000000000",
        "--max-rest-requests-per-second",
        "1000000",
    ]);
    let (_, key) = hub.create_project("pipeline");
    hub.create_room(&key, "big", "public");
    let content = "x".repeat(1000);
    for _ in 0..20 {
        post_message(&hub, &key, "big", "u", &content);
    }
    // Each answer is a ~25 KB page: 1,500 of them are ~37 MB, far more than
    // loopback socket buffers absorb.
    const N: u64 = 1500;
    let one = raw_request("GET", "/api/v1/rooms/big/messages", &[("X-API-Key", &key)], None);
    let mut http = hub.http();
    let writer_stream = http.stream.try_clone().expect("clone the socket");
    let writer = std::thread::spawn(move || {
        let mut stream = writer_stream;
        (0..N).all(|_| stream.write_all(&one).is_ok())
    });
    // Answers produced so far, from /metrics; every earlier poll was a 200 too.
    let mut polls = 0;
    let mut answered = || -> u64 {
        let text = hub.get("/metrics", None).body;
        let total: u64 = text
            .lines()
            .find(|l| l.starts_with("realtimehub_http_responses_total{status=\"200\"}"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        polls += 1;
        total - (polls - 1)
    };
    // While the client reads nothing, the count must stall well below N.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut last = answered();
    loop {
        std::thread::sleep(Duration::from_millis(300));
        let now = answered();
        if now == last {
            break;
        }
        assert!(Instant::now() < deadline, "the hub kept answering a client that reads nothing ({now})");
        last = now;
    }
    assert!(last < N / 2, "{last} of {N} answers were produced for a client that reads nothing");
    for _ in 0..N {
        let resp = http.read_response();
        assert_eq!(resp.status, 200);
        assert_eq!(seqs(&resp).len(), 20);
    }
    assert!(writer.join().expect("writer thread"), "every request was written");
}

/// HEAD is answered like GET without a body, so keep-alive framing holds.
#[test]
fn head_requests_get_headers_only() {
    let hub = Hub::start();
    let mut http = hub.http();
    http.send_raw(b"HEAD /health HTTP/1.1\r\nHost: x\r\n\r\n");
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        http.stream.read_exact(&mut byte).expect("HEAD response head");
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).expect("UTF-8 head");
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert!(head.contains("Content-Length: "), "HEAD announces the GET body's length: {head}");
    // The next response on the same connection starts right away: no body bytes in between.
    let resp = http.request("GET", "/health", &[], None);
    assert_eq!(resp.status, 200);
    assert_eq!(resp.json()["status"], "ok");
}

/// Attachments come back as the exact JSON text sent (no float rewriting).
#[test]
fn attachments_are_echoed_byte_for_byte() {
    let hub = Hub::start();
    let (_, key) = hub.create_project("raw");
    hub.create_room(&key, "r", "public");
    let text = r#"[18446744073709551616,-0,{"w":1.50,"u":"\u00e9"}]"#;
    let body = format!(r#"{{"userId":"u","content":"x","attachments":{text}}}"#);
    let mut http = hub.http();
    let posted = http.request("POST", "/api/v1/rooms/r/messages", &[("X-API-Key", &key)], Some(&body));
    assert_eq!(posted.status, 201, "{}", posted.body);
    assert!(posted.body.contains(text), "{}", posted.body);
    let page = http.request("GET", "/api/v1/rooms/r/messages", &[("X-API-Key", &key)], None);
    assert!(page.body.contains(text), "{}", page.body);
    let mut ws = hub.ws(&key, "v");
    ws.send(json!({"type": "history", "room": "r"}));
    let mut raw = None;
    let deadline = Instant::now() + Duration::from_secs(5);
    while raw.is_none() && Instant::now() < deadline {
        if let Ok(tungstenite::Message::Text(t)) = ws.socket.read() {
            if t.contains("\"history\"") {
                raw = Some(t.to_string());
            }
        }
    }
    let raw = raw.expect("a history frame");
    assert!(raw.contains(text), "{raw}");
}

#[test]
fn paging_numbers_must_be_plain_digits() {
    let hub = Hub::start();
    let (_, key) = hub.create_project("digits");
    hub.create_room(&key, "r", "public");
    for query in ["limit=%2B5", "limit=5.0", "before=-1", "after=0x10"] {
        let resp = hub.get(&format!("/api/v1/rooms/r/messages?{query}"), Some(&key));
        assert_error(&resp, 400, "bad_request");
    }
    assert_eq!(hub.get("/api/v1/rooms/r/messages?limit=5", Some(&key)).status, 200);
}

// ---------------------------------------------------------------------------------------
// Error paths: authentication, unknown resources, invalid ids, hostile bodies
// ---------------------------------------------------------------------------------------

/// Every key-guarded endpoint answers a missing, empty, wrong or misplaced key with exactly
/// `{"error":{"code":"unauthorized","message":…}}` and changes nothing; the right key then
/// succeeds on each, so the 401s were about the key and nothing else.
#[test]
fn project_endpoints_refuse_a_missing_or_wrong_key_with_401_and_change_nothing() {
    let hub = Hub::start();
    let (_, key) = hub.create_project("Auth");
    let key = key.as_str();
    let resp = hub.post("/api/v1/rooms", Some(key), &json!({"name": "club", "type": "private", "members": ["alice"]}));
    assert_ok(&resp, 201);
    let message = post_message(&hub, key, "club", "alice", "hello");
    let id = message["id"].as_str().expect("message id");

    // The right shape, one hex digit off.
    let last = key.chars().last().expect("non-empty key");
    let wrong = format!("{}{}", &key[..key.len() - 1], if last == '0' { '1' } else { '0' });
    let bearer = format!("Bearer {key}");
    let credentials: [(&str, Vec<(&str, &str)>); 4] = [
        ("no key", vec![]),
        ("an empty X-API-Key", vec![("X-API-Key", "")]),
        ("a wrong X-API-Key", vec![("X-API-Key", wrong.as_str())]),
        ("the key as a bearer token", vec![("Authorization", bearer.as_str())]),
    ];
    let receipts = format!("/api/v1/rooms/club/messages/{id}/receipts");
    let endpoints: [(&str, &str, u16); 7] = [
        ("GET", "/api/v1/rooms/club/messages", 200),
        ("GET", &receipts, 200),
        ("GET", "/api/v1/rooms/club/presence", 200),
        ("GET", "/api/v1/stats", 200),
        ("PUT", "/api/v1/rooms/club/members/bob", 204),
        ("DELETE", "/api/v1/rooms/club/members/alice", 204),
        ("DELETE", "/api/v1/rooms/club", 204),
    ];
    for (method, path, _) in endpoints {
        for (what, headers) in &credentials {
            let resp = hub.call(method, path, headers, None);
            assert_eq!(resp.status, 401, "{method} {path} with {what}: {resp:?}");
            assert_error(&resp, 401, "unauthorized");
        }
    }

    // Nothing changed: the room, its member list and its message are as they were.
    let view = assert_ok(&hub.get("/api/v1/rooms/club", Some(key)), 200);
    assert_eq!(view["members"], json!(["alice"]), "{view}");
    assert_eq!(assert_ok(&hub.get("/api/v1/rooms/club/messages", Some(key)), 200), json!({"messages": [message]}));

    // With the key, each endpoint does its job (in an order where the room goes last).
    for (method, path, status) in endpoints {
        let resp = hub.call(method, path, &[("X-API-Key", key)], None);
        assert_eq!(resp.status, status, "{method} {path} with the right key: {resp:?}");
    }
    assert_error(&hub.get("/api/v1/rooms/club", Some(key)), 404, "not_found");
}

/// An unknown room is 404 before the user id is even looked at, and OPTIONS on a path
/// that does not exist is a plain 404 (readable by browsers), not a preflight answer.
#[test]
fn unknown_rooms_and_paths_are_404_even_for_preflights() {
    let hub = Hub::start();
    let (_, key) = hub.create_project("NotFound");
    let key = key.as_str();
    hub.create_room(key, "club", "private");

    assert_error(&hub.delete("/api/v1/rooms/ghost/members/bob", Some(key)), 404, "not_found");
    // Resource before validation (docs/PROTOCOL.md §5): an invalid id in an unknown room is 404.
    assert_error(&hub.delete("/api/v1/rooms/ghost/members/%00", Some(key)), 404, "not_found");
    assert_error(&hub.put("/api/v1/rooms/ghost/members/%00", Some(key), None), 404, "not_found");
    // The same request on a room that exists is accepted, so the 404 was the room.
    assert_eq!(hub.delete("/api/v1/rooms/club/members/bob", Some(key)).status, 204);

    let preflight = [
        ("Origin", "https://app.example"),
        ("Access-Control-Request-Method", "GET"),
        ("Access-Control-Request-Headers", "x-api-key"),
    ];
    let mut http = hub.http();
    for path in ["/nope", "/api/v1/nope", "/api/v1/rooms/club/nope", "/api/v1/rooms/club/members", "/health/x"] {
        let resp = http.request("OPTIONS", path, &preflight, None);
        assert_error(&resp, 404, "not_found");
        assert_eq!(resp.header("access-control-allow-origin"), Some("*"), "OPTIONS {path}: {resp:?}");
        assert_eq!(resp.header("access-control-allow-methods"), None, "OPTIONS {path} is not a preflight: {resp:?}");
    }
    // A known path with an unknown room is still a preflight (no room lookup, no key).
    let resp = http.request("OPTIONS", "/api/v1/rooms/ghost/members/bob", &preflight, None);
    assert_eq!(resp.status, 204, "{resp:?}");
    assert!(resp.header("access-control-allow-methods").is_some_and(|m| m.contains("PUT")), "{resp:?}");
    // The 404s kept the connection alive.
    assert_eq!(http.request("GET", "/health", &[], None).status, 200);
}

/// User ids in paths and bodies are 1–128 characters with no control characters; anything
/// else is 400 and changes nothing, while the boundary cases are accepted.
#[test]
fn invalid_user_ids_members_and_from_are_400() {
    let hub = Hub::start();
    let (_, key) = hub.create_project("UserIds");
    let key = key.as_str();
    hub.create_room(key, "club", "private");

    let too_long = "a".repeat(129);
    let too_long_wide = common::pct(&"é".repeat(129)); // 129 characters, 258 bytes
    let bad_in_path: [&str; 10] = [
        "%00",          // NUL
        "%0A",          // LF
        "a%1Bb",        // ESC inside
        "%7F",          // DEL
        "%C2%85",       // NEL, a C1 control character
        &too_long,      // 129 characters
        &too_long_wide, // 129 two-byte characters
        "%ZZ",          // not percent-encoding
        "%FF",          // not UTF-8
        "a%",           // truncated escape
    ];
    for user in bad_in_path {
        let member = format!("/api/v1/rooms/club/members/{user}");
        assert_error(&hub.put(&member, Some(key), None), 400, "bad_request");
        assert_error(&hub.delete(&member, Some(key)), 400, "bad_request");
        let direct = format!("/api/v1/users/{user}/messages");
        assert_error(&hub.post(&direct, Some(key), &json!({"content": "x"})), 400, "bad_request");
    }
    let view = assert_ok(&hub.get("/api/v1/rooms/club", Some(key)), 200);
    assert_eq!(view["members"], json!([]), "no refused id became a member: {view}");

    // The boundaries: 128 characters (256 bytes), and spaces, are valid ids.
    let widest = "é".repeat(128);
    for user in [widest.as_str(), "a b"] {
        let member = format!("/api/v1/rooms/club/members/{}", common::pct(user));
        assert_eq!(hub.put(&member, Some(key), None).status, 204, "PUT member {user:?}");
        let direct = format!("/api/v1/users/{}/messages", common::pct(user));
        assert_eq!(assert_ok(&hub.post(&direct, Some(key), &json!({"content": "x"})), 200), json!({"delivered": 0}));
    }
    let view = assert_ok(&hub.get("/api/v1/rooms/club", Some(key)), 200);
    assert_eq!(view["members"], json!(["a b", widest]), "{view}");

    // `from` on a REST direct: a valid user id or null, nothing else.
    let direct = "/api/v1/users/bob/messages";
    for from in [json!(""), json!(too_long), json!("a\u{0}b"), json!("\n"), json!(5), json!(true), json!(["a"])] {
        let resp = hub.post(direct, Some(key), &json!({"content": "x", "from": from}));
        assert_eq!(resp.status, 400, "from {from}: {resp:?}");
        assert_error(&resp, 400, "bad_request");
    }
    assert_ok(&hub.post(direct, Some(key), &json!({"content": "x", "from": null})), 200);
    assert_ok(&hub.post(direct, Some(key), &json!({"content": "x", "from": "a".repeat(128)})), 200);

    // One invalid entry in `members` refuses the whole room.
    let bad_lists = [
        json!([""]),
        json!(["ok", 5]),
        json!(["ok", null]),
        json!(["a\u{0}"]),
        json!(["ok", too_long]),
        json!([["nested"]]),
        json!([{"userId": "a"}]),
    ];
    for members in bad_lists {
        let resp = hub.post("/api/v1/rooms", Some(key), &json!({"name": "vip", "type": "private", "members": members}));
        assert_eq!(resp.status, 400, "members {members}: {resp:?}");
        assert_error(&resp, 400, "bad_request");
    }
    assert_error(&hub.get("/api/v1/rooms/vip", Some(key)), 404, "not_found");
    let resp = hub.post("/api/v1/rooms", Some(key), &json!({"name": "vip", "type": "private", "members": ["ok"]}));
    assert_ok(&resp, 201);
    assert_eq!(assert_ok(&hub.get("/api/v1/rooms/vip", Some(key)), 200)["members"], json!(["ok"]));
}

/// ~60 KB of nested arrays or objects is refused 400 without harming the hub, and the
/// same keep-alive connection answers the next request.
#[test]
fn deeply_nested_bodies_are_400_and_the_connection_stays_usable() {
    let hub = Hub::start();
    let (_, key) = hub.create_project("Deep");
    let key = key.as_str();
    hub.create_room(key, "r", "public");

    let arrays = format!("{}{}", "[".repeat(30_000), "]".repeat(30_000));
    let objects = format!("{}1{}", r#"{"a":"#.repeat(10_000), "}".repeat(10_000));
    let unclosed = "[".repeat(60_000);
    let in_attachments = format!(r#"{{"userId":"u","content":"x","attachments":{arrays}}}"#);
    let in_members = format!(r#"{{"name":"deep","type":"private","members":{arrays}}}"#);
    let cases = [
        ("/api/v1/projects", &arrays),
        ("/api/v1/projects", &objects),
        ("/api/v1/rooms", &unclosed),
        ("/api/v1/rooms", &objects),
        ("/api/v1/rooms", &in_members),
        ("/api/v1/rooms/r/messages", &in_attachments),
        ("/api/v1/rooms/r/messages", &objects),
        ("/api/v1/users/u/messages", &arrays),
    ];
    let mut http = hub.http();
    let headers = [("X-API-Key", key), ("Content-Type", "application/json")];
    for (path, body) in cases {
        assert!(body.len() >= 55_000, "{} bytes", body.len());
        let resp = http.request("POST", path, &headers, Some(body));
        assert_eq!(resp.status, 400, "POST {path} with {} nested bytes: {resp:?}", body.len());
        assert_error(&resp, 400, "bad_request");
        let health = http.request("GET", "/health", &[], None);
        assert_eq!(health.status, 200, "the next request on the same connection: {health:?}");
    }
    // Nothing was created or stored.
    assert_error(&hub.get("/api/v1/rooms/deep", Some(key)), 404, "not_found");
    assert_eq!(assert_ok(&hub.get("/api/v1/stats", Some(key)), 200)["rooms"], 1);
    let first = post_message(&hub, key, "r", "u", "after the deep ones");
    assert_eq!(first["seq"], 1, "{first}");
}

/// A request head of `bytes` bytes: `GET /health` padded with an `X-Pad` header.
fn padded_head(bytes: usize) -> Vec<u8> {
    let bare = "GET /health HTTP/1.1\r\nHost: x\r\nX-Pad: \r\n\r\n".len();
    let pad = "p".repeat(bytes.checked_sub(bare).expect("room for the padding"));
    let head = format!("GET /health HTTP/1.1\r\nHost: x\r\nX-Pad: {pad}\r\n\r\n");
    assert_eq!(head.len(), bytes);
    head.into_bytes()
}

/// `--max-head-bytes` and `--max-body-bytes` are inclusive: exactly the limit is served,
/// one byte more is 431 / 413 and the connection is closed.
#[test]
fn head_and_body_limits_set_by_flag_are_inclusive() {
    let hub = Hub::start_with(&["--max-head-bytes", "256", "--max-body-bytes", "100"]);

    // A head of exactly 256 bytes (terminating blank line included) is served, keep-alive.
    let mut http = hub.http();
    http.send_raw(&padded_head(256));
    let resp = http.read_response();
    assert_eq!(resp.status, 200, "a 256-byte head under --max-head-bytes 256: {resp:?}");
    assert_eq!(http.request("GET", "/health", &[], None).status, 200);

    // 257 bytes → 431, then close.
    let mut http = hub.http();
    write_ignoring_errors(&mut http, &padded_head(257));
    let resp = http.read_response();
    assert_error(&resp, 431, "request_header_fields_too_large");
    expect_eof_after_response(&mut http);

    // A head still arriving that is already past the limit is refused without its end.
    let mut http = hub.http();
    write_ignoring_errors(&mut http, &padded_head(400)[..300]);
    let resp = http.read_response();
    assert_error(&resp, 431, "request_header_fields_too_large");
    expect_eof_after_response(&mut http);

    // A body of exactly 100 bytes is accepted.
    let body = |len: usize| format!(r#"{{"name":"{}"}}"#, "n".repeat(len - r#"{"name":""}"#.len()));
    let exact = body(100);
    assert_eq!(exact.len(), 100);
    let mut http = hub.http();
    let resp = http.request("POST", "/api/v1/projects", &[("Content-Type", "application/json")], Some(&exact));
    assert_eq!(assert_ok(&resp, 201)["name"], "n".repeat(89));
    assert_eq!(http.request("GET", "/health", &[], None).status, 200, "keep-alive after a body at the limit");

    // 101 bytes → 413 as soon as the head is read (the body is never waited for), then close.
    let mut http = hub.http();
    http.send_raw(
        b"POST /api/v1/projects HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 101\r\n\r\n",
    );
    let resp = http.read_response();
    assert_error(&resp, 413, "payload_too_large");
    write_ignoring_errors(&mut http, body(101).as_bytes());
    expect_eof_after_response(&mut http);

    // Only the project at the limit was created.
    assert_eq!(assert_ok(&hub.get("/stats", None), 200)["projects"], 1);
}

/// `--http-idle-timeout-ms`: an idle keep-alive connection is closed (EOF, nothing sent),
/// while connections in the middle of sending a head or a body are left alone.
#[test]
fn idle_keep_alive_connections_are_closed_but_requests_in_flight_are_not() {
    let hub = Hub::start_with(&["--http-idle-timeout-ms", "300"]);

    // Two requests left half-sent before the idle connection below goes quiet.
    let mut half_head = hub.http();
    half_head.send_raw(b"GET /health HTTP/1.1\r\nHost: x\r\n");
    let body = r#"{"name":"slow body"}"#;
    let mut half_body = hub.http();
    let head = format!(
        "POST /api/v1/projects HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    half_body.send_raw(head.as_bytes());
    half_body.send_raw(&body.as_bytes()[..5]);

    // The idle keep-alive connection: answered, then closed after ~300 ms of silence.
    let mut idle = hub.http();
    let sent_at = Instant::now(); // the hub reads the request after this
    assert_eq!(idle.request("GET", "/health", &[], None).status, 200);
    let (got, _) = expect_close(&mut idle, Duration::from_secs(3));
    let elapsed = sent_at.elapsed();
    assert!(got.is_empty(), "bytes before the idle close: {:?}", String::from_utf8_lossy(&got));
    assert!(elapsed >= Duration::from_millis(300), "closed {elapsed:?} after the request, before the idle timeout");

    // The half-sent requests have now been silent longer than the idle one was; two more
    // sweeps (250 ms each) pass, then they complete and are answered.
    std::thread::sleep(Duration::from_millis(600));
    half_head.send_raw(b"\r\n");
    let resp = half_head.read_response();
    assert_eq!(resp.status, 200, "a request head in progress was cut off: {resp:?}");
    half_body.send_raw(&body.as_bytes()[5..]);
    let resp = half_body.read_response();
    assert_eq!(assert_ok(&resp, 201)["name"], "slow body");
}

/// A connection that sends nothing at all is closed after `--header-timeout-ms`, without
/// an answer, even when the idle timeout is much longer.
#[test]
fn a_connection_that_sends_nothing_is_closed_after_the_header_timeout() {
    let hub = Hub::start_with(&["--header-timeout-ms", "300", "--http-idle-timeout-ms", "60000"]);
    let connecting_at = Instant::now(); // the hub accepts after this
    let mut silent = hub.http();
    let (got, _) = expect_close(&mut silent, Duration::from_secs(3));
    let elapsed = connecting_at.elapsed();
    assert!(got.is_empty(), "a silent connection got {:?}", String::from_utf8_lossy(&got));
    assert!(elapsed >= Duration::from_millis(300), "closed {elapsed:?} after connecting, before the header timeout");
    assert_eq!(hub.get("/health", None).status, 200);
}
