//! Configuration: every flag of the contract with its environment twin, parsed
//! and validated once at start-up so the rest of the program trusts its values.
//!
//! A flag on the command line wins over its environment variable, which wins over
//! the default. Every limit has a flag, so an operator can size the hub to the box.

use std::fmt;
use std::time::Duration;

/// Everything the hub needs to run; built by [`Config::from_args`].
#[derive(Debug, Clone)]
pub struct Config {
    /// Address to bind. Default `0.0.0.0`.
    pub host: String,
    /// TCP port. Default 3009; 0 picks a free port (the ready line says which).
    pub port: u16,
    /// SQLite database path. Default `realtimehub.db`; `:memory:` keeps nothing.
    pub db_path: String,
    /// Bearer token guarding project creation, `/stats` and `/metrics`. Unset:
    /// all three are open, and start-up logs a warning.
    pub admin_token: Option<String>,
    /// `Access-Control-Allow-Origin`: `*` or a comma-separated list of origins.
    pub cors_origin: String,
    /// `normal` (default): commits survive a crash of the process; a power cut
    /// may lose the last ones. `full`: every commit is fsynced before it is
    /// acknowledged, at a cost in write throughput.
    pub durability: crate::store::Durability,
    /// Diagnostic: cap the database at this many pages (`PRAGMA
    /// max_page_count`), to reproduce a full disk. Unset by default.
    pub db_max_pages: Option<u64>,
    /// Diagnostic: a path whose WebSocket upgrades skip authentication and echo
    /// every message back, on the same connection code path (for the Autobahn
    /// test suite). Off by default; never enable it in production.
    pub echo_path: Option<String>,
    /// Diagnostic: Socket.IO sessions behave as the reference server of the
    /// official Socket.IO protocol test suite (echo events, `/custom`
    /// namespace) and never reach the hub. Off by default; never in production.
    pub socketio_conformance: bool,
    /// How log lines look: human text (default) or one JSON object per line.
    pub log_format: LogFormat,
    /// A PEM file of CA certificates trusted for `https://` backend URLs, in
    /// addition to the system's roots (a private CA). Unset by default.
    pub hook_ca_file: Option<String>,
    /// Every bound on memory, time and size.
    pub limits: Limits,
}

/// The shape of log lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// `[time LEVEL target] message`, for people.
    Text,
    /// `{"ts","level","target","msg","conn"?,"project"?}` per line, for log pipelines.
    Json,
}

/// Bounds on memory, time and size. Each field documents its default.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Most open TCP connections (HTTP and WebSocket). Default 10 000; past it
    /// a new connection is answered 503 and closed.
    pub max_connections: usize,
    /// Most open connections from one peer address. Default 1 000; past it a
    /// new connection is answered 429 and closed.
    pub max_connections_per_ip: usize,
    /// Largest HTTP request head (request line and headers). Default 16 KiB → 431.
    pub max_head_bytes: usize,
    /// Largest HTTP request body. Default 1 MiB → 413.
    pub max_body_bytes: usize,
    /// Largest WebSocket message (and frame). Default 64 KiB → close 1009.
    pub max_message_bytes: usize,
    /// Most frames (fragments) one WebSocket message may be split into.
    /// Default 256; more closes 1009.
    pub max_fragments: u32,
    /// Most bytes queued for one connection that it has not read yet.
    /// Default 1 MiB; past it a WebSocket is closed 1008 "slow consumer" and
    /// an HTTP pipeliner is no longer read. One answer may use half of it.
    pub max_outbound_bytes: usize,
    /// Most bytes queued for all connections together (the sum of what each
    /// may queue under `max_outbound_bytes`). Default 256 MiB, sized for a
    /// small VM: 1 000 connections from one address (the per-address cap) at
    /// 1 MiB each would otherwise hold 1 GiB. Past it, the connections holding
    /// the most unread bytes are closed 1008 first until the new bytes fit.
    pub max_outbound_total_bytes: usize,
    /// Engine.IO heartbeat: how often the hub pings a Socket.IO client.
    /// Default 25 s.
    pub socketio_ping_interval: Duration,
    /// How long a Socket.IO client may take to answer a ping (or, polling,
    /// to come back for its next poll) before its session is closed.
    /// Default 20 s.
    pub socketio_ping_timeout: Duration,
    /// Most Socket.IO sessions open at once (each polling session holds a
    /// queue without a socket). Default 10000; past it the handshake is 503.
    pub max_socketio_sessions: usize,
    /// How long a new Socket.IO session may take to send its `CONNECT`.
    /// Default 45 s (the reference server's `connectTimeout`).
    pub socketio_connect_timeout: Duration,
    /// How long a dropped Socket.IO session may be resumed with its rooms
    /// and missed messages (connection-state recovery), across restarts
    /// too. Default 2 min; 0 turns recovery off.
    pub socketio_recovery_window: Duration,
    /// How long a join waits for the access hook; then `unavailable`. Default 2 s.
    pub hook_timeout: Duration,
    /// Most connections open to backends at once (hooks and webhooks). Default 64.
    pub hook_max_connections: usize,
    /// How long one webhook post may take. Default 10 s.
    pub webhook_timeout: Duration,
    /// Most events in one webhook post. Default 100.
    pub webhook_batch_max_events: usize,
    /// Most bytes of events in one webhook post (one event at least). Default 256 KiB.
    pub webhook_batch_max_bytes: usize,
    /// First retry delay after a failed post, doubled per failure, with jitter. Default 1 s.
    pub webhook_retry_min: Duration,
    /// Longest delay between retries. Default 5 min.
    pub webhook_retry_max: Duration,
    /// Undelivered events older than this are dropped and counted. Default 24 h.
    pub webhook_max_age: Duration,
    /// Most undelivered events per project; past it the oldest are dropped. Default 100 000.
    pub webhook_outbox_max_events: usize,
    /// `user.offline` is sent only when no connection came back within it. Default 5 s.
    pub user_offline_grace: Duration,
    /// Joins of one connection that may wait for the access hook at once. Default 8.
    pub max_pending_joins_per_connection: usize,
    /// Pusher client events (`client-…`) one connection may send per second;
    /// more are refused with Pusher's error 4301. Default 10 (Pusher's own).
    pub pusher_client_events_per_second: u32,
    /// Largest message `content` plus `attachments`. Default 32 KiB → `too_large`.
    pub max_content_bytes: usize,
    /// Client events per second per WebSocket (also the burst). Default 100;
    /// past it `rate_limited`, at twice it for a second close 1008.
    pub max_events_per_second: u32,
    /// Rooms one WebSocket may have joined at once. Default 100.
    pub max_rooms_per_connection: usize,
    /// Read buffer tungstenite allocates per WebSocket. Default 2 KiB: idle
    /// connections stay small, large messages grow it on demand.
    pub ws_read_buffer_bytes: usize,
    /// How long a request (head and body) may take to arrive, from its first
    /// byte (the first request: from the connection's opening). Default 10 s.
    pub header_timeout: Duration,
    /// How long an idle keep-alive HTTP connection is kept, and a client may
    /// leave its answers unread. Default 60 s.
    pub http_idle_timeout: Duration,
    /// A WebSocket that sends nothing for this long is closed; it is pinged at
    /// half of it. Default 60 s.
    pub ws_idle_timeout: Duration,
    /// Server-side `isTyping:false` after the last `true`. Default 10 s.
    pub typing_timeout: Duration,
    /// Most messages replayed on `join` with `since`. Default 1000; more missed
    /// means `recovered:false` and the client pages history.
    pub replay_cap: usize,
    /// Most client events one connection may have handled per loop iteration
    /// before the loop serves others. Default 64.
    pub max_events_per_read: usize,
    /// Time allowed on shutdown to commit what is in flight and flush the
    /// close frames. Default 2 s.
    pub drain_timeout: Duration,
    /// Batches handed to the store thread and not yet committed past which
    /// connections that write are not read (back-pressure). Default 64.
    pub store_max_batches: usize,
    /// Approximate bytes in those batches past which the same happens.
    /// Default 16 MiB.
    pub store_max_bytes: usize,
    /// Diagnostic: the store thread waits this long before each commit, as a
    /// slow disk would (tests of back-pressure and crashes). Default 0.
    pub store_delay: Duration,
    /// History and replay bytes one user (all their WebSockets) may read per
    /// second, also the burst. Default 1 MiB; past it `rate_limited`.
    pub max_read_bytes_per_second: usize,
    /// REST requests one API key may make per second, also the burst.
    /// Default 1000; past it 429.
    pub max_rest_requests_per_second: usize,
    /// History bytes one API key may read per second over REST, also the
    /// burst. Default 4 MiB; past it 429.
    pub max_rest_read_bytes_per_second: usize,
    /// Most message ids in one `read` event. Default 100; more is `bad_request`.
    pub max_ids_per_read: usize,
    /// Projects one address may create per hour while no admin token is set.
    /// Default 20; past it 429.
    pub max_projects_per_ip_per_hour: usize,
    /// Rooms one project may hold. Default 10 000; past it 429.
    pub max_rooms_per_project: usize,
    /// Members one private room may list. Default 10 000; past it 429.
    pub max_members_per_room: usize,
    /// Message bytes one project may store. Default 1 GiB; past it
    /// `too_large` / 413.
    pub max_stored_bytes_per_project: u64,
    /// Keep only the newest this many messages per room (0, the default:
    /// keep all).
    pub retention_messages_per_room: u64,
    /// Longest lifetime a signed token may claim (`exp` minus now). Default
    /// 24 h; a longer one is refused 401.
    pub max_token_lifetime: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 10_000,
            max_connections_per_ip: 1_000,
            max_head_bytes: 16 * 1024,
            max_body_bytes: 1024 * 1024,
            max_message_bytes: 64 * 1024,
            max_fragments: 256,
            max_outbound_bytes: 1024 * 1024,
            max_outbound_total_bytes: 256 * 1024 * 1024,
            socketio_ping_interval: Duration::from_secs(25),
            socketio_ping_timeout: Duration::from_secs(20),
            max_socketio_sessions: 10_000,
            socketio_connect_timeout: Duration::from_secs(45),
            socketio_recovery_window: Duration::from_secs(120),
            hook_timeout: Duration::from_secs(2),
            hook_max_connections: 64,
            webhook_timeout: Duration::from_secs(10),
            webhook_batch_max_events: 100,
            webhook_batch_max_bytes: 256 * 1024,
            webhook_retry_min: Duration::from_secs(1),
            webhook_retry_max: Duration::from_secs(300),
            webhook_max_age: Duration::from_secs(24 * 3600),
            webhook_outbox_max_events: 100_000,
            user_offline_grace: Duration::from_secs(5),
            max_pending_joins_per_connection: 8,
            pusher_client_events_per_second: 10,
            max_content_bytes: 32 * 1024,
            max_events_per_second: 100,
            max_rooms_per_connection: 100,
            ws_read_buffer_bytes: 2 * 1024,
            header_timeout: Duration::from_secs(10),
            http_idle_timeout: Duration::from_secs(60),
            ws_idle_timeout: Duration::from_secs(60),
            typing_timeout: Duration::from_secs(10),
            replay_cap: 1000,
            max_events_per_read: 64,
            drain_timeout: Duration::from_secs(2),
            store_max_batches: 64,
            store_max_bytes: 16 * 1024 * 1024,
            store_delay: Duration::ZERO,
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
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            host: "0.0.0.0".into(),
            port: 3009,
            db_path: "realtimehub.db".into(),
            admin_token: None,
            cors_origin: "*".into(),
            durability: crate::store::Durability::Normal,
            log_format: LogFormat::Text,
            echo_path: None,
            hook_ca_file: None,
            socketio_conformance: false,
            db_max_pages: None,
            limits: Limits::default(),
        }
    }
}

/// Why the command line or environment was refused; `main` prints it and exits 2.
#[derive(Debug, PartialEq, Eq)]
pub enum ConfigError {
    /// `--help` was asked for: print [`usage`] and exit 0.
    HelpRequested,
    /// A flag nobody knows.
    UnknownFlag(String),
    /// A flag given without its value.
    MissingValue(String),
    /// A value that does not parse or is out of range.
    BadValue {
        /// The flag or environment variable.
        name: String,
        /// What was given.
        value: String,
        /// What was expected.
        expected: &'static str,
    },
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::HelpRequested => write!(f, "help requested"),
            ConfigError::UnknownFlag(flag) => write!(f, "unknown flag {flag} (see --help)"),
            ConfigError::MissingValue(flag) => write!(f, "flag {flag} needs a value"),
            ConfigError::BadValue { name, value, expected } => {
                write!(f, "bad value {value:?} for {name}: expected {expected}")
            }
        }
    }
}

impl std::error::Error for ConfigError {}

/// One flag: its name, environment twin, help text. The table drives parsing and `--help`.
struct Flag {
    name: &'static str,
    env: &'static str,
    help: &'static str,
}

const FLAGS: &[Flag] = &[
    Flag { name: "--host", env: "HOST", help: "address to bind (default 0.0.0.0)" },
    Flag { name: "--port", env: "PORT", help: "port to listen on, 0 for any free port (default 3009)" },
    Flag { name: "--db", env: "REALTIMEHUB_DB", help: "SQLite database path, or :memory: (default realtimehub.db)" },
    Flag {
        name: "--admin-token",
        env: "REALTIMEHUB_ADMIN_TOKEN",
        help: "bearer token for project creation, /stats and /metrics (default unset: open)",
    },
    Flag {
        name: "--cors-origin",
        env: "CORS_ORIGIN",
        help: "allowed CORS origin(s), comma-separated, or * (default *)",
    },
    Flag {
        name: "--db-max-pages",
        env: "REALTIMEHUB_DB_MAX_PAGES",
        help: "diagnostic: cap the database at N pages to reproduce a full disk (default unset)",
    },
    Flag {
        name: "--store-delay-ms",
        env: "REALTIMEHUB_STORE_DELAY_MS",
        help: "diagnostic: the store thread waits this long before each commit, like a slow disk (default 0)",
    },
    Flag {
        name: "--store-max-batches",
        env: "REALTIMEHUB_STORE_MAX_BATCHES",
        help: "batches awaiting commit past which writing connections are not read (default 64)",
    },
    Flag {
        name: "--store-max-bytes",
        env: "REALTIMEHUB_STORE_MAX_BYTES",
        help: "bytes awaiting commit past which writing connections are not read (default 16777216)",
    },
    Flag {
        name: "--socketio-conformance",
        env: "REALTIMEHUB_SOCKETIO_CONFORMANCE",
        help: "diagnostic: on = Socket.IO sessions echo like the protocol test suite's server (default off)",
    },
    Flag {
        name: "--echo-path",
        env: "REALTIMEHUB_ECHO_PATH",
        help: "diagnostic: WebSocket path that echoes messages without auth, for Autobahn (default off)",
    },
    Flag {
        name: "--log-format",
        env: "REALTIMEHUB_LOG_FORMAT",
        help: "text or json (one JSON object per line) (default text)",
    },
    Flag {
        name: "--durability",
        env: "REALTIMEHUB_DURABILITY",
        help: "normal (commits survive a crash) or full (fsync each commit; survives power loss) (default normal)",
    },
    Flag {
        name: "--max-connections",
        env: "REALTIMEHUB_MAX_CONNECTIONS",
        help: "most open connections (default 10000)",
    },
    Flag {
        name: "--max-connections-per-ip",
        env: "REALTIMEHUB_MAX_CONNECTIONS_PER_IP",
        help: "most open connections from one address (default 1000)",
    },
    Flag {
        name: "--max-head-bytes",
        env: "REALTIMEHUB_MAX_HEAD_BYTES",
        help: "largest HTTP request head in bytes (default 16384)",
    },
    Flag {
        name: "--max-body-bytes",
        env: "REALTIMEHUB_MAX_BODY_BYTES",
        help: "largest HTTP request body in bytes (default 1048576)",
    },
    Flag {
        name: "--max-message-bytes",
        env: "REALTIMEHUB_MAX_MESSAGE_BYTES",
        help: "largest WebSocket message in bytes (default 65536)",
    },
    Flag {
        name: "--max-fragments",
        env: "REALTIMEHUB_MAX_FRAGMENTS",
        help: "most frames one WebSocket message may be split into (default 256)",
    },
    Flag {
        name: "--max-outbound-bytes",
        env: "REALTIMEHUB_MAX_OUTBOUND_BYTES",
        help: "bytes queued for one slow client before it is closed 1008 (default 1048576)",
    },
    Flag {
        name: "--max-outbound-total-bytes",
        env: "REALTIMEHUB_MAX_OUTBOUND_TOTAL_BYTES",
        help: "bytes queued for all clients together; past it the largest backlogs are closed 1008 (default 268435456)",
    },
    Flag {
        name: "--socketio-ping-interval-ms",
        env: "REALTIMEHUB_SOCKETIO_PING_INTERVAL_MS",
        help: "Engine.IO pingInterval: how often Socket.IO clients are pinged (default 25000)",
    },
    Flag {
        name: "--socketio-ping-timeout-ms",
        env: "REALTIMEHUB_SOCKETIO_PING_TIMEOUT_MS",
        help: "Engine.IO pingTimeout: a Socket.IO session that does not answer is closed (default 20000)",
    },
    Flag {
        name: "--socketio-connect-timeout-ms",
        env: "REALTIMEHUB_SOCKETIO_CONNECT_TIMEOUT_MS",
        help: "a Socket.IO session that sends no CONNECT within it is closed (default 45000)",
    },
    Flag {
        name: "--socketio-recovery-window-ms",
        env: "REALTIMEHUB_SOCKETIO_RECOVERY_WINDOW_MS",
        help: "how long a dropped Socket.IO session may recover its threads and missed messages; 0 is off (default 120000)",
    },
    Flag {
        name: "--hook-timeout-ms",
        env: "REALTIMEHUB_HOOK_TIMEOUT_MS",
        help: "how long a join waits for the access hook before it is refused `unavailable` (default 2000)",
    },
    Flag {
        name: "--hook-ca-file",
        env: "REALTIMEHUB_HOOK_CA_FILE",
        help: "PEM file of CA certificates trusted for https:// backend URLs, besides the system's roots (unset)",
    },
    Flag {
        name: "--hook-max-connections",
        env: "REALTIMEHUB_HOOK_MAX_CONNECTIONS",
        help: "connections open to backends at once, hooks and webhooks together (default 64)",
    },
    Flag {
        name: "--webhook-timeout-ms",
        env: "REALTIMEHUB_WEBHOOK_TIMEOUT_MS",
        help: "how long one webhook post may take before it counts as failed (default 10000)",
    },
    Flag {
        name: "--webhook-batch-max-events",
        env: "REALTIMEHUB_WEBHOOK_BATCH_MAX_EVENTS",
        help: "most events in one webhook post (default 100)",
    },
    Flag {
        name: "--webhook-batch-max-bytes",
        env: "REALTIMEHUB_WEBHOOK_BATCH_MAX_BYTES",
        help: "most bytes of events in one webhook post, one event at least (default 262144)",
    },
    Flag {
        name: "--webhook-retry-min-ms",
        env: "REALTIMEHUB_WEBHOOK_RETRY_MIN_MS",
        help: "delay before the first retry of a failed webhook post, doubled per failure (default 1000)",
    },
    Flag {
        name: "--webhook-retry-max-ms",
        env: "REALTIMEHUB_WEBHOOK_RETRY_MAX_MS",
        help: "longest delay between webhook retries (default 300000)",
    },
    Flag {
        name: "--webhook-max-age-ms",
        env: "REALTIMEHUB_WEBHOOK_MAX_AGE_MS",
        help: "undelivered webhook events older than this are dropped and counted (default 86400000)",
    },
    Flag {
        name: "--webhook-outbox-max-events",
        env: "REALTIMEHUB_WEBHOOK_OUTBOX_MAX_EVENTS",
        help: "undelivered webhook events kept per project; past it the oldest are dropped (default 100000)",
    },
    Flag {
        name: "--user-offline-grace-ms",
        env: "REALTIMEHUB_USER_OFFLINE_GRACE_MS",
        help: "user.offline is sent only if no connection of the user came back within it (default 5000)",
    },
    Flag {
        name: "--max-pending-joins-per-connection",
        env: "REALTIMEHUB_MAX_PENDING_JOINS_PER_CONNECTION",
        help: "joins of one connection that may wait for the access hook at once (default 8)",
    },
    Flag {
        name: "--pusher-client-events-per-second",
        env: "REALTIMEHUB_PUSHER_CLIENT_EVENTS_PER_SECOND",
        help: "Pusher client events (client-*) per connection per second; more get error 4301 (default 10)",
    },
    Flag {
        name: "--max-socketio-sessions",
        env: "REALTIMEHUB_MAX_SOCKETIO_SESSIONS",
        help: "Socket.IO sessions open at once; past it the handshake is 503 (default 10000)",
    },
    Flag {
        name: "--max-content-bytes",
        env: "REALTIMEHUB_MAX_CONTENT_BYTES",
        help: "largest message content plus attachments (default 32768)",
    },
    Flag {
        name: "--max-events-per-second",
        env: "REALTIMEHUB_MAX_EVENTS_PER_SECOND",
        help: "client events per second per WebSocket, also the burst (default 100)",
    },
    Flag {
        name: "--max-rooms-per-connection",
        env: "REALTIMEHUB_MAX_ROOMS_PER_CONNECTION",
        help: "rooms one WebSocket may join (default 100)",
    },
    Flag {
        name: "--ws-read-buffer-bytes",
        env: "REALTIMEHUB_WS_READ_BUFFER_BYTES",
        help: "initial WebSocket read buffer per connection (default 2048)",
    },
    Flag {
        name: "--header-timeout-ms",
        env: "REALTIMEHUB_HEADER_TIMEOUT_MS",
        help: "time for a request (head and body) to arrive (default 10000)",
    },
    Flag {
        name: "--http-idle-timeout-ms",
        env: "REALTIMEHUB_HTTP_IDLE_TIMEOUT_MS",
        help: "idle keep-alive HTTP connection lifetime; also for unread answers (default 60000)",
    },
    Flag {
        name: "--ws-idle-timeout-ms",
        env: "REALTIMEHUB_WS_IDLE_TIMEOUT_MS",
        help: "silent WebSocket lifetime; pinged at half (default 60000)",
    },
    Flag {
        name: "--typing-timeout-ms",
        env: "REALTIMEHUB_TYPING_TIMEOUT_MS",
        help: "server-side isTyping:false after the last true (default 10000)",
    },
    Flag {
        name: "--replay-cap",
        env: "REALTIMEHUB_REPLAY_CAP",
        help: "most messages replayed on join with since (default 1000)",
    },
    Flag {
        name: "--max-events-per-read",
        env: "REALTIMEHUB_MAX_EVENTS_PER_READ",
        help: "client events handled per connection per loop iteration (default 64)",
    },
    Flag {
        name: "--drain-timeout-ms",
        env: "REALTIMEHUB_DRAIN_TIMEOUT_MS",
        help: "time to flush close frames on shutdown (default 2000)",
    },
    Flag {
        name: "--max-read-bytes-per-second",
        env: "REALTIMEHUB_MAX_READ_BYTES_PER_SECOND",
        help: "history/replay bytes one user may read per second (default 1048576)",
    },
    Flag {
        name: "--max-rest-requests-per-second",
        env: "REALTIMEHUB_MAX_REST_REQUESTS_PER_SECOND",
        help: "REST requests per second per API key, also the burst (default 1000)",
    },
    Flag {
        name: "--max-rest-read-bytes-per-second",
        env: "REALTIMEHUB_MAX_REST_READ_BYTES_PER_SECOND",
        help: "REST history bytes per second per API key (default 4194304)",
    },
    Flag {
        name: "--max-ids-per-read",
        env: "REALTIMEHUB_MAX_IDS_PER_READ",
        help: "most message ids in one read event (default 100)",
    },
    Flag {
        name: "--max-projects-per-ip-per-hour",
        env: "REALTIMEHUB_MAX_PROJECTS_PER_IP_PER_HOUR",
        help: "projects one address may create per hour without an admin token (default 20)",
    },
    Flag {
        name: "--max-rooms-per-project",
        env: "REALTIMEHUB_MAX_ROOMS_PER_PROJECT",
        help: "rooms one project may hold (default 10000)",
    },
    Flag {
        name: "--max-members-per-room",
        env: "REALTIMEHUB_MAX_MEMBERS_PER_ROOM",
        help: "members one private room may list (default 10000)",
    },
    Flag {
        name: "--max-stored-bytes-per-project",
        env: "REALTIMEHUB_MAX_STORED_BYTES_PER_PROJECT",
        help: "message bytes one project may store (default 1073741824)",
    },
    Flag {
        name: "--retention-messages-per-room",
        env: "REALTIMEHUB_RETENTION_MESSAGES_PER_ROOM",
        help: "keep only the newest N messages per room, 0 keeps all (default 0)",
    },
    Flag {
        name: "--max-token-lifetime-ms",
        env: "REALTIMEHUB_MAX_TOKEN_LIFETIME_MS",
        help: "longest lifetime a signed token may claim (default 86400000)",
    },
];

/// Variables read from the environment only, as `(name, help)`; `--help` lists
/// them after the flags.
const ENV_ONLY: &[(&str, &str)] =
    &[("RUST_LOG", "log level and filter in env_logger syntax, e.g. warn or realtimehub=debug (default info)")];

/// The `--help` text, generated from the flag table so it cannot drift. The
/// columns are as wide as their longest entry, so a new flag cannot misalign them.
pub fn usage() -> String {
    let name_width = FLAGS.iter().map(|flag| flag.name.len()).max().unwrap_or(0);
    let env_width = FLAGS.iter().map(|flag| flag.env.len()).max().unwrap_or(0);
    let mut text = String::from(
        "realtimehub: real-time rooms, presence and history over WebSocket and REST\n\n\
         usage: realtimehub [FLAGS]\n\nflags (each also read from the environment variable shown):\n",
    );
    let rows = FLAGS.iter().map(|flag| (flag.name, flag.env, flag.help)).chain([("--help", "", "print this help")]);
    for (name, env, help) in rows {
        text.push_str(&format!("  {name:<name_width$}  {env:<env_width$}  {help}\n"));
    }
    text.push_str("\nenvironment only:\n");
    let env_only_width = ENV_ONLY.iter().map(|(name, _)| name.len()).max().unwrap_or(0);
    for (name, help) in ENV_ONLY {
        text.push_str(&format!("  {name:<env_only_width$}  {help}\n"));
    }
    text.push_str(
        "\nexit status: 0 after a clean shutdown, 2 when the configuration cannot be used\n\
         (a bad flag or value, a database that cannot be opened, an address that cannot be\n\
         bound), 1 for any other failure\n",
    );
    text
}

impl Config {
    /// Builds the configuration from command-line flags (without the program
    /// name) and an environment lookup; pure so it can be unit-tested.
    pub fn from_args<I, E>(args: I, env: E) -> Result<Config, ConfigError>
    where
        I: IntoIterator<Item = String>,
        E: Fn(&str) -> Option<String>,
    {
        let mut given: Vec<(&'static Flag, String)> = Vec::new();
        let mut args = args.into_iter();
        while let Some(arg) = args.next() {
            if arg == "--help" || arg == "-h" {
                return Err(ConfigError::HelpRequested);
            }
            let (name, inline) = match arg.split_once('=') {
                Some((name, value)) => (name.to_string(), Some(value.to_string())),
                None => (arg.clone(), None),
            };
            let flag =
                FLAGS.iter().find(|flag| flag.name == name).ok_or_else(|| ConfigError::UnknownFlag(arg.clone()))?;
            let value = match inline {
                Some(value) => value,
                None => args.next().ok_or_else(|| ConfigError::MissingValue(name.clone()))?,
            };
            given.push((flag, value));
        }
        let lookup = |flag_name: &str| -> Option<(String, String)> {
            let flag = FLAGS.iter().find(|f| f.name == flag_name)?;
            if let Some((_, value)) = given.iter().rev().find(|(f, _)| f.name == flag_name) {
                return Some((flag.name.to_string(), value.clone()));
            }
            env(flag.env).map(|value| (flag.env.to_string(), value))
        };

        let mut config = Config::default();
        if let Some((_, v)) = lookup("--host") {
            config.host = v;
        }
        if let Some((name, v)) = lookup("--port") {
            config.port = parse_num(&name, &v, "a port number 0-65535")?;
        }
        if let Some((_, v)) = lookup("--db") {
            config.db_path = v;
        }
        if let Some((_, v)) = lookup("--admin-token") {
            config.admin_token = if v.is_empty() { None } else { Some(v) };
        }
        if let Some((_, v)) = lookup("--cors-origin") {
            config.cors_origin = v;
        }
        if let Some((name, v)) = lookup("--db-max-pages") {
            config.db_max_pages = Some(parse_positive(&name, &v, "a positive number of pages")? as u64);
        }
        if let Some((name, v)) = lookup("--echo-path") {
            if !v.starts_with('/') || v == "/" || v == "/ws" {
                return Err(ConfigError::BadValue { name, value: v, expected: "a path like /echo (not / or /ws)" });
            }
            config.echo_path = Some(v);
        }
        if let Some((name, v)) = lookup("--socketio-conformance") {
            config.socketio_conformance = match v.as_str() {
                "on" => true,
                "off" => false,
                _ => return Err(ConfigError::BadValue { name, value: v, expected: "on or off" }),
            };
        }
        if let Some((name, v)) = lookup("--log-format") {
            config.log_format = match v.as_str() {
                "text" => LogFormat::Text,
                "json" => LogFormat::Json,
                _ => return Err(ConfigError::BadValue { name, value: v, expected: "text or json" }),
            };
        }
        if let Some((name, v)) = lookup("--durability") {
            config.durability = match v.as_str() {
                "normal" => crate::store::Durability::Normal,
                "full" => crate::store::Durability::Full,
                _ => return Err(ConfigError::BadValue { name, value: v, expected: "normal or full" }),
            };
        }
        let limits = &mut config.limits;
        let positive = "a positive whole number";
        if let Some((name, v)) = lookup("--max-connections") {
            limits.max_connections = parse_positive(&name, &v, positive)?;
        }
        if let Some((name, v)) = lookup("--max-connections-per-ip") {
            limits.max_connections_per_ip = parse_positive(&name, &v, positive)?;
        }
        if let Some((name, v)) = lookup("--max-head-bytes") {
            limits.max_head_bytes = parse_positive(&name, &v, positive)?;
        }
        if let Some((name, v)) = lookup("--max-body-bytes") {
            limits.max_body_bytes = parse_positive(&name, &v, positive)?;
        }
        if let Some((name, v)) = lookup("--max-message-bytes") {
            limits.max_message_bytes = parse_positive(&name, &v, positive)?;
        }
        if let Some((name, v)) = lookup("--max-fragments") {
            limits.max_fragments = parse_positive(&name, &v, positive)?.min(u32::MAX as usize) as u32;
        }
        if let Some((name, v)) = lookup("--max-outbound-bytes") {
            limits.max_outbound_bytes = parse_positive(&name, &v, positive)?;
        }
        if let Some((name, v)) = lookup("--max-outbound-total-bytes") {
            limits.max_outbound_total_bytes = parse_positive(&name, &v, positive)?;
        }
        if let Some((name, v)) = lookup("--socketio-ping-interval-ms") {
            limits.socketio_ping_interval = parse_ms(&name, &v)?;
        }
        if let Some((name, v)) = lookup("--socketio-ping-timeout-ms") {
            limits.socketio_ping_timeout = parse_ms(&name, &v)?;
        }
        if let Some((name, v)) = lookup("--socketio-connect-timeout-ms") {
            limits.socketio_connect_timeout = parse_ms(&name, &v)?;
        }
        if let Some((name, v)) = lookup("--socketio-recovery-window-ms") {
            let ms: u64 = parse_num(&name, &v, "a whole number of milliseconds (0 is off)")?;
            limits.socketio_recovery_window = Duration::from_millis(ms);
        }
        if let Some((_, v)) = lookup("--hook-ca-file") {
            config.hook_ca_file = if v.is_empty() { None } else { Some(v) };
        }
        if let Some((name, v)) = lookup("--hook-timeout-ms") {
            limits.hook_timeout = parse_ms(&name, &v)?;
        }
        if let Some((name, v)) = lookup("--hook-max-connections") {
            limits.hook_max_connections = parse_positive(&name, &v, positive)?;
        }
        if let Some((name, v)) = lookup("--webhook-timeout-ms") {
            limits.webhook_timeout = parse_ms(&name, &v)?;
        }
        if let Some((name, v)) = lookup("--webhook-batch-max-events") {
            limits.webhook_batch_max_events = parse_positive(&name, &v, positive)?;
        }
        if let Some((name, v)) = lookup("--webhook-batch-max-bytes") {
            limits.webhook_batch_max_bytes = parse_positive(&name, &v, positive)?;
        }
        if let Some((name, v)) = lookup("--webhook-retry-min-ms") {
            limits.webhook_retry_min = parse_ms(&name, &v)?;
        }
        if let Some((name, v)) = lookup("--webhook-retry-max-ms") {
            limits.webhook_retry_max = parse_ms(&name, &v)?;
        }
        if let Some((name, v)) = lookup("--webhook-max-age-ms") {
            limits.webhook_max_age = parse_ms(&name, &v)?;
        }
        if let Some((name, v)) = lookup("--webhook-outbox-max-events") {
            limits.webhook_outbox_max_events = parse_positive(&name, &v, positive)?;
        }
        if let Some((name, v)) = lookup("--user-offline-grace-ms") {
            let ms: u64 = parse_num(&name, &v, "a whole number of milliseconds")?;
            limits.user_offline_grace = Duration::from_millis(ms);
        }
        if let Some((name, v)) = lookup("--max-pending-joins-per-connection") {
            limits.max_pending_joins_per_connection = parse_positive(&name, &v, positive)?;
        }
        if let Some((name, v)) = lookup("--pusher-client-events-per-second") {
            limits.pusher_client_events_per_second = parse_positive(&name, &v, positive)?.min(u32::MAX as usize) as u32;
        }
        if let Some((name, v)) = lookup("--max-socketio-sessions") {
            limits.max_socketio_sessions = parse_positive(&name, &v, positive)?;
        }
        if let Some((name, v)) = lookup("--max-content-bytes") {
            limits.max_content_bytes = parse_positive(&name, &v, positive)?;
        }
        if let Some((name, v)) = lookup("--max-events-per-second") {
            limits.max_events_per_second = parse_positive(&name, &v, positive)?.min(u32::MAX as usize) as u32;
        }
        if let Some((name, v)) = lookup("--max-rooms-per-connection") {
            limits.max_rooms_per_connection = parse_positive(&name, &v, positive)?;
        }
        if let Some((name, v)) = lookup("--ws-read-buffer-bytes") {
            limits.ws_read_buffer_bytes = parse_positive(&name, &v, positive)?;
        }
        if let Some((name, v)) = lookup("--header-timeout-ms") {
            limits.header_timeout = parse_ms(&name, &v)?;
        }
        if let Some((name, v)) = lookup("--http-idle-timeout-ms") {
            limits.http_idle_timeout = parse_ms(&name, &v)?;
        }
        if let Some((name, v)) = lookup("--ws-idle-timeout-ms") {
            limits.ws_idle_timeout = parse_ms(&name, &v)?;
        }
        if let Some((name, v)) = lookup("--typing-timeout-ms") {
            limits.typing_timeout = parse_ms(&name, &v)?;
        }
        if let Some((name, v)) = lookup("--replay-cap") {
            limits.replay_cap = parse_positive(&name, &v, positive)?;
        }
        if let Some((name, v)) = lookup("--max-events-per-read") {
            limits.max_events_per_read = parse_positive(&name, &v, positive)?;
        }
        if let Some((name, v)) = lookup("--drain-timeout-ms") {
            limits.drain_timeout = parse_ms(&name, &v)?;
        }
        if let Some((name, v)) = lookup("--store-max-batches") {
            limits.store_max_batches = parse_positive(&name, &v, positive)?;
        }
        if let Some((name, v)) = lookup("--store-max-bytes") {
            limits.store_max_bytes = parse_positive(&name, &v, positive)?;
        }
        if let Some((name, v)) = lookup("--store-delay-ms") {
            limits.store_delay = Duration::from_millis(parse_num(&name, &v, "a whole number of milliseconds")?);
        }
        if let Some((name, v)) = lookup("--max-read-bytes-per-second") {
            limits.max_read_bytes_per_second = parse_positive(&name, &v, positive)?;
        }
        if let Some((name, v)) = lookup("--max-rest-requests-per-second") {
            limits.max_rest_requests_per_second = parse_positive(&name, &v, positive)?;
        }
        if let Some((name, v)) = lookup("--max-rest-read-bytes-per-second") {
            limits.max_rest_read_bytes_per_second = parse_positive(&name, &v, positive)?;
        }
        if let Some((name, v)) = lookup("--max-ids-per-read") {
            limits.max_ids_per_read = parse_positive(&name, &v, positive)?;
        }
        if let Some((name, v)) = lookup("--max-projects-per-ip-per-hour") {
            limits.max_projects_per_ip_per_hour = parse_positive(&name, &v, positive)?;
        }
        if let Some((name, v)) = lookup("--max-rooms-per-project") {
            limits.max_rooms_per_project = parse_positive(&name, &v, positive)?;
        }
        if let Some((name, v)) = lookup("--max-members-per-room") {
            limits.max_members_per_room = parse_positive(&name, &v, positive)?;
        }
        if let Some((name, v)) = lookup("--max-stored-bytes-per-project") {
            limits.max_stored_bytes_per_project = parse_positive(&name, &v, positive)? as u64;
        }
        if let Some((name, v)) = lookup("--retention-messages-per-room") {
            limits.retention_messages_per_room = parse_num(&name, &v, "a whole number (0 keeps all)")?;
        }
        if let Some((name, v)) = lookup("--max-token-lifetime-ms") {
            limits.max_token_lifetime = parse_ms(&name, &v)?;
        }
        Ok(config)
    }
}

fn parse_num<T: std::str::FromStr>(name: &str, value: &str, expected: &'static str) -> Result<T, ConfigError> {
    value.trim().parse().map_err(|_| ConfigError::BadValue {
        name: name.to_string(),
        value: value.to_string(),
        expected,
    })
}

fn parse_positive(name: &str, value: &str, expected: &'static str) -> Result<usize, ConfigError> {
    let n: usize = parse_num(name, value, expected)?;
    if n == 0 {
        return Err(ConfigError::BadValue { name: name.to_string(), value: value.to_string(), expected });
    }
    Ok(n)
}

fn parse_ms(name: &str, value: &str) -> Result<Duration, ConfigError> {
    let ms = parse_positive(name, value, "a positive number of milliseconds")?;
    Ok(Duration::from_millis(ms as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn defaults_match_the_contract() {
        let config = Config::from_args(args(&[]), |_| None).unwrap();
        assert_eq!(config.host, "0.0.0.0");
        assert_eq!(config.port, 3009);
        assert_eq!(config.db_path, "realtimehub.db");
        assert_eq!(config.admin_token, None);
        assert_eq!(config.cors_origin, "*");
        assert_eq!(config.limits.typing_timeout, Duration::from_secs(10));
        assert_eq!(config.limits.replay_cap, 1000);
        assert_eq!(config.limits.max_outbound_total_bytes, 256 * 1024 * 1024);
    }

    #[test]
    fn flag_beats_environment_and_both_forms_parse() {
        let env = |name: &str| match name {
            "PORT" => Some("4000".to_string()),
            "HOST" => Some("127.0.0.1".to_string()),
            _ => None,
        };
        let config = Config::from_args(args(&["--port=5000", "--db", ":memory:"]), env).unwrap();
        assert_eq!(config.port, 5000);
        assert_eq!(config.host, "127.0.0.1");
        assert_eq!(config.db_path, ":memory:");
    }

    #[test]
    fn every_field_is_reachable_from_a_flag() {
        let all = args(&[
            "--durability=full",
            "--log-format=json",
            "--max-connections-per-ip=7",
            "--max-events-per-second=9",
            "--max-rooms-per-connection=3",
            "--max-content-bytes=11",
            "--max-outbound-total-bytes=4096",
            "--typing-timeout-ms=250",
        ]);
        let config = Config::from_args(all, |_| None).unwrap();
        assert_eq!(config.durability, crate::store::Durability::Full);
        assert_eq!(config.log_format, LogFormat::Json);
        assert_eq!(config.limits.max_connections_per_ip, 7);
        assert_eq!(config.limits.max_events_per_second, 9);
        assert_eq!(config.limits.max_rooms_per_connection, 3);
        assert_eq!(config.limits.max_content_bytes, 11);
        assert_eq!(config.limits.max_outbound_total_bytes, 4096);
        let env = |name: &str| (name == "REALTIMEHUB_MAX_OUTBOUND_TOTAL_BYTES").then(|| "8192".to_string());
        assert_eq!(Config::from_args(args(&[]), env).unwrap().limits.max_outbound_total_bytes, 8192);
        assert_eq!(config.limits.typing_timeout, Duration::from_millis(250));
        let env = |name: &str| (name == "REALTIMEHUB_DURABILITY").then(|| "full".to_string());
        assert_eq!(Config::from_args(args(&[]), env).unwrap().durability, crate::store::Durability::Full);
        assert!(Config::from_args(args(&["--durability", "fast"]), |_| None).is_err());
    }

    #[test]
    fn bad_input_is_refused_with_a_reason() {
        assert_eq!(
            Config::from_args(args(&["--nope"]), |_| None).unwrap_err(),
            ConfigError::UnknownFlag("--nope".into())
        );
        assert_eq!(
            Config::from_args(args(&["--port"]), |_| None).unwrap_err(),
            ConfigError::MissingValue("--port".into())
        );
        assert!(matches!(Config::from_args(args(&["--port", "70000"]), |_| None), Err(ConfigError::BadValue { .. })));
        assert!(matches!(Config::from_args(args(&["--replay-cap", "0"]), |_| None), Err(ConfigError::BadValue { .. })));
        assert_eq!(Config::from_args(args(&["--help"]), |_| None).unwrap_err(), ConfigError::HelpRequested);
    }

    #[test]
    fn store_bounds_and_the_slow_store_diagnostic() {
        let defaults = Config::from_args(args(&[]), |_| None).unwrap().limits;
        assert_eq!((defaults.store_max_batches, defaults.store_max_bytes), (64, 16 * 1024 * 1024));
        assert_eq!(defaults.store_delay, Duration::ZERO);
        let env = |name: &str| (name == "REALTIMEHUB_STORE_MAX_BYTES").then(|| "4096".to_string());
        let limits = Config::from_args(args(&["--store-max-batches", "3", "--store-delay-ms=25"]), env).unwrap().limits;
        assert_eq!((limits.store_max_batches, limits.store_max_bytes), (3, 4096));
        assert_eq!(limits.store_delay, Duration::from_millis(25));
        let zero = Config::from_args(args(&["--store-max-batches", "0"]), |_| None);
        assert!(matches!(zero, Err(ConfigError::BadValue { .. })));
    }

    #[test]
    fn usage_lists_every_flag() {
        let text = usage();
        for flag in FLAGS {
            assert!(text.contains(flag.name) && text.contains(flag.env));
        }
    }

    #[test]
    fn usage_columns_line_up() {
        let text = usage();
        let rows: Vec<&str> = text.lines().filter(|line| line.starts_with("  --")).collect();
        assert_eq!(rows.len(), FLAGS.len() + 1, "one row per flag plus --help: {text}");
        let help_column = |row: &str| {
            let flag = FLAGS.iter().find(|flag| row.trim_start().starts_with(&format!("{} ", flag.name)));
            let help = flag.map_or("print this help", |flag| flag.help);
            row.find(help).unwrap_or_else(|| panic!("help text missing in {row:?}"))
        };
        let first = help_column(rows[0]);
        for row in &rows {
            assert_eq!(help_column(row), first, "misaligned: {row:?}");
        }
    }
}
