//! Kafka: the source (consumer, rebalances, commits), its poll loop's hand-off to the
//! partition actors, the idempotent producer behind the HTTP ingest, and the downstream feeds
//! (the users' changelog, the messages topic).

pub mod changelog;
pub mod message_feed;
pub mod poller;
pub mod publisher;
pub mod source;
