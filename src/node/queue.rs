//! A stream's queue of frames: bounded, one sender (the hub's entry) and
//! one receiver (the stream writing to its socket).
//!
//! Not `tokio::sync::mpsc`, on purpose: an idle stream is the daemon's
//! unit of cost, and a tokio channel allocates its first block of 32 slots
//! and two cache-padded halves up front, about 1.6 KiB per stream before
//! any frame is queued. This queue is a `VecDeque` behind a mutex that
//! holds nothing while empty and gives back what a burst grew. The lock is
//! uncontended in practice: the hub pushes under its own lock, and the
//! stream takes frames only when woken.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;

/// Capacity kept after the queue drains; more is given back.
const KEEP: usize = 8;

struct State {
    frames: VecDeque<Bytes>,
    /// The stream's task, waiting for a frame or the close.
    waker: Option<Waker>,
    sender: bool,
    receiver: bool,
    /// A one-tab message was queued: when the stream ends, the node says
    /// what it wrote, so a replay does not give those to another tab.
    one_tab: bool,
}

struct Shared {
    cap: usize,
    state: Mutex<State>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock leaves a consistent VecDeque.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A queue that holds at most `cap` frames (at least one).
pub(crate) fn queue(cap: usize) -> (Sender, Receiver) {
    let shared = Arc::new(Shared {
        cap: cap.max(1),
        state: Mutex::new(State {
            frames: VecDeque::new(),
            waker: None,
            sender: true,
            receiver: true,
            one_tab: false,
        }),
    });
    (
        Sender {
            shared: shared.clone(),
        },
        Receiver { shared },
    )
}

/// Why a frame was not queued.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum SendError {
    /// The client stopped reading.
    Full,
    /// The stream is gone.
    Closed,
}

/// Dropping it closes the queue: the stream writes what is queued, then
/// ends.
pub(crate) struct Sender {
    shared: Arc<Shared>,
}

impl Sender {
    /// Queues `frame` without waiting.
    pub(crate) fn try_send(&self, frame: Bytes) -> Result<(), SendError> {
        self.push(frame, false)
    }

    /// Queues the frame of a one-tab message (`all_connections: false`).
    pub(crate) fn try_send_one_tab(&self, frame: Bytes) -> Result<(), SendError> {
        self.push(frame, true)
    }

    fn push(&self, frame: Bytes, one_tab: bool) -> Result<(), SendError> {
        let waker = {
            let mut s = self.shared.lock();
            if !s.receiver {
                return Err(SendError::Closed);
            }
            if s.frames.len() >= self.shared.cap {
                return Err(SendError::Full);
            }
            s.frames.push_back(frame);
            s.one_tab |= one_tab;
            s.waker.take()
        };
        // Woken outside the lock, so the stream's task does not find it
        // held when it runs at once on another thread.
        if let Some(w) = waker {
            w.wake();
        }
        Ok(())
    }

    /// True once the stream is gone.
    pub(crate) fn is_closed(&self) -> bool {
        !self.shared.lock().receiver
    }
}

impl Drop for Sender {
    fn drop(&mut self) {
        let waker = {
            let mut s = self.shared.lock();
            s.sender = false;
            s.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
pub(crate) enum TryRecvError {
    Empty,
    /// Closed and drained.
    Disconnected,
}

pub(crate) struct Receiver {
    shared: Arc<Shared>,
}

impl Receiver {
    /// The next frame; `None` once the queue is closed and drained.
    pub(crate) async fn recv(&mut self) -> Option<Bytes> {
        poll_fn(|cx| self.poll_recv(cx)).await
    }

    fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<Bytes>> {
        let mut s = self.shared.lock();
        if let Some(f) = pop(&mut s) {
            return Poll::Ready(Some(f));
        }
        if !s.sender {
            return Poll::Ready(None);
        }
        match &mut s.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            slot => *slot = Some(cx.waker().clone()),
        }
        Poll::Pending
    }

    /// Whether a one-tab message was ever queued to this stream.
    pub(crate) fn had_one_tab(&self) -> bool {
        self.shared.lock().one_tab
    }

    /// Ready once the sender is gone (the stream was closed), frames left
    /// or not: a stream blocked writing to a full socket learns of its
    /// close here, where `recv` is not polled.
    pub(crate) fn poll_closed(&self, cx: &mut Context<'_>) -> Poll<()> {
        let mut s = self.shared.lock();
        if !s.sender {
            return Poll::Ready(());
        }
        match &mut s.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            slot => *slot = Some(cx.waker().clone()),
        }
        Poll::Pending
    }

    /// A frame queued now, without waiting.
    pub(crate) fn try_recv(&mut self) -> Result<Bytes, TryRecvError> {
        let mut s = self.shared.lock();
        match pop(&mut s) {
            Some(f) => Ok(f),
            None if s.sender => Err(TryRecvError::Empty),
            None => Err(TryRecvError::Disconnected),
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let mut s = self.shared.lock();
        s.receiver = false;
        s.frames = VecDeque::new();
        s.waker = None;
    }
}

fn pop(s: &mut State) -> Option<Bytes> {
    let f = s.frames.pop_front();
    if s.frames.is_empty() && s.frames.capacity() > KEEP {
        s.frames = VecDeque::new();
    }
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(s: &'static str) -> Bytes {
        Bytes::from_static(s.as_bytes())
    }

    #[test]
    fn bounded_in_order_then_closed_after_drain() {
        let (tx, mut rx) = queue(2);
        assert_eq!(tx.try_send(f("a")), Ok(()));
        assert_eq!(tx.try_send(f("b")), Ok(()));
        assert_eq!(tx.try_send(f("c")), Err(SendError::Full));
        assert_eq!(rx.try_recv(), Ok(f("a")));
        assert_eq!(tx.try_send(f("c")), Ok(()));
        drop(tx);
        assert_eq!(rx.try_recv(), Ok(f("b")));
        assert_eq!(rx.try_recv(), Ok(f("c")));
        assert_eq!(rx.try_recv(), Err(TryRecvError::Disconnected));
    }

    #[test]
    fn a_gone_receiver_refuses_frames() {
        let (tx, rx) = queue(4);
        assert!(!tx.is_closed());
        drop(rx);
        assert!(tx.is_closed());
        assert_eq!(tx.try_send(f("a")), Err(SendError::Closed));
    }

    #[test]
    fn a_burst_gives_its_memory_back_once_drained() {
        let (tx, mut rx) = queue(1000);
        for _ in 0..500 {
            tx.try_send(f("x")).unwrap();
        }
        while rx.try_recv().is_ok() {}
        assert!(tx.shared.lock().frames.capacity() <= KEEP);
    }

    #[tokio::test]
    async fn the_close_wakes_a_receiver_that_only_watches_for_it() {
        let (tx, rx) = queue(4);
        tx.try_send(f("left")).unwrap();
        let watcher = tokio::spawn(async move {
            poll_fn(|cx| rx.poll_closed(cx)).await;
            rx
        });
        tokio::task::yield_now().await;
        drop(tx);
        let mut rx = watcher.await.unwrap();
        // Closed, yet what was queued before the close is still there.
        assert_eq!(rx.try_recv(), Ok(f("left")));
        assert_eq!(rx.try_recv(), Err(TryRecvError::Disconnected));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_waiting_receiver_is_woken_by_a_frame_and_by_the_close() {
        let (tx, mut rx) = queue(4);
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            while let Some(f) = rx.recv().await {
                got.push(f);
            }
            got
        });
        for i in 0..100u8 {
            // Waits for room, as a stream reading at its own pace.
            let frame = Bytes::from(vec![i]);
            while tx.try_send(frame.clone()) == Err(SendError::Full) {
                tokio::task::yield_now().await;
            }
        }
        drop(tx);
        let got = reader.await.unwrap();
        assert_eq!(
            got,
            (0..100u8).map(|i| Bytes::from(vec![i])).collect::<Vec<_>>()
        );
    }
}
