//! `pyexecd`: the daemon. Serves by default; `gen-certs` and `build-image` prepare a machine;
//! `check-config` shows the effective configuration.

#![deny(unsafe_code)]

use std::process::ExitCode;

use pyexec::config::layers::{self, LoadError, Loaded};
use pyexec::config::{Command, LogFormat, ServeArgs};
use pyexec::{certs, docker, fleet, image, server, tls};
use tracing_subscriber::EnvFilter;

/// sysexits' EX_USAGE: a bad flag, variable or config file value.
const EXIT_CONFIG: u8 = 64;

fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,bollard=warn,hyper=warn,rustls=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().with_current_span(true).init(),
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
    }
}

fn main() -> ExitCode {
    // bollard's TLS to tcp engines builds its rustls config with the process default.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let loaded = match layers::load(std::env::args_os()) {
        Ok(loaded) => loaded,
        Err(LoadError::Clap(e)) => {
            let code = if e.use_stderr() { EXIT_CONFIG } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
        Err(e) => {
            eprintln!("pyexecd: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let format = match &loaded.cli.command {
        Some(Command::Serve(args)) => args.log_format,
        None => loaded.cli.serve.log_format,
        _ => LogFormat::Text,
    };
    init_logging(format);
    match run(&loaded) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Config(message)) => {
            eprintln!("pyexecd: {message}");
            ExitCode::from(EXIT_CONFIG)
        }
        Err(Failure::Other(e)) => {
            eprintln!("pyexecd: {e:#}");
            ExitCode::FAILURE
        }
    }
}

enum Failure {
    Config(String),
    Other(anyhow::Error),
}

impl<E: Into<anyhow::Error>> From<E> for Failure {
    fn from(e: E) -> Self {
        Failure::Other(e.into())
    }
}

fn resolve(loaded: &Loaded, args: &ServeArgs) -> Result<pyexec::config::Config, Failure> {
    args.clone()
        .resolve()
        .map_err(|e| Failure::Config(loaded.explain(&e)))
}

fn run(loaded: &Loaded) -> Result<(), Failure> {
    match &loaded.cli.command {
        Some(Command::GenCerts(args)) => {
            // With --client only, an existing CA issues the client certificates.
            let ca_exists = certs::CertPaths::in_dir(&args.dir).ca_cert.exists();
            if args.keep_ca {
                let paths = certs::renew_server(&args.dir, &args.hosts)?;
                println!(
                    "server certificate: {} (renewed)",
                    paths.server_cert.display()
                );
                println!("server key:         {}", paths.server_key.display());
            } else if args.clients.is_empty() || !ca_exists || args.force && !args.hosts.is_empty()
            {
                let paths = certs::generate(&args.dir, &args.hosts, args.force)?;
                println!("CA certificate:     {}", paths.ca_cert.display());
                println!("CA key:             {}", paths.ca_key.display());
                println!("server certificate: {}", paths.server_cert.display());
                println!("server key:         {}", paths.server_key.display());
            }
            for name in &args.clients {
                let (cert, key) = certs::issue_client(&args.dir, name, args.force)?;
                println!("client certificate: {} (CN={name})", cert.display());
                println!("client key:         {}", key.display());
            }
            Ok(())
        }
        Some(Command::BuildImage(args)) => {
            let recipe =
                image::Recipe::from_args(args).map_err(|e| Failure::Config(e.to_string()))?;
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(async {
                let docker = docker::connect().await?;
                image::build(&docker, &args.tag, &recipe).await?;
                anyhow::Ok(())
            })?;
            println!("{}", args.tag);
            Ok(())
        }
        Some(Command::CheckConfig(args)) => check(loaded, args),
        Some(Command::Serve(args)) => serve(resolve(loaded, args)?),
        None => serve(resolve(loaded, &loaded.cli.serve)?),
    }
}

/// Validates everything that can be checked without serving, and prints the settings.
fn check(loaded: &Loaded, args: &ServeArgs) -> Result<(), Failure> {
    let cfg = resolve(loaded, args)?;
    print!("{}", loaded.render(&cfg));
    if let Some(dir) = cfg.certs_to_generate() {
        println!(
            "# certificates: none yet; the first start generates them in {}/",
            dir.display()
        );
    } else {
        tls::server_config(&cfg.cert, &cfg.key, cfg.client_ca.as_deref())
            .map_err(|e| Failure::Config(e.to_string()))?;
        println!(
            "# certificates: {} and {} load",
            cfg.cert.display(),
            cfg.key.display()
        );
    }
    if let Some(path) = &cfg.tokens {
        let tokens = pyexec::web::Tokens::load(path).map_err(|e| Failure::Config(e.to_string()))?;
        println!(
            "# tokens: {} loads, {} tokens for the playground",
            path.display(),
            tokens.count()
        );
    }
    let tcp_memory = pyexec::tcp_memory::TcpMemGuard::detect(cfg.sandbox.tcp_memory);
    if tcp_memory.is_bounded() {
        println!("# TCP socket memory: {tcp_memory}");
    } else {
        println!("# warning: TCP socket memory: {tcp_memory}");
    }
    // Each engine is contacted: reachable, TLS accepted, its version, the image.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let probes = rt.block_on(fleet::probe_all(&cfg));
    let mut broken = Vec::new();
    for probe in &probes {
        println!("# {probe}");
        if let Some(problem) = probe.problem() {
            broken.push(problem);
        }
    }
    if !broken.is_empty() {
        return Err(Failure::Config(broken.join("; ")));
    }
    println!("# configuration is valid");
    Ok(())
}

fn serve(cfg: pyexec::config::Config) -> Result<(), Failure> {
    match actix_rt::System::new().block_on(server::run(cfg)) {
        Ok(()) => Ok(()),
        // Certificates that are missing or do not load are configuration, not a failure
        // a restart could cure: exit 64, so a supervisor (systemd) stops retrying.
        // So are an engine whose TLS fails with the given certificates, and an instance
        // name that a live daemon holds on an engine.
        Err(
            e @ (server::ServeError::MissingFile(_)
            | server::ServeError::Tls(_)
            | server::ServeError::Certs(_)
            | server::ServeError::Tokens(_)
            | server::ServeError::Engines(
                fleet::FleetError::Tls { .. } | fleet::FleetError::Taken { .. },
            )),
        ) => Err(Failure::Config(e.to_string())),
        Err(e) => Err(Failure::Other(
            anyhow::Error::new(e).context("cannot serve"),
        )),
    }
}
