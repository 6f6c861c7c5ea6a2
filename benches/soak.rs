//! Soak scenario for RealtimeHub (not run in CI).
//!
//! ```text
//! cargo bench --bench soak -- [--duration SECS] [--warmup SECS] [--threads T]
//!                             [--clients N] [--rooms R] [--pause-ms MS] [--hub-bin PATH]
//! ```
//!
//! Spawns this build's `realtimehub` on a temporary database, creates a project and `--rooms`
//! rooms (default 20), then runs `--threads` worker threads (default 4). Each worker repeats
//! waves until the time is up: connect `--clients` WebSockets (default 16), have each join
//! one to three rooms, send messages (waiting for every `message_id_mapping`), type, set a
//! status, leave a room, read history, and disconnect in one of four ways: a clean close
//! handshake, a plain TCP close without a close frame, a reset (`SO_LINGER` 0), or a drop
//! right after sending a message. Between waves a worker pauses `--pause-ms` (default 200),
//! which keeps the database to a few hundred MB over the default 30 minutes.
//!
//! After `--warmup` seconds (default 30, or a tenth of the duration if that is less) the
//! workers pause, the hub is left to settle (project `connections` == 0 in
//! `/api/v1/stats`), and its resident set size and open descriptors are sampled as the
//! baseline. After `--duration` seconds (default 1800) of waves the same is sampled again.
//! The program prints both and exits 1 if RSS grew by more than 10 % plus 4 MiB, or if the
//! descriptors did not return to the baseline; 0 otherwise.
//!
//! All traffic goes to 127.0.0.1, every read has a timeout, and the hub is killed on exit.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tungstenite::{Message, WebSocket};

const IO_TIMEOUT: Duration = Duration::from_secs(5);

struct Options {
    duration: Duration,
    warmup: Duration,
    threads: usize,
    clients: usize,
    rooms: usize,
    pause: Duration,
    hub_bin: String,
}

fn parse_args() -> Options {
    let mut o = Options {
        duration: Duration::from_secs(1800),
        warmup: Duration::ZERO,
        threads: 4,
        clients: 16,
        rooms: 20,
        pause: Duration::from_millis(200),
        hub_bin: env!("CARGO_BIN_EXE_realtimehub").to_string(),
    };
    let mut warmup = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = |name: &str| args.next().unwrap_or_else(|| usage(&format!("{name} needs a value")));
        let num = |name: &str, v: String| v.parse::<u64>().unwrap_or_else(|_| usage(&format!("{name}: not a number")));
        match a.as_str() {
            "--duration" => o.duration = Duration::from_secs(num("--duration", value("--duration"))),
            "--warmup" => warmup = Some(Duration::from_secs(num("--warmup", value("--warmup")))),
            "--threads" => o.threads = num("--threads", value("--threads")).max(1) as usize,
            "--clients" => o.clients = num("--clients", value("--clients")).max(1) as usize,
            "--rooms" => o.rooms = num("--rooms", value("--rooms")).max(3) as usize,
            "--pause-ms" => o.pause = Duration::from_millis(num("--pause-ms", value("--pause-ms"))),
            "--hub-bin" => o.hub_bin = value("--hub-bin"),
            "--bench" => {} // cargo bench passes this to harness = false targets
            "--help" | "-h" => usage(""),
            other => usage(&format!("unknown argument {other}")),
        }
    }
    o.warmup = warmup.unwrap_or_else(|| Duration::from_secs(30).min(o.duration / 10));
    o
}

fn usage(err: &str) -> ! {
    if !err.is_empty() {
        eprintln!("soak: {err}");
    }
    eprintln!(
        "usage: cargo bench --bench soak -- [--duration SECS] [--warmup SECS] [--threads T] [--clients N] \
         [--rooms R] [--pause-ms MS] [--hub-bin PATH]"
    );
    std::process::exit(2)
}

// ---------------------------------------------------------------- the hub process

/// The spawned hub; killed on drop.
struct HubProcess {
    child: Child,
    addr: SocketAddr,
    dir: tempfile::TempDir,
}

impl HubProcess {
    fn spawn(bin: &str) -> HubProcess {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut child = Command::new(bin)
            .args(["--host", "127.0.0.1", "--port", "0", "--db"])
            .arg(dir.path().join("soak.db"))
            .args(["--max-events-per-second", "1000", "--max-connections-per-ip", "10000"])
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {bin}: {e}"));
        let mut lines = BufReader::new(child.stdout.take().expect("piped stdout")).lines();
        let port = loop {
            let line = match lines.next() {
                Some(Ok(line)) => line,
                _ => panic!("the hub exited before printing its ready line"),
            };
            if let Some(rest) = line.trim().strip_prefix("listening on http://") {
                break rest.rsplit(':').next().and_then(|p| p.parse::<u16>().ok()).expect("port in ready line");
            }
        };
        std::thread::spawn(move || for _ in lines {}); // keep draining stdout
        HubProcess { child, addr: SocketAddr::from(([127, 0, 0, 1], port)), dir }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Bytes of the database files (main, WAL, shared memory).
    fn db_bytes(&self) -> u64 {
        let files = std::fs::read_dir(self.dir.path()).map(|d| d.filter_map(Result::ok).collect::<Vec<_>>());
        files.unwrap_or_default().iter().filter_map(|e| e.metadata().ok()).map(|m| m.len()).sum()
    }

    /// SIGTERM, then up to 10 s for the exit.
    fn stop(mut self) -> Option<std::process::ExitStatus> {
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for HubProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0)
}

// ---------------------------------------------------------------- HTTP

/// One request with `Connection: close`; the status and the JSON body.
fn http(addr: SocketAddr, method: &str, path: &str, key: Option<&str>, body: Option<&Value>) -> (u16, Value) {
    let mut s = TcpStream::connect_timeout(&addr, IO_TIMEOUT).expect("connecting to the hub");
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    s.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    let body = body.map(Value::to_string).unwrap_or_default();
    let key = key.map(|k| format!("X-API-Key: {k}\r\n")).unwrap_or_default();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{key}Content-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).expect("writing a request");
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw);
    let status = text.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

/// The project's open WebSocket connections per `/api/v1/stats`.
fn project_connections(addr: SocketAddr, key: &str) -> u64 {
    let (status, v) = http(addr, "GET", "/api/v1/stats", Some(key), None);
    assert_eq!(status, 200, "GET /api/v1/stats: {v}");
    v["connections"].as_u64().expect("connections")
}

// ---------------------------------------------------------------- clients

/// Counters shared by the workers.
#[derive(Default)]
struct Totals {
    connects: AtomicU64,
    messages: AtomicU64,
    joins: AtomicU64,
    leaves: AtomicU64,
    errors: AtomicU64,
    waves: AtomicU64,
}

/// A small xorshift generator per worker.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}

type Ws = WebSocket<TcpStream>;

fn connect(addr: SocketAddr, key: &str, user: &str) -> Option<Ws> {
    let stream = TcpStream::connect_timeout(&addr, IO_TIMEOUT).ok()?;
    stream.set_read_timeout(Some(IO_TIMEOUT)).ok()?;
    stream.set_write_timeout(Some(IO_TIMEOUT)).ok()?;
    stream.set_nodelay(true).ok()?;
    let (mut ws, _) = tungstenite::client(format!("ws://{addr}/?apiKey={key}&userId={user}"), stream).ok()?;
    until(&mut ws, |v| v["type"] == "connected")?;
    Some(ws)
}

/// Reads until a frame matches `pred` (None on error, close or timeout).
fn until(ws: &mut Ws, pred: impl Fn(&Value) -> bool) -> Option<Value> {
    loop {
        match ws.read().ok()? {
            Message::Text(t) => {
                let v: Value = serde_json::from_str(&t).ok()?;
                if pred(&v) {
                    return Some(v);
                }
                if v["type"] == "error" {
                    return None;
                }
            }
            Message::Close(_) => return None,
            _ => {}
        }
    }
}

fn send(ws: &mut Ws, v: Value) -> Option<()> {
    ws.send(Message::text(v.to_string())).ok()
}

/// Sets SO_LINGER to 0 so that closing the socket sends a reset.
fn linger_zero(s: &TcpStream) {
    let l = libc::linger { l_onoff: 1, l_linger: 0 };
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            &l as *const libc::linger as *const libc::c_void,
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
}

/// One client's life after its connect: rooms, messages, typing, status, a leave, history.
fn session(ws: &mut Ws, rooms: &[String], rng: &mut Rng, tag: &str, totals: &Totals) -> Option<()> {
    let mut joined: Vec<&String> = Vec::new();
    for _ in 0..1 + rng.below(3) {
        let room = &rooms[rng.below(rooms.len())];
        send(ws, json!({ "type": "join", "room": room }))?;
        until(ws, |v| v["type"] == "joined" && v["room"] == room.as_str())?;
        totals.joins.fetch_add(1, Ordering::Relaxed);
        if !joined.contains(&room) {
            joined.push(room);
        }
    }
    for i in 0..1 + rng.below(2) {
        let room = joined[rng.below(joined.len())];
        let temp_id = format!("{tag}-{i}");
        send(ws, json!({ "type": "typing", "room": room, "isTyping": true }))?;
        let content = format!("soak {temp_id} {}", "x".repeat(rng.below(200)));
        send(ws, json!({ "type": "message", "room": room, "content": content, "tempId": temp_id }))?;
        until(ws, |v| v["type"] == "message_id_mapping" && v["tempId"] == temp_id.as_str())?;
        totals.messages.fetch_add(1, Ordering::Relaxed);
    }
    let status = ["away", "busy", "online"][rng.below(3)];
    send(ws, json!({ "type": "presence", "status": status }))?;
    if rng.below(2) == 0 {
        let room = joined[0];
        send(ws, json!({ "type": "history", "room": room, "limit": 20 }))?;
        until(ws, |v| v["type"] == "history")?;
    }
    if joined.len() > 1 || rng.below(2) == 0 {
        let room = joined[rng.below(joined.len())];
        send(ws, json!({ "type": "leave", "room": room }))?;
        until(ws, |v| v["type"] == "left")?;
        totals.leaves.fetch_add(1, Ordering::Relaxed);
    }
    Some(())
}

/// Ends a connection one of four ways.
fn disconnect(mut ws: Ws, how: usize, room: &str) {
    match how {
        0 => {
            // Clean close handshake.
            if ws.close(None).is_ok() {
                while ws.read().is_ok() {}
            }
        }
        1 => {}                         // TCP close without a close frame (drop)
        2 => linger_zero(ws.get_ref()), // reset
        _ => {
            // Gone right after a send, without reading the answer.
            let _ = ws.send(Message::text(json!({ "type": "message", "room": room, "content": "bye" }).to_string()));
        }
    }
}

/// Runs waves until `stop` is set, pausing while `paused` is set.
fn worker(id: usize, addr: SocketAddr, key: String, rooms: Vec<String>, o: Arc<Options>, ctl: Arc<Control>) {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ (id as u64 + 1).wrapping_mul(0xD1B5_4A32_D192_ED03));
    let mut wave = 0u64;
    while !ctl.stop.load(Ordering::Relaxed) {
        if ctl.paused.load(Ordering::Relaxed) {
            ctl.idle[id].store(true, Ordering::Relaxed);
            std::thread::sleep(Duration::from_millis(20));
            continue;
        }
        ctl.idle[id].store(false, Ordering::Relaxed);
        wave += 1;
        let mut open = Vec::new();
        for c in 0..o.clients {
            let user = format!("w{id}u{}", rng.below(o.clients * 2));
            match connect(addr, &key, &user) {
                Some(ws) => {
                    ctl.totals.connects.fetch_add(1, Ordering::Relaxed);
                    open.push((ws, format!("w{id}-{wave}-{c}")));
                }
                None => {
                    ctl.totals.errors.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        for (ws, tag) in &mut open {
            if session(ws, &rooms, &mut rng, tag, &ctl.totals).is_none() {
                ctl.totals.errors.fetch_add(1, Ordering::Relaxed);
            }
        }
        for (ws, _) in open {
            let how = rng.below(4);
            disconnect(ws, how, &rooms[0]);
        }
        ctl.totals.waves.fetch_add(1, Ordering::Relaxed);
        std::thread::sleep(o.pause);
    }
    ctl.idle[id].store(true, Ordering::Relaxed);
}

struct Control {
    stop: AtomicBool,
    paused: AtomicBool,
    idle: Vec<AtomicBool>,
    totals: Totals,
}

// ---------------------------------------------------------------- main

/// Waits until every worker is idle and the hub counts no connection of the project, then
/// samples RSS and descriptors (the lowest of a few samples, so a connection still being
/// torn down does not count).
fn settle_and_sample(hub: &HubProcess, key: &str, ctl: &Control, fds_target: Option<usize>) -> (u64, usize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !ctl.idle.iter().all(|i| i.load(Ordering::Relaxed)) {
        assert!(Instant::now() < deadline, "workers did not pause within 60 s");
        std::thread::sleep(Duration::from_millis(20));
    }
    while project_connections(hub.addr, key) != 0 {
        assert!(Instant::now() < deadline, "connections did not drop to 0 within 60 s");
        std::thread::sleep(Duration::from_millis(100));
    }
    // Lingering closes end within 2 s; descriptors of closed connections go with them.
    let fd_deadline = Instant::now() + Duration::from_secs(10);
    let mut fds = fd_count(hub.pid());
    loop {
        std::thread::sleep(Duration::from_millis(250));
        fds = fds.min(fd_count(hub.pid()));
        let reached = fds_target.is_none_or(|t| fds <= t);
        if (reached && Instant::now() + Duration::from_secs(8) >= fd_deadline) || Instant::now() >= fd_deadline {
            break;
        }
    }
    (rss_kib(hub.pid()), fds)
}

fn main() {
    let o = Arc::new(parse_args());
    let hub = HubProcess::spawn(&o.hub_bin);
    let pid = hub.pid();
    let (status, project) = http(hub.addr, "POST", "/api/v1/projects", None, Some(&json!({ "name": "soak" })));
    assert_eq!(status, 201, "create project: {project}");
    let key = project["apiKey"].as_str().expect("apiKey").to_string();
    let rooms: Vec<String> = (0..o.rooms).map(|i| format!("room{i}")).collect();
    for r in &rooms {
        let (status, v) = http(hub.addr, "POST", "/api/v1/rooms", Some(&key), Some(&json!({ "name": r })));
        assert_eq!(status, 201, "create room {r}: {v}");
    }
    eprintln!(
        "soak: hub pid {pid} on {}; {} threads × {} clients per wave, {} rooms; warm-up {:?}, duration {:?}",
        hub.addr, o.threads, o.clients, o.rooms, o.warmup, o.duration
    );

    let ctl = Arc::new(Control {
        stop: AtomicBool::new(false),
        paused: AtomicBool::new(false),
        idle: (0..o.threads).map(|_| AtomicBool::new(false)).collect(),
        totals: Totals::default(),
    });
    let workers: Vec<_> = (0..o.threads)
        .map(|id| {
            let (key, rooms, o, ctl) = (key.clone(), rooms.clone(), o.clone(), ctl.clone());
            let addr = hub.addr;
            std::thread::spawn(move || worker(id, addr, key, rooms, o, ctl))
        })
        .collect();

    // Warm-up, then the baseline with every client gone.
    std::thread::sleep(o.warmup);
    ctl.paused.store(true, Ordering::Relaxed);
    let (rss_base, fds_base) = settle_and_sample(&hub, &key, &ctl, None);
    eprintln!("soak: baseline after warm-up: RSS {rss_base} KiB, {fds_base} descriptors");
    let t = &ctl.totals;
    let snapshot =
        || [&t.waves, &t.connects, &t.joins, &t.leaves, &t.messages, &t.errors].map(|c| c.load(Ordering::Relaxed));
    let at_base = snapshot();
    ctl.paused.store(false, Ordering::Relaxed);

    // The soak itself, with a progress line every 10 s.
    let started = Instant::now();
    let mut next_report = started + Duration::from_secs(10);
    while started.elapsed() < o.duration {
        std::thread::sleep(Duration::from_millis(100).min(o.duration.saturating_sub(started.elapsed())));
        if Instant::now() >= next_report {
            next_report += Duration::from_secs(10);
            let [waves, connects, _, _, messages, errors] = snapshot();
            eprintln!(
                "soak: {:>5} s  waves {waves}  connects {connects}  messages {messages}  errors {errors}  \
                 RSS {} KiB  fds {}",
                started.elapsed().as_secs(),
                rss_kib(pid),
                fd_count(pid)
            );
        }
    }
    ctl.paused.store(true, Ordering::Relaxed);
    let (rss_end, fds_end) = settle_and_sample(&hub, &key, &ctl, Some(fds_base));
    ctl.stop.store(true, Ordering::Relaxed);
    for w in workers {
        let _ = w.join();
    }
    let end = snapshot();
    let d: Vec<u64> = end.iter().zip(at_base.iter()).map(|(e, b)| e - b).collect();
    let db_mib = hub.db_bytes() / (1024 * 1024);
    let exit = hub.stop();

    let rss_limit = rss_base + rss_base / 10 + 4096;
    let rss_ok = rss_end <= rss_limit;
    let fds_ok = fds_end <= fds_base;
    println!(
        "RESULT scenario=soak seconds={} waves={} connects={} joins={} leaves={} messages={} errors={} \
         rss_base_kib={rss_base} rss_end_kib={rss_end} rss_limit_kib={rss_limit} fds_base={fds_base} fds_end={fds_end} \
         db_mib={db_mib} hub_exit={} ok={}",
        o.duration.as_secs(),
        d[0],
        d[1],
        d[2],
        d[3],
        d[4],
        d[5],
        exit.map(|s| s.to_string()).unwrap_or_else(|| "timeout".into()),
        rss_ok && fds_ok
    );
    if !rss_ok {
        eprintln!("soak: FAIL: RSS grew from {rss_base} KiB to {rss_end} KiB (limit {rss_limit} KiB)");
    }
    if !fds_ok {
        eprintln!("soak: FAIL: {fds_end} descriptors open at the end, {fds_base} at the baseline");
    }
    std::process::exit(if rss_ok && fds_ok { 0 } else { 1 });
}
