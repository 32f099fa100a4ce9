//! A shard's resident users: their slots in one vector, found by key through a hash table of
//! slot numbers. The table holds 4 bytes per user and hashes the key where the slot keeps it
//! (a map from key to slot would hold the 16-byte key a second time).

use std::ops::{Index, IndexMut};
use std::sync::Arc;

use hashbrown::HashTable;

use super::{Entity, Slot};

#[derive(Default)]
pub(super) struct Residents {
    slots: Vec<Slot>,
    index: HashTable<u32>,
    hasher: ahash::RandomState,
}

impl Residents {
    /// The slot of `key`, if resident.
    pub(super) fn find(&self, key: &str) -> Option<usize> {
        let hash = self.hasher.hash_one(key);
        self.index
            .find(hash, |&s| &*self.slots[s as usize].key == key)
            .map(|&s| s as usize)
    }

    pub(super) fn contains(&self, key: &str) -> bool {
        self.find(key).is_some()
    }

    /// Makes `key` resident with `entity` (it must not be already); returns its slot.
    pub(super) fn push(&mut self, key: Arc<str>, entity: Entity) -> usize {
        debug_assert!(!self.contains(&key));
        let slot = self.slots.len();
        let hash = self.hasher.hash_one(&*key);
        self.slots.push(Slot { key, entity });
        let (slots, hasher) = (&self.slots, &self.hasher);
        self.index.insert_unique(hash, slot as u32, |&s| {
            hasher.hash_one(&*slots[s as usize].key)
        });
        slot
    }

    /// Removes the user in `slot`; the last slot's user moves into it.
    pub(super) fn swap_remove(&mut self, slot: usize) -> Slot {
        let last = self.slots.len() - 1;
        self.forget(slot);
        if slot != last {
            // The last user's entry now names the slot it moves into.
            let hash = self.hasher.hash_one(&*self.slots[last].key);
            if let Some(s) = self.index.find_mut(hash, |&s| s as usize == last) {
                *s = slot as u32;
            }
        }
        self.slots.swap_remove(slot)
    }

    fn forget(&mut self, slot: usize) {
        let hash = self.hasher.hash_one(&*self.slots[slot].key);
        if let Ok(entry) = self.index.find_entry(hash, |&s| s as usize == slot) {
            entry.remove();
        }
    }

    pub(super) fn len(&self) -> usize {
        self.slots.len()
    }
}

impl Index<usize> for Residents {
    type Output = Slot;
    fn index(&self, slot: usize) -> &Slot {
        &self.slots[slot]
    }
}

impl IndexMut<usize> for Residents {
    fn index_mut(&mut self, slot: usize) -> &mut Slot {
        &mut self.slots[slot]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::user::UserState;

    fn keys(r: &Residents) -> Vec<String> {
        (0..r.len()).map(|s| r[s].key.to_string()).collect()
    }

    #[test]
    fn finds_every_resident_after_removals() {
        let mut r = Residents::default();
        for i in 0..100 {
            let key: Arc<str> = Arc::from(format!("u-{i}"));
            assert_eq!(r.push(key, Entity::new(UserState::new(), None)), i);
        }
        for slot in [0, 50, 97, 10, 10] {
            let gone = r.swap_remove(slot);
            assert!(r.find(&gone.key).is_none());
        }
        assert_eq!(r.len(), 95);
        for (slot, key) in keys(&r).iter().enumerate() {
            assert_eq!(r.find(key), Some(slot), "{key}");
        }
        let last = r.len() - 1;
        r.swap_remove(last);
        assert_eq!(r.len(), 94);
        assert!(keys(&r).iter().all(|k| r.contains(k)));
    }
}
