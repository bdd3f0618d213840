//! One HTTP header field as raw bytes, with the JSON shape used by every
//! control API of the testbed.
//!
//! JSON: `[name, value]` when the value is UTF-8, otherwise
//! `[name, base64(value), "base64"]`. Names are always tokens (ASCII).

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde::de::{Error as _, SeqAccess, Visitor};
use serde::ser::SerializeSeq;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A header field exactly as it was on the wire (name case preserved).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct HeaderField {
    /// Header name bytes, case preserved.
    pub name: Vec<u8>,
    /// Header value bytes (may be non-UTF-8).
    pub value: Vec<u8>,
}

impl HeaderField {
    /// Builds a field from anything byte-like.
    pub fn new(name: impl AsRef<[u8]>, value: impl AsRef<[u8]>) -> Self {
        Self {
            name: name.as_ref().to_vec(),
            value: value.as_ref().to_vec(),
        }
    }

    /// The name, lossily decoded.
    pub fn name_str(&self) -> String {
        String::from_utf8_lossy(&self.name).into_owned()
    }

    /// The value, lossily decoded.
    pub fn value_str(&self) -> String {
        String::from_utf8_lossy(&self.value).into_owned()
    }

    /// Case-insensitive name comparison.
    pub fn is(&self, name: &str) -> bool {
        self.name.eq_ignore_ascii_case(name.as_bytes())
    }
}

impl std::fmt::Debug for HeaderField {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:?}: {:?}",
            self.name_str(),
            String::from_utf8_lossy(&self.value)
        )
    }
}

/// First value of header `name` (case-insensitive) in `headers`.
pub fn find<'a>(headers: &'a [HeaderField], name: &str) -> Option<&'a [u8]> {
    headers
        .iter()
        .find(|h| h.is(name))
        .map(|h| h.value.as_slice())
}

/// All values of header `name` (case-insensitive), in order.
pub fn find_all<'a>(headers: &'a [HeaderField], name: &str) -> Vec<&'a [u8]> {
    headers
        .iter()
        .filter(|h| h.is(name))
        .map(|h| h.value.as_slice())
        .collect()
}

impl Serialize for HeaderField {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let name = self.name_str();
        match std::str::from_utf8(&self.value) {
            Ok(v) => {
                let mut seq = s.serialize_seq(Some(2))?;
                seq.serialize_element(&name)?;
                seq.serialize_element(v)?;
                seq.end()
            }
            Err(_) => {
                let mut seq = s.serialize_seq(Some(3))?;
                seq.serialize_element(&name)?;
                seq.serialize_element(&B64.encode(&self.value))?;
                seq.serialize_element("base64")?;
                seq.end()
            }
        }
    }
}

impl<'de> Deserialize<'de> for HeaderField {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = HeaderField;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("[name, value] or [name, base64value, \"base64\"]")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<HeaderField, A::Error> {
                let name: String = seq
                    .next_element()?
                    .ok_or_else(|| A::Error::invalid_length(0, &self))?;
                let value: String = seq
                    .next_element()?
                    .ok_or_else(|| A::Error::invalid_length(1, &self))?;
                let encoding: Option<String> = seq.next_element()?;
                let value = match encoding.as_deref() {
                    None => value.into_bytes(),
                    Some("base64") => B64
                        .decode(value.as_bytes())
                        .map_err(|e| A::Error::custom(format!("bad base64 header value: {e}")))?,
                    Some(other) => {
                        return Err(A::Error::custom(format!(
                            "unknown header value encoding {other:?}"
                        )))
                    }
                };
                if seq.next_element::<serde::de::IgnoredAny>()?.is_some() {
                    return Err(A::Error::invalid_length(4, &self));
                }
                Ok(HeaderField {
                    name: name.into_bytes(),
                    value,
                })
            }
        }
        d.deserialize_seq(V)
    }
}

/// Serde helper: `Vec<u8>` as a base64 string.
pub mod base64_bytes {
    use super::B64;
    use base64::Engine as _;
    use serde::{Deserialize, Deserializer, Serializer};

    /// Serializes bytes as standard base64.
    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&B64.encode(v))
    }

    /// Deserializes standard base64 into bytes.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = String::deserialize(d)?;
        B64.decode(s.as_bytes()).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_round_trip_utf8_and_binary() {
        let hs = vec![
            HeaderField::new("X-A", "hello"),
            HeaderField::new("x-b", [0xff, 0x00, b'a']),
        ];
        let json = serde_json::to_string(&hs).unwrap();
        assert_eq!(json, r#"[["X-A","hello"],["x-b","/wBh","base64"]]"#);
        let back: Vec<HeaderField> = serde_json::from_str(&json).unwrap();
        assert_eq!(back, hs);
    }
}
