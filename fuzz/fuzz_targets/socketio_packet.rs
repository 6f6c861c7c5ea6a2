//! The Socket.IO dialect's codecs: Engine.IO packets and polling payloads,
//! Socket.IO packets, and the Chatpulse translation both ways.
//!
//! The first byte picks the mode (`byte % 3`) and a limit (`byte / 3`: the
//! most packets of a payload, or binary attachments of a packet; 16 for the
//! ASCII digits `0`, `1` and `2`); the rest is the input:
//!
//! - `0`: an Engine.IO polling body. Decoding never panics; the packets
//!   re-encode to a body that decodes to the same packets; the bytes as one
//!   WebSocket text or binary frame encode back to themselves. Every text
//!   `message` goes on through mode `1`.
//! - `1`: a Socket.IO packet (UTF-8, lossily). Decoding never panics; a
//!   decoded packet re-encodes to text that decodes to the same kind,
//!   namespace, id, attachments and payload. An `EVENT` goes through
//!   `event()` and `chatpulse::decode_event`: an accepted event is a JSON
//!   object with a string `type` (and, but for `presence` and `direct`, a
//!   string `room`), whose `Acks` answer decodes as the `ACK` it asked for;
//!   a refusal's `error` event and failed `ACK` decode as packets.
//! - `2`: a native server frame for `chatpulse::translate`. It never panics;
//!   a packet is `42[` + a JSON array starting with a string, and decodes as
//!   an `EVENT`; an answer to a request becomes an `ACK` carrying `ok: true`.
//!
//! Payloads are checked with `RawValue`, which has no nesting limit, so a
//! check does not fail where only `serde_json::Value`'s depth limit would.

#![no_main]

use std::borrow::Cow;
use std::collections::BTreeMap;

use libfuzzer_sys::fuzz_target;
use realtimehub::dialect::chatpulse::{self, Acks};
use realtimehub::dialect::engineio::{self, Data};
use realtimehub::dialect::socketio::{self, Kind, RESERVED_EVENTS};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    let limit = usize::from(mode / 3);
    match mode % 3 {
        0 => engine(rest, limit),
        1 => {
            let text = match std::str::from_utf8(rest) {
                Ok(t) => Cow::Borrowed(t),
                Err(_) => String::from_utf8_lossy(rest),
            };
            socket(&text, limit);
        }
        _ => translate(rest),
    }
});

fn engine(body: &[u8], max_packets: usize) {
    // One WebSocket binary frame: the bytes alone, or `b` + base64 when polling.
    let packet = engineio::decode_binary(body);
    assert!(packet.is_binary());
    let mut out = Vec::new();
    engineio::encode(&packet, false, &mut out);
    assert_eq!(out, body);
    out.clear();
    engineio::encode(&packet, true, &mut out);
    assert_eq!(engineio::decode_payload(&out, 1), Ok(vec![packet]));

    // One WebSocket text frame.
    if let Ok(text) = std::str::from_utf8(body) {
        match engineio::decode_text(text) {
            Ok(packet) => {
                assert!(!packet.is_binary());
                out.clear();
                engineio::encode(&packet, false, &mut out);
                let encoded = std::str::from_utf8(&out).expect("text packets encode as UTF-8");
                assert_eq!(engineio::decode_text(encoded).as_ref(), Ok(&packet), "{encoded:?}");
                use engineio::Packet::*;
                if matches!(packet, Close | Upgrade | Noop) {
                    assert_eq!(encoded.as_bytes(), &body[..1], "a type without payload keeps only its type");
                } else {
                    assert_eq!(encoded, text);
                }
            }
            Err(engineio::DecodeError::Empty) => assert!(text.is_empty()),
            Err(engineio::DecodeError::UnknownType(t)) => {
                assert_eq!(Some(&t), body.first());
                assert!(!(b'0'..=b'6').contains(&t));
            }
            Err(e) => panic!("a text frame refused with {e:?}"),
        }
    }

    // A polling body.
    let Ok(packets) = engineio::decode_payload(body, max_packets) else { return };
    assert!(!packets.is_empty() && packets.len() <= max_packets, "{} packets", packets.len());
    out.clear();
    engineio::encode_payload(&packets, &mut out);
    assert_eq!(engineio::decode_payload(&out, max_packets).as_ref(), Ok(&packets), "re-encoded as {out:?}");
    assert_eq!(out.iter().filter(|&&b| b == engineio::SEPARATOR).count(), packets.len() - 1);
    for packet in &packets {
        if let engineio::Packet::Message(Data::Text(text)) = packet {
            socket(text, max_packets);
        }
    }
}

fn socket(text: &str, max_attachments: usize) {
    let Ok(p) = socketio::decode(text, max_attachments) else { return };
    assert!(p.namespace.starts_with('/') && p.namespace.len() <= socketio::MAX_NAMESPACE_BYTES, "{:?}", p.namespace);
    assert!(p.id.is_none_or(|id| id <= socketio::MAX_ACK_ID));
    assert!(p.attachments <= max_attachments);
    assert!(p.kind.is_binary() || p.attachments == 0);

    let mut out = Vec::new();
    socketio::encode(p.kind, p.namespace, p.id, p.attachments, p.data.map(RawValue::get), &mut out);
    let encoded = std::str::from_utf8(&out).expect("encodes as UTF-8");
    let back = socketio::decode(encoded, max_attachments).unwrap_or_else(|e| panic!("{text:?} re-encoded as {encoded:?}: {e}"));
    assert_eq!(
        (back.kind, back.namespace, back.id, back.attachments, back.data.map(RawValue::get)),
        (p.kind, p.namespace, p.id, p.attachments, p.data.map(RawValue::get)),
        "{text:?} re-encoded as {encoded:?}"
    );

    if !matches!(p.kind, Kind::Event | Kind::BinaryEvent) {
        return;
    }
    let (name, args) = p.event().unwrap_or_else(|| panic!("an accepted EVENT without a name: {text:?}"));
    assert!(!RESERVED_EVENTS.contains(&name.as_str()), "{name:?}");
    match chatpulse::decode_event(&name, &args) {
        Ok(event) => {
            let native = &event.json;
            let v: Value = serde_json::from_str(native).unwrap_or_else(|e| panic!("{native:?}: {e}"));
            let Value::Object(map) = &v else { panic!("not an object: {native}") };
            let Some(Value::String(kind)) = map.get("type") else { panic!("no string type: {native}") };
            assert_eq!(chatpulse::client_name(kind), name, "{native}");
            assert_eq!(event.kind, kind, "{native}");
            if !matches!(kind.as_str(), "presence" | "direct") {
                assert!(matches!(map.get("room"), Some(Value::String(_))), "no string room: {native}");
            }
            // The acknowledgement the event asked for, once the core is done.
            let mut acks = Acks::default();
            assert!(acks.start(event.kind, p.id));
            let ack = acks.done(None);
            assert_eq!(ack.is_some(), p.id.is_some());
            if let Some(ack) = ack {
                let body = check_ack(&ack, p.id.unwrap());
                assert_eq!(body.get("ok").map(|r| r.get()), Some("true"), "{ack}");
            }
            assert_eq!(acks.done(None), None);
        }
        Err(refused) => {
            assert_eq!(refused.event, name);
            assert!(!refused.code.is_empty() && !refused.message.is_empty());
            let error = chatpulse::error_event(&refused.event, refused.code, &refused.message, refused.temp_id.as_deref());
            let (ev, arg) = check_event(&error);
            assert_eq!(ev, "error");
            let arg: Map<String, Value> = serde_json::from_str(arg.get()).expect("an object");
            assert_eq!(arg.get("event"), Some(&Value::String(name.clone())));
            assert_eq!(arg.get("tempId").and_then(Value::as_str), refused.temp_id.as_deref());
            let id = p.id.unwrap_or(0);
            let ack = chatpulse::ack_packet(id, Err((refused.code, &refused.message)));
            let body = check_ack(&ack, id);
            assert_eq!(body.get("ok").map(|r| r.get()), Some("false"), "{ack}");
        }
    }
}

fn translate(native: &[u8]) {
    let t = chatpulse::translate(native);
    if let Some(packet) = &t.packet {
        assert!(packet.starts_with("42["), "{packet:?}");
        let args: Vec<&RawValue> = serde_json::from_str(&packet[2..]).unwrap_or_else(|e| panic!("{packet:?}: {e}"));
        let name = args.first().unwrap_or_else(|| panic!("an empty array: {packet:?}"));
        let name: String = serde_json::from_str(name.get()).unwrap_or_else(|_| panic!("a name that is not a string: {packet:?}"));
        // Our own decoder takes it, unless the frame's type was a reserved
        // event name (the core sends none: its types pass through as names).
        if !RESERVED_EVENTS.contains(&name.as_str()) {
            check_event(packet);
        }
    }
    if let Some((native_type, result)) = t.reply {
        let mut acks = Acks::default();
        assert!(acks.start(native_type, Some(7)));
        acks.answer(native_type, result.clone());
        let ack = acks.done(None).expect("an ack");
        let body = check_ack(&ack, 7);
        assert_eq!(body.get("ok").map(|r| r.get()), Some("true"), "{ack}");
        // Every result field is in the acknowledgement (`ok` is the ack's own).
        for key in result.keys() {
            assert!(body.contains_key(key), "{key:?} missing from {ack}");
        }
    }
}

/// A whole Engine.IO `message` holding a Socket.IO `EVENT` with one argument:
/// its name and the argument.
fn check_event(packet: &str) -> (String, &RawValue) {
    let Ok(engineio::Packet::Message(Data::Text(text))) = engineio::decode_text(packet) else {
        panic!("not an Engine.IO message: {packet:?}")
    };
    let p = socketio::decode(text, 0).unwrap_or_else(|e| panic!("{packet:?}: {e}"));
    assert_eq!((p.kind, p.namespace, p.id), (Kind::Event, "/", None), "{packet:?}");
    let (name, args) = p.event().expect("an event");
    let [arg] = args[..] else { panic!("{} arguments: {packet:?}", args.len()) };
    (name, arg)
}

/// A whole Engine.IO `message` holding a Socket.IO `ACK` of `id` with one
/// object argument: that object's fields.
fn check_ack(packet: &str, id: u64) -> BTreeMap<String, &RawValue> {
    let Ok(engineio::Packet::Message(Data::Text(text))) = engineio::decode_text(packet) else {
        panic!("not an Engine.IO message: {packet:?}")
    };
    let p = socketio::decode(text, 0).unwrap_or_else(|e| panic!("{packet:?}: {e}"));
    assert_eq!((p.kind, p.namespace, p.id), (Kind::Ack, "/", Some(id)), "{packet:?}");
    let args: Vec<&RawValue> = serde_json::from_str(p.data.expect("a payload").get()).expect("an array");
    let [body] = args[..] else { panic!("{} arguments: {packet:?}", args.len()) };
    serde_json::from_str(body.get()).unwrap_or_else(|e| panic!("not an object: {packet:?}: {e}"))
}
