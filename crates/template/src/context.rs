//! The build context of COPY steps, handled exactly as the E2B SDK handles it, so a build sent
//! by the CLI and one sent by the SDK name the same files with the same hash: which files a
//! source selects ([`context_files`]: its glob, `.dockerignore` patterns, directories walked),
//! their hash ([`files_hash`], the SDK's `calculate_files_hash`, which names the uploaded
//! archive and is part of the step's cache key) and the archive uploaded for them
//! ([`tar_context`], the SDK's `tar_file_stream`: paths relative to the context directory,
//! optionally gzip). [`read_dockerignore`] reads the context's `.dockerignore`.
//!
//! Not here: sending the archive (the CLI does), unpacking it (the node's builder does).

mod dockerignore;
mod glob;

use std::collections::BTreeSet;
use std::io::{Read, Seek, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

pub use dockerignore::PatternMatcher;

/// Why the files of a COPY step could not be selected, hashed or archived.
#[derive(Debug, thiserror::Error)]
pub enum ContextError {
    /// The source is absolute or leaves the context directory.
    #[error("invalid source path {src:?}: {reason}")]
    InvalidSource {
        /// The source as written.
        src: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// The source matches nothing (after ignore patterns).
    #[error("no files found for {src:?} in {}", context.display())]
    NoFiles {
        /// The source as written.
        src: String,
        /// The context directory.
        context: PathBuf,
    },
    /// An ignore pattern is malformed (an unterminated `[`, ...).
    #[error("invalid ignore pattern {pattern:?}: {reason}")]
    Pattern {
        /// The pattern as written.
        pattern: String,
        /// What is wrong.
        reason: String,
    },
    /// Reading a file or directory failed.
    #[error("reading {}", path.display())]
    Io {
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Writing the archive failed.
    #[error("writing the archive")]
    Archive(#[source] std::io::Error),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> ContextError + '_ {
    move |source| ContextError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The patterns of `<context>/.dockerignore` (none when it does not exist): lines that are
/// neither empty nor comments, trimmed, as the SDK reads them (a UTF-8 BOM is dropped).
pub fn read_dockerignore(context: &Path) -> Result<Vec<String>, ContextError> {
    let path = context.join(".dockerignore");
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err(&path)(e)),
    };
    let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
    Ok(text
        .split('\n')
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| l.trim().to_string())
        .collect())
}

/// `posixpath.normpath`: resolves `.`, `..` and repeated slashes lexically.
pub(crate) fn normpath(path: &str) -> String {
    if path.is_empty() {
        return ".".into();
    }
    // POSIX keeps exactly two leading slashes, collapses three or more to one.
    let leading = if path.starts_with("//") && !path.starts_with("///") {
        2
    } else if path.starts_with('/') {
        1
    } else {
        0
    };
    let mut out: Vec<&str> = Vec::new();
    for comp in path.split('/') {
        match comp {
            "" | "." => {}
            ".." => {
                if leading == 0 && (out.is_empty() || out.last() == Some(&"..")) {
                    out.push("..");
                } else if !out.is_empty() {
                    out.pop();
                }
            }
            c => out.push(c),
        }
    }
    let joined = out.join("/");
    let result = format!("{}{joined}", "/".repeat(leading));
    if result.is_empty() {
        ".".into()
    } else {
        result
    }
}

/// The absolute, lexically normalised form of `path` (`os.path.abspath`).
fn abspath(path: &Path) -> Result<PathBuf, ContextError> {
    let joined = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir()
            .map_err(io_err(Path::new(".")))?
            .join(path)
    };
    Ok(PathBuf::from(normpath(&joined.to_string_lossy())))
}

/// Refuses sources that are absolute or leave the context (the SDK's `validate_relative_path`).
fn validate_source(src: &str) -> Result<(), ContextError> {
    if src.starts_with('/') {
        return Err(ContextError::InvalidSource {
            src: src.into(),
            reason: "absolute paths are not allowed; use a path relative to the context",
        });
    }
    let n = normpath(src);
    if n == ".." || n.starts_with("../") {
        return Err(ContextError::InvalidSource {
            src: src.into(),
            reason: "the path leaves the context directory",
        });
    }
    Ok(())
}

/// An absolute ignore pattern that points into the context becomes relative to it; any other
/// pattern is kept (the SDK's `_normalize_ignore_pattern`).
fn normalize_ignore_pattern(pattern: &str, context: &str) -> String {
    let mut p = pattern.trim();
    let negated = p.starts_with('!');
    if negated {
        p = p[1..].trim();
    }
    let mut out = p.to_string();
    if p.starts_with('/') {
        let norm = normpath(p);
        let base = context.trim_end_matches('/');
        if let Some(rel) = norm.strip_prefix(base).and_then(|r| r.strip_prefix('/')) {
            if !rel.is_empty() {
                out = rel.to_string();
            }
        }
    }
    if negated {
        format!("!{out}")
    } else {
        out
    }
}

/// A file or directory a source selects.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ContextFile {
    /// Absolute path (through the context directory as given, symlinks not resolved).
    pub path: PathBuf,
    /// Path relative to the context directory (`.` for the context itself), `/`-separated:
    /// the name in the archive.
    pub relative: String,
}

/// The files and directories `src` selects in `context`, sorted by path: the glob's matches
/// that are not ignored and, for each matched directory, the directory itself and everything
/// under it that is not ignored (symbolic links are not followed). The SDK's
/// `get_all_files_in_path` with `include_directories`.
pub fn context_files(
    context: &Path,
    src: &str,
    ignore: &[String],
) -> Result<Vec<ContextFile>, ContextError> {
    validate_source(src)?;
    let abs = abspath(context)?;
    let abs_str = abs.to_string_lossy().to_string();
    let normalized: Vec<String> = ignore
        .iter()
        .map(|p| normalize_ignore_pattern(p, &abs_str))
        .collect();
    let matcher = PatternMatcher::new(&normalized)?;

    let mut files: BTreeSet<Vec<u8>> = BTreeSet::new();
    let mut add = |rel: &str| {
        let full = if rel == "." {
            abs_str.clone()
        } else {
            format!("{}/{rel}", abs_str.trim_end_matches('/'))
        };
        files.insert(full.into_bytes());
    };

    let mut matches: Vec<String> = Vec::new();
    for m in glob::glob(&abs, src) {
        let rel = normpath(&m);
        if rel == ".." || rel.starts_with("../") {
            continue;
        }
        matches.push(rel);
    }
    // Parents before their children, so paths under a walked directory are not walked again.
    matches.sort_by_key(|r| {
        if r == "." {
            0
        } else {
            r.matches('/').count() + 1
        }
    });
    let mut walked: BTreeSet<String> = BTreeSet::new();
    let under_walked = |rel: &str, walked: &BTreeSet<String>| {
        if walked.contains(".") {
            return true;
        }
        let mut parent = rel;
        while let Some((p, _)) = parent.rsplit_once('/') {
            if walked.contains(p) {
                return true;
            }
            parent = p;
        }
        false
    };
    for rel in matches {
        if under_walked(&rel, &walked) {
            continue;
        }
        if rel != "." && matcher.matches(&rel) {
            continue;
        }
        let full = if rel == "." {
            abs.clone()
        } else {
            abs.join(&rel)
        };
        let is_link = std::fs::symlink_metadata(&full)
            .map(|m| m.file_type().is_symlink())
            .unwrap_or(false);
        let is_dir = std::fs::metadata(&full)
            .map(|m| m.is_dir())
            .unwrap_or(false);
        add(&rel);
        if is_dir && !is_link {
            walk(&full, &rel, &matcher, &mut add)?;
            walked.insert(rel);
        }
    }
    if files.is_empty() {
        return Err(ContextError::NoFiles {
            src: src.into(),
            context: context.to_path_buf(),
        });
    }
    let prefix = format!("{}/", abs_str.trim_end_matches('/'));
    Ok(files
        .into_iter()
        .map(|bytes| {
            let path = PathBuf::from(std::ffi::OsStr::from_bytes(&bytes));
            let s = String::from_utf8_lossy(&bytes).to_string();
            let relative = if s == abs_str {
                ".".to_string()
            } else {
                s.strip_prefix(&prefix).unwrap_or(&s).to_string()
            };
            ContextFile { path, relative }
        })
        .collect())
}

/// Adds every entry under `dir` that is not ignored, descending into directories (not links
/// to them) that are not ignored or under which a `!` pattern could re-include something.
fn walk(
    dir: &Path,
    rel: &str,
    matcher: &PatternMatcher,
    add: &mut impl FnMut(&str),
) -> Result<(), ContextError> {
    for entry in std::fs::read_dir(dir).map_err(io_err(dir))? {
        let entry = entry.map_err(io_err(dir))?;
        let name = entry.file_name().to_string_lossy().to_string();
        let child = if rel == "." {
            name
        } else {
            format!("{rel}/{name}")
        };
        let ignored = matcher.matches(&child);
        if !ignored {
            add(&child);
        }
        let is_dir = entry.file_type().map_err(io_err(&entry.path()))?.is_dir();
        if is_dir && (!ignored || matcher.may_match_under(&child)) {
            walk(&entry.path(), &child, matcher, add)?;
        }
    }
    Ok(())
}

/// The sha256 (hex) the SDK's `calculate_files_hash` gives the files of `COPY src dest`: over
/// `COPY {src} {dest}`, then per file (sorted) its relative path, its mode and (not for
/// directories) size in decimal, and a regular file's content or a symbolic link's target
/// (links are followed when `resolve_symlinks` and they point to a file or directory).
/// Owners and times are left out so the hash is the same on every machine.
pub fn files_hash(
    context: &Path,
    src: &str,
    dest: &str,
    ignore: &[String],
    resolve_symlinks: bool,
) -> Result<String, ContextError> {
    let files = context_files(context, src, ignore)?;
    let mut h = Sha256::new();
    h.update(format!("COPY {src} {dest}").as_bytes());
    let hash_stats = |h: &mut Sha256, meta: &std::fs::Metadata| {
        h.update(meta.mode().to_string().as_bytes());
        if !meta.is_dir() {
            h.update(meta.size().to_string().as_bytes());
        }
    };
    let mut buf = vec![0u8; 1 << 20];
    for f in &files {
        h.update(f.relative.as_bytes());
        let lmeta = std::fs::symlink_metadata(&f.path).map_err(io_err(&f.path))?;
        if lmeta.file_type().is_symlink() {
            let target_kind = std::fs::metadata(&f.path).ok();
            let follow = resolve_symlinks && target_kind.is_some_and(|m| m.is_file() || m.is_dir());
            if !follow {
                hash_stats(&mut h, &lmeta);
                let target = std::fs::read_link(&f.path).map_err(io_err(&f.path))?;
                h.update(target.as_os_str().as_bytes());
                continue;
            }
        }
        let meta = std::fs::metadata(&f.path).map_err(io_err(&f.path))?;
        hash_stats(&mut h, &meta);
        if meta.is_file() {
            let mut file = std::fs::File::open(&f.path).map_err(io_err(&f.path))?;
            loop {
                let n = file.read(&mut buf).map_err(io_err(&f.path))?;
                if n == 0 {
                    break;
                }
                h.update(&buf[..n]);
            }
        }
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// The archive of the files `src` selects, as the SDK uploads it: a tar (gzip when `gzip`)
/// with one entry per selected file or directory (directories without their contents, which
/// have entries of their own), named by its path relative to the context; symbolic links are
/// stored as links unless `resolve_symlinks`. Written to an anonymous temporary file, returned
/// positioned at its start.
pub fn tar_context(
    context: &Path,
    src: &str,
    ignore: &[String],
    resolve_symlinks: bool,
    gzip: bool,
) -> Result<std::fs::File, ContextError> {
    let files = context_files(context, src, ignore)?;
    let file = tempfile::tempfile().map_err(ContextError::Archive)?;
    let mut file = if gzip {
        let enc = flate2::write::GzEncoder::new(file, flate2::Compression::default());
        append_all(enc, &files, resolve_symlinks)?
            .finish()
            .map_err(ContextError::Archive)?
    } else {
        append_all(file, &files, resolve_symlinks)?
    };
    file.flush().map_err(ContextError::Archive)?;
    file.rewind().map_err(ContextError::Archive)?;
    Ok(file)
}

fn append_all<W: Write>(
    w: W,
    files: &[ContextFile],
    resolve_symlinks: bool,
) -> Result<W, ContextError> {
    let mut b = tar::Builder::new(w);
    b.follow_symlinks(resolve_symlinks);
    b.mode(tar::HeaderMode::Complete);
    for f in files {
        let meta = if resolve_symlinks {
            std::fs::metadata(&f.path).or_else(|_| std::fs::symlink_metadata(&f.path))
        } else {
            std::fs::symlink_metadata(&f.path)
        }
        .map_err(io_err(&f.path))?;
        if meta.is_dir() {
            b.append_dir(&f.relative, &f.path)
        } else {
            b.append_path_with_name(&f.path, &f.relative)
        }
        .map_err(io_err(&f.path))?;
    }
    b.into_inner().map_err(ContextError::Archive)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
