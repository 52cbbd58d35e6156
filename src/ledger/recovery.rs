//! Recovery: the newest valid snapshot, then the journal after it.
//!
//! Recovery reads; it changes the directory only to cut a torn tail off the
//! last journal segment and to remove unfinished snapshot temp files. Running
//! it twice gives the same books: records at or below a snapshot's position
//! are skipped, and the torn tail is already gone the second time.

use std::path::{Path, PathBuf};

use crate::ledger::journal::{self, JournalError, TornTail};
use crate::ledger::messages::{ReplayError, Replayed};
use crate::ledger::snapshot::{self, SnapshotError, SnapshotInfo};
use crate::ledger::state::{LedgerState, StateConfig};

#[derive(Debug, thiserror::Error)]
pub enum RecoveryError {
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error("journal file {path}: {source}; the books cannot be rebuilt (is a snapshot missing or damaged?)")]
    Replay {
        path: PathBuf,
        #[source]
        source: ReplayError,
    },
    #[error("ledger state: {0}")]
    State(String),
}

/// What recovery found, for the start-up log.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// The snapshot the books start from (`None`: from an empty ledger).
    pub snapshot: Option<SnapshotInfo>,
    /// Newer snapshots that did not check out, and why.
    pub snapshots_rejected: Vec<(PathBuf, String)>,
    pub segments_read: usize,
    pub records_replayed: u64,
    /// Records already in the snapshot.
    pub records_skipped: u64,
    /// A torn tail cut off the last segment.
    pub torn_tail: Option<(PathBuf, TornTail)>,
    /// The last record in the recovered books.
    pub journal_seq: u64,
}

/// The recovered books and where the journal continues.
#[derive(Debug)]
pub struct Recovered {
    pub state: LedgerState,
    pub report: RecoveryReport,
    /// The newest segment, if appends can continue it: (first seq, valid bytes).
    pub append_to: Option<(u64, u64)>,
}

/// Loads the newest valid snapshot in `dir` and replays the journal after it,
/// cutting a torn tail and removing unfinished snapshots.
pub fn recover(dir: &Path, config: StateConfig) -> Result<Recovered, RecoveryError> {
    recover_with(dir, config, true)
}

/// [`recover`] without changing anything in `dir` (`bursar verify-state`):
/// the same books, and the report says what a start would repair.
pub fn inspect(dir: &Path, config: StateConfig) -> Result<Recovered, RecoveryError> {
    recover_with(dir, config, false)
}

fn recover_with(dir: &Path, config: StateConfig, repair: bool) -> Result<Recovered, RecoveryError> {
    let loaded = snapshot::load_newest(dir, config, repair)?;
    let mut report = RecoveryReport {
        snapshots_rejected: loaded.rejected,
        ..RecoveryReport::default()
    };
    let mut state = match loaded.newest {
        Some((info, state)) => {
            report.snapshot = Some(info);
            state
        }
        None => LedgerState::new(config).map_err(|e| RecoveryError::State(e.to_string()))?,
    };
    let segments = journal::list_segments(dir)?;
    let mut append_to = None;
    for (i, (first_seq, path)) in segments.iter().enumerate() {
        let last = i + 1 == segments.len();
        // A segment whose successor starts at or below the books' next record
        // holds nothing new: skip reading it.
        if let Some((next_first, _)) = segments.get(i + 1) {
            if *next_first <= state.journal_seq() + 1 {
                continue;
            }
        }
        report.segments_read += 1;
        let scan = if last && repair {
            journal::replay(path)?
        } else if last {
            journal::scan_segment(path, Some(*first_seq))?
        } else {
            // Zeros after whole records are accepted here (a segment is
            // trimmed, durably, before its successor is created, so they are
            // not expected); an incomplete record is not.
            let scan = journal::scan_segment(path, Some(*first_seq))?;
            if let Some(torn) = scan.torn {
                return Err(JournalError::Corrupt {
                    path: path.clone(),
                    offset: torn.offset,
                    reason: "a sealed segment ends in an incomplete record".into(),
                }
                .into());
            }
            scan
        };
        if let Some(torn) = scan.torn {
            report.torn_tail = Some((path.clone(), torn));
        }
        for record in &scan.records {
            match state.replay(record) {
                Ok(Replayed::Applied) => report.records_replayed += 1,
                Ok(Replayed::Skipped) => report.records_skipped += 1,
                Err(source) => {
                    return Err(RecoveryError::Replay {
                        path: path.clone(),
                        source,
                    })
                }
            }
        }
        if last {
            // Appends continue this segment only if it ends where the books do.
            let segment_last_seq = scan.records.last().map_or(first_seq - 1, |r| r.seq);
            if segment_last_seq == state.journal_seq() {
                append_to = Some((*first_seq, scan.valid_len));
            }
        }
    }
    report.journal_seq = state.journal_seq();
    Ok(Recovered {
        state,
        report,
        append_to,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::budget::period::unix_ms;
    use crate::budget::Budget;
    use crate::ledger::messages::{Charge, Charges, Command, EntityId, EntityKind};
    use crate::ledger::test_dir::TestDir;
    use crate::ledger::{Ledger, LedgerConfig};
    use crate::money::Money;

    fn config() -> LedgerConfig {
        let mut c = LedgerConfig::default();
        c.state.workers = 2;
        c.state.settled_ids_max = 1000;
        c.journal.sync_records_max = 4;
        c
    }

    fn drive(ledger: &mut Ledger, ids: std::ops::Range<u128>) {
        let now = unix_ms(2024, 3, 1, 0, 0, 0);
        for id in ids {
            ledger
                .apply(
                    now + id as i64,
                    &Command::Settle {
                        request_id: id,
                        worker: 0,
                        estimated: false,
                        charges: Charges::from_slice(&[Charge {
                            entity: EntityId(1),
                            amount: Money::UNIT,
                            from_lease: false,
                        }])
                        .unwrap(),
                    },
                )
                .unwrap();
        }
    }

    fn setup(ledger: &mut Ledger) {
        ledger
            .apply(
                0,
                &Command::SetBudget {
                    entity: EntityId(1),
                    kind: EntityKind::Key,
                    budget: Some(Budget::new(Money::from_usd(1), None)),
                },
            )
            .unwrap();
    }

    #[test]
    fn recovery_is_idempotent_and_checkpoints_truncate_the_journal() {
        let dir = TestDir::new("recovery-idempotent");
        let (mut ledger, report) = Ledger::open(dir.path(), config()).unwrap();
        assert_eq!(report.journal_seq, 0);
        setup(&mut ledger);
        drive(&mut ledger, 0..10);
        ledger.checkpoint().unwrap();
        drive(&mut ledger, 10..25);
        ledger.checkpoint().unwrap();
        drive(&mut ledger, 25..30);
        ledger.flush().unwrap();
        let books = ledger.state().books();
        drop(ledger);
        let first = recover(dir.path(), config().state).unwrap();
        assert_eq!(first.state.books(), books);
        assert_eq!(
            first.report.snapshot.as_ref().map(|s| s.journal_seq),
            Some(26)
        );
        assert_eq!(first.report.records_replayed, 5);
        let second = recover(dir.path(), config().state).unwrap();
        assert_eq!(second.state.books(), books);
        assert_eq!(second.report, first.report);
        // Two snapshots kept; the journal goes back to the older one.
        assert_eq!(snapshot::list_snapshots(dir.path()).unwrap().len(), 2);
        let segments = journal::list_segments(dir.path()).unwrap();
        assert_eq!(segments.first().map(|s| s.0), Some(12));
        // Reopen and continue where it stopped.
        let (mut ledger, _) = Ledger::open(dir.path(), config()).unwrap();
        drive(&mut ledger, 30..31);
        ledger.flush().unwrap();
        let view = ledger.state().view(EntityId(1), 0).unwrap();
        assert_eq!(view.spent, Money::from_picodollars(31).unwrap());
    }

    #[test]
    fn a_damaged_newest_snapshot_falls_back_to_the_older_one() {
        let dir = TestDir::new("recovery-fallback");
        let (mut ledger, _) = Ledger::open(dir.path(), config()).unwrap();
        setup(&mut ledger);
        drive(&mut ledger, 0..10);
        ledger.checkpoint().unwrap();
        drive(&mut ledger, 10..20);
        let newest = ledger.checkpoint().unwrap();
        drive(&mut ledger, 20..23);
        ledger.flush().unwrap();
        let books = ledger.state().books();
        drop(ledger);
        let mut bytes = std::fs::read(&newest.path).unwrap();
        let n = bytes.len();
        bytes[n - 3] ^= 1;
        std::fs::write(&newest.path, bytes).unwrap();
        let r = recover(dir.path(), config().state).unwrap();
        assert_eq!(r.state.books(), books);
        assert_eq!(r.report.snapshots_rejected.len(), 1);
        assert_eq!(r.report.snapshot.map(|s| s.journal_seq), Some(11));
    }

    #[test]
    fn missing_records_stop_recovery_with_a_clear_error() {
        let dir = TestDir::new("recovery-gap");
        let (mut ledger, _) = Ledger::open(dir.path(), config()).unwrap();
        setup(&mut ledger);
        drive(&mut ledger, 0..10);
        ledger.checkpoint().unwrap();
        drive(&mut ledger, 10..20);
        ledger.checkpoint().unwrap();
        drop(ledger);
        // Without snapshots the journal left does not start at record 1.
        for (_, path) in snapshot::list_snapshots(dir.path()).unwrap() {
            std::fs::remove_file(path).unwrap();
        }
        let err = recover(dir.path(), config().state).unwrap_err();
        let message = err.to_string();
        assert!(matches!(err, RecoveryError::Replay { .. }), "{message}");
        assert!(message.contains("journal-000"), "{message}");
        assert!(message.contains("missing"), "{message}");
    }
}
