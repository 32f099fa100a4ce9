//! A shard's resident users: their slots in one vector, found by key through a hash table of
//! slot numbers. The table holds 4 bytes per user and hashes the key where the slot keeps it
//! (a map from key to slot would hold the 16-byte key a second time).
//!
//! A user keeps its slot while resident (a passivated user's slot is reused by a later one),
//! so a flush can name its users by slot and find them again without hashing: [`locate`]
//! checks the slot still holds the same key allocation, which costs no string comparison.
//!
//! A durable user idle long enough is **packed** ([`Residents::pack`]): its state becomes the
//! compact bytes of `domain::packed_state` and its slot shrinks to the key, those bytes and
//! the sweeps' bookkeeping. Only [`Residents::find`] and [`Residents::locate`] hand out slot
//! numbers, and they unpack first, so every slot the shard indexes holds a live user; a
//! packed user whose bytes do not read back (never expected) is passivated instead — it is
//! durable, so its next record reloads it from the stores.
//!
//! [`locate`]: Residents::locate

use std::ops::{Index, IndexMut};
use std::sync::Arc;

use hashbrown::HashTable;

use crate::domain::packed_state::{pack, unpack, PackedState};
use crate::domain::user::UserState;
use crate::prefetch::{prefetch, prefetch_bytes};

use super::{Entity, Slot};

/// A slot of the vector.
enum Cell {
    Free,
    Live(Slot),
    Packed(PackedSlot),
}

/// A packed user: what the sweeps read, and its state's bytes.
struct PackedSlot {
    key: Arc<str>,
    state: PackedState,
    size_bound: u32,
    last_active: u32,
    hits: u8,
}

impl Cell {
    fn key(&self) -> Option<&Arc<str>> {
        match self {
            Cell::Free => None,
            Cell::Live(s) => Some(&s.key),
            Cell::Packed(p) => Some(&p.key),
        }
    }
}

/// What the passivation sweeps see of a resident user, live or packed.
pub(super) struct Standing<'a> {
    /// Nothing of it waits to be written.
    pub durable: bool,
    pub hits: &'a mut u8,
    pub last_active: u32,
    pub packed: bool,
}

#[derive(Default)]
pub(super) struct Residents {
    slots: Vec<Cell>,
    /// Empty slots, reused before the vector grows.
    free: Vec<u32>,
    index: HashTable<u32>,
    hasher: ahash::RandomState,
    packed: usize,
    /// Packed users dropped because their bytes did not read back, not yet reported.
    lost: usize,
    /// Packed users unpacked, not yet reported.
    unpacked: usize,
}

impl Residents {
    /// The slot of `key`, if resident, its user unpacked if it was packed.
    pub(super) fn find(&mut self, key: &str) -> Option<usize> {
        let slot = self.find_any(key)?;
        self.unpacked(slot)
    }

    fn find_any(&self, key: &str) -> Option<usize> {
        let hash = self.hasher.hash_one(key);
        self.index
            .find(hash, |&s| self.key_at(s) == Some(key))
            .map(|&s| s as usize)
    }

    /// Prefetching: the slot of `key` if resident and live, its boxed state asked for (see
    /// `crate::prefetch`). Changes nothing; the slot is only good until the residents change.
    pub(super) fn warm(&self, key: &str) -> Option<u32> {
        let slot = self.find_any(key)?;
        let Cell::Live(s) = &self.slots[slot] else {
            return None;
        };
        let state: *const UserState = &*s.entity.state;
        prefetch_bytes(state.cast(), std::mem::size_of::<UserState>());
        Some(slot as u32)
    }

    /// Prefetching, by slot number (see `crate::prefetch`), in three steps a few slots apart so
    /// each finds what the one before asked for: the slot itself (its address needs no
    /// load), then its boxed state, then the parts an event or a snapshot touches.
    pub(super) fn warm_slot(&self, slot: u32) {
        let slots = self.slots.as_ptr();
        if (slot as usize) < self.slots.len() {
            prefetch_bytes(
                slots.wrapping_add(slot as usize).cast(),
                std::mem::size_of::<Cell>(),
            );
        }
    }

    /// The second step of [`Residents::warm_slot`]: the live state in `slot`.
    pub(super) fn warm_state(&self, slot: u32) {
        if let Some(Cell::Live(s)) = self.slots.get(slot as usize) {
            let state: *const UserState = &*s.entity.state;
            prefetch_bytes(state.cast(), std::mem::size_of::<UserState>());
        }
    }

    /// The last step: the parts of the live state in `slot` that an event reads and changes.
    pub(super) fn warm_parts(&self, slot: u32) {
        if let Some(Cell::Live(s)) = self.slots.get(slot as usize) {
            for addr in s.entity.state.storage_addrs() {
                prefetch(addr);
            }
            // The dedup window is read whole: its first four lines (21 ids) are asked for.
            let (seen, bytes) = s.entity.state.seen.storage_span();
            prefetch_bytes(seen, bytes.min(4 * 64));
        }
    }

    /// Whether `slot` holds `key`'s user, live: a slot [`Residents::warm`] found is taken
    /// this way later in the batch, with one comparison of the (warmed) key instead of a
    /// lookup. Anything that changed the slot in between fails it.
    pub(super) fn holds(&self, slot: u32, key: &str) -> bool {
        matches!(self.slots.get(slot as usize), Some(Cell::Live(s)) if *s.key == *key)
    }

    /// Resident, packed or not (nothing is unpacked).
    pub(super) fn contains(&self, key: &str) -> bool {
        self.find_any(key).is_some()
    }

    /// The slot of `key`: `slot` if it still holds this very key (the same allocation, as
    /// the shard hands it out) live, else found by hashing (and unpacked).
    pub(super) fn locate(&mut self, slot: u32, key: &Arc<str>) -> Option<usize> {
        match self.slots.get(slot as usize) {
            Some(Cell::Live(s)) if Arc::ptr_eq(&s.key, key) => Some(slot as usize),
            _ => self.find(key),
        }
    }

    /// Makes `key` resident with `entity` (it must not be already); returns its slot.
    pub(super) fn push(&mut self, key: Arc<str>, entity: Entity) -> usize {
        debug_assert!(!self.contains(&key));
        let hash = self.hasher.hash_one(&*key);
        let cell = Cell::Live(Slot { key, entity });
        let slot = match self.free.pop() {
            Some(s) => {
                self.slots[s as usize] = cell;
                s
            }
            None => {
                self.slots.push(cell);
                (self.slots.len() - 1) as u32
            }
        };
        let (slots, hasher) = (&self.slots, &self.hasher);
        self.index.insert_unique(hash, slot, |&s| {
            let key = slots[s as usize].key().map_or("", |k| &**k);
            hasher.hash_one(key)
        });
        slot as usize
    }

    /// Removes the user in `slot` (its slot is free for the next one); whether one was there.
    pub(super) fn remove(&mut self, slot: usize) -> bool {
        let Some(cell) = self.slots.get_mut(slot) else {
            return false;
        };
        let gone = std::mem::replace(cell, Cell::Free);
        let Some(key) = gone.key() else {
            return false;
        };
        let hash = self.hasher.hash_one(&**key);
        if let Ok(entry) = self.index.find_entry(hash, |&s| s as usize == slot) {
            entry.remove();
        }
        if matches!(gone, Cell::Packed(_)) {
            self.packed -= 1;
        }
        self.free.push(slot as u32);
        true
    }

    /// Packs the live user in `slot` if it is durable, not quarantined, not in a merge and
    /// its state has only parts the packed form holds; whether it did.
    pub(super) fn pack(&mut self, slot: usize) -> bool {
        let Some(Cell::Live(Slot { entity: e, .. })) = self.slots.get(slot) else {
            return false;
        };
        if !e.durable() || e.quarantined.is_some() {
            return false;
        }
        let Some(state) = pack(&e.state) else {
            return false;
        };
        let Cell::Live(Slot { key, entity }) = std::mem::replace(&mut self.slots[slot], Cell::Free)
        else {
            unreachable!("checked live above");
        };
        self.slots[slot] = Cell::Packed(PackedSlot {
            key,
            state,
            size_bound: entity.size_bound,
            last_active: entity.last_active,
            hits: entity.hits,
        });
        self.packed += 1;
        true
    }

    /// `slot` with its user live: unpacked if packed; `None` (the user passivated) if its
    /// bytes do not read back.
    fn unpacked(&mut self, slot: usize) -> Option<usize> {
        let Cell::Packed(p) = &self.slots[slot] else {
            return Some(slot);
        };
        match unpack(&p.state) {
            Ok(state) => {
                let Cell::Packed(p) = std::mem::replace(&mut self.slots[slot], Cell::Free) else {
                    unreachable!("checked packed above");
                };
                let mut entity = Entity::new_sized(state, p.size_bound);
                entity.last_active = p.last_active;
                entity.hits = p.hits;
                self.slots[slot] = Cell::Live(Slot { key: p.key, entity });
                self.packed -= 1;
                self.unpacked += 1;
                Some(slot)
            }
            Err(e) => {
                tracing::error!(
                    user_id = %p.key,
                    error = %e,
                    "a packed user does not read back; passivating it (it is durable: its next record reloads it)"
                );
                self.remove(slot);
                self.lost += 1;
                None
            }
        }
    }

    /// Resident users.
    pub(super) fn len(&self) -> usize {
        self.slots.len() - self.free.len()
    }

    /// Resident users held packed.
    pub(super) fn packed(&self) -> usize {
        self.packed
    }

    /// Users passivated since the last call because their packed bytes did not read back.
    pub(super) fn take_lost(&mut self) -> usize {
        std::mem::take(&mut self.lost)
    }

    /// Users unpacked since the last call.
    pub(super) fn take_unpacked(&mut self) -> usize {
        std::mem::take(&mut self.unpacked)
    }

    /// Slots, taken and free: what a sweep over [`Residents::standing`] covers.
    pub(super) fn span(&self) -> usize {
        self.slots.len()
    }

    /// The user in `slot` as the passivation sweeps see it, live or packed.
    pub(super) fn standing(&mut self, slot: usize) -> Option<Standing<'_>> {
        match self.slots.get_mut(slot)? {
            Cell::Free => None,
            Cell::Live(s) => Some(Standing {
                durable: s.entity.durable(),
                hits: &mut s.entity.hits,
                last_active: s.entity.last_active,
                packed: false,
            }),
            Cell::Packed(p) => Some(Standing {
                durable: true,
                hits: &mut p.hits,
                last_active: p.last_active,
                packed: true,
            }),
        }
    }

    /// A live user's slot (`None` for a free or packed one).
    pub(super) fn get(&self, slot: usize) -> Option<&Slot> {
        match self.slots.get(slot)? {
            Cell::Live(s) => Some(s),
            _ => None,
        }
    }

    pub(super) fn get_mut(&mut self, slot: usize) -> Option<&mut Slot> {
        match self.slots.get_mut(slot)? {
            Cell::Live(s) => Some(s),
            _ => None,
        }
    }

    fn key_at(&self, slot: u32) -> Option<&str> {
        self.slots.get(slot as usize)?.key().map(|k| &**k)
    }
}

/// A slot known to hold a live user (from [`Residents::find`], [`Residents::locate`] or
/// [`Residents::push`], with no removal or packing since): anything else is a bug in the shard.
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
            assert!(r.remove(slot), "taken");
            assert!(r.find(&keys[slot]).is_none());
        }
        assert!(!r.remove(10), "already free");
        assert_eq!((r.len(), r.span()), (96, 100));
        for (slot, key) in keys.iter().enumerate() {
            let want = (![0, 50, 97, 10].contains(&slot)).then_some(slot);
            assert_eq!(r.find(key), want, "{key}");
            assert_eq!(r.locate(slot as u32, key), want, "{key}");
        }
        assert!(r.holds(1, &user(1)) && !r.holds(1, &user(2)));
        assert!(!r.holds(50, &user(50)), "a freed slot holds nobody");
        assert!(!r.holds(1000, &user(1)), "past the end");
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

    fn typical(i: usize) -> UserState {
        let mut state = UserState::new();
        let p = format!(
            r#"{{"messageId":"m{i}","type":"identify","userId":"u-{i}","timestamp":"2026-11-23T10:00:00Z","traits":{{"plan":"pro","email":"u-{i}@example.com"}},"tags":{{"add":["vip"]}}}}"#
        );
        let e = crate::domain::event::decode(p.as_bytes(), 1 << 20).unwrap();
        state.apply(None, &e, 1_000, crate::domain::user::DedupLimits::default());
        state
    }

    #[test]
    fn packed_users_unpack_when_found_and_keep_their_standing() {
        let mut r = Residents::default();
        let keys: Vec<Arc<str>> = (0..10).map(user).collect();
        for (i, key) in keys.iter().enumerate() {
            let slot = r.push(key.clone(), Entity::new(typical(i), None));
            r[slot].entity.last_active = 7;
            r[slot].entity.hits = 2;
        }
        // A user with something to write is not packed; a durable one is.
        r[3].entity.dirty = true;
        assert!(!r.pack(3));
        assert!(r.pack(4));
        assert!(!r.pack(4), "already packed");
        assert_eq!((r.len(), r.packed()), (10, 1));
        assert!(r.get(4).is_none(), "a packed slot is not handed out");
        assert!(!r.holds(4, &keys[4]), "nor taken as a hint");
        assert!(r.contains(&keys[4]));
        let standing = r.standing(4).unwrap();
        assert!(standing.durable && standing.packed);
        assert_eq!((*standing.hits, standing.last_active), (2, 7));
        // Found again: live, the same state, the same slot and standing.
        assert_eq!(r.find(&keys[4]), Some(4));
        assert_eq!(r.packed(), 0);
        assert_eq!(*r[4].entity.state, typical(4));
        assert_eq!((r[4].entity.hits, r[4].entity.last_active), (2, 7));
        // `locate` unpacks too, and removal of a packed user counts it out.
        assert!(r.pack(5) && r.pack(6));
        assert_eq!(r.locate(5, &keys[5]), Some(5));
        assert!(r.remove(6));
        assert_eq!((r.len(), r.packed(), r.take_lost()), (9, 0, 0));
    }
}
