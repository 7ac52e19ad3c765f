//! Losing the engine (what a session reports as `ERROR docker`) and getting it back.

use std::time::Duration;

use super::*;
use crate::engine::EngineError;
use crate::messages::ContainerFailure;

/// The engine is lost under a running script (its lease connection breaks): the script's
/// session hears of it at once, the queue is emptied, newcomers are refused, and sessions
/// are admitted again once the engine is back, its leftovers swept.
#[actix_rt::test]
async fn a_lost_engine_ends_its_sessions_at_once_and_is_used_again_when_back() {
    tokio::time::pause();
    let mut h = Harness::start(config(1, 0, 2));
    let mut s1 = h.session("a");
    let mut s2 = h.session("b");
    let c1 = s1.granted().await;
    let _io = s1.run(&c1, "sleep");
    assert!(matches!(s1.next().await, Heard::Started { .. }));
    assert_eq!(s2.queued().await, 1);

    h.engine.set_up(false);
    match s1.finished().await {
        Finished::Failed(ContainerFailure::Lost {
            error: EngineError::Unreachable(why),
            ..
        }) => {
            assert!(why.contains("out of service"), "{why}")
        }
        other => panic!("expected the engine's loss, got {other:?}"),
    }
    assert_eq!(s2.stopped().await, SessionStop::Unavailable);
    let s3 = h.session("c");
    match s3.admit().await {
        Admission::Unavailable(EngineError::Unreachable(_)) => {}
        other => panic!("expected unavailable, got {other:?}"),
    }
    s1.unregister();
    assert_eq!(h.engine.state().present.len(), 1, "left for the sweep");

    h.engine.set_up(true);
    let state = h
        .engine
        .until(|s| s.pings > 0 && s.present.is_empty())
        .await;
    assert_eq!(state.removed.len(), 1, "swept when the engine came back");
    let mut s4 = h.session("d");
    let c4 = s4.granted().await;
    let mut io = s4.run(&c4, "print back");
    assert_eq!(s4.finished().await, exited(0));
    assert_eq!(io.stdout(), "back\n");
}

/// A launch that cannot reach the engine fails its session (there is no other engine to
/// try) and marks the engine down at once, without waiting for the periodic check.
#[actix_rt::test]
async fn a_launch_that_cannot_reach_the_engine_marks_it_down() {
    tokio::time::pause();
    let mut h = Harness::start(config(1, 0, 2));
    h.engine.set_launch_delay(Duration::from_millis(50));
    let mut s1 = h.session("a");
    let mut s2 = h.session("b");
    let c1 = s1.granted().await;
    assert_eq!(s2.queued().await, 1);
    h.engine.set_up(false);
    let _io = s1.run(&c1, "print never");
    match s1.finished().await {
        Finished::Failed(
            ContainerFailure::Start(EngineError::Unreachable(_))
            | ContainerFailure::Lost {
                error: EngineError::Unreachable(_),
                ..
            },
        ) => {}
        other => panic!("expected a start failure, got {other:?}"),
    }
    assert_eq!(s2.stopped().await, SessionStop::Unavailable);
    let s3 = h.session("c");
    assert!(matches!(s3.admit().await, Admission::Unavailable(_)));
    s1.unregister();

    h.engine.set_up(true);
    h.engine.until(|s| s.pings > 0).await;
    let _c4 = loop {
        match h.session("d").admit().await {
            Admission::Granted(c) => break c,
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    };
}
