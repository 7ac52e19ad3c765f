//! What `contrib/` ships for operators: the example config file, the Docker image that
//! runs pyexecd itself (with the host's Docker socket), its Compose file, and the systemd
//! unit. Each is checked the way an operator would use it.

// Each test binary compiles `common` on its own and uses a part of it (see its docs).
#[allow(dead_code)]
mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::{daemon::*, docker::*, figures::*, processes::*, PYEXEC, PYEXECD};

/// The sandbox image, also used as the base of the pyexecd image: it is a Debian
/// bookworm image that exists on the machine without any registry.
const BASE: &str = "pyexec/sandbox:bookworm-1";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `pyexecd` with no PYEXECD_* variable from the test's own environment, so that every
/// origin check-config reports comes from the file or the defaults.
fn pyexecd_clean_env() -> Command {
    let mut cmd = Command::new(PYEXECD);
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("PYEXECD_") {
            cmd.env_remove(name);
        }
    }
    cmd
}

/// The `key = value # origin` lines of `pyexecd check-config`, as (key, origin).
fn origins(check_config_stdout: &str) -> Vec<(String, String)> {
    check_config_stdout
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (key, rest) = l.split_once(" = ")?;
            let (_, origin) = rest.rsplit_once(" # ")?;
            Some((key.trim().to_string(), origin.trim().to_string()))
        })
        .collect()
}

#[test]
fn example_config_is_valid_and_its_keys_come_from_the_file() {
    let file = "contrib/pyexecd.toml";
    let out = pyexecd_clean_env()
        .args(["check-config", "--config", file])
        .current_dir(repo())
        .output()
        .unwrap();
    let stdout = stdout_str(&out);
    assert!(
        out.status.success(),
        "check-config refused {file}:\n{}{stdout}",
        stderr_str(&out)
    );
    assert!(stdout.contains("# configuration is valid"), "{stdout}");

    let text = std::fs::read_to_string(repo().join(file)).unwrap();
    let table: toml::Table = text.parse().unwrap();
    assert!(!table.is_empty(), "{file} sets no key");
    let origins = origins(&stdout);
    for key in table.keys() {
        let origin = origins
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, o)| o.as_str());
        assert_eq!(
            origin,
            Some(format!("file {file}").as_str()),
            "origin of `{key}`:\n{stdout}"
        );
    }
    let from_file = origins
        .iter()
        .filter(|(_, o)| o.starts_with("file "))
        .count();
    assert_eq!(from_file, table.len(), "{stdout}");

    // Every setting pyexecd has is documented in the example, set or commented out, so
    // that a new flag cannot be forgotten there.
    for (key, _) in origins.iter().filter(|(k, _)| k != "config") {
        let documented = text.lines().any(|l| {
            let l = l.trim_start_matches('#').trim_start();
            l.strip_prefix(key.as_str())
                .is_some_and(|rest| rest.trim_start().starts_with('='))
        });
        assert!(documented, "`{key}` is not in {file}");
    }
}

#[test]
fn every_commented_out_key_of_the_example_config_is_valid_too() {
    // Uncomment every `# key = value` line, pointing the certificate paths and the
    // playground's tokens file at real files.
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    pyexec::certs::generate(&certs, &[], false).unwrap();
    let tokens = dir.path().join("tokens");
    std::fs::write(&tokens, "teacher an-example-token-0123456789\n").unwrap();
    let text = std::fs::read_to_string(repo().join("contrib/pyexecd.toml")).unwrap();
    let mut uncommented = 0;
    let all: String = text
        .lines()
        .map(|l| {
            let line = match l.strip_prefix("# ") {
                Some(rest)
                    if rest.split_once(" = ").is_some_and(|(k, _)| {
                        !k.is_empty() && k.chars().all(|c| c.is_ascii_lowercase() || c == '_')
                    }) =>
                {
                    uncommented += 1;
                    rest.to_string()
                }
                _ => l.to_string(),
            };
            line.replace("/etc/pyexec/certs", certs.to_str().unwrap())
                .replace("/etc/pyexec/tokens", tokens.to_str().unwrap())
                + "\n"
        })
        .collect();
    assert!(uncommented > 10, "only {uncommented} commented-out keys");
    let path = dir.path().join("all.toml");
    std::fs::write(&path, all).unwrap();
    let out = pyexecd_clean_env()
        .arg("check-config")
        .arg("--config")
        .arg(&path)
        .current_dir(dir.path())
        .output()
        .unwrap();
    let stdout = stdout_str(&out);
    assert!(
        out.status.success(),
        "with every key uncommented:\n{}{stdout}",
        stderr_str(&out)
    );
    let not_from_file: Vec<_> = origins(&stdout)
        .into_iter()
        .filter(|(k, o)| k != "config" && !o.starts_with("file "))
        .collect();
    assert!(
        not_from_file.is_empty(),
        "not set by the uncommented file: {not_from_file:?}"
    );
}

// ---- The Docker image ----

fn docker(args: &[&str]) -> Output {
    Command::new("docker")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run docker")
}

/// Runs docker and returns its stdout, trimmed; panics with its stderr on failure.
fn docker_ok(args: &[&str]) -> String {
    let out = docker(args);
    assert!(
        out.status.success(),
        "docker {}: {}\n{}",
        args.join(" "),
        out.status,
        stderr_str(&out)
    );
    stdout_str(&out).trim().to_string()
}

/// The host's Docker socket, as a path to bind-mount into the pyexecd container.
fn docker_socket() -> Option<PathBuf> {
    match std::env::var("DOCKER_HOST") {
        Ok(host) if !host.is_empty() => host.strip_prefix("unix://").map(PathBuf::from),
        _ => Some(PathBuf::from("/var/run/docker.sock")),
    }
}

/// Removes the test's containers (the pyexecd container and any sandbox it left, all
/// labelled with the test's instance) and its image, on every path out of the test.
struct DockerCleanup {
    instance: String,
    tag: String,
}

impl DockerCleanup {
    fn run(&self) {
        remove_containers_of(&self.instance);
        let _ = docker(&["image", "rm", "-f", &self.tag]);
    }
}

impl Drop for DockerCleanup {
    fn drop(&mut self) {
        self.run();
    }
}

fn inspect(container: &str, format: &str) -> String {
    docker_ok(&["inspect", "-f", format, container])
}

fn logs(container: &str) -> String {
    let out = docker(&["logs", container]);
    format!("{}{}", stdout_str(&out), stderr_str(&out))
}

/// The host address Docker published a container port on (`127.0.0.1:32768`).
fn published(container: &str, port: &str) -> String {
    let out = docker_ok(&["port", container, port]);
    out.lines()
        .find(|l| l.starts_with("127.0.0.1:"))
        .unwrap_or_else(|| panic!("{port} is not published on 127.0.0.1: {out}"))
        .to_string()
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

#[test]
fn docker_image_serves_sessions_and_drains_on_docker_stop() {
    let Some(socket) = docker_socket() else {
        eprintln!("skipped: DOCKER_HOST is not a unix socket, which the image test mounts");
        return;
    };
    ensure_image();
    let instance = unique_instance();
    let tag = format!("pyexecd-packaging-test:{instance}");
    let name = format!("pyexecd-{instance}");
    let cleanup = DockerCleanup {
        instance: instance.clone(),
        tag: tag.clone(),
    };

    // The build context an operator makes: the Dockerfile and a pyexecd built on the host.
    let context = tempfile::tempdir().unwrap();
    for file in ["Dockerfile", ".dockerignore"] {
        std::fs::copy(
            repo().join("contrib/docker").join(file),
            context.path().join(file),
        )
        .unwrap();
    }
    std::fs::copy(PYEXECD, context.path().join("pyexecd")).unwrap();
    let build = Command::new("docker")
        .args(["build", "-q", "-t", &tag, "--build-arg"])
        .arg(format!("BASE={BASE}"))
        .arg(context.path())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        build.status.success(),
        "docker build: {}\n{}",
        build.status,
        stderr_str(&build)
    );
    assert_eq!(
        docker_ok(&[
            "image",
            "inspect",
            "-f",
            "{{.Config.StopSignal}} {{.Config.User}} {{json .Config.Entrypoint}}",
            &tag
        ]),
        "SIGTERM 10001:10001 [\"/usr/local/bin/pyexecd\"]"
    );

    // /etc/pyexec as an operator lays it out: the example config and certs/. The image
    // runs as UID 10001, which must be able to read the key (mode 0644 in this throwaway
    // directory; `chown 10001` in real life).
    let etc = tempfile::tempdir().unwrap();
    let certs = etc.path().join("certs");
    let paths = pyexec::certs::generate(&certs, &[], false).unwrap();
    std::fs::copy(
        repo().join("contrib/pyexecd.toml"),
        etc.path().join("pyexecd.toml"),
    )
    .unwrap();
    chmod(etc.path(), 0o755);
    chmod(&certs, 0o755);
    chmod(&paths.server_key, 0o644);

    let socket_gid = std::fs::metadata(&socket)
        .unwrap_or_else(|e| panic!("{}: {e}", socket.display()))
        .gid()
        .to_string();
    let label = format!("pyexec.instance={instance}");
    let socket_mount = format!("{}:/var/run/docker.sock", socket.display());
    let etc_mount = format!("{}:/etc/pyexec:ro", etc.path().display());
    let instance_env = format!("PYEXECD_INSTANCE={instance}");
    docker_ok(&[
        "run",
        "-d",
        "--name",
        &name,
        "--label",
        &label,
        "--group-add",
        &socket_gid,
        "-v",
        &socket_mount,
        "-v",
        &etc_mount,
        "-p",
        "127.0.0.1::12344",
        "-p",
        "127.0.0.1::9090",
        "-e",
        &instance_env,
        "-e",
        "PYEXECD_WARM=1",
        "-e",
        "PYEXECD_MAX_SESSIONS=2",
        "--read-only",
        "--tmpfs",
        "/tmp",
        "--cap-drop",
        "ALL",
        "--security-opt",
        "no-new-privileges",
        "--health-interval",
        "1s",
        "--stop-timeout",
        "45",
        &tag,
    ]);
    let started = wait_until(Duration::from_secs(60), || {
        logs(&name).contains("listening on 0.0.0.0:12344")
            || inspect(&name, "{{.State.Running}}") != "true"
    });
    assert!(
        started && inspect(&name, "{{.State.Running}}") == "true",
        "pyexecd did not start in its container:\n{}",
        logs(&name)
    );
    let log = logs(&name);
    assert!(
        log.contains(&format!("instance={instance}")) || log.contains("listening"),
        "{log}"
    );
    let server = published(&name, "12344/tcp");
    let metrics = published(&name, "9090/tcp");

    // One real session, through the published port, with the real client.
    let script = etc.path().join("hello.py");
    std::fs::write(
        &script,
        "import sys\nname = input('Name: ')\nprint(f'Hello, {name}! argv={sys.argv[1:]}')\n\
         print('to stderr', file=sys.stderr)\nsys.exit(3)\n",
    )
    .unwrap();
    let out = output_with_stdin(
        Command::new(PYEXEC)
            .args(["--server", &server, "--ca"])
            .arg(&paths.ca_cert)
            .arg(&script)
            .args(["one", "two words"]),
        b"Ada\n",
    );
    assert_eq!(
        (
            out.status.code(),
            stdout_str(&out).as_str(),
            stderr_str(&out).as_str()
        ),
        (
            Some(3),
            "Name: Hello, Ada! argv=['one', 'two words']\n",
            "to stderr\n"
        ),
        "the session through the container\n{}",
        logs(&name)
    );

    // The sandbox containers are siblings on the host's Engine, labelled with the
    // instance; the warm pool keeps one.
    let label_filter = format!("label={label}");
    let sandboxes = || {
        docker_ok(&[
            "ps",
            "-aq",
            "--filter",
            &label_filter,
            "--filter",
            "label=pyexec.managed=true",
        ])
    };
    assert!(
        wait_until(Duration::from_secs(30), || !sandboxes().is_empty()),
        "no sandbox container on the host\n{}",
        logs(&name)
    );

    // The image's healthcheck (bash, /dev/tcp, the metrics endpoint) passes.
    assert!(
        wait_until(Duration::from_secs(30), || inspect(
            &name,
            "{{.State.Health.Status}}"
        ) == "healthy"),
        "not healthy: {}\n{}",
        inspect(&name, "{{json .State.Health}}"),
        logs(&name)
    );
    let scrape = Metrics::parse(&http_get(&metrics, "/metrics"));
    assert_eq!(scrape.get("pyexec_sessions_total{outcome=\"exited\"}"), 1.0);

    // `docker stop` sends the image's STOPSIGNAL (SIGTERM): pyexecd drains and exits 0,
    // and removes every sandbox container of its instance.
    docker_ok(&["stop", "-t", "45", &name]);
    let log = logs(&name);
    assert_eq!(inspect(&name, "{{.State.ExitCode}}"), "0", "{log}");
    assert!(log.contains("shutdown complete"), "{log}");
    assert_eq!(sandboxes(), "", "sandbox containers left after the drain");

    cleanup.run();
    assert_eq!(
        containers_of(&instance),
        Vec::<String>::new(),
        "containers left"
    );
    assert!(!docker(&["image", "inspect", &tag]).status.success());
}

/// `docker compose` (v2) or `docker-compose` (v1), whichever is installed.
fn compose() -> Option<Command> {
    let works = |cmd: &mut Command| {
        cmd.stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if works(Command::new("docker").args(["compose", "version"])) {
        let mut cmd = Command::new("docker");
        cmd.arg("compose");
        return Some(cmd);
    }
    if works(Command::new("docker-compose").arg("version")) {
        return Some(Command::new("docker-compose"));
    }
    None
}

#[test]
fn compose_file_is_valid() {
    let Some(mut cmd) = compose() else {
        eprintln!("skipped: neither `docker compose` nor `docker-compose` is installed");
        return;
    };
    let out = cmd
        .args(["-f", "contrib/docker/compose.yaml", "config"])
        .current_dir(repo())
        .env("DOCKER_GID", "4242")
        .env_remove("BASE")
        .env_remove("PYEXEC_CONFIG_DIR")
        .output()
        .unwrap();
    let config = stdout_str(&out);
    assert!(out.status.success(), "{}", stderr_str(&out));
    for needle in [
        "/var/run/docker.sock:/var/run/docker.sock",
        "/etc/pyexec:/etc/pyexec:ro",
        "4242",
        "stop_grace_period: 45s",
        "SIGTERM",
        "debian:bookworm-slim",
    ] {
        assert!(config.contains(needle), "no {needle:?} in\n{config}");
    }
}

// ---- The systemd unit ----

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path).any(|dir| {
            std::fs::metadata(dir.join(program))
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
    })
}

/// `systemd-analyze verify` on a unit file: its exit status and every line it printed.
fn verify(unit: &Path) -> (bool, Vec<String>) {
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(unit)
        .output()
        .unwrap();
    let lines = format!("{}{}", stdout_str(&out), stderr_str(&out))
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(str::to_string)
        .collect();
    (out.status.success(), lines)
}

#[test]
fn systemd_unit_verifies() {
    if !on_path("systemd-analyze") {
        eprintln!("skipped: systemd-analyze is not installed");
        return;
    }
    let unit = repo().join("contrib/systemd/pyexecd.service");
    let (_, lines) = verify(&unit);
    let binary = "/usr/local/bin/pyexecd";
    let other: Vec<_> = lines
        .iter()
        .filter(|l| !(l.contains(binary) && l.contains("No such file")))
        .collect();
    assert!(
        other.is_empty(),
        "systemd-analyze verify: {other:#?}\n(all: {lines:#?})"
    );

    // With the binary where ExecStart says, the unit verifies without a word.
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(&unit).unwrap();
    assert!(text.contains(&format!("ExecStart={binary} ")), "{text}");
    let copy = dir.path().join("pyexecd.service");
    std::fs::write(&copy, text.replace(binary, PYEXECD)).unwrap();
    let (ok, lines) = verify(&copy);
    assert!(ok && lines.is_empty(), "systemd-analyze verify: {lines:#?}");
}
