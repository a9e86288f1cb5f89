//! The command line (README "Command line"): subcommands, their output
//! (words for people, `--json` for scripts) and exit codes (0 ok, 1 runtime
//! failure, 2 usage or config error). With the Redis engine, `cleanup`,
//! `clear` and `connections` work on Redis directly (no node needs to run);
//! with the embedded engine the registry lives in the node, so they ask its
//! admin API.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use serde_json::Value;

use crate::config::{self, Config, ListenAddr};
use crate::http::listing::{ListingJson, ListingSource};
use crate::store::redis::{clear as clear_redis, sweep, Keys, Registry, SharedConn};
use crate::store::{unix_now, Cleared, ConnectionRecord, Removed, StoreError};

/// Who the CLI is on the bus (the nodes' own events carry their ids).
const CLI_ORIGIN: &str = "cli";

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
        after_help = "Examples:\n  sse-notify send --to alice '{\"text\":\"hi\"}'\n  sse-notify send --event news '\"everyone\"'   (broadcast)\n  sse-notify send --batch messages.jsonl   (one send body per line: {\"to\":\"alice\",\"data\":1})"
    )]
    Send {
        /// Username; without it the message is a broadcast.
        #[arg(long, value_name = "USER", conflicts_with = "batch")]
        to: Option<String>,
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
        Command::CheckConfig => {
            crate::http::auth::Authenticator::from_config(&config)
                .map_err(|e| CliError::Usage(e.to_string()))?;
            match &path {
                Some(p) => println!("# {}: valid", p.display()),
                None => println!("# no config file: built-in defaults"),
            }
            if config.uses_redis() {
                println!("# engine: redis (several nodes may share it)");
            } else {
                println!("# engine: memory (embedded, one node; set redis.url for Redis)");
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
            let removed = if config.uses_redis() {
                let registry = connect(&config).await?;
                sweep(
                    &registry,
                    unix_now() - timeout,
                    config.heartbeat_interval(),
                    CLI_ORIGIN,
                )
                .await?
            } else {
                let body = serde_json::json!({ "timeout": timeout });
                removed_from(&admin_call(&config, Method::POST, "/cleanup/", Some(body)).await?)
            };
            print_removed(&removed, json);
            Ok(())
        }
        Command::Clear { force, json } => {
            if !force {
                return Err(CliError::Usage(
                    "clear removes every connection record of every node; run it with --force"
                        .into(),
                ));
            }
            let cleared = if config.uses_redis() {
                let registry = connect(&config).await?;
                let (cleared, untold) = clear_redis(&registry, CLI_ORIGIN).await?;
                if let Some(e) = untold {
                    return Err(CliError::Runtime(format!(
                        "cleared, but could not tell running nodes: {e}"
                    )));
                }
                cleared
            } else {
                let data = admin_call(&config, Method::POST, "/connections/", None).await?;
                Cleared {
                    connection_count: data["connection_count"].as_u64().unwrap_or(0) as usize,
                    user_count: data["user_count"].as_u64().unwrap_or(0) as usize,
                }
            };
            print_counts(cleared.connection_count, cleared.user_count, None, json);
            Ok(())
        }
        Command::Connections { user, json } => match user {
            Some(user) => connections_of(&config, &user, json).await,
            None if config.uses_redis() => {
                let registry = connect(&config).await?;
                if json {
                    print_listing_json(ListingJson::new(registry)).await
                } else {
                    print_pages_from_redis(&registry).await
                }
            }
            None if json => print_listing_json_from_node(&config).await,
            None => print_pages_from_node(&config).await,
        },
        Command::Send {
            batch: Some(file),
            json,
            ..
        } => send_batch(&config, &file, json).await,
        Command::Send {
            to,
            event,
            first,
            data,
            json,
            ..
        } => {
            send(
                &config,
                to,
                event,
                first,
                data.as_deref().unwrap_or_default(),
                json,
            )
            .await
        }
    }
}

async fn connect(config: &Config) -> Result<Registry, CliError> {
    let url = config.redis.url.expose();
    let target = config.redis_target()?;
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

fn print_removed(removed: &Removed, json: bool) {
    print_counts(
        removed.connection_count(),
        removed.user_count(),
        Some(&removed.connection_ids),
        json,
    );
}

fn print_counts(connections: usize, users: usize, ids: Option<&[String]>, json: bool) {
    if json {
        let mut v = serde_json::json!({
            "connection_count": connections,
            "user_count": users,
        });
        if let Some(ids) = ids {
            v["connection_ids"] = serde_json::json!(ids);
        }
        println!("{v}");
    } else {
        println!(
            "removed {connections} connection{} of {users} user{}",
            plural(connections),
            plural(users)
        );
    }
}

/// Prints the records as a table; with `header_too`, the column names
/// first (a listing printed page by page names them once).
fn print_table<'a>(records: impl Iterator<Item = &'a ConnectionRecord>, header_too: bool) {
    let now = unix_now();
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
    if header_too {
        line(header);
    }
    for row in &rows {
        line([&row[0], &row[1], &row[2], &row[3], &row[4]]);
    }
}

/// `connections USER`: one user's records.
async fn connections_of(config: &Config, user: &str, json: bool) -> Result<(), CliError> {
    crate::http::auth::validate_username(user)
        .map_err(|e| CliError::Usage(format!("USER: {e}")))?;
    let list = if config.uses_redis() {
        connect(config).await?.list_user(user).await?
    } else {
        let path = format!(
            "/connections/{}/",
            percent_encoding::utf8_percent_encode(user, percent_encoding::NON_ALPHANUMERIC)
        );
        let data = admin_call(config, Method::GET, &path, None).await?;
        records_from(&data["connections"], &answering_node_id(config).await?)?
    };
    if json {
        println!(
            "{}",
            serde_json::to_string(&crate::http::api::model::UserConnections::new(user, &list))
                .unwrap_or_default()
        );
    } else {
        println!("{user}: {} connection{}", list.len(), plural(list.len()));
        print_table(list.iter(), true);
    }
    Ok(())
}

/// Users per page the CLI reads and prints at a time.
const CLI_PAGE: usize = 1_000;

fn print_totals(users: usize, total: usize) {
    println!(
        "{total} connection{} of {users} user{}",
        plural(total),
        plural(users)
    );
}

/// The whole registry from Redis, a page of users at a time, each page
/// printed as soon as it is read.
async fn print_pages_from_redis(registry: &Registry) -> Result<(), CliError> {
    let (users, total) = registry.totals().await?;
    print_totals(users, total);
    let mut after: Option<String> = None;
    let mut header = true;
    loop {
        let names = registry.user_names(after.as_deref(), CLI_PAGE).await?;
        let page = registry.users_connections(&names).await?;
        print_table(page.iter().flat_map(|(_, list)| list), header);
        header &= page.is_empty();
        if names.len() < CLI_PAGE {
            return Ok(());
        }
        after = names.last().cloned();
    }
}

/// The whole registry from the node's paged listing, each page printed
/// as soon as it arrives.
async fn print_pages_from_node(config: &Config) -> Result<(), CliError> {
    let node_id = answering_node_id(config).await?;
    let mut cursor = String::new();
    let mut header = true;
    loop {
        let path = format!("/connections/?limit={CLI_PAGE}&cursor={cursor}");
        let data = admin_call(config, Method::GET, &path, None).await?;
        if header {
            print_totals(
                data["user_count"].as_u64().unwrap_or(0) as usize,
                data["total_connections"].as_u64().unwrap_or(0) as usize,
            );
        }
        let mut records = Vec::new();
        if let Some(details) = data["connection_details"].as_object() {
            for list in details.values() {
                records.extend(records_from(list, &node_id)?);
            }
        }
        print_table(records.iter(), header);
        header &= records.is_empty();
        match data["next_cursor"].as_str() {
            Some(next) => cursor = next.to_string(),
            None => return Ok(()),
        }
    }
}

async fn print_listing_json<S: ListingSource>(mut json: ListingJson<S>) -> Result<(), CliError> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    while let Some(piece) = json.next_piece().await? {
        out.write_all(piece.as_bytes())
            .map_err(|e| CliError::Runtime(format!("stdout: {e}")))?;
    }
    writeln!(out).map_err(|e| CliError::Runtime(format!("stdout: {e}")))
}

/// `connections --json` through the node: its streamed listing, copied
/// to stdout as it arrives without the envelope around the `data` object.
async fn print_listing_json_from_node(config: &Config) -> Result<(), CliError> {
    use std::io::Write;
    const HEAD: &[u8] = b"{\"code\":200,\"data\":";
    let url = format!(
        "{}{}/connections/",
        admin_root(config),
        config.server.base_path
    );
    let mut req = admin_client(config)?.get(&url);
    if !config.api.token.is_empty() {
        req = req.bearer_auth(config.api.token.expose());
    }
    let mut resp = req.send().await.map_err(|e| {
        CliError::Runtime(format!(
            "no sse-notify node answers at {} (server.admin_listen): {e}",
            admin_target(config, &url)
        ))
    })?;
    let status = resp.status();
    if !status.is_success() {
        let answer: Value = resp.json().await.unwrap_or_default();
        return Err(error_answer(status, &answer, "/connections/"));
    }
    let cut = |e: &dyn std::fmt::Display| CliError::Runtime(format!("listing from {url}: {e}"));
    let mut out = std::io::stdout().lock();
    // The envelope's head is skipped and its last byte (the envelope's
    // closing brace) held back until the body ends.
    let mut head = Vec::new();
    let mut held: Option<u8> = None;
    while let Some(chunk) = resp.chunk().await.map_err(|e| cut(&e))? {
        let mut chunk = &chunk[..];
        if head.len() < HEAD.len() {
            let take = (HEAD.len() - head.len()).min(chunk.len());
            head.extend_from_slice(&chunk[..take]);
            chunk = &chunk[take..];
            if head.len() == HEAD.len() && head != HEAD {
                return Err(cut(&"not a listing"));
            }
        }
        let Some((&last, body)) = chunk.split_last() else {
            continue;
        };
        if let Some(b) = held.take() {
            out.write_all(&[b]).map_err(|e| cut(&e))?;
        }
        out.write_all(body).map_err(|e| cut(&e))?;
        held = Some(last);
    }
    if held != Some(b'}') {
        return Err(cut(&"the answer ended early"));
    }
    writeln!(out).map_err(|e| cut(&e))
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
    let data = admin_call(config, Method::POST, "/send/", Some(body)).await?;
    let data = &data;
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

use reqwest::Method;

/// `send --batch FILE`: every line a send body, posted `api.max_batch` at
/// a time; a bad line is a usage error naming it, before anything is sent.
async fn send_batch(config: &Config, file: &std::path::Path, json: bool) -> Result<(), CliError> {
    let text = if file == std::path::Path::new("-") {
        std::io::read_to_string(std::io::stdin())
    } else {
        std::fs::read_to_string(file)
    }
    .map_err(|e| CliError::Usage(format!("--batch {}: {e}", file.display())))?;
    let mut messages = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let body: Value = serde_json::from_str(line).map_err(|e| {
            CliError::Usage(format!(
                "--batch {} line {}: not valid JSON: {e}",
                file.display(),
                n + 1
            ))
        })?;
        if !body.is_object() {
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
    let mut results = Vec::with_capacity(messages.len());
    for chunk in messages.chunks(config.api.max_batch) {
        let body = serde_json::json!({ "messages": chunk });
        let data = admin_call(config, Method::POST, "/send/batch/", Some(body)).await?;
        results.extend(data["results"].as_array().cloned().unwrap_or_default());
    }
    if json {
        println!("{}", serde_json::json!({ "results": results }));
    } else {
        let conns: u64 = results
            .iter()
            .map(|r| r["connections"].as_u64().unwrap_or(0))
            .sum();
        println!(
            "sent {} message{} to {conns} connection{}",
            results.len(),
            plural(results.len()),
            plural(conns as usize)
        );
    }
    Ok(())
}

/// `http://host:port` of the node's admin listener (an unspecified
/// address is reached on loopback); over its Unix socket `http://localhost`,
/// a name for the `Host` header only ([`admin_client`] connects to the
/// socket file whatever the URL names).
fn admin_root(config: &Config) -> String {
    let mut addr = match config.admin_listen() {
        ListenAddr::Tcp(addr) => addr,
        ListenAddr::Unix(_) => return "http://localhost".into(),
    };
    if addr.ip().is_unspecified() {
        addr.set_ip(if addr.is_ipv4() {
            std::net::Ipv4Addr::LOCALHOST.into()
        } else {
            std::net::Ipv6Addr::LOCALHOST.into()
        });
    }
    format!("http://{addr}")
}

/// Where an error says the CLI looked: the URL, or the socket file.
fn admin_target(config: &Config, url: &str) -> String {
    match config.admin_listen() {
        ListenAddr::Tcp(_) => url.to_string(),
        unix => format!("{unix} ({url})"),
    }
}

/// The HTTP client of the admin API; over a Unix socket (reqwest's own
/// transport for it: no second HTTP client in the binary).
fn admin_client(config: &Config) -> Result<reqwest::Client, CliError> {
    let mut builder = reqwest::Client::builder().timeout(Duration::from_secs(30));
    if let ListenAddr::Unix(path) = config.admin_listen() {
        builder = builder.unix_socket(path);
    }
    builder
        .build()
        .map_err(|e| CliError::Runtime(e.to_string()))
}

/// The `node_id` the answering node reports on `/healthz`: the CLI's own
/// config may not name it (or name another), and the NODE column must show
/// the node that holds the streams, as the Redis records do.
async fn answering_node_id(config: &Config) -> Result<String, CliError> {
    let url = format!("{}/healthz", admin_root(config));
    let resp = admin_client(config)?.get(&url).send().await.map_err(|e| {
        CliError::Runtime(format!(
            "no sse-notify node answers at {} (server.admin_listen): {e}",
            admin_target(config, &url)
        ))
    })?;
    let health: Value = resp
        .json()
        .await
        .map_err(|e| CliError::Runtime(format!("bad answer from {url}: {e}")))?;
    health["node_id"]
        .as_str()
        .map(String::from)
        .ok_or_else(|| CliError::Runtime(format!("bad answer from {url}: no node_id")))
}

/// Calls the node's admin API (with `api.token`); answers the response's
/// `data`. A node that does not answer, or an error answer, is one line.
async fn admin_call(
    config: &Config,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> Result<Value, CliError> {
    let url = format!("{}{}{path}", admin_root(config), config.server.base_path);
    let mut req = admin_client(config)?.request(method, &url);
    if let Some(body) = &body {
        req = req.json(body);
    }
    if !config.api.token.is_empty() {
        req = req.bearer_auth(config.api.token.expose());
    }
    let resp = req.send().await.map_err(|e| {
        CliError::Runtime(format!(
            "no sse-notify node answers at {} (server.admin_listen): {e}",
            admin_target(config, &url)
        ))
    })?;
    let status = resp.status();
    let mut answer: Value = resp
        .json()
        .await
        .map_err(|e| CliError::Runtime(format!("bad answer from {url}: {e}")))?;
    if !status.is_success() {
        return Err(error_answer(status, &answer, path));
    }
    Ok(answer["data"].take())
}

/// An error envelope as one line, with the exit code it leads to.
fn error_answer(status: reqwest::StatusCode, answer: &Value, path: &str) -> CliError {
    let message = answer["message"].as_str().unwrap_or("no message");
    let what = path.trim_matches('/').split('/').next().unwrap_or(path);
    let message = format!("{what} failed ({}): {message}", status.as_u16());
    if status.is_client_error() && status.as_u16() != 401 {
        CliError::Usage(message)
    } else {
        CliError::Runtime(message)
    }
}

/// The counts of a clear or cleanup answer.
fn removed_from(data: &Value) -> Removed {
    let mut removed = Removed::default();
    if let Some(ids) = data["connection_ids"].as_array() {
        removed.connection_ids = ids
            .iter()
            .filter_map(|v| v.as_str().map(String::from))
            .collect();
    } else {
        // A clear answers counts only: stand-ins keep the count right.
        let n = data["connection_count"].as_u64().unwrap_or(0) as usize;
        removed.connection_ids = vec![String::new(); n];
    }
    let users = data["user_count"].as_u64().unwrap_or(0);
    removed.usernames = (0..users).map(|i| i.to_string()).collect();
    removed
}

/// Records of a listing answer (a user's `connections` list) back into
/// records; the embedded engine has one node, the one that answered
/// (`node_id` is its id).
fn records_from(list: &Value, node_id: &str) -> Result<Vec<ConnectionRecord>, CliError> {
    #[derive(serde::Deserialize)]
    struct Row {
        connection_id: String,
        username: String,
        connection_time: f64,
        last_heartbeat: f64,
    }
    let rows: Vec<Row> = serde_json::from_value(list.clone())
        .map_err(|e| CliError::Runtime(format!("bad listing from the node: {e}")))?;
    Ok(rows
        .into_iter()
        .map(|r| ConnectionRecord {
            connection_id: r.connection_id,
            username: r.username,
            connection_time: r.connection_time,
            last_heartbeat: r.last_heartbeat,
            node_id: node_id.to_string(),
        })
        .collect())
}
