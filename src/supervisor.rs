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
use tracing::{error, info, warn};

use crate::client_limits::{ClientLimits, RATE_WINDOW};
use crate::config::Config;
use crate::engine::join::{self, JoinDeps, JoinError};
use crate::engine::{EngineError, Lease, SharedEngine};
use crate::messages::{
    Admission, Admit, Admitted, ContainerEvent, ContainerFailure, ContainerGone, ContainerHandle,
    ContainerReady, Drain, DrainNow, Finished, Kill, KillCause, Orphaned, QueuePosition, Register,
    SessionHandle, SessionStop, Unregister,
};
use crate::status::{DockerHealth, EngineFigures, EngineGauges, Gauges, PoolUse, Status};

mod engines;

pub use engines::Health;
use engines::{
    pick, EngineEntry, Pick, Refill, MAX_REFILL_BACKOFF, MAX_REJOIN, MAX_START_FAILURES,
    REFILL_BACKOFF, REJOIN,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SessionState {
    /// Connected, not yet asking to run (handshake done, HELLO pending).
    Connected,
    Queued,
    Running,
}

/// Whether a session may still be moved to another engine when its container fails to
/// start: once, so that a session is never bounced around a failing fleet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Relocation {
    Allowed,
    Spent,
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
    relocation: Relocation,
    /// The image it asked for (index into `Config::images`); set by `Admit`.
    image: usize,
}

/// What a slot's container is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    /// Waiting in its image's pool.
    Spare,
    /// Serving (or about to serve) a session.
    Serving,
    /// A spare of an image nobody queued wants, being removed to free its slot for a
    /// queued session of another image: without this, slots full of one image's spares
    /// would keep a session of another image queued forever.
    Evicted,
}

struct Slot {
    /// Index into `Supervisor::engines`.
    engine: usize,
    /// Index into `Config::images`.
    image: usize,
    container: ContainerHandle,
    role: Role,
}

/// How often each engine in service is pinged. A dead engine's broken lease connection
/// usually tells sooner; the ping finds one that hangs instead (its network cut).
const PING_EVERY: Duration = Duration::from_secs(2);
/// Pings in a row that may time out before an engine counts as down: one slow answer
/// on a loaded host must not end every session on it. A refused connection counts at once.
const MAX_SLOW_PINGS: u32 = 2;

/// Starts a container actor for slot `key` on engine `engine`, of image `image` (an index
/// into `Config::images`; `warm`: ahead of demand). The server wires this to
/// `container::spawn`; the unit tests to the same actor on in-memory engines.
pub type SpawnContainer = Box<dyn Fn(u64, usize, usize, bool) -> ContainerHandle>;

/// An engine as the daemon starts with it: joined already (`Ok`: its lease), or not
/// (`Err`: why; it is tried again from the start).
/// What resolves when a lease is lost (`Lease::lost`).
type LeaseLost = futures::future::BoxFuture<'static, ()>;

pub struct EngineStart {
    pub engine: SharedEngine,
    pub max_sessions: usize,
    /// Spares to keep on this engine, per image (as `Config::images`).
    pub warm: Vec<usize>,
    pub joined: Result<Lease, EngineError>,
}

pub struct Supervisor {
    cfg: Arc<Config>,
    engines: Vec<EngineEntry>,
    join: JoinDeps,
    spawn: SpawnContainer,
    status: Addr<Status>,
    sessions: HashMap<u64, Entry>,
    queue: VecDeque<u64>,
    slots: HashMap<u64, Slot>,
    clients: ClientLimits,
    next_key: u64,
    draining: bool,
    drained: Option<oneshot::Sender<()>>,
    /// The `lost` futures of the leases handed in at start, watched once the actor runs.
    leases: Vec<(usize, LeaseLost)>,
}

impl Supervisor {
    /// `spawn` must point the containers' recipients at this actor (see
    /// `Supervisor::create`).
    pub fn new(
        cfg: Arc<Config>,
        engines: Vec<EngineStart>,
        join: JoinDeps,
        spawn: SpawnContainer,
        status: Addr<Status>,
    ) -> Self {
        let mut leases = Vec::new();
        let entries = engines
            .into_iter()
            .enumerate()
            .map(|(i, start)| {
                let health = match start.joined {
                    Ok(Lease { lost, release }) => {
                        leases.push((i, lost));
                        Health::Up { lease: release }
                    }
                    Err(why) => Health::Down {
                        why,
                        since: Instant::now(),
                        retry: REJOIN,
                    },
                };
                EngineEntry::new(start.engine, start.max_sessions, &start.warm, health)
            })
            .collect();
        Supervisor {
            clients: ClientLimits::new(cfg.max_sessions_per_client, cfg.rate),
            cfg,
            engines: entries,
            join,
            spawn,
            status,
            sessions: HashMap::new(),
            queue: VecDeque::new(),
            slots: HashMap::new(),
            next_key: 0,
            draining: false,
            drained: None,
            leases,
        }
    }

    /// Containers serving a session (the others are spares).
    fn running(&self) -> usize {
        self.engines.iter().map(|e| e.assigned).sum()
    }

    fn any_up(&self) -> bool {
        self.engines.iter().any(EngineEntry::is_up)
    }

    fn gauges(&self) {
        self.status.do_send(Gauges {
            running: self.running(),
            queued: self.queue.len(),
            warm: self.engines.iter().map(EngineEntry::ready).sum(),
            // What the pools can hold at once: the spares of all images on an engine
            // share its slots, and all engines the daemon's. Counting what they want
            // instead (a full default pool plus an extra image's spare is one more than
            // the slots) would keep /readyz at "warming" for ever.
            warm_target: self
                .engines
                .iter()
                .filter(|e| e.is_up())
                .map(|e| e.warm().min(e.max_sessions))
                .sum::<usize>()
                .min(self.cfg.max_sessions),
            clients: self.clients.active(),
        });
        self.status.do_send(EngineGauges(
            self.engines
                .iter()
                .map(|e| EngineFigures {
                    name: e.name().to_string(),
                    up: e.is_up(),
                    running: e.assigned,
                    warm: e.ready(),
                    state: match &e.health {
                        Health::Up { .. } => "up".to_string(),
                        Health::Joining => "joining".to_string(),
                        Health::Down { why, .. } => format!("down ({why})"),
                    },
                })
                .collect(),
        ));
    }

    fn launch(&mut self, engine: usize, image: usize, role: Role) -> (u64, ContainerHandle) {
        self.next_key += 1;
        let key = self.next_key;
        let container = (self.spawn)(key, engine, image, role == Role::Spare);
        let e = &mut self.engines[engine];
        e.containers += 1;
        e.assigned += (role == Role::Serving) as usize;
        self.slots.insert(
            key,
            Slot {
                engine,
                image,
                container: container.clone(),
                role,
            },
        );
        (key, container)
    }

    fn has_room(&self) -> bool {
        self.slots.len() < self.cfg.max_sessions
    }

    /// A container of `image` for a session on an engine other than `avoid`, by the
    /// placement policy (`engines::pick`); a cold start only if `cold` allows it.
    fn take_container(
        &mut self,
        image: usize,
        avoid: Option<usize>,
        cold: bool,
    ) -> Option<(u64, ContainerHandle)> {
        let key = match pick(&self.engines, image, avoid, cold && self.has_room())? {
            Pick::Cold(i) => {
                let launched = self.launch(i, image, Role::Serving);
                self.status.do_send(PoolUse { hit: false });
                return Some(launched);
            }
            Pick::Spare(i) => self.engines[i].pools[image].ready.pop_front(),
            Pick::Warming(i) => self.engines[i].pools[image].warming.pop_front(),
        }
        .expect("pick chose a non-empty pool");
        self.status.do_send(PoolUse { hit: true });
        let slot = self
            .slots
            .get_mut(&key)
            .expect("pooled containers have slots");
        slot.role = Role::Serving;
        self.engines[slot.engine].assigned += 1;
        Some((key, slot.container.clone()))
    }

    /// With sessions queued and every slot taken, the spares left serve none of them
    /// (a spare of a queued session's image is taken at once): remove as many as there
    /// are queued sessions not yet given a slot being freed, from the fullest pools
    /// first. Their slots go to the queue when their removal is done.
    fn evict_for_queue(&mut self) {
        if self.draining || self.has_room() {
            return;
        }
        let evicting = self
            .slots
            .values()
            .filter(|s| s.role == Role::Evicted)
            .count();
        for _ in evicting..self.queue.len() {
            let fullest = self
                .engines
                .iter()
                .enumerate()
                .flat_map(|(i, e)| {
                    e.pools
                        .iter()
                        .enumerate()
                        .map(move |(p, pool)| (i, p, pool))
                })
                .filter(|(_, _, pool)| !pool.is_empty())
                .max_by_key(|(_, _, pool)| pool.len())
                .map(|(i, p, _)| (i, p));
            let Some((i, p)) = fullest else { return };
            let pool = &mut self.engines[i].pools[p];
            let key = pool
                .ready
                .pop_front()
                .or_else(|| pool.warming.pop_front())
                .expect("a non-empty pool");
            if let Some(slot) = self.slots.get_mut(&key) {
                slot.role = Role::Evicted;
                slot.container.kill.do_send(Kill(KillCause::Discarded));
            }
        }
    }

    /// Takes engine `i` out of service: its spares and running containers are given up at
    /// once (their sessions end with the documented outcome, protocol §8), and it is tried
    /// again after a pause. With no engine left, waiting sessions are told at once.
    fn engine_lost(&mut self, i: usize, why: EngineError, ctx: &mut Context<Self>) {
        let e = &mut self.engines[i];
        if matches!(e.health, Health::Down { .. }) {
            return;
        }
        warn!(engine = e.name(), error = %why, "engine out of service; its sessions end and new ones go elsewhere");
        e.generation += 1;
        // Dropping the lease's sender gives it up.
        e.health = Health::Down {
            why: why.clone(),
            since: Instant::now(),
            retry: e.rejoin,
        };
        e.rejoin = (e.rejoin * 2).min(MAX_REJOIN);
        for pool in &mut e.pools {
            pool.ready.clear();
            pool.warming.clear();
        }
        e.slow_pings = 0;
        for slot in self.slots.values().filter(|s| s.engine == i) {
            slot.container.kill.do_send(Kill(KillCause::EngineLost));
        }
        self.schedule_rejoin(i, ctx);
        if !self.any_up() && !self.draining {
            warn!(error = %why, "no engine is in service; refusing new sessions until one is back");
            self.status.do_send(DockerHealth { up: false });
            for id in self.queue.drain(..) {
                if let Some(entry) = self.sessions.get(&id) {
                    entry.session.stop.do_send(SessionStop::Unavailable);
                }
            }
        }
        self.gauges();
    }

    fn schedule_rejoin(&mut self, i: usize, ctx: &mut Context<Self>) {
        let Health::Down { retry, .. } = self.engines[i].health else {
            return;
        };
        let generation = self.engines[i].generation;
        ctx.run_later(retry, move |act, ctx| {
            if act.engines[i].generation == generation && !act.draining {
                act.rejoin(i, ctx);
            }
        });
    }

    /// Tries to bring a down engine back: ping, image, lease, sweep (`engine::join`).
    fn rejoin(&mut self, i: usize, ctx: &mut Context<Self>) {
        let e = &mut self.engines[i];
        let Health::Down { retry, why, since } = &e.health else {
            return;
        };
        let (retry, why, since) = (*retry, why.clone(), *since);
        e.health = Health::Joining;
        let generation = e.generation;
        let fut = join::join(e.engine.clone(), i, self.join.clone());
        ctx.spawn(fut.into_actor(self).map(move |res, act, ctx| {
            if act.engines[i].generation != generation || act.draining {
                return; // stale: the engine was taken out again meanwhile
            }
            match res {
                Ok((lease, swept)) => act.engine_joined(i, lease, swept, ctx),
                Err(e) => {
                    let name = act.engines[i].name().to_string();
                    match &e {
                        // Not an outage: someone must act.
                        JoinError::Lease(_) | JoinError::Image(_) => {
                            error!(engine = %name, error = %e, "engine cannot be brought back")
                        }
                        // Said once per kind of failure, not once a second.
                        _ if why != e.as_engine_error() => {
                            info!(engine = %name, error = %e, "engine still out of service")
                        }
                        _ => {}
                    }
                    act.engines[i].health = Health::Down {
                        why: e.as_engine_error(),
                        since,
                        retry: (retry * 2).min(MAX_REJOIN),
                    };
                    act.schedule_rejoin(i, ctx);
                    act.gauges();
                }
            }
        }));
        self.gauges();
    }

    fn engine_joined(&mut self, i: usize, lease: Lease, swept: usize, ctx: &mut Context<Self>) {
        let was_none_up = !self.any_up();
        let e = &mut self.engines[i];
        info!(engine = e.name(), removed = swept, "engine in service");
        let Lease { lost, release } = lease;
        e.health = Health::Up { lease: release };
        e.refill = Refill::Open {
            backoff: REFILL_BACKOFF,
        };
        e.start_failures = 0;
        e.slow_pings = 0;
        // A sweep removed whatever this run could not: nothing is left to retry.
        e.orphans.clear();
        self.watch_lease(i, lost, ctx);
        if was_none_up {
            info!("an engine is back; taking sessions again");
            self.status.do_send(DockerHealth { up: true });
        }
        self.advance_queue();
    }

    /// Takes engine `i` out of service if its lease is lost (the engine died, or the
    /// connection to it broke). The lease itself is kept in `Health::Up`.
    fn watch_lease(&mut self, i: usize, lost: LeaseLost, ctx: &mut Context<Self>) {
        let generation = self.engines[i].generation;
        ctx.spawn(lost.into_actor(self).map(move |(), act, ctx| {
            if act.engines[i].generation == generation {
                act.engine_lost(
                    i,
                    EngineError::Unreachable("the connection to the engine broke".into()),
                    ctx,
                );
            }
        }));
    }

    /// Pings every engine in service; a refused connection takes it out at once,
    /// `MAX_SLOW_PINGS` timeouts in a row too.
    fn ping_engines(&mut self, ctx: &mut Context<Self>) {
        if self.draining {
            return;
        }
        for (i, e) in self.engines.iter().enumerate().filter(|(_, e)| e.is_up()) {
            let generation = e.generation;
            let engine = e.engine.clone();
            let fut = async move { join::ping(&engine).await };
            ctx.spawn(fut.into_actor(self).map(move |res, act, ctx| {
                if act.engines[i].generation != generation {
                    return;
                }
                match res {
                    Ok(()) => act.engines[i].slow_pings = 0,
                    Err(e) if e.to_string().starts_with("no answer to a ping") => {
                        act.engines[i].slow_pings += 1;
                        if act.engines[i].slow_pings >= MAX_SLOW_PINGS {
                            act.engine_lost(i, e, ctx);
                        }
                    }
                    Err(e) if e.is_unreachable() => act.engine_lost(i, e, ctx),
                    Err(_) => {}
                }
            }));
        }
    }

    /// Starts warm containers until every pool is full, the slots are taken, or someone
    /// is queued (they get the next slot first).
    fn fill_pool(&mut self) {
        if self.draining || !self.queue.is_empty() {
            return;
        }
        let images = self.cfg.images.len();
        loop {
            // The emptiest pool first, over engines and images, so that with fewer slots
            // than spares wanted every image gets its share; the default image on a tie.
            let Some((i, image)) = (0..images)
                .flat_map(|image| (0..self.engines.len()).map(move |i| (i, image)))
                .filter(|(i, image)| self.engines[*i].wants_spare(*image))
                .min_by_key(|(i, image)| self.engines[*i].pools[*image].len())
            else {
                return;
            };
            if !self.has_room() {
                return;
            }
            let (key, _) = self.launch(i, image, Role::Spare);
            self.engines[i].pools[image].warming.push_back(key);
        }
    }

    /// Admits queued sessions while containers are available, then tells the rest their
    /// place. In queue order; one whose image has no spare and finds no room is passed
    /// over by those behind it only for a spare of their own image, which it could not
    /// have used.
    fn advance_queue(&mut self) {
        let mut moved = false;
        let mut at = 0;
        while !self.draining && at < self.queue.len() {
            let id = self.queue[at];
            let image = self.sessions.get(&id).map_or(0, |e| e.image);
            let Some((key, container)) = self.take_container(image, None, true) else {
                at += 1;
                continue;
            };
            self.queue.remove(at);
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
        self.evict_for_queue();
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
        for pool in self.engines.iter_mut().flat_map(|e| e.pools.iter_mut()) {
            for key in pool.ready.drain(..).chain(pool.warming.drain(..)) {
                if let Some(slot) = self.slots.get(&key) {
                    slot.container.kill.do_send(Kill(KillCause::Discarded));
                }
            }
        }
        if running_too {
            for slot in self.slots.values() {
                slot.container.kill.do_send(Kill(KillCause::Shutdown));
            }
        }
    }

    fn retry_orphans(&mut self, ctx: &mut Context<Self>) {
        let jobs: Vec<_> = self
            .engines
            .iter_mut()
            .enumerate()
            .filter(|(_, e)| e.is_up() && !e.orphans.is_empty())
            .map(|(i, e)| {
                (
                    i,
                    e.generation,
                    e.engine.clone(),
                    std::mem::take(&mut e.orphans),
                )
            })
            .collect();
        for (i, generation, engine, ids) in jobs {
            let fut = async move {
                let mut left = Vec::new();
                for id in ids {
                    if engine.remove(&id).await.is_err() {
                        left.push(id);
                    }
                }
                left
            };
            ctx.spawn(fut.into_actor(self).map(move |left, act, _| {
                let e = &mut act.engines[i];
                if !left.is_empty() {
                    warn!(
                        engine = e.name(),
                        count = left.len(),
                        "containers still not removed; retrying"
                    );
                }
                // A generation later, the engine's sweep at its return covers them.
                if e.generation == generation {
                    e.orphans.extend(left);
                }
            }));
        }
    }

    /// A container failed before its session's script started: place the session on
    /// another engine, once (it sends its script again), or tell it.
    fn relocate(&mut self, key: u64, failed_on: usize, failure: ContainerFailure) {
        let Some(id) = self
            .sessions
            .iter()
            .find(|(_, e)| matches!(&e.container, Some((k, _)) if *k == key))
            .map(|(id, _)| *id)
        else {
            return; // its session is gone: nobody to serve
        };
        let allowed = self.sessions[&id].relocation == Relocation::Allowed && !self.draining;
        let image = self.sessions[&id].image;
        let replacement = match allowed {
            true => self.take_container(image, Some(failed_on), true),
            false => None,
        };
        let entry = self.sessions.get_mut(&id).expect("found above");
        match replacement {
            Some((new_key, container)) => {
                info!(
                    from = self.engines[failed_on].name(),
                    to = self.engines[self.slots[&new_key].engine].name(),
                    error = %failure,
                    "a container failed before its script started; the session goes to another engine"
                );
                entry.relocation = Relocation::Spent;
                entry.container = Some((new_key, container.clone()));
                entry.session.admitted.do_send(Admitted { container });
            }
            None => entry
                .session
                .events
                .do_send(ContainerEvent::Finished(Finished::Failed(failure))),
        }
    }
}

impl Actor for Supervisor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        for (i, lost) in std::mem::take(&mut self.leases) {
            self.watch_lease(i, lost, ctx);
        }
        for i in 0..self.engines.len() {
            self.schedule_rejoin(i, ctx);
        }
        ctx.run_interval(Duration::from_secs(5), |act, ctx| act.retry_orphans(ctx));
        // Clients whose last start has left the rate window are forgotten, so the map
        // holds at most the clients of the last minute, not every address ever seen.
        ctx.run_interval(RATE_WINDOW / 4, |act, _| act.clients.prune(Instant::now()));
        // An idle daemon (or one whose pools are full) starts no containers, so it would
        // not notice losing an engine until a client came: look now and then.
        ctx.run_interval(PING_EVERY, |act, ctx| act.ping_engines(ctx));
        if !self.any_up() {
            self.status.do_send(DockerHealth { up: false });
        }
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
                relocation: Relocation::Allowed,
                image: 0,
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

    fn handle(&mut self, Admit { id, image }: Admit, _: &mut Context<Self>) -> Admission {
        if self.draining {
            return Admission::ShuttingDown;
        }
        let Some(client) = self.sessions.get(&id).map(|e| e.client.clone()) else {
            return Admission::ShuttingDown;
        };
        if !self.any_up() {
            // Every engine is out: say why (the first one's reason stands for all).
            let why = self
                .engines
                .iter()
                .find_map(|e| match &e.health {
                    Health::Down { why, .. } => Some(why.clone()),
                    _ => None,
                })
                .unwrap_or_else(|| EngineError::Unreachable("no engine is in service yet".into()));
            return Admission::Unavailable(why);
        }
        if let Err(refusal) = self.clients.admit(&client, Instant::now()) {
            return Admission::Limited(refusal);
        }
        // A bad index is the Session's bug; the default image is the safe reading of it.
        let image = if image < self.cfg.images.len() {
            image
        } else {
            0
        };
        // With a queue, only a spare of this image (which nobody queued could use): the
        // next free slot is the queue's.
        let cold = self.queue.is_empty();
        let container = self.take_container(image, None, cold);
        let entry = self.sessions.get_mut(&id).expect("checked above");
        entry.image = image;
        if let Some((key, container)) = container {
            entry.state = SessionState::Running;
            entry.container = Some((key, container.clone()));
            self.fill_pool();
            self.gauges();
            Admission::Granted(container)
        } else if self.queue.len() < self.cfg.max_queue {
            entry.state = SessionState::Queued;
            self.queue.push_back(id);
            self.evict_for_queue();
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
        let Some(slot) = self.slots.remove(&gone.key) else {
            return;
        };
        let i = slot.engine;
        let e = &mut self.engines[i];
        e.containers -= 1;
        e.assigned -= (slot.role == Role::Serving) as usize;
        e.pools[slot.image].ready.retain(|k| *k != gone.key);
        if let Some(id) = gone.leaked {
            e.orphans.push(id);
        }
        // Was it a failed start on an engine that answers? Counted toward taking the
        // engine out of service.
        let start_failed = matches!(
            &gone.unreported,
            Some(ContainerFailure::Start(err)) if !err.is_unreachable()
        );
        if start_failed {
            e.start_failures += 1;
        }
        let warming = &mut e.pools[slot.image].warming;
        if let Some(pos) = warming.iter().position(|k| *k == gone.key) {
            // A spare that never became ready: its start failed. Back off before the
            // next refill instead of hammering an engine that is failing.
            warming.remove(pos);
            if let Refill::Open { backoff } = e.refill {
                if !self.draining && e.is_up() {
                    e.refill = Refill::Paused { backoff };
                    warn!(
                        engine = e.name(),
                        pause_ms = backoff.as_millis() as u64,
                        "a warm container failed to start; pausing refills"
                    );
                    let generation = e.generation;
                    ctx.run_later(backoff, move |act, _| {
                        let e = &mut act.engines[i];
                        if e.generation == generation {
                            e.refill = Refill::Open {
                                backoff: (backoff * 2).min(MAX_REFILL_BACKOFF),
                            };
                        }
                        act.fill_pool();
                        act.gauges();
                    });
                }
            }
        }
        if let Some(why) = gone.unreachable {
            self.engine_lost(i, why, ctx);
        } else if self.engines[i].start_failures >= MAX_START_FAILURES {
            let why = match &gone.unreported {
                Some(failure) => failure.to_string(),
                None => "its containers fail to start".to_string(),
            };
            self.engine_lost(
                i,
                EngineError::Api(format!(
                    "{MAX_START_FAILURES} container starts in a row failed; the last: {why}"
                )),
                ctx,
            );
        }
        if let Some(failure) = gone.unreported {
            if slot.role == Role::Serving {
                self.relocate(gone.key, i, failure);
            }
        }
        self.advance_queue();
        self.check_drained();
    }
}

impl Handler<ContainerReady> for Supervisor {
    type Result = ();

    fn handle(&mut self, msg: ContainerReady, _: &mut Context<Self>) {
        let Some(slot) = self.slots.get(&msg.key) else {
            return;
        };
        let e = &mut self.engines[slot.engine];
        let pool = &mut e.pools[slot.image];
        let (from, to) = if msg.ready {
            e.refill = Refill::Open {
                backoff: REFILL_BACKOFF,
            };
            e.start_failures = 0;
            e.rejoin = REJOIN;
            (&mut pool.warming, &mut pool.ready)
        } else {
            (&mut pool.ready, &mut pool.warming)
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

    fn handle(&mut self, msg: Orphaned, _: &mut Context<Self>) {
        if let Some(slot) = self.slots.get(&msg.key) {
            self.engines[slot.engine].orphans.push(msg.id);
        }
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
