//! The `users` collection: each user's document is its profile (the fields readers use) and
//! Herald's bookkeeping under `_herald` — `v` the version, `w` the token of the flush that
//! wrote it, `s` the schema, `pos` the last applied offset per source partition, `seen` the
//! dedup window (16 bytes per entry, base64: a string, which every MongoDB-protocol server
//! stores, where BSON binary is not always supported) — written together in one
//! version-filtered replacement: MongoDB is the system of record, and the fence.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use base64::Engine;
use futures::TryStreamExt;
use mongodb::bson::{doc, Bson, DateTime, Document};
use mongodb::Database;

use crate::domain::dedup::DedupWindow;
use crate::domain::profile::{NameMap, Profile};
use crate::domain::stored_state::{decode_seen, encode_seen};
use crate::domain::user::{EventStats, UserProfile, UserState};
use crate::ports::{StoreError, StoredUser, UserSnapshot};

use super::{bson_i64, transient};

/// The `_herald` schema this release writes.
pub const BOOKKEEPING_SCHEMA: i32 = 3;

fn date(ms: i64) -> Bson {
    Bson::DateTime(DateTime::from_millis(ms))
}

/// The profile fields of a `users` document (without `_id` and `_herald`).
pub fn profile_document(profile: &Profile, updated_at: i64) -> Document {
    let bson_traits = |traits: &NameMap<serde_json::Value>| -> Document {
        traits
            .iter()
            .map(|(k, v)| {
                (
                    k.to_string(),
                    Bson::try_from(v.clone()).unwrap_or(Bson::Null),
                )
            })
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
        "first_seen": profile.first_seen.map_or(Bson::Null, date),
        "last_seen": profile.last_seen.map_or(Bson::Null, date),
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
    d.extend(profile_document(&u.profile, updated_at));
    let positions: Document = u
        .positions
        .iter()
        .map(|(p, o)| (p.to_string(), Bson::Int64(*o as i64)))
        .collect();
    d.insert(
        "_herald",
        doc! {
            "v": u.version as i64,
            "w": token as i64,
            "s": BOOKKEEPING_SCHEMA,
            "pos": positions,
            "seen": base64::engine::general_purpose::STANDARD.encode(encode_seen(&u.seen)),
        },
    );
    d
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

fn ms(b: Option<&Bson>) -> Option<i64> {
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
    positions.sort_unstable();
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
    StoredUser::Found(UserState {
        version: version as u64,
        profile: parse_profile(d),
        positions,
        seen: DedupWindow::from_entries(seen),
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
