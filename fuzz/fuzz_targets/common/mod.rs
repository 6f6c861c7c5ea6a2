//! A small hub for the fuzz targets: one project with a public and a private
//! room, a few stored messages, and two connected users.

#![allow(dead_code)]

use std::time::{Duration, Instant};

use realtimehub::core::{ConnId, Entropy, Hub, HubConfig, Now, Output};
use realtimehub::http::{parse_query, Request, Response};
use realtimehub::store::{Durability, SharedStore, SqliteStore};
use serde_json::{json, Value};

/// Deterministic ids and keys, so every run builds the same hub.
pub struct CountingEntropy(pub u8);

impl Entropy for CountingEntropy {
    fn fill(&mut self, buf: &mut [u8]) {
        for b in buf {
            self.0 = self.0.wrapping_add(1);
            *b = self.0;
        }
    }
}

/// One delivered output, broadcasts expanded.
#[derive(Debug)]
pub enum Seen {
    Frame(ConnId, Value),
    Response(ConnId, Response),
    Close(ConnId, u16),
}

/// The JSON inside one unmasked server text frame.
pub fn parse_wire(wire: &[u8]) -> Value {
    assert_eq!(wire[0], 0x81, "server frames are final text frames");
    let (len, start) = match wire[1] & 0x7f {
        126 => (u16::from_be_bytes([wire[2], wire[3]]) as usize, 4),
        127 => {
            let mut n = [0u8; 8];
            n.copy_from_slice(&wire[2..10]);
            (u64::from_be_bytes(n) as usize, 10)
        }
        n => (n as usize, 2),
    };
    assert_eq!(wire.len(), start + len, "frame length");
    serde_json::from_slice(&wire[start..]).expect("frames carry JSON")
}

pub struct Fixture {
    pub hub: Hub,
    /// The hub's database, written inline (batches commit at once).
    pub writer: SharedStore,
    pub now: Now,
    pub key: String,
    /// alice: joined r0 and r1.
    pub alice: ConnId,
    /// bob: joined r0.
    pub bob: ConnId,
}

pub const HTTP: ConnId = ConnId(0);

pub fn request(method: &str, path: &str, key: Option<&str>, body: Option<Value>) -> Request {
    let (path, query) = path.split_once('?').unwrap_or((path, ""));
    let mut headers = Vec::new();
    if let Some(key) = key {
        headers.push(("x-api-key".to_string(), key.to_string()));
    }
    Request {
        method: method.into(),
        path: path.into(),
        query: parse_query(query).unwrap_or_default(),
        headers,
        body: body.map(|b| b.to_string().into_bytes()).unwrap_or_default(),
        http11: true,
    }
}

impl Fixture {
    pub fn new() -> Fixture {
        Fixture::with_config(HubConfig::default())
    }

    pub fn with_config(config: HubConfig) -> Fixture {
        let store = SharedStore::new(SqliteStore::open(":memory:", Durability::Normal).expect("store"));
        let writer = store.clone();
        let now = Now { mono: Instant::now(), unix_ms: 1_795_290_414_130 };
        let hub = Hub::new(config, Box::new(store), Box::new(CountingEntropy(0)), now).expect("hub");
        let mut f = Fixture { hub, writer, now, key: String::new(), alice: ConnId::new(1, 1), bob: ConnId::new(2, 1) };
        let (status, body) = f.rest(request("POST", "/api/v1/projects", None, Some(json!({"name": "f"}))));
        assert_eq!(status, 201);
        f.key = body["apiKey"].as_str().expect("apiKey").to_string();
        let key = f.key.clone();
        for body in [json!({"name": "r0"}), json!({"name": "r1", "type": "private", "members": ["alice"]})] {
            assert_eq!(f.rest(request("POST", "/api/v1/rooms", Some(&key), Some(body))).0, 201);
        }
        for (i, user) in ["alice", "bob", "alice"].iter().enumerate() {
            let body = json!({"userId": user, "content": format!("hello {i}")});
            assert_eq!(f.rest(request("POST", "/api/v1/rooms/r0/messages", Some(&key), Some(body))).0, 201);
        }
        let (alice, bob) = (f.alice, f.bob);
        f.open(alice, "alice");
        f.open(bob, "bob");
        for (conn, room) in [(alice, "r0"), (alice, "r1"), (bob, "r0")] {
            f.hub.handle_ws_text(conn, &json!({"type": "join", "room": room}).to_string(), f.now);
            f.drain();
        }
        f
    }

    pub fn open(&mut self, conn: ConnId, user: &str) {
        let mut req = request("GET", "/ws", None, None);
        req.query = vec![("apiKey".into(), self.key.clone()), ("userId".into(), user.into())];
        let session = self.hub.authorize_ws(&req, self.now).expect("authorized");
        self.hub.handle_ws_open(conn, session, self.now);
        self.drain();
    }

    /// Commits and drains, as the shell does after each loop iteration.
    pub fn drain(&mut self) -> Vec<Seen> {
        self.hub.commit_with(&mut self.writer).expect("in-memory commits succeed");
        let mut seen = Vec::new();
        while let Some(output) = self.hub.poll_output() {
            match output {
                Output::Frame { to, wire } => seen.push(Seen::Frame(to, parse_wire(&wire))),
                Output::Broadcast { to, wire } => {
                    let v = parse_wire(&wire);
                    seen.extend(to.into_iter().map(|c| Seen::Frame(c, v.clone())));
                }
                Output::Response { to, response } => seen.push(Seen::Response(to, response)),
                Output::Close { to, code, .. } => seen.push(Seen::Close(to, code)),
                // Native connections send no request ids.
                Output::Done { .. } | Output::RoomScoped { .. } | Output::Outbound(_) | Output::Relay { .. } => {}
            }
        }
        seen
    }

    /// One REST request: status and JSON body.
    pub fn rest(&mut self, req: Request) -> (u16, Value) {
        self.hub.handle_http(HTTP, &req, std::net::Ipv4Addr::LOCALHOST.into(), self.now);
        let seen = self.drain();
        let mut responses = seen.into_iter().filter_map(|s| match s {
            Seen::Response(_, r) => Some(r),
            _ => None,
        });
        let r = responses.next().expect("a response");
        assert!(responses.next().is_none(), "one response per request");
        (r.status, serde_json::from_slice(&r.body).unwrap_or(Value::Null))
    }

    /// Lets every typing indicator expire.
    pub fn expire_typing(&mut self) -> Vec<Seen> {
        self.now.mono += Duration::from_secs(60);
        self.now.unix_ms += 60_000;
        self.hub.handle_timeout(self.now);
        self.drain()
    }

    /// Closes both connections; afterwards nothing may be left connected.
    pub fn close_all_and_check(&mut self) {
        for conn in [self.alice, self.bob] {
            self.hub.handle_ws_closed(conn, self.now);
            self.drain();
        }
        assert_eq!(self.hub.connection_count(), 0);
        let key = self.key.clone();
        let (status, stats) = self.rest(request("GET", "/api/v1/stats", Some(&key), None));
        assert_eq!(status, 200);
        assert_eq!((&stats["connections"], &stats["users"]), (&json!(0), &json!(0)), "{stats}");
        let (_, rooms) = self.rest(request("GET", "/api/v1/rooms", Some(&key), None));
        for room in rooms["rooms"].as_array().expect("rooms") {
            assert_eq!(room["online"], 0, "{room}");
        }
    }
}

/// Whether the bytes are one complete HTTP/1.1 response whose
/// Content-Length matches its body.
pub fn check_encoded_response(bytes: &[u8], status: u16, head_only: bool) {
    let end = bytes.windows(4).position(|w| w == b"\r\n\r\n").expect("head terminator") + 4;
    let head = std::str::from_utf8(&bytes[..end]).expect("ASCII head");
    let mut lines = head.split("\r\n");
    let status_line = lines.next().expect("status line");
    assert!(status_line.starts_with(&format!("HTTP/1.1 {status} ")), "{status_line:?}");
    let mut length = None;
    for line in lines.take_while(|l| !l.is_empty()) {
        let (name, value) = line.split_once(": ").unwrap_or_else(|| panic!("header line {line:?}"));
        assert!(!name.is_empty() && name.bytes().all(|b| b.is_ascii_graphic()), "header name {name:?}");
        assert!(!value.contains('\r') && !value.contains('\n'), "header value {value:?}");
        if name.eq_ignore_ascii_case("content-length") {
            assert!(length.is_none(), "two Content-Length headers");
            length = Some(value.parse::<usize>().expect("numeric Content-Length"));
        }
    }
    let body = bytes.len() - end;
    match length {
        // A HEAD answer announces the GET body's length and sends no body.
        Some(_) if head_only => assert_eq!(body, 0, "a body in a HEAD answer"),
        Some(n) => assert_eq!(n, body, "Content-Length"),
        None => assert_eq!(body, 0, "a body without Content-Length"),
    }
}
