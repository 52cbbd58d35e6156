//! bursar: an LLM gateway appliance that keeps the books.
//!
//! See docs/ARCHITECTURE.md for the bird's-eye view and the code map.

pub mod admin;
pub mod alerts;
pub mod books;
pub mod budget;
pub mod cache;
pub mod catalog;
pub mod cli;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod control;
pub mod dashboard;
/// The semantic cache's embeddings and vector search (the `embed/` crate).
pub use bursar_embed as embed;
pub mod error;
pub mod health;
pub mod http;
pub mod io;
pub mod ledger;
pub mod limits;
pub mod logging;
pub mod metrics;
pub mod money;
pub mod prices;
pub mod providers;
pub mod proxy;
pub mod ratelimit;
pub mod reqlog;
pub mod runtime;
pub mod sched;
pub mod tokens;
pub mod upstream;
pub mod verify;
