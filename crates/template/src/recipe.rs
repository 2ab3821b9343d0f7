//! The typed recipe a build runs, validated from the wire ([`Recipe::from_wire`]), and the keys
//! that name cached layers.
//!
//! Cache keys chain: the base's key is a hash of what the base is (its layers' ids), every
//! step's key a hash of its parent's key and the step itself (for COPY the hash of the copied
//! files is part of the step), so a key names exactly the file system a build reaches after that
//! step, and changing one step changes the key of it and of everything after it. Steps that only
//! change the build's state (ENV, WORKDIR, USER) are part of the chain too, because later RUN
//! steps see them.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::wire::{BuildStartV2, WireStep};

/// The name of the base step in build logs and failure reasons (the SDKs map it to the
/// `from_*` call).
pub const BASE_STEP: &str = "base";
/// The name of the last step (start and ready commands, publishing the template).
pub const FINALIZE_STEP: &str = "finalize";

/// Most steps one recipe may have.
pub const MAX_STEPS: usize = 256;
/// Longest RUN command, start or ready command, in bytes.
pub const MAX_COMMAND: usize = 64 * 1024;

/// What a build starts from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "ref", rename_all = "snake_case")]
pub enum Base {
    /// An existing template, by name (optionally `name:tag`).
    Template(String),
    /// An image reference (`debian:bookworm`, `e2bdev/base`, a path to an OCI or docker-save
    /// archive); the node decides which it can provide.
    Image(String),
}

/// One instruction of a recipe.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "UPPERCASE")]
pub enum BuildStep {
    /// Runs `command` with `/bin/bash -c` (args: `[command]` or `[command, user]`).
    Run {
        /// The shell command.
        command: String,
        /// The user to run as; `None` = the build's current user.
        user: Option<String>,
    },
    /// Copies `src` (a path or glob relative to the uploaded context) to `dest` (args:
    /// `[src, dest, user-or-"", octal-mode-or-""]`).
    Copy {
        /// Source, relative to the build context.
        src: String,
        /// Destination in the template (relative = to the current workdir). A trailing `/` or
        /// several sources make it a directory.
        dest: String,
        /// Owner (`user` or `user:group`); `None` = the build's current user.
        owner: Option<String>,
        /// Permission bits for the copied files; `None` = as uploaded.
        mode: Option<u32>,
        /// sha256 (hex) of the files: names the uploaded archive.
        files_hash: String,
    },
    /// Sets environment variables for later steps and for sandboxes of the template (args:
    /// `[k1, v1, k2, v2, ...]`).
    Env {
        /// The variables, in order.
        vars: Vec<(String, String)>,
    },
    /// Sets the working directory of later steps and of sandboxes; created if missing.
    Workdir {
        /// The directory (relative = to the current workdir).
        path: String,
    },
    /// Sets the user later steps run as and the default user of sandboxes.
    User {
        /// The user name.
        name: String,
    },
}

impl BuildStep {
    /// Whether the step changes files (and so makes a layer); ENV and USER only change state.
    /// WORKDIR makes a layer: the directory is created.
    pub fn changes_files(&self) -> bool {
        !matches!(self, BuildStep::Env { .. } | BuildStep::User { .. })
    }

    /// The step in one line, as build logs show it (`RUN apt-get update`, `COPY app.py /app/`).
    pub fn describe(&self) -> String {
        match self {
            BuildStep::Run { command, user } => match user {
                Some(u) => format!("RUN (as {u}) {command}"),
                None => format!("RUN {command}"),
            },
            BuildStep::Copy { src, dest, .. } => format!("COPY {src} {dest}"),
            BuildStep::Env { vars } => {
                let parts: Vec<String> = vars.iter().map(|(k, v)| format!("{k}={v}")).collect();
                format!("ENV {}", parts.join(" "))
            }
            BuildStep::Workdir { path } => format!("WORKDIR {path}"),
            BuildStep::User { name } => format!("USER {name}"),
        }
    }
}

/// A step and whether it must be rebuilt even if cached.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Step {
    /// The instruction.
    pub step: BuildStep,
    /// Rebuild it (and every later step) even if cached.
    pub force: bool,
}

/// A validated build request. Its serde form is how a control plane hands it to a node over
/// the network (the node contract's `Build` call), not the SDK's wire form ([`crate::wire`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Recipe {
    /// What the build starts from.
    pub base: Base,
    /// The steps, in order (logged as steps `1`..`N`).
    pub steps: Vec<Step>,
    /// Rebuild everything (`skip_cache`).
    pub force: bool,
    /// Command started in every new sandbox of the template.
    pub start_cmd: Option<String>,
    /// Command that exits 0 once a new sandbox is ready.
    pub ready_cmd: Option<String>,
}

/// Why a build request is not a valid recipe. The message names the step (1-based) and what is
/// wrong, for the API's 400.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecipeError {
    /// The request as a whole is wrong.
    #[error("{0}")]
    Invalid(String),
    /// One step is wrong.
    #[error("step {index} ({kind}): {reason}")]
    Step {
        /// 1-based index.
        index: usize,
        /// The step's type as sent.
        kind: String,
        /// What is wrong.
        reason: String,
    },
}

impl Recipe {
    /// Validates a build request. Both `fromImage` and `fromTemplate`, or neither, registry
    /// credentials, unknown step types and malformed arguments are refused.
    pub fn from_wire(req: BuildStartV2) -> Result<Recipe, RecipeError> {
        let base = match (non_empty(req.from_image), non_empty(req.from_template)) {
            (Some(_), Some(_)) => {
                return Err(RecipeError::Invalid(
                    "give exactly one of fromImage and fromTemplate, not both".into(),
                ))
            }
            (None, None) => {
                return Err(RecipeError::Invalid(
                    "give one of fromImage and fromTemplate".into(),
                ))
            }
            (Some(image), None) => Base::Image(image),
            (None, Some(template)) => Base::Template(template),
        };
        if req.from_image_registry.is_some_and(|v| !v.is_null()) {
            return Err(RecipeError::Invalid(
                "fromImageRegistry: Paddock pulls from no registry; build from a template, \
                 debian:<suite>, or an image archive on the server (docker save / OCI layout)"
                    .into(),
            ));
        }
        let wire_steps = req.steps.unwrap_or_default();
        if wire_steps.len() > MAX_STEPS {
            return Err(RecipeError::Invalid(format!(
                "too many steps: {} (at most {MAX_STEPS})",
                wire_steps.len()
            )));
        }
        let mut steps = Vec::with_capacity(wire_steps.len());
        for (i, s) in wire_steps.into_iter().enumerate() {
            steps.push(parse_step(i + 1, s)?);
        }
        for (field, value) in [("startCmd", &req.start_cmd), ("readyCmd", &req.ready_cmd)] {
            if let Some(v) = value {
                check_command(v)
                    .map_err(|reason| RecipeError::Invalid(format!("{field}: {reason}")))?;
            }
        }
        Ok(Recipe {
            base,
            steps,
            force: req.force.unwrap_or(false),
            start_cmd: non_empty(req.start_cmd),
            ready_cmd: non_empty(req.ready_cmd),
        })
    }
}

fn non_empty(s: Option<String>) -> Option<String> {
    s.filter(|s| !s.trim().is_empty())
}

fn check_command(cmd: &str) -> Result<(), String> {
    if cmd.len() > MAX_COMMAND {
        return Err(format!("longer than {MAX_COMMAND} bytes"));
    }
    if cmd.contains('\0') {
        return Err("contains a NUL byte".into());
    }
    Ok(())
}

/// Whether `name` is a plausible user (or group) name: what `useradd` accepts.
fn valid_user(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 32
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        && !name.starts_with('-')
}

fn valid_owner(owner: &str) -> bool {
    match owner.split_once(':') {
        Some((u, g)) => valid_user(u) && valid_user(g),
        None => valid_user(owner),
    }
}

fn valid_env_key(k: &str) -> bool {
    !k.is_empty()
        && !k.as_bytes()[0].is_ascii_digit()
        && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

fn parse_step(index: usize, s: WireStep) -> Result<Step, RecipeError> {
    let kind = s.kind.to_ascii_uppercase();
    let err = |reason: String| RecipeError::Step {
        index,
        kind: s.kind.clone(),
        reason,
    };
    let args = s.args.clone().unwrap_or_default();
    if args.iter().any(|a| a.contains('\0')) {
        return Err(err("an argument contains a NUL byte".into()));
    }
    let step = match kind.as_str() {
        "RUN" => {
            let (command, user) = match args.as_slice() {
                [c] => (c.clone(), None),
                [c, u] if u.is_empty() => (c.clone(), None),
                [c, u] => (c.clone(), Some(u.clone())),
                _ => return Err(err("expects [command] or [command, user]".into())),
            };
            if command.trim().is_empty() {
                return Err(err("the command is empty".into()));
            }
            check_command(&command).map_err(err)?;
            if let Some(u) = &user {
                if !valid_user(u) {
                    return Err(err(format!("invalid user {u:?}")));
                }
            }
            BuildStep::Run { command, user }
        }
        "COPY" => {
            let (src, dest, owner, mode) = match args.as_slice() {
                [src, dest] => (src, dest, "", ""),
                [src, dest, owner] => (src, dest, owner.as_str(), ""),
                [src, dest, owner, mode] => (src, dest, owner.as_str(), mode.as_str()),
                _ => return Err(err("expects [src, dest, user, mode]".into())),
            };
            if src.is_empty() || dest.is_empty() {
                return Err(err("source and destination must not be empty".into()));
            }
            if src.starts_with('/') || src.split('/').any(|c| c == "..") {
                return Err(err(format!(
                    "source {src:?} must be relative to the build context, without '..'"
                )));
            }
            let owner = (!owner.is_empty()).then(|| owner.to_string());
            if let Some(o) = &owner {
                if !valid_owner(o) {
                    return Err(err(format!("invalid owner {o:?}")));
                }
            }
            let mode = if mode.is_empty() {
                None
            } else {
                match u32::from_str_radix(mode, 8) {
                    Ok(m) if m <= 0o7777 => Some(m),
                    _ => return Err(err(format!("invalid octal mode {mode:?}"))),
                }
            };
            let files_hash = s.files_hash.clone().unwrap_or_default();
            if files_hash.len() != 64 || !files_hash.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(err(
                    "filesHash must be the sha256 (64 hex digits) of the uploaded files".into(),
                ));
            }
            BuildStep::Copy {
                src: src.clone(),
                dest: dest.clone(),
                owner,
                mode,
                files_hash: files_hash.to_ascii_lowercase(),
            }
        }
        "ENV" => {
            if args.is_empty() || !args.len().is_multiple_of(2) {
                return Err(err("expects [key, value, key, value, ...]".into()));
            }
            let vars: Vec<(String, String)> = args
                .chunks(2)
                .map(|kv| (kv[0].clone(), kv[1].clone()))
                .collect();
            if let Some((k, _)) = vars.iter().find(|(k, _)| !valid_env_key(k)) {
                return Err(err(format!("invalid variable name {k:?}")));
            }
            BuildStep::Env { vars }
        }
        "WORKDIR" => match args.as_slice() {
            [p] if !p.trim().is_empty() => BuildStep::Workdir { path: p.clone() },
            _ => return Err(err("expects [path]".into())),
        },
        "USER" => match args.as_slice() {
            [u] if valid_user(u) => BuildStep::User { name: u.clone() },
            [u] => return Err(err(format!("invalid user {u:?}"))),
            _ => return Err(err("expects [user]".into())),
        },
        _ => {
            return Err(err(
                "unknown step type (expected COPY, RUN, ENV, WORKDIR or USER)".into(),
            ))
        }
    };
    Ok(Step {
        step,
        force: s.force.unwrap_or(false),
    })
}

fn sha256_hex(parts: &[&[u8]]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_be_bytes());
        h.update(p);
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// The cache key of a base: what it is and the ids of its layers (top first).
pub fn base_key(base: &Base, layer_ids: &[String]) -> String {
    let what = serde_json::to_string(base).unwrap_or_default();
    let layers = layer_ids.join(",");
    sha256_hex(&[b"base", what.as_bytes(), layers.as_bytes()])
}

/// The cache key of the file system after `step`, built on the state named by `parent`.
pub fn cache_key(parent: &str, step: &BuildStep) -> String {
    let what = serde_json::to_string(step).unwrap_or_default();
    sha256_hex(&[b"step", parent.as_bytes(), what.as_bytes()])
}

/// The cache key of a finished template: the last step's key and everything the finalize
/// step adds (start and ready commands, the state sandboxes start with).
pub fn finalize_key(last: &str, config: &impl Serialize) -> String {
    let what = serde_json::to_string(config).unwrap_or_default();
    sha256_hex(&[b"finalize", last.as_bytes(), what.as_bytes()])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(kind: &str, args: &[&str]) -> WireStep {
        WireStep {
            kind: kind.into(),
            args: Some(args.iter().map(|s| s.to_string()).collect()),
            ..WireStep::default()
        }
    }

    fn req(steps: Vec<WireStep>) -> BuildStartV2 {
        BuildStartV2 {
            from_template: Some("base".into()),
            steps: Some(steps),
            ..BuildStartV2::default()
        }
    }

    #[test]
    fn parses_what_the_python_sdk_sends() {
        let body = r#"{"steps":[
            {"type":"RUN","args":["apt-get update && apt-get install -y jq","root"],"force":false},
            {"type":"COPY","args":["app.py","/app/","","0755"],"force":false,
             "filesHash":"ABCDEF0123456789abcdef0123456789abcdef0123456789abcdef0123456789"},
            {"type":"ENV","args":["A","1","B","two words"],"force":false},
            {"type":"WORKDIR","args":["/app"],"force":false},
            {"type":"USER","args":["user"],"force":true}],
            "force":false,"fromImage":"e2bdev/base","startCmd":"python app.py",
            "readyCmd":"[ -n \"$(ss -Htuln sport = :8000)\" ]"}"#;
        let wire: BuildStartV2 = serde_json::from_str(body).expect("ok");
        let r = Recipe::from_wire(wire).expect("ok");
        assert_eq!(r.base, Base::Image("e2bdev/base".into()));
        assert_eq!(r.steps.len(), 5);
        assert_eq!(
            r.steps[0].step,
            BuildStep::Run {
                command: "apt-get update && apt-get install -y jq".into(),
                user: Some("root".into())
            }
        );
        match &r.steps[1].step {
            BuildStep::Copy {
                mode,
                files_hash,
                owner,
                ..
            } => {
                assert_eq!(*mode, Some(0o755));
                assert_eq!(owner, &None);
                assert!(files_hash.starts_with("abcdef"));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            r.steps[2].step,
            BuildStep::Env {
                vars: vec![("A".into(), "1".into()), ("B".into(), "two words".into())]
            }
        );
        assert!(r.steps[4].force);
        assert_eq!(r.start_cmd.as_deref(), Some("python app.py"));
    }

    #[test]
    fn refuses_bad_requests() {
        let both = BuildStartV2 {
            from_image: Some("debian:bookworm".into()),
            from_template: Some("base".into()),
            ..BuildStartV2::default()
        };
        assert!(Recipe::from_wire(both).is_err());
        assert!(Recipe::from_wire(BuildStartV2::default()).is_err());
        let cases = [
            step("RUN", &[]),
            step("RUN", &["  "]),
            step("COPY", &["a", "/b"]),
            step("COPY", &["../etc/passwd", "/b"]),
            step("ENV", &["A"]),
            step("ENV", &["1A", "x"]),
            step("USER", &["bad user"]),
            step("FROM", &["x"]),
        ];
        for c in cases {
            let e = Recipe::from_wire(req(vec![c.clone()])).expect_err("err");
            assert!(
                matches!(e, RecipeError::Step { index: 1, .. }),
                "{c:?}: {e}"
            );
        }
        let registry = BuildStartV2 {
            from_image: Some("python:3".into()),
            from_image_registry: Some(serde_json::json!({"type": "registry"})),
            ..BuildStartV2::default()
        };
        assert!(Recipe::from_wire(registry)
            .expect_err("err")
            .to_string()
            .contains("registry"));
    }

    #[test]
    fn keys_chain_and_change_with_the_step() {
        let base = base_key(&Base::Template("base".into()), &["aa".into()]);
        let run = |c: &str| BuildStep::Run {
            command: c.into(),
            user: None,
        };
        let k1 = cache_key(&base, &run("echo 1"));
        assert_eq!(k1, cache_key(&base, &run("echo 1")));
        assert_ne!(k1, cache_key(&base, &run("echo 2")));
        let other_base = base_key(&Base::Template("base".into()), &["bb".into()]);
        assert_ne!(k1, cache_key(&other_base, &run("echo 1")));
        assert_eq!(k1.len(), 64);
        assert_ne!(finalize_key(&k1, &"a"), finalize_key(&k1, &"b"));
    }
}
