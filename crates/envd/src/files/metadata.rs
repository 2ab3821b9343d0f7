//! `X-Metadata-<key>: <value>` upload headers (spec 3.6): keys lowercased, printable ASCII only,
//! key ≤ 246 bytes (so `user.e2b.<key>` fits the 255-byte xattr name limit), all keys and
//! values together ≤ 4096 bytes.

use std::collections::BTreeMap;

use http::HeaderMap;

use crate::files::FilesError;

/// Header name prefix (lowercase, as `http` stores names).
pub const HEADER_PREFIX: &str = "x-metadata-";
/// Longest key.
pub const MAX_KEY_LEN: usize = 246;
/// Largest total of keys and values.
pub const MAX_TOTAL_LEN: usize = 4096;

/// Collects and validates the metadata headers of an upload (a repeated key keeps its last value).
pub fn parse_metadata(headers: &HeaderMap) -> Result<BTreeMap<String, String>, FilesError> {
    let mut out = BTreeMap::new();
    for (name, value) in headers {
        let Some(key) = name.as_str().strip_prefix(HEADER_PREFIX) else {
            continue;
        };
        let key = key.to_ascii_lowercase();
        if key.is_empty() {
            return Err(FilesError::BadRequest(
                "metadata key must not be empty".into(),
            ));
        }
        if key.len() > MAX_KEY_LEN {
            return Err(FilesError::BadRequest(format!(
                "metadata key {key:?} is longer than {MAX_KEY_LEN} bytes"
            )));
        }
        if !printable(key.as_bytes()) {
            return Err(FilesError::BadRequest(format!(
                "metadata key {key:?} must be printable ASCII"
            )));
        }
        if !printable(value.as_bytes()) {
            return Err(FilesError::BadRequest(format!(
                "metadata value of {key:?} must be printable ASCII"
            )));
        }
        let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
        out.insert(key, value);
    }
    let total: usize = out.iter().map(|(k, v)| k.len() + v.len()).sum();
    if total > MAX_TOTAL_LEN {
        return Err(FilesError::BadRequest(format!(
            "metadata is larger than {MAX_TOTAL_LEN} bytes"
        )));
    }
    Ok(out)
}

fn printable(bytes: &[u8]) -> bool {
    bytes.iter().all(|b| (0x20..=0x7e).contains(b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn collects_and_validates() {
        let mut h = HeaderMap::new();
        h.insert("X-Metadata-Owner", HeaderValue::from_static("alice"));
        h.insert("x-metadata-Kind", HeaderValue::from_static("report v2"));
        h.insert("content-type", HeaderValue::from_static("text/plain"));
        let md = parse_metadata(&h).expect("valid");
        assert_eq!(md.get("owner").map(String::as_str), Some("alice"));
        assert_eq!(md.get("kind").map(String::as_str), Some("report v2"));
        assert_eq!(md.len(), 2);

        let mut h = HeaderMap::new();
        h.insert(
            "x-metadata-k",
            HeaderValue::from_bytes(b"caf\xc3\xa9").expect("opaque value"),
        );
        assert!(parse_metadata(&h).is_err(), "non-ASCII values are refused");

        let mut h = HeaderMap::new();
        let long = format!("x-metadata-{}", "k".repeat(MAX_KEY_LEN + 1));
        h.insert(
            http::HeaderName::from_bytes(long.as_bytes()).expect("name"),
            HeaderValue::from_static("v"),
        );
        assert!(parse_metadata(&h).is_err(), "long keys are refused");

        let mut h = HeaderMap::new();
        for i in 0..5 {
            let name =
                http::HeaderName::from_bytes(format!("x-metadata-k{i}").as_bytes()).expect("name");
            h.insert(
                name,
                HeaderValue::from_str(&"v".repeat(1000)).expect("value"),
            );
        }
        assert!(parse_metadata(&h).is_err(), "total size is limited");
    }
}
