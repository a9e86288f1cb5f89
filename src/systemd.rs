//! The systemd notify protocol (`Type=notify`): READY=1 once serving,
//! RELOADING=1 around SIGHUP, STOPPING=1 at shutdown, and watchdog pings
//! when the unit sets `WatchdogSec`. Without `NOTIFY_SOCKET` every call is
//! a no-op, so the daemon runs the same outside systemd.

use std::time::Duration;

use sd_notify::NotifyState;
use tokio_util::sync::CancellationToken;

fn send(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!(error = %e, "systemd notification failed");
    }
}

pub(crate) fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

pub(crate) fn reloading() {
    // MONOTONIC_USEC lets Type=notify-reload units match this to the signal.
    match NotifyState::monotonic_usec_now() {
        Ok(now) => send(&[NotifyState::Reloading, now]),
        Err(_) => send(&[NotifyState::Reloading]),
    }
}

pub(crate) fn stopping() {
    send(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
}

/// Pings the watchdog at half its interval until shutdown. The ping comes
/// from the runtime itself, so a wedged event loop stops it and systemd
/// restarts the service.
pub(crate) async fn watchdog(shutdown: CancellationToken) {
    let Some(interval) = sd_notify::watchdog_enabled() else {
        return;
    };
    let every = (interval / 2).max(Duration::from_millis(100));
    tracing::info!(
        interval_ms = interval.as_millis() as u64,
        "systemd watchdog enabled"
    );
    loop {
        send(&[NotifyState::Watchdog]);
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
    }
}
