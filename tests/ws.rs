//! WebSocket integration tests against the real binary: every client event, every server
//! event and every error code of `/work/shared/PROTOCOL.md`, plus the implementation's
//! decisions where the contract is silent (`docs/PROTOCOL.md`).
//!
//! Negative checks ("nothing arrives") are made deterministic where possible with
//! [`assert_nothing_pending`]: the hub handles events in order on one loop and queues a
//! connection's frames in order, so once the event that could have produced a frame has been
//! handled (its sender saw its answer), a `ping` whose very next answer is `pong` proves no
//! such frame was queued for that connection.

mod common;

use common::{expect_http_status, pct, Hub, Ws};
use serde_json::{json, Value};
use std::collections::{BTreeSet, HashMap};
use std::io::{ErrorKind, Read};
use std::net::TcpStream;
use std::sync::Barrier;
use std::time::{Duration, Instant};
use tungstenite::{Error as WsError, Message};

/// The exact field set of a live `message` frame.
const MESSAGE_KEYS: &[&str] =
    &["type", "id", "seq", "room", "userId", "content", "contentType", "attachments", "createdAt"];

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// Creates a project on the open hub and returns its API key.
fn project(hub: &Hub) -> String {
    hub.create_project("ws-tests").1
}

/// The field names of a JSON object.
fn key_set(v: &Value) -> BTreeSet<String> {
    v.as_object().unwrap_or_else(|| panic!("not a JSON object: {v}")).keys().cloned().collect()
}

/// Asserts the object has exactly the fields `expected`.
fn assert_keys(v: &Value, expected: &[&str]) {
    let want: BTreeSet<String> = expected.iter().map(|s| s.to_string()).collect();
    assert_eq!(key_set(v), want, "field set of {v}");
}

/// Asserts an RFC 3339 UTC time with milliseconds, e.g. `2026-11-21T19:46:54.130Z`.
fn assert_timestamp(v: &Value) {
    let s = v.as_str().unwrap_or_else(|| panic!("timestamp is not a string: {v}"));
    let b = s.as_bytes();
    let shape_ok = b.len() == 24
        && b.iter().enumerate().all(|(i, c)| match i {
            4 | 7 => *c == b'-',
            10 => *c == b'T',
            13 | 16 => *c == b':',
            19 => *c == b'.',
            23 => *c == b'Z',
            _ => c.is_ascii_digit(),
        });
    assert!(shape_ok, "not an RFC 3339 UTC time with milliseconds: {s:?}");
}

/// Asserts `v` is a live `message` frame with exactly the contract's fields.
fn assert_message_frame(v: &Value, room: &str, user: &str, content: &str, seq: u64) {
    assert_eq!(v["type"], "message", "expected a message frame: {v}");
    assert_keys(v, MESSAGE_KEYS);
    assert!(v["id"].as_str().is_some_and(|s| !s.is_empty()), "message id is a non-empty string: {v}");
    assert_eq!(v["seq"], seq, "seq of {v}");
    assert_eq!(v["room"], room, "room of {v}");
    assert_eq!(v["userId"], user, "userId of {v}");
    assert_eq!(v["content"], content, "content of {v}");
    assert_eq!(v["contentType"], "text/plain", "default contentType of {v}");
    assert_eq!(v["attachments"], json!([]), "default attachments of {v}");
    assert_timestamp(&v["createdAt"]);
}

/// Sends `ping` and asserts the very next frame is exactly `{"type":"pong"}`: nothing was
/// queued for this connection before the hub handled the ping, and the connection is open.
fn assert_nothing_pending(ws: &mut Ws) {
    ws.send(json!({ "type": "ping" }));
    let v = ws.recv();
    assert_eq!(v, json!({ "type": "pong" }), "expected nothing queued before the pong");
}

/// The next frame must be an `error` for `event` (a type name, or null) with `code`, carrying
/// `tempId` exactly when given; then checks the connection stays open (ping → pong).
fn expect_error(ws: &mut Ws, event: Value, code: &str, temp_id: Option<&str>) -> Value {
    let v = ws.recv();
    assert_eq!(v["type"], "error", "expected error {code} for event {event}, got {v}");
    assert_eq!(v["event"], event, "error event: {v}");
    assert_eq!(v["code"], code, "error code: {v}");
    assert!(v["message"].as_str().is_some_and(|m| !m.is_empty()), "error message is a non-empty string: {v}");
    match temp_id {
        Some(t) => {
            assert_keys(&v, &["type", "event", "code", "message", "tempId"]);
            assert_eq!(v["tempId"], t, "echoed tempId: {v}");
        }
        None => assert_keys(&v, &["type", "event", "code", "message"]),
    }
    assert_nothing_pending(ws);
    v
}

/// Sends a message with a `tempId`; returns (`message_id_mapping`, own `message` broadcast),
/// asserting the mapping comes first. Only for connections that get no other traffic between.
fn send_tracked(ws: &mut Ws, room: &str, content: &str, temp_id: &str) -> (Value, Value) {
    ws.send(json!({ "type": "message", "room": room, "content": content, "tempId": temp_id }));
    let mapping = ws.recv();
    assert_eq!(mapping["type"], "message_id_mapping", "the mapping comes first: {mapping}");
    assert_keys(&mapping, &["type", "room", "tempId", "realId", "seq"]);
    assert_eq!(mapping["room"], room, "{mapping}");
    assert_eq!(mapping["tempId"], temp_id, "{mapping}");
    let msg = ws.recv();
    assert_eq!(msg["type"], "message", "the broadcast follows the mapping: {msg}");
    assert_eq!(msg["id"], mapping["realId"], "mapping realId vs message id");
    assert_eq!(msg["seq"], mapping["seq"], "mapping seq vs message seq");
    assert_eq!(msg["content"], content, "{msg}");
    (mapping, msg)
}

/// REST history of `room` with `query` (e.g. `?limit=1000`).
fn rest_history(hub: &Hub, key: &str, room: &str, query: &str) -> Vec<Value> {
    let resp = hub.get(&format!("/api/v1/rooms/{room}/messages{query}"), Some(key));
    assert_eq!(resp.status, 200, "GET history of {room}: {resp:?}");
    resp.json()["messages"].as_array().unwrap_or_else(|| panic!("history lacks messages: {resp:?}")).clone()
}

/// REST presence of `room`: userId → (status, connections).
fn rest_presence(hub: &Hub, key: &str, room: &str) -> HashMap<String, (String, u64)> {
    let resp = hub.get(&format!("/api/v1/rooms/{room}/presence"), Some(key));
    assert_eq!(resp.status, 200, "GET presence of {room}: {resp:?}");
    let v = resp.json();
    assert_eq!(v["room"], room, "{v}");
    v["users"]
        .as_array()
        .unwrap_or_else(|| panic!("presence lacks users: {v}"))
        .iter()
        .map(|u| {
            assert_keys(u, &["userId", "status", "connections"]);
            let user = u["userId"].as_str().expect("userId").to_string();
            (user, (u["status"].as_str().expect("status").to_string(), u["connections"].as_u64().expect("count")))
        })
        .collect()
}

/// Polls `cond` every 10 ms for up to 5 s; panics naming `what` if it never holds.
fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out after 5 s waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// One read of the WebSocket through tungstenite (which answers pings on the next read).
enum Frame {
    Text(Value),
    Ping,
    Close(Option<u16>),
    Timeout,
}

/// Reads the next text, ping or close frame before `deadline` (pongs are skipped).
fn read_frame(ws: &mut Ws, deadline: Instant) -> Frame {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Frame::Timeout;
        }
        ws.socket.get_mut().set_read_timeout(Some(left)).expect("set_read_timeout");
        match ws.socket.read() {
            Ok(Message::Text(t)) => {
                return Frame::Text(serde_json::from_str(&t).unwrap_or_else(|e| panic!("not JSON ({e}): {t:?}")))
            }
            Ok(Message::Ping(_)) => return Frame::Ping,
            Ok(Message::Close(f)) => {
                let _ = ws.socket.flush();
                return Frame::Close(f.map(|f| u16::from(f.code)));
            }
            Ok(Message::Binary(b)) => panic!("unexpected binary frame: {b:?}"),
            Ok(_) => continue,
            Err(WsError::Io(e)) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return Frame::Timeout
            }
            Err(e) => panic!("ws read failed: {e}"),
        }
    }
}

/// The next text frame within `ms` milliseconds (pings answered and skipped).
fn recv_within(ws: &mut Ws, ms: u64, what: &str) -> Value {
    let deadline = Instant::now() + Duration::from_millis(ms);
    loop {
        match read_frame(ws, deadline) {
            Frame::Text(v) => return v,
            Frame::Ping => continue,
            Frame::Close(code) => panic!("closed ({code:?}) waiting {ms} ms for {what}"),
            Frame::Timeout => panic!("nothing within {ms} ms waiting for {what}"),
        }
    }
}

/// Collects the next `n` text frames (5 s each).
fn recv_n(ws: &mut Ws, n: usize) -> Vec<Value> {
    (0..n).map(|_| ws.recv()).collect()
}

/// Whether `frames` contains one equal to `want`.
fn contains(frames: &[Value], want: &Value) -> bool {
    frames.iter().any(|f| f == want)
}

/// A server-to-client frame read straight off the TCP stream: (opcode, payload, arrival).
struct RawFrame {
    opcode: u8,
    payload: Vec<u8>,
    at: Instant,
}

/// Reads raw (unmasked) server frames off `stream`, bypassing tungstenite so that no pong is
/// ever sent, until a close frame arrives or `deadline` passes.
fn raw_frames_until_close(stream: &mut TcpStream, deadline: Instant) -> Vec<RawFrame> {
    let mut buf: Vec<u8> = Vec::new();
    let mut frames = Vec::new();
    loop {
        // Parse every complete frame in the buffer.
        loop {
            if buf.len() < 2 {
                break;
            }
            assert_eq!(buf[1] & 0x80, 0, "server frames must not be masked");
            let (len, header) = match buf[1] & 0x7f {
                126 if buf.len() >= 4 => (u16::from_be_bytes([buf[2], buf[3]]) as usize, 4),
                127 if buf.len() >= 10 => (u64::from_be_bytes(buf[2..10].try_into().expect("8 bytes")) as usize, 10),
                126 | 127 => break,
                n => (n as usize, 2),
            };
            if buf.len() < header + len {
                break;
            }
            let frame =
                RawFrame { opcode: buf[0] & 0x0f, payload: buf[header..header + len].to_vec(), at: Instant::now() };
            buf.drain(..header + len);
            let is_close = frame.opcode == 0x8;
            frames.push(frame);
            if is_close {
                return frames;
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return frames;
        }
        stream.set_read_timeout(Some(left)).expect("set_read_timeout");
        let mut chunk = [0u8; 4096];
        match stream.read(&mut chunk) {
            Ok(0) => return frames,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => return frames,
            Err(e) => panic!("raw read failed: {e}"),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Connecting
// ---------------------------------------------------------------------------------------------

#[test]
fn upgrade_refusals_paths_and_connected_frame() {
    let hub = Hub::start();
    let key = project(&hub);

    assert_eq!(expect_http_status(hub.ws_raw("/?apiKey=not-a-key&userId=u")), 401, "bad apiKey");
    assert_eq!(expect_http_status(hub.ws_raw("/?userId=u")), 401, "missing apiKey");
    assert_eq!(expect_http_status(hub.ws_raw(&format!("/?apiKey={}", pct(&key)))), 400, "missing userId");
    assert_eq!(expect_http_status(hub.ws_raw("/ws?userId=u&apiKey=bad")), 401, "bad apiKey on /ws");
    assert_eq!(expect_http_status(hub.ws_raw(&format!("/nope?apiKey={}&userId=u", pct(&key)))), 404, "unknown path");

    let mut ids = BTreeSet::new();
    for path in ["/", "/ws"] {
        let mut ws = hub
            .ws_raw(&format!("{path}?apiKey={}&userId=alice", pct(&key)))
            .unwrap_or_else(|e| panic!("upgrade on {path} failed: {e}"));
        let connected = ws.recv();
        assert_keys(&connected, &["type", "connectionId", "userId"]);
        assert_eq!(connected["type"], "connected", "{connected}");
        assert_eq!(connected["userId"], "alice", "{connected}");
        let id = connected["connectionId"].as_str().unwrap_or_else(|| panic!("connectionId is a string: {connected}"));
        assert!(!id.is_empty(), "{connected}");
        ids.insert(id.to_string());
        assert_nothing_pending(&mut ws);
    }
    assert_eq!(ids.len(), 2, "each connection gets its own connectionId: {ids:?}");

    // A user id with spaces and punctuation arrives decoded.
    let ws = hub.ws(&key, "Jane Doe+1@example");
    assert!(!ws.connection_id.is_empty());
}

#[test]
fn seed_browser_example() {
    let hub = Hub::start();
    let key = project(&hub);
    hub.create_room(&key, "general", "public");
    let mut watcher = hub.ws(&key, "watcher");
    watcher.join("general");

    // const ws = new WebSocket('ws://localhost:3009?apiKey=KEY&userId=user123');
    let mut ws = hub.ws_raw(&format!("/?apiKey={}&userId=user123", pct(&key))).expect("example connect");
    let connected = ws.recv();
    assert_eq!(connected["type"], "connected", "{connected}");
    assert_eq!(connected["userId"], "user123", "{connected}");
    assert!(connected["connectionId"].is_string(), "{connected}");

    // ws.send(JSON.stringify({ type: 'join', room: 'general' }));
    ws.send(json!({ "type": "join", "room": "general" }));
    assert_eq!(
        ws.recv(),
        json!({ "type": "joined", "room": "general", "seq": 0, "members": [
            { "userId": "user123", "status": "online" },
            { "userId": "watcher", "status": "online" },
        ] })
    );
    assert_eq!(
        watcher.recv(),
        json!({ "type": "user_joined", "room": "general", "userId": "user123", "status": "online" })
    );

    // ws.send(JSON.stringify({ type: 'message', room: 'general', content: 'Hello!' }));
    ws.send(json!({ "type": "message", "room": "general", "content": "Hello!" }));
    let msg = ws.recv();
    assert_message_frame(&msg, "general", "user123", "Hello!", 1);
    assert_eq!(watcher.recv(), msg, "the watcher gets the same message frame");

    // ws.send(JSON.stringify({ type: 'presence', status: 'away' }));
    ws.send(json!({ "type": "presence", "status": "away" }));
    assert_eq!(watcher.recv(), json!({ "type": "presence", "userId": "user123", "status": "away" }));

    // ws.send(JSON.stringify({ type: 'typing', room: 'general', isTyping: true }));
    ws.send(json!({ "type": "typing", "room": "general", "isTyping": true }));
    assert_eq!(watcher.recv(), json!({ "type": "typing", "room": "general", "userId": "user123", "isTyping": true }));

    // The sender gets neither its own presence nor its own typing.
    assert_nothing_pending(&mut ws);

    // A newcomer sees user123 as away.
    let mut third = hub.ws(&key, "zed");
    let joined = third.join("general");
    assert_eq!(
        joined["members"],
        json!([
            { "userId": "user123", "status": "away" },
            { "userId": "watcher", "status": "online" },
            { "userId": "zed", "status": "online" },
        ])
    );
    assert_eq!(joined["seq"], 1, "{joined}");
    let presence = rest_presence(&hub, &key, "general");
    assert_eq!(presence.get("user123"), Some(&("away".to_string(), 1)), "{presence:?}");
}

// ---------------------------------------------------------------------------------------------
// Rooms, messages, membership events
// ---------------------------------------------------------------------------------------------

#[test]
fn two_users_chatting_with_temp_id() {
    let hub = Hub::start();
    let key = project(&hub);
    hub.create_room(&key, "chat", "public");
    let mut alice = hub.ws(&key, "alice");
    let mut bob = hub.ws(&key, "bob");
    alice.join("chat");
    bob.join("chat");
    assert_eq!(alice.recv(), json!({ "type": "user_joined", "room": "chat", "userId": "bob", "status": "online" }));

    alice.send(json!({ "type": "message", "room": "chat", "content": "hi bob", "tempId": "t-1" }));
    let mapping = alice.recv();
    assert_keys(&mapping, &["type", "room", "tempId", "realId", "seq"]);
    assert_eq!(mapping["type"], "message_id_mapping", "{mapping}");
    assert_eq!(mapping["room"], "chat", "{mapping}");
    assert_eq!(mapping["tempId"], "t-1", "{mapping}");
    assert_eq!(mapping["seq"], 1, "{mapping}");
    assert!(mapping["realId"].as_str().is_some_and(|s| !s.is_empty()), "{mapping}");
    let own = alice.recv();
    assert_message_frame(&own, "chat", "alice", "hi bob", 1);
    assert_eq!(own["id"], mapping["realId"], "mapping realId = message id");
    let at_bob = bob.recv();
    assert_eq!(at_bob, own, "bob gets the same frame as the sender");

    // Bob answers without a tempId: no mapping, just the broadcast.
    bob.send(json!({ "type": "message", "room": "chat", "content": "hi alice" }));
    let reply = bob.recv();
    assert_message_frame(&reply, "chat", "bob", "hi alice", 2);
    assert_eq!(alice.recv(), reply);
    assert_ne!(reply["id"], own["id"], "ids are unique");
    assert_nothing_pending(&mut bob);

    // contentType and attachments are carried through.
    let attachments = json!([{ "url": "https://example.com/a.png", "name": "a.png" }]);
    alice.send(json!({ "type": "message", "room": "chat", "content": "see", "contentType": "text/markdown",
        "attachments": attachments, "tempId": "t-2" }));
    assert_eq!(alice.recv()["type"], "message_id_mapping");
    let rich = alice.recv();
    assert_keys(&rich, MESSAGE_KEYS);
    assert_eq!(rich["contentType"], "text/markdown", "{rich}");
    assert_eq!(rich["attachments"], attachments, "{rich}");
    assert_eq!(bob.recv(), rich);
}

#[test]
fn join_and_leave_events() {
    let hub = Hub::start();
    let key = project(&hub);
    hub.create_room(&key, "room", "public");
    let mut a = hub.ws(&key, "a");
    let mut b = hub.ws(&key, "b");

    a.send(json!({ "type": "join", "room": "room" }));
    let joined = a.recv();
    assert_eq!(
        joined,
        json!({ "type": "joined", "room": "room", "seq": 0, "members": [{ "userId": "a", "status": "online" }] })
    );
    send_tracked(&mut a, "room", "first", "t1");

    b.send(json!({ "type": "presence", "status": "busy" }));
    assert_nothing_pending(&mut b); // no shared room yet: nobody to tell, b hears nothing
    assert_nothing_pending(&mut a);
    b.send(json!({ "type": "join", "room": "room" }));
    assert_eq!(
        b.recv(),
        json!({ "type": "joined", "room": "room", "seq": 1, "members": [
            { "userId": "a", "status": "online" },
            { "userId": "b", "status": "busy" },
        ] })
    );
    assert_eq!(a.recv(), json!({ "type": "user_joined", "room": "room", "userId": "b", "status": "busy" }));

    b.send(json!({ "type": "leave", "room": "room" }));
    assert_eq!(b.recv(), json!({ "type": "left", "room": "room" }));
    assert_eq!(a.recv(), json!({ "type": "user_left", "room": "room", "userId": "b" }));
    assert_nothing_pending(&mut b);

    // Leaving a room not joined (exists) → not_joined; one that does not exist → not_found.
    b.send(json!({ "type": "leave", "room": "room" }));
    expect_error(&mut b, json!("leave"), "not_joined", None);
    b.send(json!({ "type": "leave", "room": "no-such-room" }));
    expect_error(&mut b, json!("leave"), "not_found", None);

    // After leaving, b no longer gets the room's messages.
    send_tracked(&mut a, "room", "second", "t2");
    assert_nothing_pending(&mut b);
    let presence = rest_presence(&hub, &key, "room");
    assert_eq!(presence.len(), 1, "{presence:?}");
    assert_eq!(presence.get("a"), Some(&("online".to_string(), 1)), "{presence:?}");
}

#[test]
fn multi_connection_presence() {
    let hub = Hub::start();
    let key = project(&hub);
    hub.create_room(&key, "room", "public");
    let mut w = hub.ws(&key, "w");
    w.join("room");

    let mut u1 = hub.ws(&key, "u");
    u1.join("room");
    assert_eq!(w.recv(), json!({ "type": "user_joined", "room": "room", "userId": "u", "status": "online" }));
    let mut u2 = hub.ws(&key, "u");
    let joined = u2.join("room");
    assert_eq!(
        joined["members"],
        json!([{ "userId": "u", "status": "online" }, { "userId": "w", "status": "online" }]),
        "a user with two connections is listed once"
    );
    assert_nothing_pending(&mut w); // the second connection of u is not a new user
    assert_nothing_pending(&mut u1); // nor does u hear about itself

    let presence = rest_presence(&hub, &key, "room");
    assert_eq!(presence.get("u"), Some(&("online".to_string(), 2)), "{presence:?}");
    assert_eq!(presence.get("w"), Some(&("online".to_string(), 1)), "{presence:?}");

    // A status change reaches the other user once, never u's own connections.
    u1.send(json!({ "type": "presence", "status": "busy" }));
    assert_eq!(w.recv(), json!({ "type": "presence", "userId": "u", "status": "busy" }));
    assert_nothing_pending(&mut u1);
    assert_nothing_pending(&mut u2);
    assert_nothing_pending(&mut w);
    // The same status again is not re-broadcast.
    u2.send(json!({ "type": "presence", "status": "busy" }));
    assert_nothing_pending(&mut u2);
    assert_nothing_pending(&mut w);
    u2.send(json!({ "type": "presence", "status": "online" }));
    assert_eq!(w.recv(), json!({ "type": "presence", "userId": "u", "status": "online" }));

    // Closing one of u's two connections: nothing for w.
    u1.close();
    wait_for("u's connection count to drop to 1", || {
        rest_presence(&hub, &key, "room").get("u").map(|(_, n)| *n) == Some(1)
    });
    assert_nothing_pending(&mut w);

    // Closing the last one: presence offline, then user_left.
    u2.close();
    assert_eq!(w.recv(), json!({ "type": "presence", "userId": "u", "status": "offline" }));
    assert_eq!(w.recv(), json!({ "type": "user_left", "room": "room", "userId": "u" }));
    assert_nothing_pending(&mut w);
    let presence = rest_presence(&hub, &key, "room");
    assert_eq!(presence.len(), 1, "only w is left: {presence:?}");
    assert_eq!(presence.get("w"), Some(&("online".to_string(), 1)), "{presence:?}");
}

// ---------------------------------------------------------------------------------------------
// Typing
// ---------------------------------------------------------------------------------------------

#[test]
fn typing_relay_and_expiry() {
    let hub = Hub::start_with(&["--typing-timeout-ms", "300"]);
    let key = project(&hub);
    hub.create_room(&key, "room", "public");
    let mut a = hub.ws(&key, "a");
    let mut b = hub.ws(&key, "b");
    a.join("room");
    b.join("room");
    assert_eq!(a.recv()["type"], "user_joined");
    let typing = |on: bool| json!({ "type": "typing", "room": "room", "userId": "a", "isTyping": on });

    // A false with no true before it is not relayed.
    a.send(json!({ "type": "typing", "room": "room", "isTyping": false }));
    assert_nothing_pending(&mut a);
    assert_nothing_pending(&mut b);

    // An explicit start and stop are relayed to the others, not to the typer.
    a.send(json!({ "type": "typing", "room": "room", "isTyping": true }));
    assert_eq!(b.recv(), typing(true));
    a.send(json!({ "type": "typing", "room": "room", "isTyping": false }));
    assert_eq!(b.recv(), typing(false));
    assert_nothing_pending(&mut a);

    // Expiry: the server sends isTyping:false by itself after --typing-timeout-ms.
    let started = Instant::now();
    a.send(json!({ "type": "typing", "room": "room", "isTyping": true }));
    assert_eq!(b.recv(), typing(true));
    assert_nothing_pending(&mut a);
    let expired = recv_within(&mut b, 3000, "typing expiry");
    assert_eq!(expired, typing(false));
    let after = started.elapsed();
    assert!(after >= Duration::from_millis(250), "typing expired after {after:?}, before the 300 ms timeout");
    assert_nothing_pending(&mut a);

    // Every true refreshes the expiry.
    let started = Instant::now();
    a.send(json!({ "type": "typing", "room": "room", "isTyping": true }));
    assert_eq!(b.recv(), typing(true));
    std::thread::sleep(Duration::from_millis(200)); // the user keeps typing 200 ms later
    a.send(json!({ "type": "typing", "room": "room", "isTyping": true }));
    assert_eq!(b.recv(), typing(true), "every true is relayed");
    assert_eq!(recv_within(&mut b, 3000, "refreshed typing expiry"), typing(false));
    let after = started.elapsed();
    assert!(after >= Duration::from_millis(450), "expired {after:?} after the first true: not refreshed by the second");

    // A message stops typing once: no second isTyping:false when the timer would have fired.
    a.send(json!({ "type": "typing", "room": "room", "isTyping": true }));
    assert_eq!(b.recv(), typing(true));
    a.send(json!({ "type": "message", "room": "room", "content": "done" }));
    let own = a.recv();
    assert_message_frame(&own, "room", "a", "done", 1);
    let got = recv_n(&mut b, 2);
    assert!(contains(&got, &own), "b gets the message: {got:?}");
    assert!(contains(&got, &typing(false)), "b gets typing false: {got:?}");
    b.expect_silence(500); // longer than the typing timeout: no second isTyping:false
    assert_nothing_pending(&mut a);
}

/// With the default 10 s expiry, any isTyping:false seen within 5 s comes from the event.
#[test]
fn typing_stops_on_message_leave_and_disconnect() {
    let hub = Hub::start();
    let key = project(&hub);
    hub.create_room(&key, "room", "public");
    let mut a = hub.ws(&key, "a");
    let mut b = hub.ws(&key, "b");
    a.join("room");
    b.join("room");
    assert_eq!(a.recv()["type"], "user_joined");
    let typing = |on: bool| json!({ "type": "typing", "room": "room", "userId": "a", "isTyping": on });

    // Typing then a message: b gets the message and typing false; a gets only its message.
    a.send(json!({ "type": "typing", "room": "room", "isTyping": true }));
    assert_eq!(b.recv(), typing(true));
    a.send(json!({ "type": "message", "room": "room", "content": "done" }));
    let own = a.recv();
    assert_message_frame(&own, "room", "a", "done", 1);
    let got = recv_n(&mut b, 2);
    assert!(contains(&got, &own), "b gets the message: {got:?}");
    assert!(contains(&got, &typing(false)), "b gets typing false on message: {got:?}");
    assert_nothing_pending(&mut a);
    assert_nothing_pending(&mut b);

    // Typing then leave: typing false and user_left.
    a.send(json!({ "type": "typing", "room": "room", "isTyping": true }));
    assert_eq!(b.recv(), typing(true));
    a.send(json!({ "type": "leave", "room": "room" }));
    assert_eq!(a.recv(), json!({ "type": "left", "room": "room" }));
    let got = recv_n(&mut b, 2);
    assert!(contains(&got, &typing(false)), "b gets typing false on leave: {got:?}");
    assert!(contains(&got, &json!({ "type": "user_left", "room": "room", "userId": "a" })), "{got:?}");
    assert_nothing_pending(&mut b);

    // Typing then disconnect: typing false, presence offline, then user_left.
    a.join("room");
    assert_eq!(b.recv(), json!({ "type": "user_joined", "room": "room", "userId": "a", "status": "online" }));
    a.send(json!({ "type": "typing", "room": "room", "isTyping": true }));
    assert_eq!(b.recv(), typing(true));
    drop(a);
    let got = recv_n(&mut b, 3);
    assert!(contains(&got, &typing(false)), "b gets typing false on disconnect: {got:?}");
    assert!(contains(&got, &json!({ "type": "presence", "userId": "a", "status": "offline" })), "{got:?}");
    assert_eq!(got[2], json!({ "type": "user_left", "room": "room", "userId": "a" }), "user_left last: {got:?}");
    assert_nothing_pending(&mut b);
}

// ---------------------------------------------------------------------------------------------
// Recovery, idempotency, ordering, durability
// ---------------------------------------------------------------------------------------------

/// `a` (joined to `room`, no other traffic) sends `n` messages; returns their frames.
fn send_n(a: &mut Ws, room: &str, n: usize) -> Vec<Value> {
    (1..=n).map(|i| send_tracked(a, room, &format!("m{i}"), &format!("t{i}")).1).collect()
}

#[test]
fn recovery_with_since() {
    let hub = Hub::start();
    let key = project(&hub);
    hub.create_room(&key, "room", "public");
    let mut a = hub.ws(&key, "a");
    a.join("room");
    let sent = send_n(&mut a, "room", 5);

    let mut b = hub.ws(&key, "b");
    b.send(json!({ "type": "join", "room": "room", "since": 2 }));
    let joined = b.recv();
    assert_eq!(
        joined,
        json!({ "type": "joined", "room": "room", "seq": 5, "recovered": true, "members": [
            { "userId": "a", "status": "online" },
            { "userId": "b", "status": "online" },
        ] })
    );
    for want in &sent[2..] {
        let got = b.recv();
        assert_keys(&got, MESSAGE_KEYS);
        assert_eq!(&got, want, "replayed in seq order");
    }
    assert_nothing_pending(&mut b);

    // Live messages continue after the replay.
    a.recv_type("user_joined");
    let (_, live) = send_tracked(&mut a, "room", "m6", "t6");
    assert_eq!(b.recv(), live);
    assert_eq!(live["seq"], 6);

    // since = latest: recovered with nothing to replay. since = 0: everything.
    let mut c = hub.ws(&key, "c");
    c.send(json!({ "type": "join", "room": "room", "since": 6 }));
    let joined = c.recv();
    assert_eq!(
        (joined["type"].clone(), joined["recovered"].clone(), joined["seq"].clone()),
        (json!("joined"), json!(true), json!(6))
    );
    assert_nothing_pending(&mut c);
    let mut d = hub.ws(&key, "d");
    d.send(json!({ "type": "join", "room": "room", "since": 0 }));
    let joined = d.recv();
    assert_eq!(joined["recovered"], true, "{joined}");
    let seqs: Vec<Value> = recv_n(&mut d, 6).iter().map(|m| m["seq"].clone()).collect();
    assert_eq!(seqs, (1..=6).map(|s| json!(s)).collect::<Vec<_>>());
    assert_nothing_pending(&mut d);

    // since beyond the latest seq → recovered:false, nothing replayed.
    let mut e = hub.ws(&key, "e");
    e.send(json!({ "type": "join", "room": "room", "since": 99 }));
    let joined = e.recv();
    assert_eq!((joined["type"].clone(), joined["recovered"].clone()), (json!("joined"), json!(false)), "{joined}");
    assert_nothing_pending(&mut e);
}

#[test]
fn recovery_beyond_replay_cap() {
    let hub = Hub::start_with(&["--replay-cap", "3"]);
    let key = project(&hub);
    hub.create_room(&key, "room", "public");
    let mut a = hub.ws(&key, "a");
    a.join("room");
    let sent = send_n(&mut a, "room", 5);

    // 5 missed > cap 3: recovered false and no replay; the client pages history instead.
    let mut b = hub.ws(&key, "b");
    b.send(json!({ "type": "join", "room": "room", "since": 0 }));
    let joined = b.recv();
    assert_keys(&joined, &["type", "room", "seq", "members", "recovered"]);
    assert_eq!((joined["type"].clone(), joined["seq"].clone()), (json!("joined"), json!(5)), "{joined}");
    assert_eq!(joined["recovered"], false, "{joined}");
    assert_nothing_pending(&mut b);

    // Exactly the cap missed: replayed.
    let mut c = hub.ws(&key, "c");
    c.send(json!({ "type": "join", "room": "room", "since": 2 }));
    let joined = c.recv();
    assert_eq!(joined["recovered"], true, "{joined}");
    assert_eq!(recv_n(&mut c, 3), sent[2..].to_vec());
    assert_nothing_pending(&mut c);
}

#[test]
fn idempotent_temp_id_after_reconnect() {
    let hub = Hub::start();
    let key = project(&hub);
    hub.create_room(&key, "room", "public");
    let mut w = hub.ws(&key, "w");
    w.join("room");
    let mut a = hub.ws(&key, "a");
    a.join("room");
    let (mapping, msg) = send_tracked(&mut a, "room", "only once", "t1");
    assert_eq!(w.recv_type("message"), msg);

    // The socket dies (no close handshake); the client reconnects and retries.
    drop(a);
    let mut a2 = hub.ws(&key, "a");
    a2.join("room");
    a2.send(json!({ "type": "message", "room": "room", "content": "only once", "tempId": "t1" }));
    assert_eq!(a2.recv(), mapping, "the retry gets the original mapping");
    assert_nothing_pending(&mut a2); // and no new broadcast
    let history = rest_history(&hub, &key, "room", "?limit=1000");
    assert_eq!(history.len(), 1, "exactly one stored message: {history:?}");
    assert_eq!(history[0]["id"], mapping["realId"]);

    // The watcher's next message is the next new one: the retry was never broadcast.
    let (_, second) = send_tracked(&mut a2, "room", "next", "t2");
    assert_eq!(second["seq"], 2);
    assert_eq!(w.recv_type("message"), second, "the watcher got exactly one message for t1");

    // The same tempId from another user is a different message.
    w.send(json!({ "type": "message", "room": "room", "content": "mine", "tempId": "t1" }));
    let other = w.recv_type("message_id_mapping");
    assert_eq!(other["seq"], 3, "{other}");
    assert_ne!(other["realId"], mapping["realId"]);
}

#[test]
fn total_order_under_five_concurrent_senders() {
    const SENDERS: usize = 5;
    const PER_SENDER: usize = 40;
    const TOTAL: usize = SENDERS * PER_SENDER;
    let hub = Hub::start();
    let key = project(&hub);
    hub.create_room(&key, "busy", "public");
    let mut receivers: Vec<Ws> = (0..2).map(|i| hub.ws(&key, &format!("r{i}"))).collect();
    for r in &mut receivers {
        r.join("busy");
    }
    let mut senders: Vec<Ws> = (0..SENDERS).map(|i| hub.ws(&key, &format!("s{i}"))).collect();
    for s in &mut senders {
        s.join("busy");
    }
    let barrier = Barrier::new(SENDERS);

    let (acks, received) = std::thread::scope(|scope| {
        let barrier = &barrier;
        let receiving: Vec<_> = receivers
            .into_iter()
            .map(|mut r| scope.spawn(move || (0..TOTAL).map(|_| r.recv_type("message")).collect::<Vec<Value>>()))
            .collect();
        let sending: Vec<_> = senders
            .into_iter()
            .enumerate()
            .map(|(i, mut s)| {
                scope.spawn(move || {
                    barrier.wait();
                    for n in 0..PER_SENDER {
                        let text = format!("s{i}-{n}");
                        s.send(json!({ "type": "message", "room": "busy", "content": text, "tempId": text }));
                    }
                    // Mappings come back in this connection's send order.
                    (0..PER_SENDER)
                        .map(|n| {
                            let m = s.recv_type("message_id_mapping");
                            assert_eq!(m["tempId"], format!("s{i}-{n}"), "mapping order for sender {i}");
                            m
                        })
                        .collect::<Vec<Value>>()
                })
            })
            .collect();
        let acks: Vec<Vec<Value>> = sending.into_iter().map(|h| h.join().expect("sender thread")).collect();
        let received: Vec<Vec<Value>> = receiving.into_iter().map(|h| h.join().expect("receiver thread")).collect();
        (acks, received)
    });

    let want_seqs: Vec<u64> = (1..=TOTAL as u64).collect();
    for (r, msgs) in received.iter().enumerate() {
        let seqs: Vec<u64> = msgs.iter().map(|m| m["seq"].as_u64().expect("seq")).collect();
        assert_eq!(seqs, want_seqs, "receiver {r} sees seqs 1..={TOTAL} in order");
        // Each sender's messages keep their send order.
        for i in 0..SENDERS {
            let mine: Vec<String> = msgs
                .iter()
                .filter(|m| m["userId"] == format!("s{i}"))
                .map(|m| m["content"].as_str().expect("content").to_string())
                .collect();
            let want: Vec<String> = (0..PER_SENDER).map(|n| format!("s{i}-{n}")).collect();
            assert_eq!(mine, want, "receiver {r}: sender {i}'s messages in its send order");
        }
    }
    let ids: Vec<Vec<Value>> = received.iter().map(|msgs| msgs.iter().map(|m| m["id"].clone()).collect()).collect();
    assert_eq!(ids[0], ids[1], "both receivers see the same ids in the same order");
    let unique: BTreeSet<String> = ids[0].iter().map(|i| i.as_str().expect("id").to_string()).collect();
    assert_eq!(unique.len(), TOTAL, "ids are unique");

    // Every mapping matches the broadcast with that id and seq.
    let by_id: HashMap<&str, &Value> = received[0].iter().map(|m| (m["id"].as_str().expect("id"), m)).collect();
    for (i, sender_acks) in acks.iter().enumerate() {
        for m in sender_acks {
            let msg = by_id[m["realId"].as_str().expect("realId")];
            assert_eq!(msg["seq"], m["seq"], "mapping seq = broadcast seq");
            assert_eq!(msg["userId"], format!("s{i}"));
            assert_eq!(msg["content"], m["tempId"]);
        }
    }
    let history: Vec<Value> = rest_history(&hub, &key, "busy", "?limit=1000").iter().map(|m| m["id"].clone()).collect();
    assert_eq!(history, ids[0], "history has the same order");
}

#[test]
fn kill9_then_restart_keeps_every_acknowledged_message() {
    let mut hub = Hub::start();
    let key = project(&hub);
    hub.create_room(&key, "durable", "public");
    let mut a = hub.ws(&key, "a");
    a.join("durable");
    let mut acked = Vec::new();
    for i in 0..50 {
        let temp = format!("k{i}");
        a.send(json!({ "type": "message", "room": "durable", "content": format!("msg {i}"), "tempId": temp }));
        let m = a.recv_type("message_id_mapping");
        assert_eq!(m["tempId"], temp.as_str(), "{m}");
        acked.push(m);
    }
    // Then a pipelined burst: kill -9 while most of it is still in flight.
    for i in 50..150 {
        let temp = format!("k{i}");
        a.send(json!({ "type": "message", "room": "durable", "content": format!("msg {i}"), "tempId": temp }));
    }
    for i in 50..75 {
        let m = a.recv_type("message_id_mapping");
        assert_eq!(m["tempId"], format!("k{i}"), "{m}");
        acked.push(m);
    }
    let db = hub.db_path.clone();
    hub.kill9();
    drop(a);

    let hub2 = Hub::start_at(&db, &[]);
    let history = rest_history(&hub2, &key, "durable", "?limit=1000");
    let seqs: Vec<u64> = history.iter().map(|m| m["seq"].as_u64().expect("seq")).collect();
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>(), "seqs gapless from 1 after restart");
    for m in &acked {
        let hits: Vec<&Value> = history.iter().filter(|h| h["id"] == m["realId"]).collect();
        assert_eq!(hits.len(), 1, "acknowledged {m} appears exactly once after kill -9");
        assert_eq!(hits[0]["seq"], m["seq"], "with its acknowledged seq");
    }

    // The tempId is still an idempotency key after the restart, and seq goes on.
    let mut a = hub2.ws(&key, "a");
    a.join("durable");
    a.send(json!({ "type": "message", "room": "durable", "content": "msg 7", "tempId": "k7" }));
    assert_eq!(a.recv(), acked[7], "original mapping after restart");
    assert_nothing_pending(&mut a);
    let (mapping, _) = send_tracked(&mut a, "durable", "after restart", "k-new");
    assert_eq!(mapping["seq"], seqs.len() as u64 + 1, "{mapping}");
}

// ---------------------------------------------------------------------------------------------
// Receipts, edits, direct messages, history
// ---------------------------------------------------------------------------------------------

#[test]
fn read_receipts() {
    let hub = Hub::start();
    let key = project(&hub);
    hub.create_room(&key, "room", "public");
    let mut a = hub.ws(&key, "a");
    let mut b = hub.ws(&key, "b");
    b.join("room");
    a.join("room");
    b.recv_type("user_joined");
    let (_, m1) = send_tracked(&mut a, "room", "one", "t1");
    let (_, m2) = send_tracked(&mut a, "room", "two", "t2");
    assert_eq!(recv_n(&mut b, 2), vec![m1.clone(), m2.clone()]);

    b.send(json!({ "type": "read", "room": "room", "messageIds": [m1["id"], m2["id"]] }));
    let at_b = recv_n(&mut b, 2);
    let at_a = recv_n(&mut a, 2);
    for (i, r) in at_b.iter().enumerate() {
        assert_keys(r, &["type", "room", "messageId", "userId", "readAt"]);
        assert_eq!(r["type"], "read_receipt", "{r}");
        assert_eq!(r["room"], "room", "{r}");
        assert_eq!(r["userId"], "b", "{r}");
        assert_timestamp(&r["readAt"]);
        assert_eq!(r["messageId"], [&m1, &m2][i]["id"], "one receipt per id, in the order given");
    }
    assert_eq!(at_a, at_b, "the whole room (reader included) gets the same receipts");

    let resp = hub.get(&format!("/api/v1/rooms/room/messages/{}/receipts", m1["id"].as_str().unwrap()), Some(&key));
    assert_eq!(resp.status, 200, "{resp:?}");
    assert_eq!(resp.json(), json!({ "receipts": [{ "userId": "b", "readAt": at_b[0]["readAt"] }] }));

    // A receipt already recorded is not re-broadcast.
    b.send(json!({ "type": "read", "room": "room", "messageIds": [m1["id"]] }));
    assert_nothing_pending(&mut b);
    assert_nothing_pending(&mut a);

    // Unknown id → not_found, and nothing of that event is stored.
    b.send(json!({ "type": "read", "room": "room", "messageIds": ["no-such-id"] }));
    expect_error(&mut b, json!("read"), "not_found", None);
    a.send(json!({ "type": "read", "room": "room", "messageIds": [m2["id"], "no-such-id"] }));
    expect_error(&mut a, json!("read"), "not_found", None);
    assert_nothing_pending(&mut b);
    let resp = hub.get(&format!("/api/v1/rooms/room/messages/{}/receipts", m2["id"].as_str().unwrap()), Some(&key));
    assert_eq!(resp.json()["receipts"].as_array().map(Vec::len), Some(1), "{resp:?}");
}

#[test]
fn edit_and_delete() {
    let hub = Hub::start();
    let key = project(&hub);
    hub.create_room(&key, "room", "public");
    let mut a = hub.ws(&key, "a");
    let mut b = hub.ws(&key, "b");
    b.join("room");
    a.join("room");
    b.recv_type("user_joined");
    let (_, m) = send_tracked(&mut a, "room", "original", "t1");
    assert_eq!(b.recv(), m);
    let id = m["id"].clone();

    a.send(json!({ "type": "edit", "room": "room", "messageId": id, "content": "edited" }));
    let update = a.recv();
    assert_keys(&update, &["type", "room", "message"]);
    assert_eq!(update["type"], "message_update", "{update}");
    assert_eq!(update["room"], "room", "{update}");
    let edited = &update["message"];
    for field in ["id", "seq", "room", "userId", "contentType", "attachments", "createdAt"] {
        assert_eq!(edited[field], m[field], "{field} unchanged by the edit: {edited}");
    }
    assert_eq!(edited["content"], "edited", "{edited}");
    assert_timestamp(&edited["editedAt"]);
    assert!(edited.get("deleted").is_none(), "not deleted: {edited}");
    assert_eq!(b.recv(), update, "the room gets the update");

    // Not the author → forbidden, for edit and for delete.
    b.send(json!({ "type": "edit", "room": "room", "messageId": id, "content": "hijacked" }));
    expect_error(&mut b, json!("edit"), "forbidden", None);
    b.send(json!({ "type": "delete", "room": "room", "messageId": id }));
    expect_error(&mut b, json!("delete"), "forbidden", None);
    assert_nothing_pending(&mut a);
    a.send(json!({ "type": "edit", "room": "room", "messageId": "no-such-id", "content": "x" }));
    expect_error(&mut a, json!("edit"), "not_found", None);

    let history = rest_history(&hub, &key, "room", "");
    assert_eq!(history.len(), 1, "{history:?}");
    assert_eq!(history[0]["content"], "edited", "{history:?}");
    assert_eq!(history[0]["editedAt"], edited["editedAt"], "{history:?}");

    a.send(json!({ "type": "delete", "room": "room", "messageId": id }));
    let update = a.recv();
    assert_eq!(update["type"], "message_update", "{update}");
    assert_eq!(update["room"], "room", "{update}");
    let deleted = &update["message"];
    assert_eq!(deleted["id"], id, "{deleted}");
    assert_eq!(deleted["seq"], 1, "{deleted}");
    assert_eq!(deleted["deleted"], true, "{deleted}");
    assert_eq!(deleted["content"], "", "tombstone: {deleted}");
    assert_eq!(deleted["attachments"], json!([]), "tombstone: {deleted}");
    assert_eq!(b.recv(), update, "the room gets the deletion");

    let history = rest_history(&hub, &key, "room", "");
    assert_eq!(history.len(), 1, "the tombstone keeps its seq: {history:?}");
    assert_eq!(history[0]["deleted"], true, "{history:?}");
    assert_eq!(history[0]["content"], "", "{history:?}");

    // A deleted message can be neither edited nor deleted again.
    a.send(json!({ "type": "edit", "room": "room", "messageId": id, "content": "again" }));
    expect_error(&mut a, json!("edit"), "not_found", None);
    a.send(json!({ "type": "delete", "room": "room", "messageId": id }));
    expect_error(&mut a, json!("delete"), "not_found", None);
    assert_nothing_pending(&mut b);
}

#[test]
fn direct_messages() {
    let hub = Hub::start();
    let key = project(&hub);
    let mut a = hub.ws(&key, "a");
    let mut b1 = hub.ws(&key, "b");
    let mut b2 = hub.ws(&key, "b");

    a.send(json!({ "type": "direct", "to": "b", "content": "psst", "tempId": "d1" }));
    let sent = a.recv();
    assert_keys(&sent, &["type", "id", "to", "tempId", "delivered"]);
    assert_eq!(sent["type"], "direct_sent", "{sent}");
    assert_eq!(sent["to"], "b", "{sent}");
    assert_eq!(sent["tempId"], "d1", "{sent}");
    assert_eq!(sent["delivered"], 2, "{sent}");
    assert!(sent["id"].as_str().is_some_and(|s| !s.is_empty()), "{sent}");
    assert_nothing_pending(&mut a); // the sender does not get its own direct

    let at_b1 = b1.recv();
    assert_keys(&at_b1, &["type", "id", "from", "to", "content", "createdAt"]);
    assert_eq!(at_b1["type"], "direct", "{at_b1}");
    assert_eq!(at_b1["id"], sent["id"], "{at_b1}");
    assert_eq!(at_b1["from"], "a", "{at_b1}");
    assert_eq!(at_b1["to"], "b", "{at_b1}");
    assert_eq!(at_b1["content"], "psst", "{at_b1}");
    assert_timestamp(&at_b1["createdAt"]);
    assert_eq!(b2.recv(), at_b1, "each of b's connections gets it");

    // To a user with no open connection: delivered 0; no tempId given, none echoed.
    a.send(json!({ "type": "direct", "to": "nobody", "content": "hello?" }));
    let sent = a.recv();
    assert_keys(&sent, &["type", "id", "to", "delivered"]);
    assert_eq!((sent["type"].clone(), sent["delivered"].clone()), (json!("direct_sent"), json!(0)), "{sent}");

    // The REST twin reaches the same connections.
    let resp = hub.post("/api/v1/users/b/messages", Some(&key), &json!({ "content": "from backend", "from": "svc" }));
    assert_eq!(resp.status, 200, "{resp:?}");
    assert_eq!(resp.json(), json!({ "delivered": 2 }));
    for b in [&mut b1, &mut b2] {
        let v = b.recv();
        assert_eq!(
            (v["type"].clone(), v["from"].clone(), v["to"].clone()),
            (json!("direct"), json!("svc"), json!("b"))
        );
        assert_eq!(v["content"], "from backend", "{v}");
    }
    let resp = hub.post("/api/v1/users/b/messages", Some(&key), &json!({ "content": "anonymous" }));
    assert_eq!(resp.json(), json!({ "delivered": 2 }), "{resp:?}");
    let v = b1.recv();
    assert_eq!((v["type"].clone(), v["from"].clone()), (json!("direct"), Value::Null), "from null when omitted: {v}");
    assert_eq!(b2.recv()["content"], "anonymous");

    // Missing fields.
    a.send(json!({ "type": "direct", "content": "to whom?", "tempId": "d2" }));
    expect_error(&mut a, json!("direct"), "bad_request", Some("d2"));
}

#[test]
fn history_event_and_paging() {
    let hub = Hub::start();
    let key = project(&hub);
    hub.create_room(&key, "room", "public");
    let mut a = hub.ws(&key, "a");
    a.join("room");
    let sent = send_n(&mut a, "room", 5);
    let rest = rest_history(&hub, &key, "room", "");
    assert_eq!(
        rest.iter().map(|m| m["id"].clone()).collect::<Vec<_>>(),
        sent.iter().map(|m| m["id"].clone()).collect::<Vec<_>>()
    );

    // history needs access, not a join.
    let mut b = hub.ws(&key, "b");
    let mut page = |query: Value| -> Vec<u64> {
        let mut ev = json!({ "type": "history", "room": "room" });
        ev.as_object_mut().unwrap().extend(query.as_object().unwrap().clone());
        b.send(ev);
        let v = b.recv();
        assert_keys(&v, &["type", "room", "messages"]);
        assert_eq!((v["type"].clone(), v["room"].clone()), (json!("history"), json!("room")), "{v}");
        let msgs = v["messages"].as_array().unwrap_or_else(|| panic!("{v}"));
        for m in msgs {
            let stored = &rest[m["seq"].as_u64().expect("seq") as usize - 1];
            assert_eq!(m, stored, "history messages are the stored messages");
        }
        msgs.iter().map(|m| m["seq"].as_u64().expect("seq")).collect()
    };
    assert_eq!(page(json!({ "limit": 2 })), vec![4, 5], "newest 2, ascending");
    assert_eq!(page(json!({})), vec![1, 2, 3, 4, 5], "default limit");
    assert_eq!(page(json!({ "before": 4, "limit": 2 })), vec![2, 3], "below before");
    assert_eq!(page(json!({ "before": 2 })), vec![1]);
    assert_eq!(page(json!({ "after": 1, "limit": 2 })), vec![2, 3], "oldest after");
    assert_eq!(page(json!({ "after": 3 })), vec![4, 5]);
    assert_eq!(page(json!({ "after": 5 })), Vec::<u64>::new());
    for s in &sent {
        assert_keys(s, MESSAGE_KEYS);
    }

    b.send(json!({ "type": "history", "room": "no-such-room" }));
    expect_error(&mut b, json!("history"), "not_found", None);
    b.send(json!({ "type": "history" }));
    expect_error(&mut b, json!("history"), "bad_request", None);
}

// ---------------------------------------------------------------------------------------------
// ping, room deletion, REST → WebSocket
// ---------------------------------------------------------------------------------------------

#[test]
fn ping_pong_and_room_deleted() {
    let hub = Hub::start();
    let key = project(&hub);
    hub.create_room(&key, "doomed", "public");
    hub.create_room(&key, "stays", "public");
    let mut a = hub.ws(&key, "a");
    let mut b = hub.ws(&key, "b");
    a.send(json!({ "type": "ping" }));
    assert_eq!(a.recv(), json!({ "type": "pong" }));
    a.join("doomed");
    a.join("stays");
    b.join("doomed");
    a.recv_type("user_joined");

    let resp = hub.delete("/api/v1/rooms/doomed", Some(&key));
    assert_eq!(resp.status, 204, "{resp:?}");
    assert_eq!(a.recv(), json!({ "type": "room_deleted", "room": "doomed" }));
    assert_eq!(b.recv(), json!({ "type": "room_deleted", "room": "doomed" }));

    a.send(json!({ "type": "message", "room": "doomed", "content": "anyone?", "tempId": "t1" }));
    expect_error(&mut a, json!("message"), "not_found", Some("t1"));
    a.send(json!({ "type": "join", "room": "doomed" }));
    expect_error(&mut a, json!("join"), "not_found", None);
    // The other room is untouched.
    let (_, m) = send_tracked(&mut a, "stays", "still here", "t2");
    assert_eq!(m["seq"], 1);
    assert_nothing_pending(&mut b);
}

#[test]
fn rest_post_reaches_live_connections() {
    let hub = Hub::start();
    let key = project(&hub);
    hub.create_room(&key, "room", "public");
    let mut a = hub.ws(&key, "a");
    a.join("room");
    let resp = hub.post("/api/v1/rooms/room/messages", Some(&key), &json!({ "userId": "bot", "content": "from rest" }));
    assert_eq!(resp.status, 201, "{resp:?}");
    let created = resp.json();
    let v = a.recv();
    assert_message_frame(&v, "room", "bot", "from rest", 1);
    assert_eq!(v["id"], created["id"], "the broadcast is the stored message");
    assert_eq!(v["createdAt"], created["createdAt"]);
    assert_nothing_pending(&mut a);
}

// ---------------------------------------------------------------------------------------------
// Private rooms and tenants
// ---------------------------------------------------------------------------------------------

#[test]
fn private_rooms() {
    let hub = Hub::start();
    let key = project(&hub);
    let resp =
        hub.post("/api/v1/rooms", Some(&key), &json!({ "name": "secret", "type": "private", "members": ["alice"] }));
    assert_eq!(resp.status, 201, "{resp:?}");
    let mut alice = hub.ws(&key, "alice");
    let mut bob = hub.ws(&key, "bob");

    bob.send(json!({ "type": "join", "room": "secret" }));
    expect_error(&mut bob, json!("join"), "forbidden", None);
    bob.send(json!({ "type": "history", "room": "secret" }));
    expect_error(&mut bob, json!("history"), "forbidden", None);
    bob.send(json!({ "type": "message", "room": "secret", "content": "let me in" }));
    let v = bob.recv();
    assert_eq!((v["type"].clone(), v["event"].clone()), (json!("error"), json!("message")), "{v}");
    assert!(v["code"] == "forbidden" || v["code"] == "not_joined", "{v}");

    let joined = alice.join("secret");
    assert_eq!(joined["members"], json!([{ "userId": "alice", "status": "online" }]));
    let (_, m) = send_tracked(&mut alice, "secret", "members only", "t1");
    alice.send(json!({ "type": "history", "room": "secret" }));
    assert_eq!(
        alice.recv(),
        json!({ "type": "history", "room": "secret", "messages": rest_history(&hub, &key, "secret", "") })
    );
    assert_nothing_pending(&mut bob); // bob never saw the message

    // Adding bob lets him in.
    assert_eq!(hub.put("/api/v1/rooms/secret/members/bob", Some(&key), None).status, 204);
    bob.join("secret");
    assert_eq!(alice.recv(), json!({ "type": "user_joined", "room": "secret", "userId": "bob", "status": "online" }));
    bob.send(json!({ "type": "history", "room": "secret" }));
    let page = bob.recv();
    assert_eq!(page["messages"][0]["id"], m["id"], "a member reads the history: {page}");

    // Removing alice takes her out of the room.
    assert_eq!(hub.delete("/api/v1/rooms/secret/members/alice", Some(&key)).status, 204);
    assert_eq!(alice.recv(), json!({ "type": "left", "room": "secret" }));
    assert_eq!(bob.recv_type("user_left"), json!({ "type": "user_left", "room": "secret", "userId": "alice" }));
    alice.send(json!({ "type": "join", "room": "secret" }));
    expect_error(&mut alice, json!("join"), "forbidden", None);
    bob.send(json!({ "type": "message", "room": "secret", "content": "alone" }));
    assert_eq!(bob.recv()["type"], "message");
    assert_nothing_pending(&mut alice);
}

#[test]
fn tenant_isolation_over_websocket() {
    let hub = Hub::start();
    let key_a = hub.create_project("tenant-a").1;
    let key_b = hub.create_project("tenant-b").1;
    hub.create_room(&key_a, "lobby", "public");

    // The same user ids exist in both projects.
    let mut a_alice = hub.ws(&key_a, "alice");
    let mut a_bob = hub.ws(&key_a, "bob");
    let mut b_alice = hub.ws(&key_b, "alice");
    a_alice.join("lobby");
    a_bob.join("lobby");
    a_alice.recv_type("user_joined");

    // Project B has no room "lobby".
    b_alice.send(json!({ "type": "join", "room": "lobby" }));
    expect_error(&mut b_alice, json!("join"), "not_found", None);
    b_alice.send(json!({ "type": "history", "room": "lobby" }));
    expect_error(&mut b_alice, json!("history"), "not_found", None);
    b_alice.send(json!({ "type": "message", "room": "lobby", "content": "sneak" }));
    expect_error(&mut b_alice, json!("message"), "not_found", None);

    // B's own "lobby" is a different room.
    hub.create_room(&key_b, "lobby", "public");
    let joined = b_alice.join("lobby");
    assert_eq!(joined["seq"], 0, "{joined}");
    assert_eq!(joined["members"], json!([{ "userId": "alice", "status": "online" }]), "no members from A: {joined}");
    assert_nothing_pending(&mut a_bob); // no user_joined across projects

    // A's messages never reach B's sockets, and B's never reach A's.
    let (_, m) = send_tracked(&mut a_alice, "lobby", "for A only", "t1");
    assert_eq!(a_bob.recv(), m);
    assert_nothing_pending(&mut b_alice);
    b_alice.expect_silence(300);
    let (mapping, _) = send_tracked(&mut b_alice, "lobby", "for B only", "t1");
    assert_eq!(mapping["seq"], 1, "B's room has its own seq: {mapping}");
    assert_ne!(mapping["realId"], m["id"], "same tempId, other project: another message");
    assert_nothing_pending(&mut a_bob);
    assert_nothing_pending(&mut a_alice);

    // Presence and directs stay inside the project.
    b_alice.send(json!({ "type": "presence", "status": "away" }));
    assert_nothing_pending(&mut b_alice);
    assert_nothing_pending(&mut a_bob);
    let mut b_bob = hub.ws(&key_b, "bob");
    b_bob.send(json!({ "type": "direct", "to": "alice", "content": "B only", "tempId": "d" }));
    assert_eq!(b_bob.recv()["delivered"], 1, "only project B's alice");
    assert_eq!(b_alice.recv()["content"], "B only");
    assert_nothing_pending(&mut a_alice);

    let presence = rest_presence(&hub, &key_a, "lobby");
    assert_eq!(presence.keys().cloned().collect::<BTreeSet<_>>(), ["alice", "bob"].map(String::from).into());
    assert_eq!(presence["alice"], ("online".to_string(), 1), "B's alice is not counted in A: {presence:?}");
}

// ---------------------------------------------------------------------------------------------
// Errors and close codes
// ---------------------------------------------------------------------------------------------

#[test]
fn every_error_code_keeps_the_connection_open() {
    let hub = Hub::start_with(&["--max-content-bytes", "50"]);
    let key = project(&hub);
    hub.create_room(&key, "room", "public");
    hub.create_room(&key, "elsewhere", "public");
    let resp = hub.post("/api/v1/rooms", Some(&key), &json!({ "name": "vip", "type": "private", "members": ["x"] }));
    assert_eq!(resp.status, 201, "{resp:?}");
    let mut ws = hub.ws(&key, "u");

    // bad_request: not JSON, no type, unknown type, missing or wrong fields.
    ws.send_text("this is not json");
    expect_error(&mut ws, Value::Null, "bad_request", None);
    ws.send_text("[1, 2, 3]");
    expect_error(&mut ws, Value::Null, "bad_request", None);
    ws.send(json!({ "room": "room" }));
    expect_error(&mut ws, Value::Null, "bad_request", None);
    ws.send(json!({ "type": "bogus", "room": "room" }));
    expect_error(&mut ws, json!("bogus"), "bad_request", None);
    ws.send(json!({ "type": "join" }));
    expect_error(&mut ws, json!("join"), "bad_request", None);
    ws.send(json!({ "type": "presence", "status": "sleeping" }));
    expect_error(&mut ws, json!("presence"), "bad_request", None);
    ws.send(json!({ "type": "typing", "room": "room" }));
    expect_error(&mut ws, json!("typing"), "bad_request", None);
    ws.send(json!({ "type": "read", "room": "room" }));
    expect_error(&mut ws, json!("read"), "bad_request", None);
    ws.send(json!({ "type": "edit", "room": "room", "messageId": "x" }));
    expect_error(&mut ws, json!("edit"), "bad_request", None);
    ws.send(json!({ "type": "delete", "room": "room" }));
    expect_error(&mut ws, json!("delete"), "bad_request", None);
    ws.send(json!({ "type": "leave" }));
    expect_error(&mut ws, json!("leave"), "bad_request", None);

    // not_found, forbidden, not_joined.
    ws.send(json!({ "type": "join", "room": "no-such-room" }));
    expect_error(&mut ws, json!("join"), "not_found", None);
    ws.send(json!({ "type": "join", "room": "vip" }));
    expect_error(&mut ws, json!("join"), "forbidden", None);
    ws.send(json!({ "type": "message", "room": "elsewhere", "content": "hi", "tempId": "nj" }));
    expect_error(&mut ws, json!("message"), "not_joined", Some("nj"));
    ws.send(json!({ "type": "typing", "room": "elsewhere", "isTyping": true }));
    expect_error(&mut ws, json!("typing"), "not_joined", None);

    ws.join("room");
    // bad_request with the tempId echoed: missing content; empty content without attachments.
    ws.send(json!({ "type": "message", "room": "room", "tempId": "t-missing" }));
    expect_error(&mut ws, json!("message"), "bad_request", Some("t-missing"));
    ws.send(json!({ "type": "message", "room": "room", "content": "", "tempId": "t-empty" }));
    expect_error(&mut ws, json!("message"), "bad_request", Some("t-empty"));

    // too_large: content over --max-content-bytes 50, tempId echoed; nothing stored.
    ws.send(json!({ "type": "message", "room": "room", "content": "x".repeat(100), "tempId": "big" }));
    expect_error(&mut ws, json!("message"), "too_large", Some("big"));
    assert!(rest_history(&hub, &key, "room", "").is_empty(), "nothing stored after refusals");
    let (mapping, _) = send_tracked(&mut ws, "room", &"y".repeat(40), "small");
    assert_eq!(mapping["seq"], 1, "{mapping}");

    // A binary frame → bad_request with event null.
    ws.socket.send(Message::binary(vec![1u8, 2, 3])).expect("send binary");
    expect_error(&mut ws, Value::Null, "bad_request", None);
}

#[test]
fn oversized_websocket_message_closes_1009() {
    let hub = Hub::start_with(&["--max-message-bytes", "1024"]);
    let key = project(&hub);
    hub.create_room(&key, "room", "public");
    let mut ws = hub.ws(&key, "u");
    ws.join("room");
    // Just under the limit is fine.
    let (mapping, _) = send_tracked(&mut ws, "room", &"a".repeat(900), "ok");
    assert_eq!(mapping["seq"], 1);
    // Over it: close 1009.
    let big = json!({ "type": "message", "room": "room", "content": "b".repeat(2000) }).to_string();
    assert!(big.len() > 2000);
    ws.send_text(&big);
    assert_eq!(ws.expect_close(), Some(1009), "a 2000-byte message over --max-message-bytes 1024");
    assert_eq!(rest_history(&hub, &key, "room", "").len(), 1, "the oversized message was not stored");
}

#[test]
fn idle_client_is_pinged_then_closed_1000() {
    let hub = Hub::start_with(&["--ws-idle-timeout-ms", "600"]);
    let key = project(&hub);

    // A client that never sends anything, not even pongs (read off the raw TCP stream).
    let mut silent = hub.ws(&key, "silent");
    let connected_at = Instant::now();
    let frames = raw_frames_until_close(silent.socket.get_mut(), Instant::now() + Duration::from_secs(3));
    let opcodes: Vec<u8> = frames.iter().map(|f| f.opcode).collect();
    assert!(opcodes.contains(&0x9), "the idle client is pinged first: opcodes {opcodes:?}");
    let close = frames.last().filter(|f| f.opcode == 0x8).unwrap_or_else(|| panic!("no close within 3 s: {opcodes:?}"));
    assert!(close.payload.len() >= 2, "close frame carries a code");
    assert_eq!(u16::from_be_bytes([close.payload[0], close.payload[1]]), 1000, "idle close code");
    let ping = frames.iter().find(|f| f.opcode == 0x9).expect("ping");
    assert!(ping.at < close.at, "ping before close");
    let closed_after = close.at.duration_since(connected_at);
    assert!(closed_after >= Duration::from_millis(500), "closed after only {closed_after:?} of a 600 ms timeout");

    // A client that answers pings (tungstenite replies on its next read) stays open.
    let mut lively = hub.ws(&key, "lively");
    let deadline = Instant::now() + Duration::from_millis(1500);
    let mut pings = 0;
    loop {
        match read_frame(&mut lively, deadline) {
            Frame::Ping => pings += 1,
            Frame::Timeout => break,
            Frame::Text(v) => panic!("unexpected frame {v}"),
            Frame::Close(code) => panic!("a client answering pings was closed ({code:?}) after {pings} pings"),
        }
    }
    assert!(pings >= 2, "pinged at half the idle timeout: {pings} pings in 1.5 s");
    assert_nothing_pending(&mut lively);
}

#[test]
fn sigterm_sends_close_1001_and_keeps_acknowledged_messages() {
    let mut hub = Hub::start();
    let key = project(&hub);
    hub.create_room(&key, "room", "public");
    let mut ws = hub.ws(&key, "u");
    ws.join("room");
    let (mapping, _) = send_tracked(&mut ws, "room", "before shutdown", "t1");

    let (status, code) = std::thread::scope(|scope| {
        let reader = scope.spawn(move || ws.expect_close());
        let status = hub.terminate();
        (status, reader.join().expect("reader thread"))
    });
    assert_eq!(code, Some(1001), "server shutdown close code");
    assert!(status.success(), "exit status after SIGTERM: {status}");

    let hub2 = Hub::start_at(&hub.db_path, &[]);
    let history = rest_history(&hub2, &key, "room", "");
    assert_eq!(history.len(), 1, "{history:?}");
    assert_eq!(history[0]["id"], mapping["realId"]);
}

/// Handshakes the WebSocket layer refuses before authentication: a wrong
/// version is 426 naming the supported one, a malformed request is 400.
#[test]
fn malformed_handshakes_are_refused() {
    let hub = Hub::start();
    let key = project(&hub);
    let upgrade = |version: &str, ws_key: Option<&str>, method: &str| -> common::Resp {
        let mut http = hub.http();
        let mut raw = format!(
            "{method} /?apiKey={}&userId=u HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Version: {version}\r\n",
            pct(&key)
        );
        if let Some(k) = ws_key {
            raw.push_str(&format!("Sec-WebSocket-Key: {k}\r\n"));
        }
        raw.push_str("\r\n");
        http.send_raw(raw.as_bytes());
        http.read_response()
    };
    let good_key = Some("dGhlIHNhbXBsZSBub25jZQ==");
    let old = upgrade("8", good_key, "GET");
    assert_eq!(old.status, 426);
    assert_eq!(old.header("sec-websocket-version"), Some("13"));
    assert_eq!(old.json()["error"]["code"], "upgrade_required");
    assert_eq!(upgrade("13", None, "GET").status, 400, "missing Sec-WebSocket-Key");
    assert_eq!(upgrade("13", Some("short"), "GET").status, 400, "malformed Sec-WebSocket-Key");
    assert_eq!(upgrade("13", good_key, "POST").status, 400, "an upgrade must be a GET");
    let ok = upgrade("13", good_key, "GET");
    assert_eq!(ok.status, 101);
    assert_eq!(ok.header("sec-websocket-accept"), Some("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="));
}

// ---------------------------------------------------------------------------------------------
// Refusals: not_joined, too_large, invalid fields, hostile frames
// ---------------------------------------------------------------------------------------------

/// `read`, `edit` and `delete` need the room joined even when the message exists and is the
/// sender's own: each is refused `not_joined` (event, code, message; no tempId), the
/// connection stays open, and nothing is stored. Once joined, the same frames work.
#[test]
fn read_edit_and_delete_need_the_room_joined() {
    let hub = Hub::start();
    let key = project(&hub);
    hub.create_room(&key, "room", "public");
    let resp = hub.post("/api/v1/rooms/room/messages", Some(&key), &json!({ "userId": "u", "content": "mine" }));
    assert_eq!(resp.status, 201, "{resp:?}");
    let id = resp.json()["id"].clone();
    let mut ws = hub.ws(&key, "u");

    let read = json!({ "type": "read", "room": "room", "messageIds": [id] });
    let edit = json!({ "type": "edit", "room": "room", "messageId": id, "content": "changed" });
    let delete = json!({ "type": "delete", "room": "room", "messageId": id });
    for frame in [&read, &edit, &delete] {
        ws.send(frame.clone());
        let error = expect_error(&mut ws, frame["type"].clone(), "not_joined", None);
        assert!(error["message"].as_str().is_some_and(|m| m.contains("room")), "names the room: {error}");
    }
    let history = rest_history(&hub, &key, "room", "");
    assert_eq!(history.len(), 1, "{history:?}");
    assert_eq!(history[0]["content"], "mine", "not edited: {history:?}");
    assert!(history[0].get("editedAt").is_none() && history[0].get("deleted").is_none(), "{history:?}");
    let receipts = hub.get(&format!("/api/v1/rooms/room/messages/{}/receipts", id.as_str().unwrap()), Some(&key));
    assert_eq!(receipts.json(), json!({ "receipts": [] }), "no receipt stored");

    // Joined, the very same frames are handled.
    ws.join("room");
    ws.send(read);
    assert_eq!(ws.recv()["type"], "read_receipt");
    ws.send(edit);
    assert_eq!(ws.recv()["message"]["content"], "changed");
    ws.send(delete);
    assert_eq!(ws.recv()["message"]["deleted"], true);
}

/// `--max-content-bytes` bounds edits (new content plus the message's attachments) and
/// directs (content bytes): at the limit is fine, one byte over is `too_large`, nothing
/// changes and nothing is delivered.
#[test]
fn edit_and_direct_over_max_content_bytes_are_too_large() {
    let hub = Hub::start_with(&["--max-content-bytes", "50"]);
    let key = project(&hub);
    hub.create_room(&key, "room", "public");
    let mut ws = hub.ws(&key, "u");
    let mut v = hub.ws(&key, "v");
    ws.join("room");
    let (_, m) = send_tracked(&mut ws, "room", "short", "t1");
    let id = m["id"].clone();

    // 48 bytes of content + 2 of `[]` attachments = 50: accepted.
    ws.send(json!({ "type": "edit", "room": "room", "messageId": id, "content": "e".repeat(48) }));
    let update = ws.recv();
    assert_eq!(update["type"], "message_update", "{update}");
    assert_eq!(update["message"]["content"], "e".repeat(48), "{update}");
    // 49 + 2 = 51: too_large, and the stored content stays.
    ws.send(json!({ "type": "edit", "room": "room", "messageId": id, "content": "f".repeat(49) }));
    expect_error(&mut ws, json!("edit"), "too_large", None);
    assert_eq!(rest_history(&hub, &key, "room", "")[0]["content"], "e".repeat(48));

    // Directs: 50 bytes delivered; 51 bytes, or 26 two-byte characters (52 bytes), refused.
    ws.send(json!({ "type": "direct", "to": "v", "content": "d".repeat(50), "tempId": "fits" }));
    let sent = ws.recv();
    assert_eq!((sent["type"].clone(), sent["delivered"].clone()), (json!("direct_sent"), json!(1)), "{sent}");
    ws.send(json!({ "type": "direct", "to": "v", "content": "d".repeat(51), "tempId": "over" }));
    expect_error(&mut ws, json!("direct"), "too_large", Some("over"));
    ws.send(json!({ "type": "direct", "to": "v", "content": "é".repeat(26) }));
    expect_error(&mut ws, json!("direct"), "too_large", None);
    let got = v.recv();
    assert_eq!((got["type"].clone(), got["content"].clone()), (json!("direct"), json!("d".repeat(50))), "{got}");
    assert_nothing_pending(&mut v);
}

/// Field values the docs rule out are `bad_request`, naming the event and echoing a readable
/// `tempId`; the values at the documented limits are accepted. Nothing refused is stored.
#[test]
fn invalid_field_values_are_bad_request_naming_the_event() {
    let hub = Hub::start();
    let key = project(&hub);
    hub.create_room(&key, "room", "public");
    let mut ws = hub.ws(&key, "u");
    ws.join("room");

    let long_temp_id = "t".repeat(129);
    let refused: Vec<(Value, &str, Option<&str>)> = vec![
        // `to`: a user id of 1-128 characters, no control characters.
        (json!({ "type": "direct", "to": "", "content": "x", "tempId": "d1" }), "direct", Some("d1")),
        (json!({ "type": "direct", "to": "a\u{0}b", "content": "x" }), "direct", None),
        (json!({ "type": "direct", "to": "\n", "content": "x" }), "direct", None),
        (json!({ "type": "direct", "to": "a\u{85}", "content": "x" }), "direct", None),
        (json!({ "type": "direct", "to": "x".repeat(129), "content": "x", "tempId": "d2" }), "direct", Some("d2")),
        (json!({ "type": "direct", "to": 5, "content": "x", "tempId": "d3" }), "direct", Some("d3")),
        // `contentType`: 1-128 bytes.
        (
            json!({ "type": "message", "room": "room", "content": "x", "contentType": "c".repeat(129), "tempId": "c1" }),
            "message",
            Some("c1"),
        ),
        (json!({ "type": "message", "room": "room", "content": "x", "contentType": "é".repeat(65) }), "message", None),
        (json!({ "type": "message", "room": "room", "content": "x", "contentType": "" }), "message", None),
        // `tempId`: 1-128 bytes, and the refusal still carries it.
        (
            json!({ "type": "message", "room": "room", "content": "x", "tempId": long_temp_id }),
            "message",
            Some(long_temp_id.as_str()),
        ),
        (json!({ "type": "message", "room": "room", "content": "x", "tempId": "" }), "message", Some("")),
        // `attachments`: an array (null counts as absent).
        (
            json!({ "type": "message", "room": "room", "content": "x", "attachments": "a.png", "tempId": "a1" }),
            "message",
            Some("a1"),
        ),
        (json!({ "type": "message", "room": "room", "content": "x", "attachments": { "url": "u" } }), "message", None),
        (json!({ "type": "message", "room": "room", "content": "x", "attachments": 5 }), "message", None),
        (json!({ "type": "message", "room": "room", "content": "x", "attachments": true }), "message", None),
        // `limit`: a whole number of at least 1.
        (json!({ "type": "history", "room": "room", "limit": 0 }), "history", None),
        (json!({ "type": "history", "room": "room", "limit": -1 }), "history", None),
        (json!({ "type": "history", "room": "room", "limit": 1.5 }), "history", None),
        (json!({ "type": "history", "room": "room", "limit": "10" }), "history", None),
    ];
    for (frame, event, temp_id) in refused {
        ws.send(frame.clone());
        let v = ws.recv();
        assert_eq!((v["type"].as_str(), v["code"].as_str()), (Some("error"), Some("bad_request")), "{frame} → {v}");
        assert_eq!(v["event"], event, "{frame} → {v}");
        assert_eq!(v.get("tempId").and_then(Value::as_str), temp_id, "tempId echo for {frame} → {v}");
        assert!(v["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
        assert_nothing_pending(&mut ws);
    }
    // A limit past u64 is not a number the hub can read either.
    ws.send_text(r#"{"type":"history","room":"room","limit":18446744073709551616}"#);
    expect_error(&mut ws, json!("history"), "bad_request", None);
    assert!(rest_history(&hub, &key, "room", "").is_empty(), "a refused message was stored");

    // The limits themselves are accepted.
    let (mapping, _) = send_tracked(&mut ws, "room", "x", &"t".repeat(128));
    assert_eq!(mapping["seq"], 1, "{mapping}");
    for (content_type, temp_id) in [("c".repeat(128), "c128"), ("é".repeat(64), "e64"), ("x".into(), "null-att")] {
        let mut frame = json!({ "type": "message", "room": "room", "content": "x", "tempId": temp_id });
        frame["contentType"] = json!(content_type);
        if temp_id == "null-att" {
            frame["attachments"] = Value::Null;
        }
        ws.send(frame);
        assert_eq!(ws.recv()["type"], "message_id_mapping", "{temp_id}");
        let msg = ws.recv();
        assert_eq!((msg["contentType"].as_str(), msg["attachments"].clone()), (Some(content_type.as_str()), json!([])));
    }
    for to in ["x".repeat(128), "a b".into(), "é".repeat(128)] {
        ws.send(json!({ "type": "direct", "to": to, "content": "x" }));
        let sent = ws.recv();
        assert_eq!((sent["type"].as_str(), sent["to"].as_str()), (Some("direct_sent"), Some(to.as_str())), "{sent}");
    }
    // limit 1000 is the cap, and a larger one is clamped to it (not refused).
    for limit in [1, 1000, 1001, 5000] {
        ws.send(json!({ "type": "history", "room": "room", "limit": limit }));
        let page = ws.recv();
        assert_eq!(page["type"], "history", "limit {limit}: {page}");
        let expected = if limit == 1 { 1 } else { 4 };
        assert_eq!(page["messages"].as_array().map(Vec::len), Some(expected), "limit {limit}: {page}");
    }
}

/// ~60 KB of nesting in one text frame is refused `bad_request` with `event: null` (or, in
/// an unknown field of a valid event, skipped), and the connection stays usable.
#[test]
fn deeply_nested_frames_are_refused_and_the_connection_stays_usable() {
    let hub = Hub::start();
    let key = project(&hub);
    hub.create_room(&key, "room", "public");
    let mut ws = hub.ws(&key, "u");
    ws.join("room");

    let arrays = format!("{}{}", "[".repeat(30_000), "]".repeat(30_000));
    let objects = format!("{}1{}", r#"{"a":"#.repeat(10_000), "}".repeat(10_000));
    for text in ["[".repeat(60_000), arrays.clone(), objects.clone(), r#"{"a":"#.repeat(12_000)] {
        assert!(text.len() >= 55_000 && text.len() < 65_536, "{} bytes", text.len());
        ws.send_text(&text);
        expect_error(&mut ws, Value::Null, "bad_request", None);
    }
    // Deep values in an unknown field of a known event are skipped like any unknown field.
    ws.send_text(&format!(r#"{{"type":"ping","x":{objects}}}"#));
    assert_eq!(ws.recv(), json!({ "type": "pong" }));
    // In a known field of the wrong type they are refused naming the event.
    ws.send_text(&format!(r#"{{"type":"message","room":"room","content":{arrays},"tempId":"deep"}}"#));
    expect_error(&mut ws, json!("message"), "bad_request", Some("deep"));
    let (mapping, _) = send_tracked(&mut ws, "room", "still here", "after");
    assert_eq!(mapping["seq"], 1, "{mapping}");
}

/// docs/PROTOCOL.md §9 `error`: "`tempId` is present when the refused frame carried a
/// readable string `tempId`" — for every event, whichever check refused it.
#[test]
fn every_refusal_echoes_a_readable_temp_id() {
    let hub = Hub::start();
    let key = project(&hub);
    hub.create_room(&key, "room", "public");
    let mut ws = hub.ws(&key, "u");

    // Refused while decoding: echoed today.
    ws.send(json!({ "type": "edit", "room": "room", "messageId": "m", "tempId": "decode" }));
    expect_error(&mut ws, json!("edit"), "bad_request", Some("decode"));
    // Refused by a later check of the same events.
    let later = [
        (json!({ "type": "join", "room": "nowhere", "tempId": "j" }), "not_found"),
        (json!({ "type": "leave", "room": "room", "tempId": "l" }), "not_joined"),
        (json!({ "type": "typing", "room": "room", "isTyping": true, "tempId": "ty" }), "not_joined"),
        (json!({ "type": "read", "room": "room", "messageIds": ["m"], "tempId": "r" }), "not_joined"),
        (json!({ "type": "edit", "room": "room", "messageId": "m", "content": "c", "tempId": "e" }), "not_joined"),
        (json!({ "type": "delete", "room": "room", "messageId": "m", "tempId": "d" }), "not_joined"),
        (json!({ "type": "history", "room": "nowhere", "tempId": "h" }), "not_found"),
    ];
    for (frame, code) in later {
        ws.send(frame.clone());
        expect_error(&mut ws, frame["type"].clone(), code, frame["tempId"].as_str());
    }
}

/// Attachments nested past serde_json's depth limit (128) are refused over REST with 400;
/// a WebSocket `message` carrying the same attachments must be refused `bad_request` too,
/// not stored and broadcast to every member and later history reader as JSON that a
/// default serde_json client cannot parse.
#[test]
fn attachments_nested_past_the_rest_depth_limit_are_refused_over_websocket_too() {
    let hub = Hub::start();
    let key = project(&hub);
    hub.create_room(&key, "room", "public");
    let nested = format!("{}{}", "[".repeat(200), "]".repeat(200));

    let body = format!(r#"{{"userId":"u","content":"x","attachments":{nested}}}"#);
    let resp = hub.http().request("POST", "/api/v1/rooms/room/messages", &[("X-API-Key", &key)], Some(&body));
    assert_eq!(resp.status, 400, "REST refuses the nesting: {resp:?}");

    let mut ws = hub.ws(&key, "u");
    ws.join("room");
    ws.send_text(&format!(
        r#"{{"type":"message","room":"room","content":"x","tempId":"deep","attachments":{nested}}}"#
    ));
    expect_error(&mut ws, json!("message"), "bad_request", Some("deep"));
    assert!(rest_history(&hub, &key, "room", "").is_empty(), "nothing stored");
}

/// Each client event is "one JSON object with a `type`" (docs/PROTOCOL.md §7.2). A JSON
/// array must be refused `bad_request` with `event: null`, not decoded field by field in
/// declaration order (serde's derive accepts a sequence for a struct).
#[test]
fn a_json_array_is_not_an_event() {
    let hub = Hub::start();
    let key = project(&hub);
    hub.create_room(&key, "room", "public");
    let mut ws = hub.ws(&key, "u");
    // RawEvent's 15 fields in order: type, room, since, before, after, limit, content, ...
    let positional = |kind: &str, room: Value| {
        let mut fields = vec![json!(kind), room];
        fields.resize(15, Value::Null);
        Value::Array(fields)
    };
    ws.send(positional("ping", Value::Null));
    expect_error(&mut ws, Value::Null, "bad_request", None);
    ws.send(positional("join", json!("room")));
    expect_error(&mut ws, Value::Null, "bad_request", None);
    assert!(rest_presence(&hub, &key, "room").is_empty(), "an array joined the room");
}
