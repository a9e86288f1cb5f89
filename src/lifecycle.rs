//! Start order, background tasks (heartbeat ticker, stale sweeper, token
//! expiry), signals (SIGHUP reload + clear, SIGTERM/SIGINT graceful stop)
//! and the shutdown sequence (README "Signals and lifecycle"). One [`CancellationToken`] is passed down to
//! everything; every task is owned by a [`TaskTracker`] and joined.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{Config, ListenAddr};
use crate::http::auth::{AuthSetupError, Authenticator};
use crate::http::listener::AdminListener;
use crate::http::{admin, api, socket, Front};
use crate::node::frame;
use crate::node::Node;
use crate::store::{unix_now, Backend, StoreError};
use crate::throttle::LogThrottle;

#[derive(Debug, thiserror::Error)]
pub enum LifecycleError {
    #[error("cannot listen on {addr} (config key `{key}`): {source}")]
    Bind {
        key: &'static str,
        addr: ListenAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Auth(#[from] AuthSetupError),
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("config: {0}")]
    Config(#[from] crate::config::ConfigError),
}

impl LifecycleError {
    /// 2 for what the config file got wrong, 1 for runtime failures.
    pub fn exit_code(&self) -> u8 {
        match self {
            LifecycleError::Auth(_) | LifecycleError::Config(_) => 2,
            _ => 1,
        }
    }
}

/// Applies a new log filter (`log.level`) to the running subscriber.
pub type LogReload = Box<dyn Fn(&str) -> Result<(), String> + Send + Sync>;

/// Both listeners, bound before the daemon starts so that tests can bind
/// port 0 and read the addresses. The admin one may be a Unix socket.
pub struct Listeners {
    pub public: TcpListener,
    pub admin: AdminListener,
}

/// Listen backlog: a reconnect wave arrives faster than one accept loop
/// takes it, and a full backlog drops SYNs that clients retry only after a
/// second. The kernel caps it at `net.core.somaxconn`.
const BACKLOG: u32 = 16384;

impl Listeners {
    pub async fn bind(config: &Config) -> Result<Self, LifecycleError> {
        let bind = |key: &'static str, addr: std::net::SocketAddr| {
            let listen = || {
                let socket = if addr.is_ipv4() {
                    tokio::net::TcpSocket::new_v4()?
                } else {
                    tokio::net::TcpSocket::new_v6()?
                };
                socket.set_reuseaddr(true)?;
                socket.bind(addr)?;
                socket.listen(BACKLOG)
            };
            listen().map_err(|source| LifecycleError::Bind {
                key,
                addr: ListenAddr::Tcp(addr),
                source,
            })
        };
        let public = bind("server.listen", config.listen_addr())?;
        defer_accept(&public);
        let admin = match config.admin_listen() {
            ListenAddr::Tcp(addr) => AdminListener::Tcp(bind("server.admin_listen", addr)?),
            ListenAddr::Unix(path) => {
                let mode = config.server.admin_socket_mode()?;
                let gid = config.server.admin_socket_gid()?;
                AdminListener::bind_unix(&path, mode, gid, BACKLOG).map_err(|source| {
                    LifecycleError::Bind {
                        key: "server.admin_listen",
                        addr: ListenAddr::Unix(path.clone()),
                        source,
                    }
                })?
            }
        };
        Ok(Self { public, admin })
    }
}

/// Wakes the public accept loop only once a connection's request has
/// arrived, not at its handshake (nginx's `listen ... deferred`): a
/// connect wave then costs one wake-up per stream instead of two, and a
/// socket that never sends anything waits in the kernel instead of in a
/// task. The kernel still hands it over after the period (as long as the
/// head timeout), and the head timeout applies from there.
fn defer_accept(listener: &TcpListener) {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        let secs = libc::c_int::try_from(crate::http::public::HEAD_TIMEOUT.as_secs())
            .unwrap_or(libc::c_int::MAX);
        // SAFETY: setsockopt reads `secs` for the duration of the call.
        let rc = unsafe {
            libc::setsockopt(
                listener.as_raw_fd(),
                libc::IPPROTO_TCP,
                libc::TCP_DEFER_ACCEPT,
                (&secs as *const libc::c_int).cast(),
                size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            tracing::debug!(error = %std::io::Error::last_os_error(), "TCP_DEFER_ACCEPT not set");
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = listener;
}

/// The daemon's runtime: `server.worker_threads` threads, or one per CPU
/// core when it is 0 (tokio's default).
pub fn runtime_builder(config: &Config) -> tokio::runtime::Builder {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if config.server.worker_threads > 0 {
        builder.worker_threads(config.server.worker_threads);
    }
    builder
}

/// Connects to the engine the config names (Redis: retrying with backoff
/// for `redis.connect_timeout_secs`).
pub async fn connect(config: &Config) -> Result<Backend, LifecycleError> {
    Ok(Backend::connect(config).await?)
}

/// A running node.
pub struct Daemon {
    app: Arc<Front>,
    /// The file a reload reads again.
    config_path: Option<PathBuf>,
    pub public_addr: std::net::SocketAddr,
    /// The admin listener: its TCP address, or its socket file.
    pub admin_addr: ListenAddr,
    tasks: TaskTracker,
    servers: TaskTracker,
    log_reload: Option<LogReload>,
}

impl Daemon {
    /// Opens the store, clears the registry (if `startup.clear`) and
    /// starts serving.
    pub async fn start(
        config: Config,
        config_path: Option<PathBuf>,
        backend: Backend,
        listeners: Listeners,
        log_reload: Option<LogReload>,
    ) -> Result<Daemon, LifecycleError> {
        let shutdown = CancellationToken::new();
        let auth = Authenticator::from_config(&config)?;
        if auth.is_insecure() {
            tracing::warn!("auth.mode = \"none\": anyone can open a stream as any user with ?user=NAME; for development only");
        }
        let startup_clear = config.startup.clear;
        let grace = Duration::from_secs(config.server.shutdown_grace_secs);
        let tasks = TaskTracker::new();
        let opened = Node::open(
            config,
            backend,
            shutdown.clone(),
            &tasks,
            socket::stream_fd_cap(),
        )
        .await;
        let node = match opened {
            Ok(node) => Arc::new(node),
            Err(e) => {
                shutdown.cancel();
                tasks.close();
                tasks.wait().await;
                return Err(e.into());
            }
        };
        let app = Arc::new(Front::new(node.clone(), auth));
        if node.fd_cap() < node.config().limits.max_connections {
            tracing::warn!(
                max_connections = node.config().limits.max_connections,
                open_file_limit_allows = node.fd_cap(),
                "the open-file limit caps this node below limits.max_connections; streams beyond it get 503 (raise LimitNOFILE)"
            );
        }
        if startup_clear {
            let removed = node.clear().await?;
            tracing::info!(
                connections = removed.connection_count,
                users = removed.user_count,
                "startup clear"
            );
        }

        let public_addr = listeners
            .public
            .local_addr()
            .map_err(|source| LifecycleError::Bind {
                key: "server.listen",
                addr: ListenAddr::Tcp(app.config().listen_addr()),
                source,
            })?;
        let admin_addr = listeners
            .admin
            .local_addr()
            .map_err(|source| LifecycleError::Bind {
                key: "server.admin_listen",
                addr: app.config().admin_listen(),
                source,
            })?;
        // Over a Unix socket the file's mode and group decide who connects.
        if app.config().api.token.is_empty() && matches!(admin_addr, ListenAddr::Tcp(_)) {
            tracing::warn!(
                %admin_addr,
                "api.token is empty: the admin API (send, connections, cleanup) is open to anything that can reach the admin listener; set api.token unless only trusted processes can"
            );
        }
        let servers = TaskTracker::new();
        servers.spawn(crate::http::public::serve(
            listeners.public,
            app.clone(),
            shutdown.clone(),
            grace,
        ));
        servers.spawn(admin::serve(
            "admin",
            listeners.admin,
            api::routes(app.clone()),
            app.clone(),
            shutdown.clone(),
            grace,
        ));
        servers.close();
        tasks.spawn(crate::systemd::watchdog(shutdown.clone()));
        tasks.spawn(heartbeat_loop(node.clone()));
        tasks.spawn(node.expiry_task());
        tasks.spawn(memory_loop(node.clone()));
        tasks.spawn(sweep_loop(node.clone()));
        tasks.spawn(crate::node::report::run(node.clone()));
        tracing::info!(%public_addr, %admin_addr, node_id = %node.id(), engine = node.engine(), worker_threads = tokio::runtime::Handle::current().metrics().num_workers(), "sse-notify serving");
        Ok(Daemon {
            app,
            config_path,
            public_addr,
            admin_addr,
            tasks,
            servers,
            log_reload,
        })
    }

    /// How many streams this node holds now.
    pub fn live_streams(&self) -> usize {
        self.app.node().live_streams()
    }

    pub fn node_id(&self) -> &str {
        self.app.node().id()
    }

    /// `"memory"` or `"redis"`.
    pub fn engine(&self) -> &'static str {
        self.app.node().engine()
    }

    pub fn shutdown_token(&self) -> CancellationToken {
        self.app.node().shutdown().clone()
    }

    /// SIGHUP: re-read the config file (an invalid one is logged and the
    /// old kept), apply what can change live, then clear the registry.
    pub async fn reload(&self) {
        let node = self.app.node();
        match &self.config_path {
            None => tracing::info!("reload: no config file in use; defaults stay"),
            Some(path) => match Config::load(Some(path)) {
                Err(e) => {
                    tracing::error!(error = %e, "reload: invalid config; keeping the old one")
                }
                Ok(new) => self.apply(new),
            },
        }
        if let Err(e) = node.clear().await {
            node.metrics().store_errors.inc();
            tracing::error!(error = %e, "reload: clear failed");
        }
    }

    fn apply(&self, new: Config) {
        let app = &self.app;
        let old = app.config();
        let restart = old.restart_required_changes(&new);
        if !restart.is_empty() {
            tracing::warn!(keys = ?restart, "reload: these changes need a restart; their old values stay in force");
        }
        let mut effective = new;
        effective.keep_restart_values(&old);
        match Authenticator::from_config(&effective) {
            Ok(auth) => app.set_auth(auth),
            Err(e) => {
                tracing::error!(error = %e, "reload: auth settings not applied; keeping the old ones");
                effective.auth = old.auth.clone();
            }
        }
        if effective.log.level != old.log.level {
            if let Some(reload) = &self.log_reload {
                if let Err(e) = reload(&effective.log.level) {
                    tracing::error!(error = %e, "reload: log.level not applied");
                    effective.log.level = old.log.level.clone();
                }
            }
        }
        app.node().set_config(effective);
        tracing::info!("reload: config applied");
    }

    /// Handles SIGHUP, SIGTERM and SIGINT until shutdown.
    pub fn handle_signals(&self, daemon: Arc<Daemon>) -> std::io::Result<()> {
        use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
        let mut signals = signal_hook_tokio::Signals::new([SIGHUP, SIGINT, SIGTERM])?;
        let handle = signals.handle();
        let shutdown = self.app.node().shutdown().clone();
        self.tasks.spawn(async move {
            loop {
                let signal = tokio::select! {
                    _ = shutdown.cancelled() => break,
                    s = signals.next() => s,
                };
                match signal {
                    Some(SIGHUP) => {
                        tracing::info!("SIGHUP: reloading config and clearing the registry");
                        crate::systemd::reloading();
                        daemon.reload().await;
                        crate::systemd::ready("serving");
                    }
                    Some(s) => {
                        tracing::info!(signal = s, "shutting down");
                        shutdown.cancel();
                        break;
                    }
                    None => break,
                }
            }
            handle.close();
        });
        Ok(())
    }

    /// Waits for shutdown, then: no new streams, every stream told when to
    /// come back and closed, requests finished within the grace period,
    /// this node's records removed, every task joined.
    pub async fn wait(&self) {
        let node = self.app.node();
        node.shutdown().cancelled().await;
        crate::systemd::stopping();
        let config = node.config();
        let spread = crate::node::ratelimit::reconnect_spread_ms(
            node.live_streams(),
            config.stream.retry_ms,
            config.limits.max_connect_rate,
        );
        let base = config.stream.retry_ms;
        let closed = node.close_all(|| frame::retry(base + fastrand::u64(0..=spread)));
        tracing::info!(
            streams = closed,
            reconnect_spread_ms = spread,
            "closing streams"
        );
        self.servers.wait().await;
        node.close_store().await;
        self.tasks.close();
        self.tasks.wait().await;
        tracing::info!("stopped");
    }
}

/// Every `stream.heartbeat_secs`: one shared comment frame into every
/// queue, one batched registry write.
async fn heartbeat_loop(node: Arc<Node>) {
    loop {
        let every = node.config().heartbeat_interval();
        tokio::select! {
            _ = node.shutdown().cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        let now = unix_now();
        node.heartbeat(&frame::heartbeat(now as u64));
    }
}

/// Every second: give freed memory back when many streams closed (see
/// [`crate::node::trim::Trimmer`]). Often enough that a steady churn keeps the
/// RSS flat instead of a sawtooth; the check itself is two counters.
async fn memory_loop(node: Arc<Node>) {
    let mut trimmer = crate::node::trim::Trimmer::default();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = node.shutdown().cancelled() => return,
            _ = tick.tick() => {}
        }
        let closes = node.metrics().disconnects.get();
        if trimmer.tick(node.live_streams(), closes, || node.shrink()) {
            tracing::debug!(
                streams = node.live_streams(),
                "many streams closed; free memory returned"
            );
        }
    }
}

/// Every `sweep.interval_secs`: remove records not heartbeated for
/// `sweep.stale_timeout_secs` (left by a node that died).
async fn sweep_loop(node: Arc<Node>) {
    let mut log = LogThrottle::new(Duration::from_secs(60));
    loop {
        let every = node.config().sweep_interval();
        tokio::select! {
            _ = node.shutdown().cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        let timeout = node.config().sweep.stale_timeout_secs as f64;
        if let Err(e) = node.cleanup(timeout).await {
            node.metrics().store_errors.inc();
            if let Some(suppressed) = log.allow() {
                tracing::error!(error = %e, suppressed, "sweep failed; will retry next interval");
            }
        }
    }
}

/// `sse-notify serve`: connect, bind, start, handle signals, stop.
pub async fn serve(
    config: Config,
    config_path: Option<PathBuf>,
    log_reload: Option<LogReload>,
) -> Result<(), LifecycleError> {
    let backend = connect(&config).await?;
    let listeners = Listeners::bind(&config).await?;
    let daemon =
        Arc::new(Daemon::start(config, config_path, backend, listeners, log_reload).await?);
    if let Err(e) = daemon.handle_signals(daemon.clone()) {
        tracing::error!(error = %e, "cannot install signal handlers");
        daemon.shutdown_token().cancel();
    }
    crate::systemd::ready("serving");
    daemon.wait().await;
    Ok(())
}
