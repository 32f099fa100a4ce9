//! The integration tests' reference model: what the `users` collection must hold after a
//! stream of messages, computed straight from the message JSON and the rules of
//! docs/REFERENCE.md §2–§3, without Herald's decoder or state machine. Deliberately plain
//! (maps, no optimisation, no dedup window): if it and Herald disagree, one of them is wrong.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use herald::domain::user::{EventStats, UserProfile};
use serde_json::Value;

/// Applies each *valid* message (the caller says which are) once per `messageId` and user,
/// in the order given, and returns the profile of every live user (ids merged by an alias
/// left out).
pub fn replay<'a>(
    valid_messages: impl IntoIterator<Item = &'a [u8]>,
) -> BTreeMap<String, UserProfile> {
    replay_merging(valid_messages, 100).users
}

/// What a stream leaves in `users`: the live profiles, and each merged id with its
/// `merged_into`.
#[derive(Debug, Default, PartialEq)]
pub struct Replayed {
    pub users: BTreeMap<String, UserProfile>,
    pub merged: BTreeMap<String, String>,
    /// Aliases the merge rules refuse (blocked ids, the limit), by messageId.
    pub refused: BTreeMap<String, &'static str>,
}

/// [`replay`] with §11's alias rule, with `merge.max_ids` = `max_ids`: the live id `previousId`
/// ends at is merged into the live id `userId` ends at (the latter's traits win, tags union,
/// counts summed, first times the earliest, last times the latest), the merged id's document
/// becomes `{_id, merged_into: userId}`, and later messages of a merged id apply where its
/// chain of `merged_into` ends. Nothing happens when both ends are the same id; an alias
/// naming a blocked id, or into a profile that absorbed `max_ids` ids, is refused.
pub fn replay_merging<'a>(
    valid_messages: impl IntoIterator<Item = &'a [u8]>,
    max_ids: usize,
) -> Replayed {
    let mut seen: HashSet<(String, String)> = HashSet::new();
    let mut users: BTreeMap<String, Model> = BTreeMap::new();
    let mut merged: BTreeMap<String, String> = BTreeMap::new();
    let mut absorbed: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut refused = BTreeMap::new();
    let live = |merged: &BTreeMap<String, String>, id: &str| -> String {
        let mut id = id.to_string();
        while let Some(next) = merged.get(&id) {
            id = next.clone();
        }
        id
    };
    for payload in valid_messages {
        let m: Value = serde_json::from_slice(payload).expect("a valid message is JSON");
        // The user's key: `userId`, else `anonymousId` (§11).
        let user = m["userId"]
            .as_str()
            .or(m["anonymousId"].as_str())
            .expect("userId or anonymousId")
            .to_string();
        let id = m["messageId"].as_str().expect("messageId").to_string();
        if !seen.insert((user.clone(), id.clone())) {
            continue; // a re-published duplicate
        }
        if m["type"] == "alias" {
            let previous = m["previousId"].as_str().expect("previousId").to_string();
            if is_blocked(&previous) || is_blocked(&user) {
                refused.insert(id, "blocked_id");
                continue;
            }
            let (from, into) = (live(&merged, &previous), live(&merged, &user));
            if from == into {
                continue;
            }
            let count = absorbed.get(&into).map_or(0, BTreeSet::len);
            if previous != user
                && !absorbed.get(&into).is_some_and(|a| a.contains(&previous))
                && count >= max_ids
            {
                refused.insert(id, "merge_limit");
                continue;
            }
            let source = users.remove(&from).unwrap_or_default();
            users.entry(into.clone()).or_default().absorb(source);
            let mut ids = absorbed.remove(&from).unwrap_or_default();
            ids.insert(from.clone());
            absorbed.entry(into).or_default().extend(ids);
            merged.insert(from, user);
            continue;
        }
        let at = chrono::DateTime::parse_from_rfc3339(m["timestamp"].as_str().expect("timestamp"))
            .expect("an RFC 3339 timestamp")
            .timestamp_millis();
        let owner = live(&merged, &user);
        users.entry(owner).or_default().apply(&m, at);
    }
    Replayed {
        users: users
            .into_iter()
            .map(|(u, m)| (u, m.into_profile()))
            .collect(),
        merged,
        refused,
    }
}

/// §11's blocked ids: blank, or (ignoring case and surrounding spaces) a placeholder.
fn is_blocked(id: &str) -> bool {
    let id = id.trim().to_lowercase();
    id.is_empty() || ["null", "undefined", "anonymous", "0", "-1"].contains(&id.as_str())
}

#[derive(Default)]
struct Model {
    traits: BTreeMap<String, Value>,
    tags: BTreeSet<String>,
    /// event name → (count, first time, last time)
    events: BTreeMap<String, (i64, i64, i64)>,
    first_seen: Option<i64>,
    last_seen: Option<i64>,
    groups: BTreeMap<String, BTreeMap<String, Value>>,
}

impl Model {
    fn apply(&mut self, m: &Value, at: i64) {
        self.first_seen = Some(self.first_seen.map_or(at, |t| t.min(at)));
        self.last_seen = Some(self.last_seen.map_or(at, |t| t.max(at)));
        match m["type"].as_str() {
            Some("identify") => {
                // Top-level traits, else (RudderStack's libraries) the context's.
                let traits = m["traits"]
                    .as_object()
                    .or_else(|| m["context"]["traits"].as_object());
                if let Some(traits) = traits {
                    for (k, v) in traits {
                        if v.is_null() {
                            self.traits.remove(k);
                        } else {
                            self.traits.insert(k.clone(), v.clone());
                        }
                    }
                }
                for tag in strings(&m["tags"]["add"]) {
                    self.tags.insert(tag);
                }
                for tag in strings(&m["tags"]["remove"]) {
                    self.tags.remove(&tag);
                }
            }
            Some(kind @ ("track" | "page" | "screen")) => {
                let name = match kind {
                    "page" => "page_viewed".to_string(),
                    "screen" => "screen_viewed".to_string(),
                    _ => m["event"].as_str().expect("event").to_string(),
                };
                let e = self.events.entry(name).or_insert((0, at, at));
                e.0 += 1;
                e.1 = e.1.min(at);
                e.2 = e.2.max(at);
            }
            Some("group") => {
                let id = m["groupId"].as_str().expect("groupId").to_string();
                let group = self.groups.entry(id).or_default();
                if let Some(traits) = m["traits"].as_object() {
                    for (k, v) in traits {
                        if v.is_null() {
                            group.remove(k);
                        } else {
                            group.insert(k.clone(), v.clone());
                        }
                    }
                }
            }
            other => panic!("not a valid message type: {other:?}"),
        }
    }

    /// §11: this profile's traits (and group traits) win where both are set; tags union;
    /// per-event counts summed, first times min, last times max; seen times min and max.
    fn absorb(&mut self, other: Model) {
        for (k, v) in other.traits {
            self.traits.entry(k).or_insert(v);
        }
        self.tags.extend(other.tags);
        for (name, (count, first, last)) in other.events {
            let e = self.events.entry(name).or_insert((0, first, last));
            e.0 += count;
            e.1 = e.1.min(first);
            e.2 = e.2.max(last);
        }
        self.first_seen = match (self.first_seen, other.first_seen) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        self.last_seen = match (self.last_seen, other.last_seen) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        for (group, traits) in other.groups {
            let ours = self.groups.entry(group).or_default();
            for (k, v) in traits {
                ours.entry(k).or_insert(v);
            }
        }
    }

    fn into_profile(self) -> UserProfile {
        UserProfile {
            traits: self.traits,
            tags: self.tags,
            event_count: self.events.values().map(|e| e.0).sum(),
            events: self
                .events
                .into_iter()
                .map(|(name, (count, first_at, last_at))| {
                    (
                        name,
                        EventStats {
                            count,
                            first_at,
                            last_at,
                        },
                    )
                })
                .collect(),
            first_seen: self.first_seen,
            last_seen: self.last_seen,
            groups: self.groups,
        }
    }
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}
