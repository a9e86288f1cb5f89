//! The real binary with its admin listener on a Unix socket file in a
//! temporary directory (`server.admin_listen = "unix:..."`), and an HTTP
//! client that talks over such a socket.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::Duration;

use serde_json::Value;

use super::poll::eventually;
use super::{spawn_serve, write_config_with, Env};

/// A daemon whose admin listener is the socket `dir/admin.sock`.
pub struct UnixNode {
    pub child: Child,
    pub public: SocketAddr,
    /// The admin socket file.
    pub sock: PathBuf,
    /// The config it runs on; the CLI reads the socket from it too.
    pub config: PathBuf,
    pub log: PathBuf,
    pub dir: tempfile::TempDir,
}

/// The public address of the start line, once logged (the admin one is
/// the socket path, not an address).
fn serving_public(log: &str) -> Option<SocketAddr> {
    let line = log.lines().find(|l| l.contains("sse-notify serving"))?;
    let rest = &line[line.find("public_addr=")? + "public_addr=".len()..];
    rest.split_whitespace().next()?.parse().ok()
}

/// Writes the config of a daemon with its admin listener on `sock`.
pub fn unix_config(dir: &Path, sock: &Path, env: &Env, extra: &str) -> PathBuf {
    let redis_keys = env.binary_keys();
    write_config_with(
        dir,
        "127.0.0.1:0",
        &format!("unix:{}", sock.display()),
        &env.url(),
        3,
        &redis_keys,
        extra,
    )
}

impl UnixNode {
    pub async fn start(env: &Env, extra: &str) -> UnixNode {
        let dir = tempfile::tempdir().expect("tempdir");
        let sock = dir.path().join("admin.sock");
        let config = unix_config(dir.path(), &sock, env, extra);
        Self::start_at(dir, sock, config).await
    }

    pub async fn start_at(dir: tempfile::TempDir, sock: PathBuf, config: PathBuf) -> UnixNode {
        let log = dir
            .path()
            .join(format!("log-{}.txt", uuid::Uuid::new_v4().simple()));
        let mut child = spawn_serve(&config, &log);
        let mut public = None;
        let mut exited = None;
        eventually(Duration::from_secs(15), || {
            public = serving_public(&std::fs::read_to_string(&log).unwrap_or_default());
            exited = child.try_wait().ok().flatten();
            let done = public.is_some() || exited.is_some();
            async move { done }
        })
        .await;
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let Some(public) = public else {
            let _ = child.kill();
            let _ = child.wait();
            panic!("sse-notify did not start (exit {exited:?}); log:\n{text}");
        };
        UnixNode {
            child,
            public,
            sock,
            config,
            log,
            dir,
        }
    }

    pub fn client(&self) -> reqwest::Client {
        unix_client(&self.sock)
    }

    /// An admin request over the socket: (status, JSON body).
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut req = self
            .client()
            .request(method, format!("http://localhost{path}"));
        if let Some(body) = body {
            req = req.json(&body);
        }
        let resp = req.send().await.expect("admin request over the socket");
        let status = resp.status().as_u16();
        let text = resp.text().await.expect("body");
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    /// `unix:///path`, as the Python client takes it.
    pub fn admin_url(&self) -> String {
        format!("unix://{}", self.sock.display())
    }

    pub fn stream_url(&self) -> String {
        format!("http://{}/notifications/stream/", self.public)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn signal(&self, sig: &str) {
        let status = std::process::Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("kill");
        assert!(status.success());
    }
}

impl Drop for UnixNode {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// reqwest over the socket file; the URL's host is only the `Host` header.
pub fn unix_client(sock: &Path) -> reqwest::Client {
    reqwest::Client::builder()
        .unix_socket(sock)
        .timeout(Duration::from_secs(10))
        .build()
        .expect("HTTP client")
}
