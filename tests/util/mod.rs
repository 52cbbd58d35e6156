//! Test support: start the real `bursar` binary and the real mock upstream
//! (`bursar-load mock`) on free loopback ports, and talk HTTP/1.1 to them over
//! plain sockets so every byte on the wire is under the test's control.
#![allow(dead_code)]

pub mod redis;
pub mod tls;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn bin_dir() -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_bursar"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// A fresh directory under the target dir, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let dir = bin_dir()
            .join("test-tmp")
            .join(format!("{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if self.0.as_os_str().is_empty() {
            return;
        }
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The mock upstream, killed on drop.
pub struct Mock {
    pub child: Child,
    pub addr: SocketAddr,
}

impl Mock {
    pub fn start(extra: &[&str]) -> Mock {
        let exe = bin_dir().join("bursar-load");
        assert!(
            exe.exists(),
            "{} is missing: build the workspace first (cargo build --workspace)",
            exe.display()
        );
        // Port 0: the mock prints the address it bound on its first line.
        let mut child = Command::new(exe)
            .args(["mock", "--listen", "127.0.0.1:0", "--quiet"])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start bursar-load mock");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let addr = line
            .strip_prefix("mock listening on ")
            .and_then(|a| a.trim().parse().ok())
            .unwrap_or_else(|| panic!("the mock did not start: {line:?}"));
        Mock { child, addr }
    }

    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }
}

impl Drop for Mock {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A gateway that was killed, with its state directory and config.
pub struct Stopped {
    dir: TempDir,
    config_path: PathBuf,
}

impl Stopped {
    pub fn start(self) -> Gateway {
        Gateway::spawn(self.dir, self.config_path, &[])
    }
}

/// A running gateway, killed on drop.
pub struct Gateway {
    pub child: Child,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub dir: TempDir,
    pub config_path: PathBuf,
}

impl Gateway {
    /// Starts `bursar serve` on `config` (TOML without [server] listen
    /// addresses; the test picks free ports) with extra CLI arguments.
    pub fn start(config: &str, extra: &[&str]) -> Gateway {
        let dir = TempDir::new("gw");
        let config_path = dir.0.join("bursar.toml");
        std::fs::write(&config_path, config).unwrap();
        Gateway::spawn(dir, config_path, extra)
    }

    /// Kills the gateway with SIGKILL (mid-request, as a crash would) and
    /// starts it again on the same config and state directory.
    pub fn kill_and_restart(mut self, extra: &[&str]) -> Gateway {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.respawn(extra)
    }

    /// Kills the gateway with SIGKILL and keeps its state directory, to
    /// start it again later ([`Stopped::start`]).
    pub fn kill_and_restart_later(mut self) -> Stopped {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let dir = std::mem::replace(&mut self.dir, TempDir(PathBuf::new()));
        Stopped {
            dir,
            config_path: self.config_path.clone(),
        }
    }

    /// Stops the gateway with SIGTERM (a clean shutdown), waits for it to
    /// exit, and starts it again on the same config and state directory.
    pub fn stop_and_restart(mut self, extra: &[&str]) -> Gateway {
        self.signal("TERM");
        let status = self.child.wait().unwrap();
        assert!(status.success(), "bursar exited {status:?} on SIGTERM");
        self.respawn(extra)
    }

    fn respawn(mut self, extra: &[&str]) -> Gateway {
        // Take the directory (the state to restart on) out of the old handle;
        // its Drop then only reaps a process that already exited.
        let dir = std::mem::replace(&mut self.dir, TempDir(PathBuf::new()));
        let config_path = self.config_path.clone();
        drop(self);
        Gateway::spawn(dir, config_path, extra)
    }

    fn spawn(dir: TempDir, config_path: PathBuf, extra: &[&str]) -> Gateway {
        Gateway::spawn_with(dir, config_path, extra, |_| {})
    }

    /// Starts `bursar serve` on `config_path` in `dir` like [`Gateway::start`],
    /// with `customize` applied to the command first (environment, stderr,
    /// `pre_exec`); a piped stderr is left on `child` for the caller.
    pub fn spawn_with(
        dir: TempDir,
        config_path: PathBuf,
        extra: &[&str],
        customize: impl FnOnce(&mut Command),
    ) -> Gateway {
        // Port 0 for both listeners: bursar prints the ports it bound on its
        // first stdout line, so no other process can race us to a port.
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_bursar"));
        cmd.args(["serve", "--config"])
            .arg(&config_path)
            .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
            .args(extra)
            .current_dir(&dir.0)
            .env("BURSAR_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        customize(&mut cmd);
        let mut child = cmd.spawn().expect("start bursar");
        let stdout = child.stdout.take().unwrap();
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).unwrap();
        let mut words = line.split_whitespace();
        let (Some("bursar"), Some("listening"), Some("on"), Some(data), Some("control"), Some(ctl)) = (
            words.next(),
            words.next(),
            words.next(),
            words.next(),
            words.next(),
            words.next(),
        ) else {
            let status = child.try_wait();
            panic!("bursar did not start: {line:?} ({status:?})");
        };
        Gateway {
            addr: data.parse().unwrap(),
            admin: ctl.parse().unwrap(),
            child,
            dir,
            config_path,
        }
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{sig}"), &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{sig}");
    }

    pub fn metrics(&self) -> String {
        let mut c = Client::connect(self.admin);
        let r = c.request("GET", "/metrics", &[], b"");
        assert_eq!(r.status, 200);
        assert!(r
            .header("x-request-id")
            .is_some_and(|id| id.starts_with("ctl_")));
        r.text()
    }

    /// The sum over workers of a per-worker metric.
    pub fn metric_sum(&self, name: &str) -> u64 {
        per_worker(&self.metrics(), name).iter().sum()
    }
}

/// Values of `name{worker="i"}` lines, in order.
pub fn per_worker(metrics: &str, name: &str) -> Vec<u64> {
    metrics
        .lines()
        .filter(|l| l.starts_with(&format!("{name}{{worker=")))
        .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
        .collect()
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A parsed HTTP response.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// For chunked bodies: each chunk's payload as received.
    pub chunks: Vec<Vec<u8>>,
    /// For chunked bodies: the trailer fields after the last chunk.
    pub trailers: Vec<(String, String)>,
}

impl Response {
    pub fn trailer(&self, name: &str) -> Option<&str> {
        self.trailers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The request's charge: the header, or for a relayed stream the trailer.
    pub fn cost_usd(&self) -> Option<&str> {
        self.header("x-bursar-cost-usd")
            .or_else(|| self.trailer("x-bursar-cost-usd"))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }
    /// The OpenAI error code of an error response.
    pub fn error_code(&self) -> String {
        self.json()["error"]["code"]
            .as_str()
            .unwrap_or("")
            .to_string()
    }
}

/// A keep-alive HTTP/1.1 client over one socket.
pub struct Client {
    pub reader: BufReader<TcpStream>,
    pub addr: SocketAddr,
}

impl Client {
    pub fn connect(addr: SocketAddr) -> Client {
        let s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        s.set_nodelay(true).unwrap();
        Client {
            reader: BufReader::new(s),
            addr,
        }
    }

    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.reader.get_mut().write_all(bytes).unwrap();
    }

    pub fn request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Response {
        self.send_raw(&format_request(method, path, headers, body));
        self.read_response().expect("a response")
    }

    /// POSTs JSON with a bearer key.
    pub fn post(
        &mut self,
        path: &str,
        key: &str,
        body: &str,
        headers: &[(&str, &str)],
    ) -> Response {
        let auth = format!("Bearer {key}");
        let mut h = vec![
            ("authorization", auth.as_str()),
            ("content-type", "application/json"),
        ];
        h.extend_from_slice(headers);
        self.request("POST", path, &h, body.as_bytes())
    }

    /// Reads one response; `None` on a clean close before any byte.
    pub fn read_response(&mut self) -> Option<Response> {
        let mut line = String::new();
        if self.reader.read_line(&mut line).ok()? == 0 {
            return None;
        }
        let status: u16 = line.split(' ').nth(1)?.parse().ok()?;
        let mut headers = Vec::new();
        loop {
            let mut l = String::new();
            self.reader.read_line(&mut l).ok()?;
            let l = l.trim_end();
            if l.is_empty() {
                break;
            }
            let (n, v) = l.split_once(':')?;
            headers.push((n.trim().to_string(), v.trim().to_string()));
        }
        let mut resp = Response {
            status,
            headers,
            body: Vec::new(),
            chunks: Vec::new(),
            trailers: Vec::new(),
        };
        if status == 100 {
            return self.read_response();
        }
        if let Some(n) = resp.header("content-length") {
            let n: usize = n.parse().ok()?;
            resp.body.resize(n, 0);
            self.reader.read_exact(&mut resp.body).ok()?;
        } else if resp
            .header("transfer-encoding")
            .is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
        {
            loop {
                let mut size = String::new();
                self.reader.read_line(&mut size).ok()?;
                let n = usize::from_str_radix(size.trim().split(';').next()?, 16).ok()?;
                if n == 0 {
                    // Trailer fields, then the blank line.
                    loop {
                        let mut l = String::new();
                        self.reader.read_line(&mut l).ok()?;
                        let l = l.trim_end();
                        if l.is_empty() {
                            break;
                        }
                        let (n, v) = l.split_once(':')?;
                        resp.trailers
                            .push((n.trim().to_string(), v.trim().to_string()));
                    }
                    break;
                }
                let mut chunk = vec![0; n];
                self.reader.read_exact(&mut chunk).ok()?;
                let mut crlf = [0; 2];
                self.reader.read_exact(&mut crlf).ok()?;
                resp.body.extend_from_slice(&chunk);
                resp.chunks.push(chunk);
            }
        } else {
            self.reader.read_to_end(&mut resp.body).ok()?;
        }
        Some(resp)
    }

    /// True when the server has closed the connection (read gives EOF).
    pub fn is_closed(&mut self) -> bool {
        let mut b = [0u8; 1];
        matches!(self.reader.read(&mut b), Ok(0) | Err(_))
    }
}

pub fn format_request(method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let mut out = format!("{method} {path} HTTP/1.1\r\nhost: test\r\n").into_bytes();
    for (n, v) in headers {
        out.extend_from_slice(format!("{n}: {v}\r\n").as_bytes());
    }
    if method != "GET" || !body.is_empty() {
        out.extend_from_slice(format!("content-length: {}\r\n", body.len()).as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
    out
}

/// Reads one whole request (head and `content-length` body); `false` at the
/// end of the connection.
pub fn read_request(r: &mut impl BufRead) -> bool {
    let mut length = 0usize;
    let mut first = true;
    loop {
        let mut line = String::new();
        match r.read_line(&mut line) {
            Ok(0) | Err(_) => return false,
            Ok(_) => {}
        }
        let line = line.trim_end();
        if line.is_empty() {
            if first {
                continue;
            }
            break;
        }
        first = false;
        if let Some((name, value)) = line.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse().unwrap_or(0);
            }
        }
    }
    let mut body = vec![0; length];
    r.read_exact(&mut body).is_ok()
}

/// Sends raw bytes on a fresh connection and reads one response.
pub fn raw_exchange(addr: SocketAddr, bytes: &[u8]) -> Response {
    let mut c = Client::connect(addr);
    c.send_raw(bytes);
    c.read_response().expect("a response")
}

/// A config for one OpenAI-kind provider at `base_url` and two keys.
pub fn proxy_config(base_url: &str, extra: &str) -> String {
    format!(
        r#"
[server]
workers = 2

[[providers]]
name = "local"
kind = "openai"
base_url = "{base_url}"
api_key = "sk-upstream-secret"
models = ["gpt-4o-mini", "gpt-4o", "text-embedding-3-small", "o3-mini"]

[[providers]]
name = "inproc"
kind = "mock"
models = ["mock-model"]

[[virtual_keys]]
name = "demo"
key = "sk-bursar-demo"
allowed_models = ["*"]

[[virtual_keys]]
name = "mini-only"
key = "sk-mini-only"
allowed_models = ["gpt-4o-mini"]

[[prices]]
model = "mock-model"
input_per_mtok_usd = "1"
output_per_mtok_usd = "2"
{extra}
"#
    )
}

pub const CHAT: &str = r#"{"model":"gpt-4o-mini","max_tokens":5,"messages":[{"role":"user","content":"hello there"}]}"#;
pub const CHAT_STREAM: &str = r#"{"model":"gpt-4o-mini","stream":true,"max_tokens":5,"messages":[{"role":"user","content":"hello there"}]}"#;

/// SSE `data:` payloads of a streamed body.
pub fn sse_data(body: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(body)
        .split("\n\n")
        .filter_map(|ev| {
            ev.lines()
                .find_map(|l| l.strip_prefix("data: ").or_else(|| l.strip_prefix("data:")))
                .map(|d| d.trim().to_string())
        })
        .collect()
}

/// The text a streamed chat body delivered: every chunk's
/// `choices[0].delta.content`, joined.
pub fn sse_chat_text(body: &[u8]) -> String {
    sse_data(body)
        .iter()
        .filter_map(|d| serde_json::from_str::<serde_json::Value>(d).ok())
        .filter_map(|v| {
            v["choices"][0]["delta"]["content"]
                .as_str()
                .map(String::from)
        })
        .collect()
}

/// An exact decimal USD string ("0.0000042") in picodollars.
pub fn pico(usd: &str) -> i128 {
    let (int, frac) = usd.split_once('.').unwrap_or((usd, ""));
    assert!(frac.len() <= 12, "{usd}");
    int.parse::<i128>().unwrap() * 1_000_000_000_000
        + format!("{frac:0<12}").parse::<i128>().unwrap()
}

/// A GET on the admin API with the bearer `token`.
pub fn admin_get(gw: &Gateway, token: &str, path: &str) -> Response {
    admin_request(gw, token, "GET", path, "")
}

/// A request on the admin API with the bearer `token` and a JSON body.
pub fn admin_request(gw: &Gateway, token: &str, method: &str, path: &str, body: &str) -> Response {
    let mut c = Client::connect(gw.admin);
    let auth = format!("Bearer {token}");
    c.request(
        method,
        path,
        &[
            ("authorization", auth.as_str()),
            ("content-type", "application/json"),
        ],
        body.as_bytes(),
    )
}

/// A gateway-wide value (a line without a worker label) from /metrics.
pub fn counter(gw: &Gateway, name: &str) -> u64 {
    gw.metrics()
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("{name} missing from /metrics"))
}

/// Clients that send chat requests as fast as they can until told to stop,
/// each adding up the cost of every response it read in full (each must be
/// a 200): what clients saw when a kill cuts the gateway down under load. A
/// response cut by the kill ends that client.
pub struct LoadUntilCut {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    clients: Vec<std::thread::JoinHandle<i128>>,
}

impl LoadUntilCut {
    /// `threads` clients on `addr` with `key`; client `t` sends `body(t)`
    /// with `headers`.
    pub fn start(
        addr: SocketAddr,
        threads: usize,
        key: &str,
        headers: &[(&str, &str)],
        body: fn(usize) -> &'static str,
    ) -> LoadUntilCut {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let auth = format!("Bearer {key}");
        let mut all: Vec<(String, String)> = vec![
            ("authorization".into(), auth),
            ("content-type".into(), "application/json".into()),
        ];
        all.extend(headers.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let clients = (0..threads)
            .map(|t| {
                let stop = std::sync::Arc::clone(&stop);
                let all = all.clone();
                std::thread::spawn(move || {
                    let headers: Vec<(&str, &str)> =
                        all.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
                    let request = format_request(
                        "POST",
                        "/v1/chat/completions",
                        &headers,
                        body(t).as_bytes(),
                    );
                    let mut c = Client::connect(addr);
                    let mut seen = 0i128;
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        c.send_raw(&request);
                        // A response cut by the kill reads as None; a whole
                        // one must be a 200 (a refusal would end the load
                        // quietly and the test would prove less).
                        match c.read_response() {
                            Some(r) => {
                                assert_eq!(r.status, 200, "{}", r.text());
                                match r.cost_usd() {
                                    Some(cost) => seen += pico(cost),
                                    None => break,
                                }
                            }
                            None => break,
                        }
                    }
                    seen
                })
            })
            .collect();
        LoadUntilCut { stop, clients }
    }

    /// Stops the clients; the sum of the costs they saw.
    pub fn stop(self) -> i128 {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.clients.into_iter().map(|h| h.join().unwrap()).sum()
    }
}

/// The ledger's spend at `level` (`keys/search-prod`,
/// `tags/feature=search`, ...) through `GET /admin/spend/<level>`, in
/// picodollars.
pub fn spent_at(gw: &Gateway, token: &str, level: &str) -> i128 {
    let r = admin_get(gw, token, &format!("/admin/spend/{level}"));
    assert_eq!(r.status, 200, "{level}: {}", r.text());
    pico(r.json()["spent_usd"].as_str().unwrap())
}

/// A 200 whose output cap a budget lowered: the cap it was sent with
/// (`x-bursar-output-cap-lowered`), checked against what the mock wrote
/// (exactly the cap's words, at most 4096).
pub fn cap_lowered(r: &Response) -> u64 {
    assert_eq!(r.status, 200, "{}", r.text());
    let lowered: u64 = r
        .header("x-bursar-output-cap-lowered")
        .expect("cap lowered")
        .parse()
        .unwrap();
    assert_eq!(
        r.json()["usage"]["completion_tokens"].as_u64().unwrap(),
        lowered.min(4096)
    );
    lowered
}
