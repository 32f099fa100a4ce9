//! The resident form of a user's profile: small sorted vectors of interned names instead of
//! B-tree maps of owned strings (a B-tree node is ~0.5 KB; five traits in a `Vec` are 240 B).
//! It serialises to the same JSON shape as [`UserProfile`], the document view.

use std::borrow::Cow;
use std::fmt;

use serde::de::{MapAccess, SeqAccess, Visitor};
use serde::ser::{SerializeMap, SerializeSeq};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;

use super::event::{Event, EventKind};
use super::names::{intern, Name};
use super::opt_ms::OptMs;
use super::thin_slice::ThinSlice;
use super::trait_value::TraitValue;
use super::user_profile::{EventStats, TraitLookup, UserProfile};

/// A map from names to values, sorted by name, copied on write: a profile's snapshot shares
/// it, and the next change copies only the map it touches. Exactly as many slots as entries
/// (one allocation), none when empty.
#[derive(Debug, Clone, PartialEq)]
pub struct NameMap<V>(ThinSlice<(Name, V)>);

impl<V> Default for NameMap<V> {
    fn default() -> Self {
        NameMap(ThinSlice::default())
    }
}

impl<V> NameMap<V> {
    fn slots(&self) -> &[(Name, V)] {
        self.0.as_slice()
    }

    /// Where its entries live, read without touching them: a hint for prefetching.
    pub fn storage_addr(&self) -> *const u8 {
        self.0.heap_addr()
    }

    fn find(&self, key: &str) -> Result<usize, usize> {
        self.slots().binary_search_by(|(k, _)| (**k).cmp(key))
    }

    pub fn get(&self, key: &str) -> Option<&V> {
        self.find(key).ok().map(|i| &self.slots()[i].1)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &V)> {
        self.slots().iter().map(|(k, v)| (&**k, v))
    }

    pub fn len(&self) -> usize {
        self.slots().len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Heap bytes held by this map's slots (names are shared, so not counted), with the
    /// shared allocation's counter and length.
    pub fn heap_bytes(&self) -> usize {
        self.0.heap_bytes()
    }

    /// From entries in any order; of a name given twice, the last value.
    fn from_entries(mut entries: Vec<(Name, V)>) -> Self {
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        // Of equal names (adjacent now, in their original order), the last one stays.
        let mut kept: Vec<(Name, V)> = Vec::with_capacity(entries.len());
        for e in entries {
            match kept.last_mut() {
                Some(last) if last.0 == e.0 => *last = e,
                _ => kept.push(e),
            }
        }
        NameMap(ThinSlice::from_exact(kept.len(), kept.into_iter()))
    }
}

impl<V> NameMap<V> {
    /// From entries already sorted by name, each name once; `None` if they are not.
    pub fn from_sorted(entries: Vec<(Name, V)>) -> Option<Self> {
        entries
            .windows(2)
            .all(|w| w[0].0 < w[1].0)
            .then(|| NameMap(ThinSlice::from_exact(entries.len(), entries.into_iter())))
    }
}

impl<V: Clone> NameMap<V> {
    /// Runs `f` on the value of `key`, if present (copying the map first if a snapshot
    /// shares it); whether it was.
    pub fn update(&mut self, key: &str, f: impl FnOnce(&mut V)) -> bool {
        match self.find(key) {
            Ok(i) => {
                self.0.with_mut(|slots| f(&mut slots[i].1));
                true
            }
            Err(_) => false,
        }
    }

    /// Sets `key`; interns the name only when the key is new.
    pub fn insert(&mut self, key: &str, value: V) {
        match self.find(key) {
            Ok(i) => self.0.with_mut(|slots| slots[i].1 = value),
            Err(i) => {
                let old = self.slots();
                let slots = old[..i]
                    .iter()
                    .cloned()
                    .chain(std::iter::once((intern(key), value)))
                    .chain(old[i..].iter().cloned());
                self.0 = ThinSlice::from_exact(old.len() + 1, slots);
            }
        }
    }

    pub fn remove(&mut self, key: &str) {
        if let Ok(i) = self.find(key) {
            let old = self.slots();
            let kept = old[..i].iter().chain(&old[i + 1..]).cloned();
            self.0 = ThinSlice::from_exact(old.len() - 1, kept);
        }
    }
}

impl<V: Serialize> Serialize for NameMap<V> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.len()))?;
        for (k, v) in self.slots() {
            map.serialize_entry(&**k, v)?;
        }
        map.end()
    }
}

impl<'de, V: Deserialize<'de>> Deserialize<'de> for NameMap<V> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V2<V>(std::marker::PhantomData<V>);
        impl<'de, V: Deserialize<'de>> Visitor<'de> for V2<V> {
            type Value = NameMap<V>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a map")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<Self::Value, A::Error> {
                let mut entries = Vec::with_capacity(a.size_hint().unwrap_or(0));
                while let Some((k, v)) = a.next_entry::<super::json_str::Str<'de>, V>()? {
                    entries.push((intern(&k), v));
                }
                Ok(NameMap::from_entries(entries))
            }
        }
        d.deserialize_map(V2(std::marker::PhantomData))
    }
}

/// A set of names, sorted, copied on write like [`NameMap`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NameSet(ThinSlice<Name>);

impl NameSet {
    /// Where its names live, read without touching them: a hint for prefetching.
    pub fn storage_addr(&self) -> *const u8 {
        self.0.heap_addr()
    }

    /// From names already sorted, each once; `None` if they are not.
    pub fn from_sorted(names: Vec<Name>) -> Option<Self> {
        names
            .windows(2)
            .all(|w| w[0] < w[1])
            .then(|| NameSet(ThinSlice::from_exact(names.len(), names.into_iter())))
    }

    fn names(&self) -> &[Name] {
        self.0.as_slice()
    }

    fn find(&self, key: &str) -> Result<usize, usize> {
        self.names().binary_search_by(|k| (**k).cmp(key))
    }

    pub fn contains(&self, key: &str) -> bool {
        self.find(key).is_ok()
    }

    pub fn insert(&mut self, key: &str) {
        if let Err(i) = self.find(key) {
            let old = self.names();
            let names = old[..i]
                .iter()
                .cloned()
                .chain(std::iter::once(intern(key)))
                .chain(old[i..].iter().cloned());
            self.0 = ThinSlice::from_exact(old.len() + 1, names);
        }
    }

    pub fn remove(&mut self, key: &str) {
        if let Ok(i) = self.find(key) {
            let old = self.names();
            let kept = old[..i].iter().chain(&old[i + 1..]).cloned();
            self.0 = ThinSlice::from_exact(old.len() - 1, kept);
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = &str> {
        self.names().iter().map(|k| &**k)
    }

    pub fn len(&self) -> usize {
        self.names().len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Heap bytes of the shared allocation (counter, length and names).
    pub fn heap_bytes(&self) -> usize {
        self.0.heap_bytes()
    }
}

impl Serialize for NameSet {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(self.len()))?;
        for k in self.names() {
            seq.serialize_element(&**k)?;
        }
        seq.end()
    }
}

impl<'de> Deserialize<'de> for NameSet {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = NameSet;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a list of strings")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> Result<NameSet, A::Error> {
                let mut names = Vec::with_capacity(a.size_hint().unwrap_or(0));
                while let Some(k) = a.next_element::<super::json_str::Str<'de>>()? {
                    names.push(intern(&k));
                }
                names.sort();
                names.dedup();
                Ok(NameSet(ThinSlice::from_exact(
                    names.len(),
                    names.into_iter(),
                )))
            }
        }
        d.deserialize_seq(V)
    }
}

/// The resident profile: what the `users` document shows, in compact form.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Profile {
    #[serde(default)]
    pub traits: NameMap<TraitValue>,
    #[serde(default)]
    pub tags: NameSet,
    #[serde(default)]
    pub event_count: i64,
    #[serde(default)]
    pub events: NameMap<EventStats>,
    #[serde(default)]
    pub first_seen: OptMs,
    #[serde(default)]
    pub last_seen: OptMs,
    /// Group id → that group's traits.
    #[serde(default, skip_serializing_if = "NameMap::is_empty")]
    pub groups: NameMap<NameMap<TraitValue>>,
}

/// Most bytes one applied event adds to a profile's JSON beyond what [`growth_bound`] counts
/// from its payload (a counter's extra digit, timestamps, the braces of a new event name).
pub const GROWTH_SLACK: usize = 128;

/// An upper bound of the bytes an event of `payload_len` bytes can add to a profile's JSON:
/// whatever it adds comes from its payload (trait values, names), each byte at most a few
/// times over once nested under dotted names.
pub fn growth_bound(payload_len: usize) -> usize {
    payload_len.saturating_mul(4).saturating_add(GROWTH_SLACK)
}

impl Profile {
    /// Where its event counts, traits and tags live, read without touching them: hints for
    /// prefetching.
    pub fn storage_addrs(&self) -> [*const u8; 3] {
        [
            self.events.storage_addr(),
            self.traits.storage_addr(),
            self.tags.storage_addr(),
        ]
    }

    /// Bytes of the profile serialized as JSON — what `limits.max_profile_bytes` bounds —
    /// counted without building the text.
    pub fn serialized_len(&self) -> usize {
        struct Count(usize);
        impl std::io::Write for Count {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                self.0 += buf.len();
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let mut count = Count(0);
        // Serializing plain maps and values into a counter cannot fail.
        let _ = serde_json::to_writer(&mut count, self);
        count.0
    }

    /// Applies one event's effect (no dedup: see `UserState::apply`). Same semantics as
    /// [`UserProfile::apply`], which the property tests hold it to.
    pub fn apply(&mut self, event: &Event) {
        if matches!(event.kind, EventKind::Alias { .. }) {
            // A merge, not a change of this profile (see `domain::merge`).
            return;
        }
        let t = event.timestamp_ms;
        self.first_seen = Some(self.first_seen.get().map_or(t, |f| f.min(t))).into();
        self.last_seen = Some(self.last_seen.get().map_or(t, |l| l.max(t))).into();
        match &event.kind {
            EventKind::Identify {
                traits,
                tags_add,
                tags_remove,
            } => {
                for (key, value) in traits {
                    match value {
                        Some(v) => self.traits.insert(key, v.clone()),
                        None => self.traits.remove(key),
                    }
                }
                // Add is applied before remove (REFERENCE.md §2).
                for tag in tags_add {
                    self.tags.insert(tag);
                }
                for tag in tags_remove {
                    self.tags.remove(tag);
                }
            }
            EventKind::Track { event: name, .. } => {
                self.event_count += 1;
                let seen = self.events.update(name, |stats| {
                    stats.count += 1;
                    stats.first_at = stats.first_at.min(t);
                    stats.last_at = stats.last_at.max(t);
                });
                if !seen {
                    let first = EventStats {
                        count: 1,
                        first_at: t,
                        last_at: t,
                    };
                    self.events.insert(name, first);
                }
            }
            EventKind::Alias { .. } => {}
            EventKind::Group { group_id, traits } => {
                if self.groups.get(group_id).is_none() {
                    self.groups.insert(group_id, NameMap::default());
                }
                self.groups.update(group_id, |group| {
                    for (key, value) in traits {
                        match value {
                            Some(v) => group.insert(key, v.clone()),
                            None => group.remove(key),
                        }
                    }
                });
            }
        }
    }

    /// The document view (B-tree maps, for comparisons and tests).
    pub fn to_view(&self) -> UserProfile {
        UserProfile {
            traits: self
                .traits
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_value()))
                .collect(),
            tags: self.tags.iter().map(str::to_string).collect(),
            event_count: self.event_count,
            events: self
                .events
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect(),
            first_seen: self.first_seen.get(),
            last_seen: self.last_seen.get(),
            groups: self
                .groups
                .iter()
                .map(|(id, traits)| {
                    let traits = traits.iter().map(|(k, v)| (k.to_string(), v.to_value()));
                    (id.to_string(), traits.collect())
                })
                .collect(),
        }
    }

    pub fn from_view(view: &UserProfile) -> Profile {
        let mut p = Profile {
            event_count: view.event_count,
            first_seen: view.first_seen.into(),
            last_seen: view.last_seen.into(),
            ..Profile::default()
        };
        for (k, v) in &view.traits {
            p.traits.insert(k, TraitValue::from(v));
        }
        for t in &view.tags {
            p.tags.insert(t);
        }
        for (k, v) in &view.events {
            p.events.insert(k, v.clone());
        }
        for (id, traits) in &view.groups {
            let mut group = NameMap::default();
            for (k, v) in traits {
                group.insert(k, TraitValue::from(v));
            }
            p.groups.insert(id, group);
        }
        p
    }

    /// Heap bytes of this profile (trait string values approximated by their length).
    pub fn heap_bytes(&self) -> usize {
        fn traits_bytes(traits: &NameMap<TraitValue>) -> usize {
            let values: usize = traits.iter().map(|(_, v)| v.heap_bytes()).sum();
            traits.heap_bytes() + values
        }
        let groups: usize = self.groups.iter().map(|(_, g)| traits_bytes(g)).sum();
        traits_bytes(&self.traits)
            + self.tags.heap_bytes()
            + self.events.heap_bytes()
            + self.groups.heap_bytes()
            + groups
    }
}

impl TraitLookup for Profile {
    fn trait_value(&self, key: &str) -> Option<Cow<'_, Value>> {
        self.traits.get(key).map(TraitValue::as_json)
    }

    fn each_trait(&self, f: &mut dyn FnMut(&str, &Value)) {
        for (k, v) in self.traits.iter() {
            f(k, &v.as_json());
        }
    }

    fn each_event(&self, f: &mut dyn FnMut(&str, &EventStats)) {
        for (k, v) in self.events.iter() {
            f(k, v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn name_map_stays_sorted_and_exact() {
        let mut m = NameMap::default();
        for k in ["b", "a", "c", "a"] {
            m.insert(k, json!(k));
        }
        assert_eq!(
            m.iter().map(|(k, _)| k).collect::<Vec<_>>(),
            ["a", "b", "c"]
        );
        assert_eq!(m.len(), 3);
        m.remove("b");
        assert_eq!(m.get("b"), None);
        assert_eq!(m.get("c"), Some(&json!("c")));
    }

    #[test]
    fn serialises_like_the_document_view() {
        let mut p = Profile::default();
        p.traits.insert("plan", TraitValue::string("pro"));
        p.tags.insert("vip");
        p.events.insert(
            "buy",
            EventStats {
                count: 2,
                first_at: 1,
                last_at: 3,
            },
        );
        p.event_count = 2;
        let mut group = NameMap::default();
        group.insert("name", TraitValue::string("Acme"));
        p.groups.insert("g-1", group);
        let view = p.to_view();
        assert_eq!(
            serde_json::to_value(&p).unwrap(),
            serde_json::to_value(&view).unwrap()
        );
        let back: Profile = serde_json::from_value(serde_json::to_value(&view).unwrap()).unwrap();
        assert_eq!(back, p);
        assert_eq!(Profile::from_view(&view), p);
    }
}
