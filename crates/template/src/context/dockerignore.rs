//! `.dockerignore` patterns, matched exactly as the E2B SDK matches them (its port of
//! moby/patternmatcher, `e2b_dockerfile_utils.PatternMatcher`): a pattern is relative to the
//! context root, a pattern that matches a directory excludes everything under it, `!` patterns
//! re-include paths and the last matching pattern wins.
//!
//! The SDK compiles a pattern to a Python regular expression; [`Pattern`] keeps the same tokens
//! and matches them with a small dynamic program, so the quirks of that regex carry over (a
//! negated class also matches `/`, `**` at the end does not match a newline).

use super::ContextError;

/// Compiled `.dockerignore` patterns.
#[derive(Debug, Clone, Default)]
pub struct PatternMatcher {
    patterns: Vec<Pattern>,
}

#[derive(Debug, Clone)]
struct Pattern {
    exclusion: bool,
    dirs: Vec<String>,
    matcher: Matcher,
}

/// How a pattern matches: moby uses plain string checks when it can, a regex otherwise.
#[derive(Debug, Clone)]
enum Matcher {
    Exact(String),
    Prefix(String),
    Suffix(String),
    Tokens(Vec<Tok>),
}

/// One element of the regex the SDK builds.
#[derive(Debug, Clone, PartialEq)]
enum Tok {
    /// A literal character.
    Lit(char),
    /// `[^/]*`
    Star,
    /// `[^/]`
    One,
    /// A bracket expression (Python semantics: a negated one matches `/` too).
    Class {
        negated: bool,
        items: Vec<(char, char)>,
    },
    /// `(.*/)?`
    DirPrefix,
    /// `.*` (no newline)
    Rest,
}

const BAD_PATTERN: &str = "syntax error in pattern";

impl PatternMatcher {
    /// Compiles `patterns` (`.dockerignore` lines: comments and empty lines are skipped).
    pub fn new(patterns: &[String]) -> Result<Self, ContextError> {
        let mut out = Vec::new();
        for original in patterns {
            if original.starts_with('#') {
                continue;
            }
            let mut pattern = original.trim();
            if pattern.is_empty() {
                continue;
            }
            let exclusion = pattern.starts_with('!');
            if exclusion {
                pattern = pattern[1..].trim();
                if pattern.is_empty() {
                    return Err(ContextError::Pattern {
                        pattern: original.clone(),
                        reason: "illegal exclusion pattern".into(),
                    });
                }
            }
            let mut cleaned = clean(pattern);
            if cleaned.len() > 1 && cleaned.starts_with('/') {
                cleaned.remove(0);
            }
            let matcher = compile(&cleaned).map_err(|reason| ContextError::Pattern {
                pattern: original.clone(),
                reason,
            })?;
            out.push(Pattern {
                exclusion,
                dirs: cleaned.split('/').map(str::to_string).collect(),
                matcher,
            });
        }
        Ok(PatternMatcher { patterns: out })
    }

    /// Whether `path` (slash-separated, relative to the context root) is excluded. As in
    /// BuildKit, the patterns are evaluated on each parent directory first, and a pattern that
    /// matched a parent also matches the paths under it.
    pub fn matches(&self, path: &str) -> bool {
        let segments: Vec<&str> = path.split('/').collect();
        let mut parent_matched: Vec<bool> = Vec::new();
        let mut matched = false;
        for depth in 1..=segments.len() {
            let current = segments[..depth].join("/");
            let mut current_matched = Vec::with_capacity(self.patterns.len());
            matched = false;
            for (i, pattern) in self.patterns.iter().enumerate() {
                let mut m = !parent_matched.is_empty() && parent_matched[i];
                if !m {
                    // An inclusion can't change an already matched path, and an exclusion
                    // can't change a path that hasn't matched yet.
                    if pattern.exclusion != matched {
                        current_matched.push(false);
                        continue;
                    }
                    m = pattern.matcher.is_match(&current);
                }
                current_matched.push(m);
                if m {
                    matched = !pattern.exclusion;
                }
            }
            parent_matched = current_matched;
        }
        matched
    }

    /// Whether a `!` pattern could re-include a path under `dir` (so an excluded directory
    /// must still be walked).
    pub fn may_match_under(&self, dir: &str) -> bool {
        let dir_segments: Vec<&str> = dir.split('/').collect();
        self.patterns
            .iter()
            .any(|p| p.exclusion && may_match_under(p, &dir_segments))
    }
}

fn may_match_under(pattern: &Pattern, dir_segments: &[&str]) -> bool {
    for (i, dir_segment) in dir_segments.iter().enumerate() {
        let Some(segment) = pattern.dirs.get(i) else {
            return false;
        };
        if segment.contains("**") {
            return true;
        }
        let wild = segment.contains(['*', '?', '[', '\\']);
        if !wild && segment != dir_segment {
            return false;
        }
    }
    pattern.dirs.len() > dir_segments.len()
}

/// Go's `filepath.Clean` of a slash-separated pattern (`posixpath.normpath` after collapsing
/// repeated slashes, as the SDK does).
fn clean(pattern: &str) -> String {
    let mut collapsed = String::with_capacity(pattern.len());
    for c in pattern.chars() {
        if c == '/' && collapsed.ends_with('/') {
            continue;
        }
        collapsed.push(c);
    }
    super::normpath(&collapsed)
}

/// Rejects what Go's `filepath.Match` rejects (the SDK validates patterns the same way).
fn validate(p: &[char]) -> Result<(), String> {
    let n = p.len();
    let class_char = |mut i: usize| -> Result<usize, String> {
        if i >= n || p[i] == '-' || p[i] == ']' {
            return Err(BAD_PATTERN.into());
        }
        if p[i] == '\\' {
            i += 1;
            if i >= n {
                return Err(BAD_PATTERN.into());
            }
        }
        i += 1;
        if i >= n {
            return Err(BAD_PATTERN.into());
        }
        Ok(i)
    };
    let mut i = 0;
    while i < n {
        let ch = p[i];
        i += 1;
        if ch == '\\' {
            if i >= n {
                return Err(BAD_PATTERN.into());
            }
            i += 1;
        } else if ch == '[' {
            if i < n && p[i] == '^' {
                i += 1;
            }
            let mut ranges = 0;
            while !(ranges > 0 && i < n && p[i] == ']') {
                i = class_char(i)?;
                if p[i] == '-' {
                    i = class_char(i + 1)?;
                }
                ranges += 1;
            }
            i += 1;
        }
    }
    Ok(())
}

/// Parses the inside of a validated bracket expression `p[start..end]` (without the brackets
/// and the `^`) into ranges; `\x` is the literal `x`.
fn class_items(p: &[char]) -> Vec<(char, char)> {
    let mut items = Vec::new();
    let mut i = 0;
    let next = |i: &mut usize| -> Option<char> {
        let mut c = *p.get(*i)?;
        if c == '\\' && *i + 1 < p.len() {
            *i += 1;
            c = p[*i];
        }
        *i += 1;
        Some(c)
    };
    while let Some(lo) = next(&mut i) {
        if i < p.len() && p[i] == '-' && i + 1 < p.len() {
            i += 1;
            let hi = next(&mut i).unwrap_or(lo);
            items.push((lo, hi));
        } else {
            items.push((lo, lo));
        }
    }
    items
}

fn compile(pattern: &str) -> Result<Matcher, String> {
    let p: Vec<char> = pattern.chars().collect();
    validate(&p)?;
    #[derive(PartialEq, Clone, Copy)]
    enum Kind {
        Exact,
        Prefix,
        Suffix,
        Regex,
    }
    let mut toks = Vec::new();
    let mut kind = Kind::Exact;
    let n = p.len();
    let mut i = 0;
    while i < n {
        let first = i == 0;
        let ch = p[i];
        i += 1;
        match ch {
            '*' => {
                if i < n && p[i] == '*' {
                    i += 1;
                    // "**/" is "**"
                    if i < n && p[i] == '/' {
                        i += 1;
                    }
                    if i >= n {
                        toks.push(Tok::Rest);
                        kind = if kind == Kind::Exact {
                            Kind::Prefix
                        } else {
                            Kind::Regex
                        };
                    } else {
                        toks.push(Tok::DirPrefix);
                        kind = Kind::Regex;
                    }
                    if first {
                        kind = Kind::Suffix;
                    }
                } else {
                    toks.push(Tok::Star);
                    kind = Kind::Regex;
                }
            }
            '?' => {
                toks.push(Tok::One);
                kind = Kind::Regex;
            }
            '[' => {
                let mut j = i;
                let negated = j < n && p[j] == '^';
                if negated {
                    j += 1;
                }
                let body_start = j;
                while j < n && p[j] != ']' {
                    if p[j] == '\\' {
                        j += 1;
                    }
                    j += 1;
                }
                let body_end = j.min(n);
                toks.push(Tok::Class {
                    negated,
                    items: class_items(&p[body_start..body_end]),
                });
                i = j + 1;
                kind = Kind::Regex;
            }
            ']' => {
                toks.push(Tok::Lit(']'));
                kind = Kind::Regex;
            }
            '\\' => {
                if i < n {
                    toks.push(Tok::Lit(p[i]));
                    i += 1;
                    kind = Kind::Regex;
                } else {
                    toks.push(Tok::Lit('\\'));
                }
            }
            c => toks.push(Tok::Lit(c)),
        }
    }
    Ok(match kind {
        Kind::Exact => Matcher::Exact(pattern.to_string()),
        // The SDK drops the last two characters (the `**`).
        Kind::Prefix => Matcher::Prefix(p[..n.saturating_sub(2)].iter().collect()),
        Kind::Suffix => Matcher::Suffix(p[2.min(n)..].iter().collect()),
        Kind::Regex => Matcher::Tokens(toks),
    })
}

impl Matcher {
    fn is_match(&self, path: &str) -> bool {
        match self {
            Matcher::Exact(p) => path == p,
            Matcher::Prefix(p) => path.starts_with(p.as_str()),
            // "**/foo" also matches "foo".
            Matcher::Suffix(s) => {
                path.ends_with(s.as_str()) || (s.starts_with('/') && path == &s[1..])
            }
            Matcher::Tokens(toks) => tokens_match(toks, path),
        }
    }
}

/// Whether `toks` match all of `path` (a DP over token and character positions).
fn tokens_match(toks: &[Tok], path: &str) -> bool {
    let s: Vec<char> = path.chars().collect();
    let n = s.len();
    // ok[j] = toks[i..] match s[j..], computed from the last token back.
    let mut ok = vec![false; n + 1];
    ok[n] = true;
    for tok in toks.iter().rev() {
        let mut cur = vec![false; n + 1];
        for j in (0..=n).rev() {
            cur[j] = match tok {
                Tok::Lit(c) => j < n && s[j] == *c && ok[j + 1],
                Tok::One => j < n && s[j] != '/' && ok[j + 1],
                Tok::Class { negated, items } => {
                    j < n
                        && (items.iter().any(|&(lo, hi)| lo <= s[j] && s[j] <= hi) != *negated)
                        && ok[j + 1]
                }
                // [^/]* : zero chars, or one non-slash char then still in the star.
                Tok::Star => ok[j] || (j < n && s[j] != '/' && cur[j + 1]),
                // .* : no newline.
                Tok::Rest => ok[j] || (j < n && s[j] != '\n' && cur[j + 1]),
                Tok::DirPrefix => {
                    ok[j]
                        || (j..n)
                            .take_while(|&k| k == j || s[k - 1] != '\n')
                            .any(|k| s[k] == '/' && ok[k + 1])
                }
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

    fn m(patterns: &[&str]) -> PatternMatcher {
        PatternMatcher::new(&patterns.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
    }

    #[test]
    fn docker_semantics() {
        let pm = m(&[
            "node_modules",
            "*.log",
            "!keep.log",
            "build/**",
            "**/*.tmp",
            "/abs",
        ]);
        assert!(pm.matches("node_modules"));
        assert!(pm.matches("node_modules/a/b.js"));
        assert!(!pm.matches("src/node_modules"));
        assert!(pm.matches("x.log"));
        assert!(!pm.matches("keep.log"));
        assert!(!pm.matches("sub/x.log"));
        assert!(pm.matches("build/a"));
        assert!(pm.matches("a/b/c.tmp"));
        assert!(pm.matches("c.tmp"));
        assert!(pm.matches("abs"));
        assert!(!pm.matches("src/main.rs"));
    }

    #[test]
    fn reinclusion_under_an_excluded_directory() {
        let pm = m(&["docs", "!docs/keep.md"]);
        assert!(pm.matches("docs"));
        assert!(pm.matches("docs/other.md"));
        assert!(pm.may_match_under("docs"));
        assert!(!pm.may_match_under("src"));
        let pm = m(&["*", "!src/**"]);
        assert!(pm.may_match_under("src"));
        assert!(pm.matches("README.md"));
    }

    #[test]
    fn classes_escapes_and_errors() {
        let pm = m(&["[a-c].txt", "x\\*y", "q?"]);
        assert!(pm.matches("b.txt"));
        assert!(!pm.matches("d.txt"));
        assert!(pm.matches("x*y"));
        assert!(!pm.matches("xzy"));
        assert!(pm.matches("q1"));
        assert!(!pm.matches("q/"));
        for bad in ["[", "[]", "a[b-", "!", "x\\"] {
            assert!(
                PatternMatcher::new(&[bad.to_string()]).is_err(),
                "{bad} should be refused"
            );
        }
    }

    #[test]
    fn dp_matches_the_regex_forms() {
        let toks = |p: &str| match compile(p).unwrap() {
            Matcher::Tokens(t) => t,
            other => panic!("{p}: {other:?}"),
        };
        assert!(tokens_match(&toks("a/**/b"), "a/b"));
        assert!(tokens_match(&toks("a/**/b"), "a/x/y/b"));
        assert!(!tokens_match(&toks("a/**/b"), "a/xb"));
        assert!(tokens_match(&toks("*.py"), "x.py"));
        assert!(!tokens_match(&toks("*.py"), "d/x.py"));
        assert!(tokens_match(&toks("a*/**"), "abc/d/e"));
    }
}
