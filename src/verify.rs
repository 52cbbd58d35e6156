//! `bursar verify-state`: checks a state directory offline, changing
//! nothing, and says of each file what a start would do with it.
//!
//! It reads every file the way a start does (the same recovery, ring,
//! registry and overlay readers, in their read-only forms) and adds the
//! cross-checks a start makes between them: the journal must reach what
//! the settle rings saw durable (their witness), and the entity registry
//! must name every entity the books hold. Each finding has a [`Level`]:
//! what a start repairs by itself (a torn tail, a damaged newest snapshot
//! with an older one and the journal behind it), what needs an operator
//! but does not stop the gateway (the request log, alert history), and
//! what makes a start refuse (anything that would otherwise start with
//! money silently lost). The exit code is 0 when a start would succeed
//! with every durable charge intact, 1 when it would refuse.
//!
//! Knows the state directory's layout; imports the readers downward and is
//! imported only by the command line.

use std::fmt;
use std::path::{Path, PathBuf};

use crate::books::registry::{EntityRegistry, REGISTRY_FILE};
use crate::books::ring::{self, Witness};
use crate::ledger::recovery;
use crate::ledger::state::StateConfig;

/// How bad one finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Ok,
    /// A start repairs it by itself; no durable charge is lost.
    Repair,
    /// The gateway starts, but something outside the books needs an
    /// operator (the request log, alert history).
    Attention,
    /// A start refuses, though nothing is damaged: what the state holds
    /// does not fit the config (e.g. `governance.json`'s API definitions
    /// against a rule of this build). Checked only with `--config`.
    Refused,
    /// A start refuses: starting would lose money silently.
    Damaged,
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(match self {
            Level::Ok => "ok",
            Level::Repair => "repair",
            Level::Attention => "attention",
            Level::Refused => "REFUSED",
            Level::Damaged => "DAMAGED",
        })
    }
}

/// One line of the report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub level: Level,
    /// The file (or directory) it is about, relative to the state directory.
    pub file: String,
    pub message: String,
}

/// What [`verify`] found.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub findings: Vec<Finding>,
}

impl Report {
    fn add(&mut self, level: Level, file: impl Into<String>, message: impl Into<String>) {
        self.findings.push(Finding {
            level,
            file: file.into(),
            message: message.into(),
        });
    }

    /// The worst level found.
    pub fn worst(&self) -> Level {
        self.findings
            .iter()
            .map(|f| f.level)
            .max()
            .unwrap_or(Level::Ok)
    }

    /// Whether a start would refuse.
    pub fn refuses(&self) -> bool {
        self.worst() >= Level::Refused
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for x in &self.findings {
            writeln!(f, "{:<9} {}: {}", x.level, x.file, x.message)?;
        }
        let verdict = match self.worst() {
            Level::Ok => "ok: a start finds everything as it was left",
            Level::Repair => "ok: a start repairs what is listed, with every durable charge intact",
            Level::Attention => {
                "ok for the books: a start keeps every durable charge; what is listed needs an operator"
            }
            Level::Refused => {
                "REFUSED: a start refuses, the files are whole but do not fit the config; see the lines marked REFUSED"
            }
            Level::Damaged => {
                "DAMAGED: a start refuses (it would lose money silently); see the lines marked DAMAGED"
            }
        };
        writeln!(f, "verdict: {verdict}")
    }
}

/// What to check and how the gateway that owns it is configured.
#[derive(Debug, Clone)]
pub struct VerifyConfig {
    pub state_dir: PathBuf,
    pub state: StateConfig,
    /// The request log's SQLite file, if the gateway logs to SQLite.
    pub sqlite_log: Option<PathBuf>,
    /// The gateway's config (`--config`): the admin API's definitions are
    /// checked against it as a start does.
    pub config: Option<crate::config::Config>,
}

/// Checks `config.state_dir` without changing anything in it.
pub fn verify(config: &VerifyConfig) -> Report {
    let dir = &config.state_dir;
    let mut report = Report::default();
    if !dir.is_dir() {
        report.add(Level::Damaged, dir.display().to_string(), "not a directory");
        return report;
    }
    let books = ledger(dir, config.state, &mut report);
    rings(dir, books.as_ref().map(|b| b.journal_seq), &mut report);
    registry(dir, books.as_ref().and_then(|b| b.max_entity), &mut report);
    overlay(dir, config.config.as_ref(), &mut report);
    alerts(dir, &mut report);
    if let Some(path) = &config.sqlite_log {
        sqlite_log(dir, path, &mut report);
    }
    report
}

/// What the recovered books say, for the cross-checks.
struct BooksFacts {
    journal_seq: u64,
    max_entity: Option<u32>,
}

fn ledger(dir: &Path, state: StateConfig, report: &mut Report) -> Option<BooksFacts> {
    let ledger_dir = dir.join("ledger");
    if !ledger_dir.exists() {
        report.add(Level::Ok, "ledger", "absent: a start begins empty books");
        return Some(BooksFacts {
            journal_seq: 0,
            max_entity: None,
        });
    }
    match recovery::inspect(&ledger_dir, state) {
        Ok(r) => {
            let rel = |p: &Path| relative(dir, p);
            for (path, why) in &r.report.snapshots_rejected {
                report.add(
                    Level::Repair,
                    rel(path),
                    format!(
                        "does not check out ({why}); a start sets it aside and uses the older \
                         snapshot and the journal after it"
                    ),
                );
            }
            if let Some((path, torn)) = &r.report.torn_tail {
                report.add(
                    Level::Repair,
                    rel(path),
                    format!(
                        "a torn tail of {} bytes at byte offset {} (a write cut by a crash, never \
                         acknowledged); a start cuts it",
                        torn.bytes, torn.offset
                    ),
                );
            }
            let from = match &r.report.snapshot {
                Some(s) => format!("{} (record {})", rel(&s.path), s.journal_seq),
                None => "an empty ledger".into(),
            };
            report.add(
                Level::Ok,
                "ledger",
                format!(
                    "books recovered from {from}, {} journal records replayed from {} segments: \
                     {} entities, journal at record {}",
                    r.report.records_replayed,
                    r.report.segments_read,
                    r.state.entity_count(),
                    r.report.journal_seq
                ),
            );
            Some(BooksFacts {
                journal_seq: r.report.journal_seq,
                max_entity: r.state.entity_books().map(|e| e.id.0).max(),
            })
        }
        Err(e) => {
            report.add(
                Level::Damaged,
                "ledger",
                format!(
                    "{e}. Restore the ledger directory from a backup (a start refuses: the \
                     books cannot be rebuilt as they were)"
                ),
            );
            None
        }
    }
}

fn rings(dir: &Path, journal_seq: Option<u64>, report: &mut Report) {
    let workers = match ring::ring_workers_in(dir) {
        Ok(w) => w,
        Err(e) => {
            report.add(Level::Damaged, ".", e.to_string());
            return;
        }
    };
    for w in workers {
        let file = ring::ring_file_name(w);
        match ring::inspect_ring(dir, w) {
            Ok((layout, pending)) => {
                let mut message = format!(
                    "{} settles pending (a start charges them once; those already in the \
                     journal are recognised)",
                    pending.len()
                );
                match (layout.witness, journal_seq) {
                    (Witness::Durable(seq), Some(j)) if seq > j => {
                        report.add(
                            Level::Damaged,
                            &file,
                            format!(
                                "saw the journal durable through record {seq}, but it ends at \
                                 record {j}: acknowledged charges are missing from the journal \
                                 (a truncated, zeroed or removed segment). Restore ledger/ from \
                                 a backup"
                            ),
                        );
                        continue;
                    }
                    (Witness::Durable(seq), _) => {
                        message.push_str(&format!("; journal witnessed through record {seq}"));
                    }
                    (Witness::Damaged(word), _) => {
                        report.add(
                            Level::Attention,
                            &file,
                            format!(
                                "its journal witness {word:#x} does not check out (a damaged \
                                 header word); a start ignores it, so the journal's end is \
                                 checked by its own frames only"
                            ),
                        );
                    }
                    (Witness::None, _) => {}
                }
                report.add(Level::Ok, &file, message);
            }
            Err(e) => report.add(
                Level::Damaged,
                &file,
                format!(
                    "{e}. A start refuses: its pending settles may be charges clients saw. \
                     Restore it from a backup; moving it aside loses the settles it holds"
                ),
            ),
        }
    }
}

fn registry(dir: &Path, max_entity: Option<u32>, report: &mut Report) {
    if !dir.join(REGISTRY_FILE).exists() {
        if let Some(id) = max_entity {
            report.add(
                Level::Damaged,
                REGISTRY_FILE,
                format!(
                    "absent, but the books hold entity id {id}: their names are lost. Restore \
                     it from a backup"
                ),
            );
        } else {
            report.add(Level::Ok, REGISTRY_FILE, "absent: a start creates it");
        }
        return;
    }
    match EntityRegistry::inspect(dir) {
        Ok(f) => {
            if f.torn_bytes > 0 {
                report.add(
                    Level::Repair,
                    REGISTRY_FILE,
                    format!(
                        "a torn last line of {} bytes (an id never handed out); a start cuts it",
                        f.torn_bytes
                    ),
                );
            }
            if f.unchecked > 0 {
                report.add(
                    Level::Repair,
                    REGISTRY_FILE,
                    format!(
                        "{} lines without checksums (an older build's); a start adds them",
                        f.unchecked
                    ),
                );
            }
            match max_entity {
                Some(id) if id as usize >= f.names.len() => report.add(
                    Level::Damaged,
                    REGISTRY_FILE,
                    format!(
                        "names {} entities, but the books hold entity id {id}: entries were \
                         lost (the file was cut short). Restore it from a backup",
                        f.names.len()
                    ),
                ),
                _ => report.add(
                    Level::Ok,
                    REGISTRY_FILE,
                    format!("{} entities", f.names.len()),
                ),
            }
        }
        Err(e) => report.add(
            Level::Damaged,
            REGISTRY_FILE,
            format!("{e}. Restore it from a backup"),
        ),
    }
}

fn overlay(dir: &Path, config: Option<&crate::config::Config>, report: &mut Report) {
    let file = crate::admin::OVERLAY_FILE;
    if !dir.join(file).exists() {
        report.add(Level::Ok, file, "absent: no admin API changes");
        return;
    }
    match (crate::admin::Overlay::load(dir), config) {
        (Ok(o), Some(config)) if !o.is_empty() => {
            // The start's own merge of the file and the overlay.
            let mut config = config.clone();
            config.server.state_dir = dir.to_path_buf();
            match crate::admin::config_at_start(config) {
                Ok(_) => report.add(Level::Ok, file, definitions(&o)),
                Err(e) => report.add(Level::Refused, file, format!("{e:#}")),
            }
        }
        (Ok(o), _) => report.add(Level::Ok, file, definitions(&o)),
        (Err(e), _) => report.add(
            Level::Damaged,
            file,
            format!("{e}. A start refuses (budgets and keys would change silently)"),
        ),
    }
}

fn definitions(o: &crate::admin::Overlay) -> String {
    format!(
        "{} customers, {} teams, {} keys defined through the admin API",
        o.customers.len(),
        o.teams.len(),
        o.keys.len()
    )
}

fn alerts(dir: &Path, report: &mut Report) {
    let alerts_dir = dir.join(crate::alerts::outbox::ALERTS_DIR);
    if !alerts_dir.is_dir() {
        return;
    }
    match crate::alerts::outbox::inspect(&alerts_dir) {
        Ok(files) => {
            for f in files {
                let file = format!("{}/{}", crate::alerts::outbox::ALERTS_DIR, f.name);
                if f.corrupt > 0 {
                    report.add(
                        Level::Attention,
                        &file,
                        format!(
                            "{} damaged lines a start skips (and counts): an alert or attempt \
                             they held is not delivered or retried from them",
                            f.corrupt
                        ),
                    );
                }
                if f.torn {
                    report.add(
                        Level::Repair,
                        &file,
                        "a torn last line (a write cut by a crash); a start cuts it",
                    );
                }
                report.add(Level::Ok, &file, format!("{} lines", f.lines));
            }
        }
        Err(e) => report.add(Level::Attention, "alerts", e.to_string()),
    }
    let history = alerts_dir.join(crate::alerts::ledger_side::BURN_HISTORY_FILE);
    if history.exists() {
        let file = relative(dir, &history);
        let parsed = std::fs::read(&history)
            .map_err(|e| e.to_string())
            .and_then(|b| {
                serde_json::from_slice::<serde_json::Value>(&b).map_err(|e| e.to_string())
            });
        match parsed {
            Ok(_) => report.add(Level::Ok, file, "readable"),
            Err(e) => report.add(
                Level::Attention,
                file,
                format!("unusable ({e}); a start begins forecasts and anomalies afresh"),
            ),
        }
    }
}

fn sqlite_log(dir: &Path, path: &Path, report: &mut Report) {
    let file = relative(dir, path);
    if !path.exists() {
        report.add(Level::Ok, file, "absent: a start creates it");
        return;
    }
    let checked = rusqlite::Connection::open_with_flags(
        path,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .and_then(|c| {
        let mut stmt = c.prepare("PRAGMA quick_check")?;
        let rows = stmt
            .query_map([], |r| r.get::<_, String>(0))?
            .take(5)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    });
    match checked {
        Ok(rows) if rows == ["ok"] => report.add(Level::Ok, file, "quick_check ok"),
        Ok(rows) => report.add(
            Level::Attention,
            file,
            format!(
                "quick_check: {}. The gateway starts and spills rows to log-spill/ until the \
                 store answers; recover it (sqlite3 {} .recover) or move it aside for a new log",
                rows.join("; "),
                path.display()
            ),
        ),
        Err(e) => report.add(
            Level::Attention,
            file,
            format!(
                "{e}. The gateway starts and spills rows to log-spill/ until the store answers; \
                 recover it (sqlite3 .recover) or move it aside for a new log"
            ),
        ),
    }
}

fn relative(dir: &Path, path: &Path) -> String {
    path.strip_prefix(dir).unwrap_or(path).display().to_string()
}
