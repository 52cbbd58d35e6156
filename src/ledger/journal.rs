//! The journal: an append-only log of the ledger's durable records.
//!
//! # Format
//!
//! The journal is a sequence of segment files `journal-<first seq, 20 digits>.log`
//! in the state directory. A segment is a sequence of frames, each:
//!
//! ```text
//! magic   u32 LE  "BRJ1" (0x314A5242)
//! len     u32 LE  body length, 1..=RECORD_BODY_BYTES_MAX
//! crc32c  u32 LE  over magic, len and body
//! body    len bytes: kind u8, seq u64, now_ms i64, then the kind's fields (all LE)
//! ```
//!
//! Records carry consecutive sequence numbers; a segment's first record has the
//! seq in its name. Replay is idempotent because the books remember the last
//! seq they include and skip records at or below it.
//!
//! # Durability
//!
//! [`JournalWriter::append`] encodes into a buffer; the buffer is written and
//! `fdatasync`ed as one batch when it holds `sync_records_max` records, when
//! `sync_interval_ms` has passed ([`JournalWriter::flush_if_due`]), or on
//! [`JournalWriter::flush`]. [`JournalWriter::durable_seq`] is the last record
//! known to be on disk.
//!
//! # Crashes
//!
//! A crash can leave the last segment with a torn tail: a partial frame, or a
//! frame whose write did not reach the disk whole. On replay, a frame that does
//! not check out is a torn tail if no valid frame follows it anywhere in the
//! file: it is truncated and logged. Zeros alone after the last record are the
//! segment's preallocated space ([`JOURNAL_PREALLOC_BYTES`]), not a tear: they
//! are cut too, quietly. If a valid frame does follow, the damage is
//! in the middle of the log, where no crash can put it: that is corruption, and
//! replay stops with an error naming the file and byte offset. Sealed segments
//! (all but the last) must be whole: a segment's zero-filled space is cut off
//! (and the cut synced) before the next segment is created.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::budget::period::{Alignment, Reset, ResetUnit};
use crate::budget::{Budget, Mode};
use crate::ledger::messages::{
    Charge, Charges, EntityId, EntityKind, Record, RecordBody, CHARGES_PER_SETTLE_MAX,
};
use crate::money::Money;

/// "BRJ1" little-endian: the frame magic and format version.
pub const FRAME_MAGIC: u32 = u32::from_le_bytes(*b"BRJ1");
/// magic + len + crc32c.
pub const FRAME_HEADER_BYTES: usize = 12;
/// Largest record body: a settle with the most charges is 37 + 16 × 21 =
/// 373 bytes. (Builds whose settles carried at most 8 charges wrote bodies
/// of at most 205 bytes; their journals read the same.)
pub const RECORD_BODY_BYTES_MAX: usize = 512;
/// Default and bounds of the batch size (records per fsync).
pub const JOURNAL_SYNC_RECORDS_MAX_DEFAULT: u32 = 4096;
pub const JOURNAL_SYNC_RECORDS_MAX_CEILING: u32 = 1 << 16;
/// Default and bounds of the batch interval.
pub const JOURNAL_SYNC_INTERVAL_MS_DEFAULT: u32 = 2;
pub const JOURNAL_SYNC_INTERVAL_MS_CEILING: u32 = 10_000;
/// A segment is sealed and a new one started past this size, so replay reads
/// one bounded file at a time.
pub const JOURNAL_SEGMENT_BYTES_MAX_DEFAULT: u64 = 256 * 1024 * 1024;
pub const JOURNAL_SEGMENT_BYTES_MAX_CEILING: u64 = 4 * 1024 * 1024 * 1024;
/// A segment file grows ahead of its records in zero-filled steps of this
/// many bytes, so a batch overwrites space the file already has: its
/// `fdatasync` then writes the data alone, not also the inode (whose size
/// would otherwise change, and need writing, at every batch). The zeros are
/// written, not `fallocate`d: writing into an unwritten extent would change
/// the extent tree instead. One step is ~10,000 settles; at 5,000 settles a
/// second the inode is written every ~2 s instead of every 10 ms.
pub const JOURNAL_PREALLOC_BYTES: u64 = 1 << 20;
/// Zeros written per call while a segment grows by a step.
const PREALLOC_WRITE_BYTES: usize = 64 * 1024;

const SETTLE_FIXED_BYTES: usize = 1 + 8 + 8 + 16 + 2 + 1 + 1;
const CHARGE_BYTES: usize = 4 + 16 + 1;
const _: () =
    assert!(SETTLE_FIXED_BYTES + CHARGES_PER_SETTLE_MAX * CHARGE_BYTES <= RECORD_BODY_BYTES_MAX);
const _: () = assert!(JOURNAL_SYNC_RECORDS_MAX_DEFAULT <= JOURNAL_SYNC_RECORDS_MAX_CEILING);
const _: () = assert!(JOURNAL_SEGMENT_BYTES_MAX_DEFAULT <= JOURNAL_SEGMENT_BYTES_MAX_CEILING);

const KIND_SETTLE: u8 = 1;
const KIND_ROLLOVER: u8 = 2;
const KIND_RESET: u8 = 3;
const KIND_TOP_UP: u8 = 4;
const KIND_SET_BUDGET: u8 = 5;
/// A cluster reset: a reset that also moves the period's start.
const KIND_CLUSTER_RESET: u8 = 6;

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("journal file {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("journal file {path} is corrupt at byte offset {offset}: {reason}")]
    Corrupt {
        path: PathBuf,
        offset: u64,
        reason: String,
    },
    #[error("journal config: {0}")]
    Config(String),
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> JournalError + '_ {
    move |source| JournalError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// How the journal batches its writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JournalConfig {
    /// Most time a record waits in the buffer (checked by `flush_if_due`).
    pub sync_interval_ms: u32,
    /// Most records in one batch; the batch is written when it is full.
    pub sync_records_max: u32,
    /// Segment size after which a new segment is started.
    pub segment_bytes_max: u64,
    /// `fdatasync` each batch. Only tests on throwaway directories turn it off.
    pub fsync: bool,
}

impl Default for JournalConfig {
    fn default() -> JournalConfig {
        JournalConfig {
            sync_interval_ms: JOURNAL_SYNC_INTERVAL_MS_DEFAULT,
            sync_records_max: JOURNAL_SYNC_RECORDS_MAX_DEFAULT,
            segment_bytes_max: JOURNAL_SEGMENT_BYTES_MAX_DEFAULT,
            fsync: true,
        }
    }
}

impl JournalConfig {
    pub fn validate(&self) -> Result<(), JournalError> {
        let bad = |s: String| Err(JournalError::Config(s));
        if self.sync_interval_ms > JOURNAL_SYNC_INTERVAL_MS_CEILING {
            return bad(format!(
                "sync_interval_ms must be at most {JOURNAL_SYNC_INTERVAL_MS_CEILING}"
            ));
        }
        if self.sync_records_max == 0 || self.sync_records_max > JOURNAL_SYNC_RECORDS_MAX_CEILING {
            return bad(format!(
                "sync_records_max must be 1..={JOURNAL_SYNC_RECORDS_MAX_CEILING}"
            ));
        }
        if self.segment_bytes_max < (FRAME_HEADER_BYTES + RECORD_BODY_BYTES_MAX) as u64
            || self.segment_bytes_max > JOURNAL_SEGMENT_BYTES_MAX_CEILING
        {
            return bad(format!(
                "segment_bytes_max must be at most {JOURNAL_SEGMENT_BYTES_MAX_CEILING}"
            ));
        }
        Ok(())
    }
}

/// The file name of the segment whose first record is `first_seq`.
pub fn segment_name(first_seq: u64) -> String {
    format!("journal-{first_seq:020}.log")
}

fn parse_segment_name(name: &str) -> Option<u64> {
    let digits = name.strip_prefix("journal-")?.strip_suffix(".log")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    // Records are numbered from 1.
    digits.parse().ok().filter(|&seq| seq >= 1)
}

/// The journal segments in `dir`, oldest first, as (first seq, path).
pub fn list_segments(dir: &Path) -> Result<Vec<(u64, PathBuf)>, JournalError> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_error(dir))? {
        let entry = entry.map_err(io_error(dir))?;
        if let Some(first) = entry.file_name().to_str().and_then(parse_segment_name) {
            out.push((first, entry.path()));
        }
    }
    out.sort();
    Ok(out)
}

/// Appends one framed record to `out`. Allocation-free once `out` has capacity.
pub fn encode_record(record: &Record, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&FRAME_MAGIC.to_le_bytes());
    out.extend_from_slice(&[0; 8]); // len and crc, filled below
    let body_start = out.len();
    let (kind, _) = kind_of(&record.body);
    out.push(kind);
    out.extend_from_slice(&record.seq.to_le_bytes());
    out.extend_from_slice(&record.now_ms.to_le_bytes());
    match record.body {
        RecordBody::Settle {
            request_id,
            worker,
            estimated,
            charges,
        } => {
            out.extend_from_slice(&request_id.to_le_bytes());
            out.extend_from_slice(&worker.to_le_bytes());
            out.push(u8::from(estimated));
            out.push(charges.len() as u8);
            for c in charges.as_slice() {
                out.extend_from_slice(&c.entity.0.to_le_bytes());
                out.extend_from_slice(&c.amount.picodollars().to_le_bytes());
                out.push(u8::from(c.from_lease));
            }
        }
        RecordBody::Rollover {
            entity,
            period_start_ms,
        } => {
            out.extend_from_slice(&entity.0.to_le_bytes());
            out.extend_from_slice(&period_start_ms.to_le_bytes());
        }
        RecordBody::Reset {
            entity,
            period_start_ms,
        } => {
            out.extend_from_slice(&entity.0.to_le_bytes());
            if let Some(start_ms) = period_start_ms {
                out.extend_from_slice(&start_ms.to_le_bytes());
            }
        }
        RecordBody::TopUp { entity, amount } => {
            out.extend_from_slice(&entity.0.to_le_bytes());
            out.extend_from_slice(&amount.picodollars().to_le_bytes());
        }
        RecordBody::SetBudget {
            entity,
            kind,
            budget,
        } => {
            out.extend_from_slice(&entity.0.to_le_bytes());
            out.push(kind.code());
            match budget {
                None => out.push(0),
                Some(b) => {
                    out.push(1);
                    out.extend_from_slice(&b.limit.picodollars().to_le_bytes());
                    let (count, unit) = match b.reset {
                        None => (0u16, 0u8),
                        Some(r) => (r.count(), unit_code(r.unit())),
                    };
                    out.extend_from_slice(&count.to_le_bytes());
                    out.push(unit);
                    out.push(match b.alignment {
                        Alignment::Rolling => 0,
                        Alignment::Calendar => 1,
                    });
                    out.push(match b.mode {
                        Mode::Strict => 0,
                        Mode::Soft => 1,
                    });
                    match b.soft_limit {
                        None => out.push(0),
                        Some(soft) => {
                            out.push(1);
                            out.extend_from_slice(&soft.picodollars().to_le_bytes());
                        }
                    }
                }
            }
        }
    }
    let body_len = out.len() - body_start;
    assert!(
        body_len <= RECORD_BODY_BYTES_MAX,
        "record body {body_len} bytes"
    );
    out[start + 4..start + 8].copy_from_slice(&(body_len as u32).to_le_bytes());
    let crc = crc32c::crc32c_append(crc32c::crc32c(&out[start..start + 8]), &out[body_start..]);
    out[start + 8..start + 12].copy_from_slice(&crc.to_le_bytes());
}

fn kind_of(body: &RecordBody) -> (u8, &'static str) {
    match body {
        RecordBody::Settle { .. } => (KIND_SETTLE, "settle"),
        RecordBody::Rollover { .. } => (KIND_ROLLOVER, "rollover"),
        RecordBody::Reset {
            period_start_ms: None,
            ..
        } => (KIND_RESET, "reset"),
        RecordBody::Reset {
            period_start_ms: Some(_),
            ..
        } => (KIND_CLUSTER_RESET, "cluster-reset"),
        RecordBody::TopUp { .. } => (KIND_TOP_UP, "top-up"),
        RecordBody::SetBudget { .. } => (KIND_SET_BUDGET, "set-budget"),
    }
}

fn unit_code(unit: ResetUnit) -> u8 {
    match unit {
        ResetUnit::Minute => 1,
        ResetUnit::Hour => 2,
        ResetUnit::Day => 3,
        ResetUnit::Week => 4,
        ResetUnit::Month => 5,
        ResetUnit::Quarter => 6,
        ResetUnit::Year => 7,
    }
}

fn unit_from_code(code: u8) -> Option<ResetUnit> {
    ResetUnit::ALL.into_iter().find(|u| unit_code(*u) == code)
}

/// A cursor that fails instead of panicking on short input.
struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take<const N: usize>(&mut self) -> Result<[u8; N], String> {
        if self.bytes.len() < N {
            return Err("record body too short".into());
        }
        let (head, rest) = self.bytes.split_at(N);
        self.bytes = rest;
        let mut out = [0u8; N];
        out.copy_from_slice(head);
        Ok(out)
    }
    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take::<1>()?[0])
    }
    fn bool(&mut self) -> Result<bool, String> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            b => Err(format!("bad flag {b}")),
        }
    }
    fn u16(&mut self) -> Result<u16, String> {
        Ok(u16::from_le_bytes(self.take()?))
    }
    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.take()?))
    }
    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(self.take()?))
    }
    fn i64(&mut self) -> Result<i64, String> {
        Ok(i64::from_le_bytes(self.take()?))
    }
    fn u128(&mut self) -> Result<u128, String> {
        Ok(u128::from_le_bytes(self.take()?))
    }
    fn money(&mut self) -> Result<Money, String> {
        let units = i128::from_le_bytes(self.take()?);
        Money::from_picodollars(units).ok_or_else(|| format!("amount {units} out of range"))
    }
}

/// Decodes a record body (the frame's checksum already matched).
pub fn decode_body(body: &[u8]) -> Result<Record, String> {
    let mut r = Reader { bytes: body };
    let kind = r.u8()?;
    let seq = r.u64()?;
    let now_ms = r.i64()?;
    let body = match kind {
        KIND_SETTLE => {
            let request_id = r.u128()?;
            let worker = r.u16()?;
            let estimated = r.bool()?;
            let n = usize::from(r.u8()?);
            if n == 0 || n > CHARGES_PER_SETTLE_MAX {
                return Err(format!("settle with {n} charges"));
            }
            let mut charges = Charges::new();
            for _ in 0..n {
                let entity = EntityId(r.u32()?);
                let amount = r.money()?;
                let from_lease = r.bool()?;
                charges
                    .push(Charge {
                        entity,
                        amount,
                        from_lease,
                    })
                    .ok_or("too many charges")?;
            }
            RecordBody::Settle {
                request_id,
                worker,
                estimated,
                charges,
            }
        }
        KIND_ROLLOVER => RecordBody::Rollover {
            entity: EntityId(r.u32()?),
            period_start_ms: r.i64()?,
        },
        KIND_RESET => RecordBody::Reset {
            entity: EntityId(r.u32()?),
            period_start_ms: None,
        },
        KIND_CLUSTER_RESET => RecordBody::Reset {
            entity: EntityId(r.u32()?),
            period_start_ms: Some(r.i64()?),
        },
        KIND_TOP_UP => RecordBody::TopUp {
            entity: EntityId(r.u32()?),
            amount: r.money()?,
        },
        KIND_SET_BUDGET => {
            let entity = EntityId(r.u32()?);
            let code = r.u8()?;
            let kind = EntityKind::from_code(code).ok_or(format!("bad entity kind {code}"))?;
            let budget = if r.bool()? {
                let limit = r.money()?;
                let count = r.u16()?;
                let unit = r.u8()?;
                let reset = match (count, unit) {
                    (0, 0) => None,
                    (count, unit) => {
                        let unit = unit_from_code(unit).ok_or(format!("bad reset unit {unit}"))?;
                        Some(Reset::new(count, unit).map_err(|e| e.to_string())?)
                    }
                };
                let alignment = match r.u8()? {
                    0 => Alignment::Rolling,
                    1 => Alignment::Calendar,
                    b => return Err(format!("bad alignment {b}")),
                };
                let mode = match r.u8()? {
                    0 => Mode::Strict,
                    1 => Mode::Soft,
                    b => return Err(format!("bad mode {b}")),
                };
                let soft_limit = if r.bool()? { Some(r.money()?) } else { None };
                Some(Budget {
                    limit,
                    reset,
                    alignment,
                    mode,
                    soft_limit,
                })
            } else {
                None
            };
            RecordBody::SetBudget {
                entity,
                kind,
                budget,
            }
        }
        k => return Err(format!("unknown record kind {k}")),
    };
    if !r.bytes.is_empty() {
        return Err(format!("{} trailing bytes in record body", r.bytes.len()));
    }
    Ok(Record { seq, now_ms, body })
}

/// The end of the valid frame at `offset`, or why there is none.
fn frame_at(bytes: &[u8], offset: usize) -> Result<(usize, &[u8]), &'static str> {
    let Some(header) = bytes.get(offset..offset + FRAME_HEADER_BYTES) else {
        return Err("incomplete frame header");
    };
    let word =
        |i: usize| u32::from_le_bytes([header[i], header[i + 1], header[i + 2], header[i + 3]]);
    if word(0) != FRAME_MAGIC {
        return Err("bad frame magic");
    }
    let len = word(4) as usize;
    if len == 0 || len > RECORD_BODY_BYTES_MAX {
        return Err("bad frame length");
    }
    let body_start = offset + FRAME_HEADER_BYTES;
    let Some(body) = bytes.get(body_start..body_start + len) else {
        return Err("incomplete frame body");
    };
    let crc = crc32c::crc32c_append(crc32c::crc32c(&header[..8]), body);
    if crc != word(8) {
        return Err("checksum mismatch");
    }
    Ok((body_start + len, body))
}

/// Whether any valid frame starts after `offset`.
fn valid_frame_after(bytes: &[u8], offset: usize) -> Option<usize> {
    let magic = FRAME_MAGIC.to_le_bytes();
    let mut from = offset + 1;
    while let Some(i) = bytes
        .get(from..)
        .and_then(|rest| memchr::memmem::find(rest, &magic))
    {
        let at = from + i;
        if frame_at(bytes, at).is_ok() {
            return Some(at);
        }
        from = at + 1;
    }
    None
}

/// A torn tail found (and, by [`replay`], cut off).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TornTail {
    /// Where the valid records end.
    pub offset: u64,
    /// How many bytes followed them.
    pub bytes: u64,
}

/// The records of one segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentScan {
    pub records: Vec<Record>,
    /// Bytes of whole, valid frames.
    pub valid_len: u64,
    pub torn: Option<TornTail>,
    /// Zeros after the last record and nothing else: preallocated space no
    /// write reached ([`JOURNAL_PREALLOC_BYTES`]), not a torn write. [`replay`]
    /// cuts them too.
    pub zeros: u64,
}

/// Reads a segment: every valid record, and where a torn tail starts, if any.
/// Records must be consecutive, starting at `first_seq` when given. Never
/// changes the file.
pub fn scan_segment(path: &Path, first_seq: Option<u64>) -> Result<SegmentScan, JournalError> {
    let mut bytes = Vec::new();
    File::open(path)
        .and_then(|mut f| f.read_to_end(&mut bytes))
        .map_err(io_error(path))?;
    scan_bytes(&bytes, path, first_seq)
}

/// [`scan_segment`] of a segment's bytes already read (`path` names it in
/// errors).
pub fn scan_bytes(
    bytes: &[u8],
    path: &Path,
    first_seq: Option<u64>,
) -> Result<SegmentScan, JournalError> {
    let corrupt = |offset: usize, reason: String| JournalError::Corrupt {
        path: path.to_path_buf(),
        offset: offset as u64,
        reason,
    };
    let mut records = Vec::new();
    let mut offset = 0;
    let mut expected = first_seq;
    while offset < bytes.len() {
        let (end, body) = match frame_at(bytes, offset) {
            Ok(frame) => frame,
            Err(why) => {
                if let Some(next) = valid_frame_after(bytes, offset) {
                    return Err(corrupt(
                        offset,
                        format!("{why}, followed by a valid record at byte offset {next}"),
                    ));
                }
                let rest = (bytes.len() - offset) as u64;
                let zeros = bytes[offset..].iter().all(|&b| b == 0);
                return Ok(SegmentScan {
                    records,
                    valid_len: offset as u64,
                    torn: (!zeros).then_some(TornTail {
                        offset: offset as u64,
                        bytes: rest,
                    }),
                    zeros: if zeros { rest } else { 0 },
                });
            }
        };
        let record = decode_body(body).map_err(|reason| corrupt(offset, reason))?;
        if let Some(seq) = expected {
            if record.seq != seq {
                return Err(corrupt(
                    offset,
                    format!("record {} where record {seq} was expected", record.seq),
                ));
            }
        }
        expected = Some(record.seq + 1);
        records.push(record);
        offset = end;
    }
    Ok(SegmentScan {
        records,
        valid_len: offset as u64,
        torn: None,
        zeros: 0,
    })
}

/// Reads a segment and cuts off a torn tail (logging it), so appends resume
/// after the last whole record. Corruption in the middle is an error.
pub fn replay(path: &Path) -> Result<SegmentScan, JournalError> {
    let first_seq = path
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(parse_segment_name);
    let scan = scan_segment(path, first_seq)?;
    if scan.zeros > 0 {
        log::info!(
            "journal file {}: cutting {} bytes of preallocated space at byte offset {}",
            path.display(),
            scan.zeros,
            scan.valid_len
        );
    }
    if let Some(torn) = scan.torn {
        log::warn!(
            "journal file {}: cutting a torn tail of {} bytes at byte offset {} (a write interrupted by a crash)",
            path.display(),
            torn.bytes,
            torn.offset
        );
    }
    if scan.torn.is_some() || scan.zeros > 0 {
        let file = OpenOptions::new()
            .write(true)
            .open(path)
            .map_err(io_error(path))?;
        file.set_len(scan.valid_len).map_err(io_error(path))?;
        file.sync_all().map_err(io_error(path))?;
    }
    Ok(scan)
}

pub(crate) fn sync_dir(dir: &Path) -> Result<(), JournalError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_error(dir))
}

/// Appends records to the newest segment, in batches.
#[derive(Debug)]
pub struct JournalWriter {
    dir: PathBuf,
    config: JournalConfig,
    file: File,
    path: PathBuf,
    segment_first_seq: u64,
    /// Bytes of records in the segment file (written, not necessarily synced).
    segment_len: u64,
    /// The file's length: `segment_len` and the zeros preallocated after it.
    allocated: u64,
    /// Encoded records not yet written.
    buffer: Vec<u8>,
    /// (seq, end offset in `buffer`) of each buffered record.
    pending: Vec<(u64, usize)>,
    next_seq: u64,
    durable_seq: u64,
    last_sync_ms: i64,
}

impl JournalWriter {
    /// Starts a new, empty segment whose first record will be `first_seq`.
    /// Refuses to replace an existing file: that would destroy records.
    pub fn create(dir: &Path, first_seq: u64, config: JournalConfig) -> Result<Self, JournalError> {
        config.validate()?;
        assert!(first_seq >= 1);
        let path = dir.join(segment_name(first_seq));
        let file = OpenOptions::new()
            .create_new(true)
            .write(true)
            .open(&path)
            .map_err(io_error(&path))?;
        if config.fsync {
            file.sync_all().map_err(io_error(&path))?;
            sync_dir(dir)?;
        }
        Ok(Self::with_file(
            dir, path, file, first_seq, 0, first_seq, config,
        ))
    }

    /// Continues an existing segment of `len` valid bytes (after recovery cut
    /// any torn tail), whose next record is `next_seq`.
    pub fn open_append(
        dir: &Path,
        segment_first_seq: u64,
        len: u64,
        next_seq: u64,
        config: JournalConfig,
    ) -> Result<Self, JournalError> {
        config.validate()?;
        let path = dir.join(segment_name(segment_first_seq));
        // Not `append`: batches are written at `segment_len`, inside the
        // preallocated space (Linux's `pwrite` ignores the offset on an
        // O_APPEND file).
        let file = OpenOptions::new()
            .write(true)
            .open(&path)
            .map_err(io_error(&path))?;
        let actual = file.metadata().map_err(io_error(&path))?.len();
        if actual != len {
            return Err(JournalError::Corrupt {
                path,
                offset: len,
                reason: format!("expected {len} bytes, found {actual}"),
            });
        }
        Ok(Self::with_file(
            dir,
            path,
            file,
            segment_first_seq,
            len,
            next_seq,
            config,
        ))
    }

    fn with_file(
        dir: &Path,
        path: PathBuf,
        file: File,
        segment_first_seq: u64,
        segment_len: u64,
        next_seq: u64,
        config: JournalConfig,
    ) -> Self {
        let batch = config.sync_records_max as usize;
        JournalWriter {
            dir: dir.to_path_buf(),
            config,
            file,
            path,
            segment_first_seq,
            segment_len,
            allocated: segment_len,
            buffer: Vec::with_capacity(batch * (FRAME_HEADER_BYTES + RECORD_BODY_BYTES_MAX)),
            pending: Vec::with_capacity(batch),
            next_seq,
            durable_seq: next_seq - 1,
            last_sync_ms: i64::MIN,
        }
    }

    /// The seq the next appended record must have.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// The last record known to be on disk.
    pub fn durable_seq(&self) -> u64 {
        self.durable_seq
    }

    pub fn segment_path(&self) -> &Path {
        &self.path
    }

    pub fn segment_first_seq(&self) -> u64 {
        self.segment_first_seq
    }

    /// Records buffered, not yet written.
    pub fn pending_records(&self) -> usize {
        self.pending.len()
    }

    /// Bytes buffered, not yet written.
    pub fn pending_bytes(&self) -> usize {
        self.buffer.len()
    }

    /// Buffers a record; writes the batch when it is full.
    pub fn append(&mut self, record: &Record, now_ms: i64) -> Result<(), JournalError> {
        // The state machine numbers records; a gap here is a bug, not bad data.
        assert_eq!(record.seq, self.next_seq, "journal records out of order");
        if self.pending.is_empty() {
            // The interval counts from the oldest buffered record.
            self.last_sync_ms = now_ms;
        }
        encode_record(record, &mut self.buffer);
        self.pending.push((record.seq, self.buffer.len()));
        self.next_seq += 1;
        if self.pending.len() >= self.config.sync_records_max as usize {
            self.flush()?;
        }
        Ok(())
    }

    /// Writes the batch if its oldest record has waited `sync_interval_ms`.
    pub fn flush_if_due(&mut self, now_ms: i64) -> Result<bool, JournalError> {
        if self.pending.is_empty()
            || now_ms.saturating_sub(self.last_sync_ms) < i64::from(self.config.sync_interval_ms)
        {
            return Ok(false);
        }
        self.flush()?;
        Ok(true)
    }

    /// Writes and syncs everything buffered; starts a new segment when this one is full.
    pub fn flush(&mut self) -> Result<(), JournalError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        self.write_batch(self.buffer.len())?;
        if self.config.fsync {
            self.file.sync_data().map_err(io_error(&self.path))?;
        }
        self.segment_len += self.buffer.len() as u64;
        self.durable_seq = self.next_seq - 1;
        self.buffer.clear();
        self.pending.clear();
        if self.segment_len >= self.config.segment_bytes_max {
            self.rotate()?;
        }
        Ok(())
    }

    /// Writes the first `n` buffered bytes at the end of the records, first
    /// growing the file by zero-filled steps when they would not fit.
    fn write_batch(&mut self, n: usize) -> Result<(), JournalError> {
        let end = self.segment_len + n as u64;
        if end > self.allocated {
            let target = end.div_ceil(JOURNAL_PREALLOC_BYTES) * JOURNAL_PREALLOC_BYTES;
            let zeros = [0u8; PREALLOC_WRITE_BYTES];
            let mut at = self.allocated;
            while at < target {
                let k = (target - at).min(PREALLOC_WRITE_BYTES as u64) as usize;
                self.file
                    .write_all_at(&zeros[..k], at)
                    .map_err(io_error(&self.path))?;
                at += k as u64;
            }
            self.allocated = target;
        }
        self.file
            .write_all_at(&self.buffer[..n], self.segment_len)
            .map_err(io_error(&self.path))
    }

    /// Flushes, then seals this segment and starts the next (unless this one
    /// is still empty). A checkpoint rotates so older segments can be removed.
    /// The sealed segment loses its preallocated zeros first, durably, so
    /// that every segment but the newest is whole records only.
    pub fn rotate(&mut self) -> Result<(), JournalError> {
        self.flush()?;
        if self.segment_len == 0 {
            return Ok(());
        }
        if self.allocated > self.segment_len {
            self.file
                .set_len(self.segment_len)
                .map_err(io_error(&self.path))?;
            if self.config.fsync {
                self.file.sync_data().map_err(io_error(&self.path))?;
            }
            self.allocated = self.segment_len;
        }
        let next = JournalWriter::create(&self.dir, self.next_seq, self.config)?;
        let old = std::mem::replace(self, next);
        self.durable_seq = old.durable_seq;
        Ok(())
    }

    /// Simulates a crash in the middle of writing the pending batch: writes
    /// the first `keep_bytes` of it, no sync, and drops everything. Returns
    /// the last seq whose frame is whole in the file. For crash tests.
    ///
    /// A frame cut short is still whole when the bytes it lost are zeros the
    /// file already holds there (preallocated space): the file then reads
    /// exactly as if the write had finished, and recovery rightly finds it.
    #[doc(hidden)]
    pub fn crash_with_torn_write(mut self, keep_bytes: usize) -> Result<u64, JournalError> {
        let keep = keep_bytes.min(self.buffer.len());
        self.write_batch(keep)?;
        let file_len = self.file.metadata().map_err(io_error(&self.path))?.len();
        let whole = self
            .pending
            .iter()
            .take_while(|&&(_, end)| {
                end <= keep
                    || (self.segment_len + end as u64 <= file_len
                        && self.buffer[keep..end].iter().all(|&b| b == 0))
            })
            .last()
            .map_or(self.durable_seq, |&(seq, _)| seq);
        Ok(whole)
    }
}

/// Removes segments all of whose records are at or below `seq` (never the
/// newest segment). Returns how many were removed.
pub fn remove_segments_through(dir: &Path, seq: u64) -> Result<usize, JournalError> {
    let segments = list_segments(dir)?;
    let mut removed = 0;
    for pair in segments.windows(2) {
        let ((_, path), (next_first, _)) = (&pair[0], &pair[1]);
        // This segment holds records first..next_first-1.
        if *next_first <= seq.saturating_add(1) {
            fs::remove_file(path).map_err(io_error(path))?;
            removed += 1;
        }
    }
    if removed > 0 {
        sync_dir(dir)?;
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::test_dir::TestDir;

    fn settle(seq: u64) -> Record {
        Record {
            seq,
            now_ms: 1_700_000_000_000 + seq as i64,
            body: RecordBody::Settle {
                request_id: u128::from(seq) << 64 | 0xabc,
                worker: 3,
                estimated: seq.is_multiple_of(2),
                charges: Charges::from_slice(&[
                    Charge {
                        entity: EntityId(1),
                        amount: Money::from_picodollars(seq as i128 * 1000).unwrap(),
                        from_lease: true,
                    },
                    Charge {
                        entity: EntityId(2),
                        amount: Money::MAX,
                        from_lease: false,
                    },
                ])
                .unwrap(),
            },
        }
    }

    fn all_kinds() -> Vec<Record> {
        let budget = Budget {
            limit: Money::from_usd(5),
            reset: Some(Reset::new(30, ResetUnit::Day).unwrap()),
            alignment: Alignment::Calendar,
            mode: Mode::Soft,
            soft_limit: Some(Money::from_usd(4)),
        };
        let bodies = [
            RecordBody::SetBudget {
                entity: EntityId(9),
                kind: EntityKind::Provider,
                budget: Some(budget),
            },
            RecordBody::SetBudget {
                entity: EntityId(10),
                kind: EntityKind::Key,
                budget: Some(Budget::new(Money::from_usd(1), None)),
            },
            RecordBody::SetBudget {
                entity: EntityId(11),
                kind: EntityKind::Model,
                budget: None,
            },
            RecordBody::Rollover {
                entity: EntityId(9),
                period_start_ms: -5,
            },
            RecordBody::Reset {
                entity: EntityId(u32::MAX),
                period_start_ms: None,
            },
            RecordBody::Reset {
                entity: EntityId(3),
                period_start_ms: Some(1_796_601_600_123),
            },
            RecordBody::TopUp {
                entity: EntityId(10),
                amount: Money::UNIT,
            },
        ];
        let mut out: Vec<Record> = bodies
            .into_iter()
            .enumerate()
            .map(|(i, body)| Record {
                seq: i as u64 + 1,
                now_ms: i as i64,
                body,
            })
            .collect();
        out.push(settle(out.len() as u64 + 1));
        out
    }

    #[test]
    fn every_record_kind_round_trips() {
        for record in all_kinds() {
            let mut buf = Vec::new();
            encode_record(&record, &mut buf);
            let (end, body) = frame_at(&buf, 0).unwrap();
            assert_eq!(end, buf.len());
            assert_eq!(decode_body(body), Ok(record));
            // Any single flipped bit is caught.
            for bit in [0, 33, 70, buf.len() * 8 - 1] {
                let mut bad = buf.clone();
                bad[bit / 8] ^= 1 << (bit % 8);
                assert!(frame_at(&bad, 0).is_err());
            }
        }
    }

    #[test]
    fn decode_refuses_garbage_without_panicking() {
        let mut buf = Vec::new();
        encode_record(&settle(1), &mut buf);
        let body = &buf[FRAME_HEADER_BYTES..];
        for len in 0..body.len() {
            assert!(decode_body(&body[..len]).is_err());
        }
        let mut long = body.to_vec();
        long.push(0);
        assert!(decode_body(&long).is_err());
        let mut state = 0x9e3779b97f4a7c15u64;
        for _ in 0..20_000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let len = (state % 64) as usize;
            let junk: Vec<u8> = (0..len).map(|i| (state >> (i % 8 * 8)) as u8).collect();
            let _ = decode_body(&junk);
        }
    }

    fn config() -> JournalConfig {
        JournalConfig {
            sync_records_max: 3,
            ..JournalConfig::default()
        }
    }

    fn write_records(dir: &Path, n: u64) -> PathBuf {
        let _ = fs::remove_file(dir.join(segment_name(1)));
        let mut w = JournalWriter::create(dir, 1, config()).unwrap();
        for seq in 1..=n {
            w.append(&settle(seq), 0).unwrap();
        }
        w.flush().unwrap();
        assert_eq!(w.durable_seq(), n);
        w.segment_path().to_path_buf()
    }

    #[test]
    fn batches_are_written_when_full_or_due() {
        let dir = TestDir::new("journal-batches");
        let mut w = JournalWriter::create(dir.path(), 1, config()).unwrap();
        w.append(&settle(1), 100).unwrap();
        w.append(&settle(2), 101).unwrap();
        assert_eq!((w.durable_seq(), w.pending_records()), (0, 2));
        assert!(!w.flush_if_due(101).unwrap());
        assert!(w.flush_if_due(102).unwrap());
        assert_eq!(w.durable_seq(), 2);
        for seq in 3..=5 {
            w.append(&settle(seq), 200).unwrap();
        }
        assert_eq!(w.durable_seq(), 5, "a full batch is written at once");
        let scan = replay(w.segment_path()).unwrap();
        assert_eq!(scan.records, (1..=5).map(settle).collect::<Vec<_>>());
        assert_eq!(scan.torn, None);
    }

    #[test]
    fn torn_tail_is_cut_and_logged() {
        let dir = TestDir::new("journal-torn");
        let mut w = JournalWriter::create(dir.path(), 1, config()).unwrap();
        for seq in 1..=3 {
            w.append(&settle(seq), 0).unwrap();
        }
        w.append(&settle(4), 0).unwrap();
        w.append(&settle(5), 0).unwrap();
        let path = w.segment_path().to_path_buf();
        let mut one = Vec::new();
        encode_record(&settle(1), &mut one);
        let frame = one.len() as u64;
        // The file was preallocated: records 1-3, then zeros.
        assert_eq!(fs::metadata(&path).unwrap().len(), JOURNAL_PREALLOC_BYTES);
        // Record 4 whole, record 5 half written (over the zeros).
        let whole = w.crash_with_torn_write(frame as usize + 10).unwrap();
        assert_eq!(whole, 4);
        let scan = replay(&path).unwrap();
        assert_eq!(scan.records.len(), 4);
        assert_eq!(
            scan.torn,
            Some(TornTail {
                offset: 4 * frame,
                bytes: JOURNAL_PREALLOC_BYTES - 4 * frame,
            })
        );
        assert_eq!(fs::metadata(&path).unwrap().len(), 4 * frame);
        // Replaying again finds a clean file.
        assert_eq!(replay(&path).unwrap().torn, None);
        // Zeros after the last record (preallocated space a stop left) are
        // cut too, and told apart from a torn write.
        let f = OpenOptions::new().write(true).open(&path).unwrap();
        f.set_len(4 * frame + 100).unwrap();
        let scan = replay(&path).unwrap();
        assert_eq!((scan.records.len(), scan.torn, scan.zeros), (4, None, 100));
        assert_eq!(fs::metadata(&path).unwrap().len(), 4 * frame);
        // Resume appending after the cut.
        let mut w = JournalWriter::open_append(dir.path(), 1, 4 * frame, 5, config()).unwrap();
        w.append(&settle(5), 0).unwrap();
        w.flush().unwrap();
        assert_eq!(replay(&path).unwrap().records.len(), 5);
    }

    #[test]
    fn corruption_in_the_middle_names_file_and_offset() {
        let dir = TestDir::new("journal-corrupt");
        let path = write_records(dir.path(), 6);
        let mut one = Vec::new();
        encode_record(&settle(1), &mut one);
        let frame = one.len() as u64;
        let mut bytes = fs::read(&path).unwrap();
        // Flip one bit in record 3's body.
        bytes[(2 * frame + 20) as usize] ^= 0x40;
        fs::write(&path, &bytes).unwrap();
        let err = replay(&path).unwrap_err();
        match &err {
            JournalError::Corrupt {
                path: p,
                offset,
                reason,
            } => {
                assert_eq!(p, &path);
                assert_eq!(*offset, 2 * frame);
                assert!(reason.contains("checksum"), "{reason}");
            }
            e => panic!("{e}"),
        }
        let message = err.to_string();
        assert!(message.contains(&path.display().to_string()));
        assert!(message.contains(&format!("byte offset {}", 2 * frame)));
        // The file was not touched.
        assert_eq!(fs::read(&path).unwrap(), bytes);
        // A corrupt length in the middle (claiming the rest of the file) is caught too.
        let path = write_records(dir.path(), 6);
        let mut bytes = fs::read(&path).unwrap();
        bytes[(frame + 4) as usize..(frame + 8) as usize].copy_from_slice(&200u32.to_le_bytes());
        fs::write(&path, &bytes).unwrap();
        assert!(
            matches!(replay(&path), Err(JournalError::Corrupt { offset, .. }) if offset == frame)
        );
    }

    #[test]
    fn out_of_sequence_records_are_corruption() {
        let dir = TestDir::new("journal-sequence");
        let path = dir.path().join(segment_name(1));
        let mut bytes = Vec::new();
        encode_record(&settle(1), &mut bytes);
        encode_record(&settle(3), &mut bytes);
        fs::write(&path, &bytes).unwrap();
        assert!(matches!(replay(&path), Err(JournalError::Corrupt { .. })));
        let path = dir.path().join(segment_name(7));
        let mut bytes = Vec::new();
        encode_record(&settle(1), &mut bytes);
        fs::write(&path, &bytes).unwrap();
        assert!(matches!(
            replay(&path),
            Err(JournalError::Corrupt { offset: 0, .. })
        ));
    }

    #[test]
    fn segments_rotate_and_old_ones_are_removed() {
        let dir = TestDir::new("journal-rotate");
        let config = JournalConfig {
            sync_records_max: 1,
            // The least allowed: one frame of the largest body.
            segment_bytes_max: (FRAME_HEADER_BYTES + RECORD_BODY_BYTES_MAX) as u64,
            ..JournalConfig::default()
        };
        let mut w = JournalWriter::create(dir.path(), 1, config).unwrap();
        for seq in 1..=30 {
            w.append(&settle(seq), 0).unwrap();
        }
        let segments = list_segments(dir.path()).unwrap();
        assert!(segments.len() > 2, "{segments:?}");
        let mut seen = Vec::new();
        for (first, path) in &segments {
            let scan = scan_segment(path, Some(*first)).unwrap();
            seen.extend(scan.records.iter().map(|r| r.seq));
        }
        assert_eq!(seen, (1..=30).collect::<Vec<_>>());
        let second_first = segments[1].0;
        // Records through second_first - 1 live in the first segment only.
        assert_eq!(
            remove_segments_through(dir.path(), second_first - 2).unwrap(),
            0
        );
        assert_eq!(
            remove_segments_through(dir.path(), second_first - 1).unwrap(),
            1
        );
        assert_eq!(
            remove_segments_through(dir.path(), u64::MAX).unwrap(),
            segments.len() - 2
        );
        assert_eq!(list_segments(dir.path()).unwrap().len(), 1);
    }

    /// Batches overwrite preallocated zeros: the file grows a step at a time,
    /// not a batch at a time; a sealed segment keeps records only.
    #[test]
    fn segments_grow_in_zeroed_steps_and_are_sealed_whole() {
        let dir = TestDir::new("journal-prealloc");
        let mut one = Vec::new();
        encode_record(&settle(1), &mut one);
        let frame = one.len() as u64;
        let per_step = JOURNAL_PREALLOC_BYTES / frame;
        let config = JournalConfig {
            sync_records_max: 64,
            segment_bytes_max: 3 * JOURNAL_PREALLOC_BYTES,
            ..JournalConfig::default()
        };
        let mut w = JournalWriter::create(dir.path(), 1, config).unwrap();
        let path = w.segment_path().to_path_buf();
        let len = || fs::metadata(&path).unwrap().len();
        assert_eq!(len(), 0, "nothing is allocated before the first batch");
        w.append(&settle(1), 0).unwrap();
        w.flush().unwrap();
        assert_eq!(len(), JOURNAL_PREALLOC_BYTES);
        // Up to the end of the first step: still one step.
        for seq in 2..=per_step {
            w.append(&settle(seq), 0).unwrap();
        }
        w.flush().unwrap();
        assert_eq!(len(), JOURNAL_PREALLOC_BYTES);
        // One more record crosses into the second step.
        w.append(&settle(per_step + 1), 0).unwrap();
        w.flush().unwrap();
        assert_eq!(len(), 2 * JOURNAL_PREALLOC_BYTES);
        let scan = scan_segment(&path, Some(1)).unwrap();
        assert_eq!(scan.records.len() as u64, per_step + 1);
        assert_eq!(scan.torn, None);
        assert_eq!(
            scan.zeros,
            2 * JOURNAL_PREALLOC_BYTES - (per_step + 1) * frame
        );
        // Sealing cuts the zeros: the sealed segment is records only.
        w.rotate().unwrap();
        assert_eq!(len(), (per_step + 1) * frame);
        let scan = scan_segment(&path, Some(1)).unwrap();
        assert_eq!(
            (scan.records.len() as u64, scan.torn, scan.zeros),
            (per_step + 1, None, 0)
        );
        // After a stop without a rotation, recovery cuts the zeros and the
        // writer resumes at the last record, inside a fresh step.
        w.append(&settle(per_step + 2), 0).unwrap();
        w.flush().unwrap();
        let newest = w.segment_path().to_path_buf();
        drop(w);
        let scan = replay(&newest).unwrap();
        assert_eq!(scan.records.len(), 1);
        assert_eq!(
            (scan.torn, scan.zeros),
            (None, JOURNAL_PREALLOC_BYTES - frame)
        );
        let mut w =
            JournalWriter::open_append(dir.path(), per_step + 2, frame, per_step + 3, config)
                .unwrap();
        w.append(&settle(per_step + 3), 0).unwrap();
        w.flush().unwrap();
        let scan = scan_segment(&newest, Some(per_step + 2)).unwrap();
        assert_eq!(scan.records.len(), 2);
        assert_eq!(fs::metadata(&newest).unwrap().len(), JOURNAL_PREALLOC_BYTES);
    }
}
