//! A dispatcher's queue as three lanes, one per campaign priority (REFERENCE.md §12): a free
//! send slot takes the oldest `high` job, else the oldest `normal`, else the oldest `low`, so a
//! backlog in a lower lane never delays a higher one by more than the slot being filled.
//! Each lane has its own bound: a full `low` lane parks `low` jobs, not `high` ones.

use std::collections::VecDeque;

use crate::domain::campaign::Priority;

pub struct Lanes<T> {
    lanes: [VecDeque<T>; 3],
}

impl<T> Default for Lanes<T> {
    fn default() -> Self {
        Lanes {
            lanes: [VecDeque::new(), VecDeque::new(), VecDeque::new()],
        }
    }
}

impl<T> Lanes<T> {
    pub fn push_back(&mut self, priority: Priority, job: T) {
        self.lanes[priority.lane()].push_back(job);
    }

    /// Back at the head of its lane (a job that could not start yet keeps its turn).
    pub fn push_front(&mut self, priority: Priority, job: T) {
        self.lanes[priority.lane()].push_front(job);
    }

    /// The next job to send: the highest lane's oldest.
    pub fn pop_front(&mut self) -> Option<T> {
        self.lanes.iter_mut().find_map(VecDeque::pop_front)
    }

    pub fn len(&self) -> usize {
        self.lanes.iter().map(VecDeque::len).sum()
    }

    /// Jobs waiting in `priority`'s lane.
    pub fn len_of(&self, priority: Priority) -> usize {
        self.lanes[priority.lane()].len()
    }

    /// The longest lane's length (waiters are released once every lane has room).
    pub fn longest(&self) -> usize {
        self.lanes.iter().map(VecDeque::len).max().unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.lanes.iter().all(VecDeque::is_empty)
    }

    pub fn iter(&self) -> impl Iterator<Item = &T> {
        self.lanes.iter().flatten()
    }

    pub fn retain(&mut self, mut keep: impl FnMut(&T) -> bool) {
        for lane in &mut self.lanes {
            lane.retain(&mut keep);
        }
    }

    /// Every job, highest lane first, leaving the lanes empty.
    pub fn take_all(&mut self) -> Vec<T> {
        self.lanes.iter_mut().flat_map(std::mem::take).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn higher_lanes_go_first_and_each_lane_keeps_its_order() {
        let mut l = Lanes::default();
        for i in 0..3 {
            l.push_back(Priority::Low, format!("low-{i}"));
        }
        l.push_back(Priority::Normal, "normal-0".to_string());
        l.push_back(Priority::High, "high-0".to_string());
        l.push_front(Priority::Low, "low-first".to_string());
        assert_eq!((l.len(), l.len_of(Priority::Low), l.longest()), (6, 4, 4));
        let order: Vec<String> = std::iter::from_fn(|| l.pop_front()).collect();
        assert_eq!(
            order,
            ["high-0", "normal-0", "low-first", "low-0", "low-1", "low-2"]
        );
        assert!(l.is_empty());
    }
}
