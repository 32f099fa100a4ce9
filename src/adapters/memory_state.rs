//! In-memory user-state store (for `herald demo` and actor tests), with the same fencing and
//! the same stored form as the Redis store: a version, its claiming owner, the encoded blob
//! and the dedup entries beside it.

use std::collections::HashMap;
use std::sync::Arc;

use futures::FutureExt;
use parking_lot::Mutex;

use crate::domain::keys::owner_shard;
use crate::domain::stored_state;
use crate::domain::user::UserState;
use crate::ports::{BoxFut, LoadedState, SeenPolicy, StateStore, StoreError, UserSnapshot};

const SHARDS: usize = 64;

#[derive(Default)]
struct Stored {
    version: u64,
    owner: u64,
    blob: Option<Box<[u8]>>,
    seen: Vec<(u64, i64)>,
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
        let shard = self.shard(user_id).lock();
        let s = shard.get(user_id)?;
        stored_state::decode(s.blob.as_deref()?, s.version, s.seen.clone()).ok()
    }

    /// Stores a raw blob as if an older or broken release had written it (tests).
    pub fn put_raw(&self, user_id: &str, version: u64, blob: &[u8]) {
        self.shard(user_id).lock().insert(
            Arc::from(user_id),
            Stored {
                version,
                blob: Some(blob.into()),
                ..Stored::default()
            },
        );
    }

    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().values().filter(|v| v.blob.is_some()).count())
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
                match shard.get(&**u) {
                    Some(Stored {
                        version,
                        blob: Some(blob),
                        seen,
                        ..
                    }) => match stored_state::decode(blob, *version, seen.clone()) {
                        Ok(s) => LoadedState::Found(s),
                        Err(e) => LoadedState::Unreadable(e.0),
                    },
                    Some(_) | None => LoadedState::Absent,
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
                s.blob = Some(stored_state::encode(&u.profile, &u.positions).into());
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
