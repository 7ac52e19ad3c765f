//! `pyexecd`: the daemon. Serves by default; `gen-certs` and `build-image` prepare a machine.

use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser;
use pyexec::config::{Cli, Command};
use pyexec::{certs, docker, image, server};
use tracing_subscriber::EnvFilter;

fn init_logging() {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,bollard=warn,hyper=warn,rustls=warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pyexecd: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Some(Command::GenCerts(args)) => {
            // With --client only, an existing CA issues the client certificates.
            let ca_exists = certs::CertPaths::in_dir(&args.dir).ca_cert.exists();
            if args.clients.is_empty() || !ca_exists || args.force && !args.hosts.is_empty() {
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
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(async {
                let docker = docker::connect().await?;
                image::build(&docker, &args.tag, &args.suite).await?;
                anyhow::Ok(())
            })?;
            println!("{}", args.tag);
            Ok(())
        }
        Some(Command::Serve(args)) => serve(*args),
        None => serve(cli.serve),
    }
}

fn serve(args: pyexec::config::ServeArgs) -> anyhow::Result<()> {
    let cfg = args.resolve()?;
    actix_rt::System::new()
        .block_on(server::run(cfg))
        .context("cannot serve")
}
