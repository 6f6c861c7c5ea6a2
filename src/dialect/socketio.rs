//! Socket.IO protocol v5 packets, carried in Engine.IO `message` packets.
//!
//! `<type>[<attachments>-][<namespace>,][<ack id>][<JSON payload>]`: a type
//! digit, for binary packets the number of binary attachments that follow,
//! the namespace when it is not `/`, an acknowledgement id, and the payload.
//! Decoding checks what the reference parser checks (the payload each type
//! allows, reserved event names) and borrows the payload as raw JSON, so a
//! dialect parses only the arguments it needs.

use serde_json::value::RawValue;

/// The packet types of Socket.IO v5.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `0`: join a namespace (client, with an optional auth object) or its
    /// acceptance (server, with `{"sid"}`).
    Connect,
    /// `1`: leave a namespace.
    Disconnect,
    /// `2`: an event, `[name, ...args]`.
    Event,
    /// `3`: the answer to an event that carried an id, `[...args]`.
    Ack,
    /// `4`: a refused `CONNECT`, `{"message", "data"?}`.
    ConnectError,
    /// `5`: an event with binary attachments.
    BinaryEvent,
    /// `6`: an acknowledgement with binary attachments.
    BinaryAck,
}

impl Kind {
    fn digit(self) -> u8 {
        b'0' + self as u8
    }

    fn of(digit: u8) -> Option<Kind> {
        Some(match digit {
            b'0' => Kind::Connect,
            b'1' => Kind::Disconnect,
            b'2' => Kind::Event,
            b'3' => Kind::Ack,
            b'4' => Kind::ConnectError,
            b'5' => Kind::BinaryEvent,
            b'6' => Kind::BinaryAck,
            _ => return None,
        })
    }

    /// Whether binary attachments follow the packet.
    pub fn is_binary(self) -> bool {
        matches!(self, Kind::BinaryEvent | Kind::BinaryAck)
    }
}

/// Event names the protocol reserves for the library; a client may not emit them.
pub const RESERVED_EVENTS: &[&str] =
    &["connect", "connect_error", "disconnect", "disconnecting", "newListener", "removeListener"];

/// Acknowledgement ids stay below 2^53, the integers a JavaScript number holds exactly.
pub const MAX_ACK_ID: u64 = (1 << 53) - 1;

/// Longest namespace accepted (the reference server has no limit; names are short).
pub const MAX_NAMESPACE_BYTES: usize = 256;

/// One Socket.IO packet, borrowing from the decoded text.
#[derive(Debug, Clone)]
pub struct Packet<'a> {
    /// The type.
    pub kind: Kind,
    /// The namespace, `/` when the packet names none.
    pub namespace: &'a str,
    /// The acknowledgement id, when the sender wants an answer (or this answers one).
    pub id: Option<u64>,
    /// How many binary attachments follow (binary packets only).
    pub attachments: usize,
    /// The payload, as raw JSON.
    pub data: Option<&'a RawValue>,
}

/// Why a text is not a valid Socket.IO packet. The reference server closes
/// the connection on any of these; a dialect may answer first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    /// An empty packet.
    Empty,
    /// A type that is not `0`–`6`.
    UnknownType,
    /// A binary packet without `<count>-`, or with more attachments than allowed.
    BadAttachments,
    /// A namespace that does not end with `,` where a payload follows, or is too long.
    BadNamespace,
    /// An acknowledgement id that is not a number below 2^53.
    BadId,
    /// A payload that is not JSON.
    BadJson,
    /// A payload the type does not allow (e.g. an event that is not a
    /// non-empty array starting with its name, or a reserved event name).
    BadPayload(&'static str),
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DecodeError::Empty => write!(f, "an empty Socket.IO packet"),
            DecodeError::UnknownType => write!(f, "unknown Socket.IO packet type"),
            DecodeError::BadAttachments => write!(f, "bad binary attachment count"),
            DecodeError::BadNamespace => write!(f, "bad namespace"),
            DecodeError::BadId => write!(f, "bad acknowledgement id"),
            DecodeError::BadJson => write!(f, "the payload is not JSON"),
            DecodeError::BadPayload(why) => write!(f, "invalid payload: {why}"),
        }
    }
}

impl std::error::Error for DecodeError {}

/// Decodes one packet; binary packets may announce at most `max_attachments`.
pub fn decode(text: &str, max_attachments: usize) -> Result<Packet<'_>, DecodeError> {
    let bytes = text.as_bytes();
    let (&digit, _) = bytes.split_first().ok_or(DecodeError::Empty)?;
    let kind = Kind::of(digit).ok_or(DecodeError::UnknownType)?;
    let mut at = 1;
    let mut attachments = 0;
    if kind.is_binary() {
        let digits = bytes[at..].iter().take_while(|b| b.is_ascii_digit()).count();
        if digits == 0 || bytes.get(at + digits) != Some(&b'-') {
            return Err(DecodeError::BadAttachments);
        }
        attachments = text[at..at + digits].parse::<usize>().map_err(|_| DecodeError::BadAttachments)?;
        if attachments > max_attachments {
            return Err(DecodeError::BadAttachments);
        }
        at += digits + 1;
    }
    let mut namespace = "/";
    if bytes.get(at) == Some(&b'/') {
        let end = bytes[at..].iter().position(|&b| b == b',').map_or(bytes.len(), |i| at + i);
        namespace = &text[at..end];
        if namespace.len() > MAX_NAMESPACE_BYTES {
            return Err(DecodeError::BadNamespace);
        }
        at = (end + 1).min(bytes.len());
    }
    let digits = bytes[at..].iter().take_while(|b| b.is_ascii_digit()).count();
    let mut id = None;
    if digits > 0 {
        let n = text[at..at + digits].parse::<u64>().map_err(|_| DecodeError::BadId)?;
        if n > MAX_ACK_ID {
            return Err(DecodeError::BadId);
        }
        id = Some(n);
        at += digits;
    }
    let rest = &text[at..];
    let data = if rest.is_empty() {
        None
    } else {
        Some(serde_json::from_str::<&RawValue>(rest).map_err(|_| DecodeError::BadJson)?)
    };
    check_payload(kind, data)?;
    Ok(Packet { kind, namespace, id, attachments, data })
}

/// The payload rules of the reference parser, per type.
fn check_payload(kind: Kind, data: Option<&RawValue>) -> Result<(), DecodeError> {
    let first = data.map(|d| d.get().trim_start().as_bytes().first().copied().unwrap_or(0));
    match kind {
        Kind::Connect if matches!(first, None | Some(b'{')) => Ok(()),
        Kind::Connect => Err(DecodeError::BadPayload("CONNECT carries an object or nothing")),
        Kind::Disconnect if data.is_none() => Ok(()),
        Kind::Disconnect => Err(DecodeError::BadPayload("DISCONNECT carries nothing")),
        Kind::ConnectError if matches!(first, Some(b'{' | b'"')) => Ok(()),
        Kind::ConnectError => Err(DecodeError::BadPayload("CONNECT_ERROR carries an object or a string")),
        Kind::Ack | Kind::BinaryAck if first == Some(b'[') => Ok(()),
        Kind::Ack | Kind::BinaryAck => Err(DecodeError::BadPayload("an ACK carries an array")),
        Kind::Event | Kind::BinaryEvent => {
            let args = data
                .and_then(|d| serde_json::from_str::<Vec<&RawValue>>(d.get()).ok())
                .ok_or(DecodeError::BadPayload("an EVENT carries an array"))?;
            let name = args.first().ok_or(DecodeError::BadPayload("an EVENT array starts with its name"))?;
            match serde_json::from_str::<serde_json::Value>(name.get()) {
                Ok(serde_json::Value::String(name)) if RESERVED_EVENTS.contains(&name.as_str()) => {
                    Err(DecodeError::BadPayload("a reserved event name"))
                }
                Ok(serde_json::Value::String(_) | serde_json::Value::Number(_)) => Ok(()),
                _ => Err(DecodeError::BadPayload("an event name is a string")),
            }
        }
    }
}

impl<'a> Packet<'a> {
    /// An event's name and arguments (the payload split without parsing the arguments).
    pub fn event(&self) -> Option<(String, Vec<&'a RawValue>)> {
        let args: Vec<&RawValue> = serde_json::from_str(self.data?.get()).ok()?;
        let (name, rest) = args.split_first()?;
        let name = match serde_json::from_str::<serde_json::Value>(name.get()).ok()? {
            serde_json::Value::String(s) => s,
            serde_json::Value::Number(n) => n.to_string(),
            _ => return None,
        };
        Some((name, rest.to_vec()))
    }
}

/// Appends one packet's text: `kind`, the namespace unless `/`, the id, then
/// `data` (JSON text, already serialised).
pub fn encode(kind: Kind, namespace: &str, id: Option<u64>, attachments: usize, data: Option<&str>, out: &mut Vec<u8>) {
    out.push(kind.digit());
    if kind.is_binary() {
        out.extend_from_slice(attachments.to_string().as_bytes());
        out.push(b'-');
    }
    if namespace != "/" {
        out.extend_from_slice(namespace.as_bytes());
        out.push(b',');
    }
    if let Some(id) = id {
        out.extend_from_slice(id.to_string().as_bytes());
    }
    if let Some(data) = data {
        out.extend_from_slice(data.as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(text: &str) -> Packet<'_> {
        decode(text, 10).unwrap_or_else(|e| panic!("{text:?}: {e}"))
    }

    #[test]
    fn the_protocol_examples_decode() {
        let p = ok("0");
        assert_eq!((p.kind, p.namespace, p.id, p.data.is_none()), (Kind::Connect, "/", None, true));
        let p = ok("0/admin,{\"token\":\"123\"}");
        assert_eq!(
            (p.kind, p.namespace, p.data.map(|d| d.get())),
            (Kind::Connect, "/admin", Some("{\"token\":\"123\"}"))
        );
        let p = ok("4{\"message\":\"Not authorized\"}");
        assert_eq!(p.kind, Kind::ConnectError);
        let p = ok("2[\"foo\"]");
        assert_eq!(p.event().map(|(n, a)| (n, a.len())), Some(("foo".to_string(), 0)));
        let p = ok("2/admin,[\"bar\"]");
        assert_eq!(p.namespace, "/admin");
        let p = ok("51-[\"baz\",{\"_placeholder\":true,\"num\":0}]");
        assert_eq!((p.kind, p.attachments), (Kind::BinaryEvent, 1));
        let p = ok("52-/admin,[\"baz\",{\"_placeholder\":true,\"num\":0},{\"_placeholder\":true,\"num\":1}]");
        assert_eq!((p.attachments, p.namespace), (2, "/admin"));
        let p = ok("212[\"foo\"]");
        assert_eq!((p.kind, p.id), (Kind::Event, Some(12)));
        let p = ok("3/admin,13[\"bar\"]");
        assert_eq!((p.kind, p.namespace, p.id), (Kind::Ack, "/admin", Some(13)));
        let p = ok("61-15[\"bar\",{\"_placeholder\":true,\"num\":0}]");
        assert_eq!((p.kind, p.attachments, p.id), (Kind::BinaryAck, 1, Some(15)));
        assert_eq!(ok("1").kind, Kind::Disconnect);
        assert_eq!(ok("1/admin,").namespace, "/admin");
        assert_eq!(ok("1/admin").namespace, "/admin", "a namespace at the end needs no comma");
    }

    #[test]
    fn event_arguments_stay_raw() {
        let p = ok("27[\"message_send\",{\"threadId\":456,\"tempId\":\"t1\"},3]");
        let (name, args) = p.event().unwrap();
        assert_eq!(name, "message_send");
        assert_eq!(args.iter().map(|a| a.get()).collect::<Vec<_>>(), ["{\"threadId\":456,\"tempId\":\"t1\"}", "3"]);
        assert_eq!(ok("2[42,\"x\"]").event().unwrap().0, "42", "numeric names are allowed");
    }

    #[test]
    fn malformed_packets_are_refused_with_a_reason() {
        let cases: &[(&str, DecodeError)] = &[
            ("", DecodeError::Empty),
            ("7", DecodeError::UnknownType),
            ("x", DecodeError::UnknownType),
            ("5[\"a\"]", DecodeError::BadAttachments),
            ("511-[\"a\"]", DecodeError::BadAttachments),
            ("299999999999999999999[\"a\"]", DecodeError::BadId),
            ("29007199254740992[\"a\"]", DecodeError::BadId),
            ("2[\"a\"", DecodeError::BadJson),
            ("2{\"a\":1}", DecodeError::BadPayload("an EVENT carries an array")),
            ("2[]", DecodeError::BadPayload("an EVENT array starts with its name")),
            ("2[{}]", DecodeError::BadPayload("an event name is a string")),
            ("2[\"disconnect\"]", DecodeError::BadPayload("a reserved event name")),
            ("2", DecodeError::BadPayload("an EVENT carries an array")),
            ("0[1]", DecodeError::BadPayload("CONNECT carries an object or nothing")),
            ("1{}", DecodeError::BadPayload("DISCONNECT carries nothing")),
            ("3{}", DecodeError::BadPayload("an ACK carries an array")),
            ("4[]", DecodeError::BadPayload("CONNECT_ERROR carries an object or a string")),
        ];
        for (text, want) in cases {
            assert_eq!(decode(text, 10).err().as_ref(), Some(want), "{text:?}");
        }
        let long = format!("0/{},", "n".repeat(MAX_NAMESPACE_BYTES));
        assert_eq!(decode(&long, 10).err(), Some(DecodeError::BadNamespace));
    }

    #[test]
    fn encoding_mirrors_decoding() {
        /// kind, namespace, id, attachments, payload, the encoded text.
        type Case<'a> = (Kind, &'a str, Option<u64>, usize, Option<&'a str>, &'a str);
        let cases: &[Case] = &[
            (Kind::Connect, "/", None, 0, Some("{\"sid\":\"abc\"}"), "0{\"sid\":\"abc\"}"),
            (Kind::Event, "/", None, 0, Some("[\"message\",{}]"), "2[\"message\",{}]"),
            (Kind::Ack, "/", Some(7), 0, Some("[{\"ok\":true}]"), "37[{\"ok\":true}]"),
            (Kind::ConnectError, "/custom", None, 0, Some("{\"message\":\"no\"}"), "4/custom,{\"message\":\"no\"}"),
            (Kind::BinaryAck, "/", Some(3), 2, Some("[1]"), "62-3[1]"),
            (Kind::Disconnect, "/", None, 0, None, "1"),
        ];
        for (kind, ns, id, att, data, wire) in cases {
            let mut out = Vec::new();
            encode(*kind, ns, *id, *att, *data, &mut out);
            assert_eq!(std::str::from_utf8(&out).unwrap(), *wire);
            let back = ok(wire);
            assert_eq!((back.kind, back.namespace, back.id, back.attachments), (*kind, *ns, *id, *att));
        }
    }
}
