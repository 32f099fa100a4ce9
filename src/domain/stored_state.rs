//! The stored form of a user's state, with its schema version. The dedup window is stored
//! beside it (appended per write, never rewritten whole), so the blob holds the profile and
//! the positions only.
//!
//! Schemas: 1 (before fencing: `{user_id, profile, positions, seen: [[id, at]…]}`, no
//! `schema` field) and 2 (`{schema: 2, profile, positions}`). Older schemas load; a newer one,
//! or one that does not parse, is [`Unreadable`] (the caller quarantines the user).

use serde::{Deserialize, Serialize};

use super::dedup::DedupWindow;
use super::keys::message_fingerprint;
use super::profile::Profile;
use super::user::UserState;

/// The schema this release writes.
pub const SCHEMA: u32 = 2;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Unreadable(pub String);

#[derive(Serialize)]
struct Written<'a> {
    schema: u32,
    profile: &'a Profile,
    positions: &'a [(u32, u64)],
}

#[derive(Deserialize)]
struct Stored {
    /// Absent in schema 1.
    #[serde(default)]
    schema: Option<u32>,
    #[serde(default)]
    profile: Profile,
    #[serde(default)]
    positions: Vec<(u32, u64)>,
    /// Schema 1 kept the dedup window inline, as message ids.
    #[serde(default)]
    seen: Vec<(String, i64)>,
}

/// The blob of `profile` and `positions` in the current schema.
pub fn encode(profile: &Profile, positions: &[(u32, u64)]) -> Vec<u8> {
    serde_json::to_vec(&Written {
        schema: SCHEMA,
        profile,
        positions,
    })
    .unwrap_or_else(|_| b"{}".to_vec())
}

/// A user whose version was claimed but whose state was never written (its writer died
/// between the claim and the write): nothing was saved, but the next write must create the
/// version after the claimed one, or every later owner's claim is refused. `None`: no claim.
pub fn claimed_unwritten(version: u64, seen: Vec<(u64, i64)>) -> Option<UserState> {
    (version > 0).then(|| UserState {
        version,
        seen: DedupWindow::from_entries(seen),
        ..UserState::default()
    })
}

/// A state from its blob, its stored version and the dedup entries stored beside it
/// (oldest first).
pub fn decode(blob: &[u8], version: u64, seen: Vec<(u64, i64)>) -> Result<UserState, Unreadable> {
    let stored: Stored = serde_json::from_slice(blob)
        .map_err(|e| Unreadable(format!("stored state does not parse: {e}")))?;
    let schema = stored.schema.unwrap_or(1);
    if schema > SCHEMA {
        return Err(Unreadable(format!(
            "stored state has schema {schema}; this release reads up to {SCHEMA}"
        )));
    }
    let mut entries = seen;
    if !stored.seen.is_empty() {
        // Schema 1: migrate the inline ids to fingerprints, merged in time order.
        entries.extend(
            stored
                .seen
                .iter()
                .map(|(id, at)| (message_fingerprint(id), *at)),
        );
        entries.sort_by_key(|(_, at)| *at);
        entries.dedup_by_key(|(f, _)| *f);
    }
    let mut positions = stored.positions;
    positions.sort_unstable();
    positions.shrink_to_fit();
    Ok(UserState {
        version,
        profile: stored.profile,
        positions,
        seen: DedupWindow::from_entries(entries),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn current_schema_round_trips() {
        let mut p = Profile::default();
        p.traits.insert("plan", json!("pro"));
        p.event_count = 3;
        let blob = encode(&p, &[(0, 7)]);
        let s = decode(&blob, 4, vec![(9, 1)]).unwrap();
        assert_eq!(s.profile, p);
        assert_eq!(s.positions, vec![(0, 7)]);
        assert_eq!(s.version, 4);
        assert!(s.seen.contains(9));
    }

    #[test]
    fn schema_1_loads_with_its_ids_fingerprinted() {
        let v1 = json!({
            "user_id": "u",
            "profile": {"traits": {"a": 1}, "tags": ["x"], "event_count": 1,
                        "events": {"e": {"count": 1, "first_at": 5, "last_at": 5}},
                        "first_seen": 5, "last_seen": 5},
            "positions": [[1, 10], [0, 3]],
            "seen": [["m-1", 100], ["m-2", 101]]
        });
        let s = decode(&serde_json::to_vec(&v1).unwrap(), 0, vec![]).unwrap();
        assert_eq!(s.profile.traits.get("a"), Some(&json!(1)));
        assert_eq!(s.positions, vec![(0, 3), (1, 10)]);
        assert!(s.seen.contains(message_fingerprint("m-2")));
        assert_eq!(s.seen.len(), 2);
    }

    #[test]
    fn a_claim_without_a_write_loads_as_empty_state_at_the_claimed_version() {
        assert_eq!(claimed_unwritten(0, vec![]), None);
        let s = claimed_unwritten(3, vec![(9, 1)]).unwrap();
        assert_eq!(s.version, 3);
        assert_eq!(s.profile, Profile::default());
        assert!(s.positions.is_empty());
        assert!(s.seen.contains(9));
    }

    #[test]
    fn newer_or_broken_states_are_unreadable() {
        let newer = decode(br#"{"schema": 99, "profile": {}}"#, 1, vec![]).unwrap_err();
        assert!(newer.0.contains("schema 99"), "{newer}");
        let broken = decode(b"{\"profile\": 5}", 1, vec![]).unwrap_err();
        assert!(broken.0.contains("does not parse"), "{broken}");
    }
}
