//! SQLite persistence: numbered migrations, WAL, cached statements, and two
//! connections to one file.
//!
//! The *write* connection belongs to the store thread ([`crate::storethread`]):
//! it applies the core's [`Batch`]es, each inside a SAVEPOINT of a transaction
//! that may hold several batches queued behind each other (group commit). The
//! *read* connection belongs to the loop: in WAL mode a reader
//! sees the last committed state and never an uncommitted row, and it never
//! waits for the writer. WAL checkpoints run on a third connection in a thread
//! of their own ([`Checkpointer`]), so their fsyncs hold up no commit. `:memory:` becomes a private temporary file, removed
//! when the writer closes, because two connections cannot share a plain
//! in-memory database.

use std::cell::RefCell;
use std::path::PathBuf;
use std::rc::Rc;

use rusqlite::{params, Connection, OptionalExtension};

use crate::core::{
    Batch, BatchWriter, HistoryPage, HistoryQuery, MessageRow, OutboxBacklog, OutboxRow, ProjectRow, ReadBudget,
    ResumableRow, RoomKind, RoomRow, Snapshot, Store, StoreError, WriteOp,
};

/// Schema changes, applied in order; `PRAGMA user_version` records how many ran.
const MIGRATIONS: &[&str] = &[
    // 1: projects, rooms, members, messages, receipts.
    "CREATE TABLE projects (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        api_key TEXT NOT NULL UNIQUE,
        created_at INTEGER NOT NULL
    );
    CREATE TABLE rooms (
        pk INTEGER PRIMARY KEY,
        id TEXT NOT NULL UNIQUE,
        project_id TEXT NOT NULL REFERENCES projects(id),
        name TEXT NOT NULL,
        kind TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        UNIQUE (project_id, name)
    );
    CREATE TABLE room_members (
        room_pk INTEGER NOT NULL,
        user_id TEXT NOT NULL,
        PRIMARY KEY (room_pk, user_id)
    ) WITHOUT ROWID;
    CREATE TABLE messages (
        room_pk INTEGER NOT NULL,
        seq INTEGER NOT NULL,
        id TEXT NOT NULL,
        user_id TEXT NOT NULL,
        content TEXT NOT NULL,
        content_type TEXT NOT NULL,
        attachments TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        edited_at INTEGER,
        deleted INTEGER NOT NULL DEFAULT 0,
        temp_id TEXT,
        PRIMARY KEY (room_pk, seq)
    ) WITHOUT ROWID;
    CREATE UNIQUE INDEX messages_by_id ON messages (id);
    CREATE UNIQUE INDEX messages_by_temp_id ON messages (room_pk, user_id, temp_id) WHERE temp_id IS NOT NULL;
    CREATE TABLE receipts (
        message_id TEXT NOT NULL,
        user_id TEXT NOT NULL,
        room_pk INTEGER NOT NULL,
        read_at INTEGER NOT NULL,
        PRIMARY KEY (message_id, user_id)
    ) WITHOUT ROWID;
    CREATE INDEX receipts_by_room ON receipts (room_pk);",
    // 2: per-project WebSocket settings (signed tokens, origin allow-list).
    "ALTER TABLE projects ADD COLUMN require_tokens INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE projects ADD COLUMN allowed_origins TEXT NOT NULL DEFAULT '[]';",
    // 3: each message's stored size, in a narrow index next to its `seq`, so a
    // page or a replay is measured before any content is read (and a
    // project's stored bytes are summed at start-up without reading rows).
    "ALTER TABLE messages ADD COLUMN size INTEGER NOT NULL DEFAULT 0;
    UPDATE messages SET size = length(CAST(id AS BLOB)) + length(CAST(user_id AS BLOB))
        + length(CAST(content AS BLOB)) + length(CAST(content_type AS BLOB)) + length(CAST(attachments AS BLOB));
    CREATE INDEX messages_sizes ON messages (room_pk, seq, size);",
    // 4: rooms created by the first join (`autoCreateRooms`).
    "ALTER TABLE projects ADD COLUMN auto_create_rooms INTEGER NOT NULL DEFAULT 0;",
    // 5: sessions a Socket.IO client may resume after a drop or a restart.
    "CREATE TABLE resumable_sessions (
        id TEXT PRIMARY KEY,
        project_id TEXT NOT NULL,
        user_id TEXT NOT NULL,
        rooms TEXT NOT NULL,
        expires_at INTEGER NOT NULL
    ) WITHOUT ROWID;",
    // 6: backend hooks and the webhook outbox (events written with the change they report).
    "ALTER TABLE projects ADD COLUMN webhook_url TEXT;
    ALTER TABLE projects ADD COLUMN webhook_events TEXT;
    ALTER TABLE projects ADD COLUMN access_hook_url TEXT;
    CREATE TABLE outbox (
        project_id TEXT NOT NULL,
        seq INTEGER NOT NULL,
        created_at INTEGER NOT NULL,
        body TEXT NOT NULL,
        PRIMARY KEY (project_id, seq)
    ) WITHOUT ROWID;",
];

/// How strictly a commit waits for the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// `synchronous=NORMAL` in WAL mode: a commit survives a crash of the
    /// process; a power cut may lose the last commits, never corrupt the file.
    Normal,
    /// `synchronous=FULL`: every commit is fsynced before it is acknowledged.
    Full,
}

/// A SQLite connection: the [`Store`] reads on either connection, the
/// [`BatchWriter`] on the write connection.
pub struct SqliteStore {
    conn: Connection,
    /// A temporary file standing for `:memory:`, removed with this connection.
    remove_on_drop: Option<PathBuf>,
}

fn err(context: &'static str) -> impl Fn(rusqlite::Error) -> StoreError {
    move |e| StoreError { context, detail: e.to_string() }
}

impl Drop for SqliteStore {
    fn drop(&mut self) {
        if let Some(path) = self.remove_on_drop.take() {
            for suffix in ["", "-wal", "-shm", "-journal"] {
                let mut p = path.clone().into_os_string();
                p.push(suffix);
                let _ = std::fs::remove_file(p);
            }
        }
    }
}

impl SqliteStore {
    /// Opens (or creates) the database and brings its schema up to date: one
    /// connection that reads and writes (tests, benches, tools).
    pub fn open(path: &str, durability: Durability) -> Result<SqliteStore, StoreError> {
        SqliteStore::open_with(path, durability, None)
    }

    /// Like [`SqliteStore::open`], with a cap on the database size in pages
    /// (`--db-max-pages`, a diagnostic that makes a full disk reproducible).
    pub fn open_with(path: &str, durability: Durability, max_pages: Option<u64>) -> Result<SqliteStore, StoreError> {
        let conn = Connection::open(path).map_err(err("open database"))?;
        conn.busy_timeout(std::time::Duration::from_millis(100)).map_err(err("set busy timeout"))?;
        if path != ":memory:" {
            match conn.query_row("PRAGMA journal_mode=WAL", [], |row| row.get::<_, String>(0)) {
                Ok(mode) if mode.eq_ignore_ascii_case("wal") => {}
                Ok(mode) => log::warn!("database journal mode is {mode}, not WAL"),
                Err(e) => log::warn!("cannot enable WAL ({e}); a read-only database still serves reads"),
            }
        }
        let sync = match durability {
            Durability::Normal => "NORMAL",
            Durability::Full => "FULL",
        };
        conn.execute_batch(&format!("PRAGMA synchronous={sync}; PRAGMA foreign_keys=ON;"))
            .map_err(err("set pragmas"))?;
        if let Some(pages) = max_pages {
            conn.query_row(&format!("PRAGMA max_page_count = {pages}"), [], |_| Ok(()))
                .map_err(err("set max_page_count"))?;
        }
        conn.set_prepared_statement_cache_capacity(64);
        let mut store = SqliteStore { conn, remove_on_drop: None };
        store.migrate()?;
        Ok(store)
    }

    /// Opens the write connection (migrating the schema) and then the read
    /// connection of one database: `(writer, reader)`.
    pub fn open_pair(
        path: &str,
        durability: Durability,
        max_pages: Option<u64>,
    ) -> Result<(SqliteStore, SqliteStore), StoreError> {
        let (path, temporary) = if path == ":memory:" {
            let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
            let file = std::env::temp_dir().join(format!("realtimehub-memory-{}-{nanos}.db", std::process::id()));
            (file.to_string_lossy().into_owned(), Some(file))
        } else {
            (path.to_string(), None)
        };
        let mut writer = SqliteStore::open_with(&path, durability, max_pages)?;
        writer.remove_on_drop = temporary;
        // The per-batch SAVEPOINTs copy every page they touch into a
        // statement journal: in memory, not a temporary file (the profile
        // of the first store-thread run showed those writes as the largest
        // cost of a commit). A 64 MiB page cache keeps the hot index pages of
        // many rooms from being read back from the OS at every insert.
        writer
            .conn
            .execute_batch("PRAGMA temp_store = MEMORY; PRAGMA cache_size = -65536;")
            .map_err(err("set writer pragmas"))?;
        let conn = Connection::open(&path).map_err(err("open read connection"))?;
        conn.busy_timeout(std::time::Duration::from_millis(100)).map_err(err("set busy timeout"))?;
        conn.execute_batch("PRAGMA query_only=1;").map_err(err("set pragmas"))?;
        conn.set_prepared_statement_cache_capacity(64);
        Ok((writer, SqliteStore { conn, remove_on_drop: None }))
    }

    fn migrate(&mut self) -> Result<(), StoreError> {
        let version = self.schema_version()?;
        if version > MIGRATIONS.len() {
            return Err(StoreError {
                context: "migrate",
                detail: format!("database schema {version} is newer than this build knows ({})", MIGRATIONS.len()),
            });
        }
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(version) {
            let tx = self.conn.transaction().map_err(err("begin migration"))?;
            tx.execute_batch(sql).map_err(err("run migration"))?;
            tx.pragma_update(None, "user_version", (i + 1) as i64).map_err(err("record schema version"))?;
            tx.commit().map_err(err("commit migration"))?;
            log::info!("database schema migrated to version {}", i + 1);
        }
        Ok(())
    }

    /// The stored schema version.
    pub fn schema_version(&self) -> Result<usize, StoreError> {
        self.conn
            .query_row("PRAGMA user_version", [], |row| row.get::<_, i64>(0))
            .map(|v| v.max(0) as usize)
            .map_err(err("read schema version"))
    }

    /// Opens a transaction for one or more batches.
    pub fn begin(&mut self) -> Result<(), StoreError> {
        self.conn.execute_batch("BEGIN IMMEDIATE").map_err(err("begin transaction"))
    }

    /// Whether a transaction is open (SQLite may abandon one on its own after
    /// SQLITE_FULL or SQLITE_IOERR).
    pub fn in_transaction(&self) -> bool {
        !self.conn.is_autocommit()
    }

    /// Applies one batch inside the open transaction as a SAVEPOINT: when one
    /// of its statements fails, the batch's earlier statements are undone and
    /// the batches before it in the transaction stay.
    pub fn apply_in_transaction(&mut self, batch: &Batch) -> Result<(), StoreError> {
        self.conn.execute_batch("SAVEPOINT batch").map_err(err("open savepoint"))?;
        let result = batch.ops.iter().try_for_each(|op| self.apply_op(op));
        if !self.in_transaction() {
            // SQLite abandoned the whole transaction; the savepoint went with it.
            return result;
        }
        let end = if result.is_ok() { "RELEASE batch" } else { "ROLLBACK TO batch; RELEASE batch" };
        self.conn.execute_batch(end).map_err(err("end savepoint"))?;
        result
    }

    /// Commits the open transaction; on failure rolls it back.
    pub fn finish(&mut self) -> Result<(), StoreError> {
        if !self.in_transaction() {
            return Err(StoreError { context: "commit", detail: "SQLite rolled the transaction back".into() });
        }
        if let Err(e) = self.conn.execute_batch("COMMIT") {
            let _ = self.conn.execute_batch("ROLLBACK");
            return Err(err("commit")(e));
        }
        Ok(())
    }

    /// Rolls back the open transaction, if any.
    pub fn abandon(&mut self) {
        if self.in_transaction() {
            let _ = self.conn.execute_batch("ROLLBACK");
        }
    }

    /// Every row of a parameterless query, mapped.
    fn rows<T>(
        &mut self,
        context: &'static str,
        sql: &str,
        map: impl FnMut(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
    ) -> Result<Vec<T>, StoreError> {
        let mut stmt = self.conn.prepare_cached(sql).map_err(err(context))?;
        let rows = stmt.query_map([], map).map_err(err(context))?;
        rows.collect::<Result<Vec<_>, _>>().map_err(err(context))
    }

    fn exec(&mut self, context: &'static str, sql: &str, p: impl rusqlite::Params) -> Result<usize, StoreError> {
        self.conn.prepare_cached(sql).and_then(|mut s| s.execute(p)).map_err(err(context))
    }

    fn apply_op(&mut self, op: &WriteOp) -> Result<(), StoreError> {
        match op {
            WriteOp::InsertProject(p) => {
                let origins = serde_json::to_string(&p.allowed_origins).unwrap_or_else(|_| "[]".into());
                let events = p.webhook_events.as_ref().and_then(|e| serde_json::to_string(e).ok());
                let sql = "INSERT INTO projects \
                           (id, name, api_key, created_at, require_tokens, allowed_origins, auto_create_rooms, \
                            webhook_url, webhook_events, access_hook_url) \
                           VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)";
                let args = params![
                    p.id,
                    p.name,
                    p.api_key,
                    p.created_at,
                    p.require_tokens as i64,
                    origins,
                    p.auto_create_rooms as i64,
                    p.webhook_url,
                    events,
                    p.access_hook_url
                ];
                self.exec("insert project", sql, args)?;
            }
            WriteOp::UpdateProject(p) => {
                let origins = serde_json::to_string(&p.allowed_origins).unwrap_or_else(|_| "[]".into());
                let events = p.webhook_events.as_ref().and_then(|e| serde_json::to_string(e).ok());
                let sql = "UPDATE projects SET name = ?1, require_tokens = ?2, allowed_origins = ?3, \
                           auto_create_rooms = ?4, webhook_url = ?5, webhook_events = ?6, access_hook_url = ?7 \
                           WHERE id = ?8";
                let args = params![
                    p.name,
                    p.require_tokens as i64,
                    origins,
                    p.auto_create_rooms as i64,
                    p.webhook_url,
                    events,
                    p.access_hook_url,
                    p.id
                ];
                self.exec("update project", sql, args)?;
            }
            WriteOp::InsertRoom(r) => {
                let sql =
                    "INSERT INTO rooms (pk, id, project_id, name, kind, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)";
                self.exec(
                    "insert room",
                    sql,
                    params![r.pk, r.id, r.project_id, r.name, r.kind.as_str(), r.created_at],
                )?;
                for user in &r.members {
                    self.apply_op(&WriteOp::AddMember(r.pk, user.clone()))?;
                }
            }
            WriteOp::DeleteRoom(pk) => {
                for sql in [
                    "DELETE FROM receipts WHERE room_pk = ?1",
                    "DELETE FROM messages WHERE room_pk = ?1",
                    "DELETE FROM room_members WHERE room_pk = ?1",
                    "DELETE FROM rooms WHERE pk = ?1",
                ] {
                    self.exec("delete room", sql, [pk])?;
                }
            }
            WriteOp::AddMember(pk, user) => {
                let sql = "INSERT OR IGNORE INTO room_members (room_pk, user_id) VALUES (?1, ?2)";
                self.exec("add member", sql, params![pk, user])?;
            }
            WriteOp::RemoveMember(pk, user) => {
                let sql = "DELETE FROM room_members WHERE room_pk = ?1 AND user_id = ?2";
                self.exec("remove member", sql, params![pk, user])?;
            }
            WriteOp::InsertMessage(m) => {
                let sql = "INSERT INTO messages (room_pk, seq, id, user_id, content, content_type, attachments, \
                           created_at, edited_at, deleted, temp_id, size) \
                           VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)";
                let args = params![
                    m.room_pk,
                    m.seq as i64,
                    m.id,
                    m.user_id,
                    m.content,
                    m.content_type,
                    m.attachments,
                    m.created_at,
                    m.edited_at,
                    m.deleted as i64,
                    m.temp_id,
                    m.stored_size() as i64
                ];
                self.exec("insert message", sql, args)?;
            }
            WriteOp::UpdateMessage(m) => {
                let sql =
                    "UPDATE messages SET content = ?1, attachments = ?2, edited_at = ?3, deleted = ?4, size = ?5 \
                           WHERE room_pk = ?6 AND seq = ?7";
                let size = m.stored_size() as i64;
                let args =
                    params![m.content, m.attachments, m.edited_at, m.deleted as i64, size, m.room_pk, m.seq as i64];
                self.exec("update message", sql, args)?;
            }
            WriteOp::TrimRoom { room_pk, through_seq } => {
                let through = (*through_seq).min(i64::MAX as u64) as i64;
                self.exec(
                    "trim receipts",
                    "DELETE FROM receipts WHERE room_pk = ?1 AND message_id IN \
                     (SELECT id FROM messages WHERE room_pk = ?1 AND seq <= ?2)",
                    params![room_pk, through],
                )?;
                let sql = "DELETE FROM messages WHERE room_pk = ?1 AND seq <= ?2";
                self.exec("trim messages", sql, params![room_pk, through])?;
            }
            WriteOp::SaveResumable(r) => {
                let rooms = serde_json::to_string(&r.rooms).unwrap_or_else(|_| "[]".into());
                let sql = "INSERT OR REPLACE INTO resumable_sessions (id, project_id, user_id, rooms, expires_at) \
                           VALUES (?1, ?2, ?3, ?4, ?5)";
                self.exec("save resumable session", sql, params![r.id, r.project_id, r.user_id, rooms, r.expires_at])?;
            }
            WriteOp::DeleteResumable(id) => {
                self.exec("delete resumable session", "DELETE FROM resumable_sessions WHERE id = ?1", [id])?;
            }
            WriteOp::InsertOutbox(row) => {
                let sql = "INSERT INTO outbox (project_id, seq, created_at, body) VALUES (?1, ?2, ?3, ?4)";
                let seq = row.seq.min(i64::MAX as u64) as i64;
                self.exec("insert webhook event", sql, params![row.project_id, seq, row.created_at, row.body])?;
            }
            WriteOp::DeleteOutbox { project_id, through_seq } => {
                let sql = "DELETE FROM outbox WHERE project_id = ?1 AND seq <= ?2";
                let through = (*through_seq).min(i64::MAX as u64) as i64;
                self.exec("delete webhook events", sql, params![project_id, through])?;
            }
            WriteOp::TrimOutbox { project_id, count } => {
                let sql = "DELETE FROM outbox WHERE project_id = ?1 AND seq IN \
                           (SELECT seq FROM outbox WHERE project_id = ?1 ORDER BY seq LIMIT ?2)";
                let count = (*count).min(i64::MAX as u64) as i64;
                self.exec("trim webhook events", sql, params![project_id, count])?;
            }
            WriteOp::InsertReceipts { room_pk, message_ids, user_id, read_at } => {
                let sql =
                    "INSERT OR IGNORE INTO receipts (message_id, user_id, room_pk, read_at) VALUES (?1, ?2, ?3, ?4)";
                for id in message_ids {
                    self.exec("insert receipt", sql, params![id, user_id, room_pk, read_at])?;
                }
            }
        }
        Ok(())
    }

    /// The highest `seq` stored for a room (0 when none).
    pub fn last_seq(&mut self, pk: i64) -> Result<u64, StoreError> {
        self.conn
            .prepare_cached("SELECT COALESCE(MAX(seq), 0) FROM messages WHERE room_pk = ?1")
            .and_then(|mut s| s.query_row([pk], |r| r.get::<_, i64>(0)))
            .map(|n| n as u64)
            .map_err(err("read last seq"))
    }
}

impl BatchWriter for SqliteStore {
    fn apply(&mut self, batch: &Batch) -> Result<(), StoreError> {
        self.begin()?;
        if let Err(e) = self.apply_in_transaction(batch) {
            self.abandon();
            return Err(e);
        }
        self.finish()
    }

    /// One transaction for the whole group, one SAVEPOINT per batch: a batch
    /// whose statement fails is undone alone and the ones after it are not
    /// applied; a failed COMMIT (or a transaction SQLite abandoned) fails
    /// every batch of the group.
    fn apply_group(&mut self, batches: &[&Batch]) -> Vec<Result<(), StoreError>> {
        if let Err(e) = self.begin() {
            return vec![Err(e); batches.len()];
        }
        let mut results: Vec<Result<(), StoreError>> = Vec::with_capacity(batches.len());
        let mut failure: Option<StoreError> = None;
        for batch in batches {
            if let Some(f) = &failure {
                results.push(Err(f.clone()));
                continue;
            }
            let result = self.apply_in_transaction(batch);
            if let Err(e) = &result {
                failure = Some(e.clone());
            }
            results.push(result);
        }
        let end = if self.in_transaction() {
            self.finish()
        } else {
            Err(failure
                .clone()
                .unwrap_or(StoreError { context: "commit", detail: "SQLite rolled the transaction back".into() }))
        };
        if let Err(e) = end {
            for r in results.iter_mut() {
                if r.is_ok() {
                    *r = Err(e.clone());
                }
            }
        }
        results
    }
}

/// Runs SQLite's WAL checkpoints on a connection and thread of its own, so a
/// checkpoint's fsyncs delay neither the loop nor the store thread's
/// commits. The write connection's automatic checkpoints are turned off
/// ([`Checkpointer::spawn`]); this thread runs a PASSIVE checkpoint (it never
/// blocks the writer or the readers) every interval, which bounds the WAL.
pub struct Checkpointer {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Checkpointer {
    /// Starts checkpointing `writer`'s database every `every`; `None` when the
    /// database is not in WAL mode (a read-only file, say), where nothing is
    /// to be done and the writer is left as it was.
    pub fn spawn(writer: &SqliteStore, every: std::time::Duration) -> Result<Option<Checkpointer>, StoreError> {
        let wal = writer
            .conn
            .query_row("PRAGMA journal_mode", [], |r| r.get::<_, String>(0))
            .is_ok_and(|m| m.eq_ignore_ascii_case("wal"));
        let Some(path) = writer.conn.path().filter(|p| wal && !p.is_empty()).map(str::to_string) else {
            return Ok(None);
        };
        let conn = Connection::open(&path).map_err(err("open checkpoint connection"))?;
        conn.busy_timeout(std::time::Duration::from_millis(50)).map_err(err("set busy timeout"))?;
        writer.conn.query_row("PRAGMA wal_autocheckpoint = 0", [], |_| Ok(())).map_err(err("hand checkpoints off"))?;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("checkpoint".into())
            .spawn(move || {
                while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                    std::thread::sleep(every);
                    if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
                        log::debug!("checkpoint: {e}");
                    }
                }
            })
            .map_err(|e| StoreError { context: "start the checkpoint thread", detail: e.to_string() })?;
        Ok(Some(Checkpointer { stop, thread: Some(thread) }))
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// One connection shared by the core's reads and an inline writer, in one
/// thread: what tests and benches drive the core with ([`crate::core::Hub::commit_with`]).
#[derive(Clone)]
pub struct SharedStore(Rc<RefCell<SqliteStore>>);

impl SharedStore {
    /// Wraps a store.
    pub fn new(store: SqliteStore) -> SharedStore {
        SharedStore(Rc::new(RefCell::new(store)))
    }
}

impl Store for SharedStore {
    fn load(&mut self) -> Result<Snapshot, StoreError> {
        self.0.borrow_mut().load()
    }
    fn find_temp_id(&mut self, pk: i64, user: &str, temp_id: &str) -> Result<Option<(String, u64)>, StoreError> {
        self.0.borrow_mut().find_temp_id(pk, user, temp_id)
    }
    fn message(&mut self, pk: i64, id: &str) -> Result<Option<MessageRow>, StoreError> {
        self.0.borrow_mut().message(pk, id)
    }
    fn has_receipt(&mut self, message_id: &str, user_id: &str) -> Result<bool, StoreError> {
        self.0.borrow_mut().has_receipt(message_id, user_id)
    }
    fn receipts(&mut self, pk: i64, message_id: &str) -> Result<Vec<(String, i64)>, StoreError> {
        self.0.borrow_mut().receipts(pk, message_id)
    }
    fn history(&mut self, pk: i64, q: &HistoryQuery, budget: ReadBudget) -> Result<HistoryPage, StoreError> {
        self.0.borrow_mut().history(pk, q, budget)
    }
    fn is_member(&mut self, pk: i64, user: &str) -> Result<bool, StoreError> {
        self.0.borrow_mut().is_member(pk, user)
    }
    fn members(&mut self, pk: i64, limit: usize) -> Result<Vec<String>, StoreError> {
        self.0.borrow_mut().members(pk, limit)
    }
    fn message_exists(&mut self, pk: i64, id: &str) -> Result<bool, StoreError> {
        self.0.borrow_mut().message_exists(pk, id)
    }
    fn stored_bytes_through(&mut self, pk: i64, through_seq: u64) -> Result<u64, StoreError> {
        self.0.borrow_mut().stored_bytes_through(pk, through_seq)
    }
    fn recent_ids(&mut self, pk: i64, after_seq: u64, limit: usize) -> Result<Vec<(u64, String)>, StoreError> {
        self.0.borrow_mut().recent_ids(pk, after_seq, limit)
    }
    fn outbox_batch(
        &mut self,
        project_id: &str,
        after_seq: u64,
        max_count: usize,
        max_bytes: usize,
    ) -> Result<Vec<OutboxRow>, StoreError> {
        self.0.borrow_mut().outbox_batch(project_id, after_seq, max_count, max_bytes)
    }
}

impl BatchWriter for SharedStore {
    fn apply(&mut self, batch: &Batch) -> Result<(), StoreError> {
        self.0.borrow_mut().apply(batch)
    }
}

fn message_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<MessageRow> {
    Ok(MessageRow {
        room_pk: row.get(0)?,
        seq: row.get::<_, i64>(1)? as u64,
        id: row.get(2)?,
        user_id: row.get(3)?,
        content: row.get(4)?,
        content_type: row.get(5)?,
        attachments: row.get(6)?,
        created_at: row.get(7)?,
        edited_at: row.get(8)?,
        deleted: row.get::<_, i64>(9)? != 0,
        temp_id: row.get(10)?,
    })
}

const MESSAGE_COLUMNS: &str =
    "room_pk, seq, id, user_id, content, content_type, attachments, created_at, edited_at, deleted, temp_id";

impl Store for SqliteStore {
    fn load(&mut self) -> Result<Snapshot, StoreError> {
        let projects = self.rows(
            "load projects",
            "SELECT id, name, api_key, created_at, require_tokens, allowed_origins, auto_create_rooms, \
             webhook_url, webhook_events, access_hook_url FROM projects ORDER BY created_at, id",
            |r| {
                let origins: String = r.get(5)?;
                Ok(ProjectRow {
                    id: r.get(0)?,
                    name: r.get(1)?,
                    api_key: r.get(2)?,
                    created_at: r.get(3)?,
                    require_tokens: r.get::<_, i64>(4)? != 0,
                    allowed_origins: serde_json::from_str(&origins).unwrap_or_default(),
                    auto_create_rooms: r.get::<_, i64>(6)? != 0,
                    webhook_url: r.get(7)?,
                    webhook_events: r.get::<_, Option<String>>(8)?.and_then(|e| serde_json::from_str(&e).ok()),
                    access_hook_url: r.get(9)?,
                })
            },
        )?;
        let rooms = self.rows(
            "load rooms",
            "SELECT r.pk, r.id, r.project_id, r.name, r.kind, r.created_at,
                    COALESCE(m.last_seq, 0), COALESCE(m.first_seq, 0), COALESCE(m.bytes, 0),
                    (SELECT COUNT(*) FROM room_members rm WHERE rm.room_pk = r.pk)
             FROM rooms r LEFT JOIN (
                 SELECT room_pk, MAX(seq) AS last_seq, MIN(seq) AS first_seq, SUM(size) AS bytes
                 FROM messages INDEXED BY messages_sizes GROUP BY room_pk
             ) m ON m.room_pk = r.pk
             ORDER BY r.pk",
            |r| {
                let kind: String = r.get(4)?;
                Ok(RoomRow {
                    pk: r.get(0)?,
                    id: r.get(1)?,
                    project_id: r.get(2)?,
                    name: r.get(3)?,
                    kind: RoomKind::parse(&kind).unwrap_or(RoomKind::Private),
                    created_at: r.get(5)?,
                    members: Vec::new(),
                    last_seq: r.get::<_, i64>(6)? as u64,
                    first_seq: r.get::<_, i64>(7)? as u64,
                    stored_bytes: r.get::<_, i64>(8)?.max(0) as u64,
                    member_count: r.get::<_, i64>(9)?.max(0) as usize,
                })
            },
        )?;
        let resumables = self.rows(
            "load resumable sessions",
            "SELECT id, project_id, user_id, rooms, expires_at FROM resumable_sessions",
            |r| {
                let rooms: String = r.get(3)?;
                Ok(ResumableRow {
                    id: r.get(0)?,
                    project_id: r.get(1)?,
                    user_id: r.get(2)?,
                    rooms: serde_json::from_str(&rooms).unwrap_or_default(),
                    expires_at: r.get(4)?,
                })
            },
        )?;
        let backlog = self.rows(
            "load the webhook outbox",
            "SELECT project_id, COUNT(*), MAX(seq) FROM outbox GROUP BY project_id",
            |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?.max(0) as u64, r.get::<_, i64>(2)?.max(0) as u64)),
        )?;
        let last_outbox_seq = backlog.iter().map(|(_, _, max_seq)| *max_seq).max().unwrap_or(0);
        let outbox = backlog.into_iter().map(|(project_id, count, _)| OutboxBacklog { project_id, count }).collect();
        let last_message_id = self
            .conn
            .query_row("SELECT MAX(id) FROM messages INDEXED BY messages_by_id", [], |r| r.get(0))
            .map_err(err("load the last message id"))?;
        Ok(Snapshot { projects, rooms, resumables, last_message_id, outbox, last_outbox_seq })
    }

    fn is_member(&mut self, pk: i64, user: &str) -> Result<bool, StoreError> {
        self.conn
            .prepare_cached("SELECT 1 FROM room_members WHERE room_pk = ?1 AND user_id = ?2")
            .and_then(|mut s| s.exists(params![pk, user]))
            .map_err(err("read membership"))
    }

    fn members(&mut self, pk: i64, limit: usize) -> Result<Vec<String>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT user_id FROM room_members WHERE room_pk = ?1 ORDER BY user_id LIMIT ?2")
            .map_err(err("read members"))?;
        let limit = limit.min(i64::MAX as usize) as i64;
        let rows = stmt.query_map(params![pk, limit], |r| r.get(0)).map_err(err("read members"))?;
        rows.collect::<Result<Vec<String>, _>>().map_err(err("read members"))
    }

    fn find_temp_id(&mut self, pk: i64, user: &str, temp_id: &str) -> Result<Option<(String, u64)>, StoreError> {
        self.conn
            .prepare_cached("SELECT id, seq FROM messages WHERE room_pk = ?1 AND user_id = ?2 AND temp_id = ?3")
            .and_then(|mut s| {
                s.query_row(params![pk, user, temp_id], |r| Ok((r.get(0)?, r.get::<_, i64>(1)? as u64))).optional()
            })
            .map_err(err("find tempId"))
    }

    fn message(&mut self, pk: i64, id: &str) -> Result<Option<MessageRow>, StoreError> {
        self.conn
            .prepare_cached(&format!("SELECT {MESSAGE_COLUMNS} FROM messages WHERE id = ?1 AND room_pk = ?2"))
            .and_then(|mut s| s.query_row(params![id, pk], message_from_row).optional())
            .map_err(err("read message"))
    }

    fn message_exists(&mut self, pk: i64, id: &str) -> Result<bool, StoreError> {
        // Answered from the id index alone (it carries the primary key), so
        // no message content is read.
        self.conn
            .prepare_cached("SELECT 1 FROM messages INDEXED BY messages_by_id WHERE id = ?1 AND room_pk = ?2")
            .and_then(|mut s| s.exists(params![id, pk]))
            .map_err(err("read message id"))
    }

    fn has_receipt(&mut self, message_id: &str, user_id: &str) -> Result<bool, StoreError> {
        self.conn
            .prepare_cached("SELECT 1 FROM receipts WHERE message_id = ?1 AND user_id = ?2")
            .and_then(|mut s| s.query_row(params![message_id, user_id], |_| Ok(())).optional())
            .map(|found| found.is_some())
            .map_err(err("read receipt"))
    }

    fn stored_bytes_through(&mut self, pk: i64, through_seq: u64) -> Result<u64, StoreError> {
        let through = through_seq.min(i64::MAX as u64) as i64;
        self.conn
            .prepare_cached(
                "SELECT COALESCE(SUM(size), 0) FROM messages INDEXED BY messages_sizes WHERE room_pk = ?1 AND seq <= ?2",
            )
            .and_then(|mut s| s.query_row(params![pk, through], |r| r.get::<_, i64>(0)))
            .map(|bytes| bytes.max(0) as u64)
            .map_err(err("measure retention"))
    }

    fn receipts(&mut self, pk: i64, message_id: &str) -> Result<Vec<(String, i64)>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT user_id, read_at FROM receipts WHERE message_id = ?1 AND room_pk = ?2 ORDER BY read_at, user_id",
            )
            .map_err(err("read receipts"))?;
        let rows =
            stmt.query_map(params![message_id, pk], |r| Ok((r.get(0)?, r.get(1)?))).map_err(err("read receipts"))?;
        rows.collect::<Result<Vec<_>, _>>().map_err(err("read receipts"))
    }

    fn outbox_batch(
        &mut self,
        project_id: &str,
        after_seq: u64,
        max_count: usize,
        max_bytes: usize,
    ) -> Result<Vec<OutboxRow>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT seq, created_at, body FROM outbox WHERE project_id = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3",
            )
            .map_err(err("read webhook events"))?;
        let after = after_seq.min(i64::MAX as u64) as i64;
        let mut rows = stmt
            .query(params![project_id, after, max_count.min(i64::MAX as usize) as i64])
            .map_err(err("read webhook events"))?;
        let (mut out, mut bytes) = (Vec::new(), 0usize);
        while let Some(row) = rows.next().map_err(err("read webhook events"))? {
            let body: String = row.get(2).map_err(err("read webhook events"))?;
            if !out.is_empty() && bytes + body.len() > max_bytes {
                break;
            }
            bytes += body.len();
            out.push(OutboxRow {
                project_id: project_id.to_string(),
                seq: row.get::<_, i64>(0).map_err(err("read webhook events"))?.max(0) as u64,
                created_at: row.get(1).map_err(err("read webhook events"))?,
                body,
            });
        }
        Ok(out)
    }

    fn recent_ids(&mut self, pk: i64, after_seq: u64, limit: usize) -> Result<Vec<(u64, String)>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT seq, id FROM messages WHERE room_pk = ?1 AND seq > ?2 ORDER BY seq DESC LIMIT ?3")
            .map_err(err("read recent ids"))?;
        let after = after_seq.min(i64::MAX as u64) as i64;
        let rows = stmt
            .query_map(params![pk, after, limit.min(i64::MAX as usize) as i64], |r| {
                Ok((r.get::<_, i64>(0)?.max(0) as u64, r.get::<_, String>(1)?))
            })
            .map_err(err("read recent ids"))?;
        rows.collect::<Result<Vec<_>, _>>().map_err(err("read recent ids"))
    }

    fn history(&mut self, pk: i64, q: &HistoryQuery, budget: ReadBudget) -> Result<HistoryPage, StoreError> {
        let before = q.before.map_or(i64::MAX, |b| b.min(i64::MAX as u64) as i64);
        let after = q.after.map_or(0, |a| a.min(i64::MAX as u64) as i64);
        let limit = q.limit as i64;
        // First the sizes, from the narrow index: the page is cut to the
        // budget before any content is read.
        let sizes_sql = if q.after.is_some() {
            "SELECT seq, size FROM messages INDEXED BY messages_sizes \
             WHERE room_pk = ?1 AND seq > ?2 AND seq < ?3 ORDER BY seq ASC LIMIT ?4"
        } else {
            "SELECT seq, size FROM messages INDEXED BY messages_sizes \
             WHERE room_pk = ?1 AND seq > ?2 AND seq < ?3 ORDER BY seq DESC LIMIT ?4"
        };
        let mut page = HistoryPage::default();
        let (mut low, mut high, mut counted) = (u64::MAX, 0u64, 0usize);
        {
            let mut stmt = self.conn.prepare_cached(sizes_sql).map_err(err("measure history"))?;
            let mut rows = stmt.query(params![pk, after, before, limit]).map_err(err("measure history"))?;
            while let Some(row) = rows.next().map_err(err("measure history"))? {
                let seq = row.get::<_, i64>(0).map_err(err("measure history"))? as u64;
                let size = row.get::<_, i64>(1).map_err(err("measure history"))?.max(0) as usize + budget.per_row;
                if page.bytes + size > budget.max_bytes && (counted > 0 || budget.whole) {
                    page.cut = true;
                    break;
                }
                page.bytes += size;
                counted += 1;
                low = low.min(seq);
                high = high.max(seq);
            }
        }
        if counted == 0 || (page.cut && budget.whole) {
            // Nothing to read: an empty range, or a whole answer that does not fit.
            page.bytes = 0;
            return Ok(page);
        }
        let mut stmt = self
            .conn
            .prepare_cached(&format!(
                "SELECT {MESSAGE_COLUMNS} FROM messages WHERE room_pk = ?1 AND seq >= ?2 AND seq <= ?3 ORDER BY seq ASC"
            ))
            .map_err(err("read history"))?;
        let rows =
            stmt.query_map(params![pk, low as i64, high as i64], message_from_row).map_err(err("read history"))?;
        page.rows = rows.collect::<Result<Vec<_>, _>>().map_err(err("read history"))?;
        Ok(page)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// Room enough for any test page, one row at least.
    const ANY: ReadBudget = ReadBudget { max_bytes: usize::MAX / 2, per_row: 0, whole: false };

    fn store() -> SqliteStore {
        SqliteStore::open(":memory:", Durability::Normal).unwrap()
    }

    pub(super) fn message(pk: i64, seq: u64, temp: Option<&str>) -> MessageRow {
        MessageRow {
            room_pk: pk,
            seq,
            id: format!("m{seq}"),
            user_id: "u".into(),
            content: format!("c{seq}"),
            content_type: "text/plain".into(),
            attachments: "[]".into(),
            created_at: seq as i64,
            edited_at: None,
            deleted: false,
            temp_id: temp.map(str::to_string),
        }
    }

    pub(super) fn batch(id: u64, ops: Vec<WriteOp>) -> Batch {
        let bytes = ops.iter().map(WriteOp::size).sum();
        Batch { id, epoch: 0, ops, bytes }
    }

    pub(super) fn insert(m: MessageRow) -> WriteOp {
        WriteOp::InsertMessage(Arc::new(m))
    }

    /// A project `p_1` with room pk 1, committed.
    pub(super) fn room_with(s: &mut SqliteStore, kind: RoomKind, members: Vec<String>) -> i64 {
        let p = ProjectRow {
            id: "p_1".into(),
            name: "n".into(),
            api_key: "k".into(),
            created_at: 0,
            require_tokens: false,
            allowed_origins: Vec::new(),
            auto_create_rooms: false,
            webhook_url: None,
            webhook_events: None,
            access_hook_url: None,
        };
        let r = RoomRow {
            pk: 1,
            id: "r_1".into(),
            project_id: "p_1".into(),
            name: "general".into(),
            kind,
            created_at: 0,
            member_count: members.len(),
            members,
            last_seq: 0,
            first_seq: 0,
            stored_bytes: 0,
        };
        s.apply(&batch(1, vec![WriteOp::InsertProject(p), WriteOp::InsertRoom(r)])).unwrap();
        1
    }

    fn room(s: &mut SqliteStore) -> i64 {
        room_with(s, RoomKind::Private, vec!["a".into(), "b".into()])
    }

    fn seqs(s: &mut SqliteStore, pk: i64, q: HistoryQuery) -> Vec<u64> {
        s.history(pk, &q, ANY).unwrap().rows.iter().map(|m| m.seq).collect()
    }

    const ALL: HistoryQuery = HistoryQuery { before: None, after: None, limit: 100 };

    #[test]
    fn a_failed_batch_in_a_group_leaves_nothing_and_the_batches_before_it_commit() {
        let mut s = store();
        let pk = room(&mut s);
        let first = batch(2, vec![insert(message(pk, 1, None))]);
        // Its second statement fails (duplicate room and seq): its first is undone too.
        let failing = batch(3, vec![insert(message(pk, 2, None)), insert(message(pk, 1, None))]);
        let after = batch(4, vec![insert(message(pk, 3, None))]);
        let results = s.apply_group(&[&first, &failing, &after]);
        assert!(results[0].is_ok(), "{results:?}");
        assert!(results[1].is_err() && results[2].is_err(), "{results:?}");
        assert_eq!(seqs(&mut s, pk, ALL), vec![1], "only the batch before the failure is stored");
        assert!(!s.in_transaction());
    }

    #[test]
    fn migrations_record_the_schema_version() {
        let s = store();
        assert_eq!(s.schema_version().unwrap(), MIGRATIONS.len());
    }

    #[test]
    fn history_pages_by_seq() {
        let mut s = store();
        let pk = room(&mut s);
        let ops = (1..=10).map(|seq| insert(message(pk, seq, None))).collect();
        s.apply(&batch(2, ops)).unwrap();
        assert_eq!(seqs(&mut s, pk, HistoryQuery { before: None, after: None, limit: 3 }), vec![8, 9, 10]);
        assert_eq!(seqs(&mut s, pk, HistoryQuery { before: Some(5), after: None, limit: 3 }), vec![2, 3, 4]);
        assert_eq!(seqs(&mut s, pk, HistoryQuery { before: None, after: Some(5), limit: 3 }), vec![6, 7, 8]);
        assert_eq!(seqs(&mut s, pk, HistoryQuery { before: Some(8), after: Some(5), limit: 10 }), vec![6, 7]);
        assert_eq!(s.last_seq(pk).unwrap(), 10);
    }

    #[test]
    fn temp_ids_receipts_and_snapshot() {
        let mut s = store();
        let pk = room(&mut s);
        s.apply(&batch(2, vec![insert(message(pk, 1, Some("t1")))])).unwrap();
        assert_eq!(s.find_temp_id(pk, "u", "t1").unwrap(), Some(("m1".into(), 1)));
        let dup = s.apply(&batch(3, vec![insert(message(pk, 2, Some("t1")))]));
        assert!(dup.is_err(), "tempId is unique per room and user");
        let receipts = |ids: &[&str], at| WriteOp::InsertReceipts {
            room_pk: pk,
            message_ids: ids.iter().map(|s| s.to_string()).collect(),
            user_id: "a".into(),
            read_at: at,
        };
        s.apply(&batch(4, vec![receipts(&["m1"], 5), receipts(&["m1"], 6)])).unwrap();
        assert_eq!(s.receipts(pk, "m1").unwrap(), vec![("a".to_string(), 5)], "receipts are idempotent");
        assert!(s.has_receipt("m1", "a").unwrap());
        assert!(!s.has_receipt("m1", "b").unwrap());
        let mut project = s.load().unwrap().projects.remove(0);
        project.require_tokens = true;
        project.allowed_origins = vec!["https://a.example".into()];
        s.apply(&batch(5, vec![WriteOp::UpdateProject(project.clone())])).unwrap();
        let snap = s.load().unwrap();
        assert_eq!(snap.projects, vec![project]);
        assert_eq!(snap.rooms[0].member_count, 2);
        assert_eq!(s.members(pk, 10).unwrap(), vec!["a".to_string(), "b".to_string()]);
        assert_eq!(s.members(pk, 1).unwrap(), vec!["a".to_string()]);
        assert_eq!(snap.rooms[0].last_seq, 1);
        s.apply(&batch(6, vec![WriteOp::DeleteRoom(pk)])).unwrap();
        assert!(s.load().unwrap().rooms.is_empty());
        assert!(s.message(pk, "m1").unwrap().is_none());
    }

    #[test]
    fn the_read_connection_sees_committed_rows_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pair.db");
        let (mut writer, mut reader) =
            SqliteStore::open_pair(path.to_str().unwrap(), Durability::Normal, None).unwrap();
        let pk = room_with(&mut writer, RoomKind::Public, Vec::new());
        writer.begin().unwrap();
        writer.apply_in_transaction(&batch(2, vec![insert(message(pk, 1, Some("t")))])).unwrap();
        assert_eq!(seqs(&mut reader, pk, ALL), Vec::<u64>::new(), "uncommitted rows are invisible");
        assert_eq!(reader.find_temp_id(pk, "u", "t").unwrap(), None);
        writer.finish().unwrap();
        assert_eq!(seqs(&mut reader, pk, ALL), vec![1], "committed rows are seen at once");
        assert!(reader.apply(&batch(3, vec![insert(message(pk, 2, None))])).is_err(), "the reader cannot write");
    }

    #[test]
    fn the_checkpoint_thread_copies_the_wal_into_the_database_instead_of_the_writer() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ckpt.db");
        let (mut writer, _reader) = SqliteStore::open_pair(path.to_str().unwrap(), Durability::Normal, None).unwrap();
        let checkpointer = Checkpointer::spawn(&writer, std::time::Duration::from_millis(5)).unwrap();
        assert!(checkpointer.is_some(), "a WAL database gets a checkpoint thread");
        let auto: i64 = writer.conn.query_row("PRAGMA wal_autocheckpoint", [], |r| r.get(0)).unwrap();
        assert_eq!(auto, 0, "the writer no longer checkpoints inside its commits");
        let before = std::fs::metadata(&path).unwrap().len();
        let pk = room_with(&mut writer, RoomKind::Public, Vec::new());
        let big = "y".repeat(4000);
        for seq in 1..=50u64 {
            writer
                .apply(&batch(seq + 1, vec![insert(MessageRow { content: big.clone(), ..message(pk, seq, None) })]))
                .unwrap();
        }
        // Only a checkpoint writes to the database file itself.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::fs::metadata(&path).unwrap().len() < before + 100_000 {
            assert!(std::time::Instant::now() < deadline, "no checkpoint within 10 s");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        drop(checkpointer);
    }

    #[test]
    fn memory_pairs_share_one_temporary_file_removed_with_the_writer() {
        let (mut writer, mut reader) = SqliteStore::open_pair(":memory:", Durability::Normal, None).unwrap();
        let pk = room_with(&mut writer, RoomKind::Public, Vec::new());
        writer.apply(&batch(2, vec![insert(message(pk, 1, None))])).unwrap();
        assert_eq!(seqs(&mut reader, pk, ALL), vec![1]);
        let file = writer.remove_on_drop.clone().unwrap();
        drop(reader);
        drop(writer);
        assert!(!file.exists(), "{} is left behind", file.display());
    }
}

#[cfg(test)]
mod full_disk_tests {
    use super::tests::{batch, insert, message};
    use super::*;

    #[test]
    fn a_full_database_fails_the_batch_and_reads_go_on() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("full.db");
        let mut s = SqliteStore::open_with(path.to_str().unwrap(), Durability::Normal, Some(40)).unwrap();
        let pk = super::tests::room_with(&mut s, RoomKind::Public, Vec::new());
        let big = "x".repeat(3000);
        let mut failed = false;
        for seq in 1..200u64 {
            let m = MessageRow { content: big.clone(), ..message(pk, seq, None) };
            if s.apply(&batch(seq + 1, vec![insert(m)])).is_err() {
                failed = true;
                assert!(s.last_seq(pk).unwrap() < seq, "the failed write is not stored");
                assert!(!s.in_transaction());
                break;
            }
        }
        assert!(failed, "40 pages cannot hold 200 messages of 3 KB");
        // Reads go on.
        let any = ReadBudget { max_bytes: 1 << 20, per_row: 0, whole: false };
        assert!(s.history(pk, &HistoryQuery { before: None, after: None, limit: 10 }, any).is_ok());
    }
}
