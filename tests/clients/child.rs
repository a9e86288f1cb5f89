//! A client program written by others (a Node or Python script driving a
//! third-party SSE client) run as a child process that prints one JSON
//! object per line for every event it gets. Shared by `tests/browser.rs`,
//! `tests/clients.rs` (as `#[path = "clients/child.rs"] mod child;`).
//!
//! The child is bounded: [`JsonChild::wait_until`] never waits past its
//! deadline, and dropping it stops the process (SIGTERM, so that a browser
//! is closed properly, then SIGKILL).
#![allow(dead_code)]
// Shared by two test crates: pub for them, not for a library surface.
#![allow(unreachable_pub)]

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::mpsc;

pub struct JsonChild {
    label: String,
    /// None for a client running in this process ([`JsonChild::in_process`]).
    child: Option<Child>,
    task: Option<tokio::task::JoinHandle<()>>,
    stdin: Option<ChildStdin>,
    rx: mpsc::UnboundedReceiver<Value>,
    /// Every line printed so far, in order (non-JSON lines as strings).
    pub seen: Vec<Value>,
    stderr: Arc<Mutex<String>>,
    started: Instant,
    deadline: Instant,
}

/// Panics with a clear message when `program --version` cannot run: the
/// tests using it must fail, never pass, where the tool is missing.
pub fn require_tool(program: &str, hint: &str) -> String {
    match std::process::Command::new(program)
        .arg("--version")
        .output()
    {
        Ok(out) if out.status.success() => String::from_utf8_lossy(&out.stdout).trim().to_string(),
        Ok(out) => panic!(
            "`{program} --version` failed ({}): {}\n{hint}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(e) => panic!("{program} is not installed ({e}): {hint}"),
    }
}

/// Panics unless `path` exists, with `hint` saying how to get it.
pub fn require_path(path: &Path, hint: &str) {
    assert!(path.exists(), "{} is missing: {hint}", path.display());
}

/// Debian's Chromium (`CHROMIUM` or /usr/bin/chromium), or a clear panic.
pub fn chromium() -> PathBuf {
    let path = std::env::var_os("CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"));
    require_path(
        &path,
        "this test needs Debian's Chromium: `apt-get install chromium` (.ci/run does), \
         or set CHROMIUM to a Chromium binary",
    );
    path
}

/// node, the npm packages of tests/browser and Chromium (its path), or a
/// clear panic.
pub fn browser_tools() -> PathBuf {
    require_tool("node", "this test needs Node.js (>= 20) and npm");
    require_path(
        &Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/browser/node_modules/playwright-core/package.json"),
        "run `npm ci --prefix tests/browser` (.ci/run does)",
    );
    chromium()
}

impl JsonChild {
    /// Starts `cmd` (stdin, stdout and stderr piped) with a lifetime of at
    /// most `limit`.
    pub fn spawn(label: &str, mut cmd: Command, limit: Duration) -> JsonChild {
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {label}: {e}"));
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().unwrap();
        let mut err_pipe = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let v = serde_json::from_str(&line).unwrap_or(Value::String(line));
                if tx.send(v).is_err() {
                    break;
                }
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let sink = stderr.clone();
        tokio::spawn(async move {
            let mut buf = [0u8; 4096];
            while let Ok(n) = err_pipe.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        let started = Instant::now();
        JsonChild {
            label: label.to_string(),
            child: Some(child),
            task: None,
            stdin,
            rx,
            seen: Vec::new(),
            stderr,
            started,
            deadline: started + limit,
        }
    }

    /// A client running in this process as `task`, sending what it decodes
    /// (the same JSON objects a script prints) to `rx`; finishing aborts it.
    pub fn in_process(
        label: &str,
        task: tokio::task::JoinHandle<()>,
        rx: mpsc::UnboundedReceiver<Value>,
        limit: Duration,
    ) -> JsonChild {
        let started = Instant::now();
        JsonChild {
            label: label.to_string(),
            child: None,
            task: Some(task),
            stdin: None,
            rx,
            seen: Vec::new(),
            stderr: Arc::new(Mutex::new(String::new())),
            started,
            deadline: started + limit,
        }
    }

    /// Reads lines until `done(&seen)` holds (true), the child's output ends,
    /// `within` passes or the child's deadline is reached (false).
    pub async fn wait_until(&mut self, within: Duration, done: impl Fn(&[Value]) -> bool) -> bool {
        let until = (Instant::now() + within).min(self.deadline);
        loop {
            if done(&self.seen) {
                return true;
            }
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            match tokio::time::timeout(left, self.rx.recv()).await {
                Ok(Some(v)) => self.seen.push(v),
                Ok(None) | Err(_) => return done(&self.seen),
            }
        }
    }

    /// Takes in every line printed during `dur` (e.g. to see that nothing
    /// more arrives).
    pub async fn settle(&mut self, dur: Duration) {
        self.wait_until(dur, |_| false).await;
    }

    /// Panics with the report when the child printed a `fatal` line.
    pub fn assert_no_fatal(&self) {
        if let Some(f) = self.seen.iter().find(|v| v["type"] == "fatal") {
            panic!("{} failed: {f}\n{}", self.label, self.report());
        }
    }

    /// What the child printed so far, for failure messages.
    pub fn report(&self) -> String {
        let mut s = format!(
            "--- {} ({:?} since start), stdout:\n",
            self.label,
            self.started.elapsed()
        );
        for v in &self.seen {
            s.push_str(&v.to_string());
            s.push('\n');
        }
        s.push_str("--- stderr:\n");
        s.push_str(&self.stderr.lock().unwrap());
        s
    }

    /// Writes one line to the child's stdin (for scripts that take commands).
    pub async fn command(&mut self, line: &str) {
        use tokio::io::AsyncWriteExt;
        let stdin = self.stdin.as_mut().expect("stdin open");
        stdin.write_all(line.as_bytes()).await.expect("write stdin");
        stdin.write_all(b"\n").await.expect("write stdin");
        stdin.flush().await.expect("flush stdin");
    }

    /// Closes stdin (the scripts' signal to stop) and waits for the exit
    /// status, at most `within`; None if it did not exit by then.
    pub async fn finish(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        use std::os::unix::process::ExitStatusExt;
        self.stdin.take();
        let status = match (&mut self.child, self.task.take()) {
            (Some(child), _) => tokio::time::timeout(within, child.wait())
                .await
                .ok()
                .and_then(Result::ok),
            (None, Some(task)) => {
                task.abort();
                // A task that ended by itself (panic, early return) failed.
                match tokio::time::timeout(within, task).await {
                    Ok(Err(e)) if e.is_cancelled() => Some(std::process::ExitStatus::from_raw(0)),
                    Ok(_) => Some(std::process::ExitStatus::from_raw(1 << 8)),
                    Err(_) => None,
                }
            }
            (None, None) => None,
        };
        // Whatever it printed last.
        while let Ok(v) = self.rx.try_recv() {
            self.seen.push(v);
        }
        status
    }
}

impl Drop for JsonChild {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
        let Some(child) = self.child.as_mut() else {
            return;
        };
        if let Ok(None) = child.try_wait() {
            // SIGTERM first: the browser script closes Chromium on it.
            if let Some(pid) = child.id() {
                let _ = std::process::Command::new("kill")
                    .args(["-TERM", &pid.to_string()])
                    .status();
                let until = Instant::now() + Duration::from_secs(5);
                while Instant::now() < until {
                    if !matches!(child.try_wait(), Ok(None)) {
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
            let _ = child.start_kill();
        }
    }
}
