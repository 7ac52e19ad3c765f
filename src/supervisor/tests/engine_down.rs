//! Losing the engine (what a session reports as `ERROR docker`) and getting it back.

use std::time::Duration;

use super::*;
use crate::engine::EngineError;
use crate::messages::{ContainerFailure, Kill, KillCause};

/// An idle daemon notices by its periodic check: the queue is emptied, newcomers are
/// refused, and sessions are admitted again once the engine answers.
#[actix_rt::test]
async fn an_engine_that_stops_answering_is_noticed_and_its_return_too() {
    tokio::time::pause();
    let mut h = Harness::start(config(1, 0, 2));
    let s1 = h.session("a");
    let mut s2 = h.session("b");
    let c1 = s1.granted().await;
    let _io = s1.run(&c1, "sleep");
    assert_eq!(s2.queued().await, 1);

    h.engine.set_up(false);
    assert_eq!(s2.stopped().await, SessionStop::Unavailable);
    let s3 = h.session("c");
    match s3.admit().await {
        Admission::Unavailable(EngineError::Unreachable(_)) => {}
        other => panic!("expected unavailable, got {other:?}"),
    }

    h.engine.set_up(true);
    h.engine.until(|s| s.pings > 0).await;
    let mut s4 = h.session("d");
    assert_eq!(s4.queued().await, 1, "s1 still holds the slot");
    s1.unregister();
    let c4 = s4.admitted().await;
    let mut io = s4.run(&c4, "print back");
    assert_eq!(s4.finished().await, exited(0));
    assert_eq!(io.stdout(), "back\n");
}

/// A launch that cannot reach the engine fails its session and marks the engine down at
/// once, without waiting for the periodic check.
#[actix_rt::test]
async fn a_launch_that_cannot_reach_the_engine_marks_it_down() {
    tokio::time::pause();
    let mut h = Harness::start(config(1, 0, 2));
    h.engine.set_launch_delay(Duration::from_millis(50));
    h.engine.set_up(false);
    let mut s1 = h.session("a");
    let mut s2 = h.session("b");
    let c1 = s1.granted().await;
    assert_eq!(s2.queued().await, 1);
    let _io = s1.run(&c1, "print never");
    match s1.finished().await {
        Finished::Failed(ContainerFailure::Start(EngineError::Unreachable(_))) => {}
        other => panic!("expected a start failure, got {other:?}"),
    }
    assert_eq!(s2.stopped().await, SessionStop::Unavailable);
    let s3 = h.session("c");
    assert!(matches!(s3.admit().await, Admission::Unavailable(_)));
    s1.unregister();

    h.engine.set_up(true);
    h.engine.until(|s| s.pings > 0).await;
    let _c4 = h.session("d").granted().await;
}

/// The engine is lost under a running script: the kill the session asks for cannot be
/// carried out, the container cannot be removed; it is removed once the engine is back.
#[actix_rt::test]
async fn a_container_that_cannot_be_removed_is_removed_once_the_engine_is_back() {
    tokio::time::pause();
    let mut h = Harness::start(config(1, 0, 0));
    let mut s1 = h.session("a");
    let c1 = s1.granted().await;
    let _io = s1.run(&c1, "sleep");
    assert!(matches!(s1.next().await, Heard::Started { .. }));

    h.engine.set_up(false);
    c1.kill.do_send(Kill(KillCause::Cancelled));
    match s1.finished().await {
        Finished::Failed(ContainerFailure::Kill(EngineError::Unreachable(_))) => {}
        other => panic!("expected a failed kill, got {other:?}"),
    }
    s1.unregister();
    assert_eq!(h.engine.state().present.len(), 1, "left behind");

    h.engine.set_up(true);
    let state = h.engine.until(|s| s.present.is_empty()).await;
    assert_eq!(state.removed.len(), 1);
}
