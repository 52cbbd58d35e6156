//! The dashboard at scale (issue 17): fills a request log with N rows and
//! times the dashboard's admin API calls against the real binary. Driven by
//! `scripts/bench/dashboard-scale`; two subcommands (after `--`):
//!
//! - `generate <sqlite:STATE_DIR | postgres:URL> <ROWS> <NOW_MS>`: N rows
//!   spread evenly over the 30 days before NOW_MS, in time order, written
//!   with the library's own `LogStore::insert_batch` in batches of
//!   `LOG_BATCH_ROWS_DEFAULT` rows (the writer's default batch), so the
//!   rollups are built exactly as the writer builds them. Cardinality:
//!   [`KEYS`] keys in [`TEAMS`] teams in [`CUSTOMERS`] customers (hot keys
//!   get more traffic), 8 models of 3 providers (a key mostly uses its own
//!   model), tags `env` (3 values), `feature` (12) and `user` (50,000,
//!   skewed), ~5% errors, ~10% cache hits. Prints the time taken and the
//!   insert's CPU time per row (this thread; for PostgreSQL the server's
//!   work is not in it).
//! - `calls <ADMIN_ADDR> <TOKEN> <CALLS_FILE> <NOW_MS> <RUNS>`: each line of
//!   CALLS_FILE (an admin path and query; `#` comments) is requested RUNS
//!   times over HTTP with placeholders filled per run ([`fill`]) and its
//!   p50/p95/max printed as a markdown table. A line starting `page3 ` is
//!   requested three times following the `next` cursor, and the third page
//!   timed.

use std::borrow::Cow;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use bursar::reqlog::{
    rollup_closed_to as closed_to, CacheStatus, LogRow, LogStore, LOG_BATCH_ROWS_DEFAULT,
};

const KEYS: u64 = 2_000;
const TEAMS: u64 = 50;
const CUSTOMERS: u64 = 10;
const USERS: u64 = 50_000;
const DAYS: i64 = 30;
const DAY_MS: i64 = 86_400_000;
const MODELS: [(&str, &str); 8] = [
    ("openai", "gpt-4o"),
    ("openai", "gpt-4o-mini"),
    ("openai", "o3-mini"),
    ("anthropic", "claude-sonnet-4"),
    ("anthropic", "claude-haiku-4"),
    ("anthropic", "claude-opus-4"),
    ("google", "gemini-2.5-flash"),
    ("google", "gemini-2.5-pro"),
];
const FEATURES: [&str; 12] = [
    "search",
    "chat",
    "summary",
    "extract",
    "classify",
    "translate",
    "code",
    "agent",
    "rerank",
    "qa",
    "draft",
    "review",
];

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    /// Skewed towards 0: the square of a uniform draw.
    fn skewed(&mut self, n: u64) -> u64 {
        let u = (self.next() >> 11) as f64 / (1u64 << 53) as f64;
        ((u * u) * n as f64) as u64 % n
    }
}

fn key_name(k: u64) -> String {
    format!("key-{k:04}")
}
fn team_of(k: u64) -> u64 {
    k % TEAMS
}
fn customer_of(t: u64) -> u64 {
    t % CUSTOMERS
}

struct Names {
    keys: Vec<std::sync::Arc<str>>,
    teams: Vec<std::sync::Arc<str>>,
    customers: Vec<std::sync::Arc<str>>,
    providers: Vec<std::sync::Arc<str>>,
    price: std::sync::Arc<str>,
}

fn row(rng: &mut Rng, names: &Names, i: u64, time_ms: i64) -> LogRow {
    let k = rng.skewed(KEYS);
    let t = team_of(k);
    let m = if rng.below(10) < 8 {
        (k % MODELS.len() as u64) as usize
    } else {
        rng.below(MODELS.len() as u64) as usize
    };
    let (provider, model) = MODELS[m];
    let status = match rng.below(100) {
        0..=1 => 429,
        2 => 500,
        3 => 502,
        4 => 400,
        _ => 200,
    };
    let cache = match rng.below(100) {
        0..=6 if status == 200 => CacheStatus::Hit,
        7..=9 if status == 200 => CacheStatus::SemanticHit,
        _ => CacheStatus::Miss,
    };
    let prompt = 50 + rng.below(4_000);
    let completion = if status == 200 {
        10 + rng.below(1_000)
    } else {
        0
    };
    let price = (prompt * 2_500 + completion * 10_000) as i128 * 1_000 * (1 + m as i128 % 4);
    let hit = matches!(cache, CacheStatus::Hit | CacheStatus::SemanticHit);
    let mut tags = Vec::new();
    if rng.below(10) < 9 {
        tags.push((
            "env".to_string(),
            ["prod", "prod", "prod", "staging", "dev"][rng.below(5) as usize].to_string(),
        ));
    }
    if rng.below(10) < 6 {
        tags.push((
            "feature".to_string(),
            FEATURES[rng.skewed(FEATURES.len() as u64) as usize].to_string(),
        ));
    }
    if rng.below(10) < 4 {
        tags.push(("user".to_string(), format!("u{}", rng.skewed(USERS))));
    }
    tags.sort();
    let provider_name = names
        .providers
        .iter()
        .find(|p| p.as_ref() == provider)
        .cloned()
        .unwrap_or_else(|| provider.into());
    LogRow {
        id: format!("req_{i:012x}{:016x}", rng.next()),
        time_ms,
        key: names.keys[k as usize].clone(),
        team: Some(names.teams[t as usize].clone()),
        customer: if k.is_multiple_of(7) {
            None
        } else {
            Some(names.customers[customer_of(t) as usize].clone())
        },
        provider: provider_name,
        model: model.to_string(),
        endpoint: Cow::Borrowed("chat/completions"),
        status,
        prompt_tokens: prompt,
        completion_tokens: completion,
        cached_tokens: 0,
        cache_write_tokens: 0,
        reasoning_tokens: 0,
        cost_picodollars: if hit { 0 } else { price },
        avoided_picodollars: if hit { price } else { 0 },
        price_version: names.price.clone(),
        estimated: false,
        ttfb_us: Some(200_000 + rng.below(800_000)),
        total_us: 400_000 + rng.below(4_000_000),
        cache_status: cache,
        stream: rng.below(2) == 0,
        tags,
        prompt_text: None,
        completion_text: None,
    }
}

/// CPU time of the calling thread.
fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into the one we own.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

fn generate(target: &str, rows: u64, now_ms: i64, span_ms: i64) {
    let mut store = open(target);
    let names = Names {
        keys: (0..KEYS).map(|k| key_name(k).into()).collect(),
        teams: (0..TEAMS).map(|t| format!("team-{t:02}").into()).collect(),
        customers: (0..CUSTOMERS)
            .map(|c| format!("customer-{c}").into())
            .collect(),
        providers: vec!["openai".into(), "anthropic".into(), "google".into()],
        price: "2026-11-01".into(),
    };
    let start_ms = now_ms - span_ms;
    let span = span_ms as u64;
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let wall = Instant::now();
    let mut cpu = Duration::ZERO;
    let mut build_cpu = Duration::ZERO;
    let mut batch = Vec::with_capacity(LOG_BATCH_ROWS_DEFAULT);
    let mut i = 0;
    let mut reported = Instant::now();
    while i < rows {
        batch.clear();
        while batch.len() < LOG_BATCH_ROWS_DEFAULT && i < rows {
            // Evenly spread, in time order, with sub-step jitter.
            let t = start_ms + (i as u128 * span as u128 / rows as u128) as i64;
            batch.push(row(&mut rng, &names, i, t));
            i += 1;
        }
        let c0 = thread_cpu();
        store
            .insert_batch(&batch, &mut || {})
            .expect("insert_batch");
        let c1 = thread_cpu();
        cpu += c1 - c0;
        // As the writer does between batches, with the rows' clock: the
        // minutes closed by the newest row are summed into the rollups.
        let newest = batch.last().map_or(start_ms, |r| r.time_ms);
        while store.roll_up(closed_to(newest)).expect("roll_up") {}
        build_cpu += thread_cpu() - c1;
        if reported.elapsed() > Duration::from_secs(30) {
            eprintln!(
                "{i} rows, {:.0} s, {:.2} + {:.2} µs CPU per row so far",
                wall.elapsed().as_secs_f64(),
                cpu.as_secs_f64() * 1e6 / i as f64,
                build_cpu.as_secs_f64() * 1e6 / i as f64
            );
            reported = Instant::now();
        }
    }
    let c1 = thread_cpu();
    while store.roll_up(closed_to(now_ms)).expect("roll_up") {}
    build_cpu += thread_cpu() - c1;
    let secs = wall.elapsed().as_secs_f64();
    println!(
        "generated {rows} rows in {secs:.0} s ({:.0} rows/s); CPU of this thread per row: \
         insert_batch {:.2} µs, rollup builds {:.2} µs (the server's own work not in either)",
        rows as f64 / secs,
        cpu.as_secs_f64() * 1e6 / rows as f64,
        build_cpu.as_secs_f64() * 1e6 / rows as f64
    );
}

/// Fills a call's placeholders: times (unix ms) relative to `now` (moved back
/// a random amount up to an hour per run, so ranges rarely align), and a
/// random key, team, customer, model, provider or user.
fn fill(line: &str, now_ms: i64, rng: &mut Rng, ids: &[String]) -> String {
    let now = now_ms - rng.below(3_600_000) as i64;
    let id = if ids.is_empty() {
        "req_none".to_string()
    } else {
        ids[rng.below(ids.len() as u64) as usize].clone()
    };
    let day_start = now - now.rem_euclid(DAY_MS);
    let k = rng.skewed(KEYS);
    let t = team_of(k);
    let (provider, model) = MODELS[rng.below(MODELS.len() as u64) as usize];
    let subs: [(&str, String); 15] = [
        ("{id}", id),
        ("{now}", now.to_string()),
        ("{day_start}", day_start.to_string()),
        ("{h2_ago}", (now - 2 * 3_600_000).to_string()),
        ("{day_ago}", (now - DAY_MS).to_string()),
        ("{week_ago}", (now - 7 * DAY_MS).to_string()),
        ("{month_ago}", (now - 30 * DAY_MS).to_string()),
        ("{key}", key_name(k)),
        ("{team}", format!("team-{t:02}")),
        ("{customer}", format!("customer-{}", customer_of(t))),
        ("{model}", model.to_string()),
        ("{provider}", provider.to_string()),
        ("{user}", format!("u{}", rng.skewed(USERS))),
        ("{feature}", FEATURES[rng.below(12) as usize].to_string()),
        (
            "{status}",
            ["429", "500", "502", "400"][rng.below(4) as usize].to_string(),
        ),
    ];
    let mut out = line.to_string();
    for (p, v) in subs {
        out = out.replace(p, &v);
    }
    out
}

/// One GET; returns the status and the body.
fn get(addr: &str, token: &str, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).expect("connect to the admin listener");
    s.set_read_timeout(Some(Duration::from_secs(60))).ok();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
    )
    .expect("send");
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).expect("read");
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

fn next_cursor(body: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(body.trim()).ok()?;
    v.get("next")?.as_str().map(str::to_string)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

fn calls(addr: &str, token: &str, file: &str, now_ms: i64, runs: usize) {
    let text = std::fs::read_to_string(file).expect("calls file");
    let mut rng = Rng(0x1234_5678_9abc_def1);
    // Request ids for `{id}`: the newest page's.
    let (_, body) = get(addr, token, "/admin/logs?limit=100");
    let ids: Vec<String> = serde_json::from_str::<serde_json::Value>(body.trim())
        .ok()
        .and_then(|v| {
            v.get("data")?.as_array().map(|rows| {
                rows.iter()
                    .filter_map(|r| r.get("id")?.as_str().map(str::to_string))
                    .collect()
            })
        })
        .unwrap_or_default();
    println!("| call | runs | p50 ms | p95 ms | max ms | statuses | rows (median) |");
    println!("|---|---|---|---|---|---|---|");
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (page3, template) = match line.strip_prefix("page3 ") {
            Some(rest) => (true, rest.trim()),
            None => (false, line),
        };
        let mut times = Vec::with_capacity(runs);
        let mut statuses = std::collections::BTreeMap::<u16, usize>::new();
        let mut counts = Vec::new();
        for _ in 0..runs {
            let mut path = fill(template, now_ms, &mut rng, &ids);
            if page3 {
                for _ in 0..2 {
                    let (_, body) = get(addr, token, &path);
                    let Some(next) = next_cursor(&body) else {
                        break;
                    };
                    let sep = if path.contains('?') { '&' } else { '?' };
                    let base = path.split("&before=").next().unwrap_or(&path).to_string();
                    path = format!("{base}{sep}before={next}");
                }
            }
            let t0 = Instant::now();
            let (status, body) = get(addr, token, &path);
            times.push(t0.elapsed());
            *statuses.entry(status).or_default() += 1;
            let n = serde_json::from_str::<serde_json::Value>(body.trim())
                .ok()
                .and_then(|v| v.get("data").and_then(|d| d.as_array().map(Vec::len)))
                .unwrap_or(0);
            counts.push(n);
            if status != 200 && statuses[&status] == 1 {
                eprintln!(
                    "{template}: {status} {}",
                    body.chars().take(300).collect::<String>()
                );
            }
        }
        times.sort();
        counts.sort();
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        let st: Vec<String> = statuses.iter().map(|(s, n)| format!("{s}×{n}")).collect();
        println!(
            "| `{line}` | {runs} | {:.1} | {:.1} | {:.1} | {} | {} |",
            ms(percentile(&times, 0.5)),
            ms(percentile(&times, 0.95)),
            ms(*times.last().unwrap_or(&Duration::ZERO)),
            st.join(" "),
            counts[counts.len() / 2]
        );
    }
}

/// The catalog of the generated log as bursar TOML: every customer, team and
/// key of the rows, each with a budget (the Budgets page lists them all).
fn catalog() {
    let mut out = String::new();
    for c in 0..CUSTOMERS {
        out.push_str(&format!(
            "[[customers]]\nname = \"customer-{c}\"\n\
             budget = {{ limit_usd = \"20000\", reset = \"1M\" }}\n"
        ));
    }
    for t in 0..TEAMS {
        out.push_str(&format!(
            "[[teams]]\nname = \"team-{t:02}\"\ncustomer = \"customer-{}\"\n\
             budget = {{ limit_usd = \"2000\", reset = \"1M\" }}\n",
            customer_of(t)
        ));
    }
    for k in 0..KEYS {
        out.push_str(&format!(
            "[[virtual_keys]]\nname = \"{}\"\nteam = \"team-{:02}\"\nkey = \"sk-bench-{k:04}\"\n\
             budget = {{ limit_usd = \"{}\", reset = \"1d\" }}\n",
            key_name(k),
            team_of(k),
            5 + k % 50
        ));
    }
    print!("{out}");
}

fn open(target: &str) -> Box<dyn LogStore> {
    if let Some(dir) = target.strip_prefix("sqlite:") {
        std::fs::create_dir_all(dir).expect("state dir");
        Box::new(
            bursar::reqlog::sqlite::SqliteStore::open(
                &std::path::Path::new(dir).join(bursar::reqlog::LOG_SQLITE_FILE),
            )
            .expect("open SQLite"),
        )
    } else if let Some(url) = target.strip_prefix("postgres:") {
        Box::new(bursar::reqlog::postgres::PostgresStore::connect(url).expect("connect"))
    } else {
        panic!("target: sqlite:<dir> or postgres:<url>");
    }
}

/// `LogStore::query_log_page` in process (what `/admin/logs` will call):
/// each of the Requests page's filters, RUNS times, page 1 and page 3.
fn pages(target: &str, now_ms: i64, runs: usize) {
    use bursar::reqlog::{LogFilter, LogPage};
    let mut store = open(target);
    let mut rng = Rng(0x0dd_ba11);
    type Make = fn(&mut Rng, i64) -> LogFilter;
    let cases: [(&str, Make); 9] = [
        ("unfiltered", |_, _| LogFilter {
            limit: 50,
            ..LogFilter::default()
        }),
        ("key", |r, _| LogFilter {
            key: Some(key_name(r.skewed(KEYS))),
            limit: 50,
            ..LogFilter::default()
        }),
        ("team", |r, _| LogFilter {
            team: Some(format!("team-{:02}", r.below(TEAMS))),
            limit: 50,
            ..LogFilter::default()
        }),
        ("model", |r, _| LogFilter {
            model: Some(MODELS[r.below(8) as usize].1.to_string()),
            limit: 50,
            ..LogFilter::default()
        }),
        ("status", |r, _| LogFilter {
            status: Some([429, 500, 502, 400, 404][r.below(5) as usize]),
            limit: 50,
            ..LogFilter::default()
        }),
        ("tag feature", |r, _| LogFilter {
            tag: Some(("feature".into(), FEATURES[r.below(12) as usize].into())),
            limit: 50,
            ..LogFilter::default()
        }),
        ("tag user (rare)", |r, _| LogFilter {
            tag: Some(("user".into(), format!("u{}", r.skewed(USERS)))),
            limit: 50,
            ..LogFilter::default()
        }),
        ("last 24 h", |r, now| LogFilter {
            from_ms: Some(now - DAY_MS - r.below(3_600_000) as i64),
            to_ms: Some(now),
            limit: 50,
            ..LogFilter::default()
        }),
        ("model, 3rd page", |r, _| LogFilter {
            model: Some(MODELS[r.below(8) as usize].1.to_string()),
            limit: 50,
            ..LogFilter::default()
        }),
    ];
    println!("| query_log_page (in process) | runs | p50 ms | p95 ms | max ms | rows (median) | pages stopped at the scan bound |");
    println!("|---|---|---|---|---|---|---|");
    for (name, make) in cases {
        let mut times = Vec::new();
        let mut counts = Vec::new();
        let mut bounded = 0;
        for _ in 0..runs {
            let mut f = make(&mut rng, now_ms);
            if name.ends_with("3rd page") {
                for _ in 0..2 {
                    let p: LogPage = store.query_log_page(&f).expect("page");
                    f.before = p.next;
                }
            }
            let t0 = Instant::now();
            let p = store.query_log_page(&f).expect("page");
            times.push(t0.elapsed());
            counts.push(p.rows.len());
            bounded += usize::from(p.scan_bounded);
        }
        times.sort();
        counts.sort();
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        println!(
            "| {name} | {runs} | {:.1} | {:.1} | {:.1} | {} | {bounded} |",
            ms(percentile(&times, 0.5)),
            ms(percentile(&times, 0.95)),
            ms(*times.last().unwrap_or(&Duration::ZERO)),
            counts[counts.len() / 2]
        );
    }
}

fn main() {
    // cargo bench passes `--bench`; the subcommand follows it.
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    match args.first().map(String::as_str) {
        Some("generate") if args.len() == 4 => generate(
            &args[1],
            args[2].parse().expect("rows"),
            args[3].parse().expect("now ms"),
            DAYS * DAY_MS,
        ),
        // The writer's cost at a steady rate: ROWS rows at RATE a second
        // (the same keys, models and tags), ending now.
        Some("writer") if args.len() == 4 => {
            let rows: u64 = args[2].parse().expect("rows");
            let rate: u64 = args[3].parse().expect("rows per second");
            let now_ms = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .expect("clock")
                .as_millis() as i64;
            generate(&args[1], rows, now_ms, (rows * 1000 / rate.max(1)) as i64)
        }
        Some("catalog") => catalog(),
        Some("pages") if args.len() == 4 => pages(
            &args[1],
            args[2].parse().expect("now ms"),
            args[3].parse().expect("runs"),
        ),
        Some("calls") if args.len() == 6 => calls(
            &args[1],
            &args[2],
            &args[3],
            args[4].parse().expect("now ms"),
            args[5].parse().expect("runs"),
        ),
        _ => eprintln!(
            "usage: log_scale generate <sqlite:DIR|postgres:URL> <ROWS> <NOW_MS>\n       \
             log_scale pages <sqlite:DIR|postgres:URL> <NOW_MS> <RUNS>\n       \
             log_scale catalog\n       \
             log_scale writer <sqlite:DIR|postgres:URL> <ROWS> <ROWS_PER_SECOND>\n       \
             log_scale calls <ADMIN_ADDR> <TOKEN> <CALLS_FILE> <NOW_MS> <RUNS>\n\
             (run through scripts/bench/dashboard-scale)"
        ),
    }
}
