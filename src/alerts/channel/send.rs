//! One delivery attempt, blocking: HTTP with ureq, mail with lettre, both
//! through the SSRF guard and to the addresses it checked.
//!
//! Runs on the alerts delivery thread only: every wait here is bounded by
//! the consts below, but they are seconds, not microseconds.

use std::io::Read as _;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use lettre::message::header::{Header, HeaderName, HeaderValue};
use lettre::message::{Mailbox, MultiPart};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Tls, TlsParameters};
use lettre::{Message, SmtpTransport, Transport as _};

use super::config::{ChannelConfig, EmailTarget, SmtpTls};
use super::render::USER_AGENT;
use super::ssrf::{self, Refusal, MAX_RESOLVED_ADDRS};
use super::{Attempt, Outcome};
use crate::alerts::event::Alert;

/// Longest wait for a TCP connection to a receiver.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Longest a whole HTTP delivery may take (resolution excluded: it happens
/// before, in the SSRF guard), connect, send and response included.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Most bytes of a response body read (it is ignored except as error text).
pub const MAX_RESPONSE_BODY: u64 = 64 * 1024;

/// Most characters of a receiver's error text kept in [`Attempt::error`].
pub const MAX_ERROR_TEXT_CHARS: usize = 200;

/// Longest `Retry-After` honoured; a longer one is capped to it.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// Longest wait for each SMTP exchange (connect, every command, the data).
pub const SMTP_TIMEOUT: Duration = Duration::from_secs(10);

/// Most addresses of an SMTP server tried, one after another, when a
/// connection fails (each is bounded by [`SMTP_TIMEOUT`]).
pub const MAX_SMTP_ADDRS_TRIED: usize = 3;

fn elapsed_ms(start: Instant) -> u64 {
    start.elapsed().as_millis().min(u64::MAX as u128) as u64
}

fn attempt(
    start: Instant,
    status: Option<u16>,
    error: Option<String>,
    outcome: Outcome,
) -> Attempt {
    Attempt {
        status,
        latency_ms: elapsed_ms(start),
        error,
        outcome,
    }
}

/// The first [`MAX_ERROR_TEXT_CHARS`] characters of `s`, control characters
/// replaced (it goes into logs and the admin API).
fn error_text(s: &str) -> String {
    s.chars()
        .take(MAX_ERROR_TEXT_CHARS)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

fn refused(start: Instant, r: Refusal) -> Attempt {
    match r {
        Refusal::Unresolved(m) => attempt(start, None, Some(m), Outcome::Retry { after: None }),
        Refusal::Private(m) => attempt(start, None, Some(m), Outcome::Permanent),
    }
}

/// How an HTTP status ends an attempt.
pub fn classify_status(status: u16, retry_after: Option<Duration>) -> Outcome {
    match status {
        200..=299 => Outcome::Delivered,
        408 | 425 | 429 | 500..=599 => Outcome::Retry { after: retry_after },
        _ => Outcome::Permanent,
    }
}

/// `Retry-After` in seconds (the HTTP-date form is not honoured: the
/// delivery thread's own backoff applies), capped at [`MAX_RETRY_AFTER`].
pub fn parse_retry_after(v: &str) -> Option<Duration> {
    let secs: u64 = v.trim().parse().ok()?;
    Some(Duration::from_secs(secs).min(MAX_RETRY_AFTER))
}

/// A ureq resolver that answers only with the addresses the SSRF guard
/// checked, and only for the host they were checked for.
#[derive(Debug)]
struct PinnedResolver {
    host: String,
    addrs: Vec<SocketAddr>,
}

impl ureq::unversioned::resolver::Resolver for PinnedResolver {
    fn resolve(
        &self,
        uri: &ureq::http::Uri,
        _config: &ureq::config::Config,
        _timeout: ureq::unversioned::transport::NextTimeout,
    ) -> Result<ureq::unversioned::resolver::ResolvedSocketAddrs, ureq::Error> {
        let asked = uri
            .host()
            .unwrap_or_default()
            .trim_start_matches('[')
            .trim_end_matches(']');
        if !asked.eq_ignore_ascii_case(&self.host) {
            return Err(ureq::Error::HostNotFound);
        }
        let mut out = self.empty();
        for a in self.addrs.iter().take(MAX_RESOLVED_ADDRS) {
            out.push(*a);
        }
        if out.is_empty() {
            return Err(ureq::Error::HostNotFound);
        }
        Ok(out)
    }
}

/// The host to resolve and the port, from an http(s) URL.
fn host_port(url: &str) -> Result<(String, u16), String> {
    let u = url::Url::parse(url).map_err(|e| format!("invalid URL: {e}"))?;
    let host = match u.host() {
        Some(url::Host::Domain(d)) => d.to_string(),
        Some(url::Host::Ipv4(ip)) => ip.to_string(),
        Some(url::Host::Ipv6(ip)) => ip.to_string(),
        None => return Err("URL has no host".into()),
    };
    let port = u
        .port_or_known_default()
        .ok_or_else(|| "URL has no port".to_string())?;
    Ok((host, port))
}

/// POSTs `body` to `url` once.
pub fn send_http(
    channel: &ChannelConfig,
    url: &str,
    headers: &[(String, String)],
    body: &[u8],
) -> Attempt {
    let start = Instant::now();
    let (host, port) = match host_port(url) {
        Ok(hp) => hp,
        Err(e) => return attempt(start, None, Some(e), Outcome::Permanent),
    };
    let addrs = match ssrf::resolve_checked(&host, port, channel.allow_private) {
        Ok(a) => a,
        Err(r) => return refused(start, r),
    };
    post_pinned(start, host, addrs, url, headers, body)
}

/// POSTs `body` to `url`, connecting only to `addrs` (what the guard
/// checked for `host`, the URL's host), never resolving anything.
pub(crate) fn post_pinned(
    start: Instant,
    host: String,
    addrs: Vec<SocketAddr>,
    url: &str,
    headers: &[(String, String)],
    body: &[u8],
) -> Attempt {
    let config = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        // An environment proxy would connect somewhere the guard never saw.
        .proxy(None)
        .timeout_connect(Some(CONNECT_TIMEOUT))
        .timeout_global(Some(REQUEST_TIMEOUT))
        .user_agent(USER_AGENT)
        .max_idle_connections(0)
        .build();
    let agent = ureq::Agent::with_parts(
        config,
        ureq::unversioned::transport::DefaultConnector::new(),
        PinnedResolver { host, addrs },
    );
    let mut req = agent.post(url);
    for (k, v) in headers {
        req = req.header(k.as_str(), v.as_str());
    }
    match req.send(body) {
        Ok(mut resp) => {
            let status = resp.status().as_u16();
            let retry_after = resp
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(parse_retry_after);
            let mut buf = Vec::new();
            // Read errors only shorten the error text.
            let _ = resp
                .body_mut()
                .as_reader()
                .take(MAX_RESPONSE_BODY)
                .read_to_end(&mut buf);
            let outcome = classify_status(status, retry_after);
            let error = match outcome {
                Outcome::Delivered => None,
                _ => {
                    let text = error_text(&String::from_utf8_lossy(&buf));
                    let what = if (300..400).contains(&status) {
                        " (redirects are not followed)"
                    } else {
                        ""
                    };
                    Some(format!("HTTP {status}{what}: {text}"))
                }
            };
            attempt(start, Some(status), error, outcome)
        }
        Err(e) => {
            let outcome = match &e {
                ureq::Error::BadUri(_)
                | ureq::Error::Http(_)
                | ureq::Error::RequireHttpsOnly(_)
                | ureq::Error::InvalidProxyUrl => Outcome::Permanent,
                _ => Outcome::Retry { after: None },
            };
            attempt(start, None, Some(error_text(&e.to_string())), outcome)
        }
    }
}

/// The `X-Bursar-Alert-Id` mail header.
#[derive(Clone)]
struct AlertIdHeader(String);

impl Header for AlertIdHeader {
    fn name() -> HeaderName {
        HeaderName::new_from_ascii_str("X-Bursar-Alert-Id")
    }

    fn parse(s: &str) -> Result<Self, Box<dyn std::error::Error + Send + Sync>> {
        Ok(AlertIdHeader(s.to_string()))
    }

    fn display(&self) -> HeaderValue {
        HeaderValue::new(Self::name(), self.0.clone())
    }
}

/// The mail for an alert: `subject`, a plain and an HTML alternative, the
/// alert id in `Message-ID` (so a repeat is the same message) and
/// `X-Bursar-Alert-Id`.
pub fn build_message(
    target: &EmailTarget,
    alert: &Alert,
    subject: &str,
    text: String,
    html: String,
) -> Result<Message, String> {
    let domain = target.from.email.domain().to_string();
    let mut b = Message::builder()
        .from(target.from.clone())
        .subject(subject)
        .message_id(Some(format!("<{}@{domain}>", alert.id)))
        .user_agent(USER_AGENT.to_string())
        .header(AlertIdHeader(alert.id.clone()));
    for to in &target.to {
        b = b.to(Mailbox::clone(to));
    }
    b.multipart(MultiPart::alternative_plain_html(text, html))
        .map_err(|e| format!("cannot build the mail: {e}"))
}

/// Sends one mail for `alert`.
pub fn send_email(
    channel: &ChannelConfig,
    target: &EmailTarget,
    alert: &Alert,
    subject: &str,
    text: String,
    html: String,
) -> Attempt {
    let start = Instant::now();
    let message = match build_message(target, alert, subject, text, html) {
        Ok(m) => m,
        Err(e) => return attempt(start, None, Some(error_text(&e)), Outcome::Permanent),
    };
    let addrs =
        match ssrf::resolve_checked(&target.smtp_host, target.smtp_port, channel.allow_private) {
            Ok(a) => a,
            Err(r) => return refused(start, r),
        };
    let tls = match target.smtp_tls {
        SmtpTls::None => None,
        // The host name, not the address connected to, is what the
        // certificate is checked against (and the SNI sent).
        _ => match TlsParameters::new(target.smtp_host.clone()) {
            Ok(p) => Some(p),
            Err(e) => {
                return attempt(
                    start,
                    None,
                    Some(error_text(&format!("TLS setup: {e}"))),
                    Outcome::Permanent,
                )
            }
        },
    };
    let mut last = None;
    for addr in addrs.iter().take(MAX_SMTP_ADDRS_TRIED) {
        let mut builder = SmtpTransport::builder_dangerous(addr.ip().to_string())
            .port(addr.port())
            .timeout(Some(SMTP_TIMEOUT))
            .tls(match (&tls, target.smtp_tls) {
                (Some(p), SmtpTls::Tls) => Tls::Wrapper(p.clone()),
                (Some(p), _) => Tls::Required(p.clone()),
                (None, _) => Tls::None,
            });
        if let Some((user, password)) = &target.credentials {
            builder = builder.credentials(Credentials::new(
                user.clone(),
                password.expose().to_string(),
            ));
        }
        let transport = builder.build();
        match transport.send(&message) {
            Ok(resp) => {
                return attempt(
                    start,
                    Some(u16::from(resp.code())),
                    None,
                    Outcome::Delivered,
                )
            }
            Err(e) => {
                let status = e.status().map(u16::from);
                let text = Some(error_text(&e.to_string()));
                if e.is_permanent() || e.is_client() {
                    return attempt(start, status, text, Outcome::Permanent);
                }
                if e.is_transient() || e.is_response() || e.is_timeout() {
                    return attempt(start, status, text, Outcome::Retry { after: None });
                }
                // A connection or TLS failure: the next address may answer.
                last = Some((status, text));
            }
        }
    }
    let (status, text) = last.unwrap_or((None, Some("no SMTP address tried".into())));
    attempt(start, status, text, Outcome::Retry { after: None })
}
