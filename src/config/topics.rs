//! `[topics]`: what the streams following a topic hear besides its
//! messages (README "Topics").

use serde::{Deserialize, Serialize};

use super::reload::{restart, Key};

#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct TopicsConfig {
    /// `join` and `leave` events to a topic's other followers when one of
    /// its streams opens or closes.
    pub join_leave: bool,
}

impl TopicsConfig {
    /// Every node's store reads it when it opens: the nodes of one
    /// deployment agree only after each restarts.
    pub(super) const KEYS: &'static [Key] = &[restart!(topics.join_leave)];
}
