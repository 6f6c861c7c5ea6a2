//! The Socket.IO dialect against the real binary, in Engine.IO / Socket.IO
//! bytes: both transports, the upgrade, every packet type, the Chatpulse
//! events with their acknowledgements, refusals and malformed input.
//! (The real socket.io-client is driven by clients/socketio-test.)

mod common;

use std::io::ErrorKind;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::{Http, Hub};
use serde_json::{json, Value};
use tungstenite::{Message, WebSocket};

const WAIT: Duration = Duration::from_secs(5);

/// A Socket.IO client over the WebSocket transport, in raw packets.
struct Sio {
    socket: WebSocket<TcpStream>,
    /// The open packet's settings.
    open: Value,
}

impl Sio {
    /// Opens `/socket.io/?EIO=4&transport=websocket` and reads the open packet.
    fn open(hub: &Hub, query: &str) -> Sio {
        let stream = TcpStream::connect(hub.addr).expect("connect");
        let url = format!("ws://{}/socket.io/?EIO=4&transport=websocket{query}", hub.addr);
        let (socket, _) = tungstenite::client(url, stream).unwrap_or_else(|e| panic!("upgrade: {e:?}"));
        let mut sio = Sio { socket, open: Value::Null };
        let open = sio.recv();
        assert!(open.starts_with('0'), "open packet: {open:?}");
        sio.open = serde_json::from_str(&open[1..]).expect("open json");
        sio
    }

    /// Opens and joins `/` with `auth`; the CONNECT answer's `sid`.
    fn connect(hub: &Hub, auth: Value) -> Sio {
        let mut sio = Sio::open(hub, "");
        sio.send(&format!("40{auth}"));
        let answer = sio.recv();
        assert!(answer.starts_with("40{"), "CONNECT answer: {answer:?}");
        let v: Value = serde_json::from_str(&answer[2..]).expect("json");
        assert!(v["sid"].is_string(), "{v}");
        sio
    }

    /// Opens and joins `/` with `auth`; the session and the CONNECT answer.
    fn connect_answer(hub: &Hub, auth: Value) -> (Sio, Value) {
        let mut sio = Sio::open(hub, "");
        sio.send(&format!("40{auth}"));
        let answer = sio.recv();
        let v: Value =
            serde_json::from_str(answer.strip_prefix("40").unwrap_or_else(|| panic!("{answer}"))).expect("json");
        (sio, v)
    }

    /// The next `message` event, whole: `[name, {message}, offset?]`.
    fn message_event(&mut self) -> Value {
        let deadline = Instant::now() + WAIT;
        while Instant::now() < deadline {
            let Some(p) = self.try_recv(deadline - Instant::now()) else { break };
            if let Some(rest) = p.strip_prefix("42[\"message\"") {
                return serde_json::from_str(&format!("[\"message\"{rest}")).expect("event json");
            }
        }
        panic!("no message event");
    }

    fn send(&mut self, packet: &str) {
        self.socket.send(Message::text(packet)).expect("send");
    }

    /// Emits `name` with `data` and ack id `ack`.
    fn emit(&mut self, name: &str, data: Value, ack: Option<u64>) {
        let id = ack.map(|a| a.to_string()).unwrap_or_default();
        self.send(&format!("42{id}{}", json!([name, data])));
    }

    /// The next text packet within 5 s (server pings answered on the way).
    fn recv(&mut self) -> String {
        self.try_recv(WAIT).unwrap_or_else(|| panic!("no packet within {WAIT:?}"))
    }

    fn try_recv(&mut self, within: Duration) -> Option<String> {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            self.socket.get_mut().set_read_timeout(Some(left)).expect("timeout");
            match self.socket.read() {
                Ok(Message::Text(t)) if t.as_str() == "2" => self.send("3"),
                Ok(Message::Text(t)) => return Some(t.to_string()),
                Ok(Message::Close(_)) => return None,
                Ok(_) => {}
                Err(tungstenite::Error::Io(e)) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    return None
                }
                Err(_) => return None,
            }
        }
    }

    /// The next event named `name`: its first argument.
    fn event(&mut self, name: &str) -> Value {
        let deadline = Instant::now() + WAIT;
        let mut skipped = Vec::new();
        while Instant::now() < deadline {
            let Some(p) = self.try_recv(deadline - Instant::now()) else { break };
            if let Some(rest) = p.strip_prefix("42") {
                let v: Value = serde_json::from_str(rest).expect("event json");
                if v[0] == name {
                    return v[1].clone();
                }
            }
            skipped.push(p);
        }
        panic!("no {name:?} event; skipped {skipped:?}");
    }

    /// The acknowledgement of id `ack`: its first argument.
    fn ack(&mut self, ack: u64) -> Value {
        let prefix = format!("43{ack}[");
        let deadline = Instant::now() + WAIT;
        let mut skipped = Vec::new();
        while Instant::now() < deadline {
            let Some(p) = self.try_recv(deadline - Instant::now()) else { break };
            if p.starts_with(&prefix) {
                let v: Value = serde_json::from_str(&p[prefix.len() - 1..]).expect("ack json");
                return v[0].clone();
            }
            skipped.push(p);
        }
        panic!("no ack {ack}; skipped {skipped:?}");
    }

    /// Whether the server closes the WebSocket within 5 s.
    fn closed(&mut self) -> bool {
        let deadline = Instant::now() + WAIT;
        while Instant::now() < deadline {
            self.socket.get_mut().set_read_timeout(Some(Duration::from_millis(200))).expect("timeout");
            match self.socket.read() {
                Ok(Message::Close(_)) | Err(tungstenite::Error::ConnectionClosed) => return true,
                Err(tungstenite::Error::Io(e)) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(_) => return true,
                Ok(_) => {}
            }
        }
        false
    }
}

fn hub_with_thread(thread: &str) -> (Hub, String) {
    let hub = Hub::start();
    let (_, key) = hub.create_project("sio");
    hub.create_room(&key, thread, "public");
    (hub, key)
}

#[test]
fn websocket_transport_open_connect_and_chat_with_acks() {
    let (hub, key) = hub_with_thread("456");
    let mut a = Sio::connect(&hub, json!({"apiKey": key, "userId": 123}));
    assert_eq!(a.open["pingInterval"], 25000);
    assert_eq!(a.open["pingTimeout"], 20000);
    assert_eq!(a.open["upgrades"], json!([]));
    assert!(a.open["sid"].is_string() && a.open["maxPayload"].is_number(), "{}", a.open);

    a.emit("join_thread", json!({"threadId": 456}), Some(1));
    let joined = a.event("thread_joined");
    assert_eq!((joined["threadId"].as_str(), joined["seq"].as_u64()), (Some("456"), Some(0)), "{joined}");
    let ack = a.ack(1);
    assert_eq!((ack["ok"].as_bool(), ack["threadId"].as_str()), (Some(true), Some("456")), "{ack}");
    assert_eq!(ack["members"][0]["userId"], "123", "{ack}");

    let mut b = Sio::connect(&hub, json!({"apiKey": key, "userId": "bob"}));
    b.emit("join_thread", json!({"threadId": "456"}), None);
    b.event("thread_joined");
    let online = a.event("presence");
    assert_eq!(online, json!({"threadId": "456", "userId": "bob", "status": "online"}));

    a.emit("message_send", json!({"threadId": 456, "tempId": "t-1", "content": "hello"}), Some(2));
    let mapping = a.event("message_id_mapping");
    assert_eq!((mapping["threadId"].as_str(), mapping["tempId"].as_str()), (Some("456"), Some("t-1")));
    let ack = a.ack(2);
    assert_eq!((ack["ok"].as_bool(), ack["realId"].as_str()), (Some(true), mapping["realId"].as_str()), "{ack}");
    assert_eq!(ack["seq"], 1);
    let got = b.event("message");
    let m = &got["message"];
    assert_eq!(
        (m["threadId"].as_str(), m["userId"].as_str(), m["content"].as_str()),
        (Some("456"), Some("123"), Some("hello"))
    );
    assert_eq!((m["seq"].as_u64(), m["id"].as_str()), (Some(1), mapping["realId"].as_str()));

    // The same tempId again is the same message.
    a.emit("message_send", json!({"threadId": 456, "tempId": "t-1", "content": "hello"}), Some(3));
    assert_eq!(a.ack(3)["realId"], mapping["realId"]);

    b.emit("typing", json!({"threadId": 456, "isTyping": true}), Some(9));
    assert_eq!(a.event("typing"), json!({"threadId": "456", "userId": "bob", "isTyping": true}));
    assert_eq!(b.ack(9), json!({"ok": true}));

    // A status change reaches the others once per shared thread, naming it.
    a.emit("presence", json!({"status": "away"}), Some(14));
    assert_eq!(b.event("presence"), json!({"threadId": "456", "userId": "123", "status": "away"}));
    assert_eq!(a.ack(14), json!({"ok": true}));

    b.emit("message_read", json!({"threadId": 456, "messageIds": [m["id"]]}), Some(10));
    let receipt = a.event("read_receipt");
    assert_eq!((receipt["threadId"].as_str(), receipt["userId"].as_str()), (Some("456"), Some("bob")));
    assert_eq!(b.ack(10)["ok"], true);

    a.emit("message_edit", json!({"threadId": 456, "messageId": m["id"], "content": "hello!"}), Some(4));
    let update = b.event("message_update");
    assert_eq!(
        (update["message"]["content"].as_str(), update["message"]["threadId"].as_str()),
        (Some("hello!"), Some("456"))
    );
    assert!(update["message"]["editedAt"].is_string(), "{update}");
    assert_eq!(a.ack(4)["ok"], true);

    b.emit("message_delete", json!({"threadId": 456, "messageId": m["id"]}), Some(11));
    assert_eq!(b.event("error")["code"], "forbidden");
    let failed = b.ack(11);
    assert_eq!((failed["ok"].as_bool(), failed["error"]["code"].as_str()), (Some(false), Some("forbidden")));

    b.emit("history", json!({"threadId": 456, "limit": 10}), Some(12));
    let page = b.ack(12);
    assert_eq!(page["ok"], true);
    assert_eq!(page["messages"][0]["threadId"], "456", "{page}");
    assert_eq!(page["messages"].as_array().map(Vec::len), Some(1));

    b.emit("leave_thread", json!({"threadId": 456}), Some(13));
    assert_eq!(b.event("thread_left")["threadId"], "456");
    assert_eq!(b.ack(13), json!({"ok": true, "threadId": "456"}));
    assert_eq!(a.event("presence"), json!({"threadId": "456", "userId": "bob", "status": "offline"}));
}

#[test]
fn socketio_and_native_clients_share_a_room() {
    let (hub, key) = hub_with_thread("general");
    let mut sio = Sio::connect(&hub, json!({"apiKey": key, "userId": "s"}));
    sio.emit("join_thread", json!({"threadId": "general"}), Some(1));
    sio.ack(1);
    let mut native = hub.ws(&key, "n");
    native.join("general");
    assert_eq!(sio.event("presence")["userId"], "n");
    native.send(json!({"type": "message", "room": "general", "content": "from native"}));
    assert_eq!(sio.event("message")["message"]["content"], "from native");
    sio.emit("message_send", json!({"threadId": "general", "content": "from sio"}), Some(2));
    let ack = sio.ack(2);
    assert_eq!(ack, json!({"ok": true}), "no tempId: nothing to map");
    let m = native.recv_until("the Socket.IO user's message", |v| v["type"] == "message" && v["userId"] == "s");
    assert_eq!(
        (m["content"].as_str(), m["userId"].as_str(), m["room"].as_str()),
        (Some("from sio"), Some("s"), Some("general"))
    );
    native.send(json!({"type": "typing", "room": "general", "isTyping": true}));
    assert_eq!(sio.event("typing")["userId"], "n");
    // Presence: the native user hears once per connection, the Socket.IO one per thread.
    sio.emit("presence", json!({"status": "busy"}), None);
    let p = native.recv_type("presence");
    assert_eq!(p, json!({"type": "presence", "userId": "s", "status": "busy"}));
    native.send(json!({"type": "presence", "status": "away"}));
    assert_eq!(sio.event("presence"), json!({"threadId": "general", "userId": "n", "status": "away"}));
    native.expect_silence(200);
}

#[test]
fn refused_events_name_the_event_echo_the_temp_id_and_keep_the_connection() {
    let (hub, key) = hub_with_thread("1");
    let mut s = Sio::connect(&hub, json!({"apiKey": key, "userId": "u"}));
    s.emit("message_send", json!({"threadId": 1, "tempId": "t9", "content": "x"}), Some(5));
    let e = s.event("error");
    assert_eq!(
        (e["event"].as_str(), e["code"].as_str(), e["tempId"].as_str()),
        (Some("message_send"), Some("not_joined"), Some("t9")),
        "{e}"
    );
    assert_eq!(s.ack(5)["error"]["code"], "not_joined");
    s.emit("join_thread", json!({"threadId": 404}), Some(6));
    assert_eq!(s.event("error")["code"], "not_found");
    assert_eq!(s.ack(6)["ok"], false);
    s.emit("no_such_event", json!({}), Some(7));
    let e = s.event("error");
    assert_eq!((e["event"].as_str(), e["code"].as_str()), (Some("no_such_event"), Some("bad_request")));
    assert_eq!(s.ack(7)["error"]["code"], "bad_request");
    s.emit("join_thread", json!({"threadId": {"x": 1}}), Some(8));
    assert!(s.event("error")["message"].as_str().unwrap_or("").contains("threadId"));
    s.emit("message_send", json!({"content": "x"}), None);
    assert_eq!(s.event("error")["event"], "message_send");
    // A binary event: refused, its attachment dropped, the session kept.
    s.send(r#"451-1["message_send",{"threadId":1,"content":{"_placeholder":true,"num":0}}]"#);
    s.socket.send(Message::binary(vec![1u8, 2, 3])).expect("attachment");
    let e = s.event("error");
    assert!(e["message"].as_str().unwrap_or("").contains("binary"), "{e}");
    assert_eq!(s.ack(1)["ok"], false);
    s.emit("join_thread", json!({"threadId": 1}), Some(2));
    assert_eq!(s.ack(2)["ok"], true);
}

#[test]
fn connect_refusals_are_connect_errors() {
    let hub = Hub::start();
    let (pid, key) = hub.create_project("sio");
    let mut s = Sio::open(&hub, "");
    s.send(r#"40{"apiKey":"wrong","userId":"u"}"#);
    let p = s.recv();
    let v: Value = serde_json::from_str(p.strip_prefix("44").unwrap_or_else(|| panic!("{p}"))).expect("json");
    assert_eq!(v["data"]["code"], "unauthorized", "{v}");
    assert!(v["message"].is_string());
    // Another namespace is refused; `/` still works on the same session.
    s.send("40/admin,");
    assert!(s.recv().starts_with("44/admin,{"));
    s.send(&format!("40{}", json!({"apiKey": key})));
    assert_eq!(serde_json::from_str::<Value>(&s.recv()[2..]).expect("json")["data"]["code"], "bad_request");
    // Credentials may come in the handshake query instead of `auth`.
    let mut q = Sio::open(&hub, &format!("&apiKey={key}&userId=q"));
    q.send("40");
    assert!(q.recv().starts_with("40{\"sid\""));
    // A token in auth.
    let exp = common::unix_now_secs() as u64 + 600;
    let token = realtimehub::core::token::sign(&json!({"iss": pid, "sub": "tok", "exp": exp}), key.as_bytes());
    let mut t = Sio::open(&hub, "");
    t.send(&format!("40{}", json!({"token": token})));
    assert!(t.recv().starts_with("40{\"sid\""));
}

#[test]
fn malformed_packets_and_events_before_connect_close_the_session() {
    let (hub, key) = hub_with_thread("1");
    for bad in ["9", "4", "49", "42[", "42{}", "0"] {
        let mut s = Sio::open(&hub, "");
        s.send(&format!("40{}", json!({"apiKey": key, "userId": "u"})));
        s.recv();
        s.send(bad);
        assert!(s.closed(), "{bad:?} did not close the session");
    }
    let mut s = Sio::open(&hub, "");
    s.send(r#"42["join_thread",{"threadId":1}]"#);
    assert!(s.closed(), "an event before CONNECT");
    assert_eq!(hub.get("/health", None).status, 200);
}

/// One long-polling request: status and body.
fn poll(http: &mut Http, method: &str, query: &str, body: Option<&str>) -> (u16, String) {
    let path = format!("/socket.io/?EIO=4&transport=polling{query}");
    let r = http.request(method, &path, &[("Content-Type", "text/plain;charset=UTF-8")], body);
    (r.status, r.body)
}

#[test]
fn long_polling_session_then_upgrade_to_websocket() {
    let (hub, key) = hub_with_thread("7");
    let mut http = hub.http();
    let (status, open) = poll(&mut http, "GET", "", None);
    assert_eq!(status, 200, "{open}");
    let open: Value = serde_json::from_str(open.strip_prefix('0').expect("open packet")).expect("json");
    assert_eq!(open["upgrades"], json!(["websocket"]));
    let sid = open["sid"].as_str().expect("sid").to_string();
    let q = format!("&sid={sid}");
    let connect = format!("40{}", json!({"apiKey": key, "userId": "p"}));
    let join = r#"421["join_thread",{"threadId":7}]"#;
    // Two packets in one payload, joined by the record separator.
    assert_eq!(poll(&mut http, "POST", &q, Some(&format!("{connect}\u{1e}{join}"))), (200, "ok".into()));
    // The answers may take more than one poll (the join's answer waits for
    // its commit: it records the resumable session's threads).
    let mut body = String::new();
    while !body.contains("431[{") {
        let (status, more) = poll(&mut http, "GET", &q, None);
        assert_eq!(status, 200);
        body = if body.is_empty() { more } else { format!("{body}\u{1e}{more}") };
    }
    let packets: Vec<&str> = body.split('\u{1e}').collect();
    assert!(packets[0].starts_with("40{\"sid\""), "{body}");
    assert!(packets.iter().any(|p| p.starts_with("42[\"thread_joined\"")), "{body}");

    // A poll waits for packets: a native user's message answers it.
    let mut native = hub.ws(&key, "n");
    native.join("7");
    let mut waiting = hub.http();
    let waiter = std::thread::spawn(move || poll(&mut waiting, "GET", &q, None));
    std::thread::sleep(Duration::from_millis(100));
    native.send(json!({"type": "message", "room": "7", "content": "to the poller"}));
    let (status, body) = waiter.join().expect("poller");
    assert_eq!(status, 200);
    assert!(body.contains("presence") || body.contains("to the poller"), "{body}");

    // Upgrade: probe, then switch; the session keeps its rooms.
    let stream = TcpStream::connect(hub.addr).expect("connect");
    let url = format!("ws://{}/socket.io/?EIO=4&transport=websocket&sid={sid}", hub.addr);
    let (socket, _) = tungstenite::client(url, stream).expect("upgrade");
    let mut ws = Sio { socket, open: Value::Null };
    ws.send("2probe");
    assert_eq!(ws.recv(), "3probe");
    ws.send("5");
    native.send(json!({"type": "message", "room": "7", "content": "over websocket"}));
    let deadline = Instant::now() + WAIT;
    loop {
        let m = ws.event("message");
        if m["message"]["content"] == "over websocket" {
            break;
        }
        assert!(Instant::now() < deadline);
    }
    // Polling after the upgrade is refused; the session goes on over WebSocket.
    let mut late = hub.http();
    let (status, _) = poll(&mut late, "GET", &format!("&sid={sid}"), None);
    assert_eq!(status, 400);
    ws.send(r#"422["history",{"threadId":7}]"#);
    assert_eq!(ws.ack(2)["messages"].as_array().map(Vec::len), Some(2));
    // Engine.IO `close` ends it.
    ws.send("1");
    assert!(ws.closed());
}

#[test]
fn disconnect_leaves_the_hub_but_keeps_the_transport_and_silent_sessions_time_out() {
    let hub = Hub::start_with(&["--socketio-connect-timeout-ms", "300"]);
    let (_, key) = hub.create_project("sio");
    hub.create_room(&key, "t", "public");
    let mut a = Sio::connect(&hub, json!({"apiKey": key, "userId": "a"}));
    a.emit("join_thread", json!({"threadId": "t"}), Some(1));
    a.ack(1);
    let mut native = hub.ws(&key, "n");
    native.join("t");
    a.send("41");
    let left = native.recv_type("user_left");
    assert_eq!(left["userId"], "a");
    // CONNECT again on the same transport: a new start, rooms not kept.
    a.send(&format!("40{}", json!({"apiKey": key, "userId": "a"})));
    let deadline = Instant::now() + WAIT;
    while !a.recv().starts_with("40{") {
        assert!(Instant::now() < deadline, "no CONNECT answer");
    }
    a.emit("message_send", json!({"threadId": "t", "content": "x"}), Some(2));
    assert_eq!(a.ack(2)["error"]["code"], "not_joined");
    // A session that never sends CONNECT is closed after the connect timeout.
    let mut silent = Sio::open(&hub, "");
    assert!(silent.closed(), "no CONNECT within 300 ms");
}

#[test]
fn handshake_refusals_follow_engine_io() {
    let hub = Hub::start();
    let mut http = hub.http();
    let r = http.request("GET", "/socket.io/?EIO=3&transport=polling", &[], None);
    assert_eq!((r.status, r.json()["code"].as_u64()), (400, Some(5)));
    let r = http.request("GET", "/socket.io/?EIO=4&transport=carrier-pigeon", &[], None);
    assert_eq!((r.status, r.json()["code"].as_u64()), (400, Some(0)));
    let r = http.request("GET", "/socket.io/?EIO=4&transport=polling&sid=nope", &[], None);
    assert_eq!((r.status, r.json()["code"].as_u64()), (400, Some(1)));
    let r = http.request("POST", "/socket.io/?EIO=4&transport=polling&sid=nope", &[], Some("40"));
    assert_eq!(r.status, 400);
    let r = http.request("PUT", "/socket.io/?EIO=4&transport=polling", &[], None);
    assert_eq!(r.status, 400);
}

#[test]
fn sessions_that_stop_answering_pings_are_closed() {
    let hub = Hub::start_with(&["--socketio-ping-interval-ms", "200", "--socketio-ping-timeout-ms", "200"]);
    // A polling session that never comes back.
    let mut http = hub.http();
    let (_, open) = poll(&mut http, "GET", "", None);
    let sid = serde_json::from_str::<Value>(&open[1..]).expect("json")["sid"].as_str().expect("sid").to_string();
    // A WebSocket session that reads but never answers.
    let stream = TcpStream::connect(hub.addr).expect("connect");
    let url = format!("ws://{}/socket.io/?EIO=4&transport=websocket", hub.addr);
    let (mut socket, _) = tungstenite::client(url, stream).expect("upgrade");
    let mut got_ping = false;
    let mut closed = false;
    let deadline = Instant::now() + WAIT;
    socket.get_mut().set_read_timeout(Some(Duration::from_millis(100))).expect("timeout");
    while Instant::now() < deadline && !closed {
        match socket.read() {
            Ok(Message::Text(t)) if t.as_str() == "2" => got_ping = true,
            Ok(Message::Close(_)) | Err(tungstenite::Error::ConnectionClosed) => closed = true,
            Err(tungstenite::Error::Io(e)) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => closed = true,
            Ok(_) => {}
        }
    }
    assert!(got_ping && closed, "ping {got_ping}, closed {closed}");
    let mut later = hub.http();
    let deadline = Instant::now() + WAIT;
    loop {
        let (status, _) = poll(&mut later, "GET", &format!("&sid={sid}"), None);
        if status == 400 {
            break;
        }
        assert!(Instant::now() < deadline, "the silent polling session was never closed");
    }
}

#[test]
fn polling_sessions_are_capped_in_total_and_per_address() {
    let hub = Hub::start_with(&["--max-socketio-sessions", "2"]);
    let mut http = hub.http();
    assert_eq!(poll(&mut http, "GET", "", None).0, 200);
    assert_eq!(poll(&mut http, "GET", "", None).0, 200);
    let mut again = hub.http();
    assert_eq!(poll(&mut again, "GET", "", None).0, 503);
    let hub = Hub::start_with(&["--max-connections-per-ip", "3"]);
    let mut http = hub.http();
    assert_eq!(poll(&mut http, "GET", "", None).0, 200);
    assert_eq!(poll(&mut http, "GET", "", None).0, 200);
    assert_eq!(poll(&mut http, "GET", "", None).0, 200);
    assert_eq!(poll(&mut http, "GET", "", None).0, 429, "the address's fourth session");
}

#[test]
fn conformance_mode_echoes_like_the_reference_server() {
    let hub = Hub::start_with(&["--socketio-conformance", "on"]);
    let mut s = Sio::open(&hub, "");
    s.send(r#"40/custom,{"token":"abc"}"#);
    assert!(s.recv().starts_with("40/custom,{\"sid\""));
    assert_eq!(s.recv(), r#"42/custom,["auth",{"token":"abc"}]"#);
    s.send(r#"42/custom,["message",1,"2",{"3":[true]}]"#);
    assert_eq!(s.recv(), r#"42/custom,["message-back",1,"2",{"3":[true]}]"#);
    s.send(r#"42/custom,7["message-with-ack",1]"#);
    assert_eq!(s.recv(), "43/custom,7[1]");
    s.send(r#"451-/custom,["message",{"_placeholder":true,"num":0}]"#);
    s.socket.send(Message::binary(vec![9u8, 8])).expect("attachment");
    assert_eq!(s.recv(), r#"451-/custom,["message-back",{"_placeholder":true,"num":0}]"#);
    s.socket.get_mut().set_read_timeout(Some(WAIT)).expect("timeout");
    loop {
        match s.socket.read().expect("attachment echo") {
            Message::Binary(b) => {
                assert_eq!(&b[..], &[9u8, 8]);
                break;
            }
            Message::Text(t) if t.as_str() == "2" => s.send("3"),
            other => panic!("expected the attachment, got {other:?}"),
        }
    }
    s.send("40/random");
    assert_eq!(s.recv(), r#"44/random,{"message":"Invalid namespace"}"#);
    // The hub never sees these sessions.
    assert_eq!(hub.get("/health", None).status, 200);
}

#[test]
fn auto_create_rooms_makes_the_first_join_create_the_room_in_every_dialect() {
    let mut hub = Hub::start_with(&["--max-rooms-per-project", "2"]);
    let (pid, key) = hub.create_project("auto");
    let mut native = hub.ws(&key, "n");
    native.send(json!({"type": "join", "room": "lobby"}));
    assert_eq!(native.recv_type("error")["code"], "not_found", "off by default");
    let patch = |hub: &Hub, on: bool| {
        let r =
            hub.call("PATCH", "/api/v1/project", &[("X-API-Key", key.as_str())], Some(&json!({"autoCreateRooms": on})));
        assert_eq!((r.status, &r.json()["autoCreateRooms"]), (200, &json!(on)), "{r:?}");
    };
    patch(&hub, true);
    let r = hub.call("PATCH", "/api/v1/project", &[("X-API-Key", key.as_str())], Some(&json!({"autoCreateRooms": 1})));
    assert_eq!(r.status, 400);
    // Native join creates "lobby"; a Socket.IO join creates thread 456.
    assert_eq!(native.join("lobby")["seq"], 0);
    let mut sio = Sio::connect(&hub, json!({"apiKey": key, "userId": 1}));
    sio.emit("join_thread", json!({"threadId": 456}), Some(1));
    assert_eq!(sio.ack(1)["ok"], true);
    let room = hub.get("/api/v1/rooms/456", Some(&key));
    assert_eq!((room.status, room.json()["type"].as_str()), (200, Some("public")), "{room:?}");
    // The rooms quota holds; bad names are refused; a token's rooms claim holds.
    sio.emit("join_thread", json!({"threadId": 789}), Some(2));
    assert_eq!(sio.ack(2)["error"]["code"], "rate_limited");
    native.send(json!({"type": "join", "room": ""}));
    assert_eq!(native.recv_type("error")["code"], "bad_request");
    hub.delete("/api/v1/rooms/456", Some(&key));
    let exp = common::unix_now_secs() as u64 + 600;
    let token = realtimehub::core::token::sign(
        &json!({"iss": pid, "sub": "t", "exp": exp, "rooms": ["lobby"]}),
        key.as_bytes(),
    );
    let mut t = Sio::open(&hub, "");
    t.send(&format!("40{}", json!({"token": token})));
    assert!(t.recv().starts_with("40{"));
    t.emit("join_thread", json!({"threadId": "elsewhere"}), Some(3));
    assert_eq!(t.ack(3)["error"]["code"], "forbidden");
    // The setting and the created room survive a restart.
    assert!(hub.terminate().success());
    let hub2 = Hub::start_at(&hub.db_path, &[]);
    let project = hub2.get("/api/v1/project", Some(&key));
    assert_eq!(project.json()["autoCreateRooms"], true, "{project:?}");
    assert_eq!(hub2.get("/api/v1/rooms/lobby", Some(&key)).status, 200);
}

#[test]
fn polling_bodies_and_packets_are_bounded() {
    let hub = Hub::start_with(&["--max-body-bytes", "1024", "--max-message-bytes", "512"]);
    let (_, key) = hub.create_project("sio");
    let mut http = hub.http();
    let (_, open) = poll(&mut http, "GET", "", None);
    let open: Value = serde_json::from_str(&open[1..]).expect("json");
    assert_eq!(open["maxPayload"], 1024, "maxPayload announces the body bound");
    let q = format!("&sid={}", open["sid"].as_str().expect("sid"));
    let connect = format!("40{}", json!({"apiKey": key, "userId": "u"}));
    assert_eq!(poll(&mut http, "POST", &q, Some(&connect)).0, 200);
    let mut big = hub.http();
    let body = format!("42[\"typing\",{{\"x\":\"{}\"}}]", "y".repeat(2000));
    assert_eq!(poll(&mut big, "POST", &q, Some(&body)).0, 413);
    // Within the body bound but over the packet bound: the session is closed.
    let mut mid = hub.http();
    let body = format!("42[\"typing\",{{\"x\":\"{}\"}}]", "y".repeat(700));
    assert_eq!(poll(&mut mid, "POST", &q, Some(&body)).0, 200);
    let mut after = hub.http();
    assert_eq!(poll(&mut after, "GET", &q, None).0, 400, "the session ended");
}

#[test]
fn recovery_resumes_threads_and_replays_what_was_missed_with_offsets() {
    let (hub, key) = hub_with_thread("7");
    hub.create_room(&key, "8", "public");
    let (mut a, answer) = Sio::connect_answer(&hub, json!({"apiKey": key, "userId": "a"}));
    let pid = answer["pid"].as_str().expect("a pid: recovery is on by default").to_string();
    a.emit("join_thread", json!({"threadId": 7}), Some(1));
    a.ack(1);
    a.emit("join_thread", json!({"threadId": 8}), Some(2));
    a.ack(2);
    let mut b = hub.ws(&key, "b");
    b.join("7");
    b.join("8");
    b.send(json!({"type": "message", "room": "7", "content": "live"}));
    let live = a.message_event();
    assert_eq!(live[1]["message"]["content"], "live");
    assert_eq!(live[2], live[1]["message"]["id"], "a live message carries its id as the offset: {live}");
    let offset = live[2].as_str().expect("offset").to_string();

    // `a` goes quiet without the hub noticing (half-open): b goes on.
    for (room, content) in [("7", "x1"), ("8", "y1"), ("7", "x2")] {
        b.send(json!({"type": "message", "room": room, "content": content}));
        b.recv_until("its own message", |v| v["type"] == "message" && v["content"] == content);
    }
    let (mut back, answer) =
        Sio::connect_answer(&hub, json!({"apiKey": key, "userId": "a", "pid": pid, "offset": offset}));
    assert_eq!(answer["pid"], pid.as_str(), "the same pid: recovered");
    let mut offsets = Vec::new();
    let mut contents = Vec::new();
    for _ in 0..3 {
        let m = back.message_event();
        assert_eq!(m[2], m[1]["message"]["id"], "{m}");
        offsets.push(m[2].as_str().expect("offset").to_string());
        contents.push(m[1]["message"]["content"].as_str().expect("content").to_string());
    }
    assert_eq!(contents, ["x1", "y1", "x2"], "missed messages in the order they were sent");
    assert!(offsets.windows(2).all(|w| w[0] < w[1]) && offsets[0] > offset, "offsets increase: {offsets:?}");
    assert!(a.closed(), "the half-open connection is closed once its session resumed elsewhere");
    // Back in both threads without join_thread.
    b.send(json!({"type": "message", "room": "8", "content": "after"}));
    assert_eq!(back.message_event()[1]["message"]["content"], "after");
    back.emit("message_send", json!({"threadId": 7, "content": "hi"}), Some(3));
    assert_eq!(back.ack(3)["ok"], true);

    // An unknown pid: a new session (another pid), in no thread.
    let (mut other, answer) =
        Sio::connect_answer(&hub, json!({"apiKey": key, "userId": "a", "pid": "nope", "offset": offset}));
    assert!(answer["pid"].is_string() && answer["pid"] != "nope" && answer["pid"] != pid.as_str(), "{answer}");
    other.emit("message_send", json!({"threadId": 7, "content": "x"}), Some(1));
    assert_eq!(other.ack(1)["error"]["code"], "not_joined");
    // Another user presenting the pid gets nothing of it.
    let (mut mallory, answer) = Sio::connect_answer(&hub, json!({"apiKey": key, "userId": "m", "pid": pid}));
    assert_ne!(answer["pid"], pid.as_str());
    mallory.emit("message_send", json!({"threadId": 7, "content": "x"}), Some(1));
    assert_eq!(mallory.ack(1)["error"]["code"], "not_joined");
    assert!(!back.closed(), "the session's connection stays");
}

#[test]
fn recovery_off_sends_no_pid_and_no_offsets() {
    let hub = Hub::start_with(&["--socketio-recovery-window-ms", "0"]);
    let (_, key) = hub.create_project("sio");
    hub.create_room(&key, "7", "public");
    let (mut a, answer) = Sio::connect_answer(&hub, json!({"apiKey": key, "userId": "a"}));
    assert_eq!(answer.get("pid"), None, "{answer}");
    a.emit("join_thread", json!({"threadId": 7}), Some(1));
    a.ack(1);
    a.emit("message_send", json!({"threadId": 7, "content": "x"}), Some(2));
    let m = a.message_event();
    assert_eq!(m.as_array().map(Vec::len), Some(2), "no offset argument: {m}");
}

#[test]
fn the_access_hook_decides_join_thread_too() {
    use common::receiver::{Answer, Receiver};
    let receiver = Receiver::start();
    receiver.answer_with(|_, r| {
        let allow = r.json()["room"] == "7";
        Answer::Reply(200, json!({"allow": allow, "reason": "not your thread"}).to_string())
    });
    let (hub, key) = hub_with_thread("7");
    hub.create_room(&key, "8", "public");
    let body = json!({"accessHookUrl": receiver.url("/access")});
    assert_eq!(hub.call("PATCH", "/api/v1/project", &[("X-API-Key", &key)], Some(&body)).status, 200);
    let mut s = Sio::connect(&hub, json!({"apiKey": key, "userId": 5}));
    s.emit("join_thread", json!({"threadId": 7}), Some(1));
    assert_eq!(s.ack(1)["ok"], true);
    s.emit("join_thread", json!({"threadId": 8}), Some(2));
    let error = s.event("error");
    assert_eq!(error, json!({"event": "join_thread", "code": "forbidden", "message": "not your thread"}));
    assert_eq!(s.ack(2), json!({"ok": false, "error": {"code": "forbidden", "message": "not your thread"}}));
    let asked = receiver.received();
    assert_eq!(asked.len(), 2);
    assert_eq!(asked[1].json()["userId"], "5");
}
