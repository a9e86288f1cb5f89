//! The HTTP side: the public listener (the stream, a hand-written HTTP/1
//! server in [`public`] answering through [`stream`]), the admin listener
//! (hyper + warp in [`admin`], routes in [`api`]), stream auth and the one
//! error envelope ([`envelope`]). It knows nothing of engines: everything
//! goes through the node ([`Front::node`]).

use std::sync::{Arc, RwLock};

use crate::node::Node;
use auth::Authenticator;

pub(crate) mod admin;
pub(crate) mod api;
pub(crate) mod auth;
pub(crate) mod deadline;
pub(crate) mod envelope;
pub(crate) mod listener;
pub(crate) mod public;
pub(crate) mod socket;
pub(crate) mod stream;

/// What the listeners share: the node they front, and what is HTTP's own
/// (the stream authenticator, swapped whole on reload).
pub(crate) struct Front {
    node: Arc<Node>,
    auth: RwLock<Arc<Authenticator>>,
}

impl Front {
    pub(crate) fn new(node: Arc<Node>, auth: Authenticator) -> Self {
        Self {
            node,
            auth: RwLock::new(Arc::new(auth)),
        }
    }

    pub(crate) fn node(&self) -> &Arc<Node> {
        &self.node
    }

    /// The config in force now (the node's; reloads swap it).
    pub(crate) fn config(&self) -> Arc<crate::config::Config> {
        self.node.config()
    }

    pub(crate) fn auth(&self) -> Arc<Authenticator> {
        self.auth.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub(crate) fn set_auth(&self, auth: Authenticator) {
        *self.auth.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(auth);
    }
}

/// `path` below `base_path`, without one trailing slash: `/notifications/send/`
/// is `/send`.
pub(crate) fn relative<'a>(base_path: &str, path: &'a str) -> Option<&'a str> {
    let rest = path.strip_prefix(base_path)?;
    if !rest.is_empty() && !rest.starts_with('/') {
        return None;
    }
    Some(if rest.len() > 1 {
        rest.strip_suffix('/').unwrap_or(rest)
    } else {
        rest
    })
}
