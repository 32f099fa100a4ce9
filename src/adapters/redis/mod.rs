//! Redis: the user-state store, the durable retry schedule and the callback journal.

pub mod journal;
pub mod retry;
pub mod state;
