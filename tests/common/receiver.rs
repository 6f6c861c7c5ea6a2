//! A real HTTP/1.1 server for the backend tests: it plays the project's
//! backend (access hook, webhook receiver) on 127.0.0.1, records every
//! request, and answers as the test says: a status and body, nothing at all
//! (a hung backend), or not at all (stopped, then started again on the same
//! port). Keep-alive, `Content-Length` bodies; plain TCP, or TLS when given
//! a rustls server configuration.
#![allow(dead_code)]

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// One request the receiver got.
#[derive(Debug, Clone)]
pub struct Received {
    pub method: String,
    pub path: String,
    /// Header names lowercase.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }
}

/// How the receiver answers.
#[derive(Debug, Clone)]
pub enum Answer {
    /// This status and JSON body.
    Reply(u16, String),
    /// Reads the request and never answers (the connection stays open).
    Hang,
}

/// What the test says to answer to the request of a given index (from 0).
type Answerer = Box<dyn FnMut(usize, &Received) -> Answer + Send>;

struct Shared {
    received: Mutex<Vec<Received>>,
    arrived: Condvar,
    /// The answer for a request given its index (from 0), by the test.
    answer: Mutex<Answerer>,
    stop: AtomicBool,
    accepted: AtomicUsize,
}

/// A running receiver; stopped on drop.
pub struct Receiver {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    tls: Option<Arc<rustls::ServerConfig>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Receiver {
    /// Starts on a free port, answering every request `200 {}`.
    pub fn start() -> Receiver {
        Receiver::start_on(0, None)
    }

    /// Starts with TLS (an `https://` backend).
    pub fn start_tls(config: Arc<rustls::ServerConfig>) -> Receiver {
        Receiver::start_on(0, Some(config))
    }

    fn start_on(port: u16, tls: Option<Arc<rustls::ServerConfig>>) -> Receiver {
        let shared = Arc::new(Shared {
            received: Mutex::new(Vec::new()),
            arrived: Condvar::new(),
            answer: Mutex::new(Box::new(|_, _| Answer::Reply(200, "{}".into()))),
            stop: AtomicBool::new(false),
            accepted: AtomicUsize::new(0),
        });
        let mut r = Receiver { addr: SocketAddr::from(([127, 0, 0, 1], port)), shared, tls, thread: None };
        r.listen(port);
        r
    }

    fn listen(&mut self, port: u16) {
        let listener = TcpListener::bind(("127.0.0.1", port)).expect("bind the receiver");
        listener.set_nonblocking(true).expect("nonblocking");
        self.addr = listener.local_addr().expect("addr");
        self.shared.stop.store(false, Ordering::SeqCst);
        let (shared, tls) = (self.shared.clone(), self.tls.clone());
        self.thread = Some(std::thread::spawn(move || {
            let mut workers = Vec::new();
            while !shared.stop.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        shared.accepted.fetch_add(1, Ordering::SeqCst);
                        let (shared, tls) = (shared.clone(), tls.clone());
                        workers.push(std::thread::spawn(move || serve(stream, shared, tls)));
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => std::thread::sleep(Duration::from_millis(5)),
                    Err(_) => break,
                }
            }
            drop(listener);
            for w in workers {
                let _ = w.join();
            }
        }));
    }

    /// `http://127.0.0.1:PORT` + `path` (or `https://localhost:PORT`).
    pub fn url(&self, path: &str) -> String {
        match self.tls {
            Some(_) => format!("https://localhost:{}{path}", self.addr.port()),
            None => format!("http://127.0.0.1:{}{path}", self.addr.port()),
        }
    }

    /// How to answer from now on: `f(index, request)`.
    pub fn answer_with(&self, f: impl FnMut(usize, &Received) -> Answer + Send + 'static) {
        *self.shared.answer.lock().unwrap() = Box::new(f);
    }

    /// Stops listening and drops every connection: the backend is down.
    pub fn stop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }

    /// Listens again on the same port.
    pub fn restart(&mut self) {
        let port = self.addr.port();
        self.listen(port);
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.shared.accepted.load(Ordering::SeqCst)
    }

    /// Every request so far.
    pub fn received(&self) -> Vec<Received> {
        self.shared.received.lock().unwrap().clone()
    }

    /// Waits until `pred` holds for what was received, or panics after `within`.
    pub fn wait_until(&self, what: &str, within: Duration, pred: impl Fn(&[Received]) -> bool) -> Vec<Received> {
        let deadline = Instant::now() + within;
        let mut got = self.shared.received.lock().unwrap();
        loop {
            if pred(&got) {
                return got.clone();
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                panic!("receiver: timed out waiting for {what}; got {} requests: {:?}", got.len(), summary(&got));
            }
            got = self.shared.arrived.wait_timeout(got, left).unwrap().0;
        }
    }

    /// Waits for `n` requests in all.
    pub fn wait_requests(&self, n: usize, within: Duration) -> Vec<Received> {
        self.wait_until(&format!("{n} requests"), within, |got| got.len() >= n)
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop();
    }
}

fn summary(got: &[Received]) -> Vec<String> {
    got.iter().map(|r| format!("{} {} {}", r.method, r.path, String::from_utf8_lossy(&r.body))).collect()
}

trait Stream: Read + Write {}
impl<T: Read + Write> Stream for T {}

fn serve(stream: TcpStream, shared: Arc<Shared>, tls: Option<Arc<rustls::ServerConfig>>) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(Duration::from_millis(50)));
    let mut io: Box<dyn Stream> = match tls {
        Some(config) => match rustls::ServerConnection::new(config) {
            Ok(conn) => Box::new(rustls::StreamOwned::new(conn, stream)),
            Err(_) => return,
        },
        None => Box::new(stream),
    };
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        if shared.stop.load(Ordering::SeqCst) {
            return;
        }
        match io.read(&mut chunk) {
            Ok(0) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => continue,
            Err(_) => return,
        }
        while let Some((request, used)) = parse(&buf) {
            buf.drain(..used);
            let index = {
                let mut got = shared.received.lock().unwrap();
                got.push(request.clone());
                got.len() - 1
            };
            let answer = (shared.answer.lock().unwrap())(index, &request);
            shared.arrived.notify_all();
            match answer {
                Answer::Reply(status, body) => {
                    let head = format!(
                        "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                        body.len()
                    );
                    if io.write_all(head.as_bytes()).and_then(|_| io.write_all(body.as_bytes())).is_err() {
                        return;
                    }
                    let _ = io.flush();
                }
                Answer::Hang => {
                    // Hold the connection, answering nothing, until the test stops us.
                    while !shared.stop.load(Ordering::SeqCst) {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    return;
                }
            }
        }
    }
}

/// One complete request at the start of `buf`, and the bytes it took.
fn parse(buf: &[u8]) -> Option<(Received, usize)> {
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = String::from_utf8_lossy(&buf[..end]).to_string();
    let mut lines = head.split("\r\n");
    let mut first = lines.next()?.split(' ');
    let (method, path) = (first.next()?.to_string(), first.next()?.to_string());
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let len: usize = headers.iter().find(|(n, _)| n == "content-length").and_then(|(_, v)| v.parse().ok()).unwrap_or(0);
    if buf.len() < end + len {
        return None;
    }
    Some((Received { method, path, headers, body: buf[end..end + len].to_vec() }, end + len))
}
