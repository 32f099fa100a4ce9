//! Decoding and validating Segment-shaped input messages (REFERENCE.md §2).
//!
//! The fast path deserialises straight into borrowed fields; only when serde reports a
//! type error do we re-parse as a generic JSON value to name the offending field, so
//! valid traffic pays nothing for precise error messages.

use std::borrow::Cow;
use std::fmt;

use bytes::Bytes;
use serde::Deserialize;
use serde_json::{Map, Value};

pub use super::event_fields::Properties;
use super::event_fields::{RawProperties, Tags, TraitChanges};
use super::inline_str::SmallStr;
use super::json_str::{opt_cow, Str};
use super::trait_value::TraitValue;

/// Maximum length of `messageId` and `userId`, in characters.
pub const MAX_ID_CHARS: usize = 128;
/// Maximum length of a track event name, in characters.
pub const MAX_EVENT_NAME_CHARS: usize = 64;

/// A validated input message.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub message_id: SmallStr,
    /// The user's key: `userId`, else `anonymousId` (the `users` `_id`).
    pub user_id: SmallStr,
    /// Event time, milliseconds since the Unix epoch (BSON dates have millisecond precision).
    pub timestamp_ms: i64,
    pub kind: EventKind,
}

#[derive(Debug, Clone, PartialEq)]
pub enum EventKind {
    Identify {
        /// `Some(v)` sets the trait, `None` (JSON null) removes it.
        traits: Vec<(SmallStr, Option<TraitValue>)>,
        tags_add: Vec<SmallStr>,
        tags_remove: Vec<SmallStr>,
    },
    /// `track`, and `page` / `screen` as the events [`PAGE_VIEWED`] / [`SCREEN_VIEWED`].
    Track {
        event: SmallStr,
        /// The event's `properties` (templates read them as `event.properties`), when it has
        /// any; not aggregated.
        properties: Option<Properties>,
    },
    /// `group`: the traits of one group the user belongs to (`users.groups.<group_id>`).
    Group {
        group_id: String,
        /// `Some(v)` sets the group trait, `None` (JSON null) removes it.
        traits: Vec<(SmallStr, Option<TraitValue>)>,
    },
    /// `alias`: the profile of `previous_id` is merged into this user's (ARCHITECTURE.md,
    /// "Identity merge"); it changes no profile by itself.
    Alias { previous_id: String },
}

/// The event a `page` message counts as.
pub const PAGE_VIEWED: &str = "page_viewed";
/// The event a `screen` message counts as.
pub const SCREEN_VIEWED: &str = "screen_viewed";

/// Why a message was rejected; the `code` is the `reason` label of
/// `herald_events_invalid_total` and the prefix of the dead letter's `herald-error` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RejectReason {
    TooLarge,
    NotUtf8,
    NotJson,
    NotObject,
    MissingField,
    BadField,
    UnknownType,
    BadTimestamp,
    BadEventName,
}

impl RejectReason {
    pub const ALL: [RejectReason; 9] = [
        RejectReason::TooLarge,
        RejectReason::NotUtf8,
        RejectReason::NotJson,
        RejectReason::NotObject,
        RejectReason::MissingField,
        RejectReason::BadField,
        RejectReason::UnknownType,
        RejectReason::BadTimestamp,
        RejectReason::BadEventName,
    ];

    pub fn code(self) -> &'static str {
        match self {
            RejectReason::TooLarge => "too_large",
            RejectReason::NotUtf8 => "not_utf8",
            RejectReason::NotJson => "not_json",
            RejectReason::NotObject => "not_object",
            RejectReason::MissingField => "missing_field",
            RejectReason::BadField => "bad_field",
            RejectReason::UnknownType => "unknown_type",
            RejectReason::BadTimestamp => "bad_timestamp",
            RejectReason::BadEventName => "bad_event_name",
        }
    }
}

/// A rejected message: the reason and a human-readable detail.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {detail}", reason.code())]
pub struct Rejection {
    pub reason: RejectReason,
    pub detail: String,
}

impl Rejection {
    fn new(reason: RejectReason, detail: impl Into<String>) -> Self {
        Rejection {
            reason,
            detail: detail.into(),
        }
    }
}

#[derive(Deserialize)]
struct RawEvent<'a> {
    #[serde(rename = "messageId", default, borrow, deserialize_with = "opt_cow")]
    message_id: Option<Cow<'a, str>>,
    #[serde(rename = "type", default, borrow, deserialize_with = "opt_cow")]
    kind: Option<Cow<'a, str>>,
    #[serde(rename = "userId", default, borrow, deserialize_with = "opt_cow")]
    user_id: Option<Cow<'a, str>>,
    #[serde(rename = "anonymousId", default, borrow, deserialize_with = "opt_cow")]
    anonymous_id: Option<Cow<'a, str>>,
    #[serde(rename = "groupId", default, borrow, deserialize_with = "opt_cow")]
    group_id: Option<Cow<'a, str>>,
    #[serde(rename = "previousId", default, borrow, deserialize_with = "opt_cow")]
    previous_id: Option<Cow<'a, str>>,
    #[serde(default, borrow, deserialize_with = "opt_cow")]
    timestamp: Option<Cow<'a, str>>,
    #[serde(default, borrow, deserialize_with = "opt_cow")]
    event: Option<Cow<'a, str>>,
    #[serde(default)]
    traits: Option<TraitChanges>,
    #[serde(default)]
    tags: Tags,
    #[serde(default, borrow)]
    properties: Option<RawProperties<'a>>,
    /// Only `context.traits` is read: RudderStack's libraries send an `identify`'s traits there
    /// and not at the top level.
    #[serde(default)]
    context: ContextTraits,
}

/// `context.traits` when `context` is an object holding a `traits` object; anything else in
/// (or instead of) `context` is skipped without being built, and never rejects the message.
#[derive(Default)]
struct ContextTraits(Option<Map<String, Value>>);

impl<'de> Deserialize<'de> for ContextTraits {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = ContextTraits;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Self::Value, A::Error> {
                let mut traits = None;
                while let Some(key) = map.next_key::<Str<'de>>()? {
                    if &*key == "traits" {
                        if let Value::Object(t) = map.next_value::<Value>()? {
                            traits = Some(t);
                        }
                    } else {
                        map.next_value::<serde::de::IgnoredAny>()?;
                    }
                }
                Ok(ContextTraits(traits))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Self::Value, A::Error> {
                while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
                Ok(ContextTraits(None))
            }
            fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
                Ok(ContextTraits(None))
            }
            fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
                Ok(ContextTraits(None))
            }
            fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
                Ok(ContextTraits(None))
            }
            fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
                Ok(ContextTraits(None))
            }
            fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
                Ok(ContextTraits(None))
            }
            fn visit_unit<E>(self) -> Result<Self::Value, E> {
                Ok(ContextTraits(None))
            }
        }
        d.deserialize_any(Visit)
    }
}

/// Decodes one raw message. `max_bytes` is `limits.max_message_bytes`.
pub fn decode(bytes: &[u8], max_bytes: usize) -> Result<Event, Rejection> {
    decode_within(bytes, None, max_bytes)
}

/// [`decode`] for a record's payload: the event's `properties` share its bytes rather than
/// copying them.
pub fn decode_record(payload: &Bytes, max_bytes: usize) -> Result<Event, Rejection> {
    decode_within(payload, Some(payload), max_bytes)
}

fn decode_within(
    bytes: &[u8],
    payload: Option<&Bytes>,
    max_bytes: usize,
) -> Result<Event, Rejection> {
    if bytes.len() > max_bytes {
        return Err(Rejection::new(
            RejectReason::TooLarge,
            format!("message is {} bytes, limit is {max_bytes}", bytes.len()),
        ));
    }
    let text = std::str::from_utf8(bytes).map_err(|e| {
        Rejection::new(
            RejectReason::NotUtf8,
            format!("invalid UTF-8 at byte {}", e.valid_up_to()),
        )
    })?;
    // serde's derived struct visitor also accepts a JSON array (fields by position).
    if !text.trim_start().starts_with('{') {
        return Err(match serde_json::from_str::<Value>(text) {
            Ok(other) => Rejection::new(
                RejectReason::NotObject,
                format!("expected a JSON object, got {}", json_type(&other)),
            ),
            Err(e) => Rejection::new(RejectReason::NotJson, e.to_string()),
        });
    }
    match serde_json::from_str::<RawEvent<'_>>(text) {
        Ok(raw) => validate(raw, payload),
        Err(err) => Err(classify_serde_error(text, &err)),
    }
}

fn classify_serde_error(text: &str, err: &serde_json::Error) -> Rejection {
    use serde_json::error::Category;
    match err.classify() {
        Category::Syntax | Category::Eof | Category::Io => {
            Rejection::new(RejectReason::NotJson, err.to_string())
        }
        Category::Data => match serde_json::from_str::<Value>(text) {
            Ok(Value::Object(map)) => Rejection::new(RejectReason::BadField, name_bad_field(&map)),
            Ok(other) => Rejection::new(
                RejectReason::NotObject,
                format!("expected a JSON object, got {}", json_type(&other)),
            ),
            Err(e) => Rejection::new(RejectReason::NotJson, e.to_string()),
        },
    }
}

/// Finds which known field has the wrong JSON type (slow path, invalid messages only).
fn name_bad_field(map: &Map<String, Value>) -> String {
    let expect_string = [
        "messageId",
        "type",
        "userId",
        "anonymousId",
        "groupId",
        "timestamp",
        "event",
    ];
    for field in expect_string {
        if let Some(v) = map.get(field) {
            if !v.is_string() && !v.is_null() {
                return format!("`{field}` must be a string, got {}", json_type(v));
            }
        }
    }
    for field in ["traits", "properties"] {
        if let Some(v) = map.get(field) {
            if !v.is_object() && !v.is_null() {
                return format!("`{field}` must be an object, got {}", json_type(v));
            }
        }
    }
    if let Some(tags) = map.get("tags") {
        match tags {
            Value::Object(t) => {
                for part in ["add", "remove"] {
                    match t.get(part) {
                        None | Some(Value::Null) => {}
                        Some(Value::Array(items)) => {
                            if let Some(bad) = items.iter().find(|i| !i.is_string()) {
                                return format!(
                                    "`tags.{part}` must hold strings, got {}",
                                    json_type(bad)
                                );
                            }
                        }
                        Some(other) => {
                            return format!(
                                "`tags.{part}` must be an array, got {}",
                                json_type(other)
                            )
                        }
                    }
                }
            }
            Value::Null => {}
            other => return format!("`tags` must be an object, got {}", json_type(other)),
        }
    }
    "a field has the wrong type".to_string()
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn required<'a>(field: &'static str, v: Option<Cow<'a, str>>) -> Result<Cow<'a, str>, Rejection> {
    v.ok_or_else(|| Rejection::new(RejectReason::MissingField, format!("`{field}` is required")))
}

fn check_id<'a, T: From<Cow<'a, str>>>(
    field: &'static str,
    v: Cow<'a, str>,
) -> Result<T, Rejection> {
    // A string has no more characters than bytes: only one longer than the limit in bytes
    // needs its characters counted.
    let fits = !v.is_empty() && (v.len() <= MAX_ID_CHARS || v.chars().count() <= MAX_ID_CHARS);
    if !fits {
        let n = v.chars().count();
        return Err(Rejection::new(
            RejectReason::BadField,
            format!("`{field}` must be 1-{MAX_ID_CHARS} characters, got {n}"),
        ));
    }
    Ok(T::from(v))
}

/// The first control character (Unicode `Cc`: U+0000–U+001F, U+007F–U+009F) of `s`. A
/// string none of whose bytes can start one (below 0x20, 0x7F, or 0xC2, the lead byte of
/// U+0080–U+00BF) has none, and most ids are such strings: they skip decoding characters.
fn first_control(s: &str) -> Option<char> {
    if s.bytes().all(|b| b >= 0x20 && b != 0x7f && b != 0xc2) {
        return None;
    }
    s.chars().find(|c| c.is_control())
}

/// `^[A-Za-z0-9_ -]{1,64}$`
pub fn is_valid_event_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_EVENT_NAME_CHARS
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b' ' || b == b'-')
}

/// Parses an RFC 3339 timestamp into milliseconds since the epoch.
pub fn parse_timestamp(text: &str) -> Option<i64> {
    super::timestamp::utc_millis(text).or_else(|| {
        chrono::DateTime::parse_from_rfc3339(text)
            .ok()
            .map(|t| t.timestamp_millis())
    })
}

fn validate(raw: RawEvent<'_>, payload: Option<&Bytes>) -> Result<Event, Rejection> {
    let message_id: SmallStr = check_id("messageId", required("messageId", raw.message_id)?)?;
    if let Some(c) = first_control(&message_id) {
        // It becomes part of the `Idempotency-Key` header, where a control character is
        // not allowed: refused here rather than failing every send of its message.
        return Err(Rejection::new(
            RejectReason::BadField,
            format!(
                "`messageId` contains the control character U+{:04X}",
                c as u32
            ),
        ));
    }
    let kind = required("type", raw.kind)?;
    let user_id = match (raw.user_id, raw.anonymous_id) {
        (Some(user_id), _) => check_id("userId", user_id)?,
        (None, Some(anonymous_id)) => check_id("anonymousId", anonymous_id)?,
        (None, None) => {
            return Err(Rejection::new(
                RejectReason::MissingField,
                "`userId` or `anonymousId` is required",
            ))
        }
    };
    let ts_text = required("timestamp", raw.timestamp)?;
    let timestamp_ms = parse_timestamp(&ts_text).ok_or_else(|| {
        Rejection::new(
            RejectReason::BadTimestamp,
            format!("`timestamp` is not RFC 3339: {:?}", truncate(&ts_text, 64)),
        )
    })?;
    let (tags_add, tags_remove) = raw.tags.0?;
    let kind = match kind.as_ref() {
        "identify" => EventKind::Identify {
            traits: match (raw.traits, raw.context.0) {
                (Some(traits), _) => traits.0,
                (None, context) => trait_changes(context),
            },
            tags_add,
            tags_remove,
        },
        "track" => {
            let event = required("event", raw.event)?;
            if !is_valid_event_name(&event) {
                return Err(Rejection::new(
                    RejectReason::BadEventName,
                    format!(
                        "`event` must match ^[A-Za-z0-9_ -]{{1,64}}$, got {:?}",
                        truncate(&event, 80)
                    ),
                ));
            }
            EventKind::Track {
                event: SmallStr::from(event),
                properties: raw
                    .properties
                    .filter(|p| !p.is_empty())
                    .map(|p| p.keep(payload)),
            }
        }
        // `name` and `properties` are validated by type only: the view counts, not what.
        "page" => EventKind::Track {
            event: SmallStr::new(PAGE_VIEWED),
            properties: None,
        },
        "screen" => EventKind::Track {
            event: SmallStr::new(SCREEN_VIEWED),
            properties: None,
        },
        "group" => EventKind::Group {
            group_id: check_id("groupId", required("groupId", raw.group_id)?)?,
            traits: raw.traits.map(|t| t.0).unwrap_or_default(),
        },
        "alias" => EventKind::Alias {
            previous_id: check_id("previousId", required("previousId", raw.previous_id)?)?,
        },
        other => {
            return Err(Rejection::new(
                RejectReason::UnknownType,
                format!(
                    "`type` must be identify, track, page, screen, group or alias, got {:?}",
                    truncate(other, 64)
                ),
            ))
        }
    };
    Ok(Event {
        message_id,
        user_id,
        timestamp_ms,
        kind,
    })
}

/// `traits` as changes: a non-null value sets, `null` removes.
fn trait_changes(traits: Option<Map<String, Value>>) -> Vec<(SmallStr, Option<TraitValue>)> {
    traits
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| {
            (
                SmallStr::from(k),
                (!v.is_null()).then(|| TraitValue::from(v)),
            )
        })
        .collect()
}

fn truncate(s: &str, max_chars: usize) -> Cow<'_, str> {
    match s.char_indices().nth(max_chars) {
        None => Cow::Borrowed(s),
        Some((i, _)) => Cow::Owned(format!("{}…", &s[..i])),
    }
}

impl fmt::Display for RejectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: usize = 1 << 20;

    fn reason(bytes: &[u8]) -> RejectReason {
        decode(bytes, MAX).unwrap_err().reason
    }

    #[test]
    fn an_identify_without_traits_takes_them_from_context() {
        let at = r#""messageId":"m","userId":"u","timestamp":"2026-11-23T10:00:00Z""#;
        let traits_of = |body: String| match decode(body.as_bytes(), MAX).unwrap().kind {
            EventKind::Identify { traits, .. } => traits,
            other => panic!("{other:?}"),
        };
        // RudderStack's shape: traits only in context.
        let t = traits_of(format!(
            r#"{{{at},"type":"identify","context":{{"library":{{"name":"x"}},"traits":{{"plan":"pro"}}}}}}"#
        ));
        assert_eq!(t, vec![("plan".into(), Some(TraitValue::string("pro")))]);
        // Top-level traits win; context.traits is then not applied.
        let t = traits_of(format!(
            r#"{{{at},"type":"identify","traits":{{"a":1}},"context":{{"traits":{{"b":2}}}}}}"#
        ));
        assert_eq!(t, vec![("a".into(), Some(TraitValue::PosInt(1)))]);
        // A context of any other shape is ignored, never a rejection.
        for context in [r#""text""#, "[1,2]", "null", "7", r#"{"traits":[1]}"#] {
            let t = traits_of(format!(r#"{{{at},"type":"identify","context":{context}}}"#));
            assert!(t.is_empty(), "{context}");
        }
        // A track's context.traits changes no trait.
        let e = decode(
            format!(r#"{{{at},"type":"track","event":"e","context":{{"traits":{{"b":2}}}}}}"#)
                .as_bytes(),
            MAX,
        )
        .unwrap();
        assert!(matches!(e.kind, EventKind::Track { .. }));
    }

    #[test]
    fn decodes_identify_with_traits_and_tags() {
        let e = decode(
            br#"{"messageId":"m-1","type":"identify","userId":"u-42","timestamp":"2026-11-23T10:00:00Z",
                "traits":{"email":"a@example.com","plan":null},"tags":{"add":["vip"],"remove":["trial"]}}"#,
            MAX,
        )
        .unwrap();
        assert_eq!(e.user_id, "u-42");
        assert_eq!(e.timestamp_ms, 1_795_428_000_000);
        match e.kind {
            EventKind::Identify {
                traits,
                tags_add,
                tags_remove,
            } => {
                assert!(traits.contains(&("plan".into(), None)));
                assert!(
                    traits.contains(&("email".into(), Some(TraitValue::string("a@example.com"))))
                );
                assert_eq!(tags_add, vec!["vip"]);
                assert_eq!(tags_remove, vec!["trial"]);
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn decodes_track_with_escaped_strings() {
        let e = decode(
            br#"{"messageId":"m\u002d2","type":"track","userId":"u-42","timestamp":"2026-11-23T10:00:01.250+01:00","event":"signed_up","properties":{"source":"web"}}"#,
            MAX,
        )
        .unwrap();
        assert_eq!(e.message_id, "m-2");
        assert_eq!(e.timestamp_ms, 1_795_424_401_250);
        assert_eq!(
            e.kind,
            EventKind::Track {
                event: "signed_up".into(),
                properties: Properties::from_map(
                    serde_json::json!({"source": "web"}).as_object().unwrap()
                ),
            }
        );
    }

    proptest::proptest! {
        #[test]
        fn the_control_character_scan_agrees_with_char_is_control(s in "\\PC*|(?s).{0,40}") {
            proptest::prop_assert_eq!(first_control(&s), s.chars().find(|c| c.is_control()));
        }
    }

    #[test]
    fn control_characters_are_found_in_every_range() {
        for c in ['\u{0}', '\u{1f}', '\u{7f}', '\u{80}', '\u{9f}'] {
            assert_eq!(first_control(&format!("ab£{c}é")), Some(c));
        }
        assert_eq!(first_control("ab£ ¿é\u{a0}"), None);
    }

    #[test]
    fn a_records_properties_share_its_payload() {
        let payload = Bytes::from_static(
            br#"{"messageId":"m","type":"track","userId":"u","timestamp":"2026-11-23T10:00:00Z","event":"e","properties":{"n":1}}"#,
        );
        let EventKind::Track {
            properties: Some(p),
            ..
        } = decode_record(&payload, MAX).unwrap().kind
        else {
            panic!("a track event with properties");
        };
        assert_eq!(p.text(), br#"{"n":1}"#);
        let within = payload.as_ptr_range();
        assert!(within.contains(&p.text().as_ptr()), "a share, not a copy");
        assert_eq!(decode(&payload, MAX), decode_record(&payload, MAX));
    }

    #[test]
    fn every_reject_reason_is_reachable() {
        let base = r#""messageId":"m","userId":"u","timestamp":"2026-11-23T10:00:00Z""#;
        assert_eq!(
            decode(&[b' '; 20], 10).unwrap_err().reason,
            RejectReason::TooLarge
        );
        assert_eq!(reason(&[0xff, 0xfe]), RejectReason::NotUtf8);
        assert_eq!(reason(b"{not json"), RejectReason::NotJson);
        assert_eq!(reason(b"[1,2]"), RejectReason::NotObject);
        assert_eq!(
            reason(
                br#"{"type":"track","userId":"u","timestamp":"2026-11-23T10:00:00Z","event":"x"}"#
            ),
            RejectReason::MissingField
        );
        assert_eq!(
            reason(format!(r#"{{{base},"type":"track"}}"#).as_bytes()),
            RejectReason::MissingField
        );
        assert_eq!(
            reason(br#"{"messageId":5,"type":"track","userId":"u","timestamp":"2026-11-23T10:00:00Z","event":"x"}"#),
            RejectReason::BadField
        );
        assert_eq!(
            reason(format!(r#"{{{base},"type":"identify","traits":[1]}}"#).as_bytes()),
            RejectReason::BadField
        );
        assert_eq!(
            reason(format!(r#"{{{base},"type":"pageview"}}"#).as_bytes()),
            RejectReason::UnknownType
        );
        assert_eq!(
            reason(format!(r#"{{{base},"type":"alias"}}"#).as_bytes()),
            RejectReason::MissingField
        );
        assert_eq!(
            reason(format!(r#"{{{base},"type":"alias","previousId":""}}"#).as_bytes()),
            RejectReason::BadField
        );
        assert_eq!(
            reason(br#"{"messageId":"m","type":"track","userId":"u","timestamp":"yesterday","event":"x"}"#),
            RejectReason::BadTimestamp
        );
        assert_eq!(
            reason(format!(r#"{{{base},"type":"track","event":"bad/name"}}"#).as_bytes()),
            RejectReason::BadEventName
        );
    }

    #[test]
    fn segment_types_and_the_anonymous_key() {
        let at = r#""messageId":"m","timestamp":"2026-11-23T10:00:00Z""#;
        let page = decode(
            format!(r#"{{{at},"type":"page","anonymousId":"a-1","name":"Home","properties":{{"path":"/"}}}}"#)
                .as_bytes(),
            MAX,
        )
        .unwrap();
        assert_eq!(page.user_id, "a-1");
        assert_eq!(
            page.kind,
            EventKind::Track {
                event: PAGE_VIEWED.into(),
                properties: None,
            }
        );
        let screen = decode(
            format!(r#"{{{at},"type":"screen","userId":"u","anonymousId":"a-1"}}"#).as_bytes(),
            MAX,
        )
        .unwrap();
        assert_eq!(screen.user_id, "u", "userId wins over anonymousId");
        assert_eq!(
            screen.kind,
            EventKind::Track {
                event: SCREEN_VIEWED.into(),
                properties: None,
            }
        );
        let group = decode(
            format!(r#"{{{at},"type":"group","userId":"u","groupId":"g-1","traits":{{"name":"Acme","plan":null}}}}"#)
                .as_bytes(),
            MAX,
        )
        .unwrap();
        assert_eq!(
            group.kind,
            EventKind::Group {
                group_id: "g-1".into(),
                traits: vec![
                    ("name".into(), Some(TraitValue::string("Acme"))),
                    ("plan".into(), None)
                ],
            }
        );
        let missing_group = decode(
            format!(r#"{{{at},"type":"group","userId":"u"}}"#).as_bytes(),
            MAX,
        )
        .unwrap_err();
        assert_eq!(missing_group.reason, RejectReason::MissingField);
        assert!(
            missing_group.detail.contains("groupId"),
            "{}",
            missing_group.detail
        );
        let nobody = decode(format!(r#"{{{at},"type":"page"}}"#).as_bytes(), MAX).unwrap_err();
        assert_eq!(nobody.reason, RejectReason::MissingField);
        assert!(nobody.detail.contains("anonymousId"), "{}", nobody.detail);
        let alias = decode(
            format!(r#"{{{at},"type":"alias","userId":"u","previousId":"a-1"}}"#).as_bytes(),
            MAX,
        )
        .unwrap();
        assert_eq!(alias.user_id, "u");
        assert_eq!(
            alias.kind,
            EventKind::Alias {
                previous_id: "a-1".into()
            }
        );
        let bad_anonymous = decode(
            format!(r#"{{{at},"type":"page","anonymousId":7}}"#).as_bytes(),
            MAX,
        )
        .unwrap_err();
        assert_eq!(bad_anonymous.reason, RejectReason::BadField);
        assert!(
            bad_anonymous.detail.contains("anonymousId"),
            "{}",
            bad_anonymous.detail
        );
    }

    #[test]
    fn id_length_limits() {
        let long = "x".repeat(129);
        let msg = format!(
            r#"{{"messageId":"{long}","type":"track","userId":"u","timestamp":"2026-11-23T10:00:00Z","event":"e"}}"#
        );
        assert_eq!(reason(msg.as_bytes()), RejectReason::BadField);
        let empty = r#"{"messageId":"m","type":"track","userId":"","timestamp":"2026-11-23T10:00:00Z","event":"e"}"#;
        assert_eq!(reason(empty.as_bytes()), RejectReason::BadField);
    }

    #[test]
    fn message_ids_with_control_characters_are_refused() {
        for id in [r"m\n1", r"m\u0000", r"m\u007f", r"\u0085m"] {
            let msg = format!(
                r#"{{"messageId":"{id}","type":"track","userId":"u","timestamp":"2026-11-23T10:00:00Z","event":"e"}}"#
            );
            let r = decode(msg.as_bytes(), 1 << 20).unwrap_err();
            assert_eq!(r.reason, RejectReason::BadField, "{id}");
            assert!(r.detail.contains("control character"), "{id}: {}", r.detail);
        }
        let unicode = r#"{"messageId":"m-é-✓","type":"track","userId":"u","timestamp":"2026-11-23T10:00:00Z","event":"e"}"#;
        assert!(decode(unicode.as_bytes(), 1 << 20).is_ok());
    }

    #[test]
    fn bad_field_names_the_field() {
        let r = decode(
            br#"{"messageId":"m","type":"identify","userId":"u","timestamp":"2026-11-23T10:00:00Z","tags":{"add":[1]}}"#,
            MAX,
        )
        .unwrap_err();
        assert_eq!(r.reason, RejectReason::BadField);
        assert!(r.detail.contains("tags.add"), "{}", r.detail);
    }

    #[test]
    fn event_names() {
        assert!(is_valid_event_name("signed_up"));
        assert!(is_valid_event_name("Order Completed-2"));
        assert!(!is_valid_event_name(""));
        assert!(!is_valid_event_name(&"a".repeat(65)));
        assert!(!is_valid_event_name("é"));
    }
}
