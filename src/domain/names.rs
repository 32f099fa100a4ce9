//! Interned names: trait keys, tag values and event names repeat across millions of users, so
//! a resident user holds a shared [`ThinStr`] (8 bytes) per name instead of its own string.
//!
//! The table is bounded ([`MAX_INTERNED`]): beyond it a name is still correct, just not shared,
//! so a stream of unbounded distinct names cannot grow this table without limit.

use std::cell::RefCell;
use std::collections::HashSet;
use std::sync::OnceLock;

use parking_lot::RwLock;

use super::thin_str::ThinStr;

pub type Name = ThinStr;

/// Most names shared process-wide.
pub const MAX_INTERNED: usize = 100_000;
/// Most names each thread keeps in front of the shared table (no lock on a hit).
const MAX_LOCAL: usize = 8_192;

fn table() -> &'static RwLock<HashSet<Name, ahash::RandomState>> {
    static TABLE: OnceLock<RwLock<HashSet<Name, ahash::RandomState>>> = OnceLock::new();
    TABLE.get_or_init(|| RwLock::new(HashSet::default()))
}

thread_local! {
    static LOCAL: RefCell<HashSet<Name, ahash::RandomState>> = RefCell::new(HashSet::default());
}

/// The shared `Name` for `s`.
pub fn intern(s: &str) -> Name {
    if let Some(n) = LOCAL.with(|l| l.borrow().get(s).cloned()) {
        return n;
    }
    let shared = {
        let read = table().read();
        read.get(s).cloned()
    };
    let name = match shared {
        Some(n) => n,
        None => {
            let mut write = table().write();
            match write.get(s) {
                Some(n) => n.clone(),
                None => {
                    let n = Name::new(s);
                    if write.len() < MAX_INTERNED {
                        write.insert(n.clone());
                    }
                    n
                }
            }
        }
    };
    LOCAL.with(|l| {
        let mut l = l.borrow_mut();
        if l.len() < MAX_LOCAL {
            l.insert(name.clone());
        }
    });
    name
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_names_share_one_allocation() {
        let a = intern("plan");
        let b = intern("plan");
        assert!(Name::ptr_eq(&a, &b));
        let c = std::thread::spawn(|| intern("plan")).join().unwrap();
        assert!(Name::ptr_eq(&a, &c));
        assert_eq!(&*intern("other"), "other");
    }
}
