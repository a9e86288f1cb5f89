//! The Django side: `etc/django/services.py` (the drop-in replacement of the
//! old app's `apps/notifications/services.py`) and the management commands
//! of `etc/django/management/commands/`, driven by their Python tests
//! against the real binary and a real Redis.
mod common;

use std::process::Command;

use common::*;

#[tokio::test(flavor = "multi_thread")]
async fn django_services_module_against_the_real_daemon() {
    let redis = RedisServer::start();
    // Heartbeats far apart, so that no heartbeat writes records back while
    // the Python test checks what a cleanup removed.
    let node = BinaryNode::spawn(
        &redis.url(),
        "[stream]\nheartbeat_secs = 60\n\n[sweep]\nstale_timeout_secs = 300\n",
    )
    .await;
    // A second daemon (same Redis) that requires the admin token.
    let token = "django-test-token";
    let guarded = BinaryNode::spawn(
        &redis.url(),
        &format!("[startup]\nclear = false\n\n[api]\ntoken = \"{token}\"\n"),
    )
    .await;

    let root = env!("CARGO_MANIFEST_DIR");
    let admin_url = node.admin_url("");
    let stream_url = node.stream_url();
    let token_url = guarded.admin_url("");
    let cli_config = node.cli_config();
    let out = tokio::task::spawn_blocking(move || {
        Command::new("python3")
            .args(["-m", "unittest", "-v", "tests/django/test_services.py"])
            .current_dir(root)
            .env("SSE_NOTIFY_URL", admin_url)
            .env("SSE_STREAM_URL", stream_url)
            .env("SSE_TOKEN_NODE_URL", token_url)
            .env("SSE_TOKEN_NODE_TOKEN", token)
            // The management commands' output is checked against the CLI's.
            .env("SSE_NOTIFY_BIN", bin())
            .env("SSE_NOTIFY_CLI_CONFIG", cli_config)
            .env_remove("SSE_NOTIFY_BASE_PATH")
            .env_remove("SSE_NOTIFY_TOKEN")
            .env_remove("SSE_NOTIFY_TIMEOUT")
            .env_remove("DJANGO_SETTINGS_MODULE")
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .output()
    })
    .await
    .unwrap()
    .expect("python3 must be installed");

    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let report = format!(
        "python3 -m unittest tests/django/test_services.py: {}\n--- stdout\n{stdout}\n--- stderr\n{stderr}\n--- sse-notify log\n{}",
        out.status,
        node.log()
    );
    println!("{stderr}");
    assert!(out.status.success(), "{report}");
    // unittest writes its report on stderr; make sure it ran the tests, and
    // that none was skipped (a skip would hide a missing environment).
    assert!(stderr.contains("\nOK"), "{report}");
    assert!(!stderr.contains("skipped"), "{report}");
    let ran = stderr
        .lines()
        .find_map(|l| {
            l.strip_prefix("Ran ")?
                .split(' ')
                .next()?
                .parse::<u32>()
                .ok()
        })
        .unwrap_or(0);
    assert!(ran >= 20, "only {ran} Python tests ran\n{report}");

    drop(guarded);
}
