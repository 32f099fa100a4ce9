//! Kafka: the source (consumer, rebalances, commits), its poll loop's hand-off to the
//! partition actors, and the idempotent producer behind the HTTP ingest.

pub mod poller;
pub mod publisher;
pub mod source;
