//! A partition reader over a bounded channel, filled by a source's own consume loop (the Kafka
//! poll thread, a RabbitMQ consumer) and drained by the partition actor.

use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use tokio::sync::mpsc;

use crate::ports::{BoxFut, PartitionReader, Record, SourceError};

/// How long a fetch waits for the first record before answering "nothing right now".
const FIRST_RECORD_WAIT: Duration = Duration::from_millis(50);

/// The receiver is shared so the reader's futures can be `'static`.
pub struct ChannelReader {
    start: u64,
    rx: Arc<tokio::sync::Mutex<mpsc::Receiver<Record>>>,
}

impl ChannelReader {
    /// `start` is the position the first record will have (or follow).
    pub fn new(start: u64, rx: mpsc::Receiver<Record>) -> Self {
        ChannelReader {
            start,
            rx: Arc::new(tokio::sync::Mutex::new(rx)),
        }
    }
}

impl PartitionReader for ChannelReader {
    fn start_offset(&self) -> u64 {
        self.start
    }

    fn fetch(&self, max: usize) -> BoxFut<Result<Vec<Record>, SourceError>> {
        let rx = self.rx.clone();
        async move {
            let mut rx = rx.lock().await;
            let mut batch = Vec::new();
            match tokio::time::timeout(FIRST_RECORD_WAIT, rx.recv()).await {
                Ok(Some(r)) => batch.push(r),
                Ok(None) => {
                    return Err(SourceError::Unavailable("partition channel closed".into()))
                }
                Err(_) => return Ok(batch),
            }
            while batch.len() < max {
                match rx.try_recv() {
                    Ok(r) => batch.push(r),
                    Err(_) => break,
                }
            }
            Ok(batch)
        }
        .boxed()
    }
}
