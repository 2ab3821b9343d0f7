//! The lexical layer of Dockerfiles, as BuildKit's parser has it: parser directives, comments
//! and line continuations ([`split`] into [`Instruction`]s), builder flags, word splitting, the
//! exec (JSON) form of commands and heredoc markers; plus Python's `shlex.quote`, with which the
//! SDK joins exec-form commands into shell commands.

use super::{syntax as syntax_error, DockerfileError};

/// One logical instruction: continuation lines joined, flags taken off.
pub(super) struct Instruction {
    pub(super) line: usize,
    /// Upper case.
    pub(super) name: String,
    /// The logical line as written (trimmed).
    pub(super) text: String,
    /// `--flag[=value]` words before the arguments, quotes removed.
    pub(super) flags: Vec<String>,
    /// The rest of the line.
    pub(super) rest: String,
}

/// Reads the parser directives and splits the text into logical instructions (BuildKit's
/// parser: comments dropped, even inside continuations; a line ending in the escape character
/// continues on the next; empty continuation lines skipped).
pub(super) fn split(text: &str) -> Result<(char, Vec<Instruction>), DockerfileError> {
    let lines: Vec<&str> = text.lines().collect();
    let mut escape = '\\';
    let mut i = 0;
    // Directives: `# key=value` lines at the very top.
    while i < lines.len() {
        let Some((key, value)) = directive(lines[i]) else {
            break;
        };
        if key == "escape" {
            escape = match value.as_str() {
                "\\" => '\\',
                "`" => '`',
                other => {
                    return Err(syntax_error(
                        i + 1,
                        format!("invalid escape token {other:?}"),
                    ));
                }
            };
        }
        i += 1;
    }
    let continues = |line: &str| -> Option<String> {
        let trimmed = line.trim_end_matches([' ', '\t']);
        trimmed.strip_suffix(escape).map(|s| s.to_string())
    };
    let mut out = Vec::new();
    while i < lines.len() {
        let start = i;
        let first = lines[i].trim_start();
        i += 1;
        if first.is_empty() || first.starts_with('#') {
            continue;
        }
        let mut logical = String::new();
        match continues(first) {
            None => logical.push_str(first),
            Some(head) => {
                logical.push_str(&head);
                while i < lines.len() {
                    let next = lines[i];
                    i += 1;
                    let t = next.trim_start();
                    if t.starts_with('#') || t.is_empty() {
                        continue;
                    }
                    match continues(next) {
                        Some(part) => logical.push_str(&part),
                        None => {
                            logical.push_str(next);
                            break;
                        }
                    }
                }
            }
        }
        let logical = logical.trim().to_string();
        if logical.is_empty() {
            continue;
        }
        let (word, args) = match logical.split_once(char::is_whitespace) {
            Some((w, a)) => (w, a.trim_start()),
            None => (logical.as_str(), ""),
        };
        let (flags, rest) = extract_flags(args);
        out.push(Instruction {
            line: start + 1,
            name: word.to_ascii_uppercase(),
            text: logical.clone(),
            flags,
            rest: rest.trim().to_string(),
        });
    }
    Ok((escape, out))
}

/// `# key=value` (BuildKit's parser directive syntax), key lowercased.
pub(super) fn directive(line: &str) -> Option<(String, String)> {
    let body = line.trim().strip_prefix('#')?.trim_start();
    let (key, value) = body.split_once('=')?;
    let key = key.trim();
    if key.is_empty()
        || !key.chars().next()?.is_ascii_alphabetic()
        || !key.chars().all(|c| c.is_ascii_alphanumeric())
    {
        return None;
    }
    Some((key.to_ascii_lowercase(), value.trim().to_string()))
}

/// Takes the leading `--flag[=value]` words off an argument string (BuildKit's
/// `extractBuilderFlags`: quotes and `\` escapes inside a flag are resolved, `--` alone ends
/// the flags).
pub(super) fn extract_flags(line: &str) -> (Vec<String>, &str) {
    let chars: Vec<(usize, char)> = line.char_indices().collect();
    let mut flags = Vec::new();
    let mut pos = 0;
    loop {
        while pos < chars.len() && chars[pos].1.is_whitespace() {
            pos += 1;
        }
        if pos >= chars.len() {
            return (flags, "");
        }
        let at = chars[pos].0;
        if !line[at..].starts_with("--") {
            return (flags, &line[at..]);
        }
        let mut word = String::new();
        let mut quote: Option<char> = None;
        while pos < chars.len() {
            let c = chars[pos].1;
            match quote {
                None if c.is_whitespace() => break,
                None if c == '\'' || c == '"' => quote = Some(c),
                Some(q) if c == q => quote = None,
                _ if c == '\\' => {
                    if pos + 1 < chars.len() {
                        pos += 1;
                        word.push(chars[pos].1);
                    }
                }
                _ => word.push(c),
            }
            pos += 1;
        }
        if word == "--" {
            let rest = chars.get(pos).map_or("", |&(at, _)| &line[at..]);
            return (flags, rest);
        }
        flags.push(word);
    }
}

/// BuildKit's `parseWords`: splits on whitespace outside quotes, keeping quotes and escapes in
/// the words (they are resolved when each word is processed).
pub(super) fn parse_words(rest: &str, escape: char) -> Vec<String> {
    let chars: Vec<char> = rest.chars().collect();
    let mut words = Vec::new();
    let mut word = String::new();
    let mut blank_ok = false;
    let mut quote: Option<char> = None;
    let mut in_word = false;
    let mut i = 0;
    while i < chars.len() {
        let ch = chars[i];
        match quote {
            None => {
                if ch.is_whitespace() {
                    if in_word && (blank_ok || !word.is_empty()) {
                        words.push(std::mem::take(&mut word));
                    }
                    word.clear();
                    in_word = false;
                    blank_ok = false;
                    i += 1;
                    continue;
                }
                in_word = true;
                if ch == '\'' || ch == '"' {
                    quote = Some(ch);
                    blank_ok = true;
                }
                if ch == escape {
                    if i + 1 == chars.len() {
                        i += 1;
                        continue;
                    }
                    word.push(ch);
                    i += 1;
                }
                word.push(chars[i]);
            }
            Some(q) => {
                if ch == q {
                    quote = None;
                }
                if ch == escape && q != '\'' {
                    if i + 1 == chars.len() {
                        quote = None;
                        i += 1;
                        continue;
                    }
                    word.push(ch);
                    i += 1;
                }
                word.push(chars[i]);
            }
        }
        i += 1;
    }
    if in_word && (blank_ok || !word.is_empty()) {
        words.push(word);
    }
    words
}

/// The arguments of an exec-form instruction (`["a", "b"]`), `None` for the shell form.
pub(super) fn json_args(rest: &str) -> Option<Vec<String>> {
    let rest = rest.trim();
    if !rest.starts_with('[') {
        return None;
    }
    serde_json::from_str::<Vec<String>>(rest).ok()
}

/// Python's `shlex.quote`.
pub(super) fn shell_quote(s: &str) -> String {
    if s.is_empty() {
        return "''".into();
    }
    let safe = s
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "@%+=:,./-_".contains(c));
    if safe {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\"'\"'"))
    }
}

pub(super) fn shell_join(words: &[String]) -> String {
    words
        .iter()
        .map(|w| shell_quote(w))
        .collect::<Vec<_>>()
        .join(" ")
}

/// A CMD or ENTRYPOINT: exec form (JSON) or shell form.
pub(super) struct Command {
    pub(super) exec: bool,
    pub(super) args: Vec<String>,
}

impl Command {
    pub(super) fn parse(rest: &str) -> Command {
        match json_args(rest) {
            Some(args) => Command { exec: true, args },
            None if rest.trim().is_empty() => Command {
                exec: false,
                args: Vec::new(),
            },
            None => Command {
                exec: false,
                args: vec![rest.trim().to_string()],
            },
        }
    }
}

/// A heredoc marker word: `<<EOF`, `<<-EOF`, `<<"EOF"` (not the here-string `<<<`).
pub(super) fn is_heredoc(word: &str) -> bool {
    let Some(rest) = word.strip_prefix("<<") else {
        return false;
    };
    let rest = rest.strip_prefix('-').unwrap_or(rest);
    let rest = rest.trim_start_matches(['"', '\'']);
    rest.chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
}
