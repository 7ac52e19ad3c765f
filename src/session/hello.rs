//! A session's first steps: HELLO validated, WELCOME sent, a slot asked of the
//! Supervisor, and its verdict taken in.

use std::time::Instant;

use actix::prelude::*;
use bytes::BytesMut;
use tracing::debug;

use super::state::{Phase, Slot, Upload};
use super::Session;
use crate::config::format_size;
use crate::messages::{Admission, Admit, ContainerHandle, Kill, KillCause};
use crate::protocol::{
    grant, End, EndReason, ErrorCode, Frame, Hello, Limits, Queued, Welcome, PROTOCOL_VERSION,
    STDIN_WINDOW,
};
use crate::sandbox::check_args;
use crate::status::Outcome;

/// The optional features this server grants when a client asks (protocol §10.1).
pub(super) const FEATURES: &[&str] = &[
    crate::protocol::files::FEATURE,
    crate::protocol::INPUT_WANTED,
];

/// Whether `hello` asked for `feature` and this server grants it.
pub(super) fn granted(hello: &Hello, feature: &str) -> bool {
    FEATURES.contains(&feature) && hello.features.iter().any(|f| f == feature)
}

impl Session {
    pub(super) fn on_hello(&mut self, hello: Hello, ctx: &mut Context<Self>) {
        if let Err((code, why)) = self.validate(&hello) {
            return self.fail(code, why, ctx);
        }
        debug!(parent: &self.span, client = %hello.client, script_size = hello.script_size, args = hello.args.len(), "hello");
        self.upload = match hello.script_size {
            0 => Upload::Complete(Default::default()),
            size => Upload::Arriving {
                script: BytesMut::with_capacity(size.min(64 * 1024) as usize),
                size,
            },
        };
        let probe = hello.probe;
        self.files = super::files::start(&hello);
        self.hello = Some(hello);
        self.phase = Phase::Active;
        self.welcome(ctx);
        if probe {
            let end = End {
                reason: EndReason::Exited,
                exit_code: 0,
                signal: None,
                duration_ms: self.duration_ms(),
                message: "probe: no script was run".into(),
                usage: Default::default(),
            };
            return self.end_as(end, Outcome::Probe, ctx);
        }
        self.ask_admission(ctx);
        self.maybe_run(ctx);
    }

    /// Everything HELLO asks for is checked before anything is started.
    fn validate(&self, hello: &Hello) -> Result<(), (ErrorCode, String)> {
        if hello.version != PROTOCOL_VERSION {
            return Err((
                ErrorCode::Version,
                format!(
                    "unsupported protocol version {}; this server speaks {PROTOCOL_VERSION}",
                    hello.version
                ),
            ));
        }
        let max = self.cfg().max_script_size;
        if hello.script_size > max {
            return Err((
                ErrorCode::TooLarge,
                format!(
                    "script too large: {} bytes, the limit is {}",
                    hello.script_size,
                    format_size(max)
                ),
            ));
        }
        check_args(&hello.args).map_err(|e| (ErrorCode::TooLarge, e.to_string()))?;
        super::files::check_hello(hello, self.cfg())?;
        if hello.probe && hello.script_size != 0 {
            return Err((ErrorCode::Protocol, "a probe carries no script".into()));
        }
        self.image_index(hello)?;
        Ok(())
    }

    /// The image HELLO names, as an index into `Config::images`; no name is the default.
    fn image_index(&self, hello: &Hello) -> Result<usize, (ErrorCode, String)> {
        let images = &self.cfg().images;
        let Some(name) = hello.image.as_deref() else {
            return Ok(0);
        };
        images.iter().position(|i| i.name == name).ok_or_else(|| {
            let offered: Vec<&str> = images.iter().map(|i| i.name.as_str()).collect();
            // The name is the client's: shown escaped and cut, never as raw bytes.
            let shown: String = name.chars().take(64).collect();
            (
                ErrorCode::Image,
                format!(
                    "unknown image {shown:?}; this server offers: {}",
                    offered.join(", ")
                ),
            )
        })
    }

    /// WELCOME, with the limits that apply and the features granted (protocol §10.1);
    /// and the client's own shorter time limit.
    fn welcome(&mut self, ctx: &mut Context<Self>) {
        let limit = self.time_limit();
        if limit < self.cfg().session_timeout {
            // The client asked for less time than the Supervisor's limit: keep its own timer.
            let left = limit.saturating_sub(self.accepted_at.elapsed());
            ctx.run_later(left, |act, ctx| act.stop_script(KillCause::Timeout, ctx));
        }
        let asked = self.hello.as_ref().map_or(&[][..], |h| &h.features[..]);
        let features = grant(asked, FEATURES);
        let cfg = self.cfg();
        let files = features
            .iter()
            .any(|f| f == crate::protocol::files::FEATURE)
            .then(|| super::files::limits(cfg));
        self.send(Frame::Welcome(Welcome {
            version: PROTOCOL_VERSION,
            server: format!("pyexecd {}", env!("CARGO_PKG_VERSION")),
            session: self.id.to_string(),
            limits: Limits {
                script_size: cfg.max_script_size,
                timeout_ms: limit.as_millis() as u64,
                output_bytes: cfg.output_limit,
                stdin_window: STDIN_WINDOW,
                files,
            },
            features,
        }));
    }

    /// Asks the Supervisor for a slot. The reply may come after the session has stopped
    /// (then it is never read: the Supervisor takes the container back on Unregister).
    fn ask_admission(&mut self, ctx: &mut Context<Self>) {
        let image = match &self.hello {
            Some(hello) => self.image_index(hello).unwrap_or(0),
            None => 0,
        };
        let admit = self
            .deps
            .supervisor
            .admit
            .send(Admit { id: self.id, image });
        ctx.spawn(admit.into_actor(self).map(|res, act, ctx| match res {
            Ok(Admission::Granted(container)) => act.admitted(container, ctx),
            // `Admitted` may overtake this reply: then the session is no longer queued.
            Ok(Admission::Queued(_))
                if act.closing() || !matches!(act.slot, Slot::Waiting { .. }) => {}
            Ok(Admission::Queued(position)) => {
                act.slot = Slot::Waiting {
                    queued_at: Some(Instant::now()),
                };
                debug!(parent: &act.span, position, "queued");
                act.send(Frame::Queued(Queued { position }));
            }
            Ok(Admission::Busy { running, queued }) => act.fail(
                ErrorCode::Busy,
                format!(
                    "server busy: {running} scripts running and {queued} waiting; try again later"
                ),
                ctx,
            ),
            Ok(Admission::Limited(refusal)) => {
                let why = refusal.describe(&act.client);
                act.fail(ErrorCode::Limited, why, ctx)
            }
            Ok(Admission::Unavailable(why)) => act.fail(
                ErrorCode::Docker,
                format!("the Docker Engine is unreachable ({why}); try again later"),
                ctx,
            ),
            Ok(Admission::ShuttingDown) => act.stop_script(KillCause::Shutdown, ctx),
            Err(e) => act.fail(
                ErrorCode::Internal,
                format!("supervisor unavailable: {e}"),
                ctx,
            ),
        }));
    }

    pub(super) fn admitted(&mut self, container: ContainerHandle, ctx: &mut Context<Self>) {
        if self.closing() {
            // Ended while the verdict was on its way: give the slot straight back.
            container.kill.do_send(Kill(KillCause::ClientGone));
            return;
        }
        if !matches!(self.slot, Slot::Waiting { .. }) {
            // Admitted already: this is a container on another engine, replacing ours.
            return self.replaced(container, ctx);
        }
        let admitted_at = Instant::now();
        let queued_ms = match self.slot {
            Slot::Waiting { queued_at: Some(q) } => {
                admitted_at.saturating_duration_since(q).as_millis() as u64
            }
            _ => 0,
        };
        self.slot = Slot::Held {
            container,
            admitted_at,
            queued_ms,
        };
        if let Some(cause) = self.stop_cause.take() {
            return self.stop_script(cause, ctx);
        }
        self.maybe_run(ctx);
    }
}
