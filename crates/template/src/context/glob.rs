//! The COPY source glob, with the semantics the E2B SDK gets from
//! `wcmatch.glob.glob(src, flags=GLOBSTAR | DOTMATCH, root_dir=context)`: `*`, `?` and `[...]`
//! within one path segment, `**` as a whole segment for any number of directories (not entering
//! symbolic links to directories), wildcards matching names that start with a dot but never
//! `.` or `..`, literal segments (including `.` and `..`), and a trailing `/` for directories
//! only. [`glob`] returns the matches as wcmatch does: relative to the root, as written.

use std::path::Path;

/// One segment of a split pattern.
#[derive(Debug, Clone)]
struct Part {
    /// The segment as written.
    text: String,
    /// Has wildcard characters (`*?[]\`).
    magic: bool,
    /// Is `**`.
    globstar: bool,
    /// A `/` follows it.
    dir_only: bool,
}

/// An entry of a directory listing.
struct Entry {
    name: String,
    is_dir: bool,
    is_link: bool,
}

/// Splits `pattern` into segments (`\/` also separates, empty segments are dropped, repeated
/// `**` collapse).
fn split(pattern: &str) -> Vec<Part> {
    let chars: Vec<char> = pattern.chars().collect();
    let mut segments: Vec<(String, bool)> = Vec::new();
    let mut cur = String::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '\\' && chars.get(i + 1) == Some(&'/') {
            segments.push((std::mem::take(&mut cur), true));
            i += 2;
            continue;
        }
        if c == '/' {
            segments.push((std::mem::take(&mut cur), true));
        } else {
            cur.push(c);
        }
        i += 1;
    }
    if !cur.is_empty() {
        segments.push((cur, false));
    }
    let mut parts: Vec<Part> = Vec::new();
    for (text, dir_only) in segments {
        if !parts.is_empty() && text.is_empty() {
            continue;
        }
        let globstar = text == "**";
        let part = Part {
            magic: text.contains(['*', '?', '[', ']', '\\']),
            globstar,
            dir_only,
            text,
        };
        match parts.last_mut() {
            Some(last) if globstar && last.globstar => *last = part,
            _ => parts.push(part),
        }
    }
    parts
}

/// Matches one name against one segment.
enum Matcher<'a> {
    Literal(&'a str),
    Pattern(&'a str),
}

impl Matcher<'_> {
    fn new(part: &Part) -> Matcher<'_> {
        if part.magic {
            Matcher::Pattern(&part.text)
        } else {
            Matcher::Literal(&part.text)
        }
    }

    fn is_match(&self, name: &str) -> bool {
        match self {
            Matcher::Literal(l) => *l == name,
            // Wildcards never match the special directories.
            Matcher::Pattern(p) => name != "." && name != ".." && segment_match(p, name),
        }
    }
}

/// `os.path.join(a, b)` for relative paths.
fn join(a: &str, b: &str) -> String {
    if a.is_empty() || a.ends_with('/') {
        format!("{a}{b}")
    } else {
        format!("{a}/{b}")
    }
}

struct Walker<'a> {
    root: &'a Path,
}

impl Walker<'_> {
    /// The entries of `dir` (relative to the root), `.` and `..` first, as wcmatch lists them.
    fn list(&self, dir: &str, dir_only: bool) -> Vec<Entry> {
        let mut out = vec![
            Entry {
                name: ".".into(),
                is_dir: true,
                is_link: false,
            },
            Entry {
                name: "..".into(),
                is_dir: true,
                is_link: false,
            },
        ];
        let path = if dir.is_empty() {
            self.root.to_path_buf()
        } else {
            self.root.join(dir)
        };
        let Ok(read) = std::fs::read_dir(&path) else {
            return out;
        };
        for entry in read.flatten() {
            let Ok(name) = entry.file_name().into_string() else {
                continue;
            };
            let is_link = entry.file_type().map(|t| t.is_symlink()).unwrap_or(false);
            let is_dir = if is_link {
                std::fs::metadata(entry.path())
                    .map(|m| m.is_dir())
                    .unwrap_or(false)
            } else {
                entry.file_type().map(|t| t.is_dir()).unwrap_or(false)
            };
            if !dir_only || is_dir {
                out.push(Entry {
                    name,
                    is_dir,
                    // wcmatch only asks whether directories are links.
                    is_link: is_dir && is_link,
                });
            }
        }
        out
    }

    fn glob_dir(
        &self,
        curdir: &str,
        matcher: Option<&Matcher>,
        dir_only: bool,
        deep: bool,
        out: &mut Vec<(String, bool)>,
    ) {
        for e in self.list(curdir, dir_only) {
            if e.name == "." || e.name == ".." {
                if matcher.is_some_and(|m| m.is_match(&e.name)) {
                    out.push((join(curdir, &e.name), true));
                }
                continue;
            }
            let path = join(curdir, &e.name);
            if matcher.is_none_or(|m| m.is_match(&e.name)) {
                out.push((path.clone(), e.is_dir));
            }
            if deep && e.is_dir && !e.is_link {
                self.glob_dir(&path, matcher, dir_only, deep, out);
            }
        }
    }

    fn glob(&self, curdir: &str, part: &Part, rest: &[Part], out: &mut Vec<(String, bool)>) {
        if part.magic && part.globstar {
            let (target, after) = match rest.split_first() {
                Some((next, after)) => (Some(next), after),
                None => (None, rest),
            };
            let dir_only = target.map_or(part.dir_only, |t| t.dir_only);
            let matcher = target.map(Matcher::new);
            if target.is_none() && !curdir.is_empty() {
                out.push((join(curdir, ""), true));
            }
            let mut found = Vec::new();
            self.glob_dir(curdir, matcher.as_ref(), dir_only, true, &mut found);
            match after.split_first() {
                Some((this, rest)) => {
                    for (path, _) in found {
                        self.glob(&path, this, rest, out);
                    }
                }
                None => out.extend(found),
            }
        } else if !part.dir_only {
            self.glob_dir(curdir, Some(&Matcher::new(part)), false, false, out);
        } else {
            let mut found = Vec::new();
            self.glob_dir(curdir, Some(&Matcher::new(part)), true, false, &mut found);
            match rest.split_first() {
                Some((this, rest)) => {
                    for (path, _) in found {
                        self.glob(&path, this, rest, out);
                    }
                }
                None => out.extend(found),
            }
        }
    }
}

/// The paths under `root` that `pattern` (relative, `/`-separated) matches, relative to
/// `root` and in wcmatch's form (`./src`, `src/`, `a/b`); duplicates removed.
pub fn glob(root: &Path, pattern: &str) -> Vec<String> {
    let parts = split(pattern);
    let Some(first) = parts.first() else {
        return Vec::new();
    };
    let dir_only = parts.last().is_some_and(|p| p.dir_only);
    let w = Walker { root };
    let mut raw: Vec<(String, bool)> = Vec::new();
    if !first.magic {
        let curdir = first.text.as_str();
        if curdir.is_empty() {
            // An absolute pattern: the caller refuses those.
            return Vec::new();
        }
        let starts: Vec<(String, bool)> = if curdir == "." || curdir == ".." {
            vec![(curdir.to_string(), true)]
        } else {
            w.list("", dir_only)
                .into_iter()
                .filter(|e| e.name != "." && e.name != ".." && e.name == curdir)
                .map(|e| (e.name, e.is_dir))
                .collect()
        };
        if first.dir_only {
            for (start, is_dir) in starts {
                match parts[1..].split_first() {
                    Some((this, rest)) => w.glob(&start, this, rest, &mut raw),
                    None => raw.push((start, is_dir)),
                }
            }
        } else {
            for (m, is_dir) in starts {
                if std::fs::symlink_metadata(root.join(&m)).is_ok() {
                    raw.push((m, is_dir));
                }
            }
        }
    } else {
        w.glob("", first, &parts[1..], &mut raw);
    }
    let mut seen = std::collections::HashSet::new();
    raw.into_iter()
        .map(|(p, _)| if dir_only { join(&p, "") } else { p })
        .filter(|p| seen.insert(p.clone()))
        .collect()
}

/// A character class of a segment pattern.
struct Class {
    negated: bool,
    ranges: Vec<(char, char)>,
    posix: Vec<fn(char) -> bool>,
}

impl Class {
    fn matches(&self, c: char) -> bool {
        let hit = self.ranges.iter().any(|&(lo, hi)| lo <= c && c <= hi)
            || self.posix.iter().any(|f| f(c));
        hit != self.negated
    }
}

fn posix_class(name: &str) -> Option<fn(char) -> bool> {
    Some(match name {
        "alnum" => |c: char| c.is_ascii_alphanumeric(),
        "alpha" => |c: char| c.is_ascii_alphabetic(),
        "ascii" => |c: char| c.is_ascii(),
        "blank" => |c: char| c == ' ' || c == '\t',
        "cntrl" => |c: char| c.is_ascii_control(),
        "digit" => |c: char| c.is_ascii_digit(),
        "graph" => |c: char| c.is_ascii_graphic(),
        "lower" => |c: char| c.is_ascii_lowercase(),
        "print" => |c: char| c.is_ascii_graphic() || c == ' ',
        "punct" => |c: char| c.is_ascii_punctuation(),
        "space" => |c: char| c.is_ascii_whitespace() || c == '\x0b',
        "upper" => |c: char| c.is_ascii_uppercase(),
        "word" => |c: char| c.is_ascii_alphanumeric() || c == '_',
        "xdigit" => |c: char| c.is_ascii_hexdigit(),
        _ => return None,
    })
}

/// Parses a bracket expression starting after `[` at `p[i]`; `None` when it is not one (then
/// `[` is literal). Returns the class and the index after `]`.
fn parse_class(p: &[char], mut i: usize) -> Option<(Class, usize)> {
    let mut class = Class {
        negated: false,
        ranges: Vec::new(),
        posix: Vec::new(),
    };
    if matches!(p.get(i), Some('!') | Some('^')) {
        class.negated = true;
        i += 1;
    }
    let mut first = true;
    loop {
        let c = *p.get(i)?;
        if c == ']' && !first {
            return Some((class, i + 1));
        }
        first = false;
        if c == '[' && p.get(i + 1) == Some(&':') {
            let rest: String = p[i + 2..].iter().collect();
            if let Some(end) = rest.find(":]") {
                if let Some(f) = posix_class(&rest[..end]) {
                    class.posix.push(f);
                    i += 2 + rest[..end].chars().count() + 2;
                    continue;
                }
            }
        }
        let (lo, next) = class_char(p, i)?;
        i = next;
        if p.get(i) == Some(&'-') && p.get(i + 1).is_some_and(|&c| c != ']') {
            let (hi, next) = class_char(p, i + 1)?;
            i = next;
            // A backwards range matches nothing.
            if lo <= hi {
                class.ranges.push((lo, hi));
            }
        } else {
            class.ranges.push((lo, lo));
        }
    }
}

fn class_char(p: &[char], i: usize) -> Option<(char, usize)> {
    match *p.get(i)? {
        '\\' => Some((*p.get(i + 1)?, i + 2)),
        c => Some((c, i + 1)),
    }
}

/// One token of a segment pattern.
enum Tok {
    Lit(char),
    Any,
    Star,
    Class(Class),
}

fn tokens(pattern: &str) -> Vec<Tok> {
    let p: Vec<char> = pattern.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < p.len() {
        match p[i] {
            '*' => {
                if !matches!(out.last(), Some(Tok::Star)) {
                    out.push(Tok::Star);
                }
                i += 1;
            }
            '?' => {
                out.push(Tok::Any);
                i += 1;
            }
            '[' => match parse_class(&p, i + 1) {
                Some((class, next)) => {
                    out.push(Tok::Class(class));
                    i = next;
                }
                None => {
                    out.push(Tok::Lit('['));
                    i += 1;
                }
            },
            '\\' if i + 1 < p.len() => {
                out.push(Tok::Lit(p[i + 1]));
                i += 2;
            }
            c => {
                out.push(Tok::Lit(c));
                i += 1;
            }
        }
    }
    out
}

/// Whether the segment pattern matches all of `name`.
pub(crate) fn segment_match(pattern: &str, name: &str) -> bool {
    let toks = tokens(pattern);
    let s: Vec<char> = name.chars().collect();
    let n = s.len();
    let mut ok = vec![false; n + 1];
    ok[n] = true;
    for tok in toks.iter().rev() {
        let mut cur = vec![false; n + 1];
        for j in (0..=n).rev() {
            cur[j] = match tok {
                Tok::Lit(c) => j < n && s[j] == *c && ok[j + 1],
                Tok::Any => j < n && ok[j + 1],
                Tok::Class(c) => j < n && c.matches(s[j]) && ok[j + 1],
                Tok::Star => ok[j] || (j < n && cur[j + 1]),
            };
        }
        ok = cur;
    }
    ok[0]
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn segment_patterns() {
        assert!(segment_match("*.py", "a.py"));
        assert!(segment_match("*", ".env"));
        assert!(segment_match("[a-c]?", "b1"));
        assert!(!segment_match("[!a]*", "abc"));
        assert!(segment_match("[^a]*", "bc"));
        assert!(segment_match("[[:digit:]]x", "7x"));
        assert!(segment_match("a\\*", "a*"));
        assert!(!segment_match("a\\*", "ab"));
        assert!(segment_match("a[", "a["));
        assert!(segment_match("[]]", "]"));
    }

    #[test]
    fn splits_like_wcmatch() {
        let p = split("src/**/**/*.py");
        let texts: Vec<&str> = p.iter().map(|p| p.text.as_str()).collect();
        assert_eq!(texts, ["src", "**", "*.py"]);
        assert!(p[0].dir_only && !p[2].dir_only && p[1].globstar);
        let p = split("a//b/");
        assert_eq!(p.len(), 2);
        assert!(p[1].dir_only);
    }

    #[test]
    fn globs_a_tree() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("src/sub")).unwrap();
        std::fs::create_dir_all(root.join(".hid")).unwrap();
        std::fs::write(root.join("a.py"), "a").unwrap();
        std::fs::write(root.join("src/b.py"), "b").unwrap();
        std::fs::write(root.join("src/sub/c.txt"), "c").unwrap();
        std::fs::write(root.join(".hid/h"), "h").unwrap();
        std::os::unix::fs::symlink("src", root.join("linkdir")).unwrap();
        let sorted = |p: &str| {
            let mut v = glob(root, p);
            v.sort();
            v
        };
        assert_eq!(sorted("."), ["."]);
        assert_eq!(sorted("src/"), ["src/"]);
        assert_eq!(sorted("./src"), ["./src"]);
        assert_eq!(sorted("**/*.py"), ["a.py", "src/b.py"]);
        assert_eq!(sorted("*/*.py"), ["linkdir/b.py", "src/b.py"]);
        assert_eq!(
            sorted("**"),
            [
                ".hid",
                ".hid/h",
                "a.py",
                "linkdir",
                "src",
                "src/b.py",
                "src/sub",
                "src/sub/c.txt"
            ]
        );
        assert_eq!(
            sorted("src/**"),
            ["src/", "src/b.py", "src/sub", "src/sub/c.txt"]
        );
        assert_eq!(sorted("src/../a.py"), ["src/../a.py"]);
        assert!(sorted("nope").is_empty());
        assert!(sorted("a.py/").is_empty());
    }
}
