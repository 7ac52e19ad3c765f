//! Several engines: placement, a start retried on another engine, an engine lost and
//! back, an engine that fails every create, and a lease another daemon holds.

use std::time::Duration;

use super::*;
use crate::engine::EngineError;
use crate::messages::ContainerFailure;

async fn started_on(s: &mut TestSession) -> String {
    loop {
        match s.next().await {
            Heard::Started { engine, .. } => return engine,
            Heard::FirstOutput => {}
            other => panic!("session {}: expected Started, got {other:?}", s.id),
        }
    }
}

/// With spares everywhere, sessions take them from the least loaded engine, so a burst
/// spreads over every engine; with no spare left, cold starts go to the least loaded too.
#[actix_rt::test]
async fn sessions_spread_over_every_engine() {
    tokio::time::pause();
    let mut h = Harness::start_on(config(6, 3, 0), &[("a", None), ("b", None), ("c", None)]);
    for e in &h.engines {
        e.until(|s| s.idle.len() == 1).await;
    }
    let mut on = Vec::new();
    let mut sessions = Vec::new();
    for i in 0..6 {
        let mut s = h.session(&format!("client{i}"));
        let c = s.granted().await;
        let io = s.run(&c, "sleep");
        on.push(started_on(&mut s).await);
        sessions.push((s, io));
    }
    on.sort();
    assert_eq!(on, ["a", "a", "b", "b", "c", "c"]);
    for (s, _) in &sessions {
        s.unregister();
    }
}

/// A container that fails to start on one engine: the session is handed a container on
/// another engine and its script runs there; it never hears of the failure.
#[actix_rt::test]
async fn a_failed_start_is_retried_once_on_another_engine() {
    tokio::time::pause();
    let mut h = Harness::start_on(config(4, 0, 0), &[("a", None), ("b", None)]);
    h.engines[0].fail_launches(1);
    h.engines[0].set_launch_delay(Duration::from_millis(20));
    let mut s = h.session("x");
    let c = s.granted().await;
    let _first = s.run(&c, "print lost");
    let moved = s.admitted().await;
    let mut io = s.run(&moved, "print moved");
    assert_eq!(started_on(&mut s).await, "b");
    assert_eq!(s.finished().await, exited(0));
    assert_eq!(io.stdout(), "moved\n");
    s.unregister();
}

/// Only once: if the second engine fails too, the session hears of the failure.
#[actix_rt::test]
async fn a_second_failed_start_is_reported() {
    tokio::time::pause();
    let mut h = Harness::start_on(config(4, 0, 0), &[("a", None), ("b", None)]);
    for e in &h.engines {
        e.fail_launches(1);
        e.set_launch_delay(Duration::from_millis(20));
    }
    let mut s = h.session("x");
    let c = s.granted().await;
    let _first = s.run(&c, "print one");
    let moved = s.admitted().await;
    let _second = s.run(&moved, "print two");
    match s.finished().await {
        Finished::Failed(ContainerFailure::Start(EngineError::Api(_))) => {}
        other => panic!("expected the start failure, got {other:?}"),
    }
    s.unregister();
}

/// Engine a dies under a running script: that session ends at once with the engine's
/// loss, new sessions all go to b, and a is used again once it is back.
#[actix_rt::test]
async fn a_lost_engine_ends_only_its_sessions_and_returns() {
    tokio::time::pause();
    let mut h = Harness::start_on(config(4, 0, 4), &[("a", Some(1)), ("b", Some(3))]);
    let mut on_a = h.session("x");
    let c = on_a.granted().await;
    let _io = on_a.run(&c, "sleep");
    assert_eq!(started_on(&mut on_a).await, "a");
    let mut on_b = h.session("y");
    let c = on_b.granted().await;
    let _io_b = on_b.run(&c, "sleep");
    assert_eq!(started_on(&mut on_b).await, "b");

    h.engines[0].set_up(false);
    assert!(matches!(
        on_a.finished().await,
        Finished::Failed(ContainerFailure::Lost { .. })
    ));
    assert!(on_b.quiet(), "b's session goes on");
    for i in 0..2 {
        let mut s = h.session(&format!("new{i}"));
        let c = s.granted().await;
        let mut io = s.run(&c, "print ok");
        assert_eq!(started_on(&mut s).await, "b");
        assert_eq!(s.finished().await, exited(0));
        assert_eq!(io.stdout(), "ok\n");
        s.unregister();
    }
    on_a.unregister();

    h.engines[0].set_up(true);
    h.engines[0]
        .until(|s| s.pings > 0 && s.present.is_empty())
        .await;
    let mut s = h.session("back");
    let c = s.granted().await;
    let _io = s.run(&c, "print back");
    // a, idle again (0 of 1), is less loaded than b (1 of 3).
    assert_eq!(started_on(&mut s).await, "a");
    s.unregister();
    on_b.unregister();
}

/// An engine where another live daemon holds this instance's lease stays out of
/// service: its containers are not this run's to sweep.
#[actix_rt::test]
async fn an_engine_whose_lease_another_daemon_holds_is_not_used() {
    tokio::time::pause();
    let mut h = Harness::start_on(config(4, 0, 0), &[("a", None), ("b", None)]);
    h.engines[1].set_up(false);
    h.engines[1].hold_lease_elsewhere();
    h.engines[1].set_up(true);
    h.engines[1].until(|s| s.pings > 2).await;
    for i in 0..3 {
        let mut s = h.session(&format!("s{i}"));
        let c = s.granted().await;
        let _io = s.run(&c, "print x");
        assert_eq!(started_on(&mut s).await, "a");
        s.unregister();
    }
    assert!(h.engines[1].state().launches.is_empty());
}
