//! The integration tests' reference model: what the `users` collection must hold after a
//! stream of messages, computed straight from the message JSON and the rules of
//! docs/REFERENCE.md §2–§3, without Herald's decoder or state machine. Deliberately plain
//! (maps, no optimisation, no dedup window): if it and Herald disagree, one of them is wrong.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use herald::domain::user::{EventStats, UserProfile};
use serde_json::Value;

/// Applies each *valid* message (the caller says which are) once per `messageId` and user,
/// in the order given, and returns the profile of every user.
pub fn replay<'a>(
    valid_messages: impl IntoIterator<Item = &'a [u8]>,
) -> BTreeMap<String, UserProfile> {
    let mut seen: HashSet<(String, String)> = HashSet::new();
    let mut users: BTreeMap<String, Model> = BTreeMap::new();
    for payload in valid_messages {
        let m: Value = serde_json::from_slice(payload).expect("a valid message is JSON");
        // The user's key: `userId`, else `anonymousId` (§11).
        let user = m["userId"]
            .as_str()
            .or(m["anonymousId"].as_str())
            .expect("userId or anonymousId")
            .to_string();
        let id = m["messageId"].as_str().expect("messageId").to_string();
        if !seen.insert((user.clone(), id)) {
            continue; // a re-published duplicate
        }
        let at = chrono::DateTime::parse_from_rfc3339(m["timestamp"].as_str().expect("timestamp"))
            .expect("an RFC 3339 timestamp")
            .timestamp_millis();
        users.entry(user).or_default().apply(&m, at);
    }
    users
        .into_iter()
        .map(|(u, m)| (u, m.into_profile()))
        .collect()
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
