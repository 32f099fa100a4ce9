//! An optional instant in milliseconds in 8 bytes (`Option<i64>` takes 16): no instant is
//! `i64::MIN`, which no parsed timestamp reaches (years 1–9999 are ±2.5·10¹⁴ ms).

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

#[derive(Clone, Copy, PartialEq, Eq)]
pub struct OptMs(i64);

const NONE: i64 = i64::MIN;

impl OptMs {
    pub const NONE: OptMs = OptMs(NONE);

    pub fn get(self) -> Option<i64> {
        (self.0 != NONE).then_some(self.0)
    }

    /// The 8 bytes as they are (`i64::MIN`: none), for compact forms.
    pub fn raw(self) -> i64 {
        self.0
    }

    /// Reads [`OptMs::raw`].
    pub fn from_raw(raw: i64) -> OptMs {
        OptMs(raw)
    }
}

impl Default for OptMs {
    fn default() -> Self {
        OptMs::NONE
    }
}

/// `Some(i64::MIN)` has no representation and reads back as `None`.
impl From<Option<i64>> for OptMs {
    fn from(ms: Option<i64>) -> Self {
        OptMs(ms.unwrap_or(NONE))
    }
}

impl fmt::Debug for OptMs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.get().fmt(f)
    }
}

impl Serialize for OptMs {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.get().serialize(s)
    }
}

impl<'de> Deserialize<'de> for OptMs {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Option::<i64>::deserialize(d).map(OptMs::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_as_an_option() {
        for ms in [
            None,
            Some(0),
            Some(-1),
            Some(i64::MAX),
            Some(1_700_000_000_000),
        ] {
            let o = OptMs::from(ms);
            assert_eq!(o.get(), ms);
            let text = serde_json::to_string(&o).unwrap();
            assert_eq!(text, serde_json::to_string(&ms).unwrap());
            assert_eq!(serde_json::from_str::<OptMs>(&text).unwrap(), o);
        }
        assert_eq!(OptMs::default().get(), None);
        assert_eq!(std::mem::size_of::<OptMs>(), 8);
    }
}
