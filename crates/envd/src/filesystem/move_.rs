//! `Move`: renames a file or directory, creating the destination's parents (owned by the acting
//! user); missing source → `not_found`. Returns the destination's entry.

use std::fs;
use std::io;

use crate::connect::ConnectError;
use crate::filesystem::make_dir::{dir_error, ensure_dirs};
use crate::filesystem::messages::{EntryResponse, MoveRequest};
use crate::filesystem::stat::describe;
use crate::filesystem::Caller;
use crate::state::EnvdState;

/// The `Move` operation.
pub fn move_entry(
    state: &EnvdState,
    caller: &Caller,
    req: MoveRequest,
) -> Result<EntryResponse, ConnectError> {
    let source = caller.resolve(&req.source)?;
    let destination = caller.resolve(&req.destination)?;
    if let Some(parent) = destination.parent() {
        ensure_dirs(parent, caller.user.uid, caller.user.gid).map_err(|e| dir_error(parent, e))?;
    }
    fs::rename(&source, &destination).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => {
            ConnectError::not_found(format!("source file not found: {}", source.display()))
        }
        _ => ConnectError::internal(format!(
            "error renaming {} to {}: {e}",
            source.display(),
            destination.display()
        )),
    })?;
    Ok(EntryResponse {
        entry: describe(&state.users, &destination)?,
    })
}
