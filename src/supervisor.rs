//! The Supervisor actor: admission (the running cap and the bounded queue), each session's
//! time limit, the containers' slots, and the drain at shutdown.
//!
//! A slot is taken when a container is launched and given back only when that container
//! has been removed, so `--max-sessions` bounds the containers that exist, not merely the
//! sessions that are talking. Free slots are kept warm: up to `--warm` containers are
//! started ahead of demand, each blocked in the bootstrap until a session hands it a
//! script. Every container still serves one session and is destroyed after it.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use tokio::sync::oneshot;
use tracing::{info, warn};

use crate::client_limits::{ClientLimits, RATE_WINDOW};
use crate::config::Config;
use crate::engine::{EngineError, SharedEngine};
use crate::messages::{
    Admission, Admit, Admitted, ContainerEvent, ContainerGone, ContainerHandle, ContainerReady,
    Drain, DrainNow, Finished, Kill, KillCause, Orphaned, QueuePosition, Register, SessionHandle,
    SessionStop, Unregister,
};
use crate::status::{DockerHealth, Gauges, PoolUse, Status};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SessionState {
    /// Connected, not yet asking to run (handshake done, HELLO pending).
    Connected,
    Queued,
    Running,
}

struct Entry {
    session: SessionHandle,
    state: SessionState,
    timer: SpawnHandle,
    client: String,
    /// The container handed to this session, kept until the session unregisters. The
    /// session may stop before it reads the verdict that carried it (a client that
    /// resets right after HELLO): then only this copy is left to give the slot back.
    container: Option<(u64, ContainerHandle)>,
}

struct Slot {
    container: ContainerHandle,
    /// Serving (or about to serve) a session, as opposed to waiting in the pool.
    assigned: bool,
}

/// First pause before refilling the pool after a warm container failed to start; doubled
/// on each further failure up to `MAX_REFILL_BACKOFF`, so a Docker outage is not met with
/// a storm of create calls.
const REFILL_BACKOFF: Duration = Duration::from_millis(250);
const MAX_REFILL_BACKOFF: Duration = Duration::from_secs(10);
/// How often an idle daemon checks that the Engine still answers.
const DOCKER_CHECK: Duration = Duration::from_secs(10);

/// Starts a container actor for slot `key` (`warm`: ahead of demand). The server wires
/// this to `container::spawn`; the unit tests to the same actor on an in-memory engine.
pub type SpawnContainer = Box<dyn Fn(u64, bool) -> ContainerHandle>;

pub struct Supervisor {
    cfg: Arc<Config>,
    engine: SharedEngine,
    spawn: SpawnContainer,
    status: Addr<Status>,
    sessions: HashMap<u64, Entry>,
    queue: VecDeque<u64>,
    slots: HashMap<u64, Slot>,
    /// Warm containers ready for a script, oldest first.
    pool: VecDeque<u64>,
    /// Warm containers still starting.
    warming: VecDeque<u64>,
    refill_backoff: Duration,
    refill_paused: bool,
    clients: ClientLimits,
    /// Why the engine is considered down; `None` while it answers.
    docker_down: Option<EngineError>,
    next_key: u64,
    draining: bool,
    drained: Option<oneshot::Sender<()>>,
    orphans: Vec<String>,
}

impl Supervisor {
    /// `spawn` must point the containers' recipients at this actor (see
    /// `Supervisor::create`).
    pub fn new(
        cfg: Arc<Config>,
        engine: SharedEngine,
        spawn: SpawnContainer,
        status: Addr<Status>,
    ) -> Self {
        Supervisor {
            clients: ClientLimits::new(cfg.max_sessions_per_client, cfg.rate),
            cfg,
            engine,
            spawn,
            status,
            sessions: HashMap::new(),
            queue: VecDeque::new(),
            slots: HashMap::new(),
            pool: VecDeque::new(),
            warming: VecDeque::new(),
            refill_backoff: REFILL_BACKOFF,
            refill_paused: false,
            docker_down: None,
            next_key: 0,
            draining: false,
            drained: None,
            orphans: Vec::new(),
        }
    }

    /// Containers serving a session (the others are spares).
    fn running(&self) -> usize {
        self.slots.values().filter(|s| s.assigned).count()
    }

    fn gauges(&self) {
        self.status.do_send(Gauges {
            running: self.running(),
            queued: self.queue.len(),
            warm: self.pool.len(),
            clients: self.clients.active(),
        });
    }

    fn launch(&mut self, assigned: bool) -> (u64, ContainerHandle) {
        self.next_key += 1;
        let key = self.next_key;
        let container = (self.spawn)(key, !assigned);
        self.slots.insert(
            key,
            Slot {
                container: container.clone(),
                assigned,
            },
        );
        (key, container)
    }

    fn has_room(&self) -> bool {
        self.slots.len() < self.cfg.max_sessions
    }

    /// A container for a session: a ready warm one, else one still warming up, else a
    /// cold start if there is room.
    fn take_container(&mut self) -> Option<(u64, ContainerHandle)> {
        // One still starting was started ahead of demand: a hit all the same.
        let Some(key) = self.pool.pop_front().or_else(|| self.warming.pop_front()) else {
            if !self.has_room() {
                return None;
            }
            let launched = self.launch(true);
            self.status.do_send(PoolUse { hit: false });
            return Some(launched);
        };
        self.status.do_send(PoolUse { hit: true });
        let slot = self
            .slots
            .get_mut(&key)
            .expect("pooled containers have slots");
        slot.assigned = true;
        Some((key, slot.container.clone()))
    }

    /// The Engine stopped answering: refuse new sessions at once (instead of letting each
    /// try and fail), fail the queued ones, and ping until it is back.
    fn docker_lost(&mut self, why: EngineError, ctx: &mut Context<Self>) {
        if self.docker_down.is_some() || self.draining {
            return;
        }
        warn!(error = %why, "lost the Docker Engine; refusing new sessions until it is back");
        self.docker_down = Some(why);
        self.status.do_send(DockerHealth { up: false });
        for id in self.queue.drain(..) {
            if let Some(entry) = self.sessions.get(&id) {
                entry.session.stop.do_send(SessionStop::Unavailable);
            }
        }
        self.gauges();
        self.ping_docker(ctx);
    }

    fn check_docker(&mut self, ctx: &mut Context<Self>) {
        if self.docker_down.is_some() || self.draining {
            return; // ping_docker is on it already
        }
        let ping = self.engine.ping();
        ctx.spawn(ping.into_actor(self).map(|res, act, ctx| {
            if let Err(e) = res {
                if e.is_unreachable() {
                    act.docker_lost(e, ctx);
                }
            }
        }));
    }

    fn ping_docker(&mut self, ctx: &mut Context<Self>) {
        let ping = self.engine.ping();
        ctx.spawn(ping.into_actor(self).map(|res, act, ctx| match res {
            Ok(_) => {
                info!("the Docker Engine is back");
                act.docker_down = None;
                act.status.do_send(DockerHealth { up: true });
                act.refill_backoff = REFILL_BACKOFF;
                act.refill_paused = false;
                act.retry_orphans(ctx);
                act.advance_queue();
            }
            Err(_) => {
                ctx.run_later(Duration::from_secs(1), |act, ctx| act.ping_docker(ctx));
            }
        }));
    }

    /// Starts warm containers until the pool is full, the slots are taken, or someone
    /// is queued (they get the next slot first).
    fn fill_pool(&mut self) {
        if self.draining || self.refill_paused || self.docker_down.is_some() {
            return;
        }
        while self.queue.is_empty()
            && self.has_room()
            && self.pool.len() + self.warming.len() < self.cfg.warm
        {
            let (key, _) = self.launch(false);
            self.warming.push_back(key);
        }
    }

    /// Admits queued sessions while containers are available, then tells the rest their
    /// place.
    fn advance_queue(&mut self) {
        let mut moved = false;
        while !self.draining && self.docker_down.is_none() && !self.queue.is_empty() {
            let Some((key, container)) = self.take_container() else {
                break;
            };
            let id = self.queue.pop_front().expect("queue is not empty");
            moved = true;
            match self.sessions.get_mut(&id) {
                Some(entry) => {
                    entry.state = SessionState::Running;
                    entry.container = Some((key, container.clone()));
                    entry.session.admitted.do_send(Admitted { container });
                }
                // Gone in the meantime: the container it was given is discarded.
                None => container.kill.do_send(Kill(KillCause::Discarded)),
            }
        }
        if moved {
            self.tell_positions(0);
        }
        self.fill_pool();
        self.gauges();
    }

    /// Sends every queued session from index `from` on its (new) position.
    fn tell_positions(&self, from: usize) {
        for (i, id) in self.queue.iter().enumerate().skip(from) {
            if let Some(entry) = self.sessions.get(id) {
                entry.session.position.do_send(QueuePosition(i as u32 + 1));
            }
        }
    }

    fn check_drained(&mut self) {
        if self.draining && self.sessions.is_empty() && self.slots.is_empty() {
            if let Some(done) = self.drained.take() {
                let _ = done.send(());
            }
        }
    }

    fn stop_all(&mut self, running_too: bool) {
        for entry in self.sessions.values() {
            if running_too || entry.state != SessionState::Running {
                entry.session.stop.do_send(SessionStop::Shutdown);
            }
        }
        // Spares serve nobody now.
        for key in self.pool.drain(..).chain(self.warming.drain(..)) {
            if let Some(slot) = self.slots.get(&key) {
                slot.container.kill.do_send(Kill(KillCause::Discarded));
            }
        }
        if running_too {
            for slot in self.slots.values() {
                slot.container.kill.do_send(Kill(KillCause::Shutdown));
            }
        }
    }

    fn retry_orphans(&mut self, ctx: &mut Context<Self>) {
        if self.orphans.is_empty() {
            return;
        }
        let engine = self.engine.clone();
        let ids = std::mem::take(&mut self.orphans);
        let fut = async move {
            let mut left = Vec::new();
            for id in ids {
                if engine.remove(&id).await.is_err() {
                    left.push(id);
                }
            }
            left
        };
        ctx.spawn(fut.into_actor(self).map(|left, act, _| {
            if !left.is_empty() {
                warn!(count = left.len(), "containers still not removed; retrying");
            }
            act.orphans.extend(left);
        }));
    }
}

impl Actor for Supervisor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.run_interval(Duration::from_secs(5), |act, ctx| act.retry_orphans(ctx));
        // Clients whose last start has left the rate window are forgotten, so the map
        // holds at most the clients of the last minute, not every address ever seen.
        ctx.run_interval(RATE_WINDOW / 4, |act, _| act.clients.prune(Instant::now()));
        // An idle daemon (or one whose pool is full) starts no containers, so it would
        // not notice losing the Engine until a client came: look now and then.
        ctx.run_interval(DOCKER_CHECK, |act, ctx| act.check_docker(ctx));
        self.fill_pool();
        self.gauges();
    }
}

impl Handler<Register> for Supervisor {
    type Result = ();

    fn handle(&mut self, msg: Register, ctx: &mut Context<Self>) {
        if self.draining {
            msg.session.stop.do_send(SessionStop::Shutdown);
        }
        let left = self
            .cfg
            .session_timeout
            .saturating_sub(msg.accepted_at.elapsed());
        let id = msg.id;
        let timer = ctx.run_later(left, move |act, _| {
            if let Some(entry) = act.sessions.get(&id) {
                entry.session.stop.do_send(SessionStop::Timeout);
            }
        });
        self.sessions.insert(
            id,
            Entry {
                session: msg.session,
                state: SessionState::Connected,
                timer,
                client: msg.client,
                container: None,
            },
        );
    }
}

impl Handler<Unregister> for Supervisor {
    type Result = ();

    fn handle(&mut self, Unregister { id }: Unregister, ctx: &mut Context<Self>) {
        if let Some(entry) = self.sessions.remove(&id) {
            ctx.cancel_future(entry.timer);
            // Whatever the session did or did not see of its container, it is done with
            // it: a container that already ended ignores this, one the session never
            // heard of (a verdict it stopped before reading) is removed and its slot freed.
            if let Some((_, container)) = entry.container {
                container.kill.do_send(Kill(KillCause::ClientGone));
            }
            if entry.state != SessionState::Connected {
                self.clients.release(&entry.client);
                self.gauges();
            }
            if entry.state == SessionState::Queued {
                if let Some(pos) = self.queue.iter().position(|q| *q == id) {
                    self.queue.remove(pos);
                    self.tell_positions(pos);
                    self.gauges();
                }
            }
        }
        self.check_drained();
    }
}

impl Handler<Admit> for Supervisor {
    type Result = Admission;

    fn handle(&mut self, Admit { id }: Admit, _: &mut Context<Self>) -> Admission {
        if self.draining {
            return Admission::ShuttingDown;
        }
        let Some(client) = self.sessions.get(&id).map(|e| e.client.clone()) else {
            return Admission::ShuttingDown;
        };
        if let Some(why) = &self.docker_down {
            return Admission::Unavailable(why.clone());
        }
        if let Err(refusal) = self.clients.admit(&client, Instant::now()) {
            return Admission::Limited(refusal);
        }
        let container = match self.queue.is_empty() {
            true => self.take_container(),
            false => None,
        };
        let entry = self.sessions.get_mut(&id).expect("checked above");
        if let Some((key, container)) = container {
            entry.state = SessionState::Running;
            entry.container = Some((key, container.clone()));
            self.fill_pool();
            self.gauges();
            Admission::Granted(container)
        } else if self.queue.len() < self.cfg.max_queue {
            entry.state = SessionState::Queued;
            self.queue.push_back(id);
            self.gauges();
            Admission::Queued(self.queue.len() as u32)
        } else {
            self.clients.unbook(&client);
            Admission::Busy {
                running: self.running(),
                queued: self.queue.len(),
            }
        }
    }
}

impl Handler<ContainerGone> for Supervisor {
    type Result = ();

    fn handle(&mut self, gone: ContainerGone, ctx: &mut Context<Self>) {
        self.slots.remove(&gone.key);
        if let Some(failure) = gone.unreported {
            // It failed before its session's script came: that session's Run would reach
            // a stopped actor and never be answered, so it hears of the failure from here.
            let owner = self
                .sessions
                .values()
                .find(|e| matches!(&e.container, Some((key, _)) if *key == gone.key));
            if let Some(entry) = owner {
                entry
                    .session
                    .events
                    .do_send(ContainerEvent::Finished(Finished::Failed(failure)));
            }
        }
        self.pool.retain(|k| *k != gone.key);
        if let Some(pos) = self.warming.iter().position(|k| *k == gone.key) {
            // A spare that never became ready: its start failed. Back off before the
            // next refill instead of hammering an Engine that is failing.
            self.warming.remove(pos);
            if !self.draining && !self.refill_paused {
                self.refill_paused = true;
                let pause = self.refill_backoff;
                self.refill_backoff = (pause * 2).min(MAX_REFILL_BACKOFF);
                warn!(
                    pause_ms = pause.as_millis() as u64,
                    "a warm container failed to start; pausing refills"
                );
                ctx.run_later(pause, |act, _| {
                    act.refill_paused = false;
                    act.fill_pool();
                    act.gauges();
                });
            }
        }
        if let Some(id) = gone.leaked {
            self.orphans.push(id);
        }
        if let Some(why) = gone.unreachable {
            self.docker_lost(why, ctx);
        }
        self.advance_queue();
        self.check_drained();
    }
}

impl Handler<ContainerReady> for Supervisor {
    type Result = ();

    fn handle(&mut self, msg: ContainerReady, _: &mut Context<Self>) {
        let (from, to) = if msg.ready {
            self.refill_backoff = REFILL_BACKOFF;
            (&mut self.warming, &mut self.pool)
        } else {
            (&mut self.pool, &mut self.warming)
        };
        if let Some(pos) = from.iter().position(|k| *k == msg.key) {
            from.remove(pos);
            to.push_back(msg.key);
            self.gauges();
        }
    }
}

impl Handler<Orphaned> for Supervisor {
    type Result = ();

    fn handle(&mut self, Orphaned(id): Orphaned, _: &mut Context<Self>) {
        self.orphans.push(id);
    }
}

impl Handler<Drain> for Supervisor {
    type Result = ();

    fn handle(&mut self, msg: Drain, ctx: &mut Context<Self>) {
        info!(
            sessions = self.sessions.len(),
            containers = self.slots.len(),
            grace_s = msg.grace.as_secs_f64(),
            "draining"
        );
        self.draining = true;
        self.drained = Some(msg.done);
        // Whoever is not running yet would not finish within the grace anyway.
        self.stop_all(false);
        self.queue.clear();
        self.gauges();
        ctx.run_later(msg.grace, |act, _| {
            if !act.sessions.is_empty() {
                info!(
                    sessions = act.sessions.len(),
                    "grace period over; ending the rest"
                );
            }
            act.stop_all(true);
        });
        self.check_drained();
    }
}

impl Handler<DrainNow> for Supervisor {
    type Result = ();

    fn handle(&mut self, _: DrainNow, _: &mut Context<Self>) {
        self.stop_all(true);
    }
}

#[cfg(test)]
mod tests;
