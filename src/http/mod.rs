//! The HTTP side: the public listener (the stream, a hand-written HTTP/1
//! server in [`public`] answering through [`stream`]), the admin listener
//! (hyper + warp in [`admin`], routes in [`api`]), stream auth and the one
//! error envelope ([`envelope`]). It knows nothing of engines: everything
//! goes through the node's router.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::metrics::Metrics;
use crate::node::expiry::Expiries;
use crate::node::hub::Hub;
use crate::node::ratelimit::ConnectLimiter;
use crate::node::router::Router;
use auth::Authenticator;

pub(crate) mod admin;
pub(crate) mod api;
pub(crate) mod auth;
pub(crate) mod console;
pub(crate) mod deadline;
pub(crate) mod envelope;
pub(crate) mod listener;
pub(crate) mod listing;
pub(crate) mod public;
pub(crate) mod socket;
pub(crate) mod stream;

/// The state one running node shares between its routes and background
/// tasks. The live config and authenticator are swapped whole on reload.
pub(crate) struct App {
    config: RwLock<Arc<Config>>,
    auth: RwLock<Arc<Authenticator>>,
    pub config_path: Option<PathBuf>,
    pub node_id: String,
    pub hub: Arc<Hub>,
    /// Token-mode streams, closed when their token runs out.
    pub expiries: Arc<Expiries>,
    pub router: Router,
    pub metrics: Arc<Metrics>,
    pub shutdown: CancellationToken,
    pub connect_limiter: ConnectLimiter,
    /// Streams the open-file limit allows.
    pub fd_cap: usize,
    /// One log line per interval for refused streams, however many.
    pub refusals: std::sync::Mutex<crate::throttle::LogThrottle>,
    /// The admin console's samples and live ticks.
    pub console: console::Console,
}

pub(crate) struct AppParts {
    pub config: Config,
    pub config_path: Option<PathBuf>,
    pub auth: Authenticator,
    pub hub: Arc<Hub>,
    pub router: Router,
    pub metrics: Arc<Metrics>,
    pub shutdown: CancellationToken,
    pub fd_cap: usize,
}

impl App {
    pub(crate) fn new(p: AppParts) -> Self {
        Self {
            node_id: p.config.node_id(),
            config: RwLock::new(Arc::new(p.config)),
            auth: RwLock::new(Arc::new(p.auth)),
            config_path: p.config_path,
            hub: p.hub,
            expiries: Arc::default(),
            router: p.router,
            metrics: p.metrics,
            shutdown: p.shutdown,
            connect_limiter: ConnectLimiter::new(),
            fd_cap: p.fd_cap,
            refusals: std::sync::Mutex::new(crate::throttle::LogThrottle::new(
                std::time::Duration::from_secs(10),
            )),
            console: console::Console::default(),
        }
    }

    /// The config in force now (reloads swap it).
    pub(crate) fn config(&self) -> Arc<Config> {
        self.config
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The node's stream cap now: `limits.max_connections`, or less if the
    /// open-file limit is lower.
    pub(crate) fn max_streams(&self) -> usize {
        self.config().limits.max_connections.min(self.fd_cap)
    }

    pub(crate) fn auth(&self) -> Arc<Authenticator> {
        self.auth.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub(crate) fn set_config(&self, config: Config) {
        *self.config.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(config);
        self.publish_max_streams();
    }

    /// Exports [`App::max_streams`] as `sse_notify_max_streams`, so that an
    /// alert can compare live streams with the cap; called at start and on
    /// every reload, the only times it changes.
    pub(crate) fn publish_max_streams(&self) {
        self.metrics
            .max_streams
            .set(i64::try_from(self.max_streams()).unwrap_or(i64::MAX));
    }

    pub(crate) fn set_auth(&self, auth: Authenticator) {
        *self.auth.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(auth);
    }
}

/// `/connections/{username}` (percent-encoded) to the username: the
/// API's route and the console's share the shape.
pub(crate) fn path_username(rest: &str) -> Option<String> {
    let user = rest.strip_prefix("/connections/")?;
    if user.is_empty() || user.contains('/') {
        return None;
    }
    percent_encoding::percent_decode_str(user)
        .decode_utf8()
        .ok()
        .map(|u| u.into_owned())
}
