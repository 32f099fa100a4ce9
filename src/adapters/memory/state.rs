//! In-memory state cache (for `herald demo` and actor tests): the written snapshots
//! themselves (shared, not encoded: in-process there is no wire to cross). It can be emptied
//! at once, as a Redis restarted without persistence would be, and made to fail, as an
//! unreachable one would.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use futures::FutureExt;
use parking_lot::Mutex;

use crate::domain::dedup::DedupWindow;
use crate::domain::keys::owner_shard;
use crate::domain::user::UserState;
use crate::ports::{BoxFut, StateCache, StoreError, UserSnapshot};
use crate::prefetch::{arc_allocation, drop_ahead};

const SHARDS: usize = 64;

/// A user's entry: the cached snapshot, and whether a write of the user is under way (then
/// the entry loads as a miss). One map holds both, so marking and saving a user are one
/// lookup each.
#[derive(Default)]
struct Entry {
    snapshot: Option<Arc<UserSnapshot>>,
    in_flux: bool,
}

type Shard = Mutex<HashMap<Arc<str>, Entry, ahash::RandomState>>;

/// Sharded map of user id → cached snapshot and in-flux mark.
pub struct MemoryStateCache {
    shards: Vec<Shard>,
    /// Answer every call with an error (an unreachable cache).
    failing: AtomicBool,
    /// Loads answered (for tests).
    pub loads: AtomicUsize,
}

impl Default for MemoryStateCache {
    fn default() -> Self {
        MemoryStateCache {
            shards: (0..SHARDS)
                .map(|_| Mutex::new(HashMap::default()))
                .collect(),
            failing: AtomicBool::new(false),
            loads: AtomicUsize::new(0),
        }
    }
}

fn state_of(s: &UserSnapshot) -> UserState {
    UserState {
        version: s.version,
        profile: s.profile.clone(),
        positions: s.positions.clone(),
        seen: DedupWindow::from_entries(s.seen.clone()),
        identity: s.identity.clone(),
    }
}

impl MemoryStateCache {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    fn shard(&self, user_id: &str) -> &Shard {
        &self.shards[owner_shard(user_id, SHARDS)]
    }

    /// The user's cached state (in flux or not).
    pub fn get(&self, user_id: &str) -> Option<UserState> {
        let shard = self.shard(user_id).lock();
        shard.get(user_id)?.snapshot.as_deref().map(state_of)
    }

    /// Caches a state as it is (tests: an entry older than the system of record).
    pub fn put(&self, user_id: &str, snapshot: UserSnapshot) {
        let mut shard = self.shard(user_id).lock();
        shard.entry(Arc::from(user_id)).or_default().snapshot = Some(Arc::new(snapshot));
    }

    /// Forgets everything (a Redis restarted without persistence).
    pub fn clear(&self) {
        for s in &self.shards {
            s.lock().clear();
        }
    }

    /// Makes every call fail (`true`) or answer again (`false`).
    pub fn set_failing(&self, failing: bool) {
        self.failing.store(failing, Ordering::SeqCst);
    }

    /// Users with a cached state.
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().values().filter(|e| e.snapshot.is_some()).count())
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn check(&self) -> Result<(), StoreError> {
        if self.failing.load(Ordering::SeqCst) {
            Err(StoreError::Transient("the cache is unreachable".into()))
        } else {
            Ok(())
        }
    }
}

impl StateCache for MemoryStateCache {
    fn load(&self, users: Vec<Arc<str>>) -> BoxFut<Result<Vec<Option<UserState>>, StoreError>> {
        let out = self.check().map(|()| {
            self.loads.fetch_add(users.len(), Ordering::Relaxed);
            users
                .iter()
                .map(|u| {
                    let shard = self.shard(u).lock();
                    let entry = shard.get(&**u).filter(|e| !e.in_flux)?;
                    entry.snapshot.as_deref().map(state_of)
                })
                .collect()
        });
        async move { out }.boxed()
    }

    fn begin_writes(&self, users: Vec<Arc<str>>) -> BoxFut<Result<(), StoreError>> {
        let out = self.check().map(|()| {
            for u in users {
                let mut shard = self.shard(&u).lock();
                if let Some(entry) = shard.get_mut(&*u) {
                    entry.in_flux = true;
                } else {
                    let entry = Entry {
                        snapshot: None,
                        in_flux: true,
                    };
                    shard.insert(u, entry);
                }
            }
        });
        async move { out }.boxed()
    }

    fn save(&self, users: Vec<Arc<UserSnapshot>>) -> BoxFut<Result<(), StoreError>> {
        let out = self.check().map(|()| {
            // The snapshots replaced are cold by now: dropped together afterwards, each asked
            // for a few ahead, rather than one cache miss after another inside the loop.
            let mut replaced = Vec::with_capacity(users.len());
            for u in users {
                let mut shard = self.shard(&u.user_id).lock();
                let saved = |snapshot| Entry {
                    snapshot: Some(snapshot),
                    in_flux: false,
                };
                if let Some(entry) = shard.get_mut(&*u.user_id) {
                    replaced.extend(std::mem::replace(entry, saved(u)).snapshot);
                } else {
                    shard.insert(u.user_id.clone(), saved(u));
                }
            }
            drop_ahead(replaced, arc_allocation, |s| s.storage_addrs());
        });
        async move { out }.boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot(user: &str, version: u64) -> Arc<UserSnapshot> {
        let state = UserState {
            version,
            ..UserState::default()
        };
        Arc::new(UserSnapshot::of_state(Arc::from(user), &state))
    }

    fn loaded(cache: &MemoryStateCache, user: &str) -> Option<u64> {
        let mut out = futures::executor::block_on(cache.load(vec![Arc::from(user)])).unwrap();
        out.pop().flatten().map(|s| s.version)
    }

    #[test]
    fn a_user_in_flux_loads_as_a_miss_until_its_write_is_saved() {
        let cache = MemoryStateCache::default();
        futures::executor::block_on(cache.save(vec![snapshot("u", 1), snapshot("v", 1)])).unwrap();
        assert_eq!(loaded(&cache, "u"), Some(1));
        // Marked: an older state is not served while the write is under way.
        futures::executor::block_on(cache.begin_writes(vec![Arc::from("u"), Arc::from("new")]))
            .unwrap();
        assert_eq!(loaded(&cache, "u"), None);
        assert_eq!(loaded(&cache, "new"), None);
        assert_eq!(loaded(&cache, "v"), Some(1), "other users are unaffected");
        assert_eq!(
            cache.get("u").map(|s| s.version),
            Some(1),
            "kept while in flux"
        );
        assert_eq!(cache.len(), 2, "a mark alone is not a cached state");
        futures::executor::block_on(cache.save(vec![snapshot("u", 2), snapshot("new", 1)]))
            .unwrap();
        assert_eq!(loaded(&cache, "u"), Some(2));
        assert_eq!(loaded(&cache, "new"), Some(1));
        assert_eq!(cache.len(), 3);
        // A later write marks it again; emptied, nothing loads.
        futures::executor::block_on(cache.begin_writes(vec![Arc::from("u")])).unwrap();
        assert_eq!(loaded(&cache, "u"), None);
        cache.clear();
        assert!(cache.is_empty());
        assert_eq!(loaded(&cache, "v"), None);
    }

    #[test]
    fn an_unreachable_cache_answers_errors() {
        let cache = MemoryStateCache::default();
        cache.set_failing(true);
        assert!(futures::executor::block_on(cache.load(vec![Arc::from("u")])).is_err());
        assert!(futures::executor::block_on(cache.save(vec![snapshot("u", 1)])).is_err());
        cache.set_failing(false);
        assert_eq!(loaded(&cache, "u"), None);
    }
}
