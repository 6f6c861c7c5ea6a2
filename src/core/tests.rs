//! Deterministic tests of the core: no sockets, a fake clock, counting
//! entropy, and an in-memory store that can be told to fail its commits.

use std::cell::Cell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::ids::tests::CountingEntropy;
use super::token::sign;
use super::*;
use crate::http::{Request, Response};
use crate::store::{Durability, SharedStore, SqliteStore};

/// Applies batches to the shared in-memory database, but fails them while
/// the shared flag is set (nothing of a failed batch is stored).
struct FlakyWriter {
    inner: SharedStore,
    fail_commit: Rc<Cell<bool>>,
}

impl BatchWriter for FlakyWriter {
    fn apply(&mut self, batch: &Batch) -> Result<(), StoreError> {
        if self.fail_commit.get() {
            return Err(StoreError { context: "commit", detail: "disk full (simulated)".into() });
        }
        self.inner.apply(batch)
    }
}

/// The address REST requests of the tests come from.
const LOCAL: std::net::IpAddr = std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

/// A hub with a fake clock, one project and helpers to drive it.
struct Fixture {
    hub: Hub,
    now: Now,
    key: String,
    fail_commit: Rc<Cell<bool>>,
    writer: FlakyWriter,
    next_conn: usize,
    /// The database, for a restart.
    store: SharedStore,
    config: HubConfig,
}

/// One delivered frame or response.
#[derive(Debug)]
enum Seen {
    Frame(ConnId, Value),
    Response(u16, Value),
    Outbound(OutboundCall),
}

fn parse_wire(wire: &[u8]) -> Value {
    let len = wire[1] & 0x7f;
    let start = match len {
        126 => 4,
        127 => 10,
        _ => 2,
    };
    serde_json::from_slice(&wire[start..]).expect("frames carry JSON")
}

fn request(method: &str, path: &str, key: Option<&str>, body: Option<Value>) -> Request {
    let (path, query) = path.split_once('?').unwrap_or((path, ""));
    let mut headers = Vec::new();
    if let Some(key) = key {
        headers.push(("x-api-key".to_string(), key.to_string()));
    }
    Request {
        method: method.into(),
        path: path.into(),
        query: crate::http::parse_query(query).unwrap(),
        headers,
        body: body.map(|b| b.to_string().into_bytes()).unwrap_or_default(),
        http11: true,
    }
}

impl Fixture {
    fn new() -> Fixture {
        Fixture::with_config(HubConfig::default())
    }

    fn with_config(config: HubConfig) -> Fixture {
        let fail_commit = Rc::new(Cell::new(false));
        let store = SharedStore::new(SqliteStore::open(":memory:", Durability::Normal).unwrap());
        let writer = FlakyWriter { inner: store.clone(), fail_commit: fail_commit.clone() };
        let now = Now { mono: Instant::now(), unix_ms: 1_795_290_414_130 };
        let hub = Hub::new(config.clone(), Box::new(store.clone()), Box::new(CountingEntropy(0)), now).unwrap();
        let mut f = Fixture { hub, now, key: String::new(), fail_commit, writer, next_conn: 1, store, config };
        let project = f.rest("POST", "/api/v1/projects", None, Some(json!({"name": "test"})));
        assert_eq!(project.0, 201);
        f.key = project.1["apiKey"].as_str().unwrap().to_string();
        f
    }

    /// One loop iteration's hook work (deliveries, grace periods), committed.
    /// Two iterations: events recorded by the first (a grace period that
    /// ended) are committed, then posted by the second.
    fn hooks(&mut self) -> Vec<Seen> {
        self.hub.run_hooks(self.now);
        let mut seen = self.drain();
        self.hub.run_hooks(self.now);
        seen.extend(self.drain());
        seen
    }

    /// Answers a backend call and runs what follows.
    fn answer(&mut self, call: &OutboundCall, status: u16, body: Value) -> Vec<Seen> {
        let result = OutboundResult::Answered(status, body.to_string().into_bytes());
        self.hub.handle_outbound(call.request, result, self.now);
        let mut seen = self.drain();
        seen.extend(self.hooks());
        seen
    }

    /// A new hub on the same database, as after a crash (connections gone).
    fn restart(&mut self) {
        let store = Box::new(self.store.clone());
        self.hub = Hub::new(self.config.clone(), store, Box::new(CountingEntropy(100)), self.now).unwrap();
        let _ = self.drain();
    }

    fn advance(&mut self, by: Duration) {
        self.now.mono += by;
        self.now.unix_ms += by.as_millis() as i64;
    }

    /// Commits and collects every output, expanding broadcasts.
    fn drain(&mut self) -> Vec<Seen> {
        let _ = self.hub.commit_with(&mut self.writer);
        self.collect()
    }

    fn rest(&mut self, method: &str, path: &str, key: Option<&str>, body: Option<Value>) -> (u16, Value) {
        let conn = ConnId::new(0, 0);
        self.hub.handle_http(conn, &request(method, path, key, body), LOCAL, self.now);
        match self.drain().pop() {
            Some(Seen::Response(status, body)) => (status, body),
            other => panic!("expected a response, got {other:?}"),
        }
    }

    fn keyed(&mut self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let key = self.key.clone();
        self.rest(method, path, Some(&key), body)
    }

    fn room(&mut self, name: &str, kind: &str, members: &[&str]) {
        let body = if members.is_empty() {
            json!({"name": name, "type": kind})
        } else {
            json!({"name": name, "type": kind, "members": members})
        };
        assert_eq!(self.keyed("POST", "/api/v1/rooms", Some(body)).0, 201);
    }

    fn connect(&mut self, user: &str) -> ConnId {
        let key = self.key.clone();
        let req = request("GET", &format!("/?apiKey={key}&userId={user}"), None, None);
        let session = self.hub.authorize_ws(&req, self.now).unwrap();
        let conn = ConnId::new(self.next_conn, 1);
        self.next_conn += 1;
        self.hub.handle_ws_open(conn, session, self.now);
        let seen = self.drain();
        assert!(matches!(&seen[..], [Seen::Frame(c, v)] if *c == conn && v["type"] == "connected"));
        conn
    }

    fn send(&mut self, conn: ConnId, event: Value) -> Vec<Seen> {
        self.hub.handle_ws_text(conn, &event.to_string(), self.now);
        self.drain()
    }

    /// Handles one event and ends the iteration without settling its batch:
    /// the batch (if it wrote) and what was released at once.
    fn send_held(&mut self, conn: ConnId, event: Value) -> (Option<Batch>, Vec<Seen>) {
        self.hub.handle_ws_text(conn, &event.to_string(), self.now);
        let batch = self.hub.commit();
        (batch, self.collect())
    }

    /// Settles a held batch: applied (`ok`) or failed, as a store thread
    /// reports it; returns what that released.
    fn settle(&mut self, batch: &Batch, ok: bool) -> Vec<Seen> {
        let result = if ok {
            self.writer.apply(batch)
        } else {
            Err(StoreError { context: "commit", detail: "disk full (simulated)".into() })
        };
        self.hub.handle_committed(Completion { id: batch.id, result, took: Duration::ZERO });
        self.collect()
    }

    /// Every output free to go, broadcasts expanded.
    fn collect(&mut self) -> Vec<Seen> {
        let mut seen = Vec::new();
        while let Some(output) = self.hub.poll_output() {
            match output {
                Output::Frame { to, wire } => seen.push(Seen::Frame(to, parse_wire(&wire))),
                Output::Broadcast { to, wire } => {
                    let v = parse_wire(&wire);
                    seen.extend(to.into_iter().map(|c| Seen::Frame(c, v.clone())));
                }
                Output::Response { response, .. } => seen.push(response_seen(response)),
                Output::Outbound(call) => seen.push(Seen::Outbound(call)),
                Output::Close { .. } | Output::Done { .. } | Output::RoomScoped { .. } | Output::Relay { .. } => {}
            }
        }
        seen
    }
}

fn response_seen(response: Response) -> Seen {
    let body = if response.body.is_empty() { Value::Null } else { serde_json::from_slice(&response.body).unwrap() };
    Seen::Response(response.status, body)
}

/// Frames of one type sent to one connection.
fn to<'a>(seen: &'a [Seen], conn: ConnId, kind: &str) -> Vec<&'a Value> {
    seen.iter()
        .filter_map(|s| match s {
            Seen::Frame(c, v) if *c == conn && v["type"] == kind => Some(v),
            _ => None,
        })
        .collect()
}

fn types_for(seen: &[Seen], conn: ConnId) -> Vec<String> {
    seen.iter()
        .filter_map(|s| match s {
            Seen::Frame(c, v) if *c == conn => Some(v["type"].as_str().unwrap_or("?").to_string()),
            _ => None,
        })
        .collect()
}

#[test]
fn two_users_chat_with_mapping_and_seq() {
    let mut f = Fixture::new();
    f.room("general", "public", &[]);
    let alice = f.connect("alice");
    let bob = f.connect("bob");
    f.send(alice, json!({"type": "join", "room": "general"}));
    let seen = f.send(bob, json!({"type": "join", "room": "general"}));
    assert_eq!(to(&seen, alice, "user_joined")[0]["userId"], "bob");
    let joined = to(&seen, bob, "joined")[0];
    assert_eq!(joined["seq"], 0);
    assert_eq!(
        joined["members"],
        json!([{"userId": "alice", "status": "online"}, {"userId": "bob", "status": "online"}])
    );

    let seen = f.send(alice, json!({"type": "message", "room": "general", "content": "hi", "tempId": "t1"}));
    assert_eq!(types_for(&seen, alice), ["message_id_mapping", "message"]);
    let mapping = to(&seen, alice, "message_id_mapping")[0];
    let message = to(&seen, bob, "message")[0];
    assert_eq!(mapping["realId"], message["id"]);
    assert_eq!(mapping["seq"], 1);
    assert_eq!(message["seq"], 1);
    assert_eq!(message["content"], "hi");
    assert_eq!(message["contentType"], "text/plain");
    assert_eq!(message["attachments"], json!([]));
    assert_eq!(message["userId"], "alice");
    assert!(message.get("editedAt").is_none() && message.get("deleted").is_none());

    // A retry with the same tempId is answered with the original mapping only.
    let seen = f.send(alice, json!({"type": "message", "room": "general", "content": "hi", "tempId": "t1"}));
    assert_eq!(types_for(&seen, alice), ["message_id_mapping"]);
    assert_eq!(to(&seen, alice, "message_id_mapping")[0]["realId"], message["id"]);
    assert!(types_for(&seen, bob).is_empty());

    let seen = f.send(bob, json!({"type": "message", "room": "general", "content": "yo"}));
    assert_eq!(to(&seen, alice, "message")[0]["seq"], 2);
}

#[test]
fn refusals_carry_event_code_and_temp_id() {
    let mut f = Fixture::new();
    f.room("secret", "private", &["alice"]);
    f.room("open", "public", &[]);
    let bob = f.connect("bob");
    let cases = [
        (json!({"type": "join", "room": "nope"}), "join", "not_found"),
        (json!({"type": "join", "room": "secret"}), "join", "forbidden"),
        (json!({"type": "message", "room": "open", "content": "x", "tempId": "t7"}), "message", "not_joined"),
        (json!({"type": "typing", "room": "open", "isTyping": true}), "typing", "not_joined"),
        (json!({"type": "history", "room": "secret"}), "history", "forbidden"),
        (json!({"type": "wave"}), "wave", "bad_request"),
    ];
    for (event, name, code) in cases {
        let seen = f.send(bob, event.clone());
        let error = to(&seen, bob, "error");
        assert_eq!(error.len(), 1, "{event}");
        assert_eq!(error[0]["event"], name, "{event}");
        assert_eq!(error[0]["code"], code, "{event}");
    }
    let seen = f.send(bob, json!({"type": "message", "room": "open", "content": "x", "tempId": "t7"}));
    assert_eq!(to(&seen, bob, "error")[0]["tempId"], "t7");
    f.hub.handle_ws_text(bob, "{not json", f.now);
    let seen = f.drain();
    assert_eq!(to(&seen, bob, "error")[0]["event"], Value::Null);
}

#[test]
fn too_large_content_is_refused() {
    let mut f = Fixture::with_config(HubConfig { max_content_bytes: 10, ..HubConfig::default() });
    f.room("r", "public", &[]);
    let a = f.connect("a");
    f.send(a, json!({"type": "join", "room": "r"}));
    let seen = f.send(a, json!({"type": "message", "room": "r", "content": "01234567890"}));
    assert_eq!(to(&seen, a, "error")[0]["code"], "too_large");
}

#[test]
fn attachments_must_be_json_that_parsers_can_read() {
    let mut f = Fixture::new();
    f.room("r", "public", &[]);
    let a = f.connect("a");
    f.send(a, json!({"type": "join", "room": "r"}));
    let frame = |attachments: &str| {
        format!(r#"{{"type":"message","room":"r","content":"x","tempId":"t","attachments":{attachments}}}"#)
    };
    // A number past f64's range (valid JSON grammar) and nesting past 64 levels.
    let deep = format!("{}{}", "[".repeat(65), "]".repeat(65));
    for bad in ["[1e400]", "[{\"n\":-1e999}]", deep.as_str()] {
        f.hub.handle_ws_text(a, &frame(bad), f.now);
        let seen = f.drain();
        let error = to(&seen, a, "error");
        assert_eq!((&error[0]["code"], &error[0]["tempId"]), (&json!("bad_request"), &json!("t")), "{bad}");
    }
    // 64 levels, big and exact numbers are fine, and kept as sent.
    let ok = format!("[{}{}, 1e300, 12345678901234567890]", "[".repeat(63), "]".repeat(63));
    f.hub.handle_ws_text(a, &frame(&ok), f.now);
    let seen = f.drain();
    assert_eq!(types_for(&seen, a), ["message_id_mapping", "message"]);
}

#[test]
fn typing_expires_after_the_timeout_and_clears_on_message() {
    let mut f = Fixture::new();
    f.room("r", "public", &[]);
    let a = f.connect("a");
    let b = f.connect("b");
    f.send(a, json!({"type": "join", "room": "r"}));
    f.send(b, json!({"type": "join", "room": "r"}));
    let seen = f.send(a, json!({"type": "typing", "room": "r", "isTyping": true}));
    assert_eq!(to(&seen, b, "typing")[0]["isTyping"], true);
    assert!(to(&seen, a, "typing").is_empty(), "never to the typer");
    let deadline = f.hub.poll_timeout().unwrap();
    assert_eq!(deadline, f.now.mono + Duration::from_secs(10));
    f.advance(Duration::from_millis(9_999));
    f.hub.handle_timeout(f.now);
    assert!(f.drain().is_empty());
    f.advance(Duration::from_millis(1));
    f.hub.handle_timeout(f.now);
    let seen = f.drain();
    assert_eq!(to(&seen, b, "typing")[0]["isTyping"], false);

    f.send(a, json!({"type": "typing", "room": "r", "isTyping": true}));
    let seen = f.send(a, json!({"type": "message", "room": "r", "content": "done"}));
    assert_eq!(types_for(&seen, b), ["message", "typing"]);
    assert_eq!(to(&seen, b, "typing")[0]["isTyping"], false);
    // The stale deadline fires nothing.
    f.advance(Duration::from_secs(11));
    f.hub.handle_timeout(f.now);
    assert!(f.drain().is_empty());
}

#[test]
fn presence_counts_connections_and_goes_offline_with_the_last() {
    let mut f = Fixture::new();
    f.room("r", "public", &[]);
    let watcher = f.connect("w");
    f.send(watcher, json!({"type": "join", "room": "r"}));
    let phone = f.connect("u");
    let laptop = f.connect("u");
    let seen = f.send(phone, json!({"type": "join", "room": "r"}));
    assert_eq!(to(&seen, watcher, "user_joined").len(), 1);
    let seen = f.send(laptop, json!({"type": "join", "room": "r"}));
    assert!(to(&seen, watcher, "user_joined").is_empty(), "only the first connection announces");
    let seen = f.send(laptop, json!({"type": "presence", "status": "away"}));
    assert_eq!(to(&seen, watcher, "presence")[0]["status"], "away");
    assert_eq!(to(&seen, watcher, "presence").len(), 1, "once per receiving connection");
    let (_, presence) = f.keyed("GET", "/api/v1/rooms/r/presence", None);
    assert_eq!(presence["users"][0], json!({"userId": "u", "status": "away", "connections": 2}));

    f.hub.handle_ws_closed(phone, f.now);
    let seen = f.drain();
    assert!(types_for(&seen, watcher).is_empty(), "a second connection remains");
    f.hub.handle_ws_closed(laptop, f.now);
    let seen = f.drain();
    assert_eq!(types_for(&seen, watcher), ["presence", "user_left"]);
    assert_eq!(to(&seen, watcher, "presence")[0]["status"], "offline");
    let (_, stats) = f.keyed("GET", "/api/v1/stats", None);
    assert_eq!(stats["connections"], 1);
    assert_eq!(stats["users"], 1);
}

#[test]
fn recovery_replays_after_since_or_says_not_recovered() {
    let mut f = Fixture::with_config(HubConfig { replay_cap: 3, ..HubConfig::default() });
    f.room("r", "public", &[]);
    let a = f.connect("a");
    f.send(a, json!({"type": "join", "room": "r"}));
    for i in 1..=5 {
        f.send(a, json!({"type": "message", "room": "r", "content": format!("m{i}")}));
    }
    let b = f.connect("b");
    let seen = f.send(b, json!({"type": "join", "room": "r", "since": 2}));
    assert_eq!(types_for(&seen, b), ["joined", "message", "message", "message"]);
    assert_eq!(to(&seen, b, "joined")[0]["recovered"], true);
    let seqs: Vec<&Value> = to(&seen, b, "message").iter().map(|m| &m["seq"]).collect();
    assert_eq!(seqs, [&json!(3), &json!(4), &json!(5)]);
    let c = f.connect("c");
    let seen = f.send(c, json!({"type": "join", "room": "r", "since": 1}));
    assert_eq!(types_for(&seen, c), ["joined"]);
    assert_eq!(to(&seen, c, "joined")[0]["recovered"], false);
}

#[test]
fn answers_stay_within_the_reply_budget() {
    // Each message frame is ~200 bytes of JSON: a budget of 1,000 holds four.
    let mut f = Fixture::with_config(HubConfig { max_reply_bytes: 1000, ..HubConfig::default() });
    f.room("r", "public", &[]);
    let a = f.connect("a");
    f.send(a, json!({"type": "join", "room": "r"}));
    for i in 1..=10 {
        f.send(a, json!({"type": "message", "room": "r", "content": format!("message number {i:02}")}));
    }
    let page = |f: &mut Fixture, query: Value| -> Vec<u64> {
        let seen = f.send(a, query);
        let history = to(&seen, a, "history");
        history[0]["messages"].as_array().unwrap().iter().map(|m| m["seq"].as_u64().unwrap()).collect()
    };
    // Backward pages keep the newest, forward pages the oldest: paging on loses nothing.
    let newest = page(&mut f, json!({"type": "history", "room": "r"}));
    assert!((2..10).contains(&newest.len()), "{newest:?}");
    assert_eq!(newest.last(), Some(&10));
    let forward = page(&mut f, json!({"type": "history", "room": "r", "after": 0}));
    assert_eq!(forward.first(), Some(&1));
    assert_eq!(forward.len(), newest.len());
    // A replay that would not fit is not started: the client pages history.
    let b = f.connect("b");
    let seen = f.send(b, json!({"type": "join", "room": "r", "since": 5}));
    assert_eq!(types_for(&seen, b), ["joined"]);
    assert_eq!(to(&seen, b, "joined")[0]["recovered"], false);
    let seen = f.send(b, json!({"type": "join", "room": "r", "since": 8}));
    assert_eq!(types_for(&seen, b), ["joined", "message", "message"]);
    assert_eq!(to(&seen, b, "joined")[0]["recovered"], true);
    // A single message larger than the budget still comes, alone.
    f.send(a, json!({"type": "message", "room": "r", "content": "x".repeat(2000)}));
    assert_eq!(page(&mut f, json!({"type": "history", "room": "r"})), [11]);
    let (status, body) = f.keyed("GET", "/api/v1/rooms/r/messages?after=0", None);
    assert_eq!(status, 200);
    assert_eq!(body["messages"].as_array().unwrap().len(), forward.len());
}

#[test]
fn edit_delete_and_receipts() {
    let mut f = Fixture::new();
    f.room("r", "public", &[]);
    let a = f.connect("a");
    let b = f.connect("b");
    f.send(a, json!({"type": "join", "room": "r"}));
    f.send(b, json!({"type": "join", "room": "r"}));
    let seen = f.send(a, json!({"type": "message", "room": "r", "content": "typo"}));
    let id = to(&seen, a, "message")[0]["id"].as_str().unwrap().to_string();
    let seen = f.send(b, json!({"type": "edit", "room": "r", "messageId": id, "content": "hack"}));
    assert_eq!(to(&seen, b, "error")[0]["code"], "forbidden");
    let seen = f.send(a, json!({"type": "edit", "room": "r", "messageId": id, "content": "fixed"}));
    let update = to(&seen, b, "message_update")[0];
    assert_eq!(update["message"]["content"], "fixed");
    assert!(update["message"]["editedAt"].is_string());
    let seen = f.send(b, json!({"type": "read", "room": "r", "messageIds": [id]}));
    assert_eq!(to(&seen, a, "read_receipt")[0]["userId"], "b");
    let seen = f.send(b, json!({"type": "read", "room": "r", "messageIds": [id]}));
    assert!(to(&seen, a, "read_receipt").is_empty(), "a receipt is recorded once");
    let (_, receipts) = f.keyed("GET", &format!("/api/v1/rooms/r/messages/{id}/receipts"), None);
    assert_eq!(receipts["receipts"][0]["userId"], "b");
    let seen = f.send(a, json!({"type": "delete", "room": "r", "messageId": id}));
    assert_eq!(to(&seen, b, "message_update")[0]["message"]["deleted"], true);
    let (_, history) = f.keyed("GET", "/api/v1/rooms/r/messages", None);
    assert_eq!(history["messages"][0]["deleted"], true);
    assert_eq!(history["messages"][0]["content"], "");
    let seen = f.send(b, json!({"type": "read", "room": "r", "messageIds": ["m_nope"]}));
    assert_eq!(to(&seen, b, "error")[0]["code"], "not_found");
}

#[test]
fn failed_commit_acknowledges_nothing() {
    let mut f = Fixture::new();
    f.room("r", "public", &[]);
    let a = f.connect("a");
    let b = f.connect("b");
    f.send(a, json!({"type": "join", "room": "r"}));
    f.send(b, json!({"type": "join", "room": "r"}));
    f.fail_commit.set(true);
    let seen = f.send(a, json!({"type": "message", "room": "r", "content": "lost", "tempId": "t1"}));
    assert_eq!(types_for(&seen, a), ["error"]);
    assert_eq!(to(&seen, a, "error")[0]["code"], "internal");
    assert_eq!(to(&seen, a, "error")[0]["tempId"], "t1");
    assert!(types_for(&seen, b).is_empty(), "nothing broadcast");
    let (status, _) = f.keyed("POST", "/api/v1/rooms", Some(json!({"name": "ghost"})));
    assert_eq!(status, 503);
    f.fail_commit.set(false);
    // The seq counter was reconciled: the next message is seq 1 again.
    let seen = f.send(a, json!({"type": "message", "room": "r", "content": "kept", "tempId": "t1"}));
    assert_eq!(to(&seen, b, "message")[0]["seq"], 1);
    let (status, _) = f.keyed("GET", "/api/v1/rooms/ghost", None);
    assert_eq!(status, 404, "the room whose commit failed does not exist");
}

#[test]
fn rest_errors_and_tenant_isolation() {
    let mut f = Fixture::new();
    f.room("general", "public", &[]);
    assert_eq!(f.keyed("POST", "/api/v1/rooms", Some(json!({"name": "general"}))).0, 409);
    assert_eq!(f.keyed("POST", "/api/v1/rooms", Some(json!({"name": "bad name"}))).0, 400);
    assert_eq!(f.keyed("POST", "/api/v1/rooms", Some(json!({"name": "x", "type": "secret"}))).0, 400);
    assert_eq!(f.rest("GET", "/api/v1/rooms", None, None).0, 401);
    assert_eq!(f.rest("GET", "/api/v1/rooms", Some("rh_nope"), None).0, 401);
    assert_eq!(f.keyed("GET", "/api/v1/nothing", None).0, 404);
    assert_eq!(f.keyed("PATCH", "/api/v1/rooms", None).0, 405);
    assert_eq!(f.keyed("GET", "/api/v1/rooms/general/messages?limit=0", None).0, 400);
    let (_, other) = f.rest("POST", "/api/v1/projects", None, Some(json!({"name": "other"})));
    let other_key = other["apiKey"].as_str().unwrap().to_string();
    let (status, rooms) = f.rest("GET", "/api/v1/rooms", Some(&other_key), None);
    assert_eq!(status, 200);
    assert_eq!(rooms["rooms"], json!([]));
    assert_eq!(f.rest("GET", "/api/v1/rooms/general", Some(&other_key), None).0, 404);
}

#[test]
fn admin_token_guards_projects_and_stats() {
    let mut f = Fixture::new();
    f.hub.config.admin_token = Some("s3cret".into());
    assert_eq!(f.rest("POST", "/api/v1/projects", None, Some(json!({"name": "x"}))).0, 401);
    assert_eq!(f.rest("GET", "/stats", None, None).0, 401);
    let mut req = request("GET", "/stats", None, None);
    req.headers.push(("authorization".into(), "Bearer s3cret".into()));
    f.hub.handle_http(ConnId::new(0, 0), &req, LOCAL, f.now);
    assert!(matches!(f.drain().pop(), Some(Seen::Response(200, _))));
}

#[test]
fn rate_limit_refuses_then_closes_abusers() {
    let mut f = Fixture::with_config(HubConfig { max_events_per_second: 5, ..HubConfig::default() });
    let a = f.connect("a");
    for _ in 0..5 {
        assert_eq!(types_for(&f.send(a, json!({"type": "ping"})), a), ["pong"]);
    }
    let seen = f.send(a, json!({"type": "ping"}));
    assert_eq!(to(&seen, a, "error")[0]["code"], "rate_limited");
    // A second later the budget is back.
    f.advance(Duration::from_secs(1));
    assert_eq!(types_for(&f.send(a, json!({"type": "ping"})), a), ["pong"]);
    // Flooding within one second: refused up to the rate, then closed 1008.
    let mut closes = Vec::new();
    for _ in 0..15 {
        f.hub.handle_ws_text(a, r#"{"type":"ping"}"#, f.now);
        let _ = f.hub.commit_with(&mut f.writer);
        while let Some(output) = f.hub.poll_output() {
            if let Output::Close { to, code, .. } = output {
                closes.push((to, code));
            }
        }
    }
    assert_eq!(closes, [(a, 1008)], "sustained abuse closes the connection, once");
}

#[test]
fn rooms_per_connection_are_capped() {
    let mut f = Fixture::with_config(HubConfig { max_rooms_per_connection: 2, ..HubConfig::default() });
    for name in ["a", "b", "c"] {
        f.room(name, "public", &[]);
    }
    let u = f.connect("u");
    f.send(u, json!({"type": "join", "room": "a"}));
    f.send(u, json!({"type": "join", "room": "b"}));
    let seen = f.send(u, json!({"type": "join", "room": "c"}));
    assert_eq!(to(&seen, u, "error")[0]["code"], "forbidden");
    // Re-joining a room already joined is not a new room.
    assert_eq!(types_for(&f.send(u, json!({"type": "join", "room": "a"})), u), ["joined"]);
}

#[test]
fn metrics_expose_counters_and_errors() {
    let mut f = Fixture::new();
    let a = f.connect("a");
    f.send(a, json!({"type": "join", "room": "missing"}));
    let conn = ConnId::new(0, 0);
    f.hub.handle_http(conn, &request("GET", "/metrics", None, None), LOCAL, f.now);
    let _ = f.hub.commit_with(&mut f.writer);
    let Some(Output::Response { response, .. }) = f.hub.poll_output() else { panic!("no response") };
    assert_eq!(response.status, 200);
    assert!(response.content_type.starts_with("text/plain"));
    let text = String::from_utf8(response.body).unwrap();
    for needle in [
        "realtimehub_connections 1\n",
        "realtimehub_errors_total{code=\"not_found\"} 1\n",
        "realtimehub_http_responses_total{status=\"201\"} 1\n",
        "# TYPE realtimehub_loop_iteration_seconds histogram",
        "realtimehub_commit_seconds_count",
        "realtimehub_project_connections{project=\"p_",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in\n{text}");
    }
}

#[test]
fn regressions_from_review() {
    let mut f = Fixture::with_config(HubConfig { max_events_per_second: 3, ..HubConfig::default() });
    f.room("r", "public", &[]);
    let a = f.connect("a");
    let b = f.connect("b");
    f.send(a, json!({"type": "join", "room": "r"}));
    f.send(b, json!({"type": "join", "room": "r"}));
    // Whitespace inside the attachments array does not make an empty message valid.
    let seen = f.send(a, json!({"type": "message", "room": "r", "content": "", "attachments": []}));
    assert_eq!(to(&seen, a, "error")[0]["code"], "bad_request");
    f.hub.handle_ws_text(a, r#"{"type":"message","room":"r","content":"","attachments":[ ]}"#, f.now);
    let seen = f.drain();
    assert_eq!(to(&seen, a, "error")[0]["code"], "bad_request");
    // A rate-limited frame still names its event and tempId.
    let seen = f.send(a, json!({"type": "message", "room": "r", "content": "x", "tempId": "t5"}));
    let error = to(&seen, a, "error")[0];
    assert_eq!(
        (&error["code"], &error["event"], &error["tempId"]),
        (&json!("rate_limited"), &json!("message"), &json!("t5"))
    );
}

#[test]
fn notices_of_failed_writes_are_not_sent() {
    let mut f = Fixture::new();
    f.room("r", "private", &["a", "b"]);
    let a = f.connect("a");
    let b = f.connect("b");
    f.send(a, json!({"type": "join", "room": "r"}));
    f.send(b, json!({"type": "join", "room": "r"}));
    for i in 0..3 {
        f.send(a, json!({"type": "message", "room": "r", "content": format!("m{i}")}));
    }
    f.fail_commit.set(true);
    // Nothing claims the failed writes happened, yet the connections that
    // were taken out of the room are told so (`left`): the live membership
    // is not restored by the reload, and they may join again.
    let key = f.key.clone();
    let fail = |f: &mut Fixture, method: &str, path: &str| -> Vec<Seen> {
        f.hub.handle_http(ConnId::new(0, 0), &request(method, path, Some(&key), None), LOCAL, f.now);
        f.drain()
    };
    let seen = fail(&mut f, "DELETE", "/api/v1/rooms/r/members/b");
    assert!(matches!(seen.last(), Some(Seen::Response(503, _))), "{seen:?}");
    assert_eq!(types_for(&seen, b), ["left"]);
    let seen = fail(&mut f, "DELETE", "/api/v1/rooms/r");
    assert!(matches!(seen.last(), Some(Seen::Response(503, _))), "{seen:?}");
    assert_eq!(types_for(&seen, a), ["left"], "not room_deleted: the room was not deleted");
    assert!(types_for(&seen, b).is_empty());
    let seen = f.send(b, json!({"type": "join", "room": "r"}));
    assert_eq!(types_for(&seen, b), ["joined"], "b is still a member and may join again");
    // A replay of committed rows depends on no write: it is sent even while
    // commits fail (an in-flight row in a replay is tested in
    // `a_replay_includes_messages_still_in_flight`).
    let c = f.connect("a");
    let seen = f.send(c, json!({"type": "join", "room": "r", "since": 1}));
    assert_eq!(types_for(&seen, c), ["joined", "message", "message"]);
    assert_eq!(to(&seen, c, "joined")[0]["recovered"], true);
    f.fail_commit.set(false);
    let (status, room) = f.keyed("GET", "/api/v1/rooms/r", None);
    assert_eq!((status, &room["members"]), (200, &json!(["a", "b"])));
}

impl Fixture {
    fn ws_request(&self, query: &str, origin: Option<&str>) -> Request {
        let mut req = request("GET", &format!("/?{query}"), None, None);
        if let Some(origin) = origin {
            req.headers.push(("origin".into(), origin.into()));
        }
        req
    }

    fn project_id(&mut self) -> String {
        self.keyed("GET", "/api/v1/project", None).1["id"].as_str().unwrap().to_string()
    }
}

#[test]
fn signed_tokens_admit_limit_and_expire() {
    let mut f = Fixture::new();
    f.room("a", "public", &[]);
    f.room("b", "public", &[]);
    let project = f.project_id();
    let key = f.key.clone();
    let exp = f.now.unix_ms / 1000 + 2;
    let token = sign(&json!({"iss": project, "sub": "alice", "exp": exp, "rooms": ["a"]}), key.as_bytes());
    let session = f.hub.authorize_ws(&f.ws_request(&format!("token={token}"), None), f.now).unwrap();
    let conn = ConnId::new(77, 1);
    f.hub.handle_ws_open(conn, session, f.now);
    let seen = f.drain();
    assert_eq!(to(&seen, conn, "connected")[0]["userId"], "alice");
    assert_eq!(types_for(&f.send(conn, json!({"type": "join", "room": "a"})), conn), ["joined"]);
    let seen = f.send(conn, json!({"type": "join", "room": "b"}));
    assert_eq!(to(&seen, conn, "error")[0]["code"], "forbidden", "the token grants room a only");
    // The connection is closed when the token expires.
    f.advance(Duration::from_millis(2_500));
    f.hub.handle_timeout(f.now);
    let _ = f.hub.commit_with(&mut f.writer);
    let mut closed = None;
    while let Some(output) = f.hub.poll_output() {
        if let Output::Close { to, code, .. } = output {
            closed = Some((to, code));
        }
    }
    assert_eq!(closed, Some((conn, 1008)));

    // Refusals: wrong secret, expired, unsigned, a userId that is not the subject.
    let fresh = f.now.unix_ms / 1000 + 60;
    let cases = [
        sign(&json!({"iss": project, "sub": "bob", "exp": fresh}), b"not-the-key"),
        sign(&json!({"iss": project, "sub": "bob", "exp": f.now.unix_ms / 1000 - 1}), key.as_bytes()),
        "eyJhbGciOiJub25lIn0.eyJpc3MiOiJwIiwic3ViIjoiYiIsImV4cCI6OTk5OTk5OTk5OX0.".to_string(),
        "garbage".to_string(),
    ];
    for bad in cases {
        let err = f.hub.authorize_ws(&f.ws_request(&format!("token={bad}"), None), f.now).unwrap_err();
        assert_eq!(err.status, 401, "{bad}");
    }
    let ok = sign(&json!({"iss": project, "sub": "bob", "exp": fresh}), key.as_bytes());
    let err = f.hub.authorize_ws(&f.ws_request(&format!("token={ok}&userId=mallory"), None), f.now).unwrap_err();
    assert_eq!(err.status, 401);
}

#[test]
fn token_expiry_survives_a_clock_step_and_closed_connections_leave_no_deadline() {
    let mut f = Fixture::new();
    let (project, key) = (f.project_id(), f.key.clone());
    let open = |f: &mut Fixture, conn: ConnId, exp_s: i64| {
        let token = sign(&json!({"iss": project, "sub": "u", "exp": exp_s}), key.as_bytes());
        let session = f.hub.authorize_ws(&f.ws_request(&format!("token={token}"), None), f.now).unwrap();
        f.hub.handle_ws_open(conn, session, f.now);
        f.drain();
    };
    let closes = |f: &mut Fixture| -> Vec<ConnId> {
        f.hub.handle_timeout(f.now);
        let _ = f.hub.commit_with(&mut f.writer);
        let mut closed = Vec::new();
        while let Some(output) = f.hub.poll_output() {
            if let Output::Close { to, .. } = output {
                closed.push(to);
            }
        }
        closed
    };
    // The wall clock steps back 5 s after the connection opened: at the
    // monotonic deadline the token still has 5 s left, so it is kept and
    // closed when its own time is up.
    let conn = ConnId::new(500, 1);
    let exp = f.now.unix_ms / 1000 + 10;
    open(&mut f, conn, exp);
    f.now.unix_ms -= 5_000;
    f.now.mono += Duration::from_millis(10_500);
    f.now.unix_ms += 10_500;
    assert!(closes(&mut f).is_empty(), "closed while the token had time left");
    f.advance(Duration::from_secs(5));
    assert_eq!(closes(&mut f), [conn]);
    f.hub.handle_ws_closed(conn, f.now);
    // Connections that close before their token expires do not pile up.
    for i in 0..1_000 {
        let c = ConnId::new(1_000 + i, 1);
        let exp = f.now.unix_ms / 1000 + 3_600;
        open(&mut f, c, exp);
        f.hub.handle_ws_closed(c, f.now);
    }
    assert!(f.hub.pending_expiries() <= 65, "{} expiries kept for closed connections", f.hub.pending_expiries());
}

#[test]
fn project_settings_require_tokens_and_origins() {
    let mut f = Fixture::new();
    let key = f.key.clone();
    let (status, body) = f.keyed("GET", "/api/v1/project", None);
    assert_eq!((status, &body["requireTokens"], &body["allowedOrigins"]), (200, &json!(false), &json!([])));
    let patch = json!({"requireTokens": true, "allowedOrigins": ["https://app.example"]});
    let (status, body) = f.keyed("PATCH", "/api/v1/project", Some(patch));
    assert_eq!((status, &body["requireTokens"]), (200, &json!(true)));
    assert_eq!(f.keyed("PATCH", "/api/v1/project", Some(json!({"requireTokens": "yes"}))).0, 400);
    assert_eq!(f.keyed("PATCH", "/api/v1/project", Some(json!({"color": "red"}))).0, 400);
    let by_key = f.ws_request(&format!("apiKey={key}&userId=u"), None);
    assert_eq!(f.hub.authorize_ws(&by_key, f.now).unwrap_err().status, 401, "the key no longer opens sockets");
    let project = f.project_id();
    let token = sign(&json!({"iss": project, "sub": "u", "exp": f.now.unix_ms / 1000 + 60}), key.as_bytes());
    let query = format!("token={token}");
    assert!(f.hub.authorize_ws(&f.ws_request(&query, Some("https://app.example")), f.now).is_ok());
    assert!(f.hub.authorize_ws(&f.ws_request(&query, None), f.now).is_ok(), "non-browser clients send no Origin");
    let evil = f.hub.authorize_ws(&f.ws_request(&query, Some("https://evil.example")), f.now).unwrap_err();
    assert_eq!(evil.status, 403);
}

// ----- batches in flight (the store thread's pipeline, driven by hand) -----

fn msg(room: &str, content: &str, temp_id: &str) -> Value {
    json!({"type": "message", "room": room, "content": content, "tempId": temp_id})
}

#[test]
fn acknowledgements_wait_for_their_batch_and_everything_keeps_its_order() {
    let mut f = Fixture::new();
    f.room("r", "public", &[]);
    let a = f.connect("a");
    let b = f.connect("b");
    f.send(a, json!({"type": "join", "room": "r"}));
    f.send(b, json!({"type": "join", "room": "r"}));
    let (first, seen) = f.send_held(a, msg("r", "one", "t1"));
    let first = first.expect("a message writes");
    assert!(seen.is_empty(), "nothing before the commit: {seen:?}");
    let (second, seen) = f.send_held(a, msg("r", "two", "t2"));
    let second = second.expect("a second batch in flight");
    assert!(seen.is_empty(), "{seen:?}");
    assert_eq!((first.id + 1, first.epoch), (second.id, second.epoch));
    // A ping writes nothing, but its pong waits behind the batches before it.
    let (none, seen) = f.send_held(b, json!({"type": "ping"}));
    assert!(none.is_none() && seen.is_empty(), "{seen:?}");
    assert_eq!(f.hub.store_backlog().0, 2);
    let seen = f.settle(&first, true);
    assert_eq!(types_for(&seen, a), ["message_id_mapping", "message"]);
    assert_eq!(types_for(&seen, b), ["message"], "the pong waits for the second batch");
    let seen = f.settle(&second, true);
    assert_eq!(types_for(&seen, a), ["message_id_mapping", "message"]);
    assert_eq!(types_for(&seen, b), ["message", "pong"]);
    assert_eq!(f.hub.store_backlog(), (0, 0));
    let (_, page) = f.keyed("GET", "/api/v1/rooms/r/messages", None);
    assert_eq!(page["messages"].as_array().unwrap().len(), 2);
}

#[test]
fn a_temp_id_retried_while_in_flight_is_stored_once_and_mapped_after_the_commit() {
    let mut f = Fixture::new();
    f.room("r", "public", &[]);
    let a = f.connect("a");
    f.send(a, json!({"type": "join", "room": "r"}));
    let (first, _) = f.send_held(a, msg("r", "one", "t1"));
    let first = first.unwrap();
    let (retry, seen) = f.send_held(a, msg("r", "one again", "t1"));
    assert!(retry.is_none(), "the retry stores nothing: {retry:?}");
    assert!(seen.is_empty(), "its mapping waits for the original's batch: {seen:?}");
    let seen = f.settle(&first, true);
    let maps = to(&seen, a, "message_id_mapping");
    assert_eq!(maps.len(), 2, "{seen:?}");
    assert_eq!((&maps[0]["realId"], &maps[0]["seq"]), (&maps[1]["realId"], &maps[1]["seq"]));
    // Committed now: a later retry is answered from the store.
    let seen = f.send(a, msg("r", "once more", "t1"));
    assert_eq!(to(&seen, a, "message_id_mapping")[0]["realId"], maps[0]["realId"]);
    let (_, page) = f.keyed("GET", "/api/v1/rooms/r/messages", None);
    assert_eq!(page["messages"].as_array().unwrap().len(), 1);
}

#[test]
fn a_failed_batch_fails_exactly_what_was_built_on_it() {
    let mut f = Fixture::new();
    f.room("r", "public", &[]);
    let a = f.connect("a");
    let b = f.connect("b");
    f.send(a, json!({"type": "join", "room": "r"}));
    f.send(b, json!({"type": "join", "room": "r"}));
    let seen = f.send(a, msg("r", "kept", "t0"));
    assert_eq!(to(&seen, a, "message_id_mapping")[0]["seq"], 1);
    let (first, _) = f.send_held(a, msg("r", "lost", "t1"));
    let (second, _) = f.send_held(a, msg("r", "built on it", "t2"));
    let (_, _) = f.send_held(b, json!({"type": "ping"}));
    let (first, second) = (first.unwrap(), second.unwrap());
    let seen = f.settle(&first, false);
    assert_eq!(types_for(&seen, a), ["error"], "{seen:?}");
    assert_eq!(
        (&to(&seen, a, "error")[0]["tempId"], &to(&seen, a, "error")[0]["code"]),
        (&json!("t1"), &json!("internal"))
    );
    assert!(
        seen.iter().all(|s| matches!(s, Seen::Frame(c, _) if *c == a)),
        "no broadcast of a failed message: {seen:?}"
    );
    // The store refuses the failed epoch's later batch: what was built on the
    // failed one fails too; what depended on no write (the pong) still goes.
    let seen = f.settle(&second, false);
    assert_eq!(types_for(&seen, a), ["error"], "{seen:?}");
    assert_eq!(to(&seen, a, "error")[0]["tempId"], "t2");
    assert_eq!(types_for(&seen, b), ["pong"], "{seen:?}");
    // A new epoch; memory matches the committed state (seq 2 is free again).
    let (next, _) = f.send_held(a, msg("r", "after", "t3"));
    let next = next.unwrap();
    assert_eq!(next.epoch, first.epoch + 1);
    let seen = f.settle(&next, true);
    assert_eq!(to(&seen, a, "message_id_mapping")[0]["seq"], 2);
    // A retry of a failed tempId stores it.
    let seen = f.send(a, msg("r", "lost", "t1"));
    assert_eq!(to(&seen, a, "message_id_mapping")[0]["seq"], 3);
    let (_, page) = f.keyed("GET", "/api/v1/rooms/r/messages", None);
    let contents: Vec<&str> =
        page["messages"].as_array().unwrap().iter().map(|m| m["content"].as_str().unwrap()).collect();
    assert_eq!(contents, ["kept", "after", "lost"]);
}

#[test]
fn edits_and_receipts_of_messages_still_in_flight() {
    let mut f = Fixture::new();
    f.room("r", "public", &[]);
    let a = f.connect("a");
    let b = f.connect("b");
    f.send(a, json!({"type": "join", "room": "r"}));
    f.send(b, json!({"type": "join", "room": "r"}));
    let (first, _) = f.send_held(a, msg("r", "draft", "t1"));
    let first = first.unwrap();
    let id = match &first.ops[0] {
        WriteOp::InsertMessage(row) => row.id.clone(),
        other => panic!("{other:?}"),
    };
    let (edit, seen) = f.send_held(a, json!({"type": "edit", "room": "r", "messageId": id, "content": "final"}));
    assert!(seen.is_empty(), "{seen:?}");
    let (read, _) = f.send_held(b, json!({"type": "read", "room": "r", "messageIds": [id, id]}));
    let (read_again, _) = f.send_held(b, json!({"type": "read", "room": "r", "messageIds": [id]}));
    assert!(read_again.is_none(), "a receipt in flight is not written twice");
    f.settle(&first, true);
    let seen = f.settle(&edit.unwrap(), true);
    assert_eq!(to(&seen, b, "message_update")[0]["message"]["content"], "final");
    let seen = f.settle(&read.unwrap(), true);
    assert_eq!(to(&seen, a, "read_receipt").len(), 1, "one receipt for the id sent twice: {seen:?}");
    let (_, page) = f.keyed("GET", "/api/v1/rooms/r/messages", None);
    assert_eq!(page["messages"][0]["content"], "final");
    let (_, receipts) = f.keyed("GET", &format!("/api/v1/rooms/r/messages/{id}/receipts"), None);
    assert_eq!(receipts["receipts"].as_array().unwrap().len(), 1);
}

#[test]
fn a_replay_includes_messages_still_in_flight() {
    let mut f = Fixture::new();
    f.room("r", "public", &[]);
    let a = f.connect("a");
    f.send(a, json!({"type": "join", "room": "r"}));
    f.send(a, msg("r", "one", "t1"));
    f.send(a, msg("r", "two", "t2"));
    let c = f.connect("c");
    let d = f.connect("d");
    let (third, _) = f.send_held(a, msg("r", "three", "t3"));
    let third = third.unwrap();
    // `c` joins while seq 3 is in flight: its broadcast went to the room
    // before `c` was in it, so the replay carries it.
    let (_, seen) = f.send_held(c, json!({"type": "join", "room": "r", "since": 1}));
    assert!(seen.is_empty(), "the replay waits for the batch in flight: {seen:?}");
    let seen = f.settle(&third, true);
    let replay: Vec<&Value> = to(&seen, c, "message");
    let seqs: Vec<u64> = replay.iter().map(|m| m["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, [2, 3], "{seen:?}");
    assert_eq!(to(&seen, c, "joined")[0]["recovered"], true);
    // Had the batch failed, the replay would not claim seq 3.
    let (fourth, _) = f.send_held(a, msg("r", "four", "t4"));
    f.send_held(d, json!({"type": "join", "room": "r", "since": 3}));
    let seen = f.settle(&fourth.unwrap(), false);
    assert!(to(&seen, d, "message").is_empty(), "{seen:?}");
    assert_eq!(to(&seen, d, "joined")[0]["recovered"], false);
}

#[test]
fn reads_right_behind_a_write_see_it_once_it_is_committed() {
    let mut f = Fixture::new();
    f.room("r", "public", &[]);
    let a = f.connect("a");
    f.send(a, json!({"type": "join", "room": "r"}));
    f.send(a, msg("r", "committed", "t0"));
    // A history request and a REST page right behind a message still in flight.
    let (first, _) = f.send_held(a, msg("r", "in flight", "t1"));
    let (_, seen) = f.send_held(a, json!({"type": "history", "room": "r"}));
    assert!(seen.is_empty(), "{seen:?}");
    let key = f.key.clone();
    f.hub.handle_http(
        ConnId::new(0, 0),
        &request("GET", "/api/v1/rooms/r/messages?after=1", Some(&key), None),
        LOCAL,
        f.now,
    );
    assert!(f.hub.commit().is_none());
    let seen = f.settle(&first.unwrap(), true);
    let history = to(&seen, a, "history");
    let contents: Vec<&Value> = history[0]["messages"].as_array().unwrap().iter().map(|m| &m["content"]).collect();
    assert_eq!(contents, [&json!("committed"), &json!("in flight")]);
    let page = seen.iter().find_map(|s| match s {
        Seen::Response(200, body) => Some(body.clone()),
        _ => None,
    });
    assert_eq!(page.unwrap()["messages"][0]["content"], "in flight");
    // If that write fails, so do the reads that included it.
    let (second, _) = f.send_held(a, msg("r", "doomed", "t2"));
    let (_, _) = f.send_held(a, json!({"type": "history", "room": "r"}));
    let seen = f.settle(&second.unwrap(), false);
    let errors = to(&seen, a, "error");
    assert_eq!(errors.len(), 2, "{seen:?}");
    assert_eq!((&errors[0]["event"], &errors[1]["event"]), (&json!("message"), &json!("history")));
}

#[test]
fn history_reads_are_paid_from_an_allowance_that_refills_with_time() {
    let mut f = Fixture::with_config(HubConfig { max_read_bytes_per_second: 3000, ..HubConfig::default() });
    f.room("r", "public", &[]);
    for i in 0..10 {
        let body = json!({"userId": "u", "content": format!("{i:0>500}")});
        assert_eq!(f.keyed("POST", "/api/v1/rooms/r/messages", Some(body)).0, 201);
    }
    let a = f.connect("a");
    let ask = |f: &mut Fixture| -> Value {
        let seen = f.send(a, json!({"type": "history", "room": "r", "limit": 10}));
        let frames: Vec<&Seen> = seen.iter().filter(|s| matches!(s, Seen::Frame(c, _) if *c == a)).collect();
        match frames[..] {
            [Seen::Frame(_, v)] => v.clone(),
            _ => panic!("one answer expected: {seen:?}"),
        }
    };
    // About 7 KB per page against 3 KB per second: admitted while positive, then in debt.
    assert_eq!(ask(&mut f)["type"], "history");
    let refused = ask(&mut f);
    assert_eq!((refused["code"].as_str(), refused["event"].as_str()), (Some("rate_limited"), Some("history")));
    f.advance(Duration::from_millis(500));
    assert_eq!(ask(&mut f)["code"], "rate_limited", "still in debt");
    f.advance(Duration::from_secs(2));
    assert_eq!(ask(&mut f)["type"], "history", "repaid after the debt / rate");
}

#[test]
fn a_token_scope_limits_history_like_join() {
    let mut f = Fixture::new();
    f.room("lobby", "public", &[]);
    f.room("hr", "private", &["alice"]);
    let project = f.project_id();
    let exp = f.now.unix_ms / 1000 + 60;
    let token = sign(&json!({"iss": project, "sub": "alice", "exp": exp, "rooms": ["lobby"]}), f.key.as_bytes());
    let session = f.hub.authorize_ws(&f.ws_request(&format!("token={token}"), None), f.now).unwrap();
    let conn = ConnId::new(99, 1);
    f.hub.handle_ws_open(conn, session, f.now);
    f.drain();
    for (event, room) in [("history", "hr"), ("join", "hr")] {
        let seen = f.send(conn, json!({"type": event, "room": room}));
        assert_eq!(to(&seen, conn, "error")[0]["code"], "forbidden", "{event} {room}");
    }
    let seen = f.send(conn, json!({"type": "history", "room": "lobby"}));
    assert_eq!(to(&seen, conn, "history").len(), 1);
}

#[test]
fn quotas_refuse_rooms_members_and_stored_bytes() {
    let mut f = Fixture::with_config(HubConfig {
        max_rooms_per_project: 2,
        max_members_per_room: 1,
        max_stored_bytes_per_project: 1500,
        ..HubConfig::default()
    });
    f.room("a", "public", &[]);
    f.room("p", "private", &["x"]);
    assert_eq!(f.keyed("POST", "/api/v1/rooms", Some(json!({"name": "c"}))).0, 429);
    assert_eq!(f.keyed("PUT", "/api/v1/rooms/p/members/y", None).0, 429);
    assert_eq!(f.keyed("PUT", "/api/v1/rooms/p/members/x", None).0, 204, "already a member");
    let body = json!({"userId": "u", "content": "z".repeat(1000)});
    assert_eq!(f.keyed("POST", "/api/v1/rooms/a/messages", Some(body.clone())).0, 201);
    let (status, refused) = f.keyed("POST", "/api/v1/rooms/a/messages", Some(body.clone()));
    assert_eq!((status, &refused["error"]["code"]), (413, &json!("payload_too_large")));
    assert_eq!(f.keyed("DELETE", "/api/v1/rooms/a", None).0, 204);
    f.room("a", "public", &[]);
    assert_eq!(f.keyed("POST", "/api/v1/rooms/a/messages", Some(body)).0, 201, "the deleted room's bytes are freed");
}

#[test]
fn memberships_and_retention_in_flight_count_before_their_commit() {
    let mut f = Fixture::with_config(HubConfig { retention_messages_per_room: 4, ..HubConfig::default() });
    f.room("p", "private", &["a"]);
    f.room("r", "public", &[]);
    let b = f.connect("b");
    // The member is added in a batch still in flight; b's join right behind it is admitted.
    let key = f.key.clone();
    f.hub.handle_http(ConnId::new(0, 0), &request("PUT", "/api/v1/rooms/p/members/b", Some(&key), None), LOCAL, f.now);
    let added = f.hub.commit().expect("a membership writes");
    let (_, seen) = f.send_held(b, json!({"type": "join", "room": "p"}));
    assert!(seen.is_empty(), "{seen:?}");
    let seen = f.settle(&added, true);
    assert_eq!(types_for(&seen, b), ["joined"], "{seen:?}");
    let (_, view) = f.keyed("GET", "/api/v1/rooms/p", None);
    assert_eq!(view["members"], json!(["a", "b"]));
    // Retention trims rows still in flight with the committed ones.
    f.send(b, json!({"type": "join", "room": "r"}));
    for i in 0..3 {
        f.send(b, msg("r", &format!("c{i}"), &format!("c{i}")));
    }
    let mut held = Vec::new();
    for i in 3..6 {
        let (batch, _) = f.send_held(b, msg("r", &format!("f{i}"), &format!("f{i}")));
        held.push(batch.unwrap());
    }
    assert!(held[2].ops.iter().any(|op| matches!(op, WriteOp::TrimRoom { through_seq: 2, .. })), "{:?}", held[2].ops);
    for batch in &held {
        f.settle(batch, true);
    }
    let (_, page) = f.keyed("GET", "/api/v1/rooms/r/messages", None);
    let seqs: Vec<u64> = page["messages"].as_array().unwrap().iter().map(|m| m["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, [3, 4, 5, 6]);
}

/// Outputs for one connection in order, keeping `Done` and `RoomScoped`
/// (which `collect` drops): what a dialect with acknowledgements sees.
fn outputs_for(f: &mut Fixture, conn: ConnId) -> Vec<String> {
    let mut seen = Vec::new();
    while let Some(output) = f.hub.poll_output() {
        match output {
            Output::Frame { to, wire } if to == conn => {
                seen.push(parse_wire(&wire)["type"].as_str().unwrap_or("").into())
            }
            Output::Broadcast { to, wire } if to.contains(&conn) => {
                seen.push(parse_wire(&wire)["type"].as_str().unwrap_or("").into())
            }
            Output::RoomScoped { to, wire } if to.contains(&conn) => {
                let v = parse_wire(&wire);
                seen.push(format!("scoped {} {}", v["type"].as_str().unwrap_or(""), v["room"].as_str().unwrap_or("")))
            }
            Output::Done { to, request, error } if to == conn => {
                seen.push(format!("done {request} {}", error.map_or("ok", |(code, _)| code)))
            }
            _ => {}
        }
    }
    seen
}

#[test]
fn a_request_id_ends_each_event_with_done_after_its_answers_and_its_commit() {
    let mut f = Fixture::new();
    f.room("r", "public", &[]);
    let a = f.connect("a");
    f.hub.handle_request(a, r#"{"type":"join","room":"r"}"#, Some(1), f.now);
    let _ = f.hub.commit_with(&mut f.writer);
    assert_eq!(outputs_for(&mut f, a), ["joined", "done 1 ok"]);
    // A write: nothing, Done included, before its batch commits.
    f.hub.handle_request(a, r#"{"type":"message","room":"r","content":"x","tempId":"t"}"#, Some(2), f.now);
    let batch = f.hub.commit().expect("a message writes");
    assert!(outputs_for(&mut f, a).is_empty());
    f.hub.handle_committed(Completion { id: batch.id, result: f.writer.apply(&batch), took: Duration::ZERO });
    assert_eq!(outputs_for(&mut f, a), ["message_id_mapping", "message", "done 2 ok"]);
    // A failed commit turns the Done into an error, after the error frame.
    f.hub.handle_request(a, r#"{"type":"message","room":"r","content":"y","tempId":"u"}"#, Some(3), f.now);
    let batch = f.hub.commit().expect("a message writes");
    let failed = Err(StoreError { context: "commit", detail: "disk full (simulated)".into() });
    f.hub.handle_committed(Completion { id: batch.id, result: failed, took: Duration::ZERO });
    assert_eq!(outputs_for(&mut f, a), ["error", "done 3 internal"]);
    // A refusal: its error frame, then Done with the code; no request id, no Done.
    f.hub.handle_request(a, r#"{"type":"leave","room":"nope"}"#, Some(4), f.now);
    f.hub.handle_request(a, r#"{"type":"ping"}"#, None, f.now);
    let _ = f.hub.commit_with(&mut f.writer);
    assert_eq!(outputs_for(&mut f, a), ["error", "done 4 not_found", "pong"]);
}

#[test]
fn a_status_change_is_also_scoped_per_shared_room_for_dialects() {
    let mut f = Fixture::new();
    f.room("r1", "public", &[]);
    f.room("r2", "public", &[]);
    let a = f.connect("a");
    let b = f.connect("b");
    for room in ["r1", "r2"] {
        f.send(a, json!({"type": "join", "room": room}));
        f.send(b, json!({"type": "join", "room": room}));
    }
    f.hub.handle_ws_text(a, r#"{"type":"presence","status":"away"}"#, f.now);
    let _ = f.hub.commit_with(&mut f.writer);
    // Native clients get one frame per connection; the scoped copies name each room.
    assert_eq!(outputs_for(&mut f, b), ["presence", "scoped presence r1", "scoped presence r2"]);
}

/// The ids of the `message` frames one connection got, with their content.
fn contents(seen: &[Seen], conn: ConnId) -> Vec<String> {
    to(seen, conn, "message").iter().map(|m| m["content"].as_str().unwrap_or("?").to_string()).collect()
}

#[test]
fn a_resumed_session_gets_its_rooms_back_and_what_it_missed_in_the_order_sent() {
    let mut f = Fixture::new();
    f.room("r1", "public", &[]);
    f.room("r2", "public", &[]);
    let alice = f.connect("alice");
    f.hub.make_resumable(alice, "s1");
    let bob = f.connect("bob");
    for room in ["r1", "r2"] {
        f.send(alice, json!({"type": "join", "room": room}));
        f.send(bob, json!({"type": "join", "room": room}));
    }
    let seen = f.send(bob, json!({"type": "message", "room": "r1", "content": "seen"}));
    let last_seen = to(&seen, alice, "message")[0]["id"].as_str().unwrap().to_string();
    f.send(bob, json!({"type": "message", "room": "r2", "content": "sent, never read"}));
    f.hub.handle_ws_closed(alice, f.now);
    let seen = f.drain();
    assert_eq!(to(&seen, bob, "user_left").len(), 2, "gone from both rooms meanwhile");
    for (room, content) in [("r2", "x"), ("r1", "y"), ("r2", "z")] {
        f.send(bob, json!({"type": "message", "room": room, "content": content}));
    }
    // Back within the window, having seen `seen` but not the message after it.
    let again = f.connect("alice");
    assert!(f.hub.resume(again, "s1", Some(&last_seen), f.now));
    let seen = f.drain();
    assert_eq!(contents(&seen, again), ["sent, never read", "x", "y", "z"]);
    assert!(to(&seen, again, "joined").is_empty(), "resumed without `joined`");
    assert_eq!(to(&seen, bob, "user_joined").len(), 2);
    let seen = f.send(bob, json!({"type": "message", "room": "r2", "content": "live"}));
    assert_eq!(contents(&seen, again), ["live"]);
    // Another user cannot resume it; the session is still there for its owner.
    let mallory = f.connect("mallory");
    assert!(!f.hub.resume(mallory, "s1", None, f.now));
    assert_eq!(f.hub.resumable_sessions(), 1);
}

#[test]
fn a_session_survives_a_restart_and_expires_after_its_window() {
    let mut f = Fixture::with_config(HubConfig { resume_window: Duration::from_secs(60), ..HubConfig::default() });
    f.room("r1", "public", &[]);
    let alice = f.connect("alice");
    f.hub.make_resumable(alice, "s1");
    f.send(alice, json!({"type": "join", "room": "r1"}));
    f.send(alice, json!({"type": "message", "room": "r1", "content": "before"}));
    // A crash: no close was ever handled; the row written with the join remains.
    f.restart();
    let bob = f.connect("bob");
    f.send(bob, json!({"type": "join", "room": "r1"}));
    f.send(bob, json!({"type": "message", "room": "r1", "content": "while down"}));
    let again = f.connect("alice");
    // It never saw a live message: everything after its join is missed.
    assert!(f.hub.resume(again, "s1", None, f.now));
    assert_eq!(contents(&f.drain(), again), ["before", "while down"]);
    let seen = f.send(bob, json!({"type": "message", "room": "r1", "content": "after"}));
    let ids: Vec<String> = to(&seen, again, "message").iter().map(|m| m["id"].as_str().unwrap().into()).collect();
    assert_eq!(ids.len(), 1);
    // Ids made after the restart sort after those made before it.
    let history = f.send(again, json!({"type": "history", "room": "r1"}));
    let all: Vec<&str> = to(&history, again, "history")[0]["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    let mut sorted = all.clone();
    sorted.sort();
    assert_eq!(all, sorted);

    // Dropped again and back after the window: not resumed, and forgotten.
    f.hub.handle_ws_closed(again, f.now);
    f.drain();
    f.advance(Duration::from_secs(61));
    f.hub.handle_timeout(f.now);
    f.drain();
    assert_eq!(f.hub.resumable_sessions(), 0);
    let late = f.connect("alice");
    assert!(!f.hub.resume(late, "s1", None, f.now));
    f.restart();
    let late = f.connect("alice");
    assert!(!f.hub.resume(late, "s1", None, f.now), "expired sessions are deleted from the store too");
}

#[test]
fn more_missed_than_the_replay_cap_is_not_resumed_and_changes_nothing() {
    let mut f = Fixture::with_config(HubConfig { replay_cap: 2, ..HubConfig::default() });
    f.room("r1", "public", &[]);
    let alice = f.connect("alice");
    f.hub.make_resumable(alice, "s1");
    f.send(alice, json!({"type": "join", "room": "r1"}));
    f.hub.handle_ws_closed(alice, f.now);
    f.drain();
    let bob = f.connect("bob");
    f.send(bob, json!({"type": "join", "room": "r1"}));
    for n in 0..3 {
        f.send(bob, json!({"type": "message", "room": "r1", "content": format!("m{n}")}));
    }
    let again = f.connect("alice");
    assert!(!f.hub.resume(again, "s1", None, f.now));
    let seen = f.drain();
    assert!(to(&seen, bob, "user_joined").is_empty() && contents(&seen, again).is_empty());
    let seen = f.send(again, json!({"type": "message", "room": "r1", "content": "x"}));
    assert_eq!(to(&seen, again, "error")[0]["code"], "not_joined");
}

/// The backend calls among what was seen.
fn calls(seen: &[Seen]) -> Vec<OutboundCall> {
    seen.iter()
        .filter_map(|s| match s {
            Seen::Outbound(call) => Some(call.clone()),
            _ => None,
        })
        .collect()
}

/// The events of a webhook post, by type.
fn event_types(call: &OutboundCall) -> Vec<String> {
    let body: Value = serde_json::from_slice(&call.body).unwrap();
    body["events"].as_array().unwrap().iter().map(|e| e["type"].as_str().unwrap().to_string()).collect()
}

/// Delivers everything waiting (answering 200), returning the event types in order.
fn deliver_all(f: &mut Fixture) -> Vec<String> {
    let mut types = Vec::new();
    let mut pending = calls(&f.hooks());
    while let Some(call) = pending.pop() {
        assert!(call.url.starts_with("http://backend.test/"), "{}", call.url);
        types.extend(event_types(&call));
        pending.extend(calls(&f.answer(&call, 200, json!({}))));
    }
    types
}

fn with_webhooks(config: HubConfig) -> Fixture {
    let mut f = Fixture::with_config(config);
    let body = json!({"webhookUrl": "http://backend.test/hook"});
    assert_eq!(f.keyed("PATCH", "/api/v1/project", Some(body)).0, 200);
    f
}

#[test]
fn every_change_becomes_a_signed_webhook_event_in_order() {
    let mut f = with_webhooks(HubConfig { user_offline_grace: Duration::from_secs(5), ..HubConfig::default() });
    f.room("r1", "public", &[]);
    let alice = f.connect("alice");
    f.send(alice, json!({"type": "join", "room": "r1"}));
    let seen = f.send(alice, json!({"type": "message", "room": "r1", "content": "hi"}));
    let id = to(&seen, alice, "message")[0]["id"].as_str().unwrap().to_string();
    f.send(alice, json!({"type": "edit", "room": "r1", "messageId": id, "content": "hello"}));
    f.send(alice, json!({"type": "read", "room": "r1", "messageIds": [id]}));
    f.send(alice, json!({"type": "delete", "room": "r1", "messageId": id}));
    f.send(alice, json!({"type": "leave", "room": "r1"}));
    f.hub.handle_ws_closed(alice, f.now);
    f.drain();
    let mut types = deliver_all(&mut f);
    // Offline only once the grace period has passed.
    assert!(!types.contains(&"user.offline".to_string()));
    f.advance(Duration::from_secs(6));
    types.extend(deliver_all(&mut f));
    assert_eq!(
        types,
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
    assert_eq!(f.hub.outbox_depth(), 0);
}

#[test]
fn webhook_posts_are_signed_with_the_api_key() {
    let mut f = with_webhooks(HubConfig::default());
    let _alice = f.connect("alice");
    let call = calls(&f.hooks()).pop().expect("user.online is posted");
    let (t, v1) = call.signature.split_once(',').unwrap();
    let t: i64 = t.strip_prefix("t=").unwrap().parse().unwrap();
    assert_eq!(t, f.now.unix_ms / 1000);
    assert_eq!(signature(&f.key, t, &call.body), call.signature);
    assert_eq!(v1.len(), 3 + 64);
    let body: Value = serde_json::from_slice(&call.body).unwrap();
    let event = &body["events"][0];
    assert_eq!((event["type"].as_str(), event["data"]["userId"].as_str()), (Some("user.online"), Some("alice")));
    assert!(event["id"].as_str().unwrap().starts_with("evt_") && event["createdAt"].is_string());
}

#[test]
fn a_page_reload_within_the_grace_period_sends_neither_offline_nor_online() {
    let mut f = with_webhooks(HubConfig::default());
    let alice = f.connect("alice");
    assert_eq!(deliver_all(&mut f), ["user.online"]);
    f.hub.handle_ws_closed(alice, f.now);
    f.drain();
    f.advance(Duration::from_secs(2));
    let _again = f.connect("alice");
    f.advance(Duration::from_secs(10));
    assert!(deliver_all(&mut f).is_empty());
}

#[test]
fn failed_posts_are_retried_with_backoff_and_dropped_past_the_maximum_age() {
    let config = HubConfig {
        webhook_retry_min: Duration::from_secs(1),
        webhook_retry_max: Duration::from_secs(8),
        webhook_max_age: Duration::from_secs(60),
        ..HubConfig::default()
    };
    let mut f = with_webhooks(config);
    let _alice = f.connect("alice");
    let call = calls(&f.hooks()).pop().unwrap();
    assert!(calls(&f.answer(&call, 500, json!({}))).is_empty(), "no retry before the backoff");
    let mut delays = Vec::new();
    let mut last = call;
    for _ in 0..5 {
        // The next attempt comes within the backoff's upper bound, not before its half.
        let mut waited = 0;
        let call = loop {
            f.advance(Duration::from_millis(250));
            waited += 250;
            if let Some(call) = calls(&f.hooks()).pop() {
                break call;
            }
            assert!(waited < 20_000, "a retry comes");
        };
        assert_eq!(call.body, last.body, "the same events, in the same order");
        delays.push(waited);
        f.answer(&call, 503, json!({}));
        last = call;
    }
    assert!(delays.windows(2).all(|w| w[1] >= w[0] / 2), "backoff grows: {delays:?}");
    assert!(delays.iter().all(|&d| d <= 8_250), "capped: {delays:?}");
    // Past the maximum age the events are dropped, and counted.
    f.advance(Duration::from_secs(61));
    let call = loop {
        f.advance(Duration::from_secs(1));
        if let Some(call) = calls(&f.hooks()).pop() {
            break call;
        }
    };
    f.answer(&call, 500, json!({}));
    assert_eq!(f.hub.outbox_depth(), 0);
    let (counters, _) = f.hub.hook_metrics();
    assert_eq!((counters.dropped, counters.delivered), (1, 0));
    assert!(counters.retries >= 6);
}

#[test]
fn a_full_outbox_drops_its_oldest_events_and_keeps_everything_else() {
    let mut f = with_webhooks(HubConfig { webhook_outbox_max_events: 8, ..HubConfig::default() });
    f.room("r1", "public", &[]);
    let alice = f.connect("alice");
    f.send(alice, json!({"type": "join", "room": "r1"}));
    // The receiver is down: the first post hangs, nothing is answered.
    let first = calls(&f.hooks()).pop().unwrap();
    for n in 0..30 {
        f.send(alice, json!({"type": "message", "room": "r1", "content": format!("m{n}")}));
    }
    assert!(f.hub.outbox_depth() <= 8 + 1, "bounded: {}", f.hub.outbox_depth());
    assert!(f.hub.hook_metrics().0.dropped >= 20);
    let history = f.send(alice, json!({"type": "history", "room": "r1", "limit": 100}));
    assert_eq!(to(&history, alice, "history")[0]["messages"].as_array().unwrap().len(), 30, "messages are safe");
    // What is left is delivered, newest last.
    let mut types = Vec::new();
    let mut pending = calls(&f.answer(&first, 200, json!({})));
    while let Some(call) = pending.pop() {
        types.extend(event_types(&call));
        pending.extend(calls(&f.answer(&call, 200, json!({}))));
    }
    assert!(types.len() <= 9 && types.iter().all(|t| t == "message.created"), "{types:?}");
    assert_eq!(f.hub.outbox_depth(), 0);
}

#[test]
fn undelivered_events_survive_a_restart() {
    let mut f = with_webhooks(HubConfig::default());
    f.room("r1", "public", &[]);
    let alice = f.connect("alice");
    f.send(alice, json!({"type": "join", "room": "r1"}));
    let call = calls(&f.hooks()).pop().unwrap();
    // Crash while the post is in flight.
    let _ = call;
    f.restart();
    let types = deliver_all(&mut f);
    assert_eq!(types, ["user.online", "room.occupied", "member.joined"], "repeats carry the same ids");
}

fn with_access_hook() -> Fixture {
    let mut f = Fixture::new();
    let body = json!({"accessHookUrl": "http://backend.test/access"});
    assert_eq!(f.keyed("PATCH", "/api/v1/project", Some(body)).0, 200);
    f.room("r1", "public", &[]);
    f
}

#[test]
fn the_access_hook_decides_joins() {
    let mut f = with_access_hook();
    let alice = f.connect("alice");
    let seen = f.send(alice, json!({"type": "join", "room": "r1"}));
    assert!(to(&seen, alice, "joined").is_empty(), "the join waits for the backend");
    let call = calls(&seen).pop().expect("the hook is asked");
    let body: Value = serde_json::from_slice(&call.body).unwrap();
    assert_eq!(body["type"], "access");
    assert_eq!((body["room"].as_str(), body["userId"].as_str()), (Some("r1"), Some("alice")));
    assert_eq!(body["connectionId"], alice.to_string());
    assert_eq!(call.timeout, Duration::from_secs(2));
    // Other events are served meanwhile.
    let pong = f.send(alice, json!({"type": "ping"}));
    assert_eq!(to(&pong, alice, "pong").len(), 1);
    let seen = f.answer(&call, 200, json!({"allow": true}));
    assert_eq!(to(&seen, alice, "joined")[0]["room"], "r1");

    // Refused, with the backend's reason.
    let bob = f.connect("bob");
    let call = calls(&f.send(bob, json!({"type": "join", "room": "r1"}))).pop().unwrap();
    let seen = f.answer(&call, 200, json!({"allow": false, "reason": "not on the guest list"}));
    let error = to(&seen, bob, "error")[0];
    assert_eq!((error["event"].as_str(), error["code"].as_str()), (Some("join"), Some("forbidden")));
    assert_eq!(error["message"], "not on the guest list");
    // No answer, or not a 2xx: unavailable, which a client may retry.
    for result in [OutboundResult::Failed("timed out".into()), OutboundResult::Answered(500, Vec::new())] {
        let call = calls(&f.send(bob, json!({"type": "join", "room": "r1"}))).pop().unwrap();
        f.hub.handle_outbound(call.request, result, f.now);
        let seen = f.drain();
        assert_eq!(to(&seen, bob, "error")[0]["code"], "unavailable");
    }
    assert_eq!(f.hub.hook_metrics().0.access_failures, 2);
}

#[test]
fn access_decisions_are_cached_for_cache_seconds_and_parked_joins_are_bounded() {
    let mut f = with_access_hook();
    let alice = f.connect("alice");
    let call = calls(&f.send(alice, json!({"type": "join", "room": "r1"}))).pop().unwrap();
    f.answer(&call, 200, json!({"allow": true, "cacheSeconds": 30}));
    f.send(alice, json!({"type": "leave", "room": "r1"}));
    let seen = f.send(alice, json!({"type": "join", "room": "r1"}));
    assert!(calls(&seen).is_empty() && to(&seen, alice, "joined").len() == 1, "cached: no call");
    f.send(alice, json!({"type": "leave", "room": "r1"}));
    f.advance(Duration::from_secs(31));
    let seen = f.send(alice, json!({"type": "join", "room": "r1"}));
    assert_eq!(calls(&seen).len(), 1, "expired: asked again");

    let bob = f.connect("bob");
    for n in 0..8 {
        f.room(&format!("w{n}"), "public", &[]);
        let seen = f.send(bob, json!({"type": "join", "room": format!("w{n}")}));
        assert_eq!(calls(&seen).len(), 1);
    }
    f.room("w8", "public", &[]);
    let seen = f.send(bob, json!({"type": "join", "room": "w8"}));
    assert_eq!(to(&seen, bob, "error")[0]["code"], "rate_limited");
    // Unknown rooms and private rooms are refused without asking.
    let seen = f.send(bob, json!({"type": "join", "room": "nope"}));
    assert!(calls(&seen).is_empty());
    assert_eq!(to(&seen, bob, "error")[0]["code"], "not_found");
}
