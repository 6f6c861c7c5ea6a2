//! Outbound HTTP/1.1 and HTTPS client: how the loop calls users' backends
//! (access hooks, webhooks) without ever blocking.
//!
//! Everything runs on the caller's mio loop: sockets are non-blocking
//! `mio::net::TcpStream`s registered on the caller's registry under tokens
//! `token_base + n`, TLS is rustls driven sans-IO over those sockets, and the
//! only thread is a resolver for host names that are neither IP literals nor
//! `localhost` (it answers over a channel and wakes the loop through the
//! shared [`Waker`]).
//!
//! Connections are pooled per origin and kept alive; requests beyond the
//! connection bounds wait in one bounded FIFO queue. Every step (resolve,
//! connect, TLS handshake, write, response) runs under the request's
//! deadline, connecting also under `connect_timeout`, and every buffer is
//! bounded and freed with its connection.
//!
//! From the loop: [`Outbound::handle_event`] for every token
//! [`Outbound::owns`], [`Outbound::handle_wake`] when the shared waker fires,
//! [`Outbound::handle_timeout`] once [`Outbound::next_deadline`] has passed,
//! and [`Outbound::take_completions`] after any of these or
//! [`Outbound::start`] (a request can finish inside any of them).

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::io::{self, IoSlice, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, ToSocketAddrs};
use std::path::Path;
use std::sync::mpsc::{self, Receiver, SyncSender, TryRecvError, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::{Interest, Registry, Token, Waker};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore};
use slab::Slab;

use crate::url::Url;

/// Largest response head (status line and headers, 1xx heads included).
const MAX_HEAD: usize = 16 * 1024;
/// Headers parsed per response head.
const MAX_HEADERS: usize = 64;
/// Longest chunk-size line (extensions included).
const MAX_CHUNK_LINE: usize = 1024;
/// Most trailer bytes read (and ignored) after the last chunk.
const MAX_TRAILERS: usize = 16 * 1024;
/// Most interim (1xx) responses skipped before the final one.
const MAX_INTERIM: usize = 16;
/// How long a resolved host name is reused.
const DNS_TTL: Duration = Duration::from_secs(60);
/// Most host names cached.
const DNS_CACHE_MAX: usize = 256;
/// Most addresses kept per host name (tried in order).
const MAX_ADDRS: usize = 8;
/// Read buffer shared by all connections (one read at a time on one thread).
const SCRATCH_LEN: usize = 16 * 1024;
const USER_AGENT: &str = concat!("realtimehub/", env!("CARGO_PKG_VERSION"));

// ---------------------------------------------------------------- origins

/// What connections are pooled by: scheme, host and port.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Origin {
    /// TLS or not.
    pub https: bool,
    /// As in [`Url::host`].
    pub host: String,
    /// As in [`Url::port`].
    pub port: u16,
}

/// The pool key of a URL.
fn origin_of(url: &Url) -> Origin {
    Origin { https: url.https, host: url.host.clone(), port: url.port }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.https { "https" } else { "http" };
        let host = if self.host.contains(':') { format!("[{}]", self.host) } else { self.host.clone() };
        write!(f, "{scheme}://{host}:{}", self.port)
    }
}

// ---------------------------------------------------------------- errors

/// Why an outbound request failed, with enough context to log and to tell
/// the project owner what is wrong with their backend.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OutboundError {
    /// A caller-supplied method or header is not valid HTTP (a bug or bad
    /// settings, reported by [`Outbound::start`]).
    Header(String),
    /// The host name did not resolve.
    Resolve(String),
    /// No address of the host accepted a TCP connection.
    Connect(io::ErrorKind, String),
    /// The TLS handshake or a TLS record failed (certificate problems too).
    Tls(String),
    /// The deadline passed during this step: "queue", "resolve", "connect",
    /// "tls", "write" or "response".
    Timeout(&'static str),
    /// The connection failed or closed while writing or before the response.
    Io(String),
    /// The response is not valid HTTP/1.1.
    BadResponse(String),
    /// The response body exceeded `max_response_bytes`.
    TooLarge,
    /// The request queue is full.
    Overloaded,
}

impl fmt::Display for OutboundError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OutboundError::Header(m) => write!(f, "invalid request: {m}"),
            OutboundError::Resolve(m) => write!(f, "cannot resolve host: {m}"),
            OutboundError::Connect(_, m) => write!(f, "cannot connect: {m}"),
            OutboundError::Tls(m) => write!(f, "TLS error: {m}"),
            OutboundError::Timeout(step) => write!(f, "timed out ({step})"),
            OutboundError::Io(m) => write!(f, "connection failed: {m}"),
            OutboundError::BadResponse(m) => write!(f, "bad response: {m}"),
            OutboundError::TooLarge => f.write_str("response too large"),
            OutboundError::Overloaded => f.write_str("too many outbound requests waiting"),
        }
    }
}

impl std::error::Error for OutboundError {}

// ---------------------------------------------------------------- TLS

/// Builds the TLS client configuration for hooks: the system's roots (certs
/// that fail to load are logged and skipped) plus every certificate of
/// `ca_file` (PEM), for backends on a private CA. ring crypto, TLS 1.2/1.3.
pub fn tls_config(ca_file: Option<&Path>) -> Result<Arc<ClientConfig>, OutboundError> {
    let mut roots = RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for e in &native.errors {
        log::warn!(error:% = e; "outbound TLS: could not load some system root certificates");
    }
    let (added, ignored) = roots.add_parsable_certificates(native.certs);
    log::debug!(added = added, ignored = ignored; "outbound TLS: system root certificates");
    if let Some(path) = ca_file {
        let shown = path.display();
        let certs = CertificateDer::pem_file_iter(path).map_err(|e| OutboundError::Tls(format!("{shown}: {e}")))?;
        let mut count = 0usize;
        for cert in certs {
            let cert = cert.map_err(|e| OutboundError::Tls(format!("{shown}: {e}")))?;
            roots.add(cert).map_err(|e| OutboundError::Tls(format!("{shown}: {e}")))?;
            count += 1;
        }
        if count == 0 {
            return Err(OutboundError::Tls(format!("{shown}: no certificate found")));
        }
        log::debug!(file:% = shown, count = count; "outbound TLS: CA file loaded");
    }
    if roots.is_empty() {
        log::warn!("outbound TLS: no root certificate: every https hook will fail");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| OutboundError::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

fn tls_session(config: &Arc<ClientConfig>, host: &str) -> Result<ClientConnection, OutboundError> {
    let name = match host.parse::<IpAddr>() {
        Ok(ip) => ServerName::from(ip),
        Err(_) => ServerName::try_from(host.trim_end_matches('.').to_string())
            .map_err(|_| OutboundError::Tls(format!("{host:?} is not a valid TLS server name")))?,
    };
    ClientConnection::new(config.clone(), name).map_err(|e| OutboundError::Tls(e.to_string()))
}

// ---------------------------------------------------------------- API types

/// Bounds and timeouts of the client.
#[derive(Clone, Debug)]
pub(crate) struct OutboundConfig {
    /// Connections open (or being opened) at once, all origins.
    pub max_connections: usize,
    /// Connections open at once to one origin.
    pub max_connections_per_origin: usize,
    /// Requests waiting for a connection; [`Outbound::start`] refuses more.
    pub max_queued: usize,
    /// Longest a TCP connect may take (within the request deadline).
    pub connect_timeout: Duration,
    /// An idle keep-alive connection is closed after this (below Node's 5 s
    /// server keepAliveTimeout, so we close first and rarely race).
    pub idle_timeout: Duration,
    /// Largest response body accepted.
    pub max_response_bytes: usize,
    /// Roots and TLS settings, from [`tls_config`].
    pub tls: Arc<ClientConfig>,
}

impl OutboundConfig {
    /// The defaults: 64 connections, 8 per origin, 1024 queued, 2 s connect,
    /// 4 s idle, 64 KiB responses.
    pub fn new(tls: Arc<ClientConfig>) -> Self {
        OutboundConfig {
            max_connections: 64,
            max_connections_per_origin: 8,
            max_queued: 1024,
            connect_timeout: Duration::from_secs(2),
            idle_timeout: Duration::from_secs(4),
            max_response_bytes: 64 * 1024,
            tls,
        }
    }
}

/// One request to make.
#[derive(Clone, Debug)]
pub(crate) struct OutboundRequest {
    /// The caller's id, echoed in the completion.
    pub id: u64,
    /// The HTTP method (`POST` for hooks).
    pub method: &'static str,
    /// Where to send it.
    pub url: Url,
    /// Extra headers. `Host`, `Content-Length`, `Connection`,
    /// `Transfer-Encoding` and other framing headers are the client's and
    /// skipped; `Content-Type` and `User-Agent` replace the defaults.
    pub headers: Vec<(String, String)>,
    /// The body (JSON for hooks).
    pub body: Vec<u8>,
    /// The whole exchange (queue, resolve, connect, TLS, write, response)
    /// must finish by then.
    pub deadline: Instant,
}

impl OutboundRequest {
    /// A `POST` of a JSON body without extra headers.
    pub fn post(id: u64, url: Url, body: Vec<u8>, deadline: Instant) -> Self {
        OutboundRequest { id, method: "POST", url, headers: Vec::new(), body, deadline }
    }
}

/// A complete response (any status: what a status means is the caller's call).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct OutboundResponse {
    /// The final (non-1xx) status code.
    pub status: u16,
    /// The decoded body (chunked framing removed).
    pub body: Vec<u8>,
}

// ---------------------------------------------------------------- response parsing

/// Where the parser is in the response body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum BodyState {
    /// This many bytes of a Content-Length body left.
    Length(usize),
    /// Reading a chunk-size line.
    ChunkSize,
    /// This many bytes of chunk data left.
    ChunkData(usize),
    /// The CRLF after chunk data (`cr`: the CR was seen).
    ChunkEnd { cr: bool },
    /// Trailer lines after the last chunk, up to an empty line.
    Trailers,
    /// Body delimited by the server closing the connection.
    UntilEof,
    /// The response is complete.
    Done,
}

/// What the response head says about framing and reuse.
struct HeadInfo {
    status: u16,
    version: u8,
    content_length: Option<u64>,
    transfer_encoding: bool,
    chunked: bool,
    close: bool,
    keep_alive: bool,
}

/// Incremental HTTP/1.1 response parser: head by httparse, body by
/// Content-Length, chunked or EOF, everything bounded.
struct ResponseParser {
    max_body: usize,
    /// The request was HEAD: no body whatever the headers say.
    no_body: bool,
    head: Vec<u8>,
    line: Vec<u8>,
    trailer_bytes: usize,
    interim: usize,
    /// None while the head is being read.
    state: Option<BodyState>,
    status: u16,
    keep_alive: bool,
    /// Bytes arrived after the end of the response: the connection is not
    /// in a known state and is not reused.
    extra: bool,
    body: Vec<u8>,
}

impl ResponseParser {
    fn new(max_body: usize, no_body: bool) -> Self {
        ResponseParser {
            max_body,
            no_body,
            head: Vec::new(),
            line: Vec::new(),
            trailer_bytes: 0,
            interim: 0,
            state: None,
            status: 0,
            keep_alive: false,
            extra: false,
            body: Vec::new(),
        }
    }

    fn is_done(&self) -> bool {
        self.state == Some(BodyState::Done)
    }

    /// Takes the next bytes; true once the response is complete.
    fn feed(&mut self, data: &[u8]) -> Result<bool, OutboundError> {
        if self.state.is_some() {
            return self.feed_body(data);
        }
        self.head.extend_from_slice(data);
        loop {
            let parsed = parse_head(&self.head)?;
            // Bounded whether or not the head is complete, so the outcome
            // does not depend on how the bytes were split.
            if parsed.as_ref().map_or(self.head.len(), |(len, _)| *len) > MAX_HEAD {
                return Err(OutboundError::BadResponse("response head larger than 16 KiB".into()));
            }
            let Some((len, info)) = parsed else { return Ok(false) };
            if (100..200).contains(&info.status) {
                if info.status == 101 {
                    return Err(OutboundError::BadResponse("unexpected 101 Switching Protocols".into()));
                }
                self.interim += 1;
                if self.interim > MAX_INTERIM {
                    return Err(OutboundError::BadResponse("too many 1xx responses".into()));
                }
                self.head.drain(..len);
                continue;
            }
            let rest = self.head.split_off(len);
            self.head = Vec::new();
            self.start_body(&info)?;
            return self.feed_body(&rest);
        }
    }

    fn start_body(&mut self, info: &HeadInfo) -> Result<(), OutboundError> {
        self.status = info.status;
        self.keep_alive = !info.close && (info.version >= 1 || info.keep_alive);
        let state = if self.no_body || info.status == 204 || info.status == 304 {
            BodyState::Done
        } else if info.transfer_encoding {
            if info.chunked {
                if info.content_length.is_some() {
                    // Both framings: chunked wins, but do not trust the
                    // connection afterwards.
                    self.keep_alive = false;
                }
                BodyState::ChunkSize
            } else {
                self.keep_alive = false;
                BodyState::UntilEof
            }
        } else if let Some(len) = info.content_length {
            if len > self.max_body as u64 {
                return Err(OutboundError::TooLarge);
            }
            match usize::try_from(len) {
                Ok(0) => BodyState::Done,
                Ok(n) => {
                    // Bounded by max_body just above.
                    self.body.reserve_exact(n);
                    BodyState::Length(n)
                }
                Err(_) => return Err(OutboundError::TooLarge),
            }
        } else {
            self.keep_alive = false;
            BodyState::UntilEof
        };
        self.state = Some(state);
        Ok(())
    }

    fn push_body(&mut self, bytes: &[u8]) -> Result<(), OutboundError> {
        if self.body.len() + bytes.len() > self.max_body {
            return Err(OutboundError::TooLarge);
        }
        self.body.extend_from_slice(bytes);
        Ok(())
    }

    fn feed_body(&mut self, data: &[u8]) -> Result<bool, OutboundError> {
        let mut i = 0;
        while i < data.len() {
            let Some(state) = self.state else {
                return Err(OutboundError::BadResponse("internal: body before head".into()));
            };
            match state {
                BodyState::Length(left) | BodyState::ChunkData(left) => {
                    let n = left.min(data.len() - i);
                    self.push_body(&data[i..i + n])?;
                    i += n;
                    let left = left - n;
                    self.state = Some(match (state, left) {
                        (BodyState::Length(_), 0) => BodyState::Done,
                        (BodyState::Length(_), _) => BodyState::Length(left),
                        (_, 0) => BodyState::ChunkEnd { cr: false },
                        _ => BodyState::ChunkData(left),
                    });
                }
                BodyState::UntilEof => {
                    self.push_body(&data[i..])?;
                    i = data.len();
                }
                BodyState::ChunkSize => {
                    let b = data[i];
                    i += 1;
                    if b != b'\n' {
                        if self.line.len() >= MAX_CHUNK_LINE {
                            return Err(OutboundError::BadResponse("chunk size line too long".into()));
                        }
                        self.line.push(b);
                        continue;
                    }
                    let size = parse_chunk_size(&self.line)?;
                    self.line.clear();
                    if size > self.max_body {
                        return Err(OutboundError::TooLarge);
                    }
                    self.state = Some(if size == 0 { BodyState::Trailers } else { BodyState::ChunkData(size) });
                }
                BodyState::ChunkEnd { cr } => {
                    let b = data[i];
                    i += 1;
                    match (b, cr) {
                        (b'\r', false) => self.state = Some(BodyState::ChunkEnd { cr: true }),
                        (b'\n', _) => self.state = Some(BodyState::ChunkSize),
                        _ => return Err(OutboundError::BadResponse("missing CRLF after chunk data".into())),
                    }
                }
                BodyState::Trailers => {
                    let b = data[i];
                    i += 1;
                    self.trailer_bytes += 1;
                    if self.trailer_bytes > MAX_TRAILERS {
                        return Err(OutboundError::BadResponse("trailers larger than 16 KiB".into()));
                    }
                    if b != b'\n' {
                        self.line.push(b);
                        continue;
                    }
                    let empty = self.line.is_empty() || self.line == b"\r";
                    self.line.clear();
                    if empty {
                        self.state = Some(BodyState::Done);
                    }
                }
                BodyState::Done => {
                    self.extra = true;
                    break;
                }
            }
        }
        Ok(self.is_done())
    }

    /// The server closed the connection: the end of an EOF-delimited body,
    /// else a failure.
    fn finish_eof(&mut self) -> Result<(), OutboundError> {
        match self.state {
            Some(BodyState::Done) => Ok(()),
            Some(BodyState::UntilEof) => {
                self.state = Some(BodyState::Done);
                Ok(())
            }
            None if self.head.is_empty() => Err(OutboundError::Io("connection closed before any response".into())),
            _ => Err(OutboundError::BadResponse("connection closed before the end of the response".into())),
        }
    }

    /// The response, and whether the connection may carry another request.
    fn into_response(self) -> (OutboundResponse, bool) {
        let reusable = self.keep_alive && !self.extra;
        (OutboundResponse { status: self.status, body: self.body }, reusable)
    }
}

/// The head if `buf` holds a complete one: its length and what it says.
fn parse_head(buf: &[u8]) -> Result<Option<(usize, HeadInfo)>, OutboundError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut headers);
    let len = match response.parse(buf) {
        Ok(httparse::Status::Partial) => return Ok(None),
        Ok(httparse::Status::Complete(len)) => len,
        Err(e) => return Err(OutboundError::BadResponse(format!("malformed response head: {e}"))),
    };
    let status = response.code.ok_or_else(|| OutboundError::BadResponse("no status code".into()))?;
    let version = response.version.unwrap_or(1);
    let mut info = HeadInfo {
        status,
        version,
        content_length: None,
        transfer_encoding: false,
        chunked: false,
        close: false,
        keep_alive: false,
    };
    for header in response.headers.iter() {
        let value = std::str::from_utf8(header.value)
            .map_err(|_| OutboundError::BadResponse(format!("non-ASCII {} header", header.name)))?;
        if header.name.eq_ignore_ascii_case("content-length") {
            for part in value.split(',') {
                let part = part.trim();
                if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(OutboundError::BadResponse(format!("bad Content-Length {value:?}")));
                }
                let len: u64 = part.parse().map_err(|_| OutboundError::TooLarge)?;
                if info.content_length.is_some_and(|seen| seen != len) {
                    return Err(OutboundError::BadResponse("conflicting Content-Length headers".into()));
                }
                info.content_length = Some(len);
            }
        } else if header.name.eq_ignore_ascii_case("transfer-encoding") {
            for coding in value.split(',').map(str::trim).filter(|c| !c.is_empty()) {
                info.transfer_encoding = true;
                // Only the last coding decides the framing.
                info.chunked = coding.eq_ignore_ascii_case("chunked");
            }
        } else if header.name.eq_ignore_ascii_case("connection") {
            for token in value.split(',').map(str::trim) {
                if token.eq_ignore_ascii_case("close") {
                    info.close = true;
                } else if token.eq_ignore_ascii_case("keep-alive") {
                    info.keep_alive = true;
                }
            }
        }
    }
    Ok(Some((len, info)))
}

/// A chunk-size line without its LF: hex digits, optional `;extensions`.
fn parse_chunk_size(line: &[u8]) -> Result<usize, OutboundError> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let digits = line.split(|&b| b == b';').next().unwrap_or(&[]);
    let digits = digits.trim_ascii();
    if digits.is_empty() || digits.len() > 15 || !digits.iter().all(u8::is_ascii_hexdigit) {
        return Err(OutboundError::BadResponse("bad chunk size".into()));
    }
    let text = std::str::from_utf8(digits).map_err(|_| OutboundError::BadResponse("bad chunk size".into()))?;
    usize::from_str_radix(text, 16).map_err(|_| OutboundError::TooLarge)
}

// ---------------------------------------------------------------- requests

fn is_token(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Rejects what would break or inject into the request head.
fn validate_request(req: &OutboundRequest) -> Result<(), OutboundError> {
    if !is_token(req.method) {
        return Err(OutboundError::Header(format!("bad method {:?}", req.method)));
    }
    for (name, value) in &req.headers {
        if !is_token(name) {
            return Err(OutboundError::Header(format!("bad header name {name:?}")));
        }
        if value.bytes().any(|b| (b < 0x20 && b != b'\t') || b == 0x7f) {
            return Err(OutboundError::Header(format!("bad value for header {name:?}")));
        }
    }
    Ok(())
}

/// Headers the client owns (framing, connection management).
const OWN_HEADERS: [&str; 8] =
    ["host", "content-length", "connection", "transfer-encoding", "keep-alive", "te", "trailer", "upgrade"];

/// The request line and headers (the body follows as is).
fn request_head(req: &OutboundRequest) -> Vec<u8> {
    let has = |name: &str| req.headers.iter().any(|(n, _)| n.eq_ignore_ascii_case(name));
    let mut head = String::with_capacity(256);
    head.push_str(req.method);
    head.push(' ');
    head.push_str(&req.url.path_and_query);
    head.push_str(" HTTP/1.1\r\nHost: ");
    head.push_str(&req.url.host_header());
    head.push_str("\r\n");
    let bodiless = ["GET", "HEAD", "DELETE", "OPTIONS"].iter().any(|m| req.method.eq_ignore_ascii_case(m));
    if !bodiless || !req.body.is_empty() {
        if !has("content-type") {
            head.push_str("Content-Type: application/json\r\n");
        }
        head.push_str(&format!("Content-Length: {}\r\n", req.body.len()));
    }
    if !has("user-agent") {
        head.push_str("User-Agent: ");
        head.push_str(USER_AGENT);
        head.push_str("\r\n");
    }
    head.push_str("Connection: keep-alive\r\n");
    for (name, value) in &req.headers {
        if OWN_HEADERS.iter().any(|own| name.eq_ignore_ascii_case(own)) {
            continue;
        }
        head.push_str(name);
        head.push_str(": ");
        head.push_str(value);
        head.push_str("\r\n");
    }
    head.push_str("\r\n");
    head.into_bytes()
}

// ---------------------------------------------------------------- resolver

/// Blocking name resolution, run on the resolver thread.
type ResolveFn = fn(&str) -> Result<Vec<IpAddr>, String>;

fn system_resolve(host: &str) -> Result<Vec<IpAddr>, String> {
    let addrs = (host, 0u16).to_socket_addrs().map_err(|e| format!("{host}: {e}"))?;
    let mut ips: Vec<IpAddr> = Vec::new();
    for addr in addrs {
        if !ips.contains(&addr.ip()) {
            ips.push(addr.ip());
            if ips.len() == MAX_ADDRS {
                break;
            }
        }
    }
    Ok(ips)
}

/// The resolver thread's two ends: host names in (bounded), answers out.
struct Resolver {
    queries: SyncSender<String>,
    answers: Receiver<(String, Result<Vec<IpAddr>, String>)>,
}

impl Resolver {
    fn spawn(waker: Arc<Waker>, resolve: ResolveFn, capacity: usize) -> io::Result<Resolver> {
        let (queries, inbox) = mpsc::sync_channel::<String>(capacity);
        let (outbox, answers) = mpsc::channel();
        std::thread::Builder::new().name("outbound-dns".into()).spawn(move || {
            // Ends when the client (the sender) is dropped.
            for host in inbox {
                let answer = resolve(&host);
                if outbox.send((host, answer)).is_err() {
                    break;
                }
                if let Err(e) = waker.wake() {
                    log::warn!(error:% = e; "outbound resolver: cannot wake the loop");
                }
            }
        })?;
        Ok(Resolver { queries, answers })
    }
}

// ---------------------------------------------------------------- connections

/// A request with its pool key and retry state.
struct Pending {
    req: OutboundRequest,
    origin: Origin,
    /// Already retried once after a reused connection failed.
    retried: bool,
}

/// The request a connection is carrying.
struct Job {
    pending: Pending,
    head: Vec<u8>,
    /// Bytes of head + body handed to the socket (or to rustls).
    written: usize,
    parser: ResponseParser,
    /// A response byte arrived (so a failure is not a stale keep-alive).
    got_bytes: bool,
}

impl Job {
    fn new(pending: Pending, max_body: usize) -> Job {
        let head = request_head(&pending.req);
        let no_body = pending.req.method.eq_ignore_ascii_case("HEAD");
        Job { pending, head, written: 0, parser: ResponseParser::new(max_body, no_body), got_bytes: false }
    }

    fn total(&self) -> usize {
        self.head.len() + self.pending.req.body.len()
    }

    /// The unwritten rest as (part of head, part of body).
    fn unwritten(&self) -> (&[u8], &[u8]) {
        let body = &self.pending.req.body;
        if self.written < self.head.len() {
            (&self.head[self.written..], body)
        } else {
            (&[], &body[(self.written - self.head.len()).min(body.len())..])
        }
    }

    fn advance(&mut self, n: usize) {
        self.written += n;
    }
}

/// Where a pooled connection is in its life.
enum ConnState {
    /// Waiting for the resolver thread; no socket yet.
    Resolving,
    /// TCP connect in progress to `addrs[next - 1]`.
    Connecting { addrs: Vec<SocketAddr>, next: usize, deadline: Instant, last_error: Option<OutboundError> },
    /// Carrying a request (TLS handshake included).
    Active,
    /// In the pool, waiting for the next request to its origin.
    Idle { since: Instant },
}

/// One connection slot: from resolving the host until it is closed.
struct Conn {
    /// Distinguishes this connection from a later one in the same slab slot.
    serial: u64,
    origin: Origin,
    state: ConnState,
    stream: Option<TcpStream>,
    tls: Option<Box<ClientConnection>>,
    job: Option<Job>,
    /// Has completed a response before: a failure before the next
    /// response's first byte may be the server closing it while idle.
    reused: bool,
}

impl Conn {
    fn deadline(&self, idle_timeout: Duration) -> Option<Instant> {
        let job = self.job.as_ref().map(|j| j.pending.req.deadline);
        match &self.state {
            ConnState::Idle { since } => Some(*since + idle_timeout),
            ConnState::Connecting { deadline, .. } => Some(job.map_or(*deadline, |j| j.min(*deadline))),
            ConnState::Resolving | ConnState::Active => job,
        }
    }

    /// The step a timeout interrupted.
    fn step(&self) -> &'static str {
        match &self.state {
            ConnState::Resolving => "resolve",
            ConnState::Connecting { .. } => "connect",
            ConnState::Idle { .. } => "idle",
            ConnState::Active => {
                let tls_pending = self.tls.as_ref().is_some_and(|t| t.is_handshaking());
                let written = self.job.as_ref().is_some_and(|j| j.written >= j.total())
                    && !self.tls.as_ref().is_some_and(|t| t.wants_write());
                if tls_pending {
                    "tls"
                } else if !written {
                    "write"
                } else {
                    "response"
                }
            }
        }
    }

    /// Moves bytes both ways until the socket would block; true once the
    /// response is complete.
    fn pump(&mut self, scratch: &mut [u8]) -> Result<bool, OutboundError> {
        let (Some(stream), Some(job)) = (self.stream.as_mut(), self.job.as_mut()) else {
            return Ok(false);
        };
        loop {
            let (wrote, read, done) = match self.tls.as_deref_mut() {
                None => {
                    let wrote = write_plain(stream, job)?;
                    let (read, done) = read_plain(stream, job, scratch)?;
                    (wrote, read, done)
                }
                Some(tls) => {
                    let wrote = write_tls(stream, tls, job)?;
                    let (read, done) = read_tls(stream, tls, job, scratch)?;
                    (wrote, read, done)
                }
            };
            if done {
                return Ok(true);
            }
            if !wrote && !read {
                return Ok(false);
            }
        }
    }

    /// An idle connection is usable only while the server has sent nothing:
    /// EOF, an error or stray bytes mean it must be closed.
    fn idle_alive(&mut self, scratch: &mut [u8]) -> bool {
        let Some(stream) = self.stream.as_mut() else { return false };
        match self.tls.as_deref_mut() {
            None => loop {
                match stream.read(scratch) {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    _ => return false,
                }
            },
            Some(tls) => {
                loop {
                    match tls.read_tls(stream) {
                        Ok(0) => return false,
                        Ok(_) => {
                            if tls.process_new_packets().is_err() {
                                return false;
                            }
                            // Session tickets and key updates are fine;
                            // application data is not.
                            match tls.reader().read(scratch) {
                                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                                _ => return false,
                            }
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        Err(_) => return false,
                    }
                }
                match tls.reader().read(scratch) {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    _ => return false,
                }
                while tls.wants_write() {
                    match tls.write_tls(stream) {
                        Ok(0) => return false,
                        Ok(_) => {}
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(_) => return false,
                    }
                }
                true
            }
        }
    }
}

fn io_error(what: &str, e: &io::Error) -> OutboundError {
    OutboundError::Io(format!("{what}: {e}"))
}

fn write_plain(stream: &mut TcpStream, job: &mut Job) -> Result<bool, OutboundError> {
    let mut progress = false;
    while job.written < job.total() {
        let (head, body) = job.unwritten();
        match stream.write_vectored(&[IoSlice::new(head), IoSlice::new(body)]) {
            Ok(0) => return Err(OutboundError::Io("connection closed while writing the request".into())),
            Ok(n) => {
                job.advance(n);
                progress = true;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(io_error("write", &e)),
        }
    }
    Ok(progress)
}

fn read_plain(stream: &mut TcpStream, job: &mut Job, scratch: &mut [u8]) -> Result<(bool, bool), OutboundError> {
    let mut progress = false;
    loop {
        match stream.read(scratch) {
            Ok(0) => {
                job.parser.finish_eof()?;
                return Ok((true, true));
            }
            Ok(n) => {
                progress = true;
                job.got_bytes = true;
                if job.parser.feed(&scratch[..n])? {
                    return Ok((true, true));
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok((progress, false)),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(io_error("read", &e)),
        }
    }
}

fn write_tls(stream: &mut TcpStream, tls: &mut ClientConnection, job: &mut Job) -> Result<bool, OutboundError> {
    let mut progress = false;
    loop {
        let mut moved = false;
        while job.written < job.total() {
            let (head, body) = job.unwritten();
            let chunk = if head.is_empty() { body } else { head };
            let n = tls.writer().write(chunk).map_err(|e| io_error("TLS write", &e))?;
            if n == 0 {
                break;
            }
            job.advance(n);
            moved = true;
        }
        let mut blocked = false;
        while tls.wants_write() {
            match tls.write_tls(stream) {
                Ok(0) => return Err(OutboundError::Io("connection closed while writing the request".into())),
                Ok(_) => moved = true,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    blocked = true;
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(io_error("write", &e)),
            }
        }
        progress |= moved;
        if !moved || blocked || job.written >= job.total() {
            return Ok(progress);
        }
    }
}

fn read_tls(
    stream: &mut TcpStream,
    tls: &mut ClientConnection,
    job: &mut Job,
    scratch: &mut [u8],
) -> Result<(bool, bool), OutboundError> {
    let mut progress = false;
    loop {
        let eof = match tls.read_tls(stream) {
            Ok(0) => true,
            Ok(_) => false,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok((progress, false)),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(io_error("read", &e)),
        };
        progress = true;
        if let Err(e) = tls.process_new_packets() {
            // Tell the server why (the alert), best effort.
            let _ = tls.write_tls(stream);
            return Err(OutboundError::Tls(e.to_string()));
        }
        if eof && tls.is_handshaking() {
            return Err(OutboundError::Tls("connection closed during the handshake".into()));
        }
        loop {
            match tls.reader().read(scratch) {
                Ok(0) => {
                    job.parser.finish_eof()?;
                    return Ok((true, true));
                }
                Ok(n) => {
                    job.got_bytes = true;
                    if job.parser.feed(&scratch[..n])? {
                        return Ok((true, true));
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                // TCP closed without close_notify: many servers do that.
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                    job.parser.finish_eof()?;
                    return Ok((true, true));
                }
                Err(e) => return Err(io_error("TLS read", &e)),
            }
        }
        if eof {
            job.parser.finish_eof()?;
            return Ok((true, true));
        }
    }
}

// ---------------------------------------------------------------- the client

/// The outbound client: a keep-alive pool, a bounded queue and a resolver
/// thread, all driven by the caller's loop through `handle_*`.
pub(crate) struct Outbound {
    config: OutboundConfig,
    registry: Registry,
    token_base: usize,
    waker: Arc<Waker>,
    conns: Slab<Conn>,
    per_origin: HashMap<Origin, usize>,
    /// Idle connections per origin, most recently used last.
    idle: HashMap<Origin, Vec<usize>>,
    queue: VecDeque<Pending>,
    resolver: Option<Resolver>,
    /// Host names asked of the resolver → connections (key, serial) waiting.
    resolving: HashMap<String, Vec<(usize, u64)>>,
    dns_cache: HashMap<String, (Vec<IpAddr>, Instant)>,
    completions: Vec<(u64, Result<OutboundResponse, OutboundError>)>,
    scratch: Box<[u8]>,
    next_serial: u64,
    /// A connection closed or became idle: the queue may move.
    capacity_freed: bool,
    resolve_fn: ResolveFn,
    /// `localhost` resolves without the resolver thread (tests turn it off
    /// to exercise the thread).
    localhost_direct: bool,
    /// Requests retried after a stale keep-alive connection failed.
    retries: u64,
}

impl Outbound {
    /// A client registering its sockets on `registry` under tokens
    /// `token_base..token_base + max_connections`, and waking the loop
    /// through `waker` when the resolver thread has answers.
    pub fn new(
        mut config: OutboundConfig,
        registry: Registry,
        token_base: usize,
        waker: Arc<Waker>,
    ) -> io::Result<Outbound> {
        config.max_connections = config.max_connections.max(1);
        config.max_connections_per_origin = config.max_connections_per_origin.clamp(1, config.max_connections);
        if token_base.checked_add(config.max_connections).is_none() {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "outbound token range overflows"));
        }
        Ok(Outbound {
            conns: Slab::with_capacity(config.max_connections.min(64)),
            config,
            registry,
            token_base,
            waker,
            per_origin: HashMap::new(),
            idle: HashMap::new(),
            queue: VecDeque::new(),
            resolver: None,
            resolving: HashMap::new(),
            dns_cache: HashMap::new(),
            completions: Vec::new(),
            scratch: vec![0; SCRATCH_LEN].into_boxed_slice(),
            next_serial: 0,
            capacity_freed: false,
            resolve_fn: system_resolve,
            localhost_direct: true,
            retries: 0,
        })
    }

    /// Starts a request. Its result comes from [`take_completions`]
    /// (possibly right away, e.g. a refused connect). Errors here mean it was
    /// not accepted: the queue is full, or its method or headers are invalid.
    ///
    /// [`take_completions`]: Outbound::take_completions
    pub fn start(&mut self, req: OutboundRequest, now: Instant) -> Result<(), OutboundError> {
        validate_request(&req)?;
        let origin = origin_of(&req.url);
        let pending = Pending { req, origin, retried: false };
        if self.can_dispatch(&pending.origin) {
            self.dispatch(pending, now);
        } else if self.queue.len() >= self.config.max_queued {
            log::debug!(id = pending.req.id, origin:% = pending.origin; "outbound: queue full");
            return Err(OutboundError::Overloaded);
        } else {
            log::debug!(id = pending.req.id, origin:% = pending.origin; "outbound: queued");
            self.queue.push_back(pending);
        }
        self.settle(now);
        Ok(())
    }

    /// Whether an event's token is one of this client's sockets.
    pub fn owns(&self, token: Token) -> bool {
        token.0 >= self.token_base && token.0 - self.token_base < self.config.max_connections
    }

    /// A readiness event for a token this client [`owns`](Outbound::owns).
    pub fn handle_event(&mut self, event: &mio::event::Event, now: Instant) {
        let Some(key) = event.token().0.checked_sub(self.token_base) else { return };
        let Some(conn) = self.conns.get_mut(key) else { return };
        match conn.state {
            ConnState::Resolving => {}
            ConnState::Connecting { .. } => self.check_connect(key, now),
            ConnState::Active => self.drive(key, now),
            ConnState::Idle { .. } => {
                if !conn.idle_alive(&mut self.scratch) {
                    log::debug!(origin:% = conn.origin; "outbound: idle connection closed by the server");
                    self.close(key);
                }
            }
        }
        self.settle(now);
    }

    /// The shared waker fired: take the resolver's answers (cheap when there
    /// are none, since the store thread wakes the loop too).
    pub fn handle_wake(&mut self, now: Instant) {
        while let Some(resolver) = &self.resolver {
            match resolver.answers.try_recv() {
                Ok((host, answer)) => self.resolved(host, answer, now),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    log::warn!("outbound resolver thread stopped");
                    self.resolver = None;
                    let hosts: Vec<String> = self.resolving.keys().cloned().collect();
                    for host in hosts {
                        self.resolved(host, Err("resolver thread stopped".into()), now);
                    }
                    break;
                }
            }
        }
        self.settle(now);
    }

    /// When [`handle_timeout`](Outbound::handle_timeout) must next be called.
    pub fn next_deadline(&self) -> Option<Instant> {
        let conns = self.conns.iter().filter_map(|(_, c)| c.deadline(self.config.idle_timeout));
        let queued = self.queue.iter().map(|p| p.req.deadline);
        conns.chain(queued).min()
    }

    /// Fails requests whose deadline passed and closes expired idle
    /// connections.
    pub fn handle_timeout(&mut self, now: Instant) {
        let idle_timeout = self.config.idle_timeout;
        let due: Vec<usize> = self
            .conns
            .iter()
            .filter(|(_, c)| c.deadline(idle_timeout).is_some_and(|d| d <= now))
            .map(|(key, _)| key)
            .collect();
        for key in due {
            let Some(conn) = self.conns.get(key) else { continue };
            if let ConnState::Idle { .. } = conn.state {
                log::debug!(origin:% = conn.origin; "outbound: idle connection expired");
                self.close(key);
            } else {
                let step = conn.step();
                self.fail(key, OutboundError::Timeout(step), now);
            }
        }
        if self.queue.iter().any(|p| p.req.deadline <= now) {
            let queue = std::mem::take(&mut self.queue);
            for pending in queue {
                if pending.req.deadline <= now {
                    self.complete(pending.req.id, &pending.origin, Err(OutboundError::Timeout("queue")));
                } else {
                    self.queue.push_back(pending);
                }
            }
        }
        self.settle(now);
    }

    /// Finished requests since the last call, in completion order.
    pub fn take_completions(&mut self) -> Vec<(u64, Result<OutboundResponse, OutboundError>)> {
        std::mem::take(&mut self.completions)
    }

    /// Whether finished requests wait for [`Outbound::take_completions`].
    pub fn has_completions(&self) -> bool {
        !self.completions.is_empty()
    }

    /// Requests started and not yet completed (queued ones included).
    pub fn in_flight(&self) -> usize {
        self.queue.len() + self.conns.iter().filter(|(_, c)| c.job.is_some()).count()
    }

    /// Connections open or being opened (resolving, connecting, busy, idle).
    pub fn connections(&self) -> usize {
        self.conns.len()
    }

    // ------------------------------------------------------------ pool

    fn per_origin(&self, origin: &Origin) -> usize {
        self.per_origin.get(origin).copied().unwrap_or(0)
    }

    /// Whether a request to `origin` can get a connection now (an idle one,
    /// a new one, or a new one in place of another origin's idle one).
    fn can_dispatch(&self, origin: &Origin) -> bool {
        self.idle.contains_key(origin)
            || (self.per_origin(origin) < self.config.max_connections_per_origin
                && (self.conns.len() < self.config.max_connections || !self.idle.is_empty()))
    }

    fn dispatch(&mut self, pending: Pending, now: Instant) {
        if let Some(key) = self.take_idle(&pending.origin) {
            if let Some(conn) = self.conns.get_mut(key) {
                log::debug!(id = pending.req.id, origin:% = pending.origin; "outbound: reusing a connection");
                conn.state = ConnState::Active;
                conn.job = Some(Job::new(pending, self.config.max_response_bytes));
                self.drive(key, now);
                return;
            }
        }
        if self.conns.len() >= self.config.max_connections {
            self.evict_idle();
        }
        self.open(pending, now);
    }

    fn take_idle(&mut self, origin: &Origin) -> Option<usize> {
        let keys = self.idle.get_mut(origin)?;
        let key = keys.pop();
        if keys.is_empty() {
            self.idle.remove(origin);
        }
        key
    }

    /// Closes the longest-idle connection (to make room for another origin).
    fn evict_idle(&mut self) {
        let oldest = self
            .idle
            .values()
            .flatten()
            .filter_map(|&key| match self.conns.get(key).map(|c| &c.state) {
                Some(ConnState::Idle { since }) => Some((*since, key)),
                _ => None,
            })
            .min();
        if let Some((_, key)) = oldest {
            log::debug!(key = key; "outbound: closing an idle connection for another origin");
            self.close(key);
        }
    }

    /// Moves queued requests onto connections while capacity was freed.
    fn settle(&mut self, now: Instant) {
        while std::mem::take(&mut self.capacity_freed) {
            let mut i = 0;
            while i < self.queue.len() {
                if self.conns.len() >= self.config.max_connections && self.idle.is_empty() {
                    break;
                }
                if self.can_dispatch(&self.queue[i].origin) {
                    if let Some(pending) = self.queue.remove(i) {
                        self.dispatch(pending, now);
                    }
                } else {
                    i += 1;
                }
            }
        }
    }

    /// A new connection for `pending` (the bounds were checked).
    fn open(&mut self, pending: Pending, now: Instant) {
        let serial = self.next_serial;
        self.next_serial += 1;
        let origin = pending.origin.clone();
        let job = Job::new(pending, self.config.max_response_bytes);
        let key = self.conns.insert(Conn {
            serial,
            origin: origin.clone(),
            state: ConnState::Resolving,
            stream: None,
            tls: None,
            job: Some(job),
            reused: false,
        });
        *self.per_origin.entry(origin.clone()).or_insert(0) += 1;
        if let Some(ips) = self.lookup(&origin.host, now) {
            self.connect(key, ips, now);
            return;
        }
        if let Some(waiting) = self.resolving.get_mut(&origin.host) {
            waiting.push((key, serial));
            return;
        }
        match self.query(&origin.host) {
            Ok(()) => {
                self.resolving.insert(origin.host.clone(), vec![(key, serial)]);
            }
            Err(e) => self.fail(key, e, now),
        }
    }

    /// Addresses known without asking the resolver thread.
    fn lookup(&mut self, host: &str, now: Instant) -> Option<Vec<IpAddr>> {
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Some(vec![ip]);
        }
        if self.localhost_direct && (host == "localhost" || host == "localhost.") {
            return Some(vec![IpAddr::V4(Ipv4Addr::LOCALHOST), IpAddr::V6(Ipv6Addr::LOCALHOST)]);
        }
        match self.dns_cache.get(host) {
            Some((ips, expires)) if *expires > now => Some(ips.clone()),
            Some(_) => {
                self.dns_cache.remove(host);
                None
            }
            None => None,
        }
    }

    fn query(&mut self, host: &str) -> Result<(), OutboundError> {
        if self.resolver.is_none() {
            let resolver = Resolver::spawn(self.waker.clone(), self.resolve_fn, self.config.max_connections)
                .map_err(|e| OutboundError::Resolve(format!("cannot start the resolver thread: {e}")))?;
            self.resolver = Some(resolver);
        }
        let Some(resolver) = &self.resolver else { return Err(OutboundError::Resolve("no resolver".into())) };
        match resolver.queries.try_send(host.to_string()) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) => Err(OutboundError::Resolve("resolver queue full".into())),
            Err(TrySendError::Disconnected(_)) => {
                self.resolver = None;
                Err(OutboundError::Resolve("resolver thread stopped".into()))
            }
        }
    }

    fn resolved(&mut self, host: String, answer: Result<Vec<IpAddr>, String>, now: Instant) {
        let answer = answer.and_then(|ips| if ips.is_empty() { Err(format!("{host}: no address")) } else { Ok(ips) });
        match &answer {
            Ok(ips) => {
                if self.dns_cache.len() >= DNS_CACHE_MAX {
                    self.dns_cache.retain(|_, (_, expires)| *expires > now);
                    if self.dns_cache.len() >= DNS_CACHE_MAX {
                        self.dns_cache.clear();
                    }
                }
                self.dns_cache.insert(host.clone(), (ips.clone(), now + DNS_TTL));
            }
            Err(e) => log::debug!(host = host.as_str(), error = e.as_str(); "outbound: resolve failed"),
        }
        for (key, serial) in self.resolving.remove(&host).unwrap_or_default() {
            let waiting =
                self.conns.get(key).is_some_and(|c| c.serial == serial && matches!(c.state, ConnState::Resolving));
            if !waiting {
                continue;
            }
            match &answer {
                Ok(ips) => self.connect(key, ips.clone(), now),
                Err(e) => self.fail(key, OutboundError::Resolve(e.clone()), now),
            }
        }
    }

    fn connect(&mut self, key: usize, ips: Vec<IpAddr>, now: Instant) {
        let Some(conn) = self.conns.get_mut(key) else { return };
        let port = conn.origin.port;
        conn.state = ConnState::Connecting {
            addrs: ips.into_iter().map(|ip| SocketAddr::new(ip, port)).collect(),
            next: 0,
            deadline: now + self.config.connect_timeout,
            last_error: None,
        };
        self.connect_next(key, now);
    }

    /// Starts a TCP connect to the next address, or fails the request when
    /// none is left.
    fn connect_next(&mut self, key: usize, now: Instant) {
        let token = Token(self.token_base + key);
        loop {
            let Some(conn) = self.conns.get_mut(key) else { return };
            let ConnState::Connecting { addrs, next, last_error, .. } = &mut conn.state else { return };
            let Some(&addr) = addrs.get(*next) else {
                let err = last_error
                    .take()
                    .unwrap_or_else(|| OutboundError::Connect(io::ErrorKind::NotFound, "no address".into()));
                self.fail(key, err, now);
                return;
            };
            *next += 1;
            let result = TcpStream::connect(addr).and_then(|mut stream| {
                self.registry.register(&mut stream, token, Interest::READABLE | Interest::WRITABLE)?;
                Ok(stream)
            });
            match result {
                Ok(stream) => {
                    conn.stream = Some(stream);
                    return;
                }
                Err(e) => *last_error = Some(OutboundError::Connect(e.kind(), format!("{addr}: {e}"))),
            }
        }
    }

    /// An event on a connecting socket: connected, failed, or not yet.
    fn check_connect(&mut self, key: usize, now: Instant) {
        let Some(conn) = self.conns.get_mut(key) else { return };
        let Some(stream) = conn.stream.as_mut() else { return };
        let result = match stream.take_error() {
            Ok(Some(e)) | Err(e) => Err(e),
            Ok(None) => match stream.peer_addr() {
                Ok(_) => Ok(true),
                Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(false),
                Err(e) => Err(e),
            },
        };
        match result {
            Ok(false) => {}
            Ok(true) => self.connected(key, now),
            Err(e) => {
                if let Some(mut stream) = conn.stream.take() {
                    let _ = self.registry.deregister(&mut stream);
                }
                if let ConnState::Connecting { addrs, next, last_error, .. } = &mut conn.state {
                    let addr = addrs.get(next.saturating_sub(1)).map(|a| a.to_string()).unwrap_or_default();
                    *last_error = Some(OutboundError::Connect(e.kind(), format!("{addr}: {e}")));
                }
                self.connect_next(key, now);
            }
        }
    }

    fn connected(&mut self, key: usize, now: Instant) {
        let Some(conn) = self.conns.get_mut(key) else { return };
        if let Some(stream) = conn.stream.as_ref() {
            let _ = stream.set_nodelay(true);
        }
        if conn.origin.https {
            match tls_session(&self.config.tls, &conn.origin.host) {
                Ok(tls) => conn.tls = Some(Box::new(tls)),
                Err(e) => {
                    self.fail(key, e, now);
                    return;
                }
            }
        }
        conn.state = ConnState::Active;
        self.drive(key, now);
    }

    /// Moves an active connection's bytes and settles its request when done.
    fn drive(&mut self, key: usize, now: Instant) {
        let Some(conn) = self.conns.get_mut(key) else { return };
        match conn.pump(&mut self.scratch) {
            Ok(false) => {}
            Ok(true) => self.finish(key, now),
            Err(e) => self.fail(key, e, now),
        }
    }

    fn finish(&mut self, key: usize, now: Instant) {
        let Some(conn) = self.conns.get_mut(key) else { return };
        let Some(job) = conn.job.take() else { return };
        let written = job.written >= job.total() && !conn.tls.as_ref().is_some_and(|t| t.wants_write());
        let id = job.pending.req.id;
        let (response, reusable) = job.parser.into_response();
        let origin = conn.origin.clone();
        log::debug!(id = id, origin:% = origin, status = response.status; "outbound: response");
        self.completions.push((id, Ok(response)));
        if !(reusable && written) {
            self.close(key);
            return;
        }
        conn.state = ConnState::Idle { since: now };
        conn.reused = true;
        if conn.idle_alive(&mut self.scratch) {
            self.idle.entry(origin).or_default().push(key);
            self.capacity_freed = true;
        } else {
            self.close(key);
        }
    }

    /// Fails the connection's request, or retries it once on a fresh
    /// connection when a reused one failed before any response byte.
    fn fail(&mut self, key: usize, err: OutboundError, now: Instant) {
        let Some(conn) = self.conns.get(key) else { return };
        let retry = matches!(err, OutboundError::Io(_))
            && conn.reused
            && conn.job.as_ref().is_some_and(|j| !j.got_bytes && !j.pending.retried);
        let Some(job) = self.close(key) else { return };
        let pending = job.pending;
        if retry {
            self.retries += 1;
            log::debug!(id = pending.req.id, origin:% = pending.origin, error:% = err;
                "outbound: reused connection failed, retrying on a new one");
            self.open(Pending { retried: true, ..pending }, now);
        } else {
            self.complete(pending.req.id, &pending.origin, Err(err));
        }
    }

    /// Removes a connection (socket deregistered and closed, buffers freed)
    /// and hands back its request, if any.
    fn close(&mut self, key: usize) -> Option<Job> {
        let mut conn = self.conns.try_remove(key)?;
        match conn.state {
            ConnState::Idle { .. } => {
                if let Some(keys) = self.idle.get_mut(&conn.origin) {
                    keys.retain(|&k| k != key);
                    if keys.is_empty() {
                        self.idle.remove(&conn.origin);
                    }
                }
            }
            // The query stays in flight (its entry goes when it answers),
            // but without this connection.
            ConnState::Resolving => {
                if let Some(waiting) = self.resolving.get_mut(&conn.origin.host) {
                    waiting.retain(|&(k, serial)| (k, serial) != (key, conn.serial));
                }
            }
            _ => {}
        }
        if let Some(mut stream) = conn.stream.take() {
            if let (Some(tls), ConnState::Idle { .. }) = (conn.tls.as_deref_mut(), &conn.state) {
                tls.send_close_notify();
                let _ = tls.write_tls(&mut stream);
            }
            let _ = self.registry.deregister(&mut stream);
        }
        if let Some(count) = self.per_origin.get_mut(&conn.origin) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                self.per_origin.remove(&conn.origin);
            }
        }
        self.capacity_freed = true;
        conn.job.take()
    }

    fn complete(&mut self, id: u64, origin: &Origin, result: Result<OutboundResponse, OutboundError>) {
        if let Err(e) = &result {
            log::debug!(id = id, origin:% = origin, error:% = e; "outbound: request failed");
        }
        self.completions.push((id, result));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{TcpListener, TcpStream as StdStream};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;
    use std::thread;

    use mio::{Events, Poll};
    use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

    use crate::url::UrlError;

    /// A URL of a test: the settings' parser, or by hand for an IPv6
    /// literal (which settings do not take, but the client can call).
    fn parse_url(s: &str) -> Result<Url, UrlError> {
        if let Some(rest) = s.strip_prefix("http://[::1]:") {
            let (port, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
            let port = port.parse().map_err(|_| UrlError::Port)?;
            let path = if path.is_empty() { "/".to_string() } else { path.to_string() };
            return Ok(Url { https: false, host: "::1".into(), port, path_and_query: path });
        }
        crate::url::parse_url(s)
    }

    const WAKE: Token = Token(1);
    const BASE: usize = 1 << 20;
    /// No test waits longer than this for one completion.
    const LIMIT: Duration = Duration::from_secs(5);

    // ------------------------------------------------------------ harness

    /// A TLS config without roots (plain-HTTP tests need none, and loading
    /// the system's roots each time is slow).
    fn no_roots() -> Arc<ClientConfig> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        Arc::new(
            ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(RootCertStore::empty())
                .with_no_client_auth(),
        )
    }

    /// A real mio loop around one client, as the shell will run it.
    struct Harness {
        poll: Poll,
        events: Events,
        out: Outbound,
        done: HashMap<u64, Result<OutboundResponse, OutboundError>>,
    }

    impl Harness {
        fn new(tls: Arc<ClientConfig>, tweak: impl FnOnce(&mut OutboundConfig)) -> Harness {
            let poll = Poll::new().unwrap();
            let waker = Arc::new(Waker::new(poll.registry(), WAKE).unwrap());
            let mut config = OutboundConfig::new(tls);
            tweak(&mut config);
            let out = Outbound::new(config, poll.registry().try_clone().unwrap(), BASE, waker).unwrap();
            Harness { poll, events: Events::with_capacity(64), out, done: HashMap::new() }
        }

        fn plain() -> Harness {
            Harness::new(no_roots(), |_| {})
        }

        fn start_in(&mut self, id: u64, url: &str, timeout: Duration) -> Result<(), OutboundError> {
            let url = parse_url(url).unwrap();
            let now = Instant::now();
            let req = OutboundRequest::post(id, url, format!("{{\"id\":{id}}}").into_bytes(), now + timeout);
            let result = self.out.start(req, now);
            self.collect();
            result
        }

        fn start(&mut self, id: u64, url: &str) {
            self.start_in(id, url, Duration::from_secs(3)).unwrap();
        }

        fn collect(&mut self) {
            for (id, result) in self.out.take_completions() {
                assert!(self.done.insert(id, result).is_none(), "request {id} completed twice");
            }
        }

        /// One loop iteration: poll, dispatch, timers.
        fn turn(&mut self, max_wait: Duration) {
            let now = Instant::now();
            let wait = self.out.next_deadline().map_or(max_wait, |d| d.saturating_duration_since(now).min(max_wait));
            self.poll.poll(&mut self.events, Some(wait)).unwrap();
            let now = Instant::now();
            for event in self.events.iter() {
                if event.token() == WAKE {
                    self.out.handle_wake(now);
                } else {
                    assert!(self.out.owns(event.token()), "foreign token {:?}", event.token());
                    self.out.handle_event(event, now);
                }
            }
            self.out.handle_timeout(Instant::now());
            self.collect();
        }

        fn wait(&mut self, id: u64) -> Result<OutboundResponse, OutboundError> {
            let limit = Instant::now() + LIMIT;
            loop {
                if let Some(result) = self.done.remove(&id) {
                    return result;
                }
                assert!(Instant::now() < limit, "request {id} did not complete");
                self.turn(Duration::from_millis(50));
            }
        }

        fn turn_until(&mut self, what: &str, cond: impl Fn(&Harness) -> bool) {
            let limit = Instant::now() + LIMIT;
            while !cond(self) {
                assert!(Instant::now() < limit, "gave up waiting for {what}");
                self.turn(Duration::from_millis(10));
            }
        }
    }

    // ------------------------------------------------------------ servers

    /// A test server on loopback: every accepted connection gets its own
    /// thread running `handler(stream, index)`.
    struct Server {
        addr: SocketAddr,
        accepted: Arc<AtomicUsize>,
    }

    impl Server {
        fn url(&self, path: &str) -> String {
            format!("http://{}{path}", self.addr)
        }

        fn accepted(&self) -> usize {
            self.accepted.load(Ordering::SeqCst)
        }
    }

    fn serve_on<F>(listener: TcpListener, handler: F) -> Server
    where
        F: Fn(StdStream, usize) + Send + Sync + 'static,
    {
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        let handler = Arc::new(handler);
        thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { break };
                let index = count.fetch_add(1, Ordering::SeqCst);
                // Handler threads end by themselves even if a test fails.
                let _ = stream.set_read_timeout(Some(LIMIT));
                let handler = handler.clone();
                thread::spawn(move || handler(stream, index));
            }
        });
        Server { addr, accepted }
    }

    fn serve<F>(handler: F) -> Server
    where
        F: Fn(StdStream, usize) + Send + Sync + 'static,
    {
        serve_on(TcpListener::bind("127.0.0.1:0").unwrap(), handler)
    }

    /// The server's side of a connection: requests in, raw bytes out.
    struct Peer<S> {
        stream: S,
        buf: Vec<u8>,
    }

    struct Received {
        head: String,
        body: Vec<u8>,
    }

    impl<S: Read + Write> Peer<S> {
        fn new(stream: S) -> Self {
            Peer { stream, buf: Vec::new() }
        }

        /// The next request, None at EOF (or error).
        fn request(&mut self) -> Option<Received> {
            loop {
                if let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    let head = String::from_utf8_lossy(&self.buf[..end + 4]).into_owned();
                    let len = head
                        .lines()
                        .filter_map(|l| l.split_once(':'))
                        .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
                        .map_or(0, |(_, v)| v.trim().parse().unwrap());
                    if self.buf.len() >= end + 4 + len {
                        let body = self.buf[end + 4..end + 4 + len].to_vec();
                        self.buf.drain(..end + 4 + len);
                        return Some(Received { head, body });
                    }
                }
                let mut chunk = [0u8; 4096];
                match self.stream.read(&mut chunk) {
                    Ok(0) | Err(_) => return None,
                    Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                }
            }
        }

        fn send(&mut self, bytes: &[u8]) {
            let _ = self.stream.write_all(bytes);
            let _ = self.stream.flush();
        }
    }

    fn ok(body: &str) -> Vec<u8> {
        format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}", body.len()).into_bytes()
    }

    /// Answers every request with 200 and `echo <request body>`.
    fn echo_server() -> Server {
        serve(|stream, _| {
            let mut peer = Peer::new(stream);
            while let Some(req) = peer.request() {
                peer.send(&ok(&format!("echo {}", String::from_utf8_lossy(&req.body))));
            }
        })
    }

    /// Reads requests and never answers (until the client closes).
    fn silent_server() -> Server {
        serve(|stream, _| {
            let mut peer = Peer::new(stream);
            while peer.request().is_some() {}
        })
    }

    // ------------------------------------------------------------ plain HTTP

    #[test]
    fn content_length_response_and_request_shape() {
        let (heads, seen) = mpsc::channel();
        let heads = Mutex::new(heads);
        let server = serve(move |stream, _| {
            let mut peer = Peer::new(stream);
            if let Some(req) = peer.request() {
                heads.lock().unwrap().send(req).unwrap();
                peer.send(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 5\r\n\r\nhello");
                while peer.request().is_some() {}
            }
        });
        let mut h = Harness::plain();
        let now = Instant::now();
        let mut req =
            OutboundRequest::post(7, parse_url(&server.url("/hook?x=1")).unwrap(), b"{\"a\":1}".to_vec(), now + LIMIT);
        req.headers.push(("X-Hook".into(), "yes".into()));
        req.headers.push(("Connection".into(), "close".into()));
        h.out.start(req, now).unwrap();
        assert_eq!(h.out.in_flight(), 1);
        assert_eq!(h.wait(7), Ok(OutboundResponse { status: 201, body: b"hello".to_vec() }));
        assert_eq!(h.out.in_flight(), 0);
        let got = seen.recv_timeout(LIMIT).unwrap();
        let port = server.addr.port();
        assert!(got.head.starts_with("POST /hook?x=1 HTTP/1.1\r\n"), "{}", got.head);
        for line in [
            format!("Host: 127.0.0.1:{port}\r\n"),
            "Content-Type: application/json\r\n".into(),
            "Content-Length: 7\r\n".into(),
            format!("User-Agent: realtimehub/{}\r\n", env!("CARGO_PKG_VERSION")),
            "Connection: keep-alive\r\n".into(),
            "X-Hook: yes\r\n".into(),
        ] {
            assert!(got.head.contains(&line), "{line:?} missing in {:?}", got.head);
        }
        assert!(!got.head.contains("close"), "caller's Connection header must be skipped");
        assert_eq!(got.body, b"{\"a\":1}");
        // Kept alive, idle in the pool.
        assert_eq!(h.out.connections(), 1);
    }

    #[test]
    fn chunked_response_then_reuse() {
        let server = serve(|stream, _| {
            let mut peer = Peer::new(stream);
            while peer.request().is_some() {
                peer.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n");
                peer.send(b"5;ext=1\r\nhello\r\n");
                peer.send(b"6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n");
            }
        });
        let mut h = Harness::plain();
        h.start(1, &server.url("/"));
        assert_eq!(h.wait(1).unwrap().body, b"hello world");
        h.start(2, &server.url("/"));
        assert_eq!(h.wait(2).unwrap().body, b"hello world");
        assert_eq!(server.accepted(), 1, "the chunked framing must leave the connection reusable");
    }

    #[test]
    fn response_until_eof_is_not_reused() {
        let server = serve(|stream, _| {
            let mut peer = Peer::new(stream);
            if peer.request().is_some() {
                peer.send(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nall of ");
                peer.send(b"it");
            }
        });
        let mut h = Harness::plain();
        h.start(1, &server.url("/"));
        assert_eq!(h.wait(1), Ok(OutboundResponse { status: 200, body: b"all of it".to_vec() }));
        assert_eq!(h.out.connections(), 0);
    }

    #[test]
    fn keep_alive_reuse_and_idle_timeout() {
        let server = echo_server();
        let mut h = Harness::new(no_roots(), |c| c.idle_timeout = Duration::from_millis(200));
        h.start(1, &server.url("/a"));
        assert_eq!(h.wait(1).unwrap().body, b"echo {\"id\":1}");
        h.start(2, &server.url("/b"));
        assert_eq!(h.wait(2).unwrap().body, b"echo {\"id\":2}");
        assert_eq!(server.accepted(), 1);
        assert_eq!(h.out.connections(), 1);
        assert!(h.out.next_deadline().is_some(), "the idle connection has a deadline");
        let idle_since = Instant::now();
        h.turn_until("the idle connection to expire", |h| h.out.connections() == 0);
        assert!(idle_since.elapsed() < Duration::from_secs(2));
        assert_eq!(h.out.next_deadline(), None);
    }

    #[test]
    fn connection_close_header_is_honoured() {
        let server = serve(|stream, _| {
            let mut peer = Peer::new(stream);
            if peer.request().is_some() {
                peer.send(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok");
            }
        });
        let mut h = Harness::plain();
        h.start(1, &server.url("/"));
        assert_eq!(h.wait(1).unwrap().body, b"ok");
        assert_eq!(h.out.connections(), 0);
        h.start(2, &server.url("/"));
        assert_eq!(h.wait(2).unwrap().body, b"ok");
        assert_eq!(server.accepted(), 2);
    }

    #[test]
    fn stale_keep_alive_connection_is_retried_once() {
        let (close_tx, close_rx) = mpsc::channel::<()>();
        let close_rx = Mutex::new(close_rx);
        let (closed_tx, closed_rx) = mpsc::channel::<()>();
        let closed_tx = Mutex::new(closed_tx);
        let server = serve(move |stream, index| {
            let mut peer = Peer::new(stream);
            if index == 0 {
                // Answer once, then close while the client holds it idle.
                if peer.request().is_some() {
                    peer.send(&ok("first"));
                    let _ = close_rx.lock().unwrap().recv_timeout(LIMIT);
                    let _ = peer.stream.shutdown(std::net::Shutdown::Both);
                    drop(peer);
                    let _ = closed_tx.lock().unwrap().send(());
                }
                return;
            }
            while peer.request().is_some() {
                peer.send(&ok("second"));
            }
        });
        let mut h = Harness::plain();
        h.start(1, &server.url("/"));
        assert_eq!(h.wait(1).unwrap().body, b"first");
        assert_eq!(h.out.connections(), 1);
        close_tx.send(()).unwrap();
        closed_rx.recv_timeout(LIMIT).unwrap();
        // Without polling in between, the client has not seen the close
        // and reuses the dead connection.
        h.start(2, &server.url("/"));
        assert_eq!(h.wait(2).unwrap().body, b"second");
        assert_eq!(server.accepted(), 2);
        assert_eq!(h.out.retries, 1);
    }

    #[test]
    fn fresh_connection_closed_without_response_is_not_retried() {
        let server = serve(|stream, _| {
            let mut peer = Peer::new(stream);
            let _ = peer.request();
        });
        let mut h = Harness::plain();
        h.start(1, &server.url("/"));
        match h.wait(1) {
            Err(OutboundError::Io(_)) => {}
            other => panic!("expected an I/O error, got {other:?}"),
        }
        assert_eq!(server.accepted(), 1);
        assert_eq!(h.out.retries, 0);
        assert_eq!(h.out.connections(), 0);
    }

    #[test]
    fn connect_refused() {
        let port = {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap().port()
        };
        let mut h = Harness::plain();
        h.start(1, &format!("http://127.0.0.1:{port}/"));
        match h.wait(1) {
            Err(OutboundError::Connect(kind, message)) => {
                assert_eq!(kind, io::ErrorKind::ConnectionRefused, "{message}");
                assert!(message.contains(&format!("127.0.0.1:{port}")), "{message}");
            }
            other => panic!("expected a connect error, got {other:?}"),
        }
        assert_eq!(h.out.connections(), 0);
    }

    #[test]
    fn connect_timeout() {
        use std::os::fd::AsRawFd;
        // A listener that never accepts, its backlog shrunk to the minimum
        // and filled: the kernel drops further SYNs, so connects hang.
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        // SAFETY: listen(2) on a socket this test owns.
        assert_eq!(unsafe { libc::listen(listener.as_raw_fd(), 0) }, 0);
        let addr = listener.local_addr().unwrap();
        let mut fillers = Vec::new();
        for _ in 0..4 {
            if let Ok(stream) = StdStream::connect_timeout(&addr, Duration::from_millis(100)) {
                fillers.push(stream);
            }
        }
        let mut h = Harness::new(no_roots(), |c| c.connect_timeout = Duration::from_millis(200));
        let started = Instant::now();
        h.start(1, &format!("http://{addr}/"));
        assert_eq!(h.wait(1), Err(OutboundError::Timeout("connect")));
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(190) && took < Duration::from_secs(2), "{took:?}");
        assert_eq!(h.out.connections(), 0);
        drop(fillers);
    }

    #[test]
    fn no_answer_times_out_within_the_deadline() {
        let server = silent_server();
        let mut h = Harness::plain();
        let started = Instant::now();
        h.start_in(1, &server.url("/"), Duration::from_millis(300)).unwrap();
        assert_eq!(h.wait(1), Err(OutboundError::Timeout("response")));
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(290) && took < Duration::from_secs(2), "{took:?}");
        assert_eq!(h.out.connections(), 0);
    }

    #[test]
    fn body_too_large() {
        let server = serve(|stream, _| {
            let mut peer = Peer::new(stream);
            while let Some(req) = peer.request() {
                if req.head.starts_with("POST /length ") {
                    peer.send(b"HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\n");
                } else if req.head.starts_with("POST /chunked ") {
                    let chunk = format!("258\r\n{}\r\n", "x".repeat(600));
                    peer.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n");
                    peer.send(chunk.as_bytes());
                    peer.send(chunk.as_bytes());
                } else {
                    peer.send(b"HTTP/1.1 200 OK\r\n\r\n");
                    peer.send(&[b'y'; 2000]);
                    return;
                }
            }
        });
        let mut h = Harness::new(no_roots(), |c| c.max_response_bytes = 1024);
        for (id, path) in [(1, "/length"), (2, "/chunked"), (3, "/eof")] {
            h.start(id, &server.url(path));
            assert_eq!(h.wait(id), Err(OutboundError::TooLarge), "{path}");
            assert_eq!(h.out.connections(), 0, "{path}: the connection is dropped");
        }
    }

    #[test]
    fn per_origin_bound_queues_the_extra_request() {
        let arrived = Arc::new(AtomicUsize::new(0));
        let (release, released) = mpsc::channel::<()>();
        let released = Arc::new(Mutex::new(released));
        let seen = arrived.clone();
        let server = serve(move |stream, _| {
            let mut peer = Peer::new(stream);
            while peer.request().is_some() {
                seen.fetch_add(1, Ordering::SeqCst);
                let _ = released.lock().unwrap().recv_timeout(LIMIT);
                peer.send(&ok("late"));
            }
        });
        let mut h = Harness::new(no_roots(), |c| c.max_connections_per_origin = 2);
        for id in 1..=3 {
            h.start(id, &server.url("/"));
        }
        assert_eq!(h.out.connections(), 2);
        assert_eq!(h.out.in_flight(), 3);
        assert_eq!(h.out.queue.len(), 1);
        h.turn_until("two requests at the server", |_| arrived.load(Ordering::SeqCst) == 2);
        assert_eq!(server.accepted(), 2);
        for _ in 0..3 {
            release.send(()).unwrap();
        }
        for id in 1..=3 {
            assert_eq!(h.wait(id).unwrap().body, b"late");
        }
        assert_eq!(server.accepted(), 2, "the queued request reused a connection");
        assert_eq!(arrived.load(Ordering::SeqCst), 3);
    }

    #[test]
    fn total_bound_evicts_an_idle_connection_of_another_origin() {
        let (a, b) = (echo_server(), echo_server());
        let mut h = Harness::new(no_roots(), |c| c.max_connections = 1);
        h.start(1, &a.url("/"));
        h.wait(1).unwrap();
        assert_eq!(h.out.connections(), 1);
        h.start(2, &b.url("/"));
        assert_eq!(h.out.connections(), 1, "a's idle connection made room");
        h.wait(2).unwrap();
        assert_eq!((a.accepted(), b.accepted()), (1, 1));
    }

    #[test]
    fn queue_bound_and_queue_timeout() {
        let server = silent_server();
        let mut h = Harness::new(no_roots(), |c| {
            c.max_connections_per_origin = 1;
            c.max_queued = 2;
        });
        let url = server.url("/");
        h.start_in(1, &url, Duration::from_millis(400)).unwrap();
        h.start_in(2, &url, Duration::from_millis(200)).unwrap();
        h.start_in(3, &url, Duration::from_millis(200)).unwrap();
        assert_eq!(h.start_in(4, &url, Duration::from_millis(200)), Err(OutboundError::Overloaded));
        assert_eq!(h.out.in_flight(), 3);
        assert_eq!(h.wait(2), Err(OutboundError::Timeout("queue")));
        assert_eq!(h.wait(3), Err(OutboundError::Timeout("queue")));
        assert_eq!(h.wait(1), Err(OutboundError::Timeout("response")));
        assert_eq!(h.out.in_flight(), 0);
        assert!(h.take_none());
    }

    impl Harness {
        fn take_none(&mut self) -> bool {
            self.collect();
            self.done.is_empty()
        }
    }

    #[test]
    fn invalid_headers_are_refused() {
        let mut h = Harness::plain();
        let url = parse_url("http://127.0.0.1:9/").unwrap();
        let deadline = Instant::now() + LIMIT;
        let mut bad_value = OutboundRequest::post(1, url.clone(), Vec::new(), deadline);
        bad_value.headers.push(("X-A".into(), "a\r\nInjected: yes".into()));
        assert!(matches!(h.out.start(bad_value, Instant::now()), Err(OutboundError::Header(_))));
        let mut bad_name = OutboundRequest::post(2, url.clone(), Vec::new(), deadline);
        bad_name.headers.push(("X A".into(), "a".into()));
        assert!(matches!(h.out.start(bad_name, Instant::now()), Err(OutboundError::Header(_))));
        let bad_method = OutboundRequest { method: "PO ST", ..OutboundRequest::post(3, url, Vec::new(), deadline) };
        assert!(matches!(h.out.start(bad_method, Instant::now()), Err(OutboundError::Header(_))));
        assert_eq!(h.out.in_flight(), 0);
    }

    // ------------------------------------------------------------ names

    #[test]
    fn localhost_resolves_without_the_thread() {
        let server = echo_server();
        let mut h = Harness::plain();
        h.start(1, &format!("http://localhost:{}/", server.addr.port()));
        assert!(h.out.resolving.is_empty());
        h.wait(1).unwrap();
        assert!(h.out.resolver.is_none(), "no resolver thread for localhost");
    }

    #[test]
    fn names_go_through_the_resolver_thread_and_are_cached() {
        // Connection: close, so the second request needs a new connection
        // (and an address).
        let server = serve(|stream, _| {
            let mut peer = Peer::new(stream);
            if peer.request().is_some() {
                peer.send(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok");
            }
        });
        let mut h = Harness::plain();
        h.out.localhost_direct = false;
        let url = format!("http://localhost:{}/", server.addr.port());
        h.start(1, &url);
        assert!(h.out.resolving.contains_key("localhost"), "waiting for the thread");
        assert!(h.out.resolver.is_some());
        assert_eq!(h.wait(1).unwrap().body, b"ok");
        assert!(h.out.dns_cache.contains_key("localhost"));
        h.start(2, &url);
        assert!(h.out.resolving.is_empty(), "answered from the cache");
        assert_eq!(h.wait(2).unwrap().body, b"ok");
    }

    fn fake_resolve(host: &str) -> Result<Vec<IpAddr>, String> {
        match host {
            "good.test" => Ok(vec![IpAddr::V4(Ipv4Addr::LOCALHOST)]),
            "empty.test" => Ok(Vec::new()),
            _ => Err(format!("{host}: no such host")),
        }
    }

    #[test]
    fn resolver_answers_and_failures() {
        let server = echo_server();
        let port = server.addr.port();
        let mut h = Harness::plain();
        h.out.resolve_fn = fake_resolve;
        h.start(1, &format!("http://good.test:{port}/"));
        h.start(2, &format!("http://good.test:{port}/other"));
        h.start(3, &format!("http://bad.test:{port}/"));
        h.start(4, &format!("http://empty.test:{port}/"));
        assert_eq!(h.out.resolving["good.test"].len(), 2, "one query for two requests");
        h.wait(1).unwrap();
        h.wait(2).unwrap();
        match h.wait(3) {
            Err(OutboundError::Resolve(m)) => assert!(m.contains("no such host"), "{m}"),
            other => panic!("expected a resolve error, got {other:?}"),
        }
        assert!(matches!(h.wait(4), Err(OutboundError::Resolve(_))));
        assert!(!h.out.dns_cache.contains_key("bad.test"));
    }

    #[test]
    fn ipv6_loopback_when_available() {
        let Ok(listener) = TcpListener::bind("[::1]:0") else {
            eprintln!("no IPv6 loopback here: skipped");
            return;
        };
        let server = serve_on(listener, |stream, _| {
            let mut peer = Peer::new(stream);
            while let Some(req) = peer.request() {
                let host = req.head.lines().find(|l| l.starts_with("Host: ")).unwrap_or("").to_string();
                peer.send(&ok(&host));
            }
        });
        let mut h = Harness::plain();
        let port = server.addr.port();
        h.start(1, &format!("http://[::1]:{port}/"));
        assert_eq!(h.wait(1).unwrap().body, format!("Host: [::1]:{port}").into_bytes());
    }

    // ------------------------------------------------------------ HTTPS

    /// A CA and a server certificate for 127.0.0.1 and localhost signed by it.
    struct Pki {
        ca_pem: String,
        server: Arc<rustls::ServerConfig>,
    }

    fn pki() -> Pki {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca.distinguished_name.push(rcgen::DnType::CommonName, "realtimehub test CA");
        ca.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(ca, ca_key);
        let leaf_key = rcgen::KeyPair::generate().unwrap();
        let mut leaf = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()]).unwrap();
        leaf.distinguished_name.push(rcgen::DnType::CommonName, "localhost");
        leaf.use_authority_key_identifier_extension = true;
        leaf.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        let leaf_cert = leaf.signed_by(&leaf_key, &issuer).unwrap();
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der()));
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let server = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![leaf_cert.der().clone()], key)
            .unwrap();
        Pki { ca_pem: ca_cert.pem(), server: Arc::new(server) }
    }

    fn tls_server(config: Arc<rustls::ServerConfig>) -> Server {
        serve(move |tcp, _| {
            let Ok(conn) = rustls::ServerConnection::new(config.clone()) else { return };
            let mut peer = Peer::new(rustls::StreamOwned::new(conn, tcp));
            while let Some(req) = peer.request() {
                peer.send(&ok(&format!("secure {}", String::from_utf8_lossy(&req.body))));
            }
        })
    }

    fn client_tls(ca_pem: &str) -> (Arc<ClientConfig>, tempfile::NamedTempFile) {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(ca_pem.as_bytes()).unwrap();
        file.flush().unwrap();
        (tls_config(Some(file.path())).unwrap(), file)
    }

    #[test]
    fn https_round_trips_and_reuse() {
        let pki = pki();
        let server = tls_server(pki.server.clone());
        let (tls, _file) = client_tls(&pki.ca_pem);
        let mut h = Harness::new(tls, |_| {});
        let port = server.addr.port();
        h.start(1, &format!("https://127.0.0.1:{port}/"));
        assert_eq!(h.wait(1).unwrap().body, b"secure {\"id\":1}");
        h.start(2, &format!("https://127.0.0.1:{port}/again"));
        assert_eq!(h.wait(2).unwrap().body, b"secure {\"id\":2}");
        assert_eq!(server.accepted(), 1, "the TLS connection was kept alive");
        h.start(3, &format!("https://localhost:{port}/"));
        assert_eq!(h.wait(3).unwrap().body, b"secure {\"id\":3}");
        assert_eq!(server.accepted(), 2, "another origin, another connection (DNS-name certificate)");
    }

    #[test]
    fn https_with_an_unknown_ca_fails() {
        let server = tls_server(pki().server);
        let (tls, _file) = client_tls(&pki().ca_pem);
        let mut h = Harness::new(tls, |_| {});
        h.start(1, &format!("https://127.0.0.1:{}/", server.addr.port()));
        match h.wait(1) {
            Err(OutboundError::Tls(m)) => assert!(m.contains("UnknownIssuer") || m.contains("certificate"), "{m}"),
            other => panic!("expected a TLS error, got {other:?}"),
        }
        assert_eq!(h.out.connections(), 0);
    }

    #[test]
    fn tls_config_rejects_bad_ca_files() {
        let empty = tempfile::NamedTempFile::new().unwrap();
        assert!(matches!(tls_config(Some(empty.path())), Err(OutboundError::Tls(_))));
        assert!(matches!(tls_config(Some(Path::new("/nonexistent/ca.pem"))), Err(OutboundError::Tls(_))));
    }

    // ------------------------------------------------------------ parsing units

    /// Feeds a whole response at once and byte by byte; both must agree.
    fn parse_response(input: &[u8], max: usize) -> Result<(OutboundResponse, bool), OutboundError> {
        let run = |bytewise: bool| -> Result<(OutboundResponse, bool), OutboundError> {
            let mut parser = ResponseParser::new(max, false);
            let mut done = false;
            if bytewise {
                for byte in input {
                    done = parser.feed(std::slice::from_ref(byte))?;
                }
            } else {
                done = parser.feed(input)?;
            }
            if !done {
                parser.finish_eof()?;
            }
            Ok(parser.into_response())
        };
        let whole = run(false);
        assert_eq!(whole, run(true), "{:?}", String::from_utf8_lossy(&input[..input.len().min(120)]));
        whole
    }

    #[test]
    fn response_framing() {
        let cases: &[(&str, u16, &str, bool)] = &[
            ("HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc", 200, "abc", true),
            ("HTTP/1.1 200 OK\r\nContent-Length: 2, 2\r\n\r\nab", 200, "ab", true),
            (
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3;a=b\r\nabc\r\n2\r\nde\r\n0\r\nT: v\r\nU: w\r\n\r\n",
                200,
                "abcde",
                true,
            ),
            ("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\nabc\n0\n\n", 200, "abc", true),
            ("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nA \r\n0123456789\r\n0\r\n\r\n", 200, "0123456789", true),
            ("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 102 Processing\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n", 204, "", true),
            ("HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n", 304, "", true),
            ("HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok", 200, "ok", false),
            ("HTTP/1.1 200 OK\r\nConnection: Keep-Alive, Close\r\nContent-Length: 2\r\n\r\nok", 200, "ok", false),
            ("HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok", 200, "ok", false),
            ("HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nok", 200, "ok", true),
            ("HTTP/1.1 500 Oops\r\n\r\nuntil eof", 500, "until eof", false),
            ("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nraw", 200, "raw", false),
            ("HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n1\r\na\r\n0\r\n\r\n", 200, "a", false),
            ("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokEXTRA", 200, "ok", false),
            ("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", 200, "", true),
        ];
        for (input, status, body, reusable) in cases {
            let (response, reuse) = parse_response(input.as_bytes(), 1024).unwrap_or_else(|e| panic!("{input:?}: {e}"));
            assert_eq!(response.status, *status, "{input:?}");
            assert_eq!(response.body, body.as_bytes(), "{input:?}");
            assert_eq!(reuse, *reusable, "{input:?}");
        }
        // A HEAD response has no body whatever its headers say.
        let mut parser = ResponseParser::new(1024, true);
        assert!(parser.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n").unwrap());
        assert_eq!(parser.into_response().0.body, b"");
    }

    #[test]
    fn response_errors() {
        let big_head = format!("HTTP/1.1 200 OK\r\nX: {}\r\n\r\n", "a".repeat(20_000));
        let chunked_big = format!(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n258\r\n{0}\r\n258\r\n{0}\r\n0\r\n\r\n",
            "x".repeat(600)
        );
        let bad_response = |m: &str| matches!(parse_response(m.as_bytes(), 1024), Err(OutboundError::BadResponse(_)));
        for input in [
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nab",
            "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
            "HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 1x\r\n\r\n",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\r\n",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcX\r\n",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n",
            "HTTP/1.1 101 Switching Protocols\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 3\r\n",
            "garbage\r\n\r\n",
            big_head.as_str(),
        ] {
            assert!(bad_response(input), "{:?}", &input[..input.len().min(80)]);
        }
        assert!(matches!(parse_response(b"", 1024), Err(OutboundError::Io(_))));
        for input in [
            "HTTP/1.1 200 OK\r\nContent-Length: 2000\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999999\r\n\r\n",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nffffffff\r\n",
            chunked_big.as_str(),
        ] {
            assert_eq!(parse_response(input.as_bytes(), 1024), Err(OutboundError::TooLarge), "{:?}", &input[..40]);
        }
    }

    #[test]
    fn request_head_shape() {
        let mut req =
            OutboundRequest::post(1, parse_url("http://[::1]:8080/p?q").unwrap(), b"hi".to_vec(), Instant::now());
        req.headers = vec![
            ("Content-Type".into(), "text/plain".into()),
            ("host".into(), "evil".into()),
            ("Transfer-Encoding".into(), "chunked".into()),
            ("X-A".into(), "b".into()),
        ];
        let head = String::from_utf8(request_head(&req)).unwrap();
        let expected = format!(
            "POST /p?q HTTP/1.1\r\nHost: [::1]:8080\r\nContent-Length: 2\r\nUser-Agent: realtimehub/{}\r\n\
             Connection: keep-alive\r\nContent-Type: text/plain\r\nX-A: b\r\n\r\n",
            env!("CARGO_PKG_VERSION")
        );
        assert_eq!(head, expected);
        let get = OutboundRequest {
            method: "GET",
            ..OutboundRequest::post(2, parse_url("https://example.com").unwrap(), Vec::new(), Instant::now())
        };
        let head = String::from_utf8(request_head(&get)).unwrap();
        assert!(head.starts_with("GET / HTTP/1.1\r\nHost: example.com\r\nUser-Agent: "), "{head}");
        assert!(!head.contains("Content-Length"), "{head}");
    }
}
