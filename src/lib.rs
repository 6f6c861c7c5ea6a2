//! RealtimeHub: a real-time messaging hub with one event-loop thread (and a
//! store thread that owns SQLite's write connection).
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
//!   connections, HTTP responses, and one batch of rows per iteration
//!   ([`core::Batch`]). It reads committed rows through [`core::Store`]. No
//!   sockets, no clock reads, no threads, no rusqlite types.
//! - [`dialect`]: sans-IO codecs of other client protocols (the Engine.IO and
//!   Socket.IO packet layers), not yet connected to the loop.
//! - [`http`]: HTTP/1.1 request framing on top of httparse and response encoding.
//! - [`store`]: the SQLite implementation of [`core::Store`] (reads, on the
//!   loop's read connection) and [`core::BatchWriter`] (writes, on the store
//!   thread's write connection): migrations, WAL, cached statements.
//! - [`storethread`]: the thread that owns the write connection: it takes
//!   batches in order, commits them (several at once when they queue up) and
//!   reports each back, waking the loop.
//! - [`shell`]: the mio loop. It moves bytes between sockets and the core, fires
//!   timers, hands each iteration's batch to the store thread and releases
//!   acknowledgements when the store thread reports them committed.
//!
//! One loop iteration: poll → take store completions → accept → read and feed
//! the core → fire due timers → hand the batch over → hand the released
//! outputs to connections → flush each dirty connection once → drop closed
//! connections. See docs/ARCHITECTURE.md.

#![warn(missing_docs)]

pub mod config;
pub mod core;
pub mod dialect;
pub mod http;
pub mod logjson;
pub mod shell;
pub mod store;
pub mod storethread;
pub mod url;

/// The version reported by `/health`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
