//! The global budget for queued output (`--max-outbound-total-bytes`, issue 17 item 7),
//! against the real binary: many WebSockets that joined a busy room and stopped reading
//! cannot take the hub's memory past the budget. The ones holding the most unread bytes
//! are closed 1008 (counted as `outbound_budget` in `/metrics`), and clients that read are
//! never touched.
//!
//! The per-connection limit is set above the budget so that the budget alone acts: every
//! sleeper is eventually cut by it, the last ones when they are the only backlogs left.
//!
//! Bounded: 50 non-reading connections, at most 3,000 messages of 16 KB or 30 s of
//! publishing, on 127.0.0.1. Every wait has a deadline.

mod common;

use common::{pct, Hub, Ws};
use serde_json::{json, Value};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tungstenite::Message;

const SLEEPERS: usize = 50;
const BUDGET: usize = 4 * 1024 * 1024;
/// Per connection: above the budget, so only the budget cuts.
const PER_CONN: usize = 5 * 1024 * 1024;
/// What the hub may grow by over its idle size: the budget, plus allocator slack and the
/// frames in flight. Without the budget the sleepers alone queue 50 × 5 MiB.
const RSS_BOUND_KIB: u64 = (BUDGET as u64 + 24 * 1024 * 1024) / 1024;
const CONTENT: usize = 16 * 1024;

/// Resident set size of a process in KiB (None once it has exited).
fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1).and_then(|v| v.parse().ok())
}

/// The value of one `/metrics` series, 0 when absent.
fn disconnects(hub: &Hub, reason: &str) -> f64 {
    let resp = hub.get("/metrics", None);
    assert_eq!(resp.status, 200, "GET /metrics: {resp:?}");
    let series = format!("realtimehub_disconnects_total{{reason=\"{reason}\"}} ");
    resp.body.lines().find_map(|l| l.strip_prefix(&series)?.trim().parse().ok()).unwrap_or(0.0)
}

/// A WebSocket as `user`, joined to `room`. It is not read
/// again until the end, so what the hub sends it piles up in the hub's queue.
fn sleeper(hub: &Hub, key: &str, user: &str, room: &str) -> Ws {
    // The default receive buffer: a tiny one fills sooner, but then reading the backlog
    // afterwards crawls through zero-window probes.
    let stream = TcpStream::connect(hub.addr).expect("connecting a sleeper");
    stream.set_read_timeout(Some(Duration::from_secs(5))).expect("read timeout");
    let url = format!("ws://{}/?apiKey={}&userId={}", hub.addr, pct(key), pct(user));
    let (socket, _) = tungstenite::client(url, stream).unwrap_or_else(|e| panic!("sleeper upgrade: {e}"));
    let mut ws = Ws { socket, connection_id: String::new() };
    assert_eq!(ws.recv()["type"], "connected");
    ws.join(room);
    ws
}

/// Reads until the server closes (its close code, `Some(None)` for a close without one) or
/// until nothing has come for `quiet` (`None`: still open).
fn read_until_close_or_quiet(ws: &mut Ws, quiet: Duration) -> Option<Option<u16>> {
    ws.socket.get_mut().set_read_timeout(Some(quiet)).expect("read timeout");
    loop {
        match ws.socket.read() {
            Ok(Message::Close(frame)) => return Some(frame.map(|f| u16::from(f.code))),
            Ok(_) => continue,
            Err(tungstenite::Error::Io(e))
                if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) =>
            {
                return None
            }
            Err(e) => panic!("a sleeper's connection ended without a close frame: {e}"),
        }
    }
}

/// Publishes one message and waits for it to come back (the publisher always keeps up).
fn publish(publisher: &mut Ws, content: &str) {
    publisher.send(json!({"type": "message", "room": "busy", "content": content}));
    publisher.recv_until("the publisher's own message", |v: &Value| v["type"] == "message");
}

#[test]
fn past_the_outbound_budget_the_largest_backlogs_are_closed_1008_and_readers_are_untouched() {
    let (budget, per_conn) = (BUDGET.to_string(), PER_CONN.to_string());
    let hub = Hub::start_with(&[
        "--max-outbound-total-bytes",
        &budget,
        "--max-outbound-bytes",
        &per_conn,
        "--max-events-per-second",
        "100000",
    ]);
    let (_, key) = hub.create_project("budget");
    hub.create_room(&key, "busy", "public");
    let sleepers: Vec<Ws> = (0..SLEEPERS).map(|n| sleeper(&hub, &key, &format!("s{n}"), "busy")).collect();

    // A client that reads everything, in its own thread.
    let mut reader = hub.ws(&key, "reader");
    reader.join("busy");
    let stop = Arc::new(AtomicBool::new(false));
    let received = Arc::new(AtomicU64::new(0));
    let reader_thread = {
        let (stop, received) = (stop.clone(), received.clone());
        std::thread::spawn(move || {
            reader.socket.get_mut().set_read_timeout(Some(Duration::from_millis(100))).expect("read timeout");
            while !stop.load(Ordering::Relaxed) {
                match reader.socket.read() {
                    Ok(Message::Text(t)) if t.contains("\"type\":\"message\"") => {
                        received.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(Message::Close(frame)) => panic!("the reading client was closed: {frame:?}"),
                    Ok(_) => {}
                    Err(tungstenite::Error::Io(e))
                        if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
                    Err(e) => panic!("the reading client failed: {e}"),
                }
            }
            reader
        })
    };

    // The hub's resident size, sampled while the room floods.
    let pid = hub.pid();
    let baseline = rss_kib(pid).expect("the hub's RSS");
    let peak = Arc::new(AtomicU64::new(baseline));
    let sampler = {
        let (stop, peak) = (stop.clone(), peak.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                peak.fetch_max(rss_kib(pid).unwrap_or(0), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(2));
            }
        })
    };

    // Phase 1, memory: flood until every sleeper has been cut for the budget.
    let mut publisher = hub.ws(&key, "publisher");
    publisher.join("busy");
    let content = "x".repeat(CONTENT);
    let started = Instant::now();
    let deadline = started + Duration::from_secs(30);
    let mut sent = 0u64;
    let mut cut = 0.0;
    while sent < 3000 && Instant::now() < deadline {
        publish(&mut publisher, &content);
        sent += 1;
        if sent.is_multiple_of(10) {
            cut = disconnects(&hub, "outbound_budget");
            if cut >= SLEEPERS as f64 {
                break;
            }
        }
    }
    let peak_kib = peak.load(Ordering::Relaxed).max(rss_kib(pid).unwrap_or(0));
    assert_eq!(cut, SLEEPERS as f64, "sleepers cut for the budget after {sent} messages ({:?})", started.elapsed());
    let grew = peak_kib.saturating_sub(baseline);
    assert!(
        grew < RSS_BOUND_KIB,
        "hub RSS grew {grew} KiB (baseline {baseline} KiB, peak {peak_kib} KiB) with a {BUDGET}-byte budget"
    );
    drop(sleepers);
    eprintln!("phase 1: {sent} messages, {:?}, RSS +{grew} KiB", started.elapsed());

    // Phase 2, the close frame: ten fresh sleepers; flood only until the first is cut,
    // then all read at once. Each cut one finds 1008 after what it had been sent (cut
    // connections linger 2 s for this); the others are still open.
    let mut fresh: Vec<Ws> = (0..10).map(|n| sleeper(&hub, &key, &format!("f{n}"), "busy")).collect();
    let before = disconnects(&hub, "outbound_budget");
    let deadline = Instant::now() + Duration::from_secs(30);
    while disconnects(&hub, "outbound_budget") == before {
        assert!(Instant::now() < deadline, "no fresh sleeper cut within 30 s ({sent} messages)");
        publish(&mut publisher, &content);
        sent += 1;
    }
    eprintln!("phase 2: first cut after {sent} messages in all, {:?}", started.elapsed());
    let readers: Vec<_> = fresh
        .drain(..)
        .map(|mut ws| std::thread::spawn(move || read_until_close_or_quiet(&mut ws, Duration::from_millis(500))))
        .collect();
    let outcomes: Vec<Option<Option<u16>>> = readers.into_iter().map(|t| t.join().expect("sleeper thread")).collect();
    let closed = outcomes.iter().filter(|o| o.is_some()).count();
    let cut_now = disconnects(&hub, "outbound_budget") - before;
    assert!(closed >= 1 && closed as f64 == cut_now, "{closed} closed, {cut_now} cut: {outcomes:?}");
    assert!(outcomes.iter().flatten().all(|code| *code == Some(1008)), "close codes: {outcomes:?}");

    stop.store(true, Ordering::Relaxed);
    sampler.join().expect("sampler");
    // The readers were never touched: both got every message and still work.
    let mut reader = reader_thread.join().expect("the reading client's thread");
    let wait = Instant::now() + Duration::from_secs(5);
    while received.load(Ordering::Relaxed) < sent && Instant::now() < wait {
        match reader.socket.read() {
            Ok(Message::Text(t)) if t.contains("\"type\":\"message\"") => {
                received.fetch_add(1, Ordering::Relaxed);
            }
            Ok(_) => {}
            Err(tungstenite::Error::Io(e))
                if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(e) => panic!("reading the last messages: {e}"),
        }
    }
    assert_eq!(received.load(Ordering::Relaxed), sent, "the reading client missed messages");
    publisher.send(json!({"type": "message", "room": "busy", "content": "still here"}));
    reader.recv_until("a message after the cuts", |v| v["content"] == "still here");
    publisher.recv_until("its own message after the cuts", |v| v["content"] == "still here");
    assert_eq!(disconnects(&hub, "slow_consumer"), 0.0, "the budget, not the per-connection limit, acted");
}
