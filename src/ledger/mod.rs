//! The ledger: the one writer of the books.
//!
//! One thread owns a [`Ledger`]: a deterministic state machine
//! ([`state::LedgerState`]) with durability beside it (an append-only
//! [`journal`] and rkyv [`snapshot`]s, rebuilt by [`recovery`] on start).
//! Workers never call it: they send [`Command`]s over bounded channels and
//! receive [`Reply`]s and broadcast [`Event`]s. This module knows nothing of
//! HTTP, prices or the customer > team > key hierarchy: a request's charges
//! arrive already split per entity, and every level is just an [`EntityId`].
//!
//! # Lifecycle
//!
//! 1. [`Ledger::open`] loads the newest valid snapshot, replays the journal
//!    after it (cutting a torn tail), and continues the journal. No worker
//!    holds a lease yet: leases of a previous process died with it.
//! 2. The ledger thread loops: take a batch of commands from the workers'
//!    channels, [`Ledger::apply`] each with the current clock, send each reply
//!    to its worker and broadcast [`Ledger::events`]; then
//!    [`Ledger::flush_if_due`]. A timer sends [`Command::Tick`] so periods roll
//!    over (and workers hear `Unblocked`) without waiting for traffic.
//! 3. Every so often (records or time), [`Ledger::checkpoint`]: flush the
//!    journal, write a snapshot, start a new journal segment, keep the newest
//!    [`snapshot::SNAPSHOTS_KEPT_DEFAULT`] snapshots, remove journal segments
//!    older than the oldest one kept.
//! 4. On shutdown, [`Ledger::flush`] (and optionally a checkpoint).
//!
//! A worker's life against the ledger: ask for a lease (`LeaseRequest` with
//! `need` = the request's worst case not covered by its free lease), admit
//! locally while the lease covers the worst case, `Settle` each request with
//! `from_lease = true` for charges reserved out of a lease, give back free lease
//! on a `Blocked` broadcast (`LeaseReturn`), so the last of a budget goes where
//! it is needed. `WorkerLost` takes a worker's leases back into the budget;
//! nothing sends it today, since a worker cannot die alone (a panic ends the
//! process, decision 0008, and recovery starts every worker afresh).
//!
//! # Durability contract
//!
//! A settle is durable when [`Ledger::durable_seq`] reaches its `seq`
//! (returned in [`Reply::Settled`]). Between a settle and the next batch sync
//! (at most `sync_interval_ms`, or `sync_records_max` records) a crash of the
//! whole machine can lose it; a worker that must not answer before its charge
//! is on disk waits for the durable seq. An I/O error on the journal is fatal
//! for this `Ledger`: the books in memory are ahead of the disk, so it refuses
//! further commands ([`LedgerError::Poisoned`]); restart and recover.
//!
//! # Invariants
//!
//! Invariant: every change to the books is a journal record with the next seq;
//! replaying the records in order onto the snapshot they follow rebuilds the
//! same books, and replaying them twice changes nothing.
//! Invariant: for a strict budget, `spent + Σ leases ≤ limit + top-ups` at all
//! times, except for an `excess` that only an overrun (a charge its lease did
//! not cover) or a lowered limit can create, and that only drains; a grant never
//! creates it.
//! Invariant: every settled request id is charged once: a duplicate settle
//! (within the remembered window) changes nothing and replies `Duplicate`.
//! Invariant: a charge lands in exactly one period: the one containing the
//! ledger's clock when it is applied (the clock is in the record, so replay
//! agrees).
//! Invariant: spent, leases, top-ups and lifetime spend are never negative;
//! lifetime spend is at least the period's spend.
//! Invariant: an entity's block flag equals "nothing left to grant"; each
//! change of it emitted one `Blocked` or `Unblocked` event.
//! Invariant: the ledger never reads a clock, never does I/O in the state
//! machine, and never allocates per command in steady state.
//!
//! See docs/decisions/0002-ledger-leases-and-periods.md for why.

pub mod journal;
pub mod messages;
pub mod recovery;
mod settled;
pub mod snapshot;
pub mod state;

use std::fs;
use std::path::{Path, PathBuf};

pub use journal::{JournalConfig, JournalError, JournalWriter};
pub use messages::{
    Charge, Charges, Command, CommandError, EntityId, EntityKind, Event, Record, RecordBody, Reply,
};
pub use recovery::{RecoveryError, RecoveryReport};
pub use snapshot::{SnapshotError, SnapshotInfo};
pub use state::{Books, EntityBooks, EntityView, LedgerState, NodeLeaseView, StateConfig};

/// Everything a ledger needs at start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LedgerConfig {
    pub state: StateConfig,
    pub journal: JournalConfig,
    /// Snapshots kept, 1..=[`snapshot::SNAPSHOTS_KEPT_MAX`].
    pub snapshots_kept: u32,
}

impl Default for LedgerConfig {
    fn default() -> LedgerConfig {
        LedgerConfig {
            state: StateConfig::default(),
            journal: JournalConfig::default(),
            snapshots_kept: snapshot::SNAPSHOTS_KEPT_DEFAULT,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error(transparent)]
    Recovery(#[from] RecoveryError),
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    #[error("ledger state directory {path}: {source}")]
    Dir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("ledger config: {0}")]
    Config(String),
    #[error("the ledger stopped after a journal write failed; restart to recover")]
    Poisoned,
}

impl LedgerError {
    /// An I/O error writing the journal or a snapshot (a full disk, a failed
    /// `fsync`): nothing is lost by retrying. The journal keeps the batch it
    /// could not make durable in memory and writes it again, whole, at the
    /// same offset, then syncs again (a failed `fsync` may have dropped the
    /// kernel's copy of those pages, so the retry rewrites them from ours).
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            LedgerError::Journal(JournalError::Io { .. })
                | LedgerError::Snapshot(SnapshotError::Io { .. })
        )
    }
}

/// The books with their durability: the state machine, the journal writer,
/// and the snapshot policy. Owned by the ledger thread.
#[derive(Debug)]
pub struct Ledger {
    dir: PathBuf,
    config: LedgerConfig,
    state: LedgerState,
    journal: JournalWriter,
    poisoned: bool,
}

impl Ledger {
    /// Recovers the books in `dir` (created if missing) and opens the journal.
    pub fn open(dir: &Path, config: LedgerConfig) -> Result<(Ledger, RecoveryReport), LedgerError> {
        config
            .state
            .validate()
            .map_err(|e| LedgerError::Config(e.to_string()))?;
        config.journal.validate()?;
        if config.snapshots_kept == 0 || config.snapshots_kept > snapshot::SNAPSHOTS_KEPT_MAX {
            return Err(LedgerError::Config(format!(
                "snapshots_kept must be 1..={}",
                snapshot::SNAPSHOTS_KEPT_MAX
            )));
        }
        fs::create_dir_all(dir).map_err(|source| LedgerError::Dir {
            path: dir.to_path_buf(),
            source,
        })?;
        let mut recovered = recovery::recover(dir, config.state)?;
        if config.state.cluster {
            recovered.state.reset_node_caps();
        }
        for (path, why) in &recovered.report.snapshots_rejected {
            let aside = snapshot::set_aside(path)?;
            log::warn!(
                "snapshot {} set aside as {}: {why}",
                path.display(),
                aside.display()
            );
        }
        let next_seq = recovered.state.journal_seq() + 1;
        let journal = match recovered.append_to {
            Some((first_seq, len)) => {
                JournalWriter::open_append(dir, first_seq, len, next_seq, config.journal)?
            }
            None => JournalWriter::create(dir, next_seq, config.journal)?,
        };
        log::info!(
            "ledger recovered from {} (snapshot {:?}, {} records replayed, journal at {})",
            dir.display(),
            recovered.report.snapshot.as_ref().map(|s| &s.path),
            recovered.report.records_replayed,
            recovered.report.journal_seq
        );
        Ok((
            Ledger {
                dir: dir.to_path_buf(),
                config,
                state: recovered.state,
                journal,
                poisoned: false,
            },
            recovered.report,
        ))
    }

    /// Applies a command and journals its records (buffered; see the
    /// durability contract in the module docs).
    pub fn apply(&mut self, now_ms: i64, cmd: &Command) -> Result<Reply, LedgerError> {
        if self.poisoned {
            return Err(LedgerError::Poisoned);
        }
        let reply = self.state.apply(now_ms, cmd);
        // Every record is buffered even when a batch's write fails on the
        // way: the books already hold them, so the journal must too.
        let mut failed = None;
        for record in self.state.records() {
            if let Err(e) = self.journal.append(record, now_ms) {
                failed.get_or_insert(e);
            }
        }
        match failed {
            None => Ok(reply),
            Some(e) => {
                self.poisoned |= !matches!(e, JournalError::Io { .. });
                Err(e.into())
            }
        }
    }

    /// Events of the last `apply`, to broadcast to workers.
    pub fn events(&self) -> &[Event] {
        self.state.events()
    }

    pub fn state(&self) -> &LedgerState {
        &self.state
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The last journal record known to be on disk.
    pub fn durable_seq(&self) -> u64 {
        self.journal.durable_seq()
    }

    /// Writes the journal batch if its interval has passed.
    pub fn flush_if_due(&mut self, now_ms: i64) -> Result<bool, LedgerError> {
        self.guard(|l| l.journal.flush_if_due(now_ms).map_err(Into::into))
    }

    /// Writes and syncs everything journaled so far.
    pub fn flush(&mut self) -> Result<(), LedgerError> {
        self.guard(|l| l.journal.flush().map_err(Into::into))
    }

    /// Snapshot now; then rotate the journal and drop what no kept snapshot needs.
    pub fn checkpoint(&mut self) -> Result<SnapshotInfo, LedgerError> {
        self.guard(|l| {
            l.journal.flush()?;
            let info = snapshot::write_snapshot(&l.dir, &l.state, l.config.journal.fsync)?;
            l.journal.rotate()?;
            if let Some(oldest_kept) = snapshot::prune_snapshots(&l.dir, l.config.snapshots_kept)? {
                journal::remove_segments_through(&l.dir, oldest_kept)?;
            }
            Ok(info)
        })
    }

    fn guard<T>(
        &mut self,
        f: impl FnOnce(&mut Ledger) -> Result<T, LedgerError>,
    ) -> Result<T, LedgerError> {
        if self.poisoned {
            return Err(LedgerError::Poisoned);
        }
        let result = f(self);
        if let Err(e) = &result {
            self.poisoned |= !e.is_retryable();
        }
        result
    }

    /// Whether writes failed for a reason a later retry may clear (a full
    /// disk, an I/O error) rather than a bug or corruption.
    pub fn is_poisoned(&self) -> bool {
        self.poisoned
    }

    /// Journal bytes buffered, not yet written (what a crash now would lose).
    pub fn pending_bytes(&self) -> usize {
        self.journal.pending_bytes()
    }

    /// Simulates a crash while the pending batch was being written: its first
    /// `keep_bytes` reach the file, the rest is lost. Returns the last seq
    /// whose record was written whole. For crash tests.
    #[doc(hidden)]
    pub fn crash_with_torn_write(self, keep_bytes: usize) -> Result<u64, LedgerError> {
        Ok(self.journal.crash_with_torn_write(keep_bytes)?)
    }
}

/// A fresh directory under the system temp dir, removed on drop.
#[cfg(test)]
pub(crate) mod test_dir {
    use std::path::{Path, PathBuf};
    use std::sync::atomic::{AtomicU32, Ordering};

    pub struct TestDir(PathBuf);

    impl TestDir {
        pub fn new(name: &str) -> TestDir {
            static COUNTER: AtomicU32 = AtomicU32::new(0);
            let n = COUNTER.fetch_add(1, Ordering::Relaxed);
            let path =
                std::env::temp_dir().join(format!("bursar-{name}-{}-{n}", std::process::id()));
            let _ = std::fs::remove_dir_all(&path);
            std::fs::create_dir_all(&path).unwrap();
            TestDir(path)
        }

        pub fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for TestDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}
