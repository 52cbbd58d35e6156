//! The outbox files in `state_dir/alerts/`: the alerts the ledger thread
//! emitted and every delivery attempt, each an append-only JSON-lines file.
//!
//! - `outbox.jsonl`, then `outbox-1.jsonl`, `outbox-2.jsonl`, ...: one
//!   [`Alert`] per line, written only by the ledger thread through
//!   [`OutboxWriter`], `fdatasync`ed before `append` returns (so an alert is
//!   on disk before anything is sent, and a crash never loses an emitted
//!   alert). A segment is closed once it passes [`OUTBOX_SEGMENT_BYTES_MAX`]
//!   and the next number is opened; the highest number is the one appended
//!   to. A closed segment whose newest alert is older than the retention
//!   ([`OUTBOX_RETENTION_DAYS_DEFAULT`]) is deleted on `open` and on a roll.
//!   The bound of the outbox is therefore time, not bytes: what 400 days of
//!   alerts take, plus one segment.
//! - `attempts.jsonl` (and the previous one, `attempts.1.jsonl`): one
//!   [`AttemptRecord`] per line, written only by the delivery thread through
//!   [`AttemptsLog`], `fdatasync`ed per append. Past
//!   [`ATTEMPTS_FILE_BYTES_MAX`] the file becomes `attempts.1.jsonl` (the
//!   older one is deleted) and a new file begins with the records the
//!   delivery thread carries forward (see [`AttemptsLog::roll`]), so at most
//!   twice the bound is kept, the newest.
//! - `attempts.cursor`: written at each roll of the attempts file: the outbox
//!   position before which every delivery had finished. Alerts before it with
//!   no attempt record left are finished, not pending.
//!
//! A line torn by a crash (the last one of the file being appended, without
//! its newline) is cut off with a warning by the file's writer on open; a
//! line in the middle that does not parse is skipped and counted, never a
//! panic. [`OutboxReader`] tails the outbox from a position and reads only
//! whole lines, so it never sees a line being written.

use std::collections::{BTreeMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::event::Alert;

/// The alerts directory under the state directory.
pub const ALERTS_DIR: &str = "alerts";
/// The first outbox segment; the next ones are `outbox-<n>.jsonl`.
pub const OUTBOX_FILE: &str = "outbox.jsonl";
/// The attempts being appended.
pub const ATTEMPTS_FILE: &str = "attempts.jsonl";
/// The attempts before the last roll.
pub const ATTEMPTS_PREVIOUS_FILE: &str = "attempts.1.jsonl";
/// The outbox position before which every delivery had finished, written at
/// each roll of the attempts file.
pub const ATTEMPTS_CURSOR_FILE: &str = "attempts.cursor";

/// A segment of the outbox is closed, and the next one opened, once it holds
/// more than this. 8 MiB is some 10,000 alerts: a year of a busy gateway's
/// alerts in a handful of files, each read whole at start.
pub const OUTBOX_SEGMENT_BYTES_MAX: u64 = 8 * 1024 * 1024;
/// Closed outbox segments whose newest alert is older than this are deleted.
/// 400 days: a yearly budget's period must still know which of its alerts
/// fired (the evaluator rebuilds that from the outbox at start).
pub const OUTBOX_RETENTION_DAYS_DEFAULT: u32 = 400;
/// Longest outbox or attempts line (an alert is well under 4 KiB); a longer
/// alert is refused by `append`, a longer line read is skipped as corrupt.
pub const OUTBOX_LINE_BYTES_MAX: usize = 256 * 1024;
/// Bytes the reader takes from a file in one read.
pub const OUTBOX_READ_CHUNK_BYTES: usize = 1024 * 1024;
/// The attempts file is rolled past this (some 150,000 attempts); the
/// previous file is kept, so at most twice this is on disk.
pub const ATTEMPTS_FILE_BYTES_MAX: u64 = 32 * 1024 * 1024;

const DAY_MS: i64 = 24 * 60 * 60 * 1000;

const _: () = {
    assert!(OUTBOX_LINE_BYTES_MAX as u64 <= OUTBOX_SEGMENT_BYTES_MAX);
    assert!(OUTBOX_LINE_BYTES_MAX <= OUTBOX_READ_CHUNK_BYTES);
    assert!(OUTBOX_LINE_BYTES_MAX as u64 <= ATTEMPTS_FILE_BYTES_MAX);
};

/// Where a line of the outbox starts: its segment and byte offset. Orders as
/// the alerts were emitted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct OutboxPos {
    pub segment: u64,
    pub offset: u64,
}

/// How one attempt (or a replay) ended, as the attempts file names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AttemptOutcome {
    Delivered,
    /// Failed; tried again later.
    Retry,
    /// Failed for good (a permanent refusal, the retry time used up, the
    /// channel gone): dead-lettered.
    Dead,
    /// Not an attempt: an operator queued the delivery again.
    Replayed,
}

impl AttemptOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            AttemptOutcome::Delivered => "delivered",
            AttemptOutcome::Retry => "retry",
            AttemptOutcome::Dead => "dead",
            AttemptOutcome::Replayed => "replayed",
        }
    }

    /// Whether the delivery is finished (until a replay).
    pub fn is_final(self) -> bool {
        matches!(self, AttemptOutcome::Delivered | AttemptOutcome::Dead)
    }
}

/// One line of the attempts file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttemptRecord {
    /// The alert's id.
    pub alert: String,
    /// The channel's name.
    pub channel: String,
    /// 1 for the first attempt of this (alert, channel); a line that is not
    /// an attempt (a replay, a dead-letter without sending) carries the
    /// number of attempts made so far.
    pub attempt: u32,
    /// When, unix ms.
    pub at_ms: i64,
    /// The receiver's HTTP status, when there was one.
    pub status: Option<u16>,
    pub latency_ms: u64,
    pub error: Option<String>,
    pub outcome: AttemptOutcome,
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn segment_name(n: u64) -> String {
    if n == 0 {
        OUTBOX_FILE.to_string()
    } else {
        format!("outbox-{n}.jsonl")
    }
}

fn segment_of(name: &str) -> Option<u64> {
    if name == OUTBOX_FILE {
        return Some(0);
    }
    let digits = name.strip_prefix("outbox-")?.strip_suffix(".jsonl")?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok().filter(|&n| n > 0)
}

/// The outbox segments in `dir`, oldest first.
pub fn outbox_segments(dir: &Path) -> io::Result<Vec<u64>> {
    let mut segments = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        if let Some(n) = entry.file_name().to_str().and_then(segment_of) {
            segments.push(n);
        }
    }
    segments.sort_unstable();
    Ok(segments)
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// One alerts file as `bursar verify-state` sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileLines {
    pub name: String,
    /// Lines that parse.
    pub lines: usize,
    /// Whole lines that do not (skipped and counted at start).
    pub corrupt: u64,
    /// A last line without its newline (cut at start).
    pub torn: bool,
}

/// Reads every outbox segment and attempts file in `dir` without changing
/// them (`bursar verify-state`).
pub fn inspect(dir: &Path) -> io::Result<Vec<FileLines>> {
    fn one<T: for<'de> Deserialize<'de>>(dir: &Path, name: String) -> io::Result<FileLines> {
        let bytes = read_or_empty(&dir.join(&name))?;
        let torn = !bytes.is_empty() && !bytes.ends_with(b"\n");
        let mut out: Vec<T> = Vec::new();
        let corrupt = parse_lines(&bytes, &mut out) - u64::from(torn);
        Ok(FileLines {
            name,
            lines: out.len(),
            corrupt,
            torn,
        })
    }
    let mut files = Vec::new();
    for n in outbox_segments(dir)? {
        files.push(one::<Alert>(dir, segment_name(n))?);
    }
    for name in [ATTEMPTS_PREVIOUS_FILE, ATTEMPTS_FILE] {
        if dir.join(name).exists() {
            files.push(one::<AttemptRecord>(dir, name.to_string())?);
        }
    }
    Ok(files)
}

/// Cuts a torn last line (no newline) off the file at `path`; returns the
/// file's length after. Only the file's one writer may call this.
fn cut_torn_tail(path: &Path, what: &str) -> io::Result<u64> {
    let mut file = match OpenOptions::new().read(true).write(true).open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    let len = file.metadata()?.len();
    if len == 0 {
        return Ok(0);
    }
    // Look back for the last newline, a chunk at a time.
    let mut end = len;
    let mut buf = vec![0u8; 64 * 1024];
    let mut last_newline = None;
    while end > 0 && last_newline.is_none() {
        let start = end.saturating_sub(buf.len() as u64);
        let n = (end - start) as usize;
        file.seek(SeekFrom::Start(start))?;
        file.read_exact(&mut buf[..n])?;
        last_newline = memchr::memrchr(b'\n', &buf[..n]).map(|i| start + i as u64);
        end = start;
    }
    let keep = last_newline.map_or(0, |i| i + 1);
    if keep < len {
        log::warn!(
            "alerts: {what} {} ends in a torn line ({} bytes, a write cut by a crash); cutting it off",
            path.display(),
            len - keep
        );
        file.set_len(keep)?;
        file.sync_data()?;
    }
    Ok(keep)
}

/// Parses the complete lines of `bytes`; lines that do not parse are
/// counted, and so is a last line without its newline.
fn parse_lines<T: for<'de> Deserialize<'de>>(bytes: &[u8], out: &mut Vec<T>) -> u64 {
    let mut corrupt = 0;
    for line in bytes.split_inclusive(|&b| b == b'\n') {
        let Some(line) = line.strip_suffix(b"\n") else {
            corrupt += 1;
            continue;
        };
        if line.is_empty() {
            continue;
        }
        match serde_json::from_slice(line) {
            Ok(v) if line.len() <= OUTBOX_LINE_BYTES_MAX => out.push(v),
            _ => corrupt += 1,
        }
    }
    corrupt
}

fn read_or_empty(path: &Path) -> io::Result<Vec<u8>> {
    match fs::read(path) {
        Ok(b) => Ok(b),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}

/// The ledger thread's end of the outbox. See the [module doc](self).
pub struct OutboxWriter {
    dir: PathBuf,
    retention_days: u32,
    /// The segment appended to.
    segment: u64,
    file: File,
    bytes: u64,
    /// Every id in the retained segments.
    ids: HashSet<String>,
    /// Each closed segment's newest alert timestamp (unix ms) and its ids.
    closed: BTreeMap<u64, (i64, Vec<String>)>,
    /// The open segment's newest alert timestamp and its ids.
    open_newest_ms: i64,
    open_ids: Vec<String>,
    corrupt: u64,
}

impl std::fmt::Debug for OutboxWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutboxWriter")
            .field("dir", &self.dir)
            .field("segment", &self.segment)
            .field("bytes", &self.bytes)
            .field("ids", &self.ids.len())
            .finish()
    }
}

impl OutboxWriter {
    /// Opens (creating) the outbox in `dir` with the default retention;
    /// returns every alert it holds, oldest first, so the caller can rebuild
    /// which alerts were emitted already.
    pub fn open(dir: &Path) -> io::Result<(OutboxWriter, Vec<Alert>)> {
        Self::open_with_retention(dir, OUTBOX_RETENTION_DAYS_DEFAULT)
    }

    /// [`OutboxWriter::open`] with a retention of `retention_days` (at least 1).
    pub fn open_with_retention(
        dir: &Path,
        retention_days: u32,
    ) -> io::Result<(OutboxWriter, Vec<Alert>)> {
        fs::create_dir_all(dir)?;
        let mut segments = outbox_segments(dir)?;
        if segments.is_empty() {
            segments.push(0);
        }
        let last = *segments.last().unwrap_or(&0);
        let mut all = Vec::new();
        let mut ids = HashSet::new();
        let mut closed = BTreeMap::new();
        let mut corrupt = 0;
        let (mut open_newest_ms, mut open_ids) = (i64::MIN, Vec::new());
        for &n in &segments {
            let path = dir.join(segment_name(n));
            if n == last {
                cut_torn_tail(&path, "outbox")?;
            }
            let bytes = read_or_empty(&path)?;
            let mut alerts: Vec<Alert> = Vec::new();
            let bad = parse_lines(&bytes, &mut alerts);
            if bad > 0 {
                log::warn!(
                    "alerts: skipped {bad} unreadable lines in {}",
                    path.display()
                );
                corrupt += bad;
            }
            let newest = alerts
                .iter()
                .map(|a| a.timestamp_ms)
                .max()
                .unwrap_or(i64::MIN);
            let mut seg_ids = Vec::with_capacity(alerts.len());
            for a in alerts {
                if ids.insert(a.id.clone()) {
                    seg_ids.push(a.id.clone());
                    all.push(a);
                }
            }
            if n == last {
                open_newest_ms = newest;
                open_ids = seg_ids;
            } else {
                closed.insert(n, (newest, seg_ids));
            }
        }
        let path = dir.join(segment_name(last));
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        let bytes = file.metadata()?.len();
        sync_dir(dir)?;
        let mut writer = OutboxWriter {
            dir: dir.to_path_buf(),
            retention_days: retention_days.max(1),
            segment: last,
            file,
            bytes,
            ids,
            closed,
            open_newest_ms,
            open_ids,
            corrupt,
        };
        let dropped = writer.apply_retention()?;
        if !dropped.is_empty() {
            all.retain(|a| !dropped.contains(&a.id));
        }
        Ok((writer, all))
    }

    /// Deletes closed segments past the retention; returns their ids.
    fn apply_retention(&mut self) -> io::Result<HashSet<String>> {
        let horizon_ms = now_ms() - i64::from(self.retention_days) * DAY_MS;
        let old: Vec<u64> = self
            .closed
            .iter()
            .filter(|(_, (newest, _))| *newest < horizon_ms)
            .map(|(&n, _)| n)
            .collect();
        let mut dropped = HashSet::new();
        for n in old {
            let path = self.dir.join(segment_name(n));
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
            log::info!("alerts: deleted {} (past the retention)", path.display());
            if let Some((_, ids)) = self.closed.remove(&n) {
                for id in ids {
                    self.ids.remove(&id);
                    dropped.insert(id);
                }
            }
        }
        Ok(dropped)
    }

    /// Closes the open segment and opens the next one.
    fn roll(&mut self) -> io::Result<()> {
        let next = self.segment + 1;
        let file = OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(self.dir.join(segment_name(next)))?;
        sync_dir(&self.dir)?;
        let ids = std::mem::take(&mut self.open_ids);
        self.closed.insert(self.segment, (self.open_newest_ms, ids));
        self.segment = next;
        self.file = file;
        self.bytes = 0;
        self.open_newest_ms = i64::MIN;
        self.apply_retention()?;
        Ok(())
    }

    /// Appends the alerts whose ids the outbox does not hold yet, then
    /// `fdatasync`s; returns how many were new. An alert whose line would
    /// pass [`OUTBOX_LINE_BYTES_MAX`] refuses the whole call (a bug) before
    /// anything is written.
    pub fn append(&mut self, alerts: &[Alert]) -> io::Result<usize> {
        let mut lines = Vec::new();
        let mut batch_ids = HashSet::new();
        for a in alerts {
            if self.ids.contains(&a.id) || !batch_ids.insert(a.id.as_str()) {
                continue;
            }
            let mut line = serde_json::to_vec(a).map_err(io::Error::other)?;
            line.push(b'\n');
            if line.len() > OUTBOX_LINE_BYTES_MAX {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "alert {} is {} bytes, over the outbox line bound",
                        a.id,
                        line.len()
                    ),
                ));
            }
            lines.push((a, line));
        }
        let new = lines.len();
        let mut buf = Vec::new();
        let mut in_buf: Vec<&Alert> = Vec::new();
        for (a, line) in lines {
            if self.bytes + buf.len() as u64 > 0
                && self.bytes + (buf.len() + line.len()) as u64 > OUTBOX_SEGMENT_BYTES_MAX
            {
                self.write_out(&mut buf, &mut in_buf)?;
                self.roll()?;
            }
            buf.extend_from_slice(&line);
            in_buf.push(a);
        }
        self.write_out(&mut buf, &mut in_buf)?;
        Ok(new)
    }

    /// Writes and syncs `buf`, then takes the ids of `in_buf` as written. On
    /// an error the file is cut back to what was written before (so a torn
    /// line cannot glue itself to the next append) and no id is taken: the
    /// caller may append the same alerts again.
    fn write_out(&mut self, buf: &mut Vec<u8>, in_buf: &mut Vec<&Alert>) -> io::Result<()> {
        if buf.is_empty() {
            return Ok(());
        }
        if let Err(e) = self
            .file
            .write_all(buf)
            .and_then(|()| self.file.sync_data())
        {
            if let Err(cut) = self.file.set_len(self.bytes) {
                log::error!("alerts: cannot cut the outbox back after a failed write: {cut}");
            }
            return Err(e);
        }
        self.bytes += buf.len() as u64;
        buf.clear();
        for a in in_buf.drain(..) {
            self.ids.insert(a.id.clone());
            self.open_ids.push(a.id.clone());
            self.open_newest_ms = self.open_newest_ms.max(a.timestamp_ms);
        }
        Ok(())
    }

    /// Whether the outbox holds an alert with this id.
    pub fn contains(&self, id: &str) -> bool {
        self.ids.contains(id)
    }

    /// Unreadable lines skipped at open.
    pub fn corrupt_lines(&self) -> u64 {
        self.corrupt
    }

    /// The segment appended to.
    pub fn segment(&self) -> u64 {
        self.segment
    }
}

/// Tails the outbox from a position, reading only whole lines. Used by the
/// delivery thread; it never writes.
pub struct OutboxReader {
    dir: PathBuf,
    pos: OutboxPos,
    file: Option<File>,
    corrupt: u64,
}

impl OutboxReader {
    /// A reader starting at `from` (`OutboxPos::default()`: the beginning).
    /// A segment that no longer exists (past the retention) is skipped.
    pub fn new(dir: &Path, from: OutboxPos) -> OutboxReader {
        OutboxReader {
            dir: dir.to_path_buf(),
            pos: from,
            file: None,
            corrupt: 0,
        }
    }

    /// Where the next line will be read from.
    pub fn position(&self) -> OutboxPos {
        self.pos
    }

    /// Lines skipped as unreadable.
    pub fn corrupt_lines(&self) -> u64 {
        self.corrupt
    }

    /// Reads up to `max` new alerts (whole lines only), with where each starts.
    pub fn read_new(&mut self, max: usize) -> io::Result<Vec<(OutboxPos, Alert)>> {
        let mut out = Vec::new();
        // Sized on first use to what the file holds past the position (a
        // poll that finds nothing new allocates nothing).
        let mut buf = Vec::new();
        while out.len() < max {
            if self.file.is_none() {
                match File::open(self.dir.join(segment_name(self.pos.segment))) {
                    Ok(f) => self.file = Some(f),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {
                        // Deleted, or not created yet: move to the next one
                        // there is, if any.
                        let next = outbox_segments(&self.dir)?
                            .into_iter()
                            .find(|&n| n > self.pos.segment);
                        match next {
                            Some(n) => {
                                self.pos = OutboxPos {
                                    segment: n,
                                    offset: 0,
                                };
                                continue;
                            }
                            None => return Ok(out),
                        }
                    }
                    Err(e) => return Err(e),
                }
            }
            // A newer segment existing means this one is complete: look before
            // reading, so the lines written before the roll are read.
            let next_exists = self
                .dir
                .join(segment_name(self.pos.segment + 1))
                .try_exists()?;
            let Some(file) = self.file.as_mut() else {
                return Ok(out);
            };
            let unread = file.metadata()?.len().saturating_sub(self.pos.offset);
            let want = usize::try_from(unread)
                .map_or(OUTBOX_READ_CHUNK_BYTES, |u| u.min(OUTBOX_READ_CHUNK_BYTES));
            if want == 0 && !next_exists {
                return Ok(out);
            }
            if buf.len() < want {
                buf.resize(want, 0);
            }
            file.seek(SeekFrom::Start(self.pos.offset))?;
            let n = read_full(file, &mut buf[..want])?;
            let chunk = &buf[..n];
            let mut consumed = 0;
            for line in chunk.split_inclusive(|&b| b == b'\n') {
                if out.len() >= max {
                    break;
                }
                let Some(body) = line.strip_suffix(b"\n") else {
                    break; // not whole yet
                };
                let at = OutboxPos {
                    segment: self.pos.segment,
                    offset: self.pos.offset + consumed as u64,
                };
                consumed += line.len();
                if body.is_empty() {
                    continue;
                }
                match serde_json::from_slice::<Alert>(body) {
                    Ok(a) if body.len() <= OUTBOX_LINE_BYTES_MAX => out.push((at, a)),
                    _ => {
                        self.corrupt += 1;
                        log::warn!(
                            "alerts: skipped an unreadable outbox line at {}:{}",
                            segment_name(at.segment),
                            at.offset
                        );
                    }
                }
            }
            if consumed == 0 && n == OUTBOX_READ_CHUNK_BYTES {
                // A line longer than a whole chunk: skip it to its newline.
                let skipped = skip_line(file, self.pos.offset)?;
                if skipped == 0 {
                    return Ok(out);
                }
                self.corrupt += 1;
                self.pos.offset += skipped;
                continue;
            }
            self.pos.offset += consumed as u64;
            if out.len() >= max {
                return Ok(out);
            }
            if n < OUTBOX_READ_CHUNK_BYTES {
                // At the end of what is written now.
                if !next_exists {
                    return Ok(out);
                }
                if consumed < n {
                    // A closed segment never ends in a partial line but
                    // after damage: skip it.
                    self.corrupt += 1;
                }
                self.file = None;
                self.pos = OutboxPos {
                    segment: self.pos.segment + 1,
                    offset: 0,
                };
            }
        }
        Ok(out)
    }
}

fn read_full(file: &mut File, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match file.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Length of the line at `offset` including its newline; 0 if it has none yet.
fn skip_line(file: &mut File, offset: u64) -> io::Result<u64> {
    file.seek(SeekFrom::Start(offset))?;
    let mut buf = vec![0u8; 64 * 1024];
    let mut len = 0u64;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            return Ok(0);
        }
        if let Some(i) = memchr::memchr(b'\n', &buf[..n]) {
            return Ok(len + i as u64 + 1);
        }
        len += n as u64;
    }
}

/// The delivery thread's end of the attempts file. See the [module doc](self).
pub struct AttemptsLog {
    dir: PathBuf,
    file: File,
    bytes: u64,
    /// Bytes the last roll carried into the current file.
    carried_bytes: u64,
}

/// What [`AttemptsLog::open`] found.
#[derive(Debug, Default)]
pub struct AttemptsLoaded {
    /// Every record kept, oldest first.
    pub records: Vec<AttemptRecord>,
    /// Before this outbox position every delivery had finished (the last roll's).
    pub cursor: Option<OutboxPos>,
    /// Unreadable lines skipped.
    pub corrupt: u64,
}

impl AttemptsLog {
    /// Opens (creating) the attempts file in `dir`, cutting a torn last line;
    /// returns the records of the previous and the current file, oldest first.
    pub fn open(dir: &Path) -> io::Result<(AttemptsLog, AttemptsLoaded)> {
        fs::create_dir_all(dir)?;
        let path = dir.join(ATTEMPTS_FILE);
        cut_torn_tail(&path, "attempts file")?;
        let mut loaded = AttemptsLoaded::default();
        for name in [ATTEMPTS_PREVIOUS_FILE, ATTEMPTS_FILE] {
            let bytes = read_or_empty(&dir.join(name))?;
            let bad = parse_lines(&bytes, &mut loaded.records);
            if bad > 0 {
                log::warn!("alerts: skipped {bad} unreadable lines in {name}");
                loaded.corrupt += bad;
            }
        }
        loaded.cursor = match fs::read(dir.join(ATTEMPTS_CURSOR_FILE)) {
            Ok(b) => match serde_json::from_slice(&b) {
                Ok(c) => Some(c),
                Err(e) => {
                    log::warn!("alerts: {ATTEMPTS_CURSOR_FILE} is unreadable ({e}); ignored");
                    None
                }
            },
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(e),
        };
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        let bytes = file.metadata()?.len();
        sync_dir(dir)?;
        Ok((
            AttemptsLog {
                dir: dir.to_path_buf(),
                file,
                bytes,
                carried_bytes: 0,
            },
            loaded,
        ))
    }

    /// Appends the records, then `fdatasync`s.
    pub fn append(&mut self, records: &[AttemptRecord]) -> io::Result<()> {
        let mut buf = Vec::new();
        for r in records {
            serde_json::to_writer(&mut buf, r).map_err(io::Error::other)?;
            buf.push(b'\n');
        }
        if buf.is_empty() {
            return Ok(());
        }
        if let Err(e) = self
            .file
            .write_all(&buf)
            .and_then(|()| self.file.sync_data())
        {
            // Cut a torn line off, so it cannot glue itself to the next one.
            if let Err(cut) = self.file.set_len(self.bytes) {
                log::error!(
                    "alerts: cannot cut the attempts file back after a failed write: {cut}"
                );
            }
            return Err(e);
        }
        self.bytes += buf.len() as u64;
        Ok(())
    }

    /// Bytes in the current file.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Whether the current file passed [`ATTEMPTS_FILE_BYTES_MAX`], with at
    /// least half of that written since the last roll (so a large carry,
    /// thousands of deliveries pending, cannot make every append roll).
    pub fn needs_roll(&self) -> bool {
        self.bytes > ATTEMPTS_FILE_BYTES_MAX
            && self.bytes - self.carried_bytes > ATTEMPTS_FILE_BYTES_MAX / 2
    }

    /// Rolls the file: records `cursor` (every delivery of an alert before it
    /// has finished), makes the current file the previous one (deleting the
    /// older), and starts a new file with `carry`: the records needed to know
    /// the state of every delivery of the alerts from `cursor` on. A crash at
    /// any step leaves a state that reads back the same.
    pub fn roll(&mut self, cursor: OutboxPos, carry: &[AttemptRecord]) -> io::Result<()> {
        let tmp = self.dir.join(format!("{ATTEMPTS_CURSOR_FILE}.tmp"));
        {
            let mut f = File::create(&tmp)?;
            f.write_all(&serde_json::to_vec(&cursor).map_err(io::Error::other)?)?;
            f.sync_all()?;
        }
        fs::rename(&tmp, self.dir.join(ATTEMPTS_CURSOR_FILE))?;
        fs::rename(
            self.dir.join(ATTEMPTS_FILE),
            self.dir.join(ATTEMPTS_PREVIOUS_FILE),
        )?;
        self.file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(ATTEMPTS_FILE))?;
        self.bytes = 0;
        sync_dir(&self.dir)?;
        self.append(carry)?;
        self.carried_bytes = self.bytes;
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::alerts::event::{AlertData, AlertKind, Route, Severity};

    pub(crate) fn tempdir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "bursar-alerts-{name}-{}-{}",
            std::process::id(),
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    pub(crate) fn alert(i: u32, channels: &[&str]) -> Alert {
        Alert {
            id: format!("alrt_{i:032x}"),
            kind: AlertKind::Exhausted,
            timestamp_ms: now_ms(),
            severity: Severity::Error,
            summary: format!("alert {i}"),
            data: AlertData::Test {
                message: format!("m{i}"),
            },
            routes: channels
                .iter()
                .map(|c| Route {
                    channel: c.to_string(),
                    rule: "r".into(),
                    dedup_key: format!("k{i}"),
                })
                .collect(),
            key: None,
        }
    }

    #[test]
    fn appended_ids_are_deduplicated_and_survive_a_reopen() {
        let dir = tempdir("dedup");
        let (mut w, all) = OutboxWriter::open(&dir).unwrap();
        assert!(all.is_empty());
        let a = alert(1, &["c"]);
        let b = alert(2, &["c"]);
        assert_eq!(w.append(&[a.clone(), b.clone(), a.clone()]).unwrap(), 2);
        assert_eq!(w.append(std::slice::from_ref(&a)).unwrap(), 0);
        assert!(w.contains(&a.id) && w.contains(&b.id));
        drop(w);
        let (mut w, all) = OutboxWriter::open(&dir).unwrap();
        assert_eq!(all, vec![a.clone(), b]);
        assert_eq!(w.append(&[a]).unwrap(), 0);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_torn_tail_is_cut_and_a_corrupt_middle_line_skipped() {
        let dir = tempdir("torn");
        let (mut w, _) = OutboxWriter::open(&dir).unwrap();
        w.append(&[alert(1, &["c"])]).unwrap();
        drop(w);
        let path = dir.join(OUTBOX_FILE);
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"{not json}\n").unwrap();
        let full = serde_json::to_vec(&alert(2, &["c"])).unwrap();
        f.write_all(&full).unwrap();
        f.write_all(b"\n").unwrap();
        f.write_all(&full[..full.len() / 2]).unwrap(); // torn: no newline
        drop(f);
        let len_before = fs::metadata(&path).unwrap().len();
        let (mut w, all) = OutboxWriter::open(&dir).unwrap();
        assert_eq!(all.len(), 2);
        assert_eq!(w.corrupt_lines(), 1);
        assert_eq!(
            fs::metadata(&path).unwrap().len(),
            len_before - (full.len() / 2) as u64
        );
        assert_eq!(w.append(&[alert(3, &["c"])]).unwrap(), 1);
        let mut r = OutboxReader::new(&dir, OutboxPos::default());
        let read: Vec<String> = r
            .read_new(100)
            .unwrap()
            .into_iter()
            .map(|(_, a)| a.id)
            .collect();
        assert_eq!(
            read,
            vec![alert(1, &[]).id, alert(2, &[]).id, alert(3, &[]).id]
        );
        assert_eq!(r.corrupt_lines(), 1);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_reader_takes_whole_lines_only_and_follows_segments() {
        let dir = tempdir("reader");
        let (mut w, _) = OutboxWriter::open(&dir).unwrap();
        w.append(&[alert(1, &["c"])]).unwrap();
        let mut r = OutboxReader::new(&dir, OutboxPos::default());
        assert_eq!(r.read_new(10).unwrap().len(), 1);
        // A half-written line is not read until it is whole.
        let path = dir.join(OUTBOX_FILE);
        let line = serde_json::to_vec(&alert(2, &["c"])).unwrap();
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(&line[..10]).unwrap();
        assert!(r.read_new(10).unwrap().is_empty());
        f.write_all(&line[10..]).unwrap();
        f.write_all(b"\n").unwrap();
        let got = r.read_new(10).unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].1.id, alert(2, &[]).id);
        // Force a roll and read across it.
        w.roll().unwrap();
        w.append(&[alert(3, &["c"])]).unwrap();
        let got = r.read_new(10).unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].0.segment, 1);
        assert_eq!(outbox_segments(&dir).unwrap(), vec![0, 1]);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_append_past_the_segment_bound_rolls_and_the_reader_follows_in_order() {
        let dir = tempdir("segments");
        let (mut w, _) = OutboxWriter::open(&dir).unwrap();
        let big = |i: u32| {
            let mut a = alert(i, &["c"]);
            a.summary = "x".repeat(OUTBOX_LINE_BYTES_MAX - 1024);
            a
        };
        let mut r = OutboxReader::new(&dir, OutboxPos::default());
        let mut read = Vec::new();
        for batch in 0..5u32 {
            let alerts: Vec<Alert> = (0..10).map(|i| big(batch * 10 + i)).collect();
            assert_eq!(w.append(&alerts).unwrap(), 10);
            read.extend(r.read_new(7).unwrap());
        }
        loop {
            let more = r.read_new(7).unwrap();
            if more.is_empty() {
                break;
            }
            read.extend(more);
        }
        let segments = outbox_segments(&dir).unwrap();
        assert!(segments.len() >= 2, "{segments:?}");
        for n in &segments[..segments.len() - 1] {
            let len = fs::metadata(dir.join(segment_name(*n))).unwrap().len();
            assert!(len <= OUTBOX_SEGMENT_BYTES_MAX, "segment {n}: {len}");
        }
        let ids: Vec<String> = read.iter().map(|(_, a)| a.id.clone()).collect();
        let want: Vec<String> = (0..50).map(|i| alert(i, &[]).id).collect();
        assert_eq!(ids, want);
        assert!(read.windows(2).all(|w| w[0].0 < w[1].0));
        drop(w);
        let (w, all) = OutboxWriter::open(&dir).unwrap();
        assert_eq!(all.len(), 50);
        assert_eq!(w.segment(), *segments.last().unwrap());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn old_segments_are_deleted_past_the_retention() {
        let dir = tempdir("retention");
        let (mut w, _) = OutboxWriter::open_with_retention(&dir, 1).unwrap();
        let mut old = alert(1, &["c"]);
        old.timestamp_ms -= 3 * DAY_MS;
        w.append(&[old.clone()]).unwrap();
        w.roll().unwrap(); // closes segment 0 (old), opens 1
        w.append(&[alert(2, &["c"])]).unwrap();
        assert!(!w.contains(&old.id));
        assert_eq!(outbox_segments(&dir).unwrap(), vec![1]);
        drop(w);
        let (_, all) = OutboxWriter::open_with_retention(&dir, 1).unwrap();
        assert_eq!(all.len(), 1);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn attempts_roll_keeps_the_newest_and_the_carry() {
        let dir = tempdir("attempts");
        let rec = |i: u32, outcome| AttemptRecord {
            alert: format!("a{i}"),
            channel: "c".into(),
            attempt: 1,
            at_ms: i as i64,
            status: Some(200),
            latency_ms: 3,
            error: None,
            outcome,
        };
        let (mut log, loaded) = AttemptsLog::open(&dir).unwrap();
        assert!(loaded.records.is_empty() && loaded.cursor.is_none());
        log.append(&[rec(1, AttemptOutcome::Delivered)]).unwrap();
        log.roll(
            OutboxPos {
                segment: 0,
                offset: 7,
            },
            &[rec(2, AttemptOutcome::Retry)],
        )
        .unwrap();
        log.append(&[rec(3, AttemptOutcome::Dead)]).unwrap();
        log.roll(
            OutboxPos {
                segment: 0,
                offset: 9,
            },
            &[],
        )
        .unwrap();
        log.append(&[rec(4, AttemptOutcome::Replayed)]).unwrap();
        drop(log);
        // A torn line at the end is cut.
        let mut f = OpenOptions::new()
            .append(true)
            .open(dir.join(ATTEMPTS_FILE))
            .unwrap();
        f.write_all(b"{\"alert\":").unwrap();
        drop(f);
        let (_, loaded) = AttemptsLog::open(&dir).unwrap();
        let ids: Vec<&str> = loaded.records.iter().map(|r| r.alert.as_str()).collect();
        assert_eq!(ids, vec!["a2", "a3", "a4"]);
        assert_eq!(
            loaded.cursor,
            Some(OutboxPos {
                segment: 0,
                offset: 9
            })
        );
        assert_eq!(loaded.corrupt, 0);
        let line = serde_json::to_value(rec(1, AttemptOutcome::Delivered)).unwrap();
        assert_eq!(line["outcome"], "delivered");
        assert_eq!(line["at_ms"], 1);
        fs::remove_dir_all(&dir).unwrap();
    }
}
