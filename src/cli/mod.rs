//! The command line (README "Command line"): the subcommands' schema,
//! their exit codes (0 ok, 1 runtime failure, 2 usage or config error) and
//! what each does. The registry commands (`cleanup`, `clear`,
//! `connections`) work on Redis directly with the Redis engine (no node
//! needs to run) and ask the node's admin API with the embedded one
//! (`registry.rs`); `send` and `topics` always ask a running node
//! (`client.rs`). What is printed is in `output.rs`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use serde_json::value::RawValue;

use crate::config::{self, Config};
use crate::http::api::model::BatchSent;
use crate::store::StoreError;
use client::{AdminClient, SendBody};
use registry::Registry;

mod client;
mod output;
mod registry;

#[derive(Debug, Parser)]
#[command(
    name = "sse-notify",
    version,
    about = "Server-Sent Events notification daemon",
    after_help = "Config file: -c FILE, else $SSE_NOTIFY_CONFIG, else /etc/sse-notify/sse-notify.toml if it exists, else built-in defaults.\nExit codes: 0 ok, 1 runtime failure, 2 usage or config error."
)]
pub struct Cli {
    /// Config file (TOML).
    #[arg(short = 'c', long = "config", global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon (both listeners) until SIGTERM/SIGINT.
    #[command(after_help = "Example: sse-notify serve -c /etc/sse-notify/sse-notify.toml")]
    Serve,
    /// Validate the config and print the effective values (secrets masked).
    #[command(after_help = "Example: sse-notify check-config -c etc/sse-notify.toml")]
    CheckConfig,
    /// Remove records whose last heartbeat is older than the timeout (Redis engine: directly in Redis).
    #[command(after_help = "Example: sse-notify cleanup --timeout 300")]
    Cleanup {
        /// Seconds; defaults to sweep.stale_timeout_secs.
        #[arg(long, value_name = "SECS")]
        timeout: Option<f64>,
        /// Print the counts as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Remove every connection record (all nodes); running nodes re-register their live ones.
    #[command(after_help = "Example: sse-notify clear --force")]
    Clear {
        /// Required: clearing is refused without it.
        #[arg(long)]
        force: bool,
        /// Print the counts as JSON.
        #[arg(long)]
        json: bool,
    },
    /// List the registry (all users, or one); Redis engine: read directly from Redis.
    #[command(
        after_help = "Examples:\n  sse-notify connections\n  sse-notify connections alice --json"
    )]
    Connections {
        /// Only this user's connections.
        user: Option<String>,
        /// Print the data object of the matching API response.
        #[arg(long)]
        json: bool,
    },
    /// Send a message (or a file of them) through a running node's admin API.
    #[command(
        after_help = "Examples:\n  sse-notify send --to alice '{\"text\":\"hi\"}'\n  sse-notify send --topic doc:42 --event new_comment '{\"id\":7}'   (every stream following doc:42)\n  sse-notify send --event news '\"everyone\"'   (broadcast)\n  sse-notify send --batch messages.jsonl   (one send body per line: {\"to\":\"alice\",\"data\":1})"
    )]
    Send {
        /// Username; without it (and without --topic) the message is a broadcast.
        #[arg(long, value_name = "USER", conflicts_with = "batch")]
        to: Option<String>,
        /// A topic: the message goes to every stream following it.
        #[arg(long, value_name = "T", conflicts_with_all = ["batch", "to", "first"])]
        topic: Option<String>,
        /// SSE event name.
        #[arg(long, value_name = "E", default_value = "message")]
        event: String,
        /// Only the user's first (oldest) connection.
        #[arg(long, conflicts_with = "batch")]
        first: bool,
        /// The payload, as JSON.
        #[arg(value_name = "DATA_JSON", required_unless_present = "batch")]
        data: Option<String>,
        /// A file of send bodies, one JSON object per line, posted in
        /// batches of api.max_batch (`-` reads standard input).
        #[arg(long, value_name = "FILE", conflicts_with = "data")]
        batch: Option<PathBuf>,
        /// Print the response's data object as JSON.
        #[arg(long)]
        json: bool,
    },
    /// List the followed topics with their counts, or who follows one, through a running node's admin API.
    #[command(after_help = "Examples:\n  sse-notify topics\n  sse-notify topics doc:42 --json")]
    Topics {
        /// Only this topic: its users and their connections.
        topic: Option<String>,
        /// Print the data object of the matching API response.
        #[arg(long)]
        json: bool,
    },
}

/// An error of a CLI command, with the exit code it leads to.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("{0}")]
    Usage(String),
    #[error("{0}")]
    Config(#[from] config::ConfigError),
    #[error("{0}")]
    Runtime(String),
}

impl CliError {
    pub fn exit_code(&self) -> ExitCode {
        match self {
            CliError::Usage(_) | CliError::Config(_) => ExitCode::from(2),
            CliError::Runtime(_) => ExitCode::from(1),
        }
    }
}

impl From<StoreError> for CliError {
    fn from(e: StoreError) -> Self {
        CliError::Runtime(e.to_string())
    }
}

pub fn load_config(cli: &Cli) -> Result<(Config, Option<PathBuf>), CliError> {
    let path = config::resolve_path(cli.config.as_deref());
    let config = Config::load(path.as_deref())?;
    Ok((config, path))
}

/// Runs every subcommand but `serve`.
pub async fn run(cli: Cli, config: Config, path: Option<PathBuf>) -> Result<(), CliError> {
    match cli.command {
        Command::Serve => unreachable!("serve is run by main"),
        Command::CheckConfig => check_config(&config, path.as_deref()),
        Command::Cleanup { timeout, json } => {
            let timeout = timeout.unwrap_or(config.sweep.stale_timeout_secs as f64);
            if !timeout.is_finite() || timeout < 0.0 {
                return Err(CliError::Usage(
                    "--timeout: must be a non-negative number of seconds".into(),
                ));
            }
            let removed = Registry::open(&config).await?.cleanup(timeout).await?;
            if json {
                output::json(&removed);
            } else {
                output::removed(removed.connection_count, removed.user_count);
            }
            Ok(())
        }
        Command::Clear { force, json } => {
            if !force {
                return Err(CliError::Usage(
                    "clear removes every connection record of every node; run it with --force"
                        .into(),
                ));
            }
            let cleared = Registry::open(&config).await?.clear().await?;
            if json {
                output::json(&cleared);
            } else {
                output::removed(cleared.connection_count, cleared.user_count);
            }
            Ok(())
        }
        Command::Connections {
            user: Some(user),
            json,
        } => {
            crate::http::auth::validate_username(&user)
                .map_err(|e| CliError::Usage(format!("USER: {e}")))?;
            let (list, records) = Registry::open(&config).await?.user(&user).await?;
            if json {
                output::json(&list);
            } else {
                output::user(&list, &records);
            }
            Ok(())
        }
        Command::Connections { user: None, json } => {
            let registry = Registry::open(&config).await?;
            if json {
                registry.print_all_json().await
            } else {
                registry.print_all().await
            }
        }
        Command::Send {
            batch: Some(file),
            json,
            ..
        } => send_batch(&config, &file, json).await,
        Command::Send {
            to,
            topic,
            event,
            first,
            data,
            json,
            ..
        } => {
            let data = data.as_deref().unwrap_or_default();
            let data: &RawValue = serde_json::from_str(data)
                .map_err(|e| CliError::Usage(format!("DATA_JSON: not valid JSON: {e}")))?;
            let body = SendBody {
                to: to.as_deref(),
                topic: topic.as_deref(),
                event: &event,
                data,
                all_connections: first.then_some(false),
            };
            let sent = AdminClient::new(&config)?.send(&body).await?;
            if json {
                output::json(&sent);
            } else {
                output::sent(&sent);
            }
            Ok(())
        }
        Command::Topics {
            topic: Some(topic),
            json,
        } => {
            if let Some(e) = crate::topic::name_error(&topic) {
                return Err(CliError::Usage(format!(
                    "TOPIC: {} {e}",
                    crate::topic::quoted(&topic)
                )));
            }
            let presence = AdminClient::new(&config)?.topic(&topic).await?;
            if json {
                output::json(&presence);
            } else {
                output::topic(&presence);
            }
            Ok(())
        }
        Command::Topics { topic: None, json } => {
            let node = AdminClient::new(&config)?;
            if json {
                node.listing_to("/topics/", &mut output::stdout_pieces())
                    .await
            } else {
                print_topics(&node).await
            }
        }
    }
}

/// Topics per page the command line reads and prints at a time.
const TOPICS_PAGE: usize = 1_000;

/// Every followed topic in words: how many, then a table printed a page
/// at a time, as each page is read.
async fn print_topics(node: &AdminClient) -> Result<(), CliError> {
    let mut cursor = String::new();
    let mut header = true;
    let mut first = true;
    loop {
        let page = node.topics_page(&cursor, TOPICS_PAGE).await?;
        if first {
            output::topic_total(page.topic_count);
            first = false;
        }
        output::topics_table(&page.topics, header);
        header &= page.topics.is_empty();
        match page.next_cursor {
            Some(next) => cursor = next,
            None => return Ok(()),
        }
    }
}

/// Validates the config (and the stream auth it sets up) and prints the
/// effective values, secrets masked.
fn check_config(config: &Config, path: Option<&Path>) -> Result<(), CliError> {
    crate::http::auth::Authenticator::from_config(config)
        .map_err(|e| CliError::Usage(e.to_string()))?;
    match path {
        Some(p) => println!("# {}: valid", p.display()),
        None => println!("# no config file: built-in defaults"),
    }
    if config.engine() == "redis-cluster" {
        println!("# engine: redis-cluster (several nodes may share it, spread over its primaries)");
    } else if config.uses_redis() {
        println!("# engine: redis (several nodes may share it)");
    } else {
        println!("# engine: memory (embedded, one node; set redis.url for Redis)");
    }
    print!("{}", config.to_masked_toml());
    Ok(())
}

/// `send --batch FILE`: every line a send body, posted `api.max_batch` at
/// a time; a bad line is a usage error naming it, before anything is sent.
async fn send_batch(config: &Config, file: &Path, json: bool) -> Result<(), CliError> {
    let text = if file == Path::new("-") {
        std::io::read_to_string(std::io::stdin())
    } else {
        std::fs::read_to_string(file)
    }
    .map_err(|e| CliError::Usage(format!("--batch {}: {e}", file.display())))?;
    let mut messages: Vec<&RawValue> = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let body: &RawValue = serde_json::from_str(line).map_err(|e| {
            CliError::Usage(format!(
                "--batch {} line {}: not valid JSON: {e}",
                file.display(),
                n + 1
            ))
        })?;
        if !body.get().trim_start().starts_with('{') {
            return Err(CliError::Usage(format!(
                "--batch {} line {}: must be a JSON object (a send body)",
                file.display(),
                n + 1
            )));
        }
        messages.push(body);
    }
    if messages.is_empty() {
        return Err(CliError::Usage(format!(
            "--batch {}: no message in the file",
            file.display()
        )));
    }
    let node = AdminClient::new(config)?;
    let mut results = Vec::with_capacity(messages.len());
    for chunk in messages.chunks(config.api.max_batch) {
        results.extend(node.send_batch(chunk).await?);
    }
    if json {
        output::json(&BatchSent { results });
    } else {
        output::sent_batch(&results);
    }
    Ok(())
}
