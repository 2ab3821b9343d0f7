//! `Stat`: describes one path (not following a final symlink); missing → `not_found`.

use std::io;
use std::path::Path;

use crate::connect::ConnectError;
use crate::filesystem::entry::{entry_info, OwnerNames};
use crate::filesystem::messages::{EntryInfo, EntryResponse, PathRequest};
use crate::filesystem::Caller;
use crate::state::EnvdState;
use crate::users::UserDb;

/// The `Stat` operation.
pub fn stat(
    state: &EnvdState,
    caller: &Caller,
    req: PathRequest,
) -> Result<EntryResponse, ConnectError> {
    let path = caller.resolve(&req.path)?;
    Ok(EntryResponse {
        entry: describe(&state.users, &path)?,
    })
}

/// Describes `path`, mapping a missing file to `not_found` and other failures to `internal`.
pub fn describe(users: &UserDb, path: &Path) -> Result<EntryInfo, ConnectError> {
    entry_info(&mut OwnerNames::new(users), path).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => {
            ConnectError::not_found(format!("file not found: {}", path.display()))
        }
        _ => ConnectError::internal(format!(
            "error getting file info of {}: {e}",
            path.display()
        )),
    })
}
