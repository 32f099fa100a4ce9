//! The commit watermark of one partition (the Parallel Consumer rule): the committable
//! position is the lowest offset not yet durable, so a commit never passes an undurable record.

use std::collections::VecDeque;

/// Offsets handed out in increasing order, completed in any order.
#[derive(Debug, Clone, Default)]
pub struct Watermark {
    /// Outstanding offsets in dispatch order with their "durable" flag.
    pending: VecDeque<(u64, bool)>,
    /// One past the highest offset ever dispatched or completed.
    next: u64,
    /// Dispatched offsets not yet durable.
    outstanding: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WatermarkError {
    #[error("offset {offset} dispatched out of order (next is {next})")]
    OutOfOrder { offset: u64, next: u64 },
}

impl Watermark {
    /// Starts tracking from `start`, the first offset that will be read.
    pub fn starting_at(start: u64) -> Self {
        Watermark {
            pending: VecDeque::new(),
            next: start,
            outstanding: 0,
        }
    }

    /// Records that `offset` is in flight. Offsets must increase (gaps are allowed).
    pub fn dispatch(&mut self, offset: u64) -> Result<(), WatermarkError> {
        if offset < self.next {
            return Err(WatermarkError::OutOfOrder {
                offset,
                next: self.next,
            });
        }
        self.pending.push_back((offset, false));
        self.next = offset.saturating_add(1);
        self.outstanding += 1;
        Ok(())
    }

    /// Records that `offset` and everything it caused is durable. Unknown offsets are ignored
    /// (e.g. a late notification for a previous incarnation of the partition).
    pub fn complete(&mut self, offset: u64) {
        if let Ok(i) = self.pending.binary_search_by_key(&offset, |(o, _)| *o) {
            if !self.pending[i].1 {
                self.pending[i].1 = true;
                self.outstanding -= 1;
            }
        }
        while matches!(self.pending.front(), Some((_, true))) {
            self.pending.pop_front();
        }
    }

    /// Marks an offset that needs no work (e.g. a dead-lettered record already written).
    pub fn skip(&mut self, offset: u64) -> Result<(), WatermarkError> {
        self.dispatch(offset)?;
        self.complete(offset);
        Ok(())
    }

    /// The position to commit: the lowest offset not yet durable (Kafka's "next to read").
    pub fn committable(&self) -> u64 {
        self.pending.front().map_or(self.next, |(o, _)| *o)
    }

    /// How many dispatched offsets are not durable yet.
    pub fn in_flight(&self) -> usize {
        self.outstanding
    }

    /// One past the highest dispatched offset.
    pub fn next(&self) -> u64 {
        self.next
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commits_only_below_the_first_undurable() {
        let mut w = Watermark::starting_at(10);
        for o in 10..15 {
            w.dispatch(o).unwrap();
        }
        assert_eq!(w.committable(), 10);
        w.complete(12);
        w.complete(11);
        assert_eq!(w.committable(), 10);
        w.complete(10);
        assert_eq!(w.committable(), 13);
        w.complete(14);
        w.complete(13);
        assert_eq!(w.committable(), 15);
        assert_eq!(w.in_flight(), 0);
    }

    #[test]
    fn gaps_and_unknown_offsets() {
        let mut w = Watermark::starting_at(0);
        w.dispatch(3).unwrap();
        w.skip(7).unwrap();
        assert_eq!(w.committable(), 3);
        w.complete(99);
        w.complete(3);
        assert_eq!(w.committable(), 8);
        assert!(w.dispatch(5).is_err());
    }
}
