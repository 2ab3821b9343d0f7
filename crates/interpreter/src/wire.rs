//! Jupyter's wire protocol (messaging 5.3): a message is a header, its parent's header,
//! metadata and content (each JSON), sent as ZeroMQ frames after a `<IDS|MSG>` delimiter and
//! an HMAC-SHA256 of those four frames keyed with the connection's key. [`Message`] is one,
//! [`Signer`] signs and checks them, [`encode`] and [`decode`] turn them into frames and back.

use bytes::Bytes;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::Sha256;

/// The protocol version Paddock speaks.
pub const PROTOCOL_VERSION: &str = "5.3";
/// The frame between routing identities and the signature.
pub const DELIMITER: &[u8] = b"<IDS|MSG>";

/// Why frames are not a message.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// No `<IDS|MSG>` delimiter, or fewer than the four JSON frames after the signature.
    #[error("malformed message: {0}")]
    Malformed(&'static str),
    /// The signature does not match the frames.
    #[error("message signature does not match")]
    BadSignature,
    /// A frame that is not the JSON it should be.
    #[error("malformed {frame}: {source}")]
    Json {
        /// Which frame.
        frame: &'static str,
        /// The parse error.
        #[source]
        source: serde_json::Error,
    },
}

/// A message header.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Header {
    /// Unique per message.
    pub msg_id: String,
    /// The sender's session.
    pub session: String,
    /// Who sent it.
    pub username: String,
    /// When, ISO 8601.
    pub date: String,
    /// What it is (`execute_request`, `stream`, ...).
    pub msg_type: String,
    /// The protocol version.
    pub version: String,
}

/// One message.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    /// Its header.
    pub header: Header,
    /// The header of the message it answers (`None` when it answers none).
    pub parent: Option<Header>,
    /// Its metadata.
    pub metadata: Value,
    /// Its content.
    pub content: Value,
}

impl Message {
    /// A new message of `msg_type` in `session`.
    pub fn new(session: &str, msg_type: &str, content: Value) -> Message {
        Message {
            header: Header {
                msg_id: new_id(),
                session: session.to_string(),
                username: "paddock".into(),
                date: now_iso8601(),
                msg_type: msg_type.to_string(),
                version: PROTOCOL_VERSION.into(),
            },
            parent: None,
            metadata: Value::Object(Default::default()),
            content,
        }
    }

    /// Its type.
    pub fn msg_type(&self) -> &str {
        &self.header.msg_type
    }

    /// The id of the message it answers, if any.
    pub fn parent_id(&self) -> Option<&str> {
        self.parent.as_ref().map(|p| p.msg_id.as_str())
    }
}

/// A random message or session id (32 hex digits).
pub fn new_id() -> String {
    hex::encode(rand::random::<[u8; 16]>())
}

/// Now as ISO 8601 with microseconds, in UTC.
fn now_iso8601() -> String {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = d.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:06}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_micros()
    )
}

/// Signs and checks messages with a connection's key (no key: unsigned, as Jupyter allows).
#[derive(Clone)]
pub struct Signer {
    key: Vec<u8>,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer").finish_non_exhaustive()
    }
}

impl Signer {
    /// A signer with `key` (the connection file's `key`, as its bytes).
    pub fn new(key: &[u8]) -> Signer {
        Signer { key: key.to_vec() }
    }

    fn mac(&self, parts: &[&[u8]]) -> Option<Hmac<Sha256>> {
        if self.key.is_empty() {
            return None;
        }
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC takes any key");
        for p in parts {
            mac.update(p);
        }
        Some(mac)
    }

    /// The hex signature of the four JSON frames (empty without a key).
    pub fn sign(&self, parts: &[&[u8]]) -> String {
        self.mac(parts)
            .map(|m| hex::encode(m.finalize().into_bytes()))
            .unwrap_or_default()
    }

    /// Whether `signature` (hex) is that of the four frames, compared in constant time.
    pub fn verify(&self, parts: &[&[u8]], signature: &[u8]) -> bool {
        match self.mac(parts) {
            None => true,
            Some(mac) => hex::decode(signature)
                .map(|raw| mac.verify_slice(&raw).is_ok())
                .unwrap_or(false),
        }
    }
}

/// The frames of `msg` as a DEALER sends them (no routing identities).
pub fn encode(signer: &Signer, msg: &Message) -> Vec<Bytes> {
    let header = serde_json::to_vec(&msg.header).expect("a header serializes");
    let parent = match &msg.parent {
        Some(p) => serde_json::to_vec(p).expect("a header serializes"),
        None => b"{}".to_vec(),
    };
    let metadata = serde_json::to_vec(&msg.metadata).expect("JSON serializes");
    let content = serde_json::to_vec(&msg.content).expect("JSON serializes");
    let signature = signer.sign(&[&header, &parent, &metadata, &content]);
    vec![
        Bytes::from_static(DELIMITER),
        Bytes::from(signature),
        Bytes::from(header),
        Bytes::from(parent),
        Bytes::from(metadata),
        Bytes::from(content),
    ]
}

/// The message in `frames` (routing identities or a PUB topic before the delimiter are
/// skipped; buffers after the content are ignored), its signature checked.
pub fn decode(signer: &Signer, frames: &[Bytes]) -> Result<Message, WireError> {
    let at = frames
        .iter()
        .position(|f| f.as_ref() == DELIMITER)
        .ok_or(WireError::Malformed("no <IDS|MSG> delimiter"))?;
    let rest = &frames[at + 1..];
    if rest.len() < 5 {
        return Err(WireError::Malformed(
            "fewer than five frames after the delimiter",
        ));
    }
    let (sig, header, parent, metadata, content) =
        (&rest[0], &rest[1], &rest[2], &rest[3], &rest[4]);
    if !signer.verify(&[header, parent, metadata, content], sig) {
        return Err(WireError::BadSignature);
    }
    let json = |frame: &'static str, b: &Bytes| -> Result<Value, WireError> {
        serde_json::from_slice(b).map_err(|source| WireError::Json { frame, source })
    };
    let header: Header = serde_json::from_slice(header).map_err(|source| WireError::Json {
        frame: "header",
        source,
    })?;
    let parent = match json("parent header", parent)? {
        Value::Object(m) if m.is_empty() => None,
        v => Some(serde_json::from_value(v).map_err(|source| WireError::Json {
            frame: "parent header",
            source,
        })?),
    };
    Ok(Message {
        header,
        parent,
        metadata: json("metadata", metadata)?,
        content: json("content", content)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn messages_round_trip_signed_and_tampering_is_caught() {
        let signer = Signer::new(b"a-key");
        let mut msg = Message::new("s1", "execute_request", json!({"code": "1+1"}));
        msg.parent = Some(Message::new("s0", "kernel_info_request", json!({})).header);
        let frames = encode(&signer, &msg);
        assert_eq!(frames[0].as_ref(), DELIMITER);
        assert_eq!(frames[1].len(), 64, "hex of HMAC-SHA256");
        // With routing identities in front (as a ROUTER or a PUB topic sends it).
        let mut routed = vec![Bytes::from_static(b"identity")];
        routed.extend(frames.iter().cloned());
        assert_eq!(decode(&signer, &routed).expect("decode"), msg);
        // Another key, or a changed content frame, fails the signature.
        assert!(matches!(
            decode(&Signer::new(b"other"), &frames),
            Err(WireError::BadSignature)
        ));
        let mut changed = frames.clone();
        changed[5] = Bytes::from_static(br#"{"code":"import os"}"#);
        assert!(matches!(
            decode(&signer, &changed),
            Err(WireError::BadSignature)
        ));
        assert!(matches!(
            decode(&signer, &frames[1..]),
            Err(WireError::Malformed(_))
        ));
        // No key: unsigned both ways.
        let none = Signer::new(b"");
        let plain = encode(&none, &msg);
        assert!(plain[1].is_empty());
        assert_eq!(decode(&none, &plain).expect("decode").content, msg.content);
    }

    #[test]
    fn dates_are_iso_8601_utc() {
        let d = now_iso8601();
        assert_eq!(d.len(), "2026-12-07T10:00:00.000000Z".len(), "{d}");
        assert!(
            d.starts_with("20") && d.ends_with('Z') && &d[10..11] == "T",
            "{d}"
        );
    }
}
