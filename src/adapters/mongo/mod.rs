//! MongoDB: the document store (`users`, `messages`, suppressions) and the group commit of
//! message status transitions.

pub mod docs;
pub mod transitions;
