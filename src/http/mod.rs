//! HTTP/1.1 framing, hand-written on httparse: request heads, chunked bodies,
//! response heads, and the server side of a connection. This module knows
//! nothing of money, keys or providers.

pub mod chunked;
pub mod request;
pub mod response;
pub mod server;

pub use request::{BodyFraming, Method, RequestHead};
