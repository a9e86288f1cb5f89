//! A running node: the streams it holds ([`hub`], each with its
//! [`queue`]), the one delivery path
//! ([`router`]), frames encoded once ([`frame`]), and what limits it
//! (connect rate, memory given back, token lifetimes in [`expiry`]). It knows nothing of HTTP; the store
//! behind the router knows nothing of the hub.

pub(crate) mod expiry;
pub(crate) mod frame;
pub(crate) mod hub;
pub(crate) mod queue;
pub(crate) mod ratelimit;
pub(crate) mod router;
pub(crate) mod trim;
