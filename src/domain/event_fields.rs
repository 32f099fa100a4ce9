//! Fields of an input message decoded straight into what the domain keeps, without building a
//! JSON tree first: `traits` into a list of changes, `tags` into its two lists of names,
//! `properties` kept as text.

use std::fmt;

use bytes::Bytes;
use serde::de::{IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use super::event::{RejectReason, Rejection};
use super::inline_str::SmallStr;
use super::json_str::Str;
use super::trait_value::TraitValue;

/// `traits` as changes, in the order of the object's keys: a non-null value sets, `null`
/// removes. A key given twice keeps its first place and its last value, as a JSON object
/// read into a map would.
#[derive(Debug, Default)]
pub struct TraitChanges(pub Vec<(SmallStr, Option<TraitValue>)>);

impl<'de> Deserialize<'de> for TraitChanges {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> Visitor<'de> for Visit {
            type Value = TraitChanges;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<TraitChanges, A::Error> {
                let mut changes: Vec<(SmallStr, Option<TraitValue>)> =
                    Vec::with_capacity(map.size_hint().unwrap_or(8));
                while let Some(key) = map.next_key::<Str<'de>>()? {
                    let value = map.next_value::<TraitValue>()?;
                    let value = (!value.is_null()).then_some(value);
                    changes.push((SmallStr::from(key.0), value));
                }
                keep_last_per_key(&mut changes);
                Ok(TraitChanges(changes))
            }
        }
        d.deserialize_map(Visit)
    }
}

/// Merges repeated keys: the first place, the last value.
fn keep_last_per_key(changes: &mut Vec<(SmallStr, Option<TraitValue>)>) {
    if changes.len() < 2 {
        return;
    }
    if changes.len() <= 16 {
        // The usual handful of traits: a scan, no map.
        let repeated =
            (1..changes.len()).any(|i| changes[..i].iter().any(|(k, _)| *k == changes[i].0));
        if !repeated {
            return;
        }
    }
    let mut first: ahash::AHashMap<&str, usize> = ahash::AHashMap::with_capacity(changes.len());
    let mut moves: Vec<(usize, usize)> = Vec::new();
    for (i, (key, _)) in changes.iter().enumerate() {
        match first.get(key.as_str()) {
            Some(&at) => moves.push((at, i)),
            None => {
                first.insert(key.as_str(), i);
            }
        }
    }
    if moves.is_empty() {
        return;
    }
    let mut repeated = vec![false; changes.len()];
    for (at, i) in moves {
        let value = changes[i].1.take();
        changes[at].1 = value;
        repeated[i] = true;
    }
    let mut i = 0;
    changes.retain(|_| {
        i += 1;
        !repeated[i - 1]
    });
}

/// `tags`: an object with optional `add` and `remove` arrays of strings (other keys are
/// ignored). A `tags` of another shape is not a decoding error but this field's rejection,
/// reported after the checks of the required fields.
#[derive(Debug)]
pub struct Tags(pub Result<(Vec<SmallStr>, Vec<SmallStr>), Rejection>);

impl Default for Tags {
    fn default() -> Self {
        Tags(Ok((Vec::new(), Vec::new())))
    }
}

/// What is wrong with one of `tags`' lists (the JSON type found).
enum PartError {
    NotArray(&'static str),
    BadItem(&'static str),
}

struct Part(Result<Vec<SmallStr>, PartError>);

impl<'de> Deserialize<'de> for Tags {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> Visitor<'de> for Visit {
            type Value = Tags;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Tags, A::Error> {
                let (mut add, mut remove) = (Part(Ok(Vec::new())), Part(Ok(Vec::new())));
                while let Some(key) = map.next_key::<Str<'de>>()? {
                    match &*key {
                        "add" => add = map.next_value()?,
                        "remove" => remove = map.next_value()?,
                        _ => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                let part = |name: &str, part: Part| {
                    part.0.map_err(|e| {
                        let detail = match e {
                            PartError::NotArray(t) => {
                                format!("`tags.{name}` must be an array, got {t}")
                            }
                            PartError::BadItem(t) => {
                                format!("`tags.{name}` must hold strings, got {t}")
                            }
                        };
                        Rejection {
                            reason: RejectReason::BadField,
                            detail,
                        }
                    })
                };
                Ok(Tags(
                    part("add", add).and_then(|a| Ok((a, part("remove", remove)?))),
                ))
            }
            fn visit_unit<E>(self) -> Result<Tags, E> {
                Ok(Tags::default())
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Tags, A::Error> {
                Ok(not_object(drain(seq)?))
            }
            fn visit_bool<E>(self, _: bool) -> Result<Tags, E> {
                Ok(not_object("a boolean"))
            }
            fn visit_i64<E>(self, _: i64) -> Result<Tags, E> {
                Ok(not_object("a number"))
            }
            fn visit_u64<E>(self, _: u64) -> Result<Tags, E> {
                Ok(not_object("a number"))
            }
            fn visit_f64<E>(self, _: f64) -> Result<Tags, E> {
                Ok(not_object("a number"))
            }
            fn visit_str<E>(self, _: &str) -> Result<Tags, E> {
                Ok(not_object("a string"))
            }
        }
        d.deserialize_any(Visit)
    }
}

fn not_object(found: &'static str) -> Tags {
    Tags(Err(Rejection {
        reason: RejectReason::BadField,
        detail: format!("`tags` must be an object, got {found}"),
    }))
}

/// Skips the rest of an array; "an array".
fn drain<'de, A: SeqAccess<'de>>(mut seq: A) -> Result<&'static str, A::Error> {
    while seq.next_element::<IgnoredAny>()?.is_some() {}
    Ok("an array")
}

impl<'de> Deserialize<'de> for Part {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> Visitor<'de> for Visit {
            type Value = Part;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Part, A::Error> {
                let mut names = Vec::with_capacity(seq.size_hint().unwrap_or(2));
                let mut bad = None;
                while let Some(item) = seq.next_element::<Item>()? {
                    match item.0 {
                        Ok(name) if bad.is_none() => names.push(name),
                        Ok(_) => {}
                        Err(found) => {
                            bad.get_or_insert(found);
                        }
                    }
                }
                Ok(Part(match bad {
                    None => Ok(names),
                    Some(found) => Err(PartError::BadItem(found)),
                }))
            }
            fn visit_unit<E>(self) -> Result<Part, E> {
                Ok(Part(Ok(Vec::new())))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Part, A::Error> {
                Ok(Part(Err(PartError::NotArray(drain_map(map)?))))
            }
            fn visit_bool<E>(self, _: bool) -> Result<Part, E> {
                Ok(Part(Err(PartError::NotArray("a boolean"))))
            }
            fn visit_i64<E>(self, _: i64) -> Result<Part, E> {
                Ok(Part(Err(PartError::NotArray("a number"))))
            }
            fn visit_u64<E>(self, _: u64) -> Result<Part, E> {
                Ok(Part(Err(PartError::NotArray("a number"))))
            }
            fn visit_f64<E>(self, _: f64) -> Result<Part, E> {
                Ok(Part(Err(PartError::NotArray("a number"))))
            }
            fn visit_str<E>(self, _: &str) -> Result<Part, E> {
                Ok(Part(Err(PartError::NotArray("a string"))))
            }
        }
        d.deserialize_any(Visit)
    }
}

/// Skips the rest of an object; "an object".
fn drain_map<'de, A: MapAccess<'de>>(mut map: A) -> Result<&'static str, A::Error> {
    while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
    Ok("an object")
}

/// One element of a tag list: its text, or the JSON type it has instead.
struct Item(Result<SmallStr, &'static str>);

impl<'de> Deserialize<'de> for Item {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> Visitor<'de> for Visit {
            type Value = Item;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_str<E>(self, v: &str) -> Result<Item, E> {
                Ok(Item(Ok(SmallStr::new(v))))
            }
            fn visit_string<E>(self, v: String) -> Result<Item, E> {
                Ok(Item(Ok(SmallStr::from(v))))
            }
            fn visit_unit<E>(self) -> Result<Item, E> {
                Ok(Item(Err("null")))
            }
            fn visit_bool<E>(self, _: bool) -> Result<Item, E> {
                Ok(Item(Err("a boolean")))
            }
            fn visit_i64<E>(self, _: i64) -> Result<Item, E> {
                Ok(Item(Err("a number")))
            }
            fn visit_u64<E>(self, _: u64) -> Result<Item, E> {
                Ok(Item(Err("a number")))
            }
            fn visit_f64<E>(self, _: f64) -> Result<Item, E> {
                Ok(Item(Err("a number")))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Item, A::Error> {
                Ok(Item(Err(drain(seq)?)))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Item, A::Error> {
                Ok(Item(Err(drain_map(map)?)))
            }
        }
        d.deserialize_any(Visit)
    }
}

/// A track event's `properties` as the message holds them: the JSON text of an object, borrowed
/// from the message while it is decoded.
pub struct RawProperties<'a>(&'a str);

impl<'a> RawProperties<'a> {
    /// `{}`, with any whitespace.
    pub fn is_empty(&self) -> bool {
        let text = self.0.trim();
        text.len() >= 2 && text[1..text.len() - 1].trim().is_empty()
    }

    /// Kept beyond the message's decoding: a share of `payload` when the text lies within it
    /// (no copy), else a copy.
    pub fn keep(self, payload: Option<&Bytes>) -> Properties {
        let text = self.0.as_bytes();
        let span = text.as_ptr_range();
        let within = payload.filter(|p| {
            let buffer = p.as_ptr_range();
            buffer.start <= span.start && span.end <= buffer.end
        });
        Properties(match within {
            Some(p) => p.slice_ref(text),
            None => Bytes::copy_from_slice(text),
        })
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for RawProperties<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = <&'de RawValue>::deserialize(d)?;
        if raw.get().trim_start().starts_with('{') {
            Ok(RawProperties(raw.get()))
        } else {
            Err(serde::de::Error::invalid_type(
                serde::de::Unexpected::Other("a JSON value that is not an object"),
                &"an object",
            ))
        }
    }
}

/// A track event's `properties`: the JSON text of an object, checked as such while the
/// message was decoded and parsed only when a template reads it. It shares the record's
/// bytes where the decoder had them (`event::decode_record`).
#[derive(Debug, Clone)]
pub struct Properties(Bytes);

impl Properties {
    /// The properties of `map` (tests and other producers of events).
    pub fn from_map(map: &Map<String, Value>) -> Option<Properties> {
        serde_json::to_vec(map)
            .ok()
            .map(|text| Properties(Bytes::from(text)))
    }

    /// The object. Its text was read as a JSON object, so it parses.
    pub fn to_map(&self) -> Map<String, Value> {
        serde_json::from_slice(&self.0).unwrap_or_default()
    }

    /// The JSON text.
    pub fn text(&self) -> &[u8] {
        &self.0
    }
}

impl PartialEq for Properties {
    fn eq(&self, other: &Self) -> bool {
        self.to_map() == other.to_map()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn traits(json: &str) -> Vec<(SmallStr, Option<TraitValue>)> {
        serde_json::from_str::<TraitChanges>(json).unwrap().0
    }

    fn tags(json: &str) -> Result<(Vec<String>, Vec<String>), String> {
        let strings = |v: Vec<SmallStr>| v.into_iter().map(String::from).collect();
        serde_json::from_str::<Tags>(json)
            .unwrap()
            .0
            .map(|(add, remove)| (strings(add), strings(remove)))
            .map_err(|r| r.detail)
    }

    #[test]
    fn traits_read_like_a_map_of_changes() {
        assert_eq!(
            traits(r#"{"a":1,"b":null,"c":"x"}"#),
            vec![
                ("a".into(), Some(TraitValue::from(Value::from(1)))),
                ("b".into(), None),
                ("c".into(), Some(TraitValue::from(Value::from("x"))))
            ]
        );
        // A repeated key: its first place, its last value.
        assert_eq!(
            traits(r#"{"a":1,"b":2,"a":null,"c":3,"a":4}"#),
            vec![
                ("a".into(), Some(TraitValue::from(Value::from(4)))),
                ("b".into(), Some(TraitValue::from(Value::from(2)))),
                ("c".into(), Some(TraitValue::from(Value::from(3))))
            ]
        );
        assert!(serde_json::from_str::<TraitChanges>("[1]").is_err());
    }

    #[test]
    fn properties_are_an_object_kept_as_text() {
        let raw = |json: &'static str| serde_json::from_str::<RawProperties<'static>>(json);
        let text = r#"{"n": 1, "a": {"b": [true]}}"#;
        let p = raw(text).unwrap();
        assert!(!p.is_empty());
        let p = p.keep(None);
        assert_eq!(
            Value::Object(p.to_map()),
            serde_json::json!({"n": 1, "a": {"b": [true]}})
        );
        assert!(raw(" { \n } ").unwrap().is_empty());
        for other in ["[1]", "1", r#""x""#, "true"] {
            assert!(raw(other).is_err(), "{other}");
        }
        assert_eq!(Properties::from_map(&p.to_map()), Some(p));
    }

    #[test]
    fn kept_properties_share_the_message_they_lie_in_and_copy_otherwise() {
        let message = Bytes::from_static(br#"{"properties":{"n":1}}"#);
        let text = std::str::from_utf8(&message[14..21]).unwrap();
        let shared = RawProperties(text).keep(Some(&message));
        assert_eq!(shared.text(), br#"{"n":1}"#);
        assert_eq!(shared.text().as_ptr(), message[14..].as_ptr(), "no copy");
        let elsewhere = Bytes::from_static(b"{}");
        let copied = RawProperties(text).keep(Some(&elsewhere));
        assert_eq!(copied.text(), br#"{"n":1}"#);
        assert_ne!(copied.text().as_ptr(), message[14..].as_ptr());
        assert_eq!(copied, shared);
    }

    #[test]
    fn tags_name_what_is_wrong() {
        let ok = |a: &[&str], r: &[&str]| {
            Ok((
                a.iter().map(|s| s.to_string()).collect(),
                r.iter().map(|s| s.to_string()).collect(),
            ))
        };
        assert_eq!(
            tags(r#"{"add":["a","b"],"remove":["c"]}"#),
            ok(&["a", "b"], &["c"])
        );
        assert_eq!(tags(r#"{"add":null,"x":[1]}"#), ok(&[], &[]));
        assert_eq!(tags("null"), ok(&[], &[]));
        assert_eq!(tags(r#"{"add":[1],"add":["z"]}"#), ok(&["z"], &[]));
        assert_eq!(
            tags(r#"["a"]"#),
            Err("`tags` must be an object, got an array".into())
        );
        assert_eq!(
            tags("7"),
            Err("`tags` must be an object, got a number".into())
        );
        assert_eq!(
            tags(r#"{"add":["a",{"b":1},2]}"#),
            Err("`tags.add` must hold strings, got an object".into())
        );
        assert_eq!(
            tags(r#"{"add":["a"],"remove":"x"}"#),
            Err("`tags.remove` must be an array, got a string".into())
        );
        assert_eq!(
            tags(r#"{"add":[null]}"#),
            Err("`tags.add` must hold strings, got null".into())
        );
    }
}
