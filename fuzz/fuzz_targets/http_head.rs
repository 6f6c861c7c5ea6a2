//! HTTP framing and the upgrade path.
//!
//! The first byte picks the head and body limits and how the rest is split
//! into reads; the rest is the byte stream of one connection. It is framed
//! twice, all at once and in arbitrary reads, and both must yield the same
//! requests (the one allowed difference: garbage caught early, before its head
//! is complete, as "not an HTTP request"). Every request then goes through the
//! accessors, the upgrade checks, `authorize_ws`, and (when it cannot write)
//! the REST router of a real hub; every response is encoded and must be a
//! well-formed HTTP/1.1 response.

#![no_main]

#[path = "common/mod.rs"]
mod common;

use std::cell::RefCell;

use libfuzzer_sys::fuzz_target;
use realtimehub::http::{check_upgrade, switching_protocols, FramingError, Request, RequestReader, Response};

use common::{check_encoded_response, Fixture, Seen, HTTP};

/// What one connection's bytes framed into.
#[derive(Debug)]
struct Framed {
    requests: Vec<Request>,
    /// Where each request ended in the stream.
    ends: Vec<usize>,
    error: Option<FramingError>,
    buffered: usize,
}

fn frame(stream: &[u8], sizes: &mut dyn FnMut() -> usize, max_head: usize, max_body: usize) -> Framed {
    let mut reader = RequestReader::default();
    let mut out = Framed { requests: Vec::new(), ends: Vec::new(), error: None, buffered: 0 };
    let mut pos = 0;
    while pos < stream.len() {
        let n = sizes().clamp(1, stream.len() - pos);
        reader.push(&stream[pos..pos + n]);
        pos += n;
        loop {
            match reader.next_request(max_head, max_body) {
                Ok(Some(req)) => {
                    out.requests.push(req);
                    out.ends.push(pos - reader.buffered());
                }
                Ok(None) => break,
                Err(e) => {
                    out.error = Some(e);
                    out.buffered = reader.buffered();
                    return out;
                }
            }
        }
        reader.shrink();
    }
    let _ = reader.in_progress();
    out.buffered = reader.buffered();
    let _ = reader.take_rest();
    assert_eq!(reader.buffered(), 0);
    out
}

/// The reader's early check on a partial head.
fn looks_like_method(method: &str) -> bool {
    !method.is_empty() && method.len() <= 16 && method.bytes().all(|b| b.is_ascii_uppercase())
}

const NOT_HTTP: FramingError = FramingError::Malformed("not an HTTP request");

thread_local! {
    static HUB: RefCell<Option<Fixture>> = const { RefCell::new(None) };
}

/// Substitutes the fixture's API key for the placeholder `K`, so the fuzzer
/// can reach the authenticated routes.
fn with_key(mut req: Request, key: &str) -> Request {
    for (name, value) in req.headers.iter_mut() {
        if name == "x-api-key" && value == "K" {
            *value = key.to_string();
        }
    }
    for (name, value) in req.query.iter_mut() {
        if name == "apiKey" && value == "K" {
            *value = key.to_string();
        }
    }
    req
}

fn exercise(req: &Request) {
    // Header names arrive lower-cased, bodies are exactly Content-Length.
    for (name, _) in &req.headers {
        assert_eq!(name, &name.to_ascii_lowercase());
    }
    let length = req.header("content-length").map(|v| v.parse::<usize>().expect("validated"));
    assert_eq!(req.body.len(), length.unwrap_or(0));
    let _ = req.segments();
    let _ = req.query_param("userId");
    let keep_alive = req.keep_alive();
    let mut out = Vec::new();
    match check_upgrade(req) {
        Ok(accept) => {
            assert_eq!(accept.len(), 28, "base64 of a SHA-1");
            let response = switching_protocols(&accept);
            response.encode(keep_alive, &mut out);
            assert!(out.starts_with(b"HTTP/1.1 101 Switching Protocols\r\n"));
            assert!(out.ends_with(b"\r\n\r\n"));
        }
        Err(response) => {
            assert!(matches!(response.status, 400 | 426), "{}", response.status);
            response.encode(keep_alive, &mut out);
            check_encoded_response(&out, response.status, response.head_only);
        }
    }
    HUB.with(|cell| {
        let mut slot = cell.borrow_mut();
        let f = slot.get_or_insert_with(Fixture::new);
        let req = with_key(req.clone(), &f.key);
        if req.wants_websocket() {
            if let Err(response) = f.hub.authorize_ws(&req, f.now) {
                assert!(matches!(response.status, 400 | 401 | 403), "{}", response.status);
                out.clear();
                response.encode(false, &mut out);
                check_encoded_response(&out, response.status, response.head_only);
            }
            return;
        }
        // Writes would make the shared hub differ from run to run.
        if matches!(req.method.as_str(), "POST" | "PUT" | "DELETE") {
            return;
        }
        f.hub.handle_http(HTTP, &req, std::net::Ipv4Addr::LOCALHOST.into(), f.now);
        let seen = f.drain();
        assert_eq!(seen.len(), 1, "{seen:?}");
        let Some(Seen::Response(to, response)) = seen.into_iter().next() else { panic!("not a response") };
        assert_eq!(to, HTTP);
        assert!(response.status < 500, "{}", response.status);
        out.clear();
        response.encode(keep_alive, &mut out);
        check_encoded_response(&out, response.status, response.head_only);
    });
}

fuzz_target!(|data: &[u8]| {
    let Some((&ctl, stream)) = data.split_first() else { return };
    let max_head = 64 + (ctl as usize & 0x0f) * 256;
    let max_body = (ctl as usize >> 4) * 64;

    let whole = frame(stream, &mut || usize::MAX, max_head, max_body);
    let mut x = 0x9e37_79b9_7f4a_7c15u64 ^ (ctl as u64) ^ ((stream.len() as u64) << 8);
    let spread = 1 + (ctl as usize % 7) * 3;
    let mut sizes = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        1 + (x as usize % spread)
    };
    let split = frame(stream, &mut sizes, max_head, max_body);

    let common = whole.requests.len().min(split.requests.len());
    assert_eq!(whole.requests[..common], split.requests[..common], "the same requests whatever the reads");
    let early = split.error.as_ref() == Some(&NOT_HTTP);
    if early && (whole.requests.len() > common || whole.error != split.error) {
        // Caught early as garbage: the whole-buffer parse must have met a
        // method the early check refuses (or failed itself).
        if let Some(req) = whole.requests.get(common) {
            let start = if common == 0 { 0 } else { whole.ends[common - 1] };
            let _ = start;
            assert!(!looks_like_method(&req.method), "{:?} refused early", req.method);
        }
    } else {
        assert_eq!(whole.requests.len(), split.requests.len(), "{whole:?} vs {split:?}");
        assert_eq!(whole.error, split.error, "same failure whatever the reads");
        if whole.error.is_none() {
            assert_eq!(whole.buffered, split.buffered);
        }
    }

    for req in &whole.requests {
        exercise(req);
    }
    if let Some(e) = &whole.error {
        let mut response = e.response();
        response.close = true;
        let mut out = Vec::new();
        response.encode(false, &mut out);
        check_encoded_response(&out, response.status, response.head_only);
        assert!(matches!(response.status, 400 | 411 | 413 | 431));
    }
    let _ = Response::empty(204);
});
