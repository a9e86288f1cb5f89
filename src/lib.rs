//! `sse-notify`: a Server-Sent Events notification daemon.
//!
//! The binary only parses the command line, loads the config, sets up
//! logging and calls [`lifecycle::serve`] or [`cli::run`]; everything is
//! here so that tests can start a node in-process on port 0.
//!
//! Layout, from the outside in:
//! - `http`: both listeners, routes, validation, stream auth, the error
//!   envelope;
//! - `node`: the streams this node holds (hub), the one delivery path
//!   (router), frames;
//! - `store`: the seam the router talks to, with its two engines (embedded,
//!   and Redis with its keys, scripts, bus and Sentinel);
//! - `topic`: topic names and who may follow which;
//! - [`config`], [`cli`], [`lifecycle`] (start order, signals, tickers,
//!   shutdown), [`logging`], and the counters of `metrics`.

pub mod cli;
pub mod config;
pub mod lifecycle;
pub mod logging;

mod http;
mod metrics;
mod node;
mod store;
mod systemd;
mod throttle;
mod topic;

pub use store::StoreError;
