//! Debian templates built with `debootstrap --variant=minbase --include=<packages>` from the
//! host's Debian mirror, then configured inside a chroot: the `user` account with passwordless
//! sudo, apt caches removed, mount points for the runtime, and the build host's resolv.conf,
//! hostname and hosts replaced. A [`DebianSpec`] says which suite and packages; the default
//! template `base` is [`BASE_SPEC`] (bookworm with E2B's tools, [`TemplateStore::ensure_base`]),
//! and the `debian:<suite>` base images of builds ([`super::images`]) use the same path.
//! debootstrap's output is streamed to the progress callback.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use chrono::Utc;
use paddock_domain::{Resources, TemplateName};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

use super::{Progress, Template, TemplateError, TemplateMeta, TemplateSource, TemplateStore};

/// Name of the default template.
pub const BASE_TEMPLATE: &str = "base";
/// Debian suite of the base template.
pub const SUITE: &str = "bookworm";
/// Mirror used when the host's apt configuration names none.
pub const DEFAULT_MIRROR: &str = "http://deb.debian.org/debian";
/// Packages added to debootstrap's minbase: the tools of E2B's base image that Debian ships.
pub const PACKAGES: &[&str] = &[
    "python3",
    "python-is-python3",
    "python3-pip",
    "python3-venv",
    "bash",
    "coreutils",
    "procps",
    "ca-certificates",
    "curl",
    "wget",
    "git",
    "sudo",
    "less",
    "nano",
    "vim-tiny",
    "unzip",
    "zip",
    "xz-utils",
    "jq",
    "file",
    "iproute2",
    "iputils-ping",
    "nodejs",
];

/// Version of what a Debian template is built with ([`PACKAGES`] and the configuration script
/// run in the chroot), recorded in its `template.json`. Bump it with every change to either:
/// `paddock serve` then says that an existing `base` is older, and the test script rebuilds
/// its cached one. 2: `/etc/profile` reads bash's `EUID` instead of forking `id -u`.
/// 3: `python` is `python3` (`python-is-python3`), as in E2B's base image.
pub const RECIPE: u32 = 3;

/// The recipe version of records written before [`RECIPE`] existed.
pub(crate) fn first_recipe() -> u32 {
    1
}

/// The `base` template: [`SUITE`] with [`PACKAGES`].
pub const BASE_SPEC: DebianSpec<'static> = DebianSpec {
    suite: SUITE,
    packages: PACKAGES,
};

/// Where debootstrap keeps its per-suite scripts.
const SCRIPTS_DIR: &str = "/usr/share/debootstrap/scripts";
/// The script of suites debootstrap has none for (every current Debian suite's script is a
/// link to it).
const FALLBACK_SCRIPT: &str = "sid";

/// What a Debian template is bootstrapped from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DebianSpec<'a> {
    /// The suite as debootstrap takes it: a codename (`bookworm`) or an alias the mirror
    /// serves (`stable`).
    pub suite: &'a str,
    /// Packages added to debootstrap's minbase variant.
    pub packages: &'a [&'a str],
}

/// Runs inside the chroot after debootstrap.
const CONFIGURE_SCRIPT: &str = r#"set -eu
getent group user >/dev/null || groupadd --gid 1000 user
id -u user >/dev/null 2>&1 || useradd --uid 1000 --gid 1000 --create-home --home-dir /home/user --shell /bin/bash user
mkdir -p /home/user
chown 1000:1000 /home/user
chmod 0755 /home/user
echo 'user ALL=(ALL:ALL) NOPASSWD: ALL' > /etc/sudoers.d/user
chmod 0440 /etc/sudoers.d/user
apt-get clean
rm -rf /var/lib/apt/lists/*
mkdir -p /usr/local/bin /run/paddock
# debootstrap copies the build host's resolver and hostname: none of that belongs in a template.
: > /etc/resolv.conf
echo sandbox > /etc/hostname
printf '127.0.0.1\tlocalhost\n127.0.1.1\tsandbox\n::1\tlocalhost ip6-localhost ip6-loopback\n' > /etc/hosts
# Every command the SDKs run is `bash -l -c ...`, and Debian's /etc/profile forks `id -u` for it
# (about 1 ms of a 2 ms login shell). bash knows its EUID; sh (dash) has none and still asks id.
if [ -f /etc/profile ]; then sed -i 's/"\$(id -u)"/"${EUID:-$(id -u)}"/g' /etc/profile; fi
echo "configured: $(. /etc/os-release && echo "$PRETTY_NAME"), user $(id user)"
"#;

/// Lines of output kept for error messages.
const TAIL_LINES: usize = 15;

impl TemplateStore {
    /// Returns the `base` template, building it with debootstrap first if it does not exist.
    /// Concurrent callers wait for one build. Takes a minute or two the first time.
    pub async fn ensure_base(&self, progress: Progress<'_>) -> Result<Template, TemplateError> {
        let name = TemplateName::parse(BASE_TEMPLATE).expect("'base' is a valid template name");
        self.ensure_debian(&name, &BASE_SPEC, progress).await
    }

    /// Returns template `name`, building it first from `spec` with debootstrap if it does not
    /// exist. Concurrent callers for one name wait for one build. Takes a minute or more, and
    /// the host's Debian mirror must serve `spec.suite`.
    pub async fn ensure_debian(
        &self,
        name: &TemplateName,
        spec: &DebianSpec<'_>,
        progress: Progress<'_>,
    ) -> Result<Template, TemplateError> {
        if let Some(t) = self.get(name)? {
            return Ok(t);
        }
        let lock = self.lock_for(name);
        let _guard = lock.lock().await;
        if let Some(t) = self.get(name)? {
            return Ok(t);
        }
        let debootstrap = find_program("debootstrap").ok_or(TemplateError::MissingTool {
            tool: "debootstrap",
            hint: "apt-get install debootstrap",
        })?;
        let chroot = find_program("chroot").ok_or(TemplateError::MissingTool {
            tool: "chroot",
            hint: "apt-get install coreutils",
        })?;
        let mirror = host_mirror();
        let build = self.start_build(name)?;
        let rootfs = build.rootfs();
        let suite = spec.suite;
        progress(&format!(
            "[{name}] building Debian {suite} from {mirror} into {} (takes a minute or two)",
            self.root.display()
        ));
        let started = std::time::Instant::now();

        let mut cmd = Command::new(&debootstrap);
        cmd.arg("--variant=minbase")
            .arg(format!("--include={}", spec.packages.join(",")))
            .arg(suite)
            .arg(&rootfs)
            .arg(&mirror);
        if let Some(script) = debootstrap_script(Path::new(SCRIPTS_DIR), suite) {
            cmd.arg(script);
        }
        run_step(name, "debootstrap", cmd, progress)
            .await
            .map_err(|e| explain_missing_suite(e, suite, &mirror))?;

        let mut cmd = Command::new(&chroot);
        cmd.arg(&rootfs)
            .args(["/bin/sh", "-c", CONFIGURE_SCRIPT])
            .env_clear()
            .env(
                "PATH",
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            )
            .env("HOME", "/root")
            .env("LC_ALL", "C");
        run_step(name, "configure", cmd, progress).await?;

        let meta = TemplateMeta {
            name: name.clone(),
            resources: Resources::default(),
            created_at: Utc::now(),
            source: TemplateSource::Debootstrap {
                suite: suite.into(),
                mirror,
                packages: spec.packages.iter().map(|p| p.to_string()).collect(),
                recipe: RECIPE,
            },
            config: Default::default(),
        };
        let template = self.commit(build, &meta)?;
        progress(&format!(
            "[{name}] template ready in {:.0?}",
            started.elapsed()
        ));
        Ok(template)
    }
}

/// The script to give debootstrap for `suite` when it has none of its own in `scripts_dir`
/// (a suite newer than the installed debootstrap): the `sid` script, which every current
/// suite's script links to. `None` when debootstrap knows the suite (or has no `sid` either,
/// and will say so itself).
fn debootstrap_script(scripts_dir: &Path, suite: &str) -> Option<PathBuf> {
    if scripts_dir.join(suite).exists() {
        return None;
    }
    let fallback = scripts_dir.join(FALLBACK_SCRIPT);
    fallback.exists().then_some(fallback)
}

/// Turns debootstrap's "Failed getting release file" into a message naming the suite and
/// the mirror; other errors pass unchanged.
fn explain_missing_suite(err: TemplateError, suite: &str, mirror: &str) -> TemplateError {
    match err {
        TemplateError::Build { step, detail } if detail.contains("Failed getting release file") => {
            TemplateError::Build {
                step,
                detail: format!(
                    "the mirror {mirror} does not serve Debian '{suite}' (or cannot be reached); \
                     {detail}"
                ),
            }
        }
        other => other,
    }
}

/// Runs one build step of template `name`, streaming its stdout and stderr lines to
/// `progress` as `[<name>] <step>: <line>`; fails with the exit status and the last lines of
/// output.
async fn run_step(
    name: &TemplateName,
    step: &str,
    mut cmd: Command,
    progress: Progress<'_>,
) -> Result<(), TemplateError> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd
        .spawn()
        .map_err(TemplateError::io(format!("cannot start {step}")))?;
    let mut out = child.stdout.take().map(|s| BufReader::new(s).lines());
    let mut err = child.stderr.take().map(|s| BufReader::new(s).lines());
    let mut tail = std::collections::VecDeque::with_capacity(TAIL_LINES);
    while out.is_some() || err.is_some() {
        let line = tokio::select! {
            l = next_line(&mut out), if out.is_some() => l.map_err(TemplateError::io(format!("cannot read {step} output")))?,
            l = next_line(&mut err), if err.is_some() => l.map_err(TemplateError::io(format!("cannot read {step} output")))?,
        };
        if let Some(line) = line {
            progress(&format!("[{name}] {step}: {line}"));
            if tail.len() == TAIL_LINES {
                tail.pop_front();
            }
            tail.push_back(line);
        }
    }
    let status = child
        .wait()
        .await
        .map_err(TemplateError::io(format!("cannot wait for {step}")))?;
    if status.success() {
        return Ok(());
    }
    let tail: Vec<String> = tail.into_iter().collect();
    Err(TemplateError::Build {
        step: step.into(),
        detail: format!("{status}; last output:\n{}", tail.join("\n")),
    })
}

/// The next line of a stream; sets the stream to `None` at its end.
async fn next_line<R: tokio::io::AsyncBufRead + Unpin>(
    lines: &mut Option<tokio::io::Lines<R>>,
) -> std::io::Result<Option<String>> {
    let Some(l) = lines.as_mut() else {
        return Ok(None);
    };
    let line = l.next_line().await?;
    if line.is_none() {
        *lines = None;
    }
    Ok(line)
}

/// Finds an executable in `PATH` or the sbin directories (root's `PATH` may lack them).
fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/local/sbin", "/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// The Debian mirror of the host's apt configuration, or [`DEFAULT_MIRROR`].
pub fn host_mirror() -> String {
    mirror_from_apt_config(Path::new("/etc/apt")).unwrap_or_else(|| DEFAULT_MIRROR.to_string())
}

/// Looks for a mirror serving [`SUITE`] in `<etc_apt>/sources.list.d/*.sources` (deb822) and
/// then `<etc_apt>/sources.list` (one-line format).
pub fn mirror_from_apt_config(etc_apt: &Path) -> Option<String> {
    let mut sources: Vec<PathBuf> = std::fs::read_dir(etc_apt.join("sources.list.d"))
        .map(|rd| {
            rd.flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|e| e == "sources"))
                .collect()
        })
        .unwrap_or_default();
    sources.sort();
    for file in sources {
        if let Some(m) = std::fs::read_to_string(&file)
            .ok()
            .and_then(|t| mirror_from_deb822(&t))
        {
            return Some(m);
        }
    }
    let list = std::fs::read_to_string(etc_apt.join("sources.list")).ok()?;
    mirror_from_one_line(&list)
}

/// The first `URIs:` of a deb822 stanza of type `deb` whose `Suites:` include [`SUITE`].
pub fn mirror_from_deb822(text: &str) -> Option<String> {
    for stanza in text.split("\n\n") {
        let (mut types, mut uris, mut suites, mut enabled) =
            (String::new(), String::new(), String::new(), true);
        for line in stanza.lines() {
            let line = line.trim();
            if line.starts_with('#') {
                continue;
            }
            let Some((key, value)) = line.split_once(':') else {
                continue;
            };
            let value = value.trim().to_string();
            match key.trim().to_ascii_lowercase().as_str() {
                "types" => types = value,
                "uris" => uris = value,
                "suites" => suites = value,
                "enabled" => enabled = value != "no",
                _ => {}
            }
        }
        if enabled
            && types.split_whitespace().any(|t| t == "deb")
            && suites.split_whitespace().any(|s| s == SUITE)
        {
            if let Some(uri) = uris.split_whitespace().find(|u| is_http(u)) {
                return Some(uri.trim_end_matches('/').to_string());
            }
        }
    }
    None
}

/// The URI of the first `deb [options] URI bookworm ...` line.
pub fn mirror_from_one_line(text: &str) -> Option<String> {
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or_default();
        let mut words = line.split_whitespace();
        if words.next() != Some("deb") {
            continue;
        }
        let mut rest: Vec<&str> = words.collect();
        if rest.first().is_some_and(|w| w.starts_with('[')) {
            let end = rest.iter().position(|w| w.ends_with(']'))?;
            rest.drain(..=end);
        }
        if let [uri, suite, ..] = rest.as_slice() {
            if *suite == SUITE && is_http(uri) {
                return Some(uri.trim_end_matches('/').to_string());
            }
        }
    }
    None
}

fn is_http(uri: &str) -> bool {
    uri.starts_with("http://") || uri.starts_with("https://")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deb822_picks_the_bookworm_stanza() {
        let text = "Types: deb\nURIs: http://security.debian.org/debian-security\nSuites: bookworm-security\n\
                    Components: main\n\n# comment\nTypes: deb deb-src\nURIs: http://mirror.example/debian/\n\
                    Suites: bookworm bookworm-updates\nComponents: main\n";
        assert_eq!(
            mirror_from_deb822(text),
            Some("http://mirror.example/debian".into())
        );
        let disabled = "Types: deb\nURIs: http://a/debian\nSuites: bookworm\nEnabled: no\n";
        assert_eq!(mirror_from_deb822(disabled), None);
        assert_eq!(
            mirror_from_deb822("Types: deb-src\nURIs: http://a\nSuites: bookworm\n"),
            None
        );
    }

    #[test]
    fn one_line_format() {
        let text = "# deb http://old/debian bookworm main\n\
                    deb https://packages.cloud.google.com/apt cloud-sdk-bookworm main\n\
                    deb [arch=amd64 signed-by=/k.gpg] http://mirror.example/debian bookworm main contrib\n";
        assert_eq!(
            mirror_from_one_line(text),
            Some("http://mirror.example/debian".into())
        );
        assert_eq!(mirror_from_one_line("deb cdrom:[x]/ bookworm main\n"), None);
    }

    #[test]
    fn apt_config_prefers_sources_files_and_falls_back() {
        let tmp = tempfile::tempdir().expect("tempdir");
        assert_eq!(mirror_from_apt_config(tmp.path()), None);
        std::fs::write(
            tmp.path().join("sources.list"),
            "deb http://list/debian bookworm main\n",
        )
        .expect("write");
        assert_eq!(
            mirror_from_apt_config(tmp.path()),
            Some("http://list/debian".into())
        );
        std::fs::create_dir(tmp.path().join("sources.list.d")).expect("mkdir");
        std::fs::write(
            tmp.path().join("sources.list.d/debian.sources.disabled"),
            "Types: deb\nURIs: http://disabled/debian\nSuites: bookworm\n",
        )
        .expect("write");
        assert_eq!(
            mirror_from_apt_config(tmp.path()),
            Some("http://list/debian".into())
        );
        std::fs::write(
            tmp.path().join("sources.list.d/debian.sources"),
            "Types: deb\nURIs: http://d822/debian\nSuites: bookworm\n",
        )
        .expect("write");
        assert_eq!(
            mirror_from_apt_config(tmp.path()),
            Some("http://d822/debian".into())
        );
    }

    #[test]
    fn suites_without_a_script_use_sids() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path();
        assert_eq!(
            debootstrap_script(dir, "forky"),
            None,
            "no sid script either"
        );
        std::fs::write(dir.join("sid"), "").expect("write");
        std::os::unix::fs::symlink("sid", dir.join("bookworm")).expect("link");
        assert_eq!(debootstrap_script(dir, "bookworm"), None);
        assert_eq!(debootstrap_script(dir, "sid"), None);
        assert_eq!(debootstrap_script(dir, "forky"), Some(dir.join("sid")));
    }

    #[test]
    fn a_missing_release_file_names_suite_and_mirror() {
        let err = TemplateError::Build {
            step: "debootstrap".into(),
            detail: "exit status: 1; last output:\nE: Failed getting release file \
                     http://m/debian/dists/buster/Release"
                .into(),
        };
        let msg = explain_missing_suite(err, "buster", "http://m/debian").to_string();
        assert!(
            msg.contains("the mirror http://m/debian does not serve Debian 'buster'"),
            "{msg}"
        );
        let other = TemplateError::Build {
            step: "debootstrap".into(),
            detail: "exit status: 1; last output:\nE: Couldn't download packages".into(),
        };
        let msg = explain_missing_suite(other, "trixie", "http://m/debian").to_string();
        assert!(!msg.contains("does not serve"), "{msg}");
    }

    #[test]
    fn missing_program_is_none() {
        assert!(find_program("paddock-no-such-program").is_none());
        assert!(find_program("sh").is_some());
    }

    /// The lines of Debian's (bookworm) `/etc/profile` that ask for the uid.
    const DEBIAN_PROFILE: &str = r#"if [ "$(id -u)" -eq 0 ]; then
  PATH="/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
else
  PATH="/usr/local/bin:/usr/bin:/bin:/usr/local/games:/usr/games"
fi
export PATH
if [ "${PS1-}" ]; then
  if [ "$(id -u)" -eq 0 ]; then
    PS1='# '
  fi
fi
"#;

    /// Runs `shell -c '. profile; echo $PATH'` as the test's user.
    fn path_after(shell: &str, profile: &Path) -> String {
        let out = std::process::Command::new(shell)
            .arg("-c")
            .arg(format!(". {}; echo \"$PATH\"", profile.display()))
            .env("PATH", "/usr/bin:/bin")
            .output()
            .expect("run the shell");
        assert!(out.status.success(), "{shell}: {out:?}");
        String::from_utf8(out.stdout).expect("utf-8")
    }

    #[test]
    fn the_profile_edit_asks_bash_for_its_euid_and_keeps_the_path() {
        let line = CONFIGURE_SCRIPT
            .lines()
            .find(|l| l.contains("/etc/profile") && l.contains("sed -i"))
            .expect("the configure script edits /etc/profile");
        let dir = tempfile::tempdir().expect("tempdir");
        let original = dir.path().join("original");
        let edited = dir.path().join("profile");
        std::fs::write(&original, DEBIAN_PROFILE).expect("write");
        std::fs::write(&edited, DEBIAN_PROFILE).expect("write");
        let script = line.replace("/etc/profile", &edited.display().to_string());
        let status = std::process::Command::new("sh")
            .arg("-c")
            .arg(&script)
            .status()
            .expect("run sh");
        assert!(status.success());
        let text = std::fs::read_to_string(&edited).expect("read");
        assert_eq!(text.matches("${EUID:-$(id -u)}").count(), 2, "{text}");
        assert!(!text.contains("\"$(id -u)\""), "{text}");
        // The same PATH as Debian's file, in bash (EUID) and in sh (which has no EUID).
        for shell in ["bash", "sh"] {
            assert_eq!(
                path_after(shell, &edited),
                path_after(shell, &original),
                "{shell}"
            );
        }
    }

    #[test]
    fn records_without_a_recipe_are_the_first_one() {
        let json = r#"{"kind":"debootstrap","suite":"bookworm","mirror":"http://m","packages":[]}"#;
        let source: TemplateSource = serde_json::from_str(json).expect("parse");
        assert!(matches!(
            source,
            TemplateSource::Debootstrap { recipe: 1, .. }
        ));
        let current = TemplateSource::Debootstrap {
            suite: SUITE.into(),
            mirror: DEFAULT_MIRROR.into(),
            packages: vec![],
            recipe: RECIPE,
        };
        let round: TemplateSource =
            serde_json::from_str(&serde_json::to_string(&current).expect("json")).expect("parse");
        assert_eq!(round, current);
    }
}
