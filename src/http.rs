//! HTTP/1.1 on top of httparse: request framing, response encoding, and the
//! WebSocket upgrade checks. Pure functions over byte buffers, no sockets.
//!
//! The reader is a push parser: bytes go in as they arrive, complete requests
//! come out in order (so keep-alive and pipelining fall out naturally). The head
//! terminator is searched only in bytes not searched before, and httparse runs
//! once per request, so a request trickled one byte at a time costs linear time.
//!
//! Framing is strict where leniency would let two parsers disagree about where
//! a request ends (request smuggling): every line of the head must end in CRLF
//! (a bare LF is refused, since httparse would end the head there while the
//! terminator search would not), the head ends exactly where httparse says it
//! does, and `Content-Length` is one header of digits only (RFC 9110 §8.6).

use std::fmt::Write as _;

/// Most headers one request may carry; more is answered 431.
pub const MAX_HEADERS: usize = 100;

/// A complete, framed request. Header names are lower-cased; the path and query
/// values are percent-decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// `GET`, `POST`, … as sent.
    pub method: String,
    /// The path as sent (still percent-encoded), without the query; use
    /// [`Request::segments`] for decoded parts.
    pub path: String,
    /// Decoded `name=value` pairs of the query string, in order.
    pub query: Vec<(String, String)>,
    /// Lower-cased header names with their values.
    pub headers: Vec<(String, String)>,
    /// The body (Content-Length bytes).
    pub body: Vec<u8>,
    /// True for HTTP/1.1, false for HTTP/1.0.
    pub http11: bool,
}

impl Request {
    /// The first value of a header, by lower-case name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    /// The first value of a query parameter.
    pub fn query_param(&self, name: &str) -> Option<&str> {
        self.query.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    /// The decoded `/`-separated path segments, `None` for a broken escape.
    pub fn segments(&self) -> Option<Vec<String>> {
        self.path.split('/').filter(|s| !s.is_empty()).map(percent_decode).collect()
    }

    /// Whether the connection stays open after the answer (HTTP/1.1 default yes,
    /// HTTP/1.0 only with `Connection: keep-alive`).
    pub fn keep_alive(&self) -> bool {
        let connection = self.header("connection").map(|v| v.to_ascii_lowercase());
        match connection {
            Some(v) if has_token(&v, "close") => false,
            Some(v) if has_token(&v, "keep-alive") => true,
            _ => self.http11,
        }
    }

    /// Whether this asks to become a WebSocket.
    pub fn wants_websocket(&self) -> bool {
        self.header("upgrade").is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
    }
}

fn has_token(list: &str, token: &str) -> bool {
    list.split(',').any(|t| t.trim() == token)
}

/// Why a request could not be framed. Each is answered with its status and the
/// connection is closed, since the byte stream can no longer be trusted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FramingError {
    /// Not HTTP, or a header the reader cannot use → 400.
    Malformed(&'static str),
    /// The head is over the limit or has too many headers → 431.
    HeadTooLarge,
    /// Content-Length over the body limit → 413.
    BodyTooLarge,
    /// Transfer-Encoding (chunked) bodies are not supported → 411.
    LengthRequired,
}

impl FramingError {
    /// The response that tells the client what went wrong.
    pub fn response(&self) -> Response {
        match self {
            FramingError::Malformed(why) => Response::error(400, "bad_request", why),
            FramingError::HeadTooLarge => {
                Response::error(431, "request_header_fields_too_large", "request head too large")
            }
            FramingError::BodyTooLarge => Response::error(413, "payload_too_large", "request body too large"),
            FramingError::LengthRequired => {
                Response::error(411, "length_required", "chunked bodies are not supported; send Content-Length")
            }
        }
    }
}

/// The part of a request known once its head is parsed.
#[derive(Debug)]
struct Head {
    request: Request,
    head_len: usize,
    body_len: usize,
}

/// Incremental request framer for one connection.
#[derive(Debug, Default)]
pub struct RequestReader {
    buf: Vec<u8>,
    /// Bytes of `buf` already searched for the head terminator.
    scanned: usize,
    /// Boxed: an idle connection should not carry a whole request's worth of fields.
    head: Option<Box<Head>>,
}

impl RequestReader {
    /// Appends bytes read from the socket.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes buffered and not yet returned as a request.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// True while a request has started arriving but is not complete.
    pub fn in_progress(&self) -> bool {
        !self.buf.is_empty() || self.head.is_some()
    }

    /// Hands over the bytes after the last returned request (for a WebSocket upgrade).
    pub fn take_rest(&mut self) -> Vec<u8> {
        self.scanned = 0;
        std::mem::take(&mut self.buf)
    }

    /// Frees buffer memory while the connection is idle.
    pub fn shrink(&mut self) {
        if self.buf.is_empty() && self.buf.capacity() > 4096 {
            self.buf = Vec::new();
        }
    }

    /// The next complete request, `Ok(None)` when more bytes are needed.
    pub fn next_request(&mut self, max_head: usize, max_body: usize) -> Result<Option<Request>, FramingError> {
        if self.head.is_none() {
            match scan_head(&self.buf, self.scanned, max_head)? {
                Some(head_len) => {
                    self.head = Some(Box::new(parse_head(&self.buf[..head_len], head_len, max_body)?));
                }
                None => {
                    self.scanned = self.buf.len().min(max_head);
                    if self.buf.len() > max_head {
                        return Err(FramingError::HeadTooLarge);
                    }
                    // A client that opens with garbage is told so at once.
                    if !self.buf.is_empty() && !looks_like_http(&self.buf) {
                        return Err(FramingError::Malformed("not an HTTP request"));
                    }
                    return Ok(None);
                }
            }
        }
        let Some(head) = self.head.as_ref() else { return Ok(None) };
        let total = head.head_len + head.body_len;
        if self.buf.len() < total {
            return Ok(None);
        }
        let Some(mut head) = self.head.take() else { return Ok(None) };
        head.request.body = self.buf[head.head_len..total].to_vec();
        self.buf.drain(..total);
        self.scanned = 0;
        Ok(Some(head.request))
    }
}

/// Looks for the end of the head (just past `\r\n\r\n`) in `buf[from..]`,
/// never past `max_head` bytes, so the same bytes give the same answer however
/// they were split into reads. A line feed not preceded by a carriage return is
/// refused: httparse accepts bare LF line endings, and a head that one reader
/// ends at `\n\n` and another at `\r\n\r\n` is how a request hides in another.
fn scan_head(buf: &[u8], from: usize, max_head: usize) -> Result<Option<usize>, FramingError> {
    let end = buf.len().min(max_head);
    for i in from..end {
        if buf[i] != b'\n' {
            continue;
        }
        if i == 0 || buf[i - 1] != b'\r' {
            return Err(FramingError::Malformed("bare LF in request head; lines must end in CRLF"));
        }
        if i >= 3 && &buf[i - 3..=i] == b"\r\n\r\n" {
            return Ok(Some(i + 1));
        }
    }
    Ok(None)
}

/// A cheap check on a partial head: the method token must be uppercase
/// letters. Empty lines before the request line are skipped, as httparse
/// does (RFC 9112 §2.2: a client may send a CRLF after a body).
fn looks_like_http(bytes: &[u8]) -> bool {
    let start = bytes.iter().position(|&b| b != b'\r' && b != b'\n').unwrap_or(bytes.len());
    let bytes = &bytes[start..];
    if bytes.is_empty() {
        return true;
    }
    let token_end = bytes.iter().position(|&b| b == b' ').unwrap_or(bytes.len());
    if token_end == 0 || token_end > 16 {
        return false;
    }
    bytes[..token_end].iter().all(|b| b.is_ascii_uppercase())
}

fn parse_head(bytes: &[u8], head_len: usize, max_body: usize) -> Result<Head, FramingError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut headers);
    match parsed.parse(bytes) {
        // The request is framed where httparse ends the head and nowhere else:
        // bytes between its end and ours would be a second, unseen head.
        Ok(httparse::Status::Complete(n)) if n == head_len => {}
        Ok(httparse::Status::Complete(_)) => return Err(FramingError::Malformed("malformed request head")),
        Ok(httparse::Status::Partial) => return Err(FramingError::Malformed("incomplete request head")),
        Err(httparse::Error::TooManyHeaders) => return Err(FramingError::HeadTooLarge),
        Err(_) => return Err(FramingError::Malformed("malformed request head")),
    }
    let method = parsed.method.unwrap_or_default().to_string();
    let target = parsed.path.unwrap_or_default();
    let http11 = parsed.version == Some(1);
    let mut header_list = Vec::with_capacity(parsed.headers.len());
    let mut body_len = 0usize;
    let mut seen_length = false;
    for header in parsed.headers.iter() {
        let name = header.name.to_ascii_lowercase();
        let value = std::str::from_utf8(header.value)
            .map_err(|_| FramingError::Malformed("header value is not UTF-8"))?
            // Optional whitespace is spaces and tabs (RFC 9110 §5.6.3), not
            // every Unicode space `str::trim` would take.
            .trim_matches([' ', '\t'])
            .to_string();
        if name == "transfer-encoding" {
            return Err(FramingError::LengthRequired);
        }
        if name == "content-length" {
            if seen_length {
                // RFC 9112 §6.3 lets a recipient refuse any repetition; two
                // parsers picking different copies is a smuggling vector.
                return Err(FramingError::Malformed("more than one Content-Length header"));
            }
            seen_length = true;
            body_len = content_length(&value, max_body)?;
        }
        header_list.push((name, value));
    }
    let (raw_path, raw_query) = match target.split_once('?') {
        Some((p, q)) => (p, q),
        None => (target, ""),
    };
    let path = raw_path.to_string();
    let query = parse_query(raw_query).ok_or(FramingError::Malformed("bad percent-encoding in query"))?;
    Ok(Head {
        request: Request { method, path, query, headers: header_list, body: Vec::new(), http11 },
        head_len,
        body_len,
    })
}

/// A `Content-Length` value: `1*DIGIT` and nothing else (RFC 9110 §8.6), so no
/// sign, no list, no spaces inside. `str::parse` alone would take `+15`.
fn content_length(value: &str, max_body: usize) -> Result<usize, FramingError> {
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(FramingError::Malformed("bad Content-Length"));
    }
    // All digits: a value too long for u64 is simply too large.
    match value.parse::<u64>() {
        Ok(n) if n <= max_body as u64 => Ok(n as usize),
        _ => Err(FramingError::BodyTooLarge),
    }
}

/// Splits and decodes `a=1&b=2`; `+` is a space as browsers send it.
pub fn parse_query(raw: &str) -> Option<Vec<(String, String)>> {
    let mut out = Vec::new();
    for pair in raw.split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        out.push((percent_decode(&name.replace('+', " "))?, percent_decode(&value.replace('+', " "))?));
    }
    Some(out)
}

/// Decodes `%XX` escapes; `None` for a broken escape or non-UTF-8 result.
pub fn percent_decode(raw: &str) -> Option<String> {
    if !raw.contains('%') {
        return Some(raw.to_string());
    }
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            // Exactly two hex digits: from_str_radix alone would take `+1`.
            let hex = bytes.get(i + 1..i + 3).filter(|h| h.iter().all(u8::is_ascii_hexdigit))?;
            let hex = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// An HTTP response before encoding. Bodies are JSON unless said otherwise.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Extra headers beyond the standard ones.
    pub headers: Vec<(&'static str, String)>,
    /// Body bytes; empty for 204.
    pub body: Vec<u8>,
    /// Close the connection after this response.
    pub close: bool,
    /// The body's media type.
    pub content_type: &'static str,
    /// Answer to a HEAD request: the headers (with the body's length), no body.
    pub head_only: bool,
}

impl Response {
    /// A JSON response.
    pub fn json(status: u16, value: &serde_json::Value) -> Response {
        Response {
            status,
            headers: Vec::new(),
            body: value.to_string().into_bytes(),
            close: false,
            content_type: "application/json",
            head_only: false,
        }
    }

    /// A JSON response serialised straight from a typed value (no `Value`
    /// round trip, so raw JSON inside it stays byte for byte).
    pub fn json_of<T: serde::Serialize>(status: u16, value: &T) -> Response {
        let mut response = Response::empty(status);
        response.body = serde_json::to_vec(value).unwrap_or_default();
        response
    }

    /// A response with no body (204 and the like).
    pub fn empty(status: u16) -> Response {
        Response {
            status,
            headers: Vec::new(),
            body: Vec::new(),
            close: false,
            content_type: "application/json",
            head_only: false,
        }
    }

    /// A static asset (script, page) with its media type.
    pub fn asset(content_type: &'static str, body: &'static str) -> Response {
        Response {
            status: 200,
            headers: Vec::new(),
            body: body.as_bytes().to_vec(),
            close: false,
            content_type,
            head_only: false,
        }
    }

    /// The contract's error shape: `{"error":{"code","message"}}`.
    pub fn error(status: u16, code: &str, message: &str) -> Response {
        Response::json(status, &serde_json::json!({"error": {"code": code, "message": message}}))
    }

    /// Adds a header.
    pub fn with_header(mut self, name: &'static str, value: impl Into<String>) -> Response {
        self.headers.push((name, value.into()));
        self
    }

    /// Encodes the response head and body onto `out`.
    pub fn encode(&self, keep_alive: bool, out: &mut Vec<u8>) {
        let mut head = String::with_capacity(256);
        let _ = write!(head, "HTTP/1.1 {} {}\r\n", self.status, reason(self.status));
        if self.status != 101 {
            if !self.body.is_empty() {
                let _ = write!(head, "Content-Type: {}\r\n", self.content_type);
            }
            if self.status != 204 {
                let _ = write!(head, "Content-Length: {}\r\n", self.body.len());
            }
            head.push_str(if keep_alive && !self.close {
                "Connection: keep-alive\r\n"
            } else {
                "Connection: close\r\n"
            });
        }
        for (name, value) in &self.headers {
            let _ = write!(head, "{name}: {value}\r\n");
        }
        head.push_str("\r\n");
        out.extend_from_slice(head.as_bytes());
        if !self.head_only {
            out.extend_from_slice(&self.body);
        }
    }
}

/// Reason phrases for the statuses the hub sends.
fn reason(status: u16) -> &'static str {
    match status {
        101 => "Switching Protocols",
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        411 => "Length Required",
        413 => "Payload Too Large",
        426 => "Upgrade Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

/// Checks the WebSocket handshake fields (RFC 6455 §4.2.1) and returns the
/// `Sec-WebSocket-Accept` value, or the response that refuses the upgrade.
pub fn check_upgrade(req: &Request) -> Result<String, Response> {
    if req.method != "GET" {
        return Err(Response::error(400, "bad_request", "a WebSocket upgrade must be a GET"));
    }
    let connection = req.header("connection").unwrap_or("").to_ascii_lowercase();
    if !has_token(&connection, "upgrade") {
        return Err(Response::error(400, "bad_request", "Connection header must include Upgrade"));
    }
    if req.header("sec-websocket-version") != Some("13") {
        return Err(Response::error(426, "upgrade_required", "only WebSocket version 13 is supported")
            .with_header("Sec-WebSocket-Version", "13"));
    }
    let key = req.header("sec-websocket-key").unwrap_or("");
    if key.len() != 24 || !key.ends_with("==") {
        return Err(Response::error(400, "bad_request", "missing or malformed Sec-WebSocket-Key"));
    }
    Ok(tungstenite::handshake::derive_accept_key(key.as_bytes()))
}

/// The 101 answer that completes an upgrade.
pub fn switching_protocols(accept: &str) -> Response {
    Response::empty(101)
        .with_header("Upgrade", "websocket")
        .with_header("Connection", "Upgrade")
        .with_header("Sec-WebSocket-Accept", accept)
}

#[cfg(test)]
mod tests {
    use super::*;

    const BIG: usize = 1 << 20;

    #[test]
    fn percent_decoding_takes_exactly_two_hex_digits() {
        for (raw, want) in [
            ("plain", Some("plain")),
            ("a%20b", Some("a b")),
            ("%C3%A9", Some("\u{e9}")),
            ("%+1", None),
            ("%-1", None),
            ("%1", None),
            ("%zz", None),
            ("%FF", None), // not UTF-8
        ] {
            assert_eq!(percent_decode(raw).as_deref(), want, "{raw}");
        }
    }

    fn feed_all(input: &[u8]) -> Vec<Result<Option<Request>, FramingError>> {
        let mut reader = RequestReader::default();
        reader.push(input);
        let mut out = Vec::new();
        loop {
            let r = reader.next_request(16 * 1024, BIG);
            let stop = !matches!(r, Ok(Some(_)));
            out.push(r);
            if stop {
                return out;
            }
        }
    }

    /// Feeds one byte at a time and returns the requests framed.
    fn feed_bytewise(input: &[u8]) -> Result<Vec<Request>, FramingError> {
        let mut reader = RequestReader::default();
        let mut requests = Vec::new();
        for b in input {
            reader.push(&[*b]);
            while let Some(req) = reader.next_request(16 * 1024, BIG)? {
                requests.push(req);
            }
        }
        Ok(requests)
    }

    const BARE_LF: FramingError = FramingError::Malformed("bare LF in request head; lines must end in CRLF");
    const BAD_LENGTH: FramingError = FramingError::Malformed("bad Content-Length");

    #[test]
    fn table_of_requests_whole_and_byte_by_byte() {
        struct Case {
            input: &'static [u8],
            expect: Result<usize, FramingError>,
        }
        let cases = [
            Case { input: b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n", expect: Ok(1) },
            Case { input: b"POST /a HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}GET /b HTTP/1.1\r\n\r\n", expect: Ok(2) },
            Case {
                input: b"POST /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
                expect: Err(FramingError::LengthRequired),
            },
            Case {
                input: b"POST /a HTTP/1.1\r\nContent-Length: 99999999999\r\n\r\n",
                expect: Err(FramingError::BodyTooLarge),
            },
            Case {
                input: b"POST /a HTTP/1.1\r\nContent-Length: abc\r\n\r\n",
                expect: Err(FramingError::Malformed("bad Content-Length")),
            },
            Case { input: b"\x16\x03\x01garbage", expect: Err(FramingError::Malformed("not an HTTP request")) },
            // Issue 17: a bare-LF head followed by a second head whose body is a
            // third request. Framed at the CRLFCRLF, the POST head vanished and
            // its body ran as a request of its own.
            Case {
                input: b"GET /health HTTP/1.1\r\nHost: x\n\nPOST /api/v1/rooms HTTP/1.1\r\nHost: x\r\n\
                         Content-Length: 40\r\n\r\nPOST /api/v1/rooms HTTP/1.1\r\nHost: x\r\n\r\n",
                expect: Err(BARE_LF),
            },
            Case { input: b"GET / HTTP/1.1\n\n", expect: Err(BARE_LF) },
            Case { input: b"GET / HTTP/1.1\r\nHost: x\n\r\n", expect: Err(BARE_LF) },
            Case { input: b"\nGET / HTTP/1.1\r\n\r\n", expect: Err(BARE_LF) },
            // One empty line before a request is skipped (RFC 9112 §2.2), and a
            // body may hold bare LFs.
            Case { input: b"\r\nGET / HTTP/1.1\r\n\r\n", expect: Ok(1) },
            Case { input: b"POST /a HTTP/1.1\r\nContent-Length: 3\r\n\r\na\n\nGET /b HTTP/1.1\r\n\r\n", expect: Ok(2) },
            // Content-Length is 1*DIGIT, once (issue 17).
            Case { input: b"POST /a HTTP/1.1\r\nContent-Length: +2\r\n\r\n{}", expect: Err(BAD_LENGTH) },
            Case { input: b"POST /a HTTP/1.1\r\nContent-Length: -0\r\n\r\n", expect: Err(BAD_LENGTH) },
            Case { input: b"POST /a HTTP/1.1\r\nContent-Length: 0x2\r\n\r\n{}", expect: Err(BAD_LENGTH) },
            Case { input: b"POST /a HTTP/1.1\r\nContent-Length: 1 2\r\n\r\n{}", expect: Err(BAD_LENGTH) },
            Case { input: b"POST /a HTTP/1.1\r\nContent-Length: 2, 2\r\n\r\n{}", expect: Err(BAD_LENGTH) },
            Case { input: b"POST /a HTTP/1.1\r\nContent-Length:\r\n\r\n", expect: Err(BAD_LENGTH) },
            Case { input: "POST /a HTTP/1.1\r\nContent-Length: \u{a0}2\r\n\r\n{}".as_bytes(), expect: Err(BAD_LENGTH) },
            Case {
                input: b"POST /a HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\n{}",
                expect: Err(FramingError::Malformed("more than one Content-Length header")),
            },
            Case {
                input: b"POST /a HTTP/1.1\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n{}",
                expect: Err(FramingError::LengthRequired),
            },
            Case { input: b"POST /a HTTP/1.1\r\nContent-Length: \t02 \r\n\r\n{}", expect: Ok(1) },
            Case {
                input: b"POST /a HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\n",
                expect: Err(FramingError::BodyTooLarge),
            },
        ];
        for case in cases {
            let whole = feed_all(case.input);
            let bytewise = feed_bytewise(case.input);
            match &case.expect {
                Ok(n) => {
                    assert_eq!(whole.iter().filter(|r| matches!(r, Ok(Some(_)))).count(), *n);
                    assert_eq!(bytewise.as_ref().map(|v| v.len()), Ok(*n));
                }
                Err(e) => {
                    assert!(whole.iter().any(|r| r.as_ref().err() == Some(e)), "{whole:?}");
                    assert_eq!(bytewise.err().as_ref(), Some(e));
                }
            }
        }
    }

    #[test]
    fn path_query_and_headers_are_decoded() {
        let req = feed_bytewise(b"GET /ws?apiKey=a%2Bb&userId=John+Doe HTTP/1.1\r\nUpgrade: WebSocket\r\n\r\n")
            .unwrap()
            .remove(0);
        assert_eq!(req.path, "/ws");
        let users = feed_bytewise(b"GET /api/v1/users/a%2Fb/messages HTTP/1.1\r\n\r\n").unwrap().remove(0);
        assert_eq!(users.segments().unwrap(), ["api", "v1", "users", "a/b", "messages"]);
        assert_eq!(req.query_param("apiKey"), Some("a+b"));
        assert_eq!(req.query_param("userId"), Some("John Doe"));
        assert!(req.wants_websocket());
        assert!(req.keep_alive());
    }

    #[test]
    fn too_many_headers_and_long_heads_are_431() {
        let mut input = b"GET / HTTP/1.1\r\n".to_vec();
        for i in 0..200 {
            input.extend_from_slice(format!("X-{i}: y\r\n").as_bytes());
        }
        input.extend_from_slice(b"\r\n");
        assert_eq!(feed_bytewise(&input).unwrap_err(), FramingError::HeadTooLarge);
        let long = [b"GET /".as_slice(), &[b'a'; 20_000]].concat();
        assert_eq!(feed_bytewise(&long).unwrap_err(), FramingError::HeadTooLarge);
    }

    #[test]
    fn http10_closes_unless_asked() {
        let req = feed_bytewise(b"GET / HTTP/1.0\r\n\r\n").unwrap().remove(0);
        assert!(!req.keep_alive());
        let req = feed_bytewise(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n").unwrap().remove(0);
        assert!(req.keep_alive());
    }

    #[test]
    fn upgrade_checks() {
        let good = b"GET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";
        let req = feed_bytewise(good).unwrap().remove(0);
        assert_eq!(check_upgrade(&req).unwrap(), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        let old = b"GET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 8\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";
        let req = feed_bytewise(old).unwrap().remove(0);
        assert_eq!(check_upgrade(&req).unwrap_err().status, 426);
    }

    #[test]
    fn encode_sets_length_and_cors() {
        let mut out = Vec::new();
        Response::json(200, &serde_json::json!({"a":1}))
            .with_header("Access-Control-Allow-Origin", "*")
            .encode(true, &mut out);
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"));
        assert!(text.contains("Content-Length: 7\r\n"));
        assert!(text.contains("Access-Control-Allow-Origin: *\r\n"));
        assert!(text.ends_with("\r\n\r\n{\"a\":1}"));
    }
}
