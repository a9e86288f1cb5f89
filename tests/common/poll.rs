//! Time, waiting on conditions (never on the clock alone), and the
//! counters of `/metrics` that tell how much time a node has lived through.

use std::fmt::Display;
use std::future::Future;
use std::process::Child;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Seconds since the epoch, as the registry stores times.
pub fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("the clock is after 1970")
        .as_secs_f64()
}

/// The strings of `v`, sorted (ids are compared as sets).
pub fn sorted<S: AsRef<str>>(v: &[S]) -> Vec<String> {
    let mut v: Vec<String> = v.iter().map(|s| s.as_ref().to_string()).collect();
    v.sort();
    v
}

/// How often a condition is polled: short next to every deadline used.
const POLL: Duration = Duration::from_millis(50);

/// Polls `f` until it returns true or `within` passes.
pub async fn eventually<F, Fut>(within: Duration, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    loop {
        if f().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Polls `f` until it returns true; panics after `within` with `what`
/// (what never happened).
pub async fn wait_until<F, Fut>(within: Duration, what: impl Display, f: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    assert!(
        eventually(within, f).await,
        "within {within:?}: {what} never happened"
    );
}

/// [`eventually`] for blocking conditions (threads without a runtime).
pub fn eventually_blocking(within: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits for `child` to exit; its exit code, or None (then it is killed)
/// when it still runs after `within`.
pub fn wait_exit(child: &mut Child, within: Duration) -> Option<i32> {
    let mut code = None;
    let exited = eventually_blocking(within, || match child.try_wait() {
        Ok(Some(status)) => {
            code = status.code();
            true
        }
        _ => false,
    });
    if !exited {
        let _ = child.kill();
        let _ = child.wait();
    }
    code
}

/// The value of the sample `name` (no labels) in a Prometheus text.
pub fn metric_value(text: &str, name: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == name).then(|| v.trim().parse().ok())?
    })
}

/// The `/metrics` text of a node's admin listener at `admin_base`
/// (`http://host:port`); panics unless it answers 200.
pub async fn metrics_text(admin_base: &str) -> String {
    let resp = super::http()
        .get(format!("{admin_base}/metrics"))
        .send()
        .await
        .expect("metrics");
    assert_eq!(resp.status().as_u16(), 200);
    resp.text().await.expect("metrics body")
}

/// One sample of a node's `/metrics`; panics when it is missing.
pub async fn metric(admin_base: &str, name: &str) -> f64 {
    let text = metrics_text(admin_base).await;
    metric_value(&text, name).unwrap_or_else(|| panic!("no {name} in /metrics:\n{text}"))
}

/// Waits until the node has run `n` more sweeps than now
/// (`sse_notify_sweeps_total`): "still so later" means "still so after
/// the sweeps that would have changed it", whatever the machine's speed.
pub async fn wait_for_sweeps(admin_base: &str, n: u32) {
    const NAME: &str = "sse_notify_sweeps_total";
    let start = metric(admin_base, NAME).await;
    let want = start + f64::from(n);
    let last = std::cell::Cell::new(start);
    let done = eventually(Duration::from_secs(10 + 2 * u64::from(n)), || {
        let last = &last;
        async move {
            last.set(metric(admin_base, NAME).await);
            last.get() >= want
        }
    })
    .await;
    assert!(
        done,
        "{n} sweeps never ran: {NAME} went from {start} to {} (sweep.interval_secs too long, or sweeps failing?)",
        last.get()
    );
}
