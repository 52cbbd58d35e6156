//! `GET /v1/bursar/usage` end to end: the real gateway, two keys with
//! budgets sending traffic through the built-in mock provider; each key
//! sees its own spend (the ledger's, as the admin API shows it), its own
//! last requests (as `/admin/logs` shows them) and nothing of the other's.

mod util;

use std::time::{Duration, Instant};

use serde_json::Value;
use util::{pico, proxy_config, Client, Gateway, Response};

const ADMIN: &str = "admin-secret";
const KEY_A: &str = "sk-usage-key-a";
const KEY_B: &str = "sk-usage-key-b";
const KEY_LIMITED: &str = "sk-usage-limited";

fn config(log: &str) -> String {
    // The `openai` provider of `proxy_config` is never asked: every request
    // here is for the built-in mock's model.
    proxy_config(
        "http://127.0.0.1:9",
        &format!(
            r#"
[admin]
token = "{ADMIN}"
[[customers]]
name = "acme"
budget = {{ limit_usd = "5", reset = "1d" }}
[[teams]]
name = "search"
customer = "acme"
budget = {{ limit_usd = "3", reset = "1d", mode = "soft" }}
[[virtual_keys]]
name = "key-a"
team = "search"
key = "{KEY_A}"
budget = {{ limit_usd = "1", reset = "1d" }}
[[virtual_keys]]
name = "key-b"
key = "{KEY_B}"
budget = {{ limit_usd = "2", reset = "1d", mode = "soft" }}
[[virtual_keys]]
name = "limited"
key = "{KEY_LIMITED}"
rate_limit = {{ requests_per_minute = 2 }}
{log}
"#
        ),
    )
}

const LOG_ON: &str = "[log]\nflush_interval = \"50ms\"";

fn chat(words: usize) -> String {
    let text = vec!["hello"; words].join(" ");
    format!(
        r#"{{"model":"mock-model","max_tokens":5,"messages":[{{"role":"user","content":"{text}"}}]}}"#
    )
}

fn get(c: &mut Client, path: &str, key: Option<&str>) -> Response {
    let auth = key.map(|k| format!("Bearer {k}"));
    let headers: Vec<(&str, &str)> = auth
        .as_deref()
        .map(|a| ("authorization", a))
        .into_iter()
        .collect();
    c.request("GET", path, &headers, b"")
}

fn usage(gw: &Gateway, key: &str, query: &str) -> Response {
    get(
        &mut Client::connect(gw.addr),
        &format!("/v1/bursar/usage{query}"),
        Some(key),
    )
}

fn admin(gw: &Gateway, path: &str) -> Value {
    let r = util::admin_get(gw, ADMIN, path);
    assert_eq!(r.status, 200, "{path}: {}", r.text());
    r.json()
}

/// Polls usage until it lists `n` requests (the log is written in batches).
fn usage_with_rows(gw: &Gateway, key: &str, n: usize) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = usage(gw, key, "");
        assert_eq!(r.status, 200, "{}", r.text());
        let v = r.json();
        let rows = v["requests"].as_array().unwrap().len();
        if rows >= n || Instant::now() > deadline {
            assert_eq!(rows, n, "{v}");
            return v;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Sends `n` chat requests with `key`; their request ids, oldest first.
fn traffic(gw: &Gateway, key: &str, n: usize, words: usize) -> Vec<String> {
    let mut c = Client::connect(gw.addr);
    (0..n)
        .map(|_| {
            let r = c.post("/v1/chat/completions", key, &chat(words), &[]);
            assert_eq!(r.status, 200, "{}", r.text());
            assert!(r.cost_usd().is_some_and(|c| pico(c) > 0));
            r.header("x-request-id").unwrap().to_string()
        })
        .collect()
}

/// The budget fields a usage answer shares with the admin API's spend view.
const BUDGET_FIELDS: [&str; 7] = [
    "spent_usd",
    "limit_usd",
    "remaining_usd",
    "reset_at",
    "period_start",
    "mode",
    "blocked",
];

fn assert_same_budget(usage: &Value, spend: &Value) {
    for f in BUDGET_FIELDS {
        assert_eq!(usage[f], spend[f], "{f}: usage {usage} admin {spend}");
    }
    // Nothing of the operator's view beyond them.
    for f in [
        "leased_usd",
        "topup_usd",
        "lifetime_spent_usd",
        "overshoot_usd",
    ] {
        assert!(usage.get(f).is_none(), "{f} in {usage}");
    }
}

#[test]
fn each_key_sees_its_own_spend_and_requests_only() {
    let gw = Gateway::start(&config(LOG_ON), &[]);
    let ids_a = traffic(&gw, KEY_A, 3, 4);
    let ids_b = traffic(&gw, KEY_B, 2, 40);

    let a = usage_with_rows(&gw, KEY_A, 3);
    let b = usage_with_rows(&gw, KEY_B, 2);

    // Key A: its spend is the ledger's, as the admin API shows it.
    assert_eq!(a["object"], "usage");
    assert_eq!(a["key"], "key-a");
    assert_eq!(a["team"], "search");
    assert_eq!(a["customer"], "acme");
    assert_eq!(a["requests_available"], true);
    let spend_a = admin(&gw, "/admin/spend/keys/key-a");
    assert_same_budget(&a["budget"], &spend_a);
    assert_eq!(a["budget"]["limit_usd"], "1");
    assert_eq!(a["budget"]["mode"], "strict");
    assert!(a["budget"]["reset_at"].is_string(), "{a}");
    let spent_a = pico(a["budget"]["spent_usd"].as_str().unwrap());
    assert_eq!(
        pico(a["budget"]["remaining_usd"].as_str().unwrap()),
        pico("1") - spent_a
    );
    // The customer's strict budget can refuse the key (its 402 would name
    // it): listed, as the admin API shows it. The team's soft budget never
    // refuses: left out.
    let levels = a["levels"].as_array().unwrap();
    assert_eq!(levels.len(), 1, "{a}");
    assert_eq!(levels[0]["kind"], "customer");
    assert_eq!(levels[0]["name"], "acme");
    assert_same_budget(&levels[0], &admin(&gw, "/admin/spend/customers/acme"));

    // Its rows, newest first, exactly the admin API's rows for the key.
    let rows_a = a["requests"].as_array().unwrap();
    let ids: Vec<&str> = rows_a.iter().map(|r| r["id"].as_str().unwrap()).collect();
    let mut expected: Vec<&str> = ids_a.iter().map(String::as_str).collect();
    expected.reverse();
    assert_eq!(ids, expected);
    let logged = admin(&gw, "/admin/logs?key=key-a&limit=3");
    assert_eq!(rows_a, logged["data"].as_array().unwrap());
    let row_sum: i128 = rows_a
        .iter()
        .map(|r| pico(r["cost_usd"].as_str().unwrap()))
        .sum();
    assert_eq!(row_sum, spent_a, "the rows add up to the key's spend");

    // Key B: its own spend, no team or customer, none of A's rows.
    assert_eq!(b["key"], "key-b");
    assert_eq!(b["team"], Value::Null);
    assert_eq!(b["customer"], Value::Null);
    assert_eq!(b["levels"], serde_json::json!([]));
    let spend_b = admin(&gw, "/admin/spend/keys/key-b");
    assert_same_budget(&b["budget"], &spend_b);
    assert_eq!(b["budget"]["mode"], "soft");
    let spent_b = pico(b["budget"]["spent_usd"].as_str().unwrap());
    assert_ne!(spent_a, spent_b, "the two keys spent differently");
    let rows_b = b["requests"].as_array().unwrap();
    for r in rows_b {
        assert_eq!(r["key"], "key-b", "{r}");
        assert!(!ids_a.iter().any(|id| r["id"] == id.as_str()), "{r}");
    }
    for r in rows_a {
        assert_eq!(r["key"], "key-a", "{r}");
        assert!(!ids_b.iter().any(|id| r["id"] == id.as_str()), "{r}");
    }
    // No parameter can name another key.
    for q in ["?key=key-b", "?limit=5&key=key-b", "?team=search"] {
        let r = usage(&gw, KEY_A, q);
        assert_eq!(r.status, 400, "{q}: {}", r.text());
        assert_eq!(r.error_code(), "invalid_value");
    }

    // limit: 1..=50, default 20.
    let one = usage(&gw, KEY_A, "?limit=1").json();
    assert_eq!(one["requests"].as_array().unwrap().len(), 1);
    assert_eq!(one["requests"][0]["id"], ids_a[2].as_str());
    assert_eq!(
        usage(&gw, KEY_A, "?limit=50").json()["requests"]
            .as_array()
            .unwrap()
            .len(),
        3
    );
    for q in ["?limit=0", "?limit=51", "?limit=-1", "?limit=x", "?limit="] {
        let r = usage(&gw, KEY_A, q);
        assert_eq!(r.status, 400, "{q}: {}", r.text());
        assert_eq!(r.error_code(), "invalid_value", "{q}");
        assert_eq!(r.json()["error"]["type"], "invalid_request_error");
        assert!(r.header("x-request-id").is_some());
    }

    // Auth: exactly the data plane's.
    let mut c = Client::connect(gw.addr);
    for key in [Some("sk-nobody"), None] {
        let r = get(&mut c, "/v1/bursar/usage", key);
        assert_eq!(r.status, 401, "{}", r.text());
        assert_eq!(r.error_code(), "invalid_api_key");
    }
    // The connection goes on after a refusal; `/bursar/usage` works
    // without the `/v1` prefix, like the other routes.
    let r = get(&mut c, "/bursar/usage", Some(KEY_B));
    assert_eq!(r.status, 200, "{}", r.text());
    let r = c.post("/v1/bursar/usage", KEY_A, "{}", &[]);
    assert_eq!(r.status, 405, "{}", r.text());

    // Reading usage is neither charged nor logged.
    let before = admin(&gw, "/admin/spend/keys/key-a")["spent_usd"].clone();
    for _ in 0..3 {
        assert_eq!(usage(&gw, KEY_A, "").status, 200);
    }
    // Past several flush intervals: a logged read would be in the log now.
    std::thread::sleep(Duration::from_millis(400));
    let logged = admin(&gw, "/admin/logs?key=key-a&limit=100");
    assert_eq!(logged["data"].as_array().unwrap().len(), 3, "{logged}");
    assert_eq!(admin(&gw, "/admin/spend/keys/key-a")["spent_usd"], before);
    let again = usage(&gw, KEY_A, "").json();
    assert_eq!(again["budget"]["spent_usd"], before);
    assert_eq!(again["requests"].as_array().unwrap().len(), 3);
}

#[test]
fn usage_counts_against_the_keys_requests_per_minute() {
    let gw = Gateway::start(&config(LOG_ON), &[]);
    // The limit is per UTC minute: start well inside one, so the three
    // reads below fall in the same minute.
    let second = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        % 60;
    if second >= 50 {
        std::thread::sleep(Duration::from_secs(61 - second));
    }
    // Two a minute: the key's limiter counts usage reads like any request.
    let first = usage(&gw, KEY_LIMITED, "");
    let second = usage(&gw, KEY_LIMITED, "");
    let third = usage(&gw, KEY_LIMITED, "");
    assert_eq!(first.status, 200, "{}", first.text());
    assert_eq!(second.status, 200, "{}", second.text());
    assert_eq!(third.status, 429, "{}", third.text());
    assert_eq!(third.error_code(), "rate_limit_exceeded");
    assert!(third.header("retry-after").is_some());
    // A key without a budget: its spend, with no limit.
    let v = first.json();
    assert_eq!(v["budget"]["spent_usd"], "0", "{v}");
    assert_eq!(v["budget"]["limit_usd"], Value::Null, "{v}");
    assert_eq!(v["budget"]["reset_at"], Value::Null, "{v}");
    assert_eq!(v["budget"]["mode"], Value::Null, "{v}");
}

#[test]
fn with_the_log_off_usage_has_the_spend_and_no_requests() {
    let gw = Gateway::start(&config("[log]\nsink = \"off\""), &[]);
    traffic(&gw, KEY_A, 2, 4);
    let r = usage(&gw, KEY_A, "?limit=5");
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["requests_available"], false, "{v}");
    assert_eq!(v["requests"], serde_json::json!([]));
    assert_same_budget(&v["budget"], &admin(&gw, "/admin/spend/keys/key-a"));
    assert!(pico(v["budget"]["spent_usd"].as_str().unwrap()) > 0);
    // Bad limits are refused whether or not the log is on.
    assert_eq!(usage(&gw, KEY_A, "?limit=51").status, 400);
}

/// The query thread held with the debug builds' test gate: usage answers
/// without its requests (never waiting past its bound), the data plane never
/// takes the admin API's share of the query queue, and the share comes back.
#[cfg(debug_assertions)]
#[test]
fn a_busy_query_thread_leaves_the_requests_out_and_the_admin_share_alone() {
    let dir = util::TempDir::new("gw");
    let config_path = dir.0.join("bursar.toml");
    std::fs::write(&config_path, config(LOG_ON)).unwrap();
    let gate = dir.0.join("query-gate");
    let gw = Gateway::spawn_with(dir, config_path, &[], |cmd| {
        cmd.env(bursar::reqlog::reader::TEST_QUERY_GATE_ENV, &gate);
    });
    traffic(&gw, KEY_A, 1, 4);

    // More usage reads at once than the query thread's whole queue (and
    // the one it runs): without the data plane's share, they would fill it.
    let reads = bursar::reqlog::LOG_QUERIES_QUEUED_MAX + 2;
    let started = Instant::now();
    let mut clients: Vec<Client> = (0..reads)
        .map(|_| {
            let mut c = Client::connect(gw.addr);
            let auth = format!("Bearer {KEY_A}");
            c.send_raw(&util::format_request(
                "GET",
                "/v1/bursar/usage",
                &[("authorization", auth.as_str())],
                b"",
            ));
            c
        })
        .collect();
    // Once the first look-up is held at the gate and the workers have had
    // time to queue the rest (well within their 2 s bound), the admin API
    // still gets its query queued (held at the gate, not a 503 busy).
    let mut held = gate.clone().into_os_string();
    held.push(".waiting");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !std::path::Path::new(&held).exists() {
        assert!(Instant::now() < deadline, "no query reached the gate");
        std::thread::sleep(Duration::from_millis(5));
    }
    std::thread::sleep(Duration::from_millis(300));
    let mut waiting = Client::connect(gw.admin);
    let auth = format!("Bearer {ADMIN}");
    waiting.send_raw(&util::format_request(
        "GET",
        "/admin/logs?key=key-a",
        &[("authorization", auth.as_str())],
        b"",
    ));
    let answers: Vec<Value> = clients
        .iter_mut()
        .map(|c| {
            let r = c.read_response().expect("an answer");
            assert_eq!(r.status, 200, "{}", r.text());
            r.json()
        })
        .collect();
    // Every read was answered within its bound, with its spend and without
    // its requests.
    assert!(
        started.elapsed() < bursar::limits::USAGE_LOG_TIMEOUT + Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    for v in &answers {
        assert_eq!(v["requests_available"], false, "{v}");
        assert_eq!(v["requests"], serde_json::json!([]));
        assert!(pico(v["budget"]["spent_usd"].as_str().unwrap()) > 0, "{v}");
    }
    std::fs::write(&gate, b"").unwrap();
    let r = waiting.read_response().expect("the admin API's answer");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["data"].as_array().unwrap().len(), 1);
    // The timed-out look-ups gave their places back: the next read has its
    // requests again.
    let v = usage_with_rows(&gw, KEY_A, 1);
    assert_eq!(v["requests_available"], true);
}
