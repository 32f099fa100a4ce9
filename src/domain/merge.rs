//! Identity merge (`alias`, REFERENCE.md §11): how one profile is merged into another, and
//! which ids may take part. Pure; the protocol that calls it is in ARCHITECTURE.md ("Identity
//! merge").

use super::profile::{NameMap, Profile};
use super::user_profile::EventStats;

/// Merges `source` (the profile of `previousId`) into `target` (the profile of `userId`):
/// the target's traits win where both are set (so do its group traits), tags are the union,
/// event counts are summed with the earliest first and the latest last occurrence, and the
/// profile's first and last seen times are the earliest and the latest of the two.
pub fn merge_into(target: &mut Profile, source: &Profile) {
    for (key, value) in source.traits.iter() {
        if target.traits.get(key).is_none() {
            target.traits.insert(key, value.clone());
        }
    }
    for tag in source.tags.iter() {
        target.tags.insert(tag);
    }
    target.event_count = target.event_count.saturating_add(source.event_count);
    for (name, theirs) in source.events.iter() {
        let ours = target.events.update(name, |ours| {
            ours.count = ours.count.saturating_add(theirs.count);
            ours.first_at = ours.first_at.min(theirs.first_at);
            ours.last_at = ours.last_at.max(theirs.last_at);
        });
        if !ours {
            let copy = EventStats {
                count: theirs.count,
                first_at: theirs.first_at,
                last_at: theirs.last_at,
            };
            target.events.insert(name, copy);
        }
    }
    target.first_seen = earliest(target.first_seen.get(), source.first_seen.get()).into();
    target.last_seen = latest(target.last_seen.get(), source.last_seen.get()).into();
    for (group, theirs) in source.groups.iter() {
        if target.groups.get(group).is_none() {
            target.groups.insert(group, NameMap::default());
        }
        target.groups.update(group, |ours| {
            for (key, value) in theirs.iter() {
                if ours.get(key).is_none() {
                    ours.insert(key, value.clone());
                }
            }
        });
    }
}

fn earliest(a: Option<i64>, b: Option<i64>) -> Option<i64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

fn latest(a: Option<i64>, b: Option<i64>) -> Option<i64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    }
}

/// Ids no alias may name, as identity graphs block them (an `identify(null)` or a default
/// placeholder would otherwise merge every visitor into one profile): empty or blank, and —
/// compared case-insensitively, around spaces — `null`, `undefined`, `anonymous`, `0` and
/// `-1`.
const BLOCKED: [&str; 5] = ["null", "undefined", "anonymous", "0", "-1"];

/// The operator's blocked ids (`merge.blocked_ids`): regular expressions, each matching a
/// whole id.
#[derive(Debug, Clone, Default)]
pub struct BlockedIds(Vec<regex::Regex>);

impl BlockedIds {
    /// Compiles the patterns; the error names the one that does not compile.
    pub fn new(patterns: &[String]) -> Result<BlockedIds, String> {
        patterns
            .iter()
            .map(|p| {
                regex::Regex::new(&format!("^(?:{p})$"))
                    .map_err(|e| format!("{p:?} is not a regular expression: {e}"))
            })
            .collect::<Result<Vec<_>, _>>()
            .map(BlockedIds)
    }

    fn matches(&self, id: &str) -> bool {
        self.0.iter().any(|r| r.is_match(id))
    }
}

/// Why an id may not take part in a merge, if it may not: built in ([`BLOCKED`]) or matching
/// one of `also` (`merge.blocked_ids`).
pub fn blocked(id: &str, also: &BlockedIds) -> Option<&'static str> {
    let trimmed = id.trim();
    if trimmed.is_empty() {
        return Some("blank id");
    }
    if BLOCKED.iter().any(|b| trimmed.eq_ignore_ascii_case(b)) {
        return Some("placeholder id");
    }
    if also.matches(id) {
        return Some("matches merge.blocked_ids");
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_and_listed_ids_are_blocked_and_real_ids_are_not() {
        for id in [
            "",
            "  ",
            "null",
            "NULL",
            " undefined ",
            "Anonymous",
            "0",
            "-1",
        ] {
            assert!(blocked(id, &BlockedIds::default()).is_some(), "{id:?}");
        }
        let also = BlockedIds::new(&["guest".to_string(), "[0-]+".to_string()]).unwrap();
        assert_eq!(blocked("guest", &also), Some("matches merge.blocked_ids"));
        assert_eq!(blocked("00-0", &also), Some("matches merge.blocked_ids"));
        for id in [
            "u-1",
            "anon-42",
            "user@example.com",
            "Guest",
            "guests",
            "0x",
        ] {
            assert_eq!(blocked(id, &also), None, "{id:?}");
        }
    }
}
