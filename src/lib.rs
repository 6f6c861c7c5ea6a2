//! RealtimeHub: a single-threaded real-time messaging hub.
//!
//! Applications get rooms, presence, typing indicators, persisted history with
//! per-room sequence numbers, receipts, edits and unicast over WebSocket, plus a
//! REST API, from one binary with an embedded SQLite store.
//!
//! # Layout
//!
//! - [`config`]: flags and environment variables become one validated [`config::Config`].
//! - [`core`]: the sans-IO state machine. It takes events (`handle_*`) with the
//!   current time as a parameter and produces outputs (`poll_*`): frames for
//!   connections, HTTP responses, and rows for the [`core::Store`]. No sockets, no
//!   clock reads, no rusqlite types.
//! - [`dialect`]: sans-IO codecs of other client protocols (the Engine.IO and
//!   Socket.IO packet layers), not yet connected to the loop.
//! - [`http`]: HTTP/1.1 request framing on top of httparse and response encoding.
//! - [`store`]: the SQLite implementation of [`core::Store`]: migrations, one
//!   transaction per loop iteration, cached statements.
//! - [`shell`]: the mio loop. It moves bytes between sockets and the core, fires
//!   timers and commits the store once per iteration before anything is acknowledged.
//!
//! One loop iteration: poll → accept → read and feed the core → fire due timers →
//! commit the store batch → hand the core's outputs to connections → flush each
//! dirty connection once → drop closed connections.

#![warn(missing_docs)]

pub mod config;
pub mod core;
pub mod dialect;
pub mod http;
pub mod logjson;
pub mod shell;
pub mod store;

/// The version reported by `/health`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
