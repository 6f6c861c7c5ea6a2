//! The sans-IO core: projects, rooms, presence, typing, messages and the REST
//! handlers as one state machine.
//!
//! Inputs are `Hub::handle_*` calls that carry the current time ([`Now`]);
//! outputs are drained with [`Hub::poll_output`] and [`Hub::poll_timeout`].
//! Durable rows leave as one [`Batch`] per loop iteration ([`Hub::commit`]);
//! the outputs of that iteration are held until the store reports the batch
//! committed ([`Hub::handle_committed`]), in batch order, so nothing that
//! reports a write is sent before the write is committed. Reads go to a
//! [`Store`] that sees committed rows only; rows still in flight are answered
//! from memory. No sockets, no clock
//! reads, no randomness of its own (an [`Entropy`] is handed in).

mod hooks;
mod hub;
mod ids;
mod metrics;
mod model;
mod protocol;
mod pusher_api;
mod rest;
mod resume;
#[cfg(test)]
mod tests;
pub mod token;

pub use hooks::{signature, OutboundCall, OutboundResult, WEBHOOK_EVENTS};
pub use hub::{Credentials, Hub, HubConfig, JoinOptions, Session};
pub use ids::Entropy;
pub use metrics::Disconnect;
pub use model::{
    Batch, Completion, HistoryPage, HistoryQuery, MessageRow, OutboxBacklog, OutboxRow, ProjectRow, ReadBudget,
    ResumableRow, RoomKind, RoomRow, Snapshot, Status, StoreError, WriteOp,
};
pub use protocol::{decode_client_event, frame_binary, frame_payload, frame_text, ClientEvent, DecodeError};
pub use pusher_api::{pusher_app_id, valid_channel_name};

use std::rc::Rc;
use std::time::Instant;

/// The clock, read once per loop iteration by the shell and passed in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Now {
    /// Monotonic time for deadlines.
    pub mono: Instant,
    /// Wall-clock milliseconds since the Unix epoch, for timestamps.
    pub unix_ms: i64,
}

/// A connection as the shell names it: slab index in the low 32 bits, a
/// generation in the high 32, so an output for a closed connection can never
/// reach a new connection that reused the slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub u64);

impl ConnId {
    /// Builds an id from a slab index and its generation.
    pub fn new(index: usize, generation: u32) -> ConnId {
        ConnId(((generation as u64) << 32) | index as u64)
    }

    /// The slab index.
    pub fn index(self) -> usize {
        (self.0 & 0xffff_ffff) as usize
    }
}

impl std::fmt::Display for ConnId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.index(), self.0 >> 32)
    }
}

/// A complete, already-framed WebSocket frame (server frames are unmasked), so
/// a broadcast is serialised and framed once and the same bytes go to every
/// recipient.
pub type Wire = Rc<[u8]>;

/// What the core asks the shell to do.
#[derive(Debug)]
pub enum Output {
    /// Append a frame to one connection's output.
    Frame {
        /// Recipient.
        to: ConnId,
        /// The framed bytes.
        wire: Wire,
    },
    /// Append the same frame to many connections' output.
    Broadcast {
        /// Recipients, in room order.
        to: Vec<ConnId>,
        /// The framed bytes, shared.
        wire: Wire,
    },
    /// Like `Broadcast`, for dialects whose clients hear of a status change
    /// once per shared room (Socket.IO's `presence {threadId, …}`). Native
    /// clients skip it: they heard of the change once per connection.
    RoomScoped {
        /// Recipients: the room's other members.
        to: Vec<ConnId>,
        /// The framed bytes, shared; the frame names the room.
        wire: Wire,
    },
    /// Answer an HTTP request on this connection (in request order).
    Response {
        /// The connection the request came on.
        to: ConnId,
        /// The answer.
        response: crate::http::Response,
    },
    /// The core finished a request that carried a request id (dialects
    /// whose clients wait for an acknowledgement). Comes after every frame
    /// the request caused for its sender, and only once what it wrote is
    /// committed. The native dialect sends no request ids and never sees one.
    Done {
        /// The connection the request came on.
        to: ConnId,
        /// The dialect's id for the request.
        request: u64,
        /// `None` when it was carried out, else the error `code` and `message`.
        error: Option<(&'static str, String)>,
    },
    /// A free-form event of a room (a Pusher client event, an event
    /// triggered through Pusher's HTTP API): `{"type":"event","room",
    /// "event","data","userId"?}`, for the dialects that carry such events;
    /// native and Socket.IO clients skip it.
    Relay {
        /// Recipients.
        to: Vec<ConnId>,
        /// The frame, shared.
        wire: Wire,
    },
    /// Post to a project's backend (access hook, webhooks); the shell
    /// reports the answer with [`Hub::handle_outbound`].
    Outbound(OutboundCall),
    /// Close a WebSocket with this code after what is queued.
    Close {
        /// The connection.
        to: ConnId,
        /// RFC 6455 close code.
        code: u16,
        /// Short reason for the close frame.
        reason: &'static str,
    },
}

/// Reads the core needs, on committed data only (SQLite: a read connection
/// beside the store thread's write connection; WAL readers never see an
/// uncommitted row). What is still in flight the core answers from memory.
/// Writes do not go through this trait: the core hands them over as
/// [`Batch`]es (see [`Hub::commit`]) and is told of their fate with
/// [`Hub::handle_committed`].
pub trait Store {
    /// Everything the core keeps in memory, read at start-up.
    fn load(&mut self) -> Result<Snapshot, StoreError>;
    /// Whether a user is a member of a private room: one index look-up, so
    /// the members of large rooms need not live in memory.
    fn is_member(&mut self, room_pk: i64, user_id: &str) -> Result<bool, StoreError>;
    /// The members of one room, as stored, sorted, at most `limit` of them.
    fn members(&mut self, room_pk: i64, limit: usize) -> Result<Vec<String>, StoreError>;
    /// The message a user already sent to a room with this `tempId`: `(id, seq)`.
    fn find_temp_id(&mut self, room_pk: i64, user_id: &str, temp_id: &str)
        -> Result<Option<(String, u64)>, StoreError>;
    /// One message of a room by id.
    fn message(&mut self, room_pk: i64, id: &str) -> Result<Option<MessageRow>, StoreError>;
    /// Whether a message of this id is in the room, read from an index (no content).
    fn message_exists(&mut self, room_pk: i64, id: &str) -> Result<bool, StoreError>;
    /// Whether a user's receipt for a message is stored.
    fn has_receipt(&mut self, message_id: &str, user_id: &str) -> Result<bool, StoreError>;
    /// Who read a message, oldest first: `(userId, readAt ms)`.
    fn receipts(&mut self, room_pk: i64, message_id: &str) -> Result<Vec<(String, i64)>, StoreError>;
    /// A page of a room's messages in ascending `seq`, measured against
    /// `budget` before any content is read, so the work is bounded by the answer.
    fn history(&mut self, room_pk: i64, query: &HistoryQuery, budget: ReadBudget) -> Result<HistoryPage, StoreError>;
    /// Bytes the room's messages up to `through_seq` take (what the retention
    /// policy frees by deleting them).
    fn stored_bytes_through(&mut self, room_pk: i64, through_seq: u64) -> Result<u64, StoreError>;
    /// The newest messages of a room after `after_seq`, newest first, at most
    /// `limit`: `(seq, id)` only, for finding where a resumed session stopped.
    fn recent_ids(&mut self, room_pk: i64, after_seq: u64, limit: usize) -> Result<Vec<(u64, String)>, StoreError>;
    /// A project's oldest committed webhook events after `after_seq`: at most
    /// `max_count`, and no more than `max_bytes` of bodies (one at least).
    fn outbox_batch(
        &mut self,
        project_id: &str,
        after_seq: u64,
        max_count: usize,
        max_bytes: usize,
    ) -> Result<Vec<OutboxRow>, StoreError>;
}

/// Applies batches: one transaction per call, all or none. The store thread
/// drives one over the write connection; tests and benches drive one inline
/// through [`Hub::commit_with`].
pub trait BatchWriter {
    /// Applies and commits `batch`; on error nothing of it is stored.
    fn apply(&mut self, batch: &Batch) -> Result<(), StoreError>;

    /// Applies batches of one epoch in order, committing them together where
    /// the store can, with one result per batch. After the first failure
    /// nothing more is applied: the rest fail too.
    fn apply_group(&mut self, batches: &[&Batch]) -> Vec<Result<(), StoreError>> {
        let mut results = Vec::with_capacity(batches.len());
        for batch in batches {
            let result = match results.last() {
                Some(Err(e)) => Err(StoreError::clone(e)),
                _ => self.apply(batch),
            };
            results.push(result);
        }
        results
    }
}
