//! A running node: [`Node`] owns its state and what it does with it. The
//! streams it holds ([`hub`], each with its [`queue`]), the one delivery
//! path ([`router`]), a stream's admission and session ([`session`]),
//! frames encoded once ([`frame`]), what it reports of itself
//! ([`report`]), and what limits it (connect rate, memory given back,
//! token lifetimes in [`expiry`]). It
//! knows nothing of HTTP; the store behind it knows nothing of the hub,
//! and nothing above the node reaches the store.

use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use bytes::Bytes;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{Config, HistoryConfig};
use crate::metrics::Metrics;
use crate::store::nodes::{Deployment, NodeStatus};
use crate::store::{
    self, Backend, Cleared, ConnectionRecord, Cursor, Health, LiveConn, Open, Page, Removed, Store,
    TopicPresence, TopicsPage, Wrote,
};
use crate::throttle::LogThrottle;
use expiry::Expiries;
use hub::{Hub, HubError};
use queue::Receiver;
use ratelimit::ConnectLimiter;
use router::{Outgoing, Router, Sent};

pub(crate) mod expiry;
pub(crate) mod frame;
pub(crate) mod hub;
pub(crate) mod queue;
pub(crate) mod ratelimit;
pub(crate) mod report;
pub(crate) mod router;
pub(crate) mod session;
pub(crate) mod trim;

/// Why a stream was not admitted.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Refused {
    /// `limits.max_connect_rate` reached; the wait until a slot frees.
    #[error("too many new streams on this node (limits.max_connect_rate = {rate}/s); retry later")]
    Rate { rate: u64, wait: Duration },
    /// The hub is full or closing.
    #[error("{0}")]
    Hub(#[from] HubError),
    /// The store could not record it.
    #[error("cannot register the connection: {0}")]
    Store(#[source] store::StoreError),
}

/// A stream the hub and the store both hold: its queue, and how many
/// connections its user has on every node.
pub(crate) struct Registered {
    pub(crate) rx: Receiver,
    pub(crate) user_count: usize,
    /// Where ids are pairs and it was asked for: where the stream starts.
    pub(crate) tops: Option<store::Pos>,
}

/// The state of one running node, shared by its listeners and background
/// tasks. The live config is swapped whole on reload.
pub(crate) struct Node {
    config: RwLock<Arc<Config>>,
    id: String,
    /// When this node started (unix seconds): its reports carry it, so
    /// that a restart is told from a long run.
    started_at: f64,
    hub: Arc<Hub>,
    /// Token-mode streams, closed when their token runs out.
    expiries: Arc<Expiries>,
    router: Router,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
    connect_limiter: ConnectLimiter,
    /// Streams the open-file limit allows.
    fd_cap: usize,
    /// One log line per interval for refused streams, however many.
    refusals: Mutex<LogThrottle>,
    /// What the reporter sampled, for the admin console.
    reports: report::Reports,
}

impl Node {
    /// Opens the store the backend reaches, with this node's hub as where
    /// its deliveries go; the store's background tasks join `tasks` and
    /// end with `shutdown`.
    pub(crate) async fn open(
        config: Config,
        backend: Backend,
        shutdown: CancellationToken,
        tasks: &TaskTracker,
        fd_cap: usize,
    ) -> store::Result<Self> {
        let metrics = Arc::new(Metrics::new());
        let hub = Arc::new(Hub::new(metrics.clone()));
        let store = Store::open(
            backend,
            Open {
                config: &config,
                link: Arc::new(router::Delivery::new(hub.clone())),
                metrics: metrics.clone(),
                shutdown: shutdown.clone(),
                tasks,
            },
        )
        .await?;
        let id = config.node_id();
        let node = Self {
            config: RwLock::new(Arc::new(config)),
            router: Router::new(store, hub.clone(), metrics.clone(), id.clone()),
            id,
            started_at: store::unix_now(),
            hub,
            expiries: Arc::default(),
            metrics,
            shutdown,
            connect_limiter: ConnectLimiter::new(),
            fd_cap,
            refusals: Mutex::new(LogThrottle::new(Duration::from_secs(10))),
            reports: report::Reports::default(),
        };
        node.publish_max_streams();
        Ok(node)
    }

    /// The config in force now (reloads swap it).
    pub(crate) fn config(&self) -> Arc<Config> {
        self.config
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub(crate) fn set_config(&self, config: Config) {
        *self.config.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(config);
        self.publish_max_streams();
    }

    /// The node's stream cap now: `limits.max_connections`, or less if the
    /// open-file limit is lower.
    pub(crate) fn max_streams(&self) -> usize {
        self.config().limits.max_connections.min(self.fd_cap)
    }

    /// Exports [`Node::max_streams`] as `sse_notify_max_streams`, so that
    /// an alert can compare live streams with the cap; at start and on
    /// every reload, the only times it changes.
    fn publish_max_streams(&self) {
        self.metrics
            .max_streams
            .set(i64::try_from(self.max_streams()).unwrap_or(i64::MAX));
    }

    /// Streams the open-file limit allows.
    pub(crate) fn fd_cap(&self) -> usize {
        self.fd_cap
    }

    pub(crate) fn id(&self) -> &str {
        &self.id
    }

    pub(crate) fn started_at(&self) -> f64 {
        self.started_at
    }

    /// What the reporter ([`report::run`]) sampled.
    pub(crate) fn reports(&self) -> &report::Reports {
        &self.reports
    }

    pub(crate) fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Cancelled when the node shuts down.
    pub(crate) fn shutdown(&self) -> &CancellationToken {
        &self.shutdown
    }

    /// How many streams this node holds now.
    pub(crate) fn live_streams(&self) -> usize {
        self.hub.len()
    }

    /// `"memory"` or `"redis"`.
    pub(crate) fn engine(&self) -> &'static str {
        self.router.store().engine()
    }

    /// How the store is doing.
    pub(crate) async fn health(&self) -> Health {
        self.router.store().health().await
    }

    /// Whether a send has queued its frames here by the time it returns
    /// (the embedded engine).
    pub(crate) fn queues_on_send(&self) -> bool {
        self.router.store().queues_on_send()
    }

    /// Admits a stream: the connect rate, then the hub (its queue; refused
    /// when the node is full), then the store, which tells how many
    /// connections its user has on every node. Refused or abandoned midway
    /// (the caller dropped the future), it is taken out of both again; once
    /// admitted, [`Node::unregister`] takes it out.
    ///
    /// `tops`: read where the stream starts first (a stream without
    /// `Last-Event-ID` where ids are pairs): before its queue can take any
    /// message, so that every message it gets is after it.
    pub(crate) async fn register(
        &self,
        config: &Config,
        conn: &LiveConn,
        kill: CancellationToken,
        tops: bool,
    ) -> Result<Registered, Refused> {
        let refused = |e: Refused| {
            self.metrics.rejected_connections.inc();
            e
        };
        let rate = config.limits.max_connect_rate;
        if let Err(wait) = self.connect_limiter.try_acquire(rate) {
            return Err(refused(Refused::Rate { rate, wait }));
        }
        let tops = match tops {
            true => self
                .router
                .tops(conn)
                .await
                .map_err(|e| refused(Refused::Store(e)))?,
            false => None,
        };
        let rx = match self
            .hub
            .register(conn, config.stream.queue_size, self.max_streams(), kill)
        {
            Ok(rx) => rx,
            Err(e) => {
                if let HubError::Full(limit) = e {
                    self.log_refusal(limit);
                }
                return Err(refused(e.into()));
            }
        };
        // From here on, any exit (error, caller gone mid-registration)
        // takes the stream out of the hub and the store again.
        let mut undo = Undo {
            node: self,
            connection_id: &conn.connection_id,
            armed: true,
        };
        let user_count = self
            .router
            .register(conn)
            .await
            .map_err(|e| refused(Refused::Store(e)))?;
        undo.armed = false;
        self.router.registered(&conn.connection_id);
        self.metrics.connects.inc();
        Ok(Registered {
            rx,
            user_count,
            tops,
        })
    }

    fn log_refusal(&self, limit: usize) {
        let allowed = self
            .refusals
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .allow();
        if let Some(suppressed) = allowed {
            tracing::warn!(
                limit,
                suppressed,
                "stream refused: limits.max_connections (or the open-file limit) reached"
            );
        }
    }

    /// A stream ended: out of the hub first (so no snapshot writes it
    /// back), then out of the store, with what it wrote when it was sent
    /// one-tab messages.
    pub(crate) fn unregister(&self, connection_id: &str, wrote: Option<Wrote>) {
        self.router.unregister(connection_id, wrote);
    }

    /// A token-mode stream: closed at `exp` (as [`Expiries::clamp`] keeps
    /// it) unless [`Node::forget_expiry`] comes first.
    pub(crate) fn expire_at(&self, exp: u32, connection_id: &str) {
        self.expiries.add(exp, connection_id);
    }

    pub(crate) fn forget_expiry(&self, exp: u32, connection_id: &str) {
        self.expiries.remove(exp, connection_id);
    }

    /// Until shutdown: closes the streams whose token ran out.
    pub(crate) fn expiry_task(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        expiry::run(
            self.expiries.clone(),
            self.hub.clone(),
            self.shutdown.clone(),
        )
    }

    /// Every stream gets the shared heartbeat frame; the store refreshes
    /// the records of what this node holds.
    pub(crate) fn heartbeat(&self, frame: &Bytes) {
        self.hub.heartbeat(frame);
        self.router.store().heartbeat();
    }

    /// Gives memory freed by closed streams back.
    pub(crate) fn shrink(&self) {
        self.hub.shrink();
    }

    /// Closes every stream, each with its own last frame; how many.
    pub(crate) fn close_all(&self, last: impl Fn() -> Bytes) -> usize {
        self.hub.close_all(last)
    }

    /// The node is leaving: the store removes the records of what it
    /// still holds.
    pub(crate) async fn close_store(&self) {
        self.router.store().shutdown().await;
    }

    /// Publishes this node's report and reads the deployment's.
    pub(crate) async fn report(&self, me: &NodeStatus) -> store::Result<Deployment> {
        self.router.store().report_node(me).await
    }

    /// This node stops reporting: its report goes at once.
    pub(crate) async fn forget_report(&self) -> store::Result<()> {
        self.router.store().forget_node(&self.id).await
    }

    /// See [`Router::send`].
    pub(crate) async fn send(
        &self,
        msgs: Vec<Outgoing>,
        history: &HistoryConfig,
    ) -> store::Result<Vec<Sent>> {
        self.router.send(msgs, history).await
    }

    /// See [`Router::disconnect_user`].
    pub(crate) async fn disconnect_user(&self, username: &str) -> store::Result<Removed> {
        self.router.disconnect_user(username).await
    }

    /// See [`Router::clear`].
    pub(crate) async fn clear(&self) -> store::Result<Cleared> {
        self.router.clear().await
    }

    /// See [`Router::cleanup`].
    pub(crate) async fn cleanup(&self, timeout_secs: f64) -> store::Result<Removed> {
        self.router.cleanup(timeout_secs).await
    }

    /// See [`Router::list_page`].
    pub(crate) async fn list_page(
        &self,
        after: Option<&Cursor>,
        limit: usize,
    ) -> store::Result<Page> {
        self.router.list_page(after, limit).await
    }

    pub(crate) async fn list_user(&self, user: &str) -> store::Result<Vec<ConnectionRecord>> {
        self.router.list_user(user).await
    }

    /// See [`Router::topics_page`].
    pub(crate) async fn topics_page(
        &self,
        after: Option<&Cursor>,
        limit: usize,
    ) -> store::Result<TopicsPage> {
        self.router.topics_page(after, limit).await
    }

    /// See [`Router::topic`].
    pub(crate) async fn topic(&self, topic: &str) -> store::Result<TopicPresence> {
        self.router.topic(topic).await
    }

    /// The registry, for a whole listing (users or topics) read in steps.
    pub(crate) fn listing(&self) -> Store {
        self.router.store().clone()
    }
}

/// Takes a stream out of the hub and the store unless disarmed: a
/// registration that did not finish.
struct Undo<'a> {
    node: &'a Node,
    connection_id: &'a str,
    armed: bool,
}

impl Drop for Undo<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.node.unregister(self.connection_id, None);
        }
    }
}
