//! Sustained rows per second through the request log writer, into SQLite and
//! into PostgreSQL. Run: `cargo bench --bench reqlog`.
//!
//! One iteration sends [`ROWS_PER_ITERATION`] rows through `LogSender::try_log`
//! (as workers would; the sender waits whenever the queue is nearly full, so
//! nothing is dropped) and waits until the writer reports them all stored.
//! Throughput is rows per second end to end: queue, batching, the sink's
//! transaction and indexes. The store grows across iterations (the SQLite
//! file and the PostgreSQL database start empty), as a real log does.
//! Rows are realistic: two tags, no text (`store_text` is off by default).
//! With `BURSAR_BENCH_REQLOG_TAGS=0` in the environment the rows carry no
//! tags instead (the bench's names stay the same; its report says which).
//! PostgreSQL is skipped when 127.0.0.1:5432 does not answer.
//!
//! On a shared machine the wall-clock rate mostly measures contention, so
//! each sink also reports the CPU time the `bursar-log` thread (and, for
//! PostgreSQL, the server backend serving it) spent per row, from
//! /proc, and the rows per second that makes on one dedicated core.

use std::borrow::Cow;
use std::time::{Duration, Instant};

use bursar::reqlog::{
    CacheStatus, LogConfig, LogRow, LogSender, LogWriter, SinkKind, LOG_QUEUE_MAX,
};
use criterion::{Criterion, Throughput};

const ROWS_PER_ITERATION: u64 = 50_000;
/// The sender pauses while the queue holds more than this.
const QUEUE_HIGH_WATER: usize = LOG_QUEUE_MAX - 4096;
const PG_SERVER: &str = "postgres://postgres@127.0.0.1:5432";

/// Whether rows carry their two tags (`BURSAR_BENCH_REQLOG_TAGS=0`: none).
fn with_tags() -> bool {
    std::env::var("BURSAR_BENCH_REQLOG_TAGS").map_or(true, |v| v != "0")
}

fn row(n: u64, tags: bool) -> LogRow {
    LogRow {
        id: format!("req_{n:028x}"),
        time_ms: 1_795_737_600_000 + (n / 100) as i64,
        key: ["k-search", "k-chat", "k-batch"][(n % 3) as usize].into(),
        team: Some("search".into()),
        customer: if n.is_multiple_of(2) {
            Some("acme".into())
        } else {
            None
        },
        provider: "openai".into(),
        model: ["gpt-4o-mini", "gpt-4o"][(n % 2) as usize].into(),
        endpoint: Cow::Borrowed("chat/completions"),
        status: 200,
        prompt_tokens: 900 + n % 200,
        completion_tokens: 150 + n % 50,
        cached_tokens: 0,
        cache_write_tokens: 0,
        reasoning_tokens: 0,
        cost_picodollars: 225_000_000 + (n % 1000) as i128 * 600_000,
        avoided_picodollars: 0,
        price_version: "2026-11-01".into(),
        estimated: false,
        ttfb_us: Some(180_000),
        total_us: 1_400_000,
        cache_status: CacheStatus::Miss,
        stream: true,
        tags: if tags {
            vec![
                ("env".into(), "prod".into()),
                (
                    "feature".into(),
                    ["search", "chat", "summary"][(n % 3) as usize].into(),
                ),
            ]
        } else {
            Vec::new()
        },
        prompt_text: None,
        completion_text: None,
    }
}

/// Sends `count` fresh rows and waits until the writer has stored them.
fn send_and_wait(sender: &LogSender, next_id: &mut u64, count: u64) -> Duration {
    let stored = |s: &LogSender| {
        let st = s.stats();
        st.rows_written + st.rows_duplicate
    };
    let before = stored(sender);
    let tags = with_tags();
    let start = Instant::now();
    for _ in 0..count {
        if next_id.is_multiple_of(1024) {
            while sender.stats().queue_depth as usize > QUEUE_HIGH_WATER {
                std::thread::yield_now();
            }
        }
        assert!(sender.try_log(row(*next_id, tags)), "queue full");
        *next_id += 1;
    }
    while stored(sender) < before + count {
        std::thread::sleep(Duration::from_micros(200));
    }
    let elapsed = start.elapsed();
    let s = sender.stats();
    assert_eq!((s.rows_dropped, s.rows_spilled), (0, 0), "{s:?}");
    elapsed
}

/// utime + stime of a /proc `stat` file, in seconds.
fn cpu_seconds(stat_path: &str) -> Option<f64> {
    let text = std::fs::read_to_string(stat_path).ok()?;
    // Fields after the ")" that closes the command name: state is field 3,
    // utime and stime are fields 14 and 15.
    let rest = &text[text.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Some(ticks / hz)
}

/// The /proc stat path of this process's `bursar-log` thread (which names
/// itself once it runs, so look for a moment).
fn writer_thread_stat() -> String {
    for _ in 0..1000 {
        for entry in std::fs::read_dir("/proc/self/task").unwrap() {
            let path = entry.unwrap().path();
            let comm = std::fs::read_to_string(path.join("comm")).unwrap_or_default();
            if comm.trim() == "bursar-log" {
                return path.join("stat").display().to_string();
            }
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    panic!("no bursar-log thread");
}

fn bench_sink(
    c: &mut Criterion,
    name: &str,
    cfg: &LogConfig,
    dir: &std::path::Path,
    server_stat: impl Fn() -> Option<String>,
) {
    let (handle, sender) = LogWriter::start(cfg, dir).unwrap();
    let writer_stat = writer_thread_stat();
    let cpu = || {
        let writer = cpu_seconds(&writer_stat).unwrap_or(0.0);
        let server = server_stat().and_then(|p| cpu_seconds(&p)).unwrap_or(0.0);
        (writer, server)
    };
    let (writer0, server0) = cpu();
    let rows0 = sender.stats().rows_written;
    let mut next_id = 0;
    let mut g = c.benchmark_group("reqlog");
    g.throughput(Throughput::Elements(ROWS_PER_ITERATION));
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(30));
    g.bench_function(format!("writer_rows/{name}"), |b| {
        b.iter_custom(|iters| {
            (0..iters)
                .map(|_| send_and_wait(&sender, &mut next_id, ROWS_PER_ITERATION))
                .sum()
        })
    });
    g.finish();
    let (writer1, server1) = cpu();
    let rows = (sender.stats().rows_written - rows0) as f64;
    if rows == 0.0 {
        // Filtered out on the command line.
        return;
    }
    let per_row_us = |seconds: f64| seconds / rows * 1e6;
    let (writer_us, server_us) = (per_row_us(writer1 - writer0), per_row_us(server1 - server0));
    let tags = if with_tags() { "two tags" } else { "no tags" };
    eprintln!(
        "reqlog {name}: {rows} rows ({tags}); CPU per row: writer thread {writer_us:.2} us, \
         server backend {server_us:.2} us; rows/s on one dedicated core: writer {:.0}",
        1e6 / writer_us
    );
    let stats = handle.shutdown();
    eprintln!("reqlog {name}: {stats:?}");
}

fn temp_dir(name: &str) -> std::path::PathBuf {
    let dir =
        std::env::temp_dir().join(format!("bursar-bench-reqlog-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn sqlite(c: &mut Criterion) {
    let dir = temp_dir("sqlite");
    bench_sink(c, "sqlite", &LogConfig::default(), &dir, || None);
    let _ = std::fs::remove_dir_all(&dir);
}

fn postgres(c: &mut Criterion) {
    let admin_url = format!("{PG_SERVER}/postgres");
    let mut admin = match postgres::Client::connect(&admin_url, postgres::NoTls) {
        Ok(client) => client,
        Err(e) => {
            eprintln!("reqlog postgres: skipped, {PG_SERVER} does not answer ({e})");
            return;
        }
    };
    let db = format!("bursar_bench_{}", std::process::id());
    // One statement per call: neither may run inside a transaction block.
    admin
        .batch_execute(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"))
        .unwrap();
    admin
        .batch_execute(&format!("CREATE DATABASE {db}"))
        .unwrap();
    let dir = temp_dir("postgres");
    let cfg = LogConfig {
        sink: SinkKind::Postgres {
            url: format!("{PG_SERVER}/{db}"),
        },
        ..LogConfig::default()
    };
    // The backend serving the writer's session, found by its application name.
    let server_stat = || {
        let mut admin = postgres::Client::connect(&admin_url, postgres::NoTls).ok()?;
        let row = admin
            .query_opt(
                "SELECT pid FROM pg_stat_activity WHERE application_name = 'bursar-log' \
                 AND datname = $1",
                &[&db],
            )
            .ok()??;
        let pid: i32 = row.get(0);
        Some(format!("/proc/{pid}/stat"))
    };
    bench_sink(c, "postgres", &cfg, &dir, server_stat);
    let _ = admin.batch_execute(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"));
    let _ = std::fs::remove_dir_all(&dir);
}

criterion::criterion_group!(group, sqlite, postgres);
criterion::criterion_main!(group);
