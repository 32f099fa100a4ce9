//! Providers: one adapter per kind a `[[providers]]` entry names (webhook, Twilio, SendGrid,
//! SMTP, FCM, the built-in simulator), the HTTP plumbing they share, and the parsing and
//! verifying of each provider's delivery callbacks.

pub mod callbacks;
pub mod fcm;
pub mod http;
pub mod sendgrid;
pub mod sim;
pub mod smtp;
pub mod twilio;
pub mod webhook;
