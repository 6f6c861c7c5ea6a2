//! The sans-IO core: projects, rooms, presence, typing, messages and the REST
//! handlers as one state machine.
//!
//! Inputs are `Hub::handle_*` calls that carry the current time ([`Now`]);
//! outputs are drained with [`Hub::poll_output`] and [`Hub::poll_timeout`].
//! Durable rows go to a [`Store`]; the shell commits the store once per loop
//! iteration ([`Hub::commit`]) and only then drains outputs, so nothing that
//! reports a write is sent before the write is committed. No sockets, no clock
//! reads, no randomness of its own (an [`Entropy`] is handed in).

mod hub;
mod ids;
mod metrics;
mod model;
mod protocol;
mod rest;
#[cfg(test)]
mod tests;
pub mod token;

pub use hub::{Hub, HubConfig};
pub use ids::Entropy;
pub use metrics::Disconnect;
pub use model::{
    HistoryPage, HistoryQuery, MessageRow, ProjectRow, ReadBudget, RoomKind, RoomRow, Snapshot, Status, StoreError,
};
pub use protocol::{decode_client_event, ClientEvent, DecodeError};

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
    /// Answer an HTTP request on this connection (in request order).
    Response {
        /// The connection the request came on.
        to: ConnId,
        /// The answer.
        response: crate::http::Response,
    },
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

/// Persistence the core needs. Writes happen inside the current loop
/// iteration's transaction and become durable at [`Store::commit`]; reads see
/// the iteration's own uncommitted writes.
pub trait Store {
    /// Everything the core keeps in memory, read at start-up.
    fn load(&mut self) -> Result<Snapshot, StoreError>;
    /// Stores a new project.
    fn insert_project(&mut self, project: &ProjectRow) -> Result<(), StoreError>;
    /// Rewrites a project's name and settings.
    fn update_project(&mut self, project: &ProjectRow) -> Result<(), StoreError>;
    /// Stores a new room and its initial members (all or none); returns its primary key.
    fn insert_room(&mut self, room: &RoomRow) -> Result<i64, StoreError>;
    /// Removes a room with its members, messages and receipts (all or none).
    fn delete_room(&mut self, room_pk: i64) -> Result<(), StoreError>;
    /// Adds a user to a private room's members (idempotent); true when they were not one.
    fn add_member(&mut self, room_pk: i64, user_id: &str) -> Result<bool, StoreError>;
    /// Removes a user from a private room's members (idempotent); true when they were one.
    fn remove_member(&mut self, room_pk: i64, user_id: &str) -> Result<bool, StoreError>;
    /// Whether a user is a member of a private room: one index look-up, so
    /// the members of large rooms need not live in memory.
    fn is_member(&mut self, room_pk: i64, user_id: &str) -> Result<bool, StoreError>;
    /// The members of one room, as stored, sorted, at most `limit` of them.
    fn members(&mut self, room_pk: i64, limit: usize) -> Result<Vec<String>, StoreError>;
    /// The highest `seq` stored for a room (0 when none).
    fn last_seq(&mut self, room_pk: i64) -> Result<u64, StoreError>;
    /// Stores a new message.
    fn insert_message(&mut self, message: &MessageRow) -> Result<(), StoreError>;
    /// The message a user already sent to a room with this `tempId`: `(id, seq)`.
    fn find_temp_id(&mut self, room_pk: i64, user_id: &str, temp_id: &str)
        -> Result<Option<(String, u64)>, StoreError>;
    /// One message of a room by id.
    fn message(&mut self, room_pk: i64, id: &str) -> Result<Option<MessageRow>, StoreError>;
    /// Whether a message of this id is in the room, read from an index (no content).
    fn message_exists(&mut self, room_pk: i64, id: &str) -> Result<bool, StoreError>;
    /// Rewrites a message's content, `edited_at` and `deleted` flag.
    fn update_message(&mut self, message: &MessageRow) -> Result<(), StoreError>;
    /// Records that a user read messages, all or none; for each id, false
    /// when it was already recorded.
    fn insert_receipts(
        &mut self,
        room_pk: i64,
        message_ids: &[&str],
        user_id: &str,
        read_at: i64,
    ) -> Result<Vec<bool>, StoreError>;
    /// Who read a message, oldest first: `(userId, readAt ms)`.
    fn receipts(&mut self, room_pk: i64, message_id: &str) -> Result<Vec<(String, i64)>, StoreError>;
    /// A page of a room's messages in ascending `seq`, measured against
    /// `budget` before any content is read, so the work is bounded by the answer.
    fn history(&mut self, room_pk: i64, query: &HistoryQuery, budget: ReadBudget) -> Result<HistoryPage, StoreError>;
    /// Deletes a room's messages (and their receipts) up to `through_seq`, the
    /// retention policy; returns the stored bytes freed.
    fn trim_room(&mut self, room_pk: i64, through_seq: u64) -> Result<u64, StoreError>;
    /// Commits every write since the last commit. On error the writes are rolled back.
    fn commit(&mut self) -> Result<(), StoreError>;
}
