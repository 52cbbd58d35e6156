//! Provider kinds end to end (issue 15): an OpenAI client's chat request
//! through `anthropic`, `gemini` and `bedrock` providers (translated both
//! ways, streamed and not), `/v1/messages` passed through to `anthropic`,
//! and `azure`'s deployments. The upstream is the real mock
//! (`bursar-load mock`), which speaks each wire format from the providers'
//! references and checks their credentials (Bedrock's SigV4 signature is
//! recomputed by the mock, an implementation of its own); costs are
//! checked to the picodollar against the mock's token rule.

mod util;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};

use util::{pico, sse_data, Client, Gateway, Mock, TempDir};

const AWS_SECRET: &str = "mock-secret-key/abc";

/// A gateway in front of one mock that speaks every format.
fn start(mock: &Mock, extra: &str) -> Gateway {
    let addr = mock.addr;
    let config = format!(
        r#"
[server]
workers = 2

[[providers]]
name = "claude"
kind = "anthropic"
base_url = "http://{addr}"
api_key = "sk-ant-upstream"
models = ["claude-sonnet-4-5"]

[[providers]]
name = "gem"
kind = "gemini"
base_url = "http://{addr}/v1beta"
api_key = "g-upstream"
models = ["gemini-2.5-flash"]

[[providers]]
name = "bed"
kind = "bedrock"
region = "us-east-1"
base_url = "http://{addr}"
aws_access_key_id_env = "BURSAR_TEST_AKID"
aws_secret_access_key_env = "BURSAR_TEST_SECRET"
models = ["anthropic.claude-3-haiku-20240307-v1:0"]

[[virtual_keys]]
name = "demo"
key = "sk-bursar-demo"

[[prices]]
model = "claude-sonnet-4-5"
input_per_mtok_usd = "3"
output_per_mtok_usd = "15"
cached_input_per_mtok_usd = "0.3"
cache_write_per_mtok_usd = "3.75"

[[prices]]
model = "gemini-2.5-flash"
input_per_mtok_usd = "0.3"
output_per_mtok_usd = "2.5"
cached_input_per_mtok_usd = "0.075"
reasoning_per_mtok_usd = "2.5"

[[prices]]
model = "anthropic.claude-3-haiku-20240307-v1:0"
input_per_mtok_usd = "0.25"
output_per_mtok_usd = "1.25"
cached_input_per_mtok_usd = "0.03"
cache_write_per_mtok_usd = "0.3"
{extra}
"#
    );
    let dir = TempDir::new("providers");
    let path = dir.0.join("bursar.toml");
    std::fs::write(&path, config).unwrap();
    Gateway::spawn_with(dir, path, &[], |cmd| {
        cmd.env("BURSAR_TEST_AKID", "AKIDEXAMPLE")
            .env("BURSAR_TEST_SECRET", AWS_SECRET);
    })
}

fn mock() -> Mock {
    Mock::start(&["--aws-secret-access-key", AWS_SECRET])
}

fn chat(model: &str, stream: bool, extra: &str) -> String {
    format!(
        r#"{{"model":"{model}","stream":{stream},"max_tokens":50,"messages":[{{"role":"system","content":"be brief"}},{{"role":"user","content":"hello there"}}]{extra}}}"#
    )
}

fn post(gw: &Gateway, path: &str, headers: &[(&str, &str)], body: &str) -> util::Response {
    Client::connect(gw.addr).post(path, "sk-bursar-demo", body, headers)
}

fn last_request(mock: &Mock) -> serde_json::Value {
    let mut c = Client::connect(mock.addr);
    c.request("GET", "/v1/_mock/last-request", &[], b"").json()
}

/// picodollars of `tokens` at `usd_per_mtok`.
fn at(tokens: i128, usd_per_mtok: &str) -> i128 {
    tokens * pico(usd_per_mtok) / 1_000_000
}

// The mock's token rule: prompt = Σ over turns (3 + words) + 3, the system
// prompt a turn of its own: "be brief" (2 words) and "hello there" (2).
const PROMPT: i128 = (3 + 2) + (3 + 2) + 3;

#[test]
fn an_openai_chat_through_anthropic_is_translated_and_costs_cache_reads_and_writes_at_their_rates()
{
    let mock = mock();
    let gw = start(&mock, "");
    let r = post(
        &gw,
        "/v1/chat/completions",
        &[
            ("x-mock-completion-tokens", "7"),
            ("x-mock-cache-read-tokens", "4"),
            ("x-mock-cache-write-tokens", "2"),
        ],
        &chat("claude-sonnet-4-5", false, ""),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["choices"][0]["message"]["role"], "assistant");
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    assert_eq!(v["usage"]["prompt_tokens"], PROMPT as u64);
    assert_eq!(v["usage"]["completion_tokens"], 7);
    assert_eq!(r.header("x-bursar-provider"), Some("claude"));
    assert_eq!(r.header("x-bursar-attempts"), Some("1"));
    let expected = at(PROMPT - 6, "3") + at(4, "0.3") + at(2, "3.75") + at(7, "15");
    assert_eq!(pico(r.cost_usd().unwrap()), expected);
    // What Anthropic received: its own shape, key and version headers.
    let seen = last_request(&mock);
    assert_eq!(seen["path"], "/v1/messages");
    assert_eq!(seen["headers"]["x-api-key"], "sk-ant-upstream");
    assert_eq!(seen["headers"]["anthropic-version"], "2023-06-01");
    assert!(seen["headers"].get("authorization").is_none());
    assert_eq!(seen["body"]["system"], "be brief");
    assert_eq!(seen["body"]["max_tokens"], 50);
    assert_eq!(seen["body"]["messages"][0]["role"], "user");
}

#[test]
fn a_streamed_chat_through_anthropic_arrives_as_openai_chunks_with_usage_only_when_asked() {
    let mock = mock();
    let gw = start(&mock, "");
    let headers = [
        ("x-mock-completion-tokens", "5"),
        ("x-mock-cache-read-tokens", "3"),
        ("x-mock-split", "byte"),
    ];
    let expected = at(PROMPT - 3, "3") + at(3, "0.3") + at(5, "15");
    for asks_usage in [false, true] {
        let extra = if asks_usage {
            r#","stream_options":{"include_usage":true}"#
        } else {
            ""
        };
        let r = post(
            &gw,
            "/v1/chat/completions",
            &headers,
            &chat("claude-sonnet-4-5", true, extra),
        );
        assert_eq!(r.status, 200, "{}", r.text());
        assert!(r
            .header("content-type")
            .unwrap()
            .starts_with("text/event-stream"));
        let events = sse_data(&r.body);
        assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
        let chunks: Vec<serde_json::Value> = events[..events.len() - 1]
            .iter()
            .map(|e| serde_json::from_str(e).unwrap())
            .collect();
        assert!(chunks
            .iter()
            .all(|c| c["object"] == "chat.completion.chunk"));
        let text: String = chunks
            .iter()
            .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
            .collect();
        assert_eq!(text.split_whitespace().count(), 5, "{text:?}");
        let usage: Vec<&serde_json::Value> = chunks
            .iter()
            .filter(|c| c["usage"].is_object())
            .map(|c| &c["usage"])
            .collect();
        if asks_usage {
            assert_eq!(usage.len(), 1);
            assert_eq!(usage[0]["completion_tokens"], 5);
        } else {
            assert!(usage.is_empty(), "{events:?}");
            assert!(!String::from_utf8_lossy(&r.body).contains("\"usage\""));
        }
        assert_eq!(pico(r.trailer("x-bursar-cost-usd").unwrap()), expected);
    }
}

#[test]
fn the_anthropic_wire_passes_through_on_v1_messages_metered_from_its_own_usage() {
    let mock = mock();
    let gw = start(&mock, "");
    let body = r#"{"model":"claude-sonnet-4-5","max_tokens":40,"system":"be brief","messages":[{"role":"user","content":"hello there"}]}"#;
    let mut c = Client::connect(gw.addr);
    let h = [
        ("x-api-key", "sk-bursar-demo"),
        ("anthropic-version", "2023-06-01"),
        ("content-type", "application/json"),
        ("x-mock-completion-tokens", "6"),
        ("x-mock-cache-write-tokens", "5"),
    ];
    let r = c.request("POST", "/v1/messages", &h, body.as_bytes());
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["type"], "message");
    assert_eq!(v["usage"]["output_tokens"], 6);
    let expected = at(PROMPT - 5, "3") + at(5, "3.75") + at(6, "15");
    assert_eq!(pico(r.cost_usd().unwrap()), expected);
    let seen = last_request(&mock);
    assert_eq!(seen["headers"]["x-api-key"], "sk-ant-upstream");
    assert_eq!(seen["body"]["system"], "be brief");
    // Streamed: the meter reads Anthropic's own events.
    let body = body.replace("\"max_tokens\"", "\"stream\":true,\"max_tokens\"");
    let r = c.request("POST", "/v1/messages", &h, body.as_bytes());
    assert_eq!(r.status, 200);
    assert!(String::from_utf8_lossy(&r.body).contains("event: message_stop"));
    assert_eq!(pico(r.trailer("x-bursar-cost-usd").unwrap()), expected);
    // An OpenAI-kind model is not served on /v1/messages.
    let gw2 = start(
        &mock,
        &format!(
            "[[providers]]\nname = \"oai\"\nkind = \"openai\"\nbase_url = \"{}\"\nmodels = [\"gpt-4o-mini\"]\n",
            mock.base_url()
        ),
    );
    let r = Client::connect(gw2.addr).request(
        "POST",
        "/v1/messages",
        &h,
        br#"{"model":"gpt-4o-mini","max_tokens":5,"messages":[{"role":"user","content":"hi"}]}"#,
    );
    assert_eq!(r.status, 400);
    assert_eq!(r.error_code(), "unsupported_endpoint");
}

#[test]
fn an_openai_chat_through_gemini_prices_thoughts_as_reasoning_and_cached_content_as_cached() {
    let mock = mock();
    let gw = start(&mock, "");
    let headers = [
        ("x-mock-completion-tokens", "6"),
        ("x-mock-reasoning-tokens", "4"),
        ("x-mock-cached-tokens", "3"),
    ];
    let expected = at(PROMPT - 3, "0.3") + at(3, "0.075") + at(6, "2.5") + at(4, "2.5");
    let r = post(
        &gw,
        "/v1/chat/completions",
        &headers,
        &chat("gemini-2.5-flash", false, ""),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["usage"]["completion_tokens"], 10);
    assert_eq!(pico(r.cost_usd().unwrap()), expected);
    let seen = last_request(&mock);
    assert_eq!(
        seen["path"],
        "/v1beta/models/gemini-2.5-flash:generateContent"
    );
    assert_eq!(seen["headers"]["x-goog-api-key"], "g-upstream");
    assert_eq!(seen["body"]["generationConfig"]["maxOutputTokens"], 50);
    let r = post(
        &gw,
        "/v1/chat/completions",
        &headers,
        &chat("gemini-2.5-flash", true, ""),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let events = sse_data(&r.body);
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    assert!(!String::from_utf8_lossy(&r.body).contains("\"usage\""));
    assert_eq!(pico(r.trailer("x-bursar-cost-usd").unwrap()), expected);
    assert_eq!(
        last_request(&mock)["path"],
        "/v1beta/models/gemini-2.5-flash:streamGenerateContent"
    );
}

/// A translated stream whose provider never sends its final counts (Gemini
/// without `usageMetadata`, Anthropic without `message_delta.usage`) used to
/// end in a usage chunk of zeros that the meter took as the provider's word:
/// billed $0 (Gemini) or one output token (Anthropic). Now no usage chunk is
/// invented, the stream's text is counted, the row says "estimated", and the
/// charge is the estimate's: close to what the same answer costs with the
/// provider's counts, never 0.
#[test]
fn a_translated_stream_without_the_providers_final_counts_is_charged_its_estimate_not_zero() {
    let mock = mock();
    let gw = start(&mock, "[admin]\ntoken = \"admin-secret\"\n");
    for (model, input, output) in [
        ("claude-sonnet-4-5", "3", "15"),
        ("gemini-2.5-flash", "0.3", "2.5"),
    ] {
        let exact = at(PROMPT, input) + at(40, output);
        for asks_usage in [false, true] {
            let extra = if asks_usage {
                r#","stream_options":{"include_usage":true}"#
            } else {
                ""
            };
            let headers = [
                ("x-mock-completion-tokens", "40"),
                ("x-mock-omit-usage", "1"),
            ];
            let r = post(
                &gw,
                "/v1/chat/completions",
                &headers,
                &chat(model, true, extra),
            );
            assert_eq!(r.status, 200, "{model}: {}", r.text());
            let events = sse_data(&r.body);
            assert_eq!(events.last().map(String::as_str), Some("[DONE]"), "{model}");
            // No invented usage chunk, asked for or not.
            assert!(
                !String::from_utf8_lossy(&r.body).contains("\"usage\":{"),
                "{model}: {events:?}"
            );
            let cost = pico(r.trailer("x-bursar-cost-usd").unwrap());
            // The estimate counts the 40 words' text with a tokenizer and the
            // prompt from the body (or Anthropic's message_start): within a
            // factor of what the provider's counts would have cost.
            assert!(
                cost * 2 > exact && cost < exact * 2,
                "{model}: charged {cost} pico, the provider's counts cost {exact}"
            );
            let id = r.header("x-request-id").unwrap().to_string();
            let row = wait_row(&gw, &id);
            assert_eq!(row["estimated"], true, "{model}: {row}");
            assert!(row["completion_tokens"].as_u64().unwrap() >= 20, "{row}");
        }
        // The same answer with the provider's counts is exact and not estimated.
        let r = post(
            &gw,
            "/v1/chat/completions",
            &[("x-mock-completion-tokens", "40")],
            &chat(model, true, ""),
        );
        assert_eq!(
            pico(r.trailer("x-bursar-cost-usd").unwrap()),
            exact,
            "{model}"
        );
        let row = wait_row(&gw, r.header("x-request-id").unwrap());
        assert_eq!(row["estimated"], false, "{model}: {row}");
    }
}

/// A Gemini stream that sent its finish and its final `usageMetadata`, and
/// then broke before the body's end: the translator has the provider's final
/// counts, but never wrote its usage chunk (that happens at the body's end).
/// The charge is the provider's count, not the tokenizer's estimate.
#[test]
fn a_gemini_stream_cut_after_its_final_counts_is_charged_the_providers_counts() {
    let mock = mock();
    let gw = start(&mock, "[admin]\ntoken = \"admin-secret\"\n");
    let headers = [
        ("x-mock-completion-tokens", "40"),
        ("x-mock-reasoning-tokens", "4"),
        ("x-mock-close-at-end", "1"),
    ];
    let exact = at(PROMPT, "0.3") + at(40, "2.5") + at(4, "2.5");
    let r = post(
        &gw,
        "/v1/chat/completions",
        &headers,
        &chat("gemini-2.5-flash", true, ""),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(pico(r.trailer("x-bursar-cost-usd").unwrap()), exact);
    let row = wait_row(&gw, r.header("x-request-id").unwrap());
    assert_eq!(row["estimated"], false, "{row}");
    assert_eq!(row["reasoning_tokens"], 4, "{row}");
}

/// One request's log row, once the writer has stored it.
fn wait_row(gw: &Gateway, id: &str) -> serde_json::Value {
    for _ in 0..100 {
        let r = util::admin_get(gw, "admin-secret", &format!("/admin/logs/{id}"));
        if r.status == 200 {
            return r.json();
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    panic!("no log row for {id}");
}

#[test]
fn an_openai_chat_through_bedrock_is_signed_with_sigv4_and_its_event_stream_translated() {
    let mock = mock();
    let gw = start(&mock, "");
    let model = "anthropic.claude-3-haiku-20240307-v1:0";
    let headers = [
        ("x-mock-completion-tokens", "5"),
        ("x-mock-cache-read-tokens", "2"),
        ("x-mock-cache-write-tokens", "1"),
    ];
    let expected = at(PROMPT - 3, "0.25") + at(2, "0.03") + at(1, "0.3") + at(5, "1.25");
    // The mock recomputes the signature with the secret: a wrong one is a 403.
    let r = post(
        &gw,
        "/v1/chat/completions",
        &headers,
        &chat(model, false, ""),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["usage"]["completion_tokens"], 5);
    assert_eq!(pico(r.cost_usd().unwrap()), expected);
    let seen = last_request(&mock);
    assert!(seen["headers"]["authorization"]
        .as_str()
        .unwrap()
        .starts_with("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/"));
    let r = post(
        &gw,
        "/v1/chat/completions",
        &headers,
        &chat(model, true, ""),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r
        .header("content-type")
        .unwrap()
        .starts_with("text/event-stream"));
    let events = sse_data(&r.body);
    assert_eq!(
        events.last().map(String::as_str),
        Some("[DONE]"),
        "{events:?}"
    );
    let text: String = events[..events.len() - 1]
        .iter()
        .filter_map(|e| serde_json::from_str::<serde_json::Value>(e).ok())
        .filter_map(|c| {
            c["choices"][0]["delta"]["content"]
                .as_str()
                .map(String::from)
        })
        .collect();
    assert_eq!(text.split_whitespace().count(), 5);
    assert_eq!(pico(r.trailer("x-bursar-cost-usd").unwrap()), expected);
    // A signature made with the wrong secret is refused by the mock: the
    // check above can fail.
    let wrong = TempDir::new("providers-wrong");
    let path = wrong.0.join("bursar.toml");
    std::fs::write(&path, std::fs::read_to_string(&gw.config_path).unwrap()).unwrap();
    let gw2 = Gateway::spawn_with(wrong, path, &[], |cmd| {
        cmd.env("BURSAR_TEST_AKID", "AKIDEXAMPLE")
            .env("BURSAR_TEST_SECRET", "not-the-secret");
    });
    let r = post(
        &gw2,
        "/v1/chat/completions",
        &headers,
        &chat(model, false, ""),
    );
    assert_eq!(r.status, 403, "{}", r.text());
    assert!(r.text().contains("signature"), "{}", r.text());
}

#[test]
fn a_provider_error_comes_back_in_openais_shape_and_an_endpoint_a_kind_lacks_is_a_400() {
    let mock = mock();
    let gw = start(&mock, "");
    let r = post(
        &gw,
        "/v1/chat/completions",
        &[("x-mock-status", "529")],
        &chat("claude-sonnet-4-5", false, ""),
    );
    assert_eq!(r.status, 529);
    let v = r.json();
    assert_eq!(v["error"]["type"], "overloaded_error", "{v}");
    assert!(r.cost_usd().is_none());
    let r = post(
        &gw,
        "/v1/embeddings",
        &[],
        r#"{"model":"claude-sonnet-4-5","input":"x"}"#,
    );
    assert_eq!(r.status, 400);
    assert_eq!(r.error_code(), "unsupported_endpoint");
    // A request Anthropic cannot express is refused before it is sent.
    let r = post(
        &gw,
        "/v1/chat/completions",
        &[],
        &chat("claude-sonnet-4-5", false, r#","n":2"#),
    );
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("n"), "{}", r.text());
}

/// A raw upstream that answers one chat completion and keeps the head it got.
fn recording_upstream() -> (u16, Arc<Mutex<String>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = Arc::new(Mutex::new(String::new()));
    let s2 = Arc::clone(&seen);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { return };
            let mut r = BufReader::new(s.try_clone().unwrap());
            let mut head = String::new();
            let mut len = 0usize;
            loop {
                let mut line = String::new();
                if r.read_line(&mut line).unwrap_or(0) == 0 {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap_or(0);
                }
                head.push_str(&line);
                if line == "\r\n" {
                    break;
                }
            }
            let mut body = vec![0; len];
            std::io::Read::read_exact(&mut r, &mut body).unwrap();
            *s2.lock().unwrap() = head;
            let out = r#"{"id":"x","object":"chat.completion","created":1,"model":"gpt-4o","choices":[{"index":0,"message":{"role":"assistant","content":"hi"},"finish_reason":"stop"}],"usage":{"prompt_tokens":10,"completion_tokens":2,"total_tokens":12}}"#;
            let _ = write!(
                s,
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{out}",
                out.len()
            );
        }
    });
    (port, seen)
}

#[test]
fn azure_gets_the_deployment_in_the_path_the_api_version_and_its_api_key_header() {
    let (port, seen) = recording_upstream();
    let config = format!(
        r#"
[[providers]]
name = "az"
kind = "azure"
base_url = "http://127.0.0.1:{port}"
api_key = "az-secret"
api_version = "2024-10-21"
deployments = {{ "gpt-4o" = "prod-4o" }}
models = ["gpt-4o"]

[[virtual_keys]]
name = "demo"
key = "sk-bursar-demo"
"#
    );
    let gw = Gateway::start(&config, &[]);
    let r = post(
        &gw,
        "/v1/chat/completions?ignored=1",
        &[],
        r#"{"model":"gpt-4o","max_tokens":5,"messages":[{"role":"user","content":"hi"}]}"#,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-bursar-provider"), Some("az"));
    let head = seen.lock().unwrap().clone();
    assert!(
        head.starts_with(
            "POST /openai/deployments/prod-4o/chat/completions?api-version=2024-10-21 HTTP/1.1\r\n"
        ),
        "{head}"
    );
    assert!(head.contains("api-key: az-secret\r\n"), "{head}");
    assert!(
        !head.to_ascii_lowercase().contains("authorization"),
        "{head}"
    );
    assert!(!head.contains("sk-bursar-demo"));
}

/// An Azure provider serving any model ("*") puts the client's model name
/// into the request line as the deployment: a name that is not a plain
/// path segment (CR/LF would inject headers or a second request on the
/// connection that carries the provider's key) is refused before anything
/// is sent.
#[test]
fn an_azure_deployment_from_the_clients_model_name_must_be_a_plain_path_segment() {
    let (port, seen) = recording_upstream();
    let config = format!(
        r#"
[pricing]
unpriced = "allow"

[[providers]]
name = "az"
kind = "azure"
base_url = "http://127.0.0.1:{port}"
api_key = "az-secret"
api_version = "2024-10-21"
models = ["*"]

[[virtual_keys]]
name = "demo"
key = "sk-bursar-demo"
"#
    );
    let gw = Gateway::start(&config, &[]);
    for model in [
        "x HTTP/1.1\\r\\nx-injected: 1\\r\\n\\r\\nGET /steal",
        "a/../../admin",
        "..",
        "50%25",
        "a?b=c",
    ] {
        let body = format!(
            r#"{{"model":"{model}","max_tokens":5,"messages":[{{"role":"user","content":"hi"}}]}}"#
        );
        let r = post(&gw, "/v1/chat/completions", &[], &body);
        assert_eq!(r.status, 400, "{model}: {}", r.text());
        assert!(r.text().contains("deployment name"), "{}", r.text());
        assert_eq!(
            *seen.lock().unwrap(),
            "",
            "{model}: the upstream was sent a request"
        );
    }
    // A plain name goes through as its own deployment.
    let r = post(
        &gw,
        "/v1/chat/completions",
        &[],
        r#"{"model":"gpt-4o.mini_2","max_tokens":5,"messages":[{"role":"user","content":"hi"}]}"#,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        seen.lock()
            .unwrap()
            .starts_with("POST /openai/deployments/gpt-4o.mini_2/chat/completions?"),
        "{}",
        seen.lock().unwrap()
    );
}

#[test]
fn a_strict_budget_reserves_the_input_a_provider_adds_that_the_body_does_not_hold() {
    // Anthropic adds a tool-use system prompt the body does not hold: a
    // strict worst case reserves 1,024 input tokens more for it, whatever
    // the body spells. $0.002 affords this request's bytes and output cap
    // (about $0.001 at $3/$15 per million) but not 1,024 more input tokens
    // ($0.003).
    let mock = mock();
    let gw = start(
        &mock,
        "[[virtual_keys]]\nname = \"tight\"\nkey = \"sk-tight-budget\"\n[virtual_keys.budget]\nlimit_usd = \"0.002\"\nreset = \"1d\"\n",
    );
    let body = r#"{"model":"claude-sonnet-4-5","max_tokens":40,"messages":[{"role":"user","content":"hi"}],"\u0074ools":[{"name":"t","input_schema":{"type":"object"}}]}"#;
    let r = Client::connect(gw.addr).request(
        "POST",
        "/v1/messages",
        &[
            ("x-api-key", "sk-tight-budget"),
            ("anthropic-version", "2023-06-01"),
            ("content-type", "application/json"),
        ],
        body.as_bytes(),
    );
    assert_eq!(r.status, 402, "{}", r.text());
}
