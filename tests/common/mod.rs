//! Shared integration-test harness: spawns the real `realtimehub` binary and talks to it
//! over a hand-rolled HTTP/1.1 client and a `tungstenite` WebSocket client.
//!
//! Nothing here sleeps and hopes: every wait is for an expected line, response or frame,
//! bounded by a timeout that panics with a message saying what was awaited.
//!
//! Quiet unless something fails: hubs log at `RUST_LOG=error` (or the test run's own
//! `RUST_LOG`), and their stderr is kept, not shown; a test that panics prints the
//! last lines of each of its hubs' stderr. A test that reads the log asks for it with
//! [`Hub::start_with_stderr`].
#![allow(dead_code)]

pub mod receiver;

use serde_json::{json, Value};
use std::io::{self, BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};
use tungstenite::{error::ProtocolError, Error as WsError, Message, WebSocket};

const STARTUP_TIMEOUT: Duration = Duration::from_secs(20);
const HTTP_TIMEOUT: Duration = Duration::from_secs(10);
const WS_TIMEOUT: Duration = Duration::from_secs(5);
const TERM_TIMEOUT: Duration = Duration::from_secs(10);
/// Stderr lines kept per hub to show when a test fails.
const KEPT_STDERR_LINES: usize = 200;

/// The log level of hubs whose stderr no test reads: errors only, since most tests
/// provoke warnings on purpose; the test run's `RUST_LOG` overrides it for debugging.
fn quiet_log_level() -> String {
    std::env::var("RUST_LOG").unwrap_or_else(|_| "error".to_string())
}

/// The last [`KEPT_STDERR_LINES`] lines a hub wrote to stderr.
type KeptLines = Arc<Mutex<Vec<String>>>;

/// A running hub process on an ephemeral port, killed on drop.
pub struct Hub {
    child: Child,
    pub addr: SocketAddr,
    pub db_path: PathBuf,
    /// Owns the database directory (None for [`Hub::start_at`]); removed on drop.
    tempdir: Option<tempfile::TempDir>,
    /// Stderr kept for a failing test (None when the test reads stderr itself), and the
    /// thread filling it, joined before the lines are shown so none is missing.
    kept_stderr: Option<(KeptLines, std::thread::JoinHandle<()>)>,
}

impl Hub {
    /// Starts a hub with a fresh database and default flags.
    pub fn start() -> Hub {
        Hub::start_with(&[])
    }

    /// Starts a hub with a fresh database in a new temp dir plus `args`.
    pub fn start_with(args: &[&str]) -> Hub {
        let dir = tempfile::tempdir().expect("creating temp dir for the hub database");
        let mut hub = Hub::start_at(&dir.path().join("hub.db"), args);
        hub.tempdir = Some(dir);
        hub
    }

    /// Starts a hub on an existing database path (restart tests). The caller keeps the
    /// directory alive, e.g. by keeping the first `Hub` in scope after `kill9`/`terminate`.
    pub fn start_at(db_path: &Path, args: &[&str]) -> Hub {
        Hub::launch(db_path, args, &quiet_log_level(), false).0
    }

    /// Like [`Hub::start_with`], but with `RUST_LOG=rust_log` and stderr piped instead of
    /// inherited: the receiver yields each stderr line as it is written and disconnects once
    /// the hub has exited (so after [`Hub::terminate`] every line can be drained).
    pub fn start_with_stderr(args: &[&str], rust_log: &str) -> (Hub, mpsc::Receiver<String>) {
        let dir = tempfile::tempdir().expect("creating temp dir for the hub database");
        let (mut hub, stderr) = Hub::launch(&dir.path().join("hub.db"), args, rust_log, true);
        hub.tempdir = Some(dir);
        (hub, stderr.expect("stderr is captured"))
    }

    /// Spawns the binary and waits for its ready line; with `capture_stderr`, also returns a
    /// receiver of its stderr lines, and otherwise keeps them for [`Drop`] to show on a panic.
    fn launch(
        db_path: &Path,
        args: &[&str],
        rust_log: &str,
        capture_stderr: bool,
    ) -> (Hub, Option<mpsc::Receiver<String>>) {
        let mut child = Command::new(env!("CARGO_BIN_EXE_realtimehub"))
            .args(["--host", "127.0.0.1", "--port", "0", "--db"])
            .arg(db_path)
            .args(args)
            .env("RUST_LOG", rust_log)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawning the realtimehub binary");
        let stderr_pipe = child.stderr.take().expect("child stderr is piped");
        let (stderr, kept_stderr) = if capture_stderr {
            let (tx, rx) = mpsc::channel::<String>();
            std::thread::spawn(move || {
                // Keeps draining after the receiver is gone, so the hub never blocks on a full pipe.
                for line in BufReader::new(stderr_pipe).lines() {
                    let Ok(line) = line else { break };
                    let _ = tx.send(line);
                }
            });
            (Some(rx), None)
        } else {
            let kept = KeptLines::default();
            let writer = Arc::clone(&kept);
            let reader = std::thread::spawn(move || {
                for line in BufReader::new(stderr_pipe).lines() {
                    let Ok(line) = line else { break };
                    let mut lines = writer.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                    if lines.len() == KEPT_STDERR_LINES {
                        lines.remove(0);
                    }
                    lines.push(line);
                }
            });
            (None, Some((kept, reader)))
        };
        let stdout = child.stdout.take().expect("child stdout is piped");
        let (tx, rx) = mpsc::channel::<String>();
        std::thread::spawn(move || {
            // Forward every line; after the ready line the receiver is gone and we just drain.
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line.clone()).is_err() {
                    eprintln!("[hub stdout] {line}");
                }
            }
        });
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        let mut seen = Vec::new();
        let port = loop {
            let Ok(line) = rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) else {
                let _ = child.kill(); // no-op if it already exited on its own
                let status = child.wait();
                let stderr = kept_stderr.map(|(kept, reader)| stderr_tail(&kept, reader)).unwrap_or_default();
                panic!("hub not ready within 20 s or exited ({status:?}); stdout: {seen:?}{stderr}");
            };
            if let Some(rest) = line.trim().strip_prefix("listening on http://") {
                let port = rest.rsplit(':').next().and_then(|p| p.parse::<u16>().ok());
                break port.unwrap_or_else(|| panic!("bad ready line: {line:?}"));
            }
            seen.push(line);
        };
        let hub = Hub {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            db_path: db_path.to_path_buf(),
            tempdir: None,
            kept_stderr,
        };
        (hub, stderr)
    }

    /// The hub's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILLs the hub and reaps it (no-op if it already exited).
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        self.child.wait().expect("reaping the killed hub");
    }

    /// Sends SIGTERM and waits up to 10 s for the exit status.
    pub fn terminate(&mut self) -> ExitStatus {
        if let Ok(Some(status)) = self.child.try_wait() {
            return status;
        }
        let pid = libc::pid_t::try_from(self.pid()).expect("the hub's pid fits in pid_t");
        // SAFETY: kill(2) only takes plain integers; `pid` is our own child, not yet reaped
        // (try_wait above saw it running), so the pid cannot have been reused.
        if unsafe { libc::kill(pid, libc::SIGTERM) } != 0 {
            panic!("kill({pid}, SIGTERM) failed: {}", io::Error::last_os_error());
        }
        let deadline = Instant::now() + TERM_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().expect("polling the hub process") {
                return status;
            }
            if Instant::now() >= deadline {
                self.kill9();
                panic!("hub did not exit within 10 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// A fresh keep-alive HTTP connection to the hub.
    pub fn http(&self) -> Http {
        Http::connect(self.addr)
    }

    /// One request with a JSON `body` on a fresh connection.
    pub fn call(&self, method: &str, path: &str, hdrs: &[(&str, &str)], body: Option<&Value>) -> Resp {
        let mut headers = hdrs.to_vec();
        let body = body.map(Value::to_string);
        if body.is_some() {
            headers.push(("Content-Type", "application/json"));
        }
        self.http().request(method, path, &headers, body.as_deref())
    }

    /// GET on a fresh connection, with `X-API-Key` when `api_key` is given.
    pub fn get(&self, path: &str, api_key: Option<&str>) -> Resp {
        self.call("GET", path, &key_header(api_key), None)
    }

    /// POST a JSON body on a fresh connection.
    pub fn post(&self, path: &str, api_key: Option<&str>, body: &Value) -> Resp {
        self.call("POST", path, &key_header(api_key), Some(body))
    }

    /// PUT (optionally with a JSON body) on a fresh connection.
    pub fn put(&self, path: &str, api_key: Option<&str>, body: Option<&Value>) -> Resp {
        self.call("PUT", path, &key_header(api_key), body)
    }

    /// DELETE on a fresh connection.
    pub fn delete(&self, path: &str, api_key: Option<&str>) -> Resp {
        self.call("DELETE", path, &key_header(api_key), None)
    }

    /// Creates a project on an open hub; returns `(id, apiKey)`.
    pub fn create_project(&self, name: &str) -> (String, String) {
        project_ids(self.post("/api/v1/projects", None, &json!({ "name": name })))
    }

    /// Creates a project with `Authorization: Bearer TOKEN`; returns `(id, apiKey)`.
    pub fn create_project_with_admin(&self, name: &str, token: &str) -> (String, String) {
        let auth = format!("Bearer {token}");
        let (headers, body) = ([("Authorization", auth.as_str())], json!({ "name": name }));
        project_ids(self.call("POST", "/api/v1/projects", &headers, Some(&body)))
    }

    /// Creates a room (`kind`: "public"/"private"), asserting 201; returns the room JSON.
    pub fn create_room(&self, key: &str, name: &str, kind: &str) -> Value {
        let body = json!({ "name": name, "type": kind });
        let resp = self.post("/api/v1/rooms", Some(key), &body);
        assert_eq!(resp.status, 201, "create room {name:?}: {resp:?}");
        resp.json()
    }

    /// Opens a WebSocket as `user` and consumes the `connected` frame.
    pub fn ws(&self, key: &str, user: &str) -> Ws {
        let path = format!("/?apiKey={}&userId={}", pct(key), pct(user));
        let mut ws = self.ws_raw(&path).unwrap_or_else(|e| panic!("ws connect as {user:?} failed: {e}"));
        let first = ws.recv();
        assert_eq!(first["type"], "connected", "first frame: {first}");
        assert_eq!(first["userId"], user, "connected frame: {first}");
        ws.connection_id = first["connectionId"]
            .as_str()
            .unwrap_or_else(|| panic!("connected frame lacks connectionId: {first}"))
            .to_string();
        ws
    }

    /// Attempts a WebSocket upgrade on `path_and_query` (e.g. `/ws?apiKey=..`), no asserts.
    pub fn ws_raw(&self, path_and_query: &str) -> Result<Ws, WsError> {
        let stream = connect(self.addr)?;
        let url = format!("ws://{}{}", self.addr, path_and_query);
        match tungstenite::client(url, stream) {
            Ok((socket, _)) => Ok(Ws { socket, connection_id: String::new() }),
            Err(tungstenite::HandshakeError::Failure(e)) => Err(e),
            Err(tungstenite::HandshakeError::Interrupted(_)) => {
                Err(io::Error::new(ErrorKind::TimedOut, "WebSocket handshake timed out").into())
            }
        }
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        // A failing test shows what its hub logged (libtest prints it with the failure).
        if std::thread::panicking() {
            if let Some((kept, reader)) = self.kept_stderr.take() {
                eprintln!("hub on {} (pid {}){}", self.addr, self.child.id(), stderr_tail(&kept, reader));
            }
        }
    }
}

/// The kept stderr lines of an exited hub, as text to append to a failure message.
fn stderr_tail(kept: &KeptLines, reader: std::thread::JoinHandle<()>) -> String {
    let _ = reader.join(); // the hub has exited: its stderr is at EOF
    let lines = kept.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if lines.is_empty() {
        return "; stderr: (empty)".to_string();
    }
    format!("; last {} stderr lines:\n{}", lines.len(), lines.join("\n"))
}

fn key_header(api_key: Option<&str>) -> Vec<(&str, &str)> {
    api_key.map(|k| ("X-API-Key", k)).into_iter().collect()
}

fn project_ids(resp: Resp) -> (String, String) {
    assert_eq!(resp.status, 201, "create project: {resp:?}");
    let v = resp.json();
    match (v["id"].as_str(), v["apiKey"].as_str()) {
        (Some(id), Some(key)) => (id.to_string(), key.to_string()),
        _ => panic!("create project answer lacks id/apiKey: {v}"),
    }
}

/// A TCP connection with 10 s read/write timeouts and Nagle off.
fn connect(addr: SocketAddr) -> io::Result<TcpStream> {
    let stream = TcpStream::connect_timeout(&addr, HTTP_TIMEOUT)?;
    stream.set_read_timeout(Some(HTTP_TIMEOUT))?;
    stream.set_write_timeout(Some(HTTP_TIMEOUT))?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
pub fn pct(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The status of a refused upgrade (`Error::Http`); panics on success or other errors.
pub fn expect_http_status(result: Result<Ws, WsError>) -> u16 {
    match result {
        Err(WsError::Http(resp)) => resp.status().as_u16(),
        Err(e) => panic!("expected an HTTP error response, got error: {e}"),
        Ok(_) => panic!("expected an HTTP error response, but the upgrade succeeded"),
    }
}

/// 101 for an upgrade that succeeded, else the status of the refusal.
pub fn expect_http_status_or_ok(result: Result<Ws, WsError>) -> u16 {
    match result {
        Ok(_) => 101,
        other => expect_http_status(other),
    }
}

/// A parsed HTTP response. Header names are lowercased.
#[derive(Debug, Clone)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Resp {
    /// The body as JSON; panics with the body when it is not.
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("body is not JSON ({e}): {:?}", self.body))
    }

    /// The first header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers.iter().find(|(k, _)| *k == name).map(|(_, v)| v.as_str())
    }
}

/// A minimal HTTP/1.1 client on one TCP connection (keep-alive, pipelining, raw bytes).
pub struct Http {
    pub stream: TcpStream,
    host: String,
    buf: Vec<u8>,
}

impl Http {
    /// Connects with 10 s read/write timeouts.
    pub fn connect(addr: SocketAddr) -> Http {
        let stream = connect(addr).unwrap_or_else(|e| panic!("connecting to {addr}: {e}"));
        Http { stream, host: addr.to_string(), buf: Vec::new() }
    }

    /// Sends one request (adding Host and Content-Length unless given) and reads its response.
    pub fn request(&mut self, method: &str, path: &str, headers: &[(&str, &str)], body: Option<&str>) -> Resp {
        let has = |n: &str| headers.iter().any(|(k, _)| k.eq_ignore_ascii_case(n));
        let mut req = format!("{method} {path} HTTP/1.1\r\n");
        if !has("host") {
            req += &format!("Host: {}\r\n", self.host);
        }
        for (k, v) in headers {
            req += &format!("{k}: {v}\r\n");
        }
        let needs_len = body.is_some() || matches!(method, "POST" | "PUT" | "PATCH");
        if needs_len && !has("content-length") {
            req += &format!("Content-Length: {}\r\n", body.map_or(0, str::len));
        }
        req += "\r\n";
        req += body.unwrap_or("");
        self.send_raw(req.as_bytes());
        self.read(method == "HEAD")
    }

    /// Writes raw bytes (pipelined or malformed requests).
    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("writing to the hub");
    }

    /// Reads the next response (assumed not to be for a HEAD request).
    pub fn read_response(&mut self) -> Resp {
        self.read(false)
    }

    /// Everything that arrives (after any buffered bytes) until EOF, reset or timeout.
    pub fn read_to_end_or_close(&mut self) -> Vec<u8> {
        let mut out = std::mem::take(&mut self.buf);
        let mut chunk = [0u8; 8192];
        loop {
            match self.stream.read(&mut chunk) {
                Ok(0) | Err(_) => return out,
                Ok(n) => out.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// Reads more bytes into `buf`; false on EOF. Panics on timeout or error.
    fn fill(&mut self, what: &str) -> bool {
        let mut chunk = [0u8; 8192];
        match self.stream.read(&mut chunk) {
            Ok(0) => false,
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                let got = String::from_utf8_lossy(&self.buf);
                panic!("timed out after 10 s reading HTTP {what}; got so far: {got:?}")
            }
            Err(e) => panic!("reading HTTP {what}: {e}"),
        }
    }

    fn read(&mut self, head_request: bool) -> Resp {
        let head_end = loop {
            if let Some(i) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            if !self.fill("response head") {
                let got = String::from_utf8_lossy(&self.buf);
                panic!("connection closed before a full response head; got {got:?}");
            }
        };
        let head = String::from_utf8_lossy(&self.buf[..head_end]).into_owned();
        self.buf.drain(..head_end);
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or_default();
        let status = status_line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse::<u16>().ok())
            .unwrap_or_else(|| panic!("bad status line: {status_line:?}"));
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        let mut resp = Resp { status, headers, body: String::new() };
        if (100..200).contains(&status) && status != 101 {
            return self.read(head_request); // skip interim responses such as 100 Continue
        }
        if head_request || status == 204 || status == 304 || status == 101 {
            return resp;
        }
        let body = if let Some(len) = resp.header("content-length") {
            let len: usize = len.parse().unwrap_or_else(|_| panic!("bad Content-Length: {len:?}"));
            while self.buf.len() < len {
                assert!(self.fill("body"), "connection closed mid-body: {resp:?}");
            }
            self.buf.drain(..len).collect::<Vec<u8>>()
        } else {
            let chunked = resp.header("transfer-encoding").is_some_and(|t| t.contains("chunked"));
            assert!(!chunked, "the test client does not decode chunked bodies: {resp:?}");
            while self.fill("close-delimited body") {}
            std::mem::take(&mut self.buf)
        };
        resp.body = String::from_utf8_lossy(&body).into_owned();
        resp
    }
}

/// What one bounded read of the WebSocket produced.
enum Got {
    Text(Value),
    Closed(Option<u16>),
    Timeout,
}

/// A WebSocket client connection with frame-awaiting helpers (5 s budgets).
pub struct Ws {
    pub socket: WebSocket<TcpStream>,
    /// From the `connected` frame (empty for [`Hub::ws_raw`]).
    pub connection_id: String,
}

impl Ws {
    /// Sends a JSON value as one text frame.
    pub fn send(&mut self, v: Value) {
        self.send_text(&v.to_string());
    }

    /// Sends a raw text frame.
    pub fn send_text(&mut self, text: &str) {
        self.socket.send(Message::text(text)).unwrap_or_else(|e| panic!("ws send failed: {e}"));
    }

    /// Reads until a text frame, a close, or `deadline`, skipping ping/pong frames.
    fn next(&mut self, deadline: Instant) -> Got {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Got::Timeout;
            }
            let timeout = left.max(Duration::from_millis(1));
            self.socket.get_mut().set_read_timeout(Some(timeout)).expect("set_read_timeout");
            match self.socket.read() {
                Ok(Message::Text(t)) => {
                    let v = serde_json::from_str(&t).unwrap_or_else(|e| panic!("text frame is not JSON ({e}): {t:?}"));
                    return Got::Text(v);
                }
                Ok(Message::Binary(b)) => panic!("unexpected binary frame: {b:?}"),
                Ok(Message::Close(frame)) => {
                    let _ = self.socket.flush(); // send our close reply
                    return Got::Closed(frame.map(|f| u16::from(f.code)));
                }
                Ok(_) => continue, // ping / pong
                Err(WsError::Io(e)) => match e.kind() {
                    ErrorKind::WouldBlock | ErrorKind::TimedOut => return Got::Timeout,
                    ErrorKind::ConnectionReset | ErrorKind::BrokenPipe => return Got::Closed(None),
                    ErrorKind::UnexpectedEof => return Got::Closed(None),
                    _ => panic!("ws read failed: {e}"),
                },
                Err(WsError::ConnectionClosed | WsError::AlreadyClosed) => return Got::Closed(None),
                Err(WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake)) => return Got::Closed(None),
                Err(e) => panic!("ws read failed: {e}"),
            }
        }
    }

    /// The next text frame as JSON, within 5 s.
    pub fn recv(&mut self) -> Value {
        self.recv_until("a frame", |_| true)
    }

    /// The first frame matching `pred` within 5 s; `what` names it in the panic message.
    pub fn recv_until(&mut self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + WS_TIMEOUT;
        let mut skipped = Vec::new();
        loop {
            match self.next(deadline) {
                Got::Text(v) if pred(&v) => return v,
                Got::Text(v) => skipped.push(v),
                Got::Closed(code) => {
                    panic!("connection closed (code {code:?}) waiting for {what}; skipped {skipped:?}")
                }
                Got::Timeout => panic!("timed out waiting for {what}; skipped {skipped:?}"),
            }
        }
    }

    /// The first frame whose `type` is `ty`, within 5 s, skipping others.
    pub fn recv_type(&mut self, ty: &str) -> Value {
        self.recv_until(&format!("a {ty:?} frame"), |v| v["type"] == ty)
    }

    /// Asserts that no text frame (and no close) arrives within `ms` milliseconds.
    pub fn expect_silence(&mut self, ms: u64) {
        match self.next(Instant::now() + Duration::from_millis(ms)) {
            Got::Timeout => {}
            Got::Text(v) => panic!("expected silence for {ms} ms, got {v}"),
            Got::Closed(code) => panic!("expected silence for {ms} ms, got close {code:?}"),
        }
    }

    /// Waits up to 5 s for the server to close, skipping text frames; the close code, if any.
    pub fn expect_close(&mut self) -> Option<u16> {
        let deadline = Instant::now() + WS_TIMEOUT;
        let mut skipped = Vec::new();
        loop {
            match self.next(deadline) {
                Got::Text(v) => skipped.push(v),
                Got::Closed(code) => return code,
                Got::Timeout => {
                    panic!("timed out waiting for the server to close; skipped {skipped:?}")
                }
            }
        }
    }

    /// Sends a close frame and waits briefly for the server's reply.
    pub fn close(mut self) {
        if self.socket.close(None).is_ok() {
            let deadline = Instant::now() + WS_TIMEOUT;
            while let Got::Text(_) = self.next(deadline) {}
        }
    }

    /// Joins `room` and returns its `joined` frame; panics on an `error` frame.
    pub fn join(&mut self, room: &str) -> Value {
        self.send(json!({ "type": "join", "room": room }));
        let v = self.recv_until(&format!("joined {room:?}"), |v| {
            (v["type"] == "joined" && v["room"] == room) || (v["type"] == "error" && v["event"] == "join")
        });
        assert_eq!(v["type"], "joined", "join {room:?} refused: {v}");
        v
    }
}

/// `GET /metrics` on a hub without an admin token.
pub fn metrics_text(hub: &Hub) -> String {
    let resp = hub.get("/metrics", None);
    assert_eq!(resp.status, 200, "GET /metrics: {resp:?}");
    resp.body
}

/// The value of one series (name plus labels, exactly as exposed), 0 when absent.
pub fn metric_value(text: &str, series: &str) -> f64 {
    text.lines()
        .filter_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map(|v| v.trim().parse::<f64>().unwrap_or_else(|e| panic!("metric {series} value {v:?}: {e}")))
        .next()
        .unwrap_or(0.0)
}

/// Resident set size of a process in KiB.
pub fn rss_kib_of(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("reading /proc/PID/status");
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).expect("VmRSS line");
    line.split_whitespace().nth(1).and_then(|v| v.parse().ok()).expect("VmRSS value")
}

/// CPU time (user + system) a process has used so far.
pub fn cpu_time_of(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("reading /proc/PID/stat");
    let after_comm = &stat[stat.rfind(')').expect("comm field") + 2..];
    let fields: Vec<&str> = after_comm.split_whitespace().collect();
    // Fields 14 and 15 of stat(5); after `(comm) ` the state is index 0, so utime is 11.
    let ticks: u64 = fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime");
    // SAFETY: sysconf only reads a configuration value.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Duration::from_micros(ticks * 1_000_000 / hz)
}

/// Seconds since the Unix epoch, for token `exp` claims.
pub fn unix_now_secs() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock after 1970").as_secs_f64()
}

/// What one run of the binary printed, and how it ended.
pub struct Run {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

/// Runs the binary with `args` in an environment holding only `envs` (so no `PORT`,
/// `REALTIMEHUB_ADMIN_TOKEN` or `RUST_LOG` of the test run leaks in); killed after 10 s.
pub fn run_binary(args: &[&str], envs: &[(&str, &str)]) -> Run {
    let mut child = Command::new(env!("CARGO_BIN_EXE_realtimehub"))
        .args(args)
        .env_clear()
        .envs(envs.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning the realtimehub binary");
    let mut out = child.stdout.take().expect("piped stdout");
    let mut err = child.stderr.take().expect("piped stderr");
    let out_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().expect("polling the child") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("`realtimehub {}` did not exit within 10 s", args.join(" "));
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Run {
        code: status.code(),
        stdout: out_reader.join().expect("stdout reader"),
        stderr: err_reader.join().expect("stderr reader"),
    }
}
