//! The stored forms of a user's state, with their schema versions.
//!
//! - The **cache entry** (Redis `state:{<id>}`, schema 4): one binary value holding the whole
//!   state — version, positions, dedup window, merge part and the profile — so a cache hit is
//!   one read: `"HS"`, schema (u8), version (u64), position count (u32) and `(partition u32,
//!   offset u64)` pairs, window length (u32) and `(fingerprint u64, seen at i64)` pairs, the
//!   merge part's length (u32, 0 for none) and the part as JSON, then the profile as JSON.
//!   Integers big-endian. Schema 3 (the same without the merge part) still loads.
//! - The **dedup window** in the `users` document's `_herald.seen`: 16 bytes per entry,
//!   `(fingerprint u64, seen at i64)` big-endian, oldest first.
//! - **Legacy** states, as releases before MongoDB held the bookkeeping wrote them in Redis:
//!   schema 1 (`{user_id, profile, positions, seen: [[id, at]…]}`, no `schema` field) and 2
//!   (`{schema: 2, profile, positions}`, the window in a sorted set beside it). They load, so
//!   an upgrade loses no replay protection.
//!
//! A newer schema, or a form that does not parse, is [`Unreadable`] (the caller quarantines the
//! user, or — for a cache entry — reads the system of record instead).

use serde::{Deserialize, Serialize};

use super::dedup::DedupWindow;
use super::identity::Identity;
use super::keys::message_fingerprint;
use super::positions::Positions;
use super::profile::Profile;
use super::user::UserState;

/// The cache-entry schema this release writes.
pub const SCHEMA: u8 = 4;
/// The cache-entry schema before the merge part, still read.
const SCHEMA_WITHOUT_MERGES: u8 = 3;
/// The newest legacy (JSON) schema.
const LEGACY_SCHEMA: u32 = 2;
const MAGIC: &[u8; 2] = b"HS";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Unreadable(pub String);

/// The dedup window as `_herald.seen` stores it.
pub fn encode_seen(entries: &[(u64, i64)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(entries.len() * 16);
    for (fingerprint, at) in entries {
        out.extend_from_slice(&fingerprint.to_be_bytes());
        out.extend_from_slice(&at.to_be_bytes());
    }
    out
}

/// Reads [`encode_seen`].
pub fn decode_seen(bytes: &[u8]) -> Result<Vec<(u64, i64)>, Unreadable> {
    if bytes.len() % 16 != 0 {
        return Err(Unreadable(format!(
            "the stored dedup window is {} bytes, not a multiple of 16",
            bytes.len()
        )));
    }
    Ok(bytes
        .chunks_exact(16)
        .map(|c| {
            let (f, at) = c.split_at(8);
            (
                u64::from_be_bytes(f.try_into().expect("8 bytes")),
                i64::from_be_bytes(at.try_into().expect("8 bytes")),
            )
        })
        .collect())
}

/// The cache entry of a state at `version`.
pub fn encode_cached(
    version: u64,
    profile: &Profile,
    positions: &Positions,
    seen: &[(u64, i64)],
    identity: Option<&Identity>,
) -> Vec<u8> {
    let json = serde_json::to_vec(profile).unwrap_or_else(|_| b"{}".to_vec());
    let identity = identity
        .and_then(|i| serde_json::to_vec(i).ok())
        .unwrap_or_default();
    let mut out = Vec::with_capacity(
        2 + 1
            + 8
            + 4
            + positions.len() * 12
            + 4
            + seen.len() * 16
            + 4
            + identity.len()
            + json.len(),
    );
    out.extend_from_slice(MAGIC);
    out.push(SCHEMA);
    out.extend_from_slice(&version.to_be_bytes());
    out.extend_from_slice(&(positions.len() as u32).to_be_bytes());
    for (p, o) in positions.iter() {
        out.extend_from_slice(&p.to_be_bytes());
        out.extend_from_slice(&o.to_be_bytes());
    }
    out.extend_from_slice(&(seen.len() as u32).to_be_bytes());
    out.extend_from_slice(&encode_seen(seen));
    out.extend_from_slice(&(identity.len() as u32).to_be_bytes());
    out.extend_from_slice(&identity);
    out.extend_from_slice(&json);
    out
}

/// Reads [`encode_cached`].
pub fn decode_cached(bytes: &[u8]) -> Result<UserState, Unreadable> {
    let mut r = Reader(bytes);
    if r.take(2)? != MAGIC {
        return Err(Unreadable(
            "the cached state is not in a form this release wrote".into(),
        ));
    }
    let schema = r.take(1)?[0];
    if schema != SCHEMA && schema != SCHEMA_WITHOUT_MERGES {
        return Err(Unreadable(format!(
            "the cached state has schema {schema}; this release reads {SCHEMA}"
        )));
    }
    let version = r.u64()?;
    let n = r.u32()? as usize;
    let mut positions = Vec::with_capacity(n.min(r.0.len() / 12));
    for _ in 0..n {
        positions.push((r.u32()?, r.u64()?));
    }
    let n = r.u32()? as usize;
    let seen = decode_seen(r.take(n.checked_mul(16).ok_or_else(truncated)?)?)?;
    let identity = if schema == SCHEMA {
        let n = r.u32()? as usize;
        let bytes = r.take(n)?;
        if n == 0 {
            None
        } else {
            let identity: Identity = serde_json::from_slice(bytes)
                .map_err(|e| Unreadable(format!("the cached merge part does not parse: {e}")))?;
            Some(Box::new(identity))
        }
    } else {
        None
    };
    let profile: Profile = serde_json::from_slice(r.0)
        .map_err(|e| Unreadable(format!("the cached profile does not parse: {e}")))?;
    Ok(UserState {
        version,
        profile,
        positions: positions.into(),
        seen: DedupWindow::from_entries(seen),
        identity,
    })
}

fn truncated() -> Unreadable {
    Unreadable("the cached state is truncated".into())
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], Unreadable> {
        if self.0.len() < n {
            return Err(truncated());
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn u32(&mut self) -> Result<u32, Unreadable> {
        Ok(u32::from_be_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }

    fn u64(&mut self) -> Result<u64, Unreadable> {
        Ok(u64::from_be_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }
}

#[derive(Deserialize)]
struct Legacy {
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

/// A legacy state from its JSON blob and the dedup entries stored beside it (oldest first).
/// Its version is 0: the system of record has no bookkeeping for the user yet, and its first
/// write creates version 1.
pub fn decode_legacy(blob: &[u8], seen: Vec<(u64, i64)>) -> Result<UserState, Unreadable> {
    let stored: Legacy = serde_json::from_slice(blob)
        .map_err(|e| Unreadable(format!("stored state does not parse: {e}")))?;
    let schema = stored.schema.unwrap_or(1);
    if schema > LEGACY_SCHEMA {
        return Err(Unreadable(format!(
            "stored state has schema {schema}; this release reads up to {LEGACY_SCHEMA}"
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
    Ok(UserState {
        version: 0,
        profile: stored.profile,
        positions: stored.positions.into(),
        seen: DedupWindow::from_entries(entries),
        identity: None,
    })
}

/// The legacy JSON blob (schema 2), as releases before this one wrote it: for tests of the
/// upgrade path.
pub fn encode_legacy(profile: &Profile, positions: &[(u32, u64)]) -> Vec<u8> {
    #[derive(Serialize)]
    struct Written<'a> {
        schema: u32,
        profile: &'a Profile,
        positions: &'a [(u32, u64)],
    }
    serde_json::to_vec(&Written {
        schema: LEGACY_SCHEMA,
        profile,
        positions,
    })
    .unwrap_or_else(|_| b"{}".to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::trait_value::TraitValue;
    use serde_json::json;

    fn profile() -> Profile {
        let mut p = Profile::default();
        p.traits.insert("plan", TraitValue::string("pro"));
        p.event_count = 3;
        p
    }

    #[test]
    fn cache_entries_round_trip() {
        let p = profile();
        let blob = encode_cached(
            4,
            &p,
            &Positions::from(vec![(1, 9), (0, 7)]),
            &[(9, 1), (10, 2)],
            None,
        );
        let s = decode_cached(&blob).unwrap();
        assert_eq!(s.version, 4);
        assert_eq!(s.profile, p);
        assert_eq!(s.positions, vec![(0, 7), (1, 9)]);
        assert_eq!(s.seen.entries().collect::<Vec<_>>(), vec![(9, 1), (10, 2)]);
        assert_eq!(s.identity, None);
        let mut sealed = s.clone();
        sealed.seal("b");
        let blob = encode_cached(
            5,
            &sealed.profile,
            &Positions::default(),
            &[],
            sealed.identity.as_deref(),
        );
        let back = decode_cached(&blob).unwrap();
        assert_eq!(back.merged_into(), Some("b"));
        assert_eq!(back.handed_over().profile, p);
    }

    #[test]
    fn broken_or_foreign_cache_entries_are_unreadable() {
        let blob = encode_cached(
            4,
            &profile(),
            &Positions::from(vec![(0, 7)]),
            &[(9, 1)],
            None,
        );
        for cut in [0, 1, 3, 10, 20, 30] {
            assert!(decode_cached(&blob[..cut]).is_err(), "cut at {cut}");
        }
        let mut newer = blob.clone();
        newer[2] = SCHEMA + 1;
        assert!(decode_cached(&newer).unwrap_err().0.contains("schema"));
        assert!(decode_cached(br#"{"schema":2}"#).is_err());
        // Schema 3 (no merge part) still loads.
        let mut v3 = blob[..3 + 8 + 4 + 12 + 4 + 16].to_vec();
        v3[2] = 3;
        v3.extend_from_slice(&blob[3 + 8 + 4 + 12 + 4 + 16 + 4..]);
        let s = decode_cached(&v3).unwrap();
        assert_eq!(s.profile, profile());
    }

    #[test]
    fn the_window_is_16_bytes_per_entry() {
        let entries = vec![(u64::MAX, -1), (0, i64::MAX), (7, 1_700_000_000_000)];
        let bytes = encode_seen(&entries);
        assert_eq!(bytes.len(), 48);
        assert_eq!(decode_seen(&bytes).unwrap(), entries);
        assert!(decode_seen(&bytes[..47]).is_err());
    }

    #[test]
    fn legacy_schema_2_loads_at_version_0() {
        let p = profile();
        let blob = encode_legacy(&p, &[(0, 7)]);
        let s = decode_legacy(&blob, vec![(9, 1)]).unwrap();
        assert_eq!(s.version, 0);
        assert_eq!(s.profile, p);
        assert_eq!(s.positions, vec![(0, 7)]);
        assert!(s.seen.contains(9));
    }

    #[test]
    fn legacy_schema_1_loads_with_its_ids_fingerprinted() {
        let v1 = json!({
            "user_id": "u",
            "profile": {"traits": {"a": 1}, "tags": ["x"], "event_count": 1,
                        "events": {"e": {"count": 1, "first_at": 5, "last_at": 5}},
                        "first_seen": 5, "last_seen": 5},
            "positions": [[1, 10], [0, 3]],
            "seen": [["m-1", 100], ["m-2", 101]]
        });
        let s = decode_legacy(&serde_json::to_vec(&v1).unwrap(), vec![]).unwrap();
        assert_eq!(s.profile.traits.get("a"), Some(&TraitValue::PosInt(1)));
        assert_eq!(s.positions, vec![(0, 3), (1, 10)]);
        assert!(s.seen.contains(message_fingerprint("m-2")));
        assert_eq!(s.seen.len(), 2);
    }

    #[test]
    fn newer_or_broken_legacy_states_are_unreadable() {
        let newer = decode_legacy(br#"{"schema": 99, "profile": {}}"#, vec![]).unwrap_err();
        assert!(newer.0.contains("schema 99"), "{newer}");
        let broken = decode_legacy(b"{\"profile\": 5}", vec![]).unwrap_err();
        assert!(broken.0.contains("does not parse"), "{broken}");
    }
}
