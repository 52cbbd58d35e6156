//! The per-request CPU work before any I/O: parse the head, classify the path,
//! probe the body, authenticate, route. Run: `cargo bench --bench parse_route`.

use std::hint::black_box;

use bursar::catalog::{Catalog, Routed};
use bursar::config::Config;
use bursar::http::request::{parse_head, RequestHead};
use bursar::proxy::probe::probe;
use bursar::proxy::route::classify;

/// A head as the official openai Python SDK sends it.
const SDK_HEAD: &str = "POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nAccept-Encoding: gzip, deflate\r\nConnection: keep-alive\r\nAccept: application/json\r\nContent-Type: application/json\r\nUser-Agent: OpenAI/Python 3.57.0\r\nX-Stainless-Lang: python\r\nX-Stainless-Package-Version: 3.57.0\r\nX-Stainless-OS: Linux\r\nX-Stainless-Arch: x64\r\nX-Stainless-Runtime: CPython\r\nX-Stainless-Runtime-Version: 3.11.7\r\nAuthorization: Bearer sk-bursar-demo\r\nX-Stainless-Async: false\r\nx-stainless-retry-count: 0\r\nx-stainless-read-timeout: 600\r\nContent-Length: 164\r\n\r\n";
const BODY: &str = r#"{"messages":[{"role":"system","content":"You are a helpful assistant."},{"role":"user","content":"What is the capital of France?"}],"model":"gpt-4o-mini","max_tokens":64,"stream":false}"#;

fn catalog(keys: usize) -> Catalog {
    let mut toml = String::from(
        "[[providers]]\nname = \"openai\"\nkind = \"openai\"\nbase_url = \"https://api.openai.com/v1\"\napi_key = \"sk-x\"\nmodels = [\"gpt-4o-mini\", \"gpt-4o\", \"o3-mini\", \"text-embedding-3-small\"]\n[[providers]]\nname = \"rest\"\nkind = \"mock\"\nmodels = [\"*\"]\n",
    );
    for i in 0..keys {
        toml.push_str(&format!(
            "[[virtual_keys]]\nname = \"k{i}\"\nkey = \"sk-key-number-{i:08}\"\n"
        ));
    }
    toml.push_str("[[virtual_keys]]\nname = \"demo\"\nkey = \"sk-bursar-demo\"\n");
    let config = Config::from_toml(&toml, None).unwrap();
    Catalog::from_config(&config, 1, &bursar::books::EntityIds::sequential(&config))
}

fn benches(c: &mut criterion::Criterion) {
    let mut head = RequestHead::default();
    c.bench_function("parse_head/openai_sdk_head", |b| {
        b.iter(|| {
            parse_head(
                black_box(SDK_HEAD.as_bytes()),
                16 * 1024,
                8 << 20,
                &mut head,
            )
            .unwrap();
        })
    });
    assert!(parse_head(SDK_HEAD.as_bytes(), 16 * 1024, 8 << 20, &mut head).unwrap());
    let method = head.method();
    c.bench_function("classify/chat_completions", |b| {
        b.iter(|| classify(black_box(method), black_box("/v1/chat/completions")))
    });
    c.bench_function("probe/chat_body_164B", |b| {
        b.iter(|| probe(black_box(BODY.as_bytes())).unwrap().stream)
    });
    let cat = catalog(10_000);
    c.bench_function("authenticate/10k_keys", |b| {
        b.iter(|| cat.authenticate(black_box(b"sk-bursar-demo")).unwrap().id)
    });
    c.bench_function("route/exact_model", |b| {
        b.iter(|| {
            matches!(
                cat.route(black_box("gpt-4o-mini")),
                Some(Routed::Provider(_))
            )
        })
    });
    c.bench_function("route/fallback_model", |b| {
        b.iter(|| {
            matches!(
                cat.route(black_box("llama-3.1-70b")),
                Some(Routed::Provider(_))
            )
        })
    });
    c.bench_function("parse_route/whole_pre_io_path", |b| {
        b.iter(|| {
            parse_head(
                black_box(SDK_HEAD.as_bytes()),
                16 * 1024,
                8 << 20,
                &mut head,
            )
            .unwrap();
            let _ = classify(head.method(), head.path(SDK_HEAD.as_bytes()));
            let p = probe(black_box(BODY.as_bytes())).unwrap();
            let key = cat.authenticate(b"sk-bursar-demo").unwrap();
            let model = p.model.as_deref().unwrap();
            assert!(key.allows(model));
            matches!(cat.route(model), Some(Routed::Provider(_)))
        })
    });
}

criterion::criterion_group!(group, benches);
criterion::criterion_main!(group);
