//! Integration test of `bursar-load flood`: the real binary against a small
//! HTTP/1.1 server written here (std threads, one per connection) that answers
//! complete requests, ends one idle connection, and cuts every slowloris with a
//! 408 after SLOW_CUT_AFTER.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_bursar-load");

/// How long the server lets a request head stay incomplete before its 408.
const SLOW_CUT_AFTER: Duration = Duration::from_millis(300);

/// Serves one connection. Complete requests (the idle connections') get, by
/// arrival order: 0 a 429 with a content-length body, 1 a chunked 200 and
/// then the close, the others a chunked or content-length 200; then the
/// connection is held until the client closes it. An incomplete head gets a
/// 408 after SLOW_CUT_AFTER, then a graceful close.
fn serve(mut s: TcpStream, idle_seq: &AtomicU64) {
    let start = Instant::now();
    let _ = s.set_read_timeout(Some(Duration::from_millis(20)));
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return,
        }
        if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&got[..end]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            if got.len() >= end + 4 + len {
                break;
            }
        } else if start.elapsed() >= SLOW_CUT_AFTER {
            let _ = s.write_all(
                b"HTTP/1.1 408 Request Timeout\r\nconnection: close\r\ncontent-length: 0\r\n\r\n",
            );
            let _ = s.shutdown(Shutdown::Write);
            let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
            while matches!(s.read(&mut buf), Ok(1..)) {}
            return;
        }
    }
    let seq = idle_seq.fetch_add(1, Ordering::SeqCst);
    let reply: &[u8] = match seq {
        0 => b"HTTP/1.1 429 Too Many Requests\r\ncontent-length: 2\r\n\r\n{}",
        _ if seq % 2 == 1 => {
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3;x=y\r\n{\"a\r\n2\r\n\"}\r\n0\r\n\r\n"
        }
        _ => b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}",
    };
    if s.write_all(reply).is_err() {
        return;
    }
    if seq == 1 {
        return; // the server ends this idle connection
    }
    let _ = s.set_read_timeout(None);
    while matches!(s.read(&mut buf), Ok(1..)) {}
}

#[test]
fn flood_counts_idle_and_slowloris_connections() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let idle_seq = Arc::new(AtomicU64::new(0));
    std::thread::spawn(move || {
        for s in listener.incoming().flatten() {
            let idle_seq = idle_seq.clone();
            std::thread::spawn(move || serve(s, &idle_seq));
        }
    });
    let dir = std::env::temp_dir().join(format!("bursar-flood-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ready = dir.join("ready");
    let out = Command::new(BIN)
        .args(["flood", "--port", &port.to_string(), "--key", "sk-test"])
        .args(["--idle", "6", "--slow", "3", "--interval", "0.05"])
        .args(["--open-concurrency", "2", "--duration", "1.5", "--ready"])
        .arg(&ready)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("floods: 6 idle in "),
        "progress line: {stderr}"
    );
    assert_eq!(std::fs::read_to_string(&ready).unwrap(), "6 idle, 3 slow\n");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let v: Value = serde_json::from_str(stdout.trim()).unwrap();
    let keys: Vec<&str> = v.as_object().unwrap().keys().map(|k| k.as_str()).collect();
    let mut want = vec![
        "idle_opened",
        "idle_failed",
        "idle_bad_status",
        "idle_closed_by_server",
        "idle_open_at_stop",
        "slow_opened",
        "slow_failed",
        "slow_bytes_sent",
        "slow_cut",
        "slow_cut_with_408",
        "slow_cut_after_s_min",
        "slow_cut_after_s_median",
        "slow_cut_after_s_max",
    ];
    let mut keys_sorted = keys.clone();
    keys_sorted.sort_unstable();
    want.sort_unstable();
    assert_eq!(keys_sorted, want, "{stdout}");
    let n = |k: &str| v[k].as_u64().unwrap_or_else(|| panic!("{k}: {stdout}"));
    assert_eq!(n("idle_opened"), 6, "{stdout}");
    assert_eq!(n("idle_failed"), 0, "{stdout}");
    assert_eq!(n("idle_bad_status"), 1, "{stdout}");
    assert_eq!(n("idle_closed_by_server"), 1, "{stdout}");
    assert_eq!(n("idle_open_at_stop"), 5, "{stdout}");
    assert_eq!(n("slow_failed"), 0, "{stdout}");
    // Each slowloris is cut after ~0.3 s and replaced; the run holds them ~1.6 s.
    assert!(n("slow_cut") >= 3, "{stdout}");
    // Every cut one was replaced: at the stop, at most the 3 slots are open.
    assert!(
        n("slow_opened") >= n("slow_cut") && n("slow_opened") <= n("slow_cut") + 3,
        "{stdout}"
    );
    assert_eq!(n("slow_cut_with_408"), n("slow_cut"), "{stdout}");
    assert!(n("slow_bytes_sent") >= 3 * 5, "{stdout}");
    let s = |k: &str| v[k].as_f64().unwrap_or_else(|| panic!("{k}: {stdout}"));
    let (min, med, max) = (
        s("slow_cut_after_s_min"),
        s("slow_cut_after_s_median"),
        s("slow_cut_after_s_max"),
    );
    assert!(
        min >= 0.25 && min <= med && med <= max && max < 1.5,
        "{stdout}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn flood_refuses_bad_flags() {
    for args in [
        &["flood", "--port", "0"][..],
        &["flood", "--port", "1", "--interval", "0"],
        &["flood", "--port", "1", "--duration", "-1"],
        &["flood", "--port", "1", "--open-concurrency", "0"],
        &["flood", "--port", "1", "--key", "a b"],
        &["flood", "--port", "1", "--ready", "/nonexistent-dir/ready"],
    ] {
        let out = Command::new(BIN).args(args).output().unwrap();
        assert!(!out.status.success(), "{args:?} was accepted");
    }
}
