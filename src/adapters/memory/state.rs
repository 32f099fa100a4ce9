//! In-memory user-state store (for `herald demo` and actor tests), with the same fencing as the
//! Redis store: a version, its claiming owner, the state and the dedup entries beside it. The
//! state is kept as the written snapshot itself (shared, not encoded: in-process there is no
//! wire to cross); a raw blob can be stored to test older or broken stored forms.

use std::collections::HashMap;
use std::sync::Arc;

use futures::FutureExt;
use parking_lot::Mutex;

use crate::domain::dedup::DedupWindow;
use crate::domain::keys::owner_shard;
use crate::domain::stored_state;
use crate::domain::user::UserState;
use crate::ports::{BoxFut, LoadedState, SeenPolicy, StateStore, StoreError, UserSnapshot};

const SHARDS: usize = 64;

#[derive(Default)]
struct Stored {
    version: u64,
    owner: u64,
    state: Option<Form>,
    seen: Vec<(u64, i64)>,
}

enum Form {
    Snapshot(Arc<UserSnapshot>),
    /// A blob as some release wrote it (tests of older and unreadable stored states).
    Raw(Box<[u8]>),
}

impl Stored {
    fn decode(&self) -> Option<Result<UserState, String>> {
        let Some(state) = self.state.as_ref() else {
            return stored_state::claimed_unwritten(self.version, self.seen.clone()).map(Ok);
        };
        Some(match state {
            Form::Snapshot(s) => Ok(UserState {
                version: self.version,
                profile: s.profile.clone(),
                positions: s.positions.clone(),
                seen: DedupWindow::from_entries(self.seen.clone()),
            }),
            Form::Raw(blob) => {
                stored_state::decode(blob, self.version, self.seen.clone()).map_err(|e| e.0)
            }
        })
    }
}

type Shard = Mutex<HashMap<Arc<str>, Stored, ahash::RandomState>>;

/// Sharded map of user id → stored state.
pub struct MemoryStateStore {
    shards: Vec<Shard>,
}

impl Default for MemoryStateStore {
    fn default() -> Self {
        MemoryStateStore {
            shards: (0..SHARDS)
                .map(|_| Mutex::new(HashMap::default()))
                .collect(),
        }
    }
}

impl MemoryStateStore {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    fn shard(&self, user_id: &str) -> &Shard {
        &self.shards[owner_shard(user_id, SHARDS)]
    }

    /// The user's stored state, decoded.
    pub fn get(&self, user_id: &str) -> Option<UserState> {
        self.shard(user_id).lock().get(user_id)?.decode()?.ok()
    }

    /// Stores a raw blob as if an older or broken release had written it (tests).
    pub fn put_raw(&self, user_id: &str, version: u64, blob: &[u8]) {
        self.shard(user_id).lock().insert(
            Arc::from(user_id),
            Stored {
                version,
                state: Some(Form::Raw(blob.into())),
                ..Stored::default()
            },
        );
    }

    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().values().filter(|v| v.state.is_some()).count())
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl StateStore for MemoryStateStore {
    fn load(&self, users: Vec<Arc<str>>) -> BoxFut<Result<Vec<LoadedState>, StoreError>> {
        let out = users
            .iter()
            .map(|u| {
                let shard = self.shard(u).lock();
                match shard.get(&**u).and_then(Stored::decode) {
                    Some(Ok(s)) => LoadedState::Found(s),
                    Some(Err(e)) => LoadedState::Unreadable(e),
                    None => LoadedState::Absent,
                }
            })
            .collect();
        async move { Ok(out) }.boxed()
    }

    fn claim(
        &self,
        owner: u64,
        claims: Vec<(Arc<str>, u64)>,
    ) -> BoxFut<Result<Vec<bool>, StoreError>> {
        let out = claims
            .into_iter()
            .map(|(u, version)| {
                let mut shard = self.shard(&u).lock();
                let s = shard.entry(u).or_default();
                if s.version + 1 == version {
                    s.version = version;
                    s.owner = owner;
                    true
                } else {
                    s.version == version && s.owner == owner
                }
            })
            .collect();
        async move { Ok(out) }.boxed()
    }

    fn save(
        &self,
        owner: u64,
        users: Vec<Arc<UserSnapshot>>,
        seen: SeenPolicy,
    ) -> BoxFut<Result<Vec<bool>, StoreError>> {
        let out = users
            .iter()
            .map(|u| {
                let mut shard = self.shard(&u.user_id).lock();
                let Some(s) = shard.get_mut(&*u.user_id) else {
                    return false;
                };
                if s.version != u.version || s.owner != owner {
                    return false;
                }
                s.state = Some(Form::Snapshot(u.clone()));
                s.seen.extend_from_slice(&u.seen_added);
                s.seen.retain(|(_, at)| *at >= seen.expire_before_ms);
                if s.seen.len() > seen.max_ids {
                    let excess = s.seen.len() - seen.max_ids;
                    s.seen.drain(..excess);
                }
                true
            })
            .collect();
        async move { Ok(out) }.boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_writer_killed_between_claim_and_save_does_not_lock_the_user_out() {
        let store = MemoryStateStore::new();
        let u: Arc<str> = Arc::from("u");
        let claimed = futures::executor::block_on(store.claim(1, vec![(u.clone(), 1)]));
        assert_eq!(claimed.unwrap(), vec![true]);
        let loaded = futures::executor::block_on(store.load(vec![u.clone()])).unwrap();
        let LoadedState::Found(state) = &loaded[0] else {
            panic!("a claimed user loads as found: {loaded:?}");
        };
        assert_eq!(state.version, 1);
        let next = futures::executor::block_on(store.claim(2, vec![(u, state.version + 1)]));
        assert_eq!(next.unwrap(), vec![true]);
    }
}
