//! The control plane's request log queries, against the real binary: every
//! query value is checked (a nonsense range is a 400 in OpenAI's shape, never
//! an overflow: a debug build panics on one).

mod util;

use util::{Client, Gateway, Mock, Response};

const ADMIN: &str = "admin-secret";

fn config(base_url: &str) -> String {
    util::proxy_config(base_url, &format!("[admin]\ntoken = \"{ADMIN}\"\n"))
}

fn admin(gw: &Gateway, path: &str) -> Response {
    util::admin_get(gw, ADMIN, path)
}

/// An OpenAI-shaped 400 whose message names what was wrong.
fn assert_refused(r: &Response, path: &str, mentions: &str) {
    assert_eq!(r.status, 400, "{path}: {}", r.text());
    let e = &r.json()["error"];
    assert_eq!(e["type"], "invalid_request_error", "{path}: {e}");
    assert_eq!(e["code"], "invalid_value", "{path}: {e}");
    assert!(e["param"].is_null(), "{path}: {e}");
    let message = e["message"].as_str().unwrap_or_default();
    assert!(
        message.contains(mentions),
        "{path}: the message should mention {mentions:?}: {message}"
    );
}

#[test]
fn nonsense_ranges_and_extreme_values_are_refused_with_a_400() {
    let mock = Mock::start(&[]);
    let gw = Gateway::start(&config(&mock.base_url()), &[]);
    let (min, max) = (i64::MIN, i64::MAX);
    let cases: Vec<(String, &str)> = vec![
        // Times outside what a time can be (1970 to 9999), in every position.
        (format!("/admin/spend/series?to={min}"), "to:"),
        (format!("/admin/spend/series?to={max}"), "to:"),
        (format!("/admin/spend/totals?to={min}"), "to:"),
        (format!("/admin/spend/series?from={min}"), "from:"),
        (
            format!("/admin/spend/series?from={min}&to={max}"),
            "outside",
        ),
        (
            format!("/admin/spend/totals?from={min}&to={max}"),
            "outside",
        ),
        ("/admin/spend/series?from=-1".into(), "from:"),
        ("/admin/spend/series?to=-86400000".into(), "to:"),
        (
            "/admin/spend/series?from=0000-01-01T00:00:00Z".into(),
            "from:",
        ),
        ("/admin/spend/totals?to=253402300800000".into(), "to:"),
        (format!("/admin/logs?from={min}"), "from:"),
        (format!("/admin/logs?to={max}"), "to:"),
        (format!("/admin/logs?before={min}:req_x"), "before:"),
        (format!("/admin/logs?before={max}:req_x"), "before:"),
        // Not numbers at all, or past i64.
        ("/admin/spend/series?to=99999999999999999999".into(), "to:"),
        ("/admin/spend/series?from=soon".into(), "from:"),
        // Backwards or empty ranges.
        ("/admin/spend/series?from=2000&to=1000".into(), "before"),
        ("/admin/spend/totals?from=1000&to=1000".into(), "before"),
        ("/admin/logs?from=2000&to=1000".into(), "before"),
        // More buckets than a series holds.
        (
            "/admin/spend/series?bucket=minute&from=0&to=253402300799999".into(),
            "buckets",
        ),
        (
            "/admin/spend/series?bucket=minute&from=0&to=6000000001".into(),
            "buckets",
        ),
        // Limits and statuses out of their bounds.
        ("/admin/logs?limit=0".into(), "limit:"),
        ("/admin/logs?limit=-1".into(), "limit:"),
        ("/admin/logs?limit=1001".into(), "limit:"),
        (format!("/admin/logs?limit={}", u64::MAX), "limit:"),
        ("/admin/logs?limit=99999999999999999999999".into(), "limit:"),
        ("/admin/logs?status=99".into(), "status:"),
        ("/admin/logs?status=70000".into(), "status:"),
        ("/admin/logs?status=-200".into(), "status:"),
    ];
    for (path, mentions) in &cases {
        let r = admin(&gw, path);
        assert_refused(&r, path, mentions);
    }
    // The edges themselves are fine: the whole representable range as totals,
    // and exactly the most buckets a series may hold.
    let r = admin(&gw, "/admin/spend/totals?from=0&to=253402300799999");
    assert_eq!(r.status, 200, "{}", r.text());
    let r = admin(
        &gw,
        "/admin/spend/series?bucket=minute&from=0&to=6000000000",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let r = admin(&gw, "/admin/logs?limit=1000&status=599&from=0&to=1");
    assert_eq!(r.status, 200, "{}", r.text());
    // And the control plane is still there.
    let mut c = Client::connect(gw.admin);
    assert_eq!(c.request("GET", "/health", &[], b"").status, 200);
}
