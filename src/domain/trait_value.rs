//! A trait's value as a resident profile keeps it: 16 bytes, where a `serde_json::Value` is 72
//! (the build compiles `serde_json` with `preserve_order`). Strings of up to
//! [`INLINE_MAX`] bytes sit inside the value; longer ones in one shared allocation, so a
//! profile's copy-on-write snapshot and the next change's copy of the trait map cost a
//! reference count per string instead of an allocation. Arrays and objects, rare as traits,
//! stay a shared JSON tree.
//!
//! The JSON it reads and writes is exactly the `Value`'s: numbers keep serde_json's three
//! kinds (non-negative integer, negative integer, float), so equality and output agree with it.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

use serde::de::value::{MapAccessDeserializer, SeqAccessDeserializer};
use serde::de::{Deserializer, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize, Serializer};
use serde_json::Value;

use super::inline_str::InlineStr;
use super::thin_str::ThinStr;

/// Longest string kept inside the value.
pub const INLINE_MAX: usize = 14;

#[derive(Clone, PartialEq)]
pub enum TraitValue {
    Null,
    Bool(bool),
    /// A non-negative integer (serde_json's `PosInt`).
    PosInt(u64),
    /// A negative integer.
    NegInt(i64),
    /// A finite float.
    Float(f64),
    Inline(InlineStr<INLINE_MAX>),
    /// A string longer than [`INLINE_MAX`] bytes, shared.
    Shared(ThinStr),
    /// An array or an object.
    Json(Arc<Value>),
}

const _: () = assert!(std::mem::size_of::<TraitValue>() == 16);

impl TraitValue {
    /// A string value (inline when short enough).
    pub fn string(s: &str) -> TraitValue {
        match InlineStr::new(s) {
            Some(inline) => TraitValue::Inline(inline),
            None => TraitValue::Shared(ThinStr::new(s)),
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            TraitValue::Inline(s) => Some(s.as_str()),
            TraitValue::Shared(s) => Some(s.as_str()),
            _ => None,
        }
    }

    pub fn is_null(&self) -> bool {
        matches!(self, TraitValue::Null)
    }

    /// The same value as a JSON tree.
    pub fn to_value(&self) -> Value {
        match self {
            TraitValue::Null => Value::Null,
            TraitValue::Bool(b) => Value::Bool(*b),
            TraitValue::PosInt(n) => Value::from(*n),
            TraitValue::NegInt(n) => Value::from(*n),
            // Only finite floats are kept (see `float`), and those always convert.
            TraitValue::Float(f) => {
                serde_json::Number::from_f64(*f).map_or(Value::Null, Value::Number)
            }
            TraitValue::Inline(_) | TraitValue::Shared(_) => {
                Value::String(self.as_str().unwrap_or_default().to_string())
            }
            TraitValue::Json(v) => (**v).clone(),
        }
    }

    /// The same value as a JSON tree, borrowed where it is one.
    pub fn as_json(&self) -> Cow<'_, Value> {
        match self {
            TraitValue::Json(v) => Cow::Borrowed(v),
            other => Cow::Owned(other.to_value()),
        }
    }

    /// Heap bytes this value holds beyond its 16 (a shared string's allocation is counted
    /// whole by each holder; a JSON tree approximately).
    pub fn heap_bytes(&self) -> usize {
        match self {
            TraitValue::Shared(s) => s.allocation_bytes(),
            TraitValue::Json(v) => 2 * std::mem::size_of::<usize>() + json_bytes(v),
            _ => 0,
        }
    }

    /// serde_json's reading of a float: a non-finite one is `null`.
    fn float(f: f64) -> TraitValue {
        if f.is_finite() {
            TraitValue::Float(f)
        } else {
            TraitValue::Null
        }
    }

    fn integer(n: i64) -> TraitValue {
        if n < 0 {
            TraitValue::NegInt(n)
        } else {
            TraitValue::PosInt(n as u64)
        }
    }
}

/// Approximate heap bytes of a JSON tree.
fn json_bytes(v: &Value) -> usize {
    let node = std::mem::size_of::<Value>();
    match v {
        Value::String(s) => s.capacity(),
        Value::Array(items) => items.iter().map(|i| node + json_bytes(i)).sum(),
        Value::Object(map) => map
            .iter()
            .map(|(k, v)| k.capacity() + 8 + node + json_bytes(v))
            .sum(),
        _ => 0,
    }
}

impl From<&Value> for TraitValue {
    fn from(v: &Value) -> TraitValue {
        match v {
            Value::Null => TraitValue::Null,
            Value::Bool(b) => TraitValue::Bool(*b),
            Value::Number(n) => match (n.as_u64(), n.as_i64(), n.as_f64()) {
                (Some(u), _, _) => TraitValue::PosInt(u),
                (None, Some(i), _) => TraitValue::integer(i),
                (None, None, Some(f)) => TraitValue::float(f),
                (None, None, None) => TraitValue::Null,
            },
            Value::String(s) => TraitValue::string(s),
            Value::Array(_) | Value::Object(_) => TraitValue::Json(Arc::new(v.clone())),
        }
    }
}

impl From<Value> for TraitValue {
    fn from(v: Value) -> TraitValue {
        match v {
            Value::Array(_) | Value::Object(_) => TraitValue::Json(Arc::new(v)),
            other => TraitValue::from(&other),
        }
    }
}

impl fmt::Debug for TraitValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TraitValue::Null => f.write_str("Null"),
            TraitValue::Bool(b) => write!(f, "Bool({b})"),
            TraitValue::PosInt(n) => write!(f, "PosInt({n})"),
            TraitValue::NegInt(n) => write!(f, "NegInt({n})"),
            TraitValue::Float(x) => write!(f, "Float({x})"),
            TraitValue::Inline(_) | TraitValue::Shared(_) => {
                write!(f, "String({:?})", self.as_str().unwrap_or_default())
            }
            TraitValue::Json(v) => write!(f, "Json({v})"),
        }
    }
}

impl Serialize for TraitValue {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            TraitValue::Null => s.serialize_unit(),
            TraitValue::Bool(b) => s.serialize_bool(*b),
            TraitValue::PosInt(n) => s.serialize_u64(*n),
            TraitValue::NegInt(n) => s.serialize_i64(*n),
            TraitValue::Float(x) => s.serialize_f64(*x),
            TraitValue::Inline(v) => s.serialize_str(v.as_str()),
            TraitValue::Shared(v) => s.serialize_str(v.as_str()),
            TraitValue::Json(v) => v.serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for TraitValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> Visitor<'de> for Visit {
            type Value = TraitValue;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON value")
            }
            fn visit_bool<E>(self, b: bool) -> Result<TraitValue, E> {
                Ok(TraitValue::Bool(b))
            }
            fn visit_i64<E>(self, n: i64) -> Result<TraitValue, E> {
                Ok(TraitValue::integer(n))
            }
            fn visit_u64<E>(self, n: u64) -> Result<TraitValue, E> {
                Ok(TraitValue::PosInt(n))
            }
            fn visit_f64<E>(self, x: f64) -> Result<TraitValue, E> {
                Ok(TraitValue::float(x))
            }
            fn visit_str<E>(self, s: &str) -> Result<TraitValue, E> {
                Ok(TraitValue::string(s))
            }
            fn visit_unit<E>(self) -> Result<TraitValue, E> {
                Ok(TraitValue::Null)
            }
            fn visit_none<E>(self) -> Result<TraitValue, E> {
                Ok(TraitValue::Null)
            }
            fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<TraitValue, D::Error> {
                TraitValue::deserialize(d)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<TraitValue, A::Error> {
                let v = Value::deserialize(SeqAccessDeserializer::new(seq))?;
                Ok(TraitValue::Json(Arc::new(v)))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<TraitValue, A::Error> {
                let v = Value::deserialize(MapAccessDeserializer::new(map))?;
                Ok(TraitValue::Json(Arc::new(v)))
            }
        }
        d.deserialize_any(Visit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reads_and_writes_json_as_a_value_does() {
        let cases = [
            "null",
            "true",
            "0",
            "7",
            "-7",
            "18446744073709551615",
            "-9223372036854775808",
            "1.5",
            "-0.0",
            "1e300",
            r#""""#,
            r#""fourteen bytes""#,
            r#""fifteen bytes!!""#,
            r#""user-00000001@example.com""#,
            r#""日本語のテキスト""#,
            r#"[1,"a",{"b":null}]"#,
            r#"{"z":1,"a":[true]}"#,
        ];
        for text in cases {
            let value: Value = serde_json::from_str(text).unwrap();
            let compact: TraitValue = serde_json::from_str(text).unwrap();
            assert_eq!(compact.to_value(), value, "{text}");
            assert_eq!(TraitValue::from(&value), compact, "{text}");
            assert_eq!(
                serde_json::to_string(&compact).unwrap(),
                serde_json::to_string(&value).unwrap(),
                "{text}"
            );
        }
    }

    #[test]
    fn strings_inline_up_to_the_limit_then_shared() {
        let short = "a".repeat(INLINE_MAX);
        let long = "a".repeat(INLINE_MAX + 1);
        assert!(matches!(TraitValue::string(&short), TraitValue::Inline(_)));
        assert!(matches!(TraitValue::string(&long), TraitValue::Shared(_)));
        assert_eq!(TraitValue::string(&long).as_str(), Some(long.as_str()));
        assert_eq!(TraitValue::string("").as_str(), Some(""));
        // A multi-byte string is measured in bytes: 5 × 3 bytes does not fit inline.
        assert!(matches!(
            TraitValue::string("日本語日本"),
            TraitValue::Shared(_)
        ));
        assert_eq!(TraitValue::from(json!(1)), TraitValue::from(json!(1u64)));
        assert_ne!(TraitValue::from(json!(1)), TraitValue::from(json!(1.0)));
    }
}
