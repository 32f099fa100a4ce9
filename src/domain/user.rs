//! The per-user aggregation state machine. [`UserProfile`] is the `users` document of
//! REFERENCE.md §3 as plain maps (the view tests and the self-check compare); [`UserState`] is
//! what a resident user costs: the compact [`Profile`] plus what makes re-application harmless
//! (last applied positions, the dedup window) and the fencing version.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::dedup::DedupWindow;
use super::event::{Event, EventKind};
use super::keys::message_fingerprint;
use super::profile::Profile;

/// Per-event-name statistics of a user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventStats {
    pub count: i64,
    pub first_at: i64,
    pub last_at: i64,
}

/// The aggregated view of one user: what is written to the `users` collection.
/// Times are milliseconds since the Unix epoch.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct UserProfile {
    pub traits: BTreeMap<String, Value>,
    pub tags: BTreeSet<String>,
    /// Number of applied `track` events (the sum of `events[*].count`).
    pub event_count: i64,
    pub events: BTreeMap<String, EventStats>,
    pub first_seen: Option<i64>,
    pub last_seen: Option<i64>,
    /// Group id → that group's traits (`group` messages).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub groups: BTreeMap<String, BTreeMap<String, Value>>,
}

impl UserProfile {
    /// Applies one event's effect on the profile (no dedup: see [`UserState::apply`]).
    pub fn apply(&mut self, event: &Event) {
        let t = event.timestamp_ms;
        self.first_seen = Some(self.first_seen.map_or(t, |f| f.min(t)));
        self.last_seen = Some(self.last_seen.map_or(t, |l| l.max(t)));
        match &event.kind {
            EventKind::Identify {
                traits,
                tags_add,
                tags_remove,
            } => {
                for (key, value) in traits {
                    match value {
                        Some(v) => {
                            self.traits.insert(key.clone(), v.clone());
                        }
                        None => {
                            self.traits.remove(key);
                        }
                    }
                }
                // Add is applied before remove (REFERENCE.md §2).
                for tag in tags_add {
                    if !self.tags.contains(tag) {
                        self.tags.insert(tag.clone());
                    }
                }
                for tag in tags_remove {
                    self.tags.remove(tag);
                }
            }
            EventKind::Track { event: name } => {
                self.event_count += 1;
                match self.events.get_mut(name) {
                    Some(stats) => {
                        stats.count += 1;
                        stats.first_at = stats.first_at.min(t);
                        stats.last_at = stats.last_at.max(t);
                    }
                    None => {
                        self.events.insert(
                            name.clone(),
                            EventStats {
                                count: 1,
                                first_at: t,
                                last_at: t,
                            },
                        );
                    }
                }
            }
            EventKind::Group { group_id, traits } => {
                let group = self.groups.entry(group_id.clone()).or_default();
                for (key, value) in traits {
                    match value {
                        Some(v) => {
                            group.insert(key.clone(), v.clone());
                        }
                        None => {
                            group.remove(key);
                        }
                    }
                }
            }
        }
    }
}

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
    /// Last applied offset per partition, sorted by partition (few entries).
    pub positions: Vec<(u32, u64)>,
    pub seen: DedupWindow,
}

impl UserState {
    pub fn new() -> Self {
        UserState::default()
    }

    pub fn last_position(&self, partition: u32) -> Option<u64> {
        self.positions
            .iter()
            .find(|(p, _)| *p == partition)
            .map(|(_, o)| *o)
    }

    fn advance_position(&mut self, pos: Position) {
        match self.positions.iter_mut().find(|(p, _)| *p == pos.partition) {
            Some(entry) => entry.1 = entry.1.max(pos.offset),
            None => {
                self.positions.reserve_exact(1);
                self.positions.push((pos.partition, pos.offset));
                self.positions.sort_unstable();
            }
        }
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
            self.advance_position(pos);
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

    /// Bytes this state holds on the heap (names are shared and not counted).
    pub fn heap_bytes(&self) -> usize {
        self.profile.heap_bytes() + self.positions.capacity() * 16 + self.seen.heap_bytes()
    }
}

/// Reads a trait by name (the campaigns evaluate against either profile form).
pub trait TraitLookup {
    fn trait_value(&self, key: &str) -> Option<&Value>;
}

impl TraitLookup for UserProfile {
    fn trait_value(&self, key: &str) -> Option<&Value> {
        self.traits.get(key)
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
            users.entry(e.user_id.clone()).or_default().apply(e);
        }
    }
    users
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn identify(id: &str, t: i64, traits: Vec<(&str, Option<Value>)>) -> Event {
        Event {
            message_id: id.into(),
            user_id: "u".into(),
            timestamp_ms: t,
            kind: EventKind::Identify {
                traits: traits
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v))
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
            kind: EventKind::Track { event: name.into() },
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
        assert_eq!(s.profile.traits.get("b"), Some(&json!("x")));
        assert_eq!(s.profile.tags.iter().collect::<Vec<_>>(), vec!["vip"]);
        assert_eq!(s.profile.first_seen, Some(5));
        assert_eq!(s.profile.last_seen, Some(10));
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
