//! `sse-notify`: parse the command line, load the config, hand over.

use std::process::ExitCode;

use clap::Parser;
use sse_notify::cli::{self, Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let (config, path) = match cli::load_config(&cli) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("sse-notify: {e}");
            return e.exit_code();
        }
    };
    // Only the daemon takes server.worker_threads: a CLI command is one
    // request and needs no more than one thread.
    let mut builder = match cli.command {
        Command::Serve => sse_notify::lifecycle::runtime_builder(&config),
        _ => tokio::runtime::Builder::new_current_thread(),
    };
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("sse-notify: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    if let Command::Serve = cli.command {
        let log_reload = sse_notify::logging::init(&config.log);
        return match runtime.block_on(sse_notify::lifecycle::serve(config, path, Some(log_reload)))
        {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!(error = %e, "sse-notify cannot run");
                ExitCode::from(e.exit_code())
            }
        };
    }
    match runtime.block_on(cli::run(cli, config, path)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sse-notify: {e}");
            e.exit_code()
        }
    }
}
