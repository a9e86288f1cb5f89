//! The one clock of the process: every latency is a difference of two of its
//! readings, taken by any task.

use std::sync::OnceLock;
use std::time::Instant;

static START: OnceLock<Instant> = OnceLock::new();

/// Nanoseconds since the start of the process, monotonic, one clock for all tasks.
pub(crate) fn now_ns() -> u64 {
    START.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

pub(crate) fn secs(ns: u64) -> f64 {
    ns as f64 / 1e9
}
