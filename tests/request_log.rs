//! The request log end to end: the real gateway writes one row per request
//! (SQLite by default, PostgreSQL when configured), attributed to key, team,
//! customer, provider, model and tags, with the exact cost the client was
//! told; the admin API reads it back, filtered, paged and aggregated.

mod util;

use std::time::{Duration, Instant};

use util::{counter, pico, proxy_config, Client, Gateway, Mock, Response, CHAT, CHAT_STREAM};

const ADMIN: &str = "admin-secret";

fn admin(gw: &Gateway, path: &str) -> Response {
    util::admin_get(gw, ADMIN, path)
}

fn config(base_url: &str, log: &str) -> String {
    proxy_config(
        base_url,
        &format!(
            r#"
[admin]
token = "{ADMIN}"
[[customers]]
name = "acme"
[[teams]]
name = "search"
customer = "acme"
[[virtual_keys]]
name = "search-prod"
team = "search"
key = "sk-search-prod"
budget = {{ limit_usd = "1", reset = "1d" }}
{log}
"#
        ),
    )
}

/// Polls `/admin/logs` until it holds `n` rows for `key`.
fn rows(gw: &Gateway, key: &str, n: usize) -> Vec<serde_json::Value> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = admin(gw, &format!("/admin/logs?key={key}&limit=100"));
        assert_eq!(r.status, 200, "{}", r.text());
        let data = r.json()["data"].as_array().unwrap().clone();
        if data.len() >= n || Instant::now() > deadline {
            assert_eq!(data.len(), n, "rows for {key}: {data:?}");
            return data;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn exercise(gw: &Gateway) {
    let mut c = Client::connect(gw.addr);
    let mut sent = Vec::new();
    // Tags from the header, the body's `user` and `metadata`.
    let tagged = r#"{"model":"gpt-4o-mini","max_tokens":5,"user":"u-42","metadata":{"feature":"ignored-by-header","ticket":"T-9"},"messages":[{"role":"user","content":"hello there"}]}"#;
    let r = c.post(
        "/v1/chat/completions",
        "sk-search-prod",
        tagged,
        &[("x-bursar-tags", "feature=search, env=prod")],
    );
    assert_eq!(r.status, 200, "{}", r.text());
    sent.push(r);
    // A stream without include_usage, one with it, one whose usage is omitted.
    let with_usage = r#"{"model":"gpt-4o-mini","stream":true,"stream_options":{"include_usage":true},"max_tokens":5,"messages":[{"role":"user","content":"hello there"}]}"#;
    for (body, headers) in [
        (CHAT_STREAM, vec![]),
        (with_usage, vec![]),
        (CHAT_STREAM, vec![("x-mock-omit-usage", "1")]),
    ] {
        let r = c.post("/v1/chat/completions", "sk-search-prod", body, &headers);
        assert_eq!(r.status, 200);
        sent.push(r);
    }
    // A refused request is logged too (no cost).
    let r = c.post(
        "/v1/chat/completions",
        "sk-search-prod",
        CHAT,
        &[("x-mock-status", "503")],
    );
    assert_eq!(r.status, 503);
    sent.push(r);
    // Bad tags: 400 before anything is forwarded (and logged with its status).
    let r = c.post(
        "/v1/chat/completions",
        "sk-search-prod",
        CHAT,
        &[("x-bursar-tags", "no-equals-sign")],
    );
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"]["code"], "invalid_tags");
    sent.push(r);

    let logged = rows(gw, "search-prod", sent.len());
    // Newest first: the reverse of the order sent.
    for (row, resp) in logged.iter().zip(sent.iter().rev()) {
        assert_eq!(
            row["id"].as_str(),
            resp.header("x-request-id"),
            "row id is the response's x-request-id"
        );
        assert_eq!(row["status"], resp.status);
        assert_eq!(row["key"], "search-prod");
        assert_eq!(row["team"], "search");
        assert_eq!(row["customer"], "acme");
        assert_eq!(row["model"], "gpt-4o-mini");
        match resp.cost_usd() {
            Some(cost) => assert_eq!(row["cost_usd"], cost, "{row}"),
            None => assert_eq!(row["cost_usd"], "0", "{row}"),
        }
        // No request here was answered from the cache.
        assert_eq!(row["avoided_usd"], "0", "{row}");
    }
    let [bad_tags, failed, omitted, streamed_with, streamed, tagged_row] = logged.as_slice() else {
        unreachable!()
    };
    assert_eq!(bad_tags["status"], 400);
    // Refused before routing: no provider, no price, no cost.
    assert_eq!(bad_tags["provider"], "", "{bad_tags}");
    assert_eq!(bad_tags["price_version"], "", "{bad_tags}");
    assert_eq!(bad_tags["ttfb_ms"], serde_json::Value::Null, "{bad_tags}");
    assert!(bad_tags["total_ms"].as_f64().is_some(), "{bad_tags}");
    assert_eq!(failed["status"], 503);
    assert_eq!(failed["provider"], "local");
    // Routed and priced, but nothing was charged.
    assert_eq!(failed["price_version"], "", "{failed}");
    // The provider's usage, exactly, whether or not the client asked for it.
    for row in [streamed, streamed_with, tagged_row] {
        assert_eq!(row["prompt_tokens"], 8, "{row}");
        assert_eq!(row["completion_tokens"], 5, "{row}");
        assert_eq!(row["estimated"], false, "{row}");
        assert_eq!(row["cost_usd"], "0.0000042");
    }
    assert_eq!(streamed["stream"], true);
    assert_eq!(omitted["estimated"], true, "{omitted}");
    // Without usage the gateway counts the text the client received.
    let text = util::sse_chat_text(&sent[3].body);
    assert_eq!(
        omitted["completion_tokens"],
        bursar::tokens::count_tokens(bursar::tokens::Encoding::O200kBase, &text),
        "{text:?}"
    );
    assert_eq!(tagged_row["price_version"], "2026-11-27.1+config");
    let (ttfb, total) = (
        tagged_row["ttfb_ms"].as_f64(),
        tagged_row["total_ms"].as_f64(),
    );
    assert!(ttfb.is_some() && total >= ttfb, "{tagged_row}");
    let tags = &tagged_row["tags"];
    assert_eq!(tags["feature"], "search", "the header wins: {tags}");
    assert_eq!(tags["env"], "prod");
    assert_eq!(tags["user"], "u-42");
    assert_eq!(tags["ticket"], "T-9");

    // Paging: two rows a page, following `next`.
    let page1 = admin(gw, "/admin/logs?key=search-prod&limit=2").json();
    let next = page1["next"].as_str().unwrap().to_string();
    let page2 = admin(
        gw,
        &format!("/admin/logs?key=search-prod&limit=2&before={next}"),
    )
    .json();
    assert_eq!(page1["data"][0]["id"], logged[0]["id"]);
    assert_eq!(page2["data"][0]["id"], logged[2]["id"]);

    // Spend by tag and by key: the exact sums.
    let total: i128 = logged
        .iter()
        .map(|r| pico(r["cost_usd"].as_str().unwrap()))
        .sum();
    let by_key = admin(gw, "/admin/spend/totals?group_by=key").json();
    let key_total = by_key["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["group"] == "search-prod")
        .unwrap();
    assert_eq!(pico(key_total["cost_usd"].as_str().unwrap()), total);
    assert_eq!(key_total["avoided_usd"], "0");
    assert_eq!(key_total["requests"], 6);
    let by_feature = admin(
        gw,
        "/admin/spend/series?group_by=tag&tag=feature&bucket=minute",
    )
    .json();
    let searched: Vec<_> = by_feature["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["group"] == "search")
        .collect();
    assert_eq!(searched.len(), 1, "{by_feature}");
    assert_eq!(searched[0]["cost_usd"], "0.0000042");
    assert_eq!(searched[0]["avoided_usd"], "0");
    assert_eq!(searched[0]["requests"], 1);
    let r = admin(gw, "/admin/spend/series?group_by=nonsense");
    assert_eq!(r.status, 400);
}

#[test]
fn the_sqlite_log_holds_every_request_exactly_and_survives_a_restart() {
    let mock = Mock::start(&[]);
    let gw = Gateway::start(&config(&mock.base_url(), ""), &[]);
    exercise(&gw);
    assert!(gw.dir.0.join("bursar-state/requests.sqlite").exists());
    assert!(counter(&gw, "bursar_log_rows_written_total") >= 6);
    assert_eq!(counter(&gw, "bursar_log_rows_dropped_total"), 0);
    // A clean restart keeps every row (and the queue is flushed on SIGTERM).
    let mut c = Client::connect(gw.addr);
    assert_eq!(
        c.post("/v1/chat/completions", "sk-bursar-demo", CHAT, &[])
            .status,
        200
    );
    let gw = gw.stop_and_restart(&[]);
    rows(&gw, "search-prod", 6);
    rows(&gw, "demo", 1);
}

#[test]
fn the_postgres_log_holds_every_request_exactly() {
    let server = "postgres://postgres@127.0.0.1:5432";
    let name = format!(
        "bursar_e2e_{}_{}",
        std::process::id(),
        Instant::now().elapsed().as_nanos()
    );
    let mut pg = postgres::Client::connect(&format!("{server}/postgres"), postgres::NoTls)
        .expect("PostgreSQL on 127.0.0.1:5432 (scripts/ensure-postgres starts it)");
    pg.batch_execute(&format!("CREATE DATABASE {name}"))
        .unwrap();
    let mock = Mock::start(&[]);
    let gw = Gateway::start(
        &config(
            &mock.base_url(),
            &format!(
                "[log]\nsink = \"postgres\"\nurl = \"{server}/{name}\"\nflush_interval = \"50ms\""
            ),
        ),
        &[],
    );
    exercise(&gw);
    let mut db = postgres::Client::connect(&format!("{server}/{name}"), postgres::NoTls).unwrap();
    let n: i64 = db
        .query_one(
            "SELECT count(*) FROM requests WHERE key_name = 'search-prod'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(n, 6);
    drop(db);
    drop(gw);
    let _ = pg.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"));
}

/// Rows in the gateway's own SQLite log, as its writer stores them: cache
/// hits (cost 0) with the spend they avoided, and a miss that cost $1.
fn store_hits(gw: &Gateway, key: &str, time_ms: i64) -> Vec<bursar::reqlog::LogRow> {
    use bursar::reqlog::{CacheStatus, LogConfig, LogRow, LogStore};
    let row = |n: u32, cache_status, cost, avoided| LogRow {
        id: format!("req_{n:028x}"),
        time_ms: time_ms + i64::from(n),
        key: key.into(),
        team: None,
        customer: None,
        provider: "local".into(),
        model: "gpt-4o-mini".into(),
        endpoint: "chat/completions".into(),
        status: 200,
        prompt_tokens: 8,
        completion_tokens: 5,
        cached_tokens: 0,
        cache_write_tokens: 0,
        reasoning_tokens: 0,
        cost_picodollars: cost,
        avoided_picodollars: avoided,
        price_version: "2026-11-27.1+config".into(),
        estimated: false,
        ttfb_us: Some(10),
        total_us: 20,
        cache_status,
        stream: false,
        tags: vec![("feature".into(), "faq".into())],
        prompt_text: None,
        completion_text: None,
    };
    let rows = vec![
        row(1, CacheStatus::Hit, 0, 4_200_000),
        // Beyond i64 picodollars: the sum stays exact.
        row(2, CacheStatus::Hit, 0, 10_000_000_000_000_000_000_000),
        row(3, CacheStatus::Miss, 1_000_000_000_000, 0),
    ];
    let mut store: Box<dyn LogStore> = LogConfig::default()
        .open_store(&gw.dir.0.join("bursar-state"))
        .unwrap();
    assert_eq!(store.insert_batch(&rows, &mut || {}).unwrap(), 3);
    rows
}

#[test]
fn the_spend_cache_hits_avoided_is_reported_beside_the_cost() {
    let mock = Mock::start(&[]);
    let gw = Gateway::start(&config(&mock.base_url(), ""), &[]);
    // 2026-11-27T00:00:00Z, inside the ranges asked below.
    let t0: i64 = 1_795_737_600_000;
    let hits = store_hits(&gw, "cached-key", t0);
    let logged = rows(&gw, "cached-key", 3);
    let avoided: Vec<&str> = logged
        .iter()
        .map(|r| r["avoided_usd"].as_str().unwrap())
        .collect();
    assert_eq!(avoided, ["0", "10000000000", "0.0000042"]);
    assert_eq!(logged[1]["cost_usd"], "0");
    assert_eq!(logged[1]["cache"], "hit");
    let range = format!("from={t0}&to={}", t0 + 86_400_000);
    let totals = admin(
        &gw,
        &format!("/admin/spend/totals?group_by=key&key=cached-key&{range}"),
    );
    assert_eq!(totals.status, 200, "{}", totals.text());
    let totals = totals.json();
    let data = totals["data"].as_array().unwrap();
    assert_eq!(data.len(), 1, "{totals}");
    assert_eq!(data[0]["group"], "cached-key");
    assert_eq!(data[0]["requests"], 3);
    assert_eq!(data[0]["cost_usd"], "1");
    assert_eq!(data[0]["avoided_usd"], "10000000000.0000042");
    let want: i128 = hits.iter().map(|r| r.avoided_picodollars).sum();
    assert_eq!(pico(data[0]["avoided_usd"].as_str().unwrap()), want);
    let series = admin(
        &gw,
        &format!("/admin/spend/series?group_by=tag&tag=feature&bucket=day&key=cached-key&{range}"),
    );
    assert_eq!(series.status, 200, "{}", series.text());
    let series = series.json();
    let points = series["data"].as_array().unwrap();
    assert_eq!(points.len(), 1, "{series}");
    assert_eq!(points[0]["group"], "faq");
    assert_eq!(points[0]["cost_usd"], "1");
    assert_eq!(points[0]["avoided_usd"], "10000000000.0000042");
}

#[test]
fn the_log_can_be_turned_off() {
    let mock = Mock::start(&[]);
    let gw = Gateway::start(&config(&mock.base_url(), "[log]\nsink = \"off\""), &[]);
    let mut c = Client::connect(gw.addr);
    assert_eq!(
        c.post("/v1/chat/completions", "sk-search-prod", CHAT, &[])
            .status,
        200
    );
    let r = admin(&gw, "/admin/logs");
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["error"]["code"], "log_disabled");
    assert!(!gw.dir.0.join("bursar-state/requests.sqlite").exists());
}
