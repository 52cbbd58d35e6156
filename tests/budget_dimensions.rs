//! Budgets and rate limits beside the organisation chart, end to end: a
//! key's budget on one model, a tag value's budget shared by several keys, a
//! model's budget gateway-wide, rate limits on one model; the real gateway,
//! the real mock upstream, real sockets, under concurrency and across
//! SIGKILL. Strict mode's bound holds at every new level: the sum of what
//! clients were charged at a level never exceeds its limit.

mod util;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use util::{counter, pico, proxy_config, Client, Gateway, Mock, Response, CHAT};

const ADMIN: &str = "admin-secret";

fn admin(gw: &Gateway, method: &str, path: &str) -> Response {
    util::admin_request(gw, ADMIN, method, path, "")
}

/// The ledger's spend at a level, through the spend API.
fn spent(gw: &Gateway, path: &str) -> i128 {
    util::spent_at(gw, ADMIN, path)
}

/// `CHAT` (gpt-4o-mini, max_tokens 5) for `model`.
fn chat(model: &str) -> String {
    CHAT.replace("gpt-4o-mini", model)
}

/// What one request came to: its status, what it was charged, and for a
/// 402 the level that refused it.
#[derive(Debug, Clone)]
struct Outcome {
    label: &'static str,
    status: u16,
    cost: i128,
    level: Option<(String, String)>,
}

fn outcome(label: &'static str, r: &Response) -> Outcome {
    let level = (r.status == 402).then(|| {
        let l = &r.json()["error"]["level"];
        (
            l["kind"].as_str().unwrap_or_default().to_string(),
            l["name"].as_str().unwrap_or_default().to_string(),
        )
    });
    Outcome {
        label,
        status: r.status,
        cost: if r.status == 200 {
            pico(r.cost_usd().expect("a 200 carries its cost"))
        } else {
            0
        },
        level,
    }
}

/// Runs `threads` clients, each sending `per_thread` requests made by
/// `request(thread, i)` = (label, key, body, extra headers); returns every
/// outcome.
/// One request of a client: (label, key, body, extra headers).
type Request = (
    &'static str,
    &'static str,
    String,
    Vec<(&'static str, &'static str)>,
);

fn drive(
    gw: &Gateway,
    threads: usize,
    per_thread: usize,
    request: fn(usize, usize) -> Request,
) -> Vec<Outcome> {
    let out = Arc::new(Mutex::new(Vec::new()));
    let addr = gw.addr;
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let out = Arc::clone(&out);
            std::thread::spawn(move || {
                let mut c = Client::connect(addr);
                for i in 0..per_thread {
                    let (label, key, body, mut headers) = request(t, i);
                    headers.push(("x-mock-delay-ms", "2"));
                    let r = c.post("/v1/chat/completions", key, &body, &headers);
                    assert!(
                        r.status == 200 || r.status == 402,
                        "{label}: {} {}",
                        r.status,
                        r.text()
                    );
                    out.lock().unwrap().push(outcome(label, &r));
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    Arc::try_unwrap(out).unwrap().into_inner().unwrap()
}

fn of<'a>(outcomes: &'a [Outcome], label: &str) -> Vec<&'a Outcome> {
    outcomes.iter().filter(|o| o.label == label).collect()
}

fn charged(outcomes: &[&Outcome]) -> i128 {
    outcomes.iter().map(|o| o.cost).sum()
}

#[test]
fn a_keys_budget_on_one_model_holds_at_zero_overshoot_while_its_other_models_continue() {
    let mock = Mock::start(&[]);
    // gpt-4o: 8 × $2.50 + 5 × $10 per million = 70 µ$ a request; the limit
    // affords ~42 of the 160 sent.
    let limit = "0.003";
    let gw = Gateway::start(
        &proxy_config(
            &mock.base_url(),
            &format!(
                r#"
[admin]
token = "{ADMIN}"
[[teams]]
name = "search"
[[virtual_keys]]
name = "search-prod"
key = "sk-search-prod"
team = "search"
model_budgets = [ {{ model = "gpt-4o", limit_usd = "{limit}", reset = "1d" }} ]
"#
            ),
        ),
        &[],
    );
    let outcomes = drive(&gw, 32, 10, |t, i| {
        if (t + i) % 2 == 0 {
            ("4o", "sk-search-prod", chat("gpt-4o"), vec![])
        } else {
            ("mini", "sk-search-prod", chat("gpt-4o-mini"), vec![])
        }
    });
    let (big, mini) = (of(&outcomes, "4o"), of(&outcomes, "mini"));
    let big_ok = big.iter().filter(|o| o.status == 200).count();
    let big_charged = charged(&big);
    assert!(
        big_charged <= pico(limit),
        "overspent: {big_charged} > {}",
        pico(limit)
    );
    assert!(
        big_ok >= 20,
        "only {big_ok} of ~42 affordable gpt-4o requests"
    );
    assert!(big_ok < big.len(), "the model budget never refused");
    for o in big.iter().filter(|o| o.status == 402) {
        let level = o.level.as_ref().unwrap();
        assert_eq!(
            (level.0.as_str(), level.1.as_str()),
            ("key_model", "search-prod/gpt-4o")
        );
    }
    // The key's other model is not limited by that budget.
    assert!(mini.iter().all(|o| o.status == 200), "gpt-4o-mini refused");
    // The books, to the picodollar, at every level.
    assert_eq!(spent(&gw, "keys/search-prod/models/gpt-4o"), big_charged);
    assert_eq!(spent(&gw, "keys/search-prod"), big_charged + charged(&mini));
    assert_eq!(spent(&gw, "teams/search"), big_charged + charged(&mini));
    assert_eq!(counter(&gw, "bursar_budget_overruns_total"), 0);
    assert_eq!(counter(&gw, "bursar_ledger_ring_rejected_total"), 0);
    // The request log's side: the key's spend on the model, over time.
    let path = "/admin/spend/series?key=search-prod&model=gpt-4o&group_by=model&bucket=day";
    let logged = wait_for(|| {
        let r = admin(&gw, "GET", path);
        assert_eq!(r.status, 200, "{}", r.text());
        let v = r.json();
        let sum: i128 = v["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| pico(p["cost_usd"].as_str().unwrap()))
            .sum();
        (sum == big_charged).then_some(v)
    });
    assert_eq!(logged["range"]["key"], "search-prod");
    assert_eq!(logged["range"]["model"], "gpt-4o");
    assert!(logged["data"]
        .as_array()
        .unwrap()
        .iter()
        .all(|p| p["group"] == "gpt-4o"));
}

/// Polls `f` for up to 10 s (the request log is written in batches).
fn wait_for<T>(mut f: impl FnMut() -> Option<T>) -> T {
    for _ in 0..100 {
        if let Some(v) = f() {
            return v;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("not within 10 s");
}

#[test]
fn a_strict_tag_budget_shared_by_several_keys_holds_at_zero_while_other_tags_continue() {
    let mock = Mock::start(&[]);
    // gpt-4o-mini at 4.2 µ$ a request: the tag budget affords ~47 of 240.
    let limit = "0.0002";
    let gw = Gateway::start(
        &proxy_config(
            &mock.base_url(),
            &format!(
                r#"
[admin]
token = "{ADMIN}"
# The request log is off: tags are still read, for the tag budgets.
[log]
sink = "off"
[[virtual_keys]]
name = "a"
key = "sk-tagged-a"
[[virtual_keys]]
name = "b"
key = "sk-tagged-b"
[[tag_budgets]]
tag = "feature=search"
budget = {{ limit_usd = "{limit}", reset = "1d", mode = "strict" }}
"#
            ),
        ),
        &[],
    );
    let outcomes = drive(&gw, 24, 10, |t, i| {
        let key = if t % 2 == 0 {
            "sk-tagged-a"
        } else {
            "sk-tagged-b"
        };
        match (t + i) % 4 {
            // The tag from the header, and from the body's metadata.
            0 => (
                "search",
                key,
                CHAT.to_string(),
                vec![("x-bursar-tags", "feature=search,env=prod")],
            ),
            1 => (
                "search",
                key,
                CHAT.replace(
                    r#""max_tokens":5,"#,
                    r#""max_tokens":5,"metadata":{"feature":"search"},"#,
                ),
                vec![],
            ),
            2 => (
                "chat",
                key,
                CHAT.to_string(),
                vec![("x-bursar-tags", "feature=chat")],
            ),
            _ => ("none", key, CHAT.to_string(), vec![]),
        }
    });
    let search = of(&outcomes, "search");
    let search_charged = charged(&search);
    assert!(
        search_charged <= pico(limit),
        "overspent: {search_charged} > {}",
        pico(limit)
    );
    let search_ok = search.iter().filter(|o| o.status == 200).count();
    assert!(search_ok >= 25, "only {search_ok} of ~47 affordable");
    assert!(search_ok < search.len(), "the tag budget never refused");
    for o in search.iter().filter(|o| o.status == 402) {
        let level = o.level.as_ref().unwrap();
        assert_eq!(
            (level.0.as_str(), level.1.as_str()),
            ("tag", "feature=search")
        );
    }
    for label in ["chat", "none"] {
        assert!(
            of(&outcomes, label).iter().all(|o| o.status == 200),
            "{label} refused"
        );
    }
    assert_eq!(spent(&gw, "tags/feature=search"), search_charged);
    // Both keys drew on the one tag budget.
    let by_key: i128 = ["a", "b"]
        .iter()
        .map(|k| spent(&gw, &format!("keys/{k}")))
        .sum();
    assert_eq!(by_key, charged(&outcomes.iter().collect::<Vec<_>>()));
    assert_eq!(counter(&gw, "bursar_budget_overruns_total"), 0);
}

#[test]
fn a_models_budget_gateway_wide_is_shared_by_every_key() {
    let mock = Mock::start(&[]);
    let limit = "0.002"; // ~28 gpt-4o requests of 70 µ$
    let gw = Gateway::start(
        &proxy_config(
            &mock.base_url(),
            &format!(
                r#"
[admin]
token = "{ADMIN}"
[[model_budgets]]
model = "gpt-4o"
budget = {{ limit_usd = "{limit}", reset = "1M" }}
"#
            ),
        ),
        &[],
    );
    let outcomes = drive(&gw, 16, 8, |t, i| {
        let key = if t % 2 == 0 {
            "sk-bursar-demo"
        } else {
            "sk-mini-only"
        };
        if key == "sk-bursar-demo" && i % 2 == 0 {
            ("mini", key, chat("gpt-4o-mini"), vec![])
        } else if key == "sk-bursar-demo" {
            ("4o", key, chat("gpt-4o"), vec![])
        } else {
            // mini-only may use gpt-4o-mini alone: it shares no gpt-4o budget.
            ("mini", key, chat("gpt-4o-mini"), vec![])
        }
    });
    let big = of(&outcomes, "4o");
    assert!(charged(&big) <= pico(limit));
    assert!(big.iter().any(|o| o.status == 402), "never refused");
    for o in big.iter().filter(|o| o.status == 402) {
        let level = o.level.as_ref().unwrap();
        assert_eq!((level.0.as_str(), level.1.as_str()), ("model", "gpt-4o"));
    }
    assert!(of(&outcomes, "mini").iter().all(|o| o.status == 200));
    assert_eq!(spent(&gw, "models/gpt-4o"), charged(&big));
}

/// Waits, if needed, until a UTC minute has at least `secs` seconds left, so
/// a per-minute window does not roll over mid-test.
fn away_from_the_minute_boundary(secs: u64) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    let left = 60 - now.as_secs() % 60;
    if left < secs {
        std::thread::sleep(Duration::from_secs(left + 1));
    }
}

#[test]
fn a_rate_limit_on_one_model_refuses_that_model_only() {
    let mock = Mock::start(&[]);
    let gw = Gateway::start(
        &proxy_config(
            &mock.base_url(),
            r#"
[[teams]]
name = "search"
model_rate_limits = [ { model = "o3-mini", concurrent = 1 } ]
[[virtual_keys]]
name = "search-prod"
key = "sk-search-prod"
team = "search"
model_rate_limits = [ { model = "gpt-4o", requests_per_minute = 3 } ]
[[virtual_keys]]
name = "search-batch"
key = "sk-search-batch"
team = "search"
"#,
        ),
        &[],
    );
    away_from_the_minute_boundary(20);
    let mut c = Client::connect(gw.addr);
    for _ in 0..3 {
        let r = c.post(
            "/v1/chat/completions",
            "sk-search-prod",
            &chat("gpt-4o"),
            &[],
        );
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let r = c.post(
        "/v1/chat/completions",
        "sk-search-prod",
        &chat("gpt-4o"),
        &[],
    );
    assert_eq!(r.status, 429, "{}", r.text());
    let retry: u64 = r
        .header("retry-after")
        .expect("retry-after")
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    let message = r.json()["error"]["message"].as_str().unwrap().to_string();
    assert!(message.contains("\"gpt-4o\""), "{message}");
    // Its other models go on; so does another key on the limited model.
    for _ in 0..5 {
        let r = c.post(
            "/v1/chat/completions",
            "sk-search-prod",
            &chat("gpt-4o-mini"),
            &[],
        );
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let mut other = Client::connect(gw.addr);
    let r = other.post(
        "/v1/chat/completions",
        "sk-search-batch",
        &chat("gpt-4o"),
        &[],
    );
    assert_eq!(r.status, 200, "{}", r.text());

    // The team's concurrency on o3-mini spans its keys: one in flight at a
    // time, whichever key sends it; other models are not held back.
    let addr = gw.addr;
    let slow = std::thread::spawn(move || {
        let mut c = Client::connect(addr);
        c.post(
            "/v1/chat/completions",
            "sk-search-batch",
            &chat("o3-mini"),
            &[("x-mock-delay-ms", "1500")],
        )
        .status
    });
    std::thread::sleep(Duration::from_millis(400));
    let r = c.post(
        "/v1/chat/completions",
        "sk-search-prod",
        &chat("o3-mini"),
        &[],
    );
    assert_eq!(r.status, 429, "{}", r.text());
    assert!(r.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("o3-mini"));
    let r = c.post(
        "/v1/chat/completions",
        "sk-search-prod",
        &chat("gpt-4o-mini"),
        &[],
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(slow.join().unwrap(), 200);
    let r = c.post(
        "/v1/chat/completions",
        "sk-search-prod",
        &chat("o3-mini"),
        &[],
    );
    assert_eq!(r.status, 200, "after the first ended: {}", r.text());
}

/// SIGKILL under load with every new kind of level on the requests' path;
/// after the restart each level holds every charge a client saw, and the
/// same total as the key (every request was charged at every level).
#[test]
fn sigkill_and_restart_keep_every_new_levels_spend() {
    let mock = Mock::start(&[]);
    let gw = Gateway::start(
        &proxy_config(
            &mock.base_url(),
            &format!(
                r#"
[admin]
token = "{ADMIN}"
[[customers]]
name = "acme"
budget = {{ limit_usd = "10", reset = "1M" }}
model_budgets = [ {{ model = "gpt-4o-mini", limit_usd = "10", reset = "1d" }} ]
[[teams]]
name = "search"
customer = "acme"
budget = {{ limit_usd = "10", reset = "1d" }}
model_budgets = [ {{ model = "gpt-4o-mini", limit_usd = "10", reset = "1d" }} ]
[[virtual_keys]]
name = "search-prod"
key = "sk-search-prod"
team = "search"
budget = {{ limit_usd = "10", reset = "1d" }}
model_budgets = [ {{ model = "gpt-4o-mini", limit_usd = "10", reset = "1d" }} ]
[[model_budgets]]
model = "gpt-4o-mini"
budget = {{ limit_usd = "10", reset = "1M" }}
[[tag_budgets]]
tag = "feature=search"
budget = {{ limit_usd = "10", reset = "1d" }}
[[tag_budgets]]
tag = "env=prod"
budget = {{ limit_usd = "10" }}
"#
            ),
        ),
        &[],
    );
    // A cold worker leases at every strict level for the first request (9
    // here: key, team, customer, the model's four, two tags; the provider
    // is soft): it is admitted, not refused for want of lease rounds (a
    // bound of 8 rounds refused it with a 402 while every budget had room).
    let mut c = Client::connect(gw.addr);
    for _ in 0..3 {
        let r = c.post(
            "/v1/chat/completions",
            "sk-search-prod",
            CHAT,
            &[("x-bursar-tags", "feature=search,env=prod")],
        );
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let load = util::LoadUntilCut::start(
        gw.addr,
        16,
        "sk-search-prod",
        &[("x-bursar-tags", "feature=search,env=prod")],
        |_| CHAT,
    );
    std::thread::sleep(Duration::from_millis(1500));
    let gw = gw.kill_and_restart(&[]);
    let seen = load.stop();
    assert!(seen > 0, "no load");
    let booked = spent(&gw, "keys/search-prod");
    assert!(
        booked >= seen,
        "lost charges: booked {booked} < seen {seen}"
    );
    for level in [
        "customers/acme",
        "teams/search",
        "customers/acme/models/gpt-4o-mini",
        "teams/search/models/gpt-4o-mini",
        "keys/search-prod/models/gpt-4o-mini",
        "models/gpt-4o-mini",
        "tags/feature=search",
        "tags/env=prod",
        "providers/local",
    ] {
        assert_eq!(spent(&gw, level), booked, "{level}");
    }
    // A clean restart changes nothing.
    let gw = gw.stop_and_restart(&[]);
    assert_eq!(spent(&gw, "models/gpt-4o-mini"), booked);
    assert_eq!(spent(&gw, "tags/feature=search"), booked);
}

/// The new levels are budgets like the others: a strict budget on a model
/// lowers an output cap that does not fit rather than refuse ("degrade
/// before deny"), and a soft tag budget admits while under its limit,
/// charges after and reports the overshoot it allowed.
#[test]
fn a_budget_on_a_model_degrades_a_cap_and_a_soft_tag_budget_reports_its_overshoot() {
    let mock = Mock::start(&[]);
    let gw = Gateway::start(
        &proxy_config(
            &mock.base_url(),
            &format!(
                r#"
[admin]
token = "{ADMIN}"
[[virtual_keys]]
name = "search-prod"
key = "sk-search-prod"
model_budgets = [ {{ model = "gpt-4o-mini", limit_usd = "0.0002" }} ]
[[tag_budgets]]
tag = "feature=soft"
budget = {{ limit_usd = "0.00001", reset = "1d", mode = "soft", soft_limit_usd = "0.000005" }}
"#
            ),
        ),
        &[],
    );
    let mut c = Client::connect(gw.addr);
    // 200 µ$ on the model: the default 16384-token cap does not fit, a
    // lower one does, and the upstream is sent that cap.
    let body = r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hello there"}]}"#;
    let r = c.post("/v1/chat/completions", "sk-search-prod", body, &[]);
    // The mock writes exactly the cap's words: the lowered cap reached it.
    util::cap_lowered(&r);
    let cost = pico(r.cost_usd().unwrap());
    assert!(cost <= pico("0.0002"));
    assert_eq!(spent(&gw, "keys/search-prod/models/gpt-4o-mini"), cost);
    assert_eq!(gw.metric_sum("bursar_budget_degraded_total"), 1);

    // Soft: 4.2 µ$ a request against 10 µ$; admitted at 0, 4.2 and 8.4 µ$
    // spent, refused at 12.6, 2.6 µ$ over (the demo key has no budget on
    // the model, so only the tag refuses).
    let tagged = [("x-bursar-tags", "feature=soft")];
    let mut ok = 0;
    let refusal = loop {
        let r = c.post("/v1/chat/completions", "sk-bursar-demo", CHAT, &tagged);
        if r.status != 200 {
            break r;
        }
        ok += 1;
        assert!(ok <= 3, "a soft budget past its limit kept admitting");
        // A soft level learns it is spent from the ledger's broadcast, a
        // moment after the charge (a request racing it would pass: the
        // overshoot soft mode allows). Let the broadcast land.
        spent(&gw, "tags/feature=soft");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(ok, 3);
    assert_eq!(refusal.status, 402, "{}", refusal.text());
    let level = &refusal.json()["error"]["level"];
    assert_eq!(
        (level["kind"].as_str(), level["name"].as_str()),
        (Some("tag"), Some("feature=soft"))
    );
    let view = admin(&gw, "GET", "/admin/spend/tags/feature=soft").json();
    assert_eq!(view["mode"], "soft");
    assert_eq!(view["soft_limit_usd"], "0.000005");
    let chat_cost = 8 * 150_000 + 5 * 600_000;
    assert_eq!(pico(view["spent_usd"].as_str().unwrap()), 3 * chat_cost);
    assert_eq!(
        pico(view["overshoot_usd"].as_str().unwrap()),
        3 * chat_cost - pico("0.00001")
    );
    assert_eq!(view["blocked"], true);
}
