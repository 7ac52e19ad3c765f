//! A container's life as its session and the Supervisor see it: the script's streams, the
//! warm pool and its refill, a start that fails, a wait that errors, OOM, signals, the
//! output limit and the kill on timeout.

use std::time::Duration;

use super::*;
use crate::engine::EngineError;
use crate::messages::{ContainerFailure, Kill, KillCause, ScriptExit, Signal};
use crate::supervisor::engines::REFILL_BACKOFF;

/// `container::MAX_LAUNCHES`: how many containers are tried for one script.
const MAX_LAUNCHES: u32 = 3;

#[actix_rt::test]
async fn a_script_gets_its_stdin_and_its_output_reaches_the_session() {
    tokio::time::pause();
    let mut h = Harness::start(config(1, 0, 0));
    let mut s1 = h.session("a");
    let c1 = s1.granted().await;
    let mut io = s1.run(&c1, "eprint ready\necho-stdin\nexit 4");
    assert!(matches!(
        s1.next().await,
        Heard::Started { warm: false, .. }
    ));
    assert!(matches!(io.control.recv().await, Some(Frame::Started(_))));
    io.stdin.push(b"hello ");
    io.stdin.push(b"world");
    io.stdin.close();
    assert_eq!(s1.finished().await, exited(4));
    assert_eq!(
        io.take_output(),
        ("hello world".to_string(), "ready\n".to_string())
    );
    h.engine.until(|s| s.present.is_empty()).await;
}

/// A spare that dies while it waits for a script is replaced in place: the pool stays
/// full and the session it goes to is served.
#[actix_rt::test]
async fn a_spare_that_dies_unused_is_replaced() {
    tokio::time::pause();
    let mut h = Harness::start(config(1, 1, 0));
    h.engine.die_unused(1);
    let state = h
        .engine
        .until(|s| s.idle.len() == 1 && s.removed.len() == 1)
        .await;
    assert_eq!(state.launches.len(), 2);

    let mut s1 = h.session("a");
    let c1 = s1.granted().await;
    let mut io = s1.run(&c1, "print hi");
    // A replacement is a container started for this script, not a warm one.
    assert!(matches!(
        s1.next().await,
        Heard::Started { warm: false, .. }
    ));
    assert_eq!(s1.finished().await, exited(0));
    assert_eq!(io.stdout(), "hi\n");
}

/// A spare that keeps dying is given up; the Supervisor refills the pool, after a pause.
#[actix_rt::test]
async fn the_pool_is_refilled_after_a_spare_is_lost_but_not_at_once() {
    tokio::time::pause();
    let mut h = Harness::start(config(1, 1, 0));
    h.engine.die_unused(MAX_LAUNCHES as usize);
    let state = h.engine.until(|s| s.idle.len() == 1).await;
    let launches = &state.launches;
    assert_eq!(launches.len(), MAX_LAUNCHES as usize + 1);
    let pause = launches[launches.len() - 1] - launches[launches.len() - 2];
    assert!(pause >= REFILL_BACKOFF, "refilled after {pause:?}");

    let mut s1 = h.session("a");
    let c1 = s1.granted().await;
    let mut io = s1.run(&c1, "print hi");
    assert!(matches!(s1.next().await, Heard::Started { warm: true, .. }));
    assert_eq!(s1.finished().await, exited(0));
    assert_eq!(io.stdout(), "hi\n");
    let state = h.engine.until(|s| s.present.len() == 1).await; // the next spare
    assert_eq!(state.removed.len(), MAX_LAUNCHES as usize + 1);
}

#[actix_rt::test]
async fn a_start_that_fails_is_reported_and_frees_the_slot() {
    tokio::time::pause();
    let mut h = Harness::start(config(1, 0, 1));
    h.engine.fail_launches(1);
    // As with a real Engine, the script is there before the launch has answered.
    h.engine.set_launch_delay(Duration::from_millis(50));
    let mut s1 = h.session("a");
    let mut s2 = h.session("b");
    let c1 = s1.granted().await;
    assert_eq!(s2.queued().await, 1);
    let _io = s1.run(&c1, "print never");
    match s1.finished().await {
        Finished::Failed(ContainerFailure::Start(EngineError::Api(_))) => {}
        other => panic!("expected a start failure, got {other:?}"),
    }
    // The failed container was created: it is removed, and its slot goes to s2.
    let c2 = s2.admitted().await;
    let mut io = s2.run(&c2, "print ok");
    assert_eq!(s2.finished().await, exited(0));
    assert_eq!(io.stdout(), "ok\n");
    let state = h.engine.until(|s| s.present.is_empty()).await;
    assert_eq!((state.launches.len(), state.removed.len()), (2, 2));
}

/// Warm containers that cannot start: the refills back off, doubling the pause; after
/// `MAX_START_FAILURES` in a row the engine is taken out of service (sessions are refused
/// rather than failed one by one), and once it starts containers again it serves.
#[actix_rt::test]
async fn refills_back_off_while_starts_fail_then_the_engine_is_taken_out() {
    tokio::time::pause();
    let mut h = Harness::start(config(2, 1, 0));
    h.engine.fail_launches(usize::MAX);
    let state = h.engine.until(|s| s.launches.len() == 3).await;
    let gaps: Vec<Duration> = state.launches.windows(2).map(|w| w[1] - w[0]).collect();
    for (i, gap) in gaps.iter().enumerate() {
        let pause = REFILL_BACKOFF * 2u32.pow(i as u32);
        assert!(
            *gap >= pause && *gap < pause + REFILL_BACKOFF,
            "pauses {gaps:?}"
        );
    }
    h.engine.until(|s| s.present.is_empty()).await;
    let s = h.session("a");
    match s.admit().await {
        Admission::Unavailable(EngineError::Api(why)) => {
            assert!(why.contains("container starts in a row failed"), "{why}")
        }
        other => panic!("expected the engine out of service, got {other:?}"),
    }
    s.unregister();
    h.engine.fail_launches(0);
    let state = h.engine.until(|s| s.idle.len() == 1).await;
    assert_eq!(state.removed.len(), 3, "every failed container was removed");
}

/// The engine's wait breaks while the script runs: nobody can tell how the script ended.
#[actix_rt::test]
async fn a_wait_that_errors_fails_the_session_and_the_container_is_removed() {
    tokio::time::pause();
    let mut h = Harness::start(config(1, 0, 0));
    let mut s1 = h.session("a");
    let c1 = s1.granted().await;
    let _io = s1.run(&c1, "print a\nsleep");
    assert!(matches!(s1.next().await, Heard::Started { .. }));
    let broken = EngineError::Api("fake engine: the wait broke".into());
    h.engine.fail_waits(Some(broken.clone()));
    assert_eq!(
        s1.finished().await,
        Finished::Failed(ContainerFailure::Lost {
            engine: "fake".into(),
            error: broken
        })
    );
    h.engine.until(|s| s.present.is_empty()).await;
}

#[actix_rt::test]
async fn an_oom_kill_is_reported_as_such() {
    tokio::time::pause();
    let mut h = Harness::start(config(1, 0, 0));
    let mut s1 = h.session("a");
    let c1 = s1.granted().await;
    let mut io = s1.run(&c1, "print before\noom");
    assert_eq!(
        s1.finished().await,
        Finished::Exited {
            status: 137,
            exact: None,
            oom: true,
            usage: Default::default(),
        }
    );
    assert_eq!(io.stdout(), "before\n");
    s1.unregister();

    // sys.exit(137) is told apart by the trailer, without asking about OOM.
    let mut s2 = h.session("a");
    let c2 = s2.granted().await;
    let _io = s2.run(&c2, "exit 137");
    assert_eq!(s2.finished().await, exited(137));
    h.engine.until(|s| s.present.is_empty()).await;
}

#[actix_rt::test]
async fn a_signal_reaches_the_script() {
    tokio::time::pause();
    let mut h = Harness::start(config(1, 0, 0));
    let mut s1 = h.session("a");
    let c1 = s1.granted().await;
    let _io = s1.run(&c1, "sleep");
    assert!(matches!(s1.next().await, Heard::Started { .. }));
    c1.signal.do_send(Signal("SIGINT"));
    assert_eq!(
        s1.finished().await,
        Finished::Exited {
            status: 130,
            exact: Some(ScriptExit::Signal(2)),
            oom: false,
            usage: Default::default(),
        }
    );
    let state = h.engine.until(|s| s.present.is_empty()).await;
    assert_eq!(state.kills, [(state.removed[0].clone(), "SIGINT")]);
}

#[actix_rt::test]
async fn a_script_over_the_output_limit_is_killed() {
    tokio::time::pause();
    let mut h = Harness::start(config(1, 0, 0));
    let mut s1 = h.session("a");
    let c1 = s1.granted().await;
    let mut io = s1.run_limited(&c1, "print 0123456789\nsleep", 4);
    assert_eq!(
        s1.finished().await,
        Finished::Killed(KillCause::OutputLimit)
    );
    assert_eq!(io.stdout(), "0123");
    let state = h.engine.until(|s| s.present.is_empty()).await;
    assert_eq!(state.kills, [(state.removed[0].clone(), "SIGKILL")]);
}

/// The Supervisor's timer ends a session at its time limit; the session then has its
/// container kill the script.
#[actix_rt::test]
async fn a_session_past_its_time_is_stopped_and_its_script_killed() {
    tokio::time::pause();
    let mut cfg = config(1, 0, 1);
    cfg.session_timeout = Duration::from_secs(5);
    let mut h = Harness::start(cfg);
    let t0 = tokio::time::Instant::now();
    let mut s1 = h.session("a");
    let mut s2 = h.session("b");
    let c1 = s1.granted().await;
    assert_eq!(s2.queued().await, 1);
    let _io = s1.run(&c1, "sleep");
    assert!(matches!(s1.next().await, Heard::Started { .. }));

    assert_eq!(s1.stopped().await, SessionStop::Timeout);
    // Counted from the accept (on the real clock), so a hair under 5 s of tokio's.
    let waited = t0.elapsed();
    assert!(waited > Duration::from_millis(4900), "{waited:?}");
    // Queued sessions have a time limit too.
    assert_eq!(s2.stopped().await, SessionStop::Timeout);
    s2.unregister();

    c1.kill.do_send(Kill(KillCause::Timeout));
    assert_eq!(s1.finished().await, Finished::Killed(KillCause::Timeout));
    let state = h.engine.until(|s| s.present.is_empty()).await;
    assert_eq!(state.kills, [(state.removed[0].clone(), "SIGKILL")]);
}

/// END's usage (protocol §4.5): the trailer's cgroup readings, and the output delivered.
#[actix_rt::test]
async fn what_a_script_used_comes_with_its_end() {
    tokio::time::pause();
    let mut h = Harness::start(config(1, 0, 0));
    let mut s1 = h.session("a");
    let c1 = s1.granted().await;
    let mut io = s1.run(&c1, "print hello\nexit 0");
    match s1.finished_with_usage().await {
        Finished::Exited { usage, .. } => {
            assert_eq!(usage.cpu_ms, Some(crate::engine::fake::FAKE_CPU_US / 1000));
            assert_eq!(
                usage.peak_memory_bytes,
                Some(crate::engine::fake::FAKE_PEAK_MEMORY)
            );
            assert_eq!(usage.output_bytes, Some("hello\n".len() as u64));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(io.stdout(), "hello\n");
}
