//! Docker's word processing of instruction arguments (BuildKit's `shell.Lex`, as the E2B SDK
//! ports it): quotes and escapes are removed and `$VAR`, `${VAR}`, `${VAR:-word}`,
//! `${VAR-word}`, `${VAR:+word}`, `${VAR+word}`, `${VAR:?msg}`, `${VAR?msg}`, `${VAR#pat}`,
//! `${VAR##pat}`, `${VAR%pat}`, `${VAR%%pat}`, `${VAR/pat/repl}` and `${VAR//pat/repl}` are
//! substituted from the variables known at that point of the Dockerfile. A variable that is not
//! known can be kept as written ([`Lex::keep_unset`]), so the build expands it later from the
//! environment of the image (`$PATH`, `$HOME`), as the SDK leaves it.

use std::collections::HashMap;

const SPECIAL_PARAMS: &str = "@*#?-$!0";

/// A word processor with its escape character and variables.
pub(crate) struct Lex<'a> {
    /// `\` or `` ` `` (the `escape` parser directive).
    pub escape: char,
    /// The variables known here.
    pub env: &'a HashMap<String, String>,
    /// Keep references to unknown variables as written instead of substituting `""`.
    pub keep_unset: bool,
}

impl Lex<'_> {
    /// Processes one word: quotes and escapes removed, variables substituted.
    pub fn process_word(&self, word: &str) -> Result<String, String> {
        self.process(word).map(|(text, _)| text)
    }

    /// [`Lex::process_word`], and the names of the variables referenced that are not known.
    pub fn process(&self, word: &str) -> Result<(String, Vec<String>), String> {
        let mut w = Word {
            s: word.chars().collect(),
            pos: 0,
            lex: self,
            unset: Vec::new(),
        };
        let text = w
            .process_stop_on(None, false)
            .map_err(|e| format!("failed to process {word:?}: {e}"))?;
        Ok((text, w.unset))
    }
}

struct Word<'a, 'b> {
    s: Vec<char>,
    pos: usize,
    lex: &'a Lex<'b>,
    unset: Vec<String>,
}

impl Word<'_, '_> {
    fn peek(&self) -> Option<char> {
        self.s.get(self.pos).copied()
    }

    fn next(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.pos += 1;
        Some(c)
    }

    fn process_stop_on(&mut self, stop: Option<char>, raw_escapes: bool) -> Result<String, String> {
        let mut out = String::new();
        while let Some(ch) = self.peek() {
            if Some(ch) == stop {
                self.pos += 1;
                return Ok(out);
            }
            match ch {
                '$' => {
                    out.push_str(&self.process_dollar()?);
                    continue;
                }
                '\'' => {
                    out.push_str(&self.process_single_quote()?);
                    continue;
                }
                '"' => {
                    out.push_str(&self.process_double_quote()?);
                    continue;
                }
                _ => {}
            }
            self.pos += 1;
            if ch == self.lex.escape {
                if raw_escapes {
                    out.push(ch);
                }
                // The escape character escapes the next one, except at the end.
                match self.next() {
                    Some(next) => out.push(next),
                    None => break,
                }
            } else {
                out.push(ch);
            }
        }
        match stop {
            Some(s) => Err(format!(
                "unexpected end of statement while looking for matching {s}"
            )),
            None => Ok(out),
        }
    }

    fn process_single_quote(&mut self) -> Result<String, String> {
        self.pos += 1;
        let mut out = String::new();
        loop {
            match self.next() {
                None => {
                    return Err(
                        "unexpected end of statement while looking for matching single-quote"
                            .into(),
                    )
                }
                Some('\'') => return Ok(out),
                Some(c) => out.push(c),
            }
        }
    }

    fn process_double_quote(&mut self) -> Result<String, String> {
        self.pos += 1;
        let mut out = String::new();
        loop {
            let Some(peeked) = self.peek() else {
                return Err(
                    "unexpected end of statement while looking for matching double-quote".into(),
                );
            };
            if peeked == '"' {
                self.pos += 1;
                return Ok(out);
            }
            if peeked == '$' {
                out.push_str(&self.process_dollar()?);
                continue;
            }
            self.pos += 1;
            let mut ch = peeked;
            if ch == self.lex.escape {
                match self.peek() {
                    None => continue,
                    Some(after) if after == '"' || after == '$' || after == self.lex.escape => {
                        self.pos += 1;
                        ch = after;
                    }
                    Some(_) => {}
                }
            }
            out.push(ch);
        }
    }

    fn process_name(&mut self) -> String {
        let mut name = String::new();
        while let Some(ch) = self.peek() {
            if name.is_empty() && ch.is_numeric() {
                while let Some(d) = self.peek().filter(|d| d.is_numeric()) {
                    name.push(d);
                    self.pos += 1;
                }
                return name;
            }
            if name.is_empty() && SPECIAL_PARAMS.contains(ch) {
                self.pos += 1;
                return ch.to_string();
            }
            if !ch.is_alphanumeric() && ch != '_' {
                break;
            }
            name.push(ch);
            self.pos += 1;
        }
        name
    }

    fn process_dollar(&mut self) -> Result<String, String> {
        self.pos += 1;
        if self.peek() != Some('{') {
            let name = self.process_name();
            if name.is_empty() {
                return Ok("$".into());
            }
            self.note_unset(&name);
            return Ok(match self.lex.env.get(&name) {
                Some(v) => v.clone(),
                None if self.lex.keep_unset => format!("${name}"),
                None => String::new(),
            });
        }
        self.pos += 1;
        match self.peek() {
            None => return Err("syntax error: missing '}'".into()),
            Some('{') | Some('}') | Some(':') => {
                return Err("syntax error: bad substitution".into())
            }
            Some(_) => {}
        }
        let name = self.process_name();
        let Some(mut ch) = self.next() else {
            return Err("syntax error: missing '}'".into());
        };
        let mut modifier = ch.to_string();
        let value = self.lex.env.get(&name).cloned();
        self.note_unset(&name);
        if ch == '}' {
            return Ok(match value {
                Some(v) => v,
                None if self.lex.keep_unset => format!("${{{name}}}"),
                None => String::new(),
            });
        }
        let null_is_unset = ch == ':';
        if null_is_unset {
            ch = self.next().ok_or("syntax error: missing '}'")?;
            modifier.push(ch);
        } else if ch == '/' {
            return self.process_dollar_replace(&name, value);
        }
        if !"+-?#%".contains(ch) {
            return Err(format!("unsupported modifier ({modifier}) in substitution"));
        }
        let pattern_op = ch == '#' || ch == '%';
        if null_is_unset && pattern_op {
            return Err(format!("unsupported modifier ({modifier}) in substitution"));
        }
        let word = self.stop_on_brace(pattern_op)?;
        if value.is_none() && self.lex.keep_unset {
            return Ok(format!("${{{name}{modifier}{word}}}"));
        }
        apply(ch, &name, value.as_deref(), null_is_unset, &word)
    }

    fn note_unset(&mut self, name: &str) {
        if !self.lex.env.contains_key(name) && !self.unset.iter().any(|n| n == name) {
            self.unset.push(name.to_string());
        }
    }

    fn stop_on_brace(&mut self, raw_escapes: bool) -> Result<String, String> {
        self.process_stop_on(Some('}'), raw_escapes).map_err(|e| {
            if self.peek().is_none() {
                "syntax error: missing '}'".into()
            } else {
                e
            }
        })
    }

    fn process_dollar_replace(
        &mut self,
        name: &str,
        value: Option<String>,
    ) -> Result<String, String> {
        let mut op = "/";
        if self.peek() == Some('/') {
            self.pos += 1;
            op = "//";
        }
        let pattern = self.process_stop_on(Some('/'), true).map_err(|e| {
            if self.peek().is_none() {
                "syntax error: missing '/' in ${}".into()
            } else {
                e
            }
        })?;
        let replacement = self.stop_on_brace(true)?;
        let value = match value {
            Some(v) => v,
            None if self.lex.keep_unset => {
                return Ok(format!("${{{name}{op}{pattern}/{replacement}}}"))
            }
            None => String::new(),
        };
        let pat = ShellPattern::parse(&pattern)?;
        Ok(pat.replace(&value, &replacement, op == "//"))
    }
}

/// Applies `${name<op>word}` to a (possibly unset) value.
fn apply(
    op: char,
    name: &str,
    value: Option<&str>,
    null_is_unset: bool,
    word: &str,
) -> Result<String, String> {
    let unset = value.is_none() || (null_is_unset && value == Some(""));
    let v = value.unwrap_or("");
    Ok(match op {
        '-' => {
            if unset {
                word.to_string()
            } else {
                v.to_string()
            }
        }
        '+' => {
            if unset {
                String::new()
            } else {
                word.to_string()
            }
        }
        '?' => {
            if value.is_none() {
                let msg = if word.is_empty() {
                    "is not allowed to be unset"
                } else {
                    word
                };
                return Err(format!("{name}: {msg}"));
            }
            if unset {
                let msg = if word.is_empty() {
                    "is not allowed to be empty"
                } else {
                    word
                };
                return Err(format!("{name}: {msg}"));
            }
            v.to_string()
        }
        '#' | '%' => {
            // `#`/`%` remove the shortest match, `##`/`%%` the longest.
            let greedy = word.starts_with(op);
            let pat = ShellPattern::parse(if greedy { &word[1..] } else { word })?;
            if op == '#' {
                pat.trim_prefix(v, greedy)
            } else {
                pat.trim_suffix(v, greedy)
            }
        }
        _ => return Err(format!("unsupported modifier ({op}) in substitution")),
    })
}

/// A pattern of `${VAR#...}` and friends: `*`, `?` and literal characters.
struct ShellPattern(Vec<PatTok>);

#[derive(Clone, Copy)]
enum PatTok {
    Lit(char),
    Any,
    Star,
}

impl ShellPattern {
    fn parse(pattern: &str) -> Result<Self, String> {
        let chars: Vec<char> = pattern.chars().collect();
        let mut toks = Vec::new();
        let mut i = 0;
        while i < chars.len() {
            let c = chars[i];
            i += 1;
            match c {
                '*' => toks.push(PatTok::Star),
                '?' => toks.push(PatTok::Any),
                '\\' => {
                    let next = chars.get(i).copied();
                    match next {
                        // `}` and `/` were escaped to be part of the word.
                        Some('}') | Some('/') => {}
                        Some(n @ ('*' | '?' | '\\')) => {
                            toks.push(PatTok::Lit(n));
                            i += 1;
                        }
                        _ => {
                            return Err(format!(
                            "invalid pattern ({pattern}) in substitution: invalid escape '\\{}'",
                            next.map(String::from).unwrap_or_default()
                        ))
                        }
                    }
                }
                c => toks.push(PatTok::Lit(c)),
            }
        }
        Ok(ShellPattern(toks))
    }

    /// Whether the pattern matches all of `s`.
    fn full_match(&self, s: &[char]) -> bool {
        let n = s.len();
        let mut ok = vec![false; n + 1];
        ok[n] = true;
        for tok in self.0.iter().rev() {
            let mut cur = vec![false; n + 1];
            for j in (0..=n).rev() {
                cur[j] = match tok {
                    PatTok::Lit(c) => j < n && s[j] == *c && ok[j + 1],
                    PatTok::Any => j < n && ok[j + 1],
                    PatTok::Star => ok[j] || (j < n && cur[j + 1]),
                };
            }
            ok = cur;
        }
        ok[0]
    }

    fn trim_prefix(&self, value: &str, longest: bool) -> String {
        let s: Vec<char> = value.chars().collect();
        let ends: Box<dyn Iterator<Item = usize>> = if longest {
            Box::new((0..=s.len()).rev())
        } else {
            Box::new(0..=s.len())
        };
        for end in ends {
            if self.full_match(&s[..end]) {
                return s[end..].iter().collect();
            }
        }
        value.to_string()
    }

    fn trim_suffix(&self, value: &str, longest: bool) -> String {
        let s: Vec<char> = value.chars().collect();
        let starts: Box<dyn Iterator<Item = usize>> = if longest {
            Box::new(0..=s.len())
        } else {
            Box::new((0..=s.len()).rev())
        };
        for start in starts {
            if self.full_match(&s[start..]) {
                return s[..start].iter().collect();
            }
        }
        value.to_string()
    }

    /// Replaces the first (or every) leftmost-longest non-empty match.
    fn replace(&self, value: &str, replacement: &str, all: bool) -> String {
        let s: Vec<char> = value.chars().collect();
        let mut out = String::new();
        let mut pos = 0;
        let mut replaced = false;
        while pos < s.len() {
            let found = if replaced && !all {
                None
            } else {
                (pos + 1..=s.len())
                    .rev()
                    .find(|&end| self.full_match(&s[pos..end]))
            };
            match found {
                Some(end) => {
                    out.push_str(replacement);
                    pos = end;
                    replaced = true;
                }
                None => {
                    out.push(s[pos]);
                    pos += 1;
                }
            }
        }
        out
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn env() -> HashMap<String, String> {
        [("A", "1"), ("EMPTY", ""), ("P", "/usr/local/lib/x.tar.gz")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn word(w: &str, keep: bool) -> Result<String, String> {
        let env = env();
        Lex {
            escape: '\\',
            env: &env,
            keep_unset: keep,
        }
        .process_word(w)
    }

    #[test]
    fn quotes_escapes_and_variables() {
        let cases = [
            ("plain", "plain"),
            ("\"a b\"", "a b"),
            ("'$A'", "$A"),
            ("\"$A\"", "1"),
            ("x$A-${A}y", "x1-1y"),
            ("a\\ b", "a b"),
            ("\\$A", "$A"),
            ("\"q\\\"q\"", "q\"q"),
            ("${EMPTY:-d}", "d"),
            ("${EMPTY-d}", ""),
            ("${A:+set}", "set"),
            ("${P#*/}", "usr/local/lib/x.tar.gz"),
            ("${P##*/}", "x.tar.gz"),
            ("${P%.*}", "/usr/local/lib/x.tar"),
            ("${P%%.*}", "/usr/local/lib/x"),
            ("${P/lib/LIB}", "/usr/local/LIB/x.tar.gz"),
            ("${P//l/L}", "/usr/LocaL/Lib/x.tar.gz"),
            ("$", "$"),
        ];
        for (input, want) in cases {
            assert_eq!(word(input, true).unwrap(), want, "{input}");
        }
    }

    #[test]
    fn unknown_variables_are_kept_or_emptied() {
        assert_eq!(word("$PATH:/x", true).unwrap(), "$PATH:/x");
        assert_eq!(word("${HOME:-/root}/a", true).unwrap(), "${HOME:-/root}/a");
        assert_eq!(word("${X//a/b}", true).unwrap(), "${X//a/b}");
        assert_eq!(word("$PATH:/x", false).unwrap(), ":/x");
        assert_eq!(word("${HOME:-/root}/a", false).unwrap(), "/root/a");
    }

    #[test]
    fn reports_unknown_variables() {
        let env = env();
        let lex = Lex {
            escape: '\\',
            env: &env,
            keep_unset: false,
        };
        let (text, unset) = lex.process("$A-$X-${Y:-y}-$X").unwrap();
        assert_eq!(text, "1--y-");
        assert_eq!(unset, ["X", "Y"]);
    }

    #[test]
    fn errors() {
        for bad in [
            "\"open",
            "'open",
            "${A",
            "${:}",
            "${A:#x}",
            "${U?must be set}",
        ] {
            assert!(word(bad, false).is_err(), "{bad}");
        }
        assert!(word("${U:?}", false)
            .unwrap_err()
            .contains("not allowed to be unset"));
        assert!(word("${EMPTY:?}", false)
            .unwrap_err()
            .contains("not allowed to be empty"));
    }
}
