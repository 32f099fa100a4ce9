//! Random streams with aliases for the identity-merge tests, in phases: each phase is
//! published once the one before it is durable, so that where the order of two records on
//! different partitions would change the result, the phases fix it — and within a phase,
//! records on different partitions commute, whatever order they are applied in. (Two merges
//! into one profile by way of different partitions do not commute where their sources set the
//! same trait and the target does not: the first merged wins. So within a phase every merge
//! into a profile comes through that profile's own partition, in order.)
//!
//! 1. Profiles: identify (shared trait names, so the merge rule's "the target wins" is
//!    exercised), track, page, group and tags for anonymous visitors and known users.
//! 2. Visitors' aliases into users, repeats (the same messageId re-published, and a new one),
//!    self-aliases, blocked ids, ids never seen.
//! 3. Chains: users into users with higher numbers, each user either merged or merged into.
//! 4. Cycles (aliases back along a chain: nothing changes) and retargets (an id already
//!    merged, aliased into another user: the profile it ended in moves), each retarget's two
//!    profiles distinct from every other's.
//! 5. Traffic for every id, merged or not: a merged id's records reach the profile it ended
//!    in. Each sender uses its own trait, tag and group names here, so the records of two ids
//!    that now share a profile commute.

use std::collections::{BTreeMap, BTreeSet};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

use super::oracle;

/// One phase's records, as (key, JSON payload).
pub type Phase = Vec<(String, String)>;

pub struct AliasStream {
    pub phases: Vec<Phase>,
}

impl AliasStream {
    /// `visitors` anonymous ids and `users` known ones, about `events` records per traffic
    /// phase.
    pub fn new(seed: u64, visitors: usize, users: usize, events: usize) -> AliasStream {
        let mut g = Gen {
            rng: SmallRng::seed_from_u64(seed),
            next_id: 0,
            seed,
        };
        let visitor = |i: usize| format!("anon-{seed}-{i}");
        let user = |j: usize| format!("user-{seed}-{j}");
        let ids: Vec<String> = (0..visitors)
            .map(visitor)
            .chain((0..users).map(user))
            .collect();

        let mut profiles = Vec::new();
        for _ in 0..events {
            let id = ids[g.rng.gen_range(0..ids.len())].clone();
            let m = g.traffic(&id, None);
            profiles.push((id, m));
        }

        let mut aliases = Vec::new();
        // Most visitors sign up as some user.
        for i in 0..visitors {
            if g.rng.gen_bool(0.8) {
                let into = user(g.rng.gen_range(0..users));
                let m = g.alias(&visitor(i), &into);
                aliases.push((into.clone(), m.clone()));
                if g.rng.gen_bool(0.1) {
                    // Re-published as is, and sent again as a new message.
                    aliases.push((into.clone(), m));
                    let again = g.alias(&visitor(i), &into);
                    aliases.push((into, again));
                }
            }
        }
        for j in 0..3.min(users) {
            let m = g.alias(&user(j), &user(j));
            aliases.push((user(j), m));
        }
        for blocked in ["anonymous", "null", "0", "-1", "undefined"] {
            let into = user(g.rng.gen_range(0..users));
            let m = g.alias(blocked, &into);
            aliases.push((into, m));
        }
        let m = g.alias(&visitor(0), "NULL");
        aliases.push(("NULL".to_string(), m));
        for n in 0..3 {
            let into_user = user(g.rng.gen_range(0..users));
            let m = g.alias(&format!("ghost-{seed}-{n}"), &into_user);
            aliases.push((into_user, m));
        }

        // Chains: an even-numbered user into an odd-numbered one with a higher number.
        let mut chains = Vec::new();
        for j in (0..users.saturating_sub(1)).step_by(2) {
            if g.rng.gen_bool(0.5) {
                let k = j + 1 + 2 * g.rng.gen_range(0..(users - j) / 2);
                let m = g.alias(&user(j), &user(k));
                chains.push((user(k), m));
            }
        }

        // Phase 4 from the model's state after phases 1-3.
        let so_far: Vec<&[u8]> = profiles
            .iter()
            .chain(&aliases)
            .chain(&chains)
            .map(|(_, p)| p.as_bytes())
            .collect();
        let state = oracle::replay_merging(so_far, 100);
        let live = |id: &str| -> String {
            let mut id = id.to_string();
            while let Some(next) = state.merged.get(&id) {
                id = next.clone();
            }
            id
        };
        let mut turns = Vec::new();
        // Cycles: the end of a chain aliased back into its start.
        for (from, _) in state.merged.iter().take(5) {
            let end = live(from);
            let m = g.alias(&end, from);
            turns.push((from.clone(), m));
        }
        // Retargets: a merged id into a user whose profile is another; no profile in two.
        let mut used: BTreeSet<String> = BTreeSet::new();
        let merged: Vec<String> = state.merged.keys().cloned().collect();
        for from in merged.iter().rev().take(20) {
            let into = user(g.rng.gen_range(0..users));
            let (a, b) = (live(from), live(&into));
            if a == b || used.contains(&a) || used.contains(&b) {
                continue;
            }
            used.insert(a);
            used.insert(b);
            let m = g.alias(from, &into);
            turns.push((into, m));
        }

        let mut after = Vec::new();
        let everyone: Vec<String> = ids
            .iter()
            .cloned()
            .chain((0..3).map(|n| format!("ghost-{seed}-{n}")))
            .collect();
        for _ in 0..events {
            let id = everyone[g.rng.gen_range(0..everyone.len())].clone();
            let m = g.traffic(&id, Some(&id));
            if g.rng.gen_bool(0.02) {
                after.push((id.clone(), m.clone()));
            }
            after.push((id, m));
        }
        AliasStream {
            phases: vec![profiles, aliases, chains, turns, after],
        }
    }

    /// Every record, in publish order.
    pub fn all(&self) -> impl Iterator<Item = &(String, String)> {
        self.phases.iter().flatten()
    }

    /// The model's result after the first `phases` phases.
    pub fn expected(&self, phases: usize) -> oracle::Replayed {
        oracle::replay_merging(
            self.phases[..phases]
                .iter()
                .flatten()
                .map(|(_, p)| p.as_bytes()),
            100,
        )
    }

    /// How many aliases of the whole stream the merge rules refuse, by reason.
    pub fn refused(&self) -> BTreeMap<&'static str, usize> {
        let mut out = BTreeMap::new();
        for reason in self.expected(self.phases.len()).refused.values() {
            *out.entry(*reason).or_default() += 1;
        }
        out
    }
}

struct Gen {
    rng: SmallRng,
    next_id: u64,
    seed: u64,
}

impl Gen {
    fn message_id(&mut self) -> String {
        self.next_id += 1;
        format!("m-{}-{}", self.seed, self.next_id)
    }

    fn at(&mut self) -> String {
        let s = self.rng.gen_range(0..86_400 * 30);
        chrono::DateTime::from_timestamp(1_790_000_000 + s, 0)
            .unwrap()
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
    }

    fn alias(&mut self, previous: &str, user: &str) -> String {
        json!({"type": "alias", "messageId": self.message_id(), "userId": user,
               "previousId": previous, "timestamp": self.at()})
        .to_string()
    }

    /// A record for `id`; with `own`, every name it sets is that sender's alone.
    fn traffic(&mut self, id: &str, own: Option<&str>) -> String {
        let key = |name: &str| match own {
            Some(o) => format!("{name}_{o}"),
            None => name.to_string(),
        };
        let anonymous = id.starts_with("anon-");
        let who = if anonymous {
            json!({"anonymousId": id})
        } else {
            json!({"userId": id})
        };
        let mut m: Value = match self.rng.gen_range(0..10) {
            0..=2 => {
                let plan = ["free", "pro", "team"][self.rng.gen_range(0..3)];
                let mut traits = json!({});
                traits[key("plan")] = json!(plan);
                traits[key("score")] = json!(self.rng.gen_range(0..100));
                if self.rng.gen_bool(0.2) {
                    traits[key("nickname")] = Value::Null;
                } else {
                    traits[key("nickname")] = json!(format!("n{}", self.rng.gen_range(0..5)));
                }
                let tag = key(&format!("t{}", self.rng.gen_range(0..4)));
                let gone = key(&format!("t{}", self.rng.gen_range(0..4)));
                json!({"type": "identify", "traits": traits,
                       "tags": {"add": [tag], "remove": [gone]}})
            }
            3..=6 => {
                let event = ["signed_up", "viewed", "bought"][self.rng.gen_range(0..3)];
                json!({"type": "track", "event": event})
            }
            7 => json!({"type": "page", "name": "home"}),
            8 => {
                let group = key(&format!("g{}", self.rng.gen_range(0..2)));
                json!({"type": "group", "groupId": group,
                       "traits": {key("size"): self.rng.gen_range(1..50)}})
            }
            _ => json!({"type": "screen"}),
        };
        for (k, v) in who.as_object().unwrap() {
            m[k] = v.clone();
        }
        m["messageId"] = json!(self.message_id());
        m["timestamp"] = json!(self.at());
        m.to_string()
    }
}
