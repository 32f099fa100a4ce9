//! A resident user's state packed into one allocation of compact bytes, for users idle long
//! enough that their next record is not expected soon (`aggregator.pack_after_ms`). A live
//! state is a tree of fixed-size parts — 16-byte trait values, 32-byte event statistics,
//! 8-byte name pointers, a boxed state of 128 bytes — sized for changing it fast; packed, the
//! same state is its content only: names as their bytes, integers as variable-length
//! (LEB128) numbers, instants as differences from a nearby instant. A typical user (5 traits,
//! 3 tags, 5 event names, 10 remembered ids) packs into ≈ 320 bytes, against ≈ 650 live.
//!
//! [`unpack`] gives back a state equal to the one packed (property-tested): the same names
//! (interned again), the same trait value kinds, the same dedup entries and instants. The rare
//! parts — arrays and objects as trait values, a merge part — are packed as their JSON text.
//!
//! The form lives only in memory and only in this process: it is never stored or sent, so it
//! has no schema version.
//!
//! Layout, in order: version; positions (count, then partition and offset); event count;
//! `first_seen`, `last_seen` (as a difference from `first_seen`); traits (count, then name and
//! value: a kind byte and its payload); tags (count, names); event statistics (count, then
//! name, count, first instant as a difference from `first_seen`, last as a difference from the
//! first); the dedup window (count, the first entry's instant, then each fingerprint as 8 bytes
//! and its instant as a difference from the entry before); groups (count, then name and traits
//! as above); the merge part (its JSON text, empty for none). Unsigned numbers are LEB128,
//! signed ones zigzag LEB128, names and strings a length and UTF-8 bytes. Differences wrap, so
//! any `i64` survives.

use std::fmt;
use std::sync::Arc;

use super::dedup::DedupWindow;
use super::identity::Identity;
use super::names::{intern, Name};
use super::opt_ms::OptMs;
use super::positions::Positions;
use super::profile::{NameMap, NameSet, Profile};
use super::stored_state::Unreadable;
use super::thin_slice::ThinSlice;
use super::thin_str::ThinStr;
use super::trait_value::TraitValue;
use super::user::{EventStats, UserState};

/// Packed bytes behind an 8-byte pointer.
pub struct PackedState(ThinSlice<u8>);

const _: () = assert!(std::mem::size_of::<PackedState>() == 8);

impl PackedState {
    /// Bytes taken as a packed state as they are (for fuzzing [`unpack`]; Herald itself only
    /// unpacks what [`pack`] wrote).
    pub fn from_bytes(bytes: &[u8]) -> PackedState {
        PackedState(ThinSlice::from_slice(bytes))
    }

    pub fn as_bytes(&self) -> &[u8] {
        self.0.as_slice()
    }

    pub fn len(&self) -> usize {
        self.0.as_slice().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes of its allocation (counter, length, the packed bytes).
    pub fn heap_bytes(&self) -> usize {
        self.0.heap_bytes()
    }
}

impl fmt::Debug for PackedState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PackedState({} bytes)", self.len())
    }
}

// Trait value kinds.
const NULL: u8 = 0;
const FALSE: u8 = 1;
const TRUE: u8 = 2;
const POS_INT: u8 = 3;
const NEG_INT: u8 = 4;
const FLOAT: u8 = 5;
const INLINE: u8 = 6;
const SHARED: u8 = 7;
/// An array or an object, as JSON text.
const JSON: u8 = 8;

/// `state` packed (`None` only if its merge part or a JSON trait value does not serialise,
/// which serde_json does not do for these types: the user then stays live).
pub fn pack(state: &UserState) -> Option<PackedState> {
    let p = &state.profile;
    let mut w = Writer(Vec::with_capacity(256));
    w.unsigned(state.version);
    w.unsigned(state.positions.len() as u64);
    for (partition, offset) in state.positions.iter() {
        w.unsigned(u64::from(partition));
        w.unsigned(offset);
    }
    w.signed(p.event_count);
    let first = p.first_seen.raw();
    w.signed(first);
    w.signed(p.last_seen.raw().wrapping_sub(first));
    w.traits(&p.traits)?;
    w.unsigned(p.tags.len() as u64);
    for tag in p.tags.iter() {
        w.text(tag);
    }
    w.unsigned(p.events.len() as u64);
    for (name, stats) in p.events.iter() {
        w.text(name);
        w.signed(stats.count);
        w.signed(stats.first_at.wrapping_sub(first));
        w.signed(stats.last_at.wrapping_sub(stats.first_at));
    }
    w.unsigned(state.seen.len() as u64);
    let mut previous = None;
    for (fingerprint, at) in state.seen.entries() {
        w.0.extend_from_slice(&fingerprint.to_le_bytes());
        match previous {
            None => w.signed(at),
            Some(p) => w.signed(at.wrapping_sub(p)),
        }
        previous = Some(at);
    }
    w.unsigned(p.groups.len() as u64);
    for (name, traits) in p.groups.iter() {
        w.text(name);
        w.traits(traits)?;
    }
    match &state.identity {
        None => w.unsigned(0),
        Some(identity) => w.bytes(&serde_json::to_vec(identity).ok()?),
    }
    Some(PackedState(ThinSlice::from_slice(&w.0)))
}

/// The state [`pack`] packed. Bytes it did not write are [`Unreadable`] (never expected: the
/// form is only ever written by `pack` in this process).
pub fn unpack(packed: &PackedState) -> Result<UserState, Unreadable> {
    let mut r = Reader(packed.0.as_slice());
    let version = r.unsigned()?;
    let positions = r.count()?;
    let mut all = Vec::with_capacity(positions);
    for _ in 0..positions {
        let partition = u32::try_from(r.unsigned()?).map_err(|_| bad("a partition"))?;
        all.push((partition, r.unsigned()?));
    }
    let event_count = r.signed()?;
    let first = r.signed()?;
    let last = first.wrapping_add(r.signed()?);
    let traits = r.traits()?;
    let tags = r.count()?;
    let mut tag_names = Vec::with_capacity(tags);
    for _ in 0..tags {
        tag_names.push(intern(r.text()?));
    }
    let events = r.count()?;
    let mut event_slots: Vec<(Name, EventStats)> = Vec::with_capacity(events);
    for _ in 0..events {
        let name = intern(r.text()?);
        let count = r.signed()?;
        let first_at = first.wrapping_add(r.signed()?);
        let last_at = first_at.wrapping_add(r.signed()?);
        event_slots.push((
            name,
            EventStats {
                count,
                first_at,
                last_at,
            },
        ));
    }
    let seen = r.count()?;
    let mut entries = Vec::with_capacity(seen);
    let mut previous: Option<i64> = None;
    for _ in 0..seen {
        let fingerprint = u64::from_le_bytes(r.array()?);
        let at = match previous {
            None => r.signed()?,
            Some(p) => p.wrapping_add(r.signed()?),
        };
        entries.push((fingerprint, at));
        previous = Some(at);
    }
    let groups = r.count()?;
    let mut group_slots = Vec::with_capacity(groups);
    for _ in 0..groups {
        let name = intern(r.text()?);
        group_slots.push((name, r.traits()?));
    }
    let identity = match r.count()? {
        0 => None,
        n => Some(Box::new(
            serde_json::from_slice::<Identity>(r.take(n)?)
                .map_err(|e| bad(&format!("the merge part: {e}")))?,
        )),
    };
    if !r.0.is_empty() {
        return Err(bad("bytes after the merge part"));
    }
    let profile = Profile {
        traits,
        tags: NameSet::from_sorted(tag_names).ok_or_else(|| bad("tags' order"))?,
        event_count,
        events: NameMap::from_sorted(event_slots).ok_or_else(|| bad("event names' order"))?,
        first_seen: OptMs::from_raw(first),
        last_seen: OptMs::from_raw(last),
        groups: NameMap::from_sorted(group_slots).ok_or_else(|| bad("group names' order"))?,
    };
    Ok(UserState {
        version,
        profile,
        positions: Positions::from(all),
        seen: DedupWindow::from_entries(entries),
        identity,
    })
}

fn bad(what: &str) -> Unreadable {
    Unreadable(format!("a packed state does not read back: {what}"))
}

struct Writer(Vec<u8>);

impl Writer {
    fn byte(&mut self, b: u8) {
        self.0.push(b);
    }

    fn unsigned(&mut self, mut n: u64) {
        while n >= 0x80 {
            self.0.push((n as u8) | 0x80);
            n >>= 7;
        }
        self.0.push(n as u8);
    }

    /// Zigzag: small magnitudes of either sign take few bytes.
    fn signed(&mut self, n: i64) {
        self.unsigned(((n << 1) ^ (n >> 63)) as u64);
    }

    fn text(&mut self, s: &str) {
        self.bytes(s.as_bytes());
    }

    fn bytes(&mut self, b: &[u8]) {
        self.unsigned(b.len() as u64);
        self.0.extend_from_slice(b);
    }

    fn traits(&mut self, traits: &NameMap<TraitValue>) -> Option<()> {
        self.unsigned(traits.len() as u64);
        for (name, value) in traits.iter() {
            self.text(name);
            match value {
                TraitValue::Null => self.byte(NULL),
                TraitValue::Bool(false) => self.byte(FALSE),
                TraitValue::Bool(true) => self.byte(TRUE),
                TraitValue::PosInt(n) => {
                    self.byte(POS_INT);
                    self.unsigned(*n);
                }
                TraitValue::NegInt(n) => {
                    self.byte(NEG_INT);
                    self.signed(*n);
                }
                TraitValue::Float(f) => {
                    self.byte(FLOAT);
                    self.0.extend_from_slice(&f.to_bits().to_le_bytes());
                }
                TraitValue::Inline(s) => {
                    self.byte(INLINE);
                    self.text(s.as_str());
                }
                TraitValue::Shared(s) => {
                    self.byte(SHARED);
                    self.text(s);
                }
                TraitValue::Json(v) => {
                    self.byte(JSON);
                    self.bytes(&serde_json::to_vec(&**v).ok()?);
                }
            }
        }
        Some(())
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], Unreadable> {
        if self.0.len() < n {
            return Err(bad("it ends early"));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn byte(&mut self) -> Result<u8, Unreadable> {
        Ok(self.take(1)?[0])
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], Unreadable> {
        let mut out = [0; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn unsigned(&mut self) -> Result<u64, Unreadable> {
        let mut n = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.byte()?;
            n |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(n);
            }
        }
        Err(bad("a number over 64 bits"))
    }

    fn signed(&mut self) -> Result<i64, Unreadable> {
        let z = self.unsigned()?;
        Ok(((z >> 1) as i64) ^ -((z & 1) as i64))
    }

    /// A count of items that each take at least one byte: no larger than what is left, so a
    /// damaged count cannot make the reader reserve unbounded memory.
    fn count(&mut self) -> Result<usize, Unreadable> {
        let n = self.unsigned()?;
        usize::try_from(n)
            .ok()
            .filter(|&n| n <= self.0.len())
            .ok_or_else(|| bad("a count beyond its bytes"))
    }

    fn text(&mut self) -> Result<&'a str, Unreadable> {
        let n = self.count()?;
        std::str::from_utf8(self.take(n)?).map_err(|_| bad("text that is not UTF-8"))
    }

    fn traits(&mut self) -> Result<NameMap<TraitValue>, Unreadable> {
        let n = self.count()?;
        let mut slots: Vec<(Name, TraitValue)> = Vec::with_capacity(n);
        for _ in 0..n {
            let name = intern(self.text()?);
            let value = match self.byte()? {
                NULL => TraitValue::Null,
                FALSE => TraitValue::Bool(false),
                TRUE => TraitValue::Bool(true),
                POS_INT => TraitValue::PosInt(self.unsigned()?),
                // The forms the decoder makes: a negative integer, a finite float (JSON has
                // no NaN or infinity, and a NaN would not equal itself once read back).
                NEG_INT => match self.signed()? {
                    n if n < 0 => TraitValue::NegInt(n),
                    _ => return Err(bad("a negative integer that is not")),
                },
                FLOAT => match f64::from_bits(u64::from_le_bytes(self.array()?)) {
                    f if f.is_finite() => TraitValue::Float(f),
                    _ => return Err(bad("a float that is not finite")),
                },
                INLINE => TraitValue::string(self.text()?),
                SHARED => TraitValue::Shared(ThinStr::new(self.text()?)),
                JSON => {
                    let n = self.count()?;
                    let v = serde_json::from_slice(self.take(n)?)
                        .map_err(|e| bad(&format!("a JSON trait value: {e}")))?;
                    TraitValue::Json(Arc::new(v))
                }
                other => return Err(bad(&format!("trait value kind {other}"))),
            };
            slots.push((name, value));
        }
        NameMap::from_sorted(slots).ok_or_else(|| bad("trait names' order"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::event::decode;
    use crate::domain::user::{DedupLimits, Position};
    use proptest::prelude::*;

    fn typical() -> UserState {
        let mut state = UserState::new();
        let user = "user-00000001";
        for i in 0..2 {
            let p = format!(
                r#"{{"messageId":"{user}-i{i}","type":"identify","userId":"{user}","timestamp":"2026-11-23T10:00:0{i}Z","traits":{{"email":"{user}@example.com","phone":"+15550000001","first_name":"Ada{i}","plan":"pro","subscribed":true,"score":-3,"ratio":0.25,"nothing":null,"visits":12}},"tags":{{"add":["vip","beta","newsletter"]}}}}"#
            );
            let e = decode(p.as_bytes(), 1 << 20).unwrap();
            let pos = Position {
                partition: 3,
                offset: i,
            };
            state.apply(
                Some(pos),
                &e,
                1_700_000_000_000 + i as i64,
                DedupLimits::default(),
            );
        }
        for i in 0..8 {
            let event = ["viewed", "clicked", "added_to_cart", "bought", "shared"][i % 5];
            let p = format!(
                r#"{{"messageId":"{user}-t{i}","type":"track","userId":"{user}","timestamp":"2026-11-23T10:01:0{i}Z","event":"{event}"}}"#
            );
            let e = decode(p.as_bytes(), 1 << 20).unwrap();
            let pos = Position {
                partition: 3,
                offset: 10 + i as u64,
            };
            state.apply(
                Some(pos),
                &e,
                1_700_000_100_000 + i as i64,
                DedupLimits::default(),
            );
        }
        state.version = 7;
        state
    }

    #[test]
    fn a_typical_user_packs_small_and_reads_back_equal() {
        let state = typical();
        let packed = pack(&state).expect("packable");
        assert!(packed.len() < 420, "{} bytes", packed.len());
        let back = unpack(&packed).unwrap();
        assert_eq!(back, state);
        assert_eq!(
            back.profile.traits.len(),
            8,
            "a null trait is removed, not kept"
        );
        // And it goes on working: a duplicate is still one.
        let mut back = back;
        let dup = decode(
            br#"{"messageId":"user-00000001-t3","type":"track","userId":"user-00000001","timestamp":"2026-11-23T10:01:03Z","event":"viewed"}"#,
            1 << 20,
        )
        .unwrap();
        let outcome = back.apply(None, &dup, 1_700_000_200_000, DedupLimits::default());
        assert_eq!(outcome, crate::domain::user::ApplyOutcome::DuplicateId);
    }

    #[test]
    fn an_empty_state_round_trips() {
        let state = UserState::new();
        assert_eq!(unpack(&pack(&state).unwrap()).unwrap(), state);
    }

    #[test]
    fn rare_parts_pack_as_json_and_read_back_equal() {
        let mut state = typical();
        let preferences = serde_json::json!({"sms": false, "categories": {"marketing": false}});
        state
            .profile
            .traits
            .insert("preferences", TraitValue::from(preferences));
        state
            .profile
            .traits
            .insert("list", TraitValue::from(serde_json::json!([1, "two", 3.5])));
        let mut group = NameMap::default();
        group.insert("name", TraitValue::string("Acme"));
        state.profile.groups.insert("g1", group);
        state.identity = Some(Box::default());
        let back = unpack(&pack(&state).unwrap()).unwrap();
        assert_eq!(back, state);
    }

    #[test]
    fn damaged_bytes_are_unreadable_not_a_panic() {
        let bytes = pack(&typical()).unwrap().0.as_slice().to_vec();
        for cut in 0..bytes.len() {
            let short = PackedState(ThinSlice::from_slice(&bytes[..cut]));
            assert!(unpack(&short).is_err(), "cut at {cut}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(unpack(&PackedState(ThinSlice::from_slice(&longer))).is_err());
        // Every single-byte change reads back as something or as an error, never a panic.
        for i in 0..bytes.len() {
            for b in [0u8, 0x7f, 0x80, 0xff] {
                let mut changed = bytes.clone();
                changed[i] = b;
                let _ = unpack(&PackedState(ThinSlice::from_slice(&changed)));
            }
        }
    }

    /// Found by the `packed_state` fuzz target: a float trait whose bits are a NaN read back
    /// as a state that did not equal itself. Such floats, and non-negative "negative"
    /// integers, are now unreadable: the decoder never makes them.
    #[test]
    fn floats_that_are_not_finite_and_negatives_that_are_not_are_unreadable() {
        // One trait and nothing else: the value is followed by five zero counts (tags,
        // events, dedup entries, groups, merge part).
        let only = |value: TraitValue| {
            let mut state = UserState::new();
            state.profile.traits.insert("x", value);
            let bytes = pack(&state).unwrap().0.as_slice().to_vec();
            assert_eq!(unpack(&PackedState::from_bytes(&bytes)).unwrap(), state);
            (bytes.len() - 5, bytes)
        };
        let (end, bytes) = only(TraitValue::Float(0.5));
        assert_eq!(bytes[end - 9], FLOAT);
        for f in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            let mut changed = bytes.clone();
            changed[end - 8..end].copy_from_slice(&f.to_bits().to_le_bytes());
            let err = unpack(&PackedState::from_bytes(&changed)).unwrap_err();
            assert!(err.0.contains("not finite"), "{err:?}");
        }
        let (end, bytes) = only(TraitValue::NegInt(-3));
        assert_eq!(bytes[end - 2], NEG_INT);
        for zigzag in [0u8, 4] {
            let mut changed = bytes.clone();
            changed[end - 1] = zigzag; // 0 and +2
            let err = unpack(&PackedState::from_bytes(&changed)).unwrap_err();
            assert!(err.0.contains("negative"), "{err:?}");
        }
    }

    fn trait_value() -> impl Strategy<Value = TraitValue> {
        prop_oneof![
            Just(TraitValue::Null),
            any::<bool>().prop_map(TraitValue::Bool),
            any::<u64>().prop_map(TraitValue::PosInt),
            (i64::MIN..0).prop_map(TraitValue::NegInt),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(TraitValue::Float),
            "\\PC{0,30}".prop_map(|s| TraitValue::string(&s)),
        ]
    }

    fn name() -> impl Strategy<Value = String> {
        "[a-z_]{1,12}|\\PC{1,6}"
    }

    prop_compose! {
        fn any_state()(
            version in any::<u64>(),
            positions in proptest::collection::vec((any::<u32>(), any::<u64>()), 0..4),
            event_count in any::<i64>(),
            first in proptest::option::of(-250_000_000_000_000i64..250_000_000_000_000),
            last in proptest::option::of(-250_000_000_000_000i64..250_000_000_000_000),
            traits in proptest::collection::vec((name(), trait_value()), 0..8),
            tags in proptest::collection::vec(name(), 0..5),
            events in proptest::collection::vec((name(), any::<i64>(), any::<i64>(), any::<i64>()), 0..6),
            seen in proptest::collection::vec((any::<u64>(), 0i64..5_000_000_000), 0..40),
            seen_from in -1_000_000_000_000i64..2_000_000_000_000,
        ) -> UserState {
            let mut profile = Profile {
                event_count,
                first_seen: OptMs::from(first),
                last_seen: OptMs::from(last),
                ..Profile::default()
            };
            for (k, v) in traits {
                profile.traits.insert(&k, v);
            }
            for t in tags {
                profile.tags.insert(&t);
            }
            for (k, count, first_at, last_at) in events {
                profile.events.insert(&k, EventStats { count, first_at, last_at });
            }
            let mut at = seen_from;
            let entries = seen
                .into_iter()
                .map(|(f, gap)| {
                    at += gap;
                    (f, at)
                })
                .collect();
            UserState {
                version,
                profile,
                positions: Positions::from(positions),
                seen: DedupWindow::from_entries(entries),
                identity: None,
            }
        }
    }

    fn json_value() -> impl Strategy<Value = TraitValue> {
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::from),
            any::<i64>().prop_map(serde_json::Value::from),
            "\\PC{0,8}".prop_map(serde_json::Value::from),
        ];
        let tree = leaf.prop_recursive(3, 16, 4, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::Array),
                proptest::collection::vec(("[a-z]{1,4}", inner), 0..4)
                    .prop_map(|kv| serde_json::Value::Object(kv.into_iter().collect())),
            ]
        });
        tree.prop_filter_map("an array or an object", |v| {
            (v.is_array() || v.is_object()).then(|| TraitValue::from(v))
        })
    }

    proptest! {
        #[test]
        fn packed_states_read_back_equal(state in any_state()) {
            let packed = pack(&state).expect("packable");
            let back = unpack(&packed).unwrap();
            prop_assert_eq!(&back, &state);
            // Packing what was unpacked gives the same bytes.
            let again = pack(&back).unwrap();
            prop_assert_eq!(again.0.as_slice(), packed.0.as_slice());
        }

        #[test]
        fn json_traits_and_groups_read_back_equal(
            mut state in any_state(),
            values in proptest::collection::vec((name(), json_value()), 1..4),
            groups in proptest::collection::vec(
                (name(), proptest::collection::vec((name(), trait_value()), 0..4)),
                0..3,
            ),
        ) {
            for (k, v) in values {
                state.profile.traits.insert(&k, v);
            }
            for (g, traits) in groups {
                let mut map = NameMap::default();
                for (k, v) in traits {
                    map.insert(&k, v);
                }
                state.profile.groups.insert(&g, map);
            }
            let back = unpack(&pack(&state).expect("packable")).unwrap();
            prop_assert_eq!(&back, &state);
        }
    }
}
