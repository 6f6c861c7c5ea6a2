//! One TCP connection's I/O state: the HTTP request reader or the WebSocket
//! context, and the single ordered output queue both write into.
//!
//! tungstenite works on a stream adapter ([`WsIo`]) that reads from the socket
//! and appends what it writes (pongs, close frames) to the same output queue
//! as the hub's pre-framed messages, so frame order is preserved and the
//! queue is flushed with one `write` per loop iteration.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use tungstenite::protocol::WebSocketContext;

use crate::core::ConnId;
use crate::http::{Request, RequestReader, Response};

/// How long a closing connection's input is drained before the socket is dropped.
pub const LINGER: Duration = Duration::from_secs(2);

/// What the connection speaks now.
pub enum Phase {
    /// HTTP/1.1 requests (REST, or an upgrade to come).
    Http(RequestReader),
    /// An upgraded WebSocket.
    Ws(Box<WebSocketContext>),
}

/// A connection in the loop's slab.
pub struct Conn {
    pub sock: TcpStream,
    pub id: ConnId,
    pub peer: SocketAddr,
    pub phase: Phase,
    /// Bytes waiting for the socket; `out_pos` of them already written.
    pub out: Vec<u8>,
    pub out_pos: usize,
    /// Last time the peer sent anything.
    pub last_read: Instant,
    /// When the current unfinished request head started to arrive.
    pub head_started: Option<Instant>,
    /// Keep-alive flag of each request still waiting for its response, in order.
    pub awaiting: VecDeque<bool>,
    /// An upgrade that must wait until earlier pipelined responses are out.
    pub deferred_upgrade: Option<Request>,
    /// A framing error answered once earlier responses are out; then close.
    pub final_response: Option<Response>,
    /// Ping sent for idleness and not yet answered by any traffic.
    pub ping_sent: bool,
    /// No more input is processed; once `out` is flushed the write side is
    /// shut (FIN) and input is drained until EOF or `linger_until`.
    pub closing: bool,
    /// The write side was shut; input is being drained.
    pub fin_sent: bool,
    /// When a closing connection is dropped whatever its state (set by the
    /// sweep): bounds both a flush that never finishes and the drain.
    pub close_deadline: Option<Instant>,
    /// The hub has been told this WebSocket is gone.
    pub hub_notified: bool,
    /// Remove at the end of the iteration.
    pub dead: bool,
    /// Already on the iteration's flush list.
    pub dirty: bool,
    /// A diagnostic echo connection (`--echo-path`): messages go back to it,
    /// not to the hub.
    pub echo: bool,
}

impl Conn {
    /// A fresh HTTP connection.
    pub fn new(sock: TcpStream, id: ConnId, peer: SocketAddr, now: Instant) -> Conn {
        Conn {
            sock,
            id,
            peer,
            phase: Phase::Http(RequestReader::default()),
            out: Vec::new(),
            out_pos: 0,
            last_read: now,
            head_started: None,
            awaiting: VecDeque::new(),
            deferred_upgrade: None,
            final_response: None,
            ping_sent: false,
            closing: false,
            fin_sent: false,
            close_deadline: None,
            hub_notified: false,
            dead: false,
            dirty: false,
            echo: false,
        }
    }

    /// Bytes queued and not yet written.
    pub fn queued(&self) -> usize {
        self.out.len() - self.out_pos
    }

    /// True once upgraded.
    pub fn is_ws(&self) -> bool {
        matches!(self.phase, Phase::Ws(_))
    }

    /// Discards input after the write side was shut; marks the connection
    /// dead at EOF or on error.
    pub fn drain_input(&mut self) {
        let mut sink = [0u8; 4096];
        loop {
            match self.sock.read(&mut sink) {
                Ok(0) => {
                    self.dead = true;
                    return;
                }
                Ok(_) => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => {
                    self.dead = true;
                    return;
                }
            }
        }
    }

    /// Writes as much of the queue as the socket takes. Returns bytes written;
    /// marks the connection dead on a socket error.
    pub fn flush(&mut self) -> u64 {
        let mut written = 0u64;
        while self.out_pos < self.out.len() {
            match self.sock.write(&self.out[self.out_pos..]) {
                Ok(0) => {
                    self.dead = true;
                    break;
                }
                Ok(n) => {
                    self.out_pos += n;
                    written += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    log::debug!("conn={} write failed: {e}", self.id);
                    self.dead = true;
                    break;
                }
            }
        }
        if self.out_pos == self.out.len() {
            self.out.clear();
            self.out_pos = 0;
            // An idle connection should not keep a burst's buffer.
            if self.out.capacity() > 64 * 1024 {
                self.out = Vec::new();
            }
            if self.closing && !self.fin_sent {
                // Half-close and keep reading: closing outright with unread
                // input would make the kernel send RST, which can destroy the
                // close frame or error response before the peer reads it.
                let _ = self.sock.shutdown(std::net::Shutdown::Write);
                self.fin_sent = true;
                self.drain_input();
            }
        } else if self.out_pos > 64 * 1024 && self.out_pos * 2 > self.out.len() {
            self.out.drain(..self.out_pos);
            self.out_pos = 0;
        }
        written
    }
}

/// The stream tungstenite sees: reads come from the socket, writes land in
/// the connection's output queue (never blocking; the queue is bounded by the
/// slow-consumer limit the loop enforces).
pub struct WsIo<'a> {
    pub sock: &'a mut TcpStream,
    pub out: &'a mut Vec<u8>,
    pub bytes_in: &'a mut u64,
}

impl Read for WsIo<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.sock.read(buf)?;
        *self.bytes_in += n as u64;
        Ok(n)
    }
}

impl Write for WsIo<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.out.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
