//! `sse-notify`: a Server-Sent Events notification daemon whose connection
//! registry lives in Redis (see `SPEC.md` of the project and README.md).
//!
//! The binary only parses the command line, loads the config, sets up
//! logging and calls [`lifecycle::serve`] or [`cli::run`]; everything is
//! here so that tests can start a node in-process on port 0.

pub mod api;
pub mod app;
pub mod auth;
pub mod bus;
pub mod cli;
pub mod config;
pub mod envelope;
pub mod frame;
pub mod history;
pub mod hub;
pub mod keys;
pub mod lifecycle;
pub mod logging;
pub mod memory;
pub mod metrics;
pub mod presence;
pub mod public;
pub mod ratelimit;
pub mod registry;
pub mod router;
pub mod server;
pub mod stream;
pub mod systemd;
pub mod target;
pub mod throttle;
