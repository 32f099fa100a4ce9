//! JSON strings borrowed from the input wherever they can be. serde's own `Cow<str>` always
//! copies (its `Deserialize` impl goes through `String`), and `#[serde(borrow)]` borrows only
//! a bare `Cow<'a, str>` field, not an `Option` of one: each would cost an allocation per
//! string of every message decoded. A string with escapes is unescaped into an owned copy.

use std::borrow::Cow;
use std::fmt;

use serde::de::{Deserializer, Visitor};
use serde::Deserialize;

/// A string: borrowed from the input when it holds no escapes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Str<'a>(pub Cow<'a, str>);

impl std::ops::Deref for Str<'_> {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

struct CowVisitor;

impl<'de> Visitor<'de> for CowVisitor {
    type Value = Cow<'de, str>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string")
    }
    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Cow::Borrowed(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Cow::Owned(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
        Ok(Cow::Owned(v))
    }
}

impl<'de> Deserialize<'de> for Str<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_str(CowVisitor).map(Str)
    }
}

/// For `#[serde(deserialize_with = "…", borrow)]` on an `Option<Cow<'a, str>>` field: JSON
/// `null` is `None`.
pub fn opt_cow<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Cow<'de, str>>, D::Error> {
    Option::<Str<'de>>::deserialize(d).map(|s| s.map(|s| s.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    struct Doc<'a> {
        #[serde(default, borrow, deserialize_with = "opt_cow")]
        field: Option<Cow<'a, str>>,
    }

    #[test]
    fn plain_strings_are_borrowed_and_escaped_ones_unescaped() {
        let plain: Doc = serde_json::from_str(r#"{"field": "abc"}"#).unwrap();
        assert!(matches!(plain.field, Some(Cow::Borrowed("abc"))));
        let escaped: Doc = serde_json::from_str(r#"{"field": "a\"b\u00e9"}"#).unwrap();
        assert!(matches!(escaped.field.as_deref(), Some("a\"bé")));
        assert!(matches!(escaped.field, Some(Cow::Owned(_))));
    }

    #[test]
    fn null_and_absent_are_none_and_other_types_are_refused() {
        let null: Doc = serde_json::from_str(r#"{"field": null}"#).unwrap();
        assert!(null.field.is_none());
        let absent: Doc = serde_json::from_str("{}").unwrap();
        assert!(absent.field.is_none());
        for bad in [r#"{"field": 1}"#, r#"{"field": {}}"#, r#"{"field": [1]}"#] {
            assert!(serde_json::from_str::<Doc>(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn map_keys_are_borrowed() {
        let mut de = serde_json::Deserializer::from_str(r#"{"key": 1, "k\u0065y2": 2}"#);
        struct Keys;
        impl<'de> Visitor<'de> for Keys {
            type Value = Vec<Cow<'de, str>>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut a: A,
            ) -> Result<Self::Value, A::Error> {
                let mut keys = Vec::new();
                while let Some((k, _)) = a.next_entry::<Str<'de>, u8>()? {
                    keys.push(k.0);
                }
                Ok(keys)
            }
        }
        let keys = de.deserialize_map(Keys).unwrap();
        assert!(matches!(keys[0], Cow::Borrowed("key")));
        assert!(matches!(&keys[1], Cow::Owned(k) if k == "key2"));
    }
}
