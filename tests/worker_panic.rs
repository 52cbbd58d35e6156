//! A panic on a worker ends the process (docs/decisions/0008): the real
//! binary, started with the debug builds' panic trigger, must exit non-zero
//! promptly instead of staying up a worker short, and a restart on the same
//! state directory must hold every charge a client saw before the panic.
//!
//! Debug builds only: release builds contain no trigger (and abort on any
//! panic by themselves, `panic = "abort"`).
#![cfg(debug_assertions)]

mod util;

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use util::{pico, proxy_config, Client, Gateway, TempDir};

const ADMIN: &str = "admin-secret";
/// The trigger (`BURSAR_DEBUG_PANIC_AT_CONNECTION`, src/runtime.rs).
const TRIGGER_ENV: &str = "BURSAR_DEBUG_PANIC_AT_CONNECTION";
/// Worker 0 panics serving this accepted connection (one request each).
const PANIC_AT_CONNECTION: u32 = 25;
/// Client threads, each with at most one request in flight.
const CLIENTS: usize = 4;
/// Requests per client thread at most: far more than it takes worker 0 to
/// accept `PANIC_AT_CONNECTION` connections, so a trigger that never fires
/// ends the test instead of looping.
const REQUESTS_PER_CLIENT_MAX: usize = 400;
/// How long the process may take to exit once a request was cut: "promptly"
/// (an abort takes milliseconds; this leaves room for a loaded machine).
const EXIT_WITHIN: Duration = Duration::from_secs(10);

/// The in-process mock provider ("mock-model", $1 / $2 per million tokens).
const CHAT: &str =
    r#"{"model":"mock-model","max_tokens":5,"messages":[{"role":"user","content":"hello there"}]}"#;
const CHAT_STREAM: &str = r#"{"model":"mock-model","stream":true,"max_tokens":5,"messages":[{"role":"user","content":"hello there"}]}"#;

/// Two workers, a strict key budget (every charge is reserved out of a lease
/// and settled through a ring), and a 5 s journal interval, so the charges
/// of the run are still only in the settle rings when the process dies.
fn config() -> String {
    // The provider URL is never used: only the in-process mock is called.
    proxy_config(
        "http://127.0.0.1:9/v1",
        &format!(
            r#"
[admin]
token = "{ADMIN}"

[ledger]
fsync_interval = "5s"

[[virtual_keys]]
name = "strict"
key = "sk-strict"
allowed_models = ["mock-model"]
budget = {{ limit_usd = "10", reset = "1d" }}
"#
        ),
    )
}

/// Starts `bursar serve` like `util::Gateway::start`, with the trigger set
/// (or not); the thread returned echoes its stderr and returns all of it
/// once the process has exited.
fn spawn(
    dir: TempDir,
    config_path: PathBuf,
    panic_at: Option<u32>,
) -> (Gateway, std::thread::JoinHandle<String>) {
    let mut gw = Gateway::spawn_with(dir, config_path, &[], |cmd| {
        cmd.env_remove(TRIGGER_ENV).stderr(Stdio::piped());
        if let Some(n) = panic_at {
            cmd.env(TRIGGER_ENV, n.to_string());
        }
        // No core file from the abort: it would take seconds to write a debug
        // binary's memory and land in the state directory.
        // SAFETY: only setrlimit, async-signal-safe, between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                let none = libc::rlimit {
                    rlim_cur: 0,
                    rlim_max: 0,
                };
                if libc::setrlimit(libc::RLIMIT_CORE, &none) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    });
    let pipe = gw.child.stderr.take().unwrap();
    let stderr = std::thread::spawn(move || {
        let mut all = String::new();
        for line in BufReader::new(pipe).lines().map_while(Result::ok) {
            eprintln!("{line}");
            all.push_str(&line);
            all.push('\n');
        }
        all
    });
    (gw, stderr)
}

/// One request on a fresh connection (so each one is an accepted connection
/// the trigger counts): `Some(cost)` when the client saw the whole response
/// and its charge, `None` when the connection failed or was cut.
fn charged_request(addr: SocketAddr, body: &str) -> Option<i128> {
    let s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut c = Client {
        reader: BufReader::new(s),
        addr,
    };
    let bytes = util::format_request(
        "POST",
        "/v1/chat/completions",
        &[
            ("authorization", "Bearer sk-strict"),
            ("content-type", "application/json"),
        ],
        body.as_bytes(),
    );
    c.reader.get_mut().write_all(&bytes).ok()?;
    let r = c.read_response()?;
    assert_eq!(r.status, 200, "{}", r.text());
    // A stream cut before its trailers was not seen whole: not counted.
    r.cost_usd().map(pico)
}

fn spent(gw: &Gateway, name: &str) -> i128 {
    util::spent_at(gw, ADMIN, &format!("keys/{name}"))
}

#[test]
fn a_worker_panic_ends_the_process_and_the_restart_keeps_every_charge_seen() {
    let dir = TempDir::new("worker-panic");
    let config_path = dir.0.join("bursar.toml");
    std::fs::write(&config_path, config()).unwrap();
    let (mut gw, stderr) = spawn(dir, config_path, Some(PANIC_AT_CONNECTION));

    // Clients send charged requests (plain and streamed), one per
    // connection, until one is cut: worker 0's panic.
    let seen = Arc::new(Mutex::new(Vec::<i128>::new()));
    let cut = Arc::new(AtomicBool::new(false));
    let cut_at = Arc::new(Mutex::new(None::<Instant>));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|t| {
            let (seen, cut, cut_at) = (Arc::clone(&seen), Arc::clone(&cut), Arc::clone(&cut_at));
            let addr = gw.addr;
            std::thread::spawn(move || {
                let body = if t % 2 == 0 { CHAT } else { CHAT_STREAM };
                for _ in 0..REQUESTS_PER_CLIENT_MAX {
                    if cut.load(Ordering::SeqCst) {
                        return;
                    }
                    match charged_request(addr, body) {
                        Some(cost) => seen.lock().unwrap().push(cost),
                        None => {
                            cut_at.lock().unwrap().get_or_insert_with(Instant::now);
                            cut.store(true, Ordering::SeqCst);
                            return;
                        }
                    }
                }
            })
        })
        .collect();
    for c in clients {
        c.join().unwrap();
    }
    let cut_at = cut_at.lock().unwrap().unwrap_or_else(|| {
        panic!(
            "no request failed in {} requests: the trigger never fired",
            CLIENTS * REQUESTS_PER_CLIENT_MAX
        )
    });
    let seen = std::mem::take(&mut *seen.lock().unwrap());
    // Worker 0 had accepted PANIC_AT_CONNECTION - 1 connections, all but
    // the other clients' requests in flight served, and the client read
    // each response whole (the server had read its request: the abort's
    // close is a FIN after the data, not a reset).
    assert!(
        seen.len() >= PANIC_AT_CONNECTION as usize - CLIENTS,
        "only {} requests seen before the cut",
        seen.len()
    );

    // The process exits, promptly and not successfully.
    let status = loop {
        if let Some(status) = gw.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            cut_at.elapsed() < EXIT_WITHIN,
            "bursar is still running {EXIT_WITHIN:?} after worker 0 panicked \
             (a worker short, its lease shard lost)"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let exited_after = cut_at.elapsed();
    assert!(!status.success(), "bursar exited {status:?} after a panic");
    assert_eq!(
        status.signal(),
        Some(libc::SIGABRT),
        "a panic aborts: {status:?}"
    );
    // What the panic logged names the thread and says why.
    let log = stderr.join().unwrap();
    assert!(
        log.contains("thread 'bursar-worker-0' panicked") && log.contains("aborting the process"),
        "the panic's log line is missing:\n{log}"
    );

    // Restarted on the same state directory (as systemd would), the books
    // hold every charge a client saw. The abort also cut requests in flight
    // on the other worker: each of those may have been settled before its
    // last bytes (as designed, so a charge a client saw survives), so the
    // books may hold up to one unseen charge per client, never a part of one.
    let dir = std::mem::replace(&mut gw.dir, TempDir(PathBuf::new()));
    let config_path = gw.config_path.clone();
    drop(gw);
    let (gw, _stderr) = spawn(dir, config_path, None);
    let seen_total: i128 = seen.iter().sum();
    let cost = seen[0];
    assert!(cost > 0);
    assert!(
        seen.iter().all(|&c| c == cost),
        "the mock's requests all cost the same: {seen:?}"
    );
    let booked = spent(&gw, "strict");
    assert!(
        booked >= seen_total,
        "lost charges: booked {booked} < seen {seen_total} ({} requests)",
        seen.len()
    );
    let extra = booked - seen_total;
    assert_eq!(extra % cost, 0, "a partial charge: {extra}");
    // In flight at the abort: the panicking connection's request (never
    // served, so never charged) and at most one per other client.
    assert!(
        extra / cost < CLIENTS as i128,
        "{} unseen charges, more than the requests in flight",
        extra / cost
    );
    eprintln!(
        "{} charges seen before the panic, exit {exited_after:?} after the cut, \
         {} settled but unseen; all in the books after the restart",
        seen.len(),
        extra / cost
    );

    // And the restarted gateway serves and charges again.
    let again: i128 = (0..8)
        .map(|_| charged_request(gw.addr, CHAT).expect("served after the restart"))
        .sum();
    assert_eq!(spent(&gw, "strict"), booked + again);
}
