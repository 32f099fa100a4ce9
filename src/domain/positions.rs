//! A user's last applied offset per partition, sorted by partition. Nearly every user is read
//! from one partition: that one position sits in place (24 bytes in all, like an empty `Vec`,
//! and no allocation); more share one exactly sized allocation.

use std::fmt;
use std::ops::Deref;

#[derive(Clone, PartialEq, Eq)]
pub enum Positions {
    One([(u32, u64); 1]),
    /// None, or two and more, sorted by partition.
    Many(Box<[(u32, u64)]>),
}

impl Default for Positions {
    fn default() -> Self {
        Positions::Many(Box::default())
    }
}

impl Positions {
    /// The last applied offset in `partition`.
    pub fn last(&self, partition: u32) -> Option<u64> {
        self.iter().find(|(p, _)| *p == partition).map(|(_, o)| *o)
    }

    /// Records `offset` as applied in `partition` (an older offset leaves it as it is).
    pub fn advance(&mut self, partition: u32, offset: u64) {
        let slots: &mut [(u32, u64)] = match self {
            Positions::One(one) => one,
            Positions::Many(many) => many,
        };
        if let Some(entry) = slots.iter_mut().find(|(p, _)| *p == partition) {
            entry.1 = entry.1.max(offset);
            return;
        }
        let mut all = slots.to_vec();
        all.push((partition, offset));
        *self = Positions::from(all);
    }
}

impl Positions {
    /// Bytes of its allocation (none for one partition).
    pub fn heap_bytes(&self) -> usize {
        match self {
            Positions::One(_) => 0,
            Positions::Many(many) => std::mem::size_of_val::<[(u32, u64)]>(many),
        }
    }
}

impl Deref for Positions {
    type Target = [(u32, u64)];
    fn deref(&self) -> &[(u32, u64)] {
        match self {
            Positions::One(one) => one,
            Positions::Many(many) => many,
        }
    }
}

/// From entries in any order; of a partition given twice, the highest offset.
impl From<Vec<(u32, u64)>> for Positions {
    fn from(mut all: Vec<(u32, u64)>) -> Self {
        all.sort_unstable();
        // Sorted by offset within a partition: the last of each run is its highest.
        all.reverse();
        all.dedup_by_key(|(p, _)| *p);
        all.reverse();
        match all[..] {
            [one] => Positions::One([one]),
            _ => Positions::Many(all.into_boxed_slice()),
        }
    }
}

impl PartialEq<Vec<(u32, u64)>> for Positions {
    fn eq(&self, other: &Vec<(u32, u64)>) -> bool {
        **self == other[..]
    }
}

impl fmt::Debug for Positions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_partition_needs_no_allocation() {
        let mut p = Positions::default();
        assert_eq!(p.last(0), None);
        p.advance(3, 10);
        assert!(matches!(p, Positions::One(_)));
        p.advance(3, 7);
        assert_eq!(p.last(3), Some(10));
        assert_eq!(std::mem::size_of::<Positions>(), 24);
    }

    #[test]
    fn many_stay_sorted_by_partition() {
        let mut p = Positions::default();
        for (partition, offset) in [(5, 1), (1, 9), (3, 4), (1, 2), (5, 8)] {
            p.advance(partition, offset);
        }
        assert_eq!(p, vec![(1, 9), (3, 4), (5, 8)]);
        assert_eq!(
            Positions::from(vec![(2, 5), (2, 9), (0, 1)]),
            vec![(0, 1), (2, 9)]
        );
        assert_eq!(Positions::from(vec![(2, 5)]), Positions::One([(2, 5)]));
        assert_eq!(Positions::from(Vec::new()), Positions::default());
    }
}
