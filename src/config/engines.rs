//! Engine settings: which Docker Engines the daemon drives (`--engine`,
//! `--engine-cert-path`, `[[engine]]` tables) and each one's share of the work, validated
//! with the key that set it.
//!
//! Precedence follows the other settings: `--engine` (flag or `PYEXECD_ENGINE`) replaces
//! the file's list, but a `[[engine]]` table with the same `url` still lends that engine
//! its name, certificates and counts. With neither, the daemon drives one engine found
//! as the `docker` CLI finds it (`DOCKER_HOST`, else the local socket), as it always did.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::ConfigError;

/// The Docker CLI's default socket, which also names the default engine `local`.
pub const DEFAULT_SOCKET: &str = "/var/run/docker.sock";
/// The Docker Engine's conventional TLS port, used when a tcp URL has none.
pub const DEFAULT_TLS_PORT: u16 = 2376;
/// The files of Docker's `DOCKER_CERT_PATH` layout, in a cert directory.
pub const CERT_FILES: [&str; 3] = ["ca.pem", "cert.pem", "key.pem"];

/// Where an engine listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EngineUrl {
    /// As the `docker` CLI finds it: `DOCKER_HOST`, else the local socket.
    Default,
    Unix(PathBuf),
    /// Always over mutual TLS: an engine API on TCP without TLS is root on that host for
    /// anyone who can reach the port, so the daemon does not speak it.
    Tcp {
        host: String,
        port: u16,
    },
}

impl EngineUrl {
    /// Parses `unix:///path` or `tcp://HOST[:PORT]`. Anything else (another scheme, a
    /// relative socket path, a path or query after the port) is refused: a typo must not
    /// become an engine that silently never answers.
    pub fn parse(text: &str) -> Result<EngineUrl, String> {
        if let Some(path) = text.strip_prefix("unix://") {
            if !path.starts_with('/') {
                return Err(format!(
                    "`{text}`: a unix URL needs an absolute path (unix:///var/run/docker.sock)"
                ));
            }
            return Ok(EngineUrl::Unix(PathBuf::from(path)));
        }
        let Some(rest) = text.strip_prefix("tcp://") else {
            return Err(format!(
                "`{text}`: use unix:///PATH or tcp://HOST:PORT (TLS is implied for tcp)"
            ));
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.is_empty() || rest.contains(['/', '?', '#', '@', ' ']) {
            return Err(format!("`{text}`: expected tcp://HOST:PORT"));
        }
        // An IPv6 address is written in brackets: tcp://[fd00::1]:2376.
        let (host, port) = match rest.rsplit_once(':') {
            Some((host, port)) if !host.ends_with(':') && !port.contains(']') => {
                let port: u16 = port
                    .parse()
                    .ok()
                    .filter(|p| *p != 0)
                    .ok_or_else(|| format!("`{text}`: `{port}` is not a port number"))?;
                (host, port)
            }
            _ => (rest, DEFAULT_TLS_PORT),
        };
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        let valid_name = !bare.is_empty()
            && bare
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-._:".contains(c));
        if !valid_name || (host.starts_with('[') != host.ends_with(']')) {
            return Err(format!("`{text}`: `{host}` is not a host name or address"));
        }
        Ok(EngineUrl::Tcp {
            host: host.to_string(),
            port,
        })
    }

    pub fn is_tcp(&self) -> bool {
        matches!(self, EngineUrl::Tcp { .. })
    }
}

impl fmt::Display for EngineUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EngineUrl::Default => match std::env::var("DOCKER_HOST") {
                Ok(host) => write!(f, "{host}"),
                Err(_) => write!(f, "unix://{DEFAULT_SOCKET}"),
            },
            EngineUrl::Unix(path) => write!(f, "unix://{}", path.display()),
            EngineUrl::Tcp { host, port } => write!(f, "tcp://{host}:{port}"),
        }
    }
}

/// One engine the daemon drives, resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineSpec {
    /// How logs, metrics (`engine="NAME"`) and errors name it.
    pub name: String,
    pub url: EngineUrl,
    /// Docker's layout: `ca.pem`, `cert.pem`, `key.pem` (tcp engines only).
    pub cert_path: Option<PathBuf>,
    /// Containers (running or warm) on this engine at most.
    pub max_sessions: usize,
    /// Warm containers kept on this engine.
    pub warm: usize,
    /// Where it was configured, for messages: `--engine tcp://…` or `FILE [[engine]] #2`.
    pub origin: String,
}

/// An `[[engine]]` table of the config file.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct EngineTable {
    pub url: String,
    pub cert_path: Option<PathBuf>,
    pub name: Option<String>,
    pub max_sessions: Option<u32>,
    pub warm: Option<u32>,
}

/// The `[[engine]]` tables of one file, with the file for messages.
#[derive(Debug, Clone, Default)]
pub struct EngineTables {
    pub file: Option<PathBuf>,
    pub tables: Vec<EngineTable>,
}

impl EngineTables {
    fn place(&self, index: usize) -> String {
        let file = self
            .file
            .as_deref()
            .map_or(String::new(), |f| format!("{}: ", f.display()));
        format!("{file}[[engine]] #{}", index + 1)
    }
}

/// What `resolve` needs besides the tables.
pub struct EngineArgs<'a> {
    pub urls: &'a [String],
    pub cert_path: Option<&'a Path>,
    pub max_sessions: usize,
    pub warm: usize,
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.:/".contains(c))
}

/// The engines to drive, each checked: its URL parses, its name is unique, a tcp engine
/// has its three certificate files, and its counts fit.
pub fn resolve(
    args: EngineArgs<'_>,
    tables: &EngineTables,
) -> Result<Vec<EngineSpec>, ConfigError> {
    let flag_err = |flag: &'static str, reason: String| ConfigError {
        flag,
        reason,
        at: None,
    };
    // (url, the table that configures it and its index, where it came from)
    type Chosen<'t> = (EngineUrl, Option<(usize, &'t EngineTable)>, String);
    let mut chosen: Vec<Chosen<'_>> = Vec::new();
    if !args.urls.is_empty() {
        for text in args.urls {
            let url = EngineUrl::parse(text).map_err(|r| flag_err("engine", r))?;
            let table = tables
                .tables
                .iter()
                .enumerate()
                .find(|(_, t)| EngineUrl::parse(&t.url).ok().as_ref() == Some(&url));
            chosen.push((url, table, format!("--engine {text}")));
        }
    } else {
        for (i, table) in tables.tables.iter().enumerate() {
            let place = tables.place(i);
            let url = EngineUrl::parse(&table.url).map_err(|reason| ConfigError {
                flag: "engine",
                reason: format!("key `url`: {reason}"),
                at: Some(place.clone()),
            })?;
            chosen.push((url, Some((i, table)), place));
        }
    }
    if chosen.is_empty() {
        chosen.push((EngineUrl::Default, None, "default".to_string()));
    }

    let count = chosen.len();
    let mut specs: Vec<EngineSpec> = Vec::with_capacity(count);
    for (index, (url, table, origin)) in chosen.into_iter().enumerate() {
        // Errors about a table's own keys name the table; the rest name the flag.
        let table_err = |key: &str, reason: String| match table {
            Some((i, _)) => ConfigError {
                flag: "engine",
                reason: format!("key `{key}`: {reason}"),
                at: Some(tables.place(i)),
            },
            None => flag_err(
                match key {
                    "cert_path" => "engine-cert-path",
                    _ => "engine",
                },
                format!("{origin}: {reason}"),
            ),
        };
        let t = table.map(|(_, t)| t);
        let name = match t.and_then(|t| t.name.clone()) {
            Some(name) => name,
            None => match &url {
                EngineUrl::Default => "local".to_string(),
                EngineUrl::Unix(p) if p == Path::new(DEFAULT_SOCKET) => "local".to_string(),
                EngineUrl::Unix(p) => p.display().to_string(),
                EngineUrl::Tcp { host, port } => format!("{host}:{port}"),
            },
        };
        if !valid_name(&name) {
            return Err(table_err(
                "name",
                format!(
                    "`{name}`: use letters, digits, '-', '_', '.', ':' and '/' only (at most 64)"
                ),
            ));
        }
        if let Some(other) = specs.iter().find(|s| s.name == name) {
            return Err(table_err(
                "name",
                format!(
                    "`{name}` is already the name of the engine from {}; give each engine its own name",
                    other.origin
                ),
            ));
        }
        let cert_path = t
            .and_then(|t| t.cert_path.clone())
            .or_else(|| args.cert_path.map(Path::to_path_buf));
        let cert_key = match t.and_then(|t| t.cert_path.as_ref()) {
            Some(_) => "cert_path",
            None => "engine_cert_path",
        };
        let cert_err = |reason: String| match cert_key {
            "cert_path" => table_err("cert_path", reason),
            _ => flag_err("engine-cert-path", format!("{origin}: {reason}")),
        };
        let cert_path = match (&url, cert_path) {
            (EngineUrl::Tcp { .. }, None) => {
                return Err(cert_err(format!(
                    "{url} is reached over mutual TLS: give a directory holding ca.pem, \
                     cert.pem and key.pem (--engine-cert-path DIR, or cert_path in its \
                     [[engine]] table)"
                )))
            }
            (EngineUrl::Tcp { .. }, Some(dir)) => {
                for file in CERT_FILES {
                    if !dir.join(file).is_file() {
                        return Err(cert_err(format!(
                            "{} does not exist (the directory must hold {})",
                            dir.join(file).display(),
                            CERT_FILES.join(", ")
                        )));
                    }
                }
                Some(dir)
            }
            (_, Some(dir)) if t.is_some_and(|t| t.cert_path.is_some()) => {
                return Err(cert_err(format!(
                    "{} is for tcp engines; {url} is a local socket",
                    dir.display()
                )))
            }
            // --engine-cert-path with a mix of engines applies to the tcp ones.
            (_, _) => None,
        };
        let max_sessions = match t.and_then(|t| t.max_sessions) {
            Some(0) => return Err(table_err("max_sessions", "must be at least 1".into())),
            Some(n) => n as usize,
            None => args.max_sessions,
        };
        // The global pool is split evenly by default, the first engines taking one more
        // when it does not divide (so the parts add up to --warm, never past it); spares
        // count toward the engine's own cap, so never more than it.
        let warm = match t.and_then(|t| t.warm) {
            Some(w) if w as usize > max_sessions => {
                return Err(table_err(
                    "warm",
                    format!("{w} is more than this engine's max_sessions ({max_sessions})"),
                ))
            }
            Some(w) => w as usize,
            None => (args.warm / count + usize::from(index < args.warm % count)).min(max_sessions),
        };
        specs.push(EngineSpec {
            name,
            url,
            cert_path,
            max_sessions,
            warm,
            origin,
        });
    }
    Ok(specs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_or_say_why() {
        assert_eq!(
            EngineUrl::parse("unix:///var/run/docker.sock").unwrap(),
            EngineUrl::Unix(DEFAULT_SOCKET.into())
        );
        assert_eq!(
            EngineUrl::parse("tcp://10.0.0.2:2376").unwrap(),
            EngineUrl::Tcp {
                host: "10.0.0.2".into(),
                port: 2376
            }
        );
        assert_eq!(
            EngineUrl::parse("tcp://engine-3.example").unwrap(),
            EngineUrl::Tcp {
                host: "engine-3.example".into(),
                port: DEFAULT_TLS_PORT
            }
        );
        assert_eq!(
            EngineUrl::parse("tcp://[fd00::2]:12376").unwrap(),
            EngineUrl::Tcp {
                host: "[fd00::2]".into(),
                port: 12376
            }
        );
        for bad in [
            "http://10.0.0.2:2375",
            "10.0.0.2:2376",
            "tcp://",
            "tcp://host:0",
            "tcp://host:99999",
            "tcp://host:port",
            "tcp://host:2376/path",
            "tcp://user@host:2376",
            "tcp://[fd00::2:2376",
            "unix://relative.sock",
            "",
        ] {
            let err = EngineUrl::parse(bad).unwrap_err();
            assert!(err.contains(&format!("`{bad}`")), "{bad}: {err}");
        }
    }

    fn certs() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for f in CERT_FILES {
            std::fs::write(dir.path().join(f), "x").unwrap();
        }
        dir
    }

    fn args<'a>(urls: &'a [String], cert: Option<&'a Path>) -> EngineArgs<'a> {
        EngineArgs {
            urls,
            cert_path: cert,
            max_sessions: 8,
            warm: 8,
        }
    }

    #[test]
    fn no_engine_given_is_the_docker_cli_default() {
        let specs = resolve(args(&[], None), &EngineTables::default()).unwrap();
        assert_eq!(specs.len(), 1);
        assert_eq!(specs[0].name, "local");
        assert_eq!(specs[0].url, EngineUrl::Default);
        assert_eq!((specs[0].max_sessions, specs[0].warm), (8, 8));
    }

    #[test]
    fn flags_name_engines_and_split_the_pool() {
        let dir = certs();
        let urls = vec![
            "unix:///var/run/docker.sock".to_string(),
            "tcp://10.9.0.2:2376".to_string(),
            "tcp://10.9.0.6".to_string(),
        ];
        let specs = resolve(args(&urls, Some(dir.path())), &EngineTables::default()).unwrap();
        let names: Vec<_> = specs.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["local", "10.9.0.2:2376", "10.9.0.6:2376"]);
        assert_eq!(specs[0].cert_path, None, "a socket needs no certificate");
        assert_eq!(specs[1].cert_path.as_deref(), Some(dir.path()));
        let warm: Vec<_> = specs.iter().map(|s| s.warm).collect();
        assert_eq!(warm, [3, 3, 2], "8 spares over 3 engines, no more");
    }

    #[test]
    fn tables_add_settings_and_flags_replace_the_list() {
        let dir = certs();
        let tables = EngineTables {
            file: Some("/etc/pyexec/pyexecd.toml".into()),
            tables: vec![
                EngineTable {
                    url: "tcp://10.9.0.2:2376".into(),
                    cert_path: Some(dir.path().into()),
                    name: Some("east".into()),
                    max_sessions: Some(4),
                    warm: Some(2),
                },
                EngineTable {
                    url: "unix:///var/run/docker.sock".into(),
                    ..Default::default()
                },
            ],
        };
        let specs = resolve(args(&[], None), &tables).unwrap();
        assert_eq!(specs.len(), 2);
        assert_eq!(
            (specs[0].name.as_str(), specs[0].max_sessions, specs[0].warm),
            ("east", 4, 2)
        );
        assert_eq!(specs[0].origin, "/etc/pyexec/pyexecd.toml: [[engine]] #1");
        // A flag list replaces the file's, but the table for the same URL still applies.
        let urls = vec!["tcp://10.9.0.2:2376".to_string()];
        let specs = resolve(args(&urls, None), &tables).unwrap();
        assert_eq!(specs.len(), 1);
        assert_eq!(specs[0].name, "east");
    }

    #[test]
    fn bad_engines_name_the_key() {
        let err = resolve(
            args(&["tcp://10.9.0.2:2376".to_string()], None),
            &EngineTables::default(),
        )
        .unwrap_err();
        assert_eq!(err.flag, "engine-cert-path");
        assert!(err.to_string().contains("mutual TLS"), "{err}");

        let empty = tempfile::tempdir().unwrap();
        let err = resolve(
            args(&["tcp://10.9.0.2:2376".to_string()], Some(empty.path())),
            &EngineTables::default(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("ca.pem does not exist"), "{err}");
        assert!(
            err.to_string().starts_with("invalid --engine-cert-path"),
            "{err}"
        );

        let err = resolve(
            args(&["http://x".to_string()], None),
            &EngineTables::default(),
        )
        .unwrap_err();
        assert_eq!(err.flag, "engine");

        let tables = |t: EngineTable| EngineTables {
            file: Some("f.toml".into()),
            tables: vec![t],
        };
        let err = resolve(
            args(&[], None),
            &tables(EngineTable {
                url: "tcp://h:1".into(),
                cert_path: Some(empty.path().into()),
                ..Default::default()
            }),
        )
        .unwrap_err();
        let text = err.to_string();
        assert!(
            text.starts_with("f.toml: [[engine]] #1: key `cert_path`: "),
            "{text}"
        );
        let err = resolve(
            args(&[], None),
            &tables(EngineTable {
                url: "ftp://h".into(),
                ..Default::default()
            }),
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("f.toml: [[engine]] #1: key `url`: "),
            "{err}"
        );
        let err = resolve(
            args(&[], None),
            &tables(EngineTable {
                url: "unix:///run/x.sock".into(),
                warm: Some(9),
                ..Default::default()
            }),
        )
        .unwrap_err();
        assert!(err.to_string().contains("key `warm`"), "{err}");
        let twice = vec![
            "unix:///var/run/docker.sock".to_string(),
            "unix:///var/run/docker.sock".to_string(),
        ];
        let err = resolve(args(&twice, None), &EngineTables::default()).unwrap_err();
        assert!(err.to_string().contains("already the name"), "{err}");
    }
}
