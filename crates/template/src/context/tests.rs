use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use super::*;

/// Pythons that may have the E2B SDK: `PADDOCK_SDK_PYTHON`, a helper's venv, the venv that
/// `scripts/test.sh` sets up before the Rust tests.
const SDK_PYTHONS: [&str; 2] = [
    "/tmp/sdkvenv/bin/python",
    "/var/cache/paddock/venv/bin/python",
];

/// The first Python that can import the SDK's template utilities.
fn sdk_python() -> Option<String> {
    let candidates = std::env::var("PADDOCK_SDK_PYTHON")
        .ok()
        .into_iter()
        .chain(SDK_PYTHONS.iter().map(|s| s.to_string()));
    for py in candidates {
        let ok = Command::new(&py)
            .args(["-c", "import e2b.template.utils"])
            .output()
            .is_ok_and(|o| o.status.success());
        if ok {
            return Some(py);
        }
    }
    None
}

fn write(root: &Path, rel: &str, content: &str, mode: u32) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(&p, content).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn mkdir(root: &Path, rel: &str) {
    let p = root.join(rel);
    std::fs::create_dir_all(&p).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// A context with nested directories, hidden files, symbolic links (to a file, a directory and
/// nowhere) and a `.dockerignore` with a re-inclusion.
fn tree() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let r = dir.path();
    std::fs::set_permissions(r, std::fs::Permissions::from_mode(0o755)).unwrap();
    for d in [
        "src",
        "src/sub",
        "src/node_modules",
        ".hidden",
        "docs",
        "empty",
    ] {
        mkdir(r, d);
    }
    write(r, "app.py", "print('hi')\n", 0o644);
    write(r, "run.sh", "#!/bin/sh\necho run\n", 0o755);
    write(r, "src/main.py", "import os\n", 0o644);
    write(r, "src/sub/data.txt", "data", 0o600);
    write(r, "src/sub/skip.log", "log", 0o644);
    write(r, "src/node_modules/m.js", "m", 0o644);
    write(r, ".hidden/h", "h", 0o644);
    write(r, ".env", "A=1", 0o644);
    write(r, "docs/keep.md", "keep", 0o644);
    write(r, "docs/drop.md", "drop", 0o644);
    write(r, "notes.log", "n", 0o644);
    std::os::unix::fs::symlink("app.py", r.join("link.py")).unwrap();
    std::os::unix::fs::symlink("src", r.join("srclink")).unwrap();
    std::os::unix::fs::symlink("nowhere", r.join("broken")).unwrap();
    write(
        r,
        ".dockerignore",
        "# build output\n*.log\n**/node_modules\ndocs\n!docs/keep.md\n\n",
        0o644,
    );
    dir
}

fn ignore(root: &Path) -> Vec<String> {
    read_dockerignore(root).unwrap()
}

#[test]
fn reads_dockerignore() {
    let dir = tree();
    assert_eq!(
        ignore(dir.path()),
        ["*.log", "**/node_modules", "docs", "!docs/keep.md"]
    );
    assert!(read_dockerignore(&dir.path().join("src"))
        .unwrap()
        .is_empty());
}

#[test]
fn selects_files_like_the_sdk() {
    let dir = tree();
    let r = dir.path();
    let rel = |src: &str| -> Vec<String> {
        context_files(r, src, &ignore(r))
            .unwrap()
            .into_iter()
            .map(|f| f.relative)
            .collect()
    };
    // `*.log` is anchored at the root, as in Docker.
    assert_eq!(
        rel("src"),
        [
            "src",
            "src/main.py",
            "src/sub",
            "src/sub/data.txt",
            "src/sub/skip.log"
        ]
    );
    assert_eq!(rel("*.py"), ["app.py", "link.py"]);
    // An ignored match is skipped whole, re-inclusions under it too (as the SDK does).
    assert!(matches!(
        context_files(r, "docs", &ignore(r)),
        Err(ContextError::NoFiles { .. })
    ));
    let all = rel(".");
    assert_eq!(all[0], ".");
    assert!(all.contains(&".env".to_string()));
    assert!(all.contains(&"srclink".to_string()));
    assert!(!all.iter().any(|p| p.starts_with("srclink/")));
    assert!(all.contains(&"docs/keep.md".to_string()));
    assert!(!all.contains(&"docs/drop.md".to_string()));
    assert!(!all
        .iter()
        .any(|p| p == "notes.log" || p.contains("node_modules")));
    assert!(matches!(
        context_files(r, "nothing*", &[]),
        Err(ContextError::NoFiles { .. })
    ));
    assert!(matches!(
        context_files(r, "../x", &[]),
        Err(ContextError::InvalidSource { .. })
    ));
    assert!(matches!(
        context_files(r, "/etc", &[]),
        Err(ContextError::InvalidSource { .. })
    ));
    assert!(matches!(
        context_files(r, "src", &["[".to_string()]),
        Err(ContextError::Pattern { .. })
    ));
}

/// The hash of a fixed file as the SDK (e2b 2.63.0) computes it: pins the algorithm where the
/// SDK is not installed. It is the sha256 of `COPY hello.txt /app/`, `hello.txt`, `33188`
/// (the mode), `6` (the size) and the content.
#[test]
fn hash_of_a_known_file() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "hello.txt", "hello\n", 0o644);
    let h = files_hash(dir.path(), "hello.txt", "/app/", &[], false).unwrap();
    assert_eq!(
        h,
        "4dd5aecb721a41a82cbb86b502c4bd814c9538f673dbf53143e5ac5f64efd2f4"
    );
}

/// Runs the SDK's own functions on the same tree for every `(src, ignore, resolve_symlinks)`
/// case, in one Python process; `None` when no Python with the SDK is installed.
fn sdk(root: &Path, cases: &[(&str, Vec<String>, bool)]) -> Option<Vec<(String, Vec<String>)>> {
    let Some(python) = sdk_python() else {
        eprintln!("skipping the comparison with the SDK: no Python with e2b in {SDK_PYTHONS:?}");
        return None;
    };
    let script = r#"
import json, os, sys
from e2b.template.utils import calculate_files_hash, get_all_files_in_path
root, cases = sys.argv[1], json.loads(sys.argv[2])
out = []
for src, ignore, resolve in cases:
    files = get_all_files_in_path(src, root, ignore, True)
    h = calculate_files_hash(src, "/dest/", root, ignore, resolve, None)
    out.append({"hash": h, "files": [os.path.relpath(f, root) for f in files]})
print(json.dumps(out))
"#;
    let out = Command::new(&python)
        .args([
            "-c",
            script,
            root.to_str().unwrap(),
            &serde_json::to_string(cases).unwrap(),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    Some(
        v.iter()
            .map(|r| {
                let files = r["files"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|f| f.as_str().unwrap().to_string())
                    .collect();
                (r["hash"].as_str().unwrap().to_string(), files)
            })
            .collect(),
    )
}

#[test]
fn hashes_and_files_match_the_sdk() {
    let dir = tree();
    let r = dir.path();
    let from_file = ignore(r);
    let cases: Vec<(&str, Vec<String>, bool)> = vec![
        (".", from_file.clone(), false),
        (".", vec![], false),
        (".", vec![], true),
        ("src", from_file.clone(), false),
        ("src/", vec![], false),
        ("./src", vec![], false),
        ("src/**", vec![], false),
        ("**/*.py", vec![], false),
        ("*/*.py", vec![], false),
        ("*.py", vec![], true),
        ("link.py", vec![], false),
        ("link.py", vec![], true),
        ("srclink", vec![], true),
        ("srclink", vec![], false),
        ("broken", vec![], false),
        ("[a-r]*.??", vec![], false),
        ("docs", vec![], false),
        ("src/sub/*", from_file.clone(), false),
        (".hidden", vec![], false),
        ("src/../app.py", vec![], false),
        (
            ".",
            vec!["*".into(), "!src".into(), "src/sub".into()],
            false,
        ),
        (
            ".",
            vec![format!("{}/src", r.display()), "!**/*.py".into()],
            false,
        ),
        ("src", vec!["src/s?b".into()], false),
        (".", vec!["**".into(), "!src/**/*.txt".into()], false),
        ("*", vec![], false),
        (".*", vec![], false),
        ("**/", vec![], false),
        ("src/*/", vec![], false),
        ("[[:alpha:]]pp.py", vec![], false),
        ("**", from_file.clone(), false),
        (
            ".",
            vec!["src/sub/".into(), "/app.py".into(), "**/*.md".into()],
            false,
        ),
    ];
    let Some(want) = sdk(r, &cases) else {
        return;
    };
    assert_eq!(want.len(), cases.len());
    for ((src, ign, resolve), (want_hash, want_files)) in cases.iter().zip(want) {
        let got_files: Vec<String> = context_files(r, src, ign)
            .unwrap()
            .into_iter()
            .map(|f| f.relative)
            .collect();
        assert_eq!(got_files, want_files, "files of {src:?} ignoring {ign:?}");
        let got = files_hash(r, src, "/dest/", ign, *resolve).unwrap();
        assert_eq!(
            got, want_hash,
            "hash of {src:?} ignoring {ign:?} resolve {resolve}"
        );
    }
}

fn entries(file: std::fs::File, gzip: bool) -> Vec<(String, tar::EntryType, Vec<u8>)> {
    let reader: Box<dyn Read> = if gzip {
        Box::new(flate2::read::GzDecoder::new(file))
    } else {
        Box::new(file)
    };
    let mut archive = tar::Archive::new(reader);
    let mut out = Vec::new();
    for e in archive.entries().unwrap() {
        let mut e = e.unwrap();
        let name = e
            .path()
            .unwrap()
            .to_string_lossy()
            .trim_end_matches('/')
            .to_string();
        let kind = e.header().entry_type();
        let mut data = Vec::new();
        e.read_to_end(&mut data).unwrap();
        out.push((name, kind, data));
    }
    out
}

#[test]
fn archives_relative_paths() {
    let dir = tree();
    let r = dir.path();
    let ign = ignore(r);
    let got = entries(tar_context(r, "src", &ign, false, true).unwrap(), true);
    let names: Vec<&str> = got.iter().map(|(n, _, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "src",
            "src/main.py",
            "src/sub",
            "src/sub/data.txt",
            "src/sub/skip.log"
        ]
    );
    assert_eq!(got[0].1, tar::EntryType::Directory);
    assert_eq!(got[1].2, b"import os\n");

    let got = entries(tar_context(r, "*.py", &ign, false, false).unwrap(), false);
    assert_eq!(got[1].0, "link.py");
    assert_eq!(got[1].1, tar::EntryType::Symlink);
    let got = entries(tar_context(r, "*.py", &ign, true, false).unwrap(), false);
    assert_eq!(got[1].1, tar::EntryType::Regular);
    assert_eq!(got[1].2, b"print('hi')\n");

    let got = entries(tar_context(r, ".", &ign, false, true).unwrap(), true);
    assert_eq!(got[0].0, ".");
    assert!(got.iter().any(|(n, _, _)| n == "docs/keep.md"));
    assert!(!got.iter().any(|(n, _, _)| n == "docs/drop.md"));
}

#[test]
fn normpath_is_posix() {
    for (a, b) in [
        ("", "."),
        ("a/./b", "a/b"),
        ("a/../..", ".."),
        ("/../x", "/x"),
        ("//x", "//x"),
        ("///x//y/", "/x/y"),
        ("./", "."),
    ] {
        assert_eq!(normpath(a), b, "{a:?}");
    }
}
