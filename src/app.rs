//! The state one running node shares between its routes and background
//! tasks. The live config and authenticator are swapped whole on reload.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::auth::Authenticator;
use crate::config::Config;
use crate::history::{Appender, History, Recent};
use crate::hub::Hub;
use crate::metrics::Metrics;
use crate::presence::Presence;
use crate::ratelimit::ConnectLimiter;
use crate::registry::Registry;
use crate::router::Router;

pub struct App {
    config: RwLock<Arc<Config>>,
    auth: RwLock<Arc<Authenticator>>,
    pub config_path: Option<PathBuf>,
    pub node_id: String,
    /// This process on the bus: the node id plus a random part, so that
    /// two nodes configured with the same node_id still hear each other.
    pub bus_origin: String,
    pub hub: Arc<Hub>,
    pub registry: Registry,
    pub presence: Presence,
    pub router: Router,
    pub metrics: Arc<Metrics>,
    pub shutdown: CancellationToken,
    /// True while this node is subscribed to the bus.
    pub bus_up: watch::Receiver<bool>,
    pub connect_limiter: ConnectLimiter,
    pub recent: Recent,
    /// Streams the open-file limit allows ([`crate::server::stream_fd_cap`]).
    pub fd_cap: usize,
    /// One log line per interval for refused streams, however many.
    pub refusals: std::sync::Mutex<crate::throttle::LogThrottle>,
}

pub struct AppParts {
    pub bus_origin: String,
    pub history: Option<History>,
    pub appender: Option<Appender>,
    pub recent: Recent,
    pub config: Config,
    pub config_path: Option<PathBuf>,
    pub auth: Authenticator,
    pub hub: Arc<Hub>,
    pub registry: Registry,
    pub presence: Presence,
    pub metrics: Arc<Metrics>,
    pub shutdown: CancellationToken,
    pub bus_up: watch::Receiver<bool>,
}

impl App {
    pub fn new(p: AppParts) -> Self {
        let bus_origin = p.bus_origin;
        let router = Router {
            registry: p.registry.clone(),
            hub: p.hub.clone(),
            presence: p.presence.clone(),
            metrics: p.metrics.clone(),
            origin: bus_origin.clone(),
            history: p.history,
            appender: p.appender,
            bus_up: p.bus_up.clone(),
        };
        Self {
            node_id: p.config.node_id(),
            bus_origin,
            config: RwLock::new(Arc::new(p.config)),
            auth: RwLock::new(Arc::new(p.auth)),
            config_path: p.config_path,
            hub: p.hub,
            registry: p.registry,
            presence: p.presence,
            router,
            metrics: p.metrics,
            shutdown: p.shutdown,
            bus_up: p.bus_up,
            connect_limiter: ConnectLimiter::new(),
            recent: p.recent,
            fd_cap: crate::server::stream_fd_cap(),
            refusals: std::sync::Mutex::new(crate::throttle::LogThrottle::new(
                std::time::Duration::from_secs(10),
            )),
        }
    }

    /// The config in force now (reloads swap it).
    pub fn config(&self) -> Arc<Config> {
        self.config
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The node's stream cap now: `limits.max_connections`, or less if the
    /// open-file limit is lower.
    pub fn max_streams(&self) -> usize {
        self.config().limits.max_connections.min(self.fd_cap)
    }

    pub fn auth(&self) -> Arc<Authenticator> {
        self.auth.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn set_config(&self, config: Config) {
        *self.config.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(config);
    }

    pub fn set_auth(&self, auth: Authenticator) {
        *self.auth.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(auth);
    }
}
