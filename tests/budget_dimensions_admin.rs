//! The admin API on budgets beside the organisation chart, end to end (the
//! real gateway, the real mock upstream): spend views of a model's, a tag
//! value's and an owner's budget on a model; their reset and top-up; the
//! gateway-wide model and tag budgets created, replaced and deleted through
//! the API, in force at once and across a restart; a key created with its
//! own budgets and rate limits on models.

mod util;

use util::{pico, proxy_config, Client, Gateway, Mock, Response, CHAT};

const ADMIN: &str = "admin-secret";
const KEY: &str = "sk-search-prod";
/// A model whose name holds a '/', served by the mock and priced here.
const LLAMA: &str = "meta-llama/Llama-3";

/// gpt-4o-mini at the shipped table's $0.15 / $0.60 per million tokens; the
/// mock bills CHAT as 8 prompt and max_tokens = 5 completion tokens.
const CHAT_COST_PICO: i128 = 8 * 150_000 + 5 * 600_000;
/// The same chat on LLAMA at the $1 / $2 per million tokens set below.
const LLAMA_COST_PICO: i128 = 8 * 1_000_000 + 5 * 2_000_000;

fn admin(gw: &Gateway, method: &str, path: &str, body: &str) -> Response {
    util::admin_request(gw, ADMIN, method, path, body)
}

/// The config: `local` (the mock) also serves LLAMA; an organisation chart
/// whose members have budgets on models; `extra` adds the rest.
fn config(base_url: &str, extra: &str) -> String {
    proxy_config(
        base_url,
        &format!(
            r#"
[admin]
token = "{ADMIN}"

[[providers]]
name = "llama"
kind = "openai"
base_url = "{base_url}"
api_key = "sk-upstream-secret"
models = ["{LLAMA}"]

[[prices]]
model = "{LLAMA}"
input_per_mtok_usd = "1"
output_per_mtok_usd = "2"

[[customers]]
name = "acme"
model_budgets = [ {{ model = "gpt-4o-mini", limit_usd = "100", reset = "1M" }} ]

[[teams]]
name = "search"
customer = "acme"
model_budgets = [ {{ model = "gpt-4o-mini", limit_usd = "50", reset = "1d" }} ]

[[virtual_keys]]
name = "search-prod"
team = "search"
key = "{KEY}"
model_budgets = [
  {{ model = "gpt-4o-mini", limit_usd = "10", reset = "1d" }},
  {{ model = "{LLAMA}", limit_usd = "0.0002" }},
]
{extra}
"#
        ),
    )
}

fn chat(model: &str) -> String {
    CHAT.replace("gpt-4o-mini", model)
}

/// One chat for `model` with `key`, tagged with `tags` when given.
fn send(c: &mut Client, key: &str, model: &str, tags: Option<&str>) -> Response {
    let headers: Vec<(&str, &str)> = tags.map(|t| ("x-bursar-tags", t)).into_iter().collect();
    c.post("/v1/chat/completions", key, &chat(model), &headers)
}

fn spend(gw: &Gateway, path: &str) -> serde_json::Value {
    let r = admin(gw, "GET", &format!("/admin/spend/{path}"), "");
    assert_eq!(r.status, 200, "{path}: {}", r.text());
    r.json()
}

fn spent(view: &serde_json::Value) -> i128 {
    pico(view["spent_usd"].as_str().unwrap())
}

/// A request's 402, with the level that refused it.
fn assert_refused(r: &Response, kind: &str, name: &str) {
    assert_eq!(r.status, 402, "{}", r.text());
    let e = &r.json()["error"];
    assert_eq!(e["code"], "budget_exceeded", "{e}");
    assert_eq!(e["entity_kind"], kind, "{e}");
    assert_eq!(e["entity"], name, "{e}");
}

fn assert_not_found(r: &Response) {
    assert_eq!(r.status, 404, "{}", r.text());
    let e = &r.json()["error"];
    assert_eq!(e["code"], "not_found", "{e}");
    assert_eq!(e["type"], "invalid_request_error", "{e}");
}

#[test]
fn spend_views_of_model_tag_and_owner_model_budgets() {
    let mock = Mock::start(&[]);
    let gw = Gateway::start(
        &config(
            &mock.base_url(),
            &format!(
                r#"
[[model_budgets]]
model = "gpt-4o-mini"
budget = {{ limit_usd = "100", reset = "1d" }}

[[model_budgets]]
model = "{LLAMA}"
budget = {{ limit_usd = "100" }}

[[tag_budgets]]
tag = "feature=search"
budget = {{ limit_usd = "100", reset = "1d", mode = "soft" }}
"#
            ),
        ),
        &[],
    );
    let mut c = Client::connect(gw.addr);
    for tags in [
        Some("feature=search"),
        Some("feature=search,env=prod"),
        None,
    ] {
        let r = send(&mut c, KEY, "gpt-4o-mini", tags);
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(pico(r.cost_usd().unwrap()), CHAT_COST_PICO);
    }
    let r = send(&mut c, KEY, LLAMA, Some("feature=search"));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(pico(r.cost_usd().unwrap()), LLAMA_COST_PICO);
    // Another key: counted by the model and the tag, not by search-prod's.
    let r = send(
        &mut c,
        "sk-bursar-demo",
        "gpt-4o-mini",
        Some("feature=search"),
    );
    assert_eq!(r.status, 200, "{}", r.text());

    // A model gateway-wide.
    let v = spend(&gw, "models/gpt-4o-mini");
    assert_eq!(v["object"], "spend");
    assert_eq!(
        (v["kind"].as_str(), v["name"].as_str()),
        (Some("model"), Some("gpt-4o-mini"))
    );
    assert_eq!(spent(&v), 4 * CHAT_COST_PICO);
    assert_eq!(v["limit_usd"], "100");
    assert_eq!(
        pico(v["remaining_usd"].as_str().unwrap()),
        pico("100") - 4 * CHAT_COST_PICO
    );
    assert!(
        v["reset_at"].as_str().is_some_and(|t| t.ends_with('Z')),
        "{v}"
    );
    assert_eq!(v["mode"], "strict");
    // A model whose name holds a '/': as path segments or escaped.
    for path in [
        "models/meta-llama/Llama-3",
        "models/meta-llama%2FLlama-3",
        "models/meta-llama%2fLlama-3",
    ] {
        let v = spend(&gw, path);
        assert_eq!(
            (v["kind"].as_str(), v["name"].as_str()),
            (Some("model"), Some(LLAMA))
        );
        assert_eq!(spent(&v), LLAMA_COST_PICO);
        assert!(v["reset_at"].is_null(), "prepaid: {v}");
    }
    // A tag value.
    let v = spend(&gw, "tags/feature=search");
    assert_eq!(
        (v["kind"].as_str(), v["name"].as_str()),
        (Some("tag"), Some("feature=search"))
    );
    assert_eq!(spent(&v), 3 * CHAT_COST_PICO + LLAMA_COST_PICO);
    assert_eq!(v["mode"], "soft");
    assert_eq!(spent(&spend(&gw, "tags/feature%3Dsearch")), spent(&v));
    // A key's, a team's, a customer's budget on a model: named owner/model.
    let v = spend(&gw, "keys/search-prod/models/gpt-4o-mini");
    assert_eq!(
        (v["kind"].as_str(), v["name"].as_str()),
        (Some("key_model"), Some("search-prod/gpt-4o-mini"))
    );
    assert_eq!(spent(&v), 3 * CHAT_COST_PICO);
    assert_eq!(v["limit_usd"], "10");
    for path in [
        "keys/search-prod/models/meta-llama/Llama-3",
        "keys/search-prod/models/meta-llama%2FLlama-3",
    ] {
        let v = spend(&gw, path);
        assert_eq!(
            (v["kind"].as_str(), v["name"].as_str()),
            (Some("key_model"), Some("search-prod/meta-llama/Llama-3"))
        );
        assert_eq!(spent(&v), LLAMA_COST_PICO);
    }
    let v = spend(&gw, "teams/search/models/gpt-4o-mini");
    assert_eq!(
        (v["kind"].as_str(), v["name"].as_str()),
        (Some("team_model"), Some("search/gpt-4o-mini"))
    );
    assert_eq!(spent(&v), 3 * CHAT_COST_PICO);
    let v = spend(&gw, "customers/acme/models/gpt-4o-mini");
    assert_eq!(
        (v["kind"].as_str(), v["name"].as_str()),
        (Some("customer_model"), Some("acme/gpt-4o-mini"))
    );
    assert_eq!(spent(&v), 3 * CHAT_COST_PICO);
    assert_eq!(v["limit_usd"], "100");

    // Budgets the config does not have are 404s in OpenAI's shape.
    for path in [
        "models/gpt-4o",
        "models/meta-llama",
        "tags/feature=other",
        "tags/env=prod",
        "keys/demo/models/gpt-4o-mini",
        "keys/search-prod/models/gpt-4o",
        "keys/nobody/models/gpt-4o-mini",
        "teams/search/models/meta-llama/Llama-3",
        "customers/acme/models/o3-mini",
    ] {
        let r = admin(&gw, "GET", &format!("/admin/spend/{path}"), "");
        assert_not_found(&r);
    }
    let r = admin(
        &gw,
        "GET",
        "/admin/spend/providers/local/models/gpt-4o-mini",
        "",
    );
    assert_eq!((r.status, r.error_code().as_str()), (404, "unknown_url"));
    let r = admin(&gw, "GET", "/admin/spend/models/gpt%zz", "");
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (400, "invalid_value"),
        "{}",
        r.text()
    );
    // The owner routes' existing views are unchanged.
    assert_eq!(spend(&gw, "keys/search-prod")["kind"], "key");
}

#[test]
fn reset_and_top_up_at_every_new_level() {
    let mock = Mock::start(&[]);
    let gw = Gateway::start(
        &config(
            &mock.base_url(),
            r#"
[[model_budgets]]
model = "gpt-4o-mini"
budget = { limit_usd = "0.000025" }

[[tag_budgets]]
tag = "feature=search"
budget = { limit_usd = "100", reset = "1d" }
"#,
        ),
        &[],
    );
    let mut c = Client::connect(gw.addr);
    // A prepaid model budget: requests until it refuses (each reserves its
    // worst case, ~17 µ$, and is charged 4.2 µ$).
    let mut ok = 0;
    let refusal = loop {
        let r = send(
            &mut c,
            "sk-bursar-demo",
            "gpt-4o-mini",
            Some("feature=search"),
        );
        if r.status != 200 {
            break r;
        }
        ok += 1;
        assert!(ok < 10, "the model budget never refused");
    };
    assert_refused(&refusal, "model", "gpt-4o-mini");
    assert!(refusal.json()["error"]["reset_at"].is_null());
    assert_eq!(ok, 2);
    // Every key is refused: the budget is the model's, gateway-wide.
    assert_refused(
        &send(&mut c, KEY, "gpt-4o-mini", None),
        "model",
        "gpt-4o-mini",
    );
    // Another model is not.
    assert_eq!(send(&mut c, KEY, LLAMA, None).status, 200);

    // A top-up admits again, and answers the spend view after it.
    let r = admin(
        &gw,
        "POST",
        "/admin/model_budgets/gpt-4o-mini/top-up",
        r#"{"amount_usd":"0.00001"}"#,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(
        (v["kind"].as_str(), v["name"].as_str()),
        (Some("model"), Some("gpt-4o-mini"))
    );
    assert_eq!(v["limit_usd"], "0.000035");
    assert_eq!(v["topup_usd"], "0.00001");
    assert_eq!(spent(&v), 2 * CHAT_COST_PICO);
    assert_eq!(send(&mut c, KEY, "gpt-4o-mini", None).status, 200);
    // A bad amount is a 400; so is a top-up of a budget that resets.
    let r = admin(
        &gw,
        "POST",
        "/admin/model_budgets/gpt-4o-mini/top-up",
        r#"{"amount_usd":"x"}"#,
    );
    assert_eq!((r.status, r.error_code().as_str()), (400, "invalid_value"));
    let r = admin(
        &gw,
        "POST",
        "/admin/tag_budgets/feature=search/top-up",
        r#"{"amount_usd":"1"}"#,
    );
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (400, "invalid_value"),
        "{}",
        r.text()
    );

    // Reset: spend starts over at each level. (Each reset follows a spend
    // view: a reset does not first apply the charges still in the workers'
    // rings, a view does, so a charge could otherwise land after it.)
    assert_eq!(spent(&spend(&gw, "models/gpt-4o-mini")), 3 * CHAT_COST_PICO);
    let r = admin(&gw, "POST", "/admin/model_budgets/gpt-4o-mini/reset", "");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["spent_usd"], "0");
    assert_eq!(spent(&spend(&gw, "models/gpt-4o-mini")), 0);
    assert_eq!(
        spent(&spend(&gw, "tags/feature=search")),
        2 * CHAT_COST_PICO
    );
    let r = admin(&gw, "POST", "/admin/tag_budgets/feature=search/reset", "");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        (r.json()["kind"].as_str(), r.json()["spent_usd"].as_str()),
        (Some("tag"), Some("0"))
    );
    assert_eq!(spent(&spend(&gw, "tags/feature=search")), 0);
    for (path, kind, name) in [
        (
            "keys/search-prod/models/gpt-4o-mini",
            "key_model",
            "search-prod/gpt-4o-mini",
        ),
        (
            "teams/search/models/gpt-4o-mini",
            "team_model",
            "search/gpt-4o-mini",
        ),
        (
            "customers/acme/models/gpt-4o-mini",
            "customer_model",
            "acme/gpt-4o-mini",
        ),
    ] {
        assert_eq!(spent(&spend(&gw, path)), CHAT_COST_PICO, "{path}");
        let r = admin(&gw, "POST", &format!("/admin/{path}/reset"), "");
        assert_eq!(r.status, 200, "{path}: {}", r.text());
        let v = r.json();
        assert_eq!(
            (v["kind"].as_str(), v["name"].as_str()),
            (Some(kind), Some(name))
        );
        assert_eq!(v["spent_usd"], "0");
        assert_eq!(spent(&spend(&gw, path)), 0);
    }

    // A key's prepaid budget on the '/' model (200 µ$): 18 µ$ chats, each
    // reserving its worst case (every body byte an input token, ~115 µ$),
    // until one is refused; top-ups admit again.
    let mut charged = LLAMA_COST_PICO; // the one above
    loop {
        let r = send(&mut c, KEY, LLAMA, None);
        if r.status != 200 {
            assert_refused(&r, "key_model", "search-prod/meta-llama/Llama-3");
            break;
        }
        charged += LLAMA_COST_PICO;
        assert!(charged < 20 * LLAMA_COST_PICO, "the budget never refused");
    }
    assert_eq!(
        spent(&spend(&gw, "keys/search-prod/models/meta-llama/Llama-3")),
        charged
    );
    for path in [
        "/admin/keys/search-prod/models/meta-llama/Llama-3/top-up",
        "/admin/virtual_keys/search-prod/models/meta-llama%2FLlama-3/topup",
    ] {
        let r = admin(&gw, "POST", path, r#"{"amount_usd":"0.0001"}"#);
        assert_eq!(r.status, 200, "{path}: {}", r.text());
        assert_eq!(r.json()["name"], "search-prod/meta-llama/Llama-3");
        assert_eq!(r.json()["kind"], "key_model");
    }
    assert_eq!(
        spend(&gw, "keys/search-prod/models/meta-llama%2FLlama-3")["limit_usd"],
        "0.0004"
    );
    assert_eq!(send(&mut c, KEY, LLAMA, None).status, 200);
    assert_eq!(
        spent(&spend(&gw, "keys/search-prod/models/meta-llama/Llama-3")),
        charged + LLAMA_COST_PICO
    );
    let r = admin(
        &gw,
        "POST",
        "/admin/keys/search-prod/models/meta-llama/Llama-3/reset",
        "",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["spent_usd"], "0");

    // Unknown budgets are 404s; other methods on the action routes are 405s.
    for path in [
        "/admin/model_budgets/gpt-4o/reset",
        "/admin/tag_budgets/feature=other/reset",
        "/admin/keys/demo/models/gpt-4o-mini/reset",
        "/admin/teams/search/models/gpt-4o/top-up",
    ] {
        assert_not_found(&admin(&gw, "POST", path, r#"{"amount_usd":"1"}"#));
    }
    assert_eq!(
        admin(
            &gw,
            "GET",
            "/admin/keys/search-prod/models/gpt-4o-mini/reset",
            ""
        )
        .status,
        405
    );
    assert_eq!(
        admin(&gw, "PATCH", "/admin/model_budgets/gpt-4o-mini", "{}").status,
        405
    );
}

#[test]
fn model_and_tag_budgets_defined_through_the_api_apply_at_once_and_survive_a_restart() {
    let mock = Mock::start(&[]);
    let gw = Gateway::start(
        &config(
            &mock.base_url(),
            r#"
[[model_budgets]]
model = "gpt-4o"
budget = { limit_usd = "500", reset = "1M" }

[[tag_budgets]]
tag = "feature=search"
budget = { limit_usd = "100", reset = "1d" }
"#,
        ),
        &[],
    );
    let mut c = Client::connect(gw.addr);
    let list = admin(&gw, "GET", "/admin/model_budgets", "").json();
    assert_eq!(list["object"], "list");
    assert_eq!(list["data"].as_array().unwrap().len(), 1);
    let b = &list["data"][0];
    assert_eq!(
        (b["model"].as_str(), b["source"].as_str()),
        (Some("gpt-4o"), Some("file"))
    );
    assert_eq!(b["budget"]["limit_usd"], "500");
    assert_eq!(
        (b["overrides_file"].as_bool(), b["deleted"].as_bool()),
        (Some(false), Some(false))
    );
    assert_eq!(send(&mut c, KEY, "gpt-4o-mini", None).status, 200);

    // A new model budget: in force for the next request, with its own spend.
    let r = admin(
        &gw,
        "PUT",
        "/admin/model_budgets/gpt-4o-mini",
        r#"{"budget":{"limit_usd":"0.000001"}}"#,
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let v = r.json();
    assert_eq!(
        (v["object"].as_str(), v["model"].as_str()),
        (Some("model_budget"), Some("gpt-4o-mini"))
    );
    assert_eq!(
        (v["source"].as_str(), v["overrides_file"].as_bool()),
        (Some("api"), Some(false))
    );
    assert_refused(
        &send(&mut c, KEY, "gpt-4o-mini", None),
        "model",
        "gpt-4o-mini",
    );
    assert_refused(
        &send(&mut c, "sk-bursar-demo", "gpt-4o-mini", None),
        "model",
        "gpt-4o-mini",
    );
    assert_eq!(spend(&gw, "models/gpt-4o-mini")["limit_usd"], "0.000001");
    // Replaced: 200, and the new limit applies at once.
    let r = admin(
        &gw,
        "PUT",
        "/admin/model_budgets/gpt-4o-mini",
        r#"{"model":"gpt-4o-mini","budget":{"limit_usd":"1","reset":"1d"}}"#,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["budget"]["limit_usd"], "1");
    assert_eq!(send(&mut c, KEY, "gpt-4o-mini", None).status, 200);
    assert_eq!(spent(&spend(&gw, "models/gpt-4o-mini")), CHAT_COST_PICO);
    // A model name with '/', escaped.
    let r = admin(
        &gw,
        "PUT",
        "/admin/model_budgets/meta-llama%2FLlama-3",
        r#"{"budget":{"limit_usd":"1"}}"#,
    );
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.json()["model"], LLAMA);
    assert_eq!(send(&mut c, "sk-bursar-demo", LLAMA, None).status, 200);
    assert_eq!(
        spent(&spend(&gw, "models/meta-llama/Llama-3")),
        LLAMA_COST_PICO
    );
    let r = admin(&gw, "GET", "/admin/model_budgets/meta-llama/Llama-3", "");
    assert_eq!((r.status, r.json()["model"].as_str()), (200, Some(LLAMA)));

    // Refused changes: 400 naming the field, and nothing changes.
    for (path, body, mentions) in [
        (
            "model_budgets/o3-mini",
            r#"{"budget":{"limit_usd":"ten"}}"#,
            "model_budgets[",
        ),
        (
            "model_budgets/o3-mini",
            r#"{"budget":{"limit":"1"}}"#,
            "budget: unknown field",
        ),
        (
            "model_budgets/o3-mini",
            r#"{"budget":{"limit_usd":"1","mode":"loose"}}"#,
            "mode",
        ),
        ("model_budgets/o3-mini", r#"{"limit_usd":"1"}"#, "limit_usd"),
        (
            "model_budgets/o3-mini",
            r#"{"model":"gpt-4o","budget":{"limit_usd":"1"}}"#,
            "renamed",
        ),
        (
            "model_budgets/gpt-*",
            r#"{"budget":{"limit_usd":"1"}}"#,
            "no patterns",
        ),
        (
            "tag_budgets/feature",
            r#"{"budget":{"limit_usd":"1"}}"#,
            "key=value",
        ),
        (
            "tag_budgets/bad%20key=x",
            r#"{"budget":{"limit_usd":"1"}}"#,
            "tag_budgets[",
        ),
    ] {
        let r = admin(&gw, "PUT", &format!("/admin/{path}"), body);
        assert_eq!(
            (r.status, r.error_code().as_str()),
            (400, "invalid_value"),
            "{path} {body}: {}",
            r.text()
        );
        let message = r.json()["error"]["message"].as_str().unwrap().to_string();
        assert!(
            message.contains(mentions),
            "{path} {body}: {message} should mention {mentions}"
        );
    }
    assert_not_found(&admin(&gw, "GET", "/admin/model_budgets/o3-mini", ""));
    assert_not_found(&admin(&gw, "GET", "/admin/tag_budgets/feature", ""));

    // A tag budget: requests carrying the tag are refused, others are not.
    let r = admin(
        &gw,
        "PUT",
        "/admin/tag_budgets/env=prod",
        r#"{"budget":{"limit_usd":"0.000001"}}"#,
    );
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(
        (r.json()["tag"].as_str(), r.json()["source"].as_str()),
        (Some("env=prod"), Some("api"))
    );
    assert_refused(
        &send(&mut c, KEY, "gpt-4o-mini", Some("env=prod")),
        "tag",
        "env=prod",
    );
    assert_refused(
        &send(
            &mut c,
            "sk-bursar-demo",
            "gpt-4o-mini",
            Some("feature=search,env=prod"),
        ),
        "tag",
        "env=prod",
    );
    assert_eq!(
        send(&mut c, KEY, "gpt-4o-mini", Some("env=dev")).status,
        200
    );
    assert_eq!(spend(&gw, "tags/env=prod")["kind"], "tag");
    // Tag budgets name at most 8 tag keys: feature, env and 6 more fit, a
    // ninth is refused naming the field, and nothing is kept of it.
    for i in 3..=8 {
        let r = admin(
            &gw,
            "PUT",
            &format!("/admin/tag_budgets/k{i}=v"),
            r#"{"budget":{"limit_usd":"1"}}"#,
        );
        assert_eq!(r.status, 201, "k{i}: {}", r.text());
    }
    let r = admin(
        &gw,
        "PUT",
        "/admin/tag_budgets/k9=v",
        r#"{"budget":{"limit_usd":"1"}}"#,
    );
    assert_eq!(r.status, 400, "{}", r.text());
    let message = r.json()["error"]["message"].as_str().unwrap().to_string();
    assert!(
        message.contains("tag_budgets[") && message.contains("at most 8 tag keys"),
        "{message}"
    );
    assert_not_found(&admin(&gw, "GET", "/admin/tag_budgets/k9=v", ""));
    // More values of a key already named are fine.
    let r = admin(
        &gw,
        "PUT",
        "/admin/tag_budgets/k8=w",
        r#"{"budget":{"limit_usd":"1"}}"#,
    );
    assert_eq!(r.status, 201, "{}", r.text());

    // The file's tag budget overridden: the API's wins, and says so.
    let r = admin(
        &gw,
        "PUT",
        "/admin/tag_budgets/feature=search",
        r#"{"budget":{"limit_usd":"0.000001"}}"#,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        (
            r.json()["source"].as_str(),
            r.json()["overrides_file"].as_bool()
        ),
        (Some("api"), Some(true))
    );
    assert_refused(
        &send(&mut c, KEY, "gpt-4o-mini", Some("feature=search")),
        "tag",
        "feature=search",
    );
    // The file's model budget deleted: recorded, shown, no longer in force.
    let r = admin(&gw, "DELETE", "/admin/model_budgets/gpt-4o", "");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        (
            r.json()["deleted"].as_bool(),
            r.json()["reverted_to_file"].as_bool()
        ),
        (Some(true), Some(false))
    );
    let v = admin(&gw, "GET", "/admin/model_budgets/gpt-4o", "").json();
    assert_eq!(
        (v["deleted"].as_bool(), v["source"].as_str()),
        (Some(true), Some("api"))
    );
    assert!(v["budget"].is_null(), "{v}");
    assert_not_found(&admin(&gw, "GET", "/admin/spend/models/gpt-4o", ""));

    // All of it survives a restart, kept in governance.json.
    let overlay = std::fs::read_to_string(gw.dir.0.join("bursar-state/governance.json")).unwrap();
    assert!(
        overlay.contains("model_budgets") && overlay.contains("tag_budgets"),
        "{overlay}"
    );
    let gw = gw.stop_and_restart(&[]);
    let mut c = Client::connect(gw.addr);
    let v = admin(&gw, "GET", "/admin/model_budgets/gpt-4o-mini", "").json();
    assert_eq!(
        (v["source"].as_str(), v["budget"]["limit_usd"].as_str()),
        (Some("api"), Some("1"))
    );
    // The chat above and the one tagged env=dev.
    assert_eq!(spent(&spend(&gw, "models/gpt-4o-mini")), 2 * CHAT_COST_PICO);
    let models: Vec<String> = admin(&gw, "GET", "/admin/model_budgets", "").json()["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| format!("{}:{}", b["model"].as_str().unwrap(), b["deleted"]))
        .collect();
    assert_eq!(
        models,
        [
            "gpt-4o:true",
            "gpt-4o-mini:false",
            "meta-llama/Llama-3:false"
        ]
    );
    assert_not_found(&admin(&gw, "GET", "/admin/spend/models/gpt-4o", ""));
    assert_refused(
        &send(&mut c, KEY, "gpt-4o-mini", Some("env=prod")),
        "tag",
        "env=prod",
    );
    assert_refused(
        &send(&mut c, KEY, "gpt-4o-mini", Some("feature=search")),
        "tag",
        "feature=search",
    );
    assert_eq!(
        admin(&gw, "GET", "/admin/tag_budgets", "").json()["data"]
            .as_array()
            .unwrap()
            .len(),
        9
    );

    // DELETE of an override returns to the file's budget.
    let r = admin(&gw, "DELETE", "/admin/tag_budgets/feature=search", "");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        (
            r.json()["deleted"].as_bool(),
            r.json()["reverted_to_file"].as_bool()
        ),
        (Some(false), Some(true))
    );
    assert_eq!(
        admin(&gw, "GET", "/admin/tag_budgets/feature=search", "").json()["source"],
        "file"
    );
    assert_eq!(
        send(&mut c, KEY, "gpt-4o-mini", Some("feature=search")).status,
        200
    );
    // DELETE of a recorded deletion does too.
    let r = admin(&gw, "DELETE", "/admin/model_budgets/gpt-4o", "");
    assert_eq!(r.json()["reverted_to_file"], true, "{}", r.text());
    assert_eq!(spend(&gw, "models/gpt-4o")["limit_usd"], "500");
    // DELETE of a budget only the API defined removes it.
    let r = admin(&gw, "DELETE", "/admin/tag_budgets/env=prod", "");
    assert_eq!(
        (
            r.json()["deleted"].as_bool(),
            r.json()["reverted_to_file"].as_bool()
        ),
        (Some(true), Some(false))
    );
    assert_not_found(&admin(&gw, "GET", "/admin/tag_budgets/env=prod", ""));
    assert_not_found(&admin(&gw, "GET", "/admin/spend/tags/env=prod", ""));
    assert_not_found(&admin(&gw, "DELETE", "/admin/tag_budgets/env=prod", ""));
    assert_eq!(
        send(&mut c, KEY, "gpt-4o-mini", Some("env=prod")).status,
        200
    );
    let r = admin(&gw, "DELETE", "/admin/model_budgets/meta-llama/Llama-3", "");
    assert_eq!(r.json()["deleted"], true, "{}", r.text());
    assert_not_found(&admin(
        &gw,
        "GET",
        "/admin/spend/models/meta-llama%2FLlama-3",
        "",
    ));
}

#[test]
fn a_key_created_with_budgets_and_limits_on_models_is_held_to_them() {
    let mock = Mock::start(&[]);
    let gw = Gateway::start(&config(&mock.base_url(), ""), &[]);
    let r = admin(
        &gw,
        "POST",
        "/admin/keys",
        &format!(
            r#"{{"name":"ml","team":"search",
                "model_budgets":[{{"model":"gpt-4o-mini","limit_usd":"0.000001","reset":"1d"}},
                                 {{"model":"{LLAMA}","limit_usd":"1"}}],
                "model_rate_limits":[{{"model":"gpt-4o","requests_per_minute":1}}]}}"#
        ),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let created = r.json();
    let secret = created["key"].as_str().unwrap().to_string();
    assert_eq!(created["model_budgets"][0]["limit_usd"], "0.000001");
    assert_eq!(created["model_budgets"][1]["model"], LLAMA);
    assert_eq!(created["model_rate_limits"][0]["requests_per_minute"], 1);
    let shown = admin(&gw, "GET", "/admin/keys/ml", "").json();
    assert_eq!(shown["model_budgets"], created["model_budgets"]);
    assert_eq!(shown["model_rate_limits"], created["model_rate_limits"]);

    let mut c = Client::connect(gw.addr);
    // Its budget on gpt-4o-mini refuses; its team's on it and other models do not.
    assert_refused(
        &send(&mut c, &secret, "gpt-4o-mini", None),
        "key_model",
        "ml/gpt-4o-mini",
    );
    assert_eq!(send(&mut c, &secret, LLAMA, None).status, 200);
    assert_eq!(
        spent(&spend(&gw, "keys/ml/models/meta-llama/Llama-3")),
        LLAMA_COST_PICO
    );
    assert_eq!(
        spend(&gw, "keys/ml/models/gpt-4o-mini")["kind"],
        "key_model"
    );
    // Its rate limit on gpt-4o: one request a minute.
    assert_eq!(send(&mut c, &secret, "gpt-4o", None).status, 200);
    assert_eq!(send(&mut c, &secret, "gpt-4o", None).status, 429);
    assert_eq!(
        send(&mut c, KEY, "gpt-4o", None).status,
        200,
        "other keys are not limited"
    );

    // PATCH replaces the list: the new limit applies at once.
    let r = admin(
        &gw,
        "PATCH",
        "/admin/keys/ml",
        r#"{"model_budgets":[{"model":"gpt-4o-mini","limit_usd":"1","reset":"1d"}]}"#,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(send(&mut c, &secret, "gpt-4o-mini", None).status, 200);
    assert_eq!(spend(&gw, "keys/ml/models/gpt-4o-mini")["limit_usd"], "1");
    assert_not_found(&admin(
        &gw,
        "GET",
        "/admin/spend/keys/ml/models/meta-llama/Llama-3",
        "",
    ));
    // A bad entry is a 400 naming it.
    let r = admin(
        &gw,
        "PATCH",
        "/admin/keys/ml",
        r#"{"model_budgets":[{"model":"gpt-*","limit_usd":"1"}]}"#,
    );
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("model_budgets[0].model"), "{}", r.text());
    // null removes the list.
    let r = admin(
        &gw,
        "PATCH",
        "/admin/keys/ml",
        r#"{"model_budgets":null,"model_rate_limits":null}"#,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.json().get("model_budgets").is_none(), "{}", r.text());
    assert_not_found(&admin(
        &gw,
        "GET",
        "/admin/spend/keys/ml/models/gpt-4o-mini",
        "",
    ));
}
