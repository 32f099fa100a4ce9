//! Where a user id stands in identity merges (`alias`), and the pure decisions of the merge
//! protocol (ARCHITECTURE.md, "Identity merge"): what an alias asks of its target, what a seal
//! asks of its source, and which of two merges waiting on each other gives way. The actors
//! carry the decisions out; everything here is a function of the states it is given.

use serde::{Deserialize, Serialize};

use super::merge::{blocked, merge_into, BlockedIds};
use super::profile::Profile;
use super::user::UserState;

/// A user's part in merges. Absent (the common case) for a user no alias has named.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Identity {
    /// Sealed: merged into this id, which its later records reach.
    #[serde(default, skip_serializing_if = "Option::is_none", rename = "into")]
    pub merged_into: Option<String>,
    /// The profile as it was handed over when it was sealed (answered again to a repeated
    /// seal, so a merge cut off by a crash can finish).
    #[serde(default, skip_serializing_if = "Option::is_none", rename = "h")]
    pub handed: Option<Profile>,
    /// The ids merged into this profile, transitively, sorted.
    #[serde(default, skip_serializing_if = "Vec::is_empty", rename = "m")]
    pub absorbed: Vec<String>,
    /// A merge into this profile is under way: until it is done, this id is not sealed into
    /// another (the mark that keeps two merges in opposite directions from both sealing).
    #[serde(default, skip_serializing_if = "Option::is_none", rename = "a")]
    pub absorbing: Option<Absorbing>,
}

/// The mark of a merge under way into a profile.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Absorbing {
    /// The id being merged in.
    pub id: String,
    /// When the mark was set (ms): a mark older than `merge.mark_ttl_ms` is one its merge
    /// left behind (it moved on to another id, or the records that would finish it were
    /// dead-lettered) and is not honoured.
    pub since_ms: i64,
}

impl Identity {
    pub fn is_empty(&self) -> bool {
        self.merged_into.is_none()
            && self.handed.is_none()
            && self.absorbed.is_empty()
            && self.absorbing.is_none()
    }

    pub fn has_absorbed(&self, id: &str) -> bool {
        self.absorbed
            .binary_search_by(|a| a.as_str().cmp(id))
            .is_ok()
    }

    fn add_absorbed(&mut self, id: &str) {
        if let Err(i) = self.absorbed.binary_search_by(|a| a.as_str().cmp(id)) {
            self.absorbed.insert(i, id.to_string());
        }
    }
}

impl UserState {
    /// The id this user was merged into, if it was.
    pub fn merged_into(&self) -> Option<&str> {
        self.identity.as_deref()?.merged_into.as_deref()
    }

    /// The id whose merge into this profile is under way, and since when.
    pub fn absorbing(&self) -> Option<&Absorbing> {
        self.identity.as_deref()?.absorbing.as_ref()
    }

    /// How many ids this profile absorbed.
    pub fn absorbed_count(&self) -> usize {
        self.identity.as_deref().map_or(0, |i| i.absorbed.len())
    }

    pub fn has_absorbed(&self, id: &str) -> bool {
        self.identity.as_deref().is_some_and(|i| i.has_absorbed(id))
    }

    fn identity_mut(&mut self) -> &mut Identity {
        self.identity.get_or_insert_with(Default::default)
    }

    /// Marks a merge of `source` into this profile as under way.
    pub fn mark_absorbing(&mut self, source: &str, now_ms: i64) {
        self.identity_mut().absorbing = Some(Absorbing {
            id: source.to_string(),
            since_ms: now_ms,
        });
    }

    /// Clears the mark (the merge is done, found to change nothing, or gave way).
    pub fn clear_absorbing(&mut self) {
        if let Some(identity) = self.identity.as_deref_mut() {
            identity.absorbing = None;
        }
        self.drop_empty_identity();
    }

    fn drop_empty_identity(&mut self) {
        if self.identity.as_deref().is_some_and(Identity::is_empty) {
            self.identity = None;
        }
    }

    /// Seals this user into `into`: its profile is handed over (kept, for a repeated seal),
    /// and from now on it holds none.
    pub fn seal(&mut self, into: &str) {
        let profile = std::mem::take(&mut self.profile);
        let identity = self.identity_mut();
        identity.merged_into = Some(into.to_string());
        identity.handed = Some(profile);
        identity.absorbing = None;
    }

    /// What a sealed user hands over: its profile as sealed and the ids it had absorbed.
    pub fn handed_over(&self) -> Handover {
        let identity = self.identity.as_deref();
        Handover {
            profile: identity
                .and_then(|i| i.handed.clone())
                .unwrap_or_else(|| self.profile.clone()),
            absorbed: identity.map(|i| i.absorbed.clone()).unwrap_or_default(),
        }
    }

    /// Merges a sealed `source`'s handover into this profile, records `source` (and what it
    /// had absorbed) as absorbed, and clears the mark: the whole merge as one state, so one
    /// write makes it durable with the record that it happened.
    pub fn absorb(&mut self, source: &str, handover: &Handover) {
        merge_into(&mut self.profile, &handover.profile);
        let identity = self.identity_mut();
        identity.add_absorbed(source);
        for id in &handover.absorbed {
            identity.add_absorbed(id);
        }
        identity.absorbing = None;
    }
}

/// A sealed profile as it is handed to the profile it merges into.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Handover {
    pub profile: Profile,
    pub absorbed: Vec<String>,
}

/// What an alias asks of its (live, resolved) target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AliasStep {
    /// Dead-lettered `blocked_id` with this detail.
    Blocked(String),
    /// Changes nothing: the id is the target itself, or already merged into it.
    Nothing(NoChange),
    /// Dead-lettered `merge_limit`: the target absorbed `merge.max_ids` ids.
    Limit(String),
    /// Mark the target absorbing and seal the source.
    Merge,
}

/// Why an alias changes nothing (the `outcome` of `herald_merges_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoChange {
    /// `previousId` is the target (an alias into itself, or a cycle closing on it).
    SameId,
    /// The target already absorbed it (a repeat).
    AlreadyMerged,
}

impl NoChange {
    pub fn outcome(self) -> &'static str {
        match self {
            NoChange::SameId => "same_id",
            NoChange::AlreadyMerged => "already_merged",
        }
    }
}

/// The alias `alias(previous → user)` arriving at `target` (the live id `user` resolves
/// to), holding `target_state`.
pub fn alias_step(
    previous: &str,
    user: &str,
    target: &str,
    target_state: &UserState,
    max_ids: usize,
    blocked_ids: &BlockedIds,
) -> AliasStep {
    for (field, id) in [("previousId", previous), ("userId", user)] {
        if let Some(why) = blocked(id, blocked_ids) {
            return AliasStep::Blocked(format!("{field} {id:?}: {why}"));
        }
    }
    if previous == target || previous == user {
        return AliasStep::Nothing(NoChange::SameId);
    }
    if target_state.has_absorbed(previous) {
        return AliasStep::Nothing(NoChange::AlreadyMerged);
    }
    if target_state.absorbed_count() >= max_ids {
        return AliasStep::Limit(format!(
            "{target:?} already absorbed {} ids, merge.max_ids = {max_ids}",
            target_state.absorbed_count()
        ));
    }
    AliasStep::Merge
}

/// What a seal of `source` into `into` finds at the source.
#[derive(Debug, Clone, PartialEq)]
pub enum SealStep {
    /// Seal it now (it is live and no merge into it is under way).
    Seal,
    /// Already sealed into `into` (a repeat after a crash): hand over what was kept.
    AlreadySealed(Handover),
    /// Sealed into another id: the alias is about that id now.
    Elsewhere(String),
    /// A merge into the source is under way: it cannot be sealed until that is done.
    Busy,
}

/// `in_memory_merge`: a merge into the source is under way on this instance (its mark is
/// honoured whatever its age).
pub fn seal_step(
    source_state: &UserState,
    into: &str,
    in_memory_merge: bool,
    now_ms: i64,
    mark_ttl_ms: i64,
) -> SealStep {
    if let Some(x) = source_state.merged_into() {
        return if x == into {
            SealStep::AlreadySealed(source_state.handed_over())
        } else {
            SealStep::Elsewhere(x.to_string())
        };
    }
    let marked = source_state
        .absorbing()
        .is_some_and(|a| now_ms.saturating_sub(a.since_ms) < mark_ttl_ms);
    if in_memory_merge || marked {
        return SealStep::Busy;
    }
    SealStep::Seal
}

/// A merge whose source answered busy gives way (clears its own mark, so the merge its
/// source waits for can seal the target, and starts again later) when its source sorts
/// before its target; otherwise it keeps its mark and asks again. Of merges waiting on each
/// other in a ring, at least one has a source that sorts before its target, so the ring
/// breaks and none waits for ever.
pub fn gives_way(source: &str, target: &str) -> bool {
    source.as_bytes() < target.as_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::event::{Event, EventKind};
    use crate::domain::user::DedupLimits;

    fn state_with(events: &[(&str, i64)]) -> UserState {
        let mut s = UserState::new();
        for (i, (name, t)) in events.iter().enumerate() {
            s.apply(
                None,
                &Event {
                    message_id: format!("m-{i}").into(),
                    user_id: "x".into(),
                    timestamp_ms: *t,
                    kind: EventKind::Track {
                        event: (*name).into(),
                        properties: None,
                    },
                },
                0,
                DedupLimits::default(),
            );
        }
        s
    }

    #[test]
    fn sealing_hands_the_profile_over_once_and_keeps_it_for_a_repeat() {
        let mut a = state_with(&[("buy", 5)]);
        let before = a.profile.clone();
        assert_eq!(seal_step(&a, "b", false, 0, 1000), SealStep::Seal);
        a.seal("b");
        assert_eq!(a.merged_into(), Some("b"));
        assert_eq!(a.profile, Profile::default());
        match seal_step(&a, "b", false, 0, 1000) {
            SealStep::AlreadySealed(h) => assert_eq!(h.profile, before),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            seal_step(&a, "c", false, 0, 1000),
            SealStep::Elsewhere("b".into())
        );
    }

    #[test]
    fn a_marked_source_is_busy_until_its_mark_expires() {
        let mut a = UserState::new();
        a.mark_absorbing("z", 100);
        assert_eq!(seal_step(&a, "b", false, 150, 1000), SealStep::Busy);
        assert_eq!(seal_step(&a, "b", false, 1100, 1000), SealStep::Seal);
        assert_eq!(
            seal_step(&UserState::new(), "b", true, 0, 1000),
            SealStep::Busy
        );
        a.clear_absorbing();
        assert_eq!(a.identity, None, "an empty identity is dropped");
    }

    #[test]
    fn absorbing_merges_and_records_the_ids_transitively() {
        let mut b = state_with(&[("buy", 10)]);
        b.mark_absorbing("a", 0);
        let handover = Handover {
            profile: state_with(&[("buy", 3)]).profile,
            absorbed: vec!["z".into()],
        };
        b.absorb("a", &handover);
        assert_eq!(b.profile.event_count, 2);
        assert!(b.has_absorbed("a") && b.has_absorbed("z"));
        assert_eq!(b.absorbing(), None);
        let none = BlockedIds::default();
        assert_eq!(
            alias_step("a", "b", "b", &b, 100, &none),
            AliasStep::Nothing(NoChange::AlreadyMerged)
        );
        assert_eq!(
            alias_step("z", "b", "b", &b, 100, &none),
            AliasStep::Nothing(NoChange::AlreadyMerged)
        );
        assert_eq!(
            alias_step("b", "b", "b", &b, 100, &none),
            AliasStep::Nothing(NoChange::SameId)
        );
        assert!(matches!(
            alias_step("q", "b", "b", &b, 2, &none),
            AliasStep::Limit(_)
        ));
        assert_eq!(alias_step("q", "b", "b", &b, 3, &none), AliasStep::Merge);
        assert!(matches!(
            alias_step("null", "b", "b", &b, 3, &none),
            AliasStep::Blocked(_)
        ));
        assert!(matches!(
            alias_step("q", "anonymous", "b", &b, 3, &none),
            AliasStep::Blocked(_)
        ));
    }

    #[test]
    fn in_any_ring_of_waiting_merges_one_gives_way() {
        let rings: [&[&str]; 3] = [&["a", "b"], &["b", "a"], &["c", "a", "b"]];
        for ring in rings {
            // Edge i: source ring[i] into target ring[i+1].
            let gives = (0..ring.len())
                .filter(|&i| gives_way(ring[i], ring[(i + 1) % ring.len()]))
                .count();
            assert!(gives >= 1 && gives < ring.len(), "{ring:?}");
        }
    }
}
