//! Joining a cluster as a node or a proxy: the member's identity is kept in
//! `<data-dir>/cluster/` once it joined, so a restarted member keeps it and does not join again;
//! its id is `--name`, or a stable one made on first start (`<data-dir>/member-id`).

use std::net::{IpAddr, SocketAddr};
use std::path::Path;

use anyhow::Context;
use paddock_cluster_tls::{JoinToken, MemberId, MemberIdentity, Role};

/// The member's id: `name`, else the one kept in `<data_dir>/member-id` (made on first start:
/// `<role>-<8 hex>`).
pub(crate) fn member_id(
    data_dir: &Path,
    role: Role,
    name: Option<&str>,
) -> anyhow::Result<MemberId> {
    if let Some(n) = name {
        return MemberId::new(n).with_context(|| format!("--name {n}"));
    }
    let path = data_dir.join("member-id");
    match std::fs::read_to_string(&path) {
        Ok(id) => return MemberId::new(id.trim()).with_context(|| format!("{}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    }
    let id = format!("{role}-{}", hex::encode(rand::random::<[u8; 4]>()));
    std::fs::write(&path, &id).with_context(|| format!("writing {}", path.display()))?;
    Ok(MemberId::new(id)?)
}

/// The identity kept in `<data_dir>/cluster/`, or a new one from joining the control plane at
/// `join` with the token in `token_file` (its certificate carries `ips`).
pub(crate) async fn identity(
    data_dir: &Path,
    role: Role,
    id: &MemberId,
    join: SocketAddr,
    token_file: Option<&Path>,
    ips: &[IpAddr],
) -> anyhow::Result<MemberIdentity> {
    let dir = data_dir.join("cluster");
    if let Some(identity) = MemberIdentity::load(&dir).context("loading the cluster identity")? {
        let who = identity.identity();
        anyhow::ensure!(
            who.role == role && &who.id == id,
            "{} holds the identity of {}, not of {role} {}; use another data dir",
            dir.display(),
            who.uri(),
            id.as_str()
        );
        return Ok(identity);
    }
    let token_file = token_file.context("not joined yet: pass --token-file with the join token")?;
    let token = JoinToken::read_file(token_file)
        .with_context(|| format!("reading the join token in {}", token_file.display()))?;
    let identity = paddock_cluster_rpc::join(join, &token, role, id, &[], ips)
        .await
        .with_context(|| format!("joining the cluster at {join}"))?;
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    identity
        .store(&dir)
        .context("keeping the cluster identity")?;
    eprintln!(
        "paddock: joined the cluster at {join} as {role} {}",
        id.as_str()
    );
    Ok(identity)
}
