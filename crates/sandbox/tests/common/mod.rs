//! Helpers shared by the sandbox crate's integration tests.

use std::path::PathBuf;

/// The shared libraries `bin` loads, as `ldd` lists them (absolute paths only).
pub fn shared_libraries(bin: &str) -> Vec<PathBuf> {
    let out = std::process::Command::new("ldd")
        .arg(bin)
        .output()
        .expect("ldd");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or "/lib64/ld-linux-x86-64.so.2 (0x...)"
        .filter_map(|line| line.split("=>").last()?.split_whitespace().next())
        .filter(|p| p.starts_with('/'))
        .map(PathBuf::from)
        .collect()
}
