//! The Django side: the `sse-notify` Python package of `clients/python`
//! (the admin API client and its async twins, the Django app's commands,
//! checks and views, its HTTP/1.1 transport), driven by its own tests under
//! Django's test runner against the real binary, on both engines.
mod common;

use std::path::Path;
use std::process::Command;

use common::*;

fn python_dir() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/clients/python"))
}

on_both_engines! {
    async fn python_package_against_the_real_daemon(env: Env) {
        // Heartbeats far apart, so that no heartbeat writes records back
        // while a test checks what a cleanup removed.
        let node = BinaryNode::on(
            &env,
            "[stream]\nheartbeat_secs = 60\n\n[sweep]\nstale_timeout_secs = 300\n",
        )
        .await;
        // A second daemon that requires the admin token.
        let token = "django-test-token";
        let guarded = BinaryNode::on(
            &env,
            &format!("[startup]\nclear = false\n\n[api]\ntoken = \"{token}\"\n"),
        )
        .await;

        let mut cmd = Command::new("python3");
        cmd.arg("runtests.py")
            .current_dir(python_dir())
            // The working tree's package, not an installed copy.
            .env("PYTHONPATH", python_dir().join("src"))
            .env("SSE_NOTIFY_URL", node.admin_url(""))
            .env("SSE_STREAM_URL", node.stream_url())
            .env("SSE_TOKEN_NODE_URL", guarded.admin_url(""))
            .env("SSE_TOKEN_NODE_TOKEN", token)
            .env("SSE_NOTIFY_BIN", bin())
            .env("SSE_NOTIFY_CLI_CONFIG", node.cli_config())
            .env("SSE_REDIS_URL", env.url())
            .env_remove("SSE_NOTIFY_BASE_PATH")
            .env_remove("SSE_NOTIFY_TOKEN")
            .env_remove("SSE_NOTIFY_TIMEOUT")
            .env_remove("DJANGO_SETTINGS_MODULE")
            .env("PYTHONDONTWRITEBYTECODE", "1");
        let out = tokio::task::spawn_blocking(move || cmd.output())
            .await
            .expect("python thread")
            .expect("python3 must be installed (tests/setup.sh)");

        let stderr = String::from_utf8_lossy(&out.stderr);
        let report = format!(
            "python3 runtests.py ({}): {}\n--- stdout\n{}\n--- stderr\n{stderr}\n--- sse-notify log\n{}",
            env.engine(),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            node.log()
        );
        println!("{stderr}");
        assert!(out.status.success(), "{report}");
        // Django's runner reports on stderr: it ran the tests, none skipped
        // (a skip would hide a missing environment).
        assert!(stderr.contains("\nOK"), "{report}");
        assert!(!stderr.contains("skipped"), "{report}");
        let ran = stderr
            .lines()
            .find_map(|l| l.strip_prefix("Ran ")?.split(' ').next()?.parse::<u32>().ok())
            .unwrap_or(0);
        assert!(ran >= 45, "only {ran} Python tests ran\n{report}");
        drop(guarded);
    }
}
