//! Query-string decoding with the reference server's exact rules: pairs are split on `&` and
//! `=` and unescaped strictly (`+` is a space, a bad `%` escape is an error), and the `metadata`
//! filter is unescaped once more as a whole, then split into `k=v` pairs whose key and value are
//! unescaped again (the Python SDK encodes it three times, spec 2.6).

use chrono::{DateTime, Utc};
use paddock_domain::SandboxState;

use crate::error::ApiError;
use crate::lifecycle::query::ListParams;
use crate::store::Order;

/// Unescapes like Go's `url.QueryUnescape`: `+` becomes a space, `%XX` a byte; anything else
/// after `%` is an error. The result must be UTF-8.
pub fn query_unescape(s: &str) -> Result<String, String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .ok_or_else(|| format!("bad escape in {s:?}"))?;
                let hex = std::str::from_utf8(hex).map_err(|_| format!("bad escape in {s:?}"))?;
                let byte =
                    u8::from_str_radix(hex, 16).map_err(|_| format!("bad escape in {s:?}"))?;
                out.push(byte);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).map_err(|_| format!("{s:?} does not decode to UTF-8"))
}

/// Splits and decodes a raw query string into `(name, value)` pairs, in order.
pub fn parse_pairs(raw: &str) -> Result<Vec<(String, String)>, ApiError> {
    raw.split('&')
        .filter(|part| !part.is_empty())
        .map(|part| {
            let (k, v) = part.split_once('=').unwrap_or((part, ""));
            let bad = |e| ApiError::BadRequest(format!("invalid query string: {e}"));
            Ok((
                query_unescape(k).map_err(bad)?,
                query_unescape(v).map_err(bad)?,
            ))
        })
        .collect()
}

/// Decodes the (already query-decoded) `metadata` filter value into pairs.
pub fn decode_metadata_filter(value: &str) -> Result<Vec<(String, String)>, ApiError> {
    let bad = |e: String| ApiError::BadRequest(format!("invalid metadata filter: {e}"));
    let whole = query_unescape(value).map_err(bad)?;
    whole
        .split('&')
        .map(|pair| {
            let parts: Vec<&str> = pair.split('=').collect();
            let [k, v] = parts.as_slice() else {
                return Err(bad(format!("{pair:?} is not a key=value pair")));
            };
            Ok((
                query_unescape(k).map_err(bad)?,
                query_unescape(v).map_err(bad)?,
            ))
        })
        .collect()
}

/// Parses the comma-joined `state` filter (`running`, `paused`).
pub fn parse_states(value: &str) -> Result<Vec<SandboxState>, ApiError> {
    value
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| match s {
            "running" => Ok(SandboxState::Running),
            "paused" => Ok(SandboxState::Paused),
            other => Err(ApiError::BadRequest(format!(
                "state: unknown value {other:?}, expected running or paused"
            ))),
        })
        .collect()
}

/// Builds the listing parameters of `GET /v2/sandboxes` (and the metadata of `GET /sandboxes`).
pub fn list_params(raw: Option<&str>) -> Result<ListParams, ApiError> {
    let mut params = ListParams::default();
    for (name, value) in parse_pairs(raw.unwrap_or(""))? {
        match name.as_str() {
            // An empty filter means no filter (the reference rejects it; being lenient is safe).
            "metadata" if value.is_empty() => {}
            "metadata" => params.metadata.extend(decode_metadata_filter(&value)?),
            "state" => params.states = Some(parse_states(&value)?),
            "limit" => {
                let n = value.parse::<i64>().map_err(|_| {
                    ApiError::BadRequest(format!("limit must be an integer, got {value:?}"))
                })?;
                params.limit = Some(n);
            }
            "nextToken" => params.next_token = Some(value),
            "template" if !value.is_empty() => params.template = Some(value),
            "order" => {
                params.order = match value.as_str() {
                    "asc" => Order::Asc,
                    "desc" => Order::Desc,
                    other => {
                        return Err(ApiError::BadRequest(format!(
                            "order must be asc or desc, got {other:?}"
                        )))
                    }
                }
            }
            "startedAfter" => {
                let t = DateTime::parse_from_rfc3339(&value).map_err(|_| {
                    ApiError::BadRequest(format!("startedAfter must be RFC 3339, got {value:?}"))
                })?;
                params.started_after = Some(t.with_timezone(&Utc));
            }
            _ => {}
        }
    }
    Ok(params)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_sdk_triple_encoded_metadata() {
        let params = list_params(Some(
            "metadata=k%3Dv%252520w&state=running%2Cpaused&limit=10",
        ))
        .expect("parses");
        assert_eq!(params.metadata, vec![("k".to_string(), "v w".to_string())]);
        assert_eq!(
            params.states,
            Some(vec![SandboxState::Running, SandboxState::Paused])
        );
        assert_eq!(params.limit, Some(10));
    }

    #[test]
    fn several_pairs_and_reserved_characters() {
        // {"a&b": "c=d", "x": "y"} as the Python SDK sends it.
        let params = list_params(Some("metadata=a%252526b%3Dc%25253Dd%26x%3Dy")).expect("parses");
        assert_eq!(
            params.metadata,
            vec![
                ("a&b".to_string(), "c=d".to_string()),
                ("x".to_string(), "y".to_string())
            ]
        );
    }

    #[test]
    fn malformed_filters_are_400() {
        for raw in [
            "metadata=novalue",
            "metadata=a%3Db%3Dc",
            "metadata=%zz",
            "state=stopped",
            "limit=x",
            "order=up",
        ] {
            let err = list_params(Some(raw)).expect_err(raw);
            assert_eq!(
                err.status_code(),
                axum::http::StatusCode::BAD_REQUEST,
                "{raw}"
            );
        }
    }

    #[test]
    fn unescape_is_strict_and_plus_is_space() {
        assert_eq!(query_unescape("a+b%20c").as_deref(), Ok("a b c"));
        assert!(query_unescape("%2").is_err());
        assert!(query_unescape("%g1").is_err());
        assert!(query_unescape("%ff").is_err());
    }
}
