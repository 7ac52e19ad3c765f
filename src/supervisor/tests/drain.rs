//! The drain on SIGTERM: who is stopped at once, who after the grace, and when it is done.

use std::time::Duration;

use tokio::sync::oneshot;

use super::*;
use crate::messages::{Drain, DrainNow, KillCause};

const GRACE: Duration = Duration::from_secs(5);

fn drain(h: &Harness, grace: Duration) -> oneshot::Receiver<()> {
    let (done, done_rx) = oneshot::channel();
    h.supervisor.do_send(Drain { grace, done });
    done_rx
}

#[actix_rt::test]
async fn a_drain_stops_the_waiting_at_once_the_running_after_the_grace() {
    tokio::time::pause();
    let mut h = Harness::start(config(1, 0, 2));
    let mut running = h.session("a");
    let mut queued = h.session("b");
    let mut connected = h.session("c"); // no HELLO yet
    let c1 = running.granted().await;
    let _io = running.run(&c1, "sleep");
    assert!(matches!(running.next().await, Heard::Started { .. }));
    assert_eq!(queued.queued().await, 1);

    let t0 = tokio::time::Instant::now();
    let mut done = drain(&h, GRACE);
    assert_eq!(queued.stopped().await, SessionStop::Shutdown);
    assert_eq!(connected.stopped().await, SessionStop::Shutdown);
    assert_eq!(t0.elapsed(), Duration::ZERO, "not after the grace");
    // A newcomer is turned away.
    let mut late = h.session("d");
    assert_eq!(late.stopped().await, SessionStop::Shutdown);
    assert!(matches!(late.admit().await, Admission::ShuttingDown));
    for s in [&queued, &connected, &late] {
        s.unregister();
    }

    // The running session goes on for the grace, then is ended, and its script killed.
    assert_eq!(running.stopped().await, SessionStop::Shutdown);
    assert!(t0.elapsed() >= GRACE, "{:?}", t0.elapsed());
    assert_eq!(
        running.finished().await,
        Finished::Killed(KillCause::Shutdown)
    );
    h.engine.until(|s| s.present.is_empty()).await;
    assert!(
        done.try_recv().is_err(),
        "done before the last session ended"
    );
    running.unregister();
    tokio::time::timeout(PATIENCE, done)
        .await
        .expect("the drain ends")
        .expect("done is sent");
    assert!(h.engine.state().present.is_empty());
}

#[actix_rt::test]
async fn a_drain_removes_the_spares_and_is_done_without_waiting_for_the_grace() {
    tokio::time::pause();
    let h = Harness::start(config(2, 2, 0));
    h.engine.until(|s| s.idle.len() == 2).await;
    let t0 = tokio::time::Instant::now();
    let done = drain(&h, Duration::from_secs(60));
    tokio::time::timeout(PATIENCE, done)
        .await
        .expect("the drain ends")
        .expect("done is sent");
    assert!(t0.elapsed() < Duration::from_secs(60), "{:?}", t0.elapsed());
    let state = h.engine.state();
    assert!(state.present.is_empty() && state.kills.is_empty());
    assert_eq!(state.launches.len(), 2, "no refill during the drain");
}

/// A second SIGTERM during the drain ends the running sessions without the grace.
#[actix_rt::test]
async fn drain_now_ends_the_running_sessions_at_once() {
    tokio::time::pause();
    let mut h = Harness::start(config(1, 0, 0));
    let mut s1 = h.session("a");
    let c1 = s1.granted().await;
    let _io = s1.run(&c1, "sleep");
    assert!(matches!(s1.next().await, Heard::Started { .. }));
    let t0 = tokio::time::Instant::now();
    let done = drain(&h, Duration::from_secs(60));
    h.supervisor.do_send(DrainNow);
    assert_eq!(s1.stopped().await, SessionStop::Shutdown);
    assert_eq!(s1.finished().await, Finished::Killed(KillCause::Shutdown));
    s1.unregister();
    tokio::time::timeout(PATIENCE, done)
        .await
        .expect("the drain ends")
        .expect("done is sent");
    assert!(t0.elapsed() < Duration::from_secs(1), "{:?}", t0.elapsed());
}
