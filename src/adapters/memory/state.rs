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

const SHARDS: usize = 64;

type Shard = Mutex<HashMap<Arc<str>, Arc<UserSnapshot>, ahash::RandomState>>;

/// Sharded map of user id → cached snapshot, and the users in flux.
pub struct MemoryStateCache {
    shards: Vec<Shard>,
    in_flux: Mutex<std::collections::HashSet<Arc<str>, ahash::RandomState>>,
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
            in_flux: Mutex::new(Default::default()),
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

    /// The user's cached state.
    pub fn get(&self, user_id: &str) -> Option<UserState> {
        self.shard(user_id).lock().get(user_id).map(|s| state_of(s))
    }

    /// Caches a state as it is (tests: an entry older than the system of record).
    pub fn put(&self, user_id: &str, snapshot: UserSnapshot) {
        self.shard(user_id)
            .lock()
            .insert(Arc::from(user_id), Arc::new(snapshot));
    }

    /// Forgets everything (a Redis restarted without persistence).
    pub fn clear(&self) {
        for s in &self.shards {
            s.lock().clear();
        }
        self.in_flux.lock().clear();
    }

    /// Makes every call fail (`true`) or answer again (`false`).
    pub fn set_failing(&self, failing: bool) {
        self.failing.store(failing, Ordering::SeqCst);
    }

    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().len()).sum()
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
            let in_flux = self.in_flux.lock();
            users
                .iter()
                .map(|u| (!in_flux.contains(u)).then(|| self.get(u)).flatten())
                .collect()
        });
        async move { out }.boxed()
    }

    fn begin_writes(&self, users: Vec<Arc<str>>) -> BoxFut<Result<(), StoreError>> {
        let out = self.check().map(|()| self.in_flux.lock().extend(users));
        async move { out }.boxed()
    }

    fn save(&self, users: Vec<Arc<UserSnapshot>>) -> BoxFut<Result<(), StoreError>> {
        let out = self.check().map(|()| {
            let mut in_flux = self.in_flux.lock();
            for u in users {
                in_flux.remove(&u.user_id);
                self.shard(&u.user_id).lock().insert(u.user_id.clone(), u);
            }
        });
        async move { out }.boxed()
    }
}
