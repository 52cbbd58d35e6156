//! The data plane end to end: the real gateway in front of the real mock
//! upstream (`bursar-load mock`), over real sockets.

mod util;

use std::io::Read;
use std::time::{Duration, Instant};
use util::*;

fn setup(extra: &str) -> (Mock, Gateway) {
    let mock = Mock::start(&[]);
    let gw = Gateway::start(&proxy_config(&mock.base_url(), extra), &[]);
    (mock, gw)
}

#[test]
fn chat_completions_pass_through_with_usage_and_request_id() {
    let (_mock, gw) = setup("");
    let mut c = Client::connect(gw.addr);
    let r = c.post("/v1/chat/completions", "sk-bursar-demo", CHAT, &[]);
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["model"], "gpt-4o-mini");
    // The mock's documented rule: 3 + (3 + words) per message; 5 completion words.
    assert_eq!(v["usage"]["prompt_tokens"], 3 + 3 + 2);
    assert_eq!(v["usage"]["completion_tokens"], 5);
    assert_eq!(
        v["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .split(' ')
            .count(),
        5
    );
    let id = r.header("x-request-id").unwrap();
    assert!(id.starts_with("req_") && id.len() == 32, "{id}");
}

#[test]
fn the_upstream_sees_the_provider_key_and_our_request_id_never_the_virtual_key() {
    let (mock, gw) = setup("");
    let mut c = Client::connect(gw.addr);
    let r = c.post(
        "/v1/chat/completions?trace=1",
        "sk-bursar-demo",
        CHAT,
        &[("x-bursar-tags", "a=b"), ("openai-organization", "org-1")],
    );
    assert_eq!(r.status, 200);
    let mut m = Client::connect(mock.addr);
    let seen = m.request("GET", "/v1/_mock/last-request", &[], b"").json();
    let headers = &seen["headers"];
    assert_eq!(
        headers["authorization"], "Bearer sk-upstream-secret",
        "{seen}"
    );
    assert_eq!(headers["x-request-id"], r.header("x-request-id").unwrap());
    assert_eq!(headers["openai-organization"], "org-1");
    assert!(headers.get("x-bursar-tags").is_none());
    assert!(!seen.to_string().contains("sk-bursar-demo"));
    assert_eq!(
        seen["body"],
        serde_json::from_str::<serde_json::Value>(CHAT).unwrap(),
        "the body passes through"
    );
    assert!(seen["path"]
        .as_str()
        .unwrap()
        .starts_with("/v1/chat/completions"));
}

#[test]
fn every_endpoint_streamed_and_not() {
    let (_mock, gw) = setup("");
    let mut c = Client::connect(gw.addr);
    let r = c.post(
        "/v1/completions",
        "sk-bursar-demo",
        r#"{"model":"gpt-4o-mini","prompt":"one two three","max_tokens":4}"#,
        &[],
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["usage"]["prompt_tokens"], 3);
    let r = c.post(
        "/v1/embeddings",
        "sk-bursar-demo",
        r#"{"model":"text-embedding-3-small","input":["a b","c"]}"#,
        &[],
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["data"].as_array().unwrap().len(), 2);
    let r = c.post(
        "/v1/responses",
        "sk-bursar-demo",
        r#"{"model":"gpt-4o-mini","input":"say hi","max_output_tokens":3}"#,
        &[],
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["usage"]["output_tokens"], 3);

    let r = c.post("/v1/chat/completions", "sk-bursar-demo", CHAT_STREAM, &[]);
    assert_eq!(r.status, 200);
    assert!(r
        .header("content-type")
        .unwrap()
        .starts_with("text/event-stream"));
    let data = sse_data(&r.body);
    assert_eq!(data.last().unwrap(), "[DONE]");
    assert!(
        !data.iter().any(|d| d.contains("\"usage\":{")),
        "no usage unless asked"
    );
    let with_usage = CHAT_STREAM.replace(
        "\"stream\":true",
        "\"stream\":true,\"stream_options\":{\"include_usage\":true}",
    );
    let r = c.post("/v1/chat/completions", "sk-bursar-demo", &with_usage, &[]);
    let data = sse_data(&r.body);
    let usage: serde_json::Value = serde_json::from_str(&data[data.len() - 2]).unwrap();
    assert_eq!(usage["usage"]["completion_tokens"], 5);

    let r = c.post(
        "/v1/responses",
        "sk-bursar-demo",
        r#"{"model":"gpt-4o-mini","input":"hi","stream":true}"#,
        &[],
    );
    assert_eq!(r.status, 200);
    assert!(r.text().contains("response.completed"));
    let r = c.post(
        "/v1/completions",
        "sk-bursar-demo",
        r#"{"model":"gpt-4o-mini","prompt":"x","stream":true}"#,
        &[],
    );
    assert_eq!(sse_data(&r.body).last().unwrap(), "[DONE]");
}

#[test]
fn streams_are_relayed_chunk_by_chunk_as_they_arrive() {
    let (_mock, gw) = setup("");
    let mut c = Client::connect(gw.addr);
    let body = r#"{"model":"gpt-4o-mini","stream":true,"max_tokens":6,"messages":[{"role":"user","content":"hi"}]}"#;
    let req = format_request(
        "POST",
        "/v1/chat/completions",
        &[
            ("authorization", "Bearer sk-bursar-demo"),
            ("x-mock-stream-interval-ms", "150"),
        ],
        body.as_bytes(),
    );
    let started = Instant::now();
    c.send_raw(&req);
    // The head and the first event arrive long before the stream ends (~1.2 s).
    let mut first = [0u8; 64];
    c.reader.get_mut().read_exact(&mut first).unwrap();
    let first_at = started.elapsed();
    let mut rest = Vec::new();
    let _ = c
        .reader
        .get_mut()
        .set_read_timeout(Some(Duration::from_secs(10)));
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&rest).contains("[DONE]") {
        let n = c.reader.get_mut().read(&mut buf).unwrap();
        assert!(n > 0);
        rest.extend_from_slice(&buf[..n]);
    }
    let total = started.elapsed();
    assert!(
        total >= Duration::from_millis(900),
        "paced stream took {total:?}"
    );
    assert!(
        first_at * 3 < total,
        "first bytes at {first_at:?} of {total:?}: the stream was buffered"
    );
}

#[test]
fn upstream_errors_pass_through_and_timeouts_are_504() {
    let (_mock, gw) = setup("[limits]\nupstream_read_timeout = \"500ms\"\n");
    let mut c = Client::connect(gw.addr);
    let r = c.post(
        "/v1/chat/completions",
        "sk-bursar-demo",
        CHAT,
        &[("x-mock-status", "500")],
    );
    assert_eq!(r.status, 500);
    assert!(r.json()["error"].is_object());
    assert!(r.header("x-request-id").is_some());
    let r = c.post(
        "/v1/chat/completions",
        "sk-bursar-demo",
        CHAT,
        &[("x-mock-status", "429")],
    );
    assert_eq!(r.status, 429);
    let r = c.post(
        "/v1/chat/completions",
        "sk-bursar-demo",
        CHAT,
        &[("x-mock-delay-ms", "2000")],
    );
    assert_eq!(r.status, 504, "{}", r.text());
    assert_eq!(r.error_code(), "upstream_timeout");
    let r = c.post(
        "/v1/chat/completions",
        "sk-bursar-demo",
        CHAT,
        &[("x-mock-reset-after", "0")],
    );
    assert_eq!(r.status, 502, "{}", r.text());
    assert_eq!(
        c.post("/v1/chat/completions", "sk-bursar-demo", CHAT, &[])
            .status,
        200
    );
    assert!(gw.metric_sum("bursar_upstream_timeouts_total") >= 1);
}

#[test]
fn an_upstream_reset_mid_stream_ends_the_stream_with_an_error_event() {
    let (_mock, gw) = setup("");
    let mut c = Client::connect(gw.addr);
    let r = c.post(
        "/v1/chat/completions",
        "sk-bursar-demo",
        CHAT_STREAM,
        &[("x-mock-reset-after", "2")],
    );
    assert_eq!(r.status, 200);
    let data = sse_data(&r.body);
    assert!(data.len() >= 2, "{data:?}");
    let last: serde_json::Value = serde_json::from_str(data.last().unwrap()).unwrap();
    assert_eq!(last["error"]["code"], "upstream_stream_cut");
    // The client connection is intact and the worker goes on.
    assert_eq!(
        c.post("/v1/chat/completions", "sk-bursar-demo", CHAT, &[])
            .status,
        200
    );
    let r = c.post(
        "/v1/chat/completions",
        "sk-bursar-demo",
        CHAT_STREAM,
        &[("x-mock-close-after", "1")],
    );
    assert!(r.text().contains("upstream_stream_cut"));
    assert_eq!(gw.metric_sum("bursar_streams_upstream_aborted_total"), 2);
}

#[test]
fn a_client_leaving_mid_stream_does_not_disturb_the_worker() {
    let (_mock, gw) = setup("");
    for _ in 0..4 {
        let mut c = Client::connect(gw.addr);
        let body = r#"{"model":"gpt-4o-mini","stream":true,"max_tokens":50,"messages":[{"role":"user","content":"hi"}]}"#;
        c.send_raw(&format_request(
            "POST",
            "/v1/chat/completions",
            &[
                ("authorization", "Bearer sk-bursar-demo"),
                ("x-mock-stream-interval-ms", "20"),
            ],
            body.as_bytes(),
        ));
        let mut some = [0u8; 300];
        c.reader.get_mut().read_exact(&mut some).unwrap();
        drop(c); // leave mid-stream
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while gw.metric_sum("bursar_streams_client_aborted_total") < 4 {
        assert!(
            Instant::now() < deadline,
            "aborts not noticed: {}",
            gw.metrics()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut c = Client::connect(gw.addr);
    for _ in 0..20 {
        assert_eq!(
            c.post("/v1/chat/completions", "sk-bursar-demo", CHAT_STREAM, &[])
                .status,
            200
        );
    }
    // The worker finishes its bookkeeping just after the client has the last
    // byte, so the gauge reaches zero shortly after, not necessarily before
    // (seconds on a loaded 2-core CI machine: a wait for a condition, not a
    // timing claim).
    let deadline = Instant::now() + Duration::from_secs(30);
    while gw.metric_sum("bursar_requests_inflight") != 0 {
        assert!(Instant::now() < deadline, "requests stuck in flight");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn upstream_connections_are_pooled_and_stale_ones_retried() {
    let (mock, gw) = setup("");
    let mut c = Client::connect(gw.addr);
    // Large bodies (embeddings of 1,536 dimensions, several times the 8 KiB read
    // buffer) between small ones on the same pooled connection: each answer
    // is whole and its own (the body stays in the connection's buffer until
    // copied out).
    for i in 0..20 {
        if i % 3 == 1 {
            let input: Vec<String> = (0..=i).map(|k| format!("text {k}")).collect();
            let body = serde_json::json!({"model": "text-embedding-3-small", "input": input, "dimensions": 1536});
            let r = c.post("/v1/embeddings", "sk-bursar-demo", &body.to_string(), &[]);
            assert_eq!(r.status, 200, "{}", r.text());
            let v = r.json();
            assert_eq!(v["object"], "list");
            assert_eq!(v["data"].as_array().unwrap().len(), i + 1);
            assert!(r.body.len() > 3 * 8192, "{} bytes", r.body.len());
        } else {
            let r = c.post("/v1/chat/completions", "sk-bursar-demo", CHAT, &[]);
            assert_eq!(r.status, 200, "{}", r.text());
            assert_eq!(r.json()["object"], "chat.completion");
        }
    }
    let connects = gw.metric_sum("bursar_upstream_connects_total");
    assert!(
        connects <= 2,
        "20 sequential requests opened {connects} upstream connections"
    );
    assert!(gw.metric_sum("bursar_upstream_reuses_total") >= 18);
    // Restart the upstream: pooled connections are now dead; requests still succeed.
    let addr = mock.addr;
    drop(mock);
    let _mock2 = {
        let mut child = std::process::Command::new(
            std::path::Path::new(env!("CARGO_BIN_EXE_bursar"))
                .parent()
                .unwrap()
                .join("bursar-load"),
        )
        .args(["mock", "--listen", &addr.to_string(), "--quiet"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(addr).is_err() {
            assert!(Instant::now() < deadline);
            assert!(child.try_wait().unwrap().is_none());
            std::thread::sleep(Duration::from_millis(20));
        }
        Mock { child, addr }
    };
    for _ in 0..10 {
        assert_eq!(
            c.post("/v1/chat/completions", "sk-bursar-demo", CHAT, &[])
                .status,
            200
        );
    }
}

#[test]
fn models_are_listed_per_key() {
    let (_mock, gw) = setup("");
    let mut c = Client::connect(gw.addr);
    let r = c.request(
        "GET",
        "/v1/models",
        &[("authorization", "Bearer sk-mini-only")],
        b"",
    );
    assert_eq!(r.status, 200);
    let ids: Vec<String> = r.json()["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids, ["gpt-4o-mini"]);
    let r = c.request(
        "GET",
        "/v1/models/gpt-4o",
        &[("authorization", "Bearer sk-bursar-demo")],
        b"",
    );
    assert_eq!(r.json()["id"], "gpt-4o");
    let r = c.request(
        "GET",
        "/v1/models/gpt-4o",
        &[("authorization", "Bearer sk-mini-only")],
        b"",
    );
    assert_eq!(r.status, 404);
}

#[test]
fn sigterm_drains_in_flight_requests() {
    let (_mock, gw) = setup("");
    let addr = gw.addr;
    let slow = std::thread::spawn(move || {
        let mut c = Client::connect(addr);
        c.post(
            "/v1/chat/completions",
            "sk-bursar-demo",
            CHAT,
            &[("x-mock-delay-ms", "800")],
        )
    });
    std::thread::sleep(Duration::from_millis(200));
    gw.signal("TERM");
    let r = slow.join().unwrap();
    assert_eq!(
        r.status, 200,
        "the in-flight request completed during the drain"
    );
    let mut gw = gw;
    let status = gw.child.wait().unwrap();
    assert!(status.success(), "{status}");
}

#[test]
fn internal_overhead_is_measured_per_forwarded_request() {
    let (_mock, gw) = setup("");
    let mut c = Client::connect(gw.addr);
    for _ in 0..7 {
        assert_eq!(
            c.post("/v1/chat/completions", "sk-bursar-demo", CHAT, &[])
                .status,
            200
        );
    }
    assert_eq!(
        c.post("/v1/chat/completions", "sk-bursar-demo", CHAT_STREAM, &[])
            .status,
        200
    );
    // Not forwarded, so not counted: the in-process mock and a refusal.
    assert_eq!(
        c.post(
            "/v1/chat/completions",
            "sk-bursar-demo",
            r#"{"model":"mock-model","messages":[]}"#,
            &[]
        )
        .status,
        200
    );
    assert_eq!(
        c.post("/v1/chat/completions", "sk-wrong", CHAT, &[]).status,
        401
    );
    let count = |m: &str| -> u64 {
        m.lines()
            .find_map(|l| l.strip_prefix("bursar_overhead_seconds_count "))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let m = gw.metrics();
        if count(&m) == 8 {
            let p50: f64 = m
                .lines()
                .find_map(|l| l.strip_prefix("bursar_overhead_seconds{quantile=\"0.5\"} "))
                .unwrap()
                .parse()
                .unwrap();
            assert!(p50 > 0.0);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "overhead count {} != 8:\n{m}",
            count(&m)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_cut_inside_an_event_still_delivers_the_error_as_its_own_event() {
    use std::io::Write;
    // A raw upstream: one whole event, half of another, then it closes.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let mut s = stream.unwrap();
            let mut buf = [0u8; 65536];
            let _ = s.read(&mut buf);
            let whole = "data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\n\n";
            let half = "data: {\"choices\":[{\"del";
            let _ = write!(
                s,
                "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n{:x}\r\n{whole}\r\n{:x}\r\n{half}\r\n",
                whole.len(),
                half.len()
            );
            let _ = s.flush();
            std::thread::sleep(Duration::from_millis(50));
        }
    });
    let gw = Gateway::start(
        &proxy_config(&format!("http://127.0.0.1:{port}/v1"), ""),
        &[],
    );
    let mut c = Client::connect(gw.addr);
    let r = c.post("/v1/chat/completions", "sk-bursar-demo", CHAT_STREAM, &[]);
    assert_eq!(r.status, 200);
    let text = r.text();
    assert!(text.contains("{\"del\n\ndata: {\"error\""), "{text:?}");
    let last: serde_json::Value = serde_json::from_str(sse_data(&r.body).last().unwrap()).unwrap();
    assert_eq!(last["error"]["code"], "upstream_stream_cut");
}

fn metric(gw: &Gateway, name: &str, worker: &str) -> u64 {
    gw.metrics()
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name}{{worker=\"{worker}\"}} ")))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[test]
fn streams_are_metered_with_usage_requested_and_the_extra_chunk_removed() {
    let mock = Mock::start(&[]);
    let cfg = proxy_config(&mock.base_url(), "").replace("workers = 2", "workers = 1");
    let gw = Gateway::start(&cfg, &[]);
    let mut c = Client::connect(gw.addr);

    // A stream without include_usage: the upstream is asked for usage, the
    // client sees none of it (no usage chunk, no "usage":null members).
    let r = c.post("/v1/chat/completions", "sk-bursar-demo", CHAT_STREAM, &[]);
    assert_eq!(r.status, 200);
    let text = r.text();
    assert!(!text.contains("usage"), "{text}");
    assert_eq!(sse_data(&r.body).last().unwrap(), "[DONE]");
    let seen = Client::connect(mock.addr)
        .request("GET", "/v1/_mock/last-request", &[], b"")
        .json();
    assert_eq!(
        seen["body"]["stream_options"]["include_usage"], true,
        "{seen}"
    );
    assert_eq!(metric(&gw, "bursar_usage_chunks_stripped_total", "0"), 1);
    assert_eq!(metric(&gw, "bursar_tokens_prompt_total", "0"), 8);
    assert_eq!(metric(&gw, "bursar_tokens_completion_total", "0"), 5);
    // gpt-4o-mini at $0.15 / $0.60 per million: 8 in, 5 out, exactly.
    assert_eq!(
        metric(&gw, "bursar_cost_picodollars_total", "0"),
        8 * 150_000 + 5 * 600_000
    );

    // The same stream, split at every byte by the upstream: same result.
    let r = c.post(
        "/v1/chat/completions",
        "sk-bursar-demo",
        CHAT_STREAM,
        &[("x-mock-split", "byte")],
    );
    assert!(!r.text().contains("usage"));
    assert_eq!(metric(&gw, "bursar_tokens_completion_total", "0"), 10);

    // The client asks for usage itself: nothing is removed.
    let with_usage = CHAT_STREAM.replace(
        "\"stream\":true",
        "\"stream\":true,\"stream_options\":{\"include_usage\":true}",
    );
    let r = c.post("/v1/chat/completions", "sk-bursar-demo", &with_usage, &[]);
    assert!(r.text().contains("\"usage\":{"));
    assert_eq!(
        metric(&gw, "bursar_usage_chunks_stripped_total", "0"),
        2,
        "one per stream we asked for"
    );
    assert_eq!(metric(&gw, "bursar_tokens_completion_total", "0"), 15);

    // Non-streamed: usage from the body, reasoning and cached counted.
    let r = c.post(
        "/v1/chat/completions",
        "sk-bursar-demo",
        CHAT,
        &[
            ("x-mock-reasoning-tokens", "7"),
            ("x-mock-cached-tokens", "4"),
        ],
    );
    assert_eq!(r.status, 200);
    assert_eq!(
        metric(&gw, "bursar_tokens_completion_total", "0"),
        15 + 5 + 7
    );
    assert_eq!(metric(&gw, "bursar_tokens_reasoning_total", "0"), 7);
    assert_eq!(metric(&gw, "bursar_tokens_cached_total", "0"), 4);
    assert_eq!(metric(&gw, "bursar_usage_reported_total", "0"), 4);

    // No usage from the upstream: the tokenizer thread estimates the text.
    let r = c.post(
        "/v1/chat/completions",
        "sk-bursar-demo",
        CHAT_STREAM,
        &[("x-mock-omit-usage", "1")],
    );
    let generated: String = sse_data(&r.body)
        .iter()
        .filter_map(|d| serde_json::from_str::<serde_json::Value>(d).ok())
        .filter_map(|v| {
            v["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_string)
        })
        .collect();
    let expect = bursar::tokens::count_tokens(
        bursar::tokens::ModelFamily::for_model("gpt-4o-mini").encoding,
        &generated,
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while metric(&gw, "bursar_usage_estimated_total", "tokenizer") < 1 {
        assert!(Instant::now() < deadline, "no estimate");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(expect >= 5);
    assert_eq!(
        metric(&gw, "bursar_tokens_completion_total", "tokenizer"),
        expect
    );
    // The prompt is estimated from the request body the upstream got, never
    // left at zero (the same estimate, computed here independently).
    let sent = Client::connect(mock.addr)
        .request("GET", "/v1/_mock/last-request", &[], b"")
        .json();
    assert_eq!(sent["body"]["stream_options"]["include_usage"], true);
    let prompt = metric(&gw, "bursar_tokens_prompt_total", "tokenizer");
    assert!(prompt > 0);
    let family = bursar::tokens::ModelFamily::for_model("gpt-4o-mini");
    let body = serde_json::to_vec(&sent["body"]).unwrap();
    let estimate = bursar::tokens::estimate_prompt_tokens(&body, family.encoding);
    assert!(
        prompt.abs_diff(estimate) <= 3,
        "prompt {prompt} vs estimate {estimate}"
    );
}
