//! The command line of SPEC 8: subcommands, their output (words for
//! people, `--json` for scripts) and exit codes (0 ok, 1 runtime failure,
//! 2 usage or config error).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use serde_json::Value;

use crate::config::{self, Config};
use crate::keys::Keys;
use crate::registry::{self, Registry, Removed};
use crate::target::SharedConn;

#[derive(Debug, Parser)]
#[command(
    name = "sse-notify",
    version,
    about = "Server-Sent Events notification daemon with a Redis connection registry",
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
    /// Remove records whose last heartbeat is older than the timeout, directly in Redis.
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
    /// List the registry (all users, or one), read directly from Redis.
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
    /// Send a message through a running node's admin API.
    #[command(
        after_help = "Examples:\n  sse-notify send --to alice '{\"text\":\"hi\"}'\n  sse-notify send --event news '\"everyone\"'   (broadcast)"
    )]
    Send {
        /// Username; without it the message is a broadcast.
        #[arg(long, value_name = "USER")]
        to: Option<String>,
        /// SSE event name.
        #[arg(long, value_name = "E", default_value = "message")]
        event: String,
        /// Only the user's first (oldest) connection.
        #[arg(long)]
        first: bool,
        /// The payload, as JSON.
        #[arg(value_name = "DATA_JSON")]
        data: String,
        /// Print the response's data object as JSON.
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

impl From<registry::RegistryError> for CliError {
    fn from(e: registry::RegistryError) -> Self {
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
        Command::CheckConfig => {
            crate::auth::Authenticator::from_config(&config)
                .map_err(|e| CliError::Usage(e.to_string()))?;
            match &path {
                Some(p) => println!("# {}: valid", p.display()),
                None => println!("# no config file: built-in defaults"),
            }
            print!("{}", config.to_masked_toml());
            Ok(())
        }
        Command::Cleanup { timeout, json } => {
            let timeout = timeout.unwrap_or(config.sweep.stale_timeout_secs as f64);
            if !timeout.is_finite() || timeout < 0.0 {
                return Err(CliError::Usage(
                    "--timeout: must be a non-negative number of seconds".into(),
                ));
            }
            let registry = connect(&config).await?;
            let removed = registry.sweep(registry::unix_now() - timeout).await?;
            print_removed(&removed, json, true);
            Ok(())
        }
        Command::Clear { force, json } => {
            if !force {
                return Err(CliError::Usage(
                    "clear removes every connection record of every node; run it with --force"
                        .into(),
                ));
            }
            let registry = connect(&config).await?;
            let removed = registry.clear().await?;
            crate::bus::publish_resync(&registry).await.map_err(|e| {
                CliError::Runtime(format!("cleared, but could not tell running nodes: {e}"))
            })?;
            print_removed(&removed, json, false);
            Ok(())
        }
        Command::Connections { user, json } => {
            let registry = connect(&config).await?;
            match user {
                Some(user) => {
                    crate::auth::validate_username(&user)
                        .map_err(|e| CliError::Usage(format!("USER: {e}")))?;
                    let list = registry.list_user(&user).await?;
                    if json {
                        println!("{}", crate::api::user_json(&user, &list));
                    } else {
                        println!("{user}: {} connection{}", list.len(), plural(list.len()));
                        print_table(list.iter());
                    }
                }
                None => {
                    let all = registry.list_all().await?;
                    if json {
                        println!("{}", crate::api::connections_json(&all));
                    } else {
                        let total: usize = all.values().map(Vec::len).sum();
                        println!(
                            "{total} connection{} of {} user{}",
                            plural(total),
                            all.len(),
                            plural(all.len())
                        );
                        print_table(all.values().flatten());
                    }
                }
            }
            Ok(())
        }
        Command::Send {
            to,
            event,
            first,
            data,
            json,
        } => send(&config, to, event, first, &data, json).await,
    }
}

async fn connect(config: &Config) -> Result<Registry, CliError> {
    let url = config.redis.url.expose();
    let target = config.redis_target();
    let conn = tokio::time::timeout(Duration::from_secs(5), SharedConn::connect(&target))
        .await
        .map_err(|_| {
            CliError::Runtime(format!(
                "redis at {} did not answer",
                config::mask_url_password(url)
            ))
        })?
        .map_err(|e| {
            CliError::Runtime(format!("redis at {}: {e}", config::mask_url_password(url)))
        })?;
    let registry = Registry::new(conn, Keys::new(&config.redis.key_prefix));
    registry.ping().await?;
    Ok(registry)
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

fn print_removed(removed: &Removed, json: bool, with_ids: bool) {
    if json {
        let mut v = serde_json::json!({
            "connection_count": removed.connection_count(),
            "user_count": removed.user_count(),
        });
        if with_ids {
            v["connection_ids"] = serde_json::json!(removed.connection_ids);
        }
        println!("{v}");
    } else {
        println!(
            "removed {} connection{} of {} user{}",
            removed.connection_count(),
            plural(removed.connection_count()),
            removed.user_count(),
            plural(removed.user_count())
        );
    }
}

fn print_table<'a>(records: impl Iterator<Item = &'a registry::ConnectionRecord>) {
    let now = registry::unix_now();
    let rows: Vec<[String; 5]> = records
        .map(|r| {
            [
                r.username.clone(),
                r.connection_id.clone(),
                format!("{:.0}s ago", (now - r.connection_time).max(0.0)),
                format!("{:.0}s ago", (now - r.last_heartbeat).max(0.0)),
                r.node_id.clone(),
            ]
        })
        .collect();
    if rows.is_empty() {
        return;
    }
    let header = [
        "USER",
        "CONNECTION_ID",
        "CONNECTED",
        "LAST_HEARTBEAT",
        "NODE",
    ];
    let mut widths = header.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: [&str; 5]| {
        let parts: Vec<String> = cells
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("{}", parts.join("  ").trim_end());
    };
    line(header);
    for row in &rows {
        line([&row[0], &row[1], &row[2], &row[3], &row[4]]);
    }
}

async fn send(
    config: &Config,
    to: Option<String>,
    event: String,
    first: bool,
    data: &str,
    json: bool,
) -> Result<(), CliError> {
    let data: Value = serde_json::from_str(data)
        .map_err(|e| CliError::Usage(format!("DATA_JSON: not valid JSON: {e}")))?;
    let mut body = serde_json::json!({"to": to, "event": event, "data": data});
    if first {
        body["all_connections"] = Value::Bool(false);
    }
    let mut addr = config.admin_addr();
    if addr.ip().is_unspecified() {
        addr.set_ip(if addr.is_ipv4() {
            std::net::Ipv4Addr::LOCALHOST.into()
        } else {
            std::net::Ipv6Addr::LOCALHOST.into()
        });
    }
    let url = format!("http://{addr}{}/send/", config.server.base_path);
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .map_err(|e| CliError::Runtime(e.to_string()))?;
    let mut req = client.post(&url).json(&body);
    if !config.api.token.is_empty() {
        req = req.bearer_auth(config.api.token.expose());
    }
    let resp = req
        .send()
        .await
        .map_err(|e| CliError::Runtime(format!("cannot reach the admin API at {url}: {e}")))?;
    let status = resp.status();
    let answer: Value = resp
        .json()
        .await
        .map_err(|e| CliError::Runtime(format!("bad answer from {url}: {e}")))?;
    if !status.is_success() {
        let message = answer["message"]
            .as_str()
            .unwrap_or("no message")
            .to_string();
        let message = format!("send failed ({}): {message}", status.as_u16());
        return Err(if status.is_client_error() && status.as_u16() != 401 {
            CliError::Usage(message)
        } else {
            CliError::Runtime(message)
        });
    }
    let data = &answer["data"];
    if json {
        println!("{data}");
    } else {
        let n = data["connections"].as_u64().unwrap_or(0) as usize;
        let target = match data["to"].as_str() {
            Some(user) => format!("user {user}"),
            None => "everyone".to_string(),
        };
        println!(
            "sent message {} to {target}: {n} connection{}",
            data["message_id"].as_str().unwrap_or("?"),
            plural(n)
        );
    }
    Ok(())
}
