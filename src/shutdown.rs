//! The daemon's signals as events: SIGTERM and SIGINT ask for a drain, SIGUSR1 for a status
//! dump, SIGHUP for reloading the TLS certificates.
//!
//! Handlers are registered once, early, inside the runtime: from then on these signals
//! no longer kill the process, and several deliveries may merge into one event.

use std::io;

use tokio::signal::unix::{signal, Signal, SignalKind};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignalEvent {
    /// SIGTERM or SIGINT.
    Terminate(&'static str),
    /// SIGUSR1.
    Dump,
    /// SIGHUP.
    Reload,
}

pub struct Signals {
    term: Signal,
    int: Signal,
    usr1: Signal,
    hup: Signal,
}

impl Signals {
    pub fn new() -> io::Result<Self> {
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            usr1: signal(SignalKind::user_defined1())?,
            hup: signal(SignalKind::hangup())?,
        })
    }

    pub async fn next(&mut self) -> SignalEvent {
        tokio::select! {
            _ = self.term.recv() => SignalEvent::Terminate("SIGTERM"),
            _ = self.int.recv() => SignalEvent::Terminate("SIGINT"),
            _ = self.usr1.recv() => SignalEvent::Dump,
            _ = self.hup.recv() => SignalEvent::Reload,
        }
    }

    /// Waits for SIGTERM or SIGINT, ignoring the others.
    pub async fn terminated(&mut self) -> &'static str {
        loop {
            if let SignalEvent::Terminate(name) = self.next().await {
                return name;
            }
        }
    }
}
