//! The request log: one row per proxied request, queryable, written off the
//! hot path.
//!
//! # Shape
//!
//! Workers build a [`LogRow`] at the end of a request and call
//! [`LogSender::try_log`]: a non-blocking `try_send` into one bounded
//! crossbeam channel ([`LOG_QUEUE_MAX`]). Nothing else on a worker touches the
//! log. One log-writer thread (`bursar-log`, [`LogWriter::start`]) wakes every
//! `flush_interval`, takes what is queued (up to `batch_max` rows) and writes
//! it in one transaction into the sink. It does not wait on the channel, so a
//! `try_send` wakes nobody (no futex call on the worker, no context switch
//! per row: at 5,000 rows/s, waking per row cost more CPU than writing the
//! rows); a sender unparks it early only when a whole batch is queued. The
//! sink is SQLite (`<state_dir>/requests.sqlite`, the default) or
//! PostgreSQL. Both sinks implement [`LogStore`], so writes, retention and the
//! admin API's queries do not know which one they talk to.
//!
//! Why a writer thread: a database write blocks (disk, network, locks) and
//! costs far more per row alone than in a batch; workers may never block, and
//! batching is what makes 100k rows/s possible.
//!
//! # Spill: a sink that is down or slow does not lose rows
//!
//! When a batch write fails, or succeeds but takes longer than
//! [`LOG_WRITE_SLOW`], the sink is marked down for a backoff
//! ([`LOG_RETRY_BACKOFF_MIN`] doubling to [`LOG_RETRY_BACKOFF_MAX`]). Batches
//! that arrive meanwhile are appended to spill files in
//! `<state_dir>/log-spill/` (JSON lines, fsynced per batch, rotated at
//! [`LOG_SPILL_FILE_BYTES_MAX`], [`LOG_SPILL_BYTES_MAX`] in all). Once a write
//! succeeds again the spill is replayed into the sink, oldest file first, one
//! batch per turn of the writer's loop so live rows keep flowing. Spill files
//! survive restarts and are replayed after the next start. Rows are inserted
//! with `INSERT OR IGNORE` / `ON CONFLICT (id) DO NOTHING`, so replaying a file
//! again (after a crash half-way through it) never duplicates a row.
//!
//! Without the spill, a sink outage longer than the queue's headroom
//! ([`LOG_QUEUE_MAX`] rows, under a second at 100k requests/s) would drop
//! rows; with it, an outage costs disk space, bounded.
//!
//! # Exactly when a row can be lost
//!
//! Counted in [`LogStatsSnapshot`] and reported by the writer in a warning:
//! - `rows_dropped`: [`LogSender::try_log`] found the queue full
//!   ([`LOG_QUEUE_MAX`] rows waiting: the writer thread is stuck, e.g. in a
//!   sink call up to the sink's timeout) or the writer already shut down; or a
//!   batch had to be spilled while the spill was full ([`LOG_SPILL_BYTES_MAX`])
//!   or the spill file could not be written (disk full, I/O error); or a row
//!   the sink refused could not be kept because `rejected.jsonl` was full
//!   ([`LOG_REJECTED_BYTES_MAX`]) or unwritable.
//! - `spill_rows_corrupt`: a spill line that does not parse (a torn last line
//!   after a crash, a damaged file) is skipped and logged, never fatal.
//!
//! Not counted, because the count dies with the process: a crash or SIGKILL
//! loses the rows still in the queue and in the batch being built (at most
//! [`LOG_QUEUE_MAX`] + `batch_max`); a power loss may also lose the last
//! SQLite transactions (`synchronous=NORMAL` in WAL mode). A batch committed
//! to the sink or a spill append that was fsynced survives a crash.
//!
//! Not lost but not in the log: `rows_rejected`, rows the sink refuses for
//! their content (an error in the data, not the connection; not expected, as
//! every field is made storable first) are kept in `log-spill/rejected.jsonl`
//! for an operator, so one bad row cannot block a batch forever. Retention
//! deletes rows on purpose ([`LogConfig::retention`], [`LogConfig::max_rows`]).

pub mod postgres;
pub mod query;
pub mod reader;
pub(crate) mod rollup;
pub(crate) mod rollup_build;
pub mod row;
pub(crate) mod sinks;
mod spill;
pub mod sqlite;
pub mod store;
pub mod top;
pub mod writer;

use std::path::Path;
use std::time::Duration;

pub use query::{
    Bucket, GroupBy, LogCursor, LogFilter, LogPage, SeriesPoint, SpendFilter, SpendTotal,
};
pub use reader::{LogReader, QueryRefused};
pub use rollup_build::closed_to as rollup_closed_to;
pub use row::{
    check_tag_key, check_tag_value, parse_tags, parse_tags_counted, CacheStatus, LogRow,
    ParsedTags, TagError,
};
pub use store::{LogStore, StoreError};
pub use writer::{LogError, LogHandle, LogSender, LogStatsSnapshot, LogWriter};

/// Rows waiting for the writer thread; past this `try_log` drops and counts.
/// At 100k requests/s this is over half a second of headroom.
pub const LOG_QUEUE_MAX: usize = 65_536;
/// Most rows in one batch (one sink transaction); `batch_max` may be lower.
pub const LOG_BATCH_MAX: usize = 16_384;
/// Default `batch_max`: at ~5–7 µs of writer CPU per row, a transaction of
/// about 3 ms. That is not what a worker sharing the writer's core waits:
/// the writer pauses every [`LOG_PACE_ROWS`] rows in the idle class, and
/// writes whole transactions unpaused only when boosted at saturation
/// (decision 0006).
pub const LOG_BATCH_ROWS_DEFAULT: usize = 512;
/// In the idle scheduling class the writer yields its core every this many
/// rows of a transaction (~50 µs of SQLite work), so a worker sharing the
/// core waits no longer than that (decision 0006).
pub const LOG_PACE_ROWS: u32 = 8;
/// Rows queued at which the writer leaves the idle class and writes at
/// normal priority, unpaced, until fewer than a batch are left: a quarter of
/// the queue, so the writer boosts only when it is truly starved (at
/// saturation), not at every burst, and the queue still has three quarters
/// left while it catches up.
pub const LOG_BOOST_ROWS: usize = LOG_QUEUE_MAX / 4;
/// Default `flush_interval`: the writer's sleep between batches, so the
/// longest a row waits in the queue while fewer than a batch are queued.
pub const LOG_FLUSH_INTERVAL: Duration = Duration::from_millis(200);
/// Longest `flush_interval` a config may set.
pub const LOG_FLUSH_INTERVAL_MAX: Duration = Duration::from_secs(10);
/// A batch write slower than this marks the sink down (as a failure does),
/// so the next batches go to the spill and the queue does not back up.
pub const LOG_WRITE_SLOW: Duration = Duration::from_secs(2);
/// First wait after the sink fails before it is tried again.
pub const LOG_RETRY_BACKOFF_MIN: Duration = Duration::from_millis(100);
/// The wait doubles per failure up to this.
pub const LOG_RETRY_BACKOFF_MAX: Duration = Duration::from_secs(5);
/// All spill files together (and the file being appended) stay under this.
pub const LOG_SPILL_BYTES_MAX: u64 = 1024 * 1024 * 1024;
/// A spill file is closed and a new one started past this size.
pub const LOG_SPILL_FILE_BYTES_MAX: u64 = 16 * 1024 * 1024;
/// Longest spill line (one row) written or read; longer lines are refused
/// on write (counted as dropped) and skipped as corrupt on read.
pub const LOG_SPILL_LINE_BYTES_MAX: usize = 1024 * 1024;
/// Bound on `log-spill/rejected.jsonl`; past it rejected rows are dropped.
pub const LOG_REJECTED_BYTES_MAX: u64 = 64 * 1024 * 1024;
/// Longest stored prompt or completion text; longer text is cut (on a
/// character boundary) before it is stored or spilled.
pub const LOG_TEXT_BYTES_MAX: usize = 64 * 1024;
/// How often retention runs (also once at start).
pub const LOG_RETENTION_INTERVAL: Duration = Duration::from_secs(60);
/// Rows deleted per retention transaction.
pub const LOG_RETENTION_DELETE_CHUNK: u64 = 5_000;
/// Rows deleted per retention pass at most; the rest wait for the next turn
/// of the writer's loop, so live batches are never held up for long.
pub const LOG_RETENTION_PASS_ROWS_MAX: u64 = 100_000;
/// Shortest `retention` a config may set.
pub const LOG_RETENTION_MIN: Duration = Duration::from_secs(60);
/// How often the writer reports rows dropped since its last report.
pub const LOG_DROP_REPORT_INTERVAL: Duration = Duration::from_secs(10);
/// Most rows one `query_logs` call returns.
pub const LOG_QUERY_LIMIT_MAX: usize = 1000;
/// Most rows one [`LogStore::query_log_page`] examines when a filter no
/// index serves (any but `key`) selects them, so a page of a rare status or
/// tag says where to continue instead of scanning the log. The window is a
/// range of the time index; measured at 10 million SQLite rows, a page that
/// examines all 20,000 rows takes a few milliseconds (docs/benchmarks.md),
/// well under the dashboard's 100 ms.
pub const LOG_QUERY_SCAN_ROWS_MAX: usize = 20_000;
/// How long the minute tier of the rollups is kept (by bucket start); the
/// coarser tiers are kept as long as the store (`reqlog::rollup`).
pub const LOG_ROLLUP_MINUTE_KEEP: Duration = Duration::from_secs(35 * 86_400);
/// How long after a minute ends its rows are summed into the rollups
/// (`reqlog::rollup_build`); a row of that minute arriving later is added by
/// its own insert.
pub const LOG_ROLLUP_CLOSE_GRACE: Duration = Duration::from_secs(5);
/// Minutes one rollup build step sums at most (one transaction), so a
/// writer catching up on a long backlog returns to its batches between
/// steps, and a step stays well inside `LOG_PG_STATEMENT_TIMEOUT` (ten
/// minutes at 5,000 requests/s are 3 million rows).
pub const LOG_ROLLUP_BUILD_MINUTES_MAX: usize = 10;
/// How often the writer checks for a closed minute to roll up (a cached
/// comparison unless one has closed).
pub const LOG_ROLLUP_POLL_INTERVAL: Duration = Duration::from_secs(1);
/// Default `LogFilter::limit`.
pub const LOG_QUERY_LIMIT_DEFAULT: usize = 100;
/// Queries waiting for the query thread (`bursar-query`, [`LogReader`])
/// beyond the one it runs; past this a query is refused at once
/// ([`QueryRefused::Busy`], a 503), never blocking the control plane. The
/// control plane serves at most `ADMIN_CONNECTIONS_MAX` connections, one
/// request each at a time, so this bounds how long the last of a burst waits.
pub const LOG_QUERIES_QUEUED_MAX: usize = 16;
/// The query thread's nice value (the tokenizer's): a worker sharing its
/// core wins the CPU from a long query.
pub const LOG_QUERY_NICE: i32 = 10;
/// Most points one spend series (or totals) query returns; more is an error
/// asking for a narrower range or a coarser bucket.
pub const LOG_SERIES_POINTS_MAX: usize = 100_000;
/// PostgreSQL: connect timeout when the URL sets none.
pub const LOG_PG_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// PostgreSQL: statement timeout on the writer's and readers' sessions.
pub const LOG_PG_STATEMENT_TIMEOUT: Duration = Duration::from_secs(30);
/// SQLite: how long a write waits on another connection's lock.
pub const LOG_SQLITE_BUSY_TIMEOUT: Duration = Duration::from_secs(1);
/// SQLite: page cache per connection, so the indexes' hot pages stay in
/// memory as the file grows.
pub const LOG_SQLITE_CACHE_BYTES: i64 = 64 * 1024 * 1024;
/// SQLite: the page size of a new file (an existing file keeps its own). 16
/// KiB rather than the default 4 KiB: fewer page splits and shallower
/// b-trees; `insert_batch` alone took about a fifth less CPU per row
/// (docs/benchmarks.md).
pub const LOG_SQLITE_PAGE_BYTES: i64 = 16 * 1024;
/// SQLite: WAL size past which the writer checkpoints (4096 pages of 4 KiB,
/// 1024 of 16 KiB), between batches in the idle scheduling class, never
/// inside a commit (decision 0006). Larger than SQLite's default 1000 pages:
/// a checkpoint also syncs the WAL and the file, and at 4 MiB wrk -c1's p99
/// and throughput were worse, not better.
pub const LOG_SQLITE_CHECKPOINT_BYTES: i64 = 16 * 1024 * 1024;
/// SQLite: WAL size at which a commit checkpoints at once, whatever the
/// writer's class: reached only while the writer stays boosted (at
/// saturation), so the WAL stays bounded.
pub const LOG_SQLITE_WAL_BYTES_MAX: i64 = 4 * LOG_SQLITE_CHECKPOINT_BYTES;
/// The SQLite file's name in the state directory.
pub const LOG_SQLITE_FILE: &str = "requests.sqlite";
/// The spill directory's name in the state directory.
pub const LOG_SPILL_DIR: &str = "log-spill";

const _: () = assert!(LOG_BATCH_ROWS_DEFAULT <= LOG_BATCH_MAX);
const _: () = assert!(LOG_BATCH_MAX <= LOG_QUEUE_MAX);
const _: () = assert!(LOG_SPILL_FILE_BYTES_MAX <= LOG_SPILL_BYTES_MAX);
const _: () = assert!(LOG_SPILL_LINE_BYTES_MAX as u64 <= LOG_SPILL_FILE_BYTES_MAX);
// A stored row's text fits a spill line with room for the other fields.
const _: () = assert!(2 * LOG_TEXT_BYTES_MAX * 6 < LOG_SPILL_LINE_BYTES_MAX);
const _: () = assert!(LOG_RETENTION_DELETE_CHUNK <= LOG_RETENTION_PASS_ROWS_MAX);
const _: () = assert!(LOG_QUERY_LIMIT_DEFAULT <= LOG_QUERY_LIMIT_MAX);
const _: () = assert!(LOG_QUERY_LIMIT_MAX <= LOG_QUERY_SCAN_ROWS_MAX);
const _: () = assert!(LOG_RETRY_BACKOFF_MIN.as_nanos() <= LOG_RETRY_BACKOFF_MAX.as_nanos());
const _: () = assert!(LOG_FLUSH_INTERVAL.as_nanos() <= LOG_FLUSH_INTERVAL_MAX.as_nanos());

/// Where the request log is kept.
#[derive(Clone, PartialEq, Eq)]
pub enum SinkKind {
    /// `<state_dir>/requests.sqlite`.
    Sqlite,
    /// A PostgreSQL database; the URL may carry a password.
    Postgres { url: String },
}

impl std::fmt::Debug for SinkKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SinkKind::Sqlite => f.write_str("Sqlite"),
            SinkKind::Postgres { .. } => f.write_str("Postgres { url: <redacted> }"),
        }
    }
}

/// The validated `[log]` settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogConfig {
    pub sink: SinkKind,
    /// Rows older than this are deleted; `None` keeps them forever.
    pub retention: Option<Duration>,
    /// The oldest rows past this count are deleted; `None` is no bound.
    pub max_rows: Option<u64>,
    /// Keep `prompt_text`/`completion_text`; off by default (privacy).
    pub store_text: bool,
    /// Rows per batch, 1..=[`LOG_BATCH_MAX`].
    pub batch_max: usize,
    /// Longest a row waits for its batch to fill.
    pub flush_interval: Duration,
}

impl Default for LogConfig {
    fn default() -> LogConfig {
        LogConfig {
            sink: SinkKind::Sqlite,
            retention: None,
            max_rows: None,
            store_text: false,
            batch_max: LOG_BATCH_ROWS_DEFAULT,
            flush_interval: LOG_FLUSH_INTERVAL,
        }
    }
}

impl LogConfig {
    /// Opens the configured store (the writer's connection, or any other
    /// reader's; the admin API's queries have their own, on [`LogReader`]'s
    /// thread). Call it off the worker threads: it does blocking I/O. SQLite
    /// in WAL mode lets a reader read while the writer writes.
    pub fn open_store(&self, state_dir: &Path) -> Result<Box<dyn LogStore>, StoreError> {
        sinks::open(&self.sink, state_dir)
    }
}
