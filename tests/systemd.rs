//! The systemd notify protocol, read from a real NOTIFY_SOCKET the way
//! systemd would, and the unit file checked by systemd-analyze.
mod common;

use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// Collects datagrams until one contains `want` or `within` passes.
fn wait_for(sock: &UnixDatagram, want: &str, within: Duration, seen: &mut Vec<String>) -> bool {
    let deadline = Instant::now() + within;
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        if let Ok(n) = sock.recv(&mut buf) {
            let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
            let hit = msg.lines().any(|l| l == want);
            seen.push(msg);
            if hit {
                return true;
            }
        }
    }
    false
}

#[tokio::test]
async fn notify_socket_sees_ready_reloading_watchdog_and_stopping() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &redis.url(), "");
    let log = dir.path().join("log.txt");
    let log_file = std::fs::File::create(&log).unwrap();
    let sock_path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    let mut child = Command::new(bin())
        .args(["serve", "-c"])
        .arg(&config)
        .env("NOTIFY_SOCKET", &sock_path)
        .env("WATCHDOG_USEC", "400000")
        .stdout(Stdio::null())
        .stderr(log_file)
        .spawn()
        .unwrap();
    let mut seen = Vec::new();
    assert!(
        wait_for(&sock, "READY=1", Duration::from_secs(15), &mut seen),
        "READY=1 never came: {seen:?}"
    );
    // READY=1 means serving: both listeners answer at once.
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let (_, admin) = serving_addrs(&text)
        .unwrap_or_else(|| panic!("READY=1 before the start log line; log:\n{text}"));
    let health = http()
        .get(format!("http://{admin}/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);

    assert!(
        wait_for(&sock, "WATCHDOG=1", Duration::from_secs(3), &mut seen),
        "no watchdog ping with WATCHDOG_USEC set: {seen:?}"
    );

    let pid = child.id().to_string();
    assert!(Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .unwrap()
        .success());
    assert!(
        wait_for(&sock, "RELOADING=1", Duration::from_secs(5), &mut seen),
        "RELOADING=1 on SIGHUP: {seen:?}"
    );
    assert!(
        wait_for(&sock, "READY=1", Duration::from_secs(5), &mut seen),
        "READY=1 after the reload: {seen:?}"
    );

    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    assert!(
        wait_for(&sock, "STOPPING=1", Duration::from_secs(5), &mut seen),
        "STOPPING=1 on SIGTERM: {seen:?}"
    );
    let code = wait_exit(&mut child, Duration::from_secs(10));
    assert_eq!(code, Some(0), "exit 0 within 10 s after SIGTERM");
}

#[test]
fn unit_file_passes_systemd_analyze_verify() {
    let unit = concat!(env!("CARGO_MANIFEST_DIR"), "/systemd/sse-notify.service");
    let text = std::fs::read_to_string(unit).expect("systemd/sse-notify.service");
    for needed in [
        "Type=notify",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "Restart=on-failure",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "PrivateTmp=yes",
        "SystemCallFilter=@system-service",
        "LimitNOFILE=",
    ] {
        assert!(text.contains(needed), "unit lacks {needed}");
    }
    if let Err(e) = Command::new("systemd-analyze").arg("--version").output() {
        panic!(
            "systemd-analyze cannot run ({e}): this test verifies the unit with it; \
             install Debian's `systemd` package (.ci/run does)"
        );
    }
    // The binary path of the unit does not exist here; point it at ours.
    let dir = tempfile::tempdir().unwrap();
    let local = dir.path().join("sse-notify.service");
    std::fs::write(&local, text.replace("/usr/bin/sse-notify", bin())).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&local)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let problems: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("sse-notify.service"))
        .collect();
    assert!(problems.is_empty(), "systemd-analyze verify: {stderr}");
}
