//! The mio shell: one thread, one `Poll`, every socket non-blocking.
//!
//! One iteration: poll (timeout = next deadline) → take the store thread's
//! completions → accept until WouldBlock → read each ready socket and feed
//! the core → fire due timers → hand the iteration's batch to the store
//! thread → hand the released outputs to connections → flush each dirty
//! connection once → remove closed connections. This is the only place that
//! sees `WouldBlock`, sockets, the clock or the store thread; it never waits
//! for the disk.
//!
//! Back-pressure: while the batches in flight reach `--store-max-batches` or
//! `--store-max-bytes`, connections that have written to the store are not
//! read (they are parked, and read again once the store catches up); the
//! others are read, and every connection keeps receiving what is released.
//!
//! Shutdown (SIGINT/SIGTERM): stop accepting and reading, wait for every
//! batch in flight to be reported and its outputs delivered, then send the
//! close frames; all within `--drain-timeout-ms`.

mod conn;
mod hooks;
pub(crate) mod outbound;
mod pusher;
mod socketio;

use std::collections::{HashMap, VecDeque};
use std::io::{self, Read};
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use mio::net::TcpListener;
use mio::{Events, Interest, Poll, Token, Waker};
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook_mio::v1_0::Signals;
use slab::Slab;
use tungstenite::error::ProtocolError;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::{CloseFrame, Role, WebSocketConfig, WebSocketContext};
use tungstenite::{Error as WsError, Message};

use crate::config::{Config, Limits};
use crate::core::{BatchWriter, Completion, ConnId, Disconnect, Entropy, Hub, Now, Output};
use crate::http::{self, Request, Response};
use crate::storethread::StoreThread;
use conn::{Conn, Phase, WsIo};

const LISTENER: Token = Token(usize::MAX - 1);
const SIGNALS: Token = Token(usize::MAX - 2);
const STORE: Token = Token(usize::MAX - 3);
/// The outbound client's sockets: tokens from here up.
const OUTBOUND_TOKENS: usize = 1 << 40;
/// How often connection deadlines (idle, slow headers, pings) are checked.
const SWEEP_EVERY: Duration = Duration::from_millis(250);

/// Why the loop could not start or stopped abnormally.
#[derive(Debug)]
pub enum ShellError {
    /// The host/port could not be resolved or bound: the configuration cannot
    /// be used → exit 2.
    Bind(String, io::Error),
    /// Polling, signal set-up or the loop failed → exit 1.
    Io(&'static str, io::Error),
    /// `--hook-ca-file` cannot be read or holds no certificate → exit 2.
    HookCa(String),
}

impl std::fmt::Display for ShellError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ShellError::Bind(addr, e) => write!(f, "cannot listen on {addr}: {e}"),
            ShellError::Io(what, e) => write!(f, "{what}: {e}"),
            ShellError::HookCa(e) => write!(f, "--hook-ca-file: {e}"),
        }
    }
}

impl std::error::Error for ShellError {}

/// Randomness from the operating system.
pub struct OsEntropy;

impl Entropy for OsEntropy {
    fn fill(&mut self, buf: &mut [u8]) {
        // Without OS randomness no safe key can be made; there is no fallback.
        getrandom::fill(buf).expect("the operating system's random source failed");
    }
}

/// Reads the clock once.
pub fn now() -> Now {
    let unix_ms = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64);
    Now { mono: Instant::now(), unix_ms }
}

/// The running server.
pub struct Server {
    poll: Poll,
    listener: Option<TcpListener>,
    signals: Signals,
    conns: Slab<Conn>,
    generation: u32,
    hub: Hub,
    limits: Limits,
    echo_path: Option<String>,
    /// `--socketio-conformance`: Socket.IO sessions echo, never reaching the hub.
    sio_conformance: bool,
    /// Socket.IO connection-state recovery is on (`--socketio-recovery-window-ms`).
    sio_recovery: bool,
    ws_config: WebSocketConfig,
    /// Connections with output to flush this iteration.
    dirty: Vec<usize>,
    /// Connections with input left over (fairness cap or deferred upgrade).
    again: Vec<usize>,
    next_sweep: Instant,
    /// Set on SIGINT/SIGTERM: when to give up draining.
    shutdown_deadline: Option<Instant>,
    bytes_in: u64,
    bytes_out: u64,
    /// Connections whose state may have changed this iteration; `reap` looks only at these.
    touched: Vec<usize>,
    /// Open connections per peer address, for the per-address limit.
    per_ip: HashMap<IpAddr, u32>,
    /// A descriptor held in reserve so accept can shed load when the process runs out.
    spare_fd: Option<std::fs::File>,
    /// Bytes held in all connections' output queues (the sum of each one's
    /// `accounted`), bounded by `--max-outbound-total-bytes`.
    out_total: usize,
    /// The thread that commits the core's batches.
    store: StoreThread,
    /// Batches handed over, with when, for the commit latency.
    submitted: VecDeque<(u64, Instant)>,
    /// Writers not read while the store is behind.
    store_paused: Vec<usize>,
    /// Shutdown: the close frames went out (after the store drained).
    closed_all: bool,
    /// Socket.IO sessions (Engine.IO over long-polling or WebSocket).
    sio: socketio::Sessions,
    /// The HTTP(S) client for backend calls.
    outbound: outbound::Outbound,
}

const EMFILE: i32 = 24;
const ENFILE: i32 = 23;

/// Resolves `host:port` and binds, returning the bound address.
fn bind(host: &str, port: u16) -> Result<TcpListener, ShellError> {
    let label = format!("{host}:{port}");
    let addr: SocketAddr = (host, port)
        .to_socket_addrs()
        .map_err(|e| ShellError::Bind(label.clone(), e))?
        .next()
        .ok_or_else(|| ShellError::Bind(label.clone(), io::Error::other("no address")))?;
    TcpListener::bind(addr).map_err(|e| ShellError::Bind(label, e))
}

impl Server {
    /// Binds the port, starts the store thread around `writer` and prepares the loop.
    pub fn bind<W: BatchWriter + Send + 'static>(config: &Config, hub: Hub, writer: W) -> Result<Server, ShellError> {
        let poll = Poll::new().map_err(|e| ShellError::Io("create poll", e))?;
        let waker = Arc::new(Waker::new(poll.registry(), STORE).map_err(|e| ShellError::Io("create waker", e))?);
        let ca_file = config.hook_ca_file.as_deref().map(std::path::Path::new);
        let tls = outbound::tls_config(ca_file).map_err(|e| ShellError::HookCa(e.to_string()))?;
        let mut outbound_config = outbound::OutboundConfig::new(tls);
        outbound_config.max_connections = config.limits.hook_max_connections;
        let registry = poll.registry().try_clone().map_err(|e| ShellError::Io("clone the poll registry", e))?;
        // The resolver thread wakes the loop through the store's waker (one per poll).
        let outbound = outbound::Outbound::new(outbound_config, registry, OUTBOUND_TOKENS, waker.clone())
            .map_err(|e| ShellError::Io("start the outbound client", e))?;
        let store = StoreThread::spawn(writer, waker, config.limits.store_delay)
            .map_err(|e| ShellError::Io("start the store thread", e))?;
        let mut listener = bind(&config.host, config.port)?;
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)
            .map_err(|e| ShellError::Io("register listener", e))?;
        let mut signals = Signals::new([SIGINT, SIGTERM]).map_err(|e| ShellError::Io("install signal handlers", e))?;
        poll.registry()
            .register(&mut signals, SIGNALS, Interest::READABLE)
            .map_err(|e| ShellError::Io("register signals", e))?;
        let limits = config.limits.clone();
        let mut ws_config = WebSocketConfig::default();
        ws_config.read_buffer_size = limits.ws_read_buffer_bytes;
        ws_config.write_buffer_size = 0;
        ws_config.max_write_buffer_size = usize::MAX;
        ws_config.max_message_size = Some(limits.max_message_bytes);
        ws_config.max_frame_size = Some(limits.max_message_bytes);
        Ok(Server {
            poll,
            listener: Some(listener),
            signals,
            conns: Slab::new(),
            generation: 0,
            hub,
            limits,
            echo_path: config.echo_path.clone(),
            sio_conformance: config.socketio_conformance,
            sio_recovery: !config.limits.socketio_recovery_window.is_zero(),
            ws_config,
            dirty: Vec::new(),
            again: Vec::new(),
            next_sweep: Instant::now() + SWEEP_EVERY,
            shutdown_deadline: None,
            bytes_in: 0,
            bytes_out: 0,
            touched: Vec::new(),
            per_ip: HashMap::new(),
            spare_fd: std::fs::File::open("/dev/null").ok(),
            out_total: 0,
            store,
            submitted: VecDeque::new(),
            store_paused: Vec::new(),
            closed_all: false,
            sio: socketio::Sessions::default(),
            outbound,
        })
    }

    /// The bound address (the real port when 0 was asked for).
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        match &self.listener {
            Some(l) => l.local_addr(),
            None => Err(io::Error::other("not listening")),
        }
    }

    /// Runs until a signal has been handled and connections drained.
    pub fn run(&mut self) -> Result<(), ShellError> {
        let mut events = Events::with_capacity(1024);
        loop {
            let timeout = self.poll_timeout();
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(ShellError::Io("poll", e));
            }
            let now = now();
            self.take_completions(now);
            for event in events.iter() {
                match event.token() {
                    LISTENER => self.accept(now),
                    SIGNALS => self.on_signal(now),
                    // Store completions were taken above; the resolver thread shares the waker.
                    STORE => self.outbound.handle_wake(now.mono),
                    token if self.outbound.owns(token) => self.outbound.handle_event(event, now.mono),
                    Token(i) => {
                        if event.is_readable() || event.is_read_closed() || event.is_error() {
                            self.on_readable(i, now);
                        }
                        if event.is_writable() {
                            self.mark_dirty(i);
                        }
                    }
                }
            }
            for i in std::mem::take(&mut self.again) {
                self.on_readable(i, now);
            }
            if self.outbound.next_deadline().is_some_and(|d| d <= now.mono) {
                self.outbound.handle_timeout(now.mono);
            }
            self.outbound_completions(now);
            self.hub.handle_timeout(now);
            if now.mono >= self.next_sweep {
                self.sweep(now);
                self.next_sweep = now.mono + SWEEP_EVERY;
            }
            self.sio_sweep(now);
            self.sio_send_deferred(now);
            self.end_iteration(now);
            if let Some(deadline) = self.shutdown_deadline {
                if !self.closed_all && !self.hub.has_pending() {
                    // Every batch in flight is committed and its outputs are
                    // queued: now the close frames.
                    self.close_all();
                    self.flush_dirty(now);
                }
                if (self.closed_all && self.conns.is_empty()) || now.mono >= deadline {
                    if self.hub.has_pending() {
                        log::warn!("drain deadline: batches still in flight are not acknowledged");
                    } else {
                        self.store.shutdown();
                    }
                    log::info!("shutdown complete ({} connections left unflushed)", self.conns.len());
                    return Ok(());
                }
            }
        }
    }

    fn poll_timeout(&self) -> Option<Duration> {
        if !self.again.is_empty() {
            return Some(Duration::ZERO);
        }
        let now = Instant::now();
        let mut wake = self.next_sweep;
        if self.outbound.has_completions() {
            return Some(Duration::ZERO);
        }
        for t in [self.sio.next_deadline, self.sio.deferred_at, self.outbound.next_deadline()].into_iter().flatten() {
            wake = wake.min(t);
        }
        if let Some(t) = self.hub.poll_timeout() {
            wake = wake.min(t);
        }
        if let Some(t) = self.shutdown_deadline {
            wake = wake.min(t);
            if !self.closed_all {
                // Draining the store: look again soon (the waker also calls).
                wake = wake.min(now + Duration::from_millis(5));
            }
        }
        Some(wake.saturating_duration_since(now))
    }

    /// Reap, hand over, deliver, flush: the second half of every iteration.
    fn end_iteration(&mut self, now: Now) {
        // Backend work first, so what it writes joins this iteration's batch.
        self.hub.run_hooks(now);
        self.reap(now);
        self.submit(now);
        self.take_completions(now);
        self.deliver_all(now);
        self.sio_flush_polls(now);
        self.flush_dirty(now);
        if !self.touched.is_empty() {
            // Flushing found closed sockets; their cleanup tells rooms, so run
            // the second half once more now rather than next iteration.
            self.reap(now);
            self.submit(now);
            self.deliver_all(now);
            self.sio_flush_polls(now);
            self.flush_dirty(now);
        }
        self.hub.record_io(std::mem::take(&mut self.bytes_in), std::mem::take(&mut self.bytes_out));
        self.hub.record_iteration(now.mono.elapsed());
    }

    /// Ends the core's iteration and hands its batch, if any, to the store
    /// thread; never waits.
    fn submit(&mut self, now: Now) {
        let Some(batch) = self.hub.commit() else { return };
        self.submitted.push_back((batch.id, now.mono));
        if let Some(failed) = self.store.submit(batch) {
            self.complete(failed);
        }
    }

    /// Applies every completion the store thread has sent, then resumes the
    /// writers parked while it was behind, if it no longer is.
    fn take_completions(&mut self, now: Now) {
        let mut any = false;
        while let Some(completion) = self.store.try_completion() {
            self.complete(completion);
            any = true;
        }
        if any && !self.store_paused.is_empty() && !self.store_behind() {
            for i in std::mem::take(&mut self.store_paused) {
                if let Some(conn) = self.conns.get_mut(i) {
                    conn.store_paused = false;
                    if !self.again.contains(&i) {
                        self.again.push(i);
                    }
                }
            }
        }
        let _ = now;
    }

    fn complete(&mut self, completion: Completion) {
        while let Some(&(id, at)) = self.submitted.front() {
            if id > completion.id {
                break;
            }
            self.submitted.pop_front();
            if id == completion.id {
                self.hub.record_commit(at.elapsed());
            }
        }
        self.hub.handle_committed(completion);
    }

    /// Whether the batches in flight reach a store bound.
    fn store_behind(&self) -> bool {
        let (batches, bytes) = self.hub.store_backlog();
        batches >= self.limits.store_max_batches || bytes >= self.limits.store_max_bytes
    }

    /// Parks a writer while the store is behind; true if it was parked.
    fn park_if_store_behind(&mut self, i: usize) -> bool {
        let behind = self.store_behind();
        let Some(conn) = self.conns.get_mut(i) else { return false };
        if !conn.writer || !behind {
            return false;
        }
        if !conn.store_paused {
            conn.store_paused = true;
            self.store_paused.push(i);
        }
        true
    }

    fn deliver_all(&mut self, now: Now) {
        while let Some(output) = self.hub.poll_output() {
            self.deliver(output, now);
        }
    }

    /// One flush per connection with new output.
    fn flush_dirty(&mut self, now: Now) {
        for i in std::mem::take(&mut self.dirty) {
            let Some(conn) = self.conns.get_mut(i) else { continue };
            conn.dirty = false;
            self.bytes_out += conn.flush(now.mono);
            let conn = account(&mut self.out_total, conn);
            if conn.dead || conn.closing {
                self.touched.push(i);
            } else if conn.http_paused && conn.queued() <= self.limits.max_outbound_bytes / 2 {
                conn.http_paused = false;
                self.again.push(i);
            }
        }
    }

    fn mark_dirty(&mut self, i: usize) {
        if let Some(conn) = self.conns.get_mut(i) {
            if !conn.dirty {
                conn.dirty = true;
                self.dirty.push(i);
            }
        }
    }

    /// Tells the hub about WebSockets that went away and drops dead sockets,
    /// looking only at connections touched this iteration.
    fn reap(&mut self, now: Now) {
        for i in std::mem::take(&mut self.touched) {
            let Some(conn) = self.conns.get_mut(i) else { continue };
            if (conn.dead || conn.closing) && conn.is_ws() && !conn.hub_notified {
                conn.hub_notified = true;
                let id = conn.id;
                match conn.sio.take() {
                    Some(ix) => self.sio_ws_gone(ix, id, now),
                    None => self.hub.handle_ws_closed(id, now),
                }
            }
            if self.conns[i].dead && self.conns[i].poll_parked.is_some() {
                let id = self.conns[i].id;
                self.sio_poll_gone(id);
            }
            if self.conns[i].dead {
                let mut conn = self.conns.remove(i);
                self.out_total -= conn.accounted;
                let _ = self.poll.registry().deregister(&mut conn.sock);
                let ip = conn.peer.ip();
                if let Some(count) = self.per_ip.get_mut(&ip) {
                    *count -= 1;
                    if *count == 0 {
                        self.per_ip.remove(&ip);
                    }
                }
                log::debug!(conn:% = conn.id, peer:% = conn.peer; "removed");
            }
        }
    }

    fn accept(&mut self, now: Now) {
        loop {
            let Some(listener) = &self.listener else { return };
            match listener.accept() {
                Ok((sock, peer)) => self.admit(sock, peer, now),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if matches!(e.raw_os_error(), Some(EMFILE) | Some(ENFILE)) => {
                    // Out of descriptors: give back the spare, accept and close
                    // one connection so the backlog drains instead of the
                    // listener staying ready forever, then take the spare again.
                    self.spare_fd = None;
                    let shed = match &self.listener {
                        Some(listener) => match listener.accept() {
                            Ok((sock, peer)) => {
                                log::warn!(peer:% = peer; "out of file descriptors: closing a new connection at once");
                                drop(sock);
                                true
                            }
                            Err(_) => false,
                        },
                        None => false,
                    };
                    self.spare_fd = std::fs::File::open("/dev/null").ok();
                    // Linux reports EMFILE before it looks at the queue: only
                    // keep going while connections were actually waiting.
                    if !shed || self.spare_fd.is_none() {
                        return;
                    }
                }
                Err(e) => {
                    log::warn!("accept failed: {e}");
                    return;
                }
            }
        }
    }

    /// Registers an accepted socket; past a limit the connection is answered
    /// (503 too many connections, 429 too many from this address) and closed
    /// through the normal lingering close so the client reads the answer.
    fn admit(&mut self, mut sock: mio::net::TcpStream, peer: SocketAddr, now: Now) {
        let _ = sock.set_nodelay(true);
        let from_ip = self.per_ip.get(&peer.ip()).copied().unwrap_or(0);
        let refusal = if self.conns.len() >= self.limits.max_connections {
            self.hub.record_refused();
            log::warn!(peer:% = peer; "refusing a connection: {} connections open", self.conns.len());
            Some(Response::error(503, "unavailable", "too many connections"))
        } else if from_ip as usize >= self.limits.max_connections_per_ip {
            self.hub.record_refused();
            log::warn!(peer:% = peer; "refusing a connection: {from_ip} connections from this address");
            Some(Response::error(429, "rate_limited", "too many connections from this address"))
        } else {
            None
        };
        self.generation = self.generation.wrapping_add(1);
        let entry = self.conns.vacant_entry();
        let i = entry.key();
        let id = ConnId::new(i, self.generation);
        if let Err(e) = self.poll.registry().register(&mut sock, Token(i), Interest::READABLE | Interest::WRITABLE) {
            log::warn!(peer:% = peer; "cannot register a connection: {e}");
            return;
        }
        log::debug!(conn:% = id, peer:% = peer; "accepted");
        let mut conn = Conn::new(sock, id, peer, now.mono);
        if let Some(response) = refusal {
            response.encode(false, &mut conn.out);
            conn.closing = true;
        }
        entry.insert(conn);
        *self.per_ip.entry(peer.ip()).or_insert(0) += 1;
        if self.conns[i].closing {
            self.mark_dirty(i);
        }
    }

    fn on_signal(&mut self, now: Now) {
        let signals: Vec<i32> = self.signals.pending().collect();
        if signals.is_empty() {
            return;
        }
        if self.shutdown_deadline.is_some() {
            log::warn!("second signal: exiting without waiting for the drain");
            std::process::exit(0);
        }
        log::info!("signal {signals:?}: stopping; draining the store, then closing connections");
        if let Some(mut listener) = self.listener.take() {
            let _ = self.poll.registry().deregister(&mut listener);
        }
        self.shutdown_deadline = Some(now.mono + self.limits.drain_timeout);
    }

    /// Shutdown, once the store has drained: close 1001 to every WebSocket,
    /// and HTTP connections close after their answers.
    fn close_all(&mut self) {
        self.closed_all = true;
        let ids: Vec<usize> = self.conns.iter().map(|(i, _)| i).collect();
        for i in ids {
            let conn = &mut self.conns[i];
            if conn.is_ws() {
                close_ws(conn, 1001, "server shutdown", &mut self.bytes_in);
            } else if conn.awaiting.is_empty() {
                conn.closing = true;
            }
            self.touched.push(i);
            self.mark_dirty(i);
        }
    }

    fn on_readable(&mut self, i: usize, now: Now) {
        let Some(conn) = self.conns.get_mut(i) else { return };
        self.touched.push(i);
        if conn.dead {
            return;
        }
        if self.shutdown_deadline.is_some() && !conn.closing {
            // Draining: nothing new is taken in; what is queued goes out.
            return;
        }
        if conn.store_paused || self.park_if_store_behind(i) {
            return;
        }
        let Some(conn) = self.conns.get_mut(i) else { return };
        if conn.closing {
            if conn.fin_sent {
                conn.drain_input();
            }
            return;
        }
        if conn.is_ws() {
            self.read_ws(i, now);
        } else {
            self.read_http(i, now);
        }
    }

    fn read_http(&mut self, i: usize, now: Now) {
        let max_buffered = self.limits.max_head_bytes + self.limits.max_body_bytes + 4096;
        let mut chunk = [0u8; 16 * 1024];
        let Some(conn) = self.conns.get_mut(i) else { return };
        let Phase::Http(reader) = &mut conn.phase else { return };
        let mut eof = false;
        while reader.buffered() < max_buffered {
            match conn.sock.read(&mut chunk) {
                Ok(0) => {
                    eof = true;
                    break;
                }
                Ok(n) => {
                    reader.push(&chunk[..n]);
                    self.bytes_in += n as u64;
                    conn.last_read = now.mono;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => {
                    conn.dead = true;
                    return;
                }
            }
        }
        let full = reader.buffered() >= max_buffered;
        self.process_http(i, now);
        let resume = self.conns.get(i).is_some_and(|c| !c.http_paused && !c.closing);
        if full && resume && !self.again.contains(&i) {
            // Read the rest when this buffer has been consumed. A paused
            // connection is resumed by `flush_dirty` once its client reads;
            // queueing it here would spin the loop until then.
            self.again.push(i);
        }
        if eof {
            if let Some(conn) = self.conns.get_mut(i) {
                if conn.awaiting.is_empty() && conn.queued() == 0 {
                    conn.dead = true;
                } else {
                    conn.closing = true;
                }
            }
        }
    }

    /// Frames and dispatches every complete request buffered on connection `i`.
    /// Pipelined requests are bounded per iteration (fairness) and parsing
    /// pauses while the client leaves more than `--max-outbound-bytes` of
    /// answers unread (backpressure instead of unbounded memory).
    fn process_http(&mut self, i: usize, now: Now) {
        let mut handled = 0;
        loop {
            let Some(conn) = self.conns.get_mut(i) else { return };
            if conn.closing
                || conn.deferred_upgrade.is_some()
                || conn.final_response.is_some()
                || conn.poll_parked.is_some()
            {
                return;
            }
            if conn.queued() > self.limits.max_outbound_bytes {
                conn.http_paused = true;
                return;
            }
            if handled >= self.limits.max_events_per_read {
                self.again.push(i);
                return;
            }
            handled += 1;
            let Phase::Http(reader) = &mut conn.phase else { return };
            match reader.next_request(self.limits.max_head_bytes, self.limits.max_body_bytes) {
                Ok(Some(req)) => {
                    conn.head_started = None;
                    // Upgrades and Socket.IO's long-polling are answered by the
                    // shell (`upgrade`), once earlier pipelined answers are out.
                    let polling = is_socketio_path(&req.path) && !req.wants_websocket();
                    if polling || req.wants_websocket() {
                        if !conn.awaiting.is_empty() {
                            conn.deferred_upgrade = Some(Box::new(req));
                            return;
                        }
                        self.upgrade(i, req, now);
                        if polling {
                            continue;
                        }
                        return;
                    }
                    conn.awaiting.push_back(req.keep_alive());
                    let (id, peer) = (conn.id, conn.peer.ip());
                    let writes = self.hub.pending_writes();
                    self.hub.handle_http(id, &req, peer, now);
                    if self.hub.pending_writes() > writes {
                        conn.writer = true;
                        if self.park_if_store_behind(i) {
                            return;
                        }
                    }
                }
                Ok(None) => {
                    if reader.in_progress() && conn.head_started.is_none() {
                        conn.head_started = Some(now.mono);
                    }
                    reader.shrink();
                    return;
                }
                Err(e) => {
                    log::debug!(conn:% = conn.id; "bad request: {e:?}");
                    let mut response = e.response();
                    response.close = true;
                    if conn.awaiting.is_empty() {
                        self.write_response(i, &response, false);
                    } else {
                        conn.final_response = Some(Box::new(response));
                    }
                    return;
                }
            }
        }
    }

    /// Writes a response the shell itself decided (framing errors, upgrades).
    fn write_response(&mut self, i: usize, response: &Response, keep_alive: bool) {
        let Some(conn) = self.conns.get_mut(i) else { return };
        response.encode(keep_alive, &mut conn.out);
        if !keep_alive || response.close {
            conn.closing = true;
        }
        account(&mut self.out_total, conn);
        self.mark_dirty(i);
    }

    /// A WebSocket upgrade, or a Socket.IO long-polling request: both are
    /// answered by the shell rather than the core's REST handlers.
    fn upgrade(&mut self, i: usize, req: Request, now: Now) {
        if self.echo_path.as_deref() == Some(req.path.as_str()) {
            return self.upgrade_echo(i, req, now);
        }
        if is_socketio_path(&req.path) {
            return if req.wants_websocket() { self.sio_upgrade(i, req, now) } else { self.sio_http(i, req, now) };
        }
        if pusher::app_key_of(&req.path).is_some() {
            return self.pusher_upgrade(i, req, now);
        }
        if req.path != "/" && req.path != "/ws" {
            let response = Response::error(404, "not_found", "WebSocket endpoints are /, /ws and /app/{appKey}");
            return self.write_response(i, &response, false);
        }
        let accept = match http::check_upgrade(&req) {
            Ok(accept) => accept,
            Err(response) => return self.write_response(i, &response, false),
        };
        let session = match self.hub.authorize_ws(&req, now) {
            Ok(session) => session,
            Err(response) => return self.write_response(i, &response, false),
        };
        let Some(id) = self.become_websocket(i, &accept, false, now) else { return };
        self.hub.handle_ws_open(id, session, now);
        self.read_ws(i, now);
    }

    /// `--echo-path`: completes the handshake without the hub.
    fn upgrade_echo(&mut self, i: usize, req: Request, now: Now) {
        let accept = match http::check_upgrade(&req) {
            Ok(accept) => accept,
            Err(response) => return self.write_response(i, &response, false),
        };
        if let Some(id) = self.become_websocket(i, &accept, true, now) {
            log::debug!(conn:% = id; "echo connection");
            self.read_ws(i, now);
        }
    }

    /// Answers 101 and turns connection `i` into a WebSocket, handing
    /// tungstenite the bytes that came after the request head. Frames may
    /// arrive with the handshake, so the fragment counter sees those bytes
    /// too; when they already break the cap the connection closes 1009 and
    /// `None` is returned.
    fn become_websocket(&mut self, i: usize, accept: &str, echo: bool, now: Now) -> Option<ConnId> {
        let conn = self.conns.get_mut(i)?;
        http::switching_protocols(accept).encode(true, &mut conn.out);
        conn.frames_from = conn.out.len();
        let Phase::Http(reader) = &mut conn.phase else { return None };
        let rest = reader.take_rest();
        let mut fragments = conn::FragmentScan::new(self.limits.max_fragments);
        let over_cap = fragments.feed(&rest).is_err();
        let context = WebSocketContext::from_partially_read(rest, Role::Server, Some(self.ws_config));
        conn.phase = Phase::Ws(Box::new(context));
        conn.fragments = fragments;
        conn.echo = echo;
        conn.last_read = now.mono;
        let id = conn.id;
        if over_cap {
            log::warn!(conn:% = id; "closed 1009: too many fragments");
            close_ws(conn, 1009, "too many fragments", &mut self.bytes_in);
            self.hub.record_disconnect(Disconnect::TooLarge);
            self.touched.push(i);
        }
        self.mark_dirty(i);
        (!over_cap).then_some(id)
    }

    fn read_ws(&mut self, i: usize, now: Now) {
        let cap = self.limits.max_events_per_read;
        let mut handled = 0;
        let out_len_before = self.conns.get(i).map_or(0, |c| c.out.len());
        loop {
            let Some(conn) = self.conns.get_mut(i) else { return };
            if conn.closing || conn.dead {
                break;
            }
            if handled >= cap {
                self.again.push(i);
                break;
            }
            let id = conn.id;
            let Phase::Ws(ctx) = &mut conn.phase else { return };
            let mut io = WsIo {
                sock: &mut conn.sock,
                out: &mut conn.out,
                bytes_in: &mut self.bytes_in,
                scan: Some(&mut conn.fragments),
            };
            match ctx.read(&mut io) {
                Ok(message) => {
                    conn.last_read = now.mono;
                    conn.ping_sent = false;
                    if conn.echo {
                        handled += 1;
                        if matches!(message, Message::Text(_) | Message::Binary(_)) {
                            let mut io = WsIo {
                                sock: &mut conn.sock,
                                out: &mut conn.out,
                                bytes_in: &mut self.bytes_in,
                                scan: None,
                            };
                            let _ = ctx.write(&mut io, message);
                        }
                        continue;
                    }
                    match message {
                        Message::Text(text) if conn.sio.is_some() => {
                            handled += 1;
                            let ix = conn.sio.unwrap_or_default();
                            let writes = self.hub.pending_writes();
                            self.sio_ws_text(i, ix, text.as_str(), now);
                            if self.hub.pending_writes() > writes {
                                if let Some(conn) = self.conns.get_mut(i) {
                                    conn.writer = true;
                                }
                                if self.park_if_store_behind(i) {
                                    break;
                                }
                            }
                        }
                        Message::Binary(data) if conn.sio.is_some() => {
                            handled += 1;
                            let ix = conn.sio.unwrap_or_default();
                            self.sio_ws_binary(i, ix, data.to_vec(), now);
                        }
                        Message::Text(text) if conn.pusher.is_some() => {
                            handled += 1;
                            self.pusher_text(i, id, text.as_str(), now);
                        }
                        Message::Text(text) => {
                            handled += 1;
                            log::trace!(conn:% = id; "text {} bytes", text.len());
                            let writes = self.hub.pending_writes();
                            self.hub.handle_ws_text(id, text.as_str(), now);
                            if self.hub.pending_writes() > writes {
                                conn.writer = true;
                                if self.park_if_store_behind(i) {
                                    break;
                                }
                            }
                        }
                        Message::Binary(_) => {
                            handled += 1;
                            self.hub.handle_ws_binary(id, now);
                        }
                        Message::Close(_) => log::debug!(conn:% = id; "peer sent close"),
                        // Control frames cost a read too: they count toward
                        // the per-read cap so a ping flood cannot hog the loop.
                        Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => handled += 1,
                    }
                }
                Err(WsError::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(WsError::Io(e)) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(WsError::ConnectionClosed) | Err(WsError::AlreadyClosed) => {
                    conn.closing = true;
                    break;
                }
                Err(e) if close_for(&e).is_some() => {
                    if let Some((code, reason, why)) = close_for(&e) {
                        if code == 1009 {
                            log::warn!(conn:% = id; "closed {code}: {e}");
                        } else {
                            log::debug!(conn:% = id; "closed {code}: {e}");
                        }
                        self.hub.record_disconnect(why);
                        close_ws(conn, code, reason, &mut self.bytes_in);
                    }
                    break;
                }
                Err(e) => {
                    log::debug!(conn:% = id; "read failed: {e}");
                    conn.dead = true;
                    break;
                }
            }
        }
        let Some(conn) = self.conns.get(i) else { return };
        let grew = conn.out.len() > out_len_before;
        if grew && conn.queued() > self.limits.max_outbound_bytes && !conn.dead && !conn.closing {
            // tungstenite queued pongs past the limit: a peer that pings
            // without reading is a slow consumer like any other.
            self.drop_slow_consumer(i, now);
        } else if conn.queued() > 0 {
            self.mark_dirty(i);
        }
    }

    /// Applies one core output to its connection.
    fn deliver(&mut self, output: Output, now: Now) {
        match output {
            Output::Frame { to, .. } | Output::Done { to, .. } | Output::Close { to, .. }
                if socketio::is_session(to) =>
            {
                self.sio_deliver(output, now)
            }
            Output::Frame { to, .. } | Output::Done { to, .. } if self.is_pusher(to) => {
                self.pusher_deliver(output, now)
            }
            Output::Frame { to, wire } => self.enqueue(to, &wire, now),
            // Native clients are not told when a request is done.
            Output::Done { .. } => {}
            Output::RoomScoped { to, wire } => {
                let sessions: Vec<ConnId> = to.into_iter().filter(|&id| socketio::is_session(id)).collect();
                if !sessions.is_empty() {
                    self.sio_broadcast(&sessions, &wire, false, now);
                }
            }
            Output::Relay { to, wire } => {
                let pushers: Vec<ConnId> = to.into_iter().filter(|&id| self.is_pusher(id)).collect();
                if !pushers.is_empty() {
                    self.pusher_broadcast(&pushers, &wire, now);
                }
            }
            Output::Broadcast { to, wire } => {
                // Each dialect present gets one translation, framed once.
                let (mut sessions, mut pushers) = (Vec::new(), Vec::new());
                for id in to {
                    if socketio::is_session(id) {
                        sessions.push(id);
                    } else if self.is_pusher(id) {
                        pushers.push(id);
                    } else {
                        self.enqueue(id, &wire, now);
                    }
                }
                if !sessions.is_empty() {
                    self.sio_broadcast(&sessions, &wire, true, now);
                }
                if !pushers.is_empty() {
                    self.pusher_broadcast(&pushers, &wire, now);
                }
            }
            Output::Response { to, response } => {
                let Some(conn) = live(&mut self.conns, to) else { return };
                let i = to.index();
                let keep_alive = conn.awaiting.pop_front().unwrap_or(false) && self.shutdown_deadline.is_none();
                self.write_response(i, &response, keep_alive);
                if self.out_total > self.limits.max_outbound_total_bytes {
                    self.shed_outbound(0, now);
                }
                let Some(conn) = self.conns.get_mut(i) else { return };
                if conn.awaiting.is_empty() {
                    if let Some(final_response) = conn.final_response.take() {
                        self.write_response(i, &final_response, false);
                    } else if !conn.closing {
                        if let Some(req) = conn.deferred_upgrade.take() {
                            self.upgrade(i, *req, now);
                        }
                    }
                }
            }
            Output::Outbound(call) => self.start_outbound(call, now),
            Output::Close { to, code, reason } => {
                let code = if self.is_pusher(to) { Server::pusher_close_code(code) } else { code };
                let Some(conn) = live(&mut self.conns, to) else { return };
                close_ws(conn, code, reason, &mut self.bytes_in);
                self.touched.push(to.index());
                self.mark_dirty(to.index());
            }
        }
    }

    /// Appends a frame to a WebSocket's queue, enforcing the slow-consumer
    /// limit. The limit bounds a backlog: one frame into an empty queue is
    /// always taken, however large.
    fn enqueue(&mut self, id: ConnId, wire: &[u8], now: Now) {
        let limit = self.limits.max_outbound_bytes;
        let Some(conn) = live(&mut self.conns, id) else { return };
        if conn.closing || !conn.is_ws() {
            return;
        }
        if conn.queued() > 0 && conn.queued() + wire.len() > limit {
            self.drop_slow_consumer(id.index(), now);
            return;
        }
        if self.out_total + wire.len() > self.limits.max_outbound_total_bytes {
            self.shed_outbound(wire.len(), now);
        }
        // The budget may have cut this very connection.
        let Some(conn) = live(&mut self.conns, id).filter(|c| !c.closing) else { return };
        conn.out.extend_from_slice(wire);
        let conn = account(&mut self.out_total, conn);
        if !conn.dirty {
            conn.dirty = true;
            self.dirty.push(id.index());
        }
    }

    /// Keeps all queued output within `--max-outbound-total-bytes` with room
    /// for `incoming` more bytes: closes the connection holding the most
    /// unread bytes, then the next, until it fits. A reader that keeps up
    /// holds almost nothing and is the last candidate; when no queue holds
    /// anything, the bytes are taken anyway (one frame into an empty queue
    /// always is, as for the per-connection limit).
    fn shed_outbound(&mut self, incoming: usize, now: Now) {
        let budget = self.limits.max_outbound_total_bytes;
        while self.out_total + incoming > budget {
            // A scan of every connection per cut: cuts are rare and each
            // frees a whole backlog, so this stays cheap next to the traffic
            // that filled the budget.
            let victim = self
                .conns
                .iter()
                .filter(|(_, c)| !c.dead && !c.budget_cut && c.queued() > 0)
                .max_by_key(|(_, c)| c.queued())
                .map(|(i, _)| i);
            let Some(i) = victim else { return };
            self.cut_for_budget(i, now);
        }
    }

    /// Closes connection `i` to bring queued output back under the budget. A
    /// WebSocket loses the frames it has not started to receive at once and
    /// gets close 1008 "slow consumer" through the lingering close, so a
    /// client that reads again learns why; anything else (HTTP answers, a
    /// connection already closing) is dropped.
    fn cut_for_budget(&mut self, i: usize, now: Now) {
        let Some(conn) = self.conns.get_mut(i) else { return };
        log::warn!(
            conn:% = conn.id, peer:% = conn.peer;
            "closed 1008: outbound budget ({} bytes queued here, {} in all)", conn.queued(), self.out_total
        );
        self.hub.record_disconnect(Disconnect::OutboundBudget);
        conn.budget_cut = true;
        if conn.is_ws() && !conn.closing {
            conn.release_unsent();
            close_ws(conn, 1008, "slow consumer", &mut self.bytes_in);
            self.bytes_out += conn.flush(now.mono);
        } else {
            conn.out = Vec::new();
            conn.out_pos = 0;
            conn.dead = true;
        }
        account(&mut self.out_total, conn);
        self.touched.push(i);
        self.mark_dirty(i);
    }

    /// Closes a WebSocket whose client does not read: 1008 "slow consumer".
    /// The frames it never started to receive are dropped, then one attempt
    /// is made to deliver the close frame before its memory goes: a peer
    /// that does not read gets no more time.
    fn drop_slow_consumer(&mut self, i: usize, now: Now) {
        let Some(conn) = self.conns.get_mut(i) else { return };
        log::warn!(conn:% = conn.id, peer:% = conn.peer; "closed 1008: slow consumer ({} bytes queued)", conn.queued());
        self.hub.record_disconnect(Disconnect::SlowConsumer);
        conn.drop_unsent_frames();
        close_ws(conn, 1008, "slow consumer", &mut self.bytes_in);
        self.bytes_out += conn.flush(now.mono);
        conn.dead = true;
        account(&mut self.out_total, conn);
        self.touched.push(i);
    }

    /// Checks idle, slow-header and ping deadlines on every connection.
    fn sweep(&mut self, now: Now) {
        let limits = &self.limits;
        let mut touched = Vec::new();
        for (i, conn) in self.conns.iter_mut() {
            if conn.closing {
                let deadline = *conn.close_deadline.get_or_insert(now.mono + conn::LINGER);
                if now.mono >= deadline {
                    conn.dead = true;
                }
            }
            if conn.dead || conn.closing {
                continue;
            }
            let idle = now.mono.saturating_duration_since(conn.last_read);
            match &mut conn.phase {
                Phase::Http(reader) => {
                    let slow_head = conn
                        .head_started
                        .is_some_and(|t| now.mono.saturating_duration_since(t) > limits.header_timeout);
                    let idle_out = !reader.in_progress() && conn.awaiting.is_empty() && idle > limits.http_idle_timeout;
                    // Answers queued that the client has not taken for the
                    // idle timeout (a pipeliner that stopped reading): its
                    // buffers would otherwise be held forever.
                    let stalled = conn.queued() > 0
                        && now.mono.saturating_duration_since(conn.last_write) > limits.http_idle_timeout;
                    if slow_head || idle_out || stalled {
                        let why = if slow_head {
                            "request too slow"
                        } else if stalled {
                            "answers not read"
                        } else {
                            "idle"
                        };
                        log::debug!(conn:% = conn.id; "closed: {why}");
                        if slow_head {
                            self.hub.record_disconnect(Disconnect::SlowHeader);
                        } else if stalled {
                            self.hub.record_disconnect(Disconnect::SlowConsumer);
                        }
                        conn.dead = true;
                    }
                }
                Phase::Ws(ctx) => {
                    if idle > limits.ws_idle_timeout {
                        log::debug!(conn:% = conn.id; "closed: idle for {idle:?}");
                        self.hub.record_disconnect(Disconnect::Idle);
                        // Pusher clients reconnect at once on 4201.
                        let (code, reason) = if conn.pusher.is_some() {
                            (4201, "Pong reply not received")
                        } else {
                            (1000, "idle timeout")
                        };
                        close_ws(conn, code, reason, &mut self.bytes_in);
                        touched.push(i);
                    } else if idle > limits.ws_idle_timeout / 2 && !conn.ping_sent {
                        // A Pusher client is pinged in its own protocol: WebSocket
                        // libraries answer frame pings by themselves, whether
                        // the application still listens or not.
                        let ping = if conn.pusher.is_some() {
                            Message::text(crate::dialect::pusher::message("pusher:ping", None, "{}"))
                        } else {
                            Message::Ping(Default::default())
                        };
                        let mut io =
                            WsIo { sock: &mut conn.sock, out: &mut conn.out, bytes_in: &mut self.bytes_in, scan: None };
                        if ctx.write(&mut io, ping).is_ok() {
                            conn.ping_sent = true;
                            touched.push(i);
                        }
                    }
                }
            }
        }
        for (i, conn) in self.conns.iter() {
            if conn.dead || conn.closing {
                self.touched.push(i);
            }
        }
        for i in touched {
            self.mark_dirty(i);
        }
    }
}

/// Engine.IO's endpoint (socket.io-client asks for `/socket.io/`).
fn is_socketio_path(path: &str) -> bool {
    path == "/socket.io/" || path == "/socket.io"
}

/// How a read error ends a WebSocket: close code, reason and metric label;
/// `None` for errors that leave nothing to say (the socket is gone).
fn close_for(err: &WsError) -> Option<(u16, &'static str, Disconnect)> {
    match err {
        // Raised by the fragment counter in the read adapter.
        WsError::Io(e) if e.kind() == io::ErrorKind::InvalidData => {
            Some((1009, "too many fragments", Disconnect::TooLarge))
        }
        WsError::Capacity(_) => Some((1009, "message too large", Disconnect::TooLarge)),
        WsError::Utf8(_) => Some((1007, "invalid UTF-8", Disconnect::Protocol)),
        // EOF without a close frame: the peer went away, nothing to answer.
        WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake) => None,
        WsError::Protocol(_) => Some((1002, "protocol error", Disconnect::Protocol)),
        _ => None,
    }
}

/// Brings `total` (all queued output) up to date with `conn`'s queue; returns
/// the connection for chaining.
fn account<'a>(total: &mut usize, conn: &'a mut Conn) -> &'a mut Conn {
    *total = *total - conn.accounted + conn.out.len();
    conn.accounted = conn.out.len();
    conn
}

/// The connection `id` names, if it is still that connection and open.
fn live(conns: &mut Slab<Conn>, id: ConnId) -> Option<&mut Conn> {
    conns.get_mut(id.index()).filter(|c| c.id == id && !c.dead)
}

/// Queues a close frame on a WebSocket and stops reading from it.
fn close_ws(conn: &mut Conn, code: u16, reason: &'static str, bytes_in: &mut u64) {
    if let Phase::Ws(ctx) = &mut conn.phase {
        let frame = CloseFrame { code: CloseCode::from(code), reason: reason.into() };
        let mut io = WsIo { sock: &mut conn.sock, out: &mut conn.out, bytes_in, scan: None };
        let _ = ctx.close(&mut io, Some(frame));
    }
    conn.closing = true;
}
