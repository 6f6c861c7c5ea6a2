//! Strict HTTP framing against the real binary (issue 17, items 4 and 5): a head with bare-LF
//! line endings cannot hide a request in another request's body, and `Content-Length` is
//! digits only, sent once. Each refusal is a 400 followed by the close of the connection,
//! and nothing of what followed it is executed.
//!
//! Every wait is bounded: responses by the harness's 10 s read timeout, the close by 5 s.

mod common;

use common::{Http, Hub};
use std::io::{ErrorKind, Read, Write};
use std::time::{Duration, Instant};

/// Reads until EOF or reset within `timeout`; the bytes that came. Panics if still open.
fn bytes_until_close(http: &mut Http, timeout: Duration) -> Vec<u8> {
    let deadline = Instant::now() + timeout;
    let mut got = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "connection still open {timeout:?} after a framing error; got {got:?}");
        http.stream.set_read_timeout(Some(left)).expect("set_read_timeout");
        match http.stream.read(&mut chunk) {
            Ok(0) => return got,
            Ok(n) => got.extend_from_slice(&chunk[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::ConnectionReset | ErrorKind::BrokenPipe) => return got,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => continue,
            Err(e) => panic!("reading after a framing error: {e}"),
        }
    }
}

/// Sends `bytes` (all at once, or one byte per write), expects exactly one 400 and then
/// the close of the connection.
fn expect_400_then_close(hub: &Hub, bytes: &[u8], bytewise: bool, what: &str) {
    let mut http = hub.http();
    if bytewise {
        for b in bytes {
            // The hub may answer and close before the last bytes: stop writing then.
            if http.stream.write_all(&[*b]).is_err() {
                break;
            }
        }
    } else {
        let _ = http.stream.write_all(bytes);
    }
    let _ = http.stream.flush();
    let resp = http.read_response();
    assert_eq!(resp.status, 400, "{what}: {resp:?}");
    assert_eq!(resp.json()["error"]["code"], "bad_request", "{what}: {resp:?}");
    let rest = bytes_until_close(&mut http, Duration::from_secs(5));
    assert!(rest.is_empty(), "{what}: bytes after the 400: {:?}", String::from_utf8_lossy(&rest));
}

/// The names of the project's rooms.
fn room_names(hub: &Hub, key: &str) -> Vec<String> {
    let resp = hub.get("/api/v1/rooms", Some(key));
    assert_eq!(resp.status, 200, "{resp:?}");
    let v = resp.json();
    let rooms = v["rooms"].as_array().or_else(|| v.as_array()).cloned().unwrap_or_default();
    rooms.iter().filter_map(|r| r["name"].as_str().map(str::to_string)).collect()
}

/// A complete request creating the public room `name`.
fn create_room_request(key: &str, name: &str) -> Vec<u8> {
    let body = format!("{{\"name\":\"{name}\",\"type\":\"public\"}}");
    format!(
        "POST /api/v1/rooms HTTP/1.1\r\nHost: x\r\nX-API-Key: {key}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

#[test]
fn a_bare_lf_head_cannot_smuggle_the_request_in_the_next_body() {
    let hub = Hub::start();
    let (_, key) = hub.create_project("smuggling");
    for (bytewise, name) in [(false, "smuggled"), (true, "smuggled-bytewise")] {
        // The outer GET ends at `\n\n` for httparse; the POST head after it carries, as its
        // body, a request that creates a room. Framed at the CRLFCRLF, the POST head was
        // swallowed and its body ran as a request of its own.
        let inner = create_room_request(&key, name);
        let mut attack = b"GET /health HTTP/1.1\r\nHost: x\n\n".to_vec();
        attack.extend_from_slice(
            format!(
                "POST /api/v1/rooms HTTP/1.1\r\nHost: x\r\nX-API-Key: {key}\r\nContent-Length: {}\r\n\r\n",
                inner.len()
            )
            .as_bytes(),
        );
        attack.extend_from_slice(&inner);
        expect_400_then_close(&hub, &attack, bytewise, &format!("bare-LF smuggling (bytewise {bytewise})"));
        assert!(!room_names(&hub, &key).contains(&name.to_string()), "the smuggled request ran: room {name:?}");
    }
    // Bare LF anywhere in a head, even a lone one, is refused too.
    for head in [&b"GET /health HTTP/1.1\n\n"[..], b"GET /health HTTP/1.1\r\nHost: x\n\r\n"] {
        expect_400_then_close(&hub, head, false, &format!("{:?}", String::from_utf8_lossy(head)));
    }
    // A CRLF request still works, with one empty line before it (RFC 9112 §2.2).
    let mut http = hub.http();
    http.send_raw(b"\r\nGET /health HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(http.read_response().status, 200);
}

#[test]
fn content_length_must_be_digits_sent_once() {
    let hub = Hub::start();
    let (_, key) = hub.create_project("lengths");
    // Each name is four letters, so every body has the same length.
    let body = |name: &str| format!(r#"{{"name":"{name}","type":"public"}}"#);
    let len = body("plus").len();
    let cases: [(&str, String); 7] = [
        ("plus", format!("Content-Length: +{len}\r\n")),
        ("hexa", format!("Content-Length: 0x{len:x}\r\n")),
        ("list", format!("Content-Length: {len}, {len}\r\n")),
        ("spcs", format!("Content-Length: {} {}\r\n", len / 10, len % 10)),
        ("nbsp", format!("Content-Length: \u{a0}{len}\r\n")),
        ("twic", format!("Content-Length: {len}\r\nContent-Length: {len}\r\n")),
        ("conf", format!("Content-Length: {len}\r\nContent-Length: {}\r\n", len + 1)),
    ];
    for (name, header) in &cases {
        let body = body(name);
        let req = format!(
            "POST /api/v1/rooms HTTP/1.1\r\nHost: x\r\nX-API-Key: {key}\r\nContent-Type: application/json\r\n\
             {header}\r\n{body}"
        );
        expect_400_then_close(&hub, req.as_bytes(), false, &format!("Content-Length case {name}: {header:?}"));
        assert!(!room_names(&hub, &key).contains(&name.to_string()), "case {name}: the request ran");
    }
    // Leading zeros and optional whitespace are still a valid length.
    let body = body("padd");
    let req = format!(
        "POST /api/v1/rooms HTTP/1.1\r\nHost: x\r\nX-API-Key: {key}\r\nContent-Type: application/json\r\n\
         Content-Length: \t00{len} \r\n\r\n{body}"
    );
    let mut http = hub.http();
    http.send_raw(req.as_bytes());
    let resp = http.read_response();
    assert_eq!(resp.status, 201, "{resp:?}");
    assert!(room_names(&hub, &key).contains(&"padd".to_string()));
}
