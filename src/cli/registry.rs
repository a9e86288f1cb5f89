//! Where the command line reads and changes the registry. With the Redis
//! engine: Redis directly, through the engine's own handle
//! ([`Direct`]: no node needs to run). With the embedded engine the
//! registry lives in the node, so: its admin API ([`AdminClient`]).

use std::io::Write;
use std::time::Duration;

use super::client::AdminClient;
use super::{output, CliError};
use crate::config::Config;
use crate::http::api::listing::{ListingJson, Pieces};
use crate::http::api::model::{CleanedUp, Counts, UserConnections};
use crate::store::{unix_now, ConnectionRecord, Cursor, Direct};

/// How long the command line waits for Redis to answer.
const REDIS_ANSWER: Duration = Duration::from_secs(5);

/// Users per page the command line reads and prints at a time.
const PAGE: usize = 1_000;

pub(super) enum Registry {
    /// Boxed: one is made per command, and it is the larger by far.
    Redis(Box<Direct>),
    Node(AdminClient),
}

/// One page as the command line prints it.
struct Page {
    user_count: usize,
    total_connections: usize,
    records: Vec<ConnectionRecord>,
    next: Option<String>,
}

impl Registry {
    pub(super) async fn open(config: &Config) -> Result<Registry, CliError> {
        if config.uses_redis() {
            let redis = Direct::connect(config, REDIS_ANSWER).await?;
            Ok(Registry::Redis(Box::new(redis)))
        } else {
            Ok(Registry::Node(AdminClient::new(config)?))
        }
    }

    /// Removes the records not beaten for `timeout` seconds.
    pub(super) async fn cleanup(&self, timeout: f64) -> Result<CleanedUp, CliError> {
        match self {
            Registry::Redis(redis) => Ok(redis.sweep(unix_now() - timeout).await?.into()),
            Registry::Node(node) => node.cleanup(timeout).await,
        }
    }

    /// Removes every record; running nodes write their live ones back.
    pub(super) async fn clear(&self) -> Result<Counts, CliError> {
        match self {
            Registry::Redis(redis) => {
                let (cleared, untold) = redis.clear().await?;
                match untold {
                    Some(e) => Err(CliError::Runtime(format!(
                        "cleared, but could not tell running nodes: {e}"
                    ))),
                    None => Ok(cleared.into()),
                }
            }
            Registry::Node(node) => node.clear().await,
        }
    }

    /// One user's connections, with the node holding each.
    pub(super) async fn user(
        &self,
        user: &str,
    ) -> Result<(UserConnections, Vec<ConnectionRecord>), CliError> {
        match self {
            Registry::Redis(redis) => {
                let records = redis.list_user(user).await?;
                Ok((UserConnections::new(user, &records), records))
            }
            Registry::Node(node) => {
                let list = node.user(user).await?;
                let node_id = node.node_id().await?;
                let records = list
                    .connections
                    .iter()
                    .cloned()
                    .map(|c| c.into_record(&node_id))
                    .collect();
                Ok((list, records))
            }
        }
    }

    /// The whole registry in words: the totals, then a table printed a
    /// page at a time, as each page is read.
    pub(super) async fn print_all(&self) -> Result<(), CliError> {
        // The embedded engine's node: the NODE column shows it (its own
        // config may name another id than the command line's).
        let node_id = match self {
            Registry::Node(node) => Some(node.node_id().await?),
            Registry::Redis(_) => None,
        };
        let mut cursor = String::new();
        let mut header = true;
        let mut first = true;
        loop {
            let page = self.page(&cursor, node_id.as_deref()).await?;
            if first {
                output::totals(page.user_count, page.total_connections);
                first = false;
            }
            output::table(page.records.iter(), header);
            header &= page.records.is_empty();
            match page.next {
                Some(next) => cursor = next,
                None => return Ok(()),
            }
        }
    }

    async fn page(&self, cursor: &str, node_id: Option<&str>) -> Result<Page, CliError> {
        match self {
            Registry::Redis(redis) => {
                let after = match cursor {
                    "" => None,
                    text => Some(
                        text.parse::<Cursor>()
                            .map_err(|e| CliError::Runtime(format!("cursor: {e}")))?,
                    ),
                };
                let page = redis.list_page(after.as_ref(), PAGE).await?;
                Ok(Page {
                    user_count: page.user_count,
                    total_connections: page.total_connections,
                    records: page.users.into_iter().flat_map(|(_, list)| list).collect(),
                    next: page.next.map(|c| c.to_string()),
                })
            }
            Registry::Node(node) => {
                let node_id = node_id.unwrap_or_default();
                let page = node.page(cursor, PAGE).await?;
                Ok(Page {
                    user_count: page.user_count,
                    total_connections: page.total_connections,
                    records: page
                        .connection_details
                        .into_values()
                        .flatten()
                        .map(|c| c.into_record(node_id))
                        .collect(),
                    next: page.next_cursor,
                })
            }
        }
    }

    /// The whole registry as the `data` of the API's listing, written to
    /// standard output piece by piece: neither is ever held whole.
    pub(super) async fn print_all_json(self) -> Result<(), CliError> {
        let mut out = output::stdout_pieces();
        match self {
            Registry::Redis(redis) => {
                let mut json = ListingJson::new(*redis);
                while let Some(piece) = json.next_piece().await? {
                    out.write_all(piece.as_bytes())
                        .map_err(output::write_error)?;
                }
                writeln!(out).map_err(output::write_error)
            }
            Registry::Node(node) => node.listing_to("/connections/", &mut out).await,
        }
    }
}
