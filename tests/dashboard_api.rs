//! The admin API calls the dashboard is built on, end to end (the real
//! gateway, the real mock upstream, the SQLite request log):
//! `GET /admin/budgets` (every budget, its view equal to the spend route's,
//! burn rate and projection, at-risk first, filters and bounds), the top
//! spenders (`/admin/spend/totals?order=cost&limit=N`) and a series folded
//! beyond its top groups (`top=N`).

mod util;

use std::time::{Duration, Instant};

use util::{pico, proxy_config, Client, Gateway, Mock, Response, CHAT};

const ADMIN: &str = "admin-secret";

fn admin(gw: &Gateway, path: &str) -> Response {
    util::admin_get(gw, ADMIN, path)
}

fn ok(gw: &Gateway, path: &str) -> serde_json::Value {
    let r = admin(gw, path);
    assert_eq!(r.status, 200, "{path}: {}", r.text());
    r.json()
}

/// gpt-4o-mini at $0.15 / $0.60 per million tokens; the mock bills CHAT as
/// 8 prompt and 5 completion tokens.
const CHAT_COST_PICO: i128 = 8 * 150_000 + 5 * 600_000;

fn config(base_url: &str) -> String {
    proxy_config(
        base_url,
        &format!(
            r#"
[admin]
token = "{ADMIN}"

[[customers]]
name = "acme"
budget = {{ limit_usd = "100", reset = "1M" }}

[[teams]]
name = "search"
customer = "acme"
budget = {{ limit_usd = "50", reset = "1d" }}

[[virtual_keys]]
name = "big"
team = "search"
key = "sk-big-spender"
budget = {{ limit_usd = "10", reset = "1d" }}

[[virtual_keys]]
name = "tiny"
team = "search"
key = "sk-tiny-key"
budget = {{ limit_usd = "0.00004" }}
model_budgets = [ {{ model = "gpt-4o-mini", limit_usd = "1", reset = "1d" }} ]

[[virtual_keys]]
name = "unbudgeted"
key = "sk-unbudgeted"

[[model_budgets]]
model = "gpt-4o-mini"
budget = {{ limit_usd = "1000", reset = "1d" }}

[[tag_budgets]]
tag = "env=prod"
budget = {{ limit_usd = "5", reset = "1h" }}
"#
        ),
    )
}

/// Waits until the request log holds `n` rows.
fn wait_rows(gw: &Gateway, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let data = ok(gw, "/admin/logs?limit=100");
        let have = data["data"].as_array().unwrap().len();
        if have >= n {
            assert_eq!(have, n);
            return;
        }
        assert!(Instant::now() < deadline, "{have} of {n} rows");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn budgets_lists_every_budget_with_its_view_at_risk_first() {
    let mock = Mock::start(&[]);
    let gw = Gateway::start(&config(&mock.base_url()), &[]);
    let mut c = Client::connect(gw.addr);
    for _ in 0..3 {
        let r = c.post(
            "/v1/chat/completions",
            "sk-big-spender",
            CHAT,
            &[("x-bursar-tags", "env=prod")],
        );
        assert_eq!(r.status, 200, "{}", r.text());
    }
    // tiny's prepaid budget is spent until its next chat's worst case no
    // longer fits: a 402.
    let mut sent = 3;
    loop {
        let r = c.post("/v1/chat/completions", "sk-tiny-key", CHAT, &[]);
        sent += 1;
        if r.status == 402 {
            break;
        }
        assert_eq!(r.status, 200, "{}", r.text());
        assert!(sent < 20, "tiny's budget never ran out");
    }
    wait_rows(&gw, sent);

    let list = ok(&gw, "/admin/budgets");
    let data = list["data"].as_array().unwrap();
    let names: Vec<(String, String)> = data
        .iter()
        .map(|b| {
            (
                b["kind"].as_str().unwrap().to_string(),
                b["name"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    // Every budget the config has, and nothing without one.
    let mut sorted = names.clone();
    sorted.sort();
    let want: Vec<(String, String)> = [
        ("customer", "acme"),
        ("key", "big"),
        ("key", "tiny"),
        ("key_model", "tiny/gpt-4o-mini"),
        ("model", "gpt-4o-mini"),
        ("tag", "env=prod"),
        ("team", "search"),
    ]
    .iter()
    .map(|(k, n)| (k.to_string(), n.to_string()))
    .collect();
    assert_eq!(sorted, want, "{list}");
    assert_eq!(list["total"], 7);
    assert_eq!(list["truncated"], false);

    // Each row's view is the spend route's.
    for b in data {
        let (kind, name) = (b["kind"].as_str().unwrap(), b["name"].as_str().unwrap());
        let path = match kind {
            "customer" => format!("/admin/spend/customers/{name}"),
            "team" => format!("/admin/spend/teams/{name}"),
            "key" => format!("/admin/spend/keys/{name}"),
            "model" => format!("/admin/spend/models/{name}"),
            "tag" => format!("/admin/spend/tags/{name}"),
            "key_model" => {
                let (o, m) = name.split_once('/').unwrap();
                format!("/admin/spend/keys/{o}/models/{m}")
            }
            other => panic!("unexpected kind {other}"),
        };
        let view = ok(&gw, &path);
        for field in [
            "spent_usd",
            "limit_usd",
            "remaining_usd",
            "reset_at",
            "period_start",
        ] {
            assert_eq!(b[field], view[field], "{kind} {name} {field}");
        }
        assert!(b["at_risk"].is_boolean());
        assert!(b["series"]["path"]
            .as_str()
            .unwrap()
            .starts_with("/admin/spend/series?"));
    }

    // big spent 3 chats; its last hour's burn is exactly that, per hour.
    let big = data.iter().find(|b| b["name"] == "big").unwrap();
    assert_eq!(pico(big["spent_usd"].as_str().unwrap()), 3 * CHAT_COST_PICO);
    assert_eq!(big["burn_basis"], "last_hour");
    assert_eq!(
        pico(big["burn_usd_per_hour"].as_str().unwrap()),
        3 * CHAT_COST_PICO
    );
    // $10 at $0.0000126 an hour lasts decades, long past its daily reset:
    // not at risk, but projected.
    assert_eq!(big["at_risk"], false, "{big}");
    assert!(big["projected_exhaustion"].is_string());
    // The tag's budget saw the same three chats.
    let tag = data.iter().find(|b| b["name"] == "env=prod").unwrap();
    assert_eq!(
        pico(tag["burn_usd_per_hour"].as_str().unwrap()),
        3 * CHAT_COST_PICO
    );

    // tiny would run out within minutes at its last hour's rate, and never
    // resets: at risk, first.
    assert_eq!(names[0], ("key".to_string(), "tiny".to_string()), "{list}");
    assert_eq!(data[0]["at_risk"], true);
    let at_risk = list["at_risk"].as_u64().unwrap() as usize;
    assert!(data[..at_risk].iter().all(|b| b["at_risk"] == true));
    assert!(data[at_risk..].iter().all(|b| b["at_risk"] == false));

    // One kind; a bounded page; bad parameters are 400s.
    let keys = ok(&gw, "/admin/budgets?kind=key");
    assert_eq!(keys["data"].as_array().unwrap().len(), 2);
    let one = ok(&gw, "/admin/budgets?limit=1");
    assert_eq!(one["data"].as_array().unwrap().len(), 1);
    assert_eq!(one["total"], 7);
    for bad in [
        "kind=bogus",
        "limit=0",
        "limit=1001",
        "limit=x",
        "color=red",
    ] {
        let r = admin(&gw, &format!("/admin/budgets?{bad}"));
        assert_eq!(r.status, 400, "{bad}: {}", r.text());
        assert_eq!(r.json()["error"]["code"], "invalid_value");
    }
    let r = util::admin_request(&gw, ADMIN, "POST", "/admin/budgets", "{}");
    assert_eq!(r.status, 405);
    let r = util::admin_get(&gw, "wrong-token", "/admin/budgets");
    assert_eq!(r.status, 401);
}

#[test]
fn top_spenders_and_series_folded_beyond_the_top() {
    let mock = Mock::start(&[]);
    let gw = Gateway::start(&config(&mock.base_url()), &[]);
    let mut c = Client::connect(gw.addr);
    // big: 3 chats, unbudgeted: 2, demo: 1.
    for (key, n) in [
        ("sk-big-spender", 3),
        ("sk-unbudgeted", 2),
        ("sk-bursar-demo", 1),
    ] {
        for _ in 0..n {
            assert_eq!(c.post("/v1/chat/completions", key, CHAT, &[]).status, 200);
        }
    }
    wait_rows(&gw, 6);
    let top = ok(&gw, "/admin/spend/totals?group_by=key&order=cost&limit=2");
    let groups: Vec<(&str, i128)> = top["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| {
            (
                g["group"].as_str().unwrap(),
                pico(g["cost_usd"].as_str().unwrap()),
            )
        })
        .collect();
    assert_eq!(
        groups,
        vec![
            ("big", 3 * CHAT_COST_PICO),
            ("unbudgeted", 2 * CHAT_COST_PICO)
        ]
    );

    let series = ok(&gw, "/admin/spend/series?group_by=key&bucket=day&top=1");
    let points = series["data"].as_array().unwrap();
    let total: i128 = points
        .iter()
        .map(|p| pico(p["cost_usd"].as_str().unwrap()))
        .sum();
    assert_eq!(
        total,
        6 * CHAT_COST_PICO,
        "folding keeps every bucket's sum"
    );
    let mut names: Vec<&str> = points
        .iter()
        .map(|p| p["group"].as_str().unwrap())
        .collect();
    names.sort();
    names.dedup();
    assert_eq!(names, vec!["(other)", "big"]);
    let other: i128 = points
        .iter()
        .filter(|p| p["group"] == "(other)")
        .map(|p| pico(p["cost_usd"].as_str().unwrap()))
        .sum();
    assert_eq!(other, 3 * CHAT_COST_PICO);
    let requests: u64 = points.iter().map(|p| p["requests"].as_u64().unwrap()).sum();
    assert_eq!(requests, 6);

    for bad in ["order=name", "limit=0", "limit=1001"] {
        let r = admin(&gw, &format!("/admin/spend/totals?{bad}"));
        assert_eq!(r.status, 400, "{bad}: {}", r.text());
    }
    let r = admin(&gw, "/admin/spend/series?top=0");
    assert_eq!(r.status, 400, "{}", r.text());
}

#[test]
fn one_request_by_id_and_the_overview_totals() {
    let mock = Mock::start(&[]);
    let gw = Gateway::start(&config(&mock.base_url()), &[]);
    let mut c = Client::connect(gw.addr);
    for _ in 0..2 {
        assert_eq!(
            c.post("/v1/chat/completions", "sk-big-spender", CHAT, &[])
                .status,
            200
        );
    }
    // An error row: a model the key may not use is refused and logged.
    let bad = CHAT.replace("gpt-4o-mini", "no-such-model");
    let r = c.post("/v1/chat/completions", "sk-big-spender", &bad, &[]);
    assert!(r.status >= 400, "{}", r.text());
    wait_rows(&gw, 3);

    let page = ok(&gw, "/admin/logs?limit=10");
    for row in page["data"].as_array().unwrap() {
        let id = row["id"].as_str().unwrap();
        assert_eq!(&ok(&gw, &format!("/admin/logs/{id}")), row, "{id}");
    }
    let r = admin(&gw, "/admin/logs/req_00000000000000000000000000ff");
    assert_eq!(r.status, 404, "{}", r.text());
    assert_eq!(r.json()["error"]["code"], "not_found");
    let r = admin(&gw, &format!("/admin/logs/{}", "x".repeat(129)));
    assert_eq!(r.status, 400, "{}", r.text());
    let r = util::admin_request(&gw, ADMIN, "DELETE", "/admin/logs/x", "");
    assert_eq!(r.status, 405);

    // group_by=none: one group with the range's totals, errors counted.
    let totals = ok(&gw, "/admin/spend/totals?group_by=none");
    let data = totals["data"].as_array().unwrap();
    assert_eq!(data.len(), 1, "{totals}");
    assert_eq!(data[0]["group"], "");
    assert_eq!(data[0]["requests"], 3);
    assert_eq!(data[0]["errors"], 1);
    assert_eq!(data[0]["cache_hits"], 0);
    assert_eq!(
        pico(data[0]["cost_usd"].as_str().unwrap()),
        2 * CHAT_COST_PICO
    );
    // And it is the sum of any grouping.
    let by_model = ok(&gw, "/admin/spend/totals?group_by=model");
    let sum: i128 = by_model["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| pico(g["cost_usd"].as_str().unwrap()))
        .sum();
    assert_eq!(sum, 2 * CHAT_COST_PICO);
    // Filters by provider and tag.
    let local = ok(&gw, "/admin/spend/totals?group_by=none&provider=local");
    assert_eq!(
        pico(local["data"][0]["cost_usd"].as_str().unwrap()),
        2 * CHAT_COST_PICO
    );
    let tagged = ok(&gw, "/admin/spend/totals?group_by=none&tag=env=prod");
    assert_eq!(tagged["data"].as_array().unwrap().len(), 0, "{tagged}");
    let r = admin(&gw, "/admin/spend/totals?tag=novalue");
    assert_eq!(r.status, 400);
}
