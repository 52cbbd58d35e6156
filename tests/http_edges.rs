//! HTTP/1.1 edge cases against the real binary: every refusal has the right
//! status, an OpenAI-style body and an x-request-id, and nothing hangs.
//! These use the in-process mock provider ("mock-model"), so no upstream runs.

mod util;

use std::io::Write;
use std::time::{Duration, Instant};
use util::*;

const LIMITS: &str = r#"
[limits]
header_bytes_max = 4096
body_bytes_max = 65536
request_timeout = "1s"
idle_timeout = "3s"
"#;

const MOCK_CHAT: &str =
    r#"{"model":"mock-model","max_tokens":3,"messages":[{"role":"user","content":"hi"}]}"#;

fn gateway() -> Gateway {
    // The "local" provider points at a port nobody listens on.
    let down = format!("http://127.0.0.1:{}/v1", free_port());
    Gateway::start(&proxy_config(&down, LIMITS), &[])
}

fn assert_openai_error(r: &Response, status: u16) {
    assert_eq!(r.status, status, "{}", r.text());
    let v = r.json();
    assert!(
        v["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{v}"
    );
    assert!(v["error"]["type"].is_string(), "{v}");
    assert!(r
        .header("x-request-id")
        .is_some_and(|id| id.starts_with("req_")));
}

#[test]
fn every_framing_error_has_its_status_and_an_openai_body() {
    let gw = gateway();
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        ("garbage", b"GARBAGE\r\n\r\n".to_vec(), 400),
        ("bad version", b"GET /v1/models HTTP/2.0\r\nhost: a\r\n\r\n".to_vec(), 505),
        ("no length", b"POST /v1/chat/completions HTTP/1.1\r\nhost: a\r\n\r\n".to_vec(), 411),
        (
            "too large",
            b"POST /v1/chat/completions HTTP/1.1\r\nhost: a\r\ncontent-length: 70000\r\n\r\n".to_vec(),
            413,
        ),
        (
            "headers too large",
            format!("GET /v1/models HTTP/1.1\r\nhost: a\r\nx-big: {}\r\n\r\n", "a".repeat(5000)).into_bytes(),
            431,
        ),
        (
            "too many headers",
            format!(
                "GET /v1/models HTTP/1.1\r\nhost: a\r\n{}\r\n",
                (0..80).map(|i| format!("x-h{i}: v\r\n")).collect::<String>()
            )
            .into_bytes(),
            431,
        ),
        (
            "length and chunked (smuggling)",
            b"POST /v1/chat/completions HTTP/1.1\r\nhost: a\r\ncontent-length: 4\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n".to_vec(),
            400,
        ),
        (
            "invalid chunk size",
            b"POST /v1/chat/completions HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n".to_vec(),
            400,
        ),
        (
            "chunked body too large",
            format!(
                "POST /v1/chat/completions HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\n\r\n{:x}\r\n{}\r\n0\r\n\r\n",
                70000,
                "a".repeat(70000)
            )
            .into_bytes(),
            413,
        ),
        ("missing host", b"GET /v1/models HTTP/1.1\r\n\r\n".to_vec(), 400),
    ];
    for (name, bytes, status) in cases {
        let mut c = Client::connect(gw.addr);
        c.send_raw(&bytes);
        let r = c
            .read_response()
            .unwrap_or_else(|| panic!("{name}: no response"));
        assert_openai_error(&r, status);
        assert!(
            c.is_closed(),
            "{name}: the connection must close after a framing error"
        );
    }
}

#[test]
fn malformed_json_and_bad_bodies_are_400() {
    let gw = gateway();
    let mut c = Client::connect(gw.addr);
    for body in [
        "{",
        "[]",
        "not json",
        r#"{"messages":[]}"#,
        r#"{"model":42}"#,
        "",
    ] {
        let r = c.post("/v1/chat/completions", "sk-bursar-demo", body, &[]);
        assert_openai_error(&r, 400);
    }
    // The connection survives a well-framed bad request.
    let r = c.post("/v1/chat/completions", "sk-bursar-demo", MOCK_CHAT, &[]);
    assert_eq!(r.status, 200, "{}", r.text());
}

#[test]
fn slow_requests_get_408_and_idle_connections_close() {
    let gw = gateway();
    // Half a head, then silence: 408 after the request timeout (1s).
    let mut c = Client::connect(gw.addr);
    c.send_raw(b"POST /v1/chat/completions HTTP/1.1\r\nhost: a\r\n");
    let started = Instant::now();
    let r = c.read_response().expect("a 408");
    assert_openai_error(&r, 408);
    assert!(started.elapsed() < Duration::from_secs(10));
    // A body that never arrives in full: 408 as well.
    let mut c = Client::connect(gw.addr);
    c.send_raw(
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: a\r\ncontent-length: 100\r\n\r\n{\"model\"",
    );
    assert_openai_error(&c.read_response().expect("a 408"), 408);
    // An idle keep-alive connection is closed silently after the idle timeout (3s).
    let mut c = Client::connect(gw.addr);
    assert_eq!(
        c.post("/v1/chat/completions", "sk-bursar-demo", MOCK_CHAT, &[])
            .status,
        200
    );
    assert!(c.is_closed());
}

#[test]
fn auth_and_routing_errors() {
    let gw = gateway();
    let mut c = Client::connect(gw.addr);
    let r = c.request("POST", "/v1/chat/completions", &[], MOCK_CHAT.as_bytes());
    assert_openai_error(&r, 401);
    let r = c.post("/v1/chat/completions", "sk-wrong", MOCK_CHAT, &[]);
    assert_openai_error(&r, 401);
    assert_eq!(r.error_code(), "invalid_api_key");
    let r = c.post("/v1/chat/completions", "sk-mini-only", MOCK_CHAT, &[]);
    assert_openai_error(&r, 403);
    let r = c.post(
        "/v1/chat/completions",
        "sk-bursar-demo",
        r#"{"model":"nope","messages":[]}"#,
        &[],
    );
    assert_openai_error(&r, 404);
    assert_eq!(r.error_code(), "model_not_found");
    let r = c.request("GET", "/v1/chat/completions", &[], b"");
    assert_openai_error(&r, 405);
    let r = c.request("GET", "/v2/whatever", &[], b"");
    assert_openai_error(&r, 404);
    // Still the same connection.
    assert_eq!(
        c.post("/v1/chat/completions", "sk-bursar-demo", MOCK_CHAT, &[])
            .status,
        200
    );
}

#[test]
fn chunked_request_bodies_and_expect_continue_are_served() {
    let gw = gateway();
    let mut c = Client::connect(gw.addr);
    let (a, b) = MOCK_CHAT.split_at(10);
    let raw = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: a\r\nauthorization: Bearer sk-bursar-demo\r\ntransfer-encoding: chunked\r\n\r\n{:x}\r\n{a}\r\n{:x};ext=1\r\n{b}\r\n0\r\n\r\n",
        a.len(),
        b.len()
    );
    c.send_raw(raw.as_bytes());
    let r = c.read_response().unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["usage"]["completion_tokens"], 3);

    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: a\r\nauthorization: Bearer sk-bursar-demo\r\nexpect: 100-continue\r\ncontent-length: {}\r\n\r\n",
        MOCK_CHAT.len()
    );
    c.send_raw(head.as_bytes());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut c.reader, &mut line).unwrap();
    assert_eq!(line, "HTTP/1.1 100 Continue\r\n");
    let mut blank = String::new();
    std::io::BufRead::read_line(&mut c.reader, &mut blank).unwrap();
    c.send_raw(MOCK_CHAT.as_bytes());
    assert_eq!(c.read_response().unwrap().status, 200);
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let gw = gateway();
    let mut c = Client::connect(gw.addr);
    let mut all = Vec::new();
    for n in 1..=5 {
        let body = format!(
            r#"{{"model":"mock-model","max_tokens":{n},"messages":[{{"role":"user","content":"x"}}]}}"#
        );
        all.extend(format_request(
            "POST",
            "/v1/chat/completions",
            &[("authorization", "Bearer sk-bursar-demo")],
            body.as_bytes(),
        ));
    }
    all.extend(format_request("GET", "/health", &[], b""));
    c.send_raw(&all);
    for n in 1..=5 {
        let r = c.read_response().unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.json()["usage"]["completion_tokens"], n);
    }
    assert_eq!(c.read_response().unwrap().json()["status"], "ok");
}

#[test]
fn a_thousand_keep_alive_requests_on_one_connection() {
    let gw = gateway();
    let mut c = Client::connect(gw.addr);
    let mut ids = std::collections::HashSet::new();
    for _ in 0..1000 {
        let r = c.post("/v1/chat/completions", "sk-bursar-demo", MOCK_CHAT, &[]);
        assert_eq!(r.status, 200);
        assert!(
            ids.insert(r.header("x-request-id").unwrap().to_string()),
            "request ids are unique"
        );
    }
    // All of it on one data-plane connection (metrics are scraped on the control plane).
    assert_eq!(gw.metric_sum("bursar_connections_accepted_total"), 1);
}

#[test]
fn http10_clients_get_a_closing_response() {
    let gw = gateway();
    let body = MOCK_CHAT;
    let raw = format!(
        "POST /v1/chat/completions HTTP/1.0\r\nauthorization: Bearer sk-bursar-demo\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    let mut c = Client::connect(gw.addr);
    c.send_raw(raw.as_bytes());
    let r = c.read_response().unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.header("connection"), Some("close"));
    assert!(c.is_closed());
}

#[test]
fn upstream_down_is_502_in_openai_shape() {
    let gw = gateway();
    let mut c = Client::connect(gw.addr);
    let r = c.post("/v1/chat/completions", "sk-bursar-demo", CHAT, &[]);
    assert_openai_error(&r, 502);
    assert_eq!(r.error_code(), "upstream_unreachable");
    // The worker goes on serving.
    assert_eq!(
        c.post("/v1/chat/completions", "sk-bursar-demo", MOCK_CHAT, &[])
            .status,
        200
    );
}

#[test]
fn concurrent_connections_reach_every_worker() {
    let gw = gateway();
    let threads: Vec<_> = (0..32)
        .map(|_| {
            let addr = gw.addr;
            std::thread::spawn(move || {
                let mut c = Client::connect(addr);
                for _ in 0..20 {
                    assert_eq!(
                        c.post("/v1/chat/completions", "sk-bursar-demo", MOCK_CHAT, &[])
                            .status,
                        200
                    );
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let per = per_worker(&gw.metrics(), "bursar_connections_accepted_total");
    assert_eq!(per.len(), 2);
    assert!(
        per.iter().all(|&n| n > 0),
        "every worker accepted connections: {per:?}"
    );
    let ok: u64 = gw
        .metrics()
        .lines()
        .filter(|l| l.starts_with("bursar_responses_total") && l.contains("class=\"2xx\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum();
    assert_eq!(ok, 32 * 20);
}

#[test]
fn the_legacy_driver_can_be_forced_and_serves() {
    let down = format!("http://127.0.0.1:{}/v1", free_port());
    let gw = Gateway::start(&proxy_config(&down, ""), &["--io-driver", "legacy"]);
    let mut c = Client::connect(gw.addr);
    for _ in 0..50 {
        assert_eq!(
            c.post("/v1/chat/completions", "sk-bursar-demo", MOCK_CHAT, &[])
                .status,
            200
        );
    }
    let m = gw.metrics();
    assert!(m.contains("io_driver=\"legacy\""), "{m}");
    assert!(!m.contains("driver=\"io_uring\""));
}

#[test]
fn the_default_driver_is_io_uring_here() {
    // This machine kind has io_uring; `auto` must pick it and say so.
    let gw = gateway();
    let m = gw.metrics();
    assert!(
        m.contains("bursar_io_driver{worker=\"0\",driver=\"io_uring\"} 1"),
        "{m}"
    );
}

#[test]
fn check_config_validates_files() {
    let dir = TempDir::new("check");
    let good = dir.0.join("good.toml");
    std::fs::write(&good, proxy_config("http://127.0.0.1:9/v1", "")).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_bursar"))
        .args(["check-config", "--config"])
        .arg(&good)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("ok"));

    let bad = dir.0.join("bad.toml");
    let mut f = std::fs::File::create(&bad).unwrap();
    f.write_all(
        proxy_config("http://127.0.0.1:9/v1", "")
            .replace("kind = \"openai\"", "kind = \"openia\"")
            .as_bytes(),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_bursar"))
        .args(["check-config", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("providers[0]") && err.contains("openia"),
        "{err}"
    );
}

#[test]
fn sighup_reloads_keys_without_dropping_connections() {
    let gw = gateway();
    let mut c = Client::connect(gw.addr);
    assert_eq!(
        c.post("/v1/chat/completions", "sk-new-key-123", MOCK_CHAT, &[])
            .status,
        401
    );
    let next = std::fs::read_to_string(&gw.config_path).unwrap()
        + "\n[[virtual_keys]]\nname = \"new\"\nkey = \"sk-new-key-123\"\n";
    std::fs::write(&gw.config_path, next).unwrap();
    gw.signal("HUP");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let r = c.post("/v1/chat/completions", "sk-new-key-123", MOCK_CHAT, &[]);
        if r.status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "the reload did not take effect");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(gw.metrics().contains("bursar_catalog_version 2"));
    // A broken file is refused and the running config stays.
    std::fs::write(&gw.config_path, "this is not toml [").unwrap();
    gw.signal("HUP");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        c.post("/v1/chat/completions", "sk-new-key-123", MOCK_CHAT, &[])
            .status,
        200
    );
}
