//! Real-socket tests of [`deliver`]: an HTTP receiver and an SMTP responder
//! on 127.0.0.1, each a plain `TcpListener` thread in the test.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::thread::JoinHandle;
use std::time::Duration;

use super::render::tests::{budget_alert, channel, route};
use super::render::USER_AGENT;
use super::*;
use crate::alerts::event::AlertKind;

/// How long a test receiver waits for the client before giving up (so a
/// broken client fails the test instead of hanging it).
const TEST_IO_TIMEOUT: Duration = Duration::from_secs(15);

/// Most bytes a test receiver reads of a request.
const TEST_MAX_REQUEST: usize = 1 << 20;

struct Request {
    request_line: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Accepts one connection, reads one request, writes `response`, closes.
fn http_receiver(response: String) -> (u16, JoinHandle<Request>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let handle = std::thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        stream.set_read_timeout(Some(TEST_IO_TIMEOUT)).unwrap();
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let mut request_line = String::new();
        reader.read_line(&mut request_line).unwrap();
        let mut headers = Vec::new();
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            let (k, v) = line.split_once(':').unwrap();
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
        let len: usize = headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
            .map(|(_, v)| v.parse().unwrap())
            .unwrap_or(0);
        assert!(len <= TEST_MAX_REQUEST);
        let mut body = vec![0; len];
        reader.read_exact(&mut body).unwrap();
        let mut stream = stream;
        stream.write_all(response.as_bytes()).unwrap();
        stream.flush().unwrap();
        Request {
            request_line: request_line.trim_end().to_string(),
            headers,
            body,
        }
    });
    (port, handle)
}

fn reply(status: &str, extra: &str, body: &str) -> String {
    format!(
        "HTTP/1.1 {status}\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n{extra}\r\n{body}",
        body.len()
    )
}

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

fn webhook(port: u16, allow_private: bool) -> ChannelConfig {
    channel(&format!(
        "name = \"w\"\nkind = \"webhook\"\nurl = \"http://127.0.0.1:{port}/hooks/in?t=1\"\nsecret = \"{SECRET}\"\nallow_private = {allow_private}"
    ))
}

#[test]
fn a_signed_webhook_is_delivered_on_200() {
    let (port, rx) = http_receiver(reply("200 OK", "", "ok"));
    let a = budget_alert(AlertKind::ThresholdCrossed, "demo", "80% used");
    let before = render::now_unix_s();
    let at = deliver(&webhook(port, true), &a, &route());
    let req = rx.join().unwrap();
    assert_eq!(at.outcome, Outcome::Delivered, "{at:?}");
    assert_eq!(at.status, Some(200));
    assert_eq!(at.error, None);
    assert!(at.latency_ms < 10_000);
    assert_eq!(req.request_line, "POST /hooks/in?t=1 HTTP/1.1");
    assert_eq!(req.header("content-type"), Some("application/json"));
    assert_eq!(req.header("user-agent"), Some(USER_AGENT));
    assert_eq!(req.header("webhook-id"), Some(a.id.as_str()));
    assert_eq!(req.body, a.webhook_bytes());
    let ts: i64 = req.header("webhook-timestamp").unwrap().parse().unwrap();
    assert!(ts >= before && ts <= render::now_unix_s());
    let key = sign::decode_secret(SECRET).unwrap();
    assert_eq!(
        req.header("webhook-signature"),
        Some(sign::sign(&key, &a.id, ts, &req.body).as_str())
    );
}

#[test]
fn status_codes_map_to_outcomes() {
    let a = budget_alert(AlertKind::Exhausted, "demo", "exhausted");
    let cases: Vec<(String, Option<u16>, Outcome)> = vec![
        (
            reply("500 Internal Server Error", "", "boom"),
            Some(500),
            Outcome::Retry { after: None },
        ),
        (
            reply("429 Too Many Requests", "retry-after: 7\r\n", "slow down"),
            Some(429),
            Outcome::Retry {
                after: Some(Duration::from_secs(7)),
            },
        ),
        (
            reply("503 Service Unavailable", "retry-after: 999999\r\n", ""),
            Some(503),
            Outcome::Retry {
                after: Some(send::MAX_RETRY_AFTER),
            },
        ),
        (
            reply("400 Bad Request", "", &"e".repeat(1000)),
            Some(400),
            Outcome::Permanent,
        ),
        (
            reply("302 Found", "location: http://169.254.169.254/\r\n", ""),
            Some(302),
            Outcome::Permanent,
        ),
    ];
    for (response, status, outcome) in cases {
        let (port, rx) = http_receiver(response.clone());
        let at = deliver(&webhook(port, true), &a, &route());
        rx.join().unwrap();
        assert_eq!(at.outcome, outcome, "{response}: {at:?}");
        assert_eq!(at.status, status);
        let err = at.error.unwrap();
        assert!(
            err.starts_with(&format!("HTTP {}", status.unwrap())),
            "{err}"
        );
        assert!(
            err.chars().count() <= send::MAX_ERROR_TEXT_CHARS + 50,
            "{err}"
        );
    }
    // The receiver's text is kept.
    let (port, rx) = http_receiver(reply("500 Internal Server Error", "", "boom"));
    let at = deliver(&webhook(port, true), &a, &route());
    rx.join().unwrap();
    assert!(at.error.unwrap().contains("boom"));
}

#[test]
fn a_private_destination_is_refused_without_connecting() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    listener.set_nonblocking(true).unwrap();
    let a = budget_alert(AlertKind::ThresholdCrossed, "demo", "s");
    let at = deliver(&webhook(port, false), &a, &route());
    assert_eq!(at.outcome, Outcome::Permanent);
    assert_eq!(at.status, None);
    let err = at.error.unwrap();
    assert!(err.contains("resolves to a private address"), "{err}");
    assert!(err.contains("allow_private = true"), "{err}");
    // Nothing connected.
    assert_eq!(
        listener.accept().unwrap_err().kind(),
        std::io::ErrorKind::WouldBlock
    );
    // The same for every HTTP kind and for mail.
    for src in [
        format!("name = \"s\"\nkind = \"slack\"\nurl = \"http://127.0.0.1:{port}/x\""),
        format!("name = \"d\"\nkind = \"discord\"\nurl = \"http://[::1]:{port}/x\""),
        format!("name = \"p\"\nkind = \"pagerduty\"\nurl = \"http://localhost:{port}/x\"\nrouting_key = \"k\""),
        format!("name = \"m\"\nkind = \"email\"\nsmtp_host = \"127.0.0.1\"\nsmtp_port = {port}\nsmtp_tls = \"none\"\nfrom = \"b@example.com\"\nto = [\"o@example.com\"]"),
    ] {
        let at = deliver(&channel(&src), &a, &route());
        assert_eq!(at.outcome, Outcome::Permanent, "{src}");
        assert!(at.error.unwrap().contains("private address"), "{src}");
    }
    assert_eq!(
        listener.accept().unwrap_err().kind(),
        std::io::ErrorKind::WouldBlock
    );
}

#[test]
fn the_connection_goes_to_the_checked_addresses_not_a_new_resolution() {
    // A name no resolver knows: reaching the receiver proves ureq used the
    // pinned addresses.
    let (port, rx) = http_receiver(reply("204 No Content", "", ""));
    let url = format!("http://alerts.bursar-test.invalid:{port}/in");
    let at = send::post_pinned(
        std::time::Instant::now(),
        "alerts.bursar-test.invalid".into(),
        vec![std::net::SocketAddr::from(([127, 0, 0, 1], port))],
        &url,
        &[],
        b"{}",
    );
    let req = rx.join().unwrap();
    assert_eq!(at.outcome, Outcome::Delivered, "{at:?}");
    assert_eq!(at.status, Some(204));
    assert_eq!(
        req.header("host"),
        Some(format!("alerts.bursar-test.invalid:{port}").as_str())
    );
    assert_eq!(req.body, b"{}");

    // Addresses checked for one host are never used for another.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    listener.set_nonblocking(true).unwrap();
    let at = send::post_pinned(
        std::time::Instant::now(),
        "checked.bursar-test.invalid".into(),
        vec![std::net::SocketAddr::from(([127, 0, 0, 1], port))],
        &format!("http://other.bursar-test.invalid:{port}/in"),
        &[],
        b"{}",
    );
    assert_ne!(at.outcome, Outcome::Delivered);
    assert_eq!(
        listener.accept().unwrap_err().kind(),
        std::io::ErrorKind::WouldBlock
    );
}

/// Accepts one connection, writes `junk` and closes it: a peer that does not
/// speak TLS.
fn not_tls(junk: &'static [u8]) -> (u16, JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let h = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let _ = s.write_all(junk);
    });
    (port, h)
}

#[test]
fn a_failed_tls_handshake_is_a_retry_not_a_panic() {
    // Builds the rustls configurations (ring, webpki roots) of both
    // transports and fails their handshakes.
    let a = budget_alert(AlertKind::ThresholdCrossed, "demo", "s");
    let (port, h) = not_tls(b"HTTP/1.1 200 OK\r\n\r\n");
    let c = channel(&format!(
        "name = \"w\"\nkind = \"webhook\"\nurl = \"https://127.0.0.1:{port}/in\"\nallow_private = true"
    ));
    let at = deliver(&c, &a, &route());
    h.join().unwrap();
    assert_eq!(at.outcome, Outcome::Retry { after: None }, "{at:?}");
    assert_eq!(at.status, None);
    let (port, h) = not_tls(b"220 not really TLS\r\n");
    let c = channel(&format!(
        "name = \"m\"\nkind = \"email\"\nsmtp_host = \"127.0.0.1\"\nsmtp_port = {port}\nsmtp_tls = \"tls\"\nallow_private = true\nfrom = \"b@example.com\"\nto = [\"o@example.com\"]"
    ));
    let at = deliver(&c, &a, &route());
    h.join().unwrap();
    assert_eq!(at.outcome, Outcome::Retry { after: None }, "{at:?}");
}

#[test]
fn a_closed_port_is_worth_a_retry() {
    let port = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let a = budget_alert(AlertKind::ThresholdCrossed, "demo", "s");
    let at = deliver(&webhook(port, true), &a, &route());
    assert_eq!(at.outcome, Outcome::Retry { after: None }, "{at:?}");
    assert_eq!(at.status, None);
    assert!(at.error.is_some());
}

#[test]
fn retry_after_and_status_classification() {
    assert_eq!(send::parse_retry_after("30"), Some(Duration::from_secs(30)));
    assert_eq!(send::parse_retry_after(" 0 "), Some(Duration::ZERO));
    assert_eq!(send::parse_retry_after("7200"), Some(send::MAX_RETRY_AFTER));
    assert_eq!(
        send::parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"),
        None
    );
    assert_eq!(send::parse_retry_after("-1"), None);
    for s in [200, 201, 202, 204, 299] {
        assert_eq!(send::classify_status(s, None), Outcome::Delivered, "{s}");
    }
    for s in [408, 425, 429, 500, 502, 503, 504, 599] {
        assert_eq!(
            send::classify_status(s, None),
            Outcome::Retry { after: None },
            "{s}"
        );
    }
    for s in [301, 302, 400, 401, 403, 404, 410, 413, 422] {
        assert_eq!(send::classify_status(s, None), Outcome::Permanent, "{s}");
    }
}

/// What the SMTP responder saw.
struct SmtpSession {
    commands: Vec<String>,
    data: String,
}

/// A line-based SMTP responder for one session; `rcpt_reply` is the reply
/// to every RCPT TO.
fn smtp_responder(rcpt_reply: &'static str) -> (u16, JoinHandle<SmtpSession>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let handle = std::thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        stream.set_read_timeout(Some(TEST_IO_TIMEOUT)).unwrap();
        let mut w: TcpStream = stream.try_clone().unwrap();
        let mut r = BufReader::new(stream);
        let mut commands = Vec::new();
        let mut data = String::new();
        w.write_all(b"220 test.invalid ESMTP responder\r\n")
            .unwrap();
        loop {
            let mut line = String::new();
            if r.read_line(&mut line).unwrap_or(0) == 0 {
                break;
            }
            let cmd = line.trim_end().to_string();
            let verb = cmd
                .split([' ', ':'])
                .next()
                .unwrap_or_default()
                .to_ascii_uppercase();
            commands.push(cmd);
            match verb.as_str() {
                "EHLO" => w
                    .write_all(b"250-test.invalid\r\n250 8BITMIME\r\n")
                    .unwrap(),
                "MAIL" => w.write_all(b"250 2.1.0 OK\r\n").unwrap(),
                "RCPT" => w.write_all(rcpt_reply.as_bytes()).unwrap(),
                "DATA" => {
                    w.write_all(b"354 go ahead\r\n").unwrap();
                    loop {
                        let mut l = String::new();
                        if r.read_line(&mut l).unwrap_or(0) == 0 || l == ".\r\n" {
                            break;
                        }
                        data.push_str(&l);
                    }
                    w.write_all(b"250 2.0.0 queued\r\n").unwrap();
                }
                "RSET" | "NOOP" => w.write_all(b"250 OK\r\n").unwrap(),
                "QUIT" => {
                    w.write_all(b"221 bye\r\n").unwrap();
                    break;
                }
                _ => w.write_all(b"502 unknown\r\n").unwrap(),
            }
        }
        SmtpSession { commands, data }
    });
    (port, handle)
}

fn email_channel(port: u16) -> ChannelConfig {
    channel(&format!(
        "name = \"m\"\nkind = \"email\"\nsmtp_host = \"127.0.0.1\"\nsmtp_port = {port}\nsmtp_tls = \"none\"\nallow_private = true\nfrom = \"Bursar <bursar@example.com>\"\nto = [\"ops@example.com\", \"fin@example.com\"]"
    ))
}

#[test]
fn a_mail_is_delivered_with_both_parts_and_the_alert_id() {
    let (port, rx) = smtp_responder("250 2.1.5 OK\r\n");
    let a = budget_alert(AlertKind::ThresholdCrossed, "<demo>", "80% used & rising");
    let at = deliver(&email_channel(port), &a, &route());
    let s = rx.join().unwrap();
    assert_eq!(at.outcome, Outcome::Delivered, "{at:?} {:?}", s.commands);
    assert_eq!(at.status, Some(250));
    assert!(s.commands[0].to_ascii_uppercase().starts_with("EHLO "));
    assert!(
        s.commands
            .iter()
            .any(|c| c == "MAIL FROM:<bursar@example.com>"),
        "{:?}",
        s.commands
    );
    assert!(s.commands.iter().any(|c| c == "RCPT TO:<ops@example.com>"));
    assert!(s.commands.iter().any(|c| c == "RCPT TO:<fin@example.com>"));
    assert_eq!(s.commands.last().map(String::as_str), Some("QUIT"));
    let d = &s.data;
    assert!(
        d.contains(&format!("X-Bursar-Alert-Id: {}\r\n", a.id)),
        "{d}"
    );
    assert!(
        d.contains(&format!("Message-ID: <{}@example.com>\r\n", a.id)),
        "{d}"
    );
    assert!(
        d.contains("Subject: Budget 80% used: key <demo>\r\n"),
        "{d}"
    );
    assert!(d.contains("\r\nDate: "), "{d}");
    assert!(d.contains("multipart/alternative"), "{d}");
    assert!(d.contains("Content-Type: text/plain; charset=utf-8"), "{d}");
    assert!(d.contains("Content-Type: text/html; charset=utf-8"), "{d}");
    assert!(d.contains("&lt;demo&gt;"), "{d}");
    assert!(d.contains("80% used &amp; rising"), "{d}");
}

#[test]
fn smtp_replies_map_to_outcomes() {
    let a = budget_alert(AlertKind::ThresholdCrossed, "demo", "s");
    let (port, rx) = smtp_responder("450 4.2.1 mailbox busy\r\n");
    let at = deliver(&email_channel(port), &a, &route());
    rx.join().unwrap();
    assert_eq!(at.outcome, Outcome::Retry { after: None }, "{at:?}");
    assert_eq!(at.status, Some(450));
    let (port, rx) = smtp_responder("550 5.1.1 no such user\r\n");
    let at = deliver(&email_channel(port), &a, &route());
    rx.join().unwrap();
    assert_eq!(at.outcome, Outcome::Permanent, "{at:?}");
    assert_eq!(at.status, Some(550));
    assert!(at.error.unwrap().contains("no such user"));
}

#[test]
fn starttls_required_never_falls_back_to_plain_text() {
    // The responder does not offer STARTTLS: nothing may be sent in the clear.
    let (port, rx) = smtp_responder("250 2.1.5 OK\r\n");
    let c = channel(&format!(
        "name = \"m\"\nkind = \"email\"\nsmtp_host = \"127.0.0.1\"\nsmtp_port = {port}\nallow_private = true\nusername = \"u\"\npassword = \"hunter2\"\nfrom = \"b@example.com\"\nto = [\"o@example.com\"]"
    ));
    let a = budget_alert(AlertKind::ThresholdCrossed, "demo", "s");
    let at = deliver(&c, &a, &route());
    let s = rx.join().unwrap();
    assert_ne!(at.outcome, Outcome::Delivered, "{at:?}");
    assert!(
        s.commands.iter().all(|c| {
            let c = c.to_ascii_uppercase();
            !c.starts_with("MAIL") && !c.starts_with("AUTH")
        }),
        "{:?}",
        s.commands
    );
    assert!(s.data.is_empty());
    assert!(!at.error.unwrap_or_default().contains("hunter2"));
}
