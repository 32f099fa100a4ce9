//! Adapters: implementations of the ports. Nothing here decides a business outcome.
//!
//! One folder per backend; `channel_reader` is shared by the Kafka and RabbitMQ sources.

pub mod channel_reader;
pub mod http;
pub mod kafka;
pub mod memory;
pub mod mongo;
pub mod providers;
pub mod rabbitmq;
pub mod redis;
