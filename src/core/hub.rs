//! The hub state machine: projects, rooms, connections, presence and typing,
//! and the WebSocket events that change them.
//!
//! Every write of a loop iteration becomes one [`WriteOp`] of the iteration's
//! [`Batch`], which [`Hub::commit`] hands to the shell (and the shell to the
//! store thread). The iteration's outputs wait, in order, behind the outputs
//! of the batches before it, and leave the hub only once its batch and every
//! batch before it are reported ([`Hub::handle_committed`]): the wire order
//! is the order the hub produced, and nothing that reports a write is sent
//! before the write is committed. If a batch fails, each durable output of it
//! and of everything queued behind it (built on its state) is replaced by its
//! failure answer (an `internal` error frame or a 503) or dropped, a new
//! epoch starts (the store refuses the failed epoch's later batches), and
//! memory is reconciled with what is committed.
//!
//! While rows are in flight the hub answers from memory what it needs before
//! they are committed: each room's `last_seq`, the `tempId`s, messages and
//! receipts of batches not yet committed ([`InFlight`]); everything else is
//! read from the [`Store`], which sees committed rows only.

use std::borrow::Cow;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use slab::Slab;

use super::hooks::ParkedJoin;
use super::ids::{constant_time_eq, project_digits_of_key, Entropy, Ids};
use super::metrics::{Disconnect, Metrics};
use super::model::{
    valid_room_name, valid_user_id, Batch, Completion, HistoryPage, HistoryQuery, MessageRow, ProjectRow, ReadBudget,
    RoomKind, RoomRow, Snapshot, Status, StoreError, WriteOp,
};
use super::protocol::{
    self, decode_client_event, encode, error_frame, ClientEvent, MessageView, MessagesFrame, UpdateFrame,
};
use super::token;
use super::{BatchWriter, ConnId, Now, Output, Store, Wire};
use crate::http::{Request, Response};

/// Core settings, taken from [`crate::config::Config`].
#[derive(Debug, Clone)]
pub struct HubConfig {
    /// Bearer token for project creation and `/stats`; `None` leaves them open.
    pub admin_token: Option<String>,
    /// `*` or a comma-separated list of allowed browser origins.
    pub cors_origin: String,
    /// Server-side `isTyping:false` after the last `true` (default 10 s).
    pub typing_timeout: Duration,
    /// Most messages replayed on `join` with `since` (default 1000).
    pub replay_cap: usize,
    /// Largest message `content` plus `attachments`, in bytes (default 32 KiB);
    /// more is refused with `too_large`.
    pub max_content_bytes: usize,
    /// Client events per second per connection (default 100, also the burst);
    /// more are refused `rate_limited`, twice that for a second closes 1008.
    pub max_events_per_second: u32,
    /// Rooms one connection may have joined at once (default 100); one more is
    /// refused `forbidden`.
    pub max_rooms_per_connection: usize,
    /// Most bytes one answer may queue for a connection: a history page is cut
    /// short to fit, and a `since` replay larger than this is answered
    /// `recovered:false` (default 512 KiB, half of `--max-outbound-bytes`, so a
    /// client that reads is never dropped as a slow consumer for asking).
    pub max_reply_bytes: usize,
    /// History and replay bytes one user may read per second over its
    /// WebSockets together (default 1 MiB, also the burst). A read is admitted while the allowance is
    /// positive and costs what it returned; past it `rate_limited`.
    pub max_read_bytes_per_second: usize,
    /// REST requests one API key may make per second (default 1000, also the
    /// burst); past it 429.
    pub max_rest_requests_per_second: u32,
    /// History bytes one API key may read per second over REST (default
    /// 4 MiB, also the burst); past it 429.
    pub max_rest_read_bytes_per_second: usize,
    /// Most message ids one `read` event may carry (default 100); more is `bad_request`.
    pub max_ids_per_read: usize,
    /// Projects one address may create per hour when no admin token is set
    /// (default 20); past it 429.
    pub max_projects_per_ip_per_hour: u32,
    /// Rooms one project may hold (default 10 000); past it 429.
    pub max_rooms_per_project: usize,
    /// Members one private room may list (default 10 000); past it 429.
    pub max_members_per_room: usize,
    /// Bytes of messages one project may store (default 1 GiB, counted as
    /// [`MessageRow::stored_size`]); a message past it is refused `too_large` / 413.
    pub max_stored_bytes_per_project: u64,
    /// Retention: keep only the newest this many messages per room, deleting
    /// older ones in batches (default 0: keep everything).
    pub retention_messages_per_room: u64,
    /// Longest lifetime a signed token may claim, from now to its `exp`
    /// (default 24 h); a longer one is refused 401.
    pub max_token_lifetime: Duration,
    /// How long a dropped session may be resumed (Socket.IO's connection-state
    /// recovery; default 2 min, zero turns recovery off).
    pub resume_window: Duration,
    /// Most dropped sessions kept resumable at once (the oldest go first).
    pub max_resumable_sessions: usize,
    /// How long a join waits for the access hook before it is refused
    /// `unavailable` (default 2 s).
    pub hook_timeout: Duration,
    /// How long one webhook post may take (default 10 s).
    pub webhook_timeout: Duration,
    /// Most events in one webhook post (default 100).
    pub webhook_batch_events: usize,
    /// Most bytes of events in one webhook post (default 256 KiB; one event at least).
    pub webhook_batch_bytes: usize,
    /// The first retry's delay after a failed post, doubled per failure (default 1 s).
    pub webhook_retry_min: Duration,
    /// The longest delay between retries (default 5 min).
    pub webhook_retry_max: Duration,
    /// Events older than this are dropped instead of retried (default 24 h).
    pub webhook_max_age: Duration,
    /// Most undelivered events a project's outbox holds; past it the oldest
    /// are dropped (default 100 000).
    pub webhook_outbox_max_events: u64,
    /// `user.offline` waits this long for a new connection (default 5 s).
    pub user_offline_grace: Duration,
    /// Joins of one connection that may wait for the access hook at once (default 8).
    pub max_pending_joins_per_connection: usize,
}

impl Default for HubConfig {
    fn default() -> Self {
        HubConfig {
            admin_token: None,
            cors_origin: "*".into(),
            typing_timeout: Duration::from_secs(10),
            replay_cap: 1000,
            max_content_bytes: 32 * 1024,
            max_events_per_second: 100,
            max_rooms_per_connection: 100,
            max_reply_bytes: 512 * 1024,
            max_read_bytes_per_second: 1024 * 1024,
            max_rest_requests_per_second: 1000,
            max_rest_read_bytes_per_second: 4 * 1024 * 1024,
            max_ids_per_read: 100,
            max_projects_per_ip_per_hour: 20,
            max_rooms_per_project: 10_000,
            max_members_per_room: 10_000,
            max_stored_bytes_per_project: 1024 * 1024 * 1024,
            retention_messages_per_room: 0,
            max_token_lifetime: Duration::from_secs(24 * 3600),
            resume_window: Duration::from_secs(120),
            max_resumable_sessions: 10_000,
            hook_timeout: Duration::from_secs(2),
            webhook_timeout: Duration::from_secs(10),
            webhook_batch_events: 100,
            webhook_batch_bytes: 256 * 1024,
            webhook_retry_min: Duration::from_secs(1),
            webhook_retry_max: Duration::from_secs(300),
            webhook_max_age: Duration::from_secs(24 * 3600),
            webhook_outbox_max_events: 100_000,
            user_offline_grace: Duration::from_secs(5),
            max_pending_joins_per_connection: 8,
        }
    }
}

/// The `data` of a `message.*` webhook event: the room and the message as it is now.
fn message_data(hub: &Hub, room: usize, row: &MessageRow) -> serde_json::Value {
    let name = &hub.rooms[room].name;
    serde_json::json!({"room": name, "message": MessageView::of(row, name, None)})
}

/// How deeply a message's `attachments` may nest: well inside the 128 levels
/// a JSON body may have in all (serde_json's default recursion limit).
pub const MAX_ATTACHMENTS_DEPTH: usize = 64;

/// What encoding a message adds to its stored size in a page or replay
/// (keys, `seq`, timestamps, the room name's share), for read budgets.
const PER_MESSAGE_OVERHEAD: usize = 200;

/// Most messages one retention trim deletes (one trim per stored message).
const MAX_TRIM_BATCH: u64 = 1000;

/// A tenant and everything live inside it.
pub(super) struct Project {
    pub(super) row: ProjectRow,
    pub(super) rooms: HashMap<String, usize>,
    pub(super) users: HashMap<String, User>,
    pub(super) connections: usize,
    pub(super) messages_in: u64,
    pub(super) messages_out: u64,
    /// Bytes its rooms' messages take in the store, for the storage quota.
    pub(super) stored_bytes: u64,
    /// REST requests its API key may still make (refills per second).
    pub(super) rest_requests: Allowance,
    /// REST history bytes its API key may still read (refills per second).
    pub(super) rest_reads: Allowance,
    /// History and replay bytes each of its users may still read over
    /// WebSocket, shared by the user's connections and kept across reconnects.
    pub(super) read_allowances: HashMap<String, Allowance>,
}

/// A connected user: their open connections and status.
pub(super) struct User {
    pub(super) conns: Vec<ConnId>,
    pub(super) status: Status,
}

/// A room in memory: stored facts plus who is joined and typing.
pub(super) struct Room {
    pub(super) pk: i64,
    pub(super) id: String,
    pub(super) project: usize,
    pub(super) name: String,
    pub(super) kind: RoomKind,
    pub(super) created_at: i64,
    /// How many members a private room lists; the list itself stays in the store.
    pub(super) member_count: usize,
    pub(super) last_seq: u64,
    /// Lowest stored `seq` (0: none stored); older ones were dropped by retention.
    pub(super) first_seq: u64,
    /// Bytes its messages take in the store.
    pub(super) stored_bytes: u64,
    /// Joined connections, in join order: the broadcast list.
    pub(super) conns: Vec<ConnId>,
    /// Joined users with how many of their connections are joined.
    pub(super) users: HashMap<String, u32>,
    /// Typing connections and when their indicator expires.
    pub(super) typing: HashMap<ConnId, Instant>,
    /// Connections in `conns` that subscribe without being members.
    pub(super) silent: HashSet<ConnId>,
    /// What members are shown of each other (Pusher `user_info`), by user.
    pub(super) infos: HashMap<String, String>,
}

impl Room {
    fn from_row(row: RoomRow, project: usize) -> Room {
        Room {
            pk: row.pk,
            id: row.id,
            project,
            name: row.name,
            kind: row.kind,
            created_at: row.created_at,
            member_count: row.member_count,
            last_seq: row.last_seq,
            first_seq: row.first_seq,
            stored_bytes: row.stored_bytes,
            conns: Vec::new(),
            users: HashMap::new(),
            typing: HashMap::new(),
            silent: HashSet::new(),
            infos: HashMap::new(),
        }
    }
}

/// A WebSocket connection's identity and joined rooms.
pub(super) struct Client {
    pub(super) project: usize,
    pub(super) user: String,
    pub(super) rooms: Vec<usize>,
    bucket: TokenBucket,
    allowed_rooms: Option<HashSet<String>>,
    expires_at_ms: Option<i64>,
    /// The hub asked the shell to close this connection; ignore what follows.
    closing: bool,
    /// The resumable session it holds (see [`super::resume`]).
    pub(super) resume_id: Option<String>,
    /// No user yet (a Pusher connection before a presence subscription):
    /// not counted as online, in no presence.
    pub(super) anonymous: bool,
    /// The options of the subscription being decided (room name, options).
    pub(super) join_options: Option<(String, JoinOptions)>,
}

/// An allowance that refills at `rate` units per second up to `rate`: the
/// budget of work a connection or an API key may still ask for. Work is
/// admitted while the allowance is positive and its cost, bounded before
/// it is done, is charged afterwards (a short debt, repaid by waiting).
#[derive(Debug, Clone, Copy)]
pub(super) struct Allowance {
    units: f64,
    last: Instant,
}

impl Allowance {
    pub(super) fn full(rate: f64, now: Instant) -> Allowance {
        Allowance { units: rate, last: now }
    }

    /// Refills for the time since the last look and returns what is left.
    pub(super) fn available(&mut self, rate: f64, now: Instant) -> f64 {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.units = (self.units + elapsed * rate).min(rate);
        self.last = now;
        self.units
    }

    /// Charges work that was done.
    pub(super) fn spend(&mut self, units: f64) {
        self.units -= units;
    }

    /// How long until the allowance is positive again.
    pub(super) fn wait(&self, rate: f64) -> Duration {
        if self.units > 0.0 || rate <= 0.0 {
            return Duration::ZERO;
        }
        Duration::from_secs_f64((-self.units / rate).min(3600.0)) + Duration::from_millis(1)
    }
}

/// Per-connection event budget: `rate` events per second with a burst of
/// `rate`. Events past it are refused `rate_limited`; a connection refused more
/// than `rate` times within one second is abusive and is closed 1008.
struct TokenBucket {
    allowance: Allowance,
    refused: u32,
    window_start: Instant,
}

/// What the bucket says about one event.
#[derive(Debug, PartialEq, Eq)]
enum Budget {
    Allowed,
    Refused,
    Abusive,
}

impl TokenBucket {
    fn new(rate: u32, now: Instant) -> TokenBucket {
        TokenBucket { allowance: Allowance::full(rate as f64, now), refused: 0, window_start: now }
    }

    fn take(&mut self, rate: u32, now: Instant) -> Budget {
        if self.allowance.available(rate as f64, now) >= 1.0 {
            self.allowance.spend(1.0);
            return Budget::Allowed;
        }
        if now.saturating_duration_since(self.window_start) >= Duration::from_secs(1) {
            self.window_start = now;
            self.refused = 0;
        }
        self.refused += 1;
        if self.refused > rate {
            Budget::Abusive
        } else {
            Budget::Refused
        }
    }
}

/// What a client presents to be let in, gathered by its dialect (query
/// parameters of a WebSocket upgrade, a Socket.IO `CONNECT`'s auth, …).
#[derive(Debug, Clone, Copy, Default)]
pub struct Credentials<'a> {
    /// A signed JWT (`token`).
    pub token: Option<&'a str>,
    /// The project's API key (`apiKey`).
    pub api_key: Option<&'a str>,
    /// The user (`userId`); with a token, it must be the token's subject.
    pub user_id: Option<&'a str>,
    /// The `Origin` header of the request that opened the connection.
    pub origin: Option<&'a str>,
}

/// How a dialect's subscription enters a room when it is not a plain
/// native join (Pusher channels); see [`Hub::subscribe`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JoinOptions {
    /// A subscriber, not a member: it receives the room's traffic but is
    /// never listed and causes no presence events.
    pub silent: bool,
    /// The project's backend signed this subscription (Pusher channel
    /// auth): a private room's member list is not asked.
    pub signed: bool,
    /// What other members are shown of this member (Pusher `user_info`), JSON text.
    pub info: Option<String>,
    /// A room that does not exist is created (Pusher channels are created on
    /// first subscribe): private when `signed`, else public.
    pub create: bool,
}

/// Who a connection belongs to, decided when it is let in; opened with
/// [`Hub::handle_ws_open`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    pub(super) project: usize,
    pub(super) user: String,
    /// The rooms a signed token limits the user to.
    pub(super) allowed_rooms: Option<HashSet<String>>,
    /// When the signed token expires (ms since the epoch); the connection is closed then.
    pub(super) expires_at_ms: Option<i64>,
}

/// Who asks for a room, for [`Hub::authorize_room`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Principal {
    /// A WebSocket, with its user, token scope and joined rooms.
    Conn(ConnId),
    /// The project's backend, holding its API key (REST).
    Backend,
}

/// What a request does with a room, for [`Hub::authorize_room`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum RoomAction {
    /// `join`, with or without `since`.
    Join,
    /// `history`: the same access as joining, without joining.
    Read,
    /// `message`, `typing`, `read`, `edit`, `delete`: only in a joined room.
    Act,
}

/// An output waiting for the end of the loop iteration.
struct Pending {
    output: Option<Output>,
    /// Sent only if the iteration's commit succeeds.
    durable: bool,
    /// Sent instead when the commit fails.
    on_failure: Option<Output>,
}

/// One iteration's outputs, waiting for its batch (if it wrote) and for every
/// iteration before it.
struct Held {
    /// The batch's id; `None` when the iteration wrote nothing.
    batch: Option<u64>,
    /// Approximate bytes of the batch, for the in-flight bound.
    bytes: usize,
    outputs: VecDeque<Pending>,
    /// Its batch (or, without one, nothing) is settled.
    done: bool,
    /// Its batch or one before it failed: durable outputs become failures.
    failed: bool,
}

/// Facts of batches handed over but not yet committed, answered from memory
/// (the read connection cannot see them). Each entry names the batch that
/// wrote it last and goes when that batch is settled.
#[derive(Default)]
pub(super) struct InFlight {
    /// `room_pk \0 user \0 tempId` → (message id, seq, batch).
    temp_ids: HashMap<String, (String, u64, u64)>,
    /// Message id → (latest row, batch, whether the row itself is not yet
    /// committed): new and edited messages.
    messages: HashMap<String, (Arc<MessageRow>, u64, bool)>,
    /// `message id \0 user` → batch: receipts.
    receipts: HashMap<String, u64>,
    /// `room_pk \0 user` → (member after the change, room_pk, user, batch):
    /// private-room memberships added or removed.
    pub(super) members: HashMap<String, (bool, i64, String, u64)>,
    /// What to forget when a batch commits, in batch order.
    order: VecDeque<(u64, Forget)>,
}

enum Forget {
    TempId(String),
    Message(String),
    Receipt(String),
    Member(String),
}

impl InFlight {
    fn temp_key(room_pk: i64, user: &str, temp_id: &str) -> String {
        format!("{room_pk}\0{user}\0{temp_id}")
    }

    fn receipt_key(message_id: &str, user: &str) -> String {
        format!("{message_id}\0{user}")
    }

    /// Forgets what batches up to `batch` wrote (they are committed).
    fn settle(&mut self, batch: u64) {
        while self.order.front().is_some_and(|(b, _)| *b <= batch) {
            let Some((b, forget)) = self.order.pop_front() else { break };
            match forget {
                Forget::TempId(k) => {
                    if self.temp_ids.get(&k).is_some_and(|v| v.2 == b) {
                        self.temp_ids.remove(&k);
                    }
                }
                Forget::Message(k) => {
                    if self.messages.get(&k).is_some_and(|v| v.1 == b) {
                        self.messages.remove(&k);
                    }
                }
                Forget::Receipt(k) => {
                    if self.receipts.get(&k) == Some(&b) {
                        self.receipts.remove(&k);
                    }
                }
                Forget::Member(k) => {
                    if self.members.get(&k).is_some_and(|v| v.3 == b) {
                        self.members.remove(&k);
                    }
                }
            }
        }
    }

    fn clear(&mut self) {
        *self = InFlight::default();
    }

    /// Forgets the in-flight rows of a room up to `through` (retention
    /// deletes them); returns the bytes of those not yet committed.
    fn forget_trimmed(&mut self, pk: i64, through: u64) -> u64 {
        let mut freed = 0;
        self.messages.retain(|_, (row, _, new)| {
            let trimmed = row.room_pk == pk && row.seq <= through;
            if trimmed && *new {
                freed += row.stored_size() as u64;
            }
            !trimmed
        });
        freed
    }

    fn member_key(room_pk: i64, user: &str) -> String {
        format!("{room_pk}\0{user}")
    }

    /// The in-flight version of a message of this room.
    fn message(&self, room_pk: i64, id: &str) -> Option<&Arc<MessageRow>> {
        self.messages.get(id).map(|(row, _, _)| row).filter(|row| row.room_pk == room_pk)
    }

    /// A page of committed rows as it will read once what is in flight is
    /// committed: in-flight edits applied, in-flight new rows of the room
    /// that match the query merged in, cut to the query's limit.
    ///
    /// `cut`: the store ended an ascending page early for its byte budget;
    /// newer rows (all in-flight new rows are newer) then do not belong in it.
    pub(super) fn complete_page(
        &self,
        pk: i64,
        q: &HistoryQuery,
        mut rows: Vec<MessageRow>,
        cut: bool,
    ) -> Vec<MessageRow> {
        if self.messages.is_empty() {
            return rows;
        }
        for row in rows.iter_mut() {
            if let Some(current) = self.message(pk, &row.id) {
                *row = MessageRow::clone(current);
            }
        }
        if cut && q.after.is_some() {
            return rows;
        }
        let (after, before) = (q.after.unwrap_or(0), q.before.unwrap_or(u64::MAX));
        let fresh = self
            .messages
            .values()
            .filter(|(r, _, new)| *new && r.room_pk == pk && r.seq > after && r.seq < before)
            .map(|(r, _, _)| MessageRow::clone(r));
        let len = rows.len();
        rows.extend(fresh);
        if rows.len() == len {
            return rows;
        }
        rows.sort_by_key(|r| r.seq);
        let limit = q.limit as usize;
        if rows.len() > limit {
            if q.after.is_some() {
                rows.truncate(limit);
            } else {
                rows.drain(..rows.len() - limit);
            }
        }
        rows
    }
}

/// A refused client request: becomes an `error` frame.
pub(super) struct Refusal {
    pub(super) code: &'static str,
    pub(super) message: String,
}

impl Refusal {
    pub(super) fn new(code: &'static str, message: impl Into<String>) -> Refusal {
        Refusal { code, message: message.into() }
    }

    pub(super) fn internal(err: &StoreError) -> Refusal {
        log::error!("{err}");
        Refusal::new("internal", "storage failed; nothing was stored")
    }
}

/// Validated message input, shared by the WebSocket and REST paths.
pub(super) struct NewMessage<'a> {
    pub(super) user: &'a str,
    pub(super) content: &'a str,
    pub(super) content_type: Option<&'a str>,
    pub(super) attachments: Option<&'a str>,
    pub(super) temp_id: Option<&'a str>,
}

/// Server-wide counters for `/stats`.
#[derive(Default)]
pub(super) struct Counters {
    pub(super) messages_in: u64,
    pub(super) messages_out: u64,
    pub(super) bytes_in: u64,
    pub(super) bytes_out: u64,
}

/// The state machine. See the module docs.
pub struct Hub {
    pub(super) config: HubConfig,
    pub(super) store: Box<dyn Store>,
    pub(super) ids: Ids,
    pub(super) started: Instant,
    pub(super) projects: Vec<Project>,
    /// Project index by the id digits an API key carries.
    pub(super) project_by_digits: HashMap<String, usize>,
    pub(super) rooms: Slab<Room>,
    pub(super) clients: HashMap<ConnId, Client>,
    typing_deadlines: BinaryHeap<Reverse<(Instant, usize, ConnId)>>,
    /// When connections made with signed tokens must close.
    expiries: BinaryHeap<Reverse<(Instant, ConnId)>>,
    /// The current iteration's outputs.
    outbox: VecDeque<Pending>,
    /// The current iteration's writes and their approximate size.
    ops: Vec<WriteOp>,
    ops_bytes: usize,
    /// Earlier iterations' outputs, oldest first, until their batches settle.
    held: VecDeque<Held>,
    /// Outputs free to go, for [`Hub::poll_output`].
    ready: VecDeque<Output>,
    /// The id the current iteration's batch will get.
    next_batch: u64,
    /// See [`Batch::epoch`].
    epoch: u64,
    /// Batches handed over and not yet settled, and their bytes.
    in_flight_batches: usize,
    in_flight_bytes: usize,
    /// The current iteration wrote on a state a failed batch has since undone.
    doomed: bool,
    /// The primary key the next room gets (rooms are keyed by the core, so
    /// a batch needs nothing read back).
    next_room_pk: i64,
    pub(super) inflight: InFlight,
    /// The access hook and the webhook outbox.
    pub(super) hooks: super::hooks::Hooks,
    /// Sessions a client may resume, by their secret id.
    pub(super) resumables: HashMap<String, super::resume::Resumable>,
    /// Dropped sessions, by the time they stop being resumable.
    pub(super) resumable_deadlines: VecDeque<(Instant, i64, String)>,
    /// Projects created per source address in the current hour (open creation only).
    pub(super) projects_by_ip: HashMap<std::net::IpAddr, (Instant, u32)>,
    pub(super) counters: Counters,
    pub(super) metrics: Metrics,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct MemberView<'a> {
    user_id: &'a str,
    status: &'static str,
}

impl Hub {
    /// Builds the hub from what the store holds.
    pub fn new(
        config: HubConfig,
        mut store: Box<dyn Store>,
        entropy: Box<dyn Entropy>,
        now: Now,
    ) -> Result<Hub, StoreError> {
        let snapshot = store.load()?;
        let mut hub = Hub {
            config,
            store,
            ids: Ids::new(entropy),
            started: now.mono,
            projects: Vec::new(),
            project_by_digits: HashMap::new(),
            rooms: Slab::new(),
            clients: HashMap::new(),
            typing_deadlines: BinaryHeap::new(),
            expiries: BinaryHeap::new(),
            outbox: VecDeque::new(),
            ops: Vec::new(),
            ops_bytes: 0,
            held: VecDeque::new(),
            ready: VecDeque::new(),
            next_batch: 1,
            epoch: 0,
            in_flight_batches: 0,
            in_flight_bytes: 0,
            doomed: false,
            next_room_pk: 1,
            inflight: InFlight::default(),
            hooks: Default::default(),
            resumables: HashMap::new(),
            resumable_deadlines: VecDeque::new(),
            projects_by_ip: HashMap::new(),
            counters: Counters::default(),
            metrics: Metrics::default(),
        };
        hub.apply_snapshot(snapshot, now);
        Ok(hub)
    }

    fn apply_snapshot(&mut self, snapshot: Snapshot, at: Now) {
        let now = at.mono;
        self.next_room_pk = snapshot.rooms.iter().map(|r| r.pk).max().unwrap_or(0) + 1;
        if let Some(last) = &snapshot.last_message_id {
            self.ids.continue_after(last, "m_");
        }
        for row in snapshot.projects {
            self.add_project(row, now);
        }
        for row in snapshot.rooms {
            if let Some(&project) = self.project_by_digits.get(row.project_id.trim_start_matches("p_")) {
                self.add_room(row, project);
            }
        }
        self.load_resumables(snapshot.resumables, at);
        self.load_outbox(snapshot.outbox, snapshot.last_outbox_seq);
    }

    pub(super) fn add_project(&mut self, row: ProjectRow, now: Instant) -> usize {
        let ix = self.projects.len();
        self.project_by_digits.insert(row.id.trim_start_matches("p_").to_string(), ix);
        self.projects.push(Project {
            row,
            rooms: HashMap::new(),
            users: HashMap::new(),
            connections: 0,
            messages_in: 0,
            messages_out: 0,
            stored_bytes: 0,
            rest_requests: Allowance::full(self.config.max_rest_requests_per_second as f64, now),
            rest_reads: Allowance::full(self.config.max_rest_read_bytes_per_second as f64, now),
            read_allowances: HashMap::new(),
        });
        ix
    }

    pub(super) fn add_room(&mut self, row: RoomRow, project: usize) -> usize {
        let name = row.name.clone();
        self.projects[project].stored_bytes += row.stored_bytes;
        let ix = self.rooms.insert(Room::from_row(row, project));
        self.projects[project].rooms.insert(name, ix);
        ix
    }

    // ----- getters -----

    /// Open WebSocket connections.
    pub fn connection_count(&self) -> usize {
        self.clients.len()
    }

    /// Seconds since start.
    pub(super) fn uptime(&self, now: Now) -> u64 {
        now.mono.saturating_duration_since(self.started).as_secs()
    }

    /// The project an API key belongs to, compared in constant time.
    pub fn project_for_key(&self, key: &str) -> Option<usize> {
        let digits = project_digits_of_key(key)?;
        let &ix = self.project_by_digits.get(digits)?;
        constant_time_eq(&self.projects[ix].row.api_key, key).then_some(ix)
    }

    // ----- inputs -----

    /// A loop iteration took `d` (from poll wake-up to the last flush).
    pub fn record_iteration(&mut self, d: Duration) {
        self.metrics.iteration.observe(d);
    }

    /// A batch was reported committed `d` after it was handed over.
    pub fn record_commit(&mut self, d: Duration) {
        self.metrics.commit.observe(d);
    }

    /// The shell closed a connection for a limit or policy.
    pub fn record_disconnect(&mut self, reason: Disconnect) {
        *self.metrics.disconnects.entry(reason).or_insert(0) += 1;
    }

    /// The shell refused a connection at accept.
    pub fn record_refused(&mut self) {
        self.metrics.refused += 1;
    }

    /// Adds bytes moved by the shell to the server counters.
    pub fn record_io(&mut self, bytes_in: u64, bytes_out: u64) {
        self.counters.bytes_in += bytes_in;
        self.counters.bytes_out += bytes_out;
    }

    /// Decides a WebSocket upgrade request: the session, or the refusal.
    /// With `token` (a signed JWT) the key never reaches the browser; with
    /// `apiKey` + `userId` the project must not require tokens. 401 for a bad
    /// or missing key or token, 400 for a missing or invalid `userId`, 403 for
    /// an `Origin` outside the project's allow-list.
    pub fn authorize_ws(&self, req: &Request, now: Now) -> Result<Session, Response> {
        let credentials = Credentials {
            token: req.query_param("token"),
            api_key: req.query_param("apiKey").or_else(|| req.header("x-api-key")),
            user_id: req.query_param("userId"),
            origin: req.header("origin"),
        };
        self.authorize(&credentials, now)
            .map_err(|(status, code, message)| self.with_cors(req, Response::error(status, code, &message)))
    }

    /// Decides what a client presents, whatever its dialect: the session, or
    /// the refusal as an HTTP status, error code and message.
    pub fn authorize(&self, c: &Credentials<'_>, now: Now) -> Result<Session, (u16, &'static str, String)> {
        let refuse = |status: u16, code: &'static str, message: &str| (status, code, message.to_string());
        let session = if let Some(token) = c.token {
            let unauthorized = |e: token::TokenError| refuse(401, "unauthorized", &e.to_string());
            let issuer = token::issuer(token).map_err(unauthorized)?;
            let project = self
                .project_by_digits
                .get(issuer.trim_start_matches("p_"))
                .copied()
                .filter(|&ix| self.projects[ix].row.id == issuer)
                .ok_or_else(|| refuse(401, "unauthorized", "token names an unknown project"))?;
            let secret = self.projects[project].row.api_key.as_bytes();
            let claims = token::verify(token, secret, now.unix_ms).map_err(unauthorized)?;
            let lifetime_ms = self.config.max_token_lifetime.as_millis().min(i64::MAX as u128) as i64;
            if claims.expires_at_ms.saturating_sub(now.unix_ms) > lifetime_ms {
                let message =
                    format!("token `exp` is more than {} s away; sign shorter-lived tokens", lifetime_ms / 1000);
                return Err(refuse(401, "unauthorized", &message));
            }
            if c.user_id.is_some_and(|u| u != claims.user) {
                return Err(refuse(401, "unauthorized", "userId differs from the token's subject"));
            }
            Session {
                project,
                user: claims.user,
                allowed_rooms: claims.rooms.map(|r| r.into_iter().collect()),
                expires_at_ms: Some(claims.expires_at_ms),
            }
        } else {
            let Some(project) = c.api_key.and_then(|k| self.project_for_key(k)) else {
                return Err(refuse(401, "unauthorized", "missing or invalid apiKey"));
            };
            if self.projects[project].row.require_tokens {
                return Err(refuse(401, "unauthorized", "this project requires a signed token (?token=)"));
            }
            let user = c.user_id.unwrap_or("");
            if user.is_empty() {
                return Err(refuse(400, "bad_request", "missing userId"));
            }
            if !valid_user_id(user) {
                return Err(refuse(400, "bad_request", "userId must be 1-128 printable characters"));
            }
            Session { project, user: user.to_string(), allowed_rooms: None, expires_at_ms: None }
        };
        if !self.origin_allowed(session.project, c.origin) {
            return Err(refuse(403, "forbidden", "this Origin may not open WebSockets for this project"));
        }
        Ok(session)
    }

    /// A session without a user for project `project` (a Pusher connection:
    /// the app key is public, channels are signed one by one), if the
    /// project's `allowedOrigins` admit `origin`.
    pub fn pusher_session(&self, project: usize, origin: Option<&str>) -> Result<Session, String> {
        if !self.origin_allowed(project, origin) {
            return Err("this Origin may not open WebSockets for this project".into());
        }
        Ok(Session { project, user: String::new(), allowed_rooms: None, expires_at_ms: None })
    }

    /// Whether the project's `allowedOrigins` (empty: any) admit `origin`
    /// (none sent: not a browser, admitted).
    fn origin_allowed(&self, project: usize, origin: Option<&str>) -> bool {
        let origins = &self.projects[project].row.allowed_origins;
        origin.is_none_or(|o| origins.is_empty() || origins.iter().any(|x| x == o))
    }

    /// The project of a connection.
    pub fn project_of(&self, conn: ConnId) -> Option<usize> {
        self.clients.get(&conn).map(|c| c.project)
    }

    /// A project's public id (`p_…`, the Pusher app key).
    pub fn project_id(&self, project: usize) -> &str {
        &self.projects[project].row.id
    }

    /// A WebSocket was accepted for `session`: greets it and marks its user online.
    pub fn handle_ws_open(&mut self, conn: ConnId, session: Session, now: Now) {
        let Session { project, user, allowed_rooms, expires_at_ms } = session;
        log::debug!(conn:% = conn, project:% = self.projects[project].row.id, user:% = user; "open");
        self.projects[project].connections += 1;
        if !user.is_empty() {
            self.register_user(project, &user, conn, now);
        }
        let wire = encode(&serde_json::json!({"type": "connected", "connectionId": conn.to_string(), "userId": user}));
        let bucket = TokenBucket::new(self.config.max_events_per_second, now.mono);
        if let Some(expires) = expires_at_ms {
            let left = Duration::from_millis(expires.saturating_sub(now.unix_ms).max(0) as u64);
            self.expiries.push(Reverse((now.mono + left, conn)));
        }
        let anonymous = user.is_empty();
        let client = Client {
            project,
            user,
            rooms: Vec::new(),
            bucket,
            allowed_rooms,
            expires_at_ms,
            closing: false,
            resume_id: None,
            anonymous,
            join_options: None,
        };
        self.clients.insert(conn, client);
        self.send(project, conn, wire);
    }

    /// Counts a connection as one of `user`'s (online, presence).
    fn register_user(&mut self, project: usize, user: &str, conn: ConnId, now: Now) {
        let rate = self.config.max_read_bytes_per_second as f64;
        let p = &mut self.projects[project];
        p.read_allowances.entry(user.to_string()).or_insert_with(|| Allowance::full(rate, now.mono));
        let first = !p.users.contains_key(user);
        p.users
            .entry(user.to_string())
            .or_insert_with(|| User { conns: Vec::new(), status: Status::Online })
            .conns
            .push(conn);
        self.user_connected(project, user, first, now);
    }

    /// An anonymous connection (a [`Session`] with no user) becomes `user`'s,
    /// as a Pusher presence subscription names it. A connection is one
    /// user's: naming another is refused.
    pub fn become_user(&mut self, conn: ConnId, user: &str, now: Now) -> Result<(), String> {
        if !valid_user_id(user) {
            return Err("user_id must be 1-128 printable characters".into());
        }
        let Some(client) = self.clients.get_mut(&conn) else { return Err("the connection is closing".into()) };
        if !client.anonymous {
            return if client.user == user {
                Ok(())
            } else {
                Err(format!("this connection is user `{}`; one connection is one user", client.user))
            };
        }
        client.anonymous = false;
        client.user = user.to_string();
        let project = client.project;
        self.register_user(project, user, conn, now);
        Ok(())
    }

    /// Enters a room with a dialect's options (see [`JoinOptions`]), through
    /// the same rules and hooks as a native `join` (its frames and errors are
    /// the native `joined` / `error` of the event `join`).
    pub fn subscribe(&mut self, conn: ConnId, room: &str, options: JoinOptions, request: Option<u64>, now: Now) {
        if let Some(client) = self.clients.get_mut(&conn) {
            client.join_options = Some((room.to_string(), options));
        }
        let event = serde_json::json!({"type": "join", "room": room}).to_string();
        self.handle_request(conn, &event, request, now);
        if let Some(client) = self.clients.get_mut(&conn) {
            client.join_options = None;
        }
    }

    /// The options of the subscription of `conn` to `room` being decided.
    pub(super) fn join_options(&self, conn: ConnId, room: &str) -> JoinOptions {
        match self.clients.get(&conn).and_then(|c| c.join_options.as_ref()) {
            Some((r, options)) if r == room => options.clone(),
            _ => JoinOptions::default(),
        }
    }

    /// One text frame from a WebSocket.
    pub fn handle_ws_text(&mut self, conn: ConnId, text: &str, now: Now) {
        self.handle_request(conn, text, None, now);
    }

    /// One event as native JSON text, from any dialect. With `request`, an
    /// [`Output::Done`] follows the event's answers to its sender once it is
    /// finished (and committed), so a dialect can acknowledge it.
    pub fn handle_request(&mut self, conn: ConnId, text: &str, request: Option<u64>, now: Now) {
        let outcome = self.handle_event_text(conn, text, now);
        if let Some(call) = self.hooks.just_parked.take() {
            // A join waiting for the access hook: it ends when the backend answers.
            self.hooks.attach_request(call, request);
            return;
        }
        let Some(request) = request else { return };
        // `None`: a closing connection; nothing more is said to it.
        if let Some(outcome) = outcome {
            self.push_done(conn, request, outcome);
        }
    }

    /// Ends a request that carried a request id: `Done`, held until the
    /// commit when it was carried out (an `internal` error if that fails).
    pub(super) fn push_done(&mut self, conn: ConnId, request: u64, outcome: Result<(), Refusal>) {
        match outcome {
            Ok(()) => {
                let failure = Output::Done {
                    to: conn,
                    request,
                    error: Some(("internal", "storage failed; the request was not stored".into())),
                };
                self.push(Some(Output::Done { to: conn, request, error: None }), true, Some(failure));
            }
            Err(refusal) => self.push(
                Some(Output::Done { to: conn, request, error: Some((refusal.code, refusal.message)) }),
                false,
                None,
            ),
        }
    }

    /// Decodes and dispatches one event: `None` when the connection is
    /// closing (nothing sent), else whether it was carried out. A refusal has
    /// been answered with an `error` frame already.
    fn handle_event_text(&mut self, conn: ConnId, text: &str, now: Now) -> Option<Result<(), Refusal>> {
        let project = match self.admit_event(conn, Some(text), now) {
            Ok(project) => project,
            Err(refusal) => return refusal.map(Err),
        };
        let event = match decode_client_event(text) {
            Ok(event) => event,
            Err(err) => {
                self.send_error(
                    project,
                    conn,
                    err.event.as_deref(),
                    "bad_request",
                    &err.message,
                    err.temp_id.as_deref(),
                );
                return Some(Err(Refusal::new("bad_request", err.message)));
            }
        };
        let name = event.name();
        if let Err(refusal) = self.dispatch(conn, event, now) {
            // Any readable `tempId` is echoed, whatever the event.
            let (_, temp_id) = protocol::peek_event(text);
            self.send_error(project, conn, Some(name), refusal.code, &refusal.message, temp_id.as_deref());
            return Some(Err(refusal));
        }
        Some(Ok(()))
    }

    /// A binary frame: the protocol is JSON text, so it is refused (connection kept).
    pub fn handle_ws_binary(&mut self, conn: ConnId, now: Now) {
        let Ok(project) = self.admit_event(conn, None, now) else { return };
        let message = "binary frames are not supported; send JSON text frames";
        self.send_error(project, conn, None, "bad_request", message, None);
    }

    /// Counts an incoming event and charges the connection's rate budget.
    /// Returns the project when the event may be handled, else the refusal
    /// already answered (`None` when the connection is closing).
    fn admit_event(&mut self, conn: ConnId, text: Option<&str>, now: Now) -> Result<usize, Option<Refusal>> {
        let rate = self.config.max_events_per_second;
        let Some(client) = self.clients.get_mut(&conn) else { return Err(None) };
        if client.closing {
            return Err(None);
        }
        let project = client.project;
        let budget = client.bucket.take(rate, now.mono);
        self.counters.messages_in += 1;
        self.projects[project].messages_in += 1;
        match budget {
            Budget::Allowed => Ok(project),
            Budget::Refused => {
                let message = format!("more than {rate} events per second");
                let (event, temp_id) = text.map(protocol::peek_event).unwrap_or_default();
                self.send_error(project, conn, event.as_deref(), "rate_limited", &message, temp_id.as_deref());
                Err(Some(Refusal::new("rate_limited", message)))
            }
            Budget::Abusive => {
                if let Some(client) = self.clients.get_mut(&conn) {
                    client.closing = true;
                }
                log::warn!(conn:% = conn, project:% = self.projects[project].row.id; "closed 1008: sustained rate abuse");
                self.record_disconnect(Disconnect::RateLimit);
                self.push(Some(Output::Close { to: conn, code: 1008, reason: "rate limit exceeded" }), false, None);
                Err(None)
            }
        }
    }

    /// A WebSocket closed (cleanly or not): leaves its rooms, clears typing,
    /// and tells rooms when the user's last connection went.
    pub fn handle_ws_closed(&mut self, conn: ConnId, now: Now) {
        self.detach_resumable(conn, now);
        let Some(client) = self.clients.get(&conn) else { return };
        let (project, user, anonymous) = (client.project, client.user.clone(), client.anonymous);
        log::debug!(conn:% = conn, project:% = self.projects[project].row.id, user:% = user; "closed");
        self.forget_parked(conn);
        let last = !anonymous && self.projects[project].users.get(&user).is_none_or(|u| u.conns.len() <= 1);
        if last {
            self.user_disconnected(project, &user, now);
            let wire = encode(&serde_json::json!({"type": "presence", "userId": user, "status": "offline"}));
            let to = self.presence_audience(project, &user);
            self.broadcast(project, to, wire, false);
        }
        let rooms = self.clients.get(&conn).map(|c| c.rooms.clone()).unwrap_or_default();
        for room in rooms {
            self.leave_room(conn, room, now);
        }
        self.clients.remove(&conn);
        let (rate, p) = (self.config.max_read_bytes_per_second as f64, &mut self.projects[project]);
        if p.read_allowances.len() > 1024 && p.read_allowances.len() > 2 * p.users.len() {
            // Forget users with no connection whose allowance has refilled:
            // a new one starts full anyway. Users still in debt are kept.
            let users = &p.users;
            p.read_allowances
                .retain(|user, allowance| users.contains_key(user) || allowance.available(rate, now.mono) < rate);
        }
        if self.expiries.len() > 64 && self.expiries.len() > 2 * self.clients.len() {
            // Closed connections leave their expiry behind; drop them in one
            // pass once they are the majority, so churn cannot grow the heap.
            let clients = &self.clients;
            self.expiries.retain(|Reverse((_, c))| clients.contains_key(c));
        }
        let p = &mut self.projects[project];
        p.connections = p.connections.saturating_sub(1);
        if let Some(u) = p.users.get_mut(&user) {
            u.conns.retain(|&c| c != conn);
            if u.conns.is_empty() {
                p.users.remove(&user);
            }
        }
    }

    /// Fires every deadline due at `now` (typing indicators, token expiry).
    pub fn handle_timeout(&mut self, now: Now) {
        while let Some(&Reverse((deadline, conn))) = self.expiries.peek() {
            if deadline > now.mono {
                break;
            }
            self.expiries.pop();
            let Some(client) = self.clients.get(&conn) else { continue };
            let Some(expires) = client.expires_at_ms else { continue };
            if expires <= now.unix_ms + 1 {
                log::info!(conn:% = conn, project:% = self.projects[client.project].row.id; "closed 1008: token expired");
                self.record_disconnect(Disconnect::TokenExpired);
                self.push(Some(Output::Close { to: conn, code: 1008, reason: "token expired" }), false, None);
            } else {
                // The wall clock was stepped back since the connection opened:
                // wait for what the token says is left.
                let left = Duration::from_millis((expires - now.unix_ms) as u64);
                self.expiries.push(Reverse((now.mono + left, conn)));
            }
        }
        self.expire_resumables(now);
        self.fire_hook_timers(now);
        while let Some(Reverse((deadline, room, conn))) = self.typing_deadlines.peek().copied() {
            if deadline > now.mono {
                break;
            }
            self.typing_deadlines.pop();
            let due = self.rooms.get(room).and_then(|r| r.typing.get(&conn)) == Some(&deadline);
            if due {
                self.stop_typing(conn, room);
            }
        }
    }

    // ----- outputs -----

    /// Token expiries waiting in the heap (tests: it must not grow with churn).
    #[cfg(test)]
    pub(super) fn pending_expiries(&self) -> usize {
        self.expiries.len()
    }

    /// The next deadline the shell must wake up for.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let typing = self.typing_deadlines.peek().map(|Reverse((deadline, _, _))| *deadline);
        let expiry = self.expiries.peek().map(|Reverse((deadline, _))| *deadline);
        let resumable = self.resumable_deadlines.front().map(|(deadline, _, _)| *deadline);
        typing.into_iter().chain(expiry).chain(resumable).chain(self.hooks_deadline()).min()
    }

    /// The next output free to go: every output of an iteration whose batch
    /// and every batch before it are settled. Call after [`Hub::commit`] and
    /// after [`Hub::handle_committed`].
    pub fn poll_output(&mut self) -> Option<Output> {
        self.ready.pop_front()
    }

    /// Ends the iteration: its outputs join the queue behind earlier
    /// iterations', and its writes, if any, come back as the batch the shell
    /// must hand to the store. Outputs of an iteration without writes go as
    /// soon as everything before them has.
    pub fn commit(&mut self) -> Option<Batch> {
        let outputs = std::mem::take(&mut self.outbox);
        let ops = std::mem::take(&mut self.ops);
        let bytes = std::mem::take(&mut self.ops_bytes);
        if std::mem::take(&mut self.doomed) {
            // Built on a state a failed batch undid after these writes were
            // made: refuse them here, as the store would.
            log::error!("refusing an iteration's writes: they depended on a batch that failed");
            self.metrics.commit_failures += 1;
            self.inflight.clear();
            self.held.push_back(Held { batch: None, bytes: 0, outputs, done: true, failed: true });
            self.reconcile_with_store();
            self.release();
            return None;
        }
        let batch = (!ops.is_empty()).then(|| {
            let id = self.next_batch;
            self.next_batch += 1;
            Batch { id, epoch: self.epoch, ops, bytes }
        });
        if batch.is_none() && outputs.is_empty() {
            return None;
        }
        if let Some(b) = &batch {
            self.in_flight_batches += 1;
            self.in_flight_bytes += b.bytes;
        }
        let done = batch.is_none();
        let failed = done && self.held.back().is_some_and(|h| h.failed && !h.done);
        self.held.push_back(Held { batch: batch.as_ref().map(|b| b.id), bytes, outputs, done, failed });
        self.release();
        batch
    }

    /// The store settled a batch (in batch order). On success its outputs and
    /// those queued behind it up to the next unsettled batch are released;
    /// on failure the durable ones become their failure answers, and so do
    /// those of every iteration queued behind it.
    pub fn handle_committed(&mut self, completion: Completion) {
        let Completion { id, result, took } = completion;
        self.metrics.store.observe(took);
        let Some(ix) = self.held.iter().position(|h| h.batch == Some(id) && !h.done) else {
            log::error!("completion for unknown batch {id}");
            return;
        };
        let held = &mut self.held[ix];
        held.done = true;
        self.in_flight_batches = self.in_flight_batches.saturating_sub(1);
        self.in_flight_bytes = self.in_flight_bytes.saturating_sub(held.bytes);
        match result {
            Ok(()) if !held.failed => self.inflight.settle(id),
            Ok(()) => log::error!("batch {id} committed after an earlier batch of its epoch failed"),
            Err(err) => {
                if !held.failed {
                    log::error!(
                        "commit failed, answering the writes of batch {id} and those behind it with errors: {err}"
                    );
                    self.metrics.commit_failures += 1;
                    for h in self.held.iter_mut().skip(ix) {
                        h.failed = true;
                    }
                    self.epoch += 1;
                    self.inflight.clear();
                    self.doomed = !self.ops.is_empty();
                    self.reconcile_with_store();
                }
            }
        }
        self.hooks_committed();
        self.release();
    }

    /// Moves the outputs of settled iterations at the head of the queue to `ready`.
    fn release(&mut self) {
        while self.held.front().is_some_and(|h| h.done) {
            let Some(held) = self.held.pop_front() else { break };
            for pending in held.outputs {
                let output = if held.failed && pending.durable {
                    let failure = pending.on_failure;
                    if matches!(failure, Some(Output::Frame { .. })) {
                        *self.metrics.errors.entry("internal").or_insert(0) += 1;
                    }
                    failure
                } else {
                    pending.output
                };
                if let Some(output) = output {
                    self.ready.push_back(output);
                }
            }
        }
    }

    /// Ends the iteration and settles its batch at once through `writer`, in
    /// this thread: the whole cycle in one call, for tests and benches.
    /// Returns whether the iteration wrote, or the error its batch failed with.
    pub fn commit_with(&mut self, writer: &mut dyn BatchWriter) -> Result<bool, StoreError> {
        let Some(batch) = self.commit() else { return Ok(false) };
        let result = writer.apply(&batch);
        self.handle_committed(Completion { id: batch.id, result: result.clone(), took: Duration::ZERO });
        result.map(|()| true)
    }

    /// Batches handed over and not settled, and their approximate bytes,
    /// counting the current iteration's writes as one more.
    pub fn store_backlog(&self) -> (usize, usize) {
        let current = usize::from(!self.ops.is_empty());
        (self.in_flight_batches + current, self.in_flight_bytes + self.ops_bytes)
    }

    /// Writes made so far in the current iteration (the shell tells writers
    /// from readers by it).
    pub fn pending_writes(&self) -> usize {
        self.ops.len()
    }

    /// Whether anything is waiting: batches in flight or outputs held.
    pub fn has_pending(&self) -> bool {
        !self.held.is_empty() || !self.ops.is_empty() || !self.outbox.is_empty()
    }

    /// Adds a write to the current iteration's batch.
    pub(super) fn write(&mut self, op: WriteOp) {
        self.ops_bytes += op.size();
        self.ops.push(op);
    }

    /// Records a message written in the current iteration as in flight.
    fn track_message(&mut self, row: &Arc<MessageRow>) {
        let batch = self.next_batch;
        if let Some(temp_id) = &row.temp_id {
            let key = InFlight::temp_key(row.room_pk, &row.user_id, temp_id);
            self.inflight.order.push_back((batch, Forget::TempId(key.clone())));
            self.inflight.temp_ids.insert(key, (row.id.clone(), row.seq, batch));
        }
        self.inflight.order.push_back((batch, Forget::Message(row.id.clone())));
        self.inflight.messages.insert(row.id.clone(), (row.clone(), batch, true));
    }

    /// Whether a user is a member of a private room, counting changes in flight.
    pub(super) fn is_member(&mut self, pk: i64, user: &str) -> Result<bool, StoreError> {
        match self.inflight.members.get(&InFlight::member_key(pk, user)) {
            Some((member, ..)) => Ok(*member),
            None => self.store.is_member(pk, user),
        }
    }

    /// A private room's members, counting changes in flight, sorted.
    pub(super) fn members_of(&mut self, pk: i64, limit: usize) -> Result<Vec<String>, StoreError> {
        let mut members = self.store.members(pk, limit)?;
        if self.inflight.members.values().any(|(_, room, _, _)| *room == pk) {
            for (member, _, user, _) in self.inflight.members.values().filter(|(_, room, _, _)| *room == pk) {
                match (members.binary_search(user), member) {
                    (Err(at), true) => members.insert(at, user.clone()),
                    (Ok(at), false) => {
                        members.remove(at);
                    }
                    _ => {}
                }
            }
        }
        members.truncate(limit);
        Ok(members)
    }

    /// Adds (or removes) a private-room member in the current batch and in
    /// memory; true when that changes the membership.
    pub(super) fn change_membership(&mut self, pk: i64, user: &str, add: bool) -> Result<bool, StoreError> {
        let was = self.is_member(pk, user)?;
        if was == add {
            return Ok(false);
        }
        let user_id = user.to_string();
        self.write(if add {
            WriteOp::AddMember(pk, user_id.clone())
        } else {
            WriteOp::RemoveMember(pk, user_id.clone())
        });
        let (key, batch) = (InFlight::member_key(pk, user), self.next_batch);
        self.inflight.order.push_back((batch, Forget::Member(key.clone())));
        self.inflight.members.insert(key, (add, pk, user_id, batch));
        Ok(true)
    }

    /// The primary key for a new room.
    pub(super) fn allocate_room_pk(&mut self) -> i64 {
        let pk = self.next_room_pk;
        self.next_room_pk += 1;
        pk
    }

    /// After a failed batch: makes rooms, members and seqs match what is
    /// committed again (batches behind the failed one are refused by the
    /// store, so the committed state is the truth).
    fn reconcile_with_store(&mut self) {
        let snapshot = match self.store.load() {
            Ok(s) => s,
            Err(err) => {
                log::error!("cannot reload state after a failed commit: {err}");
                return;
            }
        };
        let stored: HashMap<i64, RoomRow> = snapshot.rooms.into_iter().map(|r| (r.pk, r)).collect();
        let ghosts: Vec<usize> =
            self.rooms.iter().filter(|(_, r)| !stored.contains_key(&r.pk)).map(|(ix, _)| ix).collect();
        for ix in ghosts {
            self.remove_room(ix);
        }
        let known: HashMap<i64, usize> = self.rooms.iter().map(|(ix, r)| (r.pk, ix)).collect();
        for (pk, row) in stored {
            if let Some(&ix) = known.get(&pk) {
                let room = &mut self.rooms[ix];
                room.last_seq = row.last_seq;
                room.first_seq = row.first_seq;
                room.member_count = row.member_count;
                let p = &mut self.projects[room.project];
                p.stored_bytes = (p.stored_bytes + row.stored_bytes).saturating_sub(room.stored_bytes);
                room.stored_bytes = row.stored_bytes;
            } else if let Some(&project) = self.project_by_digits.get(row.project_id.trim_start_matches("p_")) {
                self.add_room(row, project);
            }
        }
        let stored_projects: HashSet<String> = snapshot.projects.into_iter().map(|p| p.id).collect();
        self.project_by_digits.retain(|_, ix| stored_projects.contains(&self.projects[*ix].row.id));
    }

    /// Closes a connection from the hub's side: nothing it sends is handled
    /// any more, and the shell closes it after what is queued.
    pub(super) fn close_connection(&mut self, conn: ConnId, code: u16, reason: &'static str) {
        if let Some(client) = self.clients.get_mut(&conn) {
            client.closing = true;
            self.push(Some(Output::Close { to: conn, code, reason }), false, None);
        }
    }

    // ----- emission helpers -----

    fn push(&mut self, output: Option<Output>, durable: bool, on_failure: Option<Output>) {
        self.outbox.push_back(Pending { output, durable, on_failure });
    }

    /// An output sent whatever the commit does.
    pub(super) fn push_output(&mut self, output: Output) {
        self.push(Some(output), false, None);
    }

    fn count_out(&mut self, project: usize, n: usize) {
        self.counters.messages_out += n as u64;
        self.projects[project].messages_out += n as u64;
    }

    /// A frame for one connection, sent whatever the commit does.
    pub(super) fn send(&mut self, project: usize, to: ConnId, wire: Wire) {
        self.count_out(project, 1);
        self.push(Some(Output::Frame { to, wire }), false, None);
    }

    /// An `error` frame, counted by code for `/metrics`.
    pub(super) fn send_error(
        &mut self,
        project: usize,
        conn: ConnId,
        event: Option<&str>,
        code: &'static str,
        message: &str,
        temp_id: Option<&str>,
    ) {
        *self.metrics.errors.entry(code).or_insert(0) += 1;
        self.send(project, conn, error_frame(event, code, message, temp_id));
    }

    /// A frame for one connection, sent only if the commit succeeds.
    fn send_durable(&mut self, project: usize, to: ConnId, wire: Wire, on_failure: Option<Output>) {
        self.count_out(project, 1);
        self.push(Some(Output::Frame { to, wire }), true, on_failure);
    }

    /// A frame for many connections.
    pub(super) fn broadcast(&mut self, project: usize, to: Vec<ConnId>, wire: Wire, durable: bool) {
        if to.is_empty() {
            return;
        }
        self.count_out(project, to.len());
        self.push(Some(Output::Broadcast { to, wire }), durable, None);
    }

    /// An HTTP answer; `on_failure` is sent instead if the commit fails.
    pub(super) fn respond(&mut self, to: ConnId, response: Response, on_failure: Option<Response>) {
        let durable = on_failure.is_some();
        let on_failure = on_failure.map(|response| Output::Response { to, response });
        self.push(Some(Output::Response { to, response }), durable, on_failure);
    }

    /// The `internal` error frame a writer gets when the commit fails.
    fn commit_failure(conn: ConnId, event: &str, temp_id: Option<&str>) -> Output {
        let wire = error_frame(Some(event), "internal", "storage failed; the request was not stored", temp_id);
        Output::Frame { to: conn, wire }
    }

    // ----- lookups -----

    /// The room `name` of the client's project, joined or not.
    fn find_room(&self, project: usize, name: &str) -> Result<usize, Refusal> {
        self.projects[project]
            .rooms
            .get(name)
            .copied()
            .ok_or_else(|| Refusal::new("not_found", format!("room `{name}` does not exist")))
    }

    /// The one access decision: may `who` do `action` in the room `name` of
    /// `project`? Every path asks it (join, since, history, read, edit,
    /// delete, typing, message, the REST routes), so a rule lives in one place.
    ///
    /// - A backend (the project's API key over REST) may use any room of its project.
    /// - A connection may act in a room it has joined (`not_joined` otherwise):
    ///   joining checked everything below, and revoking a membership evicts.
    /// - To join or read a room, a connection's token scope must name it and
    ///   a private room must list its user (`forbidden` otherwise).
    pub(super) fn authorize_room(
        &mut self,
        who: Principal,
        project: usize,
        name: &str,
        action: RoomAction,
    ) -> Result<usize, Refusal> {
        let room = self.find_room(project, name)?;
        let Principal::Conn(conn) = who else { return Ok(room) };
        let Some(client) = self.clients.get(&conn) else {
            return Err(Refusal::new("not_joined", "the connection is closing"));
        };
        if client.project != project {
            return Err(Refusal::new("not_found", format!("room `{name}` does not exist")));
        }
        if client.rooms.contains(&room) {
            return Ok(room);
        }
        if action == RoomAction::Act {
            return Err(Refusal::new("not_joined", format!("join room `{name}` first")));
        }
        if client.allowed_rooms.as_ref().is_some_and(|allowed| !allowed.contains(name)) {
            return Err(Refusal::new("forbidden", format!("your token does not grant room `{name}`")));
        }
        if self.rooms[room].kind == RoomKind::Private && !self.join_options(conn, name).signed {
            let client = &self.clients[&conn];
            let (pk, user) = (self.rooms[room].pk, client.user.clone());
            if !self.is_member(pk, &user).map_err(|e| Refusal::internal(&e))? {
                return Err(Refusal::new("forbidden", format!("room `{name}` is private and you are not a member")));
            }
        }
        Ok(room)
    }

    /// The room `name` if this connection may act in it (it has joined it).
    fn joined_room(&mut self, conn: ConnId, name: &str) -> Result<usize, Refusal> {
        let project = self.clients[&conn].project;
        self.authorize_room(Principal::Conn(conn), project, name, RoomAction::Act)
    }

    /// Connections in `room` that do not belong to `user`.
    fn others_in_room(&self, room: usize, user: &str) -> Vec<ConnId> {
        self.rooms[room]
            .conns
            .iter()
            .copied()
            .filter(|c| self.clients.get(c).is_some_and(|cl| cl.user != user))
            .collect()
    }

    /// The rooms any connection of `user` is in, each once, with the
    /// connections of other users in it (rooms with none left out).
    fn shared_rooms(&self, project: usize, user: &str) -> Vec<(usize, Vec<ConnId>)> {
        let Some(u) = self.projects[project].users.get(user) else { return Vec::new() };
        let mut rooms: Vec<usize> =
            u.conns.iter().filter_map(|c| self.clients.get(c)).flat_map(|c| c.rooms.iter().copied()).collect();
        rooms.sort_unstable();
        rooms.dedup();
        rooms.into_iter().map(|room| (room, self.others_in_room(room, user))).filter(|(_, to)| !to.is_empty()).collect()
    }

    /// The recipients of `shared` ([`Hub::shared_rooms`]), each once.
    fn audience_of(shared: &[(usize, Vec<ConnId>)]) -> Vec<ConnId> {
        let mut audience: Vec<ConnId> = shared.iter().flat_map(|(_, to)| to.iter().copied()).collect();
        audience.sort_unstable();
        audience.dedup();
        audience
    }

    /// Every connection of another user sharing a room with `user`, once each.
    fn presence_audience(&self, project: usize, user: &str) -> Vec<ConnId> {
        Self::audience_of(&self.shared_rooms(project, user))
    }

    pub(super) fn status_of(&self, project: usize, user: &str) -> Status {
        self.projects[project].users.get(user).map_or(Status::Offline, |u| u.status)
    }

    // ----- events -----

    fn dispatch(&mut self, conn: ConnId, event: ClientEvent<'_>, now: Now) -> Result<(), Refusal> {
        let project = self.clients[&conn].project;
        match event {
            ClientEvent::Join { room, since } => self.on_join(conn, &room, since, now),
            ClientEvent::Leave { room } => {
                let room = self.joined_room(conn, &room)?;
                self.leave_room(conn, room, now);
                Ok(())
            }
            ClientEvent::Message { room, content, temp_id, content_type, attachments } => {
                let room = self.joined_room(conn, &room)?;
                let user = self.clients[&conn].user.clone();
                let input = NewMessage {
                    user: &user,
                    content: &content,
                    content_type: content_type.as_deref(),
                    attachments: attachments.map(|a| a.get()),
                    temp_id: temp_id.as_deref(),
                };
                self.on_message(conn, room, input, now)
            }
            ClientEvent::Presence { status } => {
                let user = self.clients[&conn].user.clone();
                self.set_status(project, &user, status);
                Ok(())
            }
            ClientEvent::Typing { room, is_typing } => {
                let room = self.joined_room(conn, &room)?;
                if is_typing {
                    self.start_typing(conn, room, now);
                } else {
                    self.stop_typing(conn, room);
                }
                Ok(())
            }
            ClientEvent::Read { room, message_ids } => {
                let room = self.joined_room(conn, &room)?;
                self.on_read(conn, room, &message_ids, now)
            }
            ClientEvent::Edit { room, message_id, content } => {
                let room = self.joined_room(conn, &room)?;
                self.on_change(conn, room, &message_id, Some(&content), now)
            }
            ClientEvent::Delete { room, message_id } => {
                let room = self.joined_room(conn, &room)?;
                self.on_change(conn, room, &message_id, None, now)
            }
            ClientEvent::Direct { to, content, temp_id } => {
                self.on_direct(conn, &to, &content, temp_id.as_deref(), now)
            }
            ClientEvent::History { room, query } => {
                let room = self.authorize_room(Principal::Conn(conn), project, &room, RoomAction::Read)?;
                let budget = self.reply_budget(false);
                let mut page = self.charged_read(conn, room, &query, budget, now.mono)?;
                // Rows still in flight are included: the answer is durable, so
                // it leaves only after they are committed (read-your-writes).
                page.rows = self.inflight.complete_page(self.rooms[room].pk, &query, page.rows, page.cut);
                let name = self.rooms[room].name.clone();
                let mut views: Vec<MessageView> = page.rows.iter().map(|r| MessageView::of(r, &name, None)).collect();
                protocol::trim_page(&mut views, self.config.max_reply_bytes, query.after.is_some());
                let wire = encode(&MessagesFrame { kind: Some("history"), room: Some(&name), messages: views });
                let failure = Self::commit_failure(conn, "history", None);
                self.send_durable(project, conn, wire, Some(failure));
                Ok(())
            }
            ClientEvent::Ping => {
                self.send(project, conn, encode(&serde_json::json!({"type": "pong"})));
                Ok(())
            }
        }
    }

    /// The byte budget of one answer: a `since` replay is all or nothing, a
    /// history page keeps what fits.
    pub(super) fn reply_budget(&self, whole: bool) -> ReadBudget {
        ReadBudget { max_bytes: self.config.max_reply_bytes, per_row: PER_MESSAGE_OVERHEAD, whole }
    }

    /// Reads a page for a connection against its read allowance: admitted
    /// while the allowance is positive, charged what the page holds.
    pub(super) fn charged_read(
        &mut self,
        conn: ConnId,
        room: usize,
        query: &HistoryQuery,
        budget: ReadBudget,
        now: Instant,
    ) -> Result<HistoryPage, Refusal> {
        let rate = self.config.max_read_bytes_per_second as f64;
        let Some(reads) = self.read_allowance(conn) else {
            return Err(Refusal::new("not_joined", "the connection is closing"));
        };
        if reads.available(rate, now) <= 0.0 {
            let wait = reads.wait(rate).as_millis();
            self.metrics.count_quota("ws_read_bytes");
            return Err(Refusal::new(
                "rate_limited",
                format!(
                    "more than {} history bytes per second; retry in {wait} ms",
                    self.config.max_read_bytes_per_second
                ),
            ));
        }
        let page = self.store.history(self.rooms[room].pk, query, budget).map_err(|e| Refusal::internal(&e))?;
        if let Some(reads) = self.read_allowance(conn) {
            reads.spend(page.bytes.max(PER_MESSAGE_OVERHEAD) as f64);
        }
        Ok(page)
    }

    /// The read allowance of a connection's user: kept per user, not per
    /// connection, so that opening new connections does not buy new budget.
    fn read_allowance(&mut self, conn: ConnId) -> Option<&mut Allowance> {
        let client = self.clients.get(&conn)?;
        self.projects[client.project].read_allowances.get_mut(&client.user)
    }

    /// `join`: decided here, or by the backend first when the project has an
    /// access hook (local refusals come before asking it).
    fn on_join(&mut self, conn: ConnId, name: &str, since: Option<u64>, at: Now) -> Result<(), Refusal> {
        let (project, user) = {
            let c = &self.clients[&conn];
            (c.project, c.user.clone())
        };
        let options = self.join_options(conn, name);
        if self.projects[project].row.access_hook_url.is_some() {
            let creates = self.projects[project].row.auto_create_rooms || options.create;
            let already = match self.projects[project].rooms.get(name) {
                Some(&room) => {
                    self.authorize_room(Principal::Conn(conn), project, name, RoomAction::Join)?;
                    self.clients[&conn].rooms.contains(&room)
                }
                None if creates => {
                    self.check_creatable(conn, project, name)?;
                    false
                }
                None => return Err(Refusal::new("not_found", format!("room `{name}` does not exist"))),
            };
            if !already && self.join_needs_backend(project, name, &user, at) {
                let join = ParkedJoin {
                    conn,
                    project,
                    room: name.to_string(),
                    since,
                    request: None,
                    asked_at: at.mono,
                    options: self.clients[&conn].join_options.clone(),
                };
                return self.park_join(join, &user, at);
            }
        }
        self.join_decided(conn, name, since, at)
    }

    /// Whether a join of `conn` may create the room `name`: a valid name,
    /// granted by its token, within the project's rooms quota.
    fn check_creatable(&mut self, conn: ConnId, project: usize, name: &str) -> Result<(), Refusal> {
        Self::check_room_name(name)?;
        if self.clients[&conn].allowed_rooms.as_ref().is_some_and(|allowed| !allowed.contains(name)) {
            return Err(Refusal::new("forbidden", format!("your token does not grant room `{name}`")));
        }
        self.check_room_quota(project)
    }

    /// A join the backend (if asked) admitted: every local rule is checked
    /// again, since the room or the membership may have changed meanwhile.
    pub(super) fn join_decided(
        &mut self,
        conn: ConnId,
        name: &str,
        since: Option<u64>,
        at: Now,
    ) -> Result<(), Refusal> {
        let now = at.mono;
        let project = self.clients[&conn].project;
        let options = self.join_options(conn, name);
        let creates = self.projects[project].row.auto_create_rooms || options.create;
        if creates && !self.projects[project].rooms.contains_key(name) {
            // `autoCreateRooms` (or a Pusher channel): the first join creates
            // the room if the name is valid, the token grants it and the
            // quota allows; public, or private when the backend signed it.
            self.check_creatable(conn, project, name)?;
            let kind = if options.signed { RoomKind::Private } else { RoomKind::Public };
            self.insert_room(project, name, kind, Vec::new(), at);
        }
        let room = self.authorize_room(Principal::Conn(conn), project, name, RoomAction::Join)?;
        let cap = self.config.max_rooms_per_connection;
        let joined = &self.clients[&conn].rooms;
        if !joined.contains(&room) && joined.len() >= cap {
            return Err(Refusal::new("forbidden", format!("a connection may join at most {cap} rooms")));
        }
        // Read what must be replayed before changing anything, so a store
        // failure refuses the join cleanly. The replay is measured from the
        // size index first: one that cannot be sent at once reads nothing.
        let (latest, first) = (self.rooms[room].last_seq, self.rooms[room].first_seq);
        let (recovered, replay) = match since {
            None => (None, Vec::new()),
            Some(since) if since >= latest => (Some(since == latest), Vec::new()),
            Some(since) if latest - since > self.config.replay_cap as u64 || since + 1 < first => {
                // More missed than the cap, or dropped by retention: the client pages history.
                (Some(false), Vec::new())
            }
            Some(since) => {
                let query = HistoryQuery { before: None, after: Some(since), limit: self.config.replay_cap as u32 };
                let rate = self.config.max_read_bytes_per_second as f64;
                if self.read_allowance(conn).is_some_and(|reads| reads.available(rate, now) <= 0.0) {
                    // The read budget is spent: join without a replay, so the
                    // client is in the room and pages history when it may.
                    self.metrics.count_quota("ws_read_bytes");
                    (Some(false), Vec::new())
                } else {
                    let mut page = self.charged_read(conn, room, &query, self.reply_budget(true), now)?;
                    if !page.cut {
                        // Rows in flight too: their broadcasts went to the room
                        // before this connection was in it. The replay is released
                        // after them.
                        page.rows = self.inflight.complete_page(self.rooms[room].pk, &query, page.rows, false);
                    }
                    let name = &self.rooms[room].name;
                    let wires: Vec<Wire> =
                        page.rows.iter().map(|r| encode(&MessageView::of(r, name, Some("message")))).collect();
                    if page.cut || wires.iter().map(|w| w.len()).sum::<usize>() > self.config.max_reply_bytes {
                        // More than the client could be sent at once: it pages history.
                        (Some(false), Vec::new())
                    } else {
                        (Some(true), wires)
                    }
                }
            }
        };
        self.enter_room(conn, room, at);
        let r = &self.rooms[room];
        let mut members: Vec<MemberView> =
            r.users.keys().map(|u| MemberView { user_id: u, status: self.status_of(project, u).as_str() }).collect();
        members.sort_unstable_by(|a, b| a.user_id.cmp(b.user_id));
        let mut joined = serde_json::json!({"type": "joined", "room": r.name, "seq": r.last_seq, "members": members});
        if let Some(recovered) = recovered {
            joined["recovered"] = serde_json::Value::Bool(recovered);
        }
        let wire = encode(&joined);
        if recovered == Some(true) && !replay.is_empty() {
            // The replay may include rows of this iteration: if the commit
            // fails they never existed, so the client is told to page history.
            joined["recovered"] = serde_json::Value::Bool(false);
            let fallback = Output::Frame { to: conn, wire: encode(&joined) };
            self.send_durable(project, conn, wire, Some(fallback));
        } else {
            self.send(project, conn, wire);
        }
        for wire in replay {
            self.send_durable(project, conn, wire, None);
        }
        Ok(())
    }

    /// Puts a connection into a room (nothing when it is in already):
    /// `user_joined` to the others when it is the user's first connection there.
    pub(super) fn enter_room(&mut self, conn: ConnId, room: usize, now: Now) {
        let Some(client) = self.clients.get_mut(&conn) else { return };
        if client.rooms.contains(&room) {
            return;
        }
        client.rooms.push(room);
        let (project, user) = (client.project, client.user.clone());
        let options = self.join_options(conn, &self.rooms[room].name);
        let r = &mut self.rooms[room];
        r.conns.push(conn);
        if options.silent || user.is_empty() {
            r.silent.insert(conn);
            return self.resumable_entered(conn, room);
        }
        if let Some(info) = options.info {
            r.infos.insert(user.clone(), info);
        }
        let occupied = r.users.is_empty();
        let count = r.users.entry(user.clone()).or_insert(0);
        *count += 1;
        if *count == 1 {
            let status = self.status_of(project, &user).as_str();
            let name = self.rooms[room].name.clone();
            let wire =
                encode(&serde_json::json!({"type": "user_joined", "room": name, "userId": user, "status": status}));
            let to = self.others_in_room(room, &user);
            self.broadcast(project, to, wire, false);
            if occupied {
                self.webhook(project, "room.occupied", |_| serde_json::json!({"room": name}), now);
            }
            self.webhook(project, "member.joined", |_| serde_json::json!({"room": name, "userId": user}), now);
        }
        self.resumable_entered(conn, room);
    }

    /// Takes a connection out of a room: `left` to it, typing cleared,
    /// `user_left` to the others when it was the user's last connection there.
    /// The notices go out whatever the commit does: they describe the live
    /// membership, which a failed commit does not restore (the client may
    /// join again).
    pub(super) fn leave_room(&mut self, conn: ConnId, room: usize, now: Now) {
        self.stop_typing(conn, room);
        self.resumable_left(conn, room);
        let Some(client) = self.clients.get_mut(&conn) else { return };
        client.rooms.retain(|&r| r != room);
        let (project, user) = (client.project, client.user.clone());
        let r = &mut self.rooms[room];
        r.conns.retain(|&c| c != conn);
        let name = r.name.clone();
        // A silent subscriber was never a member: nobody hears it go.
        let gone = !r.silent.remove(&conn)
            && match r.users.get_mut(&user) {
                Some(count) if *count > 1 => {
                    *count -= 1;
                    false
                }
                _ => {
                    r.users.remove(&user);
                    r.infos.remove(&user);
                    true
                }
            };
        self.broadcast(project, vec![conn], encode(&serde_json::json!({"type": "left", "room": name})), false);
        if gone {
            let wire = encode(&serde_json::json!({"type": "user_left", "room": name, "userId": user}));
            let to = self.others_in_room(room, &user);
            self.broadcast(project, to, wire, false);
            let vacated = self.rooms[room].users.is_empty();
            self.webhook(project, "member.left", |_| serde_json::json!({"room": name, "userId": user}), now);
            if vacated {
                self.webhook(project, "room.vacated", |_| serde_json::json!({"room": name}), now);
            }
        }
    }

    /// Validates and stores a message, advancing the room's `seq`. Shared by
    /// the WebSocket `message` event and REST `POST …/messages`; the caller
    /// acknowledges and then calls [`Hub::broadcast_message`].
    pub(super) fn store_message(
        &mut self,
        room: usize,
        input: &NewMessage<'_>,
        now: Now,
    ) -> Result<Arc<MessageRow>, Refusal> {
        let size = input.content.len() + input.attachments.map_or(0, str::len);
        if size > self.config.max_content_bytes {
            return Err(Refusal::new(
                "too_large",
                format!("content and attachments are {size} bytes; the limit is {}", self.config.max_content_bytes),
            ));
        }
        let attachments = input.attachments.unwrap_or("[]");
        // Attachments are stored as sent, but must be JSON that common
        // parsers read (serde_json refuses deeper nesting and numbers past
        // f64's range): a message nobody can parse would poison every
        // history page holding it.
        if protocol::json_depth(attachments) > MAX_ATTACHMENTS_DEPTH {
            return Err(Refusal::new(
                "bad_request",
                format!("`attachments` nest deeper than {MAX_ATTACHMENTS_DEPTH} levels"),
            ));
        }
        if input.attachments.is_some() && serde_json::from_str::<serde_json::Value>(attachments).is_err() {
            return Err(Refusal::new("bad_request", "`attachments` hold a number out of range"));
        }
        if input.content.is_empty() && is_empty_array(attachments) {
            return Err(Refusal::new("bad_request", "`content` is empty"));
        }
        let content_type = input.content_type.unwrap_or("text/plain");
        if content_type.is_empty() || content_type.len() > 128 {
            return Err(Refusal::new("bad_request", "`contentType` must be 1-128 bytes"));
        }
        if input.temp_id.is_some_and(|t| t.is_empty() || t.len() > 128) {
            return Err(Refusal::new("bad_request", "`tempId` must be 1-128 bytes"));
        }
        let r = &self.rooms[room];
        let row = Arc::new(MessageRow {
            room_pk: r.pk,
            seq: r.last_seq + 1,
            id: self.ids.ordered("m_", now.unix_ms),
            user_id: input.user.to_string(),
            content: input.content.to_string(),
            content_type: content_type.to_string(),
            attachments: attachments.to_string(),
            created_at: now.unix_ms,
            edited_at: None,
            deleted: false,
            temp_id: input.temp_id.map(str::to_string),
        });
        let size = row.stored_size() as u64;
        self.check_storage_quota(r.project, size)?;
        self.write(WriteOp::InsertMessage(row.clone()));
        self.track_message(&row);
        let r = &mut self.rooms[room];
        r.last_seq = row.seq;
        r.stored_bytes += size;
        if r.first_seq == 0 {
            r.first_seq = row.seq;
        }
        let project = r.project;
        self.projects[project].stored_bytes += size;
        self.apply_retention(room);
        self.webhook(project, "message.created", |hub| message_data(hub, room, &row), now);
        Ok(row)
    }

    /// Refuses a write that would take a project past its storage quota.
    fn check_storage_quota(&mut self, project: usize, adding: u64) -> Result<(), Refusal> {
        let (stored, quota) = (self.projects[project].stored_bytes, self.config.max_stored_bytes_per_project);
        if stored.saturating_add(adding) <= quota {
            return Ok(());
        }
        self.metrics.count_quota("stored_bytes");
        Err(Refusal::new(
            "too_large",
            format!("the project stores {stored} bytes of messages, its quota is {quota}; delete rooms to make room"),
        ))
    }

    /// The retention policy: once a room holds more than the configured
    /// number of messages (plus an eighth, so deletions come in batches),
    /// its oldest are deleted in the same batch.
    fn apply_retention(&mut self, room: usize) {
        let keep = self.config.retention_messages_per_room;
        let r = &self.rooms[room];
        if keep == 0 || r.first_seq == 0 || r.last_seq - r.first_seq < keep + keep / 8 {
            return;
        }
        // At most one batch per message, so enabling (or lowering) retention
        // on a large room trims it over the following messages, never in
        // one long delete.
        let batch = (keep / 8).clamp(1, MAX_TRIM_BATCH);
        let (through, pk) = ((r.last_seq - keep).min(r.first_seq + batch - 1), r.pk);
        // What the trim frees: the committed rows up to `through` (the read
        // connection) and the rows still in flight up to it, which the store
        // deletes too since the trim comes after them in order.
        match self.store.stored_bytes_through(pk, through) {
            Ok(committed) => {
                let freed = committed + self.inflight.forget_trimmed(pk, through);
                self.write(WriteOp::TrimRoom { room_pk: pk, through_seq: through });
                let r = &mut self.rooms[room];
                r.first_seq = through + 1;
                r.stored_bytes = r.stored_bytes.saturating_sub(freed);
                let project = r.project;
                let p = &mut self.projects[project];
                p.stored_bytes = p.stored_bytes.saturating_sub(freed);
            }
            // Nothing is lost by trimming later: the next message tries again.
            Err(err) => log::warn!("retention of room {} postponed: {err}", self.rooms[room].id),
        }
    }

    /// Sends a stored message to every connection joined to its room (durable).
    pub(super) fn broadcast_message(&mut self, room: usize, row: &MessageRow) {
        let r = &self.rooms[room];
        let (project, to) = (r.project, r.conns.clone());
        let wire = encode(&MessageView::of(row, &r.name, Some("message")));
        self.broadcast(project, to, wire, true);
    }

    fn on_message(&mut self, conn: ConnId, room: usize, input: NewMessage<'_>, now: Now) -> Result<(), Refusal> {
        let project = self.rooms[room].project;
        let name = self.rooms[room].name.clone();
        if let Some(temp_id) = input.temp_id {
            let pk = self.rooms[room].pk;
            // In flight first (the read connection cannot see it yet): a
            // retry's mapping then waits behind the original's batch.
            let in_flight = self.inflight.temp_ids.get(&InFlight::temp_key(pk, input.user, temp_id));
            let known = match in_flight {
                Some((id, seq, _)) => Some((id.clone(), *seq)),
                None => self.store.find_temp_id(pk, input.user, temp_id).map_err(|e| Refusal::internal(&e))?,
            };
            if let Some((real_id, seq)) = known {
                let wire = mapping_frame(&name, temp_id, &real_id, seq);
                let failure = Self::commit_failure(conn, "message", Some(temp_id));
                self.send_durable(project, conn, wire, Some(failure));
                return Ok(());
            }
        }
        let row = self.store_message(room, &input, now)?;
        let failure = Self::commit_failure(conn, "message", input.temp_id);
        match input.temp_id {
            Some(temp_id) => {
                let wire = mapping_frame(&name, temp_id, &row.id, row.seq);
                self.send_durable(project, conn, wire, Some(failure));
            }
            None => self.push(None, true, Some(failure)),
        }
        self.broadcast_message(room, &row);
        self.stop_typing(conn, room);
        Ok(())
    }

    fn start_typing(&mut self, conn: ConnId, room: usize, now: Now) {
        let deadline = now.mono + self.config.typing_timeout;
        self.rooms[room].typing.insert(conn, deadline);
        self.typing_deadlines.push(Reverse((deadline, room, conn)));
        self.send_typing(conn, room, true);
    }

    /// Clears a connection's typing indicator in a room, telling the others.
    fn stop_typing(&mut self, conn: ConnId, room: usize) {
        let was_typing = self.rooms.get_mut(room).and_then(|r| r.typing.remove(&conn)).is_some();
        if was_typing {
            self.send_typing(conn, room, false);
        }
    }

    fn send_typing(&mut self, conn: ConnId, room: usize, is_typing: bool) {
        let Some(client) = self.clients.get(&conn) else { return };
        let (project, user) = (client.project, client.user.clone());
        let name = &self.rooms[room].name;
        let wire = encode(&serde_json::json!({"type": "typing", "room": name, "userId": user, "isTyping": is_typing}));
        let to = self.others_in_room(room, &user);
        self.broadcast(project, to, wire, false);
    }

    /// Sets a user's status and tells everyone sharing a room with them.
    fn set_status(&mut self, project: usize, user: &str, status: Status) {
        let Some(u) = self.projects[project].users.get_mut(user) else { return };
        if u.status == status {
            return;
        }
        u.status = status;
        let wire = encode(&serde_json::json!({"type": "presence", "userId": user, "status": status.as_str()}));
        let shared = self.shared_rooms(project, user);
        self.broadcast(project, Self::audience_of(&shared), wire, false);
        // The same change once per shared room, for dialects that name the room.
        for (room, to) in shared {
            let frame = serde_json::json!({
                "type": "presence", "room": self.rooms[room].name, "userId": user, "status": status.as_str()
            });
            self.push(Some(Output::RoomScoped { to, wire: encode(&frame) }), false, None);
        }
    }

    fn on_read(&mut self, conn: ConnId, room: usize, ids: &[Cow<'_, str>], now: Now) -> Result<(), Refusal> {
        let (pk, project) = (self.rooms[room].pk, self.rooms[room].project);
        let cap = self.config.max_ids_per_read;
        if ids.len() > cap {
            return Err(Refusal::new(
                "bad_request",
                format!("`messageIds` holds {} ids; one `read` may carry at most {cap}", ids.len()),
            ));
        }
        // Each id may become a broadcast to the whole room, like a message:
        // it costs one event of the connection's rate budget (the event
        // itself paid for the first).
        let extra = ids.len().saturating_sub(1) as f64;
        let rate = self.config.max_events_per_second as f64;
        if let Some(client) = self.clients.get_mut(&conn) {
            if extra > 0.0 && client.bucket.allowance.available(rate, now.mono) < extra {
                return Err(Refusal::new(
                    "rate_limited",
                    format!("each id counts as one of the {} events per second; send fewer ids", rate),
                ));
            }
            client.bucket.allowance.spend(extra);
        }
        for id in ids {
            let found = self.inflight.message(pk, id).is_some()
                || self.store.message_exists(pk, id).map_err(|e| Refusal::internal(&e))?;
            if !found {
                return Err(Refusal::new("not_found", format!("message `{id}` is not in this room")));
            }
        }
        let user = self.clients[&conn].user.clone();
        let name = self.rooms[room].name.clone();
        let read_at = protocol::timestamp(now.unix_ms);
        let id_strs: Vec<&str> = ids.iter().map(|id| id.as_ref()).collect();
        // Fresh: neither in flight, nor stored, nor earlier in this request.
        let mut fresh = Vec::with_capacity(id_strs.len());
        let mut fresh_ids = Vec::new();
        for (i, id) in id_strs.iter().enumerate() {
            let key = InFlight::receipt_key(id, &user);
            let known = self.inflight.receipts.contains_key(&key)
                || id_strs[..i].contains(id)
                || self.store.has_receipt(id, &user).map_err(|e| Refusal::internal(&e))?;
            fresh.push(!known);
            if !known {
                fresh_ids.push((id.to_string(), key));
            }
        }
        if !fresh_ids.is_empty() {
            let batch = self.next_batch;
            for (_, key) in &fresh_ids {
                self.inflight.order.push_back((batch, Forget::Receipt(key.clone())));
                self.inflight.receipts.insert(key.clone(), batch);
            }
            let message_ids = fresh_ids.into_iter().map(|(id, _)| id).collect();
            self.write(WriteOp::InsertReceipts {
                room_pk: pk,
                message_ids,
                user_id: user.clone(),
                read_at: now.unix_ms,
            });
        }
        for (id, fresh) in id_strs.iter().zip(fresh) {
            if fresh {
                let data =
                    |_: &Hub| serde_json::json!({"room": name, "messageId": id, "userId": user, "readAt": read_at});
                self.webhook(project, "receipt.created", data, now);
                let wire = encode(&serde_json::json!({
                    "type": "read_receipt", "room": name, "messageId": id, "userId": user, "readAt": read_at
                }));
                let to = self.rooms[room].conns.clone();
                self.broadcast(project, to, wire, true);
            }
        }
        self.push(None, true, Some(Self::commit_failure(conn, "read", None)));
        Ok(())
    }

    /// Edit (`content` given) or delete (`None`) one's own message.
    fn on_change(
        &mut self,
        conn: ConnId,
        room: usize,
        message_id: &str,
        content: Option<&str>,
        now: Now,
    ) -> Result<(), Refusal> {
        let event = if content.is_some() { "edit" } else { "delete" };
        let pk = self.rooms[room].pk;
        let current = match self.inflight.message(pk, message_id) {
            Some(row) => Some(MessageRow::clone(row)),
            None => self.store.message(pk, message_id).map_err(|e| Refusal::internal(&e))?,
        };
        let Some(mut row) = current else {
            return Err(Refusal::new("not_found", format!("message `{message_id}` is not in this room")));
        };
        if row.deleted {
            return Err(Refusal::new("not_found", format!("message `{message_id}` was deleted")));
        }
        if row.user_id != self.clients[&conn].user {
            return Err(Refusal::new("forbidden", "only the author may change a message"));
        }
        let before_size = row.stored_size();
        match content {
            Some(content) => {
                let size = content.len() + row.attachments.len();
                if size > self.config.max_content_bytes {
                    return Err(Refusal::new(
                        "too_large",
                        format!("content is {size} bytes; the limit is {}", self.config.max_content_bytes),
                    ));
                }
                if content.is_empty() && is_empty_array(&row.attachments) {
                    return Err(Refusal::new("bad_request", "`content` is empty"));
                }
                row.content = content.to_string();
                row.edited_at = Some(now.unix_ms);
            }
            None => {
                row.content.clear();
                row.attachments = "[]".into();
                row.deleted = true;
            }
        }
        let (old_size, new_size) = (before_size as u64, row.stored_size() as u64);
        if new_size > old_size {
            self.check_storage_quota(self.rooms[room].project, new_size - old_size)?;
        }
        let row = Arc::new(row);
        self.write(WriteOp::UpdateMessage(row.clone()));
        let batch = self.next_batch;
        let new = self.inflight.messages.get(&row.id).is_some_and(|(_, _, new)| *new);
        self.inflight.order.push_back((batch, Forget::Message(row.id.clone())));
        self.inflight.messages.insert(row.id.clone(), (row.clone(), batch, new));
        let r = &mut self.rooms[room];
        r.stored_bytes = (r.stored_bytes + new_size).saturating_sub(old_size);
        let p = &mut self.projects[r.project];
        p.stored_bytes = (p.stored_bytes + new_size).saturating_sub(old_size);
        let project = self.rooms[room].project;
        let kind = if row.deleted { "message.deleted" } else { "message.updated" };
        self.webhook(project, kind, |hub| message_data(hub, room, &row), now);
        let r = &self.rooms[room];
        let to = r.conns.clone();
        let wire = encode(&UpdateFrame {
            kind: "message_update",
            room: &r.name,
            message: MessageView::of(&row, &r.name, None),
        });
        self.broadcast(project, to, wire, true);
        self.push(None, true, Some(Self::commit_failure(conn, event, None)));
        Ok(())
    }

    fn on_direct(
        &mut self,
        conn: ConnId,
        to: &str,
        content: &str,
        temp_id: Option<&str>,
        now: Now,
    ) -> Result<(), Refusal> {
        if !valid_user_id(to) {
            return Err(Refusal::new("bad_request", "`to` must be a user id of 1-128 printable characters"));
        }
        if temp_id.is_some_and(|t| t.is_empty() || t.len() > 128) {
            return Err(Refusal::new("bad_request", "`tempId` must be 1-128 bytes"));
        }
        if content.len() > self.config.max_content_bytes {
            return Err(Refusal::new(
                "too_large",
                format!("content is {} bytes; the limit is {}", content.len(), self.config.max_content_bytes),
            ));
        }
        let (project, from) = {
            let c = &self.clients[&conn];
            (c.project, c.user.clone())
        };
        let (id, delivered) = self.deliver_direct(project, Some(&from), to, content, now);
        let mut sent = serde_json::json!({"type": "direct_sent", "id": id, "to": to, "delivered": delivered});
        if let Some(temp_id) = temp_id {
            sent["tempId"] = serde_json::Value::String(temp_id.to_string());
        }
        self.send(project, conn, encode(&sent));
        Ok(())
    }

    /// Sends a `direct` frame to every connection of `to`; returns its id and how many got it.
    pub(super) fn deliver_direct(
        &mut self,
        project: usize,
        from: Option<&str>,
        to: &str,
        content: &str,
        now: Now,
    ) -> (String, usize) {
        let id = self.ids.ordered("d_", now.unix_ms);
        let conns = self.projects[project].users.get(to).map(|u| u.conns.clone()).unwrap_or_default();
        let delivered = conns.len();
        let wire = encode(&serde_json::json!({
            "type": "direct", "id": id, "from": from, "to": to, "content": content, "createdAt": protocol::timestamp(now.unix_ms)
        }));
        self.broadcast(project, conns, wire, false);
        (id, delivered)
    }

    /// Removes a room from memory, telling joined connections `room_deleted`
    /// once the deletion is committed.
    pub(super) fn remove_room(&mut self, room: usize) {
        let r = self.rooms.remove(room);
        let p = &mut self.projects[r.project];
        p.rooms.remove(&r.name);
        p.stored_bytes = p.stored_bytes.saturating_sub(r.stored_bytes);
        for conn in &r.conns {
            if let Some(client) = self.clients.get_mut(conn) {
                client.rooms.retain(|&x| x != room);
            }
        }
        if r.conns.is_empty() {
            return;
        }
        // If the delete is not committed the room is reloaded, but these
        // connections are out of it: they are told `left` and may join again.
        let deleted = encode(&serde_json::json!({"type": "room_deleted", "room": r.name}));
        let left = encode(&serde_json::json!({"type": "left", "room": r.name}));
        self.count_out(r.project, r.conns.len());
        let on_failure = Output::Broadcast { to: r.conns.clone(), wire: left };
        self.push(Some(Output::Broadcast { to: r.conns, wire: deleted }), true, Some(on_failure));
    }

    /// Takes every connection of `user` out of `room` (membership revoked).
    pub(super) fn evict_user(&mut self, room: usize, user: &str, now: Now) {
        let conns: Vec<ConnId> = self.rooms[room]
            .conns
            .iter()
            .copied()
            .filter(|c| self.clients.get(c).is_some_and(|cl| cl.user == user))
            .collect();
        for conn in conns {
            self.leave_room(conn, room, now);
        }
    }

    /// Validates a room name from a request.
    pub(super) fn check_room_name(name: &str) -> Result<(), Refusal> {
        if valid_room_name(name) {
            Ok(())
        } else {
            Err(Refusal::new("bad_request", "room names are 1-164 of A-Z a-z 0-9 _ - . : = @ , ;"))
        }
    }

    /// Adds CORS headers for the request's origin.
    pub fn with_cors(&self, req: &Request, response: Response) -> Response {
        let allowed = &self.config.cors_origin;
        if allowed == "*" {
            return response.with_header("Access-Control-Allow-Origin", "*");
        }
        match req.header("origin") {
            Some(origin) if allowed.split(',').any(|o| o.trim() == origin) => {
                response.with_header("Access-Control-Allow-Origin", origin).with_header("Vary", "Origin")
            }
            _ => response.with_header("Vary", "Origin"),
        }
    }
}

/// Whether JSON text is an empty array, whatever its whitespace.
fn is_empty_array(json: &str) -> bool {
    let mut bytes = json.bytes().filter(|b| !b.is_ascii_whitespace());
    bytes.next() == Some(b'[') && bytes.next() == Some(b']') && bytes.next().is_none()
}

fn mapping_frame(room: &str, temp_id: &str, real_id: &str, seq: u64) -> Wire {
    encode(
        &serde_json::json!({"type": "message_id_mapping", "room": room, "tempId": temp_id, "realId": real_id, "seq": seq}),
    )
}
