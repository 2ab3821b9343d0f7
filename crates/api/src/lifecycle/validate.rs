//! Input validation shared by the lifecycle operations. Every message names the offending field
//! so a 400 tells the client exactly what to fix.

use std::collections::{BTreeMap, HashMap};

use super::Error;

/// Longest timeout a sandbox may be given: 24 hours.
pub const MAX_TIMEOUT_SECS: i64 = 24 * 3600;
/// Most metadata entries per sandbox.
pub const MAX_METADATA_ENTRIES: usize = 100;
/// Longest metadata key, in bytes.
pub const MAX_METADATA_KEY: usize = 256;
/// Longest metadata value, in bytes.
pub const MAX_METADATA_VALUE: usize = 4096;
/// Most environment variables per sandbox.
pub const MAX_ENV_VARS: usize = 1000;
/// Longest environment variable value, in bytes.
pub const MAX_ENV_VALUE: usize = 128 * 1024;

/// Checks a timeout in seconds (`0..=86400`).
pub fn timeout(field: &str, secs: i64) -> Result<i64, Error> {
    if !(0..=MAX_TIMEOUT_SECS).contains(&secs) {
        return Err(Error::Invalid(format!(
            "{field} must be between 0 and {MAX_TIMEOUT_SECS} seconds, got {secs}"
        )));
    }
    Ok(secs)
}

/// Checks metadata sizes.
pub fn metadata(meta: &BTreeMap<String, String>) -> Result<(), Error> {
    if meta.len() > MAX_METADATA_ENTRIES {
        return Err(Error::Invalid(format!(
            "metadata has {} entries, at most {MAX_METADATA_ENTRIES} are allowed",
            meta.len()
        )));
    }
    for (key, value) in meta {
        if key.is_empty() || key.len() > MAX_METADATA_KEY {
            return Err(Error::Invalid(format!(
                "metadata key {key:?} must be 1 to {MAX_METADATA_KEY} bytes long"
            )));
        }
        if value.len() > MAX_METADATA_VALUE {
            return Err(Error::Invalid(format!(
                "metadata value of {key:?} is longer than {MAX_METADATA_VALUE} bytes"
            )));
        }
    }
    Ok(())
}

/// Checks environment variable names and values.
pub fn env_vars(vars: &HashMap<String, String>) -> Result<(), Error> {
    if vars.len() > MAX_ENV_VARS {
        return Err(Error::Invalid(format!(
            "envVars has {} entries, at most {MAX_ENV_VARS} are allowed",
            vars.len()
        )));
    }
    for (name, value) in vars {
        if name.is_empty() || name.contains('=') || name.contains('\0') {
            return Err(Error::Invalid(format!(
                "envVars name {name:?} is invalid: it must be non-empty without '=' or NUL"
            )));
        }
        if value.contains('\0') || value.len() > MAX_ENV_VALUE {
            return Err(Error::Invalid(format!(
                "envVars value of {name:?} must not contain NUL or exceed {MAX_ENV_VALUE} bytes"
            )));
        }
    }
    Ok(())
}

/// Checks an `Idempotency-Key` header value (1 to 255 printable ASCII characters).
pub fn idempotency_key(key: &str) -> Result<(), Error> {
    if key.is_empty() || key.len() > 255 || !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(Error::Invalid(
            "Idempotency-Key must be 1 to 255 printable ASCII characters".into(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_are_bounded() {
        assert!(timeout("timeout", 0).is_ok());
        assert!(timeout("timeout", MAX_TIMEOUT_SECS).is_ok());
        let err = timeout("timeout", MAX_TIMEOUT_SECS + 1).expect_err("too long");
        assert!(err.to_string().contains("timeout"));
        assert!(timeout("timeout", -1).is_err());
    }

    #[test]
    fn metadata_and_env_limits() {
        let mut meta = BTreeMap::new();
        meta.insert("k".to_string(), "v".to_string());
        assert!(metadata(&meta).is_ok());
        meta.insert(String::new(), "v".into());
        assert!(metadata(&meta).is_err());

        let mut env = HashMap::new();
        env.insert("A".to_string(), "b".to_string());
        assert!(env_vars(&env).is_ok());
        env.insert("A=B".into(), "x".into());
        assert!(env_vars(&env)
            .expect_err("bad name")
            .to_string()
            .contains("envVars"));
    }

    #[test]
    fn idempotency_keys() {
        assert!(idempotency_key("3f2c-11aa").is_ok());
        assert!(idempotency_key("").is_err());
        assert!(idempotency_key("has space").is_err());
    }
}
