//! The exact response cache (issue 16, part 1) against the real binary and
//! the real mock: the same question in the same tenant is answered from
//! memory, costs nothing and reaches no provider; another tenant, another
//! question, a sampled request, an opted-out key or an expired entry never
//! gets a cached answer; streams are replayed as streams; `x-bursar-cache:
//! skip | refresh` are obeyed.

mod util;

use std::time::Duration;

use util::{pico, spent_at, sse_data, Client, Gateway, Mock};

const ADMIN: &str = "admin-secret";
const Q: &str = r#"{"model":"gpt-4o-mini","temperature":0,"max_tokens":6,"messages":[{"role":"user","content":"what is the capital of France"}]}"#;

fn start(mock: &Mock, cache: &str) -> Gateway {
    let config = format!(
        r#"
[server]
workers = 1

[admin]
token = "{ADMIN}"

[cache]
enabled = true
{cache}

[[providers]]
name = "local"
kind = "openai"
base_url = "{}"
models = ["gpt-4o-mini", "text-embedding-3-small"]

[[customers]]
name = "acme"
[[customers]]
name = "globex"

[[virtual_keys]]
name = "acme-1"
key = "sk-acme-one"
customer = "acme"
[[virtual_keys]]
name = "acme-2"
key = "sk-acme-two"
customer = "acme"
[[virtual_keys]]
name = "globex-1"
key = "sk-globex-one"
customer = "globex"
[[virtual_keys]]
name = "no-cache"
key = "sk-no-cache"
customer = "acme"
cache = false
"#,
        mock.base_url()
    );
    Gateway::start(&config, &[])
}

fn ask(c: &mut Client, key: &str, body: &str, headers: &[(&str, &str)]) -> util::Response {
    let r = c.post("/v1/chat/completions", key, body, headers);
    assert_eq!(r.status, 200, "{}", r.text());
    r
}

#[test]
fn the_same_question_is_answered_from_memory_for_free_and_reaches_no_provider() {
    let mock = Mock::start(&[]);
    let gw = start(&mock, "");
    let mut c = Client::connect(gw.addr);
    let first = ask(&mut c, "sk-acme-one", Q, &[]);
    assert_eq!(first.header("x-bursar-cache"), Some("miss"));
    let paid = pico(first.cost_usd().unwrap());
    assert!(paid > 0);
    // The same question, members in another order, another spacing.
    let again = r#"{ "messages":[{"content":"what is the capital of France","role":"user"}],"max_tokens":6,"model":"gpt-4o-mini","temperature":0 }"#;
    let second = ask(&mut c, "sk-acme-one", again, &[]);
    assert_eq!(second.header("x-bursar-cache"), Some("hit"));
    assert_eq!(second.cost_usd(), Some("0"));
    assert_eq!(second.body, first.body);
    assert!(second.header("x-bursar-provider").is_none());
    // Another key of the same customer shares the entry (namespace
    // "customer", the default).
    let third = ask(&mut c, "sk-acme-two", Q, &[]);
    assert_eq!(third.header("x-bursar-cache"), Some("hit"));
    // Paid once.
    assert_eq!(spent_at(&gw, ADMIN, "customers/acme"), paid);
    assert_eq!(gw.metric_sum("bursar_cache_hits_total"), 2);
    assert_eq!(gw.metric_sum("bursar_cache_stores_total"), 1);
    assert_eq!(
        gw.metric_sum("bursar_cache_avoided_picodollars_total") as i128,
        2 * paid
    );
    // The log says so.
    std::thread::sleep(Duration::from_millis(600));
    let rows = util::admin_get(&gw, ADMIN, "/admin/logs?limit=10").json();
    let caches: Vec<&str> = rows["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["cache"].as_str().unwrap())
        .collect();
    assert_eq!(caches, ["hit", "hit", "miss"], "{rows}");
    // A hit costs nothing and records what it avoided: the first answer's cost.
    for r in rows["data"].as_array().unwrap() {
        let (cost, avoided) = (
            pico(r["cost_usd"].as_str().unwrap()),
            pico(r["avoided_usd"].as_str().unwrap()),
        );
        if r["cache"] == "hit" {
            assert_eq!((cost, avoided), (0, paid), "{r}");
        } else {
            assert_eq!((cost, avoided), (paid, 0), "{r}");
        }
    }
    // The spend API reports it per entity.
    let totals = util::admin_get(&gw, ADMIN, "/admin/spend/totals?group_by=key").json();
    let acme_1 = totals["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["group"] == "acme-1")
        .unwrap_or_else(|| panic!("{totals}"));
    assert_eq!(
        pico(acme_1["avoided_usd"].as_str().unwrap()),
        paid,
        "{totals}"
    );
}

#[test]
fn tenants_never_see_each_others_answers_and_a_different_question_is_a_miss() {
    let mock = Mock::start(&[]);
    let gw = start(&mock, "");
    let mut c = Client::connect(gw.addr);
    ask(&mut c, "sk-acme-one", Q, &[]);
    let other_tenant = ask(&mut c, "sk-globex-one", Q, &[]);
    assert_eq!(other_tenant.header("x-bursar-cache"), Some("miss"));
    for near in [
        Q.replace("France", "Germany"),
        Q.replace("\"max_tokens\":6", "\"max_tokens\":7"),
        Q.replace(
            "\"messages\":[",
            "\"messages\":[{\"role\":\"system\",\"content\":\"answer in French\"},",
        ),
    ] {
        let r = ask(&mut c, "sk-acme-one", &near, &[]);
        assert_eq!(r.header("x-bursar-cache"), Some("miss"), "{near}");
    }
    // With namespace = "key", even keys of one customer are apart.
    let gw = start(&mock, "namespace = \"key\"");
    let mut c = Client::connect(gw.addr);
    ask(&mut c, "sk-acme-one", Q, &[]);
    let r = ask(&mut c, "sk-acme-two", Q, &[]);
    assert_eq!(r.header("x-bursar-cache"), Some("miss"));
}

#[test]
fn a_stream_is_replayed_as_a_stream_with_usage_only_as_asked() {
    let mock = Mock::start(&[]);
    let gw = start(&mock, "");
    let mut c = Client::connect(gw.addr);
    let stream = Q.replace("\"temperature\":0", "\"temperature\":0,\"stream\":true");
    let first = ask(&mut c, "sk-acme-one", &stream, &[]);
    assert_eq!(first.header("x-bursar-cache"), Some("miss"));
    let second = ask(&mut c, "sk-acme-one", &stream, &[]);
    assert_eq!(second.header("x-bursar-cache"), Some("hit"));
    assert!(second
        .header("content-type")
        .unwrap()
        .starts_with("text/event-stream"));
    assert_eq!(sse_data(&second.body), sse_data(&first.body));
    assert!(!String::from_utf8_lossy(&second.body).contains("\"usage\""));
    // Asking for usage is another entry, whose replay has it.
    let with_usage = stream.replace(
        "\"stream\":true",
        "\"stream\":true,\"stream_options\":{\"include_usage\":true}",
    );
    let r = ask(&mut c, "sk-acme-one", &with_usage, &[]);
    assert_eq!(r.header("x-bursar-cache"), Some("miss"));
    let r = ask(&mut c, "sk-acme-one", &with_usage, &[]);
    assert_eq!(r.header("x-bursar-cache"), Some("hit"));
    assert!(String::from_utf8_lossy(&r.body).contains("\"usage\":{"));
    // The non-streamed question is not the streamed one.
    let r = ask(&mut c, "sk-acme-one", Q, &[]);
    assert_eq!(r.header("x-bursar-cache"), Some("miss"));
}

#[test]
fn skip_refresh_sampled_requests_opted_out_keys_and_expired_entries() {
    let mock = Mock::start(&[]);
    let gw = start(&mock, "ttl = \"1s\"");
    let mut c = Client::connect(gw.addr);
    ask(&mut c, "sk-acme-one", Q, &[]);
    // skip: not looked up, not stored.
    let r = ask(&mut c, "sk-acme-one", Q, &[("x-bursar-cache", "skip")]);
    assert!(r.header("x-bursar-cache").is_none());
    assert!(r.cost_usd().unwrap() != "0");
    // refresh: asked again, stored again.
    let r = ask(&mut c, "sk-acme-one", Q, &[("x-bursar-cache", "refresh")]);
    assert_eq!(r.header("x-bursar-cache"), Some("miss"));
    assert_eq!(
        ask(&mut c, "sk-acme-one", Q, &[]).header("x-bursar-cache"),
        Some("hit")
    );
    let r = c.post(
        "/v1/chat/completions",
        "sk-acme-one",
        Q,
        &[("x-bursar-cache", "sometimes")],
    );
    assert_eq!(r.status, 400);
    // Sampled requests are not cached by default.
    let sampled = Q.replace("\"temperature\":0", "\"temperature\":0.7");
    for _ in 0..2 {
        let r = ask(&mut c, "sk-acme-one", &sampled, &[]);
        assert!(r.header("x-bursar-cache").is_none());
    }
    let unset = Q.replace("\"temperature\":0,", "");
    assert!(ask(&mut c, "sk-acme-one", &unset, &[])
        .header("x-bursar-cache")
        .is_none());
    // A key that opted out.
    for _ in 0..2 {
        let r = ask(&mut c, "sk-no-cache", Q, &[]);
        assert!(r.header("x-bursar-cache").is_none());
    }
    // The TTL.
    std::thread::sleep(Duration::from_millis(1100));
    assert_eq!(
        ask(&mut c, "sk-acme-one", Q, &[]).header("x-bursar-cache"),
        Some("miss")
    );
    // sampled = true caches them.
    let gw = start(&mock, "sampled = true");
    let mut c = Client::connect(gw.addr);
    ask(&mut c, "sk-acme-one", &sampled, &[]);
    assert_eq!(
        ask(&mut c, "sk-acme-one", &sampled, &[]).header("x-bursar-cache"),
        Some("hit")
    );
}

#[test]
fn the_cache_is_off_unless_enabled_and_a_key_may_opt_in() {
    let mock = Mock::start(&[]);
    let config = format!(
        r#"
[[providers]]
name = "local"
kind = "openai"
base_url = "{}"
models = ["gpt-4o-mini"]

[[virtual_keys]]
name = "plain"
key = "sk-plain-key"

[[virtual_keys]]
name = "opted-in"
key = "sk-opted-in"
cache = true
"#,
        mock.base_url()
    );
    let gw = Gateway::start(&config, &[]);
    let mut c = Client::connect(gw.addr);
    for _ in 0..2 {
        assert!(ask(&mut c, "sk-plain-key", Q, &[])
            .header("x-bursar-cache")
            .is_none());
    }
    ask(&mut c, "sk-opted-in", Q, &[]);
    assert_eq!(
        ask(&mut c, "sk-opted-in", Q, &[]).header("x-bursar-cache"),
        Some("hit")
    );
}

#[test]
fn the_in_process_mock_provider_is_cached_too() {
    let config = r#"
[server]
workers = 1

[cache]
enabled = true

[[providers]]
name = "inproc"
kind = "mock"
models = ["mock-model"]

[[virtual_keys]]
name = "demo"
key = "sk-bursar-demo"

[[prices]]
model = "mock-model"
input_per_mtok_usd = "1"
output_per_mtok_usd = "2"
"#;
    let gw = Gateway::start(config, &[]);
    let mut c = Client::connect(gw.addr);
    for stream in ["false", "true"] {
        let body = Q.replace("gpt-4o-mini", "mock-model").replace(
            "\"temperature\":0",
            &format!("\"temperature\":0,\"stream\":{stream}"),
        );
        let first = ask(&mut c, "sk-bursar-demo", &body, &[]);
        assert_eq!(first.header("x-bursar-cache"), Some("miss"));
        let second = ask(&mut c, "sk-bursar-demo", &body, &[]);
        assert_eq!(second.header("x-bursar-cache"), Some("hit"), "{stream}");
        assert_eq!(second.body, first.body);
    }
}

#[test]
fn a_key_out_of_budget_still_gets_answers_it_has_paid_for() {
    let mock = Mock::start(&[]);
    let config = format!(
        r#"
[server]
workers = 1

[admin]
token = "{ADMIN}"

[cache]
enabled = true

[[providers]]
name = "local"
kind = "openai"
base_url = "{}"
models = ["gpt-4o-mini"]

[[virtual_keys]]
name = "tight"
key = "sk-tight-budget"
[virtual_keys.budget]
limit_usd = "0.00005"
reset = "1d"
"#,
        mock.base_url()
    );
    let gw = Gateway::start(&config, &[]);
    let mut c = Client::connect(gw.addr);
    ask(&mut c, "sk-tight-budget", Q, &[]);
    // Spend the rest on other questions until the budget refuses.
    let mut n = 0;
    loop {
        let other = Q.replace("France", &format!("country number {n}"));
        let r = c.post("/v1/chat/completions", "sk-tight-budget", &other, &[]);
        if r.status == 402 {
            break;
        }
        assert_eq!(r.status, 200, "{}", r.text());
        n += 1;
        assert!(n < 100, "the budget never ran out");
    }
    let spent = spent_at(&gw, ADMIN, "keys/tight");
    // The question it paid for is still answered, and costs nothing.
    let r = ask(&mut c, "sk-tight-budget", Q, &[]);
    assert_eq!(r.header("x-bursar-cache"), Some("hit"));
    assert_eq!(spent_at(&gw, ADMIN, "keys/tight"), spent);
    assert!(spent <= pico("0.00005"));
}
