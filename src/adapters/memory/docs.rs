//! In-memory document store: the `users` and `messages` collections, with MongoDB's fence
//! (a user's document is replaced only at the version its writer loaded).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use futures::FutureExt;
use parking_lot::Mutex;

use crate::domain::dedup::DedupWindow;
use crate::domain::keys::owner_shard;
use crate::domain::message::{ApplyResult, MessageRecord, MessageStatus, StatusChange};
use crate::domain::suppression::{Suppression, SuppressionReason};
use crate::domain::user::{UserProfile, UserState};
use crate::ports::{
    BoxFut, Callback, DocumentStore, EarlyCallback, InsertedMessages, StalledFrom, StoreError,
    StoredUser, TransitionResult, UserSnapshot, UsersWritten,
};

const SHARDS: usize = 64;

/// A user document: the snapshot written (its version inside), the token of the flush that
/// wrote it, and `updated_at`.
type UserShard = Mutex<HashMap<Arc<str>, (Arc<UserSnapshot>, u64, i64), ahash::RandomState>>;

pub struct MemoryDocumentStore {
    users: Vec<UserShard>,
    /// Each message with the token of the flush that inserted it. Hashed with aHash, not
    /// SipHash: the embedded pipeline inserts every triggered message here (SipHash was 2 %
    /// of its threads' time).
    messages: Mutex<HashMap<String, (Arc<MessageRecord>, u64), ahash::RandomState>>,
    /// Kept callbacks by key (a counter): message id, callback, expiry.
    early_callbacks: Mutex<BTreeMap<u64, (String, Callback, i64)>>,
    early_next: std::sync::atomic::AtomicU64,
    suppressions: Mutex<HashMap<String, Suppression, ahash::RandomState>>,
    /// Frequency-cap windows by `<channel>:<user>`.
    caps: Mutex<HashMap<String, crate::domain::policy::CapWindow, ahash::RandomState>>,
}

impl Default for MemoryDocumentStore {
    fn default() -> Self {
        MemoryDocumentStore {
            users: (0..SHARDS)
                .map(|_| Mutex::new(HashMap::default()))
                .collect(),
            messages: Mutex::new(HashMap::default()),
            early_callbacks: Mutex::default(),
            early_next: Default::default(),
            suppressions: Mutex::new(HashMap::default()),
            caps: Mutex::default(),
        }
    }
}

impl MemoryDocumentStore {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Every live user document's aggregated profile, by user id (merged ids left out: see
    /// [`Self::merged`]).
    pub fn users(&self) -> BTreeMap<String, UserProfile> {
        let mut out = BTreeMap::new();
        for shard in &self.users {
            for (id, (snapshot, _, _)) in shard.lock().iter() {
                if snapshot
                    .identity
                    .as_ref()
                    .is_some_and(|i| i.merged_into.is_some())
                {
                    continue;
                }
                out.insert(id.to_string(), snapshot.profile.to_view());
            }
        }
        out
    }

    /// Every merged id, with the id it was merged into (`merged_into`).
    pub fn merged(&self) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        for shard in &self.users {
            for (id, (snapshot, _, _)) in shard.lock().iter() {
                if let Some(into) = snapshot
                    .identity
                    .as_ref()
                    .and_then(|i| i.merged_into.clone())
                {
                    out.insert(id.to_string(), into);
                }
            }
        }
        out
    }

    /// A user's state as its document holds it (profile and bookkeeping).
    pub fn stored(&self, user_id: &str) -> Option<UserState> {
        let shard = self.users[owner_shard(user_id, SHARDS)].lock();
        let (s, _, _) = shard.get(user_id)?;
        Some(UserState {
            version: s.version,
            profile: s.profile.clone(),
            positions: s.positions.clone(),
            seen: DedupWindow::from_entries(s.seen.clone()),
            identity: s.identity.clone(),
        })
    }

    pub fn user_count(&self) -> usize {
        self.users.iter().map(|s| s.lock().len()).sum()
    }

    pub fn messages(&self) -> Vec<MessageRecord> {
        self.messages
            .lock()
            .values()
            .map(|(m, _)| MessageRecord::clone(m))
            .collect()
    }

    pub fn message(&self, id: &str) -> Option<MessageRecord> {
        self.messages
            .lock()
            .get(id)
            .map(|(m, _)| MessageRecord::clone(m))
    }

    pub fn status_counts(&self) -> BTreeMap<&'static str, usize> {
        let mut out = BTreeMap::new();
        for (m, _) in self.messages.lock().values() {
            *out.entry(m.status.as_str()).or_insert(0) += 1;
        }
        out
    }

    pub fn suppressions(&self) -> Vec<Suppression> {
        self.suppressions.lock().values().cloned().collect()
    }

    /// Messages still waiting on a send: not in a terminal status, and not `held` (those wait
    /// for their quiet hours to end, not for the pipeline).
    pub fn unfinished(&self) -> usize {
        self.messages
            .lock()
            .values()
            .filter(|(m, _)| !m.status.is_terminal() && m.status != MessageStatus::Held)
            .count()
    }

    /// `skipped` messages by their reason's first word (`opted_out`, `quiet_hours`,
    /// `frequency_capped`, `no`, `when_traits`, …).
    pub fn skip_reasons(&self) -> BTreeMap<String, usize> {
        let mut out = BTreeMap::new();
        for (m, _) in self.messages.lock().values() {
            if m.status == MessageStatus::Skipped {
                let reason = m.error.as_deref().unwrap_or("");
                let word = reason
                    .split([':', ' '])
                    .next()
                    .unwrap_or_default()
                    .to_string();
                *out.entry(word).or_insert(0) += 1;
            }
        }
        out
    }
}

impl DocumentStore for MemoryDocumentStore {
    fn load_users(&self, users: Vec<Arc<str>>) -> BoxFut<Result<Vec<StoredUser>, StoreError>> {
        let out = users
            .iter()
            .map(
                |u| match self.users[owner_shard(u, SHARDS)].lock().get(&**u) {
                    Some((snapshot, _, _)) => StoredUser::Found(UserState {
                        version: snapshot.version,
                        profile: snapshot.profile.clone(),
                        positions: snapshot.positions.clone(),
                        seen: DedupWindow::from_entries(snapshot.seen.clone()),
                        identity: snapshot.identity.clone(),
                    }),
                    None => StoredUser::Absent,
                },
            )
            .collect();
        async move { Ok(out) }.boxed()
    }

    fn upsert_users(
        &self,
        users: Vec<Arc<UserSnapshot>>,
        token: u64,
        now_ms: i64,
    ) -> BoxFut<Result<UsersWritten, StoreError>> {
        let mut written = UsersWritten::default();
        for u in users {
            let mut shard = self.users[owner_shard(&u.user_id, SHARDS)].lock();
            // Fenced as in MongoDB: only over the version the writer loaded (or its own
            // write of this version, retried). One lookup: the document is replaced in place.
            let (stored, by) = match shard.get_mut(&*u.user_id) {
                Some(doc) if doc.0.version + 1 == u.version => {
                    *doc = (u, token, now_ms);
                    continue;
                }
                Some((s, by, _)) => (s.version, *by),
                None if u.version == 1 => {
                    shard.insert(u.user_id.clone(), (u, token, now_ms));
                    continue;
                }
                None => (0, 0),
            };
            if !(stored == u.version && by == token) {
                written.stale.push(u.user_id.clone());
            }
        }
        async { Ok(written) }.boxed()
    }

    fn remove_created_messages(
        &self,
        ids: Vec<String>,
        token: u64,
    ) -> BoxFut<Result<(), StoreError>> {
        let mut store = self.messages.lock();
        for id in ids {
            if store.get(&id).is_some_and(|(_, by)| *by == token) {
                store.remove(&id);
            }
        }
        async { Ok(()) }.boxed()
    }

    fn lookups_due(
        &self,
        now_ms: i64,
        limit: usize,
    ) -> BoxFut<Result<Vec<MessageRecord>, StoreError>> {
        let mut due: Vec<MessageRecord> = self
            .messages
            .lock()
            .values()
            .map(|(m, _)| m)
            .filter(|m| m.status == MessageStatus::Sent)
            .filter(|m| m.lookup_at.is_some_and(|at| at <= now_ms))
            .map(|m| MessageRecord::clone(m))
            .collect();
        due.sort_by_key(|m| m.lookup_at);
        due.truncate(limit);
        async move { Ok(due) }.boxed()
    }

    fn claim_lookup(
        &self,
        id: String,
        due_ms: i64,
        next_ms: Option<i64>,
    ) -> BoxFut<Result<bool, StoreError>> {
        let claimed = match self.messages.lock().get_mut(&id) {
            Some((m, _)) if m.status == MessageStatus::Sent && m.lookup_at == Some(due_ms) => {
                Arc::make_mut(m).lookup_at = next_ms;
                true
            }
            _ => false,
        };
        async move { Ok(claimed) }.boxed()
    }

    fn insert_messages(
        &self,
        messages: Vec<Arc<MessageRecord>>,
        token: u64,
    ) -> BoxFut<Result<InsertedMessages, StoreError>> {
        // In-process the call cannot fail halfway, so what it inserts is what carries the
        // token. The records are kept as shared: a later change copies one only while the
        // writer still holds it.
        let mut store = self.messages.lock();
        let mut inserted = Vec::with_capacity(messages.len());
        for m in messages {
            if let std::collections::hash_map::Entry::Vacant(v) = store.entry(m.id.clone()) {
                inserted.push(m.id.clone());
                v.insert((m, token));
            }
        }
        let inserted = InsertedMessages {
            created: inserted,
            refused: Vec::new(),
        };
        async { Ok(inserted) }.boxed()
    }

    fn transition(
        &self,
        id: String,
        change: StatusChange,
    ) -> BoxFut<Result<TransitionResult, StoreError>> {
        let result = match self.messages.lock().get_mut(&id) {
            None => TransitionResult::NotFound,
            // A copy only if a caller still holds the record as it was.
            Some((m, _)) => match Arc::make_mut(m).apply(&change) {
                ApplyResult::Applied => TransitionResult::Applied(m.clone()),
                ApplyResult::Ignored => TransitionResult::Ignored(m.status),
                ApplyResult::NotReady => TransitionResult::NotReady,
            },
        };
        async move { Ok(result) }.boxed()
    }

    fn keep_early_callback(
        &self,
        message_id: String,
        callback: Callback,
        expires_at_ms: i64,
        max: u64,
    ) -> BoxFut<Result<bool, StoreError>> {
        let mut early = self.early_callbacks.lock();
        let kept = (early.len() as u64) < max;
        if kept {
            let key = self
                .early_next
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            early.insert(key, (message_id, callback, expires_at_ms));
        }
        async move { Ok(kept) }.boxed()
    }

    fn early_callbacks(&self, limit: usize) -> BoxFut<Result<Vec<EarlyCallback>, StoreError>> {
        let out = self
            .early_callbacks
            .lock()
            .iter()
            .take(limit)
            .map(|(key, (_, cb, expires))| EarlyCallback {
                key: key.to_string(),
                callback: Ok(cb.clone()),
                expires_at_ms: *expires,
            })
            .collect();
        async move { Ok(out) }.boxed()
    }

    fn drop_early_callback(&self, key: String) -> BoxFut<Result<(), StoreError>> {
        if let Ok(k) = key.parse::<u64>() {
            self.early_callbacks.lock().remove(&k);
        }
        async { Ok(()) }.boxed()
    }

    fn get_message(&self, id: String) -> BoxFut<Result<Option<Arc<MessageRecord>>, StoreError>> {
        let m = self.messages.lock().get(&id).map(|(m, _)| m.clone());
        async move { Ok(m) }.boxed()
    }

    fn take_cap_slot(
        &self,
        key: String,
        message_id: String,
        now_ms: i64,
        max: usize,
        per_ms: i64,
    ) -> BoxFut<Result<crate::domain::policy::Slot, StoreError>> {
        let slot =
            self.caps
                .lock()
                .entry(key)
                .or_default()
                .take_slot(&message_id, now_ms, max, per_ms);
        Box::pin(async move { Ok(slot) })
    }

    fn count_status(&self, status: MessageStatus) -> BoxFut<Result<u64, StoreError>> {
        let n = self
            .messages
            .lock()
            .values()
            .map(|(m, _)| m)
            .filter(|m| m.status == status)
            .count() as u64;
        Box::pin(async move { Ok(n) })
    }

    fn stalled_messages(
        &self,
        idle_before_ms: i64,
        from: StalledFrom,
        limit: usize,
    ) -> BoxFut<Result<Vec<MessageRecord>, StoreError>> {
        let mut v: Vec<MessageRecord> = self
            .messages
            .lock()
            .values()
            .map(|(m, _)| m)
            .filter(|m| {
                matches!(
                    m.status,
                    MessageStatus::Queued | MessageStatus::Held | MessageStatus::Retrying
                ) && m.updated_at < idle_before_ms
                    && match &from {
                        StalledFrom::Start => true,
                        StalledFrom::After(at) => m.updated_at > *at,
                        StalledFrom::Tied { at, after_id } => {
                            m.updated_at == *at && m.id > *after_id
                        }
                    }
            })
            .map(|m| MessageRecord::clone(m))
            .collect();
        match from {
            StalledFrom::Tied { .. } => v.sort_by(|a, b| a.id.cmp(&b.id)),
            // Ties in any order, as an index gives them.
            _ => v.sort_by_key(|m| m.updated_at),
        }
        v.truncate(limit);
        async move { Ok(v) }.boxed()
    }

    fn find_by_provider_message_id(
        &self,
        provider: String,
        provider_message_id: String,
    ) -> BoxFut<Result<Option<MessageRecord>, StoreError>> {
        let found = self
            .messages
            .lock()
            .values()
            .map(|(m, _)| m)
            .find(|m| {
                m.provider.as_deref() == Some(provider.as_str())
                    && m.knows_provider_message_id(&provider_message_id)
            })
            .map(|m| MessageRecord::clone(m));
        async move { Ok(found) }.boxed()
    }

    fn suppress(&self, suppressions: Vec<Suppression>) -> BoxFut<Result<usize, StoreError>> {
        let mut store = self.suppressions.lock();
        let mut new = 0;
        for s in suppressions {
            if let std::collections::hash_map::Entry::Vacant(slot) = store.entry(s.id()) {
                slot.insert(s);
                new += 1;
            }
        }
        async move { Ok(new) }.boxed()
    }

    fn suppressed(
        &self,
        ids: Vec<String>,
    ) -> BoxFut<Result<Vec<(String, SuppressionReason)>, StoreError>> {
        let store = self.suppressions.lock();
        let found = ids
            .into_iter()
            .filter_map(|id| store.get(&id).map(|s| (id, s.reason)))
            .collect();
        async move { Ok(found) }.boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(store: &MemoryDocumentStore, user: &str, version: u64, token: u64) -> bool {
        let state = UserState {
            version,
            ..UserState::default()
        };
        let snapshot = Arc::new(UserSnapshot::of_state(Arc::from(user), &state));
        let written =
            futures::executor::block_on(store.upsert_users(vec![snapshot], token, 0)).unwrap();
        written.stale.is_empty()
    }

    fn stored_version(store: &MemoryDocumentStore, user: &str) -> Option<u64> {
        let loaded = futures::executor::block_on(store.load_users(vec![Arc::from(user)]));
        match loaded.unwrap().pop() {
            Some(StoredUser::Found(state)) => Some(state.version),
            _ => None,
        }
    }

    /// The fence MongoDB's statements apply: a document is replaced only at the version its
    /// writer loaded, and a retried statement of the same flush is not stale.
    #[test]
    fn users_are_replaced_only_over_the_version_their_writer_loaded() {
        let store = MemoryDocumentStore::default();
        assert!(
            !write(&store, "u", 2, 1),
            "no document: only version 1 lands"
        );
        assert_eq!(stored_version(&store, "u"), None);
        assert!(write(&store, "u", 1, 1));
        assert!(
            write(&store, "u", 1, 1),
            "the same flush again is not stale"
        );
        assert!(
            !write(&store, "u", 1, 2),
            "another writer of the same version is"
        );
        assert!(!write(&store, "u", 3, 3), "a version skipped is stale");
        assert_eq!(stored_version(&store, "u"), Some(1));
        assert!(write(&store, "u", 2, 4));
        assert_eq!(stored_version(&store, "u"), Some(2));
        for late in [1, 2] {
            assert!(!write(&store, "u", late, 5), "late writer at {late}");
        }
        assert_eq!(stored_version(&store, "u"), Some(2));
        assert!(write(&store, "v", 1, 5), "other users are their own");
    }
}
