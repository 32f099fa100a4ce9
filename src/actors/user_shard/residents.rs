//! A shard's resident users: their slots in one vector, found by key through a hash table of
//! slot numbers. The table holds 4 bytes per user and hashes the key where the slot keeps it
//! (a map from key to slot would hold the 16-byte key a second time).
//!
//! A user keeps its slot while resident (a passivated user's slot is reused by a later one),
//! so a flush can name its users by slot and find them again without hashing: [`locate`]
//! checks the slot still holds the same key allocation, which costs no string comparison.
//!
//! [`locate`]: Residents::locate

use std::ops::{Index, IndexMut};
use std::sync::Arc;

use hashbrown::HashTable;

use super::{Entity, Slot};

#[derive(Default)]
pub(super) struct Residents {
    slots: Vec<Option<Slot>>,
    /// Empty slots, reused before the vector grows.
    free: Vec<u32>,
    index: HashTable<u32>,
    hasher: ahash::RandomState,
}

impl Residents {
    /// The slot of `key`, if resident.
    pub(super) fn find(&self, key: &str) -> Option<usize> {
        let hash = self.hasher.hash_one(key);
        self.index
            .find(hash, |&s| self.key_at(s) == Some(key))
            .map(|&s| s as usize)
    }

    pub(super) fn contains(&self, key: &str) -> bool {
        self.find(key).is_some()
    }

    /// The slot of `key`: `slot` if it still holds this very key (the same allocation, as
    /// the shard hands it out), else found by hashing.
    pub(super) fn locate(&self, slot: u32, key: &Arc<str>) -> Option<usize> {
        match self.slots.get(slot as usize) {
            Some(Some(s)) if Arc::ptr_eq(&s.key, key) => Some(slot as usize),
            _ => self.find(key),
        }
    }

    /// Makes `key` resident with `entity` (it must not be already); returns its slot.
    pub(super) fn push(&mut self, key: Arc<str>, entity: Entity) -> usize {
        debug_assert!(!self.contains(&key));
        let hash = self.hasher.hash_one(&*key);
        let slot = match self.free.pop() {
            Some(s) => {
                self.slots[s as usize] = Some(Slot { key, entity });
                s
            }
            None => {
                self.slots.push(Some(Slot { key, entity }));
                (self.slots.len() - 1) as u32
            }
        };
        let (slots, hasher) = (&self.slots, &self.hasher);
        self.index.insert_unique(hash, slot, |&s| {
            let key = slots[s as usize].as_ref().map_or("", |s| &*s.key);
            hasher.hash_one(key)
        });
        slot as usize
    }

    /// Removes the user in `slot` (its slot is free for the next one).
    pub(super) fn remove(&mut self, slot: usize) -> Option<Slot> {
        let gone = self.slots.get_mut(slot)?.take()?;
        let hash = self.hasher.hash_one(&*gone.key);
        if let Ok(entry) = self.index.find_entry(hash, |&s| s as usize == slot) {
            entry.remove();
        }
        self.free.push(slot as u32);
        Some(gone)
    }

    /// Resident users.
    pub(super) fn len(&self) -> usize {
        self.slots.len() - self.free.len()
    }

    /// Slots, taken and free: what a sweep over [`Residents::get_mut`] covers.
    pub(super) fn span(&self) -> usize {
        self.slots.len()
    }

    pub(super) fn get(&self, slot: usize) -> Option<&Slot> {
        self.slots.get(slot)?.as_ref()
    }

    pub(super) fn get_mut(&mut self, slot: usize) -> Option<&mut Slot> {
        self.slots.get_mut(slot)?.as_mut()
    }

    fn key_at(&self, slot: u32) -> Option<&str> {
        self.get(slot as usize).map(|s| &*s.key)
    }
}

/// A slot known to be taken (from [`Residents::find`] or [`Residents::push`] since the last
/// removal): anything else is a bug in the shard.
impl Index<usize> for Residents {
    type Output = Slot;
    fn index(&self, slot: usize) -> &Slot {
        self.get(slot).expect("a resident user's slot")
    }
}

impl IndexMut<usize> for Residents {
    fn index_mut(&mut self, slot: usize) -> &mut Slot {
        self.get_mut(slot).expect("a resident user's slot")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::user::UserState;

    fn user(i: usize) -> Arc<str> {
        Arc::from(format!("u-{i}"))
    }

    #[test]
    fn slots_stay_put_and_are_reused() {
        let mut r = Residents::default();
        let keys: Vec<Arc<str>> = (0..100).map(user).collect();
        for (i, key) in keys.iter().enumerate() {
            assert_eq!(r.push(key.clone(), Entity::new(UserState::new(), None)), i);
        }
        for slot in [0, 50, 97, 10] {
            let gone = r.remove(slot).expect("taken");
            assert!(r.find(&gone.key).is_none());
        }
        assert!(r.remove(10).is_none(), "already free");
        assert_eq!((r.len(), r.span()), (96, 100));
        for (slot, key) in keys.iter().enumerate() {
            let want = (![0, 50, 97, 10].contains(&slot)).then_some(slot);
            assert_eq!(r.find(key), want, "{key}");
            assert_eq!(r.locate(slot as u32, key), want, "{key}");
        }
        let again = r.push(user(1000), Entity::new(UserState::new(), None));
        assert!([0, 50, 97, 10].contains(&again), "a free slot is reused");
        assert_eq!(r.span(), 100);
        // A slot reused by another user is not taken for the old key's; a copy of a key (not
        // the shard's allocation) is found by hashing.
        let old = &keys[again];
        assert_eq!(r.locate(again as u32, old), None);
        assert_eq!(r.locate(again as u32, &user(1000)), Some(again));
        assert_eq!(r.locate(3, &user(1000)), Some(again));
    }
}
