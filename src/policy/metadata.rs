//! Facts a service keeps about a key and reads on every request: [`Metadata`].

use std::fmt;
use std::sync::Arc;

use serde_json::{Map, Value};

use super::PolicyError;

/// A JSON object stored with a key and handed to handlers with its identity, such as the
/// customer's plan or region, so they need no second lookup: at most 4 KiB serialized.
///
/// Not secret (it is shown in the key's records), but not logged either: its `Debug` shows
/// only its size. It is parsed once, when the key is looked up, never per request.
///
/// ```
/// use tower_api_key::policy::Metadata;
///
/// let metadata = Metadata::from_json(r#"{"plan": "pro", "region": "eu"}"#)?;
/// assert_eq!(metadata.get("plan").and_then(|plan| plan.as_str()), Some("pro"));
/// assert_eq!(metadata.as_json(), r#"{"plan":"pro","region":"eu"}"#);
/// assert!(Metadata::from_json("[1, 2]").is_err()); // an object, or nothing
/// # Ok::<(), tower_api_key::policy::PolicyError>(())
/// ```
#[derive(Clone)]
pub struct Metadata(Arc<Inner>);

struct Inner {
    /// The compact serialization: what stores keep and what [`Metadata::MAX_BYTES`] bounds.
    json: Box<str>,
    object: Map<String, Value>,
}

impl Metadata {
    /// Longest accepted metadata, in bytes of its compact JSON serialization.
    pub const MAX_BYTES: usize = 4096;

    /// Parses a JSON object.
    ///
    /// # Errors
    ///
    /// [`PolicyError::InvalidMetadata`] if `json` is not a JSON object, or
    /// [`PolicyError::MetadataTooLarge`] if its compact serialization is over 4 KiB.
    pub fn from_json(json: &str) -> Result<Self, PolicyError> {
        // Refused before parsing: its compact form can't be smaller than a quarter of it.
        if json.len() > 16 * Self::MAX_BYTES {
            return Err(PolicyError::MetadataTooLarge);
        }
        let value = serde_json::from_str(json).map_err(|_| PolicyError::InvalidMetadata)?;
        Self::from_value(value)
    }

    /// Wraps a JSON value that must be an object.
    ///
    /// # Errors
    ///
    /// [`PolicyError::InvalidMetadata`] for anything but an object, or
    /// [`PolicyError::MetadataTooLarge`] as [`from_object`](Self::from_object).
    pub fn from_value(value: Value) -> Result<Self, PolicyError> {
        match value {
            Value::Object(object) => Self::from_object(object),
            _ => Err(PolicyError::InvalidMetadata),
        }
    }

    /// Wraps a JSON object.
    ///
    /// # Errors
    ///
    /// [`PolicyError::MetadataTooLarge`] if its compact serialization is over 4 KiB.
    pub fn from_object(object: Map<String, Value>) -> Result<Self, PolicyError> {
        let json = serde_json::to_string(&object).map_err(|_| PolicyError::InvalidMetadata)?;
        if json.len() > Self::MAX_BYTES {
            return Err(PolicyError::MetadataTooLarge);
        }
        // An object built in code may nest deeper than a parser reads (128 levels): refused
        // here, it can't be stored and then fail every read of its key.
        if serde_json::from_str::<Value>(&json).is_err() {
            return Err(PolicyError::InvalidMetadata);
        }
        Ok(Self(Arc::new(Inner {
            json: json.into_boxed_str(),
            object,
        })))
    }

    /// The object.
    pub fn as_object(&self) -> &Map<String, Value> {
        &self.0.object
    }

    /// One member of the object.
    pub fn get(&self, member: &str) -> Option<&Value> {
        self.0.object.get(member)
    }

    /// The compact JSON serialization, as stores keep it.
    pub fn as_json(&self) -> &str {
        &self.0.json
    }

    /// The object as a type of your own.
    ///
    /// # Errors
    ///
    /// The deserializer's, if the object doesn't fit `T`.
    pub fn deserialize<T: serde::de::DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_str(&self.0.json)
    }
}

impl PartialEq for Metadata {
    fn eq(&self, other: &Self) -> bool {
        self.0.json == other.0.json
    }
}

impl Eq for Metadata {}

impl std::hash::Hash for Metadata {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.0.json.hash(state);
    }
}

impl fmt::Debug for Metadata {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Metadata({} bytes)", self.0.json.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_objects_are_metadata() {
        for bad in [
            "",
            "null",
            "1",
            "\"x\"",
            "[]",
            "{",
            "{\"a\":1} x",
            "{'a':1}",
        ] {
            assert_eq!(
                Metadata::from_json(bad),
                Err(PolicyError::InvalidMetadata),
                "{bad:?}"
            );
        }
        let nested = Metadata::from_json(r#" { "a" : { "b" : [1, null, true] } } "#);
        assert_eq!(
            nested.map(|m| m.as_json().to_owned()),
            Ok(r#"{"a":{"b":[1,null,true]}}"#.to_owned())
        );
        assert_eq!(
            Metadata::from_json("{}").map(|m| m.as_object().len()),
            Ok(0)
        );
    }

    #[test]
    fn the_bound_is_four_kibibytes_of_compact_json() {
        // `{"k":"…"}` is 8 bytes around the value.
        let fits = format!(r#"{{"k":"{}"}}"#, "x".repeat(Metadata::MAX_BYTES - 8));
        assert_eq!(
            Metadata::from_json(&fits).map(|m| m.as_json().len()),
            Ok(4096)
        );
        let over = format!(r#"{{"k":"{}"}}"#, "x".repeat(Metadata::MAX_BYTES - 7));
        assert_eq!(
            Metadata::from_json(&over),
            Err(PolicyError::MetadataTooLarge)
        );
        // Blanks don't count: the compact form is what is kept.
        let spaced = format!(
            "{{ \"k\" : \"{}\" {} }}",
            "x".repeat(Metadata::MAX_BYTES - 8),
            " ".repeat(4096)
        );
        assert!(Metadata::from_json(&spaced).is_ok());
        let huge = "{".to_owned() + &" ".repeat(100_000) + "}";
        assert_eq!(
            Metadata::from_json(&huge),
            Err(PolicyError::MetadataTooLarge)
        );
    }

    #[test]
    fn what_is_kept_reads_back_the_same() {
        // 17 significant digits: parsed to the nearest double, they print back the same.
        let float = Metadata::from_json(r#"{"f":1.0715660391465826e-75}"#).expect("valid");
        assert_eq!(float.as_json(), r#"{"f":1.0715660391465826e-75}"#);
        assert_eq!(Metadata::from_json(float.as_json()), Ok(float));
        // Nested deeper than a parser reads: refused when built, not when read back.
        let mut deep = Value::Null;
        for _ in 0..200 {
            deep = Value::Array(vec![deep]);
        }
        let mut object = Map::new();
        object.insert("deep".into(), deep);
        assert_eq!(
            Metadata::from_object(object),
            Err(PolicyError::InvalidMetadata)
        );
    }

    #[test]
    fn debug_shows_the_size_only() {
        let metadata = Metadata::from_json(r#"{"customer":"acme"}"#).expect("valid");
        assert_eq!(format!("{metadata:?}"), "Metadata(19 bytes)");
    }
}
