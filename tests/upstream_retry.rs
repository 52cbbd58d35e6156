//! When a request on a pooled upstream connection may be sent again (issue
//! 13, item 4): only when it provably never reached the upstream. A pooled
//! connection the upstream closed while it sat idle is skipped or retried,
//! once; one that the upstream took the request on and then closed without
//! a byte is a 502, charged nothing, never a second send the provider could
//! bill again.
//!
//! The upstreams here are raw `std::net` servers written in the test: they
//! count every request head they receive, across all their connections, so
//! "sent once" is what the upstream saw, not what the gateway says.

mod util;

use std::io::{BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant};

use util::tls::{pki, Pki};
use util::{pico, proxy_config, Client, Gateway, Response, CHAT};

const ADMIN: &str = "admin-secret";

/// The answer to the first request: a chat completion with usage, kept
/// alive (so the gateway pools the connection).
const OK_BODY: &str = r#"{"id":"chatcmpl-1","object":"chat.completion","created":1,"model":"gpt-4o-mini","choices":[{"index":0,"message":{"role":"assistant","content":"hi"},"finish_reason":"stop"}],"usage":{"prompt_tokens":8,"completion_tokens":5,"total_tokens":13}}"#;

/// gpt-4o-mini at the shipped table's $0.15 / $0.60 per million tokens:
/// 8 prompt and 5 completion tokens.
const OK_COST_PICO: i128 = 8 * 150_000 + 5 * 600_000;

/// Longer than the gateway's stale-retry window (250 ms) by a wide margin:
/// an upstream that holds a request this long before closing received it.
const WORKED_ON_IT: Duration = Duration::from_millis(1500);

fn answer_ok(s: &mut TcpStream) {
    let _ = write!(
        s,
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nconnection: keep-alive\r\ncontent-length: {}\r\n\r\n{OK_BODY}",
        OK_BODY.len()
    );
    let _ = s.flush();
}

/// What the upstream does with the request it received `n`th (from 1,
/// across all connections): `true` to keep the connection for another.
type Behave = fn(n: usize, s: &mut TcpStream) -> bool;

/// A raw upstream that counts the request heads it receives.
struct Upstream {
    port: u16,
    receipts: Arc<AtomicUsize>,
    connections: Arc<AtomicUsize>,
}

impl Upstream {
    fn start(behave: Behave) -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let receipts = Arc::new(AtomicUsize::new(0));
        let connections = Arc::new(AtomicUsize::new(0));
        let (r, c) = (Arc::clone(&receipts), Arc::clone(&connections));
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut s) = stream else { return };
                c.fetch_add(1, SeqCst);
                let r = Arc::clone(&r);
                std::thread::spawn(move || {
                    let Ok(read_half) = s.try_clone() else { return };
                    let mut reader = BufReader::new(read_half);
                    while util::read_request(&mut reader) {
                        let n = r.fetch_add(1, SeqCst) + 1;
                        if !behave(n, &mut s) {
                            break;
                        }
                    }
                    // Dropped: closed, with nothing more written.
                });
            }
        });
        Upstream {
            port,
            receipts,
            connections,
        }
    }

    fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}/v1", self.port)
    }

    fn receipts(&self) -> usize {
        self.receipts.load(SeqCst)
    }
}

/// One worker (one pool), a priced model and a budget to read spend from.
fn gateway(base_url: &str) -> Gateway {
    let config = proxy_config(
        base_url,
        &format!(
            r#"
[admin]
token = "{ADMIN}"

[[virtual_keys]]
name = "search-prod"
key = "sk-search-prod"
budget = {{ limit_usd = "1", reset = "1d" }}
"#
        ),
    )
    .replace("workers = 2", "workers = 1");
    Gateway::start(&config, &[])
}

fn spent(gw: &Gateway) -> i128 {
    let r = util::admin_get(gw, ADMIN, "/admin/spend/keys/search-prod");
    assert_eq!(r.status, 200, "{}", r.text());
    pico(r.json()["spent_usd"].as_str().unwrap())
}

fn chat(c: &mut Client) -> Response {
    c.post("/v1/chat/completions", "sk-search-prod", CHAT, &[])
}

/// The first request, answered and charged; its connection is now pooled.
fn first_request(gw: &Gateway, c: &mut Client) {
    let r = chat(c);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(pico(r.cost_usd().expect("cost header")), OK_COST_PICO);
    assert_eq!(spent(gw), OK_COST_PICO);
}

/// A fresh connection is never sent a request twice either: an upstream
/// that takes the first request on it and closes without a byte gets it
/// once, and the client is told not to re-send (its SDK would, by default).
#[test]
fn a_fresh_connection_closed_after_the_request_is_a_502_the_sdk_does_not_retry() {
    let up = Upstream::start(|_, _| false);
    let gw = gateway(&up.base_url());
    let mut c = Client::connect(gw.addr);
    let r = chat(&mut c);
    assert_eq!(r.status, 502, "{}", r.text());
    assert_eq!(r.error_code(), "upstream_closed", "{}", r.text());
    assert_eq!(r.header("x-should-retry"), Some("false"));
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(up.receipts(), 1);
    assert_eq!(spent(&gw), 0);
    assert_eq!(gw.metric_sum("bursar_upstream_closed_not_retried_total"), 1);
}

/// The second request's receipt: the upstream takes it on the pooled
/// connection, works on it past the retry window, and dies without a byte.
#[test]
fn an_upstream_that_took_the_request_and_closed_is_a_502_sent_once_and_not_charged() {
    let up = Upstream::start(|n, s| {
        if n == 1 {
            answer_ok(s);
            return true;
        }
        std::thread::sleep(WORKED_ON_IT);
        false
    });
    let gw = gateway(&up.base_url());
    let mut c = Client::connect(gw.addr);
    first_request(&gw, &mut c);
    assert_eq!(up.connections.load(SeqCst), 1);

    let started = Instant::now();
    let r = chat(&mut c);
    assert!(started.elapsed() >= WORKED_ON_IT);
    assert_eq!(r.status, 502, "{}", r.text());
    assert_eq!(r.error_code(), "upstream_closed", "{}", r.text());
    // The SDKs, which retry a 502 by default, are told not to send it again.
    assert_eq!(r.header("x-should-retry"), Some("false"));
    assert_eq!(r.json()["error"]["type"], "upstream_error", "{}", r.text());
    assert!(r.header("x-request-id").is_some());
    assert_eq!(
        r.cost_usd(),
        None,
        "a request with no response is not charged"
    );
    // Give a (wrong) second send time to land before counting.
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        up.receipts(),
        2,
        "the upstream received the second request more than once"
    );
    assert_eq!(spent(&gw), OK_COST_PICO, "the 502 was charged");
    assert_eq!(gw.metric_sum("bursar_upstream_stale_retries_total"), 0);
    assert_eq!(gw.metric_sum("bursar_upstream_closed_not_retried_total"), 1);
    // The client's connection still serves.
    assert_eq!(chat(&mut c).status, 502);
}

/// Closes every connection right after answering its first request, though
/// it advertised keep-alive: the pooled connection is stale when the
/// gateway next wants it.
fn answer_then_close(_n: usize, s: &mut TcpStream) -> bool {
    answer_ok(s);
    false
}

/// The classic stale connection, found before anything is written: it has
/// sat idle long enough for the pool to check it at checkout, and the
/// upstream's FIN arrived long before.
#[test]
fn a_pooled_connection_closed_while_idle_is_skipped_before_the_request_is_written() {
    let up = Upstream::start(answer_then_close);
    let gw = gateway(&up.base_url());
    let mut c = Client::connect(gw.addr);
    first_request(&gw, &mut c);
    std::thread::sleep(Duration::from_millis(500));
    let r = chat(&mut c);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(up.receipts(), 2);
    assert_eq!(up.connections.load(SeqCst), 2);
    assert_eq!(spent(&gw), 2 * OK_COST_PICO);
    // Found closed at checkout: nothing was sent on it, so nothing re-sent.
    assert_eq!(gw.metric_sum("bursar_upstream_stale_retries_total"), 0);
    assert_eq!(gw.metric_sum("bursar_upstream_reuses_total"), 0);
    assert_eq!(gw.metric_sum("bursar_upstream_connects_total"), 2);
}

/// The same upstream, asked again at once: the pool may lend the connection
/// before its close is seen (it checks only connections idle a while), so
/// the write goes out and the EOF or reset comes back within a round trip,
/// with no response byte: sent again, once, on a fresh connection. Either
/// way the upstream receives each request exactly once.
#[test]
fn a_pooled_connection_closed_as_the_request_is_written_is_retried_once() {
    let up = Upstream::start(answer_then_close);
    let gw = gateway(&up.base_url());
    let mut c = Client::connect(gw.addr);
    first_request(&gw, &mut c);
    for i in 2..=5 {
        let r = chat(&mut c);
        assert_eq!(r.status, 200, "request {i}: {}", r.text());
        assert_eq!(up.receipts(), i, "request {i} was received more than once");
    }
    assert_eq!(spent(&gw), 5 * OK_COST_PICO);
    let retries = gw.metric_sum("bursar_upstream_stale_retries_total");
    let reuses = gw.metric_sum("bursar_upstream_reuses_total");
    // Every reuse hit the closed connection and was retried once; a request
    // whose stale connection was skipped at checkout is neither (only one
    // asked 100 ms or more after the last answer is looked at: four in a row
    // are not all that late).
    assert_eq!(retries, reuses, "retries {retries}, reuses {reuses}");
    assert!(retries >= 1, "the retry path was not taken");
    assert_eq!(gw.metric_sum("bursar_upstream_closed_not_retried_total"), 0);
}

/// A 1xx interim response is a response byte: the upstream has the request.
/// Closing after it is not a stale connection, however soon.
#[test]
fn a_close_after_an_interim_response_is_not_retried() {
    let up = Upstream::start(|n, s| {
        if n == 1 {
            answer_ok(s);
            return true;
        }
        let _ = s.write_all(b"HTTP/1.1 103 Early Hints\r\nlink: </a>; rel=preload\r\n\r\n");
        let _ = s.flush();
        false
    });
    let gw = gateway(&up.base_url());
    let mut c = Client::connect(gw.addr);
    first_request(&gw, &mut c);
    let r = chat(&mut c);
    assert_eq!(r.status, 502, "{}", r.text());
    assert_eq!(r.error_code(), "upstream_closed", "{}", r.text());
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(up.receipts(), 2, "re-sent after an interim response");
    assert_eq!(spent(&gw), OK_COST_PICO);
    assert_eq!(gw.metric_sum("bursar_upstream_stale_retries_total"), 0);
}

/// An https upstream answering every request with `OK_BODY`; after each
/// answer it closes (a TLS `close_notify`, then the TCP close) when `close`
/// is set. Returns its port and the connections it accepted.
fn tls_upstream(pki: &Pki, close: bool) -> (u16, Arc<AtomicUsize>) {
    let config = pki.server_config();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let connections = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&connections);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { return };
            counter.fetch_add(1, SeqCst);
            let config = Arc::clone(&config);
            std::thread::spawn(move || {
                let conn = rustls::ServerConnection::new(config).unwrap();
                let tls = rustls::StreamOwned::new(conn, stream);
                let mut reader = BufReader::new(tls);
                loop {
                    if !util::read_request(&mut reader) {
                        return;
                    }
                    let resp = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nconnection: keep-alive\r\ncontent-length: {}\r\n\r\n{OK_BODY}",
                        OK_BODY.len()
                    );
                    let tls = reader.get_mut();
                    if tls
                        .write_all(resp.as_bytes())
                        .and_then(|_| tls.flush())
                        .is_err()
                    {
                        return;
                    }
                    if close {
                        tls.conn.send_close_notify();
                        let _ = tls.flush();
                        return;
                    }
                }
            });
        }
    });
    (port, connections)
}

fn tls_gateway(port: u16, ca: &std::path::Path) -> Gateway {
    Gateway::start(
        &format!(
            r#"
[server]
workers = 1
[[providers]]
name = "secure"
kind = "openai"
base_url = "https://localhost:{port}/v1"
api_key = "sk-up"
models = ["gpt-4o-mini"]
ca_file = "{}"
[[virtual_keys]]
name = "demo"
key = "sk-bursar-demo"
"#,
            ca.display()
        ),
        &[],
    )
}

/// The look at an idle TLS connection: one the upstream keeps open is lent
/// again (bytes the session may have pending are not a close); one it closed
/// with `close_notify` is dropped before anything is written to it.
#[test]
fn idle_tls_connections_are_looked_at_with_care() {
    let pki = pki();
    let dir = util::TempDir::new("retry-tls");
    let ca = dir.0.join("ca.pem");
    std::fs::write(&ca, &pki.ca_pem).unwrap();
    for close in [false, true] {
        let (port, connections) = tls_upstream(&pki, close);
        let gw = tls_gateway(port, &ca);
        let mut c = Client::connect(gw.addr);
        for i in 0..3 {
            if i > 0 {
                // Idle long enough to be looked at (POOL_CHECK_IDLE_MIN, 100 ms).
                std::thread::sleep(Duration::from_millis(400));
            }
            let r = c.post("/v1/chat/completions", "sk-bursar-demo", CHAT, &[]);
            assert_eq!(r.status, 200, "close {close}, request {i}: {}", r.text());
        }
        let (opened, reuses) = if close { (3, 0) } else { (1, 2) };
        assert_eq!(connections.load(SeqCst), opened, "close {close}");
        assert_eq!(
            gw.metric_sum("bursar_upstream_reuses_total"),
            reuses,
            "close {close}"
        );
        assert_eq!(gw.metric_sum("bursar_upstream_stale_retries_total"), 0);
    }
}
