//! Per-engine figures: the `engine="NAME"` series of /metrics and the SIGUSR1 line of
//! each engine, fed by the Supervisor's `EngineGauges` and each session's start.

use std::collections::BTreeMap;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::{Family, MetricConstructor};
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};

/// One engine as the Supervisor sees it now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineFigures {
    pub name: String,
    pub up: bool,
    /// Containers serving a session.
    pub running: usize,
    /// Warm containers ready for a script.
    pub warm: usize,
    /// For the dump: `up`, `joining` or `down (why)`.
    pub state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EngineLabels {
    pub engine: String,
}

/// 1 ms to ~16 s, as the daemon-wide container start histogram.
#[derive(Clone)]
pub struct StartBuckets;

impl MetricConstructor<Histogram> for StartBuckets {
    fn new_metric(&self) -> Histogram {
        Histogram::new(exponential_buckets(0.001, 2.0, 15))
    }
}

pub struct EngineMetrics {
    up: Family<EngineLabels, Gauge>,
    running: Family<EngineLabels, Gauge>,
    warm: Family<EngineLabels, Gauge>,
    started: Family<EngineLabels, Counter>,
    start: Family<EngineLabels, Histogram, StartBuckets>,
    /// The last figures, for the dump, by name.
    last: BTreeMap<String, EngineFigures>,
}

impl EngineMetrics {
    pub fn new(registry: &mut Registry) -> Self {
        let m = EngineMetrics {
            up: Family::default(),
            running: Family::default(),
            warm: Family::default(),
            started: Family::default(),
            start: Family::new_with_constructor(StartBuckets),
            last: BTreeMap::new(),
        };
        registry.register(
            "engine_up",
            "1 while the engine is in service (answers, has the image, holds the lease)",
            m.up.clone(),
        );
        registry.register(
            "engine_sessions_running",
            "Sessions holding a container on the engine",
            m.running.clone(),
        );
        registry.register(
            "engine_warm_pool_size",
            "Warm containers ready for a script on the engine",
            m.warm.clone(),
        );
        registry.register(
            "engine_sessions_started",
            "Scripts started on the engine",
            m.started.clone(),
        );
        registry.register_with_unit(
            "engine_container_start",
            "From asking the engine for a container to the script being in it",
            Unit::Seconds,
            m.start.clone(),
        );
        m
    }

    fn labels(name: &str) -> EngineLabels {
        EngineLabels {
            engine: name.to_string(),
        }
    }

    pub fn update(&mut self, figures: Vec<EngineFigures>) {
        for f in figures {
            let labels = Self::labels(&f.name);
            self.up.get_or_create(&labels).set(f.up as i64);
            self.running.get_or_create(&labels).set(f.running as i64);
            self.warm.get_or_create(&labels).set(f.warm as i64);
            self.last.insert(f.name.clone(), f);
        }
    }

    pub fn started(&mut self, engine: &str, latency: Duration) {
        let labels = Self::labels(engine);
        self.started.get_or_create(&labels).inc();
        self.start
            .get_or_create(&labels)
            .observe(latency.as_secs_f64());
    }

    /// One line per engine, for the SIGUSR1 dump.
    pub fn lines(&self) -> Vec<String> {
        self.last
            .values()
            .map(|f| {
                let labels = Self::labels(&f.name);
                format!(
                    "engine={} state={} running={} warm={} started={}",
                    f.name,
                    f.state,
                    f.running,
                    f.warm,
                    self.started.get_or_create(&labels).get()
                )
            })
            .collect()
    }
}
