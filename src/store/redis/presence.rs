//! This node's presence in the Redis registry: one task that mirrors the
//! streams the node holds into Redis. Registrations, removals, heartbeats and re-registrations (after a
//! clear or a Redis outage) all go through it, in order, so a connection
//! that left can never be written back as a zombie by a concurrent resync.
//! Commands that queue up while a round trip is in flight are coalesced
//! into the next one (many connects become one script call).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use super::registry::{Gone, Redis};
use crate::metrics::Metrics;
use crate::store::{unix_now, ConnectionRecord, LiveConn, NodeLink, StoreError, Wrote};
use crate::throttle::LogThrottle;

enum Cmd {
    Register(ConnectionRecord, oneshot::Sender<Result<usize, String>>),
    /// A stream ended; with the newest message id it wrote, when it was
    /// sent one-tab messages.
    Remove(String, Option<Wrote>),
    Resync,
    /// Resync, answering once the batch that carried it was written.
    ResyncAck(oneshot::Sender<()>),
    Heartbeat,
    /// Remove what this node still holds, answer, and stop.
    Shutdown(oneshot::Sender<()>),
}

/// Handle to the presence task.
#[derive(Clone)]
pub(crate) struct Presence {
    tx: mpsc::UnboundedSender<Cmd>,
    register_timeout: Duration,
}

impl Presence {
    /// Records a new connection; returns once it is in Redis, with how many
    /// connections its user then has on all nodes.
    pub(crate) async fn register(&self, record: ConnectionRecord) -> Result<usize, StoreError> {
        let stopped = || StoreError::Unavailable("node is shutting down".into());
        let (ack, done) = oneshot::channel();
        self.tx
            .send(Cmd::Register(record, ack))
            .map_err(|_| stopped())?;
        match tokio::time::timeout(self.register_timeout, done).await {
            Ok(Ok(Ok(count))) => Ok(count),
            Ok(Ok(Err(e))) => Err(StoreError::Unavailable(format!(
                "registry unavailable: {e}"
            ))),
            Ok(Err(_)) => Err(stopped()),
            Err(_) => Err(StoreError::Timeout(self.register_timeout)),
        }
    }

    /// Removes a connection's records (retried until Redis takes it).
    pub(crate) fn remove(&self, connection_id: String, wrote: Option<Wrote>) {
        let _ = self.tx.send(Cmd::Remove(connection_id, wrote));
    }

    /// Re-registers every live local connection (after a full clear).
    pub(crate) fn resync(&self) {
        let _ = self.tx.send(Cmd::Resync);
    }

    /// Re-registers every live local connection and returns once written
    /// (or once the attempt failed: the task keeps retrying by itself).
    pub(crate) async fn resync_and_wait(&self) {
        let (ack, done) = oneshot::channel();
        if self.tx.send(Cmd::ResyncAck(ack)).is_ok() {
            let _ = tokio::time::timeout(self.register_timeout, done).await;
        }
    }

    /// Writes `last_heartbeat` of every live local connection.
    pub(crate) fn heartbeat(&self) {
        let _ = self.tx.send(Cmd::Heartbeat);
    }

    /// Removes this node's remaining records and stops the task.
    pub(crate) async fn shutdown(&self) {
        let (ack, done) = oneshot::channel();
        if self.tx.send(Cmd::Shutdown(ack)).is_ok() {
            let _ = done.await;
        }
    }
}

pub(crate) struct PresenceTask {
    rx: mpsc::UnboundedReceiver<Cmd>,
    registry: Redis,
    link: Arc<dyn NodeLink>,
    metrics: Arc<Metrics>,
    node_id: String,
    /// How long what an ended stream wrote is remembered (the history's
    /// age kept).
    wrote_ttl_secs: u64,
    /// Removals Redis has not taken yet (outage); retried.
    pending_removals: HashMap<String, Option<Wrote>>,
    /// On a cluster, the user of each stream registered here: an ended
    /// stream is no longer among the live ones, and its user names the
    /// partition its record is in. Empty on one Redis (one partition).
    users: HashMap<String, String>,
    /// Set after a failed write: Redis may have lost our records (restart
    /// without persistence), so the next success re-registers everything.
    dirty: bool,
    log: LogThrottle,
}

pub(crate) fn spawn_parts(
    registry: Redis,
    link: Arc<dyn NodeLink>,
    metrics: Arc<Metrics>,
    node_id: String,
    wrote_ttl_secs: u64,
) -> (Presence, PresenceTask) {
    let (tx, rx) = mpsc::unbounded_channel();
    (
        Presence {
            tx,
            register_timeout: Duration::from_secs(8),
        },
        PresenceTask {
            rx,
            registry,
            link,
            metrics,
            node_id,
            wrote_ttl_secs,
            pending_removals: HashMap::new(),
            users: HashMap::new(),
            dirty: false,
            log: LogThrottle::new(Duration::from_secs(10)),
        },
    )
}

const BATCH: usize = 4096;

impl PresenceTask {
    pub(crate) async fn run(mut self) {
        let mut cmds = Vec::with_capacity(BATCH);
        let mut retry = tokio::time::interval(Duration::from_secs(1));
        retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                n = self.rx.recv_many(&mut cmds, BATCH) => {
                    if n == 0 {
                        return;
                    }
                    if let Some(ack) = self.process(std::mem::take(&mut cmds)).await {
                        let _ = ack.send(());
                        return;
                    }
                }
                _ = retry.tick(), if self.dirty || !self.pending_removals.is_empty() => {
                    self.recover().await;
                }
            }
        }
    }

    fn record(&self, c: &LiveConn, now: f64) -> ConnectionRecord {
        ConnectionRecord {
            connection_id: c.connection_id.clone(),
            username: c.username.clone(),
            connection_time: c.connection_time,
            last_heartbeat: now,
            topics: c.topics.clone(),
            node_id: self.node_id.clone(),
        }
    }

    fn failed(&mut self, what: &str, e: &StoreError) {
        self.dirty = true;
        self.metrics.store_errors.inc();
        if let Some(suppressed) = self.log.allow() {
            tracing::error!(op = what, error = %e, suppressed, "registry write failed; will retry and re-register");
        }
    }

    /// Handles one batch; returns the shutdown ack if the batch held one.
    async fn process(&mut self, cmds: Vec<Cmd>) -> Option<oneshot::Sender<()>> {
        let now = unix_now();
        let mut records = Vec::new();
        let mut acks = Vec::new();
        let mut resync = false;
        let mut resync_acks = Vec::new();
        let mut heartbeat = false;
        let mut shutdown = None;
        for cmd in cmds {
            match cmd {
                Cmd::Register(r, ack) => {
                    if self.registry.layout().parts().len() > 1 {
                        self.users
                            .insert(r.connection_id.clone(), r.username.clone());
                    }
                    records.push(r);
                    acks.push(ack);
                }
                Cmd::Remove(id, wrote) => {
                    self.pending_removals.insert(id, wrote);
                }
                Cmd::Resync => resync = true,
                Cmd::ResyncAck(ack) => {
                    resync = true;
                    resync_acks.push(ack);
                }
                Cmd::Heartbeat => heartbeat = true,
                Cmd::Shutdown(ack) => shutdown = Some(ack),
            }
        }
        if shutdown.is_some() {
            // Whatever the node still holds goes too: it is leaving.
            for acked in acks {
                let _ = acked.send(Err("node is shutting down".into()));
            }
            for c in self.link.live() {
                self.users.insert(c.connection_id.clone(), c.username);
                self.pending_removals.insert(c.connection_id, None);
            }
            let ids = self.gone();
            self.pending_removals.clear();
            if let Err(e) = self.registry.remove_ended(&ids, self.wrote_ttl_secs).await {
                self.failed("shutdown_remove", &e);
            }
            return shutdown;
        }
        let mut back = Vec::new();
        if resync || self.dirty {
            // The snapshot is taken now, after every earlier removal was
            // queued, so it holds only connections that are still live.
            let live: HashSet<String> = records.iter().map(|r| r.connection_id.clone()).collect();
            for c in self.link.live() {
                if !live.contains(&c.connection_id) {
                    back.push(self.record(&c, now));
                }
            }
        }
        match self.registry.register(&records, &back).await {
            Ok(counts) => {
                for (ack, count) in acks.into_iter().zip(counts) {
                    let _ = ack.send(Ok(count));
                }
                if resync || self.dirty {
                    tracing::info!(
                        connections = records.len() + back.len(),
                        "re-registered live connections"
                    );
                    self.dirty = false;
                    self.report_synced(now).await;
                }
            }
            Err(e) => {
                for ack in acks {
                    let _ = ack.send(Err(e.to_string()));
                }
                self.failed("register", &e);
            }
        }
        for ack in resync_acks {
            let _ = ack.send(());
        }
        self.flush_removals().await;
        if heartbeat {
            self.heartbeat(now).await;
        }
        None
    }

    /// Writes every live connection's heartbeat, and writes back the
    /// records of live connections that someone removed (a cleanup with a
    /// short timeout, another node's sweep during an outage): the registry
    /// must hold every live connection.
    async fn heartbeat(&mut self, now: f64) {
        // Registered streams only: one whose registration is still on its
        // way writes its own record.
        let live = self.link.live();
        let missing = match self.registry.heartbeat(&live, now).await {
            Ok(missing) => missing,
            Err(e) => return self.failed("heartbeat", &e),
        };
        if !missing.is_empty() {
            let missing: HashSet<String> = missing.into_iter().collect();
            // Read again: a stream that closed during the round trip is gone.
            let records: Vec<ConnectionRecord> = self
                .link
                .live()
                .iter()
                .filter(|c| missing.contains(&c.connection_id))
                .map(|c| self.record(c, now))
                .collect();
            match self.registry.register(&[], &records).await {
                Ok(_) if !records.is_empty() => {
                    tracing::warn!(
                        connections = records.len(),
                        "records of live connections were missing; written back"
                    );
                }
                Ok(_) => {}
                Err(e) => return self.failed("register_missing", &e),
            }
        }
        self.report_synced(now).await;
    }

    /// Every live stream's record is in Redis with a heartbeat of `at` or
    /// later: a write-back window opened before needs nothing more of this
    /// node (`lua/route.lua`).
    async fn report_synced(&mut self, at: f64) {
        if let Err(e) =
            super::route::report_synced(&self.registry, &self.node_id, super::route::ms(at)).await
        {
            self.failed("report_synced", &e);
        }
    }

    async fn flush_removals(&mut self) {
        if self.pending_removals.is_empty() {
            return;
        }
        let ids = self.gone();
        match self.registry.remove_ended(&ids, self.wrote_ttl_secs).await {
            Ok(_) => {
                for g in ids {
                    self.users.remove(&g.id);
                }
                self.pending_removals.clear();
            }
            Err(e) => self.failed("remove", &e),
        }
    }

    /// The pending removals, each with its user when known.
    fn gone(&self) -> Vec<Gone> {
        self.pending_removals
            .iter()
            .map(|(id, w)| Gone {
                id: id.clone(),
                user: self.users.get(id).cloned(),
                wrote: w.clone(),
            })
            .collect()
    }

    /// After an outage: re-register every live connection, then retry the
    /// removals that failed.
    async fn recover(&mut self) {
        if self.dirty {
            let now = unix_now();
            let records: Vec<ConnectionRecord> = self
                .link
                .live()
                .iter()
                .map(|c| self.record(c, now))
                .collect();
            match self.registry.register(&[], &records).await {
                Ok(_) => {
                    self.dirty = false;
                    tracing::info!(
                        connections = records.len(),
                        "registry reachable again; re-registered live connections"
                    );
                    self.report_synced(now).await;
                }
                Err(e) => {
                    self.failed("reregister", &e);
                    return;
                }
            }
        }
        self.flush_removals().await;
    }
}
