//! The spill: batches the sink could not take, in `<state_dir>/log-spill/`,
//! replayed into the sink oldest first once it works again.
//!
//! Files are `NNNNNNNNNN.jsonl` (a sequence number, so names sort by age),
//! one [`LogRow`] per line in its serde form (a line from before a field
//! was added, `avoided_picodollars`, reads it as 0). Appends go to one open file,
//! fsynced per batch and rotated past [`LOG_SPILL_FILE_BYTES_MAX`]; a start
//! never appends to an old file. Replay first closes the file being appended
//! (so a file is never read and written at once), then reads a file a chunk
//! at a time; the file is deleted only after its last chunk is in the sink.
//! Replaying a file twice (a crash before the delete) is harmless: the sinks
//! ignore ids they have.
//!
//! A line that does not parse (a write torn by a crash, damage) is skipped,
//! counted in `spill_rows_corrupt` and logged once per file. Rows the sink
//! refuses for their content go to `rejected.jsonl`, never replayed.

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};

use super::row::LogRow;
use super::{
    LOG_REJECTED_BYTES_MAX, LOG_SPILL_BYTES_MAX, LOG_SPILL_FILE_BYTES_MAX, LOG_SPILL_LINE_BYTES_MAX,
};

/// Rows refused by the sink for their content, kept for an operator.
pub(crate) const REJECTED_FILE: &str = "rejected.jsonl";

/// What one append did with its rows.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Appended {
    /// Rows fsynced to a spill file.
    pub spilled: u64,
    /// Rows that did not fit the bounds or hit a write error.
    pub dropped: u64,
}

struct AppendFile {
    seq: u64,
    file: File,
    bytes: u64,
}

struct Replay {
    seq: u64,
    reader: BufReader<File>,
    file_bytes: u64,
    /// Rows read but not yet in the sink (a failed chunk waits here).
    pending: Vec<LogRow>,
    eof: bool,
    corrupt: u64,
}

/// The spill directory's state; owned by the log-writer thread.
pub(crate) struct Spill {
    dir: PathBuf,
    /// Closed files waiting for replay, oldest first.
    sealed: VecDeque<u64>,
    append: Option<AppendFile>,
    next_seq: u64,
    /// All spill files' bytes together.
    bytes: u64,
    replay: Option<Replay>,
    rejected_bytes: u64,
    corrupt_rows: u64,
}

fn seq_of(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".jsonl")?;
    if digits.len() != 10 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// How one bounded line read ended.
enum Line {
    /// A line (without its newline) is in the buffer.
    Read,
    /// The line was longer than [`LOG_SPILL_LINE_BYTES_MAX`] and was skipped.
    TooLong,
    Eof,
}

fn read_line(reader: &mut BufReader<File>, buf: &mut Vec<u8>) -> io::Result<Line> {
    buf.clear();
    let n = reader
        .by_ref()
        .take(LOG_SPILL_LINE_BYTES_MAX as u64 + 1)
        .read_until(b'\n', buf)?;
    if n == 0 {
        return Ok(Line::Eof);
    }
    if buf.last() == Some(&b'\n') {
        buf.pop();
        return Ok(Line::Read);
    }
    if buf.len() <= LOG_SPILL_LINE_BYTES_MAX {
        // The file's last line, without a newline: a torn write, most likely;
        // the parse decides.
        return Ok(Line::Read);
    }
    // Skip the rest of the overlong line.
    loop {
        buf.clear();
        let n = reader
            .by_ref()
            .take(LOG_SPILL_LINE_BYTES_MAX as u64)
            .read_until(b'\n', buf)?;
        if n == 0 || buf.last() == Some(&b'\n') {
            return Ok(Line::TooLong);
        }
    }
}

impl Spill {
    /// Opens (creating) the spill directory and finds the files left by
    /// earlier runs; they are replayed first.
    pub fn open(dir: &Path) -> io::Result<Spill> {
        fs::create_dir_all(dir)?;
        let mut seqs = Vec::new();
        let mut bytes = 0;
        let mut rejected_bytes = 0;
        for entry in fs::read_dir(dir)? {
            let entry = entry?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if name == REJECTED_FILE {
                rejected_bytes = entry.metadata()?.len();
            } else if let Some(seq) = seq_of(name) {
                bytes += entry.metadata()?.len();
                seqs.push(seq);
            }
        }
        seqs.sort_unstable();
        let next_seq = seqs.last().map_or(0, |s| s + 1);
        Ok(Spill {
            dir: dir.to_path_buf(),
            sealed: seqs.into(),
            append: None,
            next_seq,
            bytes,
            replay: None,
            rejected_bytes,
            corrupt_rows: 0,
        })
    }

    /// The spill directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, seq: u64) -> PathBuf {
        self.dir.join(format!("{seq:010}.jsonl"))
    }

    /// Bytes in spill files (the rejected file aside).
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Whether any spilled row waits for replay.
    pub fn has_pending(&self) -> bool {
        self.replay.is_some()
            || !self.sealed.is_empty()
            || self.append.as_ref().is_some_and(|a| a.bytes > 0)
    }

    fn seal_append(&mut self) {
        if let Some(a) = self.append.take() {
            self.sealed.push_back(a.seq);
        }
    }

    /// Appends `rows`, fsynced, within the bounds.
    pub fn append(&mut self, rows: &[LogRow]) -> Result<Appended, (Appended, io::Error)> {
        let mut done = Appended::default();
        let mut buf = Vec::new();
        let mut in_buf = 0u64;
        for row in rows {
            let mut line = match serde_json::to_vec(row) {
                Ok(line) => line,
                Err(_) => {
                    // A LogRow always serialises; should it not, drop it counted.
                    done.dropped += 1;
                    continue;
                }
            };
            line.push(b'\n');
            let len = line.len() as u64;
            if line.len() > LOG_SPILL_LINE_BYTES_MAX
                || self.bytes + buf.len() as u64 + len > LOG_SPILL_BYTES_MAX
            {
                done.dropped += 1;
                continue;
            }
            let file_bytes = self.append.as_ref().map_or(0, |a| a.bytes) + buf.len() as u64;
            if file_bytes > 0 && file_bytes + len > LOG_SPILL_FILE_BYTES_MAX {
                if let Err(e) = self.write_out(&mut buf, &mut in_buf, &mut done) {
                    done.dropped += (rows.len() as u64) - done.spilled - done.dropped;
                    return Err((done, e));
                }
                self.seal_append();
            }
            buf.extend_from_slice(&line);
            in_buf += 1;
        }
        if let Err(e) = self.write_out(&mut buf, &mut in_buf, &mut done) {
            done.dropped += (rows.len() as u64) - done.spilled - done.dropped;
            return Err((done, e));
        }
        Ok(done)
    }

    /// Writes the buffered lines to the append file and fsyncs it. On an
    /// error the file is closed for appends (its tail may be torn, which the
    /// replay skips as corrupt) and the buffered rows are not counted spilled.
    fn write_out(
        &mut self,
        buf: &mut Vec<u8>,
        in_buf: &mut u64,
        done: &mut Appended,
    ) -> io::Result<()> {
        if buf.is_empty() {
            return Ok(());
        }
        if self.append.is_none() {
            let seq = self.next_seq;
            let file = OpenOptions::new()
                .create_new(true)
                .append(true)
                .open(self.path(seq))?;
            self.next_seq += 1;
            self.append = Some(AppendFile {
                seq,
                file,
                bytes: 0,
            });
        }
        let Some(a) = self.append.as_mut() else {
            return Ok(());
        };
        let result = a.file.write_all(buf).and_then(|()| a.file.sync_data());
        match result {
            Ok(()) => {
                a.bytes += buf.len() as u64;
                self.bytes += buf.len() as u64;
                done.spilled += *in_buf;
                buf.clear();
                *in_buf = 0;
                Ok(())
            }
            Err(e) => {
                // Whatever part reached the file counts against the bound.
                let len = a.file.metadata().map(|m| m.len()).unwrap_or(a.bytes);
                self.bytes += len.saturating_sub(a.bytes);
                self.seal_append();
                Err(e)
            }
        }
    }

    /// The next rows to replay (at most `rows_max`), oldest first; `None`
    /// when nothing waits. Hand them back with [`Spill::chunk_done`] or
    /// [`Spill::chunk_failed`].
    pub fn take_chunk(&mut self, rows_max: usize) -> io::Result<Option<Vec<LogRow>>> {
        loop {
            if let Some(r) = self.replay.as_mut() {
                if !r.pending.is_empty() {
                    return Ok(Some(std::mem::take(&mut r.pending)));
                }
                if r.eof {
                    self.finish_file()?;
                    continue;
                }
                let mut buf = Vec::new();
                let mut rows = Vec::new();
                while rows.len() < rows_max {
                    match read_line(&mut r.reader, &mut buf)? {
                        Line::Eof => {
                            r.eof = true;
                            break;
                        }
                        Line::TooLong => r.corrupt += 1,
                        Line::Read => match serde_json::from_slice::<LogRow>(&buf) {
                            Ok(row) => rows.push(row),
                            Err(_) => r.corrupt += 1,
                        },
                    }
                }
                if rows.is_empty() {
                    continue;
                }
                return Ok(Some(rows));
            }
            if self.sealed.is_empty() {
                if self.append.as_ref().is_none_or(|a| a.bytes == 0) {
                    return Ok(None);
                }
                self.seal_append();
            }
            let Some(seq) = self.sealed.pop_front() else {
                return Ok(None);
            };
            let path = self.path(seq);
            let file = match File::open(&path) {
                Ok(f) => f,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => {
                    self.sealed.push_front(seq);
                    return Err(e);
                }
            };
            let file_bytes = file.metadata()?.len();
            self.replay = Some(Replay {
                seq,
                reader: BufReader::new(file),
                file_bytes,
                pending: Vec::new(),
                eof: false,
                corrupt: 0,
            });
        }
    }

    /// The chunk from [`Spill::take_chunk`] is in the sink; a finished file
    /// is deleted.
    pub fn chunk_done(&mut self) -> io::Result<()> {
        match &self.replay {
            Some(r) if r.eof && r.pending.is_empty() => self.finish_file(),
            _ => Ok(()),
        }
    }

    /// Corrupt lines skipped in all files finished so far.
    pub fn corrupt_rows(&self) -> u64 {
        self.corrupt_rows
    }

    /// The chunk could not be written; it is offered again next time.
    pub fn chunk_failed(&mut self, rows: Vec<LogRow>) {
        if let Some(r) = self.replay.as_mut() {
            r.pending = rows;
        }
    }

    /// Deletes the replayed file and counts its corrupt lines.
    fn finish_file(&mut self) -> io::Result<()> {
        let Some(r) = self.replay.take() else {
            return Ok(());
        };
        let path = self.path(r.seq);
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                // Keep it for the next try; its rows are in the sink, so
                // replaying it again only finds duplicates.
                self.sealed.push_front(r.seq);
                return Err(e);
            }
        }
        self.bytes = self.bytes.saturating_sub(r.file_bytes);
        self.corrupt_rows += r.corrupt;
        if r.corrupt > 0 {
            log::error!(
                "request log: skipped {} corrupt line(s) in spill file {}",
                r.corrupt,
                path.display()
            );
        }
        Ok(())
    }

    /// Keeps a row the sink refused in `rejected.jsonl`; `false` when the
    /// file is full or cannot be written (the row is then lost).
    pub fn reject(&mut self, row: &LogRow) -> bool {
        let Ok(mut line) = serde_json::to_vec(row) else {
            return false;
        };
        line.push(b'\n');
        if self.rejected_bytes + line.len() as u64 > LOG_REJECTED_BYTES_MAX {
            return false;
        }
        let written = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(REJECTED_FILE))
            .and_then(|mut f| f.write_all(&line).and_then(|()| f.sync_data()));
        match written {
            Ok(()) => {
                self.rejected_bytes += line.len() as u64;
                true
            }
            Err(e) => {
                log::error!("request log: cannot write {REJECTED_FILE}: {e}");
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(i: u32) -> LogRow {
        let mut r = super::super::row::tests::sample_row();
        r.id = format!("req_{i:028x}");
        r
    }

    fn tempdir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "bursar-spill-{name}-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn drain(spill: &mut Spill) -> Vec<LogRow> {
        let mut out = Vec::new();
        while let Some(chunk) = spill.take_chunk(3).unwrap() {
            out.extend(chunk);
            spill.chunk_done().unwrap();
        }
        out
    }

    #[test]
    fn rows_come_back_in_order_across_restarts_and_files_are_deleted() {
        let dir = tempdir("order");
        let rows: Vec<LogRow> = (0..10).map(row).collect();
        {
            let mut spill = Spill::open(&dir).unwrap();
            assert_eq!(
                spill.append(&rows[..4]).unwrap(),
                Appended {
                    spilled: 4,
                    dropped: 0
                }
            );
            assert!(spill.has_pending());
        }
        let mut spill = Spill::open(&dir).unwrap();
        spill.append(&rows[4..]).unwrap();
        assert_eq!(
            fs::read_dir(&dir).unwrap().count(),
            2,
            "a start never appends to an old file"
        );
        // A failed chunk is offered again.
        let first = spill.take_chunk(3).unwrap().unwrap();
        spill.chunk_failed(first.clone());
        assert_eq!(spill.take_chunk(3).unwrap().unwrap(), first);
        spill.chunk_failed(first);
        assert_eq!(drain(&mut spill), rows);
        assert!(!spill.has_pending());
        assert_eq!(spill.bytes(), 0);
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 0);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn corrupt_lines_are_skipped_and_counted() {
        let dir = tempdir("corrupt");
        let good = serde_json::to_string(&row(1)).unwrap();
        let text = format!(
            "{good}\nnot json\n{}\n{}\n{}",
            "x".repeat(LOG_SPILL_LINE_BYTES_MAX + 10),
            serde_json::to_string(&row(2)).unwrap(),
            &good[..good.len() / 2]
        );
        fs::write(dir.join("0000000007.jsonl"), text).unwrap();
        fs::write(dir.join("notes.txt"), "ignored").unwrap();
        let mut spill = Spill::open(&dir).unwrap();
        assert_eq!(drain(&mut spill), vec![row(1), row(2)]);
        assert_eq!(
            spill.corrupt_rows(),
            3,
            "junk, the overlong line and the torn tail"
        );
        // New appends continue the numbering.
        spill.append(&[row(3)]).unwrap();
        assert!(dir.join("0000000008.jsonl").exists());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn avoided_spend_is_written_and_old_lines_without_it_read_zero() {
        let dir = tempdir("avoided");
        let mut hit = row(1);
        hit.cache_status = super::super::row::CacheStatus::Hit;
        hit.cost_picodollars = 0;
        hit.avoided_picodollars = 170_141_183_460_469_231_731_687_303_715_884_105_727;
        // A line as spilled before the field existed.
        let mut old = serde_json::to_value(row(2)).unwrap();
        old.as_object_mut().unwrap().remove("avoided_picodollars");
        fs::write(dir.join("0000000001.jsonl"), format!("{old}\n")).unwrap();
        let mut spill = Spill::open(&dir).unwrap();
        spill.append(std::slice::from_ref(&hit)).unwrap();
        let written = fs::read_to_string(dir.join("0000000002.jsonl")).unwrap();
        assert!(
            written.contains(r#""avoided_picodollars":"170141183460469231731687303715884105727""#),
            "{written}"
        );
        let back = drain(&mut spill);
        assert_eq!(back, vec![row(2), hit]);
        assert_eq!(back[0].avoided_picodollars, 0);
        assert_eq!(spill.corrupt_rows(), 0);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn files_rotate_and_rejected_rows_are_kept_apart() {
        let dir = tempdir("rotate");
        let mut spill = Spill::open(&dir).unwrap();
        let mut big = row(1);
        big.prompt_text = Some("p".repeat(600_000));
        let rows: Vec<LogRow> = (0..60)
            .map(|i| {
                let mut r = big.clone();
                r.id = format!("req_{i:028x}");
                r
            })
            .collect();
        let out = spill.append(&rows).unwrap();
        assert_eq!(out.spilled, 60);
        let files = fs::read_dir(&dir).unwrap().count();
        assert!(files >= 3, "36 MB rotates past 16 MiB files: {files}");
        assert!(spill.reject(&row(9)));
        assert_eq!(drain(&mut spill), rows);
        let rejected = fs::read_to_string(dir.join(REJECTED_FILE)).unwrap();
        assert_eq!(
            serde_json::from_str::<LogRow>(rejected.trim()).unwrap(),
            row(9)
        );
        fs::remove_dir_all(&dir).unwrap();
    }
}
