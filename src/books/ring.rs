//! The durable settle ring: one per worker, in a memory-mapped file.
//!
//! # Why
//!
//! The crash test demands that every charge a client saw in
//! `x-bursar-cost-usd` is in the ledger after SIGKILL. Waiting for the ledger
//! thread to journal (and fsync) each settle before answering would put a
//! cross-thread round trip and milliseconds on every response. Instead the
//! worker appends its settle to this ring (memory stores into a shared file
//! mapping: no system call, no lock) and publishes it before it writes the
//! response. The ledger thread consumes the ring and journals the settles.
//!
//! # Layout (`settle-ring-{worker}.bin`)
//!
//! A [`HEADER_BYTES`] header page, then `slots` fixed slots of `slot_bytes`
//! ([`SLOT_BYTES`] in a ring this build creates; [`LEGACY_SLOT_BYTES`] in
//! one made before settles could carry 16 charges, read and written as it
//! is and remade at this build's size at the next start that finds it
//! empty):
//!
//! ```text
//! header: magic "BRSRNG02" | slots u32 | slot_bytes u32 | worker u16 | pad | crc32c u32 @20 (of bytes 0..20)
//!         head AtomicU64 @64 (next position the producer writes)
//!         tail AtomicU64 @128 (next position the consumer has not released:
//!                              48 bits, and a 16-bit check of them on top)
//!         witness AtomicU64 @192 (the journal's durable seq, see below)
//! slot:   request_id u128 | worker u16 | estimated u8 | count u8 | pad u32 | pos u64
//!         | count × (entity u32 | amount i128 | from_lease u8)  (21 bytes each)
//!         | crc32c u32 @slot_bytes-4 (of everything before it)
//! ```
//!
//! Positions are absolute and only grow, up to 2^48 (at a million settles a
//! second, nine years of one worker's); position `p` lives in slot
//! `p % slots`. `tail` carries a check of its value because a damaged `tail`
//! that moved forward would skip pending settles without a trace (a damaged
//! `head` shows: slots past it that hold settles, or stale slots before it).
//! A ring made by builds before the check (magic "BRSRNG01") keeps a plain
//! `tail` and is remade at the next start that finds it empty. `pos` inside a slot is the position
//! it was written for, so a stale slot from a previous lap is never mistaken
//! for a new one.
//!
//! # Memory ordering
//!
//! Single producer (the worker thread), single consumer (the ledger thread).
//! Slots in `[tail, head)` belong to the consumer, all others to the producer.
//! - Producer: check `head - tail < slots` with `tail.load(Acquire)` (pairs with
//!   the consumer's release of `tail`: its reads of a slot happen before the
//!   producer overwrites it); write the slot with plain stores; then
//!   `head.store(head + 1, Release)`.
//! - Consumer: `head.load(Acquire)` (pairs with the producer's release: the
//!   slot's bytes are visible), read and verify slots up to it, and later
//!   `tail.store(pos, Release)` once those settles are durable in the journal.
//!
//! The consumer's *read cursor* is separate from `tail`: the ledger journals a
//! settle into a user-space batch first, so if `tail` moved as soon as a slot
//! was read, a SIGKILL before the batch reached the journal file would lose the
//! settle (the ring would say "consumed", the journal would not have it). The
//! ledger thread releases up to the read cursor only after
//! [`crate::ledger::Ledger::durable_seq`] covers what it applied.
//!
//! # What survives what
//!
//! - SIGKILL (or any crash of the process): every slot whose `head` store
//!   happened is in the file: the mapping is `MAP_SHARED`, its pages belong to
//!   the kernel's page cache, not to the process, and the kernel writes them
//!   back whether or not the process lives. On restart `[tail, head)` are the
//!   settles to replay; those already journaled come back as `Duplicate`
//!   (idempotent by request id in the ledger).
//! - Power loss: nothing is `msync`ed, so published slots not yet journaled and
//!   fsynced can be lost: the same window as the journal's batched fsync
//!   (`sync_interval_ms`). Pages are also written back in no particular order,
//!   so after a power loss a pending slot can fail its checksum: that is
//!   reported as [`RingError::Corrupt`] naming the slot (start-up stops; the
//!   operator decides, e.g. moving the file aside: its unjournaled settles are
//!   the ones the power loss window allows to be lost). An `msync` after
//!   journaling would buy nothing: journaled settles are already durable.
//!
//! # The journal's witness
//!
//! The ledger thread stores the journal's durable sequence number in every
//! ring's header each time it grows ([`RingConsumer::witness_durable`]):
//! 48 bits of seq and a 16-bit check of them in one atomic word, written
//! only after the `fdatasync` that made the records durable returned. The
//! journal's own tail cannot tell a lost tail from one never written (zeros
//! or a cut at a record boundary look like a clean end), so at start the
//! recovered journal must reach the witness ([`RingConsumer::witnessed`]):
//! if it ends before it, acknowledged records were lost, and the gateway
//! refuses to start instead of starting with silently lost money. After a
//! power loss the ring's page may be older than the journal (a smaller
//! witness: nothing is falsely refused), never newer.
//!
//! # Page faults
//!
//! The file is written in full with zeros at creation (blocks allocated, so a
//! full disk cannot SIGBUS a worker later) and every page of the mapping is
//! touched by a write on open, so the worker's stores never take a major fault.
//! After the kernel writes a dirty page back it write-protects it again, so
//! the next store takes a minor fault (no I/O): that cannot be avoided with a
//! shared file mapping short of `mlock`, and it costs about a microsecond.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use memmap2::MmapMut;

use crate::ledger::messages::CHARGES_PER_SETTLE_MAX;
use crate::ledger::{Charge, Charges, Command, EntityId};
use crate::money::Money;

/// Slots in a ring created by bursar: a power of two. 8 Ki slots of 512 bytes
/// is 4 MiB per worker; at the ledger's ~1 M settles per second that is about
/// 8 ms of settles in flight before a worker would have to wait (the ledger
/// reads the rings at least every fsync interval, 10 ms by default, and a
/// worker serves far fewer than 800 k requests a second).
pub const RING_SLOTS: u32 = 1 << 13;
/// Largest ring accepted from a file (1 Mi slots, 256 MiB).
pub const RING_SLOTS_MAX: u32 = 1 << 20;
/// Bytes per slot: one settle with up to [`CHARGES_PER_SETTLE_MAX`] charges.
pub const SLOT_BYTES: usize = 512;
/// Bytes per slot of a ring made by builds whose settles carried at most 8
/// charges: opened as it is (its slots hold 10), remade when found empty.
pub const LEGACY_SLOT_BYTES: usize = 256;
/// The header page.
pub const HEADER_BYTES: usize = 4096;
const PAGE_BYTES: usize = 4096;

const MAGIC: &[u8; 8] = b"BRSRNG02";
/// Rings made before `tail` carried a check.
const MAGIC_PLAIN_TAIL: &[u8; 8] = b"BRSRNG01";
const HEAD_OFFSET: usize = 64;
const TAIL_OFFSET: usize = 128;
const WITNESS_OFFSET: usize = 192;
/// Sequence numbers the witness word holds, and positions `tail` holds: 48 bits.
const WITNESS_SEQ_MASK: u64 = (1 << 48) - 1;
/// Positions a ring reaches (see the module docs).
pub const RING_POSITIONS_MAX: u64 = WITNESS_SEQ_MASK;
const CHARGES_OFFSET: usize = 32;
const CHARGE_BYTES: usize = 21;

const _: () = assert!(RING_SLOTS.is_power_of_two() && RING_SLOTS <= RING_SLOTS_MAX);
const _: () = assert!(charges_per_slot(SLOT_BYTES) >= CHARGES_PER_SETTLE_MAX);
const _: () =
    assert!(HEADER_BYTES.is_multiple_of(PAGE_BYTES) && PAGE_BYTES.is_multiple_of(SLOT_BYTES));
const _: () = assert!(PAGE_BYTES.is_multiple_of(LEGACY_SLOT_BYTES));

/// How many charges a slot of `slot_bytes` holds.
const fn charges_per_slot(slot_bytes: usize) -> usize {
    (slot_bytes - 4 - CHARGES_OFFSET) / CHARGE_BYTES
}

/// The file name of worker `worker`'s ring.
pub fn ring_file_name(worker: u16) -> String {
    format!("settle-ring-{worker}.bin")
}

/// Workers that have a ring file in `dir` (sorted), e.g. to drain rings of
/// workers that no longer exist after the worker count was lowered.
pub fn ring_workers_in(dir: &Path) -> Result<Vec<u16>, RingError> {
    let mut workers = Vec::new();
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(workers),
        Err(source) => {
            return Err(RingError::Io {
                path: dir.to_path_buf(),
                source,
            })
        }
    };
    for entry in entries {
        let entry = entry.map_err(|source| RingError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some(n) = name
            .strip_prefix("settle-ring-")
            .and_then(|s| s.strip_suffix(".bin"))
        else {
            continue;
        };
        if let Ok(w) = n.parse::<u16>() {
            if ring_file_name(w) == name {
                workers.push(w);
            }
        }
    }
    workers.sort_unstable();
    Ok(workers)
}

#[derive(Debug, thiserror::Error)]
pub enum RingError {
    #[error("settle ring {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("settle ring {path}: bad header: {reason}")]
    BadHeader { path: PathBuf, reason: String },
    #[error("settle ring {path}: slot {slot} (position {pos}) is corrupt: {reason}")]
    Corrupt {
        path: PathBuf,
        slot: u64,
        pos: u64,
        reason: String,
    },
}

/// The ring is full: the ledger thread has not caught up. The caller must not
/// answer the client yet (the charge is not durable anywhere): it waits (yield
/// to its runtime briefly) and retries. A full ring means the ledger thread is
/// stalled or overloaded, which is a health problem worth a metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the settle ring is full ({slots} slots not yet consumed)")]
pub struct RingFull {
    pub slots: u32,
}

/// Why a settle was not published.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PushError {
    #[error(transparent)]
    Full(#[from] RingFull),
    /// An older build's ring (smaller slots, kept until it is found empty at
    /// a start) cannot hold this settle: send it over the command channel.
    #[error("a settle of {charges} charges does not fit this ring's slots")]
    TooManyCharges { charges: usize },
}

/// One settle as stored in a ring slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SettleRecord {
    pub request_id: u128,
    pub worker: u16,
    pub estimated: bool,
    pub charges: Charges,
}

impl SettleRecord {
    pub fn to_command(&self) -> Command {
        Command::Settle {
            request_id: self.request_id,
            worker: self.worker,
            estimated: self.estimated,
            charges: self.charges,
        }
    }
}

/// The shared mapping. Producer and consumer each hold an `Arc` of it and touch
/// disjoint slots (see the module docs), plus the two atomics.
struct RingMap {
    /// Kept alive for `base`; never accessed through a reference after open.
    _map: MmapMut,
    base: *mut u8,
    slots: u32,
    /// [`SLOT_BYTES`], or [`LEGACY_SLOT_BYTES`] in a ring an older build made.
    slot_bytes: usize,
    /// `tail` carries its check (every ring but an older build's).
    tail_checked: bool,
    worker: u16,
    path: PathBuf,
}

// SAFETY: the mapping lives as long as the Arc; concurrent access is limited to
// the two atomics and to slots owned by one side at a time, per the protocol in
// the module docs (the producer writes only slots outside [tail, head), the
// consumer reads only slots inside it).
unsafe impl Send for RingMap {}
unsafe impl Sync for RingMap {}

impl RingMap {
    fn atomic(&self, offset: usize) -> &AtomicU64 {
        debug_assert!(offset == HEAD_OFFSET || offset == TAIL_OFFSET || offset == WITNESS_OFFSET);
        // SAFETY: offset is within the header page, 8-aligned (the mapping is
        // page-aligned), and only ever accessed atomically.
        unsafe { &*(self.base.add(offset) as *const AtomicU64) }
    }

    fn head(&self) -> &AtomicU64 {
        self.atomic(HEAD_OFFSET)
    }

    fn tail(&self) -> &AtomicU64 {
        self.atomic(TAIL_OFFSET)
    }

    fn witness(&self) -> &AtomicU64 {
        self.atomic(WITNESS_OFFSET)
    }

    /// `tail`'s position (unchecked: checked once, at open).
    fn load_tail(&self, order: Ordering) -> u64 {
        let word = self.tail().load(order);
        if self.tail_checked {
            word & WITNESS_SEQ_MASK
        } else {
            word
        }
    }

    fn store_tail(&self, pos: u64) {
        let word = if self.tail_checked {
            tail_pack(pos)
        } else {
            pos
        };
        self.tail().store(word, Ordering::Release);
    }

    fn slot_ptr(&self, pos: u64) -> *mut u8 {
        let index = (pos & u64::from(self.slots - 1)) as usize;
        // SAFETY: index < slots, and the mapping is HEADER_BYTES + slots × slot_bytes.
        unsafe { self.base.add(HEADER_BYTES + index * self.slot_bytes) }
    }
}

fn file_bytes(slots: u32, slot_bytes: usize) -> usize {
    HEADER_BYTES + slots as usize * slot_bytes
}

/// What a ring's header says of the journal ([`RingConsumer::witnessed`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Witness {
    /// Never written (a new ring, or one an older build made).
    None,
    /// The journal was durable through this record.
    Durable(u64),
    /// The word does not check out: the header is damaged (ignored: the
    /// journal is then checked by its own frames only).
    Damaged(u64),
}

fn witness_check(seq: u64) -> u64 {
    u64::from(crc32c::crc32c(&seq.to_le_bytes()) & 0xffff)
}

fn witness_pack(seq: u64) -> u64 {
    debug_assert!(seq > 0 && seq <= WITNESS_SEQ_MASK);
    (witness_check(seq) << 48) | (seq & WITNESS_SEQ_MASK)
}

/// `tail` as stored in a ring with checked tails.
fn tail_pack(pos: u64) -> u64 {
    (witness_check(pos) << 48) | (pos & WITNESS_SEQ_MASK)
}

fn tail_unpack(word: u64) -> Option<u64> {
    let pos = word & WITNESS_SEQ_MASK;
    (word >> 48 == witness_check(pos)).then_some(pos)
}

fn witness_unpack(word: u64) -> Witness {
    if word == 0 {
        return Witness::None;
    }
    let seq = word & WITNESS_SEQ_MASK;
    if seq != 0 && word >> 48 == witness_check(seq) {
        Witness::Durable(seq)
    } else {
        Witness::Damaged(word)
    }
}

fn header_bytes(slots: u32, worker: u16) -> [u8; 24] {
    let mut h = [0u8; 24];
    h[0..8].copy_from_slice(MAGIC);
    h[8..12].copy_from_slice(&slots.to_le_bytes());
    h[12..16].copy_from_slice(&(SLOT_BYTES as u32).to_le_bytes());
    h[16..18].copy_from_slice(&worker.to_le_bytes());
    let crc = crc32c::crc32c(&h[0..20]);
    h[20..24].copy_from_slice(&crc.to_le_bytes());
    h
}

/// What a ring file's header says, once checked ([`check_ring`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RingLayout {
    pub slots: u32,
    pub slot_bytes: usize,
    /// Past the settle a crash left written but not published, if any.
    pub head: u64,
    pub tail: u64,
    pub tail_checked: bool,
    /// A settle was written at the old `head` and not published (the process
    /// died between the slot's stores and `head`'s): it is a real settle of
    /// a request the upstream served, so it is charged like the others
    /// (`head` above already counts it).
    pub unpublished: bool,
    pub witness: Witness,
}

impl RingLayout {
    /// Settles published and not released: replayed at the next start.
    pub fn pending(&self) -> u64 {
        self.head - self.tail
    }
}

/// Checks a ring file's bytes: the header (magic, checksum, sizes, owner),
/// the file's length, `head` and `tail` against each other, and that no
/// settle was published past `head` (a damaged `head` would otherwise hide
/// the settles after it: the one slot at `head` itself may be written and
/// unpublished, by a crash between the slot's stores and `head`'s).
pub fn check_ring(bytes: &[u8], path: &Path, worker: u16) -> Result<RingLayout, RingError> {
    let bad = |reason: String| RingError::BadHeader {
        path: path.to_path_buf(),
        reason,
    };
    let len = bytes.len();
    if len < HEADER_BYTES {
        return Err(bad(format!("file is {len} bytes, shorter than the header")));
    }
    let h = &bytes[0..24];
    let tail_checked = match &h[0..8] {
        m if m == MAGIC => true,
        m if m == MAGIC_PLAIN_TAIL => false,
        _ => return Err(bad("bad magic".into())),
    };
    let crc = u32::from_le_bytes(h[20..24].try_into().expect("4 bytes"));
    if crc != crc32c::crc32c(&h[0..20]) {
        return Err(bad("header checksum mismatch".into()));
    }
    let slots = u32::from_le_bytes(h[8..12].try_into().expect("4 bytes"));
    let slot_bytes = u32::from_le_bytes(h[12..16].try_into().expect("4 bytes")) as usize;
    let file_worker = u16::from_le_bytes(h[16..18].try_into().expect("2 bytes"));
    if !slots.is_power_of_two() || slots > RING_SLOTS_MAX {
        return Err(bad(format!("{slots} slots")));
    }
    if slot_bytes != SLOT_BYTES && slot_bytes != LEGACY_SLOT_BYTES {
        return Err(bad(format!(
            "slot size {slot_bytes}, this build uses {SLOT_BYTES} (and reads {LEGACY_SLOT_BYTES})"
        )));
    }
    if file_worker != worker {
        return Err(bad(format!("belongs to worker {file_worker}")));
    }
    if len != file_bytes(slots, slot_bytes) {
        return Err(bad(format!(
            "file is {len} bytes, {slots} slots need {}",
            file_bytes(slots, slot_bytes)
        )));
    }
    let word = |offset: usize| u64::from_le_bytes(bytes[offset..offset + 8].try_into().expect("8"));
    let mut head = word(HEAD_OFFSET);
    let tail = if tail_checked {
        tail_unpack(word(TAIL_OFFSET)).ok_or_else(|| {
            bad(format!(
                "tail word {:#x} does not check out (damaged: it could skip pending settles)",
                word(TAIL_OFFSET)
            ))
        })?
    } else {
        word(TAIL_OFFSET)
    };
    if tail > head || head - tail > u64::from(slots) || head >= RING_POSITIONS_MAX {
        return Err(bad(format!(
            "head {head} and tail {tail} are inconsistent with {slots} slots"
        )));
    }
    // No slot past `head` may hold a settle written for its position, but
    // the one at `head` itself (see `unpublished`).
    let mask = u64::from(slots) - 1;
    let mut unpublished = false;
    for pos in head..tail + u64::from(slots) {
        let at = HEADER_BYTES + (pos & mask) as usize * slot_bytes;
        let slot = &bytes[at..at + slot_bytes];
        // Cheap first: a slot from an earlier lap names another position.
        if slot[24..32] != pos.to_le_bytes() || decode_slot(slot, pos).is_err() {
            continue;
        }
        if pos > head {
            return Err(bad(format!(
                "head is {head} but a settle was written at position {pos}: \
                 the header is damaged and would hide settles"
            )));
        }
        unpublished = true;
    }
    if unpublished {
        head += 1;
    }
    Ok(RingLayout {
        slots,
        slot_bytes,
        head,
        tail,
        tail_checked,
        unpublished,
        witness: witness_unpack(word(WITNESS_OFFSET)),
    })
}

/// Reads worker `worker`'s ring file in `dir` without changing it (for
/// `bursar verify-state`): its layout and its pending settles, each checked.
pub fn inspect_ring(dir: &Path, worker: u16) -> Result<(RingLayout, Vec<SettleRecord>), RingError> {
    let path = dir.join(ring_file_name(worker));
    let bytes = fs::read(&path).map_err(|source| RingError::Io {
        path: path.clone(),
        source,
    })?;
    inspect_ring_bytes(&bytes, &path, worker)
}

/// [`inspect_ring`] of a ring file's bytes already in memory (`path` names
/// it in errors).
pub fn inspect_ring_bytes(
    bytes: &[u8],
    path: &Path,
    worker: u16,
) -> Result<(RingLayout, Vec<SettleRecord>), RingError> {
    let path = path.to_path_buf();
    let layout = check_ring(bytes, &path, worker)?;
    let mask = u64::from(layout.slots) - 1;
    let mut pending = Vec::with_capacity(layout.pending() as usize);
    for pos in layout.tail..layout.head {
        let at = HEADER_BYTES + (pos & mask) as usize * layout.slot_bytes;
        let rec = decode_slot(&bytes[at..at + layout.slot_bytes], pos).map_err(|reason| {
            RingError::Corrupt {
                path: path.clone(),
                slot: pos & mask,
                pos,
                reason,
            }
        })?;
        pending.push(rec);
    }
    Ok((layout, pending))
}

/// Opens (creating if missing) worker `worker`'s ring in `dir`. A new ring has
/// `slots` slots (a power of two, at most [`RING_SLOTS_MAX`]); an existing one
/// keeps the size it was created with. Returns the two ends: the producer for
/// the worker, the consumer for the ledger thread, whose pending slots
/// (`[tail, head)`) are those a previous process published and did not release.
pub fn open_ring(
    dir: &Path,
    worker: u16,
    slots: u32,
) -> Result<(RingProducer, RingConsumer), RingError> {
    let path = dir.join(ring_file_name(worker));
    let io = |source| RingError::Io {
        path: path.clone(),
        source,
    };
    let bad = |reason: String| RingError::BadHeader {
        path: path.clone(),
        reason,
    };
    if !slots.is_power_of_two() || slots > RING_SLOTS_MAX {
        return Err(bad(format!(
            "{slots} slots requested: must be a power of two up to {RING_SLOTS_MAX}"
        )));
    }
    fs::create_dir_all(dir).map_err(|source| RingError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    if !path.exists() {
        create_file(dir, &path, slots, worker)?;
    }
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .map_err(io)?;
    let len = file.metadata().map_err(io)?.len();
    if len < HEADER_BYTES as u64 {
        return Err(bad(format!("file is {len} bytes, shorter than the header")));
    }
    // SAFETY: the file is bursar's own in its state directory; nothing else is
    // expected to truncate it while mapped (that would SIGBUS, as for any mmap).
    let mut map = unsafe { MmapMut::map_mut(&file) }.map_err(io)?;
    // Nothing else maps the file yet: the checks read it as plain bytes.
    let layout = check_ring(&map[..], &path, worker)?;
    let RingLayout {
        slots: file_slots,
        slot_bytes,
        head,
        tail,
        tail_checked,
        unpublished,
        ..
    } = layout;
    prefault(&mut map);
    let base = map.as_mut_ptr();
    let ring = Arc::new(RingMap {
        _map: map,
        base,
        slots: file_slots,
        slot_bytes,
        tail_checked,
        worker,
        path: path.clone(),
    });
    if unpublished {
        log::warn!(
            "{}: a settle at position {} was written but not published when the process \
             died; charging it (its request was served upstream)",
            path.display(),
            head - 1
        );
        ring.head().store(head, Ordering::Release);
    }
    if (slot_bytes != SLOT_BYTES || !tail_checked) && head == tail {
        // An older build's ring with nothing to replay: remade at this
        // build's slot size and format (positions start over; nothing
        // refers to them).
        drop(ring);
        log::info!(
            "{}: an older build's settle ring is empty; remaking it with {SLOT_BYTES}-byte slots \
             and a checked tail",
            path.display()
        );
        fs::remove_file(&path).map_err(io)?;
        return open_ring(dir, worker, slots);
    }
    Ok((
        RingProducer {
            ring: ring.clone(),
            head,
            tail_seen: tail,
        },
        RingConsumer { ring, read: tail },
    ))
}

/// Writes a zeroed file of the full size (so its blocks exist: no SIGBUS on a
/// full disk later), with the header, synced, then renamed into place.
fn create_file(dir: &Path, path: &Path, slots: u32, worker: u16) -> Result<(), RingError> {
    let tmp = path.with_extension("bin.tmp");
    let io = |source| RingError::Io {
        path: tmp.clone(),
        source,
    };
    let mut f = File::create(&tmp).map_err(io)?;
    let mut first = vec![0u8; HEADER_BYTES];
    first[0..24].copy_from_slice(&header_bytes(slots, worker));
    first[TAIL_OFFSET..TAIL_OFFSET + 8].copy_from_slice(&tail_pack(0).to_le_bytes());
    f.write_all(&first).map_err(io)?;
    let zeros = vec![0u8; 1 << 16];
    let mut left = file_bytes(slots, SLOT_BYTES) - HEADER_BYTES;
    while left > 0 {
        let n = left.min(zeros.len());
        f.write_all(&zeros[..n]).map_err(io)?;
        left -= n;
    }
    f.sync_all().map_err(io)?;
    drop(f);
    fs::rename(&tmp, path).map_err(|source| RingError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|source| RingError::Io {
            path: dir.to_path_buf(),
            source,
        })
}

/// Touches every page with a write of its own first byte, so the worker's
/// later stores find the pages mapped and writable. Nothing else uses the
/// mapping yet.
fn prefault(map: &mut MmapMut) {
    for offset in (0..map.len()).step_by(PAGE_BYTES) {
        let p = map[offset..].as_mut_ptr();
        // SAFETY: p is within the mapping; volatile so the store is not elided.
        unsafe { std::ptr::write_volatile(p, std::ptr::read_volatile(p)) };
    }
}

/// The bytes of a slot of `slot_bytes` holding `count` charges that its
/// checksum covers: in a slot of this build's size, the fixed part and the
/// charges only (so a settle writes and checksums what it holds, not the
/// whole slot: the bytes past them are whatever an earlier lap left, and
/// nothing reads them); in an older build's slot, all of it before the
/// checksum, as that build wrote it.
fn checked_bytes(slot_bytes: usize, count: usize) -> usize {
    if slot_bytes == LEGACY_SLOT_BYTES {
        slot_bytes - 4
    } else {
        CHARGES_OFFSET + count * CHARGE_BYTES
    }
}

/// Writes `rec` into `buf` (one slot; the caller checked its charges fit)
/// and returns how many bytes from the start it wrote; the checksum is in
/// the slot's last four bytes.
#[cfg(test)]
fn encode_slot(buf: &mut [u8], pos: u64, rec: &SettleRecord) -> usize {
    encode_settle(
        buf,
        pos,
        rec.request_id,
        rec.worker,
        rec.estimated,
        &rec.charges,
    )
}

/// Writes a settle from its parts (the worker's push makes no record, so
/// the charges are not copied first).
fn encode_settle(
    buf: &mut [u8],
    pos: u64,
    request_id: u128,
    worker: u16,
    estimated: bool,
    charges: &Charges,
) -> usize {
    debug_assert!(charges.len() <= charges_per_slot(buf.len()));
    let crc_offset = buf.len() - 4;
    let used = checked_bytes(buf.len(), charges.len());
    buf[..used].fill(0);
    buf[0..16].copy_from_slice(&request_id.to_le_bytes());
    buf[16..18].copy_from_slice(&worker.to_le_bytes());
    buf[18] = u8::from(estimated);
    buf[19] = charges.len() as u8;
    buf[24..32].copy_from_slice(&pos.to_le_bytes());
    for (i, c) in charges.as_slice().iter().enumerate() {
        let o = CHARGES_OFFSET + i * CHARGE_BYTES;
        buf[o..o + 4].copy_from_slice(&c.entity.0.to_le_bytes());
        buf[o + 4..o + 20].copy_from_slice(&c.amount.picodollars().to_le_bytes());
        buf[o + 20] = u8::from(c.from_lease);
    }
    let crc = crc32c::crc32c(&buf[..used]);
    buf[crc_offset..].copy_from_slice(&crc.to_le_bytes());
    used
}

/// Reads one slot (`buf`, of the ring's slot size) written for `pos`.
fn decode_slot(buf: &[u8], pos: u64) -> Result<SettleRecord, String> {
    let crc_offset = buf.len() - 4;
    // The count decides what the checksum covers; the checksum covers the
    // count, so a damaged one is caught either way.
    let count = usize::from(buf[19]);
    if count == 0 || count > CHARGES_PER_SETTLE_MAX || count > charges_per_slot(buf.len()) {
        return Err(format!("{count} charges"));
    }
    let crc = u32::from_le_bytes(buf[crc_offset..].try_into().expect("4 bytes"));
    if crc != crc32c::crc32c(&buf[..checked_bytes(buf.len(), count)]) {
        return Err("checksum mismatch".into());
    }
    let written_for = u64::from_le_bytes(buf[24..32].try_into().expect("8 bytes"));
    if written_for != pos {
        return Err(format!(
            "holds position {written_for} (a stale slot, not yet written for this lap)"
        ));
    }
    let estimated = match buf[18] {
        0 => false,
        1 => true,
        b => return Err(format!("estimated flag {b}")),
    };
    let mut charges = Charges::new();
    for i in 0..count {
        let o = CHARGES_OFFSET + i * CHARGE_BYTES;
        let entity = EntityId(u32::from_le_bytes(buf[o..o + 4].try_into().expect("4")));
        let units = i128::from_le_bytes(buf[o + 4..o + 20].try_into().expect("16"));
        let amount = Money::from_picodollars(units)
            .ok_or_else(|| format!("charge {i}: amount {units} out of range"))?;
        let from_lease = match buf[o + 20] {
            0 => false,
            1 => true,
            b => return Err(format!("charge {i}: from_lease flag {b}")),
        };
        charges
            .push(Charge {
                entity,
                amount,
                from_lease,
            })
            .expect("count <= CHARGES_PER_SETTLE_MAX");
    }
    Ok(SettleRecord {
        request_id: u128::from_le_bytes(buf[0..16].try_into().expect("16 bytes")),
        worker: u16::from_le_bytes(buf[16..18].try_into().expect("2 bytes")),
        estimated,
        charges,
    })
}

/// The worker's end. Not `Clone`: one producer per ring.
pub struct RingProducer {
    ring: Arc<RingMap>,
    /// Our own copy of `head` (only we write it).
    head: u64,
    /// The last `tail` read; refreshed only when the ring looks full.
    tail_seen: u64,
}

impl std::fmt::Debug for RingProducer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RingProducer")
            .field("path", &self.ring.path)
            .field("head", &self.head)
            .finish_non_exhaustive()
    }
}

impl RingProducer {
    /// Appends and publishes one settle. When this returns `Ok`, the settle
    /// survives the process being killed (see the module docs); only then may
    /// the worker show the charge to the client. Returns the position.
    pub fn push(
        &mut self,
        request_id: u128,
        estimated: bool,
        charges: &Charges,
    ) -> Result<u64, PushError> {
        if charges.len() > charges_per_slot(self.ring.slot_bytes) {
            return Err(PushError::TooManyCharges {
                charges: charges.len(),
            });
        }
        let slots = u64::from(self.ring.slots);
        if self.head - self.tail_seen >= slots {
            self.tail_seen = self.ring.load_tail(Ordering::Acquire);
            if self.head - self.tail_seen >= slots {
                return Err(PushError::Full(RingFull {
                    slots: self.ring.slots,
                }));
            }
        }
        // SAFETY: slot `head` is outside [tail, head): the consumer does not
        // read it until the release store below publishes it, so this is its
        // only reference meanwhile. The settle is written in place: its
        // fixed part, its charges and the checksum; the bytes between are
        // whatever an earlier lap left, and nothing reads them.
        let slot = unsafe {
            std::slice::from_raw_parts_mut(self.ring.slot_ptr(self.head), self.ring.slot_bytes)
        };
        encode_settle(
            slot,
            self.head,
            request_id,
            self.ring.worker,
            estimated,
            charges,
        );
        self.head += 1;
        self.ring.head().store(self.head, Ordering::Release);
        Ok(self.head - 1)
    }

    pub fn worker(&self) -> u16 {
        self.ring.worker
    }

    pub fn slots(&self) -> u32 {
        self.ring.slots
    }
}

/// The ledger thread's end.
pub struct RingConsumer {
    ring: Arc<RingMap>,
    /// Next position to read; `tail <= read <= head`.
    read: u64,
}

impl std::fmt::Debug for RingConsumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RingConsumer")
            .field("path", &self.ring.path)
            .field("read", &self.read)
            .finish_non_exhaustive()
    }
}

impl RingConsumer {
    /// Slots published and not yet read.
    pub fn unread(&self) -> u64 {
        self.ring.head().load(Ordering::Acquire) - self.read
    }

    /// Slots published and not yet released (read or not).
    pub fn unreleased(&self) -> u64 {
        self.ring.head().load(Ordering::Acquire) - self.ring.load_tail(Ordering::Relaxed)
    }

    /// Reads up to `max` published slots in order, verifying each, and hands
    /// them to `f` with their position. Advances the read cursor, not `tail`:
    /// call [`RingConsumer::release`] once what `f` did with them is durable.
    /// A slot that does not verify stops the read at it (the cursor stays on
    /// it) with an error naming it.
    pub fn read(
        &mut self,
        max: usize,
        mut f: impl FnMut(u64, &SettleRecord),
    ) -> Result<usize, RingError> {
        let head = self.ring.head().load(Ordering::Acquire);
        let mut n = 0;
        while self.read < head && n < max {
            // SAFETY: `read` is in [tail, head): the producer published this
            // slot (acquire above) and will not touch it until we release,
            // so nothing writes it while this shared view lives.
            let slot = unsafe {
                std::slice::from_raw_parts(self.ring.slot_ptr(self.read), self.ring.slot_bytes)
            };
            let rec = decode_slot(slot, self.read).map_err(|reason| RingError::Corrupt {
                path: self.ring.path.clone(),
                slot: self.read & u64::from(self.ring.slots - 1),
                pos: self.read,
                reason,
            })?;
            f(self.read, &rec);
            self.read += 1;
            n += 1;
        }
        Ok(n)
    }

    pub fn slots(&self) -> u32 {
        self.ring.slots
    }

    /// The next position to read: everything before it has been read.
    pub fn read_cursor(&self) -> u64 {
        self.read
    }

    /// Gives slots before `pos` back to the producer. `pos` must not pass the
    /// read cursor; a `pos` behind the current tail is ignored.
    pub fn release(&mut self, pos: u64) {
        assert!(pos <= self.read, "release past the read cursor");
        if pos > self.ring.load_tail(Ordering::Relaxed) {
            self.ring.store_tail(pos);
        }
    }

    /// Releases everything read.
    pub fn release_read(&mut self) {
        self.release(self.read);
    }

    /// Records that the journal is durable through `seq` (call only after
    /// the sync that made it so returned; see the module docs). Sequence
    /// numbers past 48 bits are not recorded.
    pub fn witness_durable(&mut self, seq: u64) {
        if seq > 0 && seq <= WITNESS_SEQ_MASK {
            self.ring
                .witness()
                .store(witness_pack(seq), Ordering::Relaxed);
        }
    }

    /// What the header says the journal was durable through.
    pub fn witnessed(&self) -> Witness {
        witness_unpack(self.ring.witness().load(Ordering::Relaxed))
    }

    pub fn worker(&self) -> u16 {
        self.ring.worker
    }

    pub fn path(&self) -> &Path {
        &self.ring.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_round_trip_and_rejections() {
        let charges = Charges::from_slice(&[
            Charge {
                entity: EntityId(3),
                amount: Money::parse_usd("1.5").unwrap(),
                from_lease: true,
            },
            Charge {
                entity: EntityId(9),
                amount: Money::MAX,
                from_lease: false,
            },
        ])
        .unwrap();
        let rec = SettleRecord {
            request_id: u128::MAX - 1,
            worker: 7,
            estimated: true,
            charges,
        };
        let mut buf = [0u8; SLOT_BYTES];
        let _ = encode_slot(&mut buf, 42, &rec);
        assert_eq!(decode_slot(&buf, 42), Ok(rec));
        assert!(decode_slot(&buf, 42 + 16).unwrap_err().contains("stale"));
        let mut bad = buf;
        bad[40] ^= 1;
        assert!(decode_slot(&bad, 42).unwrap_err().contains("checksum"));
        assert!(decode_slot(&[0u8; SLOT_BYTES], 0).is_err());
    }

    fn charges(n: usize) -> Charges {
        let all: Vec<Charge> = (0..n)
            .map(|i| Charge {
                entity: EntityId(i as u32),
                amount: Money::from_usd(1),
                from_lease: i % 2 == 0,
            })
            .collect();
        Charges::from_slice(&all).unwrap()
    }

    /// A ring of 256-byte slots as builds before 16-charge settles made it,
    /// holding `pending` settles at positions 0.. (head moved, tail at 0).
    fn legacy_ring(dir: &Path, worker: u16, slots: u32, pending: &[SettleRecord]) {
        let mut bytes = vec![0u8; HEADER_BYTES + slots as usize * LEGACY_SLOT_BYTES];
        let mut h = [0u8; 24];
        h[0..8].copy_from_slice(MAGIC_PLAIN_TAIL);
        h[8..12].copy_from_slice(&slots.to_le_bytes());
        h[12..16].copy_from_slice(&(LEGACY_SLOT_BYTES as u32).to_le_bytes());
        h[16..18].copy_from_slice(&worker.to_le_bytes());
        let crc = crc32c::crc32c(&h[0..20]);
        h[20..24].copy_from_slice(&crc.to_le_bytes());
        bytes[0..24].copy_from_slice(&h);
        for (i, rec) in pending.iter().enumerate() {
            let o = HEADER_BYTES + i * LEGACY_SLOT_BYTES;
            let _ = encode_slot(&mut bytes[o..o + LEGACY_SLOT_BYTES], i as u64, rec);
        }
        bytes[HEAD_OFFSET..HEAD_OFFSET + 8].copy_from_slice(&(pending.len() as u64).to_le_bytes());
        std::fs::write(dir.join(ring_file_name(worker)), bytes).unwrap();
    }

    #[test]
    fn an_older_builds_ring_is_replayed_as_it_is_and_remade_once_empty() {
        let dir = crate::ledger::test_dir::TestDir::new("legacy-ring");
        let old = SettleRecord {
            request_id: 77,
            worker: 3,
            estimated: false,
            charges: charges(8),
        };
        legacy_ring(dir.path(), 3, 16, &[old]);
        let (mut producer, mut consumer) = open_ring(dir.path(), 3, RING_SLOTS).unwrap();
        // Kept as it is: 16 slots of 256 bytes, its pending settle readable.
        assert_eq!(consumer.slots(), 16);
        let mut seen = Vec::new();
        consumer.read(10, |_, r| seen.push(*r)).unwrap();
        assert_eq!(seen, vec![old]);
        // Its slots hold 10 charges: more is refused (the worker sends that
        // settle over the command channel), 10 still fit.
        assert_eq!(
            producer.push(78, false, &charges(11)),
            Err(PushError::TooManyCharges { charges: 11 })
        );
        assert_eq!(producer.push(79, false, &charges(10)), Ok(1));
        consumer.read(10, |_, r| seen.push(*r)).unwrap();
        assert_eq!(seen.len(), 2);
        assert_eq!(seen[1].charges, charges(10));
        consumer.release_read();
        drop((producer, consumer));
        // Found empty at the next start: remade at this build's size.
        let (mut producer, consumer) = open_ring(dir.path(), 3, RING_SLOTS).unwrap();
        assert_eq!(consumer.slots(), RING_SLOTS);
        let len = std::fs::metadata(dir.path().join(ring_file_name(3)))
            .unwrap()
            .len();
        assert_eq!(
            len,
            (HEADER_BYTES + RING_SLOTS as usize * SLOT_BYTES) as u64
        );
        producer
            .push(80, true, &charges(CHARGES_PER_SETTLE_MAX))
            .unwrap();
    }

    #[test]
    fn a_slot_holds_the_most_charges_a_settle_has() {
        let rec = SettleRecord {
            request_id: 1,
            worker: 0,
            estimated: false,
            charges: charges(CHARGES_PER_SETTLE_MAX),
        };
        let mut buf = [0xa5u8; SLOT_BYTES];
        let used = encode_slot(&mut buf, 5, &rec);
        assert_eq!(used, CHARGES_OFFSET + CHARGES_PER_SETTLE_MAX * CHARGE_BYTES);
        assert_eq!(decode_slot(&buf, 5), Ok(rec));
        // A settle of 2 charges over it: what a later lap leaves past them
        // is not read, and a damaged count is caught by the checksum.
        let small = SettleRecord {
            charges: charges(2),
            ..rec
        };
        let used = encode_slot(&mut buf, 6, &small);
        assert_eq!(used, CHARGES_OFFSET + 2 * CHARGE_BYTES);
        assert_eq!(decode_slot(&buf, 6), Ok(small));
        let mut bad = buf;
        bad[19] = 3;
        assert!(decode_slot(&bad, 6).unwrap_err().contains("checksum"));
    }

    fn one_charge(id: u128) -> SettleRecord {
        SettleRecord {
            request_id: id,
            worker: 1,
            estimated: false,
            charges: charges(1),
        }
    }

    fn push_one(p: &mut RingProducer, id: u128) -> u64 {
        p.push(id, false, &charges(1)).unwrap()
    }

    #[test]
    fn the_journal_witness_round_trips_and_a_damaged_word_is_told_apart() {
        for seq in [1, 2, 4096, WITNESS_SEQ_MASK] {
            assert_eq!(witness_unpack(witness_pack(seq)), Witness::Durable(seq));
            for bit in 0..64 {
                let word = witness_pack(seq) ^ (1 << bit);
                assert_ne!(witness_unpack(word), Witness::Durable(seq), "{seq} {bit}");
            }
        }
        assert_eq!(witness_unpack(0), Witness::None);
        let dir = crate::ledger::test_dir::TestDir::new("ring-witness");
        let (_, mut c) = open_ring(dir.path(), 1, 16).unwrap();
        assert_eq!(c.witnessed(), Witness::None);
        c.witness_durable(77);
        drop(c);
        let (layout, _) = inspect_ring(dir.path(), 1).unwrap();
        assert_eq!(layout.witness, Witness::Durable(77));
        let (_, c) = open_ring(dir.path(), 1, 16).unwrap();
        assert_eq!(c.witnessed(), Witness::Durable(77));
    }

    /// A crash between a slot's stores and `head`'s leaves one written,
    /// unpublished settle at `head`: it is charged. A settle written past
    /// `head` can only be a damaged `head` hiding it: refused.
    #[test]
    fn a_settle_at_head_is_charged_and_one_past_it_refuses_the_ring() {
        let dir = crate::ledger::test_dir::TestDir::new("ring-head");
        let (mut p, mut c) = open_ring(dir.path(), 1, 16).unwrap();
        for id in 1..=3 {
            push_one(&mut p, id);
        }
        c.read(2, |_, _| {}).unwrap();
        c.release_read();
        drop((p, c));
        let path = dir.path().join(ring_file_name(1));
        let good = fs::read(&path).unwrap();
        let head =
            |b: &[u8]| u64::from_le_bytes(b[HEAD_OFFSET..HEAD_OFFSET + 8].try_into().unwrap());
        assert_eq!(head(&good), 3);
        // `head` one behind: slot 2 is read as written and not published.
        let mut bytes = good.clone();
        bytes[HEAD_OFFSET..HEAD_OFFSET + 8].copy_from_slice(&2u64.to_le_bytes());
        fs::write(&path, &bytes).unwrap();
        let (layout, pending) = inspect_ring(dir.path(), 1).unwrap();
        assert!(layout.unpublished);
        assert_eq!(pending, vec![one_charge(3)]);
        let (_, mut c) = open_ring(dir.path(), 1, 16).unwrap();
        let mut seen = Vec::new();
        c.read(10, |_, r| seen.push(r.request_id)).unwrap();
        assert_eq!(seen, vec![3]);
        drop(c);
        // `head` two behind: a settle past it.
        fs::write(&path, &good).unwrap();
        let (mut p, c) = open_ring(dir.path(), 1, 16).unwrap();
        push_one(&mut p, 4);
        drop((p, c));
        let mut bytes = fs::read(&path).unwrap();
        assert_eq!(head(&bytes), 4);
        bytes[HEAD_OFFSET..HEAD_OFFSET + 8].copy_from_slice(&2u64.to_le_bytes());
        fs::write(&path, &bytes).unwrap();
        let err = open_ring(dir.path(), 1, 16).unwrap_err().to_string();
        assert!(err.contains("written at position 3"), "{err}");
        assert!(inspect_ring(dir.path(), 1).is_err());
    }
}
