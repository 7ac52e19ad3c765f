//! The Supervisor actor: admission (the running cap and the bounded queue), each session's
//! time limit, the containers' slots, and the drain at shutdown.
//!
//! A slot is taken when a container is launched for a session and given back only when
//! that container has been removed, so `--max-sessions` bounds the containers that exist,
//! not merely the sessions that are talking.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use tokio::sync::oneshot;
use tracing::{info, warn};

use crate::config::Config;
use crate::container::{ContainerActor, ContainerDeps, ContainerGone, Kill, KillCause};
use crate::session::{Admitted, QueuePosition, Session, SessionStop};
use crate::status::{Gauges, Status};

/// A session introduces itself when it starts: from now on its time runs.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Register {
    pub id: u64,
    pub addr: Addr<Session>,
    pub accepted_at: Instant,
}

/// A session is over (its container may still be being removed).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Unregister {
    pub id: u64,
}

/// A session with a valid HELLO asks to run.
#[derive(Message)]
#[rtype(result = "Admission")]
pub struct Admit {
    pub id: u64,
}

#[derive(Debug, MessageResponse)]
pub enum Admission {
    /// Run now, in this container.
    Granted(Addr<ContainerActor>),
    /// Wait; `Admitted` follows when a slot frees.
    Queued(u32),
    /// Every slot and queue place is taken.
    Busy { running: usize, queued: usize },
    /// The server is draining.
    ShuttingDown,
}

/// Stop admitting; let running sessions go on for `grace`, then end them; signal `done`
/// once every session has ended and every container is removed.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Drain {
    pub grace: Duration,
    pub done: oneshot::Sender<()>,
}

/// End every remaining session now (a second SIGTERM during the drain).
#[derive(Message)]
#[rtype(result = "()")]
pub struct DrainNow;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SessionState {
    /// Connected, not yet asking to run (handshake done, HELLO pending).
    Connected,
    Queued,
    Running,
}

struct Entry {
    addr: Addr<Session>,
    state: SessionState,
    timer: SpawnHandle,
}

struct Slot {
    addr: Addr<ContainerActor>,
}

pub struct Supervisor {
    cfg: Arc<Config>,
    deps: ContainerDeps,
    status: Addr<Status>,
    sessions: HashMap<u64, Entry>,
    queue: VecDeque<u64>,
    slots: HashMap<u64, Slot>,
    next_key: u64,
    draining: bool,
    drained: Option<oneshot::Sender<()>>,
    orphans: Vec<String>,
}

impl Supervisor {
    /// `deps.gone` is replaced by this actor's own address when it starts.
    pub fn new(cfg: Arc<Config>, deps: ContainerDeps, status: Addr<Status>) -> Self {
        Supervisor {
            cfg,
            deps,
            status,
            sessions: HashMap::new(),
            queue: VecDeque::new(),
            slots: HashMap::new(),
            next_key: 0,
            draining: false,
            drained: None,
            orphans: Vec::new(),
        }
    }

    fn gauges(&self) {
        self.status.do_send(Gauges {
            running: self.slots.len(),
            queued: self.queue.len(),
        });
    }

    fn launch(&mut self, ctx: &mut Context<Self>) -> Addr<ContainerActor> {
        self.next_key += 1;
        let key = self.next_key;
        let mut deps = self.deps.clone();
        deps.gone = ctx.address().recipient();
        let addr = ContainerActor::new(deps, key, false).start();
        self.slots.insert(key, Slot { addr: addr.clone() });
        addr
    }

    fn has_room(&self) -> bool {
        self.slots.len() < self.cfg.max_sessions
    }

    /// Admits queued sessions while there is room, then tells the rest their place.
    fn advance_queue(&mut self, ctx: &mut Context<Self>) {
        let mut moved = false;
        while self.has_room() && !self.draining {
            let Some(id) = self.queue.pop_front() else {
                break;
            };
            moved = true;
            let Some(entry) = self.sessions.get_mut(&id) else {
                continue;
            };
            entry.state = SessionState::Running;
            let addr = entry.addr.clone();
            let container = self.launch(ctx);
            addr.do_send(Admitted { container });
        }
        if moved {
            self.tell_positions(0);
        }
        self.gauges();
    }

    /// Sends every queued session from index `from` on its (new) position.
    fn tell_positions(&self, from: usize) {
        for (i, id) in self.queue.iter().enumerate().skip(from) {
            if let Some(entry) = self.sessions.get(id) {
                entry.addr.do_send(QueuePosition(i as u32 + 1));
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
                entry.addr.do_send(SessionStop::Shutdown);
            }
        }
        if running_too {
            // Containers whose session is already gone (being removed) need no message;
            // ones still warming up for a session are covered by the session's stop.
            for slot in self.slots.values() {
                slot.addr.do_send(Kill(KillCause::Shutdown));
            }
        }
    }

    fn retry_orphans(&mut self, ctx: &mut Context<Self>) {
        if self.orphans.is_empty() {
            return;
        }
        let docker = self.deps.docker.clone();
        let ids = std::mem::take(&mut self.orphans);
        let fut = async move {
            let mut left = Vec::new();
            for id in ids {
                if crate::docker::remove(&docker, &id).await.is_err() {
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
    }
}

impl Handler<Register> for Supervisor {
    type Result = ();

    fn handle(&mut self, msg: Register, ctx: &mut Context<Self>) {
        if self.draining {
            msg.addr.do_send(SessionStop::Shutdown);
        }
        let left = self
            .cfg
            .session_timeout
            .saturating_sub(msg.accepted_at.elapsed());
        let id = msg.id;
        let timer = ctx.run_later(left, move |act, _| {
            if let Some(entry) = act.sessions.get(&id) {
                entry.addr.do_send(SessionStop::Timeout);
            }
        });
        self.sessions.insert(
            id,
            Entry {
                addr: msg.addr,
                state: SessionState::Connected,
                timer,
            },
        );
    }
}

impl Handler<Unregister> for Supervisor {
    type Result = ();

    fn handle(&mut self, Unregister { id }: Unregister, ctx: &mut Context<Self>) {
        if let Some(entry) = self.sessions.remove(&id) {
            ctx.cancel_future(entry.timer);
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

    fn handle(&mut self, Admit { id }: Admit, ctx: &mut Context<Self>) -> Admission {
        if self.draining {
            return Admission::ShuttingDown;
        }
        let Some(entry) = self.sessions.get_mut(&id) else {
            return Admission::ShuttingDown;
        };
        if self.slots.len() < self.cfg.max_sessions && self.queue.is_empty() {
            entry.state = SessionState::Running;
            let container = self.launch(ctx);
            self.gauges();
            Admission::Granted(container)
        } else if self.queue.len() < self.cfg.max_queue {
            entry.state = SessionState::Queued;
            self.queue.push_back(id);
            self.gauges();
            Admission::Queued(self.queue.len() as u32)
        } else {
            Admission::Busy {
                running: self.slots.len(),
                queued: self.queue.len(),
            }
        }
    }
}

impl Handler<ContainerGone> for Supervisor {
    type Result = ();

    fn handle(&mut self, gone: ContainerGone, ctx: &mut Context<Self>) {
        self.slots.remove(&gone.key);
        if let Some(id) = gone.leaked {
            self.orphans.push(id);
        }
        self.advance_queue(ctx);
        self.check_drained();
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
