//! The `users` collection: each user's document is its profile (the fields readers use) and
//! Herald's bookkeeping under `_herald` — `v` the version, `w` the token of the flush that
//! wrote it, `s` the schema, `pos` the last applied offset per source partition, `seen` the
//! dedup window (16 bytes per entry, base64: a string, which every MongoDB-protocol server
//! stores, where BSON binary is not always supported), and for a user an alias named (schema
//! 4) `m` the ids it absorbed, `a` the merge under way into it, `h` the profile it handed
//! over when it was merged — written together in one version-filtered replacement: MongoDB is
//! the system of record, and the fence. A merged id's document is `{_id, merged_into}` and its
//! `_herald`, without profile fields.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use base64::Engine;
use futures::TryStreamExt;
use mongodb::bson::{doc, Bson, DateTime, Document};
use mongodb::Database;

use crate::domain::dedup::DedupWindow;
use crate::domain::identity::{Absorbing, Identity};
use crate::domain::profile::{NameMap, Profile};
use crate::domain::stored_state::{decode_seen, encode_seen};
use crate::domain::trait_value::TraitValue;
use crate::domain::user::{EventStats, UserProfile, UserState};
use crate::ports::{StoreError, StoredUser, UserSnapshot};

use super::{bson_i64, transient};

/// The `_herald` schema this release writes for a user with a part in merges (the newest it
/// reads).
pub const BOOKKEEPING_SCHEMA: i32 = 4;
/// The `_herald` schema of a user no alias named (the releases before merges read it).
const SCHEMA_WITHOUT_MERGES: i32 = 3;

fn date(ms: i64) -> Bson {
    Bson::DateTime(DateTime::from_millis(ms))
}

/// A trait's BSON value: strings and booleans directly, numbers and nested values as the
/// `bson` crate converts their JSON.
fn bson_trait(v: &TraitValue) -> Bson {
    match v {
        TraitValue::Null => Bson::Null,
        TraitValue::Bool(b) => Bson::Boolean(*b),
        TraitValue::Inline(_) | TraitValue::Shared(_) => {
            Bson::String(v.as_str().unwrap_or_default().to_string())
        }
        other => Bson::try_from(other.as_json().into_owned()).unwrap_or(Bson::Null),
    }
}

/// The profile fields of a `users` document (without `_id` and `_herald`).
pub fn profile_document(profile: &Profile, updated_at: i64) -> Document {
    let bson_traits = |traits: &NameMap<TraitValue>| -> Document {
        traits
            .iter()
            .map(|(k, v)| (k.to_string(), bson_trait(v)))
            .collect()
    };
    let events: Document = profile
        .events
        .iter()
        .map(|(name, s)| {
            (
                name.to_string(),
                Bson::Document(doc! {
                    "count": s.count,
                    "first_at": date(s.first_at),
                    "last_at": date(s.last_at),
                }),
            )
        })
        .collect();
    let mut document = doc! {
        "traits": bson_traits(&profile.traits),
        "tags": profile.tags.iter().map(str::to_string).collect::<Vec<String>>(),
        "event_count": profile.event_count,
        "events": events,
        "first_seen": profile.first_seen.get().map_or(Bson::Null, date),
        "last_seen": profile.last_seen.get().map_or(Bson::Null, date),
        "updated_at": date(updated_at),
    };
    // Only users in a group carry `groups`.
    if !profile.groups.is_empty() {
        let groups: Document = profile
            .groups
            .iter()
            .map(|(id, traits)| (id.to_string(), Bson::Document(bson_traits(traits))))
            .collect();
        document.insert("groups", groups);
    }
    document
}

/// The whole document a snapshot writes, written by flush `token`.
pub fn user_document(u: &UserSnapshot, token: u64, updated_at: i64) -> Document {
    // `_id` in the replacement too: some servers (nx-27017) otherwise give an upserted
    // document a fresh ObjectId instead of the query's `_id`.
    let mut d = doc! {"_id": &*u.user_id};
    let identity = u.identity.as_deref();
    match identity.and_then(|i| i.merged_into.as_deref()) {
        Some(into) => {
            d.insert("merged_into", into);
        }
        None => d.extend(profile_document(&u.profile, updated_at)),
    }
    let positions: Document = u
        .positions
        .iter()
        .map(|(p, o)| (p.to_string(), Bson::Int64(o as i64)))
        .collect();
    let mut herald = doc! {
        "v": u.version as i64,
        "w": token as i64,
        "s": if identity.is_some() { BOOKKEEPING_SCHEMA } else { SCHEMA_WITHOUT_MERGES },
        "pos": positions,
        "seen": base64::engine::general_purpose::STANDARD.encode(encode_seen(&u.seen)),
    };
    if let Some(i) = identity {
        if !i.absorbed.is_empty() {
            herald.insert("m", i.absorbed.clone());
        }
        if let Some(a) = &i.absorbing {
            herald.insert("a", doc! {"id": &a.id, "since": a.since_ms});
        }
        if let Some(h) = &i.handed {
            // The profile as JSON text: read back only by Herald, exactly as it was.
            herald.insert("h", serde_json::to_string(h).unwrap_or_default());
        }
    }
    d.insert("_herald", herald);
    d
}

/// The merge part `_herald` holds (schema 4), if any.
fn parse_identity(d: &Document, herald: &Document) -> Result<Option<Identity>, String> {
    let mut identity = Identity {
        merged_into: d.get_str("merged_into").ok().map(str::to_string),
        ..Identity::default()
    };
    if let Ok(m) = herald.get_array("m") {
        let mut ids = Vec::with_capacity(m.len());
        for id in m {
            match id.as_str() {
                Some(id) => ids.push(id.to_string()),
                None => return Err("the document's _herald.m holds a non-string".into()),
            }
        }
        ids.sort_unstable();
        ids.dedup();
        identity.absorbed = ids;
    }
    if let Ok(a) = herald.get_document("a") {
        let (Ok(id), Some(since_ms)) = (a.get_str("id"), a.get("since").and_then(bson_i64)) else {
            return Err("the document's _herald.a is not {id, since}".into());
        };
        identity.absorbing = Some(Absorbing {
            id: id.to_string(),
            since_ms,
        });
    }
    if let Ok(h) = herald.get_str("h") {
        identity.handed = Some(
            serde_json::from_str(h)
                .map_err(|e| format!("the document's _herald.h does not parse: {e}"))?,
        );
    }
    Ok((!identity.is_empty()).then_some(identity))
}

/// The filter a snapshot's write replaces: the user's document at the version the snapshot
/// descends from (`_herald.v` absent: a user never written, or a document written before
/// MongoDB held the bookkeeping).
pub fn fence(u: &UserSnapshot) -> Document {
    let expected = u.version.saturating_sub(1);
    let v = if expected == 0 {
        Bson::Null
    } else {
        Bson::Int64(expected as i64)
    };
    doc! {"_id": &*u.user_id, "_herald.v": v}
}

pub(super) fn ms(b: Option<&Bson>) -> Option<i64> {
    match b? {
        Bson::DateTime(t) => Some(t.timestamp_millis()),
        other => bson_i64(other),
    }
}

fn json_map(d: &Document) -> BTreeMap<String, serde_json::Value> {
    d.iter()
        .map(|(k, v)| (k.clone(), v.clone().into_relaxed_extjson()))
        .collect()
}

/// The profile a `users` document holds.
pub fn parse_profile(d: &Document) -> Profile {
    let events = d
        .get_document("events")
        .map(|e| {
            e.iter()
                .filter_map(|(k, v)| {
                    let s = v.as_document()?;
                    Some((
                        k.clone(),
                        EventStats {
                            count: s.get("count").and_then(bson_i64).unwrap_or(0),
                            first_at: ms(s.get("first_at"))?,
                            last_at: ms(s.get("last_at"))?,
                        },
                    ))
                })
                .collect()
        })
        .unwrap_or_default();
    let groups = d
        .get_document("groups")
        .map(|g| {
            g.iter()
                .filter_map(|(id, t)| Some((id.clone(), json_map(t.as_document()?))))
                .collect()
        })
        .unwrap_or_default();
    let view = UserProfile {
        traits: d.get_document("traits").map(json_map).unwrap_or_default(),
        tags: d
            .get_array("tags")
            .map(|a| {
                a.iter()
                    .filter_map(|t| t.as_str().map(str::to_string))
                    .collect::<BTreeSet<_>>()
            })
            .unwrap_or_default(),
        event_count: d.get("event_count").and_then(bson_i64).unwrap_or(0),
        events,
        first_seen: ms(d.get("first_seen")),
        last_seen: ms(d.get("last_seen")),
        groups,
    };
    Profile::from_view(&view)
}

/// What a stored `users` document says about its user.
pub fn parse_user(d: &Document) -> StoredUser {
    let Ok(herald) = d.get_document("_herald") else {
        return StoredUser::WithoutBookkeeping(parse_profile(d));
    };
    let schema = herald.get("s").and_then(bson_i64).unwrap_or(0);
    if schema > BOOKKEEPING_SCHEMA as i64 {
        return StoredUser::Unreadable(format!(
            "the document's bookkeeping has schema {schema}; this release reads up to {BOOKKEEPING_SCHEMA}"
        ));
    }
    let Some(version) = herald.get("v").and_then(bson_i64).filter(|v| *v > 0) else {
        return StoredUser::Unreadable("the document's _herald.v is not a positive integer".into());
    };
    let mut positions: Vec<(u32, u64)> = Vec::new();
    if let Ok(pos) = herald.get_document("pos") {
        for (p, o) in pos {
            match (p.parse::<u32>(), bson_i64(o)) {
                (Ok(p), Some(o)) if o >= 0 => positions.push((p, o as u64)),
                _ => {
                    return StoredUser::Unreadable(format!(
                        "the document's _herald.pos has an unreadable entry {p:?}"
                    ))
                }
            }
        }
    }
    let seen = match herald.get("seen") {
        None | Some(Bson::Null) => Vec::new(),
        Some(Bson::String(text)) => {
            let bytes = match base64::engine::general_purpose::STANDARD.decode(text) {
                Ok(b) => b,
                Err(e) => {
                    return StoredUser::Unreadable(format!(
                        "the document's _herald.seen is not base64: {e}"
                    ))
                }
            };
            match decode_seen(&bytes) {
                Ok(s) => s,
                Err(e) => return StoredUser::Unreadable(e.0),
            }
        }
        Some(_) => {
            return StoredUser::Unreadable("the document's _herald.seen is not a string".into())
        }
    };
    let identity = match parse_identity(d, herald) {
        Ok(i) => i.map(Box::new),
        Err(e) => return StoredUser::Unreadable(e),
    };
    let profile = if identity.as_ref().is_some_and(|i| i.merged_into.is_some()) {
        Profile::default()
    } else {
        parse_profile(d)
    };
    StoredUser::Found(UserState {
        version: version as u64,
        profile,
        positions: positions.into(),
        seen: DedupWindow::from_entries(seen),
        identity,
    })
}

/// Reads users' documents by `_id`, one query per chunk.
pub async fn load(db: &Database, users: &[Arc<str>]) -> Result<Vec<StoredUser>, StoreError> {
    let mut out = Vec::with_capacity(users.len());
    for chunk in users.chunks(1000) {
        let ids: Vec<&str> = chunk.iter().map(|u| &**u).collect();
        let docs: Vec<Document> = db
            .collection::<Document>("users")
            .find(doc! {"_id": {"$in": &ids}})
            .await
            .map_err(transient)?
            .try_collect()
            .await
            .map_err(transient)?;
        let mut by_id: std::collections::HashMap<String, Document> = docs
            .into_iter()
            .filter_map(|d| Some((d.get_str("_id").ok()?.to_string(), d)))
            .collect();
        for id in ids {
            out.push(match by_id.remove(id) {
                Some(d) => parse_user(&d),
                None => StoredUser::Absent,
            });
        }
    }
    Ok(out)
}
