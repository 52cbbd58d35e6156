//! Snapshots: checkpoints of the books, so recovery replays only the journal
//! written since.
//!
//! # Format
//!
//! `snapshot-<journal seq, 20 digits>.rkyv`:
//!
//! ```text
//! magic         8 bytes "BRSNAP01"
//! journal_seq   u64 LE   the last journal record the snapshot includes
//! body_len      u64 LE
//! body_crc32c   u32 LE
//! header_crc32c u32 LE   over the 28 bytes above
//! body          rkyv 0.8 archive of `SnapshotBody` (validated by bytecheck on load)
//! ```
//!
//! The archive holds plain integers (a stable, explicit format, decoupled from
//! the in-memory types); loading converts and then checks every field through
//! [`LedgerState::from_books`]. Leases are not in a snapshot: they belong to
//! worker threads of one process and expire with it.
//!
//! # Writing
//!
//! Written to `<name>.tmp`, synced, renamed into place, and the directory
//! synced: a snapshot is either whole under its final name or absent. Loading
//! takes the newest snapshot that checks out and reports the others.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use rkyv::util::AlignedVec;

use crate::budget::period::{Alignment, Period, Reset, ResetUnit};
use crate::budget::{Budget, Mode};
use crate::ledger::journal::{sync_dir, JournalError};
use crate::ledger::messages::{EntityId, EntityKind};
use crate::ledger::state::{Books, EntityBooks, LedgerState, StateConfig};
use crate::money::Money;

pub const SNAPSHOT_MAGIC: [u8; 8] = *b"BRSNAP01";
pub const SNAPSHOT_HEADER_BYTES: usize = 32;
/// Format version inside the body.
pub const SNAPSHOT_VERSION: u32 = 1;
/// Snapshots kept by default: the newest, and one to fall back on if the
/// newest is damaged (the journal is kept back to the oldest one kept).
pub const SNAPSHOTS_KEPT_DEFAULT: u32 = 2;
pub const SNAPSHOTS_KEPT_MAX: u32 = 16;
/// Largest snapshot body we read (a bound against a corrupt length field):
/// generous for [`crate::ledger::messages::ENTITIES_MAX`] entities and the
/// largest settled-id window.
pub const SNAPSHOT_BODY_BYTES_MAX: u64 = 4 * 1024 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("snapshot {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("snapshot {path} is invalid: {reason}")]
    Invalid { path: PathBuf, reason: String },
    #[error("snapshot encoding failed: {0}")]
    Encode(String),
}

impl SnapshotError {
    /// A write or read failed for an I/O reason (a full disk, a failed
    /// `fsync`), not because of what a file holds.
    pub fn is_io(&self) -> bool {
        matches!(self, SnapshotError::Io { .. })
    }
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> SnapshotError + '_ {
    move |source| SnapshotError::Io {
        path: path.to_path_buf(),
        source,
    }
}

#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, PartialEq)]
struct SnapshotBody {
    version: u32,
    journal_seq: u64,
    entities: Vec<SnapshotEntity>,
    settled_ids: Vec<u128>,
}

#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, PartialEq)]
struct SnapshotEntity {
    id: u32,
    kind: u8,
    budget: Option<SnapshotBudget>,
    anchor_ms: i64,
    period_start_ms: i64,
    period_end_ms: i64,
    epoch: u64,
    spent: i128,
    topup: i128,
    lifetime_spent: i128,
}

#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, PartialEq)]
struct SnapshotBudget {
    limit: i128,
    /// 0: no reset (prepaid).
    reset_count: u16,
    reset_unit: u8,
    calendar: bool,
    soft: bool,
    soft_limit: Option<i128>,
}

fn unit_code(unit: ResetUnit) -> u8 {
    ResetUnit::ALL
        .iter()
        .position(|u| *u == unit)
        .map_or(0, |i| i as u8 + 1)
}

fn to_body(state: &LedgerState) -> SnapshotBody {
    SnapshotBody {
        version: SNAPSHOT_VERSION,
        journal_seq: state.journal_seq(),
        entities: state
            .entity_books()
            .map(|e| SnapshotEntity {
                id: e.id.0,
                kind: e.kind.code(),
                budget: e.budget.map(|b| SnapshotBudget {
                    limit: b.limit.picodollars(),
                    reset_count: b.reset.map_or(0, |r| r.count()),
                    reset_unit: b.reset.map_or(0, |r| unit_code(r.unit())),
                    calendar: b.alignment == Alignment::Calendar,
                    soft: b.mode == Mode::Soft,
                    soft_limit: b.soft_limit.map(|m| m.picodollars()),
                }),
                anchor_ms: e.anchor_ms,
                period_start_ms: e.period.start_ms,
                period_end_ms: e.period.end_ms,
                epoch: e.epoch,
                spent: e.spent.picodollars(),
                topup: e.topup.picodollars(),
                lifetime_spent: e.lifetime_spent.picodollars(),
            })
            .collect(),
        settled_ids: state.settled_ids().collect(),
    }
}

fn from_body(body: SnapshotBody) -> Result<Books, String> {
    if body.version != SNAPSHOT_VERSION {
        return Err(format!("unknown snapshot version {}", body.version));
    }
    let money = |units: i128| {
        Money::from_picodollars(units).ok_or_else(|| format!("amount {units} out of range"))
    };
    let mut entities = Vec::with_capacity(body.entities.len());
    for e in body.entities {
        let kind = EntityKind::from_code(e.kind).ok_or(format!("bad entity kind {}", e.kind))?;
        let budget = match e.budget {
            None => None,
            Some(b) => Some(Budget {
                limit: money(b.limit)?,
                reset: match b.reset_count {
                    0 => None,
                    count => {
                        let unit = ResetUnit::ALL
                            .get(usize::from(b.reset_unit).wrapping_sub(1))
                            .copied()
                            .ok_or(format!("bad reset unit {}", b.reset_unit))?;
                        Some(Reset::new(count, unit).map_err(|e| e.to_string())?)
                    }
                },
                alignment: if b.calendar {
                    Alignment::Calendar
                } else {
                    Alignment::Rolling
                },
                mode: if b.soft { Mode::Soft } else { Mode::Strict },
                soft_limit: b.soft_limit.map(money).transpose()?,
            }),
        };
        entities.push(EntityBooks {
            id: EntityId(e.id),
            kind,
            budget,
            anchor_ms: e.anchor_ms,
            period: Period {
                start_ms: e.period_start_ms,
                end_ms: e.period_end_ms,
            },
            epoch: e.epoch,
            spent: money(e.spent)?,
            topup: money(e.topup)?,
            lifetime_spent: money(e.lifetime_spent)?,
        });
    }
    Ok(Books {
        journal_seq: body.journal_seq,
        entities,
        settled_ids: body.settled_ids,
    })
}

pub fn snapshot_name(journal_seq: u64) -> String {
    format!("snapshot-{journal_seq:020}.rkyv")
}

fn parse_snapshot_name(name: &str) -> Option<u64> {
    let digits = name.strip_prefix("snapshot-")?.strip_suffix(".rkyv")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Snapshots in `dir`, oldest first, as (journal seq, path).
pub fn list_snapshots(dir: &Path) -> Result<Vec<(u64, PathBuf)>, SnapshotError> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_error(dir))? {
        let entry = entry.map_err(io_error(dir))?;
        if let Some(seq) = entry.file_name().to_str().and_then(parse_snapshot_name) {
            out.push((seq, entry.path()));
        }
    }
    out.sort();
    Ok(out)
}

/// A snapshot on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotInfo {
    pub path: PathBuf,
    pub journal_seq: u64,
    pub bytes: u64,
}

/// Writes a snapshot of the books atomically (temp file, sync, rename, sync dir).
pub fn write_snapshot(
    dir: &Path,
    state: &LedgerState,
    fsync: bool,
) -> Result<SnapshotInfo, SnapshotError> {
    let journal_seq = state.journal_seq();
    let body = rkyv::to_bytes::<rkyv::rancor::Error>(&to_body(state))
        .map_err(|e| SnapshotError::Encode(e.to_string()))?;
    let mut header = [0u8; SNAPSHOT_HEADER_BYTES];
    header[..8].copy_from_slice(&SNAPSHOT_MAGIC);
    header[8..16].copy_from_slice(&journal_seq.to_le_bytes());
    header[16..24].copy_from_slice(&(body.len() as u64).to_le_bytes());
    header[24..28].copy_from_slice(&crc32c::crc32c(&body).to_le_bytes());
    let header_crc = crc32c::crc32c(&header[..28]);
    header[28..32].copy_from_slice(&header_crc.to_le_bytes());

    let path = dir.join(snapshot_name(journal_seq));
    let tmp = dir.join(format!("{}.tmp", snapshot_name(journal_seq)));
    let written = (|| {
        let mut file = File::create(&tmp)?;
        file.write_all(&header)?;
        file.write_all(&body)?;
        if fsync {
            file.sync_all()?;
        }
        Ok(())
    })();
    if let Err(e) = written {
        // A snapshot cut short by a full disk gives its blocks back at
        // once: the journal needs them more (it holds every charge).
        let _ = fs::remove_file(&tmp);
        return Err(io_error(&tmp)(e));
    }
    fs::rename(&tmp, &path).map_err(io_error(&path))?;
    if fsync {
        // An I/O error like any other write's: retryable, not corruption.
        sync_dir(dir).map_err(|e| match e {
            JournalError::Io { path, source } => SnapshotError::Io { path, source },
            other => SnapshotError::Invalid {
                path: dir.to_path_buf(),
                reason: other.to_string(),
            },
        })?;
    }
    Ok(SnapshotInfo {
        path,
        journal_seq,
        bytes: (SNAPSHOT_HEADER_BYTES + body.len()) as u64,
    })
}

/// Reads and checks one snapshot file into a ledger (no leases).
pub fn read_snapshot(path: &Path, config: StateConfig) -> Result<LedgerState, SnapshotError> {
    let mut file = File::open(path).map_err(io_error(path))?;
    let file_len = file.metadata().map_err(io_error(path))?.len();
    read_snapshot_from(&mut file, file_len, path, config)
}

/// [`read_snapshot`] of a snapshot's bytes already in memory (`path` names
/// it in errors).
pub fn read_snapshot_bytes(
    bytes: &[u8],
    path: &Path,
    config: StateConfig,
) -> Result<LedgerState, SnapshotError> {
    read_snapshot_from(&mut &bytes[..], bytes.len() as u64, path, config)
}

fn read_snapshot_from(
    file: &mut impl Read,
    file_len: u64,
    path: &Path,
    config: StateConfig,
) -> Result<LedgerState, SnapshotError> {
    let invalid = |reason: String| SnapshotError::Invalid {
        path: path.to_path_buf(),
        reason,
    };
    let mut header = [0u8; SNAPSHOT_HEADER_BYTES];
    file.read_exact(&mut header)
        .map_err(|e| invalid(format!("short header: {e}")))?;
    let u64_at = |i: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&header[i..i + 8]);
        u64::from_le_bytes(b)
    };
    let u32_at = |i: usize| {
        let mut b = [0u8; 4];
        b.copy_from_slice(&header[i..i + 4]);
        u32::from_le_bytes(b)
    };
    if header[..8] != SNAPSHOT_MAGIC {
        return Err(invalid("bad magic".into()));
    }
    if crc32c::crc32c(&header[..28]) != u32_at(28) {
        return Err(invalid("header checksum mismatch".into()));
    }
    let journal_seq = u64_at(8);
    let body_len = u64_at(16);
    if body_len > SNAPSHOT_BODY_BYTES_MAX {
        return Err(invalid(format!("body of {body_len} bytes is too large")));
    }
    if file_len != SNAPSHOT_HEADER_BYTES as u64 + body_len {
        return Err(invalid(format!(
            "file is {file_len} bytes, header says {}",
            SNAPSHOT_HEADER_BYTES as u64 + body_len
        )));
    }
    // rkyv needs the archive aligned: read straight into an aligned buffer.
    let mut body = AlignedVec::<16>::with_capacity(body_len as usize);
    body.resize(body_len as usize, 0);
    file.read_exact(&mut body)
        .map_err(|e| invalid(format!("short body: {e}")))?;
    if crc32c::crc32c(&body) != u32_at(24) {
        return Err(invalid("body checksum mismatch".into()));
    }
    let archived = rkyv::from_bytes::<SnapshotBody, rkyv::rancor::Error>(&body)
        .map_err(|e| invalid(format!("archive does not validate: {e}")))?;
    if archived.journal_seq != journal_seq {
        return Err(invalid(
            "header and body disagree on the journal position".into(),
        ));
    }
    let books = from_body(archived).map_err(invalid)?;
    LedgerState::from_books(config, books).map_err(|e| invalid(e.to_string()))
}

/// The newest valid snapshot, and the newer ones that were rejected (with why).
#[derive(Debug)]
pub struct Loaded {
    pub newest: Option<(SnapshotInfo, LedgerState)>,
    pub rejected: Vec<(PathBuf, String)>,
}

/// Loads the newest snapshot that checks out. Leftover temp files (a crash
/// during a write) are removed when `remove_tmp` is set (a start, not a
/// check).
pub fn load_newest(
    dir: &Path,
    config: StateConfig,
    remove_tmp: bool,
) -> Result<Loaded, SnapshotError> {
    if remove_tmp {
        for entry in fs::read_dir(dir).map_err(io_error(dir))? {
            let entry = entry.map_err(io_error(dir))?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.starts_with("snapshot-") && name.ends_with(".tmp") {
                log::warn!("removing unfinished snapshot {}", entry.path().display());
                fs::remove_file(entry.path()).map_err(io_error(&entry.path()))?;
            }
        }
    }
    let mut rejected = Vec::new();
    for (seq, path) in list_snapshots(dir)?.into_iter().rev() {
        match read_snapshot(&path, config) {
            Ok(state) => {
                let bytes = fs::metadata(&path).map_err(io_error(&path))?.len();
                return Ok(Loaded {
                    newest: Some((
                        SnapshotInfo {
                            path,
                            journal_seq: seq,
                            bytes,
                        },
                        state,
                    )),
                    rejected,
                });
            }
            Err(e) => {
                log::warn!("skipping snapshot: {e}");
                rejected.push((path, e.to_string()));
            }
        }
    }
    Ok(Loaded {
        newest: None,
        rejected,
    })
}

/// Removes all but the newest `keep` snapshots. Returns the journal seq of the
/// oldest one kept once `keep` are kept: the journal can be removed through it.
/// With fewer, the whole journal stays, so a damaged snapshot always has
/// something to fall back on (an older snapshot, or the journal from record 1).
pub fn prune_snapshots(dir: &Path, keep: u32) -> Result<Option<u64>, SnapshotError> {
    assert!(keep >= 1);
    let snapshots = list_snapshots(dir)?;
    if snapshots.len() < keep as usize {
        return Ok(None);
    }
    let cut = snapshots.len() - keep as usize;
    for (_, path) in &snapshots[..cut] {
        fs::remove_file(path).map_err(io_error(path))?;
    }
    Ok(snapshots.get(cut).map(|(seq, _)| *seq))
}

/// Moves a snapshot that failed to load aside (`<name>.rejected`), so it is
/// neither loaded nor counted as kept again, and stays for a post-mortem.
pub fn set_aside(path: &Path) -> Result<PathBuf, SnapshotError> {
    let mut name = path.as_os_str().to_owned();
    name.push(".rejected");
    let aside = PathBuf::from(name);
    fs::rename(path, &aside).map_err(io_error(path))?;
    Ok(aside)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::budget::period::unix_ms;
    use crate::ledger::messages::{Charge, Charges, Command};
    use crate::ledger::test_dir::TestDir;

    fn sample_state() -> LedgerState {
        let config = StateConfig {
            workers: 2,
            settled_ids_max: 16,
            cluster: false,
        };
        let mut s = LedgerState::new(config).unwrap();
        let now = unix_ms(2024, 2, 29, 12, 0, 0);
        let budgets = [
            Some(Budget {
                soft_limit: Some(Money::from_usd(3)),
                alignment: Alignment::Calendar,
                ..Budget::new(Money::from_usd(5), Some(Reset::one(ResetUnit::Quarter)))
            }),
            Some(Budget::new(Money::from_usd(1), None)),
            None,
        ];
        for (i, budget) in budgets.into_iter().enumerate() {
            s.apply(
                now,
                &Command::SetBudget {
                    entity: EntityId(i as u32 * 3),
                    kind: EntityKind::ALL[i],
                    budget,
                },
            );
        }
        s.apply(
            now,
            &Command::TopUp {
                entity: EntityId(3),
                amount: Money::from_usd(2),
            },
        );
        for id in 0..20u128 {
            s.apply(
                now,
                &Command::Settle {
                    request_id: id,
                    worker: 1,
                    estimated: false,
                    charges: Charges::from_slice(&[
                        Charge {
                            entity: EntityId(0),
                            amount: Money::from_picodollars(id as i128 * 7).unwrap(),
                            from_lease: false,
                        },
                        Charge {
                            entity: EntityId(6),
                            amount: Money::UNIT,
                            from_lease: false,
                        },
                    ])
                    .unwrap(),
                },
            );
        }
        s
    }

    #[test]
    fn round_trip_and_newest_wins() {
        let dir = TestDir::new("snapshot-round-trip");
        let mut s = sample_state();
        let first = write_snapshot(dir.path(), &s, true).unwrap();
        s.apply(
            0,
            &Command::Reset {
                entity: EntityId(0),
            },
        );
        let second = write_snapshot(dir.path(), &s, true).unwrap();
        assert!(second.journal_seq > first.journal_seq);
        let loaded = load_newest(dir.path(), s.config(), true).unwrap();
        let (info, state) = loaded.newest.unwrap();
        assert_eq!(info, second);
        assert_eq!(state.books(), s.books());
        state.check_invariants();
        assert!(loaded.rejected.is_empty());
        assert_eq!(
            prune_snapshots(dir.path(), 1).unwrap(),
            Some(second.journal_seq)
        );
        assert_eq!(list_snapshots(dir.path()).unwrap().len(), 1);
    }

    #[test]
    fn every_kind_of_entity_keeps_its_kind_through_a_snapshot() {
        let dir = TestDir::new("snapshot-kinds");
        let mut s = LedgerState::new(StateConfig {
            workers: 1,
            settled_ids_max: 4,
            cluster: false,
        })
        .unwrap();
        let now = unix_ms(2026, 12, 6, 12, 0, 0);
        for (i, kind) in EntityKind::ALL.into_iter().enumerate() {
            s.apply(
                now,
                &Command::SetBudget {
                    entity: EntityId(i as u32),
                    kind,
                    budget: Some(Budget::new(Money::from_usd(i as u32 + 1), None)),
                },
            );
        }
        write_snapshot(dir.path(), &s, false).unwrap();
        let (_, loaded) = load_newest(dir.path(), s.config(), true)
            .unwrap()
            .newest
            .unwrap();
        assert_eq!(loaded.books(), s.books());
        for (i, kind) in EntityKind::ALL.into_iter().enumerate() {
            let view = loaded.view(EntityId(i as u32), now).unwrap();
            assert_eq!(view.kind, kind);
        }
    }

    #[test]
    fn damaged_snapshots_are_rejected_and_the_older_one_used() {
        let dir = TestDir::new("snapshot-damaged");
        let mut s = sample_state();
        let older = write_snapshot(dir.path(), &s, false).unwrap();
        let older_books = s.books();
        s.apply(
            0,
            &Command::Reset {
                entity: EntityId(0),
            },
        );
        let newer = write_snapshot(dir.path(), &s, false).unwrap();
        let pristine = fs::read(&newer.path).unwrap();
        // Every single-byte corruption and every truncation is an error, never a panic.
        for i in (0..pristine.len()).step_by(7) {
            let mut bad = pristine.clone();
            bad[i] ^= 0x5a;
            fs::write(&newer.path, &bad).unwrap();
            assert!(read_snapshot(&newer.path, s.config()).is_err(), "byte {i}");
        }
        for len in [0, 5, 31, 32, 33, pristine.len() - 1] {
            fs::write(&newer.path, &pristine[..len]).unwrap();
            assert!(read_snapshot(&newer.path, s.config()).is_err(), "len {len}");
        }
        let loaded = load_newest(dir.path(), s.config(), true).unwrap();
        let (info, state) = loaded.newest.unwrap();
        assert_eq!(info.path, older.path);
        assert_eq!(state.books(), older_books);
        assert_eq!(loaded.rejected.len(), 1);
        // A leftover temp file is cleaned up.
        fs::write(
            dir.path().join("snapshot-00000000000000000099.rkyv.tmp"),
            b"x",
        )
        .unwrap();
        load_newest(dir.path(), s.config(), true).unwrap();
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 2);
    }

    #[test]
    fn checksummed_but_inconsistent_books_are_refused() {
        // A body that validates as an archive but breaks the ledger's rules.
        let s = sample_state();
        let mut books = s.books();
        books.entities[0].spent = Money::from_usd(10);
        books.entities[0].lifetime_spent = Money::from_usd(1);
        assert!(LedgerState::from_books(s.config(), books).is_err());
        let mut books = s.books();
        books.entities[0].period.end_ms += 1;
        assert!(LedgerState::from_books(s.config(), books).is_err());
        let mut books = s.books();
        books.entities.swap(0, 1);
        assert!(LedgerState::from_books(s.config(), books).is_err());
        let mut body = to_body(&s);
        body.entities[0].kind = 77;
        assert!(from_body(body).is_err());
    }
}
