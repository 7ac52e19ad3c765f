//! The layers of configuration: built-in defaults, a TOML file, `PYEXECD_*` environment
//! variables and flags, merged with their origins kept for `pyexecd check-config`.
//!
//! clap already knows three of the four layers (defaults, environment, flags) and, for
//! each value, which one it came from. The file slots in between: each of its keys is
//! validated on its own by the flag's own parser, so an error names the key and the file,
//! and is then added as if given on the command line, but only where clap found nothing
//! but a default. One parser, one set of rules, whatever the layer.

use std::collections::HashSet;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

use clap::parser::ValueSource;
use clap::{ArgAction, ArgMatches, Args, CommandFactory, FromArgMatches};

use super::engines::{EngineTable, EngineTables};
use super::images::{ImageTable, ImageTables};
use super::{Cli, Command, ConfigError, ServeArgs, DEFAULT_CONFIG};

/// Where a setting's value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    Default,
    File(PathBuf),
    Env(String),
    Flag,
    Unset,
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Origin::Default => write!(f, "default"),
            Origin::File(p) => write!(f, "file {}", p.display()),
            Origin::Env(name) => write!(f, "env {name}"),
            Origin::Flag => write!(f, "flag"),
            Origin::Unset => write!(f, "unset"),
        }
    }
}

/// One setting of the effective configuration.
#[derive(Debug, Clone)]
pub struct Setting {
    /// The config-file key (`max_sessions`).
    pub key: String,
    pub value: String,
    pub origin: Origin,
}

/// The parsed command line with the file merged in.
#[derive(Debug)]
pub struct Loaded {
    pub cli: Cli,
    /// The config file that was read, if any.
    pub file: Option<PathBuf>,
    /// Every serve setting with its origin (empty for `gen-certs` and `build-image`).
    pub settings: Vec<Setting>,
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// Usage errors, and `--help`/`--version` (which clap prints itself).
    #[error(transparent)]
    Clap(#[from] clap::Error),
    #[error("{}: {reason}", file.display())]
    File { file: PathBuf, reason: String },
    #[error("{}: key `{key}`: {reason}", file.display())]
    Key {
        file: PathBuf,
        key: String,
        reason: String,
    },
}

fn key_of(long: &str) -> String {
    long.replace('-', "_")
}

/// The first line of a clap error, without its `error: ` prefix.
fn clap_reason(e: &clap::Error) -> String {
    let text = e.to_string();
    let line = text.lines().next().unwrap_or_default();
    line.strip_prefix("error: ").unwrap_or(line).to_string()
}

/// The serve flags alone, reading no environment: for validating one file key at a time.
fn file_parser() -> clap::Command {
    ServeArgs::augment_args(clap::Command::new("pyexecd"))
        .mut_args(|a| a.env(None::<&str>))
        .no_binary_name(true)
}

/// Turns one TOML value into the command-line words of its flag.
fn words_for(arg: &clap::Arg, value: &toml::Value) -> Result<Vec<String>, String> {
    let flag = format!("--{}", arg.get_long().unwrap_or_default());
    let scalar = match value {
        toml::Value::String(s) => s.clone(),
        toml::Value::Integer(i) => i.to_string(),
        toml::Value::Float(f) => f.to_string(),
        toml::Value::Boolean(b) => {
            if matches!(arg.get_action(), ArgAction::SetTrue) {
                return Ok(if *b { vec![flag] } else { vec![] });
            }
            b.to_string()
        }
        toml::Value::Array(items) if matches!(arg.get_action(), ArgAction::Append) => {
            // A repeatable flag: one occurrence per item.
            let mut words = Vec::new();
            for item in items {
                words.extend(words_for(arg, item)?);
            }
            return Ok(words);
        }
        other => {
            return Err(format!(
                "expected a single value, found {}",
                other.type_str()
            ))
        }
    };
    if matches!(arg.get_action(), ArgAction::SetTrue) {
        return Err(format!("expected true or false, found {scalar:?}"));
    }
    Ok(vec![flag, scalar])
}

/// Reads `[[engine]]` or `[[extra_image]]` tables: each a table of its own keys, not a flag's
/// value.
fn tables_of<T: serde::de::DeserializeOwned>(
    path: &Path,
    kind: &str,
    items: &[toml::Value],
) -> Result<Vec<T>, LoadError> {
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            item.clone().try_into::<T>().map_err(|e| LoadError::Key {
                file: path.to_owned(),
                key: format!("{kind} #{}", i + 1),
                reason: e.to_string().trim().replace('\n', " "),
            })
        })
        .collect()
}

/// The file's tables, which are not flags.
#[derive(Default)]
struct Tables {
    engines: EngineTables,
    images: ImageTables,
}

/// Reads the file and returns the words to append for the keys no higher layer set.
fn file_words(
    path: &Path,
    given: &ArgMatches,
    from_file: &mut HashSet<String>,
    tables: &mut Tables,
) -> Result<Vec<String>, LoadError> {
    let file_err = |reason: String| LoadError::File {
        file: path.to_owned(),
        reason,
    };
    let text = std::fs::read_to_string(path).map_err(|e| file_err(e.to_string()))?;
    let table: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| file_err(e.to_string().trim().replace('\n', " ")))?;
    let parser = file_parser();
    let mut words = Vec::new();
    for (key, value) in &table {
        if let toml::Value::Array(items) = value {
            if items.iter().any(toml::Value::is_table) {
                match key.as_str() {
                    "engine" => {
                        tables.engines.file = Some(path.to_owned());
                        tables.engines.tables = tables_of::<EngineTable>(path, key, items)?;
                    }
                    "extra_image" => {
                        tables.images.file = Some(path.to_owned());
                        tables.images.tables = tables_of::<ImageTable>(path, key, items)?;
                    }
                    _ => {}
                }
                if matches!(key.as_str(), "engine" | "extra_image") {
                    from_file.insert(key.clone());
                    continue;
                }
            }
        }
        let key_err = |reason: String| LoadError::Key {
            file: path.to_owned(),
            key: key.clone(),
            reason,
        };
        let arg = parser
            .get_arguments()
            .find(|a| {
                a.get_long()
                    .is_some_and(|l| key_of(l) == *key && l != "config")
            })
            .ok_or_else(|| {
                let hint = match parser
                    .get_arguments()
                    .find(|a| a.get_long() == Some(key.as_str()) && key.contains('-'))
                {
                    Some(_) => format!(" (did you mean `{}`?)", key_of(key)),
                    None => String::new(),
                };
                key_err(format!("unknown key{hint}"))
            })?;
        let these = words_for(arg, value).map_err(key_err)?;
        parser
            .clone()
            .try_get_matches_from(&these)
            .map_err(|e| key_err(clap_reason(&e)))?;
        let higher = matches!(
            given.value_source(arg.get_id().as_str()),
            Some(ValueSource::CommandLine) | Some(ValueSource::EnvVariable)
        );
        if !higher {
            from_file.insert(key.clone());
            words.extend(these);
        }
    }
    Ok(words)
}

/// The matches of the serve flags, wherever they are (top level, `serve`, `check-config`).
fn serve_matches(matches: &ArgMatches) -> Option<&ArgMatches> {
    match matches.subcommand() {
        Some(("serve", m)) | Some(("check-config", m)) => Some(m),
        Some(_) => None,
        None => Some(matches),
    }
}

/// Parses `argv` (program name first) with the config file merged in.
pub fn load(argv: impl IntoIterator<Item = OsString>) -> Result<Loaded, LoadError> {
    let argv: Vec<OsString> = argv.into_iter().collect();
    let matches = Cli::command().try_get_matches_from(&argv)?;
    let Some(given) = serve_matches(&matches) else {
        return Ok(Loaded {
            cli: Cli::from_arg_matches(&matches)?,
            file: None,
            settings: Vec::new(),
        });
    };
    let file = match given.get_one::<PathBuf>("config") {
        Some(path) => Some(path.clone()),
        None => Some(PathBuf::from(DEFAULT_CONFIG)).filter(|p| p.exists()),
    };
    let mut from_file = HashSet::new();
    let mut tables = Tables::default();
    let words = match &file {
        Some(path) => file_words(path, given, &mut from_file, &mut tables)?,
        None => Vec::new(),
    };
    let mut merged = argv;
    merged.extend(words.into_iter().map(OsString::from));
    let matches = Cli::command().try_get_matches_from(&merged)?;
    let mut cli = Cli::from_arg_matches(&matches)?;
    match &mut cli.command {
        Some(Command::Serve(args)) | Some(Command::CheckConfig(args)) => {
            args.engine_tables = tables.engines;
            args.image_tables = tables.images;
        }
        Some(_) => {}
        None => {
            cli.serve.engine_tables = tables.engines;
            cli.serve.image_tables = tables.images;
        }
    }
    let serve = serve_matches(&matches).expect("same subcommand as before");
    let settings = Cli::command()
        .get_arguments()
        .filter_map(|arg| {
            let long = arg.get_long()?;
            let id = arg.get_id().as_str();
            if matches!(id, "help" | "version") {
                return None;
            }
            let key = key_of(long);
            let value = serve
                .get_raw(id)
                .map(|vals| {
                    vals.map(|v| v.to_string_lossy().into_owned())
                        .collect::<Vec<_>>()
                        .join(" ")
                })
                .unwrap_or_default();
            let origin = if from_file.contains(&key) {
                Origin::File(file.clone().expect("keys come from a file"))
            } else {
                match serve.value_source(id) {
                    Some(ValueSource::CommandLine) => Origin::Flag,
                    Some(ValueSource::EnvVariable) => Origin::Env(
                        arg.get_env()
                            .map(|e| e.to_string_lossy().into_owned())
                            .unwrap_or_default(),
                    ),
                    Some(ValueSource::DefaultValue) => Origin::Default,
                    _ => Origin::Unset,
                }
            };
            // A SetTrue flag that is off has the raw value "false" from its default.
            Some(Setting { key, value, origin })
        })
        .collect();
    Ok(Loaded {
        cli,
        file,
        settings,
    })
}

impl Loaded {
    /// Says where a bad value came from, so the message names the key and the file.
    pub fn explain(&self, err: &ConfigError) -> String {
        if err.at.is_some() {
            return err.to_string();
        }
        let key = key_of(err.flag);
        match self
            .settings
            .iter()
            .find(|s| s.key == key)
            .map(|s| &s.origin)
        {
            Some(Origin::File(path)) => {
                format!("{}: key `{key}`: {}", path.display(), err.reason)
            }
            Some(Origin::Env(name)) => format!("{name}: {}", err.reason),
            _ => err.to_string(),
        }
    }

    /// The effective configuration as `check-config` prints it; values derived from
    /// others when not set (certificate paths, the pool size) are shown as resolved.
    pub fn render(&self, cfg: &super::Config) -> String {
        let width = self.settings.iter().map(|s| s.key.len()).max().unwrap_or(0);
        let mut out = match &self.file {
            Some(f) => format!("# config file: {}\n", f.display()),
            None => format!("# config file: none ({DEFAULT_CONFIG} does not exist)\n"),
        };
        for s in &self.settings {
            let derived = match s.key.as_str() {
                "cert" => Some(cfg.cert.display().to_string()),
                "key" => Some(cfg.key.display().to_string()),
                "warm" => Some(cfg.warm.to_string()),
                // The images as resolved, `[[extra_image]]` tables included.
                "extra_image" => Some(
                    cfg.images[1..]
                        .iter()
                        .map(|i| format!("{}={}", i.name, i.tag))
                        .collect::<Vec<_>>()
                        .join(" "),
                ),
                "image_warm" => Some(
                    cfg.images
                        .iter()
                        .map(|i| format!("{}={}", i.name, i.warm))
                        .collect::<Vec<_>>()
                        .join(" "),
                ),
                "preload" => Some(
                    cfg.images
                        .iter()
                        .filter(|i| !i.preload.is_empty())
                        .map(|i| format!("{}={}", i.name, i.preload.join(",")))
                        .collect::<Vec<_>>()
                        .join(" "),
                ),
                _ => None,
            };
            // The images are shown as resolved wherever they were set: a table of the
            // file has no flag value to show.
            let resolved = matches!(s.key.as_str(), "extra_image" | "image_warm" | "preload");
            let (value, origin) = match (&s.origin, derived) {
                (origin, Some(v)) if resolved && *origin != Origin::Unset => {
                    (format!("{v:?}"), origin.to_string())
                }
                (Origin::Unset, Some(v)) => (format!("{v:?}"), "default".to_string()),
                (Origin::Unset, None) => ("-".to_string(), s.origin.to_string()),
                (origin, _) => (format!("{:?}", s.value), origin.to_string()),
            };
            out.push_str(&format!("{:width$} = {value:28} # {origin}\n", s.key));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Command;

    fn load_with(file: &str, args: &[&str]) -> Result<Loaded, LoadError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pyexecd.toml");
        std::fs::write(&path, file).unwrap();
        let mut argv: Vec<OsString> = vec!["pyexecd".into()];
        argv.extend(args.iter().map(OsString::from));
        argv.push("--config".into());
        argv.push(path.into_os_string());
        let loaded = load(argv);
        drop(dir);
        loaded
    }

    #[test]
    fn file_values_fill_in_below_flags() {
        let loaded = load_with(
            "max_sessions = 3\nsession_timeout = \"90s\"\nnetwork = true\nread_only = false\nmax_queue = 7\n",
            &["--max-queue", "9"],
        )
        .unwrap();
        let cfg = loaded.cli.serve.clone().resolve().unwrap();
        assert_eq!(cfg.max_sessions, 3);
        assert_eq!(cfg.session_timeout.as_secs(), 90);
        assert!(cfg.sandbox.network && !cfg.sandbox.read_only);
        assert_eq!(cfg.max_queue, 9, "the flag wins over the file");
        let origin = |k: &str| {
            loaded
                .settings
                .iter()
                .find(|s| s.key == k)
                .unwrap()
                .origin
                .clone()
        };
        assert!(matches!(origin("max_sessions"), Origin::File(_)));
        assert_eq!(origin("max_queue"), Origin::Flag);
        assert_eq!(origin("listen"), Origin::Default);
        assert_eq!(origin("runtime"), Origin::Unset);
        assert!(loaded
            .render(&cfg)
            .contains("warm                    = \"3\""));
    }

    #[test]
    fn bad_keys_and_values_name_the_key_and_the_file() {
        let err = load_with("max_sessions = 0\n", &[]).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("pyexecd.toml: key `max_sessions`: invalid value '0'"),
            "{text}"
        );
        let err = load_with("max-sessions = 2\n", &[]).unwrap_err();
        assert!(
            err.to_string()
                .contains("unknown key (did you mean `max_sessions`?)"),
            "{err}"
        );
        let err = load_with("bogus = 1\n", &[]).unwrap_err();
        assert!(
            err.to_string().contains("key `bogus`: unknown key"),
            "{err}"
        );
        let err = load_with("network = \"yes\"\n", &[]).unwrap_err();
        assert!(
            err.to_string()
                .contains("key `network`: expected true or false"),
            "{err}"
        );
        let err = load_with("max_sessions = [1]\n", &[]).unwrap_err();
        assert!(err.to_string().contains("expected a single value"), "{err}");
        let ok = load_with("cap_add = [\"CHOWN\", \"KILL\"]\n", &[]).unwrap();
        assert_eq!(ok.cli.serve.cap_add, ["CHOWN", "KILL"]);
        let err = load_with("this is not toml", &[]).unwrap_err();
        assert!(matches!(err, LoadError::File { .. }), "{err}");
    }

    #[test]
    fn resolve_errors_are_traced_to_the_file() {
        let loaded = load_with("tmp_size = \"1k\"\n", &[]).unwrap();
        let err = loaded.cli.serve.clone().resolve().unwrap_err();
        assert!(loaded
            .explain(&err)
            .contains("pyexecd.toml: key `tmp_size`: "));
        let loaded = load_with("tcp_memory = \"64k\"\n", &[]).unwrap();
        let err = loaded.cli.serve.clone().resolve().unwrap_err();
        assert!(
            loaded
                .explain(&err)
                .contains("pyexecd.toml: key `tcp_memory`: must be at least 1m"),
            "{}",
            loaded.explain(&err)
        );
        let err = load_with("tcp_memory = \"lots\"\n", &[]).unwrap_err();
        assert!(
            err.to_string()
                .contains("pyexecd.toml: key `tcp_memory`: invalid value 'lots'"),
            "{err}"
        );
    }

    #[test]
    fn proxy_protocol_is_off_unless_the_file_or_a_flag_says_so() {
        let loaded = load_with("", &[]).unwrap();
        assert!(!loaded.cli.serve.clone().resolve().unwrap().proxy_protocol);
        let loaded = load_with("proxy_protocol = true\n", &[]).unwrap();
        let cfg = loaded.cli.serve.clone().resolve().unwrap();
        assert!(cfg.proxy_protocol);
        let shown = loaded.render(&cfg);
        assert!(
            shown.lines().any(|l| l.starts_with("proxy_protocol ")
                && l.contains("= \"true\"")
                && l.contains("# file ")),
            "{shown}"
        );
    }

    #[test]
    fn engine_tables_come_from_the_file_with_their_own_errors() {
        let loaded = load_with(
            "max_sessions = 4\n[[engine]]\nurl = \"unix:///var/run/docker.sock\"\nname = \"here\"\nwarm = 1\n",
            &[],
        )
        .unwrap();
        let cfg = loaded.cli.serve.clone().resolve().unwrap();
        assert_eq!(cfg.engines.len(), 1);
        assert_eq!(
            (cfg.engines[0].name.as_str(), cfg.engines[0].warm),
            ("here", 1)
        );
        assert_eq!(cfg.warm, 1, "the engines' pools add up");
        let err = load_with(
            "[[engine]]\nurl = \"unix:///x.sock\"\nmax_session = 2\n",
            &[],
        )
        .unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("key `engine #1`") && text.contains("unknown field `max_session`"),
            "{text}"
        );
        let loaded = load_with("[[engine]]\nurl = \"tcp://10.0.0.9\"\n", &[]).unwrap();
        let err = loaded.cli.serve.clone().resolve().unwrap_err();
        assert!(
            loaded
                .explain(&err)
                .contains("pyexecd.toml: [[engine]] #1: key `cert_path`")
                || loaded.explain(&err).contains("invalid --engine-cert-path"),
            "{}",
            loaded.explain(&err)
        );
    }

    #[test]
    fn image_tables_and_keys_come_from_the_file() {
        let loaded = load_with(
            "image = \"pyexec/sandbox:bookworm-1\"\n[[extra_image]]\nname = \"science\"\ntag = \"pyexec/sandbox:science\"\nwarm = 2\npreload = [\"pandas\", \"matplotlib.pyplot\"]\n",
            &[],
        )
        .unwrap();
        let cfg = loaded.cli.serve.clone().resolve().unwrap();
        assert_eq!(cfg.images.len(), 2);
        assert_eq!(
            (cfg.images[1].name.as_str(), cfg.images[1].warm),
            ("science", 2)
        );
        assert_eq!(cfg.images[1].preload, ["pandas", "matplotlib.pyplot"]);
        let shown = loaded.render(&cfg);
        assert!(
            shown.contains("\"science=pyexec/sandbox:science\"")
                && shown.contains("\"default=8 science=2\""),
            "{shown}"
        );
        let loaded =
            load_with("extra_image = [\"science=pyexec/sandbox:science\"]\n", &[]).unwrap();
        let cfg = loaded.cli.serve.clone().resolve().unwrap();
        assert_eq!(cfg.images[1].tag, "pyexec/sandbox:science");
        assert_eq!(cfg.warm_total(), 8, "the pools within the slots");
        let loaded = load_with("extra_image = [\"science\"]\n", &[]).unwrap();
        let err = loaded.cli.serve.clone().resolve().unwrap_err();
        assert!(
            loaded
                .explain(&err)
                .contains("pyexecd.toml: key `extra_image`: `science`: expected NAME=TAG"),
            "{}",
            loaded.explain(&err)
        );
        let err = load_with("[[extra_image]]\nname = \"x\"\n", &[]).unwrap_err();
        assert!(err.to_string().contains("key `extra_image #1`"), "{err}");
    }

    #[test]
    fn subcommands_take_the_file_too() {
        let loaded = load_with("max_sessions = 5\n", &["check-config"]).unwrap();
        match loaded.cli.command {
            Some(Command::CheckConfig(args)) => assert_eq!(args.max_sessions, 5),
            other => panic!("{other:?}"),
        }
    }
}
