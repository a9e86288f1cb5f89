//! Token-mode streams end when their token does (README "Auth"): one
//! deadline queue for the node and one task that sleeps until its earliest
//! deadline, then sends `token_expired` and closes the stream through the
//! hub's close path (the one logouts take).
//!
//! Not a timer per stream, on purpose: an idle stream is the daemon's unit
//! of cost, and a `Sleep` in every stream's task would add its timer entry
//! to each one. A stream of header or none mode is not in the queue at all;
//! a token-mode stream costs one 20-byte key here while it is open.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::frame;
use super::hub::Hub;
use crate::store::unix_now;

/// Clock skew allowed between the token's issuer and this node, on `exp`
/// and `nbf` alike: a stream ends at `exp` plus this.
pub(crate) const TOKEN_LEEWAY_SECS: u64 = 5;

/// The longest the task sleeps without looking again: the deadlines are
/// wall-clock times, and a clock stepped forward (NTP) must not delay a
/// close by more than this.
const MAX_SLEEP: Duration = Duration::from_secs(30);

/// Streams that end at a deadline: `(exp, connection id)`, earliest first.
/// `exp` is the token's, in unix seconds (clamped to `u32`: the year 2106).
#[derive(Default)]
pub(crate) struct Expiries {
    due: Mutex<BTreeSet<(u32, Uuid)>>,
    /// Wakes the task when a new earliest deadline arrives.
    wake: Notify,
}

impl Expiries {
    fn lock(&self) -> MutexGuard<'_, BTreeSet<(u32, Uuid)>> {
        // A panic while holding this lock leaves a consistent set.
        self.due.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The `exp` as kept here (and by the stream, to take itself out).
    pub(crate) fn clamp(exp: u64) -> u32 {
        u32::try_from(exp).unwrap_or(u32::MAX)
    }

    /// Closes `connection_id` at `exp` plus the leeway.
    pub(crate) fn add(&self, exp: u32, connection_id: &str) {
        let Ok(id) = Uuid::parse_str(connection_id) else {
            return;
        };
        let earliest = {
            let mut due = self.lock();
            due.insert((exp, id));
            due.first() == Some(&(exp, id))
        };
        if earliest {
            self.wake.notify_one();
        }
    }

    /// The stream ended before its token: forget it.
    pub(crate) fn remove(&self, exp: u32, connection_id: &str) {
        if let Ok(id) = Uuid::parse_str(connection_id) {
            self.lock().remove(&(exp, id));
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().len()
    }

    /// Takes the entries due at `now` (unix secs); returns them and how
    /// long until the next one (`None`: nothing left).
    fn take_due(&self, now: f64) -> (Vec<(u32, Uuid)>, Option<Duration>) {
        let mut due = self.lock();
        let mut taken = Vec::new();
        while let Some(&(exp, id)) = due.first() {
            let deadline = u64::from(exp) + TOKEN_LEEWAY_SECS;
            if (deadline as f64) > now {
                return (taken, Some(Duration::from_secs_f64(deadline as f64 - now)));
            }
            due.pop_first();
            taken.push((exp, id));
        }
        (taken, None)
    }
}

/// Until shutdown: at each deadline, `token_expired` then the close, for
/// every stream whose token ran out.
pub(crate) async fn run(expiries: Arc<Expiries>, hub: Arc<Hub>, shutdown: CancellationToken) {
    loop {
        let (expired, next) = expiries.take_due(unix_now());
        for (exp, id) in expired {
            let id = id.hyphenated().to_string();
            let notice = frame::token_expired(&id, exp);
            if !hub
                .close(std::slice::from_ref(&id), Some(&notice))
                .is_empty()
            {
                tracing::debug!(connection_id = %id, exp, "token expired; stream closed");
            }
        }
        let wait = next.map_or(MAX_SLEEP, |d| d.min(MAX_SLEEP));
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = expiries.wake.notified() => {}
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn due_in_deadline_order_after_the_leeway() {
        let e = Expiries::default();
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        e.add(200, &b.to_string());
        e.add(100, &a.to_string());
        e.add(300, "not-a-uuid");
        assert_eq!(e.len(), 2);
        let (taken, next) = e.take_due(104.5);
        assert!(taken.is_empty());
        assert_eq!(next, Some(Duration::from_millis(500)));
        let (taken, next) = e.take_due(105.0);
        assert_eq!(taken, vec![(100, a)]);
        assert_eq!(next, Some(Duration::from_secs(100)));
        e.remove(200, &b.to_string());
        assert_eq!(e.take_due(1e9), (Vec::new(), None));
        assert_eq!(Expiries::clamp(u64::MAX), u32::MAX);
    }

    #[tokio::test]
    async fn the_task_sends_the_notice_then_closes() {
        let hub = Arc::new(Hub::new(Arc::new(crate::metrics::Metrics::new())));
        let expiries = Arc::new(Expiries::default());
        let shutdown = CancellationToken::new();
        let id = Uuid::new_v4().to_string();
        let conn = crate::store::LiveConn {
            connection_id: id.clone(),
            username: "u".into(),
            connection_time: 1.0,
            topics: Vec::new(),
        };
        let mut rx = hub
            .register(&conn, 4, 10, CancellationToken::new())
            .unwrap();
        let task = tokio::spawn(run(expiries.clone(), hub.clone(), shutdown.clone()));
        // Long past: due at once, and the task is woken for it.
        expiries.add(1000, &id);
        let first = rx.recv().await.unwrap();
        assert_eq!(first, frame::token_expired(&id, 1000));
        assert_eq!(rx.recv().await, None, "closed after the notice");
        assert!(!hub.contains(&id));
        shutdown.cancel();
        task.await.unwrap();
    }
}
