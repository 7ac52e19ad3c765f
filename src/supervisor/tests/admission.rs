//! Admission: the running cap, the queue and its positions, per-client limits and the
//! rate, and the slot of a container its session never used.

use std::time::Duration;

use super::*;
use crate::client_limits::Refusal;

#[actix_rt::test]
async fn grants_then_queues_in_order_then_refuses_as_busy() {
    tokio::time::pause();
    let mut h = Harness::start(config(1, 0, 2));
    let mut s1 = h.session("a");
    let (mut s2, mut s3, mut s4) = (h.session("b"), h.session("c"), h.session("d"));

    let c1 = s1.granted().await;
    assert_eq!(s2.queued().await, 1);
    assert_eq!(s3.queued().await, 2);
    match s4.admit().await {
        Admission::Busy {
            running: 1,
            queued: 2,
        } => {}
        other => panic!("expected busy, got {other:?}"),
    }

    // One leaves the queue: whoever was behind it moves up.
    s2.unregister();
    assert!(matches!(s3.next().await, Heard::Position(1)));

    // The slot is free once s1's container is removed: the head of the queue gets it.
    let mut io = s1.run(&c1, "print one");
    assert_eq!(s1.finished().await, exited(0));
    assert_eq!(io.stdout(), "one\n");
    s1.unregister();
    let c3 = s3.admitted().await;
    let mut io = s3.run(&c3, "print three\nexit 3");
    assert_eq!(s3.finished().await, exited(3));
    assert_eq!(io.stdout(), "three\n");
    s3.unregister();

    let state = h.engine.until(|s| s.present.is_empty()).await;
    assert_eq!(
        state.launches.len(),
        2,
        "one container per session that ran"
    );
    assert!(
        s2.quiet() && s4.quiet(),
        "the ones that left heard nothing more"
    );
}

#[actix_rt::test]
async fn positions_move_up_behind_the_one_that_left_only() {
    tokio::time::pause();
    let mut h = Harness::start(config(1, 0, 3));
    let s1 = h.session("a");
    let (mut s2, mut s3, mut s4) = (h.session("b"), h.session("c"), h.session("d"));
    let _c1 = s1.granted().await;
    assert_eq!(s2.queued().await, 1);
    assert_eq!(s3.queued().await, 2);
    assert_eq!(s4.queued().await, 3);

    s3.unregister();
    assert!(matches!(s4.next().await, Heard::Position(2)));
    assert!(s2.quiet(), "the head of the queue did not move");

    s2.unregister();
    assert!(matches!(s4.next().await, Heard::Position(1)));
    assert!(s3.quiet());
}

#[actix_rt::test]
async fn a_client_over_its_own_limit_is_refused_until_one_of_its_sessions_ends() {
    tokio::time::pause();
    let mut cfg = config(1, 0, 4);
    cfg.max_sessions_per_client = 2;
    let mut h = Harness::start(cfg);
    let a1 = h.session("alice");
    let a2 = h.session("alice");
    let a3 = h.session("alice");
    let b1 = h.session("bob");

    let _c1 = a1.granted().await;
    // A queued session counts as one of the client's sessions too.
    assert_eq!(a2.queued().await, 1);
    match a3.admit().await {
        Admission::Limited(Refusal::TooMany { active: 2, max: 2 }) => {}
        other => panic!("expected the per-client refusal, got {other:?}"),
    }
    // Another client is not affected.
    assert_eq!(b1.queued().await, 2);

    a2.unregister();
    assert_eq!(a3.queued().await, 2, "room again for alice");
}

#[actix_rt::test]
async fn the_rate_counts_a_clients_starts_but_not_its_busy_refusals() {
    tokio::time::pause();
    let mut cfg = config(1, 0, 0);
    cfg.rate = 2;
    let mut h = Harness::start(cfg);

    let a1 = h.session("alice");
    let _c1 = a1.granted().await;
    // The queue holds no one: busy, which must not count against alice's rate.
    let a2 = h.session("alice");
    assert!(matches!(a2.admit().await, Admission::Busy { .. }));
    a1.unregister();
    a2.unregister();
    h.engine.until(|s| s.removed.len() == 1).await;

    let a3 = h.session("alice");
    let _c3 = a3.granted().await;
    a3.unregister();
    h.engine.until(|s| s.removed.len() == 2).await;

    // Two starts in the last minute: the third is refused, for a minute less the time
    // since the first (the clock of the rate is the real one: the test takes a moment).
    let a4 = h.session("alice");
    match a4.admit().await {
        Admission::Limited(Refusal::Rate {
            started: 2,
            rate: 2,
            wait,
        }) => assert!(wait > Duration::from_secs(50), "{wait:?}"),
        other => panic!("expected the rate refusal, got {other:?}"),
    }
    let b1 = h.session("bob");
    let _cb = b1.granted().await;
}

/// Issue 9: a session that stops before it has used the container it was given (a client
/// that resets right after HELLO) must give the slot back, or the slot leaks.
#[actix_rt::test]
async fn a_container_its_session_never_used_is_removed_and_its_slot_reused() {
    tokio::time::pause();
    let mut h = Harness::start(config(1, 1, 2));
    let spare = h.engine.until(|s| s.idle.len() == 1).await.idle[0].clone();
    let s1 = h.session("a");
    let (mut s2, mut s3) = (h.session("b"), h.session("c"));

    let _c1 = s1.granted().await; // the spare, never used
    assert_eq!(s2.queued().await, 1);
    assert_eq!(s3.queued().await, 2);

    s1.unregister();
    let state = h.engine.until(|s| s.removed.contains(&spare)).await;
    assert!(
        state.kills.is_empty(),
        "a spare with no script is just removed"
    );
    let _c2 = s2.admitted().await; // and never used either
    assert!(matches!(s3.next().await, Heard::Position(1)));

    s2.unregister();
    let c3 = s3.admitted().await;
    let mut io = s3.run(&c3, "print served");
    assert_eq!(s3.finished().await, exited(0));
    assert_eq!(io.stdout(), "served\n");
    s3.unregister();

    // Three containers removed; the pool is refilled with a fourth.
    let state = h
        .engine
        .until(|s| s.removed.len() == 3 && s.idle.len() == 1)
        .await;
    assert_eq!(state.present, state.idle);
    assert_eq!(state.launches.len(), 4);
}
