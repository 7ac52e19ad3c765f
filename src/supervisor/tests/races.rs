//! Two races of the ContainerActor that the fake engine made deterministic, found when
//! it was written and fixed since; these tests keep them fixed.
//!
//! 1. A launch that fails before the session's `Run` arrives (a refused connection or a
//!    missing image fails in a millisecond, while the client may still be uploading its
//!    script): the actor finishes with nobody to tell (`launch_failed` → `finish` →
//!    `report` finds no `Run`), stops, and the `Run` that follows goes to a closed mailbox.
//!    The session heard nothing until its timeout, then reported a timeout instead of the
//!    start failure. Now the failure travels in `ContainerGone::unreported`, and the
//!    Supervisor passes it to the session it handed the container to.
//! 2. A script so short that the container's exit is seen before the actor reads the
//!    bootstrap's ACK: `exited` in `Phase::Handover` takes it for a container that died
//!    before accepting the script and `replace`s it, so the script runs a second time in a
//!    new container (the first run's output and the stdin it read are lost; if it happens
//!    on every try, the session fails with `ContainerFailure::Bootstrap`). Docker reports
//!    an exit tens of milliseconds late, so this takes a busy actor thread; the fake
//!    reports it at once with `set_exit_delay(ZERO)`. Now the hand-over's own result
//!    decides whether the container is replaced.

use std::time::Duration;

use super::*;
use crate::messages::ContainerFailure;

/// The same failure, when the launch fails before the session's script comes (a fast
/// failure, such as a refused connection, while the client still uploads its script).
#[actix_rt::test]
async fn a_start_that_fails_before_the_script_comes_is_reported() {
    tokio::time::pause();
    let mut h = Harness::start(config(1, 0, 1));
    h.engine.fail_launches(1);
    let mut s1 = h.session("a");
    let c1 = s1.granted().await;
    h.engine.until(|s| s.removed.len() == 1).await; // the failed container is gone
    let _io = s1.run(&c1, "print never");
    match s1.finished().await {
        Finished::Failed(ContainerFailure::Start(_)) => {}
        other => panic!("expected a start failure, got {other:?}"),
    }
}

/// A script so short that the container has exited before the actor reads the ACK (the
/// engine reported the exit at once, or the actor was busy): the bootstrap did take the
/// script, so it must not be run again in a replacement container.
#[actix_rt::test]
async fn a_script_that_ends_before_its_ack_is_read_runs_once() {
    tokio::time::pause();
    let mut h = Harness::start(config(1, 0, 0));
    h.engine.set_exit_delay(Duration::ZERO);
    let mut s1 = h.session("a");
    let c1 = s1.granted().await;
    let mut io = s1.run(&c1, "print once");
    assert_eq!(s1.finished().await, exited(0));
    assert_eq!(io.stdout(), "once\n");
    let state = h.engine.until(|s| s.present.is_empty()).await;
    assert_eq!(
        state.launches.len(),
        1,
        "the script ran in {:?}",
        state.removed
    );
}
