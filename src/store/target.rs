//! Where a message goes, the rule both engines follow: its routing mode
//! ([`Route`]: every stream, every stream of a user, or the user's first
//! stream only) and, from the connection ids the registry gave, which of
//! a node's streams take it ([`Target`]). The Redis scripts receive the
//! mode by [`Route::script_name`] and pick the ids themselves
//! (`redis/lua/route.lua`).

use super::{KeptFor, Message, Target};

/// How a message is routed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Route<'a> {
    /// Every stream (no `to`).
    Broadcast,
    /// Every stream of the user.
    User(&'a str),
    /// Only the user's first stream, oldest by connection time (one tab).
    FirstOnly(&'a str),
    /// Every stream following the topic.
    Topic(&'a str),
}

impl Message {
    pub(crate) fn route(&self) -> Route<'_> {
        if let Some(topic) = &self.topic {
            return Route::Topic(topic);
        }
        match &self.to {
            None => Route::Broadcast,
            Some(user) if self.first_only => Route::FirstOnly(user),
            Some(user) => Route::User(user),
        }
    }
}

impl<'a> Route<'a> {
    /// A message as another node put it on the bus. The flags are
    /// redundant (`broadcast` is "no `to`"); an event that names nobody
    /// reaches only the ids it lists.
    pub(crate) fn on_bus(
        broadcast: bool,
        to: Option<&'a str>,
        first_only: bool,
        topic: Option<&'a str>,
    ) -> Option<Self> {
        if let Some(topic) = topic {
            return Some(Route::Topic(topic));
        }
        match (broadcast, to, first_only) {
            (true, _, _) => Some(Route::Broadcast),
            (false, Some(user), false) => Some(Route::User(user)),
            (false, user, true) => Some(Route::FirstOnly(user.unwrap_or_default())),
            (false, None, false) => None,
        }
    }

    /// The mode's name in the sending scripts' arguments.
    pub(crate) fn script_name(self) -> &'static str {
        match self {
            Route::Broadcast => "broadcast",
            Route::User(_) => "all",
            Route::FirstOnly(_) => "first",
            Route::Topic(_) => "topic",
        }
    }

    /// Which of a node's streams take the message, given the ids the
    /// registry routed a one-tab message to (one, or none). A user's
    /// message goes to every stream of the user a node holds, also one
    /// whose record is still being written.
    pub(crate) fn target(self, ids: Vec<String>) -> Target {
        match self {
            Route::Broadcast => Target::All,
            Route::User(user) => Target::User(user.to_string()),
            Route::Topic(topic) => Target::Topic(topic.to_string()),
            Route::FirstOnly(_) => match <[String; 1]>::try_from(ids) {
                Ok([one]) => Target::Tab(one),
                Err(none) => Target::Ids(none),
            },
        }
    }

    /// Who a kept message is for, given the user's first stream when it was
    /// sent (one-tab messages only).
    pub(crate) fn kept_for(self, first: Option<&str>) -> KeptFor {
        match (self, first) {
            (Route::FirstOnly(_), Some(c)) => KeptFor::Tab(c.to_string()),
            (Route::FirstOnly(_), None) => KeptFor::FirstBack,
            _ => KeptFor::All,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_tab_messages_reach_the_one_id_or_nobody() {
        let r = Route::FirstOnly("alice");
        assert_eq!(r.target(vec!["c1".into()]), Target::Tab("c1".into()));
        assert_eq!(r.target(Vec::new()), Target::Ids(Vec::new()));
        assert_eq!(
            Route::User("alice").target(Vec::new()),
            Target::User("alice".into())
        );
        assert_eq!(Route::Broadcast.target(Vec::new()), Target::All);
        assert_eq!(
            Route::Topic("doc:42").target(Vec::new()),
            Target::Topic("doc:42".into())
        );
    }
}
