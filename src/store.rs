//! SQLite persistence: numbered migrations, WAL, one connection owned by the
//! loop, cached statements, and one transaction per loop iteration.
//!
//! The first write of an iteration opens a transaction; [`SqliteStore::commit`]
//! ends it. Reads in between see the iteration's own writes, so the core can
//! check a `tempId` it stored a moment ago. A failed statement leaves the
//! transaction usable: only that request is refused.

use rusqlite::{params, Connection, OptionalExtension};

use crate::core::{
    HistoryPage, HistoryQuery, MessageRow, ProjectRow, ReadBudget, RoomKind, RoomRow, Snapshot, Store, StoreError,
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

/// The SQLite-backed [`Store`].
pub struct SqliteStore {
    conn: Connection,
    in_transaction: bool,
    /// SQLite rolled the iteration's transaction back on its own (disk full,
    /// I/O error): its earlier writes are gone, so its commit must fail.
    poisoned: bool,
}

fn err(context: &'static str) -> impl Fn(rusqlite::Error) -> StoreError {
    move |e| StoreError { context, detail: e.to_string() }
}

impl SqliteStore {
    /// Opens (or creates) the database and brings its schema up to date.
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
        let mut store = SqliteStore { conn, in_transaction: false, poisoned: false };
        store.migrate()?;
        Ok(store)
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

    /// Opens the iteration's transaction before its first write.
    fn begin(&mut self) -> Result<(), StoreError> {
        if !self.in_transaction {
            self.conn.execute_batch("BEGIN").map_err(err("begin transaction"))?;
            self.in_transaction = true;
        }
        Ok(())
    }

    /// Runs a write made of several statements as one unit inside the
    /// iteration's transaction (a SAVEPOINT): when a later statement fails,
    /// the earlier ones are undone too, so a refused request leaves nothing
    /// behind to be committed with the rest of the iteration.
    fn atomic<T>(&mut self, body: impl FnOnce(&mut Self) -> Result<T, StoreError>) -> Result<T, StoreError> {
        self.begin()?;
        self.conn.execute_batch("SAVEPOINT request").map_err(err("open savepoint"))?;
        let result = body(self);
        if self.poisoned || self.conn.is_autocommit() {
            // SQLite abandoned the whole transaction; the savepoint went with it.
            return result;
        }
        let end = if result.is_ok() { "RELEASE request" } else { "ROLLBACK TO request; RELEASE request" };
        if let Err(e) = self.conn.execute_batch(end) {
            log::error!("cannot end a savepoint ({e}); abandoning the iteration's transaction");
            self.poisoned = true;
        }
        result
    }

    /// Runs one write inside the iteration's transaction, opening it before
    /// the iteration's first write. After a failed statement it checks whether
    /// SQLite abandoned the whole transaction (it may on SQLITE_FULL or
    /// SQLITE_IOERR); if so the iteration is poisoned so that its commit fails
    /// and acknowledges nothing.
    fn write<T>(
        &mut self,
        context: &'static str,
        sql: &str,
        run: impl FnOnce(&mut rusqlite::CachedStatement<'_>) -> rusqlite::Result<T>,
    ) -> Result<T, StoreError> {
        self.begin()?;
        let result = self.conn.prepare_cached(sql).and_then(|mut stmt| run(&mut stmt));
        if result.is_err() && self.conn.is_autocommit() {
            log::error!("SQLite rolled back the iteration's transaction after a failed {context}");
            self.in_transaction = false;
            self.poisoned = true;
        }
        result.map_err(err(context))
    }

    /// Rolls back the open transaction, as a failed COMMIT does (tests only).
    #[cfg(test)]
    pub(crate) fn rollback_for_tests(&mut self) -> Result<(), StoreError> {
        if std::mem::take(&mut self.in_transaction) {
            self.conn.execute_batch("ROLLBACK").map_err(err("rollback"))?;
        }
        self.poisoned = false;
        Ok(())
    }

    /// The stored schema version.
    pub fn schema_version(&self) -> Result<usize, StoreError> {
        self.conn
            .query_row("PRAGMA user_version", [], |row| row.get::<_, i64>(0))
            .map(|v| v.max(0) as usize)
            .map_err(err("read schema version"))
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
        let mut snapshot = Snapshot::default();
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT id, name, api_key, created_at, require_tokens, allowed_origins FROM projects ORDER BY created_at, id",
            )
            .map_err(err("load projects"))?;
        let rows = stmt
            .query_map([], |r| {
                let origins: String = r.get(5)?;
                Ok(ProjectRow {
                    id: r.get(0)?,
                    name: r.get(1)?,
                    api_key: r.get(2)?,
                    created_at: r.get(3)?,
                    require_tokens: r.get::<_, i64>(4)? != 0,
                    allowed_origins: serde_json::from_str(&origins).unwrap_or_default(),
                })
            })
            .map_err(err("load projects"))?;
        for row in rows {
            snapshot.projects.push(row.map_err(err("load projects"))?);
        }
        drop(stmt);
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT r.pk, r.id, r.project_id, r.name, r.kind, r.created_at,
                        COALESCE(m.last_seq, 0), COALESCE(m.first_seq, 0), COALESCE(m.bytes, 0),
                        (SELECT COUNT(*) FROM room_members rm WHERE rm.room_pk = r.pk)
                 FROM rooms r LEFT JOIN (
                     SELECT room_pk, MAX(seq) AS last_seq, MIN(seq) AS first_seq, SUM(size) AS bytes
                     FROM messages INDEXED BY messages_sizes GROUP BY room_pk
                 ) m ON m.room_pk = r.pk
                 ORDER BY r.pk",
            )
            .map_err(err("load rooms"))?;
        let rows = stmt
            .query_map([], |r| {
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
            })
            .map_err(err("load rooms"))?;
        for row in rows {
            snapshot.rooms.push(row.map_err(err("load rooms"))?);
        }
        Ok(snapshot)
    }

    fn insert_project(&mut self, p: &ProjectRow) -> Result<(), StoreError> {
        let sql = "INSERT INTO projects (id, name, api_key, created_at) VALUES (?1, ?2, ?3, ?4)";
        self.write("insert project", sql, |s| s.execute(params![p.id, p.name, p.api_key, p.created_at]))?;
        Ok(())
    }

    fn update_project(&mut self, p: &ProjectRow) -> Result<(), StoreError> {
        let origins = serde_json::to_string(&p.allowed_origins).unwrap_or_else(|_| "[]".into());
        let sql = "UPDATE projects SET name = ?1, require_tokens = ?2, allowed_origins = ?3 WHERE id = ?4";
        self.write("update project", sql, |s| s.execute(params![p.name, p.require_tokens as i64, origins, p.id]))?;
        Ok(())
    }

    fn insert_room(&mut self, r: &RoomRow) -> Result<i64, StoreError> {
        let sql = "INSERT INTO rooms (id, project_id, name, kind, created_at) VALUES (?1, ?2, ?3, ?4, ?5)";
        self.atomic(|store| {
            store.write("insert room", sql, |s| {
                s.execute(params![r.id, r.project_id, r.name, r.kind.as_str(), r.created_at])
            })?;
            let pk = store.conn.last_insert_rowid();
            for user in &r.members {
                store.add_member(pk, user)?;
            }
            Ok(pk)
        })
    }

    fn delete_room(&mut self, pk: i64) -> Result<(), StoreError> {
        self.atomic(|store| {
            for sql in [
                "DELETE FROM receipts WHERE room_pk = ?1",
                "DELETE FROM messages WHERE room_pk = ?1",
                "DELETE FROM room_members WHERE room_pk = ?1",
                "DELETE FROM rooms WHERE pk = ?1",
            ] {
                store.write("delete room", sql, |s| s.execute([pk]))?;
            }
            Ok(())
        })
    }

    fn add_member(&mut self, pk: i64, user: &str) -> Result<bool, StoreError> {
        let sql = "INSERT OR IGNORE INTO room_members (room_pk, user_id) VALUES (?1, ?2)";
        Ok(self.write("add member", sql, |s| s.execute(params![pk, user]))? == 1)
    }

    fn remove_member(&mut self, pk: i64, user: &str) -> Result<bool, StoreError> {
        let sql = "DELETE FROM room_members WHERE room_pk = ?1 AND user_id = ?2";
        Ok(self.write("remove member", sql, |s| s.execute(params![pk, user]))? == 1)
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

    fn last_seq(&mut self, pk: i64) -> Result<u64, StoreError> {
        self.conn
            .prepare_cached("SELECT COALESCE(MAX(seq), 0) FROM messages WHERE room_pk = ?1")
            .and_then(|mut s| s.query_row([pk], |r| r.get::<_, i64>(0)))
            .map(|n| n as u64)
            .map_err(err("read last seq"))
    }

    fn insert_message(&mut self, m: &MessageRow) -> Result<(), StoreError> {
        let sql = "INSERT INTO messages (room_pk, seq, id, user_id, content, content_type, attachments, created_at, \
                   edited_at, deleted, temp_id, size) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)";
        self.write("insert message", sql, |s| {
            s.execute(params![
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
            ])
        })?;
        Ok(())
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

    fn update_message(&mut self, m: &MessageRow) -> Result<(), StoreError> {
        let sql = "UPDATE messages SET content = ?1, attachments = ?2, edited_at = ?3, deleted = ?4, size = ?5 \
                   WHERE room_pk = ?6 AND seq = ?7";
        self.write("update message", sql, |s| {
            s.execute(params![
                m.content,
                m.attachments,
                m.edited_at,
                m.deleted as i64,
                m.stored_size() as i64,
                m.room_pk,
                m.seq as i64
            ])
        })?;
        Ok(())
    }

    fn trim_room(&mut self, pk: i64, through_seq: u64) -> Result<u64, StoreError> {
        let through = through_seq.min(i64::MAX as u64) as i64;
        self.atomic(|store| {
            let bytes: i64 = store
                .conn
                .prepare_cached(
                    "SELECT COALESCE(SUM(size), 0) FROM messages INDEXED BY messages_sizes WHERE room_pk = ?1 AND seq <= ?2",
                )
                .and_then(|mut s| s.query_row(params![pk, through], |r| r.get(0)))
                .map_err(err("measure retention"))?;
            store.write(
                "trim receipts",
                "DELETE FROM receipts WHERE room_pk = ?1 AND message_id IN \
                 (SELECT id FROM messages WHERE room_pk = ?1 AND seq <= ?2)",
                |s| s.execute(params![pk, through]),
            )?;
            store.write("trim messages", "DELETE FROM messages WHERE room_pk = ?1 AND seq <= ?2", |s| {
                s.execute(params![pk, through])
            })?;
            Ok(bytes.max(0) as u64)
        })
    }

    fn insert_receipts(
        &mut self,
        pk: i64,
        message_ids: &[&str],
        user: &str,
        read_at: i64,
    ) -> Result<Vec<bool>, StoreError> {
        let sql = "INSERT OR IGNORE INTO receipts (message_id, user_id, room_pk, read_at) VALUES (?1, ?2, ?3, ?4)";
        self.atomic(|store| {
            let mut fresh = Vec::with_capacity(message_ids.len());
            for id in message_ids {
                fresh.push(store.write("insert receipt", sql, |s| s.execute(params![id, user, pk, read_at]))? == 1);
            }
            Ok(fresh)
        })
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

    fn commit(&mut self) -> Result<(), StoreError> {
        if std::mem::take(&mut self.poisoned) {
            if std::mem::take(&mut self.in_transaction) {
                let _ = self.conn.execute_batch("ROLLBACK");
            }
            return Err(StoreError {
                context: "commit",
                detail: "SQLite rolled the transaction back after an earlier failed write".into(),
            });
        }
        if !self.in_transaction {
            return Ok(());
        }
        self.in_transaction = false;
        if let Err(e) = self.conn.execute_batch("COMMIT") {
            let _ = self.conn.execute_batch("ROLLBACK");
            return Err(err("commit")(e));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Room enough for any test page, one row at least.
    const ANY: ReadBudget = ReadBudget { max_bytes: usize::MAX / 2, per_row: 0, whole: false };

    fn store() -> SqliteStore {
        SqliteStore::open(":memory:", Durability::Normal).unwrap()
    }

    fn message(pk: i64, seq: u64, temp: Option<&str>) -> MessageRow {
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

    /// A project `p_1` with one room; returns the room's primary key.
    pub(super) fn room_with(s: &mut SqliteStore, kind: RoomKind, members: Vec<String>) -> i64 {
        let p = ProjectRow {
            id: "p_1".into(),
            name: "n".into(),
            api_key: "k".into(),
            created_at: 0,
            require_tokens: false,
            allowed_origins: Vec::new(),
        };
        s.insert_project(&p).unwrap();
        let r = RoomRow {
            pk: 0,
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
        s.insert_room(&r).unwrap()
    }

    fn room(s: &mut SqliteStore) -> i64 {
        room_with(s, RoomKind::Private, vec!["a".into(), "b".into()])
    }

    #[test]
    fn a_failed_multi_statement_write_leaves_nothing_in_the_iteration() {
        let mut s = store();
        let pk = room(&mut s);
        s.insert_message(&message(pk, 1, None)).unwrap();
        // A unit whose second statement fails: its first is undone, while
        // the iteration's other writes (before and after) commit.
        let failed: Result<(), StoreError> = s.atomic(|st| {
            st.insert_message(&message(pk, 2, None))?;
            st.insert_message(&message(pk, 1, None)) // duplicate (room, seq)
        });
        assert!(failed.is_err());
        s.insert_message(&message(pk, 3, None)).unwrap();
        s.commit().unwrap();
        let seqs: Vec<u64> = s
            .history(pk, &HistoryQuery { before: None, after: None, limit: 10 }, ANY)
            .unwrap()
            .rows
            .iter()
            .map(|m| m.seq)
            .collect();
        assert_eq!(seqs, vec![1, 3]);
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
        for seq in 1..=10 {
            s.insert_message(&message(pk, seq, None)).unwrap();
        }
        s.commit().unwrap();
        let seqs = |q: HistoryQuery, s: &mut SqliteStore| -> Vec<u64> {
            s.history(pk, &q, ANY).unwrap().rows.iter().map(|m| m.seq).collect()
        };
        assert_eq!(seqs(HistoryQuery { before: None, after: None, limit: 3 }, &mut s), vec![8, 9, 10]);
        assert_eq!(seqs(HistoryQuery { before: Some(5), after: None, limit: 3 }, &mut s), vec![2, 3, 4]);
        assert_eq!(seqs(HistoryQuery { before: None, after: Some(5), limit: 3 }, &mut s), vec![6, 7, 8]);
        assert_eq!(seqs(HistoryQuery { before: Some(8), after: Some(5), limit: 10 }, &mut s), vec![6, 7]);
        assert_eq!(s.last_seq(pk).unwrap(), 10);
    }

    #[test]
    fn temp_ids_receipts_and_snapshot() {
        let mut s = store();
        let pk = room(&mut s);
        s.insert_message(&message(pk, 1, Some("t1"))).unwrap();
        // Read-your-writes inside the iteration's transaction.
        assert_eq!(s.find_temp_id(pk, "u", "t1").unwrap(), Some(("m1".into(), 1)));
        assert!(s.insert_message(&message(pk, 2, Some("t1"))).is_err(), "tempId is unique per room and user");
        assert_eq!(s.insert_receipts(pk, &["m1"], "a", 5).unwrap(), [true]);
        assert_eq!(s.insert_receipts(pk, &["m1", "m2"], "a", 6).unwrap(), [false, true]);
        s.commit().unwrap();
        assert_eq!(s.receipts(pk, "m1").unwrap(), vec![("a".to_string(), 5)]);
        let mut project = s.load().unwrap().projects.remove(0);
        project.require_tokens = true;
        project.allowed_origins = vec!["https://a.example".into()];
        s.update_project(&project).unwrap();
        s.commit().unwrap();
        let snap = s.load().unwrap();
        assert_eq!(snap.projects, vec![project]);
        assert_eq!(snap.rooms[0].member_count, 2);
        assert_eq!(s.members(pk, 10).unwrap(), vec!["a".to_string(), "b".to_string()]);
        assert_eq!(s.members(pk, 1).unwrap(), vec!["a".to_string()]);
        assert_eq!(snap.rooms[0].last_seq, 1);
        s.delete_room(pk).unwrap();
        s.commit().unwrap();
        assert!(s.load().unwrap().rooms.is_empty());
        assert!(s.message(pk, "m1").unwrap().is_none());
    }
}

#[cfg(test)]
mod full_disk_tests {
    use super::*;

    #[test]
    fn a_full_database_fails_the_write_and_never_acknowledges_its_iteration() {
        let dir = std::env::temp_dir().join(format!("rh-full-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let path = dir.join("full.db");
        let _ = std::fs::remove_file(&path);
        let mut s = SqliteStore::open_with(path.to_str().unwrap(), Durability::Normal, Some(40)).unwrap();
        let pk = super::tests::room_with(&mut s, RoomKind::Public, Vec::new());
        s.commit().unwrap();
        let big = "x".repeat(3000);
        let mut failed = false;
        for seq in 1..200u64 {
            let m = MessageRow {
                room_pk: pk,
                seq,
                id: format!("m{seq}"),
                user_id: "u".into(),
                content: big.clone(),
                content_type: "text/plain".into(),
                attachments: "[]".into(),
                created_at: 0,
                edited_at: None,
                deleted: false,
                temp_id: None,
            };
            if s.insert_message(&m).is_err() {
                failed = true;
                assert!(s.commit().is_err() || s.last_seq(pk).unwrap() < seq, "the failed write is not stored");
                break;
            }
            s.commit().unwrap();
        }
        assert!(failed, "40 pages cannot hold 200 messages of 3 KB");
        // Reads go on.
        let any = ReadBudget { max_bytes: 1 << 20, per_row: 0, whole: false };
        assert!(s.history(pk, &HistoryQuery { before: None, after: None, limit: 10 }, any).is_ok());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
