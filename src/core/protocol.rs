//! The WebSocket wire format: decoding client events and encoding server
//! frames.
//!
//! Decoding parses into one flat, borrowing struct (no tagged-enum buffering),
//! then checks what each `type` needs, so every refusal can name the event and
//! the missing or wrong field. Encoding serialises a frame's JSON once and wraps
//! it in an unmasked text-frame header once, giving the [`Wire`] bytes every
//! recipient shares.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::model::{HistoryQuery, MessageRow, Status};
use super::Wire;

/// Largest page of history one request may ask for.
pub const MAX_HISTORY_LIMIT: u32 = 1000;
/// Default page of history.
pub const DEFAULT_HISTORY_LIMIT: u32 = 50;
/// Most message ids one `read` may carry.
pub const MAX_READ_IDS: usize = 1000;

/// A client event after validation. Fields are the wire fields of the
/// contract (`tempId` is `temp_id`, and so on), borrowed from the frame.
#[derive(Debug)]
pub enum ClientEvent<'a> {
    /// Join a room, optionally replaying what was missed after `since`.
    Join {
        /// Room name.
        room: Cow<'a, str>,
        /// Last `seq` the client has; replay what follows.
        since: Option<u64>,
    },
    /// Leave a room.
    Leave {
        /// Room name.
        room: Cow<'a, str>,
    },
    /// Send a message to a joined room.
    Message {
        /// Room name.
        room: Cow<'a, str>,
        /// Text content.
        content: Cow<'a, str>,
        /// The sender's idempotency key.
        temp_id: Option<Cow<'a, str>>,
        /// Media type of the content (default `text/plain`).
        content_type: Option<Cow<'a, str>>,
        /// A JSON array, stored and echoed verbatim.
        attachments: Option<&'a RawValue>,
    },
    /// Set this user's status.
    Presence {
        /// online, away or busy.
        status: Status,
    },
    /// Typing indicator.
    Typing {
        /// Room name.
        room: Cow<'a, str>,
        /// Started (true) or stopped (false).
        is_typing: bool,
    },
    /// Read receipts.
    Read {
        /// Room name.
        room: Cow<'a, str>,
        /// Messages read (1-1000).
        message_ids: Vec<Cow<'a, str>>,
    },
    /// Edit one's own message.
    Edit {
        /// Room name.
        room: Cow<'a, str>,
        /// The message to change.
        message_id: Cow<'a, str>,
        /// Its new content.
        content: Cow<'a, str>,
    },
    /// Delete one's own message.
    Delete {
        /// Room name.
        room: Cow<'a, str>,
        /// The message to delete.
        message_id: Cow<'a, str>,
    },
    /// Unicast to every connection of a user.
    Direct {
        /// Recipient user id.
        to: Cow<'a, str>,
        /// Text content.
        content: Cow<'a, str>,
        /// Echoed in `direct_sent`.
        temp_id: Option<Cow<'a, str>>,
    },
    /// Page through a room's stored messages.
    History {
        /// Room name.
        room: Cow<'a, str>,
        /// Which page.
        query: HistoryQuery,
    },
    /// Application-level ping.
    Ping,
}

impl ClientEvent<'_> {
    /// The event's wire name, for error frames.
    pub fn name(&self) -> &'static str {
        match self {
            ClientEvent::Join { .. } => "join",
            ClientEvent::Leave { .. } => "leave",
            ClientEvent::Message { .. } => "message",
            ClientEvent::Presence { .. } => "presence",
            ClientEvent::Typing { .. } => "typing",
            ClientEvent::Read { .. } => "read",
            ClientEvent::Edit { .. } => "edit",
            ClientEvent::Delete { .. } => "delete",
            ClientEvent::Direct { .. } => "direct",
            ClientEvent::History { .. } => "history",
            ClientEvent::Ping => "ping",
        }
    }
}

/// Why a client event was refused at decoding: answered with an `error` frame
/// whose code is `bad_request`; the connection stays open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError {
    /// The event type, when one could be read.
    pub event: Option<String>,
    /// What was wrong.
    pub message: String,
    /// The event's `tempId`, when one could be read.
    pub temp_id: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawEvent<'a> {
    #[serde(rename = "type", borrow)]
    kind: Option<Cow<'a, str>>,
    #[serde(borrow)]
    room: Option<Cow<'a, str>>,
    since: Option<u64>,
    before: Option<u64>,
    after: Option<u64>,
    limit: Option<u64>,
    #[serde(borrow)]
    content: Option<Cow<'a, str>>,
    #[serde(borrow)]
    temp_id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    content_type: Option<Cow<'a, str>>,
    #[serde(borrow)]
    attachments: Option<&'a RawValue>,
    #[serde(borrow)]
    status: Option<Cow<'a, str>>,
    is_typing: Option<bool>,
    #[serde(borrow)]
    message_ids: Option<Vec<Cow<'a, str>>>,
    #[serde(borrow)]
    message_id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    to: Option<Cow<'a, str>>,
}

/// Reads only what an error frame needs, ignoring every other field's type.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Envelope<'a> {
    #[serde(rename = "type", borrow)]
    kind: Option<Cow<'a, str>>,
    #[serde(borrow)]
    temp_id: Option<Cow<'a, str>>,
}

/// The `type` and `tempId` of a frame, if it is JSON: what an error about a
/// frame that is refused before decoding (rate limit) can still name.
pub fn peek_event(text: &str) -> (Option<String>, Option<String>) {
    if !is_object(text) {
        return (None, None);
    }
    match serde_json::from_str::<Envelope>(text) {
        Ok(e) => (e.kind.map(Cow::into_owned), e.temp_id.map(Cow::into_owned)),
        Err(_) => (None, None),
    }
}

/// True when the JSON text is an object: serde would otherwise read an
/// array's elements into a struct's fields in order.
fn is_object(text: &str) -> bool {
    text.trim_start_matches([' ', '\t', '\n', '\r']).starts_with('{')
}

/// Decodes one text frame into a client event.
pub fn decode_client_event(text: &str) -> Result<ClientEvent<'_>, DecodeError> {
    if !is_object(text) {
        let message = "an event is a JSON object with a `type`".to_string();
        return Err(DecodeError { event: None, message, temp_id: None });
    }
    let raw: RawEvent = match serde_json::from_str(text) {
        Ok(raw) => raw,
        Err(err) => {
            let (event, temp_id) = peek_event(text);
            let message =
                if event.is_some() { format!("bad field: {err}") } else { format!("not a JSON event: {err}") };
            return Err(DecodeError { event, message, temp_id });
        }
    };
    let Some(kind) = raw.kind.clone() else {
        return Err(DecodeError { event: None, message: "missing field `type`".into(), temp_id: None });
    };
    let fail = |message: String| DecodeError {
        event: Some(kind.to_string()),
        message,
        temp_id: raw.temp_id.as_ref().map(|t| t.to_string()),
    };
    let missing = |field: &str| fail(format!("missing field `{field}`"));
    let room = || raw.room.clone().ok_or_else(|| missing("room"));
    let event = match kind.as_ref() {
        "join" => ClientEvent::Join { room: room()?, since: raw.since },
        "leave" => ClientEvent::Leave { room: room()? },
        "message" => {
            if let Some(attachments) = raw.attachments {
                if !attachments.get().trim_start().starts_with('[') {
                    return Err(fail("`attachments` must be an array".into()));
                }
            }
            ClientEvent::Message {
                room: room()?,
                content: raw.content.clone().ok_or_else(|| missing("content"))?,
                temp_id: raw.temp_id.clone(),
                content_type: raw.content_type.clone(),
                attachments: raw.attachments,
            }
        }
        "presence" => {
            let status = raw.status.as_deref().ok_or_else(|| missing("status"))?;
            let status =
                Status::parse_settable(status).ok_or_else(|| fail("`status` must be online, away or busy".into()))?;
            ClientEvent::Presence { status }
        }
        "typing" => ClientEvent::Typing { room: room()?, is_typing: raw.is_typing.ok_or_else(|| missing("isTyping"))? },
        "read" => {
            let ids = raw.message_ids.clone().ok_or_else(|| missing("messageIds"))?;
            if ids.is_empty() || ids.len() > MAX_READ_IDS {
                return Err(fail(format!("`messageIds` must hold 1 to {MAX_READ_IDS} ids")));
            }
            ClientEvent::Read { room: room()?, message_ids: ids }
        }
        "edit" => ClientEvent::Edit {
            room: room()?,
            message_id: raw.message_id.clone().ok_or_else(|| missing("messageId"))?,
            content: raw.content.clone().ok_or_else(|| missing("content"))?,
        },
        "delete" => ClientEvent::Delete {
            room: room()?,
            message_id: raw.message_id.clone().ok_or_else(|| missing("messageId"))?,
        },
        "direct" => ClientEvent::Direct {
            to: raw.to.clone().ok_or_else(|| missing("to"))?,
            content: raw.content.clone().ok_or_else(|| missing("content"))?,
            temp_id: raw.temp_id.clone(),
        },
        "history" => {
            let query = history_query(raw.before, raw.after, raw.limit).map_err(fail)?;
            ClientEvent::History { room: room()?, query }
        }
        "ping" => ClientEvent::Ping,
        other => return Err(fail(format!("unknown event type `{other}`"))),
    };
    Ok(event)
}

/// Validates paging: `limit` 1 or more (default 50, capped at 1000).
pub fn history_query(before: Option<u64>, after: Option<u64>, limit: Option<u64>) -> Result<HistoryQuery, String> {
    let limit = match limit {
        None => DEFAULT_HISTORY_LIMIT,
        Some(0) => return Err("`limit` must be at least 1".into()),
        Some(n) => n.min(MAX_HISTORY_LIMIT as u64) as u32,
    };
    Ok(HistoryQuery { before, after, limit })
}

/// How deeply arrays and objects nest in a JSON text (0 for a scalar),
/// skipping brackets inside strings.
pub fn json_depth(text: &str) -> usize {
    let (mut depth, mut deepest) = (0usize, 0usize);
    let (mut in_string, mut escaped) = (false, false);
    for b in text.bytes() {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}

/// How many bytes `value` takes as JSON, counted without building the text.
pub fn json_len<T: Serialize>(value: &T) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    // Serialising plain structs of strings and numbers cannot fail.
    let _ = serde_json::to_writer(&mut count, value);
    count.0
}

/// Trims a history page so its messages take at most `budget` bytes of JSON,
/// keeping at least one: a page must fit the connection's output limit. A
/// forward page (`after`) keeps its oldest messages and a backward page its
/// newest, so paging on from the last or first `seq` loses nothing.
pub fn trim_page(views: &mut Vec<MessageView<'_>>, budget: usize, forward: bool) {
    if views.iter().map(MessageView::max_json_len).sum::<usize>() <= budget {
        // The usual page fits for certain: no need to measure it exactly.
        return;
    }
    // How many messages fit, walking from the end the page keeps (at least one).
    let fitting = |sizes: &mut dyn Iterator<Item = usize>| {
        let (mut used, mut keep) = (0, 0);
        for size in sizes {
            if keep > 0 && used + size > budget {
                break;
            }
            used += size;
            keep += 1;
        }
        keep
    };
    let mut sizes = views.iter().map(|v| json_len(v) + 1);
    let keep = if forward { fitting(&mut sizes) } else { fitting(&mut sizes.rev()) };
    if forward {
        views.truncate(keep);
    } else {
        views.drain(..views.len() - keep);
    }
}

/// Frames `json` as one unmasked, final text frame.
pub fn frame_text(json: &[u8]) -> Wire {
    frame(0x81, json)
}

/// An unmasked binary frame (a dialect's binary attachments).
pub fn frame_binary(bytes: &[u8]) -> Wire {
    frame(0x82, bytes)
}

/// One final, unmasked server frame: `first` is FIN and the opcode.
fn frame(first: u8, payload: &[u8]) -> Wire {
    let len = payload.len();
    let mut wire = Vec::with_capacity(len + 10);
    wire.push(first);
    if len < 126 {
        wire.push(len as u8);
    } else if len <= u16::MAX as usize {
        wire.push(126);
        wire.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        wire.push(127);
        wire.extend_from_slice(&(len as u64).to_be_bytes());
    }
    wire.extend_from_slice(payload);
    Wire::from(wire)
}

/// The payload of a frame made by [`frame_text`] or [`frame_binary`]: what
/// a dialect translates a native frame from.
pub fn frame_payload(wire: &[u8]) -> &[u8] {
    let start = match wire.get(1).map(|len| len & 0x7f) {
        Some(126) => 4,
        Some(127) => 10,
        _ => 2,
    };
    wire.get(start..).unwrap_or(&[])
}

/// Serialises a server frame and frames it.
pub fn encode<T: Serialize>(frame: &T) -> Wire {
    // Serialising plain structs of strings and numbers cannot fail.
    let json = serde_json::to_vec(frame).unwrap_or_default();
    frame_text(&json)
}

/// RFC 3339 UTC with milliseconds, e.g. `2026-11-21T19:46:54.130Z`.
pub fn timestamp(unix_ms: i64) -> String {
    let time = std::time::UNIX_EPOCH + std::time::Duration::from_millis(unix_ms.max(0) as u64);
    humantime::format_rfc3339_millis(time).to_string()
}

/// A stored message as clients see it. `editedAt` and `deleted` appear only
/// once a message was edited or deleted.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MessageView<'a> {
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<&'static str>,
    pub id: &'a str,
    pub seq: u64,
    pub room: &'a str,
    pub user_id: &'a str,
    pub content: &'a str,
    pub content_type: &'a str,
    pub attachments: &'a RawValue,
    pub created_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub edited_at: Option<String>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub deleted: bool,
}

/// The JSON text `[]`, for rows whose attachments cannot be read back.
fn empty_array() -> &'static RawValue {
    // A literal that is valid JSON.
    serde_json::from_str("[]").unwrap_or_else(|_| unreachable!())
}

impl<'a> MessageView<'a> {
    /// An upper bound of this view's JSON length without serialising it:
    /// strings may grow 6-fold when escaped (`\u00XX`), the rest is bounded.
    pub fn max_json_len(&self) -> usize {
        const FIXED: usize = 256; // keys, punctuation, type, seq, timestamps, flags
        let strings =
            self.id.len() + self.room.len() + self.user_id.len() + self.content.len() + self.content_type.len();
        FIXED + 6 * strings + self.attachments.get().len()
    }

    /// The view of a row; `kind` is `Some("message")` for a live frame.
    pub fn of(row: &'a MessageRow, room: &'a str, kind: Option<&'static str>) -> MessageView<'a> {
        MessageView {
            kind,
            id: &row.id,
            seq: row.seq,
            room,
            user_id: &row.user_id,
            content: &row.content,
            content_type: &row.content_type,
            attachments: serde_json::from_str(&row.attachments).unwrap_or_else(|_| empty_array()),
            created_at: timestamp(row.created_at),
            edited_at: row.edited_at.map(timestamp),
            deleted: row.deleted,
        }
    }
}

/// `{"type":"history","room","messages"}`, and (without `type` and `room`)
/// the REST page `{"messages":[…]}`. A typed struct, not `json!`, so that
/// attachments keep their exact JSON text (going through `Value` would
/// rewrite big numbers and `-0`).
#[derive(Serialize)]
pub struct MessagesFrame<'a> {
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub room: Option<&'a str>,
    pub messages: Vec<MessageView<'a>>,
}

/// `{"type":"message_update","room","message"}`.
#[derive(Serialize)]
pub struct UpdateFrame<'a> {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub room: &'a str,
    pub message: MessageView<'a>,
}

/// `{"type":"error",…}`: any refused request.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ErrorFrame<'a> {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub event: Option<&'a str>,
    pub code: &'a str,
    pub message: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub temp_id: Option<&'a str>,
}

/// Builds an `error` frame.
pub fn error_frame(event: Option<&str>, code: &str, message: &str, temp_id: Option<&str>) -> Wire {
    encode(&ErrorFrame { kind: "error", event, code, message, temp_id })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cheap_size_bound_never_undercounts() {
        let mut row = MessageRow {
            room_pk: 1,
            seq: u64::MAX,
            id: "m_01a200bf792c025aa88b00000004".into(),
            user_id: "\u{1}\"quoted\" user \u{1f600}".into(),
            content: String::new(),
            content_type: "text/\u{7f}plain".into(),
            attachments: r#"[{"a":"\u0000"}, 1e300]"#.into(),
            created_at: i64::from(i32::MAX) * 1000,
            edited_at: Some(i64::from(i32::MAX) * 1000),
            deleted: true,
            temp_id: None,
        };
        for content in ["", "plain", "\u{0}\u{1}\u{1f}", "\"\\\n\t", "é漢字😀", &"\u{2}".repeat(500)] {
            row.content = content.into();
            for kind in [None, Some("message")] {
                let view = MessageView::of(&row, "room:name-1", kind);
                assert!(view.max_json_len() > json_len(&view), "{content:?}: bound below the JSON");
            }
        }
    }

    #[test]
    fn decodes_every_event_type() {
        let cases: &[(&str, &str)] = &[
            (r#"{"type":"join","room":"a","since":3}"#, "join"),
            (r#"{"type":"leave","room":"a"}"#, "leave"),
            (r#"{"type":"message","room":"a","content":"hi","tempId":"t1","attachments":[{"u":1}]}"#, "message"),
            (r#"{"type":"presence","status":"away"}"#, "presence"),
            (r#"{"type":"typing","room":"a","isTyping":true}"#, "typing"),
            (r#"{"type":"read","room":"a","messageIds":["m1","m2"]}"#, "read"),
            (r#"{"type":"edit","room":"a","messageId":"m1","content":"x"}"#, "edit"),
            (r#"{"type":"delete","room":"a","messageId":"m1"}"#, "delete"),
            (r#"{"type":"direct","to":"bob","content":"psst"}"#, "direct"),
            (r#"{"type":"history","room":"a","before":10,"limit":5}"#, "history"),
            (r#"{"type":"ping"}"#, "ping"),
        ];
        for (text, name) in cases {
            let event = decode_client_event(text).unwrap_or_else(|e| panic!("{text}: {e:?}"));
            assert_eq!(event.name(), *name);
        }
    }

    #[test]
    fn refusals_name_the_event_and_the_field() {
        let cases: &[(&str, Option<&str>, &str)] = &[
            ("not json", None, "a JSON object"),
            (r#"["ping"]"#, None, "a JSON object"),
            (r#"{"room":"a"}"#, None, "missing field `type`"),
            (r#"{"type":"dance"}"#, Some("dance"), "unknown event type"),
            (r#"{"type":"join"}"#, Some("join"), "missing field `room`"),
            (r#"{"type":"message","room":"a","tempId":"t9"}"#, Some("message"), "missing field `content`"),
            (r#"{"type":"message","room":5,"content":"x"}"#, Some("message"), "bad field"),
            (r#"{"type":"presence","status":"offline"}"#, Some("presence"), "online, away or busy"),
            (r#"{"type":"typing","room":"a","isTyping":"yes"}"#, Some("typing"), "bad field"),
            (r#"{"type":"read","room":"a","messageIds":[]}"#, Some("read"), "messageIds"),
            (r#"{"type":"history","room":"a","limit":0}"#, Some("history"), "limit"),
            (r#"{"type":"join","room":"a","since":-1}"#, Some("join"), "bad field"),
            (r#"{"type":"message","room":"a","content":"x","attachments":{}}"#, Some("message"), "array"),
        ];
        for (text, event, needle) in cases {
            let err = decode_client_event(text).expect_err(text);
            assert_eq!(err.event.as_deref(), *event, "{text}");
            assert!(err.message.contains(needle), "{text}: {}", err.message);
        }
        let err = decode_client_event(r#"{"type":"message","room":"a","tempId":"t9"}"#).unwrap_err();
        assert_eq!(err.temp_id.as_deref(), Some("t9"));
    }

    #[test]
    fn numbers_out_of_f64_range_in_unknown_fields_are_ignored() {
        // Found by the client_event fuzz target: valid JSON whose unknown fields
        // hold numbers serde_json::Value would refuse.
        let text = r#"{"type":"history","room":"r0","afte2":16211e111111111111111111111111111111,"limit":5}"#;
        let event = decode_client_event(text).expect("unknown fields are skipped unevaluated");
        assert_eq!(event.name(), "history");
    }

    #[test]
    fn frames_use_the_shortest_length_form() {
        for (len, header) in [(5usize, 2usize), (125, 2), (126, 4), (65535, 4), (65536, 10)] {
            let wire = frame_text(&vec![b'x'; len]);
            assert_eq!(wire.len(), len + header);
            assert_eq!(wire[0], 0x81);
        }
    }

    #[test]
    fn timestamps_are_rfc3339_millis() {
        assert_eq!(timestamp(1_795_290_414_130), "2026-11-21T19:46:54.130Z");
    }
}
