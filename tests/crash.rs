//! Crash safety against the real binary (`docs/PROTOCOL.md` §4.2–4.4):
//!
//! - `kill -9` again and again under sustained message load: after every restart each
//!   acknowledged message is in history exactly once, `seq` is gapless, and SQLite's
//!   `PRAGMA integrity_check` says `ok`;
//! - SIGTERM with clients connected: close 1001 to each, a commit, exit 0 within the drain
//!   deadline;
//! - a failing disk (a read-only database, a full one via `--db-max-pages`): writers get
//!   `internal` / 503, never an acknowledgement, while reads go on.
//!
//! Every wait is bounded; the load stops by itself when the hub goes away.

mod common;

use common::{pct, Hub};
use rusqlite::OpenFlags;
use serde_json::{json, Value};
use std::collections::{HashMap, HashSet};
use std::io::ErrorKind;
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tungstenite::{Error as WsError, Message, WebSocket};

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// An acknowledged message: the `message_id_mapping` a sender received.
#[derive(Debug, Clone)]
struct Ack {
    user: String,
    temp_id: String,
    real_id: String,
    seq: u64,
}

/// What one read produced; unlike the harness's `Ws`, nothing here panics when the hub dies.
enum Got {
    Text(Value),
    Closed(Option<u16>, String),
    Timeout,
}

/// A WebSocket client that survives the hub's death (errors become `Closed`).
struct Client {
    ws: WebSocket<TcpStream>,
}

impl Client {
    fn connect(addr: SocketAddr, key: &str, user: &str) -> Client {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(10)).expect("connecting to the hub");
        stream.set_nodelay(true).unwrap();
        stream.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let url = format!("ws://{addr}/?apiKey={}&userId={}", pct(key), pct(user));
        let (ws, _) = tungstenite::client(url, stream).unwrap_or_else(|e| panic!("upgrade as {user}: {e}"));
        let mut c = Client { ws };
        match c.read(Duration::from_secs(5)) {
            Got::Text(v) if v["type"] == "connected" => c,
            _ => panic!("no `connected` frame for {user}"),
        }
    }

    /// Joins `room`, panicking on anything but `joined`.
    fn join(&mut self, room: &str) {
        assert!(self.send(&json!({ "type": "join", "room": room })), "sending join");
        loop {
            match self.read(Duration::from_secs(5)) {
                Got::Text(v) if v["type"] == "joined" => return,
                Got::Text(v) if v["type"] == "error" => panic!("join {room} refused: {v}"),
                Got::Text(_) => {}
                _ => panic!("no `joined` for {room}"),
            }
        }
    }

    /// Queues one frame without flushing; false once the connection is gone.
    fn write(&mut self, v: &Value) -> bool {
        self.ws.write(Message::text(v.to_string())).is_ok()
    }

    fn flush(&mut self) -> bool {
        self.ws.flush().is_ok()
    }

    fn send(&mut self, v: &Value) -> bool {
        self.write(v) && self.flush()
    }

    fn read(&mut self, timeout: Duration) -> Got {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Got::Timeout;
            }
            let _ = self.ws.get_mut().set_read_timeout(Some(left));
            match self.ws.read() {
                Ok(Message::Text(t)) => return Got::Text(serde_json::from_str(&t).expect("text frame is JSON")),
                Ok(Message::Close(f)) => {
                    let _ = self.ws.flush();
                    let (code, reason) = f.map(|f| (Some(u16::from(f.code)), f.reason.to_string())).unwrap_or_default();
                    return Got::Closed(code, reason);
                }
                Ok(_) => {}
                Err(WsError::Io(e)) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    return Got::Timeout
                }
                Err(_) => return Got::Closed(None, String::new()),
            }
        }
    }

    /// Reads until the server's close (or the connection's end) within `timeout`.
    fn until_close(&mut self, timeout: Duration) -> Option<(Option<u16>, String)> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.read(deadline.saturating_duration_since(Instant::now())) {
                Got::Text(_) => {}
                Got::Closed(code, reason) => return Some((code, reason)),
                Got::Timeout => return None,
            }
        }
    }
}

/// What a publisher saw before its connection ended.
#[derive(Default)]
struct Published {
    /// Every tempId written to the socket.
    sent: Vec<String>,
    /// `error` frames received.
    errors: Vec<Value>,
    /// How the connection ended: a close code, or None for EOF/reset.
    end: Option<(Option<u16>, String)>,
    timed_out: bool,
}

/// Publishes to `room` as `user`, keeping `window` messages in flight (a slot frees on the
/// `message_id_mapping` or `error` for it), until the connection ends or `max` are sent and
/// answered. Content equals the tempId `{prefix}-{n}`. Acknowledgements go to `acks`.
#[allow(clippy::too_many_arguments)]
fn publish(
    mut c: Client,
    room: &str,
    user: &str,
    prefix: &str,
    window: usize,
    max: usize,
    acks: &Mutex<Vec<Ack>>,
    acked: &AtomicUsize,
) -> Published {
    let mut out = Published::default();
    let mut outstanding = 0usize;
    loop {
        let mut wrote = false;
        while outstanding < window && out.sent.len() < max {
            let temp_id = format!("{prefix}-{}", out.sent.len());
            if !c.write(&json!({ "type": "message", "room": room, "content": temp_id, "tempId": temp_id })) {
                return out;
            }
            out.sent.push(temp_id);
            outstanding += 1;
            wrote = true;
        }
        if wrote && !c.flush() {
            return out;
        }
        if outstanding == 0 {
            return out; // all `max` sent and answered
        }
        match c.read(Duration::from_secs(10)) {
            Got::Text(v) if v["type"] == "message_id_mapping" => {
                let ack = Ack {
                    user: user.to_string(),
                    temp_id: v["tempId"].as_str().expect("mapping tempId").to_string(),
                    real_id: v["realId"].as_str().expect("mapping realId").to_string(),
                    seq: v["seq"].as_u64().expect("mapping seq"),
                };
                acks.lock().unwrap().push(ack);
                acked.fetch_add(1, Ordering::SeqCst);
                outstanding -= 1;
            }
            Got::Text(v) if v["type"] == "error" => {
                out.errors.push(v);
                outstanding -= 1;
            }
            Got::Text(_) => {}
            Got::Closed(code, reason) => {
                out.end = Some((code, reason));
                return out;
            }
            Got::Timeout => {
                out.timed_out = true;
                return out;
            }
        }
    }
}

/// Every message of `room`, paged with `after` (1000 at a time) until an empty page.
fn full_history(hub: &Hub, key: &str, room: &str) -> Vec<Value> {
    let mut all = Vec::new();
    let mut after = 0u64;
    loop {
        let resp = hub.get(&format!("/api/v1/rooms/{room}/messages?after={after}&limit=1000"), Some(key));
        assert_eq!(resp.status, 200, "history page after {after}: {resp:?}");
        let page = resp.json()["messages"].as_array().cloned().unwrap_or_default();
        let Some(last) = page.last() else { return all };
        after = last["seq"].as_u64().expect("seq");
        all.extend(page);
    }
}

/// Checks a room's history against what was acknowledged and what was sent: `seq` is
/// 1..=n without gaps, ids and contents are unique, every acknowledged message is there
/// exactly once with its acknowledged `seq`, and nothing is there that was never sent.
fn check_history(history: &[Value], acks: &[Ack], sent: &HashSet<String>, when: &str) {
    for (i, m) in history.iter().enumerate() {
        assert_eq!(m["seq"].as_u64(), Some(i as u64 + 1), "{when}: seq gap or disorder at position {i}: {m}");
    }
    let mut by_id: HashMap<&str, &Value> = HashMap::new();
    let mut contents = HashSet::new();
    for m in history {
        let id = m["id"].as_str().expect("id");
        assert!(by_id.insert(id, m).is_none(), "{when}: id {id} appears twice");
        let content = m["content"].as_str().expect("content");
        assert!(contents.insert(content), "{when}: message {content:?} stored twice");
        assert!(sent.contains(content), "{when}: {content:?} in history but never sent");
    }
    for a in acks {
        let m = by_id.get(a.real_id.as_str()).unwrap_or_else(|| {
            panic!("{when}: acknowledged {} ({} seq {}) is missing from history", a.real_id, a.temp_id, a.seq)
        });
        assert_eq!(m["seq"].as_u64(), Some(a.seq), "{when}: seq of acknowledged {}", a.temp_id);
        assert_eq!(m["content"], a.temp_id.as_str(), "{when}: content of acknowledged {}", a.real_id);
    }
}

/// `PRAGMA integrity_check` through a read-only connection that is closed again at once.
fn integrity_check(db: &Path) {
    let conn = rusqlite::Connection::open_with_flags(db, OpenFlags::SQLITE_OPEN_READ_ONLY)
        .unwrap_or_else(|e| panic!("opening {} read-only: {e}", db.display()));
    let result: String = conn.query_row("PRAGMA integrity_check", [], |r| r.get(0)).expect("integrity_check");
    assert_eq!(result, "ok", "PRAGMA integrity_check of {}", db.display());
    conn.close().map_err(|(_, e)| e).expect("closing the check connection");
}

/// A small deterministic generator (PCG-style LCG) for kill points.
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

// ---------------------------------------------------------------------------------------------
// kill -9 under load
// ---------------------------------------------------------------------------------------------

#[test]
fn kill_9_under_load_never_loses_or_duplicates_an_acknowledged_message() {
    const CYCLES: usize = 5;
    const PUBLISHERS: usize = 3;
    let dir = tempfile::tempdir().expect("temp dir");
    let db = dir.path().join("crash.db");
    let args = ["--max-events-per-second", "100000"];
    let mut rng = Lcg(0x5eed_2026_1122);
    let mut acks_total: Vec<Ack> = Vec::new();
    let mut sent_total: HashSet<String> = HashSet::new();
    let mut key = String::new();
    let mut kill_points = Vec::new();

    for cycle in 0..CYCLES {
        let mut hub = Hub::start_at(&db, &args);
        if cycle == 0 {
            key = hub.create_project("crash").1;
            hub.create_room(&key, "log", "public");
        } else {
            // After the restart: everything acknowledged before every kill is there, once.
            let history = full_history(&hub, &key, "log");
            check_history(&history, &acks_total, &sent_total, &format!("after kill {cycle}"));
            // A retry of an acknowledged tempId gets the original mapping and stores nothing.
            let last = acks_total.iter().rev().find(|a| a.user == "pub0").expect("pub0 had acks").clone();
            let mut retry = Client::connect(hub.addr, &key, "pub0");
            retry.join("log");
            let resend = json!({ "type": "message", "room": "log", "content": "retry", "tempId": last.temp_id });
            assert!(retry.send(&resend));
            match retry.read(Duration::from_secs(5)) {
                Got::Text(v) => {
                    assert_eq!(v["type"], "message_id_mapping", "retry of {} after restart: {v}", last.temp_id);
                    assert_eq!(
                        (v["realId"].as_str(), v["seq"].as_u64()),
                        (Some(last.real_id.as_str()), Some(last.seq))
                    );
                }
                _ => panic!("no answer to the retry of {}", last.temp_id),
            }
            assert_eq!(full_history(&hub, &key, "log").len(), history.len(), "the retry stored nothing new");
        }

        // Sustained load from three publishers; kill -9 after a seeded number of acks.
        let target = 50 + rng.below(400) as usize;
        kill_points.push(target);
        let acks = Arc::new(Mutex::new(Vec::new()));
        let acked = Arc::new(AtomicUsize::new(0));
        let clients: Vec<Client> = (0..PUBLISHERS)
            .map(|p| {
                let mut c = Client::connect(hub.addr, &key, &format!("pub{p}"));
                c.join("log");
                c
            })
            .collect();
        let threads: Vec<_> = clients
            .into_iter()
            .enumerate()
            .map(|(p, c)| {
                let (acks, acked) = (acks.clone(), acked.clone());
                std::thread::spawn(move || {
                    let (user, prefix) = (format!("pub{p}"), format!("c{cycle}-p{p}"));
                    publish(c, "log", &user, &prefix, 16, 20_000, &acks, &acked)
                })
            })
            .collect();
        // Kill once `target` acks came *and* every publisher has one: the
        // retry check after the restart needs an acknowledged tempId of
        // pub0, and a publisher that connected last may not have had one
        // yet when the others reached the target.
        let deadline = Instant::now() + Duration::from_secs(30);
        let every_publisher_acked = || {
            let acks = acks.lock().unwrap();
            (0..PUBLISHERS).all(|p| acks.iter().any(|a| a.user == format!("pub{p}")))
        };
        while acked.load(Ordering::SeqCst) < target || !every_publisher_acked() {
            assert!(Instant::now() < deadline, "cycle {cycle}: only {} acks in 30 s", acked.load(Ordering::SeqCst));
            std::thread::sleep(Duration::from_micros(200));
        }
        hub.kill9();
        let mut in_flight = 0;
        for t in threads {
            let p = t.join().expect("publisher thread");
            assert!(!p.timed_out, "cycle {cycle}: a publisher waited 10 s for an answer before the kill");
            assert!(p.errors.is_empty(), "cycle {cycle}: errors before the kill: {:?}", p.errors);
            in_flight += p.sent.len();
            sent_total.extend(p.sent);
        }
        let acks = std::mem::take(&mut *acks.lock().unwrap());
        in_flight -= acks.len();
        assert!(in_flight > 0, "cycle {cycle}: nothing was in flight at the kill");
        acks_total.extend(acks);

        // The crashed file itself is consistent (checked before the hub recovers it).
        integrity_check(&db);
        drop(hub);
    }

    // A last restart: the full picture, then a clean shutdown and another check.
    let mut hub = Hub::start_at(&db, &args);
    let history = full_history(&hub, &key, "log");
    check_history(&history, &acks_total, &sent_total, "after the last kill");
    eprintln!(
        "kill -9 loop: kill points (acks) {kill_points:?}, {} acknowledged, {} sent, {} in history",
        acks_total.len(),
        sent_total.len(),
        history.len()
    );
    assert!(hub.terminate().success(), "clean shutdown after the crash loop");
    integrity_check(&db);
}

// ---------------------------------------------------------------------------------------------
// SIGTERM
// ---------------------------------------------------------------------------------------------

#[test]
fn sigterm_closes_every_client_1001_commits_and_exits_0_within_the_drain_deadline() {
    let drain = Duration::from_millis(2000); // the documented default of --drain-timeout-ms
    let mut hub = Hub::start_with(&["--max-events-per-second", "100000"]);
    let key = hub.create_project("term").1;
    for r in ["main", "side"] {
        hub.create_room(&key, r, "public");
    }
    // Four members in rooms, each read by its own thread until the close.
    let readers: Vec<_> = (0..4)
        .map(|i| {
            let mut c = Client::connect(hub.addr, &key, &format!("member{i}"));
            c.join("main");
            if i % 2 == 0 {
                c.join("side");
            }
            std::thread::spawn(move || c.until_close(Duration::from_secs(15)))
        })
        .collect();
    // A fifth client sends messages continuously: the signal arrives mid-send.
    let acks = Arc::new(Mutex::new(Vec::new()));
    let acked = Arc::new(AtomicUsize::new(0));
    let mut sender = Client::connect(hub.addr, &key, "sender");
    sender.join("main");
    let sender = {
        let (acks, acked) = (acks.clone(), acked.clone());
        std::thread::spawn(move || publish(sender, "main", "sender", "term", 16, 1_000_000, &acks, &acked))
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while acked.load(Ordering::SeqCst) < 200 {
        assert!(Instant::now() < deadline, "the sender got only {} acks in 10 s", acked.load(Ordering::SeqCst));
        std::thread::sleep(Duration::from_millis(1));
    }

    let started = Instant::now();
    let status = hub.terminate();
    let took = started.elapsed();
    assert!(status.success(), "exit status after SIGTERM: {status}");
    assert!(took < drain + Duration::from_millis(500), "exit took {took:?}, past the {drain:?} drain deadline");

    for (i, r) in readers.into_iter().enumerate() {
        let end = r.join().expect("reader thread");
        assert_eq!(end, Some((Some(1001), "server shutdown".to_string())), "member{i}'s close");
    }
    let sent = sender.join().expect("sender thread");
    assert_eq!(sent.end, Some((Some(1001), "server shutdown".to_string())), "the sender's close");
    assert!(sent.errors.is_empty(), "the sender got errors: {:?}", sent.errors);
    let acks = std::mem::take(&mut *acks.lock().unwrap());

    // Everything acknowledged before and during the shutdown was committed.
    let db = hub.db_path.clone();
    let restarted = Hub::start_at(&db, &[]);
    let history = full_history(&restarted, &key, "main");
    let sent_set: HashSet<String> = sent.sent.into_iter().collect();
    check_history(&history, &acks, &sent_set, "after SIGTERM");
    eprintln!("SIGTERM: exit 0 after {took:?}; {} acknowledged, {} in history", acks.len(), history.len());
    drop(restarted);
    drop(hub); // removes the temp dir
}

#[test]
fn sigterm_with_a_client_that_never_reads_still_exits_0_by_the_drain_deadline() {
    let drain = Duration::from_millis(1000);
    let mut hub = Hub::start_with(&["--drain-timeout-ms", "1000"]);
    let key = hub.create_project("term").1;
    hub.create_room(&key, "main", "public");
    let mut frozen = Client::connect(hub.addr, &key, "frozen");
    frozen.join("main");
    let mut polite = Client::connect(hub.addr, &key, "polite");
    polite.join("main");
    let polite = std::thread::spawn(move || polite.until_close(Duration::from_secs(10)));

    let started = Instant::now();
    let status = hub.terminate();
    let took = started.elapsed();
    assert!(status.success(), "exit status after SIGTERM: {status}");
    assert!(took < drain + Duration::from_millis(500), "exit took {took:?} with a 1 s drain deadline");
    assert_eq!(polite.join().unwrap(), Some((Some(1001), "server shutdown".to_string())), "the reading client");
    // The frozen client finds the 1001 waiting in its socket.
    let end = frozen.until_close(Duration::from_secs(2));
    assert_eq!(end, Some((Some(1001), "server shutdown".to_string())), "the client that was not reading");
    eprintln!("SIGTERM with a client that never reads: exit 0 after {took:?} (drain deadline {drain:?})");
}

// ---------------------------------------------------------------------------------------------
// Failing disk
// ---------------------------------------------------------------------------------------------

/// Sends `ping` and expects `pong` next: nothing else (no mapping, no message) was queued.
fn expect_pong_next(c: &mut Client, what: &str) {
    assert!(c.send(&json!({ "type": "ping" })));
    match c.read(Duration::from_secs(5)) {
        Got::Text(v) => assert_eq!(v, json!({ "type": "pong" }), "{what}: expected pong next"),
        _ => panic!("{what}: no pong"),
    }
}

/// The next text frame, within 5 s.
fn next_text(c: &mut Client, what: &str) -> Value {
    match c.read(Duration::from_secs(5)) {
        Got::Text(v) => v,
        Got::Closed(code, reason) => panic!("{what}: closed {code:?} {reason}"),
        Got::Timeout => panic!("{what}: no frame within 5 s"),
    }
}

#[test]
fn a_read_only_database_serves_reads_and_refuses_every_write() {
    let mut hub = Hub::start();
    let key = hub.create_project("ro").1;
    hub.create_room(&key, "archive", "public");
    for i in 0..3 {
        let resp = hub.post(
            "/api/v1/rooms/archive/messages",
            Some(&key),
            &json!({ "userId": "bot", "content": format!("old {i}") }),
        );
        assert_eq!(resp.status, 201, "{resp:?}");
    }
    let before = full_history(&hub, &key, "archive");
    assert!(hub.terminate().success());
    let db = hub.db_path.clone();

    let uri = format!("file:{}?mode=ro", db.display());
    let mut ro = Hub::start_at(&db, &["--db", &uri]);
    // Reads work.
    assert_eq!(full_history(&ro, &key, "archive"), before, "history from the read-only database");
    assert_eq!(ro.get("/api/v1/rooms", Some(&key)).status, 200);
    assert_eq!(ro.get("/health", None).status, 200);
    // REST writes: 503 `unavailable`.
    let resp = ro.post("/api/v1/rooms/archive/messages", Some(&key), &json!({ "userId": "bot", "content": "new" }));
    assert_eq!(resp.status, 503, "POST a message to a read-only database: {resp:?}");
    assert_eq!(resp.json()["error"]["code"], "unavailable");
    let resp = ro.post("/api/v1/rooms", Some(&key), &json!({ "name": "fresh" }));
    assert_eq!(resp.status, 503, "create a room in a read-only database: {resp:?}");
    // WebSocket writes: `internal` with the tempId, and no acknowledgement of any kind.
    let mut c = Client::connect(ro.addr, &key, "writer");
    c.join("archive");
    assert!(c.send(&json!({ "type": "message", "room": "archive", "content": "ro-1", "tempId": "ro-1" })));
    let v = next_text(&mut c, "answer to a message on a read-only database");
    assert_eq!(v["type"], "error", "{v}");
    assert_eq!((&v["code"], &v["event"], &v["tempId"]), (&json!("internal"), &json!("message"), &json!("ro-1")), "{v}");
    expect_pong_next(&mut c, "after the refused message");
    // WebSocket reads go on.
    assert!(c.send(&json!({ "type": "history", "room": "archive" })));
    let h = next_text(&mut c, "history on a read-only database");
    assert_eq!(h["type"], "history", "{h}");
    assert_eq!(h["messages"].as_array().map(Vec::len), Some(3), "{h}");
    assert_eq!(full_history(&ro, &key, "archive"), before, "nothing new after the refused writes");
    assert!(ro.terminate().success(), "shutdown of the read-only hub");

    // Back on a writable database: the refused writes are not there, and writing works.
    let rw = Hub::start_at(&db, &[]);
    let after = full_history(&rw, &key, "archive");
    assert_eq!(after, before, "the refused writes left no trace");
    let resp = rw.post("/api/v1/rooms/archive/messages", Some(&key), &json!({ "userId": "bot", "content": "new" }));
    assert_eq!(resp.status, 201, "{resp:?}");
    assert_eq!(resp.json()["seq"], 4);
    drop(rw);
    drop(hub);
}

#[test]
fn a_full_disk_turns_writes_into_internal_errors_never_acknowledgements_while_reads_go_on() {
    // 13 pages hold the schema, a project and a room; 40 leave room for a few dozen 3 KB
    // messages and then the database is full.
    let mut hub = Hub::start_with(&["--db-max-pages", "40", "--max-events-per-second", "100000"]);
    let key = hub.create_project("full").1;
    hub.create_room(&key, "disk", "public");
    let mut c = Client::connect(hub.addr, &key, "writer");
    c.join("disk");

    let filler = "z".repeat(3000);
    let mut acked: Vec<Ack> = Vec::new();
    let mut failed: Vec<String> = Vec::new();
    let mut sent: HashSet<String> = HashSet::new();
    let mut n = 0;
    // Up to 4 in flight, until the first `internal`, then 6 more one at a time.
    let mut outstanding = 0;
    let mut after_full = 0;
    while n < 500 && (failed.is_empty() || after_full < 6 || outstanding > 0) {
        let window = if failed.is_empty() { 4 } else { 1 };
        while outstanding < window && n < 500 && (failed.is_empty() || after_full < 6) {
            let temp_id = format!("f{n}");
            let content = format!("{temp_id}|{filler}");
            assert!(c.send(&json!({ "type": "message", "room": "disk", "content": content, "tempId": temp_id })));
            sent.insert(content);
            n += 1;
            outstanding += 1;
            if !failed.is_empty() {
                after_full += 1;
            }
        }
        let v = next_text(&mut c, "answer to a message");
        match v["type"].as_str() {
            Some("message_id_mapping") => {
                let temp_id = v["tempId"].as_str().unwrap().to_string();
                acked.push(Ack {
                    user: "writer".into(),
                    real_id: v["realId"].as_str().unwrap().to_string(),
                    seq: v["seq"].as_u64().unwrap(),
                    temp_id,
                });
                outstanding -= 1;
            }
            Some("error") => {
                assert_eq!((&v["code"], &v["event"]), (&json!("internal"), &json!("message")), "{v}");
                let temp_id = v["tempId"].as_str().unwrap_or_else(|| panic!("internal without tempId: {v}"));
                assert!(acked.iter().all(|a| a.temp_id != temp_id), "{temp_id} was acknowledged and failed");
                failed.push(temp_id.to_string());
                outstanding -= 1;
            }
            Some("message") => {
                let temp_id = v["content"].as_str().unwrap().split('|').next().unwrap();
                assert!(acked.iter().any(|a| a.temp_id == temp_id), "broadcast of {temp_id} before its mapping");
                assert!(!failed.iter().any(|f| f == temp_id), "broadcast of {temp_id}, which failed");
            }
            _ => panic!("unexpected frame: {v}"),
        }
    }
    assert!(!failed.is_empty(), "500 messages of 3 KB fit in 40 pages?");
    assert!(!acked.is_empty(), "nothing fit before the disk was full");
    // No broadcast of a failed message is still queued.
    expect_pong_next(&mut c, "after the failed writes");

    // Reads go on while the disk is full.
    let history = full_history(&hub, &key, "disk");
    let content_of = |a: &Ack| format!("{}|{filler}", a.temp_id);
    let ack_contents: Vec<Ack> = acked.iter().map(|a| Ack { temp_id: content_of(a), ..a.clone() }).collect();
    check_history(&history, &ack_contents, &sent, "while full");
    assert_eq!(history.len(), acked.len(), "history holds exactly the acknowledged messages");
    let mut reader = Client::connect(hub.addr, &key, "reader");
    assert!(reader.send(&json!({ "type": "history", "room": "disk", "limit": 1000 })));
    let h = next_text(&mut reader, "WebSocket history while full");
    assert_eq!(h["messages"].as_array().map(Vec::len), Some(acked.len()), "WebSocket history while full");
    let resp = hub.post("/api/v1/rooms/disk/messages", Some(&key), &json!({ "userId": "bot", "content": filler }));
    assert_eq!(resp.status, 503, "REST write on a full disk: {resp:?}");
    assert_eq!(resp.json()["error"]["code"], "unavailable");

    // After a crash and a restart without the cap: every acknowledged message, no failed one.
    hub.kill9();
    integrity_check(&hub.db_path);
    let db = hub.db_path.clone();
    let roomy = Hub::start_at(&db, &[]);
    let history = full_history(&roomy, &key, "disk");
    check_history(&history, &ack_contents, &sent, "after restart");
    for f in &failed {
        let prefix = format!("{f}|");
        assert!(
            !history.iter().any(|m| m["content"].as_str().is_some_and(|s| s.starts_with(&prefix))),
            "{f} got `internal` but is in history"
        );
    }
    // With space again, the failed tempIds can be retried and are stored.
    let mut c = Client::connect(roomy.addr, &key, "writer");
    c.join("disk");
    let retry = &failed[0];
    let content = format!("{retry}|{filler}");
    assert!(c.send(&json!({ "type": "message", "room": "disk", "content": content, "tempId": retry })));
    let v = next_text(&mut c, "retry after restart");
    assert_eq!(v["type"], "message_id_mapping", "retry of {retry} with space again: {v}");
    assert_eq!(v["seq"].as_u64(), Some(acked.len() as u64 + 1), "the retry takes the next seq: {v}");
    eprintln!("full disk: {} acknowledged, {} failed with internal", acked.len(), failed.len());
    drop(roomy);
    drop(hub);
}

// ---------------------------------------------------------------------------------------------
// The store thread: batches in flight, a slow store, a store error mid-pipeline
// ---------------------------------------------------------------------------------------------

/// One gauge or counter from `/metrics` (unlabelled series).
fn metric(hub: &Hub, name: &str) -> f64 {
    let resp = hub.get("/metrics", None);
    assert_eq!(resp.status, 200, "{resp:?}");
    resp.body
        .lines()
        .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in /metrics"))
}

/// Publishers in threads as in the kill -9 loop; returns their handles.
#[allow(clippy::too_many_arguments)]
fn start_publishers(
    hub: &Hub,
    key: &str,
    room: &str,
    n: usize,
    window: usize,
    max: usize,
    tag: &str,
    acks: &Arc<Mutex<Vec<Ack>>>,
    acked: &Arc<AtomicUsize>,
) -> Vec<std::thread::JoinHandle<Published>> {
    (0..n)
        .map(|p| {
            let mut c = Client::connect(hub.addr, key, &format!("pub{p}"));
            c.join(room);
            let (acks, acked, room) = (acks.clone(), acked.clone(), room.to_string());
            let prefix = format!("{tag}-p{p}");
            std::thread::spawn(move || publish(c, &room, &format!("pub{p}"), &prefix, window, max, &acks, &acked))
        })
        .collect()
}

#[test]
fn kill_9_with_a_slow_store_and_batches_in_flight_loses_and_duplicates_nothing() {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = dir.path().join("slow.db");
    // 5 ms per commit: batches queue up behind each other in the store thread.
    let args = ["--max-events-per-second", "100000", "--store-delay-ms", "5"];
    let mut hub = Hub::start_at(&db, &args);
    let key = hub.create_project("slow").1;
    hub.create_room(&key, "log", "public");
    let acks = Arc::new(Mutex::new(Vec::new()));
    let acked = Arc::new(AtomicUsize::new(0));
    let threads = start_publishers(&hub, &key, "log", 4, 32, 50_000, "slow", &acks, &acked);
    // Wait until the store is seen behind (more than one batch in flight) and
    // every publisher has acknowledgements, then kill in the middle of it.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut deepest = 0.0f64;
    loop {
        assert!(Instant::now() < deadline, "no batches queued up in 30 s (deepest {deepest})");
        deepest = deepest.max(metric(&hub, "realtimehub_store_queue_batches"));
        let everyone = {
            let acks = acks.lock().unwrap();
            (0..4).all(|p| acks.iter().any(|a| a.user == format!("pub{p}")))
        };
        if deepest >= 2.0 && everyone && acked.load(Ordering::SeqCst) >= 200 {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    hub.kill9();
    let mut sent = HashSet::new();
    for t in threads {
        let p = t.join().expect("publisher");
        assert!(p.errors.is_empty(), "errors before the kill: {:?}", p.errors);
        sent.extend(p.sent);
    }
    let acks = std::mem::take(&mut *acks.lock().unwrap());
    assert!(sent.len() > acks.len(), "something was in flight at the kill");
    integrity_check(&db);
    let hub = Hub::start_at(&db, &[]);
    let history = full_history(&hub, &key, "log");
    check_history(&history, &acks, &sent, "after kill -9 with batches in flight");
    // Each tempId that made it (acknowledged or not) is answered from the store on retry.
    let last = acks.iter().rev().find(|a| a.user == "pub0").expect("pub0 had acks").clone();
    let mut retry = Client::connect(hub.addr, &key, "pub0");
    retry.join("log");
    assert!(retry.send(&json!({ "type": "message", "room": "log", "content": "again", "tempId": last.temp_id })));
    let v = next_text(&mut retry, "retry after the kill");
    assert_eq!((v["type"].as_str(), v["realId"].as_str()), (Some("message_id_mapping"), Some(last.real_id.as_str())));
    assert_eq!(full_history(&hub, &key, "log").len(), history.len(), "the retry stored nothing");
    eprintln!("slow store kill: deepest queue {deepest} batches, {} acked, {} in history", acks.len(), history.len());
}

#[test]
fn a_slow_store_stops_reading_publishers_while_other_connections_are_served() {
    // 150 ms per commit and at most 2 batches in flight: the publishers are
    // held back instead of the hub buffering their messages.
    let args = ["--max-events-per-second", "100000", "--store-delay-ms", "150", "--store-max-batches", "2"];
    let mut hub = Hub::start_with(&args);
    let key = hub.create_project("backpressure").1;
    hub.create_room(&key, "busy", "public");
    hub.create_room(&key, "quiet", "public");
    let mut reader = Client::connect(hub.addr, &key, "reader");
    reader.join("quiet");
    let acks = Arc::new(Mutex::new(Vec::new()));
    let acked = Arc::new(AtomicUsize::new(0));
    let threads = start_publishers(&hub, &key, "busy", 2, 500, 1_000, "bp", &acks, &acked);
    // While the publishers push, the queue stays bounded and the reader is served.
    let mut most = 0.0f64;
    for round in 0..10 {
        let depth = metric(&hub, "realtimehub_store_queue_batches");
        most = most.max(depth);
        assert!(depth <= 3.0, "round {round}: {depth} batches in flight with --store-max-batches 2");
        assert!(reader.send(&json!({ "type": "ping" })));
        let started = Instant::now();
        match reader.read(Duration::from_secs(5)) {
            Got::Text(v) => assert_eq!(v["type"], "pong", "{v}"),
            _ => panic!("round {round}: the reader got no pong within 5 s"),
        }
        assert!(started.elapsed() < Duration::from_secs(2), "round {round}: pong after {:?}", started.elapsed());
    }
    assert!(most >= 1.0, "the store was never behind");
    assert!(metric(&hub, "realtimehub_commit_seconds_count") > 0.0);
    // Every message is answered in the end, in order, and stored once.
    let mut sent = HashSet::new();
    for t in threads {
        let p = t.join().expect("publisher");
        assert!(!p.timed_out && p.errors.is_empty(), "publisher: timed out {} errors {:?}", p.timed_out, p.errors);
        assert_eq!(p.sent.len(), 1_000);
        sent.extend(p.sent);
    }
    let acks = std::mem::take(&mut *acks.lock().unwrap());
    assert_eq!(acks.len(), 2_000, "every message acknowledged");
    let history = full_history(&hub, &key, "busy");
    check_history(&history, &acks, &sent, "after the slow store caught up");
    assert_eq!(history.len(), 2_000);
    assert!(hub.terminate().success());
}

#[test]
fn a_full_disk_in_the_middle_of_a_pipeline_fails_exactly_the_unstored_messages() {
    // Many batches in flight (32 per publisher, a 2 ms store) when the disk fills.
    let args = ["--db-max-pages", "60", "--max-events-per-second", "100000", "--store-delay-ms", "2"];
    let mut hub = Hub::start_with(&args);
    let key = hub.create_project("full").1;
    hub.create_room(&key, "disk", "public");
    let acks = Arc::new(Mutex::new(Vec::new()));
    let acked = Arc::new(AtomicUsize::new(0));
    let filler = "q".repeat(2000);
    let threads: Vec<_> = (0..3)
        .map(|p| {
            let mut c = Client::connect(hub.addr, &key, &format!("pub{p}"));
            c.join("disk");
            let (acks, acked, filler) = (acks.clone(), acked.clone(), filler.clone());
            std::thread::spawn(move || {
                // Like `publish`, with large contents: `{tempId}|{filler}`.
                let mut out = Published::default();
                let mut outstanding = 0;
                while out.sent.len() < 300 || outstanding > 0 {
                    while outstanding < 32 && out.sent.len() < 300 {
                        let t = format!("full-p{p}-{}", out.sent.len());
                        let m = json!({ "type": "message", "room": "disk", "content": format!("{t}|{filler}"), "tempId": t });
                        assert!(c.send(&m));
                        out.sent.push(t);
                        outstanding += 1;
                    }
                    match c.read(Duration::from_secs(10)) {
                        Got::Text(v) if v["type"] == "message_id_mapping" => {
                            acks.lock().unwrap().push(Ack {
                                user: format!("pub{p}"),
                                temp_id: v["tempId"].as_str().unwrap().to_string(),
                                real_id: v["realId"].as_str().unwrap().to_string(),
                                seq: v["seq"].as_u64().unwrap(),
                            });
                            acked.fetch_add(1, Ordering::SeqCst);
                            outstanding -= 1;
                        }
                        Got::Text(v) if v["type"] == "error" => {
                            out.errors.push(v);
                            outstanding -= 1;
                        }
                        Got::Text(_) => {}
                        other => panic!("pub{p}: {}", matches!(other, Got::Timeout)),
                    }
                }
                out
            })
        })
        .collect();
    let mut sent = HashSet::new();
    let mut failed = Vec::new();
    for t in threads {
        let p = t.join().expect("publisher");
        for e in &p.errors {
            assert_eq!((&e["code"], &e["event"]), (&json!("internal"), &json!("message")), "{e}");
            failed.push(e["tempId"].as_str().expect("tempId on internal").to_string());
        }
        sent.extend(p.sent.into_iter().map(|t| format!("{t}|{filler}")));
    }
    let acks = std::mem::take(&mut *acks.lock().unwrap());
    assert!(!failed.is_empty() && !acks.is_empty(), "{} acked, {} failed", acks.len(), failed.len());
    assert_eq!(acks.len() + failed.len(), 900, "every message answered once");
    for a in &acks {
        assert!(!failed.contains(&a.temp_id), "{} both acknowledged and failed", a.temp_id);
    }
    let with_filler: Vec<Ack> =
        acks.iter().map(|a| Ack { temp_id: format!("{}|{filler}", a.temp_id), ..a.clone() }).collect();
    let history = full_history(&hub, &key, "disk");
    check_history(&history, &with_filler, &sent, "while full");
    assert_eq!(history.len(), acks.len(), "history holds exactly the acknowledged messages");
    hub.kill9();
    integrity_check(&hub.db_path);
    let roomy = Hub::start_at(&hub.db_path.clone(), &[]);
    let history = full_history(&roomy, &key, "disk");
    assert_eq!(history.len(), acks.len(), "after a restart: exactly the acknowledged messages");
    eprintln!("full disk mid-pipeline: {} acknowledged, {} failed", acks.len(), failed.len());
    drop(roomy);
    drop(hub);
}

#[test]
fn sigterm_with_batches_in_flight_delivers_their_acknowledgements_before_the_close() {
    let mut hub = Hub::start_with(&["--max-events-per-second", "100000", "--store-delay-ms", "40"]);
    let key = hub.create_project("drain").1;
    hub.create_room(&key, "main", "public");
    let acks = Arc::new(Mutex::new(Vec::new()));
    let acked = Arc::new(AtomicUsize::new(0));
    let threads = start_publishers(&hub, &key, "main", 2, 64, 1_000_000, "drain", &acks, &acked);
    let deadline = Instant::now() + Duration::from_secs(10);
    while metric(&hub, "realtimehub_store_queue_batches") < 1.0 || acked.load(Ordering::SeqCst) < 50 {
        assert!(Instant::now() < deadline, "no load with batches in flight within 10 s");
        std::thread::sleep(Duration::from_millis(2));
    }
    let status = hub.terminate();
    assert!(status.success(), "{status}");
    let mut sent = HashSet::new();
    for t in threads {
        let p = t.join().expect("publisher");
        assert_eq!(p.end, Some((Some(1001), "server shutdown".to_string())));
        assert!(p.errors.is_empty(), "{:?}", p.errors);
        sent.extend(p.sent);
    }
    let acks = std::mem::take(&mut *acks.lock().unwrap());
    let restarted = Hub::start_at(&hub.db_path.clone(), &[]);
    let history = full_history(&restarted, &key, "main");
    check_history(&history, &acks, &sent, "after SIGTERM with batches in flight");
    // Whatever the hub took in was committed and acknowledged before the close.
    assert_eq!(history.len(), acks.len(), "a stored message whose acknowledgement never went out");
    eprintln!("SIGTERM drain: {} acknowledged and stored", acks.len());
}
