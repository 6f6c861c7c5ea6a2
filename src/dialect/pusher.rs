//! The Pusher protocol 7 codec (pusher-js, Laravel Echo): client messages
//! decoded into what the shell asks the core, and the core's native frames
//! translated into Pusher events. Sans-IO and unit-tested.
//!
//! Every server message is `{"event","channel"?,"data"}` with `data` a JSON
//! string, as Pusher sends it (pusher-js parses it back).

use serde_json::{json, Map, Value};

/// Pusher's own `activity_timeout` (s); the hub asks for less when its idle
/// timeout is shorter (see [`activity_timeout`]).
pub const ACTIVITY_TIMEOUT_SECONDS: u64 = 120;

/// The `activity_timeout` to announce: how long a client may stay silent
/// before it pings, well inside the hub's idle timeout (`idle_seconds`).
pub fn activity_timeout(idle_seconds: u64) -> u64 {
    (idle_seconds / 2).clamp(1, ACTIVITY_TIMEOUT_SECONDS)
}

/// A message from a Pusher client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientMessage {
    /// `pusher:subscribe`.
    Subscribe {
        /// The channel (a room of the same name).
        channel: String,
        /// `appKey:HMAC` for private and presence channels.
        auth: Option<String>,
        /// Presence: `{"user_id","user_info"?}` as the backend signed it (JSON text).
        channel_data: Option<String>,
    },
    /// `pusher:unsubscribe`.
    Unsubscribe {
        /// The channel left.
        channel: String,
    },
    /// `pusher:ping`.
    Ping,
    /// `pusher:pong`.
    Pong,
    /// `client-…` on a channel.
    ClientEvent {
        /// The event name (`client-…`).
        event: String,
        /// The channel it goes to.
        channel: String,
        /// Its data as JSON text.
        data: String,
    },
    /// Any other `pusher:` event (`pusher:signin`…): not supported.
    Unsupported(String),
}

/// Why a client message was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadMessage(pub String);

/// Decodes one text frame from a Pusher client.
pub fn decode(text: &str) -> Result<ClientMessage, BadMessage> {
    let bad = |m: &str| BadMessage(m.to_string());
    let Ok(Value::Object(mut map)) = serde_json::from_str::<Value>(text) else {
        return Err(bad("a message is a JSON object"));
    };
    let Some(Value::String(event)) = map.remove("event") else { return Err(bad("a message needs an `event`")) };
    // `data` is an object or, from some clients, a JSON string holding one.
    let data = match map.remove("data") {
        Some(Value::String(s)) if event.starts_with("pusher:") => serde_json::from_str(&s).unwrap_or(Value::String(s)),
        Some(v) => v,
        None => Value::Null,
    };
    let field = |name: &str| data.get(name).and_then(Value::as_str).map(str::to_string);
    match event.as_str() {
        "pusher:subscribe" => {
            let channel = field("channel").ok_or_else(|| bad("pusher:subscribe needs data.channel"))?;
            Ok(ClientMessage::Subscribe { channel, auth: field("auth"), channel_data: field("channel_data") })
        }
        "pusher:unsubscribe" => {
            Ok(ClientMessage::Unsubscribe { channel: field("channel").ok_or_else(|| bad("needs data.channel"))? })
        }
        "pusher:ping" => Ok(ClientMessage::Ping),
        "pusher:pong" => Ok(ClientMessage::Pong),
        e if e.starts_with("client-") => {
            let Some(Value::String(channel)) = map.remove("channel") else {
                return Err(bad("a client event needs a `channel`"));
            };
            let data = match data {
                Value::String(s) => s,
                other => other.to_string(),
            };
            Ok(ClientMessage::ClientEvent { event, channel, data })
        }
        _ => Ok(ClientMessage::Unsupported(event)),
    }
}

/// A server message: `{"event","channel"?,"data": JSON text}`.
pub fn message(event: &str, channel: Option<&str>, data: &str) -> String {
    let mut map = Map::new();
    map.insert("event".into(), Value::String(event.into()));
    if let Some(channel) = channel {
        map.insert("channel".into(), Value::String(channel.into()));
    }
    map.insert("data".into(), Value::String(data.into()));
    Value::Object(map).to_string()
}

/// `pusher:connection_established`.
pub fn connection_established(socket_id: &str, activity_timeout: u64) -> String {
    let data = json!({"socket_id": socket_id, "activity_timeout": activity_timeout}).to_string();
    message("pusher:connection_established", None, &data)
}

/// `pusher:error` (its `data` is an object, as Pusher sends it).
pub fn error(code: Option<u16>, text: &str) -> String {
    json!({"event": "pusher:error", "data": {"code": code, "message": text}}).to_string()
}

/// `pusher:subscription_error` on a channel: pusher-js emits it on the
/// channel, as for a failed authorization.
pub fn subscription_error(channel: &str, status: u16, text: &str) -> String {
    let data = json!({"type": "AuthError", "error": text, "status": status}).to_string();
    message("pusher:subscription_error", Some(channel), &data)
}

/// `pusher_internal:subscription_succeeded`: for a presence channel with
/// every member and what each shows.
pub fn subscription_succeeded(channel: &str, presence: Option<&[(String, Option<String>)]>) -> String {
    let data = match presence {
        None => "{}".to_string(),
        Some(members) => {
            let ids: Vec<&str> = members.iter().map(|(id, _)| id.as_str()).collect();
            let hash: Map<String, Value> = members.iter().map(|(id, info)| (id.clone(), info_value(info))).collect();
            json!({"presence": {"ids": ids, "hash": hash, "count": ids.len()}}).to_string()
        }
    };
    message("pusher_internal:subscription_succeeded", Some(channel), &data)
}

fn info_value(info: &Option<String>) -> Value {
    info.as_deref().and_then(|i| serde_json::from_str(i).ok()).unwrap_or(Value::Null)
}

/// `pusher_internal:member_added`.
pub fn member_added(channel: &str, user: &str, info: &Option<String>) -> String {
    let data = json!({"user_id": user, "user_info": info_value(info)}).to_string();
    message("pusher_internal:member_added", Some(channel), &data)
}

/// What a native frame becomes for a Pusher connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Translated {
    /// Nothing (the frame has no Pusher counterpart).
    Nothing,
    /// This message.
    Message(String),
    /// The subscription to this channel succeeded (`joined`): the shell adds
    /// the presence members of a presence channel.
    Subscribed(String),
    /// A user's first connection entered this presence channel: the shell
    /// adds what the member shows.
    MemberAdded {
        /// The presence channel.
        channel: String,
        /// The user who entered it.
        user: String,
    },
    /// An error not tied to a subscription (those end with the request).
    Error(String),
}

/// Translates one native frame (its JSON text) for a Pusher connection.
pub fn translate(native_json: &[u8]) -> Translated {
    let Ok(Value::Object(map)) = serde_json::from_slice::<Value>(native_json) else { return Translated::Nothing };
    let text = |name: &str| map.get(name).and_then(Value::as_str).unwrap_or_default().to_string();
    let kind = text("type");
    let room = text("room");
    match kind.as_str() {
        "joined" => Translated::Subscribed(room),
        // A hub room's own traffic: the event named as the native frame,
        // its data the native frame's JSON.
        "message" | "message_update" | "typing" | "read_receipt" => {
            Translated::Message(message(&kind, Some(&room), &String::from_utf8_lossy(native_json)))
        }
        "user_joined" if room.starts_with("presence-") => {
            Translated::MemberAdded { channel: room, user: text("userId") }
        }
        "user_left" if room.starts_with("presence-") => {
            let data = json!({"user_id": text("userId")}).to_string();
            Translated::Message(message("pusher_internal:member_removed", Some(&room), &data))
        }
        "event" => {
            let mut m = Map::new();
            m.insert("event".into(), Value::String(text("event")));
            m.insert("channel".into(), Value::String(room));
            m.insert("data".into(), Value::String(text("data")));
            if let Some(Value::String(user)) = map.get("userId") {
                m.insert("user_id".into(), Value::String(user.clone()));
            }
            Translated::Message(Value::Object(m).to_string())
        }
        // Refused joins end their request (a subscription error); others are connection errors.
        "error" if map.get("event").and_then(Value::as_str) != Some("join") => {
            Translated::Error(error(None, &text("message")))
        }
        _ => Translated::Nothing,
    }
}

/// The kind of a channel, by its name's prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelKind {
    /// No prefix: anyone may subscribe.
    Public,
    /// `private-`: signed `socket_id:channel`.
    Private,
    /// `private-encrypted-`: as private; payloads are relayed as they are.
    Encrypted,
    /// `presence-`: signed `socket_id:channel:channel_data`, with members.
    Presence,
}

impl ChannelKind {
    /// The kind of `channel`.
    pub fn of(channel: &str) -> ChannelKind {
        if channel.starts_with("private-encrypted-") {
            ChannelKind::Encrypted
        } else if channel.starts_with("private-") {
            ChannelKind::Private
        } else if channel.starts_with("presence-") {
            ChannelKind::Presence
        } else {
            ChannelKind::Public
        }
    }

    /// What the backend signs for a subscription.
    pub fn string_to_sign(self, socket_id: &str, channel: &str, channel_data: Option<&str>) -> String {
        match (self, channel_data) {
            (ChannelKind::Presence, Some(data)) => format!("{socket_id}:{channel}:{data}"),
            _ => format!("{socket_id}:{channel}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_what_pusher_js_sends() {
        let m = decode(r#"{"event":"pusher:subscribe","data":{"auth":"k:s","channel":"private-a"}}"#).unwrap();
        assert_eq!(
            m,
            ClientMessage::Subscribe { channel: "private-a".into(), auth: Some("k:s".into()), channel_data: None }
        );
        let m = decode(r#"{"event":"pusher:subscribe","data":"{\"channel\":\"general\"}"}"#).unwrap();
        assert!(matches!(m, ClientMessage::Subscribe { channel, .. } if channel == "general"));
        assert_eq!(decode(r#"{"event":"pusher:ping","data":{}}"#).unwrap(), ClientMessage::Ping);
        let m = decode(r#"{"event":"client-typing","channel":"private-a","data":{"x":1}}"#).unwrap();
        assert_eq!(
            m,
            ClientMessage::ClientEvent {
                event: "client-typing".into(),
                channel: "private-a".into(),
                data: r#"{"x":1}"#.into()
            }
        );
        assert!(decode("[]").is_err());
        assert!(decode(r#"{"data":{}}"#).is_err());
        assert!(decode(r#"{"event":"pusher:subscribe","data":{}}"#).is_err());
        assert!(decode(r#"{"event":"client-x","data":{}}"#).is_err());
        assert_eq!(
            decode(r#"{"event":"pusher:signin","data":{}}"#).unwrap(),
            ClientMessage::Unsupported("pusher:signin".into())
        );
    }

    #[test]
    fn translates_room_traffic_into_events_with_the_native_json() {
        let native = br#"{"type":"message","id":"m_1","seq":1,"room":"general","userId":"u","content":"hi"}"#;
        let Translated::Message(m) = translate(native) else { panic!() };
        let v: Value = serde_json::from_str(&m).unwrap();
        assert_eq!((v["event"].as_str(), v["channel"].as_str()), (Some("message"), Some("general")));
        let data: Value = serde_json::from_str(v["data"].as_str().unwrap()).unwrap();
        assert_eq!(data["content"], "hi");
        assert_eq!(
            translate(br#"{"type":"joined","room":"a","seq":0,"members":[]}"#),
            Translated::Subscribed("a".into())
        );
        assert_eq!(translate(br#"{"type":"user_joined","room":"general","userId":"u"}"#), Translated::Nothing);
        assert!(matches!(
            translate(br#"{"type":"user_joined","room":"presence-a","userId":"u"}"#),
            Translated::MemberAdded { .. }
        ));
        let Translated::Message(m) =
            translate(br#"{"type":"event","room":"private-a","event":"client-x","data":"{}","userId":"u"}"#)
        else {
            panic!()
        };
        assert_eq!(m, r#"{"channel":"private-a","data":"{}","event":"client-x","user_id":"u"}"#);
        assert_eq!(
            translate(br#"{"type":"error","event":"join","code":"forbidden","message":"x"}"#),
            Translated::Nothing
        );
        assert!(matches!(
            translate(br#"{"type":"error","event":null,"code":"bad_request","message":"x"}"#),
            Translated::Error(_)
        ));
    }

    #[test]
    fn presence_data_lists_every_member_once() {
        let members = vec![("a".to_string(), Some(r#"{"name":"A"}"#.to_string())), ("b".to_string(), None)];
        let m: Value = serde_json::from_str(&subscription_succeeded("presence-x", Some(&members))).unwrap();
        let data: Value = serde_json::from_str(m["data"].as_str().unwrap()).unwrap();
        assert_eq!(data, json!({"presence": {"ids": ["a", "b"], "hash": {"a": {"name": "A"}, "b": null}, "count": 2}}));
        assert_eq!(ChannelKind::of("private-encrypted-x"), ChannelKind::Encrypted);
        assert_eq!(ChannelKind::Presence.string_to_sign("1.2", "presence-x", Some("{}")), "1.2:presence-x:{}");
    }
}
