//! In-memory user-state store (for `herald demo` and actor tests).

use std::collections::HashMap;
use std::sync::Arc;

use futures::FutureExt;
use parking_lot::Mutex;

use crate::domain::user::UserState;
use crate::ports::{BoxFut, StateStore, StoreError};

const SHARDS: usize = 64;

/// Sharded map of user id → latest saved state.
pub struct MemoryStateStore {
    shards: Vec<Mutex<HashMap<String, Arc<UserState>, ahash::RandomState>>>,
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

    fn shard(&self, user_id: &str) -> &Mutex<HashMap<String, Arc<UserState>, ahash::RandomState>> {
        &self.shards[shard_of(user_id, SHARDS)]
    }

    pub fn get(&self, user_id: &str) -> Option<Arc<UserState>> {
        self.shard(user_id).lock().get(user_id).cloned()
    }

    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A stable shard index for a key (FNV-1a; stable across processes, unlike `RandomState`).
pub fn shard_of(key: &str, shards: usize) -> usize {
    (fnv1a(key.as_bytes()) % shards.max(1) as u64) as usize
}

pub fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= *b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

impl StateStore for MemoryStateStore {
    fn load(&self, user_id: &str) -> BoxFut<Result<Option<UserState>, StoreError>> {
        let state = self.get(user_id).map(|s| (*s).clone());
        async move { Ok(state) }.boxed()
    }

    fn save(&self, states: Vec<Arc<UserState>>) -> BoxFut<Result<(), StoreError>> {
        for s in states {
            self.shard(&s.user_id).lock().insert(s.user_id.clone(), s);
        }
        async { Ok(()) }.boxed()
    }
}
