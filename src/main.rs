//! The `realtimehub` binary: flags and environment → config, logger, store,
//! hub, store and checkpoint threads, then the loop until SIGINT/SIGTERM.
//!
//! Exit status (README, "Exit status"): 0 after a clean shutdown or `--help`;
//! 2 when the configuration cannot be used (a bad flag or value, a database
//! that cannot be opened, an address that cannot be bound), so nothing was
//! served; 1 for any other failure, at start-up or after the ready line. A
//! failure is reported as one line on stderr, whatever `RUST_LOG` says.

use std::io::Write;
use std::process::ExitCode;

use realtimehub::config::{usage, Config, ConfigError, LogFormat};
use realtimehub::core::{Hub, HubConfig, StoreError};
use realtimehub::shell::{now, OsEntropy, Server, ShellError};
use realtimehub::store::{Checkpointer, SqliteStore};

/// How often the checkpoint thread copies the WAL back into the database.
const CHECKPOINT_EVERY_MS: u64 = 50;

/// Exit status when the configuration cannot be used.
const EXIT_CONFIG: u8 = 2;
/// Exit status for every other failure.
const EXIT_FAILURE: u8 = 1;

/// Why the hub stopped: the exit status and the one line that says why.
struct Failure {
    code: u8,
    message: String,
}

impl Failure {
    fn config(message: impl ToString) -> Failure {
        Failure { code: EXIT_CONFIG, message: message.to_string() }
    }

    fn other(message: impl ToString) -> Failure {
        Failure { code: EXIT_FAILURE, message: message.to_string() }
    }
}

fn main() -> ExitCode {
    let config = match Config::from_args(std::env::args().skip(1), |name| std::env::var(name).ok()) {
        Ok(config) => config,
        Err(ConfigError::HelpRequested) => {
            print!("{}", usage());
            return ExitCode::SUCCESS;
        }
        Err(err) => {
            eprintln!("realtimehub: {err}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    init_logger(config.log_format);
    match run(&config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            report(config.log_format, &failure.message);
            ExitCode::from(failure.code)
        }
    }
}

fn init_logger(format: LogFormat) {
    let mut logger = env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"));
    // Key-values (conn, project, user, …) after the message, user input quoted.
    logger.format_key_values(|buf, kvs| buf.write_all(realtimehub::logjson::text_pairs(kvs).as_bytes()));
    if format == LogFormat::Json {
        logger.format(|buf, record| {
            let line = realtimehub::logjson::line(
                &timestamp(),
                record.level().as_str(),
                record.target(),
                &record.args().to_string(),
                record.key_values(),
            );
            writeln!(buf, "{line}")
        });
    }
    logger.init();
}

fn timestamp() -> String {
    humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string()
}

/// Writes the failure that ends the program to stderr, once: not through the
/// logger, so `RUST_LOG=off` cannot hide it, yet as a JSON object when the log
/// is JSON, so a log pipeline still reads one object per line.
fn report(format: LogFormat, message: &str) {
    match format {
        LogFormat::Text => eprintln!("realtimehub: {message}"),
        LogFormat::Json => {
            let no_fields: &[(&str, &str)] = &[];
            eprintln!("{}", realtimehub::logjson::line(&timestamp(), "ERROR", "realtimehub", message, &no_fields))
        }
    }
}

fn run(config: &Config) -> Result<(), Failure> {
    // The checkpoint thread lives as long as the loop runs.
    let (mut server, _checkpointer) = start(config)?;
    let addr = server.local_addr().map_err(Failure::other)?;
    // Warned only once everything that can refuse to start has passed, so the
    // warning never hides the reason the hub did not start.
    if config.admin_token.is_none() {
        log::warn!(
            "no --admin-token set: anyone who can reach this port may create projects and read /stats and /metrics"
        );
    }
    log::info!("database {} (durability {:?})", config.db_path, config.durability);
    println!("listening on http://{}:{}", config.host, addr.port());
    let _ = std::io::stdout().flush();
    server.run().map_err(Failure::other)
}

/// Everything that can refuse the configuration: the database first, then the
/// address.
fn start(config: &Config) -> Result<(Server, Option<Checkpointer>), Failure> {
    let unusable_db = |e: StoreError| {
        // SQLite names the file in some errors ("unable to open database file: PATH").
        let path =
            if e.detail.contains(config.db_path.as_str()) { String::new() } else { format!(" {}", config.db_path) };
        Failure::config(format!("cannot use the database{path}: {}: {}", e.context, e.detail))
    };
    // The store thread writes; the loop reads committed rows on its own
    // connection; WAL checkpoints run on a thread of their own, so their
    // fsyncs hold up no commit.
    let (writer, reader) =
        SqliteStore::open_pair(&config.db_path, config.durability, config.db_max_pages).map_err(unusable_db)?;
    let checkpointer =
        Checkpointer::spawn(&writer, std::time::Duration::from_millis(CHECKPOINT_EVERY_MS)).map_err(unusable_db)?;
    let hub_config = HubConfig {
        admin_token: config.admin_token.clone(),
        cors_origin: config.cors_origin.clone(),
        typing_timeout: config.limits.typing_timeout,
        replay_cap: config.limits.replay_cap,
        max_content_bytes: config.limits.max_content_bytes,
        max_events_per_second: config.limits.max_events_per_second,
        max_rooms_per_connection: config.limits.max_rooms_per_connection,
        max_reply_bytes: config.limits.max_outbound_bytes / 2,
        max_read_bytes_per_second: config.limits.max_read_bytes_per_second,
        max_rest_requests_per_second: config.limits.max_rest_requests_per_second.min(u32::MAX as usize) as u32,
        max_rest_read_bytes_per_second: config.limits.max_rest_read_bytes_per_second,
        max_ids_per_read: config.limits.max_ids_per_read,
        max_projects_per_ip_per_hour: config.limits.max_projects_per_ip_per_hour.min(u32::MAX as usize) as u32,
        max_rooms_per_project: config.limits.max_rooms_per_project,
        max_members_per_room: config.limits.max_members_per_room,
        max_stored_bytes_per_project: config.limits.max_stored_bytes_per_project,
        retention_messages_per_room: config.limits.retention_messages_per_room,
        max_token_lifetime: config.limits.max_token_lifetime,
        resume_window: config.limits.socketio_recovery_window,
        // As many dropped sessions as may be open at once.
        max_resumable_sessions: config.limits.max_socketio_sessions,
        hook_timeout: config.limits.hook_timeout,
        webhook_timeout: config.limits.webhook_timeout,
        webhook_batch_events: config.limits.webhook_batch_max_events,
        webhook_batch_bytes: config.limits.webhook_batch_max_bytes,
        webhook_retry_min: config.limits.webhook_retry_min,
        webhook_retry_max: config.limits.webhook_retry_max,
        webhook_max_age: config.limits.webhook_max_age,
        webhook_outbox_max_events: config.limits.webhook_outbox_max_events as u64,
        user_offline_grace: config.limits.user_offline_grace,
        max_pending_joins_per_connection: config.limits.max_pending_joins_per_connection,
    };
    let hub = Hub::new(hub_config, Box::new(reader), Box::new(OsEntropy), now()).map_err(unusable_db)?;
    let server = Server::bind(config, hub, writer).map_err(|e| match e {
        ShellError::Bind(..) | ShellError::HookCa(..) => Failure::config(e),
        ShellError::Io(..) => Failure::other(e),
    })?;
    Ok((server, checkpointer))
}
