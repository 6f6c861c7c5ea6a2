//! Resumable sessions: a client whose connection dropped comes back, within
//! a window, into the rooms it was in and gets every message it missed, in
//! the order they were sent, none twice, even across a restart of the hub.
//!
//! This is Socket.IO's connection-state recovery, kept dialect-free: the
//! dialect names a session with a secret id and tells the hub the last
//! message id its client saw (message ids sort in the order the hub made
//! them, hub-wide and across restarts, see [`super::ids::Ids::ordered`]).
//! A connection receives its rooms' messages in that order too, since every
//! broadcast is released in batch order, so "the last id seen" says exactly
//! what it has: in each room, every message up to the newest with an id not
//! above it, and everything the room held when the connection joined.
//!
//! The session's rooms are rows of `resumable_sessions`, written with the
//! joins and leaves that change them, so a crash keeps them. The missed
//! messages are a `since` replay per room, sent as part of the room's live
//! stream ([`Output::Broadcast`] to the one connection) so the dialect tags
//! them with their ids like any live message.

use std::time::Duration;

use super::hub::{Principal, RoomAction};
use super::model::{HistoryQuery, MessageRow, ResumableRow, WriteOp};
use super::protocol::{encode, MessageView};
use super::{ConnId, Hub, Now};

/// One resumable session in memory.
pub(crate) struct Resumable {
    row: ResumableRow,
    /// The connection holding it; `None` once dropped (then `row.expires_at` counts).
    conn: Option<ConnId>,
    /// A row for it is stored (or written in a batch in flight).
    saved: bool,
}

/// Why a session could not be resumed (logged; the client is only told it
/// did not recover, and pages history).
#[derive(Debug)]
enum NotResumed {
    Unknown,
    Expired,
    OtherUser,
    Room(String, &'static str),
    TooMuchMissed(u64),
    Store(String),
}

impl std::fmt::Display for NotResumed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NotResumed::Unknown => write!(f, "unknown or expired session"),
            NotResumed::Expired => write!(f, "the recovery window has passed"),
            NotResumed::OtherUser => write!(f, "the session belongs to another user or project"),
            NotResumed::Room(room, why) => write!(f, "room `{room}`: {why}"),
            NotResumed::TooMuchMissed(n) => write!(f, "{n} messages missed, more than one replay may carry"),
            NotResumed::Store(e) => write!(f, "store: {e}"),
        }
    }
}

impl Hub {
    /// Reads the stored sessions at start-up: the ones a connection held
    /// when the hub stopped (or crashed) count as dropped now.
    pub(super) fn load_resumables(&mut self, rows: Vec<ResumableRow>, now: Now) {
        let window_ms = self.config.resume_window.as_millis().min(i64::MAX as u128) as i64;
        let mut rows: Vec<ResumableRow> = rows
            .into_iter()
            .filter_map(|mut row| {
                if row.expires_at == 0 {
                    row.expires_at = now.unix_ms.saturating_add(window_ms);
                }
                if row.expires_at <= now.unix_ms || window_ms == 0 {
                    self.write(WriteOp::DeleteResumable(row.id));
                    return None;
                }
                Some(row)
            })
            .collect();
        rows.sort_by_key(|r| r.expires_at);
        for row in rows {
            let left = Duration::from_millis((row.expires_at - now.unix_ms).max(0) as u64);
            self.resumable_deadlines.push_back((now.mono + left, row.expires_at, row.id.clone()));
            self.resumables.insert(row.id.clone(), Resumable { row, conn: None, saved: true });
        }
        self.expire_resumables(now);
    }

    /// Makes the session `id` of a just-opened connection resumable (its
    /// rooms are recorded as it joins and leaves them).
    pub fn make_resumable(&mut self, conn: ConnId, id: &str) {
        if self.config.resume_window.is_zero() {
            return;
        }
        let Some(client) = self.clients.get_mut(&conn) else { return };
        client.resume_id = Some(id.to_string());
        let row = ResumableRow {
            id: id.to_string(),
            project_id: self.projects[client.project].row.id.clone(),
            user_id: client.user.clone(),
            rooms: Vec::new(),
            expires_at: 0,
        };
        self.resumables.insert(id.to_string(), Resumable { row, conn: Some(conn), saved: false });
    }

    /// Resumes the session `id` on a just-opened connection of the same
    /// project and user: back into its rooms, and every message it missed
    /// after `last_seen` (the last message id its client received) sent in
    /// id order. False, with nothing changed, when the session is unknown,
    /// expired, of another user, when a room is
    /// gone or refuses the user now, or when more than the replay cap was
    /// missed or more than one answer may carry: the client then starts
    /// afresh and pages history.
    pub fn resume(&mut self, conn: ConnId, id: &str, last_seen: Option<&str>, now: Now) -> bool {
        if self.config.resume_window.is_zero() {
            return false;
        }
        match self.try_resume(conn, id, last_seen, now) {
            Ok(()) => true,
            Err(why) => {
                log::debug!(conn:% = conn; "session not resumed: {why}");
                if !matches!(why, NotResumed::OtherUser) {
                    // Unknown or spent: nobody can resume it any more.
                    self.forget_session(id);
                }
                false
            }
        }
    }

    fn try_resume(&mut self, conn: ConnId, id: &str, last_seen: Option<&str>, now: Now) -> Result<(), NotResumed> {
        let Some(client) = self.clients.get(&conn) else { return Err(NotResumed::Unknown) };
        let project = client.project;
        let Some(session) = self.resumables.get(id) else { return Err(NotResumed::Unknown) };
        if session.row.project_id != self.projects[project].row.id || session.row.user_id != client.user {
            return Err(NotResumed::OtherUser);
        }
        // Still held: the client saw the drop before the hub did (a
        // half-open TCP connection). Presenting the secret id proves it is
        // the same client: the old connection is closed and this one resumes.
        let held_by = session.conn.filter(|&c| c != conn);
        if held_by.is_none() && session.row.expires_at <= now.unix_ms {
            return Err(NotResumed::Expired);
        }
        let rooms = session.row.rooms.clone();
        // Plan first, so a refusal changes nothing: each room still admits
        // the user, and what was missed fits under the cap and in one answer.
        let mut plan = Vec::with_capacity(rooms.len());
        let mut missed = 0u64;
        for (name, joined_seq) in &rooms {
            let room = self
                .authorize_room(Principal::Conn(conn), project, name, RoomAction::Join)
                .map_err(|r| NotResumed::Room(name.clone(), r.code))?;
            let since = self.resume_point(room, *joined_seq, last_seen)?;
            let r = &self.rooms[room];
            if r.last_seq > since && since + 1 < r.first_seq {
                return Err(NotResumed::Room(name.clone(), "trimmed by retention"));
            }
            missed += r.last_seq.saturating_sub(since);
            if missed > self.config.replay_cap as u64 {
                return Err(NotResumed::TooMuchMissed(missed));
            }
            plan.push((room, since, *joined_seq));
        }
        let mut replay: Vec<(usize, MessageRow)> = Vec::new();
        let mut bytes = 0usize;
        for &(room, since, _) in &plan {
            if self.rooms[room].last_seq <= since {
                continue;
            }
            let query = HistoryQuery { before: None, after: Some(since), limit: self.config.replay_cap as u32 };
            let mut page = self
                .charged_read(conn, room, &query, self.reply_budget(true), now.mono)
                .map_err(|r| NotResumed::Room(self.rooms[room].name.clone(), r.code))?;
            if page.cut {
                return Err(NotResumed::TooMuchMissed(missed));
            }
            bytes += page.bytes;
            page.rows = self.inflight.complete_page(self.rooms[room].pk, &query, page.rows, false);
            replay.extend(page.rows.into_iter().map(|row| (room, row)));
        }
        if bytes > self.config.max_reply_bytes {
            return Err(NotResumed::TooMuchMissed(missed));
        }
        replay.sort_by(|a, b| a.1.id.cmp(&b.1.id));
        // Resume: the session is this connection's now, with its rooms as
        // they were (each keeps the `seq` it was joined at).
        if let Some(old) = held_by {
            if let Some(client) = self.clients.get_mut(&old) {
                client.resume_id = None;
            }
            self.close_connection(old, 1000, "session resumed on another connection");
        }
        if let Some(session) = self.resumables.get_mut(id) {
            session.conn = Some(conn);
            session.row.rooms.clear();
            session.row.expires_at = 0;
        }
        if let Some(client) = self.clients.get_mut(&conn) {
            client.resume_id = Some(id.to_string());
        }
        for &(room, _, _) in &plan {
            self.enter_room(conn, room, now);
        }
        if let Some(session) = self.resumables.get_mut(id) {
            session.row.rooms = plan.iter().map(|&(room, _, joined)| (self.rooms[room].name.clone(), joined)).collect();
        }
        self.save_session(id);
        for (room, row) in replay {
            let wire = encode(&MessageView::of(&row, &self.rooms[room].name, Some("message")));
            self.broadcast(project, vec![conn], wire, true);
        }
        Ok(())
    }

    /// The `seq` after which a resumed session missed a room's messages: the
    /// newest message it saw there (an id not above `last_seen`), or the room's
    /// `seq` when it joined, whichever is later. Reads ids of the newest
    /// messages only, at most the replay cap plus one.
    fn resume_point(&mut self, room: usize, joined_seq: u64, last_seen: Option<&str>) -> Result<u64, NotResumed> {
        let (pk, latest) = (self.rooms[room].pk, self.rooms[room].last_seq);
        let floor = joined_seq.min(latest);
        let Some(last_seen) = last_seen else { return Ok(floor) };
        let cap = self.config.replay_cap;
        let recent = self.store.recent_ids(pk, floor, cap + 1).map_err(|e| NotResumed::Store(e.to_string()))?;
        // Rows in flight are newer than anything the client was sent.
        match recent.iter().find(|(_, id)| id.as_str() <= last_seen) {
            Some(&(seq, _)) => Ok(seq.max(floor)),
            None if recent.len() > cap => Err(NotResumed::TooMuchMissed(recent.len() as u64)),
            None => Ok(floor),
        }
    }

    /// The session's rooms changed: a joined room is recorded with the
    /// room's `seq` now (the connection is sent everything after it).
    pub(super) fn resumable_entered(&mut self, conn: ConnId, room: usize) {
        let Some(id) = self.clients.get(&conn).and_then(|c| c.resume_id.clone()) else { return };
        let Some(session) = self.resumables.get_mut(&id).filter(|s| s.conn == Some(conn)) else { return };
        let name = &self.rooms[room].name;
        if !session.row.rooms.iter().any(|(n, _)| n == name) {
            session.row.rooms.push((name.clone(), self.rooms[room].last_seq));
            self.save_session(&id);
        }
    }

    /// The session left a room (while it holds its connection).
    pub(super) fn resumable_left(&mut self, conn: ConnId, room: usize) {
        let Some(id) = self.clients.get(&conn).and_then(|c| c.resume_id.clone()) else { return };
        let Some(session) = self.resumables.get_mut(&id).filter(|s| s.conn == Some(conn)) else { return };
        let name = &self.rooms[room].name;
        let before = session.row.rooms.len();
        session.row.rooms.retain(|(n, _)| n != name);
        if session.row.rooms.len() != before {
            self.save_session(&id);
        }
    }

    /// The connection dropped: its session stays resumable for the window.
    /// Called before it leaves its rooms, which the session keeps.
    pub(super) fn detach_resumable(&mut self, conn: ConnId, now: Now) {
        let Some(id) = self.clients.get_mut(&conn).and_then(|c| c.resume_id.take()) else { return };
        let window = self.config.resume_window;
        let Some(session) = self.resumables.get_mut(&id).filter(|s| s.conn == Some(conn)) else { return };
        session.conn = None;
        session.row.expires_at = now.unix_ms.saturating_add(window.as_millis().min(i64::MAX as u128) as i64);
        let expires_at = session.row.expires_at;
        if session.saved || !session.row.rooms.is_empty() {
            self.save_session(&id);
        }
        self.resumable_deadlines.push_back((now.mono + window, expires_at, id));
        self.expire_resumables(now);
    }

    /// The client ended its session on purpose (Socket.IO `DISCONNECT`):
    /// it cannot be resumed.
    pub fn forget_resumable(&mut self, conn: ConnId) {
        if let Some(id) = self.clients.get_mut(&conn).and_then(|c| c.resume_id.take()) {
            self.forget_session(&id);
        }
    }

    fn forget_session(&mut self, id: &str) {
        if let Some(session) = self.resumables.remove(id) {
            if session.saved {
                self.write(WriteOp::DeleteResumable(id.to_string()));
            }
        }
    }

    fn save_session(&mut self, id: &str) {
        if let Some(session) = self.resumables.get_mut(id) {
            session.saved = true;
            let row = session.row.clone();
            self.write(WriteOp::SaveResumable(row));
        }
    }

    /// Forgets dropped sessions past their window, and the oldest ones
    /// beyond the cap.
    pub(super) fn expire_resumables(&mut self, now: Now) {
        let cap = self.config.max_resumable_sessions;
        while let Some((deadline, _, _)) = self.resumable_deadlines.front() {
            if *deadline > now.mono && self.resumable_deadlines.len() <= cap {
                break;
            }
            let Some((_, expires_at, id)) = self.resumable_deadlines.pop_front() else { break };
            // An entry of a session resumed (and maybe dropped again) since is stale.
            let current = self.resumables.get(&id).is_some_and(|s| s.conn.is_none() && s.row.expires_at == expires_at);
            if current {
                self.forget_session(&id);
            }
        }
    }

    /// Resumable sessions known (tests, metrics).
    pub fn resumable_sessions(&self) -> usize {
        self.resumables.len()
    }
}
