//! The Supervisor's view of each engine: its health, its warm pools (one per image), its
//! share of the slots, and the placement policy that picks an engine for a session. Pure
//! state, no actor: the policy is unit-tested on its own.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::engine::{EngineError, SharedEngine};

/// First pause before refilling a pool after a warm container failed to start; doubled
/// on each further failure up to `MAX_REFILL_BACKOFF`, so a failing engine is not met
/// with a storm of create calls.
pub const REFILL_BACKOFF: Duration = Duration::from_millis(250);
pub const MAX_REFILL_BACKOFF: Duration = Duration::from_secs(10);
/// Launches in a row that an engine answered with an error (not an outage) before it is
/// taken out of service: an engine that fails every create must not fail every session
/// sent to it.
pub const MAX_START_FAILURES: u32 = 3;
/// First pause before trying an engine out of service again, doubled up to `MAX_REJOIN`.
pub const REJOIN: Duration = Duration::from_secs(1);
pub const MAX_REJOIN: Duration = Duration::from_secs(30);

/// Whether an engine takes sessions.
#[derive(Debug)]
pub enum Health {
    /// Being brought into service (image, lease, sweep); takes nothing yet.
    Joining,
    /// In service; `lease` keeps its instance name ours (dropping it gives it up).
    Up {
        // Never read: held for its drop, which gives the lease up.
        #[allow(dead_code)]
        lease: oneshot::Sender<()>,
    },
    /// Out of service since `since`, for `why`; it is tried again after `retry`.
    Down {
        why: EngineError,
        since: Instant,
        retry: Duration,
    },
}

/// Whether the pool of an engine may be refilled now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refill {
    Open {
        backoff: Duration,
    },
    /// A warm container failed to start: wait, then open with `backoff` doubled.
    Paused {
        backoff: Duration,
    },
}

/// One image's spares on one engine. Slots are the engine's and the daemon's; only the
/// spares are per image, since a spare of one image cannot serve a session of another.
#[derive(Debug, Default)]
pub struct Pool {
    /// Warm containers of this image to keep here.
    pub warm: usize,
    /// Ready for a script, oldest first.
    pub ready: VecDeque<u64>,
    /// Still starting.
    pub warming: VecDeque<u64>,
}

impl Pool {
    pub fn new(warm: usize) -> Self {
        Pool {
            warm,
            ..Default::default()
        }
    }

    /// Spares, ready or starting.
    pub fn len(&self) -> usize {
        self.ready.len() + self.warming.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One engine, as the Supervisor drives it.
pub struct EngineEntry {
    pub engine: SharedEngine,
    /// Containers (running or warm) on this engine at most.
    pub max_sessions: usize,
    /// The spares of each image (by index into `Config::images`).
    pub pools: Vec<Pool>,
    pub health: Health,
    /// Bumped each time the engine leaves service, so that the answer of a join, a ping
    /// or a lease watch started before that is recognised as stale and ignored.
    pub generation: u64,
    pub refill: Refill,
    /// Consecutive launches this engine answered with an error.
    pub start_failures: u32,
    /// Consecutive pings that timed out.
    pub slow_pings: u32,
    /// The pause before the next try once the engine is out of service: doubled each
    /// time it leaves service again without having started a container, so an engine
    /// that joins fine but fails every create is not retried in a tight loop.
    pub rejoin: Duration,
    /// Containers whose removal failed, retried while the engine is up.
    pub orphans: Vec<String>,
    /// Containers here (running and warm), and of those the ones serving a session.
    pub containers: usize,
    pub assigned: usize,
}

impl EngineEntry {
    /// `warm`: the spares to keep here of each image.
    pub fn new(engine: SharedEngine, max_sessions: usize, warm: &[usize], health: Health) -> Self {
        EngineEntry {
            engine,
            max_sessions,
            pools: warm.iter().map(|w| Pool::new(*w)).collect(),
            health,
            generation: 0,
            refill: Refill::Open {
                backoff: REFILL_BACKOFF,
            },
            start_failures: 0,
            slow_pings: 0,
            rejoin: REJOIN,
            orphans: Vec::new(),
            containers: 0,
            assigned: 0,
        }
    }

    pub fn name(&self) -> &str {
        self.engine.name()
    }

    pub fn is_up(&self) -> bool {
        matches!(self.health, Health::Up { .. })
    }

    pub fn has_room(&self) -> bool {
        self.containers < self.max_sessions
    }

    /// Wants another warm container of `image` (room and the pool permitting).
    pub fn wants_spare(&self, image: usize) -> bool {
        self.is_up()
            && matches!(self.refill, Refill::Open { .. })
            && self.has_room()
            && self.pools[image].len() < self.pools[image].warm
    }

    /// Ready spares, of every image.
    pub fn ready(&self) -> usize {
        self.pools.iter().map(|p| p.ready.len()).sum()
    }

    /// Spares to keep here, of every image.
    pub fn warm(&self) -> usize {
        self.pools.iter().map(|p| p.warm).sum()
    }

    /// Sessions served per slot: what "least loaded" compares, so that engines of
    /// different sizes fill in proportion.
    fn load(&self) -> f64 {
        self.assigned as f64 / self.max_sessions.max(1) as f64
    }
}

/// Where a session's container comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pick {
    /// A ready spare on this engine.
    Spare(usize),
    /// A spare still starting on this engine: it was started ahead of demand, so taking
    /// it is a hit all the same and beats a cold start.
    Warming(usize),
    /// A cold start on this engine.
    Cold(usize),
}

/// The placement policy (docs/scaling.md) for a session of `image`: among the engines in
/// service, other than `avoid`, a ready spare of that image first, then one still
/// starting, then a cold start where there is room; within each, the least loaded engine
/// (sessions per slot), the first listed on a tie. A warm spare wins over load because it
/// is a session started in milliseconds instead of hundreds; load decides among equals so
/// that a failing engine's share of sessions is small and every engine's pool is drawn
/// on. `room` says whether the daemon-wide cap allows one more container (and the
/// session may have it).
pub fn pick(
    engines: &[EngineEntry],
    image: usize,
    avoid: Option<usize>,
    room: bool,
) -> Option<Pick> {
    let candidates = || {
        engines
            .iter()
            .enumerate()
            .filter(move |(i, e)| Some(*i) != avoid && e.is_up())
    };
    let least = |it: &mut dyn Iterator<Item = (usize, &EngineEntry)>| {
        it.min_by(|(_, a), (_, b)| a.load().total_cmp(&b.load()))
            .map(|(i, _)| i)
    };
    if let Some(i) = least(&mut candidates().filter(|(_, e)| !e.pools[image].ready.is_empty())) {
        return Some(Pick::Spare(i));
    }
    if let Some(i) = least(&mut candidates().filter(|(_, e)| !e.pools[image].warming.is_empty())) {
        return Some(Pick::Warming(i));
    }
    if !room {
        return None;
    }
    least(&mut candidates().filter(|(_, e)| e.has_room())).map(Pick::Cold)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::engine::fake::FakeEngine;

    fn entry(name: &str, max: usize, assigned: usize, pool: usize, up: bool) -> EngineEntry {
        let health = match up {
            true => Health::Up {
                lease: oneshot::channel().0,
            },
            false => Health::Down {
                why: EngineError::Unreachable("down".into()),
                since: Instant::now(),
                retry: Duration::from_secs(1),
            },
        };
        let mut e = EngineEntry::new(Arc::new(FakeEngine::named(name)), max, &[max, 1], health);
        e.assigned = assigned;
        e.containers = assigned + pool;
        e.pools[0].ready = (0..pool as u64).collect();
        e
    }

    #[test]
    fn a_warm_spare_beats_a_less_loaded_engine() {
        let engines = [entry("a", 4, 0, 0, true), entry("b", 4, 3, 1, true)];
        assert_eq!(pick(&engines, 0, None, true), Some(Pick::Spare(1)));
    }

    #[test]
    fn among_equals_the_least_loaded_per_slot_wins() {
        let engines = [
            entry("a", 4, 2, 0, true),
            entry("b", 8, 2, 0, true),
            entry("c", 4, 1, 0, true),
        ];
        // b: 2/8 = 0.25, c: 1/4 = 0.25, a: 0.5; the first listed wins a tie.
        assert_eq!(pick(&engines, 0, None, true), Some(Pick::Cold(1)));
        let engines = [entry("a", 4, 1, 1, true), entry("b", 4, 0, 1, true)];
        assert_eq!(pick(&engines, 0, None, true), Some(Pick::Spare(1)));
    }

    #[test]
    fn engines_down_full_or_avoided_are_never_picked() {
        let engines = [
            entry("down", 4, 0, 2, false),
            entry("full", 2, 2, 0, true),
            entry("ok", 4, 3, 0, true),
        ];
        assert_eq!(pick(&engines, 0, None, true), Some(Pick::Cold(2)));
        assert_eq!(pick(&engines, 0, Some(2), true), None);
        assert_eq!(pick(&engines, 0, None, false), None, "no daemon-wide room");
        let mut warming = entry("w", 4, 0, 0, true);
        warming.pools[0].warming.push_back(9);
        let engines = [entry("ok", 4, 0, 0, true), warming];
        assert_eq!(pick(&engines, 0, None, true), Some(Pick::Warming(1)));
    }

    #[test]
    fn only_a_spare_of_the_session_s_image_is_taken() {
        let mut science = entry("b", 4, 3, 0, true);
        science.pools[1].ready.push_back(7);
        let engines = [entry("a", 4, 0, 2, true), science];
        // Image 1: b's spare though b is busier; image 0: a's spares, not b's of image 1.
        assert_eq!(pick(&engines, 1, None, true), Some(Pick::Spare(1)));
        assert_eq!(pick(&engines, 0, None, true), Some(Pick::Spare(0)));
        let engines = [entry("a", 4, 0, 2, true)];
        assert_eq!(pick(&engines, 1, None, true), Some(Pick::Cold(0)));
        assert_eq!(pick(&engines, 1, None, false), None, "no room, no spare");
    }
}
