//! Reading a registry in name order, a bounded step at a time: what the
//! paged listings, the whole listings and the command line share, for the
//! registry's users and for its followed topics alike ([`Walk`]), written
//! once over [`Listed`] (a node's [`Store`](super::Store), or Redis reached
//! without a node, [`Direct`](super::Direct)).

use std::collections::VecDeque;
use std::future::Future;

use super::{ConnectionRecord, Cursor, Page, Result, TopicCount, MAX_PAGE};

/// Names a whole listing reads per step from Redis, which scans the whole
/// set of users (or topics) once per step: many at a time.
pub(crate) const REDIS_STEP: usize = 100_000;

/// Names a whole listing reads per step from the embedded engine, which
/// holds its lock for each step: few at a time.
pub(crate) const MEMORY_STEP: usize = 1_000;

/// A registry that can be read in name order.
pub(crate) trait Listed: Send + Sync + 'static {
    /// Up to `limit` usernames after `after` (all, without it), in name
    /// order; each call a bounded step for the engine.
    fn user_names(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<String>>> + Send;
    /// The connections of each of `users` that has any, in the order given,
    /// each user's by connection time.
    fn users_connections(
        &self,
        users: &[String],
    ) -> impl Future<Output = Result<Vec<(String, Vec<ConnectionRecord>)>>> + Send;
    /// Registry-wide (users, connections).
    fn totals(&self) -> impl Future<Output = Result<(usize, usize)>> + Send;
    /// Up to `limit` followed topics after `after`, in name order, in a
    /// bounded step.
    fn topic_names(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<String>>> + Send;
    /// The counts of each of `topics` that anyone follows, in the order
    /// given.
    fn topic_counts(
        &self,
        topics: &[String],
    ) -> impl Future<Output = Result<Vec<TopicCount>>> + Send;
    /// How many topics have a follower.
    fn topic_total(&self) -> impl Future<Output = Result<usize>> + Send;
    /// How many names a whole listing reads per step.
    fn listing_step(&self) -> usize;
}

/// What a listing walks in name order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Walk {
    Users,
    /// The topics that have a follower.
    Topics,
}

impl Walk {
    async fn names<L: Listed>(
        self,
        registry: &L,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<String>> {
        match self {
            Walk::Users => registry.user_names(after, limit).await,
            Walk::Topics => registry.topic_names(after, limit).await,
        }
    }
}

/// The names of one page: up to `limit` (1 to [`MAX_PAGE`]) after `after`,
/// and where the next page starts.
async fn page_names<L: Listed>(
    registry: &L,
    walk: Walk,
    after: Option<&Cursor>,
    limit: usize,
) -> Result<(Vec<String>, Option<Cursor>)> {
    let limit = limit.clamp(1, MAX_PAGE);
    let mut names = walk
        .names(registry, after.map(|c| c.0.as_str()), limit + 1)
        .await?;
    let more = names.len() > limit;
    names.truncate(limit);
    // The last name asked for, listed or not: a user (or topic) gone
    // meanwhile must not make the next page start over.
    let next = if more {
        names.last().cloned().map(Cursor)
    } else {
        None
    };
    Ok((names, next))
}

/// One page of the users' listing: up to `limit` users after `after`.
pub(crate) async fn page<L: Listed>(
    registry: &L,
    after: Option<&Cursor>,
    limit: usize,
) -> Result<Page> {
    let (names, next) = page_names(registry, Walk::Users, after, limit).await?;
    let users = registry.users_connections(&names).await?;
    let (user_count, total_connections) = registry.totals().await?;
    Ok(Page {
        users,
        user_count,
        total_connections,
        next,
    })
}

/// One page of the topics' listing.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct TopicsPage {
    /// Up to the asked number of topics after the cursor, in name order;
    /// one whose last follower left meanwhile is not in it.
    pub topics: Vec<TopicCount>,
    /// Registry-wide, not the page's.
    pub topic_count: usize,
    pub next: Option<Cursor>,
}

/// One page of the topics' listing: up to `limit` topics after `after`.
pub(crate) async fn topics_page<L: Listed>(
    registry: &L,
    after: Option<&Cursor>,
    limit: usize,
) -> Result<TopicsPage> {
    let (names, next) = page_names(registry, Walk::Topics, after, limit).await?;
    let topics = registry.topic_counts(&names).await?;
    let topic_count = registry.topic_total().await?;
    Ok(TopicsPage {
        topics,
        topic_count,
        next,
    })
}

/// A whole walk read a step at a time: never more than one step of names
/// is held, whatever the registry's size.
#[derive(Debug)]
pub(crate) struct Steps {
    walk: Walk,
    /// The last name read.
    after: Option<String>,
    /// Names read, not taken yet.
    queue: VecDeque<String>,
    /// The registry has no name after the queue.
    exhausted: bool,
}

impl Steps {
    pub(crate) fn new(walk: Walk) -> Self {
        Self {
            walk,
            after: None,
            queue: VecDeque::new(),
            exhausted: false,
        }
    }

    /// The next up to `max` names (reading the next step when none is
    /// left); empty once the walk is over.
    pub(crate) async fn take<L: Listed>(
        &mut self,
        registry: &L,
        max: usize,
    ) -> Result<Vec<String>> {
        while self.queue.is_empty() && !self.exhausted {
            let step = registry.listing_step();
            let names = self
                .walk
                .names(registry, self.after.as_deref(), step)
                .await?;
            self.exhausted = names.len() < step;
            self.after = names.last().cloned().or(self.after.take());
            self.queue.extend(names);
        }
        let n = self.queue.len().min(max);
        Ok(self.queue.drain(..n).collect())
    }
}
