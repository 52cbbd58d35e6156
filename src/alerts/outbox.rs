//! INTERFACE STUB: the outbox files.
