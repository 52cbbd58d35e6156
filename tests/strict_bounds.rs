//! The money holes a review found in the request path, closed, against the
//! real gateway and the real mock upstream: a strict budget is not overspent
//! whatever shape the body's output cap takes or however it points to input
//! it does not hold, hidden reasoning on a cut stream is charged, and tags
//! never refuse a request when there is no log to attribute it in.

mod util;

use util::{pico, proxy_config, Client, Gateway, Mock};

const ADMIN: &str = "admin-secret";

fn keyed(base_url: &str, key_budget: &str, extra: &str) -> String {
    proxy_config(
        base_url,
        &format!(
            r#"
[admin]
token = "{ADMIN}"

[[virtual_keys]]
name = "tight"
key = "sk-tight"
budget = {key_budget}
{extra}
"#
        ),
    )
}

fn spent(gw: &Gateway, name: &str) -> i128 {
    util::spent_at(gw, ADMIN, &format!("keys/{name}"))
}

/// The review's case: a strict key with $0.05 left, and an upstream that
/// generates 100,000 tokens when nothing caps it and reads the last of two
/// duplicate names (as Python's json does; the mock reads bodies that way).
/// A client's `null` cap, in every endpoint's name, escaped or spaced, must
/// reach the upstream as the gateway's cap (the 16,384 it reserved), never
/// shadowed by a cap prepended before it. gpt-4o-mini's output is $0.60 per
/// million tokens: uncapped, one request would spend $0.06.
#[test]
fn a_null_or_escaped_cap_never_lets_an_upstream_generate_uncapped() {
    let mock = Mock::start(&[]);
    let limit = "0.05";
    let gw = Gateway::start(
        &keyed(
            &mock.base_url(),
            &format!(r#"{{ limit_usd = "{limit}", reset = "1d" }}"#),
            "",
        ),
        &[],
    );
    let mut c = Client::connect(gw.addr);
    let uncapped = [("x-mock-uncapped-tokens", "100000")];
    let mut charged = 0;
    for (path, body, stream) in [
        (
            "/v1/chat/completions",
            r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}],"max_completion_tokens":null}"#,
            false,
        ),
        (
            "/v1/chat/completions",
            r#"{"model": "gpt-4o-mini", "max_tokens": null, "messages": [{"role": "user", "content": "hi"}]}"#,
            false,
        ),
        (
            "/v1/chat/completions",
            r#"{"model":"gpt-4o-mini","stream":true,"stream_options":null,"max\u005fcompletion_tokens":null,"messages":[{"role":"user","content":"hi"}]}"#,
            true,
        ),
        (
            "/v1/completions",
            r#"{"model":"gpt-4o-mini","prompt":"hi","max\u005ftokens" :null}"#,
            false,
        ),
    ] {
        let r = c.post(path, "sk-tight", body, &uncapped);
        assert_eq!(r.status, 200, "{body}: {}", r.text());
        let completion = if stream {
            let usage = util::sse_data(&r.body)
                .iter()
                .filter_map(|d| serde_json::from_str::<serde_json::Value>(d).ok())
                .find(|v| v["usage"].is_object());
            assert!(
                usage.is_none(),
                "the usage the gateway asked for is removed"
            );
            None
        } else {
            r.json()["usage"]["completion_tokens"].as_u64()
        };
        if let Some(n) = completion {
            assert_eq!(n, 16_384, "the gateway's cap reached the upstream: {body}");
        }
        let cost = pico(r.cost_usd().expect("a cost"));
        assert!(cost < pico("0.011"), "{body}: charged {cost}");
        charged += cost;
    }
    // A cap given twice (however spelled) is refused before anything is
    // reserved or sent: the upstreams disagree on which one they would read.
    for body in [
        r#"{"model":"gpt-4o-mini","max_tokens":5,"max_tokens":null,"messages":[]}"#,
        r#"{"model":"gpt-4o-mini","max_tokens":5,"max\u005ftokens":null,"messages":[]}"#,
    ] {
        let r = c.post("/v1/chat/completions", "sk-tight", body, &uncapped);
        assert_eq!(r.status, 400, "{body}: {}", r.text());
    }
    assert_eq!(spent(&gw, "tight"), charged);
    assert!(charged <= pico(limit), "strict overspent: {charged}");
    // Every response was exact (the streamed one got the usage it asked
    // the upstream for, through a `null` stream_options): nothing estimated.
    assert_eq!(gw.metric_sum("bursar_usage_estimated_total"), 0);
}

/// A body that points to input it does not hold (an image part, a stored
/// prompt) can bill up to the model's context window: gpt-4o-mini's 128,000
/// tokens at $0.15 per million is $0.0192, more than the key's $0.01, so it
/// is refused before anything is spent, however its names are spelled. Text
/// the body holds is bounded by its length and goes through.
#[test]
fn input_the_body_only_points_to_is_bounded_by_the_context_window() {
    let mock = Mock::start(&[]);
    let gw = Gateway::start(
        &keyed(
            &mock.base_url(),
            r#"{ limit_usd = "0.01", reset = "1d" }"#,
            "",
        ),
        &[],
    );
    let mut c = Client::connect(gw.addr);
    for (path, body) in [
        (
            "/v1/chat/completions",
            r#"{"model": "gpt-4o-mini", "max_tokens": 5, "messages": [{"role": "user", "content": [{"type": "image\u005furl", "image\u005furl": {"url": "https://example.com/a.png"}}]}]}"#,
        ),
        (
            "/v1/responses",
            r#"{"model": "gpt-4o-mini", "max_output_tokens": 5, "prompt" : {"id": "pmpt_1"}}"#,
        ),
        (
            "/v1/responses",
            r#"{"model":"gpt-4o-mini","max_output_tokens":5,"input":[{"type":"\u0069nput_file","file_id":"file-1"}]}"#,
        ),
    ] {
        let r = c.post(path, "sk-tight", body, &[]);
        assert_eq!(r.status, 402, "{body}: {}", r.text());
    }
    assert_eq!(spent(&gw, "tight"), 0);
    let text = r#"{"model": "gpt-4o-mini", "max_tokens": 5, "messages": [{"role": "user", "content": "what is image_url?"}]}"#;
    let r = c.post("/v1/chat/completions", "sk-tight", text, &[]);
    assert_eq!(r.status, 200, "{}", r.text());
}

/// o3-mini reasons before it answers and bills the reasoning as output
/// without streaming it. A stream cut after two words never carries the
/// provider's usage: the gateway counts the visible words and charges the
/// reasoning the request's cap (100 tokens) allows, not none. o3-mini: input
/// $1.10, output $4.40 per million tokens; the prompt is estimated as in
/// tests/budgets.rs (2 tokens of text, 3 per JSON object).
#[test]
fn hidden_reasoning_on_a_cut_stream_is_charged_up_to_the_cap() {
    let mock = Mock::start(&[]);
    let gw = Gateway::start(
        &keyed(&mock.base_url(), r#"{ limit_usd = "1", reset = "1d" }"#, ""),
        &[],
    );
    let mut c = Client::connect(gw.addr);
    let prompt = 2 + 2 * 3;
    let cut = [
        ("x-mock-close-after", "2"),
        ("x-mock-reasoning-tokens", "50"),
    ];
    let body = r#"{"model":"o3-mini","stream":true,"max_completion_tokens":100,"messages":[{"role":"user","content":"hello there"}]}"#;
    let r = c.post("/v1/chat/completions", "sk-tight", body, &cut);
    assert_eq!(r.status, 200);
    let cost = pico(r.trailer("x-bursar-cost-usd").expect("a cost trailer"));
    assert_eq!(
        cost,
        prompt * 1_100_000 + 100 * 4_400_000,
        "reasoning up to the cap"
    );

    // Reasoning turned off: only what was seen.
    let off = r#"{"model":"o3-mini","stream":true,"reasoning_effort":"none","max_completion_tokens":100,"messages":[{"role":"user","content":"hello there"}]}"#;
    let r = c.post("/v1/chat/completions", "sk-tight", off, &cut);
    assert_eq!(r.status, 200);
    let text = util::sse_chat_text(&r.body);
    let seen = bursar::tokens::count_tokens(bursar::tokens::Encoding::O200kBase, &text) as i128;
    let off_cost = pico(r.trailer("x-bursar-cost-usd").expect("a cost trailer"));
    assert_eq!(off_cost, prompt * 1_100_000 + seen * 4_400_000);

    // A model that streams what it generates (gpt-4o-mini) is charged what
    // was seen, as before.
    let visible = r#"{"model":"gpt-4o-mini","stream":true,"max_completion_tokens":100,"messages":[{"role":"user","content":"hello there"}]}"#;
    let r = c.post("/v1/chat/completions", "sk-tight", visible, &cut);
    let plain = pico(r.trailer("x-bursar-cost-usd").expect("a cost trailer"));
    assert_eq!(plain, prompt * 150_000 + seen * 600_000);
    assert_eq!(spent(&gw, "tight"), cost + off_cost + plain);
}

/// Tags attribute a request in the request log; with the log off they are
/// not read, so a header the log would refuse cannot refuse the request.
#[test]
fn tags_never_refuse_a_request_when_the_log_is_off() {
    let mock = Mock::start(&[]);
    let bad_tags = [("x-bursar-tags", "no-equals-sign")];
    let off = Gateway::start(
        &proxy_config(&mock.base_url(), "[log]\nsink = \"off\"\n"),
        &[],
    );
    let r = Client::connect(off.addr).post(
        "/v1/chat/completions",
        "sk-bursar-demo",
        util::CHAT,
        &bad_tags,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    // With the log on, the same header is the client's mistake to hear of.
    let on = Gateway::start(&proxy_config(&mock.base_url(), ""), &[]);
    let r = Client::connect(on.addr).post(
        "/v1/chat/completions",
        "sk-bursar-demo",
        util::CHAT,
        &bad_tags,
    );
    assert_eq!(r.status, 400, "{}", r.text());
}
