//! Request tags against the real binary: the `x-bursar-tags` header is strict
//! (more than `TAGS_MAX` in it is a 400), the body's `user` and `metadata`
//! are lenient (past `TAGS_MAX` the rest are dropped, never a refusal).

mod util;

use std::time::{Duration, Instant};

use bursar::reqlog::row::TAGS_MAX;
use util::{Client, Gateway, Response};

const ADMIN: &str = "admin-secret";

/// The in-process mock provider: no upstream process needed.
fn chat(metadata: &serde_json::Value) -> String {
    serde_json::json!({
        "model": "mock-model",
        "max_tokens": 5,
        "user": "u-1",
        "metadata": metadata,
        "messages": [{"role": "user", "content": "hi"}],
    })
    .to_string()
}

/// `n` metadata entries `m00` .. in key order.
fn metadata(n: usize) -> serde_json::Value {
    (0..n)
        .map(|i| (format!("m{i:02}"), serde_json::json!("v")))
        .collect::<serde_json::Map<_, _>>()
        .into()
}

fn header_tags(n: usize) -> String {
    (0..n)
        .map(|i| format!("h{i:02}=v"))
        .collect::<Vec<_>>()
        .join(",")
}

/// The logged tag keys of the request answered by `r`.
fn logged_tags(gw: &Gateway, r: &Response) -> Vec<String> {
    let id = r.header("x-request-id").expect("a request id").to_string();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let page = util::admin_get(gw, ADMIN, "/admin/logs?key=demo&limit=100");
        assert_eq!(page.status, 200, "{}", page.text());
        let rows = page.json()["data"].as_array().cloned().unwrap_or_default();
        if let Some(row) = rows.iter().find(|row| row["id"] == id.as_str()) {
            let tags = row["tags"].as_object().expect("tags").clone();
            return tags.keys().cloned().collect();
        }
        assert!(Instant::now() < deadline, "no log row for {id}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn body_tags_past_the_bound_are_dropped_and_header_tags_refused() {
    let gw = Gateway::start(
        &util::proxy_config(
            "http://127.0.0.1:9/v1",
            &format!("[admin]\ntoken = \"{ADMIN}\"\n[log]\nflush_interval = \"50ms\"\n"),
        ),
        &[],
    );
    let mut c = Client::connect(gw.addr);

    // The body alone past the bound: answered, user then metadata in key
    // order kept up to TAGS_MAX.
    let r = c.post(
        "/v1/chat/completions",
        "sk-bursar-demo",
        &chat(&metadata(TAGS_MAX + 8)),
        &[],
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let mut expected: Vec<String> = (0..TAGS_MAX - 1).map(|i| format!("m{i:02}")).collect();
    expected.push("user".into());
    assert_eq!(logged_tags(&gw, &r), expected);

    // A full header and a body: answered, the header's tags kept.
    let r = c.post(
        "/v1/chat/completions",
        "sk-bursar-demo",
        &chat(&metadata(3)),
        &[("x-bursar-tags", &header_tags(TAGS_MAX))],
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let expected: Vec<String> = (0..TAGS_MAX).map(|i| format!("h{i:02}")).collect();
    assert_eq!(logged_tags(&gw, &r), expected);

    // The header alone past the bound: refused.
    let r = c.post(
        "/v1/chat/completions",
        "sk-bursar-demo",
        &chat(&metadata(0)),
        &[("x-bursar-tags", &header_tags(TAGS_MAX + 1))],
    );
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(r.error_code(), "invalid_tags");
    let message = r.json()["error"]["message"].as_str().unwrap().to_string();
    assert!(message.contains("x-bursar-tags"), "{message}");
    // Every tag dropped from a body was counted.
    assert_eq!(gw.metric_sum("bursar_tags_dropped_total"), 9 + 4);
}
