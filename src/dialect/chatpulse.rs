//! The Chatpulse events: the Socket.IO chat server's event names and payloads,
//! mapped onto the core's events and outputs.
//!
//! Inbound, an event (`join_thread`, `message_send`, …) becomes the core's
//! event as native JSON text, so the core validates every dialect's input in
//! one place. Outbound, a core frame (`joined`, `message`, …) becomes the
//! Socket.IO `EVENT` packet text the Chatpulse clients listen for. A
//! broadcast is translated once and the text shared by every Socket.IO
//! recipient; what is per connection (the acknowledgement a request waits
//! for) lives in [`Acks`].
//!
//! The rules: `threadId` (string or number) names the room of that name;
//! a numeric `userId` is its decimal string; `room` becomes `threadId`.

use std::collections::VecDeque;

use serde_json::{Map, Value};

use super::socketio::{self, Kind};

/// Why an inbound event was refused before it reached the core.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    /// The client's event name.
    pub event: String,
    /// The contract's error code.
    pub code: &'static str,
    /// What was wrong.
    pub message: String,
    /// The event's `tempId`, when it had one.
    pub temp_id: Option<String>,
}

impl Refused {
    /// A refusal of `event` with no `tempId` to echo.
    pub fn new(event: &str, code: &'static str, message: impl Into<String>) -> Refused {
        Refused { event: event.to_string(), code, message: message.into(), temp_id: None }
    }
}

/// Client event name → native event type.
const INBOUND: &[(&str, &str)] = &[
    ("join_thread", "join"),
    ("leave_thread", "leave"),
    ("message_send", "message"),
    ("message_edit", "edit"),
    ("message_delete", "delete"),
    ("typing", "typing"),
    ("message_read", "read"),
    ("presence", "presence"),
    ("history", "history"),
    ("direct", "direct"),
];

/// The Chatpulse name of a native event type (for `error.event`).
pub fn client_name(native: &str) -> &str {
    INBOUND.iter().find(|(_, n)| *n == native).map_or(native, |(c, _)| c)
}

/// A `threadId` or `userId` as the hub's string: strings as they are,
/// integers in decimal.
fn id_string(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) if n.is_u64() || n.is_i64() => Some(n.to_string()),
        _ => None,
    }
}

/// A credential from a CONNECT `auth` object: strings, or numbers for `userId`.
pub fn auth_field(auth: &Map<String, Value>, name: &str) -> Option<String> {
    auth.get(name).and_then(id_string)
}

/// A client event as the core takes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NativeEvent {
    /// The native `type` (`join`, `message`, …).
    pub kind: &'static str,
    /// The native JSON event.
    pub json: String,
}

/// Translates one client event into the core's native JSON event.
/// `args` are the event's arguments after its name (raw JSON).
pub fn decode_event(name: &str, args: &[&serde_json::value::RawValue]) -> Result<NativeEvent, Refused> {
    let refuse = |code: &'static str, message: String, temp_id: Option<String>| Refused {
        event: name.to_string(),
        code,
        message,
        temp_id,
    };
    let Some((_, native)) = INBOUND.iter().find(|(c, _)| *c == name) else {
        return Err(refuse("bad_request", format!("unknown event `{name}`"), None));
    };
    let data = match args.first() {
        Some(raw) => serde_json::from_str::<Value>(raw.get())
            .map_err(|e| refuse("bad_request", format!("not JSON: {e}"), None))?,
        None => Value::Object(Map::new()),
    };
    let Value::Object(mut map) = data else {
        return Err(refuse("bad_request", format!("`{name}` takes one object argument"), None));
    };
    let temp_id = map.get("tempId").and_then(Value::as_str).map(str::to_string);
    if let Some(thread) = map.remove("threadId") {
        let Some(room) = id_string(&thread) else {
            return Err(refuse("bad_request", "`threadId` must be a string or an integer".into(), temp_id));
        };
        map.insert("room".into(), Value::String(room));
    } else if !matches!(*native, "presence" | "direct") {
        return Err(refuse("bad_request", "missing field `threadId`".into(), temp_id));
    }
    // A `direct`'s `to` is a user id: numeric ones are their decimal string.
    if let Some(to) = map.get("to").and_then(id_string) {
        map.insert("to".into(), Value::String(to));
    }
    map.insert("type".into(), Value::String((*native).to_string()));
    Ok(NativeEvent { kind: native, json: Value::Object(map).to_string() })
}

/// What a core frame becomes for a Socket.IO client. Packets here are whole
/// Engine.IO `message` packets (`4` + the Socket.IO packet), ready for
/// either transport.
#[derive(Debug, Clone, PartialEq)]
pub struct Translated {
    /// The Socket.IO packet text (`2["name",{…}]`), or `None` when the frame
    /// has no Chatpulse counterpart (`connected`, `pong`) or only answers a
    /// request (`history`).
    pub packet: Option<String>,
    /// When the frame is the answer to a request: the native type it answers
    /// and the acknowledgement's result fields.
    pub reply: Option<(&'static str, Map<String, Value>)>,
}

/// Renames `room` to `threadId` in place.
fn to_thread(map: &mut Map<String, Value>) {
    if let Some(room) = map.remove("room") {
        map.insert("threadId".into(), room);
    }
}

fn event_packet(name: &str, data: &Value) -> String {
    event_packet_args(vec![Value::String(name.to_string()), data.clone()])
}

fn event_packet_args(args: Vec<Value>) -> String {
    let payload = Value::Array(args).to_string();
    let mut out = Vec::with_capacity(payload.len() + 2);
    out.push(b'4');
    socketio::encode(Kind::Event, "/", None, 0, Some(&payload), &mut out);
    String::from_utf8(out).unwrap_or_default()
}

/// Translates one native server frame (its JSON text).
pub fn translate(native_json: &[u8]) -> Translated {
    translate_frame(native_json, false)
}

/// Translates a frame of a room's live stream (a broadcast): a `message`
/// carries its id as a last argument, the offset socket.io-client keeps and
/// presents to recover (`socket.on("message", (data, offset) => …)`).
pub fn translate_live(native_json: &[u8]) -> Translated {
    translate_frame(native_json, true)
}

fn translate_frame(native_json: &[u8], live: bool) -> Translated {
    let none = Translated { packet: None, reply: None };
    let Ok(Value::Object(mut map)) = serde_json::from_slice::<Value>(native_json) else { return none };
    let Some(Value::String(kind)) = map.remove("type") else { return none };
    let emit = |name: &str, map: &Map<String, Value>| Some(event_packet(name, &Value::Object(map.clone())));
    match kind.as_str() {
        "connected" | "pong" => none,
        "joined" => {
            to_thread(&mut map);
            Translated { packet: emit("thread_joined", &map), reply: Some(("join", map)) }
        }
        "left" => {
            to_thread(&mut map);
            Translated { packet: emit("thread_left", &map), reply: Some(("leave", map)) }
        }
        "message" => {
            to_thread(&mut map);
            let offset = match map.get("id") {
                Some(Value::String(id)) if live => Some(id.clone()),
                _ => None,
            };
            let mut outer = Map::new();
            outer.insert("message".into(), Value::Object(map));
            let packet = match offset {
                Some(id) => {
                    event_packet_args(vec![Value::String("message".into()), Value::Object(outer), Value::String(id)])
                }
                None => event_packet("message", &Value::Object(outer)),
            };
            Translated { packet: Some(packet), reply: None }
        }
        "message_id_mapping" => {
            to_thread(&mut map);
            Translated { packet: emit("message_id_mapping", &map), reply: Some(("message", map)) }
        }
        "message_update" => {
            to_thread(&mut map);
            if let Some(Value::Object(message)) = map.get_mut("message") {
                to_thread(message);
            }
            Translated { packet: emit("message_update", &map), reply: None }
        }
        "user_joined" | "user_left" => {
            to_thread(&mut map);
            let status = if kind == "user_joined" { "online" } else { "offline" };
            map.insert("status".into(), Value::String(status.into()));
            Translated { packet: emit("presence", &map), reply: None }
        }
        // A status change: the copy per shared room (it names the room);
        // the copy per connection is for native clients.
        "presence" if !map.contains_key("room") => none,
        "typing" | "read_receipt" | "presence" | "direct" => {
            to_thread(&mut map);
            Translated { packet: emit(&kind, &map), reply: None }
        }
        "direct_sent" => Translated { packet: emit("direct_sent", &map), reply: Some(("direct", map)) },
        "room_deleted" => {
            to_thread(&mut map);
            Translated { packet: emit("thread_deleted", &map), reply: None }
        }
        "history" => {
            to_thread(&mut map);
            if let Some(Value::Array(messages)) = map.get_mut("messages") {
                for m in messages {
                    if let Value::Object(m) = m {
                        to_thread(m);
                    }
                }
            }
            Translated { packet: None, reply: Some(("history", map)) }
        }
        "error" => {
            if let Some(Value::String(event)) = map.get_mut("event") {
                *event = client_name(event).to_string();
            }
            Translated { packet: emit("error", &map), reply: None }
        }
        _ => {
            to_thread(&mut map);
            Translated { packet: emit(&kind, &map), reply: None }
        }
    }
}

/// The `error` event and the failed acknowledgement for a refusal.
pub fn error_event(event: &str, code: &str, message: &str, temp_id: Option<&str>) -> String {
    let mut map = Map::new();
    map.insert("event".into(), Value::String(event.into()));
    map.insert("code".into(), Value::String(code.into()));
    map.insert("message".into(), Value::String(message.into()));
    if let Some(t) = temp_id {
        map.insert("tempId".into(), Value::String(t.into()));
    }
    event_packet("error", &Value::Object(map))
}

/// An `ACK` packet: `{"ok":true,…result}` or `{"ok":false,"error":{code,message}}`.
pub fn ack_packet(id: u64, outcome: Result<Map<String, Value>, (&str, &str)>) -> String {
    let body = match outcome {
        Ok(mut result) => {
            result.insert("ok".into(), Value::Bool(true));
            Value::Object(result)
        }
        Err((code, message)) => serde_json::json!({"ok": false, "error": {"code": code, "message": message}}),
    };
    let payload = Value::Array(vec![body]).to_string();
    let mut out = Vec::with_capacity(payload.len() + 24);
    out.push(b'4');
    socketio::encode(Kind::Ack, "/", Some(id), 0, Some(&payload), &mut out);
    String::from_utf8(out).unwrap_or_default()
}

/// One request of a connection waiting for the core to finish it.
#[derive(Debug)]
struct Waiting {
    /// The native type it was sent as.
    native: &'static str,
    /// The client's acknowledgement id, if it asked for one.
    ack: Option<u64>,
    /// The result fields gathered from the answer frame, if one came.
    result: Option<Map<String, Value>>,
}

/// The requests of one Socket.IO connection, in order, until the core reports
/// each done; bounded by the per-read event cap times the loop iterations a
/// commit takes, and by `MAX_WAITING` whatever happens.
#[derive(Debug, Default)]
pub struct Acks {
    waiting: VecDeque<Waiting>,
}

/// Most requests of one connection the core may still be working on.
pub const MAX_WAITING: usize = 1024;

impl Acks {
    /// Records a request of native type `native` handed to the core;
    /// `false` when too many are waiting.
    pub fn start(&mut self, native: &'static str, ack: Option<u64>) -> bool {
        if self.waiting.len() >= MAX_WAITING {
            return false;
        }
        self.waiting.push_back(Waiting { native, ack, result: None });
        true
    }

    /// Notes an answer frame for the oldest request of its type.
    pub fn answer(&mut self, native: &'static str, result: Map<String, Value>) {
        if let Some(w) = self.waiting.iter_mut().find(|w| w.native == native && w.result.is_none()) {
            w.result = Some(result);
        }
    }

    /// The core finished the oldest request: its `ACK` packet, if it wanted one.
    pub fn done(&mut self, error: Option<(&str, &str)>) -> Option<String> {
        let w = self.waiting.pop_front()?;
        let id = w.ack?;
        Some(match error {
            None => ack_packet(id, Ok(w.result.unwrap_or_default())),
            Some(e) => ack_packet(id, Err(e)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::value::RawValue;

    fn raw(json: &str) -> Box<RawValue> {
        RawValue::from_string(json.to_string()).expect("raw json")
    }

    #[test]
    fn events_become_native_events_with_thread_ids_as_room_names() {
        let arg = raw(r#"{"threadId":456,"tempId":"t1","content":"hi"}"#);
        let event = decode_event("message_send", &[&arg]).expect("ok");
        assert_eq!(event.kind, "message");
        let native: Value = serde_json::from_str(&event.json).expect("json");
        assert_eq!(native["type"], "message");
        assert_eq!(native["room"], "456");
        assert_eq!(native["tempId"], "t1");
        let arg = raw(r#"{"status":"away"}"#);
        assert!(decode_event("presence", &[&arg]).is_ok());
    }

    #[test]
    fn bad_events_are_refused_naming_the_event() {
        let arg = raw(r#"{"content":"hi","tempId":"t"}"#);
        let e = decode_event("message_send", &[&arg]).expect_err("no thread");
        assert_eq!((e.event.as_str(), e.code, e.temp_id.as_deref()), ("message_send", "bad_request", Some("t")));
        assert!(e.message.contains("threadId"));
        let arg = raw(r#"{"threadId":1.5}"#);
        assert!(decode_event("join_thread", &[&arg]).is_err());
        let arg = raw(r#"[1]"#);
        assert!(decode_event("join_thread", &[&arg]).is_err());
        assert_eq!(decode_event("nope", &[]).expect_err("unknown").code, "bad_request");
    }

    #[test]
    fn frames_become_chatpulse_events() {
        let t = translate(br#"{"type":"message","id":"m1","seq":3,"room":"456","userId":"1","content":"x"}"#);
        assert_eq!(
            t.packet.as_deref(),
            Some(r#"42["message",{"message":{"content":"x","id":"m1","seq":3,"threadId":"456","userId":"1"}}]"#)
        );
        let t = translate(br#"{"type":"joined","room":"456","seq":0,"members":[]}"#);
        assert!(t.packet.expect("packet").starts_with(r#"42["thread_joined""#));
        assert_eq!(t.reply.expect("reply").0, "join");
        let t = translate(br#"{"type":"user_left","room":"9","userId":"u"}"#);
        assert_eq!(t.packet.as_deref(), Some(r#"42["presence",{"status":"offline","threadId":"9","userId":"u"}]"#));
        let t = translate(br#"{"type":"error","event":"message","code":"not_joined","message":"m"}"#);
        assert!(t.packet.expect("packet").contains(r#""event":"message_send""#));
        assert_eq!(translate(br#"{"type":"pong"}"#).packet, None);
    }

    #[test]
    fn acks_follow_requests_in_order_with_their_answers() {
        let mut acks = Acks::default();
        assert!(acks.start("join", Some(7)));
        assert!(acks.start("typing", None));
        let mut result = Map::new();
        result.insert("seq".into(), Value::from(4));
        acks.answer("join", result);
        assert_eq!(acks.done(None).as_deref(), Some(r#"437[{"ok":true,"seq":4}]"#));
        assert_eq!(acks.done(None), None);
        assert!(acks.start("leave", Some(8)));
        let failed = acks.done(Some(("not_joined", "m"))).expect("ack");
        assert_eq!(failed, r#"438[{"error":{"code":"not_joined","message":"m"},"ok":false}]"#);
    }
}
