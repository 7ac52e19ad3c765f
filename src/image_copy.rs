//! Copying an image from one Docker Engine to another without a registry: the source's
//! `GET /images/{name}/get` tar stream piped straight into the target's `POST /images/load`.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::{Duration, Instant};

use bollard::query_parameters::ImportImageOptionsBuilder;
use bollard::{body_try_stream, Docker};
use futures::StreamExt;
use tracing::info;

use crate::docker::{is_not_found, is_unreachable};

/// No byte moved for this long while the tar is still flowing: the copy is stuck (an
/// engine that hangs without closing its connection would otherwise hold us forever).
pub const STALL: Duration = Duration::from_secs(60);
/// After the last byte, the target untars and registers the layers before it answers:
/// seconds for the 165 MB sandbox, longer for a big image on a slow disk.
pub const LOAD_WAIT: Duration = Duration::from_secs(600);
/// How often the byte count goes to the progress reporter and the stall check runs.
const TICK: Duration = Duration::from_millis(250);

/// One side of a copy: an engine's name (for messages) and its client.
#[derive(Clone, Copy)]
pub struct EngineRef<'a> {
    pub name: &'a str,
    pub docker: &'a Docker,
}

impl<'a> EngineRef<'a> {
    pub fn new(name: &'a str, docker: &'a Docker) -> Self {
        EngineRef { name, docker }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ImageCopyError {
    #[error("image {image} is not on engine {engine}, so it cannot be copied from there")]
    NotFound { engine: String, image: String },
    #[error("cannot inspect image {image} on engine {engine}: {source}")]
    Inspect {
        engine: String,
        image: String,
        source: bollard::errors::Error,
    },
    #[error("exporting image {image} from engine {engine} failed after {bytes} bytes: {source}")]
    Export {
        engine: String,
        image: String,
        bytes: u64,
        source: bollard::errors::Error,
    },
    #[error(
        "engine {engine} closed the connection while loading image {image} \
         ({bytes} bytes sent): {source}"
    )]
    TargetClosed {
        engine: String,
        image: String,
        bytes: u64,
        source: bollard::errors::Error,
    },
    #[error("engine {engine} could not load image {image}: {source}")]
    Import {
        engine: String,
        image: String,
        source: bollard::errors::Error,
    },
    #[error("copying image {image} from engine {from} to engine {to} stalled: {what}")]
    Stalled {
        from: String,
        to: String,
        image: String,
        what: String,
    },
    #[error("engine {engine} finished loading image {image} but does not have it")]
    Missing { engine: String, image: String },
    #[error(
        "image {image} on engine {to} is {got} after the load, but {expected} on engine {from}"
    )]
    IdMismatch {
        from: String,
        to: String,
        image: String,
        expected: String,
        got: String,
    },
}

/// What a finished copy moved, and how fast.
#[derive(Debug, Clone)]
pub struct CopyReport {
    pub image: String,
    /// The image ID, the same on both engines.
    pub id: String,
    /// Bytes of the tar stream.
    pub bytes: u64,
    /// From the start to the check of the target's ID.
    pub elapsed: Duration,
    /// From the start to the source's last byte; the rest of `elapsed` is the target
    /// unpacking and registering the layers.
    pub streamed: Duration,
}

impl CopyReport {
    /// Megabytes (10^6 bytes) per second.
    pub fn mb_per_sec(&self) -> f64 {
        self.bytes as f64 / 1e6 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// What `ensure_on` did.
#[derive(Debug, Clone)]
pub enum Ensured {
    /// The target already had the image, with the source's ID: nothing was sent.
    AlreadyThere {
        id: String,
    },
    Copied(CopyReport),
}

/// Told how a copy goes. `update` comes every few hundred milliseconds, not per chunk.
pub trait CopyProgress: Send {
    /// The copy starts; `estimate` is the source image's size, which the tar is close to.
    fn start(&mut self, image: &str, from: &str, to: &str, estimate: u64);
    /// `bytes` of the tar have been read from the source so far.
    fn update(&mut self, bytes: u64);
    /// The whole tar is sent; the target now unpacks and registers it, silently.
    fn sent(&mut self, _bytes: u64) {}
    /// The image is on the target and checked; not called when the copy fails.
    fn finish(&mut self, report: &CopyReport);
}

/// Plain log lines (the daemon's default: it has no terminal): one per tenth of the
/// estimate or per `every`, whichever comes first, and one at the end.
pub struct LogProgress {
    every: Duration,
    estimate: u64,
    image: String,
    last_tenth: u64,
    last_line: Instant,
}

impl Default for LogProgress {
    fn default() -> Self {
        LogProgress::every(Duration::from_secs(5))
    }
}

impl LogProgress {
    pub fn every(every: Duration) -> Self {
        LogProgress {
            every,
            estimate: 0,
            image: String::new(),
            last_tenth: 0,
            last_line: Instant::now(),
        }
    }
}

impl CopyProgress for LogProgress {
    fn start(&mut self, image: &str, from: &str, to: &str, estimate: u64) {
        self.estimate = estimate;
        self.image = image.to_string();
        self.last_line = Instant::now();
        info!(
            image,
            from,
            to,
            mb = estimate / 1_000_000,
            "copying the image between engines"
        );
    }

    fn update(&mut self, bytes: u64) {
        // An estimate of 0 (no size reported) would divide by zero: time lines only.
        let tenth = (bytes * 10).checked_div(self.estimate).unwrap_or(0);
        if tenth > self.last_tenth || self.last_line.elapsed() >= self.every {
            self.last_tenth = self.last_tenth.max(tenth);
            self.last_line = Instant::now();
            info!(
                image = %self.image,
                mb = bytes / 1_000_000,
                // The tar is a little larger than the image: never claim more than 100.
                percent = (bytes * 100).checked_div(self.estimate).unwrap_or(0).min(100),
                "copying the image"
            );
        }
    }

    fn sent(&mut self, bytes: u64) {
        // Else the log is silent for the load (seconds; a minute for a big image).
        info!(
            image = %self.image,
            mb = bytes / 1_000_000,
            "image sent; the target engine is loading it"
        );
    }

    fn finish(&mut self, r: &CopyReport) {
        info!(
            image = %r.image,
            id = %r.id,
            mb = r.bytes / 1_000_000,
            secs = format!("{:.1}", r.elapsed.as_secs_f64()),
            streamed_secs = format!("{:.1}", r.streamed.as_secs_f64()),
            mb_per_sec = format!("{:.1}", r.mb_per_sec()),
            "image copied"
        );
    }
}

/// A progress bar on stderr, for a person at a terminal.
pub struct BarProgress {
    bar: indicatif::ProgressBar,
}

impl Default for BarProgress {
    fn default() -> Self {
        BarProgress {
            bar: indicatif::ProgressBar::hidden(),
        }
    }
}

impl CopyProgress for BarProgress {
    fn start(&mut self, image: &str, from: &str, to: &str, estimate: u64) {
        let style = indicatif::ProgressStyle::with_template(
            "{msg} [{bar:30}] {bytes}/~{total_bytes} {bytes_per_sec} {elapsed}",
        )
        // The template is a constant: it only fails if someone breaks it here.
        .expect("a valid progress template")
        .progress_chars("=> ");
        self.bar = indicatif::ProgressBar::with_draw_target(
            Some(estimate),
            indicatif::ProgressDrawTarget::stderr(),
        )
        .with_style(style)
        .with_message(format!("{image} {from} -> {to}"));
    }

    fn update(&mut self, bytes: u64) {
        // The estimate is the image size; the tar runs a little over it.
        if bytes > self.bar.length().unwrap_or(0) {
            self.bar.set_length(bytes);
        }
        self.bar.set_position(bytes);
    }

    fn sent(&mut self, bytes: u64) {
        self.bar.set_length(bytes);
        self.bar.set_position(bytes);
        self.bar
            .set_message(format!("{} sent, loading", self.bar.message()));
    }

    fn finish(&mut self, r: &CopyReport) {
        self.bar.set_length(r.bytes);
        self.bar
            .finish_with_message(format!("{} copied, {:.1} MB/s", r.image, r.mb_per_sec()));
    }
}

/// A bar when stderr is a terminal (a person watches), log lines otherwise.
pub fn progress_for_stderr() -> Box<dyn CopyProgress> {
    if std::io::stderr().is_terminal() {
        Box::new(BarProgress::default())
    } else {
        Box::new(LogProgress::default())
    }
}

/// The ID and size of `image` on `engine`, or None when it is not there.
async fn inspect(
    engine: EngineRef<'_>,
    image: &str,
) -> Result<Option<(String, u64)>, ImageCopyError> {
    match engine.docker.inspect_image(image).await {
        Ok(info) => Ok(Some((
            info.id.unwrap_or_default(),
            info.size.unwrap_or(0).max(0) as u64,
        ))),
        Err(e) if is_not_found(&e) => Ok(None),
        Err(source) => Err(ImageCopyError::Inspect {
            engine: engine.name.to_string(),
            image: image.to_string(),
            source,
        }),
    }
}

/// Copies `image` to `to` unless it is already there with the source's ID.
pub async fn ensure_on(
    from: EngineRef<'_>,
    to: EngineRef<'_>,
    image: &str,
    progress: &mut dyn CopyProgress,
) -> Result<Ensured, ImageCopyError> {
    let (src_id, _) = inspect(from, image)
        .await?
        .ok_or_else(|| not_found(from, image))?;
    if let Some((id, _)) = inspect(to, image).await? {
        if id == src_id {
            return Ok(Ensured::AlreadyThere { id });
        }
    }
    copy(from, to, image, progress).await.map(Ensured::Copied)
}

fn not_found(engine: EngineRef<'_>, image: &str) -> ImageCopyError {
    ImageCopyError::NotFound {
        engine: engine.name.to_string(),
        image: image.to_string(),
    }
}

/// What the export stream, which the target's connection owns, tells the copy.
#[derive(Default)]
struct Flow {
    bytes: AtomicU64,
    /// The source sent its last byte.
    exported: AtomicBool,
    /// When, for the report.
    exported_at: Mutex<Option<Instant>>,
    /// Why the source's stream broke, kept here because the target only sees its body
    /// end with an error and would otherwise be blamed.
    export_error: Mutex<Option<bollard::errors::Error>>,
}

/// Streams `image` from `from` to `to`, then checks that the target has it under the
/// source's ID. Memory stays bounded: the export stream is the load request's body, so a
/// chunk is read from the source only when the target's connection takes the previous
/// one. Dropping the future drops both requests: hyper's connection task sees the
/// response's receiver gone, closes the target's connection and drops the body, which
/// drops the export and closes the source's. Nothing is left running, and the target's
/// load, cut short, tags nothing (see below; the integration test checks both).
pub async fn copy(
    from: EngineRef<'_>,
    to: EngineRef<'_>,
    image: &str,
    progress: &mut dyn CopyProgress,
) -> Result<CopyReport, ImageCopyError> {
    let (src_id, estimate) = inspect(from, image)
        .await?
        .ok_or_else(|| not_found(from, image))?;
    progress.start(image, from.name, to.name, estimate);
    let started = Instant::now();
    let flow = Arc::new(Flow::default());

    let counted = {
        let flow = flow.clone();
        from.docker
            .export_image(image)
            .map(move |chunk| match chunk {
                Ok(bytes) => {
                    flow.bytes.fetch_add(bytes.len() as u64, Ordering::Relaxed);
                    Ok(bytes)
                }
                Err(e) => {
                    let text = e.to_string();
                    *lock(&flow.export_error) = Some(e);
                    // An error ends the body: hyper aborts the request instead of sending a
                    // truncated tar as if it were whole.
                    Err(std::io::Error::other(text))
                }
            })
    };
    let end = {
        let flow = flow.clone();
        futures::stream::poll_fn(move |_| {
            *lock(&flow.exported_at) = Some(Instant::now());
            flow.exported.store(true, Ordering::Relaxed);
            Poll::Ready(None)
        })
    };
    let body = body_try_stream(counted.chain(end));

    // bollard's timeout (120 s by default) runs until the response head, which the load
    // sends only after the whole tar is in: a big image on a slow link would be cut off
    // mid-way. Stalls are caught below instead, by watching the bytes move; this longer
    // timeout is only a backstop.
    let target = to
        .docker
        .clone()
        .with_timeout(LOAD_WAIT + Duration::from_secs(3600));
    let opts = ImportImageOptionsBuilder::default().quiet(true).build();
    // Docker's load tags only whole images (read in moby's `image/tarexport/load.go`,
    // 20.10 to 23): it untars the whole request body into a temporary directory first,
    // then per image registers the layers (each checked against its diffID), creates the
    // config, and sets the tag last. A body cut short (our error, a drop) arrives as a
    // chunked body without its last chunk, so the untar fails and nothing is touched;
    // even a tar cut on a file boundary lacks `manifest.json` and `repositories`, which
    // `save` writes last, and so sets no tag. The ID check at the end covers the rest
    // (say, an old image under the same tag on the target).
    let mut load = target.import_image(opts, body, None);

    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let (mut seen, mut moved_at) = (0u64, Instant::now());
    let mut exported_at: Option<Instant> = None;
    let stalled = |what: String| ImageCopyError::Stalled {
        from: from.name.to_string(),
        to: to.name.to_string(),
        image: image.to_string(),
        what,
    };
    loop {
        tokio::select! {
            step = load.next() => match step {
                Some(Ok(_)) => {}
                None => break,
                Some(Err(e)) => return Err(load_error(&flow, from, to, image, e)),
            },
            _ = tick.tick() => {
                let bytes = flow.bytes.load(Ordering::Relaxed);
                progress.update(bytes);
                if bytes != seen {
                    (seen, moved_at) = (bytes, Instant::now());
                }
                if flow.exported.load(Ordering::Relaxed) {
                    let at = *exported_at.get_or_insert_with(|| {
                        progress.sent(bytes);
                        Instant::now()
                    });
                    if at.elapsed() > LOAD_WAIT {
                        return Err(stalled(format!(
                            "engine {} did not finish loading {} s after the last byte",
                            to.name,
                            LOAD_WAIT.as_secs()
                        )));
                    }
                } else if moved_at.elapsed() > STALL {
                    return Err(stalled(format!(
                        "no byte moved for {} s after {bytes} bytes",
                        STALL.as_secs()
                    )));
                }
            }
        }
    }
    let bytes = flow.bytes.load(Ordering::Relaxed);
    progress.update(bytes);
    let elapsed = started.elapsed();
    let streamed = lock(&flow.exported_at).map_or(elapsed, |at| at - started);

    match inspect(to, image).await? {
        None => Err(ImageCopyError::Missing {
            engine: to.name.to_string(),
            image: image.to_string(),
        }),
        Some((got, _)) if got != src_id => Err(ImageCopyError::IdMismatch {
            from: from.name.to_string(),
            to: to.name.to_string(),
            image: image.to_string(),
            expected: src_id,
            got,
        }),
        Some((id, _)) => {
            let report = CopyReport {
                image: image.to_string(),
                id,
                bytes,
                elapsed,
                streamed,
            };
            progress.finish(&report);
            Ok(report)
        }
    }
}

/// A panic while holding these locks leaves plain data behind: use it.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Names the side that failed: a broken export shows up on the target's request too, so
/// the export's own error, when there is one, comes first.
fn load_error(
    flow: &Flow,
    from: EngineRef<'_>,
    to: EngineRef<'_>,
    image: &str,
    e: bollard::errors::Error,
) -> ImageCopyError {
    let bytes = flow.bytes.load(Ordering::Relaxed);
    let export_error = lock(&flow.export_error).take();
    if let Some(source) = export_error {
        return ImageCopyError::Export {
            engine: from.name.to_string(),
            image: image.to_string(),
            bytes,
            source,
        };
    }
    if is_unreachable(&e) {
        ImageCopyError::TargetClosed {
            engine: to.name.to_string(),
            image: image.to_string(),
            bytes,
            source: e,
        }
    } else {
        ImageCopyError::Import {
            engine: to.name.to_string(),
            image: image.to_string(),
            source: e,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_are_megabytes_per_second() {
        let r = CopyReport {
            image: "i".into(),
            id: "sha256:x".into(),
            bytes: 165_000_000,
            elapsed: Duration::from_secs(10),
            streamed: Duration::from_secs(3),
        };
        assert!((r.mb_per_sec() - 16.5).abs() < 1e-9);
    }

    #[test]
    fn the_bar_template_parses_and_the_bar_grows_past_the_estimate() {
        let mut p = BarProgress::default();
        p.start("i", "a", "b", 100);
        p.update(150);
        assert_eq!(p.bar.length(), Some(150));
        p.sent(160);
        assert_eq!(p.bar.position(), 160);
        p.finish(&CopyReport {
            image: "i".into(),
            id: "sha256:x".into(),
            bytes: 160,
            elapsed: Duration::from_millis(10),
            streamed: Duration::from_millis(5),
        });
        assert!(p.bar.is_finished());
    }

    #[test]
    fn log_progress_survives_an_unknown_size() {
        let mut p = LogProgress::default();
        p.start("i", "a", "b", 0);
        p.update(5);
        p.update(10);
        p.sent(10);
    }
}
