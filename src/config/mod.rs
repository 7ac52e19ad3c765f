//! The daemon's configuration: flags, `PYEXECD_*` environment variables, a TOML file
//! (`layers`), resolved into a `Config`.
//!
//! Every flag can also come from an environment variable named `PYEXECD_` plus the flag
//! in upper case with `-` turned into `_` (`--max-sessions` is `PYEXECD_MAX_SESSIONS`),
//! and from a key of the config file named like the flag with `_` (`max_sessions = 4`).
//! Precedence: flags, then environment, then the file, then built-in defaults.
//! Durations accept a plain number of seconds or a suffix (`500ms`, `90s`, `2m`, `1h`);
//! sizes accept bytes or a binary suffix (`64k`, `256m`, `1g`, also `MiB` style).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

/// How durations and sizes are written and read, shared with the client (`pyexec
/// --timeout`, `--version`).
pub use pyexec_client::units::{format_duration, format_size, parse_duration, parse_size};

pub mod engines;
pub mod images;
pub mod layers;

use engines::{EngineArgs, EngineSpec, EngineTables};
use images::{ImageArgs, ImageConfig, ImageTables};

/// The sandbox image `build-image` makes and `pyexecd` uses unless told otherwise. The
/// suffix is the recipe's version: a changed recipe gets a new tag, so an old image is
/// never mistaken for a current one.
pub const DEFAULT_IMAGE: &str = "pyexec/sandbox:bookworm-1";
pub const DEFAULT_CERT_DIR: &str = "certs";
pub const DEFAULT_LISTEN: &str = "0.0.0.0:12344";
/// The smallest non-zero `--tcp-memory`: below it, loopback connections of ordinary
/// scripts (a local test server, a multiprocessing manager over TCP) would stall.
pub const MIN_TCP_MEMORY: u64 = 1 << 20;
/// Read when it exists and no `--config` is given.
pub const DEFAULT_CONFIG: &str = "/etc/pyexec/pyexecd.toml";

#[derive(Debug, Parser)]
#[command(
    name = "pyexecd",
    version,
    about = "Runs Python scripts sent over TLS 1.3 in fresh Docker containers, streaming their I/O live",
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub serve: ServeArgs,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve (the default when no subcommand is given).
    Serve(Box<ServeArgs>),
    /// Write a CA and a server certificate signed by it.
    GenCerts(GenCertsArgs),
    /// Build a sandbox image from Debian packages, without any registry (the default
    /// image, or one with more packages: --packages, --pip, --tag).
    BuildImage(BuildImageArgs),
    /// Validate the configuration and print every value with where it came from.
    CheckConfig(Box<ServeArgs>),
}

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// TOML config file; its keys are the flags' names with `_` (`max_sessions = 4`).
    /// Default /etc/pyexec/pyexecd.toml, when it exists.
    #[arg(long, env = "PYEXECD_CONFIG")]
    pub config: Option<PathBuf>,
    /// Log format: human-readable text, or one JSON object per line for collectors.
    #[arg(long, env = "PYEXECD_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Address to listen on.
    #[arg(long, env = "PYEXECD_LISTEN", default_value = DEFAULT_LISTEN)]
    pub listen: SocketAddr,
    /// Serve Prometheus metrics at http://ADDR/metrics (plain HTTP: bind it to a private
    /// address). Off unless given.
    #[arg(long, env = "PYEXECD_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
    /// Server certificate chain (PEM). Default certs/server.pem, generated when absent.
    #[arg(long, env = "PYEXECD_CERT")]
    pub cert: Option<PathBuf>,
    /// Server private key (PEM). Default certs/server.key, generated when absent.
    #[arg(long, env = "PYEXECD_KEY")]
    pub key: Option<PathBuf>,
    /// CA certificate (PEM) for mutual TLS: clients must then present a certificate signed
    /// by it (`pyexecd gen-certs --client NAME` issues one); its subject is the client's
    /// identity in logs, limits and status.
    #[arg(long, env = "PYEXECD_CLIENT_CA")]
    pub client_ca: Option<PathBuf>,
    /// Bearer tokens for the playground's WebSocket (`/ws`), one `NAME TOKEN` a line: a
    /// browser must then present one, and NAME is its identity for per-client limits.
    /// Off unless given (see docs/protocol.md §13).
    #[arg(long, env = "PYEXECD_TOKENS")]
    pub tokens: Option<PathBuf>,
    /// Sandbox image. The default is built on first use; others are pulled if absent.
    #[arg(long, env = "PYEXECD_IMAGE", default_value = DEFAULT_IMAGE)]
    pub image: String,
    /// Another image sessions may ask for by name (`pyexec --image NAME`): NAME=TAG,
    /// repeatable. Put on every engine at start (copied, never pulled when present).
    #[arg(
        long = "extra-image",
        env = "PYEXECD_EXTRA_IMAGE",
        value_name = "NAME=TAG",
        value_delimiter = ','
    )]
    pub extra_images: Vec<String>,
    /// Warm spares of one image, NAME=N (repeatable; `default` is --image's, as --warm).
    /// Default: 1 for an extra image (0 with --warm 0).
    #[arg(
        long = "image-warm",
        env = "PYEXECD_IMAGE_WARM",
        value_name = "NAME=N",
        value_delimiter = ','
    )]
    pub image_warm: Vec<String>,
    /// Modules a warm container of an image imports before its script arrives, so that
    /// the script's own import costs nothing: [NAME=]MODULE,MODULE (repeatable, one per
    /// image; no NAME is the default image). Only with --bootstrap inprocess.
    #[arg(long, env = "PYEXECD_PRELOAD", value_name = "[NAME=]MODULES")]
    pub preload: Vec<String>,
    /// Scripts running at once; further sessions queue.
    #[arg(long, env = "PYEXECD_MAX_SESSIONS", default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub max_sessions: u32,
    /// Containers kept started and waiting for a script, so that a session starts in
    /// milliseconds. They count toward --max-sessions. Default: --max-sessions (every free
    /// slot is warm); 0 turns the pool off.
    #[arg(long, env = "PYEXECD_WARM")]
    pub warm: Option<u32>,
    /// How the bootstrap runs the script: `inprocess` in its already started interpreter
    /// (fastest), or `exec` in a fresh one.
    #[arg(long, env = "PYEXECD_BOOTSTRAP", value_enum, default_value_t = BootstrapMode::Inprocess)]
    pub bootstrap: BootstrapMode,
    /// Sessions (running or queued) one client may have at once: per certificate subject
    /// with --client-ca, per IP address without. 0: no limit.
    #[arg(long, env = "PYEXECD_MAX_SESSIONS_PER_CLIENT", default_value_t = 0)]
    pub max_sessions_per_client: u32,
    /// New sessions one client may start per minute (same notion of client). 0: no limit.
    #[arg(long, env = "PYEXECD_RATE", default_value_t = 0)]
    pub rate: u32,
    /// Sessions waiting for a slot; past this a client is refused as busy.
    #[arg(long, env = "PYEXECD_MAX_QUEUE", default_value_t = 32)]
    pub max_queue: u32,
    /// Longest a session may last, counted from accept.
    #[arg(long, env = "PYEXECD_SESSION_TIMEOUT", default_value = "60", value_parser = parse_duration)]
    pub session_timeout: Duration,
    /// On SIGTERM/SIGINT, how long running sessions may go on before they are ended.
    #[arg(long, env = "PYEXECD_SHUTDOWN_GRACE", default_value = "10", value_parser = parse_duration)]
    pub shutdown_grace: Duration,
    /// Longest a TLS handshake may take.
    #[arg(long, env = "PYEXECD_HANDSHAKE_TIMEOUT", default_value = "10", value_parser = parse_duration)]
    pub handshake_timeout: Duration,
    /// Longest a client may take, after the handshake, to send HELLO and its whole script.
    #[arg(long, env = "PYEXECD_UPLOAD_TIMEOUT", default_value = "10", value_parser = parse_duration)]
    pub upload_timeout: Duration,
    /// Largest script accepted.
    #[arg(long, env = "PYEXECD_MAX_SCRIPT_SIZE", default_value = "1m", value_parser = parse_size)]
    pub max_script_size: u64,
    /// Largest total of files a client may send with its script (feature `files`).
    #[arg(long, env = "PYEXECD_MAX_FILES_SIZE", default_value = "32m", value_parser = parse_size)]
    pub max_files_size: u64,
    /// Most files a client may send with its script.
    #[arg(long, env = "PYEXECD_MAX_FILES", default_value_t = 1000)]
    pub max_files: u32,
    /// Largest total of result files (`pyexec --get`) sent back after the script.
    #[arg(long, env = "PYEXECD_MAX_GET_SIZE", default_value = "64m", value_parser = parse_size)]
    pub max_get_size: u64,
    /// Connections open at once (handshaking, queued or running); more are closed at once.
    #[arg(long, env = "PYEXECD_MAX_CONNECTIONS", default_value_t = 256)]
    pub max_connections: u32,
    /// Connections open at once from one IP address (before any TLS work), so that one host
    /// cannot take every place. 0: no limit.
    #[arg(long, env = "PYEXECD_MAX_CONNECTIONS_PER_IP", default_value_t = 64)]
    pub max_connections_per_ip: u32,
    /// Every connection starts with a PROXY protocol v2 header from a TCP load balancer,
    /// whose client address then counts as the peer's. Trusts whoever connects: only with a
    /// listener that the balancer alone can reach.
    #[arg(long, env = "PYEXECD_PROXY_PROTOCOL")]
    pub proxy_protocol: bool,
    /// Bytes of stdout plus stderr a session may produce before the script is stopped.
    #[arg(long, env = "PYEXECD_OUTPUT_LIMIT", default_value = "1g", value_parser = parse_size)]
    pub output_limit: u64,
    /// Memory limit per container (no swap on top).
    #[arg(long, env = "PYEXECD_MEMORY", default_value = "256m", value_parser = parse_size)]
    pub memory: u64,
    /// Kernel TCP socket buffer memory per container. On cgroup v1 it is not part of
    /// --memory, so pyexecd writes it into the container's memory cgroup (a container where
    /// that fails runs no script); on cgroup v2, --memory already bounds it. 0: no limit.
    #[arg(long, env = "PYEXECD_TCP_MEMORY", default_value = "16m", value_parser = parse_size)]
    pub tcp_memory: u64,
    /// Processes and threads per container.
    #[arg(long, env = "PYEXECD_PIDS_LIMIT", default_value_t = 64)]
    pub pids_limit: i64,
    /// CPUs per container.
    #[arg(long, env = "PYEXECD_CPUS", default_value_t = 1.0)]
    pub cpus: f64,
    /// Size of the writable tmpfs at /tmp (the script lives there too).
    #[arg(long, env = "PYEXECD_TMP_SIZE", default_value = "64m", value_parser = parse_size)]
    pub tmp_size: u64,
    /// User the script runs as inside the container.
    #[arg(long, env = "PYEXECD_USER", default_value = "65534:65534")]
    pub user: String,
    /// Give containers Docker's default network instead of none.
    #[arg(long, env = "PYEXECD_NETWORK")]
    pub network: bool,
    /// Make the container's root filesystem read-only (`/tmp` stays writable).
    #[arg(long, env = "PYEXECD_READ_ONLY", default_value_t = true, action = clap::ArgAction::Set)]
    pub read_only: bool,
    /// Linux capability to give back to sandbox containers (all are dropped; repeatable,
    /// e.g. `NET_BIND_SERVICE`). Each one widens what a script can do.
    #[arg(
        long = "cap-add",
        env = "PYEXECD_CAP_ADD",
        value_name = "CAP",
        value_delimiter = ','
    )]
    pub cap_add: Vec<String>,
    /// Forbid gaining privileges through setuid binaries or file capabilities.
    #[arg(long, env = "PYEXECD_NO_NEW_PRIVILEGES", default_value_t = true, action = clap::ArgAction::Set)]
    pub no_new_privileges: bool,
    /// Run an init process (docker-init) as PID 1 that forwards signals and reaps zombies.
    #[arg(long, env = "PYEXECD_INIT", default_value_t = true, action = clap::ArgAction::Set)]
    pub init: bool,
    /// Docker log driver for sandbox containers. `none` (the default) keeps output off the
    /// disk: it is streamed to the client, never stored.
    #[arg(long, env = "PYEXECD_LOG_DRIVER", default_value = "none")]
    pub log_driver: String,
    /// Docker runtime for sandbox containers, e.g. `runsc` for gVisor.
    #[arg(long, env = "PYEXECD_RUNTIME")]
    pub runtime: Option<String>,
    /// Name that labels this daemon's containers; leftovers with the same name are
    /// removed at start-up. Give each daemon sharing a Docker Engine its own name.
    #[arg(long, env = "PYEXECD_INSTANCE", default_value = "pyexecd")]
    pub instance: String,
    /// Docker Engine to run sandboxes on (repeatable): `unix:///PATH` or `tcp://HOST:PORT`
    /// (mutual TLS, see --engine-cert-path). Default: as the docker CLI (DOCKER_HOST, else
    /// the local socket). `[[engine]]` tables in the config file add per-engine settings.
    #[arg(
        long = "engine",
        env = "PYEXECD_ENGINE",
        value_name = "URL",
        value_delimiter = ','
    )]
    pub engines: Vec<String>,
    /// Directory with the client certificate for tcp engines, in Docker's layout: ca.pem
    /// (the engine's CA), cert.pem and key.pem (as DOCKER_CERT_PATH).
    #[arg(long, env = "PYEXECD_ENGINE_CERT_PATH", value_name = "DIR")]
    pub engine_cert_path: Option<PathBuf>,
    /// The config file's `[[engine]]` tables (not a flag).
    #[arg(skip)]
    pub engine_tables: EngineTables,
    /// The config file's `[[extra_image]]` tables (not a flag).
    #[arg(skip)]
    pub image_tables: ImageTables,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// See `src/bootstrap.py`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BootstrapMode {
    Inprocess,
    Exec,
}

#[derive(Debug, Clone, Args)]
pub struct GenCertsArgs {
    /// Directory to write ca.pem, ca.key, server.pem and server.key into.
    #[arg(long, default_value = DEFAULT_CERT_DIR)]
    pub dir: PathBuf,
    /// Extra DNS name or IP address for the server certificate (repeatable).
    #[arg(long = "host")]
    pub hosts: Vec<String>,
    /// Overwrite existing files.
    #[arg(long)]
    pub force: bool,
    /// Renew the server certificate (and key) with the CA already in --dir, which stays:
    /// clients need nothing new. Written aside and renamed; send pyexecd SIGHUP after.
    #[arg(long, conflicts_with = "force")]
    pub keep_ca: bool,
    /// Issue a client certificate (subject CN=NAME) for mutual TLS, signed by the CA in
    /// --dir (which is created first if absent); repeatable. Written to
    /// DIR/client-NAME.pem and DIR/client-NAME.key.
    #[arg(long = "client", value_name = "NAME")]
    pub clients: Vec<String>,
}

#[derive(Debug, Clone, Args)]
pub struct BuildImageArgs {
    /// Tag of the image to build. Nothing is done when it exists already (a changed
    /// recipe needs a new tag).
    #[arg(long, default_value = DEFAULT_IMAGE)]
    pub tag: String,
    /// Debian suite to build from.
    #[arg(long, default_value = "bookworm")]
    pub suite: String,
    /// More Debian packages, e.g. python3-numpy,python3-pandas,python3-matplotlib
    /// (repeatable or comma-separated). Needs a --tag of its own.
    #[arg(long, value_name = "PKG,PKG", value_delimiter = ',')]
    pub packages: Vec<String>,
    /// A pip requirements file, installed from the Python package index at build time
    /// (sessions still have no network). Needs a --tag of its own.
    #[arg(long, value_name = "FILE")]
    pub pip: Option<PathBuf>,
}

/// The daemon's effective settings, resolved from `ServeArgs`.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub metrics_listen: Option<SocketAddr>,
    pub cert: PathBuf,
    pub key: PathBuf,
    /// True when cert and key are the default paths, which may be generated.
    pub default_certs: bool,
    pub client_ca: Option<PathBuf>,
    /// The playground's bearer tokens file, read at start-up (and checked by check-config).
    pub tokens: Option<PathBuf>,
    pub max_sessions_per_client: usize,
    pub rate: usize,
    pub max_sessions: usize,
    pub warm: usize,
    pub max_queue: usize,
    pub session_timeout: Duration,
    pub shutdown_grace: Duration,
    pub handshake_timeout: Duration,
    pub upload_timeout: Duration,
    pub max_script_size: u64,
    /// Feature `files`: total bytes and count in, total bytes out.
    pub max_files_size: u64,
    pub max_files: u32,
    pub max_get_size: u64,
    pub max_connections: usize,
    pub max_connections_per_ip: usize,
    pub proxy_protocol: bool,
    pub output_limit: u64,
    pub sandbox: SandboxConfig,
    pub instance: String,
    /// The engines to run sandboxes on, at least one.
    pub engines: Vec<EngineSpec>,
    /// The images served, `--image` first (named `images::DEFAULT_NAME`); its `warm` is
    /// `warm` above.
    pub images: Vec<ImageConfig>,
}

/// Limits and isolation applied to every sandbox container.
#[derive(Debug, Clone)]
pub struct SandboxConfig {
    pub image: String,
    pub memory: u64,
    /// Bytes of TCP socket buffers per container; 0: no limit (see `tcp_memory`).
    pub tcp_memory: u64,
    pub pids_limit: i64,
    pub cpus: f64,
    pub tmp_size: u64,
    pub user: String,
    pub network: bool,
    pub read_only: bool,
    pub runtime: Option<String>,
    pub bootstrap: BootstrapMode,
    pub cap_add: Vec<String>,
    pub no_new_privileges: bool,
    pub init: bool,
    pub log_driver: String,
}

/// A value given on the command line or in the environment that cannot work.
#[derive(Debug, thiserror::Error)]
pub struct ConfigError {
    pub flag: &'static str,
    pub reason: String,
    /// Where the value was set when that is not the flag itself (an `[[engine]]` table).
    pub at: Option<String>,
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.at {
            Some(at) => write!(f, "{at}: {}", self.reason),
            None => write!(f, "invalid --{}: {}", self.flag, self.reason),
        }
    }
}

impl Config {
    /// The directory where serving will generate a CA and a server certificate: set when
    /// both paths are the defaults and neither file exists yet (explicit paths that do not
    /// exist are an error instead).
    pub fn certs_to_generate(&self) -> Option<&Path> {
        (self.default_certs && !self.cert.exists() && !self.key.exists())
            .then(|| self.cert.parent().unwrap_or(Path::new(".")))
    }

    /// The spares of every image together, within the slots: what the pools hold when
    /// full (`/metrics`' warm capacity).
    pub fn warm_total(&self) -> usize {
        self.images
            .iter()
            .map(|i| i.warm)
            .sum::<usize>()
            .min(self.max_sessions)
    }
}

impl ServeArgs {
    pub fn resolve(self) -> Result<Config, ConfigError> {
        let err = |flag, reason: &str| ConfigError {
            flag,
            reason: reason.to_string(),
            at: None,
        };
        if self.session_timeout.is_zero() {
            return Err(err("session-timeout", "must be more than zero"));
        }
        if !(self.cpus > 0.0 && self.cpus <= 1024.0) {
            return Err(err("cpus", "must be between 0 and 1024"));
        }
        if self.memory < 16 << 20 {
            return Err(err(
                "memory",
                "must be at least 16m (Python needs ~10 MiB to start)",
            ));
        }
        if self.tcp_memory != 0 && self.tcp_memory < MIN_TCP_MEMORY {
            return Err(err(
                "tcp-memory",
                "must be at least 1m (one loopback connection's buffers), or 0 for no limit",
            ));
        }
        if self.pids_limit < 4 {
            return Err(err("pids-limit", "must be at least 4"));
        }
        // The script and every file sent with it land in the tmpfs before anything runs:
        // a full tmpfs would fail the upload half-way, after the bounds had said yes.
        if self.tmp_size < self.max_script_size.saturating_add(self.max_files_size) {
            return Err(err(
                "tmp-size",
                "must hold at least --max-script-size plus --max-files-size",
            ));
        }
        if self.max_script_size > u32::MAX as u64 {
            return Err(err("max-script-size", "must be below 4 GiB"));
        }
        if self.instance.is_empty()
            || !self
                .instance
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            return Err(err(
                "instance",
                "use letters, digits, '-', '_' and '.' only",
            ));
        }
        // `--image-warm default=N` is `--warm N` by another name.
        let default_warm = self
            .image_warm
            .iter()
            .filter_map(|w| w.split_once('='))
            .find(|(name, _)| name.trim() == images::DEFAULT_NAME)
            .and_then(|(_, n)| n.trim().parse().ok())
            .or(self.warm);
        let warm = warm_pool_size(default_warm, self.max_sessions) as usize;
        let engines = engines::resolve(
            EngineArgs {
                urls: &self.engines,
                cert_path: self.engine_cert_path.as_deref(),
                max_sessions: self.max_sessions as usize,
                warm,
            },
            &self.engine_tables,
        )?;
        // What the engines' pools add up to, each capped by its own slots: the figure
        // /metrics and check-config show.
        let warm = engines
            .iter()
            .map(|e| e.warm)
            .sum::<usize>()
            .min(self.max_sessions as usize);
        let mut images = images::resolve(
            ImageArgs {
                image: &self.image,
                extra: &self.extra_images,
                warm: &self.image_warm,
                preload: &self.preload,
                default_warm: warm,
                max_sessions: self.max_sessions as usize,
            },
            &self.image_tables,
        )?;
        images[0].warm = warm;
        if self.bootstrap == BootstrapMode::Exec {
            if let Some(image) = images.iter().find(|i| !i.preload.is_empty()) {
                return Err(err(
                    "preload",
                    &format!(
                        "image `{}`: preloading needs --bootstrap inprocess (exec starts a \
                         fresh interpreter for the script)",
                        image.name
                    ),
                ));
            }
        }
        let default_certs = self.cert.is_none() && self.key.is_none();
        let defaults = crate::certs::CertPaths::in_dir(Path::new(DEFAULT_CERT_DIR));
        Ok(Config {
            listen: self.listen,
            metrics_listen: self.metrics_listen,
            cert: self.cert.unwrap_or(defaults.server_cert),
            key: self.key.unwrap_or(defaults.server_key),
            default_certs,
            client_ca: self.client_ca,
            tokens: self.tokens,
            max_sessions_per_client: self.max_sessions_per_client as usize,
            rate: self.rate as usize,
            max_sessions: self.max_sessions as usize,
            warm,
            max_queue: self.max_queue as usize,
            session_timeout: self.session_timeout,
            shutdown_grace: self.shutdown_grace,
            handshake_timeout: self.handshake_timeout,
            upload_timeout: self.upload_timeout,
            max_script_size: self.max_script_size,
            max_files_size: self.max_files_size,
            max_files: self.max_files,
            max_get_size: self.max_get_size,
            max_connections: self.max_connections.max(1) as usize,
            max_connections_per_ip: self.max_connections_per_ip as usize,
            proxy_protocol: self.proxy_protocol,
            output_limit: self.output_limit,
            sandbox: SandboxConfig {
                image: self.image,
                memory: self.memory,
                tcp_memory: self.tcp_memory,
                pids_limit: self.pids_limit,
                cpus: self.cpus,
                tmp_size: self.tmp_size,
                user: self.user,
                network: self.network,
                read_only: self.read_only,
                runtime: self.runtime,
                bootstrap: self.bootstrap,
                cap_add: self.cap_add,
                no_new_privileges: self.no_new_privileges,
                init: self.init,
                log_driver: self.log_driver,
            },
            instance: self.instance,
            engines,
            images,
        })
    }
}

/// The warm pool pyexecd keeps for `--warm` and `--max-sessions`: by default every slot,
/// and never more containers than slots, since spares count toward the cap.
pub fn warm_pool_size(warm: Option<u32>, max_sessions: u32) -> u32 {
    warm.unwrap_or(max_sessions).min(max_sessions)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_and_defaults() {
        let cli =
            Cli::try_parse_from(["pyexecd", "--max-sessions", "3", "--session-timeout", "2m"])
                .unwrap();
        assert!(cli.command.is_none());
        let cfg = cli.serve.resolve().unwrap();
        assert_eq!(cfg.max_sessions, 3);
        assert_eq!(cfg.session_timeout, Duration::from_secs(120));
        assert_eq!(cfg.cert, PathBuf::from("certs/server.pem"));
        assert!(cfg.default_certs);
        assert_eq!(cfg.listen.port(), 12344);
        assert!(cfg.sandbox.read_only && !cfg.sandbox.network);
        assert_eq!(cfg.warm, 3, "every free slot is warm by default");
        assert_eq!(cfg.sandbox.bootstrap, BootstrapMode::Inprocess);
        let cli = Cli::try_parse_from(["pyexecd", "--warm", "0", "--bootstrap", "exec"]).unwrap();
        let cfg = cli.serve.resolve().unwrap();
        assert_eq!((cfg.warm, cfg.sandbox.bootstrap), (0, BootstrapMode::Exec));

        let cli = Cli::try_parse_from(["pyexecd", "gen-certs", "--host", "a.example", "--force"])
            .unwrap();
        assert!(
            matches!(cli.command, Some(Command::GenCerts(ref g)) if g.force && g.hosts == ["a.example"])
        );
        assert!(Cli::try_parse_from(["pyexecd", "--max-sessions", "0"]).is_err());
    }

    #[test]
    fn impossible_values_name_the_flag() {
        let cli = Cli::try_parse_from(["pyexecd", "--tmp-size", "1k"]).unwrap();
        let err = cli.serve.resolve().unwrap_err();
        assert_eq!(err.flag, "tmp-size");
        // The tmpfs must take the largest script plus the largest file set.
        let cli = Cli::try_parse_from(["pyexecd", "--tmp-size", "40m", "--max-files-size", "40m"])
            .unwrap();
        let err = cli.serve.resolve().unwrap_err();
        assert_eq!(err.flag, "tmp-size");
        assert!(err.reason.contains("--max-files-size"), "{}", err.reason);
        let cli = Cli::try_parse_from(["pyexecd", "--tmp-size", "41m", "--max-files-size", "40m"])
            .unwrap();
        assert!(cli.serve.resolve().is_ok());
        let cli = Cli::try_parse_from(["pyexecd", "--tcp-memory", "64k"]).unwrap();
        let err = cli.serve.resolve().unwrap_err();
        assert_eq!(err.flag, "tcp-memory");
    }

    #[test]
    fn tcp_memory_defaults_to_16m_and_0_turns_it_off() {
        let cfg = Cli::try_parse_from(["pyexecd"])
            .unwrap()
            .serve
            .resolve()
            .unwrap();
        assert_eq!(cfg.sandbox.tcp_memory, 16 << 20);
        for (arg, bytes) in [("0", 0), ("1m", 1 << 20), ("1g", 1 << 30)] {
            let cli = Cli::try_parse_from(["pyexecd", "--tcp-memory", arg]).unwrap();
            assert_eq!(
                cli.serve.resolve().unwrap().sandbox.tcp_memory,
                bytes,
                "{arg}"
            );
        }
        assert!(Cli::try_parse_from(["pyexecd", "--tcp-memory", "lots"]).is_err());
    }
}
