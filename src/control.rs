//! The control plane listener: /metrics, /health, /ready and the admin API.
//! It runs on its own thread with its own small runtime and reads worker
//! state only through the published counters. Nothing on it waits for a
//! request log query: those run on the query thread (`reqlog::reader`) and
//! are awaited, so `/metrics`, `/health` and `/ready` answer while one runs.

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;

use anyhow::Context;
use monoio::net::TcpListener;

use crate::error::ApiError;
use crate::http::response::{self, ResponseFraming};
use crate::http::server::{ReadError, ServerConn};
use crate::http::Method;
use crate::limits::{Limits, ADMIN_BODY_BYTES_MAX, ADMIN_CONNECTIONS_MAX};
use crate::metrics::Registry;

/// Binds `addr` and serves the control plane on a new thread; returns the bound address.
pub fn start(
    addr: SocketAddr,
    registry: Arc<Registry>,
    limits: Limits,
    governance: Arc<crate::admin::Governance>,
) -> anyhow::Result<SocketAddr> {
    let std_listener = std::net::TcpListener::bind(addr)
        .with_context(|| format!("cannot listen on {addr} (admin_listen)"))?;
    let bound = std_listener.local_addr()?;
    std_listener.set_nonblocking(true)?;
    let limits = Limits {
        body_bytes_max: ADMIN_BODY_BYTES_MAX,
        ..limits
    };
    std::thread::Builder::new()
        .name("bursar-control".into())
        .spawn(move || {
            let rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
                .enable_timer()
                .build();
            let mut rt = match rt {
                Ok(rt) => rt,
                Err(e) => {
                    log::error!("control plane runtime: {e}");
                    return;
                }
            };
            rt.block_on(async move {
                let listener = match TcpListener::from_std(std_listener) {
                    Ok(l) => l,
                    Err(e) => {
                        log::error!("control plane listener: {e}");
                        return;
                    }
                };
                // Daily and weekly spend reports: their queries run on the
                // query thread, awaited here like the admin API's.
                monoio::spawn(crate::admin::reports::run(Arc::clone(&governance)));
                let state = Rc::new((registry, limits, std::cell::Cell::new(0usize), governance));
                loop {
                    let Ok((stream, _)) = listener.accept().await else {
                        monoio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    };
                    if state.2.get() >= ADMIN_CONNECTIONS_MAX {
                        continue;
                    }
                    state.2.set(state.2.get() + 1);
                    let st = Rc::clone(&state);
                    monoio::spawn(async move {
                        serve(&st.0, &st.1, &st.3, stream).await;
                        st.2.set(st.2.get() - 1);
                    });
                }
            });
        })
        .context("spawning the control plane thread")?;
    Ok(bound)
}

/// Control-plane request ids: `ctl_` and a per-process counter (this thread
/// is the only writer).
fn next_id() -> String {
    thread_local! {
        static N: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
    }
    let n = N.with(|c| {
        c.set(c.get() + 1);
        c.get()
    });
    format!("ctl_{n:012x}")
}

async fn serve(
    registry: &Registry,
    limits: &Limits,
    governance: &crate::admin::Governance,
    stream: monoio::net::TcpStream,
) {
    let mut conn = ServerConn::new(stream);
    loop {
        match conn.read_request(limits).await {
            Ok(()) => {}
            Err(ReadError::Reject(e)) => {
                conn.wbuf.clear();
                response::error(&mut conn.wbuf, &e, &next_id(), false);
                let _ = conn.flush(limits).await;
                return;
            }
            Err(_) => return,
        }
        let keep = conn.head.keep_alive;
        let id = next_id();
        let path = conn.head.path(conn.head_bytes()).to_string();
        let method = conn.head.method();
        conn.wbuf.clear();
        match (method, path.as_str()) {
            (Method::Get, "/metrics") => {
                let mut body = registry.render();
                render_targets(&mut body, &governance.catalog.load());
                response::begin(&mut conn.wbuf, 200);
                response::header(&mut conn.wbuf, "content-type", b"text/plain; version=0.0.4");
                response::header(&mut conn.wbuf, "x-request-id", id.as_bytes());
                response::finish(&mut conn.wbuf, ResponseFraming::Length(body.len()), keep);
                conn.wbuf.extend_from_slice(body.as_bytes());
            }
            (Method::Get, "/health" | "/healthz" | "/ready" | "/readyz") => {
                let body = format!(r#"{{"status":"ok","io_driver":"{}"}}"#, registry.driver());
                response::json(&mut conn.wbuf, 200, &id, keep, body.as_bytes());
            }
            // The dashboard's page and files: no token (they hold no data;
            // its calls to /admin/ carry it).
            (_, p) if crate::dashboard::is_dashboard_path(p) => {
                let inm = conn.head.header(conn.head_bytes(), "if-none-match");
                let inm = inm.map(<[u8]>::to_vec);
                crate::dashboard::respond(&mut conn.wbuf, method, p, inm.as_deref(), &id, keep);
            }
            (_, p) if p.starts_with("/admin/") => {
                let (req, out) = conn.split(limits.idle_timeout);
                let target = req.head.target(req.bytes);
                let admin = crate::admin::api::AdminRequest {
                    method,
                    path: &path,
                    query: target.split_once('?').map(|(_, q)| q),
                    authorization: req.head.header(req.bytes, "authorization"),
                    body: req.body,
                };
                // Awaited: a request log query runs on the query thread
                // while this thread serves the other connections.
                match crate::admin::api::handle(governance, &admin).await {
                    Ok((status, body)) => response::json(out.wbuf, status, &id, keep, &body),
                    Err(e) => response::error(out.wbuf, &e, &id, keep),
                }
            }
            _ => {
                let e = ApiError::not_found(
                    "unknown_url",
                    format!("unknown control-plane URL: {path}"),
                );
                response::error(&mut conn.wbuf, &e, &id, keep);
            }
        }
        if conn.flush(limits).await.is_err() || !keep {
            return;
        }
    }
}

/// Each model-group target's health, labelled by group, provider and model:
/// whether its breaker is open, requests in flight, the moving average of
/// its time to the response head, and lifetime failures and cooldowns.
fn render_targets(out: &mut String, catalog: &crate::catalog::Catalog) {
    use std::fmt::Write;
    if catalog.groups.is_empty() {
        return;
    }
    let escape = |s: &str| {
        s.replace('\\', "\\\\")
            .replace('"', "\\\"")
            .replace('\n', "\\n")
    };
    type Get = fn(&crate::health::TargetHealth) -> u64;
    let series: [(&str, &str, &str, Get); 5] = [
        (
            "bursar_target_open",
            "gauge",
            "1 while the target's circuit breaker is open (cooling down or probing).",
            |h| u64::from(h.is_open()),
        ),
        (
            "bursar_target_inflight",
            "gauge",
            "Requests sent to the target and not yet answered.",
            |h| u64::from(h.inflight()),
        ),
        (
            "bursar_target_ttfb_ewma_microseconds",
            "gauge",
            "Moving average of the target's time to the response head (0: not measured).",
            |h| h.ttfb_ewma_us(),
        ),
        (
            "bursar_target_failures_total",
            "counter",
            "Failed attempts at the target (unreachable, timed out, 429, 5xx).",
            |h| h.counts().0,
        ),
        (
            "bursar_target_cooldowns_total",
            "counter",
            "Times the target's circuit breaker opened.",
            |h| h.counts().1,
        ),
    ];
    for (name, kind, help, get) in series {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for g in &catalog.groups {
            for t in &g.targets {
                let _ = writeln!(
                    out,
                    "{name}{{group=\"{}\",provider=\"{}\",model=\"{}\"}} {}",
                    escape(&g.name),
                    escape(&catalog.provider(t.provider).name),
                    escape(&t.model),
                    get(&t.health)
                );
            }
        }
    }
}
