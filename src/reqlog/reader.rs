//! The request log's query thread (`bursar-query`): the admin API's reads
//! (log pages, spend totals and series) and the data plane's usage look-ups
//! (a key's last rows, `proxy::usage`) run here, on their own connection to
//! the store, so a slow query (hundreds of milliseconds over a million
//! SQLite rows, up to [`LOG_PG_STATEMENT_TIMEOUT`](super::LOG_PG_STATEMENT_TIMEOUT)
//! on PostgreSQL) never stalls the control-plane thread, which keeps
//! answering `/metrics`, `/health` and `/ready` meanwhile.
//!
//! A caller hands [`LogReader::query`] a closure over the store; it is queued
//! on one bounded channel ([`LOG_QUERIES_QUEUED_MAX`]) and its result comes
//! back through a oneshot channel the caller awaits. A full queue refuses at
//! once ([`QueryRefused::Busy`]) rather than blocking the caller. One thread
//! runs the queries one at a time, as the one connection the control plane
//! used before did: queries are rare (an operator, a dashboard, a key
//! holder's usage read, which its caller rate-limits and bounds to a share
//! of the queue), and a second reader would compete with the log writer and
//! the workers for the same cores.
//!
//! The connection is opened on the first query (opening may block: a
//! PostgreSQL connect waits up to its timeout) and dropped after a failed
//! call, so the next query opens a fresh one. The thread runs at nice
//! [`LOG_QUERY_NICE`]: a worker sharing its core goes first.
//!
//! A query that panics (a bug) ends the process, as a panic on any thread
//! does under `serve` (decision 0008); should the thread end otherwise, its
//! callers see their oneshot dropped and later queries [`QueryRefused::Gone`].
//!
//! Debug builds only: with `BURSAR_TEST_QUERY_GATE=<path>` set, every query
//! waits (at most [`TEST_QUERY_GATE_WAIT_MAX`]) until `<path>` exists, after
//! creating `<path>.waiting`, so a test can hold a query on this thread and
//! watch the control plane go on. Release builds compile none of it.

use std::path::{Path, PathBuf};

use futures_channel::oneshot;

use super::sinks;
use super::store::{LogStore, StoreError};
use super::{SinkKind, LOG_QUERIES_QUEUED_MAX, LOG_QUERY_NICE};

/// Debug builds: the longest a query waits on the test gate.
#[cfg(debug_assertions)]
pub const TEST_QUERY_GATE_WAIT_MAX: std::time::Duration = std::time::Duration::from_secs(120);
/// Debug builds: the environment variable naming the test gate's path.
#[cfg(debug_assertions)]
pub const TEST_QUERY_GATE_ENV: &str = "BURSAR_TEST_QUERY_GATE";

/// Why a query was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum QueryRefused {
    /// [`LOG_QUERIES_QUEUED_MAX`] queries are already waiting.
    #[error("{LOG_QUERIES_QUEUED_MAX} request log queries are already waiting")]
    Busy,
    /// The query thread is gone (it could not be started, or exited).
    #[error("the request log's query thread is not running")]
    Gone,
}

/// The store connection the query thread keeps, opened on demand.
struct Connection {
    sink: SinkKind,
    state_dir: PathBuf,
    store: Option<Box<dyn LogStore>>,
}

impl Connection {
    /// Runs `f` on the store, opening it first if needed; a failure drops
    /// the connection so the next query reopens it.
    fn run<R>(
        &mut self,
        f: impl FnOnce(&mut dyn LogStore) -> Result<R, StoreError>,
    ) -> Result<R, StoreError> {
        let store = match &mut self.store {
            Some(store) => store,
            slot => slot.insert(sinks::open(&self.sink, &self.state_dir)?),
        };
        let result = f(store.as_mut());
        if result.is_err() {
            self.store = None;
        }
        result
    }
}

type Job = Box<dyn FnOnce(&mut Connection) + Send>;

/// A handle to the query thread, cloned to whoever queries (the admin API
/// and every worker share one thread); the thread exits when the last
/// handle is dropped (after the queries already queued).
#[derive(Clone)]
pub struct LogReader {
    jobs: crossbeam_channel::Sender<Job>,
}

impl LogReader {
    /// Starts the query thread for `sink` (SQLite: in `state_dir`). The store
    /// is opened on the first query, on that thread.
    pub fn start(sink: SinkKind, state_dir: &Path) -> std::io::Result<LogReader> {
        let (jobs, rx) = crossbeam_channel::bounded::<Job>(LOG_QUERIES_QUEUED_MAX);
        let mut conn = Connection {
            sink,
            state_dir: state_dir.to_path_buf(),
            store: None,
        };
        std::thread::Builder::new()
            .name("bursar-query".into())
            .spawn(move || {
                crate::sched::lower_thread_priority(LOG_QUERY_NICE);
                for job in rx {
                    #[cfg(debug_assertions)]
                    test_gate();
                    job(&mut conn);
                }
            })?;
        Ok(LogReader { jobs })
    }

    /// Queues `f` to run on the query thread's store connection; the receiver
    /// yields its result (`Canceled` only if the thread ended without running
    /// it). Never blocks: a full queue is [`QueryRefused::Busy`].
    pub fn query<R, F>(
        &self,
        f: F,
    ) -> Result<oneshot::Receiver<Result<R, StoreError>>, QueryRefused>
    where
        R: Send + 'static,
        F: FnOnce(&mut dyn LogStore) -> Result<R, StoreError> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move |conn: &mut Connection| {
            // Nobody waits for it any more: skip the work.
            if tx.is_canceled() {
                return;
            }
            let _ = tx.send(conn.run(f));
        });
        match self.jobs.try_send(job) {
            Ok(()) => Ok(rx),
            Err(crossbeam_channel::TrySendError::Full(_)) => Err(QueryRefused::Busy),
            Err(crossbeam_channel::TrySendError::Disconnected(_)) => Err(QueryRefused::Gone),
        }
    }
}

/// Debug builds: holds the query until the gate file exists (see the module
/// doc). Nothing happens unless [`TEST_QUERY_GATE_ENV`] is set.
#[cfg(debug_assertions)]
fn test_gate() {
    let Some(gate) = std::env::var_os(TEST_QUERY_GATE_ENV).map(PathBuf::from) else {
        return;
    };
    let mut waiting = gate.clone().into_os_string();
    waiting.push(".waiting");
    let _ = std::fs::write(&waiting, b"");
    let started = std::time::Instant::now();
    while !gate.exists() && started.elapsed() < TEST_QUERY_GATE_WAIT_MAX {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reqlog::LogFilter;

    fn block_on<T>(rx: oneshot::Receiver<T>) -> Result<T, oneshot::Canceled> {
        let rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new().build();
        rt.expect("a runtime").block_on(rx)
    }

    #[test]
    fn queries_run_on_the_thread_and_a_failure_reopens_the_store() {
        let dir = crate::ledger::test_dir::TestDir::new("reader");
        let reader = LogReader::start(SinkKind::Sqlite, dir.path()).unwrap();
        let rx = reader
            .query(|store| {
                let name = std::thread::current().name().map(str::to_string);
                Ok((store.count()?, name))
            })
            .unwrap();
        assert_eq!(
            block_on(rx).unwrap(),
            Ok((0, Some("bursar-query".to_string())))
        );
        // An error is the caller's; the next query gets a fresh connection.
        let rx = reader
            .query(|_| Err::<(), _>(StoreError::Unavailable("gone".into())))
            .unwrap();
        assert_eq!(
            block_on(rx).unwrap(),
            Err(StoreError::Unavailable("gone".into()))
        );
        let rx = reader
            .query(|store| store.query_logs(&LogFilter::default()))
            .unwrap();
        assert_eq!(block_on(rx).unwrap().map(|rows| rows.len()), Ok(0));
    }

    #[test]
    fn a_full_queue_refuses_at_once() {
        let dir = crate::ledger::test_dir::TestDir::new("reader-full");
        let reader = LogReader::start(SinkKind::Sqlite, dir.path()).unwrap();
        // Hold the thread in one query until released.
        let (release, held) = crossbeam_channel::bounded::<()>(0);
        let (started_tx, started) = crossbeam_channel::bounded::<()>(1);
        let first = reader
            .query(move |_| {
                let _ = started_tx.send(());
                let _ = held.recv();
                Ok(())
            })
            .unwrap();
        started.recv().unwrap();
        let queued: Vec<_> = (0..LOG_QUERIES_QUEUED_MAX)
            .map(|_| reader.query(|store| store.count()).unwrap())
            .collect();
        assert_eq!(
            reader.query(|store| store.count()).err(),
            Some(QueryRefused::Busy)
        );
        drop(release);
        assert_eq!(block_on(first).unwrap(), Ok(()));
        for rx in queued {
            assert_eq!(block_on(rx).unwrap(), Ok(0));
        }
        assert!(reader.query(|store| store.count()).is_ok());
    }
}
