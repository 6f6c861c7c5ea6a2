//! Peak memory with many WebSockets that stop reading (issue 17, item 7): the figure behind
//! `--max-outbound-total-bytes` in docs/BENCHMARKS.md.
//!
//! ```text
//! cargo bench --bench budget -- --connections N [--size BYTES] [--hub-arg ARG]...
//! ```
//!
//! Spawns the hub (temporary database, raised connection, rate and idle limits, plus any
//! `--hub-arg`), opens N WebSockets on 127.0.0.1 that join one room and never read again
//! (4 KiB receive buffers, so the backlog lands in the hub's queues rather than the
//! kernel's), and one publisher that sends `--size`-byte messages (default 1024) to that
//! room, each once its previous one came back (so the publisher itself always keeps up).
//! It stops when every non-reader has been closed, after 20,000 messages, or after 120 s,
//! whichever comes first, sampling the hub's VmRSS every 5 ms. Prints
//! `RESULT scenario=budget connections=N baseline_kib=… peak_kib=… cut_budget=…
//! cut_slow=… messages=… secs=…`.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tungstenite::{Message, WebSocket};

const USAGE: &str = "usage: cargo bench --bench budget -- --connections N [--size BYTES] [--hub-arg ARG]...";

struct Opts {
    connections: usize,
    size: usize,
    hub_args: Vec<String>,
}

fn parse_opts(args: Vec<String>) -> Result<Option<Opts>, String> {
    let mut opts = Opts { connections: 0, size: 1024, hub_args: Vec::new() };
    let mut it = args.into_iter().filter(|a| a != "--bench");
    while let Some(arg) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--connections" => opts.connections = value()?.parse().map_err(|e| format!("--connections: {e}"))?,
            "--size" => opts.size = value()?.parse().map_err(|e| format!("--size: {e}"))?,
            "--hub-arg" => opts.hub_args.push(value()?),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok((opts.connections > 0).then_some(opts))
}

/// Raises the soft open-file limit to the hard one; returns the new soft limit.
fn raise_nofile() -> u64 {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit with a pointer to a live rlimit.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 0;
        }
        lim.rlim_cur = lim.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
    }
    lim.rlim_cur
}

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// One request on a fresh connection; the response body.
fn http(addr: SocketAddr, method: &str, path: &str, key: Option<&str>, body: &str) -> String {
    let mut s = TcpStream::connect(addr).expect("connecting to the hub");
    s.set_read_timeout(Some(Duration::from_secs(10))).expect("read timeout");
    let key = key.map(|k| format!("X-API-Key: {k}\r\n")).unwrap_or_default();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{key}Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).expect("writing a request");
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default()
}

fn disconnects(addr: SocketAddr, reason: &str) -> u64 {
    let series = format!("realtimehub_disconnects_total{{reason=\"{reason}\"}} ");
    http(addr, "GET", "/metrics", None, "")
        .lines()
        .find_map(|l| l.strip_prefix(&series)?.trim().parse().ok())
        .unwrap_or(0)
}

fn json_field(body: &str, field: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"));
    v[field].as_str().unwrap_or_else(|| panic!("no {field} in {body}")).to_string()
}

/// A WebSocket as `user`, joined to room `busy`; `rcvbuf` sets a small receive buffer.
fn open(addr: SocketAddr, key: &str, user: &str, rcvbuf: Option<libc::c_int>) -> WebSocket<TcpStream> {
    let stream = TcpStream::connect(addr).expect("connecting a WebSocket");
    if let Some(size) = rcvbuf {
        // SAFETY: setsockopt on a socket we own, with a pointer to a live c_int and its size.
        unsafe {
            libc::setsockopt(
                stream.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVBUF,
                (&size as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
    }
    stream.set_read_timeout(Some(Duration::from_secs(10))).expect("read timeout");
    // Without it each handshake and join waits out a delayed ACK.
    stream.set_nodelay(true).expect("nodelay");
    let url = format!("ws://{addr}/?apiKey={key}&userId={user}");
    let (mut ws, _) = tungstenite::client(url, stream).unwrap_or_else(|e| panic!("upgrade: {e}"));
    ws.send(Message::text(r#"{"type":"join","room":"busy"}"#)).expect("join");
    loop {
        match ws.read().expect("reading until joined") {
            Message::Text(t) if t.contains("\"type\":\"joined\"") => return ws,
            Message::Text(t) if t.contains("\"type\":\"error\"") => panic!("join refused: {t}"),
            _ => {}
        }
    }
}

fn start_hub(opts: &Opts, db: &std::path::Path) -> (Child, SocketAddr) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_realtimehub"))
        .args(["--host", "127.0.0.1", "--port", "0", "--db"])
        .arg(db)
        .args(["--max-connections", "20000", "--max-connections-per-ip", "20000"])
        .args(["--max-events-per-second", "1000000"])
        // Opening thousands of silent sockets takes a while: none may go idle meanwhile.
        .args(["--ws-idle-timeout-ms", "600000"])
        .args(&opts.hub_args)
        .env("RUST_LOG", "error")
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawning the hub");
    let stdout = child.stdout.take().expect("piped stdout");
    let mut lines = BufReader::new(stdout).lines();
    let port = loop {
        let line = lines.next().and_then(Result::ok).expect("the hub's ready line");
        if let Some(rest) = line.trim().strip_prefix("listening on http://") {
            break rest.rsplit(':').next().and_then(|p| p.parse::<u16>().ok()).expect("a port");
        }
    };
    std::thread::spawn(move || for _ in lines {});
    (child, SocketAddr::from(([127, 0, 0, 1], port)))
}

fn main() {
    let opts = match parse_opts(std::env::args().skip(1).collect()) {
        Ok(Some(o)) => o,
        Ok(None) => {
            eprintln!("budget: no --connections given, nothing to run.\n{USAGE}");
            return;
        }
        Err(e) => {
            eprintln!("budget: {e}\n{USAGE}");
            std::process::exit(2);
        }
    };
    let nofile = raise_nofile();
    if nofile < opts.connections as u64 * 2 + 256 {
        eprintln!("budget: warning: open-file limit {nofile} is low for {} connections", opts.connections);
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let (mut hub, addr) = start_hub(&opts, &dir.path().join("hub.db"));
    let pid = hub.id();
    let key = json_field(&http(addr, "POST", "/api/v1/projects", None, r#"{"name":"budget"}"#), "apiKey");
    http(addr, "POST", "/api/v1/rooms", Some(&key), r#"{"name":"busy","type":"public"}"#);

    let sleepers: Vec<_> = (0..opts.connections).map(|n| open(addr, &key, &format!("s{n}"), Some(4096))).collect();
    let mut publisher = open(addr, &key, "publisher", None);
    let baseline = rss_kib(pid).expect("the hub's RSS");

    let stop = Arc::new(AtomicBool::new(false));
    let peak = Arc::new(AtomicU64::new(baseline));
    let sampler = {
        let (stop, peak) = (stop.clone(), peak.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                peak.fetch_max(rss_kib(pid).unwrap_or(0), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    };

    let message = format!(r#"{{"type":"message","room":"busy","content":"{}"}}"#, "x".repeat(opts.size));
    let started = Instant::now();
    let mut sent = 0u64;
    let (mut cut_budget, mut cut_slow) = (0, 0);
    while sent < 20_000 && started.elapsed() < Duration::from_secs(120) {
        publisher.send(Message::text(message.as_str())).expect("publishing");
        loop {
            match publisher.read().expect("the publisher reading its message back") {
                Message::Text(t) if t.contains("\"type\":\"message\"") => break,
                Message::Close(f) => panic!("the publisher was closed: {f:?}"),
                _ => {}
            }
        }
        sent += 1;
        if sent.is_multiple_of(50) {
            cut_budget = disconnects(addr, "outbound_budget");
            cut_slow = disconnects(addr, "slow_consumer");
            if (cut_budget + cut_slow) as usize >= opts.connections {
                break;
            }
        }
    }
    let secs = started.elapsed().as_secs_f64();
    let open_now = http(addr, "GET", "/stats", None, "");
    let reasons: Vec<String> = http(addr, "GET", "/metrics", None, "")
        .lines()
        .filter(|l| l.starts_with("realtimehub_disconnects_total{"))
        .map(str::to_string)
        .collect();
    eprintln!("budget: at the end {open_now}; {reasons:?}");
    stop.store(true, Ordering::Relaxed);
    let _ = sampler.join();
    let peak = peak.load(Ordering::Relaxed);
    println!(
        "RESULT scenario=budget connections={} size={} hub_args={:?} baseline_kib={baseline} peak_kib={peak} \
         growth_mib={:.0} cut_budget={cut_budget} cut_slow={cut_slow} messages={sent} secs={secs:.1}",
        opts.connections,
        opts.size,
        opts.hub_args.join(" "),
        (peak.saturating_sub(baseline)) as f64 / 1024.0,
    );
    drop(sleepers);
    let _ = hub.kill();
    let _ = hub.wait();
}
