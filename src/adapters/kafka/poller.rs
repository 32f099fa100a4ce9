//! The Kafka poll loop's hand-off to the partition actors: one bounded channel per assigned
//! partition, and a partition whose channel is full is *paused* instead of blocking the loop.
//!
//! Blocking the poll thread on one full channel would stop every other partition and, past
//! `max.poll.interval.ms`, make the member leave its group. So a record that does not fit is
//! kept in the partition's small `pending` queue, the partition is paused (librdkafka stops
//! fetching it and drops what it had prefetched; on resume it fetches again from the position
//! after the last record it handed out, which is the last record in `pending`), and each turn
//! of the loop moves `pending` into the channel as room appears, resuming the partition once
//! the channel is half empty. Memory per partition is bounded by the channel, plus the few
//! records the poll returned between the pause being decided and taking effect. The channel
//! holds two fetches (`2 × pipeline.fetch_max_records`): enough to keep the partition actor
//! busy, small enough that a stalled pipeline pauses the partition at once.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use parking_lot::Mutex;
use rdkafka::consumer::Consumer;
use rdkafka::TopicPartitionList;
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TrySendError;

use crate::ports::Record;

/// One assigned partition's hand-off.
struct Feed {
    tx: mpsc::Sender<Record>,
    /// Records polled while the channel was full; the partition is paused while non-empty.
    pending: VecDeque<Record>,
    paused: bool,
}

/// A partition restart for the poll thread to carry out between two polls: close the
/// partition's feed, seek it to `offset` (`None`: the beginning), open a fresh feed.
///
/// Done anywhere else, the poll thread could be holding a record it polled before the seek
/// and hand it to the fresh feed: the new incarnation would read one record from the old
/// position ahead of the re-read ones (a user's events out of order, the rest skipped as
/// replays). Between two polls it holds none, and librdkafka drops what it fetched before.
pub struct Reseek {
    pub partition: u32,
    pub offset: Option<i64>,
    pub reply: std::sync::mpsc::Sender<Result<mpsc::Receiver<Record>, String>>,
}

/// The feeds of every assigned partition, shared by the poll thread (which fills them), the
/// rebalance callbacks (which create and remove them) and partition restarts (which ask the
/// poll thread to replace them after a seek).
#[derive(Clone)]
pub struct Feeds {
    inner: Arc<Mutex<HashMap<u32, Feed>>>,
    reseeks: Arc<Mutex<Vec<Reseek>>>,
    /// Records buffered per partition between the poll thread and the partition actor.
    capacity: usize,
}

/// What a partition's feed changed to, for the caller to pause or resume it at the broker.
#[must_use]
#[derive(Debug, PartialEq, Eq)]
pub enum FlowChange {
    None,
    Pause(u32),
    Resume(u32),
}

impl Feeds {
    pub fn new(capacity: usize) -> Feeds {
        Feeds {
            inner: Arc::default(),
            reseeks: Arc::default(),
            capacity: capacity.max(2),
        }
    }

    /// A paused partition resumes once its channel has this much room again.
    fn resume_room(&self) -> usize {
        self.capacity / 2
    }

    /// Opens a fresh feed for `partition` and returns its receiving end.
    pub fn open(&self, partition: u32) -> mpsc::Receiver<Record> {
        let (tx, rx) = mpsc::channel(self.capacity);
        self.inner.lock().insert(
            partition,
            Feed {
                tx,
                pending: VecDeque::new(),
                paused: false,
            },
        );
        rx
    }

    /// Closes the feed; returns whether the partition was paused (so it can be resumed).
    pub fn close(&self, partition: u32) -> Option<bool> {
        self.inner.lock().remove(&partition).map(|f| f.paused)
    }

    pub fn is_open(&self, partition: u32) -> bool {
        self.inner.lock().contains_key(&partition)
    }

    pub fn close_all(&self) {
        self.inner.lock().clear();
        // Restarts still waiting see their reply channel close: the source is shutting down.
        self.reseeks.lock().clear();
    }

    /// Queues a partition restart for the poll thread.
    pub fn request_reseek(&self, reseek: Reseek) {
        self.reseeks.lock().push(reseek);
    }

    /// The restarts queued since the last call, oldest first.
    pub fn take_reseeks(&self) -> Vec<Reseek> {
        std::mem::take(&mut *self.reseeks.lock())
    }

    /// Hands a polled record to its partition. A record of a partition that has no feed (no
    /// longer ours, or restarting) is dropped: it is not committed, so it is read again.
    pub fn push(&self, record: Record) -> FlowChange {
        let mut feeds = self.inner.lock();
        let Some(feed) = feeds.get_mut(&record.partition) else {
            return FlowChange::None;
        };
        if !feed.pending.is_empty() {
            feed.pending.push_back(record);
            return FlowChange::None;
        }
        match feed.tx.try_send(record) {
            Ok(()) => FlowChange::None,
            Err(TrySendError::Full(record)) => {
                let partition = record.partition;
                feed.pending.push_back(record);
                feed.paused = true;
                FlowChange::Pause(partition)
            }
            // The partition actor is gone; the supervisor revokes or restarts it.
            Err(TrySendError::Closed(_)) => FlowChange::None,
        }
    }

    /// Moves pending records into channels that have room; lists the partitions to resume.
    pub fn drain_pending(&self) -> Vec<u32> {
        let mut resume = Vec::new();
        let room = self.resume_room();
        let mut feeds = self.inner.lock();
        for (partition, feed) in feeds.iter_mut().filter(|(_, f)| f.paused) {
            while let Some(record) = feed.pending.pop_front() {
                match feed.tx.try_send(record) {
                    Ok(()) => {}
                    Err(TrySendError::Full(record)) => {
                        feed.pending.push_front(record);
                        break;
                    }
                    Err(TrySendError::Closed(_)) => {
                        feed.pending.clear();
                        break;
                    }
                }
            }
            if feed.pending.is_empty() && feed.tx.capacity() >= room {
                feed.paused = false;
                resume.push(*partition);
            }
        }
        resume
    }

    /// Whether any partition is paused (the poll loop then turns faster to resume it soon).
    pub fn any_paused(&self) -> bool {
        self.inner.lock().values().any(|f| f.paused)
    }

    /// Whether the partition is paused (`herald_source_paused`).
    pub fn is_paused(&self, partition: u32) -> bool {
        self.inner.lock().get(&partition).is_some_and(|f| f.paused)
    }

    /// The paused partitions.
    pub fn paused(&self) -> Vec<u32> {
        let mut v: Vec<u32> = self
            .inner
            .lock()
            .iter()
            .filter(|(_, f)| f.paused)
            .map(|(p, _)| *p)
            .collect();
        v.sort_unstable();
        v
    }
}

/// Pauses or resumes partitions of `topic` at the consumer; failures are logged (a pause that
/// fails leaves the partition fetching into `pending`, which the next turn retries).
pub fn set_flow<C: Consumer<X>, X: rdkafka::consumer::ConsumerContext>(
    consumer: &C,
    topic: &str,
    partitions: &[u32],
    pause: bool,
) {
    if partitions.is_empty() {
        return;
    }
    let mut tpl = TopicPartitionList::new();
    for p in partitions {
        tpl.add_partition(topic, *p as i32);
    }
    let result = if pause {
        consumer.pause(&tpl)
    } else {
        consumer.resume(&tpl)
    };
    match result {
        Ok(()) => tracing::debug!(?partitions, pause, "kafka partition flow changed"),
        Err(e) => tracing::warn!(?partitions, pause, error = %e, "kafka pause/resume failed"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn record(partition: u32, offset: u64) -> Record {
        Record {
            partition,
            offset,
            key: None,
            payload: Bytes::new(),
            timestamp_ms: None,
        }
    }

    const CAPACITY: usize = 1000;
    const RESUME_ROOM: usize = CAPACITY / 2;

    #[test]
    fn a_full_channel_pauses_keeps_order_and_resumes_at_half_room() {
        let feeds = Feeds::new(CAPACITY);
        let mut rx = feeds.open(3);
        let mut offset = 0;
        while feeds.push(record(3, offset)) == FlowChange::None {
            offset += 1;
        }
        assert_eq!(offset as usize, CAPACITY, "paused exactly when full");
        // Records polled before the pause took effect queue behind it.
        assert_eq!(feeds.push(record(3, offset + 1)), FlowChange::None);
        assert_eq!(feeds.paused(), vec![3]);
        assert!(feeds.drain_pending().is_empty(), "no room yet");
        // The two pending records go in first, then there must be half the channel free.
        for _ in 0..RESUME_ROOM + 2 {
            rx.try_recv().unwrap();
        }
        assert_eq!(feeds.drain_pending(), vec![3]);
        assert!(!feeds.any_paused());
        let mut seen = Vec::new();
        while let Ok(r) = rx.try_recv() {
            seen.push(r.offset);
        }
        let expected: Vec<u64> = (RESUME_ROOM as u64 + 2..offset)
            .chain([offset, offset + 1])
            .collect();
        assert_eq!(seen, expected, "in order, nothing lost");
    }

    #[test]
    fn records_of_a_closed_feed_are_dropped() {
        let feeds = Feeds::new(CAPACITY);
        let _rx = feeds.open(1);
        assert_eq!(feeds.close(1), Some(false));
        assert_eq!(feeds.push(record(1, 0)), FlowChange::None);
        assert!(!feeds.is_open(1));
    }
}
