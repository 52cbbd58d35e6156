//! INTERFACE STUB: the delivery thread.
