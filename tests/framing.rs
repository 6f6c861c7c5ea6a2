//! RFC 6455 framing rules, checked natively so CI gates on them (the Autobahn|Testsuite run
//! in `scripts/autobahn` needs Python 2.7 and is not part of CI).
//!
//! The client side is raw TCP: the upgrade is written by hand with the RFC's sample
//! Sec-WebSocket-Key, frames are built and masked here, and the server's frames are parsed
//! byte by byte, so the assertions are on exact wire bytes and close codes. Most tests use the
//! diagnostic echo path (`--echo-path /echo`); a few repeat a rule on the hub's own `/` path
//! to show both share one connection code path. Every read is bounded by a deadline.

mod common;

use common::{pct, Hub};
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// Budget for any one expected frame, EOF or handshake.
const WAIT: Duration = Duration::from_secs(5);
/// The RFC 6455 section 1.3 sample key and the accept value it must produce.
const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
const ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";
/// The masking key from the RFC's section 5.7 examples.
const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

const CONT: u8 = 0x0;
const TEXT: u8 = 0x1;
const BINARY: u8 = 0x2;
const CLOSE: u8 = 0x8;
const PING: u8 = 0x9;
const PONG: u8 = 0xA;

const ECHO: &[&str] = &["--echo-path", "/echo"];

/// Encodes one frame. `rsv` is the three RSV bits (0..=7); `mask` None sends it unmasked.
fn frame_with(fin: bool, rsv: u8, opcode: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
    let mut out = vec![(u8::from(fin) << 7) | (rsv << 4) | opcode];
    let mask_bit = if mask.is_some() { 0x80 } else { 0 };
    match payload.len() {
        n if n <= 125 => out.push(mask_bit | n as u8),
        n if n <= 0xffff => {
            out.push(mask_bit | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(mask_bit | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    match mask {
        Some(key) => {
            out.extend_from_slice(&key);
            out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        }
        None => out.extend_from_slice(payload),
    }
    out
}

/// A masked frame with clear RSV bits, as a conforming client sends it.
fn frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    frame_with(fin, 0, opcode, payload, Some(MASK))
}

/// A close frame payload: the code, big-endian, then the reason.
fn close_payload(code: u16, reason: &[u8]) -> Vec<u8> {
    let mut p = code.to_be_bytes().to_vec();
    p.extend_from_slice(reason);
    p
}

/// A frame received from the server, with its header bytes as sent.
#[derive(Debug)]
struct Frame {
    fin: bool,
    rsv: u8,
    opcode: u8,
    masked: bool,
    header: Vec<u8>,
    payload: Vec<u8>,
}

impl Frame {
    /// The status code of a close frame (None for an empty close payload).
    fn close_code(&self) -> Option<u16> {
        assert_eq!(self.opcode, CLOSE, "expected a close frame, got {}", self.describe());
        match self.payload.len() {
            0 => None,
            1 => panic!("server sent a close frame with a 1-byte payload: {}", self.describe()),
            _ => Some(u16::from_be_bytes([self.payload[0], self.payload[1]])),
        }
    }

    fn describe(&self) -> String {
        let shown = &self.payload[..self.payload.len().min(64)];
        format!(
            "opcode={:#x} fin={} rsv={} masked={} len={} payload[..64]={:?}",
            self.opcode,
            self.fin,
            self.rsv,
            self.masked,
            self.payload.len(),
            String::from_utf8_lossy(shown)
        )
    }
}

/// A hand-rolled WebSocket client connection.
struct Raw {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Raw {
    /// Connects to `path` (with its query) and completes the upgrade, checking the 101 answer.
    fn open(addr: SocketAddr, path: &str) -> Raw {
        let stream = TcpStream::connect_timeout(&addr, WAIT).unwrap_or_else(|e| panic!("connecting to {addr}: {e}"));
        stream.set_nodelay(true).expect("set_nodelay");
        stream.set_write_timeout(Some(WAIT)).expect("set_write_timeout");
        let mut raw = Raw { stream, buf: Vec::new() };
        raw.send(&upgrade_request(addr, path));
        let deadline = Instant::now() + WAIT;
        let end = loop {
            if let Some(i) = raw.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            assert!(raw.fill(deadline, "the 101 response"), "EOF before the upgrade response: {:?}", raw.text());
        };
        let head = String::from_utf8_lossy(&raw.buf[..end]).into_owned();
        raw.buf.drain(..end);
        assert!(head.starts_with("HTTP/1.1 101 "), "upgrade of {path} refused: {head:?}");
        let header = |name: &str| {
            head.split("\r\n")
                .filter_map(|l| l.split_once(':'))
                .find_map(|(k, v)| k.trim().eq_ignore_ascii_case(name).then(|| v.trim().to_string()))
        };
        assert_eq!(header("sec-websocket-accept").as_deref(), Some(ACCEPT), "101 response: {head:?}");
        assert!(header("upgrade").is_some_and(|v| v.eq_ignore_ascii_case("websocket")), "101 response: {head:?}");
        raw
    }

    /// Connects to the echo path.
    fn echo(hub: &Hub) -> Raw {
        Raw::open(hub.addr, "/echo")
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.buf).into_owned()
    }

    fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).unwrap_or_else(|e| panic!("writing {} bytes to the hub: {e}", bytes.len()));
    }

    /// Reads more into `buf`; false on EOF (or reset). Panics at `deadline`.
    fn fill(&mut self, deadline: Instant, what: &str) -> bool {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "timed out waiting for {what}; buffered {} bytes", self.buf.len());
        self.stream.set_read_timeout(Some(left)).expect("set_read_timeout");
        let mut chunk = [0u8; 64 * 1024];
        match self.stream.read(&mut chunk) {
            Ok(0) => false,
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                panic!("timed out after {WAIT:?} waiting for {what}; buffered {} bytes", self.buf.len())
            }
            Err(e) if matches!(e.kind(), ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted) => false,
            Err(e) => panic!("reading {what}: {e}"),
        }
    }

    /// Ensures `n` bytes are buffered, panicking on EOF or at the deadline.
    fn need(&mut self, n: usize, deadline: Instant, what: &str) {
        while self.buf.len() < n {
            assert!(
                self.fill(deadline, what),
                "connection closed while waiting for {what} ({} bytes buffered)",
                self.buf.len()
            );
        }
    }

    /// The next frame from the server, within 5 s.
    fn read_frame(&mut self) -> Frame {
        let deadline = Instant::now() + WAIT;
        let what = "a frame from the server";
        self.need(2, deadline, what);
        let (b0, b1) = (self.buf[0], self.buf[1]);
        let ext = match b1 & 0x7f {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        let mask = if b1 & 0x80 != 0 { 4 } else { 0 };
        self.need(2 + ext + mask, deadline, what);
        let len = match ext {
            2 => u64::from(u16::from_be_bytes([self.buf[2], self.buf[3]])),
            8 => u64::from_be_bytes(self.buf[2..10].try_into().expect("8 length bytes")),
            _ => u64::from(b1 & 0x7f),
        };
        let len = usize::try_from(len).expect("frame length fits usize");
        let head_len = 2 + ext + mask;
        self.need(head_len + len, deadline, what);
        let header: Vec<u8> = self.buf.drain(..head_len).collect();
        let payload: Vec<u8> = self.buf.drain(..len).collect();
        Frame { fin: b0 & 0x80 != 0, rsv: (b0 >> 4) & 7, opcode: b0 & 0x0f, masked: mask != 0, header, payload }
    }

    /// The next frame, which must be a final, unmasked, RSV-clear frame of `opcode`.
    fn expect_frame(&mut self, opcode: u8) -> Frame {
        let f = self.read_frame();
        assert!(
            f.opcode == opcode && f.fin && f.rsv == 0 && !f.masked,
            "expected a final unmasked frame with opcode {opcode:#x}, got {}",
            f.describe()
        );
        f
    }

    /// The next frame must be the echo of `payload` as one frame of `opcode`.
    fn expect_echo(&mut self, opcode: u8, payload: &[u8]) {
        let f = self.expect_frame(opcode);
        assert!(f.payload == payload, "echo differs: sent {} bytes, got {}", payload.len(), f.describe());
    }

    /// The next frame is a close with `code`; then the server closes the TCP connection.
    fn expect_close(&mut self, code: u16) -> Frame {
        let f = self.expect_frame(CLOSE);
        assert_eq!(f.close_code(), Some(code), "close frame: {}", f.describe());
        assert!(std::str::from_utf8(&f.payload[2..]).is_ok(), "close reason is not UTF-8: {}", f.describe());
        self.expect_eof();
        f
    }

    /// The server closes the TCP connection (EOF or reset) within 5 s, sending nothing more.
    fn expect_eof(&mut self) {
        let deadline = Instant::now() + WAIT;
        let before = self.buf.len();
        while self.fill(deadline, "the server to close the TCP connection") {}
        assert_eq!(self.buf.len(), before, "bytes after the close frame: {:?}", &self.buf[before..]);
    }
}

fn upgrade_request(addr: SocketAddr, path: &str) -> Vec<u8> {
    format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    .into_bytes()
}

/// Sends `bytes` on a fresh echo connection and expects close `code` (then TCP close).
fn fails_with(hub: &Hub, bytes: &[u8], code: u16) {
    let mut ws = Raw::echo(hub);
    ws.send(bytes);
    ws.expect_close(code);
}

/// A hub connection as `user` on the normal path, past its `connected` frame.
fn hub_conn(hub: &Hub, key: &str, user: &str) -> Raw {
    let mut ws = Raw::open(hub.addr, &format!("/?apiKey={}&userId={}", pct(key), pct(user)));
    let connected = ws.expect_frame(TEXT);
    let v: serde_json::Value = serde_json::from_slice(&connected.payload).expect("connected frame is JSON");
    assert_eq!(v["type"], "connected", "first frame: {v}");
    ws
}

fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| b'a' + (i % 26) as u8).collect()
}

// --- data frames ----------------------------------------------------------------------

#[test]
fn text_and_binary_echo_in_every_length_form() {
    let hub = Hub::start_with(ECHO);
    let mut ws = Raw::echo(&hub);
    // 7-bit, 16-bit and 64-bit length forms; the server must use the shortest one (5.2).
    let cases: [(usize, &[u8]); 6] = [
        (0, &[]),
        (5, &[]),
        (125, &[]),
        (126, &[126, 0, 126]),
        (65_535, &[126, 0xff, 0xff]),
        (65_536, &[127, 0, 0, 0, 0, 0, 1, 0, 0]),
    ];
    for (len, long_form) in cases {
        for opcode in [TEXT, BINARY] {
            let payload = pattern(len);
            ws.send(&frame(true, opcode, &payload));
            let f = ws.expect_frame(opcode);
            let mut want = vec![0x80 | opcode];
            if long_form.is_empty() {
                want.push(len as u8);
            } else {
                want.extend_from_slice(long_form);
            }
            assert_eq!(f.header, want, "header of the echo of a {len}-byte frame");
            assert!(f.payload == payload, "echo of {len} bytes differs: {}", f.describe());
        }
    }
    // Non-ASCII UTF-8 and arbitrary bytes come back unchanged.
    let text = "Hello-µ@ßöäüàá-UTF-8!! κόσμε 𝄞".as_bytes();
    ws.send(&frame(true, TEXT, text));
    ws.expect_echo(TEXT, text);
    let bytes: Vec<u8> = (0..=255).collect();
    ws.send(&frame(true, BINARY, &bytes));
    ws.expect_echo(BINARY, &bytes);
}

#[test]
fn frames_arriving_byte_by_byte_are_reassembled() {
    let hub = Hub::start_with(ECHO);
    let mut ws = Raw::echo(&hub);
    let payload = pattern(300);
    for b in frame(true, BINARY, &payload) {
        ws.send(&[b]);
    }
    ws.expect_echo(BINARY, &payload);
}

#[test]
fn a_message_in_three_fragments_is_echoed_whole() {
    let hub = Hub::start_with(ECHO);
    let mut ws = Raw::echo(&hub);
    ws.send(&frame(false, TEXT, b"Hello, "));
    ws.send(&frame(false, CONT, b"fragmented "));
    ws.send(&frame(true, CONT, b"world"));
    ws.expect_echo(TEXT, b"Hello, fragmented world");

    // Binary, with an empty middle fragment, in one write.
    let mut bytes = frame(false, BINARY, &[1, 2, 3]);
    bytes.extend(frame(false, CONT, &[]));
    bytes.extend(frame(true, CONT, &[4, 5]));
    ws.send(&bytes);
    ws.expect_echo(BINARY, &[1, 2, 3, 4, 5]);

    // A text message split inside a multi-byte character is valid as a whole.
    let text = "κόσμε".as_bytes();
    ws.send(&frame(false, TEXT, &text[..1]));
    ws.send(&frame(false, CONT, &text[1..4]));
    ws.send(&frame(true, CONT, &text[4..]));
    ws.expect_echo(TEXT, text);
}

// --- control frames ---------------------------------------------------------------------

#[test]
fn ping_is_answered_with_a_pong_carrying_the_same_payload() {
    let hub = Hub::start_with(ECHO);
    let mut ws = Raw::echo(&hub);
    ws.send(&frame(true, PING, b"Hello"));
    let pong = ws.expect_frame(PONG);
    assert_eq!(pong.header, [0x8A, 5]);
    assert_eq!(pong.payload, b"Hello");

    ws.send(&frame(true, PING, &[]));
    let pong = ws.expect_frame(PONG);
    assert_eq!(pong.header, [0x8A, 0]);

    let max: Vec<u8> = (0..125).map(|i| i as u8 ^ 0xfe).collect();
    ws.send(&frame(true, PING, &max));
    assert_eq!(ws.expect_frame(PONG).payload, max);

    // An unsolicited pong is ignored: the next frame is the echo.
    ws.send(&frame(true, PONG, b"unsolicited"));
    ws.send(&frame(true, TEXT, b"after pong"));
    ws.expect_echo(TEXT, b"after pong");
}

#[test]
fn pings_between_fragments_are_answered_and_the_message_still_arrives_whole() {
    let hub = Hub::start_with(ECHO);
    let mut ws = Raw::echo(&hub);
    ws.send(&frame(false, TEXT, b"frag1 "));
    ws.send(&frame(true, PING, b"ping-1"));
    assert_eq!(ws.expect_frame(PONG).payload, b"ping-1", "pong before the message ends");
    ws.send(&frame(false, CONT, b"frag2 "));
    ws.send(&frame(true, PING, b"ping-2"));
    assert_eq!(ws.expect_frame(PONG).payload, b"ping-2");
    ws.send(&frame(true, CONT, b"frag3"));
    ws.expect_echo(TEXT, b"frag1 frag2 frag3");
}

#[test]
fn close_1000_with_reason_is_echoed_then_the_server_closes_tcp() {
    let hub = Hub::start_with(ECHO);
    let mut ws = Raw::echo(&hub);
    ws.send(&frame(true, TEXT, b"before close"));
    ws.expect_echo(TEXT, b"before close");
    ws.send(&frame(true, CLOSE, &close_payload(1000, b"bye")));
    ws.expect_close(1000);
}

#[test]
fn close_without_payload_is_answered_with_an_empty_close() {
    let hub = Hub::start_with(ECHO);
    let mut ws = Raw::echo(&hub);
    ws.send(&frame(true, CLOSE, &[]));
    let f = ws.expect_frame(CLOSE);
    assert_eq!(f.close_code(), None, "reply to an empty close: {}", f.describe());
    ws.expect_eof();
}

#[test]
fn data_after_a_close_is_not_echoed() {
    let hub = Hub::start_with(ECHO);
    let mut ws = Raw::echo(&hub);
    let mut bytes = frame(true, CLOSE, &close_payload(1000, b""));
    bytes.extend(frame(true, TEXT, b"too late"));
    bytes.extend(frame(true, PING, b"too late"));
    ws.send(&bytes);
    ws.expect_close(1000);
}

#[test]
fn every_valid_close_code_is_echoed() {
    let hub = Hub::start_with(ECHO);
    for code in [1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 3000, 3999, 4000, 4999] {
        let mut ws = Raw::echo(&hub);
        ws.send(&frame(true, CLOSE, &close_payload(code, b"reason")));
        ws.expect_close(code);
    }
}

// --- protocol errors: 1002 ---------------------------------------------------------------

#[test]
fn close_with_an_invalid_code_fails_with_1002() {
    let hub = Hub::start_with(ECHO);
    // 0-999 unused; 1004 reserved; 1005, 1006 and 1015 must never be sent; 1016-2999 reserved
    // for the protocol; 5000+ undefined (RFC 6455 section 7.4).
    for code in [0, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535] {
        let mut ws = Raw::echo(&hub);
        ws.send(&frame(true, CLOSE, &close_payload(code, b"")));
        let f = ws.expect_frame(CLOSE);
        assert_eq!(f.close_code(), Some(1002), "reply to close code {code}: {}", f.describe());
        ws.expect_eof();
    }
}

#[test]
fn close_with_a_one_byte_payload_fails_with_1002() {
    let hub = Hub::start_with(ECHO);
    fails_with(&hub, &frame(true, CLOSE, &[0x03]), 1002);
}

#[test]
fn close_with_an_invalid_utf8_reason_fails_with_1007() {
    let hub = Hub::start_with(ECHO);
    fails_with(&hub, &frame(true, CLOSE, &close_payload(1000, &[b'o', b'k', 0xff, 0xfe])), 1007);
}

#[test]
fn unmasked_client_frame_fails_with_1002() {
    let hub = Hub::start_with(ECHO);
    fails_with(&hub, &frame_with(true, 0, TEXT, b"unmasked", None), 1002);
    fails_with(&hub, &frame_with(true, 0, PING, b"unmasked", None), 1002);
}

#[test]
fn reserved_bits_fail_with_1002() {
    let hub = Hub::start_with(ECHO);
    for rsv in 1..=7 {
        fails_with(&hub, &frame_with(true, rsv, TEXT, b"rsv", Some(MASK)), 1002);
    }
    fails_with(&hub, &frame_with(true, 4, PING, b"rsv", Some(MASK)), 1002);
}

#[test]
fn unknown_opcodes_fail_with_1002() {
    let hub = Hub::start_with(ECHO);
    for opcode in [0x3, 0x4, 0x5, 0x6, 0x7, 0xB, 0xC, 0xD, 0xE, 0xF] {
        let mut ws = Raw::echo(&hub);
        ws.send(&frame(true, opcode, b"reserved opcode"));
        let f = ws.expect_frame(CLOSE);
        assert_eq!(f.close_code(), Some(1002), "reply to opcode {opcode:#x}: {}", f.describe());
        ws.expect_eof();
    }
}

#[test]
fn control_frame_over_125_bytes_fails_with_1002() {
    let hub = Hub::start_with(ECHO);
    fails_with(&hub, &frame(true, PING, &[b'p'; 126]), 1002);
    fails_with(&hub, &frame(true, PONG, &[b'p'; 126]), 1002);
    fails_with(&hub, &frame(true, CLOSE, &close_payload(1000, &[b'r'; 124])), 1002);
}

#[test]
fn fragmented_control_frame_fails_with_1002() {
    let hub = Hub::start_with(ECHO);
    fails_with(&hub, &frame(false, PING, b"fragmented ping"), 1002);
    let mut bytes = frame(false, TEXT, b"start");
    bytes.extend(frame(false, PING, b"fragmented ping"));
    fails_with(&hub, &bytes, 1002);
}

#[test]
fn continuation_without_a_start_fails_with_1002() {
    let hub = Hub::start_with(ECHO);
    fails_with(&hub, &frame(true, CONT, b"orphan"), 1002);
    fails_with(&hub, &frame(false, CONT, b"orphan"), 1002);
    // After a complete message there is nothing to continue either.
    let mut ws = Raw::echo(&hub);
    ws.send(&frame(true, TEXT, b"done"));
    ws.expect_echo(TEXT, b"done");
    ws.send(&frame(true, CONT, b"orphan"));
    ws.expect_close(1002);
}

#[test]
fn new_data_frame_during_a_fragmented_message_fails_with_1002() {
    let hub = Hub::start_with(ECHO);
    for second in [TEXT, BINARY] {
        let mut bytes = frame(false, TEXT, b"first half");
        bytes.extend(frame(true, second, b"interloper"));
        fails_with(&hub, &bytes, 1002);
    }
}

// --- invalid UTF-8: 1007 ---------------------------------------------------------------

#[test]
fn invalid_utf8_text_fails_with_1007() {
    let hub = Hub::start_with(ECHO);
    // A lone continuation byte, an overlong encoding, a UTF-16 surrogate, a code point above U+10FFFF.
    for bad in [&b"\x80"[..], b"\xc0\xaf", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"ok\xff"] {
        let mut ws = Raw::echo(&hub);
        ws.send(&frame(true, TEXT, bad));
        let f = ws.expect_frame(CLOSE);
        assert_eq!(f.close_code(), Some(1007), "reply to text {bad:?}: {}", f.describe());
        ws.expect_eof();
    }
}

#[test]
fn invalid_utf8_across_fragments_fails_with_1007() {
    let hub = Hub::start_with(ECHO);
    // The message as a whole is invalid although each fragment could still become valid.
    let mut bytes = frame(false, TEXT, "κόσμε".as_bytes());
    bytes.extend(frame(false, CONT, b"\xf4\x90"));
    bytes.extend(frame(true, CONT, b"\x80\x80edited"));
    fails_with(&hub, &bytes, 1007);
    // A character left unfinished by the final fragment.
    let mut bytes = frame(false, TEXT, b"abc");
    bytes.extend(frame(true, CONT, b"\xce"));
    fails_with(&hub, &bytes, 1007);
    // Fail fast: the second fragment is already invalid, so no final fragment is needed.
    let mut bytes = frame(false, TEXT, b"valid start ");
    bytes.extend(frame(false, CONT, b"\xff\xfe"));
    fails_with(&hub, &bytes, 1007);
}

// --- size limit: 1009 ---------------------------------------------------------------------

#[test]
fn message_over_max_message_bytes_fails_with_1009_without_reading_it() {
    let hub = Hub::start_with(&["--echo-path", "/echo", "--max-message-bytes", "1024"]);
    // At the limit: echoed.
    let mut ws = Raw::echo(&hub);
    ws.send(&frame(true, BINARY, &pattern(1024)));
    ws.expect_echo(BINARY, &pattern(1024));

    // A header claiming 10 MB followed by a few bytes: closed from the header alone.
    let mut ws = Raw::echo(&hub);
    let mut bytes = vec![0x82, 0x80 | 127];
    bytes.extend_from_slice(&10_000_000u64.to_be_bytes());
    bytes.extend_from_slice(&MASK);
    bytes.extend_from_slice(b"just a few bytes");
    let start = Instant::now();
    ws.send(&bytes);
    let f = ws.expect_frame(CLOSE);
    let took = start.elapsed();
    assert_eq!(f.close_code(), Some(1009), "reply to a 10 MB frame header: {}", f.describe());
    assert!(took < Duration::from_secs(2), "close 1009 took {took:?}");
    ws.expect_eof();

    // The same in the 16-bit length form (1025..65535).
    let mut ws = Raw::echo(&hub);
    let mut bytes = vec![0x81, 0x80 | 126];
    bytes.extend_from_slice(&60_000u16.to_be_bytes());
    bytes.extend_from_slice(&MASK);
    ws.send(&bytes);
    ws.expect_close(1009);

    // Fragments each under the limit whose sum is over it.
    let mut ws = Raw::echo(&hub);
    ws.send(&frame(false, BINARY, &pattern(600)));
    ws.send(&frame(true, CONT, &pattern(600)));
    ws.expect_close(1009);
}

#[test]
fn fragment_cap_closes_1009_and_pings_do_not_count() {
    let hub = Hub::start_with(&["--echo-path", "/echo", "--max-fragments", "4"]);
    let mut ws = Raw::echo(&hub);
    // Four fragments with pings between them: within the cap.
    ws.send(&frame(false, TEXT, b"a"));
    for part in [&b"b"[..], b"c"] {
        ws.send(&frame(true, PING, part));
        assert_eq!(ws.expect_frame(PONG).payload, part);
        ws.send(&frame(false, CONT, part));
    }
    ws.send(&frame(true, CONT, b"d"));
    ws.expect_echo(TEXT, b"abcd");
    // The count starts again with each message; five fragments are one too many.
    let mut bytes = frame(false, BINARY, &[]);
    for _ in 0..3 {
        bytes.extend(frame(false, CONT, &[]));
    }
    bytes.extend(frame(true, CONT, &[]));
    ws.send(&bytes);
    ws.expect_close(1009);
}

/// Opens the echo path with the upgrade request and `early[..split]` in one write (so the
/// hub reads them together), then, once the hub has had time to read that, the rest of
/// `early` and `later`. Returns the connection past the 101 response.
fn open_with_early_frames(hub: &Hub, early: &[u8], split: usize, later: &[u8]) -> Raw {
    let stream = TcpStream::connect_timeout(&hub.addr, WAIT).expect("connect");
    stream.set_nodelay(true).expect("set_nodelay");
    stream.set_write_timeout(Some(WAIT)).expect("set_write_timeout");
    let mut ws = Raw { stream, buf: Vec::new() };
    let mut bytes = upgrade_request(hub.addr, "/echo");
    bytes.extend_from_slice(&early[..split]);
    ws.send(&bytes);
    std::thread::sleep(Duration::from_millis(200)); // the hub reads the request and those bytes alone
    let mut bytes = early[split..].to_vec();
    bytes.extend_from_slice(later);
    ws.send(&bytes);
    let deadline = Instant::now() + WAIT;
    let end = loop {
        if let Some(i) = ws.buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        assert!(ws.fill(deadline, "the 101 response"), "EOF before the 101 response: {:?}", ws.text());
    };
    let head: Vec<u8> = ws.buf.drain(..end).collect();
    assert!(head.starts_with(b"HTTP/1.1 101 "), "{:?}", String::from_utf8_lossy(&head));
    ws
}

// Frames sent right behind the upgrade request reach the hub in the same read as the
// request. The fragment cap must count those bytes too and stay in step with the frame
// boundaries: otherwise payload bytes are taken for frame headers.

#[test]
fn fragment_cap_counts_frames_that_arrive_with_the_handshake_no_false_close() {
    let hub = Hub::start_with(&["--echo-path", "/echo", "--max-fragments", "4"]);
    // A legitimate 2-frame binary message whose payload looks like many empty continuation
    // headers (mask key 0 leaves the payload as is on the wire): a count that starts in the
    // middle of it sees far more than 4 fragments.
    let fake_headers: Vec<u8> = [0x00, 0x80, 0, 0, 0, 0].repeat(20);
    let first = frame_with(false, 0, BINARY, &fake_headers, Some([0; 4]));
    let mut ws = open_with_early_frames(&hub, &first, 8, &frame(true, CONT, b"!"));
    let mut want = fake_headers;
    want.push(b'!');
    let f = ws.read_frame();
    assert!(f.opcode == BINARY && f.payload == want, "expected the 2-fragment message echoed, got {}", f.describe());
}

#[test]
fn fragment_cap_counts_frames_that_arrive_with_the_handshake_no_bypass() {
    let hub = Hub::start_with(&["--echo-path", "/echo", "--max-fragments", "4"]);
    // The first frame's payload reads, out of step, as a header announcing 2^64-1 bytes: a
    // count that starts there skips everything after it, and the cap is gone.
    let payload = [0x00, 0x00, 0x00, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff];
    let first = frame_with(false, 0, BINARY, &payload, Some([0; 4]));
    let mut later = Vec::new();
    for _ in 0..10 {
        later.extend(frame(false, CONT, &[]));
    }
    later.extend(frame(true, CONT, &[]));
    // 12 fragments against a cap of 4.
    let mut ws = open_with_early_frames(&hub, &first, 8, &later);
    ws.expect_close(1009);
}

// --- the hub's own path shares the rules ---------------------------------------------------

#[test]
fn hub_path_applies_the_same_framing_rules() {
    let hub = Hub::start_with(ECHO);
    let (_, key) = hub.create_project("framing");

    let mut ws = hub_conn(&hub, &key, "alice");
    ws.send(&frame(true, PING, b"hub ping"));
    assert_eq!(ws.expect_frame(PONG).payload, b"hub ping");
    ws.send(&frame_with(true, 0, TEXT, b"{\"type\":\"ping\"}", None));
    ws.expect_close(1002);

    let mut ws = hub_conn(&hub, &key, "bob");
    ws.send(&frame_with(true, 2, TEXT, b"{}", Some(MASK)));
    ws.expect_close(1002);

    let mut ws = hub_conn(&hub, &key, "carol");
    let mut bytes = frame(false, TEXT, b"{\"type\":");
    bytes.extend(frame(true, CONT, b"\"\xff\"}"));
    ws.send(&bytes);
    ws.expect_close(1007);

    let mut ws = hub_conn(&hub, &key, "dave");
    ws.send(&frame(true, CLOSE, &close_payload(1005, b"")));
    ws.expect_close(1002);

    let mut ws = hub_conn(&hub, &key, "erin");
    ws.send(&frame(true, CLOSE, &close_payload(1000, b"bye")));
    ws.expect_close(1000);
}
