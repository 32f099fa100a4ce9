//! An immutable shared string behind an 8-byte pointer (`Arc<str>` is 16: a pointer and a
//! length). The length lives in the one allocation with the counter and the bytes, so a
//! resident profile's names and long trait strings cost half the pointer bytes.

use std::borrow::Borrow;
use std::cmp::Ordering;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::ops::Deref;

use triomphe::ThinArc;

/// A shared string; clones share the allocation. Compares, orders and hashes as its text.
#[derive(Clone)]
pub struct ThinStr(ThinArc<(), u8>);

const _: () = assert!(std::mem::size_of::<ThinStr>() == 8);

impl ThinStr {
    pub fn new(s: &str) -> ThinStr {
        ThinStr(ThinArc::from_header_and_slice((), s.as_bytes()))
    }

    pub fn as_str(&self) -> &str {
        // SAFETY: `new` is the only constructor and copies a whole `&str`; the shared bytes
        // are never written after.
        unsafe { std::str::from_utf8_unchecked(&self.0.slice) }
    }

    /// Whether both share one allocation.
    pub fn ptr_eq(a: &ThinStr, b: &ThinStr) -> bool {
        a.0.ptr() == b.0.ptr()
    }

    /// Bytes of the shared allocation (its counter and length, then the text).
    pub fn allocation_bytes(&self) -> usize {
        2 * std::mem::size_of::<usize>() + self.len()
    }
}

impl Deref for ThinStr {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl Borrow<str> for ThinStr {
    fn borrow(&self) -> &str {
        self.as_str()
    }
}

impl From<&str> for ThinStr {
    fn from(s: &str) -> ThinStr {
        ThinStr::new(s)
    }
}

impl PartialEq for ThinStr {
    fn eq(&self, other: &ThinStr) -> bool {
        ThinStr::ptr_eq(self, other) || self.as_str() == other.as_str()
    }
}

impl Eq for ThinStr {}

impl PartialOrd for ThinStr {
    fn partial_cmp(&self, other: &ThinStr) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for ThinStr {
    fn cmp(&self, other: &ThinStr) -> Ordering {
        self.as_str().cmp(other.as_str())
    }
}

impl Hash for ThinStr {
    // As `str` hashes, so a set of these is searched with a `&str` (`Borrow`).
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_str().hash(state)
    }
}

impl fmt::Debug for ThinStr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for ThinStr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn behaves_as_its_text() {
        let a = ThinStr::new("plan");
        let b = ThinStr::new("plan");
        assert!(!ThinStr::ptr_eq(&a, &b));
        assert_eq!(a, b);
        assert!(ThinStr::ptr_eq(&a, &a.clone()));
        assert!(ThinStr::new("a") < ThinStr::new("b"));
        assert_eq!(&*ThinStr::new(""), "");
        assert_eq!(ThinStr::new("日本").as_str(), "日本");
        let set: HashSet<ThinStr> = [a].into_iter().collect();
        assert!(set.contains("plan"));
        assert_eq!(format!("{b:?} {b}"), "\"plan\" plan");
    }
}
