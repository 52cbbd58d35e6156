//! Rate limits through the real binary: exact across workers (the limit is
//! the gateway's, not each worker's), 429 with Retry-After in OpenAI's shape,
//! concurrency slots released however a request ends, team limits shared by
//! the team's keys.

mod util;

use std::time::Duration;
use util::*;

const LIMITS: &str = r#"
[[teams]]
name = "search"
rate_limit = { concurrent = 1 }
allowed_models = ["gpt-4o-mini"]

[[virtual_keys]]
name = "rpm"
key = "sk-rpm-limited"
rate_limit = { requests_per_minute = 5 }

[[virtual_keys]]
name = "search-a"
key = "sk-search-a"
team = "search"

[[virtual_keys]]
name = "search-b"
key = "sk-search-b"
team = "search"
"#;

#[test]
fn requests_per_minute_is_exact_across_workers() {
    let mock = Mock::start(&[]);
    let gw = Gateway::start(&proxy_config(&mock.base_url(), LIMITS), &[]);
    // New connections spread over both workers; the limit still holds exactly.
    let statuses: Vec<u16> = (0..12)
        .map(|_| {
            let mut c = Client::connect(gw.addr);
            let r = c.post("/v1/chat/completions", "sk-rpm-limited", CHAT, &[]);
            if r.status == 429 {
                assert_eq!(r.error_code(), "rate_limit_exceeded");
                let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
                assert!((1..=60).contains(&retry));
                assert!(r.header("x-request-id").is_some());
            }
            r.status
        })
        .collect();
    let ok = statuses.iter().filter(|&&s| s == 200).count();
    let limited = statuses.iter().filter(|&&s| s == 429).count();
    // A minute boundary during the test could admit up to 5 more; never fewer.
    assert!(ok == 5 || ok == 10, "{statuses:?}");
    assert_eq!(ok + limited, 12);
    let per = per_worker(&gw.metrics(), "bursar_connections_accepted_total");
    assert!(per.iter().all(|&n| n > 0), "both workers served: {per:?}");
    // Other keys are not affected.
    let mut c = Client::connect(gw.addr);
    assert_eq!(
        c.post("/v1/chat/completions", "sk-bursar-demo", CHAT, &[])
            .status,
        200
    );
}

#[test]
fn team_concurrency_is_shared_by_its_keys_and_released_after_each_request() {
    let mock = Mock::start(&[]);
    let gw = Gateway::start(&proxy_config(&mock.base_url(), LIMITS), &[]);
    let addr = gw.addr;
    let slow = std::thread::spawn(move || {
        let mut c = Client::connect(addr);
        c.post(
            "/v1/chat/completions",
            "sk-search-a",
            CHAT,
            &[("x-mock-delay-ms", "800")],
        )
        .status
    });
    std::thread::sleep(Duration::from_millis(250));
    let mut c = Client::connect(gw.addr);
    let r = c.post("/v1/chat/completions", "sk-search-b", CHAT, &[]);
    assert_eq!(r.status, 429, "the team's one slot is taken by key a");
    assert!(r.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("team"));
    assert_eq!(slow.join().unwrap(), 200);
    // Released: by a success, and also by an upstream failure and a stream.
    assert_eq!(
        c.post("/v1/chat/completions", "sk-search-b", CHAT, &[])
            .status,
        200
    );
    assert_eq!(
        c.post(
            "/v1/chat/completions",
            "sk-search-b",
            CHAT,
            &[("x-mock-status", "500")]
        )
        .status,
        500
    );
    assert_eq!(
        c.post("/v1/chat/completions", "sk-search-b", CHAT_STREAM, &[])
            .status,
        200
    );
    assert_eq!(
        c.post("/v1/chat/completions", "sk-search-a", CHAT, &[])
            .status,
        200
    );
    // The team's model allow-list applies to its keys.
    let r = c.post(
        "/v1/chat/completions",
        "sk-search-a",
        &CHAT.replace("gpt-4o-mini", "gpt-4o"),
        &[],
    );
    assert_eq!(r.status, 403);
}
