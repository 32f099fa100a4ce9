//! Loading users' states: the cache first, MongoDB — the system of record — for what the cache
//! does not have (and the cache is refilled with what was read there). A cache that cannot
//! answer counts as a miss: loads slow down while Redis is away, they do not stop.
//!
//! A document written by a release that kept the positions and the dedup window in Redis
//! (no `_herald`) is completed with that release's Redis state when it is still there, so an
//! upgrade keeps the users' replay protection.

use std::sync::Arc;

use crate::domain::user::UserState;
use crate::ports::{LoadedState, StoreError, StoredUser, UserSnapshot};

use super::context::Ports;

/// Each user's state, in order. `fresh`: skip the cache (its entries were found stale).
pub async fn load(
    ports: &Ports,
    users: Vec<Arc<str>>,
    fresh: bool,
) -> Result<Vec<LoadedState>, StoreError> {
    let mut out: Vec<Option<LoadedState>> = vec![None; users.len()];
    if !fresh {
        match ports.cache.load(users.clone()).await {
            Ok(hits) if hits.len() == users.len() => {
                for (slot, hit) in out.iter_mut().zip(hits) {
                    *slot = hit.map(LoadedState::Found);
                }
            }
            Ok(_) => tracing::warn!("the state cache answered the wrong number of users"),
            Err(e) => tracing::debug!(error = %e, "state cache unavailable; reading MongoDB"),
        }
    }
    let missing: Vec<usize> = (0..users.len()).filter(|i| out[*i].is_none()).collect();
    if missing.is_empty() {
        return Ok(out.into_iter().flatten().collect());
    }
    let ids: Vec<Arc<str>> = missing.iter().map(|i| users[*i].clone()).collect();
    let stored = ports.docs.load_users(ids.clone()).await?;
    if stored.len() != ids.len() {
        return Err(StoreError::Transient(
            "the document store answered the wrong number of users".into(),
        ));
    }
    let legacy: Vec<usize> = (0..ids.len())
        .filter(|i| matches!(stored[*i], StoredUser::WithoutBookkeeping(_)))
        .collect();
    let mut earlier = vec![None; ids.len()];
    if !legacy.is_empty() {
        // Without them a replay would apply again what the profile already holds: wait for
        // the cache rather than guess.
        let found = ports
            .cache
            .load_legacy(legacy.iter().map(|i| ids[*i].clone()).collect())
            .await?;
        for (i, state) in legacy.iter().zip(found) {
            earlier[*i] = state;
        }
    }
    let mut refill = Vec::new();
    for ((i, stored), earlier) in missing.into_iter().zip(stored).zip(earlier) {
        out[i] = Some(match stored {
            StoredUser::Absent => LoadedState::Absent,
            StoredUser::Found(state) => {
                refill.push(Arc::new(UserSnapshot::of_state(users[i].clone(), &state)));
                LoadedState::Found(state)
            }
            StoredUser::WithoutBookkeeping(profile) => match earlier {
                Some(state) => state,
                // Nothing kept beside it: the profile alone (its first write adds the rest).
                None => LoadedState::Found(UserState {
                    profile,
                    ..UserState::default()
                }),
            },
            StoredUser::Unreadable(reason) => LoadedState::Unreadable(reason),
        });
    }
    if !refill.is_empty() {
        if let Err(e) = ports.cache.save(refill).await {
            tracing::debug!(error = %e, "could not refill the state cache");
        }
    }
    Ok(out.into_iter().flatten().collect())
}
