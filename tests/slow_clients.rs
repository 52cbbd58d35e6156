//! Floods and slow clients (issue 19, item 3), against the real binary:
//! a slowloris trickling its head or its body a byte at a time is cut at
//! `request_timeout` counted from its first byte (no byte extends it), with a
//! 408 in OpenAI's error shape, while other connections are served; and a
//! worker at `connections_per_worker_max` stops accepting (accept
//! backpressure) and accepts again when one of its connections closes.
//!
//! Timing is asserted only with generous bounds: a trickle that reset the
//! deadline would run for the whole trickle (20 s and more), far past them.

mod util;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};
use util::*;

const LIMITS: &str = r#"
[limits]
request_timeout = "1s"
idle_timeout = "30s"
"#;

/// How a trickling connection ended.
#[derive(Debug)]
struct Cut {
    /// From the first byte sent to the server's answer or close.
    after: Duration,
    /// Bytes the client managed to send before that.
    sent: usize,
    /// What the server wrote (a 408, or nothing when it just closed).
    answer: Vec<u8>,
}

/// Sends `prefix` at once, then `trickle` one byte every 100 ms, until the
/// server answers or closes; gives up (the test fails) after 30 s.
fn trickle(addr: SocketAddr, prefix: &[u8], trickle: &[u8]) -> Cut {
    trickle_on(TcpStream::connect(addr).unwrap(), prefix, trickle)
}

/// [`trickle`] on a connection already open.
fn trickle_on(mut s: TcpStream, prefix: &[u8], trickle: &[u8]) -> Cut {
    s.set_nodelay(true).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let started = Instant::now();
    let mut sent = 0;
    if !prefix.is_empty() {
        s.write_all(prefix).unwrap();
        sent += prefix.len();
    }
    let mut next = trickle.iter();
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "a trickle of {sent} bytes was never cut"
        );
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                answer.extend_from_slice(&buf[..n]);
                // The whole answer, then the close.
                s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                continue;
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                if !answer.is_empty() {
                    break;
                }
            }
            Err(_) => break, // reset: the server closed on us
        }
        match next.next() {
            Some(b) => match s.write_all(std::slice::from_ref(b)) {
                Ok(()) => sent += 1,
                Err(_) => {
                    // Closed under us; pick up an answer already sent.
                    s.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
                    while let Ok(n) = s.read(&mut buf) {
                        if n == 0 {
                            break;
                        }
                        answer.extend_from_slice(&buf[..n]);
                    }
                    break;
                }
            },
            None => panic!("the whole trickle ({sent} bytes) went through uncut"),
        }
    }
    Cut {
        after: started.elapsed(),
        sent,
        answer,
    }
}

/// A 408 in OpenAI's error shape, or nothing (a close); anything else fails.
fn assert_cut_with_408_or_close(cut: &Cut, what: &str) {
    // Cut at the 1 s deadline: not before it, and long before the trickle
    // would have ended (each trickle below lasts 20 s or more).
    assert!(
        cut.after >= Duration::from_millis(900) && cut.after < Duration::from_secs(8),
        "{what}: cut after {:?} ({} bytes sent)",
        cut.after,
        cut.sent
    );
    if cut.answer.is_empty() {
        return;
    }
    let text = String::from_utf8_lossy(&cut.answer);
    assert!(text.starts_with("HTTP/1.1 408 "), "{what}: {text}");
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("");
    let v: serde_json::Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {text}"));
    assert_eq!(v["error"]["code"], "request_timeout", "{what}: {v}");
    assert!(v["error"]["message"].is_string(), "{what}: {v}");
    assert!(v["error"]["type"].is_string(), "{what}: {v}");
}

/// Runs `slow` on its own threads while a normal client makes requests on
/// another connection; returns the cuts and how many normal requests were
/// served while the slow ones were open (all must be 200).
fn while_normal_traffic(
    gw: &Gateway,
    slow: Vec<Box<dyn FnOnce() -> Cut + Send>>,
) -> (Vec<Cut>, u32) {
    let done = Arc::new(AtomicBool::new(false));
    let handles: Vec<_> = slow.into_iter().map(thread::spawn).collect();
    let watcher = {
        let done = Arc::clone(&done);
        thread::spawn(move || {
            let cuts: Vec<Cut> = handles.into_iter().map(|h| h.join().unwrap()).collect();
            done.store(true, Ordering::SeqCst);
            cuts
        })
    };
    let mut c = Client::connect(gw.addr);
    let mut served = 0;
    while !done.load(Ordering::SeqCst) {
        let r = c.post("/v1/chat/completions", "sk-bursar-demo", CHAT, &[]);
        assert_eq!(r.status, 200, "{}", r.text());
        served += 1;
        thread::sleep(Duration::from_millis(50));
    }
    (watcher.join().unwrap(), served)
}

#[test]
fn a_head_trickled_a_byte_at_a_time_is_cut_at_the_request_timeout() {
    let mock = Mock::start(&[]);
    let gw = Gateway::start(&proxy_config(&mock.base_url(), LIMITS), &[]);
    let addr = gw.addr;
    // A 200-byte head at 10 bytes a second: 20 s if no deadline held.
    let mut head = b"POST /v1/chat/completions HTTP/1.1\r\nhost: a\r\n".to_vec();
    while head.len() < 200 {
        head.extend_from_slice(b"x-pad: aaaaaaaaaaaaaaaa\r\n");
    }
    head.extend_from_slice(b"content-length: 2\r\n\r\n{}");
    let from_the_start = head.clone();
    // The same after the connection served a request (keep-alive): the
    // deadline runs from the next request's first byte.
    let after_a_request = head;
    let (cuts, served) = while_normal_traffic(
        &gw,
        vec![
            Box::new(move || trickle(addr, b"", &from_the_start)),
            Box::new(move || {
                let mut c = Client::connect(addr);
                let r = c.post("/v1/chat/completions", "sk-bursar-demo", CHAT, &[]);
                assert_eq!(r.status, 200, "{}", r.text());
                trickle_on(c.reader.into_inner(), b"", &after_a_request)
            }),
        ],
    );
    for (cut, what) in cuts
        .iter()
        .zip(["head trickle", "head trickle, second connection"])
    {
        assert_cut_with_408_or_close(cut, what);
        assert!(cut.sent < 100, "{what}: {cut:?}");
    }
    assert!(
        served >= 5,
        "only {served} normal requests while the slowloris ran"
    );
    assert!(gw.metric_sum("bursar_bad_requests_total") >= 2);
}

#[test]
fn a_body_trickled_a_byte_at_a_time_is_cut_at_the_request_timeout() {
    let mock = Mock::start(&[]);
    let gw = Gateway::start(&proxy_config(&mock.base_url(), LIMITS), &[]);
    let addr = gw.addr;
    let head = |framing: &str| {
        format!(
            "POST /v1/chat/completions HTTP/1.1\r\nhost: a\r\n\
             authorization: Bearer sk-bursar-demo\r\ncontent-type: application/json\r\n\
             {framing}\r\n\r\n"
        )
        .into_bytes()
    };
    // A 400-byte body at 10 bytes a second, framed by length.
    let length_head = head("content-length: 400");
    let length_body = vec![b' '; 400];
    // A chunked body of one-byte chunks ("1\r\n \r\n", 6 bytes each): the
    // trickle completes a chunk every 600 ms, which must not extend it either.
    let chunked_head = head("transfer-encoding: chunked");
    let chunked_body = b"1\r\n \r\n".repeat(60);
    let (cuts, served) = while_normal_traffic(
        &gw,
        vec![
            Box::new(move || trickle(addr, &length_head, &length_body)),
            Box::new(move || trickle(addr, &chunked_head, &chunked_body)),
        ],
    );
    for (cut, what) in cuts.iter().zip(["content-length body", "chunked body"]) {
        assert_cut_with_408_or_close(cut, what);
    }
    assert!(
        served >= 5,
        "only {served} normal requests while the slowloris ran"
    );
}

#[test]
fn a_worker_at_its_connection_bound_stops_accepting_until_one_closes() {
    let mock = Mock::start(&[]);
    let config = proxy_config(
        &mock.base_url(),
        r#"
[limits]
connections_per_worker_max = 8
request_timeout = "10s"
idle_timeout = "60s"
"#,
    )
    .replace("workers = 2", "workers = 1");
    let gw = Gateway::start(&config, &[]);
    let mut open: Vec<Client> = (0..8)
        .map(|_| {
            let mut c = Client::connect(gw.addr);
            let r = c.post("/v1/chat/completions", "sk-bursar-demo", CHAT, &[]);
            assert_eq!(r.status, 200, "{}", r.text());
            c
        })
        .collect();
    assert_eq!(per_worker(&gw.metrics(), "bursar_connections_active"), [8]);

    // The ninth connects (the kernel completes it into the listen backlog)
    // and sends its request, but the worker does not accept it.
    let mut ninth = Client::connect(gw.addr);
    ninth.send_raw(&format_request(
        "POST",
        "/v1/chat/completions",
        &[("authorization", "Bearer sk-bursar-demo")],
        CHAT.as_bytes(),
    ));
    ninth
        .reader
        .get_ref()
        .set_read_timeout(Some(Duration::from_millis(1500)))
        .unwrap();
    let mut b = [0u8; 1];
    match ninth.reader.get_mut().peek(&mut b) {
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
        other => panic!("the ninth connection got {other:?} while the worker was full"),
    }
    let m = gw.metrics();
    assert_eq!(per_worker(&m, "bursar_connections_active"), [8]);
    assert_eq!(per_worker(&m, "bursar_connections_accepted_total"), [8]);
    assert!(per_worker(&m, "bursar_accept_paused_total")[0] >= 1, "{m}");

    // The eight it has are still served.
    for c in &mut open {
        let r = c.post("/v1/chat/completions", "sk-bursar-demo", CHAT, &[]);
        assert_eq!(r.status, 200, "{}", r.text());
    }

    // One closes: the worker accepts the ninth and serves its request.
    drop(open.pop());
    ninth
        .reader
        .get_ref()
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let r = ninth
        .read_response()
        .expect("the ninth is served once a slot frees");
    assert_eq!(r.status, 200, "{}", r.text());
    let m = gw.metrics();
    assert_eq!(per_worker(&m, "bursar_connections_accepted_total"), [9]);
    assert_eq!(per_worker(&m, "bursar_connections_active"), [8]);
    // Still full: a tenth waits in turn.
    let mut tenth = Client::connect(gw.addr);
    tenth.send_raw(&format_request(
        "GET",
        "/v1/models",
        &[("authorization", "Bearer sk-bursar-demo")],
        b"",
    ));
    tenth
        .reader
        .get_ref()
        .set_read_timeout(Some(Duration::from_millis(1000)))
        .unwrap();
    assert!(matches!(
        tenth.reader.get_mut().peek(&mut b),
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)
    ));
    drop(ninth);
    tenth
        .reader
        .get_ref()
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let r = tenth
        .read_response()
        .expect("the tenth is served once a slot frees");
    assert_eq!(r.status, 200, "{}", r.text());
}

#[test]
fn a_connection_that_sent_a_large_request_serves_small_ones_after_it() {
    // Between requests a connection gives back the buffers a large request
    // grew (limits::CONNECTION_BUFFER_KEPT_BYTES_MAX) and its write buffer;
    // nothing of the next request may be lost to that, pipelined or not.
    let mock = Mock::start(&[]);
    let gw = Gateway::start(&proxy_config(&mock.base_url(), LIMITS), &[]);
    let large = format!(
        r#"{{"model":"gpt-4o-mini","max_tokens":5,"messages":[{{"role":"user","content":"{}"}}]}}"#,
        "lorem ipsum ".repeat(40_000)
    );
    let auth = [("authorization", "Bearer sk-bursar-demo")];
    let mut c = Client::connect(gw.addr);
    for _ in 0..2 {
        let r = c.post("/v1/chat/completions", "sk-bursar-demo", &large, &[]);
        assert_eq!(r.status, 200, "{}", r.text());
        let r = c.post("/v1/chat/completions", "sk-bursar-demo", CHAT, &[]);
        assert_eq!(r.status, 200, "{}", r.text());
    }
    // A large chunked body with a small request pipelined behind it.
    let mut bytes = b"POST /v1/chat/completions HTTP/1.1\r\nhost: a\r\n\
        authorization: Bearer sk-bursar-demo\r\ntransfer-encoding: chunked\r\n\r\n"
        .to_vec();
    for piece in large.as_bytes().chunks(7000) {
        bytes.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
        bytes.extend_from_slice(piece);
        bytes.extend_from_slice(b"\r\n");
    }
    bytes.extend_from_slice(b"0\r\n\r\n");
    bytes.extend_from_slice(&format_request(
        "POST",
        "/v1/chat/completions",
        &auth,
        CHAT.as_bytes(),
    ));
    c.send_raw(&bytes);
    for _ in 0..2 {
        let r = c.read_response().expect("a response");
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let r = c.post("/v1/chat/completions", "sk-bursar-demo", CHAT, &[]);
    assert_eq!(r.status, 200, "{}", r.text());
}

#[test]
fn past_a_thousand_connections_waiting_ones_hold_no_buffer_and_lose_nothing() {
    // 1,100 connections on each side: raise the soft descriptor limit (the
    // gateway inherits it) where it is below that, as far as the hard one.
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid rlimit for both calls.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim), 0);
        if lim.rlim_cur < 4096 {
            lim.rlim_cur = lim.rlim_max.min(4096);
            assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &lim), 0);
        }
    }
    if lim.rlim_cur < 2500 {
        eprintln!(
            "skipped: the descriptor limit ({}) is too low",
            lim.rlim_cur
        );
        return;
    }
    for driver in ["io_uring", "legacy"] {
        many_connections_lose_nothing(driver);
    }
}

fn many_connections_lose_nothing(driver: &str) {
    // From limits::IDLE_WAIT_UNBUFFERED_CONNECTIONS_MIN (1024) open
    // connections on a worker, a connection waits for its next request with
    // a readiness poll instead of a buffered read: every request must still
    // arrive whole, pipelined ones too, and a close must still be seen.
    let mock = Mock::start(&[]);
    let config = proxy_config(&mock.base_url(), LIMITS).replace("workers = 2", "workers = 1");
    let gw = Gateway::start(&config, &["--io-driver", driver]);
    let mut conns: Vec<Client> = (0..1100)
        .map(|_| {
            let mut c = Client::connect(gw.addr);
            let r = c.post("/v1/chat/completions", "sk-bursar-demo", CHAT, &[]);
            assert_eq!(r.status, 200, "{}", r.text());
            c
        })
        .collect();
    assert_eq!(
        per_worker(&gw.metrics(), "bursar_connections_active"),
        [1100]
    );
    for c in conns.iter_mut().step_by(10) {
        let r = c.post("/v1/chat/completions", "sk-bursar-demo", CHAT, &[]);
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let auth = [("authorization", "Bearer sk-bursar-demo")];
    let one = format_request("POST", "/v1/chat/completions", &auth, CHAT.as_bytes());
    conns[7].send_raw(&[one.clone(), one.clone(), one].concat());
    for _ in 0..3 {
        let r = conns[7].read_response().expect("a pipelined response");
        assert_eq!(r.status, 200, "{}", r.text());
    }
    // A request trickled in two parts after a wait is read whole.
    let (first, rest) = CHAT.as_bytes().split_at(20);
    let mut head = format_request("POST", "/v1/chat/completions", &auth, CHAT.as_bytes());
    head.truncate(head.len() - CHAT.len());
    conns[8].send_raw(&[&head[..], first].concat());
    thread::sleep(Duration::from_millis(200));
    conns[8].send_raw(rest);
    let r = conns[8].read_response().expect("a response");
    assert_eq!(r.status, 200, "{}", r.text());
    // Clients closing are seen: the worker's count comes down.
    conns.truncate(100);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let open = per_worker(&gw.metrics(), "bursar_connections_active")[0];
        if open == 100 {
            break;
        }
        assert!(Instant::now() < deadline, "{open} connections still open");
        thread::sleep(Duration::from_millis(100));
    }
}
