//! Engine.IO protocol v4 packets: the transport layer under Socket.IO.
//!
//! A packet is a type digit and an optional payload. Over WebSocket each text
//! frame is one packet and a binary frame is one binary `message`; over HTTP
//! long-polling a body holds several packets joined by the record separator
//! (`\x1e`), binary ones as `b` + base64. Decoding borrows from the input and
//! allocates only for base64.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;

/// The record separator between packets of a long-polling payload.
pub const SEPARATOR: u8 = 0x1e;

/// One Engine.IO packet; text payloads borrow from the decoded input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet<'a> {
    /// `0`: the handshake, its payload the session's JSON settings.
    Open(&'a str),
    /// `1`: the transport may be closed.
    Close,
    /// `2`: a heartbeat (from the server), or `2probe` during an upgrade.
    Ping(&'a str),
    /// `3`: the answer to a ping, or `3probe`.
    Pong(&'a str),
    /// `4`: application data (a Socket.IO packet).
    Message(Data<'a>),
    /// `5`: the client switched to the WebSocket it probed.
    Upgrade,
    /// `6`: nothing; ends a pending poll during an upgrade.
    Noop,
}

/// A `message` payload: text, or bytes (a Socket.IO binary attachment).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Data<'a> {
    /// A text payload.
    Text(&'a str),
    /// A binary payload.
    Binary(Vec<u8>),
}

/// Why input is not an Engine.IO packet; the session is closed (the protocol
/// has no error packet), after a 400 for a polling request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    /// An empty packet: not even a type.
    Empty,
    /// A type that is not one of `0`–`6` (or `b` in a polling payload).
    UnknownType(u8),
    /// A `b` packet whose base64 does not decode.
    BadBase64,
    /// A payload that is not UTF-8 text.
    NotText,
    /// More packets in one polling payload than allowed.
    TooManyPackets(usize),
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DecodeError::Empty => write!(f, "an empty Engine.IO packet"),
            DecodeError::UnknownType(t) => write!(f, "unknown Engine.IO packet type {:?}", *t as char),
            DecodeError::BadBase64 => write!(f, "a binary packet whose base64 does not decode"),
            DecodeError::NotText => write!(f, "a text packet that is not UTF-8"),
            DecodeError::TooManyPackets(max) => write!(f, "more than {max} packets in one payload"),
        }
    }
}

impl std::error::Error for DecodeError {}

/// Decodes one text packet (a WebSocket text frame, or one part of a payload).
pub fn decode_text(text: &str) -> Result<Packet<'_>, DecodeError> {
    let (&kind, _) = text.as_bytes().split_first().ok_or(DecodeError::Empty)?;
    if !(b'0'..=b'6').contains(&kind) {
        return Err(DecodeError::UnknownType(kind));
    }
    // The type is one ASCII byte, so the rest starts on a character boundary.
    let rest = &text[1..];
    Ok(match kind {
        b'0' => Packet::Open(rest),
        b'1' => Packet::Close,
        b'2' => Packet::Ping(rest),
        b'3' => Packet::Pong(rest),
        b'4' => Packet::Message(Data::Text(rest)),
        b'5' => Packet::Upgrade,
        b'6' => Packet::Noop,
        other => return Err(DecodeError::UnknownType(other)),
    })
}

/// A WebSocket binary frame: a binary `message` (v4 sends no type byte).
pub fn decode_binary(bytes: &[u8]) -> Packet<'static> {
    Packet::Message(Data::Binary(bytes.to_vec()))
}

/// Decodes a long-polling request body: packets split on the record
/// separator, at most `max_packets` of them (the body size is bounded by the
/// HTTP layer before this runs).
pub fn decode_payload(body: &[u8], max_packets: usize) -> Result<Vec<Packet<'_>>, DecodeError> {
    let text = std::str::from_utf8(body).map_err(|_| DecodeError::NotText)?;
    let mut packets = Vec::new();
    for part in text.split(SEPARATOR as char) {
        if packets.len() == max_packets {
            return Err(DecodeError::TooManyPackets(max_packets));
        }
        packets.push(match part.strip_prefix('b') {
            Some(b64) => Packet::Message(Data::Binary(STANDARD.decode(b64).map_err(|_| DecodeError::BadBase64)?)),
            None => decode_text(part)?,
        });
    }
    Ok(packets)
}

/// Appends a packet as text: a WebSocket text frame's content, or (with
/// `polling`) one part of a payload, binary as `b` + base64. A binary
/// message over WebSocket is sent as a binary frame instead: see
/// [`Packet::is_binary`].
pub fn encode(packet: &Packet<'_>, polling: bool, out: &mut Vec<u8>) {
    let (kind, text): (u8, &str) = match packet {
        Packet::Open(json) => (b'0', json),
        Packet::Close => (b'1', ""),
        Packet::Ping(data) => (b'2', data),
        Packet::Pong(data) => (b'3', data),
        Packet::Message(Data::Text(data)) => (b'4', data),
        Packet::Message(Data::Binary(bytes)) => {
            if polling {
                out.push(b'b');
                out.extend_from_slice(STANDARD.encode(bytes).as_bytes());
            } else {
                out.extend_from_slice(bytes);
            }
            return;
        }
        Packet::Upgrade => (b'5', ""),
        Packet::Noop => (b'6', ""),
    };
    out.push(kind);
    out.extend_from_slice(text.as_bytes());
}

/// Joins packets into one long-polling response body.
pub fn encode_payload<'a>(packets: impl IntoIterator<Item = &'a Packet<'a>>, out: &mut Vec<u8>) {
    for (i, packet) in packets.into_iter().enumerate() {
        if i > 0 {
            out.push(SEPARATOR);
        }
        encode(packet, true, out);
    }
}

impl Packet<'_> {
    /// True for a binary `message`, which WebSocket carries as a binary frame.
    pub fn is_binary(&self) -> bool {
        matches!(self, Packet::Message(Data::Binary(_)))
    }
}

/// The settings an `open` packet announces, as JSON.
pub fn open_payload(
    sid: &str,
    upgrades: &[&str],
    ping_interval_ms: u64,
    ping_timeout_ms: u64,
    max_payload: usize,
) -> String {
    serde_json::json!({
        "sid": sid,
        "upgrades": upgrades,
        "pingInterval": ping_interval_ms,
        "pingTimeout": ping_timeout_ms,
        "maxPayload": max_payload,
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_packet_type_round_trips_as_text() {
        let cases = [
            ("0{\"sid\":\"x\"}", Packet::Open("{\"sid\":\"x\"}")),
            ("1", Packet::Close),
            ("2", Packet::Ping("")),
            ("2probe", Packet::Ping("probe")),
            ("3probe", Packet::Pong("probe")),
            ("4hello é", Packet::Message(Data::Text("hello é"))),
            ("5", Packet::Upgrade),
            ("6", Packet::Noop),
        ];
        for (wire, packet) in cases {
            assert_eq!(decode_text(wire), Ok(packet.clone()), "{wire:?}");
            let mut out = Vec::new();
            encode(&packet, false, &mut out);
            assert_eq!(out, wire.as_bytes());
        }
    }

    #[test]
    fn refusals_say_why() {
        assert_eq!(decode_text(""), Err(DecodeError::Empty));
        assert_eq!(decode_text("7"), Err(DecodeError::UnknownType(b'7')));
        assert_eq!(decode_text("é"), Err(DecodeError::UnknownType(0xc3)));
        assert_eq!(decode_payload(b"4a\x1ebnot base64!", 10), Err(DecodeError::BadBase64));
        assert_eq!(decode_payload(b"4\xff", 10), Err(DecodeError::NotText));
        assert_eq!(decode_payload(b"2\x1e2\x1e2", 2), Err(DecodeError::TooManyPackets(2)));
        assert_eq!(decode_payload(b"", 2), Err(DecodeError::Empty));
        assert_eq!(decode_payload(b"4a\x1e", 2), Err(DecodeError::Empty), "a trailing separator");
    }

    #[test]
    fn polling_payloads_join_and_split_with_binary_as_base64() {
        let packets = vec![
            Packet::Message(Data::Text("hello")),
            Packet::Ping(""),
            Packet::Message(Data::Binary(vec![1, 2, 3, 4])),
        ];
        let mut body = Vec::new();
        encode_payload(&packets, &mut body);
        assert_eq!(body, b"4hello\x1e2\x1ebAQIDBA==");
        assert_eq!(decode_payload(&body, 16), Ok(packets));
    }

    #[test]
    fn binary_over_websocket_is_the_bytes_alone() {
        let packet = decode_binary(&[9, 8]);
        assert!(packet.is_binary());
        let mut out = Vec::new();
        encode(&packet, false, &mut out);
        assert_eq!(out, [9, 8]);
    }

    #[test]
    fn the_open_packet_names_every_setting() {
        let json = open_payload("abc", &["websocket"], 25000, 20000, 1_000_000);
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"sid": "abc", "upgrades": ["websocket"], "pingInterval": 25000, "pingTimeout": 20000, "maxPayload": 1000000})
        );
    }
}
