//! Micro-benchmarks of the hub's hot paths through the library's public API,
//! with a plain timing loop (no sockets, no threads):
//!
//! - `decode_message`: `decode_client_event` on a typical chat `message` event;
//! - `message_1_member`: one `message` event end to end through the sans-IO
//!   core (decode, tempId lookup, SQLite insert in `:memory:`, commit, ack and
//!   broadcast frames serialised once, outputs drained) in a room of one;
//! - `fanout_1000`: the same in a room of 1000 joined connections (the
//!   broadcast frame is encoded once; the recipient list is built per message);
//! - `history_newest_50` / `history_before_50`: a `history` event against a
//!   room holding 100 000 stored messages.
//!
//! `cargo bench --bench micro` prints one `RESULT micro=NAME ns_per_op=...`
//! line per case. Each case runs five rounds of about 0.3 s after a warm-up
//! and reports the median round (and the best), plus `other_cpu_pct`, the
//! share of a core other processes took meanwhile (the machine has two cores;
//! a busy neighbour makes the figure noisy).

use std::fmt::Write as _;
use std::hint::black_box;
use std::time::{Duration, Instant};

use realtimehub::core::{decode_client_event, ConnId, Entropy, Hub, HubConfig, Now, Output};
use realtimehub::http::Request;
use realtimehub::store::{Durability, SqliteStore};

/// The address the benchmark's REST requests come from.
const LOCAL: std::net::IpAddr = std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

/// Deterministic randomness for ids and keys (xorshift64).
struct BenchEntropy(u64);

impl Entropy for BenchEntropy {
    fn fill(&mut self, buf: &mut [u8]) {
        for b in buf {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            *b = self.0 as u8;
        }
    }
}

/// (busy CPU of the whole machine, CPU of this process), in clock ticks, from
/// /proc: their difference over a case is what other processes took.
fn cpu_ticks() -> Option<(f64, f64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let f: Vec<f64> =
        stat.lines().next()?.strip_prefix("cpu ")?.split_whitespace().filter_map(|v| v.parse().ok()).collect();
    // user nice system steal (interrupts left out).
    let machine = f.first()? + f.get(1)? + f.get(2)? + f.get(7)?;
    let me = std::fs::read_to_string("/proc/self/stat").ok()?;
    let fields: Vec<&str> = me[me.rfind(')')? + 1..].split_whitespace().collect();
    let own = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some((machine, own))
}

/// Runs `op` in rounds and prints ns per call; `per` adds a per-unit figure
/// (e.g. per recipient). `other_cpu_pct` is the share of one core other
/// processes used meanwhile: above a few percent the figure is noisy.
fn bench(name: &str, per: Option<(&str, f64)>, mut op: impl FnMut()) {
    // Warm-up, and a first estimate of the cost of one call.
    let warm = Instant::now();
    let mut calls = 0u64;
    while warm.elapsed() < Duration::from_millis(200) {
        op();
        calls += 1;
    }
    let est = warm.elapsed().as_nanos() as f64 / calls as f64;
    let batch = ((300e6 / est) as u64).max(1);
    let mut rounds = Vec::with_capacity(5);
    let (began, ticks0) = (Instant::now(), cpu_ticks());
    for _ in 0..5 {
        let t = Instant::now();
        for _ in 0..batch {
            op();
        }
        rounds.push(t.elapsed().as_nanos() as f64 / batch as f64);
    }
    rounds.sort_by(f64::total_cmp);
    let (median, best) = (rounds[2], rounds[0]);
    let mut line =
        format!("RESULT micro={name} ns_per_op={median:.1} best_ns_per_op={best:.1} iters_per_round={batch}");
    if let Some((unit, n)) = per {
        let _ = write!(line, " ns_per_{unit}={:.2}", median / n);
    }
    if let (Some((m0, o0)), Some((m1, o1))) = (ticks0, cpu_ticks()) {
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
        let other = ((m1 - m0) - (o1 - o0)) / hz / began.elapsed().as_secs_f64() * 100.0;
        let _ = write!(line, " other_cpu_pct={:.0}", other.max(0.0));
    }
    println!("{line}");
}

fn request(method: &str, path: &str, key: Option<&str>, body: &str) -> Request {
    let mut headers = vec![("content-type".to_string(), "application/json".to_string())];
    if let Some(key) = key {
        headers.push(("x-api-key".to_string(), key.to_string()));
    }
    Request {
        method: method.into(),
        path: path.into(),
        query: Vec::new(),
        headers,
        body: body.as_bytes().to_vec(),
        http11: true,
    }
}

/// Commits and drains every output; returns (frames sent to one connection,
/// deliveries of broadcasts, HTTP responses).
fn drain(hub: &mut Hub) -> (usize, usize, Vec<Vec<u8>>) {
    hub.commit().expect("commit");
    let (mut frames, mut deliveries, mut bodies) = (0, 0, Vec::new());
    while let Some(output) = hub.poll_output() {
        match output {
            Output::Frame { wire, .. } => {
                frames += 1;
                black_box(wire);
            }
            Output::Broadcast { to, wire } => {
                deliveries += to.len();
                black_box(wire);
            }
            Output::Response { response, .. } => bodies.push(response.body),
            other => {
                black_box(other);
            }
        }
    }
    (frames, deliveries, bodies)
}

/// Drains outputs inside a timing loop, touching each without inspecting it.
#[inline]
fn drain_fast(hub: &mut Hub) {
    hub.commit().expect("commit");
    while let Some(output) = hub.poll_output() {
        black_box(output);
    }
}

struct Fixture {
    hub: Hub,
    now: Now,
    key: String,
    next_conn: usize,
}

impl Fixture {
    fn new() -> Fixture {
        let store = SqliteStore::open(":memory:", Durability::Normal).expect("open :memory:");
        let now = Now { mono: Instant::now(), unix_ms: 0 };
        // The default budget (100 events/s per connection) would refuse a
        // timing loop; everything else is the default.
        let config = HubConfig { max_events_per_second: u32::MAX, ..HubConfig::default() };
        let mut hub =
            Hub::new(config, Box::new(store), Box::new(BenchEntropy(0x2545_F491_4F6C_DD1D)), now).expect("hub");
        hub.handle_http(
            ConnId::new(0, 0),
            &request("POST", "/api/v1/projects", None, r#"{"name":"bench"}"#),
            LOCAL,
            now,
        );
        let (_, _, bodies) = drain(&mut hub);
        let answer: serde_json::Value = serde_json::from_slice(&bodies[0]).expect("project JSON");
        let key = answer["apiKey"].as_str().expect("apiKey").to_string();
        Fixture { hub, now, key, next_conn: 1 }
    }

    fn room(&mut self, name: &str) {
        let body = format!(r#"{{"name":"{name}","type":"public"}}"#);
        self.hub.handle_http(
            ConnId::new(0, 0),
            &request("POST", "/api/v1/rooms", Some(&self.key), &body),
            LOCAL,
            self.now,
        );
        let (_, _, bodies) = drain(&mut self.hub);
        assert!(String::from_utf8_lossy(&bodies[0]).contains(name), "room not created: {:?}", bodies);
    }

    /// Opens a WebSocket client and joins `room`.
    fn client(&mut self, room: &str) -> ConnId {
        let conn = ConnId::new(self.next_conn, 1);
        let mut req = request("GET", "/", None, "");
        req.query = vec![("apiKey".into(), self.key.clone()), ("userId".into(), format!("u{}", self.next_conn))];
        self.next_conn += 1;
        let session = self.hub.authorize_ws(&req, self.now).unwrap_or_else(|r| panic!("authorize_ws refused: {r:?}"));
        self.hub.handle_ws_open(conn, session, self.now);
        let join = format!(r#"{{"type":"join","room":"{room}"}}"#);
        self.hub.handle_ws_text(conn, &join, self.now);
        drain_fast(&mut self.hub);
        conn
    }
}

/// A typical chat message event with a fresh tempId (a repeated tempId is
/// deduplicated, not stored).
fn message_event(buf: &mut String, room: &str, n: u64) {
    buf.clear();
    let _ = write!(
        buf,
        r#"{{"type":"message","room":"{room}","content":"Hello everyone, the build is green again - shipping at 5.","tempId":"tmp-{n}"}}"#
    );
}

fn main() {
    // `cargo bench` passes `--bench`; a name filter may follow.
    let filter: Option<String> = std::env::args().skip(1).find(|a| !a.starts_with("--"));
    let wanted = |name: &str| filter.as_deref().is_none_or(|f| name.contains(f));

    if wanted("decode_message") {
        let text = r#"{"type":"message","room":"general","content":"Hello everyone, the build is green again - shipping at 5.","tempId":"tmp-1732233445-17"}"#;
        bench("decode_message", None, || {
            let event = decode_client_event(black_box(text));
            black_box(event.is_ok());
            drop(black_box(event));
        });
    }

    if wanted("message_1_member") {
        let mut f = Fixture::new();
        f.room("solo");
        let conn = f.client("solo");
        let mut text = String::new();
        let mut n = 0u64;
        message_event(&mut text, "solo", n);
        f.hub.handle_ws_text(conn, &text, f.now);
        let (frames, deliveries, _) = drain(&mut f.hub);
        assert_eq!((frames, deliveries), (1, 1), "expected an ack and one delivery");
        bench("message_1_member", None, || {
            n += 1;
            message_event(&mut text, "solo", n);
            f.hub.handle_ws_text(conn, black_box(&text), f.now);
            drain_fast(&mut f.hub);
        });
    }

    if wanted("fanout_1000") {
        let mut f = Fixture::new();
        f.room("big");
        let members: Vec<ConnId> = (0..1000).map(|_| f.client("big")).collect();
        let sender = members[0];
        let mut text = String::new();
        let mut n = 0u64;
        message_event(&mut text, "big", n);
        f.hub.handle_ws_text(sender, &text, f.now);
        let (frames, deliveries, _) = drain(&mut f.hub);
        assert_eq!((frames, deliveries), (1, 1000), "expected an ack and 1000 deliveries");
        bench("fanout_1000", Some(("delivery", 1000.0)), || {
            n += 1;
            message_event(&mut text, "big", n);
            f.hub.handle_ws_text(sender, black_box(&text), f.now);
            drain_fast(&mut f.hub);
        });
    }

    if wanted("history") {
        let mut f = Fixture::new();
        f.room("h");
        let conn = f.client("h");
        let mut text = String::new();
        let fill = Instant::now();
        for n in 0..100_000u64 {
            message_event(&mut text, "h", n);
            f.hub.handle_ws_text(conn, &text, f.now);
            if n % 1000 == 999 {
                drain_fast(&mut f.hub);
            }
        }
        drain_fast(&mut f.hub);
        eprintln!("micro: stored 100000 messages in {:.2}s", fill.elapsed().as_secs_f64());
        let newest = r#"{"type":"history","room":"h","limit":50}"#;
        f.hub.handle_ws_text(conn, newest, f.now);
        let (frames, _, _) = drain(&mut f.hub);
        assert_eq!(frames, 1, "expected one history frame");
        bench("history_newest_50", None, || {
            f.hub.handle_ws_text(conn, black_box(newest), f.now);
            drain_fast(&mut f.hub);
        });
        let middle = r#"{"type":"history","room":"h","before":50000,"limit":50}"#;
        bench("history_before_50", None, || {
            f.hub.handle_ws_text(conn, black_box(middle), f.now);
            drain_fast(&mut f.hub);
        });
    }
}
