//! Hardening tests against the real binary: every resource limit of `docs/PROTOCOL.md` §10
//! (connections in total and per address, frame and message size, rooms per connection,
//! the per-connection event budget, the outbound queue of a slow consumer, the request-head
//! deadline, running out of file descriptors) and the access controls of §7.3/§7.4 (signed
//! user tokens, `requireTokens`, the WebSocket `Origin` allow-list).
//!
//! Every wait is for an expected answer, frame, close or metric, bounded by a deadline.
//! Sleeps appear only where the passing of time is itself under test (a deadline, a rate).

mod common;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use common::{
    cpu_time_of, expect_http_status, metric_value, metrics_text, pct, rss_kib_of, unix_now_secs, Http, Hub, Ws,
};
use memchr::memmem;
use mio::{Events, Interest, Poll, Token};
use realtimehub::core::token;
use serde_json::{json, Value};
use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::fd::FromRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tungstenite::client::IntoClientRequest;
use tungstenite::http::header::{HeaderName, HeaderValue};
use tungstenite::{Error as WsError, Message};

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// The latency comparison runs alone: it takes this lock exclusively, every other test
/// shares it, so the other tests' hubs do not compete with it for the CPU.
static QUIET: std::sync::RwLock<()> = std::sync::RwLock::new(());

fn shared() -> std::sync::RwLockReadGuard<'static, ()> {
    QUIET.read().unwrap_or_else(|e| e.into_inner())
}

fn exclusive() -> std::sync::RwLockWriteGuard<'static, ()> {
    QUIET.write().unwrap_or_else(|e| e.into_inner())
}

fn disconnects(hub: &Hub, reason: &str) -> f64 {
    metric_value(&metrics_text(hub), &format!("realtimehub_disconnects_total{{reason=\"{reason}\"}}"))
}

/// Open file descriptors of a process.
fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).expect("reading /proc/PID/fd").count()
}

/// The `n`th (from 1) lowest descriptor number a process does not use.
fn nth_free_fd(pid: u32, n: usize) -> i64 {
    let used: std::collections::HashSet<i64> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("reading /proc/PID/fd")
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i64>().ok())
        .collect();
    (0..).filter(|fd| !used.contains(fd)).nth(n - 1).unwrap()
}

/// Polls `cond` every 10 ms until it holds or `timeout` passes; true if it held.
fn wait_for(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn sockaddr_in(ip: Ipv4Addr, port: u16) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr { s_addr: u32::from(ip).to_be() },
        sin_zero: [0; 8],
    }
}

/// A blocking TCP connection to `addr`, optionally from source address `src` and with socket
/// options `(level, name, value)` set before the SYN (a small `SO_RCVBUF` keeps the advertised
/// window small; `TCP_MAXSEG` caps the segment size the hub may use).
fn raw_connect(addr: SocketAddr, src: Option<Ipv4Addr>, opts: &[(libc::c_int, libc::c_int, i32)]) -> TcpStream {
    let SocketAddr::V4(v4) = addr else { panic!("IPv4 only: {addr}") };
    let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: plain socket syscalls on a descriptor we own; the TcpStream closes it.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        assert!(fd >= 0, "socket(): {}", std::io::Error::last_os_error());
        let stream = TcpStream::from_raw_fd(fd);
        for &(level, name, value) in opts {
            let rc = libc::setsockopt(
                fd,
                level,
                name,
                &value as *const i32 as *const libc::c_void,
                std::mem::size_of::<i32>() as libc::socklen_t,
            );
            assert_eq!(rc, 0, "setsockopt({level}, {name}): {}", std::io::Error::last_os_error());
        }
        if let Some(ip) = src {
            let sa = sockaddr_in(ip, 0);
            let rc = libc::bind(fd, &sa as *const libc::sockaddr_in as *const libc::sockaddr, len);
            assert_eq!(rc, 0, "bind({ip}): {}", std::io::Error::last_os_error());
        }
        let sa = sockaddr_in(*v4.ip(), v4.port());
        let rc = libc::connect(fd, &sa as *const libc::sockaddr_in as *const libc::sockaddr, len);
        assert_eq!(rc, 0, "connect({addr}): {}", std::io::Error::last_os_error());
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        stream.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
        stream.set_nodelay(true).unwrap();
        stream
    }
}

/// A WebSocket upgrade of `path` over `stream` with extra request headers; no asserts.
fn upgrade_on(stream: TcpStream, addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Result<Ws, WsError> {
    let mut req = format!("ws://{addr}{path}").into_client_request()?;
    for (k, v) in headers {
        req.headers_mut().insert(HeaderName::from_bytes(k.as_bytes()).unwrap(), HeaderValue::from_str(v).unwrap());
    }
    match tungstenite::client(req, stream) {
        Ok((socket, _)) => Ok(Ws { socket, connection_id: String::new() }),
        Err(tungstenite::HandshakeError::Failure(e)) => Err(e),
        Err(tungstenite::HandshakeError::Interrupted(_)) => {
            Err(std::io::Error::new(ErrorKind::TimedOut, "WebSocket handshake timed out").into())
        }
    }
}

/// A WebSocket upgrade of `path` with extra request headers on a fresh connection.
fn upgrade(hub: &Hub, path: &str, headers: &[(&str, &str)]) -> Result<Ws, WsError> {
    upgrade_on(raw_connect(hub.addr, None, &[]), hub.addr, path, headers)
}

/// Asserts an upgrade succeeded and consumed `connected`; returns the socket and its frame.
fn expect_connected(result: Result<Ws, WsError>, what: &str) -> (Ws, Value) {
    let mut ws = result.unwrap_or_else(|e| panic!("{what}: upgrade failed: {e}"));
    let first = ws.recv();
    assert_eq!(first["type"], "connected", "{what}: first frame {first}");
    (ws, first)
}

/// Sends `ping` and expects `pong` as the next frame: the connection is open and served.
fn assert_alive(ws: &mut Ws, what: &str) {
    ws.send(json!({ "type": "ping" }));
    let v = ws.recv();
    assert_eq!(v, json!({ "type": "pong" }), "{what}: expected pong");
}

/// How a read-until-close ended.
#[derive(Debug)]
struct Closed {
    code: Option<u16>,
    reason: String,
    after: Duration,
    skipped: Vec<Value>,
}

/// Reads until the server's close frame (or EOF/reset) within `timeout`, keeping the reason.
fn read_close(ws: &mut Ws, timeout: Duration) -> Closed {
    let start = Instant::now();
    let deadline = start + timeout;
    let mut skipped = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "no close within {timeout:?}; frames meanwhile: {skipped:?}");
        ws.socket.get_mut().set_read_timeout(Some(left)).unwrap();
        match ws.socket.read() {
            Ok(Message::Text(t)) => skipped.push(serde_json::from_str(&t).unwrap_or(Value::String(t.to_string()))),
            Ok(Message::Close(frame)) => {
                let _ = ws.socket.flush();
                let (code, reason) = frame.map(|f| (Some(u16::from(f.code)), f.reason.to_string())).unwrap_or_default();
                return Closed { code, reason, after: start.elapsed(), skipped };
            }
            Ok(_) => {}
            Err(WsError::Io(e)) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return Closed { code: None, reason: String::new(), after: start.elapsed(), skipped },
        }
    }
}

/// One masked client frame (`opcode` 1 text, 0 continuation) with an explicit FIN bit.
fn client_frame(opcode: u8, fin: bool, payload: &[u8]) -> Vec<u8> {
    let mask = [0x3a, 0x91, 0x5c, 0xe7];
    let mut f = vec![if fin { 0x80 } else { 0 } | opcode];
    let n = payload.len();
    if n < 126 {
        f.push(0x80 | n as u8);
    } else if n <= 0xffff {
        f.push(0x80 | 126);
        f.extend_from_slice(&(n as u16).to_be_bytes());
    } else {
        f.push(0x80 | 127);
        f.extend_from_slice(&(n as u64).to_be_bytes());
    }
    f.extend_from_slice(&mask);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    f
}

/// A `ping` event padded with an ignored field to exactly `len` bytes of JSON.
fn padded_ping(len: usize) -> String {
    let head = r#"{"type":"ping","pad":""#;
    let fill = len - head.len() - 2;
    format!("{head}{}\"}}", "x".repeat(fill))
}

/// Reads a raw stream until EOF, reset or `timeout`; returns the bytes and whether it closed.
fn read_until_eof(stream: &mut TcpStream, timeout: Duration) -> (Vec<u8>, bool) {
    let deadline = Instant::now() + timeout;
    let mut out = Vec::new();
    let mut chunk = [0u8; 65536];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return (out, false);
        }
        stream.set_read_timeout(Some(left)).unwrap();
        match stream.read(&mut chunk) {
            Ok(0) => return (out, true),
            Ok(n) => out.extend_from_slice(&chunk[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => return (out, false),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return (out, true), // reset: closed too
        }
    }
}

/// Holds `n` WebSockets open, retrying while connections from earlier steps are still being
/// closed by the hub (their slots free asynchronously). Panics after 5 s.
fn hold_websockets(hub: &Hub, key: &str, n: usize, refused: &mut u32) -> Vec<Ws> {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut held = Vec::new();
    while held.len() < n {
        let path = format!("/?apiKey={}&userId=holder{}", pct(key), held.len());
        match hub.ws_raw(&path) {
            Ok(mut ws) => {
                assert_eq!(ws.recv()["type"], "connected");
                held.push(ws);
            }
            Err(WsError::Http(resp)) if matches!(resp.status().as_u16(), 429 | 503) => {
                *refused += 1;
                assert!(Instant::now() < deadline, "could not open {n} connections: still refused");
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("opening connection {}: {e}", held.len()),
        }
    }
    held
}

/// `GET /health` (`Connection: close`) on a fresh connection from `src`: the status and body.
fn health_from(hub: &Hub, src: Option<Ipv4Addr>) -> (u16, Value) {
    let mut s = raw_connect(hub.addr, src, &[]);
    s.write_all(b"GET /health HTTP/1.1\r\nHost: hub\r\nConnection: close\r\n\r\n").unwrap();
    let (bytes, closed) = read_until_eof(&mut s, Duration::from_secs(5));
    assert!(closed, "GET /health: no EOF within 5 s after Connection: close");
    let text = String::from_utf8_lossy(&bytes);
    let status = text.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or_else(|| panic!("no status: {text:?}"));
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

// ---------------------------------------------------------------------------------------------
// Connections: in total, per address, and when the process runs out of descriptors
// ---------------------------------------------------------------------------------------------

#[test]
fn past_max_connections_a_new_connection_gets_503_before_any_upgrade() {
    let _quiet = shared();
    let hub = Hub::start_with(&["--max-connections", "4"]);
    let key = hub.create_project("limits").1;
    let mut refused = 0u32; // every 503/429 this test has seen
    let refused_before = metric_value(&metrics_retry(&hub, &mut refused), "realtimehub_refused_connections_total");
    let mut held = hold_websockets(&hub, &key, 4, &mut refused);

    // A fifth connection, WebSocket or plain HTTP, is answered 503 `unavailable` at accept.
    let status = expect_http_status(hub.ws_raw(&format!("/?apiKey={}&userId=extra", pct(&key))));
    assert_eq!(status, 503, "upgrade past --max-connections");
    let (status, body) = health_from(&hub, None);
    assert_eq!(status, 503, "HTTP request past --max-connections: {body}");
    assert_eq!(body["error"]["code"], "unavailable", "503 body: {body}");
    refused += 2;

    // The open connections are unaffected.
    for (i, ws) in held.iter_mut().enumerate() {
        assert_alive(ws, &format!("held connection {i}"));
    }

    // Closing one frees its slot: a new connection is accepted again.
    held.pop().unwrap().close();
    let ok = wait_for(Duration::from_secs(3), || match health_from(&hub, None).0 {
        200 => true,
        503 => {
            refused += 1;
            false
        }
        s => panic!("unexpected status {s} while waiting for a free slot"),
    });
    assert!(ok, "no connection accepted within 3 s after one of the 4 closed");
    let refused_after = metric_value(&metrics_retry(&hub, &mut refused), "realtimehub_refused_connections_total");
    assert_eq!(refused_after - refused_before, refused as f64, "refused_connections_total counts every 503 seen");
}

/// `GET /metrics`, retried while the hub refuses the connection (counted in `refused`).
fn metrics_retry(hub: &Hub, refused: &mut u32) -> String {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut s = raw_connect(hub.addr, None, &[]);
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: hub\r\nConnection: close\r\n\r\n").unwrap();
        let (bytes, _) = read_until_eof(&mut s, Duration::from_secs(5));
        let text = String::from_utf8_lossy(&bytes).into_owned();
        if text.starts_with("HTTP/1.1 200") {
            return text;
        }
        assert!(text.starts_with("HTTP/1.1 503") || text.starts_with("HTTP/1.1 429"), "GET /metrics: {text:?}");
        *refused += 1;
        assert!(Instant::now() < deadline, "GET /metrics refused for 5 s");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn past_max_connections_per_ip_that_address_gets_429_and_others_are_served() {
    let _quiet = shared();
    let hub = Hub::start_with(&["--max-connections-per-ip", "3"]);
    let key = hub.create_project("limits").1;
    let mut refused = 0u32;
    let refused_before = metric_value(&metrics_retry(&hub, &mut refused), "realtimehub_refused_connections_total");
    let mut held = hold_websockets(&hub, &key, 3, &mut refused);

    // From 127.0.0.1: refused 429 `rate_limited`, whether an upgrade or a plain request.
    let status = expect_http_status(hub.ws_raw(&format!("/?apiKey={}&userId=extra", pct(&key))));
    assert_eq!(status, 429, "upgrade past --max-connections-per-ip");
    let (status, body) = health_from(&hub, None);
    assert_eq!(status, 429, "HTTP request past --max-connections-per-ip: {body}");
    assert_eq!(body["error"]["code"], "rate_limited", "429 body: {body}");
    refused += 2;

    // Another peer address is counted separately and served (all of 127/8 is loopback).
    let other = Ipv4Addr::new(127, 0, 0, 2);
    assert_eq!(health_from(&hub, Some(other)).0, 200, "a request from {other}");
    let stream = raw_connect(hub.addr, Some(other), &[]);
    let path = format!("/?apiKey={}&userId=elsewhere", pct(&key));
    let (mut ws_other, _) = expect_connected(upgrade_on(stream, hub.addr, &path, &[]), "upgrade from 127.0.0.2");
    assert_alive(&mut ws_other, "connection from 127.0.0.2");

    for (i, ws) in held.iter_mut().enumerate() {
        assert_alive(ws, &format!("held connection {i}"));
    }

    // One closes: the address may connect again.
    held.pop().unwrap().close();
    let ok = wait_for(Duration::from_secs(3), || match health_from(&hub, None).0 {
        200 => true,
        429 => {
            refused += 1;
            false
        }
        s => panic!("unexpected status {s} while waiting for a free slot"),
    });
    assert!(ok, "127.0.0.1 not served within 3 s after one of its 3 connections closed");
    let refused_after = metric_value(&metrics_retry(&hub, &mut refused), "realtimehub_refused_connections_total");
    assert_eq!(refused_after - refused_before, refused as f64, "refused_connections_total counts every 429 seen");
}

#[test]
fn out_of_file_descriptors_the_hub_sheds_new_connections_without_spinning() {
    let _quiet = shared();
    let hub = Hub::start();
    let pid = hub.pid();
    // Lower the hub's descriptor limit so that exactly 4 more descriptors fit (new ones take
    // the lowest free numbers; inherited ones may sit high); the rest hit EMFILE at accept.
    let soft = (nth_free_fd(pid, 4) + 1) as libc::rlim_t;
    let mut old = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: prlimit on our own child process with valid pointers.
    let rc = unsafe { libc::prlimit(pid as libc::pid_t, libc::RLIMIT_NOFILE, std::ptr::null(), &mut old) };
    assert_eq!(rc, 0, "prlimit(get): {}", std::io::Error::last_os_error());
    let new = libc::rlimit { rlim_cur: soft, rlim_max: old.rlim_max };
    let rc = unsafe { libc::prlimit(pid as libc::pid_t, libc::RLIMIT_NOFILE, &new, std::ptr::null_mut()) };
    assert_eq!(rc, 0, "prlimit(set): {}", std::io::Error::last_os_error());

    // Twenty connections that each send a request. A few fit; the others must be shed
    // (closed without an answer) rather than left in the backlog.
    let mut socks: Vec<TcpStream> = (0..20).map(|_| raw_connect(hub.addr, None, &[])).collect();
    for s in &mut socks {
        let _ = s.write_all(b"GET /health HTTP/1.1\r\nHost: hub\r\n\r\n");
    }

    // No busy loop: with the descriptors used up and connections held open, the hub idles.
    std::thread::sleep(Duration::from_millis(200)); // let the burst of connections be handled
    let cpu0 = cpu_time_of(pid);
    std::thread::sleep(Duration::from_secs(1)); // the time over which CPU use is measured
    let used = cpu_time_of(pid) - cpu0;
    assert!(used < Duration::from_millis(200), "hub used {used:?} of CPU in 1 s while out of descriptors");

    // The connections that fit are served; the rest were closed.
    let (mut served, mut shed) = (0, 0);
    for (i, s) in socks.iter_mut().enumerate() {
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = [0u8; 4096];
        match s.read(&mut buf) {
            Ok(n) if n > 0 && buf.starts_with(b"HTTP/1.1 200") => served += 1,
            Ok(0) => shed += 1,
            Err(e) if matches!(e.kind(), ErrorKind::ConnectionReset | ErrorKind::BrokenPipe) => shed += 1,
            Ok(n) => panic!("connection {i}: unexpected answer: {:?}", String::from_utf8_lossy(&buf[..n])),
            Err(e) => panic!("connection {i}: no answer and no close within 5 s ({served} served, {shed} shed): {e}"),
        }
    }
    assert!(served >= 1, "no connection was served under the lowered descriptor limit");
    assert!(shed >= 10, "only {shed} of 20 connections were shed (served {served})");

    // Descriptors come back when the clients go, and the hub serves again.
    drop(socks);
    let ok = wait_for(Duration::from_secs(5), || {
        let mut s = raw_connect(hub.addr, None, &[]);
        let _ = s.write_all(b"GET /health HTTP/1.1\r\nHost: hub\r\nConnection: close\r\n\r\n");
        let (bytes, _) = read_until_eof(&mut s, Duration::from_secs(2));
        bytes.starts_with(b"HTTP/1.1 200")
    });
    assert!(ok, "hub did not serve again within 5 s after the connections closed");
}

// ---------------------------------------------------------------------------------------------
// Frame and message size
// ---------------------------------------------------------------------------------------------

#[test]
fn a_frame_header_claiming_10_mb_is_closed_1009_without_waiting_for_the_payload() {
    let _quiet = shared();
    let hub = Hub::start(); // default --max-message-bytes 65536
    let key = hub.create_project("limits").1;
    let mut ws = hub.ws(&key, "big");
    let rss_before = rss_kib_of(hub.pid());

    // Header: FIN + text, masked, 64-bit length 10,000,000; then only 16 payload bytes.
    let mut header = vec![0x81, 0x80 | 127];
    header.extend_from_slice(&10_000_000u64.to_be_bytes());
    header.extend_from_slice(&[1, 2, 3, 4]);
    header.extend_from_slice(&[0x55; 16]);
    ws.socket.get_mut().write_all(&header).unwrap();
    let closed = read_close(&mut ws, Duration::from_secs(5));
    assert_eq!(closed.code, Some(1009), "close for a 10 MB frame header: {closed:?}");
    assert_eq!(closed.reason, "message too large");
    assert!(
        closed.after < Duration::from_secs(1),
        "the close took {:?}: did the hub wait for the payload?",
        closed.after
    );
    assert!(
        rss_kib_of(hub.pid()) < rss_before + 4096,
        "the hub grew by 4 MiB or more: was the payload buffer reserved?"
    );
    assert_eq!(disconnects(&hub, "too_large"), 1.0, "disconnects_total{{reason=too_large}}");
}

#[test]
fn max_message_bytes_is_inclusive_and_applies_to_frames_and_fragmented_messages() {
    let _quiet = shared();
    let hub = Hub::start_with(&["--max-message-bytes", "65536"]);
    let key = hub.create_project("limits").1;

    // Exactly 65536 bytes: handled (an ignored padding field keeps it a valid event).
    let mut ws = hub.ws(&key, "edge");
    ws.send_text(&padded_ping(65536));
    assert_eq!(ws.recv(), json!({ "type": "pong" }), "a 65536-byte frame is within the limit");
    // A content over --max-content-bytes inside an allowed frame is a refusal, not a close.
    hub.create_room(&key, "room", "public");
    ws.join("room");
    ws.send(json!({ "type": "message", "room": "room", "content": "y".repeat(40_000), "tempId": "t-big" }));
    let err = ws.recv_type("error");
    assert_eq!((&err["code"], &err["tempId"]), (&json!("too_large"), &json!("t-big")), "{err}");
    assert_alive(&mut ws, "after too_large");

    // 65537 bytes in one frame: close 1009.
    ws.send_text(&padded_ping(65537));
    let closed = read_close(&mut ws, Duration::from_secs(5));
    assert_eq!(closed.code, Some(1009), "a 65537-byte frame: {closed:?}");

    // Two fragments of 40,000 bytes each: every frame is small, the message is not.
    let mut ws = hub.ws(&key, "fragments");
    let text = padded_ping(80_000);
    let (first, rest) = text.as_bytes().split_at(40_000);
    let stream = ws.socket.get_mut();
    stream.write_all(&client_frame(1, false, first)).unwrap();
    stream.write_all(&client_frame(0, true, rest)).unwrap();
    let closed = read_close(&mut ws, Duration::from_secs(5));
    assert_eq!(closed.code, Some(1009), "an 80,000-byte fragmented message: {closed:?}");

    // Fragments that add up to the limit are fine.
    let mut ws = hub.ws(&key, "fragments-ok");
    let text = padded_ping(65536);
    let (first, rest) = text.as_bytes().split_at(30_000);
    let stream = ws.socket.get_mut();
    stream.write_all(&client_frame(1, false, first)).unwrap();
    stream.write_all(&client_frame(0, true, rest)).unwrap();
    assert_eq!(ws.recv(), json!({ "type": "pong" }), "a 65536-byte message in two fragments");
    assert_eq!(disconnects(&hub, "too_large"), 2.0, "disconnects_total{{reason=too_large}}");
}

// ---------------------------------------------------------------------------------------------
// Rooms per connection
// ---------------------------------------------------------------------------------------------

#[test]
fn max_rooms_per_connection_refuses_one_more_join_with_forbidden() {
    let _quiet = shared();
    let hub = Hub::start_with(&["--max-rooms-per-connection", "3"]);
    let key = hub.create_project("limits").1;
    for r in ["r1", "r2", "r3", "r4"] {
        hub.create_room(&key, r, "public");
    }
    let mut ws = hub.ws(&key, "roamer");
    for r in ["r1", "r2", "r3"] {
        ws.join(r);
    }
    ws.send(json!({ "type": "join", "room": "r4" }));
    let err = ws.recv_type("error");
    assert_eq!((&err["event"], &err["code"]), (&json!("join"), &json!("forbidden")), "fourth join: {err}");
    // Re-joining a room already joined is not a new room.
    ws.join("r2");
    // The refused room was not joined: a message there is not_joined.
    ws.send(json!({ "type": "message", "room": "r4", "content": "x", "tempId": "t4" }));
    assert_eq!(ws.recv_type("error")["code"], "not_joined");
    // Leaving one frees a place.
    ws.send(json!({ "type": "leave", "room": "r1" }));
    assert_eq!(ws.recv_type("left")["room"], "r1");
    ws.join("r4");
    // The cap is per connection: the same user's second connection has its own.
    let mut second = hub.ws(&key, "roamer");
    for r in ["r1", "r2", "r3"] {
        second.join(r);
    }
}

// ---------------------------------------------------------------------------------------------
// Event rate
// ---------------------------------------------------------------------------------------------

#[test]
fn the_event_budget_refuses_with_rate_limited_then_closes_1008_on_sustained_abuse() {
    let _quiet = shared();
    let hub = Hub::start_with(&["--max-events-per-second", "10"]);
    let key = hub.create_project("limits").1;
    hub.create_room(&key, "room", "public");
    let mut ws = hub.ws(&key, "eager");

    // The burst (10) is allowed; the messages right behind it are refused rate_limited, each
    // naming the event and its tempId. All frames leave in one write, so the bucket refills
    // by at most one token meanwhile.
    for _ in 0..10 {
        ws.socket.write(Message::text(json!({ "type": "ping" }).to_string())).unwrap();
    }
    for i in 0..5 {
        let m = json!({ "type": "message", "room": "room", "content": "x", "tempId": format!("r{i}") });
        ws.socket.write(Message::text(m.to_string())).unwrap();
    }
    ws.socket.flush().unwrap();
    let mut pongs = 0;
    let mut limited = Vec::new();
    let mut other = Vec::new();
    while pongs + limited.len() + other.len() < 15 {
        let v = ws.recv();
        match (v["type"].as_str(), v["code"].as_str()) {
            (Some("pong"), _) => pongs += 1,
            (Some("error"), Some("rate_limited")) => {
                assert_eq!(v["event"], "message", "rate_limited names the refused event: {v}");
                limited.push(
                    v["tempId"].as_str().unwrap_or_else(|| panic!("rate_limited without tempId: {v}")).to_string(),
                );
            }
            _ => other.push(v),
        }
    }
    assert_eq!(pongs, 10, "the burst of 10 is allowed");
    assert!(limited.len() >= 4, "at least 4 of 5 messages past the burst are refused; got {limited:?}, {other:?}");
    let want: Vec<String> = (5 - limited.len()..5).map(|i| format!("r{i}")).collect();
    assert_eq!(limited, want, "the refusals carry the refused frames' tempIds, in order");
    // Refused, not closed: after the bucket refills the connection is served again.
    std::thread::sleep(Duration::from_millis(1100)); // let the bucket refill (the rate is under test)
    assert_alive(&mut ws, "after refusals");

    // A client inside the budget is never refused: 10 events at 8 per second.
    for i in 0..10 {
        if i > 0 {
            std::thread::sleep(Duration::from_millis(125)); // pacing at 8/s is the point
        }
        assert_alive(&mut ws, &format!("paced ping {i}"));
    }

    // Sustained abuse: more than 10 refusals within a second closes 1008.
    for _ in 0..40 {
        if ws.socket.write(Message::text(json!({ "type": "ping" }).to_string())).is_err() {
            break;
        }
    }
    let _ = ws.socket.flush();
    let closed = read_close(&mut ws, Duration::from_secs(5));
    assert_eq!(closed.code, Some(1008), "close after sustained abuse: {closed:?}");
    assert_eq!(closed.reason, "rate limit exceeded");
    let refusals = closed.skipped.iter().filter(|v| v["code"] == "rate_limited").count();
    assert!(refusals >= 10, "refusals come first, then the close: {:?}", closed.skipped);
    let others = closed.skipped.iter().filter(|v| v["type"] != "pong" && v["code"] != "rate_limited").count();
    assert_eq!(others, 0, "nothing but pongs and refusals before the close: {:?}", closed.skipped);

    // Another connection of the same user has its own budget.
    let mut other_conn = hub.ws(&key, "eager");
    assert_alive(&mut other_conn, "another connection");
    // One connection was closed for abuse, so the counter says 1.
    assert_eq!(disconnects(&hub, "rate_limit"), 1.0, "disconnects_total{{reason=rate_limit}} after one abusive close");
}

// ---------------------------------------------------------------------------------------------
// Slow consumer
// ---------------------------------------------------------------------------------------------

/// Parses one server frame (never masked) at the start of `b`: its opcode, payload range and
/// total length; None while incomplete.
fn parse_frame(b: &[u8]) -> Option<(u8, std::ops::Range<usize>)> {
    if b.len() < 2 {
        return None;
    }
    let (len, hdr) = match b[1] & 0x7f {
        126 if b.len() >= 4 => (u16::from_be_bytes([b[2], b[3]]) as usize, 4),
        127 if b.len() >= 10 => (u64::from_be_bytes(b[2..10].try_into().unwrap()) as usize, 10),
        126 | 127 => return None,
        n => (n as usize, 2),
    };
    (b.len() >= hdr + len).then_some((b[0] & 0x0f, hdr..hdr + len))
}

/// A hand-driven WebSocket client for the fan-out measurement: a blocking handshake and
/// join, then non-blocking reads with frames parsed in place (no allocation per frame).
struct RawWs {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl RawWs {
    fn open(mut stream: TcpStream, addr: SocketAddr, path: &str) -> RawWs {
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        stream.write_all(req.as_bytes()).unwrap();
        let mut ws = RawWs { stream, buf: Vec::new() };
        let end = loop {
            if let Some(i) = memmem::find(&ws.buf, b"\r\n\r\n") {
                break i + 4;
            }
            assert!(ws.fill(), "handshake: connection closed");
        };
        assert!(ws.buf.starts_with(b"HTTP/1.1 101"), "handshake: {:?}", String::from_utf8_lossy(&ws.buf[..end]));
        ws.buf.drain(..end);
        let first = ws.next_json();
        assert_eq!(first["type"], "connected", "{first}");
        ws
    }

    /// Blocking read of more bytes (10 s timeout); false on EOF.
    fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 16384];
        match self.stream.read(&mut chunk) {
            Ok(0) => false,
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
            Err(e) => panic!("raw ws read: {e}"),
        }
    }

    /// The next text frame, blocking.
    fn next_json(&mut self) -> Value {
        loop {
            if let Some((op, range)) = parse_frame(&self.buf) {
                let v = (op == 1).then(|| serde_json::from_slice(&self.buf[range.clone()]).unwrap());
                self.buf.drain(..range.end);
                if let Some(v) = v {
                    return v;
                }
                continue;
            }
            assert!(self.fill(), "raw ws: connection closed");
        }
    }

    fn send(&mut self, v: &Value) {
        self.stream.write_all(&client_frame(1, true, v.to_string().as_bytes())).unwrap();
    }

    fn join(&mut self, room: &str) {
        self.send(&json!({ "type": "join", "room": room }));
        loop {
            let v = self.next_json();
            if v["type"] == "joined" {
                return;
            }
            assert_ne!(v["type"], "error", "join refused: {v}");
        }
    }
}

/// One member of the fan-out, on the measurement loop.
struct Member {
    sock: mio::net::TcpStream,
    buf: Vec<u8>,
    got: usize,
}

const CONTENT_MARK: &[u8] = b"\"content\":\"";
const CONTENT_BYTES: usize = 200;
const BURST: usize = 10;
const BURST_EVERY: Duration = Duration::from_millis(5); // 2,000 messages per second

/// What one fan-out run measured.
struct FanoutRun {
    /// Delivery latencies at the reading members, in microseconds, sorted.
    latencies_us: Vec<u64>,
    /// When each message was written by the publisher (since the epoch).
    sent_at: Vec<Duration>,
    /// The wire size of each message frame (as member 0 received it).
    frame_bytes: Vec<usize>,
}

impl FanoutRun {
    fn quantile_us(&self, q: f64) -> u64 {
        let n = self.latencies_us.len();
        self.latencies_us[((q * n as f64).ceil() as usize).clamp(1, n) - 1]
    }
}

/// 100 reading members and one publisher in a room, driven by one mio loop.
struct Fanout {
    poll: Poll,
    members: Vec<Member>,
    publisher: Member,
    room: String,
    epoch: Instant,
}

impl Fanout {
    fn new(hub: &Hub, key: &str, room: &str, readers: usize) -> Fanout {
        let poll = Poll::new().unwrap();
        let open = |user: String, token: usize| {
            let path = format!("/?apiKey={}&userId={user}", pct(key));
            let mut ws = RawWs::open(raw_connect(hub.addr, None, &[]), hub.addr, &path);
            ws.join(room);
            ws.stream.set_nonblocking(true).unwrap();
            let mut sock = mio::net::TcpStream::from_std(ws.stream);
            poll.registry().register(&mut sock, Token(token), Interest::READABLE).unwrap();
            Member { sock, buf: ws.buf, got: 0 }
        };
        let members: Vec<Member> = (0..readers).map(|i| open(format!("reader{i}"), i)).collect();
        let publisher = open("publisher".into(), readers);
        Fanout { poll, members, publisher, room: room.to_string(), epoch: Instant::now() }
    }

    /// Publishes `messages` at 2,000/s (bursts of 10 every 5 ms, the send time in each
    /// content) and reads until every member has all of them.
    fn run(&mut self, messages: usize) -> FanoutRun {
        let readers = self.members.len();
        let pub_token = readers;
        for m in self.members.iter_mut().chain(std::iter::once(&mut self.publisher)) {
            m.got = 0;
        }
        let mut out: Vec<u8> = Vec::new();
        let mut run = FanoutRun {
            latencies_us: Vec::with_capacity(messages * readers),
            sent_at: Vec::with_capacity(messages),
            frame_bytes: Vec::with_capacity(messages),
        };
        let bursts = messages.div_ceil(BURST);
        let start = Instant::now();
        let deadline = start + BURST_EVERY * bursts as u32 + Duration::from_secs(15);
        let mut events = Events::with_capacity(256);
        let mut burst = 0;
        let mut first = true;
        loop {
            let now = Instant::now();
            while burst < bursts && now >= start + BURST_EVERY * burst as u32 {
                for _ in 0..BURST.min(messages - run.sent_at.len()) {
                    let sent = self.epoch.elapsed();
                    let content = format!("{:020}~{}", sent.as_nanos(), "x".repeat(CONTENT_BYTES - 21));
                    let m = json!({ "type": "message", "room": self.room, "content": content });
                    out.extend_from_slice(&client_frame(1, true, m.to_string().as_bytes()));
                    run.sent_at.push(sent);
                }
                burst += 1;
            }
            while !out.is_empty() {
                match self.publisher.sock.write(&out) {
                    Ok(n) => drop(out.drain(..n)),
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) => panic!("publisher write: {e}"),
                }
            }
            let done = self.members.iter().all(|m| m.got == messages) && self.publisher.got == messages;
            if done && out.is_empty() {
                return finish(run);
            }
            if now >= deadline {
                let got: Vec<usize> = self.members.iter().map(|m| m.got).collect();
                panic!("fan-out incomplete after {:?}: sent {}, members got {got:?}", now - start, run.sent_at.len());
            }
            let timeout = if !out.is_empty() {
                Duration::from_millis(1)
            } else if burst < bursts {
                (start + BURST_EVERY * burst as u32).saturating_duration_since(now)
            } else {
                Duration::from_millis(50)
            };
            self.poll.poll(&mut events, Some(timeout)).unwrap();
            // Edge-triggered: on the first pass read everyone (bytes may predate registration).
            let ready: Vec<usize> = if std::mem::take(&mut first) {
                (0..=readers).collect()
            } else {
                events.iter().map(|e| e.token().0).collect()
            };
            for t in ready {
                let (member, is_pub) =
                    if t == pub_token { (&mut self.publisher, true) } else { (&mut self.members[t], false) };
                let record = !is_pub && t == 0;
                read_member(
                    member,
                    self.epoch,
                    (!is_pub).then_some(&mut run.latencies_us),
                    record.then_some(&mut run.frame_bytes),
                );
            }
        }

        fn finish(mut run: FanoutRun) -> FanoutRun {
            run.latencies_us.sort_unstable();
            run
        }
    }
}

/// Reads everything available on a member's socket and handles every complete frame:
/// counts message frames, records their latency and (for one member) their wire size.
fn read_member(m: &mut Member, epoch: Instant, mut lat: Option<&mut Vec<u64>>, mut sizes: Option<&mut Vec<usize>>) {
    let mut chunk = [0u8; 65536];
    loop {
        match m.sock.read(&mut chunk) {
            Ok(0) => panic!("a member's connection was closed by the hub"),
            Ok(n) => m.buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => panic!("member read: {e}"),
        }
    }
    let now = epoch.elapsed().as_nanos() as u64;
    let mut pos = 0;
    while let Some((op, range)) = parse_frame(&m.buf[pos..]) {
        let payload = &m.buf[pos + range.start..pos + range.end];
        assert_ne!(op, 8, "a reading member was closed: {:?}", String::from_utf8_lossy(payload));
        if let Some(i) = memmem::find(payload, CONTENT_MARK) {
            let digits = &payload[i + CONTENT_MARK.len()..i + CONTENT_MARK.len() + 20];
            let sent: u64 = std::str::from_utf8(digits).unwrap().parse().unwrap();
            m.got += 1;
            if let Some(lat) = lat.as_deref_mut() {
                lat.push(now.saturating_sub(sent) / 1000);
            }
            if let Some(sizes) = sizes.as_deref_mut() {
                sizes.push(range.end);
            }
        }
        pos += range.end;
    }
    m.buf.drain(..pos);
}

/// Watches the hub during a run: when `/metrics` first shows `slow_consumer >= want`, and
/// the most bytes the kernel held for the slow member (the hub's send queue plus the
/// member's receive queue, from /proc/net/tcp) before that.
struct Watcher {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<(Option<Instant>, u64)>>,
    thread: std::thread::JoinHandle<()>,
}

impl Watcher {
    fn start(hub: &Hub, want: f64, slow_port: Option<u16>) -> Watcher {
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new((None, 0u64)));
        let (addr, hub_port) = (hub.addr, hub.addr.port());
        let thread = {
            let (stop, seen) = (stop.clone(), seen.clone());
            std::thread::spawn(move || {
                let mut http = Http::connect(addr);
                let series = "realtimehub_disconnects_total{reason=\"slow_consumer\"}";
                while !stop.load(Ordering::Relaxed) {
                    let kernel = slow_port.map(|p| kernel_queued(hub_port, p)).unwrap_or(0);
                    let body = http.request("GET", "/metrics", &[], None).body;
                    let mut s = seen.lock().unwrap();
                    if s.0.is_none() {
                        s.1 = s.1.max(kernel);
                        if metric_value(&body, series) >= want {
                            s.0 = Some(Instant::now());
                        }
                    }
                    drop(s);
                    std::thread::sleep(Duration::from_millis(10));
                }
            })
        };
        Watcher { stop, seen, thread }
    }

    fn finish(self) -> (Option<Instant>, u64) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().expect("watcher thread");
        *self.seen.lock().unwrap()
    }
}

/// Bytes in flight in the kernel towards the client port `client`: the hub-side socket's
/// send queue plus the client-side socket's receive queue (/proc/net/tcp, hex fields).
fn kernel_queued(hub_port: u16, client: u16) -> u64 {
    let Ok(table) = std::fs::read_to_string("/proc/net/tcp") else { return 0 };
    let port = |a: &str| u16::from_str_radix(a.rsplit(':').next().unwrap_or("0"), 16).unwrap_or(0);
    let mut total = 0;
    for line in table.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 5 {
            continue;
        }
        let (local, remote) = (port(f[1]), port(f[2]));
        let (tx, rx) = f[4].split_once(':').unwrap_or(("0", "0"));
        let (tx, rx) = (u64::from_str_radix(tx, 16).unwrap_or(0), u64::from_str_radix(rx, 16).unwrap_or(0));
        if local == hub_port && remote == client {
            total += tx;
        } else if local == client && remote == hub_port {
            total += rx;
        }
    }
    total
}

#[test]
fn a_member_that_stops_reading_is_dropped_1008_while_100_others_keep_their_latency() {
    let _quiet = exclusive();
    const LIMIT: usize = 262_144;
    const READERS: usize = 100;
    const MESSAGES: usize = 4_000; // 2 s at 2,000/s
                                   // About two pairs in three pass on a shared 2-core VM (p99s of 4-10 ms move by more
                                   // than 20 % from run to run); six tries make a false failure rare.
    const ATTEMPTS: usize = 6;
    let hub = Hub::start_with(&["--max-outbound-bytes", "262144", "--max-events-per-second", "100000"]);
    let pid = hub.pid();
    let key = hub.create_project("slow").1;
    hub.create_room(&key, "busy", "public");
    let mut fan = Fanout::new(&hub, &key, "busy", READERS);
    fan.run(500); // warm-up: buffers, statement cache, page cache

    let mut report = Vec::new();
    let mut slow_drops = 0.0;
    // Latency on a shared 2-core machine is noisy: a pair of runs (baseline, then with the
    // slow member) is repeated, up to 6 times, until one pair is within bounds. A hub whose
    // slow member really hurt the others fails every pair.
    for attempt in 1..=ATTEMPTS {
        // Baseline: the same room and load without the slow member.
        // (The watcher scans /proc/net/tcp here too, so both runs carry the same overhead.)
        let watch = Watcher::start(&hub, f64::INFINITY, Some(0));
        let base = fan.run(MESSAGES);
        watch.finish();

        // The same with a member whose receive buffer is tiny and which never reads.
        let rss_before = rss_kib_of(pid);
        let fds_before = fd_count(pid);
        // A real network's segment size: on loopback (64 KiB segments) the kernel would grow
        // the hub's send buffer to megabytes before the hub's own queue even started to fill.
        let opts = [(libc::SOL_SOCKET, libc::SO_RCVBUF, 4096), (libc::IPPROTO_TCP, libc::TCP_MAXSEG, 1400)];
        let path = format!("/?apiKey={}&userId=slow", pct(&key));
        let mut slow = RawWs::open(raw_connect(hub.addr, None, &opts), hub.addr, &path);
        slow.join("busy");
        let slow_port = slow.stream.local_addr().unwrap().port();
        let watch = Watcher::start(&hub, slow_drops + 1.0, Some(slow_port));
        let with_slow = fan.run(MESSAGES);
        // The slow member is dropped well within the run; give the watcher a moment to see it.
        let seen_by = Instant::now() + Duration::from_secs(2);
        while watch.seen.lock().unwrap().0.is_none() && Instant::now() < seen_by {
            std::thread::sleep(Duration::from_millis(10));
        }
        let (dropped_at, kernel) = watch.finish();
        let dropped_at =
            dropped_at.expect("the slow member was never dropped (disconnects_total{reason=slow_consumer})");
        slow_drops += 1.0;

        // When did the bytes sent to it pass the limit plus what the kernel buffers held?
        let threshold = LIMIT as u64 + kernel;
        let mut cum = 0u64;
        let passed = with_slow
            .frame_bytes
            .iter()
            .zip(&with_slow.sent_at)
            .find(|(b, _)| {
                cum += **b as u64;
                cum > threshold
            })
            .map(|(_, t)| fan.epoch + *t)
            .expect("the run never sent enough to pass the limit");
        let dropped_after = dropped_at.saturating_duration_since(passed);
        let sent_by_drop: u64 = with_slow
            .frame_bytes
            .iter()
            .zip(&with_slow.sent_at)
            .filter(|(_, t)| fan.epoch + **t <= dropped_at)
            .map(|(b, _)| *b as u64)
            .sum();
        assert!(
            sent_by_drop >= LIMIT as u64,
            "dropped after only {sent_by_drop} bytes were sent to it (limit {LIMIT})"
        );
        assert!(
            dropped_after <= Duration::from_secs(1),
            "dropped {dropped_after:?} after {threshold} bytes (limit {LIMIT} + kernel {kernel}) were sent to it"
        );

        // Its socket ends (close frame if the one attempt got through, then EOF).
        let (bytes, closed) = read_until_eof(&mut slow.stream, Duration::from_secs(5));
        assert!(closed, "the slow member's socket was not closed by the hub");
        let mut stream = std::mem::take(&mut slow.buf);
        stream.extend_from_slice(&bytes);
        let (close_code, trailing) = scan_frames(&stream);

        // Memory and descriptors: back to where they were.
        let rss_after = rss_kib_of(pid);
        let fds_ok = wait_for(Duration::from_secs(3), || fd_count(pid) <= fds_before);
        assert!(fds_ok, "hub descriptors {} did not return to {fds_before}", fd_count(pid));
        assert!(rss_after < rss_before + 8 * 1024, "hub RSS grew from {rss_before} KiB to {rss_after} KiB");
        let m = metrics_text(&hub);
        assert_eq!(
            metric_value(&m, "realtimehub_disconnects_total{reason=\"slow_consumer\"}"),
            slow_drops,
            "only the slow member was dropped"
        );

        let (p99_base, p99_slow) = (base.quantile_us(0.99), with_slow.quantile_us(0.99));
        let line = format!(
            "attempt {attempt}: p50/p99/max base {}/{}/{} µs, with slow member {}/{}/{} µs; dropped {:?} after \
             passing limit+kernel ({} B, kernel {kernel} B); {} B read by it before EOF, close frame {:?}, \
             {trailing} B of an unfinished frame at the end; RSS {rss_before} -> {rss_after} KiB",
            base.quantile_us(0.5),
            p99_base,
            base.quantile_us(1.0),
            with_slow.quantile_us(0.5),
            p99_slow,
            with_slow.quantile_us(1.0),
            dropped_after,
            threshold,
            stream.len(),
            close_code,
        );
        eprintln!("slow consumer {line}");
        report.push(line);
        if p99_slow as f64 <= p99_base as f64 * 1.2 {
            return;
        }
    }
    panic!(
        "the readers' p99 with a slow member stayed above 1.2 × baseline in {ATTEMPTS} attempts:\n{}",
        report.join("\n")
    );
}

/// Walks a server byte stream: the code of the first intact close frame, and how many bytes
/// of an unfinished frame are left at the end.
fn scan_frames(mut b: &[u8]) -> (Option<u16>, usize) {
    while let Some((op, range)) = parse_frame(b) {
        if op == 8 && range.len() >= 2 {
            return (Some(u16::from_be_bytes([b[range.start], b[range.start + 1]])), 0);
        }
        b = &b[range.end..];
    }
    (None, b.len())
}

// ---------------------------------------------------------------------------------------------
// Request-head deadline
// ---------------------------------------------------------------------------------------------

/// Reads a raw connection until the hub closes it; the time that took and the bytes seen.
fn time_to_close(s: &mut TcpStream, start: Instant) -> (Duration, Vec<u8>) {
    let (bytes, closed) = read_until_eof(s, Duration::from_secs(5));
    assert!(closed, "the hub did not close the connection within 5 s; got {:?}", String::from_utf8_lossy(&bytes));
    (start.elapsed(), bytes)
}

#[test]
fn handshakes_that_never_finish_are_closed_after_the_header_deadline() {
    let _quiet = shared();
    let hub = Hub::start_with(&["--header-timeout-ms", "300"]);
    let key = hub.create_project("limits").1;
    let deadline = Duration::from_millis(300);
    // The deadline is checked on a 250 ms sweep.
    let latest = deadline + Duration::from_millis(250) + Duration::from_millis(750);

    // An upgrade request whose head never ends: dropped without an answer.
    let mut s = raw_connect(hub.addr, None, &[]);
    let start = Instant::now();
    let half = format!(
        "GET /?apiKey={}&userId=u HTTP/1.1\r\nHost: hub\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n",
        pct(&key)
    );
    s.write_all(half.as_bytes()).unwrap();
    let (took, bytes) = time_to_close(&mut s, start);
    assert!(bytes.is_empty(), "a timed-out head gets no answer: {:?}", String::from_utf8_lossy(&bytes));
    assert!(took >= deadline - Duration::from_millis(10), "closed after {took:?}, before the 300 ms deadline");
    assert!(took <= latest, "closed after {took:?}, long past the 300 ms deadline");

    // Trickling one byte every 50 ms does not extend the deadline (slowloris).
    let mut s = raw_connect(hub.addr, None, &[]);
    let start = Instant::now();
    let request = format!(
        "GET /?apiKey={}&userId=trickle HTTP/1.1\r\nHost: hub\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        pct(&key)
    );
    let mut closed_after = None;
    for b in request.as_bytes() {
        if s.write_all(&[*b]).is_err() {
            closed_after = Some(start.elapsed());
            break;
        }
        s.set_read_timeout(Some(Duration::from_millis(50))).unwrap(); // the trickle's pace
        let mut buf = [0u8; 512];
        match s.read(&mut buf) {
            Ok(0) => {
                closed_after = Some(start.elapsed());
                break;
            }
            Ok(n) => panic!("trickled head got an answer: {:?}", String::from_utf8_lossy(&buf[..n])),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => {
                closed_after = Some(start.elapsed());
                break;
            }
        }
    }
    let took = closed_after.expect("a head trickled over several seconds was never closed");
    assert!(took >= deadline - Duration::from_millis(10) && took <= latest, "trickle closed after {took:?}");

    // A head that completes in time upgrades, and the deadline no longer applies after it.
    let mut ws = hub.ws(&key, "prompt");
    std::thread::sleep(Duration::from_millis(800)); // well past the head deadline
    assert_alive(&mut ws, "a WebSocket older than the head deadline");
    // A keep-alive HTTP connection between requests is not "a head in progress" either.
    let mut http = hub.http();
    assert_eq!(http.request("GET", "/health", &[], None).status, 200);
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(http.request("GET", "/health", &[], None).status, 200, "idle keep-alive connection kept");

    assert_eq!(disconnects(&hub, "slow_header"), 2.0, "disconnects_total{{reason=slow_header}}");
}

// ---------------------------------------------------------------------------------------------
// Signed user tokens, requireTokens, Origin allow-list
// ---------------------------------------------------------------------------------------------

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

fn token_path(token: &str) -> String {
    format!("/?token={}", pct(token))
}

/// A hub with a project, a second project, and rooms `general` and `secret`.
fn token_hub() -> (Hub, String, String, String) {
    let hub = Hub::start();
    let (pid, key) = hub.create_project("tokens");
    let (_, other_key) = hub.create_project("other");
    hub.create_room(&key, "general", "public");
    hub.create_room(&key, "secret", "public");
    (hub, pid, key, other_key)
}

#[test]
fn signed_tokens_open_connections_and_bad_ones_get_401() {
    let _quiet = shared();
    let (hub, pid, key, other_key) = token_hub();
    let exp = unix_now_secs() as u64 + 600;
    let good = token::sign(&json!({ "iss": pid, "sub": "alice", "exp": exp }), key.as_bytes());
    let (mut ws, first) = expect_connected(hub.ws_raw(&token_path(&good)), "a valid token");
    assert_eq!(first["userId"], "alice", "the user comes from `sub`: {first}");
    ws.join("general");
    ws.join("secret"); // no `rooms` claim: every room of the project
                       // `userId` may accompany the token when it equals `sub`.
    expect_connected(hub.ws_raw(&format!("{}&userId=alice", token_path(&good))), "token + matching userId");
    // The /ws path takes tokens too.
    expect_connected(hub.ws_raw(&format!("/ws?token={}", pct(&good))), "token on /ws");

    let claims = json!({ "iss": pid, "sub": "mallory", "exp": exp });
    let [header, payload, _sig] = {
        let t = token::sign(&claims, key.as_bytes());
        let p: Vec<String> = t.split('.').map(str::to_string).collect();
        [p[0].clone(), p[1].clone(), p[2].clone()]
    };
    let good_sig = good.rsplit('.').next().unwrap().to_string();
    let none_header = b64(br#"{"alg":"none","typ":"JWT"}"#);
    let hs512_header = b64(br#"{"alg":"HS512","typ":"JWT"}"#);
    let forged_payload = b64(json!({ "iss": pid, "sub": "alice", "exp": exp + 1 }).to_string().as_bytes());
    let cases: Vec<(&str, String)> = vec![
        (
            "expired",
            token::sign(&json!({ "iss": pid, "sub": "alice", "exp": unix_now_secs() as u64 - 10 }), key.as_bytes()),
        ),
        (
            "not yet valid (nbf)",
            token::sign(&json!({ "iss": pid, "sub": "alice", "exp": exp, "nbf": exp - 60 }), key.as_bytes()),
        ),
        ("alg none, no signature", format!("{none_header}.{payload}.")),
        ("alg none, a copied signature", format!("{none_header}.{payload}.{good_sig}")),
        ("alg HS512", format!("{hs512_header}.{payload}.{good_sig}")),
        ("signed with another project's key", token::sign(&claims, other_key.as_bytes())),
        ("signed with a wrong secret", token::sign(&claims, b"not-the-key")),
        ("payload swapped under a valid signature", format!("{header}.{forged_payload}.{good_sig}")),
        ("missing exp", token::sign(&json!({ "iss": pid, "sub": "alice" }), key.as_bytes())),
        ("missing sub", token::sign(&json!({ "iss": pid, "exp": exp }), key.as_bytes())),
        (
            "unknown project",
            token::sign(&json!({ "iss": "p_0000000000000000", "sub": "a", "exp": exp }), key.as_bytes()),
        ),
        ("malformed: empty", String::new()),
        ("malformed: one part", "abc".into()),
        ("malformed: two parts", format!("{header}.{payload}")),
        ("malformed: four parts", format!("{good}.x")),
        ("malformed: not base64", "!!!.???.***".into()),
        ("malformed: payload not JSON", format!("{header}.{}.{good_sig}", b64(b"not json"))),
        ("malformed: signature truncated", good[..good.len() - 4].to_string()),
    ];
    for (what, t) in &cases {
        let status = expect_http_status(hub.ws_raw(&token_path(t)));
        assert_eq!(status, 401, "token {what}: {t:?}");
    }
    // A userId that differs from `sub` is refused as well.
    let status = expect_http_status(hub.ws_raw(&format!("{}&userId=bob", token_path(&good))));
    assert_eq!(status, 401, "token for alice with userId=bob");
    assert_alive(&mut ws, "the valid connection after all the refusals");
}

#[test]
fn a_rooms_claim_limits_joins_and_an_expiring_token_closes_its_connection_1008() {
    let _quiet = shared();
    let (hub, pid, key, _) = token_hub();
    let exp = unix_now_secs() as u64 + 600;
    let limited = token::sign(&json!({ "iss": pid, "sub": "carol", "exp": exp, "rooms": ["general"] }), key.as_bytes());
    let (mut ws, _) = expect_connected(hub.ws_raw(&token_path(&limited)), "token with rooms");
    ws.join("general");
    ws.send(json!({ "type": "join", "room": "secret" }));
    let err = ws.recv_type("error");
    assert_eq!((&err["event"], &err["code"]), (&json!("join"), &json!("forbidden")), "join outside the claim: {err}");
    // The claim limits this connection, not the room: an API-key connection may join.
    hub.ws(&key, "dave").join("secret");

    // A token two seconds from expiry: served until then, closed 1008 `token expired` at it.
    let exp = unix_now_secs() + 2.0;
    let short = token::sign(&json!({ "iss": pid, "sub": "erin", "exp": exp }), key.as_bytes());
    let (mut ws, _) = expect_connected(hub.ws_raw(&token_path(&short)), "a token expiring in 2 s");
    ws.join("general");
    assert_alive(&mut ws, "before expiry");
    let closed = read_close(&mut ws, Duration::from_secs(6));
    let at = unix_now_secs();
    assert_eq!(closed.code, Some(1008), "close at token expiry: {closed:?}");
    assert_eq!(closed.reason, "token expired");
    assert!(at >= exp - 0.05, "closed {:.3} s before the token expired", exp - at);
    assert!(at <= exp + 1.5, "closed {:.3} s after the token expired", at - exp);
    // The expired token can no longer connect.
    assert_eq!(expect_http_status(hub.ws_raw(&token_path(&short))), 401, "reusing the expired token");
}

#[test]
fn require_tokens_refuses_api_key_upgrades_with_401() {
    let _quiet = shared();
    let (hub, pid, key, _) = token_hub();
    let mut before = hub.ws(&key, "early");
    let patch =
        hub.call("PATCH", "/api/v1/project", &[("X-API-Key", key.as_str())], Some(&json!({ "requireTokens": true })));
    assert_eq!(patch.status, 200, "PATCH requireTokens: {patch:?}");
    assert_eq!(patch.json()["requireTokens"], true);
    assert_eq!(hub.get("/api/v1/project", Some(&key)).json()["requireTokens"], true);

    let status = expect_http_status(hub.ws_raw(&format!("/?apiKey={}&userId=late", pct(&key))));
    assert_eq!(status, 401, "apiKey upgrade when the project requires tokens");
    let status = expect_http_status(upgrade(&hub, "/?userId=late", &[("X-API-Key", &key)]));
    assert_eq!(status, 401, "X-API-Key upgrade when the project requires tokens");
    let t = token::sign(&json!({ "iss": pid, "sub": "late", "exp": unix_now_secs() as u64 + 600 }), key.as_bytes());
    let (mut ws, _) = expect_connected(hub.ws_raw(&token_path(&t)), "token upgrade when required");
    ws.join("general");
    // Connections already open stay open; REST still takes the key.
    assert_alive(&mut before, "an apiKey connection opened before the change");
    assert_eq!(hub.get("/api/v1/rooms", Some(&key)).status, 200, "REST with X-API-Key");

    let patch =
        hub.call("PATCH", "/api/v1/project", &[("X-API-Key", key.as_str())], Some(&json!({ "requireTokens": false })));
    assert_eq!(patch.status, 200);
    expect_connected(
        hub.ws_raw(&format!("/?apiKey={}&userId=later", pct(&key))),
        "apiKey upgrade after turning it off",
    );
}

#[test]
fn the_origin_allow_list_refuses_unlisted_origins_with_403() {
    let _quiet = shared();
    let (hub, pid, key, _) = token_hub();
    let patch = hub.call(
        "PATCH",
        "/api/v1/project",
        &[("X-API-Key", key.as_str())],
        Some(&json!({ "allowedOrigins": ["https://app.example", "http://localhost:5173"] })),
    );
    assert_eq!(patch.status, 200, "PATCH allowedOrigins: {patch:?}");
    assert_eq!(patch.json()["allowedOrigins"], json!(["https://app.example", "http://localhost:5173"]));

    let path = format!("/?apiKey={}&userId=web", pct(&key));
    for origin in
        ["https://evil.example", "https://app.example:443", "http://app.example", "null", "https://APP.example"]
    {
        let status = expect_http_status(upgrade(&hub, &path, &[("Origin", origin)]));
        assert_eq!(status, 403, "Origin {origin:?} is not listed");
    }
    for origin in ["https://app.example", "http://localhost:5173"] {
        let (mut ws, _) = expect_connected(upgrade(&hub, &path, &[("Origin", origin)]), origin);
        ws.join("general");
    }
    // No Origin header (not a browser): not affected.
    expect_connected(upgrade(&hub, &path, &[]), "no Origin header");
    // Tokens are subject to the list as well.
    let t = token::sign(&json!({ "iss": pid, "sub": "web", "exp": unix_now_secs() as u64 + 600 }), key.as_bytes());
    let status = expect_http_status(upgrade(&hub, &token_path(&t), &[("Origin", "https://evil.example")]));
    assert_eq!(status, 403, "token upgrade from an unlisted Origin");
    expect_connected(upgrade(&hub, &token_path(&t), &[("Origin", "https://app.example")]), "token, listed Origin");

    // An empty list allows every origin again.
    let patch =
        hub.call("PATCH", "/api/v1/project", &[("X-API-Key", key.as_str())], Some(&json!({ "allowedOrigins": [] })));
    assert_eq!(patch.status, 200);
    expect_connected(upgrade(&hub, &path, &[("Origin", "https://evil.example")]), "any Origin with an empty list");
}

#[test]
fn a_ping_flood_from_a_client_that_never_reads_is_dropped_1008_not_buffered() {
    let _quiet = shared();
    let hub = Hub::start_with(&["--max-outbound-bytes", "65536"]);
    let key = hub.create_project("pings").1;
    let pid = hub.pid();
    let opts = [(libc::SOL_SOCKET, libc::SO_RCVBUF, 4096), (libc::IPPROTO_TCP, libc::TCP_MAXSEG, 1400)];
    let path = format!("/?apiKey={}&userId=pinger", pct(&key));
    let mut pinger = RawWs::open(raw_connect(hub.addr, None, &opts), hub.addr, &path);
    let rss_before = rss_kib_of(pid);
    // 40,000 pings of 125 bytes ask for ~5 MB of pongs: far past the 64 KiB
    // queue plus what the kernel buffers for a 4 KiB receive window.
    let ping = client_frame(9, true, &[b'p'; 125]);
    let burst: Vec<u8> = ping.iter().copied().cycle().take(ping.len() * 1000).collect();
    let mut sent = 0;
    for _ in 0..40 {
        if pinger.stream.write_all(&burst).is_err() {
            break; // the hub already closed it
        }
        sent += 1;
    }
    let dropped = wait_for(Duration::from_secs(5), || disconnects(&hub, "slow_consumer") >= 1.0);
    assert!(dropped, "a client that pings without reading was not dropped ({sent}k pings sent)");
    let (_, closed) = read_until_eof(&mut pinger.stream, Duration::from_secs(5));
    assert!(closed, "the pinger's socket was not closed");
    let rss_after = rss_kib_of(pid);
    assert!(rss_after < rss_before + 4 * 1024, "hub RSS grew from {rss_before} KiB to {rss_after} KiB");
    // Everyone else is still served.
    let mut other = hub.ws(&key, "other");
    assert_alive(&mut other, "another client after the flood");
}

#[test]
fn a_history_page_or_replay_larger_than_the_outbound_queue_does_not_drop_a_reading_client() {
    let _quiet = shared();
    // Pages and replays may use half of the 64 KiB queue.
    let hub = Hub::start_with(&["--max-outbound-bytes", "65536"]);
    let key = hub.create_project("pages").1;
    hub.create_room(&key, "big", "public");
    let content = "y".repeat(4000);
    for _ in 0..30 {
        let r = hub.post("/api/v1/rooms/big/messages", Some(&key), &json!({ "userId": "w", "content": content }));
        assert_eq!(r.status, 201, "{r:?}");
    }
    let mut ws = hub.ws(&key, "reader");
    ws.join("big");
    // 30 × 4 KB would be ~125 KB in one frame: the page is cut to fit 32 KiB.
    ws.send(json!({ "type": "history", "room": "big", "limit": 30 }));
    let page = ws.recv_type("history");
    let seqs: Vec<u64> = page["messages"].as_array().unwrap().iter().map(|m| m["seq"].as_u64().unwrap()).collect();
    assert!(!seqs.is_empty() && seqs.len() < 30, "page of {} messages", seqs.len());
    assert_eq!(seqs.last(), Some(&30), "a backward page keeps the newest messages");
    assert!(page.to_string().len() <= 32 * 1024, "page of {} bytes", page.to_string().len());
    // Paging on from the first seq reaches the oldest message.
    let mut oldest = seqs[0];
    while oldest > 1 {
        ws.send(json!({ "type": "history", "room": "big", "before": oldest, "limit": 30 }));
        let page = ws.recv_type("history");
        let first = page["messages"][0]["seq"].as_u64().expect("a non-empty page");
        assert!(first < oldest, "paging backwards made no progress at {oldest}");
        oldest = first;
    }
    // A replay that would not fit is refused as a whole: recovered false, no messages.
    let mut late = hub.ws(&key, "late");
    late.send(json!({ "type": "join", "room": "big", "since": 1 }));
    let joined = late.recv_type("joined");
    assert_eq!(joined["recovered"], false, "{joined}");
    assert_alive(&mut late, "after a refused replay");
    // A replay that fits is sent in full.
    late.send(json!({ "type": "join", "room": "big", "since": 27 }));
    assert_eq!(late.recv_type("joined")["recovered"], true);
    for seq in 28..=30 {
        assert_eq!(late.recv_type("message")["seq"], seq);
    }
    // The reader is still served (it was told of `late` meanwhile).
    ws.send(json!({ "type": "ping" }));
    ws.recv_type("pong");
    assert_eq!(disconnects(&hub, "slow_consumer"), 0.0);
}

#[test]
fn an_http_client_that_pipelines_without_reading_neither_spins_the_loop_nor_stays_forever() {
    let _quiet = shared();
    let hub = Hub::start_with(&["--max-outbound-bytes", "65536", "--http-idle-timeout-ms", "1500"]);
    let pid = hub.pid();
    let key = hub.create_project("pipeliner").1;
    hub.create_room(&key, "r", "public");
    for _ in 0..20 {
        let r =
            hub.post("/api/v1/rooms/r/messages", Some(&key), &json!({ "userId": "w", "content": "z".repeat(1000) }));
        assert_eq!(r.status, 201);
    }
    // ~2 MB of pipelined requests (more than the hub buffers: head + body
    // limits) for ~25 KB answers each, and never a read.
    let one = format!("GET /api/v1/rooms/r/messages HTTP/1.1\r\nHost: h\r\nX-API-Key: {key}\r\n\r\n");
    let requests = one.repeat(2_000_000 / one.len());
    let opts = [(libc::SOL_SOCKET, libc::SO_RCVBUF, 4096)];
    let mut stream = raw_connect(hub.addr, None, &opts);
    stream.set_write_timeout(Some(Duration::from_millis(500))).unwrap();
    let _ = stream.write_all(requests.as_bytes()); // times out once the hub stops reading
                                                   // The hub is paused on this client: it must idle, not spin.
    let cpu_before = cpu_time_of(pid);
    std::thread::sleep(Duration::from_millis(500));
    let spent = cpu_time_of(pid).saturating_sub(cpu_before);
    assert!(spent < Duration::from_millis(150), "the hub used {spent:?} of CPU in 500 ms while paused");
    // After the idle timeout without taking any answer, the connection goes.
    let closed = wait_for(Duration::from_secs(5), || disconnects(&hub, "slow_consumer") >= 1.0);
    assert!(closed, "a client that never reads its answers was kept open");
    let (_, eof) = read_until_eof(&mut stream, Duration::from_secs(10));
    assert!(eof, "the socket was not closed");
    assert_eq!(hub.get("/health", None).status, 200);
}
