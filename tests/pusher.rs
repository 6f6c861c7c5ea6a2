//! The Pusher dialect against the real binary, in Pusher protocol 7 frames
//! over a tungstenite client and signed HTTP API requests: every refusal
//! (unknown app, old protocol, bad or missing channel auth, a wrong app key,
//! client events on public channels, over-long channel names, malformed
//! JSON, the API's signature and clock checks), and the paths the real
//! pusher-js suite (clients/pusher-test) drives end to end.

mod common;

use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::Hub;
use hmac::{Hmac, KeyInit, Mac};
use md5::{Digest, Md5};
use serde_json::{json, Value};
use sha2::Sha256;
use tungstenite::{Message, WebSocket};

const WAIT: Duration = Duration::from_secs(5);

fn hmac_hex(secret: &str, message: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("key");
    mac.update(message.as_bytes());
    mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect()
}

/// A Pusher client in raw frames.
struct Pusher {
    socket: WebSocket<TcpStream>,
    socket_id: String,
    close_code: Option<u16>,
}

impl Pusher {
    fn open(hub: &Hub, app_key: &str, query: &str) -> (Pusher, Value) {
        let stream = TcpStream::connect(hub.addr).expect("connect");
        let url = format!("ws://{}/app/{app_key}?{query}", hub.addr);
        let (socket, _) = tungstenite::client(url, stream).unwrap_or_else(|e| panic!("upgrade: {e:?}"));
        let mut p = Pusher { socket, socket_id: String::new(), close_code: None };
        let first = p.recv().expect("a first message");
        (p, first)
    }

    fn connect(hub: &Hub, app_key: &str) -> Pusher {
        let (mut p, first) = Pusher::open(hub, app_key, "protocol=7&client=js&version=8.4.0");
        assert_eq!(first["event"], "pusher:connection_established", "{first}");
        let data: Value = serde_json::from_str(first["data"].as_str().expect("data is a string")).expect("json");
        let activity = data["activity_timeout"].as_u64().expect("activity_timeout");
        assert!((1..=120).contains(&activity), "{data}");
        p.socket_id = data["socket_id"].as_str().expect("socket_id").to_string();
        assert!(p.socket_id.split_once('.').is_some_and(|(a, b)| a.parse::<u64>().is_ok() && b.parse::<u64>().is_ok()));
        p
    }

    fn send(&mut self, v: Value) {
        self.socket.send(Message::text(v.to_string())).expect("send");
    }

    fn recv(&mut self) -> Option<Value> {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            self.socket.get_mut().set_read_timeout(Some(left)).expect("timeout");
            match self.socket.read() {
                Ok(Message::Text(t)) => return Some(serde_json::from_str(t.as_str()).expect("json")),
                Ok(Message::Close(frame)) => {
                    self.close_code = frame.map(|f| u16::from(f.code));
                    return None;
                }
                Ok(_) => {}
                Err(_) => return None,
            }
        }
    }

    /// The next message with this event name.
    fn event(&mut self, name: &str) -> Value {
        let mut skipped = Vec::new();
        while let Some(v) = self.recv() {
            if v["event"] == name {
                return v;
            }
            skipped.push(v);
        }
        panic!("no {name}; got {skipped:?}");
    }

    fn subscribe(&mut self, channel: &str, auth: Option<String>, channel_data: Option<&str>) {
        let mut data = json!({"channel": channel});
        if let Some(a) = auth {
            data["auth"] = Value::String(a);
        }
        if let Some(d) = channel_data {
            data["channel_data"] = Value::String(d.to_string());
        }
        self.send(json!({"event": "pusher:subscribe", "data": data}));
    }

    /// `appKey:HMAC` for a private channel (or a presence one with `channel_data`).
    fn auth(&self, key: &str, secret: &str, channel: &str, channel_data: Option<&str>) -> String {
        let message = match channel_data {
            Some(d) => format!("{}:{channel}:{d}", self.socket_id),
            None => format!("{}:{channel}", self.socket_id),
        };
        format!("{key}:{}", hmac_hex(secret, &message))
    }
}

/// A project: (app key = id, secret = API key, app id).
fn app(hub: &Hub) -> (String, String, String) {
    let (id, key) = hub.create_project("pusher");
    let shown = hub.get("/api/v1/project", Some(&key)).json();
    let app_id = shown["pusherAppId"].as_str().expect("pusherAppId").to_string();
    assert!(app_id.bytes().all(|b| b.is_ascii_digit()), "{app_id}");
    (id, key, app_id)
}

/// Who signs an API request: the app key and the secret.
struct Signer<'a> {
    key: &'a str,
    secret: &'a str,
}

/// A request of Pusher's HTTP API, signed as the server SDKs sign it, at `at` (Unix seconds).
fn signed(
    hub: &Hub,
    by: &Signer<'_>,
    method: &str,
    path: &str,
    params: &[(&str, &str)],
    body: Option<&Value>,
    at: i64,
) -> common::Resp {
    let (key, secret) = (by.key, by.secret);
    let body_text = body.map(Value::to_string);
    let mut query: Vec<(String, String)> = params.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    query.push(("auth_key".into(), key.into()));
    query.push(("auth_timestamp".into(), at.to_string()));
    query.push(("auth_version".into(), "1.0".into()));
    if let Some(b) = &body_text {
        let md5: String = Md5::digest(b.as_bytes()).iter().map(|x| format!("{x:02x}")).collect();
        query.push(("body_md5".into(), md5));
    }
    query.sort();
    let qs: Vec<String> = query.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let qs = qs.join("&");
    let signature = hmac_hex(secret, &format!("{method}\n{path}\n{qs}"));
    let url = format!("{path}?{qs}&auth_signature={signature}");
    let mut headers = vec![];
    if body_text.is_some() {
        headers.push(("Content-Type", "application/json"));
    }
    hub.http().request(method, &url, &headers, body_text.as_deref())
}

fn now_s() -> i64 {
    common::unix_now_secs() as i64
}

#[test]
fn unknown_apps_and_old_protocols_are_refused_with_pusher_close_codes() {
    let hub = Hub::start();
    let (mut p, first) = Pusher::open(&hub, "p_0000000000000000", "protocol=7");
    assert_eq!(first["event"], "pusher:error");
    assert_eq!(first["data"]["code"], 4001);
    assert!(p.recv().is_none());
    assert_eq!(p.close_code, Some(4001), "4000-4099: pusher-js does not reconnect");
    let (id, _, _) = app(&hub);
    let (mut p, first) = Pusher::open(&hub, &id, "protocol=4");
    assert_eq!(first["data"]["code"], 4007);
    assert!(p.recv().is_none());
    assert_eq!(p.close_code, Some(4007));
}

#[test]
fn public_channels_carry_the_rooms_traffic_and_refuse_client_events() {
    let hub = Hub::start();
    let (id, key, _) = app(&hub);
    let mut p = Pusher::connect(&hub, &id);
    p.subscribe("general", None, None);
    let ok = p.event("pusher_internal:subscription_succeeded");
    assert_eq!((ok["channel"].as_str(), ok["data"].as_str()), (Some("general"), Some("{}")));
    // Created on first subscribe, as Pusher channels are.
    assert_eq!(hub.get("/api/v1/rooms/general", Some(&key)).status, 200);
    let posted = hub.post("/api/v1/rooms/general/messages", Some(&key), &json!({"userId": "rest", "content": "hi"}));
    assert_eq!(posted.status, 201, "{posted:?}");
    let m = p.event("message");
    let data: Value = serde_json::from_str(m["data"].as_str().expect("data string")).expect("json");
    assert_eq!(
        (data["type"].as_str(), data["content"].as_str(), data["seq"].as_u64()),
        (Some("message"), Some("hi"), Some(1))
    );
    // A public subscriber is not a member: the room's presence stays empty.
    let presence = hub.get("/api/v1/rooms/general/presence", Some(&key)).json();
    assert!(!presence.to_string().contains(&p.socket_id), "{presence}");
    p.send(json!({"event": "client-x", "channel": "general", "data": {}}));
    let e = p.event("pusher:error");
    assert!(e["data"]["message"].as_str().unwrap().contains("private and presence"), "{e}");
}

#[test]
fn private_channels_need_a_valid_signature_for_this_socket_and_app() {
    let hub = Hub::start();
    let (id, key, _) = app(&hub);
    let mut p = Pusher::connect(&hub, &id);
    for auth in [
        None,
        Some(format!("{id}:{}", "0".repeat(64))),
        Some(p.auth("p_1111111111111111", &key, "private-a", None)),
        Some(format!("{id}:{}", hmac_hex(&key, "1.1:private-a"))),
        Some(p.auth(&id, "rh_wrong", "private-a", None)),
    ] {
        p.subscribe("private-a", auth.clone(), None);
        let e = p.event("pusher:subscription_error");
        assert_eq!(e["channel"], "private-a", "{auth:?}");
        let data: Value = serde_json::from_str(e["data"].as_str().unwrap()).unwrap();
        assert_eq!(data["status"], 401, "{auth:?}: {data}");
    }
    let auth = p.auth(&id, &key, "private-a", None);
    p.subscribe("private-a", Some(auth), None);
    assert_eq!(p.event("pusher_internal:subscription_succeeded")["channel"], "private-a");
    // The room Pusher created is private: a native join needs membership.
    let mut native = hub.ws(&key, "n");
    native.send(json!({"type": "join", "room": "private-a"}));
    assert_eq!(native.recv_type("error")["code"], "forbidden");
}

#[test]
fn presence_members_once_per_user_and_client_events_to_the_others() {
    let hub = Hub::start_with(&["--pusher-client-events-per-second", "3"]);
    let (id, key, _) = app(&hub);
    let join = |p: &mut Pusher, user: &str| {
        let data = json!({"user_id": user, "user_info": {"name": user.to_uppercase()}}).to_string();
        let auth = p.auth(&id, &key, "presence-room", Some(&data));
        p.subscribe("presence-room", Some(auth), Some(&data));
        p.event("pusher_internal:subscription_succeeded")
    };
    let mut a = Pusher::connect(&hub, &id);
    let ok = join(&mut a, "alice");
    let data: Value = serde_json::from_str(ok["data"].as_str().unwrap()).unwrap();
    assert_eq!(data, json!({"presence": {"ids": ["alice"], "hash": {"alice": {"name": "ALICE"}}, "count": 1}}));
    let mut b1 = Pusher::connect(&hub, &id);
    join(&mut b1, "bob");
    let added = a.event("pusher_internal:member_added");
    let data: Value = serde_json::from_str(added["data"].as_str().unwrap()).unwrap();
    assert_eq!(data, json!({"user_id": "bob", "user_info": {"name": "BOB"}}));
    // Bob's second tab: no second member_added.
    let mut b2 = Pusher::connect(&hub, &id);
    let ok = join(&mut b2, "bob");
    let data: Value = serde_json::from_str(ok["data"].as_str().unwrap()).unwrap();
    assert_eq!(data["presence"]["count"], 2);
    // The hub's presence is the same: alice and bob are room members.
    let presence = hub.get("/api/v1/rooms/presence-room/presence", Some(&key)).json();
    let text = presence.to_string();
    assert!(text.contains("alice") && text.contains("bob"), "{presence}");

    a.send(json!({"event": "client-typing", "channel": "presence-room", "data": {"on": true}}));
    let got = b1.event("client-typing");
    assert_eq!((got["user_id"].as_str(), got["channel"].as_str()), (Some("alice"), Some("presence-room")));
    assert_eq!(serde_json::from_str::<Value>(got["data"].as_str().unwrap()).unwrap(), json!({"on": true}));
    b2.event("client-typing");
    // Rate-limited, with Pusher's error code.
    for _ in 0..4 {
        a.send(json!({"event": "client-typing", "channel": "presence-room", "data": {}}));
    }
    assert_eq!(a.event("pusher:error")["data"]["code"], 4301);
    // One tab leaves: no member_removed; the last one: member_removed.
    drop(b2);
    b1.send(json!({"event": "pusher:unsubscribe", "data": {"channel": "presence-room"}}));
    let removed = a.event("pusher_internal:member_removed");
    assert_eq!(serde_json::from_str::<Value>(removed["data"].as_str().unwrap()).unwrap(), json!({"user_id": "bob"}));
    // A connection is one user.
    let data = json!({"user_id": "mallory"}).to_string();
    let auth = a.auth(&id, &key, "presence-other", Some(&data));
    a.subscribe("presence-other", Some(auth), Some(&data));
    a.event("pusher:subscription_error");
}

#[test]
fn malformed_messages_and_bad_channel_names_get_pusher_errors_and_keep_the_connection() {
    let hub = Hub::start();
    let (id, _, _) = app(&hub);
    let mut p = Pusher::connect(&hub, &id);
    p.socket.send(Message::text("not json")).unwrap();
    assert!(p.event("pusher:error")["data"]["message"].is_string());
    p.send(json!({"data": {}}));
    p.event("pusher:error");
    p.subscribe(&"x".repeat(165), None, None);
    p.event("pusher:subscription_error");
    p.subscribe("bad channel!", None, None);
    p.event("pusher:subscription_error");
    p.send(json!({"event": "pusher:ping", "data": {}}));
    assert_eq!(p.event("pusher:pong")["event"], "pusher:pong");
    p.subscribe(&"y".repeat(164), None, None);
    p.event("pusher_internal:subscription_succeeded");
}

#[test]
fn the_http_api_is_signed_and_triggers_reach_pusher_subscribers_only() {
    let hub = Hub::start();
    let (id, key, app_id) = app(&hub);
    let mut p = Pusher::connect(&hub, &id);
    p.subscribe("general", None, None);
    p.event("pusher_internal:subscription_succeeded");
    let mut other = Pusher::connect(&hub, &id);
    other.subscribe("general", None, None);
    other.event("pusher_internal:subscription_succeeded");
    let mut native = hub.ws(&key, "n");
    native.join("general");

    let me = Signer { key: &id, secret: &key };
    let path = format!("/apps/{app_id}/events");
    let body =
        json!({"name": "order-shipped", "channels": ["general"], "data": "{\"id\":7}", "socket_id": other.socket_id});
    let r = signed(&hub, &me, "POST", &path, &[], Some(&body), now_s());
    assert_eq!((r.status, r.body.as_str()), (200, "{}"), "{r:?}");
    let e = p.event("order-shipped");
    assert_eq!((e["channel"].as_str(), e["data"].as_str()), (Some("general"), Some("{\"id\":7}")));
    // Not to the excluded socket, not to native members.
    native.expect_silence(200);
    p.send(json!({"event": "pusher:ping", "data": {}}));
    other.send(json!({"event": "pusher:ping", "data": {}}));
    assert_eq!(other.recv().expect("pong")["event"], "pusher:pong", "the excluded socket got nothing before its pong");
    let stored = hub.get("/api/v1/rooms/general/messages", Some(&key)).json();
    assert_eq!(stored["messages"].as_array().map(Vec::len), Some(0), "triggered events are not stored");

    // Refusals: a bad signature, a wrong key, a stale clock, an unknown app, a bad body.
    let mut bad = signed(&hub, &Signer { key: &id, secret: "rh_wrong" }, "POST", &path, &[], Some(&body), now_s());
    assert_eq!(bad.status, 401);
    bad = signed(&hub, &Signer { key: "p_1234123412341234", secret: &key }, "POST", &path, &[], Some(&body), now_s());
    assert_eq!(bad.status, 401);
    bad = signed(&hub, &me, "POST", &path, &[], Some(&body), now_s() - 601);
    assert_eq!(bad.status, 401);
    assert!(bad.body.contains("600"), "{bad:?}");
    bad = signed(&hub, &me, "POST", "/apps/42/events", &[], Some(&body), now_s());
    assert_eq!(bad.status, 404);
    bad = signed(&hub, &me, "POST", &path, &[], Some(&json!({"name": "x"})), now_s());
    assert_eq!(bad.status, 400);
    // Channels, one channel, presence users.
    let r =
        signed(&hub, &me, "GET", &format!("/apps/{app_id}/channels"), &[("info", "subscription_count")], None, now_s());
    assert_eq!(r.json(), json!({"channels": {"general": {"subscription_count": 3}}}));
    let r = signed(
        &hub,
        &me,
        "GET",
        &format!("/apps/{app_id}/channels/general"),
        &[("info", "subscription_count")],
        None,
        now_s(),
    );
    assert_eq!(r.json(), json!({"occupied": true, "subscription_count": 3}));
    let r =
        signed(&hub, &me, "GET", &format!("/apps/{app_id}/channels/general"), &[("info", "user_count")], None, now_s());
    assert_eq!(r.status, 400);
    let r = signed(&hub, &me, "GET", &format!("/apps/{app_id}/channels/presence-x/users"), &[], None, now_s());
    assert_eq!(r.json(), json!({"users": []}));
    // Terminate: the user's connections close with 4009.
    let data = json!({"user_id": "carol"}).to_string();
    let auth = p.auth(&id, &key, "presence-x", Some(&data));
    p.subscribe("presence-x", Some(auth), Some(&data));
    p.event("pusher_internal:subscription_succeeded");
    let r = signed(
        &hub,
        &me,
        "POST",
        &format!("/apps/{app_id}/users/carol/terminate_connections"),
        &[],
        Some(&json!({})),
        now_s(),
    );
    assert_eq!(r.status, 200);
    while p.recv().is_some() {}
    assert_eq!(p.close_code, Some(4009));
}
