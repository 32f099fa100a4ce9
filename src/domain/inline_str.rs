//! Strings held in place: [`InlineStr`], up to `N` bytes inside the value, and [`SmallStr`], a
//! record's short strings (`messageId`, `userId`, a `track`'s event name) without an
//! allocation for the usual lengths.
//!
//! Every record carries strings that live only until it is applied: as `String`s they were
//! two or three allocations and frees per record, about a tenth of the allocator's work on the
//! engine's path. 38 bytes hold a UUID's 36 characters; longer ones (ids may have 128
//! characters, event names 64) go on the heap as before.

use std::borrow::{Borrow, Cow};
use std::fmt;
use std::hash::{Hash, Hasher};
use std::ops::Deref;

/// A string of at most `N` bytes (`N` ≤ 255), stored in place.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct InlineStr<const N: usize> {
    len: u8,
    bytes: [u8; N],
}

impl<const N: usize> InlineStr<N> {
    /// `s` in place, if it fits.
    pub fn new(s: &str) -> Option<Self> {
        const { assert!(N <= u8::MAX as usize) };
        (s.len() <= N).then(|| {
            let mut bytes = [0; N];
            bytes[..s.len()].copy_from_slice(s.as_bytes());
            InlineStr {
                len: s.len() as u8,
                bytes,
            }
        })
    }

    pub fn as_str(&self) -> &str {
        let bytes = &self.bytes[..usize::from(self.len)];
        // SAFETY: `new` is the only constructor and copies a whole `&str`, so these bytes are
        // that string's UTF-8, unchanged (the fields are private and never written after).
        unsafe { std::str::from_utf8_unchecked(bytes) }
    }
}

/// Longest string a [`SmallStr`] keeps in place (a UUID is 36 bytes); the whole value is 40.
pub const SMALL_INLINE_MAX: usize = 38;

/// A record's id or event name: in place up to [`SMALL_INLINE_MAX`] bytes, else one heap
/// allocation. Reads, compares, hashes and prints as the `str` it holds.
#[derive(Clone)]
pub struct SmallStr(Repr);

#[derive(Clone)]
enum Repr {
    Inline(InlineStr<SMALL_INLINE_MAX>),
    Heap(Box<str>),
}

const _: () = assert!(std::mem::size_of::<SmallStr>() == 40);

impl SmallStr {
    pub fn new(s: &str) -> SmallStr {
        match InlineStr::new(s) {
            Some(inline) => SmallStr(Repr::Inline(inline)),
            None => SmallStr(Repr::Heap(Box::from(s))),
        }
    }

    pub fn as_str(&self) -> &str {
        match &self.0 {
            Repr::Inline(s) => s.as_str(),
            Repr::Heap(s) => s,
        }
    }
}

impl Deref for SmallStr {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl AsRef<str> for SmallStr {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl Borrow<str> for SmallStr {
    fn borrow(&self) -> &str {
        self.as_str()
    }
}

impl From<&str> for SmallStr {
    fn from(s: &str) -> SmallStr {
        SmallStr::new(s)
    }
}

impl From<String> for SmallStr {
    fn from(s: String) -> SmallStr {
        match InlineStr::new(&s) {
            Some(inline) => SmallStr(Repr::Inline(inline)),
            None => SmallStr(Repr::Heap(s.into_boxed_str())),
        }
    }
}

impl From<Cow<'_, str>> for SmallStr {
    fn from(s: Cow<'_, str>) -> SmallStr {
        match s {
            Cow::Borrowed(s) => SmallStr::new(s),
            Cow::Owned(s) => SmallStr::from(s),
        }
    }
}

impl From<&SmallStr> for String {
    fn from(s: &SmallStr) -> String {
        s.as_str().to_owned()
    }
}

impl From<SmallStr> for String {
    fn from(s: SmallStr) -> String {
        match s.0 {
            Repr::Inline(s) => s.as_str().to_owned(),
            Repr::Heap(s) => s.into_string(),
        }
    }
}

impl PartialEq for SmallStr {
    fn eq(&self, other: &SmallStr) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for SmallStr {}

impl PartialEq<str> for SmallStr {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for SmallStr {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl PartialEq<String> for SmallStr {
    fn eq(&self, other: &String) -> bool {
        self.as_str() == other.as_str()
    }
}

impl PartialEq<SmallStr> for String {
    fn eq(&self, other: &SmallStr) -> bool {
        self.as_str() == other.as_str()
    }
}

impl PartialEq<SmallStr> for str {
    fn eq(&self, other: &SmallStr) -> bool {
        self == other.as_str()
    }
}

impl PartialEq<SmallStr> for &str {
    fn eq(&self, other: &SmallStr) -> bool {
        *self == other.as_str()
    }
}

impl PartialOrd for SmallStr {
    fn partial_cmp(&self, other: &SmallStr) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for SmallStr {
    fn cmp(&self, other: &SmallStr) -> std::cmp::Ordering {
        self.as_str().cmp(other.as_str())
    }
}

/// As the `str`'s hash, so that maps keyed by `SmallStr` can be searched with a `&str`.
impl Hash for SmallStr {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_str().hash(state)
    }
}

impl serde::Serialize for SmallStr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl fmt::Debug for SmallStr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for SmallStr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self.as_str(), f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn short_and_long_ids_read_back_whole() {
        let uuid = "0b6a3c6e-2f1d-4c8e-9a57-3d2b1e0f4a11";
        let exact = "x".repeat(SMALL_INLINE_MAX);
        let long = "é".repeat(64); // 128 bytes, multi-byte characters
        for s in ["", "u-1", uuid, exact.as_str(), long.as_str()] {
            let id = SmallStr::new(s);
            assert_eq!(id.as_str(), s);
            assert_eq!(SmallStr::from(s.to_string()), id);
            assert_eq!(SmallStr::from(Cow::Borrowed(s)), id);
            assert_eq!(String::from(id.clone()), s);
            assert_eq!(id.to_string(), s);
            assert_eq!(format!("{id:?}"), format!("{s:?}"));
        }
        assert!(matches!(SmallStr::new(uuid).0, Repr::Inline(_)));
        assert!(matches!(SmallStr::new(&exact).0, Repr::Inline(_)));
        let over = "x".repeat(SMALL_INLINE_MAX + 1);
        assert!(matches!(SmallStr::new(&over).0, Repr::Heap(_)));
    }

    #[test]
    fn compares_and_hashes_as_its_text() {
        let a = SmallStr::new("a-1");
        assert_eq!(a, "a-1");
        assert_eq!(a, *"a-1");
        assert_eq!(a, "a-1".to_string());
        let owned = String::from("a-1");
        assert!("a-1" == a && *"a-1" == a && owned == a);
        assert!(a < SmallStr::new("a-2") && SmallStr::new("b") > a);
        let mut map: HashMap<SmallStr, u32> = HashMap::new();
        map.insert(a, 1);
        map.insert(SmallStr::new(&"y".repeat(100)), 2);
        assert_eq!(map.get("a-1"), Some(&1));
        assert_eq!(map.get("y".repeat(100).as_str()), Some(&2));
        assert_eq!(map.get("a-2"), None);
    }

    #[test]
    fn inline_strings_hold_up_to_their_size() {
        assert_eq!(InlineStr::<4>::new("abcd").unwrap().as_str(), "abcd");
        assert!(InlineStr::<4>::new("abcde").is_none());
        assert_eq!(InlineStr::<4>::new("").unwrap().as_str(), "");
    }
}
