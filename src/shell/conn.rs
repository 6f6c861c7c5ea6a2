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
    /// WebSocket only: where in `out` whole server frames begin (after the
    /// 101 answer). Frame boundaries are found by walking headers from here,
    /// only when the queue is cut (slow consumer, compaction), never per frame.
    pub frames_from: usize,
    /// Last time the socket took bytes from `out` (or the connection opened).
    pub last_write: Instant,
    /// Last time the peer sent anything.
    pub last_read: Instant,
    /// When the current unfinished request head started to arrive.
    pub head_started: Option<Instant>,
    /// Keep-alive flag of each request still waiting for its response, in order.
    pub awaiting: VecDeque<bool>,
    /// An upgrade that must wait until earlier pipelined responses are out.
    pub deferred_upgrade: Option<Box<Request>>,
    /// A framing error answered once earlier responses are out; then close.
    pub final_response: Option<Box<Response>>,
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
    /// Request parsing waits until this client reads its queued responses.
    pub http_paused: bool,
    /// The client has written to the store (published, edited, …): it is
    /// among those not read while the store falls behind.
    pub writer: bool,
    /// Not read until the store catches up (on the loop's paused list).
    pub store_paused: bool,
    /// Fragments of the client's message in progress (WebSocket only).
    pub fragments: FragmentScan,
    /// `out.len()` as last added to the server's total of queued output.
    pub accounted: usize,
    /// Already closed to bring queued output under the global budget.
    pub budget_cut: bool,
    /// WebSocket only: the Socket.IO session this socket carries or probes
    /// (its index in the server's sessions).
    pub sio: Option<usize>,
    /// A Socket.IO long-poll waiting here for packets; nothing more is read
    /// from the connection until it is answered.
    pub poll_parked: Option<Box<crate::http::Request>>,
    /// A Pusher connection (`/app/{key}`): its dialect state.
    pub pusher: Option<Box<super::pusher::PusherConn>>,
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
            frames_from: 0,
            last_write: now,
            last_read: now,
            // A new connection must start its first request within the
            // header timeout; one that never sends anything is closed then.
            head_started: Some(now),
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
            http_paused: false,
            writer: false,
            store_paused: false,
            fragments: FragmentScan::default(),
            accounted: 0,
            budget_cut: false,
            sio: None,
            poll_parked: None,
            pusher: None,
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

    /// The last WebSocket frame boundary at or before `pos` (0 when frames
    /// have not started by then).
    fn frame_start_at_or_before(&self, pos: usize) -> usize {
        if self.frames_from > pos {
            return 0;
        }
        let mut start = self.frames_from;
        while let Some(end) = frame_end(&self.out, start).filter(|&end| end <= pos) {
            start = end;
        }
        start
    }

    /// Drops every queued WebSocket frame the peer has not started to
    /// receive, keeping the one in progress whole, so a close frame queued
    /// next lands on a frame boundary.
    pub fn drop_unsent_frames(&mut self) {
        let mut keep = self.frames_from.max(self.out_pos);
        if self.frames_from < self.out_pos {
            keep = self.frame_start_at_or_before(self.out_pos);
            if keep < self.out_pos {
                keep = frame_end(&self.out, keep).unwrap_or(self.out.len());
            }
        }
        self.out.truncate(keep);
    }

    /// Drops every frame the peer has not started to receive (as
    /// [`Conn::drop_unsent_frames`]) and gives their memory back at once: what
    /// stays is the rest of the frame in progress, and a close frame queued
    /// next starts a whole frame.
    pub fn release_unsent(&mut self) {
        self.drop_unsent_frames();
        self.out.drain(..self.out_pos);
        self.out_pos = 0;
        // Whatever is left ends a frame (or the 101 answer): the next one starts after it.
        self.frames_from = self.out.len();
        self.out.shrink_to_fit();
    }

    /// Writes as much of the queue as the socket takes (`now` records the
    /// progress). Returns bytes written; marks the connection dead on a
    /// socket error.
    pub fn flush(&mut self, now: Instant) -> u64 {
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
                    self.last_write = now;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    log::debug!(conn:% = self.id; "write failed: {e}");
                    self.dead = true;
                    break;
                }
            }
        }
        if self.out_pos == self.out.len() {
            self.out.clear();
            self.out_pos = 0;
            self.frames_from = 0;
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
            // Compact, keeping a WebSocket's frame in progress whole so its
            // boundaries can still be found from `frames_from`.
            let cut = if self.is_ws() { self.frame_start_at_or_before(self.out_pos) } else { self.out_pos };
            self.out.drain(..cut);
            self.out_pos -= cut;
            self.frames_from = self.frames_from.saturating_sub(cut);
        }
        written
    }
}

/// Where the server frame that starts at `at` ends, if its header is in
/// `buf`. Server frames are unmasked; the mask bit is honoured anyway.
fn frame_end(buf: &[u8], at: usize) -> Option<usize> {
    let head = buf.get(at..)?;
    let len7 = *head.get(1)? & 0x7f;
    let (ext, len) = match len7 {
        126 => (2, u16::from_be_bytes(head.get(2..4)?.try_into().ok()?) as usize),
        127 => (8, usize::try_from(u64::from_be_bytes(head.get(2..10)?.try_into().ok()?)).ok()?),
        n => (0, n as usize),
    };
    let mask = if head[1] & 0x80 != 0 { 4 } else { 0 };
    Some(at + 2 + ext + mask + len)
}

/// The stream tungstenite sees: reads come from the socket, writes land in
/// the connection's output queue (never blocking; the queue is bounded by the
/// slow-consumer limit the loop enforces).
pub struct WsIo<'a> {
    pub sock: &'a mut TcpStream,
    pub out: &'a mut Vec<u8>,
    pub bytes_in: &'a mut u64,
    /// Counts fragments per message on the bytes read, when given.
    pub scan: Option<&'a mut FragmentScan>,
}

impl Read for WsIo<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.sock.read(buf)?;
        *self.bytes_in += n as u64;
        if let Some(scan) = self.scan.as_deref_mut() {
            scan.feed(&buf[..n])?;
        }
        Ok(n)
    }
}

/// Follows client frame headers in the raw byte stream to count the
/// fragments of the message in progress: tungstenite bounds a message's size
/// but not how many (possibly empty) frames it is split into.
#[derive(Debug, Default)]
pub struct FragmentScan {
    /// Most frames one message may have (0 = no limit).
    pub max_fragments: u32,
    header: [u8; 14],
    have: usize,
    payload_left: u64,
    fragments: u32,
}

impl FragmentScan {
    /// A scanner allowing `max_fragments` frames per message.
    pub fn new(max_fragments: u32) -> FragmentScan {
        FragmentScan { max_fragments, ..FragmentScan::default() }
    }

    /// Consumes bytes read from the client; an `InvalidData` error when a
    /// message has more fragments than allowed (the loop closes 1009).
    pub fn feed(&mut self, mut bytes: &[u8]) -> io::Result<()> {
        while !bytes.is_empty() {
            if self.payload_left > 0 {
                let skip = (self.payload_left.min(bytes.len() as u64)) as usize;
                self.payload_left -= skip as u64;
                bytes = &bytes[skip..];
                continue;
            }
            self.header[self.have] = bytes[0];
            self.have += 1;
            bytes = &bytes[1..];
            if self.have < 2 {
                continue;
            }
            let len7 = self.header[1] & 0x7f;
            let ext = match len7 {
                126 => 2,
                127 => 8,
                _ => 0,
            };
            let mask = if self.header[1] & 0x80 != 0 { 4 } else { 0 };
            if self.have < 2 + ext + mask {
                continue;
            }
            self.payload_left = match ext {
                2 => u16::from_be_bytes([self.header[2], self.header[3]]) as u64,
                8 => u64::from_be_bytes(self.header[2..10].try_into().unwrap_or([0; 8])),
                _ => len7 as u64,
            };
            let (fin, opcode) = (self.header[0] & 0x80 != 0, self.header[0] & 0x0f);
            self.have = 0;
            match opcode {
                1 | 2 => self.fragments = if fin { 0 } else { 1 },
                0 => {
                    self.fragments += 1;
                    if self.max_fragments > 0 && self.fragments > self.max_fragments {
                        return Err(io::Error::new(io::ErrorKind::InvalidData, "too many fragments"));
                    }
                    if fin {
                        self.fragments = 0;
                    }
                }
                _ => {}
            }
        }
        Ok(())
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

#[cfg(test)]
mod tests {
    use super::{frame_end, Conn, FragmentScan};
    use crate::core::ConnId;
    use std::time::Instant;

    /// An unmasked server text frame with `n` payload bytes.
    fn server_frame(n: usize) -> Vec<u8> {
        let mut f = vec![0x81];
        if n < 126 {
            f.push(n as u8);
        } else if n <= 0xffff {
            f.push(126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        } else {
            f.push(127);
            f.extend_from_slice(&(n as u64).to_be_bytes());
        }
        f.extend(std::iter::repeat_n(b'x', n));
        f
    }

    /// A connection over a real loopback socket (never written to here).
    fn conn() -> (Conn, std::net::TcpStream) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, peer) = listener.accept().unwrap();
        let sock = mio::net::TcpStream::from_std(server);
        (Conn::new(sock, ConnId::new(0, 1), peer, Instant::now()), client)
    }

    #[test]
    fn frame_ends_follow_each_length_form() {
        let mut buf = b"HTTP/1.1 101\r\n\r\n".to_vec();
        let start = buf.len();
        let sizes = [0, 125, 126, 70_000];
        for n in sizes {
            buf.extend(server_frame(n));
        }
        let mut at = start;
        for n in sizes {
            let end = frame_end(&buf, at).unwrap();
            assert_eq!(end - at, server_frame(n).len());
            at = end;
        }
        assert_eq!(at, buf.len());
        assert_eq!(frame_end(&buf, buf.len()), None);
        assert_eq!(frame_end(&buf[..start + 1], start), None, "a header cut short");
    }

    #[test]
    fn dropping_unsent_frames_keeps_the_frame_in_progress_whole() {
        let (mut c, _client) = conn();
        let head = b"HTTP/1.1 101 Switching Protocols\r\n\r\n".to_vec();
        let frames = [server_frame(10), server_frame(300), server_frame(20)];
        let build = |c: &mut Conn| {
            c.out = head.clone();
            c.frames_from = c.out.len();
            for f in &frames {
                c.out.extend_from_slice(f);
            }
        };
        let first_end = head.len() + frames[0].len();
        let second_end = first_end + frames[1].len();
        // Partway through the second frame: it is finished, the third dropped.
        build(&mut c);
        c.out_pos = first_end + 5;
        c.drop_unsent_frames();
        assert_eq!(c.out.len(), second_end);
        // Exactly on a boundary: nothing after it is kept.
        build(&mut c);
        c.out_pos = first_end;
        c.drop_unsent_frames();
        assert_eq!(c.out.len(), first_end);
        // The 101 itself not yet sent: it stays, every frame goes.
        build(&mut c);
        c.out_pos = 3;
        c.drop_unsent_frames();
        assert_eq!(c.out, head);
    }

    #[test]
    fn releasing_unsent_frames_keeps_the_frame_in_progress_and_frees_the_rest() {
        let (mut c, _client) = conn();
        c.out = b"HTTP/1.1 101 Switching Protocols\r\n\r\n".to_vec();
        c.frames_from = c.out.len();
        let first = server_frame(300);
        for f in [&first, &server_frame(100_000), &server_frame(10)] {
            c.out.extend_from_slice(f);
        }
        c.out_pos = c.frames_from + 5;
        c.release_unsent();
        assert_eq!(c.out, first[5..], "the rest of the frame in progress, nothing after it");
        assert_eq!((c.out_pos, c.frames_from), (0, c.out.len()));
        assert!(c.out.capacity() < 100_000, "the dropped frames' memory is given back");
    }

    fn frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mut f = vec![(fin as u8) << 7 | opcode, 0x80 | payload.len() as u8, 1, 2, 3, 4];
        f.extend_from_slice(payload);
        f
    }

    #[test]
    fn counts_fragments_across_reads_of_any_size() {
        let mut stream = frame(false, 1, b"ab");
        for _ in 0..3 {
            stream.extend(frame(false, 0, b""));
        }
        stream.extend(frame(true, 0, b"z"));
        stream.extend(frame(true, 9, b"ping"));
        // 5 fragments: allowed with a cap of 5, byte by byte too.
        let mut scan = FragmentScan::new(5);
        for b in &stream {
            scan.feed(&[*b]).unwrap();
        }
        let mut scan = FragmentScan::new(4);
        assert!(scan.feed(&stream).is_err());
    }
}
