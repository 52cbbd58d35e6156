//! The books wired to the workers: stable entity ids, the per-worker durable
//! settle rings, the ledger thread, and the worker's lease shard.
//!
//! See docs/decisions/0003-wiring-the-books.md. The pieces:
//! - [`registry`]: `(kind, name) ↔ EntityId`, persistent in `entities.log`.
//! - [`ring`]: each worker's settle ring in a memory-mapped file, so a settle
//!   published before the response is written survives SIGKILL.
//! - [`thread`]: the one thread that owns the [`crate::ledger::Ledger`]:
//!   commands in over one bounded channel, settles in from the rings, events
//!   out to each worker.
//! - [`shard`]: a worker's leases and reservations (pure, single-threaded).
//! - [`node_lease`]: cluster mode's side of the ledger thread: when to ask
//!   the cluster thread for a node lease, and the spend it pushes.
//! - [`view`]: an entity's spend view as JSON, shared by the admin API and
//!   the data plane's usage route.

pub mod lock;
pub mod node_lease;
pub mod registry;
pub mod ring;
pub mod shard;
pub mod thread;
pub mod view;

pub use lock::{LockError, StateLock};
pub use registry::{EntityIds, EntityRegistry, RegistryError};
pub use ring::{PushError, RingConsumer, RingError, RingFull, RingProducer, SettleRecord};
