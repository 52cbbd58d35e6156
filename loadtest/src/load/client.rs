//! The HTTP/1.1 side: parsing a target URL, keep-alive connections, one request and
//! the classification of what went wrong.

use std::error::Error as _;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper::header::{HeaderName, HeaderValue, AUTHORIZATION, CONTENT_TYPE, HOST};
use hyper::{HeaderMap, Method, Request, Uri};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

use super::scenario::{Scenario, SseScanner};
use super::stats::ErrorKind;

/// A parsed `--target`: where to connect and what to put in the request line.
#[derive(Clone, Debug)]
pub struct Target {
    /// As given on the command line (for reports).
    pub url: String,
    /// `host:port` for the Host header.
    pub authority: String,
    /// `host:port` to resolve.
    pub connect_to: String,
    /// Base path without a trailing slash (`/v1`), or the full endpoint path.
    pub base_path: String,
}

impl Target {
    pub fn parse(url: &str) -> anyhow::Result<Target> {
        let uri: Uri = url.parse().with_context(|| {
            format!("target {url:?} is not a URL (example: http://127.0.0.1:8080/v1)")
        })?;
        match uri.scheme_str() {
            Some("http") => {}
            Some("https") => bail!(
                "target {url:?}: https is not supported; point the load generator at the plain-HTTP listener"
            ),
            _ => bail!("target {url:?} must start with http:// (example: http://127.0.0.1:8080/v1)"),
        }
        let authority = uri
            .authority()
            .with_context(|| format!("target {url:?} has no host"))?;
        if authority.as_str().contains('@') {
            bail!("target {url:?}: user:password@ in the URL is not supported; use --header");
        }
        if uri.query().is_some() {
            bail!("target {url:?}: a query string is not supported");
        }
        let host = authority.host();
        if host.is_empty() {
            bail!("target {url:?} has no host");
        }
        let port = uri.port_u16().unwrap_or(80);
        let connect_to = if host.contains(':') && !host.starts_with('[') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        };
        let base_path = uri.path().trim_end_matches('/').to_string();
        Ok(Target {
            url: url.to_string(),
            authority: authority.as_str().to_string(),
            connect_to,
            base_path,
        })
    }

    /// The request path for a scenario: base + endpoint, unless the URL already names
    /// the endpoint (`http://h/v1/chat/completions`).
    pub fn path_for(&self, scenario: Scenario) -> String {
        if self.base_path.ends_with(scenario.path()) {
            self.base_path.clone()
        } else {
            format!("{}{}", self.base_path, scenario.path())
        }
    }

    /// Resolves the host once (every connection of the run goes to the same address).
    pub async fn resolve(&self) -> anyhow::Result<SocketAddr> {
        let mut addrs = tokio::net::lookup_host(&self.connect_to)
            .await
            .with_context(|| format!("cannot resolve {}", self.connect_to))?;
        addrs
            .next()
            .with_context(|| format!("{} resolves to no address", self.connect_to))
    }
}

/// Parses a `--header 'name: value'` flag.
pub fn parse_header(s: &str) -> Result<(HeaderName, HeaderValue), String> {
    let (name, value) = s
        .split_once(':')
        .ok_or_else(|| format!("header {s:?} must look like 'name: value'"))?;
    let name = HeaderName::from_bytes(name.trim().as_bytes())
        .map_err(|_| format!("header {s:?}: {:?} is not a valid header name", name.trim()))?;
    let value = HeaderValue::from_str(value.trim())
        .map_err(|_| format!("header {s:?}: the value is not a valid header value"))?;
    Ok((name, value))
}

/// What every request of a run shares: built once.
pub struct RequestTemplate {
    pub scenario: Scenario,
    pub path: String,
    pub body: Bytes,
    pub headers: HeaderMap,
    /// One `Authorization: Bearer K` per `--key`, used round-robin by request number.
    pub keys: Vec<HeaderValue>,
    pub timeout: Duration,
    /// `--sum-header`: a response header (or trailer) whose decimal value is
    /// added up over every response read in full.
    pub sum: Option<HeaderSum>,
}

/// The running total of a response header's decimal values ([`HeaderSum::add`]),
/// in units of 10^-12 (exact for up to 12 decimals).
#[derive(Debug)]
pub struct HeaderSum {
    pub name: HeaderName,
    pub units: std::sync::atomic::AtomicU64,
    pub responses: std::sync::atomic::AtomicU64,
    /// Values that did not parse as a non-negative decimal of at most 12 places.
    pub unparsed: std::sync::atomic::AtomicU64,
}

impl HeaderSum {
    pub fn new(name: HeaderName) -> HeaderSum {
        HeaderSum {
            name,
            units: Default::default(),
            responses: Default::default(),
            unparsed: Default::default(),
        }
    }

    fn add(&self, value: &HeaderValue) {
        use std::sync::atomic::Ordering::Relaxed;
        match value.to_str().ok().and_then(parse_units) {
            Some(u) => {
                self.units.fetch_add(u, Relaxed);
                self.responses.fetch_add(1, Relaxed);
            }
            None => {
                self.unparsed.fetch_add(1, Relaxed);
            }
        }
    }

    /// The total as a decimal with 12 places.
    pub fn total(&self) -> String {
        let u = self.units.load(std::sync::atomic::Ordering::Relaxed);
        format!("{}.{:012}", u / 1_000_000_000_000, u % 1_000_000_000_000)
    }
}

/// "0.0000042" → 4_200_000 (units of 10^-12); `None` for anything else.
pub fn parse_units(s: &str) -> Option<u64> {
    let (int, frac) = s.trim().split_once('.').unwrap_or((s.trim(), ""));
    if int.is_empty()
        || frac.len() > 12
        || !int.bytes().all(|b| b.is_ascii_digit())
        || !frac.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    let int: u64 = int.parse().ok()?;
    let frac: u64 = format!("{frac:0<12}").parse().ok()?;
    int.checked_mul(1_000_000_000_000)?.checked_add(frac)
}

impl RequestTemplate {
    pub fn new(
        target: &Target,
        scenario: Scenario,
        model: &str,
        max_tokens: u32,
        keys: &[String],
        extra: &[(HeaderName, HeaderValue)],
        timeout: Duration,
    ) -> anyhow::Result<RequestTemplate> {
        let mut headers = HeaderMap::new();
        headers.insert(
            HOST,
            HeaderValue::from_str(&target.authority)
                .context("target host is not a valid Host header")?,
        );
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        for (k, v) in extra {
            headers.append(k.clone(), v.clone());
        }
        let keys = keys
            .iter()
            .map(|k| {
                HeaderValue::from_str(&format!("Bearer {k}"))
                    .map_err(|_| anyhow::anyhow!("--key {k:?} is not valid in a header"))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(RequestTemplate {
            scenario,
            path: target.path_for(scenario),
            body: scenario.body(model, max_tokens),
            headers,
            keys,
            timeout,
            sum: None,
        })
    }

    fn build(&self, seq: u64) -> Request<Full<Bytes>> {
        let mut req = Request::new(Full::new(self.body.clone()));
        *req.method_mut() = Method::POST;
        *req.uri_mut() =
            Uri::try_from(self.path.as_str()).unwrap_or_else(|_| Uri::from_static("/"));
        *req.headers_mut() = self.headers.clone();
        if !self.keys.is_empty() {
            let k = &self.keys[(seq % self.keys.len() as u64) as usize];
            req.headers_mut().insert(AUTHORIZATION, k.clone());
        }
        req
    }
}

/// What became of one request.
pub struct Outcome {
    /// When the last byte of the response arrived (or the error happened).
    pub done: Instant,
    pub status: Option<u16>,
    pub error: Option<ErrorKind>,
    pub first_token: Option<Instant>,
    pub last_token: Option<Instant>,
    pub tokens: u32,
}

/// One keep-alive HTTP/1.1 connection, reconnected on demand.
pub struct Conn {
    addr: SocketAddr,
    sender: Option<http1::SendRequest<Full<Bytes>>>,
    driver: Option<JoinHandle<()>>,
    /// Connections opened, including the first.
    pub connects: u64,
}

impl Drop for Conn {
    fn drop(&mut self) {
        if let Some(d) = self.driver.take() {
            d.abort();
        }
    }
}

impl Conn {
    pub fn new(addr: SocketAddr) -> Conn {
        Conn {
            addr,
            sender: None,
            driver: None,
            connects: 0,
        }
    }

    /// Opens the connection now (used before the schedule starts).
    pub async fn open(&mut self, timeout: Duration) -> io::Result<()> {
        self.drop_connection();
        let stream = tokio::time::timeout(timeout, TcpStream::connect(self.addr))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
        stream.set_nodelay(true)?;
        let (sender, conn) = http1::handshake(TokioIo::new(stream))
            .await
            .map_err(io::Error::other)?;
        self.driver = Some(tokio::spawn(async move {
            let _ = conn.await;
        }));
        self.sender = Some(sender);
        self.connects += 1;
        Ok(())
    }

    fn drop_connection(&mut self) {
        self.sender = None;
        if let Some(d) = self.driver.take() {
            d.abort();
        }
    }

    /// Sends request number `seq` and reads the whole response.
    pub async fn request(&mut self, tpl: &Arc<RequestTemplate>, seq: u64) -> Outcome {
        let mut out = Outcome {
            done: Instant::now(),
            status: None,
            error: None,
            first_token: None,
            last_token: None,
            tokens: 0,
        };
        // A keep-alive connection the server closed is replaced before sending.
        let usable = match self.sender.as_mut() {
            Some(s) if !s.is_closed() => s.ready().await.is_ok(),
            _ => false,
        };
        if !usable {
            // Whatever went wrong (refused, reset, timed out), it is a connect error.
            if self.open(tpl.timeout).await.is_err() {
                out.error = Some(ErrorKind::Connect);
                out.done = Instant::now();
                return out;
            }
        }
        let Some(sender) = self.sender.as_mut() else {
            out.error = Some(ErrorKind::Connect);
            return out;
        };
        let req = tpl.build(seq);
        let exchange = exchange(
            sender,
            req,
            tpl.scenario.streamed(),
            tpl.sum.as_ref(),
            &mut out,
        );
        let result = tokio::time::timeout(tpl.timeout, exchange).await;
        out.done = Instant::now();
        match result {
            Ok(Ok(())) => {}
            Ok(Err(kind)) => {
                out.error = Some(kind);
                self.drop_connection();
            }
            Err(_) => {
                out.error = Some(ErrorKind::Timeout);
                // The connection is mid-response: it cannot be reused.
                self.drop_connection();
            }
        }
        out
    }
}

async fn exchange(
    sender: &mut http1::SendRequest<Full<Bytes>>,
    req: Request<Full<Bytes>>,
    streamed: bool,
    sum: Option<&HeaderSum>,
    out: &mut Outcome,
) -> Result<(), ErrorKind> {
    let resp = sender.send_request(req).await.map_err(|e| classify(&e))?;
    let status = resp.status();
    out.status = Some(status.as_u16());
    let scan = streamed && status.is_success();
    let mut sse = SseScanner::default();
    // Counted only once the whole body is read: a response cut short was
    // not seen in full.
    let mut summed = sum.and_then(|s| resp.headers().get(&s.name).cloned());
    let mut body = resp.into_body();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| classify(&e))?;
        let frame = match frame.into_trailers() {
            Ok(trailers) => {
                if let Some(v) = sum.and_then(|s| trailers.get(&s.name)) {
                    summed = Some(v.clone());
                }
                continue;
            }
            Err(frame) => frame,
        };
        if !scan {
            continue;
        }
        if let Ok(data) = frame.into_data() {
            let n = sse.feed(&data).map_err(|_| ErrorKind::Protocol)?;
            if n > 0 {
                let now = Instant::now();
                out.first_token.get_or_insert(now);
                out.last_token = Some(now);
            }
        }
    }
    out.tokens = sse.tokens;
    if let (Some(s), Some(v)) = (sum, &summed) {
        s.add(v);
    }
    Ok(())
}

/// Maps a hyper error to the error kinds of the report.
pub fn classify(e: &hyper::Error) -> ErrorKind {
    if e.is_timeout() {
        return ErrorKind::Timeout;
    }
    let mut src = e.source();
    while let Some(s) = src {
        if let Some(io) = s.downcast_ref::<io::Error>() {
            if let Some(k) = classify_io(io) {
                return k;
            }
        }
        src = s.source();
    }
    if e.is_incomplete_message() || e.is_canceled() || e.is_closed() {
        return ErrorKind::Reset;
    }
    ErrorKind::Protocol
}

fn classify_io(e: &io::Error) -> Option<ErrorKind> {
    use io::ErrorKind as K;
    match e.kind() {
        K::ConnectionReset | K::ConnectionAborted | K::BrokenPipe | K::UnexpectedEof => {
            Some(ErrorKind::Reset)
        }
        K::ConnectionRefused | K::AddrNotAvailable | K::NotConnected => Some(ErrorKind::Connect),
        K::TimedOut => Some(ErrorKind::Timeout),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_sums_are_exact_decimals() {
        assert_eq!(parse_units("0.0000042"), Some(4_200_000));
        assert_eq!(parse_units("12"), Some(12_000_000_000_000));
        assert_eq!(parse_units("0.000000000001"), Some(1));
        for bad in ["", "-1", "1.0000000000001", "1e3", "0x1", ".5", "1.2.3"] {
            assert_eq!(parse_units(bad), None, "{bad}");
        }
        let sum = HeaderSum::new(HeaderName::from_static("x-cost"));
        sum.add(&HeaderValue::from_static("0.0000042"));
        sum.add(&HeaderValue::from_static("1.5"));
        sum.add(&HeaderValue::from_static("n/a"));
        assert_eq!(sum.total(), "1.500004200000");
        assert_eq!(sum.unparsed.load(std::sync::atomic::Ordering::Relaxed), 1);
    }

    #[test]
    fn targets() {
        let t = Target::parse("http://127.0.0.1:8080/v1/").unwrap();
        assert_eq!(t.connect_to, "127.0.0.1:8080");
        assert_eq!(t.authority, "127.0.0.1:8080");
        assert_eq!(t.path_for(Scenario::Chat), "/v1/chat/completions");
        let t = Target::parse("http://localhost/v1/embeddings").unwrap();
        assert_eq!(t.connect_to, "localhost:80");
        assert_eq!(t.path_for(Scenario::Embeddings), "/v1/embeddings");
        let t = Target::parse("http://[::1]:9000").unwrap();
        assert_eq!(t.connect_to, "[::1]:9000");
        assert_eq!(t.path_for(Scenario::Chat), "/chat/completions");
        for bad in [
            "",
            "127.0.0.1:8080",
            "https://x/v1",
            "ftp://x",
            "http://",
            "http://u:p@h/",
        ] {
            assert!(Target::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn headers() {
        let (k, v) = parse_header("X-Test:  a b ").unwrap();
        assert_eq!(k.as_str(), "x-test");
        assert_eq!(v, "a b");
        assert!(parse_header("novalue").is_err());
        assert!(parse_header("bad name: v").is_err());
    }
}
