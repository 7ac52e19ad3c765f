//! The images a daemon serves: `--image` (the default, named `default`), more by name
//! (`--extra-image NAME=TAG`, `[[extra_image]]` tables), and per image its warm spares
//! (`--image-warm NAME=N`) and the modules its waiting interpreter imports ahead of the
//! script (`--preload [NAME=]MODULE,MODULE`), validated with the key that set them.
//!
//! Precedence follows the engines: `--extra-image` (flag or `PYEXECD_EXTRA_IMAGE`)
//! replaces the file's list, but an `[[extra_image]]` table of the same name still lends that
//! image its warm count and preload list; `--image-warm` and `--preload` win over a
//! table's `warm` and `preload`.

use serde::Deserialize;

use super::ConfigError;

/// How sessions name the image of `--image` (and sessions that name none get).
pub const DEFAULT_NAME: &str = "default";
/// Warm spares an extra image gets when nothing says otherwise: one, so that the first
/// session of a big image does not pay its start, without a big image's pool taking
/// every slot.
pub const EXTRA_WARM: usize = 1;
/// Longest image name: it travels in HELLO and error messages.
const MAX_NAME: usize = 32;
/// Most modules one image preloads: a list, not a program.
const MAX_PRELOAD: usize = 32;

/// One image the daemon serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageConfig {
    /// What sessions ask for (`HELLO.image`, `pyexec --image NAME`).
    pub name: String,
    /// The Docker image.
    pub tag: String,
    /// Warm spares of this image, over all engines.
    pub warm: usize,
    /// Modules a waiting interpreter of this image imports before its script arrives.
    pub preload: Vec<String>,
}

/// An `[[extra_image]]` table of the config file.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ImageTable {
    pub name: String,
    pub tag: String,
    pub warm: Option<u32>,
    #[serde(default)]
    pub preload: Vec<String>,
}

/// The `[[extra_image]]` tables of one file, with the file for messages.
#[derive(Debug, Clone, Default)]
pub struct ImageTables {
    pub file: Option<std::path::PathBuf>,
    pub tables: Vec<ImageTable>,
}

impl ImageTables {
    fn place(&self, index: usize) -> String {
        let file = self
            .file
            .as_deref()
            .map_or(String::new(), |f| format!("{}: ", f.display()));
        format!("{file}[[extra_image]] #{}", index + 1)
    }
}

/// What `resolve` needs besides the tables.
pub struct ImageArgs<'a> {
    pub image: &'a str,
    pub extra: &'a [String],
    pub warm: &'a [String],
    pub preload: &'a [String],
    /// The default image's pool (`--warm`, already resolved).
    pub default_warm: usize,
    pub max_sessions: usize,
}

fn flag_err(flag: &'static str, reason: String) -> ConfigError {
    ConfigError {
        flag,
        reason,
        at: None,
    }
}

/// A name a session can send and a log can show: short, plain, lower case.
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME
        && name.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "-_.".contains(c))
}

/// A dotted module path (`matplotlib.pyplot`): the bootstrap passes it to `__import__`,
/// so nothing but identifiers and dots may reach it.
fn valid_module(module: &str) -> bool {
    module.split('.').all(|part| {
        part.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
            && part.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
    })
}

fn check_modules(modules: &[String]) -> Result<(), String> {
    if modules.len() > MAX_PRELOAD {
        return Err(format!("at most {MAX_PRELOAD} modules per image"));
    }
    match modules.iter().find(|m| !valid_module(m)) {
        Some(bad) => Err(format!(
            "`{bad}` is not a module name (dotted Python identifiers, e.g. matplotlib.pyplot)"
        )),
        None => Ok(()),
    }
}

/// `NAME=VALUE`, or `None` when there is no `=`.
fn split_pair(text: &str) -> Option<(&str, &str)> {
    text.split_once('=').map(|(n, v)| (n.trim(), v.trim()))
}

/// The images to serve, the default first, each checked.
pub fn resolve(args: ImageArgs<'_>, tables: &ImageTables) -> Result<Vec<ImageConfig>, ConfigError> {
    let mut images = vec![ImageConfig {
        name: DEFAULT_NAME.into(),
        tag: args.image.to_string(),
        warm: args.default_warm,
        preload: Vec::new(),
    }];
    // Each extra image with the table that configures it (its index), if any.
    let mut tabled: Vec<Option<usize>> = vec![None];
    let table_of = |name: &str| tables.tables.iter().position(|t| t.name == name);
    let mut add = |images: &mut Vec<ImageConfig>,
                   name: &str,
                   tag: &str,
                   table: Option<usize>,
                   err: &dyn Fn(String) -> ConfigError|
     -> Result<(), ConfigError> {
        if !valid_name(name) {
            return Err(err(format!(
                "`{name}`: an image name is 1-{MAX_NAME} of a-z, 0-9, '-', '_' and '.'"
            )));
        }
        if images.iter().any(|i| i.name == name) {
            return Err(err(format!(
                "`{name}` is given twice (`{DEFAULT_NAME}` is --image's)"
            )));
        }
        if tag.is_empty() || tag.contains(char::is_whitespace) {
            return Err(err(format!("`{tag}` is not an image tag")));
        }
        let warm = match table.and_then(|i| tables.tables[i].warm) {
            Some(w) => w as usize,
            None => EXTRA_WARM.min(args.default_warm),
        };
        let preload = table.map_or(Vec::new(), |i| tables.tables[i].preload.clone());
        images.push(ImageConfig {
            name: name.to_string(),
            tag: tag.to_string(),
            warm,
            preload,
        });
        tabled.push(table);
        Ok(())
    };
    if !args.extra.is_empty() {
        for text in args.extra {
            let err = |reason: String| flag_err("extra-image", reason);
            let Some((name, tag)) = split_pair(text) else {
                return Err(err(format!(
                    "`{text}`: expected NAME=TAG, e.g. science=pyexec/sandbox:science"
                )));
            };
            add(&mut images, name, tag, table_of(name), &err)?;
        }
    } else {
        for (i, table) in tables.tables.iter().enumerate() {
            let err = |reason: String| ConfigError {
                flag: "extra-image",
                reason,
                at: Some(tables.place(i)),
            };
            add(&mut images, &table.name, &table.tag, Some(i), &err)?;
        }
    }
    // Tables' own keys are checked once their image is known to be served.
    for (image, table) in images.iter().zip(&tabled) {
        let Some(i) = *table else { continue };
        let at = Some(tables.place(i));
        if image.warm > args.max_sessions {
            return Err(ConfigError {
                flag: "image-warm",
                reason: format!(
                    "key `warm`: {} is more than --max-sessions ({})",
                    image.warm, args.max_sessions
                ),
                at,
            });
        }
        check_modules(&image.preload).map_err(|reason| ConfigError {
            flag: "preload",
            reason: format!("key `preload`: {reason}"),
            at,
        })?;
    }
    let names = |images: &[ImageConfig]| {
        images
            .iter()
            .map(|i| i.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    for text in args.warm {
        let err = |reason: String| flag_err("image-warm", reason);
        let (name, count) = split_pair(text)
            .ok_or_else(|| err(format!("`{text}`: expected NAME=N, e.g. science=1")))?;
        let count: usize = count
            .parse()
            .map_err(|_| err(format!("`{text}`: `{count}` is not a number")))?;
        if count > args.max_sessions {
            return Err(err(format!(
                "`{text}`: more than --max-sessions ({})",
                args.max_sessions
            )));
        }
        let known = names(&images);
        let image = images.iter_mut().find(|i| i.name == name).ok_or_else(|| {
            err(format!(
                "`{name}` is not an image served (they are: {known})"
            ))
        })?;
        image.warm = count;
    }
    for text in args.preload {
        let err = |reason: String| flag_err("preload", reason);
        let (name, list) = split_pair(text).unwrap_or((DEFAULT_NAME, text.trim()));
        let modules: Vec<String> = list
            .split(',')
            .map(str::trim)
            .filter(|m| !m.is_empty())
            .map(String::from)
            .collect();
        check_modules(&modules).map_err(|r| err(format!("`{text}`: {r}")))?;
        let known = names(&images);
        let image = images.iter_mut().find(|i| i.name == name).ok_or_else(|| {
            err(format!(
                "`{name}` is not an image served (they are: {known})"
            ))
        })?;
        image.preload = modules;
    }
    Ok(images)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    fn run(
        extra: &[&str],
        warm: &[&str],
        preload: &[&str],
        tables: &ImageTables,
    ) -> Result<Vec<ImageConfig>, ConfigError> {
        let (extra, warm, preload) = (strings(extra), strings(warm), strings(preload));
        resolve(
            ImageArgs {
                image: "pyexec/sandbox:bookworm-1",
                extra: &extra,
                warm: &warm,
                preload: &preload,
                default_warm: 8,
                max_sessions: 8,
            },
            tables,
        )
    }

    #[test]
    fn the_default_comes_first_and_extras_get_one_spare() {
        let none = ImageTables::default();
        let images = run(&[], &[], &[], &none).unwrap();
        assert_eq!(images.len(), 1);
        assert_eq!((images[0].name.as_str(), images[0].warm), ("default", 8));
        let images = run(
            &["science=pyexec/sandbox:science"],
            &[],
            &["science=pandas, matplotlib.pyplot"],
            &none,
        )
        .unwrap();
        assert_eq!(images[1].name, "science");
        assert_eq!(images[1].tag, "pyexec/sandbox:science");
        assert_eq!(images[1].warm, EXTRA_WARM);
        assert_eq!(images[1].preload, ["pandas", "matplotlib.pyplot"]);
        let images = run(
            &["science=t:1"],
            &["science=0", "default=2"],
            &["json"],
            &none,
        )
        .unwrap();
        assert_eq!((images[0].warm, images[1].warm), (2, 0));
        assert_eq!(images[0].preload, ["json"], "no NAME= is the default image");
    }

    #[test]
    fn bad_values_name_the_flag() {
        let none = ImageTables::default();
        for (extra, warm, preload, flag, says) in [
            (
                &["science"][..],
                &[][..],
                &[][..],
                "extra-image",
                "NAME=TAG",
            ),
            (&["Science=t"], &[], &[], "extra-image", "image name"),
            (&["default=t"], &[], &[], "extra-image", "twice"),
            (&["a=t", "a=u"], &[], &[], "extra-image", "twice"),
            (&["a="], &[], &[], "extra-image", "not an image tag"),
            (
                &["a=t"],
                &["b=1"],
                &[],
                "image-warm",
                "they are: default, a",
            ),
            (&["a=t"], &["a=many"], &[], "image-warm", "not a number"),
            (&["a=t"], &["a=9"], &[], "image-warm", "--max-sessions"),
            (&["a=t"], &[], &["a=os;rm"], "preload", "not a module name"),
            (&["a=t"], &[], &["b=os"], "preload", "not an image served"),
        ] {
            let err = run(extra, warm, preload, &none).unwrap_err();
            assert_eq!(err.flag, flag, "{err}");
            assert!(err.to_string().contains(says), "{err}");
        }
    }

    #[test]
    fn tables_add_images_and_flags_win() {
        let tables = ImageTables {
            file: Some("/etc/pyexec/pyexecd.toml".into()),
            tables: vec![ImageTable {
                name: "science".into(),
                tag: "pyexec/sandbox:science".into(),
                warm: Some(2),
                preload: strings(&["pandas"]),
            }],
        };
        let images = run(&[], &[], &[], &tables).unwrap();
        assert_eq!(
            (images[1].warm, images[1].preload.clone()),
            (2, strings(&["pandas"]))
        );
        let images = run(&["science=other:1"], &["science=0"], &[], &tables).unwrap();
        assert_eq!((images[1].tag.as_str(), images[1].warm), ("other:1", 0));
        let bad = ImageTables {
            tables: vec![ImageTable {
                name: "x".into(),
                tag: "t".into(),
                preload: strings(&["no way"]),
                ..Default::default()
            }],
            ..tables
        };
        let err = run(&[], &[], &[], &bad).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("/etc/pyexec/pyexecd.toml: [[extra_image]] #1: key `preload`"),
            "{err}"
        );
    }
}
