//! Client protocols other than the native JSON one ("dialects"), as sans-IO
//! codecs between their wire format and plain values.
//!
//! A dialect is a codec, nothing more: it turns its transport's frames into
//! what the core understands (native events, subscriptions) and the core's
//! native frames into its own, without sockets, clocks or hub state. The
//! shell moves the bytes (`src/shell/socketio.rs`, `src/shell/pusher.rs`);
//! docs/ARCHITECTURE.md shows how a dialect is added.
//!
//! - [`engineio`]: Engine.IO v4 packets (`open`, `ping`, `message`, …) and
//!   the long-polling payloads that join them with the record separator.
//! - [`socketio`]: Socket.IO v5 packets (`CONNECT`, `EVENT`, `ACK`, …)
//!   carried inside Engine.IO `message` packets.
//! - [`chatpulse`]: the Chatpulse events over Socket.IO.
//! - [`pusher`]: Pusher protocol 7 (pusher-js, Laravel Echo).

pub mod chatpulse;
pub mod engineio;
pub mod pusher;
pub mod socketio;
