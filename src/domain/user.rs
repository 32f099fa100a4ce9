//! The per-user aggregation state machine. [`UserProfile`] is the `users` document of
//! REFERENCE.md §3 as plain maps (the view tests and the self-check compare); [`UserState`] is
//! what a resident user costs: the compact [`Profile`] plus what makes re-application harmless
//! (last applied positions, the dedup window) and the fencing version.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::dedup::DedupWindow;
use super::event::Event;
use super::identity::Identity;
use super::keys::message_fingerprint;
use super::positions::Positions;
use super::profile::Profile;
pub use super::user_profile::{EventStats, TraitLookup, UserProfile};

/// A position in the source: the partition (or queue) index and the offset inside it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Position {
    pub partition: u32,
    pub offset: u64,
}

/// What applying one message did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApplyOutcome {
    Applied,
    /// At or below the user's last applied position in that partition (a replay).
    ReplayedPosition,
    /// Its `messageId` is in the dedup window (a re-published duplicate).
    DuplicateId,
}

/// Limits of the dedup window (`dedup.window_ms`, `dedup.max_ids_per_user`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DedupLimits {
    pub window_ms: i64,
    pub max_ids: usize,
}

impl Default for DedupLimits {
    fn default() -> Self {
        DedupLimits {
            window_ms: 86_400_000,
            max_ids: 10_000,
        }
    }
}

/// Everything Herald keeps about one resident user: the compact profile, replay protection
/// and the fencing version of its last durable write (its key is held by its owner).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct UserState {
    /// The version of the stored state this one descends from (0: never stored). A write
    /// creates `version + 1` and is refused if the store moved past `version` meanwhile.
    pub version: u64,
    pub profile: Profile,
    pub positions: Positions,
    pub seen: DedupWindow,
    /// Its part in identity merges (boxed: most users have none).
    pub identity: Option<Box<Identity>>,
}

// A live user's state is boxed in its shard: 128 bytes is an allocator size class, and one
// byte more takes the next (160).
const _: () = assert!(std::mem::size_of::<UserState>() == 128);

impl UserState {
    /// Where the parts an event reads and changes, or a snapshot shares, live (its event
    /// counts, traits, tags and remembered ids), read without touching them: hints for
    /// prefetching.
    pub fn storage_addrs(&self) -> [*const u8; 4] {
        let [events, traits, tags] = self.profile.storage_addrs();
        [events, traits, tags, self.seen.storage_addr()]
    }

    pub fn new() -> Self {
        UserState::default()
    }

    pub fn last_position(&self, partition: u32) -> Option<u64> {
        self.positions.last(partition)
    }

    /// Applies a message unless it is a replay (by position) or a duplicate (by id).
    /// `now_ms` is the processing time used to age the dedup window.
    pub fn apply(
        &mut self,
        position: Option<Position>,
        event: &Event,
        now_ms: i64,
        limits: DedupLimits,
    ) -> ApplyOutcome {
        if let Some(pos) = position {
            if self
                .last_position(pos.partition)
                .is_some_and(|last| pos.offset <= last)
            {
                return ApplyOutcome::ReplayedPosition;
            }
            self.positions.advance(pos.partition, pos.offset);
        }
        let fingerprint = message_fingerprint(&event.message_id);
        if !self
            .seen
            .insert(fingerprint, now_ms, limits.window_ms, limits.max_ids)
        {
            return ApplyOutcome::DuplicateId;
        }
        self.profile.apply(event);
        ApplyOutcome::Applied
    }

    /// Whether a record at `position` with this messageId was applied already (without
    /// applying it): how a sealed user tells its own replays from records to forward.
    pub fn is_replay(&self, position: Option<Position>, message_id: &str) -> bool {
        position.is_some_and(|pos| {
            self.last_position(pos.partition)
                .is_some_and(|last| pos.offset <= last)
        }) || self.seen.contains(message_fingerprint(message_id))
    }

    /// Bytes this state holds on the heap (names are shared and not counted).
    pub fn heap_bytes(&self) -> usize {
        self.profile.heap_bytes()
            + self.positions.heap_bytes()
            + self.seen.heap_bytes()
            + self.identity.as_ref().map_or(0, |i| {
                std::mem::size_of::<Identity>()
                    + i.absorbed.iter().map(|a| a.capacity() + 24).sum::<usize>()
                    + i.handed.as_ref().map_or(0, Profile::heap_bytes)
            })
    }
}

/// The reference semantics of G2: apply each distinct `messageId` of a user once, in order.
/// Used by `herald demo`'s self-check and by the property tests.
pub fn sequential_replay<'a>(
    events: impl IntoIterator<Item = &'a Event>,
) -> BTreeMap<String, UserProfile> {
    let mut seen: std::collections::HashSet<(&str, &str)> = std::collections::HashSet::new();
    let mut users: BTreeMap<String, UserProfile> = BTreeMap::new();
    for e in events {
        if seen.insert((e.user_id.as_str(), e.message_id.as_str())) {
            users
                .entry(e.user_id.as_str().to_owned())
                .or_default()
                .apply(e);
        }
    }
    users
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::event::EventKind;
    use crate::domain::trait_value::TraitValue;
    use serde_json::{json, Value};

    fn identify(id: &str, t: i64, traits: Vec<(&str, Option<Value>)>) -> Event {
        Event {
            message_id: id.into(),
            user_id: "u".into(),
            timestamp_ms: t,
            kind: EventKind::Identify {
                traits: traits
                    .into_iter()
                    .map(|(k, v)| {
                        (
                            crate::domain::inline_str::SmallStr::new(k),
                            v.map(TraitValue::from),
                        )
                    })
                    .collect(),
                tags_add: vec!["vip".into(), "trial".into()],
                tags_remove: vec!["trial".into()],
            },
        }
    }

    fn track(id: &str, t: i64, name: &str) -> Event {
        Event {
            message_id: id.into(),
            user_id: "u".into(),
            timestamp_ms: t,
            kind: EventKind::Track {
                event: name.into(),
                properties: None,
            },
        }
    }

    #[test]
    fn identify_sets_and_removes_traits_and_tags() {
        let mut s = UserState::new();
        let limits = DedupLimits::default();
        s.apply(
            None,
            &identify(
                "1",
                10,
                vec![("a", Some(json!(1))), ("b", Some(json!("x")))],
            ),
            0,
            limits,
        );
        s.apply(None, &identify("2", 5, vec![("a", None)]), 0, limits);
        assert_eq!(s.profile.traits.get("a"), None);
        assert_eq!(s.profile.traits.get("b"), Some(&TraitValue::string("x")));
        assert_eq!(s.profile.tags.iter().collect::<Vec<_>>(), vec!["vip"]);
        assert_eq!(s.profile.first_seen.get(), Some(5));
        assert_eq!(s.profile.last_seen.get(), Some(10));
        assert_eq!(s.profile.event_count, 0);
    }

    #[test]
    fn track_counts_per_event_with_min_max_times() {
        let mut s = UserState::new();
        let limits = DedupLimits::default();
        for (i, t) in [30, 10, 20].iter().enumerate() {
            s.apply(None, &track(&i.to_string(), *t, "buy"), 0, limits);
        }
        s.apply(None, &track("9", 40, "view"), 0, limits);
        assert_eq!(s.profile.event_count, 4);
        assert_eq!(
            *s.profile.events.get("buy").unwrap(),
            EventStats {
                count: 3,
                first_at: 10,
                last_at: 30
            }
        );
    }

    #[test]
    fn replays_and_duplicates_change_nothing() {
        let mut s = UserState::new();
        let limits = DedupLimits::default();
        let p = |o| {
            Some(Position {
                partition: 0,
                offset: o,
            })
        };
        assert_eq!(
            s.apply(p(5), &track("a", 1, "e"), 0, limits),
            ApplyOutcome::Applied
        );
        let before = s.profile.clone();
        assert_eq!(
            s.apply(p(5), &track("a", 1, "e"), 0, limits),
            ApplyOutcome::ReplayedPosition
        );
        assert_eq!(
            s.apply(p(3), &track("z", 1, "e"), 0, limits),
            ApplyOutcome::ReplayedPosition
        );
        assert_eq!(
            s.apply(p(9), &track("a", 1, "e"), 0, limits),
            ApplyOutcome::DuplicateId
        );
        assert_eq!(s.profile, before);
        assert_eq!(s.last_position(0), Some(9));
    }
}
