//! The document view of a user: [`UserProfile`], the `users` document of REFERENCE.md §3 as
//! plain maps (the view tests and the self-check compare), with its per-event statistics, and
//! [`TraitLookup`], through which campaigns read traits from either profile form. Re-exported
//! from `domain::user`.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::event::{Event, EventKind};

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
    /// Merges `other` into this profile by the identity-merge rule, on plain maps (the same
    /// rule as [`merge_into`](super::merge::merge_into), which the property tests hold it
    /// to): this profile's traits and group traits win where both are set, tags union, event
    /// counts summed with the earliest first and latest last times, seen times min and max.
    pub fn absorb(&mut self, other: &UserProfile) {
        for (k, v) in &other.traits {
            self.traits.entry(k.clone()).or_insert_with(|| v.clone());
        }
        self.tags.extend(other.tags.iter().cloned());
        self.event_count += other.event_count;
        for (name, theirs) in &other.events {
            let ours = self.events.entry(name.clone()).or_insert(EventStats {
                count: 0,
                first_at: theirs.first_at,
                last_at: theirs.last_at,
            });
            ours.count += theirs.count;
            ours.first_at = ours.first_at.min(theirs.first_at);
            ours.last_at = ours.last_at.max(theirs.last_at);
        }
        self.first_seen = match (self.first_seen, other.first_seen) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        self.last_seen = match (self.last_seen, other.last_seen) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        for (group, traits) in &other.groups {
            let ours = self.groups.entry(group.clone()).or_default();
            for (k, v) in traits {
                ours.entry(k.clone()).or_insert_with(|| v.clone());
            }
        }
    }

    /// Applies one event's effect on the profile (no dedup: see
    /// [`UserState::apply`](super::user::UserState::apply)).
    pub fn apply(&mut self, event: &Event) {
        if matches!(event.kind, EventKind::Alias { .. }) {
            // A merge, not a change of this profile (see `domain::merge`).
            return;
        }
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
                            self.traits.insert(String::from(key), v.to_value());
                        }
                        None => {
                            self.traits.remove(key.as_str());
                        }
                    }
                }
                // Add is applied before remove (REFERENCE.md §2).
                for tag in tags_add {
                    if !self.tags.contains(tag.as_str()) {
                        self.tags.insert(String::from(tag));
                    }
                }
                for tag in tags_remove {
                    self.tags.remove(tag.as_str());
                }
            }
            EventKind::Track { event: name, .. } => {
                self.event_count += 1;
                match self.events.get_mut(name.as_str()) {
                    Some(stats) => {
                        stats.count += 1;
                        stats.first_at = stats.first_at.min(t);
                        stats.last_at = stats.last_at.max(t);
                    }
                    None => {
                        self.events.insert(
                            name.as_str().to_owned(),
                            EventStats {
                                count: 1,
                                first_at: t,
                                last_at: t,
                            },
                        );
                    }
                }
            }
            EventKind::Alias { .. } => {}
            EventKind::Group { group_id, traits } => {
                let group = self.groups.entry(group_id.clone()).or_default();
                for (key, value) in traits {
                    match value {
                        Some(v) => {
                            group.insert(String::from(key), v.to_value());
                        }
                        None => {
                            group.remove(key.as_str());
                        }
                    }
                }
            }
        }
    }
}

/// Reads a trait by name (the campaigns evaluate against either profile form).
pub trait TraitLookup {
    fn trait_value(&self, key: &str) -> Option<Cow<'_, Value>>;
    /// Every trait, in name order (templates see them all).
    fn each_trait(&self, f: &mut dyn FnMut(&str, &Value));
    /// Every event's statistics, in name order.
    fn each_event(&self, f: &mut dyn FnMut(&str, &EventStats));
}

impl TraitLookup for UserProfile {
    fn trait_value(&self, key: &str) -> Option<Cow<'_, Value>> {
        self.traits.get(key).map(Cow::Borrowed)
    }

    fn each_trait(&self, f: &mut dyn FnMut(&str, &Value)) {
        for (k, v) in &self.traits {
            f(k, v);
        }
    }

    fn each_event(&self, f: &mut dyn FnMut(&str, &EventStats)) {
        for (k, v) in &self.events {
            f(k, v);
        }
    }
}
