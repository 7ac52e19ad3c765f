//! The Status actor: the daemon's counters, gauges and latency samples, the SIGUSR1 dump,
//! and the same figures as Prometheus metrics (`metrics.rs` serves them).
//!
//! Events arrive as small messages; byte counts, which change on every chunk of output,
//! are plain atomics shared with the streaming path so that it never sends a message per
//! chunk. The Prometheus registry is fed from the same events, so the dump and /metrics
//! never disagree.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};

use crate::protocol::{EndReason, ErrorCode};
use crate::transport::Protocol;

mod engines;

pub use engines::EngineFigures;
use engines::EngineMetrics;

/// Counters updated straight from the streaming path, without a message per chunk. They
/// are the very counters /metrics exports (a `Counter` is a shared atomic).
#[derive(Debug, Default)]
pub struct ByteCounters {
    /// Bytes received from clients (script and stdin).
    bytes_in: Counter,
    /// Bytes of script output sent to clients.
    bytes_out: Counter,
}

impl ByteCounters {
    pub fn add_in(&self, n: usize) {
        self.bytes_in.inc_by(n as u64);
    }
    pub fn add_out(&self, n: usize) {
        self.bytes_out.inc_by(n as u64);
    }
}

/// How a session ended, from the server's point of view.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Outcome {
    /// An END frame was sent with this reason.
    End(EndReason),
    /// An ERROR frame was sent with this code.
    Error(ErrorCode),
    /// The client went away before the session could end properly.
    Disconnected,
    /// A probe (`pyexec --version`): nothing was run.
    Probe,
}

impl Outcome {
    pub fn label(self) -> String {
        match self {
            Outcome::End(r) => r.as_str().to_string(),
            Outcome::Error(c) => format!("error_{}", c.as_str()),
            Outcome::Disconnected => "disconnected".to_string(),
            Outcome::Probe => "probe".to_string(),
        }
    }
}

/// A session began, over the binary protocol or a WebSocket.
#[derive(Message)]
#[rtype(result = "()")]
pub struct SessionAccepted(pub Protocol);

#[derive(Message)]
#[rtype(result = "()")]
pub struct SessionEnded(pub Outcome);

#[derive(Message)]
#[rtype(result = "()")]
pub struct TlsFailed;

/// A connection closed at once because a connection bound was reached.
#[derive(Message)]
#[rtype(result = "()")]
pub struct ConnectionRefused;

#[derive(Message)]
#[rtype(result = "()")]
pub struct ContainerStarted {
    /// From asking Docker for a container to the script being handed to Python.
    pub latency: Duration,
    /// The engine it runs on.
    pub engine: Arc<str>,
}

/// Each engine's figures, pushed by the Supervisor whenever they change.
#[derive(Message)]
#[rtype(result = "()")]
pub struct EngineGauges(pub Vec<EngineFigures>);

/// Current load, pushed by the Supervisor whenever it changes.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Gauges {
    pub running: usize,
    pub queued: usize,
    /// Warm containers ready for a script.
    pub warm: usize,
    /// What `warm` reaches when the pools of the engines in service are full.
    pub warm_target: usize,
    /// Active sessions (queued or running) per client identity.
    pub clients: Vec<(String, usize)>,
}

/// A session got its container: from the warm pool (`hit`) or not.
#[derive(Message)]
#[rtype(result = "()")]
pub struct PoolUse {
    pub hit: bool,
}

/// What a script used, as its END reports it: for the per-session histograms.
#[derive(Message)]
#[rtype(result = "()")]
pub struct ScriptUsage(pub crate::protocol::Usage);

/// SIGNAL frames a session dropped over its rate limit (protocol §7), sent once at its end.
#[derive(Message)]
#[rtype(result = "()")]
pub struct SignalsDropped(pub u64);

/// Time from accepting a connection to the first byte of script output leaving for it.
#[derive(Message)]
#[rtype(result = "()")]
pub struct FirstOutput {
    pub latency: Duration,
}

/// Whether the Docker Engine answers, pushed by the Supervisor when that changes.
#[derive(Message)]
#[rtype(result = "()")]
pub struct DockerHealth {
    pub up: bool,
}

/// The configured capacity, for gauges an alert can compare the live figures with. Fixed
/// for the daemon's life, so it is given at start.
#[derive(Debug, Clone, Copy, Default)]
pub struct Capacity {
    pub max_sessions: usize,
    pub warm: usize,
    pub max_queue: usize,
}

/// The metrics in the Prometheus text format (OpenMetrics).
#[derive(Message)]
#[rtype(result = "String")]
pub struct Encode;

/// Log one snapshot (SIGUSR1).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Dump;

/// Ask for a snapshot.
#[derive(Message)]
#[rtype(result = "Snapshot")]
pub struct GetSnapshot;

/// Everything the Status actor knows, at one instant.
#[derive(Debug, Clone, MessageResponse)]
pub struct Snapshot {
    pub uptime: Duration,
    pub accepted: u64,
    pub running: usize,
    pub queued: usize,
    pub warm: usize,
    pub warm_hits: u64,
    pub warm_misses: u64,
    /// Active sessions per client (certificate subject, or IP address without mTLS).
    pub clients: Vec<(String, usize)>,
    pub finished: BTreeMap<String, u64>,
    pub busy: u64,
    pub tls_failures: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub start_p50: Option<Duration>,
    pub start_p99: Option<Duration>,
}

impl std::fmt::Display for Snapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ms =
            |d: Option<Duration>| d.map_or("-".to_string(), |d| format!("{}ms", d.as_millis()));
        let mut clients = self.clients.clone();
        clients.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        let shown: Vec<String> = clients
            .iter()
            .take(20)
            .map(|(c, n)| format!("{c:?}:{n}"))
            .collect();
        let more = clients.len().saturating_sub(20);
        let clients = match more {
            0 => shown.join(","),
            n => format!("{},+{n} more", shown.join(",")),
        };
        let finished = self
            .finished
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",");
        write!(
            f,
            "uptime={}s accepted={} running={} queued={} warm={} warm_hits={} warm_misses={} \
             clients=[{}] finished=[{}] busy={} tls_failures={} bytes_in={} bytes_out={} \
             start_p50={} start_p99={}",
            self.uptime.as_secs(),
            self.accepted,
            self.running,
            self.queued,
            self.warm,
            self.warm_hits,
            self.warm_misses,
            clients,
            finished,
            self.busy,
            self.tls_failures,
            self.bytes_in,
            self.bytes_out,
            ms(self.start_p50),
            ms(self.start_p99),
        )
    }
}

/// Keeps the last `CAPACITY` start latencies: enough for stable percentiles, bounded memory.
#[derive(Debug, Default)]
struct Samples(VecDeque<Duration>);

impl Samples {
    const CAPACITY: usize = 1024;

    fn push(&mut self, d: Duration) {
        if self.0.len() == Self::CAPACITY {
            self.0.pop_front();
        }
        self.0.push_back(d);
    }

    fn percentile(&self, p: f64) -> Option<Duration> {
        if self.0.is_empty() {
            return None;
        }
        let mut v: Vec<_> = self.0.iter().copied().collect();
        v.sort_unstable();
        let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
        Some(v[rank.clamp(1, v.len()) - 1])
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionLabels {
    version: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProtocolLabels {
    protocol: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LimitLabels {
    limit: String,
}

/// The Prometheus view of the same figures.
struct Metrics {
    registry: Registry,
    sessions: Family<OutcomeLabels, Counter>,
    accepted: Counter,
    by_protocol: Family<ProtocolLabels, Counter>,
    busy: Counter,
    tls_failures: Counter,
    connections_refused: Counter,
    signals_dropped: Counter,
    running: Gauge,
    queued: Gauge,
    warm: Gauge,
    warm_hits: Counter,
    warm_misses: Counter,
    bytes_in: Counter,
    bytes_out: Counter,
    container_start: Histogram,
    first_output: Histogram,
    script_cpu: Histogram,
    script_memory: Histogram,
    docker_up: Gauge,
    capacity: Family<LimitLabels, Gauge>,
    engines: EngineMetrics,
}

impl Metrics {
    fn new(bytes: &ByteCounters) -> Self {
        // 1 ms to ~16 s: a warm start is milliseconds, a cold one a few hundred.
        let latency = || Histogram::new(exponential_buckets(0.001, 2.0, 15));
        let mut registry = Registry::with_prefix("pyexec");
        let mut m = Metrics {
            registry: Registry::default(),
            sessions: Family::default(),
            accepted: Counter::default(),
            by_protocol: Family::default(),
            busy: Counter::default(),
            tls_failures: Counter::default(),
            connections_refused: Counter::default(),
            signals_dropped: Counter::default(),
            running: Gauge::default(),
            queued: Gauge::default(),
            warm: Gauge::default(),
            warm_hits: Counter::default(),
            warm_misses: Counter::default(),
            bytes_in: bytes.bytes_in.clone(),
            bytes_out: bytes.bytes_out.clone(),
            container_start: latency(),
            first_output: latency(),
            // 1 ms to ~65 s of CPU; 4 MiB to 16 GiB of memory.
            script_cpu: Histogram::new(exponential_buckets(0.001, 2.0, 17)),
            script_memory: Histogram::new(exponential_buckets(4.0 * 1024.0 * 1024.0, 2.0, 13)),
            docker_up: Gauge::default(),
            capacity: Family::default(),
            engines: EngineMetrics::new(&mut registry),
        };
        // The engines' series went in first; the rest join them, all under `pyexec_`.
        m.registry = registry;
        let r = &mut m.registry;
        r.register(
            "sessions",
            "Sessions ended, by outcome (END reason, error_<code>, or disconnected)",
            m.sessions.clone(),
        );
        r.register(
            "accepted_sessions",
            "Connections that completed a TLS handshake",
            m.accepted.clone(),
        );
        r.register(
            "accepted_sessions_by_protocol",
            "Sessions begun, by the protocol on the wire (binary, websocket)",
            m.by_protocol.clone(),
        );
        r.register(
            "busy_refusals",
            "Sessions refused because every slot and queue place was taken",
            m.busy.clone(),
        );
        r.register(
            "tls_handshake_failures",
            "TLS handshakes (and PROXY headers, with --proxy-protocol) that failed or timed out",
            m.tls_failures.clone(),
        );
        r.register(
            "connections_refused",
            "Connections closed at once: --max-connections or --max-connections-per-ip reached",
            m.connections_refused.clone(),
        );
        r.register(
            "signals_dropped",
            "SIGNAL frames dropped over a session's rate limit (protocol section 7)",
            m.signals_dropped.clone(),
        );
        r.register(
            "sessions_running",
            "Sessions holding a container",
            m.running.clone(),
        );
        r.register(
            "sessions_queued",
            "Sessions waiting for a slot",
            m.queued.clone(),
        );
        r.register(
            "warm_pool_size",
            "Warm containers ready for a script",
            m.warm.clone(),
        );
        r.register(
            "warm_pool_hits",
            "Sessions served from the warm pool",
            m.warm_hits.clone(),
        );
        r.register(
            "warm_pool_misses",
            "Sessions that had to wait for a container to start",
            m.warm_misses.clone(),
        );
        r.register_with_unit(
            "received",
            "Script and stdin bytes received from clients",
            Unit::Bytes,
            m.bytes_in.clone(),
        );
        r.register_with_unit(
            "sent",
            "Script output bytes sent to clients",
            Unit::Bytes,
            m.bytes_out.clone(),
        );
        r.register_with_unit(
            "container_start",
            "From asking for a container to the script being in it",
            Unit::Seconds,
            m.container_start.clone(),
        );
        r.register_with_unit(
            "first_output",
            "From accepting a connection to the script's first output byte",
            Unit::Seconds,
            m.first_output.clone(),
        );
        r.register_with_unit(
            "script_cpu",
            "CPU time (user + system) of each script that ended on its own, from its cgroup",
            Unit::Seconds,
            m.script_cpu.clone(),
        );
        r.register_with_unit(
            "script_peak_memory",
            "Peak memory of each script's container, from its cgroup",
            Unit::Bytes,
            m.script_memory.clone(),
        );
        r.register(
            "docker_up",
            "1 while at least one engine is in service",
            m.docker_up.clone(),
        );
        r.register(
            "capacity",
            "Configured bounds: max_sessions, warm, max_queue",
            m.capacity.clone(),
        );
        let build: Family<VersionLabels, Gauge> = Family::default();
        build
            .get_or_create(&VersionLabels {
                version: env!("CARGO_PKG_VERSION").to_string(),
            })
            .set(1);
        r.register(
            "build_info",
            "The running pyexecd's version (always 1)",
            build,
        );
        m
    }
}

pub struct Status {
    started: Instant,
    metrics: Metrics,
    bytes: Arc<ByteCounters>,
    // The counts and gauges the snapshot shares with /metrics are read back from the
    // metrics themselves; only what a metric family cannot list is kept here.
    clients: Vec<(String, usize)>,
    finished: BTreeMap<Outcome, u64>,
    start_latency: Samples,
    readiness: Readiness,
    /// The warm pool's configured size: the pool is warm once it holds that many.
    warm_target: usize,
}

/// Whether the daemon should get new sessions from a load balancer (`/readyz`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Readiness {
    /// Started (or the engine came back), the warm pool not yet full once.
    Warming,
    Ready,
    /// The engine does not answer.
    EngineDown,
}

/// Asks whether the daemon is ready for sessions (`/readyz`); `Err` says why not.
#[derive(Message)]
#[rtype(result = "Result<(), &'static str>")]
pub struct IsReady;

impl Status {
    pub fn new(bytes: Arc<ByteCounters>, capacity: Capacity) -> Self {
        let metrics = Metrics::new(&bytes);
        metrics.docker_up.set(1);
        for (limit, value) in [
            ("max_sessions", capacity.max_sessions),
            ("warm", capacity.warm),
            ("max_queue", capacity.max_queue),
        ] {
            metrics
                .capacity
                .get_or_create(&LimitLabels {
                    limit: limit.to_string(),
                })
                .set(value as i64);
        }
        Status {
            started: Instant::now(),
            metrics,
            bytes,
            clients: Vec::new(),
            finished: BTreeMap::new(),
            start_latency: Samples::default(),
            readiness: match capacity.warm {
                0 => Readiness::Ready,
                _ => Readiness::Warming,
            },
            warm_target: capacity.warm,
        }
    }

    pub fn snapshot(&self) -> Snapshot {
        let m = &self.metrics;
        Snapshot {
            uptime: self.started.elapsed(),
            accepted: m.accepted.get(),
            running: m.running.get() as usize,
            queued: m.queued.get() as usize,
            warm: m.warm.get() as usize,
            warm_hits: m.warm_hits.get(),
            warm_misses: m.warm_misses.get(),
            clients: self.clients.clone(),
            finished: self.finished.iter().map(|(k, v)| (k.label(), *v)).collect(),
            busy: self
                .finished
                .get(&Outcome::Error(ErrorCode::Busy))
                .copied()
                .unwrap_or(0),
            tls_failures: m.tls_failures.get(),
            bytes_in: self.bytes.bytes_in.get(),
            bytes_out: self.bytes.bytes_out.get(),
            start_p50: self.start_latency.percentile(50.0),
            start_p99: self.start_latency.percentile(99.0),
        }
    }
}

impl Actor for Status {
    type Context = Context<Self>;
}

impl Handler<SessionAccepted> for Status {
    type Result = ();
    fn handle(&mut self, SessionAccepted(protocol): SessionAccepted, _: &mut Context<Self>) {
        self.metrics.accepted.inc();
        self.metrics
            .by_protocol
            .get_or_create(&ProtocolLabels {
                protocol: protocol.label().to_string(),
            })
            .inc();
    }
}

impl Handler<SessionEnded> for Status {
    type Result = ();
    fn handle(&mut self, msg: SessionEnded, _: &mut Context<Self>) {
        *self.finished.entry(msg.0).or_default() += 1;
        self.metrics
            .sessions
            .get_or_create(&OutcomeLabels {
                outcome: msg.0.label(),
            })
            .inc();
        if msg.0 == Outcome::Error(ErrorCode::Busy) {
            self.metrics.busy.inc();
        }
    }
}

impl Handler<TlsFailed> for Status {
    type Result = ();
    fn handle(&mut self, _: TlsFailed, _: &mut Context<Self>) {
        self.metrics.tls_failures.inc();
    }
}

impl Handler<ConnectionRefused> for Status {
    type Result = ();
    fn handle(&mut self, _: ConnectionRefused, _: &mut Context<Self>) {
        self.metrics.connections_refused.inc();
    }
}

impl Handler<ContainerStarted> for Status {
    type Result = ();
    fn handle(&mut self, msg: ContainerStarted, _: &mut Context<Self>) {
        self.start_latency.push(msg.latency);
        self.metrics
            .container_start
            .observe(msg.latency.as_secs_f64());
        self.metrics.engines.started(&msg.engine, msg.latency);
    }
}

impl Handler<Gauges> for Status {
    type Result = ();
    fn handle(&mut self, msg: Gauges, _: &mut Context<Self>) {
        self.clients = msg.clients;
        self.metrics.running.set(msg.running as i64);
        self.metrics.queued.set(msg.queued as i64);
        self.metrics.warm.set(msg.warm as i64);
        // The pools of the engines in service: one engine down does not keep the daemon
        // from being ready while another serves.
        self.warm_target = msg.warm_target;
        if self.readiness == Readiness::Warming && msg.warm >= self.warm_target {
            self.readiness = Readiness::Ready;
        }
    }
}

impl Handler<EngineGauges> for Status {
    type Result = ();
    fn handle(&mut self, EngineGauges(figures): EngineGauges, _: &mut Context<Self>) {
        self.metrics.engines.update(figures);
    }
}

impl Handler<IsReady> for Status {
    type Result = Result<(), &'static str>;
    fn handle(&mut self, _: IsReady, _: &mut Context<Self>) -> Self::Result {
        match self.readiness {
            Readiness::Ready => Ok(()),
            Readiness::Warming => Err("the warm pool is still filling"),
            Readiness::EngineDown => Err("no engine is in service"),
        }
    }
}

impl Handler<PoolUse> for Status {
    type Result = ();
    fn handle(&mut self, msg: PoolUse, _: &mut Context<Self>) {
        if msg.hit {
            self.metrics.warm_hits.inc();
        } else {
            self.metrics.warm_misses.inc();
        }
    }
}

impl Handler<FirstOutput> for Status {
    type Result = ();
    fn handle(&mut self, msg: FirstOutput, _: &mut Context<Self>) {
        self.metrics.first_output.observe(msg.latency.as_secs_f64());
    }
}

impl Handler<ScriptUsage> for Status {
    type Result = ();
    fn handle(&mut self, ScriptUsage(usage): ScriptUsage, _: &mut Context<Self>) {
        if let Some(ms) = usage.cpu_ms {
            self.metrics.script_cpu.observe(ms as f64 / 1000.0);
        }
        if let Some(bytes) = usage.peak_memory_bytes {
            self.metrics.script_memory.observe(bytes as f64);
        }
    }
}

impl Handler<SignalsDropped> for Status {
    type Result = ();
    fn handle(&mut self, SignalsDropped(n): SignalsDropped, _: &mut Context<Self>) {
        self.metrics.signals_dropped.inc_by(n);
    }
}

impl Handler<DockerHealth> for Status {
    type Result = ();
    fn handle(&mut self, msg: DockerHealth, _: &mut Context<Self>) {
        self.metrics.docker_up.set(msg.up as i64);
        // Back up, the pool refills before the daemon takes sessions from a balancer.
        self.readiness = match (msg.up, self.warm_target) {
            (false, _) => Readiness::EngineDown,
            (true, 0) => Readiness::Ready,
            (true, _) => Readiness::Warming,
        };
    }
}

impl Handler<Encode> for Status {
    type Result = String;
    fn handle(&mut self, _: Encode, _: &mut Context<Self>) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.metrics.registry);
        text
    }
}

impl Handler<Dump> for Status {
    type Result = ();
    fn handle(&mut self, _: Dump, _: &mut Context<Self>) {
        tracing::info!(target: "pyexecd::status", "status: {}", self.snapshot());
        for line in self.metrics.engines.lines() {
            tracing::info!(target: "pyexecd::status", "status: {line}");
        }
    }
}

impl Handler<GetSnapshot> for Status {
    type Result = Snapshot;
    fn handle(&mut self, _: GetSnapshot, _: &mut Context<Self>) -> Snapshot {
        self.snapshot()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[actix_rt::test]
    async fn ready_once_the_pool_is_warm_and_not_while_the_engine_is_down() {
        let capacity = Capacity {
            max_sessions: 2,
            warm: 2,
            max_queue: 4,
        };
        let status = Status::new(Arc::new(ByteCounters::default()), capacity).start();
        let gauges = |warm| Gauges {
            running: 0,
            queued: 0,
            warm,
            warm_target: 2,
            clients: Vec::new(),
        };
        let ready = || status.send(IsReady);
        assert_eq!(
            ready().await.unwrap(),
            Err("the warm pool is still filling")
        );
        status.do_send(gauges(1));
        assert!(ready().await.unwrap().is_err());
        status.do_send(gauges(2));
        assert_eq!(ready().await.unwrap(), Ok(()));
        // Busy (no spare left) is still ready: the balancer's queue is ours too.
        status.do_send(gauges(0));
        assert_eq!(ready().await.unwrap(), Ok(()));
        status.do_send(DockerHealth { up: false });
        assert_eq!(ready().await.unwrap(), Err("no engine is in service"));
        status.do_send(DockerHealth { up: true });
        assert!(ready().await.unwrap().is_err(), "the pool refills first");
        status.do_send(gauges(2));
        assert_eq!(ready().await.unwrap(), Ok(()));
    }

    #[test]
    fn percentiles_use_nearest_rank() {
        let mut s = Samples::default();
        assert_eq!(s.percentile(50.0), None);
        for ms in 1..=100 {
            s.push(Duration::from_millis(ms));
        }
        assert_eq!(s.percentile(50.0), Some(Duration::from_millis(50)));
        assert_eq!(s.percentile(99.0), Some(Duration::from_millis(99)));
        for _ in 0..Samples::CAPACITY {
            s.push(Duration::from_millis(7));
        }
        assert_eq!(s.percentile(99.0), Some(Duration::from_millis(7)));
    }

    #[actix_rt::test]
    async fn counts_outcomes_and_busy() {
        let bytes = Arc::new(ByteCounters::default());
        let status = Status::new(bytes.clone(), Capacity::default()).start();
        status.do_send(SessionAccepted(Protocol::Binary));
        status.do_send(SessionEnded(Outcome::End(EndReason::Exited)));
        status.do_send(SessionEnded(Outcome::Error(ErrorCode::Busy)));
        status.do_send(TlsFailed);
        bytes.add_out(10);
        let snap = status.send(GetSnapshot).await.unwrap();
        assert_eq!(snap.accepted, 1);
        assert_eq!(snap.busy, 1);
        assert_eq!(snap.tls_failures, 1);
        assert_eq!(snap.bytes_out, 10);
        assert_eq!(snap.finished.get("exited"), Some(&1));
        assert!(snap.to_string().contains("busy=1"));
    }
}
