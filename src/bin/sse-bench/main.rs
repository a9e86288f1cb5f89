//! `sse-bench`: load test for an sse-notify deployment.
//!
//! Modes: `hold` (open N streams, hold them), `unicast` (send M messages to
//! random users), `broadcast` (K broadcasts), `topic` (K messages to a topic
//! the streams follow, `--topics`), `churn` (a share of the streams
//! closed and reopened every second while messages flow), `registry` (a
//! large registry written into Redis, then its listing and clear timed). Streams are opened
//! on the public listener as `u{i % users}` (header auth); messages go through
//! the admin API (`POST {base}/send/`) with the payload
//! `{"seq":n,"ts_ns":t}`, `t` being nanoseconds on a monotonic clock shared by
//! every task of this process, so each delivery gives an end-to-end latency
//! and a (stream, seq) pair for loss and duplicate accounting.
//!
//! Output: progress and a summary on stderr, exactly one JSON line on stdout.
//! Every run is bounded: `--duration`, `--drain` and a `--max-runtime`
//! watchdog that ends the process (exit 3).

mod accounting;
mod cli;
mod clock;
mod figures;
mod modes;
mod registry;
mod report;
mod run;
mod sampling;
mod sends;
mod sse;
mod state;
mod streams;
mod sys;
mod topics;

use std::time::Duration;

use clap::Parser;
use serde_json::json;

fn main() {
    let cli = cli::Cli::parse();
    // start the clock before any task reads it: latencies are differences
    // of readings taken by different tasks
    let _ = clock::now_ns();
    let (name, c) = cli.mode.parts();
    let max_runtime = c.max_runtime;
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs_f64(max_runtime.max(1.0)));
        eprintln!("sse-bench: --max-runtime {max_runtime}s exceeded, exiting");
        println!(
            "{}",
            json!({"tool": "sse-bench", "mode": name, "error": format!("max runtime {max_runtime}s exceeded")})
        );
        std::process::exit(3);
    });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(c.threads.max(1))
        .enable_all()
        .build()
        .expect("tokio runtime");
    match rt.block_on(modes::run(cli.mode)) {
        Ok(v) => {
            report::human(&v);
            println!("{v}");
            // streams the runtime still holds are closed by exit
            std::process::exit(0);
        }
        Err(e) => {
            eprintln!("sse-bench: {e}");
            println!("{}", json!({"tool": "sse-bench", "mode": name, "error": e}));
            std::process::exit(2);
        }
    }
}
