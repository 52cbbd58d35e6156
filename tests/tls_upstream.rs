//! Upstream TLS: the gateway reaches an https upstream through rustls,
//! trusting a private CA given by `ca_file`, pools the TLS connection, and
//! refuses an upstream whose certificate it cannot verify.

mod util;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use util::tls::{pki, Pki};
use util::*;

const BODY: &str = r#"{"id":"chatcmpl-tls","object":"chat.completion","created":0,"model":"gpt-4o-mini","choices":[{"index":0,"message":{"role":"assistant","content":"over tls"},"finish_reason":"stop"}],"usage":{"prompt_tokens":3,"completion_tokens":2,"total_tokens":5}}"#;

/// A keep-alive HTTPS server answering every request with BODY; counts handshakes.
fn tls_server(pki: &Pki) -> (u16, Arc<AtomicUsize>) {
    let config = pki.server_config();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let handshakes = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&handshakes);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            let config = Arc::clone(&config);
            let counter = Arc::clone(&counter);
            std::thread::spawn(move || {
                let conn = rustls::ServerConnection::new(config).unwrap();
                let tls = rustls::StreamOwned::new(conn, stream);
                let mut reader = BufReader::new(tls);
                let mut counted = false;
                loop {
                    // The request line first: a connection is counted once it
                    // carries a request.
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    if !counted {
                        counter.fetch_add(1, Ordering::SeqCst);
                        counted = true;
                    }
                    if !read_request(&mut reader) {
                        return;
                    }
                    let resp = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{BODY}",
                        BODY.len()
                    );
                    let tls = reader.get_mut();
                    if tls
                        .write_all(resp.as_bytes())
                        .and_then(|_| tls.flush())
                        .is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
    (port, handshakes)
}

fn config(port: u16, ca_file: Option<&str>) -> String {
    let ca = ca_file.map_or(String::new(), |f| format!("ca_file = \"{f}\"\n"));
    format!(
        r#"
[server]
workers = 1
[[providers]]
name = "secure"
kind = "openai"
base_url = "https://localhost:{port}/v1"
api_key = "sk-up"
models = ["gpt-4o-mini"]
{ca}
[[virtual_keys]]
name = "demo"
key = "sk-bursar-demo"
"#
    )
}

#[test]
fn https_upstreams_with_a_private_ca_are_reached_and_pooled() {
    let pki = pki();
    let (port, handshakes) = tls_server(&pki);
    let dir = TempDir::new("tls");
    let ca = dir.0.join("ca.pem");
    std::fs::write(&ca, &pki.ca_pem).unwrap();
    let gw = Gateway::start(&config(port, Some(ca.to_str().unwrap())), &[]);
    let mut c = Client::connect(gw.addr);
    for _ in 0..5 {
        let r = c.post("/v1/chat/completions", "sk-bursar-demo", CHAT, &[]);
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.json()["choices"][0]["message"]["content"], "over tls");
    }
    assert_eq!(
        handshakes.load(Ordering::SeqCst),
        1,
        "one TLS connection, kept alive"
    );
}

#[test]
fn an_unverifiable_upstream_certificate_is_a_502() {
    let pki = pki();
    let (port, _) = tls_server(&pki);
    // No ca_file: the webpki roots do not know the private CA.
    let gw = Gateway::start(&config(port, None), &[]);
    let mut c = Client::connect(gw.addr);
    let r = c.post("/v1/chat/completions", "sk-bursar-demo", CHAT, &[]);
    assert_eq!(r.status, 502, "{}", r.text());
    assert_eq!(r.error_code(), "upstream_tls");
}
