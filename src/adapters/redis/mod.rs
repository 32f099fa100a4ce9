//! Redis: the user-state store, the durable retry schedule, the callback journal, and the
//! connection plumbing they share.

pub mod connection;
pub mod journal;
pub mod retry;
pub mod state;
