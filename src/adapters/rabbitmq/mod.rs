//! RabbitMQ: the source (consistent-hash exchange, single-active-consumer queues, acks of the
//! durable watermark) and the publisher-confirm producer behind the HTTP ingest.

pub mod publisher;
pub mod source;
