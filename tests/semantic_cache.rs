//! The semantic response cache (issue 16, part 2) against the real binary,
//! the real mock and the real models (`scripts/fetch-embeddings DIR`,
//! found through `BURSAR_EMBEDDINGS_DIR`, default `target/embeddings`): a
//! question asked again in other words, in the same tenant, is answered
//! with the stored answer (`x-bursar-cache: semantic-hit` and its
//! similarity); a question that differs in a name, a number, a direction,
//! a negation or an identifier never is; another tenant, another system
//! prompt or another model never shares an entry.

mod util;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use util::{pico, sse_data, Client, Gateway, Mock, TempDir};

const ADMIN: &str = "admin-secret";

fn embeddings_dir() -> PathBuf {
    let dir = std::env::var_os("BURSAR_EMBEDDINGS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/target/embeddings"))
        });
    assert!(
        dir.join("manifest.json").is_file(),
        "{}: no embeddings; run scripts/fetch-embeddings {} (scripts/test does)",
        dir.display(),
        dir.display()
    );
    dir
}

fn config(mock: &Mock, semantic: &str) -> String {
    format!(
        r#"
[server]
workers = 1

[admin]
token = "{ADMIN}"

[cache]
enabled = true
semantic = true
embedding_dir = "{}"
{semantic}

[[providers]]
name = "local"
kind = "openai"
base_url = "{}"
models = ["gpt-4o-mini", "gpt-4o"]

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
"#,
        embeddings_dir().display(),
        mock.base_url()
    )
}

fn body(prompt: &str) -> String {
    serde_json::json!({
        "model": "gpt-4o-mini",
        "temperature": 0,
        "max_tokens": 8,
        "messages": [{"role": "user", "content": prompt}],
    })
    .to_string()
}

fn ask(c: &mut Client, key: &str, body: &str) -> util::Response {
    let r = c.post("/v1/chat/completions", key, body, &[]);
    assert_eq!(r.status, 200, "{}", r.text());
    r
}

/// Waits until the worker has indexed `n` prompts: a prompt is indexed
/// once the confirmation thread has its vector, after its answer went out.
fn indexed(gw: &Gateway, n: u64) {
    let t0 = Instant::now();
    while gw.metric_sum("bursar_cache_semantic_entries") < n {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "{} prompts indexed, waiting for {n}",
            gw.metric_sum("bursar_cache_semantic_entries")
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_paraphrase_is_served_the_stored_answer_for_free_and_logged_as_a_semantic_hit() {
    let mock = Mock::start(&[]);
    let gw = Gateway::start(&config(&mock, ""), &[]);
    let mut c = Client::connect(gw.addr);
    let first = ask(
        &mut c,
        "sk-acme-one",
        &body("How do I reverse a list in Python?"),
    );
    assert_eq!(first.header("x-bursar-cache"), Some("miss"));
    let paid = pico(first.cost_usd().unwrap());
    assert!(paid > 0);
    indexed(&gw, 1);
    // Another key of the same customer, the same question in other words.
    let second = ask(
        &mut c,
        "sk-acme-two",
        &body("In Python, how can I reverse a list?"),
    );
    assert_eq!(
        second.header("x-bursar-cache"),
        Some("semantic-hit"),
        "{}",
        second.text()
    );
    let similarity: f64 = second
        .header("x-bursar-cache-similarity")
        .expect("the similarity is reported")
        .parse()
        .unwrap();
    assert!((0.0..=1.0).contains(&similarity), "{similarity}");
    assert_eq!(second.cost_usd(), Some("0"));
    assert_eq!(second.body, first.body);
    assert!(second.header("x-bursar-provider").is_none());
    assert_eq!(gw.metric_sum("bursar_cache_semantic_hits_total"), 1);
    assert_eq!(
        gw.metric_sum("bursar_cache_avoided_picodollars_total") as i128,
        paid
    );
    // The log says what happened and what it avoided.
    std::thread::sleep(Duration::from_millis(600));
    let rows = util::admin_get(&gw, ADMIN, "/admin/logs?limit=10").json();
    let rows = rows["data"].as_array().unwrap();
    assert_eq!(rows[0]["cache"], "semantic-hit", "{rows:?}");
    assert_eq!(pico(rows[0]["cost_usd"].as_str().unwrap()), 0);
    assert_eq!(pico(rows[0]["avoided_usd"].as_str().unwrap()), paid);
    assert_eq!(rows[1]["cache"], "miss");
}

#[test]
fn a_different_question_in_similar_words_is_never_served_another_answer() {
    let mock = Mock::start(&[]);
    let gw = Gateway::start(&config(&mock, ""), &[]);
    let mut c = Client::connect(gw.addr);
    let stored = [
        "What is the capital of France?",
        "How do I convert a string to an int in Python?",
        "What's new in Python 3.11?",
        "How do I delete a git branch that has been merged?",
        "What does `git reset --hard` do?",
        "Convert 5 km to miles.",
    ];
    for p in stored {
        ask(&mut c, "sk-acme-one", &body(p));
    }
    indexed(&gw, stored.len() as u64);
    for p in [
        "What is the capital of Germany?",
        "How do I convert an int to a string in Python?",
        "What's new in Python 3.12?",
        "How do I delete a git branch that has not been merged?",
        "What does `git reset --soft` do?",
        "Convert 5 miles to km.",
    ] {
        let r = ask(&mut c, "sk-acme-one", &body(p));
        assert_eq!(r.header("x-bursar-cache"), Some("miss"), "{p}");
        assert!(pico(r.cost_usd().unwrap()) > 0, "{p}");
    }
    assert_eq!(gw.metric_sum("bursar_cache_semantic_hits_total"), 0);
}

#[test]
fn tenants_system_prompts_and_models_never_share_semantic_entries() {
    let mock = Mock::start(&[]);
    let gw = Gateway::start(&config(&mock, ""), &[]);
    let mut c = Client::connect(gw.addr);
    ask(
        &mut c,
        "sk-acme-one",
        &body("How do I reverse a list in Python?"),
    );
    indexed(&gw, 1);
    let paraphrase = body("In Python, how can I reverse a list?");
    // Another customer.
    let r = ask(&mut c, "sk-globex-one", &paraphrase);
    assert_eq!(r.header("x-bursar-cache"), Some("miss"));
    // Another model.
    let r = ask(
        &mut c,
        "sk-acme-one",
        &paraphrase.replace("gpt-4o-mini", "gpt-4o"),
    );
    assert_eq!(r.header("x-bursar-cache"), Some("miss"));
    // A system prompt.
    let with_system = serde_json::json!({
        "model": "gpt-4o-mini",
        "temperature": 0,
        "max_tokens": 8,
        "messages": [
            {"role": "system", "content": "Answer in French."},
            {"role": "user", "content": "In Python, how can I reverse a list?"},
        ],
    })
    .to_string();
    let r = ask(&mut c, "sk-acme-one", &with_system);
    assert_eq!(r.header("x-bursar-cache"), Some("miss"));
    // Other parameters.
    let r = ask(
        &mut c,
        "sk-acme-one",
        &paraphrase.replace("\"max_tokens\":8", "\"max_tokens\":9"),
    );
    assert_eq!(r.header("x-bursar-cache"), Some("miss"));
    // Tools make a request exact-only (the default policy).
    let tools = serde_json::json!({
        "model": "gpt-4o-mini",
        "temperature": 0,
        "max_tokens": 8,
        "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
        "messages": [{"role": "user", "content": "In Python, how can I reverse a list?"}],
    })
    .to_string();
    let r = ask(&mut c, "sk-acme-one", &tools);
    assert_eq!(r.header("x-bursar-cache"), Some("miss"));
    // The owner still gets its hit.
    let r = ask(&mut c, "sk-acme-one", &paraphrase);
    assert_eq!(r.header("x-bursar-cache"), Some("semantic-hit"));
    assert_eq!(gw.metric_sum("bursar_cache_semantic_hits_total"), 1);
}

#[test]
fn a_stream_is_served_as_a_stream_and_skip_and_refresh_are_obeyed() {
    let mock = Mock::start(&[]);
    let gw = Gateway::start(&config(&mock, ""), &[]);
    let mut c = Client::connect(gw.addr);
    let stream = |p: &str| {
        serde_json::json!({
            "model": "gpt-4o-mini",
            "temperature": 0,
            "max_tokens": 8,
            "stream": true,
            "messages": [{"role": "user", "content": p}],
        })
        .to_string()
    };
    let first = ask(
        &mut c,
        "sk-acme-one",
        &stream("How long is the Nile River?"),
    );
    assert_eq!(first.header("x-bursar-cache"), Some("miss"));
    indexed(&gw, 1);
    let paraphrase = stream("What is the length of the Nile River?");
    // The non-streamed question is another context.
    let r = ask(
        &mut c,
        "sk-acme-one",
        &body("What is the length of the Nile River?"),
    );
    assert_eq!(r.header("x-bursar-cache"), Some("miss"));
    let r = c.post(
        "/v1/chat/completions",
        "sk-acme-one",
        &paraphrase,
        &[("x-bursar-cache", "skip")],
    );
    assert!(r.header("x-bursar-cache").is_none());
    let r = ask(&mut c, "sk-acme-one", &paraphrase);
    assert_eq!(
        r.header("x-bursar-cache"),
        Some("semantic-hit"),
        "{}",
        r.text()
    );
    assert!(r
        .header("content-type")
        .unwrap()
        .starts_with("text/event-stream"));
    assert_eq!(sse_data(&r.body), sse_data(&first.body));
    // refresh: forwarded, and its answer replaces the stored one.
    let r = c.post(
        "/v1/chat/completions",
        "sk-acme-one",
        &paraphrase,
        &[("x-bursar-cache", "refresh")],
    );
    assert_eq!(r.header("x-bursar-cache"), Some("miss"));
    assert!(pico(r.cost_usd().unwrap()) > 0);
}

#[test]
fn without_confirmation_the_static_table_and_guards_decide_at_a_stricter_threshold() {
    let mock = Mock::start(&[]);
    let gw = Gateway::start(
        &config(&mock, "confirm = \"off\"\nsimilarity_min = 0.5"),
        &[],
    );
    let mut c = Client::connect(gw.addr);
    ask(
        &mut c,
        "sk-acme-one",
        &body("What is the capital of Australia?"),
    );
    // Indexed once the answer went out: no vector to wait for.
    indexed(&gw, 1);
    let r = ask(
        &mut c,
        "sk-acme-one",
        &body("Which city is the capital of Australia?"),
    );
    assert_eq!(r.header("x-bursar-cache"), Some("semantic-hit"));
    // The guards still refuse another name, however low the threshold.
    let r = ask(
        &mut c,
        "sk-acme-one",
        &body("What is the capital of Austria?"),
    );
    assert_eq!(r.header("x-bursar-cache"), Some("miss"));
    assert!(gw.metric_sum("bursar_cache_semantic_guard_refusals_total") >= 1);
}

#[test]
fn check_config_refuses_a_semantic_cache_it_could_not_load() {
    let dir = TempDir::new("semantic-check");
    let mock_url = "http://127.0.0.1:9/v1";
    let base = |cache: &str| {
        format!(
            "[cache]\nenabled = true\n{cache}\n\n[[providers]]\nname = \"local\"\nkind = \"openai\"\nbase_url = \"{mock_url}\"\nmodels = [\"m\"]\n"
        )
    };
    let run = |name: &str, text: String| {
        let path = dir.0.join(name);
        std::fs::write(&path, text).unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_bursar"))
            .args(["check-config", "--config"])
            .arg(&path)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let good = format!(
        "semantic = true\nembedding_dir = \"{}\"",
        embeddings_dir().display()
    );
    let (ok, err) = run("good.toml", base(&good));
    assert!(ok, "{err}");
    for (name, cache, says) in [
        (
            "nodir.toml",
            "semantic = true".to_string(),
            "cache.embedding_dir",
        ),
        (
            "missing.toml",
            format!(
                "semantic = true\nembedding_dir = \"{}\"",
                dir.0.join("none").display()
            ),
            "manifest.json",
        ),
        (
            "stray.toml",
            format!("embedding_dir = \"{}\"", embeddings_dir().display()),
            "needs `semantic = true`",
        ),
        (
            "threshold.toml",
            format!("{good}\nsimilarity_min = 1.5"),
            "cache.similarity_min",
        ),
        (
            "confirm.toml",
            format!("{good}\nconfirm = \"gpt\""),
            "cache.confirm",
        ),
    ] {
        let (ok, err) = run(name, base(&cache));
        assert!(!ok, "{name} was accepted");
        assert!(err.contains(says), "{name}: {err}");
    }
}
