//! The layout rule of issue 10, item 1, checked on the source: no import cycle among the
//! top-level modules of `src/` (a module and its children count as one; `pub use`
//! re-exports count), and an actor module (session, container, supervisor, listener)
//! never refers to another actor module: it imports the messages, the engine seam, the
//! protocol and the status instead.
//!
//! The modules are found as the compiler finds them, from the `mod` declarations of
//! `src/lib.rs` down; `#[cfg(test)]` items (inline test modules, test-only files) are
//! skipped. A reference is any path through `crate::` (or `super::` up to the crate root)
//! in code: comments and string literals are not code. Pure Rust, no dependency.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::{Path, PathBuf};

/// The modules whose code is an actor: none of them may name another.
const ACTORS: [&str; 4] = ["session", "container", "supervisor", "listener"];

// ---- A lexer that knows just enough Rust ---------------------------------------------

#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    Ident(String),
    /// `::`
    PathSep,
    Punct(char),
    /// A string, char or number literal (its value does not matter here).
    Literal,
}

/// Tokens with their line numbers; comments and whitespace dropped.
fn lex(text: &str) -> Vec<(Tok, usize)> {
    let c: Vec<char> = text.chars().collect();
    let (mut i, mut line, mut out) = (0, 1, Vec::new());
    let at = |i: usize| c.get(i).copied().unwrap_or('\0');
    while i < c.len() {
        let ch = c[i];
        let start_line = line;
        if ch == '\n' {
            line += 1;
            i += 1;
        } else if ch.is_whitespace() {
            i += 1;
        } else if ch == '/' && at(i + 1) == '/' {
            while i < c.len() && c[i] != '\n' {
                i += 1;
            }
        } else if ch == '/' && at(i + 1) == '*' {
            let mut depth = 0;
            while i < c.len() {
                if c[i] == '/' && at(i + 1) == '*' {
                    depth += 1;
                    i += 2;
                } else if c[i] == '*' && at(i + 1) == '/' {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    line += (c[i] == '\n') as usize;
                    i += 1;
                }
            }
        } else if let Some(len) = raw_string_start(&c, i) {
            // r"…", r#"…"#, br#"…"#: ends at a quote followed by as many #.
            let hashes = len - 1 - (c[i] == 'b' || c[i] == 'c') as usize - 1;
            i += len;
            loop {
                if i >= c.len() {
                    break;
                }
                if c[i] == '"' && (1..=hashes).all(|k| at(i + k) == '#') {
                    i += 1 + hashes;
                    break;
                }
                line += (c[i] == '\n') as usize;
                i += 1;
            }
            out.push((Tok::Literal, start_line));
        } else if ch == '"' || ((ch == 'b' || ch == 'c') && at(i + 1) == '"') {
            i += if ch == '"' { 1 } else { 2 };
            while i < c.len() && c[i] != '"' {
                if c[i] == '\\' {
                    i += 1;
                }
                line += (at(i) == '\n') as usize;
                i += 1;
            }
            i += 1;
            out.push((Tok::Literal, start_line));
        } else if ch == '\'' || (ch == 'b' && at(i + 1) == '\'') {
            // A char literal ('a', '\n', b'x'), or a lifetime ('a), which is neither.
            let q = if ch == 'b' { i + 1 } else { i };
            if at(q + 1) == '\\' {
                i = q + 3; // past the backslash and the escaped character
                while i < c.len() && c[i] != '\'' {
                    i += 1;
                }
                i += 1;
                out.push((Tok::Literal, start_line));
            } else if at(q + 2) == '\'' {
                i = q + 3;
                out.push((Tok::Literal, start_line));
            } else {
                i = q + 1; // a lifetime: its name is lexed as an identifier, harmlessly
            }
        } else if ch == 'r' && at(i + 1) == '#' && is_ident_start(at(i + 2)) {
            i += 2; // a raw identifier
        } else if is_ident_start(ch) {
            let s = i;
            while i < c.len() && (c[i].is_alphanumeric() || c[i] == '_') {
                i += 1;
            }
            out.push((Tok::Ident(c[s..i].iter().collect()), start_line));
        } else if ch.is_ascii_digit() {
            while i < c.len() && (c[i].is_alphanumeric() || c[i] == '_' || c[i] == '.') {
                if c[i] == '.' && !at(i + 1).is_ascii_digit() {
                    break;
                }
                i += 1;
            }
            out.push((Tok::Literal, start_line));
        } else if ch == ':' && at(i + 1) == ':' {
            out.push((Tok::PathSep, start_line));
            i += 2;
        } else {
            out.push((Tok::Punct(ch), start_line));
            i += 1;
        }
    }
    out
}

fn is_ident_start(ch: char) -> bool {
    ch.is_alphabetic() || ch == '_'
}

/// The length of a raw string's opening (`r#"` is 3) if one starts at `i`.
fn raw_string_start(c: &[char], i: usize) -> Option<usize> {
    let mut j = i;
    if matches!(c.get(j), Some('b') | Some('c')) {
        j += 1;
    }
    if c.get(j) != Some(&'r') {
        return None;
    }
    j += 1;
    while c.get(j) == Some(&'#') {
        j += 1;
    }
    (c.get(j) == Some(&'"')).then_some(j + 1 - i)
}

// ---- Items: what is test-only, which modules are declared, which paths are named ------

/// One source file, cut down to what the layout needs.
#[derive(Debug, Default)]
struct Parsed {
    /// `mod name;` declarations outside `#[cfg(test)]`, with a `#[path]` if given.
    mods: Vec<(String, Option<String>)>,
    /// `(first segment after the crate root, line)` for every path that goes through it.
    roots: Vec<(String, usize)>,
    /// `(super count, first segment after them, line)` for `super::` paths.
    supers: Vec<(usize, String, usize)>,
    /// What `pub use a::…;` makes visible here: `(a name it brings in, a)`.
    reexports: Vec<(String, String)>,
}

fn ident(t: Option<&(Tok, usize)>) -> Option<&str> {
    match t {
        Some((Tok::Ident(s), _)) => Some(s),
        _ => None,
    }
}

fn punct(t: Option<&(Tok, usize)>, p: char) -> bool {
    matches!(t, Some((Tok::Punct(c), _)) if *c == p)
}

/// The index just past the bracket group opening at `i`.
fn skip_group(toks: &[(Tok, usize)], mut i: usize) -> usize {
    let mut depth = 0i32;
    while i < toks.len() {
        match toks[i].0 {
            Tok::Punct('(' | '[' | '{') => depth += 1,
            Tok::Punct(')' | ']' | '}') => {
                depth -= 1;
                if depth == 0 {
                    return i + 1;
                }
            }
            _ => {}
        }
        i += 1;
    }
    i
}

/// The index just past the item starting at `i` (its attributes included): at its `;`
/// or at the end of its first top-level `{…}` block.
fn skip_item(toks: &[(Tok, usize)], mut i: usize) -> usize {
    while i < toks.len() {
        match toks[i].0 {
            Tok::Punct(';') => return i + 1,
            Tok::Punct('{') => return skip_group(toks, i),
            Tok::Punct('(' | '[') => i = skip_group(toks, i),
            _ => i += 1,
        }
    }
    i
}

/// Whether the attribute starting at `i` (`#` `[` …) is `#[cfg(test)]`; and its end.
fn attribute(toks: &[(Tok, usize)], i: usize) -> (bool, usize) {
    let end = skip_group(toks, i + 1);
    let body: Vec<&Tok> = toks[i + 2..end - 1].iter().map(|(t, _)| t).collect();
    let cfg_test = body
        == [
            &Tok::Ident("cfg".into()),
            &Tok::Punct('('),
            &Tok::Ident("test".into()),
            &Tok::Punct(')'),
        ];
    (cfg_test, end)
}

/// The value of a `#[path = "…"]` attribute, read from the raw text of its line.
fn path_attribute(text: &str, line: usize) -> Option<String> {
    let l = text.lines().nth(line - 1)?;
    let rest = &l[l.find("path")?..];
    let q = rest.find('"')?;
    let value = &rest[q + 1..];
    Some(value[..value.find('"')?].to_string())
}

/// The first segment of each path a use tree starting at `i` (after `crate::`) names.
fn tree_heads(toks: &[(Tok, usize)], i: usize) -> Vec<(String, usize)> {
    if let Some(name) = ident(toks.get(i)) {
        return vec![(name.to_string(), toks[i].1)];
    }
    if !punct(toks.get(i), '{') {
        return Vec::new();
    }
    let (end, mut heads, mut j) = (skip_group(toks, i), Vec::new(), i + 1);
    while j < end - 1 {
        if let Some(name) = ident(toks.get(j)) {
            if name != "self" {
                heads.push((name.to_string(), toks[j].1));
            }
        }
        // On to the next element of this group.
        while j < end - 1 && !punct(toks.get(j), ',') {
            j = match toks[j].0 {
                Tok::Punct('{' | '(' | '[') => skip_group(toks, j),
                _ => j + 1,
            };
        }
        j += 1;
    }
    heads
}

fn parse(text: &str) -> Parsed {
    let toks = lex(text);
    let mut p = Parsed::default();
    let mut i = 0;
    let mut path_attr = None;
    // Braces open, and those that opened an inline module: `super` inside one of those
    // names its parent in the same file.
    let (mut depth, mut inline) = (0usize, Vec::new());
    while i < toks.len() {
        if punct(toks.get(i), '#') && punct(toks.get(i + 1), '[') {
            let (cfg_test, end) = attribute(&toks, i);
            if ident(toks.get(i + 2)) == Some("path") {
                path_attr = path_attribute(text, toks[i].1);
            }
            if cfg_test {
                path_attr = None;
                i = skip_item(&toks, end);
            } else {
                i = end;
            }
            continue;
        }
        if punct(toks.get(i), '#') && punct(toks.get(i + 1), '!') {
            i = skip_group(&toks, i + 2); // an inner attribute
            continue;
        }
        match ident(toks.get(i)) {
            Some("mod") => {
                if let (Some(name), true) = (ident(toks.get(i + 1)), punct(toks.get(i + 2), ';')) {
                    p.mods.push((name.to_string(), path_attr.take()));
                }
            }
            Some("crate") if toks.get(i + 1).map(|t| &t.0) == Some(&Tok::PathSep) => {
                p.roots.extend(tree_heads(&toks, i + 2));
            }
            Some("super") if i == 0 || toks[i - 1].0 != Tok::PathSep => {
                let (mut n, mut j) = (0, i);
                while ident(toks.get(j)) == Some("super")
                    && toks.get(j + 1).map(|t| &t.0) == Some(&Tok::PathSep)
                {
                    n += 1;
                    j += 2;
                }
                if n > inline.len() {
                    for (head, line) in tree_heads(&toks, j) {
                        p.supers.push((n - inline.len(), head, line));
                    }
                }
            }
            Some("use") if i >= 1 && ident(toks.get(i - 1)) == Some("pub") => {
                // `pub use a::b;`, `pub use a::b as c;`, `pub use a::{b, c};` at the crate
                // root: each name after the first may be reached through `crate::`.
                let end = skip_item(&toks, i);
                let mut names = toks[i + 1..end].iter().filter_map(|(t, _)| match t {
                    Tok::Ident(s) => Some(s.clone()),
                    _ => None,
                });
                if let Some(first) = names.next() {
                    p.reexports.extend(names.map(|name| (name, first.clone())));
                }
            }
            _ => {}
        }
        match toks[i].0 {
            Tok::Punct('{') => {
                depth += 1;
                if i >= 2 && ident(toks.get(i - 2)) == Some("mod") {
                    inline.push(depth);
                }
                path_attr = None;
            }
            Tok::Punct('}') => {
                if inline.last() == Some(&depth) {
                    inline.pop();
                }
                depth = depth.saturating_sub(1);
                path_attr = None;
            }
            Tok::Punct(';') => path_attr = None,
            _ => {}
        }
        i += 1;
    }
    p
}

// ---- The crate: modules, files and the references between top-level modules -----------

/// Where a top-level module names another: `(from, to) → "file:line"` (the first place).
type Edges = BTreeMap<(String, String), String>;

/// The source files, by path relative to the crate root (`src/lib.rs`, ...).
trait Sources {
    fn read(&self, path: &Path) -> Option<String>;
}

impl Sources for BTreeMap<PathBuf, String> {
    fn read(&self, path: &Path) -> Option<String> {
        self.get(path).cloned()
    }
}

struct Disk(PathBuf);

impl Sources for Disk {
    fn read(&self, path: &Path) -> Option<String> {
        std::fs::read_to_string(self.0.join(path)).ok()
    }
}

/// The file a `mod name;` in the file `parent` refers to.
fn child_file(
    src: &dyn Sources,
    parent: &Path,
    name: &str,
    path_attr: Option<&str>,
) -> Option<PathBuf> {
    let dir = parent.parent().unwrap_or(Path::new(""));
    if let Some(p) = path_attr {
        return Some(dir.join(p));
    }
    let stem = parent.file_stem()?.to_str()?;
    let base = match stem {
        "lib" | "main" | "mod" => dir.to_path_buf(),
        _ => dir.join(stem),
    };
    [
        base.join(format!("{name}.rs")),
        base.join(name).join("mod.rs"),
    ]
    .into_iter()
    .find(|p| src.read(p).is_some())
}

/// Every reference between top-level modules, and the modules themselves.
fn references(src: &dyn Sources) -> (BTreeSet<String>, Edges) {
    let root = Path::new("src/lib.rs");
    let lib = parse(&src.read(root).expect("src/lib.rs"));
    let modules: BTreeSet<String> = lib.mods.iter().map(|(m, _)| m.clone()).collect();
    // `pub use engine::docker;` at the root: `crate::docker` is `engine`.
    let mut aliases: BTreeMap<String, String> = lib.reexports.into_iter().collect();
    aliases.retain(|_, target| modules.contains(target));
    let top = |name: &str| -> Option<String> {
        if modules.contains(name) {
            Some(name.to_string())
        } else {
            aliases.get(name).cloned()
        }
    };

    let mut edges = Edges::new();
    // (file, module path from the root)
    let mut todo: VecDeque<(PathBuf, Vec<String>)> = lib
        .mods
        .iter()
        .map(|(m, p)| {
            let file = child_file(src, root, m, p.as_deref())
                .unwrap_or_else(|| panic!("no file for `mod {m};` in src/lib.rs"));
            (file, vec![m.clone()])
        })
        .collect();
    while let Some((file, path)) = todo.pop_front() {
        let text = src.read(&file).expect("listed files exist");
        let parsed = parse(&text);
        let from = &path[0];
        let mut note = |to: Option<String>, line: usize| {
            if let Some(to) = to.filter(|to| to != from) {
                edges
                    .entry((from.clone(), to))
                    .or_insert_with(|| format!("{}:{line}", file.display()));
            }
        };
        for (head, line) in &parsed.roots {
            note(top(head), *line);
        }
        for (n, head, line) in &parsed.supers {
            // `super` from a/b/c.rs (module path [a, b, c]) is [a, b]; at the root, a
            // top-level module is named.
            if *n == path.len() {
                note(top(head), *line);
            }
        }
        for (m, p) in &parsed.mods {
            let child = child_file(src, &file, m, p.as_deref()).unwrap_or_else(|| {
                panic!("no file for `mod {m};` in {}", file.display());
            });
            let mut child_path = path.clone();
            child_path.push(m.clone());
            todo.push_back((child, child_path));
        }
    }
    (modules, edges)
}

/// Each cycle once, as `a → b → … → a` with where each step is taken.
fn cycles(edges: &Edges) -> Vec<String> {
    let mut next: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (from, to) in edges.keys() {
        next.entry(from).or_default().push(to);
    }
    let mut seen = BTreeSet::new();
    let mut found = Vec::new();
    for (from, to) in edges.keys() {
        // The shortest way back from `to` to `from`, if any.
        let mut back: BTreeMap<&str, &str> = BTreeMap::new();
        let mut queue = VecDeque::from([to.as_str()]);
        while let Some(m) = queue.pop_front() {
            if m == from {
                break;
            }
            for n in next.get(m).into_iter().flatten() {
                if !back.contains_key(n) && n != to {
                    back.insert(n, m);
                    queue.push_back(n);
                }
            }
        }
        if !back.contains_key(from.as_str()) {
            continue;
        }
        let mut ring = vec![from.as_str()];
        let mut m = from.as_str();
        let mut way = vec![];
        while m != to {
            way.push(m);
            m = back[m];
        }
        ring.push(to);
        ring.extend(way.iter().skip(1).rev());
        ring.push(from);
        let mut key: Vec<&str> = ring[..ring.len() - 1].to_vec();
        key.sort();
        if seen.insert(key) {
            let steps: Vec<String> = ring
                .windows(2)
                .map(|w| {
                    let at = &edges[&(w[0].to_string(), w[1].to_string())];
                    format!("  {} → {} ({at})", w[0], w[1])
                })
                .collect();
            found.push(format!("{}\n{}", ring.join(" → "), steps.join("\n")));
        }
    }
    found
}

/// Where an actor module names another actor module.
fn actor_references(edges: &Edges) -> Vec<String> {
    edges
        .iter()
        .filter(|((from, to), _)| ACTORS.contains(&from.as_str()) && ACTORS.contains(&to.as_str()))
        .map(|((from, to), at)| {
            format!("{at}: the actor module `{from}` refers to the actor module `{to}`")
        })
        .collect()
}

#[test]
fn no_import_cycle_among_the_modules_of_src() {
    let (modules, edges) = references(&Disk(env!("CARGO_MANIFEST_DIR").into()));
    for actor in ACTORS {
        assert!(
            modules.contains(actor),
            "no actor module `{actor}` in src/lib.rs"
        );
    }
    let found = cycles(&edges);
    assert!(
        found.is_empty(),
        "import cycles in src/:\n{}",
        found.join("\n")
    );
}

#[test]
fn actor_modules_never_refer_to_each_other() {
    let (_, edges) = references(&Disk(env!("CARGO_MANIFEST_DIR").into()));
    let found = actor_references(&edges);
    assert!(
        found.is_empty(),
        "an actor module may import the messages, the engine seam, the protocol and the \
         status, never another actor module:\n{}",
        found.join("\n")
    );
}

/// The checker itself, on a made-up crate: it must see what it is there to see, and only
/// that.
#[test]
fn the_checker_sees_cycles_and_actor_references_and_skips_test_code() {
    let files: BTreeMap<PathBuf, String> = [
        (
            "src/lib.rs",
            "//! crate::session in a comment\npub mod a;\npub mod session;\npub mod container;\n\
             mod helpers;\npub mod leaf;\npub use a::inner as renamed;\n#[cfg(test)]\n\
             mod only_in_tests;\n",
        ),
        ("src/a/mod.rs", "pub mod inner;\nuse crate::{helpers::x, session};\n"),
        ("src/a/inner.rs", "use super::super::container::Thing;\n"),
        (
            "src/session.rs",
            "use crate::helpers;\nconst S: &str = \"crate::container\";\nfn f<'a>(c: char) { \
             let _ = 'x'; let _ = '\\''; }\n#[cfg(test)]\nmod tests { use crate::container; }\n",
        ),
        (
            "src/container/mod.rs",
            "#[cfg(test)]\nmod tests;\n/* crate::session\n /* nested */ crate::session */\n\
             pub(crate) fn g() { let _ = r#\"crate::session\"#; crate::renamed::h(); }\n",
        ),
        ("src/container/tests.rs", "use crate::session;\n"),
        (
            "src/helpers.rs",
            "pub fn x() {}\nfn y() { crate::a::z() }\npub fn session() {}\n\
             mod inner { fn q() { super::session() } }\n#[path = \"helpers_extra.rs\"]\nmod extra;\n",
        ),
        ("src/helpers_extra.rs", "fn e() { crate::leaf::l() }\n"),
        ("src/leaf.rs", "pub fn l() {}\n"),
    ]
    .into_iter()
    .map(|(p, t)| (PathBuf::from(p), t.to_string()))
    .collect();

    let (modules, edges) = references(&files);
    assert_eq!(
        modules.into_iter().collect::<Vec<_>>(),
        ["a", "container", "helpers", "leaf", "session"]
    );
    let pairs: Vec<(&str, &str)> = edges
        .keys()
        .map(|(f, t)| (f.as_str(), t.as_str()))
        .collect();
    assert_eq!(
        pairs,
        [
            ("a", "container"),
            ("a", "helpers"),
            ("a", "session"),
            ("container", "a"),
            ("helpers", "a"),
            ("helpers", "leaf"),
            ("session", "helpers"),
        ]
    );
    assert_eq!(edges[&("a".into(), "container".into())], "src/a/inner.rs:1");

    let found = cycles(&edges);
    assert_eq!(found.len(), 3, "{found:#?}");
    assert!(found.iter().any(|c| c.starts_with("a → container → a\n")));
    assert!(found
        .iter()
        .any(|c| c.contains("session → helpers (src/session.rs:1)")));
    assert!(actor_references(&edges).is_empty());

    let mut edges = edges;
    edges.insert(("session".into(), "container".into()), "src/x.rs:9".into());
    assert_eq!(
        actor_references(&edges),
        ["src/x.rs:9: the actor module `session` refers to the actor module `container`"]
    );
}
