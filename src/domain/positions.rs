//! A user's last applied offset per partition, sorted by partition. Nearly every user is read
//! from one partition: that one position sits in place (16 bytes in all, and no allocation);
//! more share one exactly sized allocation behind a thin pointer. Read by value
//! ([`Positions::iter`]), not as a slice: a slice of `(u32, u64)` pairs would need the one
//! position stored as a 16-byte pair, and the variant's tag 8 bytes more beside it.

use std::fmt;

use super::thin_slice::ThinSlice;

#[derive(Clone)]
pub enum Positions {
    One(u32, u64),
    /// None, or two and more, sorted by partition.
    Many(ThinSlice<(u32, u64)>),
}

const _: () = assert!(std::mem::size_of::<Positions>() == 16);

impl Default for Positions {
    fn default() -> Self {
        Positions::Many(ThinSlice::default())
    }
}

impl Positions {
    /// The last applied offset in `partition`.
    pub fn last(&self, partition: u32) -> Option<u64> {
        self.iter().find(|(p, _)| *p == partition).map(|(_, o)| o)
    }

    /// Records `offset` as applied in `partition` (an older offset leaves it as it is).
    pub fn advance(&mut self, partition: u32, offset: u64) {
        match self {
            Positions::One(p, o) if *p == partition => {
                *o = (*o).max(offset);
                return;
            }
            Positions::Many(many) if many.as_slice().iter().any(|(p, _)| *p == partition) => {
                many.with_mut(|slots| {
                    for (p, o) in slots.iter_mut() {
                        if *p == partition {
                            *o = (*o).max(offset);
                        }
                    }
                });
                return;
            }
            _ => {}
        }
        let mut all = self.to_vec();
        all.push((partition, offset));
        *self = Positions::from(all);
    }

    /// Partition and offset pairs, by partition.
    pub fn iter(&self) -> impl Iterator<Item = (u32, u64)> + '_ {
        let (one, many) = match self {
            Positions::One(p, o) => (Some((*p, *o)), &[][..]),
            Positions::Many(many) => (None, many.as_slice()),
        };
        one.into_iter().chain(many.iter().copied())
    }

    pub fn len(&self) -> usize {
        match self {
            Positions::One(..) => 1,
            Positions::Many(many) => many.as_slice().len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn to_vec(&self) -> Vec<(u32, u64)> {
        self.iter().collect()
    }

    /// Bytes of its allocation (none for one partition).
    pub fn heap_bytes(&self) -> usize {
        match self {
            Positions::One(..) => 0,
            Positions::Many(many) => many.heap_bytes(),
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
            [(p, o)] => Positions::One(p, o),
            _ => Positions::Many(ThinSlice::from_slice(&all)),
        }
    }
}

impl PartialEq for Positions {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len() && self.iter().eq(other.iter())
    }
}

impl Eq for Positions {}

impl PartialEq<Vec<(u32, u64)>> for Positions {
    fn eq(&self, other: &Vec<(u32, u64)>) -> bool {
        self.len() == other.len() && self.iter().eq(other.iter().copied())
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
        assert!(matches!(p, Positions::One(3, 10)));
        p.advance(3, 7);
        assert_eq!(p.last(3), Some(10));
        assert_eq!(p.heap_bytes(), 0);
    }

    #[test]
    fn many_stay_sorted_by_partition() {
        let mut p = Positions::default();
        for (partition, offset) in [(5, 1), (1, 9), (3, 4), (1, 2), (5, 8)] {
            p.advance(partition, offset);
        }
        assert_eq!(p, vec![(1, 9), (3, 4), (5, 8)]);
        assert_eq!(p.last(5), Some(8));
        assert_eq!(
            Positions::from(vec![(2, 5), (2, 9), (0, 1)]),
            vec![(0, 1), (2, 9)]
        );
        assert_eq!(Positions::from(vec![(2, 5)]), Positions::One(2, 5));
        assert_eq!(Positions::from(Vec::new()), Positions::default());
        assert!(Positions::default().is_empty());
    }

    #[test]
    fn a_shared_list_is_copied_before_it_changes() {
        let mut p = Positions::from(vec![(0, 1), (1, 1)]);
        let kept = p.clone();
        p.advance(1, 5);
        assert_eq!(p, vec![(0, 1), (1, 5)]);
        assert_eq!(kept, vec![(0, 1), (1, 1)]);
    }
}
