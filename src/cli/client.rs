//! The command line's client of a running node's admin API: one typed
//! call per route, the answers read into the shapes the routes serialize
//! ([`crate::http::api::model`]). A node that does not answer, or an error
//! answer, is one [`CliError`] line.

use std::io::Write;
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::value::RawValue;

use super::CliError;
use crate::config::{Config, ListenAddr};
use crate::http::api::model::{
    BatchSent, CleanedUp, ConnectionsPage, Counts, Envelope, Health, Refusal, Sent, TopicFollowers,
    Topics, UserConnections,
};

/// A send body (README "HTTP API").
#[derive(Debug, Serialize)]
pub(super) struct SendBody<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub topic: Option<&'a str>,
    /// Left out when `None`: a broadcast, or a topic's message (which
    /// refuses a `to`, even a null one).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub to: Option<&'a str>,
    pub event: &'a str,
    pub data: &'a RawValue,
    /// `Some(false)` with `--first`; left out otherwise (true is the
    /// default).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub all_connections: Option<bool>,
}

/// The node's admin listener, as `server.admin_listen` and `api.token`
/// of the command line's config name it.
pub(super) struct AdminClient {
    /// `http://host:port` (an unspecified address is reached on loopback);
    /// over a Unix socket `http://localhost`, a name for the `Host` header
    /// only (the client connects to the socket file whatever it names).
    root: String,
    /// The socket file, when the listener is one (errors name it).
    socket: Option<String>,
    base_path: String,
    token: String,
    http: reqwest::Client,
}

impl AdminClient {
    pub(super) fn new(config: &Config) -> Result<Self, CliError> {
        let mut builder = reqwest::Client::builder().timeout(Duration::from_secs(30));
        let (root, socket) = match config.admin_listen() {
            ListenAddr::Tcp(mut addr) => {
                if addr.ip().is_unspecified() {
                    addr.set_ip(if addr.is_ipv4() {
                        std::net::Ipv4Addr::LOCALHOST.into()
                    } else {
                        std::net::Ipv6Addr::LOCALHOST.into()
                    });
                }
                (format!("http://{addr}"), None)
            }
            ListenAddr::Unix(path) => {
                let shown = ListenAddr::Unix(path.clone()).to_string();
                // reqwest's own transport for it: no second HTTP client in
                // the binary.
                builder = builder.unix_socket(path);
                ("http://localhost".to_string(), Some(shown))
            }
        };
        let http = builder
            .build()
            .map_err(|e| CliError::Runtime(e.to_string()))?;
        Ok(AdminClient {
            root,
            socket,
            base_path: config.server.base_path.clone(),
            token: config.api.token.expose().to_string(),
            http,
        })
    }

    pub(super) async fn send(&self, body: &SendBody<'_>) -> Result<Sent, CliError> {
        self.call(Method::POST, "/send/", Some(body)).await
    }

    /// Up to `api.max_batch` send bodies (each a JSON object).
    pub(super) async fn send_batch(&self, messages: &[&RawValue]) -> Result<Vec<Sent>, CliError> {
        #[derive(Serialize)]
        struct Batch<'a> {
            messages: &'a [&'a RawValue],
        }
        let sent: BatchSent = self
            .call(Method::POST, "/send/batch/", Some(&Batch { messages }))
            .await?;
        Ok(sent.results)
    }

    pub(super) async fn cleanup(&self, timeout: f64) -> Result<CleanedUp, CliError> {
        #[derive(Serialize)]
        struct Cleanup {
            timeout: f64,
        }
        self.call(Method::POST, "/cleanup/", Some(&Cleanup { timeout }))
            .await
    }

    pub(super) async fn clear(&self) -> Result<Counts, CliError> {
        self.call(Method::POST, "/connections/", None::<&()>).await
    }

    pub(super) async fn user(&self, user: &str) -> Result<UserConnections, CliError> {
        let path = format!(
            "/connections/{}/",
            percent_encoding::utf8_percent_encode(user, percent_encoding::NON_ALPHANUMERIC)
        );
        self.call(Method::GET, &path, None::<&()>).await
    }

    /// Who follows `topic`.
    pub(super) async fn topic(&self, topic: &str) -> Result<TopicFollowers, CliError> {
        let path = format!(
            "/topics/{}/",
            percent_encoding::utf8_percent_encode(topic, percent_encoding::NON_ALPHANUMERIC)
        );
        self.call(Method::GET, &path, None::<&()>).await
    }

    /// One page of `limit` followed topics after `cursor` ("" for the
    /// first).
    pub(super) async fn topics_page(&self, cursor: &str, limit: usize) -> Result<Topics, CliError> {
        let path = format!("/topics/?limit={limit}&cursor={cursor}");
        self.call(Method::GET, &path, None::<&()>).await
    }

    /// One page of `limit` users after `cursor` ("" for the first).
    pub(super) async fn page(
        &self,
        cursor: &str,
        limit: usize,
    ) -> Result<ConnectionsPage, CliError> {
        let path = format!("/connections/?limit={limit}&cursor={cursor}");
        self.call(Method::GET, &path, None::<&()>).await
    }

    /// The `node_id` the answering node reports on `/healthz`: the command
    /// line's own config may not name it (or name another).
    pub(super) async fn node_id(&self) -> Result<String, CliError> {
        let url = format!("{}/healthz", self.root);
        let resp = self
            .http
            .get(&url)
            .send()
            .await
            .map_err(|e| self.unreachable(&url, &e))?;
        let health: Health = resp
            .json()
            .await
            .map_err(|e| CliError::Runtime(format!("bad answer from {url}: {e}")))?;
        Ok(health.node_id)
    }

    /// The whole listing at `path` (`/connections/`, `/topics/`),
    /// streamed by the node, copied to `out` as it arrives without the
    /// envelope around its `data` object.
    pub(super) async fn listing_to(
        &self,
        path: &str,
        out: &mut impl Write,
    ) -> Result<(), CliError> {
        const HEAD: &[u8] = b"{\"code\":200,\"data\":";
        let url = self.url(path);
        let mut resp = self
            .authorized(self.http.get(&url))
            .send()
            .await
            .map_err(|e| self.unreachable(&url, &e))?;
        let status = resp.status();
        if !status.is_success() {
            let refusal: Refusal = resp.json().await.unwrap_or(Refusal { message: None });
            return Err(refused(status, &refusal, path));
        }
        let cut = |e: &dyn std::fmt::Display| CliError::Runtime(format!("listing from {url}: {e}"));
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

    /// The node did not answer: where the client looked, the URL or the
    /// socket file.
    fn unreachable(&self, url: &str, e: &reqwest::Error) -> CliError {
        let at = match &self.socket {
            Some(socket) => format!("{socket} ({url})"),
            None => url.to_string(),
        };
        CliError::Runtime(format!(
            "no sse-notify node answers at {at} (server.admin_listen): {e}"
        ))
    }

    fn url(&self, path: &str) -> String {
        format!("{}{}{path}", self.root, self.base_path)
    }

    fn authorized(&self, req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        if self.token.is_empty() {
            req
        } else {
            req.bearer_auth(&self.token)
        }
    }

    /// One route: the answer's `data` read as `T`.
    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&impl Serialize>,
    ) -> Result<T, CliError> {
        let url = self.url(path);
        let mut req = self.authorized(self.http.request(method, &url));
        if let Some(body) = body {
            req = req.json(body);
        }
        let resp = req.send().await.map_err(|e| self.unreachable(&url, &e))?;
        let status = resp.status();
        let bad =
            |e: &dyn std::fmt::Display| CliError::Runtime(format!("bad answer from {url}: {e}"));
        let bytes = resp.bytes().await.map_err(|e| bad(&e))?;
        if !status.is_success() {
            let refusal: Refusal = serde_json::from_slice(&bytes).map_err(|e| bad(&e))?;
            return Err(refused(status, &refusal, path));
        }
        let answer: Envelope<T> = serde_json::from_slice(&bytes).map_err(|e| bad(&e))?;
        Ok(answer.data)
    }
}

/// An error envelope as one line: a refusal of what was asked is a usage
/// error, a missing token or an unavailable node a runtime failure.
fn refused(status: StatusCode, refusal: &Refusal, path: &str) -> CliError {
    let message = refusal.message.as_deref().unwrap_or("no message");
    let what = path.trim_matches('/').split('/').next().unwrap_or(path);
    let message = format!("{what} failed ({}): {message}", status.as_u16());
    if status.is_client_error() && status != StatusCode::UNAUTHORIZED {
        CliError::Usage(message)
    } else {
        CliError::Runtime(message)
    }
}
