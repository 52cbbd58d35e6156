//! The books end to end: the real gateway, the real mock upstream, real
//! sockets. Budgets refuse with 402 before money is spent; every response
//! carries the exact cost charged; the ledger's total equals the sum of what
//! clients were told, under concurrency and across SIGKILL.

mod util;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use util::{counter, pico, proxy_config, Client, Gateway, Mock, Response, CHAT, CHAT_STREAM};

const ADMIN: &str = "admin-secret";

/// gpt-4o-mini at the shipped table's $0.15 / $0.60 per million tokens; the
/// mock bills CHAT (and CHAT_STREAM) as 3 + (3 + 2) = 8 prompt tokens and
/// max_tokens = 5 completion tokens: 8 × 0.15 µ$ + 5 × 0.60 µ$ = $0.0000042.
const CHAT_COST_PICO: i128 = 8 * 150_000 + 5 * 600_000;

fn admin(gw: &Gateway, method: &str, path: &str, body: &str) -> Response {
    util::admin_request(gw, ADMIN, method, path, body)
}

fn spent(gw: &Gateway, kind: &str, name: &str) -> i128 {
    util::spent_at(gw, ADMIN, &format!("{kind}/{name}"))
}

fn governed(base_url: &str, key_budget: &str, workers: usize) -> String {
    proxy_config(
        base_url,
        &format!(
            r#"
[admin]
token = "{ADMIN}"

[[customers]]
name = "acme"
budget = {{ limit_usd = "100", reset = "1M", calendar_aligned = true }}

[[teams]]
name = "search"
customer = "acme"
budget = {{ limit_usd = "50", reset = "1d" }}

[[virtual_keys]]
name = "search-prod"
team = "search"
key = "sk-search-prod"
budget = {key_budget}
"#
        ),
    )
    .replace("workers = 2", &format!("workers = {workers}"))
}

#[test]
fn strict_budget_charges_exactly_and_refuses_with_402_before_overspending() {
    let mock = Mock::start(&[]);
    let limit = "0.0001"; // 100 µ$: room for a handful of 4.2 µ$ requests
    let gw = Gateway::start(
        &governed(
            &mock.base_url(),
            &format!(r#"{{ limit_usd = "{limit}", reset = "1h" }}"#),
            2,
        ),
        &[],
    );
    let mut c = Client::connect(gw.addr);
    let mut charged = 0i128;
    let mut ok = 0;
    let refusal = loop {
        let r = c.post("/v1/chat/completions", "sk-search-prod", CHAT, &[]);
        if r.status != 200 {
            break r;
        }
        ok += 1;
        let cost = pico(r.header("x-bursar-cost-usd").expect("cost header"));
        assert_eq!(cost, CHAT_COST_PICO, "exact cost from the provider's usage");
        charged += cost;
        let remaining = pico(
            r.header("x-bursar-budget-remaining-usd")
                .expect("remaining"),
        );
        assert!(
            remaining <= pico(limit) - charged,
            "remaining {remaining} after {charged}"
        );
        assert!(ok < 100, "the budget never refused");
    };
    assert_eq!(refusal.status, 402, "{}", refusal.text());
    let e = &refusal.json()["error"];
    assert_eq!(e["type"], "budget_exceeded");
    assert_eq!(e["code"], "budget_exceeded");
    assert_eq!(e["entity_kind"], "key");
    assert_eq!(e["entity"], "search-prod");
    assert_eq!(e["limit_usd"], limit);
    assert_eq!(pico(e["spent_usd"].as_str().unwrap()), charged);
    // A rolling hourly budget: the period ends within the hour.
    let reset_at = e["reset_at"].as_str().unwrap();
    assert!(reset_at.len() == 24 && reset_at.ends_with('Z'), "{e}");
    // The refusal left the worst case unspent: strict never overshoots.
    assert!(charged <= pico(limit));
    assert!(ok >= 10, "only {ok} requests fit a budget for ~23");
    // Every level was charged the same, and the ledger agrees to the unit.
    assert_eq!(spent(&gw, "keys", "search-prod"), charged);
    assert_eq!(spent(&gw, "teams", "search"), charged);
    assert_eq!(spent(&gw, "customers", "acme"), charged);
    assert_eq!(spent(&gw, "providers", "local"), charged);
    let view = admin(&gw, "GET", "/admin/spend/keys/search-prod", "").json();
    assert_eq!(view["limit_usd"], limit);
    assert_eq!(
        pico(view["remaining_usd"].as_str().unwrap()),
        pico(limit) - charged
    );
    assert_eq!(view["mode"], "strict");
    // Other keys of the same customer are unaffected.
    let r = c.post("/v1/chat/completions", "sk-bursar-demo", CHAT, &[]);
    assert_eq!(r.status, 200);
    assert_eq!(gw.metric_sum("bursar_budget_refused_total"), 1);
}

#[test]
fn streams_are_charged_in_a_trailer_and_a_missing_usage_is_never_free() {
    let mock = Mock::start(&[]);
    let gw = Gateway::start(
        &governed(&mock.base_url(), r#"{ limit_usd = "1", reset = "1d" }"#, 1),
        &[],
    );
    let mut c = Client::connect(gw.addr);
    let r = c.post("/v1/chat/completions", "sk-search-prod", CHAT_STREAM, &[]);
    assert_eq!(r.status, 200);
    assert!(
        r.header("x-bursar-cost-usd").is_none(),
        "not known at the head"
    );
    assert_eq!(
        pico(r.trailer("x-bursar-cost-usd").unwrap()),
        CHAT_COST_PICO
    );
    assert!(r.trailer("x-bursar-budget-remaining-usd").is_some());
    let mut total = CHAT_COST_PICO;
    // The upstream omits usage: the gateway counts the text (estimated), and
    // the charge is not zero.
    let r = c.post(
        "/v1/chat/completions",
        "sk-search-prod",
        CHAT_STREAM,
        &[("x-mock-omit-usage", "1")],
    );
    assert_eq!(r.status, 200);
    let estimated = pico(r.trailer("x-bursar-cost-usd").unwrap());
    assert!(estimated > 0, "an omitted usage is never charged $0");
    total += estimated;
    // A non-streamed answer without usage is charged its bound.
    let r = c.post(
        "/v1/chat/completions",
        "sk-search-prod",
        CHAT,
        &[("x-mock-omit-usage", "1")],
    );
    assert_eq!(r.status, 200);
    let bound = pico(r.header("x-bursar-cost-usd").unwrap());
    assert!(bound >= CHAT_COST_PICO, "{bound}");
    total += bound;
    // An upstream error without usage costs nothing.
    let r = c.post(
        "/v1/chat/completions",
        "sk-search-prod",
        CHAT,
        &[("x-mock-status", "500")],
    );
    assert_eq!(r.status, 500);
    assert!(r.header("x-bursar-cost-usd").is_none());
    assert_eq!(spent(&gw, "keys", "search-prod"), total);
}

#[test]
fn a_request_without_an_output_cap_is_capped_and_degraded_to_fit() {
    let mock = Mock::start(&[]);
    // 200 µ$ left: a 16384-token default cap (~9.8 m$) does not fit, a lower one does.
    let gw = Gateway::start(
        &governed(&mock.base_url(), r#"{ limit_usd = "0.0002" }"#, 1),
        &[],
    );
    let mut c = Client::connect(gw.addr);
    let body = r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hello there"}]}"#;
    let r = c.post("/v1/chat/completions", "sk-search-prod", body, &[]);
    // The mock writes exactly the cap's words: the lowered cap reached it.
    util::cap_lowered(&r);
    let cost = pico(r.header("x-bursar-cost-usd").unwrap());
    assert!(cost <= pico("0.0002"));
    assert_eq!(spent(&gw, "keys", "search-prod"), cost);
    assert_eq!(gw.metric_sum("bursar_budget_degraded_total"), 1);
}

/// The issue's concurrency test: hundreds of concurrent requests, streamed
/// and not, across both workers, against a budget that allows a fraction of
/// them. The sum of charges never exceeds the limit, and equals the ledger's.
#[test]
fn concurrent_requests_never_overspend_a_strict_budget_and_the_books_balance() {
    let mock = Mock::start(&[]);
    let limit = "0.0005"; // ~119 requests' worth of 4.2 µ$
    let gw = Gateway::start(
        &governed(
            &mock.base_url(),
            &format!(r#"{{ limit_usd = "{limit}", reset = "1d" }}"#),
            2,
        ),
        &[],
    );
    let threads = 48;
    let per_thread = 8; // 384 requests in all
    let costs = Arc::new(Mutex::new(Vec::new()));
    let statuses = Arc::new(Mutex::new(Vec::new()));
    let addr = gw.addr;
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let costs = Arc::clone(&costs);
            let statuses = Arc::clone(&statuses);
            std::thread::spawn(move || {
                let mut c = Client::connect(addr);
                for i in 0..per_thread {
                    let body = if (t + i) % 2 == 0 { CHAT } else { CHAT_STREAM };
                    let r = c.post(
                        "/v1/chat/completions",
                        "sk-search-prod",
                        body,
                        &[("x-mock-delay-ms", "5")],
                    );
                    statuses.lock().unwrap().push(r.status);
                    if r.status == 200 {
                        let cost = r.cost_usd().expect("a 200 carries its cost");
                        costs.lock().unwrap().push(pico(cost));
                    } else {
                        assert_eq!(r.status, 402, "{}", r.text());
                    }
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    let costs = costs.lock().unwrap();
    let statuses = statuses.lock().unwrap();
    let total: i128 = costs.iter().sum();
    let refused = statuses.iter().filter(|&&s| s == 402).count();
    assert_eq!(statuses.len(), threads * per_thread);
    assert!(costs.iter().all(|&c| c == CHAT_COST_PICO));
    assert!(total <= pico(limit), "overspent: {total} > {}", pico(limit));
    assert!(refused > 0, "the budget allowed everything");
    assert!(
        costs.len() >= 60,
        "only {} of ~119 affordable requests were admitted",
        costs.len()
    );
    // Every charge is in the ledger exactly once, at every level.
    assert_eq!(spent(&gw, "keys", "search-prod"), total);
    assert_eq!(spent(&gw, "teams", "search"), total);
    assert_eq!(spent(&gw, "customers", "acme"), total);
    // No strict charge went beyond its lease; the ledger refused no settle.
    assert_eq!(counter(&gw, "bursar_budget_overruns_total"), 0);
    assert_eq!(counter(&gw, "bursar_ledger_ring_rejected_total"), 0);
    assert!(counter(&gw, "bursar_ledger_ring_settles_total") >= costs.len() as u64);
    // Both workers admitted against their own leases.
    let accepted = util::per_worker(&gw.metrics(), "bursar_connections_accepted_total");
    assert!(accepted.iter().all(|&n| n > 0), "{accepted:?}");
}

/// SIGKILL under load, restart: the ledger holds every charge a client saw
/// (and no charge twice). A client has at most one request in flight, so the
/// ledger may also hold, per client, one charge whose response was cut by
/// the kill: settled before its last bytes were written, as designed.
#[test]
fn sigkill_under_load_loses_no_charge_a_client_saw() {
    let mock = Mock::start(&[]);
    let gw = Gateway::start(
        &governed(&mock.base_url(), r#"{ limit_usd = "10", reset = "1d" }"#, 2),
        &[],
    );
    let threads = 16;
    let load = util::LoadUntilCut::start(gw.addr, threads, "sk-search-prod", &[], |t| {
        if t % 2 == 0 {
            CHAT
        } else {
            CHAT_STREAM
        }
    });
    std::thread::sleep(Duration::from_millis(1500));
    let gw = gw.kill_and_restart(&[]);
    let seen = load.stop();
    assert!(seen > 100 * CHAT_COST_PICO, "too little load: {seen}");
    let booked = spent(&gw, "keys", "search-prod");
    assert!(
        booked >= seen,
        "lost charges: booked {booked} < seen {seen}"
    );
    let extra = booked - seen;
    assert_eq!(extra % CHAT_COST_PICO, 0, "a partial charge: {extra}");
    assert!(
        extra / CHAT_COST_PICO <= threads as i128,
        "more settled-but-unseen charges ({}) than requests in flight",
        extra / CHAT_COST_PICO
    );
    assert_eq!(spent(&gw, "teams", "search"), booked);
    // A clean restart changes nothing.
    let gw = gw.stop_and_restart(&[]);
    assert_eq!(spent(&gw, "keys", "search-prod"), booked);
}

#[test]
fn the_admin_api_manages_entities_that_survive_restarts_and_says_who_wins() {
    let mock = Mock::start(&[]);
    let gw = Gateway::start(
        &governed(&mock.base_url(), r#"{ limit_usd = "1", reset = "1d" }"#, 1),
        &[],
    );
    // Auth.
    let mut c = Client::connect(gw.admin);
    assert_eq!(c.request("GET", "/admin/keys", &[], b"").status, 401);
    let r = c.request(
        "GET",
        "/admin/keys",
        &[("authorization", "Bearer wrong")],
        b"",
    );
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["error"]["type"], "invalid_request_error");

    // Create a team and a prepaid key under it; the secret comes back once.
    let r = admin(
        &gw,
        "POST",
        "/admin/teams",
        r#"{"name":"ml","customer":"acme","budget":{"limit_usd":"2","reset":"1M","calendar_aligned":true}}"#,
    );
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.json()["source"], "api");
    let r = admin(
        &gw,
        "POST",
        "/admin/keys",
        r#"{"name":"ml-batch","team":"ml","budget":{"limit_usd":"0.000025"}}"#,
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let secret = r.json()["key"].as_str().unwrap().to_string();
    assert!(secret.starts_with("sk-bursar-"), "{secret}");
    assert!(r.json()["key_sha256"].as_str().is_some());
    let r = admin(&gw, "GET", "/admin/keys/ml-batch", "");
    assert!(r.json().get("key").is_none(), "the secret is shown once");
    assert_eq!(
        admin(&gw, "POST", "/admin/keys", r#"{"name":"ml-batch"}"#).status,
        409
    );
    let r = admin(&gw, "POST", "/admin/keys", r#"{"name":"x","team":"nope"}"#);
    assert_eq!(r.status, 400);
    assert!(r.text().contains("nope"), "{}", r.text());

    // The new key works at once. Its prepaid 25 µ$ allows two requests: each
    // reserves its worst case (~17 µ$: every body byte an input token) and
    // is charged 4.2 µ$, so a third finds 16.6 µ$ left, short of the bound.
    let mut p = Client::connect(gw.addr);
    for _ in 0..2 {
        let r = p.post("/v1/chat/completions", &secret, CHAT, &[]);
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let r = p.post("/v1/chat/completions", &secret, CHAT, &[]);
    assert_eq!(r.status, 402);
    assert!(r.json()["error"]["reset_at"].is_null(), "prepaid: no reset");
    let view = admin(&gw, "GET", "/admin/spend/keys/ml-batch", "").json();
    assert_eq!(
        pico(view["spent_usd"].as_str().unwrap()),
        2 * CHAT_COST_PICO
    );
    assert!(view["reset_at"].is_null());
    // A top-up lets it through again.
    let r = admin(
        &gw,
        "POST",
        "/admin/keys/ml-batch/top-up",
        r#"{"amount_usd":"0.00001"}"#,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["limit_usd"], "0.000035");
    assert_eq!(
        p.post("/v1/chat/completions", &secret, CHAT, &[]).status,
        200
    );

    // PATCH a file-defined key: the API's definition wins, and says so.
    let r = admin(
        &gw,
        "PATCH",
        "/admin/keys/search-prod",
        r#"{"budget":{"limit_usd":"0.000001","reset":"1h"}}"#,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["source"], "api");
    assert_eq!(r.json()["overrides_file"], true);
    let r = p.post("/v1/chat/completions", "sk-search-prod", CHAT, &[]);
    assert_eq!(r.status, 402, "the lowered limit applies at once");
    // Reset now: spend starts over (still too small for one request).
    let r = admin(&gw, "POST", "/admin/keys/search-prod/reset", "");
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["spent_usd"], "0");

    // Everything survives a restart.
    let gw = gw.stop_and_restart(&[]);
    let r = admin(&gw, "GET", "/admin/keys/search-prod", "");
    assert_eq!(r.json()["overrides_file"], true);
    assert_eq!(r.json()["budget"]["limit_usd"], "0.000001");
    let view = admin(&gw, "GET", "/admin/spend/keys/ml-batch", "").json();
    assert_eq!(
        pico(view["spent_usd"].as_str().unwrap()),
        3 * CHAT_COST_PICO
    );
    // 35 µ$ with 12.6 spent: two more fit (22.4 and 18.2 left), not a third.
    let mut p = Client::connect(gw.addr);
    for expected in [200, 200, 402] {
        assert_eq!(
            p.post("/v1/chat/completions", &secret, CHAT, &[]).status,
            expected
        );
    }
    let list = admin(&gw, "GET", "/admin/keys", "").json();
    let names: Vec<&str> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["name"].as_str().unwrap())
        .collect();
    assert!(
        names.contains(&"ml-batch") && names.contains(&"demo"),
        "{names:?}"
    );

    // Providers: shown without credentials; only their budget changes here.
    let r = admin(&gw, "GET", "/admin/providers/local", "");
    assert_eq!(r.status, 200);
    assert!(!r.text().contains("sk-upstream-secret"), "{}", r.text());
    let r = admin(
        &gw,
        "PATCH",
        "/admin/providers/local",
        r#"{"budget":{"limit_usd":"3","reset":"1d","mode":"soft"}}"#,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["budget_source"], "api");
    let view = admin(&gw, "GET", "/admin/spend/providers/local", "").json();
    assert_eq!(view["limit_usd"], "3");
    assert_eq!(view["mode"], "soft");
    assert_eq!(
        admin(&gw, "PATCH", "/admin/providers/local", r#"{"api_key":"x"}"#).status,
        400
    );

    // DELETE: an override reverts to the file; a file-only entity is refused;
    // an API entity goes.
    let r = admin(&gw, "DELETE", "/admin/keys/search-prod", "");
    assert_eq!(r.json()["reverted_to_file"], true);
    assert_eq!(
        admin(&gw, "GET", "/admin/keys/search-prod", "").json()["source"],
        "file"
    );
    assert_eq!(
        p.post("/v1/chat/completions", "sk-search-prod", CHAT, &[])
            .status,
        200
    );
    assert_eq!(admin(&gw, "DELETE", "/admin/keys/demo", "").status, 409);
    assert_eq!(admin(&gw, "DELETE", "/admin/keys/ml-batch", "").status, 200);
    assert_eq!(
        p.post("/v1/chat/completions", &secret, CHAT, &[]).status,
        401
    );
    assert_eq!(admin(&gw, "GET", "/admin/keys/ml-batch", "").status, 404);
}

/// A client that leaves mid-stream is charged once, for what was generated up
/// to then (counted by the gateway: the provider's usage never came).
#[test]
fn a_client_leaving_mid_stream_is_charged_once_for_what_was_generated() {
    use std::io::{BufRead, Read};
    let mock = Mock::start(&[]);
    let gw = Gateway::start(
        &governed(&mock.base_url(), r#"{ limit_usd = "1", reset = "1d" }"#, 1),
        &[],
    );
    let body = r#"{"model":"gpt-4o-mini","stream":true,"max_tokens":200,"messages":[{"role":"user","content":"hello there"}]}"#;
    let full_cost = 8 * 150_000 + 200 * 600_000;
    let mut c = Client::connect(gw.addr);
    c.send_raw(&util::format_request(
        "POST",
        "/v1/chat/completions",
        &[
            ("authorization", "Bearer sk-search-prod"),
            ("content-type", "application/json"),
            ("x-mock-stream-interval-ms", "10"),
        ],
        body.as_bytes(),
    ));
    // Read the head and a few events, then hang up.
    let mut line = String::new();
    c.reader.read_line(&mut line).unwrap();
    assert!(line.starts_with("HTTP/1.1 200"), "{line}");
    let mut got = 0;
    let mut buf = [0u8; 256];
    while got < 1024 {
        got += c.reader.read(&mut buf).unwrap();
    }
    drop(c);
    // The gateway notices at its next write, counts the text it relayed, and
    // settles; wait for the one settle to reach the books.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let charged = loop {
        let s = spent(&gw, "keys", "search-prod");
        if s > 0 || std::time::Instant::now() > deadline {
            break s;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(charged > 0, "an abandoned stream is charged");
    assert!(
        charged < full_cost,
        "charged {charged}, the whole stream costs {full_cost}"
    );
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(spent(&gw, "keys", "search-prod"), charged, "charged once");
    assert_eq!(counter(&gw, "bursar_ledger_ring_settles_total"), 1);
}

/// Soft mode charges after: requests pass until spend reaches the limit, the
/// last one may go over, and the overshoot is reported.
#[test]
fn a_soft_budget_charges_after_and_reports_its_overshoot() {
    let mock = Mock::start(&[]);
    let gw = Gateway::start(
        &governed(
            &mock.base_url(),
            r#"{ limit_usd = "0.00001", reset = "1d", mode = "soft" }"#,
            1,
        ),
        &[],
    );
    let mut c = Client::connect(gw.addr);
    let mut ok = 0;
    loop {
        let r = c.post("/v1/chat/completions", "sk-search-prod", CHAT, &[]);
        if r.status == 402 {
            assert_eq!(r.json()["error"]["entity"], "search-prod");
            break;
        }
        assert_eq!(r.status, 200);
        ok += 1;
        assert!(ok <= 3, "a soft budget never refused");
        // Soft levels learn they are spent from the ledger's broadcast, a
        // moment after the charge: a request racing it would pass (that is
        // the overshoot soft mode allows). Let the broadcast land.
        spent(&gw, "keys", "search-prod");
        std::thread::sleep(Duration::from_millis(20));
    }
    // 10 µ$ at 4.2 µ$ each: the third request starts at 8.4 µ$ (under the
    // limit) and ends at 12.6 µ$, 2.6 µ$ over.
    assert_eq!(ok, 3);
    let view = admin(&gw, "GET", "/admin/spend/keys/search-prod", "").json();
    assert_eq!(view["mode"], "soft");
    assert_eq!(
        pico(view["spent_usd"].as_str().unwrap()),
        3 * CHAT_COST_PICO
    );
    assert_eq!(
        pico(view["overshoot_usd"].as_str().unwrap()),
        3 * CHAT_COST_PICO - pico("0.00001")
    );
    assert_eq!(view["blocked"], true);
}

/// Each upstream misbehaviour charges what a hand computation says, and the
/// ledger holds exactly the sum. gpt-4o-mini: input $0.15, cached input
/// $0.075, output (reasoning included) $0.60 per million tokens. CHAT is 8
/// prompt tokens and 5 completion tokens.
#[test]
fn charges_match_hand_computed_expectations_for_every_misbehaviour() {
    let mock = Mock::start(&[]);
    let gw = Gateway::start(
        &governed(&mock.base_url(), r#"{ limit_usd = "1", reset = "1d" }"#, 1),
        &[],
    );
    let mut c = Client::connect(gw.addr);
    let mut total = 0i128;
    let mut charge = |body: &str, headers: &[(&str, &str)], expected: i128, what: &str| {
        let r = c.post("/v1/chat/completions", "sk-search-prod", body, headers);
        assert_eq!(r.status, 200, "{what}: {}", r.text());
        let cost = pico(r.cost_usd().unwrap_or_else(|| panic!("{what}: no cost")));
        assert_eq!(cost, expected, "{what}");
        total += cost;
        r
    };
    // Cached prompt tokens at their own rate: 4 × 0.15 + 4 × 0.075 + 5 × 0.6.
    let cached = 4 * 150_000 + 4 * 75_000 + 5 * 600_000;
    charge(
        CHAT,
        &[("x-mock-cached-tokens", "4")],
        cached,
        "cached, whole",
    );
    charge(
        CHAT_STREAM,
        &[("x-mock-cached-tokens", "4")],
        cached,
        "cached, stream",
    );
    // Reasoning tokens (3, on top of the 5 visible) at the output rate.
    let reasoning = 8 * 150_000 + 8 * 600_000;
    charge(
        CHAT,
        &[("x-mock-reasoning-tokens", "3")],
        reasoning,
        "reasoning, whole",
    );
    charge(
        CHAT_STREAM,
        &[("x-mock-reasoning-tokens", "3")],
        reasoning,
        "reasoning, stream",
    );
    // Every byte its own chunk: the same charge as in one piece.
    charge(
        CHAT_STREAM,
        &[("x-mock-split", "byte")],
        CHAT_COST_PICO,
        "split at every byte",
    );
    charge(
        CHAT,
        &[("x-mock-split", "byte")],
        CHAT_COST_PICO,
        "whole body, split",
    );
    // Cut after two content events: no usage; the gateway counts the text the
    // client received with the model's tokenizer (o200k) and estimates the
    // prompt by the documented rule: the tokens of the text the model reads
    // ("hello there": 2) plus 3 per JSON object (the request and its message).
    let r = c.post(
        "/v1/chat/completions",
        "sk-search-prod",
        CHAT_STREAM,
        &[("x-mock-close-after", "2")],
    );
    assert_eq!(r.status, 200);
    let text = util::sse_chat_text(&r.body);
    assert_eq!(text.split(' ').count(), 2, "{text:?}");
    let completion =
        bursar::tokens::count_tokens(bursar::tokens::Encoding::O200kBase, &text) as i128;
    let prompt = 2 + 2 * 3;
    let cut = pico(r.trailer("x-bursar-cost-usd").unwrap());
    assert_eq!(cut, prompt * 150_000 + completion * 600_000, "cut stream");
    total += cut;
    assert_eq!(spent(&gw, "keys", "search-prod"), total);
}

/// Two gateways on one state directory would both write the books: the
/// second is refused, naming the holder.
#[test]
fn a_second_gateway_on_the_same_state_dir_is_refused() {
    let mock = Mock::start(&[]);
    let gw = Gateway::start(
        &governed(&mock.base_url(), r#"{ limit_usd = "1", reset = "1d" }"#, 1),
        &[],
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_bursar"))
        .args(["serve", "--config"])
        .arg(&gw.config_path)
        .args(["--listen", "127.0.0.1:0", "--admin-listen", "off"])
        .current_dir(&gw.dir.0)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("in use by another bursar process")
            && err.contains(&format!("pid {}", gw.child.id())),
        "{err}"
    );
    // The first one is unharmed.
    let mut c = Client::connect(gw.addr);
    assert_eq!(
        c.post("/v1/chat/completions", "sk-search-prod", CHAT, &[])
            .status,
        200
    );
}

/// An upstream that sends a success head and then cuts the body: the client
/// gets a 502, and the books are charged the request's bound (the provider
/// generated and bills the answer), not nothing.
#[test]
fn a_success_cut_mid_body_is_charged_its_bound() {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { return };
            let mut buf = [0u8; 8192];
            let _ = s.read(&mut buf);
            let _ = s.write_all(
                b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 1000\r\n\r\n{\"id\":\"chatcmpl-cut\",",
            );
            // Dropped: the body ends 980 bytes short.
        }
    });
    let gw = Gateway::start(
        &governed(
            &format!("http://127.0.0.1:{port}/v1"),
            r#"{ limit_usd = "1", reset = "1d" }"#,
            1,
        ),
        &[],
    );
    let mut c = Client::connect(gw.addr);
    let r = c.post("/v1/chat/completions", "sk-search-prod", CHAT, &[]);
    assert_eq!(r.status, 502, "{}", r.text());
    // The bound: every body byte an input token ($0.15/M) + 5 output tokens ($0.60/M).
    let bound = CHAT.len() as i128 * 150_000 + 5 * 600_000;
    assert_eq!(spent(&gw, "keys", "search-prod"), bound);
}

/// A reset comes after every charge a client has seen: a request answered
/// just before the reset is spend of the period it was made in, never of
/// the next (the ledger reads the workers' rings before it applies a reset,
/// a top-up or a budget change).
#[test]
fn a_reset_right_after_a_response_starts_the_period_at_zero() {
    let mock = Mock::start(&[]);
    let gw = Gateway::start(
        &governed(&mock.base_url(), r#"{ limit_usd = "10", reset = "1d" }"#, 2),
        &[],
    );
    let mut c = Client::connect(gw.addr);
    for i in 0..20 {
        let r = c.post("/v1/chat/completions", "sk-search-prod", CHAT, &[]);
        assert_eq!(r.status, 200, "{}", r.text());
        let reset = admin(&gw, "POST", "/admin/keys/search-prod/reset", "");
        assert_eq!(reset.status, 200, "{}", reset.text());
        assert_eq!(
            pico(reset.json()["spent_usd"].as_str().unwrap()),
            0,
            "round {i}: a charge seen before the reset counted after it"
        );
        assert_eq!(spent(&gw, "keys", "search-prod"), 0, "round {i}");
    }
    // Nothing was lost: the team, not reset, holds all twenty.
    assert_eq!(spent(&gw, "teams", "search"), 20 * CHAT_COST_PICO);
}
