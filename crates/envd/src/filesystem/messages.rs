//! The `filesystem` proto package's messages in their canonical proto3 JSON form (spec 3.5):
//! lowerCamelCase keys (snake_case accepted on input), zero values omitted on output, `int64` as
//! strings, enums by value name. Owns no behaviour.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use paddock_envd_proto::pbjson;

/// `StatRequest`, `MakeDirRequest` and `RemoveRequest`: a single `path`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct PathRequest {
    /// The path as the client sent it (resolved with the user's rules).
    pub path: String,
}

/// `MoveRequest`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct MoveRequest {
    /// Path to move.
    pub source: String,
    /// Where it goes.
    pub destination: String,
}

/// `ListDirRequest`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct ListDirRequest {
    /// Directory to list.
    pub path: String,
    /// Recursion depth; 0 means 1.
    #[serde(deserialize_with = "pbjson::uint32::deserialize")]
    pub depth: u32,
}

/// `WatchDirRequest` and `CreateWatcherRequest`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(default, rename_all = "camelCase")]
pub struct WatchRequest {
    /// Directory to watch.
    pub path: String,
    /// Watch subdirectories too.
    pub recursive: bool,
    /// Attach an `EntryInfo` to CREATE/WRITE/CHMOD events.
    #[serde(alias = "include_entry")]
    pub include_entry: bool,
    /// Allow watching NFS/CIFS/SMB/FUSE mounts.
    #[serde(alias = "allow_network_mounts")]
    pub allow_network_mounts: bool,
}

/// `GetWatcherEventsRequest` and `RemoveWatcherRequest`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(default, rename_all = "camelCase")]
pub struct WatcherIdRequest {
    /// The id returned by `CreateWatcher`.
    #[serde(alias = "watcher_id")]
    pub watcher_id: String,
}

/// enum `FileType`.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub enum FileType {
    /// Unknown, or a broken symlink.
    #[default]
    #[serde(rename = "FILE_TYPE_UNSPECIFIED")]
    Unspecified,
    /// A regular file.
    #[serde(rename = "FILE_TYPE_FILE")]
    File,
    /// A directory.
    #[serde(rename = "FILE_TYPE_DIRECTORY")]
    Directory,
    /// A symbolic link (only when the target's type is unknown to the caller).
    #[serde(rename = "FILE_TYPE_SYMLINK")]
    Symlink,
}

impl FileType {
    /// Whether this is the zero value (omitted on the wire).
    pub fn is_unspecified(&self) -> bool {
        *self == FileType::Unspecified
    }
}

/// `EntryInfo`: what the SDKs show for a file (spec 3.5).
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct EntryInfo {
    /// Base name.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// Type (a symlink's target type).
    #[serde(rename = "type", skip_serializing_if = "FileType::is_unspecified")]
    pub file_type: FileType,
    /// Absolute path as requested (not symlink-resolved).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub path: String,
    /// `lstat` size in bytes.
    #[serde(with = "pbjson::int64", skip_serializing_if = "pbjson::is_zero")]
    pub size: i64,
    /// Permission bits (of a symlink's target).
    #[serde(skip_serializing_if = "pbjson::is_zero")]
    pub mode: u32,
    /// Go-style mode string (`-rw-r--r--`, `drwxr-xr-x`, `Lrwxrwxrwx`).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub permissions: String,
    /// Owner name (numeric fallback).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub owner: String,
    /// Group name (numeric fallback).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub group: String,
    /// Modification time, RFC 3339 UTC.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub modified_time: Option<String>,
    /// The resolved target of a symlink (explicit presence).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub symlink_target: Option<String>,
    /// `user.e2b.*` extended attributes, prefix stripped.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
    /// Whether the entry itself is a symlink.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub is_symlink: bool,
}

impl EntryInfo {
    /// The reduced form sent to very old Python SDKs (`User-Agent: connect-python`).
    pub fn legacy(&self) -> EntryInfo {
        EntryInfo {
            name: self.name.clone(),
            file_type: self.file_type,
            path: self.path.clone(),
            ..Default::default()
        }
    }
}

/// `StatResponse`, `MakeDirResponse` and `MoveResponse`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct EntryResponse {
    /// The entry.
    pub entry: EntryInfo,
}

/// `ListDirResponse`.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct ListDirResponse {
    /// The entries, in walk order.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub entries: Vec<EntryInfo>,
}

/// An empty message (`RemoveResponse`, `RemoveWatcherResponse`, stream `start`/`keepalive`).
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct Empty {}

/// enum `EventType`.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
pub enum EventType {
    /// Something was created (or moved in).
    #[serde(rename = "EVENT_TYPE_CREATE")]
    Create,
    /// File content changed.
    #[serde(rename = "EVENT_TYPE_WRITE")]
    Write,
    /// Something was deleted.
    #[serde(rename = "EVENT_TYPE_REMOVE")]
    Remove,
    /// Something was moved away (its old name).
    #[serde(rename = "EVENT_TYPE_RENAME")]
    Rename,
    /// Attributes changed.
    #[serde(rename = "EVENT_TYPE_CHMOD")]
    Chmod,
}

/// `FilesystemEvent`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct FilesystemEvent {
    /// Path relative to the watched directory.
    pub name: String,
    /// What happened.
    #[serde(rename = "type")]
    pub event_type: EventType,
    /// The entry after the event (only with `include_entry`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub entry: Option<EntryInfo>,
}

/// `WatchDirResponse` (oneof `event`).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum WatchDirResponse {
    /// First message of every stream.
    Start(Empty),
    /// One filesystem event (boxed: an entry makes it much larger than the others).
    Filesystem(Box<FilesystemEvent>),
    /// Sent after a keepalive interval of silence.
    Keepalive(Empty),
}

/// `CreateWatcherResponse`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct CreateWatcherResponse {
    /// `w<random>`.
    pub watcher_id: String,
}

/// `GetWatcherEventsResponse`.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct GetWatcherEventsResponse {
    /// Events accumulated since the last call.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub events: Vec<FilesystemEvent>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_values_are_omitted() {
        let e = EntryInfo {
            name: "a".into(),
            path: "/a".into(),
            ..Default::default()
        };
        assert_eq!(
            serde_json::to_string(&e).expect("json"),
            r#"{"name":"a","path":"/a"}"#
        );
        let e = EntryInfo {
            file_type: FileType::File,
            size: 5,
            mode: 0o644,
            symlink_target: Some(String::new()),
            is_symlink: true,
            ..Default::default()
        };
        assert_eq!(
            serde_json::to_string(&e).expect("json"),
            r#"{"type":"FILE_TYPE_FILE","size":"5","mode":420,"symlinkTarget":"","isSymlink":true}"#
        );
    }

    #[test]
    fn requests_accept_both_key_styles() {
        let r: WatchRequest =
            serde_json::from_str(r#"{"path":"/x","include_entry":true}"#).expect("snake");
        assert!(r.include_entry);
        let r: WatchRequest =
            serde_json::from_str(r#"{"path":"/x","includeEntry":true,"recursive":true}"#)
                .expect("camel");
        assert!(r.include_entry && r.recursive);
        let r: ListDirRequest =
            serde_json::from_str(r#"{"path":"/x","depth":"3"}"#).expect("string depth");
        assert_eq!(r.depth, 3);
        let r: WatcherIdRequest = serde_json::from_str(r#"{"watcher_id":"w1"}"#).expect("snake id");
        assert_eq!(r.watcher_id, "w1");
    }

    #[test]
    fn watch_responses_use_oneof_keys() {
        assert_eq!(
            serde_json::to_string(&WatchDirResponse::Start(Empty {})).expect("json"),
            r#"{"start":{}}"#
        );
        let ev = WatchDirResponse::Filesystem(Box::new(FilesystemEvent {
            name: "a.txt".into(),
            event_type: EventType::Create,
            entry: None,
        }));
        assert_eq!(
            serde_json::to_string(&ev).expect("json"),
            r#"{"filesystem":{"name":"a.txt","type":"EVENT_TYPE_CREATE"}}"#
        );
    }
}
