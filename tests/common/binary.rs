//! The real binary, as a sysadmin runs it: config files, `serve` bound to
//! port 0 with the addresses read from its start log line, signals, exit
//! codes, and the CLI.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::poll::{eventually, wait_exit};
use super::{http, Env, Node};

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_sse-notify")
}

/// Writes `sse-notify.toml` in `dir` with the listeners on `public` and
/// `admin`, Redis at `redis_url` ("" for the embedded engine); `extra` is
/// appended (more TOML sections).
pub fn write_config_at(
    dir: &Path,
    public: &str,
    admin: &str,
    redis_url: &str,
    connect_timeout_secs: u64,
    extra: &str,
) -> PathBuf {
    write_config_with(
        dir,
        public,
        admin,
        redis_url,
        connect_timeout_secs,
        "",
        extra,
    )
}

/// [`write_config_at`] with more keys of `[redis]` (`redis_keys`).
pub fn write_config_with(
    dir: &Path,
    public: &str,
    admin: &str,
    redis_url: &str,
    connect_timeout_secs: u64,
    redis_keys: &str,
    extra: &str,
) -> PathBuf {
    let path = dir.join("sse-notify.toml");
    let text = format!(
        "[server]\nlisten = \"{public}\"\nadmin_listen = \"{admin}\"\nnode_id = \"bin-{}\"\nshutdown_grace_secs = 3\n\n[redis]\nurl = \"{redis_url}\"\nconnect_timeout_secs = {connect_timeout_secs}\n{redis_keys}\n{extra}\n",
        uuid::Uuid::new_v4().simple()
    );
    std::fs::write(&path, text).expect("write config");
    path
}

/// [`write_config_at`] with both listeners on port 0 (the kernel picks;
/// the node logs what it got).
pub fn write_config(dir: &Path, redis_url: &str, extra: &str) -> PathBuf {
    write_config_at(dir, "127.0.0.1:0", "127.0.0.1:0", redis_url, 3, extra)
}

/// [`write_config`] on the engine of `env` (on the cluster: the
/// scenario's key prefix).
pub fn write_env_config(dir: &Path, env: &Env, extra: &str) -> PathBuf {
    let redis_keys = env.binary_keys();
    write_config_with(
        dir,
        "127.0.0.1:0",
        "127.0.0.1:0",
        &env.url(),
        3,
        &redis_keys,
        extra,
    )
}

/// `sse-notify serve -c FILE` without waiting for it; stdout and stderr go
/// to `log`.
pub fn spawn_serve(config: &Path, log: &Path) -> Child {
    serve_command(Command::new(bin()), config, log)
        .spawn()
        .expect("spawn sse-notify")
}

fn serve_command(mut cmd: Command, config: &Path, log: &Path) -> Command {
    let f = std::fs::File::create(log).expect("log file");
    cmd.args(["serve", "-c"])
        .arg(config)
        .env_remove("SSE_NOTIFY_CONFIG")
        .stdin(Stdio::null())
        .stdout(f.try_clone().expect("log file"))
        .stderr(f);
    cmd
}

/// The listener addresses of the start log line (`sse-notify serving`,
/// text or JSON format), once it is in `log`.
pub fn serving_addrs(log: &str) -> Option<(SocketAddr, SocketAddr)> {
    let line = log.lines().find(|l| l.contains("sse-notify serving"))?;
    let field = |name: &str| -> Option<SocketAddr> {
        let at = line.find(name)? + name.len();
        let rest = line[at..].trim_start_matches(['=', '"', ':']);
        let end = rest
            .find(|c: char| c == '"' || c == ',' || c.is_whitespace())
            .unwrap_or(rest.len());
        rest[..end].parse().ok()
    };
    Some((field("public_addr")?, field("admin_addr")?))
}

/// Waits for `child` to log its start line; its (public, admin) addresses,
/// or why not (it exited, or never said it serves).
pub async fn wait_serving(
    child: &mut Child,
    log: &Path,
    within: Duration,
) -> Result<(SocketAddr, SocketAddr), String> {
    let mut addrs = None;
    let mut exited = None;
    eventually(within, || {
        addrs = serving_addrs(&std::fs::read_to_string(log).unwrap_or_default());
        if let Ok(Some(status)) = child.try_wait() {
            exited = Some(status);
        }
        let done = addrs.is_some() || exited.is_some();
        async move { done }
    })
    .await;
    let text = std::fs::read_to_string(log).unwrap_or_default();
    match (addrs, exited) {
        (Some(a), _) => Ok(a),
        (None, Some(status)) => Err(format!("sse-notify exited ({status}); log:\n{text}")),
        (None, None) => Err(format!(
            "sse-notify never logged `sse-notify serving` within {within:?}; log:\n{text}"
        )),
    }
}

/// The real binary, as a sysadmin runs it.
pub struct BinaryNode {
    pub child: Child,
    pub public: SocketAddr,
    pub admin: SocketAddr,
    /// The file it was started with (listeners on port 0).
    pub config_path: PathBuf,
    /// The same config with the addresses it got: what the CLI reads.
    pub cli_config_path: PathBuf,
    pub log_path: PathBuf,
    _dir: tempfile::TempDir,
}

impl BinaryNode {
    /// `sse-notify serve -c FILE`, waiting until /healthz answers.
    pub async fn spawn(redis_url: &str, extra: &str) -> BinaryNode {
        Self::spawn_in(Command::new(bin()), redis_url, extra).await
    }

    /// [`BinaryNode::spawn`] on the engine of `env`.
    pub async fn on(env: &Env, extra: &str) -> BinaryNode {
        let dir = tempfile::tempdir().expect("tempdir");
        let config_path = write_env_config(dir.path(), env, extra);
        Self::spawn_config(Command::new(bin()), dir, config_path).await
    }

    /// The same, with an open-file limit (soft and hard) of `nofile`
    /// (through util-linux's `prlimit`, which execs the daemon in place).
    pub async fn spawn_with_nofile(redis_url: &str, extra: &str, nofile: u32) -> BinaryNode {
        let mut cmd = Command::new("prlimit");
        cmd.arg(format!("--nofile={nofile}:{nofile}"))
            .arg("--")
            .arg(bin());
        Self::spawn_in(cmd, redis_url, extra).await
    }

    async fn spawn_in(cmd: Command, redis_url: &str, extra: &str) -> BinaryNode {
        let dir = tempfile::tempdir().expect("tempdir");
        let config_path = write_config(dir.path(), redis_url, extra);
        Self::spawn_config(cmd, dir, config_path).await
    }

    async fn spawn_config(
        cmd: Command,
        dir: tempfile::TempDir,
        config_path: PathBuf,
    ) -> BinaryNode {
        let log_path = dir.path().join("log.txt");
        let mut child = serve_command(cmd, &config_path, &log_path)
            .spawn()
            .expect("spawn sse-notify");
        let (public, admin) =
            match wait_serving(&mut child, &log_path, Duration::from_secs(15)).await {
                Ok(a) => a,
                Err(why) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!("{why}");
                }
            };
        let text = std::fs::read_to_string(&config_path).expect("config");
        let cli_config_path = dir.path().join("cli.toml");
        std::fs::write(
            &cli_config_path,
            text.replacen(
                "listen = \"127.0.0.1:0\"",
                &format!("listen = \"{public}\""),
                1,
            )
            .replacen(
                "admin_listen = \"127.0.0.1:0\"",
                &format!("admin_listen = \"{admin}\""),
                1,
            ),
        )
        .expect("cli config");
        let node = BinaryNode {
            child,
            public,
            admin,
            config_path,
            cli_config_path,
            log_path,
            _dir: dir,
        };
        let url = format!("http://{admin}/healthz");
        let up = eventually(Duration::from_secs(15), || {
            let url = url.clone();
            async move { matches!(http().get(&url).send().await, Ok(r) if r.status().is_success()) }
        })
        .await;
        assert!(
            up,
            "sse-notify /healthz never answered 200; log:\n{}",
            node.log()
        );
        node
    }

    /// `-c` for the CLI: the config with this node's addresses.
    pub fn cli_config(&self) -> String {
        self.cli_config_path.to_string_lossy().into_owned()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Waits until the log contains `needle`.
    pub async fn logged(&self, needle: &str, within: Duration) -> bool {
        eventually(within, || async { self.log().contains(needle) }).await
    }

    /// Rewrites `from` (which must be there) to `to` in the config file.
    pub fn edit_config(&self, from: &str, to: &str) {
        let text = std::fs::read_to_string(&self.config_path).expect("config");
        assert!(text.contains(from), "{from:?} not in config:\n{text}");
        std::fs::write(&self.config_path, text.replace(from, to)).expect("config");
    }

    pub fn still_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    pub fn signal(&self, sig: i32) {
        // kill(2) through the command line tool: no unsafe, no libc crate.
        let status = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("kill");
        assert!(status.success());
    }

    /// Waits for the process to exit; returns its exit code.
    pub fn wait_exit(&mut self, within: Duration) -> Option<i32> {
        wait_exit(&mut self.child, within)
    }
}

impl Node for BinaryNode {
    fn public_addr(&self) -> SocketAddr {
        self.public
    }

    fn admin_addr(&self) -> SocketAddr {
        self.admin
    }
}

impl Drop for BinaryNode {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs a CLI subcommand of the real binary: (exit code, stdout, stderr).
pub fn cli(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(bin())
        .args(args)
        .env_remove("SSE_NOTIFY_CONFIG")
        .output()
        .expect("run sse-notify");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// [`cli`] without blocking the test's runtime (streams stay polled).
pub async fn cli_async(args: &[&str]) -> (i32, String, String) {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        cli(&refs)
    })
    .await
    .expect("CLI thread")
}
