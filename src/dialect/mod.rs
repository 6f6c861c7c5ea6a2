//! Client protocols other than the native JSON one ("dialects"), as sans-IO
//! codecs between their wire format and plain values.
//!
//! A dialect is a codec, nothing more: it turns its transport's frames into
//! packets the rest of the hub can reason about and back, without sockets,
//! clocks or hub state. Today this holds the packet layers of Socket.IO:
//!
//! - [`engineio`]: Engine.IO v4 packets (`open`, `ping`, `message`, …) and
//!   the long-polling payloads that join them with the record separator.
//! - [`socketio`]: Socket.IO v5 packets (`CONNECT`, `EVENT`, `ACK`, …)
//!   carried inside Engine.IO `message` packets.
//!
//! These codecs are not yet wired to the shell or the core: a Socket.IO
//! client cannot connect to the hub yet (see docs/ARCHITECTURE.md).

pub mod chatpulse;
pub mod engineio;
pub mod socketio;
