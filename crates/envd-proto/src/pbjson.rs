//! serde helpers for proto3 JSON as envd writes it and accepts it: `bytes` as base64
//! ([`Base64`], [`mod@bytes`]), 64-bit ints as strings ([`int64`]), 32-bit ints as numbers that
//! may arrive as strings ([`uint32`], [`int32`]), `null` as the default value, zero values left
//! out on output ([`is_zero`]).

use base64::Engine as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Raw bytes carried as base64 in JSON (standard, padded out; any flavour in; `null` is empty).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Base64(pub Vec<u8>);

impl Serialize for Base64 {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        bytes::serialize(&self.0, s)
    }
}

impl<'de> Deserialize<'de> for Base64 {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match Option::<String>::deserialize(d)? {
            None => Ok(Base64::default()),
            Some(s) => decode(&s).map(Base64).map_err(invalid_base64),
        }
    }
}

/// `bytes` fields: standard base64 with padding out; any base64 flavour in.
pub mod bytes {
    use super::*;
    /// Serializes bytes as standard padded base64.
    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(v))
    }
    /// Accepts standard or URL-safe base64, padded or not.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = String::deserialize(d)?;
        decode(&s).map_err(invalid_base64)
    }
}

/// Decodes any base64 flavour (standard or URL-safe, padded or not).
pub fn decode(s: &str) -> Result<Vec<u8>, base64::DecodeError> {
    let cleaned: String = s.trim_end_matches('=').replace('-', "+").replace('_', "/");
    base64::engine::general_purpose::STANDARD_NO_PAD.decode(cleaned.as_bytes())
}

fn invalid_base64<E: serde::de::Error>(e: base64::DecodeError) -> E {
    E::custom(format_args!("invalid base64: {e}"))
}

/// A number that may arrive as a JSON number or a decimal string.
#[derive(Deserialize)]
#[serde(untagged)]
enum Number<T> {
    S(String),
    I(T),
}

impl<T: std::str::FromStr> Number<T>
where
    T::Err: std::fmt::Display,
{
    fn value<E: serde::de::Error>(self) -> Result<T, E> {
        match self {
            Number::I(i) => Ok(i),
            Number::S(s) => s.trim().parse().map_err(E::custom),
        }
    }
}

/// `int64`/`uint64` fields: a JSON string out; a string or a number in.
pub mod int64 {
    use super::*;
    /// Serializes as a decimal string.
    pub fn serialize<S: Serializer>(v: &i64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&v.to_string())
    }
    /// Accepts a string or a number.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
        Number::<i64>::deserialize(d)?.value()
    }
}

/// 32-bit unsigned ints: a number out; a number or a string in.
pub mod uint32 {
    use super::*;
    /// Serializes as a JSON number.
    pub fn serialize<S: Serializer>(v: &u32, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u32(*v)
    }
    /// Accepts a string or a number.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
        Number::<u32>::deserialize(d)?.value()
    }
    /// Accepts a string, a number or `null` (none).
    pub fn deserialize_opt<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
        Option::<Number<u32>>::deserialize(d)?
            .map(Number::value)
            .transpose()
    }
    /// Accepts a string, a number or `null` (0).
    pub fn deserialize_or_zero<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
        Ok(deserialize_opt(d)?.unwrap_or_default())
    }
}

/// 32-bit signed ints: a number, a decimal string or `null` (0) in.
pub fn int32<'de, D: Deserializer<'de>>(d: D) -> Result<i32, D::Error> {
    Ok(Option::<Number<i32>>::deserialize(d)?
        .map(Number::value)
        .transpose()?
        .unwrap_or_default())
}

/// `null` in proto3 JSON means the default value.
pub fn null_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// Whether a number is zero (proto3 omits zero values on output).
pub fn is_zero<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_flavours_decode() {
        assert_eq!(decode("aGkK").expect("std"), b"hi\n");
        assert_eq!(decode("aGk=").expect("padded"), b"hi");
        assert_eq!(decode("_-8").expect("urlsafe"), vec![0xff, 0xef]);
        assert_eq!(
            serde_json::to_string(&Base64(b"hi".to_vec())).expect("encodes"),
            r#""aGk=""#
        );
        assert_eq!(
            serde_json::from_str::<Base64>("null").expect("null"),
            Base64::default()
        );
    }

    #[test]
    fn numbers_arrive_as_numbers_or_strings() {
        #[derive(Deserialize)]
        struct M {
            #[serde(default, deserialize_with = "int32")]
            a: i32,
            #[serde(default, deserialize_with = "uint32::deserialize_opt")]
            b: Option<u32>,
            #[serde(default, with = "int64")]
            c: i64,
        }
        let m: M =
            serde_json::from_str(r#"{"a":"-1","b":" 7","c":"9000000000"}"#).expect("strings");
        assert_eq!((m.a, m.b, m.c), (-1, Some(7), 9_000_000_000));
        let m: M = serde_json::from_str(r#"{"a":null,"b":null,"c":3}"#).expect("nulls");
        assert_eq!((m.a, m.b, m.c), (0, None, 3));
        assert!(serde_json::from_str::<M>(r#"{"b":"x"}"#).is_err());
    }
}
