//! Model groups, failover and budget-aware routing (issue 15) against the
//! real binary: weighted spread, a target killed under load that no client
//! notices, cooldown and recovery, a failed attempt charged only when the
//! provider reported usage for it, the next target before a 402, the
//! fallback model, API key rotation, and strict budgets that never
//! overshoot across failovers.
//!
//! Targets are real mocks (`bursar-load mock`) or raw `std::net` upstreams
//! written here that count what they receive, so "tried once" is what the
//! upstream saw.

mod util;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use util::{admin_get, pico, spent_at, Client, Gateway, Mock, CHAT};

const ADMIN: &str = "admin-secret";

/// What a raw upstream answers: status and body, given the request's
/// `authorization` header and its number (from 1).
type Answer = Arc<dyn Fn(usize, &str) -> (u16, String) + Send + Sync>;

/// A raw upstream counting the requests it receives.
struct Raw {
    port: u16,
    hits: Arc<AtomicUsize>,
}

const OK: &str = r#"{"id":"chatcmpl-raw","object":"chat.completion","created":1,"model":"gpt-4o-mini","choices":[{"index":0,"message":{"role":"assistant","content":"hi"},"finish_reason":"stop"}],"usage":{"prompt_tokens":8,"completion_tokens":5,"total_tokens":13}}"#;
/// gpt-4o-mini at $0.15 / $0.60 per million tokens.
const OK_PICO: i128 = 8 * 150_000 + 5 * 600_000;

fn error_body(status: u16) -> String {
    format!(
        r#"{{"error":{{"message":"raw upstream says {status}","type":"server_error","code":null}}}}"#
    )
}

impl Raw {
    fn start(answer: Answer) -> Raw {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let hits = Arc::new(AtomicUsize::new(0));
        let h = Arc::clone(&hits);
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut s) = stream else { return };
                let h = Arc::clone(&h);
                let answer = Arc::clone(&answer);
                std::thread::spawn(move || {
                    let mut r = BufReader::new(s.try_clone().unwrap());
                    loop {
                        let mut len = 0usize;
                        let mut auth = String::new();
                        let mut first = true;
                        loop {
                            let mut line = String::new();
                            if r.read_line(&mut line).unwrap_or(0) == 0 {
                                return;
                            }
                            let lower = line.to_ascii_lowercase();
                            if let Some(v) = lower.strip_prefix("content-length:") {
                                len = v.trim().parse().unwrap_or(0);
                            }
                            if let Some(v) = line.strip_prefix("authorization: ") {
                                auth = v.trim().to_string();
                            }
                            if line == "\r\n" && !first {
                                break;
                            }
                            first = false;
                        }
                        let mut body = vec![0; len];
                        if r.read_exact(&mut body).is_err() {
                            return;
                        }
                        let n = h.fetch_add(1, SeqCst) + 1;
                        let (status, out) = answer(n, &auth);
                        if write!(
                            s,
                            "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{out}",
                            out.len()
                        )
                        .is_err()
                        {
                            return;
                        }
                    }
                });
            }
        });
        Raw { port, hits }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/v1", self.port)
    }
}

fn provider(name: &str, url: &str, extra: &str) -> String {
    format!(
        "[[providers]]\nname = \"{name}\"\nkind = \"openai\"\nbase_url = \"{url}\"\napi_key = \"sk-up\"\nmodels = []\n{extra}\n"
    )
}

fn config(providers: &str, group: &str, extra: &str) -> String {
    format!(
        r#"
[server]
workers = 2

[admin]
token = "{ADMIN}"

{providers}

[[model_groups]]
name = "gpt-4o-mini"
{group}

[[virtual_keys]]
name = "demo"
key = "sk-bursar-demo"
{extra}
"#
    )
}

fn send(gw: &Gateway, body: &str) -> util::Response {
    Client::connect(gw.addr).post("/v1/chat/completions", "sk-bursar-demo", body, &[])
}

#[test]
fn a_weighted_group_spreads_requests_by_weight_and_names_the_provider() {
    let a = Mock::start(&[]);
    let b = Mock::start(&[]);
    let gw = Gateway::start(
        &config(
            &(provider("a", &a.base_url(), "") + &provider("b", &b.base_url(), "")),
            r#"targets = [ { provider = "a", weight = 3 }, { provider = "b", weight = 1, model = "gpt-4o-mini-2024-07-18" } ]"#,
            "",
        ),
        &[],
    );
    let mut c = Client::connect(gw.addr);
    let (mut to_a, mut to_b) = (0, 0);
    for _ in 0..400 {
        let r = c.post("/v1/chat/completions", "sk-bursar-demo", CHAT, &[]);
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.header("x-bursar-attempts"), Some("1"));
        match r.header("x-bursar-provider") {
            Some("a") => {
                to_a += 1;
                assert_eq!(r.json()["model"], "gpt-4o-mini");
            }
            Some("b") => {
                to_b += 1;
                // The target's own model name went upstream.
                assert_eq!(r.json()["model"], "gpt-4o-mini-2024-07-18");
            }
            other => panic!("{other:?}"),
        }
    }
    assert!((240..=360).contains(&to_a), "a {to_a}, b {to_b}");
    assert_eq!(to_a + to_b, 400);
    // /v1/models lists the group.
    let r = c.request(
        "GET",
        "/v1/models",
        &[("authorization", "Bearer sk-bursar-demo")],
        b"",
    );
    assert!(r.text().contains("\"gpt-4o-mini\""), "{}", r.text());
}

#[test]
fn a_target_killed_under_load_makes_no_client_see_an_error() {
    let mut a = Mock::start(&[]);
    let b = Mock::start(&[]);
    let gw = Gateway::start(
        &config(
            &(provider("a", &a.base_url(), "") + &provider("b", &b.base_url(), "")),
            "targets = [ { provider = \"a\" }, { provider = \"b\" } ]",
            "",
        ),
        &[],
    );
    let stop = Arc::new(AtomicBool::new(false));
    let served = Arc::new(Mutex::new(Vec::new()));
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let (stop, served) = (Arc::clone(&stop), Arc::clone(&served));
            let addr = gw.addr;
            std::thread::spawn(move || {
                let mut c = Client::connect(addr);
                while !stop.load(SeqCst) {
                    let r = c.post("/v1/chat/completions", "sk-bursar-demo", CHAT, &[]);
                    assert_eq!(r.status, 200, "a client saw an error: {}", r.text());
                    served.lock().unwrap().push((
                        r.header("x-bursar-provider").unwrap().to_string(),
                        r.header("x-bursar-attempts").unwrap().to_string(),
                    ));
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(400));
    let _ = a.child.kill();
    let _ = a.child.wait();
    let killed_at = served.lock().unwrap().len();
    std::thread::sleep(Duration::from_millis(800));
    stop.store(true, SeqCst);
    for c in clients {
        c.join().unwrap();
    }
    let served = served.lock().unwrap();
    assert!(killed_at > 20 && served.len() > killed_at + 20);
    assert!(served[..killed_at].iter().any(|(p, _)| p == "a"));
    // After the kill every answer came from b; some had to fail over first.
    let after = &served[killed_at + 8..];
    assert!(after.iter().all(|(p, _)| p == "b"), "{after:?}");
    assert!(gw.metric_sum("bursar_upstream_failovers_total") >= 1);
    // a cooled down: later requests went straight to b.
    assert!(
        after.iter().rev().take(20).all(|(_, n)| n == "1"),
        "{after:?}"
    );
}

#[test]
fn a_failing_target_cools_down_and_one_probe_brings_it_back() {
    let healthy = Arc::new(AtomicBool::new(false));
    let h = Arc::clone(&healthy);
    let a = Raw::start(Arc::new(move |_, _| {
        if h.load(SeqCst) {
            (200, OK.to_string())
        } else {
            (500, error_body(500))
        }
    }));
    let b = Mock::start(&[]);
    let gw = Gateway::start(
        &config(
            &(provider("a", &a.url(), "") + &provider("b", &b.base_url(), "")),
            r#"strategy = "weighted"
targets = [ { provider = "a", weight = 1000000 }, { provider = "b", weight = 1 } ]
failures_before_cooldown = 2
cooldown = "1s""#,
            "",
        ),
        &[],
    );
    let mut c = Client::connect(gw.addr);
    let mut served = Vec::new();
    for _ in 0..6 {
        let r = c.post("/v1/chat/completions", "sk-bursar-demo", CHAT, &[]);
        assert_eq!(r.status, 200, "{}", r.text());
        served.push((
            r.header("x-bursar-provider").unwrap().to_string(),
            r.header("x-bursar-attempts").unwrap().to_string(),
        ));
    }
    // Two failures (each failed over to b), then a cools down: b direct.
    let expect = |p: &str, n: &str| (p.to_string(), n.to_string());
    assert_eq!(served[..2], [expect("b", "2"), expect("b", "2")]);
    assert!(
        served[2..].iter().all(|s| *s == expect("b", "1")),
        "{served:?}"
    );
    assert_eq!(a.hits.load(SeqCst), 2);
    let metrics = gw.metrics();
    let series = |name: &str| {
        format!("{name}{{group=\"gpt-4o-mini\",provider=\"a\",model=\"gpt-4o-mini\"}}")
    };
    assert!(
        metrics.contains(&format!("{} 1\n", series("bursar_target_open"))),
        "{metrics}"
    );
    assert!(metrics.contains(&format!("{} 1\n", series("bursar_target_cooldowns_total"))));
    assert!(metrics.contains(&format!("{} 2\n", series("bursar_target_failures_total"))));
    healthy.store(true, SeqCst);
    std::thread::sleep(Duration::from_millis(1100));
    // The cooldown is over: one probe, which succeeds and closes the breaker.
    for _ in 0..3 {
        let r = c.post("/v1/chat/completions", "sk-bursar-demo", CHAT, &[]);
        assert_eq!(r.header("x-bursar-provider"), Some("a"), "{}", r.text());
        assert_eq!(r.header("x-bursar-attempts"), Some("1"));
        assert_eq!(pico(r.cost_usd().unwrap()), OK_PICO);
    }
    assert_eq!(a.hits.load(SeqCst), 5);
    assert!(gw
        .metrics()
        .contains(&format!("{} 0\n", series("bursar_target_open"))));
}

#[test]
fn a_failed_attempt_is_charged_only_for_usage_the_provider_reported() {
    // a answers 503, every other time with usage in the error body.
    let a = Raw::start(Arc::new(|n, _| {
        if n % 2 == 1 {
            (503, error_body(503))
        } else {
            (
                503,
                r#"{"error":{"message":"overloaded after reading","type":"server_error"},"usage":{"prompt_tokens":100,"completion_tokens":0,"total_tokens":100}}"#
                    .to_string(),
            )
        }
    }));
    let b = Raw::start(Arc::new(|_, _| (200, OK.to_string())));
    let gw = Gateway::start(
        &config(
            &(provider("a", &a.url(), "") + &provider("b", &b.url(), "")),
            r#"targets = [ { provider = "a", weight = 1000000 }, { provider = "b", weight = 1 } ]
failures_before_cooldown = 1000"#,
            "[virtual_keys.budget]\nlimit_usd = \"10\"\nreset = \"1d\"\n",
        ),
        &[],
    );
    let mut seen = 0i128;
    for _ in 0..4 {
        let r = send(&gw, CHAT);
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.header("x-bursar-provider"), Some("b"));
        assert_eq!(r.header("x-bursar-attempts"), Some("2"));
        seen += pico(r.cost_usd().unwrap());
    }
    assert_eq!(seen, 4 * OK_PICO);
    // Two of a's failures reported 100 prompt tokens each: billed, booked.
    let billed = 2 * 100 * 150_000;
    assert_eq!(spent_at(&gw, ADMIN, "keys/demo"), seen + billed);
    assert_eq!(spent_at(&gw, ADMIN, "providers/a"), billed);
    assert_eq!(spent_at(&gw, ADMIN, "providers/b"), seen);
    // The request log has the billed attempts as rows of their own.
    std::thread::sleep(Duration::from_millis(600));
    let r = admin_get(&gw, ADMIN, "/admin/logs?limit=100");
    assert_eq!(r.status, 200, "{}", r.text());
    let rows = r.json();
    let rows = rows["data"].as_array().unwrap();
    let from_a: Vec<_> = rows.iter().filter(|r| r["provider"] == "a").collect();
    assert_eq!(from_a.len(), 2, "{rows:?}");
    assert!(from_a.iter().all(|r| r["status"] == 503));
}

#[test]
fn the_next_target_is_tried_before_a_402_and_the_402_comes_when_none_can_afford_it() {
    let a = Mock::start(&[]);
    let b = Mock::start(&[]);
    let tiny = "[providers.budget]\nlimit_usd = \"0.000001\"\nreset = \"1d\"\n";
    let gw = Gateway::start(
        &config(
            &(provider("a", &a.base_url(), tiny)
                + &provider(
                    "b",
                    &b.base_url(),
                    "[providers.budget]\nlimit_usd = \"0.0001\"\nreset = \"1d\"\n",
                )),
            r#"targets = [ { provider = "a", weight = 1000000 }, { provider = "b", weight = 1 } ]"#,
            "",
        ),
        &[],
    );
    let mut served = 0;
    loop {
        let r = send(&gw, CHAT);
        if r.status == 402 {
            // The refusal names the first target's budget, a's.
            assert_eq!(r.json()["error"]["level"]["name"], "a", "{}", r.text());
            break;
        }
        assert_eq!(r.status, 200, "{}", r.text());
        // a cannot afford it: b answers, with no attempt wasted on a.
        assert_eq!(r.header("x-bursar-provider"), Some("b"));
        assert_eq!(r.header("x-bursar-attempts"), Some("1"));
        served += 1;
        assert!(served < 100);
    }
    assert!(served >= 1);
    assert!(spent_at(&gw, ADMIN, "providers/b") <= pico("0.0001"));
    assert_eq!(spent_at(&gw, ADMIN, "providers/a"), 0);
    assert!(gw.metric_sum("bursar_budget_rerouted_total") >= served);
}

#[test]
fn a_key_falls_back_to_its_cheaper_model_when_its_budget_cannot_afford_the_one_asked_for() {
    let m = Mock::start(&[]);
    let config = format!(
        r#"
[admin]
token = "{ADMIN}"

[[providers]]
name = "local"
kind = "openai"
base_url = "{}"
models = ["gpt-4o", "gpt-4o-mini"]

[[virtual_keys]]
name = "demo"
key = "sk-bursar-demo"
fallback_model = "gpt-4o-mini"
[virtual_keys.budget]
limit_usd = "0.0001"
reset = "1d"
"#,
        m.base_url()
    );
    let gw = Gateway::start(&config, &[]);
    let body = CHAT.replace("gpt-4o-mini", "gpt-4o");
    let r = send(&gw, &body);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-bursar-model-downgraded"), Some("gpt-4o-mini"));
    assert_eq!(r.json()["model"], "gpt-4o-mini");
    let u = &r.json()["usage"];
    let expected = u["prompt_tokens"].as_i64().unwrap() as i128 * 150_000
        + u["completion_tokens"].as_i64().unwrap() as i128 * 600_000;
    assert_eq!(pico(r.cost_usd().unwrap()), expected);
    assert_eq!(spent_at(&gw, ADMIN, "keys/demo"), expected);
    assert!(gw.metric_sum("bursar_budget_downgraded_total") >= 1);
    // A model the budget affords is not downgraded.
    let r = send(&gw, CHAT);
    assert_eq!(r.status, 200);
    assert!(r.header("x-bursar-model-downgraded").is_none());
}

#[test]
fn a_refused_api_key_rotates_to_the_next_and_the_request_still_succeeds() {
    let up = Raw::start(Arc::new(|_, auth| {
        if auth == "Bearer sk-good" {
            (200, OK.to_string())
        } else {
            (401, error_body(401))
        }
    }));
    let config = format!(
        r#"
[[providers]]
name = "local"
kind = "openai"
base_url = "{}"
api_keys = ["sk-revoked", "sk-good"]
models = ["gpt-4o-mini"]

[[virtual_keys]]
name = "demo"
key = "sk-bursar-demo"
"#,
        up.url()
    );
    let gw = Gateway::start(&config, &[]);
    let r = send(&gw, CHAT);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-bursar-attempts"), Some("2"));
    // The next request starts with the key that worked.
    let r = send(&gw, CHAT);
    assert_eq!(r.header("x-bursar-attempts"), Some("1"));
    assert_eq!(up.hits.load(SeqCst), 3);
}

#[test]
fn a_strict_budget_never_overshoots_across_failovers() {
    // a fails every other request (with usage half the time: billed).
    let a = Raw::start(Arc::new(|n, _| {
        match n % 4 {
        1 => (500, error_body(500)),
        3 => (
            502,
            r#"{"error":{"message":"x","type":"server_error"},"usage":{"prompt_tokens":40,"completion_tokens":0,"total_tokens":40}}"#.to_string(),
        ),
        _ => (200, OK.to_string()),
    }
    }));
    let b = Mock::start(&[]);
    let limit = "0.001";
    let gw = Gateway::start(
        &config(
            &(provider("a", &a.url(), "") + &provider("b", &b.base_url(), "")),
            r#"targets = [ { provider = "a", weight = 3 }, { provider = "b", weight = 1 } ]
failures_before_cooldown = 1000"#,
            &format!("[virtual_keys.budget]\nlimit_usd = \"{limit}\"\nreset = \"1d\"\n"),
        ),
        &[],
    );
    let seen = Arc::new(Mutex::new(0i128));
    let clients: Vec<_> = (0..6)
        .map(|_| {
            let seen = Arc::clone(&seen);
            let addr = gw.addr;
            std::thread::spawn(move || {
                let mut c = Client::connect(addr);
                for _ in 0..400 {
                    let r = c.post("/v1/chat/completions", "sk-bursar-demo", CHAT, &[]);
                    match r.status {
                        200 => *seen.lock().unwrap() += pico(r.cost_usd().unwrap()),
                        402 => return,
                        // Near the end, b may be passed over for its budget
                        // and a tried last: a's failure is then relayed as
                        // it is, charged only if it reported usage.
                        500 | 502 => {
                            if let Some(cost) = r.cost_usd() {
                                *seen.lock().unwrap() += pico(cost);
                            }
                        }
                        s => panic!("{s}: {}", r.text()),
                    }
                }
                panic!("the budget never ran out");
            })
        })
        .collect();
    for c in clients {
        c.join().unwrap();
    }
    let spent = spent_at(&gw, ADMIN, "keys/demo");
    let billed_attempts = spent_at(&gw, ADMIN, "providers/a") + spent_at(&gw, ADMIN, "providers/b")
        - *seen.lock().unwrap();
    assert!(spent <= pico(limit), "spent {spent} > limit");
    // Every charge is one a client saw or a failed attempt's reported usage.
    assert_eq!(spent, *seen.lock().unwrap() + billed_attempts);
    assert!(billed_attempts > 0 && billed_attempts % (40 * 150_000) == 0);
}

#[test]
fn a_server_error_with_no_other_target_is_relayed_as_it_is_even_with_spare_keys() {
    let up = Raw::start(Arc::new(|_, _| (500, error_body(500))));
    let config = format!(
        r#"
[[providers]]
name = "local"
kind = "openai"
base_url = "{}"
api_keys = ["sk-one", "sk-two"]
models = ["gpt-4o-mini"]

[[virtual_keys]]
name = "demo"
key = "sk-bursar-demo"
"#,
        up.url()
    );
    let gw = Gateway::start(&config, &[]);
    let r = send(&gw, CHAT);
    assert_eq!(r.status, 500, "{}", r.text());
    assert!(r.text().contains("raw upstream says 500"));
    assert_eq!(r.header("x-bursar-attempts"), Some("1"));
    assert_eq!(up.hits.load(SeqCst), 1);
}

#[test]
fn a_key_whose_budget_runs_low_falls_back_before_it_is_exhausted() {
    let m = Mock::start(&[]);
    let config = format!(
        r#"
[server]
workers = 1

[admin]
token = "{ADMIN}"

[[providers]]
name = "local"
kind = "openai"
base_url = "{}"
models = ["gpt-4o", "gpt-4o-mini"]

[[virtual_keys]]
name = "demo"
key = "sk-bursar-demo"
fallback_model = "gpt-4o-mini"
fallback_below_usd = "0.006"
[virtual_keys.budget]
limit_usd = "0.01"
reset = "1d"
"#,
        m.base_url()
    );
    let gw = Gateway::start(&config, &[]);
    let body = CHAT
        .replace("gpt-4o-mini", "gpt-4o")
        .replace("\"max_tokens\":5", "\"max_tokens\":300");
    let mut c = Client::connect(gw.addr);
    let mut models = Vec::new();
    for _ in 0..6 {
        let r = c.post(
            "/v1/chat/completions",
            "sk-bursar-demo",
            &body,
            &[("x-mock-completion-tokens", "200")],
        );
        assert_eq!(r.status, 200, "{}", r.text());
        models.push(r.json()["model"].as_str().unwrap().to_string());
        if r.json()["model"] == "gpt-4o-mini" {
            assert_eq!(r.header("x-bursar-model-downgraded"), Some("gpt-4o-mini"));
        }
    }
    // gpt-4o while more than $0.006 was left (each costs about $0.002),
    // then the fallback, never a 402.
    assert_eq!(models[0], "gpt-4o");
    let first_mini = models
        .iter()
        .position(|m| m == "gpt-4o-mini")
        .expect("fell back");
    assert!(first_mini >= 2, "{models:?}");
    assert!(
        models[first_mini..].iter().all(|m| m == "gpt-4o-mini"),
        "{models:?}"
    );
    assert!(spent_at(&gw, ADMIN, "keys/demo") < pico("0.01"));
}

/// Two mocks behind one group with `strategy`, the first started with
/// `a_args`; `n` requests from `clients` concurrent clients; how many each
/// target served.
fn spread(
    strategy: &str,
    a_args: &[&str],
    extra: &str,
    clients: usize,
    n: usize,
) -> (usize, usize) {
    let a = Mock::start(a_args);
    let b = Mock::start(&[]);
    let gw = Gateway::start(
        &config(
            &(provider("a", &a.base_url(), "") + &provider("b", &b.base_url(), "")),
            &format!(
                "strategy = \"{strategy}\"\ntargets = [ {{ provider = \"a\" }}, {{ provider = \"b\", model = \"gpt-4o\" }} ]"
            ),
            extra,
        ),
        &[],
    );
    let counts = Arc::new(Mutex::new((0, 0)));
    let threads: Vec<_> = (0..clients)
        .map(|_| {
            let counts = Arc::clone(&counts);
            let addr = gw.addr;
            std::thread::spawn(move || {
                let mut c = Client::connect(addr);
                for _ in 0..n / clients {
                    let r = c.post("/v1/chat/completions", "sk-bursar-demo", CHAT, &[]);
                    assert_eq!(r.status, 200, "{}", r.text());
                    let mut k = counts.lock().unwrap();
                    match r.header("x-bursar-provider") {
                        Some("a") => k.0 += 1,
                        _ => k.1 += 1,
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let k = *counts.lock().unwrap();
    k
}

#[test]
fn cheapest_sends_every_request_to_the_target_whose_model_costs_least() {
    // a serves gpt-4o-mini ($0.15/$0.60), b gpt-4o ($2.50/$10): all to a.
    let (a, b) = spread("cheapest", &[], "", 1, 20);
    assert_eq!((a, b), (20, 0));
}

#[test]
fn lowest_latency_learns_which_target_answers_first() {
    // a takes 40 ms before its first byte, b answers at once.
    let (a, b) = spread("lowest-latency", &["--delay-ms", "40"], "", 1, 60);
    // Each is measured once, then the faster one takes (nearly) all.
    assert!(a <= 3 && b >= 57, "a {a}, b {b}");
}

#[test]
fn least_busy_sends_requests_where_fewest_are_in_flight() {
    // a holds each request 150 ms: with four clients it is busy while b
    // is free, so b serves most.
    let (a, b) = spread("least-busy", &["--delay-ms", "150"], "", 4, 80);
    assert!(b > 3 * a, "a {a}, b {b}");
}

#[test]
fn a_request_too_long_for_a_targets_context_window_goes_to_one_that_fits() {
    let a = Mock::start(&[]);
    let b = Mock::start(&[]);
    let gw = Gateway::start(
        &config(
            &(provider("a", &a.base_url(), "") + &provider("b", &b.base_url(), "")),
            r#"targets = [ { provider = "a", weight = 1000000, model = "small-window" }, { provider = "b", weight = 1 } ]"#,
            r#"
[[prices]]
model = "small-window"
input_per_mtok_usd = "0.1"
output_per_mtok_usd = "0.1"
context_window = 400
"#,
        ),
        &[],
    );
    let r = send(&gw, CHAT);
    assert_eq!(r.header("x-bursar-provider"), Some("a"), "{}", r.text());
    let long = CHAT.replace("hello there", &"word ".repeat(500));
    let r = send(&gw, &long);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-bursar-provider"), Some("b"));
    assert_eq!(r.header("x-bursar-attempts"), Some("1"));
}

#[test]
fn a_target_that_times_out_is_left_for_the_next() {
    // a never answers; the read timeout gives up on it.
    let a = Raw::start(Arc::new(|_, _| {
        std::thread::sleep(Duration::from_secs(5));
        (200, OK.to_string())
    }));
    let b = Mock::start(&[]);
    let gw = Gateway::start(
        &config(
            &(provider("a", &a.url(), "") + &provider("b", &b.base_url(), "")),
            r#"targets = [ { provider = "a", weight = 1000000 }, { provider = "b", weight = 1 } ]"#,
            "[limits]\nupstream_read_timeout = \"500ms\"\n",
        ),
        &[],
    );
    let r = send(&gw, CHAT);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-bursar-provider"), Some("b"));
    assert_eq!(r.header("x-bursar-attempts"), Some("2"));
}

#[test]
fn when_every_target_fails_the_error_says_how_many_attempts_were_made() {
    // Two providers nobody listens for.
    let dead = |_| format!("http://127.0.0.1:{}/v1", util::free_port());
    let gw = Gateway::start(
        &config(
            &(provider("a", &dead(0), "") + &provider("b", &dead(1), "")),
            "targets = [ { provider = \"a\" }, { provider = \"b\" } ]",
            "",
        ),
        &[],
    );
    let r = send(&gw, CHAT);
    assert_eq!(r.status, 502, "{}", r.text());
    assert_eq!(r.header("x-bursar-attempts"), Some("2"));
    assert_eq!(r.json()["error"]["code"], "upstream_unreachable");
}
