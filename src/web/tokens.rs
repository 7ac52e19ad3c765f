//! `--tokens FILE`: the playground's bearer tokens, each naming a client identity, and
//! their constant-time lookup.
//!
//! The file has one `NAME TOKEN` per line (any run of spaces or tabs between); blank
//! lines and lines starting with `#` are skipped. NAME is 1–64 of `[A-Za-z0-9._@-]` and
//! may repeat (two tokens for one client, while one is being replaced); TOKEN is 16–256
//! of `[A-Za-z0-9_-]` (base64url, so it fits a `Sec-WebSocket-Protocol` value) and may
//! not repeat. A browser presenting a token is the client `token:NAME` for per-client
//! limits and logs. Errors name the line, never the token.

use std::path::{Path, PathBuf};

use ring::digest::{digest, SHA256};
use subtle::ConstantTimeEq;

const MIN_TOKEN: usize = 16;
const MAX_TOKEN: usize = 256;
const MAX_NAME: usize = 64;
/// Far more than a classroom needs; bounds the work of one lookup.
const MAX_TOKENS: usize = 10_000;

/// Why a tokens file was refused.
#[derive(Debug, thiserror::Error)]
pub enum TokensError {
    #[error("cannot read the tokens file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}:{line}: {reason}")]
    Line {
        path: PathBuf,
        line: usize,
        reason: String,
    },
    #[error("{path}: no tokens (every browser would be refused)")]
    Empty { path: PathBuf },
    #[error("{path}: more than {MAX_TOKENS} tokens")]
    TooMany { path: PathBuf },
}

/// The tokens, kept as SHA-256 digests: a lookup compares digests of equal length, so its
/// time tells neither a token's bytes nor its length.
pub struct Tokens {
    entries: Vec<([u8; 32], String)>,
}

fn sha256(token: &[u8]) -> [u8; 32] {
    digest(&SHA256, token)
        .as_ref()
        .try_into()
        .expect("SHA-256 is 32 bytes")
}

/// A token's characters: base64url, which is also a valid WebSocket subprotocol token.
pub fn token_chars_ok(token: &str) -> bool {
    token
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

impl Tokens {
    pub fn load(path: &Path) -> Result<Tokens, TokensError> {
        let text = std::fs::read_to_string(path).map_err(|source| TokensError::Read {
            path: path.to_owned(),
            source,
        })?;
        Tokens::parse(&text).map_err(|e| match e {
            Parse::Line(line, reason) => TokensError::Line {
                path: path.to_owned(),
                line,
                reason,
            },
            Parse::Empty => TokensError::Empty {
                path: path.to_owned(),
            },
            Parse::TooMany => TokensError::TooMany {
                path: path.to_owned(),
            },
        })
    }

    fn parse(text: &str) -> Result<Tokens, Parse> {
        let mut entries: Vec<([u8; 32], String)> = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line_no = i + 1;
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let fields: Vec<&str> = line.split_whitespace().collect();
            let [name, token] = fields[..] else {
                return Err(Parse::Line(
                    line_no,
                    format!("expected `NAME TOKEN`, found {} fields", fields.len()),
                ));
            };
            let name_ok = (1..=MAX_NAME).contains(&name.len())
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._@-".contains(&b));
            if !name_ok {
                return Err(Parse::Line(
                    line_no,
                    format!("the name must be 1-{MAX_NAME} of A-Z a-z 0-9 . _ @ -"),
                ));
            }
            if !(MIN_TOKEN..=MAX_TOKEN).contains(&token.len()) || !token_chars_ok(token) {
                return Err(Parse::Line(
                    line_no,
                    format!(
                        "the token of {name} must be {MIN_TOKEN}-{MAX_TOKEN} of A-Z a-z 0-9 - _"
                    ),
                ));
            }
            let hash = sha256(token.as_bytes());
            if entries.iter().any(|(h, _)| *h == hash) {
                return Err(Parse::Line(
                    line_no,
                    format!("the token of {name} is already in the file"),
                ));
            }
            if entries.len() == MAX_TOKENS {
                return Err(Parse::TooMany);
            }
            entries.push((hash, name.to_string()));
        }
        if entries.is_empty() {
            return Err(Parse::Empty);
        }
        Ok(Tokens { entries })
    }

    /// The client identity of a presented token, if it is one of ours. Every entry is
    /// compared, in constant time each, whatever matched.
    pub fn identify(&self, presented: &str) -> Option<String> {
        let hash = sha256(presented.as_bytes());
        let mut found = None;
        for (h, name) in &self.entries {
            if bool::from(h.ct_eq(&hash)) {
                found = Some(name);
            }
        }
        found.map(|name| format!("token:{name}"))
    }

    pub fn count(&self) -> usize {
        self.entries.len()
    }
}

enum Parse {
    Line(usize, String),
    Empty,
    TooMany,
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "aaaaaaaaaaaaaaaaaaaa";
    const B: &str = "B-b_bbbbbbbbbbbbbbbb";

    #[test]
    fn a_file_maps_each_token_to_its_name() {
        let t = Tokens::parse(&format!(
            "# class of 2026\n\nalice {A}\n  bob\t{B}  \nalice aaaaaaaaaaaaaaaaaaaaaaaa\n"
        ))
        .ok()
        .unwrap();
        assert_eq!(t.count(), 3);
        assert_eq!(t.identify(A).as_deref(), Some("token:alice"));
        assert_eq!(t.identify(B).as_deref(), Some("token:bob"));
        assert_eq!(t.identify("").as_deref(), None);
        assert_eq!(t.identify(&A[1..]).as_deref(), None);
        assert_eq!(t.identify(&format!("{A}a")).as_deref(), None);
    }

    #[test]
    fn bad_lines_are_named_by_number_and_never_show_the_token() {
        let line = |text: &str| match Tokens::parse(text) {
            Err(Parse::Line(n, reason)) => {
                assert!(!reason.contains("aaaaaaaa"), "{reason}");
                n
            }
            _ => panic!("accepted: {text:?}"),
        };
        assert_eq!(line(&format!("alice {A}\nbob\n")), 2);
        assert_eq!(line(&format!("alice {A} extra\n")), 1);
        assert_eq!(line("alice short\n"), 1);
        assert_eq!(line(&format!("alice {A}=\n")), 1, "padding is no base64url");
        assert_eq!(line(&format!("al/ce {A}\n")), 1);
        assert_eq!(
            line(&format!("alice {A}\nbob {A}\n")),
            2,
            "a repeated token"
        );
        assert!(matches!(Tokens::parse("# nobody\n"), Err(Parse::Empty)));
    }

    #[test]
    fn load_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens");
        std::fs::write(&path, "alice x\n").unwrap();
        let e = Tokens::load(&path).err().unwrap().to_string();
        assert!(e.starts_with(&format!("{}:1: ", path.display())), "{e}");
        assert!(Tokens::load(&dir.path().join("none")).is_err());
    }
}
