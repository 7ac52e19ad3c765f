//! Unit tests of the Supervisor and the ContainerActor, wired as `server.rs` wires them,
//! on the in-memory engine (`engine::fake`), with probe actors standing in for sessions.
//!
//! Every test runs on tokio's paused clock: when nothing is left to do but wait, the clock
//! jumps to the next timer, so the Supervisor's and the containers' timers (refill
//! back-off, Docker checks, drain grace, session timeout) cost nothing, and a test awaits
//! the event it expects instead of sleeping.

mod admission;
mod containers;
mod drain;
mod engine_down;
mod engines;
mod images;
mod races;

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use clap::Parser;
use tokio::sync::mpsc;

use super::{EngineStart, Supervisor};
use crate::config::{Cli, Config};
use crate::container;
use crate::engine::fake::FakeEngine;
use crate::engine::join::JoinDeps;
use crate::engine::{Engine, SharedEngine};
use crate::messages::{
    Admission, Admit, Admitted, ContainerEvent, ContainerHandle, Finished, QueuePosition, Register,
    Run, SessionHandle, SessionStop, Unregister,
};
use crate::protocol::Frame;
use crate::sandbox::SandboxSpec;
use crate::status::{ByteCounters, Capacity, Status};
use crate::stdin_queue::StdinQueue;

/// Longest a test waits for an event, on the paused clock: beyond every timer of the
/// Supervisor and the ContainerActor, far below the session timeout of `config`.
const PATIENCE: Duration = Duration::from_secs(300);

/// The defaults, with these bounds and a session timeout no test reaches unless it sets
/// a shorter one.
pub(super) fn config(max_sessions: usize, warm: usize, max_queue: usize) -> Config {
    let cli = Cli::try_parse_from(["pyexecd"]).expect("the defaults parse");
    let mut cfg = cli.serve.resolve().expect("the defaults are valid");
    cfg.max_sessions = max_sessions;
    cfg.warm = warm;
    cfg.max_queue = max_queue;
    cfg.max_sessions_per_client = 0;
    cfg.rate = 0;
    cfg.session_timeout = Duration::from_secs(3600);
    cfg
}

/// A Supervisor and its containers on fake engines.
pub(super) struct Harness {
    /// The first engine (the only one, unless the test asked for more).
    pub engine: FakeEngine,
    pub engines: Vec<FakeEngine>,
    pub supervisor: Addr<Supervisor>,
    next_id: u64,
}

impl Harness {
    /// Starts the actors as `server::run` does, on one engine. Call it inside an actix
    /// System whose clock is paused.
    pub fn start(cfg: Config) -> Self {
        Self::start_on(cfg, &[("fake", None)])
    }

    /// The same on several engines: each a name and its slot cap (default the daemon's),
    /// the pool split among them as `config::engines` splits it.
    pub fn start_on(cfg: Config, engines: &[(&str, Option<usize>)]) -> Self {
        let cfg = Arc::new(cfg);
        let fakes: Vec<FakeEngine> = engines.iter().map(|(n, _)| FakeEngine::named(n)).collect();
        let join = JoinDeps {
            instance: cfg.instance.clone(),
            run: "this run".into(),
            image: cfg.sandbox.image.clone(),
            sync: Arc::new(|_| Box::pin(async { Ok(()) })),
        };
        let starts = fakes
            .iter()
            .zip(engines)
            .map(|(fake, (_, max))| {
                // The fake answers at once: its future is ready on the first poll.
                let lease = futures::executor::block_on(fake.take_lease(
                    &join.instance,
                    &join.run,
                    &join.image,
                ));
                let max_sessions = max.unwrap_or(cfg.max_sessions);
                // The default image's pool split as `config::engines` splits it; each
                // extra image's whole pool on every engine (the tests of several images
                // run on one engine).
                let mut warm = vec![cfg.warm.div_ceil(engines.len()).min(max_sessions)];
                warm.extend(cfg.images[1..].iter().map(|i| i.warm.min(max_sessions)));
                EngineStart {
                    engine: Arc::new(fake.clone()),
                    max_sessions,
                    warm,
                    joined: lease.map_err(|e| crate::engine::EngineError::Api(e.to_string())),
                }
            })
            .collect();
        let shared: Vec<SharedEngine> = fakes
            .iter()
            .map(|f| Arc::new(f.clone()) as SharedEngine)
            .collect();
        let bytes = Arc::new(ByteCounters::default());
        let status = Status::new(bytes.clone(), Capacity::default()).start();
        let specs: Vec<Arc<SandboxSpec>> = cfg
            .images
            .iter()
            .map(|i| Arc::new(SandboxSpec::for_image(&cfg.sandbox, &cfg.instance, i)))
            .collect();
        let supervisor = Supervisor::create(|ctx| {
            let owner = container::Owner {
                gone: ctx.address().recipient(),
                ready: ctx.address().recipient(),
                orphaned: ctx.address().recipient(),
            };
            let spawn = Box::new(container::spawner(&shared, specs, bytes, owner));
            Supervisor::new(cfg, starts, join, spawn, status)
        });
        Harness {
            engine: fakes[0].clone(),
            engines: fakes,
            supervisor,
            next_id: 0,
        }
    }

    /// A session of `client`, registered with the Supervisor (its time runs from now).
    pub fn session(&mut self, client: &str) -> TestSession {
        self.next_id += 1;
        let (tx, heard) = mpsc::unbounded_channel();
        let probe = Probe(tx).start();
        self.supervisor.do_send(Register {
            id: self.next_id,
            session: SessionHandle {
                admitted: probe.clone().recipient(),
                position: probe.clone().recipient(),
                stop: probe.clone().recipient(),
                events: probe.clone().recipient(),
            },
            accepted_at: std::time::Instant::now(),
            client: client.to_string(),
        });
        TestSession {
            id: self.next_id,
            heard,
            probe,
            supervisor: self.supervisor.clone(),
        }
    }
}

/// What a session heard, from the Supervisor or from its container.
#[derive(Debug)]
pub(super) enum Heard {
    Admitted(ContainerHandle),
    Position(u32),
    Stop(SessionStop),
    Started { warm: bool, engine: String },
    FirstOutput,
    Finished(Finished),
}

/// Stands in for a session actor: records what it is sent.
struct Probe(mpsc::UnboundedSender<Heard>);

impl Actor for Probe {
    type Context = Context<Self>;
}

impl Handler<Admitted> for Probe {
    type Result = ();
    fn handle(&mut self, msg: Admitted, _: &mut Context<Self>) {
        let _ = self.0.send(Heard::Admitted(msg.container));
    }
}

impl Handler<QueuePosition> for Probe {
    type Result = ();
    fn handle(&mut self, QueuePosition(position): QueuePosition, _: &mut Context<Self>) {
        let _ = self.0.send(Heard::Position(position));
    }
}

impl Handler<SessionStop> for Probe {
    type Result = ();
    fn handle(&mut self, msg: SessionStop, _: &mut Context<Self>) {
        let _ = self.0.send(Heard::Stop(msg));
    }
}

impl Handler<ContainerEvent> for Probe {
    type Result = ();
    fn handle(&mut self, event: ContainerEvent, _: &mut Context<Self>) {
        let _ = self.0.send(match event {
            ContainerEvent::Started { warm, engine, .. } => Heard::Started {
                warm,
                engine: engine.to_string(),
            },
            ContainerEvent::FirstOutput => Heard::FirstOutput,
            ContainerEvent::Finished(f) => Heard::Finished(f),
        });
    }
}

/// A test's hold on one session: it asks what a session asks and reads what it heard.
pub(super) struct TestSession {
    pub id: u64,
    heard: mpsc::UnboundedReceiver<Heard>,
    probe: Addr<Probe>,
    supervisor: Addr<Supervisor>,
}

impl TestSession {
    pub async fn admit(&self) -> Admission {
        self.admit_to(0).await
    }

    /// Asks to run in image `image` (an index into `Config::images`).
    pub async fn admit_to(&self, image: usize) -> Admission {
        self.supervisor
            .send(Admit { id: self.id, image })
            .await
            .expect("the Supervisor runs")
    }

    /// Asks to run and expects a container at once.
    pub async fn granted(&self) -> ContainerHandle {
        match self.admit().await {
            Admission::Granted(container) => container,
            other => panic!("session {}: expected a grant, got {other:?}", self.id),
        }
    }

    /// Asks to run and expects to queue; the position.
    pub async fn queued(&self) -> u32 {
        match self.admit().await {
            Admission::Queued(position) => position,
            other => panic!("session {}: expected to queue, got {other:?}", self.id),
        }
    }

    /// The next thing the session hears (the test fails if nothing comes).
    pub async fn next(&mut self) -> Heard {
        match tokio::time::timeout(PATIENCE, self.heard.recv()).await {
            Ok(Some(heard)) => heard,
            Ok(None) => unreachable!("the probe holds the sender"),
            Err(_) => panic!("session {}: heard nothing in {PATIENCE:?}", self.id),
        }
    }

    /// Whether the session has heard nothing (yet).
    pub fn quiet(&mut self) -> bool {
        match self.heard.try_recv() {
            Err(_) => true,
            Ok(heard) => {
                eprintln!("session {} heard {heard:?}", self.id);
                false
            }
        }
    }

    pub async fn admitted(&mut self) -> ContainerHandle {
        match self.next().await {
            Heard::Admitted(container) => container,
            other => panic!("session {}: expected Admitted, got {other:?}", self.id),
        }
    }

    pub async fn stopped(&mut self) -> SessionStop {
        match self.next().await {
            Heard::Stop(stop) => stop,
            other => panic!("session {}: expected a stop, got {other:?}", self.id),
        }
    }

    /// The container's report on the script, past its Started and FirstOutput events.
    /// How the script ended, with its usage left out (`finished_with_usage` keeps it).
    pub async fn finished(&mut self) -> Finished {
        match self.finished_with_usage().await {
            Finished::Exited {
                status, exact, oom, ..
            } => Finished::Exited {
                status,
                exact,
                oom,
                usage: Default::default(),
            },
            other => other,
        }
    }

    pub async fn finished_with_usage(&mut self) -> Finished {
        loop {
            match self.next().await {
                Heard::Finished(finished) => return finished,
                Heard::Started { .. } | Heard::FirstOutput => {}
                other => panic!("session {}: expected Finished, got {other:?}", self.id),
            }
        }
    }

    /// The session is over.
    pub fn unregister(&self) {
        self.supervisor.do_send(Unregister { id: self.id });
    }

    /// Hands `script` (in the fake engine's language) to the container, as a session does.
    pub fn run(&self, container: &ContainerHandle, script: &str) -> ScriptIo {
        self.run_limited(container, script, 1 << 20)
    }

    /// `run`, with at most `output_limit` bytes of output.
    pub fn run_limited(
        &self,
        container: &ContainerHandle,
        script: &str,
        output_limit: u64,
    ) -> ScriptIo {
        let nonce = crate::bootstrap::new_nonce();
        let request = crate::bootstrap::request(
            script.as_bytes(),
            "main.py",
            &[],
            &nonce,
            &Default::default(),
            0,
        );
        let (output_tx, output) = mpsc::channel(64);
        let (control_tx, control) = mpsc::unbounded_channel();
        let stdin = Arc::new(StdinQueue::new());
        container.run.do_send(Run {
            request,
            nonce,
            admitted_at: std::time::Instant::now(),
            queued_ms: 0,
            stdin: stdin.clone(),
            output: output_tx,
            control: control_tx,
            stdin_in_flight: Default::default(),
            output_limit,
            events: self.probe.clone().recipient(),
            files_in: false,
            files_out: None,
            input_wanted: false,
        });
        ScriptIo {
            output,
            control,
            stdin,
        }
    }
}

/// The session's end of a script's streams.
pub(super) struct ScriptIo {
    pub output: mpsc::Receiver<Frame>,
    pub control: mpsc::UnboundedReceiver<Frame>,
    pub stdin: Arc<StdinQueue>,
}

impl ScriptIo {
    /// Stdout and stderr queued so far (all of it, once the session heard `Finished`).
    pub fn take_output(&mut self) -> (String, String) {
        let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
        while let Ok(frame) = self.output.try_recv() {
            match frame {
                Frame::Stdout(b) => stdout.extend_from_slice(&b),
                Frame::Stderr(b) => stderr.extend_from_slice(&b),
                other => panic!("not output: {other:?}"),
            }
        }
        let text = |b: Vec<u8>| String::from_utf8(b).expect("the fake writes text");
        (text(stdout), text(stderr))
    }

    pub fn stdout(&mut self) -> String {
        self.take_output().0
    }
}

/// The report of a script that ended on its own with `code`.
pub(super) fn exited(code: i32) -> Finished {
    Finished::Exited {
        status: code as i64,
        exact: Some(crate::messages::ScriptExit::Code(code)),
        oom: false,
        usage: Default::default(),
    }
}
