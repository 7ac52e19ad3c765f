//! The stdin path from a session to its container's stdin pump: one buffer per session,
//! not one message per STDIN frame.
//!
//! The credit window bounds the stdin *bytes* a client may have in flight (256 KiB). As
//! one queued message per frame, a window sent as 262,144 one-byte frames cost about
//! 40 bytes of bookkeeping per byte: 10 MiB per session, 400 MB for one client using the
//! default queue (issue 9). Appended to one buffer, what a session holds is its window
//! plus a constant, whatever the frame sizes.

use std::sync::Mutex;

use bytes::{Bytes, BytesMut};
use tokio::sync::Notify;

#[derive(Debug, Default)]
struct Pending {
    data: BytesMut,
    /// Bytes of `data` that the server made itself (the file records of feature
    /// `files`): not the client's, so not counted against its window nor credited.
    uncounted: usize,
    eof: bool,
}

/// A single-producer (the session), single-consumer (the stdin pump) byte queue.
#[derive(Debug, Default)]
pub struct StdinQueue {
    pending: Mutex<Pending>,
    /// Holds a permit when woken with nobody waiting, so a push between the consumer's
    /// look and its wait is never missed.
    ready: Notify,
}

impl StdinQueue {
    pub fn new() -> Self {
        Self::default()
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, Pending> {
        // Nothing panics while holding the lock; a poisoned one still holds valid bytes.
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Appends bytes for the script (copied: a frame's bytes would otherwise pin the
    /// whole read buffer they were sliced from).
    pub fn push(&self, data: &[u8]) {
        self.pending().data.extend_from_slice(data);
        self.ready.notify_one();
    }

    /// Appends bytes of the server's own making (a file record's head), which the
    /// client's window does not count.
    pub fn push_uncounted(&self, data: &[u8]) {
        let mut pending = self.pending();
        pending.data.extend_from_slice(data);
        pending.uncounted += data.len();
        drop(pending);
        self.ready.notify_one();
    }

    /// The client closed stdin: the pump ends once the bytes before it are written.
    pub fn close(&self) {
        self.pending().eof = true;
        self.ready.notify_one();
    }

    /// Everything waiting, as one chunk, with how many of its bytes the client's window
    /// counts; `None` once stdin is closed and drained.
    pub async fn next(&self) -> Option<(Bytes, usize)> {
        loop {
            {
                let mut pending = self.pending();
                if !pending.data.is_empty() {
                    let data = pending.data.split().freeze();
                    let counted = data.len() - std::mem::take(&mut pending.uncounted);
                    return Some((data, counted));
                }
                if pending.eof {
                    return None;
                }
            }
            self.ready.notified().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    #[tokio::test]
    async fn small_pushes_come_out_merged_and_in_order() {
        let q = StdinQueue::new();
        for b in b"hello" {
            q.push(&[*b]);
        }
        q.push(b" world");
        assert_eq!(
            q.next().await,
            Some((Bytes::from_static(b"hello world"), 11))
        );
        q.close();
        assert_eq!(q.next().await, None);
    }

    #[tokio::test]
    async fn bytes_before_eof_are_delivered_before_it() {
        let q = StdinQueue::new();
        q.push(b"last line\n");
        q.close();
        assert_eq!(
            q.next().await.map(|(b, _)| b).as_deref(),
            Some(&b"last line\n"[..])
        );
        assert_eq!(q.next().await, None);
        assert_eq!(q.next().await, None, "EOF stays EOF");
    }

    #[tokio::test]
    async fn a_waiting_consumer_is_woken_by_a_push() {
        let q = Arc::new(StdinQueue::new());
        let consumer = tokio::spawn({
            let q = q.clone();
            async move { q.next().await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!consumer.is_finished(), "nothing to take yet");
        q.push(b"x");
        let got = tokio::time::timeout(Duration::from_secs(5), consumer)
            .await
            .expect("woken")
            .unwrap();
        assert_eq!(got.map(|(b, _)| b).as_deref(), Some(&b"x"[..]));
    }

    /// A file record's head is the server's: the client's window counts only its bytes.
    #[tokio::test]
    async fn uncounted_bytes_are_not_the_clients() {
        let q = StdinQueue::new();
        q.push_uncounted(b"head");
        q.push(b"content");
        assert_eq!(
            q.next().await,
            Some((Bytes::from_static(b"headcontent"), 7))
        );
        q.push(b"more");
        assert_eq!(q.next().await, Some((Bytes::from_static(b"more"), 4)));
    }

    #[test]
    fn a_window_of_one_byte_pushes_costs_about_the_window() {
        let q = StdinQueue::new();
        for _ in 0..262_144 {
            q.push(b"a");
        }
        assert_eq!(q.pending().data.len(), 262_144);
        // Doubling growth: the buffer holds the bytes in at most twice their size.
        assert!(q.pending().data.capacity() <= 2 * 262_144);
    }
}
