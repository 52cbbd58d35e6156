//! The control plane's request log queries, against the real binary: every
//! query value is checked (a nonsense range is a 400 in OpenAI's shape, never
//! an overflow: a debug build panics on one), and a query runs on the query
//! thread, so the control plane answers `/health` and `/metrics` while one is
//! held there, and refuses (503) rather than queue without bound.

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

/// The query thread, held with the debug builds' test gate (release builds
/// have no gate, so no such test).
#[cfg(debug_assertions)]
mod held {
    use std::path::PathBuf;
    use std::time::{Duration, Instant};

    use super::{admin, config, util, ADMIN};
    use util::{Client, Gateway, Response};

    /// Starts the gateway with the debug builds' query gate at `<dir>/query-gate`
    /// (`reqlog::reader`): every request log query waits on the query thread
    /// until that file exists, and announces itself by creating
    /// `query-gate.waiting`.
    fn start_gated(config: &str) -> (Gateway, PathBuf) {
        let dir = util::TempDir::new("gated");
        let config_path = dir.0.join("bursar.toml");
        std::fs::write(&config_path, config).unwrap();
        let gate = dir.0.join("query-gate");
        let gw = Gateway::spawn_with(dir, config_path, &[], |cmd| {
            cmd.env(bursar::reqlog::reader::TEST_QUERY_GATE_ENV, &gate);
        });
        (gw, gate)
    }

    /// Sends an admin GET on a fresh connection without reading the answer.
    fn send_admin_get(gw: &Gateway, path: &str) -> Client {
        let mut c = Client::connect(gw.admin);
        let auth = format!("Bearer {ADMIN}");
        c.send_raw(&util::format_request(
            "GET",
            path,
            &[("authorization", auth.as_str())],
            b"",
        ));
        c
    }

    /// Whether the server has sent anything on `c` yet (without waiting).
    fn has_answered(c: &mut Client) -> bool {
        if !c.reader.buffer().is_empty() {
            return true;
        }
        let s = c.reader.get_ref();
        s.set_nonblocking(true).unwrap();
        let mut b = [0u8; 1];
        let answered = match s.peek(&mut b) {
            Ok(_) => true,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => false,
            Err(e) => panic!("{e}"),
        };
        s.set_nonblocking(false).unwrap();
        answered
    }

    /// A GET on the control plane that must answer within `bound` (a liveness
    /// bound, generous on purpose: not a speed claim).
    fn get_within(gw: &Gateway, path: &str, bound: Duration) -> Option<Response> {
        let mut c = Client::connect(gw.admin);
        c.reader.get_ref().set_read_timeout(Some(bound)).unwrap();
        c.send_raw(&util::format_request("GET", path, &[], b""));
        c.read_response()
    }

    fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !done() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// The liveness the query thread exists for: with a request log query held
    /// on the query thread (the debug gate: deterministic, no timing), the
    /// control plane still answers `/health` and `/metrics`; the queue beyond it
    /// holds `LOG_QUERIES_QUEUED_MAX` queries and refuses the rest at once with a
    /// 503 in OpenAI's shape; once the gate opens, every held query is answered.
    /// An ordering check (answered while the query is still outstanding), with
    /// a generous read bound only so that a control thread stuck behind the
    /// query fails the test instead of hanging it.
    #[test]
    fn the_control_plane_answers_while_a_log_query_is_held() {
        use bursar::reqlog::LOG_QUERIES_QUEUED_MAX;
        const LIVENESS_BOUND: Duration = Duration::from_secs(10);
        const REFUSED: usize = 2;
        let (gw, gate) = start_gated(&config("http://127.0.0.1:9/v1"));
        let mut waiting = gate.clone().into_os_string();
        waiting.push(".waiting");
        let waiting = PathBuf::from(waiting);

        // One request in the log (the in-process mock provider), written.
        let mut c = Client::connect(gw.addr);
        let chat =
            r#"{"model":"mock-model","max_tokens":5,"messages":[{"role":"user","content":"hi"}]}"#;
        let answered = c.post("/v1/chat/completions", "sk-bursar-demo", chat, &[]);
        assert_eq!(answered.status, 200, "{}", answered.text());
        let cost = answered.cost_usd().expect("a cost header").to_string();
        wait_for("the log row to be written", || {
            util::counter(&gw, "bursar_log_rows_written_total") >= 1
        });

        // A query, held on the query thread.
        let mut held = send_admin_get(&gw, "/admin/spend/totals?group_by=key");
        wait_for("the query to reach the query thread", || waiting.exists());

        // The control plane answers meanwhile.
        let health = get_within(&gw, "/health", LIVENESS_BOUND)
            .expect("/health did not answer while a log query was held on the query thread");
        assert_eq!(health.status, 200);
        let metrics = get_within(&gw, "/metrics", LIVENESS_BOUND)
            .expect("/metrics did not answer while a log query was held on the query thread");
        assert_eq!(metrics.status, 200);
        assert!(metrics.text().contains("bursar_log_rows_written_total"));
        let ready = get_within(&gw, "/ready", LIVENESS_BOUND).expect("/ready answers");
        assert_eq!(ready.status, 200);
        assert!(!has_answered(&mut held), "the held query was answered");

        // The queue holds LOG_QUERIES_QUEUED_MAX more; beyond that, 503 at once.
        let paths = [
            "/admin/logs?limit=5",
            "/admin/spend/series?group_by=model&bucket=minute",
            "/admin/spend/totals?group_by=team",
        ];
        let mut more: Vec<Client> = (0..LOG_QUERIES_QUEUED_MAX + REFUSED)
            .map(|i| send_admin_get(&gw, paths[i % paths.len()]))
            .collect();
        let mut refused = Vec::new();
        wait_for("the queries beyond the queue to be refused", || {
            for (i, c) in more.iter_mut().enumerate() {
                if !refused.contains(&i) && has_answered(c) {
                    refused.push(i);
                }
            }
            refused.len() >= REFUSED
        });
        for &i in &refused {
            let r = more[i].read_response().expect("a response");
            assert_eq!(r.status, 503, "{}", r.text());
            let e = &r.json()["error"];
            assert_eq!(e["code"], "log_queries_busy", "{e}");
            assert_eq!(e["type"], "server_error", "{e}");
            assert!(e["param"].is_null(), "{e}");
            assert_eq!(r.header("retry-after"), Some("1"));
        }
        // The control plane still answers, and nothing else was: the thread is
        // still held and the queue full.
        let health = get_within(&gw, "/health", LIVENESS_BOUND).expect("/health answers");
        assert_eq!(health.status, 200);
        assert!(!has_answered(&mut held), "the held query was answered");
        let mut queued: Vec<(usize, Client)> = more
            .into_iter()
            .enumerate()
            .filter(|(i, _)| !refused.contains(i))
            .collect();
        assert_eq!(queued.len(), LOG_QUERIES_QUEUED_MAX);
        for (i, c) in &mut queued {
            assert!(!has_answered(c), "queued query {i} was answered early");
        }

        // Open the gate: every held and queued query is answered, in full.
        std::fs::write(&gate, b"").unwrap();
        let r = held.read_response().expect("the held query's answer");
        assert_eq!(r.status, 200, "{}", r.text());
        let data = r.json()["data"].clone();
        assert_eq!(data[0]["group"], "demo", "{data}");
        assert_eq!(data[0]["requests"], 1, "{data}");
        assert_eq!(data[0]["cost_usd"], cost.as_str(), "{data}");
        for (i, mut c) in queued {
            let r = c.read_response().expect("a queued query's answer");
            assert_eq!(r.status, 200, "query {i}: {}", r.text());
        }
        let r = admin(&gw, "/admin/logs?key=demo");
        assert_eq!(r.status, 200);
        assert_eq!(r.json()["data"].as_array().map(Vec::len), Some(1));
    }
}
