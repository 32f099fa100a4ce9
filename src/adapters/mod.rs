//! Adapters: implementations of the ports. Nothing here decides a business outcome.

pub mod callback_formats;
pub mod channel_reader;
pub mod embedded_source;
pub mod fcm_provider;
pub mod http_provider;
pub mod http_server;
pub mod ingest_http;
pub mod kafka_poller;
pub mod kafka_publisher;
pub mod kafka_source;
pub mod memory_docs;
pub mod memory_retry;
pub mod memory_state;
pub mod mongo_docs;
pub mod mongo_transitions;
pub mod rabbitmq_publisher;
pub mod rabbitmq_source;
pub mod redis_journal;
pub mod redis_retry;
pub mod redis_state;
pub mod sendgrid_provider;
pub mod sim_provider;
pub mod smtp_provider;
pub mod twilio_provider;
