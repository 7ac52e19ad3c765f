//! Several images: a warm pool per image within the shared slots, a session served by a
//! spare of its own image only, a cold start for an image without one, and spares of
//! another image removed so that a queued session gets a slot.

use super::*;
use crate::config::images::ImageConfig;
use crate::config::DEFAULT_IMAGE;

const SCIENCE: &str = "pyexec/sandbox:science";

/// `config` serving a second image, `science` (index 1), with `warm` spares of its own.
fn with_science(mut cfg: Config, warm: usize) -> Config {
    cfg.images[0].warm = cfg.warm;
    cfg.images.push(ImageConfig {
        name: "science".into(),
        tag: SCIENCE.into(),
        warm,
        preload: vec!["pandas".into()],
    });
    cfg
}

/// The image of the one container that is neither idle nor removed: the one running the
/// test's only session.
fn running_image(engine: &FakeEngine) -> String {
    let state = engine.state();
    let busy: Vec<&String> = state
        .present
        .iter()
        .filter(|id| !state.idle.contains(id))
        .collect();
    assert_eq!(busy.len(), 1, "one session runs: {state:?}");
    state.images[busy[0]].clone()
}

async fn started(s: &mut TestSession) -> bool {
    loop {
        match s.next().await {
            Heard::Started { warm, .. } => return warm,
            Heard::FirstOutput => {}
            other => panic!("session {}: expected Started, got {other:?}", s.id),
        }
    }
}

/// Each image keeps its own spares; a session takes a spare of the image it asked for,
/// and that image's pool alone is refilled.
#[actix_rt::test]
async fn each_image_has_its_own_pool() {
    tokio::time::pause();
    let h = Harness::start(with_science(config(4, 2, 0), 1));
    h.engine
        .until(|s| s.idle_of(DEFAULT_IMAGE) == 2 && s.idle_of(SCIENCE) == 1)
        .await;

    let mut h = h;
    let mut s = h.session("x");
    let c = match s.admit_to(1).await {
        Admission::Granted(c) => c,
        other => panic!("expected a grant, got {other:?}"),
    };
    let _io = s.run(&c, "sleep");
    assert!(started(&mut s).await, "served by the science spare");
    assert_eq!(running_image(&h.engine), SCIENCE);
    h.engine
        .until(|s| s.idle_of(DEFAULT_IMAGE) == 2 && s.idle_of(SCIENCE) == 1)
        .await;
    let launched = h.engine.state().images.len();
    assert_eq!(launched, 4, "3 spares, then 1 science refill");
    s.unregister();
}

/// An image without a spare is a cold start in that image, even with spares of another
/// image ready: a spare runs the image it was started with.
#[actix_rt::test]
async fn a_spare_of_another_image_is_never_used() {
    tokio::time::pause();
    let mut h = Harness::start(with_science(config(4, 2, 0), 0));
    h.engine.until(|s| s.idle_of(DEFAULT_IMAGE) == 2).await;
    let mut s = h.session("x");
    let c = match s.admit_to(1).await {
        Admission::Granted(c) => c,
        other => panic!("expected a grant, got {other:?}"),
    };
    let mut io = s.run(&c, "print science");
    assert!(!started(&mut s).await, "a cold start");
    assert_eq!(s.finished().await, exited(0));
    assert_eq!(io.stdout(), "science\n");
    assert_eq!(h.engine.state().idle_of(DEFAULT_IMAGE), 2, "untouched");
    assert_eq!(
        h.engine
            .state()
            .images
            .values()
            .filter(|i| *i == SCIENCE)
            .count(),
        1
    );
    s.unregister();
}

/// Every slot holds a spare of the default image: a science session queues, one spare is
/// removed to free its slot, and the session gets a container of its image there. The
/// default pool refills once nobody waits.
#[actix_rt::test]
async fn spares_of_another_image_make_room_for_a_queued_session() {
    tokio::time::pause();
    let mut h = Harness::start(with_science(config(2, 2, 4), 0));
    h.engine.until(|s| s.idle_of(DEFAULT_IMAGE) == 2).await;
    let mut s = h.session("x");
    match s.admit_to(1).await {
        Admission::Queued(1) => {}
        other => panic!("expected to queue first, got {other:?}"),
    }
    let c = s.admitted().await;
    let mut io = s.run(&c, "print made room");
    assert!(!started(&mut s).await);
    assert_eq!(s.finished().await, exited(0));
    assert_eq!(io.stdout(), "made room\n");
    s.unregister();
    h.engine
        .until(|st| st.idle_of(DEFAULT_IMAGE) == 2 && st.present.len() == 2)
        .await;
    let state = h.engine.state();
    assert_eq!(
        state.removed.len(),
        2,
        "the evicted spare and the science container"
    );
}

/// A default-image session that comes while a science session waits for a slot takes a
/// default spare at once: the science session could not have used it.
#[actix_rt::test]
async fn a_queued_session_does_not_hold_up_spares_it_cannot_use() {
    tokio::time::pause();
    let mut h = Harness::start(with_science(config(2, 2, 4), 0));
    h.engine.until(|s| s.idle_of(DEFAULT_IMAGE) == 2).await;
    let mut science = h.session("a");
    let mut plain = h.session("b");
    // Both asked at once: the second comes while the first is queued.
    let (first, second) = (science.admit_to(1), plain.admit_to(0));
    assert!(matches!(first.await, Admission::Queued(1)));
    let c = match second.await {
        Admission::Granted(c) => c,
        other => panic!("expected the default spare, got {other:?}"),
    };
    let _plain_io = plain.run(&c, "sleep");
    assert!(started(&mut plain).await, "a warm start");
    let c = science.admitted().await;
    let mut io = science.run(&c, "print science");
    assert!(!started(&mut science).await);
    assert_eq!(science.finished().await, exited(0));
    assert_eq!(io.stdout(), "science\n");
    science.unregister();
    plain.unregister();
}
