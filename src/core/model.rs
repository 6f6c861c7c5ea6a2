//! Plain data shared by the core and the store: rows, queries, statuses and
//! the validation rules for names from the contract.

use std::fmt;

/// A project (tenant) as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProjectRow {
    /// Public id, `p_` + 16 hex digits.
    pub id: String,
    /// Display name.
    pub name: String,
    /// The secret key clients and backends present.
    pub api_key: String,
    /// Creation time, ms since the epoch.
    pub created_at: i64,
    /// WebSocket clients must present a signed token, not the API key.
    pub require_tokens: bool,
    /// Browser origins allowed to open WebSockets; empty allows any.
    pub allowed_origins: Vec<String>,
    /// A join (any dialect) of a room that does not exist creates it, public.
    pub auto_create_rooms: bool,
    /// Where webhooks are posted (`webhookUrl`); none: no events are recorded.
    pub webhook_url: Option<String>,
    /// The event types posted (`webhookEvents`); `None`: all of them.
    pub webhook_events: Option<Vec<String>>,
    /// Asked before every join (`accessHookUrl`).
    pub access_hook_url: Option<String>,
}

/// Whether anyone in the project may join a room, or only its members.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RoomKind {
    /// Any user of the project may join.
    Public,
    /// Only listed members may join.
    Private,
}

impl RoomKind {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            RoomKind::Public => "public",
            RoomKind::Private => "private",
        }
    }

    /// Parses the wire name.
    pub fn parse(s: &str) -> Option<RoomKind> {
        match s {
            "public" => Some(RoomKind::Public),
            "private" => Some(RoomKind::Private),
            _ => None,
        }
    }
}

/// A room as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomRow {
    /// Primary key (0 before insertion).
    pub pk: i64,
    /// Public id, `r_` + 16 hex digits.
    pub id: String,
    /// Owning project id.
    pub project_id: String,
    /// Name, unique within the project.
    pub name: String,
    /// Public or private.
    pub kind: RoomKind,
    /// Creation time, ms since the epoch.
    pub created_at: i64,
    /// The initial members of a private room, for [`crate::core::Store::insert_room`]
    /// ([`crate::core::Store::load`] leaves it empty: members stay in the store).
    pub members: Vec<String>,
    /// Highest stored `seq` (filled by [`crate::core::Store::load`]).
    pub last_seq: u64,
    /// Lowest stored `seq`, 0 when the room holds no message (filled by
    /// `load`): older messages were dropped by the retention policy.
    pub first_seq: u64,
    /// Bytes its stored messages take ([`MessageRow::stored_size`] summed; filled by `load`).
    pub stored_bytes: u64,
    /// How many members a private room has (filled by `load`).
    pub member_count: usize,
}

/// A message as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageRow {
    /// Room primary key.
    pub room_pk: i64,
    /// Per-room sequence number, from 1, gapless.
    pub seq: u64,
    /// Server-wide unique id.
    pub id: String,
    /// Author.
    pub user_id: String,
    /// Text content ("" once deleted).
    pub content: String,
    /// MIME-like content type, default `text/plain`.
    pub content_type: String,
    /// Attachments as a JSON array text.
    pub attachments: String,
    /// Creation time, ms since the epoch.
    pub created_at: i64,
    /// Last edit time, if edited.
    pub edited_at: Option<i64>,
    /// True once deleted (a tombstone keeps `seq` gapless).
    pub deleted: bool,
    /// The sender's idempotency key, if any.
    pub temp_id: Option<String>,
}

impl MessageRow {
    /// The bytes this message takes in the store, as its quota and its read
    /// cost count them: its text fields (the store keeps this number beside
    /// the row, so a page is measured without reading content).
    pub fn stored_size(&self) -> usize {
        self.id.len() + self.user_id.len() + self.content.len() + self.content_type.len() + self.attachments.len()
    }
}

/// How much one history read may return, decided before anything is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadBudget {
    /// Most bytes the page may hold ([`MessageRow::stored_size`] plus `per_row` each).
    pub max_bytes: usize,
    /// What each message adds beyond its stored size once encoded (keys, seq, timestamps, room).
    pub per_row: usize,
    /// All or nothing: when the whole page does not fit, return no row (a
    /// `since` replay); otherwise return the part that fits, at least one row.
    pub whole: bool,
}

/// A page of history as the store returns it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HistoryPage {
    /// The messages, ascending `seq`.
    pub rows: Vec<MessageRow>,
    /// The byte budget ended the page before `limit` or the end of the range.
    pub cut: bool,
    /// The bytes the rows count for against the budget (what the read cost).
    pub bytes: usize,
}

/// Paging for history: see the contract's `GET …/messages`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryQuery {
    /// Only messages with `seq` below this.
    pub before: Option<u64>,
    /// Only messages with `seq` above this; then the oldest `limit` are returned.
    pub after: Option<u64>,
    /// At most this many (1–1000).
    pub limit: u32,
}

/// What the store holds that the core keeps in memory.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Every project.
    pub projects: Vec<ProjectRow>,
    /// Every room with its seq range, stored bytes and member count.
    pub rooms: Vec<RoomRow>,
    /// Sessions a client may still resume (see [`ResumableRow`]).
    pub resumables: Vec<ResumableRow>,
    /// The greatest message id stored: ids made after a restart sort after it.
    pub last_message_id: Option<String>,
    /// Undelivered webhook events per project.
    pub outbox: Vec<OutboxBacklog>,
    /// The greatest outbox `seq` stored.
    pub last_outbox_seq: u64,
}

/// A session a client may resume after a drop (Socket.IO's connection-state
/// recovery): who it was, the rooms it was in, and until when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResumableRow {
    /// The secret the client presents to resume (Socket.IO's `pid`).
    pub id: String,
    /// The project's id (`p_…`).
    pub project_id: String,
    /// The user.
    pub user_id: String,
    /// Each room it was in, with the room's `seq` when it joined: it was
    /// sent every message after that `seq`.
    pub rooms: Vec<(String, u64)>,
    /// When it stops being resumable (ms since the epoch); 0 while a
    /// connection holds it (after a crash: the restart plus the window).
    pub expires_at: i64,
}

/// A user's presence status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Connected and available (the status on connect).
    Online,
    /// Connected, away.
    Away,
    /// Connected, busy.
    Busy,
    /// No connection left.
    Offline,
}

impl Status {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Online => "online",
            Status::Away => "away",
            Status::Busy => "busy",
            Status::Offline => "offline",
        }
    }

    /// Parses a status a client may set (not `offline`).
    pub fn parse_settable(s: &str) -> Option<Status> {
        match s {
            "online" => Some(Status::Online),
            "away" => Some(Status::Away),
            "busy" => Some(Status::Busy),
            _ => None,
        }
    }
}

/// A store failure. The core turns it into `internal` / 503 and acknowledges nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreError {
    /// What was being done.
    pub context: &'static str,
    /// The underlying error, as text.
    pub detail: String,
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "store: {}: {}", self.context, self.detail)
    }
}

impl std::error::Error for StoreError {}

/// Room names: 1–164 of `A-Z a-z 0-9 _ - . : = @ , ;` (every Pusher channel name).
pub fn valid_room_name(name: &str) -> bool {
    (1..=164).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':' | b'=' | b'@' | b',' | b';'))
}

/// User ids: 1–128 printable characters: no control characters, and none
/// that changes how the text around it is displayed without being seen
/// (bidirectional overrides, isolates and marks, zero-width spaces, the
/// byte-order mark), so one user cannot pose as another in a client. The
/// zero-width joiners (U+200C, U+200D) stay allowed: emoji sequences and
/// several scripts need them.
pub fn valid_user_id(user: &str) -> bool {
    let count = user.chars().count();
    (1..=128).contains(&count) && !user.chars().any(|c| c.is_control() || is_invisible_formatting(c))
}

/// Characters that reorder or hide text without showing themselves.
fn is_invisible_formatting(c: char) -> bool {
    matches!(c,
        '\u{061C}'                     // Arabic letter mark
        | '\u{180E}'                   // Mongolian vowel separator
        | '\u{200B}'                   // zero-width space
        | '\u{200E}' | '\u{200F}'      // left-to-right / right-to-left marks
        | '\u{202A}'..='\u{202E}'      // embeddings and overrides
        | '\u{2060}'..='\u{2064}'      // word joiner, invisible operators
        | '\u{2066}'..='\u{2069}'      // isolates
        | '\u{FEFF}'                   // byte-order mark, zero-width no-break space
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_contract() {
        assert!(valid_room_name("general"));
        assert!(valid_room_name("team:alpha.v1_x-y"));
        assert!(!valid_room_name(""));
        assert!(valid_room_name(&"a".repeat(164)), "every Pusher channel name");
        assert!(valid_room_name("presence-a=b@c,d;e"));
        assert!(!valid_room_name(&"a".repeat(165)));
        assert!(!valid_room_name("with space"));
        assert!(!valid_room_name("slash/no"));
        assert!(valid_user_id("user123"));
        assert!(valid_user_id("Zoë O'Brien"));
        assert!(!valid_user_id(""));
        assert!(!valid_user_id("tab\there"));
        assert!(!valid_user_id(&"u".repeat(129)));
        for spoof in ["admin\u{202E}txt", "a\u{200B}b", "\u{2066}x\u{2069}", "\u{FEFF}bob", "a\u{200F}"] {
            assert!(!valid_user_id(spoof), "{spoof:?} hides formatting");
        }
        assert!(valid_user_id("👩\u{200D}💻"), "emoji sequences keep their joiner");
    }
}

/// One durable change, as the core hands it to the store. Rows carry every
/// key the core decided (room primary keys, message ids and seqs), so a store
/// applies them without reading anything back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteOp {
    /// A new project.
    InsertProject(ProjectRow),
    /// A project's new name and settings.
    UpdateProject(ProjectRow),
    /// A new room with its initial members; `pk` is set by the core.
    InsertRoom(RoomRow),
    /// A room with its members, messages and receipts.
    DeleteRoom(i64),
    /// A user added to a private room (idempotent).
    AddMember(i64, String),
    /// A user removed from a private room (idempotent).
    RemoveMember(i64, String),
    /// A new message.
    InsertMessage(std::sync::Arc<MessageRow>),
    /// A message's new content, `edited_at` and `deleted` flag.
    UpdateMessage(std::sync::Arc<MessageRow>),
    /// A room's messages (and their receipts) up to `through_seq` deleted:
    /// the retention policy.
    TrimRoom {
        /// The room.
        room_pk: i64,
        /// The newest `seq` deleted.
        through_seq: u64,
    },
    /// Receipts of one user for messages of one room (idempotent per message).
    InsertReceipts {
        /// The room.
        room_pk: i64,
        /// The messages read.
        message_ids: Vec<String>,
        /// Who read them.
        user_id: String,
        /// When, ms since the epoch.
        read_at: i64,
    },
    /// A resumable session, created or changed (rooms, expiry).
    SaveResumable(ResumableRow),
    /// A resumable session resumed elsewhere, refused, ended by its client or expired.
    DeleteResumable(String),
    /// A webhook event, in the batch of the change it reports.
    InsertOutbox(OutboxRow),
    /// A project's webhook events up to `through_seq`: delivered, or
    /// dropped past their maximum age.
    DeleteOutbox {
        /// The project's id.
        project_id: String,
        /// The newest event deleted.
        through_seq: u64,
    },
    /// A project's oldest `count` webhook events: its outbox is full.
    TrimOutbox {
        /// The project's id.
        project_id: String,
        /// How many of the oldest go.
        count: u64,
    },
}

/// One webhook event waiting for delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxRow {
    /// The project's id (`p_…`).
    pub project_id: String,
    /// Hub-wide order: events of a project are delivered by ascending `seq`.
    pub seq: u64,
    /// When the change happened, ms since the epoch (for the maximum age).
    pub created_at: i64,
    /// The event as posted: `{"id","type","createdAt","data"}`.
    pub body: String,
}

/// A project's undelivered webhook events, as stored (read at start-up).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxBacklog {
    /// The project's id.
    pub project_id: String,
    /// Events waiting.
    pub count: u64,
}

impl WriteOp {
    /// Roughly how many bytes the op holds, for the in-flight byte bound.
    pub fn size(&self) -> usize {
        64 + match self {
            WriteOp::InsertProject(p) | WriteOp::UpdateProject(p) => p.name.len() + 64,
            WriteOp::InsertRoom(r) => r.name.len() + r.members.iter().map(|m| m.len() + 24).sum::<usize>(),
            WriteOp::DeleteRoom(_) | WriteOp::TrimRoom { .. } => 0,
            WriteOp::AddMember(_, u) | WriteOp::RemoveMember(_, u) => u.len(),
            WriteOp::InsertMessage(m) | WriteOp::UpdateMessage(m) => {
                m.id.len() + m.user_id.len() + m.content.len() + m.attachments.len() + m.content_type.len()
            }
            WriteOp::SaveResumable(r) => r.id.len() + r.rooms.iter().map(|(n, _)| n.len() + 24).sum::<usize>(),
            WriteOp::DeleteResumable(id) => id.len(),
            WriteOp::InsertOutbox(row) => row.body.len() + row.project_id.len(),
            WriteOp::DeleteOutbox { project_id, .. } | WriteOp::TrimOutbox { project_id, .. } => project_id.len(),
            WriteOp::InsertReceipts { message_ids, user_id, .. } => {
                user_id.len() + message_ids.iter().map(|m| m.len() + 24).sum::<usize>()
            }
        }
    }
}

/// The durable changes of one loop iteration, committed all or none.
///
/// Batches are numbered in the order the core made them and a store commits
/// them in that order. `epoch` ties a batch to the state it was built on:
/// once a batch fails, every later batch of the same epoch must fail without
/// being applied (it may hold seqs or rows that assumed the failed one), and
/// the core starts a new epoch for what it builds after learning of the
/// failure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    /// Position in the core's order, from 1.
    pub id: u64,
    /// See the type's docs.
    pub epoch: u64,
    /// The changes, in the order they were made.
    pub ops: Vec<WriteOp>,
    /// Sum of [`WriteOp::size`].
    pub bytes: usize,
}

/// What a store reports for one batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Completion {
    /// The batch's [`Batch::id`].
    pub id: u64,
    /// Committed (with `--durability full`, fsynced), or why not; a failed
    /// batch left nothing behind.
    pub result: Result<(), StoreError>,
    /// How long the store spent on it, from taking it to the end of its commit.
    pub took: std::time::Duration,
}
