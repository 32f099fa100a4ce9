//! The embedded source: in-process partitioned logs with committed offsets, like a tiny
//! Kafka. Tests can append, revoke and reassign partitions; a reassigned partition is read
//! again from its last commit, exactly as after a crash.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use futures::FutureExt;
use parking_lot::{Mutex, RwLock};
use tokio::sync::{mpsc, oneshot};

use crate::domain::keys::user_hash;
use crate::ports::{
    AssignmentEvent, BoxFut, Clock, DeadLetter, PartitionReader, Record, Source, SourceError,
    SystemClock,
};

struct PartitionLog {
    records: RwLock<Vec<(Bytes, Bytes)>>,
    committed: AtomicU64,
    /// Every commit ever made, in order (lets tests check commits never go backwards).
    commit_log: Mutex<Vec<u64>>,
}

pub struct EmbeddedSource {
    logs: Vec<Arc<PartitionLog>>,
    tx: mpsc::UnboundedSender<AssignmentEvent>,
    rx: Mutex<Option<mpsc::UnboundedReceiver<AssignmentEvent>>>,
    dead_letters: Mutex<Vec<DeadLetter>>,
}

impl EmbeddedSource {
    pub fn new(partitions: u32) -> Arc<Self> {
        let (tx, rx) = mpsc::unbounded_channel();
        Arc::new(EmbeddedSource {
            logs: (0..partitions.max(1))
                .map(|_| {
                    Arc::new(PartitionLog {
                        records: RwLock::new(Vec::new()),
                        committed: AtomicU64::new(0),
                        commit_log: Mutex::new(Vec::new()),
                    })
                })
                .collect(),
            tx,
            rx: Mutex::new(Some(rx)),
            dead_letters: Mutex::new(Vec::new()),
        })
    }

    pub fn partitions(&self) -> u32 {
        self.logs.len() as u32
    }

    /// The same logs, commits and dead letters for a new consumer (a restarted process): what
    /// the old one had not committed is read again.
    pub fn reopen(&self) -> Arc<Self> {
        let (tx, rx) = mpsc::unbounded_channel();
        Arc::new(EmbeddedSource {
            logs: self.logs.clone(),
            tx,
            rx: Mutex::new(Some(rx)),
            dead_letters: Mutex::new(self.dead_letters.lock().clone()),
        })
    }

    /// The partition a key lands in (stable across runs).
    pub fn partition_for(&self, key: &str) -> u32 {
        (user_hash(key) % self.logs.len() as u64) as u32
    }

    /// Appends a record keyed by `key`; returns its (partition, offset).
    pub fn append(&self, key: &str, payload: Bytes) -> (u32, u64) {
        let p = self.partition_for(key);
        let mut log = self.logs[p as usize].records.write();
        log.push((Bytes::copy_from_slice(key.as_bytes()), payload));
        (p, log.len() as u64 - 1)
    }

    /// Appends many records at once (one lock per partition).
    pub fn append_all(&self, records: impl IntoIterator<Item = (String, Bytes)>) {
        let mut per: Vec<Vec<(Bytes, Bytes)>> = vec![Vec::new(); self.logs.len()];
        for (key, payload) in records {
            let p = self.partition_for(&key) as usize;
            per[p].push((Bytes::from(key.into_bytes()), payload));
        }
        for (p, recs) in per.into_iter().enumerate() {
            self.logs[p].records.write().extend(recs);
        }
    }

    pub fn assign(&self, partitions: &[u32]) {
        let _ = self.tx.send(AssignmentEvent::Assigned(partitions.to_vec()));
    }

    pub fn assign_all(&self) {
        let all: Vec<u32> = (0..self.partitions()).collect();
        self.assign(&all);
    }

    /// Revokes partitions; the receiver resolves once they drained and committed.
    pub fn revoke(&self, partitions: &[u32]) -> oneshot::Receiver<()> {
        let (done, rx) = oneshot::channel();
        let _ = self.tx.send(AssignmentEvent::Revoked {
            partitions: partitions.to_vec(),
            done,
        });
        rx
    }

    pub fn committed(&self, partition: u32) -> u64 {
        self.logs[partition as usize]
            .committed
            .load(Ordering::Acquire)
    }

    pub fn commit_history(&self, partition: u32) -> Vec<u64> {
        self.logs[partition as usize].commit_log.lock().clone()
    }

    pub fn end_offset(&self, partition: u32) -> u64 {
        self.logs[partition as usize].records.read().len() as u64
    }

    pub fn total_records(&self) -> u64 {
        (0..self.partitions()).map(|p| self.end_offset(p)).sum()
    }

    pub fn total_committed(&self) -> u64 {
        (0..self.partitions()).map(|p| self.committed(p)).sum()
    }

    /// True when every record of every partition is committed.
    pub fn fully_committed(&self) -> bool {
        (0..self.partitions()).all(|p| self.committed(p) >= self.end_offset(p))
    }

    pub fn dead_letters(&self) -> Vec<DeadLetter> {
        self.dead_letters.lock().clone()
    }
}

struct EmbeddedReader {
    partition: u32,
    log: Arc<PartitionLog>,
    start: u64,
    position: AtomicU64,
}

impl PartitionReader for EmbeddedReader {
    fn start_offset(&self) -> u64 {
        self.start
    }

    fn fetch(&self, max: usize) -> BoxFut<Result<Vec<Record>, SourceError>> {
        let from = self.position.load(Ordering::Acquire);
        let now = SystemClock.now_ms();
        let batch: Vec<Record> = {
            let log = self.log.records.read();
            let from_idx = (from as usize).min(log.len());
            let to = (from_idx + max).min(log.len());
            log[from_idx..to]
                .iter()
                .enumerate()
                .map(|(i, (key, payload))| Record {
                    partition: self.partition,
                    offset: (from_idx + i) as u64,
                    // A key is a few bytes: copied, not shared (sharing a buffer made from a
                    // `Vec` allocates its counter at the first clone, and both drops touch it).
                    key: Some(Bytes::copy_from_slice(key)),
                    payload: payload.clone(),
                    timestamp_ms: Some(now),
                })
                .collect()
        };
        self.position
            .store(from + batch.len() as u64, Ordering::Release);
        async move { Ok(batch) }.boxed()
    }
}

impl Source for EmbeddedSource {
    fn kind(&self) -> &'static str {
        "embedded"
    }

    fn take_assignments(&self) -> Option<mpsc::UnboundedReceiver<AssignmentEvent>> {
        self.rx.lock().take()
    }

    fn reader(&self, partition: u32) -> Result<Arc<dyn PartitionReader>, SourceError> {
        let log = self
            .logs
            .get(partition as usize)
            .ok_or(SourceError::NotAssigned(partition))?
            .clone();
        let start = log.committed.load(Ordering::Acquire);
        Ok(Arc::new(EmbeddedReader {
            partition,
            log,
            start,
            position: AtomicU64::new(start),
        }))
    }

    fn commit(&self, partition: u32, next_offset: u64) -> BoxFut<Result<(), SourceError>> {
        let result = match self.logs.get(partition as usize) {
            None => Err(SourceError::NotAssigned(partition)),
            Some(log) => {
                let prev = log.committed.fetch_max(next_offset, Ordering::AcqRel);
                if next_offset > prev {
                    log.commit_log.lock().push(next_offset);
                }
                Ok(())
            }
        };
        async move { result }.boxed()
    }

    fn dead_letter(&self, letters: Vec<DeadLetter>) -> BoxFut<Result<(), SourceError>> {
        self.dead_letters.lock().extend(letters);
        async { Ok(()) }.boxed()
    }

    fn high_watermark(&self, partition: u32) -> Option<u64> {
        self.logs
            .get(partition as usize)
            .map(|l| l.records.read().len() as u64)
    }
}
