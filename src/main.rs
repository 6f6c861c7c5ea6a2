//! The `realtimehub` binary: flags and environment → config, logger, store,
//! hub, store thread, then the loop until SIGINT/SIGTERM.

use std::io::Write;
use std::process::ExitCode;

use realtimehub::config::{usage, Config, ConfigError, LogFormat};
use realtimehub::core::{Hub, HubConfig};
use realtimehub::shell::{now, OsEntropy, Server};
use realtimehub::store::{Checkpointer, SqliteStore};

/// How often the checkpoint thread copies the WAL back into the database.
const CHECKPOINT_EVERY_MS: u64 = 50;

fn main() -> ExitCode {
    let config = match Config::from_args(std::env::args().skip(1), |name| std::env::var(name).ok()) {
        Ok(config) => config,
        Err(ConfigError::HelpRequested) => {
            print!("{}", usage());
            return ExitCode::SUCCESS;
        }
        Err(err) => {
            eprintln!("realtimehub: {err}");
            return ExitCode::from(2);
        }
    };
    let mut logger = env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"));
    if config.log_format == LogFormat::Json {
        logger.format(|buf, record| {
            let line = realtimehub::logjson::line(
                &humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
                record.level().as_str(),
                record.target(),
                &record.args().to_string(),
            );
            writeln!(buf, "{line}")
        });
    }
    logger.init();
    match run(&config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            log::error!("{err}");
            if config.log_format != LogFormat::Json {
                // Also on stderr when RUST_LOG hides errors; a JSON log
                // stays one object per line.
                eprintln!("realtimehub: {err}");
            }
            ExitCode::FAILURE
        }
    }
}

fn run(config: &Config) -> Result<(), Box<dyn std::error::Error>> {
    if config.admin_token.is_none() {
        log::warn!("no --admin-token set: anyone who can reach this port may create projects and read /stats");
    }
    // The store thread writes; the loop reads committed rows on its own connection.
    let (writer, reader) = SqliteStore::open_pair(&config.db_path, config.durability, config.db_max_pages)?;
    // WAL checkpoints on their own thread: their fsyncs hold up no commit.
    let _checkpointer = Checkpointer::spawn(&writer, std::time::Duration::from_millis(CHECKPOINT_EVERY_MS))?;
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
    };
    let hub = Hub::new(hub_config, Box::new(reader), Box::new(OsEntropy), now())?;
    let mut server = Server::bind(config, hub, writer)?;
    let addr = server.local_addr()?;
    log::info!("database {} (durability {:?})", config.db_path, config.durability);
    println!("listening on http://{}:{}", config.host, addr.port());
    let _ = std::io::stdout().flush();
    server.run()?;
    Ok(())
}
