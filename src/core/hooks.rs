//! The backend in the loop: the access hook that decides joins, and the
//! webhook outbox that tells the backend what happened, reliably.
//!
//! Both speak through [`Output::Outbound`]: the core says what to post and
//! the shell's outbound client posts it, reporting back with
//! [`Hub::handle_outbound`]. Nothing here waits: a join that asks the
//! backend is parked until the answer (or the timeout) arrives, and the
//! connection's other events go on meanwhile.
//!
//! Webhook events are rows of the `outbox` table written in the batch of
//! the change they report, so an event exists exactly when its change was
//! committed. Deliveries read committed rows only, one batch per project at
//! a time (per-project order), delete them once the backend answered 2xx,
//! and retry with exponential backoff and jitter until the maximum age,
//! after which they are dropped and counted. A project's outbox is bounded:
//! past the bound its oldest events are dropped (and counted).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::hub::Refusal;
use super::ids::hmac_sha256_hex;
use super::model::{OutboxBacklog, OutboxRow, WriteOp};
use super::protocol::timestamp;
use super::{ConnId, Hub, Now, Output};

/// Every webhook event type, as `webhookEvents` names them.
pub const WEBHOOK_EVENTS: &[&str] = &[
    "user.online",
    "user.offline",
    "room.occupied",
    "room.vacated",
    "member.joined",
    "member.left",
    "message.created",
    "message.updated",
    "message.deleted",
    "receipt.created",
];

/// Most access decisions remembered (`cacheSeconds`) at once.
const MAX_CACHED_DECISIONS: usize = 100_000;

/// A request the core asked the shell to post to a backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboundCall {
    /// The core's id for the call, reported back with the answer.
    pub request: u64,
    /// The URL (validated when the setting was made).
    pub url: String,
    /// The JSON body.
    pub body: Vec<u8>,
    /// The `X-RealtimeHub-Signature` header's value.
    pub signature: String,
    /// How long the whole call may take.
    pub timeout: Duration,
}

/// What a backend answered, as the shell saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutboundResult {
    /// An HTTP answer: its status and body.
    Answered(u16, Vec<u8>),
    /// No answer: refused, unreachable, timed out, or not HTTP.
    Failed(String),
}

/// `t=UNIX_SECONDS,v1=HEX`: HMAC-SHA256 of `t + "." + body` with the
/// project's API key (the contract's signature).
pub fn signature(api_key: &str, unix_seconds: i64, body: &[u8]) -> String {
    let hex = hmac_sha256_hex(api_key, &[unix_seconds.to_string().as_bytes(), b".", body]);
    format!("t={unix_seconds},v1={hex}")
}

/// One call in flight.
enum Call {
    Access(ParkedJoin),
    Webhook { project: usize, through_seq: u64, count: u64, oldest_created_at: i64 },
}

/// A join waiting for the access hook.
pub(super) struct ParkedJoin {
    pub(super) conn: ConnId,
    pub(super) project: usize,
    pub(super) room: String,
    pub(super) since: Option<u64>,
    /// The dialect's request id, ended with `Done` once decided.
    pub(super) request: Option<u64>,
    pub(super) asked_at: Instant,
    /// A dialect's subscription options, restored when it is decided.
    pub(super) options: Option<(String, super::hub::JoinOptions)>,
}

/// A project's deliveries.
#[derive(Default)]
struct Delivery {
    /// Events recorded and not yet delivered or dropped.
    pending: u64,
    /// The newest `seq` delivered (or dropped): the next batch starts after it.
    done_seq: u64,
    in_flight: bool,
    /// Failed attempts in a row, for the backoff.
    failures: u32,
    /// Waiting for a retry until then.
    retry_at: Option<Instant>,
}

/// Counters for `/metrics`.
#[derive(Default, Clone, Copy)]
pub struct HookCounters {
    /// Events delivered (2xx).
    pub delivered: u64,
    /// Webhook posts that failed (each retried, or dropped past the age).
    pub failures: u64,
    /// Retries scheduled.
    pub retries: u64,
    /// Events dropped: past the maximum age, or the outbox bound.
    pub dropped: u64,
    /// Access hook calls, and those that failed (`unavailable`).
    pub access_calls: u64,
    pub access_failures: u64,
    /// The outbound client's connections open, and its calls in flight
    /// (queued included), as the shell last reported them.
    pub connections: u64,
    pub in_flight: u64,
}

/// The hooks' state inside the hub.
#[derive(Default)]
pub(super) struct Hooks {
    next_request: u64,
    calls: HashMap<u64, Call>,
    /// Joins waiting per connection.
    parked: HashMap<ConnId, usize>,
    /// `project \0 room \0 user` → admitted until then.
    cache: HashMap<String, Instant>,
    outbox_seq: u64,
    deliveries: HashMap<usize, Delivery>,
    /// Projects whose events may now be committed: tried at the next run.
    waiting_commit: HashSet<usize>,
    /// A batch committed since the last run.
    committed: bool,
    retries: BinaryHeap<Reverse<(Instant, usize)>>,
    /// Users whose last connection went: `user.offline` once the grace passes.
    offline_due: BinaryHeap<Reverse<(Instant, usize, String)>>,
    offline_pending: HashMap<(usize, String), Instant>,
    /// The call a join was just parked on, for [`Hub::handle_request`] to
    /// attach the dialect's request id to.
    pub(super) just_parked: Option<u64>,
    pub(super) counters: HookCounters,
    /// Access hook round trips.
    pub(super) latency: super::metrics::Histogram,
}

impl Hooks {
    fn request_id(&mut self) -> u64 {
        self.next_request += 1;
        self.next_request
    }

    /// The dialect's request id of a parked join, ended when it is decided.
    pub(super) fn attach_request(&mut self, call: u64, request: Option<u64>) {
        if let Some(Call::Access(join)) = self.calls.get_mut(&call) {
            join.request = request;
        }
    }
}

impl Hub {
    /// Reads the outbox backlog at start-up: every project with events
    /// waiting is delivered to as soon as the loop runs.
    pub(super) fn load_outbox(&mut self, backlog: Vec<OutboxBacklog>, last_seq: u64) {
        self.hooks.outbox_seq = last_seq;
        for b in backlog {
            if let Some(&project) = self.project_by_digits.get(b.project_id.trim_start_matches("p_")) {
                self.hooks.deliveries.entry(project).or_default().pending = b.count;
                self.hooks.waiting_commit.insert(project);
                self.hooks.committed = true;
            }
        }
    }

    /// The outbound client's gauges, reported by the shell each iteration it
    /// had answers (for `/metrics`).
    pub fn record_outbound(&mut self, connections: usize, in_flight: usize) {
        self.hooks.counters.connections = connections as u64;
        self.hooks.counters.in_flight = in_flight as u64;
    }

    /// Events waiting in every project's outbox (a gauge of `/metrics`).
    pub fn outbox_depth(&self) -> u64 {
        self.hooks.deliveries.values().map(|d| d.pending).sum()
    }

    /// The hooks' counters and the access hook's latency, for `/metrics`.
    pub(super) fn hook_metrics(&self) -> (HookCounters, &super::metrics::Histogram) {
        (self.hooks.counters, &self.hooks.latency)
    }

    // ----- webhooks -----

    /// Records a webhook event in the current batch, when the project has a
    /// `webhookUrl` and wants events of this type; `data` is built only then,
    /// so projects without webhooks pay nothing on their message path.
    pub(super) fn webhook(&mut self, project: usize, kind: &'static str, data: impl FnOnce(&Hub) -> Value, now: Now) {
        let row = &self.projects[project].row;
        if row.webhook_url.is_none() || row.webhook_events.as_ref().is_some_and(|e| !e.iter().any(|k| k == kind)) {
            return;
        }
        let data = data(self);
        let project_id = self.projects[project].row.id.clone();
        let id = self.ids.ordered("evt_", now.unix_ms);
        let body = json!({"id": id, "type": kind, "createdAt": timestamp(now.unix_ms), "data": data}).to_string();
        self.hooks.outbox_seq += 1;
        let seq = self.hooks.outbox_seq;
        self.write(WriteOp::InsertOutbox(OutboxRow {
            project_id: project_id.clone(),
            seq,
            created_at: now.unix_ms,
            body,
        }));
        let bound = self.config.webhook_outbox_max_events;
        let delivery = self.hooks.deliveries.entry(project).or_default();
        delivery.pending += 1;
        let idle = !delivery.in_flight && delivery.retry_at.is_none();
        // Past the bound by an eighth: the oldest go in one delete.
        let over = delivery.pending > bound + (bound / 8).max(1);
        if over {
            let count = delivery.pending - bound;
            delivery.pending = bound;
            self.hooks.counters.dropped += count;
            log::warn!(project:% = project_id; "webhook outbox full: dropped its {count} oldest events");
            self.write(WriteOp::TrimOutbox { project_id, count });
        }
        if idle {
            self.hooks.waiting_commit.insert(project);
        }
    }

    /// A batch committed: events it held may be delivered (see [`Hub::run_hooks`]).
    pub(super) fn hooks_committed(&mut self) {
        if !self.hooks.waiting_commit.is_empty() {
            self.hooks.committed = true;
        }
    }

    /// When the hooks need the loop again: now after a commit, else the
    /// next retry or grace period.
    pub(super) fn hooks_deadline(&self) -> Option<Instant> {
        let retry = self.hooks.retries.peek().map(|Reverse((at, _))| *at);
        let offline = self.hooks.offline_due.peek().map(|Reverse((at, _, _))| *at);
        let soonest = retry.into_iter().chain(offline).min();
        if self.hooks.committed {
            // Due at once: any instant already past will do.
            return Some(self.started);
        }
        soonest
    }

    /// Starts the deliveries that may go, fires due `user.offline` events
    /// and retries. Called by the shell once per loop iteration, before the
    /// commit.
    pub fn run_hooks(&mut self, now: Now) {
        self.fire_hook_timers(now);
        if std::mem::take(&mut self.hooks.committed) {
            for project in std::mem::take(&mut self.hooks.waiting_commit) {
                self.deliver_webhooks(project, now);
            }
        }
    }

    /// Due grace periods (`user.offline`) and retries.
    pub(super) fn fire_hook_timers(&mut self, now: Now) {
        while let Some(Reverse((at, project, user))) = self.hooks.offline_due.peek().cloned() {
            if at > now.mono {
                break;
            }
            self.hooks.offline_due.pop();
            let key = (project, user);
            if self.hooks.offline_pending.get(&key) == Some(&at) {
                self.hooks.offline_pending.remove(&key);
                if !self.projects[project].users.contains_key(&key.1) {
                    self.webhook(project, "user.offline", |_| json!({"userId": key.1}), now);
                }
            }
        }
        while let Some(Reverse((at, project))) = self.hooks.retries.peek().copied() {
            if at > now.mono {
                break;
            }
            self.hooks.retries.pop();
            if let Some(d) = self.hooks.deliveries.get_mut(&project) {
                if d.retry_at == Some(at) {
                    d.retry_at = None;
                    self.deliver_webhooks(project, now);
                }
            }
        }
    }

    /// Posts the project's oldest committed events, if nothing of it is in
    /// flight or waiting for a retry.
    fn deliver_webhooks(&mut self, project: usize, now: Now) {
        let Some(d) = self.hooks.deliveries.get(&project) else { return };
        if d.in_flight || d.retry_at.is_some() || d.pending == 0 {
            return;
        }
        let after = d.done_seq;
        let row = &self.projects[project].row;
        let Some(url) = row.webhook_url.clone() else { return };
        let (project_id, key) = (row.id.clone(), row.api_key.clone());
        let (count, bytes) = (self.config.webhook_batch_events, self.config.webhook_batch_bytes);
        let events = match self.store.outbox_batch(&project_id, after, count, bytes) {
            Ok(events) => events,
            Err(err) => {
                log::warn!(project:% = project_id; "cannot read the webhook outbox: {err}");
                self.schedule_retry(project, now);
                return;
            }
        };
        let Some(last) = events.last() else {
            // Recorded but not committed yet: the commit brings it back.
            self.hooks.waiting_commit.insert(project);
            return;
        };
        let through_seq = last.seq;
        let oldest_created_at = events[0].created_at;
        let mut body = Vec::with_capacity(events.iter().map(|e| e.body.len() + 1).sum::<usize>() + 12);
        body.extend_from_slice(b"{\"events\":[");
        for (i, e) in events.iter().enumerate() {
            if i > 0 {
                body.push(b',');
            }
            body.extend_from_slice(e.body.as_bytes());
        }
        body.extend_from_slice(b"]}");
        let request = self.hooks.request_id();
        let count = events.len() as u64;
        self.hooks.calls.insert(request, Call::Webhook { project, through_seq, count, oldest_created_at });
        if let Some(d) = self.hooks.deliveries.get_mut(&project) {
            d.in_flight = true;
        }
        let signature = signature(&key, now.unix_ms.div_euclid(1000), &body);
        let call = OutboundCall { request, url, body, signature, timeout: self.config.webhook_timeout };
        self.push_output(Output::Outbound(call));
    }

    fn schedule_retry(&mut self, project: usize, now: Now) {
        let Some(d) = self.hooks.deliveries.get_mut(&project) else { return };
        d.failures = d.failures.saturating_add(1);
        let (min, max) = (self.config.webhook_retry_min, self.config.webhook_retry_max);
        let backoff = min.saturating_mul(1u32 << (d.failures - 1).min(20)).min(max);
        // Full jitter over the upper half: retries of many projects spread out.
        let mut r = [0u8; 2];
        self.ids.fill_random(&mut r);
        let fraction = 0.5 + f64::from(u16::from_le_bytes(r)) / f64::from(u16::MAX) / 2.0;
        let at = now.mono + backoff.mul_f64(fraction);
        d.retry_at = Some(at);
        self.hooks.counters.retries += 1;
        self.hooks.retries.push(Reverse((at, project)));
    }

    fn webhook_answered(&mut self, project: usize, through_seq: u64, count: u64, oldest: i64, ok: bool, now: Now) {
        let project_id = self.projects[project].row.id.clone();
        let Some(d) = self.hooks.deliveries.get_mut(&project) else { return };
        d.in_flight = false;
        let max_age_ms = self.config.webhook_max_age.as_millis().min(i64::MAX as u128) as i64;
        let expired = now.unix_ms.saturating_sub(oldest) > max_age_ms;
        if ok || expired {
            d.done_seq = d.done_seq.max(through_seq);
            d.pending = d.pending.saturating_sub(count);
            d.failures = 0;
            if ok {
                self.hooks.counters.delivered += count;
            } else {
                self.hooks.counters.dropped += count;
                log::warn!(project:% = project_id; "dropped {count} webhook events older than the maximum age");
            }
            self.write(WriteOp::DeleteOutbox { project_id, through_seq });
            self.deliver_webhooks(project, now);
        } else {
            self.hooks.counters.failures += 1;
            self.schedule_retry(project, now);
        }
    }

    /// The webhook settings changed: a new URL (or none) starts afresh.
    /// Removing the URL drops what is undelivered (nobody is left to
    /// receive it); a new URL gets the backlog at once, without waiting for
    /// a retry meant for the old one.
    pub(super) fn webhook_settings_changed(&mut self, project: usize) {
        let seq = self.hooks.outbox_seq;
        let Some(d) = self.hooks.deliveries.get_mut(&project) else { return };
        d.failures = 0;
        d.retry_at = None;
        if self.projects[project].row.webhook_url.is_none() {
            d.pending = 0;
            d.done_seq = seq;
            let project_id = self.projects[project].row.id.clone();
            self.write(WriteOp::DeleteOutbox { project_id, through_seq: seq });
        } else {
            self.hooks.waiting_commit.insert(project);
            self.hooks.committed = true;
        }
    }

    /// A user's connection opened: `user.online`, unless they were only
    /// gone for less than the grace period (a page reload).
    pub(super) fn user_connected(&mut self, project: usize, user: &str, first: bool, now: Now) {
        if !first {
            return;
        }
        if self.hooks.offline_pending.remove(&(project, user.to_string())).is_none() {
            self.webhook(project, "user.online", |_| json!({"userId": user}), now);
        }
    }

    /// A user's last connection closed: `user.offline` once the grace
    /// period passes without a new one.
    pub(super) fn user_disconnected(&mut self, project: usize, user: &str, now: Now) {
        if self.projects[project].row.webhook_url.is_none() {
            return;
        }
        let at = now.mono + self.config.user_offline_grace;
        self.hooks.offline_pending.insert((project, user.to_string()), at);
        self.hooks.offline_due.push(Reverse((at, project, user.to_string())));
    }

    // ----- the access hook -----

    /// Whether a join must ask the backend first (the project has an access
    /// hook, and no cached decision admits this user to this room).
    pub(super) fn join_needs_backend(&mut self, project: usize, room: &str, user: &str, now: Now) -> bool {
        if self.projects[project].row.access_hook_url.is_none() {
            return false;
        }
        let key = format!("{project}\0{room}\0{user}");
        match self.hooks.cache.get(&key) {
            Some(&until) if until > now.mono => false,
            Some(_) => {
                self.hooks.cache.remove(&key);
                true
            }
            None => true,
        }
    }

    /// Parks a join until the backend answers; refused when the connection
    /// already has as many joins waiting as allowed.
    pub(super) fn park_join(&mut self, join: ParkedJoin, user: &str, now: Now) -> Result<(), Refusal> {
        let cap = self.config.max_pending_joins_per_connection;
        let row = &self.projects[join.project].row;
        let (Some(url), key) = (row.access_hook_url.clone(), row.api_key.clone()) else {
            return Err(Refusal::new("unavailable", "the project has no access hook"));
        };
        let waiting = self.hooks.parked.entry(join.conn).or_insert(0);
        if *waiting >= cap {
            return Err(Refusal::new("rate_limited", format!("at most {cap} joins may wait for the backend at once")));
        }
        *waiting += 1;
        let body = json!({
            "type": "access",
            "projectId": row.id,
            "room": join.room,
            // A Pusher subscriber of a public or private channel has no user.
            "userId": if user.is_empty() { Value::Null } else { Value::String(user.to_string()) },
            "connectionId": join.conn.to_string(),
        })
        .to_string()
        .into_bytes();
        let request = self.hooks.request_id();
        self.hooks.calls.insert(request, Call::Access(join));
        self.hooks.just_parked = Some(request);
        self.hooks.counters.access_calls += 1;
        let signature = signature(&key, now.unix_ms.div_euclid(1000), &body);
        let call = OutboundCall { request, url, body, signature, timeout: self.config.hook_timeout };
        self.push_output(Output::Outbound(call));
        Ok(())
    }

    /// What the backend answered to a call of ours.
    pub fn handle_outbound(&mut self, request: u64, result: OutboundResult, now: Now) {
        let Some(call) = self.hooks.calls.remove(&request) else { return };
        match call {
            Call::Webhook { project, through_seq, count, oldest_created_at } => {
                let ok = matches!(result, OutboundResult::Answered(200..=299, _));
                if !ok {
                    let why = match &result {
                        OutboundResult::Answered(status, _) => format!("answered {status}"),
                        OutboundResult::Failed(why) => why.clone(),
                    };
                    log::info!(project:% = self.projects[project].row.id; "webhook delivery failed: {why}");
                }
                self.webhook_answered(project, through_seq, count, oldest_created_at, ok, now);
            }
            Call::Access(join) => {
                if let Some(n) = self.hooks.parked.get_mut(&join.conn) {
                    *n = n.saturating_sub(1);
                    if *n == 0 {
                        self.hooks.parked.remove(&join.conn);
                    }
                }
                self.hooks.latency.observe(now.mono.saturating_duration_since(join.asked_at));
                let decision = match result {
                    OutboundResult::Answered(200..=299, body) => match serde_json::from_slice::<Value>(&body) {
                        Ok(v) if v["allow"] == true => Ok(v["cacheSeconds"].as_u64()),
                        Ok(v) if v["allow"] == false => {
                            let reason = v["reason"].as_str().unwrap_or("the backend refused access to this room");
                            Err(Refusal::new("forbidden", reason.chars().take(200).collect::<String>()))
                        }
                        _ => Err(Refusal::new("unavailable", "the access hook answered without `allow`; try again")),
                    },
                    OutboundResult::Answered(status, _) => {
                        Err(Refusal::new("unavailable", format!("the access hook answered {status}; try again")))
                    }
                    OutboundResult::Failed(why) => {
                        log::info!(project:% = self.projects[join.project].row.id; "access hook failed: {why}");
                        Err(Refusal::new("unavailable", "the access hook did not answer; try again"))
                    }
                };
                if decision.as_ref().is_err_and(|r| r.code == "unavailable") {
                    self.hooks.counters.access_failures += 1;
                }
                self.finish_parked_join(join, decision, now);
            }
        }
    }

    /// Carries out (or refuses) a join the backend has decided.
    fn finish_parked_join(&mut self, join: ParkedJoin, decision: Result<Option<u64>, Refusal>, now: Now) {
        let Some(user) = self.clients.get(&join.conn).map(|c| c.user.clone()) else { return };
        let outcome = match decision {
            Ok(cache_seconds) => {
                if let Some(seconds) = cache_seconds.filter(|&s| s > 0) {
                    if self.hooks.cache.len() >= MAX_CACHED_DECISIONS {
                        let t = now.mono;
                        self.hooks.cache.retain(|_, until| *until > t);
                    }
                    if self.hooks.cache.len() < MAX_CACHED_DECISIONS {
                        let key = format!("{}\0{}\0{user}", join.project, join.room);
                        self.hooks.cache.insert(key, now.mono + Duration::from_secs(seconds.min(86_400)));
                    }
                }
                if let Some(client) = self.clients.get_mut(&join.conn) {
                    client.join_options = join.options.clone();
                }
                let outcome = self.join_decided(join.conn, &join.room, join.since, now);
                if let Some(client) = self.clients.get_mut(&join.conn) {
                    client.join_options = None;
                }
                outcome
            }
            Err(refusal) => Err(refusal),
        };
        if let Err(refusal) = &outcome {
            self.send_error(join.project, join.conn, Some("join"), refusal.code, &refusal.message, None);
        }
        if let Some(request) = join.request {
            self.push_done(join.conn, request, outcome);
        }
    }

    /// The connection closed: its parked joins are answered to nobody.
    pub(super) fn forget_parked(&mut self, conn: ConnId) {
        self.hooks.parked.remove(&conn);
    }
}
