//! The admin listener on a Unix socket (`server.admin_listen =
//! "unix:/path"`), with the real binary and a socket file in a temporary
//! directory: the API, `/healthz`, `/metrics`, the console and the CLI over
//! it; the file's mode and group; a stale file replaced, a live socket or
//! a file that is no socket refused with exit 1 and left alone; the file
//! removed by a clean stop, only while it is still the daemon's own; the
//! admin limits (connection cap, request deadline) over it.
mod common;

use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

/// Mode bits and group of the file at `path`, asserting it is a socket.
fn socket_stat(path: &Path) -> (u32, u32) {
    let meta = std::fs::symlink_metadata(path).expect("the socket file exists");
    assert!(
        meta.file_type().is_socket(),
        "{} is not a socket",
        path.display()
    );
    (meta.permissions().mode() & 0o7777, meta.gid())
}

/// Runs `sse-notify serve` on `config` and waits for it to exit; its code
/// and log.
fn serve_expecting_exit(config: &Path, log: &Path) -> (Option<i32>, String) {
    let mut child = spawn_serve(config, log);
    let code = wait_exit(&mut child, Duration::from_secs(15));
    if code.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    (code, std::fs::read_to_string(log).unwrap_or_default())
}

on_every_engine! {
    async fn the_api_console_and_cli_work_over_the_socket(env: Env) {
        let node = UnixNode::start(&env, "").await;
        let shown = format!("unix:{}", node.sock.display());
        let (mode, _) = socket_stat(&node.sock);
        assert_eq!(mode, 0o660, "the default server.admin_socket_mode");
        assert!(
            node.log().lines().any(|l| l.contains("sse-notify serving") && l.contains(&format!("admin_addr={shown}"))),
            "the start line names the socket as {shown}:\n{}", node.log()
        );

        let (status, health) = node.call(reqwest::Method::GET, "/healthz", None).await;
        assert_eq!(status, 200, "{health}");
        assert_eq!(health["admin_listen"], json!(shown), "{health}");
        assert_eq!(health["engine"], json!(env.engine()), "{health}");

        // A send over the socket reaches a stream on the public listener.
        let stream_url = format!("http://{}/notifications/stream/", node.public);
        let (mut tab, conn_id) = SseClient::connect_url(&stream_url, "alice").await;
        let (status, sent) = node
            .call(
                reqwest::Method::POST,
                "/notifications/send/",
                Some(json!({"to": "alice", "event": "note", "data": {"over": "unix"}})),
            )
            .await;
        assert_eq!(status, 200, "{sent}");
        assert_eq!(sent["data"]["connections"], json!(1), "{sent}");
        let ev = tab.next_named("note", Duration::from_secs(5)).await.expect("the message arrives");
        assert_eq!(serde_json::from_str::<Value>(&ev.data).unwrap(), json!({"over": "unix"}));

        let (status, listed) = node
            .call(reqwest::Method::GET, "/notifications/connections/alice/", None)
            .await;
        assert_eq!(status, 200, "{listed}");
        assert_eq!(listed["data"]["connections"][0]["connection_id"], json!(conn_id), "{listed}");

        let metrics = node
            .client()
            .get("http://localhost/metrics")
            .send()
            .await
            .expect("metrics");
        assert_eq!(metrics.status(), 200);
        assert!(metrics.text().await.unwrap().contains("sse_notify_"), "metrics text");

        let page = node
            .client()
            .get("http://localhost/notifications/admin/")
            .send()
            .await
            .expect("console page");
        assert_eq!(page.status(), 200);
        assert!(
            page.headers()["content-type"].to_str().unwrap().starts_with("text/html"),
            "{:?}", page.headers()
        );
        assert!(page.text().await.unwrap().contains("<html"), "the console's page");

        // The CLI reads the same config and talks over the socket.
        let config = node.config.to_str().unwrap().to_string();
        let (code, out, err) =
            cli_async(&["send", "--to", "alice", "--event", "cli", "{\"from\":\"cli\"}", "-c", &config]).await;
        assert_eq!(code, 0, "send over the socket: {out} {err}");
        assert!(out.contains("1 connection"), "{out}");
        assert!(tab.next_named("cli", Duration::from_secs(5)).await.is_some(), "the CLI's message arrives");
        let (code, out, err) = cli_async(&["connections", "alice", "--json", "-c", &config]).await;
        assert_eq!(code, 0, "connections over the socket: {out} {err}");
        let data: Value = serde_json::from_str(&out).expect("--json prints JSON");
        assert_eq!(data["connections"][0]["connection_id"], json!(conn_id), "{data}");

        // A clean stop removes the file.
        node.signal("TERM");
        let mut node = node;
        let code = wait_exit(&mut node.child, Duration::from_secs(15));
        assert_eq!(code, Some(0), "{}", node.log());
        assert!(!node.sock.exists(), "SIGTERM left {}", node.sock.display());

        // With no daemon, the CLI says where it looked, in one line.
        let (code, _, err) = cli_async(&["send", "{}", "-c", &config]).await;
        assert_eq!(code, 1, "{err}");
        assert!(err.contains("no sse-notify node answers") && err.contains(&shown), "{err}");
    }
}

/// Over the socket any `Host` is answered (the client names it as it
/// likes; no browser connects there), while over TCP a host name outside
/// `api.allowed_hosts` is refused; a cross-site `Origin` and a form's
/// content type stay refused over both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_host_guard_is_for_tcp_only() {
    let node = UnixNode::start(&Env::memory(), "").await;
    for host in ["localhost", "unix", "admin.sock", "evil.example:8091"] {
        let resp = node
            .client()
            .get("http://localhost/notifications/connections/")
            .header("host", host)
            .send()
            .await
            .expect("request");
        assert_eq!(resp.status(), 200, "Host {host:?} over the socket");
    }
    let resp = node
        .client()
        .post("http://localhost/notifications/send/")
        .header("origin", "http://evil.example")
        .json(&json!({"to": "a", "data": 1}))
        .send()
        .await
        .expect("request");
    expect_envelope(resp, 403, "cross-site Origin over the socket").await;
    let resp = node
        .client()
        .post("http://localhost/notifications/send/")
        .header("content-type", "text/plain")
        .body("{\"to\":\"a\",\"data\":1}")
        .send()
        .await
        .expect("request");
    expect_envelope(resp, 415, "text/plain body over the socket").await;

    let tcp = BinaryNode::on(&Env::memory(), "").await;
    let resp = http()
        .get(tcp.admin_url("/notifications/connections/"))
        .header("host", "evil.example:8091")
        .send()
        .await
        .expect("request");
    expect_envelope(resp, 421, "a foreign Host over TCP").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mode_and_group_are_applied_before_it_serves() {
    // A group the file can be given: as root any (daemon exists on every
    // Debian and in containers); otherwise a supplementary group of ours.
    let root = std::process::Command::new("id")
        .arg("-u")
        .output()
        .unwrap()
        .stdout
        == b"0\n";
    let group = if root {
        Some("daemon".to_string())
    } else {
        let out = std::process::Command::new("id")
            .arg("-Gn")
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .nth(1)
            .map(String::from)
    };
    let extra = match &group {
        Some(g) => format!("admin_socket_group = \"{g}\"\n"),
        None => String::new(),
    };
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("admin.sock");
    // The keys belong to [server], which write_config_at opens first.
    let config = unix_config(dir.path(), &sock, &Env::memory(), "");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        text.replacen(
            "[server]\n",
            &format!("[server]\nadmin_socket_mode = \"0600\"\n{extra}"),
            1,
        ),
    )
    .unwrap();
    let node = UnixNode::start_at(dir, sock, config).await;
    let (mode, gid) = socket_stat(&node.sock);
    assert_eq!(mode, 0o600, "server.admin_socket_mode = \"0600\"");
    if let Some(g) = group {
        let out = std::process::Command::new("getent")
            .args(["group", &g])
            .output()
            .unwrap();
        let want: u32 = String::from_utf8_lossy(&out.stdout)
            .split(':')
            .nth(2)
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(gid, want, "server.admin_socket_group = {g:?}");
    }
    let (status, _) = node.call(reqwest::Method::GET, "/healthz", None).await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_socket_file_is_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("admin.sock");
    // What a killed daemon leaves: a socket file nothing listens on.
    drop(std::os::unix::net::UnixListener::bind(&sock).unwrap());
    let config = unix_config(dir.path(), &sock, &Env::memory(), "");
    let node = UnixNode::start_at(dir, sock, config).await;
    // (The new file may get the freed inode number back: the log and the
    // answer tell that it was replaced.)
    assert_eq!(
        socket_stat(&node.sock).0,
        0o660,
        "the new file has the mode"
    );
    let (status, _) = node.call(reqwest::Method::GET, "/healthz", None).await;
    assert_eq!(status, 200);
    assert!(
        node.log().contains("stale"),
        "the replacement is logged:\n{}",
        node.log()
    );

    // A killed daemon leaves its file; the next start replaces it too.
    node.signal("KILL");
    let mut node = node;
    // SIGKILL cannot be caught: the wait returns at once.
    node.child.wait().expect("killed");
    assert!(node.sock.exists(), "SIGKILL cannot remove the file");
    let UnixNode { sock, config, .. } = &node;
    let (sock, config) = (sock.clone(), config.clone());
    let dir = std::mem::replace(&mut node.dir, tempfile::tempdir().unwrap());
    let again = UnixNode::start_at(dir, sock, config).await;
    let (status, _) = again.call(reqwest::Method::GET, "/healthz", None).await;
    assert_eq!(status, 200, "{}", again.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socket_another_daemon_listens_on_is_exit_1_and_left_alone() {
    let first = UnixNode::start(&Env::memory(), "").await;
    let ino = std::fs::symlink_metadata(&first.sock).unwrap().ino();
    let dir = tempfile::tempdir().unwrap();
    let config = unix_config(dir.path(), &first.sock, &Env::memory(), "");
    let (code, log) = serve_expecting_exit(&config, &dir.path().join("log.txt"));
    assert_eq!(
        code,
        Some(1),
        "a second daemon on a live socket; log:\n{log}"
    );
    assert!(
        log.contains("address in use") && log.contains(&first.sock.display().to_string()),
        "the message says the address is in use and names it:\n{log}"
    );
    assert_eq!(
        std::fs::symlink_metadata(&first.sock).unwrap().ino(),
        ino,
        "the file is untouched"
    );
    let (status, _) = first.call(reqwest::Method::GET, "/healthz", None).await;
    assert_eq!(status, 200, "the first daemon still answers");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_path_that_is_no_socket_is_exit_1_and_kept() {
    let dir = tempfile::tempdir().unwrap();
    for what in ["file", "directory"] {
        let path = dir.path().join(format!("admin-{what}"));
        if what == "file" {
            std::fs::write(&path, "somebody's data\n").unwrap();
        } else {
            std::fs::create_dir(&path).unwrap();
        }
        let config = unix_config(dir.path(), &path, &Env::memory(), "");
        let (code, log) =
            serve_expecting_exit(&config, &dir.path().join(format!("log-{what}.txt")));
        assert_eq!(code, Some(1), "a {what} at the path; log:\n{log}");
        assert!(
            log.contains("not a socket") && log.contains("server.admin_listen"),
            "{log}"
        );
        if what == "file" {
            assert_eq!(
                std::fs::read_to_string(&path).unwrap(),
                "somebody's data\n",
                "the file is kept"
            );
        } else {
            assert!(path.is_dir(), "the directory is kept");
        }
    }
    // A directory that does not exist is named with what creates it.
    let config = unix_config(
        dir.path(),
        &dir.path().join("missing/admin.sock"),
        &Env::memory(),
        "",
    );
    let (code, log) = serve_expecting_exit(&config, &dir.path().join("log-missing.txt"));
    assert_eq!(code, Some(1), "{log}");
    assert!(
        log.contains("does not exist") && log.contains("RuntimeDirectory"),
        "{log}"
    );
}

/// A daemon stops: it removes the socket file only while the file is the
/// one it bound. Another daemon's file at the same path (started after the
/// first one's file was deleted) survives the first one's stop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_removes_only_its_own_file() {
    let mut first = UnixNode::start(&Env::memory(), "").await;
    std::fs::remove_file(&first.sock).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = unix_config(dir.path(), &first.sock, &Env::memory(), "");
    let second = UnixNode::start_at(dir, first.sock.clone(), config).await;
    let ino = std::fs::symlink_metadata(&second.sock).unwrap().ino();
    first.signal("INT");
    assert_eq!(
        wait_exit(&mut first.child, Duration::from_secs(15)),
        Some(0),
        "{}",
        first.log()
    );
    assert_eq!(
        std::fs::symlink_metadata(&second.sock)
            .map(|m| m.ino())
            .ok(),
        Some(ino),
        "the first daemon's stop removed the second one's socket"
    );
    let (status, _) = second.call(reqwest::Method::GET, "/healthz", None).await;
    assert_eq!(status, 200);
}

/// `api.max_connections` and `api.request_timeout_secs` hold over the
/// socket as over TCP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_limits_apply_over_the_socket() {
    let node = UnixNode::start(
        &Env::memory(),
        "[api]\nmax_connections = 1\nrequest_timeout_secs = 1\n",
    )
    .await;
    // One connection with half a head: it holds the only slot until its
    // deadline, then gets a 408.
    let mut slow = UnixStream::connect(&node.sock).await.unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    // Connections are accepted in order: once the server answered this
    // one, the slow one was counted before it.
    let mut second = UnixStream::connect(&node.sock).await.unwrap();
    second
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    tokio::time::timeout(Duration::from_secs(5), second.read_to_string(&mut answer))
        .await
        .expect("the refusal comes at once")
        .unwrap();
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains("api.max_connections"), "{answer}");

    let mut late = String::new();
    tokio::time::timeout(Duration::from_secs(5), slow.read_to_string(&mut late))
        .await
        .expect("the deadline answers within its second")
        .unwrap();
    assert!(late.starts_with("HTTP/1.1 408"), "{late}");
    assert!(late.contains("api.request_timeout_secs"), "{late}");
}
